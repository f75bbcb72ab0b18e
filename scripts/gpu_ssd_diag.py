# SPDX-License-Identifier: Apache-2.0
"""Which launch setting breaks the SSD backward at a headdim x d_state (development aid).

For each (P, N) in ``SSD_DIAG_SHAPES`` and each variant in ``VARIANTS`` (launch overrides), runs
fwd+bwd in a fresh subprocess (an illegal memory access poisons the CUDA context) and prints the
relative error of the output and of every gradient against an fp64 reference on the GPU.
Run (device): ``source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_ssd_diag.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

VARIANTS = {
    "default": {},
    "bwd_warps8": {"bwd": {"num_warps": 8}},
    "bwd_block_p64": {"bwd_block_p": 64},
    "scan_warps8": {"bwd": {"scan_warps": 8}},
    "dbdc_warps8": {"bwd": {"dbdc_warps": 8}},
    "fp32": {"dtype": "fp32"},
}


def child(P: int, N: int, variant: dict) -> dict:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import samkern.ops.ssd.bwd as bwd_mod
    from samkern.ops.ssd.chunk import ssd_chunk_scan
    from samkern.ops.ssd.ref import ssd_chunk_scan_ref
    from samkern.testing import rel_err

    bwd_mod.BWD_TUNING.update(variant.get("bwd", {}))
    if "bwd_block_p" in variant:
        bwd_mod._pick_block_p = lambda P, bp=variant["bwd_block_p"]: bp
    dtype = torch.float32 if variant.get("dtype") == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    dev = os.environ.get("SSD_DIAG_DEVICE", "cuda")
    b, L, H = (2, 200, 4) if dev == "cuda" else (1, 40, 2)
    kw = dict(x=torch.randn(b, L, H, P, device=dev).to(dtype), dt=torch.randn(b, L, H, device=dev) * 0.5,
              A=-(torch.rand(H, device=dev) + 0.5), B=(torch.randn(b, L, 1, N, device=dev) / N ** 0.5).to(dtype),
              C=(torch.randn(b, L, 1, N, device=dev) / N ** 0.5).to(dtype), D=torch.randn(H, device=dev),
              z=torch.randn(b, L, H, P, device=dev).to(dtype), dt_bias=torch.randn(H, device=dev) * 0.3,
              initial_states=torch.randn(b, H, P, N, device=dev))
    for v in kw.values():
        v.requires_grad_(True)
    k64 = {k: v.detach().double().requires_grad_(True) for k, v in kw.items()}
    out, fin = ssd_chunk_scan(**kw, chunk_size=256, dt_softplus=True, return_final_states=True, backend="triton")
    ro, rf = ssd_chunk_scan_ref(**k64, chunk_size=256, dt_softplus=True, return_final_states=True)
    go, gf = torch.randn_like(ro), torch.randn_like(rf)
    ((out.double() * go).sum() + (fin.double() * gf).sum()).backward()
    ((ro * go).sum() + (rf * gf).sum()).backward()
    if dev == "cuda":
        torch.cuda.synchronize()
    res = {"out": rel_err(out, ro), "final": rel_err(fin, rf)}
    for k in kw:
        res["d" + k] = rel_err(kw[k].grad, k64[k].grad)
    return {k: float(f"{v:.2e}") for k, v in res.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        P, N, variant = int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
        print("RESULT " + json.dumps(child(P, N, variant)), flush=True)
        return
    shapes = json.loads(os.environ.get("SSD_DIAG_SHAPES", "[[32, 64], [32, 256], [64, 256]]"))
    want = os.environ.get("SSD_DIAG_VARIANTS", ",".join(VARIANTS)).split(",")
    rows = []
    for P, N in shapes:
        for name in want:
            r = subprocess.run([sys.executable, __file__, "--child", str(P), str(N), json.dumps(VARIANTS[name])],
                               capture_output=True, text=True, timeout=120)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(line[0][7:]) if line else {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:160]}
            rows.append({"P": P, "N": N, "variant": name, **res})
            print(rows[-1], flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "ssd-diag.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
