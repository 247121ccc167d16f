// Machine ceilings: the peak arithmetic throughput and memory read bandwidth of the machine we run on, measured
// with tiny purpose-built kernels, so that every benchmark can report "fraction of this machine's peak" instead
// of absolute numbers that mean nothing on another box.
//
//   f32_gflops   AVX-512 vfmadd231ps on 16 independent zmm accumulators (2 FLOP per lane), all threads
//   bf16_gflops  AVX-512 vdpbf16ps (2 products + 2 adds per f32 lane = 4 FLOP per lane per instruction)
//   int8_gops    AVX-512 vpdpbusd (4 u8*s8 products + 4 adds per i32 lane = 8 OP per lane per instruction)
//   mem_read_gbs one pass over a buffer much larger than the L3 (256 MiB), split over all threads, summed
// Each is the best of a few short repetitions (best, not median: interference from other processes on a shared
// machine only ever makes a repetition slower).
//
// Without AVX-512 the same quantities are measured with AVX2 kernels: vfmadd231ps ymm; BF16 has no AVX2
// instruction, so bf16_gflops is the f32 rate (oneDNN widens bf16 to f32 there); INT8 uses avx_vnni when present,
// else vpmaddubsw + vpmaddwd + vpaddd.
//
// Expected on the AMD Zen 4 (2 cores) development machine: ~234 GFLOP/s F32, ~466 BF16, ~932 GOP/s INT8,
// ~30 GB/s.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"

namespace ev {

struct MachineCeilings {
  double f32_gflops = 0;
  double bf16_gflops = 0;
  double int8_gops = 0;
  double mem_read_gbs = 0;
  int threads = 1;
  std::string cpu;  // cpu_features_string()
  std::string isa;  // "avx512" or "avx2": which kernel family measured the numbers
};

// Measures all four ceilings with every thread of `pool` (nullptr: the calling thread only). `seconds_budget`
// is the approximate total wall time to spend (clamped to [0.05, 30] s); 0.5-1 s gives numbers stable to ~1%.
MachineCeilings measure_ceilings(ThreadPool* pool, double seconds_budget = 1.0);

nlohmann::json to_json(const MachineCeilings& c);

// The faster of F32 FMA and BF16 dot-product arithmetic on this CPU, for compute-bound GEMMs (the vision tower).
// Not the same everywhere: AMD Zen 4 runs vdpbf16ps at twice the F32 FLOP rate, while Intel Sapphire/Emerald
// Rapids without AMX issue it on one port only and reach half the F32 rate (measured: 172 vs 347 GFLOP/s on 2
// cores). Decided by a ~10 ms single-thread probe on first call (F32 and BF16 kernels interleaved, best of 3
// each, so a busy neighbour slows both alike), then cached for the process. BF16 wins only when it is at least
// 10% faster (its activation rounding costs accuracy). Without avx512_bf16: kF32.
struct GemmPrecisionProbe {
  double f32_gflops = 0, bf16_gflops = 0;  // single thread
  bool bf16_faster = false;
};
const GemmPrecisionProbe& gemm_precision_probe();
// "f32 234.1 GFLOP/s, bf16 466.0 GFLOP/s, int8 931.8 GOP/s, mem 30.2 GB/s (2 threads, avx512; AMD EPYC ...)"
std::string to_string(const MachineCeilings& c);

// Kernels behind measure_ceilings, exposed for the unit test and for bench_ceilings. Each runs `iters` loop
// iterations on the calling thread and returns the operations performed (FLOP / OP), or for the read kernel the
// bytes read. The *_avx512 ones must only be called when cpu_features() reports the instructions.
namespace ceilings_detail {
double f32_fma_avx512(int64_t iters);
double bf16_dot_avx512(int64_t iters);
double int8_dot_avx512(int64_t iters);
double read_avx512(const void* buf, size_t bytes, uint64_t* sink);
double f32_fma_avx2(int64_t iters);
double int8_dot_avx2(int64_t iters);
double read_avx2(const void* buf, size_t bytes, uint64_t* sink);
}  // namespace ceilings_detail

}  // namespace ev
