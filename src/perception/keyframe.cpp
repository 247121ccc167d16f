#include "perception/keyframe.h"

#include <cmath>

namespace ev {

std::vector<float> mean_pool(const float* x, int64_t P, int64_t C) {
  std::vector<double> acc(static_cast<size_t>(C), 0.0);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += x[p * C + c];
  std::vector<float> out(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c)
    out[static_cast<size_t>(c)] = P > 0 ? static_cast<float>(acc[static_cast<size_t>(c)] / static_cast<double>(P)) : 0.f;
  return out;
}

double cosine_distance(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return 1.0;
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    na += static_cast<double>(a[i]) * a[i];
    nb += static_cast<double>(b[i]) * b[i];
  }
  if (na <= 0 || nb <= 0) return na == nb ? 0.0 : 1.0;
  return 1.0 - dot / std::sqrt(na * nb);
}

const char* key_reason_name(KeyReason r) {
  switch (r) {
    case KeyReason::kFirst: return "first";
    case KeyReason::kChange: return "change";
    case KeyReason::kHazard: return "hazard";
    case KeyReason::kAge: return "age";
    default: return "none";
  }
}

KeyReason KeyframeAnchor::decide(const std::vector<float>& pooled, const std::vector<float>* hazards, double t_s,
                                 double* distance) {
  const double d = anchor_.empty() ? 1.0 : cosine_distance(pooled, anchor_);
  if (distance) *distance = d;
  KeyReason why = KeyReason::kNone;
  if (anchor_.empty()) {
    why = KeyReason::kFirst;
  } else if (d >= opt_.threshold) {
    why = KeyReason::kChange;
  } else if (opt_.hazard_delta > 0 && hazards && hazards->size() == anchor_hazards_.size()) {
    for (size_t c = 0; c < hazards->size() && why == KeyReason::kNone; ++c)
      if (std::fabs((*hazards)[c] - anchor_hazards_[c]) >= opt_.hazard_delta) why = KeyReason::kHazard;
  }
  if (why == KeyReason::kNone && t_s - anchor_t_ >= opt_.max_age_s) why = KeyReason::kAge;
  if (why != KeyReason::kNone) {
    anchor_ = pooled;
    anchor_t_ = t_s;
    if (hazards) anchor_hazards_ = *hazards;
    else anchor_hazards_.clear();
  }
  return why;
}

}  // namespace ev
