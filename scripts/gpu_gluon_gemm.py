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

from samkern.ops.lora.gluon import _tile_coords  # noqa: E402  (grouped tile order, shared with the shipped kernel)


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


def gluon_gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, cfg: tuple, n_sms: int = 132,
               launcher=None) -> torch.Tensor:
    """out = a @ b; b (K, N) any of: row-major, or the transpose of a row-major (N, K) (K-major)."""
    bm, bn, bk, warps, nbuf, group, per_sm = cfg[:7]
    kernel = _gemm_kernel
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
    (launcher or kernel)[grid](a_d, b_d, c_d, M, N, K, B_KMAJOR=kmajor, NUM_BUF=nbuf, GROUP_M=group,
                               num_warps=warps)
    return out


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, buffers, GROUP_M, programs per SM)
CONFIGS = [(128, 256, 64, 8, 3, 8, 1), (256, 128, 64, 8, 3, 8, 1), (128, 128, 64, 4, 4, 8, 1),
           (128, 128, 64, 4, 2, 8, 2), (128, 128, 64, 8, 4, 8, 1)]
# The warp-specialised ping-pong variant (sessions 11-12; correct on the H100 since session 12's
# turns, dev-runs/s13-call1 and s25-call1) is shipped as samkern/ops/lora/gluon.py; the script as run then:
# git show 7b504bd:scripts/gpu_gluon_gemm.py (GLUON_ONLY_WS=1).


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
                kern = _gemm_kernel
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
