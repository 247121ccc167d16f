// Tests of the road-scene simulator (src/sim), its CLI glue (tools/sim_tool) and the FFmpeg video writer
// (perception/video_writer). Small frames and few of them: the whole file runs in a few seconds, also under ASan.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
}

#include "perception/video_writer.h"
#include "sim/dataset.h"
#include "sim/simulator.h"
#include "sim/sim_math.h"
#include "sim/world.h"
#include "tools/report.h"
#include "tools/sim_tool.h"

namespace ev::sim {
namespace {

using nlohmann::json;

const std::string kScenarioDir = std::string(EDGEVLM_SOURCE_DIR) + "/src/sim/scenarios";

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ScenarioSpec parse_or_die(const json& j) {
  auto r = parse_scenario_spec(j);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : ScenarioSpec{};
}

// A plain test scene: clean pixels (no noise, no blur), small frames.
json base_spec(int w = 96, int h = 96) {
  return {{"frames", 3}, {"fps", 10}, {"width", w}, {"height", h},
          {"road", {{"type", "urban"}, {"lanes", 2}, {"oncoming_lanes", 1}}},
          {"conditions", {{"noise", 0}, {"motion_blur", 0}}},
          {"ego", {{"lane", 1}, {"speed", 0}}}, {"actors", json::array()}};
}

struct SimRun {
  std::vector<Frame> frames;
  std::vector<FrameTruth> truth;
};

SimRun run(const ScenarioSpec& s, bool render = true) {
  SimRun r;
  auto sim = Simulator::create(s);
  EXPECT_TRUE(sim.ok()) << sim.status().to_string();
  if (!sim.ok()) return r;
  Frame f;
  FrameTruth t;
  while (sim->next(render ? &f : nullptr, &t)) {
    r.frames.push_back(f);
    r.truth.push_back(t);
  }
  return r;
}

const ObjectTruth* find_obj(const FrameTruth& t, const std::string& id) {
  for (const auto& o : t.state.objects)
    if (o.id == id) return &o;
  return nullptr;
}

struct Mean {
  double r = 0, g = 0, b = 0;
  int n = 0;
};
Mean mean_in(const Frame& f, double x0, double y0, double x1, double y1) {
  Mean m;
  for (int y = std::max(0, static_cast<int>(std::ceil(y0 - 0.5))); y < std::min(f.height, static_cast<int>(std::ceil(y1 - 0.5))); ++y)
    for (int x = std::max(0, static_cast<int>(std::ceil(x0 - 0.5))); x < std::min(f.width, static_cast<int>(std::ceil(x1 - 0.5))); ++x) {
      const uint8_t* p = &f.rgb[(static_cast<size_t>(y) * f.width + x) * 3];
      m.r += p[0], m.g += p[1], m.b += p[2];
      ++m.n;
    }
  if (m.n) m.r /= m.n, m.g /= m.n, m.b /= m.n;
  return m;
}
// Fraction of pixels inside a box that differ between two frames.
double diff_in(const Frame& a, const Frame& b, const Box& bx) {
  int n = 0, d = 0;
  for (int y = std::max(0, static_cast<int>(bx.y0)); y < std::min(a.height, static_cast<int>(std::ceil(bx.y1))); ++y)
    for (int x = std::max(0, static_cast<int>(bx.x0)); x < std::min(a.width, static_cast<int>(std::ceil(bx.x1))); ++x) {
      const size_t i = (static_cast<size_t>(y) * a.width + x) * 3;
      ++n;
      if (std::abs(a.rgb[i] - b.rgb[i]) + std::abs(a.rgb[i + 1] - b.rgb[i + 1]) + std::abs(a.rgb[i + 2] - b.rgb[i + 2]) > 12) ++d;
    }
  return n ? static_cast<double>(d) / n : 0;
}

// ---- Spec ----

TEST(SimSpec, ExamplesParse) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(kScenarioDir)) {
    if (e.path().extension() != ".json") continue;
    auto r = load_scenario_spec(e.path().string());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_GT(r->frames, 0);
    ++n;
  }
  EXPECT_GE(n, 4);
}

