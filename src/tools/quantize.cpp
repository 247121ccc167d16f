#include "tools/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include <CLI/CLI.hpp>

#include "core/clock.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"
#include "kernels/ref/quant_tensor.h"
#include "kernels/ref/ref_ops.h"
#include "models/quant_plan.h"
#include "perception/video_source.h"
#include "runtime/engine.h"
#include "sim/truth.h"
#include "tools/eval.h"
#include "tools/prune_heads.h"
#include "tools/report.h"
#include "tools/sim_frames.h"

namespace ev {

namespace fs = std::filesystem;

float smooth_factor(float amax_x, float amax_w, double alpha) {
  if (!(amax_x > 0.f) || !(amax_w > 0.f) || !std::isfinite(amax_x) || !std::isfinite(amax_w)) return 1.f;
  const double s = std::pow(static_cast<double>(amax_x), alpha) / std::pow(static_cast<double>(amax_w), 1.0 - alpha);
  return static_cast<float>(std::clamp(s, 1e-4, 1e4));
}

namespace {

struct CalibSpec {
  uint64_t seed = 3000000;
  int scenarios = 8;
  int every = 15;
  std::string video;  // video:PATH[:EVERY[:MAX]] instead of the simulator (no truth: no field accuracy)
  int max_frames = 40;
};

Result<CalibSpec> parse_calib(const std::string& s) {
  CalibSpec c;
  const std::string usage = "--calib '" + s + "': expected sim:SEED:SCENARIOS[:EVERY] (e.g. sim:3000000:8:15) or "
                            "video:PATH[:EVERY[:MAX]] (e.g. video:clip.mp4:15:40)";
  if (s.rfind("video:", 0) == 0) {
    std::string rest = s.substr(6);
    std::vector<std::string> nums;
    // Trailing ":N" fields are numbers; the path itself may hold colons.
    for (int i = 0; i < 2; ++i) {
      const size_t p = rest.rfind(':');
      if (p == std::string::npos) break;
      const std::string tail = rest.substr(p + 1);
      if (tail.empty() || tail.find_first_not_of("0123456789") != std::string::npos) break;
      nums.insert(nums.begin(), tail);
      rest = rest.substr(0, p);
    }
    if (rest.empty()) return InvalidArgument(usage);
    c.video = rest;
    try {
      if (!nums.empty()) c.every = std::stoi(nums[0]);
      if (nums.size() > 1) c.max_frames = std::stoi(nums[1]);
    } catch (const std::exception&) {
      return InvalidArgument(usage);
    }
    if (c.every < 1 || c.every > 100000) return InvalidArgument(usage + ": EVERY must be in 1..100000");
    if (c.max_frames < 1 || c.max_frames > 100000) return InvalidArgument(usage + ": MAX must be in 1..100000");
    std::error_code ec;
    if (!fs::is_regular_file(c.video, ec)) return NotFound("--calib " + s + ": no such file " + c.video);
    return c;
  }
  std::vector<std::string> parts;
  size_t b = 0;
  for (size_t p = s.find(':'); ; p = s.find(':', b)) {
    parts.push_back(s.substr(b, p == std::string::npos ? std::string::npos : p - b));
    if (p == std::string::npos) break;
    b = p + 1;
  }
  if (parts.size() < 3 || parts.size() > 4 || parts[0] != "sim") return InvalidArgument(usage);
  try {
    size_t used = 0;
    c.seed = std::stoull(parts[1], &used);
    if (used != parts[1].size()) return InvalidArgument(usage);
    c.scenarios = std::stoi(parts[2], &used);
    if (used != parts[2].size()) return InvalidArgument(usage);
    if (parts.size() == 4) {
      c.every = std::stoi(parts[3], &used);
      if (used != parts[3].size()) return InvalidArgument(usage);
    }
  } catch (const std::exception&) {
    return InvalidArgument(usage);
  }
  if (c.scenarios < 1 || c.scenarios > 10000) return InvalidArgument(usage + ": SCENARIOS must be in 1..10000");
  if (c.every < 1 || c.every > 100000) return InvalidArgument(usage + ": EVERY must be in 1..100000");
  return c;
}

bool is_candidate(const LinearInfo& l) { return is_bulk_role(l.role) || l.role == LinearRole::kOutputHead; }

// Per input channel, the largest |x| entering each Linear (keyed by weight name) over the observed passes.
struct ActStats {
  std::mutex mu;
  std::map<std::string, std::vector<float>> amax;
};

std::vector<float> weight_col_amax(const Tensor& w) {
  const ref::F32Data f(w);
  const int64_t N = w.dim(0), K = w.dim(1);
  std::vector<float> m(static_cast<size_t>(K), 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) m[static_cast<size_t>(k)] = std::max(m[static_cast<size_t>(k)], std::fabs(f.data()[n * K + k]));
  return m;
}

struct Measure {
  double kl = 0, top1 = 1;
};

nlohmann::json measure_json(const Measure& m) { return {{"kl", m.kl}, {"top1", m.top1}}; }

uint64_t file_bytes(const std::string& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

// Writes the quantised copy of model_dir: the plan's int8 weights as q / weight_scale (/ input_smooth).
Status write_quantized_model(const std::string& model_dir, const TensorStore& store, const std::string& out_dir,
                             const Engine& eng, const LinearPlan& plan, const nlohmann::json& record) {
  EV_RETURN_IF_ERROR(prepare_derived_dir(model_dir, out_dir, "quantised"));
  // Which stored tensors become int8, and under which name (a tied output head gets lm_head.* of its own).
  std::map<std::string, std::string> int8_as;  // source tensor -> written weight name
  for (const LinearInfo& l : eng.linears()) {
    auto it = plan.precision.find(l.weight);
    if (it == plan.precision.end() || it->second != Precision::kInt8 || l.dtype == DType::kI8) continue;
    const bool tied_head = l.role == LinearRole::kOutputHead && l.weight.find("lm_head") == std::string::npos;
    int8_as[l.weight] = tied_head ? "lm_head.weight" : l.weight;
  }
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::set<std::string> written;
  for (const std::string& name : store.names()) {
    auto t = store.get(name);
    if (!t.ok()) return t.status().with_context(model_dir);
    Tensor w = std::move(t).value();
    auto q = int8_as.find(name);
    if (q != int8_as.end()) {
      const std::vector<float>* sm = plan.smooth_of(name);
      EV_ASSIGN_OR_RETURN(Tensor qw, quantize_weight_int8(w, sm));
      const std::string& wn = q->second;
      const std::string base = wn.substr(0, wn.size() - std::string(".weight").size());
      tensors.emplace_back(wn, qw);
      tensors.emplace_back(base + ".weight_scale", qw.quant()->scale);
      if (sm) tensors.emplace_back(base + ".input_smooth", qw.quant()->smooth);
      if (wn == name) continue;  // replaced; a tied head keeps its embedding table too
    }
    tensors.emplace_back(name, std::move(w));
  }
  for (const auto& [n, t] : tensors)
    if (!written.insert(n).second) return Internal("quantize: tensor '" + n + "' would be written twice");
  EV_ASSIGN_OR_RETURN(nlohmann::ordered_json j, read_ordered_config(model_dir));
  nlohmann::ordered_json& ed = j["edgevlm"];
  if (!ed.is_object()) ed = nlohmann::ordered_json::object();
  ed["quantization"] = nlohmann::ordered_json::parse(record.dump());
  return write_derived_model(model_dir, store, out_dir, tensors, j);
}

}  // namespace

void add_quantize_options(CLI::App& app, QuantizeOptions& o) {
  app.add_option("--model", o.model, "float model directory (Hugging Face layout) of a road-scene model")->required();
  app.add_option("--out", o.out, "directory to write the quantised model to")->required();
  app.add_option("--plan", o.plan,
                 "auto (sensitivity analysis within the drift budget), int8 (every candidate layer) or a plan JSON file");
  app.add_option("--calib", o.calib, "calibration frames: sim:SEED:SCENARIOS[:EVERY] or video:PATH[:EVERY[:MAX]]");
  app.add_option("--budget-kl", o.budget_kl, "largest mean KL(float || quantised) per answer position, nats (--plan auto)");
  app.add_option("--min-top1", o.min_top1, "smallest top-1 agreement with the float model (--plan auto)");
  app.add_option("--smooth", o.smooth, "SmoothQuant factors: auto (where they lower a layer's KL), on or off");
  app.add_option("--alpha", o.alpha, "SmoothQuant migration strength alpha in [0, 1]");
  app.add_option("--max-tokens", o.max_tokens, "maximum tokens of a reference description");
  app.add_option("--precision", o.precision, "float precision of the layers kept in float: auto, f32 or bf16");
  app.add_option("--threads", o.threads, "threads (0: all)");
  app.add_option("--json", o.json_path, "write the JSON report to FILE");
  app.add_option("--svg", o.svg_path, "write the per-layer sensitivity picture to FILE");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
}

Status check_quantize_options(const QuantizeOptions& o) {
  std::error_code ec;
  if (o.model.empty()) return InvalidArgument("--model is required");
  if (!fs::is_directory(o.model, ec)) return NotFound("--model " + o.model + ": no such directory");
  if (!fs::exists(fs::path(o.model) / "config.json", ec))
    return NotFound("--model " + o.model + ": no config.json there (not a model directory)");
  if (o.out.empty()) return InvalidArgument("--out is required");
  if (o.plan != "auto" && o.plan != "int8" && !fs::is_regular_file(o.plan, ec))
    return NotFound("--plan " + o.plan + ": not auto, int8 or an existing plan file");
  EV_RETURN_IF_ERROR(parse_calib(o.calib).status());
  if (!(o.budget_kl >= 0) || o.budget_kl > 100) return InvalidArgument("--budget-kl must be in [0, 100] nats");
  if (!(o.min_top1 >= 0) || o.min_top1 > 1) return InvalidArgument("--min-top1 must be in [0, 1]");
  if (o.smooth != "auto" && o.smooth != "on" && o.smooth != "off")
    return InvalidArgument("--smooth '" + o.smooth + "' is not auto, on or off");
  if (!(o.alpha >= 0) || o.alpha > 1) return InvalidArgument("--alpha must be in [0, 1]");
  if (o.max_tokens < 1 || o.max_tokens > 4096) return InvalidArgument("--max-tokens must be in 1..4096");
  if (o.precision != "auto" && o.precision != "f32" && o.precision != "bf16")
    return InvalidArgument("--precision '" + o.precision + "': the float precision is auto, f32 or bf16");
  return Status::Ok();
}

Result<nlohmann::json> quantize_json(const QuantizeOptions& o) {
  EV_RETURN_IF_ERROR(check_quantize_options(o));
  EV_ASSIGN_OR_RETURN(const CalibSpec cs, parse_calib(o.calib));
  const double t0 = now_s();
  EvalOptions eo;
  eo.model = o.model;
  eo.seed = cs.seed;
  eo.scenarios = cs.scenarios;
  eo.every = cs.every;
  eo.max_tokens = o.max_tokens;
  eo.precision = o.precision;
  eo.threads = o.threads;
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> eng, eval_engine(eo));
  for (const LinearInfo& l : eng->linears())
    if (l.dtype == DType::kI8)
      return InvalidArgument("--model " + o.model + " is already quantised ('" + l.weight + "' is int8): start from the float model");
  const int S = eng->model().tile_size();
  std::vector<sim::ScenarioSpec> specs;
  if (cs.video.empty()) {
    EV_ASSIGN_OR_RETURN(specs, eval_scenarios(eo, S));
  }

