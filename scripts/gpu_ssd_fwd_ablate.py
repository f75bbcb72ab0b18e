# SPDX-License-Identifier: Apache-2.0
"""What the SSD forward's per-head ``C Bᵀ`` costs (development aid, #3).

The forward kernel (``samkern/ops/ssd/fwd.py::_ssd_fwd_kernel``) runs one program per (sequence,
head) and forms the chunk's ``C Bᵀ`` [Q, Q] in every program, although it depends only on the
group: with ngroups = 1 all 80 heads of the 2.7b shapes compute the same product, 29 % of the
kernel's MMA work (``C Bᵀ`` Q·Q·N of Q·Q·N + Q·Q·P + 2·Q·N·P per chunk at P 64, N 128). This script
prices it with two source-edited variants of the kernel, launched with the arguments the shipped
wrapper passes (captured from one forward call) and timed alone under CUDA-graph replay with the
L2 flushed (``benchmarks.harness.time_graph``):

* ``no_cb``: the product replaced by a constant (WRONG outputs: the upper bound of the saving);
* ``cb_load``: the product loaded as an fp32 [Q, Q] tile from a buffer made beforehand (here by
  torch, outside the timing; rows as the chunk states': ``start // Q + sequence + chunk``, then the
  group), appended to the dt cache the kernel already reads (so no signature change); its output
  is compared with the shipped kernel's.

Run (device): ``PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_ssd_fwd_ablate.py``; env
``SSD_FWD_ABLATE_SHAPES`` (``bench_ssd.SHAPES`` names, one-pass shapes only). Writes
``$OUT/ssd-fwd-ablate.json``.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # (gpu_ssd_ablate)

import samkern.ops.ssd.fwd as fwd_mod  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
_CB = "            CB = tl.dot(Cm, tl.trans(Bm), input_precision=DOT_PREC)\n"
VARIANTS = {
    "no_cb": "            CB = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32) + 1e-3\n",
    "cb_load": (
        "            cb_row = ((start // BLOCK_Q + pid_s + c) * (H // heads_per_group) + g).to(tl.int64)\n"
        "            CB = tl.load(dtc_ptr + 3 * HT + cb_row * (BLOCK_Q * BLOCK_Q)\n"
        "                         + offs_q[:, None] * BLOCK_Q + offs_q[None, :])\n"),
}


def build(name: str):
    """fwd.py with the kernel's ``C Bᵀ`` line replaced as ``VARIANTS[name]`` says."""
    from gpu_ssd_ablate import load_edited

    return load_edited(fwd_mod, [(_CB, VARIANTS[name])], f"ssd_fwd_{name}")


def chunk_products(B, C, Q: int):
    """fp32 ``C Bᵀ`` per (chunk row, group) for equal-length rows (batch, L, G, N): row
    ``b · (L // Q + 1) + c`` as the kernel's ``start // Q + sequence + chunk`` (L a multiple of Q)."""
    import torch

    batch, L, G, N = B.shape
    nc = L // Q
    assert nc * Q == L, "equal rows of whole chunks only"
    Bc = B.float().view(batch, nc, Q, G, N).permute(0, 1, 3, 2, 4)
    Cc = C.float().view(batch, nc, Q, G, N).permute(0, 1, 3, 2, 4)
    cb = torch.zeros(batch, nc + 1, G, Q, Q, device=B.device)
    cb[:, :nc] = Cc @ Bc.transpose(-1, -2)
    return cb.reshape(-1)


def main() -> None:
    import torch
    from benchmarks.harness import time_graph
    from benchmarks.ops.bench_ssd import SHAPES, make_inputs
    from samkern.ops.ssd.chunk import ssd_chunk_scan

    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = os.environ.get("SSD_FWD_ABLATE_SHAPES", "130m-B32-L192,2.7b-B16-L192,2.7b-B8-L640").split(",")
    mods = {name: build(name) for name in VARIANTS}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    result = []
    for shape in shapes:
        kw = make_inputs(*SHAPES[shape], requires_grad=False)
        launches = []
        real = fwd_mod._FWD

        class _Record:
            def __getitem__(self, grid):
                def go(*a, **k):
                    launches.append((grid, a, k))
                    return real[grid](*a, **k)
                return go

        fwd_mod._FWD = _Record()
        try:
            with torch.no_grad():
                ssd_chunk_scan(**kw, chunk_size=256, backend="triton")
        finally:
            fwd_mod._FWD = real
        torch.cuda.synchronize()
        assert len(launches) == 1, f"{shape}: {len(launches)} forward launches (the sequence split?)"
        grid, args, kwargs = launches[0]
        if not kwargs.get("READ_DT"):
            print(f"{shape}: the forward does not read the dt cache here; cb_load skipped", flush=True)
        names = list(args)
        out_i, dtc_i = (fwd_mod._ssd_fwd_kernel.arg_names.index(n) for n in ("out_ptr", "dtc_ptr"))
        out = args[out_i]
        Q = kwargs["BLOCK_Q"]
        rec = {"shape": shape, "grid": list(grid), "block_q": Q}

        def launch(kernel, a):
            return lambda: kernel[grid](*a, **kwargs)

        base = launch(fwd_mod._ssd_fwd_kernel, names)
        base()
        ref = out.clone()
        rec["base_us"] = round(time_graph(base), 1)
        rec["no_cb_us"] = round(time_graph(launch(mods["no_cb"]._ssd_fwd_kernel, names)), 1)
        if kwargs.get("READ_DT"):
            dtc = args[dtc_i]
            cb = chunk_products(kw["B"], kw["C"], Q)
            big = torch.cat([dtc.reshape(-1), cb])
            a2 = list(names)
            a2[dtc_i] = big
            go = launch(mods["cb_load"]._ssd_fwd_kernel, a2)
            out.fill_(float("nan"))
            go()
            torch.cuda.synchronize()
            rec["cb_load_rel_err"] = float((out.float() - ref.float()).norm() / ref.float().norm())
            rec["cb_load_us"] = round(time_graph(go), 1)
        print(json.dumps(rec), flush=True)
        result.append(rec)
    with open(os.path.join(OUT, "ssd-fwd-ablate.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
