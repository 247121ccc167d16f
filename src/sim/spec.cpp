#include "sim/spec.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "sim/sim_math.h"
#include "sim/world.h"

namespace ev::sim {

using nlohmann::json;

const char* name(Lighting v) {
  static const char* k[] = {"day", "dusk", "night"};
  return k[static_cast<int>(v)];
}
const char* name(Weather v) {
  static const char* k[] = {"clear", "rain", "fog", "glare"};
  return k[static_cast<int>(v)];
}
const char* name(VehicleType v) {
  static const char* k[] = {"car", "truck", "bus", "motorcycle", "bicycle"};
  return k[static_cast<int>(v)];
}
const char* name(Colour v) {
  static const char* k[] = {"white", "black", "red", "blue", "silver", "yellow", "green"};
  return k[static_cast<int>(v)];
}
const char* name(LightState v) {
  static const char* k[] = {"red", "yellow", "green", "off"};
  return k[static_cast<int>(v)];
}
const char* name(SignType v) {
  static const char* k[] = {"stop", "yield", "no entry", "speed"};
  return k[static_cast<int>(v)];
}
const char* name(PedClass v) {
  static const char* k[] = {"adult", "child"};
  return k[static_cast<int>(v)];
}
const char* name(RoadType v) {
  static const char* k[] = {"urban", "highway", "rural"};
  return k[static_cast<int>(v)];
}
const char* name(Side v) { return v == Side::kLeft ? "left" : "right"; }
const char* name(LightMount v) {
  static const char* k[] = {"overhead", "right", "left"};
  return k[static_cast<int>(v)];
}

LightState TrafficLightSpec::state_at(double t) const {
  const double period = cycle_green + cycle_yellow + cycle_red;
  if (period > 0) {
    double u = t + cycle_offset;
    u -= period * static_cast<double>(static_cast<int64_t>(u / period));
    if (u < 0) u += period;
    if (u < cycle_green) return LightState::kGreen;
    if (u < cycle_green + cycle_yellow) return LightState::kYellow;
    return LightState::kRed;
  }
  if (timeline.empty()) return LightState::kGreen;
  LightState st = timeline.front().state;
  for (const auto& p : timeline) {
    if (p.t <= t + 1e-9) st = p.state;
  }
  return st;
}

namespace {

// ---- A small checked reader over one JSON object: the first error wins and names the field's path. ----

std::string join_path(const std::string& base, const std::string& key) { return base.empty() ? key : base + "." + key; }

template <typename E, int N>
std::string known_list() {
  std::string s;
  for (int i = 0; i < N; ++i) {
    if (i) s += ", ";
    s += name(static_cast<E>(i));
  }
  return s;
}

class Fields {
 public:
  Fields(const json& j, std::string path) : j_(j), path_(std::move(path)) {
    if (!j.is_object()) fail(path_.empty() ? std::string("the spec") : path_, "must be a JSON object");
  }

  const json* get(const char* key) {
    used_.insert(key);
    if (!st_.ok() || !j_.is_object()) return nullptr;
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string at(const char* key) const { return join_path(path_, key); }

  void num(const char* key, double* out, double lo, double hi) {
    const json* v = get(key);
    if (!v) return;
    if (!v->is_number()) return fail(at(key), "must be a number");
    const double d = v->get<double>();
    if (!(d >= lo && d <= hi)) return fail(at(key), "must be in [" + fmt(lo) + ", " + fmt(hi) + "], got " + fmt(d));
    *out = d;
  }
  template <typename I>
  void integer(const char* key, I* out, int64_t lo, int64_t hi) {
    const json* v = get(key);
    if (!v) return;
    int64_t d = 0;
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      d = INT64_MAX;
    } else if (v->is_number_integer()) {
      d = v->get<int64_t>();
    } else if (v->is_number_float()) {
      const double x = v->get<double>();
      // 3.0 is accepted as 3; anything not integral (or beyond int64) is not.
      if (!(std::abs(x) < 9e18) || x != std::floor(x)) return fail(at(key), "must be an integer");
      d = static_cast<int64_t>(x);
    } else {
      return fail(at(key), "must be an integer");
    }
    if (d < lo || d > hi)
      return fail(at(key), "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(d));
    *out = static_cast<I>(d);
  }
  void u64(const char* key, uint64_t* out) {
    const json* v = get(key);
    if (!v) return;
    if (v->is_number_unsigned()) *out = v->get<uint64_t>();
    else if (v->is_number_integer() && v->get<int64_t>() >= 0) *out = static_cast<uint64_t>(v->get<int64_t>());
    else fail(at(key), "must be a non-negative integer");
  }
  void boolean(const char* key, bool* out) {
    const json* v = get(key);
    if (!v) return;
    if (!v->is_boolean()) return fail(at(key), "must be true or false");
    *out = v->get<bool>();
  }
  void str(const char* key, std::string* out) {
    const json* v = get(key);
    if (!v) return;
    if (!v->is_string()) return fail(at(key), "must be a string");
    *out = v->get<std::string>();
  }
  template <typename E, int N>
  void enumv(const char* key, E* out) {
    const json* v = get(key);
    if (!v) return;
    if (!v->is_string()) return fail(at(key), "must be a string (one of: " + known_list<E, N>() + ")");
    const std::string s = v->get<std::string>();
    for (int i = 0; i < N; ++i) {
      if (s == name(static_cast<E>(i))) {
        *out = static_cast<E>(i);
        return;
      }
    }
    fail(at(key), "unknown value '" + s + "' (known: " + known_list<E, N>() + ")");
  }
  // An array field; calls fn(element, path) for each element.
  template <typename F>
  void array(const char* key, F fn) {
    const json* v = get(key);
    if (!v) return;
    if (!v->is_array()) return fail(at(key), "must be an array");
    for (size_t i = 0; i < v->size() && st_.ok(); ++i) {
      Status s = fn((*v)[i], at(key) + "[" + std::to_string(i) + "]");
      if (!s.ok()) st_ = s;
    }
  }
  template <typename F>
  void object(const char* key, F fn) {
    const json* v = get(key);
    if (!v) return;
    Status s = fn(*v, at(key));
    if (!s.ok()) st_ = s;
  }
  void fail(const std::string& where, const std::string& what) {
    if (st_.ok()) st_ = InvalidArgument(where + ": " + what);
  }
  // Unknown keys are errors (they are nearly always typos).
  Status finish() {
    if (st_.ok() && j_.is_object()) {
      for (auto it = j_.begin(); it != j_.end(); ++it) {
        if (!used_.count(it.key())) {
          std::string known;
          for (const auto& k : used_) known += (known.empty() ? "" : ", ") + k;
          return InvalidArgument(at(it.key().c_str()) + ": unknown field (known here: " + known + ")");
        }
      }
    }
    return st_;
  }
  bool ok() const { return st_.ok(); }

  static std::string fmt(double d) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", d);
    return b;
  }

