# SPDX-License-Identifier: Apache-2.0
"""SAM training glue: examples, features, collate/loss, long-memory init, curriculum runner."""
from __future__ import annotations

import math

import pytest
import torch

from samkern.data.synth import QUESTION_TYPES, SynthAudioDataset
from samkern.train.config import CurriculumConfig, StageConfig
from samkern.train.sam import (
    CLASSIFY_INSTRUCTION,
    ExampleDataset,
    build_text_tokenizer,
    collate_examples,
    long_memory_init,
    sam_loss,
    synth_examples,
    synth_features,
    train_curriculum,
)


@pytest.fixture(scope="module")
def ds():
    return SynthAudioDataset("train", size=6, seed=1)


def test_synth_examples_task_mix(ds):
    only_closed = synth_examples(ds, ("closed",))
    assert only_closed and all(e["task"] == "closed" and e["options"] and e["answer"] in e["options"] for e in only_closed)
    assert {e["type"] for e in only_closed} <= set(QUESTION_TYPES)
    cls = synth_examples(ds, ("classification",))
    assert len(cls) == len(ds) and all(e["instruction"] == CLASSIFY_INSTRUCTION for e in cls)
    assert [e["answer"] for e in cls] == [ds.describe(i).main_label for i in range(len(ds))]
    cap = synth_examples(ds, ("caption",), caption_instruction="Describe it.")
    assert [e["answer"] for e in cap] == [ds.describe(i).caption for i in range(len(ds))]
    assert all(e["instruction"] == "Describe it." for e in cap)
    opn = synth_examples(ds, ("open",))
    assert len(opn) == len(ds) and all(e["options"] is None for e in opn)
    pitch = synth_examples(ds, ("closed",), question_types=("pitch",))
    assert all(e["type"] == "pitch" for e in pitch)
    sub = synth_examples(ds, ("classification",), indices=[4, 2])
    assert [e["clip"] for e in sub] == [0, 1] and sub[0]["answer"] == ds.describe(4).main_label
    with pytest.raises(ValueError, match="tasks"):
        synth_examples(ds, ("dance",))
    with pytest.raises(ValueError, match="tasks"):
        synth_examples(ds, ())


def test_features_dataset_collate(ds):
    f = synth_features(ds, 64, indices=[0, 1, 2], batch=2)
    assert f.shape == (3, 64, 128) and f.dtype == torch.float32 and torch.isfinite(f).all()
    from samkern.models.sam.audio import eat_features

    ref = eat_features(ds[1]["audio"], target_frames=64)
    torch.testing.assert_close(f[1], ref, rtol=1e-4, atol=1e-4)
    ex = synth_examples(ds, ("classification",), indices=[0, 1, 2])
    data = ExampleDataset(ex, f)
    b = collate_examples([data[0], data[2]])
    assert b["features"].shape == (2, 64, 128) and torch.equal(b["features"][1], f[2])
    assert b["answers"] == [ex[0]["answer"], ex[2]["answer"]]
    # device=: the features move once (the demo keeps them on the GPU); items are views of them
    dev = "cuda" if torch.cuda.is_available() else "meta"
    on = ExampleDataset(ex, f, device=torch.device(dev))
    assert on.features.device.type == dev and on[1]["features"].device.type == dev
    assert collate_examples([on[0], on[2]])["features"].shape == (2, 64, 128)
    with pytest.raises(ValueError, match="outside"):
        ExampleDataset(ex, f[:2])
    with pytest.raises(ValueError, match="no examples"):
        ExampleDataset([], f)
    with pytest.raises(ValueError, match="frames"):
        ExampleDataset(ex, f[0])
    with pytest.raises(ValueError, match="empty"):
        collate_examples([])


def _tiny_sam(texts):
    from samkern.models.sam.eat import EATConfig
    from samkern.models.sam.model import SAM

    tok = build_text_tokenizer(texts, vocab_size=400)
    return SAM.tiny(tokenizer=tok, encoder=EATConfig(dim=16, depth=1, heads=2, mlp_ratio=2.0, n_time_patches=4),
                    lora_r=2, seed=0)