  StatusLine sl("quantize", o.progress);
  std::string stage;
  const HeadProgress prog = [&](const std::string& what, int64_t d, int64_t t) {
    sl.update("%s%s %lld/%lld, %.0f s", stage.c_str(), what.c_str(), static_cast<long long>(d),
              static_cast<long long>(t), now_s() - t0);
  };

  // 1. Calibration frames, truth, reference answers and distributions.
  std::vector<Image> images;
  std::vector<std::map<std::string, std::string>> truth;
  EV_RETURN_IF_ERROR(sim_calibration_frames(specs, cs.every, &images, &truth));
  if (!cs.video.empty()) {
    VideoSourceOptions vo;
    EV_ASSIGN_OR_RETURN(std::unique_ptr<VideoSource> src, open_video_source(cs.video, vo));
    VideoFrame f;
    while (static_cast<int>(images.size()) < cs.max_frames) {
      EV_ASSIGN_OR_RETURN(bool more, src->next(&f));
      if (!more) break;
      if (f.index % cs.every == 0) images.push_back(f.image);
    }
  }
  if (images.empty()) return InvalidArgument("--calib " + o.calib + ": no calibration frame");
  const bool have_truth = !truth.empty();
  stage = "reference: ";
  EV_ASSIGN_OR_RETURN(HeadCalibration cal,
                      HeadCalibration::create(*eng, images, eng->describe_prompt(), o.max_tokens, prog));
  const FieldScore float_score = have_truth ? score_fields(cal.reference_answers(), truth) : FieldScore{};

