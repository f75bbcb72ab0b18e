# SPDX-License-Identifier: Apache-2.0
"""The Triton causal conv1d (``samkern.ops.conv1d.function.causal_conv1d``) against the fp64
reference and, on the CPU, the explicit-loop oracle of test_conv1d_ref: output and the gradients
of x, weight and bias, with and without SiLU, bias and packed sequences (seq_idx with padding),
channel-first and channel-last memory, odd channel counts and several L-blocks. GPU: bf16 at the
shapes of a Mamba-2 block, against the reference and the causal-conv1d package (the peer)."""
from __future__ import annotations

import pytest
import torch

from samkern.ops.conv1d.function import causal_conv1d, conv_split
from samkern.ops.conv1d.ref import causal_conv1d_ref
from samkern.testing import assert_close, assert_close_lowp
from tests.ops.test_conv1d_ref import loop_conv


def _seq_idx(bsz, length, device, padding=True):
    """Three packed sequences per row (labels 0, 1, 2) and, optionally, 3 padding tokens (-1) at the end."""
    s = torch.zeros(bsz, length, dtype=torch.int32)
    for b in range(bsz):
        cut1, cut2 = 5 + 3 * b, length // 2 + b
        s[b, cut1:] = 1
        s[b, cut2:] = 2
        if padding:
            s[b, length - 3:] = -1
    return s.to(device)


def _make(bsz, dim, length, width, dtype, device, channel_last, bias):
    if channel_last:  # (B, L, D) memory seen as (B, D, L), as inside a Mamba-2 block
        x = torch.randn(bsz, length, dim, device=device).to(dtype).transpose(1, 2)
    else:
        x = torch.randn(bsz, dim, length, device=device).to(dtype)
    w = (torch.randn(dim, width, device=device) / width ** 0.5).to(dtype)
    b = torch.randn(dim, device=device).to(dtype) if bias else None
    return x, w, b


