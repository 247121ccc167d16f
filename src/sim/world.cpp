#include "sim/world.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "sim/sim_math.h"

namespace ev::sim {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPi = 3.14159265358979323846;
constexpr double kNear = 0.3;  // near plane (m)
}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Math

double det_exp(double x) {
  if (x < -700) return 0.0;
  if (x > 700) x = 700;
  // x = k ln2 + r, |r| <= ln2 / 2
  const double ln2 = 0.6931471805599453;
  const double kf = x / ln2;
  const int64_t k = static_cast<int64_t>(kf >= 0 ? kf + 0.5 : kf - 0.5);
  const double r = x - static_cast<double>(k) * ln2;
  double term = 1.0, sum = 1.0;
  for (int i = 1; i <= 13; ++i) {
    term *= r / i;
    sum += term;
  }
  double p = 1.0;
  const double base = k >= 0 ? 2.0 : 0.5;
  for (int64_t i = 0; i < (k >= 0 ? k : -k); ++i) p *= base;
  return sum * p;
}

double det_tan(double x) {
  double s = 0, c = 0, term = x;
  // sin
  for (int i = 1; i < 30; i += 2) {
    s += term;
    term *= -x * x / ((i + 1) * (i + 2));
  }
  term = 1.0;
  for (int i = 0; i < 30; i += 2) {
    c += term;
    term *= -x * x / ((i + 1) * (i + 2));
  }
  return s / c;
}

// ---------------------------------------------------------------------------------------------------------------
// Camera, road, atmosphere

Camera Camera::make(const ScenarioSpec& s) {
  Camera c;
  c.W = s.width;
  c.H = s.height;
  c.fx = 0.5 * s.width / det_tan(0.5 * s.camera.fov_deg * kPi / 180.0);
  c.fy = c.fx;
  c.cx = 0.5 * s.width;
  c.hy = s.camera.horizon * s.height;
  c.height = s.camera.height_m;
  return c;
}

double RoadGeometry::heading(double s) const {
  double h = 0;
  for (const auto& c : curves_) h += c.curvature * clampd(s - c.s, 0.0, c.length);
  return h;
}

double RoadGeometry::offset(double s) const {
  double y = 0;
  for (const auto& c : curves_) {
    const double u = s - c.s;
    if (u <= 0) continue;
    if (u <= c.length) y += 0.5 * c.curvature * u * u;
    else y += c.curvature * c.length * (0.5 * c.length + (u - c.length));
  }
  return y;
}

int RoadLayout::lane_of(double d) const {
  if (d < 0 && oncoming > 0) {
    int j = static_cast<int>(-d / lane_width);
    return -1 - std::min(j, oncoming - 1);
  }
  int i = static_cast<int>(std::max(0.0, d) / lane_width);
  return std::min(i, lanes - 1);
}

RoadLayout RoadLayout::make(const RoadSpec& r) {
  RoadLayout l;
  l.type = r.type;
  l.lanes = r.lanes;
  l.oncoming = r.oncoming_lanes;
  l.lane_width = r.lane_width;
  switch (r.type) {
    case RoadType::kUrban: l.shoulder = 0.3; l.sidewalk = 3.2; break;
    case RoadType::kHighway: l.shoulder = 2.5; l.sidewalk = 0; break;
    case RoadType::kRural: l.shoulder = 0.8; l.sidewalk = 0; break;
  }
  return l;
}

Atmosphere Atmosphere::make(const ScenarioSpec& s) {
  Atmosphere a;
  a.lighting = s.conditions.lighting;
  a.weather = s.conditions.weather;
  const bool urban = s.road.type == RoadType::kUrban;
  switch (a.lighting) {
    case Lighting::kDay: a.ambient = 1.0; a.headlights = 0.0; break;
    case Lighting::kDusk: a.ambient = 0.62; a.headlights = 0.3; break;
    case Lighting::kNight: a.ambient = urban ? 0.40 : 0.16; a.headlights = 0.8; break;
  }
  const float fog_day[3] = {204, 208, 214}, fog_dusk[3] = {178, 150, 140}, fog_night[3] = {30, 32, 40};
  const float* fc = a.lighting == Lighting::kDay ? fog_day : (a.lighting == Lighting::kDusk ? fog_dusk : fog_night);
  for (int i = 0; i < 3; ++i) a.fog_rgb[i] = fc[i];
  switch (a.weather) {
    case Weather::kClear: a.fog_distance = 1500; break;
    case Weather::kRain:
      a.fog_distance = 260;
      a.ambient *= 0.82;
      for (auto& c : a.fog_rgb) c *= 0.78f;
      break;
    case Weather::kFog: a.fog_distance = s.conditions.fog_distance; a.ambient *= 0.92; break;
    case Weather::kGlare: a.fog_distance = 700; break;
  }
  return a;
}

