# SPDX-License-Identifier: Apache-2.0
"""``samkern.reproducible``: ``--deterministic`` pins MKL's reproducible mode before anything
computes, leaves a value the user set alone, and nothing changes without it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from samkern.reproducible import MKL_MODE, reproducible_cpu_math


def test_sets_the_mode_unless_the_user_did(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert reproducible_cpu_math() == MKL_MODE and os.environ["MKL_CBWR"] == MKL_MODE
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert reproducible_cpu_math() == "AUTO" and os.environ["MKL_CBWR"] == "AUTO"


def test_cli_sets_it_only_when_asked(monkeypatch):
    import samkern.train.cli as tcli
    from samkern.cli import main

    seen = []
    monkeypatch.setattr(tcli, "_cmd_demo", lambda args: seen.append(os.environ.get("MKL_CBWR")) or 0)
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert main(["demo"]) == 0 and seen[-1] is None
    assert main(["demo", "--deterministic"]) == 0 and seen[-1] == MKL_MODE


def test_cli_import_computes_nothing():
    # MKL reads MKL_CBWR at its first call: importing the command line must not load torch
    code = "import sys, samkern.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
