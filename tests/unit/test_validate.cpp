// Tests of edgevlm validate (src/tools/validate.h): the metric building blocks, tolerance files, and whole runs on
// the tiny road-scene fixture against itself (no drift at all), against a copy with one weight scaled, and with
// aggressive token pruning (drift that the metrics must see and a tight tolerance must reject).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "formats/safetensors.h"
#include "tools/report.h"
#include "tools/validate.h"

namespace ev {
namespace {

namespace fs = std::filesystem;

const std::string kTiny = std::string(EDGEVLM_FIXTURE_DIR) + "/tiny-road-temporal/model";

ValidateOptions tiny_options(const std::string& candidate) {
  ValidateOptions o;
  o.reference = kTiny;
  o.candidate = candidate;
  o.reference_precision = o.candidate_precision = "f32";
  o.scenarios = 1;
  o.frames = 3;
  o.every = 1;  // three consecutive frames: two pairs for flicker
  o.max_tokens = 6;
  o.threads = 2;
  o.progress = false;
  return o;
}

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A copy of the tiny model with `tensor` multiplied by `scale`.
Result<TempDir> scaled_copy(const std::string& tensor, float scale) {
  EV_ASSIGN_OR_RETURN(TempDir dir, TempDir::create("edgevlm-test-validate-"));
  for (const auto& e : fs::directory_iterator(kTiny))
    if (e.path().filename() != "model.safetensors") fs::copy_file(e.path(), fs::path(dir.path()) / e.path().filename());
  EV_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(kTiny + "/model.safetensors"));
  std::vector<std::pair<std::string, Tensor>> out;
  bool found = false;
  for (const auto& name : f.names()) {
    EV_ASSIGN_OR_RETURN(Tensor t, f.get(name));
    if (name == tensor) {
      EV_ASSIGN_OR_RETURN(Tensor x, t.to(DType::kF32));
      for (int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] *= scale;
      EV_ASSIGN_OR_RETURN(t, x.to(t.dtype()));
      found = true;
    }
    out.emplace_back(name, t);
  }
  if (!found) return InvalidArgument("no tensor " + tensor);
  EV_RETURN_IF_ERROR(write_safetensors(dir.path() + "/model.safetensors", out));
  return dir;
}

const nlohmann::json* check(const nlohmann::json& j, const std::string& key) {
  for (const auto& c : j.at("checks"))
    if (c.value("key", "") == key) return &c;
  return nullptr;
}

// ---- building blocks ----

TEST(Validate, KlAndCosine) {
  const float p[4] = {1, 2, 3, 4}, shifted[4] = {11, 12, 13, 14}, q[4] = {4, 3, 2, 1};
  bool same = false;
  EXPECT_EQ(kl_logits(p, p, 4, &same), 0.0);
  EXPECT_TRUE(same);
  EXPECT_NEAR(kl_logits(p, shifted, 4, &same), 0.0, 1e-12);  // softmax is shift-invariant
  EXPECT_TRUE(same);
  // By hand: softmax of {0, ln 3} = {1/4, 3/4}, of {ln 3, 0} = {3/4, 1/4}; KL = 1/4 ln(1/3) + 3/4 ln 3 = ln(3) / 2.
  const float a[2] = {0, std::log(3.f)}, b[2] = {std::log(3.f), 0};
  EXPECT_NEAR(kl_logits(a, b, 2, &same), std::log(3.0) / 2, 1e-6);
  EXPECT_FALSE(same);
  EXPECT_GT(kl_logits(p, q, 4), 0.5);

  const float x[6] = {1, 0, 0, 0, 2, 0}, y[6] = {2, 0, 0, 0, 0, 3};  // row 0 parallel, row 1 orthogonal
  EXPECT_NEAR(mean_row_cosine(x, y, 2, 3), 0.5, 1e-12);
  const float z[3] = {0, 0, 0};
  EXPECT_EQ(mean_row_cosine(z, z, 1, 3), 1.0);
  const float neg[3] = {-1, 0, 0};
  EXPECT_NEAR(mean_row_cosine(x, neg, 1, 3), -1.0, 1e-12);
}

// ---- tolerance files ----

TEST(Validate, ToleranceParsing) {
  auto d = parse_tolerance(nlohmann::json::object());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->max_mean_kl, 0.05);
  EXPECT_EQ(d->min_cosine_text, 0.97);

