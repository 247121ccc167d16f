// Image decoding and encoding. See image.h for the reference behaviour (PIL via transformers' load_image).
//
// libjpeg and libpng report fatal errors through longjmp. Every decoder keeps all of its state, C++ objects
// included, in a heap-allocated state struct that the setjmp frame reaches only through an unchanged pointer,
// so no C++ object is created, modified through a register copy, or destroyed between setjmp and longjmp.
#include "perception/image.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "core/log.h"

namespace ev {

Image Image::make(int width, int height, int channels) {
  Image im;
  im.width = width;
  im.height = height;
  im.channels = channels;
  im.rgb.assign(static_cast<size_t>(width) * static_cast<size_t>(height) * static_cast<size_t>(channels), 0);
  return im;
}

ImageFormat detect_image_format(const uint8_t* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return ImageFormat::kJpeg;
  static const uint8_t kPngSig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  if (n >= 8 && std::memcmp(d, kPngSig, 8) == 0) return ImageFormat::kPng;
  if (n >= 2 && d[0] == 'P' && (d[1] == '5' || d[1] == '6')) return ImageFormat::kPnm;
  return ImageFormat::kUnknown;
}

const char* image_format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kPnm: return "PNM";
    case ImageFormat::kUnknown: break;
  }
  return "unknown";
}

namespace {

Status check_dims(const std::string& name, const char* fmt, long long w, long long h, int max_side) {
  if (w <= 0 || h <= 0)
    return Corrupt(name + ": " + fmt + " has empty dimensions " + std::to_string(w) + "x" + std::to_string(h));
  if (w > max_side || h > max_side)
    return InvalidArgument(name + ": " + fmt + " dimensions " + std::to_string(w) + "x" + std::to_string(h) +
                           " exceed the limit of " + std::to_string(max_side) + " pixels per side");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------------
// EXIF orientation

uint32_t rd16(const uint8_t* p, bool le) { return le ? (p[0] | (p[1] << 8)) : ((p[0] << 8) | p[1]); }
uint32_t rd32(const uint8_t* p, bool le) {
  return le ? (uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24))
            : ((uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]));
}

}  // namespace

int parse_exif_orientation(const uint8_t* d, size_t n) {
  if (n >= 6 && std::memcmp(d, "Exif\0\0", 6) == 0) {
    d += 6;
    n -= 6;
  }
  if (n < 8) return 0;
  bool le;
  if (d[0] == 'I' && d[1] == 'I') le = true;
  else if (d[0] == 'M' && d[1] == 'M') le = false;
  else return 0;
  if (rd16(d + 2, le) != 42) return 0;
  const uint32_t ifd = rd32(d + 4, le);
  if (ifd > n || n - ifd < 2) return 0;
  const uint32_t count = rd16(d + ifd, le);
  for (uint32_t i = 0; i < count; ++i) {
    const size_t off = static_cast<size_t>(ifd) + 2 + static_cast<size_t>(i) * 12;
    if (off + 12 > n) return 0;
    const uint8_t* e = d + off;
    if (rd16(e, le) == 0x0112) {
      const uint32_t type = rd16(e + 2, le);
      uint32_t v = 0;
      if (type == 3) v = rd16(e + 8, le);        // SHORT
      else if (type == 4) v = rd32(e + 8, le);   // LONG (non-standard but seen in the wild)
      else return 0;
      return (v >= 1 && v <= 8) ? static_cast<int>(v) : 0;
    }
  }
  return 0;
}

