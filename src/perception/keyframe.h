// Key-frame anchoring: decides, frame by frame, whether the heavy semantic pass (connector + language model)
// should run again, from how far the frame's vision latent has moved since the last anchor.
//
//   distance = 1 - cos(pooled(frame), pooled(anchor))       pooled: the mean of the vision tower's output tokens
//   key frame  <=>  no anchor yet, distance >= threshold, or the anchor is older than max_age_s
//
// The pooled vector is what the fast head reads too, so the test costs one dot product per frame. Without a key
// frame the last semantic output stands.
#pragma once

#include <cstdint>
#include <vector>

namespace ev {

struct KeyframeOptions {
  double threshold = 0.02;  // cosine distance to the anchor that makes a key frame
  double max_age_s = 1.0;   // an anchor older than this is renewed whatever the distance
};

class KeyframeAnchor {
 public:
  explicit KeyframeAnchor(KeyframeOptions o = {}) : opt_(o) {}
  // Returns true when `pooled` (the frame at time t_s) becomes the new anchor. *distance receives the cosine
  // distance to the previous anchor (1 when there was none).
  bool update(const std::vector<float>& pooled, double t_s, double* distance = nullptr);
  void reset() { anchor_.clear(); }
  const KeyframeOptions& options() const { return opt_; }

 private:
  KeyframeOptions opt_;
  std::vector<float> anchor_;
  double anchor_t_ = 0;
};

// Mean over the P tokens of a [P, C] row-major matrix.
std::vector<float> mean_pool(const float* x, int64_t P, int64_t C);
double cosine_distance(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace ev
