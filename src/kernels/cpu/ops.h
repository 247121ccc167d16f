// Optimised CPU kernels for the non-GEMM ops of the graph (attention lives in attention.h, Linear in gemm.h).
//
// Each op is written once over a SIMD wrapper (ops_simd.h) and compiled twice: AVX2+FMA (ops.cpp, the
// x86-64-v3 baseline) and AVX-512 (ops_avx512.cpp). The kernel table for this CPU is chosen once, from
// cpu_features(), on first use. The functions below split their work over `pool` (nullptr: calling thread only)
// in row- or element-contiguous chunks; small inputs (decode-sized) stay on the calling thread because waking
// the workers costs more than the work.
//
// Numerics (all f32; compared with the double-precision reference in tests/unit/test_ops.cpp):
//   layer_norm / rms_norm  f32 vector sums, two-pass mean/variance: relative error ~1e-6
//   gelu_tanh / silu       x * sigmoid(.) with a polynomial exp (rel. error ~1e-7): |err| <= ~1e-6 |x|
//   rope                   x*cos -/+ x'*sin with FMA (one rounding fewer than PyTorch's mul, mul, add)
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace ev::cpu {

// y[i] = a[i] + b[i % nb], i < na (nb divides na; the cyclic broadcast of graph.h).
void add(ThreadPool* pool, const float* a, int64_t na, const float* b, int64_t nb, float* y);
void mul(ThreadPool* pool, const float* a, int64_t na, const float* b, int64_t nb, float* y);

// x, y: [rows, C]; w, b: [C].
void layer_norm(ThreadPool* pool, const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps,
                float* y);
void rms_norm(ThreadPool* pool, const float* x, int64_t rows, int64_t C, const float* w, float eps, float* y);

void gelu_tanh(ThreadPool* pool, const float* x, int64_t n, float* y);
void silu(ThreadPool* pool, const float* x, int64_t n, float* y);
void swiglu(ThreadPool* pool, const float* gate, const float* up, int64_t n, float* y);
// x [rows, 2C] = [gate | up] per row (a fused gate/up Linear) -> y [rows, C]; per element the same as swiglu().
void swiglu_fused(ThreadPool* pool, const float* x, int64_t rows, int64_t C, float* y);
// y [rows, c1 - c0] = columns [c0, c1) of x [rows, C] (graph.h kCols when it is not a view).
void copy_cols(ThreadPool* pool, const float* x, int64_t rows, int64_t C, int64_t c0, int64_t c1, float* y);

// x, y: [B, T, H*D]; cos_tab, sin_tab: [T, D/2] for the positions of tokens 0..T-1 (see ref::rope_cos_sin).
void rope(ThreadPool* pool, const float* x, int64_t B, int64_t T, int H, int D, const float* cos_tab,
          const float* sin_tab, float* y);

// px [B, C, H, W] -> y [B, (H/P)*(W/P), C*P*P] (graph.h kPatchify).
void patchify(ThreadPool* pool, const float* px, int64_t B, int64_t C, int64_t H, int64_t W, int P, float* y);
// u8 frames [B, H, W, C] (graph.h patchify).
void patchify_u8_hwc(ThreadPool* pool, const uint8_t* px, int64_t B, int64_t H, int64_t W, int64_t C, int P, float* y);
// x [B, S, E] -> y [B, S/s^2, E*s^2] (Idefics3Connector.pixel_shuffle, graph.h kPixelShuffle).
void pixel_shuffle(ThreadPool* pool, const float* x, int64_t B, int64_t S, int64_t E, int s, float* y);

// Gathers rows ids[0..n) of table [V, C] (dtype f32, bf16 or f16: elem_size 4 or 2, is_bf16 picks the 16-bit
// format) into y [n, C] f32. ids must already be validated (0 <= id < V).
void get_rows(ThreadPool* pool, const void* table, int64_t C, int elem_size, bool is_bf16, const int32_t* ids,
              int64_t n, float* y);

// memcpy split over the pool for large sizes (src and dst must not overlap).
void copy(ThreadPool* pool, const void* src, void* dst, size_t bytes);

// ---- per-ISA kernel table (single-threaded bodies; the functions above add the threading) ------------------
struct OpsKernels {
  const char* isa;
  void (*add)(const float* a, const float* b, float* y, int64_t n);
  void (*mul)(const float* a, const float* b, float* y, int64_t n);
  void (*gelu_tanh)(const float* x, float* y, int64_t n);
  void (*silu)(const float* x, float* y, int64_t n);
  void (*swiglu)(const float* g, const float* u, float* y, int64_t n);
  void (*layer_norm)(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, float* y);
  void (*rms_norm)(const float* x, int64_t rows, int64_t C, const float* w, float eps, float* y);
  // One token: x, y [H, D]; cos, sin [D/2].
  void (*rope_token)(const float* x, float* y, int H, int D, const float* cos, const float* sin);
  // rows x n scores s (row stride lds): each row softmaxed in place, then added into col [n].
  void (*softmax_colsum)(float* s, int64_t rows, int64_t n, int64_t lds, float* col);
};
const OpsKernels& ops_kernels_avx2();
const OpsKernels& ops_kernels_avx512();  // only valid to call when cpu_features().has_avx512_core()
// The table used by the functions above: AVX-512 when the CPU has it, else AVX2.
const OpsKernels& ops_kernels();

}  // namespace ev::cpu
