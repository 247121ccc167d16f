// The Idefics3 / SmolVLM connector (transformers: modeling_idefics3.py, Idefics3Connector):
//   vision tokens [B, N, E] -> pixel_shuffle(scale s) [B, N/s^2, E*s^2] -> modality_projection.proj (no bias)
//   -> [B, N/s^2, text_hidden]
#pragma once

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "graph/graph.h"
#include "models/weights.h"

namespace ev {

class Idefics3Connector {
 public:
  static Result<Idefics3Connector> load(const WeightLoader& w, const VlmConfig& cfg);
  TensorId build(Graph& g, TensorId vision_out) const;
  int scale() const { return scale_; }
  const Tensor& proj() const { return proj_; }

 private:
  int scale_ = 1;
  Tensor proj_;  // [text_hidden, E*s^2]
};

}  // namespace ev
