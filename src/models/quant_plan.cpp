#include "models/quant_plan.h"

#include <cstdlib>
#include <memory>

namespace ev {

const char* linear_role_name(LinearRole r) {
  switch (r) {
    case LinearRole::kVisionAttention: return "vision_attention";
    case LinearRole::kVisionMlp: return "vision_mlp";
    case LinearRole::kTextAttention: return "text_attention";
    case LinearRole::kTextMlp: return "text_mlp";
    case LinearRole::kPatchEmbedding: return "patch_embedding";
    case LinearRole::kProjector: return "projector";
    case LinearRole::kOutputHead: return "output_head";
    case LinearRole::kTemporal: return "temporal";
    case LinearRole::kFastHead: return "fast_head";
    case LinearRole::kOther: return "other";
  }
  return "other";
}

bool is_bulk_role(LinearRole r) {
  return r == LinearRole::kVisionAttention || r == LinearRole::kVisionMlp || r == LinearRole::kTextAttention ||
         r == LinearRole::kTextMlp;
}

const char* quant_mode_name(QuantMode m) {
  switch (m) {
    case QuantMode::kNone: return "none";
    case QuantMode::kInt8: return "int8";
    case QuantMode::kMixed: return "mixed";
  }
  return "none";
}

namespace {

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

// The number after `marker` in s ("...layers.12.mlp" -> 12), -1 when absent.
int layer_after(const std::string& s, const char* marker) {
  const size_t p = s.find(marker);
  if (p == std::string::npos) return -1;
  const char* b = s.c_str() + p + std::char_traits<char>::length(marker);
  char* e = nullptr;
  const long v = std::strtol(b, &e, 10);
  return e == b ? -1 : static_cast<int>(v);
}

}  // namespace

LinearRole classify_linear(const std::string& weight, const std::string& node, int* layer) {
  *layer = -1;
  if (node == "t.logits" || contains(weight, "lm_head")) return LinearRole::kOutputHead;
  if (contains(weight, "vision_model")) {
    if (contains(weight, "patch_embedding")) return LinearRole::kPatchEmbedding;
    *layer = layer_after(weight, "layers.");
    if (contains(weight, ".self_attn.")) return LinearRole::kVisionAttention;
    if (contains(weight, ".mlp.")) return LinearRole::kVisionMlp;
    return LinearRole::kOther;
  }
  if (contains(weight, "connector") || contains(weight, "modality_projection")) return LinearRole::kProjector;
  if (contains(weight, "text_model") || contains(weight, "language_model")) {
    *layer = layer_after(weight, "layers.");
    if (contains(weight, ".self_attn.")) return LinearRole::kTextAttention;
    if (contains(weight, ".mlp.")) return LinearRole::kTextMlp;
    return LinearRole::kOther;
  }
  if (weight.rfind("temporal.", 0) == 0) return LinearRole::kTemporal;
  if (weight.rfind("fast_head", 0) == 0) return LinearRole::kFastHead;
  return LinearRole::kOther;
}

Result<LinearPlan> plan_for_mode(QuantMode mode, const std::vector<LinearInfo>& linears,
                                 const nlohmann::json& config_raw, std::string* source) {
  LinearPlan plan;
  if (mode == QuantMode::kNone) {
    *source = "none";
    return plan;
  }
  if (mode == QuantMode::kMixed && config_raw.is_object() && config_raw.contains("edgevlm") &&
      config_raw["edgevlm"].is_object() && config_raw["edgevlm"].contains("quantization")) {
    *source = "config.json edgevlm.quantization.plan";
    return parse_plan_json(config_raw["edgevlm"]["quantization"], linears, "config.json edgevlm.quantization");
  }
  for (const LinearInfo& l : linears)
    if (is_bulk_role(l.role) || (mode == QuantMode::kInt8 && l.role == LinearRole::kOutputHead))
      plan.precision[l.weight] = Precision::kInt8;
  *source = mode == QuantMode::kInt8 ? "int8: attention, feed-forward and output head in int8"
                                     : "default mixed: attention and feed-forward in int8";
  return plan;
}

Result<LinearPlan> parse_plan_json(const nlohmann::json& j, const std::vector<LinearInfo>& linears,
                                   const std::string& where) {
  if (!j.is_object()) return InvalidArgument(where + ": a plan must be a JSON object");
  const nlohmann::json* entries = &j;
  const nlohmann::json* smooth = nullptr;
  if (j.contains("plan")) {
    if (!j["plan"].is_object()) return InvalidArgument(where + ": \"plan\" must be an object {module: precision}");
    entries = &j["plan"];
    if (j.contains("smooth")) {
      if (!j["smooth"].is_object()) return InvalidArgument(where + ": \"smooth\" must be an object {module: [factors]}");
      smooth = &j["smooth"];
    }
  }
  auto find = [&](const std::string& key) -> const LinearInfo* {
    for (const LinearInfo& l : linears)
      if (l.module == key || l.weight == key) return &l;
    return nullptr;
  };
  LinearPlan plan;
  for (auto it = entries->begin(); it != entries->end(); ++it) {
    const LinearInfo* l = find(it.key());
    if (l == nullptr) return InvalidArgument(where + ": \"" + it.key() + "\" is not a Linear layer of this model");
    Precision p;
    if (!it.value().is_string() || !precision_from_string(it.value().get<std::string>(), &p))
      return InvalidArgument(where + ": \"" + it.key() + "\": " + it.value().dump() +
                             " is not a precision (int8, bf16 or f32)");
    if (l->dtype == DType::kI8 && p != Precision::kInt8)
      return InvalidArgument(where + ": \"" + it.key() + "\" is stored in int8 and cannot compute in " +
                             precision_name(p));
    plan.precision[l->weight] = p;
  }
  if (smooth != nullptr)
    for (auto it = smooth->begin(); it != smooth->end(); ++it) {
      const LinearInfo* l = find(it.key());
      if (l == nullptr) return InvalidArgument(where + ": smooth: \"" + it.key() + "\" is not a Linear layer of this model");
      if (!it.value().is_array() || static_cast<int64_t>(it.value().size()) != l->k)
        return InvalidArgument(where + ": smooth: \"" + it.key() + "\" needs " + std::to_string(l->k) + " factors");
      auto v = std::make_shared<std::vector<float>>();
      for (const auto& x : it.value()) {
        if (!x.is_number() || !(x.get<double>() > 0.0))
          return InvalidArgument(where + ": smooth: \"" + it.key() + "\": factors must be positive numbers");
        v->push_back(x.get<float>());
      }
      plan.smooth[l->weight] = std::move(v);
    }
  return plan;
}

nlohmann::json plan_to_json(const LinearPlan& plan, const std::vector<LinearInfo>& linears, Precision fallback) {
  nlohmann::json j = nlohmann::json::object();
  for (const LinearInfo& l : linears) {
    auto it = plan.precision.find(l.weight);
    const Precision p = l.dtype == DType::kI8 ? Precision::kInt8 : it != plan.precision.end() ? it->second : fallback;
    j[l.module] = precision_name(p);
  }
  return j;
}

PlanSummary summarize_plan(const LinearPlan& plan, const std::vector<LinearInfo>& linears) {
  PlanSummary s;
  for (const LinearInfo& l : linears) {
    ++s.linears;
    s.params += l.n * l.k;
    auto it = plan.precision.find(l.weight);
    if (l.dtype == DType::kI8 || (it != plan.precision.end() && it->second == Precision::kInt8)) {
      ++s.int8_linears;
      s.int8_params += l.n * l.k;
    }
  }
  return s;
}

}  // namespace ev
