#include "models/fast_head.h"

#include "models/weights.h"

namespace ev {

Result<std::optional<FastHeadConfig>> parse_fast_head_config(const nlohmann::json& config, const std::string& path) {
  if (!config.is_object() || !config.contains("edgevlm")) return std::optional<FastHeadConfig>();
  const nlohmann::json& e = config["edgevlm"];
  if (!e.is_object() || !e.contains("fast_head")) return std::optional<FastHeadConfig>();
  const nlohmann::json& f = e["fast_head"];
  const std::string where = path + ": edgevlm.fast_head";
  if (!f.is_object()) return InvalidArgument(where + " must be an object");
  FastHeadConfig c;
  if (!f.contains("classes") || !f["classes"].is_array() || f["classes"].empty())
    return InvalidArgument(where + ".classes must be a non-empty list of class names");
  for (const auto& n : f["classes"]) {
    if (!n.is_string()) return InvalidArgument(where + ".classes must hold strings");
    c.classes.push_back(n.get<std::string>());
  }
  if (c.classes.size() > 4096) return InvalidArgument(where + ".classes: too many classes");
  auto str = [&](const char* key, const std::string& dflt, std::string* out) -> Status {
    if (!f.contains(key)) {
      *out = dflt;
      return Status::Ok();
    }
    if (!f[key].is_string()) return InvalidArgument(where + "." + key + " must be a string");
    *out = f[key].get<std::string>();
    return Status::Ok();
  };
  std::string input, pooling, activation;
  EV_RETURN_IF_ERROR(str("input", "vision_last_hidden_state", &input));
  EV_RETURN_IF_ERROR(str("pooling", "mean", &pooling));
  EV_RETURN_IF_ERROR(str("activation", "sigmoid", &activation));
  EV_RETURN_IF_ERROR(str("weight", c.weight, &c.weight));
  EV_RETURN_IF_ERROR(str("bias", c.bias, &c.bias));
  if (input != "vision_last_hidden_state")
    return Unsupported(where + ".input '" + input + "' (supported: vision_last_hidden_state)");
  if (pooling != "mean") return Unsupported(where + ".pooling '" + pooling + "' (supported: mean)");
  if (activation != "sigmoid") return Unsupported(where + ".activation '" + activation + "' (supported: sigmoid)");
  if (f.contains("threshold")) {
    if (!f["threshold"].is_number()) return InvalidArgument(where + ".threshold must be a number");
    const double t = f["threshold"].get<double>();
    if (!(t > 0 && t < 1)) return InvalidArgument(where + ".threshold must be in (0, 1)");
    c.threshold = static_cast<float>(t);
  }
  return std::optional<FastHeadConfig>(std::move(c));
}

Result<FastHead> FastHead::load(const TensorStore& weights, const FastHeadConfig& cfg, int64_t vision_hidden) {
  FastHead h;
  h.cfg_ = cfg;
  const int64_t C = static_cast<int64_t>(cfg.classes.size());
  WeightLoader w(weights, {""});
  EV_ASSIGN_OR_RETURN(h.w_, w.matrix(cfg.weight, Shape{C, vision_hidden}));
  if (w.has(cfg.bias)) {
    EV_ASSIGN_OR_RETURN(h.b_, w.small_f32(cfg.bias, Shape{C}));
  }
  return h;
}

TensorId FastHead::build(Graph& g, TensorId vision_out) const {
  TensorId pooled = g.mean_rows("fast.pool", vision_out);                                      // [B, Hv]
  TensorId logits = g.linear("fast.logits", pooled, g.weight("fast.w", w_),
                             b_.data() ? g.weight("fast.b", b_) : TensorId{-1});               // [B, C]
  return g.sigmoid("fast.probs", logits);
}

}  // namespace ev
