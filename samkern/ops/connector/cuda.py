# SPDX-License-Identifier: Apache-2.0
"""CUDA-extension path of the SAM connector reorder (``time`` / ``freq`` modes).

``samkern._C`` takes raw device pointers, sizes and a stream handle (so it builds without any
torch header); this module does everything torch-side: input checks, output and workspace
allocation, the device guard and the current-stream lookup. The entry points are registered
as ``torch.library`` custom ops with fake (meta) implementations, so they trace under
``torch.compile`` and capture in CUDA graphs (no host syncs).

Shapes: tokens (B, T·F, D); sep (D,); out (B, T·(F+1), D) [time] or (B, F·(T+1), D) [freq];
grad_out like out; grad_tokens like tokens; grad_sep like sep (an empty (0,) tensor when not
requested); workspace (B, D) float32.
"""
from __future__ import annotations

from typing import Tuple

import torch

from samkern.ext import require_ext
from samkern.ops.connector.ref import out_rows

__all__ = ["connector_reorder_fwd_cuda", "connector_reorder_bwd_cuda"]

_DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _check(name: str, t: torch.Tensor) -> None:
    # The kernels index dense row-major memory; the public wrapper already made inputs
    # contiguous, so failing here means an internal caller broke the contract.
    if not t.is_cuda:
        raise ValueError(f"connector_reorder (cuda backend): {name} must be a CUDA tensor, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"connector_reorder (cuda backend): {name} must be contiguous")
    if t.dtype not in _DTYPE_NAME:
        raise ValueError(f"connector_reorder (cuda backend): {name} dtype {t.dtype} is not supported")


@torch.library.custom_op("samkern::connector_reorder_fwd_cuda", mutates_args=())
def connector_reorder_fwd_cuda(
    tokens: torch.Tensor, sep: torch.Tensor, mode: str, n_time: int, n_freq: int
) -> torch.Tensor:
    """tokens (B, T·F, D), sep (D,) -> out (B, out_rows(mode), D) via ``samkern._C``."""
    C = require_ext()
    _check("tokens", tokens)
    _check("sep", sep)
    B, _, D = tokens.shape
    out = torch.empty((B, out_rows(mode, n_time, n_freq), D), dtype=tokens.dtype, device=tokens.device)
    with torch.cuda.device(tokens.device):
        C.connector_reorder_fwd(
            out.data_ptr(), tokens.data_ptr(), sep.data_ptr(), B, n_time, n_freq, D, mode,
            _DTYPE_NAME[tokens.dtype], torch.cuda.current_stream(tokens.device).cuda_stream,
        )
    return out


@connector_reorder_fwd_cuda.register_fake
def _(tokens: torch.Tensor, sep: torch.Tensor, mode: str, n_time: int, n_freq: int) -> torch.Tensor:
    B, _, D = tokens.shape
    return tokens.new_empty((B, out_rows(mode, n_time, n_freq), D))


@torch.library.custom_op("samkern::connector_reorder_bwd_cuda", mutates_args=())
def connector_reorder_bwd_cuda(
    grad_out: torch.Tensor,
    mode: str,
    n_time: int,
    n_freq: int,
    sep_dtype: torch.dtype,
    need_tokens: bool,
    need_sep: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """grad_out (B, out_rows, D) -> (grad_tokens (B, T·F, D) or (0,), grad_sep (D,) or (0,))."""
    C = require_ext()
    _check("grad_out", grad_out)
    if sep_dtype != grad_out.dtype:
        raise ValueError(f"connector_reorder (cuda backend): sep dtype {sep_dtype} != grad dtype {grad_out.dtype}")
    B, _, D = grad_out.shape
    dt = _DTYPE_NAME[grad_out.dtype]
    # Outputs that were not asked for are distinct empty tensors (custom ops may not return
    # one tensor twice).
    grad_tokens = grad_out.new_empty((0,))
    grad_sep = grad_out.new_empty((0,), dtype=sep_dtype)
    with torch.cuda.device(grad_out.device):
        stream = torch.cuda.current_stream(grad_out.device).cuda_stream
        if need_tokens:
            grad_tokens = torch.empty((B, n_time * n_freq, D), dtype=grad_out.dtype, device=grad_out.device)
            C.connector_reorder_bwd_tokens(
                grad_tokens.data_ptr(), grad_out.data_ptr(), B, n_time, n_freq, D, mode, dt, stream
            )
        if need_sep:
            grad_sep = torch.empty((D,), dtype=sep_dtype, device=grad_out.device)
            workspace = torch.empty((B, D), dtype=torch.float32, device=grad_out.device)
            C.connector_reorder_bwd_sep(
                grad_sep.data_ptr(), workspace.data_ptr(), grad_out.data_ptr(), B, n_time, n_freq, D, mode, dt, stream
            )
    return grad_tokens, grad_sep


@connector_reorder_bwd_cuda.register_fake
def _(
    grad_out: torch.Tensor,
    mode: str,
    n_time: int,
    n_freq: int,
    sep_dtype: torch.dtype,
    need_tokens: bool,
    need_sep: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    B, _, D = grad_out.shape
    gt = grad_out.new_empty((B, n_time * n_freq, D)) if need_tokens else grad_out.new_empty((0,))
    gs = grad_out.new_empty((D,), dtype=sep_dtype) if need_sep else grad_out.new_empty((0,), dtype=sep_dtype)
    return gt, gs
