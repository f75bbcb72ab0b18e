# SPDX-License-Identifier: Apache-2.0
"""A/B of the LoRA backward's side stream (``samkern/ops/lora/overlap.py``) in one process: per
row, the harness's fwd+bwd under CUDA-graph replay (``benchmarks.harness.time_graph``) captured
with ``SAMKERN_LORA_OVERLAP=0``, with ``1`` (forks at any size) and with ``1`` plus
``SAMKERN_LORA_OVERLAP_ORDER=dx`` (the forks launched after the dx GEMM), alternating,
``OVERLAP_AB_ROUNDS`` rounds; the tuner decides once per row (eager warm-up), so both arms run the
same kernels. With ``OVERLAP_AB_EAGER=1`` also eager fwd+bwd (do_bench p50) with the switch 0 / 1.
Development aid: the numbers that count come from the harness.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_overlap_ab.py   # env OVERLAP_AB_ROWS (JSON [[K, N, r], ...])
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_eager, time_graph  # noqa: E402
from benchmarks.ops.bench_lora_linear import RANKS, SHAPES, make_operands  # noqa: E402
from samkern.ops.lora.function import lora_linear  # noqa: E402


def main() -> None:
    rows = json.loads(os.environ.get("OVERLAP_AB_ROWS", "null")) or [[K, N, r] for K, N in SHAPES for r in RANKS]
    rounds = int(os.environ.get("OVERLAP_AB_ROUNDS", "3"))
    eager = os.environ.get("OVERLAP_AB_EAGER", "0") == "1"
    out = []
    for K, N, r in rows:
        x, W, A, B, g = make_operands(K, N, r)
        fb = lambda: torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
        os.environ["SAMKERN_LORA_OVERLAP"] = "0"
        fb()  # the tuner decides (eager)
        rec = {"row": f"{K}x{N} r{r}", "graph_off": [], "graph_on": [], "graph_on_dx_first": [], "eager_off": [],
               "eager_on": []}
        for _ in range(rounds):
            # one stream; side stream at once ("side"); side stream after the dx launch ("dx")
            for flag, order, key in (("0", "side", "graph_off"), ("1", "side", "graph_on"),
                                     ("1", "dx", "graph_on_dx_first")):
                os.environ["SAMKERN_LORA_OVERLAP"], os.environ["SAMKERN_LORA_OVERLAP_ORDER"] = flag, order
                rec[key].append(round(time_graph(fb), 1))
            os.environ["SAMKERN_LORA_OVERLAP_ORDER"] = "side"
            if eager:
                for flag, key in (("0", "eager_off"), ("1", "eager_on")):
                    os.environ["SAMKERN_LORA_OVERLAP"] = flag
                    rec[key].append(round(time_eager(fb)[0], 1))
        os.environ["SAMKERN_LORA_OVERLAP"] = "auto"
        out.append(rec)
        print(f"{rec['row']:>16}  graph fwd+bwd one stream {rec['graph_off']}  side stream {rec['graph_on']}"
              f"  side stream after dx {rec['graph_on_dx_first']}"
              + (f"  | eager {rec['eager_off']} / {rec['eager_on']}" if eager else ""), flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "lora-overlap-ab.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
