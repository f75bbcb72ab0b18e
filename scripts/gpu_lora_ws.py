# SPDX-License-Identifier: Apache-2.0
"""Device experiment: warp-specialised (Triton 3.6 Hopper autoWS) LoRA GEMM kernels against the
shipped TMA kernels and cuBLAS at #4's six shapes, both operand layouts, plain and with the fused
rank-8 projection. Correctness first (NaN-poisoned outputs vs an fp32 reference), then CUDA-graph
timings (triton's do_bench_cudagraph, same process, same inputs).

    python scripts/gpu_lora_ws.py            # env: WS_SHAPES="768x3352,1536x768", WS_OUT=path.json
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scratch"))

import torch  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

import samkern.ops.lora_linear.triton as lt  # noqa: E402
from ws_lora import launch_ws  # noqa: E402

SHAPES = [(768, 3352), (1536, 768), (1536, 6448), (3072, 1536), (2560, 10576), (5120, 2560)]
WS_PLAIN = [(128, 256, 64, 4, 3, 8), (128, 256, 64, 4, 4, 8), (128, 128, 64, 4, 4, 8), (128, 128, 64, 4, 5, 8)]
WS_FUSED = [(128, 256, 64, 4, 2, 8), (128, 128, 64, 4, 4, 8)]
M, R, SCALE = 6144, 8, 2.0


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
    main()
