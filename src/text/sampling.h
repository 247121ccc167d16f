// Next-token selection from logits: greedy (argmax) or seeded random sampling after the transformers logits
// pipeline: repetition penalty (RepetitionPenaltyLogitsProcessor) -> temperature -> top-k -> top-p
// (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper in transformers/generation/logits_process.py,
// applied in that order by GenerationMixin._get_logits_processor). The random stream is std::mt19937_64, so
// a given seed reproduces a run exactly here, though not torch.multinomial's choices.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace ev::text {

struct SamplerParams {
  float temperature = 0.0f;         // <= 0: greedy (argmax, lowest index on ties)
  int top_k = 0;                    // <= 0: off
  float top_p = 1.0f;               // >= 1: off
  uint64_t seed = 0;
  float repetition_penalty = 1.0f;  // 1: off; also applied before greedy, as transformers does
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params = {});

  // Picks a token id in [0, n) from logits[0..n). NaN logits never win. Returns -1 only when n <= 0 or logits
  // is null. The chosen token is added to the repetition-penalty history.
  int32_t sample(const float* logits, int n);

  // Adds tokens (typically the prompt) to the repetition-penalty history (transformers penalises every token
  // of input_ids, prompt included; each distinct token once).
  void accept(int32_t token);
  void accept(const std::vector<int32_t>& tokens);
  // Clears the history and restarts the random stream from the seed.
  void reset();

  const SamplerParams& params() const { return params_; }

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<uint8_t> seen_;  // seen_[id] != 0: id is in the history
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

// Argmax over logits[0..n), lowest index on ties, NaN ignored; -1 when n <= 0 or all are NaN.
int32_t argmax(const float* logits, int n);

}  // namespace ev::text
