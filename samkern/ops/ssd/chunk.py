# SPDX-License-Identifier: Apache-2.0
"""Public Mamba-2 SSD chunked scan, ``mamba_chunk_scan_combined``-compatible.

``ssd_chunk_scan`` validates, packs the batch into the flat form the fused Triton kernels use
(x (T, H, P), dt (T, H), B/C (T, G, N), sequences given by ``cu_seqlens`` (nseq + 1,) int32 and
``init_idx`` (nseq,) int32) and runs the forward/backward kernels of :mod:`samkern.ops.ssd.fwd`
and :mod:`samkern.ops.ssd.bwd` through :class:`SSDChunkScanFunction` (eager) or the
``samkern::ssd_fwd`` / ``samkern::ssd_bwd`` custom ops (under ``torch.compile``).

Sequence boundaries (T = batch * L):

* plain batch: every row is one sequence, ``cu = arange(batch + 1) * L`` (built on device, no
  host sync, CUDA-graph capturable);
* batch 1 with ``seq_idx`` and ``cu_seqlens``: ``cu_seqlens`` is used as is (no host sync, graph
  capturable). Its consistency with ``seq_idx`` is checked where value checks run (CPU, or
  ``SAMKERN_SYNC_CHECKS=1``); an inconsistent one is ignored (seq_idx wins, as in the reference,
  which reads ``cu_seqlens`` only for ``return_varlen_states``) or, with
  ``return_varlen_states``, rejected;
* ``seq_idx`` without a usable ``cu_seqlens``: boundaries are where ``seq_idx`` changes and at row
  starts; deriving them needs a host sync (``nonzero``), so this path is *not* CUDA-graph
  capturable. Pass ``cu_seqlens`` too (batch 1) to avoid it;
* ``cu_seqlens`` without ``seq_idx`` describes one sequence per row (several sequences need
  ``seq_idx``, as in mamba-ssm and the reference).

``initial_states[b]`` seeds the first sequence of row b (mamba-ssm semantics; with ``seq_idx``
only when the row starts with ``seq_idx == 0``, as mamba-ssm does), later sequences start from 0.
The user's ``chunk_size`` is validated but does not change the math: chunking is an exact
reformulation of the recurrence, and the kernels pick their own internal chunk length.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from samkern import inference
from samkern.backend import pick_backend, register, triton_float_verifier
from samkern.checks import FLOAT_DTYPES, _sync_checks_allowed, check_same_device, check_tensor, host_reads_allowed
from samkern.ops.ssd import split as split_mod

__all__ = ["ssd_chunk_scan", "SSDChunkScanFunction"]

_INF = float("inf")



# --------------------------------------------------------------------------------------------
# validation and packing
# --------------------------------------------------------------------------------------------
_X_DTYPES = FLOAT_DTYPES + (torch.float64,)  # fp64 is accepted and routed to the reference


def _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
              dt_limit, return_varlen_states) -> None:
    """Metadata checks (no host sync), the same rules and messages as the reference's validator."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    check_tensor("x", x, ndim=4, dtypes=_X_DTYPES)
    batch, L, H, P = x.shape
    check_tensor("dt", dt, shape=(batch, L, H), dtypes=_X_DTYPES)
    check_tensor("A", A, shape=(H,), dtypes=_X_DTYPES)
    check_tensor("B", B, ndim=4, dtypes=_X_DTYPES)
    if tuple(B.shape[:2]) != (batch, L):
        raise ValueError(f"B must have shape ({batch}, {L}, G, N), got {tuple(B.shape)}")
    G, N = B.shape[2], B.shape[3]
    if H % G != 0:
        raise ValueError(f"the number of heads H={H} must be a multiple of ngroups G={G} (B shape {tuple(B.shape)})")
    check_tensor("C", C, shape=tuple(B.shape), dtypes=_X_DTYPES)
    if B.dtype != x.dtype or C.dtype != x.dtype:
        raise ValueError(f"B and C must have the dtype of x ({x.dtype}), got B {B.dtype}, C {C.dtype}")
    if D is not None:
        check_tensor("D", D, ndim=(1, 2), dtypes=_X_DTYPES)
        if tuple(D.shape) not in ((H,), (H, P)):
            raise ValueError(f"D must have shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(batch, L, H, P), dtypes=(x.dtype,))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(H,), dtypes=_X_DTYPES)
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(batch, H, P, N), dtypes=_X_DTYPES)
    if not isinstance(dt_softplus, bool):
        raise ValueError(f"dt_softplus must be a bool, got {type(dt_softplus).__name__}")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"dt_limit must be a pair of floats (min, max), got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not 0.0 <= lo <= hi:
        raise ValueError(f"dt_limit must satisfy 0 <= min <= max, got {dt_limit!r}")
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, shape=(batch, L), dtypes=(torch.int32, torch.int64))
    if cu_seqlens is not None:  # (before its shape is read below)
        check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    if return_varlen_states:
        if cu_seqlens is None:
            raise ValueError("return_varlen_states=True requires cu_seqlens")
        if seq_idx is None and cu_seqlens.shape[0] > 2:
            raise ValueError("return_varlen_states with several sequences requires seq_idx marking them")
        if batch != 1:
            raise ValueError(f"return_varlen_states needs packed sequences in a batch of 1 (as mamba-ssm), got batch {batch}")
    if cu_seqlens is not None:
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 entries (0 and the total), got {cu_seqlens.numel()}")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                      seq_idx=seq_idx, cu_seqlens=cu_seqlens if return_varlen_states else None)



