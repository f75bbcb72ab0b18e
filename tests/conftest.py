# SPDX-License-Identifier: Apache-2.0
"""Shared test fixtures.

* ``gpu`` marker: tests that need CUDA (and usually the mamba-ssm peer); skipped without a GPU.
* Triton kernels run on the CPU through the interpreter: when no GPU is present we set
  ``TRITON_INTERPRET=1`` before anything imports triton, so ``kernel_device`` is ``"cpu"``
  there and ``"cuda"`` on the GPU machine.
* ``torch.empty``-family allocations made by samkern's ops are NaN-poisoned (see ``poison``)
  so any output element a kernel forgets to write fails loudly.
* ``seed``: every test gets its own reproducible seed derived from its node id, so each
  parametrized case draws fresh inputs.
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# mamba-ssm (the GPU peer) autotunes every Triton kernel for every new shape, minutes per test
# file; its deterministic mode runs one config. Correctness tests do not need its fastest config
# (benchmarks/ has its own conftest and keeps autotuning).
os.environ.setdefault("MAMBA_DETERMINISTIC", "1")
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped otherwise)")
    config.addinivalue_line("markers", "slow: long-running CPU test")


def pytest_runtest_logreport(report):
    """With SAMKERN_INSTAFAIL=1, print a failure's report at once: a device run cut off by its
    time limit still shows why the tests that already ran failed."""
    if report.failed and os.environ.get("SAMKERN_INSTAFAIL") == "1":
        print(f"\n--- FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n", flush=True)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def seed(request) -> int:
    """Seed torch from the test id: fresh inputs per case, reproducible across runs."""
    s = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    torch.manual_seed(s)
    return s


@pytest.fixture
def kernel_device() -> str:
    """Where Triton kernels run in this session: the GPU, or the CPU through the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


_REAL_EMPTY = torch.empty
_REAL_EMPTY_LIKE = torch.empty_like


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Make ``torch.empty``/``torch.empty_like`` return NaN-filled (or max-int) tensors."""

    @torch.no_grad()
    def _fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype not in (torch.bool,) and not t.is_complex():
            t.fill_(torch.iinfo(t.dtype).max)
        return t

    def empty(*args, **kwargs):
        return _fill(_REAL_EMPTY(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return _fill(_REAL_EMPTY_LIKE(*args, **kwargs))

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield
