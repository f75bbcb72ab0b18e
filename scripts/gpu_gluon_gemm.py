# SPDX-License-Identifier: Apache-2.0
"""Experiment (session 11, not shipped): a persistent, software-pipelined Hopper GEMM written in
Gluon (``triton.experimental.gluon``: explicit TMA loads into a ring of shared-memory buffers with
mbarriers, async wgmma with one group in flight, the next tile's first loads issued before this
tile's epilogue, the epilogue's TMA store left in flight under the next tile's K loop), timed
against cuBLAS and the shipped Triton LoRA GEMM at #4's shapes, both operand layouts (the LoRA
forward's x Wᵀ with W stored (N, K), the backward's dy W). A question for the next step of #4: does
explicit pipelining across output tiles recover the narrow shapes (K or N = 768), where Triton's
own kernels reach 80-90 % of cuBLAS even without LoRA?

    python scripts/gpu_gluon_gemm.py --offline   # compile for sm_90 here, no GPU
    python scripts/gpu_gluon_gemm.py             # device: correctness, then CUDA-graph timings
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


@gluon.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
    """Grouped order: GROUP_M row tiles share each column panel of B in L2."""
    in_group = GROUP_M * num_pid_n
    first_m = (tile // in_group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % size_m), (tile % in_group) // size_m


@gluon.jit
def _load(count, a_desc, b_desc, off_m, off_n, k, bars, a_bufs, b_bufs, B_KMAJOR: gl.constexpr,
          NUM_BUF: gl.constexpr, pred=True):
    """Issue the TMA loads of one K step into ring slot ``count % NUM_BUF``; returns count + 1."""
    i = count % NUM_BUF
    bar = bars.index(i)
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(a_desc, [off_m, k], bar, a_bufs.index(i), pred)
    if B_KMAJOR:
        tma.async_copy_global_to_shared(b_desc, [off_n, k], bar, b_bufs.index(i), pred)
    else:
        tma.async_copy_global_to_shared(b_desc, [k, off_n], bar, b_bufs.index(i), pred)
    return count + 1


@gluon.jit
def _mma_step(acc, ready, a_bufs, b_bufs, n, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr):
    """Wait for ring load ``n`` to land, issue its wgmma, and wait until at most that one is in
    flight (so the previous step's slot may be refilled)."""
    slot = n % NUM_BUF
    mbarrier.wait(ready.index(slot), (n // NUM_BUF) & 1)
    if B_KMAJOR:
        b_op = b_bufs.index(slot).permute((1, 0))
    else:
        b_op = b_bufs.index(slot)
    acc = warpgroup_mma(a_bufs.index(slot), b_op, acc, is_async=True)
    return warpgroup_mma_wait(num_outstanding=1, deps=(acc,))


@gluon.jit
def _gemm_kernel(a_desc, b_desc, c_desc, M, N, K, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr,
                 GROUP_M: gl.constexpr, num_warps: gl.constexpr):
    """C = A B, A (M, K) row-major, B (K, N) given as (N, K) storage when B_KMAJOR; persistent:
    program p takes tiles p, p + P, ... Requires cdiv(K, BLOCK_K) >= NUM_BUF - 1 (host checks)."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])
    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + b_desc.block_type.shape, b_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, c_desc.block_type.shape, c_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(bars.index(i), count=1)

    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    tile = gl.program_id(0)
    step = gl.num_programs(0)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - tile, step)
    pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
    off_m = pid_m * BM
    off_n = pid_n * BN
    prod = 0
    cons = 0
    for kk in gl.static_range(NUM_BUF - 1):
        prod = _load(prod, a_desc, b_desc, off_m, off_n, kk * BK, bars, a_bufs, b_bufs, B_KMAJOR, NUM_BUF)
    for t in range(my_tiles):
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout)
        for k in range(k_tiles):
            acc = _mma_step(acc, bars, a_bufs, b_bufs, cons, B_KMAJOR, NUM_BUF)
            cons += 1
            if k + NUM_BUF - 1 < k_tiles:
                prod = _load(prod, a_desc, b_desc, off_m, off_n, (k + NUM_BUF - 1) * BK, bars, a_bufs, b_bufs,
                             B_KMAJOR, NUM_BUF)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        # every slot is free: start the next tile's loads before this tile's epilogue
        has_next = t + 1 < my_tiles
        tile += step
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        c_off_m = off_m
        c_off_n = off_n
        off_m = pid_m * BM
        off_n = pid_n * BN
        for kk in gl.static_range(NUM_BUF - 1):
            prod = _load(prod, a_desc, b_desc, off_m, off_n, kk * BK, bars, a_bufs, b_bufs, B_KMAJOR, NUM_BUF,
                         pred=has_next)
        tma.store_wait(pendings=0)  # the previous tile's store has left c_smem
        c_smem.store(acc.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [c_off_m, c_off_n], c_smem)
    tma.store_wait(pendings=0)
    for j in gl.static_range(NUM_BUF):
        mbarrier.invalidate(bars.index(j))


@gluon.jit
def _ws_producer(a_desc, b_desc, ready, empty, a_bufs, b_bufs, M, N, K, B_KMAJOR: gl.constexpr,
                 NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                 BK: gl.constexpr):
    """One warp: every K step of every tile of this program, in order, into the ring; a slot is
    refilled once its consumer has released it (``empty``; the first round passes: parity ^ 1)."""
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    first = gl.program_id(0)
    step = gl.num_programs(0)
    n = 0
    for j in range(gl.cdiv(num_pid_m * num_pid_n - first, step)):
        pid_m, pid_n = _tile_coords(first + j * step, num_pid_m, num_pid_n, GROUP_M)
        for k in range(k_tiles):
            mbarrier.wait(empty.index(n % NUM_BUF), ((n // NUM_BUF) & 1) ^ 1)
            n = _load(n, a_desc, b_desc, pid_m * BM, pid_n * BN, k * BK, ready, a_bufs, b_bufs, B_KMAJOR, NUM_BUF)


@gluon.jit
def _ws_consumer(a_desc, b_desc, c_desc, ready, empty, turn, a_bufs, b_bufs, c_smem, M, N, K, WHICH: gl.constexpr,
                 B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr, GROUP_M: gl.constexpr, BM: gl.constexpr,
                 BN: gl.constexpr, BK: gl.constexpr):
    """One warp group: this program's tiles j = WHICH, WHICH + 2, ... (ping-pong with the other
    consumer: its epilogue runs under the other's MMAs); releases each slot when its MMA is done.

    The two consumers' K loops take turns (``turn``: consumer c waits on ``turn[c]`` before its K
    loop and arrives on ``turn[1 - c]`` after it), as CUTLASS's ping-pong orders them: the ``ready``
    waits use phase parity only, which cannot tell ring rounds apart, and without the turns
    consumer 1 would wait for slot ``k_tiles`` (a ring round or more ahead of the producer when
    ``k_tiles >= NUM_BUF``) while consumer 0 still reads slot 0: it passes at once, reads unfilled
    buffers and releases slots consumer 0 still uses. (Session 11's version had no turns and died
    with "unspecified launch failure"; whether this was the cause is untested.)"""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BN, 16])
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    first = gl.program_id(0)
    step = gl.num_programs(0)
    for j in range(WHICH, gl.cdiv(num_pid_m * num_pid_n - first, step), 2):
        pid_m, pid_n = _tile_coords(first + j * step, num_pid_m, num_pid_n, GROUP_M)
        n0 = j * k_tiles
        # my turn: consumer 0's first wait passes at once (parity ^ 1, as the producer's first round)
        mbarrier.wait(turn.index(WHICH), ((j // 2) & 1) ^ (1 - WHICH))
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout)
        for k in range(k_tiles):
            acc = _mma_step(acc, ready, a_bufs, b_bufs, n0 + k, B_KMAJOR, NUM_BUF)
            if k > 0:  # the previous step's MMA is done: its slot can be refilled
                mbarrier.arrive(empty.index((n0 + k - 1) % NUM_BUF))
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((n0 + k_tiles - 1) % NUM_BUF))
        mbarrier.arrive(turn.index(1 - WHICH))  # the other consumer's K loop may start
        tma.store_wait(pendings=0)  # this consumer's previous store has left c_smem
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [pid_m * BM, pid_n * BN], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _ws_gemm_kernel(a_desc, b_desc, c_desc, M, N, K, B_KMAJOR: gl.constexpr, NUM_BUF: gl.constexpr,
                    GROUP_M: gl.constexpr, PRODUCER_WARPS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                    PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """``_gemm_kernel``'s contraction, warp-specialised: a one-warp TMA producer and two 4-warp
    wgmma consumers taking alternate tiles (the default partition is consumer 0)."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + b_desc.block_type.shape, b_desc.layout)
    c0 = gl.allocate_shared_memory(dtype, c_desc.block_type.shape, c_desc.layout)
    c1 = gl.allocate_shared_memory(dtype, c_desc.block_type.shape, c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    gl.warp_specialize([
        (_ws_consumer, (a_desc, b_desc, c_desc, ready, empty, turn, a_bufs, b_bufs, c0, M, N, K, 0, B_KMAJOR,
                        NUM_BUF, GROUP_M, BM, BN, BK)),
        (_ws_consumer, (a_desc, b_desc, c_desc, ready, empty, turn, a_bufs, b_bufs, c1, M, N, K, 1, B_KMAJOR,
                        NUM_BUF, GROUP_M, BM, BN, BK)),
        (_ws_producer, (a_desc, b_desc, ready, empty, a_bufs, b_bufs, M, N, K, B_KMAJOR, NUM_BUF, GROUP_M, BM, BN,
                        BK)),
    ], [4, PRODUCER_WARPS], [CONSUMER_REGS, PRODUCER_REGS])


def gluon_gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, cfg: tuple, n_sms: int = 132,
               launcher=None) -> torch.Tensor:
    """out = a @ b; b (K, N) any of: row-major, or the transpose of a row-major (N, K) (K-major)."""
    bm, bn, bk, warps, nbuf, group, per_sm = cfg[:7]
    kernel = _ws_gemm_kernel if len(cfg) > 7 and cfg[7] == "ws" else _gemm_kernel
    M, K = a.shape
    N = b.shape[1]
    kmajor = b.stride(0) == 1
    dt = gl.bfloat16 if a.dtype == torch.bfloat16 else gl.float16

    def desc(t, block):
        return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dt))

    a_d = desc(a, [bm, bk])
    b_d = desc(b.t(), [bn, bk]) if kmajor else desc(b, [bk, bn])
    c_d = desc(out, [bm, bn])
    assert triton.cdiv(K, bk) >= nbuf - 1
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    grid = (min(tiles, per_sm * n_sms),)
    extra = {}
    if kernel is _ws_gemm_kernel:  # (producer warps, consumer registers, producer registers)
        extra = dict(zip(("PRODUCER_WARPS", "CONSUMER_REGS", "PRODUCER_REGS"), cfg[8] if len(cfg) > 8 else (1, 232, 40)))
    (launcher or kernel)[grid](a_d, b_d, c_d, M, N, K, B_KMAJOR=kmajor, NUM_BUF=nbuf, GROUP_M=group,
                               num_warps=warps, **extra)
    return out


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, buffers, GROUP_M, programs per SM)
CONFIGS = [(128, 256, 64, 8, 3, 8, 1), (256, 128, 64, 8, 3, 8, 1), (128, 128, 64, 4, 4, 8, 1),
           (128, 128, 64, 4, 2, 8, 2), (128, 128, 64, 8, 4, 8, 1),
           # warp-specialised ping-pong: 4-warp consumers hold a 128x128 fp32 accumulator each
           # (s11-call9: one producer warp with setmaxnreg -> "unspecified launch failure"; Hopper's
           # setmaxnreg is per warp group, so the producer gets a whole warp group below; s11-call10
           # still failed; session 12 added the consumers' turns (see _ws_consumer), not yet run)
           (128, 128, 64, 4, 4, 8, 1, "ws", (4, 232, 40)), (128, 128, 64, 4, 4, 8, 1, "ws", (4, 168, 168)),
           (128, 128, 64, 4, 5, 8, 1, "ws", (4, 232, 40))]
