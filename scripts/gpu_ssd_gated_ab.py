# SPDX-License-Identifier: Apache-2.0
"""A/B of backward launch settings on the gated (z) path, which the harness does not time: graph
fwd+bwd us of `ssd_chunk_scan` with z, alternating the variants, two rounds (development aid).

Run (device): ``source .gpu-kit/peers.sh; PYTHONPATH=$PWD python3 scripts/gpu_ssd_gated_ab.py``.
Environment: ``AB_SWEEP`` (JSON list of ``BWD_TUNING`` overrides), ``AB_SHAPES`` (``bench_ssd.SHAPES`` names).
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from benchmarks.ops.bench_ssd import SHAPES, fwdbwd_fn, make_inputs  # noqa: E402
import samkern.ops.ssd.bwd as bwd_mod  # noqa: E402
from samkern.ops.ssd.chunk import ssd_chunk_scan  # noqa: E402

variants = json.loads(os.environ.get("AB_SWEEP", '[{"tile_dot": false}, {}]'))
for name in os.environ.get("AB_SHAPES", "2.7b-B8-L640,130m-B32-L192").split(","):
    b, L, H = SHAPES[name]
    kw = make_inputs(b, L, H, requires_grad=True)
    kw["z"] = torch.randn_like(kw["x"]).requires_grad_(True)
    fn = fwdbwd_fn(ssd_chunk_scan, kw)
    for rnd in range(2):
        for v in variants:
            saved = dict(bwd_mod.BWD_TUNING)
            bwd_mod.BWD_TUNING.update(v)  # read at every launch: no re-import needed
            try:
                us = time_graph(fn)
            finally:
                bwd_mod.BWD_TUNING.clear()
                bwd_mod.BWD_TUNING.update(saved)
            print(f"z {name} round {rnd} {json.dumps(v)}: graph fwd+bwd {us:.1f} us", flush=True)