TEST(SimSpec, ErrorsNameTheField) {
  auto msg = [](const json& j) {
    auto r = parse_scenario_spec(j);
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.status().message();
  };
  json j = base_spec();
  j["actors"] = {{{"type", "vehicle"}, {"class", "cat"}}};
  EXPECT_NE(msg(j).find("actors[0].class"), std::string::npos) << msg(j);
  EXPECT_NE(msg(j).find("motorcycle"), std::string::npos);  // lists the known values
  j["actors"] = {{{"type", "vehicle"}, {"colr", "red"}}};
  EXPECT_NE(msg(j).find("actors[0].colr"), std::string::npos) << msg(j);
  j["actors"] = {{{"type", "sign"}, {"sign", "speed"}, {"value", 55}}};
  EXPECT_NE(msg(j).find("actors[0].value"), std::string::npos) << msg(j);
  j["actors"] = {{{"type", "vehicle"}, {"timeline", {{{"t", 1}, {"action", "brk"}}}}}};
  EXPECT_NE(msg(j).find("actors[0].timeline[0].action"), std::string::npos) << msg(j);
  j["actors"] = json::array();
  j["width"] = 0;
  EXPECT_NE(msg(j).find("width"), std::string::npos);
  j["width"] = 96;
  j["ego"]["lane"] = 3;
  EXPECT_NE(msg(j).find("ego.lane"), std::string::npos) << msg(j);
  j["ego"]["lane"] = 1;
  j["road"]["lanes"] = "two";
  EXPECT_NE(msg(j).find("road.lanes"), std::string::npos);
  j["road"]["lanes"] = 2;
  j["frames"] = -5;
  EXPECT_NE(msg(j).find("frames"), std::string::npos);
  j["frames"] = 1e300;
  EXPECT_NE(msg(j).find("frames"), std::string::npos);
  j["frames"] = 2.5;
  EXPECT_NE(msg(j).find("frames: must be an integer"), std::string::npos);
  j["frames"] = 3;

  auto dir = TempDir::create("edgevlm-test-sim-");
  ASSERT_TRUE(dir.ok());
  const std::string path = dir->path() + "/bad.json";
  std::ofstream(path) << R"({"road": {"lanes": 9}})";
  auto r = load_scenario_spec(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(path), std::string::npos);
  EXPECT_NE(r.status().message().find("road.lanes"), std::string::npos);
  std::ofstream(path) << "{not json";
  EXPECT_NE(load_scenario_spec(path).status().message().find("not valid JSON"), std::string::npos);
  EXPECT_EQ(load_scenario_spec(dir->path() + "/missing.json").status().code(), StatusCode::kNotFound);
}

TEST(SimSpec, JsonRoundTrip) {
  for (uint64_t seed : {1ull, 2ull, 3ull, 99ull}) {
    const ScenarioSpec s = random_scenario(seed);
    const json j = scenario_spec_to_json(s);
    const ScenarioSpec back = parse_or_die(j);
    EXPECT_EQ(scenario_spec_to_json(back), j);
  }
}

TEST(SimSpec, RandomCoversClasses) {
  std::set<std::string> types, colours, signs, lights, lw;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    const ScenarioSpec s = random_scenario(seed);
    for (const auto& v : s.vehicles) types.insert(name(v.type)), colours.insert(name(v.colour));
    for (const auto& g : s.signs) signs.insert(g.type == SignType::kSpeed ? "speed " + std::to_string(g.value) : name(g.type));
    for (const auto& l : s.lights)
      for (const auto& p : l.timeline) lights.insert(name(p.state));
    lw.insert(std::string(name(s.conditions.lighting)) + "/" + name(s.conditions.weather));
  }
  EXPECT_EQ(types.size(), 5u);
  EXPECT_EQ(colours.size(), 7u);
  EXPECT_EQ(signs.size(), 13u);  // stop, yield, no entry, speed 30..120
  EXPECT_EQ(lights.size(), 4u);
  EXPECT_EQ(lw.size(), 12u);
}

// ---- Determinism ----

