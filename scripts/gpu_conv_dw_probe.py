# SPDX-License-Identifier: Apache-2.0
"""Variants of the conv1d backward built by source edits, timed side by side (development aid).

Builds variants of ``samkern/ops/conv1d/triton.py`` by string edits (``VARIANTS``: the shipped
source plus edited copies; a variant may compute wrong results on purpose, timing only), imports
each as its own module and reports per variant: CUDA-graph time of ``causal_conv1d_bwd_triton``,
per-kernel CUDA time (torch.profiler) and the relative difference from the shipped source. Its
session-9 uses: where the dw/db sums spent their time (``dev-runs/s9-call3-*``, ``s9-call5-*``)
and, as it stands, the three-tensor (split dy) load forms (``s9-call8-*``). When the shipped
source changes, an edit whose target is gone raises: update the variants first.

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

MASKED = """        g = _load_dy_segment(dy_ptr, s_dyb, s_dyd, s_dyl, b, offs_l, offs_d, ok & (offs_d < D1)[None, :])
        g += _load_dy_segment(dy1_ptr, s_dy1b, s_dy1d, s_dy1l, b, offs_l, offs_d - D1,
                              ok & ((offs_d >= D1) & (offs_d < D2))[None, :])
        g += _load_dy_segment(dy2_ptr, s_dy2b, s_dy2d, s_dy2l, b, offs_l, offs_d - D2, ok & (offs_d >= D2)[None, :])
"""

VARIANTS = {
    "masked": [],  # the shipped form: three masked loads for every tile
    # branch on the tile's place: one load for a tile inside one tensor (s9-call6/7's form; the
    # kernels pass no d_lo any more, so it is recomputed from offs_d)
    "branches": [(MASKED, """        d_lo = tl.min(offs_d, axis=0)
        if d_lo + offs_d.shape[0] <= D1:
            g = _load_dy_segment(dy_ptr, s_dyb, s_dyd, s_dyl, b, offs_l, offs_d, ok)
        elif d_lo >= D1 and d_lo + offs_d.shape[0] <= D2:
            g = _load_dy_segment(dy1_ptr, s_dy1b, s_dy1d, s_dy1l, b, offs_l, offs_d - D1, ok)
        elif d_lo >= D2:
            g = _load_dy_segment(dy2_ptr, s_dy2b, s_dy2d, s_dy2l, b, offs_l, offs_d - D2, ok)
        else:
""" + MASKED.replace("        g", "            g").replace("                              ok", "                                  ok"))],
}
# Earlier variants: s9-call3 (taps reloaded for dw: "no_reload", "one_reduce", "no_reduce") and
# s9-call5 ("four_reductions"); see git history.


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
    """The split-dy backward (three gradient tensors, as conv_split passes them) per load variant,
    beside the single-tensor backward and torch.cat + single-tensor."""
    shapes = {"130m-B32-L192": (32, 192, 1792), "2.7b-B16-L192": (16, 192, 5376), "2.7b-B8-L640": (8, 640, 5376)}
    mods = {name: load_variant(name, edits) for name, edits in VARIANTS.items()}
    for shape, (batch, L, dim) in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        w = (torch.randn(dim, 4, device="cuda") * 0.5).to(torch.bfloat16)
        b = torch.randn(dim, device="cuda", dtype=torch.bfloat16)
        parts = [torch.randn(batch, L, n, device="cuda", dtype=torch.bfloat16) for n in (dim - 256, 128, 128)]
        dys = [t.transpose(1, 2) for t in parts]
        g = torch.cat(parts, -1).transpose(1, 2)
        ref = mods["masked"].causal_conv1d_bwd_triton(g, x, w, b, None, True)
        for name, ct in mods.items():
            runs = {"split": lambda ct=ct: ct.causal_conv1d_bwd_triton(dys, x, w, b, None, True),
                    "single": lambda ct=ct: ct.causal_conv1d_bwd_triton(g, x, w, b, None, True),
                    "cat+single": lambda ct=ct: ct.causal_conv1d_bwd_triton(torch.cat(parts, -1).transpose(1, 2), x, w,
                                                                            b, None, True)}
            for mode, fn in runs.items():
                if name != "masked" and mode != "split":
                    continue
                got = fn()
                diff = [float((a.float() - r.float()).norm() / r.float().norm()) for a, r in zip(got, ref)]
                us = time_graph(fn)
                per = kernel_times(fn, iters=10)
                print("JSON " + json.dumps(dict(shape=shape, variant=name, mode=mode, graph_us=us, rel_vs_single=diff,
                                                kernels={k: round(v, 1) for k, v in per.items()})), flush=True)


if __name__ == "__main__":
    main()
