# SPDX-License-Identifier: Apache-2.0
"""Backward of the fused Mamba-2 SSD chunked scan: three Triton launches, plus a small finishing
kernel where dB/dC is split or its per-head sums do not fit beside the dB/dC programs
(``_fuse_finish_heads``); one more without a dt cache, one more with ``factor_range`` (the chunk
kernel's factored decays, ``_factor_range``).

Glossary: T total tokens (batch·L, sequences packed back to back), H heads, P headdim,
N d_state, G ngroups (head ``h`` reads B/C group ``h // (H // G)``), Q the internal chunk
(``block_q``, the forward's value), nseq number of sequences, "row" one internal chunk of one
sequence (the row index of ``chunk_states``: sequence i's chunk k is row ``cu[i] // Q + i + k``).

Why three kernels. The only sequential dependency of the backward is the state gradient ``dS``
flowing backwards through the chunks. A single program per (sequence, head) that walks the
chunks and does all the per-chunk work (the first design) needed 255 registers and spilled
186–452 of them on an H100 (``benchmarks/results/dev-runs/s3-call1-ssd-profile-ef6704d.json``);
its dB/dC were summed over heads with atomics. Now:

1. ``_ssd_bwd_dstate_kernel`` — grid (nseq, H, P-blocks): walks a sequence's chunks in
   reverse and stores ``dS`` leaving each chunk into ``dstates`` (layout and dtype of
   ``chunk_states``): ``dS ← exp(a_last) dS + (exp(a) ∘ dy)ᵀ C``, seeded by ``dfinal_states``;
   after the first chunk ``dS`` is the gradient of the initial state. At every chunk it also
   forms what the chunk kernel needs from the states: ``B dSᵀ`` and ``C S_inᵀ`` ([Q, P] tiles,
   stored into (T, H, P) buffers in the input dtype) and ``Σ dS∘S_in`` (per walk P-block).
2. ``_ssd_bwd_chunk_kernel`` — grid (rows, G · head-blocks, P-blocks), or for equal-length
   sequences a balanced grid of one program per SM (``_balanced_grid``): every chunk is now
   independent. A program forms ``C Bᵀ`` of its chunk once and loops over a block of heads of
   one group (balanced: over its share of the (row, group, head) items, one ``C Bᵀ`` per (row,
   group) segment); per head it loads the state tiles (no state is read here; on the row-blocked
   grid without a gate through an identity dot, so that Triton prefetches them: ``tile_dot``) and writes
   dx, dz, ddt and the dA/ddt_bias/dD partials. It sums ``dCB = dM∘L∘dt`` over its heads and
   stores that [Q, Q] tile per program (balanced: per segment), and the dB/dC kernel reads it
   transposed from memory for ``dCBᵀ``: no second dot, no ``tl.trans`` of a dot result.
3. ``_ssd_bwd_dbdc_kernel`` — grid (rows [+ H], G · head-splits, N-blocks): dB/dC of a chunk are sums
   over the group's heads, ``dB = (Σ dCB)ᵀ C + Σ_h (w_h ∘ x_h) dS_h``, ``dC = (Σ dCB) B +
   Σ_h (exp(a_h) ∘ dy_h) S_in,h``: a GEMM over K = heads × P with a [Q, N-block] accumulator, one
   plain store in the output dtype (or fp32 partials per head split when there are few chunks).
4. The last reductions in fixed order: dA, ddt_bias, dD summed over rows from the chunk kernel's
   partials and, with split dB/dC, the splits' partials summed and cast (they were two to four
   torch kernels, ~10 us under graphs). Where dB/dC is not split and its programs leave room
   (``_fuse_finish_heads``) the per-head sums are H extra rows of the dB/dC kernel's grid
   (``FUSE_HEADS``); otherwise ``_ssd_bwd_finish_kernel`` (grid (H + dB/dC blocks,)) does them
   (and, with split dB/dC, sums the splits).
No atomics anywhere, so the backward is always deterministic (bitwise reproducible) at no extra
cost.

Per-chunk gradients (t = output position, s = source position, ``a = cumsum(dt·A)``,
``L_ts = exp(a_t − a_s)`` on s ≤ t, ``M_ts = (C Bᵀ)_ts L_ts dt_s``, ``w_s = exp(a_last − a_s) dt_s``):

* forward: ``y = M x + exp(a)·(C S_inᵀ) + D x``, ``out = y·silu(z)``,
  ``S_out = exp(a_last) S_in + (w ∘ x)ᵀ B``;
* ``dy = dout·silu(z)``, ``dz = dout·y·silu'(z)``, ``dD = Σ dy∘x``;
* ``dx = Mᵀ dy + D dy + w ∘ (B dSᵀ)``;
* ``dM = dy xᵀ`` (t ≥ s); ``dCB = dM ∘ L ∘ dt_s``; ``dC = dCB B + exp(a) ∘ (dy S_in)``;
  ``dB = dCBᵀ C + w ∘ (x dS)``;
* ``ddt_s`` direct: ``Σ_t dM_ts (CB_ts L_ts) + exp(a_last − a_s)·u_s`` with
  ``u_s = Σ_p x_sp (B dSᵀ)_sp``;
* ``da_t``: ``Σ_s dM_ts M_ts − Σ_{t'} dM_{t's} M_{t's}`` (row minus column sums),
  ``+ exp(a_t) Σ_n C_tn (dy S_in)_tn``, ``− u_t w_t`` and, at the last position,
  ``Σ_s u_s w_s + exp(a_last) Σ dS∘S_in``; then ``ddt += A·revcumsum(da)``,
  ``dA += Σ dt·revcumsum(da)``;
* dt processing (``dt_raw + dt_bias`` → softplus (linear above 20) → clamp to ``dt_limit``) is
  chained: zero outside the clamp range, times ``sigmoid`` for softplus.

The dt cache. All three kernels need the processed dt and the in-chunk log-decay ``a`` of every
(chunk, head), and the chunk kernel the chain factor d dt / d(dt_raw + dt_bias). The forward
stores them ((3, H, T) fp32, ``fwd.ssd_fwd(dt_cache_out=...)``); :func:`dt_cache` recomputes them
in one extra launch for a backward called without them. Redoing that processing in every kernel
(a strided gather of dt, softplus, cumsum, per head) cost 4–13 % of each kernel's time at the
benchmark shapes (A/B in one device call, `dev-runs/s7-call2-*`). Its memory: 12 bytes per (token, head).

Known-zero states. Without ``dfinal_states`` the dS leaving a sequence's last chunk is zero, and
without ``initial_states`` the state entering its first chunk is zero: the walk does not store the
former (nor read the latter), nor the ``B dSᵀ`` / ``C S_inᵀ`` tiles made from them, and the chunk
and dB/dC kernels read none of them, through load / store masks (no traffic), not branches. At
SAM's L192 (three chunks of 64) that is a third of the walk's state reads, dS and tile writes, and
of the dB/dC state and chunk-kernel tile reads: fwd+bwd under graphs 366 -> 349 us (130m B32 L192),
581 -> 556 (2.7b B16 L192), 970 -> 964 (B8 L640) on an H100, no change at B1 L16384
(``dev-runs/s13-call5-*``, ``s13-call6-*``). Skipping the dots themselves behind ``if`` was slower
(walk 65 -> 70 us, forward 75 -> 113 with the same treatment): branches inside the chunk loop stop
Triton's pipeliner from prefetching (``dev-runs/s13-call4-*``). The walk instead peels its two
known-zero steps off its chunk loop (compiled without those loads, dots and stores; the loop
between them stays branch-free): walk 53 -> 49 us at 130m B32 L192 (``dev-runs/s16-call1-*``).

Everything in the chunk kernel is linear in the P-block's share of ``dM`` and ``x dS``, so
P-blocks (P > 64) emit partials. Reductions: dx, dz, dB, dC, dinitial_states have one owner
(plain stores). ddt per P-block into (nPB, T, H) fp32 (no reduction at nPB = 1). dA, ddt_bias, dD
(one number per P-block for a per-head D: the diagonal of dM without the gate and with dout in
x's dtype, README "A per-head dD without a cross-warp column sum"; P numbers per channel) per
(row, head) into one small fp32 buffer (rows past a sequence's end: zeros written by their
programs, so no zero fill; the balanced grid's buffer has only the rows that hold tokens)
summed over rows by the finishing step (4. above). Extra
memory: ``dstates`` (as large as ``chunk_states``), the two state tiles (each as large as ``x``)
and Q² fp32 per (row, group, slot).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv, next_pow2, num_sms, tuning_from_env
from samkern.checks import FLOAT_DTYPES, check_equal_lengths, check_same_device, check_tensor
from samkern.launch import fast_launch
from samkern.ops.ssd.fwd import _program_tiles, _times_causal_decay, _process_dt, _store_dt_cache, check_f32_buffer

__all__ = ["ssd_bwd", "dstate_walk", "walk_p_blocks", "dt_cache", "BWD_TUNING"]

# Launch overrides read by ``ssd_bwd`` (for tuning sweeps and tests). ``None`` = heuristic.
# block_p / num_warps / num_stages: the chunk kernel; heads_per_program: heads of one group a chunk
# program loops over; state_tiles_fp32: the dS walk's B dSᵀ / C S_inᵀ tiles in fp32 instead of the
# input dtype; scan_block_p / scan_warps / scan_stages: the dS kernel; block_nb / dbdc_warps /
# dbdc_stages / dbdc_split (head splits): the dB/dC kernel; factor_range: overrides ssd_bwd's
# ``factor_range`` (``_factor_range``; 0 = never); balanced: False = the row-blocked chunk grid
# even for equal-length sequences (``_balanced_grid``); chunk_programs: the balanced grid's programs;
# fuse_finish: the per-head sums in the dB/dC launch (``_fuse_finish_heads``): None = where they
# fit beside its programs, True = always without split dB/dC, False = never; dbdc_one_pb: False =
# the dB/dC kernel keeps its P-block loop even when P fits one block; cs_tile: True = the walk hands
# the chunk kernel the C S_inᵀ tile even without a gate (``cs_vector``); tile_dot: the chunk kernel's
# state tiles through an identity dot (True) or plain loads (False); None = ``tile_dot``'s rule;
# scan_maxnreg: a register cap for the dS walk (Triton's launch option; None = none); tok_red: the
# small gradients as per-token terms (True) or per-row sums (False); None = ``tok_red``'s rule.
BWD_TUNING: dict = {"block_p": None, "num_warps": None, "num_stages": None, "heads_per_program": None,
                    "state_tiles_fp32": None, "scan_block_p": None, "scan_warps": None, "scan_stages": None,
                    "block_nb": None, "dbdc_warps": None, "dbdc_stages": None, "dbdc_split": None,
                    "factor_range": None, "balanced": None, "chunk_programs": None, "fuse_finish": None,
                    "dbdc_one_pb": None, "cs_tile": None, "tile_dot": None,
                    "scan_maxnreg": None, "tok_red": None}
BWD_TUNING.update(tuning_from_env("SAMKERN_SSD_BWD_TUNING", BWD_TUNING))  # env override: JSON


def _pick_block_p(P: int) -> int:
    bp = BWD_TUNING.get("block_p")
    full = max(16, next_pow2(P))
    if bp is not None:
        return max(16, min(int(bp), full))
    # the per-head [Q, P] tiles (x, dy, dx, B dSᵀ, C S_inᵀ) grow with the P-block: at most 64 wide
    return min(64, full)


# The largest chunk decay |a_last| for which the factored transposed set is safe (``_factor_range``).
FACTOR_RANGE = 80.0


def _factor_range(requested: Optional[float], dtype: torch.dtype) -> float:
    """The chunk kernel can factor the transposed set's decays, exp(a_t − a_s) = exp(a_t − c) ·
    exp(c − a_s) with c = a_last / 2, for a head block whose every head decays by at most this
    much over the chunk (|a_last|): the factors then stay within exp(±40), far from fp32 / bf16
    overflow even after multiplying dy and summing 64 terms. ``FACTOR_RANGE`` (80) covers
    Mamba-2's initialisation (A in [-16, -1], dt ≤ 0.1: at most 102 over 64 tokens, most heads far
    less); blocks with a head beyond it take the per-head decay tile (``fwd._times_causal_decay``:
    an outer product up to |a_last| = 160, the [Q, Q] exp beyond), in a second launch.
    Measured (H100, ``dev-runs/s14-call7-*``, chunk kernel us, exp path / factored): B1 L16384
    (the sequence split) 1158 / 1017; 130m B32 L192 138 / 140, 2.7b B16 L192 216 / 222, B8 L640
    365 / 376. So only the sequence split asks for it. Returns the bound for the kernel, −1 = off
    (``BWD_TUNING["factor_range"]`` overrides the caller: 0 = never).

    Never for fp16 inputs: the factored operand ``exp(a_t − c) ∘ dy_t`` is rounded to the input
    dtype for the dot, and fp16 ends at 65504 = exp(11.1), so a chunk decaying by more than ~22
    made it inf and dx NaN (found in session 37: fp16 training rows long enough for the sequence
    split, ``test_bwd_factored_decay[fp16-*]``). bf16 and fp32 share fp32's exponent range."""
    v = BWD_TUNING.get("factor_range")
    v = (requested or 0.0) if v is None else float(v)
    if not 0.0 <= v <= FACTOR_RANGE:
        raise ValueError(f"factor_range must be in [0, {FACTOR_RANGE}], got {v!r}")
    return v if v > 0 and dtype != torch.float16 else -1.0


