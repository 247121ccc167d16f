// Ground truth of one simulated frame: the structured scene state, the canonical one-line description (the
// language target of training, parsed back by `edgevlm eval`), question/answer pairs, events and hazard flags.
//
// Canonical description (fixed field order, lower case, fields separated by "; "):
//   light: none|red|yellow|green|off; pedestrian: none|sidewalk|crossing left|crossing center|crossing right;
//   lead: none|<colour> <type>[ braking]; sign: none|stop|yield|no entry|speed <N>; construction: no|yes;
//   lighting: day|dusk|night; weather: clear|rain|fog|glare;
//   hazard: none|<comma-separated subset, in this order, of: pedestrian, braking, cut-in, red light, construction>
// What each field counts (distances, visibility, sizes) is defined in src/sim/README.md ("What the truth
// reports") and implemented in world.cpp (compute_truth_fields); the thresholds are the constants below.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "sim/spec.h"

namespace ev::sim {

// ---- Thresholds of the canonical fields (see README). Heights are fractions of the image height, so the truth
// does not depend on the resolution (at 224 px: light 10 px, sign 12 px, lead 8 px, pedestrian 10 px). ----
constexpr double kLightRange = 60, kLightMinHeight = 0.045;  // housing height
constexpr double kSignRange = 50, kSignMinHeight = 0.054;    // sign face height
constexpr double kLeadRange = 60, kLeadMinHeight = 0.036;    // vehicle box height
constexpr double kPedRange = 40, kPedMinHeight = 0.045;      // person height
constexpr double kConstructionRange = 60, kConstructionMinHeight = 0.03;  // per element; >= 2 cones or 1 other
constexpr double kMinInFrame = 0.6;     // fraction of an object's box that must lie inside the frame, or:
constexpr double kMinInFrameLarge = 0.25, kLargePart = 0.08;  // 25% if the part inside is >= 8% of H wide and tall
constexpr double kMaxOccluded = 0.5;    // fraction of the box that nearer vehicles may cover
constexpr double kMinContrast = 0.35;   // illumination x (1 - fog) below which an object counts as not seen
// Hazard ranges (metres ahead).
constexpr double kHazardPedRange = 30, kHazardBrakeRange = 40, kHazardCutInRange = 40, kHazardRedRange = 50,
                 kHazardConstructionRange = 30;

enum Hazard : uint32_t {
  kHazardPedestrian = 1u << 0,
  kHazardBraking = 1u << 1,
  kHazardCutIn = 1u << 2,
  kHazardRedLight = 1u << 3,
  kHazardConstruction = 1u << 4,
};
constexpr int kNumHazards = 5;
// Names in canonical order, index i <-> bit (1 << i).
inline constexpr std::array<const char*, kNumHazards> kHazardNames = {"pedestrian", "braking", "cut-in", "red light",
                                                                      "construction"};
// Description field names in canonical order.
inline constexpr std::array<const char*, 8> kDescriptionFields = {"light",        "pedestrian", "lead",    "sign",
                                                                  "construction", "lighting",   "weather", "hazard"};

enum class PedField { kNone, kSidewalk, kCrossingLeft, kCrossingCenter, kCrossingRight };
const char* name(PedField v);  // "none", "sidewalk", "crossing left", ...

// Screen box in pixels [x0, x1) x [y0, y1), unclipped (may extend beyond the frame).
struct Box {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  double w() const { return x1 - x0; }
  double h() const { return y1 - y0; }
  bool empty() const { return !(x1 > x0 && y1 > y0); }
};

// One actor or scene element, as the camera sees it on this frame.
struct ObjectTruth {
  std::string id;
  std::string kind;     // vehicle, pedestrian, traffic_light, sign, construction
  std::string cls;      // car/truck/..., adult/child/worker, stop/yield/no entry/speed, cone/barrier
  std::string colour;   // vehicles: body colour; pedestrians: shirt colour; else empty
  double s = 0, d = 0;  // road coordinates (centre)
  double distance = 0;  // forward distance from the camera to the nearest face (m); negative: behind
  double lateral = 0;   // metres right of the camera axis at that distance
  double speed = 0;     // m/s along the road (negative: oncoming)
  Box box;              // screen box
  double in_frame = 0;  // fraction of the box inside the frame
  double occluded = 0;  // fraction of the box covered by nearer vehicles
  double contrast = 1;  // illumination x (1 - fog) at the object
  bool visible = false; // in front, in frame, big enough, unoccluded and lit enough (see README)
  // Kind-specific state.
  std::string state;    // traffic light: red/yellow/green/off
  int value = 0;        // speed sign value
  int lane = -1;        // vehicles: current lane (nearest lane centre; oncoming lanes are negative: -1 - j)
  bool braking = false; // vehicles: brake lights lit
  bool changing_lane = false;
  int target_lane = -1;
  bool on_road = false; // pedestrians: feet on the road surface
};

struct LeadTruth {
  std::string id;
  VehicleType type = VehicleType::kCar;
  Colour colour = Colour::kWhite;
  bool braking = false;
  double distance = 0;
};

// The canonical fields plus everything they are computed from.
struct SceneState {
  int64_t frame = 0;
  double t = 0;
  // Ego.
  double ego_s = 0, ego_d = 0, ego_speed = 0, ego_accel = 0;
  int ego_lane = 0;
  Lighting lighting = Lighting::kDay;
  Weather weather = Weather::kClear;
  // Canonical fields.
  std::optional<LightState> light;  // none when absent
  std::string light_id;
  double light_distance = 0;
  PedField pedestrian = PedField::kNone;
  std::string pedestrian_id;
  std::optional<LeadTruth> lead;
  std::optional<SignType> sign;
  int sign_value = 0;
  std::string sign_id;
  double sign_distance = 0;
  bool construction = false;
  uint32_t hazards = 0;  // Hazard bits
  std::vector<ObjectTruth> objects;
};

struct QAPair {
  std::string question;
  std::string answer;
};

struct Event {
  std::string type;   // see README: light_red, light_yellow, light_green, light_off, pedestrian_enters_road,
                      // pedestrian_leaves_road, cut_in, brake_start, brake_end, lead_brakes, hazard_start, hazard_end,
                      // ego_lane_change
  std::string actor;  // actor id ("ego" for ego events; the hazard name for hazard_start/end)
  int64_t frame = 0;
  double t = 0;
  nlohmann::json details = nlohmann::json::object();
};

struct FrameTruth {
  int64_t frame = 0;
  double t = 0;
  SceneState state;
  std::string description;
  std::vector<QAPair> qa;
  std::vector<Event> events;
  uint32_t hazards = 0;
  // {"frame", "t", "description", "hazards": [...], "qa": [{"q","a"}], "events": [...], "state": {...}}
  nlohmann::json to_json() const;
};

// The canonical one-line description of a state.
std::string describe(const SceneState& s);
// The value of each field as describe() writes it (same order as kDescriptionFields).
std::map<std::string, std::string> description_fields(const SceneState& s);
// Parses a description (a model's output): splits at ';', each part "field: value" (case-insensitive field names,
// surrounding white space ignored, values lower-cased and inner white space collapsed). Missing fields are absent
// from the map; unknown values are kept as they are; parts without ':' and unknown field names are ignored.
// Error (kInvalidArgument) only when not a single known field is present.
Result<std::map<std::string, std::string>> parse_description(const std::string& text);
// "pedestrian, braking" -> bits; unknown names are ignored; "none" -> 0.
uint32_t parse_hazard_list(const std::string& value);
std::string hazard_list(uint32_t bits);  // "none" or "pedestrian, braking"

// The question/answer pairs of a state (fixed questions, small regular vocabulary; see README).
std::vector<QAPair> make_qa(const SceneState& s);

nlohmann::json to_json(const SceneState& s);
nlohmann::json to_json(const Event& e);

}  // namespace ev::sim
