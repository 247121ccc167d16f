// Simulator throughput: frames per second on one core (one Simulator on the calling thread), rendering + truth,
// for a few scenario types at 224x224 and 512x512. Plain main (no Google Benchmark): each case runs `--repeats`
// times over `--frames` frames after one warm-up pass; the median frames/s is reported, with min and max.
//
//   build-<you>/bench_sim [--frames 600] [--repeats 5] [--json]
//
// Cases: day-clear (urban, 2 lanes, a lead car, a light), night-rain (rural, lit lamps, rain streaks, wet
// reflections), busy (urban, 12 vehicles, 6 pedestrians, lights, signs, construction, dusk glare), random (the
// training distribution: random_scenario(seed) for seeds 1..8). Also "truth-only" (next(nullptr, &truth)): the
// cost of the simulation and ground truth without pixels. Target (issue): >= 500 frames/s per core at 224x224.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "sim/simulator.h"

namespace {

using ev::sim::ScenarioSpec;
using nlohmann::json;

ScenarioSpec day_clear(int size, int frames) {
  json j = {{"name", "day-clear"}, {"seed", 1}, {"frames", frames}, {"width", size}, {"height", size},
            {"road", {{"type", "urban"}, {"lanes", 2}, {"oncoming_lanes", 1}}},
            {"conditions", {{"lighting", "day"}, {"weather", "clear"}}},
            {"ego", {{"lane", 1}, {"speed", 10}}},
            {"actors",
             {{{"type", "vehicle"}, {"class", "car"}, {"colour", "white"}, {"lane", 1}, {"s", 20}, {"speed", 10}},
              {{"type", "traffic_light"}, {"s", 400}, {"cycle", {{"green", 5}, {"yellow", 2}, {"red", 5}}}},
              {{"type", "sign"}, {"sign", "speed"}, {"value", 50}, {"s", 60}}}}};
  return ev::sim::parse_scenario_spec(j).value();
}

ScenarioSpec night_rain(int size, int frames) {
  json j = {{"name", "night-rain"}, {"seed", 2}, {"frames", frames}, {"width", size}, {"height", size},
            {"road", {{"type", "rural"}, {"lanes", 1}, {"oncoming_lanes", 1}, {"curves", {{{"s", 20}, {"length", 300}, {"curvature", 0.004}}}}}},
            {"conditions", {{"lighting", "night"}, {"weather", "rain"}, {"rain_intensity", 0.8}}},
            {"ego", {{"lane", 0}, {"speed", 15}}},
            {"actors",
             {{{"type", "vehicle"}, {"class", "car"}, {"colour", "red"}, {"lane", 0}, {"s", 18}, {"speed", 15}},
              {{"type", "vehicle"}, {"class", "truck"}, {"oncoming", true}, {"lane", 0}, {"s", 300}, {"speed", 15}},
              {{"type", "sign"}, {"sign", "stop"}, {"s", 200}}}}};
  return ev::sim::parse_scenario_spec(j).value();
}

ScenarioSpec busy(int size, int frames) {
  json actors = json::array();
  const char* types[] = {"car", "truck", "bus", "motorcycle", "bicycle"};
  const char* colours[] = {"white", "black", "red", "blue", "silver", "yellow", "green"};
  for (int i = 0; i < 12; ++i) {
    const bool onc = i % 4 == 3;
    actors.push_back({{"type", "vehicle"}, {"class", types[i % 5]}, {"colour", colours[i % 7]}, {"lane", onc ? 0 : i % 2},
                      {"oncoming", onc}, {"s", 12 + 9 * i}, {"speed", onc ? 8 : 9}});
  }
  for (int i = 0; i < 6; ++i)
    actors.push_back({{"type", "pedestrian"}, {"class", i % 2 ? "child" : "adult"}, {"side", i % 2 ? "left" : "right"},
                      {"s", 15 + 12 * i}, {"timeline", {{{"t", 1.0 + i}, {"action", "cross"}, {"speed", 1.3}}}}});
  actors.push_back({{"type", "traffic_light"}, {"s", 70}, {"cycle", {{"green", 4}, {"yellow", 2}, {"red", 4}}}});
  actors.push_back({{"type", "sign"}, {"sign", "speed"}, {"value", 30}, {"s", 40}});
  actors.push_back({{"type", "sign"}, {"sign", "yield"}, {"side", "left"}, {"s", 55}});
  actors.push_back({{"type", "construction"}, {"s", 30}, {"length", 60}, {"lanes_closed", 0}, {"workers", 3}});
  json j = {{"name", "busy"}, {"seed", 3}, {"frames", frames}, {"width", size}, {"height", size},
            {"road", {{"type", "urban"}, {"lanes", 2}, {"oncoming_lanes", 1}}},
            {"conditions", {{"lighting", "dusk"}, {"weather", "glare"}}},
            {"ego", {{"lane", 1}, {"speed", 9}}},
            {"actors", actors}};
  return ev::sim::parse_scenario_spec(j).value();
}

// Frames per second over `frames` frames of each spec (the specs are cycled).
double run_once(const std::vector<ScenarioSpec>& specs, int64_t frames, bool render) {
  ev::sim::Frame f;
  ev::sim::FrameTruth t;
  int64_t done = 0;
  const double t0 = ev::now_s();
  while (done < frames) {
    for (const auto& s : specs) {
      auto sim = ev::sim::Simulator::create(s);
      while (done < frames && sim->next(render ? &f : nullptr, &t)) ++done;
      if (done >= frames) break;
    }
  }
  return static_cast<double>(done) / (ev::now_s() - t0);
}

}  // namespace