if os.environ.get("GLUON_ONLY_WS") == "1":
    CONFIGS = [c for c in CONFIGS if len(c) > 7]


def _operands(K, N):
    """(a, b) of the plain GEMM in both LoRA layouts: x Wᵀ (W stored (N, K)) and dy W."""
    from gpu_lora_tiles import operands

    return {layout: ops[:2] for layout, ops in operands(K, N).items()}


def check(ci: int) -> None:
    """Run config ``ci`` once at every shape and layout on NaN-poisoned outputs (in a subprocess of
    ``main``, which kills it if a pipeline bug makes the kernel hang)."""
    cfg = CONFIGS[ci]
    for K, N in SHAPES[:int(os.environ.get("GLUON_CHECK_SHAPES", len(SHAPES)))]:
        for layout, (a, b) in _operands(K, N).items():
            out = torch.full((a.shape[0], b.shape[1]), float("nan"), device="cuda", dtype=a.dtype)
            gluon_gemm(a, b, out, cfg)
            torch.cuda.synchronize()
            ref = a.float() @ b.float()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            print(f"CHECK {ci} {K}x{N} {layout} {err:.3e}", flush=True)


def main() -> None:
    import json
    import subprocess

    from triton.testing import do_bench_cudagraph

    import samkern.ops.lora.triton as lt

    good = []
    for ci, cfg in enumerate(CONFIGS):
        try:
            res = subprocess.run([sys.executable, __file__, "--check", str(ci)], capture_output=True, text=True,
                                 timeout=float(os.environ.get("GLUON_CHECK_TIMEOUT", "90")))
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("CHECK")]
            errs = [float(ln.split()[-1]) for ln in lines]
            ok = res.returncode == 0 and len(errs) == 2 * len(SHAPES) and max(errs) < 1e-2
            print(cfg, "ok" if ok else "FAILED", f"max rel err {max(errs) if errs else None}", res.stderr[-400:] if not ok else "",
                  flush=True)
        except subprocess.TimeoutExpired:
            ok = False
            print(cfg, "HUNG (killed after the check timeout)", flush=True)
        if ok:
            good.append(cfg)
    names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "GROUP_M")
    shipped = [dict(zip(names, c)) for c in lt.TMA_CANDIDATES] + [dict(zip(names, c), persistent=True) for c in lt.PTMA_CANDIDATES]
    rows = []
    for K, N in SHAPES:
        for layout, (a, b) in _operands(K, N).items():
            out = torch.empty(a.shape[0], b.shape[1], device="cuda", dtype=a.dtype)

            def t(fn):
                try:
                    fn()
                    return do_bench_cudagraph(fn, rep=25, return_mode="median") * 1e3
                except Exception as e:  # noqa: BLE001
                    return float("inf")

            cub = t(lambda: torch.mm(a, b, out=out))
            tri = min((t(lambda c=c: lt.lora_gemm(a, b, config=c, out=out)), str(tuple(c.values()))) for c in shipped)
            glu = min(((t(lambda c=c: gluon_gemm(a, b, out, c)), str(c)) for c in good), default=(float("inf"), None))
            rows.append({"shape": f"{K}x{N}", "layout": layout, "cublas": cub, "triton": tri, "gluon": glu})
            print(f"{K:>5}x{N:<6} {layout}  cublas {cub:7.1f}  triton {tri[0]:7.1f} {tri[1]:34}  gluon {glu[0]:7.1f} {glu[1]}",
                  flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "s11-gluon-gemm.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
SHAPES = [(768, 3352), (1536, 768), (1536, 6448), (3072, 1536), (2560, 10576), (5120, 2560)]


def ptxas_report(ptx: str) -> str:
    """Registers and spill bytes per thread from ``ptxas -v`` for sm_90a."""
    import re
    import shutil
    import subprocess
    import tempfile

    ptxas = shutil.which("ptxas") or os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    res = subprocess.run([ptxas, "-v", "-arch=sm_90a", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    txt = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", txt)
    spill = re.search(r"(\d+) bytes spill stores", txt)
    return f"regs {regs.group(1) if regs else '?'} spill {spill.group(1) if spill else '?'}"


def offline() -> None:
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from ssd_regs_offline import _signature

    launches = []

    class Cap:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((a, kw))

    M, K, N = 1024, 1536, 768
    x, W, dy = torch.zeros(M, K, dtype=torch.bfloat16), torch.zeros(N, K, dtype=torch.bfloat16), torch.zeros(M, N, dtype=torch.bfloat16)
    for cfg in CONFIGS:
        for layout, (a, b, out) in {"fwd": (x, W.t(), dy.clone()), "bwd": (dy, W, x.clone())}.items():
            launches.clear()
            gluon_gemm(a, b, out, cfg, launcher=Cap())
            args, kw = launches[0]
            try:
                kern = _ws_gemm_kernel if len(cfg) > 7 else _gemm_kernel
                sig, constexprs, attrs = _signature(kern, args, kw)
                ck = triton.compile(GluonASTSource(kern, sig, constexprs, attrs),
                                    target=GPUTarget("cuda", 90, 32), options={"num_warps": kw["num_warps"]})
                print(cfg, layout, ptxas_report(ck.asm["ptx"]), "smem", ck.metadata.shared, flush=True)
            except Exception as e:  # noqa: BLE001
                print(cfg, layout, "FAIL", type(e).__name__, repr(e.__cause__ or e)[:800], flush=True)


if __name__ == "__main__":
    if "--offline" in sys.argv:
        offline()
    elif "--check" in sys.argv:
        check(int(sys.argv[sys.argv.index("--check") + 1]))
    else:
        main()
