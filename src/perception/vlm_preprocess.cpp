// Idefics3 / SmolVLM preprocessing; see vlm_preprocess.h for the reference files and the steps.
#include "perception/vlm_preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/thread_pool.h"
#include "perception/resize.h"

namespace ev {

namespace {

// transformers' MAX_IMAGE_SIZE ("4k resolution as absolute maximum") in image_processing_idefics3.py.
constexpr int kMaxProcessorImageSize = 4096;

// Python int(x) for a finite positive double: truncation toward zero.
int py_int(double x) { return static_cast<int>(x); }
// Python math.ceil(a / b) for ints: true division in double, then ceil.
int py_ceil_div(int a, int b) { return static_cast<int>(std::ceil(static_cast<double>(a) / static_cast<double>(b))); }

std::string dims(int w, int h) { return std::to_string(w) + "x" + std::to_string(h); }

}  // namespace

Status validate_vlm_options(const VlmImageOptions& o) {
  if (o.do_resize && (o.longest_edge <= 0 || o.longest_edge > kMaxImageSide))
    return InvalidArgument("preprocessor: size.longest_edge " + std::to_string(o.longest_edge) + " out of range");
  if (o.max_image_size <= 0 || o.max_image_size > kMaxImageSide)
    return InvalidArgument("preprocessor: max_image_size.longest_edge " + std::to_string(o.max_image_size) +
                           " out of range");
  if (o.resample < 0 || o.resample > 5)
    return InvalidArgument("preprocessor: resample " + std::to_string(o.resample) + " is not a PIL filter (0..5)");
  if (o.image_seq_len <= 0)
    return InvalidArgument("preprocessor: image_seq_len " + std::to_string(o.image_seq_len) + " must be positive");
  if (o.do_rescale && !(std::isfinite(o.rescale_factor)))
    return InvalidArgument("preprocessor: rescale_factor is not finite");
  if (o.do_normalize) {
    for (int c = 0; c < 3; ++c) {
      if (!std::isfinite(o.mean[c]) || !std::isfinite(o.std[c]) || o.std[c] == 0.0f)
        return InvalidArgument("preprocessor: image_mean/image_std[" + std::to_string(c) +
                               "] invalid (std must be finite and non-zero)");
    }
  }
  return Status::Ok();
}

// image_processing_idefics3.py: _resize_output_size_rescale_to_max_len, then
// _resize_output_size_scale_below_upper_bound with MAX_IMAGE_SIZE.
std::pair<int, int> vlm_resize_output_size(int height, int width, int longest_edge) {
  {
    const int max_len = longest_edge;
    const double aspect = static_cast<double>(width) / static_cast<double>(height);
    if (width >= height) {
      width = max_len;
      height = py_int(static_cast<double>(width) / aspect);
      if (height % 2 != 0) height += 1;
    } else {
      height = max_len;
      width = py_int(static_cast<double>(height) * aspect);
      if (width % 2 != 0) width += 1;
    }
    height = std::max(height, 1);  // min_len = 1
    width = std::max(width, 1);
  }
  {
    const int max_len = kMaxProcessorImageSize;
    const double aspect = static_cast<double>(width) / static_cast<double>(height);
    if (width >= height && width > max_len) {
      width = max_len;
      height = py_int(static_cast<double>(width) / aspect);
    } else if (height > width && height > max_len) {
      height = max_len;
      width = py_int(static_cast<double>(height) * aspect);
    }
    height = std::max(height, 1);
    width = std::max(width, 1);
  }
  return {height, width};
}

// image_processing_idefics3.py: resize_for_vision_encoder.
std::pair<int, int> vlm_vision_encoder_size(int height, int width, int m) {
  const double aspect = static_cast<double>(width) / static_cast<double>(height);
  if (width >= height) {
    width = py_ceil_div(width, m) * m;
    height = py_int(static_cast<double>(width) / aspect);
    height = py_ceil_div(height, m) * m;
  } else {
    height = py_ceil_div(height, m) * m;
    width = py_int(static_cast<double>(height) * aspect);
    width = py_ceil_div(width, m) * m;
  }
  return {height, width};
}

Result<VlmTiles> vlm_make_tiles(const Image& img, const VlmImageOptions& opts, ThreadPool* pool) {
  EV_RETURN_IF_ERROR(validate_vlm_options(opts));
  if (img.empty() || img.channels != 3 || img.rgb.size() != img.size_bytes())
    return InvalidArgument("preprocess: expected a non-empty RGB image, got " + dims(img.width, img.height) + "x" +
                           std::to_string(img.channels));
  EV_ASSIGN_OR_RETURN(const ResampleFilter filter, resample_filter_from_pil(opts.resample));
  const int S = opts.max_image_size;

  Image cur = img;
  if (opts.do_resize) {
    const auto [h, w] = vlm_resize_output_size(img.height, img.width, opts.longest_edge);
    EV_ASSIGN_OR_RETURN(cur, resize_image(img, w, h, filter, pool));
  }

  VlmTiles out;
  if (!opts.do_image_splitting) {
    // "We square the images to max_image_size".
    EV_ASSIGN_OR_RETURN(Image sq, resize_image(cur, S, S, filter, pool));
    out.tiles.push_back(std::move(sq));
    return out;
  }

  const auto [vh, vw] = vlm_vision_encoder_size(cur.height, cur.width, S);
  if (vh <= 0 || vw <= 0 || vh > kMaxImageSide || vw > kMaxImageSide)
    return InvalidArgument("preprocess: image " + dims(img.width, img.height) + " maps to an unusable size " +
                           dims(vw, vh) + " for tiles of " + std::to_string(S));
  EV_ASSIGN_OR_RETURN(cur, resize_image(cur, vw, vh, filter, pool));

  // split_image
  const int H = cur.height, W = cur.width;
  if (H > S || W > S) {
    const int nh = py_ceil_div(H, S), nw = py_ceil_div(W, S);
    const int oh = py_ceil_div(H, nh), ow = py_ceil_div(W, nw);
    for (int r = 0; r < nh; ++r) {
      for (int c = 0; c < nw; ++c) {
        const int x0 = c * ow, y0 = r * oh;
        const int x1 = std::min(x0 + ow, W), y1 = std::min(y0 + oh, H);
        // Sizes are multiples of S here, so every crop is S x S; anything else would break the tensor layout.
        if (x1 - x0 != S || y1 - y0 != S)
          return Internal("preprocess: tile " + std::to_string(r) + "," + std::to_string(c) + " is " +
                          dims(x1 - x0, y1 - y0) + ", expected " + dims(S, S));
        EV_ASSIGN_OR_RETURN(Image tile, crop_image(cur, x0, y0, S, S));
        out.tiles.push_back(std::move(tile));
      }
    }
    out.rows = nh;
    out.cols = nw;
    EV_ASSIGN_OR_RETURN(Image global, resize_image(cur, S, S, filter, pool));
    out.tiles.push_back(std::move(global));
  } else {
    if (H != S || W != S)
      return Internal("preprocess: unsplit image is " + dims(W, H) + ", expected " + dims(S, S));
    out.tiles.push_back(std::move(cur));
  }
  return out;
}

Status vlm_normalize_tiles(const std::vector<Image>& tiles, const VlmImageOptions& opts, float* out) {
  EV_RETURN_IF_ERROR(validate_vlm_options(opts));
  // The result depends only on (value, channel): tabulate it with the reference's exact float operations.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      float x = opts.do_rescale ? static_cast<float>(static_cast<double>(v) * opts.rescale_factor)
                                : static_cast<float>(v);
      if (opts.do_normalize) x = (x - opts.mean[c]) / opts.std[c];
      lut[c][v] = x;
    }
  }
  const int S = opts.max_image_size;
  const size_t plane = static_cast<size_t>(S) * static_cast<size_t>(S);
  for (size_t t = 0; t < tiles.size(); ++t) {
    const Image& im = tiles[t];
    if (im.width != S || im.height != S || im.channels != 3 || im.rgb.size() != im.size_bytes())
      return InvalidArgument("normalize: tile " + std::to_string(t) + " is " + dims(im.width, im.height) + "x" +
                             std::to_string(im.channels) + ", expected " + dims(S, S) + "x3");
    float* o = out + t * 3 * plane;
    const uint8_t* p = im.rgb.data();
    for (size_t i = 0; i < plane; ++i) {
      o[i] = lut[0][p[3 * i]];
      o[plane + i] = lut[1][p[3 * i + 1]];
      o[2 * plane + i] = lut[2][p[3 * i + 2]];
    }
  }
  return Status::Ok();
}

