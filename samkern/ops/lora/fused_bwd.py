# SPDX-License-Identifier: Apache-2.0
"""The LoRA backward's three products that read dy, from ONE read of dy, for r ≤ 16:

    g_s = s · dy B                  (M, r)    in the K loop, from the dy tiles loaded for dx
    dx  = dy W + g_s A              (M, K)    the GEMM; g_s A added after the K loop
    dB  = dyᵀ u_s                   (N, r)    in the K loop of the first column panel's programs

dy (M, N), W (N, K), B (N, r), A (r, K), u_s = s·x Aᵀ (M, r) saved by the forward.

Why. The backward otherwise reads dy (41 MB at 6144 tokens × 3352 columns in bf16) once for dx
and once more for the rank-r products: by the rank pass (``rank_pass.py``: g_s and dB together,
~1.1 TB/s under the harness's L2 flush, 38 us at 3352 columns) or by cuBLAS (dB as a split-K
GEMM). Here the dx GEMM's K loop runs over N, so every program already holds each [BLOCK_M,
BLOCK_K] tile of dy in shared memory: one more MMA per K step makes g_s (as ``lora_proj_gemm``'s
fused projection does), and in the programs of the first column panel (``pid_n == 0``, one per
row block) one more MMA, ``tileᵀ · u_s`` ([BLOCK_K, r]), makes that row block's share of dB. The
shares are fp32 partials [row blocks, N, r], summed by ``rank_pass``'s summing kernel in a fixed
order (no atomics: bitwise reproducible). The cost: r / BLOCK_N more MMA work for g_s in every
program and about as much again for dB in one program of each row (the column panels are
1/3 - 1/40 of the programs at SAM's shapes), plus partials of ``4 r / (2 BLOCK_M)`` of dy's bytes.

The branch on ``pid_n`` holds two copies of the K loop (one with the dB MMA): a runtime branch
around each loop, not a branch inside one (Triton 3.6's pipeliner failed on a dot result used
inside a runtime branch in a loop, dev-runs session 23). No dot result is transposed (the dB MMA
transposes the loaded dy tile; ``tl.trans`` of a dot result is what Triton 3.6 miscompiles on
Hopper); g_s enters the final MMA untransposed, as in ``triton._proj_epilogue``.

Needs TMA-able operands (``triton._tma_able``) in one layout (``triton._tma_layout``) and
r ≤ 16 (one 16-wide rank block); 16-bit inputs on a GPU (Triton's exact fp32 dot is emulated:
fp32 stays with cuBLAS), any float dtype in the CPU interpreter (tests).
``SAMKERN_LORA_FUSED_BWD``: ``1`` (default) where it applies, ``0`` never.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv
from samkern.launch import fast_launch
from samkern.ops.lora import triton as lt
from samkern.ops.lora.rank_pass import SUM_BLOCK, SUM_SPLITS, _SUM

__all__ = ["lora_dx_db", "fused_bwd_enabled", "FUSED_BWD_CANDIDATES", "MAX_R"]

MAX_R = 16
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M): the TMA kernel's tiles that suit
# the backward's outputs (K = 768-5120 columns); the tuner times them per shape
FUSED_BWD_CANDIDATES = [
    (128, 256, 64, 8, 4, 8),
    (128, 256, 64, 8, 3, 8),
    (128, 128, 64, 4, 4, 8),
    (128, 128, 64, 8, 4, 8),
    (256, 128, 64, 8, 3, 8),
]
_INTERPRET_CONFIG = (16, 32, 16, 1, 1, 2)


@triton.jit
def _dx_db_kernel(
    dy_desc, w_desc, p_desc, a_desc, g_desc, c_desc, u_ptr, dpart_ptr,
    M, N, K1, K2, scale, s_um, s_ur,
    B_KMAJOR: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Program = one [BLOCK_M, BLOCK_N] tile of dx (grouped order, as ``_lora_gemm_tma_kernel``):
    dy_desc (M, K1) [BLOCK_M, BLOCK_K]; w_desc W (K1, N), p_desc B (K1, K2), a_desc A (K2, N)
    (stored as given, or as (N, ·) transposes with B_KMAJOR); g_desc g_s (M, K2) [BLOCK_M,
    BLOCK_R] (written by the first column panel); c_desc dx (M, N); u_ptr u_s (M, K2);
    dpart (cdiv(M, BLOCK_M), K1, K2) fp32."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    b2_tile = lt._b_tile(a_desc, off_n, 0, B_KMAJOR)  # used after the K loop: load it before
    with_db = pid_n == 0
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    us = tl.load(u_ptr + offs_m.to(tl.int64)[:, None] * s_um + offs_r[None, :] * s_ur,
                 mask=((offs_m < M) & with_db)[:, None] & (offs_r < K2)[None, :], other=0.0)
    for k in range(0, tl.cdiv(K1, BLOCK_K)):
        a = dy_desc.load([off_m, k * BLOCK_K])
        acc = lt._tma_step(a, w_desc, off_n, k * BLOCK_K, acc, B_KMAJOR, PRECISION)
        g = lt._tma_step(a, p_desc, 0, k * BLOCK_K, g, B_KMAJOR, PRECISION)
        if with_db:
            d = tl.dot(tl.trans(a), us, input_precision=PRECISION)
            rows = k * BLOCK_K + offs_k
            dst = (pid_m * K1 + rows).to(tl.int64) * K2
            tl.store(dpart_ptr + dst[:, None] + offs_r[None, :], d,
                     mask=(rows < K1)[:, None] & (offs_r < K2)[None, :])
    acc = lt._proj_epilogue(g, scale, g_desc, b2_tile, off_m, pid_n == 0, acc, PRECISION)
    c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


_DX_DB = fast_launch(_dx_db_kernel)  # cheaper eager launches (samkern/launch.py)

# (key) -> tile, by GPU time (graph replays; used in captures) and by wall time per eager call
_CHOICE: Dict[tuple, tuple] = {}
_EAGER_CHOICE: Dict[tuple, tuple] = {}


def _layout(dy, W, B, A, u_s) -> Optional[bool]:
    """``triton._tma_layout`` of (W, A, B) when dy is TMA-able, else None."""
    if not (lt._tma_able(dy) and u_s.dim() == 2):
        return None
    return lt._tma_layout(W, A, B)


def fused_bwd_enabled(dy: torch.Tensor, W: torch.Tensor, B: torch.Tensor, A: torch.Tensor,
                      u_s: torch.Tensor) -> bool:
    """Whether :func:`lora_dx_db` takes this backward (module docstring)."""
    r = B.shape[1]
    if r > MAX_R or os.environ.get("SAMKERN_LORA_FUSED_BWD", "1") == "0" or (r * dy.element_size()) % 16:
        return False  # (g_s (M, r) is stored by TMA: 16-byte rows)
    if not lt.INTERPRET and not (dy.is_cuda and dy.dtype in (torch.float16, torch.bfloat16)
                                 and lt._tma_enabled(dy.device)):
        return False
    return _layout(dy, W, B, A, u_s) is not None


def _launch(dy, W, B, A, u_s, scale, dx, g_s, dpart, layout: bool, cfg: tuple) -> None:
    bm, bn, bk, warps, stages, group = cfg
    M, K1 = dy.shape
    N = dx.shape[1]
    r = B.shape[1]
    br = MAX_R
    _DX_DB[(cdiv(M, bm) * cdiv(N, bn),)](
        lt._desc(dy, (M, K1), dy.stride(), [bm, bk]), lt._b_desc(W, layout, bn, bk), lt._b_desc(B, layout, br, bk),
        lt._b_desc(A, layout, bn, br), lt._desc(g_s, (M, r), g_s.stride(), [bm, br]),
        lt._desc(dx, (M, N), dx.stride(), [bm, bn]), u_s, dpart,
        M, N, K1, r, float(scale), u_s.stride(0), u_s.stride(1),
        B_KMAJOR=layout, PRECISION=lt._precision(dy.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=br,
        GROUP_M=group, num_warps=warps, num_stages=stages,
    )


def _run(dy, W, B, A, u_s, scale, dx, g_s, dB, layout: bool, cfg: tuple) -> None:
    """The fused kernel, then the fixed-order sum of its dB partials."""
    M, K1 = dy.shape
    r = B.shape[1]
    n_mb = cdiv(M, cfg[0])
    d_len = K1 * r
    dpart = torch.empty((n_mb * d_len,), device=dy.device, dtype=torch.float32)
    _launch(dy, W, B, A, u_s, scale, dx, g_s, dpart, layout, cfg)
    # (rank_pass's summing kernel with no g part: every program sums d)
    _SUM[(cdiv(d_len, SUM_BLOCK),)](dpart, dpart, dB, dB, 0, d_len, 1, n_mb, 0, 1.0,
                                    BLOCK=SUM_BLOCK, BLOCK_S=SUM_SPLITS, num_warps=4)


def _pick(dy, W, B, A, u_s, scale, dx, g_s, dB, layout: bool) -> tuple:
    """The tile for this shape: timed once per key over ``FUSED_BWD_CANDIDATES`` (graph replays for
    captures, wall time per call for eager calls, as ``triton.lora_gemm``'s tuner); a capture
    with no choice yet takes the first candidate and remembers nothing."""
    M, K1 = dy.shape
    key = (dy.device.index, dy.dtype, layout, lt._m_bucket(M), K1, dx.shape[1], B.shape[1])
    capturing = lt._capturing(dy)
    by_gpu = capturing or lt._gpu_timing()
    choice = (_CHOICE if by_gpu else _EAGER_CHOICE).get(key)
    if choice is not None:
        return choice
    if capturing:
        return FUSED_BWD_CANDIDATES[0]
    cands = FUSED_BWD_CANDIDATES

    def call(c):
        return lambda: _run(dy, W, B, A, u_s, scale, dx, g_s, dB, layout, c)

    gpu = [lt._bench_ms(call(c)) for c in cands]
    gpu = [min(t, lt._bench_ms(call(c))) if t < float("inf") else t for c, t in zip(cands, gpu)]
    wall = [lt._wall_ms(call(c)) if t < float("inf") else t for c, t in zip(cands, gpu)]
    _CHOICE[key] = cands[min(range(len(cands)), key=gpu.__getitem__)]
    _EAGER_CHOICE[key] = cands[min(range(len(cands)), key=wall.__getitem__)]
    if os.environ.get("SAMKERN_LORA_TUNE_LOG") == "1":
        import sys

        print(f"samkern lora fused-bwd tuner {key}: " + ", ".join(
            f"{list(c)} gpu {1e3 * g:.1f} wall {1e3 * w:.1f} us" for c, g, w in zip(cands, gpu, wall)),
            file=sys.stderr, flush=True)
    return (_CHOICE if by_gpu else _EAGER_CHOICE)[key]


def lora_dx_db(
    dy: torch.Tensor, W: torch.Tensor, B: torch.Tensor, A: torch.Tensor, u_s: torch.Tensor, scale: float,
    config: Optional[tuple] = None, out: Optional[torch.Tensor] = None, g_out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, g_s, dB) = (dy W + g_s A, s · dy B, dyᵀ u_s)`` reading dy once (module docstring).

    dy (M, N), W (N, K), B (N, r), A (r, K), u_s (M, r); :func:`fused_bwd_enabled` must hold.
    ``config``: a tile of ``FUSED_BWD_CANDIDATES``' form (else the interpreter's small tile or
    the tuner's); ``out`` / ``g_out``: preallocated contiguous dx / g_s (tests poison them)."""
    M, N1 = dy.shape
    K, r = W.shape[1], B.shape[1]
    dev, dt = dy.device, dy.dtype
    dx = out if out is not None else torch.empty((M, K), device=dev, dtype=dt)
    g_s = g_out if g_out is not None else torch.empty((M, r), device=dev, dtype=dt)
    dB = torch.empty((N1, r), device=dev, dtype=dt)
    layout = _layout(dy, W, B, A, u_s)
    if layout is None or not (lt._tma_able(dx) and lt._tma_able(g_s)):
        raise ValueError("lora_dx_db: operands a TMA descriptor cannot take (check fused_bwd_enabled first)")
    if config is None:
        config = _INTERPRET_CONFIG if lt.INTERPRET else _pick(dy, W, B, A, u_s, scale, dx, g_s, dB, layout)
    _run(dy, W, B, A, u_s, scale, dx, g_s, dB, layout, config)
    return dx, g_s, dB