Image apply_exif_orientation(const Image& src, int orientation) {
  if (orientation < 2 || orientation > 8 || src.empty()) return src;
  const int W = src.width, H = src.height, C = src.channels;
  const bool swap = orientation >= 5;  // 5..8 exchange width and height
  Image out = Image::make(swap ? H : W, swap ? W : H, C);
  // For every output pixel (x, y), the source pixel (sx, sy). PIL's names: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180,
  // 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270 (clockwise 90), 7 TRANSVERSE, 8 ROTATE_90 (counter-clockwise).
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; sy = y; break;
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;
        case 4: sx = x; sy = H - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = H - 1 - x; break;
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;
        case 8: sx = W - 1 - y; sy = x; break;
        default: break;
      }
      std::memcpy(out.px(x, y), src.px(sx, sy), static_cast<size_t>(C));
    }
  }
  return out;
}

Result<Image> crop_image(const Image& img, int x, int y, int w, int h) {
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > img.width || y + h > img.height)
    return InvalidArgument("crop_image: rectangle (" + std::to_string(x) + ", " + std::to_string(y) + ", " +
                           std::to_string(w) + "x" + std::to_string(h) + ") outside image " +
                           std::to_string(img.width) + "x" + std::to_string(img.height));
  Image out = Image::make(w, h, img.channels);
  for (int r = 0; r < h; ++r) std::memcpy(out.row(r), img.px(x, y + r), out.row_bytes());
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// JPEG

namespace {

struct JpegErrorMgr {
  jpeg_error_mgr pub;
  std::jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
  bool truncated;
};

void jpeg_error_exit_cb(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErrorMgr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->msg);
  std::longjmp(e->jb, 1);
}

// Warnings (level -1) are tolerated like Pillow does, except a premature end of data: libjpeg would pad the
// image with grey, while PIL raises "image file is truncated".
void jpeg_emit_message_cb(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  auto* e = reinterpret_cast<JpegErrorMgr*>(cinfo->err);
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    (*cinfo->err->format_message)(cinfo, e->msg);
    e->truncated = true;
    std::longjmp(e->jb, 1);
  }
  cinfo->err->num_warnings++;
}

void jpeg_output_message_cb(j_common_ptr) {}

struct JpegDecodeState {
  jpeg_decompress_struct cinfo;
  JpegErrorMgr err;
  const uint8_t* data = nullptr;
  size_t size = 0;
  int max_side = kMaxImageSide;
  std::vector<uint8_t> row;
  Image img;
  int orientation = 0;
  bool too_big = false;
  long long w = 0, h = 0;
  bool adobe = false;
  int in_components = 0;
};

