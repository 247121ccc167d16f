// Attention kernels of the CUDA backend (see cuda_kernels.h).
//
// flash_kernel: flash-attention style, one block of 4 warps per (64 queries, head, batch element). Q, K and V tiles
// are converted to bf16 in shared memory; S = Q K^T and O += P V run on the tensor cores (WMMA 16x16x16, f32
// accumulate); the softmax is online, in f32, in the log2 domain. Each query row's log-sum-exp is written when
// asked for: token pruning's importance score (attn_score_from_lse) then needs only Q K^T again, not a second
// softmax pass.
//
// rows_kernel: one block per (query, head, batch element), 4 warps splitting the keys, each with its own online
// softmax, merged at the end. It serves decode (a few queries against a long cache) and any head_dim up to 256.
#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace ev::cuda {
namespace {

using namespace nvcuda;

constexpr int kBQ = 64, kBK = 64;
constexpr float kLog2e = 1.4426950408889634f;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int D>
struct FlashLayout {
  static constexpr int LDQ = D + 8;    // bf16 elements per row of Q, K, V tiles
  static constexpr int LDS = kBK + 4;  // f32 per row of S
  static constexpr int LDP = kBK + 8;  // bf16 per row of P
  static constexpr int LDO = D + 4;    // f32 per row of O
  static constexpr size_t kQ = static_cast<size_t>(kBQ) * LDQ * 2;
  static constexpr size_t kK = static_cast<size_t>(kBK) * LDQ * 2;
  static constexpr size_t kS = static_cast<size_t>(kBQ) * LDS * 4;
  static constexpr size_t kP = static_cast<size_t>(kBQ) * LDP * 2;
  static constexpr size_t kO = static_cast<size_t>(kBQ) * LDO * 4;
  static constexpr size_t bytes = kQ + 2 * kK + kS + kP + kO + 2 * kBQ * 4;
  static constexpr size_t score_bytes = kQ + kK + kS + kBQ * 4;
};

// Loads rows [r0, r0 + 64) of a [rows, ld] f32 matrix (columns col0 .. col0 + D) into bf16 shared memory, zeros
// past `rows`.
template <int D>
__device__ inline void load_tile_bf16(const float* __restrict__ src, int64_t r0, int64_t rows, int64_t ld,
                                      __nv_bfloat16* dst) {
  constexpr int kVec = D / 4;
  for (int e = threadIdx.x; e < 64 * kVec; e += blockDim.x) {
    const int r = e / kVec, c4 = e % kVec;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r0 + r < rows) v = *reinterpret_cast<const float4*>(src + (r0 + r) * ld + c4 * 4);
    __nv_bfloat162* d2 = reinterpret_cast<__nv_bfloat162*>(dst + r * FlashLayout<D>::LDQ + c4 * 4);
    d2[0] = __floats2bfloat162_rn(v.x, v.y);
    d2[1] = __floats2bfloat162_rn(v.z, v.w);
  }
}

// S_w = Q_w K^T for warp w's 16 query rows against the 64 keys of the tile (WMMA, bf16 in, f32 out to Ss).
template <int D>
__device__ inline void qk_tile_wmma(const __nv_bfloat16* Qs, const __nv_bfloat16* Ks, float* Ss, int warp) {
  using L = FlashLayout<D>;
#pragma unroll
  for (int c = 0; c < kBK / 16; ++c) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.f);
#pragma unroll
    for (int d = 0; d < D / 16; ++d) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, Qs + 16 * warp * L::LDQ + d * 16, L::LDQ);
      wmma::load_matrix_sync(fb, Ks + 16 * c * L::LDQ + d * 16, L::LDQ);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(Ss + 16 * warp * L::LDS + 16 * c, acc, L::LDS, wmma::mem_row_major);
  }
}

template <int D>
__global__ void __launch_bounds__(128) flash_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                    const float* __restrict__ v, int64_t T, int64_t S, int Hq,
                                                    int Hkv, float scale_log2, int causal, int64_t q_offset,
                                                    float* __restrict__ out, float* __restrict__ lse) {
  using L = FlashLayout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ + L::kK);
  float* Ss = reinterpret_cast<float*>(smem + L::kQ + 2 * L::kK);
  __nv_bfloat16* Ps = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ + 2 * L::kK + L::kS);
  float* Os = reinterpret_cast<float*>(smem + L::kQ + 2 * L::kK + L::kS + L::kP);
  float* Ms = Os + kBQ * L::LDO;
  float* Ls = Ms + kBQ;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBQ;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int64_t qld = static_cast<int64_t>(Hq) * D, kld = static_cast<int64_t>(Hkv) * D;
  const float* qb = q + b * T * qld + static_cast<int64_t>(h) * D;
  const float* kb = k + b * S * kld + static_cast<int64_t>(hk) * D;
  const float* vb = v + b * S * kld + static_cast<int64_t>(hk) * D;

  load_tile_bf16<D>(qb, i0, T, qld, Qs);
  for (int e = tid; e < kBQ * L::LDO; e += blockDim.x) Os[e] = 0.f;
  if (tid < kBQ) {
    Ms[tid] = -INFINITY;
    Ls[tid] = 0.f;
  }
  const int64_t last_row = (i0 + kBQ < T ? i0 + kBQ : T) - 1;
  int64_t n_keys = S;
  if (causal && q_offset + last_row + 1 < S) n_keys = q_offset + last_row + 1;
  __syncthreads();

  const int r = 16 * warp + (lane >> 1), half = lane & 1;  // the row (and half of it) this lane's softmax owns
  const int64_t i = i0 + r;
  int64_t lim = causal ? q_offset + i + 1 : S;
  if (lim > S) lim = S;

  for (int64_t j0 = 0; j0 < n_keys; j0 += kBK) {
    load_tile_bf16<D>(kb, j0, S, kld, Ks);
    load_tile_bf16<D>(vb, j0, S, kld, Vs);
    __syncthreads();
    // S_w = Q_w K^T for this warp's 16 rows.
    qk_tile_wmma<D>(Qs, Ks, Ss, warp);
    __syncwarp();
    // Online softmax of row r, columns half*32 .. half*32+31.
    float vals[32];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int64_t j = j0 + half * 32 + c;
      float sv = Ss[r * L::LDS + half * 32 + c] * scale_log2;
      if (j >= lim) sv = -INFINITY;
      vals[c] = sv;
      mx = fmaxf(mx, sv);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_old = Ms[r];
    const float m_new = fmaxf(m_old, mx);
    const float alpha = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float p = m_new == -INFINITY ? 0.f : exp2f(vals[c] - m_new);
      sum += p;
      Ps[r * L::LDP + half * 32 + c] = __float2bfloat16_rn(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
#pragma unroll 8
    for (int c = 0; c < D / 2; ++c) Os[r * L::LDO + half * (D / 2) + c] *= alpha;
    __syncwarp();
    if (half == 0) {
      Ms[r] = m_new;
      Ls[r] = Ls[r] * alpha + sum;
    }
    __syncwarp();
    // O_w += P_w V.
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + 16 * warp * L::LDO + 16 * c, L::LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, Ps + 16 * warp * L::LDP + 16 * kk, L::LDP);
        wmma::load_matrix_sync(fb, Vs + 16 * kk * L::LDQ + 16 * c, L::LDQ);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Os + 16 * warp * L::LDO + 16 * c, acc, L::LDO, wmma::mem_row_major);
    }
    __syncthreads();  // the next tile overwrites Ks / Vs
  }
  __syncwarp();
  if (i < T) {
    const float l = Ls[r];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float* orow = out + (b * T + i) * qld + static_cast<int64_t>(h) * D + half * (D / 2);
#pragma unroll 8
    for (int c = 0; c < D / 2; ++c) orow[c] = Os[r * L::LDO + half * (D / 2) + c] * inv;
    if (lse != nullptr && half == 0)
      lse[(b * Hq + h) * T + i] = l > 0.f ? Ms[r] + log2f(l) : -INFINITY;
  }
}

