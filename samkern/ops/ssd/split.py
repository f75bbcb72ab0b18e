# SPDX-License-Identifier: Apache-2.0
"""Sequence split for long rows, forward and backward (chosen by :func:`pick_split_len`).

Why. The fused forward (:mod:`samkern.ops.ssd.fwd`) runs one program per (sequence, head) that
walks the sequence's chunks one after the other, and so does the backward's dS walk. With few
long rows (B1 L16384 H80: 80 programs for 132 SMs, 256 chunks each) both are latency-bound: the
one-pass forward is 1.8x slower than mamba-ssm on an H100. Splitting every row into segments of
``seg`` tokens makes ``batch · ⌈L/seg⌉ · H`` programs, and the state recurrence is linear, so
the segments can be stitched exactly.

Forward (:func:`ssd_fwd_split`):

1. local states: the same kernel over the segments as independent sequences from a zero state,
   in its ``states_only`` mode (only the state update: no ``C B^T``, no output, C / D / z not
   read), giving ``S_k``, the state a segment adds at its end;
2. stitching (one small Triton launch, ``_stitch_kernel``): with ``ℓ_k = Σ_{t in segment k} dt_t·A``
   (the segment's log-decay, ≤ 0, which the first pass stores), the state entering segment k is
   ``H_0 = H_init``, ``H_k = exp(ℓ_{k-1}) H_{k-1} + S_{k-1}``: a K-step elementwise recurrence
   over the (P·N) state entries of every (row, head), reading S and writing H once. (A batched
   matmul of exp(c_{k-1} − c_j) weights over the cumulative decays did the same with ~12 torch
   launches and ~100 us of copies and fp32 GEMM at B1 L16384 H80, ``dev-runs/s7-call2-*``.)
3. outputs: the kernel again over the segments, each seeded with its ``H_k`` (with gradients it
   also stores the chunk states, in the segment layout).

Backward (:func:`ssd_bwd_split`): the same three steps for the reverse dS walk (see there), then
the ordinary per-chunk kernels over the segments. Every per-chunk kernel sees the true entering
state and the true state gradient, so the gradients are those of the unsplit scan.

The forward costs about 1.3 forward passes of arithmetic (the first pass is one dot per chunk of
the four), each spread over ``⌈L/seg⌉`` times more programs. No host sync, CUDA-graph capturable.
Only for plain batch rows (no ``seq_idx`` / ``cu_seqlens``) and outside ``torch.compile``; the
wrapper decides. It is exact math; results differ from the one-pass kernels only by fp32
summation order (tests compare both with the reference).

When. :func:`pick_split_len` turns it on by itself for rows of at least 4096 tokens when the
one-pass grid has fewer programs than the GPU has SMs. Measured on an H100 (bf16, graph replay,
P64 N128): fwd B1 L16384 H80 1403 -> 1115 us, H24 1378 -> 465, B1 L65536 H80 5516 -> 4261
(``benchmarks/results/dev-runs/s5-call8-split-auto-ff808d6b.log``), and with the states-only
first pass 1118 -> 808 at B1 L16384 H80 (``s6-call2-profile.log``); fwd+bwd B1 L16384 H80
4776 -> 4131 (``s6-call5-long-profile.log``); with the stitch kernel fwd 809 -> 673, fwd+bwd
4006 -> 3757 (``s7-call5-stitch-ab-tests.log``). Segments are 1024 tokens, longer where a row
would need more than 64 of them (the stitch walks a row's segments one after the other).
``FWD_TUNING["split_len"]`` overrides: 0 = never, n = n.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv, next_pow2, num_sms
from samkern.checks import host_reads_allowed
from samkern.launch import fast_launch
from samkern.ops.ssd.fwd import FWD_TUNING, _process_dt

__all__ = ["segment_layout", "segment_states", "ssd_fwd_split", "ssd_bwd_split", "SplitForward", "pick_split_len"]

SPLIT_MIN_LEN = 1024  # the measured segment length
SPLIT_MAX_SEGMENTS = 64


def pick_split_len(batch: int, L: int, H: int, P: int, N: int, block_q: int, device: torch.device) -> int:
    """Segment length for the split forward of ``batch`` rows of ``L`` tokens, or 0 for one pass
    (see the module docstring for when and why)."""
    from samkern.ops.ssd.fwd import _pick_block_p

    forced = FWD_TUNING.get("split_len")
    if forced is not None:
        return int(forced)
    if device.type != "cuda" or L < 4 * SPLIT_MIN_LEN:
        return 0
    if batch * H * cdiv(P, _pick_block_p(P, N)) >= num_sms(device):
        return 0  # enough programs already: the split would only add the second pass
    return max(SPLIT_MIN_LEN, cdiv(cdiv(L, SPLIT_MAX_SEGMENTS), block_q) * block_q)


_LAYOUT_CACHE: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}


def segment_layout(batch: int, L: int, seg: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cu (batch·K + 1,) int32 segment boundaries, init_idx (batch·K,) int32 = arange) for rows
    of ``L`` tokens cut into K = ⌈L/seg⌉ segments (the last one may be shorter). Cached per shape."""
    key = (batch, L, seg, str(device))
    hit = _LAYOUT_CACHE.get(key)
    if hit is not None:
        return hit
    K = cdiv(L, seg)
    starts = [b * L + k * seg for b in range(batch) for k in range(K)]
    cu = torch.tensor(starts + [batch * L], dtype=torch.int32).to(device)
    idx = torch.arange(batch * K, dtype=torch.int32, device=device)
    if host_reads_allowed(cu):  # never cache tensors made during capture or tracing
        if len(_LAYOUT_CACHE) > 64:
            _LAYOUT_CACHE.clear()
        _LAYOUT_CACHE[key] = (cu, idx)
    return cu, idx