// Returns false on a libjpeg error (message in st->err.msg) or when dimensions are rejected (st->too_big).
bool jpeg_decode_run(JpegDecodeState* st) {
  st->cinfo.err = jpeg_std_error(&st->err.pub);
  st->err.pub.error_exit = jpeg_error_exit_cb;
  st->err.pub.emit_message = jpeg_emit_message_cb;
  st->err.pub.output_message = jpeg_output_message_cb;
  st->err.truncated = false;
  st->err.msg[0] = 0;
  if (setjmp(st->err.jb)) {
    jpeg_destroy_decompress(&st->cinfo);
    return false;
  }
  jpeg_create_decompress(&st->cinfo);
  jpeg_mem_src(&st->cinfo, st->data, static_cast<unsigned long>(st->size));
  jpeg_save_markers(&st->cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&st->cinfo, TRUE);
  st->w = st->cinfo.image_width;
  st->h = st->cinfo.image_height;
  if (st->w <= 0 || st->h <= 0 || st->w > st->max_side || st->h > st->max_side) {
    st->too_big = true;
    jpeg_destroy_decompress(&st->cinfo);
    return false;
  }
  for (jpeg_saved_marker_ptr m = st->cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      st->orientation = parse_exif_orientation(m->data, m->data_length);
      break;
    }
  }
  st->adobe = st->cinfo.saw_Adobe_marker;
  // Output colour space as Pillow's JpegImagePlugin chooses the mode: L for grey, CMYK for CMYK/YCCK,
  // RGB otherwise (libjpeg converts YCbCr with its ISLOW IDCT and fancy upsampling defaults).
  switch (st->cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: st->cinfo.out_color_space = JCS_GRAYSCALE; break;
    case JCS_CMYK:
    case JCS_YCCK: st->cinfo.out_color_space = JCS_CMYK; break;
    default: st->cinfo.out_color_space = JCS_RGB; break;
  }
  jpeg_start_decompress(&st->cinfo);
  const int W = static_cast<int>(st->cinfo.output_width), H = static_cast<int>(st->cinfo.output_height);
  const int nc = st->cinfo.output_components;
  st->in_components = nc;
  st->img = Image::make(W, H, 3);
  st->row.resize(static_cast<size_t>(W) * static_cast<size_t>(nc));
  while (st->cinfo.output_scanline < st->cinfo.output_height) {
    const int y = static_cast<int>(st->cinfo.output_scanline);
    JSAMPROW rp = st->row.data();
    jpeg_read_scanlines(&st->cinfo, &rp, 1);
    uint8_t* o = st->img.row(y);
    const uint8_t* in = st->row.data();
    if (nc == 3) {
      std::memcpy(o, in, static_cast<size_t>(W) * 3);
    } else if (nc == 1) {
      for (int x = 0; x < W; ++x) o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = in[x];
    } else {  // CMYK: Pillow's rawmode "CMYK;I" for Adobe files, then Convert.c cmyk2rgb
      for (int x = 0; x < W; ++x) {
        int c[4];
        for (int k = 0; k < 4; ++k) c[k] = st->adobe ? 255 - in[4 * x + k] : in[4 * x + k];
        const int nk = 255 - c[3];
        for (int k = 0; k < 3; ++k) {
          const int t = c[k] * nk + 128;
          const int mul = ((t >> 8) + t) >> 8;  // MULDIV255
          int v = nk - mul;
          o[3 * x + k] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
      }
    }
  }
  jpeg_finish_decompress(&st->cinfo);
  jpeg_destroy_decompress(&st->cinfo);
  return true;
}

Result<Image> decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const ImageLoadOptions& opts) {
  auto st = std::make_unique<JpegDecodeState>();
  st->data = data;
  st->size = size;
  st->max_side = opts.max_side;
  if (!jpeg_decode_run(st.get())) {
    if (st->too_big) {
      EV_RETURN_IF_ERROR(check_dims(name, "JPEG", st->w, st->h, opts.max_side));
      return Internal(name + ": JPEG dimension check failed");
    }
    if (st->err.truncated) return Corrupt(name + ": truncated JPEG data (" + st->err.msg + ")");
    return Corrupt(name + ": corrupt JPEG: " + st->err.msg);
  }
  if (st->err.pub.num_warnings > 0)
    EV_LOG_DEBUG("%s: JPEG decoded with %ld libjpeg warnings", name.c_str(), st->err.pub.num_warnings);
  if (st->in_components != 1 && st->in_components != 3 && st->in_components != 4)
    return Unsupported(name + ": JPEG with " + std::to_string(st->in_components) + " components");
  Image img = std::move(st->img);
  if (opts.apply_exif_orientation && st->orientation > 1) img = apply_exif_orientation(img, st->orientation);
  return img;
}

// ---------------------------------------------------------------------------------------------------------
// PNG

struct PngDecodeState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  int max_side = kMaxImageSide;
  std::string msg;
  bool too_big = false;
  long long w = 0, h = 0;
  std::vector<uint8_t> buf;
  std::vector<png_bytep> rows;
  int channels = 0;
  int out_depth = 8;
  bool gray16 = false;
  int orientation = 0;
  bool end_ok = true;
};

void png_error_cb(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngDecodeState*>(png_get_error_ptr(png));
  st->msg = msg ? msg : "unknown libpng error";
  png_longjmp(png, 1);
}
void png_warning_cb(png_structp, png_const_charp) {}

