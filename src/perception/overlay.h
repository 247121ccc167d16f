// Overlays on RGB8 frames: text through FreeType, the streaming pipeline's state drawn onto a frame, and a recorder
// that writes the overlaid frames to a video file on its own thread.
//
//   EV_ASSIGN_OR_RETURN(TextRenderer font, TextRenderer::open());          // DejaVu Sans unless a path is given
//   TextStyle ts;
//   ts.px = 14;
//   ts.background = true;
//   ts.max_width = 200;                                                     // word-wrapped at 200 pixels
//   font.draw(img, 4, 4, "light: red; pedestrian: crossing", ts);
//
//   OverlayRecorder rec;                                                    // `edgevlm stream --overlay FILE`
//   EV_RETURN_IF_ERROR(rec.open("ov.mp4", w, h, fps));
//   rec.push(frame, state);                                                 // never waits for the encoder
//   EV_RETURN_IF_ERROR(rec.close());
//
// Text: UTF-8 (invalid bytes show as U+FFFD), one face, anti-aliased glyph coverage alpha-blended onto the image,
// pair kerning where the font's 'kern' table has it; no shaping (no ligatures, no right-to-left), which the
// overlay's field names, values and numbers do not need.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "perception/image.h"
#include "perception/video_writer.h"

namespace ev {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

struct Rect {
  int x = 0, y = 0, w = 0, h = 0;
};

// Blends `c` over the rectangle (clipped to the image) with opacity `alpha` in [0, 1]. Images with fewer than 3
// channels are left as they are.
void fill_rect(Image& img, Rect r, Rgb c, float alpha = 1.0f);
// The outline of `r`, `thickness` pixels wide, inside the rectangle.
void stroke_rect(Image& img, Rect r, Rgb c, int thickness, float alpha = 1.0f);

struct TextStyle {
  int px = 16;  // pixel size (the em square; a line is about 1.17 px high in DejaVu Sans)
  Rgb color = {255, 255, 255};
  float opacity = 1.0f;     // of the glyphs
  int max_width = 0;        // word-wrap to lines of at most this many pixels (0: only explicit '\n' breaks)
  bool background = false;  // a box behind the text
  Rgb background_color = {0, 0, 0};
  float background_opacity = 0.6f;
  int padding = -1;  // between the box edge and the text (-1: px / 4, at least 1)
};

// The font files tried, in order, when TextRenderer::open gets no path (Debian's fonts-dejavu-core).
const std::vector<std::string>& default_font_paths();

// A TrueType / OpenType face at any pixel size. Rendered glyphs are cached per size. The methods are safe to call
// from several threads (a mutex guards the face and the cache), but one renderer per thread avoids the contention.
class TextRenderer {
 public:
  TextRenderer();
  ~TextRenderer();
  TextRenderer(TextRenderer&&) noexcept;
  TextRenderer& operator=(TextRenderer&&) noexcept;
  TextRenderer(const TextRenderer&) = delete;
  TextRenderer& operator=(const TextRenderer&) = delete;

  // Loads the font at `path`, or the first of default_font_paths() that exists when `path` is empty.
  // Errors, each naming the font file(s): kNotFound (no such file), kCorrupt (FreeType cannot read it or it has
  // no Unicode character map), kUnsupported (not a scalable font), kInternal (FreeType does not start).
  static Result<TextRenderer> open(const std::string& path = "");

  const std::string& font_path() const;
  bool is_open() const;

  // Line height (baseline to baseline) and ascent at pixel size px, in pixels.
  int line_height(int px) const;
  int ascent(int px) const;
  // Advance width of one line of text (no wrapping; '\n' counts as nothing).
  int text_width(std::string_view text, int px) const;
  // Splits text into lines no wider than max_width pixels (0: no limit): greedy at spaces, explicit '\n' kept, a
  // word longer than the width broken between characters. Leading and trailing spaces of a wrapped line dropped.
  std::vector<std::string> wrap(std::string_view text, int px, int max_width) const;

