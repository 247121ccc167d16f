// Tests of the INT8 Linear: the reference rules of src/kernels/ref/ref_quant.h on hand-computed cases and edge
// cases, the AVX-512 VNNI quantiser and GEMM against them BIT FOR BIT (the contract: same f32 operations in the
// same order, int32 accumulation exact), every code path of linear_forward (decode GEMV, row split, column split,
// 1 and 2 threads, the portable kernel), the dequantised meaning against an f32 Linear (within the quantisation
// error bound), and the errors of pack_linear.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm.h"
#include "kernels/ref/ref_quant.h"

namespace ev {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct OptionsGuard {
  GemmOptions saved = gemm_options();
  ~OptionsGuard() { set_gemm_options(saved); }
};

// Equal as bit patterns, except that any two NaNs are equal.
bool same(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

std::vector<float> uniform(int64_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = u(rng);
  return v;
}

Tensor f32_tensor(const std::vector<float>& v, Shape s, const std::string& name = "") {
  Tensor t = Tensor::empty(DType::kF32, s);
  std::memcpy(t.data(), v.data(), v.size() * 4);
  t.set_name(name);
  return t;
}

// An int8 weight tensor with its quant params (scale [N], smooth [K] or none).
Tensor i8_weight(const std::vector<int8_t>& q, int64_t N, int64_t K, const std::vector<float>& scale,
                 const std::vector<float>* smooth, const std::string& name = "w.int8") {
  Tensor t = Tensor::empty(DType::kI8, Shape{N, K});
  std::memcpy(t.data(), q.data(), q.size());
  t.set_name(name);
  auto qp = std::make_shared<QuantParams>();
  qp->scale = f32_tensor(scale, Shape{static_cast<int64_t>(scale.size())});  // sizes as given (error tests)
  if (smooth) qp->smooth = f32_tensor(*smooth, Shape{static_cast<int64_t>(smooth->size())});
  t.set_quant(qp);
  return t;
}

// ---- the reference rules ----------------------------------------------------------------------------------------

TEST(Int8Quant, RowRuleRoundsHalfToEvenAndClamps) {
  // amax = 127: scale = 1, inv = 1, so q = round_half_even(t) exactly.
  const std::vector<float> t = {2.5f, 3.5f, -2.5f, 0.5f, -0.5f, 1.5f, 127.f, -126.6f};
  std::vector<int8_t> q(t.size());
  EXPECT_EQ(ref::quantize_row_i8(t.data(), static_cast<int64_t>(t.size()), q.data()), 1.0f);
  const std::vector<int8_t> want = {2, 4, -2, 0, 0, 2, 127, -127};
  EXPECT_EQ(q, want);

  // amax = 2: scale = 2/127, inv = 1/scale (63.5 up to f32 rounding).
  const std::vector<float> t2 = {1.f, -2.f, 0.5f, 0.f};
  std::vector<int8_t> q2(4);
  const float s2 = ref::quantize_row_i8(t2.data(), 4, q2.data());
  EXPECT_EQ(s2, 2.0f / 127.0f);
  const float inv = 1.0f / s2;
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(q2[k], static_cast<int8_t>(std::nearbyint(t2[k] * inv))) << k;
  EXPECT_EQ(q2[1], -127);
}

TEST(Int8Quant, EdgeRows) {
  std::vector<int8_t> q(3, 5);
  // A zero row, and a row so small that 1/scale would overflow: both scale 0, q 0.
  const float zero[3] = {0.f, -0.f, 0.f};
  EXPECT_EQ(ref::quantize_row_i8(zero, 3, q.data()), 0.f);
  EXPECT_EQ(q, std::vector<int8_t>(3, 0));
  const float tiny[3] = {1e-38f, -1e-40f, 0.f};
  q.assign(3, 5);
  EXPECT_EQ(ref::quantize_row_i8(tiny, 3, q.data()), 0.f);
  EXPECT_EQ(q, std::vector<int8_t>(3, 0));
  // The smallest amax that is kept: scale = FLT_MIN exactly.
  const float small[2] = {127.f * FLT_MIN, -63.5f * FLT_MIN};
  std::vector<int8_t> q2(2);
  EXPECT_EQ(ref::quantize_row_i8(small, 2, q2.data()), FLT_MIN);
  EXPECT_EQ(q2[0], 127);
  EXPECT_EQ(q2[1], -64);
  // Huge finite values.
  const float huge[3] = {3e38f, -3e38f, 1.f};
  EXPECT_EQ(ref::quantize_row_i8(huge, 3, q.data()), 3e38f / 127.0f);
  EXPECT_EQ(q, (std::vector<int8_t>{127, -127, 0}));
  // Non-finite: NaN scale, q all 0.
  for (float bad : {kNaN, kInf, -kInf}) {
    const float row[3] = {1.f, bad, 2.f};
    q.assign(3, 5);
    EXPECT_TRUE(std::isnan(ref::quantize_row_i8(row, 3, q.data()))) << bad;
    EXPECT_EQ(q, std::vector<int8_t>(3, 0));
  }
  // K = 1.
  const float one = -0.37f;
  int8_t q1 = 0;
  EXPECT_EQ(ref::quantize_row_i8(&one, 1, &q1), 0.37f / 127.0f);
  EXPECT_EQ(q1, -127);
}

TEST(Int8Quant, SmoothDirectionsAndNonFiniteProducts) {
  // Weights are multiplied by smooth, activations multiplied by 1/smooth.
  const float w[2] = {1.f, 2.f}, smooth[2] = {4.f, 0.5f};
  int8_t q[2];
  float s;
  ref::quantize_rows_i8(w, 1, 2, smooth, q, &s);  // t = {4, 1}
  EXPECT_EQ(s, 4.f / 127.f);
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[1], static_cast<int8_t>(std::nearbyint(1.f * (1.0f / s))));
  ref::quantize_activations_i8(w, 1, 2, smooth, q, &s);  // t = {0.25, 4}
  EXPECT_EQ(s, 4.f / 127.f);
  EXPECT_EQ(q[1], 127);
  EXPECT_EQ(q[0], static_cast<int8_t>(std::nearbyint(0.25f * (1.0f / s))));
  // A finite x divided by a tiny smooth factor overflows: the row is non-finite.
  const float x[2] = {1e30f, 1.f}, sm[2] = {1e-10f, 1.f};
  ref::quantize_activations_i8(x, 1, 2, sm, q, &s);
  EXPECT_TRUE(std::isnan(s));
}

TEST(Int8Quant, LinearI8IsExactInt32) {
  // K = 3 by hand, with -128 in the weights.
  const int8_t qx[3] = {127, -127, 3}, qw[6] = {-128, 127, 1, 2, 0, -5};
  const float sx[1] = {0.5f}, sw[2] = {0.25f, 2.f}, bias[2] = {1.f, -1.f};
  float y[2];
  ref::linear_i8(qx, sx, 1, 3, qw, sw, 2, bias, y);
  EXPECT_EQ(y[0], std::fma(static_cast<float>(127 * -128 + -127 * 127 + 3), 0.5f * 0.25f, 1.f));
  EXPECT_EQ(y[1], std::fma(static_cast<float>(254 - 15), 1.f, -1.f));
}

// ---- the AVX-512 quantiser against the reference -------------------------------------------------------------

TEST(Int8Kernels, QuantiserIsBitExact) {
  if (!cpu_features().has_avx512_vnni()) GTEST_SKIP() << "no avx512_vnni";
  std::mt19937 rng(11);
  for (int64_t K : {1, 3, 15, 16, 17, 64, 100, 773}) {
    for (bool smooth : {false, true}) {
      SCOPED_TRACE("K=" + std::to_string(K) + (smooth ? " smooth" : ""));
      const int64_t M = 8, ldq = (K + 7) / 8 * 8 + 8;
      std::vector<float> x = uniform(M * K, -3.f, 3.f, rng);
      for (int64_t k = 0; k < K; ++k) x[static_cast<size_t>(1 * K + k)] = 0.f;      // zero row
      for (int64_t k = 0; k < K; ++k) x[static_cast<size_t>(2 * K + k)] *= 1e-39f;  // flushed row
      x[static_cast<size_t>(3 * K + K / 2)] = kNaN;
      x[static_cast<size_t>(4 * K + K - 1)] = -kInf;
      for (int64_t k = 0; k < K; ++k) x[static_cast<size_t>(5 * K + k)] *= 1e37f;  // huge row
      for (int64_t k = 0; k < K; ++k) x[static_cast<size_t>(6 * K + k)] = 2.5f * static_cast<float>(k % 5) - 5.f;
      std::vector<float> sm = uniform(K, 0.25f, 4.f, rng), rs(static_cast<size_t>(K));
      for (int64_t k = 0; k < K; ++k) rs[static_cast<size_t>(k)] = 1.0f / sm[static_cast<size_t>(k)];
      std::vector<int8_t> qr(static_cast<size_t>(M * K)), qv(static_cast<size_t>(M * ldq), 99);
      std::vector<float> sr(M), sv(M);
      std::vector<int32_t> cx(M);
      ref::quantize_activations_i8(x.data(), M, K, smooth ? sm.data() : nullptr, qr.data(), sr.data());
      gemm_detail::quantize_rows_s8_avx512(x.data(), K, K, smooth ? rs.data() : nullptr, M, qv.data(), ldq,
                                           sv.data(), cx.data());
      for (int64_t m = 0; m < M; ++m) {
        EXPECT_TRUE(same(sr[static_cast<size_t>(m)], sv[static_cast<size_t>(m)])) << "row " << m;
        int32_t sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          ASSERT_EQ(qr[static_cast<size_t>(m * K + k)], qv[static_cast<size_t>(m * ldq + k)]) << m << "," << k;
          sum += qr[static_cast<size_t>(m * K + k)];
        }
        for (int64_t k = K; k < ldq; ++k) ASSERT_EQ(qv[static_cast<size_t>(m * ldq + k)], 0) << "padding";
        EXPECT_EQ(cx[static_cast<size_t>(m)], 128 * sum);
      }
      EXPECT_TRUE(std::isnan(sv[3]) && std::isnan(sv[4]));
      EXPECT_EQ(sv[1], 0.f);
      EXPECT_EQ(sv[2], 0.f);
    }
  }
}

