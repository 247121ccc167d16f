// PIL-exact image resampling for 8-bit images (1..4 interleaved channels, processed independently).
//
// A re-implementation of Pillow's Image.resize (PIL/Image.py, src/_imaging.c _resize,
// src/libImaging/Resample.c, src/libImaging/Geometry.c ImagingScaleAffine) so that results are bit-identical:
//  - same size: a copy;
//  - NEAREST: the affine scale transform, source coordinate accumulated in double from 0.5 * scale;
//  - other filters: separable convolution, horizontal pass first (only over the source rows the vertical pass
//    reads) into an 8-bit intermediate, then vertical; a pass is skipped when its dimension is unchanged.
//    The filter support is widened by the downscale factor; coefficients are normalised in double, converted
//    to fixed point with 22 fractional bits (PRECISION_BITS = 32 - 8 - 2) rounding half away from zero, and
//    accumulated in int32 from 1 << 21 before the clip to [0, 255].
// Callers that emulate PIL on RGBA must premultiply alpha themselves (Pillow resizes RGBA as RGBa).
#pragma once

#include "core/status.h"
#include "perception/image.h"

namespace ev {

class ThreadPool;

// Values of PIL.Image.Resampling, so a preprocessor_config.json "resample" integer maps directly.
enum class ResampleFilter : int { kNearest = 0, kLanczos = 1, kBilinear = 2, kBicubic = 3, kBox = 4, kHamming = 5 };

// Maps PIL's integer (0..5) to the enum; kInvalidArgument for anything else.
Result<ResampleFilter> resample_filter_from_pil(int pil_value);
const char* resample_filter_name(ResampleFilter f);

// Resizes `src` to out_width x out_height. Rows are spread over `pool` when given (results do not depend on
// the thread count). Errors: empty input, non-positive or absurd (> kMaxImageSide) output size, or a pixel
// buffer that does not match width * height * channels.
Result<Image> resize_image(const Image& src, int out_width, int out_height, ResampleFilter filter,
                           ThreadPool* pool = nullptr);

}  // namespace ev
