#include "kernels/ref/ref_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ref/quant_tensor.h"

namespace ev::ref {

// ---- helpers -------------------------------------------------------------------------------------------------

bool is_float_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

F32Data::F32Data(const Tensor& t) : n_(t.numel()) {
  switch (t.dtype()) {
    case DType::kF32:
      p_ = t.data_as<const float>();
      return;
    case DType::kBF16:
      owned_.resize(static_cast<size_t>(n_));
      convert_bf16_to_f32(t.data_as<const uint16_t>(), owned_.data(), owned_.size());
      break;
    case DType::kF16:
      owned_.resize(static_cast<size_t>(n_));
      convert_f16_to_f32(t.data_as<const uint16_t>(), owned_.data(), owned_.size());
      break;
    default:  // callers check is_float_dtype() first (check_node does)
      owned_.assign(static_cast<size_t>(n_), 0.f);
      break;
  }
  p_ = owned_.data();
}

namespace {

std::string shp(const Tensor& t) { return t.shape().to_string(); }

Status need_inputs(const Node& n, const std::vector<const Tensor*>& in, size_t lo, size_t hi) {
  if (in.size() < lo || in.size() > hi)
    return InvalidArgument(std::string(op_kind_name(n.op)) + " '" + n.name + "': expects " + std::to_string(lo) +
                           (lo == hi ? "" : ".." + std::to_string(hi)) + " inputs, got " + std::to_string(in.size()));
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i] == nullptr || !in[i]->defined())
      return InvalidArgument(std::string(op_kind_name(n.op)) + " '" + n.name + "': input " + std::to_string(i) +
                             " is undefined");
  return Status::Ok();
}

Status need_dtype(const Node& n, const Tensor& t, const char* what, bool any_float) {
  const bool ok = any_float ? is_float_dtype(t.dtype()) : t.dtype() == DType::kF32;
  if (!ok)
    return Unsupported(std::string(op_kind_name(n.op)) + " '" + n.name + "': " + what + " has dtype " +
                       dtype_name(t.dtype()) + ", expected " + (any_float ? "f32/bf16/f16" : "f32"));
  return Status::Ok();
}

Status mismatch(const Node& n, const std::string& msg) {
  return ShapeMismatch(std::string(op_kind_name(n.op)) + " '" + n.name + "': " + msg);
}

}  // namespace

Status check_attention_dims(const AttentionDims& a) {
  if (a.B < 0 || a.T < 0 || a.S < 0 || a.Hq <= 0 || a.Hkv <= 0 || a.D <= 0 || a.Hq % a.Hkv != 0 || a.q_offset < 0)
    return InvalidArgument("attention: bad dims B=" + std::to_string(a.B) + " T=" + std::to_string(a.T) +
                           " S=" + std::to_string(a.S) + " heads " + std::to_string(a.Hq) + "/" +
                           std::to_string(a.Hkv) + " D=" + std::to_string(a.D) +
                           " q_offset=" + std::to_string(a.q_offset));
  return Status::Ok();
}