 private:
  const json& j_;
  std::string path_;
  std::set<std::string> used_;
  Status st_;
};

constexpr double kMaxS = 1e6;

Status parse_camera(const json& j, const std::string& p, CameraSpec* c) {
  Fields f(j, p);
  f.num("fov_deg", &c->fov_deg, 20, 120);
  f.num("height_m", &c->height_m, 0.5, 4.0);
  f.num("horizon", &c->horizon, 0.2, 0.8);
  return f.finish();
}

Status parse_road(const json& j, const std::string& p, RoadSpec* r) {
  Fields f(j, p);
  f.enumv<RoadType, 3>("type", &r->type);
  f.integer("lanes", &r->lanes, 1, 5);
  f.integer("oncoming_lanes", &r->oncoming_lanes, 0, 3);
  f.num("lane_width", &r->lane_width, 2.5, 5.0);
  f.array("curves", [&](const json& e, const std::string& ep) -> Status {
    CurveSpec c;
    Fields g(e, ep);
    g.num("s", &c.s, -kMaxS, kMaxS);
    g.num("length", &c.length, 1, kMaxS);
    g.num("curvature", &c.curvature, -0.02, 0.02);
    EV_RETURN_IF_ERROR(g.finish());
    r->curves.push_back(c);
    return Status::Ok();
  });
  return f.finish();
}

Status parse_conditions(const json& j, const std::string& p, ConditionsSpec* c) {
  Fields f(j, p);
  f.enumv<Lighting, kNumLighting>("lighting", &c->lighting);
  f.enumv<Weather, kNumWeather>("weather", &c->weather);
  f.num("noise", &c->noise, -1, 64);
  f.num("motion_blur", &c->motion_blur, -1, 1);
  f.num("fog_distance", &c->fog_distance, 5, 1000);
  f.num("rain_intensity", &c->rain_intensity, 0, 1);
  return f.finish();
}

Status parse_ego(const json& j, const std::string& p, EgoSpec* e) {
  Fields f(j, p);
  f.integer("lane", &e->lane, 0, 4);
  f.num("s", &e->s, -kMaxS, kMaxS);
  f.num("speed", &e->speed, 0, 60);
  f.boolean("obey_lights", &e->obey_lights);
  f.array("timeline", [&](const json& a, const std::string& ap) -> Status {
    Fields g(a, ap);
    EgoAction act;
    std::string kind;
    g.num("t", &act.t, 0, 1e7);
    g.str("action", &kind);
    if (!g.ok()) return g.finish();
    if (kind == "speed") {
      act.kind = EgoAction::kSpeed;
      g.num("speed", &act.value, 0, 60);
    } else if (kind == "change_lane") {
      act.kind = EgoAction::kChangeLane;
      act.duration = 3;
      g.integer("lane", &act.lane, 0, 4);
      g.num("duration", &act.duration, 0.2, 30);
    } else if (kind == "brake") {
      act.kind = EgoAction::kBrake;
      act.value = 4;
      act.duration = 2;
      g.num("decel", &act.value, 0.1, 12);
      g.num("duration", &act.duration, 0, 60);
    } else {
      g.fail(g.at("action"), kind.empty() ? "missing (one of: speed, change_lane, brake)"
                                          : "unknown value '" + kind + "' (known: speed, change_lane, brake)");
    }
    EV_RETURN_IF_ERROR(g.finish());
    e->timeline.push_back(act);
    return Status::Ok();
  });
  return f.finish();
}

Status parse_vehicle(Fields& f, VehicleSpec* v) {
  f.enumv<VehicleType, kNumVehicleTypes>("class", &v->type);
  if (f.get("colour")) f.enumv<Colour, kNumColours>("colour", &v->colour);
  else f.enumv<Colour, kNumColours>("color", &v->colour);
  f.get("color");
  f.integer("lane", &v->lane, 0, 4);
  f.boolean("oncoming", &v->oncoming);
  f.num("s", &v->s, -kMaxS, kMaxS);
  f.num("speed", &v->speed, 0, 60);
  f.array("timeline", [&](const json& a, const std::string& ap) -> Status {
    Fields g(a, ap);
    VehicleAction act;
    std::string kind;
    g.num("t", &act.t, 0, 1e7);
    g.str("action", &kind);
    if (!g.ok()) return g.finish();
    if (kind == "brake") {
      act.kind = VehicleAction::kBrake;
      act.value = 4;
      act.duration = 2;
      g.num("decel", &act.value, 0.1, 12);
      g.num("duration", &act.duration, 0, 60);
    } else if (kind == "speed") {
      act.kind = VehicleAction::kSpeed;
      g.num("speed", &act.value, 0, 60);
    } else if (kind == "change_lane") {
      act.kind = VehicleAction::kChangeLane;
      act.duration = 2.5;
      g.integer("lane", &act.lane, 0, 4);
      g.num("duration", &act.duration, 0.2, 30);
    } else {
      g.fail(g.at("action"), kind.empty() ? "missing (one of: brake, speed, change_lane)"
                                          : "unknown value '" + kind + "' (known: brake, speed, change_lane)");
    }
    EV_RETURN_IF_ERROR(g.finish());
    v->timeline.push_back(act);
    return Status::Ok();
  });
  return f.finish();
}

Status parse_pedestrian(Fields& f, PedSpec* p) {
  f.enumv<PedClass, kNumPedClasses>("class", &p->cls);
  f.enumv<Side, 2>("side", &p->side);
  f.num("s", &p->s, -kMaxS, kMaxS);
  f.num("offset", &p->offset, 0, 6);
  f.enumv<Colour, kNumColours>("shirt", &p->shirt);
  f.array("timeline", [&](const json& a, const std::string& ap) -> Status {
    Fields g(a, ap);
    PedAction act;
    std::string kind;
    g.num("t", &act.t, 0, 1e7);
    g.str("action", &kind);
    if (!g.ok()) return g.finish();
    if (kind == "cross") {
      act.kind = PedAction::kCross;
      g.num("speed", &act.speed, 0.2, 4);
    } else if (kind == "walk") {
      act.kind = PedAction::kWalk;
      g.num("speed", &act.speed, -4, 4);
    } else if (kind == "stop") {
      act.kind = PedAction::kStop;
      act.speed = 0;
    } else {
      g.fail(g.at("action"), kind.empty() ? "missing (one of: cross, walk, stop)"
                                          : "unknown value '" + kind + "' (known: cross, walk, stop)");
    }
    EV_RETURN_IF_ERROR(g.finish());
    p->timeline.push_back(act);
    return Status::Ok();
  });
  return f.finish();
}

Status parse_light(Fields& f, TrafficLightSpec* l) {
  f.num("s", &l->s, -kMaxS, kMaxS);
  f.enumv<LightMount, 3>("mount", &l->mount);
  f.boolean("crosswalk", &l->crosswalk);
  f.array("timeline", [&](const json& a, const std::string& ap) -> Status {
    Fields g(a, ap);
    LightPhase ph;
    g.num("t", &ph.t, 0, 1e7);
    if (!g.get("state")) g.fail(g.at("state"), "missing (one of: red, yellow, green, off)");
    g.enumv<LightState, kNumLightStates>("state", &ph.state);
    EV_RETURN_IF_ERROR(g.finish());
    l->timeline.push_back(ph);
    return Status::Ok();
  });
  f.object("cycle", [&](const json& c, const std::string& cp) -> Status {
    Fields g(c, cp);
    g.num("green", &l->cycle_green, 0, 600);
    g.num("yellow", &l->cycle_yellow, 0, 600);
    g.num("red", &l->cycle_red, 0, 600);
    g.num("offset", &l->cycle_offset, -1e6, 1e6);
    EV_RETURN_IF_ERROR(g.finish());
    if (l->cycle_green + l->cycle_yellow + l->cycle_red < 0.1)
      return InvalidArgument(cp + ": the phases must sum to at least 0.1 s");
    return Status::Ok();
  });
  EV_RETURN_IF_ERROR(f.finish());
  std::stable_sort(l->timeline.begin(), l->timeline.end(),
                   [](const LightPhase& a, const LightPhase& b) { return a.t < b.t; });
  return Status::Ok();
}

Status parse_sign(Fields& f, SignSpec* s) {
  f.enumv<SignType, kNumSignTypes>("sign", &s->type);
  f.integer("value", &s->value, 0, 1000);
  f.enumv<Side, 2>("side", &s->side);
  f.num("s", &s->s, -kMaxS, kMaxS);
  EV_RETURN_IF_ERROR(f.finish());
  if (s->type == SignType::kSpeed && (s->value < 30 || s->value > 120 || s->value % 10 != 0))
    return InvalidArgument(f.at("value") + ": a speed limit must be 30..120 in steps of 10, got " + std::to_string(s->value));
  return Status::Ok();
}

Status parse_construction(Fields& f, ConstructionSpec* c) {
  f.num("s", &c->s, -kMaxS, kMaxS);
  f.num("length", &c->length, 5, 2000);
  f.enumv<Side, 2>("side", &c->side);
  f.integer("lanes_closed", &c->lanes_closed, 0, 4);
  f.integer("workers", &c->workers, 0, 20);
  f.boolean("barriers", &c->barriers);
  return f.finish();
}

}  // namespace

Status validate_scenario_spec(const ScenarioSpec& s) {
  const RoadSpec& r = s.road;
  if (s.width < kMinSide || s.width > kMaxSide || s.height < kMinSide || s.height > kMaxSide)
    return InvalidArgument("width/height must be in [" + std::to_string(kMinSide) + ", " + std::to_string(kMaxSide) +
                           "], got " + std::to_string(s.width) + "x" + std::to_string(s.height));
  if (s.frames < 1 || s.frames > kMaxFrames) return InvalidArgument("frames must be in [1, 10000000]");
  if (!(s.fps >= kMinFps && s.fps <= kMaxFps)) return InvalidArgument("fps must be in [1, 240]");
  if (s.ego.lane >= r.lanes)
    return InvalidArgument("ego.lane: lane " + std::to_string(s.ego.lane) + " does not exist (road.lanes = " +
                           std::to_string(r.lanes) + ")");
  for (size_t i = 0; i < s.ego.timeline.size(); ++i) {
    const auto& a = s.ego.timeline[i];
    if (a.kind == EgoAction::kChangeLane && a.lane >= r.lanes)
      return InvalidArgument("ego.timeline[" + std::to_string(i) + "].lane: lane " + std::to_string(a.lane) +
                             " does not exist (road.lanes = " + std::to_string(r.lanes) + ")");
  }
  std::set<std::string> ids;
  auto check_id = [&](const std::string& id) -> Status {
    if (id.empty()) return Internal("actor without id");
    if (!ids.insert(id).second) return InvalidArgument("actors: duplicate id '" + id + "'");
    return Status::Ok();
  };
  for (const auto& v : s.vehicles) {
    EV_RETURN_IF_ERROR(check_id(v.id));
    const int n = v.oncoming ? r.oncoming_lanes : r.lanes;
    if (v.lane >= n)
      return InvalidArgument("vehicle '" + v.id + "': lane " + std::to_string(v.lane) + " does not exist (" +
                             (v.oncoming ? "road.oncoming_lanes = " : "road.lanes = ") + std::to_string(n) + ")");
    for (const auto& a : v.timeline) {
      if (a.kind == VehicleAction::kChangeLane && (v.oncoming || a.lane >= r.lanes))
        return InvalidArgument("vehicle '" + v.id + "': change_lane to lane " + std::to_string(a.lane) +
                               (v.oncoming ? ": oncoming vehicles do not change lanes" : ": no such lane"));
    }
  }
  for (const auto& p : s.pedestrians) EV_RETURN_IF_ERROR(check_id(p.id));
  for (const auto& l : s.lights) EV_RETURN_IF_ERROR(check_id(l.id));
  for (const auto& g : s.signs) EV_RETURN_IF_ERROR(check_id(g.id));
  for (const auto& c : s.construction) {
    EV_RETURN_IF_ERROR(check_id(c.id));
    const int avail = c.side == Side::kRight ? r.lanes : r.oncoming_lanes;
    if (c.lanes_closed > avail)
      return InvalidArgument("construction '" + c.id + "': lanes_closed " + std::to_string(c.lanes_closed) +
                             " exceeds the lanes on its side (" + std::to_string(avail) + ")");
  }
  auto curves = r.curves;
  std::sort(curves.begin(), curves.end(), [](const CurveSpec& a, const CurveSpec& b) { return a.s < b.s; });
  for (size_t i = 1; i < curves.size(); ++i) {
    if (curves[i].s < curves[i - 1].s + curves[i - 1].length - 1e-9)
      return InvalidArgument("road.curves: curves overlap (one starts at " + Fields::fmt(curves[i].s) +
                             " m, inside the previous one)");
  }
  return Status::Ok();
}

Result<ScenarioSpec> parse_scenario_spec(const json& j) {
  ScenarioSpec s;
  Fields f(j, "");
  f.str("name", &s.name);
  f.u64("seed", &s.seed);
  f.num("fps", &s.fps, kMinFps, kMaxFps);
  f.integer("frames", &s.frames, 1, kMaxFrames);
  if (f.get("duration_s")) {
    if (j.contains("frames")) f.fail("duration_s", "give either frames or duration_s, not both");
    double d = 0;
    f.num("duration_s", &d, 0.01, 1e6);
    s.frames = std::max<int64_t>(1, static_cast<int64_t>(d * s.fps + 0.5));
    if (s.frames > kMaxFrames) f.fail("duration_s", "too long (more than 10000000 frames)");
  }
  f.integer("width", &s.width, kMinSide, kMaxSide);
  f.integer("height", &s.height, kMinSide, kMaxSide);
  f.object("camera", [&](const json& c, const std::string& p) { return parse_camera(c, p, &s.camera); });
  f.object("road", [&](const json& c, const std::string& p) { return parse_road(c, p, &s.road); });
  f.object("conditions", [&](const json& c, const std::string& p) { return parse_conditions(c, p, &s.conditions); });
  f.object("ego", [&](const json& c, const std::string& p) { return parse_ego(c, p, &s.ego); });
  int counter[5] = {0, 0, 0, 0, 0};
  f.array("actors", [&](const json& a, const std::string& ap) -> Status {
    Fields g(a, ap);
    std::string type, id;
    g.str("type", &type);
    g.str("id", &id);
    if (!g.ok()) return g.finish();
    auto auto_id = [&](const char* prefix, int k) {
      if (id.empty()) id = prefix + std::to_string(counter[k]);
      ++counter[k];
      return id;
    };
    if (type == "vehicle") {
      VehicleSpec v;
      v.id = auto_id("v", 0);
      EV_RETURN_IF_ERROR(parse_vehicle(g, &v));
      s.vehicles.push_back(std::move(v));
    } else if (type == "pedestrian") {
      PedSpec p;
      p.id = auto_id("p", 1);
      EV_RETURN_IF_ERROR(parse_pedestrian(g, &p));
      s.pedestrians.push_back(std::move(p));
    } else if (type == "traffic_light") {
      TrafficLightSpec l;
      l.id = auto_id("tl", 2);
      EV_RETURN_IF_ERROR(parse_light(g, &l));
      s.lights.push_back(std::move(l));
    } else if (type == "sign") {
      SignSpec sg;
      sg.id = auto_id("sg", 3);
      EV_RETURN_IF_ERROR(parse_sign(g, &sg));
      s.signs.push_back(std::move(sg));
    } else if (type == "construction") {
      ConstructionSpec c;
      c.id = auto_id("cz", 4);
      EV_RETURN_IF_ERROR(parse_construction(g, &c));
      s.construction.push_back(std::move(c));
    } else {
      return InvalidArgument(g.at("type") + (type.empty() ? ": missing" : ": unknown value '" + type + "'") +
                             " (known: vehicle, pedestrian, traffic_light, sign, construction)");
    }
    return Status::Ok();
  });
  EV_RETURN_IF_ERROR(f.finish());
  std::sort(s.road.curves.begin(), s.road.curves.end(), [](const CurveSpec& a, const CurveSpec& b) { return a.s < b.s; });
  EV_RETURN_IF_ERROR(validate_scenario_spec(s));
  return s;
}

Result<ScenarioSpec> load_scenario_spec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path + ": cannot open the scenario spec");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (j.is_discarded()) return InvalidArgument(path + ": not valid JSON");
  auto r = parse_scenario_spec(j);
  if (!r.ok()) return r.status().with_context(path);
  return r;
}

