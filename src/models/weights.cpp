#include "models/weights.h"

#include <cmath>
#include <memory>

namespace ev {

namespace {
const std::vector<DType> kFloatTypes = {DType::kF32, DType::kBF16, DType::kF16};
const std::vector<DType> kMatrixTypes = {DType::kF32, DType::kBF16, DType::kF16, DType::kI8};

// "a.b.weight" -> "a.b.<suffix>" (the companions of an int8 weight written by edgevlm quantize).
std::string companion(const std::string& full, const char* suffix) {
  const std::string w = ".weight";
  const std::string base = full.size() > w.size() && full.compare(full.size() - w.size(), w.size(), w) == 0
                               ? full.substr(0, full.size() - w.size())
                               : full;
  return base + "." + suffix;
}
}  // namespace

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
  EV_ASSIGN_OR_RETURN(Tensor t, store_.get(full, expected, kMatrixTypes));
  if (t.dtype() != DType::kI8) return t;
  // An int8 weight (edgevlm-int8/1, models/quant_plan.h): per-output-channel scales, optional smoothing factors.
  if (expected.ndim != 2)
    return ShapeMismatch("tensor '" + full + "' is int8, but only 2-D Linear weights may be quantised");
  auto q = std::make_shared<QuantParams>();
  const std::string sname = companion(full, "weight_scale"), mname = companion(full, "input_smooth");
  if (!store_.has(sname))
    return NotFound("tensor '" + full + "' is int8 but its scales '" + sname + "' are missing");
  EV_ASSIGN_OR_RETURN(q->scale, store_.get(sname, Shape{expected[0]}, {DType::kF32}));
  if (store_.has(mname)) {
    EV_ASSIGN_OR_RETURN(q->smooth, store_.get(mname, Shape{expected[1]}, {DType::kF32}));
  }
  for (int64_t i = 0; i < q->scale.numel(); ++i) {
    const float v = q->scale.data_as<const float>()[i];
    if (!std::isfinite(v) || v < 0.f)
      return Corrupt("tensor '" + sname + "': scale " + std::to_string(v) + " of output channel " + std::to_string(i) +
                     " is not a finite non-negative number");
  }
  if (q->smooth.defined() && q->smooth.numel() > 0)
    for (int64_t i = 0; i < q->smooth.numel(); ++i) {
      const float v = q->smooth.data_as<const float>()[i];
      if (!std::isfinite(v) || v <= 0.f)
        return Corrupt("tensor '" + mname + "': smoothing factor " + std::to_string(v) + " of input channel " +
                       std::to_string(i) + " is not a finite positive number");
    }
  t.set_quant(std::move(q));
  return t;
}

Result<Tensor> WeightLoader::small_f32(const std::string& name, Shape expected) const {
  EV_ASSIGN_OR_RETURN(Tensor t, store_.get(resolve(name), expected, kFloatTypes));
  if (t.dtype() == DType::kF32) return t;
  EV_ASSIGN_OR_RETURN(Tensor f, t.to(DType::kF32));
  f.set_name(t.name());
  return f;
}

}  // namespace ev
