// Resampling and Idefics3 / SmolVLM preprocessing tests.
//
// PIL-exactness: expected values are FNV-1a 64 hashes of outputs computed with Pillow 9.4 (Image.resize) on a
// procedural image that this file regenerates; the preprocessing hashes come from an independent Python
// emulation of Idefics3ImageProcessor's steps on top of PIL. The golden fixture test (preprocess_cases.json,
// written by transformers itself) is the final oracle and is skipped while the fixtures are absent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "formats/safetensors.h"
#include "perception/image.h"
#include "perception/resize.h"
#include "perception/vlm_preprocess.h"

namespace ev {
namespace {

uint64_t fnv1a(const uint8_t* d, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= d[i];
    h *= 0x100000001b3ull;
  }
  return h;
}
uint64_t fnv1a(const std::vector<uint8_t>& b) { return fnv1a(b.data(), b.size()); }

// The procedural test image (same formula in the Python generator of the expected hashes).
Image proc_image(int w, int h) {
  Image im = Image::make(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        im.px(x, y)[c] = static_cast<uint8_t>((x * 13 + y * 29 + c * 71 + ((x * y * 7) >> 4) + ((x ^ y) & 31)) & 255);
  return im;
}

TEST(Resize, MatchesPilHashes) {
  const Image src = proc_image(137, 91);
  struct Case {
    int w, h, filter;
    uint64_t hash;
  };
  // PIL: proc_image(137, 91).resize((w, h), resample=filter).tobytes()
  const std::vector<Case> cases = {
      {192, 128, 1, 0x6bd36f596caff20dull}, {64, 64, 0, 0xf03d9d01d60937d6ull},  {64, 64, 1, 0x80ccf77ab24d052eull},
      {64, 64, 2, 0x5614fecba6c0f8aeull},   {64, 64, 3, 0x007dbdaca33ac1b0ull},  {64, 64, 4, 0x514ba350c4fe9366ull},
      {64, 64, 5, 0x5a80a868afe471a6ull},   {300, 200, 3, 0xb94b1797640203c2ull}, {137, 40, 5, 0x356bf969e2b8f43bull},
      {50, 91, 4, 0x03bf21516cd2eb8aull},   {1, 1, 1, 0x2fbd371ae17f7f16ull},    {411, 91, 0, 0x5efe56f0bd9b7f45ull},
      {411, 300, 1, 0xf96e9242f1d91740ull},
  };
  ThreadPool pool(2);
  for (const auto& c : cases) {
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      auto r = resize_image(src, c.w, c.h, static_cast<ResampleFilter>(c.filter), p);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      EXPECT_EQ(r->width, c.w);
      EXPECT_EQ(r->height, c.h);
      EXPECT_EQ(fnv1a(r->rgb), c.hash) << c.w << "x" << c.h << " " << resample_filter_name(static_cast<ResampleFilter>(c.filter))
                                      << (p ? " (threaded)" : "");
    }
  }
  auto one = resize_image(proc_image(1, 1), 5, 3, ResampleFilter::kBilinear);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(fnv1a(one->rgb), 0x4d24d8c8d259bb6cull);
}

TEST(Resize, IdentityIsACopy) {
  const Image src = proc_image(31, 17);
  for (int f = 0; f <= 5; ++f) {
    auto r = resize_image(src, 31, 17, static_cast<ResampleFilter>(f));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->rgb, src.rgb);
  }
}

TEST(Resize, ConstantImageStaysConstant) {
  Image src = Image::make(45, 29);
  for (int i = 0; i < 45 * 29; ++i) {
    src.rgb[3 * i] = 17;
    src.rgb[3 * i + 1] = 200;
    src.rgb[3 * i + 2] = 255;
  }
  for (int f = 0; f <= 5; ++f)
    for (auto [w, h] : std::vector<std::pair<int, int>>{{10, 7}, {90, 58}, {45, 3}, {1, 29}, {200, 1}, {13, 101}}) {
      auto r = resize_image(src, w, h, static_cast<ResampleFilter>(f));
      ASSERT_TRUE(r.ok());
      for (int i = 0; i < w * h; ++i) {
        ASSERT_EQ(r->rgb[3 * i], 17) << "filter " << f << " " << w << "x" << h;
        ASSERT_EQ(r->rgb[3 * i + 1], 200);
        ASSERT_EQ(r->rgb[3 * i + 2], 255);
      }
    }
}