TEST(SimDeterminism, SameSeedSameFramesDifferentSeedDifferent) {
  RandomScenarioOptions o;
  o.width = 64;
  o.height = 48;
  o.frames = 8;
  auto hashes = [&](uint64_t seed) {
    std::vector<uint64_t> h;
    SimRun r = run(random_scenario(seed, o));
    for (size_t i = 0; i < r.frames.size(); ++i) {
      h.push_back(frame_hash(r.frames[i]));
      h.push_back(fnv1a(r.truth[i].to_json().dump().data(), r.truth[i].to_json().dump().size()));
    }
    return h;
  };
  const auto a = hashes(5), b = hashes(5), c = hashes(6);
  ASSERT_EQ(a.size(), 16u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // Frames differ from each other too (the scene moves, the noise changes).
  EXPECT_NE(a[0], a[2]);
}

TEST(SimDeterminism, SkippingRenderingKeepsTruth) {
  RandomScenarioOptions o;
  o.width = 48;
  o.height = 48;
  o.frames = 10;
  const ScenarioSpec s = random_scenario(17, o);
  SimRun a = run(s, true), b = run(s, false);
  ASSERT_EQ(a.truth.size(), b.truth.size());
  for (size_t i = 0; i < a.truth.size(); ++i) EXPECT_EQ(a.truth[i].to_json(), b.truth[i].to_json());
}

TEST(SimDataset, OutputIndependentOfThreads) {
  auto d1 = TempDir::create("edgevlm-test-simds-");
  auto d2 = TempDir::create("edgevlm-test-simds-");
  ASSERT_TRUE(d1.ok() && d2.ok());
  DatasetOptions o;
  o.seed = 40;
  o.scenarios = 3;
  o.frames_per_scenario = 7;
  o.every = 2;
  o.width = 32;
  o.height = 24;
  o.threads = 1;
  o.out_dir = d1->path();
  auto r1 = write_dataset(o);
  ASSERT_TRUE(r1.ok()) << r1.status().to_string();
  o.threads = 3;
  o.out_dir = d2->path();
  ASSERT_TRUE(write_dataset(o).ok());
  EXPECT_EQ(r1->frames, 12);  // 3 scenarios x ceil(7 / 2)
  for (const char* f : {"frames.u8", "truth.jsonl", "meta.json", "scenarios.jsonl"})
    EXPECT_EQ(slurp(d1->path() + "/" + f), slurp(d2->path() + "/" + f)) << f;
  EXPECT_EQ(slurp(d1->path() + "/frames.u8").size(), 12u * 32 * 24 * 3);
  const json meta = json::parse(slurp(d1->path() + "/meta.json"));
  EXPECT_EQ(meta["count"], 12);
  EXPECT_EQ(meta["width"], 32);
  std::istringstream lines(slurp(d1->path() + "/truth.jsonl"));
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    const json j = json::parse(line);
    EXPECT_EQ(j["index"], n);
    EXPECT_TRUE(j.contains("description") && j.contains("qa") && j.contains("state") && j.contains("events"));
    ++n;
  }
  EXPECT_EQ(n, 12);
  o.width = 0;
  EXPECT_FALSE(write_dataset(o).ok());
}

// ---- Description ----

TEST(SimDescription, ExactFormat) {
  SceneState s;
  s.light = LightState::kRed;
  s.pedestrian = PedField::kCrossingLeft;
  s.lead = LeadTruth{"v1", VehicleType::kCar, Colour::kWhite, true, 12};
  s.sign = SignType::kSpeed;
  s.sign_value = 50;
  s.hazards = kHazardPedestrian | kHazardBraking | kHazardRedLight;
  EXPECT_EQ(describe(s),
            "light: red; pedestrian: crossing left; lead: white car braking; sign: speed 50; construction: no; "
            "lighting: day; weather: clear; hazard: pedestrian, braking, red light");
  SceneState e;
  e.lighting = Lighting::kNight;
  e.weather = Weather::kFog;
  e.sign = SignType::kNoEntry;
  e.construction = true;
  EXPECT_EQ(describe(e),
            "light: none; pedestrian: none; lead: none; sign: no entry; construction: yes; lighting: night; weather: fog; "
            "hazard: none");
}

TEST(SimDescription, RoundTripOverRandomScenes) {
  RandomScenarioOptions o;
  o.frames = 40;
  std::set<std::string> seen;
  for (uint64_t seed = 0; seed < 12; ++seed) {
    SimRun r = run(random_scenario(seed, o), false);
    for (const auto& t : r.truth) {
      auto p = parse_description(t.description);
      ASSERT_TRUE(p.ok());
      EXPECT_EQ(*p, description_fields(t.state));
      EXPECT_EQ(parse_hazard_list((*p)["hazard"]), t.hazards);
      seen.insert(t.description);
    }
  }
  EXPECT_GT(seen.size(), 12u);
}

