#include "kernels/cpu/ceilings.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/clock.h"
#include "core/tensor.h"
#include "kernels/cpu/cpu_features.h"

namespace ev {

namespace ceilings_detail {

// AVX2 fallbacks (this file is compiled for x86-64-v3). 12 accumulators + 2 operands fit the 16 ymm registers.
double f32_fma_avx2(int64_t iters) {
  constexpr int kAcc = 12;
  __m256 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return static_cast<double>(iters) * kAcc * 8 * 2;
}

// u8*s8 dot products without VNNI: vpmaddubsw (pairs -> i16), vpmaddwd by ones (-> i32), vpaddd. 3 instructions
// per 32 multiply-adds, the sequence oneDNN's AVX2 int8 kernels use.
double int8_dot_avx2(int64_t iters) {
  constexpr int kAcc = 8;
  __m256i acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_epi32(i);
  __m256i a = _mm256_set1_epi8(3);
  const __m256i b = _mm256_set1_epi8(-2);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 8
    for (int i = 0; i < kAcc; ++i) {
      // Hide a from the optimiser, otherwise it computes the loop-invariant products once and hoists them.
      __asm__ volatile("" : "+x"(a));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
    }
  }
  __m256i s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_epi32(s, acc[i]);
  volatile int sink = _mm256_extract_epi32(s, 0);
  (void)sink;
  return static_cast<double>(iters) * kAcc * 8 * 8;
}

double read_avx2(const void* buf, size_t bytes, uint64_t* sink) {
  const auto* p = static_cast<const __m256i*>(buf);
  const size_t n = bytes / 32;
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(p + i + 0));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(p + i + 1));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(p + i + 2));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(p + i + 3));
  }
  for (; i < n; ++i) a0 = _mm256_add_epi64(a0, _mm256_load_si256(p + i));
  a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  *sink += static_cast<uint64_t>(_mm256_extract_epi64(a0, 0));
  return static_cast<double>(n) * 32;
}

}  // namespace ceilings_detail

namespace {

using KernelFn = double (*)(int64_t);

void run_all(ThreadPool* pool, const std::function<void(int, int)>& fn) {
  if (pool && pool->size() > 1) {
    pool->run_on_all(fn);
  } else {
    fn(0, 1);
  }
}

// Best rate (ops per second, all threads) of a compute kernel over `reps` repetitions of about `rep_s` each.
double best_compute_rate(ThreadPool* pool, KernelFn kernel, double budget_s) {
  // Calibrate on one thread: grow the iteration count until one call takes >= 2 ms.
  int64_t iters = 1024;
  double t = 0;
  for (;;) {
    const double t0 = now_s();
    kernel(iters);
    t = now_s() - t0;
    if (t >= 2e-3 || iters > (int64_t{1} << 40)) break;
    iters *= 4;
  }
  constexpr int kReps = 5;
  const double rep_s = std::max(2e-3, budget_s / kReps);
  const int64_t rep_iters = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iters) * rep_s / t));
  double best = 0;
  for (int r = 0; r < kReps; ++r) {
    std::atomic<int64_t> ops_milli{0};
    const double t0 = now_s();
    run_all(pool, [&](int, int) {
      const double ops = kernel(rep_iters);
      ops_milli.fetch_add(static_cast<int64_t>(ops / 1000.0));
    });
    const double dt = now_s() - t0;
    best = std::max(best, static_cast<double>(ops_milli.load()) * 1000.0 / dt);
  }
  return best;
}

