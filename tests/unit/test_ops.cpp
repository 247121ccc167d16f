// Op consistency: every OpKind on the CPU backend (f32 and bf16 precision, pools of 1 and 2 threads) against the
// reference backend, over a matrix of shapes (odd sizes, one row, batch > 1, GQA ratios 1/3/4, causal with
// q_offset, decode T=1, long S); every attention kernel forced one by one; the reference itself against
// hand-computed values and an independent emulation of the PyTorch view/permute sequence of pixel_shuffle; bad
// inputs (out-of-range ids, mismatched shapes) give errors; a small graph through the Executor.
//
// Outputs are pre-filled with NaN, so an element a kernel forgets to write fails the comparison.
//
// Tolerances (|got - ref| <= atol + rtol * |ref| unless stated):
//   exact (0):  data movement (patchify, pixel_shuffle, get_rows, scatter_rows, rows, copy) and add/mul (one f32
//               rounding of the same operands on both sides).
//   1e-5:       norms, activations, rope in f32: the kernels use f32 sums (relative error ~C * 2^-24 / lanes) and
//               a polynomial exp (relative error ~1e-7); the reference uses doubles.
//   linear:     f32: 1e-5 * S + 1e-6 with S = sum_k |x_k w_k| (recursive f32 summation, typical error
//               ~sqrt(K) * 2^-24 * S); bf16: x and w are rounded to bf16 (relative error <= 2^-8 each, so each
//               product <= 2^-7 + 2^-16), bound 2^-7 * S + the f32 term.
//   attention:  f32 kernels: 2e-5 * max|v|. bf16 kernel: q*scale, k, v, p rounded to bf16 (2^-8 each): with
//               E = (2^-7 + 2^-15) * max_ij scale * sum_d |q_id k_jd| the logit error bound,
//               |err| <= (e^(2E) - 1 + 2^-7 + 1e-4) * max|v| (see attention.h), and the mean error must stay below
//               2^-8 * max|v| (a typical-case check that catches a wrong-but-bounded kernel).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "graph/backend.h"
#include "graph/executor.h"
#include "graph/graph.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops.h"
#include "kernels/ref/ref_ops.h"

namespace ev {
namespace {

// ---- helpers ---------------------------------------------------------------------------------------------------

struct Cfg {
  Precision precision;
  int threads;
  std::string name() const {
    return std::string(precision_name(precision)) + "/" + std::to_string(threads) + "t";
  }
};

ThreadPool* pool_of(int threads) {
  static ThreadPool p1(1), p2(2);
  return threads == 1 ? &p1 : &p2;
}

const std::vector<Cfg>& configs() {
  static const std::vector<Cfg> c = {
      {Precision::kF32, 1}, {Precision::kF32, 2}, {Precision::kBF16, 1}, {Precision::kBF16, 2}};
  return c;
}

Tensor rand_tensor(Shape s, std::mt19937& rng, float lo = -1.f, float hi = 1.f, DType dt = DType::kF32) {
  Tensor t = Tensor::empty(dt, s);
  std::uniform_real_distribution<float> u(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = u(rng);
    switch (dt) {
      case DType::kF32: t.data_as<float>()[i] = v; break;
      case DType::kBF16: t.data_as<uint16_t>()[i] = f32_to_bf16(v); break;
      case DType::kF16: t.data_as<uint16_t>()[i] = f32_to_f16(v); break;
      default: break;
    }
  }
  return t;
}

Tensor i32_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty(DType::kI32, Shape{static_cast<int64_t>(v.size())});
  if (!v.empty()) std::memcpy(t.data(), v.data(), v.size() * 4);
  return t;
}

Tensor nan_tensor(Shape s) {
  Tensor t = Tensor::empty(DType::kF32, s);
  std::fill(t.data_as<float>(), t.data_as<float>() + t.numel(), std::numeric_limits<float>::quiet_NaN());
  return t;
}

Node make_node(OpKind op, Shape out, OpParams p = {}) {
  Node n;
  n.op = op;
  n.name = op_kind_name(op);
  n.out_shape = out;
  n.p = p;
  return n;
}

Result<Tensor> run(Backend& be, const Node& n, const std::vector<Tensor>& ins) {
  std::vector<const Tensor*> ptrs;
  for (const Tensor& t : ins) ptrs.push_back(&t);
  Tensor out = nan_tensor(n.out_shape);
  Status s = be.compute(n, ptrs, out);
  if (!s.ok()) return s;
  return out;
}

// |got - ref| <= atol + rtol*|ref| everywhere (atol may be per element through `atol_of`).
::testing::AssertionResult close(const Tensor& got, const Tensor& ref, double rtol, double atol,
                                 const std::vector<double>* atol_of = nullptr) {
  if (got.shape() != ref.shape())
    return ::testing::AssertionFailure() << "shape " << got.shape().to_string() << " vs " << ref.shape().to_string();
  const float* g = got.data_as<const float>();
  const float* r = ref.data_as<const float>();
  int64_t bad = 0, worst = -1;
  double worst_ratio = 0.0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double err = std::fabs(static_cast<double>(g[i]) - r[i]);
    const double tol = (atol_of ? (*atol_of)[static_cast<size_t>(i)] : atol) + rtol * std::fabs(r[i]);
    const double ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0.0);
    if (!(err <= tol)) ++bad;  // NaN counts as bad
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.numel() << " elements out of tolerance; worst at "
                                       << worst << ": got " << g[worst] << " ref " << r[worst] << " (err/tol "
                                       << worst_ratio << ")";
}

