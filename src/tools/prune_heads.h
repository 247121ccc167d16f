// edgevlm prune-heads: attention-head pruning of the vision tower, measured by what the language model says.
//
//   edgevlm prune-heads --model DIR --out DIR (--remove FRACTION | --heads N) [--calib-seed S] [--calib-scenarios K]
//                       [--every M] [--iterative] [--max-tokens N] [--precision auto|f32|bf16] [--threads N] [--json]
//
// 1. Calibration: K simulator scenarios from seed S (default 3000000, disjoint from the training seeds 1.. and the
//    held-out evaluation range 1000000..), every M-th frame, at the model's tile size.
// 2. Reference: the unmasked model's greedy description of every frame (describe_prompt(), no splitting), and its
//    next-token distributions teacher-forced along that answer (one prefill of prompt + answer, all logits).
// 3. Importance of head (l, h): the mean over frames of the mean over answer positions of
//    KL(reference || model with head (l, h) masked), the same prefill on the masked vision output (Engine head
//    masks: the head's attention output is zeroed before out_proj). The change in field accuracy against the
//    simulator's truth when the head alone is masked is reported beside it (greedy answers).
// 4. Selection: the least important heads, one at least kept per layer; one-shot from the single-head ranking, or
//    --iterative: each next head is the one whose masking on top of those already removed costs the least KL.
// 5. Export: the model with those heads physically deleted (q/k/v rows [h D, (h+1) D) and the same out_proj
//    columns; every other tensor byte for byte), config.json with vision_config.num_attention_heads_per_layer,
//    head_dim and an "edgevlm": {"head_pruning": {...}} record; the other files of the directory copied.
// 6. Verification: the written model's vision output equals the masked original's (f32 vision arithmetic, max
//    relative difference below kHeadPruneVerifyTolerance on the first frames); the tool fails otherwise.
// 7. Report: importance per head, removed heads, heads kept per layer, KL / field accuracy / vision time (median,
//    measured round-robin on the same frames) of the pruned model against the original.
//
// The core (HeadCalibration, select_heads, write_head_pruned_model) takes any images and prompt; the road-scene
// calibration (simulator frames + truth) is the tool's wrapper around it.
// Head numbers are the input model's own: an already head-pruned model is pruned further in its own numbering.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "graph/executor.h"
#include "perception/image.h"
#include "sim/spec.h"

namespace CLI {
class App;
}

namespace ev {

class Engine;

struct HeadRef {
  int layer = 0, head = 0;
  bool operator==(const HeadRef& o) const { return layer == o.layer && head == o.head; }
  bool operator<(const HeadRef& o) const { return layer != o.layer ? layer < o.layer : head < o.head; }
};

// mask[l][h]: 1 keeps head h of layer l, 0 masks it (Engine::set_head_mask). Empty: no masks.
using HeadMask = std::vector<std::vector<float>>;
// All heads of `v` kept, except `masked`.
HeadMask head_mask_for(const VisionConfig& v, const std::vector<HeadRef>& masked);

// Progress of a long step: (what, done, total).
using HeadProgress = std::function<void(const std::string& what, int64_t done, int64_t total)>;

// Calibration images with the reference model's answers and next-token distributions, and the measurements made
// against them. Built once from the unmasked engine; kl() and answers() may run on that engine with any head
// mask, or on another engine with the same text model and tokenizer (a head-pruned copy).
class HeadCalibration {
 public:
  // The engine's greedy answers to `prompt` about each image (Engine::describe, no splitting, at most
  // max_new_tokens), then the teacher-forced distributions along them. The engine must have no head mask and no
  // token pruning set.
  static Result<HeadCalibration> create(Engine& eng, std::vector<Image> images, const std::string& prompt,
                                        int max_new_tokens, const HeadProgress& progress = nullptr);

