# SPDX-License-Identifier: Apache-2.0
"""Reading checkpoint and config files with errors that name the file.

``json.load`` and ``safetensors.torch.load_file`` raise errors that do not say which file was bad
(a ``JSONDecodeError`` with a line number, safetensors' own ``SafetensorError``); every loader in
samkern reads through these two, so a corrupt file is a ``ValueError`` naming it."""
from __future__ import annotations

import json
from typing import Any, Dict

import torch

__all__ = ["read_json", "read_safetensors"]


def read_json(path: str) -> Any:
    """``json.load`` of ``path``; unreadable or malformed: ``ValueError`` naming the file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path!r} (not valid JSON): {e}") from e
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e}") from e


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` onto the CPU; a corrupt or truncated file raises
    ``ValueError`` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as e:  # safetensors' SafetensorError (an Exception subclass) and OSError
        raise ValueError(f"cannot read {path!r} (corrupt or truncated safetensors file?): {e}") from e
