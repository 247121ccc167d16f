// edgevlm eval --replay: the stream pipeline's policy replayed in stream time, deterministically, against the
// simulator's truth, side by side with the same model run frame by frame.
//
// Per scenario, every frame goes once through the vision side (vision tower, fast head, connector): the pooled
// vision features and the connector's output are kept. Then each policy runs over the frames in stream time
// (frame i at i / fps seconds):
//
//   stream policy   key frame <=> KeyframeAnchor(threshold, max age) on the pooled features; language ticks at
//                   language_hz; a tick with a key frame not yet described describes the newest one (through the
//                   temporal adapter with the previous key frame as its memory, when the model has one); the
//                   output goes through FieldStabilizer(hysteresis)
//   frame by frame  no anchoring, no adapter, no hysteresis: each tick describes the newest frame ("at cadence"),
//                   or every frame is described ("every frame")
//
// An output is reported from `latency_frames` frames after the frame it described (the language stage takes
// 20-40 ms for the shipped student, about one frame at 30 FPS). Every frame scores the reported fields against
// its truth (TruthScorer): accuracy at every frame, flicker, event delay. Language outputs are cached by (frame,
// memory frame), so sweeping many settings costs little more than one.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>

#include "core/clock.h"
#include "perception/keyframe.h"
#include "perception/video_source.h"
#include "runtime/engine.h"
#include "runtime/semantic_state.h"
#include "sim/simulator.h"
#include "tools/eval.h"
#include "tools/report.h"
#include "tools/sim_frames.h"

namespace ev {

namespace {

struct Policy {
  std::string name;          // "stream", "frame_by_frame_at_cadence", "frame_by_frame_every_frame"
  bool anchored = true;      // key-frame anchoring (else every frame is a candidate)
  bool temporal = true;
  double hz = 5;             // language ticks per second of stream time
  double threshold = 0, max_age = 1, hazard_delta = 0;
  int hysteresis = 1;
  int window = 1;            // majority-vote window of the stabiliser
  bool gated = false;        // hysteresis only for outputs of frames that did not change the scene
  double min_confidence = 0; // a field change the model is less sure of is ignored
};

struct Output {
  Fields fields;
  std::map<std::string, float> confidence;
};

struct Frame {
  Image image;
  EncodedImages enc;         // without the adapter
  std::vector<float> pooled;
  Fields truth;
  double pts = 0;
};

struct Outcome {
  TruthScorer scorer;
  int64_t frames = 0, keyframes = 0, runs = 0;
  double seconds = 0;        // stream time
};

class Replayer {
 public:
  Replayer(Engine& eng, const nlohmann::json& messages, int max_tokens) : eng_(eng), messages_(messages) {
    g_.max_new_tokens = max_tokens;
    g_.image_splitting = 0;
    g_.token_probs = true;  // per-field confidence (every policy's outputs come from this one cache)
  }

  // The parsed description of frame k (with memory frame m >= 0 through the adapter).
  Result<Output> describe(const std::vector<Frame>& fr, int64_t k, int64_t m) {
    const auto key = std::make_pair(k, m);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    std::optional<EncodedImages> adapted;
    if (m >= 0) {
      EV_ASSIGN_OR_RETURN(EncodedImages e, eng_.encode_images({fr[k].image}, 0, nullptr, &fr[m].enc.raw_embeds));
      adapted = std::move(e);
    }
    const double t0 = now_s();
    EV_ASSIGN_OR_RETURN(GenerateResult r, eng_.generate_encoded(adapted ? *adapted : fr[k].enc, messages_, g_));
    language_s_ += now_s() - t0;
    ++language_runs_;
    auto parsed = sim::parse_description(r.text);
    Output out;
    if (parsed.ok()) out.fields = *parsed;
    out.confidence = field_confidence(r.text, r.token_probs, r.token_text_end);
    cache_.emplace(key, out);
    return out;
  }