Status check_node(const Node& n, const std::vector<const Tensor*>& in, const Tensor& out) {
  // Index outputs: top_k, and get_rows over an i32 table (the bookkeeping of token pruning).
  const bool int_out = n.op == OpKind::kTopK || n.op == OpKind::kArgmax || (n.op == OpKind::kGetRows && !in.empty() && in[0] &&
                                                 in[0]->dtype() == DType::kI32);
  if (out.dtype() != (int_out ? DType::kI32 : DType::kF32))
    return Unsupported(std::string(op_kind_name(n.op)) + " '" + n.name + "': output dtype " +
                       dtype_name(out.dtype()) + " (only f32 activations are produced)");
  if (!out.defined()) return InvalidArgument(std::string(op_kind_name(n.op)) + " '" + n.name + "': no output");
  const Shape& os = out.shape();
  switch (n.op) {
    case OpKind::kInput:
    case OpKind::kCount:
      return InvalidArgument(std::string("node '") + n.name + "' (" + op_kind_name(n.op) + ") is not computable");
    case OpKind::kLinear: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 2, 3));
      const Tensor &x = *in[0], &w = *in[1];
      EV_RETURN_IF_ERROR(need_dtype(n, x, "x", false));
      if (w.dtype() == DType::kI8) {
        Status st = check_int8_weight(w);
        if (!st.ok()) return st.with_context(std::string(op_kind_name(n.op)) + " '" + n.name + "'");
      } else {
        EV_RETURN_IF_ERROR(need_dtype(n, w, "weight", true));
      }
      if (w.ndim() != 2 || x.shape().cols() != w.dim(1))
        return mismatch(n, "x" + shp(x) + " with weight " + shp(w) + " (expects w [N, K], x [..., K])");
      if (in.size() == 3) {
        EV_RETURN_IF_ERROR(need_dtype(n, *in[2], "bias", true));
        if (in[2]->numel() != w.dim(0)) return mismatch(n, "bias " + shp(*in[2]) + " for weight " + shp(w));
      }
      if (os.cols() != w.dim(0) || os.rows() != x.shape().rows())
        return mismatch(n, "output " + shp(out) + " for x" + shp(x) + " w" + shp(w));
      return Status::Ok();
    }
    case OpKind::kAdd:
    case OpKind::kMul: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 2, 2));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "a", false));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[1], "b", true));
      const int64_t na = in[0]->numel(), nb = in[1]->numel();
      if (nb == 0 ? na != 0 : na % nb != 0)
        return mismatch(n, "b" + shp(*in[1]) + " does not divide a" + shp(*in[0]));
      if (os.numel() != na) return mismatch(n, "output " + shp(out) + " for a" + shp(*in[0]));
      return Status::Ok();
    }
    case OpKind::kLayerNorm:
    case OpKind::kRMSNorm: {
      const bool ln = n.op == OpKind::kLayerNorm;
      EV_RETURN_IF_ERROR(need_inputs(n, in, ln ? 3 : 2, ln ? 3 : 2));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      const int64_t c = in[0]->shape().cols();
      for (size_t i = 1; i < in.size(); ++i) {
        EV_RETURN_IF_ERROR(need_dtype(n, *in[i], i == 1 ? "weight" : "bias", true));
        if (in[i]->numel() != c) return mismatch(n, "parameter " + shp(*in[i]) + " for x" + shp(*in[0]));
      }
      if (os.numel() != in[0]->numel()) return mismatch(n, "output " + shp(out) + " for x" + shp(*in[0]));
      if (!(n.p.eps >= 0.f)) return InvalidArgument(std::string(op_kind_name(n.op)) + " '" + n.name + "': eps < 0");
      return Status::Ok();
    }
    case OpKind::kGeluTanh:
    case OpKind::kSilu:
    case OpKind::kSigmoid:
    case OpKind::kCopy:
    case OpKind::kReshape: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      if (os.numel() != in[0]->numel()) return mismatch(n, "output " + shp(out) + " for x" + shp(*in[0]));
      return Status::Ok();
    }
    case OpKind::kSwiGLU: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 2));
      if (in.size() == 1) {  // fused [gate | up] rows
        EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "gate_up", false));
        const Shape& s = in[0]->shape();
        if (s.cols() % 2 != 0 || os.rows() != s.rows() || os.cols() * 2 != s.cols())
          return mismatch(n, "gate_up" + shp(*in[0]) + " out" + shp(out));
        return Status::Ok();
      }
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "gate", false));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[1], "up", false));
      if (in[0]->numel() != in[1]->numel() || os.numel() != in[0]->numel())
        return mismatch(n, "gate" + shp(*in[0]) + " up" + shp(*in[1]) + " out" + shp(out));
      return Status::Ok();
    }
    case OpKind::kAttention: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 3, 4));
      if (in.size() == 4 && (in[3]->dtype() != DType::kI32 || in[0]->ndim() != 3 ||
                             (in[3]->numel() != in[0]->dim(1) && in[3]->numel() != in[0]->dim(0) * in[0]->dim(1))))
        return mismatch(n, "positions " + shp(*in[3]) + " (i32, one per query) for q" + shp(*in[0]));
      for (size_t i = 0; i < 3; ++i) EV_RETURN_IF_ERROR(need_dtype(n, *in[i], i == 0 ? "q" : i == 1 ? "k" : "v", false));
      const Tensor &q = *in[0], &k = *in[1], &v = *in[2];
      const int64_t D = n.p.head_dim;
      if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || n.p.n_heads <= 0 || n.p.n_kv_heads <= 0 || D <= 0 ||
          n.p.n_heads % n.p.n_kv_heads != 0 || q.dim(2) != n.p.n_heads * D || k.dim(2) != n.p.n_kv_heads * D ||
          k.shape() != v.shape() || q.dim(0) != k.dim(0))
        return mismatch(n, "q" + shp(q) + " k" + shp(k) + " v" + shp(v) + " with heads " +
                               std::to_string(n.p.n_heads) + "/" + std::to_string(n.p.n_kv_heads) +
                               " head_dim " + std::to_string(D));
      if (n.p.q_offset < 0) return InvalidArgument("attention '" + n.name + "': q_offset < 0");
      if (os != q.shape()) return mismatch(n, "output " + shp(out) + " for q" + shp(q));
      return Status::Ok();
    }
    case OpKind::kRope: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 2));
      if (in.size() == 2 && (in[1]->dtype() != DType::kI32 || in[0]->ndim() != 3 ||
                             (in[1]->numel() != in[0]->dim(1) && in[1]->numel() != in[0]->dim(0) * in[0]->dim(1))))
        return mismatch(n, "positions " + shp(*in[1]) + " (i32, one per token) for x" + shp(*in[0]));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      const Tensor& x = *in[0];
      if (x.ndim() != 3 || n.p.n_heads <= 0 || n.p.head_dim <= 0 || n.p.head_dim % 2 != 0 ||
          x.dim(2) != static_cast<int64_t>(n.p.n_heads) * n.p.head_dim)
        return mismatch(n, "x" + shp(x) + " with " + std::to_string(n.p.n_heads) + " heads of dim " +
                               std::to_string(n.p.head_dim) + " (head_dim must be even)");
      if (n.p.q_offset < 0) return InvalidArgument("rope '" + n.name + "': position offset < 0");
      if (!(n.p.rope_theta > 0.f)) return InvalidArgument("rope '" + n.name + "': theta must be > 0");
      if (os != x.shape()) return mismatch(n, "output " + shp(out) + " for x" + shp(x));
      return Status::Ok();
    }
    case OpKind::kPatchify: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      const Tensor& x = *in[0];
      const bool hwc = x.dtype() == DType::kU8;  // u8 frames [B, H, W, C]
      if (!hwc) EV_RETURN_IF_ERROR(need_dtype(n, x, "pixels", false));
      const int64_t P = n.p.patch;
      if (x.ndim() != 4 || P <= 0 || x.dim(hwc ? 1 : 2) % P != 0 || x.dim(hwc ? 2 : 3) % P != 0)
        return mismatch(n, "pixels" + shp(x) + (hwc ? " (u8, HWC)" : "") + " with patch " + std::to_string(P));
      const int64_t H = x.dim(hwc ? 1 : 2), W = x.dim(hwc ? 2 : 3), C = x.dim(hwc ? 3 : 1);
      const Shape want{x.dim(0), (H / P) * (W / P), C * P * P};
      if (os != want) return mismatch(n, "output " + shp(out) + ", expected " + want.to_string());
      return Status::Ok();
    }
    case OpKind::kPixelShuffle: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      const Tensor& x = *in[0];
      const int64_t s = n.p.shuffle;
      if (x.ndim() != 3 || s <= 0) return mismatch(n, "x" + shp(x) + " scale " + std::to_string(s));
      int64_t h = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(x.dim(1)))));
      if (h * h != x.dim(1) || h % s != 0)
        return mismatch(n, std::to_string(x.dim(1)) + " tokens are not a square grid with side divisible by " +
                               std::to_string(s));
      const Shape want{x.dim(0), x.dim(1) / (s * s), x.dim(2) * s * s};
      if (os != want) return mismatch(n, "output " + shp(out) + ", expected " + want.to_string());
      return Status::Ok();
    }
    case OpKind::kGetRows: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 2, 2));
      if (in[0]->dtype() != DType::kI32) EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "table", true));
      if (in[0]->ndim() != 2) return mismatch(n, "table " + shp(*in[0]) + " is not 2-D");
      if (in[1]->dtype() != DType::kI32)
        return Unsupported("get_rows '" + n.name + "': ids dtype " + dtype_name(in[1]->dtype()) + ", expected i32");
      if (os.rows() != in[1]->numel() || os.cols() != in[0]->dim(1))
        return mismatch(n, "output " + shp(out) + " for table " + shp(*in[0]) + " and " +
                               std::to_string(in[1]->numel()) + " ids");
      return Status::Ok();
    }
    case OpKind::kScatterRows: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 3, 3));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "base", false));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[1], "src", false));
      if (in[2]->dtype() != DType::kI32)
        return Unsupported("scatter_rows '" + n.name + "': idx dtype " + dtype_name(in[2]->dtype()) + ", expected i32");
      const Tensor &base = *in[0], &src = *in[1];
      if (base.shape().cols() != src.shape().cols() || src.shape().rows() != in[2]->numel())
        return mismatch(n, "base" + shp(base) + " src" + shp(src) + " idx" + shp(*in[2]));
      if (os.numel() != base.numel()) return mismatch(n, "output " + shp(out) + " for base" + shp(base));
      return Status::Ok();
    }
    case OpKind::kAttnScore: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 2, 2));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "q", false));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[1], "k", false));
      const Tensor &q = *in[0], &k = *in[1];
      const int64_t D = n.p.head_dim;
      if (q.ndim() != 3 || k.ndim() != 3 || n.p.n_heads <= 0 || n.p.n_kv_heads <= 0 || D <= 0 ||
          n.p.n_heads % n.p.n_kv_heads != 0 || q.dim(2) != n.p.n_heads * D || k.dim(2) != n.p.n_kv_heads * D ||
          q.dim(0) != k.dim(0) || q.dim(1) == 0)
        return mismatch(n, "q" + shp(q) + " k" + shp(k) + " with heads " + std::to_string(n.p.n_heads) + "/" +
                               std::to_string(n.p.n_kv_heads) + " head_dim " + std::to_string(D));
      if (os != Shape{k.dim(0), k.dim(1)}) return mismatch(n, "output " + shp(out) + " for k" + shp(k));
      return Status::Ok();
    }
    case OpKind::kTopK: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      if (in[0]->dtype() != DType::kF32 || in[0]->ndim() != 2)
        return mismatch(n, "score " + shp(*in[0]) + " must be f32 [B, n]");
      const int64_t kk = n.p.row_end;
      if (kk < 1 || kk > in[0]->dim(1))
        return InvalidArgument("top_k '" + n.name + "': k = " + std::to_string(kk) + " outside [1, " +
                               std::to_string(in[0]->dim(1)) + "]");
      if (os.numel() != in[0]->dim(0) * kk) return mismatch(n, "output " + shp(out) + " for k " + std::to_string(kk));
      return Status::Ok();
    }
    case OpKind::kArgmax: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      if (in[0]->dtype() != DType::kF32 || in[0]->ndim() != 2 || in[0]->dim(1) < 1)
        return mismatch(n, "x " + shp(*in[0]) + " must be f32 [B, n] with n >= 1");
      if (os.numel() != in[0]->dim(0)) return mismatch(n, "output " + shp(out) + " for x " + shp(*in[0]));
      return Status::Ok();
    }
    case OpKind::kMeanRows: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      const Tensor& x = *in[0];
      if ((x.ndim() != 2 && x.ndim() != 3) || x.shape().rows() == 0) return mismatch(n, "x" + shp(x));
      const int64_t B = x.ndim() == 3 ? x.dim(0) : 1;
      if (os != Shape{B, x.shape().cols()}) return mismatch(n, "output " + shp(out) + " for x" + shp(x));
      return Status::Ok();
    }
    case OpKind::kCols: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      const Tensor& x = *in[0];
      const int64_t c0 = n.p.col_begin, c1 = n.p.col_end;
      if (c0 < 0 || c1 > x.shape().cols() || c0 >= c1)
        return mismatch(n, "cols [" + std::to_string(c0) + ", " + std::to_string(c1) + ") of x" + shp(x));
      if (os.cols() != c1 - c0 || os.rows() != x.shape().rows())
        return mismatch(n, "output " + shp(out) + " for columns [" + std::to_string(c0) + ", " + std::to_string(c1) +
                               ") of x" + shp(x));
      return Status::Ok();
    }
    case OpKind::kRows: {
      EV_RETURN_IF_ERROR(need_inputs(n, in, 1, 1));
      EV_RETURN_IF_ERROR(need_dtype(n, *in[0], "x", false));
      const Tensor& x = *in[0];
      const int64_t r0 = n.p.row_begin, r1 = n.p.row_end;
      if (r0 < 0 || r1 > x.shape().rows() || r0 > r1)
        return mismatch(n, "rows [" + std::to_string(r0) + ", " + std::to_string(r1) + ") of x" + shp(x));
      if (os.numel() != (r1 - r0) * x.shape().cols())
        return mismatch(n, "output " + shp(out) + " for " + std::to_string(r1 - r0) + " rows of x" + shp(x));
      return Status::Ok();
    }
  }
  return InvalidArgument("unknown op kind " + std::to_string(static_cast<int>(n.op)));
}

