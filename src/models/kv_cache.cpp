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

KvCache KvCache::slot(int64_t b, int64_t cap) const {
  KvCache c;
  if (b < 0 || cap <= 0 || (b + 1) * cap > capacity_) return c;  // outside this cache: an empty one
  c.capacity_ = cap;
  c.kv_dim_ = kv_dim_;
  c.size_ = 0;
  for (size_t l = 0; l < k_.size(); ++l) {
    c.k_.push_back(k_[l].slice_rows(b * cap, (b + 1) * cap));
    c.v_.push_back(v_[l].slice_rows(b * cap, (b + 1) * cap));
  }
  return c;
}

}  // namespace ev
