#include "tools/profile.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "core/clock.h"
#include "core/thread_pool.h"
#include "graph/backend.h"
#include "kernels/cpu/ceilings.h"
#include "models/token_prune.h"
#include "runtime/engine.h"
#include "tools/random_model.h"
#include "tools/report.h"

namespace ev {

namespace {

struct Agg {
  int nodes = 0;
  double seconds = 0, flops = 0, bytes = 0;
  double attainable_time = 0;  // sum over nodes of the time each would take at its roofline (for the fraction)
};

// The time a node would take on the roofline: max(flops / peak, bytes / bandwidth).
double roofline_seconds(double flops, double bytes, double peak_gflops, double bw_gbs) {
  return std::max(flops / (peak_gflops * 1e9), bytes / (bw_gbs * 1e9));
}

nlohmann::json agg_json(const Agg& a, double total_s, double peak, double bw) {
  const double intensity = a.bytes > 0 ? a.flops / a.bytes : 0.0;
  return {{"nodes", a.nodes},
          {"seconds", a.seconds},
          {"share", total_s > 0 ? a.seconds / total_s : 0.0},
          {"flops", a.flops},
          {"bytes", a.bytes},
          {"intensity", intensity},
          {"gflops", a.seconds > 0 ? a.flops / a.seconds * 1e-9 : 0.0},
          {"gbs", a.seconds > 0 ? a.bytes / a.seconds * 1e-9 : 0.0},
          {"attainable_gflops", a.flops > 0 ? roofline_attainable(a.flops, a.bytes, peak, bw) : 0.0},
          // Time on the roofline over the measured time: 1.0 means every node of the group ran at its ceiling.
          {"fraction_of_roofline", a.seconds > 0 ? a.attainable_time / a.seconds : 0.0}};
}

// Runs `g` once (warm-up) and then `runs` times with node timing; returns the part's JSON.
Result<nlohmann::json> profile_graph(Executor& ex, const Graph& g, int runs, Precision prec, const MachineCeilings& c,
                                     const std::string& part, const std::string& description, StatusLine& sl,
                                     const LinearPlan* plan) {
  sl.update("%s warm-up ...", part.c_str());
  {
    EV_ASSIGN_OR_RETURN(ExecResult warm, ex.run(g));
    (void)warm;
  }
  std::vector<std::vector<double>> per(g.nodes.size());
  std::vector<double> walls;
  ExecOptions eo;
  eo.time_nodes = true;
  for (int r = 0; r < runs; ++r) {
    sl.update("%s pass %d/%d ...", part.c_str(), r + 1, runs);
    const double t0 = now_s();
    EV_ASSIGN_OR_RETURN(ExecResult res, ex.run(g, eo));
    walls.push_back(now_s() - t0);
    for (const auto& t : res.timings) per[static_cast<size_t>(t.id)].push_back(t.seconds);
  }
  const double bw = c.mem_read_gbs;
  const double prec_peak = prec == Precision::kBF16 ? c.bf16_gflops : c.f32_gflops;

  std::vector<double> secs(g.nodes.size(), 0.0);
  double node_sum = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    secs[i] = summarize(per[i]).median;
    if (g.nodes[i].op != OpKind::kInput && g.nodes[i].op != OpKind::kReshape) node_sum += secs[i];
  }

