# SPDX-License-Identifier: Apache-2.0
"""Sequence split for long rows (samkern/ops/ssd/split.py; forced here through
``FWD_TUNING["split_len"]``), forward and backward, against the reference and the one-pass kernels.

CPU: the kernel in the Triton interpreter, fp32, internal chunk 16, segments of 32 tokens.
"""
from __future__ import annotations

import pytest
import torch

import samkern.ops.ssd.fwd as fwd_mod
from samkern.ops.ssd.chunk import ssd_chunk_scan
from samkern.ops.ssd.ref import ssd_chunk_scan_ref
from samkern.ops.ssd.split import segment_layout, ssd_fwd_split
from samkern.testing import assert_close
from tests.ops.test_ssd import DEV, ON_CPU, make, small_chunks, to64  # noqa: F401 (small_chunks: autouse fixture)

SEG = 32 if ON_CPU else 256


def _split_on(monkeypatch, seg=SEG):
    monkeypatch.setitem(fwd_mod.FWD_TUNING, "split_len", seg)


@pytest.fixture(params=["cache", "compute"])
def split_dt(request, monkeypatch):
    """The second pass reads the dt cache the first pass stored, or processes dt itself."""
    monkeypatch.setitem(fwd_mod.FWD_TUNING, "split_dt", request.param)
    return request.param


@pytest.mark.parametrize("opts", [
    dict(),
    dict(D="chan", z=True, dt_bias=True, init=True),
    dict(D="head", dt_bias=True, softplus=False, dt_limit=(0.05, 0.6), init=True),
], ids=["plain", "all_options", "clamp_no_softplus"])
def test_split_matches_reference_and_one_pass(opts, monkeypatch, split_dt):
    """Two rows of 3.4 segments (ragged last segment): out and final states."""
    L = int(3.4 * SEG)
    kw = make(2, L, 3, 16, 16, **opts)
    ref_out, ref_fin = ssd_chunk_scan_ref(**to64(kw), chunk_size=64, return_final_states=True)
    with torch.no_grad():
        one_out, one_fin = ssd_chunk_scan(**kw, chunk_size=64, return_final_states=True, backend="triton")
        _split_on(monkeypatch)
        out, fin = ssd_chunk_scan(**kw, chunk_size=64, return_final_states=True, backend="triton")
    assert_close("split out vs ref", out.double(), ref_out, rtol=2e-5)
    assert_close("split final vs ref", fin.double(), ref_fin, rtol=2e-5)
    assert_close("split out vs one pass", out, one_out, rtol=2e-5)
    assert_close("split final vs one pass", fin, one_fin, rtol=2e-5)


GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _grads(scan, kw, dout, dfin, **extra):
    """Every input gradient of out·dout + final·dfin through ``scan`` (dict by input name)."""
    out, fin = scan(**kw, chunk_size=64, return_final_states=True, **extra)
    names = [k for k in GRAD_NAMES if kw.get(k) is not None]
    loss = (out.double() * dout).sum() + (fin.double() * dfin).sum()
    return dict(zip(names, torch.autograd.grad(loss, [kw[k] for k in names])))


