// edgevlm bench: how fast a model runs on this machine, and how close that is to the machine's own ceilings.
//
//   edgevlm bench [--model DIR | --shape smolvlm-256m] [--precision f32|bf16] [--threads N] [--repeats N]
//                 [--prefill-tokens N] [--decode-tokens N] [--json] [--out FILE.json]
//
// Steps (each stage: one warm-up run, then --repeats timed runs; median, min and p90 reported):
//   1. machine ceilings (kernels/cpu/ceilings.h): f32 / bf16 / int8 peak and memory read bandwidth;
//   2. the model: the user's directory, or a random-weight model of a named shape written to /tmp
//      (tools/random_model.h) and removed afterwards; loaded with EngineOptions::network_only. Load time is
//      Engine::load (parse, map, pack every weight for the backend);
//   3. vision: one tile (batch 1) through the vision tower + connector (Engine::encode_tiles); achieved GFLOP/s
//      (sum of node_flops of the graph / median time) as a fraction of the precision's peak; plus a GEMM-only
//      figure from per-node timings: the vision graph's Linear FLOPs over the sum of their node times;
//   4. prefill: a prompt of N random token ids (no image tokens) at position 0 (Engine::forward_text);
//   5. decode: --decode-tokens single-token steps with the KV cache after a prefill of --prefill-tokens; bytes
//      per token = Linear weights at the compute precision + KV cache + activations (sum of node bytes), as GB/s
//      and as a fraction of the memory bandwidth;
//   6. peak RSS of the measured part (load onwards; the ceiling probe and the model generation are excluded).
// Output: a table on stdout (or the JSON object with --json); --out also writes the JSON object to a file.
// A one-line status display runs on stderr while measuring when stderr is a terminal.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

struct BenchOptions {
  std::string model;                    // model directory; empty: generate --shape
  std::string shape = "smolvlm-256m";   // random-weight model shape (tools/random_model.h)
  std::string weights_dtype = "bf16";   // on-disk dtype of a generated model: bf16, f32, f16
  std::string keep_model;               // write the generated model here and keep it (default: temp dir)
  uint64_t seed = 1;                    // random weights, pixels and token ids
  std::string precision = "auto";       // compute precision: bf16 or f32
  int threads = 0;                      // 0: all hardware threads
  int repeats = 5;                      // timed runs per stage (after one warm-up)
  int load_repeats = 1;                 // Engine::load runs (each after freeing the previous engine)
  int prefill_tokens = 256;
  int decode_tokens = 64;
  std::string stages = "vision,prefill,decode";  // comma-separated subset
  double ceilings_seconds = 1.0;        // time budget of the ceiling probe
  bool json = false;                    // print JSON instead of the table
  std::string out;                      // also write the JSON object here
  bool progress = true;                 // status line on stderr (only when it is a terminal)
  // --prune SPEC (repeatable): the vision stage of each token-pruning setting (models/token_prune.h), measured
  // round-robin in one run (one timed pass of every variant per repeat) so that they share the machine's load.
  std::vector<std::string> prune;
  // --precision P (repeatable): with several, the first is the main run above and every one (the first included)
  // is then loaded as an engine of its own and timed round-robin (vision tile, its Linear nodes, prefill, decode)
  // in one run: "precision_variants".
  std::vector<std::string> precisions;
};

// Registers the options above on a CLI11 (sub)command.
void add_bench_options(CLI::App& app, BenchOptions& o);

// Measures everything and returns the JSON object (prints nothing but the status line). Keys:
//   tool, version, model {label, dir, shape, architecture, params, weight_bytes, generate_s, ...}, precision,
//   threads, repeats, ceilings {f32_gflops, bf16_gflops, int8_gops, mem_read_gbs, threads, cpu, isa},
//   load {median_s, min_s, p90_s, ...},
//   vision {tile_size, tiles, median_s, min_s, p90_s, tiles_per_s, gflop, gflops, peak_gflops, fraction_of_peak,
//           linear {gflop, seconds, gflops, fraction_of_peak}, by_op {<op>: {seconds, share, gflops}}},
//   prefill {tokens, median_s, ..., tokens_per_s, gflop, gflops, peak_gflops, fraction_of_peak},
//   decode {tokens, context_start, median_s_per_token, ..., tokens_per_s, bytes_per_token,
//           weight_bytes_per_token, gbs, fraction_of_bandwidth, gflops},
//   memory {peak_rss_bytes, peak_rss_exact, rss_after_load_bytes, weight_bytes, activation_bytes, kv_cache_bytes},
//   targets {vision_tile_s: {target, value, met}, vision_gemm_fraction: ..., decode_bandwidth_fraction: ...}
// Stages left out by --stages are absent.
Result<nlohmann::json> bench_json(const BenchOptions& o);

// The readable table of a bench_json() result.
std::string bench_table(const nlohmann::json& j);

// The whole command: bench_json, then print the table or the JSON, and write --out.
Status run_bench(const BenchOptions& o);

}  // namespace ev
