// AVX-512 VNNI kernels of the INT8 Linear (compiled with the EDGEVLM_AVX512_FLAGS, which include -mavx512vnni;
// see gemm.h "INT8" for the layout and ref_quant.h for the exact rules reproduced here).
//
// vpdpbusd multiplies UNSIGNED bytes (its first source) by SIGNED bytes (its second source, the one that can be
// an embedded or explicit broadcast). We broadcast the activations, so they stay signed (s8, per-token scales)
// and the weights are stored offset to unsigned: wu = qw + 128 in [0, 255]. Then
//   sum_k wu[n, k] * qx[m, k] = sum_k qw[n, k] * qx[m, k] + 128 * sum_k qx[m, k]
// and the per-ROW compensation cx[m] = 128 * sum_k qx[m, k] is computed by the activation quantiser for free.
// Exact in int32: |sum| <= 255 * 127 * K < 2^31 for K <= 66311 (pack_linear limits K to 65536); vpdpbusd does
// not saturate (vpdpbusds would).
//
// Register tile: 6 rows x 64 columns = 24 zmm accumulators + 4 weight zmm + 1 broadcast: per 4-k step 4 weight
// loads and 6 broadcast loads feed 24 vpdpbusd, so the load ports never limit.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu/gemm.h"

// GCC 12's false positive on the _mm512_undefined_ps() inside _mm512_cvtepi32_ps.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ev::gemm_detail {

namespace {

// acc += dot4(w (u8), x (s8)) per i32 lane. Through inline asm because GCC 12 allocates registers badly around
// the _mm512_dpbusd_epi32 builtin: on the 6 x 64 tile it spilled 16 of the 24 accumulators to the stack every
// step, and copied the weight registers (measured in the generated code); the asm constraint keeps all 24 in zmm.
inline __m512i dpbusd(__m512i acc, __m512i w, __m512i x) {
#if defined(__GNUC__)
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, w, x);
#endif
}

inline __mmask16 tail_mask(int64_t rem) {
  return rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
}

// MR rows (1..6) of qx (row stride ldq bytes, ldq multiple of 4) against one 64-column block, U independent
// accumulator sets over consecutive 4-k groups (U = 2 only for MR <= 2, to hide vpdpbusd's latency when the
// weights come from cache), then the fused epilogue:
//   y[m, n] = fma(float(acc - cx[m]), sx[m] * sw[n], bias[n] or 0)
template <int MR, int U>
inline void tile_s8u8(const uint8_t* blk, int64_t groups, const int8_t* qx, int64_t ldq, const float* sx,
                      const int32_t* cx, const float* sw, const float* bias, float* y, int64_t ldy, int64_t n0,
                      int64_t N) {
  __m512i acc[U][MR][4];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[u][m][j] = _mm512_setzero_si512();
  int64_t p = 0;
  for (; p + U <= groups; p += U) {
#pragma GCC unroll 2
    for (int u = 0; u < U; ++u) {
      const uint8_t* wp = blk + (p + u) * 256;
      __m512i wv[4];
      for (int j = 0; j < 4; ++j) wv[j] = _mm512_loadu_si512(wp + 64 * j);
      for (int m = 0; m < MR; ++m) {
        int32_t xi;
        std::memcpy(&xi, qx + m * ldq + 4 * (p + u), 4);
        const __m512i xv = _mm512_set1_epi32(xi);
        for (int j = 0; j < 4; ++j) acc[u][m][j] = dpbusd(acc[u][m][j], wv[j], xv);
      }
    }
  }
  for (; p < groups; ++p) {  // odd group count with U = 2
    const uint8_t* wp = blk + p * 256;
    __m512i wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = _mm512_loadu_si512(wp + 64 * j);
    for (int m = 0; m < MR; ++m) {
      int32_t xi;
      std::memcpy(&xi, qx + m * ldq + 4 * p, 4);
      const __m512i xv = _mm512_set1_epi32(xi);
      for (int j = 0; j < 4; ++j) acc[0][m][j] = dpbusd(acc[0][m][j], wv[j], xv);
    }
  }
  for (int m = 0; m < MR; ++m) {
    const __m512i cv = _mm512_set1_epi32(cx[m]);
    const __m512 sxv = _mm512_set1_ps(sx[m]);
    float* yrow = y + m * ldy;
    for (int j = 0; j < 4; ++j) {
      const int64_t c = n0 + 16 * j;
      if (c >= N) break;
      const __mmask16 mk = tail_mask(N - c);
      __m512i a = acc[0][m][j];
      for (int u = 1; u < U; ++u) a = _mm512_add_epi32(a, acc[u][m][j]);
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, cv));  // RNE, as static_cast<float>(int32)
      const __m512 s = _mm512_mul_ps(sxv, _mm512_loadu_ps(sw + c));   // sw, bias are padded to 64 columns
      const __m512 b = bias ? _mm512_loadu_ps(bias + c) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(yrow + c, mk, _mm512_fmadd_ps(f, s, b));
    }
  }
}

