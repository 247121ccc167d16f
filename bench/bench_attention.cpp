// Attention kernel benchmark: cpu::attention() on the SmolVLM / student shapes, every kernel that can run a shape
// side by side in ONE run, repetitions interleaved (old, new, old, new, ...) so that a noisy neighbour slows all
// variants alike. Reports the median time, GFLOP/s and the fraction of this machine's measured F32 (and, for the
// bf16 kernel, BF16) peak from measure_ceilings(). Plain main, no Google Benchmark: the interleaving is the point.
//
//   build-<you>/bench_attention [--repeats 15] [--threads 2] [--filter SUBSTR] [--json]
//
// Shapes (B = 1; FLOP = 4 * D * Hq * sum over queries of the keys it sees: q k^T and p v, 2 FLOP per MAC):
//   siglip-1024  T = S = 1024, 12 heads of 64, non-causal   (SmolVLM-256M vision tower, 512 px tile: 32 x 32)
//   siglip-729   T = S = 729, 12 heads of 64, non-causal    (SmolVLM-500M, 27 x 27 patches)
//   student-196  T = S = 196, 3 heads of 64, non-causal     (the road student's ViT, 14 x 14 patches)
//   decode-256, decode-2048  T = 1, S keys, 9 query heads / 3 kv heads of 64, causal (SmolVLM-256M text decode:
//                memory-bound, so GB/s of K and V read is reported as well)
//   prefill-256  T = S = 256, 9 / 3 heads, causal          (text prefill)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ceilings.h"
#include "kernels/ref/ref_ops.h"

namespace ev {
namespace {

struct Shape {
  const char* name;
  int64_t T, S;
  int Hq, Hkv, D;
  bool causal;
};

struct Variant {
  cpu::AttnKernel kern;
  Precision precision;
};

double flops_of(const Shape& s) {
  double keys = 0;
  for (int64_t t = 0; t < s.T; ++t) keys += s.causal ? static_cast<double>(std::min(s.S, s.S - s.T + t + 1)) : s.S;
  return 4.0 * s.D * s.Hq * keys;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

int run(int argc, char** argv) {
  int repeats = 15, threads = 2;
  bool json = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repeats" && i + 1 < argc) repeats = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--filter" && i + 1 < argc) filter = argv[++i];
    else if (a == "--json") json = true;
    else {
      std::fprintf(stderr, "usage: %s [--repeats N] [--threads N] [--filter SUBSTR] [--json]\n", argv[0]);
      return 2;
    }
  }
  ThreadPool pool(threads);
  const MachineCeilings ceil = measure_ceilings(&pool, 1.0);
  if (!json) std::printf("ceilings: %s\n", to_string(ceil).c_str());

