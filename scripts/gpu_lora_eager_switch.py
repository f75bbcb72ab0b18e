# SPDX-License-Identifier: Apache-2.0
"""Eager cost of a LoRA switch read per call (``SAMKERN_LORA_RANK_PASS`` by default, env
``LORA_SWITCH``), both settings alternating in ONE process (eager times drift ±30 % between
processes on the H100 box): per round and setting, the wall time per fwd+bwd of 20 back-to-back
calls (host and GPU together, what an eager training step pays) and ``do_bench``'s median with
the L2 flushed. Development aid (#4 session 26).

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_eager_switch.py   # env LORA_AB_ROWS, LORA_SWITCH
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.ops.bench_lora_linear import make_operands  # noqa: E402
from samkern.ops.lora.function import lora_linear  # noqa: E402
from samkern.ops.lora.triton import _wall_ms  # noqa: E402  (the tuner's wall time: same measure)

VAR = os.environ.get("LORA_SWITCH", "SAMKERN_LORA_RANK_PASS")
ROWS = json.loads(os.environ.get("LORA_AB_ROWS", "[[1536, 768, 8], [768, 3352, 8], [5120, 2560, 8]]"))


def main() -> None:
    from triton.testing import do_bench

    out = []
    for K, N, r in ROWS:
        x, W, A, B, g = make_operands(K, N, r)
        fb = lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
        res = {"0": {"wall": [], "bench": []}, "1": {"wall": [], "bench": []}}
        for flag in ("0", "1"):  # tune / compile both first
            os.environ[VAR] = flag
            for _ in range(3):
                fb()
        for _ in range(6):
            for flag in ("0", "1"):
                os.environ[VAR] = flag
                res[flag]["wall"].append(1e3 * _wall_ms(fb, calls=20, bursts=1))
                res[flag]["bench"].append(1e3 * do_bench(fb, warmup=5, rep=30, return_mode="median"))
        summ = {f: {k: round(statistics.median(v), 1) for k, v in d.items()} for f, d in res.items()}
        print(f"{K}x{N} r{r}: {VAR}=0 wall {summ['0']['wall']} us, do_bench {summ['0']['bench']} | "
              f"=1 wall {summ['1']['wall']}, do_bench {summ['1']['bench']}", flush=True)
        out.append({"row": f"{K}x{N} r{r}", "var": VAR, "rounds": res, "median": summ})
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "lora-eager-switch.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
