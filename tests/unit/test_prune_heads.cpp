// Head pruning (tools/prune_heads.h) on the tiny fixture model (2 vision layers x 4 heads of 16): the physically
// pruned tower reproduces the masked original, the written directory loads with the expected shapes and leaves
// every other tensor byte for byte, a pruned model can be pruned again in its own numbering, the KL importance is
// 0 without a mask and drives the selection (one head kept per layer), and bad arguments are errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "runtime/engine.h"
#include "tools/prune_heads.h"
#include "tools/report.h"

namespace {

const std::string kTiny = std::string(EDGEVLM_FIXTURE_DIR) + "/tiny-idefics3";
const std::string kAttnPrefix = "model.vision_model.encoder.layers.";

std::unique_ptr<ev::Engine> load_f32(const std::string& dir) {
  ev::EngineOptions o;
  o.threads = 2;
  o.precision = ev::Precision::kF32;
  o.vision_precision = ev::Precision::kF32;
  auto e = ev::Engine::load(dir, o);
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? std::move(e).value() : nullptr;
}

ev::Tensor random_pixels(int64_t n, int S, uint32_t seed) {
  ev::Tensor px = ev::Tensor::empty(ev::DType::kF32, ev::Shape{n, 3, S, S});
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 0.7f);
  for (int64_t i = 0; i < px.numel(); ++i) px.data_as<float>()[i] = d(g);
  return px;
}

// max |a - b| / max |a|
double rel_diff(const ev::Tensor& a, const ev::Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0, s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    m = std::max(m, std::fabs(double(a.data_as<float>()[i]) - b.data_as<float>()[i]));
    s = std::max(s, std::fabs(double(a.data_as<float>()[i])));
  }
  return s > 0 ? m / s : m;
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Vision tower output and connector output of `e` on `px`, with `mask`.
std::pair<ev::Tensor, ev::Tensor> tower(ev::Engine& e, const ev::Tensor& px, const ev::HeadMask& mask = {}) {
  e.set_head_mask(mask);
  ev::Tensor vout;
  auto emb = e.encode_tiles(px, &vout);
  e.set_head_mask({});
  EXPECT_TRUE(emb.ok()) << emb.status().to_string();
  return {vout, emb.ok() ? *emb : ev::Tensor()};
}

class PruneHeadsTiny : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = ev::TempDir::create("edgevlm-test-heads-");
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    dir = std::move(d).value();
    out = dir.path() + "/pruned";
    ASSERT_TRUE(ev::write_head_pruned_model(kTiny, out, removed, {{"note", "unit test"}}).ok());
  }
  ev::TempDir dir;
  std::string out;
  const std::vector<ev::HeadRef> removed = {{0, 1}, {1, 3}, {1, 0}};
};

TEST_F(PruneHeadsTiny, PhysicallyPrunedTowerEqualsMaskedOriginal) {
  auto orig = load_f32(kTiny);
  auto pruned = load_f32(out);
  ASSERT_TRUE(orig && pruned);
  const int S = orig->model().tile_size();
  const ev::Tensor px = random_pixels(3, S, 11);
  const auto [va, ea] = tower(*orig, px, ev::head_mask_for(orig->config().vision, removed));
  const auto [vb, eb] = tower(*pruned, px);
  EXPECT_LT(rel_diff(va, vb), 1e-5);
  EXPECT_LT(rel_diff(ea, eb), 1e-5);
  // ... and the mask matters: the unmasked original is far from both.
  const auto [vu, eu] = tower(*orig, px);
  EXPECT_GT(rel_diff(vu, vb), 1e-3);

  auto ver = ev::verify_head_pruned_model(kTiny, out, removed, px, 2);
  ASSERT_TRUE(ver.ok()) << ver.status().to_string();
  EXPECT_TRUE(ver->ok);
  EXPECT_EQ(ver->frames, 3);
  EXPECT_LT(ver->max_rel_diff, ev::kHeadPruneVerifyTolerance);
  // Verifying against the wrong removal set fails.
  auto wrong = ev::verify_head_pruned_model(kTiny, out, {{0, 2}, {1, 3}, {1, 0}}, px, 2);
  ASSERT_TRUE(wrong.ok());
  EXPECT_FALSE(wrong->ok);
}

