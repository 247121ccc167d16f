// Tests of the GEMM layer (src/kernels/cpu/gemm.h): pack_linear + linear_forward against a plain double-precision
// loop over many shapes, dtypes, precisions, thread counts and every code path (own GEMV, oneDNN row split, column
// split, OpenMP mode); gemm_batched; pack errors; the CPU feature and ceiling kernels.
//
// Tolerances (per output element y[m, n], with S = sum_k |x_k w_k| and L2 = sqrt(sum_k (x_k w_k)^2)):
//   f32 precision: f32 products and sums; whatever the summation order, |err| <= (K + 2) * 2^-24 * S (the classic
//     recursive-summation bound) plus the f32 rounding of the bias add.
//   bf16 precision: x (and f32/f16 weights) are rounded to bf16 (RNE, 8 significant bits: |rel err| <= 2^-8
//     each), so each product carries a relative error <= 2^-7 + 2^-16: the worst case is 2^-7 * S. The errors are
//     independent and of either sign (each ~uniform, sigma 2^-8/sqrt(3)), so the typical error is ~2^-8.6 * L2,
//     i.e. ~2^-8 * sqrt(K) times a typical product; we accept min(2^-7 * S, 2^-5 * L2) (the second is ~12
//     standard deviations) plus the f32 summation term.
// The integer-valued tests are exact: small integers are exact in bf16 and their sums in f32, so any indexing
// error (a wrong column, a missing K pair, a padded lane leaking in) shows up as a nonzero difference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ceilings.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm.h"

namespace ev {
namespace {

// Restores the process-wide GEMM options at scope exit.
struct OptionsGuard {
  GemmOptions saved = gemm_options();
  ~OptionsGuard() { set_gemm_options(saved); }
};

Tensor make_weight(int64_t N, int64_t K, DType dt, std::mt19937& rng, bool integers = false) {
  Tensor t = Tensor::empty(dt, Shape{N, K});
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> ui(-8, 8);
  for (int64_t i = 0; i < N * K; ++i) {
    const float v = integers ? static_cast<float>(ui(rng)) : u(rng);
    switch (dt) {
      case DType::kF32: t.data_as<float>()[i] = v; break;
      case DType::kBF16: t.data_as<uint16_t>()[i] = f32_to_bf16(v); break;
      case DType::kF16: t.data_as<uint16_t>()[i] = f32_to_f16(v); break;
      default: break;
    }
  }
  return t;
}

float elem(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF32: return t.data_as<float>()[i];
    case DType::kBF16: return bf16_to_f32(t.data_as<uint16_t>()[i]);
    case DType::kF16: return f16_to_f32(t.data_as<uint16_t>()[i]);
    default: return NAN;
  }
}

struct Case {
  int64_t M, N, K;
  DType wdt;
  bool bias;
  Precision prec;
};

std::string case_name(const Case& c) {
  return "M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " w=" +
         dtype_name(c.wdt) + (c.bias ? " bias" : "") + " prec=" + (c.prec == Precision::kBF16 ? "bf16" : "f32");
}

// Runs one case and compares every output with the double reference; `integers` demands exact equality.
void check_case(const Case& c, ThreadPool* pool, uint32_t seed, bool integers = false) {
  SCOPED_TRACE(case_name(c) + " threads=" + std::to_string(pool ? pool->size() : 1) +
               (integers ? " integers" : ""));
  std::mt19937 rng(seed);
  Tensor w = make_weight(c.N, c.K, c.wdt, rng, integers);
  w.set_name("test.w");
  Tensor b = make_weight(1, c.N, DType::kF32, rng, integers);
  auto bias = b.reshape(Shape{c.N});
  ASSERT_TRUE(bias.ok());
  std::vector<float> x(static_cast<size_t>(c.M * c.K));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> ui(-8, 8);
  for (auto& v : x) v = integers ? static_cast<float>(ui(rng)) : u(rng);

  auto packed = pack_linear(w, c.bias ? &bias.value() : nullptr, c.prec);
  ASSERT_TRUE(packed.ok()) << packed.status().to_string();
  const PackedLinear& pl = *packed.value();
  EXPECT_EQ(packed_n(pl), c.N);
  EXPECT_EQ(packed_k(pl), c.K);
  EXPECT_GE(packed_bytes(pl), static_cast<size_t>(c.N * c.K) * (packed_precision(pl) == Precision::kBF16 ? 2 : 4));

  // Sentinel-filled output with a guard row: the kernels must write exactly [M, N].
  std::vector<float> y(static_cast<size_t>((c.M + 1) * c.N), 12345.f);
  ASSERT_TRUE(linear_forward(pl, x.data(), c.M, y.data(), pool).ok());

  const bool bf16 = packed_precision(pl) == Precision::kBF16;
  int bad = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = c.bias ? static_cast<double>(elem(b, n)) : 0.0, S = 0, L2 = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(x[static_cast<size_t>(m * c.K + k)]) * elem(w, n * c.K + k);
        ref += p;
        S += std::fabs(p);
        L2 += p * p;
      }
      L2 = std::sqrt(L2);
      const double got = y[static_cast<size_t>(m * c.N + n)];
      double tol = (static_cast<double>(c.K) + 2) * std::ldexp(S, -24) + std::ldexp(std::fabs(ref), -23) + 1e-30;
      if (bf16) tol += std::min(std::ldexp(S, -7) * 1.001, std::ldexp(L2, -5));
      if (integers) tol = 0;
      if (!(std::fabs(got - ref) <= tol) && ++bad <= 5)
        ADD_FAILURE() << "y[" << m << "," << n << "] = " << got << ", reference " << ref << ", tolerance " << tol;
    }
  }
  EXPECT_EQ(bad, 0);
  for (int64_t n = 0; n < c.N; ++n) ASSERT_EQ(y[static_cast<size_t>(c.M * c.N + n)], 12345.f) << "wrote past M rows";
}

