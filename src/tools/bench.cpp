#include "tools/bench.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "core/clock.h"
#include "core/thread_pool.h"
#include "graph/backend.h"
#include "kernels/cpu/ceilings.h"
#include "models/quant_plan.h"
#include "models/token_prune.h"
#include "runtime/engine.h"
#include "tools/random_model.h"
#include "tools/report.h"

namespace ev {

namespace {

// Targets of the performance issue (SmolVLM-256M on the 2-core Zen 4 class machine).
constexpr double kTargetTileSeconds = 0.6;     // one 512 px tile through vision tower + connector, bf16
constexpr double kTargetGemmFraction = 0.8;    // vision Linear nodes, fraction of the precision's peak
constexpr double kTargetDecodeFraction = 0.8;  // decode, fraction of the memory read bandwidth

Result<std::set<std::string>> parse_stages(const std::string& s) {
  std::set<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    if (item != "vision" && item != "prefill" && item != "decode")
      return InvalidArgument("--stages: unknown stage '" + item + "' (known: vision, prefill, decode)");
    out.insert(item);
  }
  if (out.empty()) return InvalidArgument("--stages: no stage given (known: vision, prefill, decode)");
  return out;
}

Status check_options(const BenchOptions& o) {
  for (const std::string& p : o.precisions) {
    EngineOptions eo;
    EV_RETURN_IF_ERROR(parse_precision_option(p, &eo).with_context("--precision"));
  }
  if (o.repeats < 1 || o.repeats > 100000) return InvalidArgument("--repeats must be in [1, 100000], got " + std::to_string(o.repeats));
  if (o.load_repeats < 1 || o.load_repeats > 1000)
    return InvalidArgument("--load-repeats must be in [1, 1000], got " + std::to_string(o.load_repeats));
  if (o.prefill_tokens < 1 || o.prefill_tokens > (1 << 20))
    return InvalidArgument("--prefill-tokens must be in [1, 1048576], got " + std::to_string(o.prefill_tokens));
  if (o.decode_tokens < 0 || o.decode_tokens > (1 << 20))
    return InvalidArgument("--decode-tokens must be in [0, 1048576], got " + std::to_string(o.decode_tokens));
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("--threads must be in [0, 1024], got " + std::to_string(o.threads));
  if (!(o.ceilings_seconds >= 0 && o.ceilings_seconds <= 60))
    return InvalidArgument("--ceilings-seconds must be in [0, 60]");
  return Status::Ok();
}

bool all_finite(const Tensor& t) {
  if (t.dtype() != DType::kF32) return true;
  const float* p = t.data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

// Per-node median times over several timed executor runs of one graph.
struct NodeTimes {
  std::vector<double> median;  // by TensorId (0 for nodes that were not timed)
  double wall_median = 0;
};

Result<NodeTimes> time_nodes(Executor& ex, const Graph& g, int runs) {
  std::vector<std::vector<double>> per(g.nodes.size());
  std::vector<double> walls;
  ExecOptions eo;
  eo.time_nodes = true;
  for (int r = 0; r < runs; ++r) {
    const double t0 = now_s();
    EV_ASSIGN_OR_RETURN(ExecResult res, ex.run(g, eo));
    walls.push_back(now_s() - t0);
    for (const auto& t : res.timings) per[static_cast<size_t>(t.id)].push_back(t.seconds);
  }
  NodeTimes nt;
  nt.median.resize(g.nodes.size(), 0.0);
  for (size_t i = 0; i < per.size(); ++i) nt.median[i] = summarize(per[i]).median;
  nt.wall_median = summarize(walls).median;
  return nt;
}

int64_t count_params(const VlmConfig& c) {
  int64_t n = 0;
  for (const auto& [name, s] : idefics3_tensor_shapes(c)) n += s.numel();
  return n;
}

double jnum(const nlohmann::json& j, const char* a, const char* b = nullptr, double def = NAN) {
  const nlohmann::json* p = &j;
  if (!p->contains(a)) return def;
  p = &(*p)[a];
  if (b) {
    if (!p->is_object() || !p->contains(b)) return def;
    p = &(*p)[b];
  }
  return p->is_number() ? p->get<double>() : def;
}

}  // namespace

// The precisions of --precision side by side: one engine each on the same model, every stage timed round-robin
// (one pass of every engine per repeat) so that they share the machine's load.
Result<nlohmann::json> precision_variants(const BenchOptions& o, const std::string& dir, const std::set<std::string>& stages,
                                          const MachineCeilings& ceil, StatusLine& sl) {
  struct Variant {
    std::string name;
    std::unique_ptr<Engine> eng;
    std::vector<double> vision, vision_linear, prefill, decode;
  };
  std::vector<Variant> vs;
  for (const std::string& p : o.precisions) {
    EngineOptions eo;
    EV_RETURN_IF_ERROR(parse_precision_option(p, &eo).with_context("--precision " + p));
    eo.threads = o.threads;
    eo.network_only = true;
    sl.update("precision variants: loading %s ...", p.c_str());
    auto e = Engine::load(dir, eo);
    if (!e.ok()) return e.status().with_context("--precision " + p);
    vs.push_back({p, std::move(e).value(), {}, {}, {}, {}});
  }
  const VlmModel& m0 = vs[0].eng->model();
  const int S = m0.tile_size();
  const Tensor px = random_pixels(1, S, o.seed);
  const int64_t V = m0.vocab_size(), P = o.prefill_tokens;
  const int64_t D = std::min<int64_t>(o.decode_tokens, 32);
  const std::vector<int32_t> prompt = random_token_ids(P, V, vs[0].eng->config().image_token_id, o.seed);
  const std::vector<int32_t> next = random_token_ids(D + 1, V, vs[0].eng->config().image_token_id, o.seed + 1);
  std::vector<Graph> vgraphs(vs.size());
  for (size_t k = 0; k < vs.size(); ++k) {
    vs[k].eng->model().build_vision(vgraphs[k], vgraphs[k].input("pixels", px), nullptr);
    EV_RETURN_IF_ERROR(vgraphs[k].status());
  }
  auto decode_run = [&](Variant& v, std::vector<double>* per_token) -> Status {
    KvCache cache = v.eng->model().make_cache(P + D + 2);
    EV_ASSIGN_OR_RETURN(Tensor l0, v.eng->forward_text(prompt, Tensor(), cache, 1));
    (void)l0;
    const double t0 = now_s();
    for (int64_t s = 0; s < D; ++s) {
      EV_ASSIGN_OR_RETURN(Tensor l, v.eng->forward_text({next[static_cast<size_t>(s)]}, Tensor(), cache, 1));
      (void)l;
    }
    if (per_token && D > 0) per_token->push_back((now_s() - t0) / static_cast<double>(D));
    return Status::Ok();
  };
  // Warm-up: one pass of everything per engine.
  for (Variant& v : vs) {
    sl.update("precision variants: warm-up %s ...", v.name.c_str());
    if (stages.count("vision")) EV_RETURN_IF_ERROR(v.eng->encode_tiles(px).status());
    if (stages.count("decode") || stages.count("prefill")) EV_RETURN_IF_ERROR(decode_run(v, nullptr));
  }
  for (int r = 0; r < o.repeats; ++r)
    for (size_t k = 0; k < vs.size(); ++k) {
      Variant& v = vs[k];
      sl.update("precision variants %d/%d: %s ...", r + 1, o.repeats, v.name.c_str());
      if (stages.count("vision")) {
        double t0 = now_s();
        EV_RETURN_IF_ERROR(v.eng->encode_tiles(px).status());
        v.vision.push_back(now_s() - t0);
        EV_ASSIGN_OR_RETURN(NodeTimes nt, time_nodes(v.eng->vision_executor(), vgraphs[k], 1));
        double lin = 0;
        for (size_t i = 0; i < vgraphs[k].nodes.size(); ++i)
          if (vgraphs[k].nodes[i].op == OpKind::kLinear) lin += nt.median[i];
        v.vision_linear.push_back(lin);
      }
      if (stages.count("prefill")) {
        KvCache cache = v.eng->model().make_cache(P + 1);
        const double t0 = now_s();
        EV_RETURN_IF_ERROR(v.eng->forward_text(prompt, Tensor(), cache, 1).status());
        v.prefill.push_back(now_s() - t0);
      }
      if (stages.count("decode") && D > 0) EV_RETURN_IF_ERROR(decode_run(v, &v.decode));
    }
  nlohmann::json out = nlohmann::json::array();
  const double base_v = vs[0].vision.empty() ? 0 : summarize(vs[0].vision).median;
  const double base_l = vs[0].vision_linear.empty() ? 0 : summarize(vs[0].vision_linear).median;
  const double base_d = vs[0].decode.empty() ? 0 : summarize(vs[0].decode).median;
  for (size_t k = 0; k < vs.size(); ++k) {
    Variant& v = vs[k];
    nlohmann::json e;
    e["precision"] = v.name;
    e["label"] = v.eng->precision_label();
    e["plan"] = v.eng->plan_source();
    const PlanSummary ps = summarize_plan(v.eng->linear_plan(), v.eng->linears());
    e["int8_linears"] = ps.int8_linears;
    e["linears"] = ps.linears;
    if (!v.vision.empty()) {
      const GraphCost c = graph_cost(vgraphs[k], v.eng->vision_precision(), &v.eng->linear_plan());
      const double med = summarize(v.vision).median, lin = summarize(v.vision_linear).median;
      e["vision"] = to_json(summarize(v.vision));
      e["vision"]["speedup"] = med > 0 ? base_v / med : 0.0;
      e["vision"]["gflops"] = c.flops / med * 1e-9;
      e["vision_linear"] = {{"median_s", lin},
                            {"speedup", lin > 0 ? base_l / lin : 0.0},
                            {"gops", lin > 0 ? c.linear_flops / lin * 1e-9 : 0.0},
                            {"int8_share_of_flops", c.linear_flops > 0 ? c.int8_linear_flops / c.linear_flops : 0.0}};
    }
    if (!v.prefill.empty()) {
      const double med = summarize(v.prefill).median;
      e["prefill"] = to_json(summarize(v.prefill));
      e["prefill"]["tokens_per_s"] = static_cast<double>(P) / med;
    }
    if (!v.decode.empty()) {
      KvCache cache = v.eng->model().make_cache(P + D + 2);
      cache.set_size(P + D / 2);
      Graph g;
      Tensor ids_t = Tensor::empty(DType::kI32, Shape{1});
      TensorId x = v.eng->model().build_embed(g, g.input("ids", ids_t));
      v.eng->model().build_decoder(g, x, 1, cache, 1);
      EV_RETURN_IF_ERROR(g.status());
      const GraphCost c = graph_cost(g, v.eng->text_precision(), &v.eng->linear_plan());
      const double med = summarize(v.decode).median;
      e["decode"] = to_json(summarize(v.decode), "_s_per_token");
      e["decode"]["tokens_per_s"] = 1.0 / med;
      e["decode"]["speedup"] = base_d / med;
      e["decode"]["bytes_per_token"] = c.bytes;
      e["decode"]["weight_bytes_per_token"] = c.weight_bytes;
      e["decode"]["gbs"] = c.bytes / med * 1e-9;
      e["decode"]["fraction_of_bandwidth"] = c.bytes / med * 1e-9 / ceil.mem_read_gbs;
    }
    out.push_back(e);
  }
  return out;
}

void add_bench_options(CLI::App& app, BenchOptions& o) {
  auto* model = app.add_option("--model", o.model, "model directory (Hugging Face layout); default: a random model of --shape");
  app.add_option("--shape", o.shape, "random-weight model shape when --model is not given: smolvlm-256m, smolvlm-500m, tiny")
      ->excludes(model);
  app.add_option("--weights-dtype", o.weights_dtype, "on-disk dtype of the generated model: bf16, f32, f16");
  app.add_option("--keep-model", o.keep_model, "write the generated model into this directory and keep it");
  app.add_option("--seed", o.seed, "seed of the random weights, pixels and token ids");
  app.add_option_function<std::vector<std::string>>(
      "--precision",
      [&o](const std::vector<std::string>& v) {
        o.precisions = v;
        if (!v.empty()) o.precision = v.front();
      },
      "compute precision: auto (bf16 text, the CPU's faster arithmetic for vision), f32, bf16, int8 or mixed "
      "(models/quant_plan.h); repeatable: the precisions are then compared side by side, round-robin in one run");
  app.add_option("--threads", o.threads, "threads (0: all)")->check(CLI::Range(0, 1024));
  app.add_option("--repeats", o.repeats, "timed runs per stage, after one warm-up")->check(CLI::Range(1, 100000));
  app.add_option("--load-repeats", o.load_repeats, "model loads to time")->check(CLI::Range(1, 1000));
  app.add_option("--prefill-tokens", o.prefill_tokens, "prompt length of the prefill stage (and before decode)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--decode-tokens", o.decode_tokens, "decode steps per run")->check(CLI::Range(0, 1 << 20));
  app.add_option("--stages", o.stages, "comma-separated stages: vision,prefill,decode");
  app.add_option("--ceilings-seconds", o.ceilings_seconds, "time budget of the machine-ceiling probe")
      ->check(CLI::Range(0.0, 60.0));
  app.add_flag("--json", o.json, "print the JSON result instead of the table");
  app.add_option("--out", o.out, "also write the JSON result to this file");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
  app.add_option("--prune", o.prune,
                 "token pruning of the vision stage (none, auto, L:R,...,llm:R, random, input:S); repeatable: the "
                 "variants are timed round-robin in one run");
}

Result<nlohmann::json> bench_json(const BenchOptions& o) {
  EV_RETURN_IF_ERROR(check_options(o));
  EngineOptions eo;
  EV_RETURN_IF_ERROR(parse_precision_option(o.precision, &eo).with_context("--precision"));
  DType wdt;
  if (!dtype_from_string(o.weights_dtype, &wdt) || (wdt != DType::kF32 && wdt != DType::kBF16 && wdt != DType::kF16))
    return InvalidArgument("--weights-dtype '" + o.weights_dtype + "' is not one of bf16, f32, f16");
  EV_ASSIGN_OR_RETURN(std::set<std::string> stages, parse_stages(o.stages));
  const int R = o.repeats;
  StatusLine sl("bench", o.progress);

  // 1. The machine's ceilings, on a pool of the same size as the engine's (freed before the engine starts its own).
  sl.update("measuring machine ceilings ...");
  MachineCeilings ceil;
  {
    ThreadPool pool(o.threads);
    ceil = measure_ceilings(&pool, o.ceilings_seconds);
  }

  // 2. The model.
  if (o.model.empty()) sl.update("generating random %s model ...", o.shape.c_str());
  EV_ASSIGN_OR_RETURN(BenchModel bm, BenchModel::resolve(o.model, o.shape, o.seed, wdt, o.keep_model));

  // Peak RSS from here on: the ceiling probe's buffer and the generator's tensors are not the model's cost.
  reset_peak_rss();

  eo.threads = o.threads;
  eo.network_only = true;
  std::unique_ptr<Engine> eng;
  std::vector<double> load_times;
  for (int r = 0; r < o.load_repeats; ++r) {
    eng.reset();
    sl.update("load %d/%d ...", r + 1, o.load_repeats);
    auto e = Engine::load(bm.dir, eo);
    if (!e.ok()) return e.status().with_context("loading " + bm.label);
    eng = std::move(e).value();
    load_times.push_back(eng->load_seconds());
  }
  const int64_t rss_after_load = current_rss_bytes();
  const VlmModel& model = eng->model();
  const VlmConfig& cfg = eng->config();
  Executor& ex = eng->executor();
  const Precision vprec = eng->vision_precision(), tprec = eng->text_precision();

  nlohmann::json j;
  j["tool"] = "bench";
  j["model"] = {{"label", bm.label},
                {"dir", bm.shape.empty() ? bm.dir : (o.keep_model.empty() ? "(temporary)" : bm.dir)},
                {"shape", bm.shape},
                {"architecture", model.architecture()},
                {"params", count_params(cfg)},
                {"weight_bytes", model.weight_bytes()},
                {"weights_dtype", bm.shape.empty() ? cfg.torch_dtype : o.weights_dtype},
                {"generate_s", bm.generate_s},
                {"vision", {{"hidden", cfg.vision.hidden_size}, {"layers", cfg.vision.num_hidden_layers},
                            {"image_size", cfg.vision.image_size}, {"patch", cfg.vision.patch_size}}},
                {"text", {{"hidden", cfg.text.hidden_size}, {"layers", cfg.text.num_hidden_layers},
                          {"vocab", cfg.text.vocab_size}, {"heads", cfg.text.num_attention_heads},
                          {"kv_heads", cfg.text.num_key_value_heads}}}};
  j["precision"] = eng->precision_label();
  j["vision_precision"] = precision_name(vprec);
  j["text_precision"] = precision_name(tprec);
  j["threads"] = eng->pool().size();
  j["repeats"] = R;
  j["ceilings"] = to_json(ceil);
  j["load"] = to_json(summarize(load_times));
  nlohmann::json warnings = nlohmann::json::array();

  auto peak_of = [&](Precision p) { return p == Precision::kBF16 ? ceil.bf16_gflops : ceil.f32_gflops; };
  const double vpeak = peak_of(vprec), tpeak = peak_of(tprec);

  // 3. Vision: one tile, batch 1 (the first --prune variant; all of them side by side below).
  std::vector<PruneSpec> variants;
  for (const std::string& p : o.prune) {
    auto r = resolve_prune_spec(p, cfg, eng->auto_prune_spec());
    if (!r.ok()) return r.status().with_context("--prune " + p);
    variants.push_back(*r);
  }
  if (!variants.empty()) eng->set_prune(variants[0]);
  if (stages.count("vision")) {
    const int S = model.tile_size();
    Tensor px = random_pixels(1, S, o.seed);
    sl.update("vision warm-up ...");
    EV_ASSIGN_OR_RETURN(Tensor emb, eng->encode_tiles(px));
    if (!all_finite(emb)) warnings.push_back("vision: the image embeddings contain NaN or Inf");
    std::vector<double> times;
    for (int r = 0; r < R; ++r) {
      sl.update("vision %d/%d ...", r + 1, R);
      const double t0 = now_s();
      EV_ASSIGN_OR_RETURN(emb, eng->encode_tiles(px));
      times.push_back(now_s() - t0);
    }
    const RunStats st = summarize(times);

    Graph g;
    {
      const PruneSpec& ps = eng->prune();
      VisionRun run;
      run.prune = &ps;
      run.want_importance = ps.llm_keep < 1.f;
      TensorId imp = -1;
      const int Sv = ps.input_size > 0 ? ps.input_size : S;
      model.build_vision(g, g.input("pixels", Sv == S ? px : random_pixels(1, Sv, o.seed)), nullptr, run, &imp);
    }
    EV_RETURN_IF_ERROR(g.status());
    const GraphCost cost = graph_cost(g, vprec, &eng->linear_plan());
    sl.update("vision per-node timing ...");
    EV_ASSIGN_OR_RETURN(NodeTimes nt, time_nodes(eng->vision_executor(), g, R));
    double lin_s = 0, node_sum = 0;
    std::map<std::string, std::pair<double, double>> by_op;  // op -> (seconds, flops)
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      if (n.op == OpKind::kInput || n.op == OpKind::kReshape) continue;
      node_sum += nt.median[i];
      auto& e = by_op[op_kind_name(n.op)];
      e.first += nt.median[i];
      e.second += node_flops(g, n);
      if (n.op == OpKind::kLinear) lin_s += nt.median[i];
    }
    nlohmann::json ops = nlohmann::json::object();
    for (const auto& [name, e] : by_op)
      ops[name] = {{"seconds", e.first},
                   {"share", node_sum > 0 ? e.first / node_sum : 0.0},
                   {"gflops", e.first > 0 ? e.second / e.first * 1e-9 : 0.0}};
    const double gflops = cost.flops / st.median * 1e-9;
    const double lin_gflops = lin_s > 0 ? cost.linear_flops / lin_s * 1e-9 : 0.0;
    nlohmann::json v = to_json(st);
    v["tile_size"] = S;
    v["tiles"] = 1;
    v["tokens_per_tile"] = model.tokens_per_tile();
    v["tiles_per_s"] = 1.0 / st.median;
    v["gflop"] = cost.flops * 1e-9;
    v["gflops"] = gflops;
    v["precision"] = precision_name(vprec);
    v["peak_gflops"] = vpeak;
    // Int8 Linears against the int8 peak, the rest against the float precision's: ideal time over measured time.
    v["fraction_of_peak"] = (cost.int8_linear_flops / ceil.int8_gops + (cost.flops - cost.int8_linear_flops) / vpeak) *
                            1e-9 / st.median;
    // Against the ceilings of the arithmetic each Linear runs in: the time it would take at the int8 peak for the
    // int8 ones and at the float peak for the rest, over the measured time.
    const double lin_ideal_s = cost.int8_linear_flops / (ceil.int8_gops * 1e9) +
                               (cost.linear_flops - cost.int8_linear_flops) / (vpeak * 1e9);
    v["linear"] = {{"gflop", cost.linear_flops * 1e-9},
                   {"int8_gflop", cost.int8_linear_flops * 1e-9},
                   {"seconds", lin_s},
                   {"gflops", lin_gflops},
                   {"fraction_of_peak", lin_s > 0 ? lin_ideal_s / lin_s : 0.0}};
    v["node_time_sum_s"] = node_sum;
    v["by_op"] = ops;
    v["prune"] = eng->prune().to_string();
    j["vision"] = v;
    if (variants.size() > 1) {
      // Round-robin: repeat r times every variant once, so that the machine's load drifts equally over all.
      std::vector<std::vector<double>> t(variants.size());
      for (size_t k = 0; k < variants.size(); ++k) {  // warm-up (oneDNN primitives per token count)
        eng->set_prune(variants[k]);
        EV_ASSIGN_OR_RETURN(emb, eng->encode_tiles(px));
      }
      for (int r = 0; r < R; ++r)
        for (size_t k = 0; k < variants.size(); ++k) {
          sl.update("vision variants %d/%d ...", r + 1, R);
          eng->set_prune(variants[k]);
          const double t0 = now_s();
          EV_ASSIGN_OR_RETURN(emb, eng->encode_tiles(px));
          t[k].push_back(now_s() - t0);
        }
      nlohmann::json va = nlohmann::json::array();
      const double base = summarize(t[0]).median;
      for (size_t k = 0; k < variants.size(); ++k) {
        eng->set_prune(variants[k]);
        Graph gk;
        VisionRun run;
        run.prune = &variants[k];
        run.want_importance = variants[k].llm_keep < 1.f;
        TensorId imp = -1;
        const int Sv = variants[k].input_size > 0 ? variants[k].input_size : S;
        model.build_vision(gk, gk.input("pixels", random_pixels(1, Sv, o.seed)), nullptr, run, &imp);
        EV_RETURN_IF_ERROR(gk.status());
        const GraphCost ck = graph_cost(gk, vprec, &eng->linear_plan());
        const RunStats sk = summarize(t[k]);
        nlohmann::json e = to_json(sk);
        e["prune"] = variants[k].to_string();
        e["gflop"] = ck.flops * 1e-9;
        e["gflops"] = ck.flops / sk.median * 1e-9;
        e["fraction_of_peak"] =
            (ck.int8_linear_flops / ceil.int8_gops + (ck.flops - ck.int8_linear_flops) / vpeak) * 1e-9 / sk.median;
        e["speedup"] = base / sk.median;
        e["image_tokens"] = eng->pruned_tokens_per_tile();
        va.push_back(e);
      }
      eng->set_prune(variants[0]);
      j["vision_variants"] = va;
    }
  }