  nlohmann::json nodes = nlohmann::json::array();
  std::map<OpKind, Agg> by_op;
  std::vector<std::string> layer_order;
  std::map<std::string, Agg> by_layer;
  Agg total;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op == OpKind::kInput || n.op == OpKind::kReshape) continue;
    // A Linear computes in int8 when its weight is int8 or the plan says so: its bytes and ceiling follow.
    const Precision lp = linear_precision(g, n, prec, plan);
    const double s = secs[i], f = node_flops(g, n), b = node_bytes_at(g, n, lp);
    const double peak = node_peak_gflops(n.op, lp, c);
    const double att_s = roofline_seconds(f, b, peak, bw);
    const std::string layer = node_layer(n.name);
    for (Agg* a : {&by_op[n.op], &by_layer[layer], &total}) {
      a->nodes += 1;
      a->seconds += s;
      a->flops += f;
      a->bytes += b;
      a->attainable_time += att_s;
    }
    if (std::find(layer_order.begin(), layer_order.end(), layer) == layer_order.end()) layer_order.push_back(layer);
    nodes.push_back({{"name", n.name},
                     {"op", op_kind_name(n.op)},
                     {"layer", layer},
                     {"shape", n.out_shape.to_string()},
                     {"seconds", s},
                     {"share", node_sum > 0 ? s / node_sum : 0.0},
                     {"flops", f},
                     {"bytes", b},
                     {"intensity", b > 0 ? f / b : 0.0},
                     {"gflops", s > 0 ? f / s * 1e-9 : 0.0},
                     {"gbs", s > 0 ? b / s * 1e-9 : 0.0},
                     {"peak_gflops", peak},
                     {"attainable_gflops", f > 0 ? roofline_attainable(f, b, peak, bw) : 0.0},
                     {"fraction_of_roofline", s > 0 ? att_s / s : 0.0}});
  }
  std::vector<std::pair<OpKind, Agg>> ops(by_op.begin(), by_op.end());
  std::stable_sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  nlohmann::json ops_j = nlohmann::json::array();
  for (const auto& [k, a] : ops) {
    nlohmann::json e = agg_json(a, node_sum, node_peak_gflops(k, prec, c), bw);
    e["op"] = op_kind_name(k);
    ops_j.push_back(std::move(e));
  }
  nlohmann::json layers_j = nlohmann::json::array();
  for (const auto& l : layer_order) {
    const Agg& a = by_layer[l];
    layers_j.push_back({{"layer", l},
                        {"nodes", a.nodes},
                        {"seconds", a.seconds},
                        {"share", node_sum > 0 ? a.seconds / node_sum : 0.0},
                        {"flops", a.flops},
                        {"gflops", a.seconds > 0 ? a.flops / a.seconds * 1e-9 : 0.0}});
  }
  const double wall = summarize(walls).median;
  return nlohmann::json{{"part", part},
                        {"description", description},
                        {"precision", precision_name(prec)},
                        {"wall_s", wall},
                        {"node_sum_s", node_sum},
                        {"flops", total.flops},
                        {"bytes", total.bytes},
                        {"gflops", wall > 0 ? total.flops / wall * 1e-9 : 0.0},
                        {"peak_gflops", prec_peak},
                        {"fraction_of_peak", wall > 0 ? total.flops / wall * 1e-9 / prec_peak : 0.0},
                        {"fraction_of_roofline", node_sum > 0 ? total.attainable_time / node_sum : 0.0},
                        {"by_op", ops_j},
                        {"by_layer", layers_j},
                        {"nodes", nodes}};
}

double num(const nlohmann::json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

OpKind op_from_name(const std::string& s) {
  for (int k = 0; k < static_cast<int>(OpKind::kCount); ++k)
    if (s == op_kind_name(static_cast<OpKind>(k))) return static_cast<OpKind>(k);
  return OpKind::kCount;
}

}  // namespace

