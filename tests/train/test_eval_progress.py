# SPDX-License-Identifier: Apache-2.0
"""``samkern eval`` reports progress on stderr while it evaluates (it takes tens of seconds even
for a tiny model); ``--quiet`` turns it off."""
from __future__ import annotations

import pytest

import samkern.demo
from samkern.cli import main
from samkern.demo import evaluate_checkpoint
from samkern.models.sam.model import SAM


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    ck = str(tmp_path_factory.mktemp("ck") / "ck")
    SAM.tiny().save(ck)
    return ck


def test_evaluate_checkpoint_reports_progress(saved, capsys):
    res = evaluate_checkpoint(saved, device="cpu", test_clips=2, caption_metrics=False, text_encoder="exact")
    err = capsys.readouterr().err
    assert "[eval]" in err and "2 held-out clips" in err and "features: 2/2 clips" in err
    assert "loss on" in err and "closed-ended questions:" in err
    assert res["test_clips"] == 2
    evaluate_checkpoint(saved, device="cpu", test_clips=2, caption_metrics=False, text_encoder="exact", quiet=True)
    assert capsys.readouterr().err == ""


def test_eval_command_passes_quiet(saved, tmp_path, monkeypatch):
    seen = []

    def fake(checkpoint, **kw):
        seen.append(kw)
        return {"loss": 1.0}

    monkeypatch.setattr(samkern.demo, "evaluate_checkpoint", fake)
    monkeypatch.setattr(samkern.demo, "format_table", lambda res: "table")
    for extra, quiet in (([], False), (["--quiet"], True)):
        assert main(["eval", "--checkpoint", saved, "--json", str(tmp_path / "e.json"), *extra]) == 0
        assert seen[-1]["quiet"] is quiet
