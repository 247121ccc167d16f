#include "runtime/stream.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "core/clock.h"
#include "sim/truth.h"

namespace ev {

namespace {

struct QueuedFrame {
  VideoFrame f;
  double capture_wall = 0;
};

// Bounded FIFO between the source and the vision stage.
class FrameQueue {
 public:
  explicit FrameQueue(size_t cap) : cap_(std::max<size_t>(1, cap)) {}
  // drop_oldest: a full queue loses its oldest frame (returns true); else the caller waits for room.
  bool push(QueuedFrame&& f, bool drop_oldest, const std::atomic<bool>& stop) {
    std::unique_lock<std::mutex> lk(mu_);
    bool dropped = false;
    if (q_.size() >= cap_) {
      if (drop_oldest) {
        q_.pop_front();
        dropped = true;
      } else {
        room_.wait(lk, [&] { return q_.size() < cap_ || stop.load(); });
        if (stop.load()) return false;
      }
    }
    q_.push_back(std::move(f));
    ready_.notify_one();
    return dropped;
  }
  bool pop(QueuedFrame* f) {  // false once closed and empty
    std::unique_lock<std::mutex> lk(mu_);
    ready_.wait(lk, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    *f = std::move(q_.front());
    q_.pop_front();
    room_.notify_one();
    return true;
  }
  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    ready_.notify_all();
    room_.notify_all();
  }

 private:
  size_t cap_;
  std::mutex mu_;
  std::condition_variable ready_, room_;
  std::deque<QueuedFrame> q_;
  bool closed_ = false;
};

struct KeyFrame {
  EncodedImages enc;
  int64_t frame = 0;
  double pts_s = 0, capture_wall = 0;
  nlohmann::json truth;
};

// One slot: the newest key frame not yet described.
class Mailbox {
 public:
  // Returns true when an undescribed key frame was replaced.
  bool put(KeyFrame&& k) {
    std::lock_guard<std::mutex> lk(mu_);
    const bool superseded = slot_.has_value();
    slot_ = std::move(k);
    return superseded;
  }
  std::optional<KeyFrame> take() {
    std::lock_guard<std::mutex> lk(mu_);
    std::optional<KeyFrame> k = std::move(slot_);
    slot_.reset();
    return k;
  }

 private:
  std::mutex mu_;
  std::optional<KeyFrame> slot_;
};

std::map<std::string, std::string> truth_fields(const nlohmann::json& truth) {
  if (!truth.is_object() || !truth.contains("description") || !truth["description"].is_string()) return {};
  auto r = sim::parse_description(truth["description"].get<std::string>());
  return r.ok() ? *r : std::map<std::string, std::string>{};
}

}  // namespace

StreamPipeline::StreamPipeline(Engine& engine, VideoSource& source, StreamOptions opt)
    : engine_(engine), source_(source), opt_(std::move(opt)) {}

StreamStats StreamPipeline::stats() const {
  std::lock_guard<std::mutex> lk(stats_mu_);
  StreamStats s = stats_;
  s.truth_frames = scorer_.truth_frames;
  s.field_correct = scorer_.field_correct;
  s.flicker = scorer_.flicker;
  s.flicker_raw = scorer_.flicker_raw;
  s.event_delay_s = scorer_.event_delay_s;
  s.events_missed = scorer_.events_missed;
  return s;
}

std::map<std::string, std::string> StreamPipeline::current_fields() const {
  std::lock_guard<std::mutex> lk(stats_mu_);
  return stab_.fields();
}

Status StreamPipeline::run(const StreamEventCallback& on_event, const StreamFrameCallback& on_frame) {
  if (!(opt_.language_hz > 0 && opt_.language_hz <= 1000)) return InvalidArgument("language rate must be in (0, 1000] Hz");
  if (opt_.queue_frames < 1 || opt_.queue_frames > 1024) return InvalidArgument("frame queue must hold 1..1024 frames");
  if (opt_.hysteresis < 1 || opt_.hysteresis > 100) return InvalidArgument("hysteresis must be in [1, 100]");
  if (opt_.vote_window < 1 || opt_.vote_window > 100) return InvalidArgument("vote window must be in [1, 100]");
  if (!(opt_.min_confidence >= 0 && opt_.min_confidence <= 1))
    return InvalidArgument("minimum confidence must be in [0, 1]");
  if (!(opt_.keyframe.threshold >= 0) || !(opt_.keyframe.max_age_s > 0))
    return InvalidArgument("key-frame threshold must be >= 0 and the maximum age > 0");
  const std::string prompt = opt_.prompt.empty() ? engine_.describe_prompt() : opt_.prompt;
  EV_ASSIGN_OR_RETURN(nlohmann::json messages, Engine::user_turn(1, prompt));
  const FastHead* fh = engine_.fast_head();
  const double on_thr = fh ? std::max(opt_.alert_on, static_cast<double>(fh->config().threshold)) : opt_.alert_on;
  const bool drop_oldest = source_.live() || opt_.drop_when_late;
  const double t0 = now_s();
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    stats_ = StreamStats();
    stats_.source_fps = source_.fps();
    stab_ = FieldStabilizer(opt_.hysteresis, opt_.vote_window, false, opt_.min_confidence);
    scorer_ = TruthScorer();
  }
  std::mutex ev_mu;  // events come from three threads; the callback sees them one at a time
  auto emit = [&](StreamEvent e) {
    if (!on_event) return;
    e.wall_s = now_s() - t0;
    std::lock_guard<std::mutex> lk(ev_mu);
    on_event(e);
  };

