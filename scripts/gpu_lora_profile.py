# SPDX-License-Identifier: Apache-2.0
"""Where the LoRA linear's fwd+bwd time goes (development aid, #4): per-kernel CUDA time of one
forward+backward with a frozen base (torch.profiler, after the tuner has run), at the harness's
shapes (6144 tokens, bf16, r = 8 and 256), beside the plain cuBLAS GEMM, with the tuner's choices
(by GPU time, which CUDA-graph captures use, and by wall time, which eager calls use).

    source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_profile.py

Environment: ``LORA_PROFILE_SHAPES`` (comma list like ``1536x768,768x3352``; default all six),
``LORA_PROFILE_RANKS`` (default ``8,256``). Writes ``$OUT/lora-profile.json``.
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from benchmarks.ops.bench_lora_linear import SHAPES, make_operands  # noqa: E402
from gpu_ssd_profile import kernel_times  # noqa: E402
from samkern.ops.lora.function import lora_linear  # noqa: E402
from samkern.ops.lora.triton import tuning_choices  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")


def main() -> None:
    want = os.environ.get("LORA_PROFILE_SHAPES")
    shapes = [tuple(int(v) for v in s.split("x")) for s in want.split(",")] if want else SHAPES
    ranks = [int(r) for r in os.environ.get("LORA_PROFILE_RANKS", "8,256").split(",")]
    res = []
    for K, N in shapes:
        for r in ranks:
            x, W, A, B, dy = make_operands(K, N, r)
            base = kernel_times(lambda: F.linear(x, W), iters=10)

            def fwdbwd():
                return torch.autograd.grad(lora_linear(x, W, None, A, B, 2.0), (x, A, B), dy)

            for _ in range(3):  # the tuner's first calls
                fwdbwd()
            torch.cuda.synchronize()
            with torch.no_grad():
                fwd = kernel_times(lambda: lora_linear(x, W, None, A, B, 2.0), iters=10)
            both = kernel_times(fwdbwd, iters=10)
            row = dict(shape=f"{K}x{N}", r=r, cublas_fwd_us=round(sum(base.values()), 1),
                       fwd_us=round(sum(fwd.values()), 1), fwdbwd_us=round(sum(both.values()), 1),
                       fwd_kernels={k: round(v, 1) for k, v in fwd.items()},
                       fwdbwd_kernels={k: round(v, 1) for k, v in both.items()})
            res.append(row)
            print(f"== {K}x{N} r{r}: cuBLAS fwd {row['cublas_fwd_us']} us; fwd {row['fwd_us']}; fwd+bwd "
                  f"{row['fwdbwd_us']}", flush=True)
            for k, v in both.items():
                print(f"    {v:8.1f}  {k}", flush=True)
    choices = {}
    for eager in (False, True):  # by GPU time (graph replay), by wall time per eager call
        name = "eager" if eager else "gpu"
        choices[name] = {str(k): str(v) for k, v in tuning_choices(eager=eager).items()}
        print(f"tuner choices ({'wall time per eager call' if eager else 'GPU time'}):", flush=True)
        for k, v in choices[name].items():
            print(f"  {k} -> {v}", flush=True)
    with open(os.path.join(OUT, "lora-profile.json"), "w") as f:
        json.dump(dict(rows=res, choices=choices, gpu=torch.cuda.get_device_name()), f, indent=1)


if __name__ == "__main__":
    main()
