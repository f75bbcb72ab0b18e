# SPDX-License-Identifier: Apache-2.0
"""Which implementation runs an op: ``cuda`` (the compiled extension), ``triton`` or ``ref``.

``pick_backend(op, tensors, backend=None)``:

* an explicit ``backend=`` argument wins, then the ``SAMKERN_BACKEND`` environment variable
  (``ref``, ``triton`` or ``cuda``), then the best available: ``cuda`` if the op has a verifier
  registered for it and it accepts the inputs, else ``triton`` for CUDA tensors when the op has a
  Triton implementation, else ``ref`` (pure PyTorch, runs anywhere).
* A verifier returns ``(ok, reason)``; a declined backend is logged once with its reason.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch

__all__ = ["BACKENDS", "pick_backend", "register", "available_backends", "triton_float_verifier", "num_sms",
           "row_stride_unit", "row_strides", "graph_replay_ms", "capture_graph",
           "tuning_from_env", "next_pow2", "cdiv"]

log = logging.getLogger("samkern")

BACKENDS = ("cuda", "triton", "ref")
Verifier = Callable[..., Tuple[bool, str]]
_VERIFIERS: Dict[Tuple[str, str], Verifier] = {}
_LOGGED: set = set()


def register(op: str, backend: str, verifier: Verifier) -> None:
    """Declare that ``op`` has a ``backend`` implementation, accepted when ``verifier(*tensors)`` says so."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _VERIFIERS[(op, backend)] = verifier


def available_backends(op: str) -> list:
    return [b for b in BACKENDS if b == "ref" or (op, b) in _VERIFIERS]


def _log_once(op: str, backend: str, reason: str) -> None:
    # logging is a graph break under torch.compile; the eager call already logged it
    if torch.compiler.is_compiling():
        return
    if (op, backend, reason) not in _LOGGED:
        _LOGGED.add((op, backend, reason))
        log.info("samkern: %s: backend %s declined: %s", op, backend, reason)


def pick_backend(op: str, tensors: Union[Iterable[Optional[torch.Tensor]], Mapping[str, Optional[torch.Tensor]]],
                 backend: Optional[str] = None) -> str:
    # ``tensors`` may name its entries ({"x": x, ...}) so that a non-tensor argument is reported by
    # name here, before any verifier reads ``.dtype`` from it (the ops validate after dispatch)
    named = tensors.items() if isinstance(tensors, Mapping) else ((None, t) for t in tensors)
    tensors = []
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            what = name if name is not None else "every tensor argument"
            raise TypeError(f"{op}: {what} must be a torch.Tensor, got {type(t).__name__}")
        tensors.append(t)
    forced = backend or os.environ.get("SAMKERN_BACKEND") or None
    if forced is not None:
        if forced not in BACKENDS:
            raise ValueError(f"unknown backend {forced!r}; expected one of {BACKENDS}")
        if forced != "ref":
            verifier = _VERIFIERS.get((op, forced))
            if verifier is None:
                raise ValueError(f"{op} has no {forced!r} backend; available: {available_backends(op)}")
            ok, reason = verifier(*tensors)
            if not ok:
                raise ValueError(f"{op}: backend {forced!r} cannot run these inputs: {reason}")
        return forced
    for cand in ("cuda", "triton"):
        verifier = _VERIFIERS.get((op, cand))
        if verifier is None:
            continue
        ok, reason = verifier(*tensors)
        if ok:
            return cand
        _log_once(op, cand, reason)
    return "ref"


def on_cuda(*tensors: torch.Tensor) -> Tuple[bool, str]:
    """Common verifier piece: every tensor on a CUDA device."""
    if not tensors or not all(t.is_cuda for t in tensors):
        return False, "inputs are not CUDA tensors"
    return True, ""


