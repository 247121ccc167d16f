#include "graph/graph.h"

#include <algorithm>
#include <cstdio>

namespace ev {

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::kInput: return "input";
    case OpKind::kLinear: return "linear";
    case OpKind::kAdd: return "add";
    case OpKind::kMul: return "mul";
    case OpKind::kLayerNorm: return "layer_norm";
    case OpKind::kRMSNorm: return "rms_norm";
    case OpKind::kGeluTanh: return "gelu_tanh";
    case OpKind::kSilu: return "silu";
    case OpKind::kSwiGLU: return "swiglu";
    case OpKind::kAttention: return "attention";
    case OpKind::kRope: return "rope";
    case OpKind::kPatchify: return "patchify";
    case OpKind::kPixelShuffle: return "pixel_shuffle";
    case OpKind::kGetRows: return "get_rows";
    case OpKind::kScatterRows: return "scatter_rows";
    case OpKind::kRows: return "rows";
    case OpKind::kCopy: return "copy";
    case OpKind::kReshape: return "reshape";
    case OpKind::kMeanRows: return "mean_rows";
    case OpKind::kSigmoid: return "sigmoid";
    case OpKind::kAttnScore: return "attn_score";
    case OpKind::kTopK: return "top_k";
    case OpKind::kCols: return "cols";
    case OpKind::kArgmax: return "argmax";
    case OpKind::kCount: break;
  }
  return "?";
}

std::string layer_name(const char* prefix, int layer, const char* what) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s.%d.%s", prefix, layer, what);
  return buf;
}

TensorId Graph::push(Node n) {
  nodes.push_back(std::move(n));
  return static_cast<TensorId>(nodes.size() - 1);
}

TensorId Graph::fail(const std::string& msg) {
  if (status_.ok()) status_ = ShapeMismatch("graph build: " + msg);
  // Return a harmless id so that building can continue; the caller checks status() once.
  if (nodes.empty()) {
    Node n;
    n.name = "<error>";
    n.out_shape = Shape{1};
    n.bound = Tensor::empty(DType::kF32, Shape{1});
    nodes.push_back(std::move(n));
  }
  return 0;
}

TensorId Graph::input(const std::string& name, const Tensor& t) {
  Node n;
  n.op = OpKind::kInput;
  n.name = name;
  n.out_dtype = t.dtype();
  n.out_shape = t.shape();
  n.bound = t;
  return push(std::move(n));
}

TensorId Graph::weight(const std::string& name, const Tensor& t) {
  TensorId id = input(name, t);
  nodes[static_cast<size_t>(id)].is_weight = true;
  return id;
}

namespace {
Node make(OpKind k, const std::string& name, std::vector<TensorId> in, Shape out) {
  Node n;
  n.op = k;
  n.name = name;
  n.inputs = std::move(in);
  n.out_shape = out;
  return n;
}
}  // namespace

TensorId Graph::linear(const std::string& name, TensorId x, TensorId w, TensorId b) {
  const Shape& xs = shape(x);
  const Shape& ws = shape(w);
  if (ws.ndim != 2 || xs.cols() != ws[1])
    return fail(name + ": linear x" + xs.to_string() + " with weight " + ws.to_string());
  if (b >= 0 && shape(b).numel() != ws[0]) return fail(name + ": bias " + shape(b).to_string());
  Shape out = xs;
  out[out.ndim - 1] = ws[0];
  std::vector<TensorId> in{x, w};
  if (b >= 0) in.push_back(b);
  return push(make(OpKind::kLinear, name, std::move(in), out));
}

TensorId Graph::add(const std::string& name, TensorId a, TensorId b) {
  const int64_t na = shape(a).numel(), nb = shape(b).numel();
  if (nb == 0 || na % nb != 0) return fail(name + ": add " + shape(a).to_string() + " + " + shape(b).to_string());
  return push(make(OpKind::kAdd, name, {a, b}, shape(a)));
}

TensorId Graph::mul(const std::string& name, TensorId a, TensorId b) {
  const int64_t na = shape(a).numel(), nb = shape(b).numel();
  if (nb == 0 || na % nb != 0) return fail(name + ": mul " + shape(a).to_string() + " * " + shape(b).to_string());
  return push(make(OpKind::kMul, name, {a, b}, shape(a)));
}

TensorId Graph::layer_norm(const std::string& name, TensorId x, TensorId w, TensorId b, float eps) {
  const int64_t c = shape(x).cols();
  if (shape(w).numel() != c || shape(b).numel() != c) return fail(name + ": layer_norm weight/bias size");
  Node n = make(OpKind::kLayerNorm, name, {x, w, b}, shape(x));
  n.p.eps = eps;
  return push(std::move(n));
}

