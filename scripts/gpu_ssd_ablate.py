# SPDX-License-Identifier: Apache-2.0
"""Where the SSD backward's chunk kernel spends its time: an ablation (development aid, #3).

The chunk kernel (``samkern/ops/ssd/bwd.py::_ssd_bwd_chunk_kernel``) is more than half of every
training step and latency-bound (README of the op, "Where the time goes now"). This script builds
variants of it with parts of the per-head work removed or replaced by source edits, runs the real
fwd+bwd with each variant swapped in, and reports the chunk kernel's CUDA time, its registers and
spills. The variants compute WRONG gradients on purpose; they only price each part:

* ``base``: the shipped kernel (its time is the reference);
* ``no_tiles``: the B dSᵀ state-tile load (from the dS walk) replaced by zeros (until session 35
  also the C S_inᵀ tile, which no-gate calls no longer load);
* ``no_dx_dot``: the transposed set (exp of Lᵀ, Mᵀ, the Mᵀ dy dot) removed;
* ``no_direct``: the direct set (exp of L, the dy xᵀ dot, the [Q, Q] reductions, Σ dCB) removed;
* ``no_dcb``: only the Σ dCB accumulation removed.

Session 12's run (``dev-runs/s12-call1-*``, at 1075063) priced the kernel as it was then, when it
streamed both states per head: ``no_state`` (that loop removed) and ``state_tiles`` (the loop
replaced by two [Q, P] tile loads) took it from 240 to 124 us at 130m B32 L192, which led to the
state terms moving into the dS walk; those two variants are gone with the loop.

Each variant is also run at a few heads-per-program settings and with a 128-register cap
(``maxnreg``: two programs per SM instead of one, at the price of spills).
Run (device): ``PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_ssd_ablate.py``;
``--offline`` compiles every variant for sm_90 here (registers and spills only, no GPU).
Environment: ``SSD_ABLATE_SHAPES`` (``bench_ssd.SHAPES`` names), ``SSD_ABLATE_HB`` (JSON list of
``heads_per_program`` values, null = the heuristic), ``SSD_ABLATE_MAXNREG`` (JSON list of register
caps, null = none). Writes ``$OUT/ssd-ablate.json``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import samkern.ops.ssd.bwd as bwd_mod  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")

# (the per-head body lives in ``_chunk_head``, called by the kernel's head loop)
# (since session 35 the harness's no-gate calls load the walk's [Q] row sums instead of the C S_inᵀ
# tile, ``bwd.cs_vector``: only the B dSᵀ tile is left to remove there)
_TILES = "    BdS = tl.load(bds_ptr + tile, mask=mqp & need_ds, other=0.0).to(tl.float32)\n"
_NO_TILES = "    BdS = tl.zeros(tile.shape, dtype=tl.float32)\n"  # ([Q, P]: the helper has no block constexprs)
# the transposed set's dot, in both forms (plain, and the factored decay of ``factor_range``)
_DX = "        dx = tl.dot(MT.to(in_ty), dy_lp, input_precision=PREC) + w[:, None] * BdS"
_DX_FACTORED = ("        dx = (tl.exp(c_mid - a) * dtv)[:, None] * tl.dot(CBT, udy, input_precision=PREC)"
                " + w[:, None] * BdS")
_DM = "    dM = tl.dot(dy_lp, tl.trans(x), input_precision=PREC)  # [t, s]"
_DCB = "    dCB_sum += dML * dtv[None, :]"

# variant -> list of (old, new) edits inside the chunk kernel's source (``_chunk_head`` and the
# kernel; session 33 found these targets stale after the per-head body moved into the helper:
# rewritten in session 34, checked by building every variant offline)
VARIANTS = {
    "base": [],
    "no_tiles": [(_TILES, _NO_TILES)],
    "no_dx_dot": [(_DX, "        dx = w[:, None] * BdS"), (_DX_FACTORED, "        dx = w[:, None] * BdS")],
    "no_direct": [(_DM, "    dM = tl.zeros(CB.shape, dtype=tl.float32)"), (_DCB, "")],
    "no_dcb": [(_DCB, "")],
}


# register caps to try: 128 at 8 warps lets two programs share an SM (the kernel runs one today)
MAXNREG = json.loads(os.environ.get("SSD_ABLATE_MAXNREG", "[null, 128]"))


class _Capped:
    """``kernel[grid](...)`` with a ``maxnreg`` launch option added (Triton's own launch path)."""

    def __init__(self, fn, cap):
        self.fn, self.cap = fn, cap

    def __getitem__(self, grid):
        return lambda *a, **kw: self.fn[grid](*a, **kw, maxnreg=self.cap)


def load_edited(module, edits, name: str, region: tuple = ("", "")):
    """``module``'s source with each ``(old, new)`` of ``edits`` applied (each ``old`` must occur
    once, within ``region``: the text from its start marker up to its stop marker, the whole file
    for empty markers), loaded as a new module from a file (Triton reads kernel sources with
    ``inspect``). Shared by this script and ``gpu_ssd_fwd_ablate.py``."""
    src = open(module.__file__).read()
    start = src.index(region[0]) if region[0] else 0
    stop = src.index(region[1]) if region[1] else len(src)
    body = src[start:stop]
    for old, new in edits:
        if body.count(old) != 1:
            raise RuntimeError(f"variant {name}: edit target not found once: {old.strip()[:60]!r}")
        body = body.replace(old, new)
    path = os.path.join(tempfile.mkdtemp(prefix=f"{name}_"), f"{name}.py")
    with open(path, "w") as f:
        f.write(src[:start] + body + src[stop:])
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(name: str):
    """The bwd module with the chunk kernel edited as ``VARIANTS[name]`` says."""
    return load_edited(bwd_mod, VARIANTS[name], f"ssd_abl_{name}",
                       ("def _chunk_head(", "_CHUNK = fast_launch(_ssd_bwd_chunk_kernel)"))


def offline() -> None:
    """Registers / spills of every variant at the 130m shape, compiled for sm_90 without a GPU
    (``ssd_regs_offline``'s capture of one training step's launches, no z as in the benchmark)."""
    import ssd_regs_offline as regs  # noqa: PLC0415

    saved = bwd_mod._CHUNK
    for name in VARIANTS:
        bwd_mod._CHUNK = build(name)._CHUNK
        try:
            for fn, _grid, a, kw in regs.capture_launches("130m-B32-L192", {}, with_z=False):
                if fn.__name__ == "_ssd_bwd_chunk_kernel":
                    for cap in MAXNREG:
                        print(name, cap, regs.compile_report(fn, a, {**kw, **({"maxnreg": cap} if cap else {})}),
                              flush=True)
        finally:
            bwd_mod._CHUNK = saved


def main() -> None:
    import torch
    from benchmarks.harness import time_graph
    from benchmarks.ops.bench_ssd import SHAPES, fwdbwd_fn, make_inputs
    from gpu_ssd_profile import kernel_meta, kernel_times
    from samkern.backend import num_sms
    from samkern.ops.ssd.chunk import ssd_chunk_scan

    shapes = os.environ.get("SSD_ABLATE_SHAPES", "130m-B32-L192,2.7b-B16-L192").split(",")
    # heads per program: null = the heuristic (one program per SM); "x2" = the heuristic as if the
    # GPU had twice the SMs (what two programs per SM under a register cap would want)
    hbs = json.loads(os.environ.get("SSD_ABLATE_HB", '[null, "x2"]'))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    mods = {name: build(name) for name in VARIANTS}
    saved = bwd_mod._CHUNK
    result: dict = {}
    for shape in shapes:
        kw = make_inputs(*SHAPES[shape], requires_grad=True)
        f = fwdbwd_fn(lambda **k: ssd_chunk_scan(**k, backend="triton"), kw)
        for name, mod in mods.items():
            for cap, hb in [(c, h) for c in MAXNREG for h in hbs if c or h is None]:
                bwd_mod._CHUNK = _Capped(mod._ssd_bwd_chunk_kernel, cap) if cap else mod._CHUNK
                if hb == "x2":
                    bwd_mod.num_sms = lambda dev: 2 * num_sms(dev)
                else:
                    bwd_mod.BWD_TUNING["heads_per_program"] = hb
                try:
                    total = time_graph(f)
                    ks = kernel_times(f, iters=3)
                    chunk = sum(v for k, v in ks.items() if "bwd_chunk" in k)
                    row = {"fwdbwd_graph_us": round(total, 1), "chunk_us": round(chunk, 1)}
                except Exception as e:  # noqa: BLE001
                    row = {"error": repr(e)[:300]}
                finally:
                    bwd_mod._CHUNK = saved
                    bwd_mod.num_sms = num_sms
                    bwd_mod.BWD_TUNING["heads_per_program"] = None
                result.setdefault(shape, {})[f"{name}/maxnreg={cap}/hb={hb}"] = row
                print(shape, name, "maxnreg", cap, "hb", hb, row, flush=True)
    for name, mod in mods.items():
        result.setdefault("meta", {})[name] = kernel_meta(mod._ssd_bwd_chunk_kernel)
        print("meta", name, result["meta"][name], flush=True)
    with open(os.path.join(OUT, "ssd-ablate.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    offline() if "--offline" in sys.argv else main()
