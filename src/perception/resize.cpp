// PIL-exact resampling; see resize.h. Follows Pillow's src/libImaging/Resample.c (precompute_coeffs,
// normalize_coeffs_8bpc, ImagingResampleHorizontal_8bpc / Vertical_8bpc, ImagingResampleInner) and
// src/libImaging/Geometry.c (ImagingScaleAffine, used by _imaging.c _resize for NEAREST).
//
// Bit-exactness depends on evaluating the filter kernels in double exactly as Pillow's C does, so floating-point
// contraction into FMA must stay off here (Pillow's x86-64 wheels are built without FMA).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "perception/resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "core/thread_pool.h"

namespace ev {

Result<ResampleFilter> resample_filter_from_pil(int v) {
  if (v < 0 || v > 5)
    return InvalidArgument("resample filter " + std::to_string(v) +
                           " is not a PIL filter (0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)");
  return static_cast<ResampleFilter>(v);
}

const char* resample_filter_name(ResampleFilter f) {
  switch (f) {
    case ResampleFilter::kNearest: return "nearest";
    case ResampleFilter::kLanczos: return "lanczos";
    case ResampleFilter::kBilinear: return "bilinear";
    case ResampleFilter::kBicubic: return "bicubic";
    case ResampleFilter::kBox: return "box";
    case ResampleFilter::kHamming: return "hamming";
  }
  return "unknown";
}

namespace {

constexpr double kPi = 3.14159265358979323846;  // M_PI
constexpr int kPrecisionBits = 32 - 8 - 2;       // Pillow's PRECISION_BITS

// Filter kernels, each written with the same operation order and literal types as Pillow.
double box_kernel(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_kernel(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_kernel(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * kPi;
  // Pillow writes the window constants as float literals (0.54f, 0.46f): keep them float.
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}

double lanczos_kernel(double x) {
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
  return 0.0;
}

struct Kernel {
  double (*fn)(double);
  double support;
};

Kernel kernel_for(ResampleFilter f) {
  switch (f) {
    case ResampleFilter::kBox: return {box_kernel, 0.5};
    case ResampleFilter::kBilinear: return {bilinear_kernel, 1.0};
    case ResampleFilter::kHamming: return {hamming_kernel, 1.0};
    case ResampleFilter::kBicubic: return {bicubic_kernel, 2.0};
    case ResampleFilter::kLanczos: return {lanczos_kernel, 3.0};
    case ResampleFilter::kNearest: break;
  }
  return {bilinear_kernel, 1.0};  // unreachable: NEAREST takes the affine path
}

// Fixed-point coefficients for one axis: output index i reads `count[i]` inputs from `first[i]` with weights
// k[i * ksize + j].
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
};

// Pillow's precompute_coeffs (box = [0, in_size]) followed by normalize_coeffs_8bpc.
Coeffs precompute_coeffs(int in_size, int out_size, const Kernel& kern) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  double filterscale, scale;
  filterscale = scale = static_cast<double>(in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  const double support = kern.support * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<size_t>(out_size));
  c.count.resize(static_cast<size_t>(out_size));
  c.k.assign(static_cast<size_t>(out_size) * static_cast<size_t>(c.ksize), 0);
  std::vector<double> w(static_cast<size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    // (int) truncates toward zero, as in Pillow ("Round the value").
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      const double v = kern.fn((x + xmin - center + 0.5) * ss);
      w[static_cast<size_t>(x)] = v;
      ww += v;
    }
    int32_t* kk = &c.k[static_cast<size_t>(xx) * static_cast<size_t>(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      double v = w[static_cast<size_t>(x)];
      if (ww != 0.0) v /= ww;
      // normalize_coeffs_8bpc: round half away from zero via truncating casts.
      kk[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                    : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[static_cast<size_t>(xx)] = xmin;
    c.count[static_cast<size_t>(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t ss) {
  const int32_t v = ss >> kPrecisionBits;  // arithmetic shift, as Pillow's table lookup index
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

void for_rows(ThreadPool* pool, int n, const std::function<void(int64_t, int64_t)>& fn) {
  if (pool && pool->size() > 1 && n >= 16) {
    pool->parallel_for(n, [&](int, int64_t b, int64_t e) { fn(b, e); }, 4);
  } else {
    fn(0, n);
  }
}

// ImagingResampleHorizontal_8bpc: out row yy reads input row yy + row_offset.
void resample_horizontal(const Image& in, Image& out, int row_offset, const Coeffs& c, ThreadPool* pool) {
  const int C = in.channels;
  const int W = out.width;
  for_rows(pool, out.height, [&](int64_t y0, int64_t y1) {
    for (int64_t yy = y0; yy < y1; ++yy) {
      const uint8_t* src = in.row(static_cast<int>(yy) + row_offset);
      uint8_t* dst = out.row(static_cast<int>(yy));
      for (int xx = 0; xx < W; ++xx) {
        const int xmin = c.first[static_cast<size_t>(xx)], cnt = c.count[static_cast<size_t>(xx)];
        const int32_t* k = &c.k[static_cast<size_t>(xx) * static_cast<size_t>(c.ksize)];
        const uint8_t* s = src + static_cast<size_t>(xmin) * static_cast<size_t>(C);
        if (C == 3) {
          int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
          for (int x = 0; x < cnt; ++x) {
            s0 += s[3 * x] * k[x];
            s1 += s[3 * x + 1] * k[x];
            s2 += s[3 * x + 2] * k[x];
          }
          dst[3 * xx] = clip8(s0);
          dst[3 * xx + 1] = clip8(s1);
          dst[3 * xx + 2] = clip8(s2);
        } else {
          for (int ch = 0; ch < C; ++ch) {
            int32_t acc = 1 << (kPrecisionBits - 1);
            for (int x = 0; x < cnt; ++x) acc += s[C * x + ch] * k[x];
            dst[C * xx + ch] = clip8(acc);
          }
        }
      }
    }
  });
}

// ImagingResampleVertical_8bpc. Integer sums are exact, so accumulating a whole row at a time (vectorisable)
// gives the same result as Pillow's per-pixel loop.
void resample_vertical(const Image& in, Image& out, const Coeffs& c, ThreadPool* pool) {
  const size_t n = out.row_bytes();
  for_rows(pool, out.height, [&](int64_t y0, int64_t y1) {
    std::vector<int32_t> acc(n);
    for (int64_t yy = y0; yy < y1; ++yy) {
      const int ymin = c.first[static_cast<size_t>(yy)], cnt = c.count[static_cast<size_t>(yy)];
      const int32_t* k = &c.k[static_cast<size_t>(yy) * static_cast<size_t>(c.ksize)];
      std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
      for (int y = 0; y < cnt; ++y) {
        const uint8_t* s = in.row(ymin + y);
        const int32_t ky = k[y];
        int32_t* a = acc.data();
        for (size_t i = 0; i < n; ++i) a[i] += s[i] * ky;
      }
      uint8_t* dst = out.row(static_cast<int>(yy));
      for (size_t i = 0; i < n; ++i) dst[i] = clip8(acc[i]);
    }
  });
}

// Geometry.c ImagingScaleAffine with a = {in_w / out_w, 0, 0, 0, in_h / out_h, 0} and fill = 1: the source
// coordinate starts at half a step and is accumulated, not recomputed, exactly as Pillow does.
Image resize_nearest(const Image& in, int ow, int oh) {
  const int C = in.channels;
  Image out = Image::make(ow, oh, C);
  const double a0 = static_cast<double>(static_cast<float>(in.width) - 0.0f) / ow;
  const double a4 = static_cast<double>(static_cast<float>(in.height) - 0.0f) / oh;
  std::vector<int> xin(static_cast<size_t>(ow), -1);
  double xo = 0.0 + a0 * 0.5;
  for (int x = 0; x < ow; ++x) {
    const int xi = xo < 0.0 ? -1 : static_cast<int>(xo);
    if (xi >= 0 && xi < in.width) xin[static_cast<size_t>(x)] = xi;
    xo += a0;
  }
  double yo = 0.0 + a4 * 0.5;
  for (int y = 0; y < oh; ++y) {
    const int yi = yo < 0.0 ? -1 : static_cast<int>(yo);
    uint8_t* dst = out.row(y);  // already zero (fill)
    if (yi >= 0 && yi < in.height) {
      const uint8_t* src = in.row(yi);
      for (int x = 0; x < ow; ++x) {
        const int xi = xin[static_cast<size_t>(x)];
        if (xi >= 0) std::memcpy(dst + C * x, src + C * xi, static_cast<size_t>(C));
      }
    }
    yo += a4;
  }
  return out;
}

}  // namespace

Result<Image> resize_image(const Image& src, int ow, int oh, ResampleFilter filter, ThreadPool* pool) {
  if (src.empty()) return InvalidArgument("resize_image: empty source image");
  if (src.channels < 1 || src.channels > 4)
    return InvalidArgument("resize_image: unsupported channel count " + std::to_string(src.channels));
  if (src.rgb.size() != src.size_bytes())
    return InvalidArgument("resize_image: pixel buffer holds " + std::to_string(src.rgb.size()) +
                           " bytes, expected " + std::to_string(src.size_bytes()));
  if (ow <= 0 || oh <= 0 || ow > kMaxImageSide || oh > kMaxImageSide)
    return InvalidArgument("resize_image: output size " + std::to_string(ow) + "x" + std::to_string(oh) +
                           " out of range (1.." + std::to_string(kMaxImageSide) + ")");
  if (static_cast<int>(filter) < 0 || static_cast<int>(filter) > 5)
    return InvalidArgument("resize_image: invalid filter " + std::to_string(static_cast<int>(filter)));

  // PIL/Image.py resize: same size (and full box) returns a copy, whatever the filter.
  if (ow == src.width && oh == src.height) return src;
  if (filter == ResampleFilter::kNearest) return resize_nearest(src, ow, oh);

  const Kernel kern = kernel_for(filter);
  const bool need_h = ow != src.width;
  const bool need_v = oh != src.height;

  Coeffs cv = precompute_coeffs(src.height, oh, kern);
  // Source rows the vertical pass reads: the horizontal pass only produces these.
  const int ybox_first = cv.first[0];
  const int ybox_last = cv.first[static_cast<size_t>(oh - 1)] + cv.count[static_cast<size_t>(oh - 1)];

  if (need_h) {
    const Coeffs ch = precompute_coeffs(src.width, ow, kern);
    for (int& f : cv.first) f -= ybox_first;
    Image tmp = Image::make(ow, ybox_last - ybox_first, src.channels);
    resample_horizontal(src, tmp, ybox_first, ch, pool);
    if (!need_v) return tmp;
    Image out = Image::make(ow, oh, src.channels);
    resample_vertical(tmp, out, cv, pool);
    return out;
  }
  // need_v only (need_h false and sizes differ).
  Image out = Image::make(src.width, oh, src.channels);
  resample_vertical(src, out, cv, pool);
  return out;
}

}  // namespace ev
