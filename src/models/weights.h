// Weight loading helpers shared by every architecture file: checked lookups against the config's shapes, and
// the precision policy for small tensors.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/safetensors.h"

namespace ev {

// Looks tensors up under a list of prefixes (checkpoints differ: "model.vision_model." in Idefics3/SmolVLM as
// saved by transformers, "vision_model." in some exports). The first prefix under which a name exists wins.
class WeightLoader {
 public:
  WeightLoader(const TensorStore& store, std::vector<std::string> prefixes)
      : store_(store), prefixes_(std::move(prefixes)) {}

  bool has(const std::string& name) const;
  // A matrix used by a Linear (or an embedding table): kept in its on-disk dtype (f32/bf16/f16); the backend
  // packs it for its compute precision.
  Result<Tensor> matrix(const std::string& name, Shape expected) const;
  // A small tensor (norm weight, bias, position table): converted to f32 once at load.
  Result<Tensor> small_f32(const std::string& name, Shape expected) const;
  // Full name under which `name` was found (for messages), or the first candidate.
  std::string resolve(const std::string& name) const;

 private:
  const TensorStore& store_;
  std::vector<std::string> prefixes_;
};

}  // namespace ev
