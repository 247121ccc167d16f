// Image decoding tests: round trips through our own encoders, PNG colour types and bit depths written with
// libpng, EXIF orientation, error handling on corrupt / truncated / absurd inputs, and a decode check of the
// real photos against hashes of PIL's decode (Pillow 9.4 on libjpeg-turbo 2.1.5; PIL-exactness of the JPEG
// path has been checked on 84 files of every subsampling / progressive / grey / CMYK variant).
#include <gtest/gtest.h>

#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "perception/image.h"

namespace ev {
namespace {

uint64_t fnv1a(const std::vector<uint8_t>& b) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t x : b) {
    h ^= x;
    h *= 0x100000001b3ull;
  }
  return h;
}

Image smooth_image(int w, int h) {
  Image im = Image::make(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.px(x, y);
      p[0] = static_cast<uint8_t>(x * 255 / std::max(1, w - 1));
      p[1] = static_cast<uint8_t>(y * 255 / std::max(1, h - 1));
      p[2] = static_cast<uint8_t>((x + y) % 256);  // no wrap-around edges for w + h < 256
    }
  return im;
}

Image noise_image(int w, int h, uint32_t seed) {
  Image im = Image::make(w, h);
  std::mt19937 rng(seed);
  for (auto& v : im.rgb) v = static_cast<uint8_t>(rng() & 255);
  return im;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("edgevlm_test_image_" + name)).string();
}

// ---- a libpng writer for arbitrary colour types / depths (the library's encode_png only writes 8-bit) ----
struct RawPng {
  int w = 0, h = 0, depth = 8, color_type = PNG_COLOR_TYPE_RGB;
  bool interlace = false;
  std::vector<std::vector<uint8_t>> rows;   // packed rows as PNG stores them (big-endian 16-bit)
  std::vector<png_color> palette;
  std::vector<uint8_t> trns;                 // palette alpha
  bool trns_color = false;
  png_color_16 trns_value{};
};

void write_cb(png_structp png, png_bytep d, png_size_t n) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), d, d + n);
}
void flush_cb(png_structp) {}

RawPng raw_png(int w, int h, int depth, int color_type) {
  RawPng r;
  r.w = w;
  r.h = h;
  r.depth = depth;
  r.color_type = color_type;
  return r;
}

std::vector<uint8_t> write_raw_png(const RawPng& r) {
  std::vector<uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng write failed";
    return {};
  }
  png_set_write_fn(png, &out, write_cb, flush_cb);
  png_set_IHDR(png, info, static_cast<png_uint_32>(r.w), static_cast<png_uint_32>(r.h), r.depth, r.color_type,
               r.interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!r.palette.empty()) png_set_PLTE(png, info, r.palette.data(), static_cast<int>(r.palette.size()));
  if (!r.trns.empty()) png_set_tRNS(png, info, r.trns.data(), static_cast<int>(r.trns.size()), nullptr);
  if (r.trns_color) png_set_tRNS(png, info, nullptr, 0, const_cast<png_color_16*>(&r.trns_value));
  png_write_info(png, info);
  std::vector<png_bytep> rows;
  for (auto& row : r.rows) rows.push_back(const_cast<png_bytep>(row.data()));
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

TEST(Image, DetectFormatByMagic) {
  const uint8_t jpg[] = {0xFF, 0xD8, 0xFF, 0xE0};
  const uint8_t png[] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  const uint8_t ppm[] = {'P', '6', '\n'};
  const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a'};
  EXPECT_EQ(detect_image_format(jpg, sizeof jpg), ImageFormat::kJpeg);
  EXPECT_EQ(detect_image_format(png, sizeof png), ImageFormat::kPng);
  EXPECT_EQ(detect_image_format(ppm, sizeof ppm), ImageFormat::kPnm);
  EXPECT_EQ(detect_image_format(gif, sizeof gif), ImageFormat::kUnknown);
  EXPECT_EQ(detect_image_format(png, 4), ImageFormat::kUnknown);  // too short for the PNG signature
}

