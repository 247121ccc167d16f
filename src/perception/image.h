// Image decoding (JPEG, PNG, PPM/PGM) into interleaved RGB8, and simple encoders for debugging and tests.
//
// Decoding follows what the Python reference does before the image processor sees the pixels:
// transformers.image_utils.load_image = PIL.Image.open + ImageOps.exif_transpose + convert("RGB").
//  - JPEG: libjpeg-turbo with its defaults (ISLOW IDCT, fancy upsampling), exactly as Pillow's JpegDecode.c
//    drives it, so pixel values are identical to PIL's. CMYK/YCCK JPEGs are converted like Pillow's cmyk2rgb
//    (Adobe-inverted data un-inverted first).
//  - PNG: any colour type and bit depth. Alpha (and tRNS transparency) is dropped, as convert("RGB") does.
//    1/2/4-bit grey is scaled to 8 bits (x255, x85, x17); 16-bit samples keep their high byte, except 16-bit
//    grey, which PIL opens as mode I;16 and converts to RGB by clipping at 255 (Pillow Convert.c I16_RGB).
//  - EXIF orientation (JPEG APP1, PNG eXIf) is applied when ImageLoadOptions::apply_exif_orientation is set.
// Format detection uses magic bytes, never the file extension.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace ev {

// Interleaved 8-bit image, row-major: pixel (x, y) channel c is rgb[(y * width + x) * channels + c].
// Decoders always produce channels == 3 (RGB).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<uint8_t> rgb;

  static Image make(int width, int height, int channels = 3);  // zero-filled
  size_t row_bytes() const { return static_cast<size_t>(width) * static_cast<size_t>(channels); }
  size_t size_bytes() const { return row_bytes() * static_cast<size_t>(height); }
  uint8_t* row(int y) { return rgb.data() + static_cast<size_t>(y) * row_bytes(); }
  const uint8_t* row(int y) const { return rgb.data() + static_cast<size_t>(y) * row_bytes(); }
  uint8_t* px(int x, int y) { return row(y) + static_cast<size_t>(x) * static_cast<size_t>(channels); }
  const uint8_t* px(int x, int y) const { return row(y) + static_cast<size_t>(x) * static_cast<size_t>(channels); }
  bool empty() const { return width <= 0 || height <= 0; }
};

enum class ImageFormat { kUnknown, kJpeg, kPng, kPnm };

// Sniffs the first bytes: FF D8 FF (JPEG), 89 'PNG' \r\n 1A \n (PNG), "P5"/"P6" (binary PGM/PPM).
ImageFormat detect_image_format(const uint8_t* data, size_t size);
const char* image_format_name(ImageFormat f);

// Largest accepted width or height; larger images are rejected before any pixel memory is allocated.
constexpr int kMaxImageSide = 16384;

struct ImageLoadOptions {
  // Rotate/flip by the EXIF orientation tag, as transformers' load_image (ImageOps.exif_transpose) does.
  bool apply_exif_orientation = true;
  int max_side = kMaxImageSide;
};

// Decodes a file. Errors: kNotFound / kIoError (cannot read), kUnsupported (unknown format), kCorrupt (bad or
// truncated data), kInvalidArgument (absurd dimensions). The message always names the file.
Result<Image> load_image(const std::string& path, const ImageLoadOptions& opts = {});
// Same for a buffer; `name` is used in error messages.
Result<Image> load_image_from_memory(const uint8_t* data, size_t size, const std::string& name = "<memory>",
                                     const ImageLoadOptions& opts = {});

// Encoders (RGB8 or grey8 input; channels must be 1 or 3; 4 is written as RGBA for PNG).
Result<std::vector<uint8_t>> encode_png(const Image& img);
Result<std::vector<uint8_t>> encode_jpeg(const Image& img, int quality = 90);
Status save_png(const std::string& path, const Image& img);
Status save_jpeg(const std::string& path, const Image& img, int quality = 90);
Status save_ppm(const std::string& path, const Image& img);  // P6 (3 channels) or P5 (1 channel)

// Geometry helpers (exact pixel copies).
// Crops [x, x+w) x [y, y+h); the rectangle must lie inside the image.
Result<Image> crop_image(const Image& img, int x, int y, int w, int h);
// EXIF orientation values 1..8 (1 = identity), the transposes of PIL.ImageOps.exif_transpose.
Image apply_exif_orientation(const Image& img, int orientation);
// Reads the EXIF orientation (0 when absent or malformed) from a TIFF-structured EXIF block, with or without
// the leading "Exif\0\0".
int parse_exif_orientation(const uint8_t* data, size_t size);

}  // namespace ev
