// Scenario specification of the road-scene simulator: what is in the scene and what happens when.
//
// A spec comes from a JSON file (format documented field by field in src/sim/README.md; examples in
// src/sim/scenarios/) or from random_scenario(seed). It is plain data: the Simulator turns it into frames and
// ground truth, deterministically for a given spec (the spec's seed drives every random detail: skyline, clothes,
// noise grain, rain streaks).
//
// Coordinates: s = metres along the road (ego starts at ego.s, usually 0); lateral d = metres from the road's
// centre line (the line between oncoming and same-direction lanes), positive to the right. Same-direction lanes are
// numbered 0 (leftmost) .. lanes-1 (rightmost); lane i's centre is at d = (i + 0.5) * lane_width. Oncoming lanes are
// numbered 0 (next to the centre line) .. oncoming_lanes-1, centres at d = -(j + 0.5) * lane_width.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace ev::sim {

enum class Lighting { kDay, kDusk, kNight };
enum class Weather { kClear, kRain, kFog, kGlare };
enum class VehicleType { kCar, kTruck, kBus, kMotorcycle, kBicycle };
enum class Colour { kWhite, kBlack, kRed, kBlue, kSilver, kYellow, kGreen };
enum class LightState { kRed, kYellow, kGreen, kOff };
enum class SignType { kStop, kYield, kNoEntry, kSpeed };
enum class PedClass { kAdult, kChild };
enum class RoadType { kUrban, kHighway, kRural };
enum class Side { kLeft, kRight };
enum class LightMount { kOverhead, kRight, kLeft };

constexpr int kNumLighting = 3, kNumWeather = 4, kNumVehicleTypes = 5, kNumColours = 7, kNumLightStates = 4,
              kNumSignTypes = 4, kNumPedClasses = 2;

// Lower-case names as used in specs, descriptions and QA answers ("no entry", "motorcycle", "silver").
const char* name(Lighting v);
const char* name(Weather v);
const char* name(VehicleType v);
const char* name(Colour v);
const char* name(LightState v);
const char* name(SignType v);
const char* name(PedClass v);
const char* name(RoadType v);
const char* name(Side v);
const char* name(LightMount v);

struct CameraSpec {
  double fov_deg = 60.0;   // horizontal field of view
  double height_m = 1.4;   // camera height above the road
  double horizon = 0.45;   // horizon row as a fraction of the image height (0.5: camera level)
};

struct CurveSpec {
  double s = 0;          // start (m along the road)
  double length = 50;    // m
  double curvature = 0;  // 1/m, positive: the road bends right (|k| <= 0.02, i.e. radius >= 50 m)
};

struct RoadSpec {
  RoadType type = RoadType::kUrban;  // urban: sidewalks, buildings, street lamps; highway: guard rails; rural: trees
  int lanes = 2;                     // same-direction lanes, 1..5
  int oncoming_lanes = 1;            // 0..3
  double lane_width = 3.5;           // m
  std::vector<CurveSpec> curves;     // non-overlapping, any order (sorted at parse time)
};

struct ConditionsSpec {
  Lighting lighting = Lighting::kDay;
  Weather weather = Weather::kClear;
  double noise = -1;           // sensor noise standard deviation in 8-bit levels; < 0: by lighting (2 day .. 6 night)
  double motion_blur = -1;     // 0..1 strength of the radial blur at 20 m/s; < 0: 0.3
  double fog_distance = 35;    // m: fog's e-folding distance (weather fog only)
  double rain_intensity = 0.6; // 0..1 (weather rain only)
};

struct EgoAction {
  enum Kind { kSpeed, kChangeLane, kBrake } kind = kSpeed;
  double t = 0;          // s after the start
  double value = 0;      // kSpeed: target speed m/s; kBrake: deceleration m/s^2
  int lane = 0;          // kChangeLane: target lane
  double duration = 0;   // kChangeLane: s; kBrake: s
};

struct EgoSpec {
  int lane = 0;
  double s = 0;
  double speed = 10;         // initial and cruise speed, m/s
  bool obey_lights = true;   // stop for red (and catchable yellow) lights and for pedestrians in the lane
  std::vector<EgoAction> timeline;
};

struct VehicleAction {
  enum Kind { kBrake, kSpeed, kChangeLane } kind = kBrake;
  double t = 0;
  double value = 0;      // kBrake: deceleration m/s^2; kSpeed: target speed m/s
  double duration = 0;   // kBrake: s (0: until stopped); kChangeLane: s
  int lane = 0;          // kChangeLane: target lane (same direction lanes only)
};

