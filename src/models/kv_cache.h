// Per-sequence KV cache for Llama-style decoders: per layer K and V of [capacity, n_kv_heads * head_dim] f32,
// rows = positions. Keys are stored after RoPE.
#pragma once

#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace ev {

class KvCache {
 public:
  KvCache() = default;
  KvCache(int n_layers, int64_t capacity, int64_t kv_dim);

  int64_t capacity() const { return capacity_; }
  int64_t kv_dim() const { return kv_dim_; }
  int64_t size() const { return size_; }  // positions filled
  void set_size(int64_t n) { size_ = n; }
  void clear() { size_ = 0; }
  size_t bytes() const;

  // Rows [r0, r1) of layer l's K / V as [r1 - r0, kv_dim] views.
  Tensor k(int layer, int64_t r0, int64_t r1) const { return k_[static_cast<size_t>(layer)].slice_rows(r0, r1); }
  Tensor v(int layer, int64_t r0, int64_t r1) const { return v_[static_cast<size_t>(layer)].slice_rows(r0, r1); }
  // Layer l's whole K / V storage [capacity, kv_dim] (what an executor keeps resident on its device).
  const Tensor& k_layer(int layer) const { return k_[static_cast<size_t>(layer)]; }
  const Tensor& v_layer(int layer) const { return v_[static_cast<size_t>(layer)]; }
  int n_layers() const { return static_cast<int>(k_.size()); }
  // Rows [b * cap, (b + 1) * cap) of every layer as a cache of its own (views: the same storage), empty: the slot
  // of sequence b in a cache shared by several sequences (VlmModel::build_decode_batch).
  KvCache slot(int64_t b, int64_t cap) const;

 private:
  std::vector<Tensor> k_, v_;
  int64_t capacity_ = 0, kv_dim_ = 0, size_ = 0;
};

}  // namespace ev
