# SPDX-License-Identifier: Apache-2.0
"""LoRA linear at SAM's projection shapes, bf16, 6144 tokens, r = 8 and 256, frozen base.

Providers per (K→N, r):
* ``cublas-base``: the plain ``F.linear(x, W)`` (fwd) and its dx GEMM ``dy @ W`` (the ceiling
  the targets are measured against);
* ``peft-style``: ``F.linear(x, W) + F.linear(F.linear(x, A), B) * s`` with PyTorch autograd;
* ``samkern``: ``samkern.ops.lora_linear`` (fused Triton kernels + cuBLAS for the rank-r GEMMs).

FLOPs counted (T tokens): fwd = 2TNK + 2Tr(K+N); fwd+bwd with frozen W adds dx's 2TNK + 2Tr(N+K)
(dy B, then g A) + dA's 2TrK + dB's 2TrN, i.e. 4TNK + 6Tr(K+N) in all. ``pct_of_cublas`` in the
row's extra is the row's TFLOP/s over the plain GEMM's (targets: fwd ≥ 90%, fwd+bwd ≥ 85%);
``kernels`` / ``eager_kernels`` (samkern rows) are the LoRA tuner's decisions this row added, by
GPU time (the graph column's kernels) and by eager wall time: rows near a target flip between runs
with the tuner's choice among close candidates, and this says which one ran.

Run: ``pytest benchmarks/ops/bench_lora_linear.py --benchmark``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

T = 6144
SHAPES = [(768, 3352), (1536, 768), (1536, 6448), (3072, 1536), (2560, 10576), (5120, 2560)]
RANKS = (8, 256)
DTYPE = torch.bfloat16
_BASE_TF: dict = {}


def make_operands(K: int, N: int, r: int, tokens: int = T):
    """(x, W, A, B, g): bf16 LoRA operands at one shape (x, A, B require grad; W frozen; g the
    output gradient), scaled so that the products stay O(1). Shared with the dev scripts."""
    x = torch.randn(tokens, K, device="cuda", dtype=DTYPE, requires_grad=True)
    W = (torch.randn(N, K, device="cuda") * K ** -0.5).to(DTYPE)
    A = (torch.randn(r, K, device="cuda") * K ** -0.5).to(DTYPE).requires_grad_(True)
    B = (torch.randn(N, r, device="cuda") * r ** -0.5).to(DTYPE).requires_grad_(True)
    g = torch.randn(tokens, N, device="cuda", dtype=DTYPE)
    return x, W, A, B, g


def peft_style(x, W, A, B, s: float):
    """The unfused baseline: what peft's LoRA layer computes, with PyTorch autograd."""
    return F.linear(x, W) + F.linear(F.linear(x, A), B) * s


def _choices():
    """The LoRA tuner's decisions so far, (by GPU time, by eager wall time), keys and choices as text."""
    from samkern.ops.lora.triton import tuning_choices

    return tuple({str(k): str(v) for k, v in tuning_choices(eager=e).items()} for e in (False, True))


def _base_tflops(results, K: int, N: int) -> float:
    if (K, N) not in _BASE_TF:
        x = torch.randn(T, K, device="cuda", dtype=DTYPE)
        W = torch.randn(N, K, device="cuda", dtype=DTYPE)
        dy = torch.randn(T, N, device="cuda", dtype=DTYPE)
        row = results.time(op="lora_linear", shape=f"T{T}-{K}x{N}", provider="cublas-base", mode="fwd",
                           fn=lambda: F.linear(x, W), flops=2 * T * N * K)
        results.time(op="lora_linear", shape=f"T{T}-{K}x{N}", provider="cublas-base", mode="dx",
                     fn=lambda: dy @ W, flops=2 * T * N * K)
        _BASE_TF[(K, N)] = row.tflops
    return _BASE_TF[(K, N)]


@pytest.mark.parametrize("provider", ["peft-style", "samkern"])
@pytest.mark.parametrize("r", RANKS)
@pytest.mark.parametrize("K,N", SHAPES)
def test_lora_linear(K, N, r, provider, results):
    from samkern.ops.lora.function import lora_linear

    base = _base_tflops(results, K, N)
    x, W, A, B, g = make_operands(K, N, r)
    s = 2.0
    if provider == "samkern":
        call = lambda: lora_linear(x, W, None, A, B, s)  # noqa: E731
    else:
        call = lambda: peft_style(x, W, A, B, s)  # noqa: E731
    flops = {"fwd": 2 * T * N * K + 2 * T * r * (K + N), "fwdbwd": 4 * T * N * K + 6 * T * r * (K + N)}
    fns = {
        "fwd": call,
        "fwdbwd": lambda: torch.autograd.grad(call(), (x, A, B), g),
    }
    for mode, fn in fns.items():
        seen = _choices()
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            row = results.time(op="lora_linear", shape=f"T{T}-{K}x{N}-r{r}", provider=provider, mode=mode, fn=fn,
                               flops=flops[mode])
        row.extra["pct_of_cublas"] = round(100 * row.tflops / base, 1)
        if provider == "samkern":
            now = _choices()
            for name, i in (("kernels", 0), ("eager_kernels", 1)):
                row.extra[name] = {k: v for k, v in now[i].items() if seen[i].get(k) != v}