TEST(Resize, CheckerboardDownscaleAverages) {
  // 1-pixel checkerboard of 0 / 255 halved with BOX: every output averages two black and two white pixels.
  // Pillow rounds 127.5 up (coefficients 0.5 = 1 << 21, plus the 1 << 21 rounding term).
  Image src = Image::make(64, 32, 1);
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 64; ++x) src.row(y)[x] = ((x + y) % 2) ? 255 : 0;
  auto r = resize_image(src, 32, 16, ResampleFilter::kBox);
  ASSERT_TRUE(r.ok());
  for (uint8_t v : r->rgb) ASSERT_EQ(v, 128);
  // BILINEAR on an exact 2x downscale: symmetric weights 1/8, 3/8, 3/8, 1/8 away from the borders (where
  // the kernel is truncated), so interior pixels are the mean too.
  auto b = resize_image(src, 32, 16, ResampleFilter::kBilinear);
  ASSERT_TRUE(b.ok());
  for (int y = 1; y < 15; ++y)
    for (int x = 1; x < 31; ++x) ASSERT_NEAR(b->row(y)[x], 128, 1) << x << "," << y;
}

TEST(Resize, NearestPicksSourcePixels) {
  const Image src = proc_image(10, 6);
  auto up = resize_image(src, 20, 12, ResampleFilter::kNearest);
  ASSERT_TRUE(up.ok());
  for (int y = 0; y < 12; ++y)
    for (int x = 0; x < 20; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(up->px(x, y)[c], src.px(x / 2, y / 2)[c]);
}

TEST(Resize, RejectsBadArguments) {
  const Image src = proc_image(8, 8);
  EXPECT_FALSE(resize_image(src, 0, 5, ResampleFilter::kLanczos).ok());
  EXPECT_FALSE(resize_image(src, 5, -1, ResampleFilter::kLanczos).ok());
  EXPECT_FALSE(resize_image(src, 100000, 5, ResampleFilter::kLanczos).ok());
  EXPECT_FALSE(resize_image(Image{}, 5, 5, ResampleFilter::kLanczos).ok());
  EXPECT_FALSE(resize_image(src, 5, 5, static_cast<ResampleFilter>(9)).ok());
  Image broken = src;
  broken.rgb.resize(10);
  EXPECT_FALSE(resize_image(broken, 5, 5, ResampleFilter::kLanczos).ok());
  EXPECT_FALSE(resample_filter_from_pil(6).ok());
  EXPECT_EQ(*resample_filter_from_pil(1), ResampleFilter::kLanczos);
}

VlmImageOptions tiny_options(bool split) {
  VlmImageOptions o;
  o.longest_edge = 192;
  o.max_image_size = 64;
  o.do_image_splitting = split;
  o.image_seq_len = 16;
  return o;
}

TEST(VlmPreprocess, OutputSizes) {
  // Longest edge to 192, the other edge int(192 / aspect) made even.
  EXPECT_EQ(vlm_resize_output_size(100, 150, 192), std::make_pair(128, 192));
  EXPECT_EQ(vlm_resize_output_size(170, 90, 192), std::make_pair(192, 102));  // int(101.6) = 101 -> 102
  EXPECT_EQ(vlm_resize_output_size(20, 500, 192), std::make_pair(8, 192));    // int(7.68) = 7 -> 8
  EXPECT_EQ(vlm_resize_output_size(1, 10000, 192), std::make_pair(1, 192));   // 0 -> at least 1
  EXPECT_EQ(vlm_resize_output_size(64, 64, 192), std::make_pair(192, 192));   // small images grow
  EXPECT_EQ(vlm_resize_output_size(1000, 1000, 5000), std::make_pair(4096, 4096));  // MAX_IMAGE_SIZE cap
  // Up to multiples of the tile size.
  EXPECT_EQ(vlm_vision_encoder_size(128, 192, 64), std::make_pair(128, 192));
  EXPECT_EQ(vlm_vision_encoder_size(192, 102, 64), std::make_pair(192, 128));
  EXPECT_EQ(vlm_vision_encoder_size(8, 192, 64), std::make_pair(64, 192));
  EXPECT_EQ(vlm_vision_encoder_size(1080, 1920, 512), std::make_pair(1536, 2048));
}

TEST(VlmPreprocess, MatchesPythonEmulationHashes) {
  struct Case {
    int w, h;
    bool split;
    int rows, cols, n_tiles;
    uint64_t u8_hash, f32_hash;
  };
  // Python: PIL resizes + Idefics3ImageProcessor's size rules, float32 rescale (x * 1/255 in float64) and
  // normalize ((x - 0.5) / 0.5 in float32); u8 = concatenated HWC tiles, f32 = the [n, 3, 64, 64] tensor bytes.
  const std::vector<Case> cases = {
      {137, 91, true, 2, 3, 7, 0x96baba8f2206ad97ull, 0xdb7ac602df227503ull},
      {137, 91, false, 0, 0, 1, 0xc1c31ddeafda9d1full, 0xa96069d579b85b2cull},
      {60, 170, true, 3, 2, 7, 0xf262bfc8d8bf1a5bull, 0x021226c6af03e3eeull},
      {60, 170, false, 0, 0, 1, 0xb27ebcf37d14acf4ull, 0x5f7eace89514546bull},
      {64, 64, true, 3, 3, 10, 0x83eed342723b1114ull, 0x831a2e6dde08cf98ull},
      {64, 64, false, 0, 0, 1, 0x3b4c37ef53cb571bull, 0x8a1e378623616e88ull},
      {500, 20, true, 1, 3, 4, 0x0963f41c220047b5ull, 0x1ad0ba1ed3fdc035ull},
      {500, 20, false, 0, 0, 1, 0xdeb2a87bfd321900ull, 0x4b71a318954bf994ull},
  };
  ThreadPool pool(2);
  for (const auto& c : cases) {
    const Image src = proc_image(c.w, c.h);
    const VlmImageOptions o = tiny_options(c.split);
    auto tiles = vlm_make_tiles(src, o, &pool);
    ASSERT_TRUE(tiles.ok()) << tiles.status().to_string();
    EXPECT_EQ(tiles->rows, c.rows) << c.w << "x" << c.h;
    EXPECT_EQ(tiles->cols, c.cols);
    ASSERT_EQ(static_cast<int>(tiles->tiles.size()), c.n_tiles);
    std::vector<uint8_t> all;
    for (const auto& t : tiles->tiles) all.insert(all.end(), t.rgb.begin(), t.rgb.end());
    EXPECT_EQ(fnv1a(all), c.u8_hash) << c.w << "x" << c.h << (c.split ? " split" : "");

    auto pre = preprocess_image(src, o);
    ASSERT_TRUE(pre.ok()) << pre.status().to_string();
    EXPECT_EQ(pre->rows, c.rows);
    EXPECT_EQ(pre->cols, c.cols);
    EXPECT_EQ(pre->pixels.shape(), (Shape{c.n_tiles, 3, 64, 64}));
    EXPECT_EQ(pre->pixels.dtype(), DType::kF32);
    EXPECT_EQ(fnv1a(static_cast<const uint8_t*>(pre->pixels.data()), pre->pixels.nbytes()), c.f32_hash);
  }
}

TEST(VlmPreprocess, TileOrderAndGlobalView) {
  const Image src = proc_image(150, 100);
  const VlmImageOptions o = tiny_options(true);
  auto t = vlm_make_tiles(src, o);
  ASSERT_TRUE(t.ok());
  // 150x100 -> 192x128 (longest edge) -> already multiples of 64 -> 2 rows x 3 cols + global.
  ASSERT_EQ(t->rows, 2);
  ASSERT_EQ(t->cols, 3);
  ASSERT_EQ(t->tiles.size(), 7u);
  auto resized = resize_image(src, 192, 128, ResampleFilter::kLanczos);
  ASSERT_TRUE(resized.ok());
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c) {
      auto crop = crop_image(*resized, c * 64, r * 64, 64, 64);
      ASSERT_TRUE(crop.ok());
      EXPECT_EQ(t->tiles[static_cast<size_t>(r * 3 + c)].rgb, crop->rgb) << "tile " << r << "," << c;
    }
  auto global = resize_image(*resized, 64, 64, ResampleFilter::kLanczos);
  ASSERT_TRUE(global.ok());
  EXPECT_EQ(t->tiles.back().rgb, global->rgb);

  // No split: one square tile, the resized image squashed to 64x64.
  auto ns = vlm_make_tiles(src, tiny_options(false));
  ASSERT_TRUE(ns.ok());
  EXPECT_EQ(ns->rows, 0);
  EXPECT_EQ(ns->cols, 0);
  ASSERT_EQ(ns->tiles.size(), 1u);
  EXPECT_EQ(ns->tiles[0].rgb, global->rgb);
}

