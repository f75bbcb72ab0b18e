# SPDX-License-Identifier: Apache-2.0
"""Does an N = 16 wgmma per K step cost the Gluon LoRA GEMM less in a partition of its own?

Sessions 25 and 27 fused the rank-r projection into the GEMM consumers' K loop (a second wgmma
per step, N = 16) and lost 17-32 %. This measures the precondition of the other layout (NOTES.md,
"First actions"): a third warp-specialised partition (one warpgroup) that waits on the same ring
slots as the consumers, issues ``u += A1 tile · (16 rows of the B1 tile)ᵀ`` per K step and
releases each slot with them (the ``empty`` barriers count two arrivals). Its result is only
summed into one store per program (the projection's real operand, the P tile, would need the
producer to load it: not built here). Timed as CUDA-graph replays with the L2 flushed
(``benchmarks.harness.time_graph``) against the same kernel without the partition, both with the
consumers at 208 registers and the partition at 56 (the 64 K registers must now hold four
warpgroups; at 216 / 40 the kernel spilled, offline), and the shipped
kernel (consumers at 232) at three forward shapes, r = 8.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_gluon_rank_partition.py  # (a child per run: a hang times out)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samkern.ops.lora import gluon as lg  # noqa: E402

SHAPES = [(6144, 768, 3352), (6144, 1536, 6448), (6144, 2560, 10576)]  # (M, K, N) forward, r = 8
RANK_REGS = gl.constexpr(56)  # (a module-level int used in a Gluon kernel must be a constexpr)


@gluon.jit
def _rank_partition(ready, empty, a_bufs, b_bufs, sink_ptr, M, N, K, NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr,
                    BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr):
    """Every tile of this program in ring order: one async N = 16 wgmma per K step from the slot's
    A1 tile and the first 16 rows of its (K-major) B1 tile; releases the previous slot once at
    most this step's wgmma is in flight; the sum over tiles is stored once (keeps it live)."""
    u_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16])
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    first = gl.program_id(0)
    step = gl.num_programs(0)
    u = gl.zeros((BM, 16), dtype=gl.float32, layout=u_layout)
    for j in range(gl.cdiv(num_pid_m * num_pid_n - first, step)):
        n0 = j * k_tiles
        for k in range(k_tiles):
            slot = (n0 + k) % NUM_BUF
            mbarrier.wait(ready.index(slot), ((n0 + k) // NUM_BUF) & 1)
            p_op = b_bufs.index(slot).slice(0, 16).permute((1, 0))
            u = warpgroup_mma(a_bufs.index(slot), p_op, u, is_async=True)
            u = warpgroup_mma_wait(num_outstanding=1, deps=(u,))
            if k > 0:
                mbarrier.arrive(empty.index((n0 + k - 1) % NUM_BUF))
        u = warpgroup_mma_wait(num_outstanding=0, deps=(u,))
        mbarrier.arrive(empty.index((n0 + k_tiles - 1) % NUM_BUF))
    rows = gl.arange(0, BM, layout=gl.SliceLayout(1, u_layout))
    cols = gl.arange(0, 16, layout=gl.SliceLayout(0, u_layout))
    gl.store(sink_ptr + first * BM * 16 + rows[:, None] * 16 + cols[None, :], u)


@gluon.jit
def _ws_kernel_with_rank_partition(a_desc, b_desc, a2_desc, b2_desc, c_desc, p_desc, u_ptr, ldu, flags, scale, sink_ptr,
                                   M, N, K, K2, trace, trace_tiles, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr,
                                   GROUP_M: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
                                   R_EPILOGUE: gl.constexpr, FUSE_PROJ: gl.constexpr, TRACE: gl.constexpr,
                                   num_warps: gl.constexpr):
    """``lg._ws_lora_gemm_kernel`` (its ring, producer and consumers, R_EPILOGUE; not FUSE_PROJ)
    plus the third partition above."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    # the shipped kernel's buffers and barriers; a ring slot is free after two releases (its
    # consumer and the rank partition)
    a_bufs, b_bufs, c_bufs, a2_bufs, b2_bufs, p_bufs, ready, empty, turn, r_ready, r_empty = lg._ring(
        a_desc, b_desc, a2_desc, b2_desc, c_desc, p_desc, NUM_BUF, R_EPILOGUE, 2, FUSE_PROJ)
    gl.warp_specialize([
        (lg._consumer, (c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, a2_bufs, b2_bufs, p_bufs,
                        c_bufs, u_ptr, ldu, flags, scale, M, N, K, K2, 0, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK,
                        R_EPILOGUE, FUSE_PROJ, trace, trace_tiles, TRACE)),
        (lg._consumer, (c_desc, ready, empty, turn, r_ready, r_empty, a_bufs, b_bufs, a2_bufs, b2_bufs, p_bufs,
                        c_bufs, u_ptr, ldu, flags, scale, M, N, K, K2, 1, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK,
                        R_EPILOGUE, FUSE_PROJ, trace, trace_tiles, TRACE)),
        (lg._producer, (a_desc, b_desc, a2_desc, b2_desc, p_desc, ready, empty, r_ready, r_empty, a_bufs, b_bufs,
                        a2_bufs, b2_bufs, p_bufs, M, N, K, K2, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, R_EPILOGUE,
                        FUSE_PROJ)),
        (_rank_partition, (ready, empty, a_bufs, b_bufs, sink_ptr, M, N, K, NUM_BUF, GROUP_M, BM, BN, BK)),
    ], [4, 4, 4], [CONSUMER_REGS, PRODUCER_REGS, RANK_REGS])


class _Launcher:
    """Stands in for the shipped kernel in ``lg.launch_gluon`` (its ``launcher`` argument): the
    same descriptors and grid, this script's kernel."""

    def __init__(self, sink: torch.Tensor) -> None:
        self.sink = sink

    def __getitem__(self, grid):
        def go(*descs_and_pointers, **kw):  # (a, b, a2, b2, c, p; u, ldu, flags, scale; M, N, K, K2; trace, tiles)
            a = descs_and_pointers
            _ws_kernel_with_rank_partition[grid](*a[:10], self.sink, *a[10:], **kw)
        return go


def child(variant: str) -> None:
    from benchmarks.harness import time_graph

    out = {}
    for M, K, N in SHAPES:
        r, dt = 8, torch.bfloat16
        x = torch.randn(M, K, device="cuda").to(dt)
        W = (torch.randn(N, K, device="cuda") * K ** -0.5).to(dt)
        u = torch.randn(M, r, device="cuda").to(dt)
        B = (torch.randn(N, r, device="cuda") * r ** -0.5).to(dt)
        y = torch.empty(M, N, device="cuda", dtype=dt)
        cfg = lg.candidates(r)[0]
        sink = torch.zeros(132 * 128 * 16, device="cuda")
        if variant != "shipped":
            cfg = cfg[:5] + (208,) + cfg[6:]  # consumers at 208, the partition at 56: four warpgroups' 64 K
        launcher = _Launcher(sink) if variant == "rank_partition" else None  # (else the shipped kernel)
        call = lambda: lg.launch_gluon(x, W.t(), u, B.t(), True, y, cfg, launcher=launcher)  # noqa: E731
        call()
        torch.cuda.synchronize()
        err = float((y.float() - (x.float() @ W.float().t() + u.float() @ B.float().t())).norm()
                    / (x.float() @ W.float().t()).norm())
        out[f"{K}x{N}"] = {"us": round(time_graph(call), 1), "err": err}
    print(json.dumps({"variant": variant, **out}), flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        child(sys.argv[1])
        return
    for rnd in range(int(os.environ.get("ROUNDS", "1"))):
        for variant in ("shipped", "no_rank_partition", "rank_partition"):
            try:
                res = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, timeout=150)
                print(f"round {rnd}:", (res.stdout.strip() or res.stderr.strip()[-1500:]), flush=True)
            except subprocess.TimeoutExpired:
                print(f"round {rnd}: {variant} timed out (a hang?)", flush=True)


if __name__ == "__main__":
    main()
