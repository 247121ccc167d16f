#include "tools/eval.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>

#include "core/clock.h"
#include "perception/image.h"
#include "models/token_prune.h"
#include "runtime/engine.h"
#include "runtime/semantic_state.h"
#include "sim/simulator.h"
#include "tools/eval_scoring.h"
#include "tools/report.h"
#include "tools/sim_frames.h"

namespace ev {

namespace {

struct Counts {
  int64_t tp = 0, fp = 0, fn = 0, positives = 0;
};

Status check(const EvalOptions& o) {
  if (o.model.empty()) return InvalidArgument("--model is required");
  if (o.specs.empty() && (o.scenarios < 1 || o.scenarios > 100000))
    return InvalidArgument("--scenarios must be in [1, 100000]");
  if (o.frames == 0 || o.frames < -1 || o.frames > 10000000) return InvalidArgument("--frames must be in [1, 10^7]");
  if (o.every < 1 || o.every > 1000000) return InvalidArgument("--every must be in [1, 10^6]");
  if (o.max_tokens < 1 || o.max_tokens > 4096) return InvalidArgument("--max-tokens must be in [1, 4096]");
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("--threads must be in [0, 1024]");
  return Status::Ok();
}

}  // namespace

void add_eval_options(CLI::App& app, EvalOptions& o) {
  app.add_option("--model", o.model, "model directory (Hugging Face layout) of a road-scene model")->required();
  app.add_option("--spec", o.specs, "scenario spec file (repeatable)");
  app.add_option("--seed", o.seed, "first seed of random scenarios (default: the held-out range 1000000..)");
  app.add_option("--scenarios", o.scenarios, "random scenarios to run (with --seed)");
  app.add_option("--frames", o.frames, "frames per scenario (default: the spec's length; random: 150)");
  app.add_option("--every", o.every, "evaluate every M-th frame");
  app.add_option("--max-tokens", o.max_tokens, "maximum tokens of a description");
  app.add_option("--precision", o.precision, "compute precision: auto, f32 or bf16");
  app.add_option("--threads", o.threads, "threads (0: all)");
  app.add_option("--device", o.device, "cpu, cuda or cuda:N");
  app.add_flag("--print", o.print, "print the model's description of every evaluated frame as the scene unfolds");
  app.add_flag("--json", o.json, "print the JSON result instead of the table");
  app.add_option("--out", o.out, "also write the JSON result to this file");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
  app.add_option("--prune", o.prune,
                 "token pruning: none, auto, or items L:R (after layer L keep fraction R of the tokens), llm:R, "
                 "random[=SEED], input:S; repeatable to compare variants on the same frames; SPEC@DIR runs DIR's model");
  app.add_option("--plot", o.plot, "with several --prune variants: write accuracy against vision time as SVG here");
  app.add_flag("--replay", o.replay,
               "replay every frame through the stream policy (key frames, language cadence, temporal adapter, "
               "hysteresis) in stream time, against the same model frame by frame: accuracy, flicker, event delay");
  app.add_option("--language-hz", o.language_hz, "--replay: language cadence (Hz)");
  app.add_option("--keyframe-threshold", o.thresholds, "--replay: key-frame threshold(s), comma-separated")
      ->delimiter(',');
  app.add_option("--keyframe-max-age", o.max_ages, "--replay: maximum anchor age(s) in seconds, comma-separated")
      ->delimiter(',');
  app.add_option("--keyframe-hazard-delta", o.hazard_deltas,
                 "--replay: fast-head probability change(s) that make a key frame (0: off), comma-separated")
      ->delimiter(',');
  app.add_option("--min-confidence", o.min_confidences,
                 "--replay: ignore a field change whose value the model gave a lower probability, comma-separated")
      ->delimiter(',');
  app.add_option("--hysteresis", o.hysteresis, "--replay: hysteresis setting(s), comma-separated")->delimiter(',');
  app.add_option("--vote-window", o.vote_windows,
                 "--replay: majority-vote window(s) over each field's last outputs, comma-separated")
      ->delimiter(',');
  app.add_option("--gated", o.gated,
                 "--replay: 1: hysteresis only for outputs of frames whose scene did not change; 0: always; "
                 "comma-separated")
      ->delimiter(',');
  app.add_flag("--no-temporal", o.no_temporal, "--replay: do not apply the model's temporal adapter");
  app.add_option("--clip", o.clips, "--replay: also report key-frame rates on this video (repeatable)");
  app.add_option("--latency-frames", o.latency_frames,
                 "--replay: frames between a described frame and the frame its output is reported from");
}

Result<std::vector<sim::ScenarioSpec>> eval_scenarios(const EvalOptions& o, int tile_size) {
  std::vector<sim::ScenarioSpec> specs;
  for (const auto& path : o.specs) {
    EV_ASSIGN_OR_RETURN(sim::ScenarioSpec s, sim::load_scenario_spec(path));
    specs.push_back(std::move(s));
  }
  if (o.specs.empty()) {
    sim::RandomScenarioOptions ro;
    ro.width = ro.height = tile_size;
    if (o.frames > 0) ro.frames = o.frames;
    for (int i = 0; i < o.scenarios; ++i) specs.push_back(sim::random_scenario(o.seed + static_cast<uint64_t>(i), ro));
  }
  for (auto& s : specs) {
    s.width = s.height = tile_size;
    if (o.frames > 0) s.frames = o.frames;
  }
  return specs;
}

Result<std::unique_ptr<Engine>> eval_engine(const EvalOptions& o) {
  EV_RETURN_IF_ERROR(check(o));
  EngineOptions eo;
  eo.threads = o.threads;
  eo.device = o.device;
  EV_RETURN_IF_ERROR(parse_precision_option(o.precision, &eo).with_context("--precision"));
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> e, Engine::load(o.model, eo));
  if (o.replay && o.prune.size() > 1) return InvalidArgument("--replay takes one --prune setting");
  if (o.replay && !o.prune.empty()) {
    if (o.prune[0].find('@') != std::string::npos) return InvalidArgument("--replay: --prune SPEC@DIR is not supported");
    EV_RETURN_IF_ERROR(e->set_prune(o.prune[0]).with_context("--prune"));
  }
  return e;
}

