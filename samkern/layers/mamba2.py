# SPDX-License-Identifier: Apache-2.0
"""``Mamba2Block``: a drop-in for ``mamba_ssm.modules.mamba2.Mamba2`` with optional LoRA.

Same constructor arguments and defaults, same parameter names/shapes/init (so a mamba-ssm
state dict loads with ``strict=True`` when ``lora_r == 0``), same ``forward`` / ``step`` /
``allocate_inference_cache`` / ``_get_states_from_cache`` contracts. Composition::

    u (B, L, D) ─ in_proj ─> [z0, x0 | z | xBC | dt]            (LoRA honoured)
    xBC ─ causal depthwise conv (width W) + SiLU ─> [x | B | C]  (resets at seq_idx changes)
    y  = ssd_chunk_scan(x, dt, A=-exp(A_log), B, C, D, z if not rmsnorm, dt_bias, softplus, dt_limit)
    y  = RMSNormGated(y, z)                                     (if rmsnorm)
    y  = [silu(z0) * x0, y]                                     (if d_mlp > 0)
    out = out_proj(y)                                           (LoRA honoured)

Glossary: B batch, L sequence length, D d_model, H nheads, P headdim, N d_state, G ngroups,
W d_conv, ``d_ssm = H * P``, ``conv_dim = d_ssm + 2 * G * N``.

Differences from mamba-ssm (all deliberate, none changes results on shared inputs):

* LoRA on ``in_proj`` / ``out_proj`` is applied on every path. (mamba-ssm's fused
  ``use_mem_eff_path`` reads ``out_proj.weight`` directly and would silently drop an adapter.)
  ``use_mem_eff_path`` is accepted for compatibility; there is one (unfused) path here.
* ``A_log`` and ``D`` are fp32 whatever ``dtype`` is (mamba-ssm casts ``A_log`` to ``dtype``;
  loading a state dict copies the same values either way).
* ``cu_seqlens`` without ``seq_idx`` derives ``seq_idx`` (on device, no sync), so the conv and
  the scan both reset at the packed boundaries. mamba-ssm ignores ``cu_seqlens`` there and
  lets the sequences leak into each other.
* ``step`` applies ``dt_limit`` like the chunked forward does (mamba-ssm's step ignores it),
  and supports ``ngroups > 1`` and ``D_has_hdim`` without the Triton state-update kernel.
* Cached states are updated without autograd history (as mamba-ssm's kernels do).
* Bad inputs raise ``ValueError`` (mamba-ssm uses asserts or fails deep inside a kernel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from samkern.checks import check_cu_seqlens, check_tensor
from samkern.layers.lora_linear import LoRALinear
from samkern.ops.conv1d.function import conv_split
from samkern.ops.conv1d.ref import causal_conv1d_update_ref, causal_conv1d_varlen_states_ref
from samkern.ops.gated_rmsnorm.ref import RMSNormGated

__all__ = ["Mamba2Block", "InferenceParams"]

_LORA_TARGETS = ("in_proj", "out_proj")


@dataclass
class InferenceParams:
    """Minimal stand-in for ``mamba_ssm.utils.generation.InferenceParams`` (same field names):
    ``key_value_memory_dict[layer_idx] = (conv_state (B, conv_dim, W), ssm_state (B, H, P, N))``.
    ``seqlen_offset == 0`` means prefill, ``> 0`` means one-token decode steps."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: Dict[int, Any] = field(default_factory=dict)
    lengths_per_sample: Optional[torch.Tensor] = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


def _seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """(1, L) int32 label of the packed sequence owning each token; device-side, no host sync."""
    pos = torch.arange(length, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True).to(torch.int32).unsqueeze(0)


def _float_pair(name: str, val: Any) -> Tuple[float, float]:
    """``(lo, hi)`` of a constructor's range argument, as floats, or a ValueError naming it."""
    try:
        lo, hi = (float(v) for v in val)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of floats (lo, hi), got {val!r}") from None
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} must not be NaN, got {val!r}")
    return lo, hi


