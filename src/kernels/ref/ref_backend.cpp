// The reference backend: every op through the plain loops of ref_ops.cpp, single-threaded.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "graph/backend.h"
#include "kernels/ref/quant_tensor.h"
#include "kernels/ref/ref_ops.h"
#include "kernels/ref/ref_quant.h"

namespace ev {
namespace {

class RefBackend final : public Backend {
 private:
  std::shared_ptr<const LinearPlan> plan_;

  bool planned_int8(const Tensor& w) const {
    return plan_ && plan_->precision_of(w.name(), Precision::kF32) == Precision::kInt8;
  }

  Status linear_int8(const Tensor& x, const Tensor& w, const Tensor* bias, float* y) const {
    Tensor q = w;
    if (w.dtype() != DType::kI8) {
      EV_ASSIGN_OR_RETURN(q, quantize_weight_int8(w, plan_->smooth_of(w.name())));
    }
    const QuantParams& qp = *q.quant();
    std::vector<float> b;
    if (bias != nullptr) {
      const ref::F32Data bf(*bias);
      b.assign(bf.data(), bf.data() + bf.size());
    }
    ref::linear_i8_dynamic(x.data_as<const float>(), x.shape().rows(), q.dim(1),
                           qp.smooth.data() ? qp.smooth.data_as<const float>() : nullptr, q.data_as<const int8_t>(),
                           qp.scale.data_as<const float>(), q.dim(0), bias ? b.data() : nullptr, y);
    return Status::Ok();
  }

 public:
  const char* name() const override { return "ref"; }
  bool supports(const Node& n) const override { return n.op != OpKind::kInput && n.op != OpKind::kCount; }
  // Float weights the plan marks int8 are quantised at every call (the reference is for tests, not for speed).
  void set_linear_plan(std::shared_ptr<const LinearPlan> plan) override { plan_ = std::move(plan); }

