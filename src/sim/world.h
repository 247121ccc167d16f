// The simulated world: road geometry, camera, illumination, the actors' dynamics and the ground-truth fields.
//
// The renderer (render.h) draws exactly the geometry this file computes (same projection, same object sizes, same
// illumination), so a truth value such as "the sign is 12 px tall and lit enough" is a statement about the picture.
//
// Dynamics (fixed step 1/fps, semi-implicit Euler): every same-direction vehicle and the ego follow an IDM-style
// car-following law towards their cruise speed, treating as obstacles the vehicle ahead in their corridor,
// pedestrians on the road in their corridor, a red light's stop line (or a yellow one they can still stop for) and a
// construction zone closing their lane. Scripted actions (brake, speed, change_lane) override or retarget it.
// Oncoming vehicles keep their speed (scripted actions apply) and stop for pedestrians in their lane.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/spec.h"
#include "sim/truth.h"

namespace ev::sim {

// Pinhole camera looking along the road; +X right, +Y up, z forward (metres).
struct Camera {
  int W = 224, H = 224;
  double fx = 194, fy = 194, cx = 112, hy = 100;  // focal lengths (px), principal column, horizon row
  double height = 1.4;
  static Camera make(const ScenarioSpec& s);
  double sx(double X, double z) const { return cx + fx * X / z; }
  double sy(double Y, double z) const { return hy + fy * (height - Y) / z; }
};

// Piecewise-constant curvature; small-angle geometry (|heading change| stays well below 0.5 rad in view).
class RoadGeometry {
 public:
  RoadGeometry() = default;
  explicit RoadGeometry(std::vector<CurveSpec> curves) : curves_(std::move(curves)) {}
  double heading(double s) const;  // rad, relative to s = -inf
  double offset(double s) const;   // integral of heading: the centre line's lateral drift (m)
  // Lateral position (m, right) of the centre line at forward distance z, in the frame of a camera at s0 that
  // looks along the road tangent.
  double center_x(double s0, double z) const { return offset(s0 + z) - offset(s0) - heading(s0) * z; }

 private:
  std::vector<CurveSpec> curves_;
};

// Cross-section of the road.
struct RoadLayout {
  RoadType type = RoadType::kUrban;
  int lanes = 2, oncoming = 1;
  double lane_width = 3.5;
  double shoulder = 0.4;   // paved strip outside the outer lines (not "road" for pedestrians)
  double sidewalk = 0;     // urban: sidewalk width beyond the kerb
  double right_edge() const { return lanes * lane_width; }
  double left_edge() const { return -oncoming * lane_width; }
  double lane_center(int lane) const { return (lane + 0.5) * lane_width; }
  double oncoming_center(int lane) const { return -(lane + 0.5) * lane_width; }
  // Same-direction lane whose centre is nearest d (clamped to the existing lanes); oncoming: -1 - j.
  int lane_of(double d) const;
  static RoadLayout make(const RoadSpec& r);
};

// Illumination and atmosphere of a scenario (constant over the scenario).
struct Atmosphere {
  Lighting lighting = Lighting::kDay;
  Weather weather = Weather::kClear;
  double ambient = 1.0;      // multiplier of surface colours
  double headlights = 0.0;   // strength of the ego's headlights (0 by day)
  double fog_distance = 0;   // e-folding distance of the haze (m)
  float fog_rgb[3] = {200, 205, 210};
  static Atmosphere make(const ScenarioSpec& s);
  double fog(double z) const;  // 0..1 fraction of the haze colour at distance z
  // Illumination of a non-emissive surface at distance z, lateral X, height y: ambient + headlight cone.
  double illum(double z, double X, double y, bool retroreflective = false) const;
};

// Physical size of a vehicle class (m): length, width, height.
struct VehicleDims {
  double length, width, height;
};
VehicleDims vehicle_dims(VehicleType t);
double ped_height(PedClass c);
double ped_width(PedClass c);

// Geometry constants shared with the renderer.
constexpr double kSignSize = 1.0;          // sign face height (m); larger than real signs so digits stay legible
constexpr double kSignCenterHeight = 2.3;
constexpr double kSignSetback = 1.3;       // from the road edge (+ shoulder)
constexpr double kLightHousingW = 0.5, kLightHousingH = 1.4, kLampRadius = 0.19;
constexpr double kLightOverheadBottom = 4.9, kLightPoleBottom = 2.5;
// The signal stands across the intersection: stop line 12 m before it, the zebra crossing 11..8 m before it, so a car
// waiting at the line still sees the signal head in its frame.
constexpr double kStopLineBack = 12.0;
constexpr double kZebraFrom = 11.0, kZebraTo = 8.0;
constexpr double kEgoFront = 1.3;          // ego's front bumper ahead of the camera (m)
constexpr double kEgoLength = 4.5;
constexpr double kConeSpacing = 4.0, kConeHeight = 0.9;

struct VehicleState {
  const VehicleSpec* spec = nullptr;
  VehicleDims dims{};
  double s = 0, d = 0, v = 0, a = 0;
  double cruise = 0;
  bool braking = false;                 // brake lights lit
  double brake_decel = 0, brake_until = -1;  // scripted brake (brake_until < 0: inactive; +inf: until stopped)
  bool changing = false;
  int lane = 0, target_lane = 0;        // lane: the lane it is in / leaving
  double lc_from = 0, lc_to = 0, lc_t0 = 0, lc_dur = 1;
  size_t next_action = 0;
};

struct PedState {
  const PedSpec* spec = nullptr;
  double s = 0, d = 0;
  double vs = 0, vd = 0;  // m/s along the road and across it
  double target_d = 0;    // where a crossing ends
  bool crossing = false;
  double phase = 0;       // walk cycle (m walked)
  size_t next_action = 0;
};

struct EgoState {
  double s = 0, d = 0, v = 0, a = 0, cruise = 0;
  int lane = 0;
  bool changing = false;
  double lc_from = 0, lc_to = 0, lc_t0 = 0, lc_dur = 1;
  int target_lane = 0;
  double brake_decel = 0, brake_until = -1;
  size_t next_action = 0;
};

// A construction element (cone, barrier, worker, warning board) at road position (s, d).
struct ConstructionElement {
  enum Kind { kCone, kBarrier, kWorker, kBoard } kind = kCone;
  double s = 0, d = 0;
  int zone = 0;
};

class World {
 public:
  explicit World(const ScenarioSpec& spec);