std::vector<Case> shape_matrix() {
  std::vector<Case> cases;
  const int64_t Ms[] = {1, 2, 3, 4, 5, 7, 64, 1000};
  const std::pair<int64_t, int64_t> NKs[] = {{1, 1}, {7, 5}, {64, 32}, {65, 33}, {100, 37}, {192, 576}, {300, 129}};
  int i = 0;
  for (int64_t M : Ms) {
    for (auto [N, K] : NKs) {
      if (M == 1000 && N * K > 40000) continue;  // keep the double reference fast
      for (Precision p : {Precision::kF32, Precision::kBF16}) {
        // Rotate weight dtype and bias so that every combination appears across the shapes.
        const DType wdts[] = {DType::kF32, DType::kBF16, DType::kF16};
        cases.push_back({M, N, K, wdts[i % 3], (i % 2) == 0, p});
        ++i;
      }
    }
  }
  return cases;
}

TEST(Gemm, MatchesDoubleReferenceSingleThread) {
  ThreadPool pool(1);
  uint32_t seed = 1;
  for (const Case& c : shape_matrix()) check_case(c, &pool, seed++);
}

TEST(Gemm, MatchesDoubleReferenceTwoThreads) {
  ThreadPool pool(2);
  uint32_t seed = 100;
  for (const Case& c : shape_matrix()) check_case(c, &pool, seed++);
  // nullptr pool: everything on the calling thread.
  check_case({7, 65, 33, DType::kF32, true, Precision::kBF16}, nullptr, 7);
}

TEST(Gemm, AllWeightDtypesAndBiasCombinations) {
  ThreadPool pool(2);
  uint32_t seed = 500;
  for (DType wdt : {DType::kF32, DType::kBF16, DType::kF16})
    for (bool bias : {false, true})
      for (Precision p : {Precision::kF32, Precision::kBF16})
        for (int64_t M : {1, 3, 70}) check_case({M, 130, 70, wdt, bias, p}, &pool, seed++);
}

