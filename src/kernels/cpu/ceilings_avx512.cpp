// AVX-512 kernels of the ceiling measurements (compiled with -mavx512f/bw/vl/dq/bf16/vnni; see ceilings.h).
// Each keeps 16 independent accumulator chains, enough to cover the 4-6 cycle latency of one zmm FMA / dot
// product issued per cycle per core, so throughput, not latency, is what we time.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/ceilings.h"

namespace ev::ceilings_detail {

namespace {
constexpr int kAcc = 16;

// Horizontal sums through memory: GCC 12's _mm512_reduce_* intrinsics trip -Wuninitialized.
float hsum(__m512 v) {
  alignas(64) float a[16];
  _mm512_store_ps(a, v);
  float s = 0;
  for (float x : a) s += x;
  return s;
}
int64_t hsum_i32(__m512i v) {
  alignas(64) int32_t a[16];
  _mm512_store_si512(a, v);
  int64_t s = 0;
  for (int32_t x : a) s += x;
  return s;
}
uint64_t hsum_u64(__m512i v) {
  alignas(64) uint64_t a[8];
  _mm512_store_si512(a, v);
  uint64_t s = 0;
  for (uint64_t x : a) s += x;
  return s;
}
}  // namespace

double f32_fma_avx512(int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  volatile float sink = hsum(s);
  (void)sink;
  return static_cast<double>(iters) * kAcc * 16 * 2;
}

double bf16_dot_avx512(int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(-1e-3f));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  volatile float sink = hsum(s);
  (void)sink;
  // Per f32 lane: 2 bf16 products accumulated = 4 FLOP.
  return static_cast<double>(iters) * kAcc * 16 * 4;
}

double int8_dot_avx512(int64_t iters) {
  __m512i acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  __m512i s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_epi32(s, acc[i]);
  volatile int64_t sink = hsum_i32(s);
  (void)sink;
  // Per i32 lane: 4 u8*s8 products accumulated = 8 OP.
  return static_cast<double>(iters) * kAcc * 16 * 8;
}

double read_avx512(const void* buf, size_t bytes, uint64_t* sink) {
  const auto* p = static_cast<const __m512i*>(buf);
  const size_t n = bytes / 64;
  // 8 independent chains of cheap integer adds: the loads, not the adds, limit the loop.
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i + 0));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 1));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 2));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 3));
    a4 = _mm512_add_epi64(a4, _mm512_load_si512(p + i + 4));
    a5 = _mm512_add_epi64(a5, _mm512_load_si512(p + i + 5));
    a6 = _mm512_add_epi64(a6, _mm512_load_si512(p + i + 6));
    a7 = _mm512_add_epi64(a7, _mm512_load_si512(p + i + 7));
  }
  for (; i < n; ++i) a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
  a0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                        _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
  *sink += hsum_u64(a0);
  return static_cast<double>(n) * 64;
}

}  // namespace ev::ceilings_detail
