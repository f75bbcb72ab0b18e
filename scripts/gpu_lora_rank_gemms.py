# SPDX-License-Identifier: Apache-2.0
"""The LoRA path's skinny rank-r GEMMs at r = 256, one by one (development aid): the forward's
projection ``u_s = s · x Aᵀ`` (M × K by K × r), the backward's ``g_s = s · dy B`` (M × N by N × r),
``dA = g_sᵀ x`` and ``dB = dyᵀ u_s`` (reductions over the 6144 tokens), by cuBLAS as the split
path runs them, and the two projections also by ``lora_gemm``'s TMA kernel at a few tiles (no
alpha: the time of the contraction), beside each one's bandwidth floor (bytes it must move at
3.0 TB/s). CUDA-graph replay medians with L2 flushed (``samkern.backend.graph_replay_ms``), #4's
six shapes, 6144 tokens, bf16.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_rank_gemms.py     # env SHAPES=768x3352,... R=256
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TILES = [(64, 128, 64, 4, 4, 8), (64, 128, 64, 4, 3, 8), (128, 128, 64, 4, 3, 8), (64, 256, 64, 4, 3, 8),
         (128, 256, 64, 8, 3, 8)]


def main() -> None:
    from benchmarks.ops.bench_lora_linear import SHAPES, make_operands
    from samkern.backend import graph_replay_ms
    from samkern.ops.lora.triton import lora_gemm

    shapes = SHAPES  # the harness's (#4's six shapes)
    if os.environ.get("SHAPES"):
        shapes = [tuple(map(int, t.split("x"))) for t in os.environ["SHAPES"].split(",")]
    r = int(os.environ.get("R", "256"))

    def us(fn) -> float:
        try:
            fn()
            torch.cuda.synchronize()
            return round(1e3 * graph_replay_ms(fn), 1)
        except Exception as e:  # a tile that does not compile / fit
            return f"failed: {type(e).__name__}"

    for K, N in shapes:
        x, W, A, B, dy = (t.detach() for t in make_operands(K, N, r))
        M = x.shape[0]
        u = torch.empty(M, r, device=x.device, dtype=x.dtype)
        g = torch.empty_like(u)
        floor = lambda n_bytes: round(n_bytes / 3.0e6, 1)  # noqa: E731  (us at 3.0 TB/s)
        row = {"shape": f"{K}x{N}", "r": r,
               "u_cublas": us(lambda: torch.addmm(u, x, A.t(), beta=0, alpha=2.0, out=u)),
               "u_floor": floor(2 * (M * K + M * r)),
               "g_cublas": us(lambda: torch.addmm(g, dy, B, beta=0, alpha=2.0, out=g)),
               "g_floor": floor(2 * (M * N + M * r)),
               "dA_cublas": us(lambda: torch.mm(g.t(), x)), "dA_floor": floor(2 * (M * K + M * r)),
               "dB_cublas": us(lambda: torch.mm(dy.t(), u)), "dB_floor": floor(2 * (M * N + M * r))}
        ref_u = (x @ A.t()).float()
        for t in TILES:
            cfg = dict(BLOCK_M=t[0], BLOCK_N=t[1], BLOCK_K=t[2], num_warps=t[3], num_stages=t[4], GROUP_M=t[5])
            tag = "x".join(map(str, t[:5]))
            row[f"u_tma_{tag}"] = us(lambda: lora_gemm(x, A.t(), out=u, config=cfg))
            row[f"g_tma_{tag}"] = us(lambda: lora_gemm(dy, B, out=g, config=cfg))
        lora_gemm(x, A.t(), out=u, config=dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3))
        row["u_tma_err"] = float((u.float() - ref_u).norm() / ref_u.norm())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
