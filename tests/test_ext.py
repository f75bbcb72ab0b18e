# SPDX-License-Identifier: Apache-2.0
"""The optional CUDA extension ``samkern._C`` and its absence.

* With nvcc available: the extension (the installed one, else a fresh CMake build of
  CMakeLists.txt into a temporary directory for one architecture) imports on this machine,
  exposes its functions, and -- without a GPU -- turns every CUDA failure into a RuntimeError
  carrying the CUDA error, and bad arguments into ValueError.
* With ``samkern._C`` made unimportable: ``has_ext()`` is False, ``ext_status()`` and
  ``require_ext()`` explain and name the rebuild command, ``connector_reorder`` falls back
  and still matches the reference, and forcing ``backend="cuda"`` is a clear ValueError.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import samkern.ext as ext

ROOT = Path(__file__).resolve().parents[1]
EXT_FUNCS = (
    "connector_reorder_fwd",
    "connector_reorder_bwd_tokens",
    "connector_reorder_bwd_sep",
    "device_count",
    "runtime_version",
    "driver_version",
)


def _nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        cand = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        nvcc = str(cand) if cand.is_file() else None
    return nvcc


@pytest.fixture(scope="module")
def ext_module(tmp_path_factory):
    """The installed samkern._C, else one built here from CMakeLists.txt (sm_80 only, ~30 s).
    SAMKERN_TEST_FRESH_BUILD=1 forces the CMake build even when the extension is installed."""
    ext.reset()
    if ext.has_ext() and os.environ.get("SAMKERN_TEST_FRESH_BUILD", "0") != "1":
        return ext.get_ext()
    nvcc = _nvcc()
    cmake = shutil.which("cmake")
    if nvcc is None or cmake is None:
        pytest.skip(f"cannot build samkern._C here (nvcc={nvcc}, cmake={cmake}); {ext.ext_status()}")
    work = tmp_path_factory.mktemp("samkern_ext")
    out = work / "out"
    env = dict(os.environ, SAMKERN_CUDA_ARCHS="80")
    cfg = [cmake, "-S", str(ROOT), "-B", str(work / "build"), f"-DPython_EXECUTABLE={sys.executable}",
           f"-DSAMKERN_OUTPUT_DIR={out}", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    for cmd in (cfg, [cmake, "--build", str(work / "build"), "-j", "2"]):
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}"
    built = sorted(out.glob("_C*.so"))
    assert built, f"no _C module in {out}"
    spec = importlib.util.spec_from_file_location("_C", built[0])  # not registered in sys.modules
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ext_imports_and_exposes_functions(ext_module):
    for name in EXT_FUNCS:
        assert callable(getattr(ext_module, name)), name
    assert ext_module.CUDART_VERSION >= 11000
    assert ext_module.runtime_version() == ext_module.CUDART_VERSION  # static cudart: no driver needed
    assert isinstance(ext_module.CUDA_ARCHS, str) and ext_module.CUDA_ARCHS


def test_ext_bad_arguments_are_value_errors(ext_module):
    good = dict(out=256, tokens=512, sep=768, batch=2, n_time=4, n_freq=3, dim=8, mode="time",
                dtype="float32", stream=0)
    for bad, match in (
        (dict(out=0), "null"),
        (dict(dtype="float64"), "dtype must be"),
        (dict(mode="concat"), "mode must be"),
        (dict(batch=0), "positive"),
    ):
        with pytest.raises(ValueError, match=match):
            ext_module.connector_reorder_fwd(**{**good, **bad})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_ext_without_gpu_raises_clear_runtime_error(ext_module):
    with pytest.raises(RuntimeError, match=r"samkern\._C\.device_count: CUDA error \d+ \(cuda\w+\)"):
        ext_module.device_count()
    # Fake (never dereferenced) pointers: the launch itself fails for want of a GPU/driver.
    with pytest.raises(RuntimeError, match=r"samkern\._C\.connector_reorder_fwd: CUDA error \d+ \(cuda\w+\): \w"):
        ext_module.connector_reorder_fwd(256, 512, 768, 2, 4, 3, 8, "time", "bfloat16", 0)
    with pytest.raises(RuntimeError, match="connector_reorder_bwd_tokens: CUDA error"):
        ext_module.connector_reorder_bwd_tokens(256, 512, 2, 4, 3, 8, "freq", "float16", 0)
    with pytest.raises(RuntimeError, match="connector_reorder_bwd_sep: CUDA error"):
        ext_module.connector_reorder_bwd_sep(256, 512, 768, 2, 4, 3, 8, "time", "float32", 0)
    assert ext_module.driver_version() == 0 or ext_module.driver_version() > 0  # callable, no raise


@pytest.fixture
def no_ext(monkeypatch):
    """samkern._C unimportable: a None entry in sys.modules makes `import samkern._C` fail."""
    monkeypatch.setitem(sys.modules, "samkern._C", None)
    ext.reset()
    yield
    monkeypatch.undo()
    ext.reset()


def test_missing_ext_status_and_require(no_ext):
    assert ext.has_ext() is False
    assert ext.get_ext() is None
    status = ext.ext_status()
    assert "not available" in status and ext.REBUILD_COMMAND in status
    assert "ImportError" in status or "ModuleNotFoundError" in status  # the reason is carried
    with pytest.raises(RuntimeError) as info:
        ext.require_ext()
    assert ext.REBUILD_COMMAND in str(info.value)
    assert "pip install -e . --no-build-isolation" in ext.REBUILD_COMMAND


def test_missing_ext_connector_reorder_falls_back(no_ext, kernel_device):
    from samkern.backend import pick_backend
    from samkern.ops.connector.function import connector_reorder
    from samkern.ops.connector.ref import connector_reorder_bwd_ref, connector_reorder_ref
    from samkern.testing import assert_exact

    T, F, D = 3, 2, 8
    tokens = torch.randn(2, T * F, D, device=kernel_device, requires_grad=True)
    sep = torch.randn(D, device=kernel_device, requires_grad=True)
    assert pick_backend("connector_reorder", (tokens, sep)) in ("triton", "ref")  # never "cuda"
    out = connector_reorder(tokens, "time", sep, T, F)
    assert_exact("fallback forward", out, connector_reorder_ref(tokens.detach(), "time", sep.detach(), T, F))
    g = torch.randn_like(out)
    gt, gs = torch.autograd.grad(out, (tokens, sep), g)
    gt_ref, gs_ref = connector_reorder_bwd_ref(g, "time", T, F)
    assert_exact("fallback grad_tokens", gt, gt_ref)
    assert_exact("fallback grad_sep", gs, gs_ref)


def test_missing_ext_forced_cuda_backend_explains(no_ext):
    from samkern.ops.connector.cuda import connector_reorder_fwd_cuda

    tokens, sep = torch.randn(1, 4, 8), torch.randn(8)
    # the custom op itself refuses with the rebuild command before looking at the tensors
    with pytest.raises(RuntimeError, match="Rebuild it from the repository root"):
        connector_reorder_fwd_cuda(tokens, sep, "time", 2, 2)


# Host emulation of csrc/connector_reorder/kernel.cuh: g++ compiles the real kernels as plain
# functions (cuda_runtime.h supplies dim3/uint4/__nv_bfloat16 host-side), and every
# (block, thread) of the launch geometry runs sequentially. Checks the index maps, the vector
# strides, the separator rows and the canonical float32 order + bf16 rounding of the sum.
_EMULATOR = r"""
#include <cuda_runtime.h>
#include <cstdio>
#include <cstring>
#include <vector>
#include <random>
#include <cmath>
static uint3 threadIdx, blockIdx; static dim3 blockDim, gridDim;
#include "connector_reorder/kernel.cuh"
using namespace samkern::connector_reorder;
template <class K> void launch(dim3 grid, dim3 block, K k) {
  gridDim = grid; blockDim = block;
  for (unsigned by = 0; by < grid.y; ++by) for (unsigned bx = 0; bx < grid.x; ++bx)
  for (unsigned ty = 0; ty < block.y; ++ty) for (unsigned tx = 0; tx < block.x; ++tx) {
    blockIdx = make_uint3(bx, by, 0); threadIdx = make_uint3(tx, ty, 0); k(); }
}
static uint16_t rne(float f) { uint32_t u; memcpy(&u, &f, 4); return (u + 0x7FFF + ((u >> 16) & 1)) >> 16; }
int fails = 0;
void check(bool c, const char* what) { if (!c) { ++fails; printf("FAIL %s\n", what); } }
static int check_float() {
  std::mt19937 rng(1);
  for (int mode = 1; mode <= 2; ++mode)
  for (int64_t T : {3, 64}) for (int64_t F : {2, 8}) for (int64_t D : {5, 8, 100}) for (int64_t B : {1, 3}) {
    int64_t N = T * F, R = mode == 1 ? T * (F + 1) : F * (T + 1);
    std::vector<float> tok(B * N * D), sep(D), out(B * R * D, NAN), gt(B * N * D, NAN);
    for (auto& x : tok) x = std::uniform_real_distribution<float>(-1, 1)(rng);
    for (auto& x : sep) x = std::uniform_real_distribution<float>(-1, 1)(rng);
    // forward with vector type uint32 (float), emulate the launcher geometry
    int64_t n_vec = D; int tx = std::min<int64_t>(256, (n_vec + 31) / 32 * 32), ty = 256 / tx;
    int64_t blocks = (B * R + ty - 1) / ty;
    launch(dim3(blocks), dim3(tx, ty), [&] { gather_rows_kernel<uint32_t>((uint32_t*)out.data(), (const uint32_t*)tok.data(), (const uint32_t*)sep.data(), B, R, N, n_vec, mode == 1 ? kFwdTime : kFwdFreq, T, F); });
    for (int64_t b = 0; b < B; ++b) for (int64_t t = 0; t < T; ++t) for (int64_t f = 0; f < F; ++f) {
      int64_t r = mode == 1 ? t * (F + 1) + f : f * (T + 1) + t;
      check(!memcmp(&out[(b * R + r) * D], &tok[(b * N + t * F + f) * D], D * 4), "fwd token row");
    }
    int64_t nsep = mode == 1 ? T : F, K = mode == 1 ? F : T;
    for (int64_t b = 0; b < B; ++b) for (int64_t s = 0; s < nsep; ++s)
      check(!memcmp(&out[(b * R + s * (K + 1) + K) * D], sep.data(), D * 4), "fwd sep row");
    // backward tokens: grad_out = out
    blocks = (B * N + ty - 1) / ty;
    launch(dim3(blocks), dim3(tx, ty), [&] { gather_rows_kernel<uint32_t>((uint32_t*)gt.data(), (const uint32_t*)out.data(), nullptr, B, N, R, n_vec, mode == 1 ? kBwdTime : kBwdFreq, T, F); });
    check(!memcmp(gt.data(), tok.data(), gt.size() * 4), "bwd tokens = inverse");
    // sep grad
    std::vector<float> part(B * D, NAN), gs(D, NAN);
    unsigned db = (D + 255) / 256;
    launch(dim3(db, B), dim3(256), [&] { sep_grad_partial_kernel<float>(part.data(), out.data(), B, R, D, nsep, K, K + 1); });
    launch(dim3(db), dim3(256), [&] { sep_grad_final_kernel<float>(gs.data(), part.data(), B, D); });
    for (int64_t d = 0; d < D; ++d) {
      float tot = 0.f; for (int64_t b = 0; b < B; ++b) { float acc = 0.f; for (int64_t s = 0; s < nsep; ++s) acc += out[(b * R + s * (K + 1) + K) * D + d]; tot += acc; }
      check(gs[d] == tot, "sep grad canonical");
      check(std::fabs(gs[d] - B * nsep * sep[d]) < 1e-3 * B * nsep, "sep grad value");
    }
  }
  return fails;
}
static int check_bf16() {
  int fails = 0; std::mt19937 rng(2);
  int64_t T = 5, F = 3, D = 768, B = 2, N = T * F, R = F * (T + 1);  // freq, bf16, uint4
  std::vector<uint16_t> tok(B * N * D), sep(D), out(B * R * D, 0xFFFF);
  for (auto& x : tok) x = rng(); for (auto& x : sep) x = rng() & 0x3FFF;
  int64_t n_vec = D * 2 / 16; int tx = std::min<int64_t>(256, (n_vec + 31) / 32 * 32), ty = 256 / tx;
  launch(dim3((B * R + ty - 1) / ty), dim3(tx, ty), [&] { gather_rows_kernel<uint4>((uint4*)out.data(), (const uint4*)tok.data(), (const uint4*)sep.data(), B, R, N, n_vec, kFwdFreq, T, F); });
  for (int64_t b = 0; b < B; ++b) for (int64_t t = 0; t < T; ++t) for (int64_t f = 0; f < F; ++f)
    fails += !!memcmp(&out[(b * R + f * (T + 1) + t) * D], &tok[(b * N + t * F + f) * D], D * 2);
  // bf16 sep grad vs canonical + RNE
  std::vector<__nv_bfloat16> g(B * R * D); std::vector<float> part(B * D); std::vector<__nv_bfloat16> gs(D);
  for (auto& x : g) x = __float2bfloat16_rn(std::normal_distribution<float>()(rng));
  launch(dim3(3, B), dim3(256), [&] { sep_grad_partial_kernel<__nv_bfloat16>(part.data(), g.data(), B, R, D, F, T, T + 1); });
  launch(dim3(3), dim3(256), [&] { sep_grad_final_kernel<__nv_bfloat16>(gs.data(), part.data(), B, D); });
  for (int64_t d = 0; d < D; ++d) { float tot = 0; for (int64_t b = 0; b < B; ++b) { float a = 0; for (int64_t s = 0; s < F; ++s) a += __bfloat162float(g[(b * R + s * (T + 1) + T) * D + d]); tot += a; }
    uint16_t got; memcpy(&got, &gs[d], 2); fails += got != rne(tot); }
  return fails;
}
int main() { int f1 = check_float(), f2 = check_bf16(); printf("float fails=%d bf16 fails=%d\n", f1, f2); return (f1 + f2) != 0; }
"""


def _cuda_include():
    cands = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    nvcc = _nvcc()
    if nvcc:
        cands.append(str(Path(os.path.realpath(nvcc)).parents[1]))
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return str(Path(c) / "include")
    return None


def test_cuda_kernels_host_emulation(tmp_path):
    inc, cxx = _cuda_include(), shutil.which("g++") or shutil.which("c++")
    if inc is None or cxx is None:
        pytest.skip(f"needs the CUDA headers and a C++ compiler (include={inc}, c++={cxx})")
    (tmp_path / "emu.cpp").write_text(_EMULATOR)
    exe = tmp_path / "emu"
    cmd = [cxx, "-std=c++17", "-O1", "-w", f"-I{inc}", f"-I{ROOT / 'csrc'}", "-x", "c++", str(tmp_path / "emu.cpp"),
           "-o", str(exe)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    run = subprocess.run([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 0 and "float fails=0 bf16 fails=0" in run.stdout, run.stdout[-4000:]


@pytest.mark.gpu
def test_ext_on_gpu_sees_device():
    if not ext.has_ext():
        pytest.skip(ext.ext_status())
    C = ext.get_ext()
    assert C.device_count() == torch.cuda.device_count() >= 1
    assert C.driver_version() > 0


def test_env_report_names_every_op_backend():
    """``samkern env``: versions and the backend each public op would use on this machine."""
    from samkern import env

    info = env.collect()
    report = env.format_report(info)
    for op in ("ssd_chunk_scan", "lora_linear", "connector_reorder", "causal_conv1d", "rmsnorm_gated"):
        assert op in report, op
    assert "torch" in report and "extension _C" in report
