# SPDX-License-Identifier: Apache-2.0
"""Are the Gluon kernels (the 192 × 192 tiles, and the 128 × 128 ping-pong tiles) paced by shared
traffic (L2 → SMs) or by each program's own latency? The same GEMM launched on fewer programs than SMs: each program then takes more tiles
one after another, while fewer SMs share the L2. If a tile's time stays the same, the kernel is
paced by its own latency; if tiles get faster with fewer programs, by the traffic they share.

Prints, per shape and tile, the graph-replay time (L2 flushed) at 132, 96, 66 and 44 programs
and the time per tile-round (time / cdiv(tiles, programs)), beside cuBLAS's plain GEMM.

    python scripts/gpu_gluon_coop_grid.py        # 1536→768 fwd, 3072→1536 fwd, 768→3352 dx, r 8
    CASES=768x3352:fwd,5120x2560:fwd python scripts/gpu_gluon_coop_grid.py
"""
from __future__ import annotations

import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    from benchmarks.ops.bench_lora_linear import make_operands
    from samkern.backend import graph_replay_ms
    from samkern.ops.lora import gluon as lg
    from samkern.ops.lora import gluon_coop as gc

    def us(fn) -> float:
        fn()
        torch.cuda.synchronize()
        return round(1e3 * graph_replay_ms(fn), 2)

    cases = os.environ.get("CASES", "1536x768:fwd,3072x1536:fwd,768x3352:dx").split(",")
    for case in cases:
        (K, N), direction = map(int, case.split(":")[0].split("x")), case.split(":")[1]
        x, W, A, B, dy = (t.detach() for t in make_operands(K, N, 8))
        a1, b1, b2, kmajor = (x, W.t(), B.t(), True) if direction == "fwd" else (dy, W, A, False)
        u = (a1 @ (A.t() if kmajor else B)).contiguous()
        out = torch.empty(a1.shape[0], b1.shape[1], device="cuda", dtype=a1.dtype)
        row = {"shape": f"{K}x{N}", "dir": direction, "cublas": us(lambda: a1 @ b1)}
        for cfg in gc.COOP_CANDIDATES + lg.GLUON_CANDIDATES[:1]:
            tiles = triton.cdiv(out.shape[0], cfg[0]) * triton.cdiv(out.shape[1], cfg[1])
            # (the 128 × 128 kernel's two consumers take alternate tiles: a round is two tiles)
            per_program = 1 if cfg[0] % 3 == 0 else 2
            for programs in (132, 96, 66, 44):
                saved = gc.num_sms, lg.num_sms
                gc.num_sms = lg.num_sms = lambda device, p=programs: p  # (the grid: min(tiles, SMs))
                try:
                    t = us(lambda: lg.launch_gluon(a1, b1, u, b2, kmajor, out, cfg))
                finally:
                    gc.num_sms, lg.num_sms = saved
                rounds = triton.cdiv(tiles, min(tiles, programs) * per_program)
                row[f"{cfg[0]}x{cfg[2]}x{cfg[3]}@{programs}"] = [t, round(t / rounds, 2)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
