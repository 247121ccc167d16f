// GEMM benchmarks: the SmolVLM-256M shapes through linear_forward(), f32 and bf16, every variant side by side in
// one run, reported as GFLOP/s and GB/s and as a fraction of this machine's measured ceilings (measured once at
// start-up with measure_ceilings()).
//
//   build-<you>/bench_gemm --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   (filter e.g. --benchmark_filter='vit|Sequence')
//
// Counters: GFLOPs (2*M*N*K per second), GBs (packed weight bytes + activations per second), frac_peak (GFLOP/s
// over the f32 or bf16 ceiling of the precision the GEMM runs in), frac_bw (GB/s over the memory-read ceiling;
// meaningful for decode, where the weights come from DRAM).
//
// Variants:
//   pool-rows / pool-cols  oneDNN single-threaded per slice on our ThreadPool, M-split / N-split (kPoolSlices)
//   auto                   the library default (own GEMV for M <= 4, else rows or cols by M)
//   omp                    oneDNN's OpenMP team on the calling thread (kOneDnnOmp)
//   rtM-omp                a runtime-M oneDNN primitive (DNNL_RUNTIME_DIM_VAL) with plain weights, OpenMP team
//   gemv / onednn-cols / onednn-omp   decode (M=1..4): own AVX-512 GEMV vs oneDNN
//   hot / cold             decode with the same weights every call (L2/L3 resident) vs rotating through enough
//                          copies to exceed the L3 (what a 30-layer decode step sees)
//   Sequence/*             a ViT block (or a text decode step) of GEMMs interleaved with elementwise passes on the
//                          pool, per threading mode: the end-to-end comparison behind the default
//
// INT8 (names start with "i8/"; BENCHMARKS.md "INT8 GEMM kernels"), each shape's variants registered side by side:
//   i8/linear/<shape>/M=<M>/{f32,bf16,int8,int8-1t,onednn-s8,onednn-s8-gemm}
//     f32, bf16           our default f32 / bf16 paths (linear_forward)
//     int8                linear_forward on Precision::kInt8: per-token quantisation + own VNNI GEMM + epilogue
//     int8-1t             the same on the calling thread only (decides int8_min_parallel_macs)
//     onednn-s8           oneDNN's s8 x s8 brgemm matmul (weights reordered once, OpenMP team), with our quantiser
//                         before it and a pass after it for the per-token scales and the bias (oneDNN 2.6 output
//                         scales are per-N only): what the oneDNN route would cost
//     onednn-s8-gemm      the oneDNN matmul call alone (its best case)
//     counters: GOPs (2*M*N*K / s), frac_peak (over the ceiling of the precision: int8 -> int8_gops)
//   i8/decode/<shape>/M=<M>/{int8,bf16,f32}/{hot,cold}: the decode GEMVs; cold rotates through copies totalling
//     kColdBytes (2x the L3 this VM reports), counters GBs and frac_bw (over the measured memory-read ceiling)
//   i8/quantize/<M>x<K>: the activation quantiser alone (GB/s of f32 read)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ceilings.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm.h"
#include "kernels/ref/ref_quant.h"

