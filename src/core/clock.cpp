#include "core/clock.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace ev {

int64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

int64_t current_rss_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long pages = 0, rss = 0;
  int n = std::fscanf(f, "%ld %ld", &pages, &rss);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<int64_t>(rss) * sysconf(_SC_PAGESIZE);
}

}  // namespace ev
