#include "perception/video_writer.h"

#include <cstring>
#include <vector>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <cmath>

namespace ev {

namespace {

std::string av_error(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof buf);
  return buf;
}

}  // namespace

struct VideoWriter::Impl {
  std::string path;
  std::string codec;
  AVFormatContext* fmt = nullptr;
  AVCodecContext* enc = nullptr;
  AVStream* stream = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* pkt = nullptr;
  SwsContext* sws = nullptr;
  int width = 0, height = 0;
  // The caller's frame is copied here before sws_scale: libswscale's SIMD input readers read past the end of a
  // row (up to its input padding), which on a tightly packed caller buffer runs off the allocation. Rows are
  // padded to 64 bytes and the buffer ends with 64 spare bytes.
  std::vector<uint8_t> staging;
  int staging_stride = 0;
  int64_t next_pts = 0;
  bool header_written = false;
  bool open = false;

  void release() {
    staging.clear();
    if (sws) sws_freeContext(sws);
    sws = nullptr;
    if (frame) av_frame_free(&frame);
    if (pkt) av_packet_free(&pkt);
    if (enc) avcodec_free_context(&enc);
    if (fmt) {
      if (fmt->pb && !(fmt->oformat->flags & AVFMT_NOFILE)) avio_closep(&fmt->pb);
      avformat_free_context(fmt);
    }
    fmt = nullptr;
    stream = nullptr;
    open = false;
    header_written = false;
  }

  // Sends one frame (or nullptr to flush) and writes every packet the encoder returns.
  Status encode(AVFrame* f) {
    int r = avcodec_send_frame(enc, f);
    if (r < 0) return IoError(path + ": encoding a frame failed: " + av_error(r));
    for (;;) {
      r = avcodec_receive_packet(enc, pkt);
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return Status::Ok();
      if (r < 0) return IoError(path + ": encoder error: " + av_error(r));
      av_packet_rescale_ts(pkt, enc->time_base, stream->time_base);
      pkt->stream_index = stream->index;
      r = av_interleaved_write_frame(fmt, pkt);
      av_packet_unref(pkt);
      if (r < 0) return IoError(path + ": writing a packet failed: " + av_error(r));
    }
  }
};

VideoWriter::VideoWriter() : impl_(std::make_unique<Impl>()) {}
VideoWriter::~VideoWriter() {
  if (impl_) {
    (void)close();
    impl_->release();
  }
}
VideoWriter::VideoWriter(VideoWriter&&) noexcept = default;
VideoWriter& VideoWriter::operator=(VideoWriter&&) noexcept = default;

bool VideoWriter::is_open() const { return impl_ && impl_->open; }
const std::string& VideoWriter::codec_name() const { return impl_->codec; }
int64_t VideoWriter::frames_written() const { return impl_->next_pts; }