// score[b, j] += sum over this block's 64 query rows of exp2(s_ij - lse_i) / (Hq * T).
template <int D>
__global__ void __launch_bounds__(128) score_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                    const float* __restrict__ lse, int64_t T, int64_t S, int Hq,
                                                    int Hkv, float scale_log2, float norm, float* __restrict__ score) {
  using L = FlashLayout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ);
  float* Ss = reinterpret_cast<float*>(smem + L::kQ + L::kK);
  float* Lr = reinterpret_cast<float*>(smem + L::kQ + L::kK + L::kS);
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBQ;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int64_t qld = static_cast<int64_t>(Hq) * D, kld = static_cast<int64_t>(Hkv) * D;
  load_tile_bf16<D>(q + b * T * qld + static_cast<int64_t>(h) * D, i0, T, qld, Qs);
  if (tid < kBQ) Lr[tid] = i0 + tid < T ? lse[(b * Hq + h) * T + i0 + tid] : INFINITY;  // past T: weight 0
  for (int64_t j0 = 0; j0 < S; j0 += kBK) {
    load_tile_bf16<D>(k + b * S * kld + static_cast<int64_t>(hk) * D, j0, S, kld, Ks);
    __syncthreads();
    qk_tile_wmma<D>(Qs, Ks, Ss, warp);
    __syncthreads();
    // 128 threads: column tid % 64, rows (tid / 64) * 32 .. +32.
    const int col = tid & 63, rh = tid >> 6;
    float sum = 0.f;
#pragma unroll 8
    for (int rr = 0; rr < 32; ++rr) {
      const int row = rh * 32 + rr;
      sum += exp2f(Ss[row * L::LDS + col] * scale_log2 - Lr[row]);
    }
    if (j0 + col < S) atomicAdd(score + b * S + j0 + col, sum * norm);
    __syncthreads();
  }
}

// Decode attention (a few queries against a long cache): one block of 128 threads per (query, head, batch
// element). The scores of all keys are computed in parallel (one key per thread, each K row read with 16-byte
// loads, every load independent), kept in shared memory, softmaxed by the block, and P V summed with threads
// along the head dimension (coalesced V rows). The split-key kernel below is latency-bound on the same work: its
// online softmax makes every key wait for the previous one.
constexpr int kDecodeMaxKeys = 8192;

constexpr int kDecodeThreads = 512;  // 16 warps: the P V sums split the keys 8 ways for head_dim 64

__device__ inline float block_reduce_dec(float v, float* red, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    const float t = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, t) : v + t;
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kDecodeThreads / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kDecodeThreads) decode_attn_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                          const float* __restrict__ v, int64_t T, int64_t S, int Hq,
                                                          int Hkv, int D, float scale_log2, int causal,
                                                          int64_t q_offset, float* __restrict__ out,
                                                          float* __restrict__ lse, const int32_t* __restrict__ positions,
                                                          int per_batch) {
  pdl_enter();
  extern __shared__ float dsm[];
  float* qs = dsm;                 // [D]
  float* sc = dsm + 256;           // [n_keys]
  __shared__ float red[kDecodeThreads / 32];
  __shared__ float part[kDecodeThreads];
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int64_t qld = static_cast<int64_t>(Hq) * D, kld = static_cast<int64_t>(Hkv) * D;
  const float* qr = q + (b * T + i) * qld + static_cast<int64_t>(h) * D;
  for (int d = threadIdx.x; d < D; d += kDecodeThreads) qs[d] = qr[d];
  const int64_t qpos = positions ? static_cast<int64_t>(positions[per_batch ? b * T + i : i]) : q_offset + i;
  int64_t n_keys = S;
  if (causal && qpos + 1 < S) n_keys = qpos + 1 < 0 ? 0 : qpos + 1;
  __syncthreads();
  const float* kb = k + b * S * kld + static_cast<int64_t>(hk) * D;
  const float* vb = v + b * S * kld + static_cast<int64_t>(hk) * D;
  const bool vec = (D % 4 == 0) && (reinterpret_cast<uintptr_t>(kb) % 16 == 0) && (kld % 4 == 0);
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n_keys; j += kDecodeThreads) {
    const float* kr = kb + j * kld;
    float dot = 0.f;
    if (vec) {
      for (int d = 0; d < D; d += 4) {
        const float4 kk = __ldg(reinterpret_cast<const float4*>(kr + d));
        dot += qs[d] * kk.x + qs[d + 1] * kk.y + qs[d + 2] * kk.z + qs[d + 3] * kk.w;
      }
    } else {
      for (int d = 0; d < D; ++d) dot += qs[d] * kr[d];
    }
    dot *= scale_log2;
    sc[j] = dot;
    mx = fmaxf(mx, dot);
  }
  mx = block_reduce_dec(mx, red, true);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < n_keys; j += kDecodeThreads) {
    const float p = exp2f(sc[j] - mx);
    sc[j] = p;
    sum += p;
  }
  sum = block_reduce_dec(sum, red, false);
  // P V: thread (d, group) sums keys j = group, group + groups, ... for column d; the groups are then added.
  const int dpt = D <= 32 ? 32 : D <= 64 ? 64 : 128;
  const int groups = kDecodeThreads / dpt;
  const int d0 = threadIdx.x % dpt, grp = threadIdx.x / dpt;
  for (int base = 0; base < D; base += dpt) {  // the same trip count in every thread (barriers inside)
    const int d = base + d0;
    const bool act = d < D;
    float acc = 0.f;
    if (act) {  // four independent sums: the V loads of consecutive keys overlap instead of waiting in turn
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
      int64_t j = grp;
      const int64_t step = groups;
      for (; j + 3 * step < n_keys; j += 4 * step) {
        a0 += sc[j] * __ldg(vb + j * kld + d);
        a1 += sc[j + step] * __ldg(vb + (j + step) * kld + d);
        a2 += sc[j + 2 * step] * __ldg(vb + (j + 2 * step) * kld + d);
        a3 += sc[j + 3 * step] * __ldg(vb + (j + 3 * step) * kld + d);
      }
      for (; j < n_keys; j += step) a0 += sc[j] * __ldg(vb + j * kld + d);
      acc = (a0 + a1) + (a2 + a3);
    }
    part[grp * dpt + d0] = acc;
    __syncthreads();
    if (grp == 0 && act) {
      float o = acc;
      for (int g2 = 1; g2 < groups; ++g2) o += part[g2 * dpt + d0];
      out[(b * T + i) * qld + static_cast<int64_t>(h) * D + d] = n_keys > 0 ? o / sum : 0.f;
    }
    __syncthreads();
  }
  if (lse != nullptr && threadIdx.x == 0)
    lse[(b * Hq + h) * T + i] = n_keys > 0 && sum > 0.f ? mx + log2f(sum) : -INFINITY;
}