TEST(SimDescription, ParseIsTolerant) {
  auto p = parse_description("  Light:RED ;lead:  blue   truck ; weather: snow; bogus; colour: x; light: green");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->at("light"), "red");  // first occurrence wins
  EXPECT_EQ(p->at("lead"), "blue truck");
  EXPECT_EQ(p->at("weather"), "snow");  // unknown value kept
  EXPECT_EQ(p->count("sign"), 0u);      // missing -> absent
  EXPECT_EQ(p->count("colour"), 0u);    // unknown field ignored
  EXPECT_FALSE(parse_description("the quick brown fox").ok());
  EXPECT_EQ(parse_hazard_list("cut-in, Red Light,unknown"), kHazardCutIn | kHazardRedLight);
  EXPECT_EQ(parse_hazard_list("none"), 0u);
  EXPECT_EQ(kDescriptionFields.size(), 8u);
  EXPECT_STREQ(kHazardNames[2], "cut-in");
}

TEST(SimDescription, QaPairsFollowState) {
  SceneState s;
  s.light = LightState::kYellow;
  s.sign = SignType::kSpeed;
  s.sign_value = 80;
  s.pedestrian = PedField::kCrossingRight;
  const auto qa = make_qa(s);
  std::map<std::string, std::string> m;
  for (const auto& p : qa) m[p.question] = p.answer;
  EXPECT_EQ(m["What colour is the traffic light?"], "yellow");
  EXPECT_EQ(m["What is the speed limit?"], "80");
  EXPECT_EQ(m["Where is the crossing pedestrian?"], "right");
  EXPECT_EQ(m["Is a pedestrian crossing the road?"], "yes");
  EXPECT_EQ(m["What vehicle is ahead?"], "none");
}

// ---- Rendering: every class shows up where the truth says it is ----

TEST(SimRender, TrafficLightLampColours) {
  for (const char* st : {"red", "yellow", "green", "off"}) {
    json j = base_spec(128, 128);
    j["actors"] = {{{"type", "traffic_light"}, {"id", "tl"}, {"s", 14}, {"mount", "overhead"},
                    {"timeline", {{{"t", 0}, {"state", st}}}}}};
    SimRun r = run(parse_or_die(j));
    ASSERT_FALSE(r.frames.empty());
    const FrameTruth& t = r.truth[0];
    ASSERT_TRUE(t.state.light.has_value()) << st;
    EXPECT_STREQ(name(*t.state.light), st);
    const ObjectTruth* o = find_obj(t, "tl");
    ASSERT_NE(o, nullptr);
    // Lamp centres at 1.16 / 0.70 / 0.24 m above the housing bottom (of 1.4 m).
    auto lamp = [&](double h) {
      const double y = o->box.y1 - (h / kLightHousingH) * o->box.h();
      const double xc = 0.5 * (o->box.x0 + o->box.x1), r2 = 0.08 * o->box.h();
      return mean_in(r.frames[0], xc - r2, y - r2, xc + r2, y + r2);
    };
    const Mean red = lamp(1.16), yel = lamp(0.70), grn = lamp(0.24);
    const std::string s = st;
    if (s == "red") {
      EXPECT_GT(red.r, 200) << red.r;
      EXPECT_LT(red.g, 120);
    }
    if (s == "yellow") {
      EXPECT_GT(yel.r + yel.g, 380);
    }
    if (s == "green") {
      EXPECT_GT(grn.g, 200);
      EXPECT_LT(grn.r, 120);
    }
    if (s != "red") {
      EXPECT_LT(red.r, 130);
    }
    if (s == "off") {
      EXPECT_LT(std::max({red.r, yel.r, yel.g, grn.g}), 130);
    }
  }
}