Status VideoWriter::open(const std::string& path, int width, int height, double fps, const VideoWriterOptions& opts) {
  Impl& m = *impl_;
  if (m.open) return InvalidArgument(path + ": VideoWriter is already open on " + m.path);
  m.release();
  m.path = path;
  m.next_pts = 0;
  // libx264 reports its settings at info level on stderr; keep FFmpeg to errors unless someone raised it.
  if (av_log_get_level() == AV_LOG_INFO) av_log_set_level(AV_LOG_ERROR);
  if (width < 16 || height < 16 || width > 8192 || height > 8192)
    return InvalidArgument(path + ": video size " + std::to_string(width) + "x" + std::to_string(height) +
                           " out of range [16, 8192]");
  if (width % 2 || height % 2)
    return InvalidArgument(path + ": video width and height must be even (4:2:0), got " + std::to_string(width) + "x" +
                           std::to_string(height));
  if (!(fps >= 1 && fps <= 1000)) return InvalidArgument(path + ": fps must be in [1, 1000]");
  m.width = width;
  m.height = height;

  int r = avformat_alloc_output_context2(&m.fmt, nullptr, nullptr, path.c_str());
  if (r < 0 || !m.fmt) {
    m.release();
    return Unsupported(path + ": no container for this file name (use .mp4, .mkv or .avi): " + av_error(r));
  }
  // Encoder choice.
  struct Choice {
    const char* key;
    const AVCodec* codec;
  };
  Choice choices[3] = {{"h264", avcodec_find_encoder_by_name("libx264")},
                       {"mpeg4", avcodec_find_encoder(AV_CODEC_ID_MPEG4)},
                       {"mjpeg", avcodec_find_encoder(AV_CODEC_ID_MJPEG)}};
  const AVCodec* codec = nullptr;
  std::string key;
  for (const auto& c : choices) {
    if (!c.codec) continue;
    if (!opts.codec.empty() && opts.codec != c.key) continue;
    // 1: supported; 0: not; < 0: the muxer keeps no list (MPEG-TS, for one), so the encoder is tried.
    if (avformat_query_codec(m.fmt->oformat, c.codec->id, FF_COMPLIANCE_NORMAL) == 0) continue;
    codec = c.codec;
    key = c.key;
    break;
  }
  if (!codec) {
    m.release();
    return Unsupported(path + ": no usable video encoder" + (opts.codec.empty() ? std::string() : " '" + opts.codec + "'") +
                       " for this container in this FFmpeg build (tried libx264, mpeg4, mjpeg)");
  }
  m.codec = codec->name;
  m.stream = avformat_new_stream(m.fmt, nullptr);
  m.enc = avcodec_alloc_context3(codec);
  m.frame = av_frame_alloc();
  m.pkt = av_packet_alloc();
  if (!m.stream || !m.enc || !m.frame || !m.pkt) {
    m.release();
    return Status(StatusCode::kOutOfMemory, path + ": cannot allocate the encoder");
  }
  // Frame rate as a rational (30 -> 30/1, 29.97 -> 30000/1001).
  AVRational rate = av_d2q(fps, 100000);
  m.enc->width = width;
  m.enc->height = height;
  m.enc->time_base = av_inv_q(rate);
  m.enc->framerate = rate;
  m.enc->gop_size = opts.gop;
  m.enc->pix_fmt = key == "mjpeg" ? AV_PIX_FMT_YUVJ420P : AV_PIX_FMT_YUV420P;
  if (key == "mjpeg") {
    m.enc->flags |= AV_CODEC_FLAG_QSCALE;
    m.enc->global_quality = FF_QP2LAMBDA * 3;
  } else if (key == "mpeg4") {
    m.enc->flags |= AV_CODEC_FLAG_QSCALE;
    m.enc->global_quality = FF_QP2LAMBDA * 3;
    m.enc->max_b_frames = 0;
  }
  if (m.fmt->oformat->flags & AVFMT_GLOBALHEADER) m.enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  AVDictionary* copts = nullptr;
  if (key == "h264") {
    av_dict_set(&copts, "preset", "veryfast", 0);
    av_dict_set(&copts, "crf", std::to_string(opts.crf).c_str(), 0);
  }
  r = avcodec_open2(m.enc, codec, &copts);
  av_dict_free(&copts);
  if (r < 0) {
    m.release();
    return Unsupported(path + ": cannot open the " + key + " encoder: " + av_error(r));
  }
  r = avcodec_parameters_from_context(m.stream->codecpar, m.enc);
  if (r < 0) {
    m.release();
    return Internal(path + ": codec parameters: " + av_error(r));
  }
  m.stream->time_base = m.enc->time_base;
  m.stream->avg_frame_rate = rate;
  m.frame->format = m.enc->pix_fmt;
  m.frame->width = width;
  m.frame->height = height;
  r = av_frame_get_buffer(m.frame, 0);
  if (r < 0) {
    m.release();
    return Status(StatusCode::kOutOfMemory, path + ": frame buffer: " + av_error(r));
  }
  m.sws = sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, m.enc->pix_fmt, SWS_BICUBIC, nullptr, nullptr,
                         nullptr);
  if (!m.sws) {
    m.release();
    return Unsupported(path + ": no RGB -> YUV converter");
  }
  if (!(m.fmt->oformat->flags & AVFMT_NOFILE)) {
    r = avio_open(&m.fmt->pb, path.c_str(), AVIO_FLAG_WRITE);
    if (r < 0) {
      m.release();
      return IoError(path + ": cannot create the file: " + av_error(r));
    }
  }
  r = avformat_write_header(m.fmt, nullptr);
  if (r < 0) {
    m.release();
    return IoError(path + ": cannot write the container header: " + av_error(r));
  }
  m.header_written = true;
  m.open = true;
  return Status::Ok();
}

Status VideoWriter::write(const uint8_t* rgb) {
  Impl& m = *impl_;
  if (!m.open) return InvalidArgument("VideoWriter::write: not open");
  int r = av_frame_make_writable(m.frame);
  if (r < 0) return Internal(m.path + ": frame not writable: " + av_error(r));
  const size_t row = static_cast<size_t>(3 * m.width);
  if (m.staging.empty()) {
    m.staging_stride = static_cast<int>((row + 63) / 64 * 64);
    m.staging.assign(static_cast<size_t>(m.staging_stride) * static_cast<size_t>(m.height) + 64, 0);
  }
  for (int y = 0; y < m.height; ++y)
    std::memcpy(m.staging.data() + static_cast<size_t>(y) * static_cast<size_t>(m.staging_stride),
                rgb + static_cast<size_t>(y) * row, row);
  const uint8_t* src[1] = {m.staging.data()};
  const int stride[1] = {m.staging_stride};
  sws_scale(m.sws, src, stride, 0, m.height, m.frame->data, m.frame->linesize);
  m.frame->pts = m.next_pts++;
  return m.encode(m.frame);
}

Status VideoWriter::close() {
  if (!impl_) return Status::Ok();
  Impl& m = *impl_;
  if (!m.open) return Status::Ok();
  Status s = m.encode(nullptr);
  if (m.header_written) {
    const int r = av_write_trailer(m.fmt);
    if (r < 0 && s.ok()) s = IoError(m.path + ": cannot write the trailer: " + av_error(r));
  }
  const int64_t n = m.next_pts;
  m.release();
  m.next_pts = n;
  return s;
}

}  // namespace ev
