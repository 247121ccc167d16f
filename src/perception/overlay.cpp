#include "perception/overlay.h"

#include <ft2build.h>
#include FT_FREETYPE_H

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "perception/resize.h"

namespace ev {

namespace {

uint8_t to_alpha255(float a) {
  if (!(a > 0)) return 0;
  if (a >= 1) return 255;
  return static_cast<uint8_t>(std::lround(a * 255.0f));
}

// dst + (src - dst) * a / 255, a in [0, 255]: exact at a = 0 and a = 255.
inline uint8_t blend(uint8_t dst, uint8_t src, int a) {
  return static_cast<uint8_t>(dst + ((static_cast<int>(src) - static_cast<int>(dst)) * a) / 255);
}

inline void blend_px(uint8_t* p, Rgb c, int a) {
  p[0] = blend(p[0], c.r, a);
  p[1] = blend(p[1], c.g, a);
  p[2] = blend(p[2], c.b, a);
}

bool drawable(const Image& img) { return img.channels >= 3 && !img.empty() && img.rgb.size() >= img.size_bytes(); }

// Decodes the UTF-8 code point at s[*i] and moves *i past it. Malformed input (a stray continuation byte, an
// overlong form, a surrogate, a value past U+10FFFF, a truncated sequence) gives U+FFFD and consumes one byte.
uint32_t next_code_point(std::string_view s, size_t* i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(*i);
  if (c < 0x80) {
    ++*i;
    return c;
  }
  int len = 0;
  uint32_t cp = 0, min = 0;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    ++*i;
    return 0xFFFD;
  }
  if (*i + static_cast<size_t>(len) > s.size()) {
    ++*i;
    return 0xFFFD;
  }
  for (int k = 1; k < len; ++k) {
    const uint8_t d = b(*i + static_cast<size_t>(k));
    if ((d & 0xC0) != 0x80) {
      ++*i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (d & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++*i;
    return 0xFFFD;
  }
  *i += static_cast<size_t>(len);
  return cp;
}

std::string ft_error_text(FT_Error e) {
  switch (e) {
    case FT_Err_Cannot_Open_Resource:
      return "cannot open the file";
    case FT_Err_Unknown_File_Format:
      return "not a font file (unknown format)";
    case FT_Err_Invalid_File_Format:
      return "invalid or truncated font file";
    case FT_Err_Invalid_Table:
      return "broken font table";
    case FT_Err_Out_Of_Memory:
      return "out of memory";
    default:
      break;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "FreeType error 0x%02x", static_cast<unsigned>(e));
  return buf;
}

constexpr int kMinPx = 1, kMaxPx = 512;
constexpr size_t kMaxCachedGlyphs = 8192;

}  // namespace

void fill_rect(Image& img, Rect r, Rgb c, float alpha) {
  if (!drawable(img)) return;
  const int a = to_alpha255(alpha);
  if (a == 0) return;
  const int x0 = std::max(0, r.x), y0 = std::max(0, r.y);
  const int x1 = std::min(img.width, r.x + std::max(0, r.w)), y1 = std::min(img.height, r.y + std::max(0, r.h));
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) blend_px(img.px(x, y), c, a);
}

void stroke_rect(Image& img, Rect r, Rgb c, int thickness, float alpha) {
  if (thickness <= 0 || r.w <= 0 || r.h <= 0) return;
  const int t = std::min({thickness, (r.w + 1) / 2, (r.h + 1) / 2});
  fill_rect(img, {r.x, r.y, r.w, t}, c, alpha);
  fill_rect(img, {r.x, r.y + r.h - t, r.w, t}, c, alpha);
  fill_rect(img, {r.x, r.y + t, t, r.h - 2 * t}, c, alpha);
  fill_rect(img, {r.x + r.w - t, r.y + t, t, r.h - 2 * t}, c, alpha);
}

const std::vector<std::string>& default_font_paths() {
  static const std::vector<std::string> kPaths = {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                                                  "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"};
  return kPaths;
}

// ---- TextRenderer ----

struct TextRenderer::Impl {
  struct Glyph {
    int w = 0, h = 0, left = 0, top = 0;  // bitmap size and offset from the pen (top: above the baseline)
    long advance = 0;                     // 26.6 fixed point
    FT_UInt index = 0;
    std::vector<uint8_t> coverage;  // w * h, 0..255
  };
  struct Metrics {
    int ascent = 0, descent = 0;
  };