Result<PreprocessedImage> preprocess_image(const Image& img, const VlmImageOptions& opts, ThreadPool* pool) {
  EV_ASSIGN_OR_RETURN(VlmTiles tiles, vlm_make_tiles(img, opts, pool));
  const int S = opts.max_image_size;
  PreprocessedImage out;
  out.rows = tiles.rows;
  out.cols = tiles.cols;
  out.pixels = Tensor::empty(DType::kF32, Shape{static_cast<int64_t>(tiles.tiles.size()), 3, S, S});
  out.pixels.set_name("pixel_values");
  EV_RETURN_IF_ERROR(vlm_normalize_tiles(tiles.tiles, opts, out.pixels.data_as<float>()));
  return out;
}

std::string image_prompt_string(int rows, int cols, int image_seq_len, const std::string& image_token,
                                const std::string& fake_token, const std::string& global_token) {
  std::string run;
  run.reserve(image_token.size() * static_cast<size_t>(std::max(image_seq_len, 0)));
  for (int i = 0; i < image_seq_len; ++i) run += image_token;
  std::string s;
  if (rows == 0 && cols == 0) return fake_token + global_token + run + fake_token;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      s += fake_token;
      s += "<row_" + std::to_string(r + 1) + "_col_" + std::to_string(c + 1) + ">";
      s += run;
    }
    s += "\n";
  }
  s += "\n" + fake_token + global_token + run + fake_token;
  return s;
}

