#include "sim/truth.h"

#include <cctype>

namespace ev::sim {

using nlohmann::json;

const char* name(PedField v) {
  static const char* k[] = {"none", "sidewalk", "crossing left", "crossing center", "crossing right"};
  return k[static_cast<int>(v)];
}

std::string hazard_list(uint32_t bits) {
  std::string s;
  for (int i = 0; i < kNumHazards; ++i) {
    if (bits & (1u << i)) {
      if (!s.empty()) s += ", ";
      s += kHazardNames[static_cast<size_t>(i)];
    }
  }
  return s.empty() ? "none" : s;
}

namespace {

std::string lead_text(const SceneState& s) {
  if (!s.lead) return "none";
  std::string t = std::string(name(s.lead->colour)) + " " + name(s.lead->type);
  if (s.lead->braking) t += " braking";
  return t;
}

std::string sign_text(const SceneState& s) {
  if (!s.sign) return "none";
  if (*s.sign == SignType::kSpeed) return "speed " + std::to_string(s.sign_value);
  return name(*s.sign);
}

std::string normalise(const std::string& in) {
  std::string o;
  bool space = false;
  for (char c : in) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (std::isspace(u)) {
      space = !o.empty();
      continue;
    }
    if (space) o += ' ';
    space = false;
    o += static_cast<char>(std::tolower(u));
  }
  return o;
}

}  // namespace

std::map<std::string, std::string> description_fields(const SceneState& s) {
  return {{"light", s.light ? name(*s.light) : "none"},
          {"pedestrian", name(s.pedestrian)},
          {"lead", lead_text(s)},
          {"sign", sign_text(s)},
          {"construction", s.construction ? "yes" : "no"},
          {"lighting", name(s.lighting)},
          {"weather", name(s.weather)},
          {"hazard", hazard_list(s.hazards)}};
}

std::string describe(const SceneState& s) {
  const auto f = description_fields(s);
  std::string out;
  for (const char* k : kDescriptionFields) {
    if (!out.empty()) out += "; ";
    out += k;
    out += ": ";
    out += f.at(k);
  }
  return out;
}

Result<std::map<std::string, std::string>> parse_description(const std::string& text) {
  std::map<std::string, std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(';', start);
    if (end == std::string::npos) end = text.size();
    const std::string part = text.substr(start, end - start);
    start = end + 1;
    const size_t colon = part.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = normalise(part.substr(0, colon));
    const std::string value = normalise(part.substr(colon + 1));
    bool known = false;
    for (const char* k : kDescriptionFields) known = known || key == k;
    if (!known || out.count(key)) continue;  // first occurrence wins
    out[key] = value;
  }
  if (out.empty()) return InvalidArgument("description has none of the fields light, pedestrian, lead, sign, "
                                          "construction, lighting, weather, hazard: '" + text.substr(0, 200) + "'");
  return out;
}

uint32_t parse_hazard_list(const std::string& value) {
  uint32_t bits = 0;
  size_t start = 0;
  const std::string v = normalise(value);
  while (start <= v.size()) {
    size_t end = v.find(',', start);
    if (end == std::string::npos) end = v.size();
    const std::string item = normalise(v.substr(start, end - start));
    start = end + 1;
    for (int i = 0; i < kNumHazards; ++i)
      if (item == kHazardNames[static_cast<size_t>(i)]) bits |= 1u << i;
  }
  return bits;
}

std::vector<QAPair> make_qa(const SceneState& s) {
  std::vector<QAPair> qa;
  qa.reserve(11);
  qa.push_back({"What colour is the traffic light?", s.light ? name(*s.light) : "none"});
  const bool crossing = s.pedestrian >= PedField::kCrossingLeft;
  qa.push_back({"Is a pedestrian crossing the road?", crossing ? "yes" : "no"});
  qa.push_back({"Where is the crossing pedestrian?",
                s.pedestrian == PedField::kCrossingLeft
                    ? "left"
                    : (s.pedestrian == PedField::kCrossingCenter ? "center"
                                                                 : (s.pedestrian == PedField::kCrossingRight ? "right" : "none"))});
  qa.push_back({"What vehicle is ahead?", s.lead ? std::string(name(s.lead->colour)) + " " + name(s.lead->type) : "none"});
  qa.push_back({"Is the vehicle ahead braking?", s.lead && s.lead->braking ? "yes" : "no"});
  qa.push_back({"What sign is ahead?", !s.sign ? "none" : (*s.sign == SignType::kSpeed ? "speed limit" : name(*s.sign))});
  qa.push_back({"What is the speed limit?", s.sign && *s.sign == SignType::kSpeed ? std::to_string(s.sign_value) : "none"});
  qa.push_back({"Is there a construction zone ahead?", s.construction ? "yes" : "no"});
  qa.push_back({"Is it day, dusk or night?", name(s.lighting)});
  qa.push_back({"What is the weather?", name(s.weather)});
  qa.push_back({"What are the hazards?", hazard_list(s.hazards)});
  return qa;
}

