// A small PCRE2 wrapper (UTF + UCP, JIT) with the find_iter semantics the Hugging Face tokenizers library gets
// from Oniguruma: non-overlapping matches left to right, an empty match directly after the previous match is
// skipped. Patterns written for Oniguruma are translated so that \s, \S, \w, \W mean what they mean there.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace ev::text {

class Regex {
 public:
  // Compiles an Oniguruma/Rust-style pattern. Errors name the pattern and the PCRE2 message and offset.
  static Result<Regex> compile(const std::string& pattern);
  // A literal (escaped) pattern, as the tokenizers library builds one from a SplitPattern::String.
  static Result<Regex> literal(const std::string& text);

  // Appends the byte ranges [start, end) of all matches in s (which must be valid UTF-8).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string pattern_;
};

// Rewrites \s \S \w \W (outside and inside character classes) into explicit Unicode classes matching
// Oniguruma's definitions (\s = White_Space; \w = Letter, Mark, Decimal_Number, Connector_Punctuation), so that
// PCRE2's own, slightly different, UCP definitions do not leak in. Exposed for tests.
std::string translate_onig_pattern(const std::string& pattern);

}  // namespace ev::text