// Every code path (own GEMV, oneDNN for small M, row split, column split, OpenMP team) on exact integer data.
TEST(Gemm, EveryPathIsExactOnIntegers) {
  OptionsGuard guard;
  ThreadPool pool2(2), pool3(3);
  struct Path {
    const char* name;
    GemmOptions o;
  };
  std::vector<Path> paths;
  {
    GemmOptions o;
    o.min_parallel_macs = 0;  // these shapes are small: keep every path on the pool's threads
    paths.push_back({"default", o});
    GemmOptions inline_small;
    paths.push_back({"default-inline-small", inline_small});
    o.gemv_max_m = 0;
    paths.push_back({"no-gemv", o});
    o.split = GemmSplit::kRows;
    paths.push_back({"rows", o});
    o.split = GemmSplit::kCols;
    paths.push_back({"cols", o});
    o.split = GemmSplit::kAuto;
    o.threading = GemmThreading::kOneDnnOmp;
    paths.push_back({"omp", o});
    o.gemv_max_m = 64;  // own GEMV for larger M (groups of 4 rows + remainder)
    o.threading = GemmThreading::kPoolSlices;
    paths.push_back({"gemv-64", o});
  }
  uint32_t seed = 900;
  for (const Path& p : paths) {
    SCOPED_TRACE(p.name);
    set_gemm_options(p.o);
    for (Precision prec : {Precision::kF32, Precision::kBF16})
      for (int64_t M : {1, 2, 3, 4, 7, 67})
        for (ThreadPool* pool : {&pool2, &pool3}) {
          check_case({M, 200, 96, DType::kBF16, true, prec}, pool, seed++, /*integers=*/true);
          check_case({M, 64 * 3 + 1, 33, DType::kF32, false, prec}, pool, seed++, /*integers=*/true);
        }
  }
}

// Every threading path at prefill-like shapes must run on oneDNN's optimised kernels: a sliced destination with
// a row stride larger than its width once sent the column split to ref:any (0.1 GFLOP/s).
TEST(Gemm, NoPathFallsBackToOneDnnReference) {
  OptionsGuard guard;
  ThreadPool pool(2);
  std::mt19937 rng(11);
  Tensor w = make_weight(64 * 5 + 7, 96, DType::kBF16, rng);
  for (GemmSplit split : {GemmSplit::kAuto, GemmSplit::kRows, GemmSplit::kCols})
    for (Precision prec : {Precision::kF32, Precision::kBF16}) {
      GemmOptions o;
      o.split = split;
      o.gemv_max_m = 0;
      o.min_parallel_macs = 0;
      set_gemm_options(o);
      gemm_clear_cache();
      auto pl = pack_linear(w, nullptr, prec);
      ASSERT_TRUE(pl.ok());
      std::vector<float> x(40 * 96, 0.25f), y(40 * static_cast<size_t>(w.dim(0)));
      for (int64_t M : {5, 17, 40}) ASSERT_TRUE(linear_forward(*pl.value(), x.data(), M, y.data(), &pool).ok());
      for (const std::string& impl : gemm_cached_impls())
        EXPECT_NE(impl.rfind("ref", 0), 0u) << "split " << static_cast<int>(split) << " " << precision_name(prec)
                                            << ": " << impl;
    }
}

TEST(Gemm, RepeatedCallsAndManyMReuseThePrimitiveCache) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  Tensor w = make_weight(96, 48, DType::kF32, rng, true);
  auto pl = pack_linear(w, nullptr, Precision::kBF16);
  ASSERT_TRUE(pl.ok());
  std::vector<float> x(200 * 48, 1.f), y(200 * 96);
  for (int rep = 0; rep < 3; ++rep)
    for (int64_t M = 1; M <= 200; M += 13) {
      ASSERT_TRUE(linear_forward(*pl.value(), x.data(), M, y.data(), &pool).ok());
      // x is all ones: y[m, n] = sum_k w[n, k].
      for (int64_t n = 0; n < 96; ++n) {
        float s = 0;
        for (int64_t k = 0; k < 48; ++k) s += w.data_as<float>()[n * 48 + k];
        ASSERT_EQ(y[static_cast<size_t>((M - 1) * 96 + n)], s) << "M=" << M << " n=" << n;
      }
    }
  const GemmCacheStats st = gemm_cache_stats();
  EXPECT_GT(st.cache_hits, 0);
  EXPECT_LE(st.entries, static_cast<int64_t>(kGemmCacheCapacity));
}