def _value_checks(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, use_cu,
                  dt_softplus, dt_limit, return_varlen_states) -> bool:
    """Value checks folded into ONE device reduction and ONE host sync: finite A/D/dt_bias, A <= 0,
    seq_idx non-negative and non-decreasing and, where cu_seqlens is used, cu_seqlens valid (0 ...
    L, strictly increasing) and consistent with seq_idx. On failure the reference's validator
    re-runs the checks to raise its precise ValueError. Project policy (``samkern.checks``): always
    on the CPU; on a GPU only with ``SAMKERN_SYNC_CHECKS=1``; never during CUDA-graph capture or
    torch.compile tracing (inputs are then trusted: a ``cu_seqlens`` given with ``seq_idx`` is used).

    Returns whether ``cu_seqlens`` may describe the sequences: without ``return_varlen_states`` the
    reference ignores ``cu_seqlens``, so an inconsistent one is not an error, just not used."""
    if not _sync_checks_allowed(A):
        return use_cu
    ok = torch.isfinite(A).all() & (A <= 0).all()
    if D is not None:
        ok = ok & torch.isfinite(D).all()
    if dt_bias is not None:
        ok = ok & torch.isfinite(dt_bias).all()
    if seq_idx is not None:
        ok = ok & (seq_idx >= 0).all() & (seq_idx[:, 1:] >= seq_idx[:, :-1]).all()
    cu_ok = ok
    if use_cu or return_varlen_states:
        L = x.shape[1]
        cu = cu_seqlens.to(torch.int64)
        cu_ok = (cu[0] == 0) & (cu[-1] == L) & (cu[1:] > cu[:-1]).all()
        if seq_idx is not None:
            # seq_idx must change exactly at the inner cu_seqlens boundaries
            change = torch.zeros(L, dtype=torch.bool, device=seq_idx.device)
            change[1:] = seq_idx[0, 1:] != seq_idx[0, :-1]
            at_cu = torch.zeros(L, dtype=torch.bool, device=seq_idx.device)
            at_cu[cu[1:-1].clamp(0, L - 1)] = True
            cu_ok = cu_ok & (change == at_cu).all()
    base_ok, cu_fine = torch.stack([ok, cu_ok]).tolist()  # the one host sync
    if base_ok and cu_fine:
        return use_cu
    if base_ok and not return_varlen_states:
        return False  # cu_seqlens unused by the semantics: derive the sequences from seq_idx
    from samkern.ops.ssd.ref import _validate_scan

    _validate_scan(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_limit,
                   return_varlen_states)
    raise ValueError("ssd_chunk_scan: invalid values in A, D, dt_bias, seq_idx or cu_seqlens")