TEST(SimRender, BrakeLightsChangePixelsAndTruth) {
  json j = base_spec(128, 128);
  j["actors"] = {{{"type", "vehicle"}, {"id", "car"}, {"class", "car"}, {"colour", "blue"}, {"lane", 1}, {"s", 10},
                  {"speed", 0}}};
  SimRun off = run(parse_or_die(j));
  j["actors"][0]["timeline"] = {{{"t", 0}, {"action", "brake"}, {"decel", 3}, {"duration", 0}}};
  SimRun on = run(parse_or_die(j));
  ASSERT_TRUE(off.truth[0].state.lead && on.truth[0].state.lead);
  EXPECT_FALSE(off.truth[0].state.lead->braking);
  EXPECT_TRUE(on.truth[0].state.lead->braking);
  EXPECT_NE(off.truth[0].description.find("lead: blue car;"), std::string::npos);
  EXPECT_NE(on.truth[0].description.find("lead: blue car braking"), std::string::npos);
  EXPECT_NE(on.truth[0].description.find("hazard: braking"), std::string::npos);
  const ObjectTruth* o = find_obj(on.truth[0], "car");
  ASSERT_NE(o, nullptr);
  // Tail lamps: outer fifths of the rear face at 0.64..0.84 m (rear face = the bottom part of the box here).
  const double wpx = o->box.w(), hy0 = o->box.y1 - (0.84 / 1.48) * o->box.h(), hy1 = o->box.y1 - (0.64 / 1.48) * o->box.h();
  const Mean a = mean_in(off.frames[0], o->box.x0 + 0.02 * wpx, hy0, o->box.x0 + 0.15 * wpx, hy1);
  const Mean b = mean_in(on.frames[0], o->box.x0 + 0.02 * wpx, hy0, o->box.x0 + 0.15 * wpx, hy1);
  EXPECT_GT(b.r, a.r + 60) << a.r << " " << b.r;
  EXPECT_GT(b.r, 2 * b.g);
}

TEST(SimRender, EveryObjectClassRenders) {
  struct Case {
    json actor;
    std::string id;
  };
  std::vector<Case> cases;
  for (const char* c : {"car", "truck", "bus", "motorcycle", "bicycle"})
    cases.push_back({{{"type", "vehicle"}, {"id", "x"}, {"class", c}, {"colour", "red"}, {"lane", 1}, {"s", 14}, {"speed", 0}}, "x"});
  for (const char* c : {"adult", "child"})
    cases.push_back({{{"type", "pedestrian"}, {"id", "x"}, {"class", c}, {"side", "right"}, {"s", 10}, {"offset", 0.5}}, "x"});
  for (const char* c : {"stop", "yield", "no entry", "speed"})
    cases.push_back({{{"type", "sign"}, {"id", "x"}, {"sign", c}, {"value", 60}, {"side", "right"}, {"s", 12}}, "x"});
  cases.push_back({{{"type", "traffic_light"}, {"id", "x"}, {"s", 15}, {"mount", "right"}}, "x"});
  cases.push_back({{{"type", "construction"}, {"id", "x"}, {"s", 8}, {"length", 30}, {"lanes_closed", 1}}, "x"});
  json empty = base_spec(128, 128);
  SimRun base = run(parse_or_die(empty));
  for (const auto& c : cases) {
    json j = empty;
    j["actors"] = {c.actor};
    SimRun r = run(parse_or_die(j));
    const ObjectTruth* o = find_obj(r.truth[0], c.id);
    ASSERT_NE(o, nullptr) << c.actor.dump();
    EXPECT_TRUE(o->visible) << c.actor.dump();
    // The construction box is the union of sparse cones; everything else is a filled shape.
    EXPECT_GT(diff_in(base.frames[0], r.frames[0], o->box), o->kind == "construction" ? 0.08 : 0.25) << c.actor.dump();
    if (o->kind == "vehicle") {
      EXPECT_EQ(r.truth[0].state.lead->type, static_cast<VehicleType>(&c - &cases[0]));
      const Mean m = mean_in(r.frames[0], o->box.x0, o->box.y0, o->box.x1, o->box.y1);
      EXPECT_GT(m.r, m.b + 20) << c.actor.dump();  // red paint dominates the box
    }
  }
  // The truth fields follow.
  json j = empty;
  j["actors"] = {cases[5].actor};
  EXPECT_EQ(run(parse_or_die(j)).truth[0].state.pedestrian, PedField::kSidewalk);
  j["actors"] = {cases[10].actor};
  SimRun sp = run(parse_or_die(j));
  EXPECT_NE(sp.truth[0].description.find("sign: speed 60"), std::string::npos) << sp.truth[0].description;
  j["actors"] = {cases.back().actor};
  SimRun cz = run(parse_or_die(j));
  EXPECT_TRUE(cz.truth[0].state.construction);
  EXPECT_TRUE(cz.truth[0].hazards & kHazardConstruction);
}