double Atmosphere::fog(double z) const {
  if (z <= 0) return 0;
  return 1.0 - det_exp(-z / fog_distance);
}

double Atmosphere::illum(double z, double X, double y, bool retro) const {
  double l = ambient;
  if (headlights > 0 && z > 0 && y < 3.2) {
    const double cone = 0.45 * z + 1.6;
    const double ax = std::abs(X);
    if (ax < cone) {
      const double fall = clampd(1.0 - z / 60.0, 0.0, 1.0) * clampd((cone - ax) / (0.3 * cone), 0.0, 1.0);
      l += headlights * fall * (retro ? 1.6 : 1.0);
    }
  }
  return std::min(l, 1.35);
}

VehicleDims vehicle_dims(VehicleType t) {
  switch (t) {
    case VehicleType::kCar: return {4.5, 1.85, 1.48};
    case VehicleType::kTruck: return {8.5, 2.5, 3.6};
    case VehicleType::kBus: return {12.0, 2.55, 3.2};
    case VehicleType::kMotorcycle: return {2.1, 0.8, 1.55};
    case VehicleType::kBicycle: return {1.8, 0.6, 1.75};
  }
  return {4.5, 1.8, 1.5};
}
double ped_height(PedClass c) { return c == PedClass::kAdult ? 1.76 : 1.22; }
double ped_width(PedClass c) { return c == PedClass::kAdult ? 0.52 : 0.40; }

// ---------------------------------------------------------------------------------------------------------------
// World

World::World(const ScenarioSpec& spec) : spec_(&spec) {
  cam_ = Camera::make(spec);
  geo_ = RoadGeometry(spec.road.curves);
  lay_ = RoadLayout::make(spec.road);
  atm_ = Atmosphere::make(spec);

  ego_.s = spec.ego.s;
  ego_.lane = ego_.target_lane = spec.ego.lane;
  ego_.d = lay_.lane_center(spec.ego.lane);
  ego_.v = ego_.cruise = spec.ego.speed;

  for (const auto& vs : spec.vehicles) {
    VehicleState v;
    v.spec = &vs;
    v.dims = vehicle_dims(vs.type);
    v.s = vs.s;
    v.d = vs.oncoming ? lay_.oncoming_center(vs.lane) : lay_.lane_center(vs.lane);
    v.v = v.cruise = vs.speed;
    v.lane = v.target_lane = vs.oncoming ? -1 - vs.lane : vs.lane;
    veh_.push_back(v);
  }
  for (const auto& ps : spec.pedestrians) {
    PedState p;
    p.spec = &ps;
    p.s = ps.s;
    p.d = ps.side == Side::kRight ? lay_.right_edge() + std::max(ps.offset, 0.2)
                                  : lay_.left_edge() - std::max(ps.offset, 0.2);
    p.phase = static_cast<double>(mix64(spec.seed, ps.s > 0 ? 1 : 2) % 1000) * 0.001;
    ped_.push_back(p);
  }
  light_state_.resize(spec.lights.size());
  for (size_t i = 0; i < spec.lights.size(); ++i) light_state_[i] = spec.lights[i].state_at(0);

  // Construction elements: a cone line along the closed area (with a 15 m taper when lanes are closed),
  // barriers inside the closed area, workers, and a warning board 25 m before the zone.
  for (size_t zi = 0; zi < spec.construction.size(); ++zi) {
    const auto& z = spec.construction[zi];
    const double sgn = z.side == Side::kRight ? 1.0 : -1.0;
    const double edge = z.side == Side::kRight ? lay_.right_edge() : -lay_.left_edge();  // |edge|
    const double line = z.lanes_closed > 0 ? edge - z.lanes_closed * lay_.lane_width + 0.35 : edge + 0.35;
    const double taper = z.lanes_closed > 0 ? 15.0 : 0.0;
    for (double s = 0; s <= z.length + 1e-9; s += kConeSpacing) {
      const double u = taper > 0 ? clampd(s / taper, 0.0, 1.0) : 1.0;
      const double dl = (edge + 0.35) + (line - (edge + 0.35)) * u;
      elements_.push_back({ConstructionElement::kCone, z.s + s, sgn * dl, static_cast<int>(zi)});
    }
    if (z.barriers) {
      const double bd = z.lanes_closed > 0 ? line + 1.4 : edge + lay_.shoulder + 0.9;
      for (double s = taper + 4; s <= z.length - 2; s += 9.0)
        elements_.push_back({ConstructionElement::kBarrier, z.s + s, sgn * bd, static_cast<int>(zi)});
    }
    for (int w = 0; w < z.workers; ++w) {
      const double s = taper + 6 + (z.length - taper - 8) * (w + 0.5) / std::max(1, z.workers);
      const double wd = z.lanes_closed > 0 ? line + 1.6 + 0.5 * (w % 2) : edge + lay_.shoulder + 1.6 + 0.4 * (w % 2);
      elements_.push_back({ConstructionElement::kWorker, z.s + s, sgn * wd, static_cast<int>(zi)});
    }
    const double board_d = sgn * (edge + lay_.shoulder + kSignSetback);
    elements_.push_back({ConstructionElement::kBoard, z.s - 25.0, board_d, static_cast<int>(zi)});
  }

  // Actions due at t = 0, then the initial accelerations and brake lights.
  frame_ = 0;
  step_ego(0.0, 0.0);
  for (auto& v : veh_) step_vehicle(v, 0.0, 0.0);
  for (auto& p : ped_) step_ped(p, 0.0, 0.0);
}

