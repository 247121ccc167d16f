// The plain reference implementation of every graph op: single-threaded loops over f32 arrays with double
// accumulation. It is the test oracle for the optimised backends and the fallback for ops they do not support,
// so it favours readability and exact PyTorch semantics over speed. Shape conventions are those of
// src/graph/graph.h; each function states the shapes it expects.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "graph/graph.h"

namespace ev::ref {

// ---- node validation (shared by every backend) -------------------------------------------------------------

// Checks that `in` and `out` agree with the conventions of graph.h for node `n` (input count, dtypes, shapes,
// parameters). Backends call this at the top of compute() so that a hand-made or corrupt node gives a clear
// error instead of an out-of-bounds access.
Status check_node(const Node& n, const std::vector<const Tensor*>& in, const Tensor& out);

// An f32 view of a float tensor (f32, bf16 or f16): borrows f32 data, widens the others into an owned copy.
class F32Data {
 public:
  explicit F32Data(const Tensor& t);
  const float* data() const { return p_; }
  int64_t size() const { return n_; }

 private:
  const float* p_ = nullptr;
  int64_t n_ = 0;
  std::vector<float> owned_;
};

// True for the dtypes that F32Data accepts.
bool is_float_dtype(DType t);

// ---- ops -----------------------------------------------------------------------------------------------------

// y[M, N] = x[M, K] * w[N, K]^T + b[N] (b may be null).
void linear(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* b, float* y);

// y[i] = a[i] + b[i % nb] for i < na (nb divides na): the cyclic broadcast of graph.h.
void add(const float* a, int64_t na, const float* b, int64_t nb, float* y);
void mul(const float* a, int64_t na, const float* b, int64_t nb, float* y);

// torch.nn.LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * w + b, biased variance.
// x, y: [rows, C]; w, b: [C].
void layer_norm(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, float* y);

// LlamaRMSNorm (transformers/models/llama/modeling_llama.py): w * (x * rsqrt(mean(x^2) + eps)).
// x, y: [rows, C]; w: [C].
void rms_norm(const float* x, int64_t rows, int64_t C, const float* w, float eps, float* y);

// gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
float gelu_tanh(float x);
// 1 / (1 + e^-x)
void sigmoid(const float* x, int64_t n, float* y);
// y[b, c] = mean over r of x[b, r, c]  (x [B, R, C], y [B, C]); double accumulation.
void mean_rows(const float* x, int64_t B, int64_t R, int64_t C, float* y);
void gelu_tanh(const float* x, int64_t n, float* y);
// SiLU: x * sigmoid(x).
float silu(float x);
void silu(const float* x, int64_t n, float* y);
// LlamaMLP's act_fn(gate) * up.
void swiglu(const float* gate, const float* up, int64_t n, float* y);

struct AttentionDims {
  int64_t B = 1, T = 1, S = 1;  // batch, queries, keys
  int Hq = 1, Hkv = 1, D = 1;   // query heads, key/value heads (Hq % Hkv == 0), head dim
  float scale = 1.f;
  bool causal = false;
  int64_t q_offset = 0;  // query i sits at key position q_offset + i
  const int32_t* positions = nullptr;  // [T] or nullptr: query i sits at key position positions[i] instead
  bool per_batch = false;              // positions is [B*T]: query i of batch element b at positions[b*T + i]
};
Status check_attention_dims(const AttentionDims& a);
// The dims of a kAttention or kAttnScore node with inputs q [B, T, Hq*D] and k [B, S, Hkv*D].
AttentionDims attention_dims(const Node& n, const Tensor& q, const Tensor& k);

// out = softmax(q k^T * scale [+ causal mask]) v per (batch, query head); query head h reads kv head h / (Hq/Hkv)
// (transformers' repeat_kv). q, out: [B, T, Hq*D]; k, v: [B, S, Hkv*D]. Causal: query i sees keys
// 0..min(S-1, q_offset+i). A query that sees no key (only possible when S == 0) gets zeros.
void attention(const AttentionDims& a, const float* q, const float* k, const float* v, float* out);

// Token importance (graph.h kAttnScore): score[b, j] = mean over query heads h and queries i of
// softmax_j(scale q_i . k_j) (no mask; T > 0). q: [B, T, Hq*D]; k: [B, S, Hkv*D]; score: [B, S].
void attn_score(const AttentionDims& a, const float* q, const float* k, float* score);

// graph.h kTopK: for each of the B rows of score [B, n], the flat indices b*n + j of its k highest entries
// (ties: lower j first; NaN ranks lowest), written in ascending j to idx [B*k].
void top_k_rows(const float* score, int64_t B, int64_t n, int64_t k, int32_t* idx);

// graph.h kArgmax: for each row of x [B, n], the column of its highest value (lowest on ties, NaN skipped,
// -1 when the whole row is NaN), as text::argmax picks greedy tokens.
void argmax_rows(const float* x, int64_t B, int64_t n, int32_t* idx);

// RoPE tables as transformers' LlamaRotaryEmbedding computes them in float32 (default rope type):
// inv_freq[i] = 1 / theta^(2i/D) (i < D/2), angle = float(pos) * inv_freq[i] rounded to f32, then cos/sin of
// that f32 angle. cos_out, sin_out: [D/2] (the second half of HF's cat(freqs, freqs) repeats the first).
void rope_inv_freq(int D, float theta, float* inv_freq);
void rope_cos_sin(const float* inv_freq, int D, int64_t pos, float* cos_out, float* sin_out);

// apply_rotary_pos_emb with rotate_half (HF Llama): for each head, pairs (i, i + D/2):
//   y[i] = x[i] cos - x[i+D/2] sin,  y[i+D/2] = x[i+D/2] cos + x[i] sin,  position of token t = pos0 + t.
// x, y: [B, T, H*D].
// positions (optional, [T]): the position of token t is positions[t] instead of pos0 + t.
void rope(const float* x, int64_t B, int64_t T, int H, int D, float theta, int64_t pos0, float* y,
          const int32_t* positions = nullptr, bool per_batch = false);

// Conv2d-weight order patch extraction: px [B, C, H, W] -> y [B, (H/P)*(W/P), C*P*P], patch index
// py*(W/P) + px, element (c, r, col) at c*P*P + r*P + col.
void patchify(const float* px, int64_t B, int64_t C, int64_t H, int64_t W, int P, float* y);
// u8 frames [B, H, W, C] -> [B, N, C*P*P] (graph.h patchify).
void patchify_u8_hwc(const uint8_t* px, int64_t B, int64_t H, int64_t W, int64_t C, int P, float* y);

// Idefics3Connector.pixel_shuffle (transformers/models/idefics3/modeling_idefics3.py): x [B, S, E] with
// S = h*h -> y [B, S/s^2, E*s^2], y[b, i*(h/s) + j, (ri*s + rj)*E + e] = x[b, (i*s + ri)*h + j*s + rj, e].
void pixel_shuffle(const float* x, int64_t B, int64_t S, int64_t E, int s, float* y);

}  // namespace ev::ref
