// Fused decoder projections (models/llama_text.h "Fused projections": q/k/v and gate/up as one Linear each) and the
// ops that split the fused outputs (graph.h kCols, the one-input kSwiGLU). The fused graph must give exactly the
// unfused graph's result (bit for bit) on both backends, for prefill (kCols copies) and decode (kCols views).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "graph/backend.h"
#include "graph/executor.h"
#include "graph/graph.h"
#include "runtime/engine.h"

namespace ev {
namespace {

const std::string kFixtures = EDGEVLM_FIXTURE_DIR;

Tensor rand_f32(Shape s, std::mt19937& rng) {
  Tensor t = Tensor::empty(DType::kF32, s);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = nd(rng);
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

TEST(DecodeFusion, ColsAndFusedSwiGLUMatchTheUnfusedOps) {
  std::mt19937 rng(5);
  ThreadPool pool(2);
  auto ref_be = make_ref_backend();
  auto cpu_be = make_cpu_backend(&pool, Precision::kF32);
  for (int64_t rows : {1, 3}) {  // 1 row: kCols are views; 3 rows: strided copies
    SCOPED_TRACE(rows);
    const int64_t C = 40;
    Tensor x = rand_f32(Shape{rows, 3 * C}, rng);   // [q | k | v]-like
    Tensor gu = rand_f32(Shape{rows, 2 * C}, rng);  // [gate | up]
    Tensor gate = Tensor::empty(DType::kF32, Shape{rows, C}), up = Tensor::empty(DType::kF32, Shape{rows, C});
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(gate.data_as<float>() + r * C, gu.data_as<float>() + r * 2 * C, C * 4);
      std::memcpy(up.data_as<float>() + r * C, gu.data_as<float>() + r * 2 * C + C, C * 4);
    }
    for (Backend* be : {ref_be.get(), cpu_be.get()}) {
      SCOPED_TRACE(be->name());
      Graph g;
      TensorId xi = g.input("x", x);
      TensorId a = g.cols("a", xi, 0, C), b = g.cols("b", xi, C, 2 * C), c = g.cols("c", xi, 2 * C, 3 * C);
      TensorId all = g.cols("all", xi, 0, 3 * C);
      EXPECT_EQ(is_view(g, g.node(a)), rows == 1);
      EXPECT_TRUE(is_view(g, g.node(all)));
      // Consumers of the views (a copy and an add), as q/k/v have in the decoder.
      Tensor zero = Tensor::empty(DType::kF32, Shape{1});
      zero.data_as<float>()[0] = 0.f;
      TensorId b2 = g.add("b2", b, g.input("zero", zero));
      TensorId s1 = g.swiglu("s1", g.input("gu", gu));
      TensorId s2 = g.swiglu("s2", g.input("gate", gate), g.input("up", up));
      for (TensorId id : {a, c, all, b2, s1, s2}) g.mark_output(id);
      ASSERT_TRUE(g.status().ok()) << g.status().to_string();
      Executor ex(be, ref_be.get());
      auto r = ex.run(g);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      const ExecResult& res = r.value();
      EXPECT_EQ(res[a].shape(), (Shape{rows, C}));
      for (int64_t row = 0; row < rows; ++row)
        for (int64_t j = 0; j < C; ++j) {
          const float* xr = x.data_as<float>() + row * 3 * C;
          ASSERT_EQ(res[a].data_as<float>()[row * C + j], xr[j]);
          ASSERT_EQ(res[b2].data_as<float>()[row * C + j], xr[C + j]);
          ASSERT_EQ(res[c].data_as<float>()[row * C + j], xr[2 * C + j]);
        }
      EXPECT_TRUE(same_bits(res[all], x));
      EXPECT_TRUE(same_bits(res[s1], res[s2]));
    }
  }
}

// The tiny SmolVLM fixture (2 decoder layers, GQA): logits of a prefill and of decode steps, fused and unfused,
// on the CPU backend in f32 and bf16 and on the reference backend.
TEST(DecodeFusion, FusedDecoderGivesTheUnfusedLogitsExactly) {
  struct Cfg {
    Precision p;
    bool ref;
  };
  for (Cfg c : {Cfg{Precision::kF32, false}, Cfg{Precision::kBF16, false}, Cfg{Precision::kF32, true}}) {
    SCOPED_TRACE(std::string(precision_name(c.p)) + (c.ref ? " ref" : " cpu"));
    EngineOptions o;
    o.precision = c.p;
    o.vision_precision = c.p;
    o.threads = 2;
    o.use_reference_backend = c.ref;
    auto er = Engine::load(kFixtures + "/tiny-smolvlm", o);
    ASSERT_TRUE(er.ok()) << er.status().to_string();
    auto e = std::move(er).value();
    VlmModel& model = const_cast<VlmModel&>(e->model());
    std::vector<std::vector<float>> out[2];
    for (int fused = 0; fused < 2; ++fused) {
      LinearPlan plan = e->linear_plan();
      const int groups = model.select_fused_linears(fused == 1, &plan);
      EXPECT_EQ(groups > 0, fused == 1);
      KvCache cache = model.make_cache(32);
      std::vector<int32_t> ids = {1, 5, 9, 2, 7, 3};
      for (int step = 0; step < 3; ++step) {
        auto l = e->forward_text(ids, Tensor(), cache, 1);
        ASSERT_TRUE(l.ok()) << l.status().to_string();
        const float* p = l.value().data_as<float>();
        out[fused].emplace_back(p, p + l.value().numel());
        ids = {static_cast<int32_t>(4 + step)};
      }
    }
    ASSERT_EQ(out[0].size(), out[1].size());
    for (size_t s = 0; s < out[0].size(); ++s) {
      ASSERT_EQ(out[0][s].size(), out[1][s].size());
      EXPECT_EQ(std::memcmp(out[0][s].data(), out[1][s].data(), out[0][s].size() * 4), 0) << "step " << s;
    }
    // The engine's default after load: fused.
    LinearPlan plan = e->linear_plan();
    EXPECT_GT(model.select_fused_linears(true, &plan), 0);
  }
}

}  // namespace
}  // namespace ev
