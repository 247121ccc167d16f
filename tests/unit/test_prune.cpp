// Token pruning: the spec syntax, the importance and top-k ops (CPU against the reference), and the pruned tower's
// invariants on the tiny fixture model (a token dropped after layer l keeps exactly its layer-l state; pruning
// that keeps everything changes nothing; the CPU backend agrees with the reference backend).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "graph/backend.h"
#include "graph/executor.h"
#include "kernels/cpu/attention.h"
#include "kernels/ref/ref_ops.h"
#include "models/token_prune.h"
#include "runtime/engine.h"

namespace {

const std::string kFixtures = EDGEVLM_FIXTURE_DIR;

std::vector<float> randv(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

TEST(PruneSpec, ParsesAndPrintsCanonically) {
  auto p = ev::parse_prune_spec("1:0.5,3:0.25,llm:0.5");
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  ASSERT_EQ(p->steps.size(), 2u);
  EXPECT_EQ(p->steps[0].layer, 1);
  EXPECT_FLOAT_EQ(p->steps[1].keep, 0.25f);
  EXPECT_FLOAT_EQ(p->llm_keep, 0.5f);
  EXPECT_EQ(p->to_string(), "1:0.5,3:0.25,llm:0.5");
  auto again = ev::parse_prune_spec(p->to_string());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(*again == *p);
  auto r = ev::parse_prune_spec("2:0.4,random=7");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->score, ev::PruneSpec::Score::kRandom);
  EXPECT_EQ(r->seed, 7u);
  EXPECT_FALSE(ev::parse_prune_spec("none")->active());
  EXPECT_EQ(ev::parse_prune_spec("input:160")->input_size, 160);
}

TEST(PruneSpec, RefusesNonsenseWithTheItem) {
  for (const char* bad : {"1:0.5,1:0.4", "3:0.5,4:0.6", "1:0", "1:1.5", "x:0.5", "llm:2", "input:-3", "1:0.5,,2:0.3",
                          "random=abc", "1", "1:nan"}) {
    auto p = ev::parse_prune_spec(bad);
    EXPECT_FALSE(p.ok()) << bad;
    if (!p.ok()) {
      EXPECT_NE(p.status().message().find("--prune"), std::string::npos) << p.status().to_string();
    }
  }
  ev::VlmConfig cfg;
  cfg.vision.num_hidden_layers = 6;
  cfg.vision.image_size = 224;
  cfg.vision.patch_size = 16;
  cfg.scale_factor = 2;
  EXPECT_FALSE(ev::validate_prune_spec(*ev::parse_prune_spec("6:0.5"), cfg).ok());
  EXPECT_FALSE(ev::validate_prune_spec(*ev::parse_prune_spec("input:150"), cfg).ok());  // not a multiple of 32
  EXPECT_FALSE(ev::validate_prune_spec(*ev::parse_prune_spec("input:256"), cfg).ok());  // larger than the tile
  EXPECT_TRUE(ev::validate_prune_spec(*ev::parse_prune_spec("input:160"), cfg).ok());
  auto a = ev::resolve_prune_spec("auto", cfg, "");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->active());
  EXPECT_EQ(ev::resolve_prune_spec("auto", cfg, "2:0.5")->to_string(), "2:0.5");
  EXPECT_FALSE(ev::resolve_prune_spec("auto", cfg, "9:0.5").ok());
}

TEST(PruneSpec, KeepCount) {
  EXPECT_EQ(ev::prune_keep_count(0.5f, 196), 98);
  EXPECT_EQ(ev::prune_keep_count(0.25f, 196), 49);
  EXPECT_EQ(ev::prune_keep_count(0.001f, 196), 1);
  EXPECT_EQ(ev::prune_keep_count(1.f, 196), 196);
}

TEST(TopK, HighestFirstTiesByIndexOutputAscending) {
  const std::vector<float> s = {0.1f, 0.5f, 0.5f, 0.9f, NAN, 0.2f, 0.5f, 0.0f};
  // Two rows {0.1 .5 .5 .9} and {nan .2 .5 0}: flat indices b*n + j, ascending j, NaN ranked last.
  std::vector<int32_t> idx(6, -1);
  ev::ref::top_k_rows(s.data(), 2, 4, 3, idx.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2, 3, 5, 6, 7}));
  // A tie at the cut: of the three 0.5s and 0.9 in {.5 .9 .5 .5}, k = 2 keeps 0.9 and the first 0.5.
  const std::vector<float> t = {0.5f, 0.9f, 0.5f, 0.5f};
  std::vector<int32_t> two(2, -1);
  ev::ref::top_k_rows(t.data(), 1, 4, 2, two.data());
  EXPECT_EQ(two, (std::vector<int32_t>{0, 1}));
}

struct ScoreCase {
  int64_t B, T, S;
  int Hq, Hkv, D;
};

