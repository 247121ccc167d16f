// SigLIP vision transformer as used by Idefics3 / SmolVLM (transformers: models/idefics3/modeling_idefics3.py,
// Idefics3VisionTransformer; the same module is SmolVLMVisionTransformer in models/smolvlm).
//
//   pixels [B, 3, S, S] -> patchify -> patch_embedding (conv P x P, stride P, as a Linear over 3*P*P) [B, N, E]
//   + position_embedding [N, E]  (N = (S/P)^2; all patches valid: full tiles, no padding masks)
//   x L: x += out_proj(attn(layer_norm1(x)));  x += fc2(gelu_tanh(fc1(layer_norm2(x))))
//   post_layernorm -> [B, N, E]
// Head-pruned towers (edgevlm prune-heads) have VisionConfig::heads_in_layer(l) heads of head_dim() in layer l:
// q/k/v [H_l*D, E], out_proj [E, H_l*D].
#pragma once

#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "graph/graph.h"
#include "models/token_prune.h"
#include "models/weights.h"

namespace ev {

struct SiglipVisionWeights {
  Tensor patch_w;  // [E, 3*P*P] (conv weight flattened)
  Tensor patch_b;  // [E]
  Tensor pos;      // [N, E]
  struct Layer {
    Tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  std::vector<Layer> layers;
  Tensor post_w, post_b;
};

class SiglipVisionTower {
 public:
  // `w` resolves names relative to the vision model ("embeddings.patch_embedding.weight", ...).
  static Result<SiglipVisionTower> load(const WeightLoader& w, const VisionConfig& cfg);

  // Adds the tower to `g`: pixels [B, 3, S, S] -> [B, N, E]. `n_layers` < 0 runs all layers (fewer is used by
  // early-exit features later).
  TensorId build(Graph& g, TensorId pixels, int n_layers = -1) const { return build(g, pixels, VisionRun{}, nullptr, n_layers); }
  // The same with token pruning and head masks (models/token_prune.h). Pixels may be smaller than image_size
  // (S a multiple of the patch size: the downscale baseline); the output has (S/P)^2 tokens. With
  // run.want_importance, *importance receives the [B, N] last-layer importance of every grid token.
  TensorId build(Graph& g, TensorId pixels, const VisionRun& run, TensorId* importance, int n_layers = -1) const;

  const VisionConfig& config() const { return cfg_; }
  int num_patches() const { return (cfg_.image_size / cfg_.patch_size) * (cfg_.image_size / cfg_.patch_size); }
  const SiglipVisionWeights& weights() const { return w_; }
  // u8 frames ([B, S, S, 3], as decoded) instead of normalised f32 tiles: the processor's normalisation
  // x = u8 * scale[c] + offset[c] is linear, so it folds into the patch embedding (W' = W scale, b' = b + W offset,
  // computed in double, kept f32). Called once at load; build() then takes u8 pixels too.
  void fold_pixel_normalization(const float scale[3], const float offset[3]);

 private:
  VisionConfig cfg_;
  SiglipVisionWeights w_;
  Tensor patch_w_u8_, patch_b_u8_;  // fold_pixel_normalization: [E, 3*P*P], [E] f32
};

}  // namespace ev
