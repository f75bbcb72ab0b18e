# SPDX-License-Identifier: Apache-2.0
"""How much tile quantisation costs the LoRA GEMMs (development aid, #4).

At 6144 tokens the narrow shapes make few output tiles: 1536→768 in 128×128 tiles is 48 × 6 = 288
tiles for 132 SMs, so some SMs get three tiles while the average is 2.18 (cuBLAS's 192×192 tile
makes 128, one per SM). This sweeps the token count M around 6144 at fixed shapes and times, per
M, samkern's forward (``lora_proj_gemm``, r 8: the fused projection or the split path, whatever
the tuner picks; M stays in the tuner's 8192 bucket, so the choice is the same for every M) and
cuBLAS's plain GEMM, under CUDA-graph replay (``do_bench_cudagraph``, median). If time grows in
steps with ⌈tiles / slots⌉ rather than with M, the steps are the quantisation loss a stream-K /
split-K tail would recover (LoRA README, "Wave quantisation"; session 24's runs of this script
with a section that timed row-split and split-K tail launches are ``dev-runs/s24-call6-*`` and
``s24-call7-*``, the code for them ``dev-runs/s24-call5-lora-wave-tail.diff`` and
``s24-call7-lora-splitk-tail.diff``; a stream-K kernel timed the same way: ``s24-call8-*``).

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_waves.py   # env WAVES_SHAPES="1536x768,3072x1536",
                                                                    #     WAVES_MS="6144,5632"

Writes ``$OUT/lora-waves.json``.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUT = os.environ.get("OUT", "/tmp")
SHAPES = [tuple(int(v) for v in s.split("x")) for s in
          os.environ.get("WAVES_SHAPES", "1536x768,3072x1536,5120x2560,768x3352").split(",")]
# 6144 first: the tuner decides at the first M of its bucket (4097..8192) for all of them
MS = [int(m) for m in os.environ.get("WAVES_MS", "6144,4608,5120,5632,5888,6400,6656,7168,7680,8192").split(",")]
R, SCALE = 8, 2.0


def main() -> None:
    import torch
    from triton.testing import do_bench_cudagraph

    import samkern.ops.lora.triton as lt

    def graph_us(fn) -> float:
        fn()
        fn()
        torch.cuda.synchronize()
        return round(do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3, 1)

    dev, bf = "cuda", torch.bfloat16
    res = {"device": torch.cuda.get_device_name(), "sms": torch.cuda.get_device_properties(0).multi_processor_count,
           "rows": []}
    for K, N in SHAPES:
        g = torch.Generator(device=dev).manual_seed(K + N)
        W = torch.randn(N, K, device=dev, dtype=bf, generator=g) / K ** 0.5
        A = torch.randn(R, K, device=dev, dtype=bf, generator=g) / K ** 0.5
        B = torch.randn(N, R, device=dev, dtype=bf, generator=g)
        xs = torch.randn(max(MS), K, device=dev, dtype=bf, generator=g)
        for M in MS:
            x = xs[:M]
            t_ours = graph_us(lambda: lt.lora_proj_gemm(x, W.t(), A.t(), B.t(), SCALE))
            t_cub = graph_us(lambda: torch.mm(x, W.t()))
            flop = 2 * M * N * K
            row = {"K": K, "N": N, "M": M, "samkern_fwd_r8_us": t_ours, "cublas_us": t_cub,
                   "samkern_tflops": round(flop / t_ours / 1e6, 1), "cublas_tflops": round(flop / t_cub / 1e6, 1),
                   "tiles_128x128": -(-M // 128) * -(-N // 128)}
            print(row, flush=True)
            res["rows"].append(row)
    res["gpu_choices"] = {str(k): str(v) for k, v in lt.tuning_choices(eager=False).items()}
    print(json.dumps(res["gpu_choices"], indent=1))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "lora-waves.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