namespace {

// One evaluated configuration: a model (the --model one, or SPEC@DIR's) with a pruning spec, and its tallies.
struct Variant {
  std::string label;
  std::string model;
  Engine* eng = nullptr;
  PruneSpec spec;
  std::vector<int> class_bit;  // fast-head class -> sim hazard bit (-1: unknown)
  std::map<std::string, int64_t> field_ok;
  std::vector<Counts> hz;
  int64_t n = 0, exact = 0, unparsed = 0;
  double t_model = 0;
  std::vector<double> vision_s;
  int64_t tokens = 0;  // connector tokens given to the language model per frame
  TruthScorer scorer;
  FieldStabilizer reported;
};

std::string method_of(const PruneSpec& p) {
  if (p.input_size > 0) return "downscale";
  if (!p.active()) return "none";
  if (p.score == PruneSpec::Score::kRandom) return "random";
  return "attention";
}

nlohmann::json variant_json(Variant& v, size_t n_specs) {
  nlohmann::json j;
  const FastHead* fh = v.eng->fast_head();
  j["frames"] = v.n;
  nlohmann::json pf = nlohmann::json::object();
  double mean = 0;
  for (const char* fld : sim::kDescriptionFields) {
    pf[fld] = double(v.field_ok[fld]) / std::max<int64_t>(v.n, 1);
    mean += double(v.field_ok[fld]) / std::max<int64_t>(v.n, 1);
  }
  j["per_field"] = pf;
  j["field_order"] = sim::kDescriptionFields;
  j["mean_field_accuracy"] = mean / static_cast<double>(sim::kDescriptionFields.size());
  j["exact_match"] = double(v.exact) / std::max<int64_t>(v.n, 1);
  j["unparsed"] = v.unparsed;
  if (fh) {
    nlohmann::json fj = nlohmann::json::object();
    for (size_t c = 0; c < v.class_bit.size(); ++c) {
      const Counts& k = v.hz[c];
      fj[fh->config().classes[c]] = {
          {"recall", k.tp + k.fn ? double(k.tp) / double(k.tp + k.fn) : 1.0},
          {"precision", k.tp + k.fp ? double(k.tp) / double(k.tp + k.fp) : 1.0},
          {"positives", k.positives},
          {"known", v.class_bit[c] >= 0}};
    }
    j["fast_head"] = fj;
    j["fast_head_classes"] = fh->config().classes;
    j["fast_head_threshold"] = fh->config().threshold;
  }
  v.scorer.new_sequence();
  std::vector<double> d = v.scorer.event_delay_s;
  std::sort(d.begin(), d.end());
  j["flicker"] = v.scorer.flicker_raw_total();
  j["flicker_per_field"] = v.scorer.flicker_raw;
  j["consecutive_outputs"] = v.scorer.outputs - static_cast<int64_t>(n_specs);
  j["events"] = static_cast<int64_t>(d.size()) + v.scorer.events_missed + v.scorer.events_open_at_end;
  j["events_shown"] = d.size();
  j["event_delay_s"] = {{"p50", d.empty() ? 0.0 : d[d.size() / 2]}, {"max", d.empty() ? 0.0 : d.back()}};
  j["model_seconds_per_frame"] = v.t_model / std::max<int64_t>(v.n, 1);
  std::vector<double> vs = v.vision_s;
  std::sort(vs.begin(), vs.end());
  j["vision_ms"] = {{"p50", 1e3 * quantile(vs, 0.5)}, {"p10", 1e3 * quantile(vs, 0.1)}, {"p90", 1e3 * quantile(vs, 0.9)}};
  j["prune"] = v.spec.to_string();
  j["method"] = method_of(v.spec);
  j["label"] = v.label;
  j["model"] = v.model;
  j["precision"] = v.eng->precision_label();
  j["image_tokens"] = v.tokens;
  return j;
}

}  // namespace