namespace ev {
namespace {

MachineCeilings g_ceil;

// EDGEVLM_THREADS=n (read by this benchmark only) sets the pool size; default: all hardware threads.
ThreadPool& pool() {
  static ThreadPool p(std::getenv("EDGEVLM_THREADS") ? std::atoi(std::getenv("EDGEVLM_THREADS")) : 0);
  return p;
}

Tensor random_weight(int64_t N, int64_t K, uint32_t seed) {
  // bf16 source weights, as in the SmolVLM checkpoint.
  Tensor t = Tensor::empty(DType::kBF16, Shape{N, K});
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  auto* p = t.data_as<uint16_t>();
  for (int64_t i = 0; i < N * K; ++i) p[i] = f32_to_bf16(u(rng));
  return t;
}

std::vector<float> random_acts(int64_t n, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& x : v) x = u(rng);
  return v;
}

const char* pname(Precision p) { return precision_name(p); }

double peak_gflops(Precision p) {
  switch (p) {
    case Precision::kBF16: return g_ceil.bf16_gflops;
    case Precision::kInt8: return g_ceil.int8_gops;
    default: return g_ceil.f32_gflops;
  }
}

void set_counters(benchmark::State& st, double seconds, int64_t iters, double flops, double bytes, Precision p) {
  const double per = seconds / static_cast<double>(iters);
  st.counters[p == Precision::kInt8 ? "GOPs" : "GFLOPs"] = flops / per * 1e-9;
  st.counters["GBs"] = bytes / per * 1e-9;
  st.counters["frac_peak"] = flops / per * 1e-9 / peak_gflops(p);
  st.counters["frac_bw"] = bytes / per * 1e-9 / g_ceil.mem_read_gbs;
  st.counters["us"] = per * 1e6;
}

struct Variant {
  const char* name;
  GemmOptions opt;
};

GemmOptions opts(GemmThreading t, GemmSplit s, int gemv) {
  GemmOptions o;
  o.threading = t;
  o.split = s;
  o.gemv_max_m = gemv;
  return o;
}

// ---- linear_forward on one shape ----
void bm_linear(benchmark::State& st, int64_t M, int64_t N, int64_t K, bool bias, Precision prec, GemmOptions opt,
               int copies) {
  std::vector<std::shared_ptr<PackedLinear>> pls;
  Tensor b = Tensor::empty(DType::kF32, Shape{N});
  for (int c = 0; c < copies; ++c) {
    Tensor w = random_weight(N, K, 7 + static_cast<uint32_t>(c));
    auto r = pack_linear(w, bias ? &b : nullptr, prec);
    if (!r.ok()) {
      st.SkipWithError(r.status().to_string().c_str());
      return;
    }
    pls.push_back(r.value());
  }
  std::vector<float> x = random_acts(M * K, 1), y(static_cast<size_t>(M * N));
  set_gemm_options(opt);
  // Warm-up: creates and caches the primitives of this M.
  for (auto& pl : pls) (void)linear_forward(*pl, x.data(), M, y.data(), &pool());
  size_t i = 0;
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    Status s = linear_forward(*pls[i], x.data(), M, y.data(), &pool());
    if (!s.ok()) st.SkipWithError(s.to_string().c_str());
    i = (i + 1) % pls.size();
    ++iters;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_gemm_options(GemmOptions{});
  const double bytes = static_cast<double>(packed_bytes(*pls[0])) + 4.0 * static_cast<double>(M * (K + N));
  set_counters(st, sec, iters, 2.0 * M * N * K, bytes, packed_precision(*pls[0]));
  st.SetLabel(packed_describe(*pls[0]));
}

// ---- a raw runtime-M oneDNN primitive with plain (non-blocked) weights, OpenMP team of pool size ----
void bm_runtime_m(benchmark::State& st, int64_t M, int64_t N, int64_t K, Precision prec) {
  using namespace dnnl;
  using dt = memory::data_type;
  using tag = memory::format_tag;
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const dt t = prec == Precision::kBF16 ? dt::bf16 : dt::f32;
  constexpr memory::dim R = DNNL_RUNTIME_DIM_VAL;
  memory::desc src_rt({R, K}, t, tag::ab), w_md({K, N}, t, tag::ba), b_md({1, N}, dt::f32, tag::ab),
      dst_rt({R, N}, dt::f32, tag::ab);
  matmul::primitive_desc pd(matmul::desc(src_rt, w_md, b_md, dst_rt), eng);
  matmul prim(pd);
  memory src_m({{M, K}, t, tag::ab}, eng), w_m(w_md, eng), b_m(b_md, eng), dst_m({{M, N}, dt::f32, tag::ab}, eng);
  std::memset(src_m.get_data_handle(), 0, src_m.get_desc().get_size());
  std::memset(w_m.get_data_handle(), 0, w_md.get_size());
  std::memset(b_m.get_data_handle(), 0, b_md.get_size());
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_BIAS, b_m}, {DNNL_ARG_DST, dst_m}});
    s.wait();
    ++iters;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_counters(st, sec, iters, 2.0 * M * N * K, static_cast<double>(w_md.get_size()), prec);
  st.SetLabel(pd.impl_info_str());
}

