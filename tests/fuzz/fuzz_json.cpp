// libFuzzer target: arbitrary text as config.json / preprocessor_config.json / tokenizer_config.json. Parsing
// must return a Status for anything malformed, never throw, crash or hang; a config that parses must also pass
// validate_vlm_config and have self-consistent derived sizes.
// Seed corpus: tests/fuzz/corpus/fuzz_json/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "formats/hf_config.h"
#include "formats/json_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto j = ev::parse_json(text, "fuzz.json");
  if (!j.ok()) return 0;
  auto c = ev::parse_vlm_config(*j, "fuzz.json");
  if (c.ok()) {
    if (!ev::validate_vlm_config(*c, "fuzz.json").ok()) std::abort();
    if (c->image_tokens_per_tile() * c->scale_factor * c->scale_factor != c->vision.num_patches()) std::abort();
    if (c->text.num_attention_heads % c->text.num_key_value_heads != 0) std::abort();
  } else if (c.status().message().empty()) {
    std::abort();
  }
  (void)ev::parse_preprocessor_config(*j, "fuzz.json", &*j);
  (void)ev::parse_tokenizer_config(*j, "fuzz.json");
  return 0;
}
