# SPDX-License-Identifier: Apache-2.0
"""Where a demo training step's time goes on the GPU (development aid for issue #6).

Builds the demo's data and model (``samkern.demo``), then for each batch size in
``DEMO_PROFILE_BATCHES`` (default ``32,128``): times ``DEMO_PROFILE_STEPS`` optimizer steps
(median / p90 / max wall ms, tokens per step), then profiles 10 steps with torch.profiler and
prints the top host ops, the kernel launches per step and the GPU-busy share of the wall time.
Writes ``$OUT/demo-profile.json``.

Run (device): ``source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_demo_profile.py``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samkern import demo  # noqa: E402
from samkern.train.sam import ExampleDataset, synth_features  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
BATCHES = [int(b) for b in os.environ.get("DEMO_PROFILE_BATCHES", "32,128").split(",")]
STEPS = int(os.environ.get("DEMO_PROFILE_STEPS", "60"))
PRECISION = os.environ.get("DEMO_PROFILE_PRECISION", "fp32")
# DEMO_PROFILE_AB_THREADS=1: alternate the trainer's backward on the calling thread (its default on
# one GPU) and on the autograd engine's device thread (PyTorch's default), rounds of STEPS steps
# each, instead of the profile
AB_THREADS = os.environ.get("DEMO_PROFILE_AB_THREADS", "0") == "1"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile_steps(trainer, n: int = 10) -> dict:
    from torch.profiler import ProfilerActivity, profile

    _sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            trainer.train_step()
        _sync()
    wall = (time.perf_counter() - t0) / n * 1e3
    ev = prof.key_averages()
    launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                    "cudaLaunchKernelExC"))
    gpu_us = sum(getattr(e, "self_device_time_total", 0.0) for e in ev) / n
    host = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:25]
    kern = sorted((e for e in ev if getattr(e, "self_device_time_total", 0.0) > 0),
                  key=lambda e: -e.self_device_time_total)[:15]
    return {
        "wall_ms_per_step": round(wall, 2),
        "gpu_busy_ms_per_step": round(gpu_us / 1e3, 2),
        "launches_per_step": launches / n,
        "top_host_self_ms_per_step": [(e.key[:60], round(e.self_cpu_time_total / n / 1e3, 3), e.count // n) for e in host],
        "top_kernels_ms_per_step": [(e.key[:60], round(e.self_device_time_total / n / 1e3, 3), e.count // n) for e in kern],
    }


def ab_threads(trainer, rounds: int = 3) -> dict:
    """Median step ms with the backward on the calling thread vs the engine's device thread."""
    for _ in range(10):  # warm-up (tuning, allocator)
        trainer.train_step()
    ms = {"calling_thread": [], "engine_thread": []}
    for _ in range(rounds):
        for mode in ms:
            trainer._single_thread_backward = mode == "calling_thread"
            for _ in range(STEPS):
                _sync()
                ms[mode].append(trainer.train_step()["time"] * 1e3)
    return {k: round(statistics.median(v), 2) for k, v in ms.items()}


def main() -> None:
    cfg = demo.DemoConfig()
    dev = torch.device(os.environ.get("DEMO_PROFILE_DEVICE", "cuda"))
    torch.manual_seed(cfg.seed)
    train_ds, train_ex = demo._examples(cfg, "train", cfg.train_clips, cfg.tasks)
    train_ex = demo._subsample(train_ex, cfg)
    f_train = synth_features(train_ds, cfg.n_frames)
    texts = [e["instruction"] for e in train_ex] + [e["answer"] for e in train_ex]
    result = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__, "precision": PRECISION, "runs": {}}
    for bs in BATCHES:
        model = demo.build_demo_model(cfg, texts).to(dev)
        c = demo.DemoConfig(batch_size=bs)
        trainer = demo._stage_trainer(model, ExampleDataset(train_ex, f_train, device=dev), c, f"b{bs}", "all", STEPS + 40,
                                      1e-3, 5, "/tmp/demo-profile", "none")
        trainer.config.precision = PRECISION
        trainer.autocast_dtype = trainer._autocast_dtype()
        if AB_THREADS:
            result["runs"][bs] = ab_threads(trainer)
            print(f"== batch {bs}: {result['runs'][bs]}", flush=True)
            continue
        times, toks = [], []
        for _ in range(STEPS):
            _sync()
            rec = trainer.train_step()
            _sync()
            times.append(rec["time"] * 1e3)
            toks.append(rec["tokens"])
        steady = sorted(times[10:])
        run = {
            "first_steps_ms": [round(t, 1) for t in times[:10]],
            "steps_ms": [round(t, 1) for t in times],
            "median_ms": round(statistics.median(steady), 2),
            "p90_ms": round(steady[int(0.9 * (len(steady) - 1))], 2),
            "max_ms": round(steady[-1], 2),
            "answer_tokens_per_step": round(statistics.mean(toks), 1),
            "profile": profile_steps(trainer),
        }
        result["runs"][bs] = run
        print(f"\n== batch {bs} ({PRECISION}): median {run['median_ms']} ms, p90 {run['p90_ms']}, max {run['max_ms']}, "
              f"first {run['first_steps_ms']}", flush=True)
        p = run["profile"]
        print(f"   profiled: wall {p['wall_ms_per_step']} ms/step, GPU busy {p['gpu_busy_ms_per_step']} ms, "
              f"{p['launches_per_step']:.0f} launches/step", flush=True)
        for k, ms, cnt in p["top_host_self_ms_per_step"]:
            print(f"   host {ms:8.3f} ms  x{cnt:<5d} {k}")
        for k, ms, cnt in p["top_kernels_ms_per_step"]:
            print(f"   gpu  {ms:8.3f} ms  x{cnt:<5d} {k}")
        with open(os.path.join(OUT, "demo-profile.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
