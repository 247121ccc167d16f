#include "tools/sim_tool.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/clock.h"
#include "perception/image.h"
#include "perception/video_writer.h"
#include "sim/simulator.h"
#include "tools/report.h"
#include "tools/sim_frames.h"

namespace ev {

namespace {

using nlohmann::json;

Status parse_size(const std::string& s, int* w, int* h) {
  int a = 0, b = 0;
  char tail = 0;
  if (std::sscanf(s.c_str(), "%dx%d%c", &a, &b, &tail) != 2)
    return InvalidArgument("--size '" + s + "' is not WxH (e.g. 224x224)");
  if (a < sim::kMinSide || a > sim::kMaxSide || b < sim::kMinSide || b > sim::kMaxSide)
    return InvalidArgument("--size " + s + ": width and height must be in [" + std::to_string(sim::kMinSide) + ", " +
                           std::to_string(sim::kMaxSide) + "]");
  *w = a;
  *h = b;
  return Status::Ok();
}

Status check(const SimOptions& o) {
  if (o.scenarios < 1 || o.scenarios > 100000) return InvalidArgument("--scenarios must be in [1, 100000]");
  if (!o.spec.empty() && o.scenarios != 1) return InvalidArgument("--scenarios applies to --seed, not to --spec");
  if (o.frames != -1 && (o.frames < 1 || o.frames > sim::kMaxFrames))
    return InvalidArgument("--frames must be in [1, " + std::to_string(sim::kMaxFrames) + "], got " + std::to_string(o.frames));
  if (o.fps != 0 && !(o.fps >= sim::kMinFps && o.fps <= sim::kMaxFps)) return InvalidArgument("--fps must be in [1, 240]");
  if (o.format != "png" && o.format != "ppm" && o.format != "raw")
    return InvalidArgument("--format '" + o.format + "' is not one of png, ppm, raw");
  if (!o.size.empty()) {
    int w, h;
    EV_RETURN_IF_ERROR(parse_size(o.size, &w, &h));
  }
  return Status::Ok();
}

// The scenario list: the spec file, or random scenarios seed .. seed + K - 1; overrides applied.
Result<std::vector<sim::ScenarioSpec>> scenarios(const SimOptions& o) {
  std::vector<sim::ScenarioSpec> out;
  int w = 224, h = 224;
  const bool size_given = !o.size.empty();
  if (size_given) EV_RETURN_IF_ERROR(parse_size(o.size, &w, &h));
  if (!o.spec.empty()) {
    EV_ASSIGN_OR_RETURN(sim::ScenarioSpec s, sim::load_scenario_spec(o.spec));
    if (o.frames > 0) s.frames = o.frames;
    if (o.fps > 0) s.fps = o.fps;
    if (size_given) s.width = w, s.height = h;
    EV_RETURN_IF_ERROR(sim::validate_scenario_spec(s).with_context(o.spec));
    out.push_back(std::move(s));
  } else {
    sim::RandomScenarioOptions ro;
    ro.frames = o.frames > 0 ? o.frames : 150;
    ro.fps = o.fps > 0 ? o.fps : 30;
    ro.width = w;
    ro.height = h;
    for (int i = 0; i < o.scenarios; ++i) out.push_back(sim::random_scenario(o.seed + static_cast<uint64_t>(i), ro));
  }
  return out;
}

std::string frame_file(const SimOptions& o, bool many, uint64_t seed, int64_t frame) {
  char buf[96];
  if (many) std::snprintf(buf, sizeof buf, "s%llu_%06lld.%s", static_cast<unsigned long long>(seed), static_cast<long long>(frame), o.format.c_str());
  else std::snprintf(buf, sizeof buf, "frame_%06lld.%s", static_cast<long long>(frame), o.format.c_str());
  return buf;
}

}  // namespace

void add_sim_options(CLI::App& app, SimOptions& o) {
  auto* spec = app.add_option("--spec", o.spec, "scenario spec (JSON, see src/sim/README.md)");
  auto* seed = app.add_option("--seed", o.seed, "random scenario seed (scenarios seed, seed+1, ...)");
  spec->excludes(seed);
  app.add_option("--scenarios", o.scenarios, "number of random scenarios (with --seed)");
  app.add_option("--frames", o.frames, "frames per scenario (default: the spec's; random: 150)");
  app.add_option("--size", o.size, "frame size WxH (default: the spec's; random: 224x224)");
  app.add_option("--fps", o.fps, "frame rate (default: the spec's; random: 30)");
  app.add_option("--out", o.out, "output directory: frames + truth.jsonl");
  app.add_option("--format", o.format, "frame files in --out: png, ppm, or raw (one frames.rgb)");
  app.add_option("--video", o.video, "also write a video (.mp4, .mkv): H.264, else MPEG-4, else MJPEG");
  app.add_option("--dump-spec", o.dump_spec, "write the (first) scenario's spec JSON to this file");
  app.add_flag("--print", o.print, "print the canonical description as it changes, and the events");
  app.add_flag("--json", o.json, "print a JSON summary");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
}

Result<json> sim_json(const SimOptions& o) {
  EV_RETURN_IF_ERROR(check(o));
  EV_ASSIGN_OR_RETURN(std::vector<sim::ScenarioSpec> specs, scenarios(o));
  const bool many = specs.size() > 1;
  int64_t total = 0;
  for (const auto& s : specs) total += s.frames;
  for (const auto& s : specs) {
    if (s.width != specs[0].width || s.height != specs[0].height)
      return InvalidArgument("all scenarios must have the same size");
  }
  if (!o.dump_spec.empty()) EV_RETURN_IF_ERROR(write_text_file(o.dump_spec, sim::scenario_spec_to_json(specs[0]).dump(2) + "\n"));

  std::ofstream truth, raw;
  if (!o.out.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.out, ec);
    if (ec) return IoError(o.out + ": cannot create the directory: " + ec.message());
    truth.open(o.out + "/truth.jsonl", std::ios::binary | std::ios::trunc);
    if (!truth) return IoError(o.out + "/truth.jsonl: cannot create");
    if (o.format == "raw") {
      raw.open(o.out + "/frames.rgb", std::ios::binary | std::ios::trunc);
      if (!raw) return IoError(o.out + "/frames.rgb: cannot create");
    }
  }
  VideoWriter video;
  if (!o.video.empty()) EV_RETURN_IF_ERROR(video.open(o.video, specs[0].width, specs[0].height, specs[0].fps));
  const bool need_pixels = !o.out.empty() || !o.video.empty();