  // 2. Activation and weight statistics.
  std::vector<const LinearInfo*> cands;
  for (const LinearInfo& l : eng->linears())
    if (is_candidate(l)) cands.push_back(&l);
  if (cands.empty()) return InvalidArgument("--model " + o.model + ": no Linear layer to quantise");
  ActStats stats;
  for (const LinearInfo* l : cands) stats.amax[l->weight].assign(static_cast<size_t>(l->k), 0.f);
  ExecOptions ex;
  ex.on_inputs = [&stats](const Node& n, const std::vector<const Tensor*>& in) {
    if (n.op != OpKind::kLinear || in.size() < 2) return;
    // A fused weight (llama_text.h: "...qkv_proj.weight", "...gate_up_proj.weight") is fed the input of each of
    // its parts.
    std::vector<std::string> names = {in[1]->name()};
    auto expand = [&](const char* fused, std::initializer_list<const char*> parts) {
      const size_t p = names[0].find(fused);
      if (p == std::string::npos) return;
      std::vector<std::string> v;
      for (const char* part : parts) v.push_back(names[0].substr(0, p) + part + names[0].substr(p + std::strlen(fused)));
      names = v;
    };
    expand("qkv_proj", {"q_proj", "k_proj", "v_proj"});
    expand("gate_up_proj", {"gate_proj", "up_proj"});
    const Tensor& x = *in[0];
    const int64_t K = x.shape().cols(), R = x.shape().rows();
    std::lock_guard<std::mutex> lk(stats.mu);
    for (const std::string& name : names) {
      auto it = stats.amax.find(name);
      if (it == stats.amax.end() || K != static_cast<int64_t>(it->second.size())) continue;
      float* m = it->second.data();
      for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < K; ++k) m[k] = std::max(m[k], std::fabs(x.data_as<const float>()[r * K + k]));
    }
  };
  stage = "activation statistics: ";
  EV_RETURN_IF_ERROR(cal.observe(*eng, ex, prog));
  EV_ASSIGN_OR_RETURN(TensorStore store, TensorStore::open_dir(o.model));
  std::map<std::string, std::shared_ptr<const std::vector<float>>> smooth;
  std::map<std::string, double> outlier_ratio;  // max / median of the activation channel maxima
  for (const LinearInfo* l : cands) {
    EV_ASSIGN_OR_RETURN(Tensor w, store.get(l->weight));
    if (w.ndim() != 2) continue;
    const std::vector<float> wm = weight_col_amax(w);
    const std::vector<float>& xm = stats.amax[l->weight];
    auto s = std::make_shared<std::vector<float>>(xm.size());
    for (size_t k = 0; k < xm.size(); ++k) (*s)[k] = smooth_factor(xm[k], wm[k], o.alpha);
    smooth[l->weight] = s;
    std::vector<float> sorted = xm;
    std::sort(sorted.begin(), sorted.end());
    const float med = sorted[sorted.size() / 2];
    outlier_ratio[l->weight] = med > 0 ? sorted.back() / med : 0.0;
  }