TEST(Gemm, ZeroRowsIsANoOpAndBadArgumentsFail) {
  std::mt19937 rng(4);
  Tensor w = make_weight(8, 8, DType::kF32, rng);
  auto pl = pack_linear(w, nullptr, Precision::kF32);
  ASSERT_TRUE(pl.ok());
  float y = 7.f;
  EXPECT_TRUE(linear_forward(*pl.value(), nullptr, 0, &y, nullptr).ok());
  EXPECT_EQ(y, 7.f);
  EXPECT_EQ(linear_forward(*pl.value(), nullptr, -1, &y, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(linear_forward(*pl.value(), nullptr, 1, &y, nullptr).code(), StatusCode::kInvalidArgument);
}

TEST(Gemm, PackRejectsBadWeightsAndBias) {
  std::mt19937 rng(5);
  Tensor w = make_weight(8, 4, DType::kF32, rng);
  w.set_name("blk.0.q.weight");

  Tensor w1 = Tensor::empty(DType::kF32, Shape{32});
  w1.set_name("flat");
  auto r1 = pack_linear(w1, nullptr, Precision::kF32);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r1.status().message().find("flat"), std::string::npos) << r1.status().message();

  auto r3 = pack_linear(Tensor::empty(DType::kF32, Shape{2, 4, 4}), nullptr, Precision::kF32);
  EXPECT_EQ(r3.status().code(), StatusCode::kInvalidArgument);

  Tensor wi = Tensor::empty(DType::kI32, Shape{8, 4});
  EXPECT_EQ(pack_linear(wi, nullptr, Precision::kF32).status().code(), StatusCode::kUnsupported);
  Tensor wi8 = Tensor::empty(DType::kI8, Shape{8, 4});  // int8 without quant params (test_gemm_int8.cpp)
  EXPECT_EQ(pack_linear(wi8, nullptr, Precision::kBF16).status().code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(pack_linear(Tensor::empty(DType::kF32, Shape{0, 4}), nullptr, Precision::kF32).status().code(),
            StatusCode::kInvalidArgument);

  Tensor b_wrong = Tensor::empty(DType::kF32, Shape{7});
  b_wrong.set_name("blk.0.q.bias");
  auto rb = pack_linear(w, &b_wrong, Precision::kF32);
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(rb.status().message().find("blk.0.q.bias"), std::string::npos) << rb.status().message();
  EXPECT_NE(rb.status().message().find("[8]"), std::string::npos) << rb.status().message();

  Tensor b2d = Tensor::empty(DType::kF32, Shape{1, 8});
  EXPECT_EQ(pack_linear(w, &b2d, Precision::kF32).status().code(), StatusCode::kInvalidArgument);
  Tensor bint = Tensor::empty(DType::kI32, Shape{8});
  EXPECT_EQ(pack_linear(w, &bint, Precision::kF32).status().code(), StatusCode::kUnsupported);
  Tensor bbf = Tensor::empty(DType::kBF16, Shape{8});
  EXPECT_TRUE(pack_linear(w, &bbf, Precision::kBF16).ok());
}

TEST(Gemm, DescribeNamesTheLayout) {
  std::mt19937 rng(6);
  Tensor w = make_weight(16, 16, DType::kBF16, rng);
  auto pl = pack_linear(w, nullptr, Precision::kBF16);
  ASSERT_TRUE(pl.ok());
  const std::string d = packed_describe(*pl.value());
  EXPECT_NE(d.find("[16 x 16]"), std::string::npos) << d;
  if (cpu_features().has_avx512_bf16()) {
    EXPECT_EQ(packed_precision(*pl.value()), Precision::kBF16);
    EXPECT_NE(d.find("BA16a64b2a"), std::string::npos) << d;
  }
}

// ---- gemm_batched ----

void check_batched(DType dt, bool trans, float alpha, float beta, ThreadPool* pool) {
  SCOPED_TRACE(std::string(dtype_name(dt)) + (trans ? " A*B^T" : " A*B") + " alpha=" + std::to_string(alpha) +
               " beta=" + std::to_string(beta));
  const int64_t batch = 3, M = 5, N = 7, K = 19;
  const int64_t lda = K + 3, ldb = (trans ? K : N) + 2, ldc = N + 1;
  const int64_t sa = M * lda + 5, sb = (trans ? N : K) * ldb + 1, sc = M * ldc + 2;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> ui(-4, 4);
  std::vector<float> A(static_cast<size_t>(batch * sa)), B(static_cast<size_t>(batch * sb));
  for (auto& v : A) v = static_cast<float>(ui(rng));
  for (auto& v : B) v = static_cast<float>(ui(rng));
  std::vector<float> C(static_cast<size_t>(batch * sc));
  for (auto& v : C) v = static_cast<float>(ui(rng));
  const std::vector<float> C0 = C;
  std::vector<uint16_t> Ab(A.size()), Bb(B.size());
  for (size_t i = 0; i < A.size(); ++i) Ab[i] = f32_to_bf16(A[i]);
  for (size_t i = 0; i < B.size(); ++i) Bb[i] = f32_to_bf16(B[i]);

  GemmBatch g;
  g.batch = batch;
  g.M = M;
  g.N = N;
  g.K = K;
  g.dtype = dt;
  g.A = dt == DType::kBF16 ? static_cast<const void*>(Ab.data()) : A.data();
  g.lda = lda;
  g.stride_a = sa;
  g.B = dt == DType::kBF16 ? static_cast<const void*>(Bb.data()) : B.data();
  g.ldb = ldb;
  g.stride_b = sb;
  g.b_transposed = trans;
  g.C = C.data();
  g.ldc = ldc;
  g.stride_c = sc;
  g.alpha = alpha;
  g.beta = beta;
  Status st = gemm_batched(g, pool);
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double bv = trans ? B[static_cast<size_t>(b * sb + n * ldb + k)]
                                  : B[static_cast<size_t>(b * sb + k * ldb + n)];
          s += A[static_cast<size_t>(b * sa + m * lda + k)] * bv;
        }
        const size_t ci = static_cast<size_t>(b * sc + m * ldc + n);
        const double ref = alpha * s + beta * C0[ci];
        ASSERT_NEAR(C[ci], ref, 1e-4 * (1 + std::fabs(ref))) << "b=" << b << " m=" << m << " n=" << n;
      }
  // Padding between rows and batches is untouched.
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t m = 0; m < M; ++m) {
      const size_t pad = static_cast<size_t>(b * sc + m * ldc + N);
      ASSERT_EQ(C[pad], C0[pad]);
    }
}

