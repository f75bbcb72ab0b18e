# SPDX-License-Identifier: Apache-2.0
"""The conv1d backward's tile, and the block's split -> conv -> split node, A/B in one process.

1. Tile sweep: ``causal_conv1d_bwd_triton`` alone (CUDA-graph replay, bf16, SiLU, bias) for each
   (BWD_BLOCK_L, BWD_BLOCK_D, num_warps) candidate at the conv shapes of the block benchmarks;
   every candidate's dx / dweight / dbias checked against an fp64 reference (relative error) and
   against the shipped tile. Beside them: the causal-conv1d package (peer) fwd+bwd and fwd alone.
2. Block A/B: ``Mamba2Block`` fwd+bwd under CUDA graphs with ``conv_split`` (one node) against
   the previous composition (torch.split + causal_conv1d + torch.split), alternating rounds, and
   mamba-ssm's Mamba2 on the same weights; the fastest correct tile of step 1 installed.

3. Pipelining A/B (``PIPE=1``, nothing else runs): the software-pipelining depth of the conv dw
   kernel's row loop (``DW_NUM_STAGES``) and of the gated RMSNorm backward's row loop
   (``gated_rmsnorm.triton.BWD_STAGES``), each setting timed alternately against the others in
   one process with its errors against fp64; then ``Mamba2Block`` fwd+bwd with the shipped depths
   against both at 1 (not pipelined), alternating rounds (graph; eager p50 at L16384).

    python3 scripts/gpu_conv_bwd_sweep.py     # on the GPU machine (peers kit sourced)
    SWEEP_TILES="64,64,4;64,32,4" SKIP_AB=1 python3 scripts/gpu_conv_bwd_sweep.py
    PIPE=1 python3 scripts/gpu_conv_bwd_sweep.py
Prints one JSON line per measurement (prefix ``JSON``) and a summary.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import time_graph  # noqa: E402

CONV_SHAPES = {  # name: (batch, L, conv_dim)
    "130m-B32-L192": (32, 192, 1792),
    "2.7b-B16-L192": (16, 192, 5376),
    "2.7b-B8-L640": (8, 640, 5376),
    "2.7b-B1-L16384": (1, 16384, 5376),
}
TILES = [(64, 64, 4), (64, 32, 4), (32, 128, 4), (32, 64, 4), (32, 32, 4)]
REDUCE = [(64, 16), (32, 32)]  # (REDUCE_BLOCK_P, REDUCE_BLOCK_D)
# the separate dw/db kernel (convs of <= 4 taps): (DW_BLOCK_L, DW_BLOCK_D, DW_NUM_WARPS, DW_ROWS)
DW = [(32, 64, 4, 256), (16, 64, 4, 256), (32, 64, 8, 256), (32, 32, 4, 256), (16, 64, 4, 128), (16, 64, 4, 512)]


def emit(**row) -> None:
    print("JSON " + json.dumps(row), flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _conv_case(batch: int, L: int, dim: int):
    """bf16 (x (B, D, L) channel-last, w, b, g) of a conv at a block shape and the fp64 reference
    gradients (dx, dw, db) of SiLU(conv) against g."""
    from samkern.ops.conv1d.ref import causal_conv1d_ref

    torch.manual_seed(0)
    x = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    w = (torch.randn(dim, 4, device="cuda") * 0.5).to(torch.bfloat16)
    b = torch.randn(dim, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    leaves = [t.double().requires_grad_(True) for t in (x, w, b)]
    ref = torch.autograd.grad(causal_conv1d_ref(*leaves, activation="silu"), leaves, g.double())
    return x, w, b, g, ref


def sweep() -> dict:
    import samkern.ops.conv1d.triton as ct

    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        causal_conv1d_fn = None
    best = {}
    for shape, (batch, L, dim) in CONV_SHAPES.items():
        x, w, b, g, ref = _conv_case(batch, L, dim)
        shipped = None
        results = []
        tiles = [tuple(int(v) for v in t.split(",")) for t in os.environ["SWEEP_TILES"].split(";")] \
            if os.environ.get("SWEEP_TILES") else TILES
        for bl, bd, warps in tiles:
            ct.BWD_BLOCK_L, ct.BWD_BLOCK_D, ct.BWD_NUM_WARPS = bl, bd, warps
            try:
                got = ct.causal_conv1d_bwd_triton(g, x, w, b, None, True)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - a tile that does not compile is reported, not fatal
                emit(kind="tile", shape=shape, tile=[bl, bd, warps], error=repr(e)[:200])
                continue
            errs = [rel(a, r) for a, r in zip(got, ref)]
            if shipped is None:
                shipped = [t.clone() for t in got]
            vs_shipped = [rel(a, s) for a, s in zip(got, shipped)]
            us = time_graph(lambda: ct.causal_conv1d_bwd_triton(g, x, w, b, None, True))
            dys = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in torch.split(g, [dim - 256, 128, 128], 1)]
            us_split = time_graph(lambda: ct.causal_conv1d_bwd_triton(dys, x, w, b, None, True))
            us_nodw = time_graph(lambda: ct.causal_conv1d_bwd_triton(g, x, w, b, None, True, need_dw=False))
            ok = max(errs) < 1e-2 and max(vs_shipped) < 1e-2
            emit(kind="tile", shape=shape, tile=[bl, bd, warps], bwd_us=us, bwd_split_dy_us=us_split,
                 bwd_no_dw_us=us_nodw, rel_err_dx_dw_db=errs, rel_vs_shipped=vs_shipped, ok=ok)
            if ok:
                results.append((us, (bl, bd, warps)))
        if causal_conv1d_fn is not None:
            xs = x.detach().requires_grad_(True)
            ws, bs = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
            fwd = time_graph(lambda: causal_conv1d_fn(xs, ws, bs, activation="silu"))
            fb = time_graph(lambda: torch.autograd.grad(causal_conv1d_fn(xs, ws, bs, activation="silu"), (xs, ws, bs), g))
            emit(kind="peer", shape=shape, fwd_us=fwd, fwdbwd_us=fb, bwd_est_us=fb - fwd)
        results.sort()
        best[shape] = results[0][1] if results else TILES[0]
        emit(kind="best", shape=shape, tile=best[shape], us=results[0][0] if results else None)
        ct.BWD_BLOCK_L, ct.BWD_BLOCK_D, ct.BWD_NUM_WARPS = best[shape]
        # the dw kernel's tiling, with this shape's best dx tile
        dws = []
        for cand in DW:
            ct.DW_BLOCK_L, ct.DW_BLOCK_D, ct.DW_NUM_WARPS, ct.DW_ROWS = cand
            got = ct.causal_conv1d_bwd_triton(g, x, w, b, None, True)
            errs = [rel(a, r) for a, r in zip(got, ref)]
            us = time_graph(lambda: ct.causal_conv1d_bwd_triton(g, x, w, b, None, True))
            emit(kind="dw", shape=shape, dw=list(cand), bwd_us=us, rel_err_dx_dw_db=errs)
            if max(errs) < 1e-2:
                dws.append((us, cand))
        best[shape + "/dw"] = min(dws)[1] if dws else DW[0]
        ct.DW_BLOCK_L, ct.DW_BLOCK_D, ct.DW_NUM_WARPS, ct.DW_ROWS = best[shape + "/dw"]
        # the dw/db reduction's blocking, with this shape's best tiles
        red = []
        for rp, rd in REDUCE:
            ct.REDUCE_BLOCK_P, ct.REDUCE_BLOCK_D = rp, rd
            got = ct.causal_conv1d_bwd_triton(g, x, w, b, None, True)
            errs = [rel(a, r) for a, r in zip(got[1:], ref[1:])]
            us = time_graph(lambda: ct.causal_conv1d_bwd_triton(g, x, w, b, None, True))
            emit(kind="reduce", shape=shape, tile=best[shape], reduce=[rp, rd], bwd_us=us, rel_err_dw_db=errs)
            if max(errs) < 1e-2:
                red.append((us, (rp, rd)))
        ct.REDUCE_BLOCK_P, ct.REDUCE_BLOCK_D = REDUCE[0]
        ct.DW_BLOCK_L, ct.DW_BLOCK_D, ct.DW_NUM_WARPS, ct.DW_ROWS = DW[0]
        best[shape + "/reduce"] = min(red)[1] if red else REDUCE[0]
    ct.BWD_BLOCK_L, ct.BWD_BLOCK_D, ct.BWD_NUM_WARPS = TILES[0]
    return best


def _old_conv_split(proj, sizes, conv_index, conv_sizes, weight, bias=None, seq_idx=None, activation=None, *,
                    backend=None):
    """The block's previous composition: torch.split, causal_conv1d, torch.split."""
    from samkern.ops.conv1d.function import causal_conv1d

    parts = list(torch.split(proj, list(sizes), dim=-1))
    y = causal_conv1d(parts[conv_index].transpose(1, 2), weight, bias, seq_idx=seq_idx, activation=activation,
                      backend=backend).transpose(1, 2)
    return tuple(parts[:conv_index]) + tuple(torch.split(y, list(conv_sizes), dim=-1)) + tuple(parts[conv_index + 1:])