// Nearest obstacle ahead of a same-direction agent (dir = +1) or an oncoming one (dir = -1) whose front is at
// s_front, in the corridor |d' - d| < half_w + (obstacle half width). Returns the gap (m; may be negative) and the
// obstacle's speed along the agent's direction.
double World::obstacle_gap(double s_front, double d, double half_w, int dir, const void* self, bool obey,
                           double* obstacle_v) const {
  double best = kInf;
  *obstacle_v = 0;
  const double v_self = self == &ego_ ? ego_.v : 0;
  if (dir > 0) {
    for (const auto& o : veh_) {
      if (&o == self || o.spec->oncoming) continue;
      if (std::abs(o.d - d) >= half_w + 0.5 * o.dims.width + 0.15) continue;
      const double rear = o.s - 0.5 * o.dims.length;
      if (o.s < s_front - 0.5) continue;  // behind us
      const double gap = rear - s_front;
      if (gap < best) {
        best = gap;
        *obstacle_v = o.v;
      }
    }
    if (self != &ego_ && std::abs(ego_.d - d) < half_w + 0.95 + 0.15) {
      const double ego_center = ego_.s + kEgoFront - 0.5 * kEgoLength;
      if (ego_center >= s_front - 0.5) {
        const double gap = ego_.s + kEgoFront - kEgoLength - s_front;
        if (gap < best) {
          best = gap;
          *obstacle_v = ego_.v;
        }
      }
    }
  }
  for (const auto& p : ped_) {
    // In the corridor now, or walking into it within 1.5 s.
    const double pd = p.d + p.vd * 1.5;
    const bool in = std::abs(p.d - d) < half_w + 0.6 ||
                    (p.vd != 0 && ((p.d - d) * (pd - d) <= 0 || std::abs(pd - d) < half_w + 0.6));
    if (!in) continue;
    const double on_road = p.d > lay_.left_edge() - 0.3 && p.d < lay_.right_edge() + 0.3;
    if (!on_road && p.vd == 0) continue;
    const double ahead = dir * (p.s - s_front);
    if (ahead < -0.3) continue;
    const double gap = ahead - 0.8;
    if (gap < best) {
      best = gap;
      *obstacle_v = 0;
    }
  }
  if (dir > 0 && obey) {
    const double v = self == &ego_ ? ego_.v : static_cast<const VehicleState*>(self)->v;
    (void)v_self;
    for (size_t i = 0; i < spec_->lights.size(); ++i) {
      const LightState st = light_state_[i];
      if (st != LightState::kRed && st != LightState::kYellow) continue;
      const double gap = spec_->lights[i].s - kStopLineBack - s_front;
      if (gap < -0.5) continue;
      const double need = v * v / (2.0 * (st == LightState::kRed ? 6.5 : 3.0));
      if (gap + 1.0 < need) continue;  // too close to stop: go through
      if (gap < best) {
        best = gap;
        *obstacle_v = 0;
      }
    }
    for (const auto& z : spec_->construction) {
      if (z.lanes_closed <= 0 || z.side != Side::kRight) continue;
      const double closed_from = lay_.right_edge() - z.lanes_closed * lay_.lane_width;
      if (d + half_w * 0.5 < closed_from) continue;
      const double gap = z.s - s_front;
      if (gap < -z.length) continue;
      if (gap < best) {
        best = std::max(gap, 0.0) - 0.0;
        *obstacle_v = 0;
      }
    }
  }
  return best;
}

