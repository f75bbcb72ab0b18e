# SPDX-License-Identifier: Apache-2.0
"""Pure-PyTorch depthwise causal 1-D convolution (the short conv of a Mamba-2 block).

Semantics follow the ``causal_conv1d`` package (``causal_conv1d_fn`` / ``causal_conv1d_update``)
so these functions are drop-in references for it. Glossary: B batch, D channels, L/T sequence
length, W kernel width, S conv-state length (``S >= W - 1``).

Output at time ``t`` of channel ``d``::

    out[b, d, t] = act(bias[d] + sum_{k=0}^{W-1} weight[d, k] * x[b, d, t - (W - 1) + k])

where ``x`` at negative times comes from ``initial_states`` (or is zero). With ``seq_idx`` a tap
only contributes when its token belongs to the same sequence as token ``t`` (so packed
sequences do not leak into each other), and tokens with ``seq_idx < 0`` (padding) output 0.

All arithmetic runs in at least fp32 (the CUDA kernels accumulate in fp32 too); outputs are
cast back to ``x.dtype``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from samkern.checks import FLOAT_DTYPES, check_same_device, check_tensor

__all__ = ["causal_conv1d_ref", "check_conv1d_inputs", "causal_conv1d_update_ref", "causal_conv1d_varlen_states_ref"]

_ACTIVATIONS = (None, "silu", "swish")
_INT_DTYPES = (torch.int32, torch.int64)
_FLOAT_OR_F64 = FLOAT_DTYPES + (torch.float64,)


def _compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    # fp32 accumulation for half inputs; fp64 stays fp64 (used by tests as an oracle).
    dt = torch.float32
    for t in tensors:
        if t is not None:
            dt = torch.promote_types(dt, t.dtype)
    return dt


def _check_activation(activation: Optional[str]) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def _check_weight_bias(weight: torch.Tensor, bias: Optional[torch.Tensor], dim: int) -> int:
    check_tensor("weight", weight, ndim=2, dtypes=_FLOAT_OR_F64)
    if weight.shape[0] != dim:
        raise ValueError(f"weight must have shape ({dim}, W) to match the {dim} channels of x, got {tuple(weight.shape)}")
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight must have a kernel width >= 1, got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,), dtypes=_FLOAT_OR_F64)
    return width


def check_conv1d_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    final_states_out: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> Tuple[int, int, int, int]:
    """Metadata checks of :func:`causal_conv1d_ref`'s arguments, shared by every backend
    (``ValueError``); returns (batch, channels, length, width)."""
    _check_activation(activation)
    check_tensor("x", x, ndim=3, dtypes=_FLOAT_OR_F64)
    batch, dim, seqlen = x.shape
    width = _check_weight_bias(weight, bias, dim)
    check_same_device(x=x, weight=weight, bias=bias, seq_idx=seq_idx, initial_states=initial_states)
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, shape=(batch, seqlen), dtypes=_INT_DTYPES)
        if return_final_states:
            raise ValueError("return_final_states is not supported together with seq_idx (as in causal_conv1d)")
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(batch, dim, width - 1), dtypes=_FLOAT_OR_F64,
                     allow_empty=width == 1)
    if final_states_out is not None:
        if not return_final_states:
            raise ValueError("final_states_out is only used with return_final_states=True")
        check_tensor("final_states_out", final_states_out, shape=(batch, dim, width - 1), dtypes=_FLOAT_OR_F64,
                     allow_empty=width == 1)
    return batch, dim, seqlen, width


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    final_states_out: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Depthwise causal conv1d with ``causal_conv1d_fn`` semantics.

    Args:
        x: (B, D, L) input.
        weight: (D, W) per-channel taps (``nn.Conv1d.weight`` of shape (D, 1, W) squeezed).
        bias: (D,) or None.
        seq_idx: (B, L) int32/int64 sequence index of every token (packed varlen batches);
            taps never cross a change of index and tokens with a negative index output 0.
        initial_states: (B, D, W - 1) the W - 1 inputs preceding ``x`` (zeros when None). With
            ``seq_idx`` they are treated as belonging to the sequence of the first token.
        return_final_states: also return the last W - 1 inputs (B, D, W - 1) in ``x.dtype``,
            i.e. the ``initial_states`` for a continuation. Not allowed with ``seq_idx``.
        final_states_out: optional (B, D, W - 1) tensor the final states are copied into.
        activation: None, ``"silu"`` or ``"swish"`` (same thing).

    Returns:
        out (B, D, L) in ``x.dtype``, or ``(out, final_states)`` when ``return_final_states``.

    Differentiable w.r.t. ``x``, ``weight``, ``bias`` and ``initial_states``.
    """
    batch, dim, seqlen, width = check_conv1d_inputs(x, weight, bias, seq_idx, initial_states, return_final_states,
                                                    final_states_out, activation)

    cdt = _compute_dtype(x, weight, bias, initial_states)
    # Prepend the W-1 history columns so output t reads columns t .. t+W-1 of xp.
    if initial_states is None:
        history = x.new_zeros(batch, dim, width - 1, dtype=cdt)
    else:
        history = initial_states.to(cdt)
    xpc = torch.cat([history, x.to(cdt)], dim=-1)  # (B, D, W-1+L)
    w = weight.to(cdt)

    if seq_idx is not None:
        # Sequence index of every column of xp; the history belongs to the first token's
        # sequence when given, else to no sequence (it is zero anyway).
        if initial_states is None:
            hist_idx = torch.full((batch, width - 1), -1, dtype=seq_idx.dtype, device=seq_idx.device)
        else:
            hist_idx = seq_idx[:, :1].expand(batch, width - 1)
        idx_p = torch.cat([hist_idx, seq_idx], dim=-1)  # (B, W-1+L)

    out = None
    for k in range(width):
        tap = xpc[:, :, k:k + seqlen] * w[:, k:k + 1]  # lag W-1-k
        if seq_idx is not None:
            same = (idx_p[:, k:k + seqlen] == seq_idx).unsqueeze(1)  # (B, 1, L)
            tap = tap * same
        out = tap if out is None else out + tap
    if bias is not None:
        out = out + bias.to(cdt).unsqueeze(-1)
    if seq_idx is not None:
        # Padding tokens (negative index) produce exactly zero, bias included.
        out = out.masked_fill((seq_idx < 0).unsqueeze(1), 0.0)
    if activation is not None:
        out = F.silu(out)
    out = out.to(x.dtype)

    if not return_final_states:
        return out
    final_states = xpc[:, :, xpc.shape[-1] - (width - 1):].to(x.dtype)  # (B, D, W-1)
    if final_states_out is not None:
        with torch.no_grad():
            final_states_out.copy_(final_states)
        return out, final_states_out
    return out, final_states


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """Decode step(s) of the causal conv with ``causal_conv1d_update`` semantics.

    Args:
        x: (B, D) one new token or (B, D, T) T new tokens.
        conv_state: (B, D, S) with ``S >= W - 1``: the last S inputs seen so far (oldest first).
            Updated IN PLACE: the new tokens are shifted in, the oldest shifted out.
        weight: (D, W); bias: (D,) or None; activation: None, ``"silu"`` or ``"swish"``.

    Returns:
        out: (B, D) or (B, D, T) (same rank as ``x``) in ``x.dtype``.
    """
    _check_activation(activation)
    check_tensor("x", x, ndim=(2, 3), dtypes=_FLOAT_OR_F64)
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    batch, dim, seqlen = x3.shape
    width = _check_weight_bias(weight, bias, dim)
    check_tensor("conv_state", conv_state, ndim=3, dtypes=_FLOAT_OR_F64)
    state_len = conv_state.shape[-1]
    if conv_state.shape[:2] != (batch, dim) or state_len < width - 1:
        raise ValueError(
            f"conv_state must have shape ({batch}, {dim}, S) with S >= W - 1 = {width - 1}, got {tuple(conv_state.shape)}"
        )
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias)

    cdt = _compute_dtype(x, conv_state, weight, bias)
    full = torch.cat([conv_state.to(cdt), x3.to(cdt)], dim=-1)  # (B, D, S+T)
    # The window of the t-th new token ends at column S+t of `full`.
    window = full[:, :, full.shape[-1] - seqlen - (width - 1):]  # (B, D, W-1+T)
    w = weight.to(cdt)
    out = None
    for k in range(width):
        tap = window[:, :, k:k + seqlen] * w[:, k:k + 1]
        out = tap if out is None else out + tap
    if bias is not None:
        out = out + bias.to(cdt).unsqueeze(-1)
    if activation is not None:
        out = F.silu(out)
    with torch.no_grad():
        conv_state.copy_(full[:, :, full.shape[-1] - state_len:])
    out = out.to(x.dtype)
    return out.squeeze(-1) if squeeze else out