double best_read_bandwidth(ThreadPool* pool, bool avx512, double budget_s) {
  // 256 MiB: 8x the 32 MiB L3 of the development machine, so almost every byte comes from DRAM.
  constexpr size_t kBytes = size_t{256} << 20;
  std::unique_ptr<void, void (*)(void*)> buf(aligned_alloc_bytes(kBytes), aligned_free);
  if (!buf) return 0;
  // Fault the pages in (and give them distinct contents) before timing.
  auto* words = static_cast<uint64_t*>(buf.get());
  const int nt = pool ? pool->size() : 1;
  run_all(pool, [&](int t, int n) {
    const size_t w0 = kBytes / 8 * static_cast<size_t>(t) / static_cast<size_t>(n);
    const size_t w1 = kBytes / 8 * static_cast<size_t>(t + 1) / static_cast<size_t>(n);
    for (size_t i = w0; i < w1; ++i) words[i] = i;
  });
  (void)nt;
  // One pass is ~8 ms at 30 GB/s.
  const int reps = std::clamp(static_cast<int>(budget_s / 0.01), 3, 20);
  double best = 0;
  std::atomic<uint64_t> sink{0};
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    run_all(pool, [&](int t, int n) {
      // Chunk boundaries on 4 KiB so that every thread streams whole pages.
      const size_t pages = kBytes / 4096;
      const size_t p0 = pages * static_cast<size_t>(t) / static_cast<size_t>(n);
      const size_t p1 = pages * static_cast<size_t>(t + 1) / static_cast<size_t>(n);
      uint64_t s = 0;
      const char* base = static_cast<const char*>(buf.get()) + p0 * 4096;
      if (avx512) {
        ceilings_detail::read_avx512(base, (p1 - p0) * 4096, &s);
      } else {
        ceilings_detail::read_avx2(base, (p1 - p0) * 4096, &s);
      }
      sink.fetch_add(s);
    });
    const double dt = now_s() - t0;
    best = std::max(best, static_cast<double>(kBytes) / dt);
  }
  return best;
}

}  // namespace

MachineCeilings measure_ceilings(ThreadPool* pool, double seconds_budget) {
  const double budget = std::clamp(seconds_budget, 0.05, 30.0);
  const CpuFeatures& f = cpu_features();
  MachineCeilings c;
  c.threads = pool ? pool->size() : 1;
  c.cpu = cpu_features_string();
  const bool avx512 = f.has_avx512_core();
  c.isa = avx512 ? "avx512" : "avx2";
  // Budget split: 20% per compute kernel, 40% memory.
  if (avx512) {
    c.f32_gflops = best_compute_rate(pool, ceilings_detail::f32_fma_avx512, 0.2 * budget) * 1e-9;
  } else {
    c.f32_gflops = best_compute_rate(pool, ceilings_detail::f32_fma_avx2, 0.2 * budget) * 1e-9;
  }
  if (f.has_avx512_bf16()) {
    c.bf16_gflops = best_compute_rate(pool, ceilings_detail::bf16_dot_avx512, 0.2 * budget) * 1e-9;
  } else {
    c.bf16_gflops = c.f32_gflops;  // no bf16 arithmetic: bf16 GEMMs run as f32 FMAs
  }
  if (f.has_avx512_vnni()) {
    c.int8_gops = best_compute_rate(pool, ceilings_detail::int8_dot_avx512, 0.2 * budget) * 1e-9;
  } else {
    c.int8_gops = best_compute_rate(pool, ceilings_detail::int8_dot_avx2, 0.2 * budget) * 1e-9;
  }
  c.mem_read_gbs = best_read_bandwidth(pool, avx512, 0.4 * budget) * 1e-9;
  return c;
}

nlohmann::json to_json(const MachineCeilings& c) {
  return nlohmann::json{{"f32_gflops", c.f32_gflops}, {"bf16_gflops", c.bf16_gflops},
                        {"int8_gops", c.int8_gops},   {"mem_read_gbs", c.mem_read_gbs},
                        {"threads", c.threads},       {"cpu", c.cpu},
                        {"isa", c.isa}};
}

std::string to_string(const MachineCeilings& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s, int8 %.1f GOP/s, mem %.1f GB/s (%d threads, %s; ",
                c.f32_gflops, c.bf16_gflops, c.int8_gops, c.mem_read_gbs, c.threads, c.isa.c_str());
  return std::string(buf) + c.cpu + ")";
}

const GemmPrecisionProbe& gemm_precision_probe() {
  static const GemmPrecisionProbe probe = [] {
    GemmPrecisionProbe p;
    if (!cpu_features().has_avx512_bf16()) return p;
    constexpr int64_t kIters = 20000;  // 16 zmm ops each: ~1.5 ms per kernel call at 2-3 GHz
    for (int rep = 0; rep < 3; ++rep) {
      double t0 = now_s();
      double f = ceilings_detail::f32_fma_avx512(kIters);
      p.f32_gflops = std::max(p.f32_gflops, f / (now_s() - t0) * 1e-9);
      t0 = now_s();
      f = ceilings_detail::bf16_dot_avx512(kIters);
      p.bf16_gflops = std::max(p.bf16_gflops, f / (now_s() - t0) * 1e-9);
    }
    p.bf16_faster = p.bf16_gflops > 1.1 * p.f32_gflops;
    return p;
  }();
  return probe;
}

}  // namespace ev
