# SPDX-License-Identifier: Apache-2.0
"""Backward of the fused Mamba-2 SSD chunked scan: one Triton launch.

Glossary: T total tokens (batch·L, sequences packed back to back), H heads, P headdim,
N d_state, G ngroups (head ``h`` reads B/C group ``h // (H // G)``), Q the internal chunk
(``block_q``), nseq number of sequences, batch rows of ``initial_states``.

Design (mirrors the forward in :mod:`samkern.ops.ssd.fwd`): one program per
(sequence, head, P-block) walks that sequence's internal chunks in REVERSE order, carrying
``dS`` [BLOCK_P, N] (fp32, the gradient of the state *leaving* the current chunk; seeded by
``dfinal_states``). For each chunk it reloads the state *entering* the chunk from
``chunk_states`` (written by the forward), recomputes the chunk's forward quantities
(dt processing, decays, C·Bᵀ) and produces every gradient of the chunk. Per chunk, with
``a = cumsum(dt·A)``, ``L_ts = exp(a_t − a_s)`` (s ≤ t), ``M_ts = (C Bᵀ)_ts L_ts dt_s``,
``w_s = exp(a_last − a_s) dt_s``:

* forward: ``y = M x + exp(a)·(C S_inᵀ) + D x``, ``out = y·silu(z)``,
  ``S_out = exp(a_last) S_in + (w ∘ x)ᵀ B``;
* ``dy = dout·silu(z)``, ``dz = dout·y·silu'(z)``, ``dD = Σ dy∘x``;
* ``dx = Mᵀ dy + D dy + w ∘ (B dSᵀ)``;
* ``dM = dy xᵀ`` (t ≥ s); ``dCB = dM ∘ L ∘ dt_s``; ``dC = dCB B + exp(a) ∘ (dy S_in)``;
  ``dB = dCBᵀ C + w ∘ (x dS)``;
* ``ddt_s`` direct: ``Σ_t dM_ts (CB_ts L_ts) + exp(a_last − a_s)·u_s`` with
  ``u_s = Σ_p x_sp (B dSᵀ)_sp``;
* ``da_t``: ``Σ_s dM_ts M_ts − Σ_{t'} dM_{t's} M_{t's}`` (row minus column sums),
  ``+ exp(a_t) Σ_n C_tn (dy S_in)_tn``, ``− u_t w_t`` and, at the last position,
  ``Σ_s u_s w_s + exp(a_last) Σ dS∘S_in``; then ``ddt += A·revcumsum(da)``,
  ``dA += Σ dt·revcumsum(da)``;
* ``dS ← exp(a_last) dS + (exp(a) ∘ dy)ᵀ C``; at the sequence start ``dS`` is the gradient of
  the initial state (row ``init_idx``).
* dt processing (``dt_raw + dt_bias`` → softplus (linear above 20) → clamp to ``dt_limit``) is
  chained: zero outside the clamp range, times ``sigmoid`` for softplus.

Reductions. Every cross-program sum is linear, so programs emit partials:
dx, dz, dinitial_states are owned by one program (plain stores). ddt is written per P-block
into a (nPB, T, H) fp32 buffer (nPB = cdiv(P, BLOCK_P), 1 at P ≤ 64: then no reduction at all).
dA, ddt_bias, dD are written per (sequence, head, P-block) into one small fp32 buffer and
summed by one torch reduction. dB/dC are summed over the H/G heads of a group and the
P-blocks: with one contributor they are plain stores; otherwise the fast path uses
``tl.atomic_add`` into a zeroed (T, G, N) fp32 buffer, and under
``torch.use_deterministic_algorithms(True)`` each contributor writes its own slice of a
(H/G·nPB, T, G, N) fp32 buffer that torch sums — extra memory 2·(H/G·nPB)·T·G·N·4 bytes and
one read of it (e.g. 2.7b, G=1, B16 L192: 2×126 MB, ≈0.1 ms on an H100), bitwise reproducible.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from samkern.backend import num_sms
from samkern.checks import FLOAT_DTYPES, check_same_device, check_tensor

__all__ = ["ssd_bwd", "BWD_TUNING"]

# Launch overrides read by ``ssd_bwd`` (for tuning sweeps). ``None`` = heuristic.
BWD_TUNING: dict = {"block_p": None, "num_warps": None, "num_stages": None}


def _pick_block_p(P: int, nseq: int, H: int, device: torch.device) -> int:
    bp = BWD_TUNING.get("block_p")
    full = max(16, triton.next_power_of_2(P))
    if bp is not None:
        return max(16, min(int(bp), full))
    bp = min(64, full)
    if device.type != "cuda":
        return bp
    # few (sequence, head) programs (long single sequences): split P so the grid covers the SMs;
    # not below 32, since every extra P-block adds dB/dC contributors
    sms = num_sms(device)
    while bp > 32 and nseq * H * triton.cdiv(P, bp) < sms:
        bp //= 2
    return bp


@triton.jit
def _ssd_bwd_kernel(
    # inputs
    dout_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr,
    cu_ptr, init_ptr, cs_ptr, dfin_ptr,
    # outputs
    dx_ptr, dz_ptr, ddt_ptr, dB_ptr, dC_ptr, red_ptr, dinit_ptr,
    # sizes
    T, H, P, N, G, HPG, NPB, RED_W, HPN, dt_min, dt_max,
    # strides (last dims are contiguous; these are the token / head / group strides)
    s_dout_t, s_dout_h, s_x_t, s_x_h, s_z_t, s_z_h, s_dt_t, s_dt_h,
    s_B_t, s_B_g, s_C_t, s_C_g, s_D_h,
    # meta
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_DFINAL: tl.constexpr, BC_ATOMIC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_p = tl.program_id(2)
    in_ty = x_ptr.dtype.element_ty

    # int64 token indices: token × stride exceeds 2^31 at ~1M tokens
    start = tl.load(cu_ptr + pid_s).to(tl.int64)
    end = tl.load(cu_ptr + pid_s + 1).to(tl.int64)
    n_chunks = ((end - start + BLOCK_Q - 1) // BLOCK_Q).to(tl.int32)
    g = pid_h // HPG

    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp = offs_p < P
    mn = offs_n < N
    mpn = mp[:, None] & mn[None, :]
    causal = offs_q[:, None] >= offs_q[None, :]  # [t, s]: s ≤ t
    causal_t = offs_q[None, :] >= offs_q[:, None]  # [s, t]: s ≤ t
    is_last = offs_q == BLOCK_Q - 1

    A_h = tl.load(A_ptr + pid_h).to(tl.float32)
    if HAS_DT_BIAS:
        bias = tl.load(dtb_ptr + pid_h).to(tl.float32)
    else:
        bias = 0.0
    if HAS_D:
        if D_PER_CHANNEL:
            Dv = tl.load(D_ptr + pid_h * s_D_h + offs_p, mask=mp, other=0.0).to(tl.float32)[None, :]
        else:
            Dv = tl.load(D_ptr + pid_h * s_D_h).to(tl.float32)

    state_off = pid_h.to(tl.int64) * P * N + offs_p[:, None] * N + offs_n[None, :]
    if HAS_DFINAL:
        dS = tl.load(dfin_ptr + pid_s.to(tl.int64) * HPN + state_off, mask=mpn, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    # state entering chunk k of this sequence lives at row start // BLOCK_Q + pid_s + k
    row0 = start // BLOCK_Q + pid_s

    if BC_ATOMIC:
        bc_base = (g * N).to(tl.int64)
    else:
        # each (head-in-group, P-block) owns a slice: deterministic, summed by torch
        slot = (pid_h % HPG) * NPB + pid_p
        bc_base = slot.to(tl.int64) * T * G * N + g * N
    ddt_base = pid_p.to(tl.int64) * T * H + pid_h

    dD_acc = tl.zeros([BLOCK_P], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_Q], dtype=tl.float32)
    dtb_acc = tl.zeros([BLOCK_Q], dtype=tl.float32)

    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        tok = start + c * BLOCK_Q + offs_q  # int64 [Q]
        mq = tok < end
        mqp = mq[:, None] & mp[None, :]
        mqn = mq[:, None] & mn[None, :]

        # ---- dt processing (fp32), masked positions get dt = 0 and contribute nothing
        v = tl.load(dt_ptr + tok * s_dt_t + pid_h * s_dt_h, mask=mq, other=0.0).to(tl.float32) + bias
        if DT_SOFTPLUS:
            dtv = tl.where(v <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))), v)
        else:
            dtv = v
        clamp_ok = (dtv >= dt_min) & (dtv <= dt_max)
        dtv = tl.minimum(tl.maximum(dtv, dt_min), dt_max)
        dtv = tl.where(mq, dtv, 0.0)
        a = tl.cumsum(dtv * A_h, axis=0)
        a_last = tl.sum(tl.where(is_last, a, 0.0), axis=0)
        decay = tl.exp(a)  # exp(a_t)
        to_end = tl.exp(a_last - a)  # exp(a_last − a_s)
        w = to_end * dtv

        # ---- loads
        x = tl.load(x_ptr + tok[:, None] * s_x_t + pid_h * s_x_h + offs_p[None, :], mask=mqp, other=0.0)
        dout = tl.load(dout_ptr + tok[:, None] * s_dout_t + pid_h * s_dout_h + offs_p[None, :], mask=mqp, other=0.0)
        Bm = tl.load(B_ptr + tok[:, None] * s_B_t + g * s_B_g + offs_n[None, :], mask=mqn, other=0.0)
        Cm = tl.load(C_ptr + tok[:, None] * s_C_t + g * s_C_g + offs_n[None, :], mask=mqn, other=0.0)
        S_in = tl.load(cs_ptr + (row0 + c) * HPN + state_off, mask=mpn, other=0.0)
        S_in_lp = S_in.to(in_ty)

        # C Bᵀ and its transpose both from loaded operands (never tl.trans of a dot result:
        # Triton 3.6 miscompiles that on Hopper when the result is cast and fed to another dot)
        CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)  # [t, s]
        CBT = tl.dot(Bm, tl.trans(Cm), input_precision=PREC)  # [s, t]
        L = tl.exp(tl.where(causal, a[:, None] - a[None, :], float("-inf")))  # [t, s]
        LT = tl.exp(tl.where(causal_t, a[None, :] - a[:, None], float("-inf")))  # [s, t]

        # ---- gate
        if HAS_Z:
            zz = tl.load(z_ptr + tok[:, None] * s_z_t + pid_h * s_z_h + offs_p[None, :], mask=mqp, other=0.0).to(tl.float32)
            M = CB * L * dtv[None, :]
            y = tl.dot(M.to(in_ty), x, input_precision=PREC)
            y += decay[:, None] * tl.dot(Cm, tl.trans(S_in_lp), input_precision=PREC)
            if HAS_D:
                y += Dv * x.to(tl.float32)
            sig = tl.sigmoid(zz)
            dout32 = dout.to(tl.float32)
            dz = dout32 * y * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + tok[:, None] * (H * P) + pid_h * P + offs_p[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mqp)
            dy = dout32 * zz * sig
        else:
            dy = dout.to(tl.float32)
        dy_lp = dy.to(in_ty)
        dS_lp = dS.to(in_ty)

        # ---- dx = Mᵀ dy + D dy + w ∘ (B dSᵀ)
        MT = CBT * LT * dtv[:, None]  # [s, t]
        BdS = tl.dot(Bm, tl.trans(dS_lp), input_precision=PREC)  # [s, p]
        dx = tl.dot(MT.to(in_ty), dy_lp, input_precision=PREC) + w[:, None] * BdS
        if HAS_D:
            dx += Dv * dy
            dD_acc += tl.sum(dy * x.to(tl.float32), axis=0)
        tl.store(dx_ptr + tok[:, None] * (H * P) + pid_h * P + offs_p[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mqp)

        # ---- dM = dy xᵀ and its transpose (again both from loaded operands)
        dM = tl.dot(dy_lp, tl.trans(x), input_precision=PREC)  # [t, s]
        dMT = tl.dot(x, tl.trans(dy_lp), input_precision=PREC)  # [s, t]
        GL = dM * CB * L  # dM_ts·CB_ts·L_ts = ∂/∂dt_s through M (zero above the diagonal: L = 0)
        R = GL * dtv[None, :]  # dM_ts·M_ts
        ddt_dir = tl.sum(GL, axis=0)
        da = tl.sum(R, axis=1) - tl.sum(R, axis=0)

        # ---- dC = dCB B + exp(a) ∘ (dy S_in)
        dCB = dM * L * dtv[None, :]
        dyS = tl.dot(dy_lp, S_in_lp, input_precision=PREC)  # [t, n]
        dC = tl.dot(dCB.to(in_ty), Bm, input_precision=PREC) + decay[:, None] * dyS
        da += decay * tl.sum(Cm.to(tl.float32) * dyS, axis=1)

        # ---- dB = dCBᵀ C + w ∘ (x dS)
        dCBT = dMT * LT * dtv[:, None]
        xdS = tl.dot(x, dS_lp, input_precision=PREC)  # [s, n]
        dB = tl.dot(dCBT.to(in_ty), Cm, input_precision=PREC) + w[:, None] * xdS

        # ---- state path's dt / decay terms
        u = tl.sum(x.to(tl.float32) * BdS, axis=1)  # Σ_{p,n} x_sp B_sn dS_pn
        ddt_dir += u * to_end
        uw = u * w
        da -= uw
        da_last = tl.sum(uw, axis=0) + tl.exp(a_last) * tl.sum(tl.sum(dS * S_in, axis=1), axis=0)
        da += tl.where(is_last, da_last, 0.0)

        # ---- cumsum backward, then chain through clamp / softplus / bias
        rc = tl.cumsum(da, axis=0, reverse=True)
        ddt_pre = ddt_dir + A_h * rc
        dA_acc += dtv * rc
        ddt_pre = tl.where(clamp_ok & mq, ddt_pre, 0.0)
        if DT_SOFTPLUS:
            ddt_pre = tl.where(v <= 20.0, ddt_pre * tl.sigmoid(v), ddt_pre)
        dtb_acc += ddt_pre
        tl.store(ddt_ptr + ddt_base + tok * H, ddt_pre, mask=mq)

        bc_off = bc_base + tok[:, None] * (G * N) + offs_n[None, :]
        if BC_ATOMIC:
            tl.atomic_add(dB_ptr + bc_off, dB, mask=mqn, sem="relaxed")
            tl.atomic_add(dC_ptr + bc_off, dC, mask=mqn, sem="relaxed")
        else:
            tl.store(dB_ptr + bc_off, dB, mask=mqn)
            tl.store(dC_ptr + bc_off, dC, mask=mqn)

        # ---- carry the state gradient into the previous chunk
        dS = tl.exp(a_last) * dS + tl.dot(tl.trans((dy * decay[:, None]).to(in_ty)), Cm, input_precision=PREC)

    if HAS_INIT:
        idx = tl.load(init_ptr + pid_s)
        # a scalar branch, not a mixed scalar/block mask: Triton 3.9's interpreter rejects the latter
        if idx >= 0:
            tl.store(dinit_ptr + idx.to(tl.int64) * HPN + state_off, dS, mask=mpn)

    # small per-program partials: [dD (P) | dA (NPB) | ddt_bias (NPB)] per (sequence, head)
    red_base = (pid_s.to(tl.int64) * H + pid_h) * RED_W
    if HAS_D:
        tl.store(red_ptr + red_base + offs_p, dD_acc, mask=mp)
    tl.store(red_ptr + red_base + P + pid_p, tl.sum(dA_acc, axis=0))
    tl.store(red_ptr + red_base + P + NPB + pid_p, tl.sum(dtb_acc, axis=0))


def _last_contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # the kernel takes token/head strides but needs a unit stride in the last dim
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


def ssd_bwd(
    dout: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    cu_seqlens: torch.Tensor,
    init_idx: Optional[torch.Tensor],
    chunk_states: torch.Tensor,
    block_q: int,
    *,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = (0.0, float("inf")),
    dfinal_states: Optional[torch.Tensor] = None,
    block_p: Optional[int] = None,
) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of the flat (packed) SSD chunked scan.

    Args (T tokens, H heads, P headdim, N d_state, G groups, nseq sequences):
        dout: (T, H, P) gradient of the scan output.
        x: (T, H, P); dt: (T, H) raw (before ``dt_bias``/softplus/clamp); A: (H,);
        B, C: (T, G, N) with H % G == 0.
        cu_seqlens: (nseq+1,) int32 token offsets of the sequences (start 0, end T).
        init_idx: (nseq,) int32, row of ``initial_states`` seeding each sequence or -1
            (None allowed without ``initial_states``). Rows must be distinct (each row seeds
            at most one sequence).
        chunk_states: (T // block_q + nseq, H, P, N) fp32, the state entering each internal
            chunk; sequence i's k-th chunk at row ``cu[i] // block_q + i + k``.
        block_q: internal chunk length used by the forward (power of two ≥ 16).
        D: (H,) or (H, P); z: (T, H, P); dt_bias: (H,); initial_states: (batch, H, P, N).
        dt_softplus, dt_limit: dt processing, as in the forward.
        dfinal_states: (nseq, H, P, N) gradient of each sequence's final state, or None.
        block_p: P-block override (power of two ≥ 16), for tests; default ``BWD_TUNING`` /
            heuristic.

    Returns:
        ``(dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states)`` in the dtypes of the
        matching inputs (None where the input was None); accumulation is fp32.
    """
    check_tensor("dout", dout, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    T, H, P = x.shape
    check_tensor("dout", dout, shape=(T, H, P))
    check_tensor("dt", dt, shape=(T, H))
    if not dt.is_floating_point():
        raise ValueError(f"dt must be a float tensor, got {dt.dtype}")
    check_tensor("A", A, shape=(H,))
    check_tensor("B", B, ndim=3, dtypes=(x.dtype,))
    G, N = B.shape[1], B.shape[2]
    check_tensor("B", B, shape=(T, G, N))
    check_tensor("C", C, shape=(T, G, N), dtypes=(x.dtype,))
    if H % G != 0:
        raise ValueError(f"nheads ({H}) must be a multiple of ngroups ({G})")
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,))
    nseq = cu_seqlens.shape[0] - 1
    if nseq < 1:
        raise ValueError("cu_seqlens must hold at least 2 entries (one sequence)")
    if init_idx is None:
        if initial_states is not None:
            raise ValueError("init_idx is required when initial_states is given")
        init_idx = cu_seqlens  # dummy, never read (HAS_INIT is off)
    else:
        check_tensor("init_idx", init_idx, shape=(nseq,), dtypes=(torch.int32,))
    if not isinstance(block_q, int) or block_q < 16 or block_q & (block_q - 1):
        raise ValueError(f"block_q must be a power of two >= 16, got {block_q!r}")
    check_tensor("chunk_states", chunk_states, shape=(T // block_q + nseq, H, P, N), dtypes=(torch.float32,))
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        if D.shape not in ((H,), (H, P)):
            raise ValueError(f"D must have shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(T, H, P), dtypes=FLOAT_DTYPES)
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(H,))
    if initial_states is not None:
        check_tensor("initial_states", initial_states, ndim=4)
        if tuple(initial_states.shape[1:]) != (H, P, N):
            raise ValueError(f"initial_states must have shape (batch, {H}, {P}, {N}), got {tuple(initial_states.shape)}")
    if dfinal_states is not None:
        check_tensor("dfinal_states", dfinal_states, shape=(nseq, H, P, N), dtypes=FLOAT_DTYPES)
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f"dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    check_same_device(dout=dout, x=x, dt=dt, A=A, B=B, C=C, cu_seqlens=cu_seqlens, init_idx=init_idx,
                      chunk_states=chunk_states, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                      dfinal_states=dfinal_states)

    dout, x, z, B, C = (_last_contig(t) for t in (dout, x, z, B, C))
    chunk_states = chunk_states.contiguous()
    if dfinal_states is not None:
        dfinal_states = dfinal_states.contiguous()
    if D is not None:
        D = D.contiguous()
    dev = x.device

    BLOCK_N = max(16, triton.next_power_of_2(N))
    if block_p is None:
        block_p = _pick_block_p(P, nseq, H, dev)
    if block_p < 16 or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two >= 16, got {block_p!r}")
    BLOCK_P = block_p
    NPB = triton.cdiv(P, BLOCK_P)
    HPG = H // G
    n_slots = HPG * NPB
    deterministic = torch.are_deterministic_algorithms_enabled()
    bc_atomic = n_slots > 1 and not deterministic

    dx = torch.empty((T, H, P), device=dev, dtype=x.dtype)
    dz = torch.empty((T, H, P), device=dev, dtype=z.dtype) if z is not None else dx  # dummy when no z
    ddt_part = torch.empty((NPB, T, H), device=dev, dtype=torch.float32)
    if bc_atomic:
        dB32 = torch.zeros((1, T, G, N), device=dev, dtype=torch.float32)
        dC32 = torch.zeros((1, T, G, N), device=dev, dtype=torch.float32)
    else:
        dB32 = torch.empty((n_slots, T, G, N), device=dev, dtype=torch.float32)
        dC32 = torch.empty((n_slots, T, G, N), device=dev, dtype=torch.float32)
    red_w = P + 2 * NPB
    red = torch.empty((nseq, H, red_w), device=dev, dtype=torch.float32)
    if initial_states is not None:
        # rows that seed no sequence get a zero gradient
        dinit = torch.zeros((initial_states.shape[0], H, P, N), device=dev, dtype=torch.float32)
    else:
        dinit = chunk_states  # dummy, never written

    dummy = x
    grid = (nseq, H, NPB)
    num_warps = BWD_TUNING.get("num_warps") or (8 if block_q * max(BLOCK_P, BLOCK_N) >= 64 * 64 else 4)
    num_stages = BWD_TUNING.get("num_stages") or 2
    _ssd_bwd_kernel[grid](
        dout, x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy,
        cu_seqlens, init_idx, chunk_states, dfinal_states if dfinal_states is not None else chunk_states,
        dx, dz, ddt_part, dB32, dC32, red, dinit,
        T, H, P, N, G, HPG, NPB, red_w, H * P * N, float(dt_limit[0]), float(dt_limit[1]),
        dout.stride(0), dout.stride(1), x.stride(0), x.stride(1),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        dt.stride(0), dt.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        (D.stride(0) if D is not None else 0),
        HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), HAS_INIT=initial_states is not None,
        HAS_DFINAL=dfinal_states is not None, BC_ATOMIC=bc_atomic,
        PREC="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_Q=block_q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
        num_warps=num_warps, num_stages=num_stages,
    )

    ddt = ddt_part[0] if NPB == 1 else ddt_part.sum(0)
    dB = dB32[0] if dB32.shape[0] == 1 else dB32.sum(0)
    dC = dC32[0] if dC32.shape[0] == 1 else dC32.sum(0)
    red_sum = red.sum(0)  # (H, red_w): one reduction over sequences for all the small grads
    dA = red_sum[:, P:P + NPB].sum(-1)
    dD = None
    if D is not None:
        dD = red_sum[:, :P] if D.dim() == 2 else red_sum[:, :P].sum(-1)
        dD = dD.to(D.dtype)
    ddt_bias = red_sum[:, P + NPB:].sum(-1).to(dt_bias.dtype) if dt_bias is not None else None
    dinitial = dinit.to(initial_states.dtype) if initial_states is not None else None
    return (
        dx,
        ddt.to(dt.dtype),
        dA.to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD,
        dz if z is not None else None,
        ddt_bias,
        dinitial,
    )
