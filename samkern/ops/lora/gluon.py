# SPDX-License-Identifier: Apache-2.0
"""Warp-specialised Hopper kernel for the LoRA GEMM's split path (and, with projection tiles, its
fused projection), in Gluon.

    C = A1 · B1 + A2 · B2          A1 (M, K1), B1 (K1, N), A2 = u_s or g_s (M, r), B2 (r, N)

The contraction of ``triton.py``'s kernels, for the split path (the rank-r operand already made
by one cuBLAS GEMM): one TMA producer warp group fills a ring of shared-memory slots with A1 / B1
tiles and then, in the same block shapes, A2 / B2 tiles (r more K steps, zero-filled by TMA past
r; for r ≤ 16 instead each consumer's own 16-wide A2 / B2 tiles, added by one K = 16 wgmma after
its K loop: ``R_EPILOGUE``); two 4-warp wgmma consumers take alternate output tiles of a persistent program ("ping-pong":
one consumer's epilogue runs under the other's K loop) and store C by TMA. Triton 3.6's own
kernels cannot be warp-specialised on Hopper (its pass hung, ``dev-runs/s11-call2``); written in
Gluon the plain GEMM reaches cuBLAS's time at some of #4's shapes where Triton's kernels are
10-25 % slower (``dev-runs/s25-call1-gluon-ws-gemm.log``), so the tuner times it as one more
candidate of the split path's GEMM.

**Projection tiles** (``FUSE_PROJ``, r ≤ 16: the op's fused-projection path, ``lora_proj_gemm``):
the kernel also makes ``u_s = s · A1 P`` itself. Each group of row blocks gets one more column
panel, its first in the grouped order: a projection tile runs the same K loop over the ring's A1
slots with an N = 16 wgmma against P tiles (in slots of their own), stores its row block of u_s
and publishes it with a release increment of the row block's flag; the row block's GEMM tiles
take u_s into registers for the rank epilogue after an acquire load of that flag. The grid is at
most one program per SM (all resident) and every projection tile precedes its row block's GEMM
tiles in the tile order, so every wait ends. One launch and A1's second read from L2
instead of HBM, at the price of a tile slot per row block (``dev-runs/s28-*``).

Why the two consumers take turns (``turn`` barriers): the ring's ``ready`` waits use one phase
bit, which cannot tell ring rounds apart; a consumer starting its K loop a round ahead of the
producer would pass a stale phase and read unfilled slots. Each consumer therefore waits for the
other's K loop to end before starting its own (as CUTLASS's ping-pong orders them); epilogues
still overlap K loops.

Needs sm_90, 16-bit inputs, TMA-able operands (``triton._tma_able``: 16-byte aligned rows), no
bias. Gluon kernels do not run in the CPU interpreter: CPU CI compiles this one for sm_90
(``scripts/lora_compile_offline.py``); the GPU tests check it on the device.
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Tuple

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from samkern.backend import num_sms
from samkern.launch import fast_launch

__all__ = ["GLUON_CANDIDATES", "candidates", "launch_gluon"]

# (BLOCK_M, BLOCK_N, BLOCK_K, ring slots, GROUP_M, consumer registers, producer registers): two
# 4-warp consumers at 232 registers and a producer warp group at 40 fill the SM's 64 K registers;
# ring slots of 32 KiB plus two 32 KiB C tiles (4 slots: 196,872 bytes of shared memory, 5: 229,672
# of the H100's 232,448 per program; ``scripts/lora_compile_offline.py`` reports them).
GLUON_CANDIDATES = [(128, 128, 64, 4, 8, 232, 40), (128, 128, 64, 5, 8, 232, 40)]
# ranks up to this are added by one wgmma after the K loop (``R_EPILOGUE``), larger ones by r more
# K steps through the ring
R_EPILOGUE_MAX = 16


def candidates(r: int, fused: bool = False) -> list:
    """The tiles that fit at rank ``r``: the epilogue's own A2 / B2 buffers (16 KB) leave no room
    for a fifth ring slot (246 KB of shared memory, offline). Also the 192 × 192 tile of
    ``gluon_coop.py``: for the split path's GEMM (u_s given) at every rank, with ``fused`` (its
    panel-0 tiles make u_s) at r ≤ 16."""
    from samkern.ops.lora.gluon_coop import COOP_CANDIDATES

    coop = (not fused or r <= R_EPILOGUE_MAX) and os.environ.get("SAMKERN_LORA_GLUON_COOP", "1") != "0"  # (A/B switch)
    return [c for c in GLUON_CANDIDATES if r > R_EPILOGUE_MAX or c[3] <= 4] + (COOP_CANDIDATES if coop else [])


@gluon.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
    """Grouped order: GROUP_M row tiles share each column panel of B1 in L2."""
    in_group = GROUP_M * num_pid_n
    first_m = (tile // in_group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % size_m), (tile % in_group) // size_m


@gluon.jit
def _tile(j, num_pid_m, num_pid_n, GROUP_M: gl.constexpr, FUSE_PROJ: gl.constexpr):
    """(row block, column panel, projection tile?) of this program's ``j``-th tile (tile
    program + j · programs of the grouped order). With ``FUSE_PROJ`` each group of GROUP_M row
    blocks has one more column panel, its first: the projection tiles, which so come before
    every other tile of their row block in the tile order (no wait can then outlast the tiles it
    waits for: the earliest waiting tile's projection tile is earlier still, and never waits) and
    run while the group's rows of A1 are read anyway (L2). (Giving them to the programs whose last
    round is empty instead, all first, was slower at every forward shape: their reads of A1 then
    come from HBM, ``dev-runs/s28-call3``.) Without ``FUSE_PROJ`` the flag is a plain ``False``,
    but a branch on it is still compiled (a projection tile's body on the GEMM's buffers fails to
    compile), so callers branch on ``FUSE_PROJ`` first."""
    t = gl.program_id(0) + j * gl.num_programs(0)
    if FUSE_PROJ:
        pid_m, col = _tile_coords(t, num_pid_m, num_pid_n + 1, GROUP_M)
        return pid_m, gl.maximum(col - 1, 0), col == 0
    else:
        pid_m, pid_n = _tile_coords(t, num_pid_m, num_pid_n, GROUP_M)
        return pid_m, pid_n, False


@gluon.jit
def _producer(a_desc, b_desc, a2_desc, b2_desc, p_desc, ready, empty, r_ready, r_empty, a_bufs, b_bufs, a2_bufs,
              b2_bufs, p_bufs, M, N, K, K2, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr,
              BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, R_EPILOGUE: gl.constexpr,
              FUSE_PROJ: gl.constexpr):
    """Every K step of every tile of this program, in order, into the ring: first over (A1, B1),
    then over (A2, B2) in the same block shapes (TMA zero-fills past r); a slot is refilled once
    its consumer released it (mbarriers start with phase 1 complete, so the first round passes).
    With ``R_EPILOGUE`` the ring carries (A1, B1) only, and each tile's A2 / B2 tiles (r ≤ 16
    wide) go to its consumer's own buffers. With ``FUSE_PROJ`` a projection tile's K steps carry
    (A1, P) instead (P in slots of its own), its rank buffer gets a B2 tile it does not read (the
    buffers' phases count tiles), and no tile's A2 is loaded here (the consumers read u_s)."""
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k1_tiles = gl.cdiv(K, BK)
    if R_EPILOGUE:
        k_tiles = k1_tiles
    else:
        k_tiles = k1_tiles + gl.cdiv(K2, BK)
    panels = num_pid_n + 1 if FUSE_PROJ else num_pid_n
    n = 0
    for j in range(gl.cdiv(num_pid_m * panels - gl.program_id(0), gl.num_programs(0))):
        # (a projection tile's column: 0, where its unread B2 tile is loaded from)
        pid_m, pid_n, proj_tile = _tile(j, num_pid_m, num_pid_n, GROUP_M, FUSE_PROJ)
        off_m = pid_m * BM
        off_n = pid_n * BN
        if R_EPILOGUE:
            c = j % 2
            mbarrier.wait(r_empty.index(c), ((j // 2) & 1) ^ 1)
            if FUSE_PROJ:
                mbarrier.expect(r_ready.index(c), b2_desc.block_type.nbytes)
            else:
                mbarrier.expect(r_ready.index(c), a2_desc.block_type.nbytes + b2_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(a2_desc, [off_m, 0], r_ready.index(c), a2_bufs.index(c))
            if B_KMAJOR:
                tma.async_copy_global_to_shared(b2_desc, [off_n, 0], r_ready.index(c), b2_bufs.index(c))
            else:
                tma.async_copy_global_to_shared(b2_desc, [0, off_n], r_ready.index(c), b2_bufs.index(c))
        for k in range(k_tiles):
            i = n % NUM_BUF
            mbarrier.wait(empty.index(i), ((n // NUM_BUF) & 1) ^ 1)
            bar = ready.index(i)
            if FUSE_PROJ:
                if proj_tile:
                    mbarrier.expect(bar, a_desc.block_type.nbytes + p_desc.block_type.nbytes)
                    tma.async_copy_global_to_shared(a_desc, [off_m, k * BK], bar, a_bufs.index(i))
                    if B_KMAJOR:
                        tma.async_copy_global_to_shared(p_desc, [0, k * BK], bar, p_bufs.index(i))
                    else:
                        tma.async_copy_global_to_shared(p_desc, [k * BK, 0], bar, p_bufs.index(i))
                else:
                    _load_step(a_desc, b_desc, a2_desc, b2_desc, bar, a_bufs.index(i), b_bufs.index(i), off_m, off_n,
                               k, k1_tiles, B_KMAJOR, BK)
            else:
                _load_step(a_desc, b_desc, a2_desc, b2_desc, bar, a_bufs.index(i), b_bufs.index(i), off_m, off_n, k,
                           k1_tiles, B_KMAJOR, BK)
            n += 1


@gluon.jit
def _load_step(a_desc, b_desc, a2_desc, b2_desc, bar, a_buf, b_buf, off_m, off_n, k, k1_tiles, B_KMAJOR: gl.constexpr,
               BK: gl.constexpr):
    """One K step of a GEMM tile into a ring slot: (A1, B1) for the first ``k1_tiles`` steps, then
    (A2, B2)."""
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    if k < k1_tiles:
        tma.async_copy_global_to_shared(a_desc, [off_m, k * BK], bar, a_buf)
        if B_KMAJOR:
            tma.async_copy_global_to_shared(b_desc, [off_n, k * BK], bar, b_buf)
        else:
            tma.async_copy_global_to_shared(b_desc, [k * BK, off_n], bar, b_buf)
    else:
        k2 = (k - k1_tiles) * BK
        tma.async_copy_global_to_shared(a2_desc, [off_m, k2], bar, a_buf)
        if B_KMAJOR:
            tma.async_copy_global_to_shared(b2_desc, [off_n, k2], bar, b_buf)
        else:
            tma.async_copy_global_to_shared(b2_desc, [k2, off_n], bar, b_buf)


@gluon.jit
def _stamp(ptr, TRACE: gl.constexpr):
    """With ``TRACE`` (a dev switch: ``launch_gluon(trace=...)``, ``scripts/gpu_gluon_trace.py``)
    store the GPU's global nanosecond timer at ``ptr``; compiled away otherwise."""
    if TRACE:
        gl.store(ptr, gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64,
                                                is_pure=False, pack=1))