// ---- ops -----------------------------------------------------------------------------------------------------

void linear(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* b, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    for (int64_t n = 0; n < N; ++n) {
      const float* wr = w + n * K;
      double acc = b ? static_cast<double>(b[n]) : 0.0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(xr[k]) * static_cast<double>(wr[k]);
      y[m * N + n] = static_cast<float>(acc);
    }
  }
}

void add(const float* a, int64_t na, const float* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < na; ++i) y[i] = a[i] + b[i % nb];
}

void mul(const float* a, int64_t na, const float* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < na; ++i) y[i] = a[i] * b[i % nb];
}

void layer_norm(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    double mean = 0.0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<double>(C);
    double var = 0.0;  // biased (divide by C), as torch.nn.LayerNorm
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= static_cast<double>(C);
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (int64_t c = 0; c < C; ++c)
      y[r * C + c] = static_cast<float>((xr[c] - mean) * inv * static_cast<double>(w[c]) + static_cast<double>(b[c]));
  }
}

void rms_norm(const float* x, int64_t rows, int64_t C, const float* w, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(C) + static_cast<double>(eps));
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = static_cast<float>(static_cast<double>(w[c]) * (xr[c] * inv));
  }
}

void sigmoid(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x[i]))));
}

void mean_rows(const float* x, int64_t B, int64_t R, int64_t C, float* y) {
  std::vector<double> acc(static_cast<size_t>(C));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += x[(b * R + r) * C + c];
    for (int64_t c = 0; c < C; ++c) y[b * C + c] = static_cast<float>(acc[static_cast<size_t>(c)] / static_cast<double>(R));
  }
}

