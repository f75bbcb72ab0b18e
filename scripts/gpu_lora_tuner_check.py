# SPDX-License-Identifier: Apache-2.0
"""What the LoRA tuner sees at one harness row, against what each candidate costs under the
harness's own timing (development aid, #4 session 26): the 768→3352 r256 forward took 82.3 us
in one harness run and 93.8-94.6 in three others with the same kernels.

For each (K, N, r) row, in a fresh process: the tuner's per-candidate times (``do_bench``,
``SAMKERN_LORA_TUNE_LOG=1``) as it tunes the forward, then every candidate of the keys it tuned
re-timed as CUDA-graph replays with the L2 flushed (``benchmarks.harness.time_graph``), and the
layer's forward as the harness times it.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_tuner_check.py    # env TUNER_ROWS
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = json.loads(os.environ.get("TUNER_ROWS", "[[768, 3352, 256], [768, 3352, 8], [1536, 768, 8]]"))


def child(K: int, N: int, r: int) -> None:
    import torch

    sys.path.insert(0, ROOT)
    from benchmarks.harness import time_graph
    from benchmarks.ops.bench_lora_linear import make_operands
    from samkern.ops.lora import triton as lt
    from samkern.ops.lora.function import lora_linear

    x, W, A, B, _ = make_operands(K, N, r)
    timed = []  # (candidate, fn) of every candidate the tuner timed
    real_bench = lt._bench_ms  # (graph replays unless SAMKERN_LORA_TUNE_GRAPH=0)

    def spy(fn):
        timed.append(fn)
        return real_bench(fn)

    lt._bench_ms = spy
    with torch.no_grad():
        lora_linear(x, W, None, A, B, 2.0)  # tunes (the log goes to stderr)
        lt._bench_ms = real_bench
        layer = time_graph(lambda: lora_linear(x, W, None, A, B, 2.0))
    # the closures the tuner timed, once each (it times every candidate at least twice)
    seen, graph = set(), []
    for fn in timed:
        c = fn.__defaults__[0] if fn.__defaults__ else None
        if c is None or str(c) in seen:
            continue
        seen.add(str(c))
        try:
            graph.append((str(c), round(time_graph(fn), 1)))
        except Exception as e:  # noqa: BLE001
            graph.append((str(c), f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:150] if str(e).strip() else ''}"))
    print(json.dumps({"row": f"{K}x{N} r{r}", "layer_fwd_graph": round(layer, 1),
                      "choices": {str(k[4:]): str(v) for k, v in lt.tuning_choices().items()},
                      "candidates_graph_us": graph}), flush=True)


def main() -> None:
    for K, N, r in ROWS:
        env = dict(os.environ, SAMKERN_LORA_TUNE_LOG="1")
        res = subprocess.run([sys.executable, __file__, "--child", str(K), str(N), str(r)], env=env,
                             capture_output=True, text=True, timeout=300)
        for ln in res.stderr.splitlines():
            if "tuner" in ln:
                print(ln, flush=True)
        for ln in res.stdout.splitlines():
            if ln.startswith("{"):
                row = json.loads(ln)
                print(f"== {row['row']}: layer fwd {row['layer_fwd_graph']} us; choices {row['choices']}", flush=True)
                for c, t in row["candidates_graph_us"]:
                    print(f"     {t:>8}  {c}", flush=True)
        if res.returncode:
            print(res.stderr[-2000:], flush=True)


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(*map(int, sys.argv[i + 1:i + 4]))
    else:
        main()
