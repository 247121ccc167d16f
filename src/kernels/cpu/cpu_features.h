// CPU feature detection (CPUID + XGETBV), done once per process.
//
// The baseline build targets x86-64-v3 (AVX2, FMA, F16C); AVX-512 kernels live in *_avx512.cpp files compiled
// with their own flags and may only be called when the matching flags below are true. "Usable" here means the
// CPU reports the instruction set AND the OS saves the register state (XCR0), so a flag is never true on a
// kernel/hypervisor that disabled ZMM or AMX state.
#pragma once

#include <string>

namespace ev {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool avx512_vnni = false;  // vpdpbusd
  bool avx_vnni = false;     // VEX-encoded vpdpbusd (Alder Lake+, Zen 5)
  bool amx_tile = false;
  bool amx_bf16 = false;
  bool amx_int8 = false;
  int logical_cpus = 0;      // std::thread::hardware_concurrency()
  std::string vendor;        // "AuthenticAMD", "GenuineIntel"
  std::string brand;         // "AMD EPYC 9R14 96-Core Processor" (trimmed)

  // The AVX-512 subset our *_avx512.cpp kernels are compiled for (F, BW, VL, DQ).
  bool has_avx512_core() const { return avx512f && avx512bw && avx512vl && avx512dq; }
  // AVX-512 core plus BF16 dot products: the bf16 GEMV and BF16 ceiling kernels need this.
  bool has_avx512_bf16() const { return has_avx512_core() && avx512_bf16; }
  bool has_avx512_vnni() const { return has_avx512_core() && avx512_vnni; }
  // The x86-64-v3 baseline every other file is compiled for.
  bool has_avx2_fma() const { return avx2 && fma && f16c; }
};

// Detected once (thread-safe static initialisation) and cached.
const CpuFeatures& cpu_features();

// One line: "AMD EPYC 9R14 (2 threads): avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_bf16 avx512_vnni"
std::string cpu_features_string();

}  // namespace ev
