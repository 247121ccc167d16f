// Attention dispatch, and the AVX2 (8-wide) instantiation of the f32 kernels.
#include "kernels/cpu/attention.h"

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/cpu_features.h"

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

}  // namespace ev::cpu
