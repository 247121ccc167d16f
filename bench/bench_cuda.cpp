// bench_cuda: the CUDA backend's targets (issue 7), measured in one run on one GPU.
//
//   bench_cuda [--shape-dir DIR] [--student DIR] [--what attn,tile,batch,decode,streams] [--repeats N]
//              [--variants graphs,u8,flash2,fp8,untuned,no-graphs] [--batch B]... [--decode-tokens N]
//              [--streams N] [--seconds S] [--workers W] [--json FILE]
//
//  ceilings  bf16 GEMM rate (cuBLASLt through our executor, 8192^3) and device-to-device copy bandwidth.
//  tile      SmolVLM-256M-shaped vision tower + connector, one 512-px tile, batch 1: wall time of encode_tiles
//            (pixels up, embeddings down, synchronised), median of --repeats, CUDA graphs on and off; variant u8:
//            the tiles as u8 frames (a quarter of the f32 bytes to stage, half of the bf16 upload).
//  batch     the same at batch B (default 32, 64): tiles per second; GEMM autotuning on and off; and two engines
//            (two executors, two CUDA streams) encoding on two threads at once, so that the host work of one
//            overlaps the GPU work of the other.
//  decode    the 256M shape's text model at batch 1: 128 greedy tokens after a 64-token prompt (logits down and
//            argmax on the host every token), tokens per second, CUDA graphs on and off; then with the picks on
//            the device (Engine::decode_greedy, as generation does on CUDA), chunks of 1-16 steps per graph.
//  attn      the attention kernels side by side on the vision tower's shape (1024 tokens, 12 heads of 64, bf16 in,
//            f32 out) at batch 1 and 32: flash2 (mma.sync) and each block shape of flash3 (wgmma, sm_90a), GPU
//            time by CUDA events, interleaved rounds, TFLOP/s (4 T S D per head), and each one's largest
//            difference from flash2 relative to flash2's largest output.
//  streams   N concurrent 30 FPS streams of the shipped student (default 256) for S seconds in real time: each
//            frame tick, one vision pass batched across the streams (u8 frames, fast head included); latency =
//            batch done - frame arrival. W language workers (each its own engine and CUDA stream) serve requests
//            that every stream issues at 5 Hz on its newest frame (prompt prefill + 32 tokens), up to --lang-batch
//            of them decoded together (Engine::generate_batch): achieved rate per stream and latency.
// The 256M model is written with random weights (tools/random_model.h) into --shape-dir if it has none.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <functional>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "kernels/cuda/cuda_backend.h"
#include "runtime/engine.h"
#include "text/sampling.h"
#include "tools/random_model.h"

#if defined(EDGEVLM_HAVE_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_kernels.h"
#endif

namespace {

using ev::Status;
using ev::Tensor;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

struct Args {
  std::string shape_dir = "/tmp/edgevlm-smolvlm-256m";
  std::string student = "models/road-student";
  std::string what = "tile,batch,decode,streams";
  std::string variants;  // engine variants to run (labels: graphs,u8,flash2,fp8,untuned,no-graphs); empty: all
  std::string json;
  int repeats = 30;
  std::vector<int> batches;
  int decode_tokens = 128;
  int streams = 256;
  double seconds = 10;
  int workers = 8;
  int answer_tokens = 32;
  int lang_batch = 64;  // requests a language worker decodes together (Engine::generate_batch); 1: one at a time
  std::string device = "cuda";  // cpu: the streams part on the CPU backend (for checking the harness without a GPU)
};
std::string g_device = "cuda";

bool has(const std::string& list, const char* w) {  // w is one of the comma-separated words of list
  std::string l = ",", k = ",";
  l += list;
  l += ',';
  k += w;
  k += ',';
  return l.find(k) != std::string::npos;
}

std::unique_ptr<ev::Engine> load(const std::string& dir, bool graphs, bool network_only, bool tune = true,
                                 bool fp8 = false) {
  ev::EngineOptions o;
  o.cuda_fp8_vision = fp8;
  o.device = g_device;
  o.cuda_graphs = graphs;
  o.cuda_tune_gemms = tune;
  o.network_only = network_only;
  o.threads = 4;
  auto e = ev::Engine::load(dir, o);
  if (!e.ok()) {
    std::fprintf(stderr, "bench_cuda: loading %s: %s\n", dir.c_str(), e.status().to_string().c_str());
    std::exit(1);
  }
  return std::move(e).value();
}

nlohmann::json ceilings() {
  nlohmann::json j;
#if defined(EDGEVLM_HAVE_CUDA)
  // Copy bandwidth: 2 GiB device to device, counted read + write.
  const size_t bytes = size_t(1) << 31;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) == cudaSuccess && cudaMalloc(&b, bytes) == cudaSuccess) {
    cudaMemset(a, 1, bytes);
    std::vector<double> t;
    for (int r = 0; r < 10; ++r) {
      cudaDeviceSynchronize();
      const double t0 = ev::now_s();
      cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
      cudaDeviceSynchronize();
      t.push_back(ev::now_s() - t0);
    }
    j["copy_GBps"] = 2.0 * static_cast<double>(bytes) / median(t) / 1e9;
  }
  cudaFree(a);
  cudaFree(b);
