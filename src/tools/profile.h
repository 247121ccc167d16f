// edgevlm profile: where the time of one forward pass goes, per node, per op kind and per layer, against the
// machine's roofline.
//
//   edgevlm profile [--model DIR | --shape smolvlm-256m] [--precision f32|bf16] [--threads N]
//                   [--part vision|prefill|decode|all] [--prefill-tokens N] [--repeats N] [--top N]
//                   [--svg FILE] [--json] [--out FILE.json]
//
// Parts: vision = one tile through the vision tower + connector; prefill = --prefill-tokens random token ids at
// position 0; decode = one token at position --prefill-tokens (after a prefill of that many tokens).
// Each part runs once as a warm-up, then --repeats times with per-node timing (ExecOptions::time_nodes); each
// node's time is its median over those passes (one pass with --repeats 1).
//
// Per node: time, FLOPs (node_flops), bytes moved (node_bytes with Linear weights counted at the compute
// precision: 2 bytes bf16, 4 bytes f32), arithmetic intensity, achieved GFLOP/s and GB/s, and the fraction of the
// roofline: attainable = min(peak, intensity * bandwidth), where peak is the compute precision's peak for Linear and
// Attention nodes and the f32 peak for the rest; for nodes without FLOPs (copies, gathers) the fraction is GB/s over
// the memory bandwidth.
// Output: a table (per-op-kind summary, the top nodes, per-layer times), or JSON (--json); --svg writes a picture:
// per part a bar chart of time per op kind and a log-log roofline plot (op kinds and single nodes as points, the
// memory and compute ceilings as lines).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

struct ProfileOptions {
  std::string model;                    // model directory; empty: generate --shape
  std::string shape = "smolvlm-256m";   // random-weight model shape (tools/random_model.h)
  std::string weights_dtype = "bf16";   // on-disk dtype of a generated model
  std::string keep_model;               // write the generated model here and keep it
  uint64_t seed = 1;
  std::string precision = "auto";       // bf16 or f32
  std::string prune = "none";           // token pruning of the profiled vision pass (models/token_prune.h)
  int threads = 0;                      // 0: all hardware threads
  std::string part = "all";             // vision, prefill, decode or all
  int prefill_tokens = 256;             // prefill length, and the decode step's position
  int repeats = 3;                      // timed passes (per-node median)
  int top = 20;                         // nodes listed in the table
  double ceilings_seconds = 1.0;
  std::string svg;                      // write the SVG picture here
  bool json = false;                    // print JSON instead of the table
  std::string out;                      // also write the JSON here
  bool progress = true;                 // status line on stderr (only when it is a terminal)
};

void add_profile_options(CLI::App& app, ProfileOptions& o);

// Runs the profile and returns the JSON object:
//   tool, model {...}, precision, threads, repeats, ceilings {...},
//   parts: [{part, description, wall_s, node_sum_s, flops, bytes, gflops, peak_gflops, fraction_of_peak,
//            by_op: [{op, nodes, seconds, share, flops, bytes, intensity, gflops, gbs, attainable_gflops,
//                     fraction_of_roofline}],   (by decreasing time)
//            by_layer: [{layer, seconds, share, flops, gflops}],   (graph order)
//            nodes: [{name, op, layer, seconds, share, flops, bytes, intensity, gflops, gbs, peak_gflops,
//                     attainable_gflops, fraction_of_roofline}]}]   (graph order, compute nodes only)
Result<nlohmann::json> profile_json(const ProfileOptions& o);

// The readable tables of a profile_json() result (`top` nodes per part).
std::string profile_table(const nlohmann::json& j, int top);

// The SVG picture of a profile_json() result.
std::string profile_svg(const nlohmann::json& j);

// The whole command: profile_json, print the table or JSON, write --svg and --out.
Status run_profile(const ProfileOptions& o);

}  // namespace ev
