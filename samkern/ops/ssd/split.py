# SPDX-License-Identifier: Apache-2.0
"""Sequence split for long rows, forward and backward (chosen by :func:`pick_split_len`).

Why. The fused forward (:mod:`samkern.ops.ssd.fwd`) runs one program per (sequence, head) that
walks the sequence's chunks one after the other, and so does the backward's dS walk. With few
long rows (B1 L16384 H80: 80 programs for 132 SMs, 256 chunks each) both are latency-bound: the
one-pass forward is 1.8x slower than mamba-ssm on an H100. Splitting every row into segments of
``seg`` tokens makes ``batch · ⌈L/seg⌉ · H`` programs, and the state recurrence is linear, so
the segments can be stitched exactly.

Forward (:func:`ssd_fwd_split`):

1. local states: ``S_k``, the state a segment adds at its end from a zero state, as one weighted
   sum over the segment's tokens (``_segment_sum_kernel``: no ``C B^T``, no output, C / D / z not
   read; ``FWD_TUNING["split_pass1"]`` "walk": the forward kernel's ``states_only`` mode instead); it also
   stores the dt cache (``fwd.py``, "The dt cache") for the third step;
2. stitching (one small Triton launch, ``_stitch_kernel``): with ``ℓ_k = Σ_{t in segment k} dt_t·A``
   (the segment's log-decay, ≤ 0, which the first pass stores), the state entering segment k is
   ``H_0 = H_init``, ``H_k = exp(ℓ_{k-1}) H_{k-1} + S_{k-1}``: a K-step elementwise recurrence
   over the (P·N) state entries of every (row, head), reading S and writing H once. (A batched
   matmul of exp(c_{k-1} − c_j) weights over the cumulative decays did the same with ~12 torch
   launches and ~100 us of copies and fp32 GEMM at B1 L16384 H80, ``dev-runs/s7-call2-*``.)
3. outputs: the kernel again over the segments, each seeded with its ``H_k``, reading the dt
   cache instead of processing dt (with gradients it also stores the chunk states, in the segment
   layout, and the backward reuses the same dt cache).

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
from samkern.ops.ssd.bwd import _load_dt_cache, _load_dy
from samkern.ops.ssd.fwd import FWD_TUNING, _chunk_dt, _pick_block_p, _program_tiles

__all__ = ["segment_layout", "ssd_fwd_split", "ssd_bwd_split", "SplitForward", "pick_split_len"]

SPLIT_MIN_LEN = 1024  # the measured segment length
SPLIT_MAX_SEGMENTS = 64


def pick_split_len(batch: int, L: int, H: int, P: int, N: int, block_q: int, device: torch.device) -> int:
    """Segment length for the split forward of ``batch`` rows of ``L`` tokens, or 0 for one pass
    (see the module docstring for when and why)."""
    from samkern.ops.ssd.fwd import FWD_TUNING, _pick_block_p

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


@triton.jit
def _segment_sum_kernel(
    l_ptr, r_ptr, z_ptr, dt_ptr, A_ptr, dtb_ptr, dtc_ptr, cu_ptr, out_ptr, ell_ptr,
    T, HT, P, N, HPG,
    s_l_t, s_l_g, s_r_t, s_r_h, s_z_t, s_z_h, s_dt_t, s_dt_h, dt_min, dt_max,
    GRAD: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    WRITE_DT: tl.constexpr, PREC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The first pass of the split for one (segment, head, P-block), as ONE weighted sum over its
    tokens instead of a walk: every token's term gets its whole decay to the segment's far end,
    so the accumulator goes from dot to dot unscaled (a plain K loop that Triton pipelines; the
    walk's per-chunk ``S ← exp(a_last) S + …`` puts a scaling between consecutive dots).

    Forward (``GRAD`` False; l = B, r = x): the state the segment adds at its end,
    ``S = Σ_s exp(ℓ − A_s) dt_s x_s ⊗ B_s`` with ``A_s`` the log-decay from the segment start
    through s and ``ℓ`` the whole segment's, stored as (P, N), and ``ℓ`` into ``ell``. The chunks
    run last to first, so ``ℓ − A_s`` = (decay of the later chunks) + (a_last − a_s) in the
    chunk, accumulated as it goes; dt is processed here (the dt cache stored with ``WRITE_DT``).
    Backward (``GRAD``; l = C, r = dout): the gradient reaching the segment's start from its own
    outputs, ``G = Σ_t exp(A_t) dy_t ⊗ C_t`` (dy = dout · silu(z)), chunks first to last, dt from
    the cache. Every weight is ``exp`` of a sum of non-positive log-decays: at most 1, no
    overflow; terms that underflow are those the walk would have decayed to zero as well."""
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_p = tl.program_id(2)
    start, end, offs_q, offs_p, offs_n, mp, mn = _program_tiles(cu_ptr, pid_s, pid_p, P, N, BLOCK_Q, BLOCK_P, BLOCK_N)
    n_chunks = tl.cdiv(end - start, BLOCK_Q).to(tl.int32)
    g = pid_h // HPG
    in_ty = l_ptr.dtype.element_ty
    if not GRAD:
        A = tl.load(A_ptr + pid_h).to(tl.float32)
        if HAS_DT_BIAS:
            dtb = tl.load(dtb_ptr + pid_h).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)  # the sum, transposed: (P, N) in memory
    decay = tl.zeros([], dtype=tl.float32)  # log-decay of the chunks already summed
    for i in range(0, n_chunks):
        if GRAD:
            c = i
        else:
            c = n_chunks - 1 - i
        tok = start + c * BLOCK_Q + offs_q
        mq = tok < end
        mqp = mq[:, None] & mp[None, :]
        lm = tl.load(l_ptr + tok[:, None] * s_l_t + g * s_l_g + offs_n[None, :], mask=mq[:, None] & mn[None, :],
                     other=0.0)
        if GRAD:
            last = tl.minimum(start + c * BLOCK_Q + BLOCK_Q, end) - 1
            _dt, a, a_last = _load_dt_cache(dtc_ptr, pid_h, T, HT, tok, mq, last)
            r = _load_dy(r_ptr, z_ptr, pid_h, tok, offs_p, mqp, s_r_t, s_r_h, s_z_t, s_z_h, HAS_Z)
            w = tl.exp(decay + a)
        else:
            dtv, a, a_last = _chunk_dt(dt_ptr + tok * s_dt_t + pid_h * s_dt_h, dtb if HAS_DT_BIAS else 0.0, A, mq,
                                       offs_q, dtc_ptr, pid_h, pid_p, T, HT, tok, dt_min, dt_max, HAS_DT_BIAS,
                                       DT_SOFTPLUS, WRITE_DT, BLOCK_Q)
            r = tl.load(r_ptr + tok[:, None] * s_r_t + pid_h * s_r_h + offs_p[None, :], mask=mqp,
                        other=0.0).to(tl.float32)
            w = tl.exp(decay + a_last - a) * dtv
        # [N, P] += lᵀ (w ∘ r): l's transpose is a loaded tile (never a dot result), read by the MMA
        # from shared memory as it is. (The [P, N] form, (w ∘ r)ᵀ l, transposes the register tile
        # instead: forward 176 against 133 us at B1 L16384 H80, dev-runs/s31-call1/2.)
        acc = tl.dot(tl.trans(lm), (r * w[:, None]).to(in_ty), acc=acc, input_precision=PREC)
        decay += a_last
    row = pid_s.to(tl.int64) * (tl.num_programs(1) * P * N) + pid_h * P * N
    tl.store(out_ptr + row + offs_n[:, None] + offs_p[None, :] * N, acc, mask=mn[:, None] & mp[None, :])
    if not GRAD:
        if pid_p == 0:
            tl.store(ell_ptr + pid_s * tl.num_programs(1) + pid_h, decay)


