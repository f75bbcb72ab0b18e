# SPDX-License-Identifier: Apache-2.0
"""Custom autograd Functions without their autograd node when nothing needs a gradient.

``apply(Fn, *args)`` is ``Fn.apply(*args)`` while gradients can flow, and otherwise calls
``Fn.forward`` directly with a stand-in ``ctx``: the same kernels on the same arguments, without
the node's bookkeeping (``Function.apply``, ``save_for_backward``, output wrapping: ~10 us of host
time per call on the 2-core CPU machine; eager prefill and evaluation pay it for every op of every
Mamba-2 block). The forwards must only use ``ctx`` to save state for their backward (attributes,
``save_for_backward``, ``mark_non_differentiable``, ``set_materialize_grads``), which the stand-in
ignores, and may read ``ctx.needs_input_grad`` (all False there).
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

__all__ = ["apply", "forward_only", "needs_grad"]


class _ForwardOnlyCtx:
    """What a Function's forward sees when no node is recorded: every ``needs_input_grad`` False,
    the bookkeeping calls no-ops, attributes stored and never read."""

    def __init__(self, n_args: int) -> None:
        self.needs_input_grad: Tuple[bool, ...] = (False,) * n_args

    def save_for_backward(self, *tensors: Any) -> None:
        pass

    def mark_non_differentiable(self, *tensors: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def needs_grad(*args: Any) -> bool:
    """Whether an autograd node for these arguments could ever receive a gradient: grad mode on
    and some tensor argument requiring grad."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def apply(fn: Any, *args: Any) -> Any:
    """``fn.apply(*args)``, or ``fn.forward`` with a stand-in ctx when nothing needs a gradient
    (module docstring). While torch.compile traces, always ``fn.apply`` (Dynamo knows Functions)."""
    if needs_grad(*args) or torch.compiler.is_compiling():
        return fn.apply(*args)
    return forward_only(fn, *args)


def forward_only(fn: Any, *args: Any) -> Any:
    """``fn.forward`` with a stand-in ctx, for a caller that already knows no gradient is needed
    (no input requires grad or grad mode is off, so nothing inside records a graph either)."""
    return fn.forward(_ForwardOnlyCtx(len(args)), *args)