json to_json(const Event& e) {
  json j = {{"type", e.type}, {"actor", e.actor}, {"frame", e.frame}, {"t", e.t}};
  for (auto it = e.details.begin(); it != e.details.end(); ++it) j[it.key()] = it.value();
  return j;
}

namespace {

double r3(double v) { return static_cast<double>(static_cast<int64_t>(v * 1000.0 + (v >= 0 ? 0.5 : -0.5))) / 1000.0; }

}  // namespace

json to_json(const SceneState& s) {
  json objs = json::array();
  for (const auto& o : s.objects) {
    json j = {{"id", o.id},
              {"kind", o.kind},
              {"class", o.cls},
              {"s", r3(o.s)},
              {"d", r3(o.d)},
              {"distance", r3(o.distance)},
              {"lateral", r3(o.lateral)},
              {"box", {r3(o.box.x0), r3(o.box.y0), r3(o.box.x1), r3(o.box.y1)}},
              {"in_frame", r3(o.in_frame)},
              {"occluded", r3(o.occluded)},
              {"contrast", r3(o.contrast)},
              {"visible", o.visible}};
    if (!o.colour.empty()) j["colour"] = o.colour;
    if (o.kind == "vehicle") {
      j["speed"] = r3(o.speed);
      j["lane"] = o.lane;
      j["braking"] = o.braking;
      if (o.changing_lane) j["target_lane"] = o.target_lane;
    } else if (o.kind == "pedestrian") {
      j["speed"] = r3(o.speed);
      j["on_road"] = o.on_road;
    } else if (o.kind == "traffic_light") {
      j["state"] = o.state;
    } else if (o.kind == "sign" && o.cls == "speed") {
      j["value"] = o.value;
    }
    objs.push_back(std::move(j));
  }
  json lead = nullptr;
  if (s.lead) {
    lead = {{"id", s.lead->id}, {"type", name(s.lead->type)}, {"colour", name(s.lead->colour)},
            {"braking", s.lead->braking}, {"distance", r3(s.lead->distance)}};
  }
  json hz = json::array();
  for (int i = 0; i < kNumHazards; ++i)
    if (s.hazards & (1u << i)) hz.push_back(kHazardNames[static_cast<size_t>(i)]);
  return {{"frame", s.frame},
          {"t", r3(s.t)},
          {"ego", {{"s", r3(s.ego_s)}, {"d", r3(s.ego_d)}, {"lane", s.ego_lane}, {"speed", r3(s.ego_speed)},
                   {"accel", r3(s.ego_accel)}}},
          {"lighting", name(s.lighting)},
          {"weather", name(s.weather)},
          {"light", s.light ? json(name(*s.light)) : json(nullptr)},
          {"light_id", s.light ? json(s.light_id) : json(nullptr)},
          {"light_distance", s.light ? json(r3(s.light_distance)) : json(nullptr)},
          {"pedestrian", name(s.pedestrian)},
          {"pedestrian_id", s.pedestrian_id.empty() ? json(nullptr) : json(s.pedestrian_id)},
          {"lead", lead},
          {"sign", s.sign ? json(name(*s.sign)) : json(nullptr)},
          {"sign_value", s.sign && *s.sign == SignType::kSpeed ? json(s.sign_value) : json(nullptr)},
          {"sign_id", s.sign ? json(s.sign_id) : json(nullptr)},
          {"sign_distance", s.sign ? json(r3(s.sign_distance)) : json(nullptr)},
          {"construction", s.construction},
          {"hazards", hz},
          {"objects", objs}};
}

json FrameTruth::to_json() const {
  json qaj = json::array();
  for (const auto& p : qa) qaj.push_back({{"q", p.question}, {"a", p.answer}});
  json ev = json::array();
  for (const auto& e : events) ev.push_back(sim::to_json(e));
  json hz = json::array();
  for (int i = 0; i < kNumHazards; ++i)
    if (hazards & (1u << i)) hz.push_back(kHazardNames[static_cast<size_t>(i)]);
  return {{"frame", frame}, {"t", r3(t)},   {"description", description}, {"hazards", hz},
          {"qa", qaj},      {"events", ev}, {"state", sim::to_json(state)}};
}

}  // namespace ev::sim
