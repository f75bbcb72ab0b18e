# SPDX-License-Identifier: Apache-2.0
"""``samkern.reproducible``: the command line pins MKL's reproducible mode before anything
computes, and leaves a value the user set alone."""
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


def test_cli_sets_it_before_parsing(monkeypatch):
    from samkern.cli import main

    monkeypatch.delenv("MKL_CBWR", raising=False)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["MKL_CBWR"] == MKL_MODE


def test_cli_import_computes_nothing():
    # MKL reads MKL_CBWR at its first call: importing the command line must not load torch
    code = "import sys, samkern.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