int main(int argc, char** argv) {
  int frames = 600, repeats = 5;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--frames") && i + 1 < argc) frames = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--json")) as_json = true;
    else {
      std::fprintf(stderr, "usage: bench_sim [--frames N] [--repeats N] [--json]\n");
      return 2;
    }
  }
  if (frames < 1 || repeats < 1) return 2;
  json results = json::array();
  if (!as_json) std::printf("%-12s %-8s %10s %10s %10s   (frames/s, one core, %d frames x %d repeats)\n", "case", "size",
                            "median", "min", "max", frames, repeats);
  for (int size : {224, 512}) {
    struct Case {
      std::string name;
      std::vector<ScenarioSpec> specs;
      bool render;
    };
    std::vector<Case> cases;
    cases.push_back({"day-clear", {day_clear(size, frames)}, true});
    cases.push_back({"night-rain", {night_rain(size, frames)}, true});
    cases.push_back({"busy", {busy(size, frames)}, true});
    std::vector<ScenarioSpec> rnd;
    for (uint64_t s = 1; s <= 8; ++s) {
      ev::sim::RandomScenarioOptions o;
      o.width = o.height = size;
      o.frames = 150;
      rnd.push_back(ev::sim::random_scenario(s, o));
    }
    cases.push_back({"random", rnd, true});
    cases.push_back({"truth-only", rnd, false});
    for (const auto& c : cases) {
      run_once(c.specs, std::max(1, frames / 4), c.render);  // warm-up
      std::vector<double> fps;
      for (int r = 0; r < repeats; ++r) fps.push_back(run_once(c.specs, frames, c.render));
      std::sort(fps.begin(), fps.end());
      const double med = fps.size() % 2 ? fps[fps.size() / 2] : 0.5 * (fps[fps.size() / 2 - 1] + fps[fps.size() / 2]);
      results.push_back({{"case", c.name}, {"width", size}, {"height", size}, {"median_fps", med}, {"min_fps", fps.front()},
                         {"max_fps", fps.back()}, {"frames", frames}, {"repeats", repeats},
                         {"target_fps", size == 224 && c.render ? json(500) : json(nullptr)}});
      if (!as_json)
        std::printf("%-12s %dx%-4d %10.0f %10.0f %10.0f%s\n", c.name.c_str(), size, size, med, fps.front(), fps.back(),
                    size == 224 && c.render ? (med >= 500 ? "   target 500: met" : "   target 500: NOT met") : "");
    }
  }
  if (as_json) std::printf("%s\n", results.dump(2).c_str());
  return 0;
}
