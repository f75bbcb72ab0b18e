# SPDX-License-Identifier: Apache-2.0
"""``LoRALinear``: a drop-in for ``nn.Linear`` carrying a LoRA adapter (peft-compatible).

    y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ,     s = alpha / r

Parameters (K = in_features, N = out_features, r = rank):
    weight  (N, K)      frozen unless ``train_base=True``
    bias    (N,) or None (frozen with the weight)
    lora_A  (r, K)      kaiming-uniform(a=√5), as peft
    lora_B  (N, r)      zeros, as peft (the adapter starts as the identity change)
Input (..., K) → output (..., N). With ``r=0`` the module is exactly an ``nn.Linear``
(same state-dict keys, same forward).

peft interop: :func:`peft_to_samkern_state_dict` / :func:`samkern_to_peft_state_dict` rename
``<m>.base_layer.weight`` ↔ ``<m>.weight``, ``<m>.lora_A.<adapter>.weight`` ↔ ``<m>.lora_A``,
``<m>.lora_B.<adapter>.weight`` ↔ ``<m>.lora_B`` and strip/add the ``base_model.model.`` prefix.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LoRALinear", "peft_to_samkern_state_dict", "samkern_to_peft_state_dict"]

PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Linear):
    """``nn.Linear`` + LoRA adapter; see the module docstring for shapes and semantics.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        r: LoRA rank (0 = no adapter, plain linear).
        alpha: LoRA alpha; default ``2 * r``. The adapter is scaled by ``alpha / r``.
        dropout: dropout probability on the LoRA branch input only (peft's ``lora_dropout``).
        train_base: keep ``weight``/``bias`` trainable (default: frozen, as in LoRA fine-tuning).

    ``merge()`` folds ``s·B A`` into ``weight`` for inference; the state dict still holds the base
    weight and the adapter (so it reloads into any ``LoRALinear`` correctly), and loading a state
    dict leaves the module unmerged. An empty batch gives an empty output, as ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        r: int = 0,
        alpha: Optional[float] = None,
        dropout: float = 0.0,
        train_base: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"r must be a non-negative int, got {r!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite float (or None for 2r), got {alpha!r}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.r = r
        self.alpha = float(2 * r if alpha is None else alpha)
        self.scale = self.alpha / r if r > 0 else 0.0
        self.train_base = train_base
        self.merged = False
        self.backend: Optional[str] = None  # forwarded to samkern.ops.lora_linear (None = auto)
        if r > 0:
            self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
            self.lora_B = nn.Parameter(torch.empty(out_features, r, device=device, dtype=dtype))
            self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.reset_lora_parameters()
            if not train_base:
                self.weight.requires_grad_(False)
                if self.bias is not None:
                    self.bias.requires_grad_(False)
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
            self.lora_dropout = nn.Identity()

    def reset_lora_parameters(self) -> None:
        """peft's default init: A ~ kaiming-uniform(a=√5), B = 0."""
        if self.r > 0:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, r: int, alpha: Optional[float] = None, dropout: float = 0.0, train_base: bool = False
    ) -> "LoRALinear":
        """Wrap an existing ``nn.Linear`` (weights copied; same device and dtype)."""
        w = linear.weight
        m = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, r=r, alpha=alpha,
            dropout=dropout, train_base=train_base, device=w.device, dtype=w.dtype,
        )
        with torch.no_grad():
            m.weight.copy_(w)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m

    def _delta_weight(self) -> torch.Tensor:
        # s·B A in (at least) fp32 so merge/unmerge round-trips to the rounding of the weight dtype
        dt = torch.promote_types(self.weight.dtype, torch.float32)
        return (self.lora_B.to(dt) @ self.lora_A.to(dt)) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``s·B A`` into ``weight``; forward then runs a plain linear."""
        if self.r == 0 or self.merged:
            return
        self.weight.copy_((self._delta_weight() + self.weight).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact up to the rounding of the weight dtype)."""
        if self.r == 0 or not self.merged:
            return
        self.weight.copy_((self.weight - self._delta_weight()).to(self.weight.dtype))
        self.merged = False

    # The state dict always holds the base weight W, merged or not: a merged module's ``weight``
    # is W + s·B A, and saving that next to lora_A / lora_B would apply the update twice when the
    # dict is loaded into an unmerged module (and loading into a merged one would later unmerge
    # a ΔW that the new weights never had). Loading therefore leaves the module unmerged.
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.r > 0 and self.merged:
            with torch.no_grad():
                w, delta = self.weight, self._delta_weight()
                destination[prefix + "weight"] = (w.to(delta.dtype) - delta).to(w.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        self.unmerge()  # the dict holds W (above); a partial dict (adapters only) then fits too
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r == 0 or self.merged:
            return F.linear(x, self.weight, self.bias)
        from samkern.ops.lora.function import lora_linear

        W, b, A, B = self.weight, self.bias, self.lora_A, self.lora_B
        if torch.is_autocast_enabled(x.device.type):
            # nn.Linear follows autocast; the fused op wants one dtype, so cast like autocast would
            dt = torch.get_autocast_dtype(x.device.type)
            x, W, A, B = x.to(dt), W.to(dt), A.to(dt), B.to(dt)
            b = b.to(dt) if b is not None else None
        xd = self.lora_dropout(x) if self.training and isinstance(self.lora_dropout, nn.Dropout) else None
        return lora_linear(x, W, b, A, B, self.scale, dropout_x=xd, backend=self.backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.r > 0:
            p = self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0
            s += f", r={self.r}, alpha={self.alpha:g}, scale={self.scale:g}, dropout={p:g}, train_base={self.train_base}"
            if self.merged:
                s += ", merged=True"
        return s


def _split(key: str):
    """'a.b.c' -> ('a.b', 'c'); 'c' -> ('', 'c')."""
    i = key.rfind(".")
    return (key[:i], key[i + 1 :]) if i >= 0 else ("", key)


def _join(module: str, leaf: str) -> str:
    return f"{module}.{leaf}" if module else leaf


def peft_to_samkern_state_dict(sd: Dict[str, torch.Tensor], adapter_name: str = "default") -> Dict[str, torch.Tensor]:
    """Map a peft LoRA state dict onto samkern ``LoRALinear`` keys.

    Accepts the full model state dict of a ``PeftModel`` (``base_model.model.<m>.base_layer.weight``,
    ``<m>.lora_A.<adapter>.weight``, ...) and the adapter-only dict of
    ``get_peft_model_state_dict`` (``<m>.lora_A.weight``). Keys of other adapters are dropped;
    variants samkern does not implement (DoRA magnitudes, embedding LoRA) raise ``ValueError``.
    """
    out: Dict[str, torch.Tensor] = {}
    others = set()  # adapter names seen besides ``adapter_name``
    for key, v in sd.items():
        k = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        if "lora_magnitude_vector" in k or "lora_embedding_" in k:
            raise ValueError(f"{key}: DoRA / embedding LoRA weights are not supported by samkern.LoRALinear")
        parts = k.split(".")
        if "base_layer" in parts:
            parts.remove("base_layer")
            out[".".join(parts)] = v
            continue
        name = next((p for p in ("lora_A", "lora_B") if p in parts), None)
        if name is None:
            out[k] = v
            continue
        i = parts.index(name)
        tail = parts[i + 1 :]
        if tail == [adapter_name, "weight"] or tail == ["weight"]:
            out[".".join(parts[:i] + [name])] = v
        elif len(tail) == 2 and tail[1] == "weight":
            others.add(tail[0])  # another adapter
        else:
            raise ValueError(f"{key}: unrecognised peft LoRA key")
    if others and not any(_split(k)[1] in ("lora_A", "lora_B") for k in out):
        # a misspelt adapter name would otherwise load no adapter at all, silently
        raise ValueError(f"no LoRA weights for adapter {adapter_name!r}; the state dict holds adapters {sorted(others)}")
    return out


def samkern_to_peft_state_dict(
    sd: Dict[str, torch.Tensor],
    lora_module_names: Optional[Iterable[str]] = None,
    adapter_name: str = "default",
    add_prefix: bool = True,
) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`peft_to_samkern_state_dict` (to a ``PeftModel``'s full state dict).

    ``lora_module_names``: dotted names of the modules peft wraps; default: every module that
    has a ``lora_A`` key (``LoRALinear`` with r=0 has none and stays a plain linear, as in peft).
    """
    if lora_module_names is None:
        mods = {_split(k)[0] for k in sd if _split(k)[1] == "lora_A"}
    else:
        mods = set(lora_module_names)
    out: Dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        mod, leaf = _split(key)
        if mod in mods and leaf in ("weight", "bias"):
            k = _join(mod, f"base_layer.{leaf}")
        elif mod in mods and leaf in ("lora_A", "lora_B"):
            k = _join(mod, f"{leaf}.{adapter_name}.weight")
        else:
            k = key
        out[(PEFT_PREFIX + k) if add_prefix else k] = v
    return out
