// Overlays (src/perception/overlay.h): FreeType text where it is drawn and nowhere else, word wrapping, font
// errors, the pipeline state on small and large frames, and the recorder's video read back with VideoSource.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "perception/image.h"
#include "perception/overlay.h"
#include "perception/video_source.h"

namespace fs = std::filesystem;

namespace {

fs::path tmp_dir(const char* name) {
  fs::path d = fs::temp_directory_path() / ("edgevlm_ov_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

bool have_default_font() {
  for (const auto& p : ev::default_font_paths())
    if (fs::exists(p)) return true;
  return false;
}

#define REQUIRE_FONT()                                                                     \
  if (!have_default_font()) GTEST_SKIP() << "no default font (install fonts-dejavu-core)"; \
  static_assert(true)

ev::TextRenderer default_font() {
  auto f = ev::TextRenderer::open();
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  return f.ok() ? std::move(f).value() : ev::TextRenderer();
}

ev::Image flat(int w, int h, uint8_t v) {
  ev::Image img = ev::Image::make(w, h);
  std::fill(img.rgb.begin(), img.rgb.end(), v);
  return img;
}

bool same_px(const ev::Image& a, const ev::Image& b, int x, int y) {
  const uint8_t* p = a.px(x, y);
  const uint8_t* q = b.px(x, y);
  return p[0] == q[0] && p[1] == q[1] && p[2] == q[2];
}

// Mean absolute difference over a rectangle (all three channels).
double mean_diff(const ev::Image& a, const ev::Image& b, ev::Rect r) {
  double s = 0;
  for (int y = r.y; y < r.y + r.h; ++y)
    for (int x = r.x; x < r.x + r.w; ++x)
      for (int c = 0; c < 3; ++c) s += std::abs(static_cast<int>(a.px(x, y)[c]) - static_cast<int>(b.px(x, y)[c]));
  return s / (3.0 * r.w * r.h);
}

ev::OverlayState busy_state() {
  ev::OverlayState s;
  s.fields = {{"light", "red"},     {"pedestrian", "crossing left"},  {"lead", "silver car braking"},
              {"sign", "none"},     {"construction", "no"},           {"lighting", "day"},
              {"weather", "clear"}, {"hazard", "pedestrian, braking"}};
  s.alerts = {{"pedestrian", 0.91f}, {"braking", 0.77f}};
  s.keyframe = true;
  s.frame = 42;
  s.pts_s = 1.4;
  s.vision_latency_s = 0.05;
  s.staleness_s = 0.3;
  return s;
}

}  // namespace

TEST(Overlay, TextChangesPixelsOnlyInsideItsBox) {
  REQUIRE_FONT();
  ev::TextRenderer font = default_font();
  ev::Image img = flat(200, 60, 0);
  const ev::Image before = img;
  ev::TextStyle ts;
  ts.px = 20;
  ts.color = {255, 0, 0};
  const ev::Rect box = font.draw(img, 10, 12, "Hello, edgevlm", ts);
  EXPECT_EQ(box.x, 10);
  EXPECT_EQ(box.y, 12);
  EXPECT_EQ(box.h, font.line_height(20));
  EXPECT_EQ(box.w, font.text_width("Hello, edgevlm", 20));
  EXPECT_GT(box.w, 100);
  int inside = 0, max_r = 0;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      if (same_px(img, before, x, y)) continue;
      // Glyph bitmaps may reach a pixel past the advance box (side bearings); nothing farther.
      EXPECT_TRUE(x >= box.x - 2 && x < box.x + box.w + 2 && y >= box.y && y < box.y + box.h)
          << "pixel (" << x << ", " << y << ") changed outside the text box";
      const uint8_t* p = img.px(x, y);
      EXPECT_EQ(p[1], 0);
      EXPECT_EQ(p[2], 0);
      max_r = std::max(max_r, static_cast<int>(p[0]));
      ++inside;
    }
  EXPECT_GT(inside, 200);
  EXPECT_EQ(max_r, 255);  // fully covered pixels take the colour exactly
}

TEST(Overlay, BackgroundBoxBlendsAndPads) {
  REQUIRE_FONT();
  ev::TextRenderer font = default_font();
  ev::Image img = flat(120, 40, 200);
  const ev::Image before = img;
  ev::TextStyle ts;
  ts.px = 12;
  ts.background = true;
  ts.background_color = {0, 0, 0};
  ts.background_opacity = 0.5f;
  ts.padding = 3;
  const ev::Rect box = font.draw(img, 5, 5, "ok", ts);
  EXPECT_EQ(box.w, font.text_width("ok", 12) + 6);
  EXPECT_EQ(box.h, font.line_height(12) + 6);
  EXPECT_EQ(img.px(box.x, box.y)[0], 100);  // a corner of the box: half way from 200 to 0
  EXPECT_TRUE(same_px(img, before, box.x - 1, box.y));
  EXPECT_TRUE(same_px(img, before, box.x + box.w, box.y + box.h));
  EXPECT_TRUE(same_px(img, before, 119, 39));
  const ev::Rect m = font.measure("ok", ts);
  EXPECT_EQ(m.w, box.w);
  EXPECT_EQ(m.h, box.h);
  const ev::Image drawn = img;
  const ev::Rect none = font.draw(img, 50, 20, "", ts);  // empty text: no box either
  EXPECT_EQ(none.w, 0);
  EXPECT_EQ(none.h, 0);
  EXPECT_EQ(img.rgb, drawn.rgb);
}

TEST(Overlay, WrapRespectsTheWidth) {
  REQUIRE_FONT();
  ev::TextRenderer font = default_font();
  const std::string text = "the quick brown fox jumps over the lazy dog";
  const auto lines = font.wrap(text, 16, 90);
  ASSERT_GT(lines.size(), 2u);
  std::string joined;
  for (const auto& l : lines) {
    EXPECT_LE(font.text_width(l, 16), 90) << l;
    EXPECT_FALSE(l.empty());
    EXPECT_NE(l.front(), ' ');
    EXPECT_NE(l.back(), ' ');
    joined += (joined.empty() ? "" : " ") + l;
  }
  EXPECT_EQ(joined, text);
  // Greedy: no line could have taken the next line's first word.
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    const std::string next_word = lines[i + 1].substr(0, lines[i + 1].find(' '));
    EXPECT_GT(font.text_width(lines[i] + " " + next_word, 16), 90);
  }
  // A word wider than the limit is broken between characters.
  const std::string word = "supercalifragilisticexpialidocious";
  const auto pieces = font.wrap(word, 16, 40);
  ASSERT_GT(pieces.size(), 2u);
  std::string w;
  for (const auto& p : pieces) {
    EXPECT_LE(font.text_width(p, 16), 40) << p;
    w += p;
  }
  EXPECT_EQ(w, word);
  // Explicit breaks, no limit.
  EXPECT_EQ(font.wrap("a\nbb\n\nc", 16, 0), (std::vector<std::string>{"a", "bb", "", "c"}));
  // The drawn box honours max_width (plus padding).
  ev::TextStyle ts;
  ts.px = 16;
  ts.max_width = 90;
  ts.background = true;
  ts.padding = 2;
  const ev::Rect r = font.measure(text, ts);
  EXPECT_LE(r.w, 90 + 4);
  EXPECT_EQ(r.h, static_cast<int>(lines.size()) * font.line_height(16) + 4);
}