namespace {

// IDM acceleration towards cruise speed v0 with an obstacle at `gap` moving at `ov`.
double idm(double v, double v0, double gap, double ov, double amax, double b) {
  // Cruise speed ~0 (parked, or told to stop): brake to a standstill and stay there.
  if (v0 < 0.1) return v > 0.05 ? -std::min(b, 2.0 * v + 0.5) : 0.0;
  const double vr = v / v0;
  double a = amax * (1.0 - vr * vr * vr * vr);
  if (gap < 1e8) {
    const double s0 = 2.5, T = 1.3;
    const double star = s0 + std::max(0.0, v * T + v * (v - ov) / (2.0 * std::sqrt(amax * b)));
    const double g = std::max(gap, 0.1);
    a -= amax * (star / g) * (star / g);
  }
  return clampd(a, -9.0, amax);
}

void update_brake_lights(bool* braking, double a, double v, double gap, bool scripted) {
  if (scripted) {
    *braking = true;
    return;
  }
  if (a < -1.0) *braking = true;
  else if (a > -0.4) *braking = false;
  if (v < 0.3 && gap < 12) *braking = true;  // holding the brake at a standstill behind an obstacle
}

}  // namespace

void World::step_ego(double t, double dt) {
  EgoState& e = ego_;
  // Integrate with the acceleration of the previous frame.
  if (dt > 0) {
    e.v = std::max(0.0, e.v + e.a * dt);
    e.s += e.v * dt;
  }
  const auto& tl = spec_->ego.timeline;
  while (e.next_action < tl.size() && tl[e.next_action].t <= t + 1e-9) {
    const auto& a = tl[e.next_action++];
    if (a.kind == EgoAction::kSpeed) {
      e.cruise = a.value;
      e.brake_until = -1;
    } else if (a.kind == EgoAction::kBrake) {
      e.brake_decel = a.value;
      e.brake_until = a.duration > 0 ? t + a.duration : kInf;
    } else if (a.lane != e.target_lane) {
      e.changing = true;
      e.lc_from = e.d;
      e.lc_to = lay_.lane_center(a.lane);
      e.lc_t0 = t;
      e.lc_dur = a.duration;
      e.target_lane = a.lane;
    }
  }
  if (e.changing) {
    const double u = (t - e.lc_t0) / e.lc_dur;
    e.d = e.lc_from + (e.lc_to - e.lc_from) * smoothstep01(u);
    if (u >= 1) e.changing = false;
  }
  e.lane = lay_.lane_of(e.d);
  if (e.brake_until >= 0 && t > e.brake_until + 1e-9) e.brake_until = -1;
  if (e.brake_until >= 0) {
    e.a = e.v > 0 ? -e.brake_decel : 0;
  } else {
    double ov = 0;
    const double gap = obstacle_gap(e.s + kEgoFront, e.d, 0.95, +1, &ego_, spec_->ego.obey_lights, &ov);
    e.a = idm(e.v, e.cruise, gap, ov, 2.0, 3.0);
  }
  if (e.v <= 0 && e.a < 0) e.a = 0;
}

void World::step_vehicle(VehicleState& v, double t, double dt) {
  const int dir = v.spec->oncoming ? -1 : 1;
  if (dt > 0) {
    v.v = std::max(0.0, v.v + v.a * dt);
    v.s += dir * v.v * dt;
  }
  const auto& tl = v.spec->timeline;
  while (v.next_action < tl.size() && tl[v.next_action].t <= t + 1e-9) {
    const auto& a = tl[v.next_action++];
    if (a.kind == VehicleAction::kSpeed) {
      v.cruise = a.value;
      v.brake_until = -1;
    } else if (a.kind == VehicleAction::kBrake) {
      v.brake_decel = a.value;
      v.brake_until = a.duration > 0 ? t + a.duration : kInf;
    } else if (a.lane != v.target_lane && !v.spec->oncoming) {
      v.changing = true;
      v.lc_from = v.d;
      v.lc_to = lay_.lane_center(a.lane);
      v.lc_t0 = t;
      v.lc_dur = a.duration;
      v.lane = lay_.lane_of(v.d);
      v.target_lane = a.lane;
    }
  }
  if (v.changing) {
    const double u = (t - v.lc_t0) / v.lc_dur;
    v.d = v.lc_from + (v.lc_to - v.lc_from) * smoothstep01(u);
    if (u >= 1) {
      v.changing = false;
      v.lane = v.target_lane;
    }
  }
  if (v.brake_until >= 0 && t > v.brake_until + 1e-9) v.brake_until = -1;
  const bool scripted = v.brake_until >= 0;
  double ov = 0;
  const double front = v.s + dir * 0.5 * v.dims.length;
  const double gap = obstacle_gap(front, v.d, 0.5 * v.dims.width, dir, &v, true, &ov);
  if (scripted) {
    v.a = v.v > 0 ? -v.brake_decel : 0;
  } else {
    const bool heavy = v.spec->type == VehicleType::kTruck || v.spec->type == VehicleType::kBus;
    const double amax = heavy ? 0.9 : (v.spec->type == VehicleType::kBicycle ? 0.8 : 1.6);
    v.a = idm(v.v, v.cruise, gap, ov, amax, 3.0);
  }
  if (v.v <= 0 && v.a < 0) v.a = 0;
  update_brake_lights(&v.braking, v.a, v.v, gap, scripted);  // a scripted brake lights the lamps even at a standstill
}