template <int U>
__global__ void __launch_bounds__(128) rows_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                   const float* __restrict__ v, int64_t T, int64_t S, int Hq, int Hkv,
                                                   int D, float scale_log2, int causal, int64_t q_offset,
                                                   float* __restrict__ out, float* __restrict__ lse,
                                                   const int32_t* __restrict__ positions, int per_batch) {
  __shared__ float sm_m[4], sm_l[4];
  __shared__ float sm_acc[4][U * 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int64_t qld = static_cast<int64_t>(Hq) * D, kld = static_cast<int64_t>(Hkv) * D;
  const float* qr = q + (b * T + i) * qld + static_cast<int64_t>(h) * D;
  float qv[U], acc[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int d = lane + 32 * u;
    qv[u] = d < D ? qr[d] : 0.f;
    acc[u] = 0.f;
  }
  const int64_t qpos = positions ? static_cast<int64_t>(positions[per_batch ? b * T + i : i]) : q_offset + i;
  int64_t n_keys = S;
  if (causal && qpos + 1 < S) n_keys = qpos + 1 < 0 ? 0 : qpos + 1;
  float m = -INFINITY, l = 0.f;
  for (int64_t j = warp; j < n_keys; j += 4) {
    const float* kr = k + (b * S + j) * kld + static_cast<int64_t>(hk) * D;
    const float* vr = v + (b * S + j) * kld + static_cast<int64_t>(hk) * D;
    float dot = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int d = lane + 32 * u;
      if (d < D) dot += qv[u] * kr[d];
    }
    dot = warp_sum(dot) * scale_log2;
    const float m_new = fmaxf(m, dot);
    const float alpha = m == -INFINITY ? 0.f : exp2f(m - m_new);
    const float p = exp2f(dot - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int d = lane + 32 * u;
      acc[u] = acc[u] * alpha + (d < D ? p * vr[d] : 0.f);
    }
    m = m_new;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int u = 0; u < U; ++u) sm_acc[warp][lane + 32 * u] = acc[u];
  __syncthreads();
  if (warp != 0) return;
  float M = -INFINITY;
  for (int w = 0; w < 4; ++w) M = fmaxf(M, sm_m[w]);
  float Lsum = 0.f, f[4];
  for (int w = 0; w < 4; ++w) {
    f[w] = sm_m[w] == -INFINITY ? 0.f : exp2f(sm_m[w] - M);
    Lsum += sm_l[w] * f[w];
  }
  const float inv = Lsum > 0.f ? 1.f / Lsum : 0.f;
  float* orow = out + (b * T + i) * qld + static_cast<int64_t>(h) * D;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int d = lane + 32 * u;
    if (d < D) {
      float o = 0.f;
      for (int w = 0; w < 4; ++w) o += sm_acc[w][d] * f[w];
      orow[d] = o * inv;
    }
  }
  if (lse != nullptr && lane == 0) lse[(b * Hq + h) * T + i] = Lsum > 0.f ? M + log2f(Lsum) : -INFINITY;
}

// ---- flash2: the tensor-core path with everything in registers ----------------------------------------------
// One block of 4 warps per (64 queries, head, batch element); each warp owns 16 query rows. q, k, v are bf16 copies
// (same layout as the f32 tensors). K/V tiles of 64 keys stream through shared memory with cp.async, two stages
// deep. S = Q K^T and O += P V are mma.sync m16n8k16 (bf16 in, f32 accumulate) with the operands loaded by
// ldmatrix; the scores, the online softmax (log2 domain) and O stay in registers; P goes from the S accumulators
// straight into A fragments (the accumulator and A layouts coincide).

__device__ inline uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void cp_async16(void* dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;  // 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ inline void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
__device__ inline void ldsm_x4_t(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
__device__ inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// 2^x on the special-function unit (flush-to-zero): what exp2f compiles to without its range handling.
__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// ---- the online softmax and the output of flash2 and flash3 -------------------------------------------------
// Both keep a warp's 16 query rows in the mma accumulator layout: each thread holds two rows (a: lane / 4, b: that
// + 8) of NS n8 tiles of scores, s[nt][0..1] row a, s[nt][2..3] row b, at keys nt * 8 + (lane % 4) * 2 + {0, 1}.

// One key tile (keys j0 ..) of the online softmax in the log2 domain: s holds raw scores on entry and the
// probabilities on return; m (row max), l (row sum) are updated and al gets the factors that rescale O. lim_a /
// lim_b: keys allowed to rows a / b (causal mask, key count); lim_lo: keys every row of the warp may see.
template <int NS>
__device__ inline void online_softmax(float (&s)[NS][4], int64_t j0, int64_t lim_a, int64_t lim_b, int64_t lim_lo,
                                      float scale_log2, int lc, float& m_a, float& m_b, float& l_a, float& l_b,
                                      float& al_a, float& al_b) {
  // A tile that every row of the warp sees in full (all tiles of a non-causal attention over whole tiles) needs no
  // mask: its max is taken on the raw scores and the scaling folds into the exponent's FMA.
  const bool full = scale_log2 > 0.f && j0 + NS * 8 <= lim_lo;
  float mx_a = -INFINITY, mx_b = -INFINITY;
  if (full) {
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
      mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
    }
    mx_a *= scale_log2;
    mx_b *= scale_log2;
  } else {
    const int ja = static_cast<int>(lim_a - j0), jb = static_cast<int>(lim_b - j0);  // keys allowed in this tile
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = nt * 8 + lc + e;
        s[nt][e] = j < ja ? s[nt][e] * scale_log2 : -INFINITY;  // scaled here; the exponent subtracts only
        s[nt][2 + e] = j < jb ? s[nt][2 + e] * scale_log2 : -INFINITY;
        mx_a = fmaxf(mx_a, s[nt][e]);
        mx_b = fmaxf(mx_b, s[nt][2 + e]);
      }
    }
  }
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
  const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
  // A row with no allowed key yet keeps max -inf: subtracting 0 instead makes every p (and alpha) 0.
  const float mu_a = mn_a == -INFINITY ? 0.f : mn_a, mu_b = mn_b == -INFINITY ? 0.f : mn_b;
  al_a = fast_exp2(m_a - mu_a);
  al_b = fast_exp2(m_b - mu_b);
  float rs_a = 0.f, rs_b = 0.f;
  const float sl = full ? scale_log2 : 1.f;  // masked tiles hold scaled scores (-inf where masked: p = 0)
