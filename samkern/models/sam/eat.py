# SPDX-License-Identifier: Apache-2.0
"""EAT audio encoder (Data2Vec-2-style audio ViT) and loading of its HF-format checkpoints.

Architecture of EAT-base (``EATConfig.base()``), as in EAT's data2vec-multi model with the
image modality on a ``(1024, 128)`` fbank and ``layer_norm_first=False``::

    feats (B, T, M) = (B, 1024, 128), the output of ``audio.eat_features``
    -> Conv2d(1, D, kernel=16, stride=16)            (B, D, T/16, M/16) = (B, 768, 64, 8)
    -> flatten, time-major: token n = t * 8 + f       (B, 512, D)
    -> + fixed 2-D sin-cos positions (MAE formula)    (1, 512, D)
    -> prepend the CLS token ("extra_tokens")         (B, 513, D)   (after the positions)
    -> pre_norm: LayerNorm(eps 1e-6)
    -> 12 post-LN blocks: x = norm1(x + attn(x)); x = norm2(x + mlp(x))
       (D 768, 12 heads of 64, MLP 3072 with exact-erf GELU, LayerNorm eps 1e-6, qkv bias)
    -> (B, 513, D): CLS + 512 audio tokens; no final norm (that only exists for pre-LN)
    optional classifier (fine-tuned checkpoints): head(fc_norm(x[:, 0])), fc_norm eps 1e-6.

LayerNorm eps: EAT builds every LayerNorm of the encoder (the modality encoder's context norm,
which the HF release calls ``pre_norm``, and both norms of every block) with
``partial(nn.LayerNorm, eps=cfg.norm_eps)`` and its configs set ``norm_eps: 1e-6``; the
fine-tuning ``fc_norm`` is ``nn.LayerNorm(768, eps=1e-6)``. Both are configurable.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (the flash /
memory-efficient backends on the GPU, no mask, scale ``1/sqrt(P)``), which equals EAT's explicit
``softmax(q k^T / sqrt(P)) v``; ``use_sdpa=False`` selects that explicit path (softmax in fp32).

Checkpoint layout (HF release of EAT-base; any leading prefix such as ``"encoder."`` or
``"module."`` is stripped)::

    model.local_encoder.proj.{weight,bias}       -> patch_embed.{weight,bias}
    model.extra_tokens                           -> cls_token                (1, E, D)
    model.fixed_positional_encoder.positions     -> pos_embed (buffer)       (1, N, D), optional
    model.pre_norm.{weight,bias}                 -> pre_norm.{weight,bias}
    model.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}
                                                 -> blocks.{i}.<same>
    model.fc_norm.{weight,bias}, model.head.{weight,bias}  (optional)
                                                 -> fc_norm.*, head.*

Shapes: B batch, T fbank frames, M mel bins, D width, H heads, P = D / H head dim,
E extra (CLS) tokens, N = (T / patch) * (M / patch) audio tokens.
"""
from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass, fields, replace
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...checks import check_tensor

