# SPDX-License-Identifier: Apache-2.0
"""Fused Mamba-2 SSD chunked scan, forward: ONE Triton launch (two where the wrapper makes the dt
cache first, ``dt_cache_in``).

Design ("one program per (sequence, head, P-block), sequential over chunks"): program
``(i, h, pb)`` walks the tokens ``[cu[i], cu[i+1])`` of sequence ``i`` in internal chunks of
``BLOCK_Q`` tokens, holding the running state of head ``h`` (rows ``pb*BLOCK_P ...`` of P,
all of N) in fp32 registers. Per chunk (positions past the sequence end get dt = 0, so they
neither decay nor feed the state)::

    dt_t = clamp(softplus?(dt_raw_t + dt_bias), dt_min, dt_max)        (fp32)
    a_t  = cumsum_{s<=t} dt_s * A                                     (within the chunk)
    M_ts = (C_t . B_s) * exp(a_t - a_s) * dt_s      for s <= t, else 0
    y    = M x + exp(a_t) * (C_t . S)  + D * x ;   out = y * silu(z)  (if z)
    S   <- exp(a_last) * S + sum_s exp(a_last - a_s) * dt_s * x_s B_s^T

Chunking is an exact reformulation of the recurrence ``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,
y_t = C_t . S_t``, so the internal chunk length need not equal the user's ``chunk_size``.

The state is kept transposed, ``ST = S^T`` of shape [N, P]: the two state dots then read
``C @ ST`` and ``B^T @ (w x)`` without ever transposing a computed dot result (Triton 3.6 on
Hopper miscompiles ``tl.trans`` of a bf16-cast dot result fed into another dot).

Storage for the backward (``want_chunk_states``): the state *entering* internal chunk k of
sequence i goes to row ``cu[i] // BLOCK_Q + i + k`` of ``chunk_states`` (T // BLOCK_Q + nseq, H,
P, N). Rows of consecutive sequences never overlap: sequence i has at most
``ceil(len_i / BLOCK_Q) <= (cu[i+1] - cu[i]) // BLOCK_Q + 1`` chunks and
``cu[i] // Q + i + n_i <= cu[i+1] // Q + (i + 1)`` because ``floor(a/Q) + ceil((b-a)/Q) <= floor(b/Q) + 1``.
So no host sync is needed to place them. Sequence i owns rows [cu[i] // Q + i, cu[i+1] // Q + i + 1),
a partition of all rows; the owned rows past its last chunk are zero-filled by the program.

The dt cache (``dt_cache_out``, for the backward): the forward also stores what it computed
from dt, per head and token, into a (3, H, T) fp32 tensor: ``a`` (the in-chunk cumulative
log-decay), the processed ``dt`` and ``chain`` = d dt / d(dt_raw + dt_bias) (0 where the clamp
is active). The three backward kernels read these contiguous rows instead of redoing the dt
processing per (chunk, head): that was a strided gather of dt (one sector per token), a softplus
and a cumulative sum on every program's critical path, about a fifth of the backward's chunk
kernel (Nsight Compute source counters, ``dev-runs/s7-call1-*``). ``bwd.dt_cache`` computes the
same tensor in a separate launch where no forward stored it (the torch.compile path, tests).

Glossary: T packed tokens (batch * L), H heads, P headdim, N d_state, G groups, Q chunk.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv, next_pow2, tuning_from_env
from samkern.checks import check_tensor
from samkern.launch import fast_launch

__all__ = ["ssd_fwd", "default_block_q", "chunk_state_dtype", "TRAIN_BLOCK_Q", "FWD_TUNING"]

# Launch overrides, read by ``ssd_fwd`` (the GPU tuning script sweeps these). ``None`` = heuristic.
# "split_len": segment length of the sequence-split inference path for long rows
# (:mod:`samkern.ops.ssd.split`); None = its heuristic (``pick_split_len``), 0 = never.
# "chunk_states": dtype of the states stored for the backward, "input" (bf16 for bf16 inputs, else
# fp32) or "fp32"; None = "input" (see chunk_state_dtype).
# "block_q": the inference chunk (``default_block_q``). "split_dt": how the split path's second pass
# gets dt, "cache" (the first pass stores the dt cache, the second reads it) or "compute" (both
# process dt); None = "cache". "dt_prep": without the split (eager calls), "kernel" = the dt cache
# by a launch of its own (``bwd.dt_cache``) before the forward, which reads it, or "forward" = the
# forward processes dt itself; None = "kernel" (README, "dt processing off the critical path").
# "split_pass1": the split's first passes, "sum" (``split._segment_sum_kernel``) or "walk" (this
# kernel's ``states_only`` mode and the dS walk from a zero seed, as until session 31); None = "sum".
# "split_pass1_warps" / "split_pass1_stages": the sum kernel's launch (None: 4 warps, 3 stages at a
# 64-token chunk, 2 above). "maxnreg": a register cap for the forward kernel (Triton's launch
# option; None = none).
FWD_TUNING: dict = {"block_p": None, "num_warps": None, "num_stages": None, "split_len": None,
                    "chunk_states": None, "block_q": None, "split_dt": None, "dt_prep": None,
                    "split_pass1": None, "split_pass1_warps": None, "split_pass1_stages": None, "maxnreg": None}
FWD_TUNING.update(tuning_from_env("SAMKERN_SSD_FWD_TUNING", FWD_TUNING))  # env override: JSON


@triton.jit
def _softplus(x):
    # log(1 + e^x) for x <= 20, identity above (mamba-ssm's threshold); log1p keeps small e^x exact.
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


@triton.jit
def _process_dt(v, A, mask, dt_min, dt_max, DT_SOFTPLUS: tl.constexpr, WANT_CHAIN: tl.constexpr):
    """dt processing of one chunk from ``v = dt_raw + dt_bias`` (fp32 [Q]): (processed dt, the
    in-chunk cumulative log-decay ``a``, ``chain`` = d dt / d v, or 0. when not ``WANT_CHAIN``).
    Masked positions get dt = 0 and chain = 0, so ``a`` is flat past the sequence end and its last
    entry is the decay of the whole chunk."""
    if DT_SOFTPLUS:
        dt = _softplus(v)
    else:
        dt = v
    chain = 0.0
    if WANT_CHAIN:
        ok = mask & (dt >= dt_min) & (dt <= dt_max)  # the clamp passes no gradient where it is active
        if DT_SOFTPLUS:
            chain = tl.where(ok, tl.where(v <= 20.0, tl.sigmoid(v), 1.0), 0.0)
        else:
            chain = tl.where(ok, 1.0, 0.0)
    dt = tl.where(mask, tl.minimum(tl.maximum(dt, dt_min), dt_max), 0.0)
    a = tl.cumsum(dt * A, axis=0)
    return dt, a, chain


@triton.jit
def _store_dt_cache(dtc_ptr, h, T, HT, tok, mask, a, dt, chain):
    # (3, H, T) fp32: planes a | dt | chain (HT = H·T apart), each row (one head) contiguous in tokens.
    # The third plane is two pointer steps of HT, never the product 2·HT: Triton passes an HT below
    # 2^31 as int32, and 2·HT wraps from 2^30 on
    base = dtc_ptr + h.to(tl.int64) * T + tok
    tl.store(base, a, mask=mask)
    tl.store(base + HT, dt, mask=mask)
    tl.store(dtc_ptr + HT + HT + h.to(tl.int64) * T + tok, chain, mask=mask)


@triton.jit
def _chunk_dt(dt_ptrs, dt_bias, A, mask, offs_q, dtc_ptr, h, pid_p, T, HT, tok, dt_min, dt_max,
              HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, WRITE_DT: tl.constexpr,
              BLOCK_Q: tl.constexpr):
    """One chunk's dt from the raw values at ``dt_ptrs``: (processed dt, in-chunk log-decay a,
    the chunk's whole decay a_last), storing the dt cache with ``WRITE_DT`` (P-block 0 only: one
    writer per token and head)."""
    dt = tl.load(dt_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += dt_bias
    dt, a, chain = _process_dt(dt, A, mask, dt_min, dt_max, DT_SOFTPLUS, WRITE_DT)
    if WRITE_DT:
        if pid_p == 0:
            _store_dt_cache(dtc_ptr, h, T, HT, tok, mask, a, dt, chain)
    # masked tail positions have dt = 0, so the last entry is the decay of the whole chunk
    a_last = tl.sum(tl.where(offs_q == BLOCK_Q - 1, a, 0.0), axis=0)
    return dt, a, a_last


# The [Q, Q] decay tile exp(a_t − a_s) as an outer product exp(a_t − c) · exp(c − a_s), c = a_last / 2,
# for chunks whose whole decay |a_last| is at most this: two [Q] vector exps instead of Q² (graph
# fwd+bwd 295 -> 277 us at 130m B32 L192, 467 -> 431 at 2.7b B16 L192: dev-runs/s21-call4). Every
# a_t lies between 0 and a_last (A ≤ 0, dt ≥ 0: the op's contract), so both factors stay within
# exp(±80), inside fp32's normal range even with flush-to-zero; faster chunks (and NaN / inf ones)
# take the exp of the masked difference. Rounding, out-of-contract inputs and why the branch yields
# a product: the op README, "Decay tiles as outer products". The kernel helper spells the bound as
# a literal (a test checks that it matches this constant).
DECAY_SPLIT_RANGE = 160.0


@triton.jit
def _times_causal_decay(t, a, a_last, causal, TRANSPOSED: tl.constexpr):
    """``t`` ∘ exp(a_t − a_s) where ``causal`` (s ≤ t), 0 elsewhere: ``t`` is a [t, s] tile, or with
    ``TRANSPOSED`` an [s, t] one (``causal`` then masks [s, t]). ``a`` is the chunk's in-chunk
    log-decay [Q], ``a_last`` its whole decay (a scalar: the branch is uniform over the program).
    The product, not the decay tile, leaves the branch: a [Q, Q] tile fewer live at its end."""
    if tl.abs(a_last) <= 160.0:  # DECAY_SPLIT_RANGE
        c = 0.5 * a_last
        e = tl.exp(a - c)  # exp(a_t − c)
        f = tl.exp(c - a)  # exp(c − a_s)
        # the decay first, masked: at most 1 on valid pairs (t · e alone could overflow); masked
        # pairs (s > t) may overflow to inf, selected away before t multiplies (no inf · 0)
        if TRANSPOSED:
            v = f[:, None] * e[None, :]
        else:
            v = e[:, None] * f[None, :]
        out = t * tl.where(causal, v, 0.0)
    else:
        if TRANSPOSED:
            d = a[None, :] - a[:, None]
        else:
            d = a[:, None] - a[None, :]
        out = t * tl.exp(tl.where(causal, d, float("-inf")))  # masked *before* exp: no overflow
    return out


@triton.jit
def _read_dt_cache(dtc_ptr, h, T, HT, tok, mask):
    """(processed dt, in-chunk log-decay a, a_last) of one chunk of head ``h`` from the dt cache
    (two contiguous rows: planes a | dt of ``_store_dt_cache``'s layout), as ``_process_dt`` would
    give them: dt = 0 and a flat (= a_last, the chunk's whole decay) past the sequence end. a is
    non-increasing (A ≤ 0, dt ≥ 0: the op's contract, and the clamp keeps dt ≥ dt_min ≥ 0), so its
    minimum over the valid positions is its last valid entry (on the GPU, up to the rounding of
    the parallel scan that made it; the 1e-6 equivalence test at every tile covers that). A scalar
    load of the last entry, as the backward's ``_load_dt_cache`` does, would not need the
    assumption; it has not been timed in this loop (a scalar load may not be pipelined)."""
    base = dtc_ptr + h.to(tl.int64) * T + tok
    a = tl.load(base, mask=mask, other=0.0)
    a_last = tl.min(tl.where(mask, a, 0.0), axis=0)
    dt = tl.load(base + HT, mask=mask, other=0.0)
    return dt, tl.where(mask, a, a_last), a_last


@triton.jit
def _program_tiles(cu_ptr, pid_s, pid_p, P, N, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """What a (sequence, head, P-block) program of the scan kernels starts from: (start, end,
    offs_q, offs_p, offs_n, mask_p, mask_n), the sequence's tokens [start, end) as int64 (a token
    index times a stride overflows int32 at ~1M tokens: H·P·1M > 2^31)."""
    start = tl.load(cu_ptr + pid_s).to(tl.int64)
    end = tl.load(cu_ptr + pid_s + 1).to(tl.int64)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    return start, end, offs_q, offs_p, offs_n, offs_p < P, offs_n < N


@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, init_ptr, init_idx_ptr, cu_ptr,
    out_ptr, final_ptr, cstates_ptr,
    P, N, heads_per_group,
    stride_x_t, stride_x_h,
    stride_dt_t, stride_dt_h,
    stride_b_t, stride_b_g,
    stride_c_t, stride_c_g,
    stride_z_t, stride_z_h,
    stride_o_t, stride_o_h,
    stride_D_h,
    dt_min, dt_max,
    dtc_ptr, T, HT,  # the dt cache (WRITE_DT); last, so that kernels without it compile as before
    decay_ptr,  # (nseq, H) fp32 total log-decay of every sequence (WRITE_DECAY)
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr, WRITE_FINAL: tl.constexpr, WRITE_CHUNK: tl.constexpr,
    STATES_ONLY: tl.constexpr, WRITE_DT: tl.constexpr, WRITE_DECAY: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, SKIP_UNREAD: tl.constexpr = False,
    READ_DT: tl.constexpr = False,
):
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_p = tl.program_id(2)
    H = tl.num_programs(1)
    # int64 everywhere a token index meets a stride (_program_tiles)
    start, end, offs_q, offs_p, offs_n, mask_p, mask_n = _program_tiles(cu_ptr, pid_s, pid_p, P, N, BLOCK_Q,
                                                                        BLOCK_P, BLOCK_N)
    g = pid_h // heads_per_group
    mask_np = mask_n[:, None] & mask_p[None, :]

    A = tl.load(A_ptr + pid_h).to(tl.float32)
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + pid_h).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + pid_h * stride_D_h + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        else:
            Dv = tl.load(D_ptr + pid_h).to(tl.float32)

    # State, transposed: ST[n, p] = S[p, n]. Layout of every state tensor in memory: (.., H, P, N).
    st_off = (offs_n[:, None] + offs_p[None, :] * N).to(tl.int64)
    HPN = (H * P * N).to(tl.int64)
    ST = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    if HAS_INIT:
        row = tl.load(init_idx_ptr + pid_s)
        if row >= 0:
            ST = tl.load(init_ptr + row.to(tl.int64) * HPN + pid_h * P * N + st_off, mask=mask_np, other=0.0).to(tl.float32)

    x_base = x_ptr + pid_h * stride_x_h
    z_base = z_ptr + pid_h * stride_z_h
    o_base = out_ptr + pid_h * stride_o_h
    b_base = B_ptr + g * stride_b_g
    c_base = C_ptr + g * stride_c_g
    dt_base = dt_ptr + pid_h * stride_dt_h
    causal = offs_q[:, None] >= offs_q[None, :]
    if WRITE_CHUNK:
        crow = start // BLOCK_Q + pid_s
        cs_base = cstates_ptr + pid_h * P * N + st_off

    n_chunks = tl.cdiv(end - start, BLOCK_Q).to(tl.int32)
    if WRITE_DECAY:
        a_tot = tl.zeros([], dtype=tl.float32)
    for c in range(0, n_chunks):
        offs_t = start + c * BLOCK_Q + offs_q
        mask_t = offs_t < end
        if WRITE_CHUNK:
            # SKIP_UNREAD: without initial states the state entering the first chunk is zero and
            # the backward never reads it (bwd.py, "Known-zero states"): a mask, not a branch
            tl.store(cs_base + (crow + c) * HPN, ST.to(cstates_ptr.dtype.element_ty),
                     mask=mask_np & ((c > 0) | HAS_INIT | (not SKIP_UNREAD)))

        if READ_DT:
            # the dt cache an earlier launch stored with this chunking: two coalesced rows instead of
            # the strided dt gather, softplus and cumulative sum, which Nsight Compute put at ~35 %
            # of this kernel's stall samples at B1 L16384 (dev-runs/s19-call2)
            dt, a, a_last = _read_dt_cache(dtc_ptr, pid_h, T, HT, offs_t, mask_t)
        else:
            # (loading dt one chunk ahead, to hide this gather's latency, made the kernel 10-20 %
            # slower at the SAM shapes: dev-runs/s7-call2)
            dt, a, a_last = _chunk_dt(dt_base + offs_t * stride_dt_t, dt_bias if HAS_DT_BIAS else 0.0, A, mask_t,
                                      offs_q, dtc_ptr, pid_h, pid_p, T, HT, offs_t, dt_min, dt_max, HAS_DT_BIAS,
                                      DT_SOFTPLUS, WRITE_DT, BLOCK_Q)
        if WRITE_DECAY:
            a_tot += a_last

        xm = tl.load(x_base + offs_t[:, None] * stride_x_t + offs_p[None, :],
                     mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        Bm = tl.load(b_base + offs_t[:, None] * stride_b_t + offs_n[None, :],
                     mask=mask_t[:, None] & mask_n[None, :], other=0.0)
        if not STATES_ONLY:  # the split path's first pass needs only the state update
            Cm = tl.load(c_base + offs_t[:, None] * stride_c_t + offs_n[None, :],
                         mask=mask_t[:, None] & mask_n[None, :], other=0.0)

            # intra-chunk: M = (C B^T) o L, L_ts = exp(a_t - a_s) dt_s on s <= t (``_times_causal_decay``)
            CB = tl.dot(Cm, tl.trans(Bm), input_precision=DOT_PREC)
            Mm = _times_causal_decay(CB * dt[None, :], a, a_last, causal, False)
            y = tl.dot(Mm.to(xm.dtype), xm, input_precision=DOT_PREC)
            # inter-chunk: exp(a_t) * C_t . S (state entering the chunk)
            y += tl.exp(a)[:, None] * tl.dot(Cm, ST.to(Cm.dtype), input_precision=DOT_PREC)
            if HAS_D:
                if D_PER_P:
                    y += Dv[None, :] * xm.to(tl.float32)
                else:
                    y += Dv * xm.to(tl.float32)
            if HAS_Z:
                zm = tl.load(z_base + offs_t[:, None] * stride_z_t + offs_p[None, :],
                             mask=mask_t[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
                y = y * zm * tl.sigmoid(zm)
            tl.store(o_base + offs_t[:, None] * stride_o_t + offs_p[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=mask_t[:, None] & mask_p[None, :])

        # state update: ST <- exp(a_last) ST + B^T (w x), w_s = exp(a_last - a_s) dt_s
        w = tl.exp(a_last - a) * dt
        xw = (xm.to(tl.float32) * w[:, None]).to(xm.dtype)
        ST = ST * tl.exp(a_last) + tl.dot(tl.trans(Bm), xw, input_precision=DOT_PREC)

    if WRITE_CHUNK and not SKIP_UNREAD:
        # rows owned by this sequence but past its last chunk (at most 2): zero them, so that the
        # whole buffer is defined (deterministic outputs for opcheck / torch.compile comparisons)
        n_owned = (end // BLOCK_Q - start // BLOCK_Q + 1).to(tl.int32)
        for c in range(n_chunks, n_owned):
            tl.store(cs_base + (crow + c) * HPN, tl.zeros([BLOCK_N, BLOCK_P], dtype=cstates_ptr.dtype.element_ty),
                     mask=mask_np)

    if WRITE_DECAY:
        if pid_p == 0:
            tl.store(decay_ptr + pid_s * H + pid_h, a_tot)
    if WRITE_FINAL:
        tl.store(final_ptr + pid_s.to(tl.int64) * HPN + pid_h * P * N + st_off, ST, mask=mask_np)


_FWD = fast_launch(_ssd_fwd_kernel)  # cheaper eager launches (samkern/launch.py)


def chunk_state_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of the states entering every chunk (written by the forward for the backward,
    and of the backward's ``dstates``): bf16 for bf16 inputs, fp32 otherwise.

    Why bf16 is enough there: the backward uses the stored states only as bf16 dot operands
    (``C S_inᵀ``, ``B dSᵀ``, the dB / dC GEMMs round them to the input dtype anyway), except for
    the scalar ``Σ dS∘S_in`` of dA, which sums in fp32; the running state itself stays fp32 in
    registers, and ``final_states`` are fp32. Storing them at half the bytes halves the largest
    traffic of a training step (4·H·P·N / Q bytes per token in fp32, written once and read twice,
    for the states and again for ``dstates``). mamba-ssm stores its passed states in the input
    dtype too. fp16 keeps fp32: its range (65504) is not guaranteed for a state.
    ``FWD_TUNING["chunk_states"] = "fp32"`` restores fp32 storage."""
    if FWD_TUNING.get("chunk_states") == "fp32":
        return torch.float32
    return torch.bfloat16 if x_dtype == torch.bfloat16 else torch.float32


def check_f32_buffer(name: str, t: torch.Tensor, shape: Tuple[int, ...]) -> None:
    """``ValueError`` unless ``t`` is a contiguous fp32 tensor of ``shape`` (a buffer a kernel
    indexes by its own layout: the dt cache, the segment decays)."""
    check_tensor(name, t, shape=shape, dtypes=(torch.float32,))
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def default_block_q(T: int, nseq: int, dtype: torch.dtype) -> int:
    """Internal chunk length for inference: 64 (fastest on an H100 at SAM's short sequences, bf16,
    P 64, N 128). 128 with 8 warps was measured 9% faster at B1 L16384 H80 in one pass (1.25 vs
    1.37 ms, session 5), but with the sequence split it is slower there (second pass 843 vs
    494 us, dev-runs/s19-call1). With gradients
    the wrapper caps the chunk at ``TRAIN_BLOCK_Q`` (see there; 64 as well).
    ``FWD_TUNING["block_q"]`` overrides."""
    return int(FWD_TUNING.get("block_q") or 64)


# With gradients the forward writes the state entering every chunk for the backward, so the
# chunk length sets that traffic (4·H·P·N / Q bytes per token in fp32, half in bf16, written once and read twice). The
# three-kernel backward streams the states and is faster at 64 than at 32 (H100, bf16, fwd+bwd
# under graph replay, 130m B32 L192: 673 vs 882 us; 2.7b B16 L192: 1254 vs 1479 us;
# benchmarks/results/dev-runs/s3-call4-ssd-profile-403f986.json). The one-kernel backward it
# replaced was faster at 32 (register spills grew with Q).
TRAIN_BLOCK_Q = 64


def _pick_block_p(P: int, N: int) -> int:
    """All of P in one program while the P x N state tile fits the registers (P * N <= 8192: every
    shape mamba-ssm ships, headdim 64 / d_state 128 included). Splitting P over programs when
    nseq * H is small was measured slower there: every P-block recomputes the P-independent
    per-chunk work (C B^T, the decays) and the per-chunk latency does not shrink with BLOCK_P
    (H100, B1 L16384 H80: 1.37 ms at BLOCK_P 64 vs 1.35 at 32 and 2.30 at 16). Past 8192 the state
    tile spills (ptxas, sm_90, bf16: 1368 bytes per thread at P 128 / N 128, 5456 at P 128 / N 256;
    ``scripts/ssd_regs_offline.py``), so P is cut to 8192 / N (no spills offline)."""
    bp = FWD_TUNING.get("block_p")
    full = max(16, next_pow2(P))
    if bp is not None:
        return max(16, min(int(bp), full))
    return max(16, min(full, 8192 // next_pow2(N)))


def ssd_fwd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    cu_seqlens: torch.Tensor,
    init_idx: Optional[torch.Tensor],
    *,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = (0.0, float("inf")),
    want_chunk_states: bool = False,
    want_final_states: bool = False,
    block_q: Optional[int] = None,
    states_only: bool = False,
    dt_cache_out: Optional[torch.Tensor] = None,
    decay_out: Optional[torch.Tensor] = None,
    skip_unread_rows: bool = False,
    dt_cache_in: Optional[torch.Tensor] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """Launch the fused forward on flat (packed) inputs. No validation (the wrapper does it), no host sync.

    Args:
        x: (T, H, P), last dim contiguous; fp32/fp16/bf16.
        dt: (T, H) raw dt (before bias/softplus/clamp), any float dtype.
        A: (H,). B, C: (T, G, N), last dim contiguous, same dtype as x.
        cu_seqlens: (nseq + 1,) int32, sequence i is tokens [cu[i], cu[i+1]).
        init_idx: (nseq,) int32 row of ``initial_states`` seeding sequence i, -1 = zero state
            (ignored when ``initial_states`` is None).
        D: (H,) or (H, P). z: (T, H, P). dt_bias: (H,). initial_states: (batch, H, P, N).
        want_chunk_states: also return the states entering every internal chunk,
            (T // block_q + nseq, H, P, N) in :func:`chunk_state_dtype` (row layout in the module
            docstring); for the backward.
        want_final_states: also return the fp32 state after each sequence, (nseq, H, P, N).
        block_q: internal chunk length (power of two >= 16); default :func:`default_block_q`.
        states_only: compute only the state recurrence (no output: ``out`` is None, C / D / z
            are not read); for the first pass of the sequence split. Needs ``want_final_states``.
        dt_cache_out: a (3, H, T) fp32 contiguous tensor to receive the dt cache (module
            docstring; what ``bwd.dt_cache`` computes) for the backward, or None.
        decay_out: a contiguous (nseq, H) fp32 tensor to receive each sequence's total log-decay
            ``Σ_t dt_t·A`` (the sequence split's stitching), or None.
        skip_unread_rows: leave the ``chunk_states`` rows that :func:`bwd.ssd_bwd` never reads
            undefined (each sequence's first row without ``initial_states``, the rows past its
            last chunk) instead of writing zeros there: at SAM's L192 (three chunks, four rows per
            sequence) half the state bytes. For callers that keep ``chunk_states`` private (the
            autograd function); the custom op returns the buffer and keeps every element defined.
        dt_cache_in: the dt cache of these very inputs and this chunking (``dt_cache_out`` of an
            earlier launch, or ``bwd.dt_cache``), read instead of processing dt (``dt``, ``dt_bias``,
            ``dt_softplus`` and ``dt_limit`` are then not read); exclusive with ``dt_cache_out``.

    Returns:
        (out (T, H, P) in x.dtype or None, final_states or None, chunk_states or None, block_q used).
    """
    if states_only and (not want_final_states or want_chunk_states):
        raise ValueError("states_only needs want_final_states=True and want_chunk_states=False")
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    nseq = cu_seqlens.shape[0] - 1
    dev = x.device
    if block_q is None:
        block_q = default_block_q(T, nseq, x.dtype)
    BLOCK_N = max(16, next_pow2(N))
    BLOCK_P = _pick_block_p(P, N)

    if dt_cache_out is not None:
        check_f32_buffer("dt_cache_out", dt_cache_out, (3, H, T))
    if dt_cache_in is not None:
        check_f32_buffer("dt_cache_in", dt_cache_in, (3, H, T))
        if dt_cache_out is not None:
            raise ValueError("dt_cache_in and dt_cache_out are exclusive")
    if decay_out is not None:
        check_f32_buffer("decay_out", decay_out, (nseq, H))
    out = None if states_only else torch.empty((T, H, P), device=dev, dtype=x.dtype)
    final = torch.empty((nseq, H, P, N), device=dev, dtype=torch.float32) if want_final_states else None
    cstates = (
        torch.empty((T // block_q + nseq, H, P, N), device=dev, dtype=chunk_state_dtype(x.dtype))
        if want_chunk_states else None
    )
    has_init = initial_states is not None
    if has_init:
        initial_states = initial_states.contiguous()
        init_idx = init_idx.contiguous()
    if D is not None:
        D = D.contiguous()
    A = A.contiguous()
    if dt_bias is not None:
        dt_bias = dt_bias.contiguous()
    dummy = x  # stands in for absent optional pointers (never dereferenced: its constexpr flag is off)
    zs = z.stride() if z is not None else (0, 0, 1)
    nw = FWD_TUNING.get("num_warps") or (8 if block_q >= 128 else 4)
    ns = FWD_TUNING.get("num_stages") or 2
    grid = (nseq, H, cdiv(P, BLOCK_P))
    _FWD[grid](
        x, dt, A, B, C,
        D if D is not None else dummy,
        z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy,
        initial_states if has_init else dummy,
        init_idx if has_init else cu_seqlens,
        cu_seqlens,
        out if out is not None else dummy,
        final if final is not None else dummy,
        cstates if cstates is not None else dummy,
        P, N, H // G,
        x.stride(0), x.stride(1),
        dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1),
        C.stride(0), C.stride(1),
        zs[0], zs[1],
        *((out.stride(0), out.stride(1)) if out is not None else (0, 0)),
        D.stride(0) if D is not None else 0,
        float(dt_limit[0]), float(dt_limit[1]),
        dt_cache_out if dt_cache_out is not None else (dt_cache_in if dt_cache_in is not None else dummy), T, H * T,
        decay_out if decay_out is not None else dummy,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), HAS_INIT=has_init,
        WRITE_FINAL=final is not None, WRITE_CHUNK=cstates is not None, STATES_ONLY=states_only,
        WRITE_DT=dt_cache_out is not None, WRITE_DECAY=decay_out is not None, DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_Q=block_q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, SKIP_UNREAD=bool(skip_unread_rows),
        READ_DT=dt_cache_in is not None, num_warps=nw, num_stages=ns,
        **({"maxnreg": FWD_TUNING["maxnreg"]} if FWD_TUNING.get("maxnreg") else {}),
    )
    return out, final, cstates, block_q