def _lastdim_contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


_SEQ_CACHE: dict = {}


def _sequences(batch: int, L: int, device, seq_idx, cu_seqlens, use_cu: bool):
    """(cu (nseq+1,) int32, init_idx (nseq,) int32, last_idx (batch,) int64): the packed sequence
    boundaries, which ``initial_states`` row seeds each sequence (-1: none), and the last
    sequence of every batch row (its final state is the row's ``final_states``).

    ``initial_states[b]`` carries the label 0: it seeds row b's first sequence only if that
    sequence is labelled 0 (mamba-ssm's behaviour); without seq_idx it always does."""
    if use_cu:  # batch 1, cu_seqlens consistent with seq_idx (checked): no host sync
        cu = cu_seqlens.to(torch.int32)
        nseq = cu.shape[0] - 1
        init_idx = torch.full((nseq,), -1, dtype=torch.int32, device=device)
        init_idx[0] = torch.where(seq_idx[0, 0] == 0, 0, -1).to(torch.int32)
        last = torch.full((1,), nseq - 1, dtype=torch.int64, device=device)
        return cu, init_idx, last
    if seq_idx is None:
        # constant per (batch, L, device): cached, which saves three tiny launches per call in eager
        key = (batch, L, str(device))
        hit = _SEQ_CACHE.get(key)
        if hit is None:
            cu = torch.arange(batch + 1, dtype=torch.int32, device=device) * L
            init_idx = torch.arange(batch, dtype=torch.int32, device=device)
            last = torch.arange(batch, dtype=torch.int64, device=device)
            hit = (cu, init_idx, last)
            # never cache tensors made during graph capture (they live in the graph's memory pool)
            # or while tracing (fake tensors)
            if host_reads_allowed(cu):
                if len(_SEQ_CACHE) > 64:
                    _SEQ_CACHE.clear()
                _SEQ_CACHE[key] = hit
        return hit
    # seq_idx only: a new sequence starts at every row start and wherever seq_idx changes (host sync).
    new = torch.ones((batch, L), dtype=torch.bool, device=device)
    new[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    starts = new.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([starts, starts.new_full((1,), batch * L)]).to(torch.int32)
    row = (starts // L).to(torch.int32)
    ok = ((starts % L) == 0) & (seq_idx.reshape(-1)[starts] == 0)
    init_idx = torch.where(ok, row, torch.full_like(row, -1))
    # last sequence of row b = (number of sequences starting before (b + 1) * L) - 1
    row_ends = torch.arange(1, batch + 1, device=device, dtype=starts.dtype) * L
    last = torch.searchsorted(starts, row_ends) - 1
    return cu, init_idx, last.to(torch.int64)


# --------------------------------------------------------------------------------------------
# autograd (eager path)
# --------------------------------------------------------------------------------------------
def _bwd_module():
    from samkern.ops.ssd import bwd

    return bwd


class SSDChunkScanFunction(torch.autograd.Function):
    """The eager autograd path. Inputs in the public shapes: x (batch, L, H, P), dt (batch, L, H),
    A (H,), B/C (batch, L, G, N), D (H,)/(H, P) or None, z (batch, L, H, P) or None, dt_bias (H,)
    or None, initial_states (batch, H, P, N) or None; cu (nseq+1,) int32, init_idx (nseq,) int32.
    ``seq_len``: L when every sequence is a whole row (no seq_idx), which lets the backward balance
    its chunk kernel's grid (``bwd.ssd_bwd``), else None.
    Returns out (batch, L, H, P) and the fp32 state after every sequence (nseq, H, P, N) (an empty
    tensor unless ``want_final``).

    The flattening to the kernels' (T, ...) form happens inside ``forward`` and the gradients are
    reshaped back inside ``backward``: no autograd view nodes, which saves the engine five
    ``ViewBackward`` nodes per call in eager short-sequence training (host time, not GPU time)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, cu, init_idx, dt_softplus, dt_limit,
                want_final, block_q, split, seq_len=None):
        from samkern.ops.ssd.bwd import dt_cache
        from samkern.ops.ssd.fwd import FWD_TUNING, ssd_fwd

        shapes = (x.shape, dt.shape, B.shape, z.shape if z is not None else None)
        xf, dtf, Bf, Cf, zf = _flatten(x, dt, B, C, z)
        need_grad = any(ctx.needs_input_grad[:9])
        seg_states = seg_decay = None
        # the dt processing, kept for the backward's kernels (fwd.py, "The dt cache")
        dtc = None
        if split:  # plain rows in segments (samkern/ops/ssd/split.py); the backward runs in that layout
            dtc = xf.new_empty((3,) + dtf.shape[::-1], dtype=torch.float32) if need_grad else None
            res = split_mod.ssd_fwd_split(
                xf, dtf, A, Bf, Cf, x.shape[0], x.shape[1], split, D=D, z=zf, dt_bias=dt_bias,
                initial_states=initial_states, dt_softplus=dt_softplus, dt_limit=dt_limit,
                want_final_states=want_final, block_q=block_q, want_chunk_states=need_grad, dt_cache_out=dtc)
            out, final, cstates, bq = res.out, res.final, res.chunk_states, res.block_q
            cu, init_idx, seg_states, seg_decay = res.cu, res.seg_idx, res.seg_states, res.seg_decay
        else:
            dtc_in = None
            if FWD_TUNING.get("dt_prep") != "forward":
                # the dt cache by a launch of its own, read by the forward: the dt gather, softplus and
                # cumulative sum leave the forward's critical path (README, "dt processing")
                dtc_in = dt_cache(dtf, A, dt_bias, cu, block_q=block_q, dt_softplus=dt_softplus, dt_limit=dt_limit,
                                  seq_len=seq_len or 0)
                dtc = dtc_in if need_grad else None
            elif need_grad:  # the forward stores it
                dtc = xf.new_empty((3,) + dtf.shape[::-1], dtype=torch.float32)
            out, final, cstates, bq = ssd_fwd(
                xf, dtf, A, Bf, Cf, cu, init_idx, D=D, z=zf, dt_bias=dt_bias, initial_states=initial_states,
                dt_softplus=dt_softplus, dt_limit=dt_limit, want_chunk_states=need_grad,
                want_final_states=want_final, block_q=block_q, dt_cache_out=dtc if dtc_in is None else None,
                dt_cache_in=dtc_in, skip_unread_rows=True)  # cstates stay private to this function and its backward
        if final is None:
            final = x.new_empty((0,), dtype=torch.float32)
        if need_grad:
            ctx.save_for_backward(xf, dtf, A, Bf, Cf, D, zf, dt_bias, initial_states, cu, init_idx, cstates,
                                  seg_states, seg_decay, dtc)
            ctx.split = split
            ctx.bq = bq
            ctx.dt_softplus = dt_softplus
            ctx.dt_limit = dt_limit
            ctx.shapes = shapes
            ctx.seq_len = seq_len
        ctx.set_materialize_grads(False)
        if not want_final:
            ctx.mark_non_differentiable(final)
        return out.view(x.shape), final

    @staticmethod
    def backward(ctx, dout, dfinal):
        (x, dt, A, B, C, D, z, dt_bias, initial_states, cu, init_idx, cstates, seg_states,
         seg_decay, dtc) = ctx.saved_tensors
        x_shape, dt_shape, B_shape, z_shape = ctx.shapes
        if dout is None:
            dout = torch.zeros_like(x)
        else:
            dout = dout.reshape(x.shape)
        if dfinal is not None and dfinal.numel() == 0:
            dfinal = None
        if ctx.split:
            fwd = split_mod.SplitForward(None, None, cstates, seg_states, cu, init_idx, ctx.bq, seg_decay, dtc)
            grads = split_mod.ssd_bwd_split(
                dout, x, dt, A, B, C, x_shape[0], x_shape[1], ctx.split, fwd, D=D, z=z, dt_bias=dt_bias,
                initial_states=initial_states, dt_softplus=ctx.dt_softplus, dt_limit=ctx.dt_limit,
                dfinal_states=dfinal)
        else:
            grads = _bwd_module().ssd_bwd(
                dout, x, dt, A, B, C, cu, init_idx, cstates, ctx.bq, D=D, z=z, dt_bias=dt_bias,
                initial_states=initial_states, dt_softplus=ctx.dt_softplus, dt_limit=ctx.dt_limit,
                dfinal_states=dfinal, validate=False, dt_cache_in=dtc, seq_len=ctx.seq_len)
        dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = grads
        return (dx.view(x_shape), ddt.view(dt_shape), dA, dB.view(B_shape), dC.view(B_shape), dD,
                dz.view(z_shape) if dz is not None else None, ddt_bias, dinit,
                None, None, None, None, None, None, None, None)


def _flatten(x, dt, B, C, z):
    """The kernels' flat views (T = batch * L): x/z (T, H, P), dt (T, H), B/C (T, G, N); a copy
    only where the last dimension is strided."""
    batch, L, H, P = x.shape
    T = batch * L
    G, N = B.shape[2], B.shape[3]
    return (_lastdim_contig(x.reshape(T, H, P)), dt.reshape(T, H), _lastdim_contig(B.reshape(T, G, N)),
            _lastdim_contig(C.reshape(T, G, N)), _lastdim_contig(z.reshape(T, H, P)) if z is not None else None)


# --------------------------------------------------------------------------------------------
# custom ops (torch.compile path)
# --------------------------------------------------------------------------------------------
def _empty(ref: torch.Tensor) -> torch.Tensor:
    return ref.new_empty((0,), dtype=torch.float32)


@torch.library.custom_op("samkern::ssd_fwd", mutates_args=())
def _ssd_fwd_op(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    cu: torch.Tensor, init_idx: Optional[torch.Tensor], D: Optional[torch.Tensor], z: Optional[torch.Tensor],
    dt_bias: Optional[torch.Tensor], initial_states: Optional[torch.Tensor], dt_softplus: bool,
    dt_min: float, dt_max: float, want_chunk: bool, want_final: bool, block_q: int, seq_len: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (T, H, P), final (nseq, H, P, N) fp32 or empty, chunk_states (fwd.chunk_state_dtype) or empty).
    ``seq_len``: every sequence's length when they are all equal (``ssd_bwd(seq_len=...)``), else 0;
    not used here, kept for the registered backward."""
    from samkern.ops.ssd.fwd import ssd_fwd

    out, final, cstates, _ = ssd_fwd(
        x, dt, A, B, C, cu, init_idx, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
        dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max), want_chunk_states=want_chunk,
        want_final_states=want_final, block_q=block_q)
    return out, final if final is not None else _empty(x), cstates if cstates is not None else _empty(x)


@_ssd_fwd_op.register_fake
def _(x, dt, A, B, C, cu, init_idx, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
      want_chunk, want_final, block_q, seq_len=0):
    T, H, P = x.shape
    N = B.shape[2]
    nseq = cu.shape[0] - 1
    out = x.new_empty((T, H, P))
    final = x.new_empty((nseq, H, P, N), dtype=torch.float32) if want_final else _empty(x)
    if want_chunk:
        from samkern.ops.ssd.fwd import chunk_state_dtype

        cst = x.new_empty((T // block_q + nseq, H, P, N), dtype=chunk_state_dtype(x.dtype))
    else:
        cst = _empty(x)
    return out, final, cst


@torch.library.custom_op("samkern::ssd_bwd", mutates_args=())
def _ssd_bwd_op(
    dout: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    cu: torch.Tensor, init_idx: Optional[torch.Tensor], chunk_states: torch.Tensor, block_q: int,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
    initial_states: Optional[torch.Tensor], dt_softplus: bool, dt_min: float, dt_max: float,
    dfinal: Optional[torch.Tensor], seq_len: int = 0,
) -> List[torch.Tensor]:
    """[dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states]; an empty tensor where the input is None.
    ``seq_len`` > 0: every sequence has that many tokens (``ssd_bwd(seq_len=...)``)."""
    grads = _bwd_module().ssd_bwd(
        dout, x, dt, A, B, C, cu, init_idx, chunk_states, block_q, D=D, z=z, dt_bias=dt_bias,
        initial_states=initial_states, dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max), dfinal_states=dfinal,
        validate=False, seq_len=seq_len if seq_len > 0 else None)
    # custom-op outputs may not be views nor alias each other (ssd_bwd returns dA and ddt_bias as
    # views of one reduction, the cheap form for eager calls): fresh tensors here
    return [_empty(x) if g is None else (g if _owns_storage(g) else g.clone()) for g in grads]


def _owns_storage(t: torch.Tensor) -> bool:
    # (``_base`` is not set below the autograd dispatch key, where custom ops run)
    return t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()


@_ssd_bwd_op.register_fake
def _(dout, x, dt, A, B, C, cu, init_idx, chunk_states, block_q, D, z, dt_bias, initial_states, dt_softplus,
      dt_min, dt_max, dfinal, seq_len=0):
    like = [x, dt, A, B, C, D, z, dt_bias, initial_states]
    return [torch.empty_like(t) if t is not None else _empty(x) for t in like]


def _fwd_setup_context(ctx, inputs, output):
    (x, dt, A, B, C, cu, init_idx, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
     want_chunk, want_final, block_q, seq_len) = inputs
    ctx.save_for_backward(x, dt, A, B, C, cu, init_idx, D, z, dt_bias, initial_states, output[2])
    ctx.cfg = (dt_softplus, dt_min, dt_max, block_q, want_chunk, seq_len)


def _fwd_backward(ctx, dout, dfinal, dchunk):
    x, dt, A, B, C, cu, init_idx, D, z, dt_bias, initial_states, cstates = ctx.saved_tensors
    dt_softplus, dt_min, dt_max, block_q, want_chunk, seq_len = ctx.cfg
    if not want_chunk:
        raise RuntimeError("samkern::ssd_fwd was called with want_chunk=False; it cannot be differentiated")
    if dout is None:
        dout = torch.zeros_like(x)
    if dfinal is not None and dfinal.numel() == 0:
        dfinal = None
    g = _ssd_bwd_op(dout, x, dt, A, B, C, cu, init_idx, cstates, block_q, D, z, dt_bias, initial_states,
                    dt_softplus, dt_min, dt_max, dfinal, seq_len)
    opt = [D, z, dt_bias, initial_states]
    dD, dz, ddt_bias, dinit = [gi if t is not None else None for gi, t in zip(g[5:], opt)]
    return (g[0], g[1], g[2], g[3], g[4], None, None, dD, dz, ddt_bias, dinit,
            None, None, None, None, None, None, None)


_ssd_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
register("ssd_chunk_scan", "triton", triton_float_verifier)


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = (0.0, _INF),
    return_final_states: bool = False,
    return_varlen_states: bool = False,
    *,
    backend: Optional[str] = None,
):
    """Mamba-2 SSD chunked scan with ``mamba_chunk_scan_combined``'s arguments and returns.

    Args:
        x: (batch, L, H, P). dt: (batch, L, H). A: (H,). B, C: (batch, L, G, N), dtype of x.
        chunk_size: positive int (mamba-ssm's chunk length; accepted for compatibility, the
            result does not depend on it).
        D: (H,) or (H, P). z: (batch, L, H, P) gate, ``out *= silu(z)``. dt_bias: (H,).
        initial_states: (batch, H, P, N), seeds the first sequence of each row.
        seq_idx: (batch, L) int, sequence id per token (state resets where it changes).
        cu_seqlens: (nseq + 1,) int, packed sequence boundaries (batch must be 1). As in
            mamba-ssm, the sequences themselves come from ``seq_idx``: ``cu_seqlens`` gives the
            states of ``return_varlen_states`` (and, consistent with ``seq_idx``, saves deriving
            the boundaries); without ``seq_idx`` it only serves ``return_varlen_states``.
        dt_softplus: apply softplus to dt + dt_bias (identity above 20). dt_limit: clamp of dt.
        return_final_states: also return the fp32 state after the last sequence of every row,
            (batch, H, P, N). return_varlen_states: also return the state after every sequence
            of ``cu_seqlens``, (nseq, H, P, N) fp32 (mamba-ssm returns C's dtype; fp32 like the
            reference).
        backend: "triton" or "ref" (default: triton for CUDA inputs, else the reference).

    Returns:
        out (batch, L, H, P) in x's dtype; ``(out, final_states)``, ``(out, varlen_states)`` or
        ``(out, final_states, varlen_states)`` depending on the two flags (mamba-ssm's convention).
    """
    _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
              dt_limit, return_varlen_states)
    which = pick_backend("ssd_chunk_scan", (x, dt, A, B, C), backend)
    if which == "ref":
        from samkern.ops.ssd.ref import ssd_chunk_scan_ref

        return ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                  initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                                  dt_softplus=dt_softplus, dt_limit=dt_limit,
                                  return_final_states=return_final_states,
                                  return_varlen_states=return_varlen_states)
    if which != "triton":
        raise ValueError(f"ssd_chunk_scan has no {which!r} backend")

    batch, L, H, P = x.shape
    T = batch * L
    # cu_seqlens describes the seq_idx boundaries without a host sync (batch 1, checked consistent)
    use_cu = cu_seqlens is not None and batch == 1 and seq_idx is not None
    use_cu = _value_checks(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, use_cu,
                           dt_softplus, dt_limit, return_varlen_states)
    cu, init_idx, last = _sequences(batch, L, x.device, seq_idx, cu_seqlens, use_cu)
    want_final = bool(return_final_states or return_varlen_states)
    import samkern.ops.ssd.fwd as fwd_mod

    need_grad = inference.needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states)
    block_q = fwd_mod.default_block_q(T, cu.shape[0] - 1, x.dtype)
    if need_grad:
        block_q = min(block_q, fwd_mod.TRAIN_BLOCK_Q)

    compiling = torch.compiler.is_compiling()
    split = 0
    if seq_idx is None and not return_varlen_states and not compiling:
        # few long rows: segments in parallel, stitched exactly (see samkern/ops/ssd/split.py)
        split = split_mod.pick_split_len(batch, L, H, P, B.shape[-1], block_q, x.device)
        split = int(split) if split and L >= 2 * split else 0
    if split and not need_grad:
        xf, dtf, Bf, Cf, zf = _flatten(x, dt, B, C, z)
        out, final = split_mod.ssd_fwd_split(
            xf, dtf, A, Bf, Cf, batch, L, split, D=D, z=zf, dt_bias=dt_bias, initial_states=initial_states,
            dt_softplus=bool(dt_softplus), dt_limit=(float(dt_limit[0]), float(dt_limit[1])),
            want_final_states=want_final, block_q=block_q)[:2]
    elif compiling:
        xf, dtf, Bf, Cf, zf = _flatten(x, dt, B, C, z)
        out, final, _ = _ssd_fwd_op(xf, dtf, A, Bf, Cf, cu, init_idx, D, zf, dt_bias, initial_states,
                                    bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]), need_grad,
                                    want_final, block_q, L if seq_idx is None else 0)
    else:
        args = (x, dt, A, B, C, D, z, dt_bias, initial_states, cu, init_idx, bool(dt_softplus),
                (float(dt_limit[0]), float(dt_limit[1])), want_final, block_q, split,
                L if seq_idx is None else None)  # equal-length rows: the backward can balance its grid
        # (without gradients the Function's forward runs without its node: samkern.inference)
        out, final = (SSDChunkScanFunction.apply(*args) if need_grad
                      else inference.forward_only(SSDChunkScanFunction, *args))
    if out.dim() == 3:  # the flat paths (split, compiled); the eager Function returns x's shape
        out = out.view(batch, L, H, P)
    if not (return_final_states or return_varlen_states):
        return out
    res = [out]
    if return_final_states:
        res.append(final.index_select(0, last))
    if return_varlen_states:
        res.append(final)  # fp32, like final_states and the reference (mamba-ssm: C's dtype)
    return tuple(res)