::testing::AssertionResult exact(const Tensor& got, const Tensor& ref) { return close(got, ref, 0.0, 0.0); }

// Runs `n` on the reference and on every CPU config; checks each with `check(got, ref, cfg)`.
template <class Check>
void for_all_configs(const Node& n, const std::vector<Tensor>& ins, Check check) {
  auto ref_be = make_ref_backend();
  auto ref = run(*ref_be, n, ins);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  for (const Cfg& c : configs()) {
    auto be = make_cpu_backend(pool_of(c.threads), c.precision);
    auto got = run(*be, n, ins);
    ASSERT_TRUE(got.ok()) << c.name() << ": " << got.status().to_string();
    EXPECT_TRUE(check(*got, *ref, c)) << op_kind_name(n.op) << " " << c.name() << " out "
                                      << n.out_shape.to_string();
  }
}

float at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF32: return t.data_as<float>()[i];
    case DType::kBF16: return bf16_to_f32(t.data_as<uint16_t>()[i]);
    case DType::kF16: return f16_to_f32(t.data_as<uint16_t>()[i]);
    default: return NAN;
  }
}

// ---- reference semantics ------------------------------------------------------------------------------------

TEST(RefOps, ActivationsKnownValues) {
  // Values from the defining formulas evaluated in double precision (Python math).
  EXPECT_NEAR(ref::gelu_tanh(1.0f), 0.8411919906082768, 1e-7);
  EXPECT_NEAR(ref::gelu_tanh(-2.5f), -0.015084266089998577, 1e-8);
  EXPECT_NEAR(ref::gelu_tanh(0.3f), 0.18537092354275922, 1e-7);
  EXPECT_NEAR(ref::silu(1.0f), 0.7310585786300049, 1e-7);
  EXPECT_NEAR(ref::silu(-3.0f), -0.14227761953270035, 1e-7);
}

TEST(RefOps, SigmoidAndMeanRowsKnownValues) {
  const float x[4] = {0.f, 2.f, -3.f, 40.f};
  float y[4];
  ref::sigmoid(x, 4, y);
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_NEAR(y[1], 0.8807970779778823, 1e-7);
  EXPECT_NEAR(y[2], 0.04742587317756678, 1e-8);
  EXPECT_FLOAT_EQ(y[3], 1.f);
  // [2, 3, 2]: per batch element the mean of 3 rows.
  const float m[12] = {1, 2, 3, 4, 5, 6, -1, 0, -2, 0, -3, 9};
  float o[4];
  ref::mean_rows(m, 2, 3, 2, o);
  EXPECT_FLOAT_EQ(o[0], 3.f);
  EXPECT_FLOAT_EQ(o[1], 4.f);
  EXPECT_FLOAT_EQ(o[2], -2.f);
  EXPECT_FLOAT_EQ(o[3], 3.f);
}

TEST(RefOps, NormsKnownValues) {
  const float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 2}, b[4] = {0, 0, 0.5f, 0};
  float y[4];
  ref::layer_norm(x, 1, 4, w, b, 0.f, y);  // mean 2.5, biased var 1.25
  const double s = 1.0 / std::sqrt(1.25);
  EXPECT_NEAR(y[0], -1.5 * s, 1e-6);
  EXPECT_NEAR(y[1], -0.5 * s, 1e-6);
  EXPECT_NEAR(y[2], 0.5 * s + 0.5, 1e-6);
  EXPECT_NEAR(y[3], 2 * 1.5 * s, 1e-6);
  const float x2[2] = {3, 4}, w2[2] = {1, 0.5f};
  float y2[2];
  ref::rms_norm(x2, 1, 2, w2, 0.f, y2);  // mean square 12.5
  EXPECT_NEAR(y2[0], 3 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(y2[1], 0.5 * 4 / std::sqrt(12.5), 1e-6);
}

TEST(RefOps, AttentionUniformWeightsAndGqaMapping) {
  // q = 0: every allowed key gets the same weight, so out = mean of the allowed v rows. Hq = 4, Hkv = 2: query
  // head h must read kv head h / 2; causal with q_offset 2: query i sees keys 0..2+i.
  ref::AttentionDims a;
  a.B = 1, a.T = 3, a.S = 5, a.Hq = 4, a.Hkv = 2, a.D = 2, a.scale = 0.7f, a.causal = true, a.q_offset = 2;
  std::vector<float> q(3 * 4 * 2, 0.f), k(5 * 2 * 2), v(5 * 2 * 2), out(3 * 4 * 2);
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i % 7) - 3.f;
  for (int j = 0; j < 5; ++j)
    for (int h = 0; h < 2; ++h)
      for (int d = 0; d < 2; ++d) v[(j * 2 + h) * 2 + d] = static_cast<float>(100 * h + 10 * j + d);
  ref::attention(a, q.data(), k.data(), v.data(), out.data());
  for (int i = 0; i < 3; ++i)
    for (int h = 0; h < 4; ++h)
      for (int d = 0; d < 2; ++d) {
        const int n = 3 + i;  // keys 0..2+i
        double mean = 0;
        for (int j = 0; j < n; ++j) mean += 100 * (h / 2) + 10 * j + d;
        EXPECT_NEAR(out[(i * 4 + h) * 2 + d], mean / n, 1e-4) << "i " << i << " h " << h;
      }
  // One key: the output is that key's v whatever the logits.
  a.T = 1, a.S = 1, a.causal = false, a.q_offset = 0;
  std::vector<float> q1 = {1.5f, -2.f, 0.5f, 3.f, -1.f, 0.f, 2.f, 2.f};
  ref::attention(a, q1.data(), k.data(), v.data(), out.data());
  for (int h = 0; h < 4; ++h)
    for (int d = 0; d < 2; ++d) EXPECT_NEAR(out[h * 2 + d], v[(h / 2) * 2 + d], 1e-5);
}

