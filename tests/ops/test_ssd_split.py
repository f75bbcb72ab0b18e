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


@pytest.mark.parametrize("pass1", ["sum", "walk"])
@pytest.mark.parametrize("opts", [
    dict(),
    dict(D="chan", z=True, dt_bias=True, init=True),
    dict(D="head", dt_bias=True, softplus=False, dt_limit=(0.05, 0.6), init=True),
], ids=["plain", "all_options", "clamp_no_softplus"])
def test_split_matches_reference_and_one_pass(opts, monkeypatch, split_dt, pass1):
    """Two rows of 3.4 segments (ragged last segment): out and final states, with either first pass
    (``FWD_TUNING["split_pass1"]``: the weighted-sum kernel, or the forward kernel's state-only walk)."""
    monkeypatch.setitem(fwd_mod.FWD_TUNING, "split_pass1", pass1)
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
    dict(D="chan", z=True, dt_bias=True, init=True, pass1="walk"),
], ids=["plain", "all_options", "clamp_groups", "all_options_walk_first_pass"])
def test_split_backward_matches_reference(opts, monkeypatch, split_dt):
    """Training through the split (forward in segments, the dS walk split and stitched backwards):
    every gradient, including through final_states and into initial_states, against fp64 autograd
    through the reference and against the one-pass kernels. Two rows of 3.4 segments. The last
    case takes the walks as both first passes (``FWD_TUNING["split_pass1"]``) instead of the weighted sums."""
    opts = dict(opts)
    monkeypatch.setitem(fwd_mod.FWD_TUNING, "split_pass1", opts.pop("pass1", None))
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


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
def test_split_backward_fp16_fast_decays(monkeypatch):
    """fp16 training through the split with heads decaying by ~8 to ~900 per 16-token chunk: every
    gradient finite and within fp16 rounding of fp64 autograd through the reference. The split's
    backward asks for factored decays, whose fp16 operand overflowed (dx NaN) until fp16 inputs
    stopped taking them (session 37, ``bwd._factor_range``)."""
    L = int(3.4 * SEG)
    kw = make(2, L, 4, 16, 16, dtype=torch.float16, D="head", dt_bias=True, init=True, requires_grad=True)
    with torch.no_grad():
        # dt ~ softplus(0.5 + N(0, 0.5)) ~ 1: chunk decays ~8, ~30, ~60 (factored: within the bound
        # 80, the last two past fp16's exp(11)) and ~900 (the [Q, Q] exp launch)
        kw["A"].copy_(torch.tensor([-0.5, -2.0, -4.0, -60.0], device=kw["A"].device))
        kw["dt_bias"].fill_(0.5)
    dout = torch.randn(2, L, 4, 16, dtype=torch.float64, device=kw["x"].device)
    dfin = torch.randn(2, 4, 16, 16, dtype=torch.float64, device=kw["x"].device)
    k64 = {k: (v.detach().double().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point()
               else v) for k, v in kw.items()}
    ref = _grads(ssd_chunk_scan_ref, k64, dout, dfin)
    _split_on(monkeypatch)
    import samkern.ops.ssd.bwd as bwd_mod

    # one head per chunk program, so that the slow heads' blocks are within the factoring bound
    monkeypatch.setitem(bwd_mod.BWD_TUNING, "heads_per_program", 1)
    got = _grads(ssd_chunk_scan, kw, dout, dfin, backend="triton")
    for k in ref:
        assert bool(torch.isfinite(got[k]).all()), f"split d{k} not finite"
        assert_close(f"split d{k} vs ref", got[k].double(), ref[k], rtol=5e-3)  # fp16 dot operands


