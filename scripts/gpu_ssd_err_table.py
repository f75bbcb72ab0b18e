# SPDX-License-Identifier: Apache-2.0
"""Every output's and gradient's relative error, ours and mamba-ssm's against fp64, printed
instead of asserted (development aid, device machine).

A GPU test against mamba-ssm that fails on a new configuration can be the 2x rule's yardstick
rather than a change: run the same seeds on two trees (e.g. the working tree and ``abbase/``, see
``scripts/gpu_ssd_ab.sh``) and compare the tables (session 22, ``dev-runs/s22-call8-*``).

    python3 scripts/gpu_ssd_err_table.py --tiles 64x256,64x128 --seeds 3 [--gate] [--all]

Runs ``tests/ops/test_ssd.py::_check_vs_mamba`` (the block-size grid's inputs: 2 x 200 tokens,
4 heads, per-head D, dt_bias, initial states, bf16) with its assertion replaced by a print; by
default only the per-head gradients (A, D, dt_bias) and dt, and anything over its budget.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tests.ops.test_ssd as T  # noqa: E402
from samkern.testing import rel_err  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", default="64x256", help="comma-separated PxN headdim x d_state pairs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gate", action="store_true", help="with z (the gated grid); default: without")
    ap.add_argument("--all", action="store_true", help="print every output and gradient")
    ap.add_argument("--head-factor", type=float, default=2.0,
                    help="budget factor for gradients of at most 1024 numbers (the no-gate grid test uses 4)")
    args = ap.parse_args()
    watch = ("grad A", "grad D", "grad dt", "grad dt_bias")

    def report(name, out, ref, lowp, factor=2.0, floor=1e-6):
        if out.numel() <= 1024 and " grad " in name:
            factor = args.head_factor
        ours, peer = rel_err(out, ref), rel_err(lowp, ref)
        budget = factor * peer + floor
        if args.all or ours > budget or any(name.endswith(w) for w in watch):
            print(f"  {name}: ours {ours:.3e} peer {peer:.3e} budget {budget:.3e}"
                  f" {'OK' if ours <= budget else 'OVER'}", flush=True)
        return ours

    T.assert_close_lowp = report
    extra = dict(D="head", dt_bias=True, init=True, z=args.gate)
    for tile in args.tiles.split(","):
        P, N = map(int, tile.split("x"))
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            print(f"P{P} N{N} seed {seed}", flush=True)
            T._check_vs_mamba(f"P{P}-N{N}", 2, 200, 4, P, N, 1, extra, torch.bfloat16)


if __name__ == "__main__":
    main()