void World::step_ped(PedState& p, double t, double dt) {
  if (dt > 0) {
    p.s += p.vs * dt;
    if (p.crossing) {
      const double step = p.vd * dt;
      if (std::abs(p.target_d - p.d) <= std::abs(step)) {
        p.d = p.target_d;
        p.vd = 0;
        p.crossing = false;
      } else {
        p.d += step;
      }
    }
    p.phase += (std::abs(p.vs) + std::abs(p.vd)) * dt;
  }
  const auto& tl = p.spec->timeline;
  while (p.next_action < tl.size() && tl[p.next_action].t <= t + 1e-9) {
    const auto& a = tl[p.next_action++];
    if (a.kind == PedAction::kCross) {
      const double mid = 0.5 * (lay_.left_edge() + lay_.right_edge());
      const double off = std::max(0.6, p.spec->offset);
      p.target_d = p.d > mid ? lay_.left_edge() - off : lay_.right_edge() + off;
      p.vd = p.target_d > p.d ? a.speed : -a.speed;
      p.vs = 0;
      p.crossing = true;
    } else if (a.kind == PedAction::kWalk) {
      p.vs = a.speed;
      p.vd = 0;
      p.crossing = false;
    } else {
      p.vs = p.vd = 0;
      p.crossing = false;
    }
  }
}

void World::step() {
  const double dt = 1.0 / spec_->fps;
  ++frame_;
  const double t = time();
  for (size_t i = 0; i < spec_->lights.size(); ++i) light_state_[i] = spec_->lights[i].state_at(t);
  // Positions first (each agent integrates its own previous acceleration), then the new accelerations from the
  // new positions: the result does not depend on the order of the agents.
  ego_.v = std::max(0.0, ego_.v + ego_.a * dt);
  ego_.s += ego_.v * dt;
  for (auto& v : veh_) {
    v.v = std::max(0.0, v.v + v.a * dt);
    v.s += (v.spec->oncoming ? -1 : 1) * v.v * dt;
  }
  for (auto& p : ped_) step_ped(p, t, dt);
  step_ego(t, 0.0);
  for (auto& v : veh_) step_vehicle(v, t, 0.0);
}

// ---------------------------------------------------------------------------------------------------------------
// Screen boxes

namespace {

void grow(Box* b, bool* any, double x, double y) {
  if (!*any) {
    *b = {x, y, x, y};
    *any = true;
    return;
  }
  b->x0 = std::min(b->x0, x);
  b->x1 = std::max(b->x1, x);
  b->y0 = std::min(b->y0, y);
  b->y1 = std::max(b->y1, y);
}

}  // namespace

Box World::vehicle_box(const VehicleState& v) const {
  double s0 = v.s - 0.5 * v.dims.length, s1 = v.s + 0.5 * v.dims.length;
  s0 = std::max(s0, ego_.s + kNear);
  if (s1 <= s0) return {};
  Box b;
  bool any = false;
  for (double s : {s0, s1}) {
    const double z = s - ego_.s;
    for (double dd : {-0.5 * v.dims.width, 0.5 * v.dims.width}) {
      const double X = cam_x(s, v.d + dd);
      grow(&b, &any, cam_.sx(X, z), cam_.sy(0, z));
      grow(&b, &any, cam_.sx(X, z), cam_.sy(v.dims.height, z));
    }
  }
  return b;
}

Box World::ped_box(const PedState& p) const {
  const double z = p.s - ego_.s;
  if (z <= kNear) return {};
  const double X = cam_x(p.s, p.d), hw = 0.5 * ped_width(p.spec->cls);
  return {cam_.sx(X - hw, z), cam_.sy(ped_height(p.spec->cls), z), cam_.sx(X + hw, z), cam_.sy(0, z)};
}

