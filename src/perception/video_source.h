// Video sources: where the frames of a live stream come from. One interface, several implementations:
//
//   open_video_source("clip.mp4")              a file: mp4, mkv, avi, ... (H.264, H.265, MJPEG, ... whatever this
//                                              libavcodec decodes), through FFmpeg's libavformat + libavcodec
//   open_video_source("frames/%06d.png")       an image sequence (FFmpeg's image2 demuxer; printf pattern or glob)
//   open_video_source("rtsp://host/stream")    network streams FFmpeg speaks: RTSP, HTTP(S), UDP/RTP, ...
//   open_video_source("v4l2:/dev/video0")      a V4L2 camera (libavdevice's video4linux2 input)
//   open_video_source("-", {raw WxH})          raw RGB24 frames on stdin (`--raw-size WxH`), e.g. from ffmpeg -f rawvideo
//   open_video_source("sim:SEED" | "sim:spec.json")   the road-scene simulator as a live source (with exact truth)
//
// Every source delivers decoded RGB8 frames with a presentation time in seconds from the stream's start. A source
// never blocks forever: network reads time out (rw_timeout), and a stream that stops delivering ends with an error
// that says so. Damaged input does not end the stream: a packet the decoder rejects is counted
// (stats().decode_errors) and skipped, as players do; only a stream that yields no decodable frame at all for
// `max_consecutive_errors` packets ends with kCorrupt, naming the source and the packet.
//
// Pacing: Pace::kRealtime delivers each frame no earlier than its presentation time after the first frame (what a
// camera does: a file then plays at its own frame rate), Pace::kFast as fast as decoding allows (batch work).
// Live sources (camera, network) are always real time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "perception/image.h"

namespace ev {

struct VideoFrame {
  Image image;           // RGB8
  int64_t index = 0;     // 0, 1, 2, ... in delivery order
  double pts_s = 0;      // presentation time, seconds from the first frame
  nlohmann::json truth;  // the simulator's ground truth of this frame (sim sources only; null otherwise)
};

enum class Pace : uint8_t { kFast = 0, kRealtime = 1 };

struct VideoSourceOptions {
  Pace pace = Pace::kFast;
  int raw_width = 0, raw_height = 0;  // for "-" (raw RGB24 on stdin)
  double raw_fps = 30;
  int64_t max_frames = -1;            // stop after this many frames (-1: the whole stream)
  int max_consecutive_errors = 64;    // undecodable packets in a row before the stream counts as broken
  double network_timeout_s = 10;      // RTSP / HTTP read and open timeout
  int sim_width = 224, sim_height = 224;  // sim: sources (a spec's own size is overridden by these when > 0)
  int64_t sim_frames = -1;            // sim:SEED length (-1: the spec's / random default)
};

struct VideoSourceStats {
  int64_t frames = 0;          // delivered
  int64_t packets = 0;         // demuxed video packets
  int64_t decode_errors = 0;   // packets or frames the decoder rejected (skipped)
  int64_t other_packets = 0;   // packets of other streams (audio, data) skipped
};

class VideoSource {
 public:
  virtual ~VideoSource() = default;
  // The next frame. Ok(true): *f filled. Ok(false): the stream ended normally. An error: the stream broke (the
  // message names the source and what happened); no more frames follow.
  virtual Result<bool> next(VideoFrame* f) = 0;
  virtual double fps() const = 0;   // nominal frame rate (0 when unknown)
  virtual int width() const = 0;    // of delivered frames (0 until known)
  virtual int height() const = 0;
  virtual bool live() const = 0;    // camera or network: frames arrive in real time whatever the pace
  virtual std::string describe() const = 0;  // "clip.mp4 (h264 960x540 @ 25 fps)"
  virtual VideoSourceStats stats() const = 0;
};

Result<std::unique_ptr<VideoSource>> open_video_source(const std::string& uri, const VideoSourceOptions& o = {});

}  // namespace ev
