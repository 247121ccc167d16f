#include "tools/validate.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>

#include "core/clock.h"
#include "formats/json_util.h"
#include "perception/image.h"
#include "perception/video_source.h"
#include "perception/vlm_preprocess.h"
#include "runtime/engine.h"
#include "sim/simulator.h"
#include "tools/eval.h"
#include "tools/eval_scoring.h"
#include "tools/report.h"
#include "tools/sim_frames.h"

namespace ev {

// ---------------------------------------------------------------------------------------------------------------
// Building blocks

double kl_logits(const float* p, const float* q, int64_t V, bool* same_top1) {
  const float* pa = std::max_element(p, p + V);
  const float* qa = std::max_element(q, q + V);
  if (same_top1) *same_top1 = (pa - p) == (qa - q);
  const double mp = *pa, mq = *qa;
  double zp = 0, zq = 0;
  for (int64_t v = 0; v < V; ++v) {
    zp += std::exp(static_cast<double>(p[v]) - mp);
    zq += std::exp(static_cast<double>(q[v]) - mq);
  }
  const double lzp = mp + std::log(zp), lzq = mq + std::log(zq);
  double kl = 0;
  for (int64_t v = 0; v < V; ++v) {
    const double lp = static_cast<double>(p[v]) - lzp, lq = static_cast<double>(q[v]) - lzq;
    kl += std::exp(lp) * (lp - lq);
  }
  return std::max(kl, 0.0);  // rounding can make an exact 0 slightly negative
}

double mean_row_cosine(const float* a, const float* b, int64_t rows, int64_t D) {
  if (rows <= 0) return 1.0;
  double sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * D;
    const float* y = b + r * D;
    double xy = 0, xx = 0, yy = 0;
    for (int64_t d = 0; d < D; ++d) {
      xy += static_cast<double>(x[d]) * y[d];
      xx += static_cast<double>(x[d]) * x[d];
      yy += static_cast<double>(y[d]) * y[d];
    }
    if (xx == 0 && yy == 0)
      sum += 1;
    else if (xx > 0 && yy > 0)
      sum += std::clamp(xy / std::sqrt(xx * yy), -1.0, 1.0);
  }
  return sum / static_cast<double>(rows);
}

// ---------------------------------------------------------------------------------------------------------------
// Tolerances

namespace {

using Opt = std::optional<double>;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct TolKey {
  const char* key;
  Opt ValidateTolerance::*field;
  double lo, hi;
};
const TolKey kTolKeys[] = {
    {"max_mean_kl", &ValidateTolerance::max_mean_kl, 0, kInf},
    {"min_top1_agreement", &ValidateTolerance::min_top1_agreement, 0, 1},
    {"max_changed_answers", &ValidateTolerance::max_changed_answers, 0, 1},
    {"max_accuracy_drop", &ValidateTolerance::max_accuracy_drop, 0, 1},
    {"max_flicker_increase", &ValidateTolerance::max_flicker_increase, 0, kInf},
    {"max_fast_head_diff", &ValidateTolerance::max_fast_head_diff, 0, 1},
    {"min_fast_head_agreement", &ValidateTolerance::min_fast_head_agreement, 0, 1},
};
const TolKey kCosineKeys[] = {
    {"vision", &ValidateTolerance::min_cosine_vision, -1, 1},
    {"connector", &ValidateTolerance::min_cosine_connector, -1, 1},
    {"text", &ValidateTolerance::min_cosine_text, -1, 1},
};

Status set_limit(ValidateTolerance* t, const TolKey& k, const nlohmann::json& v, const std::string& where) {
  if (v.is_null()) {
    t->*k.field = std::nullopt;
    return Status::Ok();
  }
  if (!v.is_number()) return InvalidArgument(where + " must be a number or null, got " + v.dump());
  const double x = v.get<double>();
  if (!(x >= k.lo && x <= k.hi))
    return InvalidArgument(where + " = " + v.dump() + " is outside [" + strf("%g", k.lo) + ", " + strf("%g", k.hi) + "]");
  t->*k.field = x;
  return Status::Ok();
}

std::string known_keys() {
  std::string s;
  for (const auto& k : kTolKeys) s += std::string(s.empty() ? "" : ", ") + k.key;
  return s + ", min_cosine";
}

}  // namespace

Result<ValidateTolerance> parse_tolerance(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) return InvalidArgument(source + ": a tolerance file must hold a JSON object");
  ValidateTolerance t;
  for (const auto& [key, v] : j.items()) {
    if (key == "min_cosine") {
      if (v.is_null() || v.is_number()) {
        for (const auto& k : kCosineKeys)
          EV_RETURN_IF_ERROR(set_limit(&t, k, v, source + ": min_cosine"));
        continue;
      }
      if (!v.is_object())
        return InvalidArgument(source + ": min_cosine must be an object {\"vision\", \"connector\", \"text\"}, a number "
                               "or null, got " + v.dump());
      for (const auto& [ck, cv] : v.items()) {
        const TolKey* k = nullptr;
        for (const auto& c : kCosineKeys)
          if (ck == c.key) k = &c;
        if (!k)
          return InvalidArgument(source + ": unknown key \"min_cosine." + ck + "\" (known: vision, connector, text)");
        EV_RETURN_IF_ERROR(set_limit(&t, *k, cv, source + ": min_cosine." + ck));
      }
      continue;
    }
    const TolKey* k = nullptr;
    for (const auto& c : kTolKeys)
      if (key == c.key) k = &c;
    if (!k) return InvalidArgument(source + ": unknown key \"" + key + "\" (known: " + known_keys() + ")");
    EV_RETURN_IF_ERROR(set_limit(&t, *k, v, source + ": " + key));
  }
  return t;
}

Result<ValidateTolerance> load_tolerance(const std::string& path) {
  EV_ASSIGN_OR_RETURN(std::string text, read_text_file(path, size_t{1} << 20));
  EV_ASSIGN_OR_RETURN(nlohmann::json j, parse_json(text, path));
  return parse_tolerance(j, path);
}

nlohmann::json tolerance_json(const ValidateTolerance& t) {
  auto val = [](const Opt& o) { return o ? nlohmann::json(*o) : nlohmann::json(nullptr); };
  nlohmann::json j = nlohmann::json::object();
  for (const auto& k : kTolKeys) j[k.key] = val(t.*k.field);
  nlohmann::json c = nlohmann::json::object();
  for (const auto& k : kCosineKeys) c[k.key] = val(t.*k.field);
  j["min_cosine"] = c;
  return j;
}

// ---------------------------------------------------------------------------------------------------------------
// Options

