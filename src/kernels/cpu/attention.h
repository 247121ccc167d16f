// Fused multi-head attention for the CPU backend (flash-attention style): softmax(q k^T * scale [+ causal]) v
// with grouped-query heads, computed in tiles of (query rows x 64 keys) with an online softmax, so the T x S
// score matrix is never materialised.
//
// Shapes (graph.h kAttention): q, out [B, T, Hq*D]; k, v [B, S, Hkv*D]; query head h reads kv head h/(Hq/Hkv).
// Causal: query i sees keys 0..min(S-1, q_offset+i).
//
// Work split: per batch element, the Hq/Hkv query heads that share a kv head are processed together as the
// "rows" (t, g) of that kv head, so K and V are read (and packed) once per kv head; rows are cut into blocks of
// 32 and the (kv head, row block) items are handed out to the pool's threads dynamically, head by head (so the
// packed K and V of the head in work stay in each core's L2), most expensive (last causal rows) first within a
// head. When there are too few items to keep every thread busy (decode: T = 1), the keys are
// split as well (flash-decoding) and the partial softmax states are merged at the end.
//
// Kernels (chosen once per call by attention_kernel_for()):
//   kTiledBF16  AVX512-BF16. Q (pre-multiplied by scale*log2 e), K and V are rounded to bf16 and both matmuls
//               (q k^T and p v) run on vdpbf16ps with f32 accumulation; the probabilities p are rounded to bf16
//               before p v. K is packed once per kv head into 16-key panels of bf16 pairs, V into key-pair
//               interleaved rows. Used for Precision::kBF16 when D % 16 == 0 and a kv head has >= 16 query rows.
//   kTiledF32   AVX-512F. f32 throughout; K packed into 16-key f32 panels, V packed into contiguous rows of
//               round_up(D, 16) floats per kv head. Micro-tile: 4 query rows x 64 keys; the softmax of a tile runs
//               on the q k^T accumulators in registers (row max by an in-register butterfly, one vector exp2 for the
//               4 rows' rescale factors, the row sums kept as 16-lane partial sums until the end), then p v with
//               4 rows x 4 zmm of O per V row load. Why V is packed: read in place, V rows of SigLIP (12 heads x 64
//               = 3072 bytes apart) fall into 16 of the 64 L1 sets, so the 16 KB V block of a tile did not stay
//               in L1 (with the other changes: 107 -> 211-217 GFLOP/s on 1024 tokens, bench/BENCHMARKS.md "Attention kernels").
//   kTiledF32V1 the previous kTiledF32 (V read in place, softmax through memory with scalar reductions): never
//               picked by kAuto, kept callable for side-by-side benchmarks (bench_attention) and as a second f32
//               kernel in the tests.
//   kDirectF32  AVX-512F, for few query rows per kv head (decode): no packing, K and V rows read in place.
//   kGenericDirect, kGenericTiled  AVX2+FMA versions of the two f32 kernels (the same code over 8-wide
//               vectors): the baseline, used when the CPU lacks AVX-512.
// Decode in BF16 precision uses kDirectF32: with one or a few query rows per kv head, converting the f32 KV
// cache to bf16 would cost as much memory traffic as the f32 arithmetic it would save.
//
// Numerical effect (measured against the double-precision reference in tests/unit/test_ops.cpp):
//   f32 kernels: exp via a degree-6 polynomial (rel. error ~1e-7) and f32 accumulation in a different order
//     than PyTorch: |out - ref| <~ 1e-6 * max|v| for S up to a few thousand.
//   bf16 kernel: q*scale, k, v and p are each rounded to bf16 (8 significant bits: relative error <= 2^-8), so
//     each q_d k_d product carries a relative error <= 2^-7 and a logit s = scale q.k an absolute error
//     E <= 2^-7 * scale * sum_d |q_d k_d| (typically ~sqrt(D) times smaller: the errors have random signs).
//     Perturbing every logit by at most E moves each probability by a factor within e^(+-2E), and the roundings of
//     p and v add 2^-8 each, so |out - ref| <= (e^(2E) - 1 + 2^-7) * max|v|; in practice ~2^-9 * max|v|. This is
//     the same rounding PyTorch's bf16 attention does (it, too, feeds bf16 q, k, v and p to its matmuls).
#pragma once

#include <cstdint>

#include "core/status.h"
#include "core/thread_pool.h"
#include "graph/backend.h"
#include "kernels/ref/ref_ops.h"

namespace ev::cpu {

enum class AttnKernel : uint8_t {
  kAuto = 0,
  kGenericDirect,
  kGenericTiled,
  kDirectF32,
  kTiledF32,
  kTiledBF16,
  kTiledF32V1,  // previous kTiledF32, benchmarks and tests only
};
const char* attn_kernel_name(AttnKernel k);

// The kernel kAuto picks for these dims and precision on this CPU.
AttnKernel attention_kernel_for(const ref::AttentionDims& a, Precision precision);
// Whether `k` can run these dims on this CPU (kAuto and the generic kernels always can).
bool attention_kernel_usable(AttnKernel k, const ref::AttentionDims& a);

// out [B, T, Hq*D] = attention(q [B, T, Hq*D], k [B, S, Hkv*D], v [B, S, Hkv*D]). `force` selects a kernel
// explicitly (tests, benchmarks); an unusable forced kernel is an error.
Status attention(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                 Precision precision, ThreadPool* pool, AttnKernel force = AttnKernel::kAuto);

// Token importance (graph.h kAttnScore): score [B, S] = the mean over query heads and queries of the attention
// probabilities softmax_j(scale q_i . k_j). Computed beside the fused kernel rather than inside it, because the
// fused kernel never holds a row's final softmax normaliser while it still has that row's probabilities: blocks of
// 64 query rows of one head go through q k^T (oneDNN, f32) into a [64, S] scratch that stays in L2, are softmaxed
// in place and summed into per-thread column accumulators. Costs one q k^T per scored layer (a third of that
// layer's attention FLOPs; on SmolVLM-256M shapes ~4% of a ViT layer).
Status attention_score(const ref::AttentionDims& a, const float* q, const float* k, float* score, ThreadPool* pool);

// ---- internals shared by attention.cpp and attention_avx512.cpp ---------------------------------------------
namespace attn_detail {
// Runs one kernel family on all batch elements. Defined per ISA; the _avx512 ones require AVX-512 (and BF16 for
// the bf16 one).
void run_generic(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                 ThreadPool* pool, bool direct);
void run_f32_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                    ThreadPool* pool, bool direct);
void run_f32_tiled_v1_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                             ThreadPool* pool);
void run_bf16_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                     ThreadPool* pool);
}  // namespace attn_detail

}  // namespace ev::cpu