__all__ = [
    "EATConfig",
    "EATAttention",
    "EATBlock",
    "EATEncoder",
    "sincos_pos_embed_2d",
    "hf_to_samkern_key",
    "samkern_to_hf_key",
    "load_eat_checkpoint",
    "load_state_dict_file",
]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EATConfig:
    """Hyper-parameters of an EAT encoder.

    ``n_time_patches * patch`` is the longest input in frames (1024 for EAT); shorter inputs
    (multiples of ``patch``) use the first rows of the position table, as EAT does.
    """

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch: int = 16
    n_time_patches: int = 64
    n_freq_patches: int = 8
    in_chans: int = 1
    num_extra_tokens: int = 1
    norm_eps: float = 1e-6  # pre_norm and both norms of every block (EAT's cfg.norm_eps)
    fc_norm_eps: float = 1e-6
    num_classes: int = 0  # > 0: fc_norm + head classifier on the CLS token

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "patch", "n_time_patches", "n_freq_patches", "in_chans", "num_extra_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"EATConfig.{name} must be a positive int, got {v!r}")
        if self.dim % self.heads:
            raise ValueError(f"EATConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.dim % 4:
            raise ValueError(f"EATConfig.dim ({self.dim}) must be divisible by 4 (2-D sin-cos positions)")
        if self.mlp_hidden < 1:
            raise ValueError(f"EATConfig.mlp_ratio gives an empty MLP: {self.mlp_ratio}")
        if self.num_classes < 0:
            raise ValueError(f"EATConfig.num_classes must be >= 0, got {self.num_classes}")

    @classmethod
    def base(cls, **overrides) -> "EATConfig":
        """EAT-base: 768 wide, 12 blocks of 12 heads, 16x16 patches on a (1024, 128) fbank."""
        return replace(cls(), **overrides)

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def n_patches(self) -> int:
        return self.n_time_patches * self.n_freq_patches

    @property
    def n_frames(self) -> int:
        return self.n_time_patches * self.patch

    @property
    def n_mels(self) -> int:
        return self.n_freq_patches * self.patch


# ---------------------------------------------------------------------------------------------
# positions
# ---------------------------------------------------------------------------------------------


def sincos_pos_embed_2d(dim: int, n_time: int, n_freq: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions of a ``(n_time, n_freq)`` patch grid, time-major rows.

    MAE's convention (which EAT inherits through ``np.meshgrid(grid_w, grid_h)``): row
    ``n = t * n_freq + f``; the first ``dim / 2`` channels encode the *column* (frequency)
    index ``f`` and the last ``dim / 2`` the *row* (time) index ``t``; each half is
    ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim / 4))``, ``k < dim / 4``.

    Returns:
        ``(n_time * n_freq, dim)`` float32 (computed in float64).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)  # (dim/4,)

    def one_d(pos: np.ndarray) -> np.ndarray:  # (L,) -> (L, dim/2)
        ang = pos[:, None] * omega[None, :]
        return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)

    t = np.repeat(np.arange(n_time, dtype=np.float64), n_freq)  # row index of token n
    f = np.tile(np.arange(n_freq, dtype=np.float64), n_time)  # column index of token n
    return torch.from_numpy(np.concatenate([one_d(f), one_d(t)], axis=1)).float()


# ---------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------


class EATAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (EAT's ``AltAttention``).

    ``qkv``: Linear(D, 3D) with bias, output laid out as ``(3, H, P)``; ``proj``: Linear(D, D).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, use_sdpa: bool = True) -> torch.Tensor:
        """``x``: (B, L, D) -> (B, L, D)."""
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, L, P)
        if use_sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)  # (B, H, L, L)
            # EAT's softmax runs in fp32 for half inputs (float64 stays float64)
            o = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype) @ v
        return self.proj(o.transpose(1, 2).reshape(B, L, D))


class EATMlp(nn.Module):
    """fc1 (D -> hidden) -> exact GELU -> fc2 (hidden -> D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EATBlock(nn.Module):
    """Post-LN transformer block (EAT's ``AltBlock`` with ``layer_norm_first=False``)::

        x = norm1(x + attn(x))
        x = norm2(x + mlp(x))
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EATAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = EATMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, use_sdpa: bool = True) -> torch.Tensor:
        """``x``: (B, L, D) -> (B, L, D)."""
        x = self.norm1(x + self.attn(x, use_sdpa=use_sdpa))
        return self.norm2(x + self.mlp(x))


# ---------------------------------------------------------------------------------------------
# HF key mapping
# ---------------------------------------------------------------------------------------------

# Explicit one-to-one map of the non-block keys (HF release name -> samkern name).
_HF_TOP: Dict[str, str] = {
    "model.local_encoder.proj.weight": "patch_embed.weight",
    "model.local_encoder.proj.bias": "patch_embed.bias",
    "model.extra_tokens": "cls_token",
    "model.fixed_positional_encoder.positions": "pos_embed",
    "model.pre_norm.weight": "pre_norm.weight",
    "model.pre_norm.bias": "pre_norm.bias",
    "model.fc_norm.weight": "fc_norm.weight",
    "model.fc_norm.bias": "fc_norm.bias",
    "model.head.weight": "head.weight",
    "model.head.bias": "head.bias",
}
_TOP_REQUIRED = (
    "model.local_encoder.proj.weight",
    "model.local_encoder.proj.bias",
    "model.extra_tokens",
    "model.pre_norm.weight",
    "model.pre_norm.bias",
)
# Per-block parameters: same suffix on both sides ("model.blocks.{i}.<s>" <-> "blocks.{i}.<s>").
_BLOCK_SUFFIXES: Tuple[str, ...] = tuple(
    f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")
)
_SAMKERN_TOP = {v: k for k, v in _HF_TOP.items()}
_HF_BLOCK_RE = re.compile(r"^model\.blocks\.(\d+)\.(.+)$")
_SK_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_ANCHOR = "model.local_encoder.proj.weight"


