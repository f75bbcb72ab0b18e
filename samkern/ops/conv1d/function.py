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

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from samkern import inference
from samkern.backend import pick_backend, register, triton_float_verifier
from samkern.checks import check_tensor
from samkern.ops.conv1d.ref import causal_conv1d_ref, check_conv1d_inputs

__all__ = ["causal_conv1d", "CausalConv1dFunction", "conv_split", "ConvSplitFunction"]


class CausalConv1dFunction(torch.autograd.Function):
    """apply(x (B, D, L), weight (D, W), bias (D,)?, seq_idx (B, L)?, silu) -> out (B, D, L)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor], silu: bool):
        from samkern.ops.conv1d.triton import causal_conv1d_fwd_triton

        w = weight.contiguous()
        bias = bias.contiguous() if bias is not None else None  # the kernels index it by channel, unit stride
        seq = seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None
        ctx.save_for_backward(x, w, bias, seq)
        ctx.silu = silu
        return causal_conv1d_fwd_triton(x, w, bias, seq, silu)

    @staticmethod
    def backward(ctx, dout: Tensor):
        from samkern.ops.conv1d.triton import causal_conv1d_bwd_triton

        x, w, bias, seq = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, db = causal_conv1d_bwd_triton(dout, x, w, bias, seq, ctx.silu, need_dw=need[1] or need[2])
        return dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None, None


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
    which = pick_backend("causal_conv1d", dict(x=x, weight=weight, bias=bias), backend)
    if which == "ref":
        return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, initial_states=initial_states,
                                 return_final_states=return_final_states, activation=activation)
    if initial_states is not None or return_final_states:
        raise ValueError("causal_conv1d: the triton backend takes neither initial_states nor "
                         "return_final_states; use backend='ref' (decoding set-up)")
    check_conv1d_inputs(x, weight, bias, seq_idx, activation=activation)  # the reference checks its own
    return inference.apply(CausalConv1dFunction, x, weight, bias, seq_idx, activation is not None)


# ---------------------------------------------------------------------------------------------
# The conv inside a Mamba-2 block: a column range of the packed in_proj output goes through the
# conv, everything is split. With torch.split on both sides, autograd concatenates the split
# gradients twice (x, B, C into d xBC; z, xBC, dt into d zxbcdt): 67 us of a 2.7b block's
# backward at B16 L192 (``dev-runs/s8-call5-*``). One node for the lot writes d zxbcdt once:
# the conv backward reads dx, dB, dC in place and writes its dx into d zxbcdt's columns; the
# other parts' gradients are copied next to it.
# ---------------------------------------------------------------------------------------------


def _starts(sizes: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for n in sizes:
        out.append(acc)
        acc += n
    return out + [acc]


class ConvSplitFunction(torch.autograd.Function):
    """apply(proj (B, L, Dp), weight (Dc, W), bias (Dc,)?, seq_idx (B, L) int32?, silu, sizes,
    conv_index, conv_sizes) -> the parts of ``conv_split`` (views)."""

    @staticmethod
    def forward(ctx, proj: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor], silu: bool,
                sizes: Tuple[int, ...], conv_index: int, conv_sizes: Tuple[int, ...]):
        from samkern.ops.conv1d.triton import causal_conv1d_fwd_triton

        ctx.set_materialize_grads(False)  # unused parts: None, not a tensor of zeros
        cols = _starts(sizes)
        w = weight.contiguous()
        bias = bias.contiguous() if bias is not None else None  # the kernels index it by channel, unit stride
        seq = seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None
        ctx.save_for_backward(proj, w, bias, seq)
        ctx.silu, ctx.sizes, ctx.conv_index, ctx.conv_sizes = silu, sizes, conv_index, conv_sizes
        xbc = proj[..., cols[conv_index]:cols[conv_index + 1]].transpose(1, 2)
        conv_out = causal_conv1d_fwd_triton(xbc, w, bias, seq, silu).transpose(1, 2)  # (B, L, Dc) contiguous
        parts = [proj[..., cols[i]:cols[i + 1]] for i in range(conv_index)]
        parts += list(torch.split(conv_out, list(conv_sizes), dim=-1))
        parts += [proj[..., cols[i]:cols[i + 1]] for i in range(conv_index + 1, len(sizes))]
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):
        from samkern.ops.conv1d.triton import causal_conv1d_bwd_triton

        proj, w, bias, seq = ctx.saved_tensors
        sizes, ci, n_conv = ctx.sizes, ctx.conv_index, len(ctx.conv_sizes)
        cols = _starts(sizes)
        need = ctx.needs_input_grad
        d_proj = torch.empty(proj.shape, device=proj.device, dtype=proj.dtype) if need[0] else None
        conv_grads = list(grads[ci:ci + n_conv])
        outer = list(grads[:ci]) + list(grads[ci + n_conv:])
        outer_idx = [i for i in range(len(sizes)) if i != ci]
        if d_proj is not None:
            for i, g in zip(outer_idx, outer):
                if cols[i + 1] > cols[i]:
                    piece = d_proj[..., cols[i]:cols[i + 1]]
                    if g is None:
                        piece.zero_()
                    else:
                        piece.copy_(g)
        need_dw = need[1] or need[2]
        if all(g is None for g in conv_grads):  # no conv output was used: nothing flows into the conv
            if d_proj is not None:
                d_proj[..., cols[ci]:cols[ci + 1]].zero_()
            return d_proj, None, None, None, None, None, None, None
        if not (need[0] or need_dw):
            return (None,) * 8
        conv_out_shape = proj.shape[:-1]
        for k, g in enumerate(conv_grads):
            if g is None:  # a split output nobody used: its gradient is zero
                conv_grads[k] = proj.new_zeros((*conv_out_shape, ctx.conv_sizes[k]))
        # three pieces (x, B, C) are read in place by the kernels; other splits are concatenated
        dy = [g.transpose(1, 2) for g in conv_grads] if n_conv == 3 else _cat_last(conv_grads).transpose(1, 2)
        xbc = proj[..., cols[ci]:cols[ci + 1]].transpose(1, 2)
        dx_out = d_proj[..., cols[ci]:cols[ci + 1]] if d_proj is not None else None
        _, dw, db = causal_conv1d_bwd_triton(dy, xbc, w, bias, seq, ctx.silu, need_dw=need_dw, dx_out=dx_out)
        return d_proj, dw if need[1] else None, db if need[2] else None, None, None, None, None, None


def _cat_last(ts: List[Tensor]) -> Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=-1)


def conv_split(
    proj: Tensor,
    sizes: Sequence[int],
    conv_index: int,
    conv_sizes: Sequence[int],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    seq_idx: Optional[Tensor] = None,
    activation: Optional[str] = None,
    *,
    backend: Optional[str] = None,
) -> Tuple[Tensor, ...]:
    """Split ``proj`` (B, L, Dp) along its last dim into ``sizes``; part ``conv_index`` goes
    through the causal conv (channel-last, ``weight`` (Dc, W), ``bias``, ``seq_idx``,
    ``activation`` as in :func:`causal_conv1d`) and is split into ``conv_sizes``. Returns the
    parts in order with the conv part replaced by its pieces, e.g. ``z, x, B, C, dt`` for a Mamba-2
    block's ``zxbcdt`` with sizes ``[d_ssm, conv_dim, H]``, conv_index 1, conv_sizes
    ``[d_ssm, G·N, G·N]``. Same values and gradients as ``torch.split`` + :func:`causal_conv1d` +
    ``torch.split``; on the triton backend one autograd node (no gradient concatenations)."""
    sizes, conv_sizes = tuple(int(n) for n in sizes), tuple(int(n) for n in conv_sizes)
    if any(n < 0 for n in sizes + conv_sizes):
        raise ValueError(f"split sizes must be non-negative, got sizes {list(sizes)}, conv_sizes {list(conv_sizes)}")
    check_tensor("proj", proj, ndim=3)
    if sum(sizes) != proj.shape[-1]:
        raise ValueError(f"proj must be (B, L, {sum(sizes)}) to split into {list(sizes)}, got {tuple(proj.shape)}")
    if not 0 <= conv_index < len(sizes) or sum(conv_sizes) != sizes[conv_index]:
        raise ValueError(f"conv_sizes {list(conv_sizes)} must split part {conv_index} of {list(sizes)}")
    which = pick_backend("causal_conv1d", dict(proj=proj, weight=weight, bias=bias), backend)
    if which != "triton" or proj.stride(-1) != 1:
        parts = list(torch.split(proj, list(sizes), dim=-1))
        conv_in = parts[conv_index].transpose(1, 2)
        y = causal_conv1d(conv_in, weight, bias, seq_idx=seq_idx, activation=activation, backend=which).transpose(1, 2)
        return tuple(parts[:conv_index]) + tuple(torch.split(y, list(conv_sizes), dim=-1)) + tuple(parts[conv_index + 1:])
    cols = _starts(sizes)
    conv_in = proj[..., cols[conv_index]:cols[conv_index + 1]].transpose(1, 2)
    check_conv1d_inputs(conv_in, weight, bias, seq_idx, activation=activation)
    return inference.apply(ConvSplitFunction, proj, weight, bias, seq_idx, activation is not None, sizes, conv_index,
                           conv_sizes)