  Status run(const std::vector<Frame>& fr, double fps, const Policy& p, int latency_frames, Outcome* o) {
    KeyframeAnchor anchor({p.threshold, p.max_age, p.hazard_delta});
    FieldStabilizer stab(p.hysteresis, p.window, p.gated, p.min_confidence);
    const bool temporal = p.temporal && eng_.temporal_adapter() != nullptr;
    const double period = 1.0 / p.hz;
    double next_tick = 0;
    int64_t newest = -1, described = -1, last_key = -1;
    std::map<int64_t, int64_t> memory_of;  // key frame -> the key frame before it
    std::map<int64_t, bool> changed_scene;  // key frame -> made by a change (not by the anchor's age)
    struct Pending {
      int64_t from = 0, frame = 0;  // reported from frame `from`; describes frame `frame`
      Output out;
      bool scene_changed = true;
    };
    std::vector<Pending> pending;
    for (int64_t i = 0; i < static_cast<int64_t>(fr.size()); ++i) {
      const double t = fr[i].pts;
      if (p.anchored) {
        const std::vector<float>* hz = fr[i].enc.fast_head.empty() ? nullptr : &fr[i].enc.fast_head[0];
        const KeyReason why = anchor.decide(fr[i].pooled, hz, t);
        if (why != KeyReason::kNone) {
          changed_scene[i] = why != KeyReason::kAge;
          memory_of[i] = last_key;
          last_key = i;
          newest = i;
          ++o->keyframes;
        }
      } else {
        newest = i;
      }
      if (t + 1e-9 >= next_tick) {
        next_tick += period;
        if (next_tick <= t) next_tick = t + period;  // no catch-up burst
        if (newest > described) {
          const int64_t m = temporal && p.anchored ? memory_of[newest] : -1;
          EV_ASSIGN_OR_RETURN(Output out, describe(fr, newest, m));
          described = newest;
          ++o->runs;
          pending.push_back({i + latency_frames, newest, std::move(out), !p.anchored || changed_scene[newest]});
        }
      }
      while (!pending.empty() && pending.front().from <= i) {
        const Pending& q = pending.front();
        const Fields before = stab.fields();
        const std::vector<std::string> changed = stab.update(q.out.fields, q.scene_changed, &q.out.confidence);
        o->scorer.on_output(q.out.fields, changed, before, fr[q.frame].truth);
        pending.erase(pending.begin());
      }
      o->scorer.on_frame(stab.fields(), fr[i].truth, t);
    }
    o->frames += static_cast<int64_t>(fr.size());
    o->seconds += static_cast<double>(fr.size()) / fps;
    return Status::Ok();
  }

  void new_scenario() { cache_.clear(); }
  int64_t language_runs() const { return language_runs_; }
  double language_s() const { return language_s_; }

