// The CUDA kernels of the backend (internal to src/kernels/cuda): launch functions, all asynchronous on the
// given stream. Pointers are device pointers; shapes follow graph/graph.h. Every function returns the number of
// kernels it launched (for the run statistics). Errors found on the device (an id outside a table, say) are
// written to `err` (DevError, first one wins) and read back by the executor after the run.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ev::cuda {

// The first error a kernel found: code (0: none), the position and value at fault, and the limit it broke.
struct DevError {
  int code;
  int pos;
  int value;
  int limit;
};
enum : int { kErrNone = 0, kErrGetRowsId = 1, kErrScatterIdx = 2 };

enum class Unary : int { kGeluTanh, kSilu, kSigmoid };
enum class TableType : int { kF32, kBF16, kF16, kI32 };

int add_mul(const float* a, int64_t na, const float* b, int64_t nb, bool mul, float* y, cudaStream_t s);
int unary(Unary op, const float* x, int64_t n, float* y, cudaStream_t s);
// gate/up separate (n elements each), or fused rows [R, 2C] -> [R, C] when up == nullptr.
int swiglu(const float* gate, const float* up, int64_t R, int64_t C, float* y, cudaStream_t s);
// b == nullptr: RMSNorm (w only); else LayerNorm. y16: write bf16 there instead of f32 to y (a GEMM's input).
int norm(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, bool rms, float* y,
         cudaStream_t s, uint16_t* y16 = nullptr);
// positions (device, [T], or nullptr): the position of token t is positions[t] instead of pos0 + t;
// per_batch: positions is [B*T], token t of batch element b at positions[b*T + t].
int rope(const float* x, int64_t B, int64_t T, int H, int D, float theta, int64_t pos0, float* y, cudaStream_t s,
         const int32_t* positions = nullptr, bool per_batch = false);
// The static decode step's prologue in one kernel, one token: q_out = rope(xq) [Hq*D]; k_cache[pos] = rope(xk),
// v_cache[pos] = xv (rows of kvd) with pos = positions[0] (an index outside the cache's cap rows is reported).
int rope_store_kv(const float* xq, const float* xk, const float* xv, int Hq, int Hkv, int D, float theta,
                  const int32_t* positions, float* q_out, float* k_cache, float* v_cache, int64_t cap, DevError* err,
                  cudaStream_t s);
// px f32 or bf16 [B, C, H, W] (d1..d3 = C, H, W), or u8 frames [B, H, W, C] (d1..d3 = H, W, C); y f32, or bf16
// with out16.
enum class PixelType : int { kF32, kBF16, kU8HWC };
int patchify(const void* px, PixelType pt, int64_t B, int64_t d1, int64_t d2, int64_t d3, int P, void* y, bool out16,
             cudaStream_t s);
int pixel_shuffle(const float* x, int64_t B, int64_t S, int64_t E, int scale, float* y, cudaStream_t s);
int get_rows(const void* table, TableType tt, int64_t V, int64_t C, const int32_t* ids, int64_t T, void* y,
             DevError* err, cudaStream_t s);
// out = base (unless base == out); out[idx[i]] = src[i].
int scatter_rows(const float* base, int64_t T, int64_t C, const float* src, const int32_t* idx, int64_t n,
                 float* out, DevError* err, cudaStream_t s);
// dst = src, bytes of device memory (a kernel: cheaper to launch than a copy, and a plain kernel node in graphs).
int copy(void* dst, const void* src, size_t bytes, cudaStream_t s);
int copy_cols(const float* x, int64_t R, int64_t C, int64_t c0, int64_t w, float* y, cudaStream_t s);
int mean_rows(const float* x, int64_t B, int64_t R, int64_t C, float* y, cudaStream_t s);
int top_k(const float* score, int64_t B, int64_t n, int64_t k, int32_t* idx, cudaStream_t s);
// x [B, n] -> idx [B]: graph.h kArgmax.
int argmax_rows(const float* x, int64_t B, int64_t n, int32_t* idx, cudaStream_t s);

// Precision conversions and the INT8 Linear's pieces (kernels/ref/ref_quant.h rules).
int f32_to_bf16(const float* x, int64_t n, uint16_t* y, cudaStream_t s);
// q [M, K] int8 and scale [M] of x [M, K] (optionally times inv_smooth [K], the f32 reciprocals of the factors).
// x [n] (f32, or bf16 with x16) -> e4m3 q [n] with one scale for the tensor (amax / 448, written to *scale):
// the FP8 GEMMs' operands. amax_bits: a device word of scratch. Launches a memset and two kernels.
int to_fp8(const void* x, bool x16, int64_t n, uint8_t* q, float* scale, unsigned* amax_bits, cudaStream_t s);
int quantize_rows_i8(const float* x, int64_t M, int64_t K, const float* inv_smooth, int8_t* q, float* scale,
                     cudaStream_t s);