#endif
  // bf16 GEMM through the backend: one 8192^3 Linear, weights resident, timed on the GPU by the executor.
  ev::CudaOptions co;
  auto be = ev::make_cuda_backend(co);
  if (!be.ok()) return j;
  auto ex = ev::make_cuda_executor(be->get(), nullptr);
  if (!ex.ok()) return j;
  const int64_t n = 8192;
  Tensor x = Tensor::empty(ev::DType::kF32, ev::Shape{n, n}), w = Tensor::empty(ev::DType::kBF16, ev::Shape{n, n});
  for (int64_t i = 0; i < n * n; ++i) x.data_as<float>()[i] = static_cast<float>((i * 7919) % 97) * 0.01f - 0.48f;
  std::memset(w.data(), 0x3c, w.nbytes());
  ev::Graph g;
  ev::TensorId y = g.linear("y", g.input("x", x), g.weight("w", w));
  g.mark_output(y);
  std::vector<double> t;
  for (int r = 0; r < 6; ++r) {
    ev::ExecOptions eo;
    eo.time_nodes = true;
    auto res = (*ex)->run(g, eo);
    if (!res.ok()) break;
    for (const auto& nt : res->timings)
      if (nt.id == y) t.push_back(nt.seconds);
  }
  if (!t.empty()) j["bf16_TFLOPs"] = 2.0 * static_cast<double>(n * n * n) / median(t) / 1e12;
  return j;
}

