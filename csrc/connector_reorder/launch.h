// SPDX-License-Identifier: Apache-2.0
//
// Host launchers of the SAM connector reorder kernels (torch-free CUDA C++).
//
// Shapes (all tensors contiguous, row-major; a "row" is one token of width D):
//   tokens      (B, T*F, D)          time-major encoder tokens, index t*F + f
//   sep         (D,)                 separator embedding
//   out  time   (B, T*(F+1), D)      row t*(F+1) + f <- token t*F + f;  row t*(F+1) + F <- sep
//   out  freq   (B, F*(T+1), D)      row f*(T+1) + t <- token t*F + f;  row f*(T+1) + T <- sep
//   grad_tokens (B, T*F, D)          inverse gather of grad_out
//   workspace   (B, D) float32       per-batch separator-gradient partial sums
//   grad_sep    (D,)                 sum of grad_out over every separator row and batch
// Mode "concat" ((B, T, F*D)) is a pure view of the tokens and has no kernel.
//
// Every launcher returns the cudaError_t of the launch (cudaGetLastError after it), never
// throws and never synchronises, so it is safe inside CUDA-graph capture.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace samkern {
namespace connector_reorder {

// Output layouts with separators (kept in sync with samkern/ops/connector/cuda.py).
enum Mode : int {
  kModeTime = 1,  // time-major, separator after each time step
  kModeFreq = 2,  // frequency-major, separator after each frequency band
};

// out <- reorder(tokens, sep). T is float, __half or __nv_bfloat16.
template <typename T>
cudaError_t launch_forward(void* out, const void* tokens, const void* sep, int64_t batch, int64_t n_time,
                           int64_t n_freq, int64_t dim, int mode, cudaStream_t stream);

// grad_tokens <- inverse gather of grad_out (separator rows are skipped).
template <typename T>
cudaError_t launch_backward_tokens(void* grad_tokens, const void* grad_out, int64_t batch, int64_t n_time,
                                   int64_t n_freq, int64_t dim, int mode, cudaStream_t stream);

// grad_sep <- sum of grad_out's separator rows, in the canonical deterministic order:
//   partial[b, :] = ((0 + g[b, s_0]) + g[b, s_1]) + ... (float32, separators in output order)
//   grad_sep      = cast_T(((0 + partial[0]) + partial[1]) + ...)
// workspace must hold batch * dim floats.
template <typename T>
cudaError_t launch_backward_sep(void* grad_sep, float* workspace, const void* grad_out, int64_t batch,
                                int64_t n_time, int64_t n_freq, int64_t dim, int mode, cudaStream_t stream);

// Element types of the dtype-dispatching entry points below (which keep the binding layer
// free of cuda_fp16.h / cuda_bf16.h).
enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// Same as the templates above with the element type chosen at run time; an unknown dtype
// returns cudaErrorInvalidValue.
cudaError_t forward(DType dtype, void* out, const void* tokens, const void* sep, int64_t batch, int64_t n_time,
                    int64_t n_freq, int64_t dim, int mode, cudaStream_t stream);
cudaError_t backward_tokens(DType dtype, void* grad_tokens, const void* grad_out, int64_t batch, int64_t n_time,
                            int64_t n_freq, int64_t dim, int mode, cudaStream_t stream);
cudaError_t backward_sep(DType dtype, void* grad_sep, float* workspace, const void* grad_out, int64_t batch,
                         int64_t n_time, int64_t n_freq, int64_t dim, int mode, cudaStream_t stream);

}  // namespace connector_reorder
}  // namespace samkern
