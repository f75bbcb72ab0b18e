# SPDX-License-Identifier: Apache-2.0
"""Per-kernel CUDA time of one Mamba-2 block fwd+bwd, samkern.Mamba2Block vs mamba-ssm's Mamba2
(same weights, bf16), from torch.profiler: where the block's time goes beyond the SSD scan.
Development aid (the block harness is ``benchmarks/bench_blocks.py``).

    python3 scripts/gpu_block_profile.py            # on the GPU machine (peers kit sourced)
    BLOCK_PROFILE_SHAPES=2.7b-B16-L192,2.7b-B8-L640 python3 scripts/gpu_block_profile.py
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_blocks import SHAPES, _fwdbwd  # noqa: E402
from gpu_ssd_profile import kernel_times  # noqa: E402


def main() -> None:
    from mamba_ssm.modules.mamba2 import Mamba2

    from samkern.layers.mamba2 import Mamba2Block

    for shape in os.environ.get("BLOCK_PROFILE_SHAPES", "2.7b-B16-L192,2.7b-B8-L640").split(","):
        d_model, batch, seqlen = SHAPES[shape]
        kw = dict(device="cuda", dtype=torch.bfloat16)
        torch.manual_seed(0)
        peer = Mamba2(d_model, d_state=128, headdim=64, **kw)
        ours = Mamba2Block(d_model, d_state=128, headdim=64, **kw)
        ours.load_state_dict(peer.state_dict())
        u = torch.randn(batch, seqlen, d_model, **kw, requires_grad=True)
        g = torch.randn(batch, seqlen, d_model, **kw)
        for name, block in (("samkern", ours), ("mamba-ssm", peer)):
            counts: dict = {}
            per = kernel_times(_fwdbwd(block, u, g), counts=counts)
            print(f"\n== {shape} {name}: {sum(per.values()):.0f} us of kernels per fwd+bwd, "
                  f"{sum(counts.values())} launches")
            for k, t in list(per.items())[:16]:
                print(f"  {t:8.1f} us  x{counts[k]:<3d} {k}")


if __name__ == "__main__":
    main()