TEST_F(PruneHeadsTiny, WrittenModelHasTheShapesAndEveryOtherTensorUnchanged) {
  auto cfg = ev::load_vlm_config(out);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->vision.heads_in_layer(0), 3);
  EXPECT_EQ(cfg->vision.heads_in_layer(1), 2);
  EXPECT_EQ(cfg->vision.head_dim(), 16);
  EXPECT_EQ(cfg->vision.num_attention_heads, 4);
  const auto& rec = cfg->raw["edgevlm"]["head_pruning"];
  EXPECT_EQ(rec["removed"], nlohmann::json::parse("[[0,1],[1,0],[1,3]]"));
  EXPECT_EQ(rec["heads_after"], nlohmann::json::parse("[3,2]"));
  EXPECT_EQ(rec.value("source", ""), kTiny);
  EXPECT_EQ(rec.value("note", ""), "unit test");

  auto a = ev::TensorStore::open_dir(kTiny);
  auto b = ev::TensorStore::open_dir(out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->names(), b->names());
  const int64_t D = 16, E = 64;
  const std::vector<std::vector<int>> keep = {{0, 2, 3}, {1, 2}};
  int sliced = 0;
  for (const std::string& name : a->names()) {
    auto ta = a->get(name);
    auto tb = b->get(name);
    ASSERT_TRUE(ta.ok() && tb.ok()) << name;
    EXPECT_EQ(ta->dtype(), tb->dtype()) << name;
    int l = -1;
    char proj = 0;
    std::string kind;
    if (name.rfind(kAttnPrefix, 0) == 0) {
      l = name[kAttnPrefix.size()] - '0';
      const std::string rest = name.substr(kAttnPrefix.size() + 2);
      if (rest.rfind("self_attn.", 0) == 0) {
        proj = rest[10];  // q, k, v or o(ut)
        kind = rest.substr(rest.rfind('.') + 1);
      }
    }
    const size_t es = ev::dtype_size(ta->dtype());
    if (proj && !(proj == 'o' && kind == "bias")) {
      ++sliced;
      const int64_t K = static_cast<int64_t>(keep[static_cast<size_t>(l)].size());
      const ev::Shape want = proj == 'o' ? ev::Shape{E, K * D} : kind == "weight" ? ev::Shape{K * D, E} : ev::Shape{K * D};
      EXPECT_EQ(tb->shape(), want) << name;
      // The kept heads' rows (columns of out_proj) byte for byte.
      const auto* pa = static_cast<const char*>(ta->data());
      const auto* pb = static_cast<const char*>(tb->data());
      if (proj == 'o') {
        for (int64_t r = 0; r < E; ++r)
          for (int64_t k = 0; k < K; ++k)
            EXPECT_EQ(std::memcmp(pb + (r * K * D + k * D) * es, pa + (r * 4 * D + keep[l][k] * D) * es, D * es), 0);
      } else {
        const int64_t row = kind == "weight" ? E : 1;
        for (int64_t k = 0; k < K; ++k)
          EXPECT_EQ(std::memcmp(pb + k * D * row * es, pa + keep[l][k] * D * row * es, D * row * es), 0) << name;
      }
    } else {
      EXPECT_EQ(ta->shape(), tb->shape()) << name;
      EXPECT_EQ(std::memcmp(ta->data(), tb->data(), ta->nbytes()), 0) << name;
    }
  }
  EXPECT_EQ(sliced, 2 * 7);
  // The other files are copied as they are.
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja",
                        "special_tokens_map.json"})
    EXPECT_EQ(file_bytes(kTiny + "/" + f), file_bytes(out + "/" + f)) << f;
  EXPECT_TRUE(load_f32(out) != nullptr);
}