  std::map<std::string, std::map<std::string, int64_t>> field_counts;
  std::map<std::string, int64_t> event_counts;
  StatusLine status("sim", o.progress && total >= 300);
  const double t0 = now_s();
  double last_status = t0;
  int64_t done = 0;
  sim::Frame frame;
  sim::FrameTruth t;
  for (size_t si = 0; si < specs.size(); ++si) {
    const auto& spec = specs[si];
    EV_ASSIGN_OR_RETURN(sim::Simulator simulator, sim::Simulator::create(spec));
    std::string last_desc;
    while (simulator.next(need_pixels ? &frame : nullptr, &t)) {
      for (const auto& [k, v] : sim::description_fields(t.state)) ++field_counts[k][v];
      for (const auto& e : t.events) ++event_counts[e.type];
      if (o.print) {
        char pbuf[80];
        if (many) std::snprintf(pbuf, sizeof pbuf, "[s%llu %5lld %7.2fs]", static_cast<unsigned long long>(spec.seed),
                                static_cast<long long>(t.frame), t.t);
        else std::snprintf(pbuf, sizeof pbuf, "[%5lld %7.2fs]", static_cast<long long>(t.frame), t.t);
        const std::string prefix = pbuf;
        for (const auto& e : t.events) {
          status.done();
          std::printf("%s event %s %s %s\n", prefix.c_str(), e.type.c_str(), e.actor.c_str(), e.details.dump().c_str());
        }
        if (t.description != last_desc) {
          status.done();
          std::printf("%s %s\n", prefix.c_str(), t.description.c_str());
          last_desc = t.description;
        }
        std::fflush(stdout);
      }
      std::string file;
      if (!o.out.empty()) {
        if (o.format == "raw") {
          raw.write(reinterpret_cast<const char*>(frame.rgb.data()), static_cast<std::streamsize>(frame.rgb.size()));
          if (!raw) return IoError(o.out + "/frames.rgb: write failed");
          file = "frames.rgb";
        } else {
          file = frame_file(o, many, spec.seed, t.frame);
          const Image img = sim_frame_image(frame);
          const std::string path = o.out + "/" + file;
          EV_RETURN_IF_ERROR(o.format == "png" ? save_png(path, img) : save_ppm(path, img));
        }
        json j = t.to_json();
        j["scenario"] = spec.name;
        j["scenario_seed"] = spec.seed;
        j["file"] = file;
        if (o.format == "raw") j["index"] = done;
        truth << j.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
      }
      if (video.is_open()) EV_RETURN_IF_ERROR(video.write(frame.rgb.data()));
      ++done;
      const double now = now_s();
      if (status.active() && now - last_status > 0.25) {
        last_status = now;
        const double rate = done / std::max(1e-9, now - t0);
        status.update("%lld/%lld frames  %.0f frames/s  ETA %.1fs", static_cast<long long>(done),
                      static_cast<long long>(total), rate, (total - done) / std::max(rate, 1e-9));
      }
    }
  }
  status.done();
  const double seconds = now_s() - t0;
  json summary;
  std::string codec;
  int64_t video_frames = 0;
  if (video.is_open()) {
    codec = video.codec_name();
    EV_RETURN_IF_ERROR(video.close());
    video_frames = video.frames_written();
  }
  if (truth.is_open()) {
    truth.flush();
    if (!truth) return IoError(o.out + "/truth.jsonl: write failed");
  }
  if (raw.is_open()) {
    raw.flush();
    if (!raw) return IoError(o.out + "/frames.rgb: write failed");
    json meta = {{"count", done}, {"width", specs[0].width}, {"height", specs[0].height}, {"channels", 3},
                 {"dtype", "uint8"}, {"layout", "NHWC"}};
    EV_RETURN_IF_ERROR(write_text_file(o.out + "/meta.json", meta.dump(2) + "\n"));
  }
  json scen = json::array();
  for (const auto& s : specs) scen.push_back({{"name", s.name}, {"seed", s.seed}, {"frames", s.frames}});
  summary = {{"tool", "sim"},
             {"scenarios", scen},
             {"frames", done},
             {"width", specs[0].width},
             {"height", specs[0].height},
             {"fps", specs[0].fps},
             {"seconds", seconds},
             {"frames_per_s", seconds > 0 ? done / seconds : 0.0},
             {"rendered", need_pixels},
             {"fields", field_counts},
             {"events", event_counts}};
  if (!o.out.empty()) summary["out"] = {{"dir", o.out}, {"format", o.format}, {"truth", o.out + "/truth.jsonl"}};
  if (!o.video.empty()) summary["video"] = {{"path", o.video}, {"codec", codec}, {"frames", video_frames}};
  return summary;
}