  auto measure = [&](const LinearPlan& plan, const std::string& what) -> Result<Measure> {
    EV_RETURN_IF_ERROR(eng->set_linear_plan(plan, what));
    Measure m;
    EV_ASSIGN_OR_RETURN(m.kl, cal.kl(*eng, {}, nullptr, nullptr, &m.top1));
    return m;
  };

  // 3. Sensitivity of each candidate alone.
  nlohmann::json layers = nlohmann::json::array();
  std::map<std::string, double> sens;   // chosen variant's KL
  std::map<std::string, bool> use_smooth;
  int k = 0;
  for (const LinearInfo* l : cands) {
    ++k;
    stage = strf("sensitivity %d/%zu (%s): ", k, cands.size(), l->module.c_str());
    LinearPlan p;
    p.precision[l->weight] = Precision::kInt8;
    Measure plain{}, smoothed{};
    bool have_plain = o.smooth != "on", have_smooth = o.smooth != "off" && smooth.count(l->weight);
    if (have_plain) {
      EV_ASSIGN_OR_RETURN(plain, measure(p, stage));
    }
    if (have_smooth) {
      p.smooth[l->weight] = smooth[l->weight];
      EV_ASSIGN_OR_RETURN(smoothed, measure(p, stage));
    }
    const bool sm = have_smooth && (!have_plain || smoothed.kl < plain.kl);
    use_smooth[l->weight] = sm;
    sens[l->weight] = sm ? smoothed.kl : plain.kl;
    nlohmann::json e = {{"module", l->module},
                        {"role", linear_role_name(l->role)},
                        {"layer", l->layer},
                        {"shape", {l->n, l->k}},
                        {"smooth", sm},
                        {"activation_outlier_ratio", outlier_ratio.count(l->weight) ? outlier_ratio[l->weight] : 0.0}};
    if (have_plain) e["plain"] = measure_json(plain);
    if (have_smooth) e["smoothed"] = measure_json(smoothed);
    layers.push_back(e);
  }