void add_profile_options(CLI::App& app, ProfileOptions& o) {
  auto* model = app.add_option("--model", o.model, "model directory (Hugging Face layout); default: a random model of --shape");
  app.add_option("--shape", o.shape, "random-weight model shape when --model is not given: smolvlm-256m, smolvlm-500m, tiny")
      ->excludes(model);
  app.add_option("--weights-dtype", o.weights_dtype, "on-disk dtype of the generated model: bf16, f32, f16");
  app.add_option("--keep-model", o.keep_model, "write the generated model into this directory and keep it");
  app.add_option("--seed", o.seed, "seed of the random weights, pixels and token ids");
  app.add_option("--precision", o.precision, "compute precision: auto (bf16 text, the CPU's faster arithmetic for vision), f32, bf16, int8 or mixed (models/quant_plan.h)");
  app.add_option("--threads", o.threads, "threads (0: all)")->check(CLI::Range(0, 1024));
  app.add_option("--prune", o.prune, "token pruning of the vision pass: none, auto, L:R,...,llm:R, random, input:S");
  app.add_option("--part", o.part, "what to profile: vision, prefill, decode or all")
      ->check(CLI::IsMember({"vision", "prefill", "decode", "all"}));
  app.add_option("--prefill-tokens", o.prefill_tokens, "prefill length, and the decode step's position")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--repeats", o.repeats, "timed passes (each node: median over them)")->check(CLI::Range(1, 10000));
  app.add_option("--top", o.top, "nodes listed in the table")->check(CLI::Range(0, 1000000));
  app.add_option("--ceilings-seconds", o.ceilings_seconds, "time budget of the machine-ceiling probe")
      ->check(CLI::Range(0.0, 60.0));
  app.add_option("--svg", o.svg, "write an SVG picture (time per op kind + roofline) to this file");
  app.add_flag("--json", o.json, "print the JSON result instead of the tables");
  app.add_option("--out", o.out, "also write the JSON result to this file");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
}