TEST(AttnScore, CpuMatchesReference) {
  ev::ThreadPool pool(2);
  for (const ScoreCase& c : {ScoreCase{1, 196, 196, 3, 3, 64}, ScoreCase{2, 50, 50, 4, 2, 16},
                             ScoreCase{3, 7, 9, 2, 1, 8}, ScoreCase{1, 300, 300, 1, 1, 32}}) {
    ev::ref::AttentionDims a;
    a.B = c.B, a.T = c.T, a.S = c.S, a.Hq = c.Hq, a.Hkv = c.Hkv, a.D = c.D;
    a.scale = 1.f / std::sqrt(static_cast<float>(c.D));
    const auto q = randv(static_cast<size_t>(c.B * c.T * c.Hq * c.D), 1, 1.5f);
    const auto k = randv(static_cast<size_t>(c.B * c.S * c.Hkv * c.D), 2, 1.5f);
    std::vector<float> want(static_cast<size_t>(c.B * c.S)), got(want.size());
    ev::ref::attn_score(a, q.data(), k.data(), want.data());
    ASSERT_TRUE(ev::cpu::attention_score(a, q.data(), k.data(), got.data(), &pool).ok());
    double sum = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-5 * std::max(1.f, want[i] * c.S)) << "case S=" << c.S << " i=" << i;
      sum += want[i];
    }
    // Each query's probabilities sum to 1, so the scores of a batch element sum to 1 (the mean over queries).
    EXPECT_NEAR(sum, static_cast<double>(c.B), 1e-6 * c.B);
  }
}

class TinyPrune : public ::testing::Test {
 protected:
  void SetUp() override {
    ev::EngineOptions o;
    o.threads = 2;
    o.precision = ev::Precision::kF32;
    o.vision_precision = ev::Precision::kF32;
    auto e = ev::Engine::load(kFixtures + "/tiny-idefics3", o);
    ASSERT_TRUE(e.ok()) << e.status().to_string();
    eng = std::move(e).value();
    S = eng->model().tile_size();
    px = ev::Tensor::empty(ev::DType::kF32, ev::Shape{2, 3, S, S});
    const auto v = randv(static_cast<size_t>(px.numel()), 5, 0.7f);
    std::copy(v.begin(), v.end(), px.data_as<float>());
  }

  // The vision tower's output (before the connector) for `spec`, on the engine's CPU executor or the reference.
  ev::Tensor tower(const std::string& spec, bool reference) {
    auto p = ev::resolve_prune_spec(spec, eng->config(), "");
    EXPECT_TRUE(p.ok());
    ev::Graph g;
    ev::VisionRun run;
    run.prune = &*p;
    ev::TensorId imp = -1;
    // Through the model's own tower: the Idefics3 model builds tower + connector; ask for the tower's output.
    ev::TensorId vout = -1;
    eng->model().build_vision(g, g.input("pixels", px), &vout, run, &imp);
    g.mark_output(vout);
    EXPECT_TRUE(g.status().ok()) << g.status().to_string();
    std::unique_ptr<ev::Backend> ref = ev::make_ref_backend();
    ev::Executor ex(ref.get(), nullptr);
    auto r = reference ? ex.run(g) : eng->vision_executor().run(g);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    return (*r)[vout];
  }

  std::unique_ptr<ev::Engine> eng;
  int S = 0;
  ev::Tensor px;
};

double max_abs_diff(const ev::Tensor& a, const ev::Tensor& b, int64_t row0 = 0, int64_t rows = -1) {
  const int64_t C = a.shape().cols();
  if (rows < 0) rows = a.numel() / C;
  double m = 0;
  for (int64_t i = row0 * C; i < (row0 + rows) * C; ++i)
    m = std::max(m, std::fabs(double(a.data_as<float>()[i]) - b.data_as<float>()[i]));
  return m;
}

TEST_F(TinyPrune, KeepingEverythingChangesNothing) {
  const ev::Tensor base = tower("none", false);
  EXPECT_EQ(max_abs_diff(tower("0:1", false), base), 0.0);
  // Pruning after the last layer only rearranges rows into the grid and back.
  const int L = eng->config().vision.num_hidden_layers;
  EXPECT_LT(max_abs_diff(tower(std::to_string(L - 1) + ":0.3", false), base), 1e-6);
}

TEST_F(TinyPrune, CpuMatchesReferenceBackend) {
  for (const char* spec : {"0:0.5", "0:0.6,1:0.3", "0:0.5,random=3"}) {
    const ev::Tensor a = tower(spec, false), b = tower(spec, true);
    ASSERT_EQ(a.numel(), b.numel());
    EXPECT_LT(max_abs_diff(a, b), 2e-4) << spec;
  }
}