def _run(fn, x, w, b, seq, act, dout, **kw):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    out = fn(leaves[0], leaves[1], leaves[2], seq_idx=seq, activation=act, **kw)
    (out.double() * dout).sum().backward()
    return [out] + [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("width", [2, 4, 5])  # 5: taps past the four held in registers
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("channel_last,bias", [(True, True), (False, False)])
def test_matches_reference_fp32(kernel_device, width, act, seq, channel_last, bias):
    # 20 channels < the D-blocks (masked); 130 tokens: 5 forward L-blocks, 3 overlapping backward
    # tiles (a dx row's g can sit in the next tile's rows: the halo)
    bsz, dim, length = 2, 20, 130
    x, w, b = _make(bsz, dim, length, width, torch.float32, kernel_device, channel_last, bias)
    s = _seq_idx(bsz, length, kernel_device) if seq else None
    dout = torch.randn(bsz, dim, length, dtype=torch.float64, device=kernel_device)
    got = _run(causal_conv1d, x, w, b, s, act, dout, backend="triton")
    ref = _run(causal_conv1d_ref, x.double(), w.double(), b.double() if b is not None else None, s, act, dout)
    for name, g, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == (torch.float32 if name != "out" else x.dtype)
        assert_close(name, g, r, 2e-5)
    if kernel_device == "cpu" and width == 4:
        # independent oracle: one token at a time
        oracle = loop_conv(x.double(), w.double(), b.double() if b is not None else None, seq_idx=s, activation=act)
        assert_close("out vs loop", got[0], oracle, 2e-5)


def test_fp16_and_many_blocks(kernel_device):
    """fp16 in/out with fp32 arithmetic: within 2x of the reference's own fp16 rounding."""
    bsz, dim, length, width = 1, 130, 70, 4  # 2 D-blocks (130 > 128), 3 L-blocks
    x, w, b = _make(bsz, dim, length, width, torch.float16, kernel_device, True, True)
    s = _seq_idx(bsz, length, kernel_device)
    dout = torch.randn(bsz, dim, length, dtype=torch.float64, device=kernel_device)
    got = _run(causal_conv1d, x, w, b, s, "silu", dout, backend="triton")
    low = _run(causal_conv1d_ref, x, w, b, s, "silu", dout)
    ref = _run(causal_conv1d_ref, x.double(), w.double(), b.double(), s, "silu", dout)
    for name, g, lo, r in zip(("out", "dx", "dweight", "dbias"), got, low, ref):
        assert_close_lowp(name, g, r, lo, floor=2.0 ** -11)


@pytest.mark.parametrize("seq", [False, True])
def test_many_partial_rows(kernel_device, monkeypatch, seq):
    """dw/db summed by programs of 32 rows (5 per sequence of 130, the last ragged) into 20 partial
    rows, reduced 16 rows per step: the multi-program and multi-step paths at a small size."""
    import samkern.ops.conv1d.triton as ct

    monkeypatch.setattr(ct, "DW_ROWS", 32)
    monkeypatch.setattr(ct, "REDUCE_BLOCK_P", 16)
    bsz, dim, length = 4, 8, 130
    x, w, b = _make(bsz, dim, length, 4, torch.float32, kernel_device, True, True)
    s = _seq_idx(bsz, length, kernel_device) if seq else None
    dout = torch.randn(bsz, dim, length, dtype=torch.float64, device=kernel_device)
    got = _run(causal_conv1d, x, w, b, s, "silu", dout, backend="triton")
    ref = _run(causal_conv1d_ref, x.double(), w.double(), b.double(), s, "silu", dout)
    for name, g, r in zip(("out", "dx", "dweight", "dbias"), got, ref):
        assert_close(name, g, r, 2e-5)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("seq", [False, True])
def test_rows_aligned_to_16_bytes_only(kernel_device, split, seq):
    """x read from, and dx written into, column slices of a wider buffer whose row stride is a
    multiple of 16 bytes but not of 16 elements (a 130m Mamba-2 block's in_proj output, 3352
    columns): the kernels take the row-stride unit (``RS`` = 4 for fp32) and match the reference,
    forward and backward, with one or three gradient tensors."""
    import samkern.ops.conv1d.triton as ct
    from samkern.backend import row_stride_unit

    bsz, dim, length, width = 2, 24, 70, 4
    buf = torch.randn(bsz, length, dim + 12, device=kernel_device)  # row stride 36: 4 | 36, 16 does not
    x = buf[:, :, 8:8 + dim].transpose(1, 2)
    w = torch.randn(dim, width, device=kernel_device) / 2
    b = torch.randn(dim, device=kernel_device)
    s = _seq_idx(bsz, length, kernel_device) if seq else None
    assert row_stride_unit(4, x.stride(0), x.stride(2)) == 4  # the path under test
    g = torch.randn(bsz, length, dim, device=kernel_device).transpose(1, 2)
    dy = list(torch.split(g, [12, 8, 4], dim=1)) if split else g
    dx_buf = torch.full((bsz, length, dim + 12), float("nan"), device=kernel_device)
    y = ct.causal_conv1d_fwd_triton(x, w, b, s, True)
    dx, dw, db = ct.causal_conv1d_bwd_triton(dy, x, w, b, s, True, dx_out=dx_buf[:, :, 4:4 + dim])
    leaves = [t.double().requires_grad_(True) for t in (x, w, b)]
    out = causal_conv1d_ref(*leaves, seq_idx=s, activation="silu")
    ref = torch.autograd.grad(out, leaves, g.double())
    assert_close("out", y, out.detach(), 2e-5)
    for name, got_, r in zip(("dx", "dweight", "dbias"), (dx, dw, db), ref):
        assert_close(name, got_, r, 2e-5)
    assert torch.isnan(dx_buf[:, :, :4]).all() and torch.isnan(dx_buf[:, :, 4 + dim:]).all()  # only its columns


def test_padding_tokens_are_zero_and_sequences_do_not_leak(kernel_device):
    bsz, dim, length = 1, 8, 40
    x, w, b = _make(bsz, dim, length, 4, torch.float32, kernel_device, True, True)
    s = _seq_idx(bsz, length, kernel_device)
    out = causal_conv1d(x, w, b, seq_idx=s, activation="silu", backend="triton")
    assert torch.all(out[:, :, length - 3:] == 0)
    # changing tokens of sequence 0 must not change any output of sequences 1 and 2
    x2 = x.clone()
    x2[:, :, :5] += 1.0
    out2 = causal_conv1d(x2, w, b, seq_idx=s, activation="silu", backend="triton")
    assert torch.equal(out[:, :, 5:], out2[:, :, 5:])


def test_dispatch_and_errors(kernel_device):
    x, w, b = _make(1, 8, 10, 4, torch.float32, kernel_device, True, True)
    h = torch.randn(1, 8, 3, device=kernel_device)
    # initial states are a reference-only feature: the default backend falls back, a forced triton refuses
    out = causal_conv1d(x, w, b, initial_states=h, activation="silu")
    assert_close("fallback", out, causal_conv1d_ref(x, w, b, initial_states=h, activation="silu"), 1e-6)
    with pytest.raises(ValueError, match="initial_states"):
        causal_conv1d(x, w, b, initial_states=h, backend="triton")
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, w[:5], b, backend="triton")
    with pytest.raises(ValueError, match="seq_idx"):
        causal_conv1d(x, w, b, seq_idx=torch.zeros(1, 9, dtype=torch.int32, device=kernel_device), backend="triton")
    with pytest.raises(ValueError):
        causal_conv1d(x.double(), w.double(), b.double(), backend="triton")


