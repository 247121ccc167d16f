// The optimised CPU backend: every op multi-threaded on one ThreadPool, vectorised (AVX2 baseline, AVX-512 where
// the CPU has it), Linear through the pre-packed oneDNN weights of gemm.h, attention through the fused kernels of
// attention.h.
//
// Caches (all keyed by data pointer, all keeping the source Tensor alive so that the address cannot be recycled
// by another tensor while the entry exists):
//   - packed Linear weights, keyed by (weight data, bias data), filled by prepare_weights() for the kLinear
//     nodes whose weight is a weight leaf (Node::is_weight);
//   - f32 copies of bf16/f16 parameters of other ops (norm weights, biases, position tables), same trigger;
//   - RoPE cos/sin tables per (theta, head_dim), grown on demand.
// The caches are guarded by a mutex, so one backend may be shared by several executors; the pool itself must not
// be driven from two threads at once (one backend per pool, one pool per pipeline stage).
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "core/log.h"
#include "graph/backend.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"
#include "kernels/ref/quant_tensor.h"
#include "kernels/ref/ref_ops.h"

namespace ev {
namespace {

struct PtrPairHash {
  size_t operator()(const std::pair<const void*, const void*>& p) const {
    return std::hash<const void*>()(p.first) * 31u ^ std::hash<const void*>()(p.second);
  }
};

struct PackedEntry {
  Tensor w, b;  // keep-alive
  std::shared_ptr<PackedLinear> packed;
};

struct WidenedEntry {
  Tensor src;  // keep-alive
  std::vector<float> f32;
};

// cos/sin of positions [0, npos) for one (theta, D): [npos][D/2] each, computed exactly as ref::rope_cos_sin.
struct RopeTable {
  int64_t npos = 0;
  std::vector<float> cos, sin;
};

// Positions beyond this are computed per call instead of cached (a table row costs D*4 bytes).
constexpr int64_t kRopeCacheMaxPos = 1 << 16;

class CpuBackend final : public Backend {
 public:
  CpuBackend(ThreadPool* pool, Precision precision) : pool_(pool), precision_(precision) {}

  const char* name() const override {
    return precision_ == Precision::kBF16 ? "cpu-bf16" : precision_ == Precision::kInt8 ? "cpu-int8" : "cpu-f32";
  }
  // mean_rows and sigmoid only serve the fast head (a few thousand elements per frame): the reference runs them.
  bool supports(const Node& n) const override {
    // Positions from a tensor (static decode graphs, a CUDA-side form) are left to the reference.
    if ((n.op == OpKind::kRope && n.inputs.size() == 2) || (n.op == OpKind::kAttention && n.inputs.size() == 4)) return false;
    return n.op != OpKind::kInput && n.op != OpKind::kCount && n.op != OpKind::kMeanRows && n.op != OpKind::kSigmoid;
  }

  void set_linear_plan(std::shared_ptr<const LinearPlan> plan) override {
    std::lock_guard<std::mutex> lk(mu_);
    plan_ = std::move(plan);
    packed_.clear();
  }

  Status prepare_weights(const Graph& g) override {
    for (const Node& n : g.nodes) {
      if (n.op == OpKind::kInput) continue;
      if (n.op == OpKind::kLinear) {
        if (n.inputs.size() < 2) continue;
        const Node& w = g.node(n.inputs[1]);
        if (w.op != OpKind::kInput || !w.is_weight) continue;
        const Node* b = n.inputs.size() > 2 ? &g.node(n.inputs[2]) : nullptr;
        // A bias that is not a leaf is added after the GEMM; pack the weight alone then.
        if (b != nullptr && b->op != OpKind::kInput) b = nullptr;
        EV_RETURN_IF_ERROR(packed_for(w.bound, b ? &b->bound : nullptr, n.name).status());
        continue;
      }
      // Parameters of the other ops that arrive as bf16/f16 weight leaves: widen once.
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        const Node& in = g.node(n.inputs[i]);
        if (in.op != OpKind::kInput || !in.is_weight) continue;
        if (in.bound.dtype() != DType::kBF16 && in.bound.dtype() != DType::kF16) continue;
        if (n.op == OpKind::kGetRows) continue;  // tables are gathered row by row in their own dtype
        widened(in.bound);
      }
    }
    return Status::Ok();
  }