struct VehicleSpec {
  std::string id;
  VehicleType type = VehicleType::kCar;
  Colour colour = Colour::kWhite;
  int lane = 0;
  bool oncoming = false;  // drives towards the camera in oncoming lane `lane`
  double s = 20;          // centre position
  double speed = 10;      // initial and cruise speed (m/s)
  std::vector<VehicleAction> timeline;
};

struct PedAction {
  enum Kind { kCross, kWalk, kStop } kind = kCross;
  double t = 0;
  double speed = 1.4;  // m/s; kCross: across the road to the other sidewalk; kWalk: along the sidewalk (+ = away)
};

struct PedSpec {
  std::string id;
  PedClass cls = PedClass::kAdult;
  Side side = Side::kRight;  // which sidewalk it starts on
  double s = 30;
  double offset = 1.0;       // m from the road edge onto the sidewalk (0: on the kerb)
  Colour shirt = Colour::kBlue;
  std::vector<PedAction> timeline;
};

struct LightPhase {
  double t = 0;
  LightState state = LightState::kGreen;
};

struct TrafficLightSpec {
  std::string id;
  double s = 50;  // position of the signal; the stop line is 12 m before it, a zebra crossing 11..8 m before it
  LightMount mount = LightMount::kOverhead;
  bool crosswalk = true;
  // Either a timeline of states (the state at t is the last phase with phase.t <= t; before the first, the first)
  // or a cycle (used when cycle_green + cycle_yellow + cycle_red > 0).
  std::vector<LightPhase> timeline;
  double cycle_green = 0, cycle_yellow = 0, cycle_red = 0, cycle_offset = 0;
  LightState state_at(double t) const;
};

struct SignSpec {
  std::string id;
  SignType type = SignType::kSpeed;
  int value = 50;  // speed limit: 30..120 in steps of 10 (kSpeed only)
  Side side = Side::kRight;
  double s = 40;
};

struct ConstructionSpec {
  std::string id;
  double s = 60;        // start of the zone (the first cone)
  double length = 40;   // m
  Side side = Side::kRight;
  int lanes_closed = 0; // 0: shoulder works only; 1..: that many outermost lanes on `side` are coned off
  int workers = 2;
  bool barriers = true;
};

struct ScenarioSpec {
  std::string name = "scenario";
  uint64_t seed = 0;
  int64_t frames = 150;
  double fps = 30;
  int width = 224, height = 224;
  CameraSpec camera;
  RoadSpec road;
  ConditionsSpec conditions;
  EgoSpec ego;
  std::vector<VehicleSpec> vehicles;
  std::vector<PedSpec> pedestrians;
  std::vector<TrafficLightSpec> lights;
  std::vector<SignSpec> signs;
  std::vector<ConstructionSpec> construction;
};

// Limits enforced by parsing (also the CLI's limits).
constexpr int kMinSide = 16, kMaxSide = 4096;
constexpr int64_t kMaxFrames = 10'000'000;
constexpr double kMinFps = 1, kMaxFps = 240;

// Parses a spec. Every field is optional (defaults above); unknown fields are errors, so typos are caught.
// Errors are kInvalidArgument and name the field: "actors[2].timeline[0].action: unknown value 'brk' (known: ...)".
Result<ScenarioSpec> parse_scenario_spec(const nlohmann::json& j);
// Reads and parses a file; errors are prefixed with the path.
Result<ScenarioSpec> load_scenario_spec(const std::string& path);
// The JSON form (parse_scenario_spec(scenario_spec_to_json(s)) reproduces s).
nlohmann::json scenario_spec_to_json(const ScenarioSpec& s);
// Checks the cross-field constraints (lanes exist, ids unique, ...); parse_scenario_spec calls it.
Status validate_scenario_spec(const ScenarioSpec& s);

struct RandomScenarioOptions {
  int64_t frames = 150;
  double fps = 30;
  int width = 224, height = 224;
};
// A random scenario for a seed, designed so that a few thousand seeds cover every class in reasonable balance:
// every lighting x weather combination, every light state, every sign and speed value, every vehicle type and
// colour, pedestrians crossing at all image positions, construction zones, cut-ins and braking leads.
ScenarioSpec random_scenario(uint64_t seed, const RandomScenarioOptions& o = {});

}  // namespace ev::sim
