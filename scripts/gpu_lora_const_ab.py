# SPDX-License-Identifier: Apache-2.0
"""A/B of LoRA module constants in one process (development aid, #4): the harness's fwd+bwd under
CUDA-graph replay (L2 flushed, ``benchmarks.harness.time_graph``) with a module's launch constants
set to each variant in turn, alternating, ``CONST_AB_ROUNDS`` rounds. The tuner decides once per
row (eager warm-up with the first variant); constants that are constexprs compile once per value.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_const_ab.py
    env CONST_AB_MODULE (default samkern.ops.lora.rank_pass), CONST_AB_VARIANTS (JSON list of
    {name: value} dicts, the first one the baseline), CONST_AB_ROWS (JSON [[K, N, r], ...])
"""
from __future__ import annotations

import importlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from benchmarks.ops.bench_lora_linear import make_operands  # noqa: E402
from samkern.ops.lora.function import lora_linear  # noqa: E402


def main() -> None:
    mod = importlib.import_module(os.environ.get("CONST_AB_MODULE", "samkern.ops.lora.rank_pass"))
    variants = json.loads(os.environ.get("CONST_AB_VARIANTS", '[{"SUM_BLOCK": 1024}, {"SUM_BLOCK": 256}]'))
    rows = json.loads(os.environ.get("CONST_AB_ROWS", "[[1536, 768, 8], [768, 3352, 8]]"))
    rounds = int(os.environ.get("CONST_AB_ROUNDS", "3"))
    saved = {k: getattr(mod, k) for v in variants for k in v}
    out = []
    for K, N, r in rows:
        x, W, A, B, g = make_operands(K, N, r)
        fb = lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
        fb()  # the tuner decides (eager)
        rec = {"row": f"{K}x{N} r{r}", "us": {json.dumps(v): [] for v in variants}}
        for _ in range(rounds):
            for v in variants:
                for k, val in saved.items():
                    setattr(mod, k, v.get(k, val))
                rec["us"][json.dumps(v)].append(round(time_graph(fb), 1))
        for k, val in saved.items():
            setattr(mod, k, val)
        out.append(rec)
        print(rec["row"], json.dumps(rec["us"]), flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "lora-const-ab.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