  Status compute(const Node& n, const std::vector<const Tensor*>& in, Tensor& out) override {
    EV_RETURN_IF_ERROR(ref::check_node(n, in, out));
    float* y = out.data_as<float>();
    switch (n.op) {
      case OpKind::kLinear: return linear(n, in, y);
      case OpKind::kAdd:
      case OpKind::kMul: {
        std::vector<float> tmp;
        const float* b = f32_param(*in[1], &tmp);
        if (n.op == OpKind::kAdd)
          cpu::add(pool_, in[0]->data_as<const float>(), in[0]->numel(), b, in[1]->numel(), y);
        else
          cpu::mul(pool_, in[0]->data_as<const float>(), in[0]->numel(), b, in[1]->numel(), y);
        return Status::Ok();
      }
      case OpKind::kLayerNorm: {
        std::vector<float> tw, tb;
        const float* w = f32_param(*in[1], &tw);
        const float* b = f32_param(*in[2], &tb);
        const Shape& s = in[0]->shape();
        cpu::layer_norm(pool_, in[0]->data_as<const float>(), s.rows(), s.cols(), w, b, n.p.eps, y);
        return Status::Ok();
      }
      case OpKind::kRMSNorm: {
        std::vector<float> tw;
        const float* w = f32_param(*in[1], &tw);
        const Shape& s = in[0]->shape();
        cpu::rms_norm(pool_, in[0]->data_as<const float>(), s.rows(), s.cols(), w, n.p.eps, y);
        return Status::Ok();
      }
      case OpKind::kGeluTanh:
        cpu::gelu_tanh(pool_, in[0]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kSilu:
        cpu::silu(pool_, in[0]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kSwiGLU:
        if (in.size() == 1)  // fused [gate | up] rows
          cpu::swiglu_fused(pool_, in[0]->data_as<const float>(), in[0]->shape().rows(), in[0]->shape().cols() / 2, y);
        else
          cpu::swiglu(pool_, in[0]->data_as<const float>(), in[1]->data_as<const float>(), in[0]->numel(), y);
        return Status::Ok();
      case OpKind::kAttention: {
        const ref::AttentionDims a = ref::attention_dims(n, *in[0], *in[1]);
        return cpu::attention(a, in[0]->data_as<const float>(), in[1]->data_as<const float>(),
                              in[2]->data_as<const float>(), y, precision_, pool_);
      }
      case OpKind::kAttnScore: {
        const ref::AttentionDims a = ref::attention_dims(n, *in[0], *in[1]);
        return cpu::attention_score(a, in[0]->data_as<const float>(), in[1]->data_as<const float>(), y, pool_);
      }
      case OpKind::kArgmax:  // one pass over a row of logits per sequence
        ref::argmax_rows(in[0]->data_as<const float>(), in[0]->dim(0), in[0]->dim(1), out.data_as<int32_t>());
        return Status::Ok();
      case OpKind::kTopK:  // a partial sort of a few hundred scores per tile
        ref::top_k_rows(in[0]->data_as<const float>(), in[0]->dim(0), in[0]->dim(1), n.p.row_end,
                        out.data_as<int32_t>());
        return Status::Ok();
      case OpKind::kRope: return rope(n, *in[0], y);
      case OpKind::kPatchify: {
        const Tensor& x = *in[0];
        if (x.dtype() == DType::kU8)
          cpu::patchify_u8_hwc(pool_, x.data_as<const uint8_t>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), n.p.patch, y);
        else
          cpu::patchify(pool_, x.data_as<const float>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), n.p.patch, y);
        return Status::Ok();
      }
      case OpKind::kPixelShuffle: {
        const Tensor& x = *in[0];
        cpu::pixel_shuffle(pool_, x.data_as<const float>(), x.dim(0), x.dim(1), x.dim(2), n.p.shuffle, y);
        return Status::Ok();
      }
      case OpKind::kGetRows: {
        const Tensor& table = *in[0];
        const int64_t V = table.dim(0);
        const int32_t* ids = in[1]->data_as<const int32_t>();
        for (int64_t t = 0; t < in[1]->numel(); ++t)
          if (ids[t] < 0 || ids[t] >= V)
            return InvalidArgument("get_rows '" + n.name + "': id " + std::to_string(ids[t]) + " at position " +
                                   std::to_string(t) + " is outside the table's " + std::to_string(V) + " rows");
        cpu::get_rows(pool_, table.data(), table.dim(1), static_cast<int>(dtype_size(table.dtype())),
                      table.dtype() == DType::kBF16, ids, in[1]->numel(), y);
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
        if (static_cast<const void*>(y) != base.data()) copy_bytes(base.data(), y, base.nbytes());  // else in place
        for (int64_t i = 0; i < in[2]->numel(); ++i)
          std::memcpy(y + static_cast<int64_t>(idx[i]) * C, src.data_as<const float>() + i * C,
                      static_cast<size_t>(C) * 4);
        return Status::Ok();
      }
      case OpKind::kCols: {  // the strided case (the executor makes the contiguous ones as views)
        const Tensor& x = *in[0];
        cpu::copy_cols(pool_, x.data_as<const float>(), x.shape().rows(), x.shape().cols(), n.p.col_begin,
                       n.p.col_end, y);
        return Status::Ok();
      }
      case OpKind::kRows: {
        const Tensor& x = *in[0];
        const int64_t C = x.shape().cols();
        copy_bytes(x.data_as<const float>() + n.p.row_begin * C, y,
                   static_cast<size_t>((n.p.row_end - n.p.row_begin) * C) * 4);
        return Status::Ok();
      }
      case OpKind::kCopy:
      case OpKind::kReshape:
        copy_bytes(in[0]->data(), y, in[0]->nbytes());
        return Status::Ok();
      case OpKind::kInput:
      case OpKind::kCount:
        break;
    }
    return Internal("cpu backend: unhandled op " + std::string(op_kind_name(n.op)));
  }