  std::string path;
  FT_Library lib = nullptr;
  FT_Face face = nullptr;
  mutable std::mutex mu;
  int size_px = 0;                             // the face's current pixel size
  std::unordered_map<uint64_t, Glyph> glyphs;  // (px << 32 | code point)
  std::unordered_map<int, Metrics> metrics;

  ~Impl() {
    if (face) FT_Done_Face(face);
    if (lib) FT_Done_FreeType(lib);
  }

  // The lock is held by every caller of the functions below.
  static int clamp_px(int px) { return std::clamp(px, kMinPx, kMaxPx); }

  bool set_size(int px) {
    if (size_px == px) return true;
    if (FT_Set_Pixel_Sizes(face, 0, static_cast<FT_UInt>(px)) != 0) return false;
    size_px = px;
    return true;
  }

  const Metrics& metrics_at(int px) {
    auto it = metrics.find(px);
    if (it != metrics.end()) return it->second;
    Metrics m;
    if (set_size(px)) {
      m.ascent = static_cast<int>((face->size->metrics.ascender + 63) >> 6);
      m.descent = static_cast<int>((-face->size->metrics.descender + 63) >> 6);
    }
    if (m.ascent + m.descent <= 0) {  // a font without usable metrics: em-square proportions
      m.ascent = (px * 4 + 4) / 5;
      m.descent = px - m.ascent + 1;
    }
    return metrics.emplace(px, m).first->second;
  }

  // A failed glyph is cached as an empty one with no advance (skipped).
  const Glyph& glyph(uint32_t cp, int px) {
    const uint64_t key = (static_cast<uint64_t>(px) << 32) | cp;
    auto it = glyphs.find(key);
    if (it != glyphs.end()) return it->second;
    Glyph g;
    if (set_size(px)) {
      g.index = FT_Get_Char_Index(face, cp);
      // Light hinting: snapped vertically only, which keeps DejaVu's shapes and spacing at small sizes.
      if (FT_Load_Glyph(face, g.index, FT_LOAD_RENDER | FT_LOAD_TARGET_LIGHT) == 0) {
        const FT_GlyphSlot slot = face->glyph;
        const FT_Bitmap& bm = slot->bitmap;
        g.advance = slot->advance.x;
        g.left = slot->bitmap_left;
        g.top = slot->bitmap_top;
        if ((bm.pixel_mode == FT_PIXEL_MODE_GRAY || bm.pixel_mode == FT_PIXEL_MODE_MONO) && bm.width > 0 &&
            bm.rows > 0 && bm.buffer) {
          g.w = static_cast<int>(bm.width);
          g.h = static_cast<int>(bm.rows);
          g.coverage.resize(static_cast<size_t>(g.w) * static_cast<size_t>(g.h));
          // A negative pitch means the rows are stored bottom-up; start at the top row either way.
          const uint8_t* row0 = bm.pitch < 0 ? bm.buffer + static_cast<ptrdiff_t>(-bm.pitch) * (g.h - 1) : bm.buffer;
          const int grays = bm.num_grays > 1 ? bm.num_grays - 1 : 255;
          for (int y = 0; y < g.h; ++y) {
            const uint8_t* src = row0 + static_cast<ptrdiff_t>(bm.pitch) * y;
            uint8_t* dst = g.coverage.data() + static_cast<size_t>(y) * static_cast<size_t>(g.w);
            for (int x = 0; x < g.w; ++x) {
              if (bm.pixel_mode == FT_PIXEL_MODE_MONO)
                dst[x] = (src[x >> 3] >> (7 - (x & 7))) & 1 ? 255 : 0;
              else
                dst[x] = static_cast<uint8_t>(grays == 255 ? src[x] : std::min(255, src[x] * 255 / grays));
            }
          }
        }
      }
    }
    return glyphs.emplace(key, std::move(g)).first->second;
  }

