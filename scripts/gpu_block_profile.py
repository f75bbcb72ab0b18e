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
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_blocks import SHAPES, _fwdbwd  # noqa: E402

ITERS = 5


def profile(fn) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(ITERS):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name][0] += ev.device_time_total / ITERS if hasattr(ev, "device_time_total") else ev.cuda_time_total / ITERS
            per[ev.name][1] += 1
    return dict(per)


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
            per = profile(_fwdbwd(block, u, g))
            total = sum(v[0] for v in per.values())
            print(f"\n== {shape} {name}: {total:.0f} us of kernels per fwd+bwd, {sum(v[1] for v in per.values()) // ITERS} launches")
            for k, (t, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:16]:
                print(f"  {t:8.1f} us  x{n // ITERS:<3d} {k[:110]}")


if __name__ == "__main__":
    main()
