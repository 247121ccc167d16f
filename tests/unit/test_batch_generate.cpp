// Engine::generate_batch: several prompts decoded together, one decode graph per step for all of them
// (VlmModel::build_decode_batch, per-sequence positions and cache slots). On the reference backend (exact, the
// same arithmetic whatever the batch) every sequence's tokens and text must equal what generate_encoded gives it
// alone, also when the sequences stop at different steps and when the batch state is reused by a second call.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "perception/image.h"
#include "runtime/engine.h"

namespace {

const std::string kFixtures = EDGEVLM_FIXTURE_DIR;

TEST(BatchGenerate, EqualsOneSequenceAtATime) {
  ev::EngineOptions o;
  o.use_reference_backend = true;
  o.precision = ev::Precision::kF32;
  o.vision_precision = ev::Precision::kF32;
  auto e = ev::Engine::load(kFixtures + "/tiny-smolvlm", o);
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  std::vector<ev::EncodedImages> encs;
  for (const char* f : {"img_a.jpg", "img_b.png", "img_c.png"}) {
    auto img = ev::load_image(kFixtures + "/images/" + f);
    ASSERT_TRUE(img.ok()) << img.status().to_string();
    auto enc = (*e)->encode_images({*img}, 0);
    ASSERT_TRUE(enc.ok()) << enc.status().to_string();
    encs.push_back(std::move(enc).value());
  }
  auto msgs = ev::Engine::user_turn(1, "Describe the road.");
  ASSERT_TRUE(msgs.ok());
  for (bool stop_at_eos : {false, true}) {
    ev::GenerateOptions gen;
    gen.max_new_tokens = 7;
    gen.stop_at_eos = stop_at_eos;
    gen.token_probs = true;
    std::vector<ev::GenerateResult> one;
    for (const auto& enc : encs) {
      auto r = (*e)->generate_encoded(enc, *msgs, gen);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      one.push_back(std::move(r).value());
    }
    for (int round = 0; round < 2; ++round) {  // the second call reuses the batch cache and step graph
      auto batch = (*e)->generate_batch(encs, *msgs, gen);
      ASSERT_TRUE(batch.ok()) << batch.status().to_string();
      ASSERT_EQ(batch->size(), encs.size());
      for (size_t b = 0; b < encs.size(); ++b) {
        EXPECT_EQ((*batch)[b].tokens, one[b].tokens) << "sequence " << b << " round " << round;
        EXPECT_EQ((*batch)[b].text, one[b].text) << "sequence " << b;
        EXPECT_EQ((*batch)[b].stats.stop_reason, one[b].stats.stop_reason) << "sequence " << b;
        ASSERT_EQ((*batch)[b].token_probs.size(), one[b].token_probs.size());
        for (size_t k = 0; k < one[b].token_probs.size(); ++k)
          EXPECT_NEAR((*batch)[b].token_probs[k], one[b].token_probs[k], 1e-6);
      }
    }
  }
  // An empty batch is no work; an absurd token budget is refused.
  ev::GenerateOptions gen;
  auto none = (*e)->generate_batch({}, *msgs, gen);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  gen.max_new_tokens = -1;
  EXPECT_FALSE((*e)->generate_batch(encs, *msgs, gen).ok());
}

}  // namespace
