// The road-scene simulator: a scenario spec in, frames and exact ground truth out, one frame at a time.
//
//   EV_ASSIGN_OR_RETURN(ScenarioSpec spec, load_scenario_spec("src/sim/scenarios/urban_crossing.json"));
//   EV_ASSIGN_OR_RETURN(Simulator sim, Simulator::create(spec));
//   Frame f;
//   FrameTruth t;
//   while (sim.next(&f, &t)) { ... f.rgb (W*H*3), t.description, t.events ... }
//
// Deterministic: the same spec (including its seed) gives bit-identical frames and truth on every run and thread
// count; nothing reads clocks, environment or global state. A Simulator is single-threaded; run several (one per
// scenario) on several threads for throughput (see dataset.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "sim/spec.h"
#include "sim/truth.h"

namespace ev::sim {

// One RGB8 frame, interleaved, row-major: pixel (x, y) channel c is rgb[(y * width + x) * 3 + c].
struct Frame {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

class Simulator {
 public:
  // Validates the spec (validate_scenario_spec) and builds the world at frame 0.
  static Result<Simulator> create(const ScenarioSpec& spec);
  ~Simulator();
  Simulator(Simulator&&) noexcept;
  Simulator& operator=(Simulator&&) noexcept;

  // Produces the next frame: renders into *out (resized as needed; null: skip rendering, which is much cheaper)
  // and fills *truth (may be null). Returns false, leaving both untouched, once all spec.frames frames are done.
  bool next(Frame* out, FrameTruth* truth);
  // Advances n frames without rendering (events of skipped frames are lost; truth of the next frame is exact).
  void skip(int64_t n);
  // Back to frame 0.
  void reset();

  int64_t frame_index() const;  // index of the frame the next call to next() produces
  int64_t frame_count() const;  // spec.frames
  double fps() const;
  int width() const;
  int height() const;
  const ScenarioSpec& spec() const;

 private:
  Simulator();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// FNV-1a 64-bit hash of a frame's pixels (tests, determinism checks in the dataset writer).
uint64_t frame_hash(const Frame& f);

}  // namespace ev::sim