 private:
  // memcpy over the pool, or memmove when the ranges overlap (a copy into a view of its own input).
  void copy_bytes(const void* src, void* dst, size_t bytes) {
    if (src == dst || bytes == 0) return;
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    if (s < d + bytes && d < s + bytes) {
      std::memmove(d, s, bytes);
      return;
    }
    cpu::copy(pool_, src, dst, bytes);
  }

  Result<std::shared_ptr<PackedLinear>> packed_for(const Tensor& w, const Tensor* b, const std::string& node) {
    const auto key = std::make_pair(static_cast<const void*>(w.data()), b ? static_cast<const void*>(b->data()) : nullptr);
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = packed_.find(key);
      if (it != packed_.end() && it->second.w.shape() == w.shape() && it->second.w.dtype() == w.dtype())
        return it->second.packed;
    }
    auto r = pack_planned(w, b);
    if (!r.ok()) return r.status().with_context("packing weight of '" + node + "'");
    std::lock_guard<std::mutex> lk(mu_);
    PackedEntry& e = packed_[key];
    e.w = w;
    e.b = b ? *b : Tensor();
    e.packed = r.value();
    return e.packed;
  }

  // Packs w for the precision the plan gives it (the backend's own when the plan does not name it). A float
  // weight planned int8 is quantised here (with the plan's smoothing factors); an int8 weight stays int8.
  Result<std::shared_ptr<PackedLinear>> pack_planned(const Tensor& w, const Tensor* b) {
    Precision prec = precision_;
    std::shared_ptr<const LinearPlan> plan;
    {
      std::lock_guard<std::mutex> lk(mu_);
      plan = plan_;
    }
    const std::vector<float>* smooth = nullptr;
    if (plan && w.dtype() != DType::kI8) {
      prec = plan->precision_of(w.name(), prec);
      smooth = plan->smooth_of(w.name());
    }
    if (prec != Precision::kInt8 || w.dtype() == DType::kI8) return pack_linear(w, b, prec);
    EV_ASSIGN_OR_RETURN(Tensor q, quantize_weight_int8(w, smooth));
    return pack_linear(q, b, Precision::kInt8);
  }

