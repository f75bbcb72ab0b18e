# SPDX-License-Identifier: Apache-2.0
"""One profiled step for Nsight Compute (development aid, device machine).

    ncu --profile-from-start off ... python3 scripts/gpu_ncu.py ssd 130m-B32-L192
    ncu --profile-from-start off ... python3 scripts/gpu_ncu.py lora 768 3352 8
    ncu --profile-from-start off --graph-profiling node ... python3 scripts/gpu_ncu.py loragraph 1536 768 8

Warms up (compiles, tunes) eagerly, then runs exactly one step between
``cudaProfilerStart`` / ``cudaProfilerStop`` so ncu sees only that step's kernels:
``ssd`` = one SSD fwd+bwd (bench_ssd inputs), ``ssdfwd`` = the SSD inference forward alone
(the sequence split at long rows), ``lora`` = one LoRA fwd+bwd at 6144 tokens
(bf16, frozen base) and the plain cuBLAS base GEMM beside it; ``loragraph`` = the same step
captured in a CUDA graph and replayed, so the kernels are the graph-timed tuner's choices (the
harness's graph column: the Gluon 192 × 192 kernel at the narrow shapes, the rank pass, the side
stream), which an eager step does not run. Profile it with ``NCU_EXTRA="--graph-profiling node"``
(``scripts/gpu_ncu.sh``), so that ncu reports the graph's kernels one by one.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ssd_step(shape: str, grad: bool = True):
    from benchmarks.ops.bench_ssd import SHAPES, fwd_fn, fwdbwd_fn, make_inputs
    from samkern.ops.ssd.chunk import ssd_chunk_scan

    batch, L, H = SHAPES[shape]
    return (fwdbwd_fn if grad else fwd_fn)(ssd_chunk_scan, make_inputs(batch, L, H, requires_grad=grad))


def lora_step(K: int, N: int, r: int):
    from samkern.ops.lora.function import lora_linear

    dev, dt, M = "cuda", torch.bfloat16, 6144
    x = torch.randn(M, K, device=dev, dtype=dt, requires_grad=True)
    W = torch.randn(N, K, device=dev, dtype=dt) * K ** -0.5
    A = (torch.randn(r, K, device=dev, dtype=dt) * K ** -0.5).requires_grad_(True)
    B = (torch.randn(N, r, device=dev, dtype=dt) * 0.1).requires_grad_(True)
    g = torch.randn(M, N, device=dev, dtype=dt)

    def run():
        torch.mm(x.detach(), W.t())  # the cuBLAS base GEMM, for comparison in the same report
        return torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)

    return run


def main() -> None:
    what = sys.argv[1]
    if what in ("ssd", "ssdfwd"):
        step = ssd_step(sys.argv[2], grad=what == "ssd")
    elif what == "loragraph":
        from samkern.backend import capture_graph

        step = capture_graph(lora_step(*map(int, sys.argv[2:5]))).replay
    else:
        step = lora_step(*map(int, sys.argv[2:5]))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled one step:", " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
