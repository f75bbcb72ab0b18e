# SPDX-License-Identifier: Apache-2.0
"""Experiment (session 11, not shipped): warp-specialised LoRA GEMM kernels through Triton 3.6's
Hopper auto-warp-specialisation (``tl.range(..., warp_specialize=True)``) against the shipped TMA
kernels and cuBLAS at #4's six shapes, both operand layouts, plain and with the fused rank-8
projection. Correctness first (NaN-poisoned outputs vs an fp32 reference), then CUDA-graph timings.

Outcome: the kernels compile for sm_90 at 4 warps (a producer and two consumer warp groups, 12 warps,
``setmaxnreg``; pointer stores in the epilogue: a descriptor store fails in the WS pass) but the
first one launched on the H100 never finished (``benchmarks/results/dev-runs/s11-call2-lora-ws.log``).

    python scripts/gpu_lora_ws.py --offline  # compile report, no GPU needed
    python scripts/gpu_lora_ws.py            # device; env WS_SHAPES="768x3352", WS_VERBOSE=1, WS_OUT=...
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton import cdiv  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

import samkern.ops.lora_linear.triton as lt  # noqa: E402
from samkern.ops.lora_linear.triton import _b_desc, _desc, _precision, _tma_step  # noqa: E402


@triton.jit
def _lora_gemm_ws_kernel(
    a1_desc, b1_desc, b2_desc, p_desc, a2_ptr, c_ptr, bias_ptr,
    M, N, K1, scale, stride_cm, stride_um,
    HAS_BIAS: tl.constexpr, FUSE_PROJ: tl.constexpr, B_KMAJOR: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr, R: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(K1, BLOCK_K), num_stages=NUM_STAGES, warp_specialize=True):
        a = a1_desc.load([off_m, k * BLOCK_K])
        acc = _tma_step(a, b1_desc, off_n, k * BLOCK_K, acc, B_KMAJOR, PRECISION)
        if FUSE_PROJ:
            u = _tma_step(a, p_desc, 0, k * BLOCK_K, u, B_KMAJOR, PRECISION)
    rm = off_m + tl.arange(0, BLOCK_M)
    rm64 = rm.to(tl.int64)
    if FUSE_PROJ:
        u_s = (u * scale).to(a2_ptr.dtype.element_ty)
        if pid_n == 0:
            rr = tl.arange(0, BLOCK_R)
            tl.store(a2_ptr + rm64[:, None] * stride_um + rr[None, :], u_s, mask=(rm[:, None] < M) & (rr[None, :] < R))
        acc = _tma_step(u_s, b2_desc, off_n, 0, acc, B_KMAJOR, PRECISION)
    rn = off_n + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    tl.store(c_ptr + rm64[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _lora_gemm_pws_kernel(
    a1_desc, b1_desc, b2_desc, p_desc, a2_ptr, c_ptr, bias_ptr,
    M, N, K1, scale, stride_cm, stride_um,
    HAS_BIAS: tl.constexpr, FUSE_PROJ: tl.constexpr, B_KMAJOR: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr, R: tl.constexpr, NUM_SMS: tl.constexpr,
):
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K1, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    for tile_id in tl.range(start_pid, num_tiles, NUM_SMS, flatten=False, warp_specialize=True,
                            num_stages=NUM_STAGES):
        group_id = tile_id // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + (tile_id % group_size_m)
        pid_n = (tile_id % num_pid_in_group) // group_size_m
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k in range(k_tiles):
            a = a1_desc.load([off_m, k * BLOCK_K])
            acc = _tma_step(a, b1_desc, off_n, k * BLOCK_K, acc, B_KMAJOR, PRECISION)
            if FUSE_PROJ:
                u = _tma_step(a, p_desc, 0, k * BLOCK_K, u, B_KMAJOR, PRECISION)
        rm = off_m + tl.arange(0, BLOCK_M)
        rm64 = rm.to(tl.int64)
        if FUSE_PROJ:
            u_s = (u * scale).to(a2_ptr.dtype.element_ty)
            if pid_n == 0:
                rr = tl.arange(0, BLOCK_R)
                tl.store(a2_ptr + rm64[:, None] * stride_um + rr[None, :], u_s, mask=(rm[:, None] < M) & (rr[None, :] < R))
            acc = _tma_step(u_s, b2_desc, off_n, 0, acc, B_KMAJOR, PRECISION)
        rn = off_n + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
            acc += bias[None, :]
        tl.store(c_ptr + rm64[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def launch_ws(a1, b1, proj, b2, scale, bias, out, u_out, kmajor, cfg, launcher=None, persistent=False, n_sms=132):
    bm, bn, bk, warps, stages, group = cfg
    M, K1 = a1.shape
    N = out.shape[1]
    fuse = proj is not None
    r = proj.shape[1] if fuse else 0
    block_r = max(16, triton.next_power_of_2(max(r, 1)))
    d_a1 = _desc(a1, (M, K1), a1.stride(), [bm, bk])
    d_b1 = _b_desc(b1, kmajor, bn, bk)
    d_b2 = _b_desc(b2, kmajor, bn, block_r) if fuse else d_b1
    d_p = _b_desc(proj, kmajor, block_r, bk) if fuse else d_a1
    u = u_out if fuse else out
    tiles = cdiv(M, bm) * cdiv(N, bn)
    extra = {}
    if persistent:
        grid = (min(tiles, n_sms),)
        extra = dict(NUM_SMS=grid[0])
    else:
        grid = (tiles,)
    kern = launcher or (_lora_gemm_pws_kernel if persistent else _lora_gemm_ws_kernel)
    kern[grid](
        d_a1, d_b1, d_b2, d_p, u, out, bias if bias is not None else out,
        M, N, K1, float(scale), out.stride(0), u.stride(0),
        HAS_BIAS=bias is not None, FUSE_PROJ=fuse, B_KMAJOR=kmajor, PRECISION=_precision(a1.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=group, NUM_STAGES=stages, R=r,
        num_warps=warps, num_stages=stages, **extra)



SHAPES = [(768, 3352), (1536, 768), (1536, 6448), (3072, 1536), (2560, 10576), (5120, 2560)]
WS_PLAIN = [(128, 256, 64, 4, 3, 8), (128, 256, 64, 4, 4, 8), (128, 128, 64, 4, 4, 8), (128, 128, 64, 4, 5, 8)]
WS_FUSED = [(128, 256, 64, 4, 2, 8), (128, 128, 64, 4, 4, 8)]
M, R, SCALE = 6144, 8, 2.0


def offline():
    """Compile every variant for sm_90 here (no GPU): registers, spills, shared memory."""
    from ssd_regs_offline import compile_report  # noqa: E402
    launches = []

    class Cap:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((a, kw))

    M, K, N, r, dt = 1024, 1536, 768, 8, torch.bfloat16
    x, W, A, B, dy = (torch.zeros(*s, dtype=dt) for s in ((M, K), (N, K), (r, K), (N, r), (M, N)))
    bias = torch.zeros(N, dtype=dt)
    for cfg, pers in [(c, p) for p in (False, True) for c in WS_PLAIN + WS_FUSED]:
        for layout, (a1, b1, p, b2, out) in {"fwd": (x, W.t(), A.t(), B.t(), dy.clone()),
                                             "bwd": (dy, W, B, A, x.clone())}.items():
            for fused in (True, False):
                launches.clear()
                u = torch.zeros(M, r, dtype=dt)
                launch_ws(a1, b1, p if fused else None, b2, 2.0, bias if layout == "fwd" else None, out, u,
                          layout == "fwd", cfg, launcher=Cap(), persistent=pers)
                a, kw = launches[0]
                try:
                    rep = compile_report(_lora_gemm_pws_kernel if pers else _lora_gemm_ws_kernel, a, kw)
                    print(cfg, "P" if pers else "-", layout, "fused" if fused else "plain", rep["regs"], rep["spill_store_bytes"], rep["smem_bytes"])
                except Exception as e:
                    print(cfg, "P" if pers else "-", layout, "fused" if fused else "plain", "FAIL", type(e).__name__, str(e)[-300:])


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def log(*a):
    if VERBOSE:
        print("  ..", *a, f"[{time.time() - T0:.1f}s]", flush=True)


VERBOSE = os.environ.get("WS_VERBOSE", "0") == "1"
T0 = time.time()


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:120] if str(e).strip() else ''}"


def main() -> None:
    import faulthandler
    faulthandler.dump_traceback_later(float(os.environ.get("WS_DUMP_AFTER", "400")), exit=True)
    sel = os.environ.get("WS_SHAPES")
    shapes = [tuple(int(v) for v in s.split("x")) for s in sel.split(",")] if sel else SHAPES
    dev, bf = "cuda", torch.bfloat16
    rows = []
    t0 = time.time()
    for K, N in shapes:
        g = torch.Generator(device=dev).manual_seed(K * 7 + N)
        x = torch.randn(M, K, device=dev, dtype=bf, generator=g)
        W = torch.randn(N, K, device=dev, dtype=bf, generator=g) / K ** 0.5
        A = torch.randn(R, K, device=dev, dtype=bf, generator=g) / K ** 0.5
        B = torch.randn(N, R, device=dev, dtype=bf, generator=g) / R ** 0.5
        dy = torch.randn(M, N, device=dev, dtype=bf, generator=g)
        for layout, (a1, b1, proj, b2) in {"fwd": (x, W.t(), A.t(), B.t()), "bwd": (dy, W, B, A)}.items():
            kmajor = layout == "fwd"
            n_out = b1.shape[1]
            out = torch.empty(M, n_out, device=dev, dtype=bf)
            u = torch.empty(M, R, device=dev, dtype=bf)
            ref_plain = a1.float() @ b1.float()
            ref_u = (SCALE * (a1.float() @ proj.float())).to(bf)
            ref_fused = ref_plain + ref_u.float() @ b2.float()
            row = {"shape": f"{K}x{N}", "layout": layout}
            log("cublas")
            row["cublas"] = bench(lambda: torch.mm(a1, b1, out=out))
            # shipped kernels, every candidate tile (what the tuner picks from by GPU time)
            names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "GROUP_M")
            shipped = [(c, dict(zip(names, c))) for c in lt.TMA_CANDIDATES]
            shipped += [(("P",) + c, dict(zip(names, c), persistent=True)) for c in lt.PTMA_CANDIDATES]
            for tag, fused in [t for t in (("plain", False), ("fused", True)) if t[0] in os.environ.get("WS_KINDS", "plain,fused")]:
                best = (float("inf"), None)
                for c, cfg in (shipped if os.environ.get("WS_SHIPPED", "1") == "1" else []):
                    if fused:
                        f = lambda cfg=cfg: lt.lora_proj_gemm(a1, b1, proj, b2, SCALE, config=cfg, out=out, u_out=u)  # noqa: E731
                    else:
                        f = lambda cfg=cfg: lt.lora_gemm(a1, b1, config=cfg, out=out)  # noqa: E731
                    log("shipped", tag, c)
                    t = bench(f)
                    if isinstance(t, float) and t < best[0]:
                        best = (t, c)
                row[f"shipped_{tag}"] = best
                wsbest, errs = (float("inf"), None), {}
                for pers in (False, True):
                    for c in (WS_FUSED if fused else WS_PLAIN):
                        f = lambda c=c, pers=pers: launch_ws(a1, b1, proj if fused else None, b2, SCALE, None, out, u,  # noqa: E731
                                                              kmajor, c, persistent=pers)
                        out.fill_(float("nan"))
                        u.fill_(float("nan"))
                        log("ws", tag, pers, c)
                        try:
                            f()
                            torch.cuda.synchronize()
                            e = rel(out, ref_fused if fused else ref_plain)
                            if fused:
                                e = max(e, rel(u, ref_u))
                        except Exception as ex:  # noqa: BLE001
                            e = f"{type(ex).__name__}"
                        tag_c = ("P" if pers else "-",) + c
                        errs[str(tag_c)] = e
                        if not (isinstance(e, float) and e < 2e-2):
                            continue
                        t = bench(f)
                        errs[str(tag_c) + "_us"] = t
                        if isinstance(t, float) and t < wsbest[0]:
                            wsbest = (t, tag_c)
                row[f"ws_{tag}"] = wsbest
                row[f"ws_{tag}_detail"] = errs
            rows.append(row)
            summary = {k: v for k, v in row.items() if not k.endswith("_detail")}
            print(summary, f"[{time.time() - t0:.0f}s]", flush=True)
            for k in ("ws_plain_detail", "ws_fused_detail"):
                if k in row:
                    print("   ", {a: (round(v, 5) if isinstance(v, float) else v) for a, v in row[k].items()}, flush=True)
    path = os.environ.get("WS_OUT")
    if path:
        with open(path, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1, default=str)


if __name__ == "__main__":
    offline() if "--offline" in sys.argv else main()
