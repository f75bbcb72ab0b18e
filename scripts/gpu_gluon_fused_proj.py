# SPDX-License-Identifier: Apache-2.0
"""The Gluon kernel's projection tiles (``samkern/ops/lora/gluon.py``, FUSE_PROJ) against the split
path they would replace, at #4's six shapes, r = 8, bf16, 6144 tokens: CUDA-graph replay medians
with L2 flushed (``samkern.backend.graph_replay_ms``, as the harness times), same process, same
inputs.

    forward  (a1 = x,  b1 = Wᵀ, proj = Aᵀ, b2 = Bᵀ):  cuBLAS base GEMM, split (cuBLAS u_s + the
             Gluon GEMM), fused (one Gluon launch), the split path's parts alone (proj_only,
             gemm_only), and the op's tuned ``lora_proj_gemm``
    backward (a1 = dy, b1 = W,  proj = B,  b2 = A):    the same but the tuned call (dx with g_s)

Each variant runs in a child process with a time limit (a wrong flag protocol would hang the GPU
kernel, not this script). Prints one JSON line per (shape, direction).

    python scripts/gpu_gluon_fused_proj.py            # all shapes
    SHAPES=768x3352,1536x768 python scripts/gpu_gluon_fused_proj.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child(K: int, N: int) -> None:
    from samkern.backend import graph_replay_ms
    from samkern.ops.lora import gluon as lg
    from samkern.ops.lora import triton as lt

    from benchmarks.ops.bench_lora_linear import make_operands

    r, s, dt = 8, 2.0, torch.bfloat16
    torch.manual_seed(0)
    x, W, A, B, dy = (t.detach() for t in make_operands(K, N, r))
    cfg = lg.candidates(r)[0]

    def us(fn) -> float:
        fn()
        torch.cuda.synchronize()
        return round(1e3 * graph_replay_ms(fn), 1)

    for name, (a1, b1, p, b2, kmajor) in {"fwd": (x, W.t(), A.t(), B.t(), True),
                                          "bwd": (dy, W, B, A, False)}.items():
        M, n_out = a1.shape[0], b1.shape[1]
        out_s, out_f = (torch.empty(M, n_out, device="cuda", dtype=dt) for _ in range(2))
        u_s, u_f = (torch.empty(M, r, device="cuda", dtype=dt) for _ in range(2))

        def split():
            torch.addmm(u_s, a1, p, beta=0, alpha=s, out=u_s)
            lg.launch_gluon(a1, b1, u_s, b2, kmajor, out_s, cfg)

        def fused():
            lg.launch_gluon(a1, b1, u_f, b2, kmajor, out_f, cfg, proj=p, scale=s)

        row = {"shape": f"{K}x{N}", "dir": name, "cublas_base": us(lambda: a1 @ b1), "split": us(split),
               "fused": us(fused),
               # the split path's two parts alone: where the fused kernel's time goes
               "proj_only": us(lambda: torch.addmm(u_s, a1, p, beta=0, alpha=s, out=u_s)),
               "gemm_only": us(lambda: lg.launch_gluon(a1, b1, u_s, b2, kmajor, out_s, cfg))}
        split()
        fused()
        torch.cuda.synchronize()
        row["err_u"] = float((u_f.float() - u_s.float()).norm() / u_s.float().norm())
        row["err_c"] = float((out_f.float() - out_s.float()).norm() / out_s.float().norm())
        if name == "fwd":
            out_t, u_t = torch.empty_like(out_s), torch.empty_like(u_s)
            row["tuned"] = us(lambda: lt.lora_proj_gemm(a1, b1, p, b2, s, out=out_t, u_out=u_t))
            row["tuned_choice"] = str([v for k, v in lt.tuning_choices().items() if k[5] == n_out and k[6] == K])
        print(json.dumps(row), flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        K, N = map(int, sys.argv[1].split("x"))
        child(K, N)
        return
    from benchmarks.ops.bench_lora_linear import SHAPES

    shapes = SHAPES  # the harness's (#4's six shapes)
    if os.environ.get("SHAPES"):
        shapes = [tuple(map(int, t.split("x"))) for t in os.environ["SHAPES"].split(",")]
    for K, N in shapes:
        try:
            res = subprocess.run([sys.executable, __file__, f"{K}x{N}"], capture_output=True, text=True,
                                 timeout=int(os.environ.get("CHILD_LIMIT", "120")))
            print(res.stdout.strip() or res.stderr.strip()[-2000:], flush=True)
        except subprocess.TimeoutExpired:
            print(json.dumps({"shape": f"{K}x{N}", "error": "timed out (hang?)"}), flush=True)


if __name__ == "__main__":
    main()
