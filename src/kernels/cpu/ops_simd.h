// Thin SIMD wrappers used to write each CPU kernel once and compile it for two instruction sets:
//   V8  (AVX2 + FMA, __m256)    in the x86-64-v3 files (ops.cpp, attention.cpp)
//   V16 (AVX-512F/BW/DQ, __m512) in the *_avx512.cpp files, which are built with AVX-512 flags.
// Everything here has internal linkage (anonymous namespace): each translation unit gets its own copy compiled
// for its own flags, so an AVX-512 instantiation can never be picked by the linker for an AVX2 caller.
#pragma once

#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports a false -Wmaybe-uninitialized inside its own AVX-512 intrinsics (_mm512_undefined_ps() used as
// the pass-through of unmasked builtins) wherever they are inlined; the AVX-512 files would drown in it.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstdint>

namespace ev::cpu {
namespace {  // NOLINT(google-build-namespaces): per-ISA copies on purpose, see above

// Polynomial coefficients (near-minimax, Chebyshev fits computed with mpmath; f32-rounded):
//   2^f on [-0.5, 0.5], degree 6: max relative error 1.9e-8 (before evaluation rounding)
//   2^f on [-0.5, 0.5], degree 4: max relative error 3.5e-6 (used where the result is rounded to bf16)
//   e^r on [-ln2/2, ln2/2], degree 6: max relative error 6.7e-8 with f32 evaluation
constexpr float kExp2C6[7] = {1.f, 0.693147182f, 0.240226507f, 0.0555032715f, 0.00961805694f, 0.0013400428f,
                              0.000154614449f};
constexpr float kExp2C4[5] = {1.f, 0.693121016f, 0.240223497f, 0.0559219755f, 0.00966636837f};
constexpr float kExpC6[7] = {1.f, 1.f, 0.5f, 0.166664153f, 0.0416663513f, 0.00837512594f, 0.00139411085f};
constexpr float kLog2e = 1.44269504f;
constexpr float kLn2Hi = 0.693147182f;
constexpr float kLn2Lo = -1.90465421e-09f;
// exp arguments are clamped to keep 2^n a normal float (no denormals reach the FMAs); the largest error this
// causes is exp(x) = 2^-126 instead of a smaller value for x < -87.3, which every caller tolerates.
constexpr float kExp2Min = -126.f;
constexpr float kExp2Max = 127.f;

struct V8 {
  using R = __m256;
  static constexpr int N = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static __m256i tail_mask(int n) {  // lanes [0, n) set, 0 <= n <= 8
    alignas(32) static const int32_t tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tbl + 8 - n));
  }
  static R load_n(const float* p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
  static void store_n(float* p, R v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
  static R keep_n(R v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(tail_mask(n))); }  // zero lanes >= n
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }    // a*b + c
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a*b
  static R fmsub(R a, R b, R c) { return _mm256_fmsub_ps(a, b, c); }    // a*b - c
  // NaN-safe in the sense used by exp: max(NaN, c) = c (the second operand is returned for unordered inputs).
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(R v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static R round(R x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n in [-126, 127].
  static R ldexp(R p, R n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
};

#if defined(__AVX512F__)
struct V16 {
  using R = __m512;
  static constexpr int N = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static __mmask16 tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static R load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
  static void store_n(float* p, R v, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static R keep_n(R v, int n) { return _mm512_maskz_mov_ps(tail_mask(n), v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static R fmsub(R a, R b, R c) { return _mm512_fmsub_ps(a, b, c); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static float hsum(R v) { return _mm512_reduce_add_ps(v); }
  static float hmax(R v) { return _mm512_reduce_max_ps(v); }
  static R round(R x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R ldexp(R p, R n) { return _mm512_scalef_ps(p, n); }
};
#endif

// 2^x, relative error ~1e-7 (degree 6), NaN-free for every input (NaN and -inf give 2^-126).
template <class V>
inline typename V::R exp2v(typename V::R x) {
  x = V::min(V::max(x, V::set1(kExp2Min)), V::set1(kExp2Max));
  const typename V::R n = V::round(x);
  const typename V::R f = V::sub(x, n);
  typename V::R p = V::set1(kExp2C6[6]);
  p = V::fmadd(p, f, V::set1(kExp2C6[5]));
  p = V::fmadd(p, f, V::set1(kExp2C6[4]));
  p = V::fmadd(p, f, V::set1(kExp2C6[3]));
  p = V::fmadd(p, f, V::set1(kExp2C6[2]));
  p = V::fmadd(p, f, V::set1(kExp2C6[1]));
  p = V::fmadd(p, f, V::set1(kExp2C6[0]));
  return V::ldexp(p, n);
}

// 2^x with relative error ~4e-6: enough when the result is rounded to bf16 (relative error 2^-8) right after.
template <class V>
inline typename V::R exp2v_lowp(typename V::R x) {
  x = V::min(V::max(x, V::set1(kExp2Min)), V::set1(kExp2Max));
  const typename V::R n = V::round(x);
  const typename V::R f = V::sub(x, n);
  typename V::R p = V::set1(kExp2C4[4]);
  p = V::fmadd(p, f, V::set1(kExp2C4[3]));
  p = V::fmadd(p, f, V::set1(kExp2C4[2]));
  p = V::fmadd(p, f, V::set1(kExp2C4[1]));
  p = V::fmadd(p, f, V::set1(kExp2C4[0]));
  return V::ldexp(p, n);
}

// e^x with relative error ~1e-7 over the whole range (Cody-Waite reduction by ln2, degree-6 polynomial).
template <class V>
inline typename V::R expv(typename V::R x) {
  const typename V::R t = V::min(V::max(V::mul(x, V::set1(kLog2e)), V::set1(kExp2Min)), V::set1(kExp2Max));
  const typename V::R n = V::round(t);
  // r = x - n ln2 in two steps; x is clamped to the same range as t so that r stays within [-ln2/2, ln2/2].
  const typename V::R xs = V::min(V::max(x, V::set1(kExp2Min / kLog2e)), V::set1(kExp2Max / kLog2e));
  typename V::R r = V::fnmadd(n, V::set1(kLn2Hi), xs);
  r = V::fnmadd(n, V::set1(kLn2Lo), r);
  typename V::R p = V::set1(kExpC6[6]);
  p = V::fmadd(p, r, V::set1(kExpC6[5]));
  p = V::fmadd(p, r, V::set1(kExpC6[4]));
  p = V::fmadd(p, r, V::set1(kExpC6[3]));
  p = V::fmadd(p, r, V::set1(kExpC6[2]));
  p = V::fmadd(p, r, V::set1(kExpC6[1]));
  p = V::fmadd(p, r, V::set1(kExpC6[0]));
  return V::ldexp(p, n);
}

}  // namespace
}  // namespace ev::cpu
