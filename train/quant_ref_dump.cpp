// Dumps src/kernels/ref/ref_quant.cpp's results on fixed random data for `python3 train/quant.py selftest --ref-dump DIR`
// (the PyTorch twin must match them bit for bit). Build and run, from the repository root:
//   g++ -std=c++20 -O2 -Isrc train/quant_ref_dump.cpp src/kernels/ref/ref_quant.cpp -o /tmp/qd && (mkdir -p /tmp/qref && cd /tmp/qref && /tmp/qd)
#include "kernels/ref/ref_quant.h"
#include <cstdio>
#include <cstdint>
#include <random>
#include <vector>
#include <cmath>
template <class T> void dump(const char* n, const std::vector<T>& v) { FILE* f = fopen(n, "wb"); fwrite(v.data(), sizeof(T), v.size(), f); fclose(f); }
int main() {
  const int M = 300, K = 768, N = 256;
  std::mt19937 g(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.3f, 3.f);
  std::vector<float> x(M * K), w(N * K), sm(K), b(N);
  for (int m = 0; m < M; ++m) { float sc = std::pow(10.f, (m % 13) - 6.f); for (int k = 0; k < K; ++k) x[m * K + k] = nd(g) * sc * (k % 17 == 0 ? 20.f : 1.f); }
  for (int k = 0; k < K; ++k) x[5 * K + k] = 0.f;  // a zero row
  for (int k = 0; k < K; ++k) x[6 * K + k] = (k % 3) - 1.f;  // exact integers: ties in t * inv
  for (int k = 0; k < K; ++k) x[7 * K + k] = (k % 5) * 0.5f - 1.f;
  for (auto& v : w) v = nd(g) * 0.05f;
  for (int k = 0; k < K; ++k) w[3 * K + k] = 0.f;
  for (auto& v : sm) v = ud(g);
  for (int n = 0; n < N; ++n) b[n] = nd(g) * (n % 7 == 0 ? 1e-6f : 0.1f);
  dump("x.f32", x); dump("w.f32", w); dump("smooth.f32", sm); dump("bias.f32", b);
  for (int t = 0; t < 2; ++t) {
    const float* s = t ? sm.data() : nullptr;
    const char* tag = t ? "smooth" : "plain";
    std::vector<int8_t> qw(N * K), qx(M * K); std::vector<float> sw(N), sx(M), y(M * N);
    ev::ref::quantize_rows_i8(w.data(), N, K, s, qw.data(), sw.data());
    ev::ref::quantize_activations_i8(x.data(), M, K, s, qx.data(), sx.data());
    ev::ref::linear_i8_dynamic(x.data(), M, K, s, qw.data(), sw.data(), N, b.data(), y.data());
    char buf[64];
    snprintf(buf, 64, "qw_%s.i8", tag); dump(buf, qw); snprintf(buf, 64, "sw_%s.f32", tag); dump(buf, sw);
    snprintf(buf, 64, "qx_%s.i8", tag); dump(buf, qx); snprintf(buf, 64, "sx_%s.f32", tag); dump(buf, sx);
    snprintf(buf, 64, "y_%s.f32", tag); dump(buf, y);
  }
  FILE* f = fopen("meta.json", "w"); fprintf(f, "{\"M\": %d, \"K\": %d, \"N\": %d}\n", M, K, N); fclose(f);
}
