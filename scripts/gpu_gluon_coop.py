# SPDX-License-Identifier: Apache-2.0
"""The split path's GEMM ``C = a1 b1 + u b2`` in the two Gluon kernels, side by side: the
128 × 128 ping-pong tiles of ``gluon.py`` (each candidate) and the 192 × 192 three-consumer tile of
``gluon_coop.py``, with cuBLAS's plain base GEMM beside them, at #4's six shapes, 6144 tokens,
r = 8 and 256, bf16, forward (a1 = x, b1 = Wᵀ) and dx (a1 = dy, b1 = W): CUDA-graph replay
medians with L2 flushed (``samkern.backend.graph_replay_ms``, as the harness times), one process,
same inputs; each kernel's output checked against cuBLAS's ``a1 @ b1 + u @ b2`` (relative error).
At r ≤ 16 also each kernel's fused projection (``proj``: u made in the launch) beside cuBLAS's u.

    python scripts/gpu_gluon_coop.py                  # all shapes, r 8 and 256
    SHAPES=1536x768 RANKS=256 python scripts/gpu_gluon_coop.py
    EXTRA='[[192, 192, 16, 12, 8, 152, 40]]' python scripts/gpu_gluon_coop.py   # more tiles beside them
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    from benchmarks.ops.bench_lora_linear import SHAPES, make_operands
    from samkern.backend import graph_replay_ms
    from samkern.ops.lora import gluon as lg

    shapes = SHAPES  # the harness's (#4's six shapes)
    if os.environ.get("SHAPES"):
        shapes = [tuple(map(int, t.split("x"))) for t in os.environ["SHAPES"].split(",")]
    ranks = [int(r) for r in os.environ.get("RANKS", "8,256").split(",")]
    # EXTRA: tiles to time beside the shipped candidates (split path and fused projection),
    # e.g. '[[192, 192, 16, 12, 8, 152, 40]]'
    extra = [tuple(c) for c in json.loads(os.environ.get("EXTRA", "[]"))]

    def us(fn) -> float:
        fn()
        torch.cuda.synchronize()
        return round(1e3 * graph_replay_ms(fn), 1)

    for K, N in shapes:
        for r in ranks:
            x, W, A, B, dy = (t.detach() for t in make_operands(K, N, r))
            for name, (a1, b1, b2) in {"fwd": (x, W.t(), B.t()), "dx": (dy, W, A)}.items():
                kmajor = name == "fwd"
                u = (a1 @ (A.t() if kmajor else B)).contiguous()
                ref = (a1 @ b1 + u @ b2).float()
                row = {"shape": f"{K}x{N}", "r": r, "dir": name, "cublas_base": us(lambda: a1 @ b1)}
                for cfg in lg.candidates(r) + extra:
                    out = torch.full_like(ref, float("nan"), dtype=a1.dtype)
                    tag = "x".join(map(str, cfg[:4]))
                    row[tag] = us(lambda: lg.launch_gluon(a1, b1, u, b2, kmajor, out, cfg))
                    row[tag + "_err"] = float((out.float() - ref).norm() / ref.norm())
                if r <= lg.R_EPILOGUE_MAX:
                    # the fused projection (u made by the kernel: projection tiles / panel-0 tiles)
                    # against the split path's first part, cuBLAS's u alone
                    p = A.t() if kmajor else B
                    row["cublas_u"] = us(lambda: torch.mm(a1, p, out=u))
                    for cfg in lg.candidates(r, fused=True) + extra:
                        out = torch.full_like(ref, float("nan"), dtype=a1.dtype)
                        u_f = torch.full_like(u, float("nan"))
                        tag = "x".join(map(str, cfg[:4])) + "_fused"
                        row[tag] = us(lambda: lg.launch_gluon(a1, b1, u_f, b2, kmajor, out, cfg, proj=p))
                        row[tag + "_err"] = float((out.float() - ref).norm() / ref.norm())
                        row[tag + "_err_u"] = float((u_f.float() - u.float()).norm() / u.float().norm())
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
