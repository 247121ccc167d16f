// Unicode Normalization Form C without ICU: canonical decomposition, canonical ordering, canonical composition
// (UAX #15), with tables generated from Python's unicodedata by gen_unicode_nfc.py. Used by the tokenizer's
// NFC normalizer (Qwen2-style tokenizer.json files).
#pragma once

#include <string>
#include <string_view>

namespace ev::text {

// NFC of s (valid UTF-8 expected; ill-formed bytes become U+FFFD). ASCII-only input is returned unchanged.
std::string nfc_normalize(std::string_view s);

}  // namespace ev::text