// ---- linear_forward against ref::linear_i8_dynamic, bit for bit ---------------------------------------------

struct Case {
  int64_t M, N, K;
  bool bias, smooth;
};

// Packs a random kI8 weight (values over the full range, -128 included) and checks every output bit-exactly.
void check_exact(const Case& c, ThreadPool* pool, uint32_t seed, const char* path) {
  SCOPED_TRACE(std::string(path) + " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" +
               std::to_string(c.K) + (c.bias ? " bias" : "") + (c.smooth ? " smooth" : "") +
               " threads=" + std::to_string(pool ? pool->size() : 1));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> ui(-128, 127);
  std::vector<int8_t> q(static_cast<size_t>(c.N * c.K));
  for (auto& v : q) v = static_cast<int8_t>(ui(rng));
  std::vector<float> scale = uniform(c.N, 1e-4f, 2e-2f, rng);
  std::vector<float> smooth = uniform(c.K, 0.1f, 8.f, rng);
  std::vector<float> bias = uniform(c.N, -1.f, 1.f, rng);
  Tensor w = i8_weight(q, c.N, c.K, scale, c.smooth ? &smooth : nullptr);
  Tensor b = f32_tensor(bias, Shape{c.N});
  auto pl = pack_linear(w, c.bias ? &b : nullptr, Precision::kF32);  // an int8 weight is always int8
  ASSERT_TRUE(pl.ok()) << pl.status().to_string();
  ASSERT_EQ(packed_precision(*pl.value()), Precision::kInt8);
  std::vector<float> x = uniform(c.M * c.K, -2.f, 2.f, rng);
  if (c.M > 2) {
    x[static_cast<size_t>(1 * c.K + c.K / 3)] = kNaN;                             // a non-finite token
    for (int64_t k = 0; k < c.K; ++k) x[static_cast<size_t>(2 * c.K + k)] = 0.f;  // a zero token
  }
  std::vector<float> want(static_cast<size_t>(c.M * c.N)), got(want.size(), -7.f);
  ref::linear_i8_dynamic(x.data(), c.M, c.K, c.smooth ? smooth.data() : nullptr, q.data(), scale.data(), c.N,
                         c.bias ? bias.data() : nullptr, want.data());
  ASSERT_TRUE(linear_forward(*pl.value(), x.data(), c.M, got.data(), pool).ok());
  int64_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!same(want[i], got[i]) && bad++ < 5) {
      ADD_FAILURE() << "y[" << i / static_cast<size_t>(c.N) << ", " << i % static_cast<size_t>(c.N) << "] = " << got[i]
                    << ", want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0);
  if (c.M > 2) {
    for (int64_t n = 0; n < c.N; ++n) ASSERT_TRUE(std::isnan(got[static_cast<size_t>(c.N + n)])) << "NaN row";
  }
}