@triton.jit
def _stitch_kernel(src_ptr, ell_ptr, seed_ptr, dst_ptr, K, H, E, REVERSE: tl.constexpr, HAS_SEED: tl.constexpr,
                   BLOCK_E: tl.constexpr):
    """One (row, head, entry-block) of the segment recurrence, fp32, segments ``k`` of row ``b`` at
    ``b·K + k``; ``src`` / ``dst`` (batch·K, H, E), ``ell`` (batch·K, H), ``seed`` (batch, H, E).

    Forward (states): ``dst_0 = seed``, ``dst_k = exp(ℓ_{k-1}) dst_{k-1} + src_{k-1}``.
    REVERSE (state gradients): ``dst_{K-1} = seed``, ``dst_{k-1} = src_k + exp(ℓ_k) dst_k``."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    m = offs < E
    if HAS_SEED:
        acc = tl.load(seed_ptr + (b * H + h).to(tl.int64) * E + offs, mask=m, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    for i in range(0, K):
        if REVERSE:
            k = K - 1 - i
        else:
            k = i
        row = (b * K + k).to(tl.int64) * H + h
        tl.store(dst_ptr + row * E + offs, acc, mask=m)
        acc = tl.exp(tl.load(ell_ptr + row)) * acc + tl.load(src_ptr + row * E + offs, mask=m, other=0.0)


_STITCH = fast_launch(_stitch_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _segment_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, dt_bias_ptr, cu_ptr, state_ptr, ell_ptr,
    P, N, heads_per_group,
    s_x_t, s_x_h, s_dt_t, s_dt_h, s_B_t, s_B_g,
    dt_min, dt_max,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """The first pass of the split forward as one GEMM per (segment, head, P-block): the state
    segment ``s`` adds from a zero state, ``S = Σ_t exp(ℓ − a_t)·dt_t · x_t B_tᵀ`` ((P, N) fp32,
    row ``s`` of ``state``), and its log-decay ``ℓ = Σ_t dt_t·A`` (``ell``), where ``a_t`` is the
    cumulative log-decay from the segment's start through token t.

    Why not the chunk recurrence (``ssd_fwd(states_only=True)``): that rescales the state by every
    chunk's decay, an elementwise step on the accumulator between dots. Here a first loop sums the
    segment's decay ℓ (dt only), so every token's weight ``exp(ℓ − a_t) ≤ 1`` is known in the
    second loop, which is then a plain K loop ``acc += (w ∘ x)ᵀ B`` over the segment's tokens."""
    pid_s = tl.program_id(0)
    h = tl.program_id(1)
    pid_p = tl.program_id(2)
    H = tl.num_programs(1)
    start = tl.load(cu_ptr + pid_s).to(tl.int64)
    end = tl.load(cu_ptr + pid_s + 1).to(tl.int64)
    g = h // heads_per_group
    A = tl.load(A_ptr + h).to(tl.float32)
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    dt_base = dt_ptr + h * s_dt_h

    # 1. ℓ, BLOCK_T tokens at a time (the decay only: one gather of dt per block)
    offs_tt = tl.arange(0, BLOCK_T)
    ell = tl.zeros([], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        tok = t0 + offs_tt
        m = tok < end
        v = tl.load(dt_base + tok * s_dt_t, mask=m, other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            v += dt_bias
        dt, _, _ = _process_dt(v, A, m, dt_min, dt_max, DT_SOFTPLUS, False)
        ell += tl.sum(dt * A, axis=0)

    # 2. acc += (w ∘ x)ᵀ B chunk by chunk; ``run`` carries a_t across chunks. min(·, 0) absorbs the
    # rounding difference between ℓ's sum and the running cumulative sum (the exponent is ≤ 0)
    offs_k = tl.arange(0, BLOCK_K)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp = offs_p < P
    mn = offs_n < N
    x_base = x_ptr + h * s_x_h
    b_base = B_ptr + g * s_B_g
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    run = tl.zeros([], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_K):
        tok = t0 + offs_k
        m = tok < end
        v = tl.load(dt_base + tok * s_dt_t, mask=m, other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            v += dt_bias
        dt, a, _ = _process_dt(v, A, m, dt_min, dt_max, DT_SOFTPLUS, False)
        a += run
        run = tl.min(a, axis=0)  # a is non-increasing and flat past the end: its last entry
        w = tl.exp(tl.minimum(ell - a, 0.0)) * dt
        xm = tl.load(x_base + tok[:, None] * s_x_t + offs_p[None, :], mask=m[:, None] & mp[None, :], other=0.0)
        Bm = tl.load(b_base + tok[:, None] * s_B_t + offs_n[None, :], mask=m[:, None] & mn[None, :], other=0.0)
        xw = (xm.to(tl.float32) * w[:, None]).to(xm.dtype)
        acc = tl.dot(tl.trans(xw), Bm, acc, input_precision=DOT_PREC)  # xw is no dot result: no miscompile

    row = pid_s.to(tl.int64) * H + h
    so = row * P * N + offs_p[:, None] * N + offs_n[None, :]
    tl.store(state_ptr + so, acc, mask=mp[:, None] & mn[None, :])
    if pid_p == 0:
        tl.store(ell_ptr + row, ell)


_SEG_STATE = fast_launch(_segment_state_kernel)


def segment_states(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, cu: torch.Tensor,
                   dt_bias: Optional[torch.Tensor], dt_softplus: bool, dt_limit: Tuple[float, float],
                   block_k: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """(S (nseg, H, P, N) fp32, ℓ (nseg, H) fp32) of the segments ``[cu[s], cu[s+1])`` by
    ``_segment_state_kernel`` (flat inputs as ``ssd_fwd`` takes them)."""
    from samkern.ops.ssd.fwd import _pick_block_p

    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    nseg = cu.shape[0] - 1
    S = torch.empty((nseg, H, P, N), device=x.device, dtype=torch.float32)
    ell = torch.empty((nseg, H), device=x.device, dtype=torch.float32)
    block_p = _pick_block_p(P, N)
    _SEG_STATE[(nseg, H, cdiv(P, block_p))](
        x, dt, A.contiguous(), B, dt_bias.contiguous() if dt_bias is not None else A, cu, S, ell,
        P, N, H // G,
        x.stride(0), x.stride(1), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1),
        float(dt_limit[0]), float(dt_limit[1]),
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=max(16, next_pow2(N)), BLOCK_T=1024,
        num_warps=FWD_TUNING.get("segment_warps") or 4, num_stages=FWD_TUNING.get("segment_stages") or 3,
    )
    return S, ell


def _stitch(src: torch.Tensor, ell: torch.Tensor, seed: Optional[torch.Tensor], batch: int, K: int,
            reverse: bool) -> torch.Tensor:
    """``_stitch_kernel`` over (batch·K, H, P, N) fp32 ``src``; ``seed`` (batch, H, P, N) or None."""
    _, H, P, N = src.shape
    E = P * N
    dst = torch.empty_like(src)
    block_e = 1024
    _STITCH[(batch, H, cdiv(E, block_e))](
        src, ell, seed.contiguous() if seed is not None else src, dst, K, H, E,
        REVERSE=reverse, HAS_SEED=seed is not None, BLOCK_E=block_e, num_warps=4,
    )
    return dst


class SplitForward(NamedTuple):
    """What :func:`ssd_fwd_split` returns: the outputs, and for the backward the segment layout
    (``cu`` / ``seg_idx``, :func:`segment_layout`), the state entering every segment
    (``seg_states``, (batch·K, H, P, N) fp32), the chunk states of the second pass in that
    layout (or None without ``want_chunk_states``), every segment's log-decay ``ℓ`` ((batch·K, H)
    fp32, from the first pass; the backward's stitch reuses it), and the second pass's dt cache
    (``dt_cache_out``, or None)."""

    out: torch.Tensor
    final: Optional[torch.Tensor]
    chunk_states: Optional[torch.Tensor]
    seg_states: torch.Tensor
    cu: torch.Tensor
    seg_idx: torch.Tensor
    block_q: int
    seg_decay: torch.Tensor
    dt_cache: Optional[torch.Tensor] = None


def ssd_fwd_split(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    batch: int, L: int, seg: int, *,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None, dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = (0.0, float("inf")), want_final_states: bool = False,
    block_q: Optional[int] = None, want_chunk_states: bool = False, dt_cache_out: Optional[torch.Tensor] = None,
) -> SplitForward:
    """The forward of ``batch`` plain rows of ``L`` tokens in segments of ``seg`` tokens.

    Args: flat inputs as :func:`samkern.ops.ssd.fwd.ssd_fwd` takes them (x (T, H, P), dt (T, H),
    A (H,), B/C (T, G, N), T = batch·L, row b = tokens [b·L, (b+1)·L)); ``initial_states``
    (batch, H, P, N) seeds row b; ``seg`` a multiple of the kernel's chunk ``block_q``;
    ``want_chunk_states``: keep the second pass's chunk states for :func:`ssd_bwd_split`;
    ``dt_cache_out``: receives the second pass's dt cache (``ssd_fwd``), for the same.

    Returns: :class:`SplitForward` (out (T, H, P) in x's dtype, final states (batch, H, P, N)
    fp32 or None, ...).
    """
    from samkern.ops.ssd.fwd import default_block_q, ssd_fwd

    T, H, P = x.shape
    N = B.shape[2]
    if block_q is None:
        block_q = default_block_q(T, batch, x.dtype)
    if seg <= 0 or seg % block_q:
        raise ValueError(f"split length must be a positive multiple of the chunk {block_q}, got {seg}")
    K = cdiv(L, seg)
    cu, seg_idx = segment_layout(batch, L, seg, x.device)
    common = dict(dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, block_q=block_q)

    # 1. the state each segment adds, from a zero state, and each segment's log-decay ℓ_k
    if FWD_TUNING.get("segment_states") == "gemm":
        S_loc, ell = segment_states(x, dt, A, B, cu, dt_bias, dt_softplus, dt_limit, block_q)
    else:
        ell = torch.empty((batch * K, H), device=x.device, dtype=torch.float32)
        _, S_loc, _, _ = ssd_fwd(x, dt, A, B, C, cu, None, want_final_states=True, states_only=True, decay_out=ell,
                                 **common)

    # 2. stitch: H_0 = H_init, H_k = exp(ℓ_{k-1}) H_{k-1} + S_{k-1}
    H_in = _stitch(S_loc, ell, initial_states, batch, K, reverse=False)

    # 3. outputs, every segment seeded with the state entering it
    out, fin, cstates, _ = ssd_fwd(x, dt, A, B, C, cu, seg_idx, D=D, z=z, initial_states=H_in,
                                   want_final_states=want_final_states, want_chunk_states=want_chunk_states,
                                   dt_cache_out=dt_cache_out, **common)
    final = fin.view(batch, K, H, P, N)[:, K - 1] if want_final_states else None
    return SplitForward(out, final, cstates, H_in, cu, seg_idx, block_q, ell, dt_cache_out)


def ssd_bwd_split(
    dout: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    batch: int, L: int, seg: int, fwd: SplitForward, *,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None, dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = (0.0, float("inf")), dfinal_states: Optional[torch.Tensor] = None,
) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of :func:`ssd_fwd_split` (made with ``want_chunk_states``), as
    :func:`samkern.ops.ssd.bwd.ssd_bwd` returns them (``dinitial_states`` per row).

    The backward's only sequential part, the reverse walk of the state gradient dS, is split the
    same way as the forward: (1) each segment's walk from a zero seed gives ``G_k``, the gradient
    reaching its start from its own outputs; (2) with ``dF_k`` the gradient of the state leaving
    segment k (``dF_{K-1}`` = d``final_states``), ``dH_k = G_k + exp(ℓ_k) dF_k`` and
    ``dF_{k-1} = dH_k``: a reverse K-step recurrence (``_stitch_kernel``); (3) the ordinary three-kernel backward over the segments, each walk
    seeded with ``dF_k``. The per-chunk kernels see the true entering states and state gradients,
    so every gradient is the unsplit one; d``initial_states`` of a row is ``dH_0``.
    """
    from samkern.ops.ssd.bwd import FACTOR_RANGE, _last_contig, _pick_block_p, dstate_walk, dt_cache, ssd_bwd

    _, H, P = x.shape
    N = B.shape[2]
    K = cdiv(L, seg)
    dout = _last_contig(dout)
    dtc = fwd.dt_cache
    if dtc is None:
        dtc = dt_cache(dt, A, dt_bias, fwd.cu, block_q=fwd.block_q, dt_softplus=dt_softplus, dt_limit=dt_limit)
    # 1. the gradient reaching each segment's start from the segment's own outputs
    G_seg = dstate_walk(dout, z, dtc, C, fwd.cu, fwd.seg_idx, batch * K, None, None, P=P,
                        block_q=fwd.block_q, block_p=_pick_block_p(P), zero_fill=False)
    # 2. stitch backwards: the gradient of the state leaving every segment,
    #    dF_{K-1} = d final_states, dF_{k-1} = G_k + exp(ℓ_k) dF_k
    dF = _stitch(G_seg, fwd.seg_decay, dfinal_states, batch, K, reverse=True)
    # 3. the three kernels over the segments, every walk seeded with dF
    grads = ssd_bwd(dout, x, dt, A, B, C, fwd.cu, fwd.seg_idx, fwd.chunk_states, fwd.block_q, D=D, z=z,
                    dt_bias=dt_bias, initial_states=fwd.seg_states, dt_softplus=dt_softplus, dt_limit=dt_limit,
                    dfinal_states=dF, validate=False, dt_cache_in=dtc, init_rows_all_seeded=True,
                    factor_range=FACTOR_RANGE)  # measured faster at long rows (bwd._factor_range)
    dinit = None
    if initial_states is not None:
        dinit = grads[8].view(batch, K, H, P, N)[:, 0].to(initial_states.dtype)
    return grads[:8] + (dinit,)