TEST(VlmPreprocess, RescaleNormalizeAndLayout) {
  Image src = Image::make(64, 64);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) {
      src.px(x, y)[0] = 0;
      src.px(x, y)[1] = 255;
      src.px(x, y)[2] = static_cast<uint8_t>(x);
    }
  VlmImageOptions o = tiny_options(false);
  o.do_resize = false;  // 64x64 is already the tile size: the pixels pass through unchanged
  o.mean[2] = 0.25f;
  o.std[2] = 0.75f;
  auto p = preprocess_image(src, o);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  const float* d = p->pixels.data_as<float>();
  const size_t plane = 64 * 64;
  for (size_t i = 0; i < plane; ++i) {
    ASSERT_EQ(d[i], -1.0f);
    ASSERT_EQ(d[plane + i], 1.0f);
    const int x = static_cast<int>(i % 64);
    const float r = static_cast<float>(static_cast<double>(x) * (1.0 / 255.0));
    ASSERT_EQ(d[2 * plane + i], (r - 0.25f) / 0.75f);
  }
  // Without rescale the raw values are normalized.
  o.do_rescale = false;
  o.mean[0] = 10.0f;
  o.std[0] = 2.0f;
  auto q = preprocess_image(src, o);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->pixels.data_as<float>()[0], -5.0f);
}