TEST(SimRender, ConditionsChangeTheLook) {
  // Upper half (sky, buildings): the headlight cone lights the road at night, not the scene.
  auto mean_frame = [](const json& j) {
    SimRun r = run(parse_or_die(j));
    return mean_in(r.frames[0], 0, 0, r.frames[0].width, 0.5 * r.frames[0].height);
  };
  json j = base_spec(64, 64);
  const Mean day = mean_frame(j);
  j["conditions"]["lighting"] = "night";
  const Mean night = mean_frame(j);
  j["conditions"]["lighting"] = "dusk";
  const Mean dusk = mean_frame(j);
  EXPECT_GT(day.g, dusk.g + 15);
  EXPECT_GT(dusk.g, night.g + 10);
  j["conditions"]["lighting"] = "day";
  j["conditions"]["weather"] = "fog";
  const Mean fog = mean_frame(j);
  EXPECT_GT(fog.r, day.r);  // washed out towards the fog colour
  j["conditions"]["weather"] = "glare";
  EXPECT_GT(mean_frame(j).g, day.g);
}

// ---- Events and visibility ----

TEST(SimEvents, ScriptedEventsFireOnTheirFrame) {
  json j = base_spec(64, 64);
  j["frames"] = 40;
  j["road"]["lanes"] = 2;
  j["ego"] = {{"lane", 1}, {"speed", 0}};
  j["actors"] = {
      {{"type", "traffic_light"}, {"id", "tl"}, {"s", 20}, {"timeline", {{{"t", 0}, {"state", "green"}}, {{"t", 2.0}, {"state", "red"}}}}},
      {{"type", "vehicle"}, {"id", "lead"}, {"class", "car"}, {"lane", 1}, {"s", 12}, {"speed", 0},
       {"timeline", {{{"t", 1.5}, {"action", "brake"}, {"decel", 3}, {"duration", 1.0}}}}},
      {{"type", "vehicle"}, {"id", "cut"}, {"class", "car"}, {"lane", 0}, {"s", 8}, {"speed", 0},
       {"timeline", {{{"t", 0.5}, {"action", "change_lane"}, {"lane", 1}, {"duration", 2.0}}}}},
      {{"type", "pedestrian"}, {"id", "ped"}, {"side", "right"}, {"s", 30}, {"offset", 1.0},
       {"timeline", {{{"t", 1.0}, {"action", "cross"}, {"speed", 1.4}}}}}};
  SimRun r = run(parse_or_die(j), false);
  ASSERT_EQ(r.truth.size(), 40u);
  std::map<std::string, int64_t> first;
  for (const auto& t : r.truth)
    for (const auto& e : t.events) {
      EXPECT_EQ(e.frame, t.frame);
      if (!first.count(e.type + ":" + e.actor)) first[e.type + ":" + e.actor] = e.frame;
    }
  EXPECT_EQ(first["light_red:tl"], 20);
  EXPECT_EQ(first["brake_start:lead"], 15);
  EXPECT_EQ(first["cut_in:cut"], 5);
  // Starts at 1.0 s from 1.0 m beyond the kerb at 1.4 m/s: 0.14 m per frame, on the road after 8 steps.
  EXPECT_EQ(first["pedestrian_enters_road:ped"], 18);
  EXPECT_EQ(first["hazard_start:red light"], 20);
  EXPECT_GE(first.count("hazard_start:cut-in"), 1u);
  EXPECT_TRUE(r.truth[20].state.light == LightState::kRed);
  EXPECT_TRUE(r.truth[19].state.light == LightState::kGreen);
}

