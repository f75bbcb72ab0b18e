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

DW_BLOCK = '''        g = tl.where(own[:, None], g, 0.0)
        part = b * tl.num_programs(0) + pid_l
        if HAS_BIAS:
            tl.store(db_part_ptr + part * D + offs_d, tl.sum(g, axis=0), mask=dmask)
        for k in tl.static_range(W):
            xv = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
            tl.store(dw_part_ptr + (part * W + k) * D + offs_d, tl.sum(g * xv, axis=0), mask=dmask)
'''

VARIANTS = {
    "base": [],
    # timing only: dw from g*g (no reload of the x taps)
    "no_reload": [("            xv = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)\n",
                   "            xv = g\n")],
    # timing only: the four products summed elementwise, one reduction
    "one_reduce": [(DW_BLOCK, '''        g = tl.where(own[:, None], g, 0.0)
        part = b * tl.num_programs(0) + pid_l
        acc = g * 0.0
        for k in tl.static_range(W):
            xv = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
            acc += g * xv
        tl.store(dw_part_ptr + (part * W) * D + offs_d, tl.sum(acc, axis=0), mask=dmask)
''')],
    # timing only: no reductions, products stored (wrong shape of result: row 0 of the tile)
    "no_reduce": [(DW_BLOCK, '''        g = tl.where(own[:, None], g, 0.0)
        part = b * tl.num_programs(0) + pid_l
        acc = g * 0.0
        for k in tl.static_range(W):
            xv = _load_tap(x_base, s_xl, seq_row, sid, offs_l, lmask, dmask, k, W, HAS_SEQ)
            acc += g * xv
        tl.store(dw_part_ptr + (part * W) * D + offs_d[None, :] + r[:, None] * 0, acc, mask=(r == 0)[:, None] & dmask[None, :])
''')],
}


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
    tiles = [(64, 32, 4), (32, 128, 4), (64, 64, 4)]
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
