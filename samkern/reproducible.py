# SPDX-License-Identifier: Apache-2.0
"""Bit-reproducible CPU runs: the same seed, the same losses, the same checkpoint.

PyTorch's CPU matrix products go to Intel MKL, whose default kernels depend on the memory
alignment of their operands, which changes from one process to the next. Two runs of
``samkern demo`` with the same seed agreed bit for bit for 4-8 steps, then differed in the last
bit of the loss, and after 1,100 steps ended at 80.2 %, 82.9 % or 87.4 % closed-ended QA accuracy
(``NOTES.md``, session 17; repeated 50-step runs: 2 of 6 drifted with the default, none of 6
with ``MKL_CBWR=AVX2,STRICT``, at about the same speed; ``AUTO,STRICT`` still drifted on an
AVX-512 machine and ``COMPATIBLE`` cost 50 % more time).

MKL reads ``MKL_CBWR`` once, at its first call, so :func:`reproducible_cpu_math` must run before
any CPU matrix product of the process: the ``samkern`` command line calls it first thing, and
:func:`samkern.demo.run_demo` at its start (effective in a fresh process). A value the user set is
left alone (``MKL_CBWR=AUTO`` restores MKL's default). No effect on GPU math nor without MKL.
"""
from __future__ import annotations

import os

__all__ = ["reproducible_cpu_math", "MKL_MODE"]

MKL_MODE = "AVX2,STRICT"


def reproducible_cpu_math() -> str:
    """Set ``MKL_CBWR`` to :data:`MKL_MODE` unless it is set; returns the value in effect."""
    return os.environ.setdefault("MKL_CBWR", MKL_MODE)