  const int64_t V = model.vocab_size();
  const int64_t P = o.prefill_tokens, D = o.decode_tokens;
  KvCache cache = model.make_cache(P + std::max<int64_t>(D, 8) + 1);
  const std::vector<int32_t> prompt = random_token_ids(P, V, cfg.image_token_id, o.seed);

  // 4. Prefill: P tokens at position 0.
  if (stages.count("prefill")) {
    sl.update("prefill warm-up ...");
    cache.clear();
    EV_ASSIGN_OR_RETURN(Tensor logits, eng->forward_text(prompt, Tensor(), cache, 1));
    if (!all_finite(logits)) warnings.push_back("prefill: the logits contain NaN or Inf");
    std::vector<double> times;
    for (int r = 0; r < R; ++r) {
      sl.update("prefill %d/%d ...", r + 1, R);
      cache.clear();
      const double t0 = now_s();
      EV_ASSIGN_OR_RETURN(logits, eng->forward_text(prompt, Tensor(), cache, 1));
      times.push_back(now_s() - t0);
    }
    const RunStats st = summarize(times);
    cache.clear();
    Graph g;
    Tensor ids_t = Tensor::empty(DType::kI32, Shape{P});
    TensorId x = model.build_embed(g, g.input("ids", ids_t));
    model.build_decoder(g, x, P, cache, 1);
    EV_RETURN_IF_ERROR(g.status());
    const GraphCost cost = graph_cost(g, tprec, &eng->linear_plan());
    const double gflops = cost.flops / st.median * 1e-9;
    nlohmann::json p = to_json(st);
    p["precision"] = precision_name(tprec);
    p["tokens"] = P;
    p["tokens_per_s"] = static_cast<double>(P) / st.median;
    p["gflop"] = cost.flops * 1e-9;
    p["gflops"] = gflops;
    p["peak_gflops"] = tpeak;
    p["fraction_of_peak"] = (cost.int8_linear_flops / ceil.int8_gops + (cost.flops - cost.int8_linear_flops) / tpeak) *
                            1e-9 / st.median;
    j["prefill"] = p;
  }