  // The cached packing of (w, b) if prepare_weights made one; nullptr otherwise.
  std::shared_ptr<PackedLinear> find_packed(const Tensor& w, const Tensor* b) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = packed_.find(std::make_pair(static_cast<const void*>(w.data()),
                                          b ? static_cast<const void*>(b->data()) : nullptr));
    if (it == packed_.end() || it->second.w.shape() != w.shape() || it->second.w.dtype() != w.dtype()) return nullptr;
    return it->second.packed;
  }

  Status linear(const Node& n, const std::vector<const Tensor*>& in, float* y) {
    const Tensor& x = *in[0];
    const Tensor& w = *in[1];
    const Tensor* b = in.size() > 2 ? in[2] : nullptr;
    const int64_t M = x.shape().rows(), N = w.dim(0);
    if (M == 0) return Status::Ok();
    bool bias_done = true;
    std::shared_ptr<PackedLinear> pl = find_packed(w, b);
    if (!pl && b != nullptr) {
      pl = find_packed(w, nullptr);  // weight packed alone (bias computed by the graph)
      bias_done = pl == nullptr;
    }
    if (!pl) {
      // Not a prepared weight leaf (e.g. a graph built without prepare_weights): pack for this call only.
      EV_LOG_DEBUG("cpu backend: linear '%s' packs its weight per call (not a prepared weight leaf)", n.name.c_str());
      auto r = pack_planned(w, b);
      if (!r.ok()) return r.status().with_context("packing weight of '" + n.name + "'");
      pl = r.value();
      bias_done = true;
    }
    EV_RETURN_IF_ERROR(linear_forward(*pl, x.data_as<const float>(), M, y, pool_));
    if (!bias_done) {
      std::vector<float> tmp;
      cpu::add(pool_, y, M * N, f32_param(*b, &tmp), N, y);
    }
    return Status::Ok();
  }

  const std::vector<float>& widened(const Tensor& t) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = widened_.find(t.data());
    if (it != widened_.end() && it->second.src.numel() == t.numel() && it->second.src.dtype() == t.dtype())
      return it->second.f32;
    WidenedEntry& e = widened_[t.data()];
    e.src = t;
    ref::F32Data f(t);
    e.f32.assign(f.data(), f.data() + f.size());
    return e.f32;
  }

  // An f32 pointer for a float parameter: the tensor itself, its cached widened copy, or a copy in *tmp.
  const float* f32_param(const Tensor& t, std::vector<float>* tmp) {
    if (t.dtype() == DType::kF32) return t.data_as<const float>();
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = widened_.find(t.data());
      if (it != widened_.end() && it->second.src.numel() == t.numel() && it->second.src.dtype() == t.dtype())
        return it->second.f32.data();
    }
    ref::F32Data f(t);
    tmp->assign(f.data(), f.data() + f.size());
    return tmp->data();
  }

  Status rope(const Node& n, const Tensor& x, float* y) {
    const int D = n.p.head_dim, half = D / 2;
    const int64_t T = x.dim(1), pos0 = n.p.q_offset, pos_end = pos0 + T;
    std::shared_ptr<const RopeTable> tab;
    std::vector<float> cs, sn;  // per-call table beyond the cached range
    const float* cptr;
    const float* sptr;
    if (pos_end <= kRopeCacheMaxPos) {
      tab = rope_table(n.p.rope_theta, D, pos_end);
      cptr = tab->cos.data() + pos0 * half;
      sptr = tab->sin.data() + pos0 * half;
    } else {
      std::vector<float> inv(static_cast<size_t>(half));
      ref::rope_inv_freq(D, n.p.rope_theta, inv.data());
      cs.resize(static_cast<size_t>(T * half));
      sn.resize(static_cast<size_t>(T * half));
      for (int64_t t = 0; t < T; ++t) ref::rope_cos_sin(inv.data(), D, pos0 + t, cs.data() + t * half, sn.data() + t * half);
      cptr = cs.data();
      sptr = sn.data();
    }
    cpu::rope(pool_, x.data_as<const float>(), x.dim(0), T, n.p.n_heads, D, cptr, sptr, y);
    return Status::Ok();
  }

  // A table covering at least positions [0, npos); tables are immutable once published (readers may hold them
  // while another call grows a new one).
  std::shared_ptr<const RopeTable> rope_table(float theta, int D, int64_t npos) {
    uint32_t tb;
    std::memcpy(&tb, &theta, 4);
    const auto key = std::make_pair(tb, D);
    std::lock_guard<std::mutex> lk(mu_);
    auto& slot = rope_[key];
    if (slot && slot->npos >= npos) return slot;
    int64_t cap = 256;
    while (cap < npos) cap *= 2;
    cap = std::min(cap, kRopeCacheMaxPos);
    auto t = std::make_shared<RopeTable>();
    const int half = D / 2;
    std::vector<float> inv(static_cast<size_t>(half));
    ref::rope_inv_freq(D, theta, inv.data());
    t->npos = cap;
    t->cos.resize(static_cast<size_t>(cap * half));
    t->sin.resize(static_cast<size_t>(cap * half));
    for (int64_t p = 0; p < cap; ++p) ref::rope_cos_sin(inv.data(), D, p, t->cos.data() + p * half, t->sin.data() + p * half);
    slot = t;
    return slot;
  }

  ThreadPool* pool_;
  Precision precision_;
  std::mutex mu_;
  std::shared_ptr<const LinearPlan> plan_;
  std::unordered_map<std::pair<const void*, const void*>, PackedEntry, PtrPairHash> packed_;
  std::unordered_map<const void*, WidenedEntry> widened_;
  std::map<std::pair<uint32_t, int>, std::shared_ptr<const RopeTable>> rope_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(ThreadPool* pool, Precision precision) {
  return std::make_unique<CpuBackend>(pool, precision);
}

}  // namespace ev