const Case kCases[] = {
    {1, 1, 1, false, false},     {1, 64, 64, true, false},     {2, 100, 259, true, true},
    {3, 130, 13, false, true},   {4, 17, 100, true, false},    {5, 64, 3, true, true},
    {31, 100, 259, false, false}, {31, 130, 64, true, true},   {196, 70, 100, true, false},
    {197, 192, 17, false, true}, {1024, 65, 40, true, true},
};

TEST(GemmInt8, MatchesReferenceBitExactOneThread) {
  OptionsGuard g;
  GemmOptions o;
  o.int8_min_parallel_macs = 0;
  set_gemm_options(o);
  uint32_t seed = 1;
  for (const Case& c : kCases) check_exact(c, nullptr, seed++, "auto");
}

TEST(GemmInt8, EveryPathMatchesReferenceTwoThreads) {
  OptionsGuard g;
  ThreadPool pool(2);
  struct Path {
    const char* name;
    GemmSplit split;
    int gemv;
    bool generic;
  };
  const Path paths[] = {{"auto", GemmSplit::kAuto, 4, false},
                        {"rows", GemmSplit::kRows, 0, false},
                        {"cols", GemmSplit::kCols, 0, false},
                        {"generic", GemmSplit::kAuto, 4, true}};
  uint32_t seed = 100;
  for (const Path& p : paths) {
    GemmOptions o;
    o.int8_min_parallel_macs = 0;
    o.split = p.split;
    o.gemv_max_m = p.gemv;
    o.int8_force_generic = p.generic;
    set_gemm_options(o);
    for (const Case& c : kCases) {
      if (p.generic && c.M * c.N * c.K > 4'000'000) continue;  // the portable loop is slow under ASan
      check_exact(c, &pool, seed++, p.name);
    }
  }
}