TEST(Image, PngRoundTripRgbAndGrey) {
  const Image im = noise_image(37, 23, 1);
  auto bytes = encode_png(im);
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  auto back = load_image_from_memory(bytes->data(), bytes->size(), "rt.png");
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->width, 37);
  EXPECT_EQ(back->height, 23);
  EXPECT_EQ(back->channels, 3);
  EXPECT_EQ(back->rgb, im.rgb);

  Image grey = Image::make(5, 4, 1);
  for (size_t i = 0; i < grey.rgb.size(); ++i) grey.rgb[i] = static_cast<uint8_t>(i * 13);
  auto gb = encode_png(grey);
  ASSERT_TRUE(gb.ok());
  auto g = load_image_from_memory(gb->data(), gb->size(), "grey.png");
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->channels, 3);
  for (size_t i = 0; i < grey.rgb.size(); ++i) {
    EXPECT_EQ(g->rgb[3 * i], grey.rgb[i]);
    EXPECT_EQ(g->rgb[3 * i + 1], grey.rgb[i]);
    EXPECT_EQ(g->rgb[3 * i + 2], grey.rgb[i]);
  }
}

TEST(Image, SaveAndLoadFiles) {
  const Image im = noise_image(16, 9, 2);
  const std::string png = temp_path("a.png"), ppm = temp_path("a.ppm"), jpg = temp_path("a.jpg");
  ASSERT_TRUE(save_png(png, im).ok());
  ASSERT_TRUE(save_ppm(ppm, im).ok());
  ASSERT_TRUE(save_jpeg(jpg, smooth_image(64, 48), 95).ok());
  auto a = load_image(png);
  auto b = load_image(ppm);
  auto c = load_image(jpg);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->rgb, im.rgb);
  EXPECT_EQ(b->rgb, im.rgb);
  EXPECT_EQ(c->width, 64);
  EXPECT_EQ(c->height, 48);
  // Detection is by content: a PNG named .jpg still loads.
  const std::string misnamed = temp_path("png_named.jpg");
  std::filesystem::copy_file(png, misnamed, std::filesystem::copy_options::overwrite_existing);
  auto d = load_image(misnamed);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->rgb, im.rgb);
  for (const auto& p : {png, ppm, jpg, misnamed}) std::filesystem::remove(p);
}

TEST(Image, JpegRoundTripIsCloseAndDeterministic) {
  const Image im = smooth_image(97, 61);  // odd sizes: partial MCUs
  auto bytes = encode_jpeg(im, 95);
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  auto a = load_image_from_memory(bytes->data(), bytes->size(), "rt.jpg");
  auto b = load_image_from_memory(bytes->data(), bytes->size(), "rt.jpg");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->width, 97);
  EXPECT_EQ(a->height, 61);
  EXPECT_EQ(a->rgb, b->rgb);
  int maxd = 0;
  double sum = 0;
  for (size_t i = 0; i < im.rgb.size(); ++i) {
    const int d = std::abs(int(a->rgb[i]) - int(im.rgb[i]));
    maxd = std::max(maxd, d);
    sum += d;
  }
  EXPECT_LT(sum / im.rgb.size(), 2.0);  // a smooth image at quality 95
  EXPECT_LE(maxd, 24);

  // A greyscale JPEG decodes to R = G = B.
  Image grey = Image::make(40, 30, 1);
  for (size_t i = 0; i < grey.rgb.size(); ++i) grey.rgb[i] = static_cast<uint8_t>((i * 7) & 255);
  auto gb = encode_jpeg(grey, 90);
  ASSERT_TRUE(gb.ok());
  auto g = load_image_from_memory(gb->data(), gb->size(), "grey.jpg");
  ASSERT_TRUE(g.ok());
  for (int i = 0; i < g->width * g->height; ++i) {
    EXPECT_EQ(g->rgb[3 * i], g->rgb[3 * i + 1]);
    EXPECT_EQ(g->rgb[3 * i], g->rgb[3 * i + 2]);
  }
}

