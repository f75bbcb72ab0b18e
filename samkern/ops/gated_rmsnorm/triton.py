# SPDX-License-Identifier: Apache-2.0
"""Triton kernels of the gated group RMSNorm at the output of a Mamba-2 block.

Per row and group of ``gs`` channels (s = silu(z), σ = sigmoid(z), s' = σ(1 + z(1 - σ))):

    norm_before_gate=False:  h = x·s,  r = 1/sqrt(mean(h²) + eps),  n = h·r,  y = n·w
    norm_before_gate=True:   h = x,    r, n as above,                         y = n·w·s

Backward with dn = dy·w (·s when the gate comes after the norm):

    dh = r·(dn - n·mean(dn·n))
    False: dx = dh·s, dz = dh·x·s',            dw = Σ_rows dy·n
    True:  dx = dh,   dz = dy·n·w·s',          dw = Σ_rows dy·n·s

Forward: one program per (row, group), which also stores r (fp32) for the backward.
Backward: a grid of (programs, groups); each program walks rows pid, pid + P, ... and keeps its
share of dw in registers, written to a (P, N) fp32 buffer that torch sums (deterministic).
x, z, y, dy, dx, dz are (M, N) with any row stride and unit channel stride; math in fp32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import num_sms, row_strides
from samkern.launch import fast_launch

# software-pipelining depth of the backward's row loop (tl.range num_stages: the next rows' x / z /
# dy loads issued as asynchronous copies while this row is reduced); 1 = not pipelined, None = by
# row width (below)
BWD_STAGES: Optional[int] = None

__all__ = ["rmsnorm_gated_fwd_triton", "rmsnorm_gated_bwd_triton"]


@triton.jit
def _rmsnorm_fwd_kernel(
    x_ptr, z_ptr, w_ptr, y_ptr, rstd_ptr,
    N, GS, n_groups, eps,
    s_x, s_z, s_y,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BLOCK_N: tl.constexpr, RS: tl.constexpr,
):
    if RS > 1:  # row strides arrive divided by RS (samkern.backend.row_stride_unit)
        s_x, s_z, s_y = s_x.to(tl.int64) * RS, s_z.to(tl.int64) * RS, s_y.to(tl.int64) * RS
    row, grp = tl.program_id(0).to(tl.int64), tl.program_id(1)
    cols = grp * GS + tl.arange(0, BLOCK_N)
    mask = tl.arange(0, BLOCK_N) < GS
    x = tl.load(x_ptr + row * s_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row * s_z + cols, mask=mask, other=0.0).to(tl.float32)
        gate = z * tl.sigmoid(z)
        if not NORM_BEFORE_GATE:
            x = x * gate
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / GS + eps)
    y = x * rstd * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z and NORM_BEFORE_GATE:
        y = y * gate
    tl.store(y_ptr + row * s_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row * n_groups + grp, rstd)


_NORM_FWD = fast_launch(_rmsnorm_fwd_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _rmsnorm_bwd_kernel(
    x_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dx_ptr, dz_ptr, dw_part_ptr,
    M, N, GS, n_groups,
    s_x, s_z, s_dy, s_dx, s_dz,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
    RS: tl.constexpr,
):
    if RS > 1:  # row strides arrive divided by RS (samkern.backend.row_stride_unit)
        s_x, s_z, s_dy = s_x.to(tl.int64) * RS, s_z.to(tl.int64) * RS, s_dy.to(tl.int64) * RS
        s_dx, s_dz = s_dx.to(tl.int64) * RS, s_dz.to(tl.int64) * RS
    pid, grp = tl.program_id(0), tl.program_id(1)
    n_prog = tl.num_programs(0)
    cols = grp * GS + tl.arange(0, BLOCK_N)
    mask = tl.arange(0, BLOCK_N) < GS
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in tl.range(0, tl.cdiv(M - pid, n_prog), num_stages=NUM_STAGES):
        r64 = pid.to(tl.int64) + i * n_prog  # rows pid, pid + P, ...; int64 offsets below
        x = tl.load(x_ptr + r64 * s_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + r64 * s_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + r64 * n_groups + grp)
        h = x
        if HAS_Z:
            z = tl.load(z_ptr + r64 * s_z + cols, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            gate = z * sig
            dgate = sig * (1.0 + z * (1.0 - sig))
            if not NORM_BEFORE_GATE:
                h = x * gate
        n = h * rstd
        if HAS_Z and NORM_BEFORE_GATE:
            dw += dy * n * gate
            dn = dy * w * gate
        else:
            dw += dy * n
            dn = dy * w
        dh = rstd * (dn - n * (tl.sum(dn * n, axis=0) / GS))
        if HAS_Z:
            if NORM_BEFORE_GATE:
                dx = dh
                dz = dy * n * w * dgate
            else:
                dx = dh * gate
                dz = dh * x * dgate
            tl.store(dz_ptr + r64 * s_dz + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        else:
            dx = dh
        tl.store(dx_ptr + r64 * s_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_part_ptr + pid * N + cols, dw, mask=mask)


_NORM_BWD = fast_launch(_rmsnorm_bwd_kernel)  # cheaper eager launches (samkern/launch.py)


def _block_and_warps(gs: int) -> Tuple[int, int]:
    block = triton.next_power_of_2(gs)
    return block, min(16, max(1, block // 256))


def rmsnorm_gated_fwd_triton(
    x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor], eps: float, group_size: int,
    norm_before_gate: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (M, N), z (M, N)? (unit channel stride, any row stride), weight (N,) -> y (M, N) in x's
    dtype, rstd (M, N // group_size) fp32."""
    M, N = x.shape
    n_groups = N // group_size
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    rstd = torch.empty((M, n_groups), device=x.device, dtype=torch.float32)
    block, warps = _block_and_warps(group_size)
    rs, strides = row_strides(x.element_size(), x.stride(0), z.stride(0) if z is not None else 0, y.stride(0))
    _NORM_FWD[(M, n_groups)](
        x, z if z is not None else x, weight, y, rstd, N, group_size, n_groups, float(eps),
        *strides,
        HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, BLOCK_N=block, RS=rs, num_warps=warps,
    )
    return y, rstd