void add_validate_options(CLI::App& app, ValidateOptions& o) {
  app.add_option("--reference", o.reference, "reference model directory")->required();
  app.add_option("--candidate", o.candidate, "candidate model directory (may be the reference's, with other options)")
      ->required();
  app.add_option("--reference-precision", o.reference_precision, "reference compute precision (as --precision)");
  app.add_option("--candidate-precision", o.candidate_precision, "candidate compute precision (as --precision)");
  app.add_option("--reference-prune", o.reference_prune, "reference token pruning (models/token_prune.h syntax)");
  app.add_option("--candidate-prune", o.candidate_prune, "candidate token pruning (models/token_prune.h syntax)");
  app.add_option("--spec", o.specs, "scenario spec file (repeatable), as edgevlm eval");
  app.add_option_function<uint64_t>(
      "--seed", [&o](const uint64_t& s) { o.seed = s, o.scenarios_given = true; },
      "first seed of random scenarios (default: the held-out range 1000000..)");
  app.add_option_function<int>(
      "--scenarios", [&o](const int& k) { o.scenarios = k, o.scenarios_given = true; },
      "random scenarios to run (default 3)");
  app.add_option("--frames", o.frames, "frames per scenario or clip (default: the spec's length, random 150; whole clip)");
  app.add_option("--every", o.every, "evaluate every M-th frame of a scenario or clip");
  app.add_option("--video", o.videos, "real clip without truth (repeatable): drift metrics only");
  app.add_option("--image", o.images, "real still without truth (repeatable): drift metrics only");
  app.add_option("--prompt", o.prompt, "prompt (default: the reference's edgevlm.task.describe_prompt)");
  app.add_option("--max-tokens", o.max_tokens, "maximum tokens of an answer");
  app.add_option("--threads", o.threads, "threads of each engine (0: all)");
  app.add_option("--tolerance", o.tolerance, "tolerance file (JSON); default limits without one");
  app.add_option("--json", o.json_out, "write the JSON report to this file ('-': print it instead of the table)");
  app.add_option("--svg", o.svg_out, "write the picture (cosine per layer, KL histogram) to this file");
  app.add_flag("--print", o.print, "print both answers and the KL of every frame");
  app.add_flag_callback("--no-hidden", [&o] { o.hidden = false; }, "do not capture hidden states (no cosine)");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
}

namespace {

Status check_options(const ValidateOptions& o) {
  if (o.reference.empty()) return InvalidArgument("--reference is required");
  if (o.candidate.empty()) return InvalidArgument("--candidate is required");
  if (o.scenarios < 0 || o.scenarios > 100000) return InvalidArgument("--scenarios must be in [0, 100000]");
  if (o.frames == 0 || o.frames < -1 || o.frames > 10000000) return InvalidArgument("--frames must be in [1, 10^7]");
  if (o.every < 1 || o.every > 1000000) return InvalidArgument("--every must be in [1, 10^6]");
  if (o.max_tokens < 1 || o.max_tokens > 4096) return InvalidArgument("--max-tokens must be in [1, 4096]");
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("--threads must be in [0, 1024]");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------------------
// The measurement

enum Group { kVision = 0, kConnector = 1, kText = 2 };
const char* const kGroupNames[] = {"vision", "connector", "text"};

// "v.blk.3.out" -> (vision, 3); "mm.proj" -> (connector, 0); "t.blk.12.out" -> (text, 12).
bool hidden_layer(const std::string& name, Group* g, int* index) {
  if (name == "mm.proj") {
    *g = kConnector, *index = 0;
    return true;
  }
  const bool v = name.rfind("v.blk.", 0) == 0, t = name.rfind("t.blk.", 0) == 0;
  if (!v && !t) return false;
  const size_t dot = name.find('.', 6);
  if (dot == std::string::npos || name.compare(dot, std::string::npos, ".out") != 0 || dot == 6) return false;
  int x = 0;
  for (size_t i = 6; i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    x = x * 10 + (name[i] - '0');
  }
  *g = v ? kVision : kText, *index = x;
  return true;
}

struct LayerStat {
  std::string name;
  double sum = 0, min = 2;
  int64_t n = 0;
  bool kept_tokens = false;  // vision: only the tokens the candidate's token pruning kept
  bool pooled = false;       // vision / connector rows mean-pooled per tile (token counts differed otherwise)
  bool aligned_suffix = false;  // text: only the positions after the last image token compared
};

// Per tile mean over tokens of t [B, n, E] -> [B, E].
std::vector<float> pool_tokens(const Tensor& t) {
  const int64_t B = t.dim(0), n = t.dim(1), E = t.dim(2);
  std::vector<float> out(static_cast<size_t>(B * E), 0.f);
  const float* p = t.data_as<const float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t e = 0; e < E; ++e) out[static_cast<size_t>(b * E + e)] += p[(b * n + j) * E + e] / static_cast<float>(n);
  return out;
}

struct Side {
  std::string role, dir, precision, prune;
  std::unique_ptr<Engine> eng;
  std::map<std::string, int64_t> field_ok;
  int64_t exact = 0, unparsed = 0;
  TruthScorer scorer;           // eval's flicker on frames with truth
  FieldStabilizer reported;
  int64_t truth_pairs = 0;      // consecutive outputs within a sequence, with truth
  int64_t free_changes = 0, free_pairs = 0;  // without truth
  Fields prev;
  bool have_prev = false;
  double seconds = 0;
};

struct ModelRun {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<float> fast_head;
  Tensor logits;  // teacher-forced [A + 1, V] f32
};

class Validator {
 public:
  Validator(const ValidateOptions& o, Side& ref, Side& cand) : o_(o), ref_(ref), cand_(cand) {
    g_.max_new_tokens = o.max_tokens;
    g_.image_splitting = 0;
    for (const char* f : sim::kDescriptionFields) ref_.field_ok[f] = cand_.field_ok[f] = 0;
    const FastHead* a = ref_.eng->fast_head();
    const FastHead* b = cand_.eng->fast_head();
    fast_head_ = a && b && a->config().classes == b->config().classes;
  }

  Status init(const std::string& prompt) {
    prompt_ = prompt;
    EV_ASSIGN_OR_RETURN(messages_, Engine::user_turn(1, prompt));
    if (ref_.eng->model().vocab_size() != cand_.eng->model().vocab_size())
      return InvalidArgument("the candidate's vocabulary has " + std::to_string(cand_.eng->model().vocab_size()) +
                             " tokens, the reference's " + std::to_string(ref_.eng->model().vocab_size()) +
                             ": teacher forcing needs the same tokenizer");
    return Status::Ok();
  }

