// Llama decoder as used by Idefics3 / SmolVLM (transformers: models/llama/modeling_llama.py):
//   embed_tokens -> L x [ x += o_proj(attn(rope(q), rope(k), v)) over rms_norm(x);
//                         x += down_proj(silu(gate_proj(h)) * up_proj(h)), h = rms_norm(x) ] -> norm -> lm_head
// Grouped-query attention (n_kv_heads <= n_heads), rotate-half RoPE, RMSNorm, tied or separate output head.
#pragma once

#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "graph/backend.h"
#include "graph/graph.h"
#include "models/kv_cache.h"
#include "models/weights.h"

namespace ev {

struct LlamaWeights {
  Tensor embed;  // [V, H] on-disk dtype
  struct Layer {
    Tensor attn_norm, q_w, k_w, v_w, o_w, q_b, k_b, v_b, o_b, ffn_norm, gate_w, up_w, down_w;
    // The same weights concatenated along the output dimension, made once at load (see "Fused projections"):
    // qkv_w [Hq*D + 2*Hkv*D, H] = [q_w; k_w; v_w] (qkv_b likewise when there are biases), gate_up_w [2F, H] =
    // [gate_w; up_w]. Undefined when the group cannot be fused.
    Tensor qkv_w, qkv_b, gate_up_w;
  };
  std::vector<Layer> layers;
  Tensor norm;     // [H]
  Tensor lm_head;  // [V, H] (== embed when tied)
};

struct TextStep {
  TensorId logits = -1;        // [n_logits, V]
  TensorId hidden_last = -1;   // final-normed hidden states of the rows that produce logits
};

// Fused projections. A decode step (one token) is a chain of small GEMVs: 7 per layer, 0.2-1.8 MB of weights
// each, where every call pays a thread hand-off and the DRAM stream's ramp-up. q/k/v read the same input, and so do
// gate/up, so each group runs as ONE Linear over the row-concatenated weights: 4 GEMVs per layer instead of 7. The
// result is exactly that of the separate Linears (every output is the same dot product over the same K, in the
// same order; per-output-channel int8 scales concatenate with their rows). The fused output is split without
// extra passes: q/k/v by kCols views (a copy only when T > 1), gate/up by the one-input form of kSwiGLU.
// A group is fused when its weights share dtype and quantisation (float, or int8 with the same smoothing factors)
// and, under a per-Linear precision plan (LinearPlan, keyed by weight name), when the plan treats its members
// alike; select_fused() decides, the unfused graph is kept for everything else.
class LlamaTextModel {
 public:
  // `w` resolves names relative to the text model ("embed_tokens.weight", "layers.0...."); `head` resolves
  // "lm_head.weight" (absent when tied).
  static Result<LlamaTextModel> load(const WeightLoader& w, const WeightLoader& head, const TextConfig& cfg,
                                     bool tie_word_embeddings);

  // Token embeddings [T, H] for ids [T] (i32).
  TensorId embed(Graph& g, TensorId ids) const;
  // Runs T new tokens whose embeddings are `x` [T, H] at positions cache.size() .. +T, appending K/V to `cache`
  // (capacity must suffice; the caller advances cache.size() after the run). Produces logits for the last
  // `n_logits` rows (1 for generation). `hidden_dump` names every layer output ("t.blk.N.out").
  // positions >= 0 (an i32 leaf): the static decode step (VlmModel::build_decode_step): T = 1 and positions [1];
  // or T sequences of one token each (VlmModel::build_decode_batch): positions [T], rows [T] their cache rows
  // (sequence b's slot starts at b * seq_capacity).
  TextStep build(Graph& g, TensorId x, int64_t T, const KvCache& cache, int64_t n_logits = 1,
                 TensorId positions = -1, TensorId rows = -1, int64_t seq_capacity = 0) const;

  const TextConfig& config() const { return cfg_; }
  int head_dim() const { return head_dim_; }
  int64_t kv_dim() const { return static_cast<int64_t>(cfg_.num_key_value_heads) * head_dim_; }
  KvCache make_cache(int64_t capacity) const { return KvCache(cfg_.num_hidden_layers, capacity, kv_dim()); }
  const LlamaWeights& weights() const { return w_; }

  // Which groups build() fuses. on = false: none (the graph names the checkpoint's own Linears, which is what a
  // precision plan is written against). on = true: every group that has fused weights and that `plan` (nullptr:
  // none) treats alike: none of its weights named, or all named with one precision and no smoothing factors (or
  // the same ones); the fused weights' names are then added to *plan with that precision. Returns the number of
  // fused groups. Not thread-safe against a concurrent build().
  int select_fused(bool on, LinearPlan* plan = nullptr);
  int fused_groups() const;

 private:
  TextConfig cfg_;
  int head_dim_ = 0;
  LlamaWeights w_;
  // Per layer: build() uses qkv_w / gate_up_w.
  std::vector<uint8_t> use_qkv_, use_gate_up_;
};

}  // namespace ev