TEST(Image, PngColourTypesAndDepthsMatchPil) {
  const int W = 7, H = 5;
  std::mt19937 rng(7);
  // 16-bit RGB: PIL keeps the high byte.
  {
    RawPng r = raw_png(W, H, 16, PNG_COLOR_TYPE_RGB);
    for (int y = 0; y < H; ++y) {
      std::vector<uint8_t> row(W * 6);
      for (auto& v : row) v = static_cast<uint8_t>(rng());
      r.rows.push_back(row);
    }
    auto bytes = write_raw_png(r);
    auto im = load_image_from_memory(bytes.data(), bytes.size(), "rgb16.png");
    ASSERT_TRUE(im.ok()) << im.status().to_string();
    for (int y = 0; y < H; ++y)
      for (int i = 0; i < W * 3; ++i) EXPECT_EQ(im->row(y)[i], r.rows[y][2 * i]);
  }
  // 16-bit grey: PIL's mode I;16 converts to RGB by clipping at 255 (Convert.c I16_RGB).
  {
    RawPng r = raw_png(W, H, 16, PNG_COLOR_TYPE_GRAY);
    for (int y = 0; y < H; ++y) {
      std::vector<uint8_t> row(W * 2);
      for (int x = 0; x < W; ++x) {
        const int v = (x + y) % 2 ? (x * 37 + y) % 256 : 256 + x * 1000;
        row[2 * x] = static_cast<uint8_t>(v >> 8);
        row[2 * x + 1] = static_cast<uint8_t>(v & 255);
      }
      r.rows.push_back(row);
    }
    auto bytes = write_raw_png(r);
    auto im = load_image_from_memory(bytes.data(), bytes.size(), "grey16.png");
    ASSERT_TRUE(im.ok()) << im.status().to_string();
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const int v = (r.rows[y][2 * x] << 8) | r.rows[y][2 * x + 1];
        EXPECT_EQ(im->px(x, y)[0], v > 255 ? 255 : v);
        EXPECT_EQ(im->px(x, y)[2], v > 255 ? 255 : v);
      }
  }
  // 2-bit grey scales by 85; 1-bit by 255; 4-bit by 17.
  for (int depth : {1, 2, 4}) {
    RawPng r = raw_png(W, H, depth, PNG_COLOR_TYPE_GRAY);
    std::vector<std::vector<int>> vals(H, std::vector<int>(W));
    for (int y = 0; y < H; ++y) {
      std::vector<uint8_t> row((W * depth + 7) / 8, 0);
      for (int x = 0; x < W; ++x) {
        const int v = static_cast<int>(rng() % (1u << depth));
        vals[y][x] = v;
        const int bit = x * depth;
        row[bit / 8] |= static_cast<uint8_t>(v << (8 - depth - bit % 8));
      }
      r.rows.push_back(row);
    }
    auto bytes = write_raw_png(r);
    auto im = load_image_from_memory(bytes.data(), bytes.size(), "lowbit.png");
    ASSERT_TRUE(im.ok()) << im.status().to_string();
    const int scale = 255 / ((1 << depth) - 1);
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) EXPECT_EQ(im->px(x, y)[1], vals[y][x] * scale) << "depth " << depth;
  }
  // Palette (4-bit, with tRNS): palette colours, alpha dropped.
  {
    RawPng r = raw_png(W, H, 4, PNG_COLOR_TYPE_PALETTE);
    for (int i = 0; i < 16; ++i)
      r.palette.push_back({static_cast<png_byte>(i * 16), static_cast<png_byte>(255 - i * 9), static_cast<png_byte>(i * 3)});
    r.trns = {0, 128, 255};
    for (int y = 0; y < H; ++y) {
      std::vector<uint8_t> row((W * 4 + 7) / 8, 0);
      for (int x = 0; x < W; ++x) row[x / 2] |= static_cast<uint8_t>(((x + 3 * y) % 16) << (x % 2 ? 0 : 4));
      r.rows.push_back(row);
    }
    auto bytes = write_raw_png(r);
    auto im = load_image_from_memory(bytes.data(), bytes.size(), "pal.png");
    ASSERT_TRUE(im.ok()) << im.status().to_string();
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const png_color& c = r.palette[(x + 3 * y) % 16];
        EXPECT_EQ(im->px(x, y)[0], c.red);
        EXPECT_EQ(im->px(x, y)[1], c.green);
        EXPECT_EQ(im->px(x, y)[2], c.blue);
      }
  }
  // RGBA and grey+alpha: alpha dropped, colour untouched (not composited).
  {
    RawPng r = raw_png(W, H, 8, PNG_COLOR_TYPE_RGB_ALPHA);
    RawPng g = raw_png(W, H, 8, PNG_COLOR_TYPE_GRAY_ALPHA);
    for (int y = 0; y < H; ++y) {
      std::vector<uint8_t> row(W * 4), grow(W * 2);
      for (auto& v : row) v = static_cast<uint8_t>(rng());
      for (auto& v : grow) v = static_cast<uint8_t>(rng());
      r.rows.push_back(row);
      g.rows.push_back(grow);
    }
    auto rb = write_raw_png(r);
    auto gb = write_raw_png(g);
    auto ri = load_image_from_memory(rb.data(), rb.size(), "rgba.png");
    auto gi = load_image_from_memory(gb.data(), gb.size(), "la.png");
    ASSERT_TRUE(ri.ok() && gi.ok());
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        for (int c = 0; c < 3; ++c) {
          EXPECT_EQ(ri->px(x, y)[c], r.rows[y][4 * x + c]);
          EXPECT_EQ(gi->px(x, y)[c], g.rows[y][2 * x]);
        }
  }
  // Interlaced (Adam7) decodes to the same pixels; RGB with a tRNS colour stays RGB.
  {
    const Image ref = noise_image(13, 11, 5);
    RawPng r = raw_png(13, 11, 8, PNG_COLOR_TYPE_RGB);
    r.interlace = true;
    r.trns_color = true;
    r.trns_value.red = ref.rgb[0];
    r.trns_value.green = ref.rgb[1];
    r.trns_value.blue = ref.rgb[2];
    for (int y = 0; y < 11; ++y) r.rows.emplace_back(ref.row(y), ref.row(y) + ref.row_bytes());
    auto bytes = write_raw_png(r);
    auto im = load_image_from_memory(bytes.data(), bytes.size(), "adam7.png");
    ASSERT_TRUE(im.ok()) << im.status().to_string();
    EXPECT_EQ(im->rgb, ref.rgb);
  }
}