TEST(GemmBatched, MatchesReference) {
  ThreadPool pool(2);
  for (DType dt : {DType::kF32, DType::kBF16})
    for (bool trans : {true, false})
      for (auto [alpha, beta] : {std::pair{1.f, 0.f}, std::pair{0.125f, 0.f}, std::pair{1.f, 1.f}}) {
        check_batched(dt, trans, alpha, beta, &pool);
        check_batched(dt, trans, alpha, beta, nullptr);
      }
}

TEST(GemmBatched, RejectsBadArguments) {
  GemmBatch g;
  g.M = g.N = g.K = 4;
  std::vector<float> buf(64);
  g.A = g.B = buf.data();
  g.C = buf.data();
  g.lda = g.ldb = g.ldc = 4;
  g.dtype = DType::kI8;
  EXPECT_EQ(gemm_batched(g, nullptr).code(), StatusCode::kUnsupported);
  g.dtype = DType::kF32;
  g.lda = 3;
  EXPECT_EQ(gemm_batched(g, nullptr).code(), StatusCode::kInvalidArgument);
  g.lda = 4;
  g.A = nullptr;
  EXPECT_EQ(gemm_batched(g, nullptr).code(), StatusCode::kInvalidArgument);
}

// ---- own kernels directly (exact on integers) and the feature / ceiling plumbing ----