#pragma unroll
  for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[nt][e] = fast_exp2(fmaf(s[nt][e], sl, -mu_a));
      s[nt][2 + e] = fast_exp2(fmaf(s[nt][2 + e], sl, -mu_b));
      rs_a += s[nt][e];
      rs_b += s[nt][2 + e];
    }
  }
  rs_a += __shfl_xor_sync(0xffffffffu, rs_a, 1);
  rs_a += __shfl_xor_sync(0xffffffffu, rs_a, 2);
  rs_b += __shfl_xor_sync(0xffffffffu, rs_b, 1);
  rs_b += __shfl_xor_sync(0xffffffffu, rs_b, 2);
  l_a = l_a * al_a + rs_a;
  l_b = l_b * al_b + rs_b;
  m_a = mn_a;
  m_b = mn_b;
}

// The probabilities of keys 16 kk .. 16 kk + 15 as the bf16 A fragment of the P V MMA (the accumulator and A
// layouts coincide).
template <int NS>
__device__ inline void probs_to_a(const float (&s)[NS][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
  a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
  a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

template <int NT>
__device__ inline void rescale_o(float (&o)[NT][4], float al_a, float al_b) {
#pragma unroll
  for (int dt = 0; dt < NT; ++dt) {
    o[dt][0] *= al_a;
    o[dt][1] *= al_a;
    o[dt][2] *= al_b;
    o[dt][3] *= al_b;
  }
}

// O / l of rows a and b (head h of batch element b) into out, f32 or bf16 (out16: only a bf16 GEMM reads it, the
// executor's fuse_bf16); lse (nullable) gets each row's log2-domain log-sum-exp.
template <int NT>
__device__ inline void store_rows(const float (&o)[NT][4], int64_t row_a, int64_t T, int64_t b, int h, int Hq,
                                  int lc, float m_a, float m_b, float l_a, float l_b, void* out_v, int out16,
                                  float* lse) {
  constexpr int D = NT * 8;
  const int64_t qld = static_cast<int64_t>(Hq) * D;
  for (int half = 0; half < 2; ++half) {
    const int64_t row = row_a + 8 * half;
    if (row >= T) continue;
    const float l = half ? l_b : l_a, m = half ? m_b : m_a;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t off = (b * T + row) * qld + static_cast<int64_t>(h) * D;
    if (out16) {
      uint32_t* orow = reinterpret_cast<uint32_t*>(static_cast<__nv_bfloat16*>(out_v) + off);
#pragma unroll
      for (int dt = 0; dt < NT; ++dt) orow[(dt * 8 + lc) / 2] = pack_bf16(o[dt][2 * half] * inv, o[dt][2 * half + 1] * inv);
    } else {
      float* orow = static_cast<float*>(out_v) + off;
#pragma unroll
      for (int dt = 0; dt < NT; ++dt)
        *reinterpret_cast<float2*>(orow + dt * 8 + lc) = make_float2(o[dt][2 * half] * inv, o[dt][2 * half + 1] * inv);
    }
    if (lse != nullptr && lc == 0) lse[(b * Hq + h) * T + row] = l > 0.f ? m + log2f(l) : -INFINITY;
  }
}

template <int D, int W = 4>
struct Flash2Layout {
  static constexpr int LD = D + 8;  // bf16 per smem row: 16-byte padding keeps ldmatrix free of bank conflicts
  static constexpr int BQ = 16 * W;  // query rows per block: 16 per warp
  static constexpr size_t tile = static_cast<size_t>(64) * LD * 2;
  static constexpr size_t bytes = static_cast<size_t>(BQ) * LD * 2 + tile * 4;  // Q, K x 2 stages, V x 2 stages
};

template <int D, int NROWS>
__device__ inline void load_rows_async(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t r0, int64_t rows,
                                       int64_t ld) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < NROWS * CH; c += blockDim.x) {
    const int r = c / CH, cc = c % CH;
    const bool ok = r0 + r < rows;
    const __nv_bfloat16* g = ok ? src + (r0 + r) * ld + cc * 8 : src;
    cp_async16(dst + r * (D + 8) + cc * 8, g, ok);
  }
}

// W warps (16 query rows each) share every K/V tile: 8 warps halve the tile traffic per query when the grid has
// blocks enough to fill the GPU; 4 keep more blocks for small grids (one tile of 1024 tokens).
template <int D, int W>
__global__ void __launch_bounds__(32 * W) flash2_kernel(const __nv_bfloat16* __restrict__ q,
                                                     const __nv_bfloat16* __restrict__ k,
                                                     const __nv_bfloat16* __restrict__ v, int64_t T, int64_t S,
                                                     int Hq, int Hkv, float scale_log2, int causal, int64_t q_offset,
                                                     void* __restrict__ out_v, int out16, float* __restrict__ lse) {
  constexpr int LD = Flash2Layout<D, W>::LD;
  constexpr int BQ = Flash2Layout<D, W>::BQ;
  constexpr int NT = D / 8;  // output n-tiles
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = Qs + BQ * LD;
  __nv_bfloat16* Vs = Ks + 2 * 64 * LD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BQ;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int64_t qld = static_cast<int64_t>(Hq) * D, kld = static_cast<int64_t>(Hkv) * D;
  const __nv_bfloat16* qb = q + b * T * qld + static_cast<int64_t>(h) * D;
  const __nv_bfloat16* kb = k + b * S * kld + static_cast<int64_t>(hk) * D;
  const __nv_bfloat16* vb = v + b * S * kld + static_cast<int64_t>(hk) * D;

  const int64_t last_row = (i0 + BQ < T ? i0 + BQ : T) - 1;
  int64_t n_keys = S;
  if (causal && q_offset + last_row + 1 < S) n_keys = q_offset + last_row + 1;
  const int n_tiles = static_cast<int>((n_keys + 63) / 64);

  load_rows_async<D, BQ>(Qs, qb, i0, T, qld);
  if (n_tiles > 0) {
    load_rows_async<D, 64>(Ks, kb, 0, S, kld);
    load_rows_async<D, 64>(Vs, vb, 0, S, kld);
  }
  cp_async_commit();

  const int lr = lane >> 2, lc = (lane & 3) * 2, mi = lane >> 3;
  const int64_t row_a = i0 + 16 * warp + lr, row_b = row_a + 8;
  int64_t lim_a = causal ? q_offset + row_a + 1 : S, lim_b = causal ? q_offset + row_b + 1 : S;
  if (lim_a > S) lim_a = S;
  if (lim_b > S) lim_b = S;
  // Keys every row of this warp may see (its first row's limit): tiles below it need no mask.
  int64_t lim_lo = causal ? q_offset + i0 + 16 * warp + 1 : S;
  if (lim_lo > S) lim_lo = S;

  uint32_t qf[D / 16][4];
  float o[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

  for (int t = 0; t < n_tiles; ++t) {
    const int st = t & 1;
    if (t + 1 < n_tiles) {
      load_rows_async<D, 64>(Ks + (st ^ 1) * 64 * LD, kb, static_cast<int64_t>(t + 1) * 64, S, kld);
      load_rows_async<D, 64>(Vs + (st ^ 1) * 64 * LD, vb, static_cast<int64_t>(t + 1) * 64, S, kld);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (t == 0) {
#pragma unroll
      for (int ds = 0; ds < D / 16; ++ds)
        ldsm_x4(qf[ds][0], qf[ds][1], qf[ds][2], qf[ds][3],
                Qs + (16 * warp + (lane & 7) + (mi & 1) * 8) * LD + ds * 16 + (mi >> 1) * 8);
    }
    const __nv_bfloat16* Kt = Ks + st * 64 * LD;
    const __nv_bfloat16* Vt = Vs + st * 64 * LD;
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int ds = 0; ds < D / 16; ++ds) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, Kt + (np * 16 + (lane & 7) + (mi >> 1) * 8) * LD + ds * 16 + (mi & 1) * 8);
        mma16816(s[2 * np], qf[ds], b0, b1);
        mma16816(s[2 * np + 1], qf[ds], b2, b3);
      }
    }
    float al_a, al_b;
    online_softmax(s, static_cast<int64_t>(t) * 64, lim_a, lim_b, lim_lo, scale_log2, lc, m_a, m_b, l_a, l_b, al_a,
                   al_b);
    rescale_o(o, al_a, al_b);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      probs_to_a(s, kk, a);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(b0, b1, b2, b3, Vt + (kk * 16 + (lane & 7) + (mi & 1) * 8) * LD + dp * 16 + (mi >> 1) * 8);
        mma16816(o[2 * dp], a, b0, b1);
        mma16816(o[2 * dp + 1], a, b2, b3);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();
  store_rows(o, row_a, T, b, h, Hq, lc, m_a, m_b, l_a, l_b, out_v, out16, lse);
}