_SEGMENT_SUM = fast_launch(_segment_sum_kernel)  # cheaper eager launches (samkern/launch.py)


def segment_sums(l: torch.Tensor, r: torch.Tensor, cu: torch.Tensor, P: int, block_q: int, *,
                 grad: bool, z: Optional[torch.Tensor] = None, dt: Optional[torch.Tensor] = None,
                 A: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                 dt_softplus: bool = False, dt_limit: Tuple[float, float] = (0.0, float("inf")),
                 dt_cache: Optional[torch.Tensor] = None, ell: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``_segment_sum_kernel`` over the segments of ``cu``: (nseg, H, P, N) fp32.

    Forward (``grad`` False): l = B (T, G, N), r = x (T, H, P), with dt (T, H), A and the dt options;
    writes ``ell`` (nseg, H) and, if given, the (3, H, T) ``dt_cache``. Backward: l = C, r = dout,
    ``z`` optional, ``dt_cache`` required (read)."""
    T, H = r.shape[0], r.shape[1]
    G, N = l.shape[1], l.shape[2]
    nseg = cu.shape[0] - 1
    block_n = max(16, next_pow2(N))
    block_p = _pick_block_p(P, N)
    out = torch.empty((nseg, H, P, N), device=r.device, dtype=torch.float32)
    dummy = out
    zs = z.stride() if z is not None else (0, 0)
    dts = dt.stride() if dt is not None else (0, 0)
    _SEGMENT_SUM[(nseg, H, cdiv(P, block_p))](
        l, r, z if z is not None else dummy, dt if dt is not None else dummy, A if A is not None else dummy,
        dt_bias if dt_bias is not None else dummy, dt_cache if dt_cache is not None else dummy, cu, out,
        ell if ell is not None else dummy,
        T, H * T, P, N, H // G,
        l.stride(0), l.stride(1), r.stride(0), r.stride(1), zs[0], zs[1], dts[0], dts[1],
        float(dt_limit[0]), float(dt_limit[1]),
        GRAD=grad, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        WRITE_DT=(not grad) and dt_cache is not None, PREC="ieee" if l.dtype == torch.float32 else "tf32",
        BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=FWD_TUNING.get("split_pass1_warps") or 4,
        num_stages=FWD_TUNING.get("split_pass1_stages") or (3 if block_q <= 64 else 2),
    )
    return out


class SplitForward(NamedTuple):
    """What :func:`ssd_fwd_split` returns: the outputs, and for the backward the segment layout
    (``cu`` / ``seg_idx``, :func:`segment_layout`), the state entering every segment
    (``seg_states``, (batch·K, H, P, N) fp32), the chunk states of the second pass in that
    layout (or None without ``want_chunk_states``), every segment's log-decay ``ℓ`` ((batch·K, H)
    fp32, from the first pass; the backward's stitch reuses it), and the dt cache of the segments
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
    ``dt_cache_out``: receives the segments' dt cache (written by the first pass, or by the
    second with ``split_dt`` "compute"), for the same.

    Returns: :class:`SplitForward` (out (T, H, P) in x's dtype, final states (batch, H, P, N)
    fp32 or None, ...).
    """
    from samkern.ops.ssd.fwd import FWD_TUNING, default_block_q, ssd_fwd

    T, H, P = x.shape
    N = B.shape[2]
    if block_q is None:
        block_q = default_block_q(T, batch, x.dtype)
    if seg <= 0 or seg % block_q:
        raise ValueError(f"split length must be a positive multiple of the chunk {block_q}, got {seg}")
    K = cdiv(L, seg)
    cu, seg_idx = segment_layout(batch, L, seg, x.device)
    common = dict(dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, block_q=block_q)

    # 1. the state each segment adds, from a zero state, and each segment's log-decay ℓ_k; the first
    # pass also stores the dt cache (same segments, same chunks), which the second pass reads
    # instead of processing dt again (FWD_TUNING split_dt "cache"; B1 L16384 H80 on the H100:
    # second pass 489-495 -> 411-416 us, first pass 148-149 -> 155, forward 673 -> 603-607 us,
    # dev-runs/s19-call3)
    dtc = None
    if FWD_TUNING.get("split_dt") != "compute":
        dtc = dt_cache_out if dt_cache_out is not None else x.new_empty((3, H, T), dtype=torch.float32)
    ell = torch.empty((batch * K, H), device=x.device, dtype=torch.float32)
    if FWD_TUNING.get("split_pass1") == "walk":
        _, S_loc, _, _ = ssd_fwd(x, dt, A, B, C, cu, None, want_final_states=True, states_only=True, decay_out=ell,
                                 dt_cache_out=dtc, **common)
    else:
        S_loc = segment_sums(B, x, cu, P, block_q, grad=False, dt=dt, A=A, dt_bias=dt_bias, dt_softplus=dt_softplus,
                             dt_limit=dt_limit, dt_cache=dtc, ell=ell)

    # 2. stitch: H_0 = H_init, H_k = exp(ℓ_{k-1}) H_{k-1} + S_{k-1}
    H_in = _stitch(S_loc, ell, initial_states, batch, K, reverse=False)

    # 3. outputs, every segment seeded with the state entering it
    out, fin, cstates, _ = ssd_fwd(x, dt, A, B, C, cu, seg_idx, D=D, z=z, initial_states=H_in,
                                   want_final_states=want_final_states, want_chunk_states=want_chunk_states,
                                   dt_cache_out=dt_cache_out if dtc is None else None, dt_cache_in=dtc, **common)
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
    same way as the forward: (1) each segment's walk from a zero seed (as one weighted sum,
    ``_segment_sum_kernel``) gives ``G_k``, the gradient reaching its start from its own outputs; (2) with ``dF_k`` the gradient of the state leaving
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
    if FWD_TUNING.get("split_pass1") == "walk":
        G_seg = dstate_walk(dout, z, dtc, C, fwd.cu, fwd.seg_idx, batch * K, None, None, P=P,
                            block_q=fwd.block_q, block_p=_pick_block_p(P), zero_fill=False)
    else:
        G_seg = segment_sums(C, dout, fwd.cu, P, fwd.block_q, grad=True, z=z, dt_cache=dtc)
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
