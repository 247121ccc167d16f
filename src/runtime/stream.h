// The live perception pipeline: video in, a current and stable semantic understanding out, in real time.
//
//   source thread    VideoSource (file / camera / network / simulator) -> bounded frame queue
//   vision thread    every frame: preprocess -> vision tower -> fast head (alerts at once) -> key-frame anchor;
//                    key frames: connector output into the key-frame mailbox (newest wins)
//   language thread  at language_hz: the newest key frame not yet described -> text model (greedy) -> parsed
//                    fields -> output stabilisation (hysteresis) -> semantic update when a field changed
//
// Neither stage waits for the other: the vision stage never blocks on language (the mailbox holds one key frame;
// a newer one replaces an undescribed older one, counted as superseded), and the language stage always takes the
// newest key frame, never a backlog. The frame queue is bounded: for live sources (and --realtime files) a frame
// that finds it full replaces the oldest queued one (counted as a drop), so latency cannot grow; for files read as
// fast as possible the source simply waits (no drops: batch work wants every frame).
//
// Threads: the vision stage uses the engine's main pool, the language stage its own (EngineOptions::text_threads),
// so that the two stages never share a pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/histogram.h"
#include "core/status.h"
#include "perception/keyframe.h"
#include "perception/video_source.h"
#include "runtime/engine.h"
#include "runtime/semantic_state.h"

namespace ev {

struct StreamOptions {
  double language_hz = 5;       // language stage cadence
  KeyframeOptions keyframe;
  int queue_frames = 2;         // frame queue capacity
  int hysteresis = 1;           // a field takes a new value after this many consecutive outputs agree (1: at once)
  int vote_window = 1;          // each field's candidate is the majority of its last N outputs (1: the last)
  // A field changes only when the model gave its new value at least this probability (the least probable token of
  // the value; runtime/semantic_state.h). Measured with eval --replay (bench/BENCHMARKS.md).
  double min_confidence = 0.8;
  int max_tokens = 64;
  std::string prompt;           // empty: config.json's edgevlm.task.describe_prompt, else "Describe the scene."
  double alert_on = 0.5, alert_off = 0.4;  // fast-head hysteresis thresholds (on: the head's threshold if set)
  // Drop the oldest queued frame when the vision stage falls behind (always for live sources; set it for files
  // played in real time, which stand in for a camera).
  bool drop_when_late = false;
  // Key frames pass through the model's temporal adapter (when it has one) with the previous key frame's
  // embeddings as memory.
  bool temporal = true;
};

// What the pipeline reports, as it happens (called from the stage threads; keep it short).
struct StreamEvent {
  std::string type;      // "alert_on", "alert_off", "keyframe", "semantic", "truth_event"
  int64_t frame = 0;     // the frame it refers to
  double pts_s = 0;      // that frame's presentation time
  double wall_s = 0;     // seconds since the stream started
  nlohmann::json data;   // type-specific: {"hazard", "p"}, {"distance"}, {"text", "fields", "changed", "latency_s"}
};
using StreamEventCallback = std::function<void(const StreamEvent&)>;

// What the vision stage knows of one frame once it is through (for overlays and recorders).
struct StreamFrameInfo {
  bool keyframe = false;
  double distance = 0;                 // to the anchor (cosine distance of the pooled vision features)
  std::vector<float> fast_head;        // the fast head's probabilities (empty without a fast head)
  std::vector<bool> alerts;            // the alert state per fast-head class after hysteresis
  double vision_latency_s = 0;         // capture -> vision done
};
// Called on the vision thread after every frame; it must not block for long (hand the frame to a queue).
using StreamFrameCallback = std::function<void(const VideoFrame&, const StreamFrameInfo&)>;

struct StreamStats {
  int64_t frames_in = 0, frames_vision = 0, frames_dropped = 0;
  int64_t keyframes = 0, keyframes_superseded = 0, language_runs = 0, semantic_updates = 0;
  // Distributions as fixed-size histograms (core/histogram.h): a snapshot costs the same after 10 hours as after
  // 10 seconds.
  Histogram vision_latency_s;    // capture -> vision done, per frame
  Histogram language_latency_s;  // key frame capture -> semantic output, per language run
  Histogram language_run_s;      // the text model's own time per run
  Histogram staleness_s;         // per vision frame: its capture time minus the capture time of the frame behind
                                 // the current semantic output
  double wall_s = 0;
  double source_fps = 0;
  double last_described_pts = -1;          // pts of the frame behind the current semantic output
  // Against the simulator's truth (sources that carry it):
  int64_t truth_frames = 0;                        // vision frames with truth
  std::map<std::string, int64_t> field_correct;    // frames where the current output's field equals the truth
  std::map<std::string, int64_t> flicker;          // reported changes while the truth did not change
  std::map<std::string, int64_t> flicker_raw;      // the same for the raw model outputs (before stabilisation)
  std::vector<double> event_delay_s;               // truth change -> first frame whose output shows it
  int64_t events_missed = 0;                       // truth changes never shown before the next change
};

class StreamPipeline {
 public:
  StreamPipeline(Engine& engine, VideoSource& source, StreamOptions opt);
  // Runs until the source ends (or stop()); returns the first error of any stage. on_event and on_frame may be
  // null.
  Status run(const StreamEventCallback& on_event, const StreamFrameCallback& on_frame = nullptr);
  void stop() { stop_.store(true); }
  // A snapshot (thread-safe) for status lines while run() is going.
  StreamStats stats() const;
  // The current semantic output (fields and text), thread-safe.
  std::map<std::string, std::string> current_fields() const;

 private:
  Engine& engine_;
  VideoSource& source_;
  StreamOptions opt_;
  std::atomic<bool> stop_{false};
  mutable std::mutex stats_mu_;
  StreamStats stats_;
  FieldStabilizer stab_;   // the current (stabilised) semantic output
  TruthScorer scorer_;     // against the truth (sources that carry it)
};

}  // namespace ev
