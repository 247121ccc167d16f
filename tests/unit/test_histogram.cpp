// Histogram: quantiles within one 2% bucket of the exact ones, exact count / sum / min / max, O(1) size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/histogram.h"

namespace {

double exact_rank_quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t rank = std::max<size_t>(1, static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))));
  return v[rank - 1];
}

TEST(Histogram, QuantilesWithinOneBucket) {
  std::mt19937 rng(7);
  std::lognormal_distribution<double> d(std::log(0.015), 0.6);  // latencies around 15 ms
  ev::Histogram h;
  std::vector<double> v;
  for (int i = 0; i < 20000; ++i) {
    const double x = d(rng);
    h.add(x);
    v.push_back(x);
  }
  EXPECT_EQ(h.count(), 20000);
  EXPECT_DOUBLE_EQ(h.min(), *std::min_element(v.begin(), v.end()));
  EXPECT_DOUBLE_EQ(h.max(), *std::max_element(v.begin(), v.end()));
  for (double q : {0.01, 0.5, 0.9, 0.99, 0.999}) {
    const double want = exact_rank_quantile(v, q);
    EXPECT_NEAR(h.quantile(q) / want, 1.0, 0.021) << "q " << q;
  }
  EXPECT_DOUBLE_EQ(h.quantile(0), h.min());
  EXPECT_DOUBLE_EQ(h.quantile(1), h.max());
}

TEST(Histogram, EdgesEmptyAndMerge) {
  ev::Histogram h;
  EXPECT_EQ(h.quantile(0.5), 0.0);
  EXPECT_EQ(h.summary().at("n"), 0);
  h.add(0.0);      // below the range: the underflow bucket, min stays exact
  h.add(5000.0);   // above: overflow
  h.add(std::nan(""));  // ignored
  EXPECT_EQ(h.count(), 2);
  EXPECT_EQ(h.min(), 0.0);
  EXPECT_EQ(h.max(), 5000.0);
  EXPECT_LE(h.quantile(0.5), ev::Histogram::kMin);  // the underflow bucket
  ev::Histogram a, b;
  for (int i = 1; i <= 100; ++i) (i % 2 ? a : b).add(i * 1e-3);
  a.merge(b);
  EXPECT_EQ(a.count(), 100);
  EXPECT_NEAR(a.quantile(0.5), 0.050, 0.050 * 0.021);
  EXPECT_NEAR(a.sum(), 5.05, 1e-9);
  EXPECT_LT(sizeof(ev::Histogram), 16u * 1024u);
}

}  // namespace
