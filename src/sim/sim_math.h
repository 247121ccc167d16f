// Deterministic random numbers and the few math functions the simulator needs.
//
// Why not <random> and <cmath>: std::uniform_real_distribution and friends are implementation-defined (libstdc++
// and libc++ give different sequences), and libm's transcendental functions may differ in the last bit between
// glibc versions. The training data is generated on another machine than the evaluation data, so everything that
// decides a pixel or a truth value goes through the functions below (plain IEEE + - * / and sqrt, which are exact).
#pragma once

#include <cstdint>

namespace ev::sim {

// SplitMix64 (a counter through a 64-bit finaliser): tiny, fast, statistically good enough for scene variation.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : s_(seed) {}
  uint64_t next_u64() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // [0, n) without modulo bias worth worrying about for n << 2^32.
  int below(int n) { return n <= 1 ? 0 : static_cast<int>((next_u64() >> 32) % static_cast<uint64_t>(n)); }
  bool chance(double p) { return uniform() < p; }
  // Approximately normal (sum of 4 uniforms, variance matched), deterministic and cheap.
  double normalish() { return (uniform() + uniform() + uniform() + uniform() - 2.0) * 1.7320508075688772; }

 private:
  uint64_t s_;
};

// Stateless 64-bit mix of two values (noise per pixel, per-object sub-seeds).
inline uint64_t mix64(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// FNV-1a of a string (std::hash is implementation-defined).
inline uint64_t fnv1a(const char* s, uint64_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint64_t i = 0; i < len; ++i) h = (h ^ static_cast<unsigned char>(s[i])) * 0x100000001b3ull;
  return h;
}

inline double clampd(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// exp(x) for x in about [-40, 40]: range reduction by powers of two and a degree-11 Taylor polynomial on
// [-ln2/2, ln2/2] (relative error < 1e-15). Deterministic: only + - * and exact scaling.
double det_exp(double x);
// tan(x) for |x| < 1.5 (half field of view): sin/cos series ratio.
double det_tan(double x);
// Smooth 0..1 ramp (3u^2 - 2u^3) of u clamped to [0, 1]: lane changes, braking onsets.
inline double smoothstep01(double u) {
  u = clampd(u, 0.0, 1.0);
  return u * u * (3.0 - 2.0 * u);
}

}  // namespace ev::sim
