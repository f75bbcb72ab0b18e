# SPDX-License-Identifier: Apache-2.0
"""Where the Gluon kernel's time goes, tile by tile: launches it with ``launch_gluon(trace=...)``
(global-timer stamps per tile: start after the consumer's turn, K loop done, u_s acquired, end)
and summarises the records: the kernel's span, each kind of tile's durations, the GEMM tiles' waits
for their row block's u_s (projection tiles, ``FUSE_PROJ``), and how busy the consumers were.

Made for the open question of session 28 (the op README's "Projection tiles"): the projection tiles
cost 8-20 us where they add no round of tiles. Compares, at one shape, the fused kernel with the
same kernel given u_s (the split path's GEMM). Stamps are taken by one consumer warp group per
tile, so the records of a program's two consumers interleave.

    python scripts/gpu_gluon_trace.py                 # 768x3352, 1536x6448, 2560x10576, forward r8
    SHAPES=2560x10576 python scripts/gpu_gluon_trace.py
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT = [(768, 3352), (1536, 6448), (2560, 10576)]


def _traced(launch, grid_tiles: int, n_sms: int) -> torch.Tensor:
    """One warm launch, then one traced into a zeroed (programs, tiles, 5) int64 record."""
    programs = min(grid_tiles, n_sms)
    per_program = -(-grid_tiles // programs)
    trace = torch.zeros(programs, per_program, 5, device="cuda", dtype=torch.int64)
    launch(None)
    torch.cuda.synchronize()
    launch(trace)
    torch.cuda.synchronize()
    return trace.cpu()


def summarise(trace: torch.Tensor) -> dict:
    """Span, per-kind durations (us, medians and maxima) and the u_s waits of a trace record."""
    t = trace.reshape(-1, 5)
    t = t[t[:, 4] > 0].double()
    t0 = t[:, 0].min()
    rec = (t[:, :4] - t0) / 1e3  # us from the kernel's first stamp
    kind = t[:, 4]
    out = {"span_us": round(float(rec[:, 3].max()), 1), "tiles": int(len(t))}
    for k, name in ((1, "proj"), (2, "gemm")):
        r = rec[kind == k]
        if not len(r):
            continue
        dur, kloop = r[:, 3] - r[:, 0], r[:, 1] - r[:, 0]
        out[name] = {"n": int(len(r)), "tile_med": round(float(dur.median()), 2),
                     "tile_max": round(float(dur.max()), 2), "kloop_med": round(float(kloop.median()), 2)}
        if k == 2:
            wait = (r[:, 2] - r[:, 1]).clamp(min=0) * (r[:, 2] > 0)
            out[name].update(wait_med=round(float(wait.median()), 2), wait_max=round(float(wait.max()), 2),
                             waits_over_1us=int((wait > 1).sum()), wait_sum=round(float(wait.sum()), 1))
    # consumer time spent in tiles, over all programs (two consumers per program)
    busy = float((rec[:, 3] - rec[:, 0]).sum())
    out["busy_fraction"] = round(busy / (2 * trace.shape[0] * out["span_us"]), 3)
    return out


def main() -> None:
    from benchmarks.ops.bench_lora_linear import make_operands
    from samkern.backend import num_sms
    from samkern.ops.lora import gluon as lg

    shapes = DEFAULT
    if os.environ.get("SHAPES"):
        shapes = [tuple(map(int, s.split("x"))) for s in os.environ["SHAPES"].split(",")]
    T, r, s, dt = 6144, 8, 2.0, torch.bfloat16
    n_sms = num_sms(torch.device("cuda"))
    for K, N in shapes:
        x, W, A, B, _ = (t.detach() for t in make_operands(K, N, r, T))
        u = torch.addmm(torch.empty(T, r, device="cuda", dtype=dt), x, A.t(), beta=0, alpha=s)
        y = torch.empty(T, N, device="cuda", dtype=dt)
        cfg = lg.candidates(r)[0]
        m_tiles, n_tiles = -(-T // cfg[0]), -(-N // cfg[1])
        for name, fused in (("gemm_given_u", False), ("fused", True)):
            def launch(trace, fused=fused):
                lg.launch_gluon(x, W.t(), u, B.t(), True, y, cfg, proj=A.t() if fused else None, scale=s, trace=trace)

            tr = _traced(launch, m_tiles * (n_tiles + fused), n_sms)
            if os.environ.get("OUT"):  # the raw records, for reading offline
                torch.save(tr, os.path.join(os.environ["OUT"], f"trace-{K}x{N}-{name}.pt"))
            print(json.dumps({"shape": f"{K}x{N}", "kernel": name, **summarise(tr)}), flush=True)


if __name__ == "__main__":
    main()