  // 5. Decode: D single-token steps after a prefill of P tokens.
  if (stages.count("decode") && D > 0) {
    const std::vector<int32_t> next = random_token_ids(D + 8, V, cfg.image_token_id, o.seed + 1);
    auto run_decode = [&](int64_t steps, std::vector<double>* step_times) -> Status {
      cache.clear();
      EV_ASSIGN_OR_RETURN(Tensor l0, eng->forward_text(prompt, Tensor(), cache, 1));
      (void)l0;
      for (int64_t s = 0; s < steps; ++s) {
        const double t0 = now_s();
        EV_ASSIGN_OR_RETURN(Tensor l, eng->forward_text({next[static_cast<size_t>(s)]}, Tensor(), cache, 1));
        if (step_times) step_times->push_back(now_s() - t0);
        if (s + 1 == steps && !all_finite(l)) warnings.push_back("decode: the logits contain NaN or Inf");
      }
      return Status::Ok();
    };
    sl.update("decode warm-up ...");
    EV_RETURN_IF_ERROR(run_decode(std::min<int64_t>(D, 8), nullptr));
    std::vector<double> per_token, all_steps;
    for (int r = 0; r < R; ++r) {
      sl.update("decode %d/%d ...", r + 1, R);
      std::vector<double> steps;
      EV_RETURN_IF_ERROR(run_decode(D, &steps));
      double sum = 0;
      for (double s : steps) sum += s;
      per_token.push_back(sum / static_cast<double>(D));
      all_steps.insert(all_steps.end(), steps.begin(), steps.end());
    }
    const RunStats st = summarize(per_token);
    // Cost of the step in the middle of the run (the KV part grows linearly with the position).
    cache.clear();
    cache.set_size(P + D / 2);
    Graph g;
    Tensor ids_t = Tensor::empty(DType::kI32, Shape{1});
    TensorId x = model.build_embed(g, g.input("ids", ids_t));
    model.build_decoder(g, x, 1, cache, 1);
    cache.clear();
    EV_RETURN_IF_ERROR(g.status());
    const GraphCost cost = graph_cost(g, tprec, &eng->linear_plan());
    const double gbs = cost.bytes / st.median * 1e-9;
    nlohmann::json d = to_json(st, "_s_per_token");
    d["precision"] = precision_name(tprec);
    d["tokens"] = D;
    d["context_start"] = P;
    d["tokens_per_s"] = 1.0 / st.median;
    d["step"] = to_json(summarize(all_steps));
    d["bytes_per_token"] = cost.bytes;
    d["weight_bytes_per_token"] = cost.weight_bytes;
    d["gbs"] = gbs;
    d["weight_gbs"] = cost.weight_bytes / st.median * 1e-9;
    d["bandwidth_gbs"] = ceil.mem_read_gbs;
    d["fraction_of_bandwidth"] = gbs / ceil.mem_read_gbs;
    d["gflops"] = cost.flops / st.median * 1e-9;
    j["decode"] = d;
  }
  if (o.precisions.size() > 1) {
    EV_ASSIGN_OR_RETURN(j["precision_variants"], precision_variants(o, bm.dir, stages, ceil, sl));
  }
  sl.done();