TEST(RefOps, RopeRotatesPairsByPositionTimesInvFreq) {
  // D = 4: pairs (0, 2) with inv_freq 1 and (1, 3) with inv_freq theta^-0.5.
  const float theta = 100.f;
  float x[4] = {1.f, 2.f, 3.f, 4.f}, y[4];
  ref::rope(x, 1, 1, 1, 4, theta, 0, y);  // position 0: identity
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(y[i], x[i]);
  ref::rope(x, 1, 1, 1, 4, theta, 3, y);  // position 3
  const double a0 = 3.0, a1 = 3.0 * (1.0 / 10.0);
  EXPECT_NEAR(y[0], 1 * std::cos(a0) - 3 * std::sin(a0), 1e-6);
  EXPECT_NEAR(y[2], 3 * std::cos(a0) + 1 * std::sin(a0), 1e-6);
  EXPECT_NEAR(y[1], 2 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
  EXPECT_NEAR(y[3], 4 * std::cos(a1) + 2 * std::sin(a1), 1e-6);
}

TEST(RefOps, PatchifyIsConvWeightOrder) {
  const int64_t B = 2, C = 3, H = 6, W = 9;
  const int P = 3;
  std::vector<float> px(B * C * H * W), y(B * (H / P) * (W / P) * C * P * P);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < H; ++r)
        for (int64_t col = 0; col < W; ++col)
          px[((b * C + c) * H + r) * W + col] = static_cast<float>(b * 100000 + c * 10000 + r * 100 + col);
  ref::patchify(px.data(), B, C, H, W, P, y.data());
  // patch (py, px) of image b is token py*(W/P)+px; its element (c, r, col) is the pixel (c, py*P+r, px*P+col),
  // exactly what conv2d with weight [E, C, P, P] flattened to [E, C*P*P] multiplies it with.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t py = 0; py < H / P; ++py)
      for (int64_t pxi = 0; pxi < W / P; ++pxi)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t r = 0; r < P; ++r)
            for (int64_t col = 0; col < P; ++col) {
              const int64_t tok = b * (H / P) * (W / P) + py * (W / P) + pxi;
              EXPECT_EQ(y[tok * C * P * P + (c * P + r) * P + col],
                        static_cast<float>(b * 100000 + c * 10000 + (py * P + r) * 100 + pxi * P + col));
            }
}

// u8 frames [B, H, W, C]: the same (c, r, col) order per patch as the f32 CHW tiles, the bytes as floats.
TEST(RefOps, PatchifyU8FramesMatchesChwTiles) {
  const int64_t B = 2, C = 3, H = 6, W = 9;
  const int P = 3;
  std::vector<uint8_t> fr(B * H * W * C);
  std::vector<float> chw(B * C * H * W), a(B * (H / P) * (W / P) * C * P * P), b(a.size());
  for (int64_t i = 0; i < B; ++i)
    for (int64_t r = 0; r < H; ++r)
      for (int64_t col = 0; col < W; ++col)
        for (int64_t c = 0; c < C; ++c) {
          const uint8_t v = static_cast<uint8_t>((i * 131 + r * 17 + col * 5 + c * 71) % 256);
          fr[((i * H + r) * W + col) * C + c] = v;
          chw[((i * C + c) * H + r) * W + col] = static_cast<float>(v);
        }
  ref::patchify_u8_hwc(fr.data(), B, H, W, C, P, a.data());
  ref::patchify(chw.data(), B, C, H, W, P, b.data());
  EXPECT_EQ(a, b);
}

// A tiny strided-tensor emulation of torch's view / permute / reshape, to check pixel_shuffle against the exact
// op sequence of Idefics3Connector.pixel_shuffle (transformers/models/idefics3/modeling_idefics3.py).
struct Emu {
  std::vector<int64_t> shape;
  std::vector<float> data;  // contiguous
  Emu view(std::vector<int64_t> s) const {
    Emu e{std::move(s), data};
    return e;
  }
  Emu permute(const std::vector<int>& perm) const {  // then made contiguous (what reshape does after a permute)
    std::vector<int64_t> ns(perm.size()), strides(shape.size());
    int64_t st = 1;
    for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
      strides[static_cast<size_t>(i)] = st;
      st *= shape[static_cast<size_t>(i)];
    }
    for (size_t i = 0; i < perm.size(); ++i) ns[i] = shape[static_cast<size_t>(perm[i])];
    Emu out{ns, std::vector<float>(data.size())};
    std::vector<int64_t> idx(ns.size(), 0);
    for (size_t flat = 0; flat < data.size(); ++flat) {
      int64_t src = 0;
      for (size_t i = 0; i < ns.size(); ++i) src += idx[i] * strides[static_cast<size_t>(perm[i])];
      out.data[flat] = data[static_cast<size_t>(src)];
      for (int i = static_cast<int>(ns.size()) - 1; i >= 0; --i) {
        if (++idx[static_cast<size_t>(i)] < ns[static_cast<size_t>(i)]) break;
        idx[static_cast<size_t>(i)] = 0;
      }
    }
    return out;
  }
};