  // Mean over images of the mean over answer positions (the position before the answer's first token through
  // its last) of KL(reference || eng with `mask`), in nats. per_image: each image's value.
  // The vision tower runs once per call on all images (in batches); the mask is cleared afterwards.
  // *top1: the fraction of answer positions where both distributions have the same most likely token.
  Result<double> kl(Engine& eng, const HeadMask& mask, std::vector<double>* per_image = nullptr,
                    const HeadProgress& progress = nullptr, double* top1 = nullptr) const;
  // The same teacher-forced passes with `exec` (e.g. ExecOptions::on_inputs to collect the activations entering
  // every Linear for quantisation), results discarded.
  Status observe(Engine& eng, const ExecOptions& exec, const HeadProgress& progress = nullptr) const;
  // Greedy answers of `eng` with `mask` (as the reference's were made).
  Result<std::vector<std::string>> answers(Engine& eng, const HeadMask& mask,
                                           const HeadProgress& progress = nullptr) const;

  size_t size() const { return images_.size(); }
  const std::vector<Image>& images() const { return images_; }
  const std::string& prompt() const { return prompt_; }
  int max_new_tokens() const { return max_new_tokens_; }
  const std::vector<std::string>& reference_answers() const { return ref_text_; }
  const std::vector<std::vector<int32_t>>& reference_tokens() const { return ref_tokens_; }
  // Pixel tiles of all images [n, 3, S, S] (one tile each).
  const Tensor& pixels() const { return pixels_; }

 private:
  // The teacher-forced prefill of every image's prompt + reference answer on `eng` with `mask` (vision in
  // batches of kBatch tiles); `fn` gets each image's logits [n_answer + 1, V].
  Status teacher_forced(Engine& eng, const HeadMask& mask, const std::function<Status(size_t, const Tensor&)>& fn,
                        const HeadProgress& progress, const ExecOptions& exec = {}) const;
  static constexpr int64_t kBatch = 8;