// The attention kernels side by side (see the header).
nlohmann::json bench_attention(int repeats) {
  nlohmann::json out = nlohmann::json::array();
#if defined(EDGEVLM_HAVE_CUDA)
  namespace cu = ev::cuda;
  if (cu::init_kernels() != cudaSuccess) return out;
  std::printf("  attention kernels (flash3 %s)\n", cu::flash3_available() ? "available" : "not in this build / device");
  const int T = 1024, H = 12, D = 64;
  for (int B : {1, 32}) {
    const size_t n = static_cast<size_t>(B) * T * H * D;
    std::vector<uint16_t> host(n);
    uint32_t st = 12345u + static_cast<uint32_t>(B);
    void *q = nullptr, *k = nullptr, *v = nullptr;
    float *o_ref = nullptr, *o = nullptr;
    auto fill = [&](void** d, float scale) {
      for (size_t i = 0; i < n; ++i) {
        st = st * 1664525u + 1013904223u;
        const float f = (static_cast<float>(st >> 8) / 16777216.f * 2.f - 1.f) * scale;
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        host[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
      }
      cudaMalloc(d, n * 2);
      cudaMemcpy(*d, host.data(), n * 2, cudaMemcpyHostToDevice);
    };
    fill(&q, 2.f);
    fill(&k, 2.f);
    fill(&v, 1.f);
    cudaMalloc(&o_ref, n * 4);
    cudaMalloc(&o, n * 4);
    cudaStream_t s;
    cudaStreamCreate(&s);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    auto run = [&](int var, float* dst) {
      cu::set_flash_variant(var);
      cu::attention_mixed(q, true, k, true, v, true, B, T, T, H, H, D, 0.125f, false, 0, dst, nullptr, nullptr, s);
    };
    run(1, o_ref);
    cudaStreamSynchronize(s);
    std::vector<int> vars = {1};
    if (cu::flash3_available())
      for (int var = 2; var < cu::flash_variant_count(); ++var) vars.push_back(var);
    vars.push_back(0);
    std::vector<std::vector<double>> ms(vars.size());
    for (int round = 0; round < std::max(3, repeats / 3); ++round)
      for (size_t i = 0; i < vars.size(); ++i) {
        run(vars[i], o);  // warm
        cudaEventRecord(e0, s);
        for (int r = 0; r < 5; ++r) run(vars[i], o);
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        float t = 0;
        cudaEventElapsedTime(&t, e0, e1);
        ms[i].push_back(t / 5);
      }
    std::vector<float> a(n), b(n);
    cudaMemcpy(a.data(), o_ref, n * 4, cudaMemcpyDeviceToHost);
    const double flop = 4.0 * B * H * static_cast<double>(T) * T * D;
    for (size_t i = 0; i < vars.size(); ++i) {
      run(vars[i], o);
      cudaStreamSynchronize(s);
      cudaMemcpy(b.data(), o, n * 4, cudaMemcpyDeviceToHost);
      double md = 0, mr = 0;
      for (size_t j = 0; j < n; ++j) {
        md = std::max(md, std::fabs(static_cast<double>(a[j]) - b[j]));
        mr = std::max(mr, std::fabs(static_cast<double>(a[j])));
      }
      const double t = median(ms[i]);
      std::printf("    batch %2d  %-16s %8.3f ms  %6.1f TFLOP/s  diff vs flash2 %.2e\n", B,
                  cu::flash_variant_name(vars[i]), t, flop / (t * 1e-3) / 1e12, md / std::max(mr, 1e-30));
      out.push_back({{"batch", B}, {"kernel", cu::flash_variant_name(vars[i])}, {"ms", t},
                     {"TFLOPs", flop / (t * 1e-3) / 1e12}, {"rel_diff_vs_flash2", md / std::max(mr, 1e-30)}});
    }
    cu::set_flash_variant(0);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(s);
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(o_ref);
    cudaFree(o);
  }
#else
  (void)repeats;
#endif
  return out;
}

// GPU time per op kind of one vision pass (CUDA events around every node; direct launches).
nlohmann::json profile_vision(ev::Engine& e, int batch, const char* label = "") {
  const int S = e.config().vision.image_size;
  ev::Graph g;
  ev::TensorId out = e.model().build_vision(g, g.input("pixels", ev::random_pixels(batch, S, 7)), nullptr);
  g.mark_output(out);
  ev::ExecOptions eo;
  eo.time_nodes = true;
  std::map<std::string, std::pair<double, int>> by_op;
  for (int r = 0; r < 3; ++r) {
    auto res = e.vision_executor().run(g, eo);
    if (!res.ok()) {
      std::fprintf(stderr, "profile: %s\n", res.status().to_string().c_str());
      return {};
    }
    if (r < 2) continue;
    for (const auto& t : res->timings) {
      auto& v = by_op[ev::op_kind_name(g.node(t.id).op)];
      v.first += t.seconds;
      ++v.second;
    }
  }
  nlohmann::json j;
  double tot = 0;
  for (const auto& [k, v] : by_op) tot += v.first;
  std::printf("  vision%s batch %d, GPU time by op (events, fused, no graphs): total %.3f ms\n", label, batch,
              tot * 1e3);
  for (const auto& [k, v] : by_op) {
    j[k] = {{"ms", v.first * 1e3}, {"nodes", v.second}};
    std::printf("    %-14s %8.3f ms %5.1f%%  (%d nodes)\n", k.c_str(), v.first * 1e3, 100 * v.first / tot, v.second);
  }
  return j;
}

// u8: the tiles as u8 frames [batch, S, S, 3] (Engine::encode_tiles' frame input) instead of f32 pixels.
Tensor test_pixels(int batch, int S, uint64_t seed, bool u8) {
  return u8 ? ev::random_frames_u8(batch, S, seed) : ev::random_pixels(batch, S, seed);
}

nlohmann::json bench_tile(ev::Engine& e, int batch, int repeats, const char* label, bool u8 = false) {
  const int S = e.config().vision.image_size;
  Tensor px = test_pixels(batch, S, 7, u8);
  for (int w = 0; w < 3; ++w) (void)e.encode_tiles(px);
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = ev::now_s();
    auto out = e.encode_tiles(px);
    t.push_back(ev::now_s() - t0);
    if (!out.ok()) {
      std::fprintf(stderr, "encode_tiles: %s\n", out.status().to_string().c_str());
      std::exit(1);
    }
  }
  nlohmann::json j;
  j["batch"] = batch;
  j["graphs"] = label;
  j["median_ms"] = median(t) * 1e3;
  j["p90_ms"] = pct(t, 0.9) * 1e3;
  j["tiles_per_s"] = batch / median(t);
  std::printf("  vision %-10s batch %3d: median %8.3f ms  p90 %8.3f ms  %8.0f tiles/s\n", label, batch, median(t) * 1e3,
              pct(t, 0.9) * 1e3, batch / median(t));
  if (auto st = ev::cuda_run_stats(e.vision_executor()); st.ok()) {
    j["bytes_up"] = st->bytes_up;
    j["host_plan_ms"] = st->plan_s * 1e3;  // staging included
    j["host_enqueue_ms"] = st->enqueue_s * 1e3;
    j["wait_ms"] = st->wait_s * 1e3;
    j["replayed_as_is"] = st->replayed_as_is;
    std::printf("      last run: %s, %.1f MB up; stage+plan %.3f ms, enqueue %.3f ms, wait %.3f ms\n",
                st->replayed_as_is ? "replayed as is" : st->graph_replayed ? "captured" : "direct", st->bytes_up / 1e6,
                st->plan_s * 1e3, st->enqueue_s * 1e3, st->wait_s * 1e3);
  }
  std::fflush(stdout);
  return j;
}

