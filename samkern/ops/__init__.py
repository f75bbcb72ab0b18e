# SPDX-License-Identifier: Apache-2.0
"""Functional API. Each name dispatches to the fastest backend that accepts its inputs
(see :mod:`samkern.backend`); ``*_ref`` names are the pure-PyTorch references."""
from __future__ import annotations

from samkern._lazy import lazy_exports

# public name -> module that defines it (imported on first use, so a CPU-only import never touches triton)
_EXPORTS = {
    "ssd_chunk_scan": "samkern.ops.ssd.chunk",
    "ssd_chunk_scan_ref": "samkern.ops.ssd.ref",
    "ssd_recurrent_ref": "samkern.ops.ssd.ref",
    "ssd_step_ref": "samkern.ops.ssd.ref",
    "lora_linear": "samkern.ops.lora.function",
    "lora_linear_ref": "samkern.ops.lora.ref",
    "causal_conv1d": "samkern.ops.conv1d.function",
    "causal_conv1d_ref": "samkern.ops.conv1d.ref",
    "causal_conv1d_update_ref": "samkern.ops.conv1d.ref",
    "rmsnorm_gated": "samkern.ops.gated_rmsnorm.function",
    "rmsnorm_gated_ref": "samkern.ops.gated_rmsnorm.ref",
    "connector_reorder": "samkern.ops.connector.function",
    "connector_reorder_ref": "samkern.ops.connector.ref",
}

__getattr__, __dir__, __all__ = lazy_exports("samkern.ops", _EXPORTS)