# ------------------------------------------------------------------------------------------
# conv_split: the block's split -> conv -> split as one node (dx, dB, dC read in place, d zxbcdt
# written once), against the torch.split composition of the reference backend


def _conv_split_case(dtype, device, bsz=2, length=70, d_mlp=3, d_ssm=24, gn=8, heads=3, width=4, seq=False):
    sizes = [d_mlp, d_mlp, d_ssm, d_ssm + 2 * gn, heads]
    conv_sizes = [d_ssm, gn, gn]
    # the in_proj output: a (B, L, Dp) tensor, here a column slice of a wider one (row stride > Dp)
    proj = torch.randn(bsz, length, sum(sizes) + 5, device=device).to(dtype)[..., 2:2 + sum(sizes)]
    w = (torch.randn(d_ssm + 2 * gn, width, device=device) / width ** 0.5).to(dtype)
    b = torch.randn(d_ssm + 2 * gn, device=device).to(dtype)
    s = _seq_idx(bsz, length, device) if seq else None
    return proj, w, b, s, sizes, conv_sizes


def _run_split(backend, proj, w, b, s, sizes, conv_sizes, used, grads, act="silu"):
    leaves = [t.detach().clone().requires_grad_(True) for t in (proj, w, b)]
    parts = conv_split(leaves[0], sizes, 3, conv_sizes, leaves[1], leaves[2], seq_idx=s, activation=act,
                       backend=backend)
    torch.autograd.backward([parts[i] for i in used], [grads[i].to(parts[i].dtype) for i in used])
    return list(parts), [t.grad for t in leaves]


_ALL = (0, 1, 2, 3, 4, 5, 6)
_SPLIT_CASES = (
    # subsets of used parts (unused ones get no gradient: zeros in d proj), packed sequences;
    # x/B/C = 24/8/8 channels: every 64-channel tile of the backward spans the split points
    [(used, seq, act, 24, 8) for used in (_ALL, (2, 3, 5, 6), (3, 4), (0, 6))
     for seq, act in ((False, "silu"), (True, None))]
    # 128/64/64: each tile inside one part; 72/40/40: both kinds of tiles
    + [(_ALL, False, "silu", 128, 64), (_ALL, True, "silu", 72, 40)]
)