  void new_sequence() {
    seq_outputs_ = 0;
    for (Side* s : {&ref_, &cand_}) {
      s->scorer.new_sequence();
      s->reported = FieldStabilizer();
      s->have_prev = false;
    }
  }

  // One frame through both models; `want` is the truth's fields (nullptr: none).
  Status frame(const Image& img, const Fields* want, const std::string& where) {
    captured_.clear();
    EV_ASSIGN_OR_RETURN(ModelRun r, run(ref_, img, nullptr, true));
    EV_ASSIGN_OR_RETURN(ModelRun c, run(cand_, img, &r.tokens, false));
    captured_.clear();
    if (cand_.eng->tokenizer().decode(r.tokens, true) != ref_.eng->tokenizer().decode(r.tokens, true))
      return InvalidArgument("the candidate's tokenizer decodes the reference's answer differently: teacher forcing "
                             "needs the same tokenizer");

    // Next-token distributions along the reference's answer.
    const int64_t rows = r.logits.dim(0), V = r.logits.dim(1);
    if (c.logits.dim(0) != rows || c.logits.dim(1) != V)
      return Internal("teacher-forced logits " + c.logits.shape().to_string() + " vs " + r.logits.shape().to_string());
    double fsum = 0;
    int64_t fagree = 0;
    for (int64_t i = 0; i < rows; ++i) {
      bool same = false;
      const double kl = kl_logits(r.logits.data_as<const float>() + i * V, c.logits.data_as<const float>() + i * V, V, &same);
      kls_.push_back(kl);
      fsum += kl;
      fagree += same;
    }
    agree_ += fagree;
    const bool changed = r.text != c.text;
    changed_ += changed;
    ++frames_;

    // Fast head.
    if (fast_head_ && !r.fast_head.empty() && r.fast_head.size() == c.fast_head.size()) {
      const float tr = ref_.eng->fast_head()->config().threshold, tc = cand_.eng->fast_head()->config().threshold;
      for (size_t k = 0; k < r.fast_head.size(); ++k) {
        fh_max_ = std::max(fh_max_, static_cast<double>(std::abs(r.fast_head[k] - c.fast_head[k])));
        fh_agree_ += (r.fast_head[k] >= tr) == (c.fast_head[k] >= tc);
        ++fh_n_;
      }
    }

    // Accuracy and flicker of each model's own answer.
    nlohmann::json fj = {{"source", where},
                         {"kl_mean", rows ? fsum / static_cast<double>(rows) : 0.0},
                         {"top1_agreement", rows ? double(fagree) / static_cast<double>(rows) : 1.0},
                         {"changed", changed},
                         {"reference", r.text},
                         {"candidate", c.text}};
    for (auto [s, m] : {std::pair<Side*, const ModelRun*>{&ref_, &r}, {&cand_, &c}}) {
      if (want) {
        const DescriptionScore sc = score_description(m->text, *want);
        for (const char* f : sim::kDescriptionFields) s->field_ok[f] += sc.field_ok.at(f);
        s->exact += sc.all;
        s->unparsed += !sc.parsed;
        const Fields before = s->reported.fields();
        s->scorer.on_output(sc.got, s->reported.update(sc.got), before, *want);
        if (seq_outputs_ > 0) ++s->truth_pairs;
        fj[s == &ref_ ? "reference_exact" : "candidate_exact"] = sc.all;
      } else {
        auto parsed = sim::parse_description(m->text);
        const Fields cur = parsed.ok() ? *parsed : Fields{{"answer", m->text}};
        if (s->have_prev) {
          ++s->free_pairs;
          for (const auto& [k, v] : cur) {
            auto p = s->prev.find(k);
            if (p != s->prev.end() && p->second != v) ++s->free_changes;
          }
        }
        s->prev = cur;
        s->have_prev = true;
      }
    }
    ++seq_outputs_;
    if (want) ++truth_frames_;
    if (o_.print) {
      std::printf("%-28s KL %.4g  top-1 %5.1f%%  %s\n  reference: %s\n", where.c_str(), fj.value("kl_mean", 0.0),
                  100.0 * fj.value("top1_agreement", 0.0), changed ? "CHANGED" : "same", r.text.c_str());
      if (changed) std::printf("  candidate: %s\n", c.text.c_str());
      std::fflush(stdout);
    }
    frames_json_.push_back(std::move(fj));
    return Status::Ok();
  }

  nlohmann::json result() const;
  int64_t frames() const { return frames_; }
  double mean_kl() const {
    double s = 0;
    for (double k : kls_) s += k;
    return kls_.empty() ? 0.0 : s / static_cast<double>(kls_.size());
  }
  double top1() const { return kls_.empty() ? 1.0 : double(agree_) / static_cast<double>(kls_.size()); }

 private:
  // Vision (captured / compared), the model's own greedy answer, then the teacher-forced prefill along `force`
  // (the reference's answer; nullptr: this is the reference, force its own).
  Result<ModelRun> run(Side& s, const Image& img, const std::vector<int32_t>* force, bool is_ref) {
    Engine& e = *s.eng;
    const double t0 = now_s();
    ModelRun m;
    int rows = 0, cols = 0;
    EV_ASSIGN_OR_RETURN(Tensor px, e.preprocess(img, 0, &rows, &cols));
    ExecOptions ex;
    cand_keep_.clear();
    if (o_.hidden) ex.on_tensor = [&](const Node& n, const Tensor& t) { on_hidden(n.name, t, is_ref, 0); };
    Tensor vout, hz;
    EV_ASSIGN_OR_RETURN(Tensor emb, e.encode_tiles(px, &vout, ex, e.fast_head() ? &hz : nullptr));
    if (hz.data()) {
      const int64_t C = hz.dim(1);
      const float* row = hz.data_as<const float>() + (hz.dim(0) - 1) * C;
      m.fast_head.assign(row, row + C);
    }
    EncodedImages enc;
    enc.layouts = {ImageLayout{rows, cols}};
    enc.embeds = emb;
    enc.tokens_per_tile = static_cast<int>(emb.dim(1));
    enc.n_tiles = static_cast<int>(emb.dim(0));
    enc.fast_head = {m.fast_head};
    EV_ASSIGN_OR_RETURN(GenerateResult g, e.generate_encoded(enc, messages_, g_));
    m.text = g.text;
    m.tokens = g.tokens;

    // Teacher forcing: the model's own prompt and image embeddings, the reference's answer.
    EV_ASSIGN_OR_RETURN(std::string text, e.render_messages(messages_));
    EV_ASSIGN_OR_RETURN(std::string expanded, expand_image_tokens(text, enc.layouts, enc.tokens_per_tile));
    std::vector<int32_t> ids = e.tokenizer().encode(expanded, /*add_special_tokens=*/true);
    const std::vector<int32_t>& answer = force ? *force : m.tokens;
    int64_t last_img = -1;
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == e.config().image_token_id) last_img = static_cast<int64_t>(i);
    ids.insert(ids.end(), answer.begin(), answer.end());
    const int64_t suffix = static_cast<int64_t>(ids.size()) - (last_img + 1);
    KvCache cache = e.model().make_cache(static_cast<int64_t>(ids.size()) + 1);
    ExecOptions tx;
    if (o_.hidden) tx.on_tensor = [&](const Node& n, const Tensor& t) { on_hidden(n.name, t, is_ref, suffix); };
    EV_ASSIGN_OR_RETURN(Tensor logits, e.forward_text(ids, emb, cache, static_cast<int64_t>(answer.size()) + 1, tx));
    EV_ASSIGN_OR_RETURN(m.logits, logits.to(DType::kF32));  // a copy: the executor's buffers are reused
    s.seconds += now_s() - t0;
    if (!hidden_error_.ok()) return hidden_error_;
    return m;
  }

