// Attention dispatch, and the AVX2 (8-wide) instantiation of the f32 kernels.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"

namespace ev::cpu {

namespace attn_detail {
void run_generic(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                 ThreadPool* pool, bool direct) {
  if (direct)
    run_attention<F32Traits<V8, true>>(a, q, k, v, out, pool);
  else
    run_attention<F32Traits<V8, false>>(a, q, k, v, out, pool);
}
}  // namespace attn_detail

namespace {
// Below this many query rows per kv head (T * Hq/Hkv), K is read in place rather than packed: packing costs
// ~D scalar moves per key, which only pays off when several rows reuse each panel (measured in bench_ops).
constexpr int64_t kDirectMaxRows = 8;
// The bf16 kernel needs at least this many rows per kv head to amortise converting K and V to bf16.
constexpr int64_t kBf16MinRows = 16;

int64_t rows_per_kv_head(const ref::AttentionDims& a) { return a.T * (a.Hq / a.Hkv); }
}  // namespace

const char* attn_kernel_name(AttnKernel k) {
  switch (k) {
    case AttnKernel::kAuto: return "auto";
    case AttnKernel::kGenericDirect: return "direct_f32_avx2";
    case AttnKernel::kGenericTiled: return "tiled_f32_avx2";
    case AttnKernel::kDirectF32: return "direct_f32_avx512";
    case AttnKernel::kTiledF32: return "tiled_f32_avx512";
    case AttnKernel::kTiledBF16: return "tiled_bf16_avx512";
    case AttnKernel::kTiledF32V1: return "tiled_f32_v1_avx512";
  }
  return "?";
}

bool attention_kernel_usable(AttnKernel k, const ref::AttentionDims& a) {
  const CpuFeatures& f = cpu_features();
  switch (k) {
    case AttnKernel::kAuto:
    case AttnKernel::kGenericDirect:
    case AttnKernel::kGenericTiled: return true;
    case AttnKernel::kDirectF32:
    case AttnKernel::kTiledF32:
    case AttnKernel::kTiledF32V1: return f.has_avx512_core();
    case AttnKernel::kTiledBF16: return f.has_avx512_bf16() && a.D % 16 == 0;
  }
  return false;
}

AttnKernel attention_kernel_for(const ref::AttentionDims& a, Precision precision) {
  const int64_t rows = rows_per_kv_head(a);
  if (precision == Precision::kBF16 && rows >= kBf16MinRows && attention_kernel_usable(AttnKernel::kTiledBF16, a))
    return AttnKernel::kTiledBF16;
  if (!cpu_features().has_avx512_core())
    return rows < kDirectMaxRows ? AttnKernel::kGenericDirect : AttnKernel::kGenericTiled;
  return rows < kDirectMaxRows ? AttnKernel::kDirectF32 : AttnKernel::kTiledF32;
}

Status attention(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                 Precision precision, ThreadPool* pool, AttnKernel force) {
  EV_RETURN_IF_ERROR(ref::check_attention_dims(a));
  AttnKernel kern = force == AttnKernel::kAuto ? attention_kernel_for(a, precision) : force;
  if (!attention_kernel_usable(kern, a))
    return Unsupported(std::string("attention kernel ") + attn_kernel_name(kern) +
                       " cannot run here (CPU features or head_dim " + std::to_string(a.D) + ")");
  switch (kern) {
    case AttnKernel::kAuto:  // not reached: resolved above
    case AttnKernel::kGenericDirect: attn_detail::run_generic(a, q, k, v, out, pool, true); break;
    case AttnKernel::kGenericTiled: attn_detail::run_generic(a, q, k, v, out, pool, false); break;
    case AttnKernel::kDirectF32: attn_detail::run_f32_avx512(a, q, k, v, out, pool, true); break;
    case AttnKernel::kTiledF32: attn_detail::run_f32_avx512(a, q, k, v, out, pool, false); break;
    case AttnKernel::kTiledBF16: attn_detail::run_bf16_avx512(a, q, k, v, out, pool); break;
    case AttnKernel::kTiledF32V1: attn_detail::run_f32_tiled_v1_avx512(a, q, k, v, out, pool); break;
  }
  return Status::Ok();
}

Status attention_score(const ref::AttentionDims& a, const float* q, const float* k, float* score, ThreadPool* pool) {
  if (a.B <= 0 || a.T <= 0 || a.S <= 0 || a.D <= 0 || a.Hq <= 0 || a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    return InvalidArgument("attention_score: bad dims");
  const int64_t G = a.Hq / a.Hkv, D = a.D;
  const int64_t q_stride = static_cast<int64_t>(a.Hq) * D, kv_stride = static_cast<int64_t>(a.Hkv) * D;
  const int nt = pool ? std::max(1, pool->size()) : 1;
  // Row blocks as large as a 1 MB scratch allows (each oneDNN call has a fixed cost of several microseconds, more
  // than a 64-row block of a 196-token tile computes), but at least two items per thread so that none idles.
  int64_t rows = std::max<int64_t>(16, std::min<int64_t>(a.T, (int64_t{1} << 18) / a.S));
  const int64_t min_items = 2 * static_cast<int64_t>(nt);
  if (a.B * a.Hq * ((a.T + rows - 1) / rows) < min_items) {
    const int64_t blocks_wanted = (min_items + a.B * a.Hq - 1) / (a.B * a.Hq);
    rows = std::max<int64_t>(16, (a.T + blocks_wanted - 1) / blocks_wanted);
  }
  const int64_t kRows = rows;
  const int64_t blocks = (a.T + kRows - 1) / kRows;
  const int64_t items = a.B * a.Hq * blocks;
  // Per-thread column sums [B, S] (small: B tiles x S tokens) and a [64, S] scratch.
  std::vector<std::vector<float>> col(static_cast<size_t>(nt), std::vector<float>(static_cast<size_t>(a.B * a.S), 0.f));
  std::vector<Status> err(static_cast<size_t>(nt));
  const auto softmax_colsum = ops_kernels().softmax_colsum;
  auto body = [&](int tid, int64_t i0, int64_t i1) {
    std::vector<float> sc(static_cast<size_t>(kRows * a.S));
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / (a.Hq * blocks), h = (it / blocks) % a.Hq, blk = it % blocks;
      const int64_t r0 = blk * kRows, rows = std::min(kRows, a.T - r0);
      GemmBatch g;
      g.M = rows;
      g.N = a.S;
      g.K = D;
      g.A = q + (b * a.T + r0) * q_stride + h * D;
      g.lda = q_stride;
      g.B = k + b * a.S * kv_stride + (h / G) * D;
      g.ldb = kv_stride;
      g.b_transposed = true;
      g.C = sc.data();
      g.ldc = a.S;
      g.alpha = a.scale;
      Status st = gemm_batched(g, nullptr);
      if (!st.ok()) {
        err[static_cast<size_t>(tid)] = st;
        return;
      }
      softmax_colsum(sc.data(), rows, a.S, a.S, col[static_cast<size_t>(tid)].data() + b * a.S);
    }
  };
  if (pool == nullptr || nt <= 1 || items <= 1)
    body(0, 0, items);
  else
    pool->parallel_for(items, body, 1);
  for (const Status& st : err) EV_RETURN_IF_ERROR(st);
  const float norm = 1.f / (static_cast<float>(a.Hq) * static_cast<float>(a.T));
  for (int64_t i = 0; i < a.B * a.S; ++i) {
    float s = 0.f;
    for (int t = 0; t < nt; ++t) s += col[static_cast<size_t>(t)][static_cast<size_t>(i)];
    score[i] = s * norm;
  }
  return Status::Ok();
}

}  // namespace ev::cpu
