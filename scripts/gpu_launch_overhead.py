# SPDX-License-Identifier: Apache-2.0
"""Where a Triton launch's host time goes (Triton 3.6): ``kernel[grid](...)`` against its parts
(the argument binder, the cache key, the C launcher called directly). Records one real launch of
the SSD forward kernel and of the LoRA GEMM kernels, then replays it through each path.

    python3 scripts/gpu_launch_overhead.py        # on the GPU machine
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_host_overhead import host_us  # noqa: E402


def record(jit_fn, call):
    """Run ``call`` once and return (grid, args, kwargs) of ``jit_fn``'s launch inside it."""
    seen = {}
    orig = jit_fn.run

    def spy(*args, grid, warmup, **kwargs):
        seen.update(grid=grid, args=args, kwargs=dict(kwargs))
        return orig(*args, grid=grid, warmup=warmup, **kwargs)

    from samkern import launch

    jit_fn.run = spy
    launch.ENABLED = False  # through Triton's path, where the spy sits
    try:
        call()
    finally:
        jit_fn.run = orig
        launch.ENABLED = True
    return seen["grid"], seen["args"], seen["kwargs"]


def parts(name, jit_fn, grid, args, kwargs):
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.jit import compute_cache_key

    dev = driver.active.get_current_device()
    kernel_cache, key_cache, _, _, binder = jit_fn.device_caches[dev]
    kw = dict(kwargs, debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode)
    bound, spec, opts = binder(*args, **kw)
    ck = kernel_cache[compute_cache_key(key_cache, spec, opts)]
    vals = tuple(bound.values())
    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = torch.cuda.current_stream().cuda_stream
    run, fn, meta = ck.run, ck.function, ck.packed_metadata
    from samkern.launch import FastLaunch

    fl = FastLaunch(jit_fn)
    rows = {
        "kernel[grid](...)": host_us(lambda: jit_fn[grid](*args, **kwargs)),
        "samkern.launch (direct path)": host_us(lambda: fl[grid](*args, **kwargs)),
        "  binder(*args)": host_us(lambda: binder(*args, **kw)),
        "  compute_cache_key": host_us(lambda: compute_cache_key(key_cache, spec, opts)),
        "  driver stream": host_us(lambda: driver.active.get_current_stream(dev)),
        "  torch stream": host_us(lambda: torch.cuda.current_stream().cuda_stream),
        "  knobs (4 reads)": host_us(lambda: (knobs.runtime.debug, knobs.compilation.instrumentation_mode,
                                              knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)),
        "compiled.run (direct)": host_us(lambda: run(g[0], g[1], g[2], stream, fn, meta, None, None, None, *vals)),
    }
    assert fl.hits > 0, "the direct path was not taken"
    print(f"\n{name}: {len(vals)} parameters")
    for k, v in rows.items():
        print(f"  {k:32s} {v:8.1f} us")


def main() -> None:
    dev, dt = "cuda", torch.bfloat16
    from samkern.ops.ssd import fwd

    T, H, P, N = 64, 4, 64, 128
    x = torch.randn(T, H, P, device=dev, dtype=dt)
    dtr = torch.randn(T, H, device=dev)
    A = -torch.rand(H, device=dev)
    B = torch.randn(T, 1, N, device=dev, dtype=dt)
    C = torch.randn(T, 1, N, device=dev, dtype=dt)
    cu = torch.tensor([0, T], device=dev, dtype=torch.int32)
    init = torch.zeros(1, device=dev, dtype=torch.int32)
    call = lambda: fwd.ssd_fwd(x, dtr, A, B, C, cu, init, dt_softplus=True)  # noqa: E731
    call()
    parts("ssd fwd kernel", fwd._ssd_fwd_kernel, *record(fwd._ssd_fwd_kernel, call))
    print(f"  {'ssd_fwd (whole call)':32s} {host_us(call):8.1f} us")
    from samkern import launch
    launch.ENABLED = False
    print(f"  {'ssd_fwd (whole, Triton launch)':32s} {host_us(call):8.1f} us")
    launch.ENABLED = True

    from samkern.ops.lora import triton as lt

    M, K, Nn, r = 64, 768, 3352, 8
    a1 = torch.randn(M, K, device=dev, dtype=dt)
    W = torch.randn(Nn, K, device=dev, dtype=dt)
    u = torch.randn(M, r, device=dev, dtype=dt)
    Bl = torch.randn(Nn, r, device=dev, dtype=dt)
    cfg = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3)
    for tma, kern in ((False, lt._lora_gemm_kernel), (True, lt._lora_gemm_tma_kernel)):
        call = lambda t=tma: lt.lora_gemm(a1, W.t(), u, Bl.t(), config=cfg, use_tma=t)  # noqa: E731
        call()
        parts(f"lora gemm {'tma' if tma else 'ptr'}", kern, *record(kern, call))
        print(f"  {'lora_gemm (whole call)':32s} {host_us(call):8.1f} us")
    from triton.tools.tensor_descriptor import TensorDescriptor
    print(f"  {'TensorDescriptor.from_tensor':32s} {host_us(lambda: TensorDescriptor.from_tensor(a1, [64, 64])):8.1f} us")
    print(f"  {'torch.empty (64x3352)':32s} {host_us(lambda: torch.empty((M, Nn), device=dev, dtype=dt)):8.1f} us")
    print(f"  {'torch.mm (cuBLAS)':32s} {host_us(lambda: torch.mm(a1, W.t())):8.1f} us")


if __name__ == "__main__":
    main()
