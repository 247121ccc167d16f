// Threaded drivers of the op kernels (AVX2 instantiation here; AVX-512 in ops_avx512.cpp).
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops_impl.h"

namespace ev::cpu {

const OpsKernels& ops_kernels_avx2() {
  static const OpsKernels k = make_ops_kernels<V8>("avx2");
  return k;
}

const OpsKernels& ops_kernels() {
  static const OpsKernels* k = cpu_features().has_avx512_core() ? &ops_kernels_avx512() : &ops_kernels_avx2();
  return *k;
}

namespace {

// Elements per chunk below which a loop stays on one thread: waking a worker costs a few microseconds, about
// what 16K elements of an elementwise op take.
constexpr int64_t kGrain = 16384;

void run(ThreadPool* pool, int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (pool == nullptr || pool->size() <= 1 || n <= grain) {
    fn(0, 0, n);
    return;
  }
  pool->parallel_for(n, fn, grain);
}

using BinFn = void (*)(const float*, const float*, float*, int64_t);

// y[i] = op(a[i], b[i % nb]) over [0, na): walk each chunk in segments that do not cross a multiple of nb.
void cyclic(ThreadPool* pool, BinFn op, const float* a, int64_t na, const float* b, int64_t nb, float* y) {
  // A tiny b (a scalar, a short vector) would make the segments tiny: repeat it into a longer pattern first.
  std::vector<float> tiled;
  if (nb < 256 && na > nb) {
    const int64_t reps = (256 + nb - 1) / nb;
    tiled.resize(static_cast<size_t>(nb * reps));
    for (int64_t r = 0; r < reps; ++r) std::memcpy(tiled.data() + r * nb, b, static_cast<size_t>(nb) * 4);
    b = tiled.data();
    nb *= reps;  // b'[j] = b[j % nb_old] and (i % nb') % nb_old = i % nb_old
  }
  run(pool, na, kGrain, [&](int, int64_t i0, int64_t i1) {
    int64_t i = i0;
    while (i < i1) {
      const int64_t j = i % nb;
      const int64_t len = std::min(i1 - i, nb - j);
      op(a + i, b + j, y + i, len);
      i += len;
    }
  });
}

}  // namespace

void add(ThreadPool* pool, const float* a, int64_t na, const float* b, int64_t nb, float* y) {
  if (na == 0) return;
  cyclic(pool, ops_kernels().add, a, na, b, nb, y);
}

void mul(ThreadPool* pool, const float* a, int64_t na, const float* b, int64_t nb, float* y) {
  if (na == 0) return;
  cyclic(pool, ops_kernels().mul, a, na, b, nb, y);
}

void layer_norm(ThreadPool* pool, const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps,
                float* y) {
  const auto fn = ops_kernels().layer_norm;
  run(pool, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int, int64_t r0, int64_t r1) {
    fn(x + r0 * C, r1 - r0, C, w, b, eps, y + r0 * C);
  });
}

void rms_norm(ThreadPool* pool, const float* x, int64_t rows, int64_t C, const float* w, float eps, float* y) {
  const auto fn = ops_kernels().rms_norm;
  run(pool, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int, int64_t r0, int64_t r1) {
    fn(x + r0 * C, r1 - r0, C, w, eps, y + r0 * C);
  });
}

void gelu_tanh(ThreadPool* pool, const float* x, int64_t n, float* y) {
  const auto fn = ops_kernels().gelu_tanh;
  // gelu costs ~4x an add per element: smaller chunks already pay for a thread.
  run(pool, n, kGrain / 4, [&](int, int64_t i0, int64_t i1) { fn(x + i0, y + i0, i1 - i0); });
}

void silu(ThreadPool* pool, const float* x, int64_t n, float* y) {
  const auto fn = ops_kernels().silu;
  run(pool, n, kGrain / 4, [&](int, int64_t i0, int64_t i1) { fn(x + i0, y + i0, i1 - i0); });
}

void swiglu(ThreadPool* pool, const float* gate, const float* up, int64_t n, float* y) {
  const auto fn = ops_kernels().swiglu;
  run(pool, n, kGrain / 4, [&](int, int64_t i0, int64_t i1) { fn(gate + i0, up + i0, y + i0, i1 - i0); });
}

void swiglu_fused(ThreadPool* pool, const float* x, int64_t rows, int64_t C, float* y) {
  const auto fn = ops_kernels().swiglu;
  run(pool, rows, std::max<int64_t>(1, kGrain / 4 / std::max<int64_t>(C, 1)), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(x + r * 2 * C, x + r * 2 * C + C, y + r * C, C);
  });
}