  long kerning(FT_UInt left, FT_UInt right) {
    if (!left || !right || !FT_HAS_KERNING(face)) return 0;
    FT_Vector d{0, 0};
    if (FT_Get_Kerning(face, left, right, FT_KERNING_DEFAULT, &d) != 0) return 0;
    return d.x;
  }

  // Calls f(glyph, pen_x in 26.6) for each drawable character of one line; returns the advance width (26.6).
  template <typename F>
  long walk(std::string_view line, int px, F&& f) {
    long pen = 0;
    FT_UInt prev = 0;
    for (size_t i = 0; i < line.size();) {
      uint32_t cp = next_code_point(line, &i);
      if (cp == '\t') cp = ' ';
      if (cp < 0x20 || cp == 0x7F) continue;
      const Glyph& g = glyph(cp, px);
      pen += kerning(prev, g.index);
      f(g, pen);
      pen += g.advance;
      prev = g.index;
    }
    return pen;
  }

  int width(std::string_view line, int px) {
    const long w = walk(line, px, [](const Glyph&, long) {});
    return static_cast<int>((std::max(0L, w) + 63) >> 6);
  }

  // Breaks one word that is wider than max_width between characters; the pieces go to `out` but the last, which
  // is returned (it may take more words).
  std::string break_word(std::string_view word, int px, int max_width, std::vector<std::string>* out) {
    std::string piece;
    for (size_t i = 0; i < word.size();) {
      const size_t start = i;
      (void)next_code_point(word, &i);
      std::string next = piece;
      next.append(word.substr(start, i - start));
      if (!piece.empty() && width(next, px) > max_width) {
        out->push_back(piece);
        piece.assign(word.substr(start, i - start));
      } else {
        piece = std::move(next);
      }
    }
    return piece;
  }

  std::vector<std::string> wrap(std::string_view text, int px, int max_width) {
    std::vector<std::string> lines;
    size_t pos = 0;
    for (;;) {
      const size_t nl = text.find('\n', pos);
      const std::string_view para = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
      if (max_width <= 0) {
        lines.emplace_back(para);
      } else {
        std::string line;
        size_t w0 = 0;
        while (w0 < para.size()) {
          while (w0 < para.size() && (para[w0] == ' ' || para[w0] == '\t')) ++w0;
          if (w0 >= para.size()) break;
          size_t w1 = w0;
          while (w1 < para.size() && para[w1] != ' ' && para[w1] != '\t') ++w1;
          const std::string_view word = para.substr(w0, w1 - w0);
          w0 = w1;
          std::string cand = line;
          if (!cand.empty()) cand += ' ';
          cand.append(word);
          if (width(cand, px) <= max_width) {
            line = std::move(cand);
            continue;
          }
          if (!line.empty()) lines.push_back(std::move(line));
          line.clear();
          if (width(word, px) <= max_width)
            line.assign(word);
          else
            line = break_word(word, px, max_width, &lines);
        }
        lines.push_back(std::move(line));  // an empty paragraph stays an empty line
      }
      if (nl == std::string_view::npos) break;
      pos = nl + 1;
    }
    return lines;
  }

  int padding(const TextStyle& s, int px) const {
    return s.background ? (s.padding < 0 ? std::max(1, px / 4) : s.padding) : 0;
  }

  Rect measure(std::string_view text, const TextStyle& s, std::vector<std::string>* lines_out) {
    if (text.empty()) {  // nothing to draw, not even the box
      if (lines_out) lines_out->clear();
      return {};
    }
    const int px = clamp_px(s.px);
    std::vector<std::string> lines = wrap(text, px, s.max_width);
    const Metrics& m = metrics_at(px);
    int w = 0;
    for (const auto& l : lines) w = std::max(w, width(l, px));
    const int pad = padding(s, px);
    Rect r{0, 0, w + 2 * pad, static_cast<int>(lines.size()) * (m.ascent + m.descent) + 2 * pad};
    if (lines_out) *lines_out = std::move(lines);
    return r;
  }