def hf_to_samkern_key(key: str) -> Optional[str]:
    """HF release key (prefix already stripped) -> this module's key, ``None`` if not ours."""
    if key in _HF_TOP:
        return _HF_TOP[key]
    m = _HF_BLOCK_RE.match(key)
    if m and m.group(2) in _BLOCK_SUFFIXES:
        return f"blocks.{m.group(1)}.{m.group(2)}"
    return None


def samkern_to_hf_key(key: str) -> str:
    """This module's key -> HF release key (inverse of :func:`hf_to_samkern_key`)."""
    if key in _SAMKERN_TOP:
        return _SAMKERN_TOP[key]
    m = _SK_BLOCK_RE.match(key)
    if m and m.group(2) in _BLOCK_SUFFIXES:
        return f"model.blocks.{m.group(1)}.{m.group(2)}"
    raise KeyError(f"no HF name for parameter {key!r}")


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: Optional[str]) -> Dict[str, torch.Tensor]:
    if prefix is None:  # auto-detect from the patch-embedding weight, which every EAT has
        hits = sorted(k[: -len(_ANCHOR)] for k in sd if k.endswith(_ANCHOR))
        if not hits:
            sample = ", ".join(list(sd)[:8])
            raise ValueError(
                f"not an EAT checkpoint in the HF layout: no key ends with {_ANCHOR!r} (first keys: {sample})"
            )
        if len(hits) > 1:
            raise ValueError(f"several EAT encoders in this state dict (prefixes {hits}); pass prefix=")
        prefix = hits[0]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------


