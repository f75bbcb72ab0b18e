# SPDX-License-Identifier: Apache-2.0
"""The LoRA backward's rank-r weight gradients on a second CUDA stream, beside the dx GEMM.

    dB = dyᵀ u_s   (N, r)   needs dy and the forward's u_s: can start at once
    dA = g_sᵀ x    (r, K)   needs g_s: can start as soon as g_s exists, before dx

Both are skinny GEMMs (one output dimension r) that cuBLAS runs as split-K kernels on a fraction
of the SMs; on one stream they run after each other and after dx. Forked onto a side stream
they fill SMs the other kernels leave idle (the tails of the dx GEMM's rounds, the split-K
grids' empty SMs). Every fork waits for everything queued on the caller's stream so far
(``side.wait_stream(cur)``), and ``join`` makes the caller's stream wait for the side stream
before the backward returns, so the results are ordered as on one stream and memory reuse stays
safe: outputs are allocated on the caller's stream, and inputs are freed only after the join.
The same kernels compute the same values: results are bitwise those of the one-stream order.

When (``SAMKERN_LORA_OVERLAP``): ``auto`` (default) while a CUDA graph is captured (the fork /
join become parallel branches of the graph at no replay cost) and the dx GEMM is small, M·N·K ≤
``MAX_WORK``; ``1`` always, eager calls included (two event records per fork on the host: eager
LoRA steps at SAM's shapes are bound by host time on the H100 box, ``README.md`` "Eager host
time"); ``0`` never. Why the size bound: in-process A/B at 6144 tokens (graph replays, H100,
``benchmarks/results/dev-runs/s32-call3-lora-overlap-ab.*``) fwd+bwd went −6.0 / −3.6 % at
1536→768 r8 / r256, −2.9 / −1.9 % at 768→3352, −0.8 / −1.4 % at 3072→1536 (M·N·K ≤ 2.9e10), but
−0.8 to +6.5 % at the wide shapes (1536→6448, 2560→10576, 5120→2560; 5120→2560 r256 646 → 688
µs): there the side stream's GEMMs are large and take SMs from the persistent dx kernel, whose
programs then start late.

Order (``SAMKERN_LORA_OVERLAP_ORDER``): ``side`` launches each product at once; ``dx`` defers them
until just after the dx GEMM's launch; ``auto`` (default) defers at ranks above ``FUSE_MAX_R``
(the split path, where dB and dA both wait) and launches at once below. An A/B of the two
(``dev-runs/s32-call6-*``, forks at every size, fwd+bwd against one stream, at once / deferred):
r256 768→3352 −1.7 / −5.0 %, 1536→768 −3.7 / −6.3 %, 3072→1536 −0.8 / −1.2 %, but r8 1536→768
−5.7 / +0.1 % (r8's only fork is dA beside the rank pass's dx). ``auto`` became the default in
session 33 after the graph-capture tests passed with it and a same-process A/B repeated the
gain (``dev-runs/s33-call1-*``: 768→3352 r256 199.5 → 194.3 µs, 1536→768 r256 109.2 → 105.7).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

__all__ = ["SideStream", "defer_for", "overlap_enabled", "side_stream_for"]

_STREAMS: Dict[int, "torch.cuda.Stream"] = {}


MAX_WORK = 2 ** 35  # M·N·K of the dx GEMM up to which "auto" forks (module docstring)


def overlap_enabled(t: torch.Tensor, work: int) -> bool:
    """Whether the backward forks its rank-r gradients for CUDA tensor ``t`` when its dx GEMM is
    ``work`` = M·N·K multiply-adds (module docstring)."""
    if not t.is_cuda:
        return False
    mode = os.environ.get("SAMKERN_LORA_OVERLAP", "auto")
    if mode == "0":
        return False
    return mode == "1" or (work <= MAX_WORK and torch.cuda.is_current_stream_capturing())


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    idx = device.index if device.index is not None else torch.cuda.current_device()
    s = _STREAMS.get(idx)
    if s is None:
        s = _STREAMS[idx] = torch.cuda.Stream(device=idx)
    return s


class SideStream:
    """Matrix products forked onto the device's side stream, joined by :meth:`join`.

    ``defer``: queue each product (its output allocated and an event recorded on the caller's
    stream at :meth:`mm` time) and put it on the side stream only at :meth:`launch`, which the
    backward calls right after launching the dx GEMM, so that the dx kernel's programs reach the
    SMs first (``defer_for`` says when)."""

    def __init__(self, device: torch.device, defer: bool = False) -> None:
        self.cur = torch.cuda.current_stream(device)
        self.side = _side_stream(device)
        self.defer = defer
        self.pending: list = []
        self.forked = False

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` on the side stream, after everything queued so far on the caller's stream."""
        # allocated now, on the caller's stream: a block freed by work queued later on that stream
        # must not go to a product that waits only for what is queued before it
        out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
        if self.defer:
            ev = torch.cuda.Event()
            ev.record(self.cur)
            self.pending.append((ev, a, b, out))
        else:
            self.side.wait_stream(self.cur)
            with torch.cuda.stream(self.side):
                torch.mm(a, b, out=out)
        self.forked = True
        return out

    def launch(self) -> None:
        """Put the deferred products on the side stream (each after its event)."""
        for ev, a, b, out in self.pending:
            self.side.wait_event(ev)
            with torch.cuda.stream(self.side):
                torch.mm(a, b, out=out)
        self.pending.clear()

    def join(self) -> None:
        """The caller's stream waits for every product forked so far."""
        self.launch()
        if self.forked:
            self.cur.wait_stream(self.side)
            self.forked = False


def defer_for(rank: int) -> bool:
    """Whether the forks of a rank-``rank`` backward wait for the dx GEMM's launch
    (``SAMKERN_LORA_OVERLAP_ORDER``, module docstring)."""
    from samkern.ops.lora.triton import FUSE_MAX_R

    order = os.environ.get("SAMKERN_LORA_OVERLAP_ORDER", "auto")
    if order not in ("auto", "side", "dx"):
        raise ValueError(f"SAMKERN_LORA_OVERLAP_ORDER must be auto, side or dx, got {order!r}")
    return order == "dx" or (order == "auto" and rank > FUSE_MAX_R)


def side_stream_for(t: torch.Tensor, work: int, rank: int) -> Optional[SideStream]:
    """A :class:`SideStream` for ``t``'s device when :func:`overlap_enabled`, else None; its
    products deferred per :func:`defer_for`."""
    if not overlap_enabled(t, work):
        return None
    return SideStream(t.device, defer=defer_for(rank))
