// Monotonic time helpers.
#pragma once

#include <chrono>
#include <cstdint>

namespace ev {

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline double now_s() { return static_cast<double>(now_ns()) * 1e-9; }

// Peak resident set size of this process in bytes (from getrusage).
int64_t peak_rss_bytes();
// Current resident set size in bytes (from /proc/self/statm); 0 if unavailable.
int64_t current_rss_bytes();

}  // namespace ev
