// Comparison helpers shared by the golden parity tests (tests/golden/*.cpp).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "formats/safetensors.h"

namespace ev::golden {

inline Tensor as_f32(const Tensor& t) { return t.dtype() == DType::kF32 ? t : t.to(DType::kF32).value(); }

struct Diff {
  double rel = 0;     // max|a-b| / max|b|
  double cosine = 0;
};

inline Diff compare(const Tensor& got, const Tensor& want) {
  const Tensor a = as_f32(got), b = as_f32(want);
  EXPECT_EQ(a.numel(), b.numel()) << got.name() << " " << a.shape().to_string() << " vs " << b.shape().to_string();
  Diff d;
  if (a.numel() != b.numel()) {
    d.rel = 1e9;
    return d;
  }
  double maxdiff = 0, maxref = 0, dot = 0, na = 0, nb = 0;
  const float* pa = a.data_as<float>();
  const float* pb = b.data_as<float>();
  for (int64_t i = 0; i < a.numel(); ++i) {
    maxdiff = std::max(maxdiff, std::fabs(double(pa[i]) - pb[i]));
    maxref = std::max(maxref, std::fabs(double(pb[i])));
    dot += double(pa[i]) * pb[i];
    na += double(pa[i]) * pa[i];
    nb += double(pb[i]) * pb[i];
  }
  d.rel = maxdiff / std::max(maxref, 1e-30);
  d.cosine = dot / std::max(std::sqrt(na * nb), 1e-30);
  return d;
}

inline std::vector<int32_t> ids_of(const TensorStore& s, const char* name) {
  Tensor t = s.get(name).value();
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < t.numel(); ++i)
    ids.push_back(t.dtype() == DType::kI64 ? static_cast<int32_t>(t.data_as<int64_t>()[i]) : t.data_as<int32_t>()[i]);
  return ids;
}

}  // namespace ev::golden