def _bwd_stages(block: int) -> int:
    # H100, bf16, gated (s17-call4): 3 stages 77.5 -> 62.4 us at 6144 x 1536; at 5120-wide groups
    # (block 8192, 16 warps) the staged rows spill and 1 stage is fastest (110 vs 133 / 137 us at
    # 3072 rows, 494 vs 614 / 623 at 16384)
    return 3 if block <= 2048 else 1


def rmsnorm_gated_bwd_triton(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor], rstd: torch.Tensor,
    group_size: int, norm_before_gate: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """-> dx (M, N) x's dtype, dz (M, N) z's dtype or None, dweight (N,) fp32."""
    M, N = x.shape
    n_groups = N // group_size
    # about two programs per SM in all (each keeps its dw share in registers), at most one per row
    n_prog = max(1, min(M, 2 * num_sms(x.device) // n_groups + 1)) if x.is_cuda else min(M, 4)
    dx = torch.empty((M, N), device=x.device, dtype=x.dtype)
    dz = torch.empty((M, N), device=x.device, dtype=z.dtype) if z is not None else None
    dw_part = torch.empty((n_prog, N), device=x.device, dtype=torch.float32)
    block, warps = _block_and_warps(group_size)
    rs, strides = row_strides(x.element_size(), x.stride(0), z.stride(0) if z is not None else 0, dy.stride(0),
                              dx.stride(0), dz.stride(0) if dz is not None else 0)
    _NORM_BWD[(n_prog, n_groups)](
        x, z if z is not None else x, weight, rstd, dy, dx, dz if dz is not None else dx, dw_part,
        M, N, group_size, n_groups,
        *strides,
        HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, BLOCK_N=block,
        NUM_STAGES=BWD_STAGES or _bwd_stages(block), RS=rs, num_warps=warps,
    )
    return dx, dz, dw_part.sum(0)
