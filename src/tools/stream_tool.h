// edgevlm stream: live perception on a video stream with the dual-rate pipeline (runtime/stream.h).
//
//   edgevlm stream --model DIR --input SRC [--language-hz N] [--keyframe-threshold X] [--keyframe-max-age T]
//                  [--realtime] [--events FILE] [--print] [--json] [--frames N] [--raw-size WxH]
//                  [--overlay FILE [--overlay-font FONT]] ...
//
// SRC: a video file, an image-sequence pattern, rtsp:// / http:// URLs, v4l2:/dev/videoN, "-" (raw RGB24 on
// stdin with --raw-size), or sim:SEED / sim:SPEC.json (the simulator, whose truth then scores the output:
// per-field accuracy over frames, flicker, event delay).
// Output: semantic updates and fast-head alerts on stdout with --print, every event as JSONL with --events,
// a live status line on a terminal, and a summary (table or --json) at the end. --overlay writes the frames with
// the current fields, the active alerts, key-frame marks and timings drawn on them (perception/overlay.h).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "runtime/stream.h"

namespace CLI {
class App;
}

namespace ev {

struct StreamToolOptions {
  std::string model;
  std::string input;
  double language_hz = 5;
  double keyframe_threshold = KeyframeOptions{}.threshold;
  double keyframe_max_age = KeyframeOptions{}.max_age_s;
  double keyframe_hazard_delta = KeyframeOptions{}.hazard_delta;
  int hysteresis = 1;
  int vote_window = 1;
  double min_confidence = StreamOptions{}.min_confidence;
  bool realtime = false;
  std::string events;
  bool print = false;
  bool json = false;
  int64_t frames = -1;
  std::string raw_size;
  double raw_fps = 30;
  int threads = 1;        // vision stage
  int text_threads = 1;   // language stage
  std::string precision = "auto";
  std::string device = "cpu";  // cpu, cuda, cuda:N
  std::string prune = "none";           // token pruning of the vision stage (models/token_prune.h)
  int max_tokens = 64;
  bool progress = true;
  bool no_temporal = false;
  std::string overlay;       // overlay video file ("" : none)
  std::string overlay_font;  // "" : DejaVu Sans
};

void add_stream_options(CLI::App& app, StreamToolOptions& o);
Result<nlohmann::json> stream_json(const StreamToolOptions& o);
std::string stream_table(const nlohmann::json& j);
Status run_stream(const StreamToolOptions& o);

}  // namespace ev
