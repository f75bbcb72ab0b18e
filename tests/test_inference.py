# SPDX-License-Identifier: Apache-2.0
"""samkern.inference: custom autograd Functions run without their node when nothing needs a
gradient, with the node's outputs exactly; with gradients, through ``apply`` as before.

CPU: the Triton backends run in the interpreter (conftest), so every op's kernel path is taken."""
from __future__ import annotations

import pytest
import torch

from samkern import inference
from samkern.testing import assert_exact


class _Twice(torch.autograd.Function):
    """A toy Function recording how it was run."""

    calls: list = []

    @staticmethod
    def forward(ctx, x, k):
        _Twice.calls.append(("forward", tuple(ctx.needs_input_grad)))
        ctx.save_for_backward(x)
        ctx.k = k
        ctx.set_materialize_grads(False)
        y = x * k
        if k == 0:
            ctx.mark_non_differentiable(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        return dy * ctx.k, None


def test_apply_with_and_without_gradients():
    _Twice.calls.clear()
    x = torch.randn(4, requires_grad=True)
    y = inference.apply(_Twice, x, 2.0)  # a gradient can flow: the real node
    assert y.grad_fn is not None and _Twice.calls[-1] == ("forward", (True, False))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert_exact("grad", g, torch.full_like(x, 2.0))
    with torch.no_grad():
        y2 = inference.apply(_Twice, x, 2.0)
    assert y2.grad_fn is None and _Twice.calls[-1] == ("forward", (False, False))
    y3 = inference.apply(_Twice, x.detach(), 0)  # grad mode on, nothing requires grad
    assert y3.grad_fn is None and _Twice.calls[-1] == ("forward", (False, False))
    assert_exact("y", y2, y.detach())


def _op_cases():
    """(name, Function class, call(inputs) -> output, inputs requiring grad) per op."""
    from samkern.ops.connector import function as cr
    from samkern.ops.conv1d.function import ConvSplitFunction, CausalConv1dFunction, causal_conv1d, conv_split
    from samkern.ops.gated_rmsnorm.function import RMSNormGatedFunction, rmsnorm_gated
    from samkern.ops.lora.function import LoRALinearFunction, lora_linear_triton
    from samkern.ops.ssd.chunk import SSDChunkScanFunction, ssd_chunk_scan

    def conv(t):
        return causal_conv1d(t["x"], t["w"], t["b"], activation="silu", backend="triton")

    def split(t):
        return conv_split(t["p"], [8, 12, 3], 1, [4, 4, 4], t["w2"], t["b2"], activation="silu", backend="triton")

    def norm(t):
        return rmsnorm_gated(t["h"], t["g"], t["z"], group_size=4, backend="triton")

    def reorder(t):
        return cr.connector_reorder(t["tok"], "freq", t["sep"], n_time=3, n_freq=2, backend="triton")

    def lora(t):
        return lora_linear_triton(t["u"], t["W"], None, t["A"], t["Bl"], 2.0)  # (its verifier wants CUDA)

    def ssd(t):
        return ssd_chunk_scan(t["xs"], t["dt"], t["Ad"], t["Bs"], t["Cs"], 64, D=t["D"], dt_softplus=True,
                              return_final_states=True, backend="triton")

    return [("causal_conv1d", CausalConv1dFunction, conv), ("conv_split", ConvSplitFunction, split),
            ("rmsnorm_gated", RMSNormGatedFunction, norm), ("connector_reorder", cr._ConnectorReorderFn, reorder),
            ("lora_linear", LoRALinearFunction, lora), ("ssd_chunk_scan", SSDChunkScanFunction, ssd)]


def _inputs():
    t = {
        "x": torch.randn(2, 6, 11), "w": torch.randn(6, 4), "b": torch.randn(6),
        "p": torch.randn(2, 9, 23), "w2": torch.randn(12, 4), "b2": torch.randn(12),
        "h": torch.randn(5, 8), "g": torch.randn(8), "z": torch.randn(5, 8),
        "tok": torch.randn(2, 6, 16), "sep": torch.randn(16),
        "u": torch.randn(7, 16), "W": torch.randn(24, 16), "A": torch.randn(4, 16), "Bl": torch.randn(24, 4),
        "xs": torch.randn(1, 20, 2, 16), "dt": torch.randn(1, 20, 2), "Ad": -torch.rand(2) - 0.5,
        "Bs": torch.randn(1, 20, 1, 16), "Cs": torch.randn(1, 20, 1, 16), "D": torch.randn(2),
    }
    return t


@pytest.mark.parametrize("name", ["causal_conv1d", "conv_split", "rmsnorm_gated", "connector_reorder", "lora_linear",
                                  "ssd_chunk_scan"])
def test_ops_skip_the_node_without_gradients(name, monkeypatch):
    _, fn, call = next(c for c in _op_cases() if c[0] == name)
    t = _inputs()
    with_grad = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    want = call(with_grad)  # through the Function's node
    want = want if isinstance(want, tuple) else (want,)
    assert any(w.grad_fn is not None for w in want)

    def no_node(*args):
        raise AssertionError(f"{name}: the inference call went through {fn.__name__}.apply")

    monkeypatch.setattr(fn, "apply", no_node)
    with torch.no_grad():
        got = call(with_grad)
    got = got if isinstance(got, tuple) else (got,)
    got2 = call(t)  # grad mode on, nothing requires grad
    got2 = got2 if isinstance(got2, tuple) else (got2,)
    assert len(got) == len(want) == len(got2)
    for i, (a, b, w) in enumerate(zip(got, got2, want)):
        assert a.grad_fn is None and b.grad_fn is None
        assert_exact(f"{name} output {i}", a, w.detach())
        assert_exact(f"{name} output {i} (no requires_grad)", b, w.detach())