TEST(GemmKernels, Bf16ConversionRoundsToNearestEven) {
  if (!cpu_features().has_avx512_bf16()) GTEST_SKIP() << "no avx512_bf16";
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> u(-1e3f, 1e3f);
  for (int64_t n : {0, 1, 15, 16, 17, 31, 32, 33, 100}) {
    std::vector<float> src(static_cast<size_t>(n));
    for (auto& v : src) v = u(rng);
    std::vector<uint16_t> dst(static_cast<size_t>(n) + 1, 0xBEEF);
    gemm_detail::f32_to_bf16_avx512(src.data(), dst.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(dst[static_cast<size_t>(i)], f32_to_bf16(src[static_cast<size_t>(i)]));
    ASSERT_EQ(dst[static_cast<size_t>(n)], 0xBEEF);
  }
}

TEST(CpuFeatures, DetectsAConsistentSet) {
  const CpuFeatures& f = cpu_features();
  // The build baseline is x86-64-v3: the test binary would not run without these.
  EXPECT_TRUE(f.avx2);
  EXPECT_TRUE(f.fma);
  EXPECT_TRUE(f.f16c);
  if (f.avx512_bf16 || f.avx512_vnni) {
    EXPECT_TRUE(f.avx512f);
  }
  EXPECT_GT(f.logical_cpus, 0);
  EXPECT_FALSE(cpu_features_string().empty());
  EXPECT_EQ(&cpu_features(), &cpu_features());
}

TEST(Ceilings, KernelsCountTheirWork) {
  using namespace ceilings_detail;
  EXPECT_EQ(f32_fma_avx2(10), 10.0 * 12 * 8 * 2);
  EXPECT_EQ(int8_dot_avx2(10), 10.0 * 8 * 8 * 8);
  std::vector<uint64_t> buf(1024, 1);
  uint64_t sink = 0;
  EXPECT_EQ(read_avx2(buf.data(), buf.size() * 8, &sink), 8192.0);
  EXPECT_EQ(sink, 1024u / 4);  // lane 0 of the four accumulators, summed: a quarter of the words
  if (cpu_features().has_avx512_core()) {
    EXPECT_EQ(f32_fma_avx512(10), 10.0 * 16 * 16 * 2);
    sink = 0;
    EXPECT_EQ(read_avx512(buf.data(), buf.size() * 8, &sink), 8192.0);
    EXPECT_EQ(sink, 1024u);  // all lanes summed
  }
  if (cpu_features().has_avx512_bf16()) {
    EXPECT_EQ(bf16_dot_avx512(10), 10.0 * 16 * 16 * 4);
  }
  if (cpu_features().has_avx512_vnni()) {
    EXPECT_EQ(int8_dot_avx512(10), 10.0 * 16 * 16 * 8);
  }
}

TEST(Ceilings, MeasureGivesPositiveNumbersAndJson) {
  ThreadPool pool(2);
  const MachineCeilings c = measure_ceilings(&pool, 0.05);
  EXPECT_GT(c.f32_gflops, 0);
  EXPECT_GT(c.bf16_gflops, 0);
  EXPECT_GT(c.int8_gops, 0);
  EXPECT_GT(c.mem_read_gbs, 0);
  EXPECT_EQ(c.threads, 2);
  const nlohmann::json j = to_json(c);
  EXPECT_EQ(j.at("threads").get<int>(), 2);
  EXPECT_DOUBLE_EQ(j.at("f32_gflops").get<double>(), c.f32_gflops);
  EXPECT_FALSE(to_string(c).empty());
}

}  // namespace
}  // namespace ev
