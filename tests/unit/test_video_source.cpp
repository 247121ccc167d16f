// Video sources (src/perception/video_source.h): real H.264 clips with audio, files we write ourselves, damaged
// and truncated files, image sequences, the simulator as a source, and the errors for what cannot be opened.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "perception/image.h"
#include "perception/video_source.h"
#include "perception/video_writer.h"

namespace fs = std::filesystem;

namespace {

const fs::path kShared = EDGEVLM_SHARED_DATA_DIR;

fs::path tmp_dir(const char* name) {
  fs::path d = fs::temp_directory_path() / ("edgevlm_vs_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A clip of n frames, each a different flat colour with a moving bar, so that decoding errors would show.
fs::path write_clip(const fs::path& dir, int n, int w = 64, int h = 48, const char* name = "clip.mkv") {
  const fs::path p = dir / name;
  ev::VideoWriter vw;
  ev::VideoWriterOptions o;
  o.gop = 5;
  EXPECT_TRUE(vw.open(p.string(), w, h, 25.0, o).ok());
  std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3));
  for (int i = 0; i < n; ++i) {
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        uint8_t* px = &rgb[static_cast<size_t>((y * w + x) * 3)];
        const bool bar = (x / 4) == (i % (w / 4));
        px[0] = bar ? 255 : static_cast<uint8_t>(i * 9);
        px[1] = bar ? 255 : static_cast<uint8_t>(100 + i);
        px[2] = bar ? 255 : 40;
      }
    EXPECT_TRUE(vw.write(rgb.data()).ok());
  }
  EXPECT_TRUE(vw.close().ok());
  return p;
}

int64_t drain(ev::VideoSource& s, ev::Status* end_status = nullptr) {
  ev::VideoFrame f;
  int64_t n = 0;
  const int64_t base = s.stats().frames;  // frames the caller already took
  double last_pts = -1;
  for (;;) {
    auto r = s.next(&f);
    if (!r.ok()) {
      if (end_status) *end_status = r.status();
      break;
    }
    if (!*r) break;
    EXPECT_EQ(f.index, base + n);
    EXPECT_GE(f.pts_s, last_pts);
    last_pts = f.pts_s;
    EXPECT_EQ(f.image.rgb.size(), static_cast<size_t>(f.image.width) * f.image.height * 3);
    ++n;
  }
  return n;
}

