# SPDX-License-Identifier: Apache-2.0
"""Public LoRA linear op: ``y = x Wᵀ + b + s·(x' Aᵀ) Bᵀ``.

Shapes (K = in_features, N = out_features, r = LoRA rank; ``...`` any leading dims):
    x          (..., K)
    W          (N, K)
    b          (N,) or None
    A          (r, K)
    B          (N, r)
    scale      float s (alpha / r)
    dropout_x  (..., K) or None — input of the LoRA branch when dropout is active (peft semantics)
    y          (..., N)

Backends (see :mod:`samkern.backend`): ``triton`` (fused kernels, CUDA tensors) or ``ref``.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from samkern import inference
from samkern.backend import on_cuda, pick_backend, register
from samkern.checks import FLOAT_DTYPES, as_rows, check_finite, check_same_device, check_tensor
from samkern.ops.lora.overlap import side_stream_for
from samkern.ops.lora.ref import lora_linear_ref

__all__ = ["lora_linear", "validate_lora_linear", "LoRALinearFunction", "lora_linear_triton"]

# fp64 is accepted (reference backend only): it makes exact comparisons against peft possible
DTYPES = FLOAT_DTYPES + (torch.float64,)


def validate_lora_linear(
    x: torch.Tensor,
    W: torch.Tensor,
    b: Optional[torch.Tensor],
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    dropout_x: Optional[torch.Tensor] = None,
) -> None:
    """Raise ``ValueError`` for anything the op cannot compute (metadata checks only on CUDA).

    NaN/inf in the LoRA factors follows ``samkern.checks.check_finite``: always on the CPU, on a
    GPU only with ``SAMKERN_SYNC_CHECKS=1`` (the check needs a host sync every training step).
    """
    # Valid calls (every training step, twice per block) take one cheap pass; the detailed checks
    # below, which name the argument at fault, run only when that pass fails.
    if not _valid_fast(x, W, b, A, B, scale, dropout_x):
        _validate_detailed(x, W, b, A, B, scale, dropout_x)
    check_finite(A=A, B=B)


def _valid_fast(x, W, b, A, B, scale, dropout_x) -> bool:
    """True when every check of ``_validate_detailed`` passes (False may still pass there)."""
    ts = (x, W, A, B) + ((b,) if b is not None else ()) + ((dropout_x,) if dropout_x is not None else ())
    if not all(isinstance(t, torch.Tensor) for t in ts) or type(scale) not in (int, float) or not math.isfinite(scale):
        return False
    dt, dev = x.dtype, x.device
    if dt not in DTYPES or any(t.dtype != dt or t.device != dev or t.numel() == 0 for t in ts):
        return False
    if x.dim() < 1 or W.dim() != 2 or A.dim() != 2 or B.dim() != 2:
        return False
    N, K = W.shape
    r = A.shape[0]
    return (x.shape[-1] == K and A.shape[1] == K and B.shape == (N, r)
            and (b is None or b.shape == (N,)) and (dropout_x is None or dropout_x.shape == x.shape))


def _validate_detailed(x, W, b, A, B, scale, dropout_x) -> None:
    check_tensor("x", x, dtypes=DTYPES, allow_empty=True)  # no rows: nn.Linear's empty output
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (..., K), got shape {tuple(x.shape)}")
    check_tensor("W", W, ndim=2, dtypes=DTYPES)
    N, K = W.shape
    if x.shape[-1] != K:
        raise ValueError(f"x's last dimension must equal W's in_features {K}, got x shape {tuple(x.shape)}")
    if isinstance(A, torch.Tensor) and A.dim() == 2 and A.shape[0] == 0:
        raise ValueError(f"A has rank 0 (shape {tuple(A.shape)}): lora_linear needs r >= 1 "
                         "(for r = 0 use a plain linear, as LoRALinear(r=0) does)")
    check_tensor("A", A, ndim=2, dtypes=DTYPES)
    r = A.shape[0]
    check_tensor("A", A, shape=(r, K))
    check_tensor("B", B, shape=(N, r), dtypes=DTYPES)
    if b is not None:
        check_tensor("b", b, shape=(N,), dtypes=DTYPES)
    if dropout_x is not None:
        check_tensor("dropout_x", dropout_x, shape=tuple(x.shape), dtypes=DTYPES, allow_empty=True)
    for name, t in (("W", W), ("b", b), ("A", A), ("B", B), ("dropout_x", dropout_x)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but x has {x.dtype}; cast the weights to the input dtype")
    check_same_device(x=x, W=W, b=b, A=A, B=B, dropout_x=dropout_x)
    if isinstance(scale, torch.Tensor) or not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite python number, got {scale!r}")


def lora_linear(
    x: torch.Tensor,
    W: torch.Tensor,
    b: Optional[torch.Tensor],
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    *,
    dropout_x: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """LoRA linear ``y = x Wᵀ + b + s·(x' Aᵀ) Bᵀ`` on the fastest backend that accepts the inputs.

    See the module docstring for shapes. Differentiable in x, W, b, A, B (and dropout_x).
    """
    validate_lora_linear(x, W, b, A, B, scale, dropout_x)
    if x.numel() == 0:  # an empty batch, like nn.Linear: the reference keeps the autograd graph
        return lora_linear_ref(x, W, b, A, B, float(scale), dropout_x)
    which = pick_backend("lora_linear", dict(x=x, W=W, b=b, A=A, B=B, dropout_x=dropout_x), backend)
    if which == "ref":
        return lora_linear_ref(x, W, b, A, B, float(scale), dropout_x)
    if which == "triton":
        return lora_linear_triton(x, W, b, A, B, scale, dropout_x)
    raise NotImplementedError(f"lora_linear: backend {which!r} is not implemented")


# ---------------------------------------------------------------------------------------------
# Triton path: two custom ops (forward, backward) so torch.compile sees opaque, shape-described
# kernels (autograd attached with register_autograd); eager calls go through LoRALinearFunction,
# which runs the same implementations without the custom-op dispatch overhead.
#
#   fwd:  u_s = s·(x' Aᵀ)                       (M, r)  saved for backward
#         y   = x Wᵀ + u_s Bᵀ + b               (M, N)  with x' = x both in ONE Triton kernel
#                                                         (lora_proj_gemm), else cuBLAS + kernel
#   bwd:  g_s = s·(dy B)                        (M, r)  r <= 16 in a CUDA-graph capture: with dB
#                                                         from one read of dy (rank_pass.py); else
#         dx  = dy W + g_s A                    (M, K)  with x' = x both in one kernel, as above
#         dx' = g_s A                           (M, K)  only with dropout (x' != x); dx = dy W
#         dA  = g_sᵀ x'                         (r, K)  cuBLAS
#         dB  = dyᵀ u_s                         (N, r)  the rank pass (as g_s) or cuBLAS
#         dW  = dyᵀ x, db = Σ_m dy              only when the base is trained
# ---------------------------------------------------------------------------------------------


def _use_kernel(t: Tensor) -> bool:
    # CPU tensors run the Triton kernel only in the interpreter; otherwise the same math in torch
    return t.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _rank_pass_enabled(dy: Tensor, r: int) -> bool:
    from samkern.ops.lora.rank_pass import rank_pass_enabled

    return rank_pass_enabled(dy, r)


def _scaled_mm(a: Tensor, b: Tensor, scale: float) -> Tensor:
    """``scale · a @ b`` in one GEMM call (alpha=scale, beta=0: the uninitialised input is ignored)."""
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    return torch.addmm(out, a, b, beta=0, alpha=scale, out=out)


def _gemm2(a1: Tensor, b1: Tensor, a2: Optional[Tensor], b2: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    """``a1 @ b1 + a2 @ b2 + bias``: the fused Triton kernel, or torch on a plain CPU."""
    if a2 is not None and _use_kernel(a1):
        from samkern.ops.lora.triton import lora_gemm

        return lora_gemm(a1, b1, a2, b2, bias)
    # a plain GEMM (the dropout backward's dy W) has nothing to fuse: cuBLAS / torch
    out = torch.addmm(bias, a1, b1) if bias is not None else a1 @ b1
    return out.addmm_(a2, b2) if a2 is not None else out


def _fwd_impl(x: Tensor, W: Tensor, b: Optional[Tensor], A: Tensor, B: Tensor, scale: float,
              xd: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """x (M, K), W (N, K), b (N,)?, A (r, K), B (N, r), xd (M, K)? -> y (M, N), u_s = s·xd Aᵀ (M, r)."""
    if xd is None and _use_kernel(x):
        from samkern.ops.lora.triton import lora_proj_gemm

        return lora_proj_gemm(x, W.t(), A.t(), B.t(), scale, b)
    u_s = _scaled_mm(x if xd is None else xd, A.t(), scale)
    y = _gemm2(x, W.t(), u_s, B.t(), b)
    return y, u_s


def _bwd_impl(dy: Tensor, x: Tensor, W: Tensor, A: Tensor, B: Tensor, u_s: Tensor, scale: float,
              xd: Optional[Tensor], need_dx: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> dx (M, K) (or (0,) when not needed), dA (r, K), dB (N, r), dxd (M, K) (or (0,) without dropout).

    With a side stream (``overlap.py``: by default in CUDA-graph captures of small GEMMs) dB and,
    where g_s exists before the dx GEMM, dA run on it beside dx: the same GEMMs, joined before
    returning."""
    kernel = _use_kernel(dy)
    side = side_stream_for(dy, dy.shape[0] * dy.shape[1] * x.shape[1], A.shape[0]) if kernel else None
    xl = x if xd is None else xd
    dB = None
    if kernel and _rank_pass_enabled(dy, A.shape[0]):
        # g_s and dB from one read of dy (rank_pass.py); dx then is the split GEMM
        from samkern.ops.lora.rank_pass import lora_rank_pass

        g_s, dB = lora_rank_pass(dy, B, scale, u_s)
    elif xd is None and need_dx and kernel:
        from samkern.ops.lora.triton import FUSE_MAX_R, lora_proj_gemm

        if side is None or A.shape[0] <= FUSE_MAX_R:
            # (fused candidates make g_s inside the dx GEMM: only dB can run beside it)
            dB = side.mm(dy.t(), u_s) if side is not None else None
            dx, g_s = lora_proj_gemm(dy, W, B, A, scale)
            if side is not None:
                side.launch()
            dA = g_s.t() @ x
            if side is None:
                dB = dy.t() @ u_s
            else:
                side.join()
            return dx, dA, dB, x.new_empty((0,))
        # r > FUSE_MAX_R is always the split path (lora_proj_gemm's): its g_s GEMM here, so that
        # dA can start before the dx GEMM
        dB = side.mm(dy.t(), u_s)
        g_s = _scaled_mm(dy, B, scale)
    else:
        g_s = _scaled_mm(dy, B, scale)
    mm = side.mm if side is not None else torch.mm
    dA = mm(g_s.t(), xl)
    if dB is None:
        dB = mm(dy.t(), u_s)
    if xd is None:
        dx = _gemm2(dy, W, g_s, A, None) if need_dx else x.new_empty((0,))
        dxd = x.new_empty((0,))
    else:
        dx = _gemm2(dy, W, None, None, None) if need_dx else x.new_empty((0,))
        if side is not None:
            side.launch()
        dxd = g_s @ A
    if side is not None:
        side.join()
    return dx, dA, dB, dxd


@torch.library.custom_op("samkern::lora_linear_fwd", mutates_args=())
def _lora_linear_fwd(
    x: Tensor, W: Tensor, b: Optional[Tensor], A: Tensor, B: Tensor, scale: float, xd: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """x (M, K), W (N, K), b (N,)?, A (r, K), B (N, r), xd (M, K)? -> y (M, N), u_s = s·xd Aᵀ (M, r)."""
    return _fwd_impl(x, W, b, A, B, scale, xd)


@_lora_linear_fwd.register_fake
def _(x, W, b, A, B, scale, xd):
    return x.new_empty((x.shape[0], W.shape[0])), x.new_empty((x.shape[0], A.shape[0]))


@torch.library.custom_op("samkern::lora_linear_bwd", mutates_args=())
def _lora_linear_bwd(
    dy: Tensor, x: Tensor, W: Tensor, A: Tensor, B: Tensor, u_s: Tensor, scale: float, xd: Optional[Tensor],
    need_dx: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> dx (M, K) (or (0,) when not needed), dA (r, K), dB (N, r), dxd (M, K) (or (0,) without dropout)."""
    return _bwd_impl(dy, x, W, A, B, u_s, scale, xd, need_dx)


@_lora_linear_bwd.register_fake
def _(dy, x, W, A, B, u_s, scale, xd, need_dx):
    dx = x.new_empty(x.shape) if need_dx else x.new_empty((0,))
    dxd = x.new_empty(x.shape) if xd is not None else x.new_empty((0,))
    return dx, A.new_empty(A.shape), B.new_empty(B.shape), dxd


def _setup_context(ctx, inputs, output) -> None:
    x, W, b, A, B, scale, xd = inputs
    _, u_s = output
    ctx.save_for_backward(x, W, A, B, u_s, xd)
    ctx.scale = scale


def _backward_with(bwd, ctx, dy: Tensor):
    x, W, A, B, u_s, xd = ctx.saved_tensors
    need = ctx.needs_input_grad  # x, W, b, A, B, scale, xd
    dx, dA, dB, dxd = bwd(dy, x, W, A, B, u_s, ctx.scale, xd, bool(need[0]))
    dW = dy.t() @ x if need[1] else None
    db = dy.sum(0) if need[2] else None
    return (dx if need[0] else None), dW, db, dA, dB, None, (dxd if xd is not None else None)


def _backward(ctx, dy: Tensor, du_s: Optional[Tensor]):
    # du_s is ignored: u_s is an internal saved activation, never used by the caller
    return _backward_with(torch.ops.samkern.lora_linear_bwd, ctx, dy)


_lora_linear_fwd.register_autograd(_backward, setup_context=_setup_context)


class LoRALinearFunction(torch.autograd.Function):
    """The same forward/backward as an ``autograd.Function``, calling the implementations directly:
    the eager path (the custom ops' dispatch costs ~100-200 us of host time per call, which
    short-sequence training cannot hide). It takes the caller's tensors of any rank and flattens
    inside, so the autograd graph is this one node (reshapes outside it would add two ViewBackward
    nodes, each a few tens of us of engine time on the H100 box).

    apply(x (..., K), W (N, K), b (N,)?, A (r, K), B (N, r), scale, xd (..., K)?) -> y (..., N)
    """

    @staticmethod
    def forward(ctx, x, W, b, A, B, scale, xd=None):
        K = x.shape[-1]
        x2, xd2 = as_rows(x, K), as_rows(xd, K)
        y, u_s = _fwd_impl(x2, W, b, A, B, float(scale), xd2)
        _setup_context(ctx, (x2, W, b, A, B, float(scale), xd2), (y, u_s))
        ctx.x_shape = x.shape
        return y if x.dim() == 2 else y.view(*x.shape[:-1], y.shape[1])

    @staticmethod
    def backward(ctx, dy):
        grads = list(_backward_with(_bwd_impl, ctx, as_rows(dy, dy.shape[-1])))
        for i in (0, 6):  # dx, dxd: back to the input's shape
            if grads[i] is not None and len(ctx.x_shape) != 2:
                grads[i] = grads[i].view(ctx.x_shape)
        return tuple(grads)


def lora_linear_triton(
    x: Tensor, W: Tensor, b: Optional[Tensor], A: Tensor, B: Tensor, scale: float, dropout_x: Optional[Tensor] = None
) -> Tensor:
    """Triton path of :func:`lora_linear` (no validation; shapes as there)."""
    if not torch.compiler.is_compiling():
        # (without gradients the Function's forward runs without its node: samkern.inference)
        return inference.apply(LoRALinearFunction, x, W, b, A, B, float(scale), dropout_x)
    # traced: the custom op is an opaque node with a fake impl and registered autograd
    K = x.shape[-1]
    y, _ = torch.ops.samkern.lora_linear_fwd(as_rows(x, K), W, b, A, B, float(scale), as_rows(dropout_x, K))
    return y.reshape(*x.shape[:-1], W.shape[0])


def _triton_verifier(*tensors: Tensor) -> Tuple[bool, str]:
    ok, reason = on_cuda(*tensors)
    if not ok:
        return ok, reason
    if any(t.dtype not in FLOAT_DTYPES for t in tensors):
        return False, "dtype not in fp32/fp16/bf16"
    return True, ""


register("lora_linear", "triton", _triton_verifier)
