# SPDX-License-Identifier: Apache-2.0
"""Checkpoint I/O for the Mamba-2 language model: reading, format detection, name mapping.

Two on-disk formats are understood:

* **mamba-ssm** (``state-spaces/mamba2-*``): ``config.json`` holds ``MambaConfig`` fields
  (``d_model``, ``n_layer``, ``ssm_cfg`` …); weights in ``pytorch_model.bin`` or
  ``model.safetensors`` with keys ``backbone.embedding.weight``,
  ``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.*``,
  ``backbone.norm_f.weight``, ``lm_head.weight``. The vocabulary rows are already padded.
* **HF transformers** ``Mamba2ForCausalLM``: ``config.json`` with ``model_type: "mamba2"``;
  the only key that differs is ``backbone.embeddings.weight`` (plural); the vocabulary is not
  padded, and a tied ``lm_head.weight`` is usually not stored at all.

Both map onto the samkern :class:`~samkern.models.sam.lm.MambaLM` names, which equal the
mamba-ssm names (so a mamba-ssm ``MambaLMHeadModel`` state dict loads strictly).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from samkern.files import read_json, read_safetensors

__all__ = [
    "CONFIG_NAME",
    "SAFETENSORS_NAME",
    "TORCH_WEIGHTS_NAME",
    "read_config",
    "detect_format",
    "read_state_dict",
    "hf_to_mamba_ssm_names",
    "pad_vocab_rows",
    "diff_keys",
    "format_key_errors",
]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"


def read_config(path: str) -> dict:
    """Read ``config.json`` from a checkpoint directory (or the file itself)."""
    cfg_path = path if os.path.isfile(path) else os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"no {CONFIG_NAME} found at {path!r}")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def detect_format(cfg: dict) -> str:
    """``"hf"`` for a transformers ``Mamba2Config`` dict, ``"mamba_ssm"`` for a ``MambaConfig`` one."""
    if cfg.get("model_type") == "mamba2" or ("hidden_size" in cfg and "num_hidden_layers" in cfg):
        return "hf"
    if "d_model" in cfg and "n_layer" in cfg:
        return "mamba_ssm"
    model_type = cfg.get("model_type")
    raise ValueError(
        "config.json is neither a mamba-ssm MambaConfig (needs d_model, n_layer) nor an HF Mamba2Config "
        f"(model_type 'mamba2'); got model_type={model_type!r}, keys={sorted(cfg)[:12]}"
    )


def _load_file(fname: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(fname):
        raise ValueError(f"missing weights file {fname!r}")
    if fname.endswith(".safetensors"):
        return read_safetensors(fname)
    # weights_only: a checkpoint is data, never code to execute
    sd = torch.load(fname, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{fname} does not hold a state dict (got {type(sd).__name__})")
    return sd


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read all weights of a checkpoint directory onto the CPU.

    Looks for, in order: ``model.safetensors``, a sharded ``model.safetensors.index.json``,
    ``pytorch_model.bin``, a sharded ``pytorch_model.bin.index.json``.
    """
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint path {path!r} is not a directory")
    single = [SAFETENSORS_NAME, TORCH_WEIGHTS_NAME]
    index = {SAFETENSORS_NAME: SAFETENSORS_INDEX_NAME, TORCH_WEIGHTS_NAME: TORCH_INDEX_NAME}
    for name in single:
        fname = os.path.join(path, name)
        if os.path.isfile(fname):
            return _load_file(fname)
        idx = os.path.join(path, index[name])
        if os.path.isfile(idx):
            index_data = read_json(idx)
            weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError(f"{idx!r} must hold a JSON object with a 'weight_map' of key -> shard file name")
            out: Dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                fname = os.path.join(path, shard)
                if not os.path.isfile(fname):
                    raise ValueError(f"{idx!r} names the shard {shard!r}, which is not in {path!r}")
                out.update(_load_file(fname))
            missing = sorted(set(weight_map) - set(out))
            if missing:
                raise ValueError(f"{idx!r} maps {len(missing)} key(s) its shards do not hold, e.g. {missing[:5]}")
            return out
    raise ValueError(
        f"no weights in {path!r}: expected one of {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, "
        f"{TORCH_WEIGHTS_NAME}, {TORCH_INDEX_NAME}"
    )


def hf_to_mamba_ssm_names(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename HF ``Mamba2ForCausalLM`` keys to mamba-ssm ``MambaLMHeadModel`` keys.

    Only the embedding differs (``backbone.embeddings.weight`` → ``backbone.embedding.weight``);
    the mixer sub-keys (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm``,
    ``out_proj``) and the norms are spelled the same in both.
    """
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "backbone.embeddings.weight":
            k = "backbone.embedding.weight"
        out[k] = v
    return out


def pad_vocab_rows(name: str, w: torch.Tensor, rows: int, vocab: Optional[int] = None) -> torch.Tensor:
    """Zero-pad a (V, D) embedding / head matrix to ``rows`` rows (mamba-ssm's padded vocab).

    Zero rows give padded tokens logit 0 from a tied head, as in mamba-ssm checkpoints. Only the
    two layouts checkpoints use are accepted: already ``rows`` (padded, mamba-ssm) or exactly
    ``vocab`` (the config's vocabulary, HF): any other count means the config and the weights
    disagree, and padding would silently give real tokens zero embeddings.
    """
    if w.dim() != 2:
        raise ValueError(f"{name} must be 2-D (vocab, d_model), got shape {tuple(w.shape)}")
    if w.shape[0] == rows:
        return w
    if w.shape[0] != (rows if vocab is None else vocab):
        expect = f"{rows}" if vocab is None or vocab == rows else f"{vocab} (vocab_size) or {rows} (padded)"
        raise ValueError(
            f"{name} has {w.shape[0]} rows but the config's vocabulary needs {expect}: the config.json "
            "does not describe these weights (check vocab_size / pad_vocab_size_multiple)"
        )
    pad = torch.zeros(rows - w.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
    return torch.cat([w, pad], dim=0)


def diff_keys(expected: Iterable[str], got: Iterable[str], optional: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """(missing, unexpected) key lists; ``optional`` keys may be absent without complaint."""
    expected_s, got_s, optional_s = set(expected), set(got), set(optional)
    missing = sorted(expected_s - got_s - optional_s)
    unexpected = sorted(got_s - expected_s)
    return missing, unexpected


def format_key_errors(missing: List[str], unexpected: List[str], limit: int = 20) -> Optional[str]:
    """A readable message for a strict load, or ``None`` if nothing is wrong."""
    if not missing and not unexpected:
        return None

    def _fmt(keys: List[str]) -> str:
        shown = ", ".join(keys[:limit])
        return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    return "; ".join(parts)
