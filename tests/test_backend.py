# SPDX-License-Identifier: Apache-2.0
"""samkern.backend helpers that are not tied to one op."""
import os
import subprocess
import sys

import pytest

from samkern.backend import tuning_from_env


def test_tuning_from_env(monkeypatch):
    table = {"num_warps": None, "block_p": None}
    monkeypatch.delenv("SAMKERN_T", raising=False)
    assert tuning_from_env("SAMKERN_T", table) == {}
    monkeypatch.setenv("SAMKERN_T", '{"num_warps": 8}')
    assert tuning_from_env("SAMKERN_T", table) == {"num_warps": 8}
    monkeypatch.setenv("SAMKERN_T", '{"num_warp": 8}')
    with pytest.raises(ValueError, match="unknown keys"):
        tuning_from_env("SAMKERN_T", table)
    for bad in ("[8]", "{num_warps: 8}"):
        monkeypatch.setenv("SAMKERN_T", bad)
        with pytest.raises(ValueError, match="JSON object"):
            tuning_from_env("SAMKERN_T", table)


def test_ssd_tuning_tables_read_the_environment():
    """The SSD kernels' tables take the overrides at import (a fresh interpreter)."""
    code = ("import samkern.ops.ssd.bwd as b, samkern.ops.ssd.fwd as f; "
            "print(b.BWD_TUNING['num_warps'], f.FWD_TUNING['num_stages'])")
    env = {"SAMKERN_SSD_BWD_TUNING": '{"num_warps": 4}', "SAMKERN_SSD_FWD_TUNING": '{"num_stages": 1}'}
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["4", "1"], out


def test_non_tensor_arguments_are_named():
    """A list where a tensor belongs: a TypeError naming the argument from the dispatch, before
    any backend verifier reads ``.dtype`` from it."""
    import torch

    from samkern import ops

    with pytest.raises(TypeError, match="causal_conv1d: x must be a torch.Tensor, got list"):
        ops.causal_conv1d([1.0], torch.randn(4, 4))
    with pytest.raises(TypeError, match="rmsnorm_gated: weight must be a torch.Tensor"):
        ops.rmsnorm_gated(torch.randn(2, 8), [1.0] * 8)
    with pytest.raises(ValueError, match="sep must be a torch.Tensor"):  # (validated before dispatch)
        ops.connector_reorder(torch.randn(1, 512, 4), "time", sep=[0.0] * 4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.ssd_chunk_scan(torch.randn(1, 16, 2, 8), torch.rand(1, 16, 2), -torch.rand(2), torch.randn(1, 16, 1, 8),
                           torch.randn(1, 16, 1, 8), 16, cu_seqlens=[0, 16], return_varlen_states=True)