void png_read_cb(png_structp png, png_bytep out, png_size_t n) {
  auto* st = static_cast<PngDecodeState*>(png_get_io_ptr(png));
  if (n > st->size - st->pos) png_error(png, "truncated PNG data (premature end of file)");
  std::memcpy(out, st->data + st->pos, n);
  st->pos += n;
}

bool png_decode_run(PngDecodeState* st) {
  st->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, st, png_error_cb, png_warning_cb);
  if (!st->png) {
    st->msg = "png_create_read_struct failed";
    return false;
  }
  st->info = png_create_info_struct(st->png);
  if (!st->info) {
    png_destroy_read_struct(&st->png, nullptr, nullptr);
    st->msg = "png_create_info_struct failed";
    return false;
  }
  if (setjmp(png_jmpbuf(st->png))) {
    png_destroy_read_struct(&st->png, &st->info, nullptr);
    return false;
  }
  png_set_read_fn(st->png, st, png_read_cb);
  png_read_info(st->png, st->info);
  png_uint_32 w = 0, h = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
  png_get_IHDR(st->png, st->info, &w, &h, &bit_depth, &color_type, &interlace, nullptr, nullptr);
  st->w = w;
  st->h = h;
  if (st->w <= 0 || st->h <= 0 || st->w > st->max_side || st->h > st->max_side) {
    st->too_big = true;
    png_destroy_read_struct(&st->png, &st->info, nullptr);
    return false;
  }
#ifdef PNG_eXIf_SUPPORTED
  {
    png_uint_32 n = 0;
    png_bytep exif = nullptr;
    if (png_get_eXIf_1(st->png, st->info, &n, &exif) && exif && n > 0)
      st->orientation = parse_exif_orientation(exif, n);
  }
#endif
  // Transforms reproducing Pillow's PngImagePlugin modes + convert("RGB"); see image.h.
  st->gray16 = (color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(st->png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(st->png);
  if (bit_depth == 16 && !st->gray16) png_set_strip_16(st->png);
  png_set_interlace_handling(st->png);
  png_read_update_info(st->png, st->info);
  st->channels = png_get_channels(st->png, st->info);
  st->out_depth = png_get_bit_depth(st->png, st->info);
  const size_t rowbytes = png_get_rowbytes(st->png, st->info);
  st->buf.resize(rowbytes * static_cast<size_t>(h));
  st->rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) st->rows[y] = st->buf.data() + rowbytes * y;
  png_read_image(st->png, st->rows.data());
  // The pixels are complete; problems after the image data (a missing IEND, a bad ancillary chunk) are not
  // worth rejecting the image for.
  if (setjmp(png_jmpbuf(st->png))) {
    st->end_ok = false;
    png_destroy_read_struct(&st->png, &st->info, nullptr);
    return true;
  }
  png_read_end(st->png, nullptr);
  png_destroy_read_struct(&st->png, &st->info, nullptr);
  return true;
}

