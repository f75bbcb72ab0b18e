# SPDX-License-Identifier: Apache-2.0
"""The Triton gated group RMSNorm (``samkern.ops.gated_rmsnorm.function.rmsnorm_gated``) against
the fp64 reference: output and the gradients of x, weight and z, gate before/after the norm,
with and without z, one or several groups, odd channel counts (masked blocks), 3-D inputs and
a z that is a strided slice (as in a Mamba-2 block). GPU: bf16 at block shapes, against the
reference and mamba-ssm's Triton ``rmsnorm_fn`` (the peer)."""
from __future__ import annotations

import pytest
import torch

from samkern.ops.gated_rmsnorm.function import rmsnorm_gated
from samkern.ops.gated_rmsnorm.ref import RMSNormGated, rmsnorm_gated_ref
from samkern.testing import assert_close, assert_close_lowp


def _make(shape, dtype, device, with_z, strided_z):
    n = shape[-1]
    x = torch.randn(*shape, device=device).to(dtype)
    w = (1 + 0.3 * torch.randn(n, device=device)).to(dtype)
    z = None
    if with_z:
        if strided_z:  # a slice of a wider projection: row stride 2n + 3
            z = torch.randn(*shape[:-1], 2 * n + 3, device=device).to(dtype)[..., n + 1:2 * n + 1]
        else:
            z = torch.randn(*shape, device=device).to(dtype)
    return x, w, z


def _leaf(t):
    """A leaf copy of ``t`` with ``t``'s strides (``clone`` would make a column slice contiguous)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t.detach()).requires_grad_(True)


def _run(fn, x, w, z, dout, **kw):
    leaves = [_leaf(t) if t is not None else None for t in (x, w, z)]
    out = fn(leaves[0], leaves[1], z=leaves[2], **kw)
    (out.double() * dout).sum().backward()
    return [out] + [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("with_z,strided_z", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("shape,group_size", [((7, 48), 12), ((2, 5, 20), None), ((3, 64), 64)])
def test_matches_reference_fp32(kernel_device, shape, group_size, with_z, strided_z, norm_before_gate):
    x, w, z = _make(shape, torch.float32, kernel_device, with_z, strided_z)
    dout = torch.randn(shape, dtype=torch.float64, device=kernel_device)
    kw = dict(eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    got = _run(rmsnorm_gated, x, w, z, dout, backend="triton", **kw)
    ref = _run(rmsnorm_gated_ref, x.double(), w.double(), z.double() if z is not None else None, dout, **kw)
    for name, g, r in zip(("out", "dx", "dweight", "dz"), got, ref):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == torch.float32 and g.shape == r.shape, name
        assert_close(name, g, r, 2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_aligned_to_16_bytes_only(kernel_device, dtype):
    """A z whose row stride is a multiple of 16 bytes but not of 16 elements (a 130m Mamba-2
    block's in_proj slice: 3352 columns) takes the kernels' row-stride unit (``RS`` > 1: strides
    passed divided, multiplied back in the kernel): same results as the reference."""
    from samkern.backend import row_stride_unit

    rows, n = 9, 48
    unit = 16 // torch.tensor([], dtype=dtype).element_size()
    width = 2 * n + unit  # row stride: a multiple of `unit`, not of 16
    x = torch.randn(rows, n, device=kernel_device).to(dtype)
    w = (1 + 0.3 * torch.randn(n, device=kernel_device)).to(dtype)
    z = torch.randn(rows, width, device=kernel_device).to(dtype)[:, n:2 * n]
    assert row_stride_unit(x.element_size(), x.stride(0), z.stride(0), n) == unit  # the path under test
    dout = torch.randn(rows, n, dtype=torch.float64, device=kernel_device)
    kw = dict(eps=1e-5, group_size=16, norm_before_gate=False)
    got = _run(rmsnorm_gated, x, w, z, dout, backend="triton", **kw)
    low = _run(rmsnorm_gated_ref, x, w, z, dout, **kw)
    ref = _run(rmsnorm_gated_ref, x.double(), w.double(), z.double(), dout, **kw)
    for name, g, lo, r in zip(("out", "dx", "dweight", "dz"), got, low, ref):
        if dtype == torch.float32:
            assert_close(name, g, r, 2e-5)
        else:
            assert_close_lowp(name, g, r, lo, floor=2.0 ** -11)


def test_fp16_within_twice_torch_error(kernel_device):
    x, w, z = _make((9, 96), torch.float16, kernel_device, True, True)
    dout = torch.randn(9, 96, dtype=torch.float64, device=kernel_device)
    kw = dict(eps=1e-5, group_size=32, norm_before_gate=False)
    got = _run(rmsnorm_gated, x, w, z, dout, backend="triton", **kw)
    low = _run(rmsnorm_gated_ref, x, w, z, dout, **kw)
    ref = _run(rmsnorm_gated_ref, x.double(), w.double(), z.double(), dout, **kw)
    for name, g, lo, r in zip(("out", "dx", "dweight", "dz"), got, low, ref):
        assert_close_lowp(name, g, r, lo, floor=2.0 ** -11)


def test_module_dispatch_and_errors(kernel_device):
    norm = RMSNormGated(16, eps=1e-5, group_size=8, norm_before_gate=False, device=kernel_device)
    x, _, z = _make((4, 16), torch.float32, kernel_device, True, False)
    assert_close("module", norm(x, z, backend="triton"), norm(x, z, backend="ref"), 1e-5)
    with pytest.raises(ValueError, match="group_size"):
        rmsnorm_gated(x, norm.weight, z, group_size=5, backend="triton")
    with pytest.raises(ValueError, match="z must have shape"):
        rmsnorm_gated(x, norm.weight, z[:, :8], backend="triton")
    with pytest.raises(ValueError, match="weight"):
        rmsnorm_gated(x, norm.weight[:8], z, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("rows,n,group_size", [(6144, 1536, None), (5120, 5120, None), (1000, 5120, 640)])
def test_gpu_bf16_vs_reference_and_peer(rows, n, group_size, norm_before_gate):
    x, w, z = _make((rows, n), torch.bfloat16, "cuda", True, True)
    dout = torch.randn(rows, n, dtype=torch.float64, device="cuda")
    kw = dict(eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    got = _run(rmsnorm_gated, x, w, z, dout, backend="triton", **kw)
    low = _run(rmsnorm_gated_ref, x, w, z, dout, **kw)  # torch, fp32 math, bf16 in/out
    ref = _run(rmsnorm_gated_ref, x.double(), w.double(), z.double(), dout, **kw)
    names = ("out", "dx", "dweight", "dz")
    for name, g, lo, r in zip(names, got, low, ref):
        assert_close_lowp(name, g, r, lo, floor=2.0 ** -9)
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    except ImportError:
        return
    peer = _run(lambda x_, w_, z=None, **k: rmsnorm_fn(x_, w_, None, z=z, eps=k["eps"], group_size=k["group_size"],
                                                       norm_before_gate=k["norm_before_gate"]), x, w, z, dout, **kw)
    for name, g, p, r in zip(names, got, peer, ref):
        assert_close_lowp(f"vs mamba-ssm {name}", g, r, p, floor=2.0 ** -9)
