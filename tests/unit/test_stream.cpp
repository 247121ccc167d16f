// The live pipeline (runtime/stream.h) end to end on the shipped student and the simulator: every frame through
// the vision stage when the source waits (files read as fast as possible), a bounded number of language runs,
// key frames, truth scoring, and the events it reports. Also the key-frame anchor on its own.
#include <gtest/gtest.h>

#include <filesystem>

#include "perception/keyframe.h"
#include "perception/video_source.h"
#include "runtime/stream.h"

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
  EXPECT_EQ(st.vision_latency_s.size(), 40u);
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