// Batched vision from two engines (two executors, two CUDA streams) on two host threads: one's host work (pixel
// staging, result tensors) overlaps the other's GPU work, as a vision stage serving two camera groups would run.
nlohmann::json bench_tile_concurrent(ev::Engine& e1, ev::Engine& e2, int batch, int repeats, bool u8 = false) {
  const int S = e1.config().vision.image_size;
  Tensor px1 = test_pixels(batch, S, 7, u8), px2 = test_pixels(batch, S, 8, u8);
  for (int w = 0; w < 3; ++w) {
    (void)e1.encode_tiles(px1);
    (void)e2.encode_tiles(px2);
  }
  std::vector<double> rates;
  std::atomic<bool> failed{false};
  for (int r = 0; r < 3; ++r) {
    const double t0 = ev::now_s();
    auto loop = [&](ev::Engine& e, const Tensor& px) {
      for (int k = 0; k < repeats; ++k)
        if (!e.encode_tiles(px).ok()) failed = true;
    };
    std::thread t1(loop, std::ref(e1), std::cref(px1));
    std::thread t2(loop, std::ref(e2), std::cref(px2));
    t1.join();
    t2.join();
    rates.push_back(2.0 * batch * repeats / (ev::now_s() - t0));
  }
  if (failed) {
    std::fprintf(stderr, "encode_tiles failed in the concurrent run\n");
    std::exit(1);
  }
  nlohmann::json j;
  j["batch"] = batch;
  j["graphs"] = u8 ? "two-executors-u8" : "two-executors";
  j["tiles_per_s"] = median(rates);
  std::printf("  vision 2 executors%s batch %3d (x2 in flight): %8.0f tiles/s (median of 3 x %d batches each)\n",
              u8 ? " (u8 frames)" : "", batch, median(rates), repeats);
  std::fflush(stdout);
  return j;
}

// How far the FP8 vision GEMMs move the embeddings from the bf16 engine's, on the same 4 tiles.
nlohmann::json fp8_drift(const std::string& dir, ev::Engine& fp8) {
  auto ref = load(dir, true, true);
  const int S = fp8.config().vision.image_size;
  Tensor px = ev::random_pixels(4, S, 11);
  auto a = ref->encode_tiles(px);
  auto b = fp8.encode_tiles(px);
  if (!a.ok() || !b.ok()) {
    std::fprintf(stderr, "fp8 drift: %s\n", (a.ok() ? b.status() : a.status()).to_string().c_str());
    std::exit(1);
  }
  double dot = 0, na = 0, nb = 0, md = 0, ma = 0;
  for (int64_t i = 0; i < a->numel(); ++i) {
    const double x = a->data_as<float>()[i], y = b->data_as<float>()[i];
    dot += x * y;
    na += x * x;
    nb += y * y;
    md = std::max(md, std::fabs(x - y));
    ma = std::max(ma, std::fabs(x));
  }
  nlohmann::json j;
  j["cosine"] = dot / std::sqrt(na * nb);
  j["max_rel"] = md / ma;
  std::printf("  fp8 vision against bf16 (4 tiles, connector output): cosine %.6f, max |diff| / max |bf16| %.3e\n",
              dot / std::sqrt(na * nb), md / ma);
  return j;
}

std::vector<int32_t> g_host_tokens;  // bench_decode's greedy tokens (last run), to check decode_greedy against