double World::light_d(const TrafficLightSpec& l) const {
  switch (l.mount) {
    case LightMount::kOverhead: return 0.5 * lay_.right_edge() + (lay_.lanes == 1 ? 0.0 : 0.0);
    case LightMount::kRight: return lay_.right_edge() + lay_.shoulder + 1.0;
    case LightMount::kLeft: return lay_.left_edge() - lay_.shoulder - 1.0;
  }
  return 0;
}

Box World::light_box(const TrafficLightSpec& l) const {
  const double z = l.s - ego_.s;
  if (z <= kNear) return {};
  const double bottom = l.mount == LightMount::kOverhead ? kLightOverheadBottom : kLightPoleBottom;
  const double X = cam_x(l.s, light_d(l));
  return {cam_.sx(X - 0.5 * kLightHousingW, z), cam_.sy(bottom + kLightHousingH, z), cam_.sx(X + 0.5 * kLightHousingW, z),
          cam_.sy(bottom, z)};
}

double World::sign_d(const SignSpec& g) const {
  return g.side == Side::kRight ? lay_.right_edge() + lay_.shoulder + kSignSetback
                                : lay_.left_edge() - lay_.shoulder - kSignSetback;
}

Box World::sign_box(const SignSpec& g) const {
  const double z = g.s - ego_.s;
  if (z <= kNear) return {};
  const double X = cam_x(g.s, sign_d(g)), r = 0.5 * kSignSize;
  return {cam_.sx(X - r, z), cam_.sy(kSignCenterHeight + r, z), cam_.sx(X + r, z), cam_.sy(kSignCenterHeight - r, z)};
}

Box World::element_box(const ConstructionElement& e) const {
  const double z = e.s - ego_.s;
  if (z <= kNear) return {};
  double hw = 0.22, h = kConeHeight, y0 = 0;
  switch (e.kind) {
    case ConstructionElement::kCone: break;
    case ConstructionElement::kBarrier: hw = 0.7; h = 1.05; break;
    case ConstructionElement::kWorker: hw = 0.26; h = 1.8; break;
    case ConstructionElement::kBoard: hw = 0.5; h = kSignCenterHeight + 0.45; y0 = kSignCenterHeight - 0.45; break;
  }
  const double X = cam_x(e.s, e.d);
  return {cam_.sx(X - hw, z), cam_.sy(h, z), cam_.sx(X + hw, z), cam_.sy(y0, z)};
}

// ---------------------------------------------------------------------------------------------------------------
// Truth

namespace {

double in_frame_fraction(const Box& b, int W, int H) {
  if (b.empty()) return 0;
  const double x0 = std::max(0.0, b.x0), x1 = std::min<double>(W, b.x1);
  const double y0 = std::max(0.0, b.y0), y1 = std::min<double>(H, b.y1);
  if (x1 <= x0 || y1 <= y0) return 0;
  return (x1 - x0) * (y1 - y0) / (b.w() * b.h());
}

struct Occluder {
  Box box;
  double z;
};

// Fraction of the in-frame part of `b` covered by occluders nearer than z (6x6 sample grid).
double occlusion(const Box& b, double z, const std::vector<Occluder>& occ, int W, int H) {
  if (b.empty()) return 0;
  const double x0 = std::max(0.0, b.x0), x1 = std::min<double>(W, b.x1);
  const double y0 = std::max(0.0, b.y0), y1 = std::min<double>(H, b.y1);
  if (x1 <= x0 || y1 <= y0) return 0;
  int covered = 0;
  constexpr int kN = 6;
  for (int i = 0; i < kN; ++i) {
    const double y = y0 + (y1 - y0) * (i + 0.5) / kN;
    for (int j = 0; j < kN; ++j) {
      const double x = x0 + (x1 - x0) * (j + 0.5) / kN;
      for (const auto& o : occ) {
        if (o.z < z - 0.5 && x >= o.box.x0 && x < o.box.x1 && y >= o.box.y0 && y < o.box.y1) {
          ++covered;
          break;
        }
      }
    }
  }
  return static_cast<double>(covered) / (kN * kN);
}

}  // namespace