TEST(SimTruth, NoneWhenNotVisible) {
  auto desc_at = [](json j, int frame = 0) {
    SimRun r = run(parse_or_die(j), false);
    return r.truth[static_cast<size_t>(frame)];
  };
  json j = base_spec(96, 96);
  // Too far (too small).
  j["actors"] = {{{"type", "sign"}, {"sign", "stop"}, {"s", 45}}};
  EXPECT_FALSE(desc_at(j).state.sign.has_value());
  // Behind the camera.
  j["actors"] = {{{"type", "sign"}, {"sign", "stop"}, {"s", -5}}};
  EXPECT_FALSE(desc_at(j).state.sign.has_value());
  // Near: visible.
  j["actors"] = {{{"type", "sign"}, {"sign", "stop"}, {"s", 12}}};
  EXPECT_EQ(desc_at(j).state.sign, SignType::kStop);
  // Same sign in dense fog: not seen.
  j["conditions"]["weather"] = "fog";
  j["conditions"]["fog_distance"] = 5;
  EXPECT_FALSE(desc_at(j).state.sign.has_value());
  // A dark (off) light at night in the country: not seen; lit: seen.
  j = base_spec(96, 96);
  j["road"] = {{"type", "rural"}, {"lanes", 1}, {"oncoming_lanes", 1}};
  j["ego"]["lane"] = 0;
  j["conditions"]["lighting"] = "night";
  j["actors"] = {{{"type", "traffic_light"}, {"s", 14}, {"timeline", {{{"t", 0}, {"state", "off"}}}}}};
  EXPECT_FALSE(desc_at(j).state.light.has_value());
  j["actors"][0]["timeline"][0]["state"] = "red";
  EXPECT_EQ(desc_at(j).state.light, LightState::kRed);
  // A car hidden behind a bus: the bus is the lead; a light behind a truck is occluded.
  j = base_spec(96, 96);
  j["actors"] = {{{"type", "vehicle"}, {"id", "bus"}, {"class", "bus"}, {"lane", 1}, {"s", 12}, {"speed", 0}},
                 {{"type", "traffic_light"}, {"id", "tl"}, {"s", 30}, {"mount", "overhead"}}};
  FrameTruth t = desc_at(j);
  EXPECT_EQ(t.state.lead->type, VehicleType::kBus);
  EXPECT_FALSE(t.state.light.has_value());
  EXPECT_GT(find_obj(t, "tl")->occluded, 0.5);
  // Lead out of range.
  j["actors"] = {{{"type", "vehicle"}, {"class", "car"}, {"lane", 1}, {"s", 90}, {"speed", 0}}};
  EXPECT_FALSE(desc_at(j).state.lead.has_value());
  // A vehicle in the next lane is not the lead.
  j["actors"] = {{{"type", "vehicle"}, {"class", "car"}, {"lane", 0}, {"s", 15}, {"speed", 0}}};
  EXPECT_FALSE(desc_at(j).state.lead.has_value());
}

TEST(SimTruth, CrossingPositionFollowsThePedestrian) {
  json j = base_spec(96, 96);
  j["frames"] = 90;
  j["ego"]["lane"] = 0;  // the right sidewalk is then in the right third of the image
  j["actors"] = {{{"type", "pedestrian"}, {"id", "p"}, {"side", "right"}, {"s", 14}, {"offset", 0.3},
                  {"timeline", {{{"t", 0}, {"action", "cross"}, {"speed", 1.6}}}}}};
  SimRun r = run(parse_or_die(j), false);
  std::vector<PedField> order;
  for (const auto& t : r.truth)
    if (order.empty() || order.back() != t.state.pedestrian) order.push_back(t.state.pedestrian);
  // Walking right to left across the image: sidewalk, right, center, left (then off-road / out of view).
  std::vector<PedField> want = {PedField::kSidewalk, PedField::kCrossingRight, PedField::kCrossingCenter,
                                PedField::kCrossingLeft};
  ASSERT_GE(order.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(order[i], want[i]) << i;
}

// ---- CLI glue ----

TEST(SimTool, WritesFramesAndTruth) {
  auto dir = TempDir::create("edgevlm-test-simtool-");
  ASSERT_TRUE(dir.ok());
  SimOptions o;
  o.spec = kScenarioDir + "/night_rain.json";
  o.frames = 5;
  o.size = "64x48";
  o.out = dir->path();
  o.format = "ppm";
  o.progress = false;
  auto j = sim_json(o);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_EQ((*j)["frames"], 5);
  EXPECT_TRUE(std::filesystem::exists(dir->path() + "/frame_000004.ppm"));
  std::istringstream in(slurp(dir->path() + "/truth.jsonl"));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const json t = json::parse(line);
    EXPECT_EQ(t["frame"], n);
    EXPECT_EQ(t["scenario"], "night_rain");
    ++n;
  }
  EXPECT_EQ(n, 5);
  SimOptions bad = o;
  bad.size = "0x0";
  EXPECT_FALSE(sim_json(bad).ok());
  bad = o;
  bad.frames = -5;
  EXPECT_FALSE(sim_json(bad).ok());
  bad.frames = 0;
  EXPECT_FALSE(sim_json(bad).ok());
  bad = o;
  bad.size = "100000x10";
  EXPECT_FALSE(sim_json(bad).ok());
  bad = o;
  bad.spec = dir->path() + "/nope.json";
  EXPECT_FALSE(sim_json(bad).ok());
  bad = o;
  bad.format = "gif";
  EXPECT_FALSE(sim_json(bad).ok());
}

}  // namespace
}  // namespace ev::sim

