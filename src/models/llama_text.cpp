#include "models/llama_text.h"

#include <cmath>
#include <string>

namespace ev {

Result<LlamaTextModel> LlamaTextModel::load(const WeightLoader& w, const WeightLoader& head, const TextConfig& cfg,
                                            bool tie_word_embeddings) {
  LlamaTextModel m;
  m.cfg_ = cfg;
  m.head_dim_ = cfg.head_dim > 0 ? cfg.head_dim : cfg.hidden_size / cfg.num_attention_heads;
  const int64_t H = cfg.hidden_size, V = cfg.vocab_size, F = cfg.intermediate_size;
  const int64_t qd = static_cast<int64_t>(cfg.num_attention_heads) * m.head_dim_;
  const int64_t kvd = static_cast<int64_t>(cfg.num_key_value_heads) * m.head_dim_;
  auto& W = m.w_;
  EV_ASSIGN_OR_RETURN(W.embed, w.matrix("embed_tokens.weight", Shape{V, H}));
  W.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    auto& L = W.layers[static_cast<size_t>(l)];
    const std::string p = "layers." + std::to_string(l) + ".";
    EV_ASSIGN_OR_RETURN(L.attn_norm, w.small_f32(p + "input_layernorm.weight", Shape{H}));
    EV_ASSIGN_OR_RETURN(L.q_w, w.matrix(p + "self_attn.q_proj.weight", Shape{qd, H}));
    EV_ASSIGN_OR_RETURN(L.k_w, w.matrix(p + "self_attn.k_proj.weight", Shape{kvd, H}));
    EV_ASSIGN_OR_RETURN(L.v_w, w.matrix(p + "self_attn.v_proj.weight", Shape{kvd, H}));
    EV_ASSIGN_OR_RETURN(L.o_w, w.matrix(p + "self_attn.o_proj.weight", Shape{H, qd}));
    if (cfg.attention_bias) {
      EV_ASSIGN_OR_RETURN(L.q_b, w.small_f32(p + "self_attn.q_proj.bias", Shape{qd}));
      EV_ASSIGN_OR_RETURN(L.k_b, w.small_f32(p + "self_attn.k_proj.bias", Shape{kvd}));
      EV_ASSIGN_OR_RETURN(L.v_b, w.small_f32(p + "self_attn.v_proj.bias", Shape{kvd}));
      EV_ASSIGN_OR_RETURN(L.o_b, w.small_f32(p + "self_attn.o_proj.bias", Shape{H}));
    }
    if (cfg.mlp_bias) return Unsupported("text_config.mlp_bias = true is not supported yet");
    EV_ASSIGN_OR_RETURN(L.ffn_norm, w.small_f32(p + "post_attention_layernorm.weight", Shape{H}));
    EV_ASSIGN_OR_RETURN(L.gate_w, w.matrix(p + "mlp.gate_proj.weight", Shape{F, H}));
    EV_ASSIGN_OR_RETURN(L.up_w, w.matrix(p + "mlp.up_proj.weight", Shape{F, H}));
    EV_ASSIGN_OR_RETURN(L.down_w, w.matrix(p + "mlp.down_proj.weight", Shape{H, F}));
  }
  EV_ASSIGN_OR_RETURN(W.norm, w.small_f32("norm.weight", Shape{H}));
  if (head.has("lm_head.weight")) {
    EV_ASSIGN_OR_RETURN(W.lm_head, head.matrix("lm_head.weight", Shape{V, H}));
  } else if (tie_word_embeddings) {
    W.lm_head = W.embed;
  } else {
    return NotFound("tensor '" + head.resolve("lm_head.weight") +
                    "' is missing and the config does not tie the output head to the embeddings");
  }
  return m;
}

TensorId LlamaTextModel::embed(Graph& g, TensorId ids) const {
  return g.get_rows("t.embd", g.weight("t.embed", w_.embed), ids);
}