@gluon.jit
def _k_loop(ready, empty, a_bufs, b_bufs, acc, n0, k_tiles, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr):
    """``acc += A1 · B`` over a tile's ``k_tiles`` ring slots from ring step ``n0``: one async wgmma
    per step, the previous step's slot released once at most this step's is in flight, the last
    released after all have landed. ``b_bufs``: the ring's B1 slots (a GEMM tile) or P slots (a
    projection tile, ``acc`` [BM, 16])."""
    for k in range(k_tiles):
        slot = (n0 + k) % NUM_BUF
        mbarrier.wait(ready.index(slot), ((n0 + k) // NUM_BUF) & 1)
        if B_KMAJOR:
            b_op = b_bufs.index(slot).permute((1, 0))
        else:
            b_op = b_bufs.index(slot)
        acc = warpgroup_mma(a_bufs.index(slot), b_op, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        if k > 0:
            mbarrier.arrive(empty.index((n0 + k - 1) % NUM_BUF))
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    mbarrier.arrive(empty.index((n0 + k_tiles - 1) % NUM_BUF))
    return acc


@gluon.jit
def _proj_tile(ready, empty, a_bufs, p_bufs, u_ptr, ldu, flags, scale, pid_m, n0, k_tiles, M, R,
               B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, BM: gl.constexpr):
    """``FUSE_PROJ``'s projection tile: ``u_s = scale · A1 P`` for the rows of ``pid_m`` (one
    N = 16 wgmma per K step from the ring's A1 slots, its own [BM, 16] accumulator), stored in the
    input dtype, then published: every thread's stores, a barrier of this partition's warps, and a
    release increment of the row block's flag (CUTLASS's semaphore pattern). The row block's GEMM
    tiles wait for the flag before their rank epilogue (``_published_rank_operand``)."""
    u_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16])
    u = _k_loop(ready, empty, a_bufs, p_bufs, gl.zeros((BM, 16), dtype=gl.float32, layout=u_layout), n0, k_tiles,
                B_KMAJOR, NUM_BUF)
    publish_u(u, u_ptr, ldu, flags + pid_m, scale, pid_m * BM, M, R, u_layout, BM)


@gluon.jit
def store_u(u, u_ptr, ldu, scale, row0, M, R, layout: gl.constexpr, ROWS: gl.constexpr):
    """Store ``scale · u`` (a [ROWS, 16] fp32 tile in ``layout``) as rows ``row0 …`` of u_s in the
    input dtype, masked to M and r (shared by both Gluon kernels' projections)."""
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, 16, layout=gl.SliceLayout(0, layout))
    mask = (rows[:, None] < M) & (cols[None, :] < R)
    gl.store(u_ptr + rows[:, None].to(gl.int64) * ldu + cols[None, :], (u * scale).to(u_ptr.dtype.element_ty),
             mask=mask)