TEST(Overlay, Utf8AndBadBytesDoNotCrash) {
  REQUIRE_FONT();
  ev::TextRenderer font = default_font();
  EXPECT_GT(font.text_width("caf\xC3\xA9 \xC2\xB7 30 km/h", 14), font.text_width("caf", 14));
  EXPECT_GT(font.text_width("\xFF\xFE\xC3", 14), 0);  // each bad byte a U+FFFD
  EXPECT_EQ(font.text_width("", 14), 0);
  ev::Image img = flat(40, 20, 0);
  font.draw(img, -30, -10, "\xE2\x82\xAC clipped \xF0\x9F\x9A\x97", ev::TextStyle{});
  ev::Image grey = ev::Image::make(20, 20, 1);
  font.draw(grey, 0, 0, "x", ev::TextStyle{});  // not RGB: left alone
  EXPECT_EQ(grey.rgb, std::vector<uint8_t>(400, 0));
}

TEST(Overlay, MissingOrCorruptFontIsAnErrorNamingTheFile) {
  const std::string missing = "/nonexistent/fonts/NoSuchFont.ttf";
  auto r = ev::TextRenderer::open(missing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ev::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(missing), std::string::npos) << r.status().message();

  const fs::path d = tmp_dir("font");
  const std::string bad = (d / "garbage.ttf").string();
  {
    std::ofstream f(bad, std::ios::binary);
    f << "this is not a TrueType font, just some bytes that FreeType cannot parse";
  }
  auto c = ev::TextRenderer::open(bad);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ev::StatusCode::kCorrupt);
  EXPECT_NE(c.status().message().find(bad), std::string::npos) << c.status().message();
  const std::string empty = (d / "empty.otf").string();
  std::ofstream(empty, std::ios::binary).close();
  auto e = ev::TextRenderer::open(empty);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find(empty), std::string::npos) << e.status().message();
  auto dir = ev::TextRenderer::open(d.string());
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find(d.string()), std::string::npos);

  // The recorder reports the font (and the video) it was opening.
  ev::OverlayRecorder rec;
  ev::OverlayRecorderOptions ro;
  ro.font = missing;
  const std::string video = (d / "ov.mkv").string();
  ev::Status s = rec.open(video, 64, 48, 25, ro);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(missing), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(video), std::string::npos) << s.message();
  EXPECT_FALSE(rec.is_open());
  EXPECT_FALSE(rec.push(flat(64, 48, 0), {}));  // not open: ignored
  EXPECT_EQ(rec.pushed(), 0);
  EXPECT_TRUE(rec.close().ok());
  fs::remove_all(d);
}