  FrameQueue queue(static_cast<size_t>(opt_.queue_frames));
  Mailbox mailbox;
  std::atomic<bool> vision_done{false};
  std::mutex err_mu;
  Status first_error;
  auto fail = [&](const Status& s) {
    std::lock_guard<std::mutex> lk(err_mu);
    if (first_error.ok()) first_error = s;
    stop_.store(true);
  };
  std::mutex wake_mu;
  std::condition_variable wake;  // wakes the language stage early at the end of the stream or on stop

  // ---- source ----
  std::thread src([&] {
    for (;;) {
      if (stop_.load()) break;
      QueuedFrame q;
      auto r = source_.next(&q.f);
      if (!r.ok()) {
        fail(r.status());
        break;
      }
      if (!*r) break;
      q.capture_wall = now_s();
      {
        std::lock_guard<std::mutex> lk(stats_mu_);
        ++stats_.frames_in;
      }
      if (queue.push(std::move(q), drop_oldest, stop_)) {
        std::lock_guard<std::mutex> lk(stats_mu_);
        ++stats_.frames_dropped;
      }
    }
    queue.close();
  });

  // ---- vision ----
  std::thread vis([&] {
    KeyframeAnchor anchor(opt_.keyframe);
    Tensor memory;  // the previous key frame's connector output (the temporal adapter's memory)
    const bool temporal = opt_.temporal && engine_.temporal_adapter() != nullptr;
    std::vector<bool> alert(fh ? static_cast<size_t>(fh->num_classes()) : 0, false);
    QueuedFrame q;
    while (queue.pop(&q)) {
      if (stop_.load()) continue;  // drain
      Tensor vision_out;
      auto enc = engine_.encode_images({q.f.image}, 0, &vision_out, temporal && memory.data() ? &memory : nullptr);
      if (!enc.ok()) {
        fail(enc.status().with_context("frame " + std::to_string(q.f.index)));
        continue;
      }
      // Fast head alerts, with hysteresis (on above on_thr, off below alert_off).
      if (fh && !enc->fast_head.empty()) {
        const auto& p = enc->fast_head[0];
        for (size_t c = 0; c < alert.size() && c < p.size(); ++c) {
          const bool on = alert[c] ? p[c] >= opt_.alert_off : p[c] >= on_thr;
          if (on != alert[c]) {
            alert[c] = on;
            emit({on ? "alert_on" : "alert_off", q.f.index, q.f.pts_s, 0,
                  {{"hazard", fh->config().classes[c]}, {"p", p[c]}}});
          }
        }
      }
      if (q.f.truth.is_object() && q.f.truth.contains("events") && !q.f.truth["events"].empty())
        for (const auto& e : q.f.truth["events"]) emit({"truth_event", q.f.index, q.f.pts_s, 0, e});
      const int64_t P = vision_out.dim(1), C = vision_out.dim(2);
      std::vector<float> pooled = mean_pool(vision_out.data_as<const float>(), P, C);
      double dist = 0;
      const KeyReason why =
          anchor.decide(pooled, enc->fast_head.empty() ? nullptr : &enc->fast_head[0], q.f.pts_s, &dist);
      const bool key = why != KeyReason::kNone;
      const double done = now_s();
      {
        std::lock_guard<std::mutex> lk(stats_mu_);
        ++stats_.frames_vision;
        stats_.vision_latency_s.add(done - q.capture_wall);
        if (stats_.last_described_pts >= 0) stats_.staleness_s.add(q.f.pts_s - stats_.last_described_pts);
        if (key) ++stats_.keyframes;
        // Accuracy of what the system believes at this frame against the truth (simulator sources).
        if (q.f.truth.is_object()) scorer_.on_frame(stab_.fields(), truth_fields(q.f.truth), q.f.pts_s);
      }
      if (on_frame) {
        StreamFrameInfo info;
        info.keyframe = key;
        info.distance = dist;
        if (!enc->fast_head.empty()) info.fast_head = enc->fast_head[0];
        info.alerts = alert;
        info.vision_latency_s = done - q.capture_wall;
        on_frame(q.f, info);
      }
      if (key) {
        emit({"keyframe", q.f.index, q.f.pts_s, 0, {{"distance", dist}, {"reason", key_reason_name(why)}}});
        KeyFrame k;
        if (temporal) memory = enc->raw_embeds;
        k.enc = std::move(enc).value();
        k.frame = q.f.index;
        k.pts_s = q.f.pts_s;
        k.capture_wall = q.capture_wall;
        k.truth = q.f.truth;
        if (mailbox.put(std::move(k))) {
          std::lock_guard<std::mutex> lk(stats_mu_);
          ++stats_.keyframes_superseded;
        }
      }
    }
    vision_done.store(true);
    wake.notify_all();
  });