  // Advances the simulation by one frame interval.
  void step();
  int64_t frame() const { return frame_; }
  double time() const { return static_cast<double>(frame_) / spec_->fps; }

  // Fills the state (canonical fields + objects) of the current frame.
  void compute_state(SceneState* out) const;

  const ScenarioSpec& spec() const { return *spec_; }
  const Camera& camera() const { return cam_; }
  const RoadGeometry& geometry() const { return geo_; }
  const RoadLayout& layout() const { return lay_; }
  const Atmosphere& atmosphere() const { return atm_; }
  const EgoState& ego() const { return ego_; }
  const std::vector<VehicleState>& vehicles() const { return veh_; }
  const std::vector<PedState>& pedestrians() const { return ped_; }
  const std::vector<LightState>& light_states() const { return light_state_; }
  const std::vector<ConstructionElement>& construction_elements() const { return elements_; }

  // Camera-frame lateral position of road point (s, d) at forward distance z = s - ego.s.
  double cam_x(double s, double d) const { return geo_.center_x(ego_.s, s - ego_.s) + d - ego_.d; }
  // Screen boxes (unclipped) of objects, identical to what the renderer fills.
  Box vehicle_box(const VehicleState& v) const;
  Box ped_box(const PedState& p) const;
  Box light_box(const TrafficLightSpec& l) const;  // the housing
  Box sign_box(const SignSpec& g) const;           // the face
  Box element_box(const ConstructionElement& e) const;
  double light_d(const TrafficLightSpec& l) const;  // lateral road position of the housing centre
  double sign_d(const SignSpec& g) const;

 private:
  double obstacle_gap(double s_front, double d, double half_w, int dir, const void* self, bool obey,
                      double* obstacle_v) const;
  void step_ego(double t, double dt);
  void step_vehicle(VehicleState& v, double t, double dt);
  void step_ped(PedState& p, double t, double dt);

  const ScenarioSpec* spec_;
  Camera cam_;
  RoadGeometry geo_;
  RoadLayout lay_;
  Atmosphere atm_;
  EgoState ego_;
  std::vector<VehicleState> veh_;
  std::vector<PedState> ped_;
  std::vector<LightState> light_state_;
  std::vector<ConstructionElement> elements_;
  int64_t frame_ = 0;
};

}  // namespace ev::sim