  void draw_line(Image& img, int x, int baseline, std::string_view line, int px, Rgb c, int a) {
    walk(line, px, [&](const Glyph& g, long pen) {
      if (g.coverage.empty()) return;
      const int gx = x + static_cast<int>((pen + 32) >> 6) + g.left;
      const int gy = baseline - g.top;
      const int x0 = std::max(0, gx), y0 = std::max(0, gy);
      const int x1 = std::min(img.width, gx + g.w), y1 = std::min(img.height, gy + g.h);
      for (int y = y0; y < y1; ++y) {
        const uint8_t* cov = g.coverage.data() + static_cast<size_t>(y - gy) * static_cast<size_t>(g.w);
        for (int xx = x0; xx < x1; ++xx) {
          const int k = cov[xx - gx];
          if (k) blend_px(img.px(xx, y), c, a == 255 ? k : k * a / 255);
        }
      }
    });
  }
};

TextRenderer::TextRenderer() = default;
TextRenderer::~TextRenderer() = default;
TextRenderer::TextRenderer(TextRenderer&&) noexcept = default;
TextRenderer& TextRenderer::operator=(TextRenderer&&) noexcept = default;

Result<TextRenderer> TextRenderer::open(const std::string& path) {
  std::string file = path;
  if (file.empty()) {
    std::error_code ec;
    for (const auto& p : default_font_paths())
      if (std::filesystem::is_regular_file(p, ec)) {
        file = p;
        break;
      }
    if (file.empty()) {
      std::string list;
      for (const auto& p : default_font_paths()) list += (list.empty() ? "" : ", ") + p;
      return NotFound("no font file found (tried " + list +
                      "; install fonts-dejavu-core or pass a TrueType / OpenType font)");
    }
  } else {
    std::error_code ec;
    if (!std::filesystem::exists(file, ec)) return NotFound("font file " + file + " does not exist");
    if (!std::filesystem::is_regular_file(file, ec)) return InvalidArgument("font file " + file + " is not a file");
  }
  auto impl = std::make_unique<Impl>();
  impl->path = file;
  if (FT_Error e = FT_Init_FreeType(&impl->lib); e != 0) {
    impl->lib = nullptr;
    return Internal("FreeType does not start (" + ft_error_text(e) + ") for font " + file);
  }
  if (FT_Error e = FT_New_Face(impl->lib, file.c_str(), 0, &impl->face); e != 0) {
    impl->face = nullptr;
    if (e == FT_Err_Cannot_Open_Resource) return IoError("font file " + file + ": " + ft_error_text(e));
    return Corrupt("font file " + file + ": " + ft_error_text(e));
  }
  if (!FT_IS_SCALABLE(impl->face)) return Unsupported("font file " + file + ": not a scalable (outline) font");
  if (FT_Select_Charmap(impl->face, FT_ENCODING_UNICODE) != 0)
    return Corrupt("font file " + file + ": no Unicode character map");
  // A face that loads but cannot produce a sized glyph (damaged outlines or tables) fails here, not mid-stream.
  if (!impl->set_size(16) || FT_Load_Glyph(impl->face, FT_Get_Char_Index(impl->face, 'A'), FT_LOAD_RENDER) != 0)
    return Corrupt("font file " + file + ": FreeType cannot render its glyphs");
  TextRenderer r;
  r.impl_ = std::move(impl);
  return r;
}

const std::string& TextRenderer::font_path() const {
  static const std::string kNone;
  return impl_ ? impl_->path : kNone;
}
bool TextRenderer::is_open() const { return impl_ != nullptr; }

int TextRenderer::line_height(int px) const {
  if (!impl_) return 0;
  std::lock_guard<std::mutex> lk(impl_->mu);
  const auto& m = impl_->metrics_at(Impl::clamp_px(px));
  return m.ascent + m.descent;
}

int TextRenderer::ascent(int px) const {
  if (!impl_) return 0;
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->metrics_at(Impl::clamp_px(px)).ascent;
}

int TextRenderer::text_width(std::string_view text, int px) const {
  if (!impl_) return 0;
  std::lock_guard<std::mutex> lk(impl_->mu);
  if (impl_->glyphs.size() > kMaxCachedGlyphs) impl_->glyphs.clear();
  return impl_->width(text, Impl::clamp_px(px));
}

std::vector<std::string> TextRenderer::wrap(std::string_view text, int px, int max_width) const {
  if (!impl_) return {std::string(text)};
  std::lock_guard<std::mutex> lk(impl_->mu);
  if (impl_->glyphs.size() > kMaxCachedGlyphs) impl_->glyphs.clear();
  return impl_->wrap(text, Impl::clamp_px(px), max_width);
}

Rect TextRenderer::measure(std::string_view text, const TextStyle& style) const {
  if (!impl_) return {};
  std::lock_guard<std::mutex> lk(impl_->mu);
  if (impl_->glyphs.size() > kMaxCachedGlyphs) impl_->glyphs.clear();
  return impl_->measure(text, style, nullptr);
}

Rect TextRenderer::draw(Image& img, int x, int y, std::string_view text, const TextStyle& style) const {
  if (!impl_) return {x, y, 0, 0};
  std::lock_guard<std::mutex> lk(impl_->mu);
  if (impl_->glyphs.size() > kMaxCachedGlyphs) impl_->glyphs.clear();
  std::vector<std::string> lines;
  Rect box = impl_->measure(text, style, &lines);
  box.x = x;
  box.y = y;
  if (!drawable(img)) return box;
  if (style.background) fill_rect(img, box, style.background_color, style.background_opacity);
  const int px = Impl::clamp_px(style.px);
  const Impl::Metrics& m = impl_->metrics_at(px);
  const int pad = impl_->padding(style, px);
  const int a = to_alpha255(style.opacity);
  if (a == 0) return box;
  for (size_t i = 0; i < lines.size(); ++i) {
    const int baseline = y + pad + static_cast<int>(i) * (m.ascent + m.descent) + m.ascent;
    impl_->draw_line(img, x + pad, baseline, lines[i], px, style.color, a);
  }
  return box;
}

// ---- draw_overlay ----

namespace {

// The pipeline's fields in the order of the description ("light: ...; pedestrian: ...; ..."), then any others.
std::vector<std::pair<std::string, std::string>> ordered_fields(const std::map<std::string, std::string>& fields) {
  static const char* kOrder[] = {"light",        "pedestrian", "lead",    "sign",
                                 "construction", "lighting",   "weather", "hazard"};
  std::vector<std::pair<std::string, std::string>> out;
  for (const char* f : kOrder) {
    auto it = fields.find(f);
    if (it != fields.end()) out.emplace_back(it->first, it->second);
  }
  for (const auto& [k, v] : fields)
    if (std::find(std::begin(kOrder), std::end(kOrder), k) == std::end(kOrder)) out.emplace_back(k, v);
  return out;
}

std::string upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

int overlay_text_px(int frame_height, const OverlayStyle& style) {
  const int px = static_cast<int>(std::lround(frame_height * style.text_scale));
  return std::clamp(std::max(px, style.min_px), kMinPx, kMaxPx);
}

void draw_overlay(Image& img, const OverlayState& st, const OverlayStyle& style, const TextRenderer& font) {
  if (!drawable(img) || !font.is_open()) return;
  const int W = img.width, H = img.height;
  const int px = overlay_text_px(H, style);
  const int small_px = std::max(style.min_px - 1, px * 4 / 5);
  const int margin = std::max(3, px / 3);
  const int pad = std::max(3, px * 3 / 10);
  const int line = font.line_height(px);
  const int bar_h = std::max(3, px / 4);
  // The footer row (kept free of the field panel whether or not a footer or key tag is drawn).
  const int foot_h = font.line_height(small_px) + 2 * std::max(1, small_px / 4);
  const int bottom_limit = H - bar_h - foot_h - 2 * margin;

  // Alerts: labels stacked at the top-right, laid out first so that the panel can keep clear of them.
  TextStyle alert_ts;
  alert_ts.px = px;
  alert_ts.color = {255, 255, 255};
  alert_ts.background = true;
  alert_ts.background_color = style.alert;
  alert_ts.background_opacity = 0.85f;
  alert_ts.padding = pad;
  struct Label {
    std::string text;
    Rect box;
  };
  std::vector<Label> alerts;
  int alert_left = W, alert_bottom = 0;
  if (style.alerts) {
    int y = margin;
    for (const auto& a : st.alerts) {
      Label l{upper(a.name) + " " + fmt("%.2f", a.p), {}};
      l.box = font.measure(l.text, alert_ts);
      if (y + l.box.h > bottom_limit && !alerts.empty()) break;
      l.box.x = std::max(margin, W - margin - l.box.w);
      l.box.y = y;
      alert_left = std::min(alert_left, l.box.x);
      alert_bottom = y + l.box.h;
      y += l.box.h + std::max(2, margin / 2);
      alerts.push_back(std::move(l));
    }
    // A red border says "alert" at a glance, even where the labels are hard to read.
    if (!alerts.empty()) stroke_rect(img, {0, 0, W, H}, style.alert, std::max(2, px / 6), 0.9f);
  }

  // Field panel at the top-left: "name: value", a value wrapped under its own start, or under the name (indented)
  // when the room beside the name is too narrow. Beside the alerts when there is room, else below them.
  if (style.fields) {
    const int want_w = std::max(static_cast<int>(W * style.panel_width), px * 8) - 2 * pad;
    int max_w = want_w, top = margin;
    if (!alerts.empty()) {
      const int beside = alert_left - 2 * margin - 2 * pad;
      if (beside >= std::min(want_w, px * 12)) {
        max_w = std::min(want_w, beside);
      } else {
        top = alert_bottom + margin;
      }
    }
    struct Row {
      std::string label, value;
      int value_x = 0;
      Rgb color;
    };
    std::vector<Row> rows;
    const auto fields = ordered_fields(st.fields);
    if (!fields.empty()) {
      for (const auto& [name, v] : fields) {
        const std::string label = name + ": ";
        const std::string value = v.empty() ? "-" : v;
        const int lw = font.text_width(label, px);
        const Rgb c = value == "none" ? style.dim : style.text;
        if (font.text_width(value, px) <= max_w - lw) {
          rows.push_back({label, value, lw, c});
          continue;
        }
        const bool hang = max_w - lw < px * 6;  // too narrow beside the name: the value goes under it
        if (hang) rows.push_back({label, std::string(), lw, c});
        bool first = !hang;
        for (auto& l : font.wrap(value, px, hang ? max_w - px : max_w - lw)) {
          rows.push_back({first ? label : std::string(), std::move(l), hang ? px : lw, c});
          first = false;
        }
      }
    } else {
      const bool have_text = st.text.find_first_not_of(" \t\n") != std::string::npos;
      for (auto& l : font.wrap(have_text ? st.text : "(no description yet)", px, max_w))
        rows.push_back({std::string(), std::move(l), 0, have_text ? style.text : style.dim});
    }
    const int max_rows = std::max(1, (bottom_limit - top - 2 * pad) / std::max(1, line));
    if (static_cast<int>(rows.size()) > max_rows) rows.resize(static_cast<size_t>(max_rows));
    int w = 0;
    for (const auto& r : rows) w = std::max(w, r.value_x + font.text_width(r.value, px));
    const Rect panel{margin, top, w + 2 * pad, static_cast<int>(rows.size()) * line + 2 * pad};
    fill_rect(img, panel, {0, 0, 0}, style.panel_opacity);
    TextStyle ts;
    ts.px = px;
    for (size_t i = 0; i < rows.size(); ++i) {
      const int x = panel.x + pad, y = panel.y + pad + static_cast<int>(i) * line;
      if (!rows[i].label.empty()) {
        ts.color = style.label;
        font.draw(img, x, y, rows[i].label, ts);
      }
      ts.color = rows[i].color;
      font.draw(img, x + rows[i].value_x, y, rows[i].value, ts);
    }
  }

  for (const auto& l : alerts) font.draw(img, l.box.x, l.box.y, l.text, alert_ts);

  // Key frame: a bar along the bottom edge and a "KEY" tag above its right end.
  int key_left = W;
  if (style.keyframe && st.keyframe) {
    fill_rect(img, {0, H - bar_h, W, bar_h}, style.key, 0.9f);
    TextStyle ts;
    ts.px = small_px;
    ts.color = {0, 0, 0};
    ts.background = true;
    ts.background_color = style.key;
    ts.background_opacity = 0.9f;
    const Rect r = font.measure("KEY", ts);
    key_left = W - margin - r.w;
    font.draw(img, key_left, H - bar_h - margin - r.h, "KEY", ts);
  }

  // Footer at the bottom-left: frame, pts, vision latency, staleness; the short form when the long one does not
  // fit beside the key tag.
  if (style.footer) {
    TextStyle ts;
    ts.px = small_px;
    ts.color = style.dim;
    ts.background = true;
    ts.background_opacity = style.panel_opacity;
    const std::string sep = "  \xC2\xB7  ";  // U+00B7 middle dot
    std::string lng = "frame " + std::to_string(st.frame) + sep + fmt("%.2f s", st.pts_s);
    std::string shrt = "#" + std::to_string(st.frame) + "  " + fmt("%.2fs", st.pts_s);
    if (st.vision_latency_s >= 0) {
      lng += sep + "vision " + fmt("%.0f ms", st.vision_latency_s * 1e3);
      shrt += "  vis " + fmt("%.0fms", st.vision_latency_s * 1e3);
    }
    if (st.staleness_s >= 0) {
      lng += sep + "description age " + fmt("%.2f s", st.staleness_s);
      shrt += "  age " + fmt("%.1fs", st.staleness_s);
    }
    const int room = key_left - 2 * margin;
    const std::string& text = font.measure(lng, ts).w <= room ? lng : shrt;
    const Rect r = font.measure(text, ts);
    font.draw(img, margin, H - bar_h - margin - r.h, text, ts);
  }
}

Status draw_overlay(Image& img, const OverlayState& state, const OverlayStyle& style) {
  static std::mutex mu;
  static std::unique_ptr<TextRenderer> font;
  const TextRenderer* f = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu);
    if (!font) {
      EV_ASSIGN_OR_RETURN(TextRenderer r, TextRenderer::open());
      font = std::make_unique<TextRenderer>(std::move(r));
    }
    f = font.get();
  }
  draw_overlay(img, state, style, *f);
  return Status::Ok();
}

