// Mixed-precision plans: which Linear layers of a model compute in int8 and which stay in float.
//
// Every Linear of a model has a ROLE, found from its weight's Hugging Face name:
//   vision_attention  model.vision_model.encoder.layers.N.self_attn.{q,k,v,out}_proj
//   vision_mlp        model.vision_model.encoder.layers.N.mlp.fc{1,2}
//   text_attention    model.text_model.layers.N.self_attn.{q,k,v,o}_proj
//   text_mlp          model.text_model.layers.N.mlp.{gate,up,down}_proj
//   patch_embedding   the vision tower's patch embedding (a convolution run as a Linear)
//   projector         the connector's modality projection
//   output_head       lm_head (or the embeddings it is tied to)
//   temporal, fast_head, other
// The policy is INT8 for the bulk (the attention projections and feed-forward layers of both towers) and
// BF16/F32 for the projector, the norms, the softmax and whatever sensitivity analysis marks. The modes:
//   int8   every bulk Linear and the output head in int8 (the fastest plan);
//   mixed  the model's own plan (config.json "edgevlm.quantization.plan", written by `edgevlm quantize` after its
//          sensitivity analysis), else the bulk in int8 and everything else in float.
// Layers a plan leaves out compute in the engine's float precision (vision: the CPU's faster of f32/bf16, text:
// bf16). An int8 checkpoint (edgevlm-int8/1, below) is int8 wherever its weights are, whatever the mode.
//
// FILE FORMAT "edgevlm-int8/1" (what `edgevlm quantize` and train/quant.py write; a Hugging Face layout directory):
//   P.weight        I8  [N, K]   q, the quantised W'[n, k] = W[n, k] * smooth[k]
//   P.weight_scale  F32 [N]      per-output-channel scale: W'[n, k] ~ scale[n] * q[n, k]
//   P.input_smooth  F32 [K]      SmoothQuant factors (only when smoothing was used); activations are divided by them
//   every other tensor as in the source model (biases, norms, the layers kept in float)
//   config.json "edgevlm.quantization": {"format": "edgevlm-int8/1", "plan": {"<module>": "int8"|"bf16"|"f32"},
//                                        "method": "ptq"|"qat", ...}
// with <module> = P (the weight's name without ".weight"; "lm_head" for the output head).
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "graph/backend.h"

namespace ev {

enum class LinearRole : uint8_t {
  kVisionAttention = 0,
  kVisionMlp,
  kTextAttention,
  kTextMlp,
  kPatchEmbedding,
  kProjector,
  kOutputHead,
  kTemporal,
  kFastHead,
  kOther,
};
const char* linear_role_name(LinearRole r);
// The roles the int8 and mixed modes quantise by default.
bool is_bulk_role(LinearRole r);

// One Linear of a model, as its graphs use it.
struct LinearInfo {
  std::string node;    // graph node name ("v.blk.0.fc1")
  std::string weight;  // the weight tensor's full name (LinearPlan's key)
  std::string module;  // plan-file key: the weight name without ".weight"; "lm_head" for the output head
  LinearRole role = LinearRole::kOther;
  int layer = -1;      // encoder / decoder layer, -1 outside the layer stacks
  int64_t n = 0, k = 0;
  DType dtype = DType::kF32;  // on disk
};
// Role and layer of a weight from its name (and whether the graph node is the output head).
LinearRole classify_linear(const std::string& weight, const std::string& node, int* layer);

enum class QuantMode : uint8_t { kNone = 0, kInt8, kMixed };
const char* quant_mode_name(QuantMode m);

// The plan of `mode` for these Linears (`config_raw`: config.json, for the recorded plan). *source says where it
// came from ("config.json edgevlm.quantization.plan", "default mixed: bulk int8", ...).
Result<LinearPlan> plan_for_mode(QuantMode mode, const std::vector<LinearInfo>& linears,
                                 const nlohmann::json& config_raw, std::string* source);

// A plan from JSON: {"<module or weight name>": "int8" | "bf16" | "f32", ...}, or an object holding that under
// "plan" (a plan file, or config.json's "edgevlm.quantization"). Every key must name a Linear of the model and every
// value a precision; errors name `where` and the key. Optional "smooth": {"<module>": [K floats]}.
Result<LinearPlan> parse_plan_json(const nlohmann::json& j, const std::vector<LinearInfo>& linears,
                                   const std::string& where);
// {"<module>": "int8", ...} for every Linear (those the plan leaves out get `fallback`'s name).
nlohmann::json plan_to_json(const LinearPlan& plan, const std::vector<LinearInfo>& linears, Precision fallback);

// Counts for reports: how many Linears / weights (parameters) the plan puts in int8.
struct PlanSummary {
  int linears = 0, int8_linears = 0;
  int64_t params = 0, int8_params = 0;
};
PlanSummary summarize_plan(const LinearPlan& plan, const std::vector<LinearInfo>& linears);

}  // namespace ev
