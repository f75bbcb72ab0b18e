# SPDX-License-Identifier: Apache-2.0
"""Where the SSD fwd+bwd time goes, samkern vs mamba-ssm (one device run, development aid).

For each shape: per-kernel CUDA time of one fwd+bwd (torch.profiler, averaged over a few
iterations) for samkern and mamba-ssm, then a sweep of samkern's backward launch settings
(num_warps, num_stages, heads per chunk program), with the registers and spills
of the compiled backward kernel. Prints a table; writes ``$OUT/ssd-profile.json``.

Run (device): ``source .gpu-kit/peers.sh; PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_ssd_profile.py``.
Environment: ``SSD_PROFILE_SHAPES`` (comma list of ``bench_ssd.SHAPES`` names), ``SSD_PROFILE_SWEEP``
(JSON list of ``BWD_TUNING`` overrides; keys ``fwd_<name>`` set ``FWD_TUNING[name]`` instead), ``SSD_PROFILE_PEER=0`` (skip mamba-ssm: its autotune takes
minutes per new shape), ``SSD_PROFILE_FWD=1`` (also the forward alone, no gradients: the inference
path, which takes the sequence split for long rows), ``SSD_PROFILE_Z=1`` (with the gate z, which the
harness does not time: the gated kernels compile differently).
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402
from benchmarks.ops.bench_ssd import SHAPES, fwd_fn, fwdbwd_fn, make_inputs  # noqa: E402
import samkern.ops.ssd.bwd as bwd_mod  # noqa: E402
import samkern.ops.ssd.fwd as fwd_mod  # noqa: E402
from samkern.ops.ssd.chunk import ssd_chunk_scan  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
WANT = os.environ.get("SSD_PROFILE_SHAPES", "130m-B32-L192,2.7b-B16-L192").split(",")
RESULT: dict = {}
# launch settings to sweep (JSON list of dicts of BWD_TUNING keys, plus "block_q" = the training chunk)
PEER = os.environ.get("SSD_PROFILE_PEER", "1") != "0"
FWD = os.environ.get("SSD_PROFILE_FWD", "0") == "1"
GATED = os.environ.get("SSD_PROFILE_Z", "0") == "1"
SWEEP = json.loads(os.environ.get("SSD_PROFILE_SWEEP", json.dumps(
    [{"num_warps": w, "num_stages": s} for w in (4, 8) for s in (1, 2)])))


def profiled_calls(fn, iters: int):
    """The torch.profiler record (CUDA activity) of ``iters`` calls of ``fn`` after one warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return prof


def kernel_times(fn, iters: int = 5, counts: Optional[dict] = None) -> dict:
    """CUDA time per call of each kernel name (us), from torch.profiler; ``counts``, if given,
    receives the launches per call of each name."""
    prof = profiled_calls(fn, iters)
    acc: dict = defaultdict(float)
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if t:
            acc[ev.key[:70]] += t / iters
            if counts is not None:
                counts[ev.key[:70]] = counts.get(ev.key[:70], 0) + ev.count // iters
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


def kernel_meta(fn) -> list:
    """Registers / spills / warps / stages / shared memory of every compiled variant of one
    ``@triton.jit`` kernel so far (variants are not labelled)."""
    out = []
    for cache in fn.device_caches.values():
        for ck in cache[0].values():
            try:
                ck._init_handles()
                out.append({"kernel": fn.__name__, "regs": ck.n_regs, "spills": ck.n_spills,
                            "warps": ck.metadata.num_warps, "stages": ck.metadata.num_stages,
                            "smem": ck.metadata.shared})
            except Exception as e:  # noqa: BLE001
                out.append({"kernel": fn.__name__, "error": repr(e)})
    return out


def bwd_kernel_meta() -> list:
    """:func:`kernel_meta` of the three backward kernels (cumulative over the shapes and sweep
    settings of the run)."""
    return [m for fn in (bwd_mod._ssd_bwd_dstate_kernel, bwd_mod._ssd_bwd_chunk_kernel,
                         bwd_mod._ssd_bwd_dbdc_kernel) for m in kernel_meta(fn)]


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for name, shp in SHAPES.items():
        if name not in WANT:
            continue
        kw = make_inputs(*shp, requires_grad=True)
        if GATED:
            kw["z"] = torch.randn_like(kw["x"]).requires_grad_(True)
        res: dict = {}
        ours = lambda **k: ssd_chunk_scan(**k, backend="triton")  # noqa: E731
        f_ours = fwdbwd_fn(ours, kw)
        res["kernels_samkern"] = kernel_times(f_ours)
        whos = ["samkern"]
        if FWD:
            f_fwd = fwd_fn(ours, kw)
            res["kernels_samkern-fwd"] = kernel_times(f_fwd)
            res["fwd_graph_us"] = round(time_graph(f_fwd), 1)
            print(f"\n== {name} samkern fwd alone, graph: {res['fwd_graph_us']} us", flush=True)
            whos.append("samkern-fwd")
        if PEER:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            res["kernels_mamba"] = kernel_times(fwdbwd_fn(mamba_chunk_scan_combined, kw))
            whos.append("mamba")
        for who in whos:
            ks = res[f"kernels_{who}"]
            print(f"\n== {name} {who}: total {sum(ks.values()):.0f} us over {len(ks)} kernels", flush=True)
            for k, v in list(ks.items())[:14]:
                print(f"  {v:8.1f}  {k}")
        sweep = []
        for cfg in SWEEP:
            cfg = dict(cfg)
            bq = cfg.pop("block_q", None)
            old_bq = fwd_mod.TRAIN_BLOCK_Q
            fcfg = {k[4:]: cfg.pop(k) for k in list(cfg) if k.startswith("fwd_")}
            bwd_mod.BWD_TUNING.update(cfg)
            fwd_mod.FWD_TUNING.update(fcfg)
            if bq:
                fwd_mod.TRAIN_BLOCK_Q = bq
            try:
                t = time_graph(f_ours)
                ks = kernel_times(f_ours, iters=3)
                kb = {k[:24]: round(v, 1) for k, v in ks.items() if "ssd" in k}
                row = {**cfg, **{"fwd_" + k: v for k, v in fcfg.items()}, "block_q": bq,
                       "fwdbwd_graph_us": round(t, 1), "kernels_us": kb}
            except Exception as e:  # noqa: BLE001
                row = {**cfg, **{"fwd_" + k: v for k, v in fcfg.items()}, "block_q": bq, "error": repr(e)[:200]}
            finally:
                fwd_mod.TRAIN_BLOCK_Q = old_bq
                for k in cfg:
                    bwd_mod.BWD_TUNING[k] = None
                for k in fcfg:
                    fwd_mod.FWD_TUNING[k] = None
            print("  sweep", row, flush=True)
            sweep.append(row)
        res["sweep"] = sweep
        res["bwd_kernel_meta"] = bwd_kernel_meta()
        print("  compiled bwd kernels:", res["bwd_kernel_meta"], flush=True)
        RESULT[name] = res
        os.makedirs(OUT, exist_ok=True)  # (a missing $OUT sub-folder cost s14-call5 its other shapes)
        with open(os.path.join(OUT, "ssd-profile.json"), "w") as f:
            json.dump(RESULT, f, indent=1)


if __name__ == "__main__":
    main()
