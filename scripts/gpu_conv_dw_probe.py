# SPDX-License-Identifier: Apache-2.0
"""Where the conv1d backward's dw/db partial sums spend their time (development aid).

The backward with dw/db takes ~3x its dx-only time (``dev-runs/s9-call2-*``). This builds
variants of ``samkern/ops/conv1d/triton.py`` by source edits (some compute wrong dw on purpose,
timing only), imports each as its own module and reports, per variant: CUDA-graph time of
``causal_conv1d_bwd_triton`` and per-kernel CUDA time (torch.profiler).

    python3 scripts/gpu_conv_dw_probe.py      # on the GPU machine
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from gpu_ssd_profile import kernel_times  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samkern", "ops", "conv1d", "triton.py")

JOINED = """        prods = tl.join(tl.join(g_own * x0, g_own * x1), tl.join(g_own * x2, g_own * x3))
        sums = tl.sum(prods, axis=0)  # [BLOCK_D, 2, 2]
        ij = tl.arange(0, 2)
        tap = ij[None, :, None] + 2 * ij[None, None, :]
        tl.store(dw_row + tap * D + offs_d[:, None, None], sums, mask=dmask[:, None, None] & (tap < W))
"""

VARIANTS = {
    "base": [],
    # the held taps' dw sums as four separate reductions (s9-call4's kernel)
    "four_reductions": [(JOINED, """        _store_dw_part(dw_row, D, g_own, x0, offs_d, dmask, 0, W)
        _store_dw_part(dw_row, D, g_own, x1, offs_d, dmask, 1, W)
        _store_dw_part(dw_row, D, g_own, x2, offs_d, dmask, 2, W)
        _store_dw_part(dw_row, D, g_own, x3, offs_d, dmask, 3, W)
""")],
}
# Variants of s9-call3 (kernel of 50d2d1a, taps reloaded for dw): "no_reload" (dw from g*g),
# "one_reduce" (the four products summed, one reduction), "no_reduce"; see git history.


def load_variant(name: str, edits):
    src = open(SRC).read()
    for old, new in edits:
        if old not in src:
            raise RuntimeError(f"variant {name}: edit target not found")
        src = src.replace(old, new)
    path = os.path.join(tempfile.mkdtemp(), f"conv_variant_{name}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"conv_variant_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    shapes = {"130m-B32-L192": (32, 192, 1792), "2.7b-B16-L192": (16, 192, 5376)}
    tiles = [(64, 64, 4), (64, 32, 4)]
    mods = {name: load_variant(name, edits) for name, edits in VARIANTS.items()}
    for shape, (batch, L, dim) in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        w = (torch.randn(dim, 4, device="cuda") * 0.5).to(torch.bfloat16)
        b = torch.randn(dim, device="cuda", dtype=torch.bfloat16)
        g = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        for tile in tiles:
            for name, ct in mods.items():
                ct.BWD_BLOCK_L, ct.BWD_BLOCK_D, ct.BWD_NUM_WARPS = tile
                for bias in (b, None):
                    fn = (lambda ct=ct, bias=bias: ct.causal_conv1d_bwd_triton(g, x, w, bias, None, True))
                    us = time_graph(fn)
                    per = kernel_times(fn, iters=10)
                    print("JSON " + json.dumps(dict(shape=shape, tile=tile, variant=name, bias=bias is not None,
                                                    graph_us=us, kernels={k: round(v, 1) for k, v in per.items()})),
                          flush=True)


if __name__ == "__main__":
    main()