Result<nlohmann::json> profile_json(const ProfileOptions& o) {
  EngineOptions eo;
  EV_RETURN_IF_ERROR(parse_precision_option(o.precision, &eo).with_context("--precision"));
  DType wdt;
  if (!dtype_from_string(o.weights_dtype, &wdt) || (wdt != DType::kF32 && wdt != DType::kBF16 && wdt != DType::kF16))
    return InvalidArgument("--weights-dtype '" + o.weights_dtype + "' is not one of bf16, f32, f16");
  const bool all = o.part == "all";
  if (!all && o.part != "vision" && o.part != "prefill" && o.part != "decode")
    return InvalidArgument("--part '" + o.part + "' is not one of vision, prefill, decode, all");
  if (o.repeats < 1 || o.repeats > 10000) return InvalidArgument("--repeats must be in [1, 10000]");
  if (o.prefill_tokens < 1 || o.prefill_tokens > (1 << 20)) return InvalidArgument("--prefill-tokens must be in [1, 1048576]");
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("--threads must be in [0, 1024]");
  if (!(o.ceilings_seconds >= 0 && o.ceilings_seconds <= 60)) return InvalidArgument("--ceilings-seconds must be in [0, 60]");

  StatusLine sl("profile", o.progress);
  sl.update("measuring machine ceilings ...");
  MachineCeilings ceil;
  {
    ThreadPool pool(o.threads);
    ceil = measure_ceilings(&pool, o.ceilings_seconds);
  }
  if (o.model.empty()) sl.update("generating random %s model ...", o.shape.c_str());
  EV_ASSIGN_OR_RETURN(BenchModel bm, BenchModel::resolve(o.model, o.shape, o.seed, wdt, o.keep_model));
  sl.update("loading ...");
  eo.threads = o.threads;
  eo.network_only = true;
  auto loaded = Engine::load(bm.dir, eo);
  if (!loaded.ok()) return loaded.status().with_context("loading " + bm.label);
  std::unique_ptr<Engine> eng = std::move(loaded).value();
  const VlmModel& model = eng->model();
  const VlmConfig& cfg = eng->config();
  Executor& ex = eng->executor();
  const Precision vprec = eng->vision_precision(), prec = eng->text_precision();

  nlohmann::json j;
  j["tool"] = "profile";
  j["model"] = {{"label", bm.label}, {"shape", bm.shape}, {"architecture", model.architecture()},
                {"weight_bytes", model.weight_bytes()}, {"load_s", eng->load_seconds()}};
  j["precision"] = eng->precision_label();
  j["threads"] = eng->pool().size();
  j["repeats"] = o.repeats;
  j["ceilings"] = to_json(ceil);
  nlohmann::json parts = nlohmann::json::array();

  if (all || o.part == "vision") {
    EV_RETURN_IF_ERROR(eng->set_prune(o.prune).with_context("--prune"));
    const PruneSpec& ps = eng->prune();
    const int S = ps.input_size > 0 ? ps.input_size : model.tile_size();
    Tensor px = random_pixels(1, S, o.seed);
    Graph g;
    VisionRun run;
    run.prune = &ps;
    run.want_importance = ps.llm_keep < 1.f;
    TensorId imp = -1;
    TensorId emb = model.build_vision(g, g.input("pixels", px), nullptr, run, &imp);
    g.mark_output(emb);
    EV_RETURN_IF_ERROR(g.status());
    EV_ASSIGN_OR_RETURN(nlohmann::json p,
                        profile_graph(eng->vision_executor(), g, o.repeats, vprec, ceil, "vision",
                                      strf("1 tile %dx%d -> %lld tokens (vision tower + connector), prune %s", S, S,
                                           static_cast<long long>(eng->pruned_tokens_per_tile()), ps.to_string().c_str()),
                                      sl, &eng->linear_plan()));
    parts.push_back(std::move(p));
  }
  const int64_t P = o.prefill_tokens;
  const std::vector<int32_t> prompt = random_token_ids(P + 1, model.vocab_size(), cfg.image_token_id, o.seed);
  KvCache cache = model.make_cache(P + 2);
  if (all || o.part == "prefill") {
    cache.clear();
    Tensor ids = Tensor::empty(DType::kI32, Shape{P});
    std::memcpy(ids.data(), prompt.data(), static_cast<size_t>(P) * sizeof(int32_t));
    Graph g;
    TensorId x = model.build_embed(g, g.input("ids", ids));
    TensorId logits = model.build_decoder(g, x, P, cache, 1);
    g.mark_output(logits);
    EV_RETURN_IF_ERROR(g.status());
    EV_ASSIGN_OR_RETURN(nlohmann::json p, profile_graph(ex, g, o.repeats, prec, ceil, "prefill",
                                                        strf("%lld tokens at position 0", static_cast<long long>(P)), sl,
                                                        &eng->linear_plan()));
    parts.push_back(std::move(p));
  }
  if (all || o.part == "decode") {
    sl.update("decode: prefill of %lld tokens ...", static_cast<long long>(P));
    cache.clear();
    std::vector<int32_t> head(prompt.begin(), prompt.begin() + P);
    EV_ASSIGN_OR_RETURN(Tensor l0, eng->forward_text(head, Tensor(), cache, 1));
    (void)l0;
    // The step graph writes K/V row P on every pass: repeated passes measure the same step.
    Tensor ids = Tensor::empty(DType::kI32, Shape{1});
    ids.data_as<int32_t>()[0] = prompt[static_cast<size_t>(P)];
    Graph g;
    TensorId x = model.build_embed(g, g.input("ids", ids));
    TensorId logits = model.build_decoder(g, x, 1, cache, 1);
    g.mark_output(logits);
    EV_RETURN_IF_ERROR(g.status());
    EV_ASSIGN_OR_RETURN(nlohmann::json p, profile_graph(ex, g, o.repeats, prec, ceil, "decode",
                                                        strf("1 token at position %lld", static_cast<long long>(P)), sl,
                                                        &eng->linear_plan()));
    parts.push_back(std::move(p));
  }
  sl.done();
  j["parts"] = parts;
  return j;
}

