#include "sim/simulator.h"

#include "sim/render.h"
#include "sim/world.h"

namespace ev::sim {

using nlohmann::json;

struct Simulator::Impl {
  ScenarioSpec spec;
  std::unique_ptr<World> world;
  std::unique_ptr<Renderer> renderer;
  bool done = false;

  // Previous frame, for events.
  bool have_prev = false;
  std::vector<LightState> prev_lights;
  std::vector<char> prev_braking, prev_changing, prev_on_road;
  uint32_t prev_hazards = 0;
  std::string prev_lead_id;
  bool prev_lead_braking = false;
  int prev_ego_lane = 0;
  SceneState state;

  void build() {
    world = std::make_unique<World>(spec);
    renderer = std::make_unique<Renderer>(*world);
    done = false;
    have_prev = false;
  }

  double distance_of(const std::string& id) const {
    for (const auto& o : state.objects)
      if (o.id == id) return o.distance;
    return 0;
  }

  void events(std::vector<Event>* out) {
    const World& w = *world;
    const int64_t f = w.frame();
    const double t = w.time();
    auto add = [&](const std::string& type, const std::string& actor, json details) {
      Event e;
      e.type = type;
      e.actor = actor;
      e.frame = f;
      e.t = t;
      e.details = std::move(details);
      out->push_back(std::move(e));
    };
    const auto& lights = w.light_states();
    const auto& veh = w.vehicles();
    const auto& peds = w.pedestrians();
    if (have_prev) {
      for (size_t i = 0; i < lights.size(); ++i) {
        if (lights[i] == prev_lights[i]) continue;
        const auto& l = spec.lights[i];
        add(std::string("light_") + name(lights[i]), l.id,
            {{"from", name(prev_lights[i])}, {"to", name(lights[i])}, {"relevant", state.light_id == l.id},
             {"distance", l.s - w.ego().s}});
      }
      for (size_t i = 0; i < peds.size(); ++i) {
        const auto& lay = w.layout();
        const bool on = peds[i].d > lay.left_edge() && peds[i].d < lay.right_edge();
        if (on != static_cast<bool>(prev_on_road[i]))
          add(on ? "pedestrian_enters_road" : "pedestrian_leaves_road", peds[i].spec->id,
              {{"distance", peds[i].s - w.ego().s}});
      }
      for (size_t i = 0; i < veh.size(); ++i) {
        const auto& v = veh[i];
        if (v.changing && !prev_changing[i]) {
          const bool cut = v.target_lane == w.ego().lane && v.lane != w.ego().lane;
          add(cut ? "cut_in" : "lane_change", v.spec->id,
              {{"from_lane", v.lane}, {"to_lane", v.target_lane}, {"distance", distance_of(v.spec->id)}});
        }
        if (v.braking != static_cast<bool>(prev_braking[i])) {
          const bool is_lead = state.lead && state.lead->id == v.spec->id;
          add(v.braking ? "brake_start" : "brake_end", v.spec->id,
              {{"lead", is_lead}, {"distance", distance_of(v.spec->id)}});
        }
      }
      if (state.lead && state.lead->braking && state.lead->id == prev_lead_id && !prev_lead_braking)
        add("lead_brakes", state.lead->id, {{"distance", state.lead->distance}});
      if (state.ego_lane != prev_ego_lane) add("ego_lane_change", "ego", {{"from", prev_ego_lane}, {"to", state.ego_lane}});
    }
    const uint32_t before = have_prev ? prev_hazards : 0;
    for (int i = 0; i < kNumHazards; ++i) {
      const uint32_t bit = 1u << i;
      if ((state.hazards & bit) && !(before & bit)) add("hazard_start", kHazardNames[static_cast<size_t>(i)], json::object());
      if (!(state.hazards & bit) && (before & bit)) add("hazard_end", kHazardNames[static_cast<size_t>(i)], json::object());
    }
    // Remember this frame.
    prev_lights = lights;
    prev_braking.resize(veh.size());
    prev_changing.resize(veh.size());
    for (size_t i = 0; i < veh.size(); ++i) {
      prev_braking[i] = veh[i].braking;
      prev_changing[i] = veh[i].changing;
    }
    prev_on_road.resize(peds.size());
    for (size_t i = 0; i < peds.size(); ++i) {
      const auto& lay = w.layout();
      prev_on_road[i] = peds[i].d > lay.left_edge() && peds[i].d < lay.right_edge();
    }
    prev_hazards = state.hazards;
    prev_lead_id = state.lead ? state.lead->id : "";
    prev_lead_braking = state.lead && state.lead->braking;
    prev_ego_lane = state.ego_lane;
    have_prev = true;
  }
};

Simulator::Simulator() : impl_(std::make_unique<Impl>()) {}
Simulator::~Simulator() = default;
Simulator::Simulator(Simulator&&) noexcept = default;
Simulator& Simulator::operator=(Simulator&&) noexcept = default;

Result<Simulator> Simulator::create(const ScenarioSpec& spec) {
  EV_RETURN_IF_ERROR(validate_scenario_spec(spec));
  Simulator s;
  s.impl_->spec = spec;
  s.impl_->build();
  return s;
}

bool Simulator::next(Frame* out, FrameTruth* truth) {
  Impl& m = *impl_;
  if (m.done) return false;
  World& w = *m.world;
  if (w.frame() >= m.spec.frames) {
    m.done = true;
    return false;
  }
  w.compute_state(&m.state);
  std::vector<Event> ev;
  m.events(&ev);
  if (out) {
    out->width = m.spec.width;
    out->height = m.spec.height;
    out->rgb.resize(static_cast<size_t>(m.spec.width) * m.spec.height * 3);
    m.renderer->render(w, out->rgb.data());
  }
  if (truth) {
    truth->frame = w.frame();
    truth->t = w.time();
    truth->state = m.state;
    truth->description = describe(m.state);
    truth->qa = make_qa(m.state);
    truth->events = std::move(ev);
    truth->hazards = m.state.hazards;
  }
  if (w.frame() + 1 >= m.spec.frames) {
    m.done = true;
    // Keep the world at the last frame; frame_index() reports frames.
  } else {
    w.step();
  }
  return true;
}

void Simulator::skip(int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!next(nullptr, nullptr)) return;
}

void Simulator::reset() { impl_->build(); }

int64_t Simulator::frame_index() const { return impl_->done ? impl_->spec.frames : impl_->world->frame(); }
int64_t Simulator::frame_count() const { return impl_->spec.frames; }
double Simulator::fps() const { return impl_->spec.fps; }
int Simulator::width() const { return impl_->spec.width; }
int Simulator::height() const { return impl_->spec.height; }
const ScenarioSpec& Simulator::spec() const { return impl_->spec; }

uint64_t frame_hash(const Frame& f) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : f.rgb) h = (h ^ b) * 0x100000001b3ull;
  h = (h ^ static_cast<uint64_t>(f.width)) * 0x100000001b3ull;
  h = (h ^ static_cast<uint64_t>(f.height)) * 0x100000001b3ull;
  return h;
}

}  // namespace ev::sim
