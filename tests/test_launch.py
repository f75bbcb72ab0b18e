# SPDX-License-Identifier: Apache-2.0
"""samkern.launch: the direct-launch cache must key on everything Triton specialises on.

CPU: a fake kernel records what Triton's path would compile and what the direct path calls.
GPU: a real kernel through aligned and misaligned views, ints that do and do not divide by 16,
and the SSD / LoRA entry points really taking the direct path after their first call."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from samkern import launch
from samkern.testing import assert_close


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, n, a, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, a * tl.load(x_ptr + offs, mask=m) + 1.0, mask=m)


class _Param:
    def __init__(self, name: str, constexpr: bool) -> None:
        self.name = name
        self.is_constexpr = constexpr


class _Compiled:
    def __init__(self, i: int) -> None:
        self.function = f"function-{i}"
        self.packed_metadata = f"meta-{i}"
        self.calls = []

    def run(self, *args) -> None:
        self.calls.append(args)


class _FakeKernel:
    """Stands in for a JITFunction: ``kernel[grid](...)`` 'compiles' (records) and returns a fake
    compiled kernel, as Triton's launch returns its CompiledKernel."""

    __name__ = "fake_kernel"

    def __init__(self, names=("x", "n", "eps", "BLOCK")) -> None:
        self.params = [_Param(n, n.isupper() or n == "num_warps") for n in names]
        self.slow = []

    def __getitem__(self, grid):
        def go(*args, **kwargs):
            self.slow.append((grid, args, kwargs))
            return _Compiled(len(self.slow) - 1)

        return go


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(launch, "ENABLED", True)
    monkeypatch.setattr(launch, "_hooks_installed", lambda: False)
    monkeypatch.setattr(launch, "_DRIVER_FNS", [lambda: 0, lambda device: 1234])
    k = _FakeKernel()
    return k, launch.FastLaunch(k)


def _buf(dtype=torch.float32):
    # 64-byte aligned storage (torch's CPU allocator aligns to 64), so offset views are controlled
    return torch.empty(64, dtype=dtype)


def test_hit_calls_the_compiled_launcher_with_every_parameter(fake):
    k, fl = fake
    x = _buf()
    fl[(3, 2)](x, 32, 0.5, BLOCK=16, num_warps=4, num_stages=2)
    assert len(k.slow) == 1 and fl.hits == 0
    compiled = fl._cache[next(iter(fl._cache))]
    fl[(5,)](x, 32, 0.25, BLOCK=16, num_warps=4, num_stages=2)  # new float value: same specialisation
    assert len(k.slow) == 1 and fl.hits == 1
    (call,) = compiled.calls
    assert call == (5, 1, 1, 1234, "function-0", "meta-0", None, None, None, x, 32, 0.25, 16)


@pytest.mark.parametrize("change", ["misaligned", "dtype", "int_value", "int_one", "constexpr", "warps", "stages"])
def test_every_specialisation_change_compiles_again(fake, change):
    k, fl = fake
    x = _buf()
    base = dict(BLOCK=16, num_warps=4, num_stages=2)
    fl[(1,)](x, 32, 0.5, **base)
    args, kw = [x, 32, 0.5], dict(base)
    if change == "misaligned":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary: Triton drops the alignment attribute
    elif change == "dtype":
        args[0] = _buf(torch.float16)
    elif change == "int_value":
        args[1] = 33  # no longer divisible by 16
    elif change == "int_one":
        args[1] = 1  # Triton makes an int equal to 1 a constant
    elif change == "constexpr":
        kw["BLOCK"] = 32
    elif change == "warps":
        kw["num_warps"] = 8
    else:
        kw["num_stages"] = 3
    fl[(1,)](*args, **kw)
    assert len(k.slow) == 2 and fl.hits == 0
    fl[(1,)](*args, **kw)  # and that specialisation is cached in turn
    assert len(k.slow) == 2 and fl.hits == 1


@pytest.mark.parametrize("case", ["none_arg", "bool_arg", "default_constexpr", "extra_option", "callable_grid",
                                  "disabled", "hooks"])
