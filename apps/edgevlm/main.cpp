// edgevlm: the command-line program. One subcommand per tool; every subcommand has --json for scripts.
//   edgevlm describe --model DIR --image FILE [--image FILE...] [--prompt TEXT] [--json]
//   edgevlm bench    [--model DIR | --shape smolvlm-256m] [--precision auto|f32|bf16|int8|mixed] [--json]
//   edgevlm profile  [--model DIR | --shape smolvlm-256m] [--precision auto|f32|bf16|int8|mixed] [--svg FILE] [--json]
//   edgevlm stream   --model DIR --input SRC [--language-hz N] [--realtime] [--events FILE] [--print] [--json]
//   edgevlm eval     --model DIR (--spec FILE | --seed N --scenarios K) [--every M] [--print] [--json]
//   edgevlm prune-heads --model DIR --out DIR (--remove FRACTION | --heads N) [--iterative] [--json]
//   edgevlm quantize --model DIR --out DIR [--plan auto|int8|FILE] [--calib sim:SEED:N[:EVERY]] [--json FILE] [--svg FILE]
//   edgevlm validate --reference DIR --candidate DIR [--scenarios K | --video FILE] [--tolerance FILE] [--json FILE]
//   edgevlm convert  --to gguf|hf --model DIR|GGUF --out DIR [--type f16|q8_0|f32] [--json]
//   edgevlm sim      (--spec FILE | --seed N [--scenarios K]) [--frames N] [--size WxH] [--out DIR] [--video FILE]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/log.h"
#include "graph/backend.h"
#include "runtime/engine.h"
#include "tools/bench.h"
#include "tools/convert.h"
#include "tools/profile.h"
#include "tools/eval.h"
#include "tools/prune_heads.h"
#include "tools/quantize.h"
#include "tools/sim_tool.h"
#include "tools/stream_tool.h"
#include "tools/validate.h"

namespace {

int fail(const ev::Status& s) {
  std::fprintf(stderr, "edgevlm: error: %s\n", s.to_string().c_str());
  return 1;
}

// {"classes": [...], "threshold": t, "images": [{"pedestrian": 0.93, ...}, ...]} or null without a fast head.
nlohmann::json fast_head_json(const ev::Engine& e, const std::vector<std::vector<float>>& probs) {
  const ev::FastHead* fh = e.fast_head();
  if (!fh) return nullptr;
  nlohmann::json imgs = nlohmann::json::array();
  for (const auto& row : probs) {
    nlohmann::json o = nlohmann::json::object();
    for (size_t c = 0; c < row.size() && c < fh->config().classes.size(); ++c) o[fh->config().classes[c]] = row[c];
    imgs.push_back(o);
  }
  return {{"classes", fh->config().classes}, {"threshold", fh->config().threshold}, {"images", imgs}};
}

struct DescribeArgs {
  std::string model;
  std::vector<std::string> images;
  std::string prompt = "Describe this image.";
  std::string precision = "auto";
  std::string prune = "none";
  std::string device = "cpu";
  int threads = 0;
  int max_tokens = 64;
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
  bool no_split = false;
  bool json = false;
};

int run_describe(const DescribeArgs& a) {
  ev::EngineOptions opt;
  opt.threads = a.threads;
  opt.prune = a.prune;
  opt.device = a.device;
  if (ev::Status s = ev::parse_precision_option(a.precision, &opt); !s.ok()) return fail(s.with_context("--precision"));
  auto engine = ev::Engine::load(a.model, opt);
  if (!engine.ok()) return fail(engine.status());
  std::vector<ev::Image> images;
  for (const auto& p : a.images) {
    auto img = ev::load_image(p);
    if (!img.ok()) return fail(img.status());
    images.push_back(std::move(img).value());
  }
  ev::GenerateOptions g;
  g.max_new_tokens = a.max_tokens;
  g.sampler.temperature = a.temperature;
  g.sampler.top_k = a.top_k;
  g.sampler.top_p = a.top_p;
  g.sampler.seed = a.seed;
  if (a.no_split) g.image_splitting = 0;
  ev::StreamCallback stream;
  if (!a.json) {
    stream = [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    };
  }
  auto r = (*engine)->describe(images, a.prompt, g, stream);
  if (!r.ok()) return fail(r.status());
  const auto& s = r->stats;
  if (a.json) {
    nlohmann::json j = {
        {"model", a.model},
        {"images", a.images},
        {"prompt", a.prompt},
        {"answer", r->text},
        {"tokens", r->tokens},
        {"stop_reason", s.stop_reason},
        {"fast_head", fast_head_json(**engine, r->fast_head)},
        {"precision", (*engine)->precision_label()},
        {"timing",
         {{"load_s", (*engine)->load_seconds()},
          {"preprocess_s", s.preprocess_s},
          {"vision_s", s.vision_s},
          {"tiles", s.n_tiles},
          {"prefill_s", s.prefill_s},
          {"prompt_tokens", s.prompt_tokens},
          {"decode_s", s.decode_s},
          {"generated_tokens", s.generated_tokens}}}};
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "[load %.2fs | %d tiles: vision %.2fs | prefill %d tok %.2fs | decode %d tok %.2fs (%.1f tok/s) | %s]\n",
                 (*engine)->load_seconds(), s.n_tiles, s.vision_s, s.prompt_tokens, s.prefill_s, s.generated_tokens,
                 s.decode_s, s.decode_s > 0 ? s.generated_tokens / s.decode_s : 0.0, s.stop_reason.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"edgevlm: vision-language models on live video at the edge"};
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "log progress to stderr");

