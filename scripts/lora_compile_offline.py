# SPDX-License-Identifier: Apache-2.0
"""Compile every LoRA GEMM kernel variant the tuner can launch (pointer / TMA / persistent TMA,
fused projection or not, both operand layouts, every shipped tile) for sm_90 on a machine without
a GPU, and report registers, spills and shared memory per variant: compile errors and shared-memory
overruns show up here instead of on the device (the CPU interpreter does not check the block
shapes a compiled kernel needs).

    python scripts/lora_compile_offline.py [--r 8] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ssd_regs_offline import compile_report  # noqa: E402

SMEM_LIMIT = 232448  # bytes of shared memory one H100 program may use


def capture(call, module=None, names=("_PTR", "_TMA", "_PTMA")) -> list:
    """(kernel, args, kwargs) of the launches ``call()`` makes through ``module``'s fast-launch
    wrappers ``names`` (default: the GEMM kernels of ``samkern.ops.lora.triton``), on CPU tensors."""
    import samkern.ops.lora.triton as lt

    lt = module or lt
    launches = []

    class _Capture:
        def __init__(self, fl):
            self.fn = fl.fn

        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((self.fn, a, kw))

    saved = {n: getattr(lt, n) for n in names}
    try:
        for n, fl in saved.items():
            setattr(lt, n, _Capture(fl))
        call()
    finally:
        for n, fl in saved.items():
            setattr(lt, n, fl)
    return launches


def report(row: dict, launch: tuple, fingerprint: bool = False, no_spills: bool = False) -> int:
    """Compile one captured (kernel, args, kwargs) launch for sm_90, print ``row`` with its
    registers, spills and shared memory (and PTX hash), and return 1 if it failed to compile,
    exceeds shared memory or (``no_spills``) spills, else 0."""
    fn, a, kw = launch
    try:
        row.update(compile_report(fn, a, kw))
        if fingerprint:
            from conv_ptx_fingerprint import fingerprint as ptx_hash

            row["ptx"] = ptx_hash(fn, a, kw)
        row["fits"] = row["smem_bytes"] <= SMEM_LIMIT and not (no_spills and row["spill_store_bytes"])
    except Exception as e:  # noqa: BLE001 - reported, counted
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
    print(json.dumps(row), flush=True)
    return 0 if row.get("fits") else 1


def main() -> None:
    import samkern.ops.lora.triton as lt

    ap = argparse.ArgumentParser()
    ap.add_argument("--r", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--quick", action="store_true", help="first tile of each kind only")
    ap.add_argument("--fingerprint", action="store_true",
                    help="also print each variant's normalised PTX hash (identical hashes = identical GPU code)")
    args = ap.parse_args()
    names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "GROUP_M")
    kinds = [("tma", dict(zip(names, c))) for c in lt.TMA_CANDIDATES]
    kinds += [("ptma", dict(zip(names, c), persistent=True)) for c in lt.PTMA_CANDIDATES]
    kinds += [("ptr", dict(zip(names, c))) for c in lt.PTR_CANDIDATES]
    if args.quick:
        kinds = [k for i, k in enumerate(kinds) if i == 0 or k[0] != kinds[i - 1][0]]
    M, K, N, dt = 1024, 1536, 768, torch.bfloat16
    bad = 0
    for r in args.r:
        x, W, A, B, dy = (torch.zeros(*s, dtype=dt) for s in ((M, K), (N, K), (r, K), (N, r), (M, N)))
        for kind, cfg in kinds:
            if kind == "ptma" and r > lt.PTMA_MAX_R:
                continue
            for layout, (a1, b1, p, b2) in {"fwd": (x, W.t(), A.t(), B.t()), "bwd": (dy, W, B, A)}.items():
                for fused in (True, False):
                    if fused:
                        call = lambda: lt.lora_proj_gemm(a1, b1, p, b2, 2.0, config=cfg, use_tma=kind != "ptr")  # noqa: E731
                    else:
                        u = torch.zeros(M, r, dtype=dt)
                        call = lambda: lt.lora_gemm(a1, b1, u, b2, config=cfg, use_tma=kind != "ptr")  # noqa: E731
                    for launch in capture(call):
                        row = dict(kind=kind, layout=layout, fused=fused, r=r,
                                   tile=[cfg[k] for k in names[:5]])
                        bad += report(row, launch, fingerprint=args.fingerprint)
    bad += gluon_variants(args.quick)
    bad += rank_pass_variants()
    print(f"{bad} variant(s) failed to compile or exceed shared memory")
    sys.exit(1 if bad else 0)


def gluon_variants(quick: bool) -> int:
    """The warp-specialised Gluon kernels (samkern/ops/lora/gluon.py, gluon_coop.py), every candidate (the first
    with ``quick``) in both layouts at r = 8 (rank epilogue; with and without the projection tiles,
    ``FUSE_PROJ``) and 64 (rank through the ring); returns the failures."""
    from samkern.ops.lora import gluon as lg
    from samkern.ops.lora import gluon_coop as gc

    launches = []

    class _Capture:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((kernel, a, kw))

    M, K, N, dt = 1024, 1536, 768, torch.bfloat16
    bad = 0
    for r in (8, 64):
        x, W, A, B, dy = (torch.zeros(*s, dtype=dt) for s in ((M, K), (N, K), (r, K), (N, r), (M, N)))
        u = torch.zeros(M, r, dtype=dt)
        cands = lg.candidates(r)
        # (quick: the first 128 x 128 ping-pong tile and every 192 x 192 cooperative one: their ring
        # and C staging differ per tile, shared memory is within 3 KB of the limit)
        picked = cands[:1] + [c for c in cands if c in gc.COOP_CANDIDATES] if quick else cands
        for cfg, (layout, (a1, b1, b2, out, kmajor)) in ((c, lay) for c in picked
                                                         for lay in {"fwd": (x, W.t(), B.t(), dy.clone(), True),
                                                                     "bwd": (dy, W, A, x.clone(), False)}.items()):
            coop = cfg in gc.COOP_CANDIDATES  # (192 x 192: gluon_coop.py's kernel)
            kernel = gc._coop_kernel if coop else lg._ws_lora_gemm_kernel
            for fused in ((False, True) if r <= lg.R_EPILOGUE_MAX else (False,)):
                launches.clear()
                proj = (A.t() if kmajor else B) if fused else None
                lg.launch_gluon(a1, b1, u, b2, kmajor, out, cfg, launcher=_Capture(), proj=proj, scale=2.0)
                # a spill in a warp-specialised partition would serialise it behind local memory
                bad += report(dict(kind="gluon", layout=layout, fused=fused, r=r, tile=list(cfg)), launches[0],
                              no_spills=True)
    return bad


def rank_pass_variants() -> int:
    """The rank pass (samkern/ops/lora/rank_pass.py) with and without U, a row length that keeps
    16-byte groups whole (wrapped columns) and one that does not (masked), and its summing
    kernel; returns the failures."""
    from samkern.ops.lora import rank_pass as rp

    bad = 0
    dt = torch.bfloat16
    for M, N, r, with_u in ((1024, 3352, 8, True), (1024, 768, 16, True), (1024, 3352, 8, False), (1000, 3350, 1, True)):
        a = torch.zeros(M, N, dtype=dt)
        p, u = torch.zeros(N, r, dtype=dt), (torch.zeros(M, r, dtype=dt) if with_u else None)
        for launch in capture(lambda: rp.lora_rank_pass(a, p, 2.0, u), rp, ("_PASS", "_SUM")):
            bad += report(dict(kind="rank_pass", N=N, r=r, u=with_u), launch, no_spills=True)
    return bad


if __name__ == "__main__":
    main()
