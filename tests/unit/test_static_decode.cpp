// Static decode steps (VlmModel::build_decode_step): the position from a tensor, attention over the cache's whole
// capacity masked by it, the new K/V row scattered in place. On the reference and the CPU backends the logits
// must equal the ordinary decode graph's (the same arithmetic over the same keys), and one graph must serve
// every step once its id and position tensors change. The new op forms (rope / attention with positions) are
// checked against their offset forms, and bad position tensors are refused with the node's name.
#include <gtest/gtest.h>

#include <cstring>

#include "graph/backend.h"
#include "graph/executor.h"
#include "runtime/engine.h"

namespace {

const std::string kFixtures = EDGEVLM_FIXTURE_DIR;

TEST(StaticDecode, MatchesTheOrdinaryDecodeGraph) {
  ev::EngineOptions o;
  o.precision = ev::Precision::kF32;
  o.vision_precision = ev::Precision::kF32;
  o.threads = 2;
  auto e = ev::Engine::load(kFixtures + "/tiny-smolvlm", o);
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  const ev::VlmModel& m = (*e)->model();
  auto ref = ev::make_ref_backend();
  for (ev::Backend* be : {ref.get(), static_cast<ev::Backend*>(nullptr)}) {
    ev::Executor ex(be ? be : (*e)->executor().backend(), ref.get());
    std::vector<int32_t> prompt = {5, 17, 42, 9, 100, 3};
    ev::KvCache c1 = m.make_cache(16), c2 = m.make_cache(16);
    // Prefill both caches the ordinary way.
    for (ev::KvCache* c : {&c1, &c2}) {
      ev::Graph g;
      ev::Tensor ids = ev::Tensor::empty(ev::DType::kI32, ev::Shape{static_cast<int64_t>(prompt.size())});
      std::memcpy(ids.data(), prompt.data(), prompt.size() * 4);
      ev::TensorId lg = m.build_decoder(g, m.build_embed(g, g.input("ids", ids)), static_cast<int64_t>(prompt.size()), *c, 1);
      g.mark_output(lg);
      ASSERT_TRUE(ex.run(g).ok());
      c->set_size(static_cast<int64_t>(prompt.size()));
    }
    // One static graph for every step.
    ev::Tensor sid = ev::Tensor::empty(ev::DType::kI32, ev::Shape{1}), spos = ev::Tensor::empty(ev::DType::kI32, ev::Shape{1});
    ev::Graph gs;
    ev::TensorId slg = m.build_decode_step(gs, m.build_embed(gs, gs.input("ids", sid)), c2, gs.input("pos", spos));
    gs.mark_output(slg);
    ASSERT_TRUE(gs.status().ok()) << gs.status().to_string();
    int32_t tok = 11;
    for (int step = 0; step < 5; ++step) {
      ev::Graph gd;
      ev::Tensor ids = ev::Tensor::empty(ev::DType::kI32, ev::Shape{1});
      ids.data_as<int32_t>()[0] = tok;
      ev::TensorId lg = m.build_decoder(gd, m.build_embed(gd, gd.input("ids", ids)), 1, c1, 1);
      gd.mark_output(lg);
      auto a = ex.run(gd);
      ASSERT_TRUE(a.ok()) << a.status().to_string();
      c1.set_size(c1.size() + 1);
      sid.data_as<int32_t>()[0] = tok;
      spos.data_as<int32_t>()[0] = static_cast<int32_t>(c2.size());
      auto b = ex.run(gs);
      ASSERT_TRUE(b.ok()) << b.status().to_string();
      c2.set_size(c2.size() + 1);
      const ev::Tensor &la = (*a)[lg], &lb = (*b)[slg];
      ASSERT_EQ(la.numel(), lb.numel());
      double md = 0, mr = 0;
      for (int64_t i = 0; i < la.numel(); ++i) {
        md = std::max(md, std::fabs(double(la.data_as<float>()[i]) - lb.data_as<float>()[i]));
        mr = std::max(mr, std::fabs(double(la.data_as<float>()[i])));
      }
      EXPECT_LE(md / mr, 1e-5) << "step " << step << (be ? " (ref)" : " (cpu)");
      int32_t best = 0;
      for (int64_t v = 1; v < la.numel(); ++v)
        if (la.data_as<float>()[v] > la.data_as<float>()[best]) best = static_cast<int32_t>(v);
      tok = best;
    }
  }
}

TEST(StaticDecode, BadPositionTensorsAreRefused) {
  ev::Graph g;
  ev::TensorId x = g.input("x", ev::Tensor::empty(ev::DType::kF32, ev::Shape{1, 2, 8}));
  ev::TensorId p = g.input("p", ev::Tensor::empty(ev::DType::kF32, ev::Shape{2}));  // f32, not i32
  g.rope("r", x, 1, 8, 10000.f, 0, p);
  EXPECT_FALSE(g.status().ok());
  EXPECT_NE(g.status().message().find("positions"), std::string::npos) << g.status().to_string();
  ev::Graph g2;
  ev::TensorId q = g2.input("q", ev::Tensor::empty(ev::DType::kF32, ev::Shape{1, 2, 8}));
  ev::TensorId p3 = g2.input("p", ev::Tensor::empty(ev::DType::kI32, ev::Shape{3}));  // 3 positions for 2 queries
  g2.attention("a", q, q, q, 1, 1, 8, 1.f, true, 0, p3);
  EXPECT_FALSE(g2.status().ok());
}

}  // namespace
