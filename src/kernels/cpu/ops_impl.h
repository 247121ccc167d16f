// Kernel bodies of ops.h, written once over the SIMD wrappers of ops_simd.h and instantiated per ISA by
// ops.cpp (V8) and ops_avx512.cpp (V16). Internal linkage on purpose (see ops_simd.h).
#pragma once

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_simd.h"

namespace ev::cpu {
namespace {  // NOLINT(google-build-namespaces)

template <class V>
void add_k(const float* a, const float* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) V::store(y + i, V::add(V::load(a + i), V::load(b + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::store_n(y + i, V::add(V::load_n(a + i, r), V::load_n(b + i, r)), r);
  }
}

template <class V>
void mul_k(const float* a, const float* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) V::store(y + i, V::mul(V::load(a + i), V::load(b + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::store_n(y + i, V::mul(V::load_n(a + i, r), V::load_n(b + i, r)), r);
  }
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// The sigmoid form has no cancellation in 1 + tanh(u) for negative x and saturates cleanly: e^(-2u) is clamped
// to 2^127 for very negative x, giving x / 2^127 ~ -0 like the exact result.
template <class V>
inline typename V::R gelu_v(typename V::R x) {
  const typename V::R x2 = V::mul(x, x);
  // -2u = x * (-2 sqrt(2/pi)) * (1 + 0.044715 x^2)
  const typename V::R inner = V::fmadd(x2, V::set1(0.044715f), V::set1(1.f));
  const typename V::R m2u = V::mul(V::mul(x, V::set1(-1.5957691216057308f)), inner);
  const typename V::R e = expv<V>(m2u);
  return V::div(x, V::add(V::set1(1.f), e));
}

template <class V>
inline typename V::R silu_v(typename V::R x) {
  const typename V::R e = expv<V>(V::sub(V::zero(), x));
  return V::div(x, V::add(V::set1(1.f), e));
}

template <class V>
void gelu_k(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) V::store(y + i, gelu_v<V>(V::load(x + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::store_n(y + i, gelu_v<V>(V::load_n(x + i, r)), r);
  }
}

template <class V>
void silu_k(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) V::store(y + i, silu_v<V>(V::load(x + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::store_n(y + i, silu_v<V>(V::load_n(x + i, r)), r);
  }
}

template <class V>
void swiglu_k(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) V::store(y + i, V::mul(silu_v<V>(V::load(g + i)), V::load(u + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::store_n(y + i, V::mul(silu_v<V>(V::load_n(g + i, r)), V::load_n(u + i, r)), r);
  }
}

// Sum of x[0..C) with 4 vector accumulators (f32; per-lane partial sums keep the error ~C/(4N) additions deep).
template <class V>
inline float row_sum(const float* x, int64_t C) {
  typename V::R a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  int64_t i = 0;
  for (; i + 4 * V::N <= C; i += 4 * V::N) {
    a0 = V::add(a0, V::load(x + i));
    a1 = V::add(a1, V::load(x + i + V::N));
    a2 = V::add(a2, V::load(x + i + 2 * V::N));
    a3 = V::add(a3, V::load(x + i + 3 * V::N));
  }
  for (; i + V::N <= C; i += V::N) a0 = V::add(a0, V::load(x + i));
  if (i < C) a1 = V::add(a1, V::load_n(x + i, static_cast<int>(C - i)));
  return V::hsum(V::add(V::add(a0, a1), V::add(a2, a3)));
}

// Sum of (x - m)^2 over x[0..C).
template <class V>
inline float row_sq_dev(const float* x, int64_t C, float m) {
  const typename V::R mv = V::set1(m);
  typename V::R a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  int64_t i = 0;
  for (; i + 4 * V::N <= C; i += 4 * V::N) {
    typename V::R d0 = V::sub(V::load(x + i), mv), d1 = V::sub(V::load(x + i + V::N), mv);
    typename V::R d2 = V::sub(V::load(x + i + 2 * V::N), mv), d3 = V::sub(V::load(x + i + 3 * V::N), mv);
    a0 = V::fmadd(d0, d0, a0);
    a1 = V::fmadd(d1, d1, a1);
    a2 = V::fmadd(d2, d2, a2);
    a3 = V::fmadd(d3, d3, a3);
  }
  for (; i + V::N <= C; i += V::N) {
    typename V::R d = V::sub(V::load(x + i), mv);
    a0 = V::fmadd(d, d, a0);
  }
  float tail = 0.f;  // a masked vector would see (0 - m)^2 in its dead lanes
  for (; i < C; ++i) tail += (x[i] - m) * (x[i] - m);
  return V::hsum(V::add(V::add(a0, a1), V::add(a2, a3))) + tail;
}

template <class V>
void layer_norm_k(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    const float mean = row_sum<V>(xr, C) / static_cast<float>(C);
    const float var = row_sq_dev<V>(xr, C, mean) / static_cast<float>(C);  // biased, as torch
    const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + static_cast<double>(eps)));
    // y = (x - mean) * inv * w + b. Not x * inv - mean * inv: with a near-constant row inv is ~1/sqrt(eps) and the
    // two large products cancel catastrophically.
    const typename V::R iv = V::set1(inv), mv = V::set1(mean);
    int64_t i = 0;
    for (; i + V::N <= C; i += V::N)
      V::store(yr + i, V::fmadd(V::mul(V::sub(V::load(xr + i), mv), iv), V::load(w + i), V::load(b + i)));
    if (i < C) {
      const int n = static_cast<int>(C - i);
      V::store_n(yr + i, V::fmadd(V::mul(V::sub(V::load_n(xr + i, n), mv), iv), V::load_n(w + i, n), V::load_n(b + i, n)),
                 n);
    }
  }
}

template <class V>
void rms_norm_k(const float* x, int64_t rows, int64_t C, const float* w, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    typename V::R a0 = V::zero(), a1 = V::zero();
    int64_t i = 0;
    for (; i + 2 * V::N <= C; i += 2 * V::N) {
      const typename V::R v0 = V::load(xr + i), v1 = V::load(xr + i + V::N);
      a0 = V::fmadd(v0, v0, a0);
      a1 = V::fmadd(v1, v1, a1);
    }
    for (; i + V::N <= C; i += V::N) {
      const typename V::R v0 = V::load(xr + i);
      a0 = V::fmadd(v0, v0, a0);
    }
    if (i < C) {
      const typename V::R v1 = V::load_n(xr + i, static_cast<int>(C - i));
      a1 = V::fmadd(v1, v1, a1);
    }
    const float ms = V::hsum(V::add(a0, a1)) / static_cast<float>(C);
    const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ms) + static_cast<double>(eps)));
    // LlamaRMSNorm: w * (x * inv)
    const typename V::R iv = V::set1(inv);
    i = 0;
    for (; i + V::N <= C; i += V::N) V::store(yr + i, V::mul(V::load(w + i), V::mul(V::load(xr + i), iv)));
    if (i < C) {
      const int n = static_cast<int>(C - i);
      V::store_n(yr + i, V::mul(V::load_n(w + i, n), V::mul(V::load_n(xr + i, n), iv)), n);
    }
  }
}

template <class V>
void rope_token_k(const float* x, float* y, int H, int D, const float* cs, const float* sn) {
  const int half = D / 2;
  for (int h = 0; h < H; ++h) {
    const float* xh = x + static_cast<int64_t>(h) * D;
    float* yh = y + static_cast<int64_t>(h) * D;
    int i = 0;
    for (; i + V::N <= half; i += V::N) {
      const typename V::R x1 = V::load(xh + i), x2 = V::load(xh + half + i);
      const typename V::R c = V::load(cs + i), s = V::load(sn + i);
      V::store(yh + i, V::fmsub(x1, c, V::mul(x2, s)));
      V::store(yh + half + i, V::fmadd(x2, c, V::mul(x1, s)));
    }
    if (i < half) {
      const int n = half - i;
      const typename V::R x1 = V::load_n(xh + i, n), x2 = V::load_n(xh + half + i, n);
      const typename V::R c = V::load_n(cs + i, n), s = V::load_n(sn + i, n);
      V::store_n(yh + i, V::fmsub(x1, c, V::mul(x2, s)), n);
      V::store_n(yh + half + i, V::fmadd(x2, c, V::mul(x1, s)), n);
    }
  }
}

// For each of `rows` rows of s (row stride lds, n scores): p = softmax(row) in place, col[j] += p[j].
template <class V>
void softmax_colsum_k(float* s, int64_t rows, int64_t n, int64_t lds, float* col) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * lds;
    typename V::R mx = V::set1(-3.0e38f);
    int64_t j = 0;
    for (; j + V::N <= n; j += V::N) mx = V::max(V::load(row + j), mx);
    float m = V::hmax(mx);
    for (; j < n; ++j) m = std::max(m, row[j]);
    const typename V::R vm = V::set1(m);
    typename V::R acc = V::zero();
    j = 0;
    for (; j + V::N <= n; j += V::N) {
      const typename V::R e = expv<V>(V::sub(V::load(row + j), vm));
      V::store(row + j, e);
      acc = V::add(acc, e);
    }
    if (j < n) {
      const int t = static_cast<int>(n - j);
      const typename V::R e = V::keep_n(expv<V>(V::sub(V::load_n(row + j, t), vm)), t);
      V::store_n(row + j, e, t);
      acc = V::add(acc, e);
    }
    const typename V::R inv = V::set1(1.f / V::hsum(acc));
    j = 0;
    for (; j + V::N <= n; j += V::N) V::store(col + j, V::fmadd(V::load(row + j), inv, V::load(col + j)));
    if (j < n) {
      const int t = static_cast<int>(n - j);
      V::store_n(col + j, V::fmadd(V::load_n(row + j, t), inv, V::load_n(col + j, t)), t);
    }
  }
}

template <class V>
OpsKernels make_ops_kernels(const char* isa) {
  OpsKernels k;
  k.isa = isa;
  k.add = &add_k<V>;
  k.mul = &mul_k<V>;
  k.gelu_tanh = &gelu_k<V>;
  k.silu = &silu_k<V>;
  k.swiglu = &swiglu_k<V>;
  k.layer_norm = &layer_norm_k<V>;
  k.rms_norm = &rms_norm_k<V>;
  k.rope_token = &rope_token_k<V>;
  k.softmax_colsum = &softmax_colsum_k<V>;
  return k;
}

}  // namespace
}  // namespace ev::cpu