TEST_F(TinyPrune, DroppedTokensKeepTheirStateFromTheLayerThatDroppedThem) {
  // With "0:0.5" on a 2-layer tower, the tokens dropped after layer 0 must equal a 1-layer tower's output (post-LN
  // of the state after layer 0), and the kept ones must differ from it (layer 1 changed them).
  ASSERT_EQ(eng->config().vision.num_hidden_layers, 2);
  const ev::Tensor pruned = tower("0:0.5", true);
  ev::Graph g;
  // The unpruned tower, plus post_layernorm applied to the output of block 0.
  ev::TensorId vout = -1;
  ev::PruneSpec none;
  ev::VisionRun run;
  run.prune = &none;
  ev::TensorId imp = -1;
  eng->model().build_vision(g, g.input("pixels", px), &vout, run, &imp);
  // Find layer 1's input (the output of block 0) and apply post_ln to it: rebuild by hand from the graph.
  ev::TensorId blk0 = -1;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (g.nodes[i].name == "v.blk.0.out") blk0 = static_cast<ev::TensorId>(i);
  ASSERT_GE(blk0, 0);
  ev::TensorId post_w = -1, post_b = -1;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (g.nodes[i].name == "v.post_w") post_w = static_cast<ev::TensorId>(i);
    if (g.nodes[i].name == "v.post_b") post_b = static_cast<ev::TensorId>(i);
  }
  ASSERT_GE(post_w, 0);
  const ev::TensorId after0 = g.layer_norm("after0", blk0, post_w, post_b, eng->config().vision.layer_norm_eps);
  g.mark_output(after0);
  g.mark_output(vout);
  std::unique_ptr<ev::Backend> ref = ev::make_ref_backend();
  ev::Executor ex(ref.get(), nullptr);
  auto r = ex.run(g);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const ev::Tensor one = (*r)[after0], full = (*r)[vout];
  const int64_t N = pruned.dim(1), E = pruned.dim(2);
  int same = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < N; ++t) same += max_abs_diff(pruned, one, b * N + t, 1) < 1e-6;
  (void)E;
  EXPECT_EQ(same, 2 * (N - ev::prune_keep_count(0.5f, N)));  // every dropped token, and only those
  // The survivors saw only each other in layer 1: they differ from the full tower, but not by much.
  EXPECT_GT(max_abs_diff(pruned, full), 1e-5);
}

TEST_F(TinyPrune, LanguageModelGetsTheTopConnectorTokens) {
  ASSERT_TRUE(eng->set_prune("0:0.5,llm:0.5").ok());
  ev::Tensor raw;
  auto emb = eng->encode_tiles(px, nullptr, {}, nullptr, nullptr, &raw);
  ASSERT_TRUE(emb.ok()) << emb.status().to_string();
  const int64_t T = eng->model().tokens_per_tile();
  EXPECT_EQ(emb->dim(1), ev::prune_keep_count(0.5f, T));
  EXPECT_EQ(eng->pruned_tokens_per_tile(), emb->dim(1));
  EXPECT_EQ(raw.dim(1), T);  // the temporal memory keeps every token
  // Each kept row is one of the full rows, in order.
  const int64_t H = emb->dim(2);
  for (int64_t b = 0; b < 2; ++b) {
    int64_t last = -1;
    for (int64_t i = 0; i < emb->dim(1); ++i) {
      int64_t found = -1;
      for (int64_t t = 0; t < T && found < 0; ++t)
        if (std::memcmp(emb->data_as<float>() + (b * emb->dim(1) + i) * H, raw.data_as<float>() + (b * T + t) * H,
                        static_cast<size_t>(H) * 4) == 0)
          found = t;
      ASSERT_GT(found, last) << "tile " << b << " token " << i;
      last = found;
    }
  }
  // A whole description runs with the shorter prompt.
  ev::Image img = ev::Image::make(64, 64);
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = static_cast<uint8_t>(i * 37);
  ev::GenerateOptions g;
  g.max_new_tokens = 4;
  g.image_splitting = 0;
  auto res = eng->describe({img}, "What is this?", g);
  ASSERT_TRUE(res.ok()) << res.status().to_string();
}

TEST_F(TinyPrune, DownscaleRunsFewerPatches) {
  const int unit = eng->config().vision.patch_size * eng->config().scale_factor;
  if (S / unit < 2) GTEST_SKIP() << "tile too small to downscale";
  const int s = S - unit;
  ASSERT_TRUE(eng->set_prune("input:" + std::to_string(s)).ok());
  auto emb = eng->encode_tiles(px);
  ASSERT_TRUE(emb.ok()) << emb.status().to_string();
  const int64_t side = s / unit;
  EXPECT_EQ(emb->dim(1), side * side);
  EXPECT_FALSE(eng->set_prune("input:" + std::to_string(S + unit)).ok());
}

TEST_F(TinyPrune, RandomDropIsReproducibleAndDiffersFromAttention) {
  const ev::Tensor a1 = tower("0:0.5,random=9", false), a2 = tower("0:0.5,random=9", false);
  EXPECT_EQ(max_abs_diff(a1, a2), 0.0);
  EXPECT_GT(max_abs_diff(a1, tower("0:0.5", false)), 1e-4);
}

}  // namespace
