# SPDX-License-Identifier: Apache-2.0
"""Forward P-blocking at large headdim x d_state (development aid for the SSD launch heuristic).

Times samkern's SSD fwd and fwd+bwd (CUDA-graph replay) with all of P in one forward program
(``block_p`` = P) against the default heuristic (P cut to 8192 / N past P * N = 8192), at
headdim 128 and d_state 64 / 128 / 256, plus the forward kernel's registers / spills.
Run (device): ``source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_ssd_blockp.py``.
Writes ``$OUT/ssd-blockp.json``.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchmarks.ops.bench_ssd as bench  # noqa: E402
import samkern.ops.ssd.fwd as fwd_mod  # noqa: E402
from benchmarks.harness import time_graph  # noqa: E402
from samkern.ops.ssd.chunk import ssd_chunk_scan  # noqa: E402

SHAPES = [(8, 640, 32, 128, 64), (8, 640, 32, 128, 128), (8, 640, 32, 128, 256), (8, 640, 32, 64, 256),
          (1, 16384, 32, 128, 128)]


def fwd_meta() -> list:
    out = []
    for cache in fwd_mod._ssd_fwd_kernel.device_caches.values():
        for ck in cache[0].values():
            ck._init_handles()
            out.append((ck.n_regs, ck.n_spills, ck.metadata.num_warps))
    return out


def main() -> None:
    rows = []
    scan = lambda **k: ssd_chunk_scan(**k, backend="triton")  # noqa: E731
    for b, L, H, P, N in SHAPES:
        bench.P, bench.N = P, N
        kw = bench.make_inputs(b, L, H, requires_grad=True)
        for label, bp in (("full P", P), ("heuristic", None)):
            fwd_mod.FWD_TUNING["block_p"] = bp
            row = {"shape": f"B{b} L{L} H{H} P{P} N{N}", "block_p": label,
                   "picked": fwd_mod._pick_block_p(P, N),
                   "fwd_us": round(time_graph(bench.fwd_fn(scan, kw)), 1),
                   "fwdbwd_us": round(time_graph(bench.fwdbwd_fn(scan, kw)), 1)}
            rows.append(row)
            print(row, flush=True)
        fwd_mod.FWD_TUNING["block_p"] = None
    res = {"device": torch.cuda.get_device_name(), "rows": rows, "fwd_kernels_regs_spills_warps": fwd_meta()}
    print("forward kernels (regs, spills, warps):", res["fwd_kernels_regs_spills_warps"])
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "ssd-blockp.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
