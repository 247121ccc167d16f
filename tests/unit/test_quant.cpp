// Mixed-precision INT8 plans (models/quant_plan.h), int8 checkpoints (edgevlm-int8/1), the backends under a plan,
// and edgevlm quantize end to end on the shipped student.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "formats/safetensors.h"
#include "kernels/ref/quant_tensor.h"
#include "models/quant_plan.h"
#include "runtime/engine.h"
#include "tools/bench.h"
#include "tools/quantize.h"
#include "tools/report.h"

namespace fs = std::filesystem;

namespace {

const std::string kTiny = std::string(EDGEVLM_FIXTURE_DIR) + "/tiny-smolvlm";
const std::string kStudent = std::string(EDGEVLM_SOURCE_DIR) + "/models/road-student";
const std::string kTinyRoad = std::string(EDGEVLM_FIXTURE_DIR) + "/tiny-road-temporal/model";

// `precision` as --precision takes it; with f32_floats the layers outside the plan (and attention) compute in f32.
std::unique_ptr<ev::Engine> load(const std::string& dir, const std::string& precision, bool ref = false,
                                 bool f32_floats = false) {
  ev::EngineOptions o;
  EXPECT_TRUE(ev::parse_precision_option(precision, &o).ok());
  if (f32_floats) {
    o.precision = ev::Precision::kF32;
    o.vision_precision = ev::Precision::kF32;
  }
  o.threads = 2;
  o.use_reference_backend = ref;
  auto e = ev::Engine::load(dir, o);
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? std::move(e).value() : nullptr;
}

ev::Tensor logits_of(ev::Engine& e, int64_t n = 4) {
  std::vector<int32_t> ids = {1, 5, 9, 2, 7, 3, 11, 4};
  ev::KvCache cache = e.model().make_cache(static_cast<int64_t>(ids.size()) + 1);
  auto l = e.forward_text(ids, ev::Tensor(), cache, n);
  EXPECT_TRUE(l.ok()) << l.status().to_string();
  return l.ok() ? *l : ev::Tensor();
}

double max_rel(const ev::Tensor& a, const ev::Tensor& b) {
  double m = 0, s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(a.data_as<float>()[i]) - b.data_as<float>()[i]));
    s = std::max(s, std::fabs(static_cast<double>(b.data_as<float>()[i])));
  }
  return s > 0 ? m / s : m;
}

TEST(QuantPlan, ClassifiesEveryLinearOfAModel) {
  auto e = load(kStudent, "auto");
  ASSERT_NE(e, nullptr);
  std::map<ev::LinearRole, int> n;
  for (const ev::LinearInfo& l : e->linears()) ++n[l.role];
  EXPECT_EQ(n[ev::LinearRole::kVisionAttention], 6 * 4);
  EXPECT_EQ(n[ev::LinearRole::kVisionMlp], 6 * 2);
  EXPECT_EQ(n[ev::LinearRole::kTextAttention], 4 * 4);
  EXPECT_EQ(n[ev::LinearRole::kTextMlp], 4 * 3);
  EXPECT_EQ(n[ev::LinearRole::kOutputHead], 1);
  EXPECT_EQ(n[ev::LinearRole::kProjector], 1);
  EXPECT_EQ(n[ev::LinearRole::kPatchEmbedding], 1);
  EXPECT_EQ(n[ev::LinearRole::kTemporal], 4);
  EXPECT_EQ(n[ev::LinearRole::kFastHead], 1);
  EXPECT_TRUE(e->linear_plan().empty());
}

TEST(QuantPlan, ModesPickTheirLayers) {
  auto i8 = load(kStudent, "int8");
  auto mx = load(kStudent, "mixed");
  ASSERT_NE(i8, nullptr);
  ASSERT_NE(mx, nullptr);
  const ev::PlanSummary a = ev::summarize_plan(i8->linear_plan(), i8->linears());
  const ev::PlanSummary b = ev::summarize_plan(mx->linear_plan(), mx->linears());
  EXPECT_EQ(a.int8_linears, 64 + 1);  // the bulk and the output head
  EXPECT_EQ(b.int8_linears, 64);      // the bulk
  for (const ev::LinearInfo& l : mx->linears()) {
    auto it = mx->linear_plan().precision.find(l.weight);
    const bool int8 = it != mx->linear_plan().precision.end() && it->second == ev::Precision::kInt8;
    EXPECT_EQ(int8, ev::is_bulk_role(l.role)) << l.module;
  }
  EXPECT_NE(i8->precision_label().find("int8 (65/"), std::string::npos) << i8->precision_label();
}

