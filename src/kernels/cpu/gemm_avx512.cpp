// AVX-512 kernels of the GEMM layer (compiled with -mavx512f/bw/vl/dq/bf16/vnni; see gemm.h).
//
// The decode GEMV reads the weights in the blocked layout oneDNN's brgemm uses, so one packed copy serves both:
//   bf16 BA16a64b2a: block nb (64 output columns) is one contiguous run of Kp/2 "pair rows"; pair row p holds
//        64 columns x (k = 2p, 2p+1), i.e. 4 zmm of 16 columns, each 32-bit lane = (W[n][2p], W[n][2p+1]).
//        vdpbf16ps against the broadcast pair (x[2p], x[2p+1]) adds both products into the f32 lane of column n.
//   f32  BA16a64b: block nb is Kp rows of 64 columns (4 zmm); vfmadd231ps against the broadcast x[k].
// A thread's range of blocks is contiguous in memory, so each thread streams one sequential region: the
// hardware prefetchers handle that without software prefetch (measured: adding prefetcht0 256-1024 B ahead made
// no difference on Zen 4).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/gemm.h"

namespace ev::gemm_detail {

namespace {

// Stores 64 accumulated columns of one output row (+ bias), masking columns >= N.
inline void store_row(const __m512 acc[4], float* yrow, const float* bias, int64_t n0, int64_t N) {
  for (int j = 0; j < 4; ++j) {
    const int64_t c = n0 + 16 * j;
    if (c >= N) break;
    const int64_t rem = N - c;
    const __mmask16 m = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
    __m512 v = acc[j];
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + c));
    _mm512_mask_storeu_ps(yrow + c, m, v);
  }
}

// M rows, U pair rows per iteration (independent accumulator sets, summed at the end): M*4*U accumulators hide
// the 6-cycle latency of vdpbf16ps when the weights come from L1/L2.
template <int M, int U>
void gemv_bf16_impl(const uint16_t* w, int64_t Kp, const uint16_t* xb, const float* bias, float* y, int64_t ldy,
                    int64_t N, int64_t nb0, int64_t nb1) {
  const int64_t pairs = Kp / 2;
  const auto* x32 = reinterpret_cast<const int32_t*>(xb);  // pair p of row m at x32[m * pairs + p]
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const uint16_t* blk = w + nb * Kp * 64;
    __m512 acc[U][M][4];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) acc[u][m][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p += U) {
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u) {
        const uint16_t* wp = blk + (p + u) * 128;
        __m512bh wv[4];
        for (int j = 0; j < 4; ++j) {
          const __m512i t = _mm512_loadu_si512(wp + 32 * j);
          std::memcpy(&wv[j], &t, sizeof t);
        }
        for (int m = 0; m < M; ++m) {
          const __m512i xi = _mm512_set1_epi32(x32[m * pairs + p + u]);
          __m512bh xv;
          std::memcpy(&xv, &xi, sizeof xi);
          for (int j = 0; j < 4; ++j) acc[u][m][j] = _mm512_dpbf16_ps(acc[u][m][j], wv[j], xv);
        }
      }
    }
    for (int m = 0; m < M; ++m) {
      __m512 r[4];
      for (int j = 0; j < 4; ++j) {
        r[j] = acc[0][m][j];
        for (int u = 1; u < U; ++u) r[j] = _mm512_add_ps(r[j], acc[u][m][j]);
      }
      store_row(r, y + m * ldy, bias, nb * 64, N);
    }
  }
}

template <int M, int U>
void gemv_f32_impl(const float* w, int64_t Kp, const float* x, const float* bias, float* y, int64_t ldy, int64_t N,
                   int64_t nb0, int64_t nb1) {
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const float* blk = w + nb * Kp * 64;
    __m512 acc[U][M][4];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) acc[u][m][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < Kp; k += U) {
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u) {
        const float* wk = blk + (k + u) * 64;
        __m512 wv[4];
        for (int j = 0; j < 4; ++j) wv[j] = _mm512_loadu_ps(wk + 16 * j);
        for (int m = 0; m < M; ++m) {
          const __m512 xv = _mm512_set1_ps(x[m * Kp + k + u]);
          for (int j = 0; j < 4; ++j) acc[u][m][j] = _mm512_fmadd_ps(wv[j], xv, acc[u][m][j]);
        }
      }
    }
    for (int m = 0; m < M; ++m) {
      __m512 r[4];
      for (int j = 0; j < 4; ++j) {
        r[j] = acc[0][m][j];
        for (int u = 1; u < U; ++u) r[j] = _mm512_add_ps(r[j], acc[u][m][j]);
      }
      store_row(r, y + m * ldy, bias, nb * 64, N);
    }
  }
}

}  // namespace

void gemv_bf16_avx512(const uint16_t* w, int64_t Kp, const uint16_t* xb, int64_t M, const float* bias, float* y,
                      int64_t ldy, int64_t N, int64_t nb0, int64_t nb1) {
  switch (M) {
    case 1: gemv_bf16_impl<1, 2>(w, Kp, xb, bias, y, ldy, N, nb0, nb1); break;
    case 2: gemv_bf16_impl<2, 2>(w, Kp, xb, bias, y, ldy, N, nb0, nb1); break;
    case 3: gemv_bf16_impl<3, 1>(w, Kp, xb, bias, y, ldy, N, nb0, nb1); break;
    case 4: gemv_bf16_impl<4, 1>(w, Kp, xb, bias, y, ldy, N, nb0, nb1); break;
    default: {
      // Larger M in groups of 4 (the caller normally routes M > 4 to oneDNN).
      int64_t m = 0;
      for (; m + 4 <= M; m += 4)
        gemv_bf16_impl<4, 1>(w, Kp, xb + m * Kp, bias, y + m * ldy, ldy, N, nb0, nb1);
      if (m < M) gemv_bf16_avx512(w, Kp, xb + m * Kp, M - m, bias, y + m * ldy, ldy, N, nb0, nb1);
    }
  }
}

void gemv_f32_avx512(const float* w, int64_t Kp, const float* x, int64_t M, const float* bias, float* y,
                     int64_t ldy, int64_t N, int64_t nb0, int64_t nb1) {
  switch (M) {
    case 1: gemv_f32_impl<1, 2>(w, Kp, x, bias, y, ldy, N, nb0, nb1); break;
    case 2: gemv_f32_impl<2, 2>(w, Kp, x, bias, y, ldy, N, nb0, nb1); break;
    case 3: gemv_f32_impl<3, 1>(w, Kp, x, bias, y, ldy, N, nb0, nb1); break;
    case 4: gemv_f32_impl<4, 1>(w, Kp, x, bias, y, ldy, N, nb0, nb1); break;
    default: {
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) gemv_f32_impl<4, 1>(w, Kp, x + m * Kp, bias, y + m * ldy, ldy, N, nb0, nb1);
      if (m < M) gemv_f32_avx512(w, Kp, x + m * Kp, M - m, bias, y + m * ldy, ldy, N, nb0, nb1);
    }
  }
}

void f32_to_bf16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    __m512i t;
    std::memcpy(&t, &b, sizeof t);
    _mm512_storeu_si512(dst + i, t);
  }
  for (; i < n; i += 16) {
    const int64_t rem = n - i;
    const __mmask16 m = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    __m256i t;
    std::memcpy(&t, &b, sizeof t);
    _mm256_mask_storeu_epi16(dst + i, m, t);
  }
}

}  // namespace ev::gemm_detail