Status run_sim(const SimOptions& o) {
  EV_ASSIGN_OR_RETURN(json j, sim_json(o));
  if (o.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return Status::Ok();
  }
  std::printf("sim: %lld frames %dx%d in %.2f s (%.0f frames/s%s)\n", static_cast<long long>(j["frames"].get<int64_t>()),
              j["width"].get<int>(), j["height"].get<int>(), j["seconds"].get<double>(), j["frames_per_s"].get<double>(),
              j["rendered"].get<bool>() ? ", rendered + written" : ", truth only");
  if (j.contains("out"))
    std::printf("  frames: %s (%s), truth: %s\n", j["out"]["dir"].get<std::string>().c_str(),
                j["out"]["format"].get<std::string>().c_str(), j["out"]["truth"].get<std::string>().c_str());
  if (j.contains("video"))
    std::printf("  video: %s (%s, %lld frames)\n", j["video"]["path"].get<std::string>().c_str(),
                j["video"]["codec"].get<std::string>().c_str(), static_cast<long long>(j["video"]["frames"].get<int64_t>()));
  std::string ev;
  for (auto it = j["events"].begin(); it != j["events"].end(); ++it)
    ev += (ev.empty() ? "" : ", ") + it.key() + " " + std::to_string(it.value().get<int64_t>());
  if (!ev.empty()) std::printf("  events: %s\n", ev.c_str());
  return Status::Ok();
}

}  // namespace ev