// ---- the f32 -> bf16 activation conversion alone ----
void bm_convert(benchmark::State& st, int64_t n) {
  std::vector<float> x = random_acts(n, 3);
  std::vector<uint16_t> y(static_cast<size_t>(n));
  const bool avx = cpu_features().has_avx512_bf16();
  for (auto _ : st) {
    if (avx) {
      gemm_detail::f32_to_bf16_avx512(x.data(), y.data(), n);
    } else {
      convert_f32_to_bf16(x.data(), y.data(), static_cast<size_t>(n));
    }
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GBs"] = benchmark::Counter(6.0 * static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- end-to-end sequences: GEMMs interleaved with elementwise passes on the pool ----
void elementwise(float* p, int64_t n) {
  // A GELU-like pass (tanh via a rational form): arithmetic plus a read and a write of every element, the
  // shape of the other engineer's elementwise ops.
  pool().parallel_for(
      n,
      [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const float v = p[i];
          const float u = 0.7978845608f * (v + 0.044715f * v * v * v);
          const float t = u * (27.f + u * u) / (27.f + 9.f * u * u);
          p[i] = 0.5f * v * (1.f + std::fmax(-1.f, std::fmin(1.f, t)));
        }
      },
      1024);
}

// One SigLIP encoder block at M tokens, hidden 768, MLP 3072 (attention itself replaced by an elementwise pass).
void bm_vit_block(benchmark::State& st, Precision prec, GemmOptions opt, int64_t M) {
  const int64_t H = 768, F = 3072;
  Tensor b = Tensor::empty(DType::kF32, Shape{F});
  Tensor bh = Tensor::empty(DType::kF32, Shape{H});
  std::vector<std::shared_ptr<PackedLinear>> q(4);
  for (int i = 0; i < 4; ++i) q[static_cast<size_t>(i)] = pack_linear(random_weight(H, H, 10 + i), &bh, prec).value();
  auto fc1 = pack_linear(random_weight(F, H, 20), &b, prec).value();
  auto fc2 = pack_linear(random_weight(H, F, 21), &bh, prec).value();
  std::vector<float> x = random_acts(M * H, 2), t1(static_cast<size_t>(M * H)), t2(static_cast<size_t>(M * H)),
                     t3(static_cast<size_t>(M * H)), h(static_cast<size_t>(M * F));
  set_gemm_options(opt);
  auto block = [&] {
    elementwise(x.data(), M * H);  // layer norm 1
    (void)linear_forward(*q[0], x.data(), M, t1.data(), &pool());
    (void)linear_forward(*q[1], x.data(), M, t2.data(), &pool());
    (void)linear_forward(*q[2], x.data(), M, t3.data(), &pool());
    elementwise(t1.data(), M * H);  // attention stand-in
    (void)linear_forward(*q[3], t1.data(), M, t2.data(), &pool());
    elementwise(t2.data(), M * H);  // residual + layer norm 2
    (void)linear_forward(*fc1, t2.data(), M, h.data(), &pool());
    elementwise(h.data(), M * F);  // gelu
    (void)linear_forward(*fc2, h.data(), M, t3.data(), &pool());
    elementwise(t3.data(), M * H);  // residual
  };
  block();
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    block();
    ++iters;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_gemm_options(GemmOptions{});
  const double flops = 2.0 * M * H * H * 4 + 2.0 * 2 * M * H * F;
  set_counters(st, sec, iters, flops, 0, prec);
}

// One text decoder layer's decode step (M=1), hidden 576, 3 KV heads of 64, MLP 1536, weights of 30 layers
// rotated so that they come from DRAM as in a real decode.
void bm_decode_step(benchmark::State& st, Precision prec, GemmOptions opt) {
  const int64_t H = 576, KV = 192, F = 1536;
  constexpr int kLayers = 30;
  struct Layer {
    std::shared_ptr<PackedLinear> q, k, v, o, gate, up, down;
  };
  std::vector<Layer> layers;
  for (int l = 0; l < kLayers; ++l) {
    const uint32_t s = 100 + 10 * static_cast<uint32_t>(l);
    layers.push_back({pack_linear(random_weight(H, H, s), nullptr, prec).value(),
                      pack_linear(random_weight(KV, H, s + 1), nullptr, prec).value(),
                      pack_linear(random_weight(KV, H, s + 2), nullptr, prec).value(),
                      pack_linear(random_weight(H, H, s + 3), nullptr, prec).value(),
                      pack_linear(random_weight(F, H, s + 4), nullptr, prec).value(),
                      pack_linear(random_weight(F, H, s + 5), nullptr, prec).value(),
                      pack_linear(random_weight(H, F, s + 6), nullptr, prec).value()});
  }
  std::vector<float> x = random_acts(H, 2), q(H), k(KV), v(KV), a(H), g(F), u(F), d(H);
  set_gemm_options(opt);
  size_t li = 0;
  auto step = [&] {
    const Layer& L = layers[li];
    li = (li + 1) % layers.size();
    elementwise(x.data(), H);  // rms norm
    (void)linear_forward(*L.q, x.data(), 1, q.data(), &pool());
    (void)linear_forward(*L.k, x.data(), 1, k.data(), &pool());
    (void)linear_forward(*L.v, x.data(), 1, v.data(), &pool());
    elementwise(q.data(), H);  // rope + attention stand-in
    (void)linear_forward(*L.o, q.data(), 1, a.data(), &pool());
    elementwise(a.data(), H);  // residual + rms norm
    (void)linear_forward(*L.gate, a.data(), 1, g.data(), &pool());
    (void)linear_forward(*L.up, a.data(), 1, u.data(), &pool());
    elementwise(g.data(), F);  // swiglu
    (void)linear_forward(*L.down, g.data(), 1, d.data(), &pool());
    elementwise(d.data(), H);  // residual
  };
  for (int i = 0; i < kLayers; ++i) step();
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    step();
    ++iters;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_gemm_options(GemmOptions{});
  const Layer& L = layers[0];
  const double bytes = static_cast<double>(packed_bytes(*L.q) + packed_bytes(*L.k) + packed_bytes(*L.v) +
                                           packed_bytes(*L.o) + packed_bytes(*L.gate) + packed_bytes(*L.up) +
                                           packed_bytes(*L.down));
  const double flops = 2.0 * (H * H * 2 + KV * H * 2 + F * H * 3);
  set_counters(st, sec, iters, flops, bytes, prec);
}

struct Shape3 {
  const char* name;
  int64_t M, N, K;
  bool bias;
};

// ---- INT8 ----------------------------------------------------------------------------------------------------
constexpr double kColdBytes = 512.0 * (1 << 20);  // rotated decode weights: 2x the 260 MiB L3 this VM reports

// linear_forward of one shape, the weights packed `copies` times (the same values: only the addresses matter).
void bm_linear_copies(benchmark::State& st, int64_t M, int64_t N, int64_t K, bool bias, Precision prec,
                      GemmOptions opt, double target_bytes) {
  Tensor w = random_weight(N, K, 7);
  if (prec == Precision::kInt8) {
    // Quantise once; the copies then only re-pack the int8 values.
    Tensor wf = w.to(DType::kF32).value();
    Tensor wq = Tensor::empty(DType::kI8, Shape{N, K});
    auto qp = std::make_shared<QuantParams>();
    qp->scale = Tensor::empty(DType::kF32, Shape{N});
    ref::quantize_rows_i8(wf.data_as<float>(), N, K, wq.data_as<int8_t>(), qp->scale.data_as<float>());
    wq.set_quant(qp);
    w = wq;
  }
  Tensor b = Tensor::empty(DType::kF32, Shape{N});
  std::memset(b.data(), 0, b.nbytes());
  std::vector<std::shared_ptr<PackedLinear>> pls;
  auto r = pack_linear(w, bias ? &b : nullptr, prec);
  if (!r.ok()) {
    st.SkipWithError(r.status().to_string().c_str());
    return;
  }
  pls.push_back(r.value());
  const int copies =
      std::max(1, static_cast<int>(std::ceil(target_bytes / static_cast<double>(packed_bytes(*pls[0])))));
  for (int c = 1; c < copies; ++c) pls.push_back(pack_linear(w, bias ? &b : nullptr, prec).value());
  std::vector<float> x = random_acts(M * K, 1), y(static_cast<size_t>(M * N));
  set_gemm_options(opt);
  for (auto& pl : pls) (void)linear_forward(*pl, x.data(), M, y.data(), &pool());
  size_t i = 0;
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    Status s = linear_forward(*pls[i], x.data(), M, y.data(), &pool());
    if (!s.ok()) st.SkipWithError(s.to_string().c_str());
    i = (i + 1) % pls.size();
    ++iters;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_gemm_options(GemmOptions{});
  const double bytes = static_cast<double>(packed_bytes(*pls[0])) + 4.0 * static_cast<double>(M * (K + N));
  set_counters(st, sec, iters, 2.0 * M * N * K, bytes, packed_precision(*pls[0]));
  st.counters["copies"] = static_cast<double>(copies);
  st.SetLabel(packed_describe(*pls[0]));
}

// oneDNN 2.6 int8 matmul: s8 activations (our per-token quantiser) x s8 weights (format any, reordered once),
// output scales per N (the weight scales), f32 dst; then y = y * sx[m] + bias[n]. gemm_only: the matmul alone.
void bm_onednn_s8(benchmark::State& st, int64_t M, int64_t N, int64_t K, bool gemm_only) {
  using namespace dnnl;
  using dt = memory::data_type;
  using tag = memory::format_tag;
  if (!cpu_features().has_avx512_vnni()) {
    st.SkipWithError("no avx512_vnni");
    return;
  }
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  memory::desc src_md({M, K}, dt::s8, tag::ab), wany({K, N}, dt::s8, tag::any), dst_md({M, N}, dt::f32, tag::ab);
  std::vector<float> sw(static_cast<size_t>(N), 0.01f), bias(static_cast<size_t>(N), 0.5f);
  primitive_attr attr;
  attr.set_output_scales(2, sw);  // constant scales: runtime ones make oneDNN 2.6 drop brgemm for gemm:jit
  matmul::primitive_desc pd(matmul::desc(src_md, wany, dst_md), attr, eng);
  matmul prim(pd);
  // Weights: random s8 in plain [K, N] (format ba = W[N, K] row-major), reordered into oneDNN's layout.
  memory w_plain({{K, N}, dt::s8, tag::ba}, eng), w_m(pd.weights_desc(), eng);
  {
    std::mt19937 rng(3);
    auto* p = static_cast<int8_t*>(w_plain.get_data_handle());
    for (int64_t i = 0; i < N * K; ++i) p[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    reorder(w_plain, w_m).execute(s, w_plain, w_m);
    s.wait();
  }
  std::vector<float> x = random_acts(M * K, 1), sx(static_cast<size_t>(M));
  std::vector<int32_t> cx(static_cast<size_t>(M));
  memory src_m(src_md, eng), dst_m(dst_md, eng);
  auto* q = static_cast<int8_t*>(src_m.get_data_handle());
  auto* y = static_cast<float*>(dst_m.get_data_handle());
  auto run = [&] {
    if (!gemm_only)
      pool().parallel_for(M, [&](int, int64_t r0, int64_t r1) {
        gemm_detail::quantize_rows_s8_avx512(x.data() + r0 * K, K, K, nullptr, r1 - r0, q + r0 * K, K,
                                             sx.data() + r0, cx.data() + r0);
      });
    prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, dst_m}});
    s.wait();
    if (!gemm_only)
      pool().parallel_for(M, [&](int, int64_t r0, int64_t r1) {
        for (int64_t m = r0; m < r1; ++m)
          for (int64_t n = 0; n < N; ++n) y[m * N + n] = y[m * N + n] * sx[static_cast<size_t>(m)] + bias[static_cast<size_t>(n)];
      });
  };
  run();
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    run();
    ++iters;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_counters(st, sec, iters, 2.0 * M * N * K, static_cast<double>(pd.weights_desc().get_size()), Precision::kInt8);
  st.SetLabel(pd.impl_info_str());
}