  // Reference: keeps a copy of every hidden state; candidate: compares with the reference's copy at once.
  void on_hidden(const std::string& name, const Tensor& t, bool is_ref, int64_t suffix) {
    Group g;
    int idx = 0;
    if (!is_ref && t.dtype() == DType::kI32 && name.rfind("v.blk.", 0) == 0 && name.size() > 9 &&
        name.compare(name.size() - 9, 9, ".keep_idx") == 0) {
      // Token pruning: the grid rows (b * N + j) of the tokens the candidate keeps from here on.
      cand_keep_.assign(t.data_as<const int32_t>(), t.data_as<const int32_t>() + t.numel());
      return;
    }
    if (!hidden_layer(name, &g, &idx)) return;
    auto f = t.dtype() == DType::kF32 && !is_ref ? Result<Tensor>(t) : t.to(DType::kF32);
    if (!f.ok()) {
      hidden_error_ = f.status().with_context("hidden state " + name);
      return;
    }
    if (is_ref) {
      captured_[name] = {std::move(*f), suffix};
      return;
    }
    auto it = captured_.find(name);
    if (it == captured_.end()) return;  // a layer the reference has not got
    const Tensor& a = it->second.first;
    const Tensor& b = *f;
    LayerStat& st = layers_[{g, idx}];
    st.name = name;
    double cs = 0;
    if (a.shape() == b.shape()) {
      const int64_t D = a.dim(a.ndim() - 1);
      cs = mean_row_cosine(a.data_as<const float>(), b.data_as<const float>(), a.numel() / D, D);
    } else if (g == kVision && a.ndim() == 3 && b.ndim() == 3 && a.dim(0) == b.dim(0) && a.dim(2) == b.dim(2) &&
               static_cast<int64_t>(cand_keep_.size()) == b.dim(0) * b.dim(1) &&
               std::all_of(cand_keep_.begin(), cand_keep_.end(),
                           [&](int32_t r) { return r >= 0 && r < a.dim(0) * a.dim(1); })) {
      // The candidate's kept tokens against the same tokens of the (unpruned) reference.
      const int64_t E = a.dim(2);
      double sum = 0;
      for (size_t i = 0; i < cand_keep_.size(); ++i)
        sum += mean_row_cosine(a.data_as<const float>() + static_cast<int64_t>(cand_keep_[i]) * E,
                               b.data_as<const float>() + static_cast<int64_t>(i) * E, 1, E);
      cs = sum / static_cast<double>(cand_keep_.size());
      st.kept_tokens = true;
    } else if (g != kText && a.ndim() == 3 && b.ndim() == 3 && a.dim(0) == b.dim(0) && a.dim(2) == b.dim(2)) {
      const std::vector<float> pa = pool_tokens(a), pb = pool_tokens(b);
      cs = mean_row_cosine(pa.data(), pb.data(), a.dim(0), a.dim(2));
      st.pooled = true;
    } else if (g == kText && a.ndim() == 2 && b.ndim() == 2 && a.dim(1) == b.dim(1)) {
      const int64_t n = std::min({it->second.second, suffix, a.dim(0), b.dim(0)});
      const int64_t D = a.dim(1);
      cs = mean_row_cosine(a.data_as<const float>() + (a.dim(0) - n) * D, b.data_as<const float>() + (b.dim(0) - n) * D,
                           n, D);
      st.aligned_suffix = true;
    } else {
      ++incomparable_[name];
      return;
    }
    st.sum += cs;
    st.min = std::min(st.min, cs);
    ++st.n;
  }

  const ValidateOptions& o_;
  Side &ref_, &cand_;
  GenerateOptions g_;
  nlohmann::json messages_;
  std::string prompt_;
  bool fast_head_ = false;
  std::map<std::string, std::pair<Tensor, int64_t>> captured_;  // reference hidden states (+ text suffix length)
  std::map<std::pair<int, int>, LayerStat> layers_;
  std::map<std::string, int64_t> incomparable_;
  std::vector<int32_t> cand_keep_;  // the candidate's latest keep_idx of this vision pass
  Status hidden_error_;
  std::vector<double> kls_;
  int64_t agree_ = 0, changed_ = 0, frames_ = 0, truth_frames_ = 0, seq_outputs_ = 0;
  double fh_max_ = 0;
  int64_t fh_agree_ = 0, fh_n_ = 0;
  nlohmann::json frames_json_ = nlohmann::json::array();
};