  // 4. The plan.
  auto plan_with = [&](const std::set<std::string>& int8) {
    LinearPlan p;
    for (const std::string& w : int8) {
      p.precision[w] = Precision::kInt8;
      if (use_smooth[w]) p.smooth[w] = smooth[w];
    }
    return p;
  };
  LinearPlan plan;
  nlohmann::json steps = nlohmann::json::array();
  Measure final_m;
  std::string method;
  if (o.plan == "auto" || o.plan == "int8") {
    std::set<std::string> int8;
    for (const LinearInfo* l : cands) int8.insert(l->weight);
    stage = "plan: ";
    plan = plan_with(int8);
    EV_ASSIGN_OR_RETURN(final_m, measure(plan, "all candidates"));
    steps.push_back({{"kept_float", nullptr}, {"int8_layers", int8.size()}, {"kl", final_m.kl}, {"top1", final_m.top1}});
    method = o.plan == "int8" ? "every candidate in int8" : "greedy: most sensitive layer back to float until within budget";
    while (o.plan == "auto" && (final_m.kl > o.budget_kl || final_m.top1 < o.min_top1) && !int8.empty()) {
      std::string worst;
      for (const std::string& w : int8)
        if (worst.empty() || sens[w] > sens[worst]) worst = w;
      int8.erase(worst);
      plan = plan_with(int8);
      EV_ASSIGN_OR_RETURN(final_m, measure(plan, "plan step"));
      std::string mod = worst;
      for (const LinearInfo* l : cands)
        if (l->weight == worst) mod = l->module;
      steps.push_back({{"kept_float", mod}, {"int8_layers", int8.size()}, {"kl", final_m.kl}, {"top1", final_m.top1}});
      stage = strf("plan: %zu int8, KL %.4f, top-1 %.3f: ", int8.size(), final_m.kl, final_m.top1);
    }
  } else {
    EV_ASSIGN_OR_RETURN(std::string text, read_text_file(o.plan));
    nlohmann::json pj;
    try {
      pj = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      return Corrupt("--plan " + o.plan + ": " + e.what());
    }
    EV_ASSIGN_OR_RETURN(plan, parse_plan_json(pj, eng->linears(), "--plan " + o.plan));
    EV_ASSIGN_OR_RETURN(final_m, measure(plan, "plan file"));
    method = "plan file " + o.plan;
  }
  const bool within = final_m.kl <= o.budget_kl && final_m.top1 >= o.min_top1;

