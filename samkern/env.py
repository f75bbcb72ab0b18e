# SPDX-License-Identifier: Apache-2.0
"""``samkern env``: what this machine has and which backend each op will use (for bug reports)."""
from __future__ import annotations

import importlib
import platform
from typing import Dict, List, Tuple

import torch

__all__ = ["collect", "format_report"]

# op -> (dtype, shape) of the probe tensors used to ask the dispatcher which backend it would pick
_OPS = ("ssd_chunk_scan", "lora_linear", "connector_reorder", "causal_conv1d", "rmsnorm_gated")
_OP_MODULES = {
    "ssd_chunk_scan": "samkern.ops.ssd.chunk",
    "lora_linear": "samkern.ops.lora.function",
    "connector_reorder": "samkern.ops.connector.function",
    "causal_conv1d": "samkern.ops.conv1d.function",
    "rmsnorm_gated": "samkern.ops.gated_rmsnorm.function",
}


def _version(name: str) -> str:
    try:
        return getattr(importlib.import_module(name), "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - report, never fail
        return f"not available ({type(e).__name__})"


def _backend_choices() -> List[Tuple[str, str]]:
    from samkern.backend import pick_backend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.zeros(1, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    out = []
    for op in _OPS:
        try:
            # importing the op module registers its backends
            importlib.import_module(_OP_MODULES[op])
            out.append((op, pick_backend(op, (probe,))))
        except Exception as e:  # noqa: BLE001
            out.append((op, f"unavailable ({type(e).__name__}: {e})"))
    return out


def collect() -> Dict[str, object]:
    from samkern import __version__
    from samkern.ext import ext_status

    info: Dict[str, object] = {
        "samkern": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "einops": _version("einops"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "mamba_ssm": _version("mamba_ssm"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "extension _C": ext_status(),
        "backends": dict(_backend_choices()),
    }
    return info


def format_report(info: Dict[str, object]) -> str:
    lines = []
    for k, v in info.items():
        if isinstance(v, dict):
            lines.append(f"{k}:")
            lines += [f"  {kk:<20} {vv}" for kk, vv in v.items()]
        else:
            lines.append(f"{k:<22} {v}")
    return "\n".join(lines)
