#include "models/siglip_vision.h"

#include <cmath>
#include <string>

namespace ev {

Result<SiglipVisionTower> SiglipVisionTower::load(const WeightLoader& w, const VisionConfig& cfg) {
  SiglipVisionTower t;
  t.cfg_ = cfg;
  const int64_t E = cfg.hidden_size, F = cfg.intermediate_size, P = cfg.patch_size, C = cfg.num_channels;
  const int64_t N = t.num_patches();
  auto& W = t.w_;
  EV_ASSIGN_OR_RETURN(Tensor patch, w.matrix("embeddings.patch_embedding.weight", Shape{E, C, P, P}));
  EV_ASSIGN_OR_RETURN(W.patch_w, patch.reshape(Shape{E, C * P * P}));
  EV_ASSIGN_OR_RETURN(W.patch_b, w.small_f32("embeddings.patch_embedding.bias", Shape{E}));
  EV_ASSIGN_OR_RETURN(W.pos, w.small_f32("embeddings.position_embedding.weight", Shape{N, E}));
  W.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    auto& L = W.layers[static_cast<size_t>(l)];
    const std::string p = "encoder.layers." + std::to_string(l) + ".";
    EV_ASSIGN_OR_RETURN(L.ln1_w, w.small_f32(p + "layer_norm1.weight", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.ln1_b, w.small_f32(p + "layer_norm1.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.q_w, w.matrix(p + "self_attn.q_proj.weight", Shape{E, E}));
    EV_ASSIGN_OR_RETURN(L.q_b, w.small_f32(p + "self_attn.q_proj.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.k_w, w.matrix(p + "self_attn.k_proj.weight", Shape{E, E}));
    EV_ASSIGN_OR_RETURN(L.k_b, w.small_f32(p + "self_attn.k_proj.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.v_w, w.matrix(p + "self_attn.v_proj.weight", Shape{E, E}));
    EV_ASSIGN_OR_RETURN(L.v_b, w.small_f32(p + "self_attn.v_proj.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.o_w, w.matrix(p + "self_attn.out_proj.weight", Shape{E, E}));
    EV_ASSIGN_OR_RETURN(L.o_b, w.small_f32(p + "self_attn.out_proj.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.ln2_w, w.small_f32(p + "layer_norm2.weight", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.ln2_b, w.small_f32(p + "layer_norm2.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.fc1_w, w.matrix(p + "mlp.fc1.weight", Shape{F, E}));
    EV_ASSIGN_OR_RETURN(L.fc1_b, w.small_f32(p + "mlp.fc1.bias", Shape{F}));
    EV_ASSIGN_OR_RETURN(L.fc2_w, w.matrix(p + "mlp.fc2.weight", Shape{E, F}));
    EV_ASSIGN_OR_RETURN(L.fc2_b, w.small_f32(p + "mlp.fc2.bias", Shape{E}));
  }
  EV_ASSIGN_OR_RETURN(W.post_w, w.small_f32("post_layernorm.weight", Shape{E}));
  EV_ASSIGN_OR_RETURN(W.post_b, w.small_f32("post_layernorm.bias", Shape{E}));
  return t;
}

TensorId SiglipVisionTower::build(Graph& g, TensorId pixels, int n_layers) const {
  const int E = cfg_.hidden_size, H = cfg_.num_attention_heads, D = E / H;
  const float eps = cfg_.layer_norm_eps;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (n_layers < 0 || n_layers > cfg_.num_hidden_layers) n_layers = cfg_.num_hidden_layers;

  TensorId x = g.patchify("v.patches", pixels, cfg_.patch_size);                        // [B, N, 3*P*P]
  x = g.linear("v.patch_embd", x, g.weight("v.patch_w", w_.patch_w), g.weight("v.patch_b", w_.patch_b));  // [B, N, E]
  x = g.add("v.embd", x, g.weight("v.pos", w_.pos));                                      // [B, N, E]
  for (int l = 0; l < n_layers; ++l) {
    const auto& L = w_.layers[static_cast<size_t>(l)];
    auto nm = [&](const char* what) { return layer_name("v.blk", l, what); };
    auto wt = [&](const char* what, const Tensor& t) { return g.weight(nm(what), t); };
    TensorId h = g.layer_norm(nm("ln1"), x, wt("ln1_w", L.ln1_w), wt("ln1_b", L.ln1_b), eps);
    TensorId q = g.linear(nm("q"), h, wt("q_w", L.q_w), wt("q_b", L.q_b));  // [B, N, E]
    TensorId k = g.linear(nm("k"), h, wt("k_w", L.k_w), wt("k_b", L.k_b));
    TensorId v = g.linear(nm("v"), h, wt("v_w", L.v_w), wt("v_b", L.v_b));
    TensorId a = g.attention(nm("attn"), q, k, v, H, H, D, scale, /*causal=*/false, 0);  // [B, N, E]
    a = g.linear(nm("attn_out"), a, wt("o_w", L.o_w), wt("o_b", L.o_b));
    x = g.add(nm("attn_res"), x, a);
    h = g.layer_norm(nm("ln2"), x, wt("ln2_w", L.ln2_w), wt("ln2_b", L.ln2_b), eps);
    h = g.linear(nm("fc1"), h, wt("fc1_w", L.fc1_w), wt("fc1_b", L.fc1_b));  // [B, N, F]
    h = g.gelu_tanh(nm("gelu"), h);
    h = g.linear(nm("fc2"), h, wt("fc2_w", L.fc2_w), wt("fc2_b", L.fc2_b));  // [B, N, E]
    x = g.add(nm("out"), x, h);
  }
  return g.layer_norm("v.post_ln", x, g.weight("v.post_w", w_.post_w), g.weight("v.post_b", w_.post_b), eps);
}

}  // namespace ev