  // Field accuracy of the quantised model's own answers.
  stage = "quantised answers: ";
  EV_RETURN_IF_ERROR(eng->set_linear_plan(plan, "final"));
  EV_ASSIGN_OR_RETURN(std::vector<std::string> qans, cal.answers(*eng, {}, prog));
  const FieldScore q_score = have_truth ? score_fields(qans, truth) : FieldScore{};
  int changed = 0;
  for (size_t i = 0; i < qans.size(); ++i) changed += qans[i] != cal.reference_answers()[i];

  // 5. Export.
  sl.update("writing %s", o.out.c_str());
  const PlanSummary ps = summarize_plan(plan, eng->linears());
  nlohmann::json smooth_json = nlohmann::json::object();
  for (const auto& [w, s] : plan.smooth)
    for (const LinearInfo& l : eng->linears())
      if (l.weight == w) smooth_json[l.module] = true;
  nlohmann::json record = {
      {"format", "edgevlm-int8/1"},
      {"weights", "int8 symmetric per output channel"},
      {"activations", "int8 symmetric per token, dynamic"},
      {"method", "ptq"},
      {"plan", plan_to_json(plan, eng->linears(), eng->text_precision())},
      {"smoothed", smooth_json},
      {"smoothquant_alpha", o.alpha},
      {"plan_method", method},
      {"calibration", {{"spec", o.calib}, {"frames", cal.size()}, {"prompt", cal.prompt()}}},
      {"drift", {{"kl", final_m.kl}, {"top1", final_m.top1}, {"budget_kl", o.budget_kl}, {"min_top1", o.min_top1}}},
      {"source", o.model}};
  EV_RETURN_IF_ERROR(write_quantized_model(o.model, store, o.out, *eng, plan, record));

  // 6. Verification: the written model loads and computes what the in-memory plan computed.
  sl.update("verifying %s", o.out.c_str());
  EvalOptions vo = eo;
  vo.model = o.out;
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> qeng, eval_engine(vo));
  Measure vm;
  EV_ASSIGN_OR_RETURN(vm.kl, cal.kl(*qeng, {}, nullptr, nullptr, &vm.top1));
  if (std::fabs(vm.kl - final_m.kl) > kQuantizeVerifyKl + 1e-3 * final_m.kl)
    return Internal(strf("verification failed: the written model %s has KL %.6g against the float model, the plan in "
                         "memory had %.6g",
                         o.out.c_str(), vm.kl, final_m.kl));
  sl.done();

  // 7. Report.
  int64_t params = 0;
  for (const std::string& n : store.names())
    if (const SafetensorsEntry* e = store.entry(n)) params += e->numel();
  uint64_t src_bytes = 0;
  for (const auto& f : store.files()) src_bytes += file_bytes(f->path());
  const uint64_t out_bytes = file_bytes(o.out + "/model.safetensors");
  nlohmann::json j = {
      {"model", o.model},
      {"out", o.out},
      {"precision_float", eng->precision_label()},
      {"calibration", {{"spec", o.calib}, {"frames", cal.size()}}},
      {"smooth", o.smooth},
      {"alpha", o.alpha},
      {"layers", layers},
      {"steps", steps},
      {"plan_method", method},
      {"int8_linears", ps.int8_linears},
      {"linears", ps.linears},
      {"int8_params", ps.int8_params},
      {"linear_params", ps.params},
      {"drift", {{"kl", final_m.kl}, {"top1", final_m.top1}, {"within_budget", within},
                 {"budget_kl", o.budget_kl}, {"min_top1", o.min_top1}}},
      {"verify", {{"kl", vm.kl}, {"top1", vm.top1}}},
      {"accuracy", have_truth ? nlohmann::json{{"float", float_score.mean}, {"quantized", q_score.mean},
                                               {"float_exact", float_score.exact}, {"quantized_exact", q_score.exact}}
                              : nlohmann::json(nullptr)},
      {"changed_answers", changed},
      {"bytes", {{"f32", params * 4}, {"source", src_bytes}, {"written", out_bytes},
                 {"f32_over_written", out_bytes ? static_cast<double>(params * 4) / static_cast<double>(out_bytes) : 0.0}}},
      {"seconds", now_s() - t0}};
  return j;
}