def block_ab(tile) -> None:
    import samkern.layers.mamba2 as m2
    import samkern.ops.conv1d.triton as ct
    from benchmarks.bench_blocks import SHAPES, _fwdbwd
    from mamba_ssm.modules.mamba2 import Mamba2

    if tile is not None:
        ct.BWD_BLOCK_L, ct.BWD_BLOCK_D, ct.BWD_NUM_WARPS = tile
    new = m2.conv_split
    for shape in os.environ.get("AB_SHAPES", "130m-B32-L192,2.7b-B16-L192,2.7b-B8-L640").split(","):
        d_model, batch, seqlen = SHAPES[shape]
        kw = dict(device="cuda", dtype=torch.bfloat16)
        torch.manual_seed(0)
        peer = Mamba2(d_model, d_state=128, headdim=64, **kw)
        ours = m2.Mamba2Block(d_model, d_state=128, headdim=64, **kw)
        ours.load_state_dict(peer.state_dict())
        u = torch.randn(batch, seqlen, d_model, **kw, requires_grad=True)
        g = torch.randn(batch, seqlen, d_model, **kw)
        grads = {}
        for name, fn in (("new", new), ("old", _old_conv_split)):
            m2.conv_split = fn
            grads[name] = _fwdbwd(ours, u, g)()
        m2.conv_split = new
        ref = _fwdbwd(peer, u, g)()
        diff = max(rel(a, b) for a, b in zip(grads["new"], grads["old"]))
        vs_peer = max(rel(a, b) for a, b in zip(grads["new"], ref))
        times = {"new": [], "old": [], "mamba-ssm": []}
        for _ in range(3):
            for name, fn in (("new", new), ("old", _old_conv_split)):
                m2.conv_split = fn
                times[name].append(time_graph(_fwdbwd(ours, u, g)))
            m2.conv_split = new
            times["mamba-ssm"].append(time_graph(_fwdbwd(peer, u, g)))
        emit(kind="block", shape=shape, tile=list(tile) if tile else None, graph_us={k: sorted(v) for k, v in times.items()},
             max_rel_new_vs_old=diff, max_rel_new_vs_peer=vs_peer)


