# SPDX-License-Identifier: Apache-2.0
"""The Mamba-2 language model of SAM: a drop-in for mamba-ssm's ``MambaLMHeadModel``.

Structure (parameter names equal mamba-ssm's, so its state dict loads strictly)::

    backbone.embedding            nn.Embedding(V_pad, D)
    backbone.layers.{i}.norm      RMSNorm(D)                 (pre-norm)
    backbone.layers.{i}.mixer     samkern.layers.mamba2.Mamba2Block (LoRA args passed through)
    backbone.norm_f               RMSNorm(D)
    lm_head                       nn.Linear(D, V_pad, bias=False), tied to the embedding

Residual stream (mamba-ssm ``Block`` with ``residual_in_fp32``): for every layer
``residual = h + residual`` (kept in fp32), ``h = mixer(norm(residual))``; at the end
``logits = lm_head(norm_f(h + residual))``. The norms read the fp32 residual directly and
return the weight dtype, which is what mamba-ssm's fused add+norm kernel computes (the
unfused mamba-ssm path first rounds the residual to the weight dtype; the two agree in fp32).

Glossary: B batch, L sequence length, D model width (``d_model``), V_pad padded vocabulary
(``vocab_size`` rounded up to ``pad_vocab_size_multiple``), H heads, P headdim, N d_state,
G ngroups, W conv width (``d_conv``).

Decoding uses a constant-size recurrent state per layer (conv state (B, conv_dim, W) and SSM
state (B, H, P, N)), independent of the generated length: :meth:`MambaLM.prefill` fills it
from a full forward, :meth:`MambaLM.step` advances it one token.
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from samkern.checks import FLOAT_DTYPES, check_cu_seqlens, check_tensor
from samkern.models.sam import checkpoint as ckpt

__all__ = ["MambaLMConfig", "MambaLM", "InferenceParams", "RMSNorm", "PRESETS"]

_INT_DTYPES = (torch.int64, torch.int32)
_LORA_MARK = "lora_"  # LoRA parameters (LoRALinear.lora_A / lora_B) are never part of a base checkpoint

# (d_model, n_layer) of the state-spaces/mamba2-* checkpoints; all use the Mamba2 defaults below
_PRESET_SIZES = {
    "130m": (768, 24),
    "370m": (1024, 48),
    "780m": (1536, 48),
    "1.3b": (2048, 48),
    "2.7b": (2560, 64),
}
_PRESET_SSM = {"layer": "Mamba2", "d_state": 128, "headdim": 64, "expand": 2, "ngroups": 1, "chunk_size": 256}
PRESETS = tuple(_PRESET_SIZES) + ("tiny",)


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
def _json_float(x: Any) -> float:
    """A float from JSON: a number, a string ("Infinity", "inf") or transformers' encoding of
    non-finite floats (``{"__float__": "Infinity"}``, written by ``Mamba2Config.save_pretrained``)."""
    if isinstance(x, dict) and "__float__" in x:
        x = x["__float__"]
    try:
        return float(x)
    except (TypeError, ValueError):
        raise ValueError(f"expected a float in the config, got {x!r}") from None


@dataclass
class MambaLMConfig:
    """Model configuration; the fields are mamba-ssm's ``MambaConfig`` (``config.json`` format).

    ``ssm_cfg`` holds the ``Mamba2Block`` constructor arguments plus ``"layer": "Mamba2"``
    (mamba-ssm reads a missing ``layer`` as Mamba1, which samkern does not implement).
    ``fused_add_norm`` is accepted and ignored (samkern always computes the fused semantics).
    ``norm_epsilon`` is a samkern extension (mamba-ssm hard-codes 1e-5): the eps of every
    RMSNorm, including the mixer's gated norm, as HF's ``layer_norm_epsilon`` is.
    """

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=lambda: {"layer": "Mamba2"})
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 16
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.d_intermediate != 0:
            raise ValueError(f"d_intermediate must be 0 (samkern has no MLP blocks), got {self.d_intermediate}")
        if self.attn_layer_idx:
            raise ValueError(f"attn_layer_idx must be empty (samkern has no attention layers), got {self.attn_layer_idx}")
        if not isinstance(self.ssm_cfg, dict):
            raise ValueError(f"ssm_cfg must be a dict, got {type(self.ssm_cfg).__name__}")
        self.ssm_cfg = dict(self.ssm_cfg)  # own copy: normalising dt_limit below must not touch the caller's dict
        layer = self.ssm_cfg.get("layer", "Mamba1")
        if layer != "Mamba2":
            raise ValueError(
                f"ssm_cfg['layer'] is {layer!r} (mamba-ssm's default for a missing key is 'Mamba1'); "
                "only 'Mamba2' is supported: add \"layer\": \"Mamba2\" to ssm_cfg"
            )
        if not (isinstance(self.norm_epsilon, (int, float)) and self.norm_epsilon > 0):
            raise ValueError(f"norm_epsilon must be a positive float, got {self.norm_epsilon!r}")
        if "dt_limit" in self.ssm_cfg:
            # JSON has no tuples; the mixer compares dt_limit against a tuple
            self.ssm_cfg["dt_limit"] = tuple(_json_float(x) for x in self.ssm_cfg["dt_limit"])

    # -- derived --------------------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        """``vocab_size`` rounded up to a multiple of ``pad_vocab_size_multiple`` (V_pad)."""
        m = self.pad_vocab_size_multiple
        return ((self.vocab_size + m - 1) // m) * m

    def mixer_kwargs(self) -> Dict[str, Any]:
        """``ssm_cfg`` without the ``layer`` tag: the ``Mamba2Block`` constructor arguments."""
        kw = dict(self.ssm_cfg)
        kw.pop("layer", None)
        return kw

    # -- presets ----------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MambaLMConfig":
        """The state-spaces/mamba2-{130m,370m,780m,1.3b,2.7b} configs, or ``"tiny"`` for tests.

        ``overrides`` replace fields (e.g. ``n_layer=2``); an ``ssm_cfg`` override is merged
        into the preset's.
        """
        if name in _PRESET_SIZES:
            d_model, n_layer = _PRESET_SIZES[name]
            base: Dict[str, Any] = dict(
                d_model=d_model, n_layer=n_layer, vocab_size=50277, ssm_cfg=dict(_PRESET_SSM), pad_vocab_size_multiple=16
            )
        elif name == "tiny":
            base = dict(
                d_model=64,
                n_layer=2,
                vocab_size=512,
                ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "expand": 2, "ngroups": 1, "chunk_size": 16},
                pad_vocab_size_multiple=16,
            )
        else:
            raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
        ssm_over = overrides.pop("ssm_cfg", None)
        if ssm_over:
            base["ssm_cfg"] = {**base["ssm_cfg"], **ssm_over}
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config fields in overrides: {sorted(unknown)}")
        base.update(overrides)
        return cls(**base)

    # -- mamba-ssm config.json --------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The ``config.json`` dict. ``norm_epsilon`` is written only when it differs from
        mamba-ssm's fixed 1e-5, so a default config stays loadable by ``MambaConfig(**d)``."""
        d = asdict(self)
        d["ssm_cfg"] = copy.deepcopy(self.ssm_cfg)
        if "dt_limit" in d["ssm_cfg"]:
            d["ssm_cfg"]["dt_limit"] = list(d["ssm_cfg"]["dt_limit"])
        if self.norm_epsilon == 1e-5:
            d.pop("norm_epsilon")
        return d

    def to_json(self, path: Optional[str] = None) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` (a file, or a directory →
        ``path/config.json``) when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            if os.path.isdir(path):
                path = os.path.join(path, ckpt.CONFIG_NAME)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, src: Union[str, Dict[str, Any]]) -> "MambaLMConfig":
        """Build from a mamba-ssm ``config.json`` (a path to the file or its directory, a JSON
        string, or an already-parsed dict). Unknown keys are an error (a typo must not silently
        fall back to a default)."""
        if isinstance(src, dict):
            d = dict(src)
        elif isinstance(src, str) and src.lstrip().startswith("{"):
            d = json.loads(src)
        elif isinstance(src, str):
            d = ckpt.read_config(src)
        else:
            raise ValueError(f"from_json takes a path, a JSON string or a dict, got {type(src).__name__}")
        if ckpt.detect_format(d) != "mamba_ssm":
            raise ValueError("this is an HF Mamba2Config; use MambaLMConfig.from_hf_config")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown keys in mamba-ssm config: {unknown}")
        if "ssm_cfg" in d:
            d["ssm_cfg"] = dict(d["ssm_cfg"])
        return cls(**d)

    # -- HF transformers Mamba2Config -------------------------------------------------------
    @classmethod
    def from_hf_config(cls, hf: Any) -> "MambaLMConfig":
        """Translate an HF ``Mamba2Config`` (object or dict) into the mamba-ssm form.

        HF semantics that samkern reproduces with this mapping:

        * the gated norm groups: HF normalises ``n_groups`` groups of size
          ``intermediate/n_groups`` (as mamba-ssm's ``group_size = d_ssm // ngroups``);
        * ``layer_norm_epsilon`` is the eps of the block norms, ``norm_f`` **and** the mixer's
          gated norm (mamba-ssm hard-codes 1e-5 for all) → ``norm_epsilon``;
        * HF always gates before normalising and always uses RMSNorm: ``norm_before_gate`` and
          ``rms_norm`` keys (present in older configs) are ignored by HF's model and here;
        * ``time_step_limit`` → ``dt_limit``; HF clamps dt in the chunked forward but not in the
          single-token step (mamba-ssm's step does not either), so a non-default limit is only
          reproduced exactly for the full forward;
        * ``time_step_rank`` / ``time_step_min/max/floor`` only affect initialisation.
        """
        if hasattr(hf, "to_dict"):
            hf = hf.to_dict()
        if not isinstance(hf, dict):
            raise ValueError(f"from_hf_config takes a Mamba2Config or a dict, got {type(hf).__name__}")
        if ckpt.detect_format(hf) != "hf":
            raise ValueError("this is a mamba-ssm MambaConfig; use MambaLMConfig.from_json")
        need = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in hf]
        if need:
            raise ValueError(f"HF Mamba2 config is missing {need}")

        def num(key: str, default: Any = None, kind: type = int) -> Any:
            # int("sixty") / int(None) errors do not say which key: name it
            v = hf.get(key, default)
            try:
                return kind(v)
            except (TypeError, ValueError):
                raise ValueError(f"HF Mamba2 config: {key} must be a number, got {v!r}") from None

        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"hidden_act must be 'silu' (the Mamba2 conv activation), got {act!r}")
        hidden, expand = num("hidden_size"), num("expand", 2)
        head_dim = num("head_dim", 64)
        if "num_heads" in hf and num("num_heads") * head_dim != expand * hidden:
            raise ValueError(
                f"inconsistent HF config: num_heads * head_dim = {hf['num_heads']} * {head_dim} "
                f"!= expand * hidden_size = {expand} * {hidden}"
            )
        ssm: Dict[str, Any] = {
            "layer": "Mamba2",
            "d_state": num("state_size", 128),
            "d_conv": num("conv_kernel", 4),
            "expand": expand,
            "headdim": head_dim,
            "ngroups": num("n_groups", 8),
            "chunk_size": num("chunk_size", 256),
            "bias": bool(hf.get("use_bias", False)),
            "conv_bias": bool(hf.get("use_conv_bias", True)),
        }
        limit = tuple(_json_float(x) for x in hf.get("time_step_limit", (0.0, float("inf"))))
        if limit != (0.0, float("inf")):
            ssm["dt_limit"] = limit
        return cls(
            d_model=hidden,
            n_layer=num("num_hidden_layers"),
            vocab_size=num("vocab_size"),
            ssm_cfg=ssm,
            rms_norm=True,
            residual_in_fp32=bool(hf.get("residual_in_fp32", True)),
            pad_vocab_size_multiple=16,
            # transformers >= 5 defaults tie_word_embeddings to False for Mamba2
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            norm_epsilon=num("layer_norm_epsilon", 1e-5, float),
        )


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x², -1) + eps) * weight``, computed in fp32.

    Input (..., D) of any float dtype (the fp32 residual stream included); output (..., D) in
    the weight dtype (mamba-ssm's fused add+norm semantics). Parameter: ``weight`` (D,).
    """

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(self.weight.dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with the same fp32-compute / weight-dtype-output contract as :class:`RMSNorm`
    (for ``rms_norm=False`` configs; parameters ``weight``, ``bias`` as mamba-ssm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(self.weight.dtype)


def _mixer_cls():
    # imported lazily: importing the model must not pull in triton kernels on a CPU-only box
    from samkern.layers.mamba2 import Mamba2Block

    return Mamba2Block


class Block(nn.Module):
    """Pre-norm residual block: ``residual += h; h = mixer(norm(residual))``.

    ``forward(h (B, L, D), residual (B, L, D) fp32 or None) -> (h (B, L, D), residual)``.
    """

    def __init__(self, config: MambaLMConfig, layer_idx: int, lora: Dict[str, Any], device=None, dtype=None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        norm_cls = RMSNorm if config.rms_norm else LayerNorm
        self.norm = norm_cls(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)
        self.mixer = _mixer_cls()(
            config.d_model, layer_idx=layer_idx, **config.mixer_kwargs(), **lora, device=device, dtype=dtype
        )
        # the mixer's gated RMSNorm: mamba-ssm fixes eps to 1e-5, HF uses layer_norm_epsilon
        mixer_norm = getattr(self.mixer, "norm", None)
        if mixer_norm is not None and hasattr(mixer_norm, "eps"):
            mixer_norm.eps = config.norm_epsilon

    def _add(self, h: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        residual = h if residual is None else h + residual
        return residual.float() if self.residual_in_fp32 else residual

    def forward(
        self, h: torch.Tensor, residual: Optional[torch.Tensor] = None, **mixer_kwargs: Any
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        residual = self._add(h, residual)
        h = self.mixer(self.norm(residual), **mixer_kwargs)
        return h, residual

    def step(
        self, h: torch.Tensor, residual: Optional[torch.Tensor], conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: h (B, 1, D); the states are updated in place."""
        residual = self._add(h, residual)
        h, _, _ = self.mixer.step(self.norm(residual), conv_state, ssm_state)
        return h, residual


class MixerModel(nn.Module):
    """Embedding + blocks + final norm (mamba-ssm's ``MixerModel``, named ``backbone``).

    ``forward(input_ids (B, L) | inputs_embeds (B, L, D)) -> hidden (B, L, D)`` in the weight dtype.
    """

    def __init__(self, config: MambaLMConfig, lora: Dict[str, Any], device=None, dtype=None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            [Block(config, i, lora, device=device, dtype=dtype) for i in range(config.n_layer)]
        )
        norm_cls = RMSNorm if config.rms_norm else LayerNorm
        self.norm_f = norm_cls(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, inputs_embeds: torch.Tensor, **mixer_kwargs: Any) -> torch.Tensor:
        h, residual = inputs_embeds, None
        for layer in self.layers:
            h, residual = layer(h, residual, **mixer_kwargs)
        return self.norm_f(h + residual)


@dataclass
class InferenceParams:
    """Decoding state, field-compatible with mamba-ssm's ``InferenceParams`` (so the mixers'
    ``inference_params`` path can read it).

    ``key_value_memory_dict[i] = (conv_state (B, conv_dim, W), ssm_state (B, H, P, N))`` for
    layer i; ``seqlen_offset`` counts the tokens consumed so far (0 = nothing prefilled yet).
    """

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Optional[torch.Tensor] = None

    def reset(self, max_seqlen: Optional[int] = None, max_batch_size: Optional[int] = None) -> None:
        """Zero every state and the offset so the cache can serve a new prompt."""
        if max_seqlen is not None:
            self.max_seqlen = max_seqlen
        if max_batch_size is not None:
            self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        for states in self.key_value_memory_dict.values():
            for s in states:
                s.zero_()
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


def _init_weights(module: nn.Module, n_layer: int, initializer_range: float = 0.02) -> None:
    """mamba-ssm's initialisation: zero linear biases, N(0, 0.02) embedding, and
    ``out_proj`` rescaled by 1/sqrt(n_layer) (GPT-2 residual scaling)."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    out_proj = getattr(module, "out_proj", None)
    if isinstance(out_proj, nn.Linear):
        nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            out_proj.weight /= math.sqrt(n_layer)


class MambaLM(nn.Module):
    """Mamba-2 causal LM (see the module docstring for the structure and glossary).

    Args:
        config: :class:`MambaLMConfig`.
        lora_r, lora_alpha, lora_dropout: passed to every ``Mamba2Block`` (LoRA on its
            projections); ``lora_r=0`` (default) builds the plain model.
        device, dtype: where/how to allocate the parameters.
    """

    def __init__(
        self,
        config: MambaLMConfig,
        lora_r: int = 0,
        lora_alpha: Optional[float] = None,
        lora_dropout: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(config, MambaLMConfig):
            raise ValueError(f"config must be a MambaLMConfig, got {type(config).__name__}")
        self.config = config
        # pass LoRA arguments only when asked, so a plain model builds with any Mamba2 mixer
        lora = {} if not lora_r else {"lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout}
        self.lora_kwargs = lora
        self.backbone = MixerModel(config, lora, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        self.apply(lambda m: _init_weights(m, config.n_layer))
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share ``lm_head.weight`` with ``backbone.embedding.weight`` when the config ties them."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    # ---------------------------------------------------------------------------------------
    # input validation
    # ---------------------------------------------------------------------------------------
    def _embed(self, input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor], rank: int) -> torch.Tensor:
        """Validate exactly one of ids (rank ``rank``) / embeds (rank ``rank + 1``) and embed."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        w = self.backbone.embedding.weight
        if input_ids is not None:
            check_tensor("input_ids", input_ids, ndim=rank, dtypes=_INT_DTYPES)
            if input_ids.device != w.device:
                raise ValueError(f"input_ids is on {input_ids.device}, the model on {w.device}")
            return self.backbone.embedding(input_ids)
        check_tensor("inputs_embeds", inputs_embeds, ndim=rank + 1, dtypes=FLOAT_DTYPES)
        if inputs_embeds.shape[-1] != self.config.d_model:
            raise ValueError(
                f"inputs_embeds last dim must be d_model={self.config.d_model}, got shape {tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.dtype != w.dtype:
            raise ValueError(f"inputs_embeds dtype {inputs_embeds.dtype} must equal the model dtype {w.dtype}")
        if inputs_embeds.device != w.device:
            raise ValueError(f"inputs_embeds is on {inputs_embeds.device}, the model on {w.device}")
        return inputs_embeds

    # ---------------------------------------------------------------------------------------
    # full-sequence forward
    # ---------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        seq_idx: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        inference_params: Optional[InferenceParams] = None,
        num_last_tokens: int = 0,
    ) -> torch.Tensor:
        """Logits of a batch of sequences.

        Args:
            input_ids: (B, L) int64/int32 token ids, or
            inputs_embeds: (B, L, D) embeddings in the model dtype (e.g. audio embeddings
                prepended to text embeddings by SAM).
            seq_idx: (B, L) int32, index of the packed sub-sequence of each position (the
                state is reset at every change), passed to the mixers.
            cu_seqlens: (S + 1,) int32 boundaries of S packed sequences; needs B == 1.
            inference_params: an :class:`InferenceParams`; with ``seqlen_offset == 0`` the
                mixers fill its states (prefill), otherwise they take one step (L == 1).
                The caller advances ``seqlen_offset`` (see :meth:`prefill` / :meth:`step`).
            num_last_tokens: if > 0, only the last ``num_last_tokens`` positions get logits.

        Returns:
            logits (B, L, V_pad) — or (B, num_last_tokens, V_pad) — in the model dtype.
        """
        h = self._embed(input_ids, inputs_embeds, rank=2)
        B, L = h.shape[:2]
        if not isinstance(num_last_tokens, int) or num_last_tokens < 0:
            raise ValueError(f"num_last_tokens must be a non-negative int, got {num_last_tokens!r}")
        if seq_idx is not None:
            check_tensor("seq_idx", seq_idx, shape=(B, L), dtypes=(torch.int32,))
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError(f"cu_seqlens needs the packed sequences in one row (B == 1), got B={B}")
            check_cu_seqlens(cu_seqlens, L)
        if inference_params is not None:
            if not hasattr(inference_params, "key_value_memory_dict"):
                raise ValueError("inference_params must be an InferenceParams (see allocate_inference_cache)")
            if inference_params.seqlen_offset > 0 and L != 1:
                raise ValueError(
                    f"after prefill the cache advances one token at a time (L == 1), got L={L}"
                )
        h = self.backbone(h, seq_idx=seq_idx, cu_seqlens=cu_seqlens, inference_params=inference_params)
        if num_last_tokens > 0:
            h = h[:, -num_last_tokens:]
        return self.lm_head(h)

    # ---------------------------------------------------------------------------------------
    # recurrent decoding
    # ---------------------------------------------------------------------------------------
    def allocate_inference_cache(
        self, batch_size: int, dtype: Optional[torch.dtype] = None, max_seqlen: int = 1
    ) -> InferenceParams:
        """Zeroed decoding states for ``batch_size`` sequences.

        Per layer: conv state (B, conv_dim, W) and SSM state (B, H, P, N), in ``dtype``
        (default: the mixer's parameter dtype, as mamba-ssm). Memory is independent of the
        sequence length; ``max_seqlen`` is bookkeeping only.
        """
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        cache = InferenceParams(max_seqlen=max_seqlen, max_batch_size=batch_size)
        for i, layer in enumerate(self.backbone.layers):
            cache.key_value_memory_dict[i] = layer.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)
        return cache

    def _check_cache(self, cache: InferenceParams, batch: int) -> None:
        if not hasattr(cache, "key_value_memory_dict") or not hasattr(cache, "seqlen_offset"):
            raise ValueError(f"cache must be an InferenceParams from allocate_inference_cache, got {type(cache).__name__}")
        if len(cache.key_value_memory_dict) != len(self.backbone.layers):
            raise ValueError(
                f"cache holds states for {len(cache.key_value_memory_dict)} layers, the model has {len(self.backbone.layers)}"
            )
        cache_batch = cache.key_value_memory_dict[0][0].shape[0]
        if cache_batch != batch:
            raise ValueError(f"cache was allocated for batch {cache_batch}, got batch {batch}")

    def prefill(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        cache: Optional[InferenceParams] = None,
        cache_dtype: Optional[torch.dtype] = None,
    ) -> Tuple[torch.Tensor, InferenceParams]:
        """Run the prompt through the full (chunked) forward and leave the final recurrent
        states in ``cache`` (allocated when ``None``).

        input_ids (B, L) or inputs_embeds (B, L, D) → (logits of the last position (B, V_pad),
        cache with ``seqlen_offset = L``).
        """
        h = self._embed(input_ids, inputs_embeds, rank=2)
        B, L = h.shape[:2]
        if cache is None:
            cache = self.allocate_inference_cache(B, dtype=cache_dtype)
        self._check_cache(cache, B)
        if cache.seqlen_offset != 0:
            raise ValueError(
                f"prefill needs a fresh cache (seqlen_offset 0), got {cache.seqlen_offset}; call cache.reset()"
            )
        logits = self.forward(inputs_embeds=h, inference_params=cache, num_last_tokens=1)[:, 0]
        cache.seqlen_offset += L
        return logits, cache

    def step(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        cache: Optional[InferenceParams] = None,
    ) -> torch.Tensor:
        """Advance every layer's recurrent state by one token.

        input_ids (B,) or (B, 1), or inputs_embeds (B, D) or (B, 1, D) → logits (B, V_pad).
        ``cache`` (from :meth:`allocate_inference_cache` or :meth:`prefill`) is updated in
        place; the cost is constant in the number of tokens already consumed.
        """
        if cache is None:
            raise ValueError("step needs a cache (allocate_inference_cache or prefill)")
        if input_ids is not None and input_ids.dim() == 2:
            if input_ids.shape[1] != 1:
                raise ValueError(f"step takes one token per sequence, got input_ids of shape {tuple(input_ids.shape)}")
            input_ids = input_ids[:, 0]
        if inputs_embeds is not None and inputs_embeds.dim() == 3:
            if inputs_embeds.shape[1] != 1:
                raise ValueError(
                    f"step takes one token per sequence, got inputs_embeds of shape {tuple(inputs_embeds.shape)}"
                )
            inputs_embeds = inputs_embeds[:, 0]
        h = self._embed(input_ids, inputs_embeds, rank=1)[:, None]  # (B, 1, D)
        self._check_cache(cache, h.shape[0])
        residual = None
        for i, layer in enumerate(self.backbone.layers):
            conv_state, ssm_state = cache.key_value_memory_dict[i]
            h, residual = layer.step(h, residual, conv_state, ssm_state)
        h = self.backbone.norm_f(h + residual)
        cache.seqlen_offset += 1
        return self.lm_head(h[:, 0])

    @torch.no_grad()
    def generate_greedy(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        max_new_tokens: int = 32,
        eos_token_id: Optional[int] = None,
        cache_dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """Greedy decoding: prefill the prompt, then ``step`` on the argmax token.

        Prompt: input_ids (B, L) or inputs_embeds (B, L, D). Returns the new tokens
        (B, T ≤ max_new_tokens), int64. Rows that produced ``eos_token_id`` keep emitting it;
        decoding stops early once every row has (this check syncs with the host).
        Only the first ``vocab_size`` logits compete (padded rows are never chosen).
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        V = self.config.vocab_size
        logits, cache = self.prefill(input_ids, inputs_embeds, cache_dtype=cache_dtype)
        out = []
        finished = None
        for t in range(max_new_tokens):
            tok = logits[:, :V].argmax(dim=-1)
            if eos_token_id is not None:
                if finished is None:
                    finished = torch.zeros_like(tok, dtype=torch.bool)
                tok = torch.where(finished, torch.full_like(tok, eos_token_id), tok)
                finished = finished | (tok == eos_token_id)
            out.append(tok)
            if t + 1 == max_new_tokens or (finished is not None and bool(finished.all())):
                break
            logits = self.step(input_ids=tok, cache=cache)
        return torch.stack(out, dim=1)

    # ---------------------------------------------------------------------------------------
    # checkpoints
    # ---------------------------------------------------------------------------------------
    def load_checkpoint_state_dict(self, sd: Dict[str, torch.Tensor], fmt: str = "mamba_ssm", strict: bool = True) -> None:
        """Load a mamba-ssm (``fmt="mamba_ssm"``) or HF (``fmt="hf"``) state dict.

        Embedding / head rows are zero-padded to V_pad (from exactly ``vocab_size`` rows); with
        tied embeddings a stored ``lm_head.weight`` must equal the embedding (mamba-ssm stores a
        copy, HF usually none); LoRA parameters may be absent, all together. Raises
        ``ValueError`` listing missing / unexpected keys (``strict``; without it a warning lists
        them) and every shape mismatch.
        """
        if fmt == "hf":
            sd = ckpt.hf_to_mamba_ssm_names(sd)
        elif fmt != "mamba_ssm":
            raise ValueError(f"fmt must be 'mamba_ssm' or 'hf', got {fmt!r}")
        sd = dict(sd)
        V, vocab = self.config.padded_vocab_size, self.config.vocab_size
        tied = self.config.tie_embeddings
        if "backbone.embedding.weight" in sd:
            sd["backbone.embedding.weight"] = ckpt.pad_vocab_rows("backbone.embedding.weight", sd["backbone.embedding.weight"], V, vocab)
        if "lm_head.weight" in sd:
            head = ckpt.pad_vocab_rows("lm_head.weight", sd.pop("lm_head.weight"), V, vocab)
            if not tied:
                sd["lm_head.weight"] = head
            elif "backbone.embedding.weight" in sd and not torch.equal(head, sd["backbone.embedding.weight"]):
                # a tied model would silently use the embedding as its head: not these weights
                raise ValueError("the config ties the LM head to the embedding, but the checkpoint's lm_head.weight "
                                 "differs from its embedding: set tie_embeddings / tie_word_embeddings to false")
        own = self.state_dict()
        lora_keys = [k for k in own if _LORA_MARK in k]
        optional = list(lora_keys)
        if any(_LORA_MARK in k for k in sd):
            # adapters in the checkpoint: all of them or none (a partial set would leave some
            # modules at their fresh init without a word)
            optional = []
        if tied:
            optional.append("lm_head.weight")
        missing, unexpected = ckpt.diff_keys(own.keys(), sd.keys(), optional)
        if strict:
            msg = ckpt.format_key_errors(missing, unexpected)
            if msg is not None:
                raise ValueError(f"checkpoint does not match the model ({fmt} format): {msg}")
        else:
            for k in unexpected:
                sd.pop(k)
            if missing or unexpected:
                warnings.warn(f"strict=False: {ckpt.format_key_errors(missing, unexpected)} "
                              "(missing parameters keep their initial values)", stacklevel=2)
        bad = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in sd.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if bad:
            raise ValueError("checkpoint shapes do not match the model: " + "; ".join(bad[:20]))
        self.load_state_dict(sd, strict=False)
        self.tie_weights()

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device=None,
        dtype: Optional[torch.dtype] = None,
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "MambaLM":
        """Load a checkpoint directory in mamba-ssm or HF ``Mamba2ForCausalLM`` format
        (detected from ``config.json``). ``model_kwargs`` (e.g. ``lora_r``) go to the constructor."""
        raw = ckpt.read_config(path)
        fmt = ckpt.detect_format(raw)
        sd = ckpt.read_state_dict(path)
        if fmt == "hf":
            config = MambaLMConfig.from_hf_config(raw)
            if "tie_word_embeddings" not in raw:
                # the default changed across transformers versions; the weights tell the truth
                config.tie_embeddings = "lm_head.weight" not in sd
        else:
            config = MambaLMConfig.from_json(raw)
        model = cls(config, device=device, dtype=dtype, **model_kwargs)
        model.load_checkpoint_state_dict(sd, fmt=fmt, strict=strict)
        return model

    def save_pretrained(self, path: str, safe_serialization: bool = True, include_lora: bool = False) -> None:
        """Write ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``) in mamba-ssm
        format. ``lm_head.weight`` is stored even when tied (as a copy: safetensors refuses
        shared storage) so the file is a complete ``MambaLMHeadModel`` state dict. LoRA
        parameters are left out unless ``include_lora``; without it a merged adapter is folded into
        the weights (an unmerged one is dropped), with it the weights are the base ones."""
        os.makedirs(path, exist_ok=True)
        self.config.to_json(os.path.join(path, ckpt.CONFIG_NAME))
        sd = {}
        for k, v in self.state_dict().items():
            if _LORA_MARK in k and not include_lora:
                continue
            sd[k] = v.detach().to("cpu").clone().contiguous()
        if not include_lora:
            # the state dict holds the base weights (LoRALinear._save_to_state_dict); a merged
            # adapter is part of the model being exported, so its update goes into the weights
            with torch.no_grad():
                for name, m in self.named_modules():
                    if getattr(m, "merged", False) and getattr(m, "r", 0):
                        w = sd[f"{name}.weight"]
                        sd[f"{name}.weight"] = (w.to(torch.float32) + m._delta_weight().cpu()).to(w.dtype)
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(sd, os.path.join(path, ckpt.SAFETENSORS_NAME), metadata={"format": "pt"})
        else:
            torch.save(sd, os.path.join(path, ckpt.TORCH_WEIGHTS_NAME))