void World::compute_state(SceneState* st) const {
  SceneState& s = *st;
  s = SceneState{};
  s.frame = frame_;
  s.t = time();
  s.ego_s = ego_.s;
  s.ego_d = ego_.d;
  s.ego_speed = ego_.v;
  s.ego_accel = ego_.a;
  s.ego_lane = ego_.lane;
  s.lighting = atm_.lighting;
  s.weather = atm_.weather;
  const int W = cam_.W, H = cam_.H;
  const bool lamps_on = atm_.lighting != Lighting::kDay;

  std::vector<Occluder> occ;
  for (const auto& v : veh_) {
    const double z = v.s - 0.5 * v.dims.length - ego_.s;
    if (z + v.dims.length <= kNear) continue;
    occ.push_back({vehicle_box(v), std::max(z, kNear)});
  }

  auto finish = [&](ObjectTruth& o, double min_h) {
    o.in_frame = in_frame_fraction(o.box, W, H);
    o.occluded = occlusion(o.box, o.distance, occ, W, H);
    // Mostly inside the frame, or a large part of a big near object (a car alongside, cut off by the border).
    const double cw = std::min<double>(W, o.box.x1) - std::max(0.0, o.box.x0);
    const double ch = std::min<double>(H, o.box.y1) - std::max(0.0, o.box.y0);
    const bool framed = o.in_frame >= kMinInFrame ||
                        (o.in_frame >= kMinInFrameLarge && cw >= kLargePart * H && ch >= kLargePart * H);
    o.visible = o.distance > kNear && framed && o.occluded <= kMaxOccluded &&
                o.contrast >= kMinContrast && o.box.h() >= min_h * H;
  };
  const double ego_lane_center = lay_.lane_center(ego_.lane);

  // Vehicles.
  const VehicleState* lead = nullptr;
  double lead_z = kInf;
  for (const auto& v : veh_) {
    const double z = v.s - 0.5 * v.dims.length - ego_.s;
    if (z < -30 || z > 200) continue;
    ObjectTruth o;
    o.id = v.spec->id;
    o.kind = "vehicle";
    o.cls = name(v.spec->type);
    o.colour = name(v.spec->colour);
    o.s = v.s;
    o.d = v.d;
    o.distance = z;
    o.lateral = cam_x(v.s - 0.5 * v.dims.length, v.d);
    o.speed = v.spec->oncoming ? -v.v : v.v;
    o.box = vehicle_box(v);
    const double body = std::min(1.0, atm_.illum(z, o.lateral, 0.8)) * (1.0 - atm_.fog(z));
    o.contrast = lamps_on ? std::max(body, 1.0 - atm_.fog(z)) : body;
    o.lane = lay_.lane_of(v.d);
    o.braking = v.braking;
    o.changing_lane = v.changing;
    o.target_lane = v.changing ? v.target_lane : -1;
    finish(o, kLeadMinHeight);
    s.objects.push_back(o);
    const ObjectTruth& ob = s.objects.back();
    if (!v.spec->oncoming && ob.visible && z > 0 && z <= kLeadRange && std::abs(v.d - ego_lane_center) < 0.5 * lay_.lane_width &&
        z < lead_z) {
      lead_z = z;
      lead = &v;
    }
    if (!v.spec->oncoming && ob.visible && v.changing && v.target_lane == ego_.lane && v.lane != ego_.lane && z > 0 &&
        z <= kHazardCutInRange)
      s.hazards |= kHazardCutIn;
  }
  if (lead) {
    LeadTruth lt;
    lt.id = lead->spec->id;
    lt.type = lead->spec->type;
    lt.colour = lead->spec->colour;
    lt.braking = lead->braking;
    lt.distance = lead_z;
    s.lead = lt;
  }
  if (s.lead && s.lead->braking && s.lead->distance <= kHazardBrakeRange) s.hazards |= kHazardBraking;

  // Pedestrians.
  double best_cross = kInf, best_side = kInf;
  for (const auto& p : ped_) {
    const double z = p.s - ego_.s;
    if (z < -10 || z > 150) continue;
    ObjectTruth o;
    o.id = p.spec->id;
    o.kind = "pedestrian";
    o.cls = name(p.spec->cls);
    o.colour = name(p.spec->shirt);
    o.s = p.s;
    o.d = p.d;
    o.distance = z;
    o.lateral = cam_x(p.s, p.d);
    o.speed = p.vs;
    o.box = ped_box(p);
    o.contrast = std::min(1.0, atm_.illum(z, o.lateral, 1.0)) * (1.0 - atm_.fog(z));
    o.on_road = p.d > lay_.left_edge() && p.d < lay_.right_edge();
    finish(o, kPedMinHeight);
    if (o.visible && z <= kPedRange) {
      if (o.on_road && z < best_cross) {
        best_cross = z;
        const double cxp = 0.5 * (o.box.x0 + o.box.x1);
        s.pedestrian = cxp < W / 3.0 ? PedField::kCrossingLeft
                                     : (cxp >= 2.0 * W / 3.0 ? PedField::kCrossingRight : PedField::kCrossingCenter);
        s.pedestrian_id = o.id;
      } else if (!o.on_road && best_cross == kInf && z < best_side) {
        best_side = z;
        s.pedestrian = PedField::kSidewalk;
        s.pedestrian_id = o.id;
      }
      if (o.on_road && z <= kHazardPedRange) s.hazards |= kHazardPedestrian;
    }
    s.objects.push_back(o);
  }

  // Traffic lights.
  double best_light = kInf;
  for (size_t i = 0; i < spec_->lights.size(); ++i) {
    const auto& l = spec_->lights[i];
    const double z = l.s - ego_.s;
    if (z < -10 || z > 200) continue;
    ObjectTruth o;
    o.id = l.id;
    o.kind = "traffic_light";
    o.cls = name(l.mount);
    o.s = l.s;
    o.d = light_d(l);
    o.distance = z;
    o.lateral = cam_x(l.s, o.d);
    o.box = light_box(l);
    o.state = name(light_state_[i]);
    const double y = l.mount == LightMount::kOverhead ? kLightOverheadBottom : kLightPoleBottom + 0.7;
    const double housing = std::min(1.0, atm_.illum(z, o.lateral, y)) * (1.0 - atm_.fog(z));
    o.contrast = light_state_[i] == LightState::kOff ? housing : std::max(housing, 1.0 - atm_.fog(z));
    finish(o, kLightMinHeight);
    if (o.visible && z <= kLightRange && z < best_light) {
      best_light = z;
      s.light = light_state_[i];
      s.light_id = l.id;
      s.light_distance = z;
    }
    s.objects.push_back(o);
  }
  if (s.light && *s.light == LightState::kRed && s.light_distance <= kHazardRedRange) s.hazards |= kHazardRedLight;

  // Signs.
  double best_sign = kInf;
  for (const auto& g : spec_->signs) {
    const double z = g.s - ego_.s;
    if (z < -10 || z > 200) continue;
    ObjectTruth o;
    o.id = g.id;
    o.kind = "sign";
    o.cls = name(g.type);
    o.value = g.type == SignType::kSpeed ? g.value : 0;
    o.s = g.s;
    o.d = sign_d(g);
    o.distance = z;
    o.lateral = cam_x(g.s, o.d);
    o.box = sign_box(g);
    o.contrast = std::min(1.0, atm_.illum(z, o.lateral, kSignCenterHeight, true)) * (1.0 - atm_.fog(z));
    finish(o, kSignMinHeight);
    if (o.visible && z <= kSignRange && z < best_sign) {
      best_sign = z;
      s.sign = g.type;
      s.sign_value = o.value;
      s.sign_id = g.id;
      s.sign_distance = z;
    }
    s.objects.push_back(o);
  }

  // Construction zones: one object per zone, its box the union of the visible elements.
  for (size_t zi = 0; zi < spec_->construction.size(); ++zi) {
    const auto& zs = spec_->construction[zi];
    ObjectTruth o;
    o.id = zs.id;
    o.kind = "construction";
    o.cls = "zone";
    o.s = zs.s;
    o.d = zs.side == Side::kRight ? lay_.right_edge() : lay_.left_edge();
    bool any = false, in_range = false;
    int count = 0;  // visible elements (a cone counts 1, anything else 2)
    double nearest = kInf;
    for (const auto& e : elements_) {
      if (e.zone != static_cast<int>(zi)) continue;
      const double z = e.s - ego_.s;
      if (z <= kNear || z > kConstructionRange) continue;
      ObjectTruth eo;
      eo.distance = z;
      eo.box = element_box(e);
      eo.lateral = cam_x(e.s, e.d);
      eo.contrast = std::min(1.0, atm_.illum(z, eo.lateral, 0.5, true)) * (1.0 - atm_.fog(z));
      finish(eo, kConstructionMinHeight);
      if (!eo.visible) continue;
      count += e.kind == ConstructionElement::kCone ? 1 : 2;
      grow(&o.box, &any, eo.box.x0, eo.box.y0);
      grow(&o.box, &any, eo.box.x1, eo.box.y1);
      nearest = std::min(nearest, z);
    }
    in_range = count >= 2;
    o.distance = in_range ? nearest : zs.s - ego_.s;
    o.lateral = cam_x(zs.s, o.d);
    o.visible = in_range;
    o.in_frame = in_range ? in_frame_fraction(o.box, W, H) : 0;
    if (in_range) {
      s.construction = true;
      if (nearest <= kHazardConstructionRange) s.hazards |= kHazardConstruction;
    }
    if (zs.s + zs.length - ego_.s > -10 && zs.s - 25 - ego_.s < 200) s.objects.push_back(o);
  }
}

}  // namespace ev::sim
