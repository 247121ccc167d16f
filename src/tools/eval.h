// edgevlm eval: scenario accuracy of a road-scene model against the simulator's exact ground truth.
//
//   edgevlm eval --model DIR (--spec FILE [--spec FILE...] | --seed N [--scenarios K]) [--frames N] [--every M]
//                [--max-tokens N] [--precision auto|f32|bf16] [--threads N] [--print] [--json] [--out FILE]
//
// Each scenario runs through the simulator at the model's tile size (so that the model sees frames as it was
// trained on them); every M-th frame goes through the C++ runtime: vision tower + fast head + connector, then
// greedy generation of the description for the prompt in config.json's "edgevlm.task.describe_prompt" (default
// "Describe the scene."). The answer is parsed with sim::parse_description and compared field by field with the
// truth (sim::description_fields); the fast head's probabilities, thresholded at its configured threshold, are
// compared with the truth's hazard bits.
//
// Reported: per-field accuracy, their mean, exact match of all fields, hazard recall and precision per class of
// the fast head, frames evaluated, and the time per frame. --print shows the model's description for every
// evaluated frame as the scene unfolds (with the truth beside it where they differ).
// Flicker (a field's output changing between consecutive evaluated frames while its truth did not) and event
// delay (a change of a field's truth to the first evaluated frame whose output shows it) are reported too.
// --replay measures the stream policy instead (see EvalOptions::replay).
// --prune compares token-pruning settings (and head-pruned models) on the same frames: accuracy and vision time.
// Random seeds used for evaluation should be held out from training (train/roadvlm.py trains on seeds 1..K and
// evaluates on 1000000..).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

class Engine;
namespace sim {
struct ScenarioSpec;
}

struct EvalOptions {
  std::string model;
  std::vector<std::string> specs;
  uint64_t seed = 1000000;  // the toolchain's held-out range
  int scenarios = 5;
  int64_t frames = -1;      // per scenario; -1: the spec's length (random scenarios: 150)
  int every = 10;           // evaluate every M-th frame
  int max_tokens = 64;
  std::string precision = "auto";
  std::string device = "cpu";  // cpu, cuda, cuda:N
  int threads = 0;
  bool print = false;
  bool json = false;
  std::string out;
  bool progress = true;
  // --prune SPEC (repeatable; models/token_prune.h syntax, SPEC@DIR for another model, e.g. a head-pruned one):
  // every variant runs on every evaluated frame, back to back, so that their vision times are measured under the
  // same load; reported side by side, and as a picture (accuracy against vision time) with --plot FILE.svg.
  std::vector<std::string> prune;
  std::string plot;
  // --replay: every frame of each scenario through the stream pipeline's policy in stream time (key-frame
  // anchoring, language at language_hz on the newest key frame, the temporal adapter, hysteresis), for each
  // combination of the listed settings, against the same model run frame by frame (language on the newest frame
  // at the same cadence, and on every frame) without anchoring, adapter or hysteresis. --clip files (real video
  // without truth) get key-frame rates per setting.
  bool replay = false;
  double language_hz = 5;
  std::vector<double> thresholds = {0.1};   // the stream defaults (KeyframeOptions, StreamOptions)
  std::vector<double> max_ages = {1.0};
  std::vector<double> hazard_deltas = {0.0};
  std::vector<double> min_confidences = {0.8};  // StreamOptions' default
  std::vector<int> hysteresis = {1};
  std::vector<int> vote_windows = {1};
  std::vector<int> gated = {0};  // 0: plain hysteresis, 1: gated by the key frame's reason (FieldStabilizer)
  bool no_temporal = false;
  std::vector<std::string> clips;
  int latency_frames = 1;   // a language output is reported this many frames after the frame it described
};

void add_eval_options(CLI::App& app, EvalOptions& o);
Result<nlohmann::json> eval_json(const EvalOptions& o);
// The options' common checks, then the engine of --model at --precision and --threads.
Result<std::unique_ptr<Engine>> eval_engine(const EvalOptions& o);
// The scenarios of --spec files, or of --seed / --scenarios, at the model's tile size (and --frames long).
Result<std::vector<sim::ScenarioSpec>> eval_scenarios(const EvalOptions& o, int tile_size);
Result<nlohmann::json> eval_replay_json(const EvalOptions& o);  // --replay (tools/eval_replay.cpp)
std::string eval_replay_table(const nlohmann::json& j);
std::string eval_table(const nlohmann::json& j);
// The picture of a multi-variant eval: mean field accuracy against median vision time, one mark per variant,
// coloured by method (none, attention, random, downscale), head-pruned models outlined.
std::string eval_plot_svg(const nlohmann::json& j);
Status run_eval(const EvalOptions& o);

}  // namespace ev