nlohmann::json Validator::result() const {
  nlohmann::json j;
  // KL over all teacher-forced positions.
  std::vector<double> k = kls_;
  std::sort(k.begin(), k.end());
  const std::vector<double> edges = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1};
  std::vector<int64_t> counts(edges.size() + 1, 0);
  for (double x : k) counts[static_cast<size_t>(std::upper_bound(edges.begin(), edges.end(), x) - edges.begin())]++;
  std::vector<std::string> labels = {"<1e-6"};
  for (size_t i = 0; i + 1 < edges.size(); ++i) labels.push_back(strf("%g..%g", edges[i], edges[i + 1]));
  labels.push_back(">=1");
  j["kl"] = {{"mean", mean_kl()},
             {"p50", quantile(k, 0.5)},
             {"p90", quantile(k, 0.9)},
             {"max", k.empty() ? 0.0 : k.back()},
             {"positions", k.size()},
             {"histogram", {{"labels", labels}, {"edges", edges}, {"counts", counts}}}};
  j["top1_agreement"] = top1();
  j["changed_answers"] = {{"fraction", frames_ ? double(changed_) / static_cast<double>(frames_) : 0.0},
                          {"frames", changed_}};
  j["frames"] = frames_;
  j["frames_with_truth"] = truth_frames_;

  // Accuracy on frames with truth.
  if (truth_frames_ > 0) {
    nlohmann::json a;
    for (const Side* s : {&ref_, &cand_}) {
      nlohmann::json pf = nlohmann::json::object();
      double mean = 0;
      for (const char* f : sim::kDescriptionFields) {
        const double x = double(s->field_ok.at(f)) / static_cast<double>(truth_frames_);
        pf[f] = x;
        mean += x;
      }
      a[s->role] = {{"mean_field_accuracy", mean / static_cast<double>(sim::kDescriptionFields.size())},
                    {"exact_match", double(s->exact) / static_cast<double>(truth_frames_)},
                    {"unparsed", s->unparsed},
                    {"per_field", pf}};
    }
    a["field_order"] = sim::kDescriptionFields;
    a["delta"] = a["candidate"].value("mean_field_accuracy", 0.0) - a["reference"].value("mean_field_accuracy", 0.0);
    a["drop"] = a["reference"].value("mean_field_accuracy", 0.0) - a["candidate"].value("mean_field_accuracy", 0.0);
    j["accuracy"] = a;
  } else {
    j["accuracy"] = nullptr;
  }

  // Flicker.
  {
    nlohmann::json f;
    for (const Side* s : {&ref_, &cand_}) {
      const int64_t changes = s->scorer.flicker_raw_total() + s->free_changes;
      const int64_t pairs = s->truth_pairs + s->free_pairs;
      f[s->role] = {{"changes", changes}, {"pairs", pairs},
                    {"rate", pairs ? double(changes) / static_cast<double>(pairs) : 0.0}};
    }
    f["increase"] = f["candidate"].value("rate", 0.0) - f["reference"].value("rate", 0.0);
    f["measured"] = f["reference"].value("pairs", 0) > 0;
    j["flicker"] = f;
  }

  // Cosine per layer.
  if (o_.hidden) {
    nlohmann::json c = nlohmann::json::object(), mins = nlohmann::json::object();
    for (int g = 0; g < 3; ++g) {
      nlohmann::json arr = nlohmann::json::array();
      double mn = 2;
      std::string at;
      for (const auto& [key, st] : layers_) {
        if (key.first != g || st.n == 0) continue;
        const double mean = st.sum / static_cast<double>(st.n);
        arr.push_back({{"layer", key.second}, {"name", st.name}, {"mean", mean}, {"min", st.min}, {"frames", st.n},
                       {"kept_tokens", st.kept_tokens}, {"pooled", st.pooled}, {"aligned_suffix", st.aligned_suffix}});
        if (mean < mn) mn = mean, at = st.name;
      }
      c[kGroupNames[g]] = arr;
      mins[kGroupNames[g]] = arr.empty() ? nlohmann::json(nullptr) : nlohmann::json({{"value", mn}, {"layer", at}});
    }
    c["min"] = mins;
    c["incomparable"] = incomparable_;
    j["cosine"] = c;
  } else {
    j["cosine"] = nullptr;
  }

  if (fast_head_ && fh_n_ > 0)
    j["fast_head"] = {{"classes", ref_.eng->fast_head()->config().classes},
                      {"max_abs_diff", fh_max_},
                      {"decision_agreement", double(fh_agree_) / static_cast<double>(fh_n_)},
                      {"decisions", fh_n_}};
  else
    j["fast_head"] = nullptr;
  j["seconds_per_frame"] = {{"reference", frames_ ? ref_.seconds / static_cast<double>(frames_) : 0.0},
                            {"candidate", frames_ ? cand_.seconds / static_cast<double>(frames_) : 0.0}};
  j["per_frame"] = frames_json_;
  return j;
}

// Every tolerance against the measurements: checks (all) and violations (the exceeded).
void add_checks(nlohmann::json& j, const ValidateTolerance& t) {
  nlohmann::json checks = nlohmann::json::array(), viol = nlohmann::json::array();
  auto add = [&](const char* key, const char* label, const Opt& limit, bool is_max, std::optional<double> measured,
                 const std::string& note = "") {
    nlohmann::json c = {{"key", key}, {"metric", label}, {"op", is_max ? "<=" : ">="}};
    c["limit"] = limit ? nlohmann::json(*limit) : nlohmann::json(nullptr);
    c["measured"] = measured ? nlohmann::json(*measured) : nlohmann::json(nullptr);
    if (!note.empty()) c["note"] = note;
    if (!limit)
      c["status"] = "not checked";
    else if (!measured)
      c["status"] = "not measured";
    else {
      // A small slack for rounding: an exact-equality limit (e.g. cosine 1 against itself) must not fail on 1e-16.
      const double eps = 1e-12 * std::max(1.0, std::abs(*limit));
      const bool ok = is_max ? *measured <= *limit + eps : *measured >= *limit - eps;
      c["status"] = ok ? "pass" : "fail";
      if (!ok) viol.push_back(c);
    }
    checks.push_back(c);
  };
  add("max_mean_kl", "mean KL (nats)", t.max_mean_kl, true, j["kl"].value("mean", 0.0));
  add("min_top1_agreement", "top-1 agreement", t.min_top1_agreement, false, j.value("top1_agreement", 1.0));
  add("max_changed_answers", "changed answers", t.max_changed_answers, true, j["changed_answers"].value("fraction", 0.0));
  add("max_accuracy_drop", "accuracy drop (mean of fields)", t.max_accuracy_drop, true,
      j["accuracy"].is_null() ? std::nullopt : std::optional<double>(j["accuracy"].value("drop", 0.0)),
      j["accuracy"].is_null() ? "no frame with truth" : "");
  const Opt cos_lim[] = {t.min_cosine_vision, t.min_cosine_connector, t.min_cosine_text};
  const char* cos_key[] = {"min_cosine.vision", "min_cosine.connector", "min_cosine.text"};
  const char* cos_label[] = {"min cosine, vision layers", "cosine, connector", "min cosine, text layers"};
  for (int g = 0; g < 3; ++g) {
    std::optional<double> m;
    std::string note;
    if (j["cosine"].is_null()) {
      note = "--no-hidden";
    } else if (!j["cosine"]["min"][kGroupNames[g]].is_null()) {
      m = j["cosine"]["min"][kGroupNames[g]].value("value", 0.0);
      note = j["cosine"]["min"][kGroupNames[g]].value("layer", "");
    }
    add(cos_key[g], cos_label[g], cos_lim[g], false, m, note);
  }
  add("max_flicker_increase", "flicker increase (per frame pair)", t.max_flicker_increase, true,
      j["flicker"].value("measured", false) ? std::optional<double>(j["flicker"].value("increase", 0.0)) : std::nullopt,
      j["flicker"].value("measured", false) ? "" : "no consecutive frames");
  const bool fh = !j["fast_head"].is_null();
  add("max_fast_head_diff", "fast head max |p_ref - p_cand|", t.max_fast_head_diff, true,
      fh ? std::optional<double>(j["fast_head"].value("max_abs_diff", 0.0)) : std::nullopt, fh ? "" : "no common fast head");
  add("min_fast_head_agreement", "fast head decision agreement", t.min_fast_head_agreement, false,
      fh ? std::optional<double>(j["fast_head"].value("decision_agreement", 1.0)) : std::nullopt,
      fh ? "" : "no common fast head");
  j["checks"] = checks;
  j["violations"] = viol;
  j["pass"] = viol.empty();
}

