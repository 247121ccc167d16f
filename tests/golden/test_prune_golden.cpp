// Golden parity of token pruning and head masking on the shipped student with the PyTorch reference of
// train/prune.py (transformers' SigLIP modules in a layer loop that prunes between layers; float32, CPU, eager):
// tests/fixtures/prune-golden/ holds, for two held-out frames and two schedules, the importance each scored layer
// gave its tokens, the tokens kept (original positions), the whole grid after post_layernorm, the connector output,
// the connector tokens selected for the language model, and a 48-step greedy continuation with that shorter
// prompt; and the vision output with four heads masked.
//
// Tolerances: importance 1e-4 relative (max|diff| / max|ref|; the f32 q k^T and softmax run in another order),
// kept and selected indices exact (the reference's smallest selection margin is 4e-6 on importances of ~5e-3, far
// above the f32 error), grid / connector / vision output 1e-4 relative as in test_student.cpp, tokens exact.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <cstring>
#include <string>

#include "golden/golden_util.h"
#include "perception/image.h"
#include "runtime/engine.h"

namespace fs = std::filesystem;

namespace {

using ev::golden::compare;

const fs::path kModel = fs::path(EDGEVLM_SOURCE_DIR) / "models" / "road-student";
const fs::path kGolden = fs::path(EDGEVLM_FIXTURE_DIR) / "prune-golden";

class PruneGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kGolden / "golden.json")) << "prune golden fixtures missing: " << kGolden;
    std::ifstream f(kGolden / "golden.json");
    meta_ = nlohmann::json::parse(f);
    ev::EngineOptions o;
    o.precision = ev::Precision::kF32;
    o.vision_precision = ev::Precision::kF32;
    o.threads = 2;
    auto e = ev::Engine::load(kModel.string(), o);
    ASSERT_TRUE(e.ok()) << e.status().to_string();
    engine_ = std::move(e).value();
  }

  ev::Tensor pixels(int frame) {
    const auto& fr = meta_.at("frames").at(frame).at("pixel_values");
    auto st = ev::TensorStore::open_file((kGolden / fr.at("file").get<std::string>()).string());
    EXPECT_TRUE(st.ok()) << st.status().to_string();
    ev::Tensor t = st->get(fr.at("tensor").get<std::string>()).value();
    return t.to(ev::DType::kF32).value();  // a copy that outlives the store
  }

  static ev::TensorId node(const ev::Graph& g, const std::string& name) {
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (g.nodes[i].name == name) return static_cast<ev::TensorId>(i);
    ADD_FAILURE() << "no node " << name;
    return 0;
  }

  static std::vector<int32_t> ints(const ev::Tensor& t) {
    std::vector<int32_t> v(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = t.data_as<int32_t>()[i];
    return v;
  }

  nlohmann::json meta_;
  std::unique_ptr<ev::Engine> engine_;
};

