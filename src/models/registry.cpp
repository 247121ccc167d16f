#include <cstring>

#include "models/vlm.h"

namespace ev {

namespace {
struct Entry {
  const char* model_type;
  VlmFactory factory;
};
// model_type (config.json) -> factory. SmolVLM is Idefics3 with another processor; the network is the same.
constexpr Entry kRegistry[] = {
    {"idefics3", &create_idefics3},
    {"smolvlm", &create_idefics3},
};
}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& e : kRegistry) out.emplace_back(e.model_type);
  return out;
}

Result<std::unique_ptr<VlmModel>> create_vlm(const VlmConfig& cfg, const TensorStore& weights) {
  for (const auto& e : kRegistry)
    if (cfg.model_type == e.model_type) return e.factory(cfg, weights);
  std::string known;
  for (const auto& e : kRegistry) known += std::string(known.empty() ? "" : ", ") + e.model_type;
  return Unsupported("model_type '" + cfg.model_type + "' is not supported (supported: " + known + ")");
}

}  // namespace ev
