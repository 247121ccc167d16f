// VlmModel: the interface every vision-language architecture implements, and the registry keyed by
// config.json's model_type. A new architecture is a new file that implements VlmModel and one line in
// registry.cpp's table; nothing else changes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "graph/backend.h"
#include "graph/graph.h"
#include "models/kv_cache.h"
#include "models/token_prune.h"

namespace ev {

class VlmModel {
 public:
  virtual ~VlmModel() = default;
  virtual const VlmConfig& config() const = 0;
  virtual std::string architecture() const = 0;

  // Vision side. Tiles are square images of tile_size() pixels; each yields tokens_per_tile() embeddings.
  virtual int tile_size() const = 0;
  virtual int tokens_per_tile() const = 0;
  // pixels [B, 3, S, S] -> image embeddings [B, tokens_per_tile, text_hidden]. If `vision_out` is given it
  // receives the vision tower's output node (before the connector).
  // `run` carries token pruning and head masks (models/token_prune.h); with run.want_importance, *importance gets
  // the [B, N] last-layer importance of the vision tokens. Pixels may be smaller than tile_size() (downscaling).
  TensorId build_vision(Graph& g, TensorId pixels, TensorId* vision_out = nullptr) const {
    return build_vision(g, pixels, vision_out, VisionRun{}, nullptr);
  }
  virtual TensorId build_vision(Graph& g, TensorId pixels, TensorId* vision_out, const VisionRun& run,
                                TensorId* importance) const = 0;

  // Text side.
  virtual int64_t text_hidden() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual KvCache make_cache(int64_t capacity) const = 0;
  // ids [T] (i32) -> embeddings [T, H]
  virtual TensorId build_embed(Graph& g, TensorId ids) const = 0;
  // Embeddings x [T, H] at positions cache.size()..+T -> logits of the last n_logits rows [n_logits, V].
  virtual TensorId build_decoder(Graph& g, TensorId x, int64_t T, const KvCache& cache, int64_t n_logits) const = 0;
  // Static decode (one token, T = 1): the position comes from `positions` (an i32 [1] leaf) rather than from
  // cache.size(), attention runs over the cache's whole capacity (masked by the position) and the new K/V row is
  // scattered into the cache in place. The graph is then the same at every step, so an executor can replay it as
  // it is (CUDA graphs without capture); only the id and position tensors change.
  virtual TensorId build_decode_step(Graph& g, TensorId x, const KvCache& cache, TensorId positions) const = 0;
  // The same for B sequences of one token each (x [B, H]): sequence b owns cache rows [b * seq_capacity,
  // (b + 1) * seq_capacity) (KvCache::slot), sits at positions[b] and writes row rows[b] = b * seq_capacity +
  // positions[b] (both i32 [B] leaves). Logits [B, V]. Every projection is one GEMM for all B sequences.
  virtual TensorId build_decode_batch(Graph& g, TensorId x, const KvCache& cache, int64_t seq_capacity,
                                      TensorId positions, TensorId rows) const = 0;

  // Bytes of weights this model references (for reports).
  virtual size_t weight_bytes() const = 0;

  // Fused decoder projections (q/k/v and gate/up as one Linear each; models/llama_text.h "Fused projections"):
  // on = false builds the checkpoint's own Linears (what a precision plan names); on = true fuses every group
  // `plan` (nullptr: none) treats alike and adds the fused weights' entries to *plan. Returns the number of fused
  // groups (0 for models without any). Not thread-safe against concurrent graph builds.
  virtual int select_fused_linears(bool on, LinearPlan* plan) { return 0; }
  // u8 frames [B, S, S, 3] as build_vision's pixels: the processor's normalisation x = u8 * scale[c] + offset[c],
  // folded into the first layer. Returns false where the architecture cannot take u8 frames.
  virtual bool set_pixel_normalization(const float scale[3], const float offset[3]) { return false; }
};

using VlmFactory = Result<std::unique_ptr<VlmModel>> (*)(const VlmConfig& cfg, const TensorStore& weights);

// Creates the model for cfg.model_type; kUnsupported with the list of known types otherwise.
Result<std::unique_ptr<VlmModel>> create_vlm(const VlmConfig& cfg, const TensorStore& weights);
std::vector<std::string> supported_model_types();

// Factories (one per architecture file).
Result<std::unique_ptr<VlmModel>> create_idefics3(const VlmConfig& cfg, const TensorStore& weights);

}  // namespace ev