def triton_float_verifier(*tensors: torch.Tensor) -> Tuple[bool, str]:
    """The usual Triton verifier: every tensor fp32/fp16/bf16 (fp64 goes to the reference) and on
    a CUDA device, or anywhere while the Triton interpreter runs (``TRITON_INTERPRET=1``)."""
    bad = [t.dtype for t in tensors if t.dtype not in (torch.float32, torch.float16, torch.bfloat16)]
    if bad:
        return False, f"unsupported dtype {bad[0]} (the kernels take fp32/fp16/bf16)"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True, ""
    return on_cuda(*tensors)


_NUM_SMS: Dict[int, int] = {}


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (launch grids size themselves by it). Cached:
    ``torch.cuda.get_device_properties`` costs host time that an eager training step would pay
    on every call."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def graph_replay_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100, side_warmups: int = 3,
                    capture_error_mode: str = "global") -> float:
    """Median milliseconds of CUDA-graph replays of ``fn`` (``triton.testing.do_bench``: the L2
    flushed between replays), captured after ``side_warmups`` calls on a side stream, so lazy
    initialisation and tuning happen outside the capture. The benchmark harness's graph column
    (``benchmarks.harness.time_graph``) and the LoRA tuner's GPU time both come from here.
    Raises what the capture raises (a RuntimeError when ``fn`` cannot be captured)."""
    from triton.testing import do_bench

    graph = capture_graph(fn, side_warmups, capture_error_mode)
    torch.cuda.synchronize()
    return do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")


def capture_graph(fn: Callable[[], object], side_warmups: int = 3,
                  capture_error_mode: str = "global") -> "torch.cuda.CUDAGraph":
    """``fn`` captured in a CUDA graph after ``side_warmups`` calls on a side stream (lazy
    initialisation and tuning happen there, outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(side_warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode=capture_error_mode):
        fn()
    return graph


def tuning_from_env(var: str, table: dict) -> dict:
    """Launch-setting overrides for a kernel's tuning table from the environment variable ``var``
    (a JSON object, e.g. ``SAMKERN_SSD_BWD_TUNING='{"num_warps": 4}'``), so benchmarks and tests
    can try settings without code edits. Unknown keys are an error (a typo would silently time
    the default). Returns the overrides (empty when the variable is unset)."""
    raw = os.environ.get(var)
    if not raw:
        return {}
    import json

    try:
        over = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{var} must be a JSON object, got {raw!r}: {e}") from None
    if not isinstance(over, dict):
        raise ValueError(f"{var} must be a JSON object, got {raw!r}")
    unknown = sorted(set(over) - set(table))
    if unknown:
        raise ValueError(f"{var}: unknown keys {unknown}; known: {sorted(table)}")
    return over


# Launch-path arithmetic in plain Python: triton.next_power_of_2 / triton.cdiv are
# constexpr_functions, ~3 us a call on a slow host, and launch paths call them several times.
def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for ints."""
    return -(-a // b)


# ``row_stride_unit`` on / off (A/B runs switch it; off = every stride passed as given)
ROW_STRIDE_HINT = True


def row_stride_unit(elem_size: int, *strides: int) -> int:
    """The divisor a kernel's row / batch strides are passed in (the kernel multiplies them back by
    this constexpr, e.g. ``RS``), so that the compiler knows their alignment.

    Triton marks an integer argument 16-divisible or nothing: a row stride like a Mamba-2 130m
    block's 3352 (the in_proj output: 6704-byte rows, 16-byte aligned) leaves it knowing no
    alignment at all, and every access to those rows becomes a 2-byte load. When some stride is
    not a multiple of 16 elements but all are multiples of the 16 bytes a vector access needs,
    this is 16 bytes in elements; otherwise 1 (the strides as given: the same compiled code as
    without the hint)."""
    unit = max(1, 16 // elem_size)
    if not ROW_STRIDE_HINT or all(st % 16 == 0 for st in strides) or any(st % unit for st in strides):
        return 1
    return unit


def row_strides(elem_size: int, *strides: int) -> Tuple[int, Tuple[int, ...]]:
    """``(unit, strides divided by it)``: :func:`row_stride_unit` and the values to pass."""
    unit = row_stride_unit(elem_size, *strides)
    return unit, tuple(st // unit for st in strides)
