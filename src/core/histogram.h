// A latency histogram of fixed size: log-spaced buckets (2% wide) from 1 us to 1000 s, plus the exact count, sum,
// min and max. Adding is O(1), a copy is a few kB whatever the number of samples, and quantiles are within one
// bucket (2%) of the exact ones, clamped to [min, max]. For measurements that run for hours (the stream
// pipeline's per-frame latencies) where keeping every sample would grow without bound.
#pragma once

#include <array>
#include <cstdint>

#include <nlohmann/json.hpp>

namespace ev {

class Histogram {
 public:
  static constexpr double kMin = 1e-6, kMax = 1e3, kGrowth = 1.02;
  static constexpr int kBuckets = 1049;  // ceil(log(kMax / kMin) / log(kGrowth)) + under / overflow

  void add(double x);
  int64_t count() const { return n_; }
  double sum() const { return sum_; }
  double mean() const { return n_ ? sum_ / static_cast<double>(n_) : 0.0; }
  double min() const { return n_ ? min_ : 0.0; }
  double max() const { return n_ ? max_ : 0.0; }
  // q in [0, 1]; 0 for an empty histogram.
  double quantile(double q) const;
  void merge(const Histogram& o);
  // {"n", "mean", "p50", "p90", "p99", "max"}
  nlohmann::json summary() const;

 private:
  static int bucket_of(double x);
  static double bucket_mid(int b);
  std::array<int64_t, kBuckets> counts_{};
  int64_t n_ = 0;
  double sum_ = 0, min_ = 0, max_ = 0;
};

}  // namespace ev
