// libFuzzer target: arbitrary bytes as a GGUF file. Opening must either fail with a Status that says what is wrong
// or yield tensor infos whose data lies inside the buffer; every tensor get() succeeds or reports why, and every
// byte of every returned tensor is read so ASan catches an out-of-bounds view. The typed metadata getters run on
// every key. Seed corpus: tests/fuzz/corpus/fuzz_gguf/ (written by the GGUF writer: test_gguf.cpp,
// Gguf.DISABLED_WriteFuzzSeeds).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = ev::GgufFile::from_memory(data, size, "fuzz.gguf");
  if (!f.ok()) {
    if (f.status().message().empty()) std::abort();  // every error must say what is wrong
    return 0;
  }
  unsigned sum = 0;
  for (const auto& [key, v] : f->metadata()) {
    (void)f->get_int(key);
    (void)f->get_float(key);
    (void)f->get_string(key);
    (void)f->get_float_array(key);
    if (auto s = f->get_string_array(key); s.ok())
      for (const auto& x : **s) sum += x.size();
    if (v.type == ev::GgufType::kArray && v.array_size() != v.strings.size() + v.ints.size() + v.floats.size())
      std::abort();
  }
  for (const auto& t : f->tensors()) {
    if (t.offset > f->data_size() || t.nbytes > f->data_size() - t.offset) std::abort();
    auto r = f->get(t.name);
    if (!r.ok()) {
      if (r.status().message().empty()) std::abort();
      continue;
    }
    if (r->numel() != t.numel()) std::abort();
    const auto* p = r->data_as<const uint8_t>();
    for (size_t i = 0; i < r->nbytes(); ++i) sum += p[i];
  }
  volatile unsigned sink = sum;  // keep the reads
  (void)sink;
  return 0;
}