@pytest.mark.parametrize("used,seq,act,d_ssm,gn", _SPLIT_CASES)
def test_conv_split_matches_split_composition(kernel_device, used, seq, act, d_ssm, gn):
    proj, w, b, s, sizes, conv_sizes = _conv_split_case(torch.float32, kernel_device, seq=seq, d_ssm=d_ssm, gn=gn)
    shapes = [(*proj.shape[:2], n) for n in sizes[:3] + conv_sizes + sizes[4:]]
    grads = [torch.randn(sh, device=kernel_device) for sh in shapes]
    got_parts, got = _run_split("triton", proj, w, b, s, sizes, conv_sizes, used, grads, act)
    ref_parts, ref = _run_split("ref", proj.double(), w.double(), b.double(), s, sizes, conv_sizes, used,
                                [g.double() for g in grads], act)
    for i, (g, r) in enumerate(zip(got_parts, ref_parts)):
        assert g.shape == r.shape and g.dtype == proj.dtype
        assert_close(f"part {i}", g, r, 2e-5)
    assert_close("d proj", got[0], ref[0], 2e-5)
    if any(i in used for i in (3, 4, 5)):
        assert_close("dweight", got[1], ref[1], 2e-5)
        assert_close("dbias", got[2], ref[2], 2e-5)
        assert got[1].dtype == w.dtype and got[2].dtype == b.dtype
    else:  # no conv output used: no gradient reaches the conv
        assert got[1] is None and got[2] is None and ref[1] is None


def test_conv_split_other_piece_counts(kernel_device):
    """A conv part split into one or two pieces (the gradient is concatenated, not read in place)."""
    proj, w, b, s, sizes, _ = _conv_split_case(torch.float32, kernel_device, d_mlp=0)
    dc = sizes[3]
    for conv_sizes in ([dc], [dc - 8, 8]):
        shapes = [(*proj.shape[:2], n) for n in sizes[:3] + conv_sizes + sizes[4:]]
        grads = [torch.randn(sh, device=kernel_device) for sh in shapes]
        used = tuple(range(len(shapes)))
        got_parts, got = _run_split("triton", proj, w, b, None, sizes, conv_sizes, used, grads)
        ref_parts, ref = _run_split("ref", proj.double(), w.double(), b.double(), None, sizes, conv_sizes, used,
                                    [g.double() for g in grads])
        for i, (g, r) in enumerate(zip(got_parts, ref_parts)):
            assert_close(f"part {i} ({len(conv_sizes)} pieces)", g, r, 2e-5)
        for name, g, r in zip(("d proj", "dweight", "dbias"), got, ref):
            assert_close(f"{name} ({len(conv_sizes)} pieces)", g, r, 2e-5)


def test_conv_split_frozen_conv_and_errors(kernel_device):
    """A frozen conv (LoRA fine-tuning) skips dw/db; bad splits are refused."""
    proj, w, b, s, sizes, conv_sizes = _conv_split_case(torch.float32, kernel_device, d_mlp=0)
    p1 = proj.detach().clone().requires_grad_(True)
    parts = conv_split(p1, sizes, 3, conv_sizes, w, b, activation="silu", backend="triton")
    grads = [torch.randn_like(t) for t in parts]
    torch.autograd.backward(parts, grads)
    p2 = proj.detach().clone().double().requires_grad_(True)
    ref = conv_split(p2, sizes, 3, conv_sizes, w.double(), b.double(), activation="silu", backend="ref")
    torch.autograd.backward(ref, [g.double() for g in grads])
    assert_close("d proj (frozen conv)", p1.grad, p2.grad, 2e-5)
    with pytest.raises(ValueError, match="split into"):
        conv_split(proj, [1] + sizes, 3, conv_sizes, w, b)
    with pytest.raises(ValueError, match="proj must have 3"):
        conv_split(proj[0], sizes, 3, conv_sizes, w, b)
    with pytest.raises(ValueError, match="proj is empty"):
        conv_split(proj[:0], sizes, 3, conv_sizes, w, b, backend="triton")
    with pytest.raises(ValueError, match="non-negative"):
        conv_split(proj, [-1, 1] + sizes[2:], 3, conv_sizes, w, b)
    with pytest.raises(ValueError, match="conv_sizes"):
        conv_split(proj, sizes, 3, conv_sizes[:2], w, b)
    with pytest.raises(ValueError, match="weight"):
        conv_split(proj, sizes, 3, conv_sizes, w[:5], b, backend="triton")