NORM_SHAPES = {  # name: (rows, channels = group size): the gated RMSNorm of the block (one group)
    "130m-B32-L192": (6144, 1536),
    "2.7b-B16-L192": (3072, 5120),
    "2.7b-B8-L640": (5120, 5120),
    "2.7b-B1-L16384": (16384, 5120),
}


def pipe_ab() -> None:
    """Section 3 of the module docstring."""
    import samkern.ops.conv1d.triton as ct
    import samkern.ops.gated_rmsnorm.triton as nt
    from samkern.ops.gated_rmsnorm.ref import rmsnorm_gated_ref

    import samkern.backend as be

    conv_shipped, norm_shipped, hint_shipped = ct.DW_NUM_STAGES, nt.BWD_STAGES, be.ROW_STRIDE_HINT
    skip_ops = os.environ.get("SKIP_OPS", "0") == "1"  # straight to the block A/B
    for shape, (batch, L, dim) in ({} if skip_ops else CONV_SHAPES).items():
        x, w, b, g, ref = _conv_case(batch, L, dim)
        # the block's form too: the gradient as three tensors (x, B, C of conv_split), read in place
        dys = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in torch.split(g, [dim - 256, 128, 128], 1)]
        stages = tuple(int(v) for v in os.environ.get("CONV_STAGES", "1,2,3,4").split(","))
        errs, times, times_split = {}, {n: [] for n in stages}, {n: [] for n in stages}
        for n in stages:
            ct.DW_NUM_STAGES = n
            errs[n] = [rel(a, r) for a, r in zip(ct.causal_conv1d_bwd_triton(g, x, w, b, None, True), ref)]
            errs[n] += [rel(a, r) for a, r in zip(ct.causal_conv1d_bwd_triton(dys, x, w, b, None, True), ref)]
        for _ in range(3):
            for n in stages:
                ct.DW_NUM_STAGES = n
                times[n].append(time_graph(lambda: ct.causal_conv1d_bwd_triton(g, x, w, b, None, True)))
                times_split[n].append(time_graph(lambda: ct.causal_conv1d_bwd_triton(dys, x, w, b, None, True)))
        for n in stages:
            emit(kind="conv-dw-stages", shape=shape, stages=n, bwd_us=sorted(times[n])[1],
                 bwd_split_dy_us=sorted(times_split[n])[1], rel_err_dx_dw_db=[f"{e:.2e}" for e in errs[n]])
    ct.DW_NUM_STAGES = conv_shipped
    for shape, (M, N) in ({} if skip_ops else NORM_SHAPES).items():
        torch.manual_seed(0)
        xx = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        zz = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        wt = torch.rand(N, device="cuda", dtype=torch.bfloat16) + 0.5
        dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        y, rstd = nt.rmsnorm_gated_fwd_triton(xx, wt, zz, 1e-5, N, False)
        leaves = [t.double().requires_grad_(True) for t in (xx, wt, zz)]
        ref_out = rmsnorm_gated_ref(leaves[0], leaves[1], z=leaves[2], eps=1e-5, group_size=N, norm_before_gate=False)
        ref = torch.autograd.grad(ref_out, leaves, dy.double())  # dx, dw, dz
        stages = tuple(int(v) for v in os.environ.get("NORM_STAGES", "1,2,3").split(","))
        errs, times = {}, {n: [] for n in stages}
        for n in stages:
            nt.BWD_STAGES = n
            try:
                dx, dz, dw = nt.rmsnorm_gated_bwd_triton(dy, xx, wt, zz, rstd, N, False)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: reported, not fatal
                emit(kind="norm-bwd-stages", shape=shape, stages=n, error=repr(e)[:200])
                times.pop(n)
                continue
            errs[n] = [rel(dx, ref[0]), rel(dw, ref[1]), rel(dz, ref[2])]
        for _ in range(3):
            for n in times:
                nt.BWD_STAGES = n
                times[n].append(time_graph(lambda: nt.rmsnorm_gated_bwd_triton(dy, xx, wt, zz, rstd, N, False)))
        for n in times:
            emit(kind="norm-bwd-stages", shape=shape, stages=n, bwd_us=sorted(times[n])[1],
                 rel_err_dx_dw_dz=[f"{e:.2e}" for e in errs[n]])
    nt.BWD_STAGES = norm_shipped
    # the block: shipped depths against both loops unpipelined
    import samkern.layers.mamba2 as m2
    from benchmarks.bench_blocks import SHAPES, _fwdbwd
    from benchmarks.harness import time_eager

    settings = {"shipped": (conv_shipped, norm_shipped, int(hint_shipped)), "unpipelined": (1, 1, int(hint_shipped))}
    if os.environ.get("BLOCK_SETTINGS"):  # name=conv,norm,hint;... (norm 0 = the shipped heuristic)
        settings = {kv.split("=")[0]: tuple(int(v) or None for v in kv.split("=")[1].split(","))
                    for kv in os.environ["BLOCK_SETTINGS"].split(";")}

    def apply(setting) -> None:
        ct.DW_NUM_STAGES, nt.BWD_STAGES = setting[0], setting[1]
        be.ROW_STRIDE_HINT = bool(setting[2]) if len(setting) > 2 else hint_shipped

    for shape in os.environ.get("AB_SHAPES", "130m-B32-L192,2.7b-B16-L192,2.7b-B8-L640,2.7b-B1-L16384").split(","):
        d_model, batch, seqlen = SHAPES[shape]
        kw = dict(device="cuda", dtype=torch.bfloat16)
        torch.manual_seed(0)
        block = m2.Mamba2Block(d_model, d_state=128, headdim=64, **kw)
        u = torch.randn(batch, seqlen, d_model, **kw, requires_grad=True)
        gu = torch.randn(batch, seqlen, d_model, **kw)
        grads = {}
        for name, setting in settings.items():
            apply(setting)
            grads[name] = _fwdbwd(block, u, gu)()
        first = list(grads)
        diff = max(rel(a, b_) for k in first[1:] for a, b_ in zip(grads[first[0]], grads[k]))
        times = {k: [] for k in settings}
        timer = (lambda f: time_eager(f)[0]) if seqlen > 4096 else time_graph
        for _ in range(3):
            for name, setting in settings.items():
                apply(setting)
                times[name].append(timer(_fwdbwd(block, u, gu)))
        emit(kind="block-pipe", shape=shape, settings=settings, timer="eager p50" if seqlen > 4096 else "graph",
             us={k: sorted(v) for k, v in times.items()}, max_rel_vs_first=diff)
    apply((conv_shipped, norm_shipped, int(hint_shipped)))


def main() -> None:
    import samkern.ops.conv1d.triton as ct

    if os.environ.get("PIPE", "0") == "1":
        pipe_ab()
        return

    best = sweep() if os.environ.get("SKIP_SWEEP", "0") != "1" else {}
    tile = best.get("2.7b-B16-L192")
    if os.environ.get("AB_TILE"):
        tile = tuple(int(v) for v in os.environ["AB_TILE"].split(","))
    if best.get("2.7b-B16-L192/reduce"):
        ct.REDUCE_BLOCK_P, ct.REDUCE_BLOCK_D = best["2.7b-B16-L192/reduce"]
    emit(kind="ab-settings", tile=tile, reduce=[ct.REDUCE_BLOCK_P, ct.REDUCE_BLOCK_D])
    if os.environ.get("SKIP_AB", "0") != "1":
        block_ab(tile)


if __name__ == "__main__":
    main()