 private:
  Engine& eng_;
  nlohmann::json messages_;
  GenerateOptions g_;
  std::map<std::pair<int64_t, int64_t>, Output> cache_;
  int64_t language_runs_ = 0;
  double language_s_ = 0;
};

nlohmann::json outcome_json(const Policy& p, const Outcome& o, double fps) {
  const TruthScorer& s = o.scorer;
  nlohmann::json pf = nlohmann::json::object();
  double mean = 0;
  for (const char* f : sim::kDescriptionFields) {
    auto it = s.field_correct.find(f);
    const double a = s.truth_frames ? double(it == s.field_correct.end() ? 0 : it->second) / s.truth_frames : 0;
    pf[f] = a;
    mean += a;
  }
  mean /= static_cast<double>(sim::kDescriptionFields.size());
  const double minutes = o.seconds / 60;
  const double tick = 1.0 / p.hz + 1.0 / fps;  // one language tick (+ the frame the output takes)
  int64_t within = 0;
  for (double d : s.event_delay_s) within += d <= tick + 1e-9;
  const int64_t events = static_cast<int64_t>(s.event_delay_s.size()) + s.events_missed + s.events_open_at_end;
  return {{"policy", p.name},
          {"anchored", p.anchored},
          {"temporal", p.temporal},
          {"language_hz", p.hz},
          {"keyframe_threshold", p.threshold},
          {"keyframe_max_age_s", p.max_age},
          {"keyframe_hazard_delta", p.hazard_delta},
          {"hysteresis", p.hysteresis},
          {"vote_window", p.window},
          {"gated", p.gated},
          {"min_confidence", p.min_confidence},
          {"frames", o.frames},
          {"keyframe_rate", p.anchored && o.frames ? double(o.keyframes) / o.frames : 1.0},
          {"language_runs", o.runs},
          {"language_runs_per_s", o.seconds > 0 ? o.runs / o.seconds : 0.0},
          {"mean_field_accuracy", mean},
          {"per_field", pf},
          {"flicker", s.flicker_total()},
          {"flicker_raw", s.flicker_raw_total()},
          {"flicker_per_min", minutes > 0 ? s.flicker_total() / minutes : 0.0},
          {"flicker_per_field", s.flicker},
          {"events", events},
          {"events_shown", s.event_delay_s.size()},
          {"events_missed", s.events_missed},
          {"events_open_at_end", s.events_open_at_end},
          {"events_within_one_tick", within},
          {"event_delay_s",
           {{"p50", quantile(s.event_delay_s, 0.5)},
            {"p90", quantile(s.event_delay_s, 0.9)},
            {"max", s.event_delay_s.empty() ? 0.0 : *std::max_element(s.event_delay_s.begin(), s.event_delay_s.end())}}}};
}

Status check(const EvalOptions& o) {
  if (!(o.language_hz > 0 && o.language_hz <= 240)) return InvalidArgument("--language-hz must be in (0, 240]");
  if (o.thresholds.empty() || o.max_ages.empty() || o.hysteresis.empty())
    return InvalidArgument("--keyframe-threshold, --keyframe-max-age and --hysteresis need at least one value");
  for (double t : o.thresholds)
    if (!(t >= 0 && t <= 2)) return InvalidArgument("--keyframe-threshold values must be in [0, 2]");
  for (double a : o.max_ages)
    if (!(a > 0 && a <= 3600)) return InvalidArgument("--keyframe-max-age values must be in (0, 3600] s");
  for (int h : o.hysteresis)
    if (h < 1 || h > 100) return InvalidArgument("--hysteresis values must be in [1, 100]");
  for (double mc : o.min_confidences)
    if (!(mc >= 0 && mc <= 1)) return InvalidArgument("--min-confidence values must be in [0, 1]");
  for (double hd : o.hazard_deltas)
    if (!(hd >= 0 && hd <= 1)) return InvalidArgument("--keyframe-hazard-delta values must be in [0, 1]");
  for (int w : o.vote_windows)
    if (w < 1 || w > 100) return InvalidArgument("--vote-window values must be in [1, 100]");
  if (o.thresholds.size() * o.max_ages.size() * o.hysteresis.size() * o.vote_windows.size() *
          o.hazard_deltas.size() * o.min_confidences.size() > 1000)
    return InvalidArgument("more than 1000 settings to replay");
  if (o.latency_frames < 0 || o.latency_frames > 1000) return InvalidArgument("--latency-frames must be in [0, 1000]");
  return Status::Ok();
}

// Key-frame rates of a real clip (no truth) for each (threshold, max age).
Result<nlohmann::json> clip_rates(Engine& eng, const std::string& path, const EvalOptions& o, int64_t max_frames) {
  VideoSourceOptions vo;
  vo.max_frames = max_frames;
  EV_ASSIGN_OR_RETURN(std::unique_ptr<VideoSource> src, open_video_source(path, vo));
  std::vector<std::vector<float>> pooled;
  std::vector<double> pts;
  double vision_s = 0;
  VideoFrame f;
  for (;;) {
    EV_ASSIGN_OR_RETURN(bool more, src->next(&f));
    if (!more) break;
    Tensor vo_t;
    const double t0 = now_s();
    EV_ASSIGN_OR_RETURN(EncodedImages enc, eng.encode_images({f.image}, 0, &vo_t));
    vision_s += now_s() - t0;
    pooled.push_back(mean_pool(vo_t.data_as<const float>(), vo_t.dim(1), vo_t.dim(2)));
    pts.push_back(f.pts_s);
  }
  if (pooled.empty()) return InvalidArgument(path + ": no frame could be decoded");
  nlohmann::json rates = nlohmann::json::array();
  for (double th : o.thresholds)
    for (double age : o.max_ages) {
      KeyframeAnchor a({th, age});
      int64_t keys = 0;
      for (size_t i = 0; i < pooled.size(); ++i) keys += a.update(pooled[i], pts[i]);
      rates.push_back({{"keyframe_threshold", th}, {"keyframe_max_age_s", age},
                       {"keyframe_rate", double(keys) / static_cast<double>(pooled.size())}});
    }
  return nlohmann::json{{"clip", path},
                        {"source", src->describe()},
                        {"frames", pooled.size()},
                        {"vision_s_per_frame", vision_s / static_cast<double>(pooled.size())},
                        {"rates", rates}};
}

}  // namespace

Result<nlohmann::json> eval_replay_json(const EvalOptions& o) {
  EV_RETURN_IF_ERROR(check(o));
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> eng, eval_engine(o));
  const int S = eng->model().tile_size();
  EV_ASSIGN_OR_RETURN(nlohmann::json messages, Engine::user_turn(1, eng->describe_prompt()));

