// Scoring of a road-scene model's description against the simulator's exact truth: the field-level rules of
// edgevlm eval (tools/eval.h), shared with edgevlm validate (tools/validate.h) so that both count the same thing.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/fast_head.h"
#include "runtime/semantic_state.h"
#include "sim/truth.h"

namespace ev {

struct DescriptionScore {
  bool parsed = false;                    // sim::parse_description found at least one known field
  Fields got;                             // the parsed fields (empty when unparsable)
  std::map<std::string, bool> field_ok;   // per field of sim::kDescriptionFields: present and equal to the truth
  bool all = false;                       // parsed and every field right (eval's "exact match")
};

// `text`: the model's description; `want`: sim::description_fields of the frame's truth.
inline DescriptionScore score_description(const std::string& text, const Fields& want) {
  DescriptionScore s;
  auto got = sim::parse_description(text);
  s.parsed = got.ok();
  if (got.ok()) s.got = *got;
  bool all = s.parsed;
  for (const char* fld : sim::kDescriptionFields) {
    const auto g = s.got.find(fld);
    const auto w = want.find(fld);
    const bool ok = s.parsed && g != s.got.end() && w != want.end() && g->second == w->second;
    s.field_ok[fld] = ok;
    all = all && ok;
  }
  s.all = all;
  return s;
}

// Fast-head class index -> simulator hazard bit (index into sim::kHazardNames), by name; -1 for unknown classes.
inline std::vector<int> fast_head_hazard_bits(const FastHead& fh) {
  std::vector<int> bits;
  for (const auto& c : fh.config().classes) {
    int bit = -1;
    for (size_t k = 0; k < sim::kHazardNames.size(); ++k)
      if (c == sim::kHazardNames[k]) bit = static_cast<int>(k);
    bits.push_back(bit);
  }
  return bits;
}

}  // namespace ev
