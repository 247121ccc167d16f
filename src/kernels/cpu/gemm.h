// The GEMM layer of the CPU backend: the Linear op y[M,N] = x[M,K] · W[N,K]^T + b[N] with weights packed once,
// and a small batched plain GEMM for attention.
//
// HOW IT COMPUTES (all figures measured on the 2-core AMD Zen 4 development machine, /work/notes/gemm_results.md)
//
// * Weights are reordered ONCE at pack time into oneDNN's blocked layout for its brgemm matmul kernels:
//   bf16: BA16a64b2a (W^T [K,N] in blocks of 64 output columns x 32 K, K pairs interleaved for vdpbf16ps),
//   f32:  BA16a64b   (blocks of 64 columns x 16 K). N is padded to 64 and K to 32 (bf16) / 16 (f32) with zeros.
//   The N-blocks are outermost, so any run of whole 64-column blocks is itself a valid packed matrix: that is what
//   lets one packed copy serve oneDNN over an N-slice and our own GEMV kernel below, with no second copy.
// * oneDNN matmul primitives are created per (M, N-slice, K, precision, bias) and cached process-wide (all 30
//   layers of a model share them; creation costs 0.1-0.9 ms). A runtime-M primitive (DNNL_RUNTIME_DIM_VAL) is not
//   an option: oneDNN 2.6 then drops brgemm for its plain-layout gemm:jit and loses up to 2.6x (768x3072 bf16:
//   151 vs 394 GFLOP/s), so primitives are cached per exact M (LRU, kGemmCacheCapacity entries).
// * BF16: oneDNN 2.6 has no f32-src x bf16-weights matmul, so the f32 activations are converted to bf16 first
//   (AVX-512 vcvtne2ps2bf16, into a reusable per-thread scratch buffer; ~1% of the GEMM time at M=1024).
// * Decode (M <= 4): an own AVX-512 GEMV over the same packed layout (vdpbf16ps / vfmadd231ps, 64 columns per
//   block, columns split over the pool's threads). It streams the weights at ~85-95% of the measured memory
//   bandwidth where oneDNN's brgemm at M=1 reaches ~25-60% (see gemm_results.md for the per-shape numbers).
//
// THREADING (why oneDNN runs single-threaded inside our ThreadPool)
//   Debian's oneDNN uses OpenMP. Letting its OpenMP team (2 threads) run while our ThreadPool's workers spin
//   (~0.5 ms after each parallel section) puts 3-4 busy threads on 2 cores; the OpenMP workers also spin after
//   each GEMM while our pool's elementwise ops want the cores. Measured on a ViT-block-like sequence of GEMMs
//   interleaved with pool elementwise work (bench_gemm BM_Sequence), running each GEMM as slices on our own pool
//   with oneDNN limited to 1 OpenMP thread per call is the fastest option, and it also wins on isolated GEMMs
//   for several shapes (one thread per slice avoids oneDNN's 2-thread partitioning losses, e.g. K=3072 f32).
//   So the default (GemmThreading::kPoolSlices) is: every call of linear_forward() runs on `pool`; thread t
//   executes a single-threaded oneDNN primitive on its slice:
//     - M-split (rows) when M >= kMinRowsPerThreadMSplit * threads: each thread owns whole rows, all columns;
//     - N-split (64-column blocks) otherwise: each thread streams its own part of the weights once.
//   OpenMP's thread count is limited per call (omp_set_num_threads(1) on the executing thread, restored after),
//   so OpenMP never starts a team of its own and only our pool's threads ever run.
//   GemmThreading::kOneDnnOmp (oneDNN's own OpenMP team on the calling thread, our pool idle) is kept for the
//   side-by-side benchmark.
//
// Thread safety: pack_linear and linear_forward may be called from several threads at once (the primitive cache
// is locked; primitives are executed concurrently, which oneDNN supports). A PackedLinear is immutable after
// packing. linear_forward must not be called from inside a parallel section of the same `pool`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "graph/backend.h"