Result<nlohmann::json> eval_json(const EvalOptions& o) {
  EV_RETURN_IF_ERROR(check(o));
  // Engines by model directory (variants SPEC@DIR bring their own), each loaded once.
  std::map<std::string, std::unique_ptr<Engine>> engines;
  auto engine_for = [&](const std::string& dir) -> Result<Engine*> {
    auto it = engines.find(dir);
    if (it != engines.end()) return it->second.get();
    EvalOptions oo = o;
    oo.model = dir;
    EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> e, eval_engine(oo));
    Engine* p = e.get();
    engines[dir] = std::move(e);
    return p;
  };
  std::vector<Variant> vars;
  const std::vector<std::string> prunes = o.prune.empty() ? std::vector<std::string>{"none"} : o.prune;
  for (const std::string& item : prunes) {
    Variant v;
    const size_t at = item.find('@');
    v.model = at == std::string::npos ? o.model : item.substr(at + 1);
    const std::string spec = at == std::string::npos ? item : item.substr(0, at);
    EV_ASSIGN_OR_RETURN(v.eng, engine_for(v.model));
    auto rs = resolve_prune_spec(spec, v.eng->config(), v.eng->auto_prune_spec());
    if (!rs.ok()) return rs.status().with_context("--prune " + item);
    v.spec = *rs;
    v.label = v.spec.to_string() + (at == std::string::npos ? "" : "@" + v.model);
    vars.push_back(std::move(v));
  }
  Engine* eng = vars[0].eng;
  const int S = eng->model().tile_size();
  const std::string prompt = eng->describe_prompt();
  for (auto& v : vars) {
    if (v.eng->model().tile_size() != S)
      return InvalidArgument("--prune " + v.label + ": the model's tile size " +
                             std::to_string(v.eng->model().tile_size()) + " differs from " + std::to_string(S));
    // Fast-head classes -> sim hazard bits, by name.
    if (const FastHead* fh = v.eng->fast_head()) v.class_bit = fast_head_hazard_bits(*fh);
    v.hz.resize(v.class_bit.size());
    for (const char* f : sim::kDescriptionFields) v.field_ok[f] = 0;
  }

  EV_ASSIGN_OR_RETURN(std::vector<sim::ScenarioSpec> specs, eval_scenarios(o, S));

  int64_t total_frames = 0;
  for (const auto& s : specs) total_frames += (s.frames + o.every - 1) / o.every;
  StatusLine sl("eval", o.progress && !o.print);
  const double t0 = now_s();
  nlohmann::json per_scenario = nlohmann::json::array();
  GenerateOptions g;
  g.max_new_tokens = o.max_tokens;
  g.image_splitting = 0;
  int64_t n = 0;
  for (size_t si = 0; si < specs.size(); ++si) {
    EV_ASSIGN_OR_RETURN(sim::Simulator simu, sim::Simulator::create(specs[si]));
    sim::Frame f;
    sim::FrameTruth truth;
    int64_t sn = 0, sexact = 0;
    for (auto& v : vars) {
      v.reported = FieldStabilizer();  // the last output of each field, for flicker and event delay
      v.scorer.new_sequence();
    }
    if (o.print) std::printf("== scenario %zu (seed %llu, %lld frames)\n", si, static_cast<unsigned long long>(specs[si].seed),
                             static_cast<long long>(specs[si].frames));
    for (int64_t fi = 0; fi < specs[si].frames; fi += o.every) {
      if (fi > 0) simu.skip(o.every - 1);
      if (!simu.next(&f, &truth)) break;
      const std::map<std::string, std::string> want = sim::description_fields(truth.state);
      const Image img = sim_frame_image(f);
      // Every variant on the same frame, back to back: their times share the machine's momentary load.
      for (size_t vi = 0; vi < vars.size(); ++vi) {
        Variant& v = vars[vi];
        v.eng->set_prune(v.spec);
        const double ts = now_s();
        EV_ASSIGN_OR_RETURN(GenerateResult r, v.eng->describe({img}, prompt, g));
        v.t_model += now_s() - ts;
        v.vision_s.push_back(r.stats.vision_s);
        v.tokens = v.eng->pruned_tokens_per_tile();
        const DescriptionScore sc = score_description(r.text, want);
        const bool all = sc.all;
        if (!sc.parsed) ++v.unparsed;
        for (const char* fld : sim::kDescriptionFields) v.field_ok[fld] += sc.field_ok.at(fld);
        v.exact += all;
        if (vi == 0) sexact += all;
        {
          const Fields& out = sc.got;
          const Fields before = v.reported.fields();
          v.scorer.on_output(out, v.reported.update(out), before, want);
          v.scorer.on_frame(v.reported.fields(), want, static_cast<double>(truth.frame) / specs[si].fps);
        }
        ++v.n;
        const FastHead* fh = v.eng->fast_head();
        if (fh && !r.fast_head.empty()) {
          for (size_t c = 0; c < v.class_bit.size(); ++c) {
            if (v.class_bit[c] < 0) continue;
            const bool truth_on = (truth.hazards >> v.class_bit[c]) & 1u;
            const bool pred = r.fast_head[0][c] >= fh->config().threshold;
            v.hz[c].positives += truth_on;
            v.hz[c].tp += pred && truth_on;
            v.hz[c].fp += pred && !truth_on;
            v.hz[c].fn += !pred && truth_on;
          }
        }
        if (o.print) {
          std::string text = r.text;
          while (!text.empty() && text.front() == ' ') text.erase(text.begin());
          if (vars.size() > 1) std::printf("[%s] ", v.label.c_str());
          std::printf("frame %4lld  %s %s\n", static_cast<long long>(truth.frame), all ? "ok  " : "MISS", text.c_str());
          if (!all) std::printf("            truth %s\n", truth.description.c_str());
          if (vi + 1 == vars.size())
            for (const auto& ev : truth.events)
              std::printf("            event %s %s\n", ev.type.c_str(), ev.actor.c_str());
          std::fflush(stdout);
        }
      }
      ++n;
      ++sn;
      const double el = now_s() - t0;
      sl.update("scenario %zu/%zu, frame %lld/%lld, %.1f frames/s, exact %.1f%%", si + 1, specs.size(),
                static_cast<long long>(n), static_cast<long long>(total_frames), n / std::max(el, 1e-9),
                100.0 * vars[0].exact / std::max<int64_t>(n, 1));
    }
    per_scenario.push_back({{"seed", specs[si].seed}, {"frames", sn}, {"exact_match", sn ? double(sexact) / sn : 0.0}});
  }
  sl.done();
  if (n == 0) return InvalidArgument("no frame was evaluated");

  nlohmann::json j = variant_json(vars[0], specs.size());
  j["tool"] = "eval";
  j["model"] = o.model;
  j["prompt"] = prompt;
  j["scenarios"] = per_scenario;
  if (vars.size() > 1) {
    nlohmann::json va = nlohmann::json::array();
    for (auto& v : vars) va.push_back(variant_json(v, specs.size()));
    j["variants"] = va;
  }
  j["wall_s"] = now_s() - t0;
  return j;
}

