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

bool KeyframeAnchor::update(const std::vector<float>& pooled, double t_s, double* distance) {
  const double d = anchor_.empty() ? 1.0 : cosine_distance(pooled, anchor_);
  if (distance) *distance = d;
  const bool key = anchor_.empty() || d >= opt_.threshold || t_s - anchor_t_ >= opt_.max_age_s;
  if (key) {
    anchor_ = pooled;
    anchor_t_ = t_s;
  }
  return key;
}

}  // namespace ev