def test_anything_unkeyed_takes_tritons_path_every_time(fake, monkeypatch, case):
    k, fl = fake
    x = _buf()
    args, kw, grid = [x, 32, 0.5], dict(BLOCK=16, num_warps=4), (1,)
    if case == "none_arg":
        args[0] = None
    elif case == "bool_arg":
        args[1] = True
    elif case == "default_constexpr":
        kw.pop("BLOCK")
    elif case == "extra_option":
        kw["num_ctas"] = 1
    elif case == "callable_grid":
        grid = lambda meta: (1,)  # noqa: E731
    elif case == "disabled":
        monkeypatch.setattr(launch, "ENABLED", False)
    else:
        monkeypatch.setattr(launch, "_hooks_installed", lambda: True)
    for _ in range(3):
        fl[grid](*args, **kw)
    assert len(k.slow) == 3 and fl.hits == 0 and not fl._cache


def test_tma_descriptors_are_keyed_by_their_layout(fake):
    from triton.tools.tensor_descriptor import TensorDescriptor

    k, fl = fake
    t = torch.empty(64, 64, dtype=torch.bfloat16)
    for block in ([16, 16], [16, 16], [32, 16], [32, 16]):
        fl[(1,)](TensorDescriptor.from_tensor(t, block), 32, 0.5, BLOCK=16)
    fl[(1,)](TensorDescriptor.from_tensor(t[:, :32], [16, 16]), 32, 0.5, BLOCK=16)  # other shape / strides
    assert len(k.slow) == 3 and fl.hits == 2


def test_gluon_descriptors_are_keyed_by_their_layout_too(fake):
    pytest.importorskip("triton.experimental.gluon")
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    k, fl = fake
    t = torch.empty(64, 64, dtype=torch.bfloat16)
    swizzled = gl.NVMMASharedLayout.get_default_for([16, 64], gl.bfloat16)
    other = gl.NVMMASharedLayout(swizzle_byte_width=32, element_bitwidth=16, rank=2)
    assert swizzled != other
    for layout in (swizzled, swizzled, other, other):
        fl[(1,)](TensorDescriptor(t, [64, 64], [64, 1], [16, 64], layout), 32, 0.5, BLOCK=16)
    assert len(k.slow) == 2 and fl.hits == 2


def test_num_warps_declared_as_a_constexpr_parameter(fake):
    # Gluon kernels declare ``num_warps: gl.constexpr``; the launch passes it once, as the
    # parameter, and the direct path must hand it to the compiled launcher in its slot (the
    # fixture's kernel is not used: only its patches of ENABLED, the hooks and the driver)
    k = _FakeKernel(names=("x", "n", "BLOCK", "num_warps"))
    fl = launch.FastLaunch(k)
    x = _buf()
    for _ in range(2):
        fl[(2,)](x, 32, BLOCK=16, num_warps=4)
    assert len(k.slow) == 1 and fl.hits == 1
    (call,) = fl._cache[next(iter(fl._cache))].calls
    assert call[-4:] == (x, 32, 16, 4)
    fl[(2,)](x, 32, BLOCK=16, num_warps=8)  # another value: another specialisation
    assert len(k.slow) == 2


def test_profiler_hooks_are_detected():
    from triton import knobs

    assert not launch._hooks_installed()  # Triton's default: empty hook chains

    def hook(metadata):
        return None

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert launch._hooks_installed()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert not launch._hooks_installed()


def test_constexprs_must_come_last():
    with pytest.raises(ValueError, match="constexpr parameters must come last"):
        launch.FastLaunch(_FakeKernel(names=("x", "BLOCK", "n")))


def test_interpreted_kernels_are_passed_through(monkeypatch):
    class Interpreted:  # the interpreter's kernels have no ``params``
        def __init__(self):
            self.calls = 0

        def __getitem__(self, grid):
            def go(*a, **k):
                self.calls += 1
            return go

    monkeypatch.setattr(launch, "ENABLED", True)
    k = Interpreted()
    fl = launch.FastLaunch(k)
    fl[(1,)](1, BLOCK=2)
    fl[(1,)](1, BLOCK=2)
    assert k.calls == 2 and fl.hits == 0