Result<Image> decode_png(const uint8_t* data, size_t size, const std::string& name, const ImageLoadOptions& opts) {
  auto st = std::make_unique<PngDecodeState>();
  st->data = data;
  st->size = size;
  st->max_side = opts.max_side;
  if (!png_decode_run(st.get())) {
    if (st->too_big) {
      EV_RETURN_IF_ERROR(check_dims(name, "PNG", st->w, st->h, opts.max_side));
      return Internal(name + ": PNG dimension check failed");
    }
    return Corrupt(name + ": corrupt PNG: " + st->msg);
  }
  if (!st->end_ok) EV_LOG_DEBUG("%s: PNG trailer unreadable (%s); pixels kept", name.c_str(), st->msg.c_str());
  const int W = static_cast<int>(st->w), H = static_cast<int>(st->h), C = st->channels;
  if (C < 1 || C > 4 || (st->out_depth != 8 && !(st->gray16 && st->out_depth == 16)))
    return Unsupported(name + ": PNG decodes to " + std::to_string(C) + " channels of " +
                       std::to_string(st->out_depth) + " bits");
  Image img = Image::make(W, H, 3);
  for (int y = 0; y < H; ++y) {
    const uint8_t* in = st->rows[static_cast<size_t>(y)];
    uint8_t* o = img.row(y);
    if (st->gray16) {
      // libpng keeps 16-bit samples big-endian. Pillow's I16_RGB: values above 255 clip to 255.
      const int step = 2 * C;
      for (int x = 0; x < W; ++x) {
        const uint8_t hi = in[x * step], lo = in[x * step + 1];
        o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = hi == 0 ? lo : 255;
      }
    } else if (C == 1 || C == 2) {
      for (int x = 0; x < W; ++x) o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = in[x * C];
    } else if (C == 3) {
      std::memcpy(o, in, static_cast<size_t>(W) * 3);
    } else {
      for (int x = 0; x < W; ++x) {
        o[3 * x] = in[4 * x];
        o[3 * x + 1] = in[4 * x + 1];
        o[3 * x + 2] = in[4 * x + 2];
      }
    }
  }
  if (opts.apply_exif_orientation && st->orientation > 1) img = apply_exif_orientation(img, st->orientation);
  return img;
}

// ---------------------------------------------------------------------------------------------------------
// PNM (binary P5 / P6, maxval 255): a debugging format.

Result<Image> decode_pnm(const uint8_t* d, size_t n, const std::string& name, const ImageLoadOptions& opts) {
  size_t pos = 2;
  const int channels = d[1] == '6' ? 3 : 1;
  long long vals[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i) {
    // Skip whitespace and comments.
    for (;;) {
      if (pos >= n) return Corrupt(name + ": truncated PNM header");
      if (d[pos] == '#') {
        while (pos < n && d[pos] != '\n') ++pos;
      } else if (d[pos] == ' ' || d[pos] == '\t' || d[pos] == '\n' || d[pos] == '\r') {
        ++pos;
      } else {
        break;
      }
    }
    if (d[pos] < '0' || d[pos] > '9') return Corrupt(name + ": malformed PNM header");
    long long v = 0;
    while (pos < n && d[pos] >= '0' && d[pos] <= '9') {
      v = v * 10 + (d[pos] - '0');
      if (v > (1LL << 31)) return Corrupt(name + ": PNM header value out of range");
      ++pos;
    }
    vals[i] = v;
  }
  if (pos >= n) return Corrupt(name + ": truncated PNM header");
  ++pos;  // single whitespace before the raster
  EV_RETURN_IF_ERROR(check_dims(name, "PNM", vals[0], vals[1], opts.max_side));
  if (vals[2] != 255) return Unsupported(name + ": PNM maxval " + std::to_string(vals[2]) + " (only 255)");
  const int W = static_cast<int>(vals[0]), H = static_cast<int>(vals[1]);
  const size_t need = static_cast<size_t>(W) * static_cast<size_t>(H) * static_cast<size_t>(channels);
  if (n - pos < need)
    return Corrupt(name + ": truncated PNM raster (" + std::to_string(n - pos) + " of " + std::to_string(need) +
                   " bytes)");
  Image img = Image::make(W, H, 3);
  if (channels == 3) {
    std::memcpy(img.rgb.data(), d + pos, need);
  } else {
    for (size_t i = 0; i < need; ++i) img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = d[pos + i];
  }
  return img;
}

Result<std::vector<uint8_t>> read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return NotFound(path + ": cannot open image file");
  const std::streamoff len = f.tellg();
  if (len < 0) return IoError(path + ": cannot determine file size");
  std::vector<uint8_t> bytes(static_cast<size_t>(len));
  f.seekg(0);
  if (len > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), len)) return IoError(path + ": read failed");
  return bytes;
}

Status write_file_bytes(const std::string& path, const uint8_t* data, size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return IoError(path + ": cannot open for writing");
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) return IoError(path + ": write failed");
  return Status::Ok();
}

}  // namespace

