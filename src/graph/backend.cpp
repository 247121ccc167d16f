#include "graph/backend.h"

namespace ev {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kF32: return "f32";
    case Precision::kBF16: return "bf16";
    case Precision::kInt8: return "int8";
  }
  return "?";
}

bool precision_from_string(const std::string& s, Precision* out) {
  if (s == "f32" || s == "fp32" || s == "float32") {
    *out = Precision::kF32;
    return true;
  }
  if (s == "bf16" || s == "bfloat16") {
    *out = Precision::kBF16;
    return true;
  }
  if (s == "int8" || s == "i8") {
    *out = Precision::kInt8;
    return true;
  }
  return false;
}

}  // namespace ev
