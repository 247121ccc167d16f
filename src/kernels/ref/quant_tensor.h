// Tensor-level INT8 weight quantisation (the rules of kernels/ref/ref_quant.h applied to whole ev::Tensors):
// what the backends use to quantise a float weight that a mixed-precision plan marks int8, what
// `edgevlm quantize` writes, and the checks every int8 weight passes before a kernel sees it.
#pragma once

#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace ev {

// w [N, K] (f32 / bf16 / f16) -> q [N, K] kI8 with QuantParams {scale [N], smooth [K] when given}: per-output-channel
// symmetric quantisation of w[n, k] * smooth[k] (ref::quantize_rows_i8). The name of w is kept. Errors name w:
// kInvalidArgument for a non-2-D or integer tensor, a smooth vector of the wrong size or with a non-positive or
// non-finite factor; kCorrupt when a row holds NaN or Inf (its scale would be NaN: a broken checkpoint).
Result<Tensor> quantize_weight_int8(const Tensor& w, const std::vector<float>* smooth = nullptr);

// The float matrix an int8 weight stands for: W[n, k] = scale[n] * q[n, k] / smooth[k] (f32 [N, K]).
Result<Tensor> dequantize_weight_int8(const Tensor& q);

// An int8 weight is usable: dtype kI8, 2-D, quant() set with an f32 scale [N] and an f32 smooth [K] or none.
Status check_int8_weight(const Tensor& q);

}  // namespace ev
