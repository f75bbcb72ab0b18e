# SPDX-License-Identifier: Apache-2.0
"""Eager step time under two settings, on the harness's SSD shapes (fwd+bwd, mamba-ssm beside)
and LoRA shapes (fwd+bwd at 6144 tokens, r 8, peft-style beside), alternating the two over
several rounds in one process so host drift hits both alike; also the graph replay time of each.
Development aid: the numbers that count come from the harness.

    python3 scripts/gpu_eager_ab.py          # on the GPU machine (peers kit sourced)

``AB_SWITCH``: ``launch`` (default: samkern's direct launch path, ``samkern.launch``, against
Triton's) or ``dt_prep`` (the SSD forward's dt processing in a launch of its own, "kernel",
against in the forward, "forward": ``FWD_TUNING["dt_prep"]``). ``AB_SSD_SHAPES``, ``AB_LORA``
("0" skips the LoRA rows), ``AB_ROUNDS``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_eager, time_graph  # noqa: E402
from benchmarks.ops.bench_ssd import SHAPES, fwdbwd_fn, make_inputs  # noqa: E402
from samkern import launch  # noqa: E402
from samkern.ops.ssd.chunk import ssd_chunk_scan  # noqa: E402
from samkern.ops.ssd.fwd import FWD_TUNING  # noqa: E402

ROUNDS = int(os.environ.get("AB_ROUNDS", "4"))
OUT = os.environ.get("OUT", "/tmp")
SWITCH = os.environ.get("AB_SWITCH", "launch")


def _set_launch(mode: str) -> None:
    launch.ENABLED = mode == "direct"


def _set_dt_prep(mode: str) -> None:
    FWD_TUNING["dt_prep"] = mode


# (setter, the two modes: the candidate first, the baseline second)
SWITCHES = {"launch": (_set_launch, ("direct", "triton")), "dt_prep": (_set_dt_prep, ("forward", "kernel"))}


def ab(name: str, fn, peer=None) -> dict:
    setter, modes = SWITCHES[SWITCH]
    fn()
    torch.cuda.synchronize()
    times = {modes[0]: [], modes[1]: [], "peer": []}
    for _ in range(ROUNDS):
        for mode in modes:
            setter(mode)
            times[mode].append(time_eager(fn, warmup=10, rep=60)[0])
        if peer is not None:
            times["peer"].append(time_eager(peer, warmup=10, rep=60)[0])
    row = {k: round(statistics.median(v), 1) for k, v in times.items() if v}
    for mode in modes:
        setter(mode)
        row[f"graph {mode}"] = round(time_graph(fn), 1)
    setter(None if SWITCH == "dt_prep" else modes[0])  # the default back
    a, b = modes
    line = f"{name:28s} eager {a} {row[a]:8.1f}  {b} {row[b]:8.1f}  graph {row['graph ' + a]:8.1f} / {row['graph ' + b]:8.1f}"
    if "peer" in row:
        line += f"  peer {row['peer']:8.1f}  eager vs peer {row['peer'] / row[a]:.2f}x ({b}: {row['peer'] / row[b]:.2f}x)"
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
    if os.environ.get("AB_LORA", "1") == "0":
        _save(res)
        return
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
    _save(res)


def _save(res: dict) -> None:
    with open(os.path.join(OUT, f"eager-ab-{SWITCH}.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
