// SPDX-License-Identifier: Apache-2.0
//
// pybind11 module `samkern._C`: thin bindings over the torch-free launchers in csrc/.
//
// Tensors cross this boundary as raw device pointers (Python ints) plus sizes, and the
// stream as its cudaStream_t handle (an int, `torch.cuda.current_stream().cuda_stream`).
// So the module includes no torch header and builds against any torch / CUDA combination;
// every tensor check, allocation and stream lookup happens in Python
// (samkern/ops/connector/cuda.py).
//
// Errors: bad arguments raise ValueError; every CUDA return code is checked and a failure
// raises RuntimeError carrying the CUDA error name and string (for example on a machine
// without a GPU driver: cudaErrorInsufficientDriver). cudart is linked statically, so the
// module itself imports without a driver.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include "connector_reorder/launch.h"

namespace py = pybind11;
namespace cr = samkern::connector_reorder;

namespace {

[[noreturn]] void raise_cuda(cudaError_t err, const std::string& what) {
  throw std::runtime_error("samkern._C." + what + ": CUDA error " + std::to_string(static_cast<int>(err)) + " (" +
                           cudaGetErrorName(err) + "): " + cudaGetErrorString(err));
}

void check_cuda(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) raise_cuda(err, what);
}

cr::DType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return cr::kFloat32;
  if (dtype == "float16") return cr::kFloat16;
  if (dtype == "bfloat16") return cr::kBFloat16;
  throw py::value_error("samkern._C: dtype must be 'float32', 'float16' or 'bfloat16', got '" + dtype + "'");
}

int parse_mode(const std::string& mode) {
  if (mode == "time") return cr::kModeTime;
  if (mode == "freq") return cr::kModeFreq;
  throw py::value_error("samkern._C: mode must be 'time' or 'freq' ('concat' is a view and has no kernel), got '" +
                        mode + "'");
}

void check_sizes(int64_t batch, int64_t n_time, int64_t n_freq, int64_t dim) {
  if (batch <= 0 || n_time <= 0 || n_freq <= 0 || dim <= 0)
    throw py::value_error("samkern._C: batch, n_time, n_freq and dim must be positive, got " +
                          std::to_string(batch) + ", " + std::to_string(n_time) + ", " + std::to_string(n_freq) +
                          ", " + std::to_string(dim));
}

void* as_ptr(uintptr_t p, const char* name) {
  if (p == 0) throw py::value_error(std::string("samkern._C: pointer ") + name + " is null");
  return reinterpret_cast<void*>(p);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void connector_reorder_fwd(uintptr_t out, uintptr_t tokens, uintptr_t sep, int64_t batch, int64_t n_time,
                           int64_t n_freq, int64_t dim, const std::string& mode, const std::string& dtype,
                           uintptr_t stream) {
  check_sizes(batch, n_time, n_freq, dim);
  const cr::DType dt = parse_dtype(dtype);
  const int md = parse_mode(mode);
  void* o = as_ptr(out, "out");
  const void* t = as_ptr(tokens, "tokens");
  const void* s = as_ptr(sep, "sep");
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = cr::forward(dt, o, t, s, batch, n_time, n_freq, dim, md, as_stream(stream));
  }
  check_cuda(err, "connector_reorder_fwd");
}

void connector_reorder_bwd_tokens(uintptr_t grad_tokens, uintptr_t grad_out, int64_t batch, int64_t n_time,
                                  int64_t n_freq, int64_t dim, const std::string& mode, const std::string& dtype,
                                  uintptr_t stream) {
  check_sizes(batch, n_time, n_freq, dim);
  const cr::DType dt = parse_dtype(dtype);
  const int md = parse_mode(mode);
  void* gt = as_ptr(grad_tokens, "grad_tokens");
  const void* go = as_ptr(grad_out, "grad_out");
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = cr::backward_tokens(dt, gt, go, batch, n_time, n_freq, dim, md, as_stream(stream));
  }
  check_cuda(err, "connector_reorder_bwd_tokens");
}

void connector_reorder_bwd_sep(uintptr_t grad_sep, uintptr_t workspace, uintptr_t grad_out, int64_t batch,
                               int64_t n_time, int64_t n_freq, int64_t dim, const std::string& mode,
                               const std::string& dtype, uintptr_t stream) {
  check_sizes(batch, n_time, n_freq, dim);
  const cr::DType dt = parse_dtype(dtype);
  const int md = parse_mode(mode);
  void* gs = as_ptr(grad_sep, "grad_sep");
  float* ws = static_cast<float*>(as_ptr(workspace, "workspace"));
  const void* go = as_ptr(grad_out, "grad_out");
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = cr::backward_sep(dt, gs, ws, go, batch, n_time, n_freq, dim, md, as_stream(stream));
  }
  check_cuda(err, "connector_reorder_bwd_sep");
}

int device_count() {
  int n = 0;
  check_cuda(cudaGetDeviceCount(&n), "device_count");
  return n;
}

int runtime_version() {
  int v = 0;
  check_cuda(cudaRuntimeGetVersion(&v), "runtime_version");
  return v;
}

int driver_version() {
  int v = 0;  // stays 0 when no driver is installed (cudaDriverGetVersion still succeeds)
  check_cuda(cudaDriverGetVersion(&v), "driver_version");
  return v;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "samkern's optional CUDA extension. Functions take raw device pointers (int), sizes and a "
      "cudaStream_t handle (int); use the wrappers in samkern.ops.*.cuda instead of calling these directly.";

  m.def("connector_reorder_fwd", &connector_reorder_fwd, py::arg("out"), py::arg("tokens"), py::arg("sep"),
        py::arg("batch"), py::arg("n_time"), py::arg("n_freq"), py::arg("dim"), py::arg("mode"), py::arg("dtype"),
        py::arg("stream"),
        "out (B, T*(F+1) or F*(T+1), D) <- reorder of tokens (B, T*F, D) with sep (D,) rows; mode 'time'|'freq'.");
  m.def("connector_reorder_bwd_tokens", &connector_reorder_bwd_tokens, py::arg("grad_tokens"), py::arg("grad_out"),
        py::arg("batch"), py::arg("n_time"), py::arg("n_freq"), py::arg("dim"), py::arg("mode"), py::arg("dtype"),
        py::arg("stream"), "grad_tokens (B, T*F, D) <- inverse gather of grad_out.");
  m.def("connector_reorder_bwd_sep", &connector_reorder_bwd_sep, py::arg("grad_sep"), py::arg("workspace"),
        py::arg("grad_out"), py::arg("batch"), py::arg("n_time"), py::arg("n_freq"), py::arg("dim"),
        py::arg("mode"), py::arg("dtype"), py::arg("stream"),
        "grad_sep (D,) <- float32 sum of grad_out's separator rows in the canonical order; workspace: B*D floats.");
  m.def("device_count", &device_count, "cudaGetDeviceCount; raises RuntimeError when no usable GPU/driver.");
  m.def("runtime_version", &runtime_version, "CUDA runtime version linked into the module (e.g. 13000).");
  m.def("driver_version", &driver_version, "CUDA driver version, 0 when no driver is installed.");
  m.attr("CUDART_VERSION") = CUDART_VERSION;
#ifdef SAMKERN_CUDA_ARCHS
  m.attr("CUDA_ARCHS") = SAMKERN_CUDA_ARCHS;
#else
  m.attr("CUDA_ARCHS") = "unknown";
#endif
}
