# SPDX-License-Identifier: Apache-2.0
"""``samkern train``: bad flags and configs are ``error: ...`` (exit 2) naming the flag or file,
before anything is written; a reused ``--out`` needs ``--resume`` or ``--overwrite``; a resume
must match the stored run and only continues from complete checkpoints of the stage."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import samkern.train.cli as train_cli
from samkern.cli import main

# two short stages: a whole run takes ~3 s on the CPU
TINY = {
    "name": "tiny",
    "lora_r": 4,
    "stages": [
        {"name": "a", "trainable": "connector", "tasks": ["classification", "caption"], "max_steps": 2, "batch_size": 4},
        {"name": "b", "trainable": "connector+encoder+lora", "tasks": ["closed"], "max_steps": 2, "batch_size": 4},
    ],
}


@pytest.fixture
def cfg_file(tmp_path) -> str:
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(TINY))
    return str(p)


def _argv(out, cfg_file, *extra):
    return ["train", "--out", str(out), "--config", cfg_file, "--train-clips", "8", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    """A finished tiny run with a checkpoint after every step (copied by the tests that change it)."""
    d = tmp_path_factory.mktemp("run")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps(TINY))
    with pytest.MonkeyPatch.context() as mp:  # the autouse fixture of conftest.py is function-scoped
        mp.setenv("SAMKERN_BACKEND", "ref")
        assert main(_argv(d / "out", str(cfg), "--checkpoint-every", "1")) == 0
    return str(d / "out")


def _copy(run: str, tmp_path) -> str:
    dst = str(tmp_path / "out")
    shutil.copytree(run, dst)
    return dst


@pytest.mark.parametrize("extra, msg", [
    (["--batch-size", "0"], "--batch-size: batch_size must be a positive int, got 0"),
    (["--batch-size", "-3"], "--batch-size: batch_size must be a positive int, got -3"),
    (["--train-clips", "0"], "--train-clips must be a positive int, got 0"),
    (["--max-steps", "0"], "--max-steps must be a positive int, got 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be a non-negative int"),
    (["--seed", "-1"], "--seed: seed must be a non-negative int"),
    (["--resume", "--overwrite"], "exclude each other"),
])
def test_bad_flags_are_errors_before_anything_is_written(tmp_path, capsys, extra, msg):
    out = tmp_path / "out"
    assert main(["train", "--out", str(out), "--train-clips", "8", "--device", "cpu", *extra]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_batch_size_override_is_validated_against_the_config(tmp_path, capsys):
    cfg = dict(TINY, stages=[dict(TINY["stages"][0], grad_accum=4, batch_size=8)])
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    assert main(_argv(tmp_path / "out", str(p), "--batch-size", "6")) == 2
    assert "--batch-size: batch_size (6) must be divisible by grad_accum (4)" in capsys.readouterr().err


@pytest.mark.parametrize("text, msg", [
    ('{"stages": [{"name": "s", "betas": 0.9}]}', "betas must be two floats"),
    ('{"stages": [{"name": "s", "lr": null}]}', "lr must be a number"),
    ('{"stages": [{"name": "s", "tasks": "caption"}]}', "tasks must be a list of strings"),
    ('{"stages": [{"name": "../s"}]}', "no path separators"),
    ('{"stages": [{"name": "s",}]}', "is not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_config_file_is_an_error_naming_the_file(tmp_path, capsys, text, msg):
    p = tmp_path / "bad.json"
    p.write_text(text)
    assert main(_argv(tmp_path / "out", str(p))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and str(p) in err
    assert not (tmp_path / "out").exists()


def test_seed_overrides_the_config_seed(tmp_path, cfg_file, monkeypatch, capsys):
    """--seed with --config is applied (the config file's seed is overridden), not ignored."""
    seen = []
    monkeypatch.setattr(train_cli, "_train_and_save", lambda args, cur, *a, **k: seen.append(cur))
    assert main(_argv(tmp_path / "out", cfg_file, "--seed", "7")) == 0
    assert seen[0].seed == 7
    assert "--seed 7 overrides the seed of" in capsys.readouterr().err
    assert main(_argv(tmp_path / "out", cfg_file)) == 0
    assert seen[1].seed == 0  # the file's (default) seed when --seed is not given


def test_stage_batch_larger_than_its_examples_fails_before_writing(tmp_path, cfg_file, capsys):
    out = tmp_path / "out"
    assert main(_argv(out, cfg_file, "--batch-size", "64")) == 2
    assert "stage 'a': batch 64 exceeds its" in capsys.readouterr().err
    assert not out.exists()


def test_reusing_out_needs_resume_or_overwrite(finished_run, tmp_path, cfg_file, capsys):
    out = _copy(finished_run, tmp_path)
    before = open(os.path.join(out, "curriculum.json")).read()
    assert main(_argv(out, cfg_file, "--seed", "3")) == 2
    err = capsys.readouterr().err
    assert "holds a previous run" in err and "--resume" in err and "--overwrite" in err
    assert open(os.path.join(out, "curriculum.json")).read() == before
    # --overwrite clears the old run's files (only those) before the new run
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    os.makedirs(os.path.join(out, "a", "checkpoint-9"))
    assert main(_argv(out, cfg_file, "--seed", "3", "--overwrite")) == 0
    assert json.load(open(os.path.join(out, "curriculum.json")))["seed"] == 3
    assert sorted(d for d in os.listdir(os.path.join(out, "a")) if d.startswith("checkpoint-")) == ["checkpoint-2"]
    assert open(os.path.join(out, "notes.txt")).read() == "mine"


def test_resume_needs_a_run(tmp_path, cfg_file, capsys):
    assert main(_argv(tmp_path / "missing", cfg_file, "--resume")) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(_argv(tmp_path / "empty", cfg_file, "--resume")) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    assert os.listdir(tmp_path / "empty") == []


def test_resume_with_other_settings_is_refused_before_writing(finished_run, tmp_path, cfg_file, capsys):
    out = _copy(finished_run, tmp_path)
    files = {f: open(os.path.join(out, f)).read() for f in ("curriculum.json", "train_args.json")}
    assert main(_argv(out, cfg_file, "--resume", "--seed", "1", "--batch-size", "8")) == 2
    err = capsys.readouterr().err
    assert "seed: stored 0, requested 1" in err and "a.batch_size: stored 4, requested 8" in err
    assert main(_argv(out, cfg_file, "--resume", "--max-steps", "1")) == 2
    assert "max_steps (--max-steps): stored None, requested 1" in capsys.readouterr().err
    assert main(["train", "--out", out, "--preset", "ltu", "--train-clips", "8", "--device", "cpu", "--resume"]) == 2
    assert "stages: stored ['a', 'b'], requested ['stage1'" in capsys.readouterr().err
    assert {f: open(os.path.join(out, f)).read() for f in files} == files


def test_resume_uses_complete_checkpoints_within_the_stage_only(finished_run, tmp_path, cfg_file, capsys):
    """Stage b's final checkpoint was cut off (no trainer_state.pt) and a stray higher-numbered
    checkpoint sits next to it: the resume continues from checkpoint-1 (complete, <= 2 steps)."""
    out = _copy(finished_run, tmp_path)
    os.remove(os.path.join(out, "b", "checkpoint-2", "trainer_state.pt"))
    shutil.copytree(os.path.join(out, "b", "checkpoint-1"), os.path.join(out, "b", "checkpoint-7"))
    assert main(_argv(out, cfg_file, "--resume")) == 0
    log = capsys.readouterr().out
    assert "stage a: done already" in log and "stage b: done already" not in log
    assert f"resuming from {os.path.join(out, 'b', 'checkpoint-1')}" in log
    assert os.path.isfile(os.path.join(out, "b", "checkpoint-2", "trainer_state.pt"))
    assert [r["step"] for r in json.load(open(os.path.join(out, "b", "losses.json")))] == [1, 2]


def test_corrupt_trainer_state_on_resume_is_an_error_naming_the_file(finished_run, tmp_path, cfg_file, capsys):
    out = _copy(finished_run, tmp_path)
    shutil.rmtree(os.path.join(out, "b", "checkpoint-2"))
    bad = os.path.join(out, "b", "checkpoint-1", "trainer_state.pt")
    open(bad, "wb").write(b"garbage" * 10)
    assert main(_argv(out, cfg_file, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and bad in err and "Traceback" not in err
