# SPDX-License-Identifier: Apache-2.0
"""The split path's GEMM in Gluon with 192 × 192 output tiles: three consumer warp groups
cooperate on each tile (64 rows each), one producer warp group fills a ring of shared-memory slots.

    C = A1 · B1 + A2 · B2          A1 (M, K1), B1 (K1, N), A2 = u_s or g_s (M, r), B2 (r, N)

Why a second tile shape: ``gluon.py``'s 128 × 128 tiles leave the last round of programs mostly
idle at #4's narrow outputs. 6144 × 768 outputs make 288 such tiles for 132 SMs (2.18 rounds,
so three tile-times), 6144 × 1536 make 576 (4.36 rounds, five); in 192 × 192 tiles they are 128
(one round of 2.25 tile-times) and 256 (two rounds, 4.5), as cuBLAS tiles them (its 192 × 192
kernel, ``dev-runs/s24-call4``). A bigger tile also loads fewer bytes per MMA: the 128 × 128 K loop
is paced by its loads, not its wgmmas (a projection tile with 1/8 of the MMA work took as long,
``dev-runs/s29-call1``).

Layout: Triton tensors are powers of two, so each consumer holds its 64 × 192 slice of the tile as
two accumulators (64 × 128 and 64 × 64) and the ring's B slot is two buffers (128 and 64 columns);
A's slot is three 64-row buffers, one per consumer. Every K step (A1 / B1, then A2 / B2 in the same
blocks: the rank term as ``cdiv(r, BLOCK_K)`` more steps, TMA zero-filling past r) is released once all
three consumers have read it (``empty`` counts three arrivals). Each consumer stores its slice by
TMA from its own staging buffers (72 KB for the three; six ring slots of 24 KB fit beside them),
or, for a ring of four 48 KB slots, from one 8 KB buffer in three pieces (``C_PIECES``). The
tuner offers it as a candidate of the split path's GEMM (u_s given).

**Its own projection** (``FUSE_PROJ``, r ≤ 16: the fused path, ``lora_proj_gemm``): every tile
makes ``u = A1 P`` for its rows (an N = 16 wgmma per K step against a P block the producer adds
to every slot) and adds ``scale · u B2`` after its K loop (``_rank_epilogue``): u depends on the
rows only, so each tile has the whole of its own, and no tile waits on another; column panel
0's tiles store u_s (an output: the backward's). Session 29's form (panel 0 published u_s
through a flag per slice, the other tiles waited and loaded it) lost ~1-3 us to the publish /
wait chain and the flags' memset (``dev-runs/s30-call7``). The projection's wgmma stays outside
any runtime branch: a branch around async wgmmas faulted on the GPU (``dev-runs/s29-call8``).
No bias. Needs sm_90, 16-bit inputs, TMA-able operands; r ≤ 16 for the projection.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from samkern.backend import num_sms, row_stride_unit
from samkern.launch import fast_launch
from samkern.ops.lora.gluon import R_EPILOGUE_MAX as R_FUSED_MAX
from samkern.ops.lora.gluon import _descriptor, _gl_dtype, _smem_layout, _tile_coords, store_u

__all__ = ["COOP_CANDIDATES", "launch_coop"]

# (BLOCK_M, BLOCK_N, BLOCK_K, ring slots, GROUP_M, consumer registers, producer registers): three
# consumers at 152 registers (a 64 × 192 fp32 accumulator is 96 per thread; ptxas needs 128, no
# spills) and a producer at 40 fill the SM's 64 K registers (the first consumer, Triton's default
# partition, gets the rest: 168). Six 24 KB ring slots (BLOCK_K 32) plus 72 KB of staging: the same
# bytes as three 48 KB slots of BLOCK_K 64, which left too few loads in flight (a slot is busy
# while its wgmmas run and until the next step's are issued): 1536→768 fwd 36.2 against 30.6 us,
# 3072→1536 98.0 against 87.9 (``dev-runs/s29-call5``). (The 128 × 128 kernel with BLOCK_K 32 and
# 8 or 10 slots was slower than with 64 at every shape: its consumers' K loops take turns.)
# Second candidate (session 34): four 48 KB slots of BLOCK_K 64 (half the K steps, as deep a ring
# in bytes as six of 32), C staged in 64-column pieces through 24 KB (``_store_pieces``): dx
# 768→3352 r8 64.6 → 52.1 us (cuBLAS's plain GEMM 50.4), fused 74.1 → 60.2, fwd 2560→10576 r256
# 605 → 551; slower at some others (1536→768 dx 30.3 → 31.5), so the tuner picks per shape
# (``dev-runs/s34-call2``). C stored from registers instead of staged was far slower where C is
# large (fwd 768→3352 69.5 → 140 us, ``s34-call1``).
ROWS = 64  # rows of a tile per consumer
WIDE = 128  # columns of the first accumulator; the second takes BLOCK_N - WIDE
COOP_CANDIDATES = [(3 * ROWS, 192, 32, 6, 8, 152, 40), (3 * ROWS, 192, 64, 4, 8, 152, 40)]
# bytes of shared memory for the ring and C's staging (of the H100's 232,448 per program: the rest
# holds barriers)
SMEM_BUDGET = 227 * 1024


@gluon.jit
def _load_step(a_desc, bw_desc, bn_desc, bar, a_bufs, bw_bufs, bn_bufs, i, off_m, off_n, kk,
               B_KMAJOR: gl.constexpr, WIDE_N: gl.constexpr):
    """One K step's tiles into ring slot ``i``: A's three 64-row blocks, B's two column blocks."""
    ROWS_C: gl.constexpr = a_desc.block_type.shape[0]
    for c in gl.static_range(3):
        tma.async_copy_global_to_shared(a_desc, [off_m + c * ROWS_C, kk], bar, a_bufs.index(3 * i + c))
    if B_KMAJOR:
        tma.async_copy_global_to_shared(bw_desc, [off_n, kk], bar, bw_bufs.index(i))
        tma.async_copy_global_to_shared(bn_desc, [off_n + WIDE_N, kk], bar, bn_bufs.index(i))
    else:
        tma.async_copy_global_to_shared(bw_desc, [kk, off_n], bar, bw_bufs.index(i))
        tma.async_copy_global_to_shared(bn_desc, [kk, off_n + WIDE_N], bar, bn_bufs.index(i))


