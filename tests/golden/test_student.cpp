// Golden parity of the shipped road-scene student (models/road-student, exported by train/roadvlm.py) with
// transformers: tests/fixtures/student-golden/ holds two held-out simulator frames (PNG) and what transformers
// computed from the files on disk in float32 (CPU, eager attention): the processor's pixel values and input ids,
// the vision tower output, the connector output, the fast head's probabilities, the logits at the last prompt
// position and a 48-step greedy continuation.
//
// Tolerances (f32 compute everywhere, the weights are bf16 on disk and widened exactly): 1e-4 relative
// (max|diff| / max|ref|) on every tensor, as for the tiny fixture models (test_golden.cpp), 1e-5 absolute on the
// fast head's probabilities, 1e-6 on the pixel values (the preprocessing of a frame of the tile's size is a pure
// rescale; only the order of the f32 operations differs) and exact tokens.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "golden/golden_util.h"
#include "perception/image.h"
#include "runtime/engine.h"

namespace fs = std::filesystem;

namespace {

using ev::golden::compare;
using ev::golden::Diff;
using ev::golden::ids_of;

const fs::path kModel = fs::path(EDGEVLM_SOURCE_DIR) / "models" / "road-student";
const fs::path kGolden = fs::path(EDGEVLM_FIXTURE_DIR) / "student-golden";

class StudentGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kModel / "config.json")) << "the shipped student is missing: " << kModel;
    ASSERT_TRUE(fs::exists(kGolden / "golden.json")) << "student golden fixtures missing: " << kGolden;
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
  nlohmann::json meta_;
  std::unique_ptr<ev::Engine> engine_;
};

TEST_F(StudentGolden, HasAFastHeadDescribedInItsConfig) {
  const ev::FastHead* fh = engine_->fast_head();
  ASSERT_NE(fh, nullptr);
  EXPECT_EQ(fh->config().classes,
            (std::vector<std::string>{"pedestrian", "braking", "cut-in", "red light", "construction"}));
}

TEST_F(StudentGolden, MatchesTransformers) {
  const auto& cases = meta_.at("cases");
  ASSERT_GE(cases.size(), 2u);
  for (size_t k = 0; k < cases.size(); ++k) {
    const auto& c = cases[k];
    SCOPED_TRACE("case " + std::to_string(k));
    auto st = ev::TensorStore::open_file((kGolden / ("case" + std::to_string(k) + ".safetensors")).string());
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    auto img = ev::load_image((kGolden / c.at("image").get<std::string>()).string());
    ASSERT_TRUE(img.ok()) << img.status().to_string();

    // Preprocessing and prompt.
    auto px = engine_->preprocess(*img, 0, nullptr, nullptr);
    ASSERT_TRUE(px.ok()) << px.status().to_string();
    EXPECT_LE(compare(*px, st->get("pixel_values").value()).rel, 1e-6) << "pixel values";
    auto prompt = engine_->render_prompt(1, "Describe the scene.");
    ASSERT_TRUE(prompt.ok());
    EXPECT_EQ(*prompt, c.at("prompt").get<std::string>());

    // Vision tower, connector, fast head.
    ev::Tensor vis, hz;
    const int64_t S = engine_->model().tile_size();
    auto pv = st->get("pixel_values").value().reshape(ev::Shape{1, 3, S, S});
    ASSERT_TRUE(pv.ok()) << pv.status().to_string();
    auto emb = engine_->encode_tiles(*pv, &vis, {}, &hz);
    ASSERT_TRUE(emb.ok()) << emb.status().to_string();
    const Diff dv = compare(vis, st->get("vision_out").value());
    const Diff dc = compare(*emb, st->get("connector_out").value());
    EXPECT_LE(dv.rel, 1e-4) << "vision_out";
    EXPECT_LE(dc.rel, 1e-4) << "connector_out";
    ev::Tensor want_hz = ev::golden::as_f32(st->get("fast_head").value());
    ASSERT_EQ(hz.numel(), want_hz.numel());
    for (int64_t i = 0; i < hz.numel(); ++i)
      EXPECT_NEAR(hz.data_as<float>()[i], want_hz.data_as<float>()[i], 1e-5) << "fast head class " << i;

    // First logits from the reference's own ids.
    std::vector<int32_t> ids = ids_of(*st, "input_ids");
    ev::KvCache cache = engine_->model().make_cache(static_cast<int64_t>(ids.size()) + 1);
    auto logits = engine_->forward_text(ids, *emb, cache, 1);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    const Diff dl = compare(*logits, st->get("logits_first").value());
    EXPECT_LE(dl.rel, 1e-4) << "logits";

    // End to end from the PNG: the greedy continuation.
    ev::GenerateOptions g;
    g.max_new_tokens = static_cast<int>(c.at("greedy_tokens").size());
    g.stop_at_eos = false;
    g.image_splitting = 0;
    auto r = engine_->describe({*img}, "Describe the scene.", g);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->tokens, c.at("greedy_tokens").get<std::vector<int32_t>>());
    EXPECT_EQ(r->text, c.at("greedy_text").get<std::string>());
    std::printf("[student golden %zu] vision rel %.2e connector rel %.2e logits rel %.2e: %s\n", k, dv.rel, dc.rel,
                dl.rel, r->text.c_str());
  }
}

}  // namespace
