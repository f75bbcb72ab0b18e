# SPDX-License-Identifier: Apache-2.0
"""Public gated group RMSNorm: the reference's semantics on the fastest backend.

Shapes: x (..., N), weight (N,), z (..., N) or None, group_size dividing N (None: N);
out (..., N) in x's dtype. See :func:`samkern.ops.gated_rmsnorm.ref.rmsnorm_gated_ref`.

Backends (see :mod:`samkern.backend`): ``triton`` (CUDA tensors, fp32/fp16/bf16, with the
default ``upcast=True``) or ``ref`` (everything, any device).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from samkern import inference
from samkern.backend import pick_backend, register, triton_float_verifier
from samkern.checks import as_rows
from samkern.ops.gated_rmsnorm.ref import check_rmsnorm_inputs, rmsnorm_gated_ref

__all__ = ["rmsnorm_gated", "RMSNormGatedFunction"]


class RMSNormGatedFunction(torch.autograd.Function):
    """apply(x (M, N), weight (N,), z (M, N)?, eps, group_size, norm_before_gate) -> y (M, N)."""

    @staticmethod
    def forward(ctx, x, weight, z, eps: float, group_size: int, norm_before_gate: bool):
        from samkern.ops.gated_rmsnorm.triton import rmsnorm_gated_fwd_triton

        weight = weight.contiguous()  # the kernels index it by column, unit stride (a view may not be)
        y, rstd = rmsnorm_gated_fwd_triton(x, weight, z, eps, group_size, norm_before_gate)
        ctx.save_for_backward(x, weight, z, rstd)
        ctx.group_size, ctx.norm_before_gate = group_size, norm_before_gate
        return y

    @staticmethod
    def backward(ctx, dy):
        from samkern.ops.gated_rmsnorm.triton import rmsnorm_gated_bwd_triton

        x, weight, z, rstd = ctx.saved_tensors
        dx, dz, dw = rmsnorm_gated_bwd_triton(as_rows(dy, dy.shape[-1]), x, weight, z, rstd, ctx.group_size,
                                              ctx.norm_before_gate)
        return dx, dw.to(weight.dtype), dz, None, None, None


register("rmsnorm_gated", "triton", triton_float_verifier)


def rmsnorm_gated(
    x: Tensor,
    weight: Tensor,
    z: Optional[Tensor] = None,
    eps: float = 1e-6,
    group_size: Optional[int] = None,
    norm_before_gate: bool = True,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """Gated group RMSNorm (shapes in the module docstring); differentiable in x, weight and z."""
    which = pick_backend("rmsnorm_gated", dict(x=x, weight=weight, z=z), backend)
    if which == "ref":
        return rmsnorm_gated_ref(x, weight, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
    gs = check_rmsnorm_inputs(x, weight, z, eps, group_size)
    n = x.shape[-1]
    y = inference.apply(RMSNormGatedFunction, as_rows(x, n), weight, as_rows(z, n), float(eps), gs,
                        bool(norm_before_gate))
    return y.view(x.shape)
