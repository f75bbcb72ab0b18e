# SPDX-License-Identifier: Apache-2.0
"""Triton kernels of the SAM connector reorder (``time`` / ``freq`` modes).

Forward and token backward are row gathers: each program owns a (ROWS, BLOCK_D) tile of the
destination, computes the source row of each destination row from the index map (see
``ref.py``) and copies it, so results are bit-exact by construction (loads, a select and
stores; no arithmetic on the data). The separator gradient is a float32 sum in the canonical
order of :func:`samkern.ops.connector.ref.connector_reorder_bwd_ref`: an explicit
sequential loop (never ``tl.sum``, whose tree order differs), first over separators per batch
element, then over the batch.

Shapes: tokens (B, T·F, D); sep (D,); out (B, T·(F+1), D) [time] or (B, F·(T+1), D) [freq];
grad_tokens like tokens; grad_sep like sep; workspace (B, D) float32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.ops.connector.ref import out_rows

__all__ = ["connector_reorder_fwd_triton", "connector_reorder_bwd_triton"]

_MODE_ID = {"time": 1, "freq": 2}


@triton.jit
def _fwd_kernel(
    out_ptr, tok_ptr, sep_ptr,
    total_rows, R_out, N_tok, D, T, F,
    MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # flat (b, r) output rows
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = rows // R_out
    r = rows - b * R_out
    if MODE == 1:  # time-major: row t*(F+1)+f <- token t*F+f, row t*(F+1)+F <- sep
        t = r // (F + 1)
        j = r - t * (F + 1)
        is_sep = j == F
        src = t * F + j
    else:  # freq-major: row f*(T+1)+t <- token t*F+f, row f*(T+1)+T <- sep
        f = r // (T + 1)
        j = r - f * (T + 1)
        is_sep = j == T
        src = j * F + f
    row_ok = rows < total_rows
    d_ok = d < D
    x = tl.load(
        tok_ptr + (b * N_tok + src)[:, None] * D + d[None, :],
        mask=(row_ok & (is_sep == 0))[:, None] & d_ok[None, :],
    )
    s = tl.load(sep_ptr + d, mask=d_ok)
    y = tl.where(is_sep[:, None], s[None, :], x)  # a select: bits pass through unchanged
    tl.store(out_ptr + rows[:, None] * D + d[None, :], y, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_tokens_kernel(
    gtok_ptr, gout_ptr,
    total_rows, R_out, N_tok, D, T, F,
    MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # flat (b, n) token rows
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = rows // N_tok
    n = rows - b * N_tok
    t = n // F
    f = n - t * F
    if MODE == 1:
        src = t * (F + 1) + f
    else:
        src = f * (T + 1) + t
    mask = (rows < total_rows)[:, None] & (d < D)[None, :]
    g = tl.load(gout_ptr + (b * R_out + src)[:, None] * D + d[None, :], mask=mask)
    tl.store(gtok_ptr + rows[:, None] * D + d[None, :], g, mask=mask)


@triton.jit
def _sep_partial_kernel(
    part_ptr, gout_ptr,
    R_out, D, n_sep, sep_first, sep_stride,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    base = gout_ptr + (b * R_out + sep_first) * D + d
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s in range(0, n_sep):  # sequential: the canonical order
        acc = acc + tl.load(base + s * sep_stride * D, mask=d_ok, other=0.0).to(tl.float32)
    tl.store(part_ptr + b * D + d, acc, mask=d_ok)


@triton.jit
def _sep_final_kernel(gsep_ptr, part_ptr, B, D, OUT_BF16: tl.constexpr, BLOCK_D: tl.constexpr):
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for b in range(0, B):  # sequential over the batch: the canonical order
        acc = acc + tl.load(part_ptr + b * D + d, mask=d_ok, other=0.0)
    if OUT_BF16:
        # Round to nearest even by hand, exactly like torch / __float2bfloat16_rn. The compiled
        # cast does the same, but the Triton interpreter's fp32->bf16 cast truncates, and the
        # CPU tests must see the real bits.
        bits = acc.to(tl.uint32, bitcast=True)
        rne = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rne = tl.where(acc != acc, 0x7FC0, rne)  # NaN stays a quiet NaN
        tl.store(gsep_ptr + d, rne.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=d_ok)
    else:
        tl.store(gsep_ptr + d, acc.to(gsep_ptr.dtype.element_ty), mask=d_ok)


def _block_d(D: int) -> int:
    """A power-of-two column tile: the largest one in [128, 1024] dividing D (no masked lanes,
    e.g. 256 for D=768, 512 for D=2560), else the next power of two of D capped at 1024."""
    for cand in (1024, 512, 256, 128):
        if D % cand == 0:
            return cand
    return min(triton.next_power_of_2(D), 1024)


def _tile(D: int) -> Tuple[int, int]:
    block_d = _block_d(D)
    rows = max(1, 4096 // block_d)  # ~4K elements per program
    return rows, block_d


def connector_reorder_fwd_triton(
    tokens: torch.Tensor, sep: torch.Tensor, mode: str, n_time: int, n_freq: int
) -> torch.Tensor:
    """tokens (B, T·F, D) contiguous, sep (D,) contiguous -> out (B, out_rows, D)."""
    B, N, D = tokens.shape
    R = out_rows(mode, n_time, n_freq)
    out = torch.empty((B, R, D), dtype=tokens.dtype, device=tokens.device)
    rows, block_d = _tile(D)
    grid = (triton.cdiv(B * R, rows), triton.cdiv(D, block_d))
    _fwd_kernel[grid](
        out, tokens, sep, B * R, R, N, D, n_time, n_freq,
        MODE=_MODE_ID[mode], ROWS=rows, BLOCK_D=block_d, num_warps=4,
    )
    return out


def connector_reorder_bwd_triton(
    grad_out: torch.Tensor,
    mode: str,
    n_time: int,
    n_freq: int,
    sep_dtype: Optional[torch.dtype] = None,
    need_tokens: bool = True,
    need_sep: bool = True,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """grad_out (B, out_rows, D) contiguous -> (grad_tokens (B, T·F, D), grad_sep (D,))."""
    B, R, D = grad_out.shape
    N = n_time * n_freq
    grad_tokens = grad_sep = None
    if need_tokens:
        grad_tokens = torch.empty((B, N, D), dtype=grad_out.dtype, device=grad_out.device)
        rows, block_d = _tile(D)
        grid = (triton.cdiv(B * N, rows), triton.cdiv(D, block_d))
        _bwd_tokens_kernel[grid](
            grad_tokens, grad_out, B * N, R, N, D, n_time, n_freq,
            MODE=_MODE_ID[mode], ROWS=rows, BLOCK_D=block_d, num_warps=4,
        )
    if need_sep:
        n_sep, first = (n_time, n_freq) if mode == "time" else (n_freq, n_time)
        part = torch.empty((B, D), dtype=torch.float32, device=grad_out.device)
        grad_sep = torch.empty((D,), dtype=sep_dtype or grad_out.dtype, device=grad_out.device)
        block_d = min(triton.next_power_of_2(D), 256)
        _sep_partial_kernel[(B, triton.cdiv(D, block_d))](
            part, grad_out, R, D, n_sep, first, first + 1, BLOCK_D=block_d, num_warps=2
        )
        _sep_final_kernel[(triton.cdiv(D, block_d),)](
            grad_sep, part, B, D, OUT_BF16=grad_sep.dtype == torch.bfloat16, BLOCK_D=block_d, num_warps=2
        )
    return grad_tokens, grad_sep
