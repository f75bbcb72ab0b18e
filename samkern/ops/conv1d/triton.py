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
* ``_conv_bwd_kernel``: dx. Programs overlap by W-1 rows so that the g each dx row needs is
  inside the program's own tile (``tl.gather``): nothing but dx is written (for convs wider than
  four taps it also writes the dw/dbias partial sums).
* ``_conv_dw_kernel``: per-program partial sums of dw and dbias over 256-row spans (convs of at
  most four taps), products accumulated elementwise, one reduction per program.
* ``_conv_dw_reduce_kernel``: the partials summed in a fixed order (deterministic, no atomics)
  into the parameters' dtype and (D, W) layout.
The gradient may arrive as three tensors (x, B, C of a block: ``conv_split``), read in place.
All arithmetic in fp32; y and dx in x's dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from samkern.backend import next_pow2, row_strides
from samkern.launch import fast_launch

__all__ = ["causal_conv1d_fwd_triton", "causal_conv1d_bwd_triton"]

BLOCK_L = 32
BLOCK_D = 128
# the dx kernel's tile: 32 rows of g (29 output rows at width 4) x 128 channels, 4 warps (of
# 64x64, 32x128, 64x32: fastest at three of four shapes, 1 us behind 64x64 at B8 L640, s9-call7)
BWD_BLOCK_L = 32
BWD_BLOCK_D = 128
BWD_NUM_WARPS = 4
# the dw/db partial sums (convs of <= 4 taps): a program sums DW_ROWS rows (fewer for shorter
# sequences) in tiles of DW_BLOCK_L rows x DW_BLOCK_D channels
DW_BLOCK_L = 16
DW_BLOCK_D = 64
DW_NUM_WARPS = 4
DW_ROWS = 256  # (16, 64, 4 warps, 256): fastest or within 2 % at all four shapes (s9-call7)
# software-pipelining depth of the dw kernel's row loop (tl.range num_stages: the next tiles' x / dy
# loads issued as asynchronous copies while this tile is summed); 1 = not pipelined
DW_NUM_STAGES = 4
# the dw/db reduction: channels per program, partial rows per step
REDUCE_BLOCK_D = 16
REDUCE_BLOCK_P = 64


@triton.jit
def _times(stride, unit: tl.constexpr):
    # int64: a batch stride passed divided by ``unit`` can fit int32 when the product does not
    return stride.to(tl.int64) * unit


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
def _tap_or(fallback, x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k: tl.constexpr, W: tl.constexpr,
            HAS_SEQ: tl.constexpr):
    """Tap k (``_load_tap``) when the conv has one, else ``fallback`` (never used then)."""
    out = fallback
    if k < W:
        out = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
    return out


@triton.jit
def _tap_dot(g, xk, w_ptr, offs_d, dmask, k: tl.constexpr, W: tl.constexpr):
    """Σ_k w[k] · tap_k term of tap k (0 when the conv has no tap k)."""
    out = tl.zeros_like(g)
    if k < W:
        out = xk * tl.load(w_ptr + offs_d * W + k, mask=dmask, other=0.0).to(tl.float32)[None, :]
    return out