def test_table_is_bounded(fake, monkeypatch):
    k, fl = fake
    monkeypatch.setattr(launch, "MAX_ENTRIES", 4)
    x = _buf()
    for n in range(10):
        fl[(1,)](x, 16 * n + 3, 0.5, BLOCK=16)
    assert len(fl._cache) <= 4


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_gpu_direct_launch_matches_tritons_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fl = launch.FastLaunch(_axpy_kernel)
    base = torch.randn(4096 + 64, device="cuda")
    for off, n in ((0, 4096), (0, 4096), (1, 4095), (1, 4095), (0, 1000), (3, 17), (0, 4096)):
        x = base[off:off + n]  # off 1 / 3: a pointer Triton must not assume 16-byte aligned
        y = torch.full((n + 8,), float("nan"), device="cuda")[:n]
        fl[(triton.cdiv(n, 256),)](x, y, n, 2.5, BLOCK=256, num_warps=4, num_stages=1)
        torch.testing.assert_close(y, 2.5 * x + 1.0)
    assert fl.hits >= 2, "the repeated shapes should take the direct path"


@pytest.mark.gpu
def test_gpu_gluon_lora_gemm_takes_the_direct_path():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("needs an sm_90 GPU (the Gluon kernel is wgmma)")
    from samkern.ops.lora import gluon as lg

    M, K, N, r = 512, 256, 384, 8
    a1 = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / 16
    a2 = torch.randn(M, r, device="cuda", dtype=torch.bfloat16)
    B = torch.randn(N, r, device="cuda", dtype=torch.bfloat16)
    ref = (a1.float() @ W.float().t() + a2.float() @ B.float().t())
    hits = lg._WS.hits
    for _ in range(3):
        out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
        lg.launch_gluon(a1, W.t(), a2, B.t(), True, out, lg.candidates(r)[0])
        assert_close("C", out, ref, 1e-2)
    assert lg._WS.hits - hits >= 2


@pytest.mark.gpu
def test_gpu_ssd_and_lora_take_the_direct_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from samkern.ops.lora import triton as lt
    from samkern.ops.ssd import bwd, fwd
    from samkern.ops.ssd.chunk import ssd_chunk_scan

    x = torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dt = torch.randn(2, 64, 4, device="cuda")
    A = -torch.rand(4, device="cuda") - 0.5
    B = torch.randn(2, 64, 1, 128, device="cuda", dtype=torch.bfloat16)
    C = torch.randn(2, 64, 1, 128, device="cuda", dtype=torch.bfloat16)
    # the default backward (per-head sums fused into the dB/dC grid), then the one that launches
    # the finishing kernel
    for fuse in (None, False):
        old = bwd.BWD_TUNING["fuse_finish"]
        bwd.BWD_TUNING["fuse_finish"] = fuse
        try:
            outs = []
            for _ in range(3):
                y = ssd_chunk_scan(x, dt, A, B, C, 64, dt_softplus=True)
                (g,) = torch.autograd.grad(y.float().square().sum(), x)
                outs.append((y, g))
        finally:
            bwd.BWD_TUNING["fuse_finish"] = old
        for y, g in outs[1:]:  # the direct path gives bitwise the same results
            assert torch.equal(y, outs[0][0]) and torch.equal(g, outs[0][1])
    assert fwd._FWD.hits >= 2 and bwd._CHUNK.hits >= 2 and bwd._DBDC.hits >= 2 and bwd._DSTATE.hits >= 2
    assert bwd._FINISH.hits >= 2 and bwd._DT_CACHE.hits >= 2

    u = torch.randn(64, 8, device="cuda", dtype=torch.bfloat16)
    Bl = torch.randn(40, 8, device="cuda", dtype=torch.bfloat16)
    cfg = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    # the pointer kernel (odd K, strided rows) and the TMA kernel (16-byte rows; host descriptors
    # in the key)
    for kernel, K, tma in ((lt._PTR, 71, False), (lt._TMA, 72, True)):
        xl = torch.randn(64, 72, device="cuda", dtype=torch.bfloat16)[:, :K]
        W = torch.randn(40, K, device="cuda", dtype=torch.bfloat16)
        before = kernel.hits
        ys = [lt.lora_gemm(xl, W.t(), u, Bl.t(), config=cfg, use_tma=tma) for _ in range(3)]
        assert kernel.hits >= before + 2, tma
        ref = xl.float() @ W.float().t() + u.float() @ Bl.float().t()
        for y in ys:
            torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
            assert torch.equal(y, ys[0])
