// Token pruning of the vision tower, and the options of one vision forward (pruning, head masks).
//
// A schedule drops the visual tokens that matter least while the tower runs:
//   after layer l (0-based), keep the k = max(1, floor(r * N + 0.5)) tokens of highest importance, where N is the
//   tile's patch count and r the step's keep fraction (of the original tokens, not of the survivors). The
//   importance of token j is the attention it received in layer l: the mean over heads and queries of
//   softmax_j(scale q_i . k_j) (graph.h kAttnScore, computed beside the fused attention kernel). The survivors
//   keep their spatial order; only they enter layer l+1.
//   The connector's pixel shuffle needs the whole grid: every dropped token keeps, in place, its state from the
//   layer that dropped it; after the last layer the survivors are written back and post_layernorm runs on the
//   whole grid (so the fast head and the connector see N tokens, as without pruning).
//   llm:R keeps, before the language model, the max(1, floor(R * T + 0.5)) of the T connector tokens whose
//   vision tokens received the most attention in the last layer (the sum over the s x s tokens each connector
//   token merges; tokens dropped earlier count 0), in spatial order: the decoder's prefill shrinks too.
//
// Baselines (the same time budget must be beaten by the attention score):
//   random          the same schedule with uniform random scores instead of attention;
//   input:S         plain downscaling: the tile is resized to S x S pixels (S a multiple of patch * scale_factor)
//                   and the tower runs on (S/P)^2 patches, with position embeddings looked up as Idefics3 does for
//                   smaller images (fractional coordinates bucketised into the full grid).
//
// The syntax of --prune (every command: describe, eval, stream, bench, profile; EngineOptions::prune):
//   none | auto | item[,item...]   item: L:R | llm:R | random[=SEED] | input:S
//   e.g. "1:0.5,3:0.25", "1:0.5,3:0.25,llm:0.5", "1:0.5,3:0.25,random", "input:160".
// "auto" is the model's recommended setting: config.json "edgevlm.prune.auto" (a spec in this syntax), else
// default_prune_spec() for its depth.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/hf_config.h"

namespace ev {

struct PruneSpec {
  enum class Score : uint8_t { kAttention = 0, kRandom = 1 };
  struct Step {
    int layer = 0;     // 0-based: the tokens are chosen after this layer, by its attention
    float keep = 1.f;  // fraction of the tile's original tokens kept from then on
  };
  std::vector<Step> steps;
  float llm_keep = 1.f;  // fraction of the connector's tokens given to the language model
  Score score = Score::kAttention;
  uint64_t seed = 1;     // kRandom: the scores of call c come from (seed, c)
  int input_size = 0;    // > 0: downscale baseline, the tile is resized to this many pixels

  bool active() const { return !steps.empty() || llm_keep < 1.f || input_size > 0; }
  bool operator==(const PruneSpec& o) const;
  // The canonical spec string ("none" when inactive): parse(to_string()) gives the same spec.
  std::string to_string() const;
};

// Tokens kept by fraction r of n: max(1, floor(r * n + 0.5)).
int64_t prune_keep_count(float r, int64_t n);

// Parses the syntax above, except "auto" (which needs a model: resolve_prune_spec). Errors name the item.
Result<PruneSpec> parse_prune_spec(const std::string& s);
// Checks a spec against a model: layers inside the tower and increasing, keep fractions in (0, 1] and not
// increasing, an input size that is a positive multiple of patch * scale_factor and at most image_size.
Status validate_prune_spec(const PruneSpec& p, const VlmConfig& cfg);
// "auto" -> the model's recommendation (`auto_spec`: config.json's edgevlm.prune.auto, may be empty); anything
// else -> parse_prune_spec. The result is validated.
Result<PruneSpec> resolve_prune_spec(const std::string& s, const VlmConfig& cfg, const std::string& auto_spec);
// The recommendation for a tower of `n_layers` without one of its own (measured on the road student:
// bench/BENCHMARKS.md "Token and head pruning").
PruneSpec default_prune_spec(int n_layers);

// Options of one vision forward, beside the schedule.
struct VisionRun {
  const PruneSpec* prune = nullptr;
  uint64_t call = 0;  // kRandom: which draw (the engine counts its calls)
  // Head masks (edgevlm prune-heads measures head importance with them): mask[l][h] multiplies head h's output
  // in layer l (0 removes the head). Empty: no masks. The importance score still averages over every head of a
  // masked layer (train/prune.py's reference averages over the unmasked ones; a physically pruned model, which is
  // what prune-heads exports, averages over its remaining heads in both): masks serve calibration, not pruning.
  const std::vector<std::vector<float>>* head_mask = nullptr;
  // Filled by the tower when the connector-token selection (llm_keep < 1) needs it: [B, N] importance of every
  // token of the grid from the last layer's attention (dropped tokens 0).
  bool want_importance = false;
};

}  // namespace ev