TEST(VlmPreprocess, RejectsBadInput) {
  VlmImageOptions o = tiny_options(true);
  EXPECT_FALSE(preprocess_image(Image{}, o).ok());
  Image grey = Image::make(10, 10, 1);
  EXPECT_FALSE(preprocess_image(grey, o).ok());
  o.std[1] = 0.0f;
  EXPECT_FALSE(preprocess_image(proc_image(10, 10), o).ok());
  o = tiny_options(true);
  o.resample = 7;
  EXPECT_FALSE(preprocess_image(proc_image(10, 10), o).ok());
  o = tiny_options(true);
  o.max_image_size = 0;
  EXPECT_FALSE(preprocess_image(proc_image(10, 10), o).ok());
}

TEST(VlmPrompt, SingleImageString) {
  EXPECT_EQ(image_prompt_string(0, 0, 3, "<image>", "<fake_token_around_image>", "<global-img>"),
            "<fake_token_around_image><global-img><image><image><image><fake_token_around_image>");
}

TEST(VlmPrompt, SplitImageString) {
  // processing_idefics3.py _prompt_split_image with 2 rows x 2 cols and image_seq_len 2 ("<i>" for brevity).
  const std::string expected =
      "<f><row_1_col_1><i><i><f><row_1_col_2><i><i>\n"
      "<f><row_2_col_1><i><i><f><row_2_col_2><i><i>\n"
      "\n<f><g><i><i><f>";
  EXPECT_EQ(image_prompt_string(2, 2, 2, "<i>", "<f>", "<g>"), expected);
  const std::string one_by_three = image_prompt_string(1, 3, 1, "<i>", "<f>", "<g>");
  EXPECT_EQ(one_by_three, "<f><row_1_col_1><i><f><row_1_col_2><i><f><row_1_col_3><i>\n\n<f><g><i><f>");
}