TEST(GemmInt8, LargestKAccumulatesExactly) {
  // K = 65536 with every product at its extreme: (q + 128) * qx sums reach 255 * 127 * K = 2.1e9 < 2^31.
  const int64_t N = 3, K = 65536;
  std::vector<int8_t> q(static_cast<size_t>(N * K));
  for (int64_t k = 0; k < K; ++k) {
    q[static_cast<size_t>(k)] = 127;
    q[static_cast<size_t>(K + k)] = -128;
    q[static_cast<size_t>(2 * K + k)] = static_cast<int8_t>(k % 2 ? 127 : -128);
  }
  std::vector<float> scale = {1.f, 1.f, 1.f};
  auto pl = pack_linear(i8_weight(q, N, K, scale, nullptr), nullptr, Precision::kInt8);
  ASSERT_TRUE(pl.ok()) << pl.status().to_string();
  std::vector<float> x(static_cast<size_t>(K), 1.f), y(N), want(N);
  ASSERT_TRUE(linear_forward(*pl.value(), x.data(), 1, y.data(), nullptr).ok());
  ref::linear_i8_dynamic(x.data(), 1, K, nullptr, q.data(), scale.data(), N, nullptr, want.data());
  for (int64_t n = 0; n < N; ++n) EXPECT_TRUE(same(y[static_cast<size_t>(n)], want[static_cast<size_t>(n)])) << n;
  EXPECT_EQ(want[0], static_cast<float>(127 * 127 * K) / 127.f);  // x = 1: qx = 127, sx = 1/127
}

