#include "models/temporal_adapter.h"

#include <cmath>

#include "models/weights.h"

namespace ev {

Result<std::optional<TemporalAdapterConfig>> parse_temporal_adapter_config(const nlohmann::json& config,
                                                                          const std::string& path) {
  if (!config.is_object() || !config.contains("edgevlm")) return std::optional<TemporalAdapterConfig>();
  const nlohmann::json& e = config["edgevlm"];
  if (!e.is_object() || !e.contains("temporal_adapter")) return std::optional<TemporalAdapterConfig>();
  const nlohmann::json& t = e["temporal_adapter"];
  const std::string where = path + ": edgevlm.temporal_adapter";
  if (!t.is_object()) return InvalidArgument(where + " must be an object");
  TemporalAdapterConfig c;
  if (!t.contains("heads") || !t["heads"].is_number_integer() || t["heads"].get<int64_t>() < 1 ||
      t["heads"].get<int64_t>() > 1024)
    return InvalidArgument(where + ".heads must be an integer in [1, 1024]");
  c.heads = t["heads"].get<int>();
  if (t.contains("eps")) {
    if (!t["eps"].is_number() || !(t["eps"].get<double>() > 0)) return InvalidArgument(where + ".eps must be > 0");
    c.eps = static_cast<float>(t["eps"].get<double>());
  }
  if (t.contains("memory") && t["memory"] != "previous_keyframe_image_embeddings")
    return Unsupported(where + ".memory '" + t["memory"].dump() + "' (supported: previous_keyframe_image_embeddings)");
  return std::optional<TemporalAdapterConfig>(c);
}

Result<TemporalAdapter> TemporalAdapter::load(const TensorStore& weights, const TemporalAdapterConfig& cfg,
                                              int64_t hidden) {
  if (hidden % cfg.heads != 0)
    return InvalidArgument("temporal adapter: hidden size " + std::to_string(hidden) + " is not divisible by " +
                           std::to_string(cfg.heads) + " heads");
  TemporalAdapter a;
  a.cfg_ = cfg;
  a.hidden_ = hidden;
  WeightLoader w(weights, {"temporal."});
  EV_ASSIGN_OR_RETURN(a.nx_w_, w.small_f32("norm_x.weight", Shape{hidden}));
  EV_ASSIGN_OR_RETURN(a.nx_b_, w.small_f32("norm_x.bias", Shape{hidden}));
  EV_ASSIGN_OR_RETURN(a.nm_w_, w.small_f32("norm_m.weight", Shape{hidden}));
  EV_ASSIGN_OR_RETURN(a.nm_b_, w.small_f32("norm_m.bias", Shape{hidden}));
  EV_ASSIGN_OR_RETURN(a.q_, w.matrix("q.weight", Shape{hidden, hidden}));
  EV_ASSIGN_OR_RETURN(a.k_, w.matrix("k.weight", Shape{hidden, hidden}));
  EV_ASSIGN_OR_RETURN(a.v_, w.matrix("v.weight", Shape{hidden, hidden}));
  EV_ASSIGN_OR_RETURN(a.o_, w.matrix("o.weight", Shape{hidden, hidden}));
  EV_ASSIGN_OR_RETURN(Tensor g, w.small_f32("gate", Shape{1}));
  a.gate_ = std::tanh(g.data_as<float>()[0]);
  a.gate_t_ = Tensor::empty(DType::kF32, Shape{1});
  a.gate_t_.data_as<float>()[0] = a.gate_;
  return a;
}

TensorId TemporalAdapter::build(Graph& g, TensorId x, TensorId memory) const {
  const int D = static_cast<int>(hidden_ / cfg_.heads);
  TensorId hx = g.layer_norm("ta.norm_x", x, g.weight("ta.norm_x_w", nx_w_), g.weight("ta.norm_x_b", nx_b_), cfg_.eps);
  TensorId hm = g.layer_norm("ta.norm_m", memory, g.weight("ta.norm_m_w", nm_w_), g.weight("ta.norm_m_b", nm_b_),
                             cfg_.eps);
  TensorId q = g.linear("ta.q", hx, g.weight("ta.q_w", q_));  // [B, T, H]
  TensorId k = g.linear("ta.k", hm, g.weight("ta.k_w", k_));  // [B, T', H]
  TensorId v = g.linear("ta.v", hm, g.weight("ta.v_w", v_));
  TensorId a = g.attention("ta.attn", q, k, v, cfg_.heads, cfg_.heads, D, 1.0f / std::sqrt(static_cast<float>(D)),
                           /*causal=*/false, 0);
  TensorId o = g.linear("ta.o", a, g.weight("ta.o_w", o_));
  TensorId scaled = g.mul("ta.gated", o, g.weight("ta.gate", gate_t_));
  return g.add("ta.out", x, scaled);
}

}  // namespace ev
