# SPDX-License-Identifier: Apache-2.0
"""Pure-PyTorch reference for the LoRA linear layer (runs anywhere, differentiable by autograd).

    y = x Wᵀ + b + s · (x' Aᵀ) Bᵀ,      x' = dropout_x if given else x

Shapes (K = in_features, N = out_features, r = LoRA rank, ``...`` = any leading dims, e.g. (B, L)):
    x          (..., K)
    W          (N, K)
    b          (N,) or None
    A          (r, K)      "lora_A"
    B          (N, r)      "lora_B"
    scale      python float s = alpha / r
    dropout_x  (..., K) or None: the dropped-out input of the LoRA branch only (as peft)
    returns y  (..., N), dtype of x
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["lora_linear_ref"]


def lora_linear_ref(
    x: torch.Tensor,
    W: torch.Tensor,
    b: Optional[torch.Tensor],
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    dropout_x: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Unfused LoRA linear, computed the way peft does: ``base(x) + B(A(x')) * s``.

    See the module docstring for shapes. Low-precision inputs are computed in their own dtype
    (as peft and ``nn.Linear`` do), so this doubles as the "ref_lowp" of the 2x rule; call it
    with fp32/fp64 copies for a high-precision reference.
    """
    xl = x if dropout_x is None else dropout_x
    y = F.linear(x, W, b)
    return y + F.linear(F.linear(xl, A), B) * scale