TEST(RefOps, PixelShuffleMatchesIdefics3ViewPermuteSequence) {
  for (auto [B, S, E, s] : std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{
           {1, 16, 3, 2}, {2, 64, 5, 4}, {1, 36, 2, 3}, {3, 9, 4, 1}, {1, 1024, 2, 4}}) {
    std::vector<float> x(static_cast<size_t>(B * S * E));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
    const int64_t h = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(S))));
    // bsz, seq, embed_dim = x.size(); height = width = sqrt(seq)
    Emu e{{B, S, E}, x};
    e = e.view({B, h, h, E});
    e = e.view({B, h, h / s, E * s});
    e = e.permute({0, 2, 1, 3});
    e = e.view({B, h / s, h / s, E * s * s});
    e = e.permute({0, 2, 1, 3});
    e = e.view({B, S / (s * s), E * s * s});
    std::vector<float> y(x.size());
    ref::pixel_shuffle(x.data(), B, S, E, s, y.data());
    EXPECT_EQ(y, e.data) << "B " << B << " S " << S << " E " << E << " s " << s;
  }
}

// ---- CPU backend vs reference: every op -------------------------------------------------------------------

TEST(OpsConsistency, Linear) {
  std::mt19937 rng(1);
  struct Case { int64_t M, K, N; };
  for (const Case& cs : {Case{1, 64, 32}, Case{7, 33, 17}, Case{64, 128, 96}, Case{3, 768, 5}, Case{130, 40, 70}})
    for (DType wdt : {DType::kF32, DType::kBF16, DType::kF16})
      for (bool bias : {false, true}) {
        Tensor x = rand_tensor(Shape{1, cs.M, cs.K}, rng);
        Tensor w = rand_tensor(Shape{cs.N, cs.K}, rng, -1.f, 1.f, wdt);
        Tensor b = rand_tensor(Shape{cs.N}, rng);
        std::vector<Tensor> ins = {x, w};
        if (bias) ins.push_back(b);
        Node n = make_node(OpKind::kLinear, Shape{1, cs.M, cs.N});
        // Per-output bound base: S = sum_k |x_k w_k|.
        std::vector<double> S(static_cast<size_t>(cs.M * cs.N));
        for (int64_t m = 0; m < cs.M; ++m)
          for (int64_t j = 0; j < cs.N; ++j) {
            double s = 0;
            for (int64_t k = 0; k < cs.K; ++k) s += std::fabs(x.data_as<float>()[m * cs.K + k] * at(w, j * cs.K + k));
            S[static_cast<size_t>(m * cs.N + j)] = s;
          }
        for_all_configs(n, ins, [&](const Tensor& got, const Tensor& ref, const Cfg& c) {
          std::vector<double> tol(S.size());
          for (size_t i = 0; i < S.size(); ++i)
            tol[i] = (c.precision == Precision::kBF16 ? std::ldexp(1.0, -7) + 1e-5 : 1e-5) * S[i] + 1e-6;
          return close(got, ref, 0.0, 0.0, &tol);
        });
      }
}

TEST(OpsConsistency, AddMulCyclicBroadcast) {
  std::mt19937 rng(2);
  struct Case { Shape a, b; };
  const std::vector<Case> cases = {{Shape{5, 7}, Shape{7}},           {Shape{2, 3, 33}, Shape{3, 33}},
                                   {Shape{4, 1000}, Shape{4, 1000}}, {Shape{3, 17}, Shape{1}},
                                   {Shape{1, 1}, Shape{1}},          {Shape{2, 1024, 768}, Shape{1024, 768}},
                                   {Shape{9, 5}, Shape{5}},          {Shape{70002}, Shape{3}}};
  for (const Case& cs : cases)
    for (DType bdt : {DType::kF32, DType::kBF16})
      for (OpKind op : {OpKind::kAdd, OpKind::kMul}) {
        Tensor a = rand_tensor(cs.a, rng), b = rand_tensor(cs.b, rng, -1.f, 1.f, bdt);
        for_all_configs(make_node(op, cs.a), {a, b},
                        [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
      }
}

TEST(OpsConsistency, LayerNormAndRmsNorm) {
  std::mt19937 rng(3);
  for (Shape s : {Shape{1, 768}, Shape{7, 33}, Shape{3, 5, 1024}, Shape{2, 1}, Shape{1, 1, 3}, Shape{64, 576}})
    for (DType pdt : {DType::kF32, DType::kBF16}) {
      const int64_t C = s.cols();
      Tensor x = rand_tensor(s, rng, -2.f, 3.f);  // mean ~0.5: the two-pass variance matters
      Tensor w = rand_tensor(Shape{C}, rng, 0.5f, 1.5f, pdt), b = rand_tensor(Shape{C}, rng, -0.5f, 0.5f, pdt);
      OpParams p;
      p.eps = 1e-6f;
      for_all_configs(make_node(OpKind::kLayerNorm, s, p), {x, w, b},
                      [](const Tensor& g, const Tensor& r, const Cfg&) { return close(g, r, 1e-5, 1e-5); });
      p.eps = 1e-5f;
      for_all_configs(make_node(OpKind::kRMSNorm, s, p), {x, w},
                      [](const Tensor& g, const Tensor& r, const Cfg&) { return close(g, r, 1e-5, 1e-6); });
    }
}

TEST(OpsConsistency, Activations) {
  std::mt19937 rng(4);
  for (Shape s : {Shape{1, 1}, Shape{3, 37}, Shape{1024, 3072}, Shape{2, 5, 17}}) {
    Tensor x = rand_tensor(s, rng, -8.f, 8.f), u = rand_tensor(s, rng, -2.f, 2.f);
    // Special values at the start: 0, large magnitudes (saturation) and tiny ones.
    const float special[] = {0.f, 50.f, -50.f, 1e-20f, -1e-20f, 88.f, -88.f, -120.f, 120.f, 3.f};
    for (int64_t i = 0; i < std::min<int64_t>(x.numel(), 10); ++i) x.data_as<float>()[i] = special[i];
    for (OpKind op : {OpKind::kGeluTanh, OpKind::kSilu})
      for_all_configs(make_node(op, s), {x},
                      [](const Tensor& g, const Tensor& r, const Cfg&) { return close(g, r, 1e-5, 1e-6); });
    for_all_configs(make_node(OpKind::kSwiGLU, s), {x, u},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return close(g, r, 1e-5, 1e-6); });
  }
}

TEST(OpsConsistency, Rope) {
  std::mt19937 rng(5);
  struct Case { int64_t B, T; int H, D; float theta; int64_t pos0; };
  for (const Case& c : {Case{1, 5, 2, 64, 10000.f, 0}, Case{2, 3, 3, 16, 100000.f, 7}, Case{1, 1, 9, 64, 10000.f, 1500},
                        Case{1, 40, 3, 64, 10000.f, 0}, Case{1, 2, 1, 6, 10000.f, 70000}, Case{3, 7, 2, 24, 500.f, 3}}) {
    Tensor x = rand_tensor(Shape{c.B, c.T, static_cast<int64_t>(c.H) * c.D}, rng);
    OpParams p;
    p.n_heads = c.H;
    p.head_dim = c.D;
    p.rope_theta = c.theta;
    p.q_offset = c.pos0;
    for_all_configs(make_node(OpKind::kRope, x.shape(), p), {x},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return close(g, r, 1e-6, 1e-6); });
  }
}