@pytest.mark.parametrize("G", [1, 2])
def test_segment_sums_match_torch(G):
    """The first pass's weighted sums (``segment_sums``) against a torch oracle written from their
    definitions, over ragged segments (the last one shorter than a chunk) with decays strong
    enough that early tokens underflow: forward S = Σ_s exp(ℓ − A_s) dt_s x_s ⊗ B_s with ℓ and
    the dt cache (vs ``bwd.dt_cache``), backward G = Σ_t exp(A_t) (dout_t · silu(z_t)) ⊗ C_t.
    NaN-poisoned dt cache: every valid entry must be written."""
    import torch.nn.functional as F

    from samkern.ops.ssd.bwd import dt_cache
    from samkern.ops.ssd.split import segment_sums

    H, P, N, Q = 4, 16, 16, 16
    L = 3 * SEG + 5
    kw = make(1, L, H, P, N, G=G, z=True, dt_bias=True)
    kw["A"] = -torch.tensor([0.5, 3.0, 20.0, 150.0], device=DEV)  # up to ~150 per token: underflow
    x, dt, B, C, z = (kw[k].reshape(L, *kw[k].shape[2:]) for k in ("x", "dt", "B", "C", "z"))
    dout = torch.randn_like(x)
    cu, _ = segment_layout(1, L, SEG, DEV)
    nseg = cu.numel() - 1
    dtc = torch.full((3, H, L), float("nan"), device=DEV)
    ell = torch.full((nseg, H), float("nan"), device=DEV)
    S = segment_sums(B, x, cu, P, Q, grad=False, dt=dt, A=kw["A"], dt_bias=kw["dt_bias"], dt_softplus=True,
                     dt_cache=dtc, ell=ell)
    Gs = segment_sums(C, dout, cu, P, Q, grad=True, z=z, dt_cache=dtc)

    ref_dtc = dt_cache(dt, kw["A"], kw["dt_bias"], cu, block_q=Q, dt_softplus=True, dt_limit=(0.0, float("inf")))
    assert_close("dt cache", dtc, ref_dtc, rtol=1e-6)
    d = F.softplus(dt.double() + kw["dt_bias"].double())  # (L, H)
    hg = torch.arange(H, device=DEV) // (H // G)
    for k in range(nseg):
        s0, s1 = int(cu[k]), int(cu[k + 1])
        dk = d[s0:s1]
        acum = torch.cumsum(dk * kw["A"].double(), 0)  # (n, H), through each token
        w_f = torch.exp(acum[-1] - acum) * dk
        Bk, Ck = B[s0:s1].double()[:, hg], C[s0:s1].double()[:, hg]  # (n, H, N)
        S_ref = torch.einsum("th,thp,thn->hpn", w_f, x[s0:s1].double(), Bk)
        dy = dout[s0:s1].double() * F.silu(z[s0:s1].double())
        G_ref = torch.einsum("th,thp,thn->hpn", torch.exp(acum), dy, Ck)
        assert_close(f"S seg {k}", S[k].double(), S_ref, rtol=2e-5)
        assert_close(f"G seg {k}", Gs[k].double(), G_ref, rtol=2e-5)
        assert_close(f"ell seg {k}", ell[k].double(), acum[-1], rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(ON_CPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("P, N, block_q", [(32, 16, 64), (64, 64, 64), (64, 128, 64), (128, 128, 64),
                                           (128, 256, 64), (64, 128, 128), (64, 256, 128)])
def test_gpu_segment_sums_every_block_size(P, N, block_q):
    """bf16 on the GPU, at the block sizes the first pass takes (the state tile [N, min(P, 8192 /
    N)]: N 16 to 256, P-blocks 32 to 128, the training and inference chunks): ``segment_sums`` against the kernels it replaces (the forward's
    state-only walk, the dS walk from a zero seed), states within 1e-2, log-decays 1e-5; the dt
    cache both ways within 1e-6."""
    from samkern.ops.ssd.bwd import _pick_block_p, dstate_walk
    from samkern.ops.ssd.fwd import ssd_fwd
    from samkern.ops.ssd.split import segment_sums
    from samkern.testing import rel_err

    H, L, seg = 4, 2048 + 37, 512
    kw = make(1, L, H, P, N, dtype=torch.bfloat16, z=True, dt_bias=True)
    x, dt, B, C, z = (kw[k].reshape(L, *kw[k].shape[2:]) for k in ("x", "dt", "B", "C", "z"))
    dout = torch.randn_like(x)
    cu, idx = segment_layout(1, L, seg, DEV)
    nseg = cu.numel() - 1
    dtc = torch.full((3, H, L), float("nan"), device=DEV)
    dtc_w = torch.full((3, H, L), float("nan"), device=DEV)
    ell = torch.full((nseg, H), float("nan"), device=DEV)
    ell_w = torch.full((nseg, H), float("nan"), device=DEV)
    S = segment_sums(B, x, cu, P, block_q, grad=False, dt=dt, A=kw["A"], dt_bias=kw["dt_bias"], dt_softplus=True,
                     dt_cache=dtc, ell=ell)
    _, S_w, _, _ = ssd_fwd(x, dt, kw["A"], B, C, cu, None, dt_bias=kw["dt_bias"], dt_softplus=True,
                           want_final_states=True, states_only=True, decay_out=ell_w, dt_cache_out=dtc_w,
                           block_q=block_q)
    Gs = segment_sums(C, dout, cu, P, block_q, grad=True, z=z, dt_cache=dtc)
    G_w = dstate_walk(dout, z, dtc, C, cu, idx, nseg, None, None, P=P, block_q=block_q, block_p=_pick_block_p(P),
                      zero_fill=False)
    assert_close("dt cache", dtc, dtc_w, rtol=1e-6)
    assert rel_err(S, S_w) < 1e-2, rel_err(S, S_w)
    assert rel_err(Gs, G_w) < 1e-2, rel_err(Gs, G_w)
    assert rel_err(ell, ell_w) < 1e-5, rel_err(ell, ell_w)


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


@pytest.mark.gpu
@pytest.mark.skipif(ON_CPU, reason="needs a CUDA GPU")
def test_split_gpu_fp16_backward_fast_decays(monkeypatch):
    """fp16 training on a long row (the split by its own heuristic) with Mamba-2's initial decays
    (A in [-16, -1], dt ~ 0.05-0.1: up to ~100 per 64-token chunk): every gradient finite and equal
    to the one-pass backward's (itself checked against mamba-ssm). The split's backward asks the
    chunk kernel for factored decays, whose fp16 operand overflowed past a chunk decay of ~22
    (dx NaN) until fp16 stopped taking them (session 37, ``bwd._factor_range``)."""
    from samkern.testing import rel_err

    H = 16
    kw = make(1, 8192, H, 64, 128, dtype=torch.float16, D="head", dt_bias=True, requires_grad=True)
    with torch.no_grad():
        kw["A"].copy_(-torch.linspace(1.0, 16.0, H, device=DEV))
        kw["dt_bias"].fill_(-2.5)  # softplus(-2.5 + N(0, 0.5)) ~ 0.08
    dout = torch.randn_like(kw["x"])
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias"]

    def grads():
        for n in names:
            kw[n].grad = None
        ssd_chunk_scan(**kw, chunk_size=64, backend="triton").backward(dout)
        return [kw[n].grad.clone() for n in names]

    import samkern.ops.ssd.split as split_mod

    assert split_mod.pick_split_len(1, 8192, H, 64, 128, 64, kw["x"].device) > 0  # on by itself
    split = grads()
    _split_on(monkeypatch, 0)
    one = grads()
    for n, g, r in zip(names, split, one):
        assert bool(torch.isfinite(g).all()), f"{n}: not finite"
        assert rel_err(g, r) < 2e-2, (n, rel_err(g, r))


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