std::string profile_table(const nlohmann::json& j, int top) {
  std::string o;
  try {
    const auto& c = j.at("ceilings");
    const std::string prec = j.value("precision", "");
    o += strf("edgevlm profile: %s (%s), %s compute, %d threads, per-node median of %d passes\n",
              j.at("model").value("label", "").c_str(), j.at("model").value("architecture", "").c_str(), prec.c_str(),
              j.value("threads", 0), j.value("repeats", 0));
    o += strf("machine: f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s, memory read %.1f GB/s (%d threads, %s)\n",
              c.value("f32_gflops", 0.0), c.value("bf16_gflops", 0.0), c.value("mem_read_gbs", 0.0),
              c.value("threads", 0), c.value("isa", "").c_str());
    for (const auto& p : j.at("parts")) {
      o += strf("\n== %s: %s\n", p.value("part", "").c_str(), p.value("description", "").c_str());
      o += strf("   wall %s (sum of node times %s), %.2f GFLOP, %s moved, %.1f GFLOP/s = %s of %s peak; "
                "%s of the roofline\n\n",
                fmt_seconds(num(p, "wall_s")).c_str(), fmt_seconds(num(p, "node_sum_s")).c_str(),
                num(p, "flops") * 1e-9, fmt_bytes(num(p, "bytes")).c_str(), num(p, "gflops"),
                fmt_percent(num(p, "fraction_of_peak")).c_str(), p.value("precision", prec).c_str(),
                fmt_percent(num(p, "fraction_of_roofline")).c_str());
      TextTable ops({"op kind", "nodes", "time", "share", "GFLOP", "moved", "FLOP/B", "GFLOP/s", "GB/s", "roof GFLOP/s",
                     "of roofline"});
      for (const auto& e : p.at("by_op")) {
        const bool has_flops = num(e, "flops") > 0;
        ops.add_row({e.value("op", ""), strf("%d", e.value("nodes", 0)), fmt_seconds(num(e, "seconds")),
                     fmt_percent(num(e, "share")), has_flops ? strf("%.2f", num(e, "flops") * 1e-9) : "-",
                     fmt_bytes(num(e, "bytes")), has_flops ? strf("%.1f", num(e, "intensity")) : "-",
                     has_flops ? strf("%.1f", num(e, "gflops")) : "-", strf("%.1f", num(e, "gbs")),
                     has_flops ? strf("%.0f", num(e, "attainable_gflops")) : "-",
                     fmt_percent(num(e, "fraction_of_roofline"))});
      }
      o += ops.render("   ");

      // Top nodes by time.
      std::vector<const nlohmann::json*> nodes;
      for (const auto& n : p.at("nodes")) nodes.push_back(&n);
      std::stable_sort(nodes.begin(), nodes.end(),
                       [](const nlohmann::json* a, const nlohmann::json* b) { return num(*a, "seconds") > num(*b, "seconds"); });
      if (top > 0 && !nodes.empty()) {
        o += strf("\n   top %d of %zu nodes:\n", std::min<int>(top, static_cast<int>(nodes.size())), nodes.size());
        TextTable tn({"node", "op", "shape", "time", "share", "GFLOP/s", "GB/s", "FLOP/B", "of roofline"});
        for (size_t i = 0; i < nodes.size() && static_cast<int>(i) < top; ++i) {
          const auto& n = *nodes[i];
          const bool has_flops = num(n, "flops") > 0;
          tn.add_row({n.value("name", ""), n.value("op", ""), n.value("shape", ""), fmt_seconds(num(n, "seconds")),
                      fmt_percent(num(n, "share")), has_flops ? strf("%.1f", num(n, "gflops")) : "-",
                      strf("%.1f", num(n, "gbs")), has_flops ? strf("%.1f", num(n, "intensity")) : "-",
                      fmt_percent(num(n, "fraction_of_roofline"))});
        }
        o += tn.render("   ");
      }

      // Per layer: one compact line per layer.
      o += "\n   by layer:\n";
      TextTable tl({"layer", "nodes", "time", "share", "GFLOP/s"});
      for (const auto& l : p.at("by_layer"))
        tl.add_row({l.value("layer", ""), strf("%d", l.value("nodes", 0)), fmt_seconds(num(l, "seconds")),
                    fmt_percent(num(l, "share")), num(l, "flops") > 0 ? strf("%.1f", num(l, "gflops")) : "-"});
      o += tl.render("   ");
    }
  } catch (const std::exception& e) {
    o += std::string("(incomplete profile result: ") + e.what() + ")\n";
  }
  return o;
}