class EATEncoder(nn.Module):
    """EAT encoder: fbank ``(B, T, M)`` -> CLS + audio tokens ``(B, E + N, D)``.

    Parameters (this module's names; see the module docstring for the HF names):
    ``patch_embed`` Conv2d(in_chans, D, patch, stride=patch), ``cls_token`` (1, E, D),
    buffer ``pos_embed`` (1, n_patches, D), ``pre_norm``, ``blocks[i]``, and when
    ``num_classes > 0`` ``fc_norm`` and ``head`` Linear(D, num_classes).
    """

    def __init__(self, config: EATConfig = EATConfig()) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embed = nn.Conv2d(c.in_chans, c.dim, kernel_size=c.patch, stride=c.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, c.num_extra_tokens, c.dim))
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(c.dim, c.n_time_patches, c.n_freq_patches)[None], persistent=True
        )
        self.pre_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.blocks = nn.ModuleList(EATBlock(c.dim, c.heads, c.mlp_hidden, c.norm_eps) for _ in range(c.depth))
        if c.num_classes > 0:
            self.fc_norm: Optional[nn.LayerNorm] = nn.LayerNorm(c.dim, eps=c.fc_norm_eps)
            self.head: Optional[nn.Linear] = nn.Linear(c.dim, c.num_classes)
        else:
            self.fc_norm = None
            self.head = None
        nn.init.normal_(self.cls_token, std=0.02)

    # -- forward pieces ------------------------------------------------------------------------

    def _check_feats(self, feats: torch.Tensor) -> None:
        c = self.config
        dt = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        shape = (None, c.in_chans, None, c.n_mels) if c.in_chans > 1 else (None, None, c.n_mels)
        check_tensor("feats", feats, shape=shape, dtypes=dt)
        T = feats.shape[-2]
        if T % c.patch or T // c.patch > c.n_time_patches:
            raise ValueError(
                f"feats must have a multiple of {c.patch} frames, at most {c.n_frames}, got shape {tuple(feats.shape)}"
            )

    def embed_patches(self, feats: torch.Tensor) -> torch.Tensor:
        """Patch embedding only: ``(B, T, M)`` -> ``(B, N, D)``, token ``t * (M/patch) + f``."""
        self._check_feats(feats)
        x = feats if feats.dim() == 4 else feats[:, None]  # (B, C, T, M)
        w = self.patch_embed.weight
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(w.dtype)
        x = self.patch_embed(x)  # (B, D, T/patch, M/patch)
        return x.flatten(2).transpose(1, 2)  # time-major: row-major flatten of (time, freq)

    def forward(self, feats: torch.Tensor, use_sdpa: bool = True) -> torch.Tensor:
        """``feats`` (B, T, M) (normalised fbank, ``audio.eat_features``) -> (B, E + N, D).

        Token 0 .. E-1 are the CLS ("extra") tokens, then N audio tokens in time-major order.
        """
        x = self.embed_patches(feats)  # (B, N, D)
        n = x.shape[1]
        x = x + self.pos_embed[:, :n].to(x.dtype)  # positions before the CLS token, as in EAT
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pre_norm(x)
        for blk in self.blocks:
            x = blk(x, use_sdpa=use_sdpa)
        return x

    def audio_tokens(self, feats: torch.Tensor, use_sdpa: bool = True) -> torch.Tensor:
        """The N audio tokens only (what SAM's connector consumes): ``(B, N, D)``."""
        return self.forward(feats, use_sdpa=use_sdpa)[:, self.config.num_extra_tokens :]

    def classify(self, feats: torch.Tensor, use_sdpa: bool = True) -> torch.Tensor:
        """Fine-tuned classifier: ``head(fc_norm(cls))`` -> ``(B, num_classes)`` logits."""
        if self.head is None or self.fc_norm is None:
            raise ValueError("this EAT encoder has no classifier head (num_classes=0 / no model.head.* in checkpoint)")
        return self.head(self.fc_norm(self.forward(feats, use_sdpa=use_sdpa)[:, 0]))

    # -- checkpoints ---------------------------------------------------------------------------

    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        """State dict under the HF release names (``model.local_encoder.proj.weight``, ...)."""
        return {samkern_to_hf_key(k): v for k, v in self.state_dict().items()}

    @classmethod
    def config_from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], prefix: Optional[str] = None, **overrides
    ) -> EATConfig:
        """Infer width, depth, patch, MLP ratio, extra tokens, grid and classes from the keys.

        Not inferable from weights: ``heads`` (default ``dim // 64``, EAT's 64-wide heads) and
        the frequency grid ``n_freq_patches`` (default ``128 // patch``: EAT's 128 mel bins);
        override them. ``n_time_patches`` comes from the positions' length (else 64).
        """
        hf = _strip_prefix(sd, prefix)
        w = hf[_ANCHOR]
        if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"{_ANCHOR} must be a square conv kernel (D, C, p, p), got {tuple(w.shape)}")
        dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
        idx = {int(m.group(1)) for k in hf if (m := _HF_BLOCK_RE.match(k))}
        depth = max(idx) + 1 if idx else 0
        kw = dict(dim=dim, in_chans=in_chans, patch=patch, depth=depth, heads=max(1, dim // 64))
        if "model.blocks.0.mlp.fc1.weight" in hf:
            kw["mlp_ratio"] = hf["model.blocks.0.mlp.fc1.weight"].shape[0] / dim
        if "model.extra_tokens" in hf:
            kw["num_extra_tokens"] = int(hf["model.extra_tokens"].shape[1])
        if "model.head.weight" in hf:
            kw["num_classes"] = int(hf["model.head.weight"].shape[0])
        kw.update(overrides)
        # EAT's fbank has 128 mel bins; other grids must be given as an override
        n_freq = kw.setdefault("n_freq_patches", max(1, 128 // patch))
        pos = hf.get("model.fixed_positional_encoder.positions")
        if pos is not None and "n_time_patches" not in overrides:
            if pos.dim() != 3 or pos.shape[1] % n_freq:
                raise ValueError(
                    f"positions of shape {tuple(pos.shape)} do not fit a grid with {n_freq} frequency patches"
                )
            kw["n_time_patches"] = int(pos.shape[1]) // n_freq
        if kw["depth"] < 1:
            raise ValueError("checkpoint has no model.blocks.* keys")
        return EATConfig(**kw)

    @classmethod
    def from_state_dict(
        cls,
        sd: Mapping[str, torch.Tensor],
        prefix: Optional[str] = None,
        config: Optional[EATConfig] = None,
        strict_unexpected: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        **overrides,
    ) -> "EATEncoder":
        """Build an encoder from an HF-layout EAT state dict.

        Args:
            sd: state dict (HF names, optionally under a common ``prefix``).
            prefix: leading string to strip; ``None`` detects it from the patch-embedding key.
            config: use this config instead of inferring one (``overrides`` then ignored).
            strict_unexpected: raise on keys under the prefix that EAT does not use (otherwise
                they are ignored: e.g. pre-training decoders).
            dtype: parameter dtype; ``None`` keeps the checkpoint's (its patch-embedding weight's).
            device: where to allocate the model (default CPU).
            overrides: ``EATConfig`` fields to set on the inferred config (e.g. ``heads``).
        Raises:
            ValueError listing every missing required key, or a shape mismatch.
        """
        hf = _strip_prefix(sd, prefix)
        cfg = config if config is not None else cls.config_from_state_dict(hf, prefix="", **overrides)
        required = list(_TOP_REQUIRED) + [f"model.blocks.{i}.{s}" for i in range(cfg.depth) for s in _BLOCK_SUFFIXES]
        if cfg.num_classes > 0:
            required += ["model.fc_norm.weight", "model.fc_norm.bias", "model.head.weight", "model.head.bias"]
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"EAT checkpoint is missing {len(missing)} required key(s): {missing}")
        mapped: Dict[str, torch.Tensor] = {}
        unexpected: List[str] = []
        for k, v in hf.items():
            sk = hf_to_samkern_key(k)
            if sk is None or (sk.startswith("blocks.") and int(sk.split(".")[1]) >= cfg.depth):
                unexpected.append(k)
            elif sk.startswith(("fc_norm.", "head.")) and cfg.num_classes == 0:
                unexpected.append(k)
            else:
                mapped[sk] = v
        if unexpected and strict_unexpected:
            raise ValueError(f"EAT checkpoint has {len(unexpected)} unexpected key(s): {unexpected}")
        with torch.device("meta"):
            model = cls(cfg)
        # allocate directly in the target dtype so that loading never rounds the weights
        dtype = dtype if dtype is not None else hf[_ANCHOR].dtype
        model = model.to_empty(device=device or "cpu").to(dtype=dtype)
        # a checkpoint without positions gets the computed sin-cos table
        pos = mapped.pop("pos_embed", None)
        own = model.state_dict()
        bad = [f"{samkern_to_hf_key(k)}: {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in mapped.items() if v.shape != own[k].shape]
        if pos is not None and pos.shape != own["pos_embed"].shape:
            bad.append(f"model.fixed_positional_encoder.positions: {tuple(pos.shape)} != {tuple(own['pos_embed'].shape)}")
        if bad:
            raise ValueError("EAT checkpoint shapes do not match the config: " + "; ".join(bad))
        with torch.no_grad():
            model.pos_embed.copy_(
                pos if pos is not None else sincos_pos_embed_2d(cfg.dim, cfg.n_time_patches, cfg.n_freq_patches)[None]
            )
        model.load_state_dict(mapped, strict=False)
        # everything except pos_embed must have come from the checkpoint
        not_loaded = set(own) - set(mapped) - {"pos_embed"}
        if not_loaded:  # cannot happen after the missing-key check; guards the mapping itself
            raise ValueError(f"internal: parameters not loaded: {sorted(not_loaded)}")
        return model.eval()


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``*.safetensors`` or a torch file (``.bin``/``.pt``/``.pth``).

    A directory is searched for ``model.safetensors`` then ``pytorch_model.bin``; a torch file
    that wraps the weights in ``{"model": ...}`` or ``{"state_dict": ...}`` is unwrapped.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(p, name)):
                p = os.path.join(p, name)
                break
        else:
            raise ValueError(f"{p!r} holds neither model.safetensors nor pytorch_model.bin")
    if not os.path.exists(p):
        raise ValueError(f"checkpoint {p!r} does not exist")
    if p.endswith(".safetensors"):
        from samkern.files import read_safetensors

        return read_safetensors(p)
    try:
        # weights_only: a checkpoint is data, never code to execute
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page about weights_only=False; the usual cause is a fairseq
        # training checkpoint (argparse.Namespace / omegaconf objects next to the weights)
        raise ValueError(
            f"cannot read {p!r} as a plain state dict (it holds Python objects other than tensors, or is not a "
            f"torch file): this loader expects EAT weights in the HF release layout (model.safetensors or a "
            f"pytorch_model.bin of tensors named model.local_encoder.proj.weight, model.blocks.N...), not a "
            f"fairseq training checkpoint; convert it to the HF layout first"
        ) from e
    except (RuntimeError, EOFError) as e:  # a truncated / corrupt zip archive
        raise ValueError(f"cannot read {p!r} (corrupt or truncated torch file?): {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {p!r} does not contain a state dict (got {type(obj).__name__})")
    return obj


def load_eat_checkpoint(path: Union[str, os.PathLike], **kwargs) -> EATEncoder:
    """``EATEncoder.from_state_dict(load_state_dict_file(path), **kwargs)``."""
    return EATEncoder.from_state_dict(load_state_dict_file(path), **kwargs)