TextStep LlamaTextModel::build(Graph& g, TensorId x, int64_t T, const KvCache& cache, int64_t n_logits) const {
  const int Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = head_dim_;
  const int64_t H = cfg_.hidden_size;
  const int64_t pos0 = cache.size();
  const float eps = cfg_.rms_norm_eps;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float theta = cfg_.rope_theta;
  const int64_t kvd = kv_dim();

  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    const auto& L = w_.layers[static_cast<size_t>(l)];
    auto nm = [&](const char* what) { return layer_name("t.blk", l, what); };
    auto wt = [&](const char* what, const Tensor& t) { return g.weight(nm(what), t); };
    auto opt_b = [&](const char* what, const Tensor& t) { return t.data() ? g.weight(nm(what), t) : TensorId{-1}; };
    TensorId h = g.rms_norm(nm("attn_norm"), x, wt("attn_norm_w", L.attn_norm), eps);    // [T, H]
    TensorId q = g.linear(nm("q"), h, wt("q_w", L.q_w), opt_b("q_b", L.q_b));            // [T, Hq*D]
    TensorId k = g.linear(nm("k"), h, wt("k_w", L.k_w), opt_b("k_b", L.k_b));            // [T, Hkv*D]
    TensorId v = g.linear(nm("v"), h, wt("v_w", L.v_w), opt_b("v_b", L.v_b));
    q = g.reshape(nm("q3"), q, Shape{1, T, static_cast<int64_t>(Hq) * D});
    k = g.reshape(nm("k3"), k, Shape{1, T, kvd});
    v = g.reshape(nm("v3"), v, Shape{1, T, kvd});
    q = g.rope(nm("q_rope"), q, Hq, D, theta, pos0);
    k = g.rope(nm("k_rope"), k, Hkv, D, theta, pos0);
    g.copy_into(nm("k_cache"), k, cache.k(l, pos0, pos0 + T));
    g.copy_into(nm("v_cache"), v, cache.v(l, pos0, pos0 + T));
    // Keys/values 0 .. pos0+T-1, read after the copies above (graph order is execution order).
    Tensor kall = cache.k(l, 0, pos0 + T), vall = cache.v(l, 0, pos0 + T);
    TensorId kc = g.input(nm("k_all"), kall.reshape(Shape{1, pos0 + T, kvd}).value());
    TensorId vc = g.input(nm("v_all"), vall.reshape(Shape{1, pos0 + T, kvd}).value());
    TensorId a = g.attention(nm("attn"), q, kc, vc, Hq, Hkv, D, scale, /*causal=*/true, pos0);  // [1, T, Hq*D]
    a = g.reshape(nm("attn2"), a, Shape{T, static_cast<int64_t>(Hq) * D});
    a = g.linear(nm("attn_out"), a, wt("o_w", L.o_w), opt_b("o_b", L.o_b));               // [T, H]
    x = g.add(nm("attn_res"), x, a);
    h = g.rms_norm(nm("ffn_norm"), x, wt("ffn_norm_w", L.ffn_norm), eps);
    TensorId gate = g.linear(nm("gate"), h, wt("gate_w", L.gate_w));                      // [T, F]
    TensorId up = g.linear(nm("up"), h, wt("up_w", L.up_w));
    h = g.swiglu(nm("swiglu"), gate, up);
    h = g.linear(nm("down"), h, wt("down_w", L.down_w));                                  // [T, H]
    x = g.add(nm("out"), x, h);
  }
  TextStep s;
  TensorId last = n_logits < T ? g.rows("t.last", x, T - n_logits, T) : x;
  s.hidden_last = g.rms_norm("t.norm", last, g.weight("t.norm_w", w_.norm), eps);       // [n_logits, H]
  s.logits = g.linear("t.logits", s.hidden_last, g.weight("t.lm_head", w_.lm_head));    // [n_logits, V]
  (void)H;
  return s;
}

}  // namespace ev
