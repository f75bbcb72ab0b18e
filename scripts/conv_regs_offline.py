# SPDX-License-Identifier: Apache-2.0
"""Registers / spills / shared memory of the conv1d backward kernels (dx; dw/dbias partial sums)
for sm_90, compiled on a machine without a GPU (ptxas), over a few tile shapes: occupancy is what a
memory-bound kernel lives on (65,536 registers per SM: 244 registers x 128 threads leaves room for
2 programs, 8 warps).

    python scripts/conv_regs_offline.py           # CPU machine; needs ptxas (Triton bundles one)
"""
from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ssd_regs_offline import compile_report  # noqa: E402

# (BLOCK_L, BLOCK_D, num_warps); the first is what causal_conv1d_bwd_triton launches (dx kernel,
# without the fused dw sums it keeps for convs wider than four taps)
DW_TILES = [(16, 64, 4), (32, 64, 4), (32, 32, 4), (32, 64, 8)]
TILES = [(32, 128, 4), (64, 64, 4), (32, 64, 4), (32, 64, 8), (32, 32, 4), (16, 128, 4), (64, 32, 4)]


def main() -> None:
    import samkern.ops.conv1d.triton as ct

    batch, L, D, W = 16, 192, 5376, 4  # 2.7b B16 L192: conv_dim = 5120 + 2 * 128
    x = torch.zeros(batch, L, D, dtype=torch.bfloat16).transpose(1, 2)  # channel-last, as in the block
    w, b = torch.zeros(D, W, dtype=torch.bfloat16), torch.zeros(D, dtype=torch.bfloat16)
    dx = torch.zeros(batch, L, D, dtype=torch.bfloat16)
    dw_part, db_part = torch.zeros(64, W, D), torch.zeros(64, D)
    xs = (x.stride(0), x.stride(1), x.stride(2))
    args = (x, w, b, x, x, x, x, dx, dw_part, db_part, L, D, D - 256, D - 128, *xs, *xs, *xs, *xs,
            dx.stride(0), dx.stride(1), 0)
    for split in (False, True):
        for bl, bd, nw in TILES:
            kw = dict(W=W, HAS_BIAS=True, HAS_SEQ=False, SILU=True, SPLIT_DY=split, NEED_DW=False,
                      BLOCK_L=bl, BLOCK_D=bd, RS=1, num_warps=nw)
            r = compile_report(ct._conv_bwd_kernel, args, kw)
            r.update(block_l=bl, block_d=bd, split_dy=split,
                     programs_per_sm=65536 // (r["regs"] * 32 * nw) if r["regs"] else None)
            print(json.dumps(r), flush=True)
    # the dw/dbias partial-sum kernel; the first is what causal_conv1d_bwd_triton launches
    args = (x, w, b, x, x, x, x, dw_part, db_part, L, D, D - 256, D - 128, 256, *xs, *xs, *xs, *xs, 0)
    for bl, bd, nw in DW_TILES:
        kw = dict(W=W, HAS_BIAS=True, HAS_SEQ=False, SILU=True, SPLIT_DY=True, BLOCK_L=bl, BLOCK_D=bd,
                  NUM_STAGES=ct.DW_NUM_STAGES, RS=1, num_warps=nw)
        r = compile_report(ct._conv_dw_kernel, args, kw)
        r.update(block_l=bl, block_d=bd, programs_per_sm=65536 // (r["regs"] * 32 * nw) if r["regs"] else None)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