void bm_quantize(benchmark::State& st, int64_t M, int64_t K) {
  if (!cpu_features().has_avx512_vnni()) {
    st.SkipWithError("no avx512_vnni");
    return;
  }
  std::vector<float> x = random_acts(M * K, 4), sx(static_cast<size_t>(M));
  std::vector<int8_t> q(static_cast<size_t>(M * K));
  std::vector<int32_t> cx(static_cast<size_t>(M));
  for (auto _ : st) {
    gemm_detail::quantize_rows_s8_avx512(x.data(), K, K, nullptr, M, q.data(), K, sx.data(), cx.data());
    benchmark::DoNotOptimize(q.data());
  }
  st.counters["GBs"] =
      benchmark::Counter(4.0 * static_cast<double>(M * K), benchmark::Counter::kIsIterationInvariantRate);
}

void register_int8() {
  const Shape3 prefill[] = {
      {"vit.qkvo", 1024, 768, 768, true},  {"vit.fc1", 1024, 3072, 768, true}, {"vit.fc2", 1024, 768, 3072, true},
      {"stu.qkvo", 196, 192, 192, true},   {"stu.fc1", 196, 768, 192, true},   {"stu.fc2", 196, 192, 768, true},
      {"stu.txt.qo", 100, 256, 256, false}, {"stu.txt.up", 100, 640, 256, false},
      {"stu.txt.down", 100, 256, 640, false}, {"stu.txt.kv", 100, 128, 256, false},
  };
  GemmOptions one_thread;
  one_thread.int8_min_parallel_macs = int64_t{1} << 62;
  for (const Shape3& s : prefill) {
    const std::string base = std::string("i8/linear/") + s.name + "/M=" + std::to_string(s.M) + "/";
    for (Precision p : {Precision::kF32, Precision::kBF16, Precision::kInt8})
      benchmark::RegisterBenchmark((base + pname(p)).c_str(), bm_linear, s.M, s.N, s.K, s.bias, p, GemmOptions{}, 1)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((base + "int8-1t").c_str(), bm_linear, s.M, s.N, s.K, s.bias, Precision::kInt8,
                                 one_thread, 1)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((base + "onednn-s8").c_str(), bm_onednn_s8, s.M, s.N, s.K, false)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((base + "onednn-s8-gemm").c_str(), bm_onednn_s8, s.M, s.N, s.K, true)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  const Shape3 decode[] = {
      {"txt.q_o", 1, 576, 576, false},   {"txt.kv", 1, 192, 576, false},      {"txt.gate_up", 1, 1536, 576, false},
      {"txt.down", 1, 576, 1536, false}, {"txt.lm_head", 1, 49280, 576, false}, {"txt.gate_up", 4, 1536, 576, false},
      {"txt.lm_head", 4, 49280, 576, false},
  };
  for (const Shape3& s : decode)
    for (bool cold : {true, false})
      for (Precision p : {Precision::kInt8, Precision::kBF16, Precision::kF32}) {
        const std::string name = std::string("i8/decode/") + s.name + "/M=" + std::to_string(s.M) + "/" + pname(p) +
                                 (cold ? "/cold" : "/hot");
        benchmark::RegisterBenchmark(name.c_str(), bm_linear_copies, s.M, s.N, s.K, s.bias, p, GemmOptions{},
                                     cold ? kColdBytes : 0.0)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      }
  for (int64_t M : {100, 1024})
    benchmark::RegisterBenchmark(("i8/quantize/" + std::to_string(M) + "x768").c_str(), bm_quantize, M, 768)
        ->UseRealTime();
}

void register_all() {
  const GemmOptions kAuto{};
  const Variant prefill_variants[] = {
      {"auto", kAuto},
      {"pool-rows", opts(GemmThreading::kPoolSlices, GemmSplit::kRows, 4)},
      {"pool-cols", opts(GemmThreading::kPoolSlices, GemmSplit::kCols, 4)},
      {"omp", opts(GemmThreading::kOneDnnOmp, GemmSplit::kAuto, 4)},
  };
  const Shape3 prefill[] = {
      {"vit.qkvo", 1024, 768, 768, true},     {"vit.fc1", 1024, 3072, 768, true},
      {"vit.fc2", 1024, 768, 3072, true},     {"vit.patch", 1024, 768, 768, true},
      {"txt.q_o", 300, 576, 576, true},       {"txt.kv", 300, 192, 576, false},
      {"txt.gate_up", 300, 1536, 576, false}, {"txt.down", 300, 576, 1536, false},
      {"txt.q_o", 100, 576, 576, false},      {"txt.gate_up", 100, 1536, 576, false},
      {"txt.down", 1000, 576, 1536, false},   {"txt.lm_head", 100, 49280, 576, false},
  };
  for (Precision p : {Precision::kBF16, Precision::kF32})
    for (const Shape3& s : prefill) {
      for (const Variant& v : prefill_variants) {
        const std::string name = std::string("linear/") + s.name + "/M=" + std::to_string(s.M) + "/" + pname(p) +
                                 "/" + v.name;
        benchmark::RegisterBenchmark(name.c_str(), bm_linear, s.M, s.N, s.K, s.bias, p, v.opt, 1)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
      if (s.M == 1024 || s.M == 300) {
        const std::string name =
            std::string("linear/") + s.name + "/M=" + std::to_string(s.M) + "/" + pname(p) + "/rtM-omp";
        benchmark::RegisterBenchmark(name.c_str(), bm_runtime_m, s.M, s.N, s.K, p)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }

  // Decode.
  const Variant decode_variants[] = {
      {"gemv", kAuto},
      {"onednn-cols", opts(GemmThreading::kPoolSlices, GemmSplit::kCols, 0)},
      {"onednn-omp", opts(GemmThreading::kOneDnnOmp, GemmSplit::kAuto, 0)},
  };
  const Shape3 decode[] = {
      {"txt.q_o", 1, 576, 576, false},       {"txt.kv", 1, 192, 576, false}, {"txt.gate_up", 1, 1536, 576, false},
      {"txt.down", 1, 576, 1536, false},     {"txt.lm_head", 1, 49280, 576, false},
      {"txt.gate_up", 4, 1536, 576, false},  {"txt.lm_head", 4, 49280, 576, false},
  };
  for (Precision p : {Precision::kBF16, Precision::kF32})
    for (const Shape3& s : decode)
      for (const Variant& v : decode_variants)
        for (bool cold : {false, true}) {
          // Copies so that the rotated set is >= 96 MiB (3x the L3); lm_head alone is already 56 MiB.
          const double bytes = static_cast<double>(s.N * s.K) * (p == Precision::kBF16 ? 2 : 4);
          const int copies = cold ? std::max(1, static_cast<int>(std::ceil(96.0 * (1 << 20) / bytes))) : 1;
          if (!cold && s.N == 49280) continue;  // never cache-resident: only the cold row
          const std::string name = std::string("decode/") + s.name + "/M=" + std::to_string(s.M) + "/" + pname(p) +
                                   "/" + v.name + (cold ? "/cold" : "/hot");
          benchmark::RegisterBenchmark(name.c_str(), bm_linear, s.M, s.N, s.K, s.bias, p, v.opt, copies)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }

  benchmark::RegisterBenchmark("convert_f32_to_bf16/1024x768", bm_convert, 1024 * 768)->UseRealTime();

  // End-to-end sequences per threading mode.
  const Variant seq_variants[] = {
      {"pool-slices", kAuto},
      {"omp", opts(GemmThreading::kOneDnnOmp, GemmSplit::kAuto, 4)},
  };
  for (Precision p : {Precision::kBF16, Precision::kF32})
    for (const Variant& v : seq_variants) {
      const std::string name = std::string("Sequence/vit_block/M=1024/") + pname(p) + "/" + v.name;
      benchmark::RegisterBenchmark(name.c_str(), bm_vit_block, p, v.opt, 1024)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  const Variant dec_seq[] = {
      {"gemv", kAuto},
      {"onednn-cols", opts(GemmThreading::kPoolSlices, GemmSplit::kCols, 0)},
      {"onednn-omp", opts(GemmThreading::kOneDnnOmp, GemmSplit::kAuto, 0)},
  };
  for (Precision p : {Precision::kBF16, Precision::kF32})
    for (const Variant& v : dec_seq) {
      const std::string name = std::string("Sequence/decode_layer/M=1/") + pname(p) + "/" + v.name;
      benchmark::RegisterBenchmark(name.c_str(), bm_decode_step, p, v.opt)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
}

}  // namespace
}  // namespace ev

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  ev::g_ceil = ev::measure_ceilings(&ev::pool(), 1.0);
  std::printf("ceilings: %s\n", ev::to_string(ev::g_ceil).c_str());
  ev::register_all();
  ev::register_int8();
  benchmark::RunSpecifiedBenchmarks();
  const ev::GemmCacheStats cs = ev::gemm_cache_stats();
  std::printf("oneDNN primitives created: %lld (%.2f ms total, %.3f ms each), cache hits %lld\n",
              static_cast<long long>(cs.primitives_created), cs.create_ms_total,
              cs.primitives_created ? cs.create_ms_total / static_cast<double>(cs.primitives_created) : 0.0,
              static_cast<long long>(cs.cache_hits));
  benchmark::Shutdown();
  return 0;
}