// ---- the dequantised meaning: float weights quantised at pack time vs an f32 Linear -------------------------

TEST(GemmInt8, FloatWeightsApproximateF32WithinQuantisationBound) {
  const int64_t M = 9, N = 70, K = 200;
  std::mt19937 rng(5);
  std::vector<float> w = uniform(N * K, -0.1f, 0.1f, rng), x = uniform(M * K, -1.f, 1.f, rng);
  std::vector<float> smooth = uniform(K, 0.5f, 3.f, rng), bias = uniform(N, -1.f, 1.f, rng);
  for (bool use_smooth : {false, true}) {
    SCOPED_TRACE(use_smooth ? "smooth" : "no smooth");
    Tensor wt = f32_tensor(w, Shape{N, K}, "blk.0.fc1.weight");
    if (use_smooth) {
      auto qp = std::make_shared<QuantParams>();
      qp->smooth = f32_tensor(smooth, Shape{K});
      wt.set_quant(qp);
    }
    Tensor bt = f32_tensor(bias, Shape{N});
    auto pl = pack_linear(wt, &bt, Precision::kInt8);
    ASSERT_TRUE(pl.ok()) << pl.status().to_string();
    EXPECT_EQ(packed_precision(*pl.value()), Precision::kInt8);
    std::vector<float> y(static_cast<size_t>(M * N)), exact(y.size());
    ASSERT_TRUE(linear_forward(*pl.value(), x.data(), M, y.data(), nullptr).ok());
    // Bit-exact with the reference on the same quantised weights ...
    std::vector<int8_t> q(static_cast<size_t>(N * K));
    std::vector<float> sw(N);
    ref::quantize_rows_i8(w.data(), N, K, use_smooth ? smooth.data() : nullptr, q.data(), sw.data());
    ref::linear_i8_dynamic(x.data(), M, K, use_smooth ? smooth.data() : nullptr, q.data(), sw.data(), N, bias.data(),
                           exact.data());
    for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], exact[i])) << i;
    // ... and within the rounding bound of the float Linear: with t = x / smooth, u = w * smooth, each product
    // t*u carries |dt| <= sx/2, |du| <= sw/2: |err| <= sum_k (|t| sw + |u| sx) / 2 + sx sw / 4, plus slack.
    std::vector<float> sx(M);
    std::vector<int8_t> qx(static_cast<size_t>(M * K));
    ref::quantize_activations_i8(x.data(), M, K, use_smooth ? smooth.data() : nullptr, qx.data(), sx.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = bias[static_cast<size_t>(n)], bound = 1e-5;
        for (int64_t k = 0; k < K; ++k) {
          const double s = use_smooth ? smooth[static_cast<size_t>(k)] : 1.0;
          const double xv = x[static_cast<size_t>(m * K + k)], wv = w[static_cast<size_t>(n * K + k)];
          ref += xv * wv;
          bound += (std::fabs(xv / s) * sw[static_cast<size_t>(n)] + std::fabs(wv * s) * sx[static_cast<size_t>(m)]) /
                       2 +
                   sx[static_cast<size_t>(m)] * sw[static_cast<size_t>(n)] / 4;
        }
        ASSERT_NEAR(y[static_cast<size_t>(m * N + n)], ref, bound) << m << "," << n;
      }
  }
}

// ---- pack errors and queries ----------------------------------------------------------------------------------

void expect_error(const Result<std::shared_ptr<PackedLinear>>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok()) << "expected an error mentioning " << needle;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
}

