#include "models/token_prune.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ev {

namespace {

Status bad(const std::string& item, const std::string& what) {
  return InvalidArgument("--prune item '" + item + "': " + what);
}

bool parse_float(const std::string& s, float* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = static_cast<float>(v);
  return true;
}

bool parse_int(const std::string& s, long long lo, long long hi, long long* out) {
  if (s.empty() || s.size() > 19) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  const long long v = std::strtoll(s.c_str(), nullptr, 10);
  if (v < lo || v > hi) return false;
  *out = v;
  return true;
}

std::string fmt(float x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", static_cast<double>(x));
  return b;
}

}  // namespace

int64_t prune_keep_count(float r, int64_t n) {
  const auto k = static_cast<int64_t>(std::floor(static_cast<double>(r) * static_cast<double>(n) + 0.5));
  return std::max<int64_t>(1, std::min(k, n));
}

bool PruneSpec::operator==(const PruneSpec& o) const {
  if (steps.size() != o.steps.size()) return false;
  for (size_t i = 0; i < steps.size(); ++i)
    if (steps[i].layer != o.steps[i].layer || steps[i].keep != o.steps[i].keep) return false;
  return llm_keep == o.llm_keep && score == o.score && (score != Score::kRandom || seed == o.seed) &&
         input_size == o.input_size;
}

std::string PruneSpec::to_string() const {
  if (!active()) return "none";
  std::string s;
  auto add = [&](const std::string& item) { s += (s.empty() ? "" : ",") + item; };
  for (const Step& st : steps) add(std::to_string(st.layer) + ":" + fmt(st.keep));
  if (llm_keep < 1.f) add("llm:" + fmt(llm_keep));
  if (score == Score::kRandom) add("random=" + std::to_string(seed));
  if (input_size > 0) add("input:" + std::to_string(input_size));
  return s;
}

Result<PruneSpec> parse_prune_spec(const std::string& s) {
  PruneSpec p;
  if (s.empty() || s == "none" || s == "off") return p;
  if (s == "auto") return InvalidArgument("--prune auto needs a model (resolve_prune_spec)");
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const std::string item = s.substr(i, j - i);
    i = j + 1;
    if (item.empty()) return InvalidArgument("--prune '" + s + "': empty item");
    const size_t colon = item.find(':');
    if (item == "random" || item.rfind("random=", 0) == 0) {
      p.score = PruneSpec::Score::kRandom;
      if (item.size() > 6) {
        long long v = 0;
        if (!parse_int(item.substr(7), 0, (1LL << 53), &v)) return bad(item, "the seed must be an integer >= 0");
        p.seed = static_cast<uint64_t>(v);
      }
    } else if (colon == std::string::npos) {
      return bad(item, "expected L:R, llm:R, random[=SEED] or input:S");
    } else {
      const std::string key = item.substr(0, colon), val = item.substr(colon + 1);
      if (key == "llm") {
        float r = 0;
        if (!parse_float(val, &r) || !(r > 0.f && r <= 1.f)) return bad(item, "the keep fraction must be in (0, 1]");
        p.llm_keep = r;
      } else if (key == "input") {
        long long v = 0;
        if (!parse_int(val, 1, 1 << 16, &v)) return bad(item, "the input size must be a positive integer");
        p.input_size = static_cast<int>(v);
      } else {
        long long l = 0;
        if (!parse_int(key, 0, 1 << 16, &l)) return bad(item, "the layer must be an integer >= 0");
        float r = 0;
        if (!parse_float(val, &r) || !(r > 0.f && r <= 1.f)) return bad(item, "the keep fraction must be in (0, 1]");
        if (!p.steps.empty() && p.steps.back().layer >= l) return bad(item, "layers must increase");
        if (!p.steps.empty() && p.steps.back().keep < r) return bad(item, "keep fractions must not increase");
        p.steps.push_back({static_cast<int>(l), r});
      }
    }
    if (j == s.size()) break;
  }
  return p;
}

Status validate_prune_spec(const PruneSpec& p, const VlmConfig& cfg) {
  const VisionConfig& v = cfg.vision;
  for (size_t i = 0; i < p.steps.size(); ++i) {
    const auto& st = p.steps[i];
    if (st.layer < 0 || st.layer >= v.num_hidden_layers)
      return InvalidArgument("--prune " + p.to_string() + ": layer " + std::to_string(st.layer) +
                             " is outside the vision tower's layers 0.." + std::to_string(v.num_hidden_layers - 1));
    if (!(st.keep > 0.f && st.keep <= 1.f))
      return InvalidArgument("--prune " + p.to_string() + ": keep fraction " + fmt(st.keep) + " not in (0, 1]");
    if (i > 0 && (p.steps[i - 1].layer >= st.layer || p.steps[i - 1].keep < st.keep))
      return InvalidArgument("--prune " + p.to_string() + ": layers must increase and keep fractions not increase");
  }
  if (!(p.llm_keep > 0.f && p.llm_keep <= 1.f))
    return InvalidArgument("--prune " + p.to_string() + ": llm keep fraction not in (0, 1]");
  if (p.input_size > 0) {
    const int unit = v.patch_size * cfg.scale_factor;
    if (p.input_size % unit != 0 || p.input_size > v.image_size)
      return InvalidArgument("--prune input:" + std::to_string(p.input_size) + ": the input size must be a multiple of " +
                             std::to_string(unit) + " (patch " + std::to_string(v.patch_size) + " x scale_factor " +
                             std::to_string(cfg.scale_factor) + ") and at most the tile size " +
                             std::to_string(v.image_size));
  }
  return Status::Ok();
}

PruneSpec default_prune_spec(int n_layers) {
  // Measured on the 6-layer road student (bench/BENCHMARKS.md): keep half the tokens after the second layer and a
  // quarter after the fourth. Deeper towers get the same fractions of their depth.
  PruneSpec p;
  const int l1 = std::max(0, (n_layers * 2 + 3) / 6 - 1), l2 = std::max(l1 + 1, (n_layers * 4 + 3) / 6 - 1);
  p.steps.push_back({l1, 0.5f});
  if (l2 < n_layers) p.steps.push_back({l2, 0.25f});
  return p;
}

Result<PruneSpec> resolve_prune_spec(const std::string& s, const VlmConfig& cfg, const std::string& auto_spec) {
  PruneSpec p;
  if (s == "auto") {
    if (!auto_spec.empty()) {
      auto r = parse_prune_spec(auto_spec);
      if (!r.ok()) return r.status().with_context("config.json edgevlm.prune.auto");
      p = *r;
    } else {
      p = default_prune_spec(cfg.vision.num_hidden_layers);
    }
  } else {
    EV_ASSIGN_OR_RETURN(p, parse_prune_spec(s));
  }
  EV_RETURN_IF_ERROR(validate_prune_spec(p, cfg));
  return p;
}

}  // namespace ev
