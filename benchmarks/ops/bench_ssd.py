# SPDX-License-Identifier: Apache-2.0
"""SSD chunked scan, bf16, SAM's shapes: samkern's fused Triton scan vs mamba-ssm's
``mamba_chunk_scan_combined`` (fwd and fwd+bwd) and fla's ``chunk_simple_gla`` (fwd only: its
backward refuses Hopper with Triton < 3.7.1), eager and CUDA-graph replay, same process.

Inputs follow SAM's Mamba2 layers: P = 64, N = 128, G = 1, chunk 256, D per head, dt_bias with
softplus, no z (the gate goes to the gated RMSNorm), no initial state. At B1 L16384 the ``samkern``
forward takes the sequence-split path (``pick_split_len``); ``samkern-one-pass`` times the
one-pass kernel beside it (files before session 5 have a ``samkern-split1024`` row instead).
Run: ``pytest benchmarks/ops/bench_ssd.py --benchmark``.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest
import torch

from samkern.ops.ssd.split import SPLIT_MIN_LEN

SHAPES: Dict[str, Tuple[int, int, int]] = {
    # name: (batch, L, H)
    "130m-B32-L192": (32, 192, 24),
    "2.7b-B16-L192": (16, 192, 80),
    "2.7b-B8-L640": (8, 640, 80),
    "2.7b-B1-L16384": (1, 16384, 80),
}
P, N, G, CHUNK = 64, 128, 1, 256


def make_inputs(batch: int, L: int, H: int, requires_grad: bool, device: str = "cuda", dtype=torch.bfloat16):
    """SAM-like SSD inputs: dict of mamba_chunk_scan_combined keyword arguments (minus chunk_size)."""
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*s, dt=dtype, scale=1.0):
        return (torch.randn(*s, device=device, generator=g, dtype=torch.float32) * scale).to(dt)

    kw = dict(
        x=rnd(batch, L, H, P),
        dt=rnd(batch, L, H, dt=torch.float32, scale=0.5) - 2.0,
        A=-torch.exp(rnd(H, dt=torch.float32, scale=0.5)),
        B=rnd(batch, L, G, N, scale=N ** -0.5),
        C=rnd(batch, L, G, N, scale=N ** -0.5),
        D=rnd(H, dt=torch.float32),
        dt_bias=rnd(H, dt=torch.float32, scale=0.5),
    )
    if requires_grad:
        for v in kw.values():
            v.requires_grad_(True)
    kw["dt_softplus"] = True
    return kw


def fwd_fn(scan: Callable, kw: dict) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return scan(**kw, chunk_size=CHUNK)

    return run


def fwdbwd_fn(scan: Callable, kw: dict) -> Callable[[], object]:
    params = [v for v in kw.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    dout = torch.randn_like(kw["x"])

    def run():
        out = scan(**kw, chunk_size=CHUNK)
        return torch.autograd.grad(out, params, dout)

    return run


def fla_fwd_fn(kw: dict) -> Callable[[], object]:
    """SSD as simple GLA: q = C, k = B (per head), v = dt * x, g = dt * A (log decay), scale 1.
    The dt processing and head expansion happen once, outside the timed call."""
    from fla.ops.simple_gla import chunk_simple_gla

    H = kw["x"].shape[2]
    dt = torch.nn.functional.softplus(kw["dt"].float() + kw["dt_bias"].float())
    q = kw["C"].expand(-1, -1, H, -1).contiguous()
    k = kw["B"].expand(-1, -1, H, -1).contiguous()
    v = (kw["x"].float() * dt[..., None]).to(kw["x"].dtype)
    gl = (dt * kw["A"].float()).contiguous()

    def run():
        with torch.no_grad():
            return chunk_simple_gla(q, k, v, g=gl, scale=1.0)

    return run


def providers() -> Dict[str, Callable]:
    """samkern's Triton scan, samkern's pure-PyTorch reference and the mamba-ssm peer (required)."""
    from samkern.ops.ssd.chunk import ssd_chunk_scan

    mamba = pytest.importorskip("mamba_ssm.ops.triton.ssd_combined", reason="the mamba-ssm peer is required")
    return {
        "samkern": lambda **kw: ssd_chunk_scan(**kw, backend="triton"),
        "samkern-ref": lambda **kw: ssd_chunk_scan(**kw, backend="ref"),
        "mamba-ssm": mamba.mamba_chunk_scan_combined,
    }


def check_agreement(prov: Dict[str, Callable], kw: dict, tol: float = 2e-2,
                    names: Tuple[str, ...] = ("samkern", "samkern-ref")) -> None:
    """No timing row for an op that disagrees with the peer on these very inputs."""
    from samkern.testing import rel_err

    with torch.no_grad():
        ref = prov["mamba-ssm"](**kw, chunk_size=CHUNK)
        for name in names:
            err = rel_err(prov[name](**kw, chunk_size=CHUNK), ref)
            assert err < tol, f"{name} disagrees with mamba-ssm: relative error {err:.2e}"


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_ssd(shape, mode, results):
    batch, L, H = SHAPES[shape]
    prov = providers()
    # one input set per case (seeded), shared by every provider
    kw = make_inputs(batch, L, H, requires_grad=mode == "fwdbwd")
    check_agreement(prov, kw)
    for name, scan in prov.items():
        fn = fwd_fn(scan, kw) if mode == "fwd" else fwdbwd_fn(scan, kw)
        results.time(op="ssd_chunk_scan", shape=shape, provider=name, mode=mode, fn=fn)
    if mode == "fwd" and L >= 4 * SPLIT_MIN_LEN:
        # long rows: the samkern row may take the sequence-split path (samkern/ops/ssd/split.py,
        # chosen by pick_split_len); time the one-pass kernel beside it, checked like the rest
        import samkern.ops.ssd.fwd as fwd_mod

        old = fwd_mod.FWD_TUNING.get("split_len")
        fwd_mod.FWD_TUNING["split_len"] = 0
        try:
            check_agreement(prov, kw, names=("samkern",))
            results.time(op="ssd_chunk_scan", shape=shape, provider="samkern-one-pass", mode=mode,
                         fn=fwd_fn(prov["samkern"], kw))
        finally:
            fwd_mod.FWD_TUNING["split_len"] = old
    if mode == "fwd":
        pytest.importorskip("fla.ops.simple_gla", reason="flash-linear-attention peer")
        results.time(op="ssd_chunk_scan", shape=shape, provider="fla-simple-gla", mode=mode, fn=fla_fwd_fn(kw))
