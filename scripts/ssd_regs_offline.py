# SPDX-License-Identifier: Apache-2.0
"""Registers and spills of the SSD kernels, compiled for Hopper on a machine WITHOUT a GPU.

The spills of the backward's chunk kernel are what keeps it far from its floors, and device time
is scarce; Triton compiles for any target without a driver, and ptxas reports registers and
spill bytes. This script runs the host code of ``ssd_fwd`` / ``ssd_bwd`` on CPU tensors with the
kernel launches captured (not run), compiles every captured launch for sm_90 with the same
arguments (specialisation: pointers and multiples of 16 marked 16-divisible, ints equal to 1 as
constants, as Triton's launcher does), and prints what ``ptxas -v`` says.

    python scripts/ssd_regs_offline.py [--shape 130m-B32-L192] [--tuning '{"split_chunk": true}']

Needs ``ptxas`` (CUDA 12.x/13.x) on PATH or Triton's bundled one; no GPU, no TRITON_INTERPRET.
Registers are per thread (255 is the cap); "spill" is bytes stored / loaded per thread. Treat the
numbers as the compiler's view: the device's ``CompiledKernel.n_regs`` / ``n_spills`` (printed by
``scripts/gpu_ssd_profile.py``) should agree for the same Triton and ptxas versions.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

def _signature(fn, args, kwargs):
    """Triton signature, constexprs and divisibility attributes of one launch, from Triton's own
    specialisation routine (what its launcher does: pointer / int types, 16-divisibility, ints
    equal to 1 as constants, tensor descriptors with their block shapes)."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    bound = dict(zip(fn.arg_names, args))
    bound.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = bound[p.name]
        if p.is_constexpr:
            sig[p.name], constexprs[p.name] = "constexpr", v
            continue
        ty, key = native_specialize_impl(CUDABackend, v, False, True, True)
        sig[p.name] = ty
        if ty == "constexpr":
            constexprs[p.name] = key
        elif key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, constexprs, attrs


