#include "core/histogram.h"

#include <algorithm>
#include <cmath>

namespace ev {

int Histogram::bucket_of(double x) {
  if (!(x > kMin)) return 0;  // also NaN
  if (x >= kMax) return kBuckets - 1;
  const int b = 1 + static_cast<int>(std::log(x / kMin) / std::log(kGrowth));
  return std::clamp(b, 1, kBuckets - 2);
}

double Histogram::bucket_mid(int b) {
  if (b <= 0) return kMin;
  if (b >= kBuckets - 1) return kMax;
  return kMin * std::pow(kGrowth, static_cast<double>(b - 1) + 0.5);  // geometric middle of the bucket
}

void Histogram::add(double x) {
  if (std::isnan(x)) return;
  ++counts_[static_cast<size_t>(bucket_of(x))];
  if (n_ == 0) {
    min_ = max_ = x;
  } else {
    min_ = std::min(min_, x);
    max_ = std::max(max_, x);
  }
  ++n_;
  sum_ += x;
}

double Histogram::quantile(double q) const {
  if (n_ == 0) return 0.0;
  q = std::clamp(q, 0.0, 1.0);
  if (q <= 0) return min_;
  if (q >= 1) return max_;
  // The sample of rank ceil(q n) (1-based), as the nearest-rank definition.
  const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * static_cast<double>(n_))));
  int64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += counts_[static_cast<size_t>(b)];
    if (seen >= rank) return std::clamp(bucket_mid(b), min_, max_);
  }
  return max_;
}

void Histogram::merge(const Histogram& o) {
  if (o.n_ == 0) return;
  for (int b = 0; b < kBuckets; ++b) counts_[static_cast<size_t>(b)] += o.counts_[static_cast<size_t>(b)];
  min_ = n_ ? std::min(min_, o.min_) : o.min_;
  max_ = n_ ? std::max(max_, o.max_) : o.max_;
  n_ += o.n_;
  sum_ += o.sum_;
}

nlohmann::json Histogram::summary() const {
  return {{"n", n_}, {"mean", mean()}, {"p50", quantile(0.5)}, {"p90", quantile(0.9)}, {"p99", quantile(0.99)},
          {"max", max()}};
}

}  // namespace ev
