# SPDX-License-Identifier: Apache-2.0
"""Experiment (session 25, not shipped): the LoRA GEMM with its fused rank-r projection as a
warp-specialised Hopper kernel in Gluon, timed against cuBLAS's plain GEMM and samkern's shipped
``lora_proj_gemm`` (the tuner's GPU-time choice) at #4's six shapes, both layouts, r = 8.

Why. Session 25 ran ``scripts/gpu_gluon_gemm.py``'s ping-pong GEMM (a one-warp-group TMA producer,
two 4-warp wgmma consumers on alternate tiles, "turns" ordering their K loops) for the first time
since session 12 fixed it: correct at every shape and layout, and at cuBLAS's time where Triton's
own kernels are 10-25 % slower (768→3352 x Wᵀ 55.5 vs cuBLAS 55.2 µs, Triton 64.1; 1536→768 dy W
24.8 vs 24.3, Triton 28.4; ``dev-runs/s25-call1-gluon-ws-gemm.log``). This adds the LoRA terms
to that kernel: ``u_s = scale · a1 @ proj`` ((M, r), written once per row panel) and
``C = a1 @ b1 + u_s @ b2``:

* the producer loads, per K step, the a1 tile, the b1 tile and the proj tile ([BK, 16]: r padded
  to 16 by TMA's zero fill) into one ring slot, and per output tile the b2 tile ([16, BN]) into
  that tile's consumer's buffer;
* the consumer adds a second wgmma per K step (N = 16) for the projection, and after its K loop
  rounds ``scale · u`` to the input dtype into shared memory and issues one more wgmma (K = 16)
  onto the accumulator, then stores C (and, in the first column panel, u_s) by TMA.

Layouts (``B_KMAJOR``): the forward (a1 = x, b1 = Wᵀ, proj = Aᵀ, b2 = Bᵀ from W (N, K), A (r, K),
B (N, r)) has every right operand K-major; the backward's dx (a1 = dy, b1 = W, proj = B, b2 = A)
has none.

    python scripts/gpu_gluon_lora.py --offline   # compile for sm_90 here (registers, shared memory)
    python scripts/gpu_gluon_lora.py             # device: checks (subprocess, timeout), then timings
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

from gpu_gluon_gemm import _tile_coords  # noqa: E402

RP = gl.constexpr(16)  # the rank, padded (TMA zero-fills the columns past r)


@gluon.jit
def _producer(a_desc, b_desc, p_desc, q_desc, ready, empty, q_ready, q_empty, a_bufs, b_bufs, p_bufs, q_bufs,
              u_desc, u_bufs, M, N, K, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr,
              BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, FUSE: gl.constexpr):
    """Every K step of every tile of this program, in order, into the ring (a slot is refilled once
    its consumer released it), and each tile's b2 tile (without ``FUSE`` also its u_s tile) into its
    consumer's buffers."""
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    first = gl.program_id(0)
    step = gl.num_programs(0)
    n = 0
    for j in range(gl.cdiv(num_pid_m * num_pid_n - first, step)):
        pid_m, pid_n = _tile_coords(first + j * step, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BM
        off_n = pid_n * BN
        c = j % 2
        mbarrier.wait(q_empty.index(c), ((j // 2) & 1) ^ 1)
        if FUSE:
            mbarrier.expect(q_ready.index(c), q_desc.block_type.nbytes)
        else:  # u_s, made beforehand (the split path), rides with the b2 tile
            mbarrier.expect(q_ready.index(c), q_desc.block_type.nbytes + u_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(u_desc, [off_m, 0], q_ready.index(c), u_bufs.index(c))
        if B_KMAJOR:
            tma.async_copy_global_to_shared(q_desc, [off_n, 0], q_ready.index(c), q_bufs.index(c))
        else:
            tma.async_copy_global_to_shared(q_desc, [0, off_n], q_ready.index(c), q_bufs.index(c))
        for k in range(k_tiles):
            i = n % NUM_BUF
            mbarrier.wait(empty.index(i), ((n // NUM_BUF) & 1) ^ 1)
            bar = ready.index(i)
            if FUSE:
                mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes + p_desc.block_type.nbytes)
            else:
                mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, k * BK], bar, a_bufs.index(i))
            if B_KMAJOR:
                tma.async_copy_global_to_shared(b_desc, [off_n, k * BK], bar, b_bufs.index(i))
                if FUSE:
                    tma.async_copy_global_to_shared(p_desc, [0, k * BK], bar, p_bufs.index(i))
            else:
                tma.async_copy_global_to_shared(b_desc, [k * BK, off_n], bar, b_bufs.index(i))
                if FUSE:
                    tma.async_copy_global_to_shared(p_desc, [k * BK, 0], bar, p_bufs.index(i))
            n += 1


@gluon.jit
def _consumer(c_desc, u_desc, ready, empty, turn, q_ready, q_empty, a_bufs, b_bufs, p_bufs, q_bufs, c_bufs, u_bufs,
              M, N, K, scale, WHICH: gl.constexpr, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr,
              GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, FUSE: gl.constexpr):
    """Tiles j = WHICH, WHICH + 2, ... of this program (ping-pong; ``turn`` orders the two
    consumers' K loops as in ``gpu_gluon_gemm._ws_consumer``)."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BN, 16])
    u_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, RP, 16])
    dtype: gl.constexpr = c_desc.dtype
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    first = gl.program_id(0)
    step = gl.num_programs(0)
    c_smem = c_bufs.index(WHICH)
    u_smem = u_bufs.index(WHICH)
    q_buf = q_bufs.index(WHICH)
    if B_KMAJOR:
        q_op = q_buf.permute((1, 0))
    else:
        q_op = q_buf
    for j in range(WHICH, gl.cdiv(num_pid_m * num_pid_n - first, step), 2):
        pid_m, pid_n = _tile_coords(first + j * step, num_pid_m, num_pid_n, GROUP_M)
        n0 = j * k_tiles
        mbarrier.wait(turn.index(WHICH), ((j // 2) & 1) ^ (1 - WHICH))
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout)
        acc_u = gl.zeros((BM, RP), dtype=gl.float32, layout=u_layout)
        for k in range(k_tiles):
            slot = (n0 + k) % NUM_BUF
            mbarrier.wait(ready.index(slot), ((n0 + k) // NUM_BUF) & 1)
            if B_KMAJOR:
                b_op = b_bufs.index(slot).permute((1, 0))
                p_op = p_bufs.index(slot).permute((1, 0))
            else:
                b_op = b_bufs.index(slot)
                p_op = p_bufs.index(slot)
            acc = warpgroup_mma(a_bufs.index(slot), b_op, acc, is_async=True)
            if FUSE:
                acc_u = warpgroup_mma(a_bufs.index(slot), p_op, acc_u, is_async=True)
                # at most this step's two groups in flight: the previous step's slot can be refilled
                acc, acc_u = warpgroup_mma_wait(num_outstanding=2, deps=(acc, acc_u))
            else:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            if k > 0:
                mbarrier.arrive(empty.index((n0 + k - 1) % NUM_BUF))
        acc, acc_u = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc_u))
        mbarrier.arrive(empty.index((n0 + k_tiles - 1) % NUM_BUF))
        mbarrier.arrive(turn.index(1 - WHICH))  # the other consumer's K loop may start
        # u_s = scale · a1 @ proj, rounded as stored; C += u_s @ b2
        tma.store_wait(pendings=0)  # this consumer's previous C / u_s stores have left its buffers
        if FUSE:
            u_smem.store((acc_u * scale).to(dtype))
            fence_async_shared()
            if pid_n == 0:
                tma.async_copy_shared_to_global(u_desc, [pid_m * BM, 0], u_smem)
        mbarrier.wait(q_ready.index(WHICH), (j // 2) & 1)
        acc = warpgroup_mma(u_smem, q_op, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(q_empty.index(WHICH))
        c_smem.store(acc.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [pid_m * BM, pid_n * BN], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _ws_lora_kernel(a_desc, b_desc, p_desc, q_desc, c_desc, u_desc, M, N, K, scale, B_KMAJOR: gl.constexpr,
                    NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr, PRODUCER_REGS: gl.constexpr,
                    CONSUMER_REGS: gl.constexpr, FUSE: gl.constexpr, num_warps: gl.constexpr):
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + b_desc.block_type.shape, b_desc.layout)
    p_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + p_desc.block_type.shape, p_desc.layout)
    q_bufs = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    c_bufs = gl.allocate_shared_memory(dtype, [2] + c_desc.block_type.shape, c_desc.layout)
    u_bufs = gl.allocate_shared_memory(dtype, [2] + u_desc.block_type.shape, u_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    gl.warp_specialize([
        (_consumer, (c_desc, u_desc, ready, empty, turn, q_ready, q_empty, a_bufs, b_bufs, p_bufs, q_bufs, c_bufs,
                     u_bufs, M, N, K, scale, 0, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, FUSE)),
        (_consumer, (c_desc, u_desc, ready, empty, turn, q_ready, q_empty, a_bufs, b_bufs, p_bufs, q_bufs, c_bufs,
                     u_bufs, M, N, K, scale, 1, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, FUSE)),
        (_producer, (a_desc, b_desc, p_desc, q_desc, ready, empty, q_ready, q_empty, a_bufs, b_bufs, p_bufs, q_bufs,
                     u_desc, u_bufs, M, N, K, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN, BK, FUSE)),
    ], [4, 4], [CONSUMER_REGS, PRODUCER_REGS])


# (BLOCK_M, BLOCK_N, BLOCK_K, ring slots, GROUP_M, consumer registers, producer registers)
# (232 / 40: two consumer warp groups and the producer's fill the 64 K registers; 168 / 168 spilled offline)
CONFIGS = [(128, 128, 64, 4, 8, 232, 40), (128, 128, 64, 3, 8, 232, 40), (128, 128, 64, 4, 8, 232, 40, "split"),
           (128, 128, 64, 3, 8, 232, 40, "split")]


def gluon_lora(a1, b1, proj, b2, scale, out, u_out, cfg, n_sms=132, launcher=None):
    """``u_out = scale · a1 @ proj``, ``out = a1 @ b1 + u_out @ b2`` (``lora_proj_gemm``'s
    contract, no bias); right operands either all row-major or all transposes of row-major."""
    bm, bn, bk, nbuf, group, creg, preg = cfg[:7]
    fuse = not (len(cfg) > 7 and cfg[7] == "split")
    if not fuse:  # the split path: u_s by cuBLAS first (one more read of a1), the kernel only adds u_s @ b2
        torch.addmm(u_out, a1, proj, beta=0, alpha=scale, out=u_out)
    M, K = a1.shape
    N = b1.shape[1]
    kmajor = b1.stride(0) == 1
    dt = gl.bfloat16 if a1.dtype == torch.bfloat16 else gl.float16

    def desc(t, block):
        return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dt))

    a_d = desc(a1, [bm, bk])
    if kmajor:  # b1 = Wᵀ, proj = Aᵀ, b2 = Bᵀ: their storage is (N, K), (r, K), (N, r)
        b_d, p_d, q_d = desc(b1.t(), [bn, bk]), desc(proj.t(), [int(RP), bk]), desc(b2.t(), [bn, int(RP)])
    else:
        b_d, p_d, q_d = desc(b1, [bk, bn]), desc(proj, [bk, int(RP)]), desc(b2, [int(RP), bn])
    c_d = desc(out, [bm, bn])
    u_d = desc(u_out, [bm, int(RP)])
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    (launcher or _ws_lora_kernel)[(min(tiles, n_sms),)](
        a_d, b_d, p_d, q_d, c_d, u_d, M, N, K, float(scale), B_KMAJOR=kmajor, NUM_BUF=nbuf, GROUP_M=group,
        PRODUCER_REGS=preg, CONSUMER_REGS=creg, FUSE=fuse, num_warps=4)
    return out, u_out


SHAPES = [(768, 3352), (1536, 768), (1536, 6448), (3072, 1536), (2560, 10576), (5120, 2560)]
SCALE = 2.0


def _refs(a1, b1, proj, b2):
    u = (SCALE * (a1.float() @ proj.float())).to(a1.dtype)
    return a1.float() @ b1.float() + u.float() @ b2.float(), u


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check(ci: int) -> None:
    """Config ``ci`` at every shape and layout on NaN-poisoned outputs (run in a subprocess)."""
    from gpu_lora_tiles import operands

    for K, N in SHAPES[:int(os.environ.get("GLUON_CHECK_SHAPES", len(SHAPES)))]:
        for layout, (a1, b1, proj, b2) in operands(K, N).items():
            out = torch.full((a1.shape[0], b1.shape[1]), float("nan"), device="cuda", dtype=a1.dtype)
            u = torch.full((a1.shape[0], proj.shape[1]), float("nan"), device="cuda", dtype=a1.dtype)
            gluon_lora(a1, b1, proj, b2, SCALE, out, u, CONFIGS[ci])
            torch.cuda.synchronize()
            ref, ref_u = _refs(a1, b1, proj, b2)
            print(f"CHECK {ci} {K}x{N} {layout} {max(_rel(out, ref), _rel(u, ref_u)):.3e}", flush=True)


def main() -> None:
    import json
    import subprocess

    from triton.testing import do_bench_cudagraph

    import samkern.ops.lora.triton as lt
    from gpu_lora_tiles import operands

    good = []
    for ci, cfg in enumerate(CONFIGS):
        try:
            res = subprocess.run([sys.executable, __file__, "--check", str(ci)], capture_output=True, text=True,
                                 timeout=float(os.environ.get("GLUON_CHECK_TIMEOUT", "90")))
            errs = [float(ln.split()[-1]) for ln in res.stdout.splitlines() if ln.startswith("CHECK")]
            ok = res.returncode == 0 and len(errs) == 2 * len(SHAPES) and max(errs) < 1e-2
            print(cfg, "ok" if ok else "FAILED", f"max rel err {max(errs) if errs else None}",
                  "" if ok else res.stdout[-600:] + res.stderr[-600:], flush=True)
        except subprocess.TimeoutExpired:
            ok = False
            print(cfg, "HUNG (killed after the check timeout)", flush=True)
        if ok:
            good.append(cfg)

    def t(fn):
        try:
            fn()
            return do_bench_cudagraph(fn, rep=25, return_mode="median") * 1e3
        except Exception:  # noqa: BLE001
            return float("inf")

    rows = []
    for K, N in SHAPES:
        for layout, (a1, b1, proj, b2) in operands(K, N).items():
            M = a1.shape[0]
            out = torch.empty(M, b1.shape[1], device="cuda", dtype=a1.dtype)
            u = torch.empty(M, proj.shape[1], device="cuda", dtype=a1.dtype)
            cub = t(lambda: torch.mm(a1, b1, out=out))
            lt.lora_proj_gemm(a1, b1, proj, b2, SCALE, out=out, u_out=u)  # the tuner decides (eager call)
            shipped = t(lambda: lt.lora_proj_gemm(a1, b1, proj, b2, SCALE, out=out, u_out=u))
            best = {}
            for kind in ("fused", "split"):
                cs = [c for c in good if (c[-1] == "split") == (kind == "split")]
                best[kind] = min(((t(lambda c=c: gluon_lora(a1, b1, proj, b2, SCALE, out, u, c)), str(c)) for c in cs),
                                 default=(float("inf"), None))
            rows.append({"shape": f"{K}x{N}", "layout": layout, "cublas_plain": cub, "samkern": shipped, **best})
            print(f"{K:>5}x{N:<6} {layout}  cublas-plain {cub:7.1f}  samkern {shipped:7.1f} ({100 * cub / shipped:.0f} %)  "
                  + "  ".join(f"gluon-{k} {v[0]:7.1f} ({100 * cub / v[0]:.0f} %)" for k, v in best.items()), flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "gluon-lora.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


def offline() -> None:
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from gpu_gluon_gemm import ptxas_report
    from ssd_regs_offline import _signature

    launches = []

    class Cap:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((a, kw))

    M, K, N, r = 1024, 1536, 768, 8
    bf = torch.bfloat16
    x, W, A, B = (torch.zeros(*s, dtype=bf) for s in ((M, K), (N, K), (r, K), (N, r)))
    dy = torch.zeros(M, N, dtype=bf)
    for cfg in CONFIGS:
        for layout, (a1, b1, proj, b2, out) in {"fwd": (x, W.t(), A.t(), B.t(), torch.zeros(M, N, dtype=bf)),
                                                "bwd": (dy, W, B, A, torch.zeros(M, K, dtype=bf))}.items():
            launches.clear()
            gluon_lora(a1, b1, proj, b2, SCALE, out, torch.zeros(M, r, dtype=bf), cfg, launcher=Cap())
            args, kw = launches[0]
            try:
                sig, constexprs, attrs = _signature(_ws_lora_kernel, args, kw)
                ck = triton.compile(GluonASTSource(_ws_lora_kernel, sig, constexprs, attrs),
                                    target=GPUTarget("cuda", 90, 32), options={"num_warps": kw["num_warps"]})
                print(cfg, layout, ptxas_report(ck.asm["ptx"]), "smem", ck.metadata.shared, flush=True)
            except Exception as e:  # noqa: BLE001
                print(cfg, layout, "FAIL", type(e).__name__, repr(e.__cause__ or e)[-1500:], flush=True)


if __name__ == "__main__":
    if "--offline" in sys.argv:
        offline()
    elif "--check" in sys.argv:
        check(int(sys.argv[sys.argv.index("--check") + 1]))
    else:
        main()
