# SPDX-License-Identifier: Apache-2.0
"""LoRALinear vs peft (CPU): outputs, gradients, state-dict mapping, merge/unmerge, validation."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from samkern.layers.lora_linear import LoRALinear, peft_to_samkern_state_dict, samkern_to_peft_state_dict
from samkern.testing import assert_close, assert_exact

peft = pytest.importorskip("peft")


class Tiny(nn.Module):
    """A two-linear module: ``proj`` is LoRA-wrapped, ``head`` stays plain."""

    def __init__(self, k: int, n: int, bias: bool = True, proj: nn.Module = None):
        super().__init__()
        self.proj = proj if proj is not None else nn.Linear(k, n, bias=bias)
        self.head = nn.Linear(n, 3)

    def forward(self, x):
        return self.head(self.proj(x))


def _peft_model(k, n, r, bias=True, train_base=False):
    base = Tiny(k, n, bias=bias).double()
    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], lora_dropout=0.0)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():  # B is zero at init: make the adapter do something
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_()
    if train_base:
        for name, p in pm.named_parameters():
            if "proj.base_layer" in name:
                p.requires_grad_(True)
    return pm


def _samkern_from_peft(pm, k, n, r, bias=True, train_base=False):
    ours = Tiny(k, n, proj=LoRALinear(k, n, bias=bias, r=r, train_base=train_base, dtype=torch.float64)).double()
    missing, unexpected = ours.load_state_dict(peft_to_samkern_state_dict(pm.state_dict()), strict=True)
    assert not missing and not unexpected
    return ours


@pytest.mark.parametrize("k,n,r,xshape,bias,train_base", [
    (16, 24, 4, (5,), True, False),
    (37, 53, 1, (2, 7), True, False),
    (37, 53, 8, (3, 4), False, True),
    (20, 12, 3, (9,), True, True),
])
def test_matches_peft(k, n, r, xshape, bias, train_base):
    pm = _peft_model(k, n, r, bias, train_base)
    ours = _samkern_from_peft(pm, k, n, r, bias, train_base)
    x1 = torch.randn(*xshape, k, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y_ref = pm(x1)
    y = ours(x2)
    assert_close("y", y, y_ref, 1e-12)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    lp = pm.base_model.model.proj
    assert_close("dx", x2.grad, x1.grad, 1e-12)
    assert_close("dA", ours.proj.lora_A.grad, lp.lora_A["default"].weight.grad, 1e-12)
    assert_close("dB", ours.proj.lora_B.grad, lp.lora_B["default"].weight.grad, 1e-12)
    if train_base:
        assert_close("dW", ours.proj.weight.grad, lp.base_layer.weight.grad, 1e-12)
        if bias:
            assert_close("db", ours.proj.bias.grad, lp.base_layer.bias.grad, 1e-12)
    else:
        assert not ours.proj.weight.requires_grad and ours.proj.weight.grad is None
        assert lp.base_layer.weight.grad is None
    # the set of trainable parameters is the same as peft's
    ours_tr = {k for k, p in ours.proj.named_parameters(prefix="proj") if p.requires_grad}
    peft_tr = {k for k, p in peft_to_samkern_state_dict(dict(pm.named_parameters())).items() if p.requires_grad}
    if not train_base:
        assert ours_tr == peft_tr


def test_dropout_matches_peft_under_same_mask():
    """Dropout hits the LoRA branch only: same RNG stream -> same mask -> same output as peft."""
    k, n, r, p = 12, 10, 2, 0.5
    base = Tiny(k, n).double()
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], lora_dropout=p))
    with torch.no_grad():
        pm.base_model.model.proj.lora_B["default"].weight.normal_()
    ours = Tiny(k, n, proj=LoRALinear(k, n, r=r, dropout=p, dtype=torch.float64)).double()
    ours.load_state_dict(peft_to_samkern_state_dict(pm.state_dict()))
    pm.train(); ours.train()
    x = torch.randn(6, k, dtype=torch.float64)
    torch.manual_seed(123)
    y_ref = pm(x)
    torch.manual_seed(123)
    y = ours(x)
    assert_close("y(dropout)", y, y_ref, 1e-12)
    # and dropout really is active: the base-only part is not the whole story
    ours.eval()
    assert (ours(x) - y).abs().max() > 1e-6


def test_state_dict_round_trip_both_ways():
    k, n, r = 9, 11, 2
    pm = _peft_model(k, n, r)
    psd = pm.state_dict()
    ssd = peft_to_samkern_state_dict(psd)
    assert set(ssd) == {"proj.weight", "proj.bias", "proj.lora_A", "proj.lora_B", "head.weight", "head.bias"}
    back = samkern_to_peft_state_dict(ssd)
    assert set(back) == set(psd)
    for key in psd:
        assert_exact(key, back[key], psd[key])
    # samkern -> peft -> samkern, loading into a fresh peft model
    ours = Tiny(k, n, proj=LoRALinear(k, n, r=r, dtype=torch.float64)).double()
    with torch.no_grad():
        ours.proj.lora_B.normal_()
    pm2 = _peft_model(k, n, r)
    pm2.load_state_dict(samkern_to_peft_state_dict(ours.state_dict(), ["proj"]), strict=True)
    x = torch.randn(4, k, dtype=torch.float64)
    assert_close("y(peft loaded from samkern)", pm2(x), ours(x), 1e-12)
    # adapter-only format of get_peft_model_state_dict
    ad = peft_to_samkern_state_dict(peft.get_peft_model_state_dict(pm))
    assert set(ad) == {"proj.lora_A", "proj.lora_B"}
    assert_exact("lora_A", ad["proj.lora_A"], ssd["proj.lora_A"])
    # other adapters are dropped, DoRA is refused
    extra = dict(psd)
    extra["base_model.model.proj.lora_A.other.weight"] = torch.zeros(1)
    assert set(peft_to_samkern_state_dict(extra)) == set(ssd)
    with pytest.raises(ValueError, match="DoRA"):
        peft_to_samkern_state_dict({"base_model.model.proj.lora_magnitude_vector.default.weight": torch.ones(1)})


def test_r0_is_nn_linear():
    lin = nn.Linear(7, 5)
    m = LoRALinear(7, 5, r=0)
    assert set(m.state_dict()) == set(lin.state_dict())
    m.load_state_dict(lin.state_dict())
    x = torch.randn(3, 7)
    assert_exact("y", m(x), lin(x))
    assert isinstance(m, nn.Linear) and m.weight.requires_grad
    m2 = LoRALinear(7, 5, bias=False, r=0)
    assert set(m2.state_dict()) == {"weight"}


def test_init_and_defaults():
    m = LoRALinear(64, 32, r=4)
    assert m.alpha == 8 and m.scale == 2.0
    assert torch.count_nonzero(m.lora_B) == 0 and m.lora_A.abs().max() > 0
    bound = 1 / 64 ** 0.5  # kaiming_uniform(a=√5) bound = 1/sqrt(fan_in)
    assert m.lora_A.abs().max() <= bound
    assert not m.weight.requires_grad and not m.bias.requires_grad
    assert m.lora_A.requires_grad and m.lora_B.requires_grad
    assert "r=4" in repr(m) and "alpha=8" in repr(m)
    lin = nn.Linear(10, 6, dtype=torch.float64)
    f = LoRALinear.from_linear(lin, r=2, alpha=3.0, train_base=True)
    assert f.scale == 1.5 and f.weight.dtype == torch.float64 and f.weight.requires_grad
    assert_exact("weight", f.weight.detach(), lin.weight.detach())
    x = torch.randn(2, 10, dtype=torch.float64)
    assert_exact("y(B=0)", f(x), lin(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_unmerge(dtype):
    m = LoRALinear(37, 53, r=3, dtype=dtype)
    with torch.no_grad():
        m.lora_B.normal_()
    w0 = m.weight.detach().clone()
    x = torch.randn(2, 5, 37, dtype=dtype)
    y0 = m(x)
    m.merge()
    assert m.merged and "merged=True" in repr(m)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close("y(merged)", m(x), y0, tol)
    assert_close("W+sBA", m.weight, w0 + m.scale * m.lora_B.detach() @ m.lora_A.detach(), tol)
    m.merge()  # idempotent
    m.unmerge()
    assert not m.merged
    assert_close("W(unmerged)", m.weight, w0, 1e-6 if dtype == torch.float32 else 1e-14)
    assert_close("y(unmerged)", m(x), y0, tol)


def test_layer_validation():
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear(4, 4, r=-1)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(4, 4, r=1, dropout=1.0)
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear(4, 4, r=True)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(4, 4, r=1, dropout="0.1")
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(4, 4, r=1, alpha=float("nan"))
    m = LoRALinear(4, 6, r=2)
    with pytest.raises(ValueError, match="last dimension"):
        m(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(3, 4, dtype=torch.float64))
    with torch.no_grad():
        m.lora_A[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(torch.randn(3, 4))


@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4)])
def test_layer_empty_batch_like_nn_linear(shape):
    """No rows in, no rows out, as nn.Linear does (and LoRALinear(r=0) did): the output has the
    right shape and dtype, and backward still reaches every trainable parameter (zero gradients)."""
    m = LoRALinear(4, 6, r=2)
    x = torch.randn(*shape, requires_grad=True)
    y = m(x)
    want = torch.nn.functional.linear(x, m.weight, m.bias)
    assert y.shape == want.shape == (*shape[:-1], 6) and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and not p.grad.any(), name


def test_merged_state_dict_round_trips():
    """The state dict holds the base weight whether or not the module is merged: reloading a
    merged module's dict applies the update once, and loading into a merged module leaves it
    unmerged with the new weights (a later unmerge must not subtract the old update)."""
    torch.manual_seed(0)
    x = torch.randn(5, 32)
    src = LoRALinear(32, 16, r=4)
    torch.nn.init.normal_(src.lora_B)
    want = src(x)
    src.merge()
    for dst_merged in (False, True):
        dst = LoRALinear(32, 16, r=4)
        if dst_merged:
            torch.nn.init.normal_(dst.lora_B)
            dst.merge()
        dst.load_state_dict(src.state_dict())
        assert not dst.merged
        torch.testing.assert_close(dst(x), want, rtol=0, atol=1e-5)
        dst.unmerge()  # a no-op now
        torch.testing.assert_close(dst(x), want, rtol=0, atol=1e-5)
    assert src.merged  # saving does not change the module
    torch.testing.assert_close(src(x), want, rtol=0, atol=1e-5)


def test_peft_adapter_name_that_is_not_there():
    sd = {"m.base_layer.weight": torch.randn(4, 4), "m.lora_A.default.weight": torch.randn(2, 4),
          "m.lora_B.default.weight": torch.randn(4, 2)}
    with pytest.raises(ValueError, match=r"adapter 'mine'.*\['default'\]"):
        peft_to_samkern_state_dict(sd, adapter_name="mine")
    assert set(peft_to_samkern_state_dict(sd)) == {"m.weight", "m.lora_A", "m.lora_B"}