TensorId Graph::rms_norm(const std::string& name, TensorId x, TensorId w, float eps) {
  if (shape(w).numel() != shape(x).cols()) return fail(name + ": rms_norm weight size");
  Node n = make(OpKind::kRMSNorm, name, {x, w}, shape(x));
  n.p.eps = eps;
  return push(std::move(n));
}

TensorId Graph::gelu_tanh(const std::string& name, TensorId x) {
  return push(make(OpKind::kGeluTanh, name, {x}, shape(x)));
}

TensorId Graph::silu(const std::string& name, TensorId x) { return push(make(OpKind::kSilu, name, {x}, shape(x))); }

TensorId Graph::swiglu(const std::string& name, TensorId gate, TensorId up) {
  if (shape(gate) != shape(up)) return fail(name + ": swiglu shapes " + shape(gate).to_string() + " vs " + shape(up).to_string());
  return push(make(OpKind::kSwiGLU, name, {gate, up}, shape(gate)));
}

TensorId Graph::swiglu(const std::string& name, TensorId gate_up) {
  const Shape& s = shape(gate_up);
  if (s.ndim < 1 || s.cols() % 2 != 0) return fail(name + ": fused swiglu needs [..., 2C], got " + s.to_string());
  Shape o = s;
  o[o.ndim - 1] = s.cols() / 2;
  return push(make(OpKind::kSwiGLU, name, {gate_up}, o));
}

TensorId Graph::attention(const std::string& name, TensorId q, TensorId k, TensorId v, int n_heads, int n_kv_heads,
                          int head_dim, float scale, bool causal, int64_t q_offset, TensorId positions) {
  const Shape &qs = shape(q), &ks = shape(k), &vs = shape(v);
  if (positions >= 0 && (node(positions).out_dtype != DType::kI32 || qs.ndim != 3 ||
                         (shape(positions).numel() != qs[1] && shape(positions).numel() != qs[0] * qs[1])))
    return fail(name + ": attention positions " + shape(positions).to_string() + " for q" + qs.to_string());
  if (qs.ndim != 3 || ks.ndim != 3 || vs.ndim != 3) return fail(name + ": attention expects [B, T, H*D] inputs");
  if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    return fail(name + ": attention heads " + std::to_string(n_heads) + "/" + std::to_string(n_kv_heads));
  if (qs[2] != static_cast<int64_t>(n_heads) * head_dim || ks[2] != static_cast<int64_t>(n_kv_heads) * head_dim ||
      ks != vs || qs[0] != ks[0])
    return fail(name + ": attention q" + qs.to_string() + " k" + ks.to_string() + " v" + vs.to_string());
  Node n = make(OpKind::kAttention, name, positions >= 0 ? std::vector<TensorId>{q, k, v, positions} : std::vector<TensorId>{q, k, v}, qs);
  n.p.n_heads = n_heads;
  n.p.n_kv_heads = n_kv_heads;
  n.p.head_dim = head_dim;
  n.p.scale = scale;
  n.p.causal = causal;
  n.p.q_offset = q_offset;
  return push(std::move(n));
}

TensorId Graph::rope(const std::string& name, TensorId x, int n_heads, int head_dim, float theta, int64_t pos0,
                     TensorId positions) {
  const Shape& xs = shape(x);
  if (xs.ndim != 3 || xs[2] != static_cast<int64_t>(n_heads) * head_dim || head_dim % 2 != 0)
    return fail(name + ": rope input " + xs.to_string());
  if (positions >= 0 && (node(positions).out_dtype != DType::kI32 ||
                         (shape(positions).numel() != xs[1] && shape(positions).numel() != xs[0] * xs[1])))
    return fail(name + ": rope positions " + shape(positions).to_string() + " for x" + xs.to_string());
  Node n = make(OpKind::kRope, name, positions >= 0 ? std::vector<TensorId>{x, positions} : std::vector<TensorId>{x}, xs);
  n.p.n_heads = n_heads;
  n.p.head_dim = head_dim;
  n.p.rope_theta = theta;
  n.p.q_offset = pos0;
  return push(std::move(n));
}

TensorId Graph::patchify(const std::string& name, TensorId pixels, int patch) {
  const Shape& s = shape(pixels);
  const bool hwc = node(pixels).out_dtype == DType::kU8;  // u8 frames: [B, H, W, C]
  const int64_t H = hwc ? s[1] : s[2], W = hwc ? s[2] : s[3], C = hwc ? s[3] : s[1];
  if (s.ndim != 4 || patch <= 0 || H % patch != 0 || W % patch != 0)
    return fail(name + ": patchify input " + s.to_string() + (hwc ? " (u8, HWC)" : "") + " patch " +
                std::to_string(patch));
  Node n = make(OpKind::kPatchify, name, {pixels}, Shape{s[0], (H / patch) * (W / patch), C * patch * patch});
  n.p.patch = patch;
  return push(std::move(n));
}