TEST(VlmPrompt, ExpandImageTokens) {
  const std::vector<ImageLayout> layouts = {{0, 0}, {1, 2}};
  auto s = expand_image_tokens("User:<image>a<image>b\nAssistant:", layouts, 1);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  const std::string a = image_prompt_string(0, 0, 1, "<image>", "<fake_token_around_image>", "<global-img>");
  const std::string b = image_prompt_string(1, 2, 1, "<image>", "<fake_token_around_image>", "<global-img>");
  EXPECT_EQ(*s, "User:" + a + "a" + b + "b\nAssistant:");

  auto none = expand_image_tokens("no images here", std::vector<ImageLayout>{}, 16);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, "no images here");

  auto too_few = expand_image_tokens("<image><image>", std::vector<ImageLayout>{{0, 0}}, 16);
  ASSERT_FALSE(too_few.ok());
  EXPECT_EQ(too_few.status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(expand_image_tokens("<image>", std::vector<ImageLayout>{{0, 0}, {0, 0}}, 16).ok());

  // The PreprocessedImage overload uses each image's rows / cols.
  auto pre = preprocess_image(proc_image(150, 100), tiny_options(true));
  ASSERT_TRUE(pre.ok());
  auto e = expand_image_tokens("<image>", std::vector<PreprocessedImage>{*pre}, 16);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e, image_prompt_string(2, 3, 16, "<image>", "<fake_token_around_image>", "<global-img>"));
}

// ---------------------------------------------------------------------------------------------------------
// Golden fixtures written by transformers (train/make_golden.py): tests/fixtures/preprocess_cases.json and
// tests/fixtures/golden/preprocess.safetensors.

Result<nlohmann::json> read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) return NotFound(path);
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    return Corrupt(path + ": " + e.what());
  }
}

// preprocessor_config.json (+ processor_config.json's image_seq_len) -> options.
Result<VlmImageOptions> options_from_model_dir(const std::string& dir) {
  EV_ASSIGN_OR_RETURN(nlohmann::json pc, read_json(dir + "/preprocessor_config.json"));
  VlmImageOptions o;
  try {
    if (pc.contains("do_resize")) o.do_resize = pc["do_resize"].get<bool>();
    if (pc.contains("size")) o.longest_edge = pc["size"]["longest_edge"].get<int>();
    if (pc.contains("max_image_size")) o.max_image_size = pc["max_image_size"]["longest_edge"].get<int>();
    if (pc.contains("do_image_splitting")) o.do_image_splitting = pc["do_image_splitting"].get<bool>();
    if (pc.contains("do_rescale")) o.do_rescale = pc["do_rescale"].get<bool>();
    if (pc.contains("rescale_factor")) o.rescale_factor = pc["rescale_factor"].get<double>();
    if (pc.contains("do_normalize")) o.do_normalize = pc["do_normalize"].get<bool>();
    if (pc.contains("resample")) o.resample = pc["resample"].get<int>();
    for (int c = 0; c < 3; ++c) {
      if (pc.contains("image_mean")) o.mean[c] = static_cast<float>(pc["image_mean"][c].get<double>());
      if (pc.contains("image_std")) o.std[c] = static_cast<float>(pc["image_std"][c].get<double>());
    }
  } catch (const std::exception& e) {
    return Corrupt(dir + "/preprocessor_config.json: " + e.what());
  }
  auto proc = read_json(dir + "/processor_config.json");
  if (proc.ok() && proc->contains("image_seq_len")) {
    o.image_seq_len = (*proc)["image_seq_len"].get<int>();
  } else {
    // image_seq_len = (image_size / patch_size)^2 / scale_factor^2 (processing_idefics3.py docstring).
    EV_ASSIGN_OR_RETURN(nlohmann::json cfg, read_json(dir + "/config.json"));
    try {
      const int isz = cfg["vision_config"]["image_size"].get<int>();
      const int psz = cfg["vision_config"]["patch_size"].get<int>();
      const int sf = cfg["scale_factor"].get<int>();
      o.image_seq_len = (isz / psz) * (isz / psz) / (sf * sf);
    } catch (const std::exception& e) {
      return Corrupt(dir + "/config.json: " + e.what());
    }
  }
  return o;
}