float gelu_tanh(float xf) {
  const double x = xf;
  const double k = std::sqrt(2.0 / M_PI);
  return static_cast<float>(0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x))));
}
void gelu_tanh(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh(x[i]);
}

float silu(float xf) {
  const double x = xf;
  return static_cast<float>(x / (1.0 + std::exp(-x)));
}
void silu(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = silu(x[i]);
}

void swiglu(const float* gate, const float* up, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    y[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * static_cast<double>(up[i]));
  }
}

void attention(const AttentionDims& a, const float* q, const float* k, const float* v, float* out) {
  const int64_t D = a.D, G = a.Hq / a.Hkv;
  const int64_t q_stride = static_cast<int64_t>(a.Hq) * D, kv_stride = static_cast<int64_t>(a.Hkv) * D;
  std::vector<double> score(static_cast<size_t>(std::max<int64_t>(a.S, 1)));
  std::vector<double> acc(static_cast<size_t>(D));
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t h = 0; h < a.Hq; ++h) {
      const int64_t hk = h / G;  // repeat_kv: query head h shares kv head h / (Hq / Hkv)
      for (int64_t i = 0; i < a.T; ++i) {
        const float* qr = q + (b * a.T + i) * q_stride + h * D;
        const int64_t qpos = a.positions ? static_cast<int64_t>(a.positions[a.per_batch ? b * a.T + i : i]) : a.q_offset + i;
        const int64_t n_keys = a.causal ? std::max<int64_t>(0, std::min(a.S, qpos + 1)) : a.S;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < n_keys; ++j) {
          const float* kr = k + (b * a.S + j) * kv_stride + hk * D;
          double s = 0.0;
          for (int64_t d = 0; d < D; ++d) s += static_cast<double>(qr[d]) * kr[d];
          score[static_cast<size_t>(j)] = s * static_cast<double>(a.scale);
          mx = std::max(mx, score[static_cast<size_t>(j)]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) {
          score[static_cast<size_t>(j)] = std::exp(score[static_cast<size_t>(j)] - mx);
          sum += score[static_cast<size_t>(j)];
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < n_keys; ++j) {
          const float* vr = v + (b * a.S + j) * kv_stride + hk * D;
          const double p = score[static_cast<size_t>(j)] / sum;
          for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += p * vr[d];
        }
        float* orow = out + (b * a.T + i) * q_stride + h * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = n_keys > 0 ? static_cast<float>(acc[static_cast<size_t>(d)]) : 0.f;
      }
    }
  }
}