// ---- flash3: the Hopper path (sm_90a), wgmma ------------------------------------------------------------------
// One block of NWG warpgroups (4 warps each, 64 query rows per warpgroup) per (64 * NWG queries, head, batch
// element), head_dim 64. Q and K/V tiles of BN = 128 keys sit in shared memory in the 128-byte-swizzled layout the
// warpgroup MMA reads through descriptors: S = Q K^T is wgmma with both operands in shared memory, O += P V takes
// P from registers (the S accumulator layout is the A fragment layout) and V "N-major" (transposed by the
// instruction). The MMAs are asynchronous, so each warpgroup overlaps them with its softmax: it issues S for the
// next key tile and P V for this one, then computes the next tile's softmax while P V still runs on the tensor
// cores. K/V tiles stream in two stages deep with cp.async; one block barrier per key tile.
// The online softmax, the masking and the output stores are flash2's (online_softmax, store_rows).

#if defined(EDGEVLM_CUDA_SM90A)
constexpr bool kHaveFlash3 = true;
#else
constexpr bool kHaveFlash3 = false;
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ inline uint64_t sw128_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

// 16-byte chunk c of row r of a tile whose rows are 128 bytes (64 bf16), 128-byte swizzle (tiles 1024-aligned).
__device__ inline uint32_t sw128_offset(int r, int c) { return static_cast<uint32_t>(r * 128 + ((c ^ (r & 7)) << 4)); }

template <int NROWS>
__device__ inline void load_rows_sw128(uint32_t dst, const __nv_bfloat16* src, int64_t r0, int64_t rows, int64_t ld,
                                       int tid, int nthreads) {
  for (int c = tid; c < NROWS * 8; c += nthreads) {
    const int r = c >> 3, cc = c & 7;
    const bool ok = r0 + r < rows;
    const __nv_bfloat16* g = ok ? src + (r0 + r) * ld + cc * 8 : src;
    const int n = ok ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst + sw128_offset(r, cc)), "l"(g), "r"(n));
  }
}