  EV_ASSIGN_OR_RETURN(std::vector<sim::ScenarioSpec> specs, eval_scenarios(o, S));

  // The policies: every combination of the stream settings, then the two frame-by-frame references.
  std::vector<Policy> policies;
  for (double th : o.thresholds)
    for (double age : o.max_ages)
      for (int h : o.hysteresis)
        for (int w : o.vote_windows)
          for (int gt : o.gated) {
            if (gt && h == 1) continue;  // gating without hysteresis is plain
            for (double hd : o.hazard_deltas)
              for (double mc : o.min_confidences)
                policies.push_back({"stream", true, !o.no_temporal, o.language_hz, th, age, hd, h, w, gt != 0, mc});
          }
  policies.push_back({"frame_by_frame_at_cadence", false, false, o.language_hz, 0, 1, 0, 1, 1, false, 0});
  policies.push_back({"frame_by_frame_every_frame", false, false, 0, 0, 1, 0, 1, 1, false, 0});
  std::vector<Outcome> outcomes(policies.size());

  Replayer rp(*eng, messages, o.max_tokens);
  StatusLine sl("eval --replay", o.progress);
  const double t0 = now_s();
  double vision_s = 0, fps = 30;
  int64_t total = 0;
  for (size_t si = 0; si < specs.size(); ++si) {
    EV_ASSIGN_OR_RETURN(sim::Simulator simu, sim::Simulator::create(specs[si]));
    fps = simu.fps();
    std::vector<Frame> fr;
    sim::Frame f;
    sim::FrameTruth truth;
    while (simu.next(&f, &truth)) {
      Frame x;
      x.image = sim_frame_image(f);
      Tensor vo;
      const double ts = now_s();
      EV_ASSIGN_OR_RETURN(x.enc, eng->encode_images({x.image}, 0, &vo));
      vision_s += now_s() - ts;
      x.pooled = mean_pool(vo.data_as<const float>(), vo.dim(1), vo.dim(2));
      x.truth = sim::description_fields(truth.state);
      x.pts = static_cast<double>(truth.frame) / fps;
      fr.push_back(std::move(x));
      sl.update("scenario %zu/%zu: vision, frame %zu", si + 1, specs.size(), fr.size());
    }
    total += static_cast<int64_t>(fr.size());
    rp.new_scenario();
    for (size_t k = 0; k < policies.size(); ++k) {
      Policy p = policies[k];
      if (p.hz <= 0) p.hz = fps;
      EV_RETURN_IF_ERROR(rp.run(fr, fps, p, o.latency_frames, &outcomes[k])
                             .with_context("scenario seed " + std::to_string(specs[si].seed)));
      sl.update("scenario %zu/%zu: policy %zu/%zu, %lld language runs", si + 1, specs.size(), k + 1, policies.size(),
                static_cast<long long>(rp.language_runs()));
    }
    for (auto& oc : outcomes) oc.scorer.new_sequence();
  }
  sl.done();
  if (total == 0) return InvalidArgument("no frame was replayed");

  nlohmann::json j;
  j["tool"] = "eval";
  j["mode"] = "replay";
  j["model"] = o.model;
  j["precision"] = eng->precision_label();
  j["temporal_adapter"] = eng->temporal_adapter() != nullptr;
  j["scenarios"] = specs.size();
  j["frames"] = total;
  j["fps"] = fps;
  j["latency_frames"] = o.latency_frames;
  j["vision_s_per_frame"] = vision_s / static_cast<double>(total);
  j["language_s_per_run"] = rp.language_runs() ? rp.language_s() / static_cast<double>(rp.language_runs()) : 0.0;
  nlohmann::json pol = nlohmann::json::array();
  for (size_t k = 0; k < policies.size(); ++k) {
    Policy p = policies[k];
    if (p.hz <= 0) p.hz = fps;
    pol.push_back(outcome_json(p, outcomes[k], fps));
  }
  // Flicker ratio of each stream setting against frame by frame at the same cadence.
  const double ref = pol[policies.size() - 2].value("flicker_per_min", 0.0);
  for (auto& p : pol)
    if (p["policy"] == "stream") p["flicker_reduction_vs_frame_by_frame"] = p.value("flicker_per_min", 0.0) > 0
                                                                                ? ref / p.value("flicker_per_min", 0.0)
                                                                                : (ref > 0 ? 1e9 : 1.0);
  j["policies"] = pol;
  nlohmann::json clips = nlohmann::json::array();
  for (const auto& c : o.clips) {
    EV_ASSIGN_OR_RETURN(nlohmann::json cj, clip_rates(*eng, c, o, o.frames > 0 ? o.frames : -1));
    clips.push_back(std::move(cj));
  }
  j["clips"] = clips;
  j["wall_s"] = now_s() - t0;
  return j;
}