// y[m, n] = fmaf(float(acc[m, n]), sx[m] * sw[n], bias[n] or 0) (+ residual[m, n]).
int dequant_i8(const int32_t* acc, int64_t M, int64_t N, const float* sx, const float* sw, const float* bias,
               const float* residual, float* y, cudaStream_t s);
// Weight-streaming GEMV for M <= 8 rows: y [M, N] = x [M, K] . w[N, K]^T (+ bias) (+ residual); w bf16 or f32.
int gemv(const float* x, int64_t M, int64_t K, const void* w, bool w_bf16, int64_t N, const float* bias,
         const float* residual, float* y, cudaStream_t s);
bool gemv_fits(int64_t M, int64_t K);
// The GEMV with its input computed on the fly (decode's norm -> projection and SwiGLU -> down projection, one
// kernel each instead of two): pre = kRmsNorm: x_eff = rmsnorm(x; norm_w, eps) with x [M, K]; pre = kSwiGLU:
// x_eff = silu(x[:, :K]) * x[:, K:] with x [M, 2K].
enum class GemvPre : int { kNone = 0, kRmsNorm = 1, kSwiGLU = 2 };
int gemv_pre(GemvPre pre, const float* x, int64_t M, int64_t K, const float* norm_w, float eps, const void* w,
             bool w_bf16, int64_t N, const float* bias, const float* residual, float* y, cudaStream_t s);

// Attention (graph.h kAttention). q [B, T, Hq*D], k/v [B, S, Hkv*D], out like q. lse (nullable): [B, Hq, T]
// log2-domain log-sum-exp of the scaled scores of each query row (what attn_score_from_lse needs).
// exact: f32 arithmetic throughout (the split-key kernel for every T), for Precision::kF32. scratch (at least
// attention_scratch_bytes): bf16 copies of q, k, v for the register-resident tensor-core kernel; nullptr: the
// shared-memory WMMA kernel, which reads f32 directly.
int attention(const float* q, const float* k, const float* v, int64_t B, int64_t T, int64_t S, int Hq, int Hkv,
              int D, float scale, bool causal, int64_t q_offset, float* out, float* lse, bool exact, void* scratch,
              cudaStream_t s, const int32_t* positions = nullptr, bool per_batch = false);
// The tensor-core kernel on inputs some of which are already bf16 (the *16 flags; such a pointer is a bf16 array
// of the same layout); the f32 ones are converted into scratch. Needs attention_uses_flash(T, D).
int attention_mixed(const void* q, bool q16, const void* k, bool k16, const void* v, bool v16, int64_t B, int64_t T,
                    int64_t S, int Hq, int Hkv, int D, float scale, bool causal, int64_t q_offset, void* out,
                    float* lse, void* scratch, cudaStream_t s, bool out16 = false);
size_t attention_scratch_bytes(int64_t B, int64_t T, int64_t S, int Hq, int Hkv, int D);
// Whether attention() takes the tensor-core (flash) path for these sizes (else the split-key kernel).
bool attention_uses_flash(int64_t T, int D);
// graph.h kAttnScore from the rows' log-sum-exp (non-causal): score [B, S].
int attn_score_from_lse(const float* q, const float* k, const float* lse, int64_t B, int64_t T, int64_t S, int Hq,
                        int Hkv, int D, float scale, float* score, cudaStream_t s);

// Which tensor-core kernel serves attention of head_dim 64 (the benchmark and the tests compare them): 0 =
// automatic (flash3, the wgmma kernel, where the build has sm_90a code and the device is sm_90; else flash2),
// 1 = flash2, 2 .. flash_variant_count() - 1 = one block shape of flash3 (flash_variant_name). Process-wide; a
// CUDA graph captured before a change keeps the kernel it was captured with.
void set_flash_variant(int v);
int flash_variant_count();
const char* flash_variant_name(int v);
bool flash3_available();

// One-time setup (shared-memory limits of the kernels that need more than 48 KB; whether the device has
// programmatic dependent launch).
cudaError_t init_kernels();

// Programmatic dependent launch (Hopper): the decode kernels are launched so that each may start while the
// previous one finishes (its launch and prologue overlap), and wait for it with griddepcontrol.wait before touching
// memory. Off on devices before sm_90 and when disabled.
extern bool g_pdl;
#if defined(__CUDACC__)
__device__ inline void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ inline void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// The first thing a PDL-launched kernel does: wait for its predecessor, then let its own successor launch.
__device__ inline void pdl_enter() {
  pdl_wait();
  pdl_launch_dependents();
}
template <typename... KArgs, typename... Args>
inline void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = g_pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}
#endif

}  // namespace ev::cuda
