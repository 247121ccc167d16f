// The fast head: per-frame hazard probabilities straight from the vision tower, so that a red light or a
// pedestrian stepping out is signalled on every frame without waiting for the language model.
//
//   vision last hidden state [B, P, Hv] -> mean over the P tokens [B, Hv] -> Linear [C, Hv] (+ bias) -> sigmoid
//
// An edgevlm extension that rides along in a Hugging Face model directory: tensors "fast_head.weight" [C, Hv]
// and "fast_head.bias" [C] in the safetensors files, described in config.json under
//   "edgevlm": {"fast_head": {"classes": [...], "input": "vision_last_hidden_state", "pooling": "mean",
//                             "activation": "sigmoid", "threshold": 0.5, "weight": ..., "bias": ...}}
// (written by train/roadvlm.py export; transformers ignores both). Any vision tower whose output is [B, P, Hv]
// can carry one.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/safetensors.h"
#include "graph/graph.h"

namespace ev {

struct FastHeadConfig {
  std::vector<std::string> classes;
  float threshold = 0.5f;
  std::string weight = "fast_head.weight";
  std::string bias = "fast_head.bias";
};

// Reads config.json's "edgevlm.fast_head" (nullopt when the model has none). Unknown input, pooling or activation
// values are refused: a head we would compute differently from how it was trained must not load.
Result<std::optional<FastHeadConfig>> parse_fast_head_config(const nlohmann::json& config, const std::string& path);

class FastHead {
 public:
  static Result<FastHead> load(const TensorStore& weights, const FastHeadConfig& cfg, int64_t vision_hidden);
  // vision_out [B, P, Hv] -> probabilities [B, C]
  TensorId build(Graph& g, TensorId vision_out) const;
  const FastHeadConfig& config() const { return cfg_; }
  int num_classes() const { return static_cast<int>(cfg_.classes.size()); }

 private:
  FastHeadConfig cfg_;
  Tensor w_, b_;
};

}  // namespace ev