AttentionDims attention_dims(const Node& n, const Tensor& q, const Tensor& k) {
  AttentionDims a;
  a.B = q.dim(0);
  a.T = q.dim(1);
  a.S = k.dim(1);
  a.Hq = n.p.n_heads;
  a.Hkv = n.p.n_kv_heads;
  a.D = n.p.head_dim;
  a.scale = n.p.scale;
  a.causal = n.p.causal;
  a.q_offset = n.p.q_offset;
  return a;
}

void attn_score(const AttentionDims& a, const float* q, const float* k, float* score) {
  const int64_t D = a.D, G = a.Hq / a.Hkv;
  const int64_t q_stride = static_cast<int64_t>(a.Hq) * D, kv_stride = static_cast<int64_t>(a.Hkv) * D;
  std::vector<double> s(static_cast<size_t>(std::max<int64_t>(a.S, 1))), col(static_cast<size_t>(a.S));
  for (int64_t b = 0; b < a.B; ++b) {
    std::fill(col.begin(), col.end(), 0.0);
    for (int64_t h = 0; h < a.Hq; ++h) {
      const int64_t hk = h / G;
      for (int64_t i = 0; i < a.T; ++i) {
        const float* qr = q + (b * a.T + i) * q_stride + h * D;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < a.S; ++j) {
          const float* kr = k + (b * a.S + j) * kv_stride + hk * D;
          double d = 0.0;
          for (int64_t e = 0; e < D; ++e) d += static_cast<double>(qr[e]) * kr[e];
          s[static_cast<size_t>(j)] = d * static_cast<double>(a.scale);
          mx = std::max(mx, s[static_cast<size_t>(j)]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < a.S; ++j) sum += (s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx));
        for (int64_t j = 0; j < a.S; ++j) col[static_cast<size_t>(j)] += s[static_cast<size_t>(j)] / sum;
      }
    }
    const double norm = 1.0 / (static_cast<double>(a.Hq) * static_cast<double>(a.T));
    for (int64_t j = 0; j < a.S; ++j) score[b * a.S + j] = static_cast<float>(col[static_cast<size_t>(j)] * norm);
  }
}

