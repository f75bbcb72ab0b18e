# SPDX-License-Identifier: Apache-2.0
"""``samkern eval``: bad input is refused before the (long) evaluation, with a message naming the
flag or the file (the full eval run is covered by tests/test_demo.py)."""
from __future__ import annotations

import json
import os

import pytest

import samkern.demo
from samkern.cli import main
from samkern.models.sam.model import SAM


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    ck = str(tmp_path_factory.mktemp("ck") / "ck")
    SAM.tiny().save(ck)
    return ck


@pytest.fixture
def fake_eval(monkeypatch):
    """Replace the evaluation itself: these tests are about what happens around it."""
    calls = []

    def evaluate_checkpoint(checkpoint, **kw):
        calls.append(checkpoint)
        return {"loss": 1.0}

    monkeypatch.setattr(samkern.demo, "evaluate_checkpoint", evaluate_checkpoint)
    monkeypatch.setattr(samkern.demo, "format_table", lambda res: "table")
    return calls


def test_eval_json_parent_directory_is_created(saved, tmp_path, fake_eval, capsys):
    js = tmp_path / "not" / "yet" / "eval.json"
    assert main(["eval", "--checkpoint", saved, "--device", "cpu", "--json", str(js)]) == 0
    assert json.load(open(js)) == {"loss": 1.0}
    assert f"wrote {js}" in capsys.readouterr().out


def test_eval_json_unwritable_fails_before_evaluating(saved, tmp_path, fake_eval, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["eval", "--checkpoint", saved, "--json", str(blocker / "eval.json")]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", saved, "--json", str(tmp_path)]) == 2  # a directory
    assert "directory" in capsys.readouterr().err
    assert fake_eval == []  # refused before the evaluation ran


def test_eval_test_clips_must_be_positive(saved, capsys):
    assert main(["eval", "--checkpoint", saved, "--test-clips", "0", "--device", "cpu"]) == 2
    assert "--test-clips must be a positive int, got 0" in capsys.readouterr().err


def test_eval_corrupt_checkpoint(saved, tmp_path, capsys):
    import shutil

    ck = str(tmp_path / "ck")
    shutil.copytree(saved, ck)
    with open(os.path.join(ck, "model.safetensors"), "wb") as f:
        f.write(b"garbage" * 10)
    assert main(["eval", "--checkpoint", ck, "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "model.safetensors" in err


def test_eval_unknown_device_is_an_error_not_a_traceback(saved, capsys):
    """``--device foo`` reaches ``samkern.demo.pick_device`` (through the real evaluation), which
    names the flag instead of letting torch's RuntimeError through."""
    assert main(["eval", "--checkpoint", saved, "--device", "foo", "--no-caption-metrics"]) == 2
    assert "invalid --device 'foo'" in capsys.readouterr().err


def test_lm_checkpoint_reader_names_a_corrupt_safetensors_file(tmp_path):
    from samkern.models.sam.checkpoint import read_state_dict

    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        read_state_dict(str(tmp_path))
