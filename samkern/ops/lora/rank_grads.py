# SPDX-License-Identifier: Apache-2.0
"""The LoRA backward's two rank-r weight gradients in one Triton launch (plus a small sum):

    dA = g_sᵀ x        (r, K)      g_s = s·dy B  (M, r),  x  (M, K)
    dB = dyᵀ u_s       (N, r)      u_s = s·x Aᵀ  (M, r),  dy (M, N)

Both are "skinny" GEMMs: a long reduction over the M tokens, a small output. cuBLAS runs them as
split-K GEMMs with a separate reduction kernel, and at r = 8 they cost a fifth to a quarter of a
frozen-base fwd+bwd (H100, 6144 tokens, bf16, ``dev-runs/s23-call4-lora-profile.log``: 768→3352
dA + dB + the split-K reduction ~48 us of 183, 1536→768 ~22 of 103) while their floor is one read
of x and of dy. Here they are one problem ``out[c, j] = Σ_m R[m, c] L[m, j]`` solved twice (R = x,
L = g_s gives dAᵀ; R = dy, L = u_s gives dB) by one launch: program ``(j-block, c-block, split)``
streams its rows of R once (every element of x and dy is read by exactly one program) and
accumulates ``Rᵀ L`` as a [BLOCK_C, BLOCK_R] fp32 tile (``tl.trans`` of a loaded tile only; no dot
result is ever transposed: the Triton 3.6 Hopper miscompile). Where the column blocks alone
cannot fill the GPU the M range is split; the splits' fp32 partials are summed in a fixed order by
a second small launch (deterministic: no atomics), which also casts and stores through the
outputs' strides (dA is written transposed). Without a split the first launch stores directly.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv, next_pow2, num_sms, row_strides
from samkern.launch import fast_launch

__all__ = ["lora_rank_grads", "rank_grads_enabled"]

# Launch settings (module constants, so that a sweep script can set them)
BLOCK_M = 128  # rows per step of the M stream
BLOCK_C = 64  # output columns (K of dA, N of dB) per program
MAX_BLOCK_R = 64  # rank columns per program (r > 64: more programs, which share the R tiles in L2)
NUM_WARPS = 4
NUM_STAGES = 3
PROGRAMS_PER_SM = 2  # the M split aims at this many programs per SM
MIN_SPLIT_ROWS = 256  # rows per split at least this many (a shorter stream cannot fill the pipeline)


@triton.jit
def _rank_grads_kernel(
    l_ptr, r_ptr, o_ptr, part_ptr,
    M, C, ROWS,
    s_lm, s_lr, s_rm, s_rc, s_oc, s_or,
    R: tl.constexpr, DIRECT: tl.constexpr, PREC: tl.constexpr, RS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``out[c, j] = Σ_m R[m, c] L[m, j]`` for one (j-block, c-block, M split) of one problem;
    the row strides come divided by RS (``samkern.backend.row_stride_unit``: 16-byte aligned rows
    of 3352 or 8 elements would otherwise be read 2 bytes at a time, unpipelined);
    DIRECT: stored into the output (its dtype and strides), else fp32 partials at rows
    ``split · C + c`` of ``part``. One problem per launch: selecting the operands by program id
    (one launch for both) lost Triton the pointers' alignment, and the loads were no longer
    pipelined (offline PTX); each problem also needs its own M split to fill the GPU."""
    pid_r = tl.program_id(0)  # fastest: the j-blocks of one column block share its R tiles in L2
    cb = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mc = offs_c < C
    mr = offs_r < R  # R is a constexpr: the mask is uniform over 16-byte groups (vector loads)
    # columns past C wrapped onto valid ones: the R tiles' loads need no column mask (a runtime
    # column mask kept Triton from pipelining them with asynchronous copies, offline PTX); those
    # columns' sums are never stored
    cols = tl.max_contiguous(tl.multiple_of(offs_c % C, BLOCK_C), BLOCK_C)
    m0 = pid_s * ROWS
    m_end = tl.minimum(m0 + ROWS, M)
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    for m in range(m0, m_end, BLOCK_M):
        rows = m + offs_m
        mm = rows < m_end
        rows64 = rows.to(tl.int64) * RS
        rt = tl.load(r_ptr + rows64[:, None] * s_rm + cols[None, :] * s_rc, mask=mm[:, None], other=0.0)
        lt = tl.load(l_ptr + rows64[:, None] * s_lm + offs_r[None, :] * s_lr, mask=mm[:, None] & mr[None, :], other=0.0)
        acc = tl.dot(tl.trans(rt), lt, acc, input_precision=PREC)
    msk = mc[:, None] & mr[None, :]
    if DIRECT:
        tl.store(o_ptr + offs_c[:, None] * s_oc + offs_r[None, :] * s_or, acc.to(o_ptr.dtype.element_ty), mask=msk)
    else:
        rp = tl.num_programs(0) * BLOCK_R
        row = (pid_s * C + offs_c).to(tl.int64)
        tl.store(part_ptr + row[:, None] * rp + offs_r[None, :], acc, mask=msk)


