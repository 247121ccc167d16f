// edgevlm sim: runs the road-scene simulator (src/sim) and writes frames, a video and the ground truth.
//
//   edgevlm sim (--spec FILE | --seed N [--scenarios K]) [--frames N] [--size WxH] [--fps F]
//               [--out DIR [--format png|ppm|raw]] [--video FILE.mp4|.mkv] [--print] [--json] [--dump-spec FILE]
//
//   --spec FILE     a scenario spec (src/sim/README.md); its own size, fps and length unless overridden
//   --seed N        random scenarios (random_scenario(N), N+1, ... for --scenarios K)
//   --out DIR       DIR/frame_NNNNNN.png (or .ppm; with several scenarios s<seed>_NNNNNN.png), or one raw
//                   DIR/frames.rgb (count x H x W x 3) + DIR/meta.json; always DIR/truth.jsonl (FrameTruth::to_json
//                   per frame plus "scenario", "scenario_seed" and "file")
//   --video FILE    H.264 (libx264) if available, else MPEG-4 part 2, else MJPEG; the codec used is reported
//   --print         the canonical description whenever it changes, and every event, as the scene unfolds (stdout)
//   --json          a JSON summary on stdout instead of the text one: frames, seconds, frames_per_s, outputs, codec,
//                   per-field value counts of the descriptions and event counts
// A status line (frames done, frames/s, ETA) runs on stderr when it is a terminal.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

struct SimOptions {
  std::string spec;             // scenario spec file
  uint64_t seed = 0;            // random scenarios (used when spec is empty)
  int scenarios = 1;
  int64_t frames = -1;          // -1: the spec's length (random: 150)
  std::string size;             // "WxH"; empty: the spec's size (random: 224x224)
  double fps = 0;               // 0: the spec's (random: 30)
  std::string out;              // output directory
  std::string format = "png";   // png, ppm, raw
  std::string video;            // video file
  std::string dump_spec;        // write the (first) scenario's spec JSON here
  bool print = false;
  bool json = false;
  bool progress = true;
};

void add_sim_options(CLI::App& app, SimOptions& o);

// Runs everything and returns the summary object (prints only --print lines and the status line).
Result<nlohmann::json> sim_json(const SimOptions& o);

// The whole command: sim_json, then the text or JSON summary on stdout.
Status run_sim(const SimOptions& o);

}  // namespace ev