  Status compute(const Node& n, const std::vector<const Tensor*>& in, Tensor& out) override {
    EV_RETURN_IF_ERROR(ref::check_node(n, in, out));
    float* y = out.data_as<float>();
    switch (n.op) {
      case OpKind::kLinear: {
        const Tensor& x = *in[0];
        if (in[1]->dtype() == DType::kI8 || planned_int8(*in[1])) return linear_int8(x, *in[1], in.size() == 3 ? in[2] : nullptr, y);
        const ref::F32Data w(*in[1]);
        const int64_t N = in[1]->dim(0), K = in[1]->dim(1);
        if (in.size() == 3) {
          const ref::F32Data b(*in[2]);
          ref::linear(x.data_as<const float>(), x.shape().rows(), K, w.data(), N, b.data(), y);
        } else {
          ref::linear(x.data_as<const float>(), x.shape().rows(), K, w.data(), N, nullptr, y);
        }
        return Status::Ok();
      }
      case OpKind::kAdd:
      case OpKind::kMul: {
        const ref::F32Data b(*in[1]);
        const float* a = in[0]->data_as<const float>();
        if (n.op == OpKind::kAdd)
          ref::add(a, in[0]->numel(), b.data(), b.size(), y);
        else
          ref::mul(a, in[0]->numel(), b.data(), b.size(), y);
        return Status::Ok();
      }
      case OpKind::kLayerNorm: {
        const ref::F32Data w(*in[1]), b(*in[2]);
        const Shape& s = in[0]->shape();
        ref::layer_norm(in[0]->data_as<const float>(), s.rows(), s.cols(), w.data(), b.data(), n.p.eps, y);
        return Status::Ok();
      }
      case OpKind::kRMSNorm: {
        const ref::F32Data w(*in[1]);
        const Shape& s = in[0]->shape();
        ref::rms_norm(in[0]->data_as<const float>(), s.rows(), s.cols(), w.data(), n.p.eps, y);
        return Status::Ok();
      }
      case OpKind::kGeluTanh:
        ref::gelu_tanh(in[0]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kSilu:
        ref::silu(in[0]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kSigmoid:
        ref::sigmoid(in[0]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kAttnScore: {
        const ref::AttentionDims a = ref::attention_dims(n, *in[0], *in[1]);
        ref::attn_score(a, in[0]->data_as<const float>(), in[1]->data_as<const float>(), y);
        return Status::Ok();
      }
      case OpKind::kTopK:
        ref::top_k_rows(in[0]->data_as<const float>(), in[0]->dim(0), in[0]->dim(1), n.p.row_end,
                        out.data_as<int32_t>());
        return Status::Ok();
      case OpKind::kArgmax:
        ref::argmax_rows(in[0]->data_as<const float>(), in[0]->dim(0), in[0]->dim(1), out.data_as<int32_t>());
        return Status::Ok();
      case OpKind::kMeanRows: {
        const Shape& s = in[0]->shape();
        const int64_t B = s.ndim == 3 ? s[0] : 1, R = s.ndim == 3 ? s[1] : s[0];
        ref::mean_rows(in[0]->data_as<const float>(), B, R, s.cols(), y);
        return Status::Ok();
      }
      case OpKind::kSwiGLU:
        if (in.size() == 1) {  // fused [gate | up] rows: the same elementwise function, row by row
          const int64_t R = in[0]->shape().rows(), C = in[0]->shape().cols() / 2;
          const float* x = in[0]->data_as<const float>();
          for (int64_t r = 0; r < R; ++r) ref::swiglu(x + r * 2 * C, x + r * 2 * C + C, C, y + r * C);
          return Status::Ok();
        }
        ref::swiglu(in[0]->data_as<const float>(), in[1]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kAttention: {
        ref::AttentionDims a = ref::attention_dims(n, *in[0], *in[1]);
        if (in.size() == 4) {
          a.positions = in[3]->data_as<const int32_t>();
          a.per_batch = in[3]->numel() == a.B * a.T && a.B > 1;
        }
        ref::attention(a, in[0]->data_as<const float>(), in[1]->data_as<const float>(),
                       in[2]->data_as<const float>(), y);
        return Status::Ok();
      }
      case OpKind::kRope: {
        const Tensor& x = *in[0];
        ref::rope(x.data_as<const float>(), x.dim(0), x.dim(1), n.p.n_heads, n.p.head_dim, n.p.rope_theta,
                  n.p.q_offset, y, in.size() == 2 ? in[1]->data_as<const int32_t>() : nullptr,
                  in.size() == 2 && x.dim(0) > 1 && in[1]->numel() == x.dim(0) * x.dim(1));
        return Status::Ok();
      }
      case OpKind::kPatchify: {
        const Tensor& x = *in[0];
        if (x.dtype() == DType::kU8)
          ref::patchify_u8_hwc(x.data_as<const uint8_t>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), n.p.patch, y);
        else
          ref::patchify(x.data_as<const float>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), n.p.patch, y);
        return Status::Ok();
      }
      case OpKind::kPixelShuffle: {
        const Tensor& x = *in[0];
        ref::pixel_shuffle(x.data_as<const float>(), x.dim(0), x.dim(1), x.dim(2), n.p.shuffle, y);
        return Status::Ok();
      }
      case OpKind::kGetRows: {
        const Tensor& table = *in[0];
        const int64_t V = table.dim(0), C = table.dim(1);
        const int32_t* ids = in[1]->data_as<const int32_t>();
        const size_t es = dtype_size(table.dtype());
        for (int64_t t = 0; t < in[1]->numel(); ++t) {
          if (ids[t] < 0 || ids[t] >= V)
            return InvalidArgument("get_rows '" + n.name + "': id " + std::to_string(ids[t]) + " at position " +
                                   std::to_string(t) + " is outside the table's " + std::to_string(V) + " rows");
          const void* row = static_cast<const char*>(table.data()) + static_cast<size_t>(ids[t]) * C * es;
          float* dst = y + t * C;
          switch (table.dtype()) {
            case DType::kI32: std::memcpy(dst, row, static_cast<size_t>(C) * 4); break;
            case DType::kF32: std::memcpy(dst, row, static_cast<size_t>(C) * 4); break;
            case DType::kBF16: convert_bf16_to_f32(static_cast<const uint16_t*>(row), dst, static_cast<size_t>(C)); break;
            default: convert_f16_to_f32(static_cast<const uint16_t*>(row), dst, static_cast<size_t>(C)); break;
          }
        }
        return Status::Ok();
      }
      case OpKind::kScatterRows: {
        const Tensor &base = *in[0], &src = *in[1];
        const int64_t T = base.shape().rows(), C = base.shape().cols();
        const int32_t* idx = in[2]->data_as<const int32_t>();
        for (int64_t i = 0; i < in[2]->numel(); ++i)
          if (idx[i] < 0 || idx[i] >= T)
            return InvalidArgument("scatter_rows '" + n.name + "': index " + std::to_string(idx[i]) +
                                   " at position " + std::to_string(i) + " is outside the base's " +
                                   std::to_string(T) + " rows");
        if (y != base.data_as<const float>()) std::memcpy(y, base.data(), base.nbytes());
        for (int64_t i = 0; i < in[2]->numel(); ++i)
          std::memcpy(y + static_cast<int64_t>(idx[i]) * C, src.data_as<const float>() + i * C,
                      static_cast<size_t>(C) * 4);
        return Status::Ok();
      }
      case OpKind::kCols: {  // the strided case (the executor makes the contiguous ones as views)
        const Tensor& x = *in[0];
        const int64_t R = x.shape().rows(), C = x.shape().cols(), w = n.p.col_end - n.p.col_begin;
        for (int64_t r = 0; r < R; ++r)
          std::memcpy(y + r * w, x.data_as<const float>() + r * C + n.p.col_begin, static_cast<size_t>(w) * 4);
        return Status::Ok();
      }
      case OpKind::kRows: {
        const Tensor& x = *in[0];
        const int64_t C = x.shape().cols();
        std::memmove(y, x.data_as<const float>() + n.p.row_begin * C,
                     static_cast<size_t>((n.p.row_end - n.p.row_begin) * C) * 4);
        return Status::Ok();
      }
      case OpKind::kCopy:
      case OpKind::kReshape:
        if (y != in[0]->data_as<const float>()) std::memmove(y, in[0]->data(), in[0]->nbytes());
        return Status::Ok();
      case OpKind::kInput:
      case OpKind::kCount:
        break;
    }
    return Internal("ref backend: unhandled op " + std::string(op_kind_name(n.op)));
  }
};

}  // namespace

std::unique_ptr<Backend> make_ref_backend() { return std::make_unique<RefBackend>(); }

}  // namespace ev