TEST(VideoSource, DecodesTheRealDashcamClipAndSkipsItsAudio) {
  const fs::path clip = kShared / "real/lanelines/solidWhiteRight.mp4";
  if (!fs::exists(clip)) GTEST_SKIP() << "no ../shared/data (" << clip << ")";
  auto s = ev::open_video_source(clip.string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ((*s)->width(), 960);
  EXPECT_EQ((*s)->height(), 540);
  EXPECT_NEAR((*s)->fps(), 25.0, 0.01);
  EXPECT_EQ(drain(**s), 221);
  const auto st = (*s)->stats();
  EXPECT_EQ(st.frames, 221);
  EXPECT_GT(st.other_packets, 0) << "the clip has an AAC track";
  EXPECT_EQ(st.decode_errors, 0);
  EXPECT_NE((*s)->describe().find("h264"), std::string::npos) << (*s)->describe();
}

TEST(VideoSource, ReadsBackWhatTheWriterWrote) {
  const fs::path d = tmp_dir("roundtrip");
  const fs::path clip = write_clip(d, 30);
  ev::VideoSourceOptions o;
  auto s = ev::open_video_source(clip.string(), o);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ev::VideoFrame f;
  ASSERT_TRUE((*s)->next(&f).value());
  EXPECT_EQ(f.image.width, 64);
  EXPECT_EQ(f.image.height, 48);
  EXPECT_DOUBLE_EQ(f.pts_s, 0.0);
  // Frame 0: the bar is at x 0..3, the rest is (0, 100, 40) give or take the codec.
  const uint8_t* px = f.image.px(40, 20);
  EXPECT_NEAR(px[1], 100, 12);
  EXPECT_EQ(1 + drain(**s), 30);
  fs::remove_all(d);
}

TEST(VideoSource, MaxFramesStopsEarly) {
  const fs::path d = tmp_dir("max");
  const fs::path clip = write_clip(d, 20);
  ev::VideoSourceOptions o;
  o.max_frames = 7;
  auto s = ev::open_video_source(clip.string(), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(drain(**s), 7);
  fs::remove_all(d);
}

TEST(VideoSource, TruncatedFileEndsCleanlyWithTheFramesItHas) {
  const fs::path d = tmp_dir("trunc");
  const fs::path clip = write_clip(d, 40);
  const auto size = fs::file_size(clip);
  fs::resize_file(clip, size * 6 / 10);
  auto s = ev::open_video_source(clip.string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ev::Status end;
  const int64_t n = drain(**s, &end);
  EXPECT_GT(n, 0);
  EXPECT_LT(n, 40);
  if (!end.ok()) EXPECT_NE(end.message().find(clip.string()), std::string::npos) << end.to_string();
  fs::remove_all(d);
}

TEST(VideoSource, DamagedPacketsAreSkippedNotFatal) {
  // MPEG-TS, as a broadcast or camera stream would arrive: 188-byte packets, so the demuxer resynchronises after
  // the damage (a Matroska file with a single cluster has nothing to resynchronise to).
  const fs::path d = tmp_dir("damage");
  const fs::path clip = write_clip(d, 40, 64, 48, "clip.ts");
  {
    std::fstream f(clip, std::ios::in | std::ios::out | std::ios::binary);
    const auto size = static_cast<int64_t>(fs::file_size(clip));
    for (int64_t off = size / 3; off < size / 3 + 400 && off < size; off += 7) {  // scribble inside the data
      f.seekp(off);
      f.put(static_cast<char>(0xA5));
    }
  }
  auto s = ev::open_video_source(clip.string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ev::Status end;
  const int64_t n = drain(**s, &end);
  EXPECT_GT(n, 10) << "frames before and after the damage still decode; ended with " << end.to_string();
  EXPECT_LT(n, 41);
  fs::remove_all(d);
}

TEST(VideoSource, ImageSequenceByPattern) {
  const fs::path d = tmp_dir("seq");
  for (int i = 0; i < 5; ++i) {
    ev::Image img = ev::Image::make(32, 16, 3);
    for (auto& b : img.rgb) b = static_cast<uint8_t>(40 * i);
    auto png = ev::encode_png(img);
    ASSERT_TRUE(png.ok());
    char name[32];
    std::snprintf(name, sizeof name, "f_%03d.png", i);
    std::ofstream(d / name, std::ios::binary).write(reinterpret_cast<const char*>(png->data()),
                                                    static_cast<std::streamsize>(png->size()));
  }
  auto s = ev::open_video_source((d / "f_%03d.png").string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ev::VideoFrame f;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*s)->next(&f).value()) << i;
    EXPECT_EQ(f.image.width, 32);
    EXPECT_EQ(f.image.rgb[0], 40 * i);
  }
  EXPECT_FALSE((*s)->next(&f).value());
  fs::remove_all(d);
}

TEST(VideoSource, SimulatorAsASourceCarriesTheTruth) {
  ev::VideoSourceOptions o;
  o.sim_frames = 12;
  o.sim_width = 96;
  o.sim_height = 64;
  auto s = ev::open_video_source("sim:42", o);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  ev::VideoFrame f;
  int n = 0;
  while ((*s)->next(&f).value()) {
    EXPECT_EQ(f.image.width, 96);
    EXPECT_EQ(f.image.height, 64);
    ASSERT_TRUE(f.truth.is_object());
    EXPECT_TRUE(f.truth.contains("description"));
    EXPECT_NEAR(f.pts_s, n / 30.0, 1e-9);
    ++n;
  }
  EXPECT_EQ(n, 12);
}

TEST(VideoSource, ErrorsNameTheInput) {
  auto missing = ev::open_video_source("/nonexistent/dir/clip.mp4");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/dir/clip.mp4"), std::string::npos);

  const fs::path d = tmp_dir("errors");
  const fs::path txt = d / "notes.mp4";
  std::ofstream(txt) << "this is not a video at all, just some text in a file named like one\n";
  auto junk = ev::open_video_source(txt.string());
  ASSERT_FALSE(junk.ok());
  EXPECT_NE(junk.status().message().find("notes.mp4"), std::string::npos) << junk.status().to_string();

  auto raw = ev::open_video_source("-");  // raw frames on stdin need a size
  ASSERT_FALSE(raw.ok());
  EXPECT_NE(raw.status().message().find("--raw-size"), std::string::npos);

  auto bad_sim = ev::open_video_source("sim:/nonexistent/spec.json");
  ASSERT_FALSE(bad_sim.ok());
  EXPECT_NE(bad_sim.status().message().find("spec.json"), std::string::npos);
  EXPECT_FALSE(ev::open_video_source("").ok());
  fs::remove_all(d);
}

}  // namespace
