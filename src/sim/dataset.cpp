#include "sim/dataset.h"

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "sim/simulator.h"

namespace ev::sim {

namespace fs = std::filesystem;
using nlohmann::json;

Status check_dataset_options(const DatasetOptions& o) {
  if (o.out_dir.empty()) return InvalidArgument("--out: an output directory is required");
  if (o.scenarios < 1 || o.scenarios > 10'000'000) return InvalidArgument("--scenarios must be in [1, 10000000]");
  if (o.frames_per_scenario < 1 || o.frames_per_scenario > 1'000'000)
    return InvalidArgument("--frames-per-scenario must be in [1, 1000000]");
  if (o.every < 1 || o.every > 1'000'000) return InvalidArgument("--every must be in [1, 1000000]");
  if (o.width < kMinSide || o.width > kMaxSide || o.height < kMinSide || o.height > kMaxSide)
    return InvalidArgument("--size: width and height must be in [" + std::to_string(kMinSide) + ", " +
                           std::to_string(kMaxSide) + "], got " + std::to_string(o.width) + "x" + std::to_string(o.height));
  if (!(o.fps >= kMinFps && o.fps <= kMaxFps)) return InvalidArgument("--fps must be in [1, 240]");
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("--threads must be in [0, 1024]");
  return Status::Ok();
}

Result<DatasetSummary> write_dataset(const DatasetOptions& o) {
  EV_RETURN_IF_ERROR(check_dataset_options(o));
  const double t0 = now_s();
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return IoError(o.out_dir + ": cannot create the directory: " + ec.message());
  const int64_t per = (o.frames_per_scenario + o.every - 1) / o.every;  // stored frames per scenario
  const int64_t frame_bytes = static_cast<int64_t>(o.width) * o.height * 3;
  const int64_t total = per * o.scenarios;
  const std::string frames_path = o.out_dir + "/frames.u8";
  {
    std::ofstream f(frames_path, std::ios::binary | std::ios::trunc);
    if (!f) return IoError(frames_path + ": cannot create");
  }
  fs::resize_file(frames_path, static_cast<uintmax_t>(total * frame_bytes), ec);
  if (ec) return IoError(frames_path + ": cannot size to " + std::to_string(total * frame_bytes) + " bytes: " + ec.message());
  std::ofstream truth(o.out_dir + "/truth.jsonl", std::ios::binary | std::ios::trunc);
  std::ofstream specs(o.out_dir + "/scenarios.jsonl", std::ios::binary | std::ios::trunc);
  if (!truth || !specs) return IoError(o.out_dir + ": cannot create truth.jsonl / scenarios.jsonl");

  int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = std::min(threads, o.scenarios);

  struct Done {
    std::string truth, spec;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, Done> pending;
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  Status first_error;

  auto worker = [&]() {
    std::fstream out(frames_path, std::ios::binary | std::ios::in | std::ios::out);
    if (!out) {
      std::lock_guard<std::mutex> l(mu);
      if (first_error.ok()) first_error = IoError(frames_path + ": cannot open for writing");
      failed = true;
      cv.notify_all();
      return;
    }
    Frame frame;
    FrameTruth t;
    for (;;) {
      const int i = next.fetch_add(1);
      if (i >= o.scenarios || failed) break;
      RandomScenarioOptions ro;
      ro.frames = o.frames_per_scenario;
      ro.fps = o.fps;
      ro.width = o.width;
      ro.height = o.height;
      const uint64_t sseed = o.seed + static_cast<uint64_t>(i);
      ScenarioSpec spec = random_scenario(sseed, ro);
      auto sim = Simulator::create(spec);
      if (!sim.ok()) {
        std::lock_guard<std::mutex> l(mu);
        if (first_error.ok()) first_error = sim.status().with_context("scenario seed " + std::to_string(sseed));
        failed = true;
        cv.notify_all();
        return;
      }
      Done d;
      d.spec = scenario_spec_to_json(spec).dump() + "\n";
      out.seekp(static_cast<std::streamoff>(static_cast<int64_t>(i) * per * frame_bytes));
      std::vector<Event> carried;
      int64_t stored = 0;
      for (int64_t f = 0; f < o.frames_per_scenario; ++f) {
        const bool keep = f % o.every == 0;
        if (!sim->next(keep ? &frame : nullptr, &t)) break;
        for (auto& e : t.events) carried.push_back(std::move(e));
        if (!keep) continue;
        out.write(reinterpret_cast<const char*>(frame.rgb.data()), static_cast<std::streamsize>(frame.rgb.size()));
        json j = t.to_json();
        json ev = json::array();
        for (const auto& e : carried) ev.push_back(to_json(e));
        carried.clear();
        json line = {{"index", static_cast<int64_t>(i) * per + stored},
                     {"scenario", i},
                     {"scenario_seed", sseed},
                     {"frame", t.frame},
                     {"t", j["t"]},
                     {"description", t.description},
                     {"hazards", j["hazards"]},
                     {"qa", j["qa"]},
                     {"events", ev},
                     {"state", j["state"]}};
        d.truth += line.dump(-1, ' ', false, json::error_handler_t::replace);
        d.truth += '\n';
        ++stored;
      }
      if (!out) {
        std::lock_guard<std::mutex> l(mu);
        if (first_error.ok()) first_error = IoError(frames_path + ": write failed (disk full?)");
        failed = true;
        cv.notify_all();
        return;
      }
      std::lock_guard<std::mutex> l(mu);
      pending.emplace(i, std::move(d));
      cv.notify_all();
    }
  };

  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) pool.emplace_back(worker);
  // Ordered writer: scenario i's truth goes out once 0..i-1 have.
  int written = 0;
  {
    std::unique_lock<std::mutex> l(mu);
    while (written < o.scenarios && !failed) {
      cv.wait(l, [&] { return failed || pending.count(written); });
      while (pending.count(written)) {
        Done d = std::move(pending[written]);
        pending.erase(written);
        l.unlock();
        truth << d.truth;
        specs << d.spec;
        ++written;
        if (o.progress) o.progress(written, static_cast<int64_t>(written) * per);
        l.lock();
      }
    }
  }
  for (auto& th : pool) th.join();
  if (failed) return first_error;
  truth.flush();
  specs.flush();
  if (!truth || !specs) return IoError(o.out_dir + ": writing truth.jsonl failed");

  json meta = {{"count", total},
               {"width", o.width},
               {"height", o.height},
               {"channels", 3},
               {"dtype", "uint8"},
               {"layout", "NHWC"},
               {"scenarios", o.scenarios},
               {"frames_per_scenario", o.frames_per_scenario},
               {"every", o.every},
               {"frames_per_scenario_stored", per},
               {"seed", o.seed},
               {"fps", o.fps},
               {"generator", "edgevlm-simdump"},
               {"description_fields", kDescriptionFields},
               {"hazard_classes", kHazardNames}};
  std::ofstream m(o.out_dir + "/meta.json", std::ios::binary | std::ios::trunc);
  m << meta.dump(2) << "\n";
  if (!m) return IoError(o.out_dir + "/meta.json: write failed");
  DatasetSummary s;
  s.frames = total;
  s.scenarios = o.scenarios;
  s.seconds = now_s() - t0;
  s.threads = threads;
  return s;
}

}  // namespace ev::sim