TEST(Image, ExifOrientationMatchesPilTranspose) {
  // 3x2 image whose red channel is 3 * (y * 3 + x); expected red values from PIL's Image.transpose.
  Image im = Image::make(3, 2);
  for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>(i);
  struct Case {
    int orientation, w, h;
    std::vector<int> red;
  };
  const std::vector<Case> cases = {
      {1, 3, 2, {0, 3, 6, 9, 12, 15}},  {2, 3, 2, {6, 3, 0, 15, 12, 9}},  {3, 3, 2, {15, 12, 9, 6, 3, 0}},
      {4, 3, 2, {9, 12, 15, 0, 3, 6}},  {5, 2, 3, {0, 9, 3, 12, 6, 15}},  {6, 2, 3, {9, 0, 12, 3, 15, 6}},
      {7, 2, 3, {15, 6, 12, 3, 9, 0}},  {8, 2, 3, {6, 15, 3, 12, 0, 9}},
  };
  for (const auto& c : cases) {
    const Image t = apply_exif_orientation(im, c.orientation);
    ASSERT_EQ(t.width, c.w);
    ASSERT_EQ(t.height, c.h);
    for (int i = 0; i < c.w * c.h; ++i) EXPECT_EQ(t.rgb[3 * i], c.red[i]) << "orientation " << c.orientation;
  }
}

// Inserts an APP1 Exif segment carrying `orientation` right after SOI.
std::vector<uint8_t> with_exif(const std::vector<uint8_t>& jpeg, int orientation, bool little_endian) {
  std::vector<uint8_t> tiff;
  if (little_endian) tiff = {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0,
                             static_cast<uint8_t>(orientation), 0, 0, 0, 0, 0, 0, 0};
  else tiff = {'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1,
               0, static_cast<uint8_t>(orientation), 0, 0, 0, 0, 0, 0};
  std::vector<uint8_t> payload = {'E', 'x', 'i', 'f', 0, 0};
  payload.insert(payload.end(), tiff.begin(), tiff.end());
  const size_t len = payload.size() + 2;
  std::vector<uint8_t> out(jpeg.begin(), jpeg.begin() + 2);
  out.insert(out.end(), {0xFF, 0xE1, static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len & 255)});
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), jpeg.begin() + 2, jpeg.end());
  return out;
}

TEST(Image, JpegExifOrientationApplied) {
  // 32x16: left half red, right half blue (flat 8x8 blocks survive JPEG well).
  Image im = Image::make(32, 16);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 32; ++x) {
      im.px(x, y)[0] = x < 16 ? 255 : 0;
      im.px(x, y)[2] = x < 16 ? 0 : 255;
    }
  auto base = encode_jpeg(im, 95);
  ASSERT_TRUE(base.ok());
  for (bool le : {true, false}) {
    const auto bytes = with_exif(*base, 6, le);  // ROTATE_270: 90 degrees clockwise
    EXPECT_EQ(parse_exif_orientation(bytes.data() + 6, bytes.size() - 6), 6);  // the APP1 payload
    auto rot = load_image_from_memory(bytes.data(), bytes.size(), "exif6.jpg");
    ASSERT_TRUE(rot.ok()) << rot.status().to_string();
    ASSERT_EQ(rot->width, 16);
    ASSERT_EQ(rot->height, 32);
    // Clockwise: the old left (red) half is now on top.
    EXPECT_GT(rot->px(8, 4)[0], 200);
    EXPECT_LT(rot->px(8, 4)[2], 60);
    EXPECT_GT(rot->px(8, 28)[2], 200);
    ImageLoadOptions no_exif;
    no_exif.apply_exif_orientation = false;
    auto raw = load_image_from_memory(bytes.data(), bytes.size(), "exif6.jpg", no_exif);
    ASSERT_TRUE(raw.ok());
    EXPECT_EQ(raw->width, 32);
  }
}

