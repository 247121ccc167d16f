#include "kernels/ref/quant_tensor.h"

#include <cmath>
#include <memory>
#include <string>

#include "kernels/ref/ref_ops.h"
#include "kernels/ref/ref_quant.h"

namespace ev {

namespace {
std::string label(const Tensor& t) { return t.name().empty() ? std::string("<unnamed>") : t.name(); }
}  // namespace

Status check_int8_weight(const Tensor& q) {
  if (q.dtype() != DType::kI8) return InvalidArgument("weight '" + label(q) + "' has dtype " + dtype_name(q.dtype()) + ", not i8");
  if (q.ndim() != 2) return InvalidArgument("int8 weight '" + label(q) + "' has shape " + q.shape().to_string() + ", expected [N, K]");
  const auto& qp = q.quant();
  if (!qp) return InvalidArgument("int8 weight '" + label(q) + "' has no scales (QuantParams)");
  if (qp->scale.dtype() != DType::kF32 || qp->scale.numel() != q.dim(0))
    return InvalidArgument("int8 weight '" + label(q) + "': scales " + qp->scale.shape().to_string() + " " +
                           dtype_name(qp->scale.dtype()) + ", expected f32 [" + std::to_string(q.dim(0)) + "]");
  if (qp->smooth.data() != nullptr &&
      (qp->smooth.dtype() != DType::kF32 || qp->smooth.numel() != q.dim(1)))
    return InvalidArgument("int8 weight '" + label(q) + "': smoothing factors " + qp->smooth.shape().to_string() +
                           " " + dtype_name(qp->smooth.dtype()) + ", expected f32 [" + std::to_string(q.dim(1)) + "]");
  return Status::Ok();
}

Result<Tensor> quantize_weight_int8(const Tensor& w, const std::vector<float>* smooth) {
  if (w.ndim() != 2) return InvalidArgument("cannot quantise '" + label(w) + "' " + w.shape().to_string() + ": not a matrix");
  if (!ref::is_float_dtype(w.dtype()))
    return InvalidArgument("cannot quantise '" + label(w) + "': dtype " + dtype_name(w.dtype()) + " is not a float type");
  const int64_t N = w.dim(0), K = w.dim(1);
  auto qp = std::make_shared<QuantParams>();
  if (smooth != nullptr) {
    if (static_cast<int64_t>(smooth->size()) != K)
      return InvalidArgument("cannot quantise '" + label(w) + "': " + std::to_string(smooth->size()) +
                             " smoothing factors for " + std::to_string(K) + " input channels");
    for (size_t k = 0; k < smooth->size(); ++k)
      if (!std::isfinite((*smooth)[k]) || (*smooth)[k] <= 0.f)
        return InvalidArgument("cannot quantise '" + label(w) + "': smoothing factor " + std::to_string((*smooth)[k]) +
                               " of input channel " + std::to_string(k) + " is not finite and positive");
    qp->smooth = Tensor::empty(DType::kF32, Shape{K});
    std::copy(smooth->begin(), smooth->end(), qp->smooth.data_as<float>());
  }
  const ref::F32Data f(w);
  Tensor q = Tensor::empty(DType::kI8, Shape{N, K});
  qp->scale = Tensor::empty(DType::kF32, Shape{N});
  ref::quantize_rows_i8(f.data(), N, K, smooth ? smooth->data() : nullptr, q.data_as<int8_t>(), qp->scale.data_as<float>());
  for (int64_t n = 0; n < N; ++n)
    if (std::isnan(qp->scale.data_as<const float>()[n]))
      return Corrupt("cannot quantise '" + label(w) + "': row " + std::to_string(n) + " holds NaN or Inf");
  q.set_name(w.name());
  q.set_quant(std::move(qp));
  return q;
}

Result<Tensor> dequantize_weight_int8(const Tensor& q) {
  EV_RETURN_IF_ERROR(check_int8_weight(q));
  const int64_t N = q.dim(0), K = q.dim(1);
  const float* sc = q.quant()->scale.data_as<const float>();
  const float* sm = q.quant()->smooth.data() ? q.quant()->smooth.data_as<const float>() : nullptr;
  Tensor w = Tensor::empty(DType::kF32, Shape{N, K});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const float v = sc[n] * static_cast<float>(q.data_as<const int8_t>()[n * K + k]);
      w.data_as<float>()[n * K + k] = sm ? v / sm[k] : v;
    }
  w.set_name(q.name());
  return w;
}

}  // namespace ev
