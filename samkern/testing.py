# SPDX-License-Identifier: Apache-2.0
"""Numerical comparison helpers shared by tests and benchmarks.

Every float comparison in samkern is relative: ``‖out − ref‖ / ‖ref‖`` (computed in fp64).
Low-precision kernels are judged by the "2x rule": their error against an fp64/fp32
reference may be at most twice the error of the reference itself run in the low precision.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["rel_err", "assert_close", "assert_close_lowp", "assert_exact", "poison_", "poisoned_empty"]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ‖out − ref‖ / ‖ref‖ in fp64 (0 when both are zero)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


def _check_finite(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    out_bad = ~torch.isfinite(out.detach())
    ref_bad = ~torch.isfinite(ref.detach())
    if out_bad.any() and not torch.equal(out_bad.cpu(), ref_bad.cpu()):
        idx = out_bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{name}: {int(out_bad.sum())} non-finite elements (NaN/inf) not present in the "
            f"reference, first at {idx}; an unwritten (NaN-poisoned) output looks like this"
        )


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> float:
    """Assert ``rel_err(out, ref) <= rtol`` with shapes equal and no stray NaN/inf."""
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    _check_finite(name, out, ref)
    err = rel_err(out, ref)
    if not err <= rtol:
        diff = (out.detach().double().cpu() - ref.detach().double().cpu()).abs()
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"{name}: relative error {err:.3e} > {rtol:.1e} (max abs diff {diff.max().item():.3e} at {where})"
        )
    return err


def assert_close_lowp(
    name: str, out: torch.Tensor, ref: torch.Tensor, ref_lowp: torch.Tensor, factor: float = 2.0, floor: float = 1e-6
) -> float:
    """The 2x rule: ``rel_err(out, ref) <= factor * rel_err(ref_lowp, ref) + floor``.

    ``ref`` is a high-precision reference, ``ref_lowp`` the same reference computed in the
    low precision under test.
    """
    budget = factor * rel_err(ref_lowp, ref) + floor
    return assert_close(name, out, ref, rtol=budget)


def assert_exact(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    """Bit-exact equality (for permutations such as the connector reorder)."""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        raise AssertionError(f"{name}: {tuple(out.shape)}/{out.dtype} != {tuple(ref.shape)}/{ref.dtype}")
    if not torch.equal(out, ref):
        bad = (out != ref) | (torch.isnan(out) != torch.isnan(ref))
        raise AssertionError(f"{name}: {int(bad.sum())} elements differ, first at {bad.nonzero()[:5].tolist()}")


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill a freshly allocated output with NaN (or the max value for integers) in place."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max)


@contextlib.contextmanager
def poisoned_empty() -> Iterator[None]:
    """Within the block, ``torch.empty`` fills floating tensors with NaN (:func:`poison_`): every
    buffer a kernel allocates that way must be written before it is read."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return poison_(t) if t.is_floating_point() else t

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real


def hf_mamba2_cpu_path_usable() -> bool:
    """Whether HF transformers' Mamba-2 runs its pure-PyTorch path on CPU tensors here.

    transformers binds the mamba-ssm / causal-conv1d kernels at import when those packages are
    installed and then calls them on CPU tensors too (a CUDA-only kernel fails there: "Expected
    x.is_cuda()", transformers 5.17 on the GPU image, ``dev-runs/s17-call7-*``); the PyTorch path,
    the tests' oracle, is only reachable without them (the CPU CI machine)."""
    import importlib.util

    return importlib.util.find_spec("causal_conv1d") is None and importlib.util.find_spec("mamba_ssm") is None

