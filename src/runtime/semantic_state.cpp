#include "runtime/semantic_state.h"

#include <algorithm>
#include <cctype>

namespace ev {

namespace {
// Consecutive outputs that must agree on a change the model is unsure of (min_confidence).
constexpr int kUnsureConfirmations = 6;
}  // namespace

std::vector<std::string> FieldStabilizer::update(const Fields& out, bool scene_changed,
                                                const std::map<std::string, float>* confidence) {
  std::vector<std::string> changed;
  const int need = gated_ && scene_changed ? 1 : hysteresis_;
  for (const auto& [f, raw] : out) {
    std::string v = raw;
    if (window_ > 1) {
      auto& r = recent_[f];
      r.push_back(raw);
      if (static_cast<int>(r.size()) > window_) r.erase(r.begin());
      std::map<std::string, int> votes;
      for (const auto& x : r) ++votes[x];
      v.clear();
      for (const auto& [val, n] : votes)
        if (2 * n > static_cast<int>(r.size())) v = val;
      if (v.empty()) continue;  // no majority: nothing changes
    }
    auto cur = fields_.find(f);
    int need_f = need;
    if (cur != fields_.end() && cur->second != v && confidence && min_confidence_ > 0) {
      auto c = confidence->find(f);
      // An unsure change must be confirmed by the next outputs as well (it is not simply ignored: a field must not
      // stay stuck on a confidently wrong value).
      if (c != confidence->end() && c->second < min_confidence_) need_f = std::max(need, kUnsureConfirmations);
    }
    if (cur == fields_.end()) {  // first value of this field: at once
      fields_[f] = v;
      candidate_.erase(f);
      changed.push_back(f);
      continue;
    }
    if (cur != fields_.end() && cur->second == v) {
      candidate_.erase(f);
      continue;
    }
    auto& c = candidate_[f];
    c = c.first == v ? std::make_pair(v, c.second + 1) : std::make_pair(v, 1);
    if (c.second >= need_f) {
      fields_[f] = v;
      candidate_.erase(f);
      changed.push_back(f);
    }
  }
  return changed;
}

std::map<std::string, float> field_confidence(const std::string& text, const std::vector<float>& token_probs,
                                              const std::vector<size_t>& token_text_end) {
  std::map<std::string, float> out;
  const size_t n = std::min(token_probs.size(), token_text_end.size());
  auto trim = [&](size_t& a, size_t& b) {
    while (a < b && std::isspace(static_cast<unsigned char>(text[a]))) ++a;
    while (b > a && std::isspace(static_cast<unsigned char>(text[b - 1]))) --b;
  };
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(';', start);
    if (end == std::string::npos) end = text.size();
    const size_t colon = text.find(':', start);
    if (colon != std::string::npos && colon < end) {
      size_t ka = start, kb = colon, va = colon + 1, vb = end;
      trim(ka, kb);
      trim(va, vb);
      std::string key = text.substr(ka, kb - ka);
      for (auto& ch : key) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (!key.empty() && va < vb && !out.count(key)) {
        float conf = 1.f;
        size_t tok_start = 0;
        for (size_t k = 0; k < n; ++k) {
          const size_t tok_end = token_text_end[k];
          if (tok_end > va && tok_start < vb) conf = std::min(conf, token_probs[k]);  // overlaps the value
          tok_start = tok_end;
        }
        out[key] = conf;
      }
    }
    if (end == text.size()) break;
    start = end + 1;
  }
  return out;
}

void TruthScorer::on_output(const Fields& raw, const std::vector<std::string>& changed, const Fields& before,
                            const Fields& truth) {
  ++outputs;
  if (truth.empty()) return;
  auto stood = [&](const std::string& f) {  // the truth of f did not change since the previous output
    auto pt = prev_truth_.find(f);
    auto tt = truth.find(f);
    return pt != prev_truth_.end() && tt != truth.end() && pt->second == tt->second;
  };
  if (have_prev_) {
    for (const auto& [f, v] : raw) {
      auto po = prev_out_.find(f);
      if (po != prev_out_.end() && po->second != v && stood(f)) ++flicker_raw[f];
    }
    for (const auto& f : changed)
      if (before.count(f) && stood(f)) ++flicker[f];
  }
  prev_out_ = raw;
  prev_truth_ = truth;
  have_prev_ = true;
}

void TruthScorer::on_frame(const Fields& reported, const Fields& truth, double pts_s) {
  if (truth.empty()) return;
  ++truth_frames;
  for (const auto& [f, v] : truth) {
    auto h = reported.find(f);
    const bool ok = h != reported.end() && h->second == v;
    if (ok) ++field_correct[f];
    auto last = last_truth_.find(f);
    if (last != last_truth_.end() && last->second != v) {
      if (pending_.count(f)) ++events_missed;  // the previous change was never shown
      pending_[f] = pts_s;
    }
    last_truth_[f] = v;
    auto p = pending_.find(f);
    if (p != pending_.end() && ok) {
      event_delay_s.push_back(pts_s - p->second);
      pending_.erase(p);
    }
  }
}

void TruthScorer::new_sequence() {
  events_open_at_end += static_cast<int64_t>(pending_.size());
  pending_.clear();
  last_truth_.clear();
  prev_out_.clear();
  prev_truth_.clear();
  have_prev_ = false;
}

int64_t TruthScorer::flicker_total() const {
  int64_t n = 0;
  for (const auto& [f, k] : flicker) n += k;
  return n;
}

int64_t TruthScorer::flicker_raw_total() const {
  int64_t n = 0;
  for (const auto& [f, k] : flicker_raw) n += k;
  return n;
}

}  // namespace ev