// ---- OverlayRecorder ----

struct OverlayRecorder::Impl {
  struct Item {
    Image frame;
    OverlayState state;
  };

  std::string path;
  int width = 0, height = 0;  // of the video
  int scale = 1;
  OverlayRecorderOptions opts;
  TextRenderer font;
  VideoWriter writer;
  std::thread thread;

  mutable std::mutex mu;
  std::condition_variable ready;
  std::deque<Item> queue;
  bool open = false, closing = false, failed = false;
  Status error;
  int64_t pushed = 0, written = 0, dropped = 0;

  // `frame` enlarged by `scale` and brought to the video's size (RGB8): cropped or padded with black at the right
  // and bottom.
  Image fit(Image&& frame) const {
    if (scale > 1) {
      auto big = resize_image(frame, frame.width * scale, frame.height * scale, ResampleFilter::kBilinear);
      if (big.ok()) frame = std::move(big).value();
    }
    if (frame.width == width && frame.height == height && frame.channels == 3) return std::move(frame);
    Image out = Image::make(width, height, 3);
    const int w = std::min(width, frame.width), h = std::min(height, frame.height);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const uint8_t* s = frame.px(x, y);
        uint8_t* d = out.px(x, y);
        if (frame.channels >= 3) {
          d[0] = s[0], d[1] = s[1], d[2] = s[2];
        } else {
          d[0] = d[1] = d[2] = s[0];
        }
      }
    return out;
  }

  void run() {
    for (;;) {
      Item it;
      {
        std::unique_lock<std::mutex> lk(mu);
        ready.wait(lk, [&] { return !queue.empty() || closing; });
        if (queue.empty()) return;
        it = std::move(queue.front());
        queue.pop_front();
      }
      Image frame = fit(std::move(it.frame));
      draw_overlay(frame, it.state, opts.style, font);
      Status s = writer.write(frame.rgb.data());
      std::lock_guard<std::mutex> lk(mu);
      if (s.ok()) {
        ++written;
        continue;
      }
      // The first error ends the recording: what is queued is dropped, and so is every later push.
      error = s.with_context("overlay frame " + std::to_string(it.state.frame));
      failed = true;
      dropped += 1 + static_cast<int64_t>(queue.size());
      queue.clear();
      return;
    }
  }
};

