# SPDX-License-Identifier: Apache-2.0
"""Is Python slower on the autograd engine's device thread? (development aid, #3 / #4 eager rows)

Eagerly, a samkern fwd+bwd costs 170-470 us more host time with PyTorch's default autograd
threading (the CUDA backward on the engine's device thread) than with the backward on the calling
thread (``dev-runs/s24-call2/3-*``), and peft-style's C++ nodes pay less. This times, per call and
in both threading modes: the whole step (host), the Python body of samkern's backward (its
``backward`` wrapped), and a fixed pure-Python loop run inside that backward (interpreter speed
on that thread, no torch). Prints one line per case and mode.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_bwd_thread_probe.py
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.ops.bench_ssd import SHAPES, fwdbwd_fn, make_inputs  # noqa: E402
from samkern.ops.lora.function import LoRALinearFunction, lora_linear  # noqa: E402
from samkern.ops.ssd.chunk import SSDChunkScanFunction, ssd_chunk_scan  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
body_us: list = []
loop_us: list = []


def _spin() -> None:
    d = {i: i for i in range(64)}
    s = 0
    for _ in range(200):
        for k in range(64):
            s += d[k]


def wrap(cls) -> None:
    real = cls.backward

    def timed(ctx, *grads):
        t0 = time.perf_counter()
        _spin()
        t1 = time.perf_counter()
        out = real(ctx, *grads)
        t2 = time.perf_counter()
        loop_us.append((t1 - t0) * 1e6)
        body_us.append((t2 - t1) * 1e6)
        return out

    cls.backward = staticmethod(timed)


def run(name: str, step, n: int = 60) -> dict:
    res = {}
    for mode in ("threads", "one_thread", "threads", "one_thread"):
        torch.autograd.set_multithreading_enabled(mode == "threads")
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        body_us.clear()
        loop_us.clear()
        t = time.perf_counter()
        for _ in range(n):
            step()
        host = (time.perf_counter() - t) / n * 1e6
        torch.cuda.synchronize()
        row = {"host_us": round(host, 1), "bwd_body_us": round(statistics.median(body_us), 1),
               "py_loop_us": round(statistics.median(loop_us), 1)}
        t0 = time.perf_counter()
        for _ in range(20):
            _spin()
        row["py_loop_main_us"] = round((time.perf_counter() - t0) / 20 * 1e6, 1)
        res.setdefault(mode, []).append(row)
        print(f"{name:28s} {mode:10s} {json.dumps(row)}", flush=True)
    torch.autograd.set_multithreading_enabled(True)
    return res


def main() -> None:
    wrap(LoRALinearFunction)
    wrap(SSDChunkScanFunction)
    out = {}
    for shape in ("130m-B32-L192", "2.7b-B8-L640"):
        kw = make_inputs(*SHAPES[shape], requires_grad=True)
        out[f"ssd {shape}"] = run(f"ssd {shape}", fwdbwd_fn(ssd_chunk_scan, kw))
    T, dt = 6144, torch.bfloat16
    for K, N in ((1536, 768), (768, 3352)):
        x = torch.randn(T, K, device="cuda", dtype=dt, requires_grad=True)
        W = (torch.randn(N, K, device="cuda") * K ** -0.5).to(dt)
        A = (torch.randn(8, K, device="cuda") * K ** -0.5).to(dt).requires_grad_(True)
        B = (torch.randn(N, 8, device="cuda") * 8 ** -0.5).to(dt).requires_grad_(True)
        g = torch.randn(T, N, device="cuda", dtype=dt)
        out[f"lora {K}->{N} r8"] = run(f"lora {K}->{N} r8",
                                       lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g))
    with open(os.path.join(OUT, "bwd-thread-probe.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
