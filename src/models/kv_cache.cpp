#include "models/kv_cache.h"

namespace ev {

KvCache::KvCache(int n_layers, int64_t capacity, int64_t kv_dim) : capacity_(capacity), kv_dim_(kv_dim) {
  for (int l = 0; l < n_layers; ++l) {
    k_.push_back(Tensor::empty(DType::kF32, Shape{capacity, kv_dim}));
    v_.push_back(Tensor::empty(DType::kF32, Shape{capacity, kv_dim}));
  }
}

size_t KvCache::bytes() const {
  size_t b = 0;
  for (const auto& t : k_) b += t.nbytes();
  for (const auto& t : v_) b += t.nbytes();
  return b;
}

}  // namespace ev