TEST(QuantPlan, PlanJsonIsCheckedAgainstTheModel) {
  auto e = load(kStudent, "auto");
  ASSERT_NE(e, nullptr);
  const auto& L = e->linears();
  auto ok = ev::parse_plan_json({{"plan", {{"model.text_model.layers.0.mlp.up_proj", "int8"}, {"lm_head", "bf16"}}}}, L, "p");
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->precision.size(), 2u);
  auto bad_key = ev::parse_plan_json({{"model.text_model.layers.9.mlp.up_proj", "int8"}}, L, "plan.json");
  ASSERT_FALSE(bad_key.ok());
  EXPECT_NE(bad_key.status().message().find("layers.9"), std::string::npos) << bad_key.status().to_string();
  auto bad_val = ev::parse_plan_json({{"lm_head", "int4"}}, L, "plan.json");
  ASSERT_FALSE(bad_val.ok());
  EXPECT_NE(bad_val.status().message().find("int4"), std::string::npos);
  auto bad_smooth = ev::parse_plan_json({{"plan", {{"lm_head", "int8"}}}, {"smooth", {{"lm_head", {1.0, 2.0}}}}}, L, "p");
  EXPECT_FALSE(bad_smooth.ok());
  EXPECT_FALSE(ev::parse_plan_json(nlohmann::json::array(), L, "p").ok());
}

TEST(QuantPlan, CpuBackendMatchesTheReferenceUnderAPlan) {
  auto cpu = load(kTiny, "int8", /*ref=*/false, /*f32_floats=*/true);
  auto ref = load(kTiny, "int8", /*ref=*/true, /*f32_floats=*/true);
  auto flt = load(kTiny, "f32");
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(ref, nullptr);
  ASSERT_NE(flt, nullptr);
  ASSERT_GT(ev::summarize_plan(cpu->linear_plan(), cpu->linears()).int8_linears, 0);
  const ev::Tensor a = logits_of(*cpu), b = logits_of(*ref), f = logits_of(*flt);
  ASSERT_EQ(a.numel(), b.numel());
  // Int8 Linears are bit-exact between the two; the f32 ops between them (norms, attention) differ in order only.
  EXPECT_LE(max_rel(a, b), 1e-3);
  // ... and the plan changed something: int8 is not the float model.
  EXPECT_GT(max_rel(a, f), 1e-5);
  // Back to float: the same engine gives the float result again.
  ASSERT_TRUE(cpu->set_linear_plan(ev::LinearPlan{}, "none").ok());
  EXPECT_LE(max_rel(logits_of(*cpu), f), 1e-4);
}

TEST(QuantTensor, QuantiseDequantiseAndErrors) {
  ev::Tensor w = ev::Tensor::empty(ev::DType::kF32, ev::Shape{3, 4});
  for (int i = 0; i < 12; ++i) w.data_as<float>()[i] = static_cast<float>(i - 5) * 0.25f;
  w.set_name("layer.weight");
  std::vector<float> sm = {1.f, 2.f, 0.5f, 1.f};
  auto q = ev::quantize_weight_int8(w, &sm);
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  EXPECT_EQ(q->dtype(), ev::DType::kI8);
  EXPECT_EQ(q->name(), "layer.weight");
  auto d = ev::dequantize_weight_int8(*q);
  ASSERT_TRUE(d.ok());
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(d->data_as<float>()[i], w.data_as<float>()[i], 0.02) << i;
  std::vector<float> bad = {1.f, -1.f, 1.f, 1.f};
  auto e1 = ev::quantize_weight_int8(w, &bad);
  ASSERT_FALSE(e1.ok());
  EXPECT_NE(e1.status().message().find("layer.weight"), std::string::npos);
  w.data_as<float>()[5] = NAN;
  auto e2 = ev::quantize_weight_int8(w);
  ASSERT_FALSE(e2.ok());
  EXPECT_NE(e2.status().message().find("row 1"), std::string::npos) << e2.status().to_string();
  ev::Tensor i8 = ev::Tensor::empty(ev::DType::kI8, ev::Shape{3, 4});
  EXPECT_FALSE(ev::check_int8_weight(i8).ok());  // no scales
}

