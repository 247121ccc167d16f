// Training-set writer: many random scenarios rendered in parallel into one raw frame file plus ground truth.
//
// Layout of the output directory:
//   frames.u8       count x height x width x 3 uint8 (NHWC, RGB), concatenated, no header
//   truth.jsonl     one JSON object per stored frame, in the same order: {"index", "scenario", "scenario_seed",
//                   "frame", "t", "description", "hazards", "qa", "events", "state"}; "events" holds the events of
//                   this frame and of the frames skipped (--every) since the previous stored one, each with its frame
//   scenarios.jsonl one scenario spec per scenario (scenario_spec_to_json), so any scenario can be replayed alone
//   meta.json       {"count", "width", "height", "channels", "dtype", "layout", "scenarios", "frames_per_scenario",
//                    "every", "frames_per_scenario_stored", "seed", "fps", "description_fields", "hazard_classes"}
// Scenario i uses seed + i. Scenarios are distributed over threads dynamically, but each one is written to a fixed
// place (frames.u8 offset, truth.jsonl order), so the output is byte-identical for any thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/status.h"

namespace ev::sim {

struct DatasetOptions {
  std::string out_dir;
  uint64_t seed = 0;
  int scenarios = 1;
  int frames_per_scenario = 150;
  int every = 1;           // store every M-th frame (truth of the others is simulated, frames are not rendered)
  int width = 224, height = 224;
  double fps = 30;
  int threads = 0;         // 0: hardware concurrency
  // Called from the writer thread after each finished scenario (scenarios done, frames stored so far).
  std::function<void(int, int64_t)> progress;
};

struct DatasetSummary {
  int64_t frames = 0;  // stored
  int scenarios = 0;
  double seconds = 0;
  int threads = 0;
};

Status check_dataset_options(const DatasetOptions& o);
Result<DatasetSummary> write_dataset(const DatasetOptions& o);

}  // namespace ev::sim