Result<std::string> expand_image_tokens(const std::string& prompt, const std::vector<ImageLayout>& layouts,
                                        int image_seq_len, const ImageTokenStrings& tokens) {
  if (tokens.image.empty()) return InvalidArgument("expand_image_tokens: empty image token");
  // str.split(image_token): non-overlapping occurrences, left to right.
  std::vector<size_t> at;
  for (size_t pos = prompt.find(tokens.image); pos != std::string::npos;
       pos = prompt.find(tokens.image, pos + tokens.image.size()))
    at.push_back(pos);
  if (at.size() != layouts.size())
    return InvalidArgument("expand_image_tokens: the prompt has " + std::to_string(at.size()) + " " + tokens.image +
                           " tokens but " + std::to_string(layouts.size()) + " images were given");
  std::string out;
  size_t prev = 0;
  for (size_t i = 0; i < at.size(); ++i) {
    out.append(prompt, prev, at[i] - prev);
    out += image_prompt_string(layouts[i].rows, layouts[i].cols, image_seq_len, tokens.image, tokens.fake,
                               tokens.global);
    prev = at[i] + tokens.image.size();
  }
  out.append(prompt, prev, std::string::npos);
  return out;
}

Result<std::string> expand_image_tokens(const std::string& prompt, const std::vector<PreprocessedImage>& images,
                                        int image_seq_len, const ImageTokenStrings& tokens) {
  std::vector<ImageLayout> layouts;
  layouts.reserve(images.size());
  for (const auto& im : images) layouts.push_back({im.rows, im.cols});
  return expand_image_tokens(prompt, layouts, image_seq_len, tokens);
}

}  // namespace ev
