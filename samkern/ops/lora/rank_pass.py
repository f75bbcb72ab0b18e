# SPDX-License-Identifier: Apache-2.0
"""One pass over a wide activation for the LoRA's two rank-r products that read it:

    g = s · a P        (M, r)      a (M, N), P (N, r)
    d = aᵀ U           (N, r)      U (M, r)           (optional)

The backward of ``y = x Wᵀ + s (x Aᵀ) Bᵀ`` needs ``g_s = s·dy B`` (for dx and dA) and
``dB = dyᵀ u_s``: two reads of dy (M × N: 41 MB at 6144 tokens × 3352 columns in bf16) that cuBLAS
runs as two skinny GEMMs, one with a split-K reduction kernel: 48 us of a 183 us fwd+bwd at
768→3352 r8 on an H100 (``benchmarks/results/dev-runs/s23-call4-lora-profile.log``), where one
read of dy at the HBM rate would take ~13 us. Here program ``(row block, column split)`` streams
its tiles of ``a`` once and feeds each to two MMAs: ``a P`` accumulates over its columns in
registers, ``aᵀ U`` is one [BLOCK_N, r] result per tile. Both sums are completed by a second,
small launch from fp32 partials (column splits for g, row blocks for d) in a fixed order: no
atomics, bitwise reproducible. The partials cost ``4 r / (2 BLOCK_M)`` of the bytes of ``a``
for d (6.25 % at r = 8 with 256-row blocks) and a few column splits' worth of g.

Measured (H100, graph replays with the L2 flushed, 6144 tokens, r = 8, ``dev-runs/s26-call2``):
g + d 38.4 us vs cuBLAS's two calls 47.6 at 3352 columns, 79.6 vs 112.6 at 10576, 17.2 vs 18.6
at 768. Without U (the forward's ``u_s = s·x Aᵀ``) it was no faster than cuBLAS, so the forward
does not use it. The backward uses it in CUDA-graph captures only (``rank_pass_enabled``).

No dot result is transposed (``tl.trans`` only of a loaded tile: the Triton 3.6 Hopper
miscompile does not apply). Rows past M are wrapped onto valid rows (their U rows load as zero,
their g rows are not stored), and so are columns past N when N keeps 16-byte groups whole (their
P rows load as zero, their d rows are not stored): the big loads need no masks, which keeps
Triton's pipeliner on asynchronous copies.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv, num_sms, row_strides
from samkern.launch import fast_launch

__all__ = ["lora_rank_pass", "rank_pass_enabled", "MAX_R"]

MAX_R = 16  # ranks above this are real GEMMs (r = 256): cuBLAS
# launch settings (module constants, so that a sweep script can set them)
# (session 26's sweep at 6144 tokens, dev-runs/s26-call2: 256-row blocks halve the d partials and
# were the fastest at all seven widths, 38.4 vs 44.5-62.1 us for 128 / 64 rows at 3352 columns)
BLOCK_M = 256
BLOCK_N = 64
NUM_WARPS = 8
NUM_STAGES = 3
PROGRAMS_PER_SM = 1  # the column split aims at this many programs per SM (98 KB of shared memory each)
# flat output elements per program of the summing launch: 256 rather than 1024 (4x the programs,
# each a quarter of the serial loads) took graph fwd+bwd 78.8 -> 76.3 us at 1536->768 r8, 162.3 ->
# 157.9 at 768->3352 (in-process A/B, three rounds, dev-runs/s33-call6-lora-const-ab.*)
SUM_BLOCK = 256
SUM_SPLITS = 8  # partials loaded per step there (one dependent load per partial is latency-bound)


@triton.jit
def _rank_pass_kernel(
    a_ptr, p_ptr, u_ptr, gpart_ptr, dpart_ptr,
    M, N, COLS_PER_PROG,
    s_am, s_an, s_pn, s_pr, s_um, s_ur,
    R: tl.constexpr, HAS_U: tl.constexpr, COL_WRAP: tl.constexpr, PREC: tl.constexpr, RS: tl.constexpr,
    RSPN: tl.constexpr, RSPR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Program (row block, column split): g partial [BLOCK_M, R] at ``gpart[split]``, and with U
    one d partial [BLOCK_N, R] per column block at ``dpart[row block]`` (fp32, rows of R).
    RS / RSPN, RSPR: ``a``'s row stride and P's non-unit stride come divided by these constexprs
    (``samkern.backend.row_stride_unit``): B's rows of r = 8 elements, or Aᵀ's columns of
    K = 3352, would otherwise be read 2 bytes at a time by synchronous loads that stall every
    step of the loop (offline PTX: 16 ``ld.global`` in the loop without the hint)."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    mm = offs_m < M
    mr = offs_r < R  # R is a constexpr: the mask is uniform over 16-byte groups
    rows = (offs_m % M).to(tl.int64) * RS  # wrapped (see the module docstring)
    if HAS_U:
        u = tl.load(u_ptr + offs_m.to(tl.int64)[:, None] * s_um + offs_r[None, :] * s_ur,
                    mask=mm[:, None] & mr[None, :], other=0.0)
    g = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    nb0 = pid_c * COLS_PER_PROG
    nb_end = tl.minimum(nb0 + COLS_PER_PROG, tl.cdiv(N, BLOCK_N))
    for nb in range(nb0, nb_end):
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = offs_n < N
        if COL_WRAP:
            cols = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
            a = tl.load(a_ptr + rows[:, None] * s_am + cols[None, :] * s_an)
        else:
            a = tl.load(a_ptr + rows[:, None] * s_am + offs_n[None, :] * s_an, mask=mn[None, :], other=0.0)
        p = tl.load(p_ptr + offs_n[:, None] * (s_pn * RSPN) + offs_r[None, :] * (s_pr * RSPR),
                    mask=mn[:, None] & mr[None, :], other=0.0)
        g = tl.dot(a, p, g, input_precision=PREC)
        if HAS_U:
            d = tl.dot(tl.trans(a), u, input_precision=PREC)
            dst = (pid_m * N + offs_n).to(tl.int64) * R
            tl.store(dpart_ptr + dst[:, None] + offs_r[None, :], d, mask=mn[:, None] & mr[None, :])
    gst = (pid_c * M + offs_m).to(tl.int64) * R
    tl.store(gpart_ptr + gst[:, None] + offs_r[None, :], g, mask=mm[:, None] & mr[None, :])


@triton.jit
def _rank_pass_sum_kernel(
    gpart_ptr, dpart_ptr, g_ptr, d_ptr, G_LEN, D_LEN, G_SPLITS, D_SPLITS, G_PROGS, scale,
    BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """The first G_PROGS programs: ``g = scale · Σ_split gpart`` over G_LEN flat elements; the
    rest: ``d = Σ_block dpart`` over D_LEN. Fixed summation order (shapes only)."""
    pid = tl.program_id(0)
    if pid < G_PROGS:
        part, out, length, nsplit, start, sc = gpart_ptr, g_ptr, G_LEN, G_SPLITS, pid * BLOCK, scale
    else:
        part, out, length, nsplit, start, sc = dpart_ptr, d_ptr, D_LEN, D_SPLITS, (pid - G_PROGS) * BLOCK, 1.0
    offs = start + tl.arange(0, BLOCK)
    ms = offs < length
    offs_s = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s0 in range(0, nsplit, BLOCK_S):
        sp = s0 + offs_s
        t = tl.load(part + sp.to(tl.int64)[:, None] * length + offs[None, :],
                    mask=(sp < nsplit)[:, None] & ms[None, :], other=0.0)
        acc += tl.sum(t, axis=0)
    tl.store(out + offs, (acc * sc).to(out.dtype.element_ty), mask=ms)


_PASS = fast_launch(_rank_pass_kernel)
_SUM = fast_launch(_rank_pass_sum_kernel)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def rank_pass_enabled(a: torch.Tensor, r: int) -> bool:
    """Whether :func:`lora_rank_pass` takes ``a`` (M, N) at rank ``r``: r ≤ ``MAX_R``, unit column
    stride, 16-bit CUDA tensors (fp32 stays with cuBLAS, as the GEMMs do: Triton's exact fp32 dot
    is emulated) or anything in the CPU interpreter, and ``SAMKERN_LORA_RANK_PASS``: ``auto``
    (default) only while a CUDA graph is being captured, ``1`` always, ``0`` never.

    Why only in graphs by default: the pass saves GPU time (an A/B of the switch, graph replays:
    fwd+bwd −3 to −7 % at five of the six r = 8 rows, ``dev-runs/s26-call3``) but costs an eager
    call host time (two launches and its buffers where the fused dx kernel had one launch):
    +70 to +140 µs per fwd+bwd on the H100 box, where eager LoRA steps at these shapes are bound
    by host time (~1 ms per fwd+bwd, ``dev-runs/s26-call10-lora-eager-switch.log``)."""
    if r > MAX_R or a.dim() != 2 or a.stride(1) != 1:
        return False
    mode = os.environ.get("SAMKERN_LORA_RANK_PASS", "auto")
    if mode == "0":
        return False
    if _interpret():
        return True
    if not (a.is_cuda and a.dtype in (torch.float16, torch.bfloat16)):
        return False
    return mode == "1" or torch.cuda.is_current_stream_capturing()


def _stride_hint(elem_size: int, s0: int, s1: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``((unit0, unit1), (s0 / unit0, s1 / unit1))``: ``row_stride_unit`` applied to the non-unit
    stride of a 2-D operand whose other stride is 1 (units of 1 otherwise: strides as given)."""
    if s1 == 1:
        u, (q,) = row_strides(elem_size, s0)
        return (u, 1), (q, s1)
    if s0 == 1:
        u, (q,) = row_strides(elem_size, s1)
        return (1, u), (s0, q)
    return (1, 1), (s0, s1)


