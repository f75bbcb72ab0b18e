# SPDX-License-Identifier: Apache-2.0
"""Pure-PyTorch gated (group) RMSNorm, as used at the output of a Mamba-2 block.

Semantics follow mamba-ssm's ``layernorm_gated.rms_norm_ref`` / ``RMSNorm`` (without bias):
the last dimension (N channels) is split into groups of ``group_size`` channels, each group is
divided by its RMS, then scaled by ``weight``; the gate ``silu(z)`` multiplies either the
normalised output (``norm_before_gate=True``) or the input before normalisation
(``norm_before_gate=False``, the Mamba-2 default). Glossary: ``...`` any leading dims, N channels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from samkern.checks import FLOAT_DTYPES, check_same_device, check_tensor

__all__ = ["rmsnorm_gated_ref", "check_rmsnorm_inputs", "RMSNormGated"]

_FLOAT_OR_F64 = FLOAT_DTYPES + (torch.float64,)


def check_rmsnorm_inputs(
    x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor], eps: float, group_size: Optional[int]
) -> int:
    """Metadata checks shared by every backend (``ValueError``); returns the group size."""
    check_tensor("x", x, ndim=range(1, 16), dtypes=_FLOAT_OR_F64)
    n = x.shape[-1]
    check_tensor("weight", weight, shape=(n,), dtypes=_FLOAT_OR_F64)
    if z is not None:
        check_tensor("z", z, shape=tuple(x.shape), dtypes=_FLOAT_OR_F64)
    check_same_device(x=x, weight=weight, z=z)
    if group_size is None:
        group_size = n
    if not isinstance(group_size, int) or group_size <= 0 or n % group_size != 0:
        raise ValueError(f"group_size must be a positive divisor of the channel count {n}, got {group_size!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0.0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    return group_size


def rmsnorm_gated_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    z: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    group_size: Optional[int] = None,
    norm_before_gate: bool = True,
    upcast: bool = True,
) -> torch.Tensor:
    """Gated group RMSNorm.

    Args:
        x: (..., N) input.
        weight: (N,) per-channel scale.
        z: (..., N) gate (same shape as ``x``) or None for a plain (group) RMSNorm.
        eps: added to the mean square before the square root.
        group_size: channels per normalisation group; must divide N. None means one group of N.
        norm_before_gate: True → ``rmsnorm(x) * silu(z)``; False → ``rmsnorm(x * silu(z))``.
        upcast: compute in fp32 (True, default) or in the input precision (weight is always
            used in at least fp32, as in mamba-ssm).

    Returns:
        (..., N) in ``x.dtype``.
    """
    group_size = check_rmsnorm_inputs(x, weight, z, eps, group_size)
    n = x.shape[-1]
    out_dtype = x.dtype
    w = weight.to(torch.promote_types(weight.dtype, torch.float32))
    if upcast:
        cdt = torch.promote_types(x.dtype, torch.float32)
        x = x.to(cdt)
        z = z.to(cdt) if z is not None else None
    if z is not None and not norm_before_gate:
        x = x * F.silu(z)
    xg = x.unflatten(-1, (n // group_size, group_size))  # (..., n_groups, group_size)
    rstd = torch.rsqrt(xg.square().mean(dim=-1, keepdim=True) + eps)
    out = (xg * rstd).flatten(-2) * w
    if z is not None and norm_before_gate:
        out = out * F.silu(z)
    return out.to(out_dtype)


class RMSNormGated(nn.Module):
    """Drop-in for mamba-ssm's ``layernorm_gated.RMSNorm`` (parameter ``weight`` of shape (N,),
    no bias; ``bias`` is registered as None so state dicts match exactly).

    ``forward(x (..., N), z (..., N) or None) -> (..., N)``.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: Optional[int] = None,
        norm_before_gate: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if group_size is not None and (group_size <= 0 or hidden_size % group_size != 0):
            raise ValueError(f"group_size must be a positive divisor of hidden_size {hidden_size}, got {group_size}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
        """``backend``: None (Triton kernel for CUDA inputs, else the reference), "triton" or "ref"."""
        from samkern.ops.gated_rmsnorm.function import rmsnorm_gated

        return rmsnorm_gated(x, self.weight, z=z, eps=self.eps, group_size=self.group_size,
                             norm_before_gate=self.norm_before_gate, backend=backend)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")
