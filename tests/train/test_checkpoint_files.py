# SPDX-License-Identifier: Apache-2.0
"""Trainer checkpoints: written atomically (a save cut off leaves no checkpoint directory),
``trainer_state.pt`` loads with ``weights_only=True``, a corrupt one is a ``ValueError`` naming
the file, and checkpoints of the older layout (numpy's RNG state as an ndarray) still resume."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import samkern.train.trainer as trainer_mod
from samkern.train.trainer import Trainer, TrainerConfig, complete_checkpoints, is_complete_checkpoint
from tests.train.toy import ToyDataset, ToyModel, collate, mse_loss


def _trainer(tmp_path, max_steps=4, **kw):
    # warm-up 2: the first two steps' lr does not depend on max_steps (a 2-step run resumes into a 4-step one)
    cfg = TrainerConfig(max_steps=max_steps, batch_size=8, lr=1e-2, warmup_steps=2, seed=5, progress="none", tensorboard=False,
                        plot=False, save_final=False, out_dir=str(tmp_path), **kw)
    return Trainer(ToyModel(dropout=0.1), ToyDataset(n=40), mse_loss, cfg, collate_fn=collate)


def test_interrupted_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    t = _trainer(tmp_path, max_steps=2)
    t.train()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint()
    assert not os.path.exists(tmp_path / "checkpoint-2")  # only a hidden temporary directory
    assert complete_checkpoints(str(tmp_path)) == []
    monkeypatch.undo()
    path = t.save_checkpoint()  # the next save cleans the leftover up
    assert is_complete_checkpoint(path) and sorted(os.listdir(tmp_path)) == ["checkpoint-2", "losses.json"]
    t.save_checkpoint()  # saving the same step again replaces it
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "losses.json"]


def test_complete_checkpoints_filters(tmp_path):
    t = _trainer(tmp_path, max_steps=3, checkpoint_every=1)
    t.train()
    t.save_checkpoint()
    os.makedirs(tmp_path / "checkpoint-9")  # an old-style cut-off save: no files
    os.makedirs(tmp_path / "checkpoint-x")
    os.remove(tmp_path / "checkpoint-2" / "trainer_state.pt")
    assert [s for s, _ in complete_checkpoints(str(tmp_path))] == [1, 3]
    assert [s for s, _ in complete_checkpoints(str(tmp_path), max_step=2)] == [1]


def test_trainer_state_loads_with_weights_only(tmp_path):
    t = _trainer(tmp_path)
    t.train()
    path = t.save_checkpoint()
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=True)
    assert state["step"] == 4
    # and resuming from it is still exact
    full = _trainer(tmp_path / "x").train()
    a = _trainer(tmp_path / "y", max_steps=2)
    a.train()
    mid = a.save_checkpoint()
    resumed = _trainer(tmp_path / "z").train(resume_from=mid)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_corrupt_trainer_state_is_a_value_error_naming_the_file(tmp_path):
    t = _trainer(tmp_path, max_steps=2)
    t.train()
    path = t.save_checkpoint()
    sfile = os.path.join(path, "trainer_state.pt")
    for junk in (b"garbage" * 10, b""):
        with open(sfile, "wb") as f:
            f.write(junk)
        with pytest.raises(ValueError, match="trainer_state.pt"):
            _trainer(tmp_path).load_checkpoint(path)
    torch.save({"step": 1}, sfile)
    with pytest.raises(ValueError, match="missing"):
        _trainer(tmp_path).load_checkpoint(path)


def test_corrupt_weights_are_a_value_error_naming_the_file(tmp_path):
    t = _trainer(tmp_path, max_steps=2)
    t.train()
    path = t.save_checkpoint()
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(b"garbage" * 10)
    with pytest.raises(ValueError, match="model.safetensors"):
        _trainer(tmp_path).load_checkpoint(path)


def test_older_layout_with_numpy_rng_state_still_resumes(tmp_path):
    full = _trainer(tmp_path / "full").train()
    a = _trainer(tmp_path, max_steps=2)
    a.train()
    path = a.save_checkpoint()
    sfile = os.path.join(path, "trainer_state.pt")
    state = torch.load(sfile, weights_only=True)
    ns = state["rng"]["numpy"]
    legacy = ("MT19937", ns["key"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"], ns["gauss"])
    for rng in [state["rng"], *state["rng_per_rank"]]:
        rng["numpy"] = legacy  # np.random.get_state(), as checkpoints stored it before
    torch.save(state, sfile)
    resumed = _trainer(tmp_path / "r").train(resume_from=path)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