namespace ev {

// INT8 (Precision::kInt8; exact semantics in src/kernels/ref/ref_quant.h, reproduced bit for bit)
//   y[m, n] = fma(float(sum_k qx[m, k] qw[n, k]), sx[m] * sw[n], b[n]) with qw the per-output-channel symmetric
//   int8 weights (scales sw [N]) and qx, sx the dynamic per-token quantisation of x / smooth, computed inside
//   linear_forward (fused with the division by the SmoothQuant factors).
// * Own kernel, not oneDNN (measured in bench_gemm, "int8" vs "onednn-s8" rows: see BENCHMARKS.md "INT8 GEMM
//   kernels"). Weights are packed once as u8 = qw + 128 in blocks of 64 output columns (outermost) x Kp/4 groups
//   of 4 k: group p of block nb is 256 bytes, lane c = (wu[64nb + c][4p .. 4p + 3]), which is the unsigned operand
//   of vpdpbusd; the activations (s8) are the broadcast signed operand, and the offset is removed with the
//   per-row compensation 128 * sum_k qx[m, k] computed by the quantiser. K is padded to a multiple of 8, N to 64.
// * Prefill: 6 x 64 register tiles, rows split over the pool (M >= 32 * threads), else 64-column blocks split;
//   every thread quantises the rows it needs itself (no second parallel section). Decode (M <= gemv_max_m): the
//   same kernel with 1..4 rows, 64-column blocks split over the threads, each thread streaming one contiguous
//   region of the weights.
// * Without AVX-512 VNNI: a portable loop over the same layout (slow, exact).

// Pre-packed Linear weights (opaque). Holds the blocked weights, the bias as f32 and what the kernels need.
struct PackedLinear;

// Packs W [N, K] (f32, bf16 or f16; PyTorch Linear layout) and an optional bias [N] (any float dtype) for
// `precision`. kF32 widens bf16/f16 weights to f32; kBF16 rounds f32/f16 weights to bf16 (round-to-nearest-even).
// If this CPU/oneDNN cannot do bf16 matmul, kBF16 falls back to kF32 (packed_precision() tells which).
// kInt8 on a float weight: ref::quantize_rows_i8 per output channel (if w.quant() is set with a defined `smooth`,
// the SmoothQuant variant with those factors; its `scale` is ignored), then packed.
// A kI8 weight (whatever `precision`: an int8 weight is always computed in int8) must carry w.quant() with
// `scale` f32 [N] (finite) and optionally `smooth` f32 [K] (finite, > 0); its values are packed as they are.
// Errors: kInvalidArgument for a non-2-D weight, zero-sized dims, a bias whose size is not N, a kI8 weight without
// quant params or with a wrong scale/smooth dtype, shape or value, K > 65536 in int8, a non-finite float weight
// quantised to int8; kUnsupported for the other integer dtypes. Messages name the tensor (Tensor::name()) when it
// has one.
Result<std::shared_ptr<PackedLinear>> pack_linear(const Tensor& w, const Tensor* bias, Precision precision);

// The same for a plain int8 matrix: q [N, K] row-major, scale [N], smooth [K] or nullptr, bias [N] or nullptr
// (all copied). `name` labels errors and packed_describe(). Used by pack_linear for kI8 weights.
Result<std::shared_ptr<PackedLinear>> pack_linear_i8(const int8_t* q, int64_t N, int64_t K, const float* scale,
                                                     const float* smooth, const float* bias,
                                                     const std::string& name);

// y[M, N] = x[M, K] · W^T + b, x and y row-major and contiguous (row stride K and N). M >= 0 (0 is a no-op).
// Runs on `pool` (nullptr: on the calling thread only). x and y must not overlap.
Status linear_forward(const PackedLinear& pl, const float* x, int64_t M, float* y, ThreadPool* pool);

int64_t packed_n(const PackedLinear& pl);
int64_t packed_k(const PackedLinear& pl);
// Bytes of the packed weights plus the bias, and for int8 the scales and smooth factors (what a decode step
// streams from memory).
size_t packed_bytes(const PackedLinear& pl);
Precision packed_precision(const PackedLinear& pl);
// "bf16 BA16a64b2a [576 x 1536] brg:avx512_core_bf16 + gemv_avx512", "int8 u8x64x4 [576 x 1536] own-vnni 6x64
// + gemv_vnni (smooth)": for logs and benchmark labels.
std::string packed_describe(const PackedLinear& pl);

// ---- Tuning knobs (process-wide). The defaults are the measured best; the benchmarks flip them to compare. ----
enum class GemmThreading : uint8_t {
  kPoolSlices = 0,  // default: oneDNN single-threaded per slice on our ThreadPool (see THREADING above)
  kOneDnnOmp = 1,   // oneDNN's OpenMP team on the calling thread (pool idle), the own GEMV still on the pool
};
enum class GemmSplit : uint8_t { kAuto = 0, kRows = 1, kCols = 2 };

constexpr int64_t kMinRowsPerThreadMSplit = 32;  // below this many rows per thread, split N instead
constexpr size_t kGemmCacheCapacity = 512;       // cached oneDNN primitives (LRU)

struct GemmOptions {
  GemmThreading threading = GemmThreading::kPoolSlices;
  GemmSplit split = GemmSplit::kAuto;  // kPoolSlices only
  int gemv_max_m = 4;                  // own AVX-512 GEMV for 1 <= M <= gemv_max_m (0 disables it)
  // Products of fewer multiply-adds (M*N*K) run single-threaded (0: always use the pool). 2^17 = e.g. a 256x512
  // decode GEMV: ~10 us on one core.
  int64_t min_parallel_macs = 1 << 17;
  // The same threshold for the int8 kernels. A decode GEMV streams its weights from memory, which one core cannot
  // do at the full bandwidth: 2^17 (e.g. SmolVLM-256M's 576x576 o_proj, 0.33 MB) runs on both threads. Measured
  // against 2^19 and 2^16 side by side on SmolVLM-256M shapes, int8 decode after 256 tokens: 7.50 / 8.05 / 7.91,
  // 9.26 / 9.54 / 8.63 and 9.40 / 9.97 / 9.75 ms per token in three runs (2^17 / 2^19 / 2^16).
  int64_t int8_min_parallel_macs = 1 << 17;
  bool int8_force_generic = false;  // run the portable int8 loop even on VNNI hardware (tests, benchmarks)
};
void set_gemm_options(const GemmOptions& o);
GemmOptions gemm_options();

struct GemmCacheStats {
  int64_t primitives_created = 0;
  int64_t cache_hits = 0;
  int64_t entries = 0;
  double create_ms_total = 0;  // time spent creating oneDNN primitives
};
GemmCacheStats gemm_cache_stats();
void gemm_clear_cache();
// oneDNN's implementation name of every cached Linear primitive ("brg:avx512_core_bf16", ...). A "ref:" entry
// means a shape or stride oneDNN's optimised kernels refused: ~1000x slower, and a bug on our side.
std::vector<std::string> gemm_cached_impls();

// ---- Batched plain GEMM (for attention): C[b] = alpha · A[b] · op(B[b]) + beta · C[b] ----
//   A[b]: [M, K] row-major, row stride lda, batch stride stride_a (elements)
//   B[b]: b_transposed ? [N, K] (C = A·B^T, e.g. Q·K^T) : [K, N] (C = A·B, e.g. P·V); row stride ldb
//   C[b]: [M, N] f32, row stride ldc
// A and B are both f32 or both bf16 (uint16_t bits). oneDNN matmul with runtime shapes and strides (one cached
// primitive per dtype/transpose/beta), run single-threaded per batch element; batch elements are split over
// `pool` (nullptr: all on the calling thread, which is what a caller already inside a parallel section wants).
struct GemmBatch {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  DType dtype = DType::kF32;  // kF32 or kBF16, for A and B
  const void* A = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* B = nullptr;
  int64_t ldb = 0, stride_b = 0;
  bool b_transposed = true;
  float* C = nullptr;
  int64_t ldc = 0, stride_c = 0;
  float alpha = 1.f, beta = 0.f;
};
Status gemm_batched(const GemmBatch& g, ThreadPool* pool);

// Kernels implemented in gemm_avx512.cpp (callable only when cpu_features().has_avx512_core(); the bf16 ones also
// need has_avx512_bf16()). Exposed for tests and benchmarks.
namespace gemm_detail {
// y[m, n] (row stride ldy) for n in [64*nb0, min(N, 64*nb1)), m < M (1..4):
//   sum_k x[m, k] W[n, k] + bias[n]. w: BA16a64b2a with K padded to Kp (multiple of 32); xb: [M, Kp] bf16 with
//   zeros beyond K; bias: f32 or nullptr.
void gemv_bf16_avx512(const uint16_t* w, int64_t Kp, const uint16_t* xb, int64_t M, const float* bias, float* y,
                      int64_t ldy, int64_t N, int64_t nb0, int64_t nb1);
// The same over BA16a64b f32 (Kp multiple of 16), x: [M, Kp] f32 with zeros beyond K.
void gemv_f32_avx512(const float* w, int64_t Kp, const float* x, int64_t M, const float* bias, float* y,
                     int64_t ldy, int64_t N, int64_t nb0, int64_t nb1);
// n f32 -> bf16, round to nearest even (vcvtne2ps2bf16); needs avx512_bf16.
void f32_to_bf16_avx512(const float* src, uint16_t* dst, int64_t n);

// INT8 (gemm_int8_avx512.cpp; need has_avx512_vnni()).
constexpr int kInt8TileRows = 6;
// y[m, n] (row stride ldy), m < M, n in [64*nb0, min(N, 64*nb1)):
//   fma(float(sum_k wu[n, k] qx[m, k] - cx[m]), sx[m] * sw[n], bias[n] or 0)
// w: the int8 packed layout (u8 = q + 128, see "INT8" above) with K padded to Kp (multiple of 8); qx: M rows of
// stride ldq (multiple of 4, >= Kp) with zeros beyond K; sw, bias: padded to 64 * nb1 entries.
void gemm_s8u8_avx512(const uint8_t* w, int64_t Kp, const int8_t* qx, int64_t ldq, const float* sx,
                      const int32_t* cx, int64_t M, const float* sw, const float* bias, float* y, int64_t ldy,
                      int64_t N, int64_t nb0, int64_t nb1);
// The per-token quantiser of ref::quantize_activations_i8 (bit-exact) for `rows` rows of x (row stride ldx,
// K values), with the reciprocal smooth factors rsmooth[k] = 1.0f / smooth[k] (or nullptr): q rows of stride
// ldq (zeros from K to ldq), sx[r] the scale, cx[r] = 128 * sum_k q[r, k].
void quantize_rows_s8_avx512(const float* x, int64_t ldx, int64_t K, const float* rsmooth, int64_t rows,
                             int8_t* q, int64_t ldq, float* sx, int32_t* cx);
}  // namespace gemm_detail

}  // namespace ev
