#include "text/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace ev::text {

int32_t argmax(const float* logits, int n) {
  if (!logits || n <= 0) return -1;
  int32_t best = -1;
  float best_v = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (best < 0 || v > best_v) {
      best = i;
      best_v = v;
    }
  }
  return best;
}

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) {}

void Sampler::accept(int32_t token) {
  if (token < 0) return;
  if (static_cast<size_t>(token) >= seen_.size()) seen_.resize(static_cast<size_t>(token) + 1, 0);
  seen_[token] = 1;
}

void Sampler::accept(const std::vector<int32_t>& tokens) {
  for (int32_t t : tokens) accept(t);
}

void Sampler::reset() {
  seen_.clear();
  rng_.seed(params_.seed);
}

int32_t Sampler::sample(const float* logits, int n) {
  if (!logits || n <= 0) return -1;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  work_.assign(logits, logits + n);
  for (float& v : work_)
    if (std::isnan(v)) v = kNegInf;

  // RepetitionPenaltyLogitsProcessor: a seen token's logit is divided by the penalty when positive and
  // multiplied by it when negative.
  const float rp = params_.repetition_penalty;
  if (rp != 1.0f && rp > 0.0f) {
    const size_t lim = std::min(seen_.size(), static_cast<size_t>(n));
    for (size_t i = 0; i < lim; ++i) {
      if (!seen_[i]) continue;
      work_[i] = work_[i] < 0.0f ? work_[i] * rp : work_[i] / rp;
    }
  }

  int32_t chosen = -1;
  if (!(params_.temperature > 0.0f)) {
    chosen = argmax(work_.data(), n);
    if (chosen < 0) chosen = 0;  // every logit NaN: any index is as good
    accept(chosen);
    return chosen;
  }

  // TemperatureLogitsWarper.
  const float inv_t = 1.0f / params_.temperature;
  for (float& v : work_) v *= inv_t;

  // TopKLogitsWarper: drop every logit below the k-th largest (ties with it survive).
  const int k = params_.top_k;
  if (k > 0 && k < n) {
    std::vector<float> tmp(work_);
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float kth = tmp[k - 1];
    for (float& v : work_)
      if (v < kth) v = kNegInf;
  }

  // Softmax over the survivors (the max is finite unless everything was -inf).
  float mx = kNegInf;
  for (float v : work_) mx = std::max(mx, v);
  if (mx == kNegInf) {
    chosen = argmax(logits, n);
    if (chosen < 0) chosen = 0;
    accept(chosen);
    return chosen;
  }
  std::vector<double> probs(n);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    probs[i] = work_[i] == kNegInf ? 0.0 : std::exp(static_cast<double>(work_[i] - mx));
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;

  // TopPLogitsWarper: sort ascending, drop the tokens whose cumulative probability stays <= 1 - top_p; the
  // most likely token is always kept.
  const float top_p = params_.top_p;
  if (top_p < 1.0f) {
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    // Ascending by probability; on ties the higher index first, so that the lower index survives longer.
    std::stable_sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
      return probs[a] != probs[b] ? probs[a] < probs[b] : a > b;
    });
    double cum = 0.0;
    const double cut = 1.0 - static_cast<double>(top_p);
    double kept = 0.0;
    for (int r = 0; r < n; ++r) {
      const int32_t id = order_[r];
      cum += probs[id];
      if (cum <= cut && r != n - 1) {
        probs[id] = 0.0;
      } else {
        kept += probs[id];
      }
    }
    if (kept > 0.0)
      for (double& p : probs) p /= kept;
  }

  // Inverse-CDF draw with a 53-bit uniform in [0, 1).
  const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0);
  double acc = 0.0;
  int32_t last_nonzero = -1;
  for (int i = 0; i < n; ++i) {
    if (probs[i] <= 0.0) continue;
    last_nonzero = i;
    acc += probs[i];
    if (u < acc) {
      chosen = i;
      break;
    }
  }
  if (chosen < 0) chosen = last_nonzero >= 0 ? last_nonzero : 0;  // rounding left u just above the total
  accept(chosen);
  return chosen;
}

}  // namespace ev::text
