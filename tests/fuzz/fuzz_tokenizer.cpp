// libFuzzer target for the text layer's readers. The first byte picks what the rest of the input is:
//   'J' (or anything else): a tokenizer.json document. from_json_string must return a Status for anything
//       malformed (never throw, crash or hang); a tokenizer that loads must encode and decode a fixed probe text.
//   'T': text to encode with the committed fixture tokenizer (tests/fixtures/tiny-idefics3/tokenizer.json):
//       byte-level BPE without a normaliser is lossless, so decode(encode(text)) == text for valid UTF-8, and
//       every id is inside the vocabulary.
//   'C': a chat template (Jinja source) to parse and render with a fixed conversation: parse and render errors
//       are Statuses, never crashes; rendering is bounded (the engine caps output and loop work).
// Seed corpus: tests/fuzz/corpus/fuzz_tokenizer/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "text/chat_template.h"
#include "text/tokenizer.h"

#ifndef EDGEVLM_FIXTURE_DIR
#define EDGEVLM_FIXTURE_DIR "tests/fixtures"
#endif

namespace {

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const uint32_t min_of[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_of[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

const ev::text::Tokenizer& fixture_tokenizer() {
  static const ev::text::Tokenizer tok = [] {
    auto t = ev::text::Tokenizer::load(std::string(EDGEVLM_FIXTURE_DIR) + "/tiny-idefics3/tokenizer.json");
    if (!t.ok()) std::abort();  // the committed fixture must load
    return std::move(t).value();
  }();
  return tok;
}

void fuzz_tokenizer_json(std::string_view body) {
  auto t = ev::text::Tokenizer::from_json_string(body, "fuzz/tokenizer.json");
  if (!t.ok()) {
    if (t.status().message().empty()) std::abort();  // an error must say what is wrong
    return;
  }
  const std::vector<int32_t> ids = t->encode("Hello, world! 123 <image> \xC3\xA9t\xC3\xA9", true);
  for (int32_t id : ids)
    if (id < 0 || id >= t->vocab_size()) std::abort();
  (void)t->decode(ids, false);
  (void)t->decode({-5, 0, 1, 1 << 30}, true);
}

void fuzz_encode(std::string_view text) {
  const auto& tok = fixture_tokenizer();
  const std::vector<int32_t> ids = tok.encode(text, false);
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  const std::string back = tok.decode(ids, false);
  if (valid_utf8(text) && back != text) std::abort();
  // Streaming decode must agree with the one-shot decode.
  ev::text::StreamDecoder sd(tok, false);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.step(id);
  streamed += sd.flush();
  if (streamed != back) std::abort();
}

void fuzz_chat_template(std::string_view src) {
  auto tpl = ev::text::ChatTemplate::parse(std::string(src));
  if (!tpl.ok()) {
    if (tpl.status().message().empty()) std::abort();
    return;
  }
  const nlohmann::json messages = nlohmann::json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is ahead?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red light."}]},
    {"role": "user", "content": "And now?"}])");
  auto out = tpl->render(messages, true, {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  if (!out.ok() && out.status().message().empty()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0]) {
    case 'T': fuzz_encode(body); break;
    case 'C': fuzz_chat_template(body); break;
    default: fuzz_tokenizer_json(body); break;
  }
  return 0;
}
