# SPDX-License-Identifier: Apache-2.0
"""The long-row inference forward (the sequence split) under a few settings, one device run
(development aid): CUDA-graph time of the whole forward and the time of each launch in order
(first pass, stitch, second pass), plus each setting's output error against the default's.

Run (device): ``source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_ssd_long_fwd.py``.
Environment: ``LONG_FWD_SHAPES`` (comma list of ``bench_ssd.SHAPES`` names, default the L16384
row), ``LONG_FWD_SWEEP`` (JSON list of ``FWD_TUNING`` overrides; the first is the baseline),
``LONG_FWD_MODES`` ("fwd" or
"fwd,fwdbwd": also the training step, its first output compared). Writes ``$OUT/ssd-long-fwd.json``.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.harness import time_graph  # noqa: E402
from benchmarks.ops.bench_ssd import SHAPES, fwd_fn, fwdbwd_fn, make_inputs  # noqa: E402
from gpu_ssd_profile import profiled_calls  # noqa: E402
import samkern.ops.ssd.fwd as fwd_mod  # noqa: E402
from samkern.ops.ssd.chunk import ssd_chunk_scan  # noqa: E402
from samkern.testing import rel_err  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
WANT = os.environ.get("LONG_FWD_SHAPES", "2.7b-B1-L16384").split(",")
MODES = os.environ.get("LONG_FWD_MODES", "fwd").split(",")
SWEEP = json.loads(os.environ.get("LONG_FWD_SWEEP", json.dumps([
    {"split_dt": "compute"}, {}, {"split_dt": "compute"}, {}, {"split_len": 512}, {"split_len": 2048},
])))


def launches(fn, iters: int = 3) -> list:
    """(kernel name, us) of every launch of one call, in launch order (median over ``iters`` calls)."""
    prof = profiled_calls(fn, iters)
    ev = sorted((e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")),
                key=lambda e: e.time_range.start)
    ks = [(e.name[:40], e.time_range.elapsed_us()) for e in ev]
    per = len(ks) // iters
    out = []
    for i in range(per):
        ts = sorted(ks[j * per + i][1] for j in range(iters))
        out.append((ks[i][0], round(ts[len(ts) // 2], 1)))
    return out


def _apply(cfg: dict) -> dict:
    """Set the ``FWD_TUNING`` overrides ``cfg``; returns what restores the old values."""
    old = {k: fwd_mod.FWD_TUNING.get(k) for k in cfg}
    fwd_mod.FWD_TUNING.update(cfg)
    return old


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    result: dict = {}
    for name in WANT:
        for mode in MODES:
            kw = make_inputs(*SHAPES[name], requires_grad=mode == "fwdbwd")
            scan = lambda **k: ssd_chunk_scan(**k, backend="triton")  # noqa: E731
            fn = fwd_fn(scan, kw) if mode == "fwd" else fwdbwd_fn(scan, kw)
            base_out = None
            rows = []
            for cfg in SWEEP:
                old = _apply(cfg)
                try:
                    out = fn()
                    out = out[0] if isinstance(out, tuple) else out
                    err = None if base_out is None else rel_err(out, base_out)
                    if base_out is None:
                        base_out = out.detach().clone()
                    t = time_graph(fn)
                    ks = launches(fn)
                    row = {"cfg": cfg, "mode": mode, "graph_us": round(t, 1), "rel_err_vs_first": err, "launches": ks}
                except Exception as e:  # noqa: BLE001
                    row = {"cfg": cfg, "mode": mode, "error": repr(e)[:300]}
                finally:
                    _apply(old)
                print(f"{name} {json.dumps(row)}", flush=True)
                rows.append(row)
            result[f"{name}/{mode}"] = rows
    with open(os.path.join(OUT, "ssd-long-fwd.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
