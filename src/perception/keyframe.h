// Key-frame anchoring: decides, frame by frame, whether the heavy semantic pass (connector + language model)
// should run again, from how far the frame's vision latent has moved since the last anchor.
//
//   distance = 1 - cos(pooled(frame), pooled(anchor))       pooled: the mean of the vision tower's output tokens
//   key frame  <=>  no anchor yet, distance >= threshold, a fast-head probability moved by >= hazard_delta since
//                   the anchor, or the anchor is older than max_age_s
//
// The pooled distance misses small objects (a light turning red, a pedestrian stepping off the kerb barely moves
// the mean of 196 tokens); the fast head's hazard probabilities see exactly those, so they can make a key frame
// too.
//
// The pooled vector is what the fast head reads too, so the test costs one dot product per frame. Without a key
// frame the last semantic output stands.
#pragma once

#include <cstdint>
#include <vector>

namespace ev {

// Defaults from `edgevlm eval --replay` on 30 held-out scenarios and the two real clips (bench/BENCHMARKS.md,
// "Key-frame defaults and flicker"): with the stream's confidence gate (StreamOptions::min_confidence 0.8),
// 0.1 / 1 s makes 5.7% of simulated and 4.5-5.3% of real frames key frames and cuts flicker 6.3x against
// frame-by-frame description at the same language cadence, for 0.5 points of per-frame accuracy.
struct KeyframeOptions {
  double threshold = 0.1;   // cosine distance to the anchor that makes a key frame
  double max_age_s = 1.0;   // an anchor older than this is renewed whatever the distance
  double hazard_delta = 0;  // a fast-head probability that moved this much since the anchor makes a key frame
                            // (0: off)
};

// Why a frame became a key frame (kNone: it did not).
enum class KeyReason : uint8_t { kNone = 0, kFirst, kChange, kHazard, kAge };
const char* key_reason_name(KeyReason r);

class KeyframeAnchor {
 public:
  explicit KeyframeAnchor(KeyframeOptions o = {}) : opt_(o) {}
  // Returns true when `pooled` (the frame at time t_s) becomes the new anchor. *distance receives the cosine
  // distance to the previous anchor (1 when there was none).
  bool update(const std::vector<float>& pooled, double t_s, double* distance = nullptr) {
    return decide(pooled, nullptr, t_s, distance) != KeyReason::kNone;
  }
  // The same with the frame's fast-head probabilities (may be null or empty), and the reason.
  KeyReason decide(const std::vector<float>& pooled, const std::vector<float>* hazards, double t_s,
                   double* distance = nullptr);
  void reset() {
    anchor_.clear();
    anchor_hazards_.clear();
  }
  const KeyframeOptions& options() const { return opt_; }

 private:
  KeyframeOptions opt_;
  std::vector<float> anchor_, anchor_hazards_;
  double anchor_t_ = 0;
};

// Mean over the P tokens of a [P, C] row-major matrix.
std::vector<float> mean_pool(const float* x, int64_t P, int64_t C);
double cosine_distance(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace ev