TEST(VlmPreprocessGolden, MatchesTransformers) {
  const std::string fx = EDGEVLM_FIXTURE_DIR;
  const std::string cases_path = fx + "/preprocess_cases.json";
  const std::string tensors_path = fx + "/golden/preprocess.safetensors";
  if (!std::filesystem::exists(cases_path) || !std::filesystem::exists(tensors_path))
    GTEST_SKIP() << "golden preprocessing fixtures absent (" << cases_path << ")";
  auto cases = read_json(cases_path);
  ASSERT_TRUE(cases.ok()) << cases.status().to_string();
  auto store = TensorStore::open_file(tensors_path);
  ASSERT_TRUE(store.ok()) << store.status().to_string();
  ASSERT_TRUE(cases->contains("cases"));
  int n = 0;
  for (const auto& c : (*cases)["cases"]) {
    const std::string model = c["model"].get<std::string>();
    const std::string image = c["image"].get<std::string>();
    const std::string tag = model + " " + image + (c.value("do_image_splitting", true) ? " split" : " nosplit");
    auto opts = options_from_model_dir(fx + "/" + model);
    ASSERT_TRUE(opts.ok()) << opts.status().to_string();
    if (c.contains("do_image_splitting")) opts->do_image_splitting = c["do_image_splitting"].get<bool>();
    auto img = load_image(fx + "/" + image);
    ASSERT_TRUE(img.ok()) << img.status().to_string();
    auto pre = preprocess_image(*img, *opts);
    ASSERT_TRUE(pre.ok()) << tag << ": " << pre.status().to_string();
    EXPECT_EQ(pre->rows, c["rows"].get<int>()) << tag;
    EXPECT_EQ(pre->cols, c["cols"].get<int>()) << tag;

    auto expected = store->get(c["pixel_values"].get<std::string>());
    ASSERT_TRUE(expected.ok()) << tag << ": " << expected.status().to_string();
    auto exp32 = expected->to(DType::kF32);
    ASSERT_TRUE(exp32.ok());
    ASSERT_EQ(exp32->shape(), pre->pixels.shape()) << tag;
    const float* a = pre->pixels.data_as<float>();
    const float* b = exp32->data_as<float>();
    float max_diff = 0;
    int64_t n_diff = 0, first = -1;
    for (int64_t i = 0; i < pre->pixels.numel(); ++i) {
      const float d = std::fabs(a[i] - b[i]);
      if (d != 0) {
        ++n_diff;
        if (first < 0) first = i;
      }
      max_diff = std::max(max_diff, d);
    }
    // Exact: every resize is PIL's algorithm and the float ops are numpy's.
    EXPECT_EQ(max_diff, 0.0f) << tag << ": " << n_diff << " of " << pre->pixels.numel() << " values differ, first at "
                              << first << " (ours " << (first >= 0 ? a[first] : 0) << ", reference "
                              << (first >= 0 ? b[first] : 0) << ")";

    if (c.contains("prompt_in") && c.contains("prompt_expanded")) {
      auto text = expand_image_tokens(c["prompt_in"].get<std::string>(), std::vector<PreprocessedImage>{*pre},
                                      opts->image_seq_len);
      ASSERT_TRUE(text.ok()) << tag << ": " << text.status().to_string();
      EXPECT_EQ(*text, c["prompt_expanded"].get<std::string>()) << tag;
    }
    ++n;
  }
  EXPECT_GT(n, 0);
}

