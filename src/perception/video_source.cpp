#include "perception/video_source.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavdevice/avdevice.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
}

#include "core/clock.h"
#include "sim/simulator.h"

namespace ev {

namespace {

std::string av_err(int e) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(e, buf, sizeof buf);
  return buf;
}

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

bool is_network(const std::string& u) {
  for (const char* p : {"rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "rtp://", "tcp://", "srt://"})
    if (starts_with(u, p)) return true;
  return false;
}

// Sleeps until `t0 + pts` on the steady clock (real-time pacing of a file as a camera would deliver it).
void pace_to(double t0, double pts) {
  const double wait = t0 + pts - now_s();
  if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(std::min(wait, 10.0)));
}

class FfmpegSource final : public VideoSource {
 public:
  ~FfmpegSource() override {
    sws_freeContext(sws_);
    av_frame_free(&frame_);
    av_packet_free(&pkt_);
    avcodec_free_context(&dec_);
    avformat_close_input(&fmt_);
  }

  Status open(const std::string& uri, const VideoSourceOptions& o) {
    static std::once_flag once;
    std::call_once(once, [] {
      avdevice_register_all();
      av_log_set_level(AV_LOG_ERROR);
    });
    uri_ = uri;
    opt_ = o;
    std::string url = uri;
    const AVInputFormat* ifmt = nullptr;
    AVDictionary* dict = nullptr;
    if (starts_with(uri, "v4l2:")) {
      ifmt = av_find_input_format("video4linux2");
      if (!ifmt) return Unsupported(uri + ": this FFmpeg has no video4linux2 input");
      url = uri.substr(5);
      live_ = true;
    } else if (uri == "-") {
      if (o.raw_width <= 0 || o.raw_height <= 0 || o.raw_width > kMaxImageSide || o.raw_height > kMaxImageSide)
        return InvalidArgument("raw frames on stdin need a size (--raw-size WxH, each side 1.." +
                               std::to_string(kMaxImageSide) + ")");
      if (!(o.raw_fps > 0 && o.raw_fps <= 1000)) return InvalidArgument("raw frames on stdin: fps must be in (0, 1000]");
      ifmt = av_find_input_format("rawvideo");
      url = "pipe:0";
      av_dict_set(&dict, "video_size", (std::to_string(o.raw_width) + "x" + std::to_string(o.raw_height)).c_str(), 0);
      av_dict_set(&dict, "pixel_format", "rgb24", 0);
      av_dict_set(&dict, "framerate", std::to_string(o.raw_fps).c_str(), 0);
      live_ = true;
    } else if (uri.find('%') != std::string::npos || uri.find('*') != std::string::npos) {
      ifmt = av_find_input_format("image2");
      if (uri.find('*') != std::string::npos) av_dict_set(&dict, "pattern_type", "glob", 0);
    } else if (is_network(uri)) {
      live_ = true;
      const std::string us = std::to_string(static_cast<int64_t>(o.network_timeout_s * 1e6));
      av_dict_set(&dict, "rw_timeout", us.c_str(), 0);
      if (starts_with(uri, "rtsp")) av_dict_set(&dict, "timeout", us.c_str(), 0);
    }
    fmt_ = avformat_alloc_context();
    if (!fmt_) return Internal("out of memory opening " + uri);
    fmt_->interrupt_callback.callback = &FfmpegSource::interrupt;
    fmt_->interrupt_callback.opaque = this;
    arm_deadline();
    int r = avformat_open_input(&fmt_, url.c_str(), ifmt, &dict);  // frees fmt_ on failure
    av_dict_free(&dict);
    if (r < 0) {
      if (r == AVERROR(ENOENT)) return NotFound(uri + ": no such file");
      if (timed_out_) return IoError(uri + ": no answer within " + std::to_string(o.network_timeout_s) + " s");
      return IoError(uri + ": cannot open (" + av_err(r) + ")");
    }
    arm_deadline();
    r = avformat_find_stream_info(fmt_, nullptr);
    if (r < 0) return Corrupt(uri + ": cannot read stream information (" + av_err(r) + ")");
    const AVCodec* codec = nullptr;
    stream_ = av_find_best_stream(fmt_, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (stream_ == AVERROR_STREAM_NOT_FOUND) return Unsupported(uri + ": has no video stream");
    if (stream_ < 0 || !codec) {
      const AVCodecID id = stream_ >= 0 ? fmt_->streams[stream_]->codecpar->codec_id : AV_CODEC_ID_NONE;
      return Unsupported(uri + ": no decoder for its video codec (" + avcodec_get_name(id) + ")");
    }
    AVStream* st = fmt_->streams[stream_];
    dec_ = avcodec_alloc_context3(codec);
    if (!dec_) return Internal("out of memory opening " + uri);
    r = avcodec_parameters_to_context(dec_, st->codecpar);
    if (r < 0) return Corrupt(uri + ": bad codec parameters (" + av_err(r) + ")");
    dec_->thread_count = 1;  // low latency, and the cores belong to inference
    r = avcodec_open2(dec_, codec, nullptr);
    if (r < 0) return Unsupported(uri + ": cannot open the " + codec->name + " decoder (" + av_err(r) + ")");
    tb_ = av_q2d(st->time_base);
    const AVRational fr = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
    fps_ = fr.num > 0 && fr.den > 0 ? av_q2d(fr) : 0.0;
    codec_name_ = codec->name;
    width_ = dec_->width;
    height_ = dec_->height;
    pkt_ = av_packet_alloc();
    frame_ = av_frame_alloc();
    if (!pkt_ || !frame_) return Internal("out of memory opening " + uri);
    return Status::Ok();
  }

  Result<bool> next(VideoFrame* f) override {
    if (done_ || (opt_.max_frames >= 0 && stats_.frames >= opt_.max_frames)) return false;
    for (;;) {
      int r = avcodec_receive_frame(dec_, frame_);
      if (r == 0) {
        consecutive_errors_ = 0;
        EV_RETURN_IF_ERROR(convert(f));
        av_frame_unref(frame_);
        if (opt_.pace == Pace::kRealtime && !live_) {
          if (stats_.frames == 0) wall0_ = now_s();
          pace_to(wall0_, f->pts_s);
        }
        ++stats_.frames;
        return true;
      }
      if (r == AVERROR_EOF) {
        done_ = true;
        return false;
      }
      if (r != AVERROR(EAGAIN)) {
        ++stats_.decode_errors;
        EV_RETURN_IF_ERROR(count_error("decoding a frame failed (" + av_err(r) + ")"));
        continue;
      }
      if (flushing_) {  // EAGAIN after a flush should not happen; end rather than spin
        done_ = true;
        return false;
      }
      arm_deadline();
      r = av_read_frame(fmt_, pkt_);
      if (r == AVERROR_EOF || (r < 0 && avio_feof(fmt_->pb))) {
        flushing_ = true;
        avcodec_send_packet(dec_, nullptr);
        continue;
      }
      if (r == AVERROR(EAGAIN)) continue;
      if (r < 0 && !timed_out_ && !(fmt_->pb && fmt_->pb->error)) {
        // A damaged container block (the demuxer resynchronises at the next one), as players treat it.
        ++stats_.decode_errors;
        EV_RETURN_IF_ERROR(count_error("unreadable data after packet " + std::to_string(stats_.packets) + " (" +
                                       av_err(r) + ")"));
        continue;
      }
      if (r < 0) {
        done_ = true;
        if (timed_out_)
          return IoError(uri_ + ": the stream stopped: no data for " + std::to_string(opt_.network_timeout_s) +
                         " s after frame " + std::to_string(stats_.frames));
        return IoError(uri_ + ": reading failed after frame " + std::to_string(stats_.frames) + " (" + av_err(r) + ")");
      }
      if (pkt_->stream_index != stream_) {
        ++stats_.other_packets;
        av_packet_unref(pkt_);
        continue;
      }
      ++stats_.packets;
      r = avcodec_send_packet(dec_, pkt_);
      av_packet_unref(pkt_);
      if (r < 0 && r != AVERROR(EAGAIN)) {
        ++stats_.decode_errors;
        EV_RETURN_IF_ERROR(count_error("packet " + std::to_string(stats_.packets) + " rejected (" + av_err(r) + ")"));
      }
    }
  }

  double fps() const override { return live_ && uri_ == "-" ? opt_.raw_fps : fps_; }
  int width() const override { return width_; }
  int height() const override { return height_; }
  bool live() const override { return live_; }
  std::string describe() const override {
    char buf[64];
    std::snprintf(buf, sizeof buf, " %dx%d @ %.3g fps", width_, height_, fps());
    return uri_ + " (" + codec_name_ + buf + ")";
  }
  VideoSourceStats stats() const override { return stats_; }

 private:
  static int interrupt(void* opaque) {
    auto* s = static_cast<FfmpegSource*>(opaque);
    if (s->deadline_ > 0 && now_s() > s->deadline_) {
      s->timed_out_ = true;
      return 1;
    }
    return 0;
  }
  // Network and device reads may block: each blocking call gets the timeout from now on.
  void arm_deadline() {
    timed_out_ = false;
    deadline_ = is_network(uri_) ? now_s() + opt_.network_timeout_s : 0.0;
  }

  Status count_error(const std::string& what) {
    if (++consecutive_errors_ >= opt_.max_consecutive_errors) {
      done_ = true;
      return Corrupt(uri_ + ": " + std::to_string(consecutive_errors_) +
                     " undecodable packets in a row, the stream is broken; last: " + what);
    }
    return Status::Ok();
  }

  Status convert(VideoFrame* f) {
    const int w = frame_->width, h = frame_->height;
    if (w <= 0 || h <= 0 || w > kMaxImageSide || h > kMaxImageSide)
      return Corrupt(uri_ + ": frame " + std::to_string(stats_.frames) + " has absurd size " + std::to_string(w) + "x" +
                     std::to_string(h));
    sws_ = sws_getCachedContext(sws_, w, h, static_cast<AVPixelFormat>(frame_->format), w, h, AV_PIX_FMT_RGB24,
                                SWS_BILINEAR, nullptr, nullptr, nullptr);
    if (!sws_) return Unsupported(uri_ + ": cannot convert pixel format " +
                                  std::string(av_get_pix_fmt_name(static_cast<AVPixelFormat>(frame_->format)) ?: "?"));
    if (f->image.width != w || f->image.height != h || f->image.channels != 3) f->image = Image::make(w, h, 3);
    uint8_t* dst[4] = {f->image.rgb.data(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {w * 3, 0, 0, 0};
    sws_scale(sws_, frame_->data, frame_->linesize, 0, h, dst, dst_stride);
    width_ = w;
    height_ = h;
    f->index = stats_.frames;
    const int64_t ts = frame_->best_effort_timestamp;
    if (ts != AV_NOPTS_VALUE && tb_ > 0) {
      if (first_ts_ == AV_NOPTS_VALUE) first_ts_ = ts;
      f->pts_s = static_cast<double>(ts - first_ts_) * tb_;
    } else {
      f->pts_s = fps() > 0 ? static_cast<double>(stats_.frames) / fps() : 0.0;
    }
    f->truth = nullptr;
    return Status::Ok();
  }

  std::string uri_, codec_name_ = "?";
  VideoSourceOptions opt_;
  AVFormatContext* fmt_ = nullptr;
  AVCodecContext* dec_ = nullptr;
  SwsContext* sws_ = nullptr;
  AVPacket* pkt_ = nullptr;
  AVFrame* frame_ = nullptr;
  int stream_ = -1;
  double tb_ = 0, fps_ = 0, wall0_ = 0;
  int64_t first_ts_ = AV_NOPTS_VALUE;
  int width_ = 0, height_ = 0;
  bool live_ = false, done_ = false, flushing_ = false;
  std::atomic<bool> timed_out_{false};
  double deadline_ = 0;
  int consecutive_errors_ = 0;
  VideoSourceStats stats_;
};

// The road-scene simulator as a source: "sim:SEED" (a random scenario) or "sim:PATH.json" (a spec file).
class SimSource final : public VideoSource {
 public:
  Status open(const std::string& uri, const VideoSourceOptions& o) {
    uri_ = uri;
    opt_ = o;
    const std::string arg = uri.substr(4);
    sim::ScenarioSpec spec;
    if (!arg.empty() && arg.find_first_not_of("0123456789") == std::string::npos) {
      if (arg.size() > 19) return InvalidArgument(uri + ": seed out of range");
      sim::RandomScenarioOptions ro;
      if (o.sim_width > 0) ro.width = o.sim_width;
      if (o.sim_height > 0) ro.height = o.sim_height;
      if (o.sim_frames > 0) ro.frames = o.sim_frames;
      spec = sim::random_scenario(std::stoull(arg), ro);
    } else {
      EV_ASSIGN_OR_RETURN(spec, sim::load_scenario_spec(arg));
      if (o.sim_width > 0) spec.width = o.sim_width;
      if (o.sim_height > 0) spec.height = o.sim_height;
      if (o.sim_frames > 0) spec.frames = o.sim_frames;
    }
    auto s = sim::Simulator::create(spec);
    if (!s.ok()) return s.status().with_context(uri);
    sim_ = std::make_unique<sim::Simulator>(std::move(s).value());
    return Status::Ok();
  }

  Result<bool> next(VideoFrame* f) override {
    if (opt_.max_frames >= 0 && stats_.frames >= opt_.max_frames) return false;
    sim::FrameTruth t;
    if (!sim_->next(&frame_, &t)) return false;
    if (f->image.width != frame_.width || f->image.height != frame_.height || f->image.channels != 3)
      f->image = Image::make(frame_.width, frame_.height, 3);
    std::memcpy(f->image.rgb.data(), frame_.rgb.data(), frame_.rgb.size());
    f->index = stats_.frames;
    f->pts_s = static_cast<double>(t.frame) / sim_->fps();
    f->truth = t.to_json();
    if (opt_.pace == Pace::kRealtime) {
      if (stats_.frames == 0) wall0_ = now_s();
      pace_to(wall0_, f->pts_s);
    }
    ++stats_.frames;
    ++stats_.packets;
    return true;
  }
  double fps() const override { return sim_->fps(); }
  int width() const override { return sim_->width(); }
  int height() const override { return sim_->height(); }
  bool live() const override { return false; }
  std::string describe() const override {
    char buf[96];
    std::snprintf(buf, sizeof buf, " (simulator %dx%d @ %.3g fps, %lld frames)", width(), height(), fps(),
                  static_cast<long long>(sim_->frame_count()));
    return uri_ + buf;
  }
  VideoSourceStats stats() const override { return stats_; }

 private:
  std::string uri_;
  VideoSourceOptions opt_;
  std::unique_ptr<sim::Simulator> sim_;
  sim::Frame frame_;
  double wall0_ = 0;
  VideoSourceStats stats_;
};

}  // namespace

Result<std::unique_ptr<VideoSource>> open_video_source(const std::string& uri, const VideoSourceOptions& o) {
  if (uri.empty()) return InvalidArgument("no input given");
  if (o.max_consecutive_errors < 1) return InvalidArgument("max_consecutive_errors must be >= 1");
  if (!(o.network_timeout_s > 0 && o.network_timeout_s <= 3600)) return InvalidArgument("network timeout must be in (0, 3600] s");
  if (starts_with(uri, "sim:")) {
    auto s = std::make_unique<SimSource>();
    EV_RETURN_IF_ERROR(s->open(uri, o));
    return std::unique_ptr<VideoSource>(std::move(s));
  }
  auto s = std::make_unique<FfmpegSource>();
  EV_RETURN_IF_ERROR(s->open(uri, o));
  return std::unique_ptr<VideoSource>(std::move(s));
}

}  // namespace ev
