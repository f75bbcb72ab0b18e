# SPDX-License-Identifier: Apache-2.0
"""A/B of a LoRA switch: the harness's LoRA forward and fwd+bwd (CUDA-graph replay, L2 flushed,
``benchmarks.harness.time_graph``) with the environment variable ``LORA_AB_VAR`` (default
``SAMKERN_LORA_GLUON``, the Gluon split-path candidate of session 25; ``SAMKERN_LORA_RANK_PASS``
is session 26's rank pass) set to 0 and to 1, each in its own process, alternating, plus the
tuner's GPU-time choices of each process (development aid: the numbers that count come from the
harness). Session 25 ran it as ``scripts/gpu_lora_gluon_ab.py``.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_env_ab.py     # env LORA_AB_VAR, LORA_AB_ROWS, LORA_AB_ROUNDS
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAR = os.environ.get("LORA_AB_VAR", "SAMKERN_LORA_GLUON")
ROWS = json.loads(os.environ.get("LORA_AB_ROWS", "[[768, 3352, 8], [2560, 10576, 8], [1536, 6448, 8]]"))


def child() -> None:
    import torch

    sys.path.insert(0, ROOT)
    from benchmarks.harness import time_graph
    from benchmarks.ops.bench_lora_linear import make_operands
    from samkern.ops.lora import triton as lt
    from samkern.ops.lora.function import lora_linear

    for K, N, r in ROWS:
        x, W, A, B, g = make_operands(K, N, r)
        call = lambda: lora_linear(x, W, None, A, B, 2.0)  # noqa: E731
        with torch.no_grad():
            call()  # the tuner decides (eager)
            fwd = time_graph(call)
        fb = lambda: torch.autograd.grad(call(), (x, A, B), g)  # noqa: E731
        fb()
        fwdbwd = time_graph(fb)
        picks = {str(k[4:9]) + (" fused" if k[-1] else "") + (" gluon-ok" if k[-2] else ""): str(v)
                 for k, v in lt.tuning_choices().items() if k[5] in (N, K)}
        print(json.dumps({"row": f"{K}x{N} r{r}", "flag": os.environ[VAR], "fwd": round(fwd, 1),
                          "fwdbwd": round(fwdbwd, 1), "choices": picks}), flush=True)


def main() -> None:
    rows = []
    for rnd in range(int(os.environ.get("LORA_AB_ROUNDS", "2"))):
        for flag in ("0", "1"):
            env = dict(os.environ, **{VAR: flag})
            res = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                 timeout=400)
            for ln in res.stdout.splitlines():
                if ln.startswith("{"):
                    row = json.loads(ln)
                    rows.append(row)
                    print(f"round {rnd} {VAR}={flag} {row['row']:>14}  fwd {row['fwd']:7.1f}  fwdbwd {row['fwdbwd']:7.1f}",
                          flush=True)
                    if rnd == 0:
                        for k, v in row["choices"].items():
                            print(f"      {k}: {v}", flush=True)
            if res.returncode:
                print(res.stderr[-2000:], flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"lora-ab-{VAR.lower()}.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()