@triton.jit
def _store_dw_part(dw_row, D, g, xk, offs_d, dmask, k: tl.constexpr, W: tl.constexpr):
    """Σ_rows g · tap_k into row k of this program's (W, D) partial block (nothing without tap k)."""
    if k < W:
        tl.store(dw_row + k * D + offs_d, tl.sum(g * xk, axis=0), mask=dmask)


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, seq_ptr, y_ptr,
    L, D,
    s_xb, s_xd, s_xl, s_yb, s_yl, s_sb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, RS: tl.constexpr,
):
    if RS > 1:  # row / batch strides arrive divided by RS (samkern.backend.row_stride_unit)
        s_xb, s_xl, s_yb, s_yl = _times(s_xb, RS), _times(s_xl, RS), _times(s_yb, RS), _times(s_yl, RS)
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
def _load_dy_segment(dy_ptr, s_b, s_d, s_l, b, offs_l, ch, ok):
    """dy at channels ``ch`` (relative to the segment's first) of the rows offs_l, fp32, 0 off ``ok``."""
    ptrs = dy_ptr + b * s_b + ch[None, :].to(tl.int64) * s_d + offs_l[:, None].to(tl.int64) * s_l
    return tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _grad_tile(
    x_base, s_xl, w_ptr, b_ptr, seq_row, sid, dy_ptr, dy1_ptr, dy2_ptr, b,
    s_dyb, s_dyd, s_dyl, s_dy1b, s_dy1d, s_dy1l, s_dy2b, s_dy2d, s_dy2l, D1, D2,
    offs_l, offs_d, lmask, dmask,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    SPLIT_DY: tl.constexpr, TAPS: tl.constexpr,
):
    """g = dy · act'(pre) of a [rows, channels] tile (fp32; 0 on padding and off the masks), and the
    tile's first four x taps (loaded once, held: the pre-activation and the dw sums both need
    them; ``g`` stands in for taps not loaded). Taps past the fourth are reloaded where used.

    With SPLIT_DY, dy arrives as three tensors: channels [0, D1) in dy, [D1, D2) in dy1, [D2, D)
    in dy2 (the x, B and C of a Mamba-2 block, split after the conv), read in place."""
    ok = lmask[:, None] & dmask[None, :]
    if SPLIT_DY:
        # three masked loads, each channel read from exactly one tensor: faster than branching on
        # the tile's place (one load for a tile inside one tensor) by 10-12 % and than torch.cat +
        # one tensor by 5-6 % (``dev-runs/s9-call8-*``)
        g = _load_dy_segment(dy_ptr, s_dyb, s_dyd, s_dyl, b, offs_l, offs_d, ok & (offs_d < D1)[None, :])
        g += _load_dy_segment(dy1_ptr, s_dy1b, s_dy1d, s_dy1l, b, offs_l, offs_d - D1,
                              ok & ((offs_d >= D1) & (offs_d < D2))[None, :])
        g += _load_dy_segment(dy2_ptr, s_dy2b, s_dy2d, s_dy2l, b, offs_l, offs_d - D2, ok & (offs_d >= D2)[None, :])
    else:
        g = _load_dy_segment(dy_ptr, s_dyb, s_dyd, s_dyl, b, offs_l, offs_d, ok)
    x0 = g
    x1 = g
    x2 = g
    x3 = g
    if TAPS:
        x0 = _tap_or(g, x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, 0, W, HAS_SEQ)
        x1 = _tap_or(g, x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, 1, W, HAS_SEQ)
        x2 = _tap_or(g, x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, 2, W, HAS_SEQ)
        x3 = _tap_or(g, x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, 3, W, HAS_SEQ)
    if SILU:
        # recompute the pre-activation: act'(pre) = σ(pre)·(1 + pre·(1 - σ(pre)))
        pre = (_tap_dot(g, x0, w_ptr, offs_d, dmask, 0, W) + _tap_dot(g, x1, w_ptr, offs_d, dmask, 1, W)
               + _tap_dot(g, x2, w_ptr, offs_d, dmask, 2, W) + _tap_dot(g, x3, w_ptr, offs_d, dmask, 3, W))
        for k in tl.static_range(4, W):
            xk = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
            pre += _tap_dot(g, xk, w_ptr, offs_d, dmask, k, W)
        if HAS_BIAS:
            pre += tl.load(b_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
        sig = tl.sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
    if HAS_SEQ:
        g = tl.where((sid < 0)[:, None], 0.0, g)  # padding tokens have no gradient
    g = tl.where(ok, g, 0.0)
    return g, x0, x1, x2, x3


@triton.jit
def _store_dw_sums(dw_row, db_row, D, s0, s1, s2, s3, sb, offs_d, dmask, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Row sums of the tap products s0..s3 (and of g, ``sb``) into one (W, D) partial row: the four
    in one reduction over a [rows, channels, 2, 2] stack (four separate cross-warp reductions cost
    ~7 us more at 130m B32 L192, ``dev-runs/s9-call5-*``); element [.., d, i, j] is tap 2j + i."""
    sums = tl.sum(tl.join(tl.join(s0, s1), tl.join(s2, s3)), axis=0)  # [BLOCK_D, 2, 2]
    ij = tl.arange(0, 2)
    tap = ij[None, :, None] + 2 * ij[None, None, :]
    tl.store(dw_row + tap * D + offs_d[:, None, None], sums, mask=dmask[:, None, None] & (tap < W))
    if HAS_BIAS:
        tl.store(db_row + offs_d, tl.sum(sb, axis=0), mask=dmask)


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, b_ptr, seq_ptr, dy_ptr, dy1_ptr, dy2_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    L, D, D1, D2,
    s_xb, s_xd, s_xl, s_dyb, s_dyd, s_dyl, s_dy1b, s_dy1d, s_dy1l, s_dy2b, s_dy2d, s_dy2l, s_dxb, s_dxl, s_sb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    SPLIT_DY: tl.constexpr, NEED_DW: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, RS: tl.constexpr,
):
    """dx of one tile of rows (and with NEED_DW this program's partial sums of dw and dbias: the
    fused form, used for convs wider than 4 taps; ``_conv_dw_kernel`` makes them otherwise).

    dx[s] reads g at the W-1 rows after s. A program computes g for BLOCK_L rows and outputs the
    first STEP = BLOCK_L - (W-1) of them (the last W-1 are a halo the next program outputs), so
    the shifted g comes from the tile itself through ``tl.gather``: nothing but dx (and the
    partials) is written. (The earlier designs: g stored in fp32 and read back by a second kernel,
    2.2-2.6x slower than causal-conv1d's backward; g recomputed for each of the W shifts, slower
    still, ``dev-runs/s8-call5-*``, ``s8-call6-*``.)"""
    STEP: tl.constexpr = BLOCK_L - (W - 1)
    if RS > 1:  # row / batch strides arrive divided by RS (samkern.backend.row_stride_unit)
        s_xb, s_xl = _times(s_xb, RS), _times(s_xl, RS)
        s_dyb, s_dyl, s_dy1b = _times(s_dyb, RS), _times(s_dyl, RS), _times(s_dy1b, RS)
        s_dy1l, s_dy2b, s_dy2l = _times(s_dy1l, RS), _times(s_dy2b, RS), _times(s_dy2l, RS)
        s_dxb, s_dxl = _times(s_dxb, RS), _times(s_dxl, RS)
    pid_l, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    r = tl.arange(0, BLOCK_L)
    offs_l = pid_l * STEP + r
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lmask = offs_l < L
    dmask = offs_d < D
    own = lmask & (r < STEP)  # the rows this program outputs and sums
    x_base = x_ptr + b * s_xb + offs_d[None, :].to(tl.int64) * s_xd
    seq_row = seq_ptr + b * s_sb
    if HAS_SEQ:
        sid = tl.load(seq_row + offs_l, mask=lmask, other=-1)
    else:
        sid = offs_l  # unused without seq_idx
    g, x0, x1, x2, x3 = _grad_tile(
        x_base, s_xl, w_ptr, b_ptr, seq_row, sid, dy_ptr, dy1_ptr, dy2_ptr, b,
        s_dyb, s_dyd, s_dyl, s_dy1b, s_dy1d, s_dy1l, s_dy2b, s_dy2d, s_dy2l, D1, D2,
        offs_l, offs_d, lmask, dmask, W, HAS_BIAS, HAS_SEQ, SILU, SPLIT_DY, SILU or NEED_DW)

    if NEED_DW:
        # this program's share of dw and dbias: row (b * n_lblk + pid_l) of the partial buffers,
        # (W, D) per row so that the stores run along the channels
        g_own = tl.where(own[:, None], g, 0.0)
        part = b * tl.num_programs(0) + pid_l
        dw_row = dw_part_ptr + part * W * D
        _store_dw_sums(dw_row, db_part_ptr + part * D, D, g_own * x0, g_own * x1, g_own * x2, g_own * x3, g_own,
                       offs_d, dmask, W, HAS_BIAS)
        for k in tl.static_range(4, W):
            xk = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
            _store_dw_part(dw_row, D, g_own, xk, offs_d, dmask, k, W)

    # dx[t] = Σ_j w[W-1-j] · g[t+j] · same(t+j, t); rows t < STEP find t+j inside the tile
    dx = g * tl.load(w_ptr + offs_d * W + (W - 1), mask=dmask, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(1, W):
        src = tl.minimum(r + j, BLOCK_L - 1)  # clamped only for halo rows, whose dx is not stored
        gj = tl.gather(g, src[:, None] + tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.int32), axis=0)
        if HAS_SEQ:
            gj = tl.where((tl.gather(sid, src, axis=0) != sid)[:, None], 0.0, gj)
        dx += gj * tl.load(w_ptr + offs_d * W + (W - 1 - j), mask=dmask, other=0.0).to(tl.float32)[None, :]
    dx_ptrs = dx_ptr + b * s_dxb + offs_l[:, None].to(tl.int64) * s_dxl + offs_d[None, :]
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=own[:, None] & dmask[None, :])


_CONV_BWD = fast_launch(_conv_bwd_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _conv_dw_kernel(
    x_ptr, w_ptr, b_ptr, seq_ptr, dy_ptr, dy1_ptr, dy2_ptr, dw_part_ptr, db_part_ptr,
    L, D, D1, D2, ROWS,
    s_xb, s_xd, s_xl, s_dyb, s_dyd, s_dyl, s_dy1b, s_dy1d, s_dy1l, s_dy2b, s_dy2d, s_dy2l, s_sb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    SPLIT_DY: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr,
    RS: tl.constexpr,
):
    """Partial sums of dw and dbias over ROWS rows (a multiple of BLOCK_L) of one batch row and
    one channel block, for convs of at most four taps: g and the taps are recomputed tile by tile
    (``_grad_tile``) and the products accumulated elementwise, so the cross-warp row reduction
    runs once per program, not once per tile. (Summing inside the dx kernel cost that kernel 2.3x
    its dx-only time at 130m B32 L192: ``dev-runs/s9-call6-*``.)"""
    if RS > 1:  # row / batch strides arrive divided by RS (samkern.backend.row_stride_unit)
        s_xb, s_xl = _times(s_xb, RS), _times(s_xl, RS)
        s_dyb, s_dyl, s_dy1b = _times(s_dyb, RS), _times(s_dyl, RS), _times(s_dy1b, RS)
        s_dy1l, s_dy2b, s_dy2l = _times(s_dy1l, RS), _times(s_dy2b, RS), _times(s_dy2l, RS)
    pid_l, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    x_base = x_ptr + b * s_xb + offs_d[None, :].to(tl.int64) * s_xd
    seq_row = seq_ptr + b * s_sb
    a0 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    a1 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    a2 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    a3 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    ab = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    start = pid_l * ROWS
    for r0 in tl.range(0, ROWS, BLOCK_L, num_stages=NUM_STAGES):
        offs_l = start + r0 + tl.arange(0, BLOCK_L)
        lmask = offs_l < L
        if HAS_SEQ:
            sid = tl.load(seq_row + offs_l, mask=lmask, other=-1)
        else:
            sid = offs_l  # unused without seq_idx
        g, x0, x1, x2, x3 = _grad_tile(
            x_base, s_xl, w_ptr, b_ptr, seq_row, sid, dy_ptr, dy1_ptr, dy2_ptr, b,
            s_dyb, s_dyd, s_dyl, s_dy1b, s_dy1d, s_dy1l, s_dy2b, s_dy2d, s_dy2l, D1, D2,
            offs_l, offs_d, lmask, dmask, W, HAS_BIAS, HAS_SEQ, SILU, SPLIT_DY, True)
        a0 += g * x0
        a1 += g * x1
        a2 += g * x2
        a3 += g * x3
        ab += g
    part = b * tl.num_programs(0) + pid_l
    _store_dw_sums(dw_part_ptr + part * W * D, db_part_ptr + part * D, D, a0, a1, a2, a3, ab, offs_d, dmask,
                   W, HAS_BIAS)


_CONV_DW = fast_launch(_conv_dw_kernel)


@triton.jit
def _conv_dw_reduce_kernel(
    dw_part_ptr, db_part_ptr, dw_ptr, db_ptr, P, D,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dw[d, k] = Σ_p dw_part[p, k, d] and db[d] = Σ_p db_part[p, d] (fp32, a fixed order: the
    same bits every run), stored in the parameters' dtype and (D, W) layout: one launch in place
    of a sum, a transpose-copy and a cast for each of the two. BLOCK_P partial rows per step:
    a loop of one row per step left the loads latency-bound (100+ us at 130m B32 L192, 128
    partial rows, ``dev-runs/s9-call1-*``)."""
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    dmask = offs_d < D
    for k in tl.static_range(W):
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            rows = p0 + offs_p
            m = (rows < P)[:, None] & dmask[None, :]
            acc += tl.sum(tl.load(dw_part_ptr + (rows[:, None] * W + k) * D + offs_d[None, :], mask=m, other=0.0), axis=0)
        tl.store(dw_ptr + offs_d * W + k, acc.to(dw_ptr.dtype.element_ty), mask=dmask)
    if HAS_BIAS:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            rows = p0 + offs_p
            m = (rows < P)[:, None] & dmask[None, :]
            acc += tl.sum(tl.load(db_part_ptr + rows[:, None] * D + offs_d[None, :], mask=m, other=0.0), axis=0)
        tl.store(db_ptr + offs_d, acc.to(db_ptr.dtype.element_ty), mask=dmask)


_CONV_DW_REDUCE = fast_launch(_conv_dw_reduce_kernel)


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
    rs, (s_xb, s_xl, s_yb, s_yl) = row_strides(x.element_size(), x.stride(0), x.stride(2), y.stride(0), y.stride(1))
    _CONV_FWD[_grid(batch, L, D)](
        x, weight, bias if bias is not None else weight, seq, y, L, D,
        s_xb, x.stride(1), s_xl, s_yb, s_yl,
        seq_idx.stride(0) if seq_idx is not None else 0,
        W=W, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu,
        BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, RS=rs,
    )
    return y.transpose(1, 2)


def causal_conv1d_bwd_triton(
    dy: Union[torch.Tensor, Sequence[torch.Tensor]], x: torch.Tensor, weight: torch.Tensor,
    bias: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor], silu: bool, *,
    need_dw: bool = True, dx_out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of the conv.

    dy: (B, D, L) any strides, or three (B, D_k, L) tensors holding channels in order (split
    outputs' gradients: read in place). x (B, D, L) any strides. ``dx_out``: a (B, L, D) tensor
    with unit channel stride (e.g. a column slice of a larger gradient) to write dx into; else a
    new one. Returns dx (B, D, L) (channel-last view), dweight (D, W) and dbias (D,) in the
    weight's and bias's dtypes, or None for both when ``need_dw`` is False (dbias also None
    without a bias)."""
    batch, D, L = x.shape
    W = weight.shape[1]
    dys = tuple(dy) if isinstance(dy, (tuple, list)) else (dy,)
    if len(dys) not in (1, 3) or sum(t.shape[1] for t in dys) != D:
        raise ValueError(f"dy must be one (B, D, L) tensor or three splitting D={D}, got {[tuple(t.shape) for t in dys]}")
    split = len(dys) == 3
    d1 = dys[0].shape[1]
    d2 = d1 + (dys[1].shape[1] if split else 0)
    dy0, dy1, dy2 = dys if split else (dys[0], dys[0], dys[0])
    block_l_min, block_d, warps = BWD_BLOCK_L, BWD_BLOCK_D, BWD_NUM_WARPS  # module globals: sweeps set them
    # rows of g per program: a power of two; each program outputs all but the last W-1 of them
    block_l = max(block_l_min, next_pow2(2 * W))
    n_lblk = triton.cdiv(L, block_l - (W - 1))
    if dx_out is None:
        dx_out = torch.empty((batch, L, D), device=x.device, dtype=x.dtype)
    elif dx_out.shape != (batch, L, D) or dx_out.stride(2) != 1:
        raise ValueError(f"dx_out must be ({batch}, {L}, {D}) with unit channel stride, got {tuple(dx_out.shape)} "
                         f"strides {dx_out.stride()}")
    # dw/db: the fused sums of the dx kernel only for convs wider than the four held taps
    fused_dw = need_dw and W > 4
    if fused_dw:
        n_part = n_lblk
    elif need_dw:
        dw_bl, dw_bd, dw_warps = DW_BLOCK_L, DW_BLOCK_D, DW_NUM_WARPS
        rows = min(triton.cdiv(DW_ROWS, dw_bl), triton.cdiv(L, dw_bl)) * dw_bl
        n_part = triton.cdiv(L, rows)
    if need_dw:
        dw_part = torch.empty((batch * n_part, W, D), device=x.device, dtype=torch.float32)
        db_part = torch.empty((batch * n_part, D), device=x.device, dtype=torch.float32) if bias is not None else dw_part
    else:
        dw_part = db_part = dx_out  # never touched
    seq = seq_idx if seq_idx is not None else x
    dys3 = (dy0, dy1, dy2)
    rs, (s_xb, s_xl, s_dxb, s_dxl, *dy_bl) = row_strides(
        x.element_size(), x.stride(0), x.stride(2), dx_out.stride(0), dx_out.stride(1),
        *(st for t in dys3 for st in (t.stride(0), t.stride(2))))
    # per gradient tensor: (batch, channel, row) strides, the channel stride as given
    dy_strides = tuple(v for i, t in enumerate(dys3) for v in (dy_bl[2 * i], t.stride(1), dy_bl[2 * i + 1]))
    s_sb = seq_idx.stride(0) if seq_idx is not None else 0
    _CONV_BWD[(n_lblk, triton.cdiv(D, block_d), batch)](
        x, weight, bias if bias is not None else weight, seq, dy0, dy1, dy2, dx_out, dw_part, db_part, L, D, d1, d2,
        s_xb, x.stride(1), s_xl, *dy_strides, s_dxb, s_dxl, s_sb,
        W=W, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu, SPLIT_DY=split, NEED_DW=fused_dw,
        BLOCK_L=block_l, BLOCK_D=block_d, RS=rs, num_warps=warps,
    )
    if need_dw and not fused_dw:
        _CONV_DW[(n_part, triton.cdiv(D, dw_bd), batch)](
            x, weight, bias if bias is not None else weight, seq, dy0, dy1, dy2, dw_part, db_part, L, D, d1, d2, rows,
            s_xb, x.stride(1), s_xl, *dy_strides, s_sb,
            W=W, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu, SPLIT_DY=split,
            BLOCK_L=dw_bl, BLOCK_D=dw_bd, NUM_STAGES=DW_NUM_STAGES, RS=rs, num_warps=dw_warps,
        )
    dw = db = None
    if need_dw:
        dw = torch.empty((D, W), device=x.device, dtype=weight.dtype)
        db = torch.empty((D,), device=x.device, dtype=bias.dtype) if bias is not None else None
        _CONV_DW_REDUCE[(triton.cdiv(D, REDUCE_BLOCK_D),)](
            dw_part, db_part, dw, db if db is not None else dw, batch * n_part, D,
            W=W, HAS_BIAS=bias is not None, BLOCK_P=REDUCE_BLOCK_P, BLOCK_D=REDUCE_BLOCK_D, num_warps=4,
        )
    return dx_out.transpose(1, 2), dw, db
