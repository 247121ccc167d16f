// edgevlm quantize: a mixed-precision INT8 model from a float one, by sensitivity analysis on calibration frames.
//
//   edgevlm quantize --model DIR --out DIR [--plan auto|int8|FILE] [--calib SPEC] [--budget-kl X] [--min-top1 X]
//                    [--smooth auto|on|off] [--alpha A] [--precision auto|f32|bf16] [--json FILE] [--svg FILE]
//
// 1. Calibration (--calib sim:SEED:SCENARIOS[:EVERY], default sim:3000000:8:15: simulator scenarios apart from the
//    training seeds 1.. and the held-out evaluation seeds 1000000..; or video:PATH[:EVERY[:MAX]], every EVERY-th
//    frame of a clip, at most MAX (default 15, 40), for models without the simulator's truth, e.g. SmolVLM on
//    dashcam footage: no field accuracy then): the float model's greedy description of
//    every frame and its next-token distributions teacher-forced along it (HeadCalibration, tools/prune_heads.h).
// 2. Statistics: the largest |activation| entering every Linear, per input channel, over the same passes; the
//    largest |weight| per input channel. SmoothQuant factors s[k] = amax_x[k]^alpha / amax_w[k]^(1 - alpha).
// 3. Sensitivity: each candidate Linear (attention projections, feed-forward layers, output head) quantised
//    alone, with and without smoothing: the mean KL(float || candidate) over answer positions, and the top-1
//    agreement. --smooth auto keeps smoothing for a layer where it lowers that layer's KL.
// 4. Plan: --plan auto starts from every candidate in int8 and returns the most sensitive remaining layer to float
//    until the whole model's KL is within --budget-kl and its top-1 agreement at least --min-top1 (each step is
//    measured, not estimated). --plan int8: every candidate in int8. --plan FILE: that plan (parse_plan_json).
// 5. Export (format edgevlm-int8/1, models/quant_plan.h): int8 weights with their scales (and smoothing factors),
//    every other tensor as it was; config.json "edgevlm.quantization" records the plan, the measurements and the
//    calibration; the directory's other files are copied.
// 6. Verification: the written model, loaded back, must give the same distributions as the plan computed in
//    memory (KL below kQuantizeVerifyKl), or the tool fails.
// 7. Report: per layer sensitivity (table, JSON, SVG bar chart), the plan, the drift and field accuracy against the
//    simulator's truth of float and quantised models, and the weight bytes (F32, source file, written file).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

constexpr double kQuantizeVerifyKl = 1e-6;

struct QuantizeOptions {
  std::string model;
  std::string out;
  std::string plan = "auto";
  std::string calib = "sim:3000000:8:15";
  double budget_kl = 0.01;  // nats, mean over answer positions
  double min_top1 = 0.97;
  std::string smooth = "auto";
  double alpha = 0.5;
  int max_tokens = 64;
  std::string precision = "auto";
  int threads = 0;
  std::string json_path;
  std::string svg_path;
  bool progress = true;
};

void add_quantize_options(CLI::App& app, QuantizeOptions& o);
Status check_quantize_options(const QuantizeOptions& o);
Result<nlohmann::json> quantize_json(const QuantizeOptions& o);
std::string quantize_table(const nlohmann::json& j);
std::string quantize_svg(const nlohmann::json& j);
Status run_quantize(const QuantizeOptions& o);

// SmoothQuant factor of one input channel: amax_x^alpha / amax_w^(1-alpha), 1 where either is 0 or not finite,
// clamped to [1e-4, 1e4].
float smooth_factor(float amax_x, float amax_w, double alpha);

}  // namespace ev
