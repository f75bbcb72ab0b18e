# SPDX-License-Identifier: Apache-2.0
"""Triton kernel for the LoRA linear: one GEMM whose reduction runs over two operand pairs.

    C = A1 · B1 + A2 · B2 (+ bias)          (fp32 accumulation, one accumulator, one store)

    A1 (M, K1), B1 (K1, N), A2 (M, K2), B2 (K2, N), bias (N,), C (M, N); any strides.

Forward:   y  = x · Wᵀ + u_s · Bᵀ + b        with u_s = s·(x Aᵀ)  (M, r), made by one small GEMM
Backward:  dx = dy · W + g_s · A             with g_s = s·(dy B)  (M, r)

So the LoRA update costs no extra pass over y or dx: the rank-r part is just r more steps of
the same K loop (padded to a 16-wide block, masked). The small GEMMs (u_s, g_s, dA = g_sᵀ x,
dB = dyᵀ u_s) are plain cuBLAS calls through torch, except g_s and dB together in CUDA-graph
captures at r ≤ 16 (``rank_pass.py``: one read of dy for both).

Two kernels compute the same contraction: ``_lora_gemm_tma_kernel`` (Hopper TMA descriptors,
needs 16-byte aligned rows: K, N, r multiples of 8 in bf16) and ``_lora_gemm_kernel`` (plain
pointers, any shape and stride; masks only on the K and r tails).

Block sizes come from a small candidate set, timed on the first eager call of each
(token bucket, N, K1, K2, layout, dtype) key by a tiny tuner in ``lora_gemm`` (not
``triton.autotune``: no descriptor-mutating hooks, and a cuBLAS composite can compete as a
candidate). Warm up before capturing a CUDA graph; a call during capture never tunes.
Under ``TRITON_INTERPRET=1`` (CPU) a fixed small config is used instead.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import cdiv, graph_replay_ms, next_pow2, num_sms
from samkern.launch import fast_launch

__all__ = ["lora_gemm", "lora_proj_gemm", "tuning_choices", "INTERPRET", "FUSE_MAX_R"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _lora_gemm_kernel(
    a1_ptr, b1_ptr, a2_ptr, b2_ptr, bias_ptr, c_ptr, p_ptr,
    M, N, K1, K2, M_BUCKET, scale,
    s_a1m, s_a1k, s_b1k, s_b1n,
    s_a2m, s_a2k, s_b2k, s_b2n,
    s_cm, s_cn, s_pk, s_pr,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, FUSE_PROJ: tl.constexpr, EVEN_K1: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """FUSE_PROJ: a2 is an OUTPUT, ``a2 = scale · a1 p`` (p (K1, K2), K2 <= BLOCK_R), accumulated in
    the K loop from the a1 tiles already loaded and written by the programs of the first column
    panel; then ``C += a2 b2`` from registers."""
    # grouped ordering of output tiles: GROUP_M row-tiles share each column panel of B1 in L2
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # wrap rows/cols past the edge onto valid ones: loads need no M/N masks, stores are masked
    rm = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    rn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    rk = tl.arange(0, BLOCK_K)

    rr = tl.arange(0, BLOCK_R)
    a_ptrs = a1_ptr + rm[:, None] * s_a1m + rk[None, :] * s_a1k
    b_ptrs = b1_ptr + rk[:, None] * s_b1k + rn[None, :] * s_b1n
    p_ptrs = p_ptr + rk[:, None] * s_pk + rr[None, :] * s_pr
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in range(0, tl.cdiv(K1, BLOCK_K)):
        if EVEN_K1:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            if FUSE_PROJ:
                p = tl.load(p_ptrs, mask=rr[None, :] < K2, other=0.0)
        else:
            k_left = K1 - k * BLOCK_K
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0.0)
            if FUSE_PROJ:
                p = tl.load(p_ptrs, mask=(rk[:, None] < k_left) & (rr[None, :] < K2), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if FUSE_PROJ:
            u = tl.dot(a, p, u, input_precision=PRECISION)
            p_ptrs += BLOCK_K * s_pk
        a_ptrs += BLOCK_K * s_a1k
        b_ptrs += BLOCK_K * s_b1k

    if FUSE_PROJ:
        u_s = (u * scale).to(a1_ptr.dtype.element_ty)
        if pid_n == 0:  # one column panel writes the projection (rows past M are wrapped: masked)
            mu = (offs_m[:, None] < M) & (rr[None, :] < K2)
            tl.store(a2_ptr + offs_m[:, None] * s_a2m + rr[None, :] * s_a2k, u_s, mask=mu)
        b2 = tl.load(b2_ptr + rr[:, None] * s_b2k + rn[None, :] * s_b2n, mask=rr[:, None] < K2, other=0.0)
        acc = tl.dot(u_s, b2, acc, input_precision=PRECISION)
    elif HAS_LORA:
        # the rank-r tail of the reduction; r is tiny (1..256), blocks padded to >= 16 and masked
        a2_ptrs = a2_ptr + rm[:, None] * s_a2m + rr[None, :] * s_a2k
        b2_ptrs = b2_ptr + rr[:, None] * s_b2k + rn[None, :] * s_b2n
        for j in range(0, tl.cdiv(K2, BLOCK_R)):
            r_left = K2 - j * BLOCK_R
            a2 = tl.load(a2_ptrs, mask=rr[None, :] < r_left, other=0.0)
            b2 = tl.load(b2_ptrs, mask=rr[:, None] < r_left, other=0.0)
            acc = tl.dot(a2, b2, acc, input_precision=PRECISION)
            a2_ptrs += BLOCK_R * s_a2k
            b2_ptrs += BLOCK_R * s_b2k

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += bias[None, :]

    c_ptrs = c_ptr + offs_m[:, None] * s_cm + offs_n[None, :] * s_cn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


_PTR = fast_launch(_lora_gemm_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _tma_step(a, b_desc, off_n, off_k, acc, B_KMAJOR: tl.constexpr, PRECISION: tl.constexpr):
    """``acc += a · b`` for one K step, the [BLOCK_K, n] tile of b read from a descriptor over its
    storage: (n, K) when B_KMAJOR (loaded [n, BLOCK_K] and transposed), else (K, n)."""
    # if / else, not an early return: Triton compiles the code after a constexpr-true return too
    if B_KMAJOR:
        acc = tl.dot(a, b_desc.load([off_n, off_k]).T, acc, input_precision=PRECISION)
    else:
        acc = tl.dot(a, b_desc.load([off_k, off_n]), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _b_tile(b_desc, off_n, off_k, B_KMAJOR: tl.constexpr):
    """The [BLOCK_K, n] tile of a B-side operand at (off_k, off_n), stored as in ``_tma_step``."""
    if B_KMAJOR:
        t = b_desc.load([off_n, off_k]).T
    else:
        t = b_desc.load([off_k, off_n])
    return t


@triton.jit
def _proj_epilogue(u, scale, a2_desc, b2_tile, off_m, write, acc, PRECISION: tl.constexpr):
    """FUSE_PROJ's end of a tile: round ``scale · u`` to the input dtype (what the unfused path's
    cuBLAS call stores), write it when ``write`` (one column panel), return ``acc + u_s · b2``.
    With EARLY_B2 the kernels load ``b2_tile`` before the K loop, so its latency hides behind the
    loop (loaded after it, it stalls every tile); it then holds BLOCK_R x BLOCK_N of shared memory
    through the loop, so the host sets it only for BLOCK_R = 16 (r <= 16; at r = 64 the 4-stage
    128x256 / 256x128 tiles would no longer fit, ``scripts/lora_compile_offline.py``). u_s is a
    dot result fed to a dot without a transpose (the Triton 3.6 Hopper miscompile needs
    ``tl.trans`` of such a value)."""
    u_s = (u * scale).to(a2_desc.dtype)
    if write:
        a2_desc.store([off_m, 0], u_s)
    return tl.dot(u_s, b2_tile, acc, input_precision=PRECISION)


@triton.jit
def _lora_gemm_tma_kernel(
    a1_desc, b1_desc, a2_desc, b2_desc, c_desc, p_desc, bias_ptr,
    M, N, K1, K2, M_BUCKET, scale,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, FUSE_PROJ: tl.constexpr, B_KMAJOR: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, EARLY_B2: tl.constexpr,
):
    """Same contraction as ``_lora_gemm_kernel`` with TMA (Hopper) tiles: the descriptors zero-fill
    out-of-range rows/columns, so edges need no masks and the store clips itself.
    B_KMAJOR: b1/b2/p are stored (N, K) (the forward's W, B and A), else (K, N) (the backward's W, A
    and B). FUSE_PROJ as in ``_lora_gemm_kernel`` (a2 is the projection's output)."""
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
    u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    if FUSE_PROJ and EARLY_B2:
        b2_tile = _b_tile(b2_desc, off_n, 0, B_KMAJOR)  # used after the K loop: load it before
    for k in range(0, tl.cdiv(K1, BLOCK_K)):
        a = a1_desc.load([off_m, k * BLOCK_K])
        acc = _tma_step(a, b1_desc, off_n, k * BLOCK_K, acc, B_KMAJOR, PRECISION)
        if FUSE_PROJ:
            u = _tma_step(a, p_desc, 0, k * BLOCK_K, u, B_KMAJOR, PRECISION)
    if FUSE_PROJ:
        if not EARLY_B2:
            b2_tile = _b_tile(b2_desc, off_n, 0, B_KMAJOR)
        acc = _proj_epilogue(u, scale, a2_desc, b2_tile, off_m, pid_n == 0, acc, PRECISION)
    elif HAS_LORA:
        for j in range(0, tl.cdiv(K2, BLOCK_R)):
            a2 = a2_desc.load([off_m, j * BLOCK_R])
            acc = _tma_step(a2, b2_desc, off_n, j * BLOCK_R, acc, B_KMAJOR, PRECISION)
    if HAS_BIAS:
        offs_n = off_n + tl.arange(0, BLOCK_N)
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


_TMA = fast_launch(_lora_gemm_tma_kernel)  # cheaper eager launches (samkern/launch.py)


@triton.jit
def _lora_gemm_tma_persistent_kernel(
    a1_desc, b1_desc, a2_desc, b2_desc, c_desc, p_desc, bias_ptr,
    M, N, K1, K2, M_BUCKET, scale,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, FUSE_PROJ: tl.constexpr, B_KMAJOR: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, R_TILES: tl.constexpr, FLATTEN: tl.constexpr,
    EARLY_B2: tl.constexpr,
):
    """Persistent variant of ``_lora_gemm_tma_kernel``: NUM_SMS programs walk the output tiles, so
    the next tile's loads can overlap this tile's epilogue (FLATTEN lets the pipeliner fuse the
    tile and K loops). The rank-r part (R_TILES = cdiv(r, BLOCK_R) steps, unrolled) runs first
    in each tile, then the K loop; with FUSE_PROJ the projection is made in the K loop and applied
    after it, as in ``_lora_gemm_tma_kernel``."""
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K1, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    for tile_id in tl.range(start_pid, num_tiles, NUM_SMS, flatten=FLATTEN):
        group_id = tile_id // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + (tile_id % group_size_m)
        pid_n = (tile_id % num_pid_in_group) // group_size_m
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if HAS_LORA and not FUSE_PROJ:
            for j in tl.static_range(R_TILES):
                a2 = a2_desc.load([off_m, j * BLOCK_R])
                acc = _tma_step(a2, b2_desc, off_n, j * BLOCK_R, acc, B_KMAJOR, PRECISION)
        u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        if FUSE_PROJ and EARLY_B2:
            b2_tile = _b_tile(b2_desc, off_n, 0, B_KMAJOR)  # used after the K loop: load it before
        for ki in range(k_tiles):
            a = a1_desc.load([off_m, ki * BLOCK_K])
            acc = _tma_step(a, b1_desc, off_n, ki * BLOCK_K, acc, B_KMAJOR, PRECISION)
            if FUSE_PROJ:
                u = _tma_step(a, p_desc, 0, ki * BLOCK_K, u, B_KMAJOR, PRECISION)
        if FUSE_PROJ:
            if not EARLY_B2:
                b2_tile = _b_tile(b2_desc, off_n, 0, B_KMAJOR)
            acc = _proj_epilogue(u, scale, a2_desc, b2_tile, off_m, pid_n == 0, acc, PRECISION)
        if HAS_BIAS:
            offs_n = off_n + tl.arange(0, BLOCK_N)
            bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            acc += bias[None, :]
        c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


_PTMA = fast_launch(_lora_gemm_tma_persistent_kernel)  # cheaper eager launches (samkern/launch.py)


# Candidate tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M), chosen from a sweep on
# an H100 (bf16, 6144 tokens, SAM's six projection shapes, r = 8 and 256; scripts/gpu_lora.py):
# these five were within 5% of the best somewhere; 64x128 stays for small token counts. The two
# 128x128 tiles at 2-3 stages (~100 KB of shared memory, 154-170 registers at 4 warps) fit two
# programs per SM, so one program's epilogue overlaps the other's K loop: 5-14 % faster than
# every other tile on the narrow shapes (K or N = 768, 3072->1536 dx; scripts/gpu_lora_tiles.py,
# dev-runs/s11-call3).
TMA_CANDIDATES = [
    (128, 256, 64, 8, 4, 8),
    (128, 256, 64, 8, 3, 8),
    (256, 128, 64, 8, 4, 8),
    (256, 128, 64, 8, 3, 8),
    (128, 128, 64, 4, 4, 8),
    (64, 128, 64, 4, 4, 8),
    (128, 128, 64, 4, 3, 8),
    (128, 128, 64, 4, 2, 8),
]
# Persistent TMA (not flattened): best on the large shapes with r <= 16 (4-7% over TMA); with
# r = 256 its unrolled rank loads exceed shared memory, and the flattened variant is slower or
# does not fit; so it competes only when r <= 16.
PTMA_CANDIDATES = [(128, 256, 64, 8, 3, 8)]
PTMA_MAX_R = 16
# lora_proj_gemm makes the projection inside the GEMM up to this rank (one rank block): above it
# the recomputation per column panel (r / BLOCK_N more MMA work) is not worth one launch
FUSE_MAX_R = 64
# the Gluon kernels' own projections (gluon.py's projection tiles, gluon_coop.py's panel-0 tiles:
# FUSE_PROJ) take ranks of their 16-wide rank epilogue (gluon.R_EPILOGUE_MAX; not imported here:
# a Triton without Gluon must still load this module)
GLUON_FUSE_MAX_R = 16
PTR_CANDIDATES = [
    (128, 256, 64, 8, 3, 8),
    (256, 128, 64, 8, 3, 8),
    (128, 128, 64, 4, 4, 8),
    (64, 128, 64, 4, 4, 8),
]
_INTERPRET_CONFIG = (16, 32, 16, 1, 1, 2)  # small tiles keep the interpreter fast; K rarely divides 16: masks exercised

# (key) -> chosen candidate; filled by the first eager call of each key (see ``lora_gemm``):
# _CHOICE by GPU time (used while a CUDA graph is captured: replay has no host cost), _EAGER_CHOICE
# by wall time per call in a burst of calls, host cost included (used by every eager call)
_CHOICE: Dict[tuple, tuple] = {}
_EAGER_CHOICE: Dict[tuple, tuple] = {}
# True while the tuner times candidates by GPU time: a nested call (the split path's inner GEMM)
# then runs its own GPU-time choice, as it will inside a captured graph; with its eager choice (a
# pointer kernel picked for its cheap launch, say) the split path was timed slower than it runs
# in a graph, and the fused kernel won where split was ~8 % faster (5120->2560 r8 fwd, s11-call4/5).
# Per thread: the nested call runs on the tuning thread; another thread's calls are not affected.
_GPU_TIMING = threading.local()


def _gpu_timing() -> bool:
    return getattr(_GPU_TIMING, "on", False)


@contextlib.contextmanager
def _by_gpu_time():
    """Within the block, calls tune and run by their GPU-time choices (``_GPU_TIMING``)."""
    outer, _GPU_TIMING.on = _gpu_timing(), True
    try:
        yield
    finally:
        _GPU_TIMING.on = outer


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"  # match torch's default fp32 matmul, not TF32
    return "tf32"  # ignored for 16-bit inputs


def _m_bucket(M: int) -> int:
    # tune per power-of-2 bucket of tokens so varying batch sizes do not retune every call
    return min(next_pow2(M), 1 << 16)


def _tma_able(t: torch.Tensor, transposed: bool = False) -> bool:
    """A 2-D operand a host TMA descriptor can take (of ``t``'s transpose when ``transposed``, read
    from the strides: no view is made): unit stride along rows, 16-byte aligned base and row
    pitch, no empty dimension. (One ``stride()`` and one ``shape`` read: this runs up to six times
    per eager call.)"""
    if t.dim() != 2:
        return False
    (s0, s1), (m, n) = t.stride(), t.shape
    if transposed:
        s0, s1 = s1, s0
    return s1 == 1 and m > 0 and n > 0 and (s0 * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


_TMA_DEVICES: Dict[int, bool] = {}


def _tma_enabled(device: torch.device) -> bool:
    if os.environ.get("SAMKERN_LORA_TMA", "1") == "0" or device.type != "cuda":
        return False
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _TMA_DEVICES:
        _TMA_DEVICES[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return _TMA_DEVICES[idx]


_GLUON_DEVICES: Dict[int, bool] = {}


def _gluon_enabled(device: torch.device) -> bool:
    """Whether the warp-specialised Gluon kernel (``gluon.py``: wgmma, so sm_90 only) may compete
    in the split path's GEMM here; ``SAMKERN_LORA_GLUON=0`` keeps it out."""
    if os.environ.get("SAMKERN_LORA_GLUON", "1") == "0" or device.type != "cuda" or INTERPRET:
        return False
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _GLUON_DEVICES:
        ok = torch.cuda.get_device_capability(idx) == (9, 0)
        if ok:
            try:
                from samkern.ops.lora import gluon  # noqa: F401  (Triton builds without Gluon)
            except ImportError:
                ok = False
        _GLUON_DEVICES[idx] = ok
    return _GLUON_DEVICES[idx]


def _whole_gpu() -> bool:
    """Whether this process may count on every SM: the Gluon kernel's projection tiles publish u_s
    to tiles of other programs, which wait for it, so all its programs (one per SM) must be
    resident at once. An MPS client with an SM limit (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``) may
    not get them all; there the fused candidate is left out (``SAMKERN_LORA_GLUON_FUSED=0`` does
    the same anywhere)."""
    return (os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") is None
            and os.environ.get("SAMKERN_LORA_GLUON_FUSED", "1") != "0")


def _tma_layout(b1: torch.Tensor, b2: Optional[torch.Tensor], proj: Optional[torch.Tensor] = None):
    """``kmajor`` (True: the (K, n) operands b1, b2, proj are stored (n, K), as the forward's W, B,
    A; False: stored as given) when every one can be a TMA descriptor in that common layout, else
    None."""
    for kmajor in (True, False):
        if all(t is None or _tma_able(t, kmajor) for t in (b1, b2, proj)):
            return kmajor
    return None


def _desc(t: torch.Tensor, shape, strides, block):
    """A host TMA descriptor over ``t``'s memory with the given (possibly transposed) shape and
    strides, built without ``TensorDescriptor.__post_init__``'s checks: ``_tma_able`` made them
    (alignment, unit last stride, non-empty), and the blocks are the tuner's powers of two. About
    a third of an eager TMA launch's host time went to building six checked descriptors."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    d = TensorDescriptor.__new__(TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape, d.padding = t, shape, strides, block, "zero"
    return d


def _b_desc(b: torch.Tensor, kmajor: bool, bn: int, bk: int):
    """Descriptor of a (K, n) B-side operand: over its transpose's storage (n, K) with [bn, bk]
    blocks when ``kmajor``, else over (K, n) with [bk, bn] blocks."""
    (k, n), (sk, sn) = b.shape, b.stride()
    return _desc(b, (n, k), (sn, sk), [bn, bk]) if kmajor else _desc(b, (k, n), (sk, sn), [bk, bn])


def _launch_tma(a1, b1, a2, b2, kmajor, bias, out, cfg: tuple, block_r: int, proj=None, scale: float = 1.0,
                persistent: bool = False, flatten: bool = False) -> None:
    """The TMA kernel (or its persistent variant) in the layout ``_tma_layout`` found; with ``proj``
    (K1, r) a2 is the projection's output (FUSE_PROJ)."""
    bm, bn, bk, warps, stages, group = cfg
    M, K1 = a1.shape
    N = out.shape[1]
    has_lora = a2 is not None
    K2 = a2.shape[1] if has_lora else 0
    d_a1 = _desc(a1, (M, K1), a1.stride(), [bm, bk])
    d_b1 = _b_desc(b1, kmajor, bn, bk)
    # unused slots repeat a1/b1's descriptors (never read: HAS_LORA / FUSE_PROJ are constexprs)
    d_a2 = _desc(a2, (M, K2), a2.stride(), [bm, block_r]) if has_lora else d_a1
    d_b2 = _b_desc(b2, kmajor, bn, block_r) if has_lora else d_b1
    d_p = _b_desc(proj, kmajor, block_r, bk) if proj is not None else d_a1
    d_c = _desc(out, (M, N), out.stride(), [bm, bn])
    args = (d_a1, d_b1, d_a2, d_b2, d_c, d_p, bias if bias is not None else out, M, N, K1, K2, _m_bucket(M),
            float(scale))
    meta = dict(HAS_BIAS=bias is not None, HAS_LORA=has_lora, FUSE_PROJ=proj is not None, B_KMAJOR=kmajor,
                PRECISION=_precision(a1.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=group,
                EARLY_B2=proj is not None and block_r <= 16)
    tiles = cdiv(M, bm) * cdiv(N, bn)
    if persistent:
        n_sms = 1 if a1.device.type != "cuda" else num_sms(a1.device)
        grid = (max(1, min(n_sms, tiles)),)
        _PTMA[grid](*args, **meta, NUM_SMS=grid[0], R_TILES=cdiv(K2, block_r), FLATTEN=flatten, num_warps=warps,
                    num_stages=stages)
    else:
        _TMA[(tiles,)](*args, **meta, num_warps=warps, num_stages=stages)


def _launch_gluon(a1, b1, a2, b2, kmajor, out, cfg: tuple, proj=None, scale: float = 1.0) -> None:
    """The Gluon kernel; with ``proj`` (K1, r ≤ 16) a2 is the projection's output (its
    projection tiles, ``gluon.py``'s FUSE_PROJ)."""
    from samkern.ops.lora.gluon import launch_gluon

    launch_gluon(a1, b1, a2, b2, kmajor, out, cfg, proj=proj, scale=scale)


def _launch_ptr(a1, b1, a2, b2, bias, out, cfg: tuple, block_r: int, proj=None, scale: float = 1.0) -> None:
    """The pointer kernel; with ``proj`` (K1, K2) a2 is the projection's output (FUSE_PROJ)."""
    bm, bn, bk, warps, stages, group = cfg
    M, K1 = a1.shape
    N = out.shape[1]
    has_lora = a2 is not None
    a2_ = a2 if has_lora else a1
    b2_ = b2 if has_lora else b1
    p_ = proj if proj is not None else a1
    grid = (cdiv(M, bm) * cdiv(N, bn),)
    _PTR[grid](
        a1, b1, a2_, b2_, bias if bias is not None else out, out, p_,
        M, N, K1, a2.shape[1] if has_lora else 0, _m_bucket(M), float(scale),
        *a1.stride(), *b1.stride(), *a2_.stride(), *b2_.stride(), *out.stride(), *p_.stride(),
        HAS_BIAS=bias is not None, HAS_LORA=has_lora, FUSE_PROJ=proj is not None, EVEN_K1=K1 % bk == 0,
        PRECISION=_precision(a1.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=group,
        num_warps=warps, num_stages=stages,
    )


def _launch_cublas(a1, b1, a2, b2, bias, out) -> None:
    """cuBLAS fallback candidate: out = a2 b2 (+ bias), then out += a1 b1 (beta=1 epilogue).

    Costs one extra write+read of C compared with the fused kernel; the tuner picks it only
    where cuBLAS's main GEMM is enough faster than the Triton one to pay for that."""
    if a2 is not None:
        if bias is not None:
            torch.addmm(bias, a2, b2, out=out)
        else:
            torch.mm(a2, b2, out=out)
        out.addmm_(a1, b1)
    elif bias is not None:
        torch.addmm(bias, a1, b1, out=out)
    else:
        torch.mm(a1, b1, out=out)


def _prune(cands, M: int, N: int):
    keep = [c for c in cands if c[0] <= max(64, next_pow2(M)) and c[1] <= max(128, next_pow2(N))]
    return keep or cands[-1:]


def _graph_ms(fn, warmup: int = 5, rep: int = 20) -> Optional[float]:
    """Median ms of CUDA-graph replays of ``fn`` (L2 flushed between replays, as the harness
    times), or None when ``fn`` cannot be captured. Replays cost the same few microseconds of host
    time for every candidate; an eager ``do_bench`` charged a candidate whose launch takes longer
    on the host than the cache flush before it takes on the GPU for the difference: the Gluon
    kernel (~120 us of host time per launch on the H100 box) was timed at 168.7 us in the
    tuner and 64.4 us as graph replays at 768->3352 r8 (``dev-runs/s26-call6-lora-tuner-check.log``),
    and such choices flipped between runs with the host's speed."""
    fn()  # compiles and any nested tuning (the split path's GEMM) happen outside the capture
    try:
        # thread_local: a CUDA call of another thread (a DataLoader's pin-memory thread, say)
        # must neither fail nor invalidate this capture ("global", the default, does both)
        return graph_replay_ms(fn, warmup=warmup, rep=rep, side_warmups=1, capture_error_mode="thread_local")
    except RuntimeError:  # (not capturable here: timed eagerly instead)
        torch.cuda.synchronize()
        return None


def _bench_ms(fn, warmup: int = 5, rep: int = 20) -> float:
    """Median ms of ``fn`` (``_graph_ms``, else eager ``do_bench``), ``warmup`` / ``rep`` in ms of
    running it; inf for a candidate that cannot run."""
    from triton.testing import do_bench

    from triton.runtime.errors import OutOfResources

    try:
        ms = _graph_ms(fn, warmup, rep) if os.environ.get("SAMKERN_LORA_TUNE_GRAPH", "1") != "0" else None
        return ms if ms is not None else do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    except OutOfResources:  # a tile too large for this GPU is just not chosen
        return float("inf")
    except Exception as e:  # noqa: BLE001 - not chosen either, but a kernel bug must not pass unseen
        warnings.warn(f"lora_gemm tuner: a candidate failed and is skipped: {type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}", RuntimeWarning, stacklevel=2)
        return float("inf")


def _wall_ms(fn, calls: int = 20, bursts: int = 3) -> float:
    """Wall time per call of ``calls`` back-to-back calls (best of ``bursts``): max(host, GPU) per
    call, what an eager caller pays when the launches cannot hide behind earlier GPU work. On the
    H100 box a TMA launch costs ~190 us of host time against ~80 for the pointer kernel
    (``s2-call5`` log), more than the GPU time of a 768-wide GEMM at 6144 tokens."""
    import time

    best = float("inf")
    for _ in range(bursts):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) * 1e3 / calls)
    return best


GEMM_MODES = ("auto", "triton", "cublas", "own")


def gemm_mode(path: Optional[str] = None) -> str:
    """``path`` or ``SAMKERN_LORA_GEMM`` (default ``auto``), checked: a misspelt mode would
    otherwise run as ``triton`` without a word (``lora_gemm``'s docstring has what each means)."""
    mode = path or os.environ.get("SAMKERN_LORA_GEMM", "auto")
    if mode not in GEMM_MODES:
        raise ValueError(f"SAMKERN_LORA_GEMM (or path) must be one of {', '.join(GEMM_MODES)}, got {mode!r}")
    return mode


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def tuning_choices(eager: bool = False) -> Dict[tuple, tuple]:
    """The tuner's decisions so far: key -> (path, config) (for benchmarks and debugging); by GPU
    time (CUDA-graph capture), or with ``eager=True`` by wall time per eager call."""
    return dict(_EAGER_CHOICE if eager else _CHOICE)


def lora_gemm(
    a1: torch.Tensor,
    b1: torch.Tensor,
    a2: Optional[torch.Tensor] = None,
    b2: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    config: Optional[dict] = None,
    use_tma: Optional[bool] = None,
    path: Optional[str] = None,
) -> torch.Tensor:
    """``C = a1 @ b1 + a2 @ b2 + bias`` in one kernel (fp32 accumulation).

    a1 (M, K1), b1 (K1, N), a2 (M, K2) or None, b2 (K2, N) or None, bias (N,) or None;
    any strides (pass transposed views freely). Returns C (M, N), dtype of a1 (or ``out``).

    On Hopper, operands whose rows are 16-byte aligned go through the TMA kernel, others through
    the pointer kernel. Block sizes: ``config`` (dict of BLOCK_M/N/K, GROUP_M, num_warps,
    num_stages, optionally persistent/flatten) if given, a fixed small config in the interpreter,
    else the tuner: the first eager call of each (token bucket, N, K1, K2, layout, dtype) times the
    candidate tiles, plus the two-call cuBLAS composite when ``SAMKERN_LORA_GEMM`` is ``auto``
    (default), and keeps the fastest; ``own`` offers only the kernels that make the rank term in the
    same pass (no composite, and for ``lora_proj_gemm`` at r <= FUSE_MAX_R no split path). A call
    made while a CUDA graph is being captured never tunes (it takes the first candidate): warm up
    eagerly before capturing. ``path`` forces "triton" or "cublas".
    """
    M = a1.shape[0]
    if out is None:
        out = torch.empty((M, b1.shape[1]), device=a1.device, dtype=a1.dtype)
    _gemm(a1, b1, a2, b2, bias, out, None, 1.0, config, use_tma, path)
    return out


def lora_proj_gemm(
    a1: torch.Tensor,
    b1: torch.Tensor,
    proj: torch.Tensor,
    b2: torch.Tensor,
    scale: float,
    bias: Optional[torch.Tensor] = None,
    config: Optional[dict] = None,
    use_tma: Optional[bool] = None,
    path: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
    u_out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``u_s = scale · a1 @ proj`` and ``C = a1 @ b1 + u_s @ b2 + bias``; returns (C, u_s).

    a1 (M, K1), b1 (K1, N), proj (K1, r), b2 (r, N), bias (N,) or None; any strides. The LoRA
    forward (a1 = x, b1 = Wᵀ, proj = Aᵀ, b2 = Bᵀ) and the dx of its backward (a1 = dy, b1 = W,
    proj = B, b2 = A) are this call. For r <= ``FUSE_MAX_R`` the projection can be made inside
    the GEMM's K loop from the a1 tiles it loads anyway (FUSE_PROJ: one launch, no second read of
    a1; each column panel of tiles recomputes it, r / BLOCK_N more MMA work); the tuner times
    those kernels against the split path (one cuBLAS GEMM for u_s, then ``lora_gemm``), by GPU
    time and by wall time per eager call as in ``lora_gemm``. ``out`` / ``u_out``: preallocated
    (M, N) / (M, r) outputs (tests poison them).
    """
    M, r = a1.shape[0], proj.shape[1]
    if out is None:
        out = torch.empty((M, b1.shape[1]), device=a1.device, dtype=a1.dtype)
    u_s = torch.empty((M, r), device=a1.device, dtype=a1.dtype) if u_out is None else u_out
    if r > FUSE_MAX_R:  # never fused: straight to the split path (one plan lookup, not two)
        _split_proj(a1, b1, u_s, b2, bias, out, proj, scale, config, use_tma, path)
    else:
        _gemm(a1, b1, u_s, b2, bias, out, proj, scale, config, use_tma, path)
    return out, u_s


def _split_proj(a1, b1, u_s, b2, bias, out, proj, scale, config, use_tma, path) -> None:
    """The unfused projection: ``u_s = scale · a1 proj`` by cuBLAS (alpha = scale), then the GEMM.
    (The rank pass of ``rank_pass.py`` without U was no faster for u_s at 768-5120 columns:
    13.2 vs 11.2 us at 768, 31.7 vs 28.5 at 3352; dev-runs/s26-call2.)"""
    torch.addmm(u_s, a1, proj, beta=0, alpha=scale, out=u_s)
    _gemm(a1, b1, u_s, b2, bias, out, None, 1.0, config, use_tma, path)


# eager host path: (call signature) -> _plan(...), so that a repeated call (every
# training step) skips the layout checks, the environment reads and the tuner's key building
_PLANS: Dict[tuple, tuple] = {}
_MAX_PLANS = 4096


def _signature(a1, b1, a2, b2, bias, out, proj, use_tma, path) -> tuple:
    """Everything ``_gemm``'s decisions depend on: shapes, strides, 16-byte alignment of every
    base, dtype, device, bias / LoRA / projection presence, the switches and the capture state."""
    ptrs = a1.data_ptr() | b1.data_ptr() | out.data_ptr()
    if a2 is not None:
        ptrs |= a2.data_ptr() | b2.data_ptr()
    if proj is not None:
        ptrs |= proj.data_ptr()
    return (a1.shape, a1.stride(), b1.shape, b1.stride(), out.stride(),
            None if a2 is None else (a2.shape, a2.stride(), b2.stride()), None if proj is None else proj.stride(),
            ptrs & 15 == 0, bias is not None, a1.dtype, a1.device, use_tma, path,
            os.environ.get("SAMKERN_LORA_TMA"), os.environ.get("SAMKERN_LORA_GEMM"), os.environ.get("SAMKERN_LORA_GLUON"),
            os.environ.get("SAMKERN_LORA_GLUON_FUSED"), _capturing(a1), _gpu_timing())


def _plan(layout, block_r: int, choice: tuple) -> tuple:
    """(layout, block_r, kind, fused, tile) from a tuner choice (kind, tile), whose kind ends in
    "+proj" for the fused projection: parsed once, not on every call."""
    kind, cfg = choice
    fused = kind.endswith("+proj")
    return layout, block_r, kind[:-5] if fused else kind, fused, cfg


def _run(plan, a1, b1, a2, b2, bias, out, proj, scale, config, use_tma, path) -> None:
    """Launch a ``_plan``: "split" is cuBLAS's projection then ``_gemm``, "cublas" the two-call
    composite, the others a Triton kernel (with the projection inside when ``fused``)."""
    layout, block_r, kind, fused, cfg = plan
    pj, sc = (proj, scale) if fused else (None, 1.0)
    if kind == "ptr":
        _launch_ptr(a1, b1, a2, b2, bias, out, cfg, block_r, pj, sc)
    elif kind == "split":
        _split_proj(a1, b1, a2, b2, bias, out, proj, scale, config, use_tma, path)
    elif kind == "cublas":
        _launch_cublas(a1, b1, a2, b2, bias, out)
    elif kind == "gluon":
        _launch_gluon(a1, b1, a2, b2, layout, out, cfg, pj, sc)
    else:  # tma, ptma, ptma_flat
        _launch_tma(a1, b1, a2, b2, layout, bias, out, cfg, block_r, pj, sc, kind != "tma", kind == "ptma_flat")


def _gemm(a1, b1, a2, b2, bias, out, proj, scale, config, use_tma, path) -> None:
    """``lora_gemm`` / ``lora_proj_gemm`` into ``out`` (and ``a2`` when ``proj`` is given)."""
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()  # the kernels index it by column with unit stride (a view may not have it)
    sig = None
    if config is None and not INTERPRET:
        sig = _signature(a1, b1, a2, b2, bias, out, proj, use_tma, path)
        plan = _PLANS.get(sig)
        if plan is not None:
            _run(plan, a1, b1, a2, b2, bias, out, proj, scale, None, use_tma, path)
            return
    M, K1 = a1.shape
    N = b1.shape[1]
    has_lora = a2 is not None
    K2 = a2.shape[1] if has_lora else 0
    block_r = min(max(16, next_pow2(max(K2, 1))), 64)
    fusable = proj is not None  # lora_proj_gemm sends ranks above FUSE_MAX_R to the split path

    if use_tma is None:
        use_tma = _tma_enabled(a1.device)
    layout = None
    if use_tma and _tma_able(a1) and _tma_able(out) and (not has_lora or _tma_able(a2)):
        layout = _tma_layout(b1, b2, proj)

    def run(choice, remember: bool = False) -> None:
        plan = _plan(layout, block_r, choice)
        if remember and sig is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[sig] = plan
        _run(plan, a1, b1, a2, b2, bias, out, proj, scale, config, use_tma, path)

    kind = "tma" if layout is not None else "ptr"
    sfx = "+proj" if fusable else ""
    if config is not None:
        c = dict(config)
        if layout is not None and c.pop("persistent", False):
            kind = "ptma_flat" if c.pop("flatten", False) else "ptma"
        cfg = (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c.get("num_warps", 4), c.get("num_stages", 3),
               c.get("GROUP_M", 8))
        run((kind + sfx, cfg))
        return
    if INTERPRET:
        run((kind + sfx, _INTERPRET_CONFIG))
        return

    mode = gemm_mode(path)
    if mode == "cublas" or (a1.dtype == torch.float32 and mode == "auto"):
        # fp32: Triton's exact-fp32 dot is emulated and slow; cuBLAS is the better fp32 engine
        run(("split", None) if fusable else ("cublas", None), remember=True)
        return
    # without bias, 16-bit, TMA-able, on an H100 the warp-specialised Gluon kernels (gluon.py,
    # gluon_coop.py) are candidates of the split path's GEMM (u_s / g_s made) and, for r <= 16, of
    # the fused projection (they make u_s / g_s themselves; their programs wait on each other, so
    # only on a whole GPU: _whole_gpu)
    gluon_ok = (layout is not None and has_lora and bias is None and a1.dtype in (torch.bfloat16, torch.float16)
                and mode in ("auto", "own") and (not fusable or (K2 <= GLUON_FUSE_MAX_R and _whole_gpu()))
                and _gluon_enabled(a1.device))
    key = (a1.device.index, a1.dtype, kind, layout if layout is not None else (b1.stride(0) == 1),
           _m_bucket(M), N, K1, K2, bias is not None, mode, gluon_ok, fusable)
    capturing = _capturing(a1)
    by_gpu = capturing or _gpu_timing()
    choice = (_CHOICE if by_gpu else _EAGER_CHOICE).get(key)
    if choice is None:
        # candidates are built only on a miss: a tuned call's host path stays short
        # first: what an untuned capture runs; "own" (SAMKERN_LORA_GEMM): only kernels that make the
        # rank term in the same pass over a1 and C (no split path, no cuBLAS composite)
        cands = [] if not fusable or mode == "own" else [("split", None)]
        cands += [(kind + sfx, c) for c in _prune(TMA_CANDIDATES if layout is not None else PTR_CANDIDATES, M, N)]
        if layout is not None and 0 < K2 <= PTMA_MAX_R:
            cands += [("ptma" + sfx, c) for c in _prune(PTMA_CANDIDATES, M, N)]
        if layout is not None:
            # slower on the GPU than TMA, but its launch costs less than half the host time
            cands += [("ptr" + sfx, c) for c in _prune(PTR_CANDIDATES, M, N)]
        if gluon_ok:
            from samkern.ops.lora.gluon import candidates as gluon_candidates

            cands += [("gluon" + sfx, c) for c in gluon_candidates(K2, fused=fusable)]
        if mode == "auto" and not fusable:
            cands.append(("cublas", None))  # (the split path's inner GEMM has it as a candidate)
        if len(cands) == 1 or capturing:
            # an untuned capture is not remembered: a later eager call tunes this key
            run(cands[0], remember=len(cands) == 1)
            return
        with _by_gpu_time():
            gpu = [_bench_ms(lambda c=c: run(c)) for c in cands]
            # a second pass over every candidate that can run, keeping each one's best median: one
            # pass had outliers of 1.5-20x (the Gluon kernel 115.6 vs 76.0 us for its sibling tile,
            # pointer kernels 1530-2089 us against ~200; dev-runs/s25-call11-lora-tuner-log.log),
            # which the 10 % re-timing below never revisits
            gpu = [min(t, _bench_ms(lambda c=c: run(c))) if t < float("inf") else t for c, t in zip(cands, gpu)]
            # candidates within 10 % of the best are timed twice more, interleaved, each time for
            # as long as the harness times a row (100 ms after 25 of warm-up), and decided by
            # those runs alone: one 20-call median flipped such choices between runs (2560->10576
            # r8 fwd 554 vs 629 us with the same kernels, s10-call6 vs call8), and 20 ms runs ranked
            # the split path's inner GEMMs at 2560->10576 the other way round from the harness's
            # (Triton tma 485 vs Gluon 493 us in the tuner, s27-call6; 533 vs 510 in the harness's
            # conditions, s28-call8; likely the clocks a short run sees, not checked)
            best = min(gpu)
            close = [i for i, t in enumerate(gpu) if t <= 1.1 * best] if best < float("inf") else []
            long_runs = {}
            if len(close) > 1:
                long_runs = {i: float("inf") for i in close}
                for _ in range(2):
                    for i in close:
                        long_runs[i] = min(long_runs[i], _bench_ms(lambda c=cands[i]: run(c), warmup=25, rep=100))
            by_gpu_time = (min(close, key=long_runs.__getitem__) if long_runs
                           else min(range(len(cands)), key=gpu.__getitem__))
        # wall time only for the candidates that can run (a failed compile is inf already)
        wall = [_wall_ms(lambda c=c: run(c)) if t < float("inf") else t for c, t in zip(cands, gpu)]
        _CHOICE[key] = cands[by_gpu_time]
        _EAGER_CHOICE[key] = cands[min(range(len(cands)), key=wall.__getitem__)]
        if os.environ.get("SAMKERN_LORA_TUNE_LOG") == "1":  # what the tuner saw (its choices flip between runs)
            import sys

            print(f"samkern lora tuner {key}: " + ", ".join(
                f"{c[0]}{'' if c[1] is None else list(c[1])} gpu {1e3 * g:.1f}"
                + (f" (long runs {1e3 * long_runs[i]:.1f})" if i in long_runs else "") + f" wall {1e3 * w:.1f} us"
                for i, (c, g, w) in enumerate(zip(cands, gpu, wall))), file=sys.stderr, flush=True)
        choice = (_CHOICE if by_gpu else _EAGER_CHOICE)[key]
        if fusable and mode == "own" and b1.stride(1) == 1:
            _tune_capture_split_gemm(a1, b1, a2, b2, bias, out, use_tma, path)
    run(choice, remember=True)


def _tune_capture_split_gemm(a1, b1, a2, b2, bias, out, use_tma, path) -> None:
    """Tune (by GPU time) the split path's GEMM ``a1 b1 + a2 b2`` of a fused call's shapes.

    A CUDA-graph capture's backward makes g_s by the rank pass (r <= 16) and dx by this GEMM
    (``function._bwd_impl``), while eager backwards take the fused dx: no eager call reaches its
    tuner key, and a capture never tunes, so it ran an untuned first candidate. In ``auto`` mode the
    fused call's "split" candidate tunes it as a nested call; ``own`` offers no split candidate,
    so it is tuned here, once per fused key (the backward's layout: b1 row-major, as W is there).
    Its run writes ``out``, which the fused call's own run then overwrites."""
    from samkern.ops.lora.rank_pass import MAX_R

    if a2.shape[1] > MAX_R or a1.dtype not in (torch.float16, torch.bfloat16):
        return
    with _by_gpu_time():
        _gemm(a1, b1, a2, b2, bias, out, None, 1.0, None, use_tma, path)
