// edgevlm validate: semantic drift of an optimised model (quantised, head-pruned, token-pruned, imported, run at
// another precision) against its reference, with tolerances that can gate a CI.
//
//   edgevlm validate --reference DIR --candidate DIR [--reference-precision P] [--candidate-precision P]
//                    [--reference-prune SPEC] [--candidate-prune SPEC]
//                    [--spec FILE... | --seed N --scenarios K] [--frames N] [--every M]
//                    [--video FILE...] [--image FILE...] [--prompt TEXT] [--max-tokens N] [--threads N]
//                    [--tolerance FILE] [--json FILE|-] [--svg FILE] [--print] [--no-hidden]
//
// Both engines are loaded side by side (the same directory twice, with other engine options, validates a model
// against itself optimised). Frames: the simulator's scenarios, selected as by edgevlm eval (eval_scenarios: at
// the reference's tile size, every M-th frame), with exact truth; and/or real clips (--video, every M-th frame)
// and stills (--image) without truth: then only the drift metrics. Every frame goes through each model once
// without splitting (one tile):
//
//   1. vision tower + fast head + connector (Engine::encode_tiles), named outputs captured (ExecOptions::on_tensor)
//   2. the model's own greedy answer to the prompt (Engine::generate_encoded; the reference's describe_prompt()
//      unless --prompt)
//   3. teacher forcing: one prefill of the model's own prompt (its own image embeddings) + the REFERENCE's answer
//      tokens (Engine::forward_text, n_logits = answer length + 1: the last prompt position, which predicts the
//      answer's first token, through the answer's last token, which predicts its end), text layers captured.
//
// Metrics (definitions; the JSON says the same under "definitions"):
//   kl                 per teacher-forced position, KL(p_ref || p_cand) of the softmax distributions, in nats
//                      (double precision, log-sum-exp); mean, p50, p90, max over all positions of all frames,
//                      and a histogram by decade
//   top1_agreement     fraction of those positions where both models' most probable next token is the same
//   changed_answers    fraction of frames whose greedy answer text differs between the two models
//   accuracy           (frames with truth) eval's field-level scoring (tools/eval_scoring.h) of each model's own
//                      answer: mean field accuracy and exact match; accuracy_drop = reference - candidate
//   cosine             per captured layer, the mean over frames of the mean over rows (tokens) of the cosine
//                      similarity of the two models' hidden states: vision = v.blk.L.out, connector = mm.proj,
//                      text = t.blk.L.out of the teacher-forced prefill. Where the candidate's token pruning keeps
//                      fewer vision tokens, its kept tokens are compared with the same tokens of the reference
//                      ("kept_tokens", from the pruning's keep_idx); other row-count mismatches (input:S downscale)
//                      compare rows mean-pooled per tile ("pooled"); text rows with different image-token counts
//                      (llm:R) are aligned on the positions after the last image token (same text in both)
//   flicker            per model, field changes between consecutive evaluated frames of a sequence (scenario or
//                      clip) per pair of frames: with truth, eval's flicker (TruthScorer::flicker_raw: a change
//                      of a parsed field while its truth stood); without truth, every change of a parsed field
//                      (the whole answer when it has no fields); flicker_increase = candidate - reference
//   fast_head          (both models with a fast head of the same classes) max |p_ref - p_cand| over frames and
//                      classes, and the fraction of (frame, class) decisions (p >= threshold) that agree
//
// Tolerances (--tolerance FILE, JSON; ValidateTolerance's defaults without one; a key set to null is not
// checked): max_mean_kl, min_top1_agreement, max_changed_answers, max_accuracy_drop, min_cosine
// ({"vision", "connector", "text"}: the lowest per-layer mean of the group; or one number for all),
// max_flicker_increase, max_fast_head_diff, min_fast_head_agreement. Unknown keys are errors that name the key.
// A metric that cannot be measured on this input (accuracy without truth, ...) is reported as not checked.
//
// Exit status of run_validate (and the command): 0 every tolerance held, 1 at least one exceeded (the report
// lists each with measured value and limit), 2 usage or input errors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

struct ValidateTolerance {
  std::optional<double> max_mean_kl = 0.05;
  std::optional<double> min_top1_agreement = 0.97;
  std::optional<double> max_changed_answers = 0.1;
  std::optional<double> max_accuracy_drop = 0.005;
  std::optional<double> min_cosine_vision = 0.98;
  std::optional<double> min_cosine_connector = 0.98;
  std::optional<double> min_cosine_text = 0.97;
  std::optional<double> max_flicker_increase = 0.02;
  std::optional<double> max_fast_head_diff = 0.1;
  std::optional<double> min_fast_head_agreement = 0.98;
};

// Keys present in `j` replace the defaults; null disables a check. kInvalidArgument naming `source` and the key
// for unknown keys, non-numbers and values out of range.
Result<ValidateTolerance> parse_tolerance(const nlohmann::json& j, const std::string& source = "tolerance");
Result<ValidateTolerance> load_tolerance(const std::string& path);
nlohmann::json tolerance_json(const ValidateTolerance& t);

struct ValidateOptions {
  std::string reference, candidate;
  std::string reference_precision = "auto", candidate_precision = "auto";
  std::string reference_prune = "none", candidate_prune = "none";
  // Simulator scenarios, as edgevlm eval selects them (EvalOptions' meaning).
  std::vector<std::string> specs;
  uint64_t seed = 1000000;
  int scenarios = 3;
  bool scenarios_given = false;  // --seed / --scenarios given: simulate even with --video / --image
  int64_t frames = -1;           // per scenario / clip; -1: the spec's length (random: 150), the whole clip
  int every = 10;
  std::vector<std::string> videos, images;  // real inputs without truth
  std::string prompt;            // empty: the reference's describe_prompt()
  int max_tokens = 64;
  int threads = 0;
  bool hidden = true;            // capture hidden states (cosine per layer)
  std::string tolerance;
  std::string json_out;          // "-": the JSON on stdout instead of the table
  std::string svg_out;
  bool print = false;            // per frame: both answers and the frame's mean KL
  bool progress = true;
};

void add_validate_options(CLI::App& app, ValidateOptions& o);
// The measurements and, against `tol`, "checks" (every tolerance with measured value, limit and status),
// "violations" (the exceeded ones) and "pass".
Result<nlohmann::json> validate_json(const ValidateOptions& o, const ValidateTolerance& tol);
std::string validate_table(const nlohmann::json& j);
// Cosine per layer (vision layers + connector, text layers) with the tolerances, and the KL histogram.
std::string validate_svg(const nlohmann::json& j);
// The command: 0 pass, 1 a tolerance exceeded, 2 usage / input error (printed on stderr).
int run_validate(const ValidateOptions& o);

// Building blocks (tests).
// KL(softmax(p) || softmax(q)) of one row of logits, in nats (>= 0), and whether both argmaxes agree.
double kl_logits(const float* p, const float* q, int64_t V, bool* same_top1 = nullptr);
// Mean over `rows` rows of width D of the cosine similarity of a's and b's rows (rows where both are zero: 1).
double mean_row_cosine(const float* a, const float* b, int64_t rows, int64_t D);

}  // namespace ev