TEST(Overlay, DrawOnSmallAndLargeFrames) {
  REQUIRE_FONT();
  ev::TextRenderer font = default_font();
  EXPECT_EQ(ev::overlay_text_px(224), 11);
  EXPECT_EQ(ev::overlay_text_px(720), 20);
  EXPECT_EQ(ev::overlay_text_px(16), ev::OverlayStyle{}.min_px);
  for (const auto& [w, h] : std::vector<std::pair<int, int>>{{224, 224}, {1280, 720}}) {
    SCOPED_TRACE(std::to_string(w) + "x" + std::to_string(h));
    const ev::Image before = flat(w, h, 128);
    ev::Image img = before;
    ev::draw_overlay(img, busy_state(), {}, font);
    // Field panel at the left (below the alerts on a small frame): dark box with light text.
    const int px = ev::overlay_text_px(h);
    EXPECT_GT(mean_diff(img, before, {0, 0, w * 2 / 5, h / 2}), 15);
    // Alerts top-right: red labels.
    int red = 0;
    for (int y = 0; y < 3 * px; ++y)
      for (int x = w - 4 * px; x < w; ++x) {
        const uint8_t* p = img.px(x, y);
        red += p[0] > 180 && p[1] < 80 && p[2] < 80;
      }
    EXPECT_GT(red, px * px);
    // Key frame: the bottom row is the key colour away from the footer.
    const uint8_t* bar = img.px(w / 2 + w / 4, h - 1);
    EXPECT_GT(bar[0], 200);
    EXPECT_GT(bar[1], 150);
    EXPECT_LT(bar[2], 60);
    // A large frame keeps most of its picture.
    if (h >= 720) {
      EXPECT_TRUE(same_px(img, before, w / 2, h / 2));
      EXPECT_LT(mean_diff(img, before, {0, 0, w, h}), 12);
    }
    // Without alerts or a key frame those marks are gone.
    ev::OverlayState quiet = busy_state();
    quiet.alerts.clear();
    quiet.keyframe = false;
    ev::Image q = before;
    ev::draw_overlay(q, quiet, {}, font);
    EXPECT_TRUE(same_px(q, before, w - 2, 2));
    EXPECT_TRUE(same_px(q, before, w / 2 + w / 4, h - 1));
  }
  // The raw text when there are no fields; nothing at all to show still draws a placeholder, and no crash on a
  // frame smaller than the text.
  ev::OverlayState raw;
  raw.text = "a red light ahead; a pedestrian crossing from the left";
  ev::Image img = flat(224, 224, 128);
  ev::draw_overlay(img, raw, {}, font);
  EXPECT_GT(mean_diff(img, flat(224, 224, 128), {4, 4, 60, 12}), 20);
  ev::Image tiny = flat(16, 16, 128);
  ev::draw_overlay(tiny, busy_state(), {}, font);
  ev::Status s = ev::draw_overlay(tiny, ev::OverlayState{});  // the shared default font
  EXPECT_TRUE(s.ok()) << s.to_string();
}