std::string eval_table(const nlohmann::json& j) {
  std::string o = strf("edgevlm eval: %s (%s), %lld frames of %zu scenarios, prompt \"%s\"\n\n",
                       j.value("model", "").c_str(), j.value("precision", "").c_str(),
                       static_cast<long long>(j.value("frames", 0)), j.at("scenarios").size(),
                       j.value("prompt", "").c_str());
  TextTable t({"field", "accuracy"});
  for (const auto& f : j.at("field_order")) {
    const std::string k = f.get<std::string>();
    t.add_row({k, fmt_percent(j.at("per_field").value(k, 0.0))});
  }
  t.add_separator();
  t.add_row({"mean of fields", fmt_percent(j.value("mean_field_accuracy", 0.0))});
  t.add_row({"exact match", fmt_percent(j.value("exact_match", 0.0))});
  o += t.render();
  if (j.contains("fast_head")) {
    o += strf("\nfast head (threshold %.2f):\n", j.value("fast_head_threshold", 0.5));
    TextTable h({"hazard", "positives", "recall", "precision"});
    for (const auto& cls : j.at("fast_head_classes")) {
      const std::string name = cls.get<std::string>();
      const auto& v = j.at("fast_head").at(name);
      h.add_row({name, strf("%lld", static_cast<long long>(v.value("positives", 0))), fmt_percent(v.value("recall", 0.0)),
                 fmt_percent(v.value("precision", 0.0))});
    }
    o += h.render();
  }
  if (j.contains("flicker"))
    o += strf("\nflicker: %lld changes of a field between consecutive evaluated frames while its truth stood "
              "(%lld pairs); truth changes shown %lld of %lld, delay p50 %.0f ms, max %.0f ms\n",
              static_cast<long long>(j.value("flicker", 0)), static_cast<long long>(j.value("consecutive_outputs", 0)),
              static_cast<long long>(j.value("events_shown", 0)), static_cast<long long>(j.value("events", 0)),
              1e3 * j["event_delay_s"].value("p50", 0.0), 1e3 * j["event_delay_s"].value("max", 0.0));
  o += strf("\nmodel time %s per frame (vision + fast head + description), vision %.2f ms (p50); %lld unparsable "
            "answers; pruning %s\n",
            fmt_seconds(j.value("model_seconds_per_frame", 0.0)).c_str(), j["vision_ms"].value("p50", 0.0),
            static_cast<long long>(j.value("unparsed", 0)), j.value("prune", "none").c_str());
  if (j.contains("variants")) {
    o += "\nvariants (each on every frame, back to back):\n";
    const double base_ms = j["variants"][0]["vision_ms"].value("p50", 0.0);
    const double base_acc = j["variants"][0].value("mean_field_accuracy", 0.0);
    TextTable t({"variant", "method", "image tokens", "vision p50", "speed-up", "mean of fields", "vs first",
                 "exact", "flicker"});
    for (const auto& v : j["variants"]) {
      const double ms = v["vision_ms"].value("p50", 0.0), acc = v.value("mean_field_accuracy", 0.0);
      t.add_row({v.value("label", ""), v.value("method", ""), strf("%lld", static_cast<long long>(v.value("image_tokens", 0))),
                 strf("%.2f ms", ms), strf("%.2fx", ms > 0 ? base_ms / ms : 0.0), fmt_percent(acc),
                 strf("%+.1f", 100.0 * (acc - base_acc)), fmt_percent(v.value("exact_match", 0.0)),
                 strf("%lld", static_cast<long long>(v.value("flicker", 0)))});
    }
    o += t.render();
  }
  return o;
}

