# SPDX-License-Identifier: Apache-2.0
"""Argument validation shared by every public op: one place, one message style.

All failures raise ``ValueError`` naming the argument, what was expected and what came in.
The checks are cheap (metadata only) except :func:`check_finite`, which is meant for small
parameter tensors (A, D, dt_bias, LoRA factors), never for activations on a hot path.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import torch

__all__ = [
    "check_tensor",
    "check_same_device",
    "check_finite",
    "check_cu_seqlens",
    "check_equal_lengths",
    "host_reads_allowed",
    "as_rows",
    "FLOAT_DTYPES",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fmt_shape(shape: Sequence[Optional[int]]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_tensor(
    name: str,
    t: object,
    shape: Optional[Sequence[Optional[int]]] = None,
    ndim: Optional[int | Iterable[int]] = None,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Validate type, rank, shape (``None`` entries are wildcards), dtype and non-emptiness."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {tuple(t.shape)}")
    elif ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); empty batches are not supported")
    return t


def check_same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    """All given (non-None) tensors must live on one device; returns it."""
    devices = {k: v.device for k, v in tensors.items() if v is not None}
    if len(set(devices.values())) > 1:
        raise ValueError("tensors must be on the same device, got " + ", ".join(f"{k}={d}" for k, d in devices.items()))
    return next(iter(devices.values()))


def host_reads_allowed(*tensors: Optional[torch.Tensor]) -> bool:
    """False while tracing for ``torch.compile`` or capturing a CUDA graph on any of ``tensors``:
    then nothing may read device values on the host (nor be cached beyond the capture)."""
    if torch.compiler.is_compiling():
        return False
    return not any(t is not None and t.is_cuda and torch.cuda.is_current_stream_capturing() for t in tensors)


def _sync_checks_allowed(t: torch.Tensor) -> bool:
    """Checks that read tensor values on the host: always on the CPU; on a GPU only when
    ``SAMKERN_SYNC_CHECKS=1`` (a host sync per call would dominate short fused kernels);
    never while tracing for ``torch.compile`` or capturing a CUDA graph."""
    # the cheap tests first: on a GPU without SAMKERN_SYNC_CHECKS (every training step) nothing else
    if t.device.type != "cpu" and os.environ.get("SAMKERN_SYNC_CHECKS", "0") != "1":
        return False
    return host_reads_allowed(t)


def check_finite(**tensors: Optional[torch.Tensor]) -> None:
    """Reject NaN/inf in small parameter tensors (A, D, dt_bias, LoRA factors, separators).

    On the CPU the check always runs. On a GPU it needs a host sync, which would cost more than
    the fused kernels it guards at short sequences, so it runs only when ``SAMKERN_SYNC_CHECKS=1``
    is set (never during CUDA-graph capture or ``torch.compile`` tracing).
    """
    for name, t in tensors.items():
        if t is None or not t.is_floating_point() or not _sync_checks_allowed(t):
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf")


def check_equal_lengths(cu_seqlens: torch.Tensor, seq_len: int) -> None:
    """A caller's promise that every sequence of ``cu_seqlens`` has ``seq_len`` tokens
    (``cu_seqlens == arange(nseq + 1) · seq_len``): ``seq_len`` must be a positive int; the values
    are compared where host reads are allowed (CPU tensors, or GPU with ``SAMKERN_SYNC_CHECKS=1``)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if _sync_checks_allowed(cu_seqlens):
        want = torch.arange(cu_seqlens.shape[0], dtype=torch.int64) * seq_len
        if not torch.equal(cu_seqlens.detach().cpu().to(torch.int64), want):
            raise ValueError(f"seq_len={seq_len} but cu_seqlens is not arange(nseq + 1) * seq_len "
                             "(sequences of different lengths: pass seq_len=None)")


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``cu_seqlens`` must be 1-D integer, start at 0, be non-decreasing and end at ``total``.

    The value checks need the data on the host: they always run for CPU tensors and, for GPU
    tensors, only with ``SAMKERN_SYNC_CHECKS=1`` (shape/dtype checks always run).
    """
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must hold at least 2 entries (0 and the total), got {cu_seqlens.numel()}")
    if not _sync_checks_allowed(cu_seqlens):
        return cu_seqlens
    cu = cu_seqlens.detach().cpu()
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu.tolist()}")
    if int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must end at the packed length {total} (cover the batch), got {int(cu[-1])}")
    return cu_seqlens


def as_rows(t: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """``t`` (..., n) flattened to (rows, n) with unit stride along n (a view when possible, else
    a copy): the layout row-wise kernels take, with any row stride. None stays None."""
    if t is None:
        return None
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()
