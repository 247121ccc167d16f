// The exact reference semantics of the INT8 Linear (issue 6: mixed-precision INT8 quantisation): plain loops,
// the test oracle of the CPU int8 GEMM (src/kernels/cpu/gemm.h, Precision::kInt8), the path of the reference
// backend, and the quantiser of the quantisation tools. The optimised kernels reproduce these functions BIT FOR
// BIT (tests/unit/test_gemm_int8.cpp); the PyTorch fake-quant twin follows the same rules.
//
// THE RULES (all arithmetic in IEEE f32, round-to-nearest-even, no fused operations unless stated)
//
//   Quantising one row v[0..K) (a weight row, or an activation row = one token):
//     1. t[k] = v[k] * (1.0f / smooth[k])     if smooth is given (f32 reciprocal first, then an f32 product);
//        t[k] = v[k]                            otherwise.
//        (weights use the opposite direction, t[k] = w[n, k] * smooth[k]; see quantize_rows_i8)
//     2. If any t[k] is NaN or +-Inf (also when the product in 1. overflowed): the row is NON-FINITE:
//        scale = quiet NaN, q[k] = 0 for every k. Every output that uses the row is then NaN.
//     3. amax = max_k |t[k]|;  scale = amax / 127.0f  (f32 division).
//     4. If scale < FLT_MIN (2^-126; in particular amax == 0), the row is ZERO: scale = 0, q[k] = 0. This also
//        flushes rows whose largest magnitude is below 127 * 2^-126 ~ 1.5e-36, for which 1/scale would overflow.
//     5. Otherwise inv = 1.0f / scale (f32 division) and
//          q[k] = clamp(round_half_even(t[k] * inv), -127, 127)       (t[k] * inv is one f32 product)
//        round_half_even is std::nearbyint under the default rounding mode (torch.round: half to even). The
//        product is finite and |t[k] * inv| <= 127.00002, so no float -> int conversion is ever out of range.
//     PyTorch twin (f32 tensors):  t = v * (1.0 / smooth);  scale = t.abs().amax(-1, keepdim=True) / 127
//       inv = 1.0 / scale;  q = torch.clamp(torch.round(t * inv), -127, 127)   (+ steps 2 and 4)
//
//   Dequantised meaning: a weight q [N, K] with per-row scales sw [N] and smooth [K] stands for
//     W[n, k] = sw[n] * q[n, k] / smooth[k]; an activation row qx[m, :] with scale sx[m] stands for
//     x[m, k] ~ sx[m] * qx[m, k] * smooth[k]. Symmetric (no zero points); weights may hold -128 (accepted), the
//     quantisers never produce it.
//
//   The Linear:  acc[m, n] = sum_k int32(qx[m, k]) * int32(qw[n, k])     (exact int32: |acc| <= 128 * 128 * K,
//                                                                         no overflow for K <= 2^17)
//     y[m, n] = fmaf(float(acc[m, n]), sx[m] * sw[n], bias ? bias[n] : 0.0f)
//     float(acc) rounds to nearest even; sx[m] * sw[n] is one f32 product; the last multiply-add is FUSED
//     (std::fma), so that the SIMD kernels can reproduce it exactly whatever the compiler's contraction flags.
//     (A PyTorch twin computing acc.float() * (sx * sw) + bias unfused differs by at most ~1 ulp of |y| plus
//     1 ulp of |bias|.)
#pragma once

#include <cstdint>

namespace ev::ref {

// Quantises each row of w [N, K] (row-major f32) with the rules above: q [N, K] int8, scale [N] f32.
void quantize_rows_i8(const float* w, int64_t N, int64_t K, int8_t* q, float* scale);

// SmoothQuant variant: row n is quantised as t[k] = w[n, k] * smooth[k] (one f32 product; smooth [K], nullptr:
// none), then steps 2-5. The result stands for W[n, k] = scale[n] * q[n, k] / smooth[k].
void quantize_rows_i8(const float* w, int64_t N, int64_t K, const float* smooth, int8_t* q, float* scale);

// Dynamic per-token activation quantisation: x [M, K] f32 row-major, smooth [K] or nullptr, q [M, K] int8,
// scale [M] f32; step 1 divides by smooth as t[k] = x[m, k] * (1.0f / smooth[k]).
void quantize_activations_i8(const float* x, int64_t M, int64_t K, const float* smooth, int8_t* q, float* scale);

// One row of the rules above, for t already computed (steps 2-5): returns the scale and writes q [K].
float quantize_row_i8(const float* t, int64_t K, int8_t* q);

// y [M, N] = fmaf(float(sum_k qx[m, k] * qw[n, k]), sx[m] * sw[n], bias[n] or 0): qx [M, K], sx [M], qw [N, K],
// sw [N], bias [N] or nullptr; int32 accumulation (exact).
void linear_i8(const int8_t* qx, const float* sx, int64_t M, int64_t K, const int8_t* qw, const float* sw,
               int64_t N, const float* bias, float* y);

// The whole int8 Linear on f32 activations, as Precision::kInt8 computes it: quantize_activations_i8(x, smooth)
// then linear_i8 with the weights' qw, sw. x [M, K], y [M, N].
void linear_i8_dynamic(const float* x, int64_t M, int64_t K, const float* smooth, const int8_t* qw,
                       const float* sw, int64_t N, const float* bias, float* y);

}  // namespace ev::ref