OverlayRecorder::OverlayRecorder() : impl_(std::make_unique<Impl>()) {}
OverlayRecorder::~OverlayRecorder() { (void)close(); }

Status OverlayRecorder::open(const std::string& path, int width, int height, double fps,
                             const OverlayRecorderOptions& opts) {
  Impl& m = *impl_;
  if (m.open) return InvalidArgument(path + ": overlay recorder is already open on " + m.path);
  if (opts.queue_frames < 1 || opts.queue_frames > 1024)
    return InvalidArgument(path + ": overlay queue must hold 1..1024 frames, got " + std::to_string(opts.queue_frames));
  if (width < 1 || height < 1 || width > kMaxImageSide || height > kMaxImageSide)
    return InvalidArgument(path + ": overlay frame size " + std::to_string(width) + "x" + std::to_string(height) +
                           " out of range");
  int scale = 1;
  if (opts.min_height > 0 && height < opts.min_height)
    scale = std::max(1, static_cast<int>(std::lround(static_cast<double>(opts.min_height) / height)));
  while (scale > 1 && (width * scale > 4096 || height * scale > 4096)) --scale;
  // 4:2:0 video: an odd side loses its last column / row.
  const int w = (width * scale) & ~1, h = (height * scale) & ~1;
  auto font = TextRenderer::open(opts.font);
  if (!font.ok()) return font.status().with_context(path + ": overlay font");
  VideoWriter vw;
  EV_RETURN_IF_ERROR(vw.open(path, w, h, fps, opts.video));
  m.path = path;
  m.width = w;
  m.height = h;
  m.scale = scale;
  m.opts = opts;
  m.font = std::move(font).value();
  m.writer = std::move(vw);
  m.queue.clear();
  m.closing = m.failed = false;
  m.error = Status::Ok();
  m.pushed = m.written = m.dropped = 0;
  m.open = true;
  m.thread = std::thread([&m] { m.run(); });
  return Status::Ok();
}

