# SPDX-License-Identifier: Apache-2.0
"""Triton kernels of the depthwise causal conv1d (+ SiLU) of a Mamba-2 block, forward and backward.

    pre[b, t, d] = bias[d] + Σ_k w[d, k] · x[b, t - (W-1) + k, d] · same(t, t - (W-1) + k)
    y            = act(pre)                  (0 for padding tokens, seq_idx < 0)

``same(t, s)`` is 1 when s ≥ 0 and (without seq_idx) always, with seq_idx when both tokens carry
the same label: packed sequences never see each other. Backward, with g = dy · act'(pre) (0 on
padding tokens):

    dx[s]   = Σ_k w[d, k] · g[s + (W-1) - k] · same(s + (W-1) - k, s)
    dw[d,k] = Σ_{b,t} g[t] · x[t - (W-1) + k] · same(t, t - (W-1) + k)
    dbias   = Σ_{b,t} g[t]

Kernels (grid: L-blocks × D-blocks × batch; x and dy take any strides, channels ideally unit
stride, i.e. the (B, L, D) activations of the block seen as (B, D, L)):
* ``_conv_fwd_kernel``: y.
* ``_conv_bwd_g_kernel``: recomputes pre, writes g (fp32) and per-program partial sums of dw and
  dbias (summed by torch afterwards: deterministic, no atomics).
* ``_conv_bwd_dx_kernel``: dx from g (a second pass so no program needs its neighbours' g).
All arithmetic in fp32; y and dx in x's dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.launch import fast_launch

__all__ = ["causal_conv1d_fwd_triton", "causal_conv1d_bwd_triton"]

BLOCK_L = 32
BLOCK_D = 128


@triton.jit
def _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W: tl.constexpr, HAS_SEQ: tl.constexpr):
    """x[t - (W-1) + k] for the rows t of the block, fp32; 0 before the start, past L and, with
    seq_idx, where the source token belongs to another sequence than t."""
    src = offs_l - (W - 1) + k
    ok = lmask & (src >= 0)
    if HAS_SEQ:
        ok = ok & (tl.load(seq_row + src, mask=ok, other=-2) == sid)
    xv = tl.load(x_base + src[:, None].to(tl.int64) * s_xl, mask=ok[:, None] & dmask[None, :], other=0.0)
    return xv.to(tl.float32)


@triton.jit
def _pre_activation(x_base, s_xl, w_ptr, b_ptr, seq_row, sid, offs_l, offs_d, lmask, dmask,
                    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
                    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """bias + Σ_k w[k] · x[t - (W-1) + k] over the block (fp32), before the activation."""
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    for k in tl.static_range(W):
        xv = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
        wk = tl.load(w_ptr + offs_d * W + k, mask=dmask, other=0.0)
        acc += xv * wk.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, seq_ptr, y_ptr,
    L, D,
    s_xb, s_xd, s_xl, s_yb, s_yl, s_sb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_l, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lmask = offs_l < L
    dmask = offs_d < D
    x_base = x_ptr + b * s_xb + offs_d[None, :].to(tl.int64) * s_xd
    seq_row = seq_ptr + b * s_sb
    if HAS_SEQ:
        sid = tl.load(seq_row + offs_l, mask=lmask, other=-1)
    else:
        sid = offs_l  # unused without seq_idx
    acc = _pre_activation(x_base, s_xl, w_ptr, b_ptr, seq_row, sid, offs_l, offs_d, lmask, dmask,
                          W, HAS_BIAS, HAS_SEQ, BLOCK_L, BLOCK_D)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    if HAS_SEQ:
        acc = tl.where((sid < 0)[:, None], 0.0, acc)
    y_ptrs = y_ptr + b * s_yb + offs_l[:, None].to(tl.int64) * s_yl + offs_d[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=lmask[:, None] & dmask[None, :])


_CONV_FWD = fast_launch(_conv_fwd_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _conv_bwd_g_kernel(
    x_ptr, w_ptr, b_ptr, seq_ptr, dy_ptr, g_ptr, dw_part_ptr, db_part_ptr,
    L, D, n_lblk,
    s_xb, s_xd, s_xl, s_dyb, s_dyd, s_dyl, s_sb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_l, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lmask = offs_l < L
    dmask = offs_d < D
    x_base = x_ptr + b * s_xb + offs_d[None, :].to(tl.int64) * s_xd
    seq_row = seq_ptr + b * s_sb
    if HAS_SEQ:
        sid = tl.load(seq_row + offs_l, mask=lmask, other=-1)
    else:
        sid = offs_l  # unused without seq_idx
    dy = tl.load(dy_ptr + b * s_dyb + offs_d[None, :].to(tl.int64) * s_dyd + offs_l[:, None].to(tl.int64) * s_dyl,
                 mask=lmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    if SILU:
        # recompute the pre-activation: act'(pre) = σ(pre)·(1 + pre·(1 - σ(pre)))
        pre = _pre_activation(x_base, s_xl, w_ptr, b_ptr, seq_row, sid, offs_l, offs_d, lmask, dmask,
                              W, HAS_BIAS, HAS_SEQ, BLOCK_L, BLOCK_D)
        sig = tl.sigmoid(pre)
        g = dy * sig * (1.0 + pre * (1.0 - sig))
    else:
        g = dy
    if HAS_SEQ:
        g = tl.where((sid < 0)[:, None], 0.0, g)
    g = tl.where(lmask[:, None] & dmask[None, :], g, 0.0)
    tl.store(g_ptr + b * L * D + offs_l[:, None].to(tl.int64) * D + offs_d[None, :], g,
             mask=lmask[:, None] & dmask[None, :])
    # this program's share of dw and dbias: row (b * n_lblk + pid_l) of the partial buffers
    part = b * n_lblk + pid_l
    if HAS_BIAS:
        tl.store(db_part_ptr + part * D + offs_d, tl.sum(g, axis=0), mask=dmask)
    for k in tl.static_range(W):
        xv = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
        tl.store(dw_part_ptr + (part * D + offs_d) * W + k, tl.sum(g * xv, axis=0), mask=dmask)


_CONV_BWD_G = fast_launch(_conv_bwd_g_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _conv_bwd_dx_kernel(
    g_ptr, w_ptr, seq_ptr, dx_ptr,
    L, D,
    s_dxb, s_dxl, s_sb,
    W: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_l, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lmask = offs_l < L
    dmask = offs_d < D
    if HAS_SEQ:
        sid = tl.load(seq_ptr + b * s_sb + offs_l, mask=lmask, other=-1)
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    for k in tl.static_range(W):
        dst = offs_l + (W - 1) - k  # the output that read token s through tap k
        ok = lmask & (dst < L)
        if HAS_SEQ:
            ok = ok & (tl.load(seq_ptr + b * s_sb + dst, mask=ok, other=-2) == sid)
        gv = tl.load(g_ptr + b * L * D + dst[:, None].to(tl.int64) * D + offs_d[None, :],
                     mask=ok[:, None] & dmask[None, :], other=0.0)
        wk = tl.load(w_ptr + offs_d * W + k, mask=dmask, other=0.0)
        acc += gv * wk.to(tl.float32)[None, :]
    dx_ptrs = dx_ptr + b * s_dxb + offs_l[:, None].to(tl.int64) * s_dxl + offs_d[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=lmask[:, None] & dmask[None, :])


_CONV_BWD_DX = fast_launch(_conv_bwd_dx_kernel)  # cheaper eager launches (samkern/launch.py)


def _grid(batch: int, L: int, D: int):
    return (triton.cdiv(L, BLOCK_L), triton.cdiv(D, BLOCK_D), batch)


def causal_conv1d_fwd_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor], silu: bool
) -> torch.Tensor:
    """x (B, D, L) any strides, weight (D, W) contiguous, bias (D,)?, seq_idx (B, L) int32? ->
    y (B, D, L): a transposed view of a (B, L, D) contiguous tensor (channel-last, like x in a block)."""
    batch, D, L = x.shape
    W = weight.shape[1]
    y = torch.empty((batch, L, D), device=x.device, dtype=x.dtype)
    seq = seq_idx if seq_idx is not None else x
    _CONV_FWD[_grid(batch, L, D)](
        x, weight, bias if bias is not None else weight, seq, y, L, D,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1),
        seq_idx.stride(0) if seq_idx is not None else 0,
        W=W, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu,
        BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D,
    )
    return y.transpose(1, 2)


def causal_conv1d_bwd_triton(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    seq_idx: Optional[torch.Tensor], silu: bool,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """dy, x (B, D, L) any strides -> dx (B, D, L) (channel-last view), dweight (D, W) fp32,
    dbias (D,) fp32 or None (cast to the parameters' dtype by the caller)."""
    batch, D, L = x.shape
    W = weight.shape[1]
    n_lblk = triton.cdiv(L, BLOCK_L)
    g = torch.empty((batch, L, D), device=x.device, dtype=torch.float32)
    dw_part = torch.empty((batch * n_lblk, D, W), device=x.device, dtype=torch.float32)
    db_part = torch.empty((batch * n_lblk, D), device=x.device, dtype=torch.float32) if bias is not None else None
    seq = seq_idx if seq_idx is not None else x
    s_sb = seq_idx.stride(0) if seq_idx is not None else 0
    _CONV_BWD_G[_grid(batch, L, D)](
        x, weight, bias if bias is not None else weight, seq, dy, g, dw_part,
        db_part if db_part is not None else dw_part, L, D, n_lblk,
        x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2), s_sb,
        W=W, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu,
        BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D,
    )
    dx = torch.empty((batch, L, D), device=x.device, dtype=x.dtype)
    _CONV_BWD_DX[_grid(batch, L, D)](
        g, weight, seq, dx, L, D, dx.stride(0), dx.stride(1), s_sb,
        W=W, HAS_SEQ=seq_idx is not None, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D,
    )
    dw = dw_part.sum(0)
    db = db_part.sum(0) if db_part is not None else None
    return dx.transpose(1, 2), dw, db