@pytest.mark.parametrize("opts", [
    dict(),
    dict(D="chan", z=True, dt_bias=True, init=True),
    dict(D="head", dt_bias=True, softplus=False, dt_limit=(0.05, 0.6), init=True, G=2),
], ids=["plain", "all_options", "clamp_groups"])
def test_split_backward_matches_reference(opts, monkeypatch, split_dt):
    """Training through the split (forward in segments, the dS walk split and stitched backwards):
    every gradient, including through final_states and into initial_states, against fp64 autograd
    through the reference and against the one-pass kernels. Two rows of 3.4 segments."""
    L = int(3.4 * SEG)
    G = opts.pop("G", 1)
    kw = make(2, L, 4, 16, 16, G=G, requires_grad=True, **opts)
    dout = torch.randn(2, L, 4, 16, dtype=torch.float64, device=kw["x"].device)
    dfin = torch.randn(2, 4, 16, 16, dtype=torch.float64, device=kw["x"].device)
    k64 = {k: (v.detach().double().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point()
               else v) for k, v in kw.items()}
    ref = _grads(ssd_chunk_scan_ref, k64, dout, dfin)
    one = _grads(ssd_chunk_scan, kw, dout, dfin, backend="triton")
    calls = []
    import samkern.ops.ssd.split as split_mod

    real = split_mod.ssd_bwd_split
    monkeypatch.setattr(split_mod, "ssd_bwd_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    _split_on(monkeypatch)
    got = _grads(ssd_chunk_scan, kw, dout, dfin, backend="triton")
    assert calls == [1], "the split backward did not run"
    for k in ref:
        assert_close(f"split d{k} vs ref", got[k].double(), ref[k], rtol=5e-5)
        assert_close(f"split d{k} vs one pass", got[k], one[k], rtol=5e-5)


def test_split_not_used_for_short_rows_or_seq_idx(monkeypatch):
    """Rows shorter than two segments, and packed sequences (seq_idx), take the one-pass kernels."""
    calls = []
    import samkern.ops.ssd.split as split_mod

    real = split_mod.ssd_fwd_split
    monkeypatch.setattr(split_mod, "ssd_fwd_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    _split_on(monkeypatch)
    with torch.no_grad():
        ssd_chunk_scan(**make(1, SEG + 5, 2, 16, 16), chunk_size=64, backend="triton")
        L = 3 * SEG
        seq_idx = (torch.arange(L, device=DEV) >= SEG + 3).to(torch.int32)[None]
        ssd_chunk_scan(**make(1, L, 2, 16, 16, seq_idx=seq_idx), chunk_size=64, backend="triton")
        assert calls == []
        ssd_chunk_scan(**make(1, 2 * SEG, 2, 16, 16), chunk_size=64, backend="triton")
    assert calls == [1]
    out = ssd_chunk_scan(**make(1, 2 * SEG, 2, 16, 16, requires_grad=True), chunk_size=64, backend="triton")
    assert calls == [1, 1]  # with gradients too
    out.sum().backward()


def test_segment_layout_and_bad_length():
    cu, idx = segment_layout(2, 70, 32, "cpu")
    assert cu.tolist() == [0, 32, 64, 70, 102, 134, 140]
    assert idx.tolist() == list(range(6))
    kw = make(1, 64, 2, 16, 16, device="cpu")
    T = 64
    with pytest.raises(ValueError, match="multiple of the chunk"):
        ssd_fwd_split(kw["x"].reshape(T, 2, 16), kw["dt"].reshape(T, 2), kw["A"], kw["B"].reshape(T, 1, 16),
                      kw["C"].reshape(T, 1, 16), 1, 64, 24, block_q=16)


@pytest.mark.gpu
@pytest.mark.skipif(ON_CPU, reason="needs a CUDA GPU")
def test_split_gpu_bf16_long_and_graph(monkeypatch, split_dt):
    """bf16, B1 L8192 H16 P64 N128 in 1024-token segments vs the one-pass kernel (itself checked
    against mamba-ssm elsewhere), then replayed from a CUDA graph (no host sync on this path)."""
    from samkern.testing import rel_err

    kw = make(1, 8192, 16, 64, 128, dtype=torch.bfloat16, D="head", dt_bias=True, init=True)
    with torch.no_grad():
        one_out, one_fin = ssd_chunk_scan(**kw, chunk_size=256, return_final_states=True, backend="triton")
        _split_on(monkeypatch, 1024)
        out, fin = ssd_chunk_scan(**kw, chunk_size=256, return_final_states=True, backend="triton")
        assert rel_err(out, one_out) < 1e-2, rel_err(out, one_out)
        assert rel_err(fin, one_fin) < 1e-3, rel_err(fin, one_fin)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ssd_chunk_scan(**kw, chunk_size=256, backend="triton")
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            captured = ssd_chunk_scan(**kw, chunk_size=256, backend="triton")
        g.replay()
        torch.cuda.synchronize()
    assert rel_err(captured, out) < 1e-6


def test_pick_split_len_heuristic(monkeypatch):
    """On by itself only for long rows whose one-pass grid leaves SMs idle; segments of 1024,
    longer so that a row never needs more than 64; FWD_TUNING overrides (0 = never)."""
    import samkern.ops.ssd.split as split_mod

    monkeypatch.setattr(split_mod, "num_sms", lambda dev: 132)  # an H100
    cuda = torch.device("cuda")
    pick = split_mod.pick_split_len
    assert pick(1, 16384, 80, 64, 128, 64, cuda) == 1024  # the measured case: 80 programs
    assert pick(1, 1 << 20, 2, 64, 16, 64, cuda) == (1 << 20) // 64  # 64 segments
    assert pick(1, 100_000, 24, 64, 128, 64, cuda) == 1600  # ⌈100000 / 64⌉ rounded up to the chunk
    assert pick(2, 16384, 80, 64, 128, 64, cuda) == 0  # 160 programs fill the SMs
    assert pick(1, 16384, 24, 128, 256, 64, cuda) == 1024  # P-blocks count: 24 heads x 4 = 96 < 132 ...
    assert pick(1, 16384, 40, 128, 256, 64, cuda) == 0  # ... 40 x 4 = 160 >= 132
    assert pick(1, 2048, 8, 64, 128, 64, cuda) == 0  # short rows: one pass
    assert pick(1, 16384, 8, 64, 128, 64, torch.device("cpu")) == 0
    monkeypatch.setitem(fwd_mod.FWD_TUNING, "split_len", 0)
    assert pick(1, 16384, 80, 64, 128, 64, cuda) == 0
    monkeypatch.setitem(fwd_mod.FWD_TUNING, "split_len", 256)
    assert pick(1, 2048, 80, 64, 128, 64, torch.device("cpu")) == 256
