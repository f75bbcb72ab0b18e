# SPDX-License-Identifier: Apache-2.0
"""The two memory-bound pieces of a Mamba-2 block, bf16, at SAM's block shapes, same process:

* depthwise causal conv1d + SiLU on xBC (B, L, conv_dim) channel-last: samkern's Triton kernels,
  the causal-conv1d package (the peer mamba-ssm uses) and the PyTorch reference;
* gated RMSNorm (gate before the norm, one group) on y, z (B·L, d_ssm): samkern's Triton kernels,
  mamba-ssm's Triton ``rmsnorm_fn`` and the PyTorch reference.

GB/s counts the minimal bytes: conv fwd reads x, writes y; fwd+bwd adds reading dy and x and
writing dx. Norm fwd reads x, z, writes y; fwd+bwd adds reading dy, x, z and writing dx, dz
(weight-sized terms ignored). ``pct_of_copy`` in a row's extra is GB/s over a device copy's.
Run: ``pytest benchmarks/ops/bench_conv_norm.py --benchmark``.
"""
from __future__ import annotations

import pytest
import torch

SHAPES = {
    # name: (batch, L, d_ssm, d_state); conv_dim = d_ssm + 2 * d_state (G = 1)
    "130m-B32-L192": (32, 192, 1536, 128),
    "2.7b-B16-L192": (16, 192, 5120, 128),
    "2.7b-B1-L16384": (1, 16384, 5120, 128),
}
DTYPE = torch.bfloat16
ESZ = 2
_COPY: dict = {}


def _copy_gbps(results, shape: str, n: int) -> float:
    if shape not in _COPY:
        src = torch.randn(n, device="cuda", dtype=DTYPE)
        dst = torch.empty_like(src)
        row = results.time(op="conv_norm", shape=shape, provider="device-copy", mode="copy",
                           fn=lambda: dst.copy_(src), bytes=2 * n * ESZ)
        _COPY[shape] = row.gbps
    return _COPY[shape]


def _conv_call(provider: str):
    if provider == "samkern":
        from samkern.ops.conv1d.function import causal_conv1d

        return lambda x, w, b: causal_conv1d(x, w, b, activation="silu", backend="triton")
    if provider == "torch":
        from samkern.ops.conv1d.ref import causal_conv1d_ref

        return lambda x, w, b: causal_conv1d_ref(x, w, b, activation="silu")
    peer = pytest.importorskip("causal_conv1d")
    return lambda x, w, b: peer.causal_conv1d_fn(x, w, b, activation="silu")


def _norm_call(provider: str):
    if provider == "samkern":
        from samkern.ops.gated_rmsnorm.function import rmsnorm_gated

        return lambda x, w, z: rmsnorm_gated(x, w, z, eps=1e-5, norm_before_gate=False, backend="triton")
    if provider == "torch":
        from samkern.ops.gated_rmsnorm.ref import rmsnorm_gated_ref

        return lambda x, w, z: rmsnorm_gated_ref(x, w, z, eps=1e-5, norm_before_gate=False)
    peer = pytest.importorskip("mamba_ssm.ops.triton.layernorm_gated")
    return lambda x, w, z: peer.rmsnorm_fn(x, w, None, z=z, eps=1e-5, norm_before_gate=False)


def _record(results, shape, provider, fns, nbytes, copy, name):
    for mode, fn in fns.items():
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            row = results.time(op="conv_norm", shape=f"{shape}-{name}", provider=provider, mode=mode, fn=fn,
                               bytes=nbytes[mode])
        row.extra["pct_of_copy"] = round(100.0 * row.gbps / copy, 1)


@pytest.mark.parametrize("provider", ["samkern", "causal-conv1d", "torch"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv1d(shape, provider, results):
    batch, L, d_ssm, n = SHAPES[shape]
    dim = d_ssm + 2 * n
    copy = _copy_gbps(results, shape, batch * L * dim)
    call = _conv_call(provider)
    x = torch.randn(batch, L, dim, device="cuda", dtype=DTYPE).transpose(1, 2).requires_grad_(True)
    w = (torch.randn(dim, 4, device="cuda") * 0.5).to(DTYPE).requires_grad_(True)
    b = torch.randn(dim, device="cuda", dtype=DTYPE).requires_grad_(True)
    g = torch.randn(batch, L, dim, device="cuda", dtype=DTYPE).transpose(1, 2)
    fns = {"fwd": lambda: call(x, w, b), "fwdbwd": lambda: torch.autograd.grad(call(x, w, b), (x, w, b), g)}
    tok = batch * L * dim * ESZ
    _record(results, shape, provider, fns, {"fwd": 2 * tok, "fwdbwd": 5 * tok}, copy, "conv1d")


@pytest.mark.parametrize("provider", ["samkern", "mamba-ssm", "torch"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gated_rmsnorm(shape, provider, results):
    batch, L, d_ssm, _ = SHAPES[shape]
    rows = batch * L
    copy = _copy_gbps(results, shape + "-norm", rows * d_ssm)
    call = _norm_call(provider)
    x = torch.randn(rows, d_ssm, device="cuda", dtype=DTYPE, requires_grad=True)
    z = torch.randn(rows, d_ssm, device="cuda", dtype=DTYPE, requires_grad=True)
    w = (1 + 0.1 * torch.randn(d_ssm, device="cuda")).to(DTYPE).requires_grad_(True)
    g = torch.randn(rows, d_ssm, device="cuda", dtype=DTYPE)
    fns = {"fwd": lambda: call(x, w, z), "fwdbwd": lambda: torch.autograd.grad(call(x, w, z), (x, w, z), g)}
    tok = rows * d_ssm * ESZ
    _record(results, shape, provider, fns, {"fwd": 3 * tok, "fwdbwd": 8 * tok}, copy, "rmsnorm")