def lora_rank_pass(
    a: torch.Tensor, p: torch.Tensor, scale: float, u: Optional[torch.Tensor] = None,
    g_out: Optional[torch.Tensor] = None, splits: int = 0,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(g, d) = (scale · a @ p, aᵀ @ u)`` reading ``a`` once; ``d`` is None without ``u``.

    a (M, N) with unit column stride (``rank_pass_enabled``), p (N, r), u (M, r), any strides for
    p / u, one dtype; g (M, r) and d (N, r) come back contiguous in that dtype (fp32 sums).
    ``g_out``: a preallocated contiguous (M, r) output. ``splits`` > 0 forces the number of column
    splits (tests); 0 = enough programs for ``PROGRAMS_PER_SM`` per SM."""
    M, N = a.shape
    r = p.shape[1]
    dev, dt = a.device, a.dtype
    g = g_out if g_out is not None and g_out.is_contiguous() else torch.empty((M, r), device=dev, dtype=dt)
    d = torch.empty((N, r), device=dev, dtype=dt) if u is not None else None
    if M == 0:
        return g_out if g_out is not None else g, (d.zero_() if d is not None else None)
    interp = _interpret()
    bm, bn = (16, 32) if interp else (BLOCK_M, BLOCK_N)  # small tiles keep the interpreter fast
    n_mb, n_nb = cdiv(M, bm), cdiv(N, bn)
    # at most one round of PROGRAMS_PER_SM programs per SM: a few programs past a whole round
    # (288 for 264 slots at 6144 tokens, session 26's first sweep) leave the GPU mostly idle
    want = splits or (PROGRAMS_PER_SM * (num_sms(dev) if dev.type == "cuda" else 4)) // n_mb
    per_prog = cdiv(n_nb, max(1, min(want, n_nb)))
    n_split = cdiv(n_nb, per_prog)
    # both partials in one allocation (eager calls pay host time per allocation)
    g_len, d_len = M * r, (N * r if u is not None else 0)
    part = torch.empty((n_split * g_len + n_mb * d_len,), device=dev, dtype=torch.float32)
    gpart, dpart = part[:n_split * g_len], (part[n_split * g_len:] if u is not None else part)
    unit = max(1, 16 // a.element_size())
    rs, (s_am,) = row_strides(a.element_size(), a.stride(0))
    # P is B (N, r) in the backward (unit column stride); a transposed view (unit row stride)
    # gets the hint on its other stride
    (rspn, rspr), (s_pn, s_pr) = _stride_hint(a.element_size(), p.stride(0), p.stride(1))
    uu = u if u is not None else p  # (unused without U)
    _PASS[(n_mb, n_split)](
        a, p, uu, gpart, dpart, M, N, per_prog, s_am, a.stride(1), s_pn, s_pr, uu.stride(0), uu.stride(1),
        R=r, HAS_U=u is not None, COL_WRAP=N % unit == 0, PREC="ieee" if dt == torch.float32 else "tf32", RS=rs,
        RSPN=rspn, RSPR=rspr,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=16,
        num_warps=1 if interp else NUM_WARPS, num_stages=1 if interp else NUM_STAGES,
    )
    g_progs = cdiv(g_len, SUM_BLOCK)
    _SUM[(g_progs + cdiv(d_len, SUM_BLOCK),)](
        gpart, dpart, g, d if d is not None else g, g_len, d_len, n_split, n_mb, g_progs, float(scale),
        BLOCK=SUM_BLOCK, BLOCK_S=SUM_SPLITS, num_warps=4,
    )
    if g_out is not None and g is not g_out:
        g_out.copy_(g)
        g = g_out
    return g, d