template <int MR>
inline void tile_dispatch_u(const uint8_t* blk, int64_t groups, const int8_t* qx, int64_t ldq, const float* sx,
                            const int32_t* cx, const float* sw, const float* bias, float* y, int64_t ldy,
                            int64_t n0, int64_t N) {
  if constexpr (MR <= 2) {
    tile_s8u8<MR, 2>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N);
  } else {
    tile_s8u8<MR, 1>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N);
  }
}

void tile_any(int rows, const uint8_t* blk, int64_t groups, const int8_t* qx, int64_t ldq, const float* sx,
              const int32_t* cx, const float* sw, const float* bias, float* y, int64_t ldy, int64_t n0, int64_t N) {
  switch (rows) {
    case 1: tile_dispatch_u<1>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N); break;
    case 2: tile_dispatch_u<2>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N); break;
    case 3: tile_dispatch_u<3>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N); break;
    case 4: tile_dispatch_u<4>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N); break;
    case 5: tile_dispatch_u<5>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N); break;
    default: tile_dispatch_u<6>(blk, groups, qx, ldq, sx, cx, sw, bias, y, ldy, n0, N); break;
  }
}

}  // namespace

void gemm_s8u8_avx512(const uint8_t* w, int64_t Kp, const int8_t* qx, int64_t ldq, const float* sx,
                      const int32_t* cx, int64_t M, const float* sw, const float* bias, float* y, int64_t ldy,
                      int64_t N, int64_t nb0, int64_t nb1) {
  const int64_t groups = Kp / 4;
  if (M <= kInt8TileRows) {
    // Decode / a single row tile: stream the blocks once.
    for (int64_t nb = nb0; nb < nb1; ++nb)
      tile_any(static_cast<int>(M), w + nb * Kp * 64, groups, qx, ldq, sx, cx, sw, bias, y, ldy, nb * 64, N);
    return;
  }
  // Each 64-column block (64 * Kp bytes: 48 KiB at K = 768, 192 KiB at K = 3072) stays in L1/L2 while every row
  // tile of the caller's row chunk passes over it; the caller keeps the chunk's activations L2-sized.
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const uint8_t* blk = w + nb * Kp * 64;
    for (int64_t m = 0; m < M; m += kInt8TileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kInt8TileRows, M - m));
      tile_any(rows, blk, groups, qx + m * ldq, ldq, sx + m, cx + m, sw, bias, y + m * ldy, ldy, nb * 64, N);
    }
  }
}

void quantize_rows_s8_avx512(const float* x, int64_t ldx, int64_t K, const float* rsmooth, int64_t rows,
                             int8_t* q, int64_t ldq, float* sx, int32_t* cx) {
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  const __m512 fmax = _mm512_set1_ps(FLT_MAX);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    int8_t* qr = q + r * ldq;
    // Pass 1: t = x * rsmooth, amax, finiteness (|t| <= FLT_MAX is false for NaN and Inf).
    __m512 amax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mk = tail_mask(K - k);
      __m512 t = _mm512_maskz_loadu_ps(mk, xr + k);
      if (rsmooth) t = _mm512_mul_ps(t, _mm512_maskz_loadu_ps(mk, rsmooth + k));
      const __m512 a = _mm512_and_ps(t, absmask);
      bad |= _mm512_mask_cmp_ps_mask(mk, a, fmax, _CMP_NLE_UQ);
      amax = _mm512_max_ps(amax, a);
    }
    const float am = _mm512_reduce_max_ps(amax);
    const float scale = am / 127.0f;
    if (bad || !(scale >= FLT_MIN)) {
      std::memset(qr, 0, static_cast<size_t>(ldq));
      sx[r] = bad ? std::numeric_limits<float>::quiet_NaN() : 0.f;
      cx[r] = 0;
      continue;
    }
    const __m512 inv = _mm512_set1_ps(1.0f / scale);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mk = tail_mask(K - k);
      __m512 t = _mm512_maskz_loadu_ps(mk, xr + k);
      if (rsmooth) t = _mm512_mul_ps(t, _mm512_maskz_loadu_ps(mk, rsmooth + k));
      // cvtps rounds with MXCSR (nearest even), like std::nearbyint; masked-off lanes are 0.
      __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(t, inv));
      v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
      sum = _mm512_add_epi32(sum, v);
      _mm_mask_storeu_epi8(qr + k, mk, _mm512_cvtepi32_epi8(v));
    }
    if (ldq > K) std::memset(qr + K, 0, static_cast<size_t>(ldq - K));
    sx[r] = scale;
    cx[r] = 128 * _mm512_reduce_add_epi32(sum);
  }
}

}  // namespace ev::gemm_detail