def _tuned_block(name: str, default: int, cap: int) -> int:
    """A block size from ``BWD_TUNING`` (or ``default``), capped at ``cap``; Triton needs powers of
    two for ``tl.arange``, and dots need at least 16."""
    v = BWD_TUNING.get(name)
    v = default if v is None else v
    if not isinstance(v, int) or v < 16 or v & (v - 1):
        raise ValueError(f"BWD_TUNING[{name!r}] must be a power of two >= 16, got {v!r}")
    return min(v, cap)


def _busy_rows(T: int, nseq: int, n_rows: int, block_q: int) -> int:
    """Chunk rows that hold tokens: ``nseq · ceil(L / Q)`` when the T tokens can be equal rows of
    L = T / nseq (a plain batch, the training case; a guess for varlen packs of that total), else
    all ``n_rows`` (no host sync to learn the sequence lengths)."""
    if T % nseq == 0:
        return min(n_rows, nseq * cdiv(T // nseq, block_q))
    return n_rows


def _pick_heads_per_program(hpg: int, busy_programs: int, device: torch.device) -> int:
    """Heads of one group a chunk program loops over. The chunk kernel runs one program per SM
    (255 registers × 8 warps) and its programs take about equally long, so the time is about
    ``waves × (heads per program + c)``, ``waves = ceil(programs / SMs)`` and c ≈ 1 head's worth of
    per-program work (row search, C·Bᵀ, the dCB store). The head-block count minimising that is
    taken (ties: fewer programs). The earlier rule, ~3 programs per SM, left a last wave 40–55 %
    full at 2.7b B16 L192 and B8 L640 (Nsight Compute, ``dev-runs/s7-call1-*``)."""
    hb = BWD_TUNING.get("heads_per_program")
    if hb is not None:
        return max(1, min(int(hb), hpg))
    if device.type != "cuda":
        return max(1, hpg // 2)  # CPU/interpreter: exercise several head-blocks and a ragged tail
    return _min_wave_heads(hpg, busy_programs, num_sms(device))


@functools.lru_cache(maxsize=256)
def _min_wave_heads(hpg: int, busy_programs: int, sms: int) -> int:
    # cached: a loop over up to H head-block counts is host time an eager step pays on every call
    best = None
    for nhb in range(1, hpg + 1):
        hb = cdiv(hpg, nhb)
        if cdiv(hpg, hb) != nhb:
            continue  # the same head-block size as a smaller nhb
        cost = cdiv(max(1, busy_programs) * nhb, sms) * (hb + 1)
        if best is None or cost < best[0]:
            best = (cost, hb)
    return best[1]


def _balanced_grid(W: int, HPG: int, NPB: int, device: torch.device) -> Optional[Tuple[int, int, int, int]]:
    """(W, NP, NSEG, MAX_SEGS) of the chunk kernel's balanced grid, or None where it does not apply:
    its W (busy row, group, head) items over NP programs per P-block, the most programs whose item
    ranges one (row, group) of HPG heads can meet (its dCB slots), and the most (row, group)
    segments one program's range can meet (the kernel unrolls that many, so more than
    ``MAX_BALANCED_SEGS`` leave the row-blocked grid in place: many heads per program, where that
    grid's last wave matters least). The kernel runs one program per SM (255 registers × 8 warps),
    so NP = SMs / NPB (one wave). The row-blocked grid (``_pick_heads_per_program``) splits a row's
    heads only into equal head blocks: at 130m B32 L192 (96 busy rows of 24 heads, 132 SMs) its
    best is 384 programs of 6 heads in three waves, 18 heads per SM plus three programs'
    fixed work; here 132 programs take 17–18 heads each, plus one or two segments' fixed work.
    ``BWD_TUNING["chunk_programs"]`` overrides NP (tests: segments that split rows anywhere)."""
    np_ = BWD_TUNING.get("chunk_programs")
    if np_ is None:
        np_ = max(1, num_sms(device) // NPB) if device.type == "cuda" else 5
    np_ = max(1, min(int(np_), W))
    m_max = cdiv(W, np_)
    max_segs = (m_max + HPG - 2) // HPG + 1
    if max_segs > MAX_BALANCED_SEGS:
        return None
    return W, np_, (HPG - 1) // (W // np_) + 2, max_segs


# the most (row, group) segments a balanced chunk program may span (unrolled copies of its head loop)
MAX_BALANCED_SEGS = 3


def _pick_dbdc_split(hpg: int, programs: int, wide: bool, device: torch.device) -> int:
    """Head splits of the dB/dC kernel. One program per (chunk, group, N-block) loops over all the
    group's heads; with few chunks that leaves SMs idle, so the narrow-block form (the one taken
    when chunks are few) splits the heads until every SM has a program, each split keeping at least
    8 heads. Measured (H100, dev-runs/s12-call5, dB/dC kernel us, splits 1 / 2 / 3 / 4 / 8):
    2.7b B16 L192 (narrow, 96 programs) 155 / 109 / 129 / 120 / 121; the wide form gains nothing
    (130m B32 L192 67 / 74 / 76 / 70 / 79, B8 L640 186 / 207 / - / 176 / 169, B1 L16384
    442 / 457 / - / 484 / 517: the partial sums' traffic and their reduction eat the gain).
    ``BWD_TUNING["dbdc_split"]`` overrides."""
    v = BWD_TUNING.get("dbdc_split")
    if v is not None:
        return max(1, min(int(v), hpg))
    if device.type != "cuda" or wide:
        return 1
    return max(1, min(cdiv(num_sms(device), max(1, programs)), hpg // 8))


def _fuse_finish_heads(nsplit: int, programs: int, H: int, device: torch.device) -> bool:
    """Whether the per-head dA / ddt_bias / dD sums run as ``H`` extra rows of the dB/dC grid
    (``FUSE_HEADS``) instead of in the finishing kernel: only without split dB/dC (the finishing
    kernel runs then anyway), and on the GPU only where the head programs fit beside the dB/dC
    kernel's ``programs`` busy programs in one wave (one program per SM in its wide form).
    Measured (H100, graph fwd+bwd, dev-runs/s20-call1): 130m B32 L192 (96 + 24 programs) 317.7 /
    315.4 -> 313.8 / 312.4 us; 2.7b B8 L640 (80 + 80) 874.2 / 882.2 -> 875.5 / 884.0 (the dB/dC
    kernel 6-8 us longer, kept unfused). ``BWD_TUNING["fuse_finish"]``: True / 1 always (without
    split), False / 0 never."""
    v = BWD_TUNING.get("fuse_finish")
    if nsplit > 1 or v is False or v == 0:
        return False
    if v is True or v == 1 or device.type != "cuda":
        return True
    return programs + H <= num_sms(device)


@triton.jit
def _load_dt_cache(dtc_ptr, h, T, HT, tok, mq, last):
    """(processed dt, in-chunk log-decay a, a_last) of one chunk of head ``h`` from the dt cache
    ((3, H, T) fp32, planes a | dt | chain; ``fwd._store_dt_cache``; the chunk kernel loads the
    chain plane itself). ``last`` is the chunk's last token. Positions past the sequence end get
    dt = 0 and a = a_last (no decay), as the forward had them: every exp(a_t − a_s) there is
    exp(0), never an overflow."""
    base = dtc_ptr + h.to(tl.int64) * T
    a_last = tl.load(base + last)
    a = tl.where(mq, tl.load(base + tok, mask=mq, other=0.0), a_last)
    dtv = tl.load(base + HT + tok, mask=mq, other=0.0)
    return dtv, a, a_last


@triton.jit
def _load_dy(dout_ptr, z_ptr, h, tok, offs_p, mask, s_dout_t, s_dout_h, s_z_t, s_z_h, HAS_Z: tl.constexpr):
    """Gradient of the pre-gate output for head h's [Q, P-block] tile, fp32:
    ``dy = dout · silu(z)``, or ``dout`` without a gate."""
    dy = tl.load(dout_ptr + tok[:, None] * s_dout_t + h * s_dout_h + offs_p[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + tok[:, None] * s_z_t + h * s_z_h + offs_p[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = dy * zz * tl.sigmoid(zz)
    return dy


@triton.jit
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit
def _add3(a0, b0, c0, a1, b1, c1):
    return a0 + a1, b0 + b1, c0 + c1


@triton.jit
def _may_be_nonzero(start, end, cstart, HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(dS leaving the chunk at ``cstart`` may be nonzero, the state entering it may be nonzero):
    the dS walk stores neither where it is known to be zero (module docstring, "Known-zero
    states"), so the chunk and dB/dC kernels must not read them there."""
    return (cstart + BLOCK_Q < end) | HAS_DFINAL, (cstart > start) | HAS_INIT


@triton.jit
def _walk_chunk(
    ci, n_chunks, dS, start, end, row0, state_off, mpn, offs_q, offs_p, mp, offs_n, mn, g, pid_h, pid_p,
    dout_ptr, z_ptr, dtc_ptr, B_ptr, C_ptr, cs_ptr, ds_ptr, bds_ptr, csin_ptr, sds_ptr,
    T, HT, H, P, HPN, NPBW, s_dout_t, s_dout_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g,
    HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr, WRITE_DS: tl.constexpr,
    PREC: tl.constexpr, BLOCK_Q: tl.constexpr,
    DS_ZERO: tl.constexpr, SIN_ZERO: tl.constexpr, UPDATE: tl.constexpr, CS_VEC: tl.constexpr,
):
    """Step ``ci`` of the reverse dS walk (chunk ``c = n_chunks - 1 - ci`` of the sequence): with
    ``WRITE_DS`` stores dS leaving the chunk, ``B dSᵀ``, ``C S_inᵀ`` and ``Σ dS ∘ S_in``; returns dS
    entering it (``UPDATE``; else dS unchanged). Peeled steps (the kernel's comment) know at compile
    time that dS leaving the chunk is zero (``DS_ZERO``: nothing of it stored, ``Σ dS ∘ S_in`` = 0)
    or that no state enters it (``SIN_ZERO``), and skip those loads, dots and stores. ``CS_VEC``
    (no gate): instead of the ``C S_inᵀ`` tile, the only thing the chunk kernel takes from it, the
    row sums ``Σ_p dy_tp (C S_inᵀ)_tp`` of this P-block, into ``csin_ptr`` as (walk P-blocks, T, H)
    fp32."""
    in_ty = C_ptr.dtype.element_ty
    c = n_chunks - 1 - ci
    tok = start + c * BLOCK_Q + offs_q
    mq = tok < end
    mqp = mq[:, None] & mp[None, :]
    mqn = mq[:, None] & mn[None, :]
    if UPDATE or not SIN_ZERO:
        Cm = tl.load(C_ptr + tok[:, None] * s_C_t + g * s_C_g + offs_n[None, :], mask=mqn, other=0.0)
    # (CS_VEC: the row sums need dy, which the update loads; every step that has a state entering
    # it also updates, see the kernel's peeled steps)
    VEC_NOW: tl.constexpr = WRITE_DS and CS_VEC and not SIN_ZERO and UPDATE
    if WRITE_DS:  # off in the sequence split's first pass, which needs only d initial_states
        row_off = (row0 + c) * HPN + state_off
        # known zeros (module docstring, "Known-zero states"): dS leaving a sequence's last chunk
        # without d final_states is not stored, the state entering its first chunk without initial
        # states not read (in the loop by masks, not branches: the loop stays branch-free; the
        # peeled steps drop them at compile time, the constexpr ifs below)
        if not DS_ZERO:
            tl.store(ds_ptr + row_off, dS.to(ds_ptr.dtype.element_ty), mask=mpn & ((ci > 0) | HAS_DFINAL))
        # the chunk kernel's state terms, from dS leaving this chunk and the state entering it
        # (both rounded to the input dtype as dot operands, as the stored copies are). dS is the
        # left operand as it is: no tl.trans of a dot result (Triton 3.6 Hopper miscompile)
        if not DS_ZERO:
            Bm = tl.load(B_ptr + tok[:, None] * s_B_t + g * s_B_g + offs_n[None, :], mask=mqn, other=0.0)
        if not SIN_ZERO:
            S_in = tl.load(cs_ptr + row_off, mask=mpn & ((c > 0) | HAS_INIT), other=0.0)
        if DS_ZERO or SIN_ZERO:
            tl.store(sds_ptr + ((row0 + c) * H + pid_h) * NPBW + pid_p, 0.0)
        else:
            tl.store(sds_ptr + ((row0 + c) * H + pid_h) * NPBW + pid_p, tl.sum(tl.sum(dS * S_in.to(tl.float32), 1), 0))
        if not DS_ZERO:
            bds_t = tl.dot(dS.to(in_ty), tl.trans(Bm), input_precision=PREC)  # [P, Q] = (B dSᵀ)ᵀ
        if not SIN_ZERO:
            cs_t = tl.dot(S_in.to(in_ty), tl.trans(Cm), input_precision=PREC)  # [P, Q] = (C S_inᵀ)ᵀ
        tile = tok[None, :] * (H * P) + pid_h * P + offs_p[:, None]
        mpq = mp[:, None] & mq[None, :]
        if not DS_ZERO:
            tl.store(bds_ptr + tile, bds_t.to(bds_ptr.dtype.element_ty), mask=mpq & ((ci > 0) | HAS_DFINAL))
        if not SIN_ZERO and not CS_VEC:
            tl.store(csin_ptr + tile, cs_t.to(csin_ptr.dtype.element_ty), mask=mpq & ((c > 0) | HAS_INIT))
    if UPDATE:
        last = tl.minimum(start + c * BLOCK_Q + BLOCK_Q, end) - 1
        _dt, a, a_last = _load_dt_cache(dtc_ptr, pid_h, T, HT, tok, mq, last)
        dy = _load_dy(dout_ptr, z_ptr, pid_h, tok, offs_p, mqp, s_dout_t, s_dout_h, s_z_t, s_z_h, HAS_Z)
        if VEC_NOW:
            # (cs_t is only multiplied here, never fed to another dot: no miscompile pattern)
            dycs = tl.sum(tl.trans(dy) * cs_t, axis=0)  # [Q]
            tl.store(csin_ptr + (pid_p.to(tl.int64) * T + tok) * H + pid_h, dycs, mask=mq & ((c > 0) | HAS_INIT))
        # (exp(a) ∘ dy)ᵀ C: the transposed operand is a loaded value, not a dot result
        if DS_ZERO:
            dS = tl.dot(tl.trans((dy * tl.exp(a)[:, None]).to(in_ty)), Cm, input_precision=PREC)
        else:
            dS = tl.exp(a_last) * dS + tl.dot(tl.trans((dy * tl.exp(a)[:, None]).to(in_ty)), Cm,
                                              input_precision=PREC)
    return dS


@triton.jit
def _ssd_bwd_dstate_kernel(
    dout_ptr, z_ptr, dtc_ptr, B_ptr, C_ptr, cu_ptr, init_ptr, dfin_ptr, cs_ptr,
    ds_ptr, dinit_ptr, bds_ptr, csin_ptr, sds_ptr,
    T, HT, H, P, N, HPG, HPN, NPBW,
    s_dout_t, s_dout_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g,
    HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_DFINAL: tl.constexpr, WRITE_DS: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, CS_VEC: tl.constexpr,
):
    """The reverse dS walk of one (sequence, head, P-block). With ``WRITE_DS`` it also stores, per
    chunk, everything the chunk kernel needs from the states (so that kernel reads two [Q, P]
    tiles instead of streaming two [P, N] states per head): ``B dSᵀ`` and ``C S_inᵀ`` as (T, H, P)
    tiles (``CS_VEC``, no gate: the latter's row sums against dy instead, ``cs_vector``), and the
    partial ``Σ dS ∘ S_in`` of this P-block."""
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_p = tl.program_id(2)
    in_ty = C_ptr.dtype.element_ty
    start, end, offs_q, offs_p, offs_n, mp, mn = _program_tiles(cu_ptr, pid_s, pid_p, P, N, BLOCK_Q, BLOCK_P, BLOCK_N)
    n_chunks = ((end - start + BLOCK_Q - 1) // BLOCK_Q).to(tl.int32)
    g = pid_h // HPG
    mpn = mp[:, None] & mn[None, :]

    state_off = pid_h.to(tl.int64) * P * N + offs_p[:, None] * N + offs_n[None, :]
    if HAS_DFINAL:
        dS = tl.load(dfin_ptr + pid_s.to(tl.int64) * HPN + state_off, mask=mpn, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    row0 = start // BLOCK_Q + pid_s

    # The known-zero ends (module docstring, "Known-zero states") are peeled off the loop, so that
    # the loop itself stays branch-free (a branch inside it stops Triton's pipeliner): without
    # d final_states the first chunk walked (the sequence's last) starts from dS = 0, so it has no
    # dS / B dSᵀ to store; without initial states the last chunk walked (the first) has no state
    # entering it (no C S_inᵀ) and its dS update would only feed d initial_states.
    # (H100, one process: walk 53.4 -> 48.6 us at 130m B32 L192, 84.3 -> 78.2 at 2.7b B16 L192,
    # 167.4 -> 159.3 at B8 L640; graph fwd+bwd 329.6 -> 325.1, 528.8 -> 515.1, 923.0 -> 911.1:
    # dev-runs/s16-call1. Peeling the forward's ends and specialising the dB/dC head loop were
    # measured there too, slower or neutral, and dropped.)
    PEEL_FIRST: tl.constexpr = WRITE_DS and not HAS_DFINAL
    PEEL_LAST: tl.constexpr = WRITE_DS and not HAS_INIT
    ci0 = 0
    if PEEL_FIRST:
        dS = _walk_chunk(
            0, n_chunks, dS, start, end, row0, state_off, mpn, offs_q, offs_p, mp, offs_n, mn, g, pid_h, pid_p,
            dout_ptr, z_ptr, dtc_ptr, B_ptr, C_ptr, cs_ptr, ds_ptr, bds_ptr, csin_ptr, sds_ptr,
            T, HT, H, P, HPN, NPBW, s_dout_t, s_dout_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g,
            HAS_Z, HAS_INIT, HAS_DFINAL, WRITE_DS, PREC, BLOCK_Q, True, False, True, CS_VEC)
        ci0 = 1
    ci_end = n_chunks
    if PEEL_LAST:
        ci_end = tl.maximum(n_chunks - 1, ci0)
    for ci in range(ci0, ci_end):
        dS = _walk_chunk(
            ci, n_chunks, dS, start, end, row0, state_off, mpn, offs_q, offs_p, mp, offs_n, mn, g, pid_h, pid_p,
            dout_ptr, z_ptr, dtc_ptr, B_ptr, C_ptr, cs_ptr, ds_ptr, bds_ptr, csin_ptr, sds_ptr,
            T, HT, H, P, HPN, NPBW, s_dout_t, s_dout_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g,
            HAS_Z, HAS_INIT, HAS_DFINAL, WRITE_DS, PREC, BLOCK_Q, False, False, True, CS_VEC)
    if PEEL_LAST:
        if ci_end < n_chunks:  # the sequence's first chunk is still to walk (not the peeled first one)
            dS = _walk_chunk(
                n_chunks - 1, n_chunks, dS, start, end, row0, state_off, mpn, offs_q, offs_p, mp, offs_n, mn, g,
                pid_h, pid_p, dout_ptr, z_ptr, dtc_ptr, B_ptr, C_ptr, cs_ptr, ds_ptr, bds_ptr, csin_ptr, sds_ptr,
                T, HT, H, P, HPN, NPBW, s_dout_t, s_dout_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g,
                HAS_Z, HAS_INIT, HAS_DFINAL, WRITE_DS, PREC, BLOCK_Q, False, True, False, CS_VEC)

    if HAS_INIT:
        idx = tl.load(init_ptr + pid_s)
        # a scalar branch, not a mixed scalar/block mask: Triton 3.9's interpreter rejects the latter
        if idx >= 0:
            tl.store(dinit_ptr + idx.to(tl.int64) * HPN + state_off, dS, mask=mpn)


_DSTATE = fast_launch(_ssd_bwd_dstate_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _row_chunk(cu_ptr, row, NSEQ, n_search, BLOCK_Q: tl.constexpr):
    """Token range of chunk-state row ``row``: (sequence start, sequence end, chunk start). The
    owner is the last sequence i with cu[i] // Q + i <= row (strictly increasing in i, and
    row < T // Q + nseq, its value at i = nseq): a binary search of ``n_search`` steps. Rows past
    a sequence's last chunk get chunk start >= end (no tokens)."""
    lo = tl.zeros([], dtype=tl.int32)
    hi = lo + NSEQ
    for _ in range(0, n_search):
        mid = (lo + hi) // 2
        go = tl.load(cu_ptr + mid) // BLOCK_Q + mid <= row
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    start = tl.load(cu_ptr + lo).to(tl.int64)  # int64: token × stride exceeds 2^31 at ~1M tokens
    end = tl.load(cu_ptr + lo + 1).to(tl.int64)
    return start, end, start + (row - start // BLOCK_Q - lo) * BLOCK_Q


def _n_search(nseq: int) -> int:
    # binary-search steps of ``_row_chunk`` over nseq + 1 sequence offsets
    return max(1, (nseq - 1).bit_length() + 1)


@triton.jit
def _equal_row(b, SEQ_L, CPS):
    """(sequence, its chunk k, sequence start) of busy row ``b`` (the rows that hold tokens, in
    order) when every sequence has SEQ_L tokens in CPS chunks: no search over ``cu``; chunk k
    starts at ``start + k · BLOCK_Q``."""
    seq = b // CPS
    k = b - seq * CPS
    return seq, k, seq.to(tl.int64) * SEQ_L


@triton.jit
def _ssd_dt_cache_kernel(
    dt_ptr, A_ptr, dtb_ptr, cu_ptr, dtc_ptr, T, HT, NSEQ, n_search, s_dt_t, s_dt_h, dt_min, dt_max, SEQ_L, CPS,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, BLOCK_Q: tl.constexpr, EQUAL: tl.constexpr = False,
):
    """The dt cache of one (chunk row, head), as the forward stores it (``fwd._store_dt_cache``).
    EQUAL (every sequence SEQ_L tokens, CPS chunks): program ``row`` is chunk ``row % CPS`` of
    sequence ``row // CPS``, no binary search over ``cu``: the search's dependent loads were most
    of this small kernel's latency, which is its whole time (it runs before the forward)."""
    row = tl.program_id(0)
    h = tl.program_id(1)
    if EQUAL:
        _seq, k, start = _equal_row(row, SEQ_L, CPS)
        end = start + SEQ_L
        cstart = start + k * BLOCK_Q
    else:
        start, end, cstart = _row_chunk(cu_ptr, row, NSEQ, n_search, BLOCK_Q)
    if cstart < end:
        tok = cstart + tl.arange(0, BLOCK_Q)
        mq = tok < end
        v = tl.load(dt_ptr + tok * s_dt_t + h * s_dt_h, mask=mq, other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            v += tl.load(dtb_ptr + h).to(tl.float32)
        dtv, a, chain = _process_dt(v, tl.load(A_ptr + h).to(tl.float32), mq, dt_min, dt_max, DT_SOFTPLUS, True)
        _store_dt_cache(dtc_ptr, h, T, HT, tok, mq, a, dtv, chain)


_DT_CACHE = fast_launch(_ssd_dt_cache_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _chunk_head(
    dout_ptr, x_ptr, dtc_ptr, A_ptr, D_ptr, z_ptr, bds_ptr, csin_ptr, sds_ptr,
    dx_ptr, dz_ptr, ddt_ptr, red_ptr,
    h, row, red_row, pid_p, tok, mq, last, offs_p, mp, mqp, causal, causal_t, is_last, need_ds, need_sin,
    CB, CBT, dCB_sum, eye,
    T, HT, H, P, NPB, NPBW, RED_D, RED_W,
    s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_D_h,
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr, FACTORED: tl.constexpr,
    PREC: tl.constexpr, CS_VEC: tl.constexpr, TILE_DOT: tl.constexpr, BLOCK_PQ: tl.constexpr,
    TOK_RED: tl.constexpr,
):
    """One head of the chunk kernel's loop: every gradient of head ``h`` in this chunk except
    dB/dC; returns ``dCB_sum`` with this head's ``dM ∘ L ∘ dt_s`` added. ``row`` is the chunk's
    row (of the walk's Σ dS ∘ S_in partials), ``red_row`` its row of the partials buffer ``red``.
    ``BLOCK_PQ``: the P-block equals the chunk (same-shape [Q, P] and [Q, Q] tiles). ``TOK_RED``:
    ``red`` takes per-token vectors, not per-row sums (``tok_red``). ``FACTORED``: ``CBT`` is
    ``(C Bᵀ)ᵀ`` already masked to s ≤ t and in the input dtype, and the transposed set uses the
    factored decay (below); otherwise ``CBT`` is the fp32 ``(C Bᵀ)ᵀ``."""
    in_ty = x_ptr.dtype.element_ty
    dtv, a, a_last = _load_dt_cache(dtc_ptr, h, T, HT, tok, mq, last)
    chain = tl.load(dtc_ptr + h.to(tl.int64) * T + HT + HT + tok, mask=mq, other=0.0)  # HT + HT: no int32 2·HT
    A_h = tl.load(A_ptr + h).to(tl.float32)
    decay = tl.exp(a)  # exp(a_t)
    to_end = tl.exp(a_last - a)  # exp(a_last − a_s)
    w = to_end * dtv

    # the state terms, from the dS walk's tiles (no [P, N] state is read here):
    # BdS = B dSᵀ, CS = C S_inᵀ (both [Q, P]); with CS_VEC (no gate) only the walk's row sums
    # dyCS_t = Σ_p dy_tp CS_tp per walk P-block, the one use of CS here, summed once per head (by
    # P-block 0: da is linear in them and the P-blocks' ddt partials are summed afterwards)
    tile = tok[:, None] * (H * P) + h * P + offs_p[None, :]
    BdS = tl.load(bds_ptr + tile, mask=mqp & need_ds, other=0.0)
    # TILE_DOT: I·tile, exact (one nonzero product per output, fp32 accumulation), makes the tile
    # a dot operand, which is what Triton 3.6's pipeliner prefetches (cp.async over the head loop's
    # stages); a plain load was waited on inside every head, by its layout conversion right after
    # it (README "The state tiles as dot operands")
    BdS = tl.dot(eye, BdS) if TILE_DOT else BdS.to(tl.float32)
    if not CS_VEC:
        CS = tl.load(csin_ptr + tile, mask=mqp & need_sin, other=0.0)
        CS = tl.dot(eye, CS) if TILE_DOT else CS.to(tl.float32)

    x = tl.load(x_ptr + tok[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=mqp, other=0.0)
    dout = tl.load(dout_ptr + tok[:, None] * s_dout_t + h * s_dout_h + offs_p[None, :], mask=mqp,
                   other=0.0)
    # [Q, Q] tiles are the register hogs: each is formed right before its uses, in an
    # order that ends the transposed set (MT) before the direct set (L, dM) starts
    # ---- gate
    if HAS_D:
        if D_PER_CHANNEL:
            Dv = tl.load(D_ptr + h * s_D_h + offs_p, mask=mp, other=0.0).to(tl.float32)[None, :]
        else:
            Dv = tl.load(D_ptr + h * s_D_h).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + tok[:, None] * s_z_t + h * s_z_h + offs_p[None, :], mask=mqp,
                     other=0.0).to(tl.float32)
        M = _times_causal_decay(CB * dtv[None, :], a, a_last, causal, False)
        y = tl.dot(M.to(in_ty), x, input_precision=PREC) + decay[:, None] * CS
        if HAS_D:
            y += Dv * x.to(tl.float32)
        sig = tl.sigmoid(zz)
        dout32 = dout.to(tl.float32)
        dz = dout32 * y * sig * (1.0 + zz * (1.0 - sig))
        tl.store(dz_ptr + tok[:, None] * (H * P) + h * P + offs_p[None, :], dz.to(dz_ptr.dtype.element_ty),
                 mask=mqp)
        dy = dout32 * zz * sig
    else:
        dy = dout.to(tl.float32)
    dy_lp = dy.to(in_ty)

    # ---- transposed set: dx = Mᵀ dy + D dy + w ∘ (B dSᵀ)
    if FACTORED:
        # exp(a_t − a_s) = exp(a_t − c) · exp(c − a_s) with c = a_last / 2: every a_t lies in
        # [a_last, 0], so both factors stay within exp(±|a_last| / 2) (the caller checks
        # |a_last| ≤ FACTOR_RANGE); Mᵀ dy = (exp(c − a) dt) ∘ ((C Bᵀ ∘ causal)ᵀ (exp(a − c) ∘ dy)),
        # where the masked (C Bᵀ)ᵀ is the caller's, shared by all heads: no [Q, Q] exp here
        c_mid = 0.5 * a_last
        udy = (tl.exp(a - c_mid)[:, None] * dy).to(in_ty)
        dx = (tl.exp(c_mid - a) * dtv)[:, None] * tl.dot(CBT, udy, input_precision=PREC) + w[:, None] * BdS
    else:
        MT = _times_causal_decay(CBT * dtv[:, None], a, a_last, causal_t, True)  # [s, t]
        dx = tl.dot(MT.to(in_ty), dy_lp, input_precision=PREC) + w[:, None] * BdS
    if HAS_D:
        dx += Dv * dy
        if D_PER_CHANNEL:
            dD = tl.sum(dy * x.to(tl.float32), axis=0)
    tl.store(dx_ptr + tok[:, None] * (H * P) + h * P + offs_p[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=mqp)

    # ---- direct set: dM = dy xᵀ, the dt / decay gradients through M, Σ dCB
    # L_ts = exp(a_t − a_s) on s ≤ t, formed before the dot (a dot result used inside the helper's
    # branch fails Triton 3.6's pipeliner pass)
    L = _times_causal_decay(1.0, a, a_last, causal, False)
    dM = tl.dot(dy_lp, tl.trans(x), input_precision=PREC)  # [t, s]
    dML = dM * L
    GL = dML * CB  # dM_ts·CB_ts·L_ts = ∂/∂dt_s through M (zero above the diagonal)
    # R = GL ∘ dt_s = dM ∘ M; its column sums are dt_s·ddt_dir_s: one cross-warp reduction
    # of a [Q, Q] tile fewer (column sums run across warps, row sums within one)
    ddt_dir = tl.sum(GL, axis=0)
    # Row sums of [Q, P] tiles in one reduction: u_s = Σ_{p,n} x_sp B_sn dS_pn and
    # Σ_n C_tn (dy S_in)_tn = Σ_p dy_tp (C S_inᵀ)_tp. A per-head D needs only Σ_{t,p} dy_tp x_tp.
    # Without the gate (and with dout in x's dtype, as autograd passes it) dy equals its
    # input-dtype copy, so Σ_p dy_tp x_tp is dM's diagonal, summed in da's row reduction; otherwise
    # (dy rounded for the dots), a row sum of dy ∘ x. The token sum
    # joins the last reduction below. This replaced a cross-warp column sum of dy ∘ x per head:
    # offline 1797 -> 1678 SASS instructions per head, spills 232 -> 132 bytes; chunk kernel
    # 118 -> 100 us at 130m B32 L192, 308 -> 266 at B8 L640 (H100, dev-runs/s22-call4)
    # Without the gate, where the [Q, P] tile has the [Q, Q] tiles' shape (P-block = Q), u joins
    # the [Q, Q] row sums below in one tl.reduce: its own reduction gave the vectors a second
    # layout, which Triton rematerialised (the dt-cache rows loaded again, spills): offline SASS per
    # head 1705 -> 1437 instructions, 24 -> 14 global loads, 37 -> 32 barriers, no spills; chunk
    # kernel 253 -> 220 us at B8 L640 (H100, dev-runs/s37-call4)
    xf = x.to(tl.float32)
    U_JOINS: tl.constexpr = CS_VEC and BLOCK_PQ
    if CS_VEC:
        if not U_JOINS:
            u = tl.sum(xf * BdS, axis=1)
        m_vec = mq & need_sin & (pid_p == 0)
        dyCS = tl.load(csin_ptr + tok * H + h, mask=m_vec, other=0.0)
        for k in range(1, NPBW):
            dyCS += tl.load(csin_ptr + (k * T + tok) * H + h, mask=m_vec, other=0.0)
    else:
        u, dyCS = tl.reduce((xf * BdS, dy * CS), 1, _add2)
    D_ROWS: tl.constexpr = HAS_D and not D_PER_CHANNEL
    DIAG_D: tl.constexpr = D_ROWS and not HAS_Z and dout_ptr.dtype.element_ty == in_ty
    gl_dt = GL * dtv[None, :]
    if D_ROWS:  # the rows of Σ_{t,p} dy_tp x_tp: dM's diagonal where dy is its input-dtype copy
        d_src = tl.where(causal & causal_t, dM, 0.0) if DIAG_D else dy * xf
    if D_ROWS and U_JOINS:
        da_row, dD_rows, u = tl.reduce((gl_dt, d_src, xf * BdS), 1, _add3)
    elif DIAG_D:
        da_row, dD_rows = tl.reduce((gl_dt, d_src), 1, _add2)
    elif U_JOINS:
        da_row, u = tl.reduce((gl_dt, xf * BdS), 1, _add2)
    else:  # (two sums with a gate, as before the joins: the gated kernel compiles as it did)
        da_row = tl.sum(gl_dt, axis=1)
        if D_ROWS:
            dD_rows = tl.sum(d_src, axis=1)
    da = da_row - ddt_dir * dtv + decay * dyCS
    dCB_sum += dML * dtv[None, :]

    # ---- state path's dt / decay terms
    ddt_dir += u * to_end
    uw = u * w
    da -= uw
    da_last = tl.sum(uw, axis=0)
    if pid_p == 0:  # Σ dS ∘ S_in over the whole head (the walk's P-block partials), counted once
        sds_row = sds_ptr + (row.to(tl.int64) * H + h) * NPBW
        sds = tl.load(sds_row)
        for k in range(1, NPBW):  # scalar loads: a vector sum here was a cross-warp reduction
            sds += tl.load(sds_row + k)
        da_last += tl.exp(a_last) * sds
    da += tl.where(is_last, da_last, 0.0)

    # ---- cumsum backward, then chain through clamp / softplus / bias (the forward's
    # d dt / d(dt_raw + dt_bias), zero at masked positions and where the clamp is active)
    rc = tl.cumsum(da, axis=0, reverse=True)
    ddt_pre = (ddt_dir + A_h * rc) * chain
    tl.store(ddt_ptr + pid_p.to(tl.int64) * T * H + tok * H + h, ddt_pre, mask=mq)

    if TOK_RED:
        # the small gradients' per-token terms, head-major (NPB, 3, H, T) = [dA | ddt_bias | dD]
        # (dD only with D): three contiguous vector stores instead of a cross-warp reduction of
        # them per head, which cost 7 of the loop's barriers; ``_finish_head`` sums them over P-blocks
        # and tokens (``tok_red``: H100 chunk kernel 219-225 -> 206-212 us at B8 L640, s37-call5)
        vec = red_ptr + (pid_p.to(tl.int64) * 3 * H + h) * T + tok
        tl.store(vec, dtv * rc, mask=mq)
        tl.store(vec + HT, ddt_pre, mask=mq)
        if HAS_D:
            tl.store(vec + HT + HT, dD_rows, mask=mq)  # (HT + HT: no int32 2·HT)
    else:
        # small per-(row, head) partials: [dD (RED_D: P per channel, NPB per head, 0 without D) |
        # dA (NPB) | ddt_bias (NPB)]
        red_base = (red_row.to(tl.int64) * H + h) * RED_W
        if HAS_D and not D_PER_CHANNEL:
            dA_part, dbias_part, dD_part = tl.reduce((dtv * rc, ddt_pre, dD_rows), 0, _add3)
            tl.store(red_ptr + red_base + pid_p, dD_part)
        else:
            dA_part, dbias_part = tl.reduce((dtv * rc, ddt_pre), 0, _add2)
            if HAS_D:
                tl.store(red_ptr + red_base + offs_p, dD, mask=mp)
        tl.store(red_ptr + red_base + RED_D + pid_p, dA_part)
        tl.store(red_ptr + red_base + RED_D + NPB + pid_p, dbias_part)
    return dCB_sum


@triton.jit
def _chunk_heads(
    dout_ptr, x_ptr, dtc_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bds_ptr, csin_ptr, sds_ptr,
    dx_ptr, dz_ptr, ddt_ptr, dcb_ptr, red_ptr,
    row, red_row, g, j_lo, j_hi, slot, pid_p, start, end, cstart,
    T, HT, H, P, N, HPG, NPB, NPBW, RED_D, RED_W,
    s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g, s_D_h,
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_DFINAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, FACTORED: tl.constexpr,
    CS_VEC: tl.constexpr, TILE_DOT: tl.constexpr, TOK_RED: tl.constexpr,
):
    """Heads ``j_lo .. j_hi - 1`` of group ``g`` in the chunk of row ``row`` (tokens ``cstart ..``
    of the sequence ``start .. end``): ``C Bᵀ`` once, then ``_chunk_head`` per head; their summed
    ``dCB`` goes to dCB slot ``slot``, the small partials to row ``red_row`` of ``red``."""
    in_ty = x_ptr.dtype.element_ty
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp = offs_p < P
    mn = offs_n < N
    causal = offs_q[:, None] >= offs_q[None, :]  # [t, s]: s ≤ t
    causal_t = offs_q[None, :] >= offs_q[:, None]  # [s, t]: s ≤ t
    is_last = offs_q == BLOCK_Q - 1
    tok = cstart + offs_q  # int64 [Q]
    mq = tok < end
    last = tl.minimum(cstart + BLOCK_Q, end) - 1
    mqp = mq[:, None] & mp[None, :]
    mqn = mq[:, None] & mn[None, :]

    # C·Bᵀ is shared by the heads of the group: once per call. It and its transpose both come
    # from loaded operands (never tl.trans of a dot result: Triton 3.6 miscompiles that on
    # Hopper when the result is cast and fed to another dot)
    Bm = tl.load(B_ptr + tok[:, None] * s_B_t + g * s_B_g + offs_n[None, :], mask=mqn, other=0.0)
    Cm = tl.load(C_ptr + tok[:, None] * s_C_t + g * s_C_g + offs_n[None, :], mask=mqn, other=0.0)
    CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)  # [t, s]
    CBT = tl.dot(Bm, tl.trans(Cm), input_precision=PREC)  # [s, t]
    if FACTORED:  # the transposed set's dot operand, masked and rounded once for all heads
        CBT = tl.where(causal_t, CBT, 0.0).to(in_ty)
    # Σ over these heads of dCB = dM ∘ L ∘ dt_s: the dB/dC kernel turns it into the intra-chunk
    # parts of dC = dCB B and dB = dCBᵀ C (reading it transposed from memory)
    dCB_sum = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
    need_ds, need_sin = _may_be_nonzero(start, end, cstart, HAS_INIT, HAS_DFINAL, BLOCK_Q)
    eye = (offs_q[:, None] == offs_q[None, :]).to(bds_ptr.dtype.element_ty)  # (TILE_DOT) loop-invariant
    for j in range(j_lo, j_hi):
        dCB_sum = _chunk_head(
            dout_ptr, x_ptr, dtc_ptr, A_ptr, D_ptr, z_ptr, bds_ptr, csin_ptr, sds_ptr,
            dx_ptr, dz_ptr, ddt_ptr, red_ptr,
            g * HPG + j, row, red_row, pid_p, tok, mq, last, offs_p, mp, mqp, causal, causal_t, is_last,
            need_ds, need_sin, CB, CBT, dCB_sum, eye,
            T, HT, H, P, NPB, NPBW, RED_D, RED_W,
            s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_D_h,
            HAS_D, D_PER_CHANNEL, HAS_Z, FACTORED, PREC, CS_VEC, TILE_DOT, BLOCK_P == BLOCK_Q, TOK_RED)
    qq = offs_q[:, None] * BLOCK_Q + offs_q[None, :]
    tl.store(dcb_ptr + slot.to(tl.int64) * (BLOCK_Q * BLOCK_Q) + qq, dCB_sum)


@triton.jit
def _item_owner(x, W, NP):
    """The balanced grid's program that owns work item ``x``: program ``i`` takes the items
    ``i·W // NP .. (i+1)·W // NP − 1``, so the owner is ``ceil((x + 1)·NP / W) − 1``."""
    return ((x + 1) * NP + W - 1) // W - 1


@triton.jit
def _ssd_bwd_chunk_kernel(
    # inputs
    dout_ptr, x_ptr, dtc_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, cu_ptr, bds_ptr, csin_ptr, sds_ptr,
    # outputs
    dx_ptr, dz_ptr, ddt_ptr, dcb_ptr, red_ptr,
    # sizes
    T, HT, H, P, N, G, HPG, HB, NHB, NPB, NPBW, RED_D, RED_W, NSEQ, n_search,
    # the balanced grid (BALANCED): W work items over NP programs, sequences of SEQ_L tokens
    # (CPS chunks each), NSEG dCB slots per (row, group)
    W, NP, SEQ_L, CPS, NSEG,
    # strides (last dims are contiguous; these are the token / head / group strides)
    s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h,
    s_B_t, s_B_g, s_C_t, s_C_g, s_D_h,
    # meta
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_DFINAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, RED_WP: tl.constexpr,
    HB_P2: tl.constexpr, FACTOR_RANGE: tl.constexpr, FACTORED: tl.constexpr, WRITE_EMPTY: tl.constexpr,
    BALANCED: tl.constexpr, MAX_SEGS: tl.constexpr, CS_VEC: tl.constexpr, TILE_DOT: tl.constexpr,
    TOK_RED: tl.constexpr,
):
    pid_p = tl.program_id(2)
    if BALANCED:
        # Equal-length sequences (the training batch): the work items are (busy row, group, head),
        # row-major, and program i takes items i·W // NP .. (i+1)·W // NP − 1 (NP ≈ one program
        # per SM): every program gets the same number of heads ± 1, wherever the rows' boundaries
        # fall. A program's items span at most MAX_SEGS (row, group) segments; each segment stores
        # its dCB sum in slot (its index among the row's owners) of the (row, group)'s NSEG slots.
        # The segments are unrolled (static_range + a guard), not a loop: a loop around the head
        # loop cost ptxas 4x the spills (532 vs 128 bytes at 130m), unrolled the head loops keep
        # the row-blocked grid's (offline sm_90 compile, session 18).
        # (int64 only for the products that can pass 2^31; int32 indices keep the head loop's
        # address arithmetic, and its registers, as in the row-blocked grid)
        pid = tl.program_id(0)
        lo = ((pid.to(tl.int64) * W) // NP).to(tl.int32)
        hi = (((pid.to(tl.int64) + 1) * W) // NP).to(tl.int32)
        rg_end = (hi - 1) // HPG + 1
        for s in tl.static_range(MAX_SEGS):
            rg = lo // HPG + s
            if rg < rg_end:
                j_lo = tl.maximum(lo - rg * HPG, 0)
                j_hi = tl.minimum(hi - rg * HPG, HPG)
                b = rg // G  # busy row: chunk k of sequence seq
                g = rg - b * G
                seq, k, start = _equal_row(b, SEQ_L, CPS)
                seg = pid - _item_owner(rg.to(tl.int64) * HPG, W, NP).to(tl.int32)
                _chunk_heads(
                    dout_ptr, x_ptr, dtc_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bds_ptr, csin_ptr, sds_ptr,
                    dx_ptr, dz_ptr, ddt_ptr, dcb_ptr, red_ptr,
                    (start // BLOCK_Q + seq + k).to(tl.int32), b, g, j_lo, j_hi, (rg * NSEG + seg) * NPB + pid_p,
                    pid_p, start, start + SEQ_L, start + k * BLOCK_Q,
                    T, HT, H, P, N, HPG, NPB, NPBW, RED_D, RED_W,
                    s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g, s_D_h,
                    HAS_D, D_PER_CHANNEL, HAS_Z, HAS_INIT, HAS_DFINAL, PREC, BLOCK_Q, BLOCK_P, BLOCK_N, FACTORED,
                    CS_VEC, TILE_DOT, TOK_RED)
    else:
        row = tl.program_id(0)
        pid_gh = tl.program_id(1)
        g = pid_gh // NHB
        hb = pid_gh % NHB
        start, end, cstart = _row_chunk(cu_ptr, row, NSEQ, n_search, BLOCK_Q)
        busy = cstart < end  # rows past a sequence's last chunk hold no tokens: zero partials (below)
        if FACTOR_RANGE > 0:
            # which of the two launches takes this program (``factor_range``): the factored one when
            # every head of the block decays by at most FACTOR_RANGE over the chunk
            offs_hb = tl.arange(0, HB_P2)
            hb_last = tl.minimum(cstart + BLOCK_Q, end) - 1
            a_lasts = tl.load(dtc_ptr + (g * HPG + hb * HB + offs_hb).to(tl.int64) * T + hb_last,
                              mask=(offs_hb < tl.minimum(HB, HPG - hb * HB)) & busy, other=0.0)
            busy = busy & ((tl.min(a_lasts, axis=0) >= -FACTOR_RANGE) == FACTORED)
        if busy:
            # this program's (head-block, P-block) slot of the per-(row, group) dCB sums
            _chunk_heads(
                dout_ptr, x_ptr, dtc_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bds_ptr, csin_ptr, sds_ptr,
                dx_ptr, dz_ptr, ddt_ptr, dcb_ptr, red_ptr,
                row, row, g, hb * HB, tl.minimum(HPG, hb * HB + HB), (row.to(tl.int64) * G + g) * (NHB * NPB)
                + hb * NPB + pid_p, pid_p, start, end, cstart,
                T, HT, H, P, N, HPG, NPB, NPBW, RED_D, RED_W,
                s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g, s_D_h,
                HAS_D, D_PER_CHANNEL, HAS_Z, HAS_INIT, HAS_DFINAL, PREC, BLOCK_Q, BLOCK_P, BLOCK_N, FACTORED,
                CS_VEC, TILE_DOT, TOK_RED)
        else:
            if WRITE_EMPTY and not TOK_RED:  # (one of the launches) the reduction over rows reads every
                # row's partials: these programs write their zeros, which saves the buffer a zero fill
                # (TOK_RED: every token's terms are written by its own row's programs)
                if FACTOR_RANGE > 0:  # a program skipped for its decays belongs to the other launch
                    write_zeros = (cstart >= end) & (pid_p == 0)
                else:
                    write_zeros = pid_p == 0
                if write_zeros:
                    offs_w = tl.arange(0, RED_WP)
                    h0 = g * HPG + hb * HB
                    for j in range(0, tl.minimum(HB, HPG - hb * HB)):
                        tl.store(red_ptr + (row.to(tl.int64) * H + h0 + j) * RED_W + offs_w,
                                 tl.zeros([RED_WP], dtype=tl.float32), mask=offs_w < RED_W)


_CHUNK = fast_launch(_ssd_bwd_chunk_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _dbdc_pblock(accB, accC, p0, h, st_row, tok, mq, offs_n, mn, w, decay, need_ds, need_sin,
                 dout_ptr, x_ptr, z_ptr, cs_ptr, ds_ptr, P, N, s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h,
                 HAS_Z: tl.constexpr, PREC: tl.constexpr, BLOCK_P: tl.constexpr):
    """Head ``h``'s state terms of dB / dC for the P-block at ``p0``: ``accB += (w ∘ x) dS``,
    ``accC += (exp(a) ∘ dy) S_in`` (the dB/dC kernel's inner GEMM step)."""
    in_ty = x_ptr.dtype.element_ty
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mp = offs_p < P
    mqp = mq[:, None] & mp[None, :]
    x = tl.load(x_ptr + tok[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=mqp, other=0.0)
    dy = _load_dy(dout_ptr, z_ptr, h, tok, offs_p, mqp, s_dout_t, s_dout_h, s_z_t, s_z_h, HAS_Z)
    so = st_row + offs_p[:, None] * N + offs_n[None, :]
    mpn = mp[:, None] & mn[None, :]
    dSn = tl.load(ds_ptr + so, mask=mpn & need_ds, other=0.0).to(in_ty)
    Sn = tl.load(cs_ptr + so, mask=mpn & need_sin, other=0.0).to(in_ty)
    accB += tl.dot((w[:, None] * x.to(tl.float32)).to(in_ty), dSn, input_precision=PREC)
    accC += tl.dot((decay[:, None] * dy).to(in_ty), Sn, input_precision=PREC)
    return accB, accC


@triton.jit
def _ssd_bwd_dbdc_kernel(
    dout_ptr, x_ptr, dtc_ptr, B_ptr, C_ptr, z_ptr, cu_ptr, cs_ptr, ds_ptr, dcb_ptr,
    dB_ptr, dC_ptr,
    T, HT, P, N, G, HPG, NSPLIT, HPS, NSLOT, HPN, NSEQ, n_search,
    W, NP, SEQ_L, CPS, NSEG, NPB,
    s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_B_t, s_B_g, s_C_t, s_C_g,
    s_dB_t, s_dB_g, s_dC_t, s_dC_g, s_split,
    red_ptr, small_ptr, n_rows, red_rows, H, RED_D, RED_W,
    HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_NB: tl.constexpr, BALANCED: tl.constexpr,
    FUSE_HEADS: tl.constexpr, D_PER_CHANNEL: tl.constexpr, RED_WP: tl.constexpr, BLOCK_R: tl.constexpr,
    ONE_PB: tl.constexpr, TOK_RED: tl.constexpr,
):
    """dB, dC of one chunk, one group, one N-block, summed over the group's heads in registers:
    ``dB = (Σ_h dCB_h)ᵀ C + Σ_h (w_h ∘ x_h) dS_h``, ``dC = (Σ_h dCB_h) B + Σ_h (exp(a_h) ∘ dy_h) S_in,h``
    (a GEMM over K = heads × P); one plain store per element, in the output dtype. With
    ``NSPLIT`` > 1 the group's heads are split over programs (``HPS`` heads each: more programs
    when there are few chunks) and each split stores its partial sums into its own fp32 slice
    (``s_split`` apart), summed by the caller; the intra-chunk part goes with split 0. The chunk
    kernel's dCB sums of a (row, group) are its ``NSLOT`` slots, or with ``BALANCED`` (that
    kernel's balanced grid: W, NP, SEQ_L, CPS, NSEG as there) the slots of the programs that owned
    the (row, group)'s heads.

    ``FUSE_HEADS``: the grid has ``H`` more rows after the ``n_rows`` chunk rows, and their
    ``(·, 0, 0)`` programs do the finishing kernel's per-head sums (``_finish_head``; the other
    programs of those rows exit). They depend on the chunk kernel only, so they run beside the dB/dC
    programs (the launcher fuses only where those leave SMs free: ``_fuse_finish_heads``) instead
    of in a launch of their own after them."""
    row = tl.program_id(0)
    head_row = False  # (a constexpr False unless FUSE_HEADS: then no branch is compiled)
    if FUSE_HEADS:
        head_row = row >= n_rows
    if head_row:
        if (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
            _finish_head(red_ptr, small_ptr, row - n_rows, red_rows, H, P, RED_D, RED_W, NPB,
                         D_PER_CHANNEL=D_PER_CHANNEL, RED_WP=RED_WP, BLOCK_R=BLOCK_R, TOK_RED=TOK_RED)
    else:
        g = tl.program_id(1) // NSPLIT
        split = tl.program_id(1) % NSPLIT
        pid_n = tl.program_id(2)
        in_ty = x_ptr.dtype.element_ty
        start, end, cstart = _row_chunk(cu_ptr, row, NSEQ, n_search, BLOCK_Q)
        if cstart < end:
            offs_q = tl.arange(0, BLOCK_Q)
            offs_n = pid_n * BLOCK_NB + tl.arange(0, BLOCK_NB)
            mn = offs_n < N
            tok = cstart + offs_q
            mq = tok < end
            last = tl.minimum(cstart + BLOCK_Q, end) - 1
            mqn = mq[:, None] & mn[None, :]
            accB = tl.zeros([BLOCK_Q, BLOCK_NB], dtype=tl.float32)
            accC = tl.zeros([BLOCK_Q, BLOCK_NB], dtype=tl.float32)
            need_ds, need_sin = _may_be_nonzero(start, end, cstart, HAS_INIT, HAS_DFINAL, BLOCK_Q)
            for j in range(split * HPS, tl.minimum(split * HPS + HPS, HPG)):
                h = g * HPG + j
                dtv, a, a_last = _load_dt_cache(dtc_ptr, h, T, HT, tok, mq, last)
                w = tl.exp(a_last - a) * dtv
                decay = tl.exp(a)
                st_row = row.to(tl.int64) * HPN + h * P * N
                if ONE_PB:
                    # one P-block: no inner loop, so the head loop is the innermost loop and Triton's
                    # pipeliner prefetches the next head's tiles (an inner loop of one iteration
                    # left every load of the head loop unpipelined: 38 % of the stall samples on
                    # long scoreboard at 130m, dev-runs/s20-call9)
                    accB, accC = _dbdc_pblock(
                        accB, accC, 0, h, st_row, tok, mq, offs_n, mn, w, decay, need_ds, need_sin,
                        dout_ptr, x_ptr, z_ptr, cs_ptr, ds_ptr, P, N, s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h,
                        HAS_Z, PREC, BLOCK_P)
                else:
                    for p0 in range(0, P, BLOCK_P):
                        accB, accC = _dbdc_pblock(
                            accB, accC, p0, h, st_row, tok, mq, offs_n, mn, w, decay, need_ds, need_sin,
                            dout_ptr, x_ptr, z_ptr, cs_ptr, ds_ptr, P, N, s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t,
                            s_z_h, HAS_Z, PREC, BLOCK_P)

            if split == 0:
                # intra-chunk parts from the chunk kernel's per-slot sums (loaded: not a dot result)
                qq = offs_q[:, None] * BLOCK_Q + offs_q[None, :]
                dCB = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
                dCBT = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
                qq_t = offs_q[None, :] * BLOCK_Q + offs_q[:, None]  # the same tiles read transposed
                if BALANCED:
                    rg = ((start // SEQ_L) * CPS + (cstart - start) // BLOCK_Q) * G + g
                    base = rg * NSEG * NPB
                    n_slot = (_item_owner(rg * HPG + HPG - 1, W, NP) - _item_owner(rg * HPG, W, NP) + 1) * NPB
                else:
                    base = (row.to(tl.int64) * G + g) * NSLOT
                    n_slot = NSLOT
                for k in range(0, n_slot):
                    dCB += tl.load(dcb_ptr + (base + k) * (BLOCK_Q * BLOCK_Q) + qq)
                    dCBT += tl.load(dcb_ptr + (base + k) * (BLOCK_Q * BLOCK_Q) + qq_t)
                Bn = tl.load(B_ptr + tok[:, None] * s_B_t + g * s_B_g + offs_n[None, :], mask=mqn, other=0.0)
                Cn = tl.load(C_ptr + tok[:, None] * s_C_t + g * s_C_g + offs_n[None, :], mask=mqn, other=0.0)
                accC += tl.dot(dCB.to(in_ty), Bn, input_precision=PREC)
                accB += tl.dot(dCBT.to(in_ty), Cn, input_precision=PREC)
            out = split.to(tl.int64) * s_split + tok[:, None] * s_dB_t + g * s_dB_g + offs_n[None, :]
            tl.store(dB_ptr + out, accB.to(dB_ptr.dtype.element_ty), mask=mqn)
            out = split.to(tl.int64) * s_split + tok[:, None] * s_dC_t + g * s_dC_g + offs_n[None, :]
            tl.store(dC_ptr + out, accC.to(dC_ptr.dtype.element_ty), mask=mqn)


_DBDC = fast_launch(_ssd_bwd_dbdc_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _finish_head(red_ptr, small_ptr, h, n_rows, H, P, RED_D, RED_W, NPB,
                 D_PER_CHANNEL: tl.constexpr, RED_WP: tl.constexpr, BLOCK_R: tl.constexpr, TOK_RED: tl.constexpr):
    """Head ``h``'s small gradients from the chunk kernel's per-(row, head) partials ``red`` (rows,
    H, RED_W) = [dD (RED_D) | dA (NPB) | ddt_bias (NPB)], summed over rows in a fixed order into
    ``small`` (fp32, flat): ``[dA (H) | ddt_bias (H) | dD (H·P per channel, H per head; only with
    RED_D > 0)]``. ``TOK_RED``: ``red`` is the chunk kernel's per-token terms (NPB, 3, H, T) instead,
    ``n_rows`` = T, summed over P-blocks and tokens in BLOCK_R pieces (per head, not per channel)."""
    if TOK_RED:
        offs_t = tl.arange(0, BLOCK_R)
        acc_a = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc_d = tl.zeros([BLOCK_R], dtype=tl.float32)
        HT = tl.full([], H, tl.int64) * n_rows  # (H may be a specialised constexpr)
        for pb in range(0, NPB):
            vec = red_ptr + (pb * 3 * H + h).to(tl.int64) * n_rows
            for t0 in range(0, n_rows, BLOCK_R):
                m = t0 + offs_t < n_rows
                acc_a += tl.load(vec + t0 + offs_t, mask=m, other=0.0)
                acc_b += tl.load(vec + HT + t0 + offs_t, mask=m, other=0.0)
                if RED_D > 0:
                    acc_d += tl.load(vec + 2 * HT + t0 + offs_t, mask=m, other=0.0)
        tl.store(small_ptr + h, tl.sum(acc_a, axis=0))
        tl.store(small_ptr + H + h, tl.sum(acc_b, axis=0))
        if RED_D > 0:
            tl.store(small_ptr + 2 * H + h, tl.sum(acc_d, axis=0))
    else:
        offs_w = tl.arange(0, RED_WP)
        mw = offs_w < RED_W
        acc = tl.zeros([RED_WP], dtype=tl.float32)
        for r0 in range(0, n_rows, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            tile = tl.load(red_ptr + (rows.to(tl.int64)[:, None] * H + h) * RED_W + offs_w[None, :],
                           mask=(rows < n_rows)[:, None] & mw[None, :], other=0.0)
            acc += tl.sum(tile, axis=0)
        in_a = (offs_w >= RED_D) & (offs_w < RED_D + NPB)
        in_b = (offs_w >= RED_D + NPB) & mw
        tl.store(small_ptr + h, tl.sum(tl.where(in_a, acc, 0.0), axis=0))
        tl.store(small_ptr + H + h, tl.sum(tl.where(in_b, acc, 0.0), axis=0))
        if RED_D > 0:
            if D_PER_CHANNEL:
                tl.store(small_ptr + 2 * H + h * P + offs_w, acc, mask=offs_w < P)
            else:
                tl.store(small_ptr + 2 * H + h, tl.sum(tl.where(offs_w < RED_D, acc, 0.0), axis=0))


@triton.jit
def _ssd_bwd_finish_kernel(
    red_ptr, small_ptr, part_ptr, dbc_ptr,
    n_rows, H, P, RED_D, RED_W, NPB, NSPLIT, E,
    D_PER_CHANNEL: tl.constexpr, RED_WP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    TOK_RED: tl.constexpr,
):
    """The backward's last reductions in one launch (they were two to four torch kernels, ~10 us
    under graphs at SAM's shapes). Programs ``0 .. H-1``: head ``h``'s small gradients from the
    chunk kernel's per-(row, head) partials ``red`` (rows, H, RED_W) = [dD (RED_D) | dA (NPB) |
    ddt_bias (NPB)], summed over rows in a fixed order into ``small`` (fp32, flat):
    ``[dA (H) | ddt_bias (H) | dD (H·P per channel, H per head; only with RED_D > 0)]``. Programs
    ``H ..``: with split dB/dC (``NSPLIT`` > 1) one BLOCK_E slice of dB and of dC each, the sum of
    the splits' fp32 partials ``part`` (2, NSPLIT, E) stored in the output dtype into ``dbc`` (2, E)."""
    pid = tl.program_id(0)
    if pid < H:
        _finish_head(red_ptr, small_ptr, pid, n_rows, H, P, RED_D, RED_W, NPB,
                     D_PER_CHANNEL=D_PER_CHANNEL, RED_WP=RED_WP, BLOCK_R=BLOCK_R, TOK_RED=TOK_RED)
    else:
        offs_e = (pid - H).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
        me = offs_e < E
        src = part_ptr + offs_e  # pointer steps of E: no int32 product of E (near 2^31 at 1M tokens)
        dst = dbc_ptr + offs_e
        for _j in range(0, 2):  # dB, then dC
            s = tl.zeros([BLOCK_E], dtype=tl.float32)
            for _k in range(0, NSPLIT):
                s += tl.load(src, mask=me, other=0.0)
                src += E
            tl.store(dst, s.to(dbc_ptr.dtype.element_ty), mask=me)
            dst += E


_FINISH = fast_launch(_ssd_bwd_finish_kernel)  # cheaper eager launches (samkern/launch.py)


def _last_contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # the kernel takes token/head strides but needs a unit stride in the last dim
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _check_args(dout, x, dt, A, B, C, cu_seqlens, init_idx, chunk_states, block_q, D, z, dt_bias, initial_states,
                dt_limit, dfinal_states) -> None:
    """``ValueError`` for any argument ``ssd_bwd`` cannot take (metadata only, no host sync)."""
    check_tensor("dout", dout, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    T, H, P = x.shape
    check_tensor("dout", dout, shape=(T, H, P))
    check_tensor("dt", dt, shape=(T, H))
    if not dt.is_floating_point():
        raise ValueError(f"dt must be a float tensor, got {dt.dtype}")
    check_tensor("A", A, shape=(H,))
    check_tensor("B", B, ndim=3, dtypes=(x.dtype,))
    G, N = B.shape[1], B.shape[2]
    check_tensor("B", B, shape=(T, G, N))
    check_tensor("C", C, shape=(T, G, N), dtypes=(x.dtype,))
    if H % G != 0:
        raise ValueError(f"nheads ({H}) must be a multiple of ngroups ({G})")
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,))
    nseq = cu_seqlens.shape[0] - 1
    if nseq < 1:
        raise ValueError("cu_seqlens must hold at least 2 entries (one sequence)")
    if init_idx is None:
        if initial_states is not None:
            raise ValueError("init_idx is required when initial_states is given")
    else:
        check_tensor("init_idx", init_idx, shape=(nseq,), dtypes=(torch.int32,))
    if not isinstance(block_q, int) or block_q < 16 or block_q & (block_q - 1):
        raise ValueError(f"block_q must be a power of two >= 16, got {block_q!r}")
    check_tensor("chunk_states", chunk_states, shape=(T // block_q + nseq, H, P, N),
                 dtypes=(torch.float32, torch.bfloat16))
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        if D.shape not in ((H,), (H, P)):
            raise ValueError(f"D must have shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(T, H, P), dtypes=FLOAT_DTYPES)
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(H,))
    if initial_states is not None:
        check_tensor("initial_states", initial_states, ndim=4)
        if tuple(initial_states.shape[1:]) != (H, P, N):
            raise ValueError(f"initial_states must have shape (batch, {H}, {P}, {N}), got {tuple(initial_states.shape)}")
    if dfinal_states is not None:
        check_tensor("dfinal_states", dfinal_states, shape=(nseq, H, P, N), dtypes=FLOAT_DTYPES)
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f"dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    check_same_device(dout=dout, x=x, dt=dt, A=A, B=B, C=C, cu_seqlens=cu_seqlens, init_idx=init_idx,
                      chunk_states=chunk_states, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                      dfinal_states=dfinal_states)


def dt_cache(
    dt: torch.Tensor, A: torch.Tensor, dt_bias: Optional[torch.Tensor], cu_seqlens: torch.Tensor, *, block_q: int,
    dt_softplus: bool, dt_limit: Tuple[float, float], out: Optional[torch.Tensor] = None, seq_len: int = 0,
) -> torch.Tensor:
    """The dt cache ((3, H, T) fp32: in-chunk log-decay a | processed dt | d dt / d(dt_raw + dt_bias),
    see :mod:`samkern.ops.ssd.fwd`) in one launch of (chunk rows × heads) programs: what the forward
    stores with ``dt_cache_out``, for a backward that was given none, or made before the forward,
    which then reads it (``ssd_fwd(dt_cache_in=...)``). ``out``: a buffer to fill, else a new one.
    ``seq_len`` > 0: every sequence of ``cu_seqlens`` has that length (a plain batch; not checked
    here), which saves the kernel its search for each row's sequence."""
    T, H = dt.shape
    nseq = cu_seqlens.shape[0] - 1
    A = A.contiguous()  # the kernel indexes A and dt_bias by head, unit stride (a view may not be)
    if dt_bias is not None:
        dt_bias = dt_bias.contiguous()
    if out is None:
        out = torch.empty((3, H, T), device=dt.device, dtype=torch.float32)
    else:
        check_f32_buffer("out", out, (3, H, T))
    cps = cdiv(seq_len, block_q) if seq_len > 0 else 0
    _DT_CACHE[(nseq * cps if cps else T // block_q + nseq, H)](
        dt, A, dt_bias if dt_bias is not None else dt, cu_seqlens, out, T, H * T, nseq,
        _n_search(nseq), dt.stride(0), dt.stride(1), float(dt_limit[0]), float(dt_limit[1]), seq_len, cps,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), BLOCK_Q=block_q, EQUAL=cps > 0,
        num_warps=1,
    )
    return out


def dstate_walk(
    dout: torch.Tensor, z: Optional[torch.Tensor], dtc: torch.Tensor, C: torch.Tensor, cu_seqlens: torch.Tensor,
    init_idx: torch.Tensor, n_init: int, dfinal_states: Optional[torch.Tensor], dstates: Optional[torch.Tensor], *,
    P: int, block_q: int, block_p: int, zero_fill: bool = True, B: Optional[torch.Tensor] = None,
    chunk_states: Optional[torch.Tensor] = None, tiles: Optional[Tuple[torch.Tensor, ...]] = None,
    cs_vec: bool = False,
) -> Optional[torch.Tensor]:
    """Launch the reverse dS walk (``_ssd_bwd_dstate_kernel``) on flat, last-dim-contiguous inputs.

    Stores dS leaving every chunk into ``dstates`` (skipped when it is None: the sequence split's
    first pass wants only the gradient reaching each segment's start) and returns
    d ``initial_states`` (n_init, H, P, N) fp32, rows seeding no sequence zero (None when
    ``n_init`` is 0). ``dfinal_states`` (nseq, H, P, N) seeds each sequence's walk (zeros if None).
    ``dtc`` is the dt cache (:func:`dt_cache`) of the same chunking. ``zero_fill=False`` skips
    zeroing d ``initial_states`` where every row seeds exactly one sequence (the sequence split).
    With ``dstates``, ``B``, the forward's ``chunk_states`` and ``tiles = (bds, cs, sds)`` are
    required: the walk also stores ``B dSᵀ`` and ``C S_inᵀ`` of every chunk into ``bds`` / ``cs``
    ((T, H, P)) and ``Σ dS ∘ S_in`` per walk P-block into ``sds`` ((rows, H, walk P-blocks) fp32;
    :func:`walk_p_blocks`). ``cs_vec`` (no gate: z None): ``cs`` takes the row sums
    ``Σ_p dy_tp (C S_inᵀ)_tp`` per walk P-block instead, ((walk P-blocks, T, H) fp32; :func:`cs_vector`).
    """
    H, T = dtc.shape[1], dtc.shape[2]
    G, N = C.shape[1], C.shape[2]
    dev = dout.device
    BLOCK_N = max(16, next_pow2(N))
    alloc = torch.zeros if zero_fill else torch.empty
    dinit = alloc((n_init, H, P, N), device=dev, dtype=torch.float32) if n_init else None
    if dinit is None and dstates is None:
        raise ValueError("dstate_walk needs dstates or initial-state rows to write")
    if dstates is not None and (B is None or chunk_states is None or tiles is None):
        raise ValueError("dstate_walk with dstates needs B, chunk_states and the tile buffers")
    if cs_vec and z is not None:
        raise ValueError("dstate_walk: cs_vec is for calls without z (the gate needs the C S_inᵀ tile)")
    dummy = dinit if dinit is not None else dstates
    bds, cs_tile, sds = tiles if dstates is not None else (dummy, dummy, dummy)
    nseq = cu_seqlens.shape[0] - 1
    scan_bp = _tuned_block("scan_block_p", block_p, block_p)
    n_pb = cdiv(P, scan_bp)  # = walk_p_blocks(P, block_p)
    Bt = B if B is not None else C
    _DSTATE[(nseq, H, n_pb)](
        dout, z if z is not None else dout, dtc, Bt, C,
        cu_seqlens, init_idx, dfinal_states if dfinal_states is not None else dummy,
        chunk_states if chunk_states is not None else dummy,
        dstates if dstates is not None else dummy, dinit if dinit is not None else dummy, bds, cs_tile, sds,
        T, H * T, H, P, N, H // G, H * P * N, n_pb,
        dout.stride(0), dout.stride(1), z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        Bt.stride(0), Bt.stride(1), C.stride(0), C.stride(1),
        HAS_Z=z is not None,
        HAS_INIT=dinit is not None, HAS_DFINAL=dfinal_states is not None, WRITE_DS=dstates is not None,
        PREC="ieee" if C.dtype == torch.float32 else "tf32",
        BLOCK_Q=block_q, BLOCK_P=scan_bp, BLOCK_N=BLOCK_N, CS_VEC=cs_vec,
        # 4 warps (two programs per SM) beat 8 with the state tiles too: 130m B32 L192 walk 81 -> 65 us,
        # B8 L640 203 -> 178, B1 L16384 807 -> 689 (H100, dev-runs/s12-call2)
        num_warps=BWD_TUNING.get("scan_warps") or 4,
        num_stages=BWD_TUNING.get("scan_stages") or 2,
        **({"maxnreg": BWD_TUNING["scan_maxnreg"]} if BWD_TUNING.get("scan_maxnreg") else {}),
    )
    return dinit


def cs_vector(z: Optional[torch.Tensor]) -> bool:
    """Whether the dS walk hands the chunk kernel ``Σ_p dy_tp (C S_inᵀ)_tp`` (a [T, H] vector per walk
    P-block) instead of the ``C S_inᵀ`` tile: without a gate that sum is the tile's one use there
    (da's state term), so the chunk kernel loads 4 bytes per token and head instead of 2·P, and the
    walk stores as much less. With z the tile also recomputes the gated output."""
    return z is None and BWD_TUNING.get("cs_tile") is not True


def tile_dot(tile_dtype: torch.dtype, gated: bool, balanced: bool) -> bool:
    """Whether the chunk kernel passes the walk's ``B dSᵀ`` tile (and, with a gate, ``C S_inᵀ``)
    through an identity dot: exact for 16-bit tiles, and as a dot operand Triton's pipeliner
    prefetches the tile (cp.async over the head loop's stages) instead of each head waiting on
    its load. Measured on the H100 (``dev-runs/s36-call1``): the row-blocked grid's chunk kernel
    at B1 L16384 791–815 → 703–706 us; the balanced grid's 4–11 us slower at the short shapes; the
    gated kernel spills 1.4 → 2.6 KB and fwd+bwd is 40 % slower. So by default only the row-blocked
    grid without a gate. ``BWD_TUNING["tile_dot"]``: True = wherever the tiles are 16-bit, False =
    never, None = that default."""
    if tile_dtype not in (torch.float16, torch.bfloat16):
        return False
    v = BWD_TUNING.get("tile_dot")
    return bool(v) if v is not None else not (gated or balanced)


def tok_red(D: Optional[torch.Tensor], balanced: bool) -> bool:
    """Whether the chunk kernel hands the small gradients (dA, ddt_bias, a per-head dD) to the
    finishing sums as per-token terms ((P-blocks, 3, H, T) fp32, three vector stores per head)
    instead of per-(row, head) sums: the sums were a cross-warp reduction with 7 of the head loop's
    37 barriers (offline SASS). Measured on the H100 (graph fwd+bwd us, on / off in one process,
    two rounds, ``dev-runs/s37-call5-sweep``): the balanced grid (equal-length batches) 130m B32
    L192 242.0, 238.8 / 248.0, 243.2; 2.7b B16 L192 385.1, 386.0 / 386.7, 392.0; B8 L640 677.9,
    679.1 / 690.0, 691.3 (chunk kernel 206-212 / 219-225); but B1 L16384 (the row-blocked grid of
    the sequence split) 2360.1, 2382.3 / 2348.3, 2368.8: its chunk kernel did not gain (686-688 /
    679-688) and the finishing sums of 16384-token vectors took 14 us instead of 2. So by default
    only on the balanced grid. A per-channel dD keeps the row sums (its partials are vectors
    already). ``BWD_TUNING["tok_red"]``: True = wherever D allows, False = never."""
    if D is not None and D.dim() != 1:
        return False
    v = BWD_TUNING.get("tok_red")
    return bool(v) if v is not None else balanced


def walk_p_blocks(P: int, block_p: int) -> int:
    """P-blocks of the dS walk (the last dimension of its ``Σ dS ∘ S_in`` partials)."""
    return cdiv(P, _tuned_block("scan_block_p", block_p, block_p))


def ssd_bwd(
    dout: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    cu_seqlens: torch.Tensor,
    init_idx: Optional[torch.Tensor],
    chunk_states: torch.Tensor,
    block_q: int,
    *,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = (0.0, float("inf")),
    dfinal_states: Optional[torch.Tensor] = None,
    block_p: Optional[int] = None,
    validate: bool = True,
    dt_cache_in: Optional[torch.Tensor] = None,
    init_rows_all_seeded: bool = False,
    factor_range: Optional[float] = None,
    seq_len: Optional[int] = None,
) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of the flat (packed) SSD chunked scan.

    Args (T tokens, H heads, P headdim, N d_state, G groups, nseq sequences):
        dout: (T, H, P) gradient of the scan output.
        x: (T, H, P); dt: (T, H) raw (before ``dt_bias``/softplus/clamp); A: (H,);
        B, C: (T, G, N) with H % G == 0.
        cu_seqlens: (nseq+1,) int32 token offsets of the sequences (start 0, end T).
        init_idx: (nseq,) int32, row of ``initial_states`` seeding each sequence or -1
            (None allowed without ``initial_states``). Rows must be distinct (each row seeds
            at most one sequence).
        chunk_states: (T // block_q + nseq, H, P, N) fp32 or bf16 (what the forward stored, see
            ``fwd.chunk_state_dtype``), the state entering each internal chunk; sequence i's
            k-th chunk at row ``cu[i] // block_q + i + k``. ``dstates`` get the same dtype.
            A sequence's first row is read only with ``initial_states``: without them the state
            entering it is zero (what the forward stores there; module docstring, "Known-zero
            states").
        block_q: internal chunk length used by the forward (power of two ≥ 16).
        D: (H,) or (H, P); z: (T, H, P); dt_bias: (H,); initial_states: (batch, H, P, N).
        dt_softplus, dt_limit: dt processing, as in the forward.
        dfinal_states: (nseq, H, P, N) gradient of each sequence's final state, or None.
        block_p: P-block of the chunk kernel (power of two ≥ 16), for tests; default
            ``BWD_TUNING`` / heuristic.
        validate: check every argument (default). ``SSDChunkScanFunction`` passes False: its
            forward validated the same tensors, and ~25 checks are host time that short-sequence
            eager training pays on every step.
        dt_cache_in: the dt cache the forward stored (``ssd_fwd(dt_cache_out=...)``, (3, H, T)
            fp32, same ``block_q`` and sequences); None = computed here by :func:`dt_cache`
            (one more launch).
        init_rows_all_seeded: every row of ``initial_states`` seeds exactly one sequence (the
            sequence split's segments), so d ``initial_states`` needs no zero fill.
        factor_range: let the chunk kernel factor the decays of head blocks whose chunk decay
            |a_last| is at most this (≤ ``FACTOR_RANGE``; see ``_factor_range``: faster at long
            rows, not at short ones); None / 0 = never; never for fp16 inputs (``_factor_range``).
        seq_len: every sequence has exactly this many tokens (``cu_seqlens`` is ``arange(nseq + 1)
            · seq_len``: a plain batch; the caller's promise, compared with ``cu_seqlens`` under
            ``validate`` where host reads are allowed: ``checks.check_equal_lengths``). Lets the
            chunk kernel spread its (row, head) work evenly over the SMs (``_balanced_grid``).

    Returns:
        ``(dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states)`` in the dtypes of the
        matching inputs (None where the input was None); accumulation is fp32.
    """
    if validate:
        _check_args(dout, x, dt, A, B, C, cu_seqlens, init_idx, chunk_states, block_q, D, z, dt_bias,
                    initial_states, dt_limit, dfinal_states)
        if seq_len is not None:
            check_equal_lengths(cu_seqlens, seq_len)
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    nseq = cu_seqlens.shape[0] - 1
    if init_idx is None:
        init_idx = cu_seqlens  # dummy, never read (HAS_INIT is off)

    dout, x, z, B, C = (_last_contig(t) for t in (dout, x, z, B, C))
    chunk_states = chunk_states.contiguous()
    if dfinal_states is not None:
        dfinal_states = dfinal_states.contiguous()
    if D is not None:
        D = D.contiguous()
    A = A.contiguous()  # the kernels index A (and dt_bias, in dt_cache) by head, unit stride
    dev = x.device

    BLOCK_N = max(16, next_pow2(N))
    if block_p is None:
        block_p = _pick_block_p(P)
    if block_p < 16 or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two >= 16, got {block_p!r}")
    BLOCK_P = block_p
    NPB = cdiv(P, BLOCK_P)
    HPG = H // G
    n_rows = chunk_states.shape[0]
    busy_rows = _busy_rows(T, nseq, n_rows, block_q)
    HB = _pick_heads_per_program(HPG, busy_rows * G * NPB, dev)
    NHB = cdiv(HPG, HB)
    factor_range = _factor_range(factor_range, x.dtype)
    equal_len = seq_len if seq_len is not None and seq_len * nseq == T else 0  # every sequence seq_len tokens
    bal = None
    if equal_len and factor_range <= 0 and BWD_TUNING.get("balanced") in (None, True, 1):
        CPS = cdiv(seq_len, block_q)  # chunks per sequence: nseq · CPS rows hold tokens
        bal = _balanced_grid(nseq * CPS * G * HPG, HPG, NPB, dev)
    PREC = "ieee" if x.dtype == torch.float32 else "tf32"
    dummy = x

    dtc = dt_cache_in
    if dtc is None:
        dtc = dt_cache(dt, A, dt_bias, cu_seqlens, block_q=block_q, dt_softplus=dt_softplus, dt_limit=dt_limit,
                       seq_len=equal_len)
    elif validate:
        check_f32_buffer("dt_cache_in", dtc, (3, H, T))

    # 1. dS leaving every chunk (and d initial_states), and the chunk kernel's state terms
    dstates = torch.empty_like(chunk_states)  # rows past a sequence's last chunk are never read
    tile_dtype = torch.float32 if BWD_TUNING.get("state_tiles_fp32") else x.dtype
    npbw = walk_p_blocks(P, BLOCK_P)
    # (the chunk kernel summed the walk's Σ dS ∘ S_in partials as one 16-wide vector until session 22;
    # its scalar loop now has no such limit, but lifting the check wants a GPU test past P 256)
    if npbw > 16:
        raise ValueError(f"headdim {P} needs {npbw} dS-walk P-blocks; at most 16 are supported (raise scan_block_p)")
    cs_vec = cs_vector(z)
    tiles = (torch.empty((T, H, P), device=dev, dtype=tile_dtype),  # B dSᵀ
             # C S_inᵀ, or (cs_vec) its row sums against dy per walk P-block
             torch.empty((npbw, T, H) if cs_vec else (T, H, P), device=dev,
                         dtype=torch.float32 if cs_vec else tile_dtype),
             torch.empty((n_rows, H, npbw), device=dev, dtype=torch.float32))  # Σ dS ∘ S_in partials
    dinit = dstate_walk(dout, z, dtc, C, cu_seqlens, init_idx,
                        initial_states.shape[0] if initial_states is not None else 0, dfinal_states, dstates,
                        P=P, block_q=block_q, block_p=BLOCK_P, zero_fill=not init_rows_all_seeded, B=B,
                        chunk_states=chunk_states, tiles=tiles, cs_vec=cs_vec)

    # 2. every chunk's gradients except dB/dC, in parallel
    dx = torch.empty((T, H, P), device=dev, dtype=x.dtype)
    dz = torch.empty((T, H, P), device=dev, dtype=z.dtype) if z is not None else dx  # dummy when no z
    ddt_part = torch.empty((NPB, T, H), device=dev, dtype=torch.float32)
    red_d = (P if D.dim() == 2 else NPB) if D is not None else 0  # _chunk_head's dD partials
    red_w = red_d + 2 * NPB
    if bal is None:
        n_slot = NHB * NPB
        dcb = torch.empty((n_rows, G, n_slot, block_q, block_q), device=dev, dtype=torch.float32)
        red_rows = n_rows
        W = NP = CPS = n_seg = max_segs = 1  # (unused)
        seq_len = 1
        grid = (n_rows, G * NHB, NPB)
    else:  # slots of the (busy row, group) pairs; the partials of busy rows only (all written)
        W, NP, n_seg, max_segs = bal
        n_slot = 1  # (unused)
        red_rows = nseq * CPS
        dcb = torch.empty((red_rows * G, n_seg, NPB, block_q, block_q), device=dev, dtype=torch.float32)
        grid = (NP, 1, NPB)
    # the small gradients' terms (``tok_red``): per token (NPB, 3, H, T), or per row (rows, H, RED_W);
    # every element that is read is written
    use_tok_red = tok_red(D, bal is not None)
    red = torch.empty((NPB, 3, H, T) if use_tok_red else (red_rows, H, red_w), device=dev, dtype=torch.float32)
    red_n = T if use_tok_red else red_rows  # what ``_finish_head`` sums over: tokens or rows
    n_search = _n_search(nseq)
    # 8 warps at every tile: at 4 warps (what P-blocks of 32 got before) Triton 3.6 miscompiles this
    # kernel for 16-bit inputs on the H100 (compute-sanitizer: invalid __shared__ read; P 32: wrong
    # dt / dB / dC gradients at N 64, an illegal address at N 256), fp32 is fine; 8 warps are
    # correct at every P x N (benchmarks/results/dev-runs/s5-call4-ssd-diag-*.log)
    num_warps = BWD_TUNING.get("num_warps") or 8
    # 3 stages: the head loop is the innermost loop since the state terms come from the dS walk,
    # and Triton's pipeliner now prefetches the next head's tiles (H100, dev-runs/s12-call5, chunk
    # kernel us, 1 / 2 / 3 stages: 130m B32 L192 187 / 154 / 140, 2.7b B16 L192 305 / 251 / 222,
    # B8 L640 511 / 418 / 376, B1 L16384 1578 / 1338 / 1152)
    num_stages = BWD_TUNING.get("num_stages") or 3
    z_strides = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    # with factor_range, two launches of one kernel (``_factor_range``): the programs whose head
    # block's decays allow the factored transposed set, then the rest (one loop each: two loops in
    # one kernel spilled 4x more on the H100, 126 vs 32 bytes, and lost 18-25 % at the short
    # shapes, ``dev-runs/s14-call6-*``)
    for factored, write_empty in (((True, True), (False, False)) if factor_range > 0 else ((False, True),)):
        _CHUNK[grid](
            dout, x, dtc, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            cu_seqlens, *tiles,
            dx, dz, ddt_part, dcb, red,
            T, H * T, H, P, N, G, HPG, HB, NHB, NPB, npbw, red_d, red_w, nseq, n_search,
            W, NP, seq_len, CPS, n_seg,
            dout.stride(0), dout.stride(1), x.stride(0), x.stride(1), *z_strides,
            B.stride(0), B.stride(1), C.stride(0), C.stride(1),
            (D.stride(0) if D is not None else 0),
            HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, HAS_Z=z is not None,
            HAS_INIT=initial_states is not None, HAS_DFINAL=dfinal_states is not None, PREC=PREC,
            BLOCK_Q=block_q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, RED_WP=next_pow2(red_w),
            HB_P2=next_pow2(HB), FACTOR_RANGE=factor_range, FACTORED=factored, WRITE_EMPTY=write_empty,
            BALANCED=bal is not None, MAX_SEGS=max_segs, CS_VEC=cs_vec,
            TILE_DOT=tile_dot(tile_dtype, z is not None, bal is not None), TOK_RED=use_tok_red,
            num_warps=num_warps, num_stages=num_stages,
        )

    # 3. dB, dC: per (row, group, N-block), summed over the group's heads in registers
    # Wide N-blocks (one program per chunk and group up to N 128, 8 warps for its two [Q, 128]
    # accumulators) read x and dy once instead of once per N-block; they need enough chunks to fill
    # the GPU: B1 L16384 549 -> 440 us, 130m B32 L192 70 -> 67, but 2.7b B16 L192 (48 busy chunk
    # rows) 154 -> 175 (H100, dev-runs/s7-call6)
    wide = busy_rows * G >= 64
    block_nb = _tuned_block("block_nb", 128 if wide else 64, BLOCK_N)
    n_nb = cdiv(N, block_nb)
    nsplit = _pick_dbdc_split(HPG, busy_rows * G * n_nb, wide, dev)
    hps = cdiv(HPG, nsplit)
    nsplit = cdiv(HPG, hps)
    if nsplit > 1:  # fp32 partial sums per head split, summed below (no atomics: deterministic)
        part = torch.empty((2, nsplit, T, G, N), device=dev, dtype=torch.float32)
        dB, dC = part[0], part[1]
    else:
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
    # 4. the last reductions: each head's dA / ddt_bias / dD summed over the rows of the chunk
    # kernel's partials and, with split dB/dC, the splits' partials summed and cast (the torch
    # reductions they replace cost ~10 us under graphs at SAM's shapes). Without split dB/dC, where
    # they fit beside its programs (``_fuse_finish_heads``), the per-head sums run as H extra rows of
    # the dB/dC grid (they need only the chunk kernel's output), which saves the finishing kernel's
    # launch; otherwise that kernel does them.
    d_chan = D is not None and D.dim() == 2
    p_d = (P if d_chan else 1) if D is not None else 0
    small = torch.empty((2 * H + H * p_d,), device=dev, dtype=torch.float32)  # [dA | ddt_bias | dD]
    red_wp = next_pow2(red_w)
    fuse_heads = _fuse_finish_heads(nsplit, busy_rows * G * n_nb, H, dev)
    dbdc_warps = BWD_TUNING.get("dbdc_warps") or (8 if wide else 4)
    one_pb = min(BLOCK_P, 64) >= P and BWD_TUNING.get("dbdc_one_pb") is not False
    _DBDC[(n_rows + (H if fuse_heads else 0), G * nsplit, n_nb)](
        dout, x, dtc, B, C, z if z is not None else dummy,
        cu_seqlens, chunk_states, dstates, dcb, dB, dC,
        T, H * T, P, N, G, HPG, nsplit, hps, n_slot, H * P * N, nseq, n_search,
        W, NP, seq_len, CPS, n_seg, NPB,
        dout.stride(0), dout.stride(1), x.stride(0), x.stride(1), *z_strides,
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), dB.stride(-3), dB.stride(-2), dC.stride(-3),
        dC.stride(-2), dB.stride(0) if nsplit > 1 else 0,
        red, small, n_rows, red_n, H, red_d, red_w,
        HAS_Z=z is not None, HAS_INIT=initial_states is not None, HAS_DFINAL=dfinal_states is not None, PREC=PREC,
        BLOCK_Q=block_q, BLOCK_P=min(BLOCK_P, 64), BLOCK_NB=block_nb, BALANCED=bal is not None,
        # the fused head sums load [BLOCK_R, RED_WP] tiles of 64 values per thread (the dB/dC
        # programs' registers bound the kernel's; the head programs run beside them, hidden). A
        # fixed BLOCK_R (not sized to the rows) and fixed values when not fused: each distinct
        # constexpr would compile this kernel again
        FUSE_HEADS=fuse_heads, D_PER_CHANNEL=d_chan and fuse_heads, RED_WP=red_wp if fuse_heads else 1,
        BLOCK_R=(1024 if use_tok_red else max(1, 2048 * dbdc_warps // red_wp)) if fuse_heads else 1,
        TOK_RED=use_tok_red and fuse_heads,
        # P in one block (``ONE_PB``): the head loop is the innermost loop and the pipeliner prefetches
        # the next head's tiles (H100, graph, dB/dC kernel us, P-block loop / one block at 2 / 3
        # stages: 130m B32 L192 63.8 / 57.1 / 45.7, 2.7b B16 L192 110.0 / 94.2 / 75.2, B8 L640
        # 183.6 / 164.4 / 130.6; dev-runs/s20-call10). 3 stages for the one-block form (validated on
        # the GPU's headdim x d_state grid against mamba-ssm, dev-runs/s21-call1: the Triton 3.6
        # Hopper miscompiles are per compiled kernel); the P-block loop keeps 2 (its inner loop is
        # the pipelined one). BWD_TUNING["dbdc_one_pb"] = False keeps the P-block loop. fp32 inputs keep
        # 2 stages: their tiles are twice as large, and the wide form at 3 stages needs 241 KB of
        # shared memory, over the H100's 227 KB (it failed to launch at 1 x 8192 x 8 heads, fp32:
        # dev-runs/s22-call6)
        ONE_PB=one_pb, num_warps=dbdc_warps,
        num_stages=BWD_TUNING.get("dbdc_stages") or (3 if one_pb and x.element_size() <= 2 else 2),
    )
    if not fuse_heads:
        n_e = T * G * N
        block_e = 1024
        if nsplit > 1:
            dbc = torch.empty((2, T, G, N), device=dev, dtype=B.dtype)
            dB, dC = dbc[0], dbc[1]
        _FINISH[(H + (cdiv(n_e, block_e) if nsplit > 1 else 0),)](
            red, small, part if nsplit > 1 else red, dbc if nsplit > 1 else small,
            red_n, H, P, red_d, red_w, NPB, nsplit, n_e,
            # all rows in one [BLOCK_R, RED_WP] load where they fit 128 values per thread (every
            # iteration is a full memory round trip: ~2 us each at 64 rows, dev-runs/s15-call1)
            D_PER_CHANNEL=d_chan, RED_WP=red_wp,
            BLOCK_R=2048 if use_tok_red else max(16, min(next_pow2(red_rows), 32768 // red_wp)),
            BLOCK_E=block_e, TOK_RED=use_tok_red, num_warps=8, num_stages=1,
        )
    ddt = ddt_part[0] if NPB == 1 else ddt_part.sum(0)
    # views of one buffer; casts only where the parameter is not fp32 (each torch call is host
    # time in eager training)
    dA = small[:H]
    ddt_bias = _as_dtype(small[H:2 * H], dt_bias.dtype) if dt_bias is not None else None
    dD = None
    if D is not None:
        dD = _as_dtype(small[2 * H:].view(H, P) if d_chan else small[2 * H:], D.dtype)
    dinitial = _as_dtype(dinit, initial_states.dtype) if initial_states is not None else None
    return (dx, _as_dtype(ddt, dt.dtype), _as_dtype(dA, A.dtype), dB, dC, dD,
            dz if z is not None else None, ddt_bias, dinitial)


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)