  auto t = parse_tolerance(nlohmann::json::parse(
      R"({"max_mean_kl": 0.01, "min_top1_agreement": 0.9, "max_accuracy_drop": null,
          "min_cosine": {"vision": 0.99, "text": 0.95}, "max_changed_answers": 0.2, "max_flicker_increase": 0.5})"));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->max_mean_kl, 0.01);
  EXPECT_EQ(t->min_top1_agreement, 0.9);
  EXPECT_FALSE(t->max_accuracy_drop.has_value());  // null: not checked
  EXPECT_EQ(t->min_cosine_vision, 0.99);
  EXPECT_EQ(t->min_cosine_connector, 0.98);  // default kept
  EXPECT_EQ(t->min_cosine_text, 0.95);
  auto all = parse_tolerance(nlohmann::json::parse(R"({"min_cosine": 0.5})"));
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->min_cosine_vision, 0.5);
  EXPECT_EQ(all->min_cosine_connector, 0.5);

  auto unknown = parse_tolerance(nlohmann::json::parse(R"({"max_kl": 0.1})"), "tol.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().to_string().find("tol.json"), std::string::npos);
  EXPECT_NE(unknown.status().to_string().find("\"max_kl\""), std::string::npos) << unknown.status().to_string();
  auto sub = parse_tolerance(nlohmann::json::parse(R"({"min_cosine": {"vision": 0.9, "decoder": 0.9}})"));
  ASSERT_FALSE(sub.ok());
  EXPECT_NE(sub.status().to_string().find("min_cosine.decoder"), std::string::npos);
  auto type = parse_tolerance(nlohmann::json::parse(R"({"max_mean_kl": "small"})"));
  ASSERT_FALSE(type.ok());
  EXPECT_NE(type.status().to_string().find("max_mean_kl"), std::string::npos);
  EXPECT_FALSE(parse_tolerance(nlohmann::json::parse(R"({"min_top1_agreement": 1.5})")).ok());
  EXPECT_FALSE(parse_tolerance(nlohmann::json::parse(R"([0.05])")).ok());

  auto dir = TempDir::create("edgevlm-test-validate-");
  ASSERT_TRUE(dir.ok());
  write(dir->path() + "/bad.json", "{\"max_mean_kl\": 0.05,");
  auto bad = load_tolerance(dir->path() + "/bad.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().to_string().find("bad.json"), std::string::npos) << bad.status().to_string();
  EXPECT_FALSE(load_tolerance(dir->path() + "/missing.json").ok());
}

// ---- whole runs ----

TEST(Validate, ModelAgainstItselfHasNoDrift) {
  auto dir = TempDir::create("edgevlm-test-validate-");
  ASSERT_TRUE(dir.ok());
  ValidateOptions o = tiny_options(kTiny);
  auto j = validate_json(o, ValidateTolerance{});
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_EQ(j->value("frames", 0), 3);
  EXPECT_EQ(j->value("frames_with_truth", 0), 3);
  EXPECT_EQ((*j)["kl"].value("mean", 1.0), 0.0);
  EXPECT_EQ((*j)["kl"].value("max", 1.0), 0.0);
  EXPECT_GE((*j)["kl"].value("positions", 0), 3);
  EXPECT_EQ(j->value("top1_agreement", 0.0), 1.0);
  EXPECT_EQ((*j)["changed_answers"].value("fraction", 1.0), 0.0);
  EXPECT_EQ((*j)["accuracy"].value("drop", 1.0), 0.0);
  EXPECT_EQ((*j)["flicker"].value("increase", 1.0), 0.0);
  EXPECT_EQ((*j)["flicker"]["reference"].value("pairs", 0), 2);
  // Every captured layer: 2 vision layers, the connector, 2 text layers, each with cosine 1 on all 3 frames.
  const auto& cos = (*j)["cosine"];
  ASSERT_EQ(cos["vision"].size(), 2u);
  ASSERT_EQ(cos["connector"].size(), 1u);
  ASSERT_EQ(cos["text"].size(), 2u);
  for (const char* g : {"vision", "connector", "text"})
    for (const auto& l : cos[g]) {
      EXPECT_NEAR(l.value("mean", 0.0), 1.0, 1e-12) << l.dump();
      EXPECT_EQ(l.value("frames", 0), 3);
      EXPECT_FALSE(l.value("pooled", true));
    }
  ASSERT_FALSE((*j)["fast_head"].is_null());
  EXPECT_EQ((*j)["fast_head"].value("max_abs_diff", 1.0), 0.0);
  EXPECT_EQ((*j)["fast_head"].value("decision_agreement", 0.0), 1.0);
  EXPECT_TRUE(j->value("pass", false)) << (*j)["violations"].dump();
  for (const auto& c : (*j)["checks"]) EXPECT_EQ(c.value("status", ""), "pass") << c.dump();

  // The command: exit 0, JSON and SVG written.
  o.json_out = dir->path() + "/v.json";
  o.svg_out = dir->path() + "/v.svg";
  EXPECT_EQ(run_validate(o), 0);
  auto written = nlohmann::json::parse(slurp(o.json_out));
  EXPECT_TRUE(written.value("pass", false));
  const std::string svg = slurp(o.svg_out);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("v.blk.1.out"), std::string::npos);
  EXPECT_NE(svg.find("t.blk.0.out"), std::string::npos);
  EXPECT_NE(svg.find("KL (nats)"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(validate_table(*j).find("PASS"), std::string::npos);
}

TEST(Validate, ScaledWeightDriftsAndTightToleranceFails) {
  auto copy = scaled_copy("model.vision_model.encoder.layers.1.mlp.fc2.weight", 3.0f);
  ASSERT_TRUE(copy.ok()) << copy.status().to_string();
  ValidateOptions o = tiny_options(copy->path());
  auto j = validate_json(o, ValidateTolerance{});
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_GT((*j)["kl"].value("mean", 0.0), 0.0);
  const auto& v = (*j)["cosine"]["vision"];
  ASSERT_EQ(v.size(), 2u);
  // Layer 0 is before the scaled weight: identical; layer 1 and everything after it moves.
  EXPECT_NEAR(v[0].value("mean", 0.0), 1.0, 1e-12);
  EXPECT_LT(v[1].value("mean", 1.0), 0.9999);
  EXPECT_LT((*j)["cosine"]["connector"][0].value("mean", 1.0), 0.9999);
  EXPECT_LT((*j)["cosine"]["text"][0].value("mean", 1.0), 1.0);
  EXPECT_EQ((*j)["cosine"]["min"]["vision"].value("layer", ""), "v.blk.1.out");
  EXPECT_GT((*j)["fast_head"].value("max_abs_diff", 0.0), 0.0);

  auto dir = TempDir::create("edgevlm-test-validate-");
  ASSERT_TRUE(dir.ok());
  write(dir->path() + "/tight.json", R"({"max_mean_kl": 1e-9, "min_cosine": {"vision": 0.9999}, "max_fast_head_diff": null})");
  auto tol = load_tolerance(dir->path() + "/tight.json");
  ASSERT_TRUE(tol.ok()) << tol.status().to_string();
  auto jt = validate_json(o, *tol);
  ASSERT_TRUE(jt.ok());
  EXPECT_FALSE(jt->value("pass", true));
  const nlohmann::json* kl = check(*jt, "max_mean_kl");
  ASSERT_NE(kl, nullptr);
  EXPECT_EQ(kl->value("status", ""), "fail");
  EXPECT_EQ(kl->value("limit", 0.0), 1e-9);
  EXPECT_GT(kl->value("measured", 0.0), 1e-9);
  EXPECT_EQ(check(*jt, "min_cosine.vision")->value("status", ""), "fail");
  EXPECT_EQ(check(*jt, "max_fast_head_diff")->value("status", ""), "not checked");
  bool kl_listed = false;
  for (const auto& x : (*jt)["violations"]) kl_listed |= x.value("key", "") == "max_mean_kl";
  EXPECT_TRUE(kl_listed);
  EXPECT_NE(validate_table(*jt).find("FAIL"), std::string::npos);

  o.tolerance = dir->path() + "/tight.json";
  EXPECT_EQ(run_validate(o), 1);
}

TEST(Validate, TokenPruningIsSeenAndRealImagesHaveNoAccuracy) {
  const std::string still = std::string(EDGEVLM_FIXTURE_DIR) + "/images/img_a.jpg";
  ValidateOptions o = tiny_options(kTiny);
  o.candidate_prune = "0:0.25";  // keep 4 of 16 tokens after vision layer 0
  o.images = {still, std::string(EDGEVLM_FIXTURE_DIR) + "/images/img_b.png"};
  auto j = validate_json(o, ValidateTolerance{});
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_EQ(j->value("frames", 0), 2);  // the stills only: no scenario without --seed / --scenarios
  EXPECT_TRUE((*j)["accuracy"].is_null());
  EXPECT_EQ(check(*j, "max_accuracy_drop")->value("status", ""), "not measured");
  EXPECT_EQ(check(*j, "max_flicker_increase")->value("status", ""), "not measured");  // stills: no pairs
  EXPECT_EQ((*j)["candidate"].value("prune", ""), "0:0.25");
  const auto& v = (*j)["cosine"]["vision"];
  ASSERT_EQ(v.size(), 2u);
  EXPECT_NEAR(v[0].value("mean", 0.0), 1.0, 1e-12);  // pruning happens after layer 0's output
  EXPECT_TRUE(v[1].value("kept_tokens", false));    // 4 tokens against the same 4 of the reference's 16
  EXPECT_LT(v[1].value("mean", 1.0), 1.0);          // attention over 4 tokens instead of 16
  EXPECT_GT(v[1].value("mean", 0.0), 0.0);
  EXPECT_LT((*j)["cosine"]["connector"][0].value("mean", 1.0), 1.0);
  EXPECT_GT((*j)["kl"].value("mean", 0.0), 0.0);
}

TEST(Validate, InputErrorsExitTwo) {
  auto dir = TempDir::create("edgevlm-test-validate-");
  ASSERT_TRUE(dir.ok());
  ValidateOptions o = tiny_options(kTiny);
  write(dir->path() + "/unknown.json", R"({"max_mean_kl": 0.1, "min_top_1": 0.9})");
  o.tolerance = dir->path() + "/unknown.json";
  EXPECT_EQ(run_validate(o), 2);
  o.tolerance.clear();
  o.candidate = dir->path() + "/no-such-model";
  EXPECT_EQ(run_validate(o), 2);
  o.candidate = kTiny;
  o.candidate_precision = "f64";
  EXPECT_EQ(run_validate(o), 2);
  o.candidate_precision = "f32";
  o.candidate_prune = "nonsense";
  EXPECT_EQ(run_validate(o), 2);
  o.candidate_prune = "none";
  o.every = 0;
  EXPECT_EQ(run_validate(o), 2);
}

}  // namespace
}  // namespace ev