// ---- Video writer ----

namespace ev {
namespace {

struct Decoded {
  int frames = 0, width = 0, height = 0;
  std::string codec;
};

// Reads a video back with libavformat/libavcodec and counts the decoded frames.
Decoded decode_video(const std::string& path) {
  Decoded d;
  AVFormatContext* fmt = nullptr;
  if (avformat_open_input(&fmt, path.c_str(), nullptr, nullptr) < 0) return d;
  avformat_find_stream_info(fmt, nullptr);
  const int si = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (si >= 0) {
    const AVCodecParameters* par = fmt->streams[si]->codecpar;
    const AVCodec* dec = avcodec_find_decoder(par->codec_id);
    AVCodecContext* ctx = avcodec_alloc_context3(dec);
    avcodec_parameters_to_context(ctx, par);
    if (dec && avcodec_open2(ctx, dec, nullptr) == 0) {
      d.codec = dec->name;
      AVPacket* pkt = av_packet_alloc();
      AVFrame* fr = av_frame_alloc();
      auto drain = [&] {
        while (avcodec_receive_frame(ctx, fr) == 0) {
          ++d.frames;
          d.width = fr->width;
          d.height = fr->height;
        }
      };
      while (av_read_frame(fmt, pkt) >= 0) {
        if (pkt->stream_index == si && avcodec_send_packet(ctx, pkt) == 0) drain();
        av_packet_unref(pkt);
      }
      avcodec_send_packet(ctx, nullptr);
      drain();
      av_frame_free(&fr);
      av_packet_free(&pkt);
    }
    avcodec_free_context(&ctx);
  }
  avformat_close_input(&fmt);
  return d;
}

TEST(VideoWriter, WritesDecodableVideo) {
  auto dir = TempDir::create("edgevlm-test-video-");
  ASSERT_TRUE(dir.ok());
  sim::RandomScenarioOptions ro;
  ro.width = 64;
  ro.height = 48;
  ro.frames = 12;
  auto simr = sim::Simulator::create(sim::random_scenario(3, ro));
  ASSERT_TRUE(simr.ok());
  std::vector<sim::Frame> frames;
  sim::Frame f;
  while (simr->next(&f, nullptr)) frames.push_back(f);
  struct Case {
    std::string file, codec;
  };
  for (const Case& c : {Case{"a.mp4", ""}, Case{"b.mkv", "mpeg4"}, Case{"c.mkv", "mjpeg"}}) {
    VideoWriter vw;
    VideoWriterOptions vo;
    vo.codec = c.codec;
    const std::string path = dir->path() + "/" + c.file;
    Status s = vw.open(path, 64, 48, 30.0, vo);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_FALSE(vw.codec_name().empty());
    for (const auto& fr : frames) ASSERT_TRUE(vw.write(fr.rgb.data()).ok());
    ASSERT_TRUE(vw.close().ok());
    EXPECT_TRUE(vw.close().ok());  // twice is fine
    EXPECT_EQ(vw.frames_written(), 12);
    const Decoded d = decode_video(path);
    EXPECT_EQ(d.frames, 12) << c.file << " " << vw.codec_name();
    EXPECT_EQ(d.width, 64);
    EXPECT_EQ(d.height, 48);
  }
}

TEST(VideoWriter, RejectsBadArguments) {
  auto dir = TempDir::create("edgevlm-test-video-");
  ASSERT_TRUE(dir.ok());
  VideoWriter vw;
  EXPECT_EQ(vw.open(dir->path() + "/odd.mp4", 63, 48, 30).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(vw.open(dir->path() + "/tiny.mp4", 0, 0, 30).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(vw.open(dir->path() + "/x.mp4", 64, 48, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(vw.open(dir->path() + "/x.unknownext", 64, 48, 30).ok());
  EXPECT_FALSE(vw.open("/nonexistent-dir/x.mp4", 64, 48, 30).ok());
  uint8_t px[64 * 48 * 3] = {};
  EXPECT_FALSE(vw.write(px).ok());  // not open
}

}  // namespace
}  // namespace ev
