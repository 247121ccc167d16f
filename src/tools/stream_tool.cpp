#include "tools/stream_tool.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "core/clock.h"
#include "perception/overlay.h"
#include "perception/video_source.h"
#include "tools/report.h"

namespace ev {

namespace {

nlohmann::json dist_json(const std::vector<double>& v) {
  return {{"n", v.size()}, {"p50", quantile(v, 0.5)}, {"p90", quantile(v, 0.9)}, {"p99", quantile(v, 0.99)},
          {"max", v.empty() ? 0.0 : *std::max_element(v.begin(), v.end())}};
}

Status parse_size(const std::string& s, int* w, int* h) {
  if (s.empty()) return Status::Ok();
  const auto x = s.find('x');
  try {
    if (x == std::string::npos) throw std::invalid_argument(s);
    *w = std::stoi(s.substr(0, x));
    *h = std::stoi(s.substr(x + 1));
  } catch (const std::exception&) {
    return InvalidArgument("--raw-size '" + s + "' is not WxH");
  }
  if (*w <= 0 || *h <= 0 || *w > kMaxImageSide || *h > kMaxImageSide) return InvalidArgument("--raw-size '" + s + "' is out of range");
  return Status::Ok();
}

// What the overlay shows on one frame. `described_pts`: pts of the key frame behind the last semantic update
// (< 0: none yet).
OverlayState overlay_state(const VideoFrame& f, const StreamFrameInfo& info, const FastHead* head,
                           std::map<std::string, std::string> fields, std::string text, double described_pts) {
  OverlayState s;
  s.fields = std::move(fields);
  s.text = std::move(text);
  for (size_t i = 0; i < info.alerts.size(); ++i) {
    if (!info.alerts[i]) continue;
    const auto* classes = head ? &head->config().classes : nullptr;
    s.alerts.push_back({classes && i < classes->size() ? (*classes)[i] : "class " + std::to_string(i),
                        i < info.fast_head.size() ? info.fast_head[i] : 0.0f});
  }
  s.keyframe = info.keyframe;
  s.frame = f.index;
  s.pts_s = f.pts_s;
  s.vision_latency_s = info.vision_latency_s;
  s.staleness_s = described_pts >= 0 ? std::max(0.0, f.pts_s - described_pts) : -1.0;
  return s;
}

}  // namespace

void add_stream_options(CLI::App& app, StreamToolOptions& o) {
  app.add_option("--model", o.model, "model directory (Hugging Face layout)")->required();
  app.add_option("--input", o.input,
                 "video file, image pattern, rtsp:// or http:// URL, v4l2:/dev/videoN, '-' (raw RGB24 on stdin), "
                 "sim:SEED or sim:SPEC.json")
      ->required();
  app.add_option("--language-hz", o.language_hz, "language stage cadence (Hz)")->check(CLI::Range(0.01, 1000.0));
  app.add_option("--keyframe-threshold", o.keyframe_threshold,
                 "cosine distance of the pooled vision features to the last anchor that makes a key frame")
      ->check(CLI::Range(0.0, 2.0));
  app.add_option("--keyframe-max-age", o.keyframe_max_age, "seconds after which the anchor is renewed anyway")
      ->check(CLI::Range(0.001, 3600.0));
  app.add_option("--keyframe-hazard-delta", o.keyframe_hazard_delta,
                 "a fast-head probability change since the anchor that makes a key frame (0: off)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--hysteresis", o.hysteresis, "consecutive agreeing outputs before a field changes (1: at once)")
      ->check(CLI::Range(1, 100));
  app.add_option("--vote-window", o.vote_window, "each field follows the majority of its last N outputs (1: the last)")
      ->check(CLI::Range(1, 100));
  app.add_option("--min-confidence", o.min_confidence,
                 "a field changes only when the model gave the new value at least this probability (0: always)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_flag("--no-temporal", o.no_temporal, "do not apply the model's temporal adapter");
  app.add_flag("--realtime", o.realtime, "play files at their own frame rate, as a camera delivers them");
  app.add_option("--events", o.events, "write every event as JSON lines to this file");
  app.add_flag("--print", o.print, "print semantic updates and fast-head alerts as they come");
  app.add_flag("--json", o.json, "print the JSON summary instead of the table");
  app.add_option("--frames", o.frames, "stop after this many frames")->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--raw-size", o.raw_size, "frame size of raw RGB24 input on stdin (WxH)");
  app.add_option("--raw-fps", o.raw_fps, "frame rate of raw input")->check(CLI::Range(0.1, 1000.0));
  app.add_option("--threads", o.threads, "vision stage threads")->check(CLI::Range(1, 256));
  app.add_option("--device", o.device, "cpu, cuda or cuda:N");
  app.add_option("--text-threads", o.text_threads, "language stage threads")->check(CLI::Range(1, 256));
  app.add_option("--precision", o.precision, "compute precision: auto, f32 or bf16");
  app.add_option("--prune", o.prune, "token pruning of the vision stage: none, auto, L:R,...,llm:R, random, input:S");
  app.add_option("--max-tokens", o.max_tokens, "maximum tokens of a description")->check(CLI::Range(1, 4096));
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
  app.add_option("--overlay", o.overlay,
                 "write the frames with fields, alerts, key frames and timings drawn on them to this video file "
                 "(.mp4, .mkv, .avi)");
  app.add_option("--overlay-font", o.overlay_font, "TrueType / OpenType font of the overlay (default DejaVu Sans)");
}

Result<nlohmann::json> stream_json(const StreamToolOptions& o) {
  if (!o.overlay.empty()) {  // a missing font fails before the model loads, not at the first frame
    auto font = TextRenderer::open(o.overlay_font);
    if (!font.ok()) return font.status().with_context("--overlay " + o.overlay);
  }
  EngineOptions eo;
  eo.threads = o.threads;
  eo.prune = o.prune;
  eo.text_threads = o.text_threads;
  eo.device = o.device;
  EV_RETURN_IF_ERROR(parse_precision_option(o.precision, &eo).with_context("--precision"));
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> eng, Engine::load(o.model, eo));
  VideoSourceOptions so;
  so.pace = o.realtime ? Pace::kRealtime : Pace::kFast;
  so.max_frames = o.frames;
  so.sim_frames = o.frames;  // sim:SEED runs as long as asked
  so.raw_fps = o.raw_fps;
  EV_RETURN_IF_ERROR(parse_size(o.raw_size, &so.raw_width, &so.raw_height));
  so.sim_width = so.sim_height = eng->model().tile_size();
  EV_ASSIGN_OR_RETURN(std::unique_ptr<VideoSource> src, open_video_source(o.input, so));

  StreamOptions sopt;
  sopt.language_hz = o.language_hz;
  sopt.keyframe.threshold = o.keyframe_threshold;
  sopt.keyframe.max_age_s = o.keyframe_max_age;
  sopt.keyframe.hazard_delta = o.keyframe_hazard_delta;
  sopt.hysteresis = o.hysteresis;
  sopt.vote_window = o.vote_window;
  sopt.min_confidence = o.min_confidence;
  sopt.max_tokens = o.max_tokens;
  sopt.drop_when_late = o.realtime;
  sopt.temporal = !o.no_temporal;
  StreamPipeline pipe(*eng, *src, sopt);

  std::ofstream events;
  if (!o.events.empty()) {
    events.open(o.events);
    if (!events) return IoError("cannot write " + o.events);
  }
  // --overlay: opened at the first frame (its size known then); drawing and encoding run on the recorder's thread.
  OverlayRecorder overlay;
  Status overlay_error;      // vision thread until run() returns
  std::mutex overlay_mu;     // guards the two below (language thread -> vision thread)
  std::string overlay_text;  // the last semantic update's text
  double overlay_described_pts = -1;
  StreamFrameCallback on_frame;
  if (!o.overlay.empty()) {
    on_frame = [&](const VideoFrame& f, const StreamFrameInfo& info) {
      if (!overlay_error.ok()) return;
      if (!overlay.is_open()) {
        OverlayRecorderOptions ro;
        ro.font = o.overlay_font;
        overlay_error = overlay.open(o.overlay, f.image.width, f.image.height, src->fps() > 0 ? src->fps() : 30.0, ro);
        if (!overlay_error.ok()) {
          overlay_error = overlay_error.with_context("--overlay");
          pipe.stop();
          return;
        }
      }
      std::string text;
      double described = -1;
      {
        std::lock_guard<std::mutex> lk(overlay_mu);
        text = overlay_text;
        described = overlay_described_pts;
      }
      overlay.push(f.image,
                   overlay_state(f, info, eng->fast_head(), pipe.current_fields(), std::move(text), described));
    };
  }
  StatusLine sl("stream", o.progress);
  std::atomic<bool> running{true};
  std::thread status([&] {
    while (running.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      const StreamStats st = pipe.stats();
      if (st.frames_vision == 0) continue;
      sl.update("%lld frames, vision p50 %.1f ms p99 %.1f ms, language %lld runs (p50 %.0f ms), key %.0f%%, drops %lld",
                static_cast<long long>(st.frames_vision), st.vision_latency_s.quantile(0.5) * 1e3,
                st.vision_latency_s.quantile(0.99) * 1e3, static_cast<long long>(st.language_runs),
                st.language_latency_s.quantile(0.5) * 1e3,
                100.0 * static_cast<double>(st.keyframes) / static_cast<double>(st.frames_vision),
                static_cast<long long>(st.frames_dropped));
    }
  });
  Status run = pipe.run([&](const StreamEvent& e) {
    if (on_frame && e.type == "semantic") {
      std::lock_guard<std::mutex> lk(overlay_mu);
      overlay_text = e.data.value("text", std::string());
      overlay_described_pts = e.pts_s;
    }
    if (events.is_open()) {
      nlohmann::json j = {{"type", e.type}, {"frame", e.frame}, {"pts_s", e.pts_s}, {"wall_s", e.wall_s}, {"data", e.data}};
      events << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
    if (o.print && (e.type == "semantic" || e.type == "alert_on" || e.type == "alert_off" || e.type == "truth_event")) {
      if (sl.active()) std::fprintf(stderr, "\r\033[K");
      if (e.type == "semantic")
        std::printf("[%7.2f s] frame %5lld  %s\n", e.pts_s, static_cast<long long>(e.frame),
                    e.data.value("text", std::string()).c_str());
      else if (e.type == "truth_event")
        std::printf("[%7.2f s] frame %5lld  (truth: %s %s)\n", e.pts_s, static_cast<long long>(e.frame),
                    e.data.value("type", std::string()).c_str(), e.data.value("actor", std::string()).c_str());
      else
        std::printf("[%7.2f s] frame %5lld  ALERT %s %s (p %.2f)\n", e.pts_s, static_cast<long long>(e.frame),
                    e.data.value("hazard", std::string()).c_str(), e.type == "alert_on" ? "on" : "off",
                    e.data.value("p", 0.0));
      std::fflush(stdout);
    }
  }, on_frame);
  running.store(false);
  status.join();
  sl.done();
  const Status overlay_closed = overlay.close();  // VideoWriter messages name the file
  if (!run.ok()) return run;
  if (!overlay_error.ok()) return overlay_error;
  if (!overlay_closed.ok()) return overlay_closed.with_context("--overlay");

  const StreamStats st = pipe.stats();
  const VideoSourceStats vs = src->stats();
  nlohmann::json j;
  j["tool"] = "stream";
  j["model"] = o.model;
  j["input"] = src->describe();
  j["precision"] = eng->precision_label();
  j["realtime"] = o.realtime;
  j["language_hz"] = o.language_hz;
  j["keyframe"] = {{"threshold", o.keyframe_threshold}, {"max_age_s", o.keyframe_max_age},
                   {"hazard_delta", o.keyframe_hazard_delta}};
  j["stabiliser"] = {{"hysteresis", o.hysteresis}, {"vote_window", o.vote_window},
                     {"min_confidence", o.min_confidence}};
  j["temporal_adapter"] = !o.no_temporal && eng->temporal_adapter() != nullptr;
  j["threads"] = {{"vision", o.threads}, {"language", o.text_threads}};
  j["frames"] = {{"in", st.frames_in}, {"vision", st.frames_vision}, {"dropped", st.frames_dropped},
                 {"decode_errors", vs.decode_errors}};
  j["wall_s"] = st.wall_s;
  j["vision_fps"] = st.wall_s > 0 ? static_cast<double>(st.frames_vision) / st.wall_s : 0.0;
  j["source_fps"] = st.source_fps;
  j["vision_latency_s"] = st.vision_latency_s.summary();
  j["keyframes"] = {{"count", st.keyframes},
                    {"fraction", st.frames_vision ? static_cast<double>(st.keyframes) / st.frames_vision : 0.0},
                    {"superseded", st.keyframes_superseded}};
  j["language"] = {{"runs", st.language_runs},
                   {"hz", st.wall_s > 0 ? static_cast<double>(st.language_runs) / st.wall_s : 0.0},
                   {"semantic_updates", st.semantic_updates},
                   {"latency_s", st.language_latency_s.summary()},
                   {"run_s", st.language_run_s.summary()}};
  j["staleness_s"] = st.staleness_s.summary();
  j["current"] = pipe.current_fields();
  if (!o.overlay.empty())
    j["overlay"] = {{"file", o.overlay},
                    {"width", overlay.width()},
                    {"height", overlay.height()},
                    {"frames_written", overlay.written()},
                    {"frames_dropped", overlay.dropped()}};
  if (st.truth_frames > 0) {
    nlohmann::json acc = nlohmann::json::object();
    double mean = 0;
    for (const auto& [f, n] : st.field_correct) acc[f] = static_cast<double>(n) / st.truth_frames;
    for (const char* f : {"light", "pedestrian", "lead", "sign", "construction", "lighting", "weather", "hazard"}) {
      if (!acc.contains(f)) acc[f] = 0.0;
      mean += acc[f].get<double>();
    }
    int64_t flick = 0, flick_raw = 0;
    for (const auto& [f, n] : st.flicker) flick += n;
    for (const auto& [f, n] : st.flicker_raw) flick_raw += n;
    j["truth"] = {{"frames", st.truth_frames},
                  {"per_field_accuracy", acc},
                  {"mean_field_accuracy", mean / 8},
                  {"flicker", {{"reported", flick}, {"raw_outputs", flick_raw}, {"per_field", st.flicker}}},
                  {"event_delay_s", dist_json(st.event_delay_s)},
                  {"events_shown", st.event_delay_s.size()},
                  {"events_missed", st.events_missed}};
  }
  return j;
}

std::string stream_table(const nlohmann::json& j) {
  auto ms = [](const nlohmann::json& d, const char* k) { return strf("%.1f ms", d.value(k, 0.0) * 1e3); };
  std::string o = strf("edgevlm stream: %s on %s (%s)\n\n", j.value("model", "").c_str(), j.value("input", "").c_str(),
                       j.value("precision", "").c_str());
  const auto& fr = j.at("frames");
  TextTable t({"", "value"});
  t.add_row({"frames in / through vision / dropped", strf("%lld / %lld / %lld", static_cast<long long>(fr.value("in", 0)),
                                                         static_cast<long long>(fr.value("vision", 0)),
                                                         static_cast<long long>(fr.value("dropped", 0)))});
  t.add_row({"vision throughput", strf("%.1f frames/s (source %.1f fps)", j.value("vision_fps", 0.0), j.value("source_fps", 0.0))});
  t.add_row({"vision latency p50 / p99", ms(j["vision_latency_s"], "p50") + " / " + ms(j["vision_latency_s"], "p99")});
  t.add_row({"key frames", strf("%lld (%.1f%% of frames), %lld superseded",
                                static_cast<long long>(j["keyframes"].value("count", 0)),
                                100.0 * j["keyframes"].value("fraction", 0.0),
                                static_cast<long long>(j["keyframes"].value("superseded", 0)))});
  const auto& l = j.at("language");
  t.add_row({"language runs", strf("%lld (%.2f Hz), %lld semantic updates", static_cast<long long>(l.value("runs", 0)),
                                   l.value("hz", 0.0), static_cast<long long>(l.value("semantic_updates", 0)))});
  t.add_row({"language latency p50 / p99", ms(l["latency_s"], "p50") + " / " + ms(l["latency_s"], "p99")});
  t.add_row({"language run time p50", ms(l["run_s"], "p50")});
  t.add_row({"staleness p50 / p99", ms(j["staleness_s"], "p50") + " / " + ms(j["staleness_s"], "p99")});
  if (j.contains("overlay")) {
    const auto& ov = j["overlay"];
    t.add_row({"overlay video", strf("%s: %lld frames written, %lld dropped", ov.value("file", "").c_str(),
                                     static_cast<long long>(ov.value("frames_written", 0)),
                                     static_cast<long long>(ov.value("frames_dropped", 0)))});
  }
  if (j.contains("truth")) {
    const auto& tr = j["truth"];
    t.add_separator();
    t.add_row({"mean field accuracy (output at every frame)", fmt_percent(tr.value("mean_field_accuracy", 0.0))});
    for (const auto& [f, v] : tr["per_field_accuracy"].items()) t.add_row({"  " + f, fmt_percent(v.get<double>())});
    t.add_row({"flicker: reported / raw model outputs", strf("%lld / %lld", static_cast<long long>(tr["flicker"].value("reported", 0)),
                                                          static_cast<long long>(tr["flicker"].value("raw_outputs", 0)))});
    t.add_row({"event delay p50 / max", ms(tr["event_delay_s"], "p50") + " / " + ms(tr["event_delay_s"], "max")});
    t.add_row({"truth changes shown / missed", strf("%lld / %lld", static_cast<long long>(tr.value("events_shown", 0)),
                                                   static_cast<long long>(tr.value("events_missed", 0)))});
  }
  o += t.render();
  return o;
}

Status run_stream(const StreamToolOptions& o) {
  EV_ASSIGN_OR_RETURN(nlohmann::json j, stream_json(o));
  if (o.json)
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  else
    std::printf("%s", stream_table(j).c_str());
  return Status::Ok();
}

}  // namespace ev
