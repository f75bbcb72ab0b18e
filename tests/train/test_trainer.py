# SPDX-License-Identifier: Apache-2.0
"""Trainer: schedule, data order, exact resume, gradient accumulation, checkpoints, plots."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from samkern.testing import assert_close
from samkern.train.config import StageConfig
from samkern.train.trainer import (
    ResumableSampler,
    Trainer,
    TrainerConfig,
    apply_trainable,
    load_model_weights,
    lr_lambda,
    save_model_weights,
    write_loss_png,
)
from tests.train.toy import ToyDataset, ToyModel, collate, mse_loss


def _cfg(tmp_path=None, **kw):
    base = dict(max_steps=6, batch_size=8, lr=1e-2, warmup_steps=2, seed=5, progress="none", tensorboard=False,
                plot=False, save_final=False, out_dir=None if tmp_path is None else str(tmp_path))
    base.update(kw)
    return TrainerConfig(**base)


def _trainer(cfg, n=40, dropout=0.1):
    return Trainer(ToyModel(dropout=dropout), ToyDataset(n=n), mse_loss, cfg, collate_fn=collate)


def test_lr_schedule_shapes():
    total, warm = 20, 4
    warmup = [lr_lambda(s, total, warm, "cosine") for s in range(warm)]
    assert warmup == sorted(warmup) and warmup[-1] < 1.0 and warmup[0] > 0.0
    assert lr_lambda(warm, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_lambda(total - 1, total, warm, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda(total - 1, total, warm, "linear", min_ratio=0.1) == pytest.approx(0.1)
    mid = warm + (total - warm - 1) / 2
    assert lr_lambda(int(mid), total, warm, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - warm) / (total - warm - 1))))
    assert lr_lambda(15, total, warm, "constant") == 1.0
    dec = [lr_lambda(s, total, warm, "linear") for s in range(warm, total)]
    assert all(a > b for a, b in zip(dec, dec[1:]))


def test_sampler_order_is_seeded_partitioned_and_resumable():
    a = ResumableSampler(10, 4, seed=3)
    b = ResumableSampler(10, 4, seed=3)
    seq_a = [a.next_batch() for _ in range(7)]
    assert seq_a == [b.next_batch() for _ in range(7)]
    # an epoch (2 full batches of 4, the last 2 examples dropped) holds distinct indices
    assert len(set(seq_a[0] + seq_a[1])) == 8
    assert seq_a[2] != seq_a[0] or seq_a[3] != seq_a[1]  # epoch 2 reshuffled
    c = ResumableSampler(10, 4, seed=3)
    c.load_state_dict(ResumableSampler(10, 4, seed=3).state_dict() | {"epoch": 1, "position": 1})
    assert c.next_batch() == seq_a[3]
    # two processes split each global batch into contiguous halves
    r0, r1 = ResumableSampler(10, 4, seed=3, rank=0, world_size=2), ResumableSampler(10, 4, seed=3, rank=1, world_size=2)
    for full in seq_a[:3]:
        assert r0.next_batch() + r1.next_batch() == full
    with pytest.raises(ValueError, match="cannot resume"):
        ResumableSampler(10, 4, seed=4).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler(0, 4)
    with pytest.raises(ValueError, match="divisible"):
        ResumableSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableSampler(3, 4)


def test_training_reduces_the_loss():
    t = _trainer(_cfg(max_steps=60, lr=3e-2, warmup_steps=3), dropout=0.0)
    hist = t.train()
    first = sum(r["loss"] for r in hist[:5]) / 5
    last = sum(r["loss"] for r in hist[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert all(r["tokens"] == 8 * 3 for r in hist)
    # the scheduler followed lr_lambda
    assert hist[0]["lr"] == pytest.approx(3e-2 * lr_lambda(0, 60, 3, "cosine"))
    assert hist[30]["lr"] == pytest.approx(3e-2 * lr_lambda(30, 60, 3, "cosine"))


def test_exact_resume_gives_bit_identical_losses(tmp_path):
    """Stop at step 3 (checkpoint), resume in a fresh trainer: steps 4-7 match an uninterrupted
    run exactly (dropout RNG, data order, optimizer moments, lr schedule all restored)."""
    full = _trainer(_cfg(max_steps=7)).train()
    part = _trainer(_cfg(tmp_path, max_steps=7, checkpoint_every=3))
    # run only the first 3 steps, as if the job was killed right after the checkpoint
    part.config.max_steps = 3
    part.config.save_final = True
    part.train()
    ckpt = tmp_path / "checkpoint-3"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "trainer_state.pt").is_file()
    torch.manual_seed(12345)  # scramble the global RNG: resume must restore it
    resumed = _trainer(_cfg(max_steps=7)).train(resume_from=str(ckpt))
    assert [r["step"] for r in resumed] == list(range(1, 8))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in full]


def test_final_parameters_match_after_resume(tmp_path):
    a = _trainer(_cfg(max_steps=5))
    a.train()
    b = _trainer(_cfg(tmp_path, max_steps=2))
    b.train()
    b.save_checkpoint(str(tmp_path / "mid"))
    c = _trainer(_cfg(max_steps=5))
    c.train(resume_from=str(tmp_path / "mid"))
    for (n, p), (_, q) in zip(a.model.named_parameters(), c.model.named_parameters()):
        assert torch.equal(p, q), n


def test_resume_from_a_checkpoint_in_the_older_layout(tmp_path):
    """Checkpoints written before the optimizer state was keyed by parameter name (and before the
    per-process RNG states) still resume exactly."""
    full = _trainer(_cfg(max_steps=5)).train()
    b = _trainer(_cfg(tmp_path, max_steps=2))
    b.train()
    ckpt = b.save_checkpoint(str(tmp_path / "mid"))
    sfile = os.path.join(ckpt, "trainer_state.pt")
    state = torch.load(sfile, weights_only=False)
    assert state["optimizer_keys"] == "name" and set(state["optimizer"]["state"]) == {"inp.weight", "inp.bias", "out.weight", "out.bias"}
    state["optimizer"] = b.optimizer.state_dict()  # keyed by parameter index
    del state["optimizer_keys"], state["rng_per_rank"]
    torch.save(state, sfile)
    resumed = _trainer(_cfg(max_steps=5)).train(resume_from=ckpt)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_grad_accumulation_equals_full_batch():
    """2 micro-batches of 4 == one batch of 8 (mean loss, equal-sized micro-batches)."""
    full = _trainer(_cfg(max_steps=4, grad_accum=1), dropout=0.0)
    acc = _trainer(_cfg(max_steps=4, grad_accum=2), dropout=0.0)
    hf, ha = full.train(), acc.train()
    for rf, ra in zip(hf, ha):
        assert rf["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    for (n, p), (_, q) in zip(full.model.named_parameters(), acc.model.named_parameters()):
        assert_close(n, q, p, rtol=1e-5)


def test_only_trainable_parameters_change():
    t = _trainer(_cfg(max_steps=3))
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    frozen = t.model.frozen_scale.detach().clone()
    t.train()
    assert torch.equal(t.model.frozen_scale, frozen)
    assert not torch.equal(t.model.inp.weight, before["inp.weight"])
    for g in t.optimizer.param_groups:
        assert all(p.requires_grad for p in g["params"])


def test_weights_round_trip_with_tied_and_frozen_tensors(tmp_path):
    m = ToyModel(seed=1)
    path = str(tmp_path / "w.safetensors")
    save_model_weights(m, path)
    m2 = ToyModel(seed=2)
    assert not torch.equal(m2.inp.weight, m.inp.weight)
    load_model_weights(m2, path)
    for (n, p), (_, q) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="shape"):
        load_model_weights(ToyModel(d_hidden=8), path)


def test_outputs_written(tmp_path):
    t = _trainer(_cfg(tmp_path, max_steps=4, plot=True, save_final=True))
    t.train()
    hist = json.load(open(tmp_path / "losses.json"))
    assert [r["step"] for r in hist] == [1, 2, 3, 4]
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 200
    assert (tmp_path / "checkpoint-4" / "trainer_state.pt").is_file()


def test_builtin_png_writer(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    p = str(tmp_path / "l.png")
    assert write_loss_png([1, 2, 3, 4], [3.0, 2.0, 2.5, 1.0], p, marks=[(2, "s2")]) == "builtin"
    import struct
    import zlib

    data = open(p, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (640, 360)
    # decode the single IDAT chunk and check the curve drew blue pixels
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == h * (1 + 3 * w)
    assert bytes((31, 119, 180)) in raw
    with pytest.raises(ValueError):
        write_loss_png([], [], p)


def test_from_stage():
    st = StageConfig("s", "connector", ("closed",), lr=2e-3, epochs=2.0, batch_size=4, warmup_ratio=0.25)
    cfg = TrainerConfig.from_stage(st, num_examples=10, progress="none")
    assert cfg.max_steps == 5 and cfg.warmup_steps == 1 and cfg.lr == 2e-3 and cfg.name == "s"


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(max_steps=0), "max_steps"),
        (dict(batch_size=6, grad_accum=4), "divisible"),
        (dict(precision="fp16"), "precision"),
        (dict(schedule="exp"), "schedule"),
        (dict(lr=-1.0), "lr"),
        (dict(progress="bar"), "progress"),
        (dict(warmup_steps=-1), "warmup_steps"),
    ],
)
def test_trainer_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainerConfig(**kw)


def test_trainer_rejects_bad_setups(tmp_path):
    m = ToyModel()
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(m, ToyDataset(), mse_loss, _cfg(), collate_fn=collate)
    with pytest.raises(ValueError, match="TrainerConfig"):
        Trainer(ToyModel(), ToyDataset(), mse_loss, {"max_steps": 1})
    with pytest.raises(ValueError, match="not a trainer checkpoint"):
        _trainer(_cfg()).train(resume_from=str(tmp_path))
    bad = Trainer(ToyModel(), ToyDataset(), lambda m, b: m(b["x"]), _cfg(), collate_fn=collate)
    with pytest.raises(ValueError, match="scalar"):
        bad.train()
    nan = Trainer(ToyModel(), ToyDataset(), lambda m, b: m(b["x"]).sum() * float("nan"), _cfg(), collate_fn=collate)
    before = {k: v.clone() for k, v in nan.model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="non-finite"):
        nan.train()
    # raised before the optimizer step: the weights are untouched
    assert all(torch.equal(before[k], v) for k, v in nan.model.state_dict().items())


def test_apply_trainable_on_tiny_sam():
    from samkern.models.sam.model import SAM

    m = SAM.tiny(lora_r=2)
    apply_trainable(m, "connector+lora")
    on = {n for n, p in m.named_parameters() if p.requires_grad}
    assert on and all(n.startswith("connector.") or "lora_" in n for n in on)
    assert any("lora_" in n for n in on) and any(n.startswith("connector.") for n in on)
    apply_trainable(m, "connector")
    assert all(n.startswith("connector.") for n, p in m.named_parameters() if p.requires_grad)
    apply_trainable(m, "connector+encoder")
    assert any(n.startswith("encoder.") for n, p in m.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="trainable"):
        apply_trainable(m, "lm")
    with pytest.raises(ValueError, match="set_trainable"):
        apply_trainable(ToyModel(), "connector")


def test_tensorboard_scalars_written(tmp_path):
    """With tensorboard installed, every optimizer step's loss, lr and tokens/s land in the event file."""
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    t = _trainer(_cfg(tmp_path, tensorboard=True, name="toy"))
    hist = t.train()
    acc = ea_mod.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"toy/loss", "toy/lr", "toy/tokens_per_s"} <= set(acc.Tags()["scalars"])
    loss = acc.Scalars("toy/loss")
    assert [e.step for e in loss] == [h["step"] for h in hist]
    assert [e.value for e in loss] == pytest.approx([h["loss"] for h in hist], rel=1e-6)


def test_single_thread_backward_only_for_single_process_cuda():
    """``backward_on_calling_thread`` applies to single-process CUDA training only (the engine's
    device threads cost host time there); CPU and multi-process runs keep the default. The switch
    itself must not change results: the same step with and without it."""
    from samkern.train.trainer import TrainerConfig, single_thread_backward

    assert TrainerConfig().backward_on_calling_thread is False  # off by default (the demo step did not gain)
    assert single_thread_backward(torch.device("cuda", 0), 1)
    assert not single_thread_backward(torch.device("cuda", 0), 2)
    assert not single_thread_backward(torch.device("cpu"), 1)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    grads = []
    for threads in (True, False):
        lin.zero_grad()
        with torch.autograd.set_multithreading_enabled(threads):
            lin(x).square().sum().backward()
        grads.append(lin.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
