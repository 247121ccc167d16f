// Static decode steps (VlmModel::build_decode_step): the position from a tensor, attention over the cache's whole
// capacity masked by it, the new K/V row scattered in place. On the reference and the CPU backends the logits
// must equal the ordinary decode graph's (the same arithmetic over the same keys), and one graph must serve
// every step once its id and position tensors change. The new op forms (rope / attention with positions) are
// checked against their offset forms, and bad position tensors are refused with the node's name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/thread_pool.h"
#include "graph/backend.h"
#include "graph/executor.h"
#include "runtime/engine.h"
#include "text/sampling.h"

namespace {

const std::string kFixtures = EDGEVLM_FIXTURE_DIR;

ev::EngineOptions f32_options() {
  ev::EngineOptions o;
  o.precision = ev::Precision::kF32;
  o.vision_precision = ev::Precision::kF32;
  o.threads = 2;
  return o;
}

TEST(StaticDecode, MatchesTheOrdinaryDecodeGraph) {
  auto e = ev::Engine::load(kFixtures + "/tiny-smolvlm", f32_options());
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

// kArgmax picks as the host sampler does: highest value, lowest index on ties, NaN never; -1 for a row of NaNs.
TEST(StaticDecode, ArgmaxOpPicksLikeTheSampler) {
  const int64_t n = 1000;
  ev::Tensor x = ev::Tensor::empty(ev::DType::kF32, ev::Shape{4, n});
  float* p = x.data_as<float>();
  for (int64_t i = 0; i < 4 * n; ++i) p[i] = std::sin(0.37f * static_cast<float>(i));
  p[0] = NAN;
  p[10] = p[700] = 5.f;               // row 0: a tie
  p[n + n - 1] = 3.f;                 // row 1: the last column
  for (int64_t j = 0; j < n; ++j) p[2 * n + j] = NAN;  // row 2: all NaN
  p[3 * n + 1] = INFINITY;            // row 3: +inf
  auto ref = ev::make_ref_backend();
  ev::ThreadPool pool(2);
  auto cpu = ev::make_cpu_backend(&pool, ev::Precision::kF32);
  for (ev::Backend* be : {ref.get(), cpu.get()}) {
    ev::Graph g;
    ev::TensorId y = g.argmax("y", g.input("x", x));
    g.mark_output(y);
    ASSERT_TRUE(g.status().ok());
    ev::Executor ex(be, ref.get());
    auto r = ex.run(g);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const ev::Tensor& t = (*r)[y];
    ASSERT_EQ(t.dtype(), ev::DType::kI32);
    ASSERT_EQ(t.numel(), 4);
    for (int64_t b = 0; b < 4; ++b)
      EXPECT_EQ(t.data_as<int32_t>()[b], ev::text::argmax(p + b * n, static_cast<int>(n))) << "row " << b << " on " << be->name();
    EXPECT_EQ(t.data_as<int32_t>()[0], 10);
    EXPECT_EQ(t.data_as<int32_t>()[2], -1);
  }
  ev::Graph bad;
  bad.argmax("y", bad.input("x", ev::Tensor::empty(ev::DType::kF32, ev::Shape{2, 3, 4})));
  EXPECT_FALSE(bad.status().ok());
}

// Engine::decode_greedy (chunks of static steps, the argmax feeding the next embedding inside the graph) gives
// the tokens of picking on the host after each step, whatever the chunk, and leaves the cache where they do.
TEST(StaticDecode, DeviceGreedyMatchesStepByStepPicks) {
  auto e = ev::Engine::load(kFixtures + "/tiny-smolvlm", f32_options());
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  const ev::VlmModel& m = (*e)->model();
  const int V = static_cast<int>(m.vocab_size());
  std::vector<int32_t> prompt = {5, 17, 42, 9, 100, 3};
  ev::KvCache c1 = m.make_cache(40);
  auto lg = (*e)->forward_text(prompt, ev::Tensor(), c1, 1);
  ASSERT_TRUE(lg.ok());
  std::vector<int32_t> host = {ev::text::argmax(lg->data_as<float>(), V)};
  for (int k = 0; k < 10; ++k) {
    lg = (*e)->forward_text({host.back()}, ev::Tensor(), c1, 1);
    ASSERT_TRUE(lg.ok());
    host.push_back(ev::text::argmax(lg->data_as<float>(), V));
  }
  for (int chunk : {1, 4, 10}) {
    ev::KvCache c2 = m.make_cache(40);
    ASSERT_TRUE((*e)->forward_text(prompt, ev::Tensor(), c2, 1).ok());
    auto r = (*e)->decode_greedy(host[0], c2, 10, chunk);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(*r, std::vector<int32_t>(host.begin() + 1, host.end())) << "chunk " << chunk;
    EXPECT_EQ(c2.size(), c1.size()) << "chunk " << chunk;
  }
  ev::KvCache small = m.make_cache(12);
  ASSERT_TRUE((*e)->forward_text(prompt, ev::Tensor(), small, 1).ok());
  auto full = (*e)->decode_greedy(host[0], small, 5, 4);  // 6 + 2 chunks of 4 > 12
  ASSERT_FALSE(full.ok());
  EXPECT_NE(full.status().message().find("capacity of 12"), std::string::npos) << full.status().to_string();
  EXPECT_FALSE((*e)->decode_greedy(V, small, 2, 1).ok());
  EXPECT_FALSE((*e)->decode_greedy(host[0], small, 2, 0).ok());
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
