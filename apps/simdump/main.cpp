// edgevlm-simdump: writes a training set of simulated road scenes (no dependencies beyond the C++ standard library
// and nlohmann/json, so it builds on the GPU training machine with -DEDGEVLM_SIM_ONLY=ON).
//
//   edgevlm-simdump --seed S --scenarios K --frames-per-scenario N [--size WxH] [--every M] [--fps F]
//                   [--threads T] --out DIR
//
// Output (see src/sim/dataset.h): DIR/frames.u8 (count x H x W x 3 uint8), DIR/truth.jsonl, DIR/scenarios.jsonl,
// DIR/meta.json. Byte-identical for any --threads.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/clock.h"
#include "sim/dataset.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: edgevlm-simdump --seed S --scenarios K --frames-per-scenario N [--size WxH] [--every M]\n"
               "                       [--fps F] [--threads T] [--quiet] --out DIR\n"
               "  writes DIR/frames.u8 (count x H x W x 3 uint8), DIR/truth.jsonl, DIR/scenarios.jsonl, DIR/meta.json\n");
}

bool parse_i64(const char* s, long long lo, long long hi, long long* out) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  ev::sim::DatasetOptions o;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "edgevlm-simdump: error: %s needs a value\n", what);
        std::exit(2);
      }
      return argv[++i];
    };
    auto bad = [&](const std::string& opt, const char* v, const char* range) {
      std::fprintf(stderr, "edgevlm-simdump: error: %s '%s' is not an integer in %s\n", opt.c_str(), v, range);
      std::exit(2);
    };
    long long v = 0;
    if (a == "--seed") {
      const char* s = value("--seed");
      char* end = nullptr;
      errno = 0;
      const unsigned long long u = std::strtoull(s, &end, 10);
      if (errno || end == s || *end || s[0] == '-') bad(a, s, "[0, 2^64)");
      o.seed = u;
    } else if (a == "--scenarios") {
      const char* s = value("--scenarios");
      if (!parse_i64(s, 1, 10000000, &v)) bad(a, s, "[1, 10000000]");
      o.scenarios = static_cast<int>(v);
    } else if (a == "--frames-per-scenario") {
      const char* s = value("--frames-per-scenario");
      if (!parse_i64(s, 1, 1000000, &v)) bad(a, s, "[1, 1000000]");
      o.frames_per_scenario = static_cast<int>(v);
    } else if (a == "--every") {
      const char* s = value("--every");
      if (!parse_i64(s, 1, 1000000, &v)) bad(a, s, "[1, 1000000]");
      o.every = static_cast<int>(v);
    } else if (a == "--threads") {
      const char* s = value("--threads");
      if (!parse_i64(s, 0, 1024, &v)) bad(a, s, "[0, 1024]");
      o.threads = static_cast<int>(v);
    } else if (a == "--fps") {
      const char* s = value("--fps");
      char* end = nullptr;
      const double f = std::strtod(s, &end);
      if (end == s || *end || !(f >= 1 && f <= 240)) {
        std::fprintf(stderr, "edgevlm-simdump: error: --fps '%s' is not a number in [1, 240]\n", s);
        return 2;
      }
      o.fps = f;
    } else if (a == "--size") {
      const char* s = value("--size");
      int w = 0, h = 0;
      char tail = 0;
      if (std::sscanf(s, "%dx%d%c", &w, &h, &tail) != 2) {
        std::fprintf(stderr, "edgevlm-simdump: error: --size '%s' is not WxH (e.g. 224x224)\n", s);
        return 2;
      }
      o.width = w;
      o.height = h;
    } else if (a == "--out") {
      o.out_dir = value("--out");
    } else if (a == "--quiet") {
      quiet = true;
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else {
      std::fprintf(stderr, "edgevlm-simdump: error: unknown argument '%s'\n", a.c_str());
      usage();
      return 2;
    }
  }
  const ev::Status chk = ev::sim::check_dataset_options(o);
  if (!chk.ok()) {
    std::fprintf(stderr, "edgevlm-simdump: error: %s\n", chk.to_string().c_str());
    usage();
    return 2;
  }
  const double t0 = ev::now_s();
  const int64_t per = (o.frames_per_scenario + o.every - 1) / o.every;
  const int64_t total = per * o.scenarios;
  if (!quiet) {
    o.progress = [&](int done, int64_t frames) {
      const double el = ev::now_s() - t0;
      const double rate = el > 0 ? static_cast<double>(frames) / el : 0;
      const double eta = rate > 0 ? static_cast<double>(total - frames) / rate : 0;
      std::fprintf(stderr, "\r[simdump] scenario %d/%d  frames %lld/%lld  %.0f frames/s  ETA %.0fs   ", done, o.scenarios,
                   static_cast<long long>(frames), static_cast<long long>(total), rate, eta);
      std::fflush(stderr);
    };
  }
  auto r = ev::sim::write_dataset(o);
  if (!quiet) std::fprintf(stderr, "\n");
  if (!r.ok()) {
    std::fprintf(stderr, "edgevlm-simdump: error: %s\n", r.status().to_string().c_str());
    return 1;
  }
  std::printf("{\"count\": %lld, \"width\": %d, \"height\": %d, \"scenarios\": %d, \"threads\": %d, \"seconds\": %.3f, "
              "\"out\": \"%s\"}\n",
              static_cast<long long>(r->frames), o.width, o.height, r->scenarios, r->threads, r->seconds,
              o.out_dir.c_str());
  return 0;
}
