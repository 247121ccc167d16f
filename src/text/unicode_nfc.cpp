#include "text/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "text/unicode.h"

namespace ev::text {

namespace {

struct DecompEntry {
  uint32_t cp;
  uint32_t offset;  // into kDecompData
  uint32_t len;
};
struct CccRange {
  uint32_t first, last;
  uint32_t ccc;
};
struct CompEntry {
  uint32_t a, b, composite;
};

#include "text/unicode_nfc_data.inc"

// Hangul syllable arithmetic (Unicode §3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

uint32_t ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = kCcc + sizeof(kCcc) / sizeof(kCcc[0]);
  const auto* it = std::upper_bound(kCcc, end, cp, [](uint32_t v, const CccRange& r) { return v < r.first; });
  if (it == kCcc) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    const auto* end = kDecomp + sizeof(kDecomp) / sizeof(kDecomp[0]);
    const auto* it = std::lower_bound(kDecomp, end, cp, [](const DecompEntry& e, uint32_t v) { return e.cp < v; });
    if (it != end && it->cp == cp) {
      out.insert(out.end(), kDecompData + it->offset, kDecompData + it->offset + it->len);
      return;
    }
  }
  out.push_back(cp);
}

// Primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* end = kComp + sizeof(kComp) / sizeof(kComp[0]);
  const auto* it = std::lower_bound(kComp, end, std::make_pair(a, b), [](const CompEntry& e, std::pair<uint32_t, uint32_t> v) {
    return e.a != v.first ? e.a < v.first : e.b < v.second;
  });
  return (it != end && it->a == a && it->b == b) ? it->composite : 0;
}

}  // namespace

std::string nfc_normalize(std::string_view s) {
  bool ascii = true;
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return std::string(s);

  std::vector<uint32_t> buf;
  buf.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) decompose(utf8_next(s, i), buf);

  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t k = 0; k < buf.size();) {
    if (ccc_of(buf[k]) == 0) {
      ++k;
      continue;
    }
    size_t e = k;
    while (e < buf.size() && ccc_of(buf[e]) != 0) ++e;
    std::stable_sort(buf.begin() + k, buf.begin() + e, [](uint32_t x, uint32_t y) { return ccc_of(x) < ccc_of(y); });
    k = e;
  }

  // Canonical composition: a character joins the last starter unless blocked by a character between them
  // of class 0 or of a class >= its own.
  if (!buf.empty()) {
    size_t starter = 0;
    uint32_t last_class = ccc_of(buf[0]) == 0 ? 0 : 256;
    size_t w = 1;
    for (size_t r = 1; r < buf.size(); ++r) {
      const uint32_t ch = buf[r];
      const uint32_t cls = ccc_of(ch);
      const uint32_t comp = (last_class != 256) ? compose(buf[starter], ch) : 0;
      if (comp != 0 && (last_class < cls || last_class == 0) && !(last_class == 0 && w - 1 != starter)) {
        buf[starter] = comp;
        continue;
      }
      if (cls == 0) starter = w;
      last_class = cls;
      buf[w++] = ch;
    }
    buf.resize(w);
  }
  std::string out;
  out.reserve(s.size());
  for (uint32_t cp : buf) append_utf8(out, cp);
  return out;
}

}  // namespace ev::text