TEST(GemmInt8, PackRejectsBadQuantParams) {
  const int64_t N = 8, K = 4;
  std::vector<int8_t> q(static_cast<size_t>(N * K), 1);
  std::vector<float> scale(N, 0.1f), smooth(K, 1.f);

  Tensor bare = Tensor::empty(DType::kI8, Shape{N, K});
  bare.set_name("blk.3.q.weight");
  expect_error(pack_linear(bare, nullptr, Precision::kInt8), "blk.3.q.weight");
  expect_error(pack_linear(bare, nullptr, Precision::kF32), "no quantisation parameters");

  std::vector<float> short_scale(N - 1, 0.1f);
  expect_error(pack_linear(i8_weight(q, N, K, short_scale, nullptr, "w.a"), nullptr, Precision::kInt8), "[8]");
  std::vector<float> short_smooth(K + 1, 1.f);
  expect_error(pack_linear(i8_weight(q, N, K, scale, &short_smooth, "w.b"), nullptr, Precision::kInt8), "smooth");
  std::vector<float> zero_smooth = {1.f, 0.f, 1.f, 1.f};
  expect_error(pack_linear(i8_weight(q, N, K, scale, &zero_smooth, "w.c"), nullptr, Precision::kInt8), "smooth[1]");
  std::vector<float> nan_scale = scale;
  nan_scale[5] = kNaN;
  expect_error(pack_linear(i8_weight(q, N, K, nan_scale, nullptr, "w.d"), nullptr, Precision::kInt8), "scale[5]");

  Tensor bf16_scale = i8_weight(q, N, K, scale, nullptr, "w.e");
  auto qp = std::make_shared<QuantParams>();
  qp->scale = Tensor::empty(DType::kBF16, Shape{N});
  bf16_scale.set_quant(qp);
  expect_error(pack_linear(bf16_scale, nullptr, Precision::kInt8), "dtype bf16");

  Tensor b_wrong = f32_tensor(std::vector<float>(N + 1, 0.f), Shape{N + 1}, "w.bias");
  expect_error(pack_linear(i8_weight(q, N, K, scale, nullptr), &b_wrong, Precision::kInt8), "w.bias");

  std::vector<float> wf(static_cast<size_t>(N * K), 0.5f);
  wf[13] = kInf;
  expect_error(pack_linear(f32_tensor(wf, Shape{N, K}, "w.float"), nullptr, Precision::kInt8), "row 3");

  std::vector<int8_t> long_q(65537, 1);
  expect_error(pack_linear_i8(long_q.data(), 1, 65537, scale.data(), nullptr, nullptr, "w.long"), "65536");
}

TEST(GemmInt8, QueriesDescribeTheInt8Packing) {
  const int64_t N = 100, K = 30;
  std::vector<int8_t> q(static_cast<size_t>(N * K), 1);
  std::vector<float> scale(N, 0.1f), smooth(K, 2.f);
  Tensor b = f32_tensor(std::vector<float>(N, 0.f), Shape{N});
  auto pl = pack_linear(i8_weight(q, N, K, scale, &smooth), &b, Precision::kBF16);
  ASSERT_TRUE(pl.ok()) << pl.status().to_string();
  EXPECT_EQ(packed_n(*pl.value()), N);
  EXPECT_EQ(packed_k(*pl.value()), K);
  EXPECT_EQ(packed_precision(*pl.value()), Precision::kInt8);
  // 128 padded columns x 32 padded K bytes + scales and bias (128 f32 each) + smooth (32 f32).
  EXPECT_EQ(packed_bytes(*pl.value()), 128u * 32 + 128 * 4 * 2 + 32 * 4);
  const std::string d = packed_describe(*pl.value());
  EXPECT_EQ(d.rfind("int8 ", 0), 0u) << d;
  EXPECT_NE(d.find("[100 x 30]"), std::string::npos) << d;
  EXPECT_NE(d.find("smooth"), std::string::npos) << d;
  if (cpu_features().has_avx512_vnni()) {
    EXPECT_NE(d.find("own-vnni"), std::string::npos) << d;
  }
}

}  // namespace
}  // namespace ev
