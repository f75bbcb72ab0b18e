# SPDX-License-Identifier: Apache-2.0
"""Where eager forward+backward time goes: host, GPU, the autograd engine (development aid, #3 / #4).

Under CUDA graphs samkern's LoRA linear is faster than peft-style at every harness row and its SSD
scan 1.8-2.4x faster than mamba-ssm; eagerly the LoRA linear loses at most rows and the SSD scan
misses #3's 4x, although the GPU work is smaller. Per case, in one process, for samkern and its
peer: wall time per call of back-to-back calls (``wall``), the host time of issuing them
(``host``: the loop before its final synchronize), the same with the backward on the calling
thread (``set_multithreading_enabled(False)``), the GPU time of the eager calls (``gpu``:
torch.profiler CUDA kernel sum per call), the graph replay (``graph``), the harness's eager
measure (``do_bench``, L2 flushed), and every synchronizing call CUDA's sync-debug mode reports
inside one call. Then cProfile's top entries of samkern's calls.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_eager_host.py

Environment: ``EAGER_OPS`` ("lora,ssd"), ``LORA_EAGER_ROWS`` (JSON list of [K, N, r]),
``LORA_EAGER_TOKENS`` (6144), ``SSD_EAGER_SHAPES`` (``bench_ssd.SHAPES`` names; mamba-ssm is the
peer where it imports). Writes ``$OUT/eager-host.json``.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OUT = os.environ.get("OUT", "/tmp")
ROWS = json.loads(os.environ.get("LORA_EAGER_ROWS", "[[1536, 768, 8], [3072, 1536, 8], [5120, 2560, 8], "
                                                    "[1536, 6448, 256], [2560, 10576, 8]]"))
TOKENS = int(os.environ.get("LORA_EAGER_TOKENS", "6144"))
OPS = os.environ.get("EAGER_OPS", "lora,ssd").split(",")
SSD_SHAPES = os.environ.get("SSD_EAGER_SHAPES", "130m-B32-L192,2.7b-B8-L640").split(",")


def timed_loop(fn, n: int = 50):
    """(host us per call, wall us per call) of ``n`` back-to-back calls."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return 1e6 * (t1 - t0) / n, 1e6 * (t2 - t0) / n


def syncs_in(fn) -> list:
    """Messages of the synchronizing CUDA calls one call of ``fn`` makes."""
    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [str(w.message)[:160] for w in caught]


def measure(fns: dict, row: dict, profile_who: str) -> None:
    """Fill ``row[name]`` for every fwd+bwd callable of ``fns``; cProfile ``profile_who``'s calls."""
    import torch

    from benchmarks.harness import time_eager, time_graph
    from gpu_ssd_profile import kernel_times

    for name, fn in fns.items():
        for _ in range(3):
            fn()  # first calls: tuning, compiles
        host, wall = min(timed_loop(fn) for _ in range(3))
        with torch.autograd.set_multithreading_enabled(False):  # backward on the calling thread
            host1, wall1 = min(timed_loop(fn) for _ in range(3))
        ks = kernel_times(fn, iters=10)
        p50, p20, p80 = time_eager(fn)
        row[name] = {"host_us": round(host, 1), "wall_us": round(wall, 1), "gpu_us": round(sum(ks.values()), 1),
                     "host_us_one_thread": round(host1, 1), "wall_us_one_thread": round(wall1, 1),
                     "do_bench_p50_us": round(p50, 1), "do_bench_p20_p80": [round(p20, 1), round(p80, 1)],
                     "graph_us": round(time_graph(fn), 1), "syncs": syncs_in(fn),
                     "kernels": {k[:60]: round(v, 1) for k, v in list(ks.items())[:10]}}
        print(f"== {row['case']} {name}: " + ", ".join(f"{k} {v}" for k, v in row[name].items() if k != "kernels"),
              flush=True)
        for k, v in row[name]["kernels"].items():
            print(f"      {v:8.1f}  {k}")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(50):
        fns[profile_who]()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
    row["cprofile_top"] = s.getvalue()
    print(s.getvalue(), flush=True)


def lora_rows(result: dict) -> None:
    import torch

    from benchmarks.ops.bench_lora_linear import make_operands, peft_style
    from samkern.ops.lora import function as lf
    from samkern.ops.lora import triton as lt

    for K, N, r in ROWS:
        x, W, A, B, g = make_operands(K, N, r, TOKENS)
        fns = {
            "samkern": lambda: torch.autograd.grad(lf.lora_linear(x, W, None, A, B, 2.0), (x, A, B), g),
            "peft-style": lambda: torch.autograd.grad(peft_style(x, W, A, B, 2.0), (x, A, B), g),
        }
        row = {"case": f"lora T{TOKENS} {K}x{N} r{r}"}
        measure(fns, row, "samkern")
        result["rows"].append(row)
    result["lora_eager_choices"] = {str(k): str(v) for k, v in lt.tuning_choices(eager=True).items()}
    result["lora_gpu_choices"] = {str(k): str(v) for k, v in lt.tuning_choices(eager=False).items()}
    print("eager choices:", json.dumps(result["lora_eager_choices"], indent=1))
    print("gpu choices:", json.dumps(result["lora_gpu_choices"], indent=1))


def ssd_rows(result: dict) -> None:
    from benchmarks.ops.bench_ssd import SHAPES, fwdbwd_fn, make_inputs
    from samkern.ops.ssd.chunk import ssd_chunk_scan

    for name in SSD_SHAPES:
        kw = make_inputs(*SHAPES[name], requires_grad=True)
        fns = {"samkern": fwdbwd_fn(lambda **k: ssd_chunk_scan(**k, backend="triton"), kw)}
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            fns["mamba-ssm"] = fwdbwd_fn(mamba_chunk_scan_combined, kw)
        except ImportError as e:
            print("no mamba-ssm:", e)
        row = {"case": f"ssd {name}"}
        measure(fns, row, "samkern")
        result["rows"].append(row)


def main() -> None:
    import torch

    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    if "lora" in OPS:
        lora_rows(result)
    if "ssd" in OPS:
        ssd_rows(result)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "eager-host.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