bool OverlayRecorder::push(Image frame, OverlayState state) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lk(m.mu);
  if (!m.open || m.closing) return false;
  ++m.pushed;
  const bool malformed = frame.empty() || !(frame.channels == 1 || frame.channels == 3 || frame.channels == 4) ||
                         frame.rgb.size() < frame.size_bytes();
  if (m.failed || malformed || m.queue.size() >= static_cast<size_t>(m.opts.queue_frames)) {
    ++m.dropped;
    return false;
  }
  m.queue.push_back({std::move(frame), std::move(state)});
  m.ready.notify_one();
  return true;
}

Status OverlayRecorder::close() {
  if (!impl_) return Status::Ok();
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    if (!m.open || m.closing) return Status::Ok();
    m.closing = true;
    m.ready.notify_all();
  }
  if (m.thread.joinable()) m.thread.join();
  Status s = m.writer.close();
  std::lock_guard<std::mutex> lk(m.mu);
  m.open = false;
  m.closing = false;
  return m.failed ? m.error : s;
}

bool OverlayRecorder::is_open() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->open;
}
const std::string& OverlayRecorder::path() const { return impl_->path; }
int OverlayRecorder::width() const { return impl_->width; }
int OverlayRecorder::height() const { return impl_->height; }
int OverlayRecorder::scale() const { return impl_->scale; }
int64_t OverlayRecorder::pushed() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->pushed;
}
int64_t OverlayRecorder::written() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->written;
}
int64_t OverlayRecorder::dropped() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->dropped;
}

}  // namespace ev
