# SPDX-License-Identifier: Apache-2.0
"""Device check and A/B of the LoRA dA / dB kernel (``samkern/ops/lora/rank_grads.py``, #4).

1. ``check`` (after ``sweep``: with its winner): at the harness's twelve rows (6144 tokens, bf16), dA and dB against an fp64
   reference, error at most twice torch's bf16 GEMM error (+ a floor), outputs NaN-poisoned, with
   and without M splits.
2. ``sweep``: CUDA-graph time of the kernel's launch settings (module constants) against the two
   cuBLAS GEMMs it replaces, at five rows; the fastest setting for r <= 64 is kept for what follows.
3. ``e2e``: the frozen-base LoRA fwd+bwd (``samkern.ops.lora_linear``) under CUDA graphs with
   ``SAMKERN_LORA_RANK_GRADS=triton`` and ``=cublas``, alternated in one process, at all twelve rows.

    source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_rank_grads.py [check sweep e2e]

Writes ``$OUT/lora-rank-grads.json``. Development aid: the numbers that count come from the harness.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from benchmarks.ops.bench_lora_linear import DTYPE, RANKS, SHAPES, T  # noqa: E402
import samkern.ops.lora.rank_grads as rg  # noqa: E402
from samkern.testing import poisoned_empty, rel_err  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
RES: dict = {}


def operands(K: int, N: int, r: int):
    g = lambda *s: torch.randn(*s, device="cuda", dtype=DTYPE)  # noqa: E731
    return g(T, r), g(T, K), g(T, r), g(T, N)


def check() -> None:
    bad = 0
    for K, N in SHAPES:
        for r in RANKS:
            g_s, x, u_s, dy = operands(K, N, r)
            refA = g_s.double().t() @ x.double()
            refB = dy.double().t() @ u_s.double()
            tA = rel_err(g_s.t() @ x, refA)
            tB = rel_err(dy.t() @ u_s, refB)
            for splits in (0, 1, 3):
                with poisoned_empty():
                    dA, dB = rg.lora_rank_grads(g_s, x, u_s, dy, splits=splits)
                eA, eB = rel_err(dA, refA), rel_err(dB, refB)
                ok = bool(torch.isfinite(dA).all() and torch.isfinite(dB).all()) and \
                    eA <= 2 * tA + 1e-4 and eB <= 2 * tB + 1e-4
                bad += not ok
                print(f"check {K}x{N} r{r} splits {splits}: dA {eA:.2e} (torch {tA:.2e}) dB {eB:.2e} "
                      f"(torch {tB:.2e}) {'ok' if ok else 'FAIL'}", flush=True)
                RES.setdefault("check", []).append(dict(shape=f"{K}x{N}", r=r, splits=splits, dA=eA, dB=eB,
                                                        torch_dA=tA, torch_dB=tB, ok=ok))
    print(f"check: {bad} failure(s)", flush=True)


SWEEP = [
    dict(),
    dict(PROGRAMS_PER_SM=1),
    dict(PROGRAMS_PER_SM=4),
    dict(BLOCK_C=32),
    dict(BLOCK_M=64),
    dict(BLOCK_C=128, PROGRAMS_PER_SM=1),
]
KNOBS = ("BLOCK_M", "BLOCK_C", "NUM_WARPS", "NUM_STAGES", "PROGRAMS_PER_SM", "MAX_BLOCK_R")


def sweep() -> None:
    """Times every SWEEP setting, then sets the module to the fastest in total over the rows of
    each rank (``check`` and ``e2e`` afterwards run with it)."""
    base = {k: getattr(rg, k) for k in KNOBS}
    total: dict = {}
    for K, N, r in ((768, 3352, 8), (1536, 768, 8), (3072, 1536, 8), (2560, 10576, 8), (5120, 2560, 8)):
        g_s, x, u_s, dy = operands(K, N, r)
        t_cublas = time_graph(lambda: (g_s.t() @ x, dy.t() @ u_s))
        line = [f"sweep {K}x{N} r{r}: cuBLAS {t_cublas:.1f} us"]
        for cfg in SWEEP:
            for k, v in base.items():
                setattr(rg, k, cfg.get(k, v))
            try:
                t = time_graph(lambda: rg.lora_rank_grads(g_s, x, u_s, dy))
            except Exception as e:  # noqa: BLE001 - reported
                t = float("nan")
                print(f"  {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            line.append(f"{cfg or 'default'} {t:.1f}")
            key = (r > 64, json.dumps(cfg))
            total[key] = total.get(key, 0.0) + t
            RES.setdefault("sweep", []).append(dict(shape=f"{K}x{N}", r=r, cfg=cfg, us=t, cublas_us=t_cublas))
        for k, v in base.items():
            setattr(rg, k, v)
        print("; ".join(line), flush=True)
    for big in (False,):
        cands = {k[1]: v for k, v in total.items() if k[0] == big and v == v}
        best = json.loads(min(cands, key=cands.get))
        RES.setdefault("best", {})["r>64" if big else "r<=64"] = best
        print(f"best for {'r > 64' if big else 'r <= 64'}: {best or 'default'}", flush=True)
    # one setting for the runs that follow: the small-rank winner (r <= 64 is the fused path's range)
    for k, v in base.items():
        setattr(rg, k, RES["best"]["r<=64"].get(k, v))


def e2e() -> None:
    from samkern.ops.lora.function import lora_linear

    for K, N in SHAPES:
        for r in [r for r in RANKS if r <= rg.MAX_BLOCK_R]:  # above, both paths are cuBLAS's
            x = torch.randn(T, K, device="cuda", dtype=DTYPE, requires_grad=True)
            W = (torch.randn(N, K, device="cuda") * K ** -0.5).to(DTYPE)
            A = (torch.randn(r, K, device="cuda") * K ** -0.5).to(DTYPE).requires_grad_(True)
            B = (torch.randn(N, r, device="cuda") * r ** -0.5).to(DTYPE).requires_grad_(True)
            dy = torch.randn(T, N, device="cuda", dtype=DTYPE)
            fn = lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), dy)  # noqa: E731
            times: dict = {"triton": [], "cublas": []}
            for _ in range(2):
                for path in ("triton", "cublas"):
                    os.environ["SAMKERN_LORA_RANK_GRADS"] = path
                    times[path].append(time_graph(fn))
            os.environ.pop("SAMKERN_LORA_RANK_GRADS", None)
            best = {k: min(v) for k, v in times.items()}
            print(f"e2e {K}x{N} r{r} fwd+bwd graph: rank_grads {best['triton']:.1f} us vs cuBLAS dA/dB "
                  f"{best['cublas']:.1f} ({times})", flush=True)
            RES.setdefault("e2e", []).append(dict(shape=f"{K}x{N}", r=r, **{f"{k}_us": v for k, v in best.items()}))


def main() -> None:
    parts = sys.argv[1:] or ["sweep", "check", "e2e"]
    RES["gpu"] = torch.cuda.get_device_name()
    for p in parts:
        globals()[p]()
        with open(os.path.join(OUT, "lora-rank-grads.json"), "w") as f:
            json.dump(RES, f, indent=1)


if __name__ == "__main__":
    main()
