// A small op graph: nodes in topological (insertion) order, each producing one named tensor.
//
// Models build a Graph for one forward call (cheap: a few hundred nodes), then an Executor runs it on a Backend.
// Every node output carries a name ("v.blk3.attn_out") so that any intermediate can be dumped and compared with
// the reference, and every node has FLOP and byte counts for the profiler.
//
// Conventions (shapes written outermost first, row-major, contiguous):
//   kLinear      in: x [..., K], w [N, K] (PyTorch Linear layout), optional b [N]   out: [..., N]
//   kAdd, kMul   in: a, b with b.numel() dividing a.numel(); b is repeated over a's leading elements
//                (bias [C] over [R, C]; position table [T, C] over [B, T, C])          out: shape of a
//   kLayerNorm   in: x [..., C], w [C], b [C]; p.eps                                   out: shape of x
//   kRMSNorm     in: x [..., C], w [C]; p.eps                                          out: shape of x
//   kGeluTanh    in: x                                                                 out: shape of x
//   kSilu        in: x                                                                 out: shape of x
//   kSwiGLU      in: gate [..., C], up [..., C]: silu(gate) * up                       out: shape of gate
//                or one input x [..., 2C] holding [gate | up] in each row (the output of a fused gate/up
//                Linear)                                                               out: [..., C]
//   kAttention   in: q [B, T, Hq*D], k [B, S, Hkv*D], v [B, S, Hkv*D]; p.n_heads = Hq, p.n_kv_heads = Hkv,
//                p.head_dim = D, p.scale, p.causal, p.q_offset (query i sits at key position q_offset + i,
//                so causal masking allows keys 0..q_offset+i)                          out: [B, T, Hq*D]
//                optional 4th input positions (i32), [T] or [B*T]: query i (of batch element b) sits at key
//                position positions[i] (positions[b*T + i]) instead (the positions live in a tensor, so one graph
//                serves every decode step: static decode; [B*T]: a batch of sequences at different positions)
//   kRope        in: x [B, T, H*D]; p.n_heads = H, p.head_dim = D, p.rope_theta, p.q_offset (position of
//                token 0); rotate-half (HF Llama) convention                           out: shape of x
//                optional 2nd input positions (i32), [T] or [B*T]: the position of token t (of batch element b)
//                is positions[t] (positions[b*T + t])
//   kPatchify    in: pixels [B, 3, H, W]; p.patch = P    out: [B, (H/P)*(W/P), 3*P*P] (channel, row, col
//                order within a patch, i.e. conv2d weight [E, 3, P, P] flattened to [E, 3*P*P])
//   kPixelShuffle in: x [B, S, E] with S = h*h; p.scale = s                            out: [B, S/(s*s), E*s*s]
//                (Idefics3Connector.pixel_shuffle)
//   kGetRows     in: table [V, C] (f32/bf16/f16, or i32: out i32), ids [T] (i32)        out: [T, C] f32
//   kAttnScore   in: q [B, T, Hq*D], k [B, S, Hkv*D]; p.n_heads, p.n_kv_heads, p.head_dim, p.scale (not causal)
//                out: [B, S] f32, the attention each key receives: the mean over query heads and queries of
//                softmax_j(scale q_i . k_j) (token pruning's importance score)
//   kTopK        in: score [B, n] f32; p.row_end = k (1 <= k <= n)                    out: [B*k] i32 flat row
//                indices b*n + j of each batch element's k highest scores (ties: lower j first), ascending j
//   kArgmax      in: x [B, n] f32                                                     out: [B] i32, the column
//                of each row's highest value (ties: the lowest; NaN never wins; -1 for a row of NaNs): greedy
//                decoding on the device, whose ids feed the next step's get_rows
//   kScatterRows in: base [T, C], src [n, C], idx [n] (i32): out = base; out[idx[i]] = src[i]  out: [T, C]
//   kRows        in: x [..., R, C] seen as [rows, C]; p.row_begin, p.row_end           out: [row_end-row_begin, C]
//   kCols        in: x [..., C] seen as [rows, C]; p.col_begin, p.col_end               out: [..., col_end-col_begin]
//                (splits a fused q/k/v Linear output). A view of x (no copy) when x has one row or the range is
//                all of C (is_view()); otherwise a strided copy by the backend
//   kCopy        in: x                                                                 out: same shape; with a
//                preset output (e.g. a KV-cache slice) this writes into that memory
// All activations are f32; weights may be f32, bf16 or f16 and the backend decides how to compute with them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace ev {

enum class OpKind : uint8_t {
  kInput = 0,  // a leaf bound to an external tensor (activations, weights, KV cache views)
  kLinear,
  kAdd,
  kMul,
  kLayerNorm,
  kRMSNorm,
  kGeluTanh,
  kSilu,
  kSwiGLU,
  kAttention,
  kRope,
  kPatchify,
  kPixelShuffle,
  kGetRows,
  kScatterRows,
  kRows,
  kCopy,
  kReshape,  // view: shares the input's storage
  kMeanRows,  // x [..., R, C] -> [..., C]: the mean over the rows of each matrix (token pooling)
  kSigmoid,
  kAttnScore,
  kTopK,
  kCols,  // column range of x [..., C]; a view when possible (see is_view())
  kArgmax,
  kCount
};

const char* op_kind_name(OpKind k);

