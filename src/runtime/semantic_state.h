// The semantic state a perception loop reports, and how it is scored against the simulator's truth. Shared by the
// live pipeline (runtime/stream.h) and eval's stream replay (tools/eval.h), so that both measure the same thing.
//
//   FieldStabilizer  output stabilisation of each structured field: with a vote window W > 1 the candidate value
//                    is the strict majority of the field's last W outputs (none: no candidate); with W = 1 it is
//                    the last output. The reported value becomes the candidate once `hysteresis` consecutive
//                    outputs have produced it (1: at once). A field not reported yet takes its first value at once.
//                    Gated (hysteresis only where the scene did not change): an output of a frame that the key-frame
//                    anchor found changed (distance over the threshold) applies at once; an output of a frame that
//                    only refreshed an old anchor must be confirmed by `hysteresis` consecutive outputs. Real
//                    changes then show without delay, while re-guesses of a still scene do not flicker.
//                    With a minimum confidence: a change to a value the model produced with a lower probability (the
//                    least probable token of the value) must be confirmed by 6 consecutive outputs; in practice
//                    unsure changes are ignored, but a field cannot stay stuck on a confidently wrong value.
//   field_confidence The per-field confidence of a generated description from its per-token probabilities.
//   TruthScorer      against the truth: per-frame accuracy of the reported fields, flicker (a change between
//                    consecutive outputs while the truth of that field did not change), and event delay (from a
//                    change of a field's truth to the first frame whose reported value shows it).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ev {

using Fields = std::map<std::string, std::string>;

class FieldStabilizer {
 public:
  explicit FieldStabilizer(int hysteresis = 1, int window = 1, bool gated = false, double min_confidence = 0)
      : hysteresis_(hysteresis < 1 ? 1 : hysteresis), window_(window < 1 ? 1 : window), gated_(gated),
        min_confidence_(min_confidence) {}
  // Feeds one (parsed) language output; returns the fields whose reported value changed, in field-name order.
  // scene_changed: the described frame was a key frame because the scene changed (used when gated).
  // confidence: per field, the model's confidence in its value (field_confidence); null: all confident.
  std::vector<std::string> update(const Fields& out, bool scene_changed = false,
                                  const std::map<std::string, float>* confidence = nullptr);
  const Fields& fields() const { return fields_; }
  void reset() {
    fields_.clear();
    candidate_.clear();
    recent_.clear();
  }

 private:
  int hysteresis_, window_;
  bool gated_;
  double min_confidence_;
  Fields fields_;
  std::map<std::string, std::vector<std::string>> recent_;  // field -> its last `window_` outputs, oldest first
  std::map<std::string, std::pair<std::string, int>> candidate_;  // field -> (value, consecutive count)
};

// For a description "field: value; field: value; ..." generated token by token (GenerateResult's text,
// token_probs and token_text_end): per field, the lowest probability of a token that overlaps its value.
std::map<std::string, float> field_confidence(const std::string& text, const std::vector<float>& token_probs,
                                              const std::vector<size_t>& token_text_end);

class TruthScorer {
 public:
  // Once per language output: `raw` is the model's parsed output, `changed` what the stabiliser changed (its
  // previous value was `before`), `truth` the truth of the frame that was described.
  void on_output(const Fields& raw, const std::vector<std::string>& changed, const Fields& before,
                 const Fields& truth);
  // Once per frame: what is reported at this frame against its truth (pts in seconds).
  void on_frame(const Fields& reported, const Fields& truth, double pts_s);
  // Forgets the previous output and truth (a new scenario); the counters stay (changes still pending count as
  // events_open_at_end).
  void new_sequence();

  int64_t truth_frames = 0;                // frames scored
  std::map<std::string, int64_t> field_correct;
  std::map<std::string, int64_t> flicker;      // reported changes while the truth stood
  std::map<std::string, int64_t> flicker_raw;  // the same for the raw outputs (before stabilisation)
  int64_t outputs = 0;                     // language outputs seen
  std::vector<double> event_delay_s;       // truth change -> first frame that shows it
  int64_t events_missed = 0;               // truth changes not shown before the next change of that field
  int64_t events_open_at_end = 0;          // truth changes not shown yet when a sequence ended
  int64_t events_pending() const { return static_cast<int64_t>(pending_.size()); }

  int64_t flicker_total() const;
  int64_t flicker_raw_total() const;

 private:
  Fields prev_out_, prev_truth_;
  bool have_prev_ = false;
  Fields last_truth_;                      // truth at the previous scored frame
  std::map<std::string, double> pending_;  // field -> pts of a truth change not shown yet
};

}  // namespace ev
