#include "kernels/ref/ref_quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

namespace ev::ref {

float quantize_row_i8(const float* t, int64_t K, int8_t* q) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {
    if (!std::isfinite(t[k])) finite = false;
    amax = std::max(amax, std::fabs(t[k]));
  }
  const float scale = finite ? amax / 127.0f : 0.f;
  if (!finite || !(scale >= FLT_MIN)) {
    for (int64_t k = 0; k < K; ++k) q[k] = 0;
    return finite ? 0.f : std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = 1.0f / scale;
  for (int64_t k = 0; k < K; ++k) {
    const float r = std::nearbyint(t[k] * inv);  // |r| <= 128: the conversion below is always defined
    q[k] = static_cast<int8_t>(std::clamp(static_cast<int>(r), -127, 127));
  }
  return scale;
}

void quantize_rows_i8(const float* w, int64_t N, int64_t K, int8_t* q, float* scale) {
  quantize_rows_i8(w, N, K, nullptr, q, scale);
}

void quantize_rows_i8(const float* w, int64_t N, int64_t K, const float* smooth, int8_t* q, float* scale) {
  std::vector<float> t(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * K;
    for (int64_t k = 0; k < K; ++k) t[static_cast<size_t>(k)] = smooth ? row[k] * smooth[k] : row[k];
    scale[n] = quantize_row_i8(t.data(), K, q + n * K);
  }
}

void quantize_activations_i8(const float* x, int64_t M, int64_t K, const float* smooth, int8_t* q, float* scale) {
  std::vector<float> t(static_cast<size_t>(K));
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    for (int64_t k = 0; k < K; ++k) t[static_cast<size_t>(k)] = smooth ? row[k] * (1.0f / smooth[k]) : row[k];
    scale[m] = quantize_row_i8(t.data(), K, q + m * K);
  }
}

void linear_i8(const int8_t* qx, const float* sx, int64_t M, int64_t K, const int8_t* qw, const float* sw,
               int64_t N, const float* bias, float* y) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += static_cast<int32_t>(qx[m * K + k]) * static_cast<int32_t>(qw[n * K + k]);
      y[m * N + n] = std::fma(static_cast<float>(acc), sx[m] * sw[n], bias ? bias[n] : 0.0f);
    }
}

void linear_i8_dynamic(const float* x, int64_t M, int64_t K, const float* smooth, const int8_t* qw,
                       const float* sw, int64_t N, const float* bias, float* y) {
  std::vector<int8_t> qx(static_cast<size_t>(M * K));
  std::vector<float> sx(static_cast<size_t>(M));
  quantize_activations_i8(x, M, K, smooth, qx.data(), sx.data());
  linear_i8(qx.data(), sx.data(), M, K, qw, sw, N, bias, y);
}

}  // namespace ev::ref
