# SPDX-License-Identifier: Apache-2.0
"""Eager step time with and without samkern's direct launch path (``samkern.launch``), on the
harness's SSD shapes (fwd+bwd, mamba-ssm beside) and LoRA shapes (fwd+bwd at 6144 tokens, r 8,
peft-style beside), alternating the two modes over several rounds in one process so host drift
hits both alike. Development aid: the numbers that count come from the harness.

    python3 scripts/gpu_eager_ab.py          # on the GPU machine (peers kit sourced)
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_eager  # noqa: E402
from benchmarks.ops.bench_ssd import SHAPES, fwdbwd_fn, make_inputs  # noqa: E402
from samkern import launch  # noqa: E402
from samkern.ops.ssd.chunk import ssd_chunk_scan  # noqa: E402

ROUNDS = int(os.environ.get("AB_ROUNDS", "4"))
OUT = os.environ.get("OUT", "/tmp")


def ab(name: str, fn, peer=None) -> dict:
    fn()
    torch.cuda.synchronize()
    times = {"direct": [], "triton": [], "peer": []}
    for _ in range(ROUNDS):
        for mode in ("direct", "triton"):
            launch.ENABLED = mode == "direct"
            times[mode].append(time_eager(fn, warmup=10, rep=60)[0])
        if peer is not None:
            times["peer"].append(time_eager(peer, warmup=10, rep=60)[0])
    launch.ENABLED = True
    row = {k: round(statistics.median(v), 1) for k, v in times.items() if v}
    line = f"{name:28s} direct {row['direct']:8.1f}  triton-launch {row['triton']:8.1f}"
    if "peer" in row:
        line += f"  peer {row['peer']:8.1f}  speed-up vs peer {row['peer'] / row['direct']:.2f}x (was {row['peer'] / row['triton']:.2f}x)"
    print(line, flush=True)
    return row


def main() -> None:
    res = {}
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as mcs
    except ImportError:
        mcs = None
    for shape in os.environ.get("AB_SSD_SHAPES", "130m-B32-L192,2.7b-B16-L192,2.7b-B8-L640").split(","):
        if not shape:
            continue
        kw = make_inputs(*SHAPES[shape], requires_grad=True)
        peer = fwdbwd_fn(mcs, kw) if mcs is not None else None
        res[f"ssd {shape} fwdbwd"] = ab(f"ssd {shape}", fwdbwd_fn(ssd_chunk_scan, kw), peer)
    from samkern.ops.lora.function import lora_linear

    T, dt = 6144, torch.bfloat16
    for K, N in ((768, 3352), (1536, 768), (3072, 1536)):
        x = torch.randn(T, K, device="cuda", dtype=dt, requires_grad=True)
        W = (torch.randn(N, K, device="cuda") * K ** -0.5).to(dt)
        A = (torch.randn(8, K, device="cuda") * K ** -0.5).to(dt).requires_grad_(True)
        B = (torch.randn(N, 8, device="cuda") * 8 ** -0.5).to(dt).requires_grad_(True)
        g = torch.randn(T, N, device="cuda", dtype=dt)
        ours = lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
        peft = lambda: torch.autograd.grad(F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0, (x, A, B), g)  # noqa: E731
        res[f"lora {K}x{N} r8 fwdbwd"] = ab(f"lora {K}->{N} r8", ours, peft)
    with open(os.path.join(OUT, "eager-ab.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