  // The box text takes when drawn with `style` at (0, 0): padding included when style.background is set; empty
  // for empty text.
  Rect measure(std::string_view text, const TextStyle& style) const;
  // Draws text with its box's top-left corner at (x, y); returns the box (unclipped). The background, when set,
  // is drawn first. Glyphs FreeType cannot render are skipped. Images with fewer than 3 channels are left as
  // they are.
  Rect draw(Image& img, int x, int y, std::string_view text, const TextStyle& style) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- The streaming pipeline's state on a frame ----

struct OverlayAlert {
  std::string name;  // a fast-head class ("pedestrian", "cut-in", ...)
  float p = 0;       // its probability at this frame
};

struct OverlayState {
  // The current semantic output, as StreamPipeline::current_fields() reports it ("light" -> "red", ...). When
  // empty, `text` (the raw description) is shown instead.
  std::map<std::string, std::string> fields;
  std::string text;
  std::vector<OverlayAlert> alerts;  // the active fast-head alerts
  bool keyframe = false;
  int64_t frame = 0;
  double pts_s = 0;
  double vision_latency_s = -1;  // capture -> vision done (< 0: not shown)
  double staleness_s = -1;       // this frame's pts minus that of the frame behind the semantic output (< 0: none)
};

struct OverlayStyle {
  // Font pixel size: frame height * text_scale, at least min_px (224 high: 11 px, 720 high: 20 px).
  double text_scale = 1.0 / 36;
  int min_px = 11;
  double panel_width = 0.6;  // the field panel wraps at this fraction of the frame width
  Rgb text = {255, 255, 255};
  Rgb label = {150, 200, 255};  // field names
  Rgb dim = {175, 175, 175};    // "none" values, the footer, "no description yet"
  Rgb alert = {220, 30, 30};
  Rgb key = {255, 190, 0};
  float panel_opacity = 0.55f;
  bool fields = true, alerts = true, keyframe = true, footer = true;
};

// The pixel size draw_overlay uses for a frame of this height.
int overlay_text_px(int frame_height, const OverlayStyle& style = {});

// Draws onto an RGB8 frame: the fields as a wrapped panel (top-left; the raw text when there are no fields), the
// active alerts as red labels stacked at the top-right with a red frame border, the key-frame mark (a "KEY" tag at
// the bottom-right and a bar along the bottom edge), and a footer (frame, pts, vision latency, staleness) at the
// bottom-left. Everything is clipped to the frame; images with fewer than 3 channels are left as they are.
void draw_overlay(Image& img, const OverlayState& state, const OverlayStyle& style, const TextRenderer& font);
// The same with the default font (loaded once per process and shared). Error: the font cannot be loaded.
Status draw_overlay(Image& img, const OverlayState& state, const OverlayStyle& style = {});

// ---- Recording ----

struct OverlayRecorderOptions {
  int queue_frames = 8;  // frames waiting for the writer thread; a frame that finds the queue full is dropped
  // Frames lower than this are enlarged (bilinear) by the integer factor closest to min_height / height before
  // the overlay is drawn, so that text stays sharp and covers less of the picture: 224x224 simulator frames make
  // a 448x448 video. 0: never.
  int min_height = 448;
  std::string font;  // "" : default_font_paths()
  OverlayStyle style;
  VideoWriterOptions video;
};

// Overlays frames and writes them to a video file on its own thread, so that the caller (the vision stage) never
// waits for drawing or encoding. The video runs at the fps given to open(); dropped frames are missing from it
// (its duration shrinks by as much), never repeated.
// The video is open()'s size times the enlargement factor (OverlayRecorderOptions::min_height), made even for
// 4:2:0 by dropping an odd last column or row. A frame whose size differs from open()'s is enlarged by the same
// factor and cropped or padded (black) at the right and bottom to the video's size.
class OverlayRecorder {
 public:
  OverlayRecorder();
  ~OverlayRecorder();  // close() (errors ignored)
  OverlayRecorder(const OverlayRecorder&) = delete;
  OverlayRecorder& operator=(const OverlayRecorder&) = delete;

  // Loads the font, opens the video and starts the writer thread. Errors: those of TextRenderer::open (naming the
  // font) and VideoWriter::open (naming the file); kInvalidArgument for a queue size outside [1, 1024].
  Status open(const std::string& path, int width, int height, double fps, const OverlayRecorderOptions& opts = {});
  // Queues a frame; returns false when it was dropped (queue full, or the writer has failed). Waits only for the
  // queue's mutex. Ignored (false, not counted) when the recorder is not open.
  bool push(Image frame, OverlayState state);
  // Writes what is queued, finishes the file and stops the thread; returns the first error of the writer (drawing
  // or encoding; messages name the file). Safe to call twice.
  Status close();

  bool is_open() const;
  const std::string& path() const;
  int width() const;  // of the video (even; 0 before open())
  int height() const;
  int scale() const;  // the enlargement factor (1: none)
  // Counters. After close(): pushed() == written() + dropped() (frames left unwritten after an error count as
  // dropped).
  int64_t pushed() const;
  int64_t written() const;
  int64_t dropped() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ev