TEST(Image, CorruptAndTruncatedInputsGiveErrors) {
  const Image im = noise_image(64, 48, 3);
  auto jpg = encode_jpeg(im, 90);
  auto png = encode_png(im);
  ASSERT_TRUE(jpg.ok() && png.ok());

  // Truncated JPEG: PIL raises "image file is truncated"; libjpeg would pad silently.
  for (size_t cut : {jpg->size() / 2, jpg->size() - 2, size_t{20}, size_t{3}}) {
    auto r = load_image_from_memory(jpg->data(), cut, "cut.jpg");
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
    EXPECT_NE(r.status().message().find("cut.jpg"), std::string::npos) << r.status().message();
  }
  // Truncated PNG.
  for (size_t cut : {png->size() / 2, size_t{40}, size_t{8}}) {
    auto r = load_image_from_memory(png->data(), cut, "cut.png");
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_NE(r.status().message().find("cut.png"), std::string::npos) << r.status().message();
  }
  // PNG with a broken IHDR CRC.
  {
    std::vector<uint8_t> bad = *png;
    bad[29] ^= 0xFF;  // inside the IHDR CRC (bytes 29..32)
    auto r = load_image_from_memory(bad.data(), bad.size(), "crc.png");
    EXPECT_FALSE(r.ok());
  }
  // JPEG whose header is garbage after SOI.
  {
    std::vector<uint8_t> bad = {0xFF, 0xD8, 0xFF, 0x00, 0x13, 0x37, 0x00, 0x00};
    auto r = load_image_from_memory(bad.data(), bad.size(), "garbage.jpg");
    EXPECT_FALSE(r.ok());
  }
  // Unknown format, empty data, missing file.
  const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0};
  auto u = load_image_from_memory(gif, sizeof gif, "a.gif");
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.status().code(), StatusCode::kUnsupported);
  EXPECT_FALSE(load_image_from_memory(nullptr, 0, "empty").ok());
  auto nf = load_image("/nonexistent/dir/x.jpg");
  ASSERT_FALSE(nf.ok());
  EXPECT_EQ(nf.status().code(), StatusCode::kNotFound);
  // PNM with a short raster.
  const std::string pnm = "P6\n4 4\n255\nabc";
  EXPECT_FALSE(load_image_from_memory(reinterpret_cast<const uint8_t*>(pnm.data()), pnm.size(), "s.ppm").ok());
}