@gluon.jit
def publish_u(u, u_ptr, ldu, flag, scale, row0, M, R, layout: gl.constexpr, ROWS: gl.constexpr):
    """``store_u``, then publish the rows: every thread's stores, a barrier of this partition's
    warps, one release increment of ``flag`` (CUTLASS's semaphore pattern). Readers wait with
    ``wait_published``."""
    store_u(u, u_ptr, ldu, scale, row0, M, R, layout, ROWS)
    gl.thread_barrier()
    gl.atomic_add(flag, 1, sem="release", scope="gpu")


@gluon.jit
def wait_published(flag):
    """Spin until ``publish_u`` has released ``flag`` (acquire loads: its u_s stores are visible
    after this)."""
    while gl.atomic_add(flag, 0, sem="acquire", scope="gpu") == 0:
        pass


@gluon.jit
def _published_rank_operand(u_ptr, ldu, flags, pid_m, M, R, acc_layout: gl.constexpr, BM: gl.constexpr):
    """The [BM, 16] u_s tile of row block ``pid_m`` as a wgmma register operand, once its
    projection tile has published it (an acquire load of the flag, shared with this partition's
    warps by a barrier; the loads bypass L1)."""
    wait_published(flags + pid_m)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, blk))
    cols = gl.arange(0, 16, layout=gl.SliceLayout(0, blk))
    mask = (rows[:, None] < M) & (cols[None, :] < R)
    u = gl.load(u_ptr + rows[:, None].to(gl.int64) * ldu + cols[None, :], mask=mask, other=0.0,
                cache_modifier=".cg")
    return gl.convert_layout(u, gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2))


