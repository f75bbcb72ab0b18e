# SPDX-License-Identifier: Apache-2.0
"""Public depthwise causal conv1d: ``causal_conv1d_fn``'s semantics on the fastest backend.

Shapes (B batch, D channels, L tokens, W taps):
    x               (B, D, L) any strides (channel-last memory, i.e. (B, L, D) seen through
                    ``.transpose(1, 2)``, is what the kernels read fastest)
    weight          (D, W)
    bias            (D,) or None
    seq_idx         (B, L) int32/int64 or None: taps never cross a change of label; tokens with
                    a negative label (padding) output 0
    initial_states  (B, D, W - 1) or None; return_final_states -> also (B, D, W - 1)
    out             (B, D, L), x's dtype

Backends (see :mod:`samkern.backend`): ``triton`` (CUDA tensors, fp32/fp16/bf16; without
``initial_states``/``return_final_states``, which only decoding set-up uses) or ``ref``
(:func:`samkern.ops.conv1d.ref.causal_conv1d_ref`, everything, any device).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from samkern.backend import pick_backend, register, triton_float_verifier
from samkern.checks import FLOAT_DTYPES
from samkern.ops.conv1d.ref import _check_activation, causal_conv1d_ref

__all__ = ["causal_conv1d", "CausalConv1dFunction"]


class CausalConv1dFunction(torch.autograd.Function):
    """apply(x (B, D, L), weight (D, W), bias (D,)?, seq_idx (B, L)?, silu) -> out (B, D, L)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor], silu: bool):
        from samkern.ops.conv1d.triton import causal_conv1d_fwd_triton

        w = weight.contiguous()
        seq = seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None
        ctx.save_for_backward(x, w, bias, seq)
        ctx.silu = silu
        ctx.w_dtype = weight.dtype
        return causal_conv1d_fwd_triton(x, w, bias, seq, silu)

    @staticmethod
    def backward(ctx, dout: Tensor):
        from samkern.ops.conv1d.triton import causal_conv1d_bwd_triton

        x, w, bias, seq = ctx.saved_tensors
        dx, dw, db = causal_conv1d_bwd_triton(dout, x, w, bias, seq, ctx.silu)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dw.to(ctx.w_dtype) if need[1] else None,
                db.to(bias.dtype) if (db is not None and need[2]) else None, None, None)


register("causal_conv1d", "triton", triton_float_verifier)


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    seq_idx: Optional[Tensor] = None,
    initial_states: Optional[Tensor] = None,
    return_final_states: bool = False,
    activation: Optional[str] = None,
    *,
    backend: Optional[str] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Depthwise causal conv1d (+ SiLU); shapes in the module docstring. Differentiable in x,
    weight, bias (and initial_states on the reference backend)."""
    _check_activation(activation)
    kernel_ok = initial_states is None and not return_final_states
    which = pick_backend("causal_conv1d", (x, weight, bias), backend if (backend or kernel_ok) else "ref")
    if which == "triton" and not kernel_ok:
        raise ValueError("causal_conv1d: the triton backend takes neither initial_states nor "
                         "return_final_states; use backend='ref' (decoding set-up)")
    if which == "ref" or x.numel() == 0:
        return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, initial_states=initial_states,
                                 return_final_states=return_final_states, activation=activation)
    # the reference validates everything else; run its checks on metadata only (cheap)
    _validate(x, weight, bias, seq_idx)
    return CausalConv1dFunction.apply(x, weight, bias, seq_idx, activation is not None)


def _validate(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor]) -> None:
    from samkern.checks import check_same_device, check_tensor
    from samkern.ops.conv1d.ref import _INT_DTYPES, _check_weight_bias

    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    batch, dim, seqlen = x.shape
    _check_weight_bias(weight, bias, dim)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be fp32/fp16/bf16 on the triton backend, got {t.dtype}")
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, shape=(batch, seqlen), dtypes=_INT_DTYPES)
    check_same_device(x=x, weight=weight, bias=bias, seq_idx=seq_idx)
