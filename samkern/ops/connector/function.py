# SPDX-License-Identifier: Apache-2.0
"""Public SAM connector reorder with autograd and backend dispatch.

``connector_reorder(tokens, mode, sep=None, n_time=64, n_freq=8, *, backend=None)``:

* ``concat`` -> (B, T, F·D): a reshape (a view of contiguous tokens) in every backend; no
  kernel and no copy is needed for this layout.
* ``time``  -> (B, T·(F+1), D) and ``freq`` -> (B, F·(T+1), D): an autograd.Function whose
  forward/backward run on the backend chosen by :func:`samkern.backend.pick_backend`:
  ``cuda`` (compiled ``samkern._C``, CUDA inputs), else ``triton`` (CUDA inputs), else
  ``ref`` (PyTorch). ``backend="triton"`` with CPU inputs is allowed under the Triton
  interpreter (``TRITON_INTERPRET=1``), which the CPU tests use.

All three backends give identical bits, forward and backward: the gathers copy bits, and the
separator gradient is summed in float32 in one canonical order (see
:func:`samkern.ops.connector.ref.connector_reorder_bwd_ref`) and rounded once.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional, Tuple

import torch

from samkern import inference
from samkern.backend import on_cuda, pick_backend, register
from samkern.ext import REBUILD_COMMAND, ext_status, get_ext, has_ext
from samkern.ops.connector.ref import check_inputs, connector_reorder_bwd_ref, connector_reorder_ref

__all__ = ["connector_reorder"]

OP = "connector_reorder"


@functools.lru_cache(maxsize=None)
def _ext_runs_on(device_index: int) -> Tuple[bool, str]:
    """The extension embeds code for CUDA_ARCHS (SASS + PTX of each, so newer GPUs JIT the
    PTX); a GPU older than the oldest of them cannot run it: decline instead of failing."""
    archs = [int(a) for a in re.findall(r"\d+", str(getattr(get_ext(), "CUDA_ARCHS", "")))]
    major, minor = torch.cuda.get_device_capability(device_index)
    cap = 10 * major + minor
    if archs and cap < min(archs):
        return False, (
            f"samkern._C was built for sm_{min(archs)}+ but device {device_index} is sm_{cap}; "
            f"rebuild with SAMKERN_CUDA_ARCHS={cap} {REBUILD_COMMAND}"
        )
    return True, ""


def _cuda_verifier(*tensors: torch.Tensor) -> Tuple[bool, str]:
    ok, reason = on_cuda(*tensors)
    if not ok:
        return ok, reason
    if not has_ext():
        return False, ext_status()
    return _ext_runs_on(tensors[0].device.index if tensors[0].device.index is not None else 0)


def _triton_verifier(*tensors: torch.Tensor) -> Tuple[bool, str]:
    return on_cuda(*tensors)


register(OP, "cuda", _cuda_verifier)
register(OP, "triton", _triton_verifier)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _forward(which: str, tokens: torch.Tensor, sep: torch.Tensor, mode: str, n_time: int, n_freq: int) -> torch.Tensor:
    if which == "cuda":
        from samkern.ops.connector.cuda import connector_reorder_fwd_cuda

        return connector_reorder_fwd_cuda(tokens, sep, mode, n_time, n_freq)
    if which == "triton":
        from samkern.ops.connector.triton import connector_reorder_fwd_triton

        return connector_reorder_fwd_triton(tokens, sep, mode, n_time, n_freq)
    return connector_reorder_ref(tokens, mode, sep, n_time, n_freq)


def _backward(
    which: str, grad_out: torch.Tensor, mode: str, n_time: int, n_freq: int, sep_dtype: torch.dtype,
    need_tokens: bool, need_sep: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    if which == "cuda":
        from samkern.ops.connector.cuda import connector_reorder_bwd_cuda

        gt, gs = connector_reorder_bwd_cuda(grad_out, mode, n_time, n_freq, sep_dtype, need_tokens, need_sep)
        return (gt if need_tokens else None), (gs if need_sep else None)
    if which == "triton":
        from samkern.ops.connector.triton import connector_reorder_bwd_triton

        return connector_reorder_bwd_triton(grad_out, mode, n_time, n_freq, sep_dtype, need_tokens, need_sep)
    return connector_reorder_bwd_ref(grad_out, mode, n_time, n_freq, sep_dtype, need_tokens, need_sep)


class _ConnectorReorderFn(torch.autograd.Function):
    """tokens (B, T·F, D), sep (D,) -> out (B, T·(F+1) or F·(T+1), D); grads: (B, T·F, D), (D,)."""

    @staticmethod
    def forward(ctx, tokens, sep, mode, n_time, n_freq, which):  # type: ignore[override]
        ctx.cfg = (mode, n_time, n_freq, which, sep.dtype)
        return _forward(which, tokens, sep, mode, n_time, n_freq)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        mode, n_time, n_freq, which, sep_dtype = ctx.cfg
        need_tokens, need_sep = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_tokens, grad_sep = _backward(
            which, grad_out.contiguous(), mode, n_time, n_freq, sep_dtype, need_tokens, need_sep
        )
        return grad_tokens, grad_sep, None, None, None, None


def connector_reorder(
    tokens: torch.Tensor,
    mode: str,
    sep: Optional[torch.Tensor] = None,
    n_time: int = 64,
    n_freq: int = 8,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """SAM connector token reorder (differentiable in ``tokens`` and ``sep``).

    Args:
        tokens: (B, T·F, D) time-major encoder tokens (token t·F + f); float32/float16/bfloat16.
        mode: ``"concat"`` -> (B, T, F·D); ``"time"`` -> (B, T·(F+1), D), ``sep`` after every
            time step; ``"freq"`` -> (B, F·(T+1), D), frequency-major with ``sep`` after every
            frequency band. See ``README.md`` beside this file for the index maps.
        sep: (D,) separator embedding (same dtype and device as ``tokens``); required for
            ``time``/``freq``, ignored for ``concat`` (validated when given).
        n_time: T (default 64). n_freq: F (default 8).
        backend: ``"cuda"`` | ``"triton"`` | ``"ref"`` or ``None`` (best available; see
            :mod:`samkern.backend`).

    Raises:
        ValueError: unknown mode, tokens not (B, T·F, D), empty batch, missing sep, sep width /
            dtype / device mismatch, NaN/inf in sep (checked outside CUDA-graph capture and
            torch.compile; a host sync), or a forced backend that cannot run these inputs.
    """
    B, _, D = check_inputs(tokens, mode, sep, n_time, n_freq)
    if mode == "concat":
        return tokens.reshape(B, n_time, n_freq * D)
    if backend == "triton" and _interpreting() and not tokens.is_cuda:
        which = "triton"  # CPU tensors through the Triton interpreter (tests)
    else:
        which = pick_backend(OP, dict(tokens=tokens, sep=sep), backend)
    return inference.apply(_ConnectorReorderFn, tokens.contiguous(), sep.contiguous(), mode, n_time, n_freq, which)
