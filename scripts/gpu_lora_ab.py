# SPDX-License-Identifier: Apache-2.0
"""Eager and CUDA-graph A/B of two versions of the LoRA linear in one process: the working tree's
``samkern.ops.lora_linear`` against an older copy (``function.py`` and ``triton.py`` extracted
from git into ``$LORA_OLD_DIR``, loaded under the op namespace ``samkern_old``), with the
peft-style composition beside. Rounds alternate the providers so host drift hits all alike.
Development aid: the numbers that count come from the harness.

    # here:   python3 scripts/gpu_lora_ab.py --extract <rev> .gpu-kit/old_lora
    # device: python3 scripts/gpu_lora_ab.py            (LORA_OLD_DIR=.gpu-kit/old_lora)
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FILES = ("function.py", "triton.py")


def extract(rev: str, dest: str) -> None:
    """Write ``rev``'s ops/lora/{function,triton}.py (``ops/lora_linear/`` before session 16)
    into ``dest`` as ``old_function.py`` / ``old_triton.py``, re-pointed at each other and at the
    ``samkern_old`` op namespace."""
    os.makedirs(dest, exist_ok=True)
    for f in FILES:
        for pkg in ("lora", "lora_linear"):
            got = subprocess.run(["git", "show", f"{rev}:samkern/ops/{pkg}/{f}"], capture_output=True, text=True)
            if got.returncode == 0:
                break
        else:
            raise SystemExit(f"{rev} has neither samkern/ops/lora/{f} nor samkern/ops/lora_linear/{f}")
        src = got.stdout.replace(f"samkern.ops.{pkg}.triton", "old_triton").replace("samkern::", "samkern_old::")
        src = src.replace("torch.ops.samkern.", "torch.ops.samkern_old.")
        src = src.replace('register("lora_linear", "triton", _triton_verifier)', "")
        with open(os.path.join(dest, "old_" + f), "w") as fh:
            fh.write(src)


def _load_old(dest: str):
    sys.path.insert(0, dest)
    mods = {}
    for name in ("old_triton", "old_function"):
        spec = importlib.util.spec_from_file_location(name, os.path.join(dest, name + ".py"))
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[name] = mods[name]
        spec.loader.exec_module(mods[name])
    return mods["old_function"]


def main() -> None:
    import torch
    import torch.nn.functional as F

    from benchmarks.harness import time_eager, time_graph
    from samkern.ops.lora import triton as lt
    from samkern.ops.lora.function import lora_linear

    old = _load_old(os.environ.get("LORA_OLD_DIR", ".gpu-kit/old_lora"))
    rounds = int(os.environ.get("AB_ROUNDS", "5"))
    T, dt = 6144, torch.bfloat16
    shapes = [(768, 3352, 8), (1536, 768, 8), (1536, 6448, 8), (3072, 1536, 8), (2560, 10576, 8), (5120, 2560, 8),
              (768, 3352, 256), (1536, 768, 256)]
    if "AB_SHAPES" in os.environ:  # "K,N,r;K,N,r" or "" (host-time section only)
        shapes = [tuple(int(v) for v in t.split(",")) for t in os.environ["AB_SHAPES"].split(";") if t]
    res = {}
    for K, N, r in shapes:
        x = torch.randn(T, K, device="cuda", dtype=dt, requires_grad=True)
        W = (torch.randn(N, K, device="cuda") * K ** -0.5).to(dt)
        A = (torch.randn(r, K, device="cuda") * K ** -0.5).to(dt).requires_grad_(True)
        B = (torch.randn(N, r, device="cuda") * r ** -0.5).to(dt).requires_grad_(True)
        g = torch.randn(T, N, device="cuda", dtype=dt)
        fwd = {"new": lambda: lora_linear(x, W, None, A, B, 2.0),
               "old": lambda: old.lora_linear(x, W, None, A, B, 2.0),
               "peft": lambda: F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0}
        # the three agree (the old path is the reference for the new one here)
        with torch.no_grad():
            yn, yo = fwd["new"](), fwd["old"]()
            err = float((yn.float() - yo.float()).norm() / yo.float().norm())
        row = {"rel_diff_new_old": err}
        for mode in ("fwd", "fwdbwd"):
            fns = {k: (f if mode == "fwd" else (lambda f=f: torch.autograd.grad(f(), (x, A, B), g)))
                   for k, f in fwd.items()}
            times = {k: [] for k in fns}
            for _ in range(rounds):
                for k, f in fns.items():
                    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                        times[k].append(time_eager(f, warmup=10, rep=50)[0])
            for k in fns:
                row[f"{mode} eager {k}"] = round(statistics.median(times[k]), 1)
                with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                    row[f"{mode} graph {k}"] = round(time_graph(fns[k]), 1)
        res[f"{K}x{N} r{r}"] = row
        print(f"{K}x{N} r{r}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    # host time alone: 64 tokens (the GPU idles), wall time per call of 200 back-to-back calls
    import time

    for K, N, r in ((768, 3352, 8), (1536, 768, 256)):
        x = torch.randn(64, K, device="cuda", dtype=dt, requires_grad=True)
        W = torch.randn(N, K, device="cuda", dtype=dt)
        A = torch.randn(r, K, device="cuda", dtype=dt, requires_grad=True)
        B = torch.randn(N, r, device="cuda", dtype=dt, requires_grad=True)
        g = torch.randn(64, N, device="cuda", dtype=dt)
        fns = {"new": lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g),
               "old": lambda: torch.autograd.grad(old.lora_linear(x, W, None, A, B, 2.0), (x, A, B), g),
               "peft": lambda: torch.autograd.grad(F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0, (x, A, B), g)}
        host = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                for _ in range(20):
                    f()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(200):
                    f()
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                host[k].append(1e6 * (t1 - t0) / 200)
        row = {f"host fwdbwd {k}": round(statistics.median(v), 1) for k, v in host.items()}
        res[f"host M64 {K}x{N} r{r}"] = row
        print(f"host M64 {K}x{N} r{r}: {row}", flush=True)
    print("eager choices (new):", {k[2:]: v for k, v in lt.tuning_choices(eager=True).items()})
    print("graph choices (new):", {k[2:]: v for k, v in lt.tuning_choices().items()})
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "lora-ab.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--extract":
        extract(sys.argv[2], sys.argv[3])
    else:
        main()
