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
from samkern.ops.conv1d.ref import causal_conv1d_ref, check_conv1d_inputs

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
        return (dx if need[0] else None, dw.to(ctx.w_dtype, memory_format=torch.contiguous_format) if need[1] else None,
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
    if backend is None and (initial_states is not None or return_final_states):
        backend = "ref"  # decoding set-up only: the kernels do not take states
    which = pick_backend("causal_conv1d", (x, weight, bias), backend)
    if which == "ref":
        return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, initial_states=initial_states,
                                 return_final_states=return_final_states, activation=activation)
    if initial_states is not None or return_final_states:
        raise ValueError("causal_conv1d: the triton backend takes neither initial_states nor "
                         "return_final_states; use backend='ref' (decoding set-up)")
    check_conv1d_inputs(x, weight, bias, seq_idx, activation=activation)  # the reference checks its own
    return CausalConv1dFunction.apply(x, weight, bias, seq_idx, activation is not None)
