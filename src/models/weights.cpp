#include "models/weights.h"

namespace ev {

namespace {
const std::vector<DType> kFloatTypes = {DType::kF32, DType::kBF16, DType::kF16};
}

std::string WeightLoader::resolve(const std::string& name) const {
  for (const auto& p : prefixes_)
    if (store_.has(p + name)) return p + name;
  return prefixes_.empty() ? name : prefixes_.front() + name;
}

bool WeightLoader::has(const std::string& name) const {
  for (const auto& p : prefixes_)
    if (store_.has(p + name)) return true;
  return false;
}

Result<Tensor> WeightLoader::matrix(const std::string& name, Shape expected) const {
  const std::string full = resolve(name);
  EV_ASSIGN_OR_RETURN(Tensor t, store_.get(full, expected, kFloatTypes));
  return t;
}

Result<Tensor> WeightLoader::small_f32(const std::string& name, Shape expected) const {
  EV_ASSIGN_OR_RETURN(Tensor t, matrix(name, expected));
  if (t.dtype() == DType::kF32) return t;
  EV_ASSIGN_OR_RETURN(Tensor f, t.to(DType::kF32));
  f.set_name(t.name());
  return f;
}

}  // namespace ev