std::string quantize_table(const nlohmann::json& j) {
  std::string s;
  s += strf("quantize %s -> %s (%s, calibration %s: %d frames)\n", j["model"].get<std::string>().c_str(),
            j["out"].get<std::string>().c_str(), j["precision_float"].get<std::string>().c_str(),
            j["calibration"]["spec"].get<std::string>().c_str(), j["calibration"]["frames"].get<int>());
  s += strf("%-58s %-16s %10s %10s %7s %8s\n", "layer (alone in int8)", "role", "KL plain", "KL smooth", "top-1", "outliers");
  for (const auto& l : j["layers"]) {
    const std::string kp = l.contains("plain") ? strf("%.2e", l["plain"]["kl"].get<double>()) : "-";
    const std::string ks = l.contains("smoothed") ? strf("%.2e", l["smoothed"]["kl"].get<double>()) : "-";
    const auto& chosen = l["smooth"].get<bool>() ? l["smoothed"] : l["plain"];
    s += strf("%-58s %-16s %10s %10s %6.1f%% %7.1fx%s\n", l["module"].get<std::string>().c_str(),
              l["role"].get<std::string>().c_str(), kp.c_str(), ks.c_str(), 100 * chosen["top1"].get<double>(),
              l["activation_outlier_ratio"].get<double>(), l["smooth"].get<bool>() ? "  smoothed" : "");
  }
  s += "plan (" + j["plan_method"].get<std::string>() + "):\n";
  for (const auto& st : j["steps"])
    s += strf("  %-58s %3d int8 layers  KL %.2e  top-1 %.2f%%\n",
              st["kept_float"].is_null() ? "(all candidates int8)" : ("back to float: " + st["kept_float"].get<std::string>()).c_str(),
              st["int8_layers"].get<int>(), st["kl"].get<double>(), 100 * st["top1"].get<double>());
  const auto& d = j["drift"];
  s += strf("result: %d/%d Linear layers in int8 (%.1f%% of their weights), KL %.2e (budget %.2e), top-1 %.2f%% (min %.1f%%): %s\n",
            j["int8_linears"].get<int>(), j["linears"].get<int>(),
            100.0 * j["int8_params"].get<double>() / std::max(1.0, j["linear_params"].get<double>()), d["kl"].get<double>(),
            d["budget_kl"].get<double>(), 100 * d["top1"].get<double>(), 100 * d["min_top1"].get<double>(),
            d["within_budget"].get<bool>() ? "within budget" : "OVER BUDGET");
  if (j["accuracy"].is_object())
    s += strf("field accuracy on the calibration frames: float %.1f%%, quantised %.1f%%; %d changed answers\n",
              100 * j["accuracy"]["float"].get<double>(), 100 * j["accuracy"]["quantized"].get<double>(),
              j["changed_answers"].get<int>());
  else
    s += strf("no ground truth (video calibration): %d changed answers\n", j["changed_answers"].get<int>());
  const auto& b = j["bytes"];
  s += strf("weights: %.2f MB as F32, %.2f MB source file, %.2f MB written (%.2fx smaller than F32)\n",
            b["f32"].get<double>() / 1e6, b["source"].get<double>() / 1e6, b["written"].get<double>() / 1e6,
            b["f32_over_written"].get<double>());
  s += strf("verified: the written model's KL %.2e equals the plan's\n", j["verify"]["kl"].get<double>());
  return s;
}

