// Video file writer over FFmpeg (libavformat + libavcodec + libswscale): RGB8 frames in, an .mp4 / .mkv / .avi out.
//
//   VideoWriter vw;
//   EV_RETURN_IF_ERROR(vw.open("out.mp4", 224, 224, 30.0));
//   for (...) EV_RETURN_IF_ERROR(vw.write(rgb));   // width * height * 3 bytes, interleaved RGB
//   EV_RETURN_IF_ERROR(vw.close());                 // flushes the encoder and writes the trailer
//
// Codec, picked at open() from what this libavcodec has: H.264 through libx264 (yuv420p, preset "veryfast",
// CRF 20), else MPEG-4 part 2 (yuv420p, qscale 3), else MJPEG (yuvj420p). codec_name() says which one was used.
// 4:2:0 needs even sizes: width and height must be even (odd sizes are rejected at open()).
// The container comes from the file extension (FFmpeg's guess); one video stream, constant frame rate.
// Used by `edgevlm sim --video` and the streaming pipeline's overlay output.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace ev {

struct VideoWriterOptions {
  std::string codec;       // "" (auto: h264 > mpeg4 > mjpeg) or one of "h264", "mpeg4", "mjpeg"
  int crf = 20;            // H.264 quality (0..51, lower is better)
  int gop = 60;            // key frame interval
};

class VideoWriter {
 public:
  VideoWriter();
  ~VideoWriter();  // closes (errors ignored; call close() to see them)
  VideoWriter(VideoWriter&&) noexcept;
  VideoWriter& operator=(VideoWriter&&) noexcept;
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  // Errors: kInvalidArgument (sizes, fps), kUnsupported (no usable encoder / container), kIoError (cannot create
  // the file). Messages name the file.
  Status open(const std::string& path, int width, int height, double fps, const VideoWriterOptions& opts = {});
  // One frame of width * height * 3 bytes (RGB8, row-major, no padding).
  Status write(const uint8_t* rgb);
  // Flushes delayed frames and finishes the file. Safe to call twice.
  Status close();

  bool is_open() const;
  const std::string& codec_name() const;  // "libx264", "mpeg4" or "mjpeg" after open()
  int64_t frames_written() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ev