  bool exact = false;
  const int64_t peak = peak_rss_since_reset(&exact);
  j["memory"] = {{"peak_rss_bytes", peak},
                 {"peak_rss_exact", exact},
                 {"rss_after_load_bytes", rss_after_load},
                 {"weight_bytes", model.weight_bytes()},
                 {"activation_bytes", ex.activation_bytes()},
                 {"kv_cache_bytes", cache.bytes()}};

  // Targets of the performance issue; they are stated for SmolVLM-256M in bf16.
  const bool is_256m = cfg.vision.hidden_size == 768 && cfg.vision.image_size == 512 && cfg.text.hidden_size == 576;
  nlohmann::json t = nlohmann::json::object();
  auto target = [&](const char* key, const char* what, double goal, double value, bool lower_is_better) {
    if (!std::isfinite(value)) return;
    t[key] = {{"what", what},
              {"target", goal},
              {"value", value},
              {"met", lower_is_better ? value < goal : value >= goal}};
  };
  if (j.contains("vision")) {
    if (is_256m)
      target("vision_tile_s", "SmolVLM-256M tile (vision + connector), seconds", kTargetTileSeconds,
             jnum(j, "vision", "median_s"), true);
    target("vision_gemm_fraction", "vision Linear nodes, fraction of the precision's peak", kTargetGemmFraction,
           jnum(j["vision"], "linear", "fraction_of_peak"), false);
  }
  if (j.contains("decode"))
    target("decode_bandwidth_fraction", "decode, fraction of the memory read bandwidth", kTargetDecodeFraction,
           jnum(j, "decode", "fraction_of_bandwidth"), false);
  j["targets"] = t;
  j["warnings"] = warnings;
  return j;
}