TEST(Overlay, RecorderWritesADecodableVideo) {
  REQUIRE_FONT();
  const fs::path d = tmp_dir("rec");
  const int n = 12;
  // Odd input size without enlargement: the video drops the last column and row.
  {
    const std::string path = (d / "odd.mkv").string();
    ev::OverlayRecorder rec;
    ev::OverlayRecorderOptions ro;
    ro.min_height = 0;
    ro.queue_frames = n;  // room for every frame: none dropped
    ASSERT_TRUE(rec.open(path, 225, 225, 25, ro).ok());
    EXPECT_EQ(rec.width(), 224);
    EXPECT_EQ(rec.height(), 224);
    EXPECT_EQ(rec.scale(), 1);
    ev::OverlayState st = busy_state();
    st.alerts.clear();  // the panel then starts at the top-left corner
    for (int i = 0; i < n; ++i) {
      st.frame = i;
      st.keyframe = i % 4 == 0;
      EXPECT_TRUE(rec.push(flat(225, 225, 100), st));
    }
    ev::Status s = rec.close();
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(rec.written(), n);
    EXPECT_EQ(rec.dropped(), 0);
    EXPECT_TRUE(rec.close().ok());  // twice is fine

    auto src = ev::open_video_source(path);
    ASSERT_TRUE(src.ok()) << src.status().to_string();
    ev::VideoFrame f;
    int frames = 0;
    const ev::Image input = flat(224, 224, 100);
    const int px = ev::overlay_text_px(224);
    for (;;) {
      auto r = (*src)->next(&f);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      if (!*r) break;
      ASSERT_EQ(f.image.width, 224);
      ASSERT_EQ(f.image.height, 224);
      // The field panel differs from the input; a spot of bare picture does not (beyond coding noise).
      EXPECT_GT(mean_diff(f.image, input, {px, px, 3 * px, 2 * px}), 15);
      EXPECT_LT(mean_diff(f.image, input, {180, 120, 16, 16}), 6);
      ++frames;
    }
    EXPECT_EQ(frames, n);
  }
  // A small frame is enlarged for the overlay (224 -> 448).
  {
    const std::string path = (d / "big.mp4").string();
    ev::OverlayRecorder rec;
    ev::OverlayRecorderOptions ro;
    ro.queue_frames = 4;
    ASSERT_TRUE(rec.open(path, 224, 224, 30, ro).ok());
    EXPECT_EQ(rec.scale(), 2);
    EXPECT_EQ(rec.width(), 448);
    for (int i = 0; i < 4; ++i) rec.push(flat(224, 224, 60), busy_state());
    ASSERT_TRUE(rec.close().ok());
    auto src = ev::open_video_source(path);
    ASSERT_TRUE(src.ok()) << src.status().to_string();
    ev::VideoFrame f;
    int frames = 0;
    for (;;) {
      auto r = (*src)->next(&f);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      if (!*r) break;
      EXPECT_EQ(f.image.width, 448);
      EXPECT_EQ(f.image.height, 448);
      ++frames;
    }
    EXPECT_EQ(frames, rec.written());
    EXPECT_EQ(rec.written() + rec.dropped(), 4);
  }
  fs::remove_all(d);
}

TEST(Overlay, RecorderDropsInsteadOfBlocking) {
  REQUIRE_FONT();
  const fs::path d = tmp_dir("drop");
  ev::OverlayRecorder rec;
  ev::OverlayRecorderOptions ro;
  ro.queue_frames = 1;
  ro.min_height = 0;
  ASSERT_TRUE(rec.open((d / "drop.mkv").string(), 320, 240, 30, ro).ok());
  const int n = 40;
  int refused = 0;
  const ev::Image frame = flat(320, 240, 90);
  for (int i = 0; i < n; ++i) refused += !rec.push(frame, busy_state());
  rec.push(ev::Image{}, {});  // an empty frame is dropped, not written
  ASSERT_TRUE(rec.close().ok());
  EXPECT_EQ(rec.pushed(), n + 1);
  EXPECT_EQ(rec.written() + rec.dropped(), rec.pushed());
  EXPECT_EQ(rec.dropped(), refused + 1);
  EXPECT_GE(rec.written(), 1);
  EXPECT_FALSE(rec.push(frame, {}));  // closed
  EXPECT_EQ(rec.pushed(), n + 1);

  // A file the writer cannot create: the error names it.
  ev::OverlayRecorder bad;
  const std::string nowhere = (d / "no_such_dir" / "ov.mp4").string();
  ev::Status s = bad.open(nowhere, 64, 48, 25, ro);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(nowhere), std::string::npos) << s.message();
  fs::remove_all(d);
}