@triton.jit
def _rank_grads_sum_kernel(
    part_ptr, o_ptr, C, NSPLIT, s_oc, s_or,
    R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Sum one problem's split partials (BLOCK_S splits per load: a loop of one dependent load
    per split was latency-bound with few column blocks), cast, store through the output's
    strides. The summation order is fixed by the shapes: bitwise reproducible."""
    pid_r = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_s = tl.arange(0, BLOCK_S)
    rp = tl.num_programs(0) * BLOCK_R
    msk = (offs_c < C)[:, None] & (offs_r < R)[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    for s0 in range(0, NSPLIT, BLOCK_S):
        sp = s0 + offs_s
        row = (sp[:, None] * C + offs_c[None, :]).to(tl.int64)
        t = tl.load(part_ptr + row[:, :, None] * rp + offs_r[None, None, :],
                    mask=(sp < NSPLIT)[:, None, None] & msk[None, :, :], other=0.0)
        acc += tl.sum(t, axis=0)
    tl.store(o_ptr + offs_c[:, None] * s_oc + offs_r[None, :] * s_or, acc.to(o_ptr.dtype.element_ty), mask=msk)


_GRADS = fast_launch(_rank_grads_kernel)
_SUM = fast_launch(_rank_grads_sum_kernel)


def rank_grads_enabled(t: torch.Tensor) -> bool:
    """Whether :func:`lora_rank_grads` takes dA / dB for inputs like ``t``: 16-bit CUDA tensors
    (fp32 goes to cuBLAS, as the GEMMs do: Triton's exact fp32 dot is emulated) and anything in
    the CPU interpreter, unless ``SAMKERN_LORA_RANK_GRADS=cublas``."""
    if os.environ.get("SAMKERN_LORA_RANK_GRADS", "triton") == "cublas":
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    return t.is_cuda and t.dtype in (torch.float16, torch.bfloat16)


def _splits(M: int, n_programs: int, device: torch.device) -> int:
    """M splits so that the grid has about PROGRAMS_PER_SM programs per SM, each streaming ≥
    MIN_SPLIT_ROWS rows."""
    sms = num_sms(device) if device.type == "cuda" else 4  # (the CPU interpreter: a few splits)
    want = cdiv(PROGRAMS_PER_SM * sms, n_programs)
    return max(1, min(want, M // MIN_SPLIT_ROWS))


def _skinny(lmat: torch.Tensor, rmat: torch.Tensor, out: torch.Tensor, so: Tuple[int, int], splits: int) -> None:
    """``out[c, j] = Σ_m rmat[m, c] lmat[m, j]`` through ``out``'s strides ``so`` = (c, j)."""
    M, r = lmat.shape
    C = rmat.shape[1]
    dev = rmat.device
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    block_r = min(MAX_BLOCK_R, max(16, next_pow2(r)))
    block_c = 32 if interp else BLOCK_C  # small tiles keep the interpreter fast
    block_m = 16 if interp else BLOCK_M
    n_r, ncb = cdiv(r, block_r), cdiv(C, block_c)
    nsplit = splits or _splits(M, n_r * ncb, dev)
    rows = cdiv(cdiv(M, nsplit), block_m) * block_m
    nsplit = cdiv(M, rows)
    direct = nsplit == 1
    part = out if direct else torch.empty((nsplit * C, n_r * block_r), device=dev, dtype=torch.float32)
    rs, (s_lm, s_rm) = row_strides(rmat.element_size(), lmat.stride(0), rmat.stride(0))
    _GRADS[(n_r, ncb, nsplit)](
        lmat, rmat, out, part, M, C, rows, s_lm, lmat.stride(1), s_rm, rmat.stride(1), *so,
        R=r, DIRECT=direct, PREC="ieee" if rmat.dtype == torch.float32 else "tf32", RS=rs,
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_R=block_r,
        num_warps=1 if interp else NUM_WARPS, num_stages=1 if interp else NUM_STAGES,
    )
    if not direct:
        sum_c = 16  # small column blocks: many programs for a small job
        _SUM[(n_r, cdiv(C, sum_c))](part, out, C, nsplit, *so, R=r, BLOCK_S=8, BLOCK_C=sum_c, BLOCK_R=block_r,
                                    num_warps=1 if interp else 4)


def lora_rank_grads(g_s: torch.Tensor, x: torch.Tensor, u_s: torch.Tensor, dy: torch.Tensor,
                    splits: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dA, dB) = (g_sᵀ x, dyᵀ u_s)``: g_s, u_s (M, r), x (M, K), dy (M, N), one dtype, any
    strides; returns dA (r, K) and dB (N, r) in that dtype (fp32 accumulation). ``splits`` > 0
    forces the number of M splits (tests); 0 = the heuristic."""
    M, r = g_s.shape
    K, N = x.shape[1], dy.shape[1]
    dev = x.device
    dA = torch.empty((r, K), device=dev, dtype=x.dtype)
    dB = torch.empty((N, r), device=dev, dtype=x.dtype)
    if M == 0:
        return dA.zero_(), dB.zero_()
    # dAᵀ = xᵀ g_s: element (k, j) of dAᵀ is dA[j, k] (stored through dA's strides, transposed)
    _skinny(g_s, x, dA, (dA.stride(1), dA.stride(0)), splits)
    _skinny(u_s, dy, dB, (dB.stride(0), dB.stride(1)), splits)
    return dA, dB