std::string bench_table(const nlohmann::json& j) {
  std::string o;
  try {
    const auto& m = j.at("model");
    const auto& c = j.at("ceilings");
    o += strf("edgevlm bench: %s (%s, %.1f M params, %s of weights), %s compute, %d threads, %d timed runs per stage\n",
              m.value("label", "").c_str(), m.value("architecture", "").c_str(),
              m.value("params", 0.0) * 1e-6, fmt_bytes(m.value("weight_bytes", 0.0)).c_str(),
              j.value("precision", "").c_str(), j.value("threads", 0), j.value("repeats", 0));
    o += strf("machine: f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s, int8 %.1f GOP/s, memory read %.1f GB/s (%d threads, %s)\n",
              c.value("f32_gflops", 0.0), c.value("bf16_gflops", 0.0), c.value("int8_gops", 0.0),
              c.value("mem_read_gbs", 0.0), c.value("threads", 0), c.value("isa", "").c_str());
    o += strf("cpu: %s\n\n", c.value("cpu", "").c_str());

    TextTable tt({"stage", "median", "min", "p90", "rate", "work", "achieved", "of ceiling"});
    if (j.contains("load")) {
      const auto& l = j["load"];
      tt.add_row({"load (parse, map, pack)", fmt_seconds(l.value("median_s", 0.0)), fmt_seconds(l.value("min_s", 0.0)),
                  fmt_seconds(l.value("p90_s", 0.0)), "", "", "", ""});
    }
    if (j.contains("vision")) {
      const auto& v = j["vision"];
      tt.add_row({strf("vision tile %dpx (+connector)", v.value("tile_size", 0)), fmt_seconds(v.value("median_s", 0.0)),
                  fmt_seconds(v.value("min_s", 0.0)), fmt_seconds(v.value("p90_s", 0.0)),
                  strf("%.2f tile/s", v.value("tiles_per_s", 0.0)), strf("%.1f GFLOP", v.value("gflop", 0.0)),
                  strf("%.1f GFLOP/s", v.value("gflops", 0.0)),
                  fmt_percent(v.value("fraction_of_peak", 0.0)) + " " + v.value("precision", "") + " peak"});
      const auto& lin = v.at("linear");
      tt.add_row({"  vision GEMMs only (Linear)", fmt_seconds(lin.value("seconds", 0.0)), "", "", "",
                  strf("%.1f GFLOP", lin.value("gflop", 0.0)), strf("%.1f GFLOP/s", lin.value("gflops", 0.0)),
                  fmt_percent(lin.value("fraction_of_peak", 0.0)) + " " + v.value("precision", "") + " peak"});
    }
    if (j.contains("prefill")) {
      const auto& p = j["prefill"];
      tt.add_row({strf("prefill %d tokens", p.value("tokens", 0)), fmt_seconds(p.value("median_s", 0.0)),
                  fmt_seconds(p.value("min_s", 0.0)), fmt_seconds(p.value("p90_s", 0.0)),
                  strf("%.0f tok/s", p.value("tokens_per_s", 0.0)), strf("%.1f GFLOP", p.value("gflop", 0.0)),
                  strf("%.1f GFLOP/s", p.value("gflops", 0.0)),
                  fmt_percent(p.value("fraction_of_peak", 0.0)) + " " + p.value("precision", "") + " peak"});
    }
    if (j.contains("decode")) {
      const auto& d = j["decode"];
      tt.add_row({strf("decode %d tokens @%d (per token)", d.value("tokens", 0), d.value("context_start", 0)),
                  fmt_seconds(d.value("median_s_per_token", 0.0)), fmt_seconds(d.value("min_s_per_token", 0.0)),
                  fmt_seconds(d.value("p90_s_per_token", 0.0)), strf("%.1f tok/s", d.value("tokens_per_s", 0.0)),
                  fmt_bytes(d.value("bytes_per_token", 0.0)) + "/tok", strf("%.1f GB/s", d.value("gbs", 0.0)),
                  fmt_percent(d.value("fraction_of_bandwidth", 0.0)) + " mem bw"});
    }
    o += tt.render();
    if (j.contains("memory")) {
      const auto& mm = j["memory"];
      o += strf("\nmemory: peak RSS %s%s (after load %s; weights on disk %s, activation buffers %s, KV cache %s)\n",
                fmt_bytes(mm.value("peak_rss_bytes", 0.0)).c_str(),
                mm.value("peak_rss_exact", false) ? "" : " (process lifetime)",
                fmt_bytes(mm.value("rss_after_load_bytes", 0.0)).c_str(),
                fmt_bytes(mm.value("weight_bytes", 0.0)).c_str(), fmt_bytes(mm.value("activation_bytes", 0.0)).c_str(),
                fmt_bytes(mm.value("kv_cache_bytes", 0.0)).c_str());
    }
    if (j.contains("vision") && j["vision"].contains("by_op")) {
      std::vector<std::pair<double, std::string>> ops;
      for (const auto& [name, e] : j["vision"]["by_op"].items()) ops.emplace_back(e.value("share", 0.0), name);
      std::sort(ops.rbegin(), ops.rend());
      o += "vision time by op:";
      for (const auto& [share, name] : ops)
        if (share >= 0.001) o += " " + name + " " + fmt_percent(share);
      o += "\n";
    }
    if (j.contains("precision_variants")) {
      o += "\nprecisions side by side (round-robin in one run; speed-up against the first):\n";
      TextTable pt({"precision", "int8 Linear", "vision tile", "speed-up", "vision GEMMs", "speed-up", "GEMM GOP/s",
                    "prefill tok/s", "decode ms/token", "tok/s", "of bandwidth"});
      for (const auto& v : j["precision_variants"]) {
        const bool hv = v.contains("vision"), hd = v.contains("decode"), hp = v.contains("prefill");
        pt.add_row({v.value("precision", ""), strf("%d/%d", v.value("int8_linears", 0), v.value("linears", 0)),
                    hv ? fmt_seconds(v["vision"].value("median_s", 0.0)) : "-",
                    hv ? strf("%.2fx", v["vision"].value("speedup", 0.0)) : "-",
                    hv ? fmt_seconds(v["vision_linear"].value("median_s", 0.0)) : "-",
                    hv ? strf("%.2fx", v["vision_linear"].value("speedup", 0.0)) : "-",
                    hv ? strf("%.0f", v["vision_linear"].value("gops", 0.0)) : "-",
                    hp ? strf("%.0f", v["prefill"].value("tokens_per_s", 0.0)) : "-",
                    hd ? strf("%.2f", 1e3 * v["decode"].value("median_s_per_token", 0.0)) : "-",
                    hd ? strf("%.1f", v["decode"].value("tokens_per_s", 0.0)) : "-",
                    hd ? fmt_percent(v["decode"].value("fraction_of_bandwidth", 0.0)) : "-"});
      }
      o += pt.render();
    }
    if (j.contains("vision_variants")) {
      o += "\nvision stage per --prune variant (round-robin in one run):\n";
      TextTable vt({"prune", "image tokens", "median", "p90", "speed-up", "work", "achieved", "of ceiling"});
      for (const auto& v : j["vision_variants"])
        vt.add_row({v.value("prune", ""), strf("%lld", static_cast<long long>(v.value("image_tokens", 0))),
                    fmt_seconds(v.value("median_s", 0.0)), fmt_seconds(v.value("p90_s", 0.0)),
                    strf("%.2fx", v.value("speedup", 0.0)), strf("%.2f GFLOP", v.value("gflop", 0.0)),
                    strf("%.1f GFLOP/s", v.value("gflops", 0.0)), fmt_percent(v.value("fraction_of_peak", 0.0))});
      o += vt.render();
    }
    if (j.contains("targets") && !j["targets"].empty()) {
      o += "targets:\n";
      for (const auto& [k, t] : j["targets"].items()) {
        const double goal = t.value("target", 0.0), val = t.value("value", 0.0);
        const bool frac = k.find("fraction") != std::string::npos;
        o += strf("  %-28s %s %s: %s  %s\n", k.c_str(), frac ? ">=" : "<",
                  frac ? fmt_percent(goal).c_str() : fmt_seconds(goal).c_str(),
                  frac ? fmt_percent(val).c_str() : fmt_seconds(val).c_str(), t.value("met", false) ? "met" : "NOT met");
      }
    }
    if (j.contains("warnings"))
      for (const auto& w : j["warnings"]) o += "warning: " + w.get<std::string>() + "\n";
  } catch (const std::exception& e) {
    o += std::string("(incomplete bench result: ") + e.what() + ")\n";
  }
  return o;
}

Status run_bench(const BenchOptions& o) {
  EV_ASSIGN_OR_RETURN(nlohmann::json j, bench_json(o));
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const std::exception& e) {
    return Internal(std::string("bench: cannot encode the result: ") + e.what());
  }
  if (!o.out.empty()) EV_RETURN_IF_ERROR(write_text_file(o.out, text));
  if (o.json) {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    const std::string t = bench_table(j);
    std::fwrite(t.data(), 1, t.size(), stdout);
  }
  std::fflush(stdout);
  return Status::Ok();
}

}  // namespace ev