TEST_F(PruneGolden, TokenPruningMatchesTheReference) {
  int n_cases = 0;
  for (const auto& c : meta_.at("cases")) {
    if (c.at("kind") != "token_prune") continue;
    ++n_cases;
    const std::string name = c.at("name");
    SCOPED_TRACE(name + " " + c.at("schedule_str").get<std::string>());
    auto st = ev::TensorStore::open_file((kGolden / c.at("file").get<std::string>()).string());
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    std::string spec = c.at("schedule_str");
    const double llm = c.at("llm_keep");
    if (llm < 1.0) spec += ",llm:" + std::to_string(llm).substr(0, 4);
    auto p = ev::resolve_prune_spec(spec, engine_->config(), "");
    ASSERT_TRUE(p.ok()) << p.status().to_string();

    ev::Tensor px = pixels(c.at("frame").get<int>());
    ev::Graph g;
    ev::VisionRun run;
    run.prune = &*p;
    run.want_importance = p->llm_keep < 1.f;
    ev::TensorId vout = -1, imp = -1;
    const ev::TensorId conn = engine_->model().build_vision(g, g.input("pixels", px), &vout, run, &imp);
    g.mark_output(vout);
    g.mark_output(conn);
    if (imp >= 0) g.mark_output(imp);
    std::vector<std::pair<ev::TensorId, ev::TensorId>> steps;  // (importance, kept global indices)
    for (size_t i = 0; i < p->steps.size(); ++i) {
      const int l = p->steps[i].layer;
      steps.emplace_back(node(g, ev::layer_name("v.blk", l, "attn_score")), node(g, ev::layer_name("v.blk", l, "keep_idx")));
      g.mark_output(steps.back().first);
      g.mark_output(steps.back().second);
    }
    ASSERT_TRUE(g.status().ok()) << g.status().to_string();
    auto r = engine_->vision_executor().run(g);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    for (size_t i = 0; i < steps.size(); ++i) {
      const auto d = compare((*r)[steps[i].first], st->get("importance_" + std::to_string(i)).value());
      EXPECT_LT(d.rel, 1e-4) << "importance of step " << i;
      EXPECT_EQ(ints((*r)[steps[i].second]), ints(st->get("kept_" + std::to_string(i)).value())) << "kept of step " << i;
    }
    EXPECT_LT(compare((*r)[vout], st->get("grid").value()).rel, 1e-4) << "grid";
    EXPECT_LT(compare((*r)[conn], st->get("connector_out").value()).rel, 1e-4) << "connector";
    if (imp >= 0) {
      EXPECT_LT(compare((*r)[imp], st->get("llm_importance").value()).rel, 1e-4) << "llm importance";
    }

    // The engine's own path: the selected connector tokens, in order, and the greedy continuation.
    engine_->set_prune(*p);
    auto emb = engine_->encode_tiles(px);
    ASSERT_TRUE(emb.ok()) << emb.status().to_string();
    const std::vector<int32_t> sel = ints(st->get("selected").value());
    ASSERT_EQ(emb->dim(1), static_cast<int64_t>(sel.size()));
    const ev::Tensor cref = st->get("connector_out").value();
    const int64_t H = emb->dim(2);
    ev::Tensor want = ev::Tensor::empty(ev::DType::kF32, ev::Shape{1, static_cast<int64_t>(sel.size()), H});
    for (size_t i = 0; i < sel.size(); ++i)
      std::memcpy(want.data_as<float>() + static_cast<int64_t>(i) * H, cref.data_as<float>() + sel[i] * H,
                  static_cast<size_t>(H) * 4);
    EXPECT_LT(compare(*emb, want).rel, 1e-4) << "selected connector tokens";

    const std::string png = (kGolden / meta_.at("frames").at(c.at("frame").get<int>()).at("image").get<std::string>()).string();
    auto img = ev::load_image(png);
    ASSERT_TRUE(img.ok()) << img.status().to_string();
    ev::GenerateOptions gen;
    gen.max_new_tokens = static_cast<int>(c.at("greedy_tokens").size());
    gen.stop_at_eos = false;
    gen.image_splitting = 0;
    auto res = engine_->describe({*img}, engine_->describe_prompt(), gen);
    ASSERT_TRUE(res.ok()) << res.status().to_string();
    EXPECT_EQ(res->stats.prompt_tokens, static_cast<int>(st->get("input_ids").value().numel()));
    EXPECT_EQ(res->tokens, c.at("greedy_tokens").get<std::vector<int32_t>>());
  }
  EXPECT_GE(n_cases, 2);
}

TEST_F(PruneGolden, HeadMaskMatchesTheReference) {
  int n_cases = 0;
  for (const auto& c : meta_.at("cases")) {
    if (c.at("kind") != "head_mask") continue;
    ++n_cases;
    const auto& cfg = engine_->config().vision;
    std::vector<std::vector<float>> mask(static_cast<size_t>(cfg.num_hidden_layers),
                                         std::vector<float>(static_cast<size_t>(cfg.num_attention_heads), 1.f));
    for (const auto& lh : c.at("heads")) mask[lh.at(0).get<size_t>()][lh.at(1).get<size_t>()] = 0.f;
    engine_->set_head_mask(mask);
    auto st = ev::TensorStore::open_file((kGolden / c.at("file").get<std::string>()).string());
    ASSERT_TRUE(st.ok());
    ev::Tensor vis;
    auto emb = engine_->encode_tiles(pixels(c.at("frame").get<int>()), &vis);
    ASSERT_TRUE(emb.ok()) << emb.status().to_string();
    EXPECT_LT(compare(vis, st->get("vision_out").value()).rel, 1e-4) << c.at("name").get<std::string>();
  }
  EXPECT_GE(n_cases, 2);
}

}  // namespace
