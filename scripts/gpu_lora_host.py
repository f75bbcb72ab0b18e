# SPDX-License-Identifier: Apache-2.0
"""Where the LoRA linear's eager host time goes, on the GPU machine at 64 tokens (the GPU idles):
us per call of each layer of the call stack beside the torch primitives it is built from, then
cProfile's top entries of a forward+backward. Development aid for the eager path.

    python3 scripts/gpu_lora_host.py
"""
from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host_us(fn, n: int = 300) -> float:
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, 1e6 * (time.perf_counter() - t0) / n)
        torch.cuda.synchronize()
    return best




def main() -> None:
    import torch
    import torch.nn.functional as F

    from samkern.ops.lora import function as lf
    from samkern.ops.lora import triton as lt

    class Ident(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, A, B):
            ctx.save_for_backward(x, A, B)
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            ctx.saved_tensors
            return g, None, None

    class IdentMM(Ident):
        """The identity, with a backward that makes one GEMM and two allocations (CUDA work
        launched from the autograd engine's device thread)."""

        @staticmethod
        def backward(ctx, g):
            x, A, B = ctx.saved_tensors
            torch.empty_like(g)
            torch.empty_like(A)
            return g, torch.mm(A, x.t()) @ x, None

    from gpu_host_overhead import tiny_lora_operands

    x, W, A, B, g, u = tiny_lora_operands()
    M, N = g.shape
    gk = torch.randn_like(x.detach())
    xd, Ad, Bd = x.detach(), A.detach(), B.detach()
    rows = {
        "torch.empty (M, N)": lambda: torch.empty((M, N), device=g.device, dtype=g.dtype),
        "W.t() (a view)": lambda: W.t(),
        "torch.mm x Aᵀ": lambda: torch.mm(xd, Ad.t()),
        "torch.addmm beta=0 alpha=2 out=": lambda: torch.addmm(u, xd, Ad.t(), beta=0, alpha=2.0, out=u),
        "autograd.Function identity fwd+bwd": lambda: torch.autograd.grad(Ident.apply(gk.requires_grad_(True), A, B),
                                                                          (gk,), gk),
        "autograd.Function identity+mm fwd+bwd": lambda: torch.autograd.grad(
            IdentMM.apply(gk.requires_grad_(True), A, B), (gk, A), gk),
        "validate_lora_linear": lambda: lf.validate_lora_linear(x, W, None, A, B, 2.0),
        "lora_proj_gemm fwd (tuned)": lambda: lt.lora_proj_gemm(xd, W.t(), Ad.t(), Bd.t(), 2.0),
        "lora_proj_gemm bwd (tuned)": lambda: lt.lora_proj_gemm(g, W, Bd, Ad, 2.0),
        "lora_gemm fwd unfused (tuned)": lambda: lt.lora_gemm(xd, W.t(), u, Bd.t()),
    }
    out = {k: host_us(f) for k, f in rows.items()}
    with torch.no_grad():
        out["lora_linear fwd (no grad)"] = host_us(lambda: lf.lora_linear(x, W, None, A, B, 2.0))
        out["peft-style fwd (no grad)"] = host_us(lambda: F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0)
    fb = lambda: torch.autograd.grad(lf.lora_linear(x, W, None, A, B, 2.0), (x, A, B), g)  # noqa: E731
    out["lora_linear fwd (grad mode, no bwd)"] = host_us(lambda: lf.lora_linear(x, W, None, A, B, 2.0))
    out["lora_linear fwd+bwd"] = host_us(fb)
    out["peft-style fwd+bwd"] = host_us(
        lambda: torch.autograd.grad(F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0, (x, A, B), g))
    # the engine runs CUDA backward nodes on a per-device worker thread; without it (the calling
    # thread runs them) the thread hand-offs go away
    class Spin(torch.autograd.Function):
        """Identity whose forward and backward each run the same pure-Python loop: Python speed on
        the engine's worker thread against the caller's thread."""

        @staticmethod
        def forward(ctx, x):
            ctx.t = _spin()
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            ctx.tb = _spin()
            return g

    def _spin(n: int = 2000) -> float:
        t0 = time.perf_counter()
        acc = 0
        for i in range(n):
            acc += i
        return 1e6 * (time.perf_counter() - t0)

    for _ in range(200):
        torch.autograd.grad(Spin.apply(gk.requires_grad_(True)), (gk,), gk)
    ctxs = []
    for _ in range(50):
        y = Spin.apply(gk)
        node = y.grad_fn
        torch.autograd.grad(y, (gk,), gk)
        ctxs.append((node.t, node.tb))
    out["pure-Python loop, forward (main thread) us"] = sorted(c[0] for c in ctxs)[25]
    out["pure-Python loop, backward (engine thread) us"] = sorted(c[1] for c in ctxs)[25]
    with torch.autograd.set_multithreading_enabled(False):
        out["[no engine threads] identity fwd+bwd"] = host_us(
            lambda: torch.autograd.grad(Ident.apply(gk.requires_grad_(True), A, B), (gk,), gk))
        out["[no engine threads] lora_linear fwd+bwd"] = host_us(fb)
        out["[no engine threads] peft-style fwd+bwd"] = host_us(
            lambda: torch.autograd.grad(F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0, (x, A, B), g))
    print("host us/call (64 tokens, best of 3 x 300):")
    for k, v in out.items():
        print(f"  {k:40s} {v:8.1f}")
    print("eager choices:", {k[2:]: v for k, v in lt.tuning_choices(eager=True).items()})
    from torch.profiler import ProfilerActivity, profile

    for _ in range(10):
        fb()
    torch.cuda.synchronize()
    peft = lambda: torch.autograd.grad(F.linear(x, W) + F.linear(F.linear(x, A), B) * 2.0, (x, A, B), g)  # noqa: E731
    for name, fn, rows in (("lora_linear", fb, 30), ("peft-style", peft, 20)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(50):
                fn()
            torch.cuda.synchronize()
        print(f"\n=== torch.profiler, {name} fwd+bwd x 50, CPU self time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50))
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        fb()
    pr.disable()
    torch.cuda.synchronize()
    print("\n=== cProfile lora_linear fwd+bwd, 200 calls, top by tottime")
    pstats.Stats(pr).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