nlohmann::json bench_decode(ev::Engine& e, int n_tokens, const char* label) {
  const int64_t V = e.model().vocab_size();
  std::vector<int32_t> prompt = ev::random_token_ids(64, V, e.config().image_token_id, 3);
  std::vector<double> per_run;
  double best = 1e9;
  for (int run = 0; run < 3; ++run) {
    ev::KvCache cache = e.model().make_cache(64 + n_tokens + 2);
    auto lg = e.forward_text(prompt, Tensor(), cache, 1);
    if (!lg.ok()) {
      std::fprintf(stderr, "prefill: %s\n", lg.status().to_string().c_str());
      std::exit(1);
    }
    Tensor last = *lg;
    g_host_tokens.clear();
    const double t0 = ev::now_s();
    for (int k = 0; k < n_tokens; ++k) {
      const float* p = last.data_as<float>();
      int32_t a = 0;
      for (int64_t v = 1; v < V; ++v)
        if (p[v] > p[a]) a = static_cast<int32_t>(v);
      g_host_tokens.push_back(a);
      auto nl = e.forward_text({a}, Tensor(), cache, 1);
      if (!nl.ok()) {
        std::fprintf(stderr, "decode: %s\n", nl.status().to_string().c_str());
        std::exit(1);
      }
      last = *nl;
    }
    const double dt = (ev::now_s() - t0) / n_tokens;
    per_run.push_back(dt);
    best = std::min(best, dt);
  }
  auto st = ev::cuda_run_stats(e.executor());
  // GPU time by op of one decode step (events around every node: the step's dynamic graph, fused the same way).
  {
    ev::KvCache cache = e.model().make_cache(64 + n_tokens + 2);
    (void)e.forward_text(prompt, Tensor(), cache, 1);
    std::map<std::string, std::pair<double, int>> by_op;
    ev::ExecOptions eo;
    eo.time_nodes = true;
    for (int k = 0; k < 3; ++k) {
      ev::Graph g;
      ev::Tensor ids = ev::Tensor::empty(ev::DType::kI32, ev::Shape{1});
      ids.data_as<int32_t>()[0] = 7;
      ev::TensorId lg = e.model().build_decoder(g, e.model().build_embed(g, g.input("ids", ids)), 1, cache, 1);
      g.mark_output(lg);
      auto r = e.executor().run(g, eo);
      if (!r.ok()) break;
      cache.set_size(cache.size() + 1);
      if (k < 2) continue;
      for (const auto& t : r->timings) {
        auto& v = by_op[ev::op_kind_name(g.node(t.id).op)];
        v.first += t.seconds;
        ++v.second;
      }
    }
    double tot = 0;
    for (const auto& [k, v] : by_op) tot += v.first;
    if (std::string(label) == "no-graphs") {
      std::printf("  decode step GPU time by op (events): total %.3f ms\n", tot * 1e3);
      for (const auto& [k, v] : by_op)
        std::printf("    %-14s %8.3f ms %5.1f%%  (%d nodes, %.1f us each)\n", k.c_str(), v.first * 1e3, 100 * v.first / tot,
                    v.second, v.first * 1e6 / v.second);
    }
  }
  nlohmann::json j;
  j["graphs"] = label;
  j["ms_per_token_median"] = median(per_run) * 1e3;
  j["tokens_per_s"] = 1.0 / median(per_run);
  if (st.ok()) {
    j["kernels_per_token"] = st->kernel_launches;
    j["graph_updated"] = st->graph_updated;
    j["replayed_as_is"] = st->replayed_as_is;
  }
  std::printf("  decode %-10s: %.3f ms/token = %.0f tokens/s (%d kernels per token)\n", label, median(per_run) * 1e3,
              1.0 / median(per_run), st.ok() ? st->kernel_launches : -1);
  if (st.ok()) {
    j["host_plan_ms"] = st->plan_s * 1e3;
    j["host_enqueue_ms"] = st->enqueue_s * 1e3;
    j["wait_ms"] = st->wait_s * 1e3;
    std::printf("    last token: %s; plan %.3f ms, enqueue %.3f ms, wait %.3f ms (the rest of the token: graph build, argmax)\n",
                st->replayed_as_is ? "graph replayed as it is" : st->graph_replayed ? "captured + updated" : "direct launches",
                st->plan_s * 1e3, st->enqueue_s * 1e3, st->wait_s * 1e3);
  }
  std::fflush(stdout);
  return j;
}

// Greedy decoding with the picks on the device (Engine::decode_greedy), `chunk` steps per graph run: the same
// prompt and token count as bench_decode, whose tokens it must reproduce.
nlohmann::json bench_decode_device(ev::Engine& e, int n_tokens, int chunk) {
  const int64_t V = e.model().vocab_size();
  std::vector<int32_t> prompt = ev::random_token_ids(64, V, e.config().image_token_id, 3);
  std::vector<double> per_run;
  std::vector<int32_t> toks;
  for (int run = 0; run < 3; ++run) {
    ev::KvCache cache = e.model().make_cache(64 + n_tokens + chunk + 2);
    auto lg = e.forward_text(prompt, Tensor(), cache, 1);
    if (!lg.ok()) {
      std::fprintf(stderr, "prefill: %s\n", lg.status().to_string().c_str());
      std::exit(1);
    }
    const int32_t first = ev::text::argmax(lg->data_as<float>(), static_cast<int>(V));
    const double t0 = ev::now_s();
    auto r = e.decode_greedy(first, cache, n_tokens - 1, chunk);
    const double dt = ev::now_s() - t0;
    if (!r.ok()) {
      std::fprintf(stderr, "decode_greedy: %s\n", r.status().to_string().c_str());
      std::exit(1);
    }
    toks.assign(1, first);
    toks.insert(toks.end(), r->begin(), r->end());
    per_run.push_back(dt / (n_tokens - 1));
  }
  int agree = 0;
  while (agree < static_cast<int>(std::min(toks.size(), g_host_tokens.size())) && toks[agree] == g_host_tokens[agree])
    ++agree;
  auto st = ev::cuda_run_stats(e.executor());
  nlohmann::json j;
  j["graphs"] = "device-greedy";
  j["chunk"] = chunk;
  j["ms_per_token_median"] = median(per_run) * 1e3;
  j["tokens_per_s"] = 1.0 / median(per_run);
  j["tokens_as_host_pick"] = agree;
  j["tokens"] = static_cast<int>(toks.size());
  if (st.ok()) {
    j["kernels_per_run"] = st->kernel_launches;
    j["replayed_as_is"] = st->replayed_as_is;
    j["wait_ms"] = st->wait_s * 1e3;
  }
  std::printf("  decode device-greedy chunk %2d: %.3f ms/token = %.0f tokens/s (%d kernels per run, %s); tokens as the host's "
              "picks: %d/%zu\n",
              chunk, median(per_run) * 1e3, 1.0 / median(per_run), st.ok() ? st->kernel_launches : -1,
              st.ok() && st->replayed_as_is ? "replayed as is" : "captured", agree, toks.size());
  std::fflush(stdout);
  return j;
}