void top_k_rows(const float* score, int64_t B, int64_t n, int64_t k, int32_t* idx) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t b = 0; b < B; ++b) {
    const float* s = score + b * n;
    for (int64_t j = 0; j < n; ++j) order[static_cast<size_t>(j)] = static_cast<int32_t>(j);
    // Highest first, ties by lower index; NaN scores rank last (treated as -inf).
    auto key = [&](int32_t j) { return std::isnan(s[j]) ? -std::numeric_limits<float>::infinity() : s[j]; };
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
      const float kx = key(x), ky = key(y);
      return kx > ky || (kx == ky && x < y);
    });
    std::sort(order.begin(), order.begin() + k);
    for (int64_t i = 0; i < k; ++i) idx[b * k + i] = static_cast<int32_t>(b * n + order[static_cast<size_t>(i)]);
  }
}

void argmax_rows(const float* x, int64_t B, int64_t n, int32_t* idx) {
  for (int64_t b = 0; b < B; ++b) {
    const float* r = x + b * n;
    int64_t best = -1;
    for (int64_t j = 0; j < n; ++j)
      if (!std::isnan(r[j]) && (best < 0 || r[j] > r[best])) best = j;
    idx[b] = static_cast<int32_t>(best);
  }
}

void rope_inv_freq(int D, float theta, float* inv_freq) {
  // transformers: inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in float32.
  for (int i = 0; i < D / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    const float p = static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(e)));
    inv_freq[i] = 1.0f / p;
  }
}

