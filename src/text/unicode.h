// UTF-8 helpers shared by the tokenizer and the chat-template interpreter: decoding, lossy repair (the
// replacement rule of Rust's String::from_utf8_lossy and Python's bytes.decode("utf-8", "replace")), the GPT-2
// byte-level alphabet, and the few Unicode whitespace predicates the reference libraries use.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ev::text {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Length of the well-formed UTF-8 sequence starting at s[i], or 0 if the bytes there do not start one.
// On 0, *invalid_len (if given) receives the length of the maximal ill-formed subpart (>= 1) that one U+FFFD
// replaces (Unicode 15 §3.9 "U+FFFD substitution of maximal subparts", as Rust and Python do).
size_t utf8_sequence_length(std::string_view s, size_t i, size_t* invalid_len = nullptr);

// Decodes the code point at s[i] (which must start a well-formed sequence of length len).
uint32_t utf8_decode_at(std::string_view s, size_t i, size_t len);

// Decodes the next code point and advances i; ill-formed bytes decode as U+FFFD (one per maximal subpart).
uint32_t utf8_next(std::string_view s, size_t& i);

bool is_valid_utf8(std::string_view s);

// Replaces every maximal ill-formed subpart by U+FFFD. Returns s unchanged when it is valid.
std::string utf8_lossy(std::string_view s);

// Number of bytes at the end of s that are a proper prefix of a well-formed sequence (0..3): the bytes a
// streaming decoder must hold back because a later chunk may complete them.
size_t utf8_incomplete_tail(std::string_view s);

void append_utf8(std::string& out, uint32_t cp);

// Number of code points (ill-formed subparts count one each).
size_t utf8_length(std::string_view s);

// GPT-2 byte-level alphabet (tokenizers/src/pre_tokenizers/byte_level.rs bytes_char): printable bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order. byte_to_unicode()[b] is the UTF-8 of that char.
const std::array<std::string, 256>& byte_to_unicode();
// Inverse: the byte a byte-level char stands for, or -1.
int unicode_to_byte(uint32_t cp);

// Rust char::is_whitespace / Unicode White_Space (also Oniguruma's \s and Python's str.isspace() minus the
// information separators 0x1C-0x1F, which Python adds).
bool is_unicode_whitespace(uint32_t cp);
// Python str.isspace() / str.strip() whitespace (White_Space plus U+001C..U+001F).
bool is_python_whitespace(uint32_t cp);

}  // namespace ev::text