// The end-to-end model cases (tests/fixtures/golden/<model>_case<k>.json + .safetensors): several images per
// prompt, both Idefics3ImageProcessorPil and SmolVLMImageProcessorPil. pixel_values holds the tiles of all
// images of the prompt concatenated in order.
TEST(VlmPreprocessGolden, ModelCasesPixelValuesAndPrompt) {
  const std::string fx = EDGEVLM_FIXTURE_DIR;
  const std::filesystem::path golden = std::filesystem::path(fx) / "golden";
  if (!std::filesystem::exists(golden)) GTEST_SKIP() << "no golden fixtures at " << golden;
  std::vector<std::filesystem::path> jsons;
  for (const auto& e : std::filesystem::directory_iterator(golden)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".json" && name.find("_case") != std::string::npos) jsons.push_back(e.path());
  }
  if (jsons.empty()) GTEST_SKIP() << "no <model>_case<k>.json under " << golden;
  std::sort(jsons.begin(), jsons.end());
  for (const auto& jp : jsons) {
    const std::string tag = jp.filename().string();
    auto cj = read_json(jp.string());
    ASSERT_TRUE(cj.ok()) << cj.status().to_string();
    const nlohmann::json& c = *cj;
    if (!c.contains("images") || c["images"].empty()) continue;
    auto opts = options_from_model_dir(fx + "/" + c["model"].get<std::string>());
    ASSERT_TRUE(opts.ok()) << tag << ": " << opts.status().to_string();
    if (c.contains("do_image_splitting")) opts->do_image_splitting = c["do_image_splitting"].get<bool>();

    std::vector<PreprocessedImage> pres;
    int64_t total_tiles = 0;
    for (size_t i = 0; i < c["images"].size(); ++i) {
      auto img = load_image(fx + "/" + c["images"][i].get<std::string>());
      ASSERT_TRUE(img.ok()) << img.status().to_string();
      auto pre = preprocess_image(*img, *opts);
      ASSERT_TRUE(pre.ok()) << tag << ": " << pre.status().to_string();
      if (c.contains("rows")) {
        EXPECT_EQ(pre->rows, c["rows"][i].get<int>()) << tag << " image " << i;
        EXPECT_EQ(pre->cols, c["cols"][i].get<int>()) << tag << " image " << i;
      }
      total_tiles += pre->n_tiles();
      pres.push_back(std::move(*pre));
    }

    std::filesystem::path tp = jp;
    tp.replace_extension(".safetensors");
    auto store = TensorStore::open_file(tp.string());
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    auto expected = store->get("pixel_values");
    ASSERT_TRUE(expected.ok()) << tag << ": " << expected.status().to_string();
    auto exp32 = expected->to(DType::kF32);
    ASSERT_TRUE(exp32.ok());
    const int S = opts->max_image_size;
    ASSERT_EQ(exp32->shape(), (Shape{total_tiles, 3, S, S})) << tag;
    const float* b = exp32->data_as<float>();
    int64_t off = 0, n_diff = 0;
    float max_diff = 0;
    for (const auto& p : pres) {
      const float* a = p.pixels.data_as<float>();
      for (int64_t i = 0; i < p.pixels.numel(); ++i) {
        const float d = std::fabs(a[i] - b[off + i]);
        n_diff += d != 0;
        max_diff = std::max(max_diff, d);
      }
      off += p.pixels.numel();
    }
    EXPECT_EQ(max_diff, 0.0f) << tag << ": " << n_diff << " values differ";

    auto text = expand_image_tokens(c["prompt"].get<std::string>(), pres, opts->image_seq_len);
    ASSERT_TRUE(text.ok()) << tag << ": " << text.status().to_string();
    EXPECT_EQ(*text, c["prompt_expanded"].get<std::string>()) << tag;
  }
}

}  // namespace
}  // namespace ev