# ------------------------------------------------------------------------------------------
# GPU: bf16 at a Mamba-2 block's shapes; the causal-conv1d package is the peer

@pytest.mark.gpu
@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("shape", [(32, 192, 1792), (2, 640, 5376), (1, 4099, 259)])
def test_gpu_bf16_vs_reference_and_peer(shape, seq):
    bsz, length, dim = shape
    x, w, b = _make(bsz, dim, length, 4, torch.bfloat16, "cuda", True, True)
    s = _seq_idx(bsz, length, "cuda") if seq else None
    dout = torch.randn(bsz, dim, length, dtype=torch.float64, device="cuda")
    got = _run(causal_conv1d, x, w, b, s, "silu", dout, backend="triton")
    ref = _run(causal_conv1d_ref, x.double(), w.double(), b.double(), s, "silu", dout)
    low = _run(causal_conv1d_ref, x, w, b, s, "silu", dout)  # torch, fp32 math, bf16 in/out
    names = ("out", "dx", "dweight", "dbias")
    for name, g, lo, r in zip(names, got, low, ref):
        assert_close_lowp(name, g, r, lo, floor=2.0 ** -9)
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return
    if dim % 8:
        return  # the peer refuses channel counts not divisible by 8 (its own error); ours is checked above
    peer = _run(lambda x_, w_, b_, seq_idx, activation: causal_conv1d_fn(x_, w_, b_, seq_idx=seq_idx, activation=activation),
                x, w, b, s, "silu", dout)
    for name, g, p, r in zip(names, got, peer, ref):
        if seq and name == "out":
            # the peer does not zero padding tokens (seq_idx < 0); compare the real tokens only
            keep = (s >= 0).unsqueeze(1)
            g, p, r = g * keep, p * keep, r * keep
        assert_close_lowp(f"vs causal-conv1d {name}", g, r, p, factor=2.0, floor=2.0 ** -9)


@pytest.mark.gpu
@pytest.mark.parametrize("seq", [False, True])
def test_gpu_conv_split_bf16(seq):
    """A 2.7b-like split at B2 L640 in bf16: against the reference composition in fp64 and its
    own bf16 rounding."""
    proj, w, b, s, sizes, conv_sizes = _conv_split_case(torch.bfloat16, "cuda", bsz=2, length=640, d_mlp=0,
                                                        d_ssm=1280, gn=128, heads=20, seq=seq)
    shapes = [(*proj.shape[:2], n) for n in sizes[:3] + conv_sizes + sizes[4:]]
    grads = [torch.randn(sh, device="cuda") for sh in shapes]
    used = tuple(range(7))
    got_parts, got = _run_split("triton", proj, w, b, s, sizes, conv_sizes, used, grads)
    low_parts, low = _run_split("ref", proj, w, b, s, sizes, conv_sizes, used, grads)
    ref_parts, ref = _run_split("ref", proj.double(), w.double(), b.double(), s, sizes, conv_sizes, used,
                                [g.double() for g in grads])
    for name, g, r, lo in zip(("out x", "out B", "out C", "d proj", "dweight", "dbias"),
                              got_parts[3:6] + got, ref_parts[3:6] + ref, low_parts[3:6] + low):
        assert_close_lowp(name, g, r, lo, floor=2.0 ** -9)