TEST(Image, RandomMutationsNeverCrash) {
  const Image im = smooth_image(40, 30);
  auto jpg = encode_jpeg(im, 80);
  auto png = encode_png(im);
  ASSERT_TRUE(jpg.ok() && png.ok());
  std::mt19937 rng(11);
  int errors = 0;
  for (int it = 0; it < 300; ++it) {
    std::vector<uint8_t> b = (it % 2) ? *jpg : *png;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < n; ++k) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    if (rng() % 3 == 0) b.resize(rng() % b.size() + 1);
    auto r = load_image_from_memory(b.data(), b.size(), "mutant");
    if (!r.ok()) {
      ++errors;
      EXPECT_NE(r.status().message().find("mutant"), std::string::npos);
    } else {
      EXPECT_EQ(r->rgb.size(), r->size_bytes());
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(Image, AbsurdDimensionsRejected) {
  // PNG: a valid 20000 x 1 file.
  RawPng r = raw_png(20000, 1, 8, PNG_COLOR_TYPE_GRAY);
  r.rows.push_back(std::vector<uint8_t>(20000, 7));
  auto bytes = write_raw_png(r);
  auto pi = load_image_from_memory(bytes.data(), bytes.size(), "wide.png");
  ASSERT_FALSE(pi.ok());
  EXPECT_EQ(pi.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(pi.status().message().find("16384"), std::string::npos) << pi.status().message();
  ImageLoadOptions big;
  big.max_side = 30000;
  EXPECT_TRUE(load_image_from_memory(bytes.data(), bytes.size(), "wide.png", big).ok());

  // JPEG: patch the SOF0 width field to 40000.
  auto jpg = encode_jpeg(smooth_image(16, 16), 90);
  ASSERT_TRUE(jpg.ok());
  std::vector<uint8_t> b = *jpg;
  bool patched = false;
  for (size_t i = 2; i + 9 < b.size(); ++i) {
    if (b[i] == 0xFF && b[i + 1] == 0xC0) {  // SOF0: FF C0 len(2) precision(1) height(2) width(2)
      b[i + 7] = 40000 >> 8;
      b[i + 8] = 40000 & 255;
      patched = true;
      break;
    }
  }
  ASSERT_TRUE(patched);
  auto ji = load_image_from_memory(b.data(), b.size(), "wide.jpg");
  ASSERT_FALSE(ji.ok());
  EXPECT_EQ(ji.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ji.status().message().find("wide.jpg"), std::string::npos);
}

TEST(Image, CropAndBounds) {
  const Image im = noise_image(10, 8, 4);
  auto c = crop_image(im, 2, 3, 5, 4);
  ASSERT_TRUE(c.ok());
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 5; ++x)
      for (int k = 0; k < 3; ++k) EXPECT_EQ(c->px(x, y)[k], im.px(x + 2, y + 3)[k]);
  EXPECT_FALSE(crop_image(im, 6, 0, 5, 1).ok());
  EXPECT_FALSE(crop_image(im, -1, 0, 2, 2).ok());
}

// The road-scene photos of the shared data set, decoded by PIL (Image.open(p).convert("RGB")): FNV-1a 64 of
// the RGB bytes. Skipped when the data set is absent (a fresh clone has no ../shared).
TEST(Image, RealPhotosDecodeLikePil) {
  std::string dir;
  if (const char* env = std::getenv("EDGEVLM_SHARED_DATA_DIR")) dir = env;
#ifdef EDGEVLM_SHARED_DATA_DIR
  if (dir.empty()) dir = EDGEVLM_SHARED_DATA_DIR;
#endif
  const std::filesystem::path real = std::filesystem::path(dir) / "real";
  if (dir.empty() || !std::filesystem::exists(real)) GTEST_SKIP() << "no shared data at " << real;
  const std::vector<std::tuple<std::string, int, int, uint64_t>> expected = {
      {"solidWhiteCurve.jpg", 960, 540, 0x45c6c98d5533021bull}, {"solidWhiteRight.jpg", 960, 540, 0xba4296e708202bfaull},
      {"solidYellowCurve.jpg", 960, 540, 0x905ca19d149cd4b2ull}, {"solidYellowCurve2.jpg", 960, 540, 0x6b6f1fb3f587baddull},
      {"solidYellowLeft.jpg", 960, 540, 0xce70ac09ead6ad90ull}, {"whiteCarLaneSwitch.jpg", 960, 540, 0x1e939f4524b4d68cull},
      {"test1.jpg", 1280, 720, 0xbafe3b11d209a6c6ull},          {"test2.jpg", 1280, 720, 0x9271fa8ebd270e1cull},
      {"test3.jpg", 1280, 720, 0x9bdbb495e5224c21ull},          {"test4.jpg", 1280, 720, 0x1334b12dd7f82dd8ull},
      {"test5.jpg", 1280, 720, 0x92a931c94aed869dull},          {"test6.jpg", 1280, 720, 0x1bd9fa53799b16aeull},
  };
  int found = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(real)) {
    if (entry.path().extension() != ".jpg") continue;
    auto im = load_image(entry.path().string());
    ASSERT_TRUE(im.ok()) << im.status().to_string();
    ++found;
    EXPECT_TRUE((im->width == 960 && im->height == 540) || (im->width == 1280 && im->height == 720))
        << entry.path() << " " << im->width << "x" << im->height;
    for (const auto& [name, w, h, hash] : expected) {
      if (entry.path().filename() == name) {
        EXPECT_EQ(im->width, w);
        EXPECT_EQ(im->height, h);
        EXPECT_EQ(fnv1a(im->rgb), hash) << name << " differs from PIL's decode";
      }
    }
  }
  if (found == 0) GTEST_SKIP() << "no .jpg under " << real;
}

}  // namespace
}  // namespace ev