  const Shape shapes[] = {
      {"siglip-1024", 1024, 1024, 12, 12, 64, false}, {"siglip-729", 729, 729, 12, 12, 64, false},
      {"student-196", 196, 196, 3, 3, 64, false},     {"prefill-256", 256, 256, 9, 3, 64, true},
      {"decode-256", 1, 256, 9, 3, 64, true},         {"decode-2048", 1, 2048, 9, 3, 64, true},
  };
  const Variant variants[] = {
      {cpu::AttnKernel::kTiledF32, Precision::kF32},   {cpu::AttnKernel::kTiledF32V1, Precision::kF32},
      {cpu::AttnKernel::kTiledBF16, Precision::kBF16}, {cpu::AttnKernel::kDirectF32, Precision::kF32},
      {cpu::AttnKernel::kGenericTiled, Precision::kF32},
  };

  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  if (json) std::printf("{\"ceilings\": %s, \"results\": [\n", to_json(ceil).dump().c_str());
  bool first_json = true;
  for (const Shape& s : shapes) {
    if (!filter.empty() && std::string(s.name).find(filter) == std::string::npos) continue;
    ref::AttentionDims a;
    a.B = 1, a.T = s.T, a.S = s.S, a.Hq = s.Hq, a.Hkv = s.Hkv, a.D = s.D;
    a.scale = 1.f / std::sqrt(static_cast<float>(s.D)), a.causal = s.causal, a.q_offset = s.S - s.T;
    std::vector<float> q(static_cast<size_t>(s.T * s.Hq * s.D)), k(static_cast<size_t>(s.S * s.Hkv * s.D)),
        v(k.size()), out(q.size());
    for (auto* buf : {&q, &k, &v})
      for (float& x : *buf) x = nd(rng);
    const bool decode = s.T * (s.Hq / s.Hkv) < 8;
    std::vector<Variant> vs;
    for (const Variant& var : variants) {
      if (!cpu::attention_kernel_usable(var.kern, a)) continue;
      // Only the kernels that would plausibly serve the shape: tiled ones for prefill-like shapes, direct for decode
      // (plus the tiled f32 one there, to show why decode does not use it).
      if (decode && var.kern != cpu::AttnKernel::kDirectF32 && var.kern != cpu::AttnKernel::kTiledF32) continue;
      if (!decode && var.kern == cpu::AttnKernel::kDirectF32) continue;
      vs.push_back(var);
    }
    const double fl = flops_of(s);
    const double kv_bytes = 2.0 * s.S * s.Hkv * s.D * 4;
    // Calls per timed sample: enough for ~5 ms, so decode (tens of us) is not timer noise.
    std::vector<int> calls(vs.size(), 1);
    for (size_t i = 0; i < vs.size(); ++i) {
      (void)cpu::attention(a, q.data(), k.data(), v.data(), out.data(), vs[i].precision, &pool, vs[i].kern);
      const double t0 = now_s();
      (void)cpu::attention(a, q.data(), k.data(), v.data(), out.data(), vs[i].precision, &pool, vs[i].kern);
      const double dt = std::max(now_s() - t0, 1e-7);
      calls[i] = std::clamp(static_cast<int>(5e-3 / dt), 1, 10000);
    }
    std::vector<std::vector<double>> times(vs.size());
    for (int r = 0; r < repeats; ++r) {
      for (size_t i0 = 0; i0 < vs.size(); ++i0) {
        const size_t i = (i0 + static_cast<size_t>(r)) % vs.size();  // rotate the order too
        const double t0 = now_s();
        for (int c = 0; c < calls[i]; ++c)
          (void)cpu::attention(a, q.data(), k.data(), v.data(), out.data(), vs[i].precision, &pool, vs[i].kern);
        times[i].push_back((now_s() - t0) / calls[i]);
      }
    }
    for (size_t i = 0; i < vs.size(); ++i) {
      const double t = median(times[i]);
      const double lo = *std::min_element(times[i].begin(), times[i].end());
      const double gf = fl / t * 1e-9;
      const bool bf16 = vs[i].kern == cpu::AttnKernel::kTiledBF16;
      const double frac = gf / ceil.f32_gflops;
      const double frac_own = bf16 ? gf / ceil.bf16_gflops : frac;
      if (json) {
        std::printf("%s{\"shape\": \"%s\", \"kernel\": \"%s\", \"median_us\": %.2f, \"min_us\": %.2f, "
                    "\"gflops\": %.2f, \"frac_f32_peak\": %.4f, \"frac_own_peak\": %.4f, \"kv_gbs\": %.2f}",
                    first_json ? "" : ",\n", s.name, cpu::attn_kernel_name(vs[i].kern), t * 1e6, lo * 1e6, gf, frac,
                    frac_own, kv_bytes / t * 1e-9);
        first_json = false;
      } else {
        std::printf("%-12s %-20s median %9.1f us (min %9.1f)  %6.1f GFLOP/s  %5.1f%% of F32 peak", s.name,
                    cpu::attn_kernel_name(vs[i].kern), t * 1e6, lo * 1e6, gf, 100 * frac);
        if (bf16) std::printf("  %5.1f%% of BF16 peak", 100 * frac_own);
        if (decode) std::printf("  K+V %5.1f GB/s (%4.1f%% of mem read)", kv_bytes / t * 1e-9,
                                100 * kv_bytes / t * 1e-9 / ceil.mem_read_gbs);
        std::printf("\n");
      }
    }
  }
  if (json) std::printf("\n]}\n");
  return 0;
}

}  // namespace
}  // namespace ev

int main(int argc, char** argv) { return ev::run(argc, argv); }