TensorId Graph::pixel_shuffle(const std::string& name, TensorId x, int scale) {
  const Shape& s = shape(x);
  if (s.ndim != 3 || scale <= 0) return fail(name + ": pixel_shuffle input " + s.to_string());
  int64_t side = 0;
  while (side * side < s[1]) ++side;
  if (side * side != s[1] || side % scale != 0)
    return fail(name + ": pixel_shuffle needs a square grid divisible by " + std::to_string(scale) + ", got " +
                std::to_string(s[1]) + " tokens");
  Node n = make(OpKind::kPixelShuffle, name, {x}, Shape{s[0], s[1] / (scale * scale), s[2] * scale * scale});
  n.p.shuffle = scale;
  return push(std::move(n));
}

TensorId Graph::get_rows(const std::string& name, TensorId table, TensorId ids) {
  const Shape& ts = shape(table);
  if (ts.ndim != 2 || node(ids).out_dtype != DType::kI32) return fail(name + ": get_rows table/ids");
  Node n = make(OpKind::kGetRows, name, {table, ids}, Shape{shape(ids).numel(), ts[1]});
  if (node(table).out_dtype == DType::kI32) n.out_dtype = DType::kI32;  // index bookkeeping (token pruning)
  return push(std::move(n));
}

TensorId Graph::scatter_rows(const std::string& name, TensorId base, TensorId src, TensorId idx) {
  if (shape(base).cols() != shape(src).cols() || shape(src).rows() != shape(idx).numel() ||
      node(idx).out_dtype != DType::kI32)
    return fail(name + ": scatter_rows base" + shape(base).to_string() + " src" + shape(src).to_string() + " idx" +
                shape(idx).to_string());
  return push(make(OpKind::kScatterRows, name, {base, src, idx}, shape(base)));
}

TensorId Graph::scatter_rows_into(const std::string& name, TensorId base, TensorId src, TensorId idx, const Tensor& dst) {
  TensorId id = scatter_rows(name, base, src, idx);
  if (!status_.ok()) return id;
  if (dst.numel() != shape(base).numel() || dst.dtype() != DType::kF32)
    return fail(name + ": scatter_rows_into destination " + dst.shape().to_string() + " for " + shape(base).to_string());
  nodes[static_cast<size_t>(id)].bound = dst.reshape(shape(base)).value();
  return id;
}

TensorId Graph::rows(const std::string& name, TensorId x, int64_t r0, int64_t r1) {
  const Shape& s = shape(x);
  if (r0 < 0 || r1 > s.rows() || r0 >= r1) return fail(name + ": rows [" + std::to_string(r0) + ", " + std::to_string(r1) + ")");
  Node n = make(OpKind::kRows, name, {x}, Shape{r1 - r0, s.cols()});
  n.p.row_begin = r0;
  n.p.row_end = r1;
  return push(std::move(n));
}

TensorId Graph::cols(const std::string& name, TensorId x, int64_t c0, int64_t c1) {
  const Shape& s = shape(x);
  if (s.ndim < 1 || c0 < 0 || c1 > s.cols() || c0 >= c1)
    return fail(name + ": cols [" + std::to_string(c0) + ", " + std::to_string(c1) + ") of " + s.to_string());
  Shape o = s;
  o[o.ndim - 1] = c1 - c0;
  Node n = make(OpKind::kCols, name, {x}, o);
  n.p.col_begin = c0;
  n.p.col_end = c1;
  return push(std::move(n));
}

TensorId Graph::copy_into(const std::string& name, TensorId x, const Tensor& dst) {
  if (dst.numel() != shape(x).numel() || dst.dtype() != DType::kF32)
    return fail(name + ": copy_into destination " + dst.shape().to_string() + " for " + shape(x).to_string());
  Node n = make(OpKind::kCopy, name, {x}, dst.shape());
  n.bound = dst;
  return push(std::move(n));
}

TensorId Graph::reshape(const std::string& name, TensorId x, Shape s) {
  if (s.numel() != shape(x).numel()) return fail(name + ": reshape " + shape(x).to_string() + " to " + s.to_string());
  return push(make(OpKind::kReshape, name, {x}, s));
}

TensorId Graph::mean_rows(const std::string& name, TensorId x) {
  const Shape& s = shape(x);
  if (s.ndim != 2 && s.ndim != 3) return fail(name + ": mean_rows needs [R, C] or [B, R, C], got " + s.to_string());
  const int64_t B = s.ndim == 3 ? s[0] : 1;
  return push(make(OpKind::kMeanRows, name, {x}, Shape{B, s.cols()}));
}

TensorId Graph::sigmoid(const std::string& name, TensorId x) {
  return push(make(OpKind::kSigmoid, name, {x}, shape(x)));
}

