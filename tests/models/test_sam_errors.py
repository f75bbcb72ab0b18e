# SPDX-License-Identifier: Apache-2.0
"""User errors of the SAM Python API and of ``samkern caption / ask / analyze``: corrupt
checkpoints, bad waveform tensors, bad questions / budgets, unreadable files among good ones,
an unavailable device. Each must give a clear error (or, for the CLI, ``error: ...`` and a
non-zero exit), never a raw traceback or a silent default."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from samkern.cli import main
from samkern.models.sam.model import SAM


@pytest.fixture(autouse=True)
def _reference_kernels(monkeypatch):
    # the CLI builds its own model: keep it off the (slow) CPU Triton interpreter
    monkeypatch.setenv("SAMKERN_BACKEND", "ref")


@pytest.fixture(scope="module")
def model() -> SAM:
    m = SAM.tiny()
    m.set_kernel_backends(scan="ref", connector="ref", lora="ref")
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> str:
    ck = str(tmp_path_factory.mktemp("ck") / "ck")
    model.save(ck)
    assert os.path.isfile(os.path.join(ck, "adapter_model.safetensors"))  # tiny() has LoRA
    return ck


def _copy(saved: str, tmp_path) -> str:
    ck = str(tmp_path / "ck")
    shutil.copytree(saved, ck)
    return ck


def _wav(tmp_path, name="ok.wav", n=12000) -> str:
    sf = pytest.importorskip("soundfile")
    p = str(tmp_path / name)
    sf.write(p, (0.1 * np.random.default_rng(len(name)).standard_normal(n)).astype(np.float32), 16000)
    return p


def _wave(n=8000) -> torch.Tensor:
    return 0.1 * torch.randn(n)


# --------------------------------------------------------------------------------------------
# 1. corrupt checkpoint files
# --------------------------------------------------------------------------------------------
def _garbage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"\x00garbage, not a safetensors header" * 4)


def _truncate(path: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize(
    "fname,spoil",
    [
        ("model.safetensors", _garbage),
        ("model.safetensors", _truncate),
        ("adapter_model.safetensors", _garbage),
        ("tokenizer.json", lambda p: open(p, "w").write("{garbage")),
        ("sam_config.json", lambda p: open(p, "w").write("{garbage")),
    ],
)
def test_load_corrupt_checkpoint_raises_value_error_naming_the_file(saved, tmp_path, capsys, fname, spoil):
    ck = _copy(saved, tmp_path)
    spoil(os.path.join(ck, fname))
    with pytest.raises(ValueError, match=fname):
        SAM.load(ck)
    # the CLI reports it and exits non-zero (it catches ValueError)
    assert main(["caption", _wav(tmp_path), "--checkpoint", ck, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and fname in err


# --------------------------------------------------------------------------------------------
# 2. --device cuda without CUDA
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("cmd", [["caption"], ["analyze"], ["ask", "x"]])
def test_cli_device_cuda_without_cuda(tmp_path, capsys, cmd):
    a = _wav(tmp_path)
    argv = [cmd[0], a] + cmd[1:] + ["--device", "cuda"]
    assert main(argv) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_unknown_device(tmp_path, capsys):
    assert main(["caption", _wav(tmp_path), "--device", "nodevice"]) == 2
    assert "--device" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 3. an unreadable file among readable ones
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", ["1", "8"])
def test_cli_reports_each_unreadable_file_and_keeps_the_others(tmp_path, capsys, batch_size):
    ok, ok2 = _wav(tmp_path, "ok.wav"), _wav(tmp_path, "ok2.wav", 9000)
    bad = tmp_path / "corrupt.wav"
    bad.write_text("not audio")
    files = [ok, str(bad), ok2]
    rc = main(["caption", *files, "--batch-size", batch_size, "--max-new-tokens", "2", "--json", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1
    res = json.loads(cap.out)
    assert [r["file"] for r in res] == files
    assert isinstance(res[0]["caption"], str) and isinstance(res[2]["caption"], str)
    assert "caption" not in res[1] and "cannot read" in res[1]["error"]
    assert "corrupt.wav" in cap.err and "error:" in cap.err
    # text output: the readable files' lines on stdout, the error on stderr
    rc = main(["analyze", *files, "--batch-size", batch_size, "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1
    lines = cap.out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [ok, ok2]
    assert "corrupt.wav" in cap.err


# --------------------------------------------------------------------------------------------
# 4. max_new_tokens = 0
# --------------------------------------------------------------------------------------------
def test_max_new_tokens_zero_is_rejected(model, tmp_path, capsys):
    w = _wave()
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        model.caption(w, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        model.generate(w, "x", max_new_tokens=0)
    assert main(["caption", _wav(tmp_path), "--max-new-tokens", "0", "--device", "cpu"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 5. waveform tensors: floating dtype, finite values
# --------------------------------------------------------------------------------------------
def test_waveform_tensors_must_be_floating_and_finite(model):
    w = _wave()
    for bad in (torch.full((8000,), 1000, dtype=torch.int16), torch.ones(8000, dtype=torch.bool),
                torch.complex(w, w)):
        with pytest.raises(TypeError, match="waveform.*scale integer PCM"):
            model.features(bad)
    with pytest.raises(TypeError, match="audio item 1"):
        model.features([w, (w * 32767).to(torch.int16)])
    for v in (float("nan"), float("inf")):
        x = w.clone()
        x[100] = v
        with pytest.raises(ValueError, match="waveform.*NaN or inf"):
            model.caption(x, max_new_tokens=1)
        with pytest.raises(ValueError, match="NaN or inf"):
            model.features(torch.stack([w, x]))  # (B, S)
    assert model.features(w.double()).shape == (1, 1024, 128)  # any floating dtype is fine


# --------------------------------------------------------------------------------------------
# 7. questions and argument types
# --------------------------------------------------------------------------------------------
def test_ask_rejects_empty_questions_and_wrong_types(model):
    w = _wave()
    for q in ("", "   \n", ["fine", " "]):
        with pytest.raises(ValueError, match="question must not be empty"):
            model.ask([w, w], q)
    with pytest.raises(TypeError, match="question must be a str or a list of str"):
        model.ask(w, 5)
    with pytest.raises(TypeError, match="question must be a str or a list of str"):
        model.ask([w, w], ["ok", 5])
    with pytest.raises(TypeError, match="instructions must be a str or a list of str"):
        model.generate(w, 5)
    with pytest.raises(TypeError, match="audio must be a path, a waveform tensor"):
        model.caption(5)
    with pytest.raises(TypeError, match="audio item 0 must be a path or a"):
        model.caption([5])
