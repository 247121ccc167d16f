// The temporal adapter (models/temporal_adapter.h) against its Python reference (train/roadvlm.py TemporalAdapter,
// float32 on the CPU over the exported weights), for two models: tests/fixtures/tiny-road-temporal (a smoke-trained
// tiny road model) and the shipped student (models/road-student, goldens in tests/fixtures/student-golden). For two
// (previous, current) frame pairs each: the memory, the current frame's connector output, the adapted embeddings,
// the first logits and a greedy continuation.
//
// The smoke model's gate is small (tanh(gate) ~ 2e-4: 20 training steps), so the adapted embeddings differ from
// the current ones by ~1e-4 relative; comparing the adapted tensor alone would not see a wrong adapter. So the
// adapter's contribution (adapted - current) is compared on its own, within 1e-2 relative: f32 cancellation of
// two nearly equal tensors leaves ~1e-3 relative precision in the difference. (The shipped student's gate is
// tanh(gate) ~ -0.24: there the contribution is large and the same bound is loose.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "golden/golden_util.h"
#include "perception/image.h"
#include "runtime/engine.h"

namespace fs = std::filesystem;

namespace {

using ev::golden::compare;

struct Fixture {
  const char* name;
  fs::path model, golden;
};

const Fixture kFixtures[] = {
    {"tiny", fs::path(EDGEVLM_FIXTURE_DIR) / "tiny-road-temporal" / "model",
     fs::path(EDGEVLM_FIXTURE_DIR) / "tiny-road-temporal" / "golden"},
    {"student", fs::path(EDGEVLM_SOURCE_DIR) / "models" / "road-student",
     fs::path(EDGEVLM_FIXTURE_DIR) / "student-golden"},
};

class TemporalAdapterGolden : public ::testing::TestWithParam<Fixture> {};

ev::Tensor diff(const ev::Tensor& a, const ev::Tensor& b) {
  ev::Tensor fa = ev::golden::as_f32(a), fb = ev::golden::as_f32(b);
  ev::Tensor d = ev::Tensor::empty(ev::DType::kF32, fa.shape());
  for (int64_t i = 0; i < fa.numel(); ++i) d.data_as<float>()[i] = fa.data_as<float>()[i] - fb.data_as<float>()[i];
  return d;
}

TEST_P(TemporalAdapterGolden, MatchesThePythonReference) {
  const fs::path model = GetParam().model, golden = GetParam().golden;
  ev::EngineOptions o;
  o.precision = ev::Precision::kF32;
  o.vision_precision = ev::Precision::kF32;
  o.threads = 2;
  auto e = ev::Engine::load(model.string(), o);
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  ASSERT_NE((*e)->temporal_adapter(), nullptr);
  std::ifstream f(golden / "temporal.json");
  const nlohmann::json meta = nlohmann::json::parse(f);
  ASSERT_EQ(meta.at("cases").size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    SCOPED_TRACE("pair " + std::to_string(k));
    const auto& c = meta["cases"][k];
    auto st = ev::TensorStore::open_file((golden / ("temporal" + std::to_string(k) + ".safetensors")).string());
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    EXPECT_NEAR((*e)->temporal_adapter()->gate(), c.at("gate").get<double>(), 1e-6);
    auto prev = ev::load_image((golden / c.at("prev").get<std::string>()).string());
    auto cur = ev::load_image((golden / c.at("cur").get<std::string>()).string());
    ASSERT_TRUE(prev.ok() && cur.ok());
    auto mem = (*e)->encode_images({*prev}, 0);
    ASSERT_TRUE(mem.ok()) << mem.status().to_string();
    EXPECT_LE(compare(mem->raw_embeds, st->get("memory").value()).rel, 1e-4) << "memory";
    auto enc = (*e)->encode_images({*cur}, 0, nullptr, &mem->raw_embeds);
    ASSERT_TRUE(enc.ok()) << enc.status().to_string();
    const ev::Tensor want_cur = st->get("current").value(), want_ad = st->get("adapted").value();
    EXPECT_LE(compare(enc->raw_embeds, want_cur).rel, 1e-4) << "current";
    EXPECT_LE(compare(enc->embeds, want_ad).rel, 1e-4) << "adapted";
    const auto dd = compare(diff(enc->embeds, enc->raw_embeds), diff(want_ad, want_cur));
    EXPECT_LE(dd.rel, 1e-2) << "the adapter's contribution";
    EXPECT_GE(dd.cosine, 0.9999);

    std::vector<int32_t> ids = ev::golden::ids_of(*st, "input_ids");
    ev::KvCache cache = (*e)->model().make_cache(static_cast<int64_t>(ids.size()) + 1);
    auto logits = (*e)->forward_text(ids, enc->embeds, cache, 1);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    EXPECT_LE(compare(*logits, st->get("logits_first").value()).rel, 1e-4) << "logits";
    ev::GenerateOptions g;
    g.max_new_tokens = static_cast<int>(c.at("greedy_tokens").size());
    g.stop_at_eos = false;
    auto msgs = ev::Engine::user_turn(1, "Describe the scene.");
    ASSERT_TRUE(msgs.ok());
    auto r = (*e)->generate_encoded(*enc, *msgs, g);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->tokens, c.at("greedy_tokens").get<std::vector<int32_t>>());
  }
}

TEST_P(TemporalAdapterGolden, WrongMemoryShapeIsRefused) {
  auto e = ev::Engine::load(GetParam().model.string(), {});
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  auto img = ev::load_image((GetParam().golden / "temporal0_cur.png").string());
  ASSERT_TRUE(img.ok());
  ev::Tensor bad = ev::Tensor::empty(ev::DType::kF32, ev::Shape{1, 3, 7});
  auto enc = (*e)->encode_images({*img}, 0, nullptr, &bad);
  ASSERT_FALSE(enc.ok());
  EXPECT_NE(enc.status().message().find("temporal memory"), std::string::npos) << enc.status().to_string();
}

INSTANTIATE_TEST_SUITE_P(Models, TemporalAdapterGolden, ::testing::ValuesIn(kFixtures),
                         [](const ::testing::TestParamInfo<Fixture>& i) { return std::string(i.param.name); });

}  // namespace
