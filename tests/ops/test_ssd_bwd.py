# SPDX-License-Identifier: Apache-2.0
"""Tests of the SSD backward kernel :func:`samkern.ops.ssd.bwd.ssd_bwd`.

The kernel is fed ``chunk_states`` made here by a pure-torch token-by-token recurrence
(independent of the forward kernel) and every gradient is compared with autograd through
(a) that recurrence in fp64 and (b) ``ssd_chunk_scan_ref`` when it exists. On CPU the kernel
runs in the Triton interpreter (fp32/fp16 inputs, tiny shapes); the ``gpu`` tests add bf16 and
a comparison with mamba-ssm's backward at a SAM shape.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F

import samkern.ops.ssd.bwd as bwd_mod
from samkern.ops.ssd.bwd import ssd_bwd
from samkern.testing import assert_close, assert_exact, poisoned_empty, rel_err

HAS_CUDA = torch.cuda.is_available()
GRAD_NAMES = ("dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial_states")
INPUT_OF = dict(dx="x", ddt="dt", dA="A", dB="B", dC="C", dD="D", dz="z", ddt_bias="dt_bias",
                dinitial_states="initial_states")


# --------------------------------------------------------------------------- reference
def _proc_dt(dt, dt_bias, softplus, dt_limit):
    v = dt if dt_bias is None else dt + dt_bias
    if softplus:
        v = F.softplus(v, threshold=20.0)
    return v.clamp(dt_limit[0], dt_limit[1])


def recurrence(x, dt, A, B, C, cu: List[int], init_idx: List[int], D=None, z=None, dt_bias=None,
               initial_states=None, dt_softplus=False, dt_limit=(0.0, math.inf), block_q: Optional[int] = None):
    """Token-by-token SSD on the flat layout. Shapes: x (T,H,P), dt (T,H), A (H,), B/C (T,G,N).

    Returns ``out`` (T,H,P), final states (nseq,H,P,N) and, when ``block_q`` is given,
    ``chunk_states`` (T//block_q + nseq, H, P, N) fp32 in the kernel's layout (else None).
    """
    T, H, P = x.shape
    G, N = B.shape[1:]
    rep = H // G
    dtp = _proc_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh = B.repeat_interleave(rep, dim=1)  # (T, H, N)
    Ch = C.repeat_interleave(rep, dim=1)
    outs, finals = [], []
    cs = None
    if block_q is not None:
        cs = torch.full((T // block_q + len(cu) - 1, H, P, N), float("nan"), dtype=torch.float32)
    for i in range(len(cu) - 1):
        if init_idx[i] >= 0:
            S = initial_states[init_idx[i]].to(x.dtype)
        else:
            S = x.new_zeros(H, P, N)
        for k, t in enumerate(range(cu[i], cu[i + 1])):
            if cs is not None and k % block_q == 0:
                cs[cu[i] // block_q + i + k // block_q] = S.detach().float()
            dA = torch.exp(dtp[t] * A)  # (H,)
            S = S * dA[:, None, None] + (dtp[t][:, None] * x[t])[:, :, None] * Bh[t][:, None, :]
            y = (S * Ch[t][:, None, :]).sum(-1)  # (H, P)
            if D is not None:
                y = y + (D[:, None] if D.dim() == 1 else D) * x[t]
            if z is not None:
                y = y * F.silu(z[t])
            outs.append(y)
        finals.append(S)
    return torch.stack(outs), torch.stack(finals), cs


def make_case(T_lens, H, G, P, N, *, D=None, z=False, dt_bias=False, softplus=False, dt_limit=(0.0, math.inf),
              n_init=0, init_idx=None, dfinal=False, dtype=torch.float32):
    """Fresh random inputs (never all-zero). ``D`` is None, "head" or "channel"."""
    T = sum(T_lens)
    cu = [0]
    for n in T_lens:
        cu.append(cu[-1] + n)
    nseq = len(T_lens)
    inp: Dict[str, Optional[torch.Tensor]] = {}
    inp["x"] = torch.randn(T, H, P)
    inp["dt"] = torch.randn(T, H) * 0.5 + (0.0 if softplus else 0.6)
    if not softplus:
        inp["dt"] = inp["dt"].abs() * 0.3 + 0.02  # positive so the default clamp at 0 stays inactive
    inp["A"] = -(0.3 + torch.rand(H))
    inp["B"] = torch.randn(T, G, N)
    inp["C"] = torch.randn(T, G, N)
    inp["D"] = None if D is None else torch.randn(H) if D == "head" else torch.randn(H, P)
    inp["z"] = torch.randn(T, H, P) if z else None
    inp["dt_bias"] = (torch.rand(H) - 2.0) if dt_bias else None
    inp["initial_states"] = torch.randn(n_init, H, P, N) if n_init else None
    for k in ("x", "B", "C", "z"):
        if inp[k] is not None:
            inp[k] = inp[k].to(dtype)
    idx = init_idx if init_idx is not None else [-1] * nseq
    return dict(inp=inp, cu=cu, init_idx=idx, dt_softplus=softplus, dt_limit=dt_limit,
                dout=torch.randn(T, H, P).to(dtype), dfinal=torch.randn(nseq, H, P, N) if dfinal else None)


def reference_grads(case, block_q):
    """fp64 autograd through :func:`recurrence`; returns (grads dict, chunk_states fp32)."""
    inp = {k: (None if v is None else v.double().requires_grad_(True)) for k, v in case["inp"].items()}
    out, fin, cs = recurrence(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], case["cu"], case["init_idx"],
                              D=inp["D"], z=inp["z"], dt_bias=inp["dt_bias"], initial_states=inp["initial_states"],
                              dt_softplus=case["dt_softplus"], dt_limit=case["dt_limit"], block_q=block_q)
    loss = (out * case["dout"].double()).sum()
    if case["dfinal"] is not None:
        loss = loss + (fin * case["dfinal"].double()).sum()
    used = {k: v for k, v in inp.items() if v is not None}
    grads = torch.autograd.grad(loss, list(used.values()), allow_unused=True)
    g = dict(zip(used.keys(), grads))
    ref = {}
    for name in GRAD_NAMES:
        t = inp[INPUT_OF[name]]
        if t is None:
            ref[name] = None
        else:
            gg = g[INPUT_OF[name]]
            ref[name] = torch.zeros_like(t) if gg is None else gg
    return ref, cs


@contextlib.contextmanager
def bwd_tuning(**overrides):
    """Temporarily override ``BWD_TUNING`` launch settings (known keys only: a misspelt one would
    leave the default in place and the test testing it)."""
    unknown = set(overrides) - set(bwd_mod.BWD_TUNING)
    assert not unknown, f"not BWD_TUNING keys: {sorted(unknown)}"
    old = dict(bwd_mod.BWD_TUNING)
    bwd_mod.BWD_TUNING.update(overrides)
    try:
        yield
    finally:
        bwd_mod.BWD_TUNING.clear()
        bwd_mod.BWD_TUNING.update(old)


def run_kernel(case, block_q, cs, device, block_p=None, factor_range=None, seq_len=None):
    inp = {k: (None if v is None else v.to(device)) for k, v in case["inp"].items()}
    cu = torch.tensor(case["cu"], dtype=torch.int32, device=device)
    idx = torch.tensor(case["init_idx"], dtype=torch.int32, device=device)
    res = ssd_bwd(case["dout"].to(device), inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], cu, idx, cs.to(device),
                  block_q, D=inp["D"], z=inp["z"], dt_bias=inp["dt_bias"], initial_states=inp["initial_states"],
                  dt_softplus=case["dt_softplus"], dt_limit=case["dt_limit"],
                  dfinal_states=None if case["dfinal"] is None else case["dfinal"].to(device), block_p=block_p,
                  factor_range=factor_range, seq_len=seq_len)
    return dict(zip(GRAD_NAMES, res))


def check_grads(got, ref, case, rtol):
    for name in GRAD_NAMES:
        src = case["inp"][INPUT_OF[name]]
        if src is None:
            assert got[name] is None, f"{name} should be None"
            continue
        assert got[name].dtype == src.dtype, f"{name}: dtype {got[name].dtype} != input dtype {src.dtype}"
        assert_close(name, got[name].cpu(), ref[name], rtol=rtol)


# --------------------------------------------------------------------------- configurations
CASES = {
    # one sequence, multiple of block_q, nothing optional
    "plain": dict(T_lens=[48], H=2, G=1, P=16, N=16),
    # H = 1 (Triton specializes integer arguments equal to 1 when compiled)
    "single_head": dict(T_lens=[20, 9], H=1, G=1, P=16, N=16, D="head", dfinal=True),
    # every option: D per channel, z, bias+softplus+active clamp, G=H (no head sharing),
    # ragged sequences (length 1, not multiples of block_q), initial states and dfinal
    "full_channelD": dict(T_lens=[1, 37, 16, 21], H=2, G=2, P=16, N=16, D="channel", z=True, dt_bias=True,
                          softplus=True, dt_limit=(0.06, 0.25), n_init=3, init_idx=[2, -1, 0, -1], dfinal=True),
    # heads sharing one B/C group (dB/dC summed over them), D per head, P and N not powers of two
    "shared_group_headD": dict(T_lens=[33, 5], H=2, G=1, P=12, N=10, D="head", z=True, dt_bias=True, softplus=True,
                               dt_limit=(0.0, 0.3), n_init=2, init_idx=[1, 0], dfinal=True),
}


def _check_clamp_active(case):
    """The clamp case must clamp some tokens and leave others free (else it tests nothing)."""
    inp = case["inp"]
    v = _proc_dt(inp["dt"], inp["dt_bias"], case["dt_softplus"], (-math.inf, math.inf))
    lo, hi = case["dt_limit"]
    clamped = (v < lo) | (v > hi)
    assert 0 < int(clamped.sum()) < clamped.numel()


@pytest.mark.parametrize("name", list(CASES))
def test_bwd_matches_recurrence_fp32(name, kernel_device):
    cfg = dict(CASES[name])
    case = make_case(**cfg)
    if cfg.get("dt_limit", (0.0, math.inf))[0] > 0:
        _check_clamp_active(case)
    ref, cs = reference_grads(case, block_q=16)
    got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


def test_bwd_first_row_states_unread_without_initial_states(kernel_device):
    """The known-zero contract (``bwd.py`` docstring, "Known-zero states"): without
    ``initial_states`` the state entering a sequence's first chunk is zero and its chunk-state row
    is never read. NaN in those rows must not reach any gradient, and the gradients must still be
    the recurrence's (multi-chunk ragged sequences, no d final_states: the last-chunk masks too)."""
    case = make_case(T_lens=[40, 23, 16], H=2, G=1, P=16, N=16, D="head", dt_bias=True, softplus=True)
    ref, cs = reference_grads(case, block_q=16)
    cu = case["cu"]
    first_rows = [cu[i] // 16 + i for i in range(len(cu) - 1)]
    assert all(bool((cs[r] == 0).all()) for r in first_rows)  # what the forward stores there
    cs = cs.clone()
    cs[first_rows] = float("nan")
    got = run_kernel(case, 16, cs, kernel_device)
    for name, g in got.items():
        if g is not None:
            assert bool(torch.isfinite(g).all()), f"{name}: a first-row state was read"
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


@pytest.mark.parametrize("with_init,with_dfinal", [(False, False), (False, True), (True, False), (True, True)])
def test_bwd_known_zero_ends(with_init, with_dfinal, kernel_device):
    """The known-zero ends of every sequence (without d final_states dS = 0 leaving its last chunk,
    without initial states no state enters its first) in every combination, with sequences of one
    chunk (both ends the same chunk), two and three chunks, and NaN-poisoned buffers, so a skipped
    store that something reads shows up. The dS walk peels these ends off its chunk loop (steps
    compiled without the known-zero loads, dots and stores), so this also checks the peeled steps
    and the loop bounds around them."""
    lens = [5, 16, 20, 45, 1]  # block_q 16: 1, 1, 2, 3, 1 chunks
    n = len(lens)
    case = make_case(lens, H=3, G=1, P=16, N=16, D="head", dt_bias=True, softplus=True,
                     n_init=n if with_init else 0, init_idx=list(range(n)) if with_init else None,
                     dfinal=with_dfinal)
    ref, cs = reference_grads(case, block_q=16)
    with poisoned_empty():
        got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


@pytest.mark.parametrize("softplus,dt_limit", [(True, (0.06, 0.25)), (False, (0.0, math.inf))])
def test_dt_cache_matches_reference(softplus, dt_limit, kernel_device):
    """The dt cache the forward stores (``ssd_fwd(dt_cache_out=...)``) and the one
    :func:`bwd_mod.dt_cache` computes both equal torch's: planes a (in-chunk cumsum of dt·A,
    restarting at every chunk of every sequence), processed dt and d dt / d(dt_raw + dt_bias)
    (autograd through softplus and the clamp). The forward's buffer starts NaN-poisoned, so an
    unwritten token fails; P = 24 with block_p 16 has two P-blocks, only one may write."""
    from samkern.ops.ssd import fwd as fwd_mod

    case = make_case([37, 16, 5], H=3, G=1, P=24, N=16, dt_bias=True, softplus=softplus, dt_limit=dt_limit)
    if softplus:
        _check_clamp_active(case)
    inp = {k: (None if v is None else v.to(kernel_device)) for k, v in case["inp"].items()}
    cu = torch.tensor(case["cu"], dtype=torch.int32, device=kernel_device)
    T, H = inp["dt"].shape
    bq = 16
    from_fwd = torch.full((3, H, T), float("nan"), device=kernel_device)
    old = fwd_mod.FWD_TUNING.get("block_p")
    fwd_mod.FWD_TUNING["block_p"] = 16
    try:
        fwd_mod.ssd_fwd(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], cu, None, dt_bias=inp["dt_bias"],
                        dt_softplus=softplus, dt_limit=dt_limit, block_q=bq, dt_cache_out=from_fwd)
    finally:
        fwd_mod.FWD_TUNING["block_p"] = old
    standalone = bwd_mod.dt_cache(inp["dt"], inp["A"], inp["dt_bias"], cu, block_q=bq, dt_softplus=softplus,
                                  dt_limit=dt_limit)
    # the equal-length form (no search over cu) against the searched one on the same tokens read as
    # rows of 29 (two chunks each, the second ragged), bitwise
    T_eq = (T // 29) * 29
    cu_eq = torch.arange(0, T_eq + 1, 29, dtype=torch.int32, device=kernel_device)
    equal = torch.full((3, H, T_eq), float("nan"), device=kernel_device)
    bwd_mod.dt_cache(inp["dt"][:T_eq], inp["A"], inp["dt_bias"], cu_eq, block_q=bq, dt_softplus=softplus,
                     dt_limit=dt_limit, out=equal, seq_len=29)
    searched = bwd_mod.dt_cache(inp["dt"][:T_eq], inp["A"], inp["dt_bias"], cu_eq, block_q=bq,
                                dt_softplus=softplus, dt_limit=dt_limit)
    assert_close("equal-length dt_cache() vs searched", equal.cpu(), searched.cpu(), rtol=0)

    v = (case["inp"]["dt"] + case["inp"]["dt_bias"]).double().requires_grad_(True)
    dtp = _proc_dt(v, None, softplus, dt_limit)
    (chain,) = torch.autograd.grad(dtp.sum(), v)  # elementwise: d dt_t / d v_t
    a = torch.empty_like(dtp)
    for i in range(len(case["cu"]) - 1):
        for c0 in range(case["cu"][i], case["cu"][i + 1], bq):
            c1 = min(c0 + bq, case["cu"][i + 1])
            a[c0:c1] = torch.cumsum(dtp[c0:c1] * case["inp"]["A"].double(), 0)
    ref = torch.stack([a.T, dtp.T, chain.T]).detach()
    for name, got in (("forward's dt cache", from_fwd), ("dt_cache()", standalone)):
        for k, plane in enumerate(("a", "dt", "chain")):
            assert_close(f"{name}: {plane}", got[k].cpu(), ref[k], rtol=1e-6)


def test_bwd_p_blocks_fp32(kernel_device):
    """P split over 2 P-blocks (block_p=16, P=24): ddt/dA/dB/dC partials summed across programs."""
    case = make_case([29, 19], H=2, G=1, P=24, N=12, D="channel", z=True, dt_bias=True, softplus=True,
                     n_init=1, init_idx=[-1, 0], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    got = run_kernel(case, 16, cs, kernel_device, block_p=16)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


def test_bwd_block_q32_fp16(kernel_device):
    """fp16 inputs (dot operands in fp16, fp32 accumulation), block_q 32, ragged sequences."""
    case = make_case([40, 1, 25], H=2, G=1, P=16, N=16, D="head", z=True, dt_bias=True, softplus=True,
                     dt_limit=(0.0, 0.2), n_init=1, init_idx=[0, -1, -1], dfinal=True, dtype=torch.float16)
    ref, cs = reference_grads(case, block_q=32)
    got = run_kernel(case, 32, cs, kernel_device)
    # fp16 rounding of the dot operands (unit roundoff 4.9e-4): ~4e-4 on the per-token grads;
    # dA (a sum over every token with cancellation) reaches ~2.5e-3
    check_grads(got, ref, case, rtol=5e-3)


def test_bwd_fp32_dout_with_fp16_inputs(kernel_device):
    """dout in fp32 with fp16 inputs, no gate, per-head D: the chunk kernel takes dD from dy itself,
    not from the diagonal of dM, whose dy operand is rounded to fp16 (that cost dD 1.5e-3)."""
    case = make_case([37, 20], H=2, G=1, P=16, N=16, D="head", dt_bias=True, softplus=True,
                     dtype=torch.float16)
    case["dout"] = torch.randn(57, 2, 16)  # fp32, not representable in fp16
    ref, cs = reference_grads(case, block_q=16)
    got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=5e-3)  # the dot operands are fp16 (test_bwd_block_q32_fp16)
    assert_close("dD", got["dD"].cpu(), ref["dD"], rtol=1e-5)


def test_bwd_deterministic(kernel_device):
    """No atomics anywhere: two runs are bitwise equal, with or without deterministic mode."""
    case = make_case([30, 18], H=2, G=1, P=24, N=16, D="channel", z=True, dt_bias=True, softplus=True,
                     n_init=2, init_idx=[1, 0], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        g1 = run_kernel(case, 16, cs, kernel_device, block_p=16)
        g2 = run_kernel(case, 16, cs, kernel_device, block_p=16)
    finally:
        torch.use_deterministic_algorithms(was)
    check_grads(g1, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
    g3 = run_kernel(case, 16, cs, kernel_device, block_p=16)
    for name in GRAD_NAMES:
        if g1[name] is not None:
            assert_exact(name, g1[name], g2[name])
            assert_exact(name, g1[name], g3[name])


@pytest.mark.parametrize("heads_per_program,scan_block_p", [(1, None), (2, 16), (3, None), (5, 16)])
def test_bwd_head_blocks(heads_per_program, scan_block_p, kernel_device):
    """The chunk kernel's head loop: 5 heads of one group and 6 heads in 2 groups, split into
    head-blocks of 1, 2 (ragged tail), 3 and 5 heads; the dS kernel with a narrower P-block.
    Equal 24-token sequences leave a row past each sequence's end, whose programs must write zero
    partials: buffers come NaN-poisoned, so anything a kernel leaves unwritten reaches a gradient."""
    with bwd_tuning(heads_per_program=heads_per_program, scan_block_p=scan_block_p), poisoned_empty():
        for H, G in ((5, 1), (6, 2)):
            for lens in ([21, 35], [24, 24, 24]):
                case = make_case(lens, H=H, G=G, P=32, N=16, D="head", dt_bias=True, softplus=True,
                                 n_init=1, init_idx=[0] + [-1] * (len(lens) - 1), dfinal=True)
                ref, cs = reference_grads(case, block_q=16)
                got = run_kernel(case, 16, cs, kernel_device)
                check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


@pytest.mark.parametrize("programs", [1, 4, 5, 7, 1000])
def test_bwd_balanced_grid(programs, kernel_device, monkeypatch):
    """The chunk kernel's balanced grid (``seq_len`` given: equal-length sequences): the (busy
    row, group, head) items split over 4, 5, 7 programs and one per item (1000 is capped at the
    item count), so that programs start and end mid-row, span up to three (row, group) segments
    and a row's heads meet up to five programs, whose dCB slots the dB/dC kernel must all sum.
    One program would span more segments than the kernel unrolls: the row-blocked grid runs.
    Sequences of 24 tokens (a partial last chunk and a row past each end, which the balanced grid
    never visits), 5 heads in one group and 6 in two, two P-blocks, D per channel, z;
    NaN-poisoned buffers."""
    grids = []
    real = bwd_mod._balanced_grid
    monkeypatch.setattr(bwd_mod, "_balanced_grid", lambda *a: grids.append(real(*a)) or grids[-1])
    with bwd_tuning(chunk_programs=programs), poisoned_empty():
        for H, G, lens in ((5, 1, [24, 24, 24]), (6, 2, [32, 32])):
            case = make_case(lens, H=H, G=G, P=32, N=16, D="channel", z=True, dt_bias=True, softplus=True,
                             n_init=1, init_idx=[0] + [-1] * (len(lens) - 1), dfinal=True)
            ref, cs = reference_grads(case, block_q=16)
            got = run_kernel(case, 16, cs, kernel_device, block_p=16, seq_len=lens[0])
            check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
    # 3 rows x 2 chunks x 5 heads = 30 items, 2 x 2 chunks x 2 groups x 3 heads = 24 items
    if programs == 1:
        assert grids == [None, None]
        return
    assert [g[:2] for g in grids] == [(30, min(programs, 30)), (24, min(programs, 24))]
    for (W, NP, n_seg, max_segs), hpg in zip(grids, (5, 3)):
        # the bounds, by brute force: owners of each (row, group)'s heads, segments of each program
        owner = [max(i for i in range(NP) if i * W // NP <= x) for x in range(W)]
        assert max(len(set(owner[r * hpg:(r + 1) * hpg])) for r in range(W // hpg)) <= n_seg
        assert max(len({x // hpg for x in range(W) if owner[x] == i}) for i in range(NP)) <= max_segs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("balanced", [False, True], ids=["row-blocked", "balanced"])
def test_bwd_no_gate_head_d_p_blocks(balanced, dtype, kernel_device):
    """Per-head D without the gate (dD from dM's diagonal: one partial per P-block, not per
    channel) with three P-blocks (P 40 in blocks of 16, the last one ragged), on the row-blocked
    and the balanced chunk grid, NaN-poisoned buffers. The gated, per-channel and P 16 tests do not
    reach this layout of the partials."""
    lens = [37, 37] if balanced else [37, 20]
    with poisoned_empty():
        case = make_case(lens, H=3, G=1, P=40, N=16, D="head", dt_bias=True, softplus=True,
                         n_init=1, init_idx=[0, -1], dfinal=True, dtype=dtype)
        ref, cs = reference_grads(case, block_q=16)
        got = run_kernel(case, 16, cs, kernel_device, block_p=16, seq_len=lens[0] if balanced else None)
    if dtype == torch.float32:
        check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
    else:
        check_grads(got, ref, case, rtol=5e-3)  # fp16 dot operands (test_bwd_block_q32_fp16)
    # dD sums exact products in fp32 (dy is exactly its input-dtype copy here): fp32-accurate
    assert_close("dD", got["dD"].cpu(), ref["dD"], rtol=1e-5)


def test_bwd_rejects_wrong_seq_len():
    """``seq_len`` is the caller's promise that every sequence has that length; with validation on
    (and host reads allowed: CPU tensors) a wrong promise is an error, not wrong gradients."""
    case = make_case([20, 12], H=2, G=1, P=16, N=16)
    _, cs = reference_grads(case, block_q=16)
    with pytest.raises(ValueError, match="arange"):
        run_kernel(case, 16, cs, "cpu", seq_len=16)  # 16 + 16 = 32 tokens, but the lengths are 20, 12
    with pytest.raises(ValueError, match="positive int"):
        run_kernel(case, 16, cs, "cpu", seq_len=0)


def test_bwd_without_d_poisoned(kernel_device):
    """No D, z, dt_bias (the partials buffer has no dD columns) and a row past each sequence's
    end, with NaN-poisoned buffers."""
    with poisoned_empty():
        case = make_case([40, 40], H=4, G=2, P=16, N=16)
        ref, cs = reference_grads(case, block_q=16)
        got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


# the outer-product decay tile (fwd._times_causal_decay) overflows to inf on masked pairs (s > t) of
# fast-decaying chunks before they are selected away: numpy (the interpreter) reports it, harmlessly
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("factor_range", [None, 0, 5, 80])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bwd_factored_decay(dtype, factor_range, kernel_device):
    """The chunk kernel's factored decays (``bwd._factor_range``, two launches): heads decaying
    from ~0.5 to ~600 over a 16-token chunk, in head blocks of 2, so that with the bound 80 some
    blocks take the factored decays and others the [Q, Q] exp; None / 0 = every block the exp;
    5 = only the slowest heads' blocks factored. Extreme decays must not overflow either path.
    fp16 (one head per block, so the head decaying by ~29 is inside the bound): its factored
    operand exp(a_t − a_last / 2) ∘ dy overflowed fp16 there (dx NaN) until the launcher stopped
    factoring fp16 inputs (session 37)."""
    case = make_case([37, 20], H=5, G=1, P=16, N=16, D="head", z=True, dt_bias=True, softplus=True,
                     n_init=1, init_idx=[0, -1], dfinal=True, dtype=dtype)
    case["inp"]["A"] = torch.tensor([-0.05, -0.5, -3.0, -20.0, -60.0])
    ref, cs = reference_grads(case, block_q=16)
    with bwd_tuning(heads_per_program=2 if dtype == torch.float32 else 1), poisoned_empty():
        got = run_kernel(case, 16, cs, kernel_device, factor_range=factor_range)
    for name, g in got.items():
        if g is not None:
            assert bool(torch.isfinite(g).all()), name
    if dtype == torch.float16:
        check_grads(got, ref, case, rtol=5e-3)  # fp16 dot operands (test_bwd_block_q32_fp16)
    else:
        check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


def test_factor_range_rule():
    """The factored decays need the exponent range of bf16 / fp32: fp16 inputs never take them,
    whatever the caller or ``BWD_TUNING`` asks for; out-of-range bounds are refused."""
    assert bwd_mod._factor_range(80.0, torch.bfloat16) == 80.0
    assert bwd_mod._factor_range(5.0, torch.float32) == 5.0
    assert bwd_mod._factor_range(None, torch.bfloat16) == -1.0
    assert bwd_mod._factor_range(80.0, torch.float16) == -1.0
    with bwd_tuning(factor_range=80.0):
        assert bwd_mod._factor_range(None, torch.float16) == -1.0
        assert bwd_mod._factor_range(None, torch.bfloat16) == 80.0
    with pytest.raises(ValueError, match="factor_range"):
        bwd_mod._factor_range(81.0, torch.bfloat16)


@pytest.mark.parametrize("tiles_fp32", [False, True])
def test_bwd_n_blocks(tiles_fp32, kernel_device):
    """dB/dC split over three N-block programs (N = 40, the last ragged), the dS walk over two
    P-blocks (its Σ dS ∘ S_in partials summed by the chunk kernel) and the walk's state tiles in
    the input dtype or fp32, with z and two groups."""
    case = make_case([37, 20], H=4, G=2, P=32, N=40, D="channel", z=True, dt_bias=True, softplus=True,
                     n_init=2, init_idx=[1, 0], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    with bwd_tuning(block_nb=16, scan_block_p=16, state_tiles_fp32=tiles_fp32):
        got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


@pytest.mark.parametrize("cs_tile", [None, True])
def test_bwd_state_term_vector_or_tile(cs_tile, kernel_device):
    """Without z the dS walk hands the chunk kernel the row sums Σ_p dy (C S_inᵀ) per walk P-block
    (``bwd.cs_vector``) instead of the C S_inᵀ tile (``cs_tile=True`` keeps the tile): P = 24 in two
    chunk-kernel P-blocks (only P-block 0 adds the sums) and two walk P-blocks (their partials
    summed), a sequence with initial states and one without (its first chunk's sums are never
    written: poisoned buffers catch a read), ragged lengths."""
    case = make_case([37, 20, 16], H=3, G=1, P=24, N=16, D="head", dt_bias=True, softplus=True,
                     n_init=1, init_idx=[-1, 0, -1], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    assert bwd_mod.cs_vector(None) and not bwd_mod.cs_vector(case["dout"])
    with bwd_tuning(scan_block_p=16, cs_tile=cs_tile), poisoned_empty():
        assert bwd_mod.cs_vector(None) == (cs_tile is None)
        got = run_kernel(case, 16, cs, kernel_device, block_p=16)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


@pytest.mark.parametrize("gated", [False, True], ids=["no_gate", "gate"])
def test_bwd_state_tiles_through_identity_dot(gated, kernel_device, monkeypatch):
    """``bwd.tile_dot``: the chunk kernel's 16-bit state tiles through ``I · tile`` (a dot, for
    Triton's pipeliner) or plain loads. The identity dot is exact, so both give the same gradients,
    bitwise; both against the reference. fp16, ragged sequences over the row-blocked grid (where the
    rule turns it on), with and without the gate (the C S_inᵀ tile too), initial states."""
    case = make_case([37, 20, 16], H=2, G=1, P=16, N=16, D="head", z=gated, dt_bias=True, softplus=True,
                     n_init=1, init_idx=[-1, 0, -1], dfinal=True, dtype=torch.float16)
    ref, cs = reference_grads(case, block_q=16)
    calls = spy_launches(monkeypatch, "_CHUNK")
    got = {}
    for forced in (True, False):
        with bwd_tuning(tile_dot=forced), poisoned_empty():
            got[forced] = run_kernel(case, 16, cs, kernel_device)
        assert calls and all(kw["TILE_DOT"] is forced for _, kw in calls)
        calls.clear()
        check_grads(got[forced], ref, case, rtol=5e-3)  # fp16 dot operands (test_bwd_block_q32_fp16)
    for name, a in got[True].items():
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, got[False][name]), name


def test_tile_dot_rule():
    """Where the identity dot is on by default: 16-bit tiles on the row-blocked grid without a gate
    (measured: ``bwd.tile_dot``'s docstring); ``BWD_TUNING["tile_dot"]`` forces it either way,
    never for fp32 tiles (the dot would round them to tf32)."""
    for dt in (torch.float16, torch.bfloat16):
        assert bwd_mod.tile_dot(dt, gated=False, balanced=False)
        assert not bwd_mod.tile_dot(dt, gated=True, balanced=False)
        assert not bwd_mod.tile_dot(dt, gated=False, balanced=True)
        with bwd_tuning(tile_dot=True):
            assert bwd_mod.tile_dot(dt, gated=True, balanced=True)
        with bwd_tuning(tile_dot=False):
            assert not bwd_mod.tile_dot(dt, gated=False, balanced=False)
    with bwd_tuning(tile_dot=True):
        assert not bwd_mod.tile_dot(torch.float32, gated=False, balanced=False)


@pytest.mark.parametrize("split", [2, 5])
def test_bwd_dbdc_head_split(split, kernel_device):
    """dB/dC with the group's heads split over programs (5 heads per group: splits of 3 + 2, or
    one head each), fp32 partial sums added on the host, the intra-chunk part in split 0 only."""
    case = make_case([37, 20], H=10, G=2, P=16, N=24, D="head", z=True, dt_bias=True, softplus=True,
                     n_init=2, init_idx=[1, 0], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    with bwd_tuning(dbdc_split=split):
        got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


def spy_launches(monkeypatch, name):
    """Wrap the backward's launcher ``bwd_mod.<name>`` so that each launch is recorded as (grid,
    keyword arguments: the constexprs and launch settings) before it runs; returns that list."""
    calls = []
    real = getattr(bwd_mod, name)

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append((grid, kwargs))
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(bwd_mod, name, Spy())
    return calls


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "finishing_kernel"])
@pytest.mark.parametrize("D", ["channel", "head", None])
def test_bwd_finish_fused_or_not(D, fuse, kernel_device, monkeypatch):
    """Without split dB/dC the per-head dA / ddt_bias / dD sums run as extra rows of the dB/dC grid
    (``fuse_finish=True``, on the CPU the default) or in the finishing kernel (``False``); every
    gradient matches, buffers poisoned, and the launches are the ones claimed."""
    case = make_case([37, 20], H=4, G=2, P=16, N=24, D=D, z=True, dt_bias=True, softplus=True,
                     n_init=2, init_idx=[1, 0], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    finish = spy_launches(monkeypatch, "_FINISH")
    dbdc = spy_launches(monkeypatch, "_DBDC")
    with bwd_tuning(fuse_finish=fuse, dbdc_split=1), poisoned_empty():
        got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
    n_rows = (37 + 20) // 16 + 2  # chunk rows: T // block_q + nseq (``chunk_states``' rows)
    assert len(dbdc) == 1 and dbdc[0][0][0] == n_rows + (4 if fuse else 0)
    assert len(finish) == (0 if fuse else 1)


@pytest.mark.parametrize("tok", [True, False], ids=["token_terms", "row_sums"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "finishing_kernel"])
@pytest.mark.parametrize("grid", ["row-blocked", "balanced"])
@pytest.mark.parametrize("D", ["head", None])
def test_bwd_small_grads_token_terms(D, grid, fuse, tok, kernel_device, monkeypatch):
    """``bwd.tok_red``: the chunk kernel hands dA / ddt_bias / a per-head dD to the finishing sums as
    per-token terms ((P-blocks, 3, H, T), ``tok_red=True``) or as per-row sums (False), summed in the
    dB/dC launch's head rows or in the finishing kernel: every gradient against the reference, three
    P-blocks (P 40 in blocks of 16, the last ragged), no gate (the row sums joined with u where the
    P-block is the chunk: P 16 below), both chunk grids, buffers poisoned (an unwritten token's
    terms would be NaN), and the launches carry the flag claimed. A per-channel dD keeps the row
    sums (``test_tok_red_rule``)."""
    balanced = grid == "balanced"
    lens = [37, 37] if balanced else [37, 20]
    chunk = spy_launches(monkeypatch, "_CHUNK")
    for P, block_p in ((40, 16), (16, 16)):
        case = make_case(lens, H=3, G=1, P=P, N=16, D=D, dt_bias=True, softplus=True,
                         n_init=1, init_idx=[0, -1], dfinal=True)
        ref, cs = reference_grads(case, block_q=16)
        chunk.clear()
        with bwd_tuning(tok_red=tok, fuse_finish=fuse, dbdc_split=1), poisoned_empty():
            got = run_kernel(case, 16, cs, kernel_device, block_p=block_p, seq_len=lens[0] if balanced else None)
        check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
        assert chunk and all(kw["TOK_RED"] is tok and kw["BALANCED"] is balanced for _, kw in chunk)


def test_tok_red_rule(kernel_device, monkeypatch):
    """Per-token terms by default on the balanced grid (measured: ``bwd.tok_red``) for a per-head D
    or none; a per-channel D keeps the row sums (its partials are P-vectors per row already);
    ``BWD_TUNING["tok_red"]`` forces either form. The launch follows the rule."""
    assert bwd_mod.tok_red(None, balanced=True)
    assert bwd_mod.tok_red(torch.zeros(4), balanced=True)
    assert not bwd_mod.tok_red(torch.zeros(4), balanced=False)
    assert not bwd_mod.tok_red(torch.zeros(4, 16), balanced=True)
    with bwd_tuning(tok_red=False):
        assert not bwd_mod.tok_red(torch.zeros(4), balanced=True)
    with bwd_tuning(tok_red=True):
        assert bwd_mod.tok_red(None, balanced=False)
        assert not bwd_mod.tok_red(torch.zeros(4, 16), balanced=False)
    chunk = spy_launches(monkeypatch, "_CHUNK")
    for balanced in (True, False):
        chunk.clear()
        case = make_case([37, 37], H=2, G=1, P=16, N=16, D="head", dt_bias=True, softplus=True)
        ref, cs = reference_grads(case, block_q=16)
        got = run_kernel(case, 16, cs, kernel_device, seq_len=37 if balanced else None)
        check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
        assert chunk and all(kw["TOK_RED"] is balanced and kw["BALANCED"] is balanced for _, kw in chunk)


@pytest.mark.parametrize("P, block_p, one_pb_setting, want_one_pb", [
    (32, None, None, True),  # P in one block: the head loop without the P-block loop (pipelined)
    (24, 16, None, False),  # two P-blocks: the loop
    (32, None, False, False),  # the loop kept by BWD_TUNING["dbdc_one_pb"]
])
def test_bwd_dbdc_one_p_block(P, block_p, one_pb_setting, want_one_pb, kernel_device, monkeypatch):
    """The dB/dC kernel's two forms of its head loop (``ONE_PB``): the launcher picks the one-block
    form exactly where P fits one block, and both give every gradient (buffers poisoned)."""
    case = make_case([37, 20], H=4, G=2, P=P, N=24, D="channel", z=True, dt_bias=True, softplus=True,
                     n_init=2, init_idx=[1, 0], dfinal=True)
    ref, cs = reference_grads(case, block_q=16)
    seen = spy_launches(monkeypatch, "_DBDC")
    with bwd_tuning(dbdc_one_pb=one_pb_setting), poisoned_empty():
        got = run_kernel(case, 16, cs, kernel_device, block_p=block_p)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)
    assert [k["ONE_PB"] for _, k in seen] == [want_one_pb]


# --------------------------------------------------------------------------- against ssd_chunk_scan_ref
def chunk_scan_ref_grads(case, layout):
    """fp64 autograd through :func:`ssd_chunk_scan_ref` (the project reference).

    ``layout="batch"``: equal-length sequences as batch rows, row b seeded by initial_states[b],
    dfinal on ``final_states``. ``layout="varlen"``: batch 1 packed with seq_idx + cu_seqlens,
    initial_states[0] seeds sequence 0 only, dfinal on ``varlen_states``."""
    from samkern.ops.ssd.ref import ssd_chunk_scan_ref

    inp = {k: (None if v is None else v.double().requires_grad_(True)) for k, v in case["inp"].items()}
    cu = case["cu"]
    nseq = len(cu) - 1
    T, H, P = inp["x"].shape
    G, N = inp["B"].shape[1:]
    if layout == "batch":
        b, L = nseq, cu[1]
        kw = dict(return_final_states=True)
    else:
        b, L = 1, T
        lab = torch.repeat_interleave(torch.arange(nseq), torch.tensor([cu[i + 1] - cu[i] for i in range(nseq)]))
        kw = dict(seq_idx=lab[None].to(torch.int32), cu_seqlens=torch.tensor(cu, dtype=torch.int32),
                  return_varlen_states=True)
    res = ssd_chunk_scan_ref(
        inp["x"].view(b, L, H, P), inp["dt"].view(b, L, H), inp["A"], inp["B"].view(b, L, G, N),
        inp["C"].view(b, L, G, N), 16, D=inp["D"], z=None if inp["z"] is None else inp["z"].view(b, L, H, P),
        dt_bias=inp["dt_bias"], initial_states=inp["initial_states"], dt_softplus=case["dt_softplus"],
        dt_limit=case["dt_limit"], **kw)
    out, fin = res
    loss = (out.reshape(T, H, P) * case["dout"].double()).sum() + (fin * case["dfinal"].double()).sum()
    used = {k: v for k, v in inp.items() if v is not None}
    g = dict(zip(used, torch.autograd.grad(loss, list(used.values()))))
    return {name: g.get(INPUT_OF[name]) for name in GRAD_NAMES}


def test_bwd_matches_chunk_scan_ref_batch(kernel_device):
    """Plain batch (3 rows of 40 tokens, each seeded by its own initial state), every option on."""
    case = make_case([40, 40, 40], H=2, G=1, P=16, N=12, D="channel", z=True, dt_bias=True, softplus=True,
                     dt_limit=(0.05, 0.3), n_init=3, init_idx=[0, 1, 2], dfinal=True)
    _check_clamp_active(case)
    ref = chunk_scan_ref_grads(case, "batch")
    _, cs = reference_grads(case, block_q=16)
    got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


def test_bwd_matches_chunk_scan_ref_varlen(kernel_device):
    """Packed sequences (batch 1, seq_idx + cu_seqlens) incl. length 1, varlen-state gradients."""
    case = make_case([21, 1, 35, 7], H=2, G=2, P=10, N=16, D="head", z=False, dt_bias=True, softplus=True,
                     n_init=1, init_idx=[0, -1, -1, -1], dfinal=True)
    ref = chunk_scan_ref_grads(case, "varlen")
    _, cs = reference_grads(case, block_q=16)
    got = run_kernel(case, 16, cs, kernel_device)
    check_grads(got, ref, case, rtol=2e-5 if kernel_device == "cpu" else 1e-4)


# --------------------------------------------------------------------------- end to end (fwd + bwd)
@pytest.mark.parametrize("layout", ["batch", "varlen"])
def test_end_to_end_ssd_chunk_scan(layout, kernel_device, monkeypatch):
    """Gradients through the public ``samkern.ops.ssd_chunk_scan`` (Triton forward writing
    chunk_states, autograd wrapper, this backward) against ``ssd_chunk_scan_ref`` in fp64."""
    import samkern.ops as ops
    import samkern.ops.ssd.fwd as fwd_mod

    if kernel_device == "cpu":  # several internal chunks per sequence at interpreter-sized shapes
        monkeypatch.setattr(fwd_mod, "default_block_q", lambda T, nseq, dtype: 16)
    if layout == "batch":
        case = make_case([37, 37], H=2, G=1, P=16, N=16, D="channel", z=True, dt_bias=True, softplus=True,
                         dt_limit=(0.0, 0.25), n_init=2, init_idx=[0, 1], dfinal=True)
    else:
        case = make_case([19, 1, 30], H=2, G=1, P=12, N=16, D="head", z=True, dt_bias=True, softplus=True,
                         n_init=1, init_idx=[0, -1, -1], dfinal=True)
    ref = chunk_scan_ref_grads(case, layout)
    inp = {k: (None if v is None else v.to(kernel_device).requires_grad_(True)) for k, v in case["inp"].items()}
    cu = case["cu"]
    nseq = len(cu) - 1
    T, H, P = inp["x"].shape
    G, N = inp["B"].shape[1:]
    if layout == "batch":
        b, L = nseq, cu[1]
        kw = dict(return_final_states=True)
    else:
        b, L = 1, T
        lab = torch.repeat_interleave(torch.arange(nseq), torch.tensor([cu[i + 1] - cu[i] for i in range(nseq)]))
        kw = dict(seq_idx=lab[None].to(torch.int32).to(kernel_device),
                  cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=kernel_device), return_varlen_states=True)
    out, fin = ops.ssd_chunk_scan(
        inp["x"].view(b, L, H, P), inp["dt"].view(b, L, H), inp["A"], inp["B"].view(b, L, G, N),
        inp["C"].view(b, L, G, N), 64, D=inp["D"], z=inp["z"].view(b, L, H, P), dt_bias=inp["dt_bias"],
        initial_states=inp["initial_states"], dt_softplus=True, dt_limit=case["dt_limit"], backend="triton", **kw)
    loss = (out.reshape(T, H, P).double() * case["dout"].to(kernel_device).double()).sum()
    loss = loss + (fin.double() * case["dfinal"].to(kernel_device).double()).sum()
    loss.backward()
    got = {name: (None if inp[INPUT_OF[name]] is None else inp[INPUT_OF[name]].grad) for name in GRAD_NAMES}
    check_grads(got, ref, case, rtol=1e-4)


# --------------------------------------------------------------------------- validation
def _valid_args(device="cpu"):
    T, H, P, N, G = 32, 2, 16, 16, 1
    x = torch.randn(T, H, P, device=device)
    return dict(dout=torch.randn(T, H, P, device=device), x=x, dt=torch.rand(T, H, device=device),
                A=-torch.rand(H, device=device), B=torch.randn(T, G, N, device=device),
                C=torch.randn(T, G, N, device=device), cu_seqlens=torch.tensor([0, T], dtype=torch.int32, device=device),
                init_idx=torch.tensor([-1], dtype=torch.int32, device=device),
                chunk_states=torch.randn(T // 16 + 1, H, P, N, device=device), block_q=16)


@pytest.mark.parametrize("name,value", [("block_nb", 8), ("scan_block_p", 24), ("factor_range", 81.0),
                                        ("factor_range", -1.0)])
def test_bwd_rejects_bad_tuning(name, value, kernel_device):
    """Launch overrides that Triton cannot compile are refused with a clear message."""
    case = make_case([20], H=2, G=1, P=16, N=16)
    _, cs = reference_grads(case, block_q=16)
    with bwd_tuning(**{name: value}), pytest.raises(ValueError, match=name):
        run_kernel(case, 16, cs, kernel_device)


def test_bwd_rejects_too_many_walk_p_blocks(kernel_device):
    """More than 16 dS-walk P-blocks (here P 272 in blocks of 16) is refused with a clear message
    rather than silently dropping Σ dS ∘ S_in partials."""
    case = make_case([20], H=1, G=1, P=272, N=16)
    _, cs = reference_grads(case, block_q=16)
    with bwd_tuning(scan_block_p=16), pytest.raises(ValueError, match="dS-walk P-blocks"):
        run_kernel(case, 16, cs, kernel_device)


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(32, 2)), "x must have 3 dimensions"),
    (dict(dout=torch.randn(32, 2, 8)), "dout must have shape"),
    (dict(dt=torch.rand(31, 2)), "dt must have shape"),
    (dict(A=-torch.rand(3)), "A must have shape"),
    (dict(B=torch.randn(32, 1, 16).half()), "B must have dtype"),
    (dict(B=torch.randn(32, 3, 16), C=torch.randn(32, 3, 16)), "multiple of ngroups"),
    (dict(C=torch.randn(32, 1, 8)), "C must have shape"),
    (dict(cu_seqlens=torch.tensor([0, 32], dtype=torch.int64)), "cu_seqlens must have dtype"),
    (dict(cu_seqlens=torch.tensor([0], dtype=torch.int32)), "at least 2 entries"),
    (dict(init_idx=torch.tensor([-1, -1], dtype=torch.int32)), "init_idx must have shape"),
    (dict(block_q=24), "block_q must be a power of two"),
    (dict(chunk_states=torch.randn(2, 2, 16, 16)), "chunk_states must have shape"),
    (dict(chunk_states=torch.randn(3, 2, 16, 16).half()), "chunk_states must have dtype"),
    (dict(D=torch.randn(2, 8)), "D must have shape"),
    (dict(z=torch.randn(32, 2, 8)), "z must have shape"),
    (dict(dt_bias=torch.randn(3)), "dt_bias must have shape"),
    (dict(initial_states=torch.randn(1, 2, 16, 8)), "initial_states must have shape"),
    (dict(dfinal_states=torch.randn(2, 2, 16, 16)), "dfinal_states must have shape"),
    (dict(dt_limit=(1.0, 0.5)), "dt_limit"),
    (dict(x=torch.randn(0, 2, 16), dout=torch.randn(0, 2, 16)), "empty"),
])
def test_bwd_rejects_bad_input(bad, match):
    args = _valid_args()
    args.update(bad)
    pos = [args.pop(k) for k in ("dout", "x", "dt", "A", "B", "C", "cu_seqlens", "init_idx", "chunk_states", "block_q")]
    with pytest.raises(ValueError, match=match):
        ssd_bwd(*pos, **args)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a second device")
def test_bwd_rejects_mixed_devices():
    args = _valid_args("cuda")
    args["A"] = args["A"].cpu()
    pos = [args.pop(k) for k in ("dout", "x", "dt", "A", "B", "C", "cu_seqlens", "init_idx", "chunk_states", "block_q")]
    with pytest.raises(ValueError, match="same device"):
        ssd_bwd(*pos, **args)


# --------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_bwd_bf16_gpu(name):
    """bf16 inputs (the interpreter cannot do bf16 dots): every option, ragged sequences."""
    case = make_case(**CASES[name], dtype=torch.bfloat16)
    ref, cs = reference_grads(case, block_q=16)
    got = run_kernel(case, 16, cs, "cuda")
    # bf16 dot operands (unit roundoff 3.9e-3); fp16 at the same shapes stays below 0.1 u
    check_grads(got, ref, case, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bwd_full_tiles_gpu(dtype):
    """Production tile sizes (block_q 64, P 64, N 128) with every option, ragged sequences."""
    case = make_case([130, 64, 1, 77], H=4, G=2, P=64, N=128, D="channel", z=True, dt_bias=True, softplus=True,
                     dt_limit=(0.0, 0.25), n_init=2, init_idx=[1, -1, 0, -1], dfinal=True, dtype=dtype)
    ref, cs = reference_grads(case, block_q=64)
    got = run_kernel(case, 64, cs, "cuda")
    check_grads(got, ref, case, rtol=1e-4 if dtype == torch.float32 else 1e-2)


def _sam_inputs(b, L, H, P=64, N=128, G=1, dev="cuda"):
    """Mamba2-block-like inputs: bf16 activations, fp32 A/D/dt_bias, dt through bias + softplus."""
    return dict(
        x=torch.randn(b, L, H, P, device=dev).bfloat16(),
        dt=(torch.randn(b, L, H, device=dev) * 0.5).bfloat16(),
        A=-torch.exp(torch.rand(H, device=dev) * math.log(16.0)),  # A_log init range [1, 16]
        B=torch.randn(b, L, G, N, device=dev).bfloat16(),
        C=torch.randn(b, L, G, N, device=dev).bfloat16(),
        D=torch.randn(H, device=dev),
        dt_bias=torch.log(torch.expm1(torch.exp(torch.rand(H, device=dev) * (math.log(0.1) - math.log(1e-3))
                                                  + math.log(1e-3)))),  # softplus^-1 of dt in [1e-3, 0.1]
    )


def _ours_flat(inp, dout, block_q=64, balanced=True):
    from samkern.ops.ssd.fwd import ssd_fwd

    b, L, H, P = inp["x"].shape
    G, N = inp["B"].shape[2:]
    T = b * L
    cu = torch.arange(b + 1, device="cuda", dtype=torch.int32) * L
    idx = torch.full((b,), -1, device="cuda", dtype=torch.int32)
    flat = dict(x=inp["x"].view(T, H, P), dt=inp["dt"].view(T, H), B=inp["B"].view(T, G, N),
                C=inp["C"].view(T, G, N))
    _, _, cs, bq = ssd_fwd(flat["x"], flat["dt"], inp["A"], flat["B"], flat["C"], cu, idx, D=inp["D"],
                           dt_bias=inp["dt_bias"], dt_softplus=True, want_chunk_states=True, block_q=block_q)

    def run():
        return ssd_bwd(dout.view(T, H, P), flat["x"], flat["dt"], inp["A"], flat["B"], flat["C"], cu, idx, cs, bq,
                       D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True, seq_len=L if balanced else None)

    return run


@pytest.mark.gpu
@pytest.mark.parametrize("balanced", [True, False], ids=["balanced_grid", "row_blocked_grid"])
def test_bwd_vs_mamba_ssm_sam_shape(balanced):
    """2.7b-like shape (B16 L192 H80 P64 N128, bf16): our dx/ddt/dB/dC error against an fp64
    reference is at most 2x mamba-ssm's own error (the 2x rule), with the chunk kernel's balanced
    grid (one program per SM, rows split anywhere) and with its row-blocked grid."""
    mamba = pytest.importorskip("mamba_ssm.ops.triton.ssd_combined")
    from samkern.ops.ssd.ref import ssd_chunk_scan_ref

    b, L, H = 16, 192, 80
    inp = _sam_inputs(b, L, H)
    dout = torch.randn(b, L, H, 64, device="cuda").bfloat16()
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias"]

    ref_in = {k: inp[k].detach().double().requires_grad_(True) for k in names}
    out = ssd_chunk_scan_ref(ref_in["x"], ref_in["dt"], ref_in["A"], ref_in["B"], ref_in["C"], 64, D=ref_in["D"],
                             dt_bias=ref_in["dt_bias"], dt_softplus=True)
    ref = dict(zip(names, torch.autograd.grad((out * dout.double()).sum(), [ref_in[k] for k in names])))
    del out

    m_in = {k: inp[k].detach().clone().requires_grad_(True) for k in names}
    out_m = mamba.mamba_chunk_scan_combined(m_in["x"], m_in["dt"], m_in["A"], m_in["B"], m_in["C"], 256,
                                            D=m_in["D"], dt_bias=m_in["dt_bias"], dt_softplus=True)
    mam = dict(zip(names, torch.autograd.grad(out_m, [m_in[k] for k in names], dout)))

    grads = _ours_flat(inp, dout, balanced=balanced)()
    ours = dict(zip(["x", "dt", "A", "B", "C", "D", None, "dt_bias", None], grads))
    lines = []
    for k in names:
        o = ours[k].view(ref[k].shape)
        lines.append(f"d{k}: ours {rel_err(o, ref[k]):.2e}  mamba-ssm {rel_err(mam[k], ref[k]):.2e}")
    print("\n[ssd bwd vs fp64, 2.7b B16 L192] " + "; ".join(lines))
    for k in ["x", "dt", "B", "C"]:
        budget = 2.0 * rel_err(mam[k], ref[k]) + 1e-6
        assert_close(f"d{k}", ours[k].view(ref[k].shape), ref[k], rtol=budget)
    for k in ["A", "D", "dt_bias"]:
        # per-head parameters, each a sum over all tokens: mamba-ssm's error over so few numbers is
        # no yardstick (its dA here: 1e-6), so the floor is bf16's half-ulp, 2^-9, as in
        # test_ssd.py::_check_vs_mamba (ours on the H100: dA 1.06e-3 with bf16 chunk states,
        # 9.96e-4 with fp32 ones; dt_bias 1.07e-3 vs mamba-ssm 2.38e-3)
        assert_close(f"d{k}", ours[k], ref[k], rtol=max(4.0 * rel_err(mam[k], ref[k]), 2.0 ** -9))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(32, 192, 24), (16, 192, 80), (8, 640, 80), (1, 16384, 80)],
                         ids=["130m_B32_L192", "2.7b_B16_L192", "2.7b_B8_L640", "2.7b_B1_L16384"])
def test_bwd_speed_report_gpu(shape):
    """Times our backward (three launches + small reductions) at SAM's shapes, eager and replayed
    from a CUDA graph (which also proves it is capturable: no host sync), and checks that every
    gradient element was written. Compare with the mamba-ssm anchors in .gpu-kit/README.md."""
    from triton.testing import do_bench

    b, L, H = shape
    inp = _sam_inputs(b, L, H)
    dout = torch.randn(b, L, H, 64, device="cuda").bfloat16()
    run = _ours_flat(inp, dout)
    grads = run()
    for name, g in zip(GRAD_NAMES, grads):
        if g is not None:
            assert bool(torch.isfinite(g).all()), f"{name}: non-finite (unwritten) elements"
    t_eager = do_bench(run, warmup=5, rep=50)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    for name, g, ref in zip(GRAD_NAMES, captured, grads):
        if g is not None:
            assert_close(f"graph {name}", g.float(), ref.float(), rtol=1e-2)
    t_graph = do_bench(graph.replay, warmup=5, rep=50)
    alt = []
    for cfg in ({"num_warps": 4}, {"num_stages": 2}, {"heads_per_program": 4}, {"heads_per_program": 16}):
        with bwd_tuning(**cfg):
            alt.append(f"{cfg}: {1e3 * do_bench(run, warmup=5, rep=30):.0f} us")
    print(f"\n[ssd bwd timing b{b} L{L} H{H}] eager {1e3 * t_eager:.0f} us, graph {1e3 * t_graph:.0f} us; "
          + "; ".join(alt))


@pytest.mark.gpu
def test_bwd_one_million_tokens_int64():
    """One sequence of 2^20 + 128 tokens with x.numel() > 2^31: token offsets need int64. The
    last 128 tokens' gradients must equal a run on those tokens alone (same chunk states)."""
    T_tail, H, P, N, bq = 128, 32, 64, 16, 64
    T = 2 ** 20 + T_tail
    dev = "cuda"
    x = torch.randn(T, H, P, device=dev, dtype=torch.bfloat16)
    assert x.numel() > 2 ** 31
    dt = torch.rand(T, H, device=dev) * 0.1 + 0.01
    A = -(0.5 + torch.rand(H, device=dev))
    B = torch.randn(T, 1, N, device=dev, dtype=torch.bfloat16)
    C = torch.randn(T, 1, N, device=dev, dtype=torch.bfloat16)
    dout = torch.zeros_like(x)
    dout[-T_tail:] = torch.randn(T_tail, H, P, device=dev, dtype=torch.bfloat16)
    cs = torch.randn(T // bq + 1, H, P, N, device=dev)
    idx = torch.tensor([-1], dtype=torch.int32, device=dev)
    long = ssd_bwd(dout, x, dt, A, B, C, torch.tensor([0, T], dtype=torch.int32, device=dev), idx, cs, bq)
    n_chunks = T // bq  # T is a multiple of bq here
    cs_tail = torch.zeros(T_tail // bq + 1, H, P, N, device=dev)
    cs_tail[: T_tail // bq] = cs[n_chunks - T_tail // bq: n_chunks]
    # the tail run's first chunk starts a sequence: its entering state must come as an initial
    # state (without one the backward takes it as zero, which is what the forward stores there)
    tail = ssd_bwd(dout[-T_tail:], x[-T_tail:], dt[-T_tail:], A, B[-T_tail:], C[-T_tail:],
                   torch.tensor([0, T_tail], dtype=torch.int32, device=dev),
                   torch.zeros(1, dtype=torch.int32, device=dev), cs_tail, bq, initial_states=cs_tail[:1].clone())
    for i, name in enumerate(("dx", "ddt")):
        assert bool(torch.isfinite(long[i]).all()), f"{name}: unwritten (NaN) elements"
        assert_close(name, long[i][-T_tail:], tail[i], rtol=1e-6)
    for i, name in ((3, "dB"), (4, "dC")):  # head-blocks may differ with the row count: summation order
        assert bool(torch.isfinite(long[i]).all())
        assert_close(name, long[i][-T_tail:], tail[i], rtol=2e-3)
