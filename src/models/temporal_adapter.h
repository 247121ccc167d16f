// The temporal adapter: the current key frame's visual tokens cross-attend to the previous key frame's, so that
// the interpretation carries over between frames instead of being re-derived (and re-guessed) from scratch.
//
//   x [B, T, H] (this frame's image embeddings, the connector's output), m [B, T', H] (the previous key frame's)
//   q = LN_x(x) Wq^T, k = LN_m(m) Wk^T, v = LN_m(m) Wv^T          heads of H / n_heads, non-causal attention
//   x' = x + tanh(gate) * (attention(q, k, v) Wo^T)
//
// gate starts at 0 in training (the adapter begins as the identity). Tensors "temporal.{norm_x,norm_m}.{weight,
// bias}", "temporal.{q,k,v,o}.weight", "temporal.gate" [1], described in config.json under
//   "edgevlm": {"temporal_adapter": {"heads": N, "memory": "previous_keyframe_image_embeddings", "eps": 1e-5}}
// (written by train/roadvlm.py). Without a memory (the first key frame) the adapter is skipped.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/safetensors.h"
#include "graph/graph.h"

namespace ev {

struct TemporalAdapterConfig {
  int heads = 1;
  float eps = 1e-5f;
};

Result<std::optional<TemporalAdapterConfig>> parse_temporal_adapter_config(const nlohmann::json& config,
                                                                          const std::string& path);

class TemporalAdapter {
 public:
  static Result<TemporalAdapter> load(const TensorStore& weights, const TemporalAdapterConfig& cfg, int64_t hidden);
  // x [B, T, H], memory [B, T', H] -> [B, T, H]
  TensorId build(Graph& g, TensorId x, TensorId memory) const;
  const TemporalAdapterConfig& config() const { return cfg_; }
  float gate() const { return gate_; }

 private:
  TemporalAdapterConfig cfg_;
  int64_t hidden_ = 0;
  Tensor nx_w_, nx_b_, nm_w_, nm_b_, q_, k_, v_, o_;
  Tensor gate_t_;  // [1]: tanh(gate), f32
  float gate_ = 0;
};

}  // namespace ev
