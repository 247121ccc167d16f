// Idefics3 / SmolVLM image preprocessing and the image-token expansion of the prompt, reproducing
// transformers' slow (PIL) processors exactly:
//   transformers/models/idefics3/image_processing_idefics3.py  (Idefics3ImageProcessor.preprocess)
//   transformers/models/smolvlm/image_processing_smolvlm.py    (SmolVLMImageProcessor.preprocess, same steps)
//   transformers/models/idefics3/processing_idefics3.py        (get_image_prompt_string, Idefics3Processor)
//
// Steps for one RGB image (H x W), S = max_image_size:
//  1. do_resize: resize so the longest edge is `longest_edge`, the other edge int(longest / aspect) rounded up
//     to even, at least 1; then capped at 4096 (MAX_IMAGE_SIZE) per side.
//  2a. do_image_splitting: resize both sides up to multiples of S (resize_for_vision_encoder), cut into
//      rows x cols tiles of S x S in row-major order, and append the whole (resized) image resized to S x S as
//      the global view. If the image is already S x S: one tile, rows = cols = 0.
//  2b. otherwise: resize to S x S; rows = cols = 0 (also the video-frame mode).
//  3. do_rescale: float32(float64(u8) * rescale_factor); do_normalize: (x - mean) / std in float32.
// Every resize is PIL's Image.resize with filter `resample` (perception/resize.h), so uint8 tiles are
// bit-identical to the reference and the float output differs by 0.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "perception/image.h"

namespace ev {

class ThreadPool;

// Fields of preprocessor_config.json; defaults are Idefics3ImageProcessor's.
struct VlmImageOptions {
  bool do_resize = true;
  int longest_edge = 4 * 364;  // size.longest_edge
  int max_image_size = 364;    // max_image_size.longest_edge: the tile side S (the vision tower's image_size)
  bool do_image_splitting = true;
  bool do_rescale = true;
  // double, not float: numpy multiplies in float64 (image.astype(np.float64) * scale) before the cast to
  // float32, and 1/255 rounded to float would change the last bit of some results.
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  float mean[3] = {0.5f, 0.5f, 0.5f};  // numpy casts mean/std to the image dtype (float32)
  float std[3] = {0.5f, 0.5f, 0.5f};
  int resample = 1;           // PIL filter number; 1 = LANCZOS
  int image_seq_len = 169;    // <image> tokens per tile (processor_config.json); used by the prompt helpers
};

// Checks ranges (positive sizes, std != 0, resample in 0..5, image_seq_len > 0).
Status validate_vlm_options(const VlmImageOptions& opts);

// Uint8 tiles before rescale/normalize: tiles in row-major order, then the global view; each S x S x 3.
struct VlmTiles {
  int rows = 0, cols = 0;  // 0, 0 when not split
  std::vector<Image> tiles;
};

struct PreprocessedImage {
  int rows = 0, cols = 0;  // 0, 0 when not split
  Tensor pixels;           // F32 [n_tiles, 3, S, S]; tiles row-major, global view last
  int n_tiles() const { return pixels.ndim() > 0 ? static_cast<int>(pixels.dim(0)) : 0; }
};

// Size after step 1 (get_resize_output_image_size), as {height, width}.
std::pair<int, int> vlm_resize_output_size(int height, int width, int longest_edge);
// Size after resize_for_vision_encoder, as {height, width}.
std::pair<int, int> vlm_vision_encoder_size(int height, int width, int max_image_size);

// Steps 1-2: the uint8 tiles. `pool` (optional) parallelises the resizes.
Result<VlmTiles> vlm_make_tiles(const Image& img, const VlmImageOptions& opts, ThreadPool* pool = nullptr);
// Step 3 into `out` (F32, 3 * S * S floats per tile, CHW).
Status vlm_normalize_tiles(const std::vector<Image>& tiles, const VlmImageOptions& opts, float* out);

// Steps 1-3.
Result<PreprocessedImage> preprocess_image(const Image& img, const VlmImageOptions& opts, ThreadPool* pool = nullptr);

// The text that replaces one "<image>" in the prompt (processing_idefics3.py get_image_prompt_string):
//  rows = cols = 0: fake + global + image * seq_len + fake
//  otherwise: for each row r, for each col c: fake + "<row_r_col_c>" + image * seq_len; then "\n" after each row;
//             then "\n" + fake + global + image * seq_len + fake.
std::string image_prompt_string(int rows, int cols, int image_seq_len, const std::string& image_token,
                                const std::string& fake_token, const std::string& global_token);

struct ImageTokenStrings {
  std::string image = "<image>";
  std::string fake = "<fake_token_around_image>";
  std::string global = "<global-img>";
};

struct ImageLayout {
  int rows = 0, cols = 0;
};

// Replaces the i-th occurrence of tokens.image in `prompt` with image_prompt_string of the i-th layout.
// kInvalidArgument when the number of occurrences differs from the number of images (the reference raises).
Result<std::string> expand_image_tokens(const std::string& prompt, const std::vector<ImageLayout>& layouts,
                                        int image_seq_len, const ImageTokenStrings& tokens = {});
Result<std::string> expand_image_tokens(const std::string& prompt, const std::vector<PreprocessedImage>& images,
                                        int image_seq_len, const ImageTokenStrings& tokens = {});

}  // namespace ev
