// FieldStabilizer (hysteresis on structured fields) and TruthScorer (accuracy, flicker, event delay), shared by the
// stream pipeline and eval --replay.
#include <gtest/gtest.h>

#include "runtime/semantic_state.h"

namespace {

using ev::Fields;
using ev::FieldStabilizer;
using ev::TruthScorer;

TEST(FieldStabilizer, HysteresisOneFollowsAtOnce) {
  FieldStabilizer s(1);
  EXPECT_EQ(s.update({{"light", "red"}, {"sign", "none"}}), (std::vector<std::string>{"light", "sign"}));
  EXPECT_EQ(s.update({{"light", "red"}, {"sign", "none"}}), std::vector<std::string>{});
  EXPECT_EQ(s.update({{"light", "green"}}), std::vector<std::string>{"light"});
  EXPECT_EQ(s.fields().at("light"), "green");
  EXPECT_EQ(s.fields().at("sign"), "none");  // a field missing from an output keeps its value
}

TEST(FieldStabilizer, HysteresisNeedsConsecutiveAgreement) {
  FieldStabilizer s(3);
  EXPECT_EQ(s.update({{"light", "red"}}), std::vector<std::string>{"light"});  // a first value comes at once
  EXPECT_TRUE(s.update({{"light", "green"}}).empty());
  EXPECT_TRUE(s.update({{"light", "green"}}).empty());
  // A one-off return to the current value breaks the count of the new candidate.
  EXPECT_TRUE(s.update({{"light", "red"}}).empty());
  EXPECT_TRUE(s.update({{"light", "green"}}).empty());
  EXPECT_TRUE(s.update({{"light", "green"}}).empty());
  EXPECT_EQ(s.fields().at("light"), "red");
  EXPECT_EQ(s.update({{"light", "green"}}), std::vector<std::string>{"light"});
  EXPECT_EQ(s.fields().at("light"), "green");
}

TEST(FieldStabilizer, VoteWindowTakesTheStrictMajority) {
  FieldStabilizer s(1, 3);
  EXPECT_EQ(s.update({{"lead", "red car"}}), std::vector<std::string>{"lead"});
  EXPECT_TRUE(s.update({{"lead", "blue car"}}).empty());       // 1 of 2: no majority
  EXPECT_TRUE(s.update({{"lead", "red car"}}).empty());        // red 2 of 3: stays red
  EXPECT_EQ(s.update({{"lead", "blue car"}}), std::vector<std::string>{"lead"});  // blue, red, blue
  EXPECT_EQ(s.fields().at("lead"), "blue car");
  EXPECT_TRUE(s.update({{"lead", "white bus"}}).empty());      // red, blue, white: no majority
  EXPECT_EQ(s.fields().at("lead"), "blue car");
}

TEST(FieldConfidence, LeastProbableTokenOfEachValue) {
  // " light: red; lead: white car" in tokens: " light" ":" " red" ";" " lead" ":" " white" " car"
  const std::vector<std::string> pieces = {" light", ":", " red", ";", " lead", ":", " white", " car"};
  const std::vector<float> probs = {0.99f, 0.98f, 0.6f, 0.97f, 0.95f, 0.99f, 0.9f, 0.4f};
  std::string text;
  std::vector<size_t> ends;
  for (const auto& p : pieces) {
    text += p;
    ends.push_back(text.size());
  }
  const auto c = ev::field_confidence(text, probs, ends);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_FLOAT_EQ(c.at("light"), 0.6f);
  EXPECT_FLOAT_EQ(c.at("lead"), 0.4f);
  EXPECT_TRUE(ev::field_confidence("no fields here", {0.5f}, {14}).empty());
}

TEST(FieldStabilizer, UnsureChangesNeedConfirming) {
  FieldStabilizer s(1, 1, false, 0.7);
  const std::map<std::string, float> unsure = {{"light", 0.5f}}, sure = {{"light", 0.9f}};
  EXPECT_EQ(s.update({{"light", "red"}}, false, &unsure), std::vector<std::string>{"light"});  // first: at once
  EXPECT_TRUE(s.update({{"light", "green"}}, false, &unsure).empty());
  EXPECT_EQ(s.fields().at("light"), "red");
  EXPECT_EQ(s.update({{"light", "green"}}, false, &sure), std::vector<std::string>{"light"});
  EXPECT_EQ(s.update({{"light", "red"}}), std::vector<std::string>{"light"});  // no confidence given: applies
  // An unsure change that the model keeps making goes through after 6 consecutive outputs.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(s.update({{"light", "yellow"}}, false, &unsure).empty()) << i;
  EXPECT_EQ(s.update({{"light", "yellow"}}, false, &unsure), std::vector<std::string>{"light"});
}

TEST(TruthScorer, CountsFlickerOnlyWhileTheTruthStands) {
  TruthScorer t;
  FieldStabilizer s(1);
  auto feed = [&](const Fields& out, const Fields& truth) {
    const Fields before = s.fields();
    t.on_output(out, s.update(out), before, truth);
  };
  feed({{"light", "red"}}, {{"light", "red"}});
  feed({{"light", "green"}}, {{"light", "red"}});  // the truth stood: flicker
  feed({{"light", "red"}}, {{"light", "red"}});    // again
  feed({{"light", "green"}}, {{"light", "green"}});  // the truth changed: not flicker
  EXPECT_EQ(t.flicker_total(), 2);
  EXPECT_EQ(t.flicker_raw_total(), 2);
  EXPECT_EQ(t.outputs, 4);
}

TEST(TruthScorer, RawFlickerIsSeenEvenWhenHysteresisHidesIt) {
  TruthScorer t;
  FieldStabilizer s(2);
  const Fields truth = {{"light", "red"}};
  for (const char* v : {"red", "red", "green", "red", "green", "red"}) {
    const Fields out = {{"light", v}};
    const Fields before = s.fields();
    t.on_output(out, s.update(out), before, truth);
  }
  EXPECT_EQ(t.flicker_raw_total(), 4);
  EXPECT_EQ(t.flicker_total(), 0);
  EXPECT_EQ(s.fields().at("light"), "red");
}

TEST(TruthScorer, EventDelayAccuracyAndMisses) {
  TruthScorer t;
  // Truth turns red at t = 1.0; the output shows it from t = 1.3.
  t.on_frame({{"light", "green"}}, {{"light", "green"}}, 0.9);
  t.on_frame({{"light", "green"}}, {{"light", "red"}}, 1.0);
  t.on_frame({{"light", "green"}}, {{"light", "red"}}, 1.1);
  t.on_frame({{"light", "red"}}, {{"light", "red"}}, 1.3);
  ASSERT_EQ(t.event_delay_s.size(), 1u);
  EXPECT_NEAR(t.event_delay_s[0], 0.3, 1e-12);
  EXPECT_EQ(t.truth_frames, 4);
  EXPECT_EQ(t.field_correct.at("light"), 2);
  // Two changes in a row, the first never shown: a miss; one still open when the sequence ends.
  t.on_frame({{"light", "red"}}, {{"light", "yellow"}}, 2.0);
  t.on_frame({{"light", "red"}}, {{"light", "green"}}, 2.1);
  EXPECT_EQ(t.events_missed, 1);
  t.new_sequence();
  EXPECT_EQ(t.events_open_at_end, 1);
  EXPECT_EQ(t.events_pending(), 0);
  // A new sequence does not see a change against the previous one's last truth.
  t.on_frame({{"light", "none"}}, {{"light", "none"}}, 0.0);
  EXPECT_EQ(t.events_pending(), 0);
}

}  // namespace
