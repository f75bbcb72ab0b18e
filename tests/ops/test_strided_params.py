# SPDX-License-Identifier: Apache-2.0
"""Parameters passed as strided views (a column of a wider leaf) reach every Triton kernel with
the unit stride the kernels index them by: the conv1d bias, the gated RMSNorm weight, the LoRA
bias. (Found in session 19: each read the neighbouring column instead; the SSD's ``A`` /
``dt_bias`` have their own test in ``test_ssd.py``.) Each op is compared with itself on
contiguous copies, outputs and gradients; the other column is poison and gets no gradient."""
from __future__ import annotations

import pytest
import torch

from samkern.ops.conv1d.function import causal_conv1d, conv_split
from samkern.ops.gated_rmsnorm.function import rmsnorm_gated
from samkern.ops.lora.function import lora_linear_triton
from samkern.testing import assert_close
from tests.conftest import INTERPRET


def _wide(t: torch.Tensor) -> torch.Tensor:
    """A leaf of shape t.shape + (2,) whose column 0 is t and column 1 poison."""
    big = torch.full(t.shape + (2,), 123.0, device=t.device, dtype=t.dtype)
    big[..., 0] = t
    return big.requires_grad_(True)


def _check(run, x, param):
    """run(x, p) with p a strided view of a wide leaf against run(x, p) with p contiguous."""
    x1 = x.detach().clone().requires_grad_(True)
    p1 = param.detach().clone().requires_grad_(True)
    y1 = run(x1, p1)
    x2 = x.detach().clone().requires_grad_(True)
    wide = _wide(param.detach())
    view = wide[..., 0]
    assert not view.is_contiguous()
    y2 = run(x2, view)
    assert_close("out", y2, y1, 1e-6)
    g = torch.randn_like(y1)
    gx1, gp1 = torch.autograd.grad(y1, (x1, p1), g)
    gx2, gw = torch.autograd.grad(y2, (x2, wide), g)
    assert_close("grad x", gx2, gx1, 1e-6)
    assert_close("grad param", gw[..., 0], gp1, 1e-6)
    assert float(gw[..., 1].abs().sum()) == 0.0


@pytest.fixture
def dev(kernel_device):
    if kernel_device == "cpu" and not INTERPRET:
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    return kernel_device


def test_conv1d_bias_view(dev):
    x = torch.randn(2, 24, 19, device=dev)
    w = torch.randn(24, 4, device=dev)
    _check(lambda x, b: causal_conv1d(x, w, b, activation="silu", backend="triton"), x, torch.randn(24, device=dev))


def test_conv_split_bias_view(dev):
    proj = torch.randn(2, 11, 40, device=dev)
    w = torch.randn(24, 4, device=dev)

    def run(p, b):
        parts = conv_split(p, (8, 24, 8), 1, (16, 8), w, b, activation="silu", backend="triton")
        return torch.cat([t.reshape(2, 11, -1) for t in parts], dim=-1)

    _check(run, proj, torch.randn(24, device=dev))


def test_rmsnorm_weight_view(dev):
    x = torch.randn(3, 7, 32, device=dev)
    z = torch.randn(3, 7, 32, device=dev)
    _check(lambda x, w: rmsnorm_gated(x, w, z, group_size=16, backend="triton"), x, torch.randn(32, device=dev))


def test_lora_bias_view(dev):
    W = torch.randn(20, 24, device=dev)
    A = torch.randn(4, 24, device=dev)
    B = torch.randn(20, 4, device=dev)
    _check(lambda x, b: lora_linear_triton(x, W, b, A, B, 1.5), torch.randn(2, 5, 24, device=dev),
           torch.randn(20, device=dev))