// An int8 checkpoint whose scales are missing, or hold a negative value, is refused with the tensor's name.
TEST(QuantCheckpoint, BrokenScalesAreClearErrors) {
  auto td = ev::TempDir::create("edgevlm-quant");
  ASSERT_TRUE(td.ok());
  auto store = ev::TensorStore::open_dir(kStudent);
  ASSERT_TRUE(store.ok());
  const std::string target = "model.text_model.layers.1.mlp.up_proj";
  for (int variant = 0; variant < 2; ++variant) {
    const std::string dir = td->path() + "/m" + std::to_string(variant);
    fs::create_directories(dir);
    for (const auto& ent : fs::directory_iterator(kStudent))
      if (ent.path().filename() != "model.safetensors") fs::copy_file(ent.path(), fs::path(dir) / ent.path().filename());
    std::vector<std::pair<std::string, ev::Tensor>> ts;
    for (const std::string& n : store->names()) {
      ev::Tensor t = store->get(n).value();
      if (n == target + ".weight") {
        ev::Tensor q = ev::quantize_weight_int8(t).value();
        ts.emplace_back(n, q);
        if (variant == 1) {
          ev::Tensor s = q.quant()->scale.clone();
          s.data_as<float>()[3] = -1.f;
          ts.emplace_back(target + ".weight_scale", s);
        }
        continue;
      }
      ts.emplace_back(n, t);
    }
    ASSERT_TRUE(ev::write_safetensors(dir + "/model.safetensors", ts).ok());
    ev::EngineOptions o;
    auto e = ev::Engine::load(dir, o);
    ASSERT_FALSE(e.ok()) << "variant " << variant;
    EXPECT_NE(e.status().message().find(target), std::string::npos) << e.status().to_string();
  }
}

// edgevlm quantize on a tiny road-scene model (2 + 2 layers; the student takes ~1 min here, too slow for CI) with a
// tiny calibration: the written model loads as int8 and computes what the plan computed in memory (the tool
// verifies it); its weights are smaller than F32 (3.5x on the student: bench/BENCHMARKS.md, INT8).
TEST(QuantizeTool, WritesAVerifiedInt8Model) {
  auto td = ev::TempDir::create("edgevlm-quantize");
  ASSERT_TRUE(td.ok());
  ev::QuantizeOptions o;
  o.model = kTinyRoad;
  o.out = td->path() + "/int8";
  o.plan = "auto";
  o.calib = "sim:3000000:1:75";  // 2 frames
  o.smooth = "off";
  o.max_tokens = 12;
  o.min_top1 = 0.0;
  o.threads = 2;
  o.progress = false;
  // Bad options first.
  ev::QuantizeOptions bad = o;
  bad.calib = "sim:x:1";
  EXPECT_FALSE(ev::check_quantize_options(bad).ok());
  bad = o;
  bad.smooth = "maybe";
  EXPECT_FALSE(ev::check_quantize_options(bad).ok());
  bad = o;
  bad.plan = "/no/such/plan.json";
  EXPECT_FALSE(ev::check_quantize_options(bad).ok());

  o.budget_kl = 1e-3;
  auto j = ev::quantize_json(o);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_EQ((*j)["layers"].size(), 2u * 6 + 2u * 7 + 1u);
  EXPECT_LE((*j)["drift"]["kl"].get<double>(), 1e-3);
  EXPECT_TRUE((*j)["drift"]["within_budget"].get<bool>());
  EXPECT_GE((*j)["bytes"]["f32_over_written"].get<double>(), 1.5) << (*j)["bytes"].dump();
  EXPECT_FALSE(ev::quantize_table(*j).empty());
  EXPECT_NE(ev::quantize_svg(*j).find("<svg"), std::string::npos);
  auto e = load(o.out, "auto");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(ev::summarize_plan(e->linear_plan(), e->linears()).int8_linears, (*j)["int8_linears"].get<int>());
  // A budget of zero KL cannot hold with any layer in int8: the greedy search returns layers to float, one per
  // measured step, most sensitive first, until the whole model's KL is 0.
  ev::QuantizeOptions tight = o;
  tight.out = td->path() + "/tight";
  tight.budget_kl = 0.0;
  auto t = ev::quantize_json(tight);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  ASSERT_TRUE((*t)["drift"]["kl"].is_number());
  EXPECT_GT((*t)["steps"].size(), 1u);
  EXPECT_LT((*t)["int8_linears"].get<int>(), (*j)["int8_linears"].get<int>());
  EXPECT_TRUE((*t)["drift"]["within_budget"].get<bool>()) << (*t)["drift"].dump();
  for (size_t i = 1; i < (*t)["steps"].size(); ++i)
    EXPECT_EQ((*t)["steps"][i]["int8_layers"].get<int>(), (*t)["steps"][i - 1]["int8_layers"].get<int>() - 1);
  // Quantising an int8 model again is refused.
  ev::QuantizeOptions again = o;
  again.model = o.out;
  again.out = td->path() + "/again";
  auto r = ev::quantize_json(again);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("already quantised"), std::string::npos) << r.status().to_string();
}

}  // namespace