struct OpParams {
  float eps = 0.f;
  float scale = 1.f;
  float rope_theta = 10000.f;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  bool causal = false;
  int64_t q_offset = 0;
  int patch = 0;
  int shuffle = 0;
  int64_t row_begin = 0;
  int64_t row_end = 0;
  int64_t col_begin = 0;  // kCols
  int64_t col_end = 0;
};

using TensorId = int32_t;

struct Node {
  OpKind op = OpKind::kInput;
  std::string name;
  std::vector<TensorId> inputs;
  OpParams p;
  DType out_dtype = DType::kF32;
  Shape out_shape;
  // kInput nodes: the bound tensor. Other nodes: if defined, the executor writes into this memory instead of
  // allocating (the shape must match out_shape).
  Tensor bound;
  bool is_weight = false;  // kInput holding model weights (the backend may pre-pack it)
  bool keep = false;       // keep the output alive after the run (graph outputs, dumps)
};

// Whether node n's output is a view of its input's storage (the executor makes it without calling a backend):
// kReshape always; kCols when its input has a single row or the column range is all of it.
bool is_view(const struct Graph& g, const Node& n);

// FLOPs (multiply-add = 2) and bytes moved (inputs read + output written) of one node.
double node_flops(const struct Graph& g, const Node& n);
double node_bytes(const struct Graph& g, const Node& n);

struct Graph {
  std::vector<Node> nodes;

  const Node& node(TensorId id) const { return nodes[static_cast<size_t>(id)]; }
  const Shape& shape(TensorId id) const { return nodes[static_cast<size_t>(id)].out_shape; }

  // Leaves.
  TensorId input(const std::string& name, const Tensor& t);
  TensorId weight(const std::string& name, const Tensor& t);

  // Ops. Each validates shapes and aborts the build (via status()) on mismatch: builders check status() once
  // at the end rather than after every call.
  TensorId linear(const std::string& name, TensorId x, TensorId w, TensorId b = -1);
  TensorId add(const std::string& name, TensorId a, TensorId b);
  TensorId mul(const std::string& name, TensorId a, TensorId b);
  TensorId layer_norm(const std::string& name, TensorId x, TensorId w, TensorId b, float eps);
  TensorId rms_norm(const std::string& name, TensorId x, TensorId w, float eps);
  TensorId gelu_tanh(const std::string& name, TensorId x);
  TensorId silu(const std::string& name, TensorId x);
  TensorId swiglu(const std::string& name, TensorId gate, TensorId up);
  // x [..., 2C] = [gate | up] per row (a fused gate/up Linear) -> silu(gate) * up [..., C].
  TensorId swiglu(const std::string& name, TensorId gate_up);
  TensorId attention(const std::string& name, TensorId q, TensorId k, TensorId v, int n_heads, int n_kv_heads,
                     int head_dim, float scale, bool causal, int64_t q_offset, TensorId positions = -1);
  TensorId rope(const std::string& name, TensorId x, int n_heads, int head_dim, float theta, int64_t pos0,
                TensorId positions = -1);
  // pixels f32 [B, C, H, W], or u8 [B, H, W, C] (frames as decoded: the values 0..255, normalisation left to the
  // weights that follow) -> [B, (H/P)*(W/P), C*P*P], each patch's values in (c, row, col) order.
  TensorId patchify(const std::string& name, TensorId pixels, int patch);
  TensorId pixel_shuffle(const std::string& name, TensorId x, int scale);
  TensorId get_rows(const std::string& name, TensorId table, TensorId ids);
  TensorId scatter_rows(const std::string& name, TensorId base, TensorId src, TensorId idx);
  // The same into `dst`'s memory (e.g. a whole KV-cache layer, with base a leaf of that memory: in place).
  TensorId scatter_rows_into(const std::string& name, TensorId base, TensorId src, TensorId idx, const Tensor& dst);
  TensorId rows(const std::string& name, TensorId x, int64_t r0, int64_t r1);
  // Columns [c0, c1) of x [..., C] -> [..., c1 - c0] (a view when is_view(), else a copy).
  TensorId cols(const std::string& name, TensorId x, int64_t c0, int64_t c1);
  // Copy x into `dst`'s memory (e.g. a slice of the KV cache); returns the node whose output is dst.
  TensorId copy_into(const std::string& name, TensorId x, const Tensor& dst);
  // Reinterpret shape (no data movement: implemented as a view by the executor).
  TensorId reshape(const std::string& name, TensorId x, Shape s);
  // x [B, R, C] (or [R, C]) -> [B, C] ([1, C]): mean over the R rows of each batch element.
  TensorId mean_rows(const std::string& name, TensorId x);
  TensorId sigmoid(const std::string& name, TensorId x);
  TensorId attn_score(const std::string& name, TensorId q, TensorId k, int n_heads, int n_kv_heads, int head_dim,
                      float scale);
  TensorId top_k(const std::string& name, TensorId score, int64_t k);
  // x [B, n] f32 -> [B] i32 (see kArgmax).
  TensorId argmax(const std::string& name, TensorId x);

  void mark_output(TensorId id) { nodes[static_cast<size_t>(id)].keep = true; }

  // First error hit while building (ok if none).
  const Status& status() const { return status_; }

 private:
  TensorId push(Node n);
  TensorId fail(const std::string& msg);
  Status status_;
};

// "v.blk.3.attn_out" style names.
std::string layer_name(const char* prefix, int layer, const char* what);

}  // namespace ev
