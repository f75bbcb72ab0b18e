# SPDX-License-Identifier: Apache-2.0
"""Reference (pure PyTorch) SAM connector reorder, its canonical backward, and the index maps.

An EAT audio encoder emits ``T * F`` tokens per clip in time-major order (token ``t * F + f``
for time step ``t < T`` and frequency band ``f < F``; SAM uses T = 64, F = 8, so 512
tokens). The connector lays them out for the language model in one of three ways:

======== ======================= =========================================================
mode     output shape            output row ← source
======== ======================= =========================================================
concat   (B, T, F·D)             row t = tokens t·F … t·F+F−1 concatenated (a pure view)
time     (B, T·(F+1), D)         row t·(F+1)+f ← token t·F+f;  row t·(F+1)+F ← sep
freq     (B, F·(T+1), D)         row f·(T+1)+t ← token t·F+f;  row f·(T+1)+T ← sep
======== ======================= =========================================================

``sep`` (D,) is the language model's embedding of the separator string "&&"; D is the width
of whatever is being reordered (encoder width, or d_model when applied after the MLP).

Backward: ``grad_tokens`` is the inverse gather of ``grad_out``; ``grad_sep`` is the sum of
``grad_out`` over every separator row and every batch element. That sum is the one place
where floating-point order matters; :func:`connector_reorder_bwd_ref` fixes a canonical order
(float32, sequential over separators in output order per batch element, then sequential over
the batch, then one rounding to sep's dtype) that the CUDA and Triton kernels reproduce bit
for bit.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from samkern.checks import FLOAT_DTYPES, check_finite, check_same_device, check_tensor

__all__ = [
    "MODES",
    "connector_reorder_ref",
    "connector_reorder_bwd_ref",
    "reorder_index",
    "out_rows",
    "check_inputs",
]

MODES = ("concat", "time", "freq")


def out_rows(mode: str, n_time: int, n_freq: int) -> int:
    """Rows per batch element of the output of ``time``/``freq`` mode (T for ``concat``)."""
    if mode == "time":
        return n_time * (n_freq + 1)
    if mode == "freq":
        return n_freq * (n_time + 1)
    if mode == "concat":
        return n_time
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def reorder_index(mode: str, n_time: int = 64, n_freq: int = 8) -> torch.Tensor:
    """Source token of every output row of ``time``/``freq`` mode, ``-1`` for a separator row.

    Returns a LongTensor of shape (out_rows,) = (T·(F+1),) or (F·(T+1),). Built with explicit
    loops from the table in the module docstring, independently of the vectorised reference,
    so tests can check one against the other.
    """
    if mode not in ("time", "freq"):
        raise ValueError(f"reorder_index: mode must be 'time' or 'freq', got {mode!r}")
    idx = []
    if mode == "time":
        for t in range(n_time):
            idx.extend(t * n_freq + f for f in range(n_freq))
            idx.append(-1)
    else:
        for f in range(n_freq):
            idx.extend(t * n_freq + f for t in range(n_time))
            idx.append(-1)
    return torch.tensor(idx, dtype=torch.long)


def check_inputs(
    tokens: torch.Tensor, mode: str, sep: Optional[torch.Tensor], n_time: int, n_freq: int
) -> Tuple[int, int, int]:
    """Validate the arguments of the connector reorder; returns (B, T·F, D). Raises ValueError."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, v in (("n_time", n_time), ("n_freq", n_freq)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    check_tensor("tokens", tokens, ndim=3, dtypes=FLOAT_DTYPES)
    B, N, D = tokens.shape
    if N != n_time * n_freq:
        raise ValueError(
            f"tokens must hold n_time * n_freq = {n_time} * {n_freq} = {n_time * n_freq} tokens per clip "
            f"(dim 1), got shape {tuple(tokens.shape)}"
        )
    if sep is None:
        if mode != "concat":
            raise ValueError(f"mode {mode!r} needs the separator embedding sep of shape ({D},), got None")
        return B, N, D
    check_tensor("sep", sep, ndim=1, dtypes=FLOAT_DTYPES)
    if sep.shape[0] != D:
        raise ValueError(f"sep must have the tokens' width D = {D}: expected shape ({D},), got {tuple(sep.shape)}")
    if sep.dtype != tokens.dtype:
        raise ValueError(f"sep dtype {sep.dtype} must match tokens dtype {tokens.dtype}")
    check_same_device(tokens=tokens, sep=sep)
    # sep is a small parameter (D,): a NaN/inf in it would silently poison every clip. The
    # check syncs with the device; it is skipped under CUDA-graph capture and torch.compile.
    check_finite(sep=sep.detach())
    return B, N, D