Result<std::unique_ptr<Engine>> load_side(const std::string& dir, const std::string& precision, const std::string& prune,
                                          int threads, const char* role) {
  EngineOptions eo;
  eo.threads = threads;
  eo.prune = prune;
  EV_RETURN_IF_ERROR(parse_precision_option(precision, &eo).with_context(std::string("--") + role + "-precision"));
  auto e = Engine::load(dir, eo);
  if (!e.ok()) return e.status().with_context(std::string("--") + role + " " + dir);
  return std::move(e).value();
}

nlohmann::json side_json(const Side& s) {
  return {{"model", s.dir},
          {"precision", s.eng->precision_label()},
          {"precision_option", s.precision},
          {"prune", s.eng->prune().to_string()},
          {"tile_size", s.eng->model().tile_size()},
          {"image_tokens", s.eng->pruned_tokens_per_tile()},
          {"fast_head", s.eng->fast_head() != nullptr}};
}

}  // namespace

Result<nlohmann::json> validate_json(const ValidateOptions& o, const ValidateTolerance& tol) {
  EV_RETURN_IF_ERROR(check_options(o));
  const bool real = !o.videos.empty() || !o.images.empty();
  const bool simulate = !real || !o.specs.empty() || o.scenarios_given;
  if (simulate && o.specs.empty() && o.scenarios < 1) return InvalidArgument("--scenarios must be at least 1");
  for (const auto& v : o.videos)
    if (!std::filesystem::exists(v)) return InvalidArgument("--video " + v + ": no such file");
  std::vector<Image> stills;
  for (const auto& p : o.images) {
    auto img = load_image(p);
    if (!img.ok()) return img.status().with_context("--image");
    stills.push_back(std::move(img).value());
  }
  Side ref, cand;
  ref.role = "reference", cand.role = "candidate";
  ref.dir = o.reference, cand.dir = o.candidate;
  ref.precision = o.reference_precision, cand.precision = o.candidate_precision;
  EV_ASSIGN_OR_RETURN(ref.eng, load_side(o.reference, o.reference_precision, o.reference_prune, o.threads, "reference"));
  EV_ASSIGN_OR_RETURN(cand.eng, load_side(o.candidate, o.candidate_precision, o.candidate_prune, o.threads, "candidate"));
  const std::string prompt = o.prompt.empty() ? ref.eng->describe_prompt() : o.prompt;
  Validator val(o, ref, cand);
  EV_RETURN_IF_ERROR(val.init(prompt));

  // The scenarios exactly as edgevlm eval selects them.
  std::vector<sim::ScenarioSpec> specs;
  if (simulate) {
    EvalOptions eo;
    eo.model = o.reference;
    eo.specs = o.specs;
    eo.seed = o.seed;
    eo.scenarios = o.scenarios;
    eo.frames = o.frames;
    eo.every = o.every;
    EV_ASSIGN_OR_RETURN(specs, eval_scenarios(eo, ref.eng->model().tile_size()));
  }
  int64_t sim_total = 0;
  for (const auto& s : specs) sim_total += (s.frames + o.every - 1) / o.every;

  StatusLine sl("validate", o.progress && !o.print);
  const double t0 = now_s();
  auto status = [&](const std::string& where) {
    sl.update("%s | %lld frames, %.2f frames/s | mean KL %.4g, top-1 %.1f%%", where.c_str(),
              static_cast<long long>(val.frames()), val.frames() / std::max(now_s() - t0, 1e-9), val.mean_kl(),
              100.0 * val.top1());
  };
  nlohmann::json sources = nlohmann::json::array();
  int64_t done = 0;
  for (size_t si = 0; si < specs.size(); ++si) {
    EV_ASSIGN_OR_RETURN(sim::Simulator simu, sim::Simulator::create(specs[si]));
    val.new_sequence();
    sim::Frame f;
    sim::FrameTruth truth;
    int64_t n = 0;
    for (int64_t fi = 0; fi < specs[si].frames; fi += o.every) {
      if (fi > 0) simu.skip(o.every - 1);
      if (!simu.next(&f, &truth)) break;
      const Fields want = sim::description_fields(truth.state);
      const std::string where = strf("scenario %llu frame %lld", static_cast<unsigned long long>(specs[si].seed),
                                     static_cast<long long>(truth.frame));
      EV_RETURN_IF_ERROR(val.frame(sim_frame_image(f), &want, where).with_context(where));
      ++n, ++done;
      status(strf("scenario %zu/%zu, frame %lld/%lld", si + 1, specs.size(), static_cast<long long>(done),
                  static_cast<long long>(sim_total)));
    }
    sources.push_back({{"kind", "scenario"}, {"seed", specs[si].seed}, {"frames", n}});
  }
  for (size_t vi = 0; vi < o.videos.size(); ++vi) {
    VideoSourceOptions vo;
    vo.max_frames = o.frames > 0 ? o.frames : -1;
    auto src = open_video_source(o.videos[vi], vo);
    if (!src.ok()) return src.status().with_context("--video");
    val.new_sequence();
    VideoFrame f;
    int64_t n = 0;
    for (;;) {
      EV_ASSIGN_OR_RETURN(bool more, (*src)->next(&f));
      if (!more) break;
      if (f.index % o.every != 0) continue;
      const std::string where = strf("%s frame %lld", o.videos[vi].c_str(), static_cast<long long>(f.index));
      EV_RETURN_IF_ERROR(val.frame(f.image, nullptr, where).with_context(where));
      ++n;
      status(strf("clip %zu/%zu, frame %lld", vi + 1, o.videos.size(), static_cast<long long>(f.index)));
    }
    if (n == 0) return InvalidArgument("--video " + o.videos[vi] + ": no frame could be decoded");
    sources.push_back({{"kind", "video"}, {"path", o.videos[vi]}, {"frames", n}});
  }
  for (size_t ii = 0; ii < stills.size(); ++ii) {
    val.new_sequence();  // stills are unrelated: no flicker between them
    EV_RETURN_IF_ERROR(val.frame(stills[ii], nullptr, o.images[ii]).with_context(o.images[ii]));
    status(strf("image %zu/%zu", ii + 1, stills.size()));
    sources.push_back({{"kind", "image"}, {"path", o.images[ii]}, {"frames", 1}});
  }
  sl.done();
  if (val.frames() == 0) return InvalidArgument("no frame was validated");

  nlohmann::json j = val.result();
  j["tool"] = "validate";
  j["reference"] = side_json(ref);
  j["candidate"] = side_json(cand);
  j["prompt"] = prompt;
  j["sources"] = sources;
  j["max_tokens"] = o.max_tokens;
  j["tolerance"] = tolerance_json(tol);
  j["tolerance_file"] = o.tolerance;
  j["definitions"] = {
      {"kl", "KL(p_ref || p_cand) in nats of the next-token distributions, teacher-forced along the reference's greedy "
             "answer (the last prompt position through the answer's last token), each model on its own image embeddings"},
      {"top1_agreement", "fraction of those positions where both models' most probable token is the same"},
      {"changed_answers", "fraction of frames whose greedy answer text differs"},
      {"accuracy", "edgevlm eval's field scoring of each model's own answer against the simulator's truth; "
                   "drop = reference - candidate mean field accuracy"},
      {"cosine", "mean over frames of the mean over token rows of the cosine similarity of hidden states: vision "
                 "v.blk.L.out, connector mm.proj, text t.blk.L.out (teacher-forced prefill); kept_tokens: the tokens "
                 "the candidate's token pruning kept, against the same tokens of the reference; pooled: rows "
                 "mean-pooled per tile where token counts differ otherwise; aligned_suffix: text positions after the "
                 "last image token"},
      {"flicker", "field changes between consecutive evaluated frames of a sequence per frame pair: with truth eval's "
                  "flicker (only while the field's truth stood), without truth every change of a parsed field (or of "
                  "the whole answer); increase = candidate - reference"},
      {"fast_head", "max |p_ref - p_cand| over frames and classes; fraction of (frame, class) threshold decisions "
                    "that agree"}};
  add_checks(j, tol);
  j["wall_s"] = now_s() - t0;
  return j;
}

