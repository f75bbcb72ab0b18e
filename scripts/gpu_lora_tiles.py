# SPDX-License-Identifier: Apache-2.0
"""Device sweep: the shipped LoRA GEMM tiles against new candidate tiles (two programs per SM:
128x128 at 2-3 stages, 64x256 at 2 stages, ...) at #4's six shapes, both operand layouts, plain
and with the fused rank-8 projection, beside cuBLAS. New tiles are checked first (NaN-poisoned
outputs vs an fp32 reference); times are CUDA-graph replay medians (do_bench_cudagraph), one
process, same inputs.

    python scripts/gpu_lora_tiles.py     # env: TILES_SHAPES="768x3352,1536x768", TILES_OUT=path.json
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

import samkern.ops.lora.triton as lt  # noqa: E402

SHAPES = [(768, 3352), (1536, 768), (1536, 6448), (3072, 1536), (2560, 10576), (5120, 2560)]
NEW_TMA = [(128, 128, 64, 4, 2, 8), (128, 128, 64, 4, 3, 8), (64, 256, 64, 4, 2, 8), (64, 256, 64, 4, 3, 8),
           (128, 128, 64, 8, 3, 8), (128, 256, 64, 8, 2, 8), (256, 128, 64, 8, 2, 8), (128, 128, 128, 4, 2, 8)]
NEW_PTMA = [(128, 128, 64, 4, 3, 8), (128, 128, 64, 4, 2, 8)]
NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "GROUP_M")
M, R, SCALE = 6144, 8, 2.0


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=25, return_mode="median") * 1e3
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}"


def cands(tma, ptma):
    return [("T",) + c for c in tma] + [("P",) + c for c in ptma]


def cfg_of(c):
    return dict(zip(NAMES, c[1:]), persistent=c[0] == "P")


def operands(K: int, N: int, dev: str = "cuda") -> dict:
    """#4's bf16 operands at one shape, seeded by it: {"fwd": (x, Wᵀ, Aᵀ, Bᵀ), "bwd": (dy, W, B, A)}
    as (a1, b1, proj, b2) of ``lora_proj_gemm`` (W stored (N, K): the forward's b1 is K-major)."""
    g = torch.Generator(device=dev).manual_seed(K * 7 + N)
    bf = torch.bfloat16
    x = torch.randn(M, K, device=dev, dtype=bf, generator=g)
    W = torch.randn(N, K, device=dev, dtype=bf, generator=g) / K ** 0.5
    A = torch.randn(R, K, device=dev, dtype=bf, generator=g) / K ** 0.5
    B = torch.randn(N, R, device=dev, dtype=bf, generator=g) / R ** 0.5
    dy = torch.randn(M, N, device=dev, dtype=bf, generator=g)
    return {"fwd": (x, W.t(), A.t(), B.t()), "bwd": (dy, W, B, A)}


def main() -> None:
    import faulthandler
    faulthandler.dump_traceback_later(float(os.environ.get("TILES_DUMP_AFTER", "540")), exit=True)
    sel = os.environ.get("TILES_SHAPES")
    shapes = [tuple(int(v) for v in s.split("x")) for s in sel.split(",")] if sel else SHAPES
    dev, bf = "cuda", torch.bfloat16
    shipped, new = cands(lt.TMA_CANDIDATES, lt.PTMA_CANDIDATES), cands(NEW_TMA, NEW_PTMA)
    rows, t0 = [], time.time()
    for K, N in shapes:
        for layout, (a1, b1, proj, b2) in operands(K, N, dev).items():
            out = torch.empty(M, b1.shape[1], device=dev, dtype=bf)
            u = torch.empty(M, R, device=dev, dtype=bf)
            ref_plain = a1.float() @ b1.float()
            ref_u = (SCALE * (a1.float() @ proj.float())).to(bf)
            ref_fused = ref_plain + ref_u.float() @ b2.float()
            row = {"shape": f"{K}x{N}", "layout": layout, "cublas": bench(lambda: torch.mm(a1, b1, out=out))}
            for tag, fused in (("plain", False), ("fused", True)):
                times = {}
                for c in shipped + new:
                    cfg = cfg_of(c)
                    if fused:
                        f = lambda cfg=cfg: lt.lora_proj_gemm(a1, b1, proj, b2, SCALE, config=cfg, out=out, u_out=u)  # noqa: E731
                    else:
                        f = lambda cfg=cfg: lt.lora_gemm(a1, b1, config=cfg, out=out)  # noqa: E731
                    if c in new:  # correctness before timing
                        out.fill_(float("nan"))
                        u.fill_(float("nan"))
                        try:
                            f()
                            torch.cuda.synchronize()
                            e = rel(out, ref_fused if fused else ref_plain)
                            if fused:
                                e = max(e, rel(u, ref_u))
                        except Exception as ex:  # noqa: BLE001
                            e = type(ex).__name__
                        if not (isinstance(e, float) and e < 1e-2):
                            times[str(c)] = f"WRONG {e}"
                            continue
                    times[str(c)] = bench(f)
                ok = {k: v for k, v in times.items() if isinstance(v, float)}
                best_s = min((v, k) for k, v in ok.items() if eval(k) in shipped)
                best_n = min((v, k) for k, v in ok.items() if eval(k) in new)
                row[tag] = {"times": times, "best_shipped": best_s, "best_new": best_n}
                print(f"{row['shape']:>10} {layout} {tag:5}  cublas {row['cublas']:6.1f}  shipped {best_s[0]:6.1f} {best_s[1]:28}"
                      f"  new {best_n[0]:6.1f} {best_n[1]:28} ({100 * (best_s[0] / best_n[0] - 1):+.1f}%)  [{time.time() - t0:.0f}s]",
                      flush=True)
                bad = {k: v for k, v in times.items() if not isinstance(v, float)}
                if bad:
                    print("    not timed:", bad, flush=True)
            rows.append(row)
    path = os.environ.get("TILES_OUT")
    if path:
        with open(path, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
