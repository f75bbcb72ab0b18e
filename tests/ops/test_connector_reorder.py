# SPDX-License-Identifier: Apache-2.0
"""SAM connector reorder: reference index maps, canonical backward, Triton (interpreter on CPU,
compiled on GPU) and CUDA-extension kernels, autograd, validation.

Bit-exactness: forward and grad_tokens are permutations, compared with ``assert_exact``.
grad_sep is a float32 sum in the canonical order of ``connector_reorder_bwd_ref``; every
backend is compared with it exactly, and the canonical sum itself is checked against an
fp64 sum (``assert_close``) and against an independent scalar-loop implementation.
"""
from __future__ import annotations

import pytest
import torch

from samkern.ops.connector.function import connector_reorder
from samkern.ops.connector.ref import (
    connector_reorder_bwd_ref,
    connector_reorder_ref,
    out_rows,
    reorder_index,
)
from samkern.testing import assert_close, assert_exact

MODES = ("time", "freq")


def _inputs(B, T, F, D, dtype=torch.float32, device="cpu", requires_grad=True):
    tokens = torch.randn(B, T * F, D, dtype=dtype, device=device).requires_grad_(requires_grad)
    sep = torch.randn(D, dtype=dtype, device=device).requires_grad_(requires_grad)
    return tokens, sep


def _explicit(tokens, sep, mode, T, F):
    """Row-by-row construction from the index table (independent of the vectorised ref)."""
    B, _, D = tokens.shape
    rows = [sep.expand(B, D) if i < 0 else tokens[:, i] for i in reorder_index(mode, T, F).tolist()]
    return torch.stack(rows, dim=1)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,F,D", [(3, 2, 5), (4, 3, 7), (1, 1, 3), (2, 5, 1)])
def test_ref_matches_index_table(mode, T, F, D):
    tokens, sep = _inputs(2, T, F, D, requires_grad=False)
    out = connector_reorder_ref(tokens, mode, sep, T, F)
    assert out.shape == (2, out_rows(mode, T, F), D)
    assert_exact(f"ref {mode}", out, _explicit(tokens, sep, mode, T, F))


def test_ref_sam_shapes():
    """SAM's defaults: 512 tokens -> 576 (time) / 520 (freq) / (64, 8*D) (concat)."""
    tokens, sep = _inputs(2, 64, 8, 4, requires_grad=False)
    assert connector_reorder_ref(tokens, "time", sep).shape == (2, 576, 4)
    assert connector_reorder_ref(tokens, "freq", sep).shape == (2, 520, 4)
    assert connector_reorder_ref(tokens, "concat").shape == (2, 64, 32)
    out = connector_reorder_ref(tokens, "freq", sep)
    # frequency band 1, time step 5 is output row 1*65 + 5 and token 5*8 + 1
    assert torch.equal(out[:, 65 + 5], tokens[:, 5 * 8 + 1])
    assert torch.equal(out[:, 64], sep.expand(2, 4))  # separator closing band 0


def test_index_table_small():
    assert reorder_index("time", 2, 3).tolist() == [0, 1, 2, -1, 3, 4, 5, -1]
    assert reorder_index("freq", 2, 3).tolist() == [0, 3, -1, 1, 4, -1, 2, 5, -1]