TEST_F(PruneHeadsTiny, APrunedModelIsPrunedAgainInItsOwnNumbering) {
  // Layer 1 kept original heads {1, 2}; its head 1 is the original head 2.
  const std::string twice = dir.path() + "/twice";
  ASSERT_TRUE(ev::write_head_pruned_model(out, twice, {{1, 1}}).ok());
  auto cfg = ev::load_vlm_config(twice);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->vision.heads_in_layer(0), 3);
  EXPECT_EQ(cfg->vision.heads_in_layer(1), 1);
  EXPECT_TRUE(cfg->raw["edgevlm"]["head_pruning"].contains("previous"));
  auto orig = load_f32(kTiny);
  auto pruned = load_f32(twice);
  ASSERT_TRUE(orig && pruned);
  const ev::Tensor px = random_pixels(2, orig->model().tile_size(), 12);
  const auto [va, ea] = tower(*orig, px, ev::head_mask_for(orig->config().vision, {{0, 1}, {1, 0}, {1, 2}, {1, 3}}));
  const auto [vb, eb] = tower(*pruned, px);
  EXPECT_LT(rel_diff(va, vb), 1e-5);
  // Removing the last head of layer 1 is refused.
  auto s = ev::write_head_pruned_model(twice, dir.path() + "/none", {{1, 0}});
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ev::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 1"), std::string::npos) << s.to_string();
}

TEST(PruneHeads, KlImportanceAndSelectionOnSyntheticImages) {
  auto eng = load_f32(kTiny);
  ASSERT_TRUE(eng);
  std::vector<ev::Image> imgs;
  std::mt19937 g(3);
  for (int k = 0; k < 3; ++k) {
    ev::Image im = ev::Image::make(64, 48);
    for (auto& p : im.rgb) p = static_cast<uint8_t>(g() & 0xff);
    imgs.push_back(im);
  }
  auto cal = ev::HeadCalibration::create(*eng, imgs, "Describe the image.", 6);
  ASSERT_TRUE(cal.ok()) << cal.status().to_string();
  EXPECT_EQ(cal->size(), 3u);
  std::vector<double> per;
  auto k0 = cal->kl(*eng, {}, &per);
  ASSERT_TRUE(k0.ok()) << k0.status().to_string();
  EXPECT_LT(*k0, 1e-9);
  EXPECT_EQ(per.size(), 3u);
  const ev::VisionConfig& v = eng->config().vision;
  auto k1 = cal->kl(*eng, ev::head_mask_for(v, {{0, 0}}));
  ASSERT_TRUE(k1.ok());
  EXPECT_GT(*k1, 0.0);
  auto k3 = cal->kl(*eng, ev::head_mask_for(v, {{0, 0}, {0, 1}, {0, 2}}));
  ASSERT_TRUE(k3.ok());
  EXPECT_GT(*k3, 0.0);
  // Masks are cleared after a measurement: the reference is reproduced.
  EXPECT_LT(*cal->kl(*eng, {}), 1e-9);

  auto one = ev::select_heads(*eng, *cal, 3, /*iterative=*/false);
  ASSERT_TRUE(one.ok()) << one.status().to_string();
  ASSERT_EQ(one->importance.size(), 2u);
  ASSERT_EQ(one->importance[0].size(), 4u);
  EXPECT_NEAR(one->importance[0][0], *k1, 1e-12);
  ASSERT_EQ(one->removed.size(), 3u);
  auto ranked = ev::rank_heads_one_shot(one->importance, 3);
  ASSERT_TRUE(ranked.ok());
  EXPECT_EQ(*ranked, one->removed);

  // Everything that can go: one head left in each layer, in both modes.
  for (bool iterative : {false, true}) {
    auto all = ev::select_heads(*eng, *cal, 6, iterative);
    ASSERT_TRUE(all.ok()) << all.status().to_string();
    ASSERT_EQ(all->removed.size(), 6u);
    ASSERT_EQ(all->step_kl.size(), 6u);
    int per_layer[2] = {0, 0};
    std::set<ev::HeadRef> uniq(all->removed.begin(), all->removed.end());
    EXPECT_EQ(uniq.size(), 6u);
    for (const auto& h : all->removed) ++per_layer[h.layer];
    EXPECT_EQ(per_layer[0], 3);
    EXPECT_EQ(per_layer[1], 3);
  }
  EXPECT_FALSE(ev::select_heads(*eng, *cal, 7, false).ok());

  // The exported model measures as the masked original did.
  auto d = ev::TempDir::create("edgevlm-test-heads-kl-");
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(ev::write_head_pruned_model(kTiny, d->path(), one->removed).ok());
  auto pruned = load_f32(d->path());
  ASSERT_TRUE(pruned);
  auto kp = cal->kl(*pruned, {});
  auto km = cal->kl(*eng, ev::head_mask_for(v, one->removed));
  ASSERT_TRUE(kp.ok() && km.ok()) << kp.status().to_string();
  EXPECT_NEAR(*kp, *km, 1e-4 * std::max(1.0, *km));
  auto ans = cal->answers(*pruned, {});
  ASSERT_TRUE(ans.ok());
  EXPECT_EQ(ans->size(), 3u);
}

