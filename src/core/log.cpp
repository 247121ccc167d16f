#include "core/log.h"

#include <atomic>
#include <cstdio>

namespace ev {

namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarn)};
}

void set_log_level(LogLevel l) { g_level.store(static_cast<int>(l)); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

void log_printf(LogLevel l, const char* fmt, ...) {
  if (static_cast<int>(l) > g_level.load()) return;
  static const char* names[] = {"error", "warn", "info", "debug"};
  std::fprintf(stderr, "edgevlm %s: ", names[static_cast<int>(l)]);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
}

}  // namespace ev
