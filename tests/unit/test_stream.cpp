// The live pipeline (runtime/stream.h) end to end on the shipped student and the simulator: every frame through
// the vision stage when the source waits (files read as fast as possible), a bounded number of language runs,
// key frames, truth scoring, and the events it reports. Also the key-frame anchor on its own.
#include <gtest/gtest.h>

#include <filesystem>

#include "perception/keyframe.h"
#include "perception/video_source.h"
#include "runtime/stream.h"
#include "tools/eval.h"

namespace fs = std::filesystem;

namespace {

TEST(KeyframeAnchor, ThresholdAndMaxAge) {
  ev::KeyframeOptions o;
  o.threshold = 0.1;
  o.max_age_s = 1.0;
  ev::KeyframeAnchor a(o);
  double d = 0;
  EXPECT_TRUE(a.update({1, 0}, 0.0, &d));  // no anchor yet
  EXPECT_DOUBLE_EQ(d, 1.0);
  EXPECT_FALSE(a.update({1, 0.1f}, 0.1, &d));  // 1 - cos(5.7 deg) = 0.005
  EXPECT_NEAR(d, 1 - 1 / std::sqrt(1.01), 1e-6);
  EXPECT_TRUE(a.update({0, 1}, 0.2, &d));  // orthogonal: distance 1
  EXPECT_FALSE(a.update({0, 1}, 1.1, &d));
  EXPECT_TRUE(a.update({0, 1}, 1.25, &d));  // anchor from t = 0.2 is older than 1 s
  EXPECT_DOUBLE_EQ(d, 0.0);
  const float x[6] = {1, 2, 3, 5, 6, 7};
  EXPECT_EQ(ev::mean_pool(x, 2, 3), (std::vector<float>{3, 4, 5}));
}

TEST(KeyframeAnchor, HazardDeltaAndReasons) {
  ev::KeyframeOptions o;
  o.threshold = 0.5;
  o.max_age_s = 10;
  o.hazard_delta = 0.3;
  ev::KeyframeAnchor a(o);
  const std::vector<float> low = {0.1f, 0.1f}, ped = {0.6f, 0.1f}, near = {0.35f, 0.1f};
  EXPECT_EQ(a.decide({1, 0}, &low, 0.0), ev::KeyReason::kFirst);
  EXPECT_EQ(a.decide({1, 0}, &near, 0.1), ev::KeyReason::kNone);  // moved 0.25 < 0.3
  EXPECT_EQ(a.decide({1, 0}, &ped, 0.2), ev::KeyReason::kHazard);  // moved 0.5 since the anchor
  EXPECT_EQ(a.decide({1, 0}, &ped, 0.3), ev::KeyReason::kNone);   // the anchor now has it
  EXPECT_EQ(a.decide({0, 1}, &ped, 0.4), ev::KeyReason::kChange);
  EXPECT_EQ(a.decide({0, 1}, nullptr, 11.0), ev::KeyReason::kAge);
  EXPECT_STREQ(ev::key_reason_name(ev::KeyReason::kHazard), "hazard");
  o.hazard_delta = 0;  // off: hazards are ignored
  ev::KeyframeAnchor b(o);
  EXPECT_EQ(b.decide({1, 0}, &low, 0.0), ev::KeyReason::kFirst);
  EXPECT_EQ(b.decide({1, 0}, &ped, 0.1), ev::KeyReason::kNone);
}

TEST(EvalReplay, StreamPolicyAgainstFrameByFrame) {
  ev::EvalOptions o;
  o.model = (fs::path(EDGEVLM_SOURCE_DIR) / "models" / "road-student").string();
  o.seed = 1000003;
  o.scenarios = 1;
  o.frames = 45;
  o.threads = 1;
  o.progress = false;
  o.replay = true;
  o.thresholds = {0.0, 0.3};
  o.hysteresis = {1, 2};
  auto j = ev::eval_replay_json(o);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  const auto& p = (*j)["policies"];
  ASSERT_EQ(p.size(), 2u * 2u + 2u);  // 4 stream settings + the two frame-by-frame references
  for (const auto& x : p) {
    SCOPED_TRACE(x.dump());
    EXPECT_EQ(x["frames"], 45);
    EXPECT_GE(x["mean_field_accuracy"].get<double>(), 0.0);
    EXPECT_LE(x["mean_field_accuracy"].get<double>(), 1.0);
    EXPECT_GE(x["language_runs"].get<int64_t>(), 1);
  }
  // Threshold 0: every frame is a key frame, so at 5 Hz of stream time there is a run per tick: 45 frames at
  // 30 FPS = 1.5 s -> 8 ticks, as many as frame by frame at the same cadence.
  EXPECT_DOUBLE_EQ(p[0]["keyframe_rate"].get<double>(), 1.0);
  EXPECT_EQ(p[0]["language_runs"], p[4]["language_runs"]);
  EXPECT_EQ(p[4]["language_runs"], 8);
  EXPECT_EQ(p[5]["language_runs"], 45);  // every frame
  // The same outputs, so threshold 0 without hysteresis is frame by frame at cadence but for the adapter.
  EXPECT_LE(p[2]["keyframe_rate"].get<double>(), p[0]["keyframe_rate"].get<double>());
  EXPECT_LE(p[2]["language_runs"].get<int64_t>(), p[0]["language_runs"].get<int64_t>());
  // Absurd settings are refused by name.
  o.thresholds = {-1};
  auto bad = ev::eval_replay_json(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--keyframe-threshold"), std::string::npos);
}

TEST(StreamPipeline, SimulatorThroughTheStudent) {
  const fs::path model = fs::path(EDGEVLM_SOURCE_DIR) / "models" / "road-student";
  ASSERT_TRUE(fs::exists(model / "config.json"));
  ev::EngineOptions eo;
  eo.threads = 1;
  eo.text_threads = 1;
  auto eng = ev::Engine::load(model.string(), eo);
  ASSERT_TRUE(eng.ok()) << eng.status().to_string();
  ev::VideoSourceOptions so;
  so.sim_frames = 40;
  auto src = ev::open_video_source("sim:1000003", so);
  ASSERT_TRUE(src.ok()) << src.status().to_string();
  ev::StreamOptions opt;
  opt.language_hz = 50;
  opt.keyframe.threshold = 0.0;  // every frame is a key frame: the mailbox then always holds the newest
  ev::StreamPipeline pipe(**eng, **src, opt);
  int semantic = 0, keyframes = 0;
  int64_t last_key = -1;
  ev::Status s = pipe.run([&](const ev::StreamEvent& e) {
    if (e.type == "semantic") {
      ++semantic;
      EXPECT_TRUE(e.data.contains("fields"));
      EXPECT_FALSE(e.data["changed"].empty());
    }
    if (e.type == "keyframe") {
      ++keyframes;
      EXPECT_GT(e.frame, last_key);
      last_key = e.frame;
    }
  });
  ASSERT_TRUE(s.ok()) << s.to_string();
  const ev::StreamStats st = pipe.stats();
  EXPECT_EQ(st.frames_in, 40);
  EXPECT_EQ(st.frames_vision, 40);  // a file-like source waits: nothing is dropped
  EXPECT_EQ(st.frames_dropped, 0);
  EXPECT_EQ(st.keyframes, 40);
  EXPECT_EQ(keyframes, 40);
  EXPECT_GE(st.language_runs, 1);
  EXPECT_LE(st.language_runs, 40);
  EXPECT_EQ(st.keyframes, st.language_runs + st.keyframes_superseded);  // each key frame described or replaced
  EXPECT_EQ(st.semantic_updates, semantic);
  EXPECT_EQ(st.truth_frames, 40);
  EXPECT_EQ(st.vision_latency_s.count(), 40);
  EXPECT_FALSE(pipe.current_fields().empty());
}

TEST(StreamPipeline, RefusesAbsurdOptions) {
  const fs::path model = fs::path(EDGEVLM_SOURCE_DIR) / "models" / "road-student";
  ev::EngineOptions eo;
  eo.threads = 1;
  eo.text_threads = 1;
  auto eng = ev::Engine::load(model.string(), eo);
  ASSERT_TRUE(eng.ok());
  auto src = ev::open_video_source("sim:5");
  ASSERT_TRUE(src.ok());
  ev::StreamOptions opt;
  opt.language_hz = 0;
  EXPECT_FALSE(ev::StreamPipeline(**eng, **src, opt).run(nullptr).ok());
  opt = {};
  opt.queue_frames = 0;
  EXPECT_FALSE(ev::StreamPipeline(**eng, **src, opt).run(nullptr).ok());
}

}  // namespace
