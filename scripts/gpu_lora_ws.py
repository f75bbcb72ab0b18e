# SPDX-License-Identifier: Apache-2.0
"""Experiment (session 11, not shipped): Triton 3.6's Hopper auto-warp-specialisation on the LoRA
GEMM (``tl.range(..., warp_specialize=True)`` on the K loop of a copy of the TMA kernel).

Outcome: at 4 warps it compiles for sm_90 to a producer and two consumer warp groups (12 warps,
``setmaxnreg``; at 8 warps the flag is ignored; a TMA-descriptor store in the epilogue fails in the
WS pass, so the epilogue stores through pointers), but on the H100 the first launch (768->3352,
128x256, 3 stages) never finished (``benchmarks/results/dev-runs/s11-call2-lora-ws.log``). Kept as
the reproducer for a later Triton: each device check runs in a subprocess with a time limit.

    python scripts/gpu_lora_ws.py --offline  # compile report for sm_90, no GPU needed
    python scripts/gpu_lora_ws.py            # device: correct / wrong / hung per tile and layout
"""
from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from samkern.ops.lora.triton import _b_desc, _b_tile, _desc, _precision, _tma_step  # noqa: E402

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M); 4 warps: the WS pass needs them
WS_TILES = [(128, 256, 64, 4, 3, 8), (128, 128, 64, 4, 4, 8)]
SCALE = 2.0


@triton.jit
def _lora_gemm_ws_kernel(
    a1_desc, b1_desc, b2_desc, p_desc, a2_ptr, c_ptr,
    M, N, K1, scale, stride_cm, stride_um,
    FUSE_PROJ: tl.constexpr, B_KMAJOR: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    NUM_STAGES: tl.constexpr, R: tl.constexpr,
):
    """``_lora_gemm_tma_kernel`` (no bias, no unfused rank tail, row-major tile order) with the K
    loop warp-specialised and pointer stores for C and u_s."""
    pid_n = tl.program_id(0) % tl.cdiv(N, BLOCK_N)
    off_m = (tl.program_id(0) // tl.cdiv(N, BLOCK_N)) * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(K1, BLOCK_K), num_stages=NUM_STAGES, warp_specialize=True):
        a = a1_desc.load([off_m, k * BLOCK_K])
        acc = _tma_step(a, b1_desc, off_n, k * BLOCK_K, acc, B_KMAJOR, PRECISION)
        if FUSE_PROJ:
            u = _tma_step(a, p_desc, 0, k * BLOCK_K, u, B_KMAJOR, PRECISION)
    rm = off_m + tl.arange(0, BLOCK_M)
    if FUSE_PROJ:
        u_s = (u * scale).to(a2_ptr.dtype.element_ty)
        if pid_n == 0:
            rr = tl.arange(0, BLOCK_R)
            tl.store(a2_ptr + rm.to(tl.int64)[:, None] * stride_um + rr[None, :], u_s,
                     mask=(rm[:, None] < M) & (rr[None, :] < R))
        acc = tl.dot(u_s, _b_tile(b2_desc, off_n, 0, B_KMAJOR), acc, input_precision=PRECISION)
    rn = off_n + tl.arange(0, BLOCK_N)
    tl.store(c_ptr + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def launch_ws(a1, b1, proj, b2, out, u_out, cfg, launcher=None) -> None:
    """``out = a1 b1 (+ u_s b2)`` with ``u_out = SCALE · a1 proj`` when ``proj`` is given."""
    bm, bn, bk, warps, stages, _ = cfg
    M, K1 = a1.shape
    N = out.shape[1]
    kmajor = b1.stride(0) == 1
    r = proj.shape[1] if proj is not None else 0
    br = max(16, triton.next_power_of_2(max(r, 1)))
    d_a1 = _desc(a1, (M, K1), a1.stride(), [bm, bk])
    d_b1 = _b_desc(b1, kmajor, bn, bk)
    d_b2 = _b_desc(b2, kmajor, bn, br) if r else d_b1
    d_p = _b_desc(proj, kmajor, br, bk) if r else d_a1
    u = u_out if r else out
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    (launcher or _lora_gemm_ws_kernel)[grid](
        d_a1, d_b1, d_b2, d_p, u, out, M, N, K1, SCALE, out.stride(0), u.stride(0),
        FUSE_PROJ=r > 0, B_KMAJOR=kmajor, PRECISION=_precision(a1.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        BLOCK_R=br, NUM_STAGES=stages, R=r, num_warps=warps, num_stages=stages)


def _cases(dev):
    from gpu_lora_tiles import operands

    for layout, (a1, b1, proj, b2) in operands(768, 3352, dev).items():
        for fused in (False, True):
            yield layout, fused, a1, b1, proj if fused else None, b2


def offline() -> None:
    """Registers, spills, shared memory and whether the WS pass split the kernel, for sm_90."""
    from ssd_regs_offline import compile_report

    launches = []

    class Capture:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((a, kw))

    for cfg in WS_TILES:
        for layout, fused, a1, b1, proj, b2 in _cases("cpu"):
            launches.clear()
            out = torch.empty(a1.shape[0], b1.shape[1], dtype=a1.dtype)
            launch_ws(a1, b1, proj, b2, out, torch.empty(a1.shape[0], 8, dtype=a1.dtype), cfg, launcher=Capture())
            args, kw = launches[0]
            try:
                rep = compile_report(_lora_gemm_ws_kernel, args, kw)
                print(cfg, layout, "fused" if fused else "plain", rep, flush=True)
            except Exception as e:  # noqa: BLE001
                print(cfg, layout, "fused" if fused else "plain", "FAIL", type(e).__name__, flush=True)


def check(ci: int) -> None:
    """One tile at 768->3352, both layouts, plain and fused, NaN-poisoned outputs vs fp32."""
    for layout, fused, a1, b1, proj, b2 in _cases("cuda"):
        out = torch.full((a1.shape[0], b1.shape[1]), float("nan"), device="cuda", dtype=a1.dtype)
        u = torch.full((a1.shape[0], 8), float("nan"), device="cuda", dtype=a1.dtype)
        launch_ws(a1, b1, proj, b2, out, u, WS_TILES[ci])
        torch.cuda.synchronize()
        ref = a1.float() @ b1.float()
        if fused:
            ref += (SCALE * (a1.float() @ proj.float())).to(a1.dtype).float() @ b2.float()
        print(f"CHECK {layout} {'fused' if fused else 'plain'} {((out.float() - ref).norm() / ref.norm()).item():.3e}",
              flush=True)


def main() -> None:
    for ci, cfg in enumerate(WS_TILES):
        try:
            res = subprocess.run([sys.executable, __file__, "--check", str(ci)], capture_output=True, text=True,
                                 timeout=120)
            print(cfg, res.stdout.strip() or res.stderr[-400:], flush=True)
        except subprocess.TimeoutExpired as e:
            print(cfg, "HUNG (killed after 120 s)", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout,
                  flush=True)


if __name__ == "__main__":
    if "--offline" in sys.argv:
        offline()
    elif "--check" in sys.argv:
        check(int(sys.argv[sys.argv.index("--check") + 1]))
    else:
        main()