  DescribeArgs d;
  auto* describe = app.add_subcommand("describe", "answer a prompt about one or more images");
  describe->add_option("--model", d.model, "model directory (Hugging Face layout), or a GGUF model (text .gguf + mmproj)")->required();
  describe->add_option("--image", d.images, "JPEG or PNG image (repeatable)")->required();
  describe->add_option("--prompt", d.prompt, "question or instruction");
  describe->add_option("--precision", d.precision, "compute precision: auto (bf16 text, the CPU's faster arithmetic for vision), f32, bf16, int8 or mixed (models/quant_plan.h)");
  describe->add_option("--threads", d.threads, "threads (0: all)")->check(CLI::Range(0, 1024));
  describe->add_option("--device", d.device, "cpu, cuda or cuda:N (the CUDA backend; the CPU runs what it does not)");
  describe->add_option("--prune", d.prune, "token pruning of the vision tower: none, auto, L:R,...,llm:R, random, input:S");
  describe->add_option("--max-tokens", d.max_tokens, "maximum new tokens")->check(CLI::Range(0, 1 << 20));
  describe->add_option("--temperature", d.temperature, "sampling temperature (0: greedy)")->check(CLI::Range(0.0, 100.0));
  describe->add_option("--top-k", d.top_k, "top-k sampling (0: off)")->check(CLI::Range(0, 1 << 24));
  describe->add_option("--top-p", d.top_p, "nucleus sampling (1: off)")->check(CLI::Range(0.0, 1.0));
  describe->add_option("--seed", d.seed, "sampling seed");
  describe->add_flag("--no-split", d.no_split, "one tile per image (video frames)");
  describe->add_flag("--json", d.json, "print a JSON result");

  ev::BenchOptions b;
  auto* bench = app.add_subcommand("bench", "measure the machine's ceilings and the model's speed");
  ev::add_bench_options(*bench, b);
  ev::ProfileOptions p;
  auto* profile = app.add_subcommand("profile", "per-op time, FLOPs, bytes and fraction of ceiling of one forward pass");
  ev::add_profile_options(*profile, p);

  ev::StreamToolOptions st_opts;
  auto* streamc = app.add_subcommand("stream", "live perception on a video stream: dual-rate vision + language");
  ev::add_stream_options(*streamc, st_opts);
  ev::EvalOptions ev_opts;
  auto* evalc = app.add_subcommand("eval", "accuracy of a road-scene model against the simulator's ground truth");
  ev::add_eval_options(*evalc, ev_opts);
  ev::PruneHeadsOptions ph_opts;
  auto* prune_headsc = app.add_subcommand("prune-heads", "remove the least important vision attention heads of a model");
  ev::add_prune_heads_options(*prune_headsc, ph_opts);
  ev::QuantizeOptions q_opts;
  auto* quantizec = app.add_subcommand("quantize", "mixed-precision INT8 model by per-layer sensitivity on calibration frames");
  ev::add_quantize_options(*quantizec, q_opts);
  ev::ConvertOptions conv_opts;
  auto* convertc = app.add_subcommand("convert", "convert a model between the Hugging Face layout and llama.cpp GGUF");
  ev::add_convert_options(*convertc, conv_opts);
  ev::SimOptions sim;
  auto* simc = app.add_subcommand("sim", "road-scene simulator: frames, video and exact ground truth");
  ev::add_sim_options(*simc, sim);
  ev::ValidateOptions val_opts;
  auto* validatec = app.add_subcommand("validate", "semantic drift of an optimised model against its reference (CI gate)");
  ev::add_validate_options(*validatec, val_opts);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc != 0 && *validatec ? 2 : rc;  // validate: 1 means a tolerance was exceeded, usage errors are 2
  }
  if (verbose) ev::set_log_level(ev::LogLevel::kInfo);
  if (*describe) return run_describe(d);
  if (*bench) {
    ev::Status s = ev::run_bench(b);
    return s.ok() ? 0 : fail(s);
  }
  if (*profile) {
    ev::Status s = ev::run_profile(p);
    return s.ok() ? 0 : fail(s);
  }
  if (*streamc) {
    ev::Status s = ev::run_stream(st_opts);
    return s.ok() ? 0 : fail(s);
  }
  if (*evalc) {
    ev::Status s = ev::run_eval(ev_opts);
    return s.ok() ? 0 : fail(s);
  }
  if (*prune_headsc) {
    ev::Status s = ev::run_prune_heads(ph_opts);
    return s.ok() ? 0 : fail(s);
  }
  if (*quantizec) {
    ev::Status s = ev::run_quantize(q_opts);
    return s.ok() ? 0 : fail(s);
  }
  if (*validatec) return ev::run_validate(val_opts);
  if (*convertc) {
    ev::Status s = ev::run_convert(conv_opts);
    return s.ok() ? 0 : fail(s);
  }
  if (*simc) {
    ev::Status s = ev::run_sim(sim);
    return s.ok() ? 0 : fail(s);
  }
  return 0;
}
