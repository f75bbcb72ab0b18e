# SPDX-License-Identifier: Apache-2.0
"""``load_state_dict_file`` / ``load_eat_checkpoint``: unreadable files are ``ValueError``s that
name the file (and, for a fairseq-style torch file, the layout this loader expects)."""
from __future__ import annotations

import argparse

import pytest
import torch

from samkern.models.sam.eat import EATConfig, EATEncoder, load_eat_checkpoint, load_state_dict_file


@pytest.fixture(scope="module")
def hf_sd():
    enc = EATEncoder(EATConfig(dim=32, depth=1, heads=2, patch=4, n_time_patches=2, n_freq_patches=2))
    return {k: v.contiguous() for k, v in enc.hf_state_dict().items()}


@pytest.mark.parametrize("name,message", [("bad.safetensors", "bad.safetensors.*corrupt or truncated"),
                                          ("bad.pt", "bad.pt")])
def test_corrupt_file_names_the_file(tmp_path, name, message):
    p = tmp_path / name
    p.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=message):
        load_state_dict_file(p)


def test_torch_file_with_python_objects_names_the_expected_layout(tmp_path, hf_sd):
    """A fairseq training checkpoint stores argparse / omegaconf objects next to the weights:
    torch's weights_only refusal becomes a short message about the HF layout."""
    p = tmp_path / "fairseq.pt"
    torch.save({"model": hf_sd, "args": argparse.Namespace(lr=1e-4)}, p)
    with pytest.raises(ValueError) as ei:
        load_eat_checkpoint(p)
    msg = str(ei.value)
    assert "fairseq.pt" in msg and "HF release layout" in msg and "weights_only" not in msg


def test_plain_torch_state_dict_still_loads(tmp_path, hf_sd):
    p = tmp_path / "ok.pt"
    torch.save({"model": hf_sd}, p)
    assert load_eat_checkpoint(p, heads=2, patch=4, n_freq_patches=2).config.dim == 32