std::string eval_replay_table(const nlohmann::json& j) {
  std::string o = strf("edgevlm eval --replay: %s (%s%s), %lld frames of %zu scenarios at %.0f FPS, outputs reported "
                       "%lld frame(s) after the frame they describe\n\n",
                       j.value("model", "").c_str(), j.value("precision", "").c_str(),
                       j.value("temporal_adapter", false) ? ", temporal adapter" : "",
                       static_cast<long long>(j.value("frames", 0)), static_cast<size_t>(j.value("scenarios", 0)),
                       j.value("fps", 30.0), static_cast<long long>(j.value("latency_frames", 1)));
  TextTable t({"policy", "thr", "age s", "hzd", "conf", "hyst", "vote", "key frames", "lang Hz", "accuracy", "flicker/min", "vs fbf",
               "events in 1 tick", "delay p50/max"});
  for (const auto& p : j.at("policies")) {
    const bool stream = p.value("policy", "") == "stream";
    t.add_row({stream ? std::string(p.value("temporal", false) ? "stream+adapter" : "stream")
                      : (p.value("policy", "") == "frame_by_frame_at_cadence" ? "frame by frame" : "every frame"),
               stream ? strf("%.3g", p.value("keyframe_threshold", 0.0)) : "-",
               stream ? strf("%.3g", p.value("keyframe_max_age_s", 0.0)) : "-",
               stream ? strf("%.2g", p.value("keyframe_hazard_delta", 0.0)) : "-",
               stream ? strf("%.2g", p.value("min_confidence", 0.0)) : "-",
               strf("%d%s", p.value("hysteresis", 1), p.value("gated", false) ? "g" : ""), strf("%d", p.value("vote_window", 1)), stream ? fmt_percent(p.value("keyframe_rate", 0.0)) : "-",
               strf("%.2f", p.value("language_runs_per_s", 0.0)), fmt_percent(p.value("mean_field_accuracy", 0.0)),
               strf("%.1f", p.value("flicker_per_min", 0.0)),
               stream ? strf("%.1fx", p.value("flicker_reduction_vs_frame_by_frame", 0.0)) : "-",
               strf("%lld/%lld", static_cast<long long>(p.value("events_within_one_tick", 0)),
                    static_cast<long long>(p.value("events", 0))),
               strf("%.0f/%.0f ms", 1e3 * p["event_delay_s"].value("p50", 0.0),
                    1e3 * p["event_delay_s"].value("max", 0.0))});
  }
  o += t.render();
  for (const auto& c : j.at("clips")) {
    o += strf("\n%s: %lld frames, vision %s per frame; key-frame rate:", c.value("source", "").c_str(),
              static_cast<long long>(c.value("frames", 0)), fmt_seconds(c.value("vision_s_per_frame", 0.0)).c_str());
    for (const auto& r : c.at("rates"))
      o += strf(" thr %.3g/age %.3g s: %s;", r.value("keyframe_threshold", 0.0), r.value("keyframe_max_age_s", 0.0),
                fmt_percent(r.value("keyframe_rate", 0.0)).c_str());
    o += "\n";
  }
  o += strf("\nvision %s per frame, language %s per run; 'vs fbf': flicker of frame by frame at the same cadence "
            "divided by this policy's\n",
            fmt_seconds(j.value("vision_s_per_frame", 0.0)).c_str(), fmt_seconds(j.value("language_s_per_run", 0.0)).c_str());
  return o;
}

}  // namespace ev
