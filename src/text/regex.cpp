#include "text/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <cstdio>

#include "text/unicode.h"

namespace ev::text {

namespace {

// Oniguruma's \s (Unicode White_Space) and \w (Word: letters, marks, decimal digits, connector punctuation).
constexpr const char* kSpaceSet =
    "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}";
constexpr const char* kWordSet = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

// One JIT stack per thread: the default 32 KiB is too small for `\s+(?!\S)` over long runs of spaces.
struct MatchResources {
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchResources() {
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (mctx && stack) pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~MatchResources() {
    if (stack) pcre2_jit_stack_free(stack);
    if (mctx) pcre2_match_context_free(mctx);
  }
};

MatchResources& match_resources() {
  thread_local MatchResources r;
  return r;
}

}  // namespace

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() {
    if (code) pcre2_code_free(code);
  }
};

std::string translate_onig_pattern(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  size_t i = 0;
  const size_t n = p.size();
  while (i < n) {
    const char c = p[i];
    if (c == '\\' && i + 1 < n) {
      const char d = p[i + 1];
      if (d == 's' || d == 'S' || d == 'w' || d == 'W') {
        const char* set = (d == 's' || d == 'S') ? kSpaceSet : kWordSet;
        const bool neg = (d == 'S' || d == 'W');
        if (!in_class) {
          out += neg ? "[^" : "[";
          out += set;
          out += "]";
        } else if (!neg) {
          out += set;
        } else {
          out += c;  // a negated class inside a class cannot be spelled out; keep PCRE2's meaning
          out += d;
        }
        i += 2;
        continue;
      }
      out += c;
      out += d;
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < n && p[i] == '^') out += p[i++];
      if (i < n && p[i] == ']') out += p[i++];  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
      const size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

Result<Regex> Regex::compile(const std::string& pattern) {
  const std::string translated = translate_onig_pattern(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    return InvalidArgument("regex /" + pattern + "/: " + reinterpret_cast<const char*>(buf) + " at offset " +
                           std::to_string(err_off));
  }
  // JIT is an optimisation: if it is unavailable the interpreter is used.
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto holder = std::make_shared<Code>();
  holder->code = code;
  Regex r;
  r.code_ = std::move(holder);
  r.pattern_ = pattern;
  return r;
}

Result<Regex> Regex::literal(const std::string& text) {
  std::string p;
  for (unsigned char c : text) {
    if (c >= 0x80 || std::isalnum(c)) {
      p += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7F) {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "\\x{%02X}", c);
      p += buf;
    } else {
      p += '\\';
      p += static_cast<char>(c);
    }
  }
  EV_ASSIGN_OR_RETURN(Regex r, compile(p));
  r.pattern_ = text;
  return r;
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  if (!code_) return;
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  if (!md) return;
  MatchResources& res = match_resources();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(code_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, res.mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Retry with the interpreter, whose backtracking lives on the heap.
      rc = pcre2_match(code_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, res.mctx);
    }
    if (rc < 0) break;  // no match (or a resource limit): the rest of the text is a gap
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (b > e || e > s.size()) break;  // \K tricks; never produced by tokenizer patterns
    if (b == e) {
      // Empty match: kept only if it does not directly follow the previous match; then step one character.
      if (!(have_last && last_end == e)) out.emplace_back(b, e);
      have_last = true;
      last_end = e;
      if (e >= s.size()) break;
      size_t next = e;
      utf8_next(s, next);
      pos = next;
      continue;
    }
    out.emplace_back(b, e);
    have_last = true;
    last_end = e;
    pos = e;
  }
  pcre2_match_data_free(md);
}

}  // namespace ev::text
