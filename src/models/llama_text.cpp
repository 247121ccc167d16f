#include "models/llama_text.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>

namespace ev {

namespace {

// "…self_attn.q_proj.weight" -> "…self_attn.qkv_proj.weight": the fused weight's name (what logs, a precision plan
// and packed_describe() see), following the HF naming of fused projections (Phi-3's qkv_proj and gate_up_proj).
std::string fused_name(const std::string& first, const char* from, const char* to) {
  const size_t at = first.rfind(from);
  if (at == std::string::npos) return first + "." + to;
  return first.substr(0, at) + to + first.substr(at + std::string(from).size());
}

bool same_smooth(const Tensor& a, const Tensor& b) {
  if (!a.data() || !b.data()) return !a.data() && !b.data();
  if (a.data() == b.data()) return a.numel() == b.numel();
  return a.numel() == b.numel() && a.dtype() == DType::kF32 && b.dtype() == DType::kF32 &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Row-concatenation [parts[0]; parts[1]; ...] of tensors with equal dtype, row length and quantisation (none, or
// int8 per-output-channel scales with the same smoothing factors: the scales concatenate with their rows). An
// undefined Tensor when they cannot be fused (a part missing, different dtypes, different quantisation).
Tensor concat_rows(const std::vector<const Tensor*>& parts, const std::string& name) {
  const Tensor& a = *parts[0];
  int64_t rows = 0;
  for (const Tensor* p : parts) {
    if (!p->data() || p->dtype() != a.dtype() || p->ndim() != a.ndim() || (p->ndim() != 1 && p->ndim() != 2) ||
        p->shape().cols() != a.shape().cols() || static_cast<bool>(p->quant()) != static_cast<bool>(a.quant()))
      return Tensor();
    if (p->quant()) {
      const QuantParams& q = *p->quant();
      if (p->ndim() != 2 || q.scale.dtype() != DType::kF32 || q.scale.numel() != p->dim(0) ||
          !same_smooth(q.smooth, a.quant()->smooth))
        return Tensor();
    } else if (p->dtype() == DType::kI8) {
      return Tensor();  // an int8 matrix needs its scales
    }
    rows += a.ndim() == 1 ? p->numel() : p->dim(0);
  }
  const Shape shape = a.ndim() == 1 ? Shape{rows} : Shape{rows, a.dim(1)};
  Tensor out = Tensor::empty(a.dtype(), shape);
  char* dst = static_cast<char*>(out.data());
  for (const Tensor* p : parts) {
    std::memcpy(dst, p->data(), p->nbytes());
    dst += p->nbytes();
  }
  if (a.quant()) {
    auto q = std::make_shared<QuantParams>();
    q->scale = Tensor::empty(DType::kF32, Shape{rows});
    float* sc = q->scale.data_as<float>();
    for (const Tensor* p : parts) {
      std::memcpy(sc, p->quant()->scale.data(), p->quant()->scale.nbytes());
      sc += p->quant()->scale.numel();
    }
    q->smooth = a.quant()->smooth;
    out.set_quant(std::move(q));
  }
  out.set_name(name);
  return out;
}

// Whether a precision plan treats the weights `ws` alike (so that their fused weight computes exactly what they
// do); on success *named says whether the plan names them, and *prec / *smooth give its entry.
bool plan_agrees(const LinearPlan& plan, const std::vector<const Tensor*>& ws, bool* named, Precision* prec,
                 std::shared_ptr<const std::vector<float>>* smooth) {
  int n_named = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    auto it = plan.precision.find(ws[i]->name());
    auto sm = plan.smooth.find(ws[i]->name());
    const std::shared_ptr<const std::vector<float>> s = sm == plan.smooth.end() ? nullptr : sm->second;
    if (it != plan.precision.end()) ++n_named;
    if (i == 0) {
      *prec = it != plan.precision.end() ? it->second : Precision::kF32;
      *smooth = s;
      continue;
    }
    if (it != plan.precision.end() && it->second != *prec) return false;
    const bool same = (!s && !*smooth) || (s && *smooth && (s == *smooth || *s == **smooth));
    if (!same) return false;
  }
  *named = n_named > 0;
  return n_named == 0 || n_named == static_cast<int>(ws.size());
}

}  // namespace

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
    L.qkv_w = concat_rows({&L.q_w, &L.k_w, &L.v_w}, fused_name(L.q_w.name(), "q_proj", "qkv_proj"));
    if (cfg.attention_bias && L.qkv_w.data()) {
      L.qkv_b = concat_rows({&L.q_b, &L.k_b, &L.v_b}, fused_name(L.q_b.name(), "q_proj", "qkv_proj"));
      if (!L.qkv_b.data()) L.qkv_w = Tensor();
    }
    L.gate_up_w = concat_rows({&L.gate_w, &L.up_w}, fused_name(L.gate_w.name(), "gate_proj", "gate_up_proj"));
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
  m.select_fused(true, nullptr);
  return m;
}

int LlamaTextModel::select_fused(bool on, LinearPlan* plan) {
  const size_t nl = w_.layers.size();
  use_qkv_.assign(nl, 0);
  use_gate_up_.assign(nl, 0);
  if (!on) return 0;
  int n = 0;
  // Fuse `ws` into `fused` if the plan allows it; adds the fused weight's plan entry.
  auto decide = [&](const Tensor& fused, const std::vector<const Tensor*>& ws) -> bool {
    if (!fused.data()) return false;
    if (plan == nullptr || fused.dtype() == DType::kI8) return true;  // int8 weights compute in int8 whatever the plan
    bool named = false;
    Precision prec = Precision::kF32;
    std::shared_ptr<const std::vector<float>> smooth;
    if (!plan_agrees(*plan, ws, &named, &prec, &smooth)) return false;
    if (named) {
      plan->precision[fused.name()] = prec;
      if (smooth) plan->smooth[fused.name()] = smooth;
    }
    return true;
  };
  for (size_t l = 0; l < nl; ++l) {
    const auto& L = w_.layers[l];
    use_qkv_[l] = decide(L.qkv_w, {&L.q_w, &L.k_w, &L.v_w}) ? 1 : 0;
    use_gate_up_[l] = decide(L.gate_up_w, {&L.gate_w, &L.up_w}) ? 1 : 0;
    n += use_qkv_[l] + use_gate_up_[l];
  }
  return n;
}

int LlamaTextModel::fused_groups() const {
  int n = 0;
  for (size_t l = 0; l < use_qkv_.size(); ++l) n += use_qkv_[l] + use_gate_up_[l];
  return n;
}

TensorId LlamaTextModel::embed(Graph& g, TensorId ids) const {
  return g.get_rows("t.embd", g.weight("t.embed", w_.embed), ids);
}

TextStep LlamaTextModel::build(Graph& g, TensorId x, int64_t T, const KvCache& cache, int64_t n_logits,
                               TensorId positions, TensorId rows, int64_t seq_capacity) const {
  const bool stat = positions >= 0;
  // Static decode: T sequences of one token (T = 1 without `rows`: the cache is that one sequence's).
  const int64_t seq_cap = stat && rows >= 0 ? seq_capacity : cache.capacity();
  if (stat && ((T != 1 && rows < 0) || seq_cap <= 0 || cache.capacity() < T * seq_cap)) {
    g.rope("t.static_decode", x, 0, 0, 1.f, 0);  // records a shape error
    return {};
  }
  const int64_t Bq = stat ? T : 1, Tq = stat ? 1 : T;  // attention batch and queries per batch element
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
    const int64_t qd = static_cast<int64_t>(Hq) * D;
    TensorId q, k, v;
    if (use_qkv_[static_cast<size_t>(l)]) {
      TensorId qkv = g.linear(nm("qkv"), h, wt("qkv_w", L.qkv_w), opt_b("qkv_b", L.qkv_b));  // [T, Hq*D + 2*Hkv*D]
      q = g.cols(nm("q"), qkv, 0, qd);  // views when T = 1
      k = g.cols(nm("k"), qkv, qd, qd + kvd);
      v = g.cols(nm("v"), qkv, qd + kvd, qd + 2 * kvd);
    } else {
      q = g.linear(nm("q"), h, wt("q_w", L.q_w), opt_b("q_b", L.q_b));                   // [T, Hq*D]
      k = g.linear(nm("k"), h, wt("k_w", L.k_w), opt_b("k_b", L.k_b));                   // [T, Hkv*D]
      v = g.linear(nm("v"), h, wt("v_w", L.v_w), opt_b("v_b", L.v_b));
    }
    q = g.reshape(nm("q3"), q, Shape{Bq, Tq, static_cast<int64_t>(Hq) * D});
    k = g.reshape(nm("k3"), k, Shape{Bq, Tq, kvd});
    v = g.reshape(nm("v3"), v, Shape{Bq, Tq, kvd});
    TensorId a;
    if (stat) {
      // The row at the position (a tensor) is written in place; attention reads the whole capacity, masked by it.
      q = g.rope(nm("q_rope"), q, Hq, D, theta, 0, positions);
      k = g.rope(nm("k_rope"), k, Hkv, D, theta, 0, positions);
      const Tensor kl = cache.k_layer(l).slice_rows(0, T * seq_cap);
      const Tensor vl = cache.v_layer(l).slice_rows(0, T * seq_cap);
      const TensorId idx = rows >= 0 ? rows : positions;
      TensorId kw = g.scatter_rows_into(nm("k_cache"), g.input(nm("k_all"), kl), g.reshape(nm("k2"), k, Shape{T, kvd}),
                                        idx, kl);
      TensorId vw = g.scatter_rows_into(nm("v_cache"), g.input(nm("v_all"), vl), g.reshape(nm("v2"), v, Shape{T, kvd}),
                                        idx, vl);
      a = g.attention(nm("attn"), q, g.reshape(nm("k_full"), kw, Shape{Bq, seq_cap, kvd}),
                      g.reshape(nm("v_full"), vw, Shape{Bq, seq_cap, kvd}), Hq, Hkv, D, scale, /*causal=*/true, 0,
                      positions);
    } else {
      q = g.rope(nm("q_rope"), q, Hq, D, theta, pos0);
      k = g.rope(nm("k_rope"), k, Hkv, D, theta, pos0);
      g.copy_into(nm("k_cache"), k, cache.k(l, pos0, pos0 + T));
      g.copy_into(nm("v_cache"), v, cache.v(l, pos0, pos0 + T));
      // Keys/values 0 .. pos0+T-1, read after the copies above (graph order is execution order).
      Tensor kall = cache.k(l, 0, pos0 + T), vall = cache.v(l, 0, pos0 + T);
      TensorId kc = g.input(nm("k_all"), kall.reshape(Shape{1, pos0 + T, kvd}).value());
      TensorId vc = g.input(nm("v_all"), vall.reshape(Shape{1, pos0 + T, kvd}).value());
      a = g.attention(nm("attn"), q, kc, vc, Hq, Hkv, D, scale, /*causal=*/true, pos0);  // [1, T, Hq*D]
    }
    a = g.reshape(nm("attn2"), a, Shape{T, static_cast<int64_t>(Hq) * D});
    a = g.linear(nm("attn_out"), a, wt("o_w", L.o_w), opt_b("o_b", L.o_b));               // [T, H]
    x = g.add(nm("attn_res"), x, a);
    h = g.rms_norm(nm("ffn_norm"), x, wt("ffn_norm_w", L.ffn_norm), eps);
    if (use_gate_up_[static_cast<size_t>(l)]) {
      h = g.swiglu(nm("swiglu"), g.linear(nm("gate_up"), h, wt("gate_up_w", L.gate_up_w)));  // [T, 2F] -> [T, F]
    } else {
      TensorId gate = g.linear(nm("gate"), h, wt("gate_w", L.gate_w));                    // [T, F]
      TensorId up = g.linear(nm("up"), h, wt("up_w", L.up_w));
      h = g.swiglu(nm("swiglu"), gate, up);
    }
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