std::string validate_table(const nlohmann::json& j) {
  const auto& r = j.at("reference");
  const auto& c = j.at("candidate");
  auto side = [](const nlohmann::json& s) {
    std::string x = s.value("model", "") + " (" + s.value("precision", "");
    if (s.value("prune", "none") != "none") x += ", prune " + s.value("prune", "");
    return x + ")";
  };
  std::string src;
  int64_t scen = 0, clips = 0, imgs = 0;
  for (const auto& s : j.at("sources")) {
    const std::string k = s.value("kind", "");
    scen += k == "scenario", clips += k == "video", imgs += k == "image";
  }
  if (scen) src += strf("%lld scenario(s)", static_cast<long long>(scen));
  if (clips) src += strf("%s%lld clip(s)", src.empty() ? "" : ", ", static_cast<long long>(clips));
  if (imgs) src += strf("%s%lld image(s)", src.empty() ? "" : ", ", static_cast<long long>(imgs));
  std::string o = strf("edgevlm validate\n  reference  %s\n  candidate  %s\n  %lld frames (%lld with truth) of %s, "
                       "prompt \"%s\"\n\n",
                       side(r).c_str(), side(c).c_str(), static_cast<long long>(j.value("frames", 0)),
                       static_cast<long long>(j.value("frames_with_truth", 0)), src.c_str(),
                       j.value("prompt", "").c_str());
  TextTable t({"metric", "reference", "candidate", "measured", "limit", "status"});
  auto num = [](const nlohmann::json& v, bool pct) {
    if (v.is_null()) return std::string("-");
    return pct ? fmt_percent(v.get<double>()) : strf("%.6g", v.get<double>());
  };
  const auto& acc = j.at("accuracy");
  const auto& fl = j.at("flicker");
  for (const auto& ch : j.at("checks")) {
    const std::string key = ch.value("key", "");
    const bool pct = key == "min_top1_agreement" || key == "max_changed_answers" || key == "min_fast_head_agreement";
    std::string rv, cv;
    if (key == "max_accuracy_drop" && !acc.is_null()) {
      rv = fmt_percent(acc["reference"].value("mean_field_accuracy", 0.0));
      cv = fmt_percent(acc["candidate"].value("mean_field_accuracy", 0.0));
    } else if (key == "max_flicker_increase" && fl.value("measured", false)) {
      rv = strf("%.4f", fl["reference"].value("rate", 0.0));
      cv = strf("%.4f", fl["candidate"].value("rate", 0.0));
    }
    std::string measured = num(ch["measured"], pct);
    if (ch.contains("note") && !ch["measured"].is_null()) measured += " (" + ch.value("note", "") + ")";
    const std::string st = ch.value("status", "");
    t.add_row({ch.value("metric", ""), rv, cv, measured,
               ch["limit"].is_null() ? "-" : ch.value("op", "") + " " + num(ch["limit"], pct),
               st == "pass" ? "ok" : st == "fail" ? "EXCEEDED" : st + (ch.contains("note") && ch["measured"].is_null()
                                                                         ? " (" + ch.value("note", "") + ")"
                                                                         : "")});
  }
  t.add_separator();
  const auto& kl = j.at("kl");
  t.add_row({"KL p50 / p90 / max", "", "", strf("%.3g / %.3g / %.3g", kl.value("p50", 0.0), kl.value("p90", 0.0),
                                                 kl.value("max", 0.0)), "", ""});
  if (!acc.is_null())
    t.add_row({"exact match", fmt_percent(acc["reference"].value("exact_match", 0.0)),
               fmt_percent(acc["candidate"].value("exact_match", 0.0)), "", "", ""});
  const auto& sp = j.at("seconds_per_frame");
  t.add_row({"model time per frame", fmt_seconds(sp.value("reference", 0.0)), fmt_seconds(sp.value("candidate", 0.0)),
             "", "", ""});
  o += t.render();
  if (!j.at("cosine").is_null()) {
    o += "\ncosine similarity of hidden states per layer (mean over frames of the mean over tokens; min over frames):\n";
    TextTable ct({"part", "layer", "node", "mean", "min", "rows"});
    for (const char* g : kGroupNames)
      for (const auto& l : j["cosine"][g])
        ct.add_row({g, strf("%d", l.value("layer", 0)), l.value("name", ""), strf("%.6f", l.value("mean", 0.0)),
                    strf("%.6f", l.value("min", 0.0)),
                    l.value("kept_tokens", false) ? "kept tokens"
                    : l.value("pooled", false)    ? "pooled per tile"
                    : l.value("aligned_suffix", false) ? "after image"
                                                       : "all"});
    o += ct.render();
  }
  const auto& v = j.at("violations");
  if (v.empty()) {
    o += "\nPASS: every tolerance held\n";
  } else {
    o += strf("\nFAIL: %zu tolerance(s) exceeded:", v.size());
    for (const auto& x : v)
      o += strf(" %s %.6g (limit %s %.6g);", x.value("metric", "").c_str(), x.value("measured", 0.0),
                x.value("op", "").c_str(), x.value("limit", 0.0));
    o += "\n";
  }
  return o;
}