void copy_cols(ThreadPool* pool, const float* x, int64_t rows, int64_t C, int64_t c0, int64_t c1, float* y) {
  const int64_t w = c1 - c0;
  run(pool, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(w, 1)), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(y + r * w, x + r * C + c0, static_cast<size_t>(w) * sizeof(float));
  });
}

void rope(ThreadPool* pool, const float* x, int64_t B, int64_t T, int H, int D, const float* cos_tab,
          const float* sin_tab, float* y) {
  const auto fn = ops_kernels().rope_token;
  const int64_t row = static_cast<int64_t>(H) * D, half = D / 2;
  run(pool, B * T, std::max<int64_t>(1, kGrain / std::max<int64_t>(row, 1)), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T;
      fn(x + r * row, y + r * row, H, D, cos_tab + t * half, sin_tab + t * half);
    }
  });
}

void patchify(ThreadPool* pool, const float* px, int64_t B, int64_t C, int64_t H, int64_t W, int P, float* y) {
  const int64_t gh = H / P, gw = W / P, E = C * P * P;
  // One unit = one row of patches of one image: reads C*P full pixel rows, writes gw patches.
  run(pool, B * gh, 1, [&](int, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / gh, py = u % gh;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t r = 0; r < P; ++r) {
          const float* src = px + ((b * C + c) * H + py * P + r) * W;
          float* dst = y + (b * gh * gw + py * gw) * E + (c * P + r) * P;
          for (int64_t pxi = 0; pxi < gw; ++pxi)
            std::memcpy(dst + pxi * E, src + pxi * P, static_cast<size_t>(P) * sizeof(float));
        }
    }
  });
}

void patchify_u8_hwc(ThreadPool* pool, const uint8_t* px, int64_t B, int64_t H, int64_t W, int64_t C, int P, float* y) {
  const int64_t gh = H / P, gw = W / P, E = C * P * P;
  // One unit = one row of patches of one frame: reads P pixel rows (interleaved channels), writes gw patches.
  run(pool, B * gh, 1, [&](int, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / gh, py = u % gh;
      for (int64_t r = 0; r < P; ++r) {
        const uint8_t* src = px + ((b * H + py * P + r) * W) * C;
        float* dst = y + (b * gh * gw + py * gw) * E + r * P;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t pxi = x / P, col = x % P;
          for (int64_t c = 0; c < C; ++c) dst[pxi * E + c * P * P + col] = static_cast<float>(src[x * C + c]);
        }
      }
    }
  });
}

void pixel_shuffle(ThreadPool* pool, const float* x, int64_t B, int64_t S, int64_t E, int s, float* y) {
  int64_t h = 0;
  while (h * h < S) ++h;
  const int64_t g = h / s, S2 = S / (static_cast<int64_t>(s) * s), E2 = E * s * s;
  // One unit = one output token: s*s contiguous input rows of E floats each.
  run(pool, B * S2, std::max<int64_t>(1, kGrain / std::max<int64_t>(E2, 1)), [&](int, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / S2, tok = u % S2, i = tok / g, j = tok % g;
      float* dst = y + u * E2;
      for (int64_t ri = 0; ri < s; ++ri)
        for (int64_t rj = 0; rj < s; ++rj)
          std::memcpy(dst + (ri * s + rj) * E, x + (b * S + (i * s + ri) * h + j * s + rj) * E,
                      static_cast<size_t>(E) * sizeof(float));
    }
  });
}

void get_rows(ThreadPool* pool, const void* table, int64_t C, int elem_size, bool is_bf16, const int32_t* ids,
              int64_t n, float* y) {
  run(pool, n, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const char* row = static_cast<const char*>(table) + static_cast<int64_t>(ids[t]) * C * elem_size;
      float* dst = y + t * C;
      if (elem_size == 4)
        std::memcpy(dst, row, static_cast<size_t>(C) * 4);
      else if (is_bf16)
        convert_bf16_to_f32(reinterpret_cast<const uint16_t*>(row), dst, static_cast<size_t>(C));
      else
        convert_f16_to_f32(reinterpret_cast<const uint16_t*>(row), dst, static_cast<size_t>(C));
    }
  });
}

void copy(ThreadPool* pool, const void* src, void* dst, size_t bytes) {
  if (bytes == 0 || src == dst) return;
  constexpr int64_t kBlock = 1 << 20;  // below 1 MiB one thread saturates what memcpy can gain
  const int64_t n = static_cast<int64_t>(bytes);
  run(pool, n, kBlock, [&](int, int64_t b0, int64_t b1) {
    std::memcpy(static_cast<char*>(dst) + b0, static_cast<const char*>(src) + b0, static_cast<size_t>(b1 - b0));
  });
}

}  // namespace ev::cpu