void rope_cos_sin(const float* inv_freq, int D, int64_t pos, float* cos_out, float* sin_out) {
  // freqs = inv_freq @ position_ids in float32: one product per entry, rounded to f32.
  const float fp = static_cast<float>(pos);
  for (int i = 0; i < D / 2; ++i) {
    const float ang = fp * inv_freq[i];
    cos_out[i] = static_cast<float>(std::cos(static_cast<double>(ang)));
    sin_out[i] = static_cast<float>(std::sin(static_cast<double>(ang)));
  }
}

void rope(const float* x, int64_t B, int64_t T, int H, int D, float theta, int64_t pos0, float* y,
          const int32_t* positions, bool per_batch) {
  const int half = D / 2;
  std::vector<float> inv(static_cast<size_t>(half)), c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
  rope_inv_freq(D, theta, inv.data());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      rope_cos_sin(inv.data(), D, positions ? static_cast<int64_t>(positions[per_batch ? b * T + t : t]) : pos0 + t,
                   c.data(), s.data());
      for (int h = 0; h < H; ++h) {
        const int64_t off = ((b * T + t) * H + h) * D;
        for (int i = 0; i < half; ++i) {
          const double x1 = x[off + i], x2 = x[off + i + half];
          const double ci = c[static_cast<size_t>(i)], si = s[static_cast<size_t>(i)];
          y[off + i] = static_cast<float>(x1 * ci - x2 * si);
          y[off + i + half] = static_cast<float>(x2 * ci + x1 * si);
        }
      }
    }
  }
}

namespace {
// Patch (py, px) of image b is token py * (W/P) + px; its element (c, r, col) is the pixel (c, py*P + r, px*P + col)
// of a [B, C, H, W] tile (hwc: of a [B, H, W, C] frame).
template <typename T, bool HWC>
void patchify_any(const T* px, int64_t B, int64_t C, int64_t H, int64_t W, int P, float* y) {
  const int64_t gh = H / P, gw = W / P, E = C * P * P;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t py = 0; py < gh; ++py)
      for (int64_t pxi = 0; pxi < gw; ++pxi) {
        float* dst = y + (b * gh * gw + py * gw + pxi) * E;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t r = 0; r < P; ++r)
            for (int64_t col = 0; col < P; ++col) {
              const int64_t ih = py * P + r, iw = pxi * P + col;
              dst[(c * P + r) * P + col] =
                  static_cast<float>(HWC ? px[((b * H + ih) * W + iw) * C + c] : px[((b * C + c) * H + ih) * W + iw]);
            }
      }
}
}  // namespace

void patchify(const float* px, int64_t B, int64_t C, int64_t H, int64_t W, int P, float* y) {
  patchify_any<float, false>(px, B, C, H, W, P, y);
}

void patchify_u8_hwc(const uint8_t* px, int64_t B, int64_t H, int64_t W, int64_t C, int P, float* y) {
  patchify_any<uint8_t, true>(px, B, C, H, W, P, y);
}

void pixel_shuffle(const float* x, int64_t B, int64_t S, int64_t E, int s, float* y) {
  const int64_t h = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(S))));
  const int64_t g = h / s;  // output grid side
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < g; ++i)
      for (int64_t j = 0; j < g; ++j)
        for (int64_t ri = 0; ri < s; ++ri)
          for (int64_t rj = 0; rj < s; ++rj) {
            const float* src = x + (b * S + (i * s + ri) * h + j * s + rj) * E;
            float* dst = y + (b * (S / (s * s)) + i * g + j) * (E * s * s) + (ri * s + rj) * E;
            std::memcpy(dst, src, static_cast<size_t>(E) * sizeof(float));
          }
}

}  // namespace ev::ref