// A horizontal bar per candidate layer: its KL when quantised alone (linear scale), coloured by part, marked when it
// went back to float in the plan.
std::string quantize_svg(const nlohmann::json& j) {
  struct Row {
    std::string label, value;
    double kl = 0;
    std::string color;
    bool kept_float = false;
  };
  std::set<std::string> kept;
  for (const auto& st : j["steps"])
    if (st["kept_float"].is_string()) kept.insert(st["kept_float"].get<std::string>());
  std::vector<Row> rows;
  double vmax = 0;
  for (const auto& l : j["layers"]) {
    const auto& chosen = l["smooth"].get<bool>() ? l["smoothed"] : l["plain"];
    Row r;
    r.label = l["module"].get<std::string>();
    r.kept_float = kept.count(r.label) > 0;
    for (const char* p : {"model.vision_model.encoder.", "model.text_model.", "model."})
      if (r.label.rfind(p, 0) == 0) r.label = r.label.substr(std::string(p).size());
    r.kl = std::max(0.0, chosen["kl"].get<double>());
    r.value = strf("%.2e%s%s", r.kl, l["smooth"].get<bool>() ? " smoothed" : "", r.kept_float ? " (kept in float)" : "");
    const std::string role = l["role"].get<std::string>();
    r.color = role.rfind("vision", 0) == 0 ? "#4c72b0" : role.rfind("text", 0) == 0 ? "#55a868" : "#c44e52";
    vmax = std::max(vmax, r.kl);
    rows.push_back(r);
  }
  const int lw = 330, bw = 520, rh = 16, top = 56;
  const int W = lw + bw + 190, H = top + static_cast<int>(rows.size()) * rh + 40;
  std::string o = strf("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                       "font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
  o += strf("<text x=\"10\" y=\"20\" font-size=\"14\">%s</text>\n",
            xml_escape("edgevlm quantize: KL(float || this layer alone in int8), nats per answer token: " +
                       j["model"].get<std::string>()).c_str());
  o += strf("<text x=\"10\" y=\"38\" fill=\"#555\">%s</text>\n",
            xml_escape(strf("plan: %d/%d Linear layers in int8, whole-model KL %.2e, top-1 %.2f%%; blue vision, green "
                            "text, red output head; hatched = kept in float",
                            j["int8_linears"].get<int>(), j["linears"].get<int>(), j["drift"]["kl"].get<double>(),
                            100 * j["drift"]["top1"].get<double>())).c_str());
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const int y = top + static_cast<int>(i) * rh;
    const double w = vmax > 0 ? r.kl / vmax * bw : 0.0;
    o += strf("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", lw - 6, y + 12, xml_escape(r.label).c_str());
    o += strf("<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"%s/>\n", lw, y + 2, w, rh - 4,
              r.color.c_str(), r.kept_float ? " stroke=\"black\" stroke-dasharray=\"3,2\" fill-opacity=\"0.45\"" : "");
    o += strf("<text x=\"%.1f\" y=\"%d\">%s</text>\n", lw + w + 4, y + 12, xml_escape(r.value).c_str());
  }
  o += "</svg>\n";
  return o;
}

Status run_quantize(const QuantizeOptions& o) {
  EV_ASSIGN_OR_RETURN(nlohmann::json j, quantize_json(o));
  std::fputs(quantize_table(j).c_str(), stdout);
  if (!o.json_path.empty()) EV_RETURN_IF_ERROR(write_text_file(o.json_path, j.dump(2) + "\n"));
  if (!o.svg_path.empty()) EV_RETURN_IF_ERROR(write_text_file(o.svg_path, quantize_svg(j)));
  return Status::Ok();
}

}  // namespace ev
