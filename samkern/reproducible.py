# SPDX-License-Identifier: Apache-2.0
"""Bit-reproducible CPU runs: the same seed, the same losses, the same checkpoint.

PyTorch's CPU matrix products go to Intel MKL, whose default kernels depend on the memory
alignment of their operands, which changes from one process to the next. Two runs of
``samkern demo`` with the same seed agreed bit for bit for 4-8 steps, then differed in the last
bit of the loss, and after 1,100 steps ended at 80.2 %, 82.9 % or 87.4 % closed-ended QA accuracy
(``NOTES.md``, session 17). Repeated 50-step runs: 2 of 6 drifted with MKL's default, none of 6
with ``MKL_CBWR=AVX2,STRICT`` (two full demos: the same checkpoint, bit for bit), which costs about
20 % of the full CPU demo's training time (150 -> 177-181 s on 2 cores); ``AUTO,STRICT`` and
``AVX512,STRICT`` still drifted on an AVX-512 machine, ``COMPATIBLE`` cost 50 %.

Opt-in, like other frameworks' determinism switches: ``samkern demo --deterministic`` /
``samkern train --deterministic`` call :func:`reproducible_cpu_math` before the parser is even
built (MKL reads ``MKL_CBWR`` once, at its first call, and importing torch's set-up already calls
it: set after the parser was built, the flag changed nothing, ``NOTES.md``). In your own script,
set the variable in the environment, or call this before importing torch. A value the user
set is left alone. No effect on GPU math nor without MKL.
"""
from __future__ import annotations

import os

__all__ = ["reproducible_cpu_math", "MKL_MODE"]

MKL_MODE = "AVX2,STRICT"


def reproducible_cpu_math() -> str:
    """Set ``MKL_CBWR`` to :data:`MKL_MODE` unless it is set; returns the value in effect."""
    return os.environ.setdefault("MKL_CBWR", MKL_MODE)