Result<Image> load_image_from_memory(const uint8_t* data, size_t size, const std::string& name,
                                     const ImageLoadOptions& opts) {
  if (data == nullptr || size == 0) return Corrupt(name + ": empty image data");
  switch (detect_image_format(data, size)) {
    case ImageFormat::kJpeg: return decode_jpeg(data, size, name, opts);
    case ImageFormat::kPng: return decode_png(data, size, name, opts);
    case ImageFormat::kPnm: return decode_pnm(data, size, name, opts);
    case ImageFormat::kUnknown: break;
  }
  char head[32];
  std::snprintf(head, sizeof head, "%02x %02x %02x %02x", data[0], size > 1 ? data[1] : 0, size > 2 ? data[2] : 0,
                size > 3 ? data[3] : 0);
  return Unsupported(name + ": unrecognised image format (first bytes " + head + "; JPEG, PNG, PPM/PGM supported)");
}

Result<Image> load_image(const std::string& path, const ImageLoadOptions& opts) {
  EV_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_file_bytes(path));
  return load_image_from_memory(bytes.data(), bytes.size(), path, opts);
}

// ---------------------------------------------------------------------------------------------------------
// Encoders

namespace {

Status check_encodable(const Image& img, const char* what, bool allow_rgba) {
  if (img.empty()) return InvalidArgument(std::string(what) + ": empty image");
  if (!(img.channels == 1 || img.channels == 3 || (allow_rgba && img.channels == 4)))
    return InvalidArgument(std::string(what) + ": unsupported channel count " + std::to_string(img.channels));
  if (img.rgb.size() != img.size_bytes())
    return InvalidArgument(std::string(what) + ": pixel buffer holds " + std::to_string(img.rgb.size()) +
                           " bytes, expected " + std::to_string(img.size_bytes()));
  return Status::Ok();
}

struct PngWriteState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const Image* img = nullptr;
  std::vector<uint8_t> out;
  std::vector<png_bytep> rows;
  std::string msg;
};

void png_write_cb(png_structp png, png_bytep data, png_size_t n) {
  auto* st = static_cast<PngWriteState*>(png_get_io_ptr(png));
  st->out.insert(st->out.end(), data, data + n);
}
void png_flush_cb(png_structp) {}

// The reader callback png_error_cb expects a PngDecodeState error pointer; the writer has its own.
void png_write_error_cb(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngWriteState*>(png_get_error_ptr(png));
  st->msg = msg ? msg : "unknown libpng error";
  png_longjmp(png, 1);
}

bool png_encode_run(PngWriteState* st) {
  st->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, st, png_write_error_cb, png_warning_cb);
  if (!st->png) {
    st->msg = "png_create_write_struct failed";
    return false;
  }
  st->info = png_create_info_struct(st->png);
  if (!st->info) {
    png_destroy_write_struct(&st->png, nullptr);
    st->msg = "png_create_info_struct failed";
    return false;
  }
  if (setjmp(png_jmpbuf(st->png))) {
    png_destroy_write_struct(&st->png, &st->info);
    return false;
  }
  png_set_write_fn(st->png, st, png_write_cb, png_flush_cb);
  const Image& im = *st->img;
  const int ct = im.channels == 1 ? PNG_COLOR_TYPE_GRAY
                                  : (im.channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGB_ALPHA);
  png_set_IHDR(st->png, st->info, static_cast<png_uint_32>(im.width), static_cast<png_uint_32>(im.height), 8, ct,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  st->rows.resize(static_cast<size_t>(im.height));
  for (int y = 0; y < im.height; ++y) st->rows[static_cast<size_t>(y)] = const_cast<png_bytep>(im.row(y));
  png_write_info(st->png, st->info);
  png_write_image(st->png, st->rows.data());
  png_write_end(st->png, nullptr);
  png_destroy_write_struct(&st->png, &st->info);
  return true;
}