std::string eval_plot_svg(const nlohmann::json& j) {
  std::vector<SvgScatterSeries> series;
  auto series_for = [&](const std::string& name) -> SvgScatterSeries& {
    for (auto& s : series)
      if (s.name == name) return s;
    static const std::map<std::string, std::string> colors = {
        {"none", "#333333"}, {"attention", "#e15759"}, {"random", "#4e79a7"}, {"downscale", "#59a14f"}};
    SvgScatterSeries s;
    s.name = name;
    const auto it = colors.find(name.substr(0, name.find(' ')));
    s.color = it != colors.end() ? it->second : "#b07aa1";
    series.push_back(s);
    return series.back();
  };
  const nlohmann::json& vars = j.contains("variants") ? j["variants"] : nlohmann::json::array({j});
  for (const auto& v : vars) {
    const bool other_model = v.value("model", "") != j.value("model", "");
    std::string name = v.value("method", "none");
    if (other_model) name += " (" + v.value("model", "") + ")";
    SvgScatterPoint p;
    p.x = v["vision_ms"].value("p50", 0.0);
    p.y = 100.0 * v.value("mean_field_accuracy", 0.0);
    p.label = v.value("prune", "none");
    series_for(name).points.push_back(p);
  }
  return render_scatter_svg(strf("edgevlm eval: accuracy against vision time, %s, %lld frames",
                                 j.value("model", "").c_str(), static_cast<long long>(j.value("frames", 0))),
                            "vision stage, median ms per frame", "mean field accuracy (%)", series);
}

Status run_eval(const EvalOptions& o) {
  EV_ASSIGN_OR_RETURN(nlohmann::json j, o.replay ? eval_replay_json(o) : eval_json(o));
  if (!o.out.empty()) {
    std::ofstream f(o.out);
    if (!f) return IoError("cannot write " + o.out);
    f << j.dump(2) << "\n";
  }
  if (!o.plot.empty()) EV_RETURN_IF_ERROR(write_text_file(o.plot, eval_plot_svg(j)));
  if (o.json)
    std::printf("%s\n", j.dump(2).c_str());
  else
    std::printf("%s", (o.replay ? eval_replay_table(j) : eval_table(j)).c_str());
  return Status::Ok();
}

}  // namespace ev