  // ---- language ----
  std::thread lang([&] {
    GenerateOptions g;
    g.max_new_tokens = opt_.max_tokens;
    g.image_splitting = 0;
    g.token_probs = opt_.min_confidence > 0;  // the confidence gate reads them
    const auto period = std::chrono::duration<double>(1.0 / opt_.language_hz);
    auto next_tick = std::chrono::steady_clock::now();
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(wake_mu);
        wake.wait_until(lk, next_tick, [&] { return stop_.load() || vision_done.load(); });
      }
      next_tick += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
      if (std::chrono::steady_clock::now() > next_tick) next_tick = std::chrono::steady_clock::now();  // no catch-up burst
      const bool ending = vision_done.load() || stop_.load();
      std::optional<KeyFrame> k = mailbox.take();
      if (!k) {
        if (ending) break;
        continue;
      }
      const double ts = now_s();
      auto r = engine_.generate_encoded(k->enc, messages, g);
      if (!r.ok()) {
        fail(r.status().with_context("language stage, frame " + std::to_string(k->frame)));
        break;
      }
      const double te = now_s();
      auto parsed = sim::parse_description(r->text);
      std::map<std::string, std::string> out = parsed.ok() ? *parsed : std::map<std::string, std::string>{};
      std::vector<std::string> changed;
      std::map<std::string, std::string> fields_now;
      {
        std::lock_guard<std::mutex> lk(stats_mu_);
        ++stats_.language_runs;
        stats_.language_run_s.add(te - ts);
        stats_.language_latency_s.add(te - k->capture_wall);
        stats_.last_described_pts = k->pts_s;
        // Output stabilisation, then flicker against the truth of the described frame.
        const Fields before = stab_.fields();
        const auto conf = field_confidence(r->text, r->token_probs, r->token_text_end);
        changed = stab_.update(out, false, &conf);
        scorer_.on_output(out, changed, before, truth_fields(k->truth));
        if (!changed.empty()) ++stats_.semantic_updates;
        fields_now = stab_.fields();
      }
      if (!changed.empty()) {
        std::string text = r->text;
        while (!text.empty() && text.front() == ' ') text.erase(text.begin());
        emit({"semantic", k->frame, k->pts_s, 0,
              {{"text", text}, {"fields", fields_now}, {"changed", changed}, {"latency_s", te - k->capture_wall},
               {"run_s", te - ts}}});
      }
    }
  });

  src.join();
  vis.join();
  wake.notify_all();
  lang.join();
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    stats_.wall_s = now_s() - t0;
  }
  stop_.store(false);
  return first_error;
}

}  // namespace ev