struct JpegWriteState {
  jpeg_compress_struct cinfo;
  JpegErrorMgr err;
  const Image* img = nullptr;
  int quality = 90;
  unsigned char* mem = nullptr;
  unsigned long mem_size = 0;
};

bool jpeg_encode_run(JpegWriteState* st) {
  st->cinfo.err = jpeg_std_error(&st->err.pub);
  st->err.pub.error_exit = jpeg_error_exit_cb;
  st->err.pub.output_message = jpeg_output_message_cb;
  st->err.msg[0] = 0;
  if (setjmp(st->err.jb)) {
    jpeg_destroy_compress(&st->cinfo);
    return false;
  }
  jpeg_create_compress(&st->cinfo);
  jpeg_mem_dest(&st->cinfo, &st->mem, &st->mem_size);
  const Image& im = *st->img;
  st->cinfo.image_width = static_cast<JDIMENSION>(im.width);
  st->cinfo.image_height = static_cast<JDIMENSION>(im.height);
  st->cinfo.input_components = im.channels;
  st->cinfo.in_color_space = im.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&st->cinfo);
  jpeg_set_quality(&st->cinfo, st->quality, TRUE);
  jpeg_start_compress(&st->cinfo, TRUE);
  while (st->cinfo.next_scanline < st->cinfo.image_height) {
    JSAMPROW rp = const_cast<JSAMPROW>(im.row(static_cast<int>(st->cinfo.next_scanline)));
    jpeg_write_scanlines(&st->cinfo, &rp, 1);
  }
  jpeg_finish_compress(&st->cinfo);
  jpeg_destroy_compress(&st->cinfo);
  return true;
}

}  // namespace

Result<std::vector<uint8_t>> encode_png(const Image& img) {
  EV_RETURN_IF_ERROR(check_encodable(img, "encode_png", true));
  auto st = std::make_unique<PngWriteState>();
  st->img = &img;
  if (!png_encode_run(st.get())) return Internal("encode_png: libpng: " + st->msg);
  return std::move(st->out);
}

Result<std::vector<uint8_t>> encode_jpeg(const Image& img, int quality) {
  EV_RETURN_IF_ERROR(check_encodable(img, "encode_jpeg", false));
  if (quality < 1 || quality > 100) return InvalidArgument("encode_jpeg: quality " + std::to_string(quality));
  auto st = std::make_unique<JpegWriteState>();
  st->img = &img;
  st->quality = quality;
  const bool ok = jpeg_encode_run(st.get());
  std::vector<uint8_t> out;
  if (ok && st->mem) out.assign(st->mem, st->mem + st->mem_size);
  if (st->mem) std::free(st->mem);
  if (!ok) return Internal(std::string("encode_jpeg: libjpeg: ") + st->err.msg);
  return out;
}

Status save_png(const std::string& path, const Image& img) {
  auto bytes = encode_png(img);
  if (!bytes.ok()) return bytes.status().with_context(path);
  return write_file_bytes(path, bytes->data(), bytes->size());
}

Status save_jpeg(const std::string& path, const Image& img, int quality) {
  auto bytes = encode_jpeg(img, quality);
  if (!bytes.ok()) return bytes.status().with_context(path);
  return write_file_bytes(path, bytes->data(), bytes->size());
}

Status save_ppm(const std::string& path, const Image& img) {
  EV_RETURN_IF_ERROR(check_encodable(img, "save_ppm", false));
  const std::string header = std::string(img.channels == 3 ? "P6" : "P5") + "\n" + std::to_string(img.width) + " " +
                             std::to_string(img.height) + "\n255\n";
  std::vector<uint8_t> out(header.begin(), header.end());
  out.insert(out.end(), img.rgb.begin(), img.rgb.end());
  return write_file_bytes(path, out.data(), out.size());
}

}  // namespace ev
