# SPDX-License-Identifier: Apache-2.0
"""The LoRA rank pass (``samkern/ops/lora/rank_pass.py``, #4 session 26) against what it replaces,
at the harness's six widths and 6144 tokens, bf16, r = 8 (development aid: the numbers that
count come from the harness):

* backward: ``g_s = s·dy B`` and ``dB = dyᵀ u_s`` by the rank pass vs two cuBLAS calls;
* forward's split path: ``u_s = s·x Aᵀ`` by the rank pass (no U) vs cuBLAS;

each timed as CUDA-graph replays with the L2 flushed (``benchmarks.harness.time_graph``), for a
few launch settings (the module constants), with the achieved bytes per second of one read of
the wide operand.

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_lora_rank_pass.py      # env RANK_PASS_R (8)
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from samkern.ops.lora import rank_pass as rp  # noqa: E402

T = 6144
WIDTHS = [768, 1536, 2560, 3072, 3352, 6448, 10576]  # every K and N of the harness's shapes
# (BLOCK_M, BLOCK_N, num_warps, num_stages, programs per SM)
SETTINGS = [(128, 128, 8, 2, 2), (128, 128, 8, 3, 1), (128, 64, 4, 3, 2), (128, 64, 4, 4, 2), (128, 64, 8, 3, 2),
            (256, 64, 8, 3, 1), (256, 128, 8, 2, 1), (64, 128, 4, 3, 3)]
# (env RANK_PASS_SETTINGS: a JSON list of such tuples replaces them; session 27 tried deeper
# pipelines and 512-row blocks, which make 12 x 11 = 132 programs at 6144 tokens)
SETTINGS = [tuple(s) for s in json.loads(os.environ.get("RANK_PASS_SETTINGS", "null") or "null")] or SETTINGS


def _set(s) -> None:
    rp.BLOCK_M, rp.BLOCK_N, rp.NUM_WARPS, rp.NUM_STAGES, rp.PROGRAMS_PER_SM = s


def main() -> None:
    r = int(os.environ.get("RANK_PASS_R", "8"))
    dt = torch.bfloat16
    rows = []
    default = (rp.BLOCK_M, rp.BLOCK_N, rp.NUM_WARPS, rp.NUM_STAGES, rp.PROGRAMS_PER_SM)
    for N in WIDTHS:
        a = torch.randn(T, N, device="cuda").to(dt)
        p = (torch.randn(N, r, device="cuda") * N ** -0.5).to(dt)
        u = torch.randn(T, r, device="cuda").to(dt)
        g = torch.empty(T, r, device="cuda", dtype=dt)
        gb = a.numel() * a.element_size() / 1e9

        def cublas_bwd():
            torch.addmm(g, a, p, beta=0, alpha=2.0, out=g)
            return a.t() @ u

        def cublas_fwd():
            return torch.addmm(g, a, p, beta=0, alpha=2.0, out=g)

        res = {"N": N, "r": r, "cublas_bwd": time_graph(cublas_bwd), "cublas_fwd": time_graph(cublas_fwd),
               "read_amax": time_graph(lambda: a.amax())}  # one plain read of ``a``, as timed here
        for s in SETTINGS:
            _set(s)
            try:
                gg, dd = rp.lora_rank_pass(a, p, 2.0, u)
                err = max(((gg.float() - 2.0 * a.float() @ p.float()).norm() / (2.0 * a.float() @ p.float()).norm()).item(),
                          ((dd.float() - a.float().t() @ u.float()).norm() / (a.float().t() @ u.float()).norm()).item())
                tb = time_graph(lambda: rp.lora_rank_pass(a, p, 2.0, u))
                tf = time_graph(lambda: rp.lora_rank_pass(a, p, 2.0, g_out=g))
            except Exception as e:  # noqa: BLE001 - a setting that does not fit is reported, not fatal
                res[str(s)] = f"{type(e).__name__}: {str(e)[:120]}"
                continue
            res[str(s)] = {"bwd": round(tb, 2), "fwd": round(tf, 2), "err": err, "bwd_TBps": round(gb / tb * 1e-3 * 1e6, 2)}
        _set(default)
        rows.append(res)
        best_b = min((v["bwd"], k) for k, v in res.items() if isinstance(v, dict))
        best_f = min((v["fwd"], k) for k, v in res.items() if isinstance(v, dict))
        print(f"N {N:6d}: amax (a read) {res['read_amax']:6.1f} us, "
              f"cuBLAS g+dB {res['cublas_bwd']:7.1f} us, rank pass {best_b[0]:7.1f} {best_b[1]} | "
              f"cuBLAS u_s {res['cublas_fwd']:6.1f}, rank pass {best_f[0]:6.1f} {best_f[1]}", flush=True)
        for k, v in res.items():
            if isinstance(v, (dict, str)):
                print(f"      {k}: {v}", flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "lora-rank-pass.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