@gluon.jit
def _gemm_tile(c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, c_smem, a2_smem, b2_op, u_ptr, ldu, flags,
               pid_m, pid_n, j, n0, k_tiles, M, R, acc_layout: gl.constexpr, WHICH: gl.constexpr,
               B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
               R_EPILOGUE: gl.constexpr, FUSE_PROJ: gl.constexpr, tp, TRACE: gl.constexpr):
    """One output tile (this program's ``j``-th, its K steps from ring step ``n0``): the K loop
    (``_k_loop``), the rank epilogue, the TMA store. ``tp``: this tile's trace record (``_stamp``:
    [1] K loop done, [2] u_s acquired)."""
    acc = _k_loop(ready, empty, a_bufs, b_bufs, gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout), n0, k_tiles,
                  B_KMAJOR, NUM_BUF)
    mbarrier.arrive(turn.index(1 - WHICH))  # the other consumer's K loop may start
    _stamp(tp + 1, TRACE)
    if TRACE:
        gl.store(tp + 4, 2)
    if R_EPILOGUE:
        if FUSE_PROJ:
            u_op = _published_rank_operand(u_ptr, ldu, flags, pid_m, M, R, acc_layout, BM)
            _stamp(tp + 2, TRACE)
            mbarrier.wait(r_ready.index(WHICH), (j // 2) & 1)
            acc = warpgroup_mma(u_op, b2_op, acc, is_async=True)
        else:
            mbarrier.wait(r_ready.index(WHICH), (j // 2) & 1)
            acc = warpgroup_mma(a2_smem, b2_op, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(r_empty.index(WHICH))
    tma.store_wait(pendings=0)  # this consumer's previous store has left c_smem
    c_smem.store(acc.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [pid_m * BM, pid_n * BN], c_smem)


@gluon.jit
def _consumer(c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, a2_bufs, b2_bufs, p_bufs, c_bufs,
              u_ptr, ldu, flags, scale, M, N, K, K2, WHICH: gl.constexpr, B_KMAJOR: gl.constexpr,
              NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
              R_EPILOGUE: gl.constexpr, FUSE_PROJ: gl.constexpr, trace, trace_tiles, TRACE: gl.constexpr):
    """Tiles j = WHICH, WHICH + 2, ... of this program (``_gemm_tile``). With ``R_EPILOGUE`` the K
    loop covers (A1, B1) and one more wgmma (K = 16) adds A2 B2 from this consumer's own buffers:
    cheaper than a 64-wide K step for r ≤ 16 (1536→6448 r8 fwd, graph replay, L2 flushed: 207 vs
    223 µs, ``dev-runs/s25-call6`` vs ``s25-call9``). With ``FUSE_PROJ`` some tiles are
    projection tiles (``_tile``, ``_proj_tile``) and the rank epilogue takes A2 from memory once
    the row block's projection tile has published it."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BN, 16])
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    if R_EPILOGUE:
        k_tiles = gl.cdiv(K, BK)
    else:
        k_tiles = gl.cdiv(K, BK) + gl.cdiv(K2, BK)
    panels = num_pid_n + 1 if FUSE_PROJ else num_pid_n
    c_smem = c_bufs.index(WHICH)
    a2_smem = a2_bufs.index(WHICH)
    if B_KMAJOR:
        b2_op = b2_bufs.index(WHICH).permute((1, 0))
    else:
        b2_op = b2_bufs.index(WHICH)
    for j in range(WHICH, gl.cdiv(num_pid_m * panels - gl.program_id(0), gl.num_programs(0)), 2):
        pid_m, pid_n, proj_tile = _tile(j, num_pid_m, num_pid_n, GROUP_M, FUSE_PROJ)
        n0 = j * k_tiles
        # my turn (consumer 0's first wait passes at once: the parity of the phase before the first)
        mbarrier.wait(turn.index(WHICH), ((j // 2) & 1) ^ (1 - WHICH))
        # (a trace record per tile: [0] start, [1] K loop done, [2] u_s acquired, [3] end, [4] kind)
        tp = trace + (gl.program_id(0) * trace_tiles + j).to(gl.int64) * 5
        _stamp(tp, TRACE)
        if FUSE_PROJ:
            if proj_tile:
                _proj_tile(ready, empty, a_bufs, p_bufs, u_ptr, ldu, flags, scale, pid_m, n0, k_tiles, M, K2, B_KMAJOR,
                           NUM_BUF, BM)
                _stamp(tp + 1, TRACE)
                if TRACE:
                    gl.store(tp + 4, 1)  # a projection tile (GEMM tiles: 2)
                mbarrier.arrive(turn.index(1 - WHICH))
                # (the producer filled this consumer's rank buffer for this tile too: release it unread)
                mbarrier.wait(r_ready.index(WHICH), (j // 2) & 1)
                mbarrier.arrive(r_empty.index(WHICH))
            else:
                _gemm_tile(c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, c_smem, a2_smem, b2_op, u_ptr,
                           ldu, flags, pid_m, pid_n, j, n0, k_tiles, M, K2, acc_layout, WHICH, B_KMAJOR, NUM_BUF, BM,
                           BN, R_EPILOGUE, FUSE_PROJ, tp, TRACE)
        else:
            _gemm_tile(c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, c_smem, a2_smem, b2_op, u_ptr, ldu,
                       flags, pid_m, pid_n, j, n0, k_tiles, M, K2, acc_layout, WHICH, B_KMAJOR, NUM_BUF, BM, BN,
                       R_EPILOGUE, FUSE_PROJ, tp, TRACE)
        _stamp(tp + 3, TRACE)
    tma.store_wait(pendings=0)


@gluon.jit
def _ring(a_desc, b_desc, a2_desc, b2_desc, c_desc, p_desc, NUM_BUF: gl.constexpr, R_EPILOGUE: gl.constexpr,
          EMPTY_ARRIVALS: gl.constexpr, FUSE_PROJ: gl.constexpr):
    """The kernel's shared memory and barriers, initialised: the ring's A1 / B1 slots, two C tiles,
    the consumers' A2 / B2 tiles (``R_EPILOGUE``; B2 only with ``FUSE_PROJ``, whose consumers take
    A2 into registers, and a P tile per ring slot), and the barriers; a ring slot is free again
    after ``EMPTY_ARRIVALS`` partitions released it (one: its consumer). Returns (a_bufs, b_bufs,
    c_bufs, a2_bufs, b2_bufs, p_bufs, ready, empty, turn, r_ready, r_empty); buffers a variant does
    not read are aliases of ``a_bufs`` / ``b_bufs``."""
    dtype: gl.constexpr = a_desc.dtype
    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + b_desc.block_type.shape, b_desc.layout)
    c_bufs = gl.allocate_shared_memory(dtype, [2] + c_desc.block_type.shape, c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    r_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    r_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    if FUSE_PROJ:
        p_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + p_desc.block_type.shape, p_desc.layout)
        a2_bufs = a_bufs
    else:
        p_bufs = b_bufs
        if R_EPILOGUE:  # each consumer's own A2 tiles
            a2_bufs = gl.allocate_shared_memory(dtype, [2] + a2_desc.block_type.shape, a2_desc.layout)
        else:  # (the ring carries A2 / B2)
            a2_bufs = a_bufs
    if R_EPILOGUE:  # each consumer's own B2 tiles
        b2_bufs = gl.allocate_shared_memory(dtype, [2] + b2_desc.block_type.shape, b2_desc.layout)
    else:
        b2_bufs = b_bufs
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=EMPTY_ARRIVALS)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
        mbarrier.init(r_ready.index(i), count=1)
        mbarrier.init(r_empty.index(i), count=1)
    return a_bufs, b_bufs, c_bufs, a2_bufs, b2_bufs, p_bufs, ready, empty, turn, r_ready, r_empty


@gluon.jit
def _ws_lora_gemm_kernel(a_desc, b_desc, a2_desc, b2_desc, c_desc, p_desc, u_ptr, ldu, flags, scale, M, N, K, K2,
                         trace, trace_tiles, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr,
                         CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, R_EPILOGUE: gl.constexpr,
                         FUSE_PROJ: gl.constexpr, TRACE: gl.constexpr, num_warps: gl.constexpr):
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    a_bufs, b_bufs, c_bufs, a2_bufs, b2_bufs, p_bufs, ready, empty, turn, r_ready, r_empty = _ring(
        a_desc, b_desc, a2_desc, b2_desc, c_desc, p_desc, NUM_BUF, R_EPILOGUE, 1, FUSE_PROJ)
    # (the argument tuples are spelled out: a tuple built by concatenation inside a Gluon kernel
    # left a plain int in it, which the warp_specialize call could not lower)
    gl.warp_specialize([
        (_consumer, (c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, a2_bufs, b2_bufs, p_bufs, c_bufs,
                     u_ptr, ldu, flags, scale, M, N, K, K2, 0, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, R_EPILOGUE,
                     FUSE_PROJ, trace, trace_tiles, TRACE)),
        (_consumer, (c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, a2_bufs, b2_bufs, p_bufs, c_bufs,
                     u_ptr, ldu, flags, scale, M, N, K, K2, 1, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, R_EPILOGUE,
                     FUSE_PROJ, trace, trace_tiles, TRACE)),
        (_producer, (a_desc, b_desc, a2_desc, b2_desc, p_desc, ready, empty, r_ready, r_empty, a_bufs, b_bufs,
                     a2_bufs, b2_bufs, p_bufs, M, N, K, K2, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, R_EPILOGUE,
                     FUSE_PROJ)),
    ], [4, 4], [CONSUMER_REGS, PRODUCER_REGS])


# the direct launch (samkern/launch.py): Triton's ``kernel[grid](...)`` binds and keys the five
# descriptors (their layouts' strings) in Python on every call
_WS = fast_launch(_ws_lora_gemm_kernel)


def _gl_dtype(dtype: torch.dtype):
    if dtype == torch.bfloat16:
        return gl.bfloat16
    if dtype == torch.float16:
        return gl.float16
    raise ValueError(f"the Gluon LoRA GEMM takes bf16 or fp16, got {dtype}")


@functools.lru_cache(maxsize=None)
def _smem_layout(block: Tuple[int, ...], dt) -> "gl.NVMMASharedLayout":
    # ~10 us of Python per call uncached, five calls per launch
    return gl.NVMMASharedLayout.get_default_for(list(block), dt)


def _descriptor(t: torch.Tensor, shape, strides, block, dt):
    """A host TMA descriptor built without ``TensorDescriptor.__post_init__``'s checks: the split
    path launches this kernel only on operands ``triton._tma_able`` passed (16-byte aligned base
    and row pitch, unit last stride, no empty dimension), with the candidates' power-of-two blocks.
    Checked construction plus uncached layouts cost ~75 us of host time per launch (five
    descriptors), in calls that are host-bound when eager."""
    d = TensorDescriptor.__new__(TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape = t, list(shape), list(strides), list(block)
    d.layout, d.padding = _smem_layout(tuple(block), dt), "zero"
    return d


def launch_gluon(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor, kmajor: bool,
                 out: torch.Tensor, cfg: Tuple[int, ...], launcher=None, proj: Optional[torch.Tensor] = None,
                 scale: float = 1.0, trace: Optional[torch.Tensor] = None) -> None:
    """``out = a1 @ b1 + a2 @ b2``; ``kmajor``: b1 / b2 are transposes of row-major storage (the
    forward's Wᵀ, Bᵀ), else row-major (the backward's W, A), as ``triton._tma_layout`` found; every
    operand TMA-able (``triton._tma_able``). With ``proj`` (K, r), r ≤ 16, in the same layout, a2
    is an OUTPUT: ``a2 = scale · a1 @ proj`` made by the kernel's projection tiles (``FUSE_PROJ``).
    ``launcher``: stands in for the kernel (offline compiles). ``trace`` (a dev switch, compiled out
    without it): an int64 tensor of (programs, tiles per program, 5) records, filled per tile with
    global-timer stamps (start, K loop done, u_s acquired, end) and its kind (1 projection, 2 GEMM;
    ``scripts/gpu_gluon_trace.py``)."""
    if cfg[0] % 3 == 0:  # a 192 × 192 tile: the three-consumer kernel (gluon_coop.py)
        from samkern.ops.lora.gluon_coop import launch_coop

        if trace is not None:
            raise ValueError("the 192 x 192 Gluon tile has no trace switch")
        launch_coop(a1, b1, a2, b2, kmajor, out, cfg, launcher=launcher, proj=proj, scale=scale)
        return
    bm, bn, bk, nbuf, group, creg, preg = cfg
    M, K = a1.shape
    N = out.shape[1]
    K2 = a2.shape[1]
    dt = _gl_dtype(a1.dtype)
    fuse = proj is not None
    epilogue = K2 <= R_EPILOGUE_MAX
    if fuse and not epilogue:
        raise ValueError(f"the Gluon kernel's projection tiles take r <= {R_EPILOGUE_MAX}, got {K2}")
    bk2 = R_EPILOGUE_MAX if epilogue else bk

    def right(b, bk, bn=bn):  # a (k, n) operand: a descriptor over its transpose's (n, k) storage when kmajor
        (k, n), (s0, s1) = b.shape, b.stride()
        if kmajor:
            return _descriptor(b, (n, k), (s1, s0), [bn, bk], dt)
        return _descriptor(b, (k, n), (s0, s1), [bk, bn], dt)

    d_a = _descriptor(a1, (M, K), a1.stride(), [bm, bk], dt)
    d_a2 = _descriptor(a2, (M, K2), a2.stride(), [bm, bk2], dt)
    d_c = _descriptor(out, (M, N), out.stride(), [bm, bn], dt)
    m_tiles = triton.cdiv(M, bm)
    tiles = m_tiles * (triton.cdiv(N, bn) + fuse)
    if fuse:
        d_p = right(proj, bk, R_EPILOGUE_MAX)
        # one flag per row block, set by its projection tile; every program resident at once (one
        # per SM at most), so a GEMM tile's wait always ends (its projection tile comes earlier in
        # the tile order: ``_tile``)
        flags = torch.zeros(m_tiles, device=a1.device, dtype=torch.int32)
    else:
        d_p, flags = d_a, a2  # (not read)
    n_sms = num_sms(a1.device) if a1.device.type == "cuda" else 132
    (launcher or _WS)[(max(1, min(tiles, n_sms)),)](
        d_a, right(b1, bk), d_a2, right(b2, bk2), d_c, d_p, a2, a2.stride(0), flags, float(scale), M, N, K, K2,
        flags if trace is None else trace, 0 if trace is None else trace.shape[1], B_KMAJOR=kmajor, NUM_BUF=nbuf,
        GROUP_M=group, CONSUMER_REGS=creg, PRODUCER_REGS=preg, R_EPILOGUE=epilogue, FUSE_PROJ=fuse,
        TRACE=trace is not None, num_warps=4)