__device__ inline void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ inline void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of accumulator registers across a wgmma wait / issue.
template <int N>
__device__ inline void fence_acc(float (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+f"(a[i][0]), "+f"(a[i][1]), "+f"(a[i][2]), "+f"(a[i][3])::"memory");
}

#define EV_ACC4(a, i) "+f"(a[i][0]), "+f"(a[i][1]), "+f"(a[i][2]), "+f"(a[i][3])
#define EV_ACC32(a) EV_ACC4(a, 0), EV_ACC4(a, 1), EV_ACC4(a, 2), EV_ACC4(a, 3), EV_ACC4(a, 4), EV_ACC4(a, 5), \
                    EV_ACC4(a, 6), EV_ACC4(a, 7)
#define EV_ACC32_HI(a) EV_ACC4(a, 8), EV_ACC4(a, 9), EV_ACC4(a, 10), EV_ACC4(a, 11), EV_ACC4(a, 12), \
                       EV_ACC4(a, 13), EV_ACC4(a, 14), EV_ACC4(a, 15)
#define EV_R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
               "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define EV_R64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
               "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, " \
               "%41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, " \
               "%61, %62, %63}"

// d (+)= A B, m64 n128 k16, A and B from shared memory (both K-major); acc = 0 starts from zero (scale-d).
__device__ inline void wgmma_ss_n128(float (&d)[16][4], uint64_t da, uint64_t db, int acc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " EV_R64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : EV_ACC32(d), EV_ACC32_HI(d)
      : "l"(da), "l"(db), "r"(acc));
}
// d += A B, m64 n64 k16, A from registers (the mma.sync A fragment of each warp's 16 rows), B N-major in shared
// memory (transposed by the instruction).
__device__ inline void wgmma_rs_n64_t(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " EV_R32
               ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
               : EV_ACC32(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
#undef EV_ACC4
#undef EV_ACC32
#undef EV_ACC32_HI
#undef EV_R32
#undef EV_R64
#endif

template <int NWG, int BN>
struct Flash3Layout {
  static constexpr int BQ = 64 * NWG;
  static constexpr size_t q = static_cast<size_t>(BQ) * 128;  // 64 bf16 = 128 bytes per row
  static constexpr size_t kv = static_cast<size_t>(BN) * 128;
  static constexpr size_t bytes = 1024 + q + 4 * kv;  // 1024: room to align the base; Q, K x 2, V x 2
};

template <int NWG, int BN>
__global__ void __launch_bounds__(128 * NWG, 1)
    flash3_kernel(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                  const __nv_bfloat16* __restrict__ v, int64_t T, int64_t S, int Hq, int Hkv, float scale_log2,
                  int causal, int64_t q_offset, void* __restrict__ out_v, int out16, float* __restrict__ lse) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(BN == 128, "the S MMA is m64n128k16");
  constexpr int D = 64;
  constexpr int NS = BN / 8;  // n8 tiles of a score row block
  constexpr int NT = D / 8;   // n8 tiles of the output
  using L = Flash3Layout<NWG, BN>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = (smem_u32(smem) + 1023u) & ~1023u;  // the swizzle atoms need 1024-byte alignment
  const uint32_t Qs = base, Ks = base + static_cast<uint32_t>(L::q), Vs = Ks + 2 * static_cast<uint32_t>(L::kv);
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * L::BQ;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int64_t qld = static_cast<int64_t>(Hq) * D, kld = static_cast<int64_t>(Hkv) * D;
  const __nv_bfloat16* qb = q + b * T * qld + static_cast<int64_t>(h) * D;
  const __nv_bfloat16* kb = k + b * S * kld + static_cast<int64_t>(hk) * D;
  const __nv_bfloat16* vb = v + b * S * kld + static_cast<int64_t>(hk) * D;

  const int64_t last_row = (i0 + L::BQ < T ? i0 + L::BQ : T) - 1;
  int64_t n_keys = S;
  if (causal && q_offset + last_row + 1 < S) n_keys = q_offset + last_row + 1;
  const int n_tiles = static_cast<int>((n_keys + BN - 1) / BN);
  const int nth = 128 * NWG;

  // Prologue: group 0 = Q and K_0, group 1 = K_1 and V_0.
  load_rows_sw128<L::BQ>(Qs, qb, i0, T, qld, tid, nth);
  if (n_tiles > 0) load_rows_sw128<BN>(Ks, kb, 0, S, kld, tid, nth);
  cp_async_commit();
  if (n_tiles > 1) load_rows_sw128<BN>(Ks + L::kv, kb, BN, S, kld, tid, nth);
  if (n_tiles > 0) load_rows_sw128<BN>(Vs, vb, 0, S, kld, tid, nth);
  cp_async_commit();

  const int lr = lane >> 2, lc = (lane & 3) * 2;
  const int64_t row0 = i0 + 64 * wg + 16 * warp;  // this warp's first row
  const int64_t row_a = row0 + lr, row_b = row_a + 8;
  int64_t lim_a = causal ? q_offset + row_a + 1 : S, lim_b = causal ? q_offset + row_b + 1 : S;
  if (lim_a > S) lim_a = S;
  if (lim_b > S) lim_b = S;
  int64_t lim_lo = causal ? q_offset + row0 + 1 : S;  // keys every row of the warp may see
  if (lim_lo > S) lim_lo = S;

  const uint32_t q_wg = Qs + static_cast<uint32_t>(64 * wg * 128);
  float s[NS][4];
  float o[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  uint32_t p0[BN / 16][4], p1[BN / 16][4];

  // S = Q K_t^T into s (asynchronous; the caller waits).
  auto issue_s = [&](int t) {
    const uint32_t kt = Ks + static_cast<uint32_t>((t & 1) * L::kv);
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc)
      wgmma_ss_n128(s, sw128_desc(q_wg + 32 * kc, 16, 1024), sw128_desc(kt + 32 * kc, 16, 1024), kc > 0 ? 1 : 0);
  };
  // The online softmax of key tile t (s holds its raw scores) into p, its bf16 probabilities as A fragments.
  auto softmax = [&](int t, uint32_t(&p)[BN / 16][4], float& al_a, float& al_b) {
    online_softmax(s, static_cast<int64_t>(t) * BN, lim_a, lim_b, lim_lo, scale_log2, lc, m_a, m_b, l_a, l_b, al_a,
                   al_b);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) probs_to_a(s, kk, p[kk]);
  };

  if (n_tiles > 0) {
    cp_async_wait<1>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    wg_fence();
    issue_s(0);
    wg_commit();
    wg_wait<0>();
    fence_acc(s);
    float al_a, al_b;
    softmax(0, p0, al_a, al_b);
  }
  // Key tile t of a steady-state step (a tile t + 1 follows): S_{t+1} and P_t V_t issued together, then the
  // softmax of S_{t+1} (into pn) while P_t V_t still runs. pc / pn alternate between two register arrays (the
  // loop is unrolled by two), so the next tile's probabilities never overwrite the ones the in-flight MMA reads.
  // The last tile (last) has only P V. No branch between an MMA's issue and its wait: ptxas then keeps the
  // MMAs asynchronous.
  auto begin_tile = [&](int t) {
    cp_async_wait<0>();  // K_{t+1} and V_t
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();  // every warpgroup is done with K_t and V_{t-1}: their stages take K_{t+2} and V_{t+1}
    if (t + 2 < n_tiles)
      load_rows_sw128<BN>(Ks + (t & 1) * L::kv, kb, static_cast<int64_t>(t + 2) * BN, S, kld, tid, nth);
    if (t + 1 < n_tiles)
      load_rows_sw128<BN>(Vs + ((t + 1) & 1) * L::kv, vb, static_cast<int64_t>(t + 1) * BN, S, kld, tid, nth);
    cp_async_commit();
    fence_acc(o);
    wg_fence();
  };
  auto issue_pv = [&](int t, const uint32_t(&pc)[BN / 16][4]) {
    const uint32_t vt = Vs + static_cast<uint32_t>((t & 1) * L::kv);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) wgmma_rs_n64_t(o, pc[kk], sw128_desc(vt + kk * 2048, BN * 128, 1024));
    wg_commit();
  };
  auto step = [&](int t, uint32_t(&pc)[BN / 16][4], uint32_t(&pn)[BN / 16][4]) {
    begin_tile(t);
    issue_s(t + 1);
    wg_commit();
    issue_pv(t, pc);
    wg_wait<1>();
    fence_acc(s);
    float al_a, al_b;
    softmax(t + 1, pn, al_a, al_b);
    wg_wait<0>();
    fence_acc(o);
    rescale_o(o, al_a, al_b);
  };
  auto last = [&](int t, uint32_t(&pc)[BN / 16][4]) {
    begin_tile(t);
    issue_pv(t, pc);
    wg_wait<0>();
    fence_acc(o);
  };
  int t = 0;
  for (; t + 2 < n_tiles; t += 2) {
    step(t, p0, p1);
    step(t + 1, p1, p0);
  }
  if (t + 1 < n_tiles) {
    step(t, p0, p1);
    last(t + 1, p1);
  } else if (t < n_tiles) {
    last(t, p0);
  }
  cp_async_wait<0>();
  store_rows(o, row_a, T, b, h, Hq, lc, m_a, m_b, l_a, l_b, out_v, out16, lse);
#endif
}

int g_sms = 132;  // multiprocessors of the device (init_kernels)