// ---- streams --------------------------------------------------------------------------------------------------

struct LangRequest {
  int stream;
  double issued;
  Tensor embeds;  // [1, tokens, H]
};

nlohmann::json bench_streams(const Args& a) {
  auto vision = load(a.student, true, false);
  const int N = a.streams;
  const int S = vision->config().vision.image_size;
  const double period = 1.0 / 30.0, lang_period = 0.2;
  // The streams' frames as a camera delivers them, u8 RGB (the pass costs the same for any pixels).
  Tensor px = ev::random_frames_u8(N, S, 11);
  std::vector<std::unique_ptr<ev::Engine>> lang;
  for (int w = 0; w < a.workers; ++w) lang.push_back(load(a.student, true, false));
  const nlohmann::json messages = ev::Engine::user_turn(1, vision->describe_prompt()).value();
  // Warm-up: one vision batch, one answer per worker.
  Tensor hz;
  auto warm = vision->encode_tiles(px, nullptr, {}, &hz);
  if (!warm.ok()) {
    std::fprintf(stderr, "vision: %s\n", warm.status().to_string().c_str());
    std::exit(1);
  }
  const int64_t tok = warm->dim(1), H = warm->dim(2);
  ev::GenerateOptions gen;
  gen.max_new_tokens = a.answer_tokens;
  gen.stop_at_eos = false;
  auto make_enc = [&](const Tensor& emb) {
    ev::EncodedImages enc;
    enc.layouts.push_back({});
    enc.embeds = emb;
    enc.tokens_per_tile = static_cast<int>(tok);
    enc.n_tiles = 1;
    return enc;
  };
  for (auto& l : lang) {
    Tensor one = Tensor::empty(ev::DType::kF32, ev::Shape{1, tok, H});
    std::memcpy(one.data(), warm->data(), one.nbytes());
    auto r = l->generate_encoded(make_enc(one), messages, gen);
    if (!r.ok()) {
      std::fprintf(stderr, "bench_cuda: language warm-up: %s\n", r.status().to_string().c_str());
      std::exit(1);
    }
  }

  std::mutex mu;
  std::condition_variable cv;
  std::deque<LangRequest> queue;
  std::vector<Tensor> newest(static_cast<size_t>(N));
  std::atomic<bool> stop{false};
  std::vector<double> lang_latency;
  std::vector<int> answers(static_cast<size_t>(N), 0);
  std::string first_error;
  std::vector<std::thread> workers;
  for (int w = 0; w < a.workers; ++w) {
    workers.emplace_back([&, w] {
      for (;;) {
        std::vector<LangRequest> rs;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return stop || !queue.empty(); });
          if (queue.empty()) return;
          while (!queue.empty() && static_cast<int>(rs.size()) < a.lang_batch) {
            rs.push_back(std::move(queue.front()));
            queue.pop_front();
          }
        }
        std::vector<ev::EncodedImages> encs;
        for (const LangRequest& r : rs) encs.push_back(make_enc(r.embeds));
        Status st = Status::Ok();
        if (rs.size() == 1) {
          auto res = lang[static_cast<size_t>(w)]->generate_encoded(encs[0], messages, gen);
          if (!res.ok()) st = res.status();
        } else {
          auto res = lang[static_cast<size_t>(w)]->generate_batch(encs, messages, gen);
          if (!res.ok()) st = res.status();
        }
        const double done = ev::now_s();
        std::lock_guard<std::mutex> lk(mu);
        if (st.ok()) {
          for (const LangRequest& r : rs) {
            lang_latency.push_back(done - r.issued);
            ++answers[static_cast<size_t>(r.stream)];
          }
        } else if (first_error.empty()) {
          first_error = st.to_string();
        }
      }
    });
  }

  std::vector<double> vis_latency, batch_ms;
  int64_t frames = 0, backlog_max = 0;
  const double t_start = ev::now_s() + 0.05;
  double next_lang = t_start;
  int64_t tick = 0;
  while (true) {
    const double arrive = t_start + static_cast<double>(tick) * period;
    if (arrive - t_start >= a.seconds) break;
    double now = ev::now_s();
    if (now < arrive) std::this_thread::sleep_for(std::chrono::duration<double>(arrive - now));
    // All streams' frames of this tick in one batch.
    const double t0 = ev::now_s();
    auto emb = vision->encode_tiles(px, nullptr, {}, &hz);
    const double t1 = ev::now_s();
    if (!emb.ok()) {
      std::fprintf(stderr, "vision: %s\n", emb.status().to_string().c_str());
      std::exit(1);
    }
    batch_ms.push_back((t1 - t0) * 1e3);
    for (int s = 0; s < N; ++s) vis_latency.push_back(t1 - arrive);
    frames += N;
    // Ticks whose arrival has passed while this batch ran: how far behind the loop is.
    backlog_max = std::max(backlog_max, static_cast<int64_t>((t1 - arrive) / period));
    // 5 Hz language requests, each on the stream's newest frame.
    if (t1 >= next_lang) {
      std::lock_guard<std::mutex> lk(mu);
      for (int s = 0; s < N; ++s) {
        Tensor one = Tensor::empty(ev::DType::kF32, ev::Shape{1, tok, H});
        std::memcpy(one.data(), emb->data_as<float>() + static_cast<int64_t>(s) * tok * H, one.nbytes());
        queue.push_back({s, t1, std::move(one)});
      }
      next_lang += lang_period;
      cv.notify_all();
    }
    ++tick;
  }
  const double elapsed = ev::now_s() - t_start;
  size_t left;
  {
    std::lock_guard<std::mutex> lk(mu);
    left = queue.size();
    queue.clear();
    stop = true;
  }
  cv.notify_all();
  for (auto& t : workers) t.join();
  int64_t total_answers = 0;
  for (int c : answers) total_answers += c;
  nlohmann::json j;
  j["streams"] = N;
  j["seconds"] = elapsed;
  j["frames"] = frames;
  j["vision_batch_ms_median"] = median(batch_ms);
  j["vision_latency_ms_p50"] = pct(vis_latency, 0.5) * 1e3;
  j["vision_latency_ms_p99"] = pct(vis_latency, 0.99) * 1e3;
  j["vision_backlog_ticks_max"] = backlog_max;
  j["language_workers"] = a.workers;
  j["language_batch"] = a.lang_batch;
  j["language_answers"] = total_answers;
  j["language_hz_per_stream"] = static_cast<double>(total_answers) / elapsed / N;
  j["language_latency_ms_p50"] = pct(lang_latency, 0.5) * 1e3;
  j["language_latency_ms_p99"] = pct(lang_latency, 0.99) * 1e3;
  j["language_requests_unserved"] = static_cast<int64_t>(left);
  if (!first_error.empty()) {
    j["language_error"] = first_error;
    std::printf("  language error: %s\n", first_error.c_str());
  }
  std::printf("  streams %d x 30 FPS for %.1f s: vision batch %.2f ms median, frame latency p50 %.2f / p99 %.2f ms, "
              "backlog max %lld ticks\n",
              N, elapsed, median(batch_ms), pct(vis_latency, 0.5) * 1e3, pct(vis_latency, 0.99) * 1e3,
              static_cast<long long>(backlog_max));
  std::printf("  language: %d workers, %lld answers = %.2f Hz per stream (target 5), latency p50 %.0f / p99 %.0f ms, "
              "%zu requests unserved at the end\n",
              a.workers, static_cast<long long>(total_answers), static_cast<double>(total_answers) / elapsed / N,
              pct(lang_latency, 0.5) * 1e3, pct(lang_latency, 0.99) * 1e3, left);
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_cuda: %s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--shape-dir") a.shape_dir = val();
    else if (k == "--student") a.student = val();
    else if (k == "--what") a.what = val();
    else if (k == "--variants") a.variants = val();
    else if (k == "--json") a.json = val();
    else if (k == "--repeats") a.repeats = std::max(1, std::stoi(val()));
    else if (k == "--batch") a.batches.push_back(std::max(1, std::stoi(val())));
    else if (k == "--decode-tokens") a.decode_tokens = std::max(1, std::stoi(val()));
    else if (k == "--streams") a.streams = std::max(1, std::stoi(val()));
    else if (k == "--seconds") a.seconds = std::max(0.5, std::stod(val()));
    else if (k == "--workers") a.workers = std::max(1, std::stoi(val()));
    else if (k == "--answer-tokens") a.answer_tokens = std::max(1, std::stoi(val()));
    else if (k == "--lang-batch") a.lang_batch = std::max(1, std::stoi(val()));
    else if (k == "--device") a.device = g_device = val();
    else {
      std::fprintf(stderr, "bench_cuda: unknown argument %s\n", k.c_str());
      return 2;
    }
  }
  if (a.batches.empty()) a.batches = {32, 64};
  if (a.device == "cpu") {  // the harness alone, on the CPU backend
    nlohmann::json out;
    if (has(a.what, "streams")) out["streams"] = bench_streams(a);
    if (!a.json.empty()) std::ofstream(a.json) << out.dump(2) << "\n";
    return 0;
  }
  auto dev = ev::cuda_device_info(0);
  if (!dev.ok()) {
    std::fprintf(stderr, "bench_cuda: %s\n", dev.status().to_string().c_str());
    return 1;
  }
  std::printf("bench_cuda on %s\n", dev->describe().c_str());
  nlohmann::json out;
  out["device"] = dev->describe();
  out["ceilings"] = ceilings();
  std::printf("  ceilings: %s\n", out["ceilings"].dump().c_str());
  if (has(a.what, "attn")) out["attention"] = bench_attention(a.repeats);
  if (has(a.what, "tile") || has(a.what, "batch") || has(a.what, "decode")) {
    if (!std::filesystem::exists(a.shape_dir + "/model.safetensors")) {
      const double t0 = ev::now_s();
      ev::Status st = ev::write_random_model(a.shape_dir, "smolvlm-256m", 1, ev::DType::kBF16);
      if (!st.ok()) {
        std::fprintf(stderr, "bench_cuda: %s\n", st.to_string().c_str());
        return 1;
      }
      std::printf("  wrote the random smolvlm-256m model in %.1f s\n", ev::now_s() - t0);
    }
    // Variants side by side: CUDA graphs with GEMM autotuning (the default), graphs with cuBLASLt's first
    // heuristic (vision only: decode runs our GEMVs), direct launches.
    // flash2: the graphs variant with the mma.sync attention kernel instead of flash3 (where flash3 runs); u8: the
    // graphs variant fed u8 frames (normalisation folded into the patch embedding) instead of f32 tiles.
    struct Variant {
      const char* label;
      bool graphs, tune, fp8, flash2, u8;
    };
    for (const Variant& vr :
         {Variant{"graphs", true, true, false, false, false}, Variant{"u8", true, true, false, false, true},
          Variant{"flash2", true, true, false, true, false}, Variant{"fp8", true, true, true, false, false},
          Variant{"untuned", true, false, false, false, false}, Variant{"no-graphs", false, true, false, false, false}}) {
      if (!a.variants.empty() && !has(a.variants, vr.label)) continue;
      const bool graphs = vr.graphs;
      const char* label = vr.label;
      const bool untuned = !vr.tune || vr.fp8 || vr.flash2 || vr.u8;  // vision-only variants
      if (untuned && !has(a.what, "tile") && !has(a.what, "batch")) continue;
#if defined(EDGEVLM_HAVE_CUDA)
      if (vr.flash2 && !ev::cuda::flash3_available()) continue;
      ev::cuda::set_flash_variant(vr.flash2 ? 1 : 0);  // graphs are captured with the kernel chosen now
#endif
      if (vr.fp8) {
        auto dev = ev::cuda_device_info(0);
        if (!dev.ok() || dev->sm_major * 10 + dev->sm_minor < 89) continue;
      }
      auto e = load(a.shape_dir, graphs, true, vr.tune, vr.fp8);
      if (vr.fp8) out["fp8_drift"] = fp8_drift(a.shape_dir, *e);
      if (has(a.what, "tile")) out["tile"].push_back(bench_tile(*e, 1, a.repeats, label, vr.u8));
      if (has(a.what, "batch"))
        for (int b : a.batches) out["batch"].push_back(bench_tile(*e, b, std::max(5, a.repeats / 3), label, vr.u8));
      if (has(a.what, "batch") && graphs && (!untuned || vr.u8)) {
        auto e2 = load(a.shape_dir, true, true);
        for (int b : a.batches)
          out["batch"].push_back(bench_tile_concurrent(*e, *e2, b, std::max(5, a.repeats / 3), vr.u8));
      }
      if (auto st = ev::cuda_run_stats(e->vision_executor()); st.ok() && st->gemm_shapes_tuned > 0)
        std::printf("    (%s: %d GEMM shapes tuned in %.1f ms; %d FP8 GEMMs in the last run)\n", label,
                    st->gemm_shapes_tuned, st->gemm_tuning_s * 1e3, st->fp8_gemms);
      if (vr.fp8 && has(a.what, "profile")) out["profile_b32_fp8"] = profile_vision(*e, 32, " (FP8 GEMMs)");
#if defined(EDGEVLM_HAVE_CUDA)
      ev::cuda::set_flash_variant(0);
#endif
      if (untuned) continue;
      if (has(a.what, "decode")) {
        if (graphs) {  // programmatic dependent launch off, then on (the default), side by side
          ev::cuda_set_dependent_launch(false);
          out["decode"].push_back(bench_decode(*e, a.decode_tokens, "graphs-no-pdl"));
          ev::cuda_set_dependent_launch(true);
        }
        out["decode"].push_back(bench_decode(*e, a.decode_tokens, label));
        if (graphs)
          for (int chunk : {1, 4, 8, 16}) out["decode"].push_back(bench_decode_device(*e, a.decode_tokens, chunk));
      }
      if (!graphs && has(a.what, "profile")) {
        out["profile_b1"] = profile_vision(*e, 1);
        out["profile_b32"] = profile_vision(*e, 32);
      }
    }
  }
  if (has(a.what, "streams")) out["streams"] = bench_streams(a);
  if (!a.json.empty()) {
    std::ofstream f(a.json);
    f << out.dump(2) << "\n";
  }
  return 0;
}
