# SPDX-License-Identifier: Apache-2.0
"""SAM's audio connector: EAT tokens -> LM input embeddings (arXiv 2509.15680, three designs).

EAT emits N = T·F audio tokens of width E in time-major order (token ``t·F + f``; EAT-base:
T = 64 time patches, F = 8 frequency patches, E = 768). The connector maps them to D
(``d_model`` of the LM) in one of three layouts:

``"concat"``  (a) reorder to (B, T, F·E) (the F frequency tokens of each time step side by
              side), then a 2-layer MLP ``Linear(F·E, H) -> GELU -> Linear(H, D)``
              -> (B, T, D): 64 tokens for EAT-base.
``"time"``    (b) the MLP ``Linear(E, H) -> GELU -> Linear(H, D)`` on each of the T·F tokens,
              then time-major order with the separator after every time step
              -> (B, T·(F+1), D): 576 tokens.
``"freq"``    (c) the same per-token MLP, then frequency-major order with the separator
              after every frequency band -> (B, F·(T+1), D): 520 tokens.

The separator is the LM's own embedding of the string ``"&&"`` (a (D,) vector handed in at
forward time, not a connector parameter), so when the LM embedding is trainable its gradient
flows back into it. The reorder runs *after* the MLP, so the separator is D wide and never
passes through the MLP. The reorder is :func:`samkern.ops.connector_reorder` (fused kernel on
the GPU, differentiable in the tokens and the separator).

Glossary: B batch, T time patches (``n_time``), F frequency patches (``n_freq``), E encoder
width, H MLP hidden width, D LM width.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from samkern.checks import FLOAT_DTYPES, check_tensor

__all__ = ["AudioConnector", "CONNECTOR_TYPES"]

CONNECTOR_TYPES = ("concat", "time", "freq")


class AudioConnector(nn.Module):
    """The SAM connector (see the module docstring for the three layouts).

    Args:
        mode: ``"concat"`` | ``"time"`` | ``"freq"``.
        enc_dim: E, the encoder token width (768 for EAT-base).
        d_model: D, the LM width.
        n_time: T, time patches (64 for EAT-base). n_freq: F, frequency patches (8).
        hidden: H, MLP hidden width (default D).
        backend: forwarded to :func:`samkern.ops.connector_reorder` (None = best available).

    Parameters: ``mlp.0`` Linear(F·E or E, H), ``mlp.2`` Linear(H, D).
    """

    def __init__(
        self,
        mode: str,
        enc_dim: int,
        d_model: int,
        n_time: int = 64,
        n_freq: int = 8,
        hidden: Optional[int] = None,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if mode not in CONNECTOR_TYPES:
            raise ValueError(f"connector mode must be one of {CONNECTOR_TYPES}, got {mode!r}")
        for name, v in (("enc_dim", enc_dim), ("d_model", d_model), ("n_time", n_time), ("n_freq", n_freq)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        hidden = d_model if hidden is None else hidden
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden <= 0:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        self.mode, self.enc_dim, self.d_model = mode, enc_dim, d_model
        self.n_time, self.n_freq, self.hidden = n_time, n_freq, hidden
        self.backend = backend
        d_in = n_freq * enc_dim if mode == "concat" else enc_dim
        fk = dict(device=device, dtype=dtype)
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden, **fk), nn.GELU(), nn.Linear(hidden, d_model, **fk))

    @property
    def needs_separator(self) -> bool:
        """True for ``"time"`` / ``"freq"`` (they interleave the ``"&&"`` embedding)."""
        return self.mode != "concat"

    @property
    def num_output_tokens(self) -> int:
        """Tokens handed to the LM: T (concat), T·(F+1) (time) or F·(T+1) (freq)."""
        T, Fq = self.n_time, self.n_freq
        return {"concat": T, "time": T * (Fq + 1), "freq": Fq * (T + 1)}[self.mode]

    def separator_mask(self, device=None) -> torch.Tensor:
        """(num_output_tokens,) bool, True at the separator positions (all False for concat)."""
        T, Fq = self.n_time, self.n_freq
        if self.mode == "concat":
            return torch.zeros(T, dtype=torch.bool, device=device)
        period = Fq + 1 if self.mode == "time" else T + 1
        idx = torch.arange(self.num_output_tokens, device=device)
        return (idx % period) == period - 1

    def forward(self, tokens: torch.Tensor, sep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Map encoder tokens to LM embeddings.

        Args:
            tokens: (B, T·F, E) time-major encoder tokens (float32/float16/bfloat16).
            sep: (D,) the LM's embedding of the separator string; required for ``"time"`` /
                ``"freq"``, ignored for ``"concat"``. Cast to the MLP output dtype (the cast
                is differentiable, so its gradient still reaches the embedding).

        Returns:
            (B, num_output_tokens, D) in the dtype of the MLP output.

        Raises:
            ValueError: tokens not (B, T·F, E) or empty, missing / mis-shaped sep, NaN in sep,
                or a device mismatch.
        """
        TF = self.n_time * self.n_freq
        check_tensor("tokens", tokens, shape=(None, TF, self.enc_dim), dtypes=FLOAT_DTYPES)
        if tokens.shape[0] == 0:
            raise ValueError("tokens: empty batch (B == 0)")
        from samkern.ops.connector.function import connector_reorder

        B = tokens.shape[0]
        if self.mode == "concat":
            x = connector_reorder(tokens, "concat", None, self.n_time, self.n_freq)  # (B, T, F·E), a view
            return self.mlp(x)
        if sep is None:
            raise ValueError(f"connector mode {self.mode!r} needs the separator embedding `sep` (D,)")
        check_tensor("sep", sep, shape=(self.d_model,), dtypes=FLOAT_DTYPES)
        if sep.device != tokens.device:
            raise ValueError(f"sep is on {sep.device}, tokens on {tokens.device}")
        h = self.mlp(tokens)  # (B, T·F, D): the MLP acts per token
        return connector_reorder(
            h, self.mode, sep.to(h.dtype), self.n_time, self.n_freq, backend=self.backend
        ).reshape(B, self.num_output_tokens, self.d_model)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, enc_dim={self.enc_dim}, d_model={self.d_model}, n_time={self.n_time}, "
            f"n_freq={self.n_freq}, hidden={self.hidden}, out_tokens={self.num_output_tokens}"
        )
