# SPDX-License-Identifier: Apache-2.0
"""Host (Python) cost per call of samkern's eager entry points, on shapes so small that the GPU
idles: where the microseconds go when short-sequence training is bound by launches.

    python3 scripts/gpu_host_overhead.py [--profile]      # on the GPU machine

Prints us/call for each layer of the call stack (validation, dispatch, descriptor set-up,
launch) and, with --profile, cProfile's top entries for the full forward and forward+backward.
"""
from __future__ import annotations

import cProfile
import pstats
import sys

import torch


def host_us(fn, n: int = 300) -> float:
    from gpu_eager_host import timed_loop  # (this folder is on sys.path: scripts run from it)

    for _ in range(10):
        fn()
    return timed_loop(fn, n)[0]


def profile(name, fn, n=200):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    print(f"\n=== cProfile {name}: {n} calls, top by tottime")
    pstats.Stats(pr).sort_stats("tottime").print_stats(22)


def tiny_lora_operands(dev: str = "cuda", M: int = 64, K: int = 768, N: int = 3352, r: int = 8):
    """bf16 (x, W, A, B, g, u) of a LoRA linear at a token count so small that the GPU idles:
    x, A, B require grad; g (M, N) is the output gradient, u (M, r) a projection buffer."""
    dt = torch.bfloat16
    x = torch.randn(M, K, device=dev, dtype=dt, requires_grad=True)
    W = torch.randn(N, K, device=dev, dtype=dt) * 0.03
    A = (torch.randn(r, K, device=dev, dtype=dt) * 0.03).requires_grad_(True)
    B = (torch.randn(N, r, device=dev, dtype=dt) * 0.3).requires_grad_(True)
    g = torch.randn(M, N, device=dev, dtype=dt)
    u = torch.randn(M, r, device=dev, dtype=dt)
    return x, W, A, B, g, u


def main() -> None:
    prof = "--profile" in sys.argv
    from samkern.ops.lora import function as lf
    from samkern.ops.lora import triton as lt

    x, W, A, B, g, u = tiny_lora_operands()
    rows = {}
    rows["torch.mm (one cuBLAS launch)"] = host_us(lambda: torch.mm(x.detach(), W.t()))
    rows["peft-style fwd (no grad)"] = host_us(lambda: torch.nn.functional.linear(x.detach(), W) + torch.nn.functional.linear(torch.nn.functional.linear(x.detach(), A.detach()), B.detach()) * 2.0)
    rows["validate_lora_linear"] = host_us(lambda: lf.validate_lora_linear(x, W, None, A, B, 2.0))
    for path in ("tma", "ptr", "cublas"):
        if path == "cublas":
            fn = lambda: lt.lora_gemm(x.detach(), W.t(), u, B.detach().t(), path="cublas")  # noqa: E731
        else:
            fn = lambda p=path: lt.lora_gemm(x.detach(), W.t(), u, B.detach().t(), use_tma=(p == "tma"),  # noqa: E731
                                             config=dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3))
        rows[f"lora_gemm {path}"] = host_us(fn)
    rows["lora_gemm tuned (default)"] = host_us(lambda: lt.lora_gemm(x.detach(), W.t(), u, B.detach().t()))
    from triton.tools.tensor_descriptor import TensorDescriptor
    rows["TensorDescriptor.from_tensor x1"] = host_us(lambda: TensorDescriptor.from_tensor(x.detach(), [64, 64]))
    with torch.no_grad():
        rows["lora_linear fwd (no grad)"] = host_us(lambda: lf.lora_linear(x, W, None, A, B, 2.0))
    rows["lora_linear fwd (grad)"] = host_us(lambda: lf.lora_linear(x, W, None, A, B, 2.0))
    fb = lambda: torch.autograd.grad(lf.lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
    rows["lora_linear fwd+bwd"] = host_us(fb)
    fbp = lambda: torch.autograd.grad(torch.nn.functional.linear(x, W) + torch.nn.functional.linear(torch.nn.functional.linear(x, A), B) * 2.0, (x, A, B), g)  # noqa: E731
    rows["peft-style fwd+bwd"] = host_us(fbp)
    print("choices:", {k[2:]: v for k, v in lt.tuning_choices().items()})

    from samkern.ops.ssd.chunk import ssd_chunk_scan
    dev, dt = "cuda", torch.bfloat16
    b, L, H, P, Nst = 1, 64, 4, 64, 128
    kw = dict(x=torch.randn(b, L, H, P, device=dev, dtype=dt), dt=torch.randn(b, L, H, device=dev) * 0.5,
              A=-(torch.rand(H, device=dev) + 0.5), B=torch.randn(b, L, 1, Nst, device=dev, dtype=dt),
              C=torch.randn(b, L, 1, Nst, device=dev, dtype=dt), D=torch.randn(H, device=dev),
              dt_bias=torch.randn(H, device=dev))
    for k in ("x", "dt", "B", "C", "D", "dt_bias"):
        kw[k].requires_grad_(True)
    with torch.no_grad():
        rows["ssd fwd (no grad)"] = host_us(lambda: ssd_chunk_scan(**kw, chunk_size=256, dt_softplus=True))
    dout = torch.randn(b, L, H, P, device=dev, dtype=dt)
    leaves = [kw[k] for k in ("x", "dt", "B", "C", "D", "dt_bias")]
    sfb = lambda: torch.autograd.grad(ssd_chunk_scan(**kw, chunk_size=256, dt_softplus=True), leaves, dout)  # noqa: E731
    rows["ssd fwd+bwd"] = host_us(sfb)
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as mcs
        with torch.no_grad():
            rows["mamba-ssm fwd (no grad)"] = host_us(lambda: mcs(**kw, chunk_size=256, dt_softplus=True))
    except ImportError:
        pass
    print("\nhost us/call (tiny shapes; the GPU idles):")
    for k, v in rows.items():
        print(f"  {k:40s} {v:8.1f}")
    if prof:
        with torch.no_grad():
            profile("lora_linear fwd (no grad)", lambda: lf.lora_linear(x, W, None, A, B, 2.0))
        profile("lora_linear fwd+bwd", fb)
        with torch.no_grad():
            profile("ssd fwd (no grad)", lambda: ssd_chunk_scan(**kw, chunk_size=256, dt_softplus=True))
        profile("ssd fwd+bwd", sfb)


if __name__ == "__main__":
    main()