std::string profile_svg(const nlohmann::json& j) {
  std::vector<SvgPanelRow> rows;
  std::vector<SvgLegendItem> legend;
  std::string title = "edgevlm profile";
  try {
    const auto& c = j.at("ceilings");
    const std::string prec = j.value("precision", "");
    title = strf("edgevlm profile: %s, %s compute, %d threads (%s)", j.at("model").value("label", "").c_str(),
                 prec.c_str(), j.value("threads", 0), c.value("isa", "").c_str());
    const double f32 = c.value("f32_gflops", 0.0), bf16 = c.value("bf16_gflops", 0.0), bw = c.value("mem_read_gbs", 0.0);
    std::vector<std::string> seen;
    for (const auto& p : j.at("parts")) {
      SvgPanelRow row;
      row.bars_title = strf("%s: time per op kind (wall %s)", p.value("part", "").c_str(),
                            fmt_seconds(num(p, "wall_s")).c_str());
      for (const auto& e : p.at("by_op")) {
        const std::string op = e.value("op", "");
        const OpKind k = op_from_name(op);
        row.bars.push_back({op, num(e, "seconds") * 1e3,
                            strf("%s  %s", fmt_seconds(num(e, "seconds")).c_str(), fmt_percent(num(e, "share")).c_str()),
                            op_color(k)});
        if (std::find(seen.begin(), seen.end(), op) == seen.end()) {
          seen.push_back(op);
          legend.push_back({op, op_color(k)});
        }
        if (num(e, "flops") > 0 && num(e, "seconds") > 0)
          row.roof.points.push_back({op, num(e, "intensity"), num(e, "gflops"),
                                     4.0 + 6.0 * std::sqrt(std::max(0.0, num(e, "share"))), op_color(k), true});
      }
      for (const auto& n : p.at("nodes")) {
        if (num(n, "flops") <= 0 || num(n, "seconds") <= 0) continue;
        row.roof.points.push_back({n.value("name", ""), num(n, "intensity"), num(n, "gflops"), 2.5,
                                   op_color(op_from_name(n.value("op", ""))), false});
      }
      row.roof.title = strf("%s: roofline (%s)", p.value("part", "").c_str(), p.value("description", "").c_str());
      row.roof.bw_gbs = bw;
      if (p.value("precision", prec) == "bf16") {
        row.roof.peak_gflops = bf16;
        row.roof.peak_label = "bf16 peak";
        row.roof.second_peak_gflops = f32;
        row.roof.second_peak_label = "f32 peak";
      } else {
        row.roof.peak_gflops = f32;
        row.roof.peak_label = "f32 peak";
      }
      rows.push_back(std::move(row));
    }
  } catch (const std::exception&) {
    // A malformed result draws what it could parse.
  }
  return render_profile_svg(title, rows, legend);
}

Status run_profile(const ProfileOptions& o) {
  EV_ASSIGN_OR_RETURN(nlohmann::json j, profile_json(o));
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const std::exception& e) {
    return Internal(std::string("profile: cannot encode the result: ") + e.what());
  }
  if (!o.out.empty()) EV_RETURN_IF_ERROR(write_text_file(o.out, text));
  if (!o.svg.empty()) EV_RETURN_IF_ERROR(write_text_file(o.svg, profile_svg(j)));
  if (o.json) {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    const std::string t = profile_table(j, o.top);
    std::fwrite(t.data(), 1, t.size(), stdout);
    if (!o.svg.empty()) std::printf("\npicture: %s\n", o.svg.c_str());
  }
  std::fflush(stdout);
  return Status::Ok();
}

}  // namespace ev