TensorId Graph::attn_score(const std::string& name, TensorId q, TensorId k, int n_heads, int n_kv_heads,
                           int head_dim, float scale) {
  const Shape &qs = shape(q), &ks = shape(k);
  if (qs.ndim != 3 || ks.ndim != 3 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 ||
      qs[2] != static_cast<int64_t>(n_heads) * head_dim || ks[2] != static_cast<int64_t>(n_kv_heads) * head_dim ||
      qs[0] != ks[0])
    return fail(name + ": attn_score q" + qs.to_string() + " k" + ks.to_string());
  Node n = make(OpKind::kAttnScore, name, {q, k}, Shape{ks[0], ks[1]});
  n.p.n_heads = n_heads;
  n.p.n_kv_heads = n_kv_heads;
  n.p.head_dim = head_dim;
  n.p.scale = scale;
  return push(std::move(n));
}

TensorId Graph::argmax(const std::string& name, TensorId x) {
  const Shape& s = shape(x);
  if (s.ndim != 2 || s[1] < 1 || node(x).out_dtype != DType::kF32)
    return fail(name + ": argmax of " + s.to_string() + " (needs f32 [B, n], n >= 1)");
  Node n = make(OpKind::kArgmax, name, {x}, Shape{s[0]});
  n.out_dtype = DType::kI32;
  return push(std::move(n));
}

TensorId Graph::top_k(const std::string& name, TensorId score, int64_t k) {
  const Shape& s = shape(score);
  if (s.ndim != 2 || k < 1 || k > s[1] || node(score).out_dtype != DType::kF32)
    return fail(name + ": top_k of " + std::to_string(k) + " from score " + s.to_string());
  Node n = make(OpKind::kTopK, name, {score}, Shape{s[0] * k});
  n.out_dtype = DType::kI32;
  n.p.row_end = k;
  return push(std::move(n));
}

double node_flops(const Graph& g, const Node& n) {
  const double out = static_cast<double>(n.out_shape.numel());
  switch (n.op) {
    case OpKind::kLinear: {
      const double k = static_cast<double>(g.shape(n.inputs[1])[1]);
      return 2.0 * out * k;
    }
    case OpKind::kAttention: {
      const Shape& q = g.shape(n.inputs[0]);
      const Shape& k = g.shape(n.inputs[1]);
      double pairs = static_cast<double>(q[1]) * static_cast<double>(k[1]);
      if (n.p.causal) {  // keys 0..q_offset+i for query i
        pairs = 0;
        for (int64_t i = 0; i < q[1]; ++i) pairs += static_cast<double>(std::min<int64_t>(k[1], n.p.q_offset + i + 1));
      }
      return 4.0 * static_cast<double>(q[0]) * n.p.n_heads * pairs * n.p.head_dim;
    }
    case OpKind::kLayerNorm: return 8.0 * out;
    case OpKind::kRMSNorm: return 5.0 * out;
    case OpKind::kGeluTanh: return 12.0 * out;
    case OpKind::kSilu: return 6.0 * out;
    case OpKind::kSigmoid: return 5.0 * out;
    case OpKind::kMeanRows: return static_cast<double>(g.shape(n.inputs[0]).numel());
    case OpKind::kArgmax: return static_cast<double>(g.shape(n.inputs[0]).numel());
    case OpKind::kSwiGLU: return 7.0 * out;
    case OpKind::kRope: return 3.0 * out;
    case OpKind::kAttnScore: {  // q k^T plus the softmax (~8 flops per score)
      const Shape& q = g.shape(n.inputs[0]);
      const Shape& k = g.shape(n.inputs[1]);
      const double pairs = static_cast<double>(q[0]) * n.p.n_heads * static_cast<double>(q[1]) * static_cast<double>(k[1]);
      return pairs * (2.0 * n.p.head_dim + 8.0);
    }
    case OpKind::kAdd:
    case OpKind::kMul: return out;
    default: return 0.0;
  }
}

bool is_view(const Graph& g, const Node& n) {
  if (n.op == OpKind::kReshape) return true;
  if (n.op != OpKind::kCols) return false;
  const Shape& s = g.shape(n.inputs[0]);
  return s.rows() == 1 || (n.p.col_begin == 0 && n.p.col_end == s.cols());
}

double node_bytes(const Graph& g, const Node& n) {
  if (n.op == OpKind::kInput || is_view(g, n)) return 0.0;
  double b = static_cast<double>(n.out_shape.numel()) * dtype_size(n.out_dtype);
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    const Node& in = g.node(n.inputs[i]);
    if (n.op == OpKind::kGetRows && i == 0) {  // only the gathered rows are read
      b += static_cast<double>(n.out_shape.numel()) * dtype_size(in.out_dtype);
      continue;
    }
    b += static_cast<double>(in.out_shape.numel()) * dtype_size(in.out_dtype);
  }
  return b;
}

}  // namespace ev