@pytest.mark.parametrize("mode", MODES)
def test_bwd_ref_vs_autograd(mode):
    T, F, D, B = 4, 3, 6, 3
    tokens, sep = _inputs(B, T, F, D)
    out = connector_reorder_ref(tokens, mode, sep, T, F)
    g = torch.randn_like(out)
    gt_auto, gs_auto = torch.autograd.grad(out, (tokens, sep), g)
    gt, gs = connector_reorder_bwd_ref(g, mode, T, F)
    assert_exact("grad_tokens", gt, gt_auto)
    # the canonical order differs from torch's only by float32 rounding
    g64 = g.double()
    sep_rows = [i for i, s in enumerate(reorder_index(mode, T, F).tolist()) if s < 0]
    assert_close("grad_sep vs fp64", gs, g64[:, sep_rows].sum((0, 1)), rtol=1e-6)
    assert_close("grad_sep vs autograd", gs, gs_auto, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_bwd_ref_canonical_order(mode):
    """The documented order, spelled out element by element in Python floats rounded to fp32."""
    T, F, D, B = 3, 2, 4, 3
    g = torch.randn(B, out_rows(mode, T, F), D) * torch.logspace(-3, 3, D)  # order-sensitive magnitudes
    _, gs = connector_reorder_bwd_ref(g, mode, T, F)
    sep_rows = [i for i, s in enumerate(reorder_index(mode, T, F).tolist()) if s < 0]
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    for d in range(D):
        total = f32(0.0)
        for b in range(B):
            acc = f32(0.0)
            for r in sep_rows:
                acc = acc + g[b, r, d]
            total = total + acc
        assert torch.equal(gs[d], total), (d, gs[d].item(), total.item())


def test_bwd_ref_low_precision_rounds_once():
    T, F, D, B = 4, 2, 8, 4
    g = torch.randn(B, out_rows("time", T, F), D, dtype=torch.bfloat16)
    _, gs = connector_reorder_bwd_ref(g, "time", T, F)
    _, gs32 = connector_reorder_bwd_ref(g.float(), "time", T, F)
    assert gs.dtype == torch.bfloat16
    assert_exact("bf16 grad_sep = fp32 canonical sum rounded once", gs, gs32.to(torch.bfloat16))


# ----------------------------------------------------------------------------- public op


def _check_backend(backend, mode, B, T, F, D, dtype, device):
    tokens, sep = _inputs(B, T, F, D, dtype=dtype, device=device)
    out = connector_reorder(tokens, mode, sep, T, F, backend=backend)
    ref = connector_reorder_ref(tokens.detach(), mode, sep.detach(), T, F)
    assert_exact(f"{backend} forward", out, ref)
    g = torch.randn_like(out)
    if mode == "concat":  # a view in every backend: grad_tokens is grad_out reshaped, sep unused
        (gt,) = torch.autograd.grad(out, (tokens,), g)
        assert_exact(f"{backend} concat grad_tokens", gt, g.reshape(B, T * F, D))
        return
    gt, gs = torch.autograd.grad(out, (tokens, sep), g)
    gt_ref, gs_ref = connector_reorder_bwd_ref(g, mode, T, F, sep.dtype)
    assert_exact(f"{backend} grad_tokens", gt, gt_ref)
    assert_exact(f"{backend} grad_sep (canonical fp32 order)", gs, gs_ref)
    # and against PyTorch's own autograd of the reference: tokens exact, sep up to rounding
    tokens_r = tokens.detach().clone().requires_grad_()
    sep_r = sep.detach().float().requires_grad_()
    ref32 = connector_reorder_ref(tokens_r.float(), mode, sep_r, T, F)
    gt_auto, gs_auto = torch.autograd.grad(ref32, (tokens_r, sep_r), g.float())
    assert_exact(f"{backend} grad_tokens vs autograd", gt, gt_auto.to(dtype))
    assert_close(f"{backend} grad_sep vs autograd", gs.float(), gs_auto, rtol=1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ref_backend(mode, dtype):
    _check_backend("ref", mode, 3, 4, 3, 10, dtype, "cpu")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,D", [(torch.float32, 12), (torch.float16, 9), (torch.float32, 100)])
def test_triton_backend(mode, dtype, D, kernel_device):
    """Triton kernels (the interpreter on CPU): odd widths, fp32/fp16 (interpreter-safe dtypes)."""
    _check_backend("triton", mode, 2, 4, 3, D, dtype, kernel_device)


def test_triton_backend_bf16_copy(kernel_device):
    """bf16 is pure loads/stores in the gathers and fp32 math in the sum: fine in the interpreter."""
    _check_backend("triton", "time", 2, 3, 2, 8, torch.bfloat16, kernel_device)


@pytest.mark.parametrize("backend", ["ref", "triton"])
def test_only_one_input_needs_grad(backend, kernel_device):
    T, F, D = 3, 2, 8
    tokens, sep = _inputs(2, T, F, D, device=kernel_device, requires_grad=False)
    tokens.requires_grad_()
    out = connector_reorder(tokens, "freq", sep, T, F, backend=backend)
    g = torch.randn_like(out)
    (gt,) = torch.autograd.grad(out, (tokens,), g)
    assert_exact("grad_tokens only", gt, connector_reorder_bwd_ref(g, "freq", T, F)[0])
    tokens.requires_grad_(False)
    sep.requires_grad_()
    out = connector_reorder(tokens, "time", sep, T, F, backend=backend)
    g = torch.randn_like(out)
    (gs,) = torch.autograd.grad(out, (sep,), g)
    assert_exact("grad_sep only", gs, connector_reorder_bwd_ref(g, "time", T, F)[1])


def test_noncontiguous_tokens_and_grad():
    T, F, D, B = 3, 2, 5, 2
    base = torch.randn(B, D, T * F).requires_grad_()
    tokens = base.transpose(1, 2)  # (B, T*F, D), not contiguous
    sep = torch.randn(D).requires_grad_()
    out = connector_reorder(tokens, "time", sep, T, F)
    assert_exact("forward", out, _explicit(tokens.detach(), sep.detach(), "time", T, F))
    g = torch.randn(out.shape[2], out.shape[1], B).permute(2, 1, 0)  # non-contiguous grad_out
    (gb,) = torch.autograd.grad(out, (base,), g)
    assert_exact("grad", gb, connector_reorder_bwd_ref(g.contiguous(), "time", T, F)[0].transpose(1, 2))


def test_concat_is_view_and_differentiable():
    T, F, D, B = 4, 3, 5, 2
    tokens, sep = _inputs(B, T, F, D)
    out = connector_reorder(tokens, "concat", sep, T, F)
    assert out.shape == (B, T, F * D)
    assert out.data_ptr() == tokens.data_ptr()
    assert_exact("concat", out, torch.stack([tokens[:, t * F:(t + 1) * F].reshape(B, F * D) for t in range(T)], 1))
    g = torch.randn_like(out)
    (gt,) = torch.autograd.grad(out, (tokens,), g)
    assert_exact("concat grad", gt, g.reshape(B, T * F, D))
    assert connector_reorder(tokens, "concat", None, T, F).shape == (B, T, F * D)


def test_auto_backend_on_cpu_is_ref(monkeypatch):
    from samkern.backend import pick_backend

    monkeypatch.delenv("SAMKERN_BACKEND", raising=False)
    tokens, sep = _inputs(1, 2, 2, 4, requires_grad=False)
    assert pick_backend("connector_reorder", (tokens, sep)) == "ref"


def test_fake_impls_on_meta():
    """The custom ops' fake implementations give the right shapes/dtypes (torch.compile tracing)."""
    from samkern.ops.connector import cuda  # noqa: F401  (registers the ops)

    t = torch.empty(3, 64 * 8, 16, device="meta", dtype=torch.bfloat16)
    s = torch.empty(16, device="meta", dtype=torch.bfloat16)
    out = torch.ops.samkern.connector_reorder_fwd_cuda(t, s, "freq", 64, 8)
    assert out.shape == (3, 520, 16) and out.dtype == torch.bfloat16
    gt, gs = torch.ops.samkern.connector_reorder_bwd_cuda(
        torch.empty(3, 576, 16, device="meta", dtype=torch.bfloat16), "time", 64, 8, torch.bfloat16, True, True
    )
    assert gt.shape == (3, 512, 16) and gs.shape == (16,)


class _PointerC:
    """Stand-in for ``samkern._C`` on CPU: same signatures, reads/writes host memory through the
    raw pointers it is given (ctypes), computing with the reference. Exercises cuda.py's
    plumbing (allocation shapes, pointer/size order, flags) without a GPU."""

    calls: list

    def __init__(self):
        self.calls = []

    @staticmethod
    def _view(ptr, shape, dtype):
        import ctypes

        n = 1
        for s_ in shape:
            n *= s_
        buf = (ctypes.c_char * (n * torch.empty((), dtype=dtype).element_size())).from_address(ptr)
        return torch.frombuffer(buf, dtype=dtype).view(shape)

    def connector_reorder_fwd(self, out, tokens, sep, batch, n_time, n_freq, dim, mode, dtype, stream):
        self.calls.append("fwd")
        dt = getattr(torch, dtype)
        o = self._view(out, (batch, out_rows(mode, n_time, n_freq), dim), dt)
        t = self._view(tokens, (batch, n_time * n_freq, dim), dt)
        o.copy_(connector_reorder_ref(t, mode, self._view(sep, (dim,), dt), n_time, n_freq))

    def connector_reorder_bwd_tokens(self, grad_tokens, grad_out, batch, n_time, n_freq, dim, mode, dtype, stream):
        self.calls.append("bwd_tokens")
        dt = getattr(torch, dtype)
        g = self._view(grad_out, (batch, out_rows(mode, n_time, n_freq), dim), dt)
        self._view(grad_tokens, (batch, n_time * n_freq, dim), dt).copy_(
            connector_reorder_bwd_ref(g, mode, n_time, n_freq, need_sep=False)[0]
        )

    def connector_reorder_bwd_sep(self, grad_sep, workspace, grad_out, batch, n_time, n_freq, dim, mode, dtype, stream):
        self.calls.append("bwd_sep")
        dt = getattr(torch, dtype)
        g = self._view(grad_out, (batch, out_rows(mode, n_time, n_freq), dim), dt)
        self._view(workspace, (batch, dim), torch.float32).zero_()  # must be B*D floats
        self._view(grad_sep, (dim,), dt).copy_(connector_reorder_bwd_ref(g, mode, n_time, n_freq, need_tokens=False)[1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_wrapper_plumbing_on_cpu(mode, dtype, monkeypatch):
    import contextlib
    import types

    from samkern.ops.connector import cuda as cuda_mod
    from samkern.ops.connector.function import _ConnectorReorderFn

    fake = _PointerC()
    monkeypatch.setattr(cuda_mod, "require_ext", lambda: fake)
    monkeypatch.setattr(cuda_mod, "_check", lambda name, t: None)
    monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev=None: types.SimpleNamespace(cuda_stream=0))
    T, F, D, B = 3, 4, 6, 2
    tokens, sep = _inputs(B, T, F, D, dtype=dtype)
    out = _ConnectorReorderFn.apply(tokens, sep, mode, T, F, "cuda")
    assert_exact("plumbed forward", out, connector_reorder_ref(tokens.detach(), mode, sep.detach(), T, F))
    g = torch.randn_like(out)
    gt, gs = torch.autograd.grad(out, (tokens, sep), g)
    gt_ref, gs_ref = connector_reorder_bwd_ref(g, mode, T, F)
    assert_exact("plumbed grad_tokens", gt, gt_ref)
    assert_exact("plumbed grad_sep", gs, gs_ref)
    assert fake.calls == ["fwd", "bwd_tokens", "bwd_sep"]
    fake.calls.clear()
    out = _ConnectorReorderFn.apply(tokens.detach(), sep, mode, T, F, "cuda")  # only sep needs grad
    (gs2,) = torch.autograd.grad(out, (sep,), g)
    assert_exact("plumbed grad_sep only", gs2, gs_ref)
    assert fake.calls == ["fwd", "bwd_sep"]


def test_cuda_backend_declines_too_old_gpu(monkeypatch):
    import types

    from samkern.ops.connector import function as fn_mod

    monkeypatch.setattr(fn_mod, "get_ext", lambda: types.SimpleNamespace(CUDA_ARCHS="80,90"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (7, 5))
    ok, reason = fn_mod._ext_runs_on.__wrapped__(0)
    assert not ok and "sm_80+" in reason and "SAMKERN_CUDA_ARCHS=75" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (12, 0))  # newer: PTX JIT
    assert fn_mod._ext_runs_on.__wrapped__(0) == (True, "")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "case,match",
    [
        ("bad_mode", "mode must be one of"),
        ("token_count", "n_time \\* n_freq"),
        ("sep_width", "sep must have the tokens' width"),
        ("sep_missing", "needs the separator"),
        ("dtype_mismatch", "sep dtype"),
        ("device_mismatch", "same device"),
        ("empty_batch", "empty"),
        ("rank", "3 dimensions"),
        ("int_dtype", "dtype"),
        ("bad_n_time", "n_time must be a positive int"),
        ("forced_cuda_on_cpu", "cannot run these inputs|no 'cuda' backend"),
        ("forced_triton_on_cpu_no_interp", "cannot run these inputs"),
        ("unknown_backend", "unknown backend"),
        ("sep_nan", "sep contains NaN or inf"),
    ],
)
def test_validation(case, match, monkeypatch):
    T, F, D = 2, 3, 4
    tokens, sep = _inputs(2, T, F, D, requires_grad=False)
    kwargs = dict(n_time=T, n_freq=F)
    args = [tokens, "time", sep]
    if case == "bad_mode":
        args[1] = "both"
    elif case == "token_count":
        args[0] = torch.randn(2, T * F + 1, D)
    elif case == "sep_width":
        args[2] = torch.randn(D + 1)
    elif case == "sep_missing":
        args[2] = None
    elif case == "dtype_mismatch":
        args[2] = sep.half()
    elif case == "device_mismatch":
        args[2] = torch.empty(D, device="meta")
    elif case == "empty_batch":
        args[0] = torch.randn(0, T * F, D)
    elif case == "rank":
        args[0] = tokens[0]
    elif case == "int_dtype":
        args[0] = torch.ones(2, T * F, D, dtype=torch.int32)
    elif case == "bad_n_time":
        kwargs["n_time"] = 0
    elif case == "forced_cuda_on_cpu":
        kwargs["backend"] = "cuda"
    elif case == "forced_triton_on_cpu_no_interp":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        kwargs["backend"] = "triton"
    elif case == "unknown_backend":
        kwargs["backend"] = "tpu"
    elif case == "sep_nan":
        args[2] = sep.clone()
        args[2][1] = float("nan")
    with pytest.raises(ValueError, match=match):
        connector_reorder(*args, **kwargs)


# ----------------------------------------------------------------------------- GPU


def _cuda_backends():
    from samkern.ext import has_ext

    return ["triton", "cuda"] if has_ext() else ["triton"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("mode", MODES + ("concat",))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,T,F,D", [(1, 64, 8, 768), (32, 64, 8, 768), (4, 64, 8, 100), (3, 5, 3, 2560), (2, 7, 4, 33)])
def test_gpu_bit_exact(backend, mode, dtype, B, T, F, D):
    if backend not in _cuda_backends():
        from samkern.ext import ext_status

        pytest.skip(ext_status())
    _check_backend(backend, mode, B, T, F, D, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_misaligned_views(backend):
    """Token/sep pointers that are only element-aligned (slices) take the narrow-vector path."""
    if backend not in _cuda_backends():
        pytest.skip("samkern._C not built")
    T, F, D = 4, 3, 36
    big = torch.randn(2 * T * F * D + 1, device="cuda", dtype=torch.float16)
    tokens = big[1:].view(2, T * F, D)  # 2-byte aligned only
    sep_big = torch.randn(D + 1, device="cuda", dtype=torch.float16)
    sep = sep_big[1:]
    out = connector_reorder(tokens, "time", sep, T, F, backend=backend)
    assert_exact("misaligned", out, connector_reorder_ref(tokens, "time", sep, T, F))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_cuda_graph_capture(backend):
    if backend not in _cuda_backends():
        pytest.skip("samkern._C not built")
    T, F, D, B = 64, 8, 256, 4
    tokens, sep = _inputs(B, T, F, D, dtype=torch.bfloat16, device="cuda")
    g = torch.randn(B, out_rows("freq", T, F), D, device="cuda", dtype=torch.bfloat16)

    def step():
        out = connector_reorder(tokens, "freq", sep, T, F, backend=backend)
        return (out,) + torch.autograd.grad(out, (tokens, sep), g)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up (Triton compilation) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        res = step()
    with torch.no_grad():
        tokens.copy_(torch.randn_like(tokens))
    graph.replay()
    torch.cuda.synchronize()
    assert_exact("graph out", res[0], connector_reorder_ref(tokens.detach(), "freq", sep.detach(), T, F))
    gt_ref, gs_ref = connector_reorder_bwd_ref(g, "freq", T, F)
    assert_exact("graph grad_tokens", res[1], gt_ref)
    assert_exact("graph grad_sep", res[2], gs_ref)


@pytest.mark.gpu
def test_gpu_custom_op_opcheck():
    from samkern.ext import has_ext

    if not has_ext():
        pytest.skip("samkern._C not built")
    from samkern.ops.connector import cuda  # noqa: F401

    t = torch.randn(2, 24, 64, device="cuda", dtype=torch.bfloat16)
    s = torch.randn(64, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.samkern.connector_reorder_fwd_cuda, (t, s, "time", 6, 4))
    g = torch.randn(2, 28, 64, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.samkern.connector_reorder_bwd_cuda, (g, "freq", 6, 4, torch.bfloat16, True, True))
