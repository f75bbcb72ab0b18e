# SPDX-License-Identifier: Apache-2.0
"""Cheaper eager launches of ``@triton.jit`` kernels: ``fast_launch(kernel)[grid](...)``.

Why. Short-sequence training is bound by host time, and ``kernel[grid](...)`` in Triton 3.6 costs
about 50 us of Python per launch on the H100 box (``JITFunction.run``: bind and specialise every
argument, build the cache key from the options, look the kernel up, check globals, then call the
C launcher), of which the C launcher itself is about 12 us
(``benchmarks/results/dev-runs/s8-call2-launch.log``). The SSD forward + backward makes four such
launches per step, the LoRA linear two.

How. :class:`FastLaunch` keeps, per kernel, a dictionary from a *specialisation key* to the
``CompiledKernel`` that Triton's own launch produced for it, and on a hit calls the compiled
kernel's C launcher directly. The key holds everything Triton specialises on, computed without
its binder:

* tensors: dtype and whether the data pointer is 16-byte aligned (Triton's ``D`` attribute);
* ints: the exact value (covers ``== 1``, ``% 16 == 0`` and int32 / int64);
* floats: only the type (Triton never specialises float arguments);
* host TMA descriptors (``triton.tools.tensor_descriptor.TensorDescriptor``, and Gluon's, which
  adds its shared-memory layout): dtype, shape, strides, block shape, padding and layout (their
  base is 16-byte aligned by construction);
* every constexpr (passed by keyword), ``num_warps``, ``num_stages`` and the current device.

Anything else (a ``None`` or bool argument, a callable grid, launch hooks installed
by a profiler, the CPU interpreter) takes ``kernel[grid](...)`` unchanged. A miss also takes it,
which compiles (or finds the compiled kernel in Triton's caches) and launches; the result is
remembered for the next call. Exact int values in the key mean one entry per distinct size, so
the table is bounded (cleared past ``MAX_ENTRIES``; an entry costs nothing to rebuild).

Requirements on the kernel: the runtime arguments come first and the constexprs last, in the
signature order, and the call passes runtime arguments positionally and constexprs by keyword
(checked when wrapping and per call).

``SAMKERN_FAST_LAUNCH=0`` (read at import) or ``samkern.launch.ENABLED = False`` turns the fast
path off: every launch then goes through Triton's.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Dict, Tuple

import torch

__all__ = ["FastLaunch", "fast_launch", "MAX_ENTRIES", "ENABLED"]

MAX_ENTRIES = 512
# the interpreter runs kernels as Python (nothing compiled to call)
ENABLED = os.environ.get("SAMKERN_FAST_LAUNCH", "1") != "0" and os.environ.get("TRITON_INTERPRET", "0") != "1"


class FastLaunch:
    """Wraps one ``@triton.jit`` kernel; ``wrapped[grid](*runtime_args, num_warps=, num_stages=,
    **constexprs)`` launches it like ``kernel[grid](...)`` (module docstring)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        params = getattr(fn, "params", None)
        self._ok = params is not None  # an interpreted kernel has no compiled form
        self.hits = 0  # launches that took the direct path (tests read it)
        self._cache: Dict[tuple, Any] = {}
        if params is None:
            self.n_runtime, self.constexpr_names, self._options = 0, (), ()
            return
        flags = [p.is_constexpr for p in params]
        self.n_runtime = flags.index(True) if True in flags else len(flags)
        if any(not f for f in flags[self.n_runtime:]):
            raise ValueError(f"fast_launch({getattr(fn, '__name__', fn)}): constexpr parameters must come last")
        self.constexpr_names = tuple(p.name for p in params[self.n_runtime:])
        # launch options passed besides the constexprs (a Gluon kernel may declare num_warps as a
        # constexpr parameter: then it is keyed as one)
        self._options = tuple(o for o in ("num_warps", "num_stages") if o not in self.constexpr_names)

    def __getitem__(self, grid: Tuple[int, ...]):
        return functools.partial(self.launch, grid)

    def launch(self, grid, *args, **kwargs) -> None:
        """``kernel[grid](*args, **kwargs)``, through the direct path where the key allows it."""
        key = self._key(grid, args, kwargs)
        if key is None:
            self.fn[grid](*args, **kwargs)
            return
        kernel = self._cache.get(key)
        if kernel is None:
            kernel = self.fn[grid](*args, **kwargs)
            if hasattr(kernel, "result"):  # an async compile's future
                kernel = kernel.result()
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = kernel
            return
        n = len(grid)
        kernel.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, _DRIVER_FNS[1](key[-1]),
                   kernel.function, kernel.packed_metadata, None, None, None, *args,
                   *key[len(args):len(args) + len(self.constexpr_names)])
        self.hits += 1

    def _key(self, grid, args: tuple, kwargs: dict):
        """Everything Triton specialises this launch on (module docstring), the device last; None
        when the launch must go through Triton's own path."""
        if not (ENABLED and self._ok) or type(grid) is not tuple or len(args) != self.n_runtime or _hooks_installed():
            return None
        try:
            key = [a if type(a) is int else (a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor)
                   else _other_spec(a) for a in args]
            key += [kwargs[name] for name in self.constexpr_names]
        except (_Unkeyed, KeyError):  # an argument Triton's binder has to look at, a defaulted constexpr
            return None
        n_opts = sum(o in kwargs for o in self._options)
        if len(kwargs) != len(self.constexpr_names) + n_opts:  # another launch option (num_ctas, ...)
            return None
        key.append(kwargs.get("num_warps", 4))
        key.append(kwargs.get("num_stages", 3))
        key.append(_DRIVER_FNS[0]() if _DRIVER_FNS else _driver_fns()[0]())
        return tuple(key)


class _Unkeyed(Exception):
    pass


def _other_spec(a: Any):
    """The key entry of an argument that is neither an int nor a tensor."""
    t = type(a)
    if t is float:
        return float  # Triton never specialises floats
    if t.__name__ == "TensorDescriptor":  # a host TMA descriptor (base always 16-byte aligned)
        # Gluon's descriptors carry their shared-memory layout too (part of the specialisation)
        return (a.base.dtype, tuple(a.shape), tuple(a.strides), tuple(a.block_shape), a.padding,
                getattr(a, "layout", None))
    raise _Unkeyed  # None, bool, ...: Triton's binder decides


def _hook_active(hook: Any) -> bool:
    # Triton 3.6 keeps the hooks as (normally empty) HookChain objects; older versions used None
    return hook is not None and bool(getattr(hook, "calls", True))


_KNOBS: list = []


def _hooks_installed() -> bool:
    # a profiler's launch hooks (proton, ...) need Triton's own launch path, which calls them
    if not _KNOBS:
        from triton import knobs

        _KNOBS.append(knobs.runtime)
    rt = _KNOBS[0]
    return _hook_active(rt.launch_enter_hook) or _hook_active(rt.launch_exit_hook)


_DRIVER_FNS: list = []


def _driver_fns() -> list:
    """[current device index, stream of a device]: the functions Triton's own launch calls."""
    if not _DRIVER_FNS:
        from triton.runtime.driver import driver

        _DRIVER_FNS.extend((driver.active.get_current_device, driver.active.get_current_stream))
    return _DRIVER_FNS


def fast_launch(fn: Any) -> FastLaunch:
    """``FastLaunch(fn)``: see the module docstring."""
    return FastLaunch(fn)
