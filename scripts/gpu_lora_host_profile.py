# SPDX-License-Identifier: Apache-2.0
"""Where an eager LoRA fwd+bwd spends its host time: per row, the wall time per call of a burst
(host and GPU together), the GPU time (CUDA-graph replays), peft-style's wall time beside it,
the tuner's eager choices, and a cProfile of 40 back-to-back calls (top functions by own time).
Development aid (#4 session 27).

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_host_profile.py   # env LORA_AB_ROWS
"""
from __future__ import annotations

import cProfile
import gc
import io
import statistics
import time
import json
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from benchmarks.ops.bench_lora_linear import make_operands, peft_style  # noqa: E402
from samkern.ops.lora.function import lora_linear  # noqa: E402
from samkern.ops.lora.triton import _wall_ms, tuning_choices  # noqa: E402

GC_LOG: list = []


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        GC_LOG.append([info["generation"], time.perf_counter()])
    elif GC_LOG:
        GC_LOG[-1][1] = time.perf_counter() - GC_LOG[-1][1]


def gluon_launch_host_us() -> None:
    """Host time of one launch of the Gluon GEMM (the call's duration, no sync), through the
    direct path and through Triton's own (``samkern.launch.ENABLED``)."""
    from samkern import launch
    from samkern.ops.lora import gluon as lg

    M, K, N, r = 6144, 768, 3352, 8
    a1 = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    a2 = torch.randn(M, r, device="cuda", dtype=torch.bfloat16)
    B = torch.randn(N, r, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    cfg = lg.candidates(r)[0]
    for enabled in (True, False, True, False):
        launch.ENABLED = enabled
        lg.launch_gluon(a1, W.t(), a2, B.t(), True, out, cfg)
        torch.cuda.synchronize()
        per = []
        for _ in range(30):
            t0 = time.perf_counter()
            lg.launch_gluon(a1, W.t(), a2, B.t(), True, out, cfg)
            per.append(1e6 * (time.perf_counter() - t0))
            torch.cuda.synchronize()
        print(f"gluon launch host time, direct path {enabled}: median {statistics.median(per):.1f} us, "
              f"min {min(per):.1f}", flush=True)
    launch.ENABLED = True


ROWS = json.loads(os.environ.get("LORA_AB_ROWS", "[[768, 3352, 8], [1536, 768, 8], [5120, 2560, 256]]"))


def main() -> None:
    gluon_launch_host_us()
    gc.callbacks.append(_gc_callback)
    for K, N, r in ROWS:
        x, W, A, B, g = make_operands(K, N, r)
        ours = lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
        peft = lambda: torch.autograd.grad(peft_style(x, W, A, B, 2.0), (x, A, B), g)  # noqa: E731
        fwd = lambda: lora_linear(x, W, None, A, B, 2.0)  # noqa: E731
        for _ in range(3):
            ours(), peft()
        with torch.no_grad():
            fwd()
        walls = {name: [round(1e3 * _wall_ms(f, calls=20, bursts=1), 1) for _ in range(4)]
                 for name, f in (("samkern", ours), ("peft", peft))}
        with torch.no_grad():
            walls["samkern fwd"] = [round(1e3 * _wall_ms(fwd, calls=20, bursts=1), 1) for _ in range(4)]
        for name, f in (("samkern", ours), ("peft", peft)):  # Python's GC during the bursts
            del GC_LOG[:]
            on = [round(1e3 * _wall_ms(f, calls=20, bursts=1), 1) for _ in range(4)]
            collections = [(g, round(1e6 * d)) for g, d in GC_LOG]
            gc.disable()
            off = [round(1e3 * _wall_ms(f, calls=20, bursts=1), 1) for _ in range(4)]
            gc.enable()
            print(f"{name}: wall with gc {on}, collections (generation, us) {collections[:12]} "
                  f"({len(collections)}); wall without gc {off}", flush=True)
        gpu = time_graph(ours)
        print(f"\n=== {K}x{N} r{r}: wall per fwd+bwd {walls}; samkern GPU (graph) {gpu:.1f} us", flush=True)
        print("eager choices:", {k: v for k, v in tuning_choices(eager=True).items()}, flush=True)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(40):
            ours()
        torch.cuda.synchronize()
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(28)
        print(s.getvalue()[-9000:], flush=True)
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        print(s.getvalue()[-7000:], flush=True)


if __name__ == "__main__":
    main()