@gluon.jit
def _producer(a_desc, bw_desc, bn_desc, a2_desc, b2w_desc, b2n_desc, p_desc, ready, empty, a_bufs, bw_bufs,
              bn_bufs, p_bufs, M, N, K, K2, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr,
              BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, WIDE_N: gl.constexpr, FUSE_PROJ: gl.constexpr):
    """Every K step of every tile of this program into the ring, (A1, B1) then (A2, B2); a slot
    is refilled once all three consumers released it (the first round passes: phase 1 is
    complete at init). With ``FUSE_PROJ`` no (A2, B2) steps, and every step's slot also gets its
    P block (the projection's operand, 1 KB)."""
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k1_tiles = gl.cdiv(K, BK)
    if FUSE_PROJ:
        k_tiles = k1_tiles
    else:
        k_tiles = k1_tiles + gl.cdiv(K2, BK)
    nbytes: gl.constexpr = 3 * a_desc.block_type.nbytes + bw_desc.block_type.nbytes + bn_desc.block_type.nbytes
    n = 0
    for j in range(gl.cdiv(num_pid_m * num_pid_n - gl.program_id(0), gl.num_programs(0))):
        pid_m, pid_n = _tile_coords(gl.program_id(0) + j * gl.num_programs(0), num_pid_m, num_pid_n, GROUP_M)
        for k in range(k_tiles):
            i = n % NUM_BUF
            mbarrier.wait(empty.index(i), ((n // NUM_BUF) & 1) ^ 1)
            bar = ready.index(i)
            if FUSE_PROJ:
                mbarrier.expect(bar, nbytes + p_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(p_desc, [0, k * BK], bar, p_bufs.index(i))  # (P k-major)
            else:
                mbarrier.expect(bar, nbytes)
            if k < k1_tiles:
                _load_step(a_desc, bw_desc, bn_desc, bar, a_bufs, bw_bufs, bn_bufs, i, pid_m * BM, pid_n * BN, k * BK,
                           B_KMAJOR, WIDE_N)
            else:
                _load_step(a2_desc, b2w_desc, b2n_desc, bar, a_bufs, bw_bufs, bn_bufs, i, pid_m * BM, pid_n * BN,
                           (k - k1_tiles) * BK, B_KMAJOR, WIDE_N)
            n += 1


@gluon.jit
def _b2_block(b2_ptr, b2_sk, b2_sn, col0, N, R, dst, B_KMAJOR: gl.constexpr, WIDTH: gl.constexpr,
              SN_UNIT: gl.constexpr):
    """B2's [16, WIDTH] block at column ``col0`` (rows past r and columns past N zero) from global
    memory into ``dst`` (a staging buffer reinterpreted: [WIDTH, 16] k-contiguous when
    ``B_KMAJOR``, else [16, WIDTH]); returns it as a wgmma B operand."""
    if B_KMAJOR:
        blk: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
        n = col0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(1, blk))
        k = gl.arange(0, 16, layout=gl.SliceLayout(0, blk))
        # (in units of SN_UNIT along k: uniform over each thread's 8 elements when r is a multiple
        # of 8, so the mask does not split the vector load)
        mask = (n[:, None] < N) & ((k[None, :] // SN_UNIT) < (R // SN_UNIT))
        # (b2_sn comes divided by SN_UNIT: B's rows of r = 8 elements are 16 bytes, which Triton cannot
        # see in a runtime stride of 8, so each element became a 2-byte load: 87 % of the kernel's
        # L1 sectors excess under Nsight Compute, dev-runs/s33-call2)
        t = gl.load(b2_ptr + n[:, None].to(gl.int64) * (b2_sn * SN_UNIT) + k[None, :] * b2_sk, mask=mask, other=0.0)
    else:
        blk: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
        k = gl.arange(0, 16, layout=gl.SliceLayout(1, blk))
        n = col0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, blk))
        mask = (k[:, None] < R) & (n[None, :] < N)
        t = gl.load(b2_ptr + k[:, None].to(gl.int64) * b2_sk + n[None, :] * b2_sn, mask=mask, other=0.0)
    dst.store(t)
    if B_KMAJOR:
        return dst.permute((1, 0))
    else:
        return dst


@gluon.jit
def _b2_buffers(cw_smem, cn_smem, B_KMAJOR: gl.constexpr, WIDE_N: gl.constexpr, NARROW_N: gl.constexpr,
                B2W_LAYOUT: gl.constexpr, B2N_LAYOUT: gl.constexpr, C_PIECES: gl.constexpr):
    """Where the rank epilogue puts B2's two column blocks (4 KB and 2 KB): this consumer's C
    staging buffers, free between tiles (with ``C_PIECES`` its one [64, 64] buffer: the first
    half of its rows, then the second)."""
    dtype: gl.constexpr = cw_smem.dtype
    if C_PIECES:
        w_src = cw_smem.slice(0, cw_smem.shape[0] // 2)
        n_src = cw_smem.slice(cw_smem.shape[0] // 2, cw_smem.shape[0] // 2)
    else:
        w_src = cw_smem
        n_src = cn_smem
    if B_KMAJOR:
        bw_dst = w_src._reinterpret(dtype, [WIDE_N, 16], B2W_LAYOUT)
        bn_dst = n_src._reinterpret(dtype, [NARROW_N, 16], B2N_LAYOUT)
    else:
        bw_dst = w_src._reinterpret(dtype, [16, WIDE_N], B2W_LAYOUT)
        bn_dst = n_src._reinterpret(dtype, [16, NARROW_N], B2N_LAYOUT)
    return bw_dst, bn_dst


@gluon.jit
def _store_pieces(acc_w, acc_n, c_desc, c_smem, row, col0, WIDE_N: gl.constexpr):
    """The slice's 64 × 192 through one [64, 64] staging buffer in three TMA stores (the wide
    accumulator's column halves, then the narrow one), each waiting for the previous to have left
    the buffer; the last is still in flight on return."""
    ROWS_C: gl.constexpr = acc_w.shape[0]
    HALF: gl.constexpr = WIDE_N // 2
    # (columns j and j + 64 of a wgmma accumulator sit in the same thread: the split moves no data)
    lo, hi = gl.split(gl.permute(gl.reshape(acc_w, [ROWS_C, 2, HALF]), (0, 2, 1)))
    c_smem.store(lo.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [row, col0], c_smem)
    tma.store_wait(pendings=0)
    c_smem.store(hi.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [row, col0 + HALF], c_smem)
    tma.store_wait(pendings=0)
    c_smem.store(acc_n.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [row, col0 + WIDE_N], c_smem)


@gluon.jit
def _rank_epilogue(acc_w, acc_n, acc_u, scale, b2_ptr, b2_sk, b2_sn, col0, N, R, bw_dst, bn_dst,
                   wide_l: gl.constexpr, narrow_l: gl.constexpr, B_KMAJOR: gl.constexpr,
                   WIDE_N: gl.constexpr, NARROW_N: gl.constexpr, SN_UNIT: gl.constexpr):
    """``acc += u_s B2`` for this slice (``FUSE_PROJ``): B2's two column blocks through
    ``bw_dst`` / ``bn_dst`` (``_b2_buffers``), ``u_s = scale · acc_u`` (the tile's own projection,
    rounded to the input dtype as the stored u_s is) as a register operand, one K = 16 wgmma per
    accumulator."""
    dtype: gl.constexpr = bw_dst.dtype
    bw = _b2_block(b2_ptr, b2_sk, b2_sn, col0, N, R, bw_dst, B_KMAJOR, WIDE_N, SN_UNIT)
    bn = _b2_block(b2_ptr, b2_sk, b2_sn, col0 + WIDE_N, N, R, bn_dst, B_KMAJOR, NARROW_N, SN_UNIT)
    fence_async_shared()  # the generic-proxy stores, before wgmma reads them
    gl.thread_barrier()
    # (the accumulator's registers already sit where the wgmma's A operand wants them: the
    # conversions move no data, offline PTX has no shared-memory round trip for them)
    u_s = (acc_u * scale).to(dtype)
    u_w = gl.convert_layout(u_s, gl.DotOperandLayout(operand_index=0, parent=wide_l, k_width=2))
    acc_w = warpgroup_mma(u_w, bw, acc_w, is_async=True)
    u_n = gl.convert_layout(u_s, gl.DotOperandLayout(operand_index=0, parent=narrow_l, k_width=2))
    acc_n = warpgroup_mma(u_n, bn, acc_n, is_async=True)
    acc_w, acc_n = warpgroup_mma_wait(num_outstanding=0, deps=(acc_w, acc_n))
    gl.thread_barrier()  # (every warp's wgmma read B2 before the staging buffers take C)
    return acc_w, acc_n


@gluon.jit
def _consumer(cw_desc, cn_desc, ready, empty, a_bufs, bw_bufs, bn_bufs, p_bufs, cw_bufs, cn_bufs, u_ptr, ldu, b2_ptr,
              b2_sk, b2_sn, scale, M, N, K, K2, WHICH: gl.constexpr, B_KMAJOR: gl.constexpr,
              NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
              WIDE_N: gl.constexpr, FUSE_PROJ: gl.constexpr, B2W_LAYOUT: gl.constexpr, B2N_LAYOUT: gl.constexpr,
              SN_UNIT: gl.constexpr, C_PIECES: gl.constexpr):
    """Rows ``WHICH · 64`` to ``WHICH · 64 + 63`` of every tile of this program: per K step two
    async wgmmas (the slot's 128- and 64-column B blocks), the previous step's slot released once
    at most this step's two are in flight; then the slice's two blocks stored by TMA (its staging
    buffers reused once the previous tile's stores have left them). With ``FUSE_PROJ`` every tile
    also makes this slice's rows of ``u = A1 P`` (a third wgmma per step, N = 16) and adds
    ``scale · u B2`` after its K loop (``_rank_epilogue``); column panel 0's tiles store u_s.
    With ``C_PIECES`` the slice leaves through one 8 KB staging buffer in three stores
    (``_store_pieces``), which leaves the ring 48 KB more."""
    ROWS_C: gl.constexpr = BM // 3
    wide_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, WIDE_N, 16])
    narrow_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BN - WIDE_N, 16])
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    if FUSE_PROJ:
        k_tiles = gl.cdiv(K, BK)
    else:
        k_tiles = gl.cdiv(K, BK) + gl.cdiv(K2, BK)
    u_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16])
    cw_smem = cw_bufs.index(WHICH)
    cn_smem = cn_bufs.index(WHICH)
    bw_dst, bn_dst = _b2_buffers(cw_smem, cn_smem, B_KMAJOR, WIDE_N, BN - WIDE_N, B2W_LAYOUT, B2N_LAYOUT, C_PIECES)
    for j in range(gl.cdiv(num_pid_m * num_pid_n - gl.program_id(0), gl.num_programs(0))):
        pid_m, pid_n = _tile_coords(gl.program_id(0) + j * gl.num_programs(0), num_pid_m, num_pid_n, GROUP_M)
        n0 = j * k_tiles
        acc_w = gl.zeros((ROWS_C, WIDE_N), dtype=gl.float32, layout=wide_l)
        acc_n = gl.zeros((ROWS_C, BN - WIDE_N), dtype=gl.float32, layout=narrow_l)
        acc_u = gl.zeros((ROWS_C, 16), dtype=gl.float32, layout=u_l)
        for k in range(k_tiles):
            slot = (n0 + k) % NUM_BUF
            mbarrier.wait(ready.index(slot), ((n0 + k) // NUM_BUF) & 1)
            a = a_bufs.index(3 * slot + WHICH)
            if B_KMAJOR:
                bw = bw_bufs.index(slot).permute((1, 0))
                bn = bn_bufs.index(slot).permute((1, 0))
            else:
                bw = bw_bufs.index(slot)
                bn = bn_bufs.index(slot)
            acc_w = warpgroup_mma(a, bw, acc_w, is_async=True)
            acc_n = warpgroup_mma(a, bn, acc_n, is_async=True)
            if FUSE_PROJ:
                # u = A1 P for this tile's rows (P k-major in both layouts, see launch_coop)
                acc_u = warpgroup_mma(a, p_bufs.index(slot).permute((1, 0)), acc_u, is_async=True)
                # at most this step's wgmmas in flight: every earlier step's are done
                acc_w, acc_n, acc_u = warpgroup_mma_wait(num_outstanding=3, deps=(acc_w, acc_n, acc_u))
            else:
                acc_w, acc_n = warpgroup_mma_wait(num_outstanding=2, deps=(acc_w, acc_n))
            if k > 0:
                mbarrier.arrive(empty.index((n0 + k - 1) % NUM_BUF))
        if FUSE_PROJ:
            acc_w, acc_n, acc_u = warpgroup_mma_wait(num_outstanding=0, deps=(acc_w, acc_n, acc_u))
        else:
            acc_w, acc_n = warpgroup_mma_wait(num_outstanding=0, deps=(acc_w, acc_n))
        mbarrier.arrive(empty.index((n0 + k_tiles - 1) % NUM_BUF))
        tma.store_wait(pendings=0)  # (the staging buffers are free: the previous tile's stores left)
        if FUSE_PROJ:
            if pid_n == 0:  # u_s is an output (the backward's): column panel 0 stores it
                store_u(acc_u, u_ptr, ldu, scale, pid_m * BM + WHICH * ROWS_C, M, K2, u_l, ROWS_C)
            acc_w, acc_n = _rank_epilogue(acc_w, acc_n, acc_u, scale, b2_ptr, b2_sk, b2_sn, pid_n * BN, N, K2,
                                          bw_dst, bn_dst, wide_l, narrow_l, B_KMAJOR, WIDE_N, BN - WIDE_N, SN_UNIT)
        row = pid_m * BM + WHICH * ROWS_C
        if C_PIECES:
            _store_pieces(acc_w, acc_n, cn_desc, cw_smem, row, pid_n * BN, WIDE_N)
        else:
            cw_smem.store(acc_w.to(cw_desc.dtype))
            cn_smem.store(acc_n.to(cn_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(cw_desc, [row, pid_n * BN], cw_smem)
            tma.async_copy_shared_to_global(cn_desc, [row, pid_n * BN + WIDE_N], cn_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _coop_kernel(a_desc, bw_desc, bn_desc, a2_desc, b2w_desc, b2n_desc, cw_desc, cn_desc, p_desc, u_ptr, ldu, b2_ptr,
                 b2_sk, b2_sn, scale, M, N, K, K2, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr,
                 GROUP_M: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
                 FUSE_PROJ: gl.constexpr, B2W_LAYOUT: gl.constexpr, B2N_LAYOUT: gl.constexpr,
                 SN_UNIT: gl.constexpr, C_PIECES: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = a_desc.dtype
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BM: gl.constexpr = 3 * a_desc.block_type.shape[0]
    WIDE_N: gl.constexpr = cw_desc.block_type.shape[1]
    BN: gl.constexpr = WIDE_N + cn_desc.block_type.shape[1]
    if FUSE_PROJ:  # a P block per ring slot (the projection's operand, panel 0's tiles)
        p_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + p_desc.block_type.shape, p_desc.layout)
    a_bufs = gl.allocate_shared_memory(dtype, [3 * NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    bw_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + bw_desc.block_type.shape, bw_desc.layout)
    bn_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + bn_desc.block_type.shape, bn_desc.layout)
    # C's staging, per consumer: a buffer per accumulator, or one [64, 64] for three pieces
    cn_bufs = gl.allocate_shared_memory(dtype, [3] + cn_desc.block_type.shape, cn_desc.layout)
    if C_PIECES:
        cw_bufs = cn_bufs
    else:
        cw_bufs = gl.allocate_shared_memory(dtype, [3] + cw_desc.block_type.shape, cw_desc.layout)
    if not FUSE_PROJ:
        p_bufs = bw_bufs  # (not read)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=3)  # a slot is free once all three consumers read it
    gl.warp_specialize([
        (_consumer, (cw_desc, cn_desc, ready, empty, a_bufs, bw_bufs, bn_bufs, p_bufs, cw_bufs, cn_bufs, u_ptr, ldu,
                     b2_ptr, b2_sk, b2_sn, scale, M, N, K, K2, 0, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK,
                     WIDE_N, FUSE_PROJ, B2W_LAYOUT, B2N_LAYOUT, SN_UNIT, C_PIECES)),
        (_consumer, (cw_desc, cn_desc, ready, empty, a_bufs, bw_bufs, bn_bufs, p_bufs, cw_bufs, cn_bufs, u_ptr, ldu,
                     b2_ptr, b2_sk, b2_sn, scale, M, N, K, K2, 1, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK,
                     WIDE_N, FUSE_PROJ, B2W_LAYOUT, B2N_LAYOUT, SN_UNIT, C_PIECES)),
        (_consumer, (cw_desc, cn_desc, ready, empty, a_bufs, bw_bufs, bn_bufs, p_bufs, cw_bufs, cn_bufs, u_ptr, ldu,
                     b2_ptr, b2_sk, b2_sn, scale, M, N, K, K2, 2, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK,
                     WIDE_N, FUSE_PROJ, B2W_LAYOUT, B2N_LAYOUT, SN_UNIT, C_PIECES)),
        (_producer, (a_desc, bw_desc, bn_desc, a2_desc, b2w_desc, b2n_desc, p_desc, ready, empty, a_bufs, bw_bufs,
                     bn_bufs, p_bufs, M, N, K, K2, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, WIDE_N, FUSE_PROJ)),
    ], [4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])


_COOP = fast_launch(_coop_kernel)


def launch_coop(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor, kmajor: bool,
                out: torch.Tensor, cfg: Tuple[int, ...], launcher=None, proj: Optional[torch.Tensor] = None,
                scale: float = 1.0) -> None:
    """``out = a1 @ b1 + a2 @ b2`` in 192 × 192 tiles; arguments as ``gluon.launch_gluon``'s (every
    operand TMA-able, ``kmajor``: b1 / b2 are transposes of row-major storage). With ``proj``
    (K, r), r ≤ 16, in the same layout, a2 is an OUTPUT: ``a2 = scale · a1 @ proj``, made by every
    tile for its own rank term and stored by column panel 0's (``FUSE_PROJ``)."""
    bm, bn, bk, nbuf, group, creg, preg = cfg
    M, K = a1.shape
    N = out.shape[1]
    K2 = a2.shape[1]
    dt = _gl_dtype(a1.dtype)
    rows = bm // 3

    def right(b, width):  # a (k, n) operand's column block of ``width``
        (k, n), (s0, s1) = b.shape, b.stride()
        if kmajor:
            return _descriptor(b, (n, k), (s1, s0), [width, bk], dt)
        return _descriptor(b, (k, n), (s0, s1), [bk, width], dt)

    fuse = proj is not None
    if fuse and K2 > R_FUSED_MAX:
        raise ValueError(f"the 192 x 192 kernel's projection takes r <= {R_FUSED_MAX}, got {K2}")
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    if fuse:
        # P as its (r, K) transpose with K contiguous, in both layouts: every tile loads a P block
        # per K step, and the backward's B (K, r) row-major makes 16-byte rows, half of a [32, 16]
        # box out of bounds: its dx ran 6-15 us slower than with P loaded by panel 0 only
        # (dev-runs/s30-call7); the copy is r x K elements
        pk = proj.t()
        if pk.stride(1) != 1 or pk.stride(0) * pk.element_size() % 16:
            pk = torch.empty(pk.shape, device=pk.device, dtype=pk.dtype).copy_(pk)  # (fresh strides, also at r = 1)
        d_p = _descriptor(pk, tuple(pk.shape), pk.stride(), [R_FUSED_MAX, bk], dt)
    else:
        d_p = right(b1, WIDE)  # (not read)
    b2w_shape = [WIDE, R_FUSED_MAX] if kmajor else [R_FUSED_MAX, WIDE]
    b2n_shape = [bn - WIDE, R_FUSED_MAX] if kmajor else [R_FUSED_MAX, bn - WIDE]
    n_sms = num_sms(a1.device) if a1.device.type == "cuda" else 132
    # B2's column stride in 16-byte units where it allows (the rank epilogue's loads, _b2_block)
    # (the unit also groups the rank mask: only for r a multiple of it, 8 or 16, not r = 1)
    sn_unit = row_stride_unit(b2.element_size(), b2.stride(1)) if kmajor else 1
    sn_unit = sn_unit if K2 % sn_unit == 0 else 1
    b2_sn = b2.stride(1) // sn_unit
    # C staged whole (72 KB) where the ring leaves room for it, else in 64-column pieces (24 KB)
    ring = nbuf * (bm * bk + bn * bk + (R_FUSED_MAX * bk if fuse else 0)) * a1.element_size()
    pieces = ring + bm * bn * a1.element_size() > SMEM_BUDGET
    (launcher or _COOP)[(max(1, min(tiles, n_sms)),)](
        _descriptor(a1, (M, K), a1.stride(), [rows, bk], dt), right(b1, WIDE), right(b1, bn - WIDE),
        _descriptor(a2, (M, K2), a2.stride(), [rows, bk], dt), right(b2, WIDE), right(b2, bn - WIDE),
        _descriptor(out, (M, N), out.stride(), [rows, WIDE], dt),
        _descriptor(out, (M, N), out.stride(), [rows, bn - WIDE], dt), d_p, a2, a2.stride(0), b2, b2.stride(0),
        b2_sn, float(scale), M, N, K, K2, B_KMAJOR=kmajor, NUM_BUF=nbuf, GROUP_M=group,
        CONSUMER_REGS=creg, PRODUCER_REGS=preg, FUSE_PROJ=fuse, B2W_LAYOUT=_smem_layout(tuple(b2w_shape), dt),
        B2N_LAYOUT=_smem_layout(tuple(b2n_shape), dt), SN_UNIT=sn_unit, C_PIECES=pieces, num_warps=4)