  std::vector<Image> images_;
  std::string prompt_;
  int max_new_tokens_ = 64;
  Tensor pixels_;
  std::vector<std::string> ref_text_;
  std::vector<std::vector<int32_t>> ref_tokens_;
  std::vector<std::vector<float>> ref_logits_;  // per image: [n_answer + 1, V] raw logits
  int64_t vocab_ = 0;
};

// Number of heads to remove from a tower with `v`'s heads: round(fraction * total heads), fraction in (0, 1), or
// `heads` (exactly one of the two given). kInvalidArgument, naming --remove or --heads, when neither or both are
// given, the fraction is outside (0, 1), or the count is below 1 or more than leaves one head in every layer.
Result<int> heads_to_remove(const VisionConfig& v, std::optional<double> fraction, std::optional<int> heads);

struct HeadSelection {
  bool iterative = false;
  // KL with each head masked alone (the one-shot ranking; the first round of the iterative one), [L][H_l].
  std::vector<std::vector<double>> importance;
  // Heads in the order they were removed, and the KL with it and all before it masked (iterative), or its
  // single-head KL (one-shot).
  std::vector<HeadRef> removed;
  std::vector<double> step_kl;
};

// Ranks the heads of `eng`'s vision tower on `cal` and picks `n_remove` of them (at least one kept per layer).
Result<HeadSelection> select_heads(Engine& eng, const HeadCalibration& cal, int n_remove, bool iterative,
                                   const HeadProgress& progress = nullptr);
// The same from given single-head importances (one-shot): lowest first, ties by (layer, head), skipping heads
// whose layer would lose its last head. kInvalidArgument when fewer can go.
Result<std::vector<HeadRef>> rank_heads_one_shot(const std::vector<std::vector<double>>& importance, int n_remove);

// Writes the model in `model_dir` with `removed` heads (its own numbering) deleted to `out_dir` (created; files
// there are overwritten; refused when it is model_dir itself): model.safetensors with the same tensor names and
// dtypes (the q/k/v rows and out_proj columns of removed heads deleted, every other tensor byte for byte, sharded
// inputs merged into one file), config.json with vision_config.num_attention_heads_per_layer / head_dim and
// "edgevlm.head_pruning" = `record` + {"removed", "source", "heads_before"} (a previous record kept under
// "previous"), and every other regular file of the directory copied.
Status write_head_pruned_model(const std::string& model_dir, const std::string& out_dir,
                               const std::vector<HeadRef>& removed, const nlohmann::json& record = nlohmann::json::object());

// Models derived from another one (prune-heads, quantize):
// out_dir created, and refused when it is model_dir itself (`what`: "pruned", "quantised" for the message).
Status prepare_derived_dir(const std::string& model_dir, const std::string& out_dir, const char* what);
// model_dir/config.json with its keys in their original order.
Result<nlohmann::ordered_json> read_ordered_config(const std::string& model_dir);
// `tensors` as out_dir/model.safetensors (with the metadata of `store`, model_dir's weights), `config` as
// config.json (checked to load), and every other regular file of model_dir except its weights copied.
Status write_derived_model(const std::string& model_dir, const TensorStore& store, const std::string& out_dir,
                           const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const nlohmann::ordered_json& config);

// Largest relative difference allowed between the written model's vision output and the masked original's
// (max |a - b| / max |a|, f32 vision arithmetic).
constexpr double kHeadPruneVerifyTolerance = 1e-4;

struct HeadVerify {
  int frames = 0;
  double max_abs_diff = 0, max_rel_diff = 0;  // vision tower output (post_layernorm)
  double embeds_rel_diff = 0;                 // connector output
  bool ok = false;
};
// Loads both models with f32 vision arithmetic and compares the pruned one's vision output on `pixels`
// [n, 3, S, S] with the original's under the mask of `removed`.
Result<HeadVerify> verify_head_pruned_model(const std::string& model_dir, const std::string& pruned_dir,
                                            const std::vector<HeadRef>& removed, const Tensor& pixels, int threads = 0);

// Every `every`-th frame of each simulator scenario, as images, with its description fields (the truth).
Status sim_calibration_frames(const std::vector<sim::ScenarioSpec>& specs, int every, std::vector<Image>* images,
                              std::vector<std::map<std::string, std::string>>* truth);

// Field accuracy of road-scene answers against the simulator's truth (one map of fields per answer): the mean over
// answers and description fields of exact field matches, the fraction of answers right in every field, and how
// many answers did not parse.
struct FieldScore {
  double mean = 0, exact = 0;
  int64_t unparsed = 0;
};
FieldScore score_fields(const std::vector<std::string>& answers,
                        const std::vector<std::map<std::string, std::string>>& truth);

// ---- The tool ----

struct PruneHeadsOptions {
  std::string model;
  std::string out;
  std::optional<double> remove;  // --remove FRACTION of all heads
  std::optional<int> heads;      // --heads N
  uint64_t calib_seed = 3000000;
  int calib_scenarios = 8;
  int every = 15;
  bool iterative = false;
  int max_tokens = 64;
  std::string precision = "auto";
  int threads = 0;
  bool json = false;
  bool progress = true;
  bool head_accuracy = true;  // the field accuracy of every single-head mask (greedy answers: the slow part)
  int verify_frames = 4;
  int timing_rounds = 2;      // vision time: every frame this many times through each model, alternating
};

void add_prune_heads_options(CLI::App& app, PruneHeadsOptions& o);
// The options' checks before anything heavy is loaded: numbers, the model's config.json, the count of heads to
// remove against its tower, and that --out can be created and written (it is created).
Status check_prune_heads_options(const PruneHeadsOptions& o);
Result<nlohmann::json> prune_heads_json(const PruneHeadsOptions& o);
std::string prune_heads_table(const nlohmann::json& j);
Status run_prune_heads(const PruneHeadsOptions& o);

}  // namespace ev