TEST(PruneHeads, OneShotRankingKeepsAHeadPerLayer) {
  auto r = ev::rank_heads_one_shot({{3, 1, 2}, {0.5, 0.4}}, 3);
  ASSERT_TRUE(r.ok());
  const std::vector<ev::HeadRef> want = {{1, 1}, {0, 1}, {0, 2}};
  EXPECT_EQ(*r, want);
  EXPECT_FALSE(ev::rank_heads_one_shot({{3, 1, 2}, {0.5, 0.4}}, 4).ok());
}

TEST(PruneHeads, BadArgumentsAreErrorsNamingTheArgument) {
  ev::VisionConfig v;  // the tiny tower: 2 layers x 4 heads, 6 removable
  v.num_hidden_layers = 2;
  v.num_attention_heads = 4;
  v.hidden_size = 64;
  auto err = [&](std::optional<double> f, std::optional<int> h, const char* arg) {
    auto r = ev::heads_to_remove(v, f, h);
    EXPECT_FALSE(r.ok()) << arg;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), ev::StatusCode::kInvalidArgument);
      EXPECT_NE(r.status().message().find(arg), std::string::npos) << r.status().to_string();
    }
  };
  err(0.0, std::nullopt, "--remove");
  err(1.0, std::nullopt, "--remove");
  err(1.5, std::nullopt, "--remove");
  err(-0.2, std::nullopt, "--remove");
  err(0.01, std::nullopt, "--remove");      // rounds to no head
  err(0.9, std::nullopt, "layer");          // 7 of 8: a layer would have none
  err(std::nullopt, 7, "--heads");
  err(std::nullopt, 0, "--heads");
  err(0.5, 2, "--heads");                   // both
  err(std::nullopt, std::nullopt, "--remove");
  EXPECT_EQ(*ev::heads_to_remove(v, 0.4, std::nullopt), 3);  // round(3.2)
  EXPECT_EQ(*ev::heads_to_remove(v, std::nullopt, 6), 6);

  auto d = ev::TempDir::create("edgevlm-test-heads-args-");
  ASSERT_TRUE(d.ok());
  // Removing every head of a layer, heads outside the tower, duplicates.
  for (const std::vector<ev::HeadRef>& bad : std::vector<std::vector<ev::HeadRef>>{
           {{0, 0}, {0, 1}, {0, 2}, {0, 3}}, {{2, 0}}, {{0, 4}}, {{0, 1}, {0, 1}}}) {
    auto s = ev::write_head_pruned_model(kTiny, d->path() + "/x", bad);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), ev::StatusCode::kInvalidArgument) << s.to_string();
  }
  // The tool's checks: missing model, unwritable --out, --out = --model, a bad fraction (before any loading).
  ev::PruneHeadsOptions o;
  o.model = d->path() + "/no-such-model";
  o.out = d->path() + "/out";
  o.remove = 0.4;
  auto s = ev::check_prune_heads_options(o);
  EXPECT_EQ(s.code(), ev::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("no-such-model"), std::string::npos) << s.to_string();
  o.model = kTiny;
  o.out = kTiny + "/config.json/sub";  // under a regular file
  s = ev::check_prune_heads_options(o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--out"), std::string::npos) << s.to_string();
  o.out = kTiny;
  s = ev::check_prune_heads_options(o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--out"), std::string::npos) << s.to_string();
  o.out = d->path() + "/out";
  o.progress = false;
  for (double f : {0.0, 1.0}) {
    o.remove = f;
    auto j = ev::prune_heads_json(o);
    EXPECT_FALSE(j.ok());
    EXPECT_NE(j.status().message().find("--remove"), std::string::npos) << j.status().to_string();
  }
  o.remove.reset();
  o.heads = 7;
  auto j = ev::prune_heads_json(o);
  EXPECT_FALSE(j.ok());
  EXPECT_NE(j.status().message().find("--heads"), std::string::npos) << j.status().to_string();
}

}  // namespace