def test_tokenizer_and_loss(ds):
    ex = synth_examples(ds, ("closed", "classification"))
    texts = [e["instruction"] for e in ex] + [e["answer"] for e in ex]
    tok = build_text_tokenizer(texts, vocab_size=400)
    q = ex[0]["instruction"]
    assert tok.decode(tok.encode(q)) == q
    # learnt on the texts: about a token per word, not per byte
    assert len(tok.encode(q)) <= len(q.split()) + 4
    assert tok.eos_token_id == 0 and tok.encode("&&") == [tok.tokenizer.token_to_id("&&")]
    m = _tiny_sam(texts)
    f = synth_features(ds, 64)
    batch = collate_examples([ExampleDataset(ex, f)[i] for i in range(3)])
    loss, ntok = sam_loss(m, batch)
    direct = m(features=batch["features"], instructions=batch["instructions"], answers=batch["answers"])
    assert torch.equal(loss, direct.loss) and ntok == direct.num_tokens > 0
    with pytest.raises(ValueError, match="no texts"):
        build_text_tokenizer([])


def test_long_memory_init_sets_slow_decay():
    m = _tiny_sam(["a tone", "the noise"])
    long_memory_init(m.lm, a_range=(0.001, 0.01), dt_range=(0.5, 2.0))
    for mod in m.lm.modules():
        if hasattr(mod, "A_log"):
            a = mod.A_log.exp()
            dt = torch.nn.functional.softplus(mod.dt_bias)
            assert a.min() == pytest.approx(0.001, rel=1e-4) and a.max() == pytest.approx(0.01, rel=1e-4)
            assert dt.min() == pytest.approx(0.5, rel=1e-4) and dt.max() == pytest.approx(2.0, rel=1e-4)
            assert torch.all(mod.D == 0)
            # per-token decay exp(-A dt) keeps > 97 % of the state over one token
            assert math.exp(-(a * dt).max().item()) > 0.97


def test_train_curriculum_runs_stages_and_resumes(ds, tmp_path):
    ex = synth_examples(ds, ("classification", "caption", "closed", "open"))
    m = _tiny_sam([e["instruction"] for e in ex] + [e["answer"] for e in ex])
    f = synth_features(ds, 64)
    cur = CurriculumConfig(stages=[
        StageConfig("s1", "connector", ("classification", "caption"), lr=1e-3, max_steps=2, batch_size=4),
        StageConfig("s2", "connector+encoder+lora", ("closed",), lr=1e-4, max_steps=2, batch_size=4),
    ], lora_r=2)
    enc_before = m.encoder.patch_embed.weight.detach().clone()
    hist = train_curriculum(m, cur, ds, f, str(tmp_path), progress="none", log=lambda s: None)
    assert [h["stage"] for h in hist] == ["s1", "s1", "s2", "s2"]
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert not torch.equal(m.encoder.patch_embed.weight, enc_before)  # stage 2 trained the encoder
    assert m.trainable == "connector+encoder+lora"
    assert (tmp_path / "s1" / "checkpoint-2" / "model.safetensors").is_file()
    # resume: both stages are complete, so nothing trains and the final weights are reloaded
    w = m.connector.mlp[0].weight.detach().clone()
    with torch.no_grad():
        m.connector.mlp[0].weight.add_(1.0)
    assert train_curriculum(m, cur, ds, f, str(tmp_path), progress="none", resume=True, log=lambda s: None) == []
    assert torch.equal(m.connector.mlp[0].weight, w)


def test_exact_resume_on_tiny_sam(ds, tmp_path):
    """Bit-identical losses after resuming a SAM run mid-way (the real model, not a stand-in)."""
    from samkern.train.trainer import Trainer, TrainerConfig, apply_trainable

    ex = synth_examples(ds, ("classification", "closed"))
    texts = [e["instruction"] for e in ex] + [e["answer"] for e in ex]
    f = synth_features(ds, 64)

    def make(max_steps, out=None):
        m = _tiny_sam(texts)
        apply_trainable(m, "all")
        cfg = TrainerConfig(max_steps=max_steps, batch_size=4, lr=3e-3, warmup_steps=1, seed=2, progress="none",
                            tensorboard=False, plot=False, save_final=out is not None, out_dir=out)
        return Trainer(m, ExampleDataset(ex, f), sam_loss, cfg, collate_fn=collate_examples)

    full = make(5).train()
    make(2, str(tmp_path)).train()
    resumed = make(5).train(resume_from=str(tmp_path / "checkpoint-2"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert full[-1]["loss"] != full[0]["loss"]