def causal_conv1d_varlen_states_ref(x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int) -> torch.Tensor:
    """Conv states at the end of each packed sequence (``causal_conv1d_varlen_states`` semantics).

    Args:
        x: (T, D) packed tokens of all sequences (the conv *inputs*).
        cu_seqlens: (B + 1,) cumulative sequence lengths, starting at 0 and ending at T.
        state_len: S, how many trailing inputs of each sequence to keep.

    Returns:
        states: (B, D, S) in ``x.dtype``; the last S inputs of sequence b (oldest first), with
        zeros in front when the sequence is shorter than S. No host synchronisation.
    """
    check_tensor("x", x, ndim=2, dtypes=_FLOAT_OR_F64)
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=_INT_DTYPES)
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must hold at least 2 entries, got {cu_seqlens.numel()}")
    if state_len < 1:
        raise ValueError(f"state_len must be >= 1, got {state_len}")
    check_same_device(x=x, cu_seqlens=cu_seqlens)
    cu = cu_seqlens.long()
    start, end = cu[:-1], cu[1:]  # (B,)
    pos = end.unsqueeze(1) - state_len + torch.arange(state_len, device=x.device)  # (B, S)
    valid = pos >= start.unsqueeze(1)
    gathered = x[pos.clamp(min=0, max=max(x.shape[0] - 1, 0))]  # (B, S, D)
    states = torch.where(valid.unsqueeze(-1), gathered, torch.zeros((), dtype=x.dtype, device=x.device))
    return states.transpose(1, 2)
