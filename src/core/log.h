// Minimal leveled logging to stderr. Level set once from the command line (never read from the environment
// inside library code).
#pragma once

#include <cstdarg>

namespace ev {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void set_log_level(LogLevel l);
LogLevel log_level();
void log_printf(LogLevel l, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace ev

#define EV_LOG_ERROR(...) ::ev::log_printf(::ev::LogLevel::kError, __VA_ARGS__)
#define EV_LOG_WARN(...) ::ev::log_printf(::ev::LogLevel::kWarn, __VA_ARGS__)
#define EV_LOG_INFO(...) ::ev::log_printf(::ev::LogLevel::kInfo, __VA_ARGS__)
#define EV_LOG_DEBUG(...) ::ev::log_printf(::ev::LogLevel::kDebug, __VA_ARGS__)
