// Decode-step benchmark (SmolVLM text decoder, M = 1): the fused projections of models/llama_text.h ("Fused
// projections": q/k/v and gate/up as one Linear each) against the checkpoint's separate Linears, side by side in ONE
// process, runs interleaved (unfused, fused, unfused, ...) so that a noisy neighbour slows both alike. Plain main.
//
//   build-<you>/bench_decode [MODEL_DIR=/tmp/m/s256] [PRECISION=bf16|int8|auto|f32] [REPEATS=5]
//
// Make the model once: edgevlm bench --shape smolvlm-256m --keep-model /tmp/m/s256 --precision auto.
// Prints: the largest |fused - unfused| logit difference (must be 0), decode ms/token (prefill 256 tokens, then 64
// steps, as `edgevlm bench`), prefill time, per-op-kind time of one step at position 288 (min / median over the
// interleaved runs), the per-step graph build and executor overhead (wall - sum of node times), the pool's hand-off
// round trip, and for int8 the effect of GemmOptions::int8_min_parallel_macs on the 576 x 576 o_proj.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"
#include "runtime/engine.h"

namespace ev {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int bench_main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "/tmp/m/s256";
  const std::string prec = argc > 2 ? argv[2] : "bf16";
  const int R = argc > 3 ? std::atoi(argv[3]) : 5;
  const int P = 256, D = 64;
  EngineOptions eo;
  if (auto st = parse_precision_option(prec, &eo); !st.ok()) { std::printf("%s\n", st.to_string().c_str()); return 1; }
  eo.network_only = true;
  auto er = Engine::load(dir, eo);
  if (!er.ok()) { std::printf("load: %s\n", er.status().to_string().c_str()); return 1; }
  auto eng = std::move(er).value();
  std::printf("plan: %s, %zu entries\n", eng->plan_source().c_str(), eng->linear_plan().precision.size());
  // The engine hands out its model const; switching the fusion between runs is what this benchmark is for.
  VlmModel& model = const_cast<VlmModel&>(eng->model());
  std::mt19937 rng(1);
  std::vector<int32_t> prompt(P), next(D);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % 1000);
  for (auto& t : next) t = static_cast<int32_t>(rng() % 1000);
  KvCache cache = model.make_cache(P + D + 8);
  auto run = [&](bool fused, std::vector<double>* per_tok) -> int {
    { LinearPlan pl = eng->linear_plan(); model.select_fused_linears(fused, &pl); }
    cache.clear();
    auto l0 = eng->forward_text(prompt, Tensor(), cache, 1);
    if (!l0.ok()) { std::printf("%s\n", l0.status().to_string().c_str()); return 1; }
    double sum = 0;
    for (int s = 0; s < D; ++s) {
      const double t0 = now_s();
      auto l = eng->forward_text({next[static_cast<size_t>(s)]}, Tensor(), cache, 1);
      sum += now_s() - t0;
      if (!l.ok()) { std::printf("%s\n", l.status().to_string().c_str()); return 1; }
    }
    if (per_tok) per_tok->push_back(sum / D);
    return 0;
  };
  // Outputs identical? compare logits of one decode step fused vs unfused.
  {
    std::vector<float> a, b;
    for (int f = 0; f < 2; ++f) {
      { LinearPlan pl = eng->linear_plan(); model.select_fused_linears(f == 1, &pl); }
      cache.clear();
      auto l0 = eng->forward_text(prompt, Tensor(), cache, 1);
      auto l = eng->forward_text({next[0]}, Tensor(), cache, 1);
      if (!l0.ok() || !l.ok()) { std::printf("err\n"); return 1; }
      const float* p = l.value().data_as<float>();
      (f ? b : a).assign(p, p + l.value().numel());
      // prefill logits too
      const float* p0 = l0.value().data_as<float>();
      (f ? b : a).insert((f ? b : a).end(), p0, p0 + l0.value().numel());
    }
    double md = 0;
    for (size_t i = 0; i < a.size(); ++i) md = std::max(md, (double)std::fabs(a[i] - b[i]));
    std::printf("max |fused - unfused| over prefill+decode logits: %g (%zu values)\n", md, a.size());
  }
  std::vector<double> tf, tu;
  run(true, nullptr);
  run(false, nullptr);
  for (int r = 0; r < R; ++r) {
    if (run(false, &tu)) return 1;
    if (run(true, &tf)) return 1;
  }
  std::printf("decode ms/token: unfused median %.2f (", median(tu) * 1e3);
  for (double t : tu) std::printf(" %.2f", t * 1e3);
  std::printf(")\n                 fused   median %.2f (", median(tf) * 1e3);
  for (double t : tf) std::printf(" %.2f", t * 1e3);
  std::printf(")\n");

  // Per-step overheads at position P + D/2 (fused): graph build, executor run with and without node timing.
  { LinearPlan pl = eng->linear_plan(); model.select_fused_linears(true, &pl); }
  cache.clear();
  cache.set_size(P + D / 2);
  std::vector<double> tb, tr, tn;
  for (int i = 0; i < 50; ++i) {
    Tensor ids_t = Tensor::empty(DType::kI32, Shape{1});
    ids_t.data_as<int32_t>()[0] = next[0];
    const double t0 = now_s();
    Graph g;
    TensorId x = model.build_embed(g, g.input("ids", ids_t));
    TensorId lg = model.build_decoder(g, x, 1, cache, 1);
    g.mark_output(lg);
    const double t1 = now_s();
    ExecOptions xo;
    xo.time_nodes = true;
    auto r = eng->executor().run(g, xo);
    const double t2 = now_s();
    if (!r.ok()) { std::printf("%s\n", r.status().to_string().c_str()); return 1; }
    double ns = 0;
    for (const auto& t : r.value().timings) ns += t.seconds;
    tb.push_back(t1 - t0);
    tr.push_back(t2 - t1);
    tn.push_back(ns);
    if (i == 0) std::printf("graph nodes: %zu\n", g.nodes.size());
  }
  std::printf("per step: graph build %.1f us, executor run %.2f ms, sum of node times %.2f ms, run - nodes %.1f us\n",
              median(tb) * 1e6, median(tr) * 1e3, median(tn) * 1e3, (median(tr) - median(tn)) * 1e6);
  // Prefill (256 tokens, M = 256) fused vs unfused, interleaved.
  {
    std::vector<double> tp[2];
    for (int r = 0; r < 2 * R; ++r)
      for (int f = 0; f < 2; ++f) {
        { LinearPlan pl = eng->linear_plan(); model.select_fused_linears(f == 1, &pl); }
        cache.clear();
        const double t0 = now_s();
        auto l0 = eng->forward_text(prompt, Tensor(), cache, 1);
        tp[f].push_back(now_s() - t0);
        if (!l0.ok()) return 1;
      }
    std::printf("prefill %d tokens: unfused min/median %.1f/%.1f ms, fused %.1f/%.1f ms\n", P,
                *std::min_element(tp[0].begin(), tp[0].end()) * 1e3, median(tp[0]) * 1e3,
                *std::min_element(tp[1].begin(), tp[1].end()) * 1e3, median(tp[1]) * 1e3);
  }
  // Interleaved per-node timing of one decode step graph (position P + D/2), fused vs unfused.
  {
    const int runs = R * 4;
    std::vector<double> wall[2];
    std::map<std::string, std::vector<double>> kind[2];  // per-run sum of node time by category
    Graph gs[2];
    Tensor ids_t = Tensor::empty(DType::kI32, Shape{1});
    ids_t.data_as<int32_t>()[0] = next[0];
    for (int f = 0; f < 2; ++f) {
      { LinearPlan pl = eng->linear_plan(); model.select_fused_linears(f == 1, &pl); }
      cache.clear();
      cache.set_size(P + D / 2);
      TensorId x = model.build_embed(gs[f], gs[f].input("ids", ids_t));
      gs[f].mark_output(model.build_decoder(gs[f], x, 1, cache, 1));
      (void)eng->executor().run(gs[f]);
    }
    auto cat = [](const Node& n) -> std::string {
      if (n.op != OpKind::kLinear) return op_kind_name(n.op);
      const std::string& s = n.name;
      if (s == "t.logits") return "linear head";
      const size_t d = s.rfind('.');
      const std::string w = s.substr(d + 1);
      if (w == "q" || w == "k" || w == "v" || w == "qkv") return "linear q/k/v";
      if (w == "gate" || w == "up" || w == "gate_up") return "linear gate/up";
      return "linear " + w;
    };
    for (int r = 0; r < runs; ++r)
      for (int f = 0; f < 2; ++f) {
        ExecOptions xo;
        xo.time_nodes = true;
        const double t0 = now_s();
        auto res = eng->executor().run(gs[f], xo);
        wall[f].push_back(now_s() - t0);
        std::map<std::string, double> sum;
        for (const auto& t : res.value().timings) sum[cat(gs[f].node(t.id))] += t.seconds;
        for (auto& [k, v] : sum) kind[f][k].push_back(v);
      }
    std::printf("one step @%d, %d interleaved runs: wall min/median unfused %.2f/%.2f ms, fused %.2f/%.2f ms\n", P + D / 2,
                runs, *std::min_element(wall[0].begin(), wall[0].end()) * 1e3, median(wall[0]) * 1e3,
                *std::min_element(wall[1].begin(), wall[1].end()) * 1e3, median(wall[1]) * 1e3);
    std::printf("%-16s %12s %12s   (min / median ms per step)\n", "category", "unfused", "fused");
    std::set<std::string> keys;
    for (int f = 0; f < 2; ++f) for (auto& [k, v] : kind[f]) keys.insert(k);
    for (const auto& k : keys) {
      auto mm = [&](int f) {
        auto& v = kind[f][k];
        if (v.empty()) return std::string("-");
        char b[64];
        std::snprintf(b, sizeof b, "%.3f/%.3f", *std::min_element(v.begin(), v.end()) * 1e3, median(v) * 1e3);
        return std::string(b);
      };
      std::printf("%-16s %12s %12s\n", k.c_str(), mm(0).c_str(), mm(1).c_str());
    }
  }
  // INT8: GemmOptions::int8_min_parallel_macs (2^19) runs o_proj (576 x 576 = 2^18.3 MACs) on one thread.
  if (eng->linear_plan().precision.size() > 0) {
    { LinearPlan pl = eng->linear_plan(); model.select_fused_linears(true, &pl); }
    cache.clear();
    cache.set_size(P + D / 2);
    Graph g;
    Tensor ids_t = Tensor::empty(DType::kI32, Shape{1});
    ids_t.data_as<int32_t>()[0] = next[0];
    TensorId x = model.build_embed(g, g.input("ids", ids_t));
    g.mark_output(model.build_decoder(g, x, 1, cache, 1));
    const GemmOptions def = gemm_options();
    std::vector<double> w[2], ao[2];
    for (int r = 0; r < 4 * R; ++r)
      for (int v = 0; v < 2; ++v) {
        GemmOptions o = def;
        if (v == 1) o.int8_min_parallel_macs = 1 << 17;
        set_gemm_options(o);
        ExecOptions xo;
        xo.time_nodes = true;
        const double t0 = now_s();
        auto res = eng->executor().run(g, xo);
        w[v].push_back(now_s() - t0);
        double a = 0;
        for (const auto& t : res.value().timings)
          if (g.node(t.id).name.find("attn_out") != std::string::npos) a += t.seconds;
        ao[v].push_back(a);
      }
    set_gemm_options(def);
    std::printf("int8_min_parallel_macs 2^19 (default) vs 2^17: step wall median %.2f vs %.2f ms, attn_out %.3f vs %.3f ms\n",
                median(w[0]) * 1e3, median(w[1]) * 1e3, median(ao[0]) * 1e3, median(ao[1]) * 1e3);
  }
  // Pool hand-off round trip: parallel_for with an empty body over 2 chunks.
  {
    ThreadPool& pool = eng->pool();
    std::vector<double> v;
    for (int rep = 0; rep < 5; ++rep) {
      const int N = 20000;
      const double t0 = now_s();
      for (int i = 0; i < N; ++i) pool.parallel_for(2, [](int, int64_t, int64_t) {}, 1);
      v.push_back((now_s() - t0) / N);
    }
    std::printf("pool hand-off round trip (empty parallel_for, %d threads): %.2f us\n", pool.size(), median(v) * 1e6);
  }
  return 0;
}

}  // namespace
}  // namespace ev

int main(int argc, char** argv) { return ev::bench_main(argc, argv); }