template <int D>
void launch_flash2(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, int64_t B, int64_t T,
                   int64_t S, int Hq, int Hkv, float scale_log2, bool causal, int64_t q_offset, void* out, float* lse,
                   cudaStream_t s, bool out16 = false) {
  const int64_t big = ((T + 127) / 128) * Hq * B;
  if (big >= g_sms) {
    const dim3 grid(static_cast<unsigned>((T + 127) / 128), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
    flash2_kernel<D, 8><<<grid, 256, Flash2Layout<D, 8>::bytes, s>>>(q, k, v, T, S, Hq, Hkv, scale_log2,
                                                                    causal ? 1 : 0, q_offset, out, out16 ? 1 : 0, lse);
    return;
  }
  const dim3 grid(static_cast<unsigned>((T + 63) / 64), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  flash2_kernel<D, 4><<<grid, 128, Flash2Layout<D, 4>::bytes, s>>>(q, k, v, T, S, Hq, Hkv, scale_log2,
                                                                  causal ? 1 : 0, q_offset, out, out16 ? 1 : 0, lse);
}

using Flash3Fn = void (*)(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, int64_t, int64_t, int,
                          int, float, int, int64_t, void*, int, float*);
struct Flash3Kernel {
  int nwg;
  Flash3Fn fn;
  size_t smem;
  const char* name;
};
template <int NWG, int BN>
constexpr Flash3Kernel f3(const char* name) {
  return {NWG, &flash3_kernel<NWG, BN>, Flash3Layout<NWG, BN>::bytes, name};
}
// set_flash_variant ids 2.. (1: flash2), named by the block's queries x keys per tile. Measured on the H200
// (bench_cuda --what attn): 64x128 is the fastest for one tile (192 blocks), 192x128 once the grid has a block
// for every SM and more; 64-key tiles were slower in every shape, and so was computing part of the exponentials
// with a polynomial on the FMA pipe (bench/BENCHMARKS.md).
const Flash3Kernel kFlash3[] = {f3<1, 128>("flash3 64x128"), f3<2, 128>("flash3 128x128"),
                                f3<3, 128>("flash3 192x128")};
constexpr int kFlashVariants = 2 + static_cast<int>(sizeof(kFlash3) / sizeof(kFlash3[0]));
constexpr int kFlash3Small = 2, kFlash3Big = 4;  // the automatic choice for grids below / above one block per SM
int g_flash_variant = 0;
bool g_sm90 = false;  // the device is sm_90 (init_kernels): the sm_90a kernels run

void launch_flash3(const Flash3Kernel& kr, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                   int64_t B, int64_t T, int64_t S, int Hq, int Hkv, float scale_log2, bool causal, int64_t q_offset,
                   void* out, float* lse, cudaStream_t s, bool out16) {
  const int64_t bq = 64 * kr.nwg;
  const dim3 grid(static_cast<unsigned>((T + bq - 1) / bq), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  kr.fn<<<grid, 128 * kr.nwg, kr.smem, s>>>(q, k, v, T, S, Hq, Hkv, scale_log2, causal ? 1 : 0, q_offset, out,
                                            out16 ? 1 : 0, lse);
}

// The tensor-core attention: flash3 for head_dim 64 where the build and the device have sm_90a, else flash2.
template <int D>
void launch_tc(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, int64_t B, int64_t T,
               int64_t S, int Hq, int Hkv, float scale_log2, bool causal, int64_t q_offset, void* out, float* lse,
               cudaStream_t s, bool out16 = false) {
  if constexpr (D == 64) {
    if (kHaveFlash3 && g_sm90 && g_flash_variant != 1) {
      int var = g_flash_variant;
      if (var == 0) var = ((T + 191) / 192) * Hq * B >= g_sms ? kFlash3Big : kFlash3Small;
      launch_flash3(kFlash3[var - 2], q, k, v, B, T, S, Hq, Hkv, scale_log2, causal, q_offset, out, lse, s, out16);
      return;
    }
  }
  launch_flash2<D>(q, k, v, B, T, S, Hq, Hkv, scale_log2, causal, q_offset, out, lse, s, out16);
}

// bf16 copies for the tensor-core kernels: the one conversion kernel of the backend (ops.cu).
void to_bf16(const float* x, int64_t n, __nv_bfloat16* y, cudaStream_t s) {
  f32_to_bf16(x, n, reinterpret_cast<uint16_t*>(y), s);
}

template <int D>
void launch_flash(const float* q, const float* k, const float* v, int64_t B, int64_t T, int64_t S, int Hq, int Hkv,
                  float scale_log2, bool causal, int64_t q_offset, float* out, float* lse, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((T + kBQ - 1) / kBQ), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  flash_kernel<D><<<grid, 128, FlashLayout<D>::bytes, s>>>(q, k, v, T, S, Hq, Hkv, scale_log2, causal ? 1 : 0,
                                                          q_offset, out, lse);
}

template <int D>
void launch_score(const float* q, const float* k, const float* lse, int64_t B, int64_t T, int64_t S, int Hq, int Hkv,
                  float scale_log2, float norm, float* score, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((T + kBQ - 1) / kBQ), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  score_kernel<D><<<grid, 128, FlashLayout<D>::score_bytes, s>>>(q, k, lse, T, S, Hq, Hkv, scale_log2, norm, score);
}

template <int U>
void launch_rows(const float* q, const float* k, const float* v, int64_t B, int64_t T, int64_t S, int Hq, int Hkv,
                 int D, float scale_log2, bool causal, int64_t q_offset, float* out, float* lse, cudaStream_t s,
                 const int32_t* positions, bool per_batch) {
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  rows_kernel<U><<<grid, 128, 0, s>>>(q, k, v, T, S, Hq, Hkv, D, scale_log2, causal ? 1 : 0, q_offset, out, lse,
                                      positions, per_batch ? 1 : 0);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t init_kernels() {
  cudaError_t e = cudaSuccess;
  auto raise = [&](const void* fn, size_t bytes) {
    if (e == cudaSuccess && bytes > 48 * 1024)
      e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  };
  raise(reinterpret_cast<const void*>(&flash_kernel<32>), FlashLayout<32>::bytes);
  raise(reinterpret_cast<const void*>(&flash_kernel<64>), FlashLayout<64>::bytes);
  raise(reinterpret_cast<const void*>(&flash_kernel<128>), FlashLayout<128>::bytes);
  raise(reinterpret_cast<const void*>(&decode_attn_kernel), (256 + kDecodeMaxKeys) * sizeof(float));
  raise(reinterpret_cast<const void*>(&flash2_kernel<32, 4>), Flash2Layout<32, 4>::bytes);
  raise(reinterpret_cast<const void*>(&flash2_kernel<64, 4>), Flash2Layout<64, 4>::bytes);
  raise(reinterpret_cast<const void*>(&flash2_kernel<128, 4>), Flash2Layout<128, 4>::bytes);
  raise(reinterpret_cast<const void*>(&flash2_kernel<32, 8>), Flash2Layout<32, 8>::bytes);
  raise(reinterpret_cast<const void*>(&flash2_kernel<64, 8>), Flash2Layout<64, 8>::bytes);
  raise(reinterpret_cast<const void*>(&flash2_kernel<128, 8>), Flash2Layout<128, 8>::bytes);
  for (const Flash3Kernel& kr : kFlash3) raise(reinterpret_cast<const void*>(kr.fn), kr.smem);
  int dev = 0, sms = 0, major = 0;
  if (e == cudaSuccess && cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && sms > 0)
    g_sms = sms;
  if (e == cudaSuccess && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess)
    g_pdl = major >= 9;
  g_sm90 = e == cudaSuccess && major == 9;
  raise(reinterpret_cast<const void*>(&score_kernel<32>), FlashLayout<32>::score_bytes);
  raise(reinterpret_cast<const void*>(&score_kernel<64>), FlashLayout<64>::score_bytes);
  raise(reinterpret_cast<const void*>(&score_kernel<128>), FlashLayout<128>::score_bytes);
  return e;
}

bool attention_uses_flash(int64_t T, int D) { return T > 8 && (D == 32 || D == 64 || D == 128); }

size_t attention_scratch_bytes(int64_t B, int64_t T, int64_t S, int Hq, int Hkv, int D) {
  auto r = [](size_t n) { return (n + 255) / 256 * 256; };
  return r(static_cast<size_t>(B * T * Hq * D) * 2) + 2 * r(static_cast<size_t>(B * S * Hkv * D) * 2);
}


int attention(const float* q, const float* k, const float* v, int64_t B, int64_t T, int64_t S, int Hq, int Hkv,
              int D, float scale, bool causal, int64_t q_offset, float* out, float* lse, bool exact, void* scratch,
              cudaStream_t s, const int32_t* positions, bool per_batch) {
  if (B * T * Hq == 0) return 0;
  const float sl2 = scale * kLog2e;
  if (positions != nullptr) exact = true;  // positions from a tensor: the split-key kernel (decode)
  if (!exact && scratch != nullptr && attention_uses_flash(T, D)) {
    auto r = [](size_t n) { return (n + 255) / 256 * 256; };
    auto* qb = static_cast<__nv_bfloat16*>(scratch);
    auto* kb = reinterpret_cast<__nv_bfloat16*>(static_cast<char*>(scratch) + r(static_cast<size_t>(B * T * Hq * D) * 2));
    auto* vb = reinterpret_cast<__nv_bfloat16*>(reinterpret_cast<char*>(kb) + r(static_cast<size_t>(B * S * Hkv * D) * 2));
    to_bf16(q, B * T * Hq * D, qb, s);
    to_bf16(k, B * S * Hkv * D, kb, s);
    to_bf16(v, B * S * Hkv * D, vb, s);
    switch (D) {
      case 32: launch_tc<32>(qb, kb, vb, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s); break;
      case 64: launch_tc<64>(qb, kb, vb, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s); break;
      default: launch_tc<128>(qb, kb, vb, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s); break;
    }
    return 4;
  }
  if (!exact && attention_uses_flash(T, D) && aligned16(q) && aligned16(k) && aligned16(v)) {
    switch (D) {
      case 32: launch_flash<32>(q, k, v, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s); return 1;
      case 64: launch_flash<64>(q, k, v, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s); return 1;
      default: launch_flash<128>(q, k, v, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s); return 1;
    }
  }
  if (T <= 8 && S <= kDecodeMaxKeys && D <= 256) {
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(Hq), static_cast<unsigned>(B));
    const size_t smem = (256 + static_cast<size_t>(S)) * sizeof(float);
    launch_pdl(decode_attn_kernel, grid, dim3(kDecodeThreads), smem, s, q, k, v, T, S, Hq, Hkv, D, sl2,
               causal ? 1 : 0, q_offset, out, lse, positions, per_batch ? 1 : 0);
    return 1;
  }
  const int U = (D + 31) / 32;
  switch (U) {
    case 1: launch_rows<1>(q, k, v, B, T, S, Hq, Hkv, D, sl2, causal, q_offset, out, lse, s, positions, per_batch); break;
    case 2: launch_rows<2>(q, k, v, B, T, S, Hq, Hkv, D, sl2, causal, q_offset, out, lse, s, positions, per_batch); break;
    case 3: launch_rows<3>(q, k, v, B, T, S, Hq, Hkv, D, sl2, causal, q_offset, out, lse, s, positions, per_batch); break;
    case 4: launch_rows<4>(q, k, v, B, T, S, Hq, Hkv, D, sl2, causal, q_offset, out, lse, s, positions, per_batch); break;
    default: launch_rows<8>(q, k, v, B, T, S, Hq, Hkv, D, sl2, causal, q_offset, out, lse, s, positions, per_batch); break;
  }
  return 1;
}

int attention_mixed(const void* q, bool q16, const void* k, bool k16, const void* v, bool v16, int64_t B, int64_t T,
                    int64_t S, int Hq, int Hkv, int D, float scale, bool causal, int64_t q_offset, void* out,
                    float* lse, void* scratch, cudaStream_t s, bool out16) {
  if (B * T * Hq == 0) return 0;
  auto r = [](size_t n) { return (n + 255) / 256 * 256; };
  char* sc = static_cast<char*>(scratch);
  const int64_t nq = B * T * Hq * D, nk = B * S * Hkv * D;
  int launches = 1;
  auto as16 = [&](const void* p, bool is16, int64_t n, size_t off) -> const __nv_bfloat16* {
    if (is16) return static_cast<const __nv_bfloat16*>(p);
    auto* d = reinterpret_cast<__nv_bfloat16*>(sc + off);
    to_bf16(static_cast<const float*>(p), n, d, s);
    ++launches;
    return d;
  };
  const __nv_bfloat16* qb = as16(q, q16, nq, 0);
  const __nv_bfloat16* kb = as16(k, k16, nk, r(static_cast<size_t>(nq) * 2));
  const __nv_bfloat16* vb = as16(v, v16, nk, r(static_cast<size_t>(nq) * 2) + r(static_cast<size_t>(nk) * 2));
  const float sl2 = scale * kLog2e;
  switch (D) {
    case 32: launch_tc<32>(qb, kb, vb, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s, out16); break;
    case 64: launch_tc<64>(qb, kb, vb, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s, out16); break;
    default: launch_tc<128>(qb, kb, vb, B, T, S, Hq, Hkv, sl2, causal, q_offset, out, lse, s, out16); break;
  }
  return launches;
}

int attn_score_from_lse(const float* q, const float* k, const float* lse, int64_t B, int64_t T, int64_t S, int Hq,
                        int Hkv, int D, float scale, float* score, cudaStream_t s) {
  if (B * S == 0) return 0;
  cudaMemsetAsync(score, 0, static_cast<size_t>(B * S) * sizeof(float), s);
  const float sl2 = scale * kLog2e;
  const float norm = 1.f / (static_cast<float>(Hq) * static_cast<float>(T));
  switch (D) {
    case 32: launch_score<32>(q, k, lse, B, T, S, Hq, Hkv, sl2, norm, score, s); break;
    case 64: launch_score<64>(q, k, lse, B, T, S, Hq, Hkv, sl2, norm, score, s); break;
    default: launch_score<128>(q, k, lse, B, T, S, Hq, Hkv, sl2, norm, score, s); break;
  }
  return 2;
}

void set_flash_variant(int v) { g_flash_variant = v >= 0 && v < kFlashVariants ? v : 0; }
int flash_variant_count() { return kFlashVariants; }
const char* flash_variant_name(int v) {
  if (v == 0) return "auto";
  if (v == 1) return "flash2";
  return v > 1 && v < kFlashVariants ? kFlash3[v - 2].name : "?";
}
bool flash3_available() { return kHaveFlash3 && g_sm90; }

}  // namespace ev::cuda
