// Llama decoder as used by Idefics3 / SmolVLM (transformers: models/llama/modeling_llama.py):
//   embed_tokens -> L x [ x += o_proj(attn(rope(q), rope(k), v)) over rms_norm(x);
//                         x += down_proj(silu(gate_proj(h)) * up_proj(h)), h = rms_norm(x) ] -> norm -> lm_head
// Grouped-query attention (n_kv_heads <= n_heads), rotate-half RoPE, RMSNorm, tied or separate output head.
#pragma once

#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "graph/graph.h"
#include "models/kv_cache.h"
#include "models/weights.h"

namespace ev {

struct LlamaWeights {
  Tensor embed;  // [V, H] on-disk dtype
  struct Layer {
    Tensor attn_norm, q_w, k_w, v_w, o_w, q_b, k_b, v_b, o_b, ffn_norm, gate_w, up_w, down_w;
  };
  std::vector<Layer> layers;
  Tensor norm;     // [H]
  Tensor lm_head;  // [V, H] (== embed when tied)
};

struct TextStep {
  TensorId logits = -1;        // [n_logits, V]
  TensorId hidden_last = -1;   // final-normed hidden states of the rows that produce logits
};

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
  TextStep build(Graph& g, TensorId x, int64_t T, const KvCache& cache, int64_t n_logits = 1) const;

  const TextConfig& config() const { return cfg_; }
  int head_dim() const { return head_dim_; }
  int64_t kv_dim() const { return static_cast<int64_t>(cfg_.num_key_value_heads) * head_dim_; }
  KvCache make_cache(int64_t capacity) const { return KvCache(cfg_.num_hidden_layers, capacity, kv_dim()); }
  const LlamaWeights& weights() const { return w_; }

 private:
  TextConfig cfg_;
  int head_dim_ = 0;
  LlamaWeights w_;
};

}  // namespace ev