def connector_reorder_ref(
    tokens: torch.Tensor,
    mode: str,
    sep: Optional[torch.Tensor] = None,
    n_time: int = 64,
    n_freq: int = 8,
) -> torch.Tensor:
    """Reference connector reorder (differentiable through PyTorch autograd).

    Args:
        tokens: (B, T·F, D) time-major encoder tokens, token index t·F + f.
        mode: ``"concat"`` | ``"time"`` | ``"freq"``.
        sep: (D,) separator embedding, same dtype/device as ``tokens``; required for
            ``time``/``freq``, ignored (but validated when given) for ``concat``.
        n_time: T, time steps per clip. n_freq: F, frequency bands per time step.

    Returns:
        ``concat``: (B, T, F·D), a view of ``tokens`` when it is contiguous;
        ``time``:   (B, T·(F+1), D);
        ``freq``:   (B, F·(T+1), D).
    """
    B, _, D = check_inputs(tokens, mode, sep, n_time, n_freq)
    if mode == "concat":
        return tokens.reshape(B, n_time, n_freq * D)
    x = tokens.reshape(B, n_time, n_freq, D)
    if mode == "freq":
        x = x.transpose(1, 2)  # (B, F, T, D)
    groups = x.shape[1]
    s = sep.reshape(1, 1, 1, D).expand(B, groups, 1, D)
    return torch.cat([x, s], dim=2).reshape(B, -1, D)


def connector_reorder_bwd_ref(
    grad_out: torch.Tensor,
    mode: str,
    n_time: int = 64,
    n_freq: int = 8,
    sep_dtype: Optional[torch.dtype] = None,
    need_tokens: bool = True,
    need_sep: bool = True,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Canonical backward of ``time``/``freq`` mode.

    Args:
        grad_out: (B, T·(F+1), D) for ``time`` or (B, F·(T+1), D) for ``freq``.
        sep_dtype: dtype of the returned separator gradient (default: grad_out's).

    Returns:
        grad_tokens: (B, T·F, D) in grad_out's dtype (``None`` unless ``need_tokens``), an
            exact inverse gather.
        grad_sep: (D,) (``None`` unless ``need_sep``): in float32,
            ``partial[b] = ((0 + g[b, s_0]) + g[b, s_1]) + …`` over the separator rows s_k in
            output order, then ``((0 + partial[0]) + partial[1]) + …`` over the batch, then
            one rounding to ``sep_dtype``. Every step is a single IEEE float32 addition, so
            any implementation that keeps this order (the CUDA and Triton kernels do) gets
            the same bits. It differs from ``torch.sum`` (whose order is unspecified) only
            by float32 rounding.
    """
    if mode not in ("time", "freq"):
        raise ValueError(f"connector_reorder_bwd_ref: mode must be 'time' or 'freq', got {mode!r}")
    B, R, D = grad_out.shape
    if R != out_rows(mode, n_time, n_freq):
        raise ValueError(f"grad_out must have {out_rows(mode, n_time, n_freq)} rows for mode {mode!r}, got {R}")
    if mode == "time":
        g = grad_out.reshape(B, n_time, n_freq + 1, D)
        body, seps = g[:, :, :n_freq], g[:, :, n_freq]  # (B, T, F, D), (B, T, D)
        grad_tokens = body.reshape(B, n_time * n_freq, D) if need_tokens else None
    else:
        g = grad_out.reshape(B, n_freq, n_time + 1, D)
        body, seps = g[:, :, :n_time], g[:, :, n_time]  # (B, F, T, D), (B, F, D)
        grad_tokens = body.transpose(1, 2).reshape(B, n_time * n_freq, D) if need_tokens else None
    if grad_tokens is not None:
        grad_tokens = grad_tokens.contiguous()
    grad_sep = None
    if need_sep:
        seps = seps.float()
        acc = torch.zeros(B, D, dtype=torch.float32, device=grad_out.device)
        for s in range(seps.shape[1]):  # sequential over separators, vectorised over (B, D)
            acc = acc + seps[:, s]
        total = torch.zeros(D, dtype=torch.float32, device=grad_out.device)
        for b in range(B):  # then sequential over the batch
            total = total + acc[b]
        grad_sep = total.to(sep_dtype or grad_out.dtype)
    return grad_tokens, grad_sep