std::string validate_svg(const nlohmann::json& j) {
  std::vector<SvgLinePanel> panels;
  const auto& tol = j.at("tolerance");
  if (!j.at("cosine").is_null()) {
    const auto& cos = j["cosine"];
    // Vision layers, then the connector one step to the right.
    SvgLinePanel pv;
    pv.title = "vision tower and connector: cosine similarity of hidden states (candidate vs reference)";
    pv.x_label = "vision layer (v.blk.L.out), then the connector (mm.proj)";
    pv.y_label = "cosine";
    SvgLineSeries mean{"mean over frames", "#4e79a7", {}, false}, mn{"min over frames", "#f28e2b", {}, true};
    int last = -1;
    for (const auto& l : cos["vision"]) {
      const int x = l.value("layer", 0);
      mean.points.push_back({double(x), l.value("mean", 0.0), l.value("name", "")});
      mn.points.push_back({double(x), l.value("min", 0.0), l.value("name", "")});
      pv.x_ticks.push_back({double(x), std::to_string(x)});
      last = std::max(last, x);
    }
    SvgLineSeries conn{"connector mean", "#59a14f", {}, false};
    for (const auto& l : cos["connector"]) {
      conn.points.push_back({double(last + 1), l.value("mean", 0.0), "mm.proj"});
      pv.x_ticks.push_back({double(last + 1), "mm"});
    }
    pv.series = {mean, mn, conn};
    const auto& tv = tol["min_cosine"]["vision"];
    const auto& tc = tol["min_cosine"]["connector"];
    const bool conn_lim = tc.is_number() && !cos["connector"].empty();
    if (tv.is_number() && conn_lim && tv.get<double>() == tc.get<double>()) {
      pv.refs.push_back({tv.get<double>(), strf("vision and connector limit %.4g", tv.get<double>())});
    } else {
      if (tv.is_number()) pv.refs.push_back({tv.get<double>(), strf("vision limit %.4g", tv.get<double>())});
      if (conn_lim) pv.refs.push_back({tc.get<double>(), strf("connector limit %.4g", tc.get<double>())});
    }
    panels.push_back(pv);
    SvgLinePanel pt;
    pt.title = "text model: cosine similarity of hidden states along the teacher-forced answer";
    pt.x_label = "text layer (t.blk.L.out)";
    pt.y_label = "cosine";
    SvgLineSeries tm{"mean over frames", "#4e79a7", {}, false}, tn{"min over frames", "#f28e2b", {}, true};
    for (const auto& l : cos["text"]) {
      const int x = l.value("layer", 0);
      tm.points.push_back({double(x), l.value("mean", 0.0), l.value("name", "")});
      tn.points.push_back({double(x), l.value("min", 0.0), l.value("name", "")});
      pt.x_ticks.push_back({double(x), std::to_string(x)});
    }
    pt.series = {tm, tn};
    if (tol["min_cosine"]["text"].is_number())
      pt.refs.push_back({tol["min_cosine"]["text"].get<double>(), strf("text limit %.4g", tol["min_cosine"]["text"].get<double>())});
    panels.push_back(pt);
  }
  SvgHistogram h;
  h.title = strf("KL(p_ref || p_cand) per teacher-forced position: mean %.4g nats over %lld positions",
                 j["kl"].value("mean", 0.0), static_cast<long long>(j["kl"].value("positions", 0)));
  h.x_label = "KL (nats)";
  h.y_label = "positions";
  h.color = "#e15759";
  for (const auto& l : j["kl"]["histogram"]["labels"]) h.bin_labels.push_back(l.get<std::string>());
  for (const auto& c : j["kl"]["histogram"]["counts"]) h.counts.push_back(c.get<double>());
  return render_panels_svg(strf("edgevlm validate: %s vs %s (%s), %lld frames: %s",
                                j["candidate"].value("model", "").c_str(), j["reference"].value("model", "").c_str(),
                                j["candidate"].value("precision", "").c_str(),
                                static_cast<long long>(j.value("frames", 0)), j.value("pass", false) ? "PASS" : "FAIL"),
                           panels, {h});
}

int run_validate(const ValidateOptions& o) {
  auto error = [](const Status& s) {
    std::fprintf(stderr, "edgevlm validate: error: %s\n", s.to_string().c_str());
    return 2;
  };
  ValidateTolerance tol;
  if (!o.tolerance.empty()) {
    auto t = load_tolerance(o.tolerance);
    if (!t.ok()) return error(t.status().with_context("--tolerance"));
    tol = *t;
  }
  auto j = validate_json(o, tol);
  if (!j.ok()) return error(j.status());
  if (!o.json_out.empty() && o.json_out != "-") {
    Status s = write_text_file(o.json_out, j->dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    if (!s.ok()) return error(s);
  }
  if (!o.svg_out.empty()) {
    Status s = write_text_file(o.svg_out, validate_svg(*j));
    if (!s.ok()) return error(s);
  }
  if (o.json_out == "-")
    std::printf("%s\n", j->dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  else
    std::printf("%s", validate_table(*j).c_str());
  std::fflush(stdout);
  return j->value("pass", false) ? 0 : 1;
}

}  // namespace ev