namespace {

// bench --precision f32 --precision int8 --precision mixed: one engine per precision, timed side by side.
TEST(QuantBench, PrecisionsSideBySide) {
  ev::BenchOptions o;
  o.shape = "tiny";
  o.threads = 2;
  o.repeats = 2;
  o.prefill_tokens = 8;
  o.decode_tokens = 3;
  o.ceilings_seconds = 0.05;
  o.progress = false;
  o.precisions = {"f32", "int8", "mixed"};
  o.precision = "f32";
  auto r = ev::bench_json(o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const nlohmann::json& v = (*r)["precision_variants"];
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0]["int8_linears"].get<int>(), 0);
  EXPECT_GT(v[1]["int8_linears"].get<int>(), v[2]["int8_linears"].get<int>());  // int8 adds the output head
  EXPECT_GT(v[2]["int8_linears"].get<int>(), 0);
  for (const auto& e : v) {
    EXPECT_GT(e["vision"]["median_s"].get<double>(), 0) << e.dump();
    EXPECT_GT(e["decode"]["tokens_per_s"].get<double>(), 0) << e.dump();
    EXPECT_GT(e["vision_linear"]["median_s"].get<double>(), 0) << e.dump();
  }
  // int8 weights count one byte each: the int8 decode step reads fewer weight bytes than the f32 one.
  EXPECT_LT(v[1]["decode"]["weight_bytes_per_token"].get<double>(), 0.5 * v[0]["decode"]["weight_bytes_per_token"].get<double>());
  EXPECT_NE(ev::bench_table(*r).find("precisions side by side"), std::string::npos);
  o.precisions = {"f32", "fp4"};
  EXPECT_FALSE(ev::bench_json(o).ok());
}

}  // namespace

namespace {

// Calibration on a real clip (no truth): the plan is measured on its frames, no field accuracy is claimed.
TEST(QuantizeTool, CalibratesOnARealClip) {
  const std::string clip = std::string(EDGEVLM_SHARED_DATA_DIR) + "/real/lanelines/solidWhiteRight.mp4";
  if (!fs::exists(clip)) GTEST_SKIP() << "shared data absent (" << clip << "): a fresh clone has no ../shared";
  auto td = ev::TempDir::create("edgevlm-quantize-video");
  ASSERT_TRUE(td.ok());
  ev::QuantizeOptions o;
  o.model = kTinyRoad;
  o.out = td->path() + "/int8";
  o.calib = "video:" + clip + ":30:3";
  o.smooth = "off";
  o.max_tokens = 8;
  o.threads = 2;
  o.progress = false;
  auto j = ev::quantize_json(o);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_EQ((*j)["calibration"]["frames"].get<int>(), 3);
  EXPECT_TRUE((*j)["accuracy"].is_null());
  EXPECT_NE(ev::quantize_table(*j).find("no ground truth"), std::string::npos);
  o.calib = "video:" + td->path() + "/missing.mp4";
  EXPECT_FALSE(ev::check_quantize_options(o).ok());
  o.calib = "video:" + clip + ":0";
  EXPECT_FALSE(ev::check_quantize_options(o).ok());
}

}  // namespace