class Mamba2Block(nn.Module):
    """Mamba-2 mixer, drop-in for ``mamba_ssm.modules.mamba2.Mamba2`` (+ LoRA).

    Args (as mamba-ssm): d_model (D), d_state (N), d_conv (W), conv_init, expand, headdim (P),
    d_ssm (None → expand * d_model), ngroups (G), A_init_range, D_has_hdim, rmsnorm,
    norm_before_gate, dt_min, dt_max, dt_init_floor, dt_limit, bias, conv_bias, chunk_size,
    use_mem_eff_path (accepted, ignored), layer_idx, process_group (must be None),
    sequence_parallel (ignored), device, dtype.

    Attribute ``scan_backend`` (default None = automatic) forces the backend of
    :func:`samkern.ops.ssd_chunk_scan`, :func:`samkern.ops.causal_conv1d` and the gated RMSNorm
    (``"ref"`` or ``"triton"``).

    LoRA: ``lora_r`` (0 = none), ``lora_alpha`` (None → 2 * r), ``lora_dropout``, ``lora_on``
    (subset of ``("in_proj", "out_proj")``). Adapted projections are :class:`LoRALinear` with
    frozen base weights (LoRALinear's default); freeze the other block parameters yourself
    if only the adapters should train.

    Parameters: in_proj.weight (2*d_inner + 2*G*N + H, D), conv1d.weight (conv_dim, 1, W),
    conv1d.bias (conv_dim,), dt_bias (H,), A_log (H,) fp32, D (H,) or (d_ssm,) fp32,
    norm.weight (d_ssm,) if rmsnorm, out_proj.weight (D, d_inner); biases if ``bias``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: Optional[float] = None,
        expand: int = 2,
        headdim: int = 64,
        d_ssm: Optional[int] = None,
        ngroups: int = 1,
        A_init_range: Tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: Tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        use_mem_eff_path: bool = True,
        layer_idx: Optional[int] = None,
        process_group: Any = None,
        sequence_parallel: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        lora_r: int = 0,
        lora_alpha: Optional[float] = None,
        lora_dropout: float = 0.0,
        lora_on: Sequence[str] = _LORA_TARGETS,
    ) -> None:
        if process_group is not None:
            raise NotImplementedError("Mamba2Block does not implement tensor parallelism (process_group must be None)")
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.process_group = None
        self.sequence_parallel = sequence_parallel
        self.world_size = 1
        self.local_rank = 0
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.ngroups = ngroups
        for name, val in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                          ("headdim", headdim), ("ngroups", ngroups), ("d_ssm", self.d_ssm),
                          ("chunk_size", chunk_size)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if self.d_ssm > self.d_inner:
            raise ValueError(f"d_ssm ({self.d_ssm}) must be <= expand * d_model ({self.d_inner})")
        if self.d_ssm % headdim != 0:
            raise ValueError(f"d_ssm ({self.d_ssm}) must be a multiple of headdim ({headdim})")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"nheads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        A_init_range = _float_pair("A_init_range", A_init_range)
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range must satisfy 0 < lo <= hi, got {A_init_range!r}")
        dt_limit = _float_pair("dt_limit", dt_limit)
        if not 0.0 <= dt_limit[0] <= dt_limit[1]:
            raise ValueError(f"dt_limit must satisfy 0 <= min <= max, got {dt_limit!r}")
        # dt_bias is drawn log-uniformly in [dt_min, dt_max] (below): both must be positive
        for name, val in (("dt_min", dt_min), ("dt_max", dt_max), ("dt_init_floor", dt_init_floor)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise ValueError(f"{name} must be a finite float, got {val!r}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min!r}, {dt_max!r}")
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx
        # Backend of the SSD scan (None = samkern.backend's choice: Triton on CUDA, else ref).
        self.scan_backend: Optional[str] = None

        lora_on = tuple(lora_on)
        bad = [t for t in lora_on if t not in _LORA_TARGETS]
        if bad:
            raise ValueError(f"lora_on entries must be in {_LORA_TARGETS}, got {bad}")
        if not isinstance(lora_r, int) or isinstance(lora_r, bool) or lora_r < 0:
            raise ValueError(f"lora_r must be a non-negative int, got {lora_r!r}")
        self.lora_r = lora_r
        self.lora_alpha = float(2 * lora_r if lora_alpha is None else lora_alpha)
        self.lora_on = lora_on

        def lora_kw(target: str) -> Dict[str, Any]:
            r = lora_r if target in lora_on else 0
            return dict(r=r, alpha=self.lora_alpha if r > 0 else None, dropout=lora_dropout if r > 0 else 0.0)

        # Creation order and init mirror mamba-ssm, so with lora_r == 0 the same seed draws the
        # same initial weights. In-projection order: [z, x, B, C, dt].
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = LoRALinear(d_model, d_in_proj, bias=bias, **lora_kw("in_proj"), **factory_kwargs)

        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias, **factory_kwargs)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)

        self.act = nn.SiLU()

        # dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored).
        dt = torch.exp(torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        self.dt_bias = nn.Parameter(inv_dt)
        self.dt_bias._no_weight_decay = True

        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))  # fp32 on purpose, see the module docstring
        self.A_log._no_weight_decay = True

        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True

        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory_kwargs)

        self.out_proj = LoRALinear(self.d_inner, d_model, bias=bias, **lora_kw("out_proj"), **factory_kwargs)

    # ----------------------------------------------------------------------------------------
    # helpers

    @property
    def conv_dim(self) -> int:
        return self.d_ssm + 2 * self.ngroups * self.d_state

    def _proj_sizes(self, zxbcdt: torch.Tensor) -> List[int]:
        """Widths of in_proj's output parts z0, x0 (the optional MLP half), z, xBC, dt."""
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        return [d_mlp, d_mlp, self.d_ssm, self.conv_dim, self.nheads]

    def _split_proj(self, zxbcdt: torch.Tensor):
        sizes = self._proj_sizes(zxbcdt)
        return sizes[0], torch.split(zxbcdt, sizes, dim=-1)

    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _check_dtype(self, u: torch.Tensor) -> None:
        w = self.in_proj.weight
        if u.dtype != w.dtype and not torch.is_autocast_enabled(u.device.type):
            raise ValueError(f"input dtype {u.dtype} does not match the block's parameter dtype {w.dtype}")
        if u.device != w.device:
            raise ValueError(f"input is on {u.device} but the block's parameters are on {w.device}")

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight.squeeze(1)  # (conv_dim, W)

    # ----------------------------------------------------------------------------------------
    # forward

    def forward(
        self,
        u: torch.Tensor,
        seqlen: Optional[int] = None,
        seq_idx: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        inference_params: Any = None,
    ) -> torch.Tensor:
        """Run the block.

        Args:
            u: (B, L, D), or (B * L, D) when ``seqlen`` (= L) is given (sequence-parallel layout).
            seqlen: see ``u``.
            seq_idx: (B, L) int32/int64 non-decreasing, non-negative labels of packed sequences;
                the conv and the scan reset where the label changes.
            cu_seqlens: (S + 1,) int cumulative lengths of S packed sequences (batch must be 1).
                Gives ``seq_idx`` when that is None; with ``inference_params`` the cache holds
                one conv/ssm state per sequence.
            inference_params: mamba-ssm ``InferenceParams``-like object (``key_value_memory_dict``,
                ``seqlen_offset``); needs ``layer_idx``. Offset 0: prefill, filling the cached
                states; offset > 0: one-token decode through :meth:`step` (u (B, 1, D)).

        Returns:
            Same shape as ``u``.
        """
        seqlen_og = seqlen
        if seqlen is None:
            check_tensor("u", u, ndim=3)
            batch, seqlen, dim = u.shape
        else:
            check_tensor("u", u, ndim=2)
            if not isinstance(seqlen, int) or seqlen <= 0 or u.shape[0] % seqlen != 0:
                raise ValueError(f"seqlen must be a positive int dividing u.shape[0]={u.shape[0]}, got {seqlen!r}")
            batch, dim = u.shape[0] // seqlen, u.shape[1]
        if dim != self.d_model:
            raise ValueError(f"u must have last dimension d_model={self.d_model}, got shape {tuple(u.shape)}")
        self._check_dtype(u)

        if cu_seqlens is not None:
            check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
        conv_state, ssm_state = None, None
        if inference_params is not None:
            inference_batch = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else batch
            conv_state, ssm_state = self._get_states_from_cache(inference_params, inference_batch)
            if conv_state.shape[0] != inference_batch or ssm_state.shape[0] != inference_batch:
                raise ValueError(
                    f"inference_params holds layer {self.layer_idx}'s states for {conv_state.shape[0]} sequences, "
                    f"but this call has {inference_batch}; use a new InferenceParams for another batch")
            if inference_params.seqlen_offset > 0:
                # Decode: one token per cached sequence; seq_idx / cu_seqlens play no role.
                if seqlen_og is not None:
                    raise ValueError("decode steps (seqlen_offset > 0) take u of shape (B, 1, D), not the flattened form")
                out, _, _ = self.step(u, conv_state, ssm_state)  # states updated in place
                return out

        if seq_idx is not None:
            check_tensor("seq_idx", seq_idx, shape=(batch, seqlen), dtypes=(torch.int32, torch.int64))
        if cu_seqlens is not None:
            if batch != 1:
                raise ValueError(f"cu_seqlens needs the packed layout (batch 1), got batch {batch}")
            check_cu_seqlens(cu_seqlens, seqlen)
            if seq_idx is None:
                seq_idx = _seq_idx_from_cu_seqlens(cu_seqlens, seqlen)

        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj) or (B*L, d_in_proj)
        if seqlen_og is not None:
            zxbcdt = zxbcdt.view(batch, seqlen, -1)
        A = -torch.exp(self.A_log.float())  # (H,), fp32 so an fp16 A_log cannot give -inf
        sizes = self._proj_sizes(zxbcdt)
        d_mlp = sizes[0]

        if conv_state is not None:
            xBC = zxbcdt[..., sum(sizes[:3]):sum(sizes[:4])]  # the raw conv input (B, L, conv_dim)
            xBC_t = xBC.transpose(1, 2)
            with torch.no_grad():
                if cu_seqlens is None:
                    # Last W raw inputs, zero-padded in front when L < W.
                    conv_state.copy_(F.pad(xBC_t, (self.d_conv - seqlen, 0)) if seqlen < self.d_conv
                                     else xBC_t[:, :, seqlen - self.d_conv:])
                else:
                    conv_state.copy_(causal_conv1d_varlen_states_ref(xBC[0], cu_seqlens, self.d_conv))
        # split -> conv of xBC -> split of x, B, C: on CUDA one autograd node whose backward writes
        # d zxbcdt once (no gradient concatenations), the reference composition elsewhere
        gn = self.ngroups * self.d_state
        z0, x0, z, x, B, C, dt = conv_split(zxbcdt, sizes, 3, [self.d_ssm, gn, gn], self._conv_weight(),
                                            self.conv1d.bias, seq_idx=seq_idx, activation=self.activation,
                                            backend=self.scan_backend)

        from samkern.ops import ssd_chunk_scan  # resolved lazily: keeps `import samkern` light

        want_varlen = cu_seqlens is not None and inference_params is not None
        y = ssd_chunk_scan(
            x.reshape(batch, seqlen, self.nheads, self.headdim),
            dt,
            A,
            B.reshape(batch, seqlen, self.ngroups, self.d_state),
            C.reshape(batch, seqlen, self.ngroups, self.d_state),
            self.chunk_size,
            D=self._D(),
            z=None if self.rmsnorm else z.reshape(batch, seqlen, self.nheads, self.headdim),
            dt_bias=self.dt_bias,
            initial_states=None,
            seq_idx=seq_idx,
            cu_seqlens=cu_seqlens,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            return_final_states=ssm_state is not None,
            return_varlen_states=want_varlen,
            backend=self.scan_backend,
        )
        if ssm_state is not None:
            y, last_state, *rest = y
            with torch.no_grad():
                ssm_state.copy_(rest[0] if want_varlen else last_state)
        y = y.reshape(batch, seqlen, self.d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z, backend=self.scan_backend)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        if seqlen_og is not None:
            y = y.reshape(batch * seqlen, -1)
        return self.out_proj(y)

    # ----------------------------------------------------------------------------------------
    # decoding

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode token.

        Args:
            hidden_states: (B, 1, D).
            conv_state: (B, conv_dim, W) last W conv inputs, updated in place.
            ssm_state: (B, H, P, N) SSM state, updated in place.

        Returns:
            ``(out (B, 1, D), conv_state, ssm_state)``.
        """
        from samkern.ops.ssd.ref import ssd_step_ref

        check_tensor("hidden_states", hidden_states, ndim=3)
        if hidden_states.shape[1] != 1:
            raise ValueError(f"step decodes one token at a time: hidden_states must be (B, 1, D), "
                             f"got {tuple(hidden_states.shape)}")
        if hidden_states.shape[2] != self.d_model:
            raise ValueError(f"hidden_states must have last dimension d_model={self.d_model}, "
                             f"got {tuple(hidden_states.shape)}")
        self._check_dtype(hidden_states)
        bsz = hidden_states.shape[0]
        check_tensor("conv_state", conv_state, shape=(bsz, self.conv_dim, None))
        check_tensor("ssm_state", ssm_state, shape=(bsz, self.nheads, self.headdim, self.d_state))
        dtype = hidden_states.dtype

        zxbcdt = self.in_proj(hidden_states.squeeze(1))  # (B, d_in_proj)
        d_mlp, (z0, x0, z, xBC, dt) = self._split_proj(zxbcdt)
        xBC = causal_conv1d_update_ref(xBC, conv_state, self._conv_weight(), self.conv1d.bias,
                                       activation=self.activation).to(dtype)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        # ssd_step_ref does not modify its state; under autograd give it a copy so the in-place
        # cache update below cannot invalidate tensors saved for backward.
        state_in = ssm_state.clone() if torch.is_grad_enabled() else ssm_state
        y, new_state = ssd_step_ref(
            state_in,
            x.reshape(bsz, self.nheads, self.headdim),
            dt,
            A,
            B.reshape(bsz, self.ngroups, self.d_state),
            C.reshape(bsz, self.ngroups, self.d_state),
            D=self._D(),
            z=None if self.rmsnorm else z.reshape(bsz, self.nheads, self.headdim),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
        )
        with torch.no_grad():
            ssm_state.copy_(new_state)
        y = y.reshape(bsz, self.d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z, backend=self.scan_backend)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        out = self.out_proj(y)
        return out.unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: Optional[torch.dtype] = None, **kwargs: Any
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero states: conv_state (B, conv_dim, W) (a transposed view of a (B, W, conv_dim)
        buffer, as mamba-ssm), ssm_state (B, H, P, N)."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=device, dtype=conv_dtype).transpose(1, 2)
        ssm_dtype = self.in_proj.weight.dtype if dtype is None else dtype
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(
        self, inference_params: Any, batch_size: int, initialize_states: bool = False
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.layer_idx is None:
            raise ValueError("inference_params needs the block's layer_idx (the cache key); construct it with layer_idx=...")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            conv_state = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=self.conv1d.weight.device,
                                     dtype=self.conv1d.weight.dtype).transpose(1, 2)
            ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state,
                                    device=self.in_proj.weight.device, dtype=self.in_proj.weight.dtype)
            cache[self.layer_idx] = (conv_state, ssm_state)
        else:
            conv_state, ssm_state = cache[self.layer_idx]
            if initialize_states:
                conv_state.zero_()
                ssm_state.zero_()
        return conv_state, ssm_state