def compile_launch(fn, args, kwargs, arch: int = 90):
    """Triton's CompiledKernel of one captured launch, for sm_<arch>, as its launcher would build it."""
    sig, constexprs, attrs = _signature(fn, args, kwargs)
    opts = {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
    source = ASTSource
    if type(fn).__name__ == "GluonJITFunction":  # a Gluon kernel (samkern/ops/lora/gluon.py)
        from triton.experimental.gluon._runtime import GluonASTSource as source
    return triton.compile(source(fn, sig, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=opts)


def loop_plain_tile_loads(ttgir: str) -> list:
    """The value names (``%BdS_330`` -> ``BdS``) of the 2-D ``tt.load``s inside ``scf.for`` bodies of
    a kernel's TTGIR: tiles the software pipeliner left as plain loads, which each iteration waits
    for (Triton 3.6 prefetches only loads that reach a dot's A / B operand: the op README, "The
    state tiles as dot operands"). Regions are followed by their braces."""
    names, stack = [], []
    for line in ttgir.splitlines():
        t = line.strip()
        if t.startswith("}"):
            if stack:
                stack.pop()
            if t.endswith("{"):  # "} else {"
                stack.append("if")
            continue
        if "tt.load" in t and "for" in stack and re.search(r"tensor<\d+x\d+x!tt\.ptr", t):
            names.append(re.sub(r"_\d+$", "", t.split("=")[0].strip().lstrip("%")))
        if t.endswith("{"):
            stack.append("for" if "scf.for" in t else "other")
    return names


def compile_report(fn, args, kwargs, arch: int = 90, ptx_dir: str = "") -> dict:
    """Compile one captured launch for sm_<arch> and return ptxas's registers / spill bytes; with
    ``ptx_dir``, also write its PTX there (``<kernel>-<n>.ptx``, for instruction-level diffs)."""
    ck = compile_launch(fn, args, kwargs, arch)
    ptxas = shutil.which("ptxas") or os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if ptx_dir:
        os.makedirs(ptx_dir, exist_ok=True)
        n = sum(1 for f in os.listdir(ptx_dir) if f.startswith(fn.__name__ + "-"))
        with open(os.path.join(ptx_dir, f"{fn.__name__}-{n}.ptx"), "w") as f:
            f.write(ck.asm["ptx"])
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ck.asm["ptx"])
    res = subprocess.run([ptxas, "-v", f"-arch=sm_{arch}a", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    txt = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", txt)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", txt)
    return {"kernel": fn.__name__, "warps": kwargs.get("num_warps"), "stages": kwargs.get("num_stages"),
            "regs": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(spill.group(1)) if spill else None,
            "spill_load_bytes": int(spill.group(2)) if spill else None, "smem_bytes": ck.metadata.shared,
            "loop_plain_tile_loads": loop_plain_tile_loads(ck.asm["ttgir"])}


def capture_launches(shape: str, tuning: dict, n_sms: int = 132, fwd_tuning: Optional[dict] = None,
                     with_z: bool = False, dtype: torch.dtype = torch.bfloat16) -> list:
    """(kernel, grid, args, kwargs) of every SSD launch of one training step at a benchmark shape
    (per-head D, dt_bias, softplus; no z, as the benchmark: SAM's block gates in its RMSNorm;
    ``with_z`` compiles the gated specialisation instead; x / z / B / C in ``dtype``, bf16 as the
    benchmark), from the host code on CPU tensors."""
    from benchmarks.ops.bench_ssd import G, N, P, SHAPES
    import samkern.ops.ssd.bwd as bwd_mod
    import samkern.ops.ssd.fwd as fwd_mod

    launches = []

    class _Capture:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((self.fn, grid, a, kw))

    from samkern.launch import FastLaunch

    patched = []
    for mod in (fwd_mod, bwd_mod):
        for name in dir(mod):
            obj = getattr(mod, name)
            # the launch sites call the kernels through their samkern.launch wrappers
            if isinstance(obj, FastLaunch) and obj.fn.__name__.startswith("_ssd_"):
                patched.append((mod, name, obj))
                setattr(mod, name, _Capture(obj.fn))
    old_sms, old_pick, old_tuning = bwd_mod.num_sms, bwd_mod._pick_heads_per_program, dict(bwd_mod.BWD_TUNING)
    old_bal = bwd_mod._balanced_grid
    old_fwd_tuning = dict(fwd_mod.FWD_TUNING)

    class _Cuda:  # the launch heuristics branch on the device type
        type = "cuda"

    try:
        bwd_mod.num_sms = lambda dev: n_sms
        bwd_mod._pick_heads_per_program = lambda hpg, other, dev: old_pick(hpg, other, _Cuda())
        bwd_mod._balanced_grid = lambda W, hpg, npb, dev: old_bal(W, hpg, npb, _Cuda())  # NP = n_sms // npb
        bwd_mod.BWD_TUNING.update(tuning)
        fwd_mod.FWD_TUNING.update(fwd_tuning or {})
        batch, L, H = SHAPES[shape]
        T = batch * L
        x = torch.zeros(T, H, P, dtype=dtype)
        z = torch.zeros_like(x) if with_z else None
        Bm, Cm = torch.zeros(T, G, N, dtype=dtype), torch.zeros(T, G, N, dtype=dtype)
        dt, A, D, dtb = torch.zeros(T, H), -torch.ones(H), torch.ones(H), torch.zeros(H)
        cu = torch.arange(batch + 1, dtype=torch.int32) * L
        bq = fwd_mod.TRAIN_BLOCK_Q
        # as SSDChunkScanFunction: the split backward reads the forward's stored pre-gate output
        y_kw = {}
        if bwd_mod.BWD_TUNING.get("split_chunk"):  # (the keyword exists where the split form does)
            y_kw = {"y_out": torch.zeros_like(x)}
        fwd_mod.ssd_fwd(x, dt, A, Bm, Cm, cu, None, D=D, z=z, dt_bias=dtb, dt_softplus=True,
                        want_chunk_states=True, block_q=bq, skip_unread_rows=True, **y_kw)
        cs = torch.zeros(T // bq + batch, H, P, N, dtype=fwd_mod.chunk_state_dtype(dtype))
        bwd_mod.ssd_bwd(torch.zeros_like(x), x, dt, A, Bm, Cm, cu, None, cs, bq, D=D, z=z, dt_bias=dtb,
                        dt_softplus=True, validate=False, seq_len=L,  # a plain batch, as ssd_chunk_scan's
                        **({"y_pre": y_kw["y_out"]} if y_kw else {}))
    finally:
        for mod, name, obj in patched:
            setattr(mod, name, obj)
        bwd_mod.num_sms, bwd_mod._pick_heads_per_program, bwd_mod._balanced_grid = old_sms, old_pick, old_bal
        bwd_mod.BWD_TUNING.clear()
        bwd_mod.BWD_TUNING.update(old_tuning)
        fwd_mod.FWD_TUNING.clear()
        fwd_mod.FWD_TUNING.update(old_fwd_tuning)
    return launches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="130m-B32-L192")
    ap.add_argument("--tuning", default="{}", help="JSON dict of BWD_TUNING overrides")
    ap.add_argument("--fwd-tuning", default="{}", help="JSON dict of FWD_TUNING overrides")
    ap.add_argument("--kernels", default="", help="comma-separated kernel names to compile (default: all)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--ptx-dir", default="", help="also write each compiled kernel's PTX into this folder")
    ap.add_argument("--with-z", action="store_true",
                    help="the gated (z) specialisation; default: no z, as the benchmark and the GPU profile "
                         "(before session 15 the default was z: its numbers differ, e.g. chunk-kernel spills)")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                    help="x / z / B / C dtype (default: bf16, as the benchmark)")
    args = ap.parse_args()
    tuning, fwd_tuning = json.loads(args.tuning), json.loads(args.fwd_tuning)
    want = {k for k in args.kernels.split(",") if k}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    for fn, grid, a, kw in capture_launches(args.shape, tuning, fwd_tuning=fwd_tuning, with_z=args.with_z,
                                            dtype=dtype):
        if want and fn.__name__ not in want:
            continue
        r = compile_report(fn, a, kw, args.arch, args.ptx_dir)
        print(json.dumps({"shape": args.shape, "dtype": args.dtype, "tuning": tuning, "fwd_tuning": fwd_tuning,
                          "grid": list(grid), **r}), flush=True)


if __name__ == "__main__":
    main()