TEST(OpsConsistency, PatchifyAndPixelShuffle) {
  std::mt19937 rng(6);
  for (auto [B, C, H, W, P] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int>>{
           {2, 3, 32, 48, 16}, {1, 3, 8, 8, 8}, {1, 1, 6, 6, 3}, {3, 3, 64, 64, 8}}) {
    Tensor px = rand_tensor(Shape{B, C, H, W}, rng);
    OpParams p;
    p.patch = P;
    for_all_configs(make_node(OpKind::kPatchify, Shape{B, (H / P) * (W / P), C * P * P}, p), {px},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
    Tensor fr = Tensor::empty(DType::kU8, Shape{B, H, W, C});  // u8 frames, HWC
    for (int64_t i = 0; i < fr.numel(); ++i) fr.data_as<uint8_t>()[i] = static_cast<uint8_t>(rng() >> 24);
    for_all_configs(make_node(OpKind::kPatchify, Shape{B, (H / P) * (W / P), C * P * P}, p), {fr},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
  }
  for (auto [B, S, E, s] : std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{
           {2, 64, 8, 2}, {1, 16, 3, 4}, {1, 36, 5, 3}, {2, 9, 4, 1}, {2, 1024, 64, 4}}) {
    Tensor x = rand_tensor(Shape{B, S, E}, rng);
    OpParams p;
    p.shuffle = s;
    for_all_configs(make_node(OpKind::kPixelShuffle, Shape{B, S / (s * s), E * s * s}, p), {x},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
  }
}

TEST(OpsConsistency, GetRowsScatterRowsRowsCopy) {
  std::mt19937 rng(7);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    Tensor table = rand_tensor(Shape{50, 33}, rng, -3.f, 3.f, dt);
    Tensor ids = i32_tensor({0, 49, 7, 7, 13});
    for_all_configs(make_node(OpKind::kGetRows, Shape{5, 33}), {table, ids},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
  }
  {
    Tensor base = rand_tensor(Shape{10, 7}, rng), src = rand_tensor(Shape{3, 7}, rng);
    for_all_configs(make_node(OpKind::kScatterRows, Shape{10, 7}), {base, src, i32_tensor({0, 9, 4})},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
    // The scattered rows really are src's and the others base's (not only "equal to the reference").
    auto be = make_cpu_backend(pool_of(2), Precision::kF32);
    auto out = run(*be, make_node(OpKind::kScatterRows, Shape{10, 7}), {base, src, i32_tensor({0, 9, 4})});
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->data_as<float>()[9 * 7 + 3], src.data_as<float>()[1 * 7 + 3]);
    EXPECT_EQ(out->data_as<float>()[5 * 7 + 2], base.data_as<float>()[5 * 7 + 2]);
  }
  {
    Tensor x = rand_tensor(Shape{2, 5, 6}, rng);
    OpParams p;
    p.row_begin = 3;
    p.row_end = 8;
    for_all_configs(make_node(OpKind::kRows, Shape{5, 6}, p), {x},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
    for_all_configs(make_node(OpKind::kCopy, Shape{2, 5, 6}), {x},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
    for_all_configs(make_node(OpKind::kReshape, Shape{10, 6}), {x},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
    Tensor big = rand_tensor(Shape{3, 1 << 19}, rng);  // > 1 MiB: the copy splits over the pool
    for_all_configs(make_node(OpKind::kCopy, big.shape()), {big},
                    [](const Tensor& g, const Tensor& r, const Cfg&) { return exact(g, r); });
  }
}

// ---- attention --------------------------------------------------------------------------------------------

struct AttnCase {
  int64_t B, T, S;
  int Hq, Hkv, D;
  bool causal;
  int64_t q_offset;
  std::string label() const {
    return "B" + std::to_string(B) + " T" + std::to_string(T) + " S" + std::to_string(S) + " H" +
           std::to_string(Hq) + "/" + std::to_string(Hkv) + " D" + std::to_string(D) + (causal ? " causal" : "") +
           " off" + std::to_string(q_offset);
  }
};

std::vector<AttnCase> attention_cases() {
  return {
      {1, 67, 67, 4, 4, 64, false, 0},     // vision-like, odd T
      {2, 33, 33, 2, 2, 64, false, 0},     // batch > 1
      {1, 130, 130, 6, 2, 64, true, 0},    // GQA 3, causal prefill
      {1, 40, 100, 4, 1, 64, true, 60},    // GQA 4, causal continuation (q_offset)
      {1, 21, 21, 4, 4, 16, true, 0},      // tiny-model head dim
      {2, 17, 29, 3, 3, 16, false, 0},     // T != S, odd
      {1, 1, 1, 9, 3, 64, true, 0},        // decode, first token
      {1, 1, 37, 9, 3, 64, true, 36},      // decode
      {1, 1, 1500, 9, 3, 64, true, 1499},  // decode, long S (keys split over threads)
      {1, 1, 2100, 4, 1, 64, true, 2099},  // decode GQA 4, long S
      {1, 2, 700, 4, 4, 64, false, 0},     // few rows, long S
      {1, 5, 300, 9, 3, 64, true, 295},    // short prefill on a cache (15 rows per kv head)
      {1, 9, 9, 2, 1, 24, true, 0},        // D not a multiple of 16
      {1, 3, 5, 2, 2, 8, false, 0},        // D = 8
      {1, 64, 1024, 2, 2, 64, false, 0},   // long S, full tiles
      // tiled f32 kernel edges: O in 4 + 1 zmm per row and a 13-key tail tile; two 4-zmm passes over V rows with
      // causal tile edges; SigLIP's head layout (12 heads: V rows 3072 bytes apart) with row and key tails
      {1, 77, 77, 3, 3, 80, false, 0},
      {1, 50, 150, 2, 1, 128, true, 100},
      {1, 140, 140, 12, 12, 64, false, 0},
  };
}

struct AttnData {
  Tensor q, k, v;
  double vmax = 0;
  double logit_l1 = 0;  // max over (b, h, i, j) of scale * sum_d |q_id k_jd|
};

AttnData make_attn_data(const AttnCase& c, float scale, std::mt19937& rng) {
  AttnData d;
  d.q = rand_tensor(Shape{c.B, c.T, static_cast<int64_t>(c.Hq) * c.D}, rng, -1.f, 1.f);
  d.k = rand_tensor(Shape{c.B, c.S, static_cast<int64_t>(c.Hkv) * c.D}, rng, -1.f, 1.f);
  d.v = rand_tensor(Shape{c.B, c.S, static_cast<int64_t>(c.Hkv) * c.D}, rng, -2.f, 2.f);
  for (int64_t i = 0; i < d.v.numel(); ++i) d.vmax = std::max(d.vmax, std::fabs(double(d.v.data_as<float>()[i])));
  const int G = c.Hq / c.Hkv;
  for (int64_t b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h)
      for (int64_t i = 0; i < c.T; ++i)
        for (int64_t j = 0; j < c.S; ++j) {
          double s = 0;
          const float* qr = d.q.data_as<float>() + ((b * c.T + i) * c.Hq + h) * c.D;
          const float* kr = d.k.data_as<float>() + ((b * c.S + j) * c.Hkv + h / G) * c.D;
          for (int x = 0; x < c.D; ++x) s += std::fabs(double(qr[x]) * kr[x]);
          d.logit_l1 = std::max(d.logit_l1, s * scale);
        }
  return d;
}

// Max and mean absolute error, in units of max|v|.
std::pair<double, double> attn_errors(const Tensor& got, const Tensor& ref, double vmax) {
  double mx = 0, sum = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double e = std::fabs(double(got.data_as<float>()[i]) - ref.data_as<float>()[i]);
    mx = std::isnan(e) ? INFINITY : std::max(mx, e);
    sum += e;
  }
  return {mx / vmax, sum / std::max<int64_t>(1, got.numel()) / vmax};
}

double bf16_attention_bound(double logit_l1) {
  const double E = (std::ldexp(1.0, -7) + std::ldexp(1.0, -15)) * logit_l1;
  return std::expm1(2 * E) + std::ldexp(1.0, -7) + 1e-4;
}

TEST(OpsConsistency, AttentionThroughBackend) {
  std::mt19937 rng(8);
  for (const AttnCase& c : attention_cases()) {
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    AttnData d = make_attn_data(c, scale, rng);
    OpParams p;
    p.n_heads = c.Hq;
    p.n_kv_heads = c.Hkv;
    p.head_dim = c.D;
    p.scale = scale;
    p.causal = c.causal;
    p.q_offset = c.q_offset;
    Node n = make_node(OpKind::kAttention, d.q.shape(), p);
    for_all_configs(n, {d.q, d.k, d.v}, [&](const Tensor& g, const Tensor& r, const Cfg& cfg) {
      ref::AttentionDims a;
      a.B = c.B, a.T = c.T, a.S = c.S, a.Hq = c.Hq, a.Hkv = c.Hkv, a.D = c.D;
      const bool bf16 = cpu::attention_kernel_for(a, cfg.precision) == cpu::AttnKernel::kTiledBF16;
      const auto [mx, mean] = attn_errors(g, r, d.vmax);
      if (!bf16) {
        if (mx <= 2e-5) return ::testing::AssertionSuccess();
        return ::testing::AssertionFailure() << c.label() << ": f32 max err " << mx << " * max|v|";
      }
      const double bound = bf16_attention_bound(d.logit_l1);
      if (mx <= bound && mean <= std::ldexp(1.0, -8)) return ::testing::AssertionSuccess();
      return ::testing::AssertionFailure() << c.label() << ": bf16 max err " << mx << " (bound " << bound
                                           << "), mean " << mean << " * max|v|";
    });
  }
}

TEST(OpsConsistency, AttentionEveryKernel) {
  std::mt19937 rng(9);
  const cpu::AttnKernel kernels[] = {cpu::AttnKernel::kGenericDirect, cpu::AttnKernel::kGenericTiled,
                                     cpu::AttnKernel::kDirectF32, cpu::AttnKernel::kTiledF32,
                                     cpu::AttnKernel::kTiledBF16, cpu::AttnKernel::kTiledF32V1};
  for (const AttnCase& c : attention_cases()) {
    if (c.S > 1000 && c.T > 1) continue;  // keep the matrix quick; covered through the backend above
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    AttnData d = make_attn_data(c, scale, rng);
    ref::AttentionDims a;
    a.B = c.B, a.T = c.T, a.S = c.S, a.Hq = c.Hq, a.Hkv = c.Hkv, a.D = c.D;
    a.scale = scale, a.causal = c.causal, a.q_offset = c.q_offset;
    Tensor ref_out = nan_tensor(d.q.shape());
    ref::attention(a, d.q.data_as<float>(), d.k.data_as<float>(), d.v.data_as<float>(), ref_out.data_as<float>());
    for (cpu::AttnKernel kern : kernels) {
      if (!cpu::attention_kernel_usable(kern, a)) continue;
      for (int threads : {1, 2}) {
        Tensor out = nan_tensor(d.q.shape());
        Status st = cpu::attention(a, d.q.data_as<float>(), d.k.data_as<float>(), d.v.data_as<float>(),
                                   out.data_as<float>(), Precision::kF32, pool_of(threads), kern);
        ASSERT_TRUE(st.ok()) << st.to_string();
        const auto [mx, mean] = attn_errors(out, ref_out, d.vmax);
        if (kern == cpu::AttnKernel::kTiledBF16) {
          EXPECT_LE(mx, bf16_attention_bound(d.logit_l1)) << c.label() << " " << cpu::attn_kernel_name(kern);
          EXPECT_LE(mean, std::ldexp(1.0, -8)) << c.label() << " " << cpu::attn_kernel_name(kern);
        } else {
          EXPECT_LE(mx, 2e-5) << c.label() << " " << cpu::attn_kernel_name(kern) << " " << threads << "t";
        }
      }
    }
  }
}

TEST(OpsConsistency, AttentionLargeLogits) {
  // Logits of +-60 (far beyond the random cases): the online softmax must rescale without overflow or NaN.
  std::mt19937 rng(10);
  AttnCase c{1, 70, 200, 2, 1, 64, true, 130};
  AttnData d = make_attn_data(c, 1.f, rng);
  for (int64_t i = 0; i < d.q.numel(); ++i) d.q.data_as<float>()[i] *= 8.f;
  ref::AttentionDims a;
  a.B = c.B, a.T = c.T, a.S = c.S, a.Hq = c.Hq, a.Hkv = c.Hkv, a.D = c.D;
  a.scale = 0.125f, a.causal = true, a.q_offset = c.q_offset;
  Tensor ref_out = nan_tensor(d.q.shape());
  ref::attention(a, d.q.data_as<float>(), d.k.data_as<float>(), d.v.data_as<float>(), ref_out.data_as<float>());
  for (cpu::AttnKernel kern : {cpu::AttnKernel::kGenericTiled, cpu::AttnKernel::kTiledF32, cpu::AttnKernel::kDirectF32,
                               cpu::AttnKernel::kTiledF32V1}) {
    if (!cpu::attention_kernel_usable(kern, a)) continue;
    Tensor out = nan_tensor(d.q.shape());
    ASSERT_TRUE(cpu::attention(a, d.q.data_as<float>(), d.k.data_as<float>(), d.v.data_as<float>(),
                               out.data_as<float>(), Precision::kF32, pool_of(2), kern)
                    .ok());
    // A logit error of 2^-24 * 60 moves weights by ~4e-6 relatively: 1e-4 * max|v| leaves margin.
    EXPECT_LE(attn_errors(out, ref_out, d.vmax).first, 1e-4) << cpu::attn_kernel_name(kern);
  }
}

// ---- errors --------------------------------------------------------------------------------------------------

TEST(OpsErrors, BadInputsGiveStatusNotCrash) {
  std::mt19937 rng(11);
  auto ref_be = make_ref_backend();
  auto cpu_be = make_cpu_backend(pool_of(2), Precision::kF32);
  for (Backend* be : {ref_be.get(), cpu_be.get()}) {
    Tensor table = rand_tensor(Shape{10, 4}, rng);
    auto r = run(*be, make_node(OpKind::kGetRows, Shape{2, 4}), {table, i32_tensor({3, 10})});
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("outside"), std::string::npos) << r.status().to_string();
    r = run(*be, make_node(OpKind::kGetRows, Shape{1, 4}), {table, i32_tensor({-1})});
    EXPECT_FALSE(r.ok());
    r = run(*be, make_node(OpKind::kScatterRows, Shape{10, 4}),
            {table, rand_tensor(Shape{1, 4}, rng), i32_tensor({12})});
    EXPECT_FALSE(r.ok());
    OpParams p;
    p.n_heads = 4, p.n_kv_heads = 3, p.head_dim = 8;  // 4 % 3 != 0
    Tensor q = rand_tensor(Shape{1, 2, 32}, rng), k = rand_tensor(Shape{1, 2, 24}, rng);
    r = run(*be, make_node(OpKind::kAttention, q.shape(), p), {q, k, k});
    EXPECT_EQ(r.status().code(), StatusCode::kShapeMismatch) << r.status().to_string();
    r = run(*be, make_node(OpKind::kLinear, Shape{2, 5}), {rand_tensor(Shape{2, 3}, rng), rand_tensor(Shape{5, 4}, rng)});
    EXPECT_EQ(r.status().code(), StatusCode::kShapeMismatch);
    r = run(*be, make_node(OpKind::kLayerNorm, Shape{2, 3}),
            {rand_tensor(Shape{2, 3}, rng), rand_tensor(Shape{3}, rng)});  // missing bias
    EXPECT_FALSE(r.ok());
    OpParams rp;
    rp.n_heads = 2, rp.head_dim = 3;  // odd head dim
    r = run(*be, make_node(OpKind::kRope, Shape{1, 1, 6}, rp), {rand_tensor(Shape{1, 1, 6}, rng)});
    EXPECT_FALSE(r.ok());
  }
}

// ---- a small graph through the Executor (weight packing via prepare_weights, bf16 weights) ------------------

TEST(OpsConsistency, TransformerBlockGraph) {
  std::mt19937 rng(12);
  const int64_t T = 19, C = 64, H = 4, Hkv = 2, D = 16, F = 96;
  Tensor x = rand_tensor(Shape{1, T, C}, rng);
  auto W = [&](int64_t n, int64_t k) { return rand_tensor(Shape{n, k}, rng, -0.2f, 0.2f, DType::kBF16); };
  Tensor wq = W(H * D, C), wk = W(Hkv * D, C), wv = W(Hkv * D, C), wo = W(C, H * D), wg = W(F, C), wu = W(F, C),
         wd = W(C, F);
  Tensor nw = rand_tensor(Shape{C}, rng, 0.8f, 1.2f, DType::kBF16), nb = rand_tensor(Shape{C}, rng, -0.1f, 0.1f);
  Tensor bq = rand_tensor(Shape{H * D}, rng, -0.1f, 0.1f);
  Graph g;
  TensorId xi = g.input("x", x);
  TensorId h = g.layer_norm("ln", xi, g.weight("ln.w", nw), g.weight("ln.b", nb), 1e-6f);
  TensorId q = g.linear("q", h, g.weight("wq", wq), g.weight("bq", bq));
  TensorId k = g.linear("k", h, g.weight("wk", wk));
  TensorId v = g.linear("v", h, g.weight("wv", wv));
  q = g.rope("q_rope", q, H, D, 10000.f, 0);
  k = g.rope("k_rope", k, Hkv, D, 10000.f, 0);
  TensorId a = g.attention("attn", q, k, v, H, Hkv, D, 0.25f, true, 0);
  TensorId o = g.add("res", xi, g.linear("o", a, g.weight("wo", wo)));
  TensorId n2 = g.rms_norm("rms", o, g.weight("rms.w", nw), 1e-5f);
  TensorId m = g.swiglu("swiglu", g.linear("gate", n2, g.weight("wg", wg)), g.linear("up", n2, g.weight("wu", wu)));
  TensorId y = g.add("out", o, g.linear("down", m, g.weight("wd", wd)));
  g.mark_output(y);
  ASSERT_TRUE(g.status().ok()) << g.status().to_string();

  auto ref_be = make_ref_backend();
  Executor ref_ex(ref_be.get(), nullptr);
  auto ref = ref_ex.run(g);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  double ymax = 0;
  for (int64_t i = 0; i < (*ref)[y].numel(); ++i) ymax = std::max(ymax, std::fabs(double((*ref)[y].data_as<float>()[i])));
  for (const Cfg& c : configs()) {
    auto be = make_cpu_backend(pool_of(c.threads), c.precision);
    Executor ex(be.get(), ref_be.get());
    for (int rep = 0; rep < 2; ++rep) {  // the second run reuses the packed weights and recycled buffers
      auto got = ex.run(g);
      ASSERT_TRUE(got.ok()) << got.status().to_string();
      // f32: weights are exact bf16 values widened, so only summation order differs. bf16: every GEMM input and
      // attention operand is rounded to bf16 (2^-8): a few 2^-8 relative over the block.
      const double tol = c.precision == Precision::kF32 ? 1e-4 : 0.03;
      EXPECT_TRUE(close((*got)[y], (*ref)[y], 0.0, tol * ymax)) << c.name() << " run " << rep;
    }
  }
}

}  // namespace
}  // namespace ev