json scenario_spec_to_json(const ScenarioSpec& s) {
  json j;
  j["name"] = s.name;
  j["seed"] = s.seed;
  j["frames"] = s.frames;
  j["fps"] = s.fps;
  j["width"] = s.width;
  j["height"] = s.height;
  j["camera"] = {{"fov_deg", s.camera.fov_deg}, {"height_m", s.camera.height_m}, {"horizon", s.camera.horizon}};
  json curves = json::array();
  for (const auto& c : s.road.curves) curves.push_back({{"s", c.s}, {"length", c.length}, {"curvature", c.curvature}});
  j["road"] = {{"type", name(s.road.type)},
               {"lanes", s.road.lanes},
               {"oncoming_lanes", s.road.oncoming_lanes},
               {"lane_width", s.road.lane_width},
               {"curves", curves}};
  const auto& c = s.conditions;
  j["conditions"] = {{"lighting", name(c.lighting)}, {"weather", name(c.weather)}, {"noise", c.noise},
                     {"motion_blur", c.motion_blur}, {"fog_distance", c.fog_distance},
                     {"rain_intensity", c.rain_intensity}};
  json et = json::array();
  for (const auto& a : s.ego.timeline) {
    if (a.kind == EgoAction::kSpeed) et.push_back({{"t", a.t}, {"action", "speed"}, {"speed", a.value}});
    else if (a.kind == EgoAction::kChangeLane)
      et.push_back({{"t", a.t}, {"action", "change_lane"}, {"lane", a.lane}, {"duration", a.duration}});
    else et.push_back({{"t", a.t}, {"action", "brake"}, {"decel", a.value}, {"duration", a.duration}});
  }
  j["ego"] = {{"lane", s.ego.lane}, {"s", s.ego.s}, {"speed", s.ego.speed}, {"obey_lights", s.ego.obey_lights},
              {"timeline", et}};
  json actors = json::array();
  for (const auto& v : s.vehicles) {
    json tl = json::array();
    for (const auto& a : v.timeline) {
      if (a.kind == VehicleAction::kBrake)
        tl.push_back({{"t", a.t}, {"action", "brake"}, {"decel", a.value}, {"duration", a.duration}});
      else if (a.kind == VehicleAction::kSpeed) tl.push_back({{"t", a.t}, {"action", "speed"}, {"speed", a.value}});
      else tl.push_back({{"t", a.t}, {"action", "change_lane"}, {"lane", a.lane}, {"duration", a.duration}});
    }
    actors.push_back({{"type", "vehicle"}, {"id", v.id}, {"class", name(v.type)}, {"colour", name(v.colour)},
                      {"lane", v.lane}, {"oncoming", v.oncoming}, {"s", v.s}, {"speed", v.speed}, {"timeline", tl}});
  }
  for (const auto& p : s.pedestrians) {
    json tl = json::array();
    for (const auto& a : p.timeline) {
      const char* k = a.kind == PedAction::kCross ? "cross" : (a.kind == PedAction::kWalk ? "walk" : "stop");
      json e = {{"t", a.t}, {"action", k}};
      if (a.kind != PedAction::kStop) e["speed"] = a.speed;
      tl.push_back(e);
    }
    actors.push_back({{"type", "pedestrian"}, {"id", p.id}, {"class", name(p.cls)}, {"side", name(p.side)},
                      {"s", p.s}, {"offset", p.offset}, {"shirt", name(p.shirt)}, {"timeline", tl}});
  }
  for (const auto& l : s.lights) {
    json a = {{"type", "traffic_light"}, {"id", l.id}, {"s", l.s}, {"mount", name(l.mount)}, {"crosswalk", l.crosswalk}};
    if (l.cycle_green + l.cycle_yellow + l.cycle_red > 0) {
      a["cycle"] = {{"green", l.cycle_green}, {"yellow", l.cycle_yellow}, {"red", l.cycle_red}, {"offset", l.cycle_offset}};
    }
    json tl = json::array();
    for (const auto& p : l.timeline) tl.push_back({{"t", p.t}, {"state", name(p.state)}});
    a["timeline"] = tl;
    actors.push_back(a);
  }
  for (const auto& g : s.signs) {
    json a = {{"type", "sign"}, {"id", g.id}, {"sign", name(g.type)}, {"side", name(g.side)}, {"s", g.s}};
    if (g.type == SignType::kSpeed) a["value"] = g.value;
    actors.push_back(a);
  }
  for (const auto& z : s.construction) {
    actors.push_back({{"type", "construction"}, {"id", z.id}, {"s", z.s}, {"length", z.length}, {"side", name(z.side)},
                      {"lanes_closed", z.lanes_closed}, {"workers", z.workers}, {"barriers", z.barriers}});
  }
  j["actors"] = actors;
  return j;
}

// ---- Random scenarios ----

namespace {

// "v" + number (built by append: GCC 12 warns falsely (-Wrestrict) on const char* + std::string here).
std::string make_id(const char* prefix, int n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

double round_to(double v, double q) { return static_cast<double>(static_cast<int64_t>(v / q + (v >= 0 ? 0.5 : -0.5))) * q; }

}  // namespace

ScenarioSpec random_scenario(uint64_t seed, const RandomScenarioOptions& o) {
  Rng r(mix64(seed, 0x5CE7A410ull));
  ScenarioSpec s;
  s.name = "random-";
  s.name += std::to_string(seed);
  s.seed = seed;
  s.frames = o.frames;
  s.fps = o.fps;
  s.width = o.width;
  s.height = o.height;
  const double duration = static_cast<double>(o.frames) / o.fps;

  s.camera.fov_deg = round_to(r.uniform(52, 70), 0.5);
  s.camera.height_m = round_to(r.uniform(1.2, 1.7), 0.05);
  s.camera.horizon = round_to(r.uniform(0.40, 0.50), 0.01);

  const double u = r.uniform();
  RoadSpec& road = s.road;
  road.type = u < 0.5 ? RoadType::kUrban : (u < 0.78 ? RoadType::kHighway : RoadType::kRural);
  if (road.type == RoadType::kUrban) {
    road.lanes = 1 + r.below(3);
    road.oncoming_lanes = r.chance(0.8) ? 1 : 0;
  } else if (road.type == RoadType::kHighway) {
    road.lanes = 2 + r.below(3);
    road.oncoming_lanes = 0;
  } else {
    road.lanes = 1;
    road.oncoming_lanes = 1;
  }
  road.lane_width = round_to(road.type == RoadType::kHighway ? r.uniform(3.5, 3.8) : r.uniform(3.0, 3.6), 0.05);

  s.conditions.lighting = static_cast<Lighting>(r.below(kNumLighting));
  s.conditions.weather = static_cast<Weather>(r.below(kNumWeather));
  s.conditions.motion_blur = round_to(r.uniform(0.0, 0.6), 0.05);
  s.conditions.fog_distance = round_to(r.uniform(25, 55), 1);
  s.conditions.rain_intensity = round_to(r.uniform(0.3, 1.0), 0.05);

  EgoSpec& ego = s.ego;
  ego.lane = r.below(road.lanes);
  ego.s = 0;
  ego.speed = round_to(road.type == RoadType::kUrban ? r.uniform(6, 13)
                                                     : (road.type == RoadType::kHighway ? r.uniform(20, 30) : r.uniform(12, 20)),
                       0.5);
  const double travel = ego.speed * duration;  // upper bound of the distance driven
  if (road.lanes > 1 && r.chance(0.15)) {
    EgoAction a;
    a.kind = EgoAction::kChangeLane;
    a.t = round_to(r.uniform(0.1, 0.7) * duration, 0.1);
    a.lane = ego.lane == 0 ? 1 : ego.lane - 1;
    a.duration = round_to(r.uniform(2, 4), 0.1);
    ego.timeline.push_back(a);
  }

  // Curves: up to three bends along the route.
  const double kmax = road.type == RoadType::kHighway ? 0.004 : 0.012;
  double cs = r.uniform(-20, 40);
  const int ncurves = r.below(4);
  for (int i = 0; i < ncurves; ++i) {
    CurveSpec c;
    c.s = round_to(cs, 1);
    c.length = round_to(r.uniform(30, 120), 1);
    c.curvature = round_to(r.uniform(0.3, 1.0) * kmax * (r.chance(0.5) ? 1 : -1), 0.0001);
    road.curves.push_back(c);
    cs = c.s + c.length + r.uniform(20, 80);
  }

  auto colour = [&] { return static_cast<Colour>(r.below(kNumColours)); };
  int vid = 0, pid = 0;

  // Construction first: it decides which lane must stay clear of traffic.
  int closed_lane = -1;
  if (r.chance(0.28)) {
    ConstructionSpec z;
    z.id = "cz0";
    z.s = round_to(r.uniform(15, 25) + r.uniform(0.1, 0.7) * travel, 1);
    z.length = round_to(r.uniform(25, 70), 1);
    z.side = Side::kRight;
    z.lanes_closed = 0;
    if (road.lanes >= 2 && r.chance(0.6)) {
      z.lanes_closed = 1;
      closed_lane = road.lanes - 1;
      if (ego.lane == closed_lane) ego.lane = closed_lane - 1;
      for (auto& a : ego.timeline) if (a.lane == closed_lane) a.lane = closed_lane - 1;
    }
    z.workers = r.below(4);
    z.barriers = r.chance(0.7);
    s.construction.push_back(z);
  }
  auto lane_ok = [&](int lane) { return lane != closed_lane; };

  // Lead vehicle in the ego lane, often braking at some point.
  const bool urban = road.type == RoadType::kUrban;
  auto vehicle_type = [&](bool allow_bike) {
    const double t = r.uniform();
    if (t < 0.36) return VehicleType::kCar;
    if (t < 0.52) return VehicleType::kTruck;
    if (t < 0.68) return VehicleType::kBus;
    if (t < 0.84 || !allow_bike) return VehicleType::kMotorcycle;
    return VehicleType::kBicycle;
  };
  auto cruise = [&](VehicleType t) {
    if (t == VehicleType::kBicycle) return round_to(r.uniform(4, 7), 0.5);
    return round_to(ego.speed * r.uniform(0.85, 1.1), 0.5);
  };
  if (r.chance(0.75)) {
    VehicleSpec v;
    v.id = make_id("v", vid++);
    v.type = vehicle_type(urban || road.type == RoadType::kRural);
    v.colour = colour();
    v.lane = ego.lane;
    v.s = round_to(r.uniform(10, 35), 0.5);
    v.speed = v.type == VehicleType::kBicycle ? cruise(v.type) : round_to(ego.speed * r.uniform(0.9, 1.05), 0.5);
    if (r.chance(0.6)) {
      VehicleAction a;
      a.kind = VehicleAction::kBrake;
      a.t = round_to(r.uniform(0.05, 0.7) * duration, 0.1);
      a.value = round_to(r.uniform(2.5, 7), 0.5);
      a.duration = round_to(r.uniform(0.8, 3), 0.1);
      v.timeline.push_back(a);
      if (r.chance(0.5)) {
        VehicleAction b;
        b.kind = VehicleAction::kSpeed;
        b.t = round_to(a.t + a.duration + r.uniform(0.5, 2), 0.1);
        b.value = round_to(ego.speed * r.uniform(0.8, 1.1), 0.5);
        v.timeline.push_back(b);
      }
    }
    s.vehicles.push_back(v);
  }
  // A cut-in from a neighbouring lane.
  if (road.lanes >= 2 && r.chance(0.35)) {
    int from = ego.lane == 0 ? 1 : (ego.lane == road.lanes - 1 ? ego.lane - 1 : ego.lane + (r.chance(0.5) ? 1 : -1));
    if (lane_ok(from)) {
      VehicleSpec v;
      v.id = make_id("v", vid++);
      v.type = vehicle_type(false);
      v.colour = colour();
      v.lane = from;
      v.s = round_to(r.uniform(-6, 12), 0.5);
      v.speed = round_to(ego.speed * r.uniform(1.05, 1.3), 0.5);
      VehicleAction a;
      a.kind = VehicleAction::kChangeLane;
      a.t = round_to(r.uniform(0.1, 0.6) * duration, 0.1);
      a.lane = ego.lane;
      a.duration = round_to(r.uniform(1.5, 3), 0.1);
      v.timeline.push_back(a);
      s.vehicles.push_back(v);
    }
  }
  // Background traffic in the other lanes and oncoming lanes.
  const int nbg = road.type == RoadType::kHighway ? 2 + r.below(5) : r.below(4);
  for (int i = 0; i < nbg; ++i) {
    VehicleSpec v;
    v.id = make_id("v", vid++);
    v.colour = colour();
    const bool onc = road.oncoming_lanes > 0 && r.chance(0.45);
    v.oncoming = onc;
    v.type = vehicle_type(!onc && urban);
    if (onc) {
      v.lane = r.below(road.oncoming_lanes);
      v.s = round_to(r.uniform(40, 80) + r.uniform(0, 1) * travel * 1.6, 1);
      v.speed = round_to(r.uniform(0.7, 1.0) * (urban ? 11 : 18), 0.5);
    } else {
      v.lane = r.below(road.lanes);
      if (!lane_ok(v.lane) || v.lane == ego.lane) {
        if (road.lanes == 1 || (road.lanes == 2 && closed_lane >= 0)) continue;
        v.lane = (ego.lane + 1 + r.below(road.lanes - 1)) % road.lanes;
        if (!lane_ok(v.lane)) continue;
      }
      if (v.type == VehicleType::kBicycle) v.lane = road.lanes - 1;
      if (v.lane == ego.lane && v.type == VehicleType::kBicycle) v.s = round_to(r.uniform(20, 45), 0.5);
      else v.s = round_to(r.uniform(-10, 70), 0.5);
      v.speed = cruise(v.type);
      if (r.chance(0.25)) {
        VehicleAction a;
        a.kind = VehicleAction::kBrake;
        a.t = round_to(r.uniform(0.05, 0.8) * duration, 0.1);
        a.value = round_to(r.uniform(2, 6), 0.5);
        a.duration = round_to(r.uniform(0.8, 2.5), 0.1);
        v.timeline.push_back(a);
      }
    }
    // Keep a few metres between same-lane vehicles.
    bool clash = false;
    for (const auto& w : s.vehicles)
      if (w.oncoming == v.oncoming && w.lane == v.lane && std::abs(w.s - v.s) < 14) clash = true;
    if (std::abs(v.s) < 8 && !v.oncoming && v.lane == ego.lane) clash = true;
    if (!clash) s.vehicles.push_back(v);
  }

  // Traffic light (urban mostly, rural sometimes), with a random cycle or a scripted change.
  const double light_p = urban ? 0.9 : (road.type == RoadType::kRural ? 0.5 : 0.0);
  double light_s = -1;
  if (r.chance(light_p)) {
    TrafficLightSpec l;
    l.id = "tl0";
    light_s = round_to(r.uniform(16, 34) + r.uniform(0, 0.5) * travel, 1);
    l.s = light_s;
    l.mount = r.chance(0.6) ? LightMount::kOverhead : (r.chance(0.8) ? LightMount::kRight : LightMount::kLeft);
    l.crosswalk = urban ? r.chance(0.85) : r.chance(0.3);
    const double v = r.uniform();
    LightState first = v < 0.27 ? LightState::kGreen : (v < 0.54 ? LightState::kRed : (v < 0.75 ? LightState::kYellow : LightState::kOff));
    l.timeline.push_back({0.0, first});
    if (first != LightState::kOff && r.chance(0.7)) {
      double t = round_to(r.uniform(0.15, 0.6) * duration, 0.1);
      if (first == LightState::kGreen) {
        l.timeline.push_back({t, LightState::kYellow});
        l.timeline.push_back({round_to(t + r.uniform(1.5, 3.5), 0.1), LightState::kRed});
      } else if (first == LightState::kYellow) {
        l.timeline.push_back({t * 0.5, LightState::kRed});
      } else {
        l.timeline.push_back({t, LightState::kGreen});
      }
    } else if (first == LightState::kOff && r.chance(0.3)) {
      l.timeline.push_back({round_to(r.uniform(0.3, 0.7) * duration, 0.1), LightState::kYellow});
    }
    s.lights.push_back(l);
  }

  // Signs: speed limits (all values), stop, yield, no entry.
  // Spread along the stretch the car covers, so that each one passes through view.
  const int nsigns = r.chance(0.9) ? 1 + r.below(3) : 0;
  for (int i = 0; i < nsigns; ++i) {
    SignSpec g;
    g.id = make_id("sg", i);
    const double t = r.uniform();
    g.type = t < 0.5 ? SignType::kSpeed : (t < 0.67 ? SignType::kStop : (t < 0.84 ? SignType::kYield : SignType::kNoEntry));
    g.value = g.type == SignType::kSpeed ? 30 + 10 * r.below(10) : 0;
    g.side = (road.oncoming_lanes == 0 && r.chance(0.2)) ? Side::kLeft : Side::kRight;
    g.s = round_to(r.uniform(16, 24) + (travel * 0.9) * (i + r.uniform(0.0, 1.0)) / nsigns, 1);
    if (light_s > 0 && std::abs(g.s - light_s) < 8) g.s += 15;
    s.signs.push_back(g);
  }

  // Pedestrians: urban sidewalks; crossings timed so they happen in front of the car.
  const int nped = urban ? 1 + r.below(4) : (road.type == RoadType::kRural ? r.below(2) : 0);
  for (int i = 0; i < nped; ++i) {
    PedSpec p;
    p.id = make_id("p", pid++);
    p.cls = r.chance(0.35) ? PedClass::kChild : PedClass::kAdult;
    p.side = r.chance(0.5) ? Side::kLeft : Side::kRight;
    p.shirt = colour();
    p.offset = round_to(r.uniform(0.3, 2.2), 0.1);
    const bool cross = (i == 0 && r.chance(0.8)) || r.chance(0.25);
    if (cross) {
      const double tc = round_to(r.uniform(0.0, 0.6) * duration, 0.1);
      p.s = round_to(ego.speed * tc * 0.8 + r.uniform(12, 32), 0.5);
      if (light_s > 0 && r.chance(0.5)) p.s = light_s - 0.5 * (kZebraFrom + kZebraTo);
      p.offset = round_to(r.uniform(0.2, 1.0), 0.1);
      PedAction a;
      a.kind = PedAction::kCross;
      a.t = tc;
      a.speed = round_to(p.cls == PedClass::kChild ? r.uniform(1.0, 1.8) : r.uniform(1.1, 1.8), 0.1);
      p.timeline.push_back(a);
    } else {
      p.s = round_to(r.uniform(8, 50) + r.uniform(0, 0.8) * travel, 0.5);
      if (r.chance(0.5)) {
        PedAction a;
        a.kind = PedAction::kWalk;
        a.t = 0;
        a.speed = round_to(r.uniform(-1.5, 1.5), 0.1);
        p.timeline.push_back(a);
      }
    }
    s.pedestrians.push_back(p);
  }
  return s;
}

}  // namespace ev::sim
