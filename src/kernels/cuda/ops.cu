// Element-wise, normalisation, layout and INT8 kernels of the CUDA backend (see cuda_kernels.h).
// f32 arithmetic throughout; the reference (kernels/ref) computes some of these in double, so results agree to a
// few ulp, which the backend-consistency test states as its tolerance.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace ev::cuda {

bool g_pdl = false;

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int per_thread = 1) {
  const int64_t b = (n + static_cast<int64_t>(kThreads) * per_thread - 1) / (static_cast<int64_t>(kThreads) * per_thread);
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 32 ? 65535LL * 32 : b));
}

__device__ inline void report(DevError* err, int code, int64_t pos, int64_t value, int64_t limit) {
  if (err == nullptr) return;
  if (atomicCAS(&err->code, 0, code) == 0) {
    err->pos = static_cast<int>(pos);
    err->value = static_cast<int>(value);
    err->limit = static_cast<int>(limit);
  }
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of t over the block (every thread gets it); red: 32 floats of shared memory.
__device__ inline float block_reduce_sum(float t, float* red) {
  t = warp_sum(t);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = t;
  __syncthreads();
  float r = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
  if (threadIdx.x < 32) r = warp_sum(r);
  if (threadIdx.x == 0) red[0] = r;
  __syncthreads();
  r = red[0];
  __syncthreads();
  return r;
}

__device__ inline float bf16_bits_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ inline uint16_t f32_to_bf16_bits(float f) {  // round to nearest even, NaN kept quiet
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ inline float f16_bits_to_f32(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// ---- element-wise -----------------------------------------------------------------------------------------------

__global__ void add_mul_kernel(const float* __restrict__ a, int64_t na, const float* __restrict__ b, int64_t nb,
                               int mul, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < na;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float bv = b[nb == na ? i : i % nb];
    y[i] = mul ? a[i] * bv : a[i] + bv;
  }
}

__global__ void unary_kernel(int op, const float* __restrict__ x, int64_t n, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    float r;
    if (op == static_cast<int>(Unary::kGeluTanh)) {
      const float k = 0.7978845608028654f;  // sqrt(2/pi)
      r = 0.5f * v * (1.f + tanhf(k * (v + 0.044715f * v * v * v)));
    } else if (op == static_cast<int>(Unary::kSilu)) {
      r = v / (1.f + expf(-v));
    } else {
      r = 1.f / (1.f + expf(-v));
    }
    y[i] = r;
  }
}

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t R, int64_t C,
                              float* __restrict__ y) {
  const int64_t n = R * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float g, u;
    if (up != nullptr) {
      g = gate[i];
      u = up[i];
    } else {  // fused [gate | up] rows
      const int64_t r = i / C, c = i - r * C;
      g = gate[r * 2 * C + c];
      u = gate[r * 2 * C + C + c];
    }
    y[i] = g / (1.f + expf(-g)) * u;
  }
}

// One block per row; two-pass mean / variance in f32 over values held in registers when C <= 8 * blockDim.
template <int kPer>
__global__ void norm_kernel(const float* __restrict__ x, int64_t C, const float* __restrict__ w,
                            const float* __restrict__ b, float eps, int rms, float* __restrict__ y,
                            uint16_t* __restrict__ y16) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * C;
  float* yr = y16 ? nullptr : y + blockIdx.x * C;
  uint16_t* yh = y16 ? y16 + blockIdx.x * C : nullptr;
  auto put = [&](int64_t c, float val) {
    if (yh)
      yh[c] = f32_to_bf16_bits(val);
    else
      yr[c] = val;
  };
  float v[kPer];
  float s = 0.f;
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
    v[p] = c < C ? xr[c] : 0.f;
    s += rms ? v[p] * v[p] : v[p];
  }
  auto block_sum = [&](float t) { return block_reduce_sum(t, red); };
  const float tot = block_sum(s);
  if (rms) {
    const float inv = rsqrtf(tot / static_cast<float>(C) + eps);
#pragma unroll
    for (int p = 0; p < kPer; ++p) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
      if (c < C) put(c, w[c] * (v[p] * inv));
    }
    return;
  }
  const float mean = tot / static_cast<float>(C);
  float q = 0.f;
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
    const float d = c < C ? v[p] - mean : 0.f;
    q += d * d;
  }
  const float var = block_sum(q) / static_cast<float>(C);
  const float inv = rsqrtf(var + eps);
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
    if (c < C) put(c, (v[p] - mean) * inv * w[c] + b[c]);
  }
}

// C % 4 == 0 and C <= 128 * MAXV: one warp per row, float4 loads held in registers, shuffle reductions only (no
// shared memory, no block barriers), 8 rows per block. The same two-pass arithmetic as norm_kernel.
template <int MAXV>
__global__ void __launch_bounds__(256) norm_warp_kernel(const float* __restrict__ x, int64_t rows, int64_t C,
                                                        const float* __restrict__ w, const float* __restrict__ b,
                                                        float eps, int rms, float* __restrict__ y,
                                                        uint16_t* __restrict__ y16) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int n4 = static_cast<int>(C / 4);
  const float4* xr = reinterpret_cast<const float4*>(x + row * C);
  float4 v[MAXV];
  float s = 0.f;
#pragma unroll
  for (int p = 0; p < MAXV; ++p) {
    const int j = lane + 32 * p;
    v[p] = j < n4 ? xr[j] : make_float4(0.f, 0.f, 0.f, 0.f);
    s += rms ? v[p].x * v[p].x + v[p].y * v[p].y + v[p].z * v[p].z + v[p].w * v[p].w : v[p].x + v[p].y + v[p].z + v[p].w;
  }
  s = warp_sum(s);
  float mean = 0.f, inv;
  if (rms) {
    inv = rsqrtf(s / static_cast<float>(C) + eps);
  } else {
    mean = s / static_cast<float>(C);
    float q = 0.f;
#pragma unroll
    for (int p = 0; p < MAXV; ++p) {
      if (lane + 32 * p >= n4) continue;
      const float a = v[p].x - mean, bb = v[p].y - mean, c = v[p].z - mean, d = v[p].w - mean;
      q += a * a + bb * bb + c * c + d * d;
    }
    inv = rsqrtf(warp_sum(q) / static_cast<float>(C) + eps);
  }
  const float4* w4 = reinterpret_cast<const float4*>(w);
  const float4* b4 = reinterpret_cast<const float4*>(b);
#pragma unroll
  for (int p = 0; p < MAXV; ++p) {
    const int j = lane + 32 * p;
    if (j >= n4) continue;
    const float4 ww = w4[j];
    float4 o;
    if (rms) {
      o = make_float4(ww.x * (v[p].x * inv), ww.y * (v[p].y * inv), ww.z * (v[p].z * inv), ww.w * (v[p].w * inv));
    } else {
      const float4 bv = b4[j];
      o = make_float4((v[p].x - mean) * inv * ww.x + bv.x, (v[p].y - mean) * inv * ww.y + bv.y,
                      (v[p].z - mean) * inv * ww.z + bv.z, (v[p].w - mean) * inv * ww.w + bv.w);
    }
    if (y16) {
      ushort4 h;
      h.x = f32_to_bf16_bits(o.x);
      h.y = f32_to_bf16_bits(o.y);
      h.z = f32_to_bf16_bits(o.z);
      h.w = f32_to_bf16_bits(o.w);
      reinterpret_cast<ushort4*>(y16 + row * C)[j] = h;
    } else {
      reinterpret_cast<float4*>(y + row * C)[j] = o;
    }
  }
}

// Any C: a block per row, loops over the row (three passes over global memory).
__global__ void norm_kernel_any(const float* __restrict__ x, int64_t C, const float* __restrict__ w,
                                const float* __restrict__ b, float eps, int rms, float* __restrict__ y) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * C;
  float* yr = y + blockIdx.x * C;
  auto block_sum = [&](float t) { return block_reduce_sum(t, red); };
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += rms ? xr[c] * xr[c] : xr[c];
  const float tot = block_sum(s);
  if (rms) {
    const float inv = rsqrtf(tot / static_cast<float>(C) + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = w[c] * (xr[c] * inv);
    return;
  }
  const float mean = tot / static_cast<float>(C);
  float q = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) q += (xr[c] - mean) * (xr[c] - mean);
  const float inv = rsqrtf(block_sum(q) / static_cast<float>(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = (xr[c] - mean) * inv * w[c] + b[c];
}

// Rotate-half RoPE, the reference's inverse frequencies and angles (f32 products, cos/sin in double).
__global__ void rope_kernel(const float* __restrict__ x, int64_t B, int64_t T, int H, int D, float theta,
                            int64_t pos0, float* __restrict__ y, const int32_t* __restrict__ positions, int per_batch) {
  const int half = D / 2;
  const int64_t n = B * T * H * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t row = idx / half;  // (b*T + t)*H + h
    const int64_t t = (row / H) % T;
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    const float p = static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
    const float inv = 1.0f / p;
    const int64_t pidx = per_batch ? (row / H) : t;  // (b*T + t) or t
    const float ang = static_cast<float>(positions ? static_cast<int64_t>(positions[pidx]) : pos0 + t) * inv;
    double sd, cd;
    sincos(static_cast<double>(ang), &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    const int64_t off = row * D;
    const float x1 = x[off + i], x2 = x[off + i + half];
    y[off + i] = x1 * c - x2 * s;
    y[off + i + half] = x2 * c + x1 * s;
  }
}

__global__ void rope_store_kv_kernel(const float* __restrict__ xq, const float* __restrict__ xk,
                                     const float* __restrict__ xv, int Hq, int Hkv, int D, float theta,
                                     const int32_t* __restrict__ positions, float* __restrict__ q_out,
                                     float* __restrict__ kc, float* __restrict__ vc, int64_t cap, DevError* err) {
  pdl_enter();
  const int64_t pos = positions[0];
  const int half = D / 2;
  const int64_t kvd = static_cast<int64_t>(Hkv) * D;
  const bool ok = pos >= 0 && pos < cap;
  if (!ok && threadIdx.x == 0) report(err, kErrScatterIdx, 0, pos, cap);
  const int nq = Hq * half, nk = Hkv * half;
  for (int idx = threadIdx.x; idx < nq + nk + static_cast<int>(kvd); idx += blockDim.x) {
    if (idx >= nq + nk) {
      if (ok) vc[pos * kvd + (idx - nq - nk)] = xv[idx - nq - nk];
      continue;
    }
    const bool isq = idx < nq;
    const int e = isq ? idx : idx - nq;
    const int h = e / half, i = e % half;
    const float ex = static_cast<float>(2 * i) / static_cast<float>(D);
    const float p = static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(ex)));
    const float inv = 1.0f / p;
    const float ang = static_cast<float>(pos) * inv;
    double sd, cd;
    sincos(static_cast<double>(ang), &sd, &cd);
    const float c = static_cast<float>(cd), sn = static_cast<float>(sd);
    const float* x = isq ? xq : xk;
    const float x1 = x[h * D + i], x2 = x[h * D + i + half];
    if (isq) {
      q_out[h * D + i] = x1 * c - x2 * sn;
      q_out[h * D + i + half] = x2 * c + x1 * sn;
    } else if (ok) {
      kc[pos * kvd + h * D + i] = x1 * c - x2 * sn;
      kc[pos * kvd + h * D + i + half] = x2 * c + x1 * sn;
    }
  }
}

// pixels [B, C, H, W] (f32, or bf16 bits), or u8 frames [B, H, W, C] (HWC) -> patches, f32 or bf16 bits (u8
// values are exact in bf16).
template <typename In, typename Out, bool HWC>
__global__ void patchify_kernel(const In* __restrict__ px, int64_t B, int64_t C, int64_t H, int64_t W, int P,
                                Out* __restrict__ y) {
  const int64_t gh = H / P, gw = W / P, E = C * P * P, n = B * gh * gw * E;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < n;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = o % E, patch = o / E;
    const int64_t col = e % P, r = (e / P) % P, c = e / (P * P);
    const int64_t pxi = patch % gw, py = (patch / gw) % gh, b = patch / (gw * gh);
    const int64_t src = HWC ? ((b * H + py * P + r) * W + pxi * P + col) * C + c
                            : ((b * C + c) * H + py * P + r) * W + pxi * P + col;
    const In v = px[src];
    if constexpr (sizeof(Out) == 2 && sizeof(In) == 2)
      y[o] = v;
    else if constexpr (sizeof(Out) == 2)
      y[o] = f32_to_bf16_bits(static_cast<float>(v));
    else if constexpr (sizeof(In) == 2)
      y[o] = __uint_as_float(static_cast<uint32_t>(v) << 16);
    else
      y[o] = static_cast<float>(v);
  }
}

__global__ void pixel_shuffle_kernel(const float* __restrict__ x, int64_t B, int64_t S, int64_t E, int s, int64_t h,
                                     float* __restrict__ y) {
  const int64_t g = h / s, So = S / (s * s), Eo = E * s * s, n = B * So * Eo;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < n;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = o % E, sub = (o / E) % (s * s), cell = (o / Eo) % So, b = o / (So * Eo);
    const int64_t ri = sub / s, rj = sub % s, i = cell / g, j = cell % g;
    y[o] = x[(b * S + (i * s + ri) * h + j * s + rj) * E + e];
  }
}

__global__ void get_rows_kernel(const void* __restrict__ table, int tt, int64_t V, int64_t C,
                                const int32_t* __restrict__ ids, int64_t T, void* __restrict__ y, DevError* err) {
  pdl_enter();
  const int64_t n = T * C;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < n;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = o / C, c = o - t * C;
    const int32_t id = ids[t];
    if (id < 0 || id >= V) {
      if (c == 0) report(err, kErrGetRowsId, t, id, V);
      if (tt == static_cast<int>(TableType::kI32))
        static_cast<int32_t*>(y)[o] = 0;
      else
        static_cast<float*>(y)[o] = 0.f;
      continue;
    }
    const int64_t src = static_cast<int64_t>(id) * C + c;
    switch (tt) {
      case static_cast<int>(TableType::kF32): static_cast<float*>(y)[o] = static_cast<const float*>(table)[src]; break;
      case static_cast<int>(TableType::kBF16):
        static_cast<float*>(y)[o] = bf16_bits_to_f32(static_cast<const uint16_t*>(table)[src]);
        break;
      case static_cast<int>(TableType::kF16):
        static_cast<float*>(y)[o] = f16_bits_to_f32(static_cast<const uint16_t*>(table)[src]);
        break;
      default: static_cast<int32_t*>(y)[o] = static_cast<const int32_t*>(table)[src]; break;
    }
  }
}


__global__ void copy16_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}
__global__ void copy4_kernel(const uint32_t* __restrict__ src, uint32_t* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

__global__ void scatter_rows_kernel(int64_t T, int64_t C, const float* __restrict__ src, const int32_t* __restrict__ idx,
                                    int64_t n, float* __restrict__ out, DevError* err) {
  const int64_t total = n * C;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < total;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = o / C, c = o - i * C;
    const int32_t r = idx[i];
    if (r < 0 || r >= T) {
      if (c == 0) report(err, kErrScatterIdx, i, r, T);
      continue;
    }
    out[static_cast<int64_t>(r) * C + c] = src[o];
  }
}

__global__ void copy_cols_kernel(const float* __restrict__ x, int64_t R, int64_t C, int64_t c0, int64_t w,
                                 float* __restrict__ y) {
  const int64_t n = R * w;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < n;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = o / w, c = o - r * w;
    y[o] = x[r * C + c0 + c];
  }
}

__global__ void mean_rows_kernel(const float* __restrict__ x, int64_t B, int64_t R, int64_t C, float* __restrict__ y) {
  const int64_t n = B * C;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < n;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = o / C, c = o - b * C;
    float acc = 0.f;
    for (int64_t r = 0; r < R; ++r) acc += x[(b * R + r) * C + c];
    y[o] = acc / static_cast<float>(R);
  }
}

// Top-k of each row by rank counting (n is at most a few thousand tokens): rank_j = #{i : s_i > s_j or
// (s_i == s_j and i < j)}, NaN counting as -inf; the kept j in ascending order via a block prefix sum.
__global__ void top_k_kernel(const float* __restrict__ score, int64_t n, int64_t k, int32_t* __restrict__ idx) {
  extern __shared__ float sm[];
  float* s = sm;                                        // [n]
  int* flag = reinterpret_cast<int*>(sm + n);           // [n]
  __shared__ int chunk_base;
  const int64_t b = blockIdx.x;
  const float* row = score + b * n;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = row[j];
    s[j] = isnan(v) ? -INFINITY : v;
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float sj = s[j];
    int64_t rank = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float si = s[i];
      rank += (si > sj || (si == sj && i < j)) ? 1 : 0;
    }
    flag[j] = rank < k ? 1 : 0;
  }
  __syncthreads();
  // Ordered compaction, one blockDim-wide chunk at a time.
  if (threadIdx.x == 0) chunk_base = 0;
  __syncthreads();
  __shared__ int scan[1024];
  for (int64_t j0 = 0; j0 < n; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    const int f = j < n ? flag[j] : 0;
    scan[threadIdx.x] = f;
    __syncthreads();
    for (unsigned off = 1; off < blockDim.x; off <<= 1) {
      const int add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
      __syncthreads();
      scan[threadIdx.x] += add;
      __syncthreads();
    }
    if (f) idx[b * k + chunk_base + scan[threadIdx.x] - 1] = static_cast<int32_t>(b * n + j);
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) chunk_base += scan[threadIdx.x];
    __syncthreads();
  }
}

// One block per row: each thread scans a stride of the row, then (value, index) pairs reduce by warp shuffles
// and through shared memory. Order: higher value first, then lower index; NaN never wins (-1 if all are NaN).
__device__ inline bool argmax_better(float v, int i, float bv, int bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  return v > bv || (v == bv && i < bi);
}

__global__ void argmax_rows_kernel(const float* __restrict__ x, int64_t n, int32_t* __restrict__ idx) {
  pdl_enter();
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* r = x + blockIdx.x * n;
  float bv = 0.f;
  int bi = -1;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = r[j];
    if (!isnan(v) && argmax_better(v, static_cast<int>(j), bv, bi)) {
      bv = v;
      bi = static_cast<int>(j);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (argmax_better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    bv = lane < n_warps ? sv[lane] : 0.f;
    bi = lane < n_warps ? si[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (argmax_better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) idx[blockIdx.x] = bi;
  }
}

// ---- FP8 (e4m3, one scale per tensor) ---------------------------------------------------------------------------

__device__ inline float as_f32(float v) { return v; }
__device__ inline float as_f32(uint16_t bf16) { return __uint_as_float(static_cast<uint32_t>(bf16) << 16); }

// amax |x| over the tensor into *amax_bits (non-negative floats order as their bit patterns; NaN is skipped).
template <typename In>
__global__ void amax_kernel(const In* __restrict__ x, int64_t n, unsigned* __restrict__ amax_bits) {
  float m = 0.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = fabsf(as_f32(x[i]));
    if (v > m) m = v;  // NaN compares false
  }
  // One atomic per block (per warp would serialise hundreds of thousands of them on one word).
  __shared__ float red[32];
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    m = warp_max(m);
    if (threadIdx.x == 0 && m > 0.f) atomicMax(amax_bits, __float_as_uint(m));
  }
}

// q = e4m3(x / scale) with scale = amax / 448 (e4m3's largest finite value; 1 for an all-zero tensor), saturating;
// the scale goes to *scale for the GEMM, which multiplies it back.
template <typename In>
__global__ void to_fp8_kernel(const In* __restrict__ x, int64_t n, const unsigned* __restrict__ amax_bits,
                              __nv_fp8_storage_t* __restrict__ q, float* __restrict__ scale) {
  const float amax = __uint_as_float(*amax_bits);
  const float sc = amax > 0.f && amax < INFINITY ? amax / 448.f : 1.f;
  const float inv = 1.f / sc;
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale = sc;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    q[i] = __nv_cvt_float_to_fp8(as_f32(x[i]) * inv, __NV_SATFINITE, __NV_E4M3);
  }
}

// ---- precision ------------------------------------------------------------------------------------------------

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, int64_t n, uint16_t* __restrict__ y) {
  const int64_t n4 = n / 4;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    ushort4 o;
    o.x = f32_to_bf16_bits(v.x);
    o.y = f32_to_bf16_bits(v.y);
    o.z = f32_to_bf16_bits(v.z);
    o.w = f32_to_bf16_bits(v.w);
    reinterpret_cast<ushort4*>(y)[i] = o;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = f32_to_bf16_bits(x[i]);
}

// One block per row: the rules of ref_quant.h (t = x * inv_smooth; non-finite row -> NaN scale, zeros; amax/127;
// scale < FLT_MIN -> zero row; q = clamp(rint(t * (1/scale)), -127, 127)).
__global__ void quantize_rows_kernel(const float* __restrict__ x, int64_t K, const float* __restrict__ inv_smooth,
                                     int8_t* __restrict__ q, float* __restrict__ scale) {
  __shared__ float red[32];
  __shared__ int bad_any;
  const float* xr = x + blockIdx.x * K;
  int8_t* qr = q + blockIdx.x * K;
  if (threadIdx.x == 0) bad_any = 0;
  __syncthreads();
  float amax = 0.f;
  int bad = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float t = inv_smooth ? __fmul_rn(xr[k], inv_smooth[k]) : xr[k];
    if (!isfinite(t)) bad = 1;
    amax = fmaxf(amax, fabsf(t));
  }
  if (bad) atomicOr(&bad_any, 1);
  amax = warp_max(amax);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    float r = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    r = warp_max(r);
    if (threadIdx.x == 0) red[0] = r;
  }
  __syncthreads();
  if (bad_any) {
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) qr[k] = 0;
    if (threadIdx.x == 0) scale[blockIdx.x] = __int_as_float(0x7fc00000);
    return;
  }
  const float sc = __fdiv_rn(red[0], 127.0f);
  if (sc < FLT_MIN) {
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) qr[k] = 0;
    if (threadIdx.x == 0) scale[blockIdx.x] = 0.f;
    return;
  }
  const float inv = __fdiv_rn(1.0f, sc);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float t = inv_smooth ? __fmul_rn(xr[k], inv_smooth[k]) : xr[k];
    float r = rintf(__fmul_rn(t, inv));
    r = fminf(fmaxf(r, -127.f), 127.f);
    qr[k] = static_cast<int8_t>(static_cast<int>(r));
  }
  if (threadIdx.x == 0) scale[blockIdx.x] = sc;
}

__global__ void dequant_kernel(const int32_t* __restrict__ acc, int64_t M, int64_t N, const float* __restrict__ sx,
                               const float* __restrict__ sw, const float* __restrict__ bias,
                               const float* __restrict__ residual, float* __restrict__ y) {
  const int64_t n = M * N;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < n;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = o / N, c = o - m * N;
    float v = __fmaf_rn(static_cast<float>(acc[o]), __fmul_rn(sx[m], sw[c]), bias ? bias[c] : 0.0f);
    if (residual) v += residual[o];
    y[o] = v;
  }
}

// GEMV for M <= 8: one warp per output column n streams w[n, :] once (16-byte loads) for all M rows.
// PRE: the input as stored (0), rmsnorm(x) (1: each block computes the rows' 1/rms first), or silu(gate) * up
// of a fused [gate | up] row (2).
template <int M, int PRE>
__device__ inline float4 gemv_in4(const float* __restrict__ x, int64_t K, int m, int64_t k4, const float* inv,
                                  const float* __restrict__ nw) {
  if constexpr (PRE == 2) {
    const float4 g = __ldg(reinterpret_cast<const float4*>(x + m * 2 * K) + k4);
    const float4 u = __ldg(reinterpret_cast<const float4*>(x + m * 2 * K + K) + k4);
    return make_float4(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y,
                       g.z / (1.f + __expf(-g.z)) * u.z, g.w / (1.f + __expf(-g.w)) * u.w);
  } else {
    float4 a = __ldg(reinterpret_cast<const float4*>(x + m * K) + k4);
    if constexpr (PRE == 1) {
      const float4 w = __ldg(reinterpret_cast<const float4*>(nw) + k4);
      a = make_float4(w.x * (a.x * inv[m]), w.y * (a.y * inv[m]), w.z * (a.z * inv[m]), w.w * (a.w * inv[m]));
    }
    return a;
  }
}
template <int M, int PRE>
__device__ inline float gemv_in1(const float* __restrict__ x, int64_t K, int m, int64_t k, const float* inv,
                                 const float* __restrict__ nw) {
  if constexpr (PRE == 2) {
    const float g = x[m * 2 * K + k], u = x[m * 2 * K + K + k];
    return g / (1.f + __expf(-g)) * u;
  } else if constexpr (PRE == 1) {
    return nw[k] * (x[m * K + k] * inv[m]);
  } else {
    return x[m * K + k];
  }
}

// WPN warps share one output column (split K, summed through shared memory): the small projections of a decode
// step have too few columns to keep the GPU's memory system busy with one warp each.
template <int M, bool kBF16, int PRE, int WPN>
__global__ void gemv_kernel(const float* __restrict__ x, int64_t K, const void* __restrict__ wv, int64_t N,
                            const float* __restrict__ bias, const float* __restrict__ residual, float* __restrict__ y,
                            int vec, const float* __restrict__ nw, float eps) {
  pdl_enter();
  __shared__ float inv[M];
  if constexpr (PRE == 1) {
    __shared__ float part[M][8];
    const int warp0 = threadIdx.x >> 5, lane0 = threadIdx.x & 31;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float ss = 0.f;
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) ss += x[m * K + k] * x[m * K + k];
      ss = warp_sum(ss);
      if (lane0 == 0) part[m][warp0] = ss;
    }
    __syncthreads();
    if (threadIdx.x < M) {
      float t = 0.f;
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t += part[threadIdx.x][w];
      inv[threadIdx.x] = rsqrtf(t / static_cast<float>(K) + eps);
    }
    __syncthreads();
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int part = warp % WPN;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * ((blockDim.x >> 5) / WPN) + warp / WPN;
  const bool valid = n < N;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  if (!valid) {
  } else if constexpr (kBF16) {
    const uint16_t* w = static_cast<const uint16_t*>(wv) + n * K;
    const int64_t K8 = (vec && K % 8 == 0) ? K / 8 : 0;
    for (int64_t c = lane + 32 * part; c < K8; c += 32 * WPN) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w) + c);
      float wf[8];
      wf[0] = __uint_as_float(raw.x << 16);
      wf[1] = __uint_as_float(raw.x & 0xffff0000u);
      wf[2] = __uint_as_float(raw.y << 16);
      wf[3] = __uint_as_float(raw.y & 0xffff0000u);
      wf[4] = __uint_as_float(raw.z << 16);
      wf[5] = __uint_as_float(raw.z & 0xffff0000u);
      wf[6] = __uint_as_float(raw.w << 16);
      wf[7] = __uint_as_float(raw.w & 0xffff0000u);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 a = gemv_in4<M, PRE>(x, K, m, 2 * c, inv, nw);
        const float4 b = gemv_in4<M, PRE>(x, K, m, 2 * c + 1, inv, nw);
        acc[m] += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] + b.x * wf[4] + b.y * wf[5] + b.z * wf[6] +
                  b.w * wf[7];
      }
    }
    for (int64_t k = K8 * 8 + lane + 32 * part; k < K; k += 32 * WPN) {
      const float wf = bf16_bits_to_f32(w[k]);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] += gemv_in1<M, PRE>(x, K, m, k, inv, nw) * wf;
    }
  } else {
    const float* w = static_cast<const float*>(wv) + n * K;
    const int64_t K4 = (vec && K % 4 == 0) ? K / 4 : 0;
    for (int64_t c = lane + 32 * part; c < K4; c += 32 * WPN) {
      const float4 wf = __ldg(reinterpret_cast<const float4*>(w) + c);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 a = gemv_in4<M, PRE>(x, K, m, c, inv, nw);
        acc[m] += a.x * wf.x + a.y * wf.y + a.z * wf.z + a.w * wf.w;
      }
    }
    for (int64_t k = K4 * 4 + lane + 32 * part; k < K; k += 32 * WPN) {
      const float wf = w[k];
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] += gemv_in1<M, PRE>(x, K, m, k, inv, nw) * wf;
    }
  }
  if constexpr (WPN > 1) {
    __shared__ float red[8][M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float v = warp_sum(acc[m]);
      if (lane == 0) red[warp][m] = v;
    }
    __syncthreads();
    if (part != 0 || !valid) return;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = 0.f;
#pragma unroll
      for (int p = 0; p < WPN; ++p) v += red[warp + p][m];
      acc[m] = v;
    }
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float r = acc[m] + (bias ? bias[n] : 0.f);
        if (residual) r += residual[m * N + n];
        y[m * N + n] = r;
      }
    }
    return;
  } else {
    if (!valid) return;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float v = warp_sum(acc[m]);
      if (lane == 0) {
        float r = v + (bias ? bias[n] : 0.f);
        if (residual) r += residual[m * N + n];
        y[m * N + n] = r;
      }
    }
  }
}

template <int M, int PRE>
int launch_gemv(const float* x, int64_t K, const void* w, bool bf16, int64_t N, const float* bias,
                const float* residual, float* y, const float* nw, float eps, cudaStream_t s) {
  const int warps = 8;
  const bool split = N < 8192;  // few columns: 4 warps per column
  const int per_block = split ? warps / 4 : warps;
  const unsigned grid = static_cast<unsigned>((N + per_block - 1) / per_block);
  // 16-byte loads need 16-byte aligned rows (x may be a view at an odd offset; weights come from cudaMalloc).
  const int vec = (reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                   (nw == nullptr || reinterpret_cast<uintptr_t>(nw) % 16 == 0)) ? 1 : 0;
  const dim3 b(warps * 32);
  if (bf16 && split)
    launch_pdl(gemv_kernel<M, true, PRE, 4>, grid, b, 0, s, x, K, w, N, bias, residual, y, vec, nw, eps);
  else if (bf16)
    launch_pdl(gemv_kernel<M, true, PRE, 1>, grid, b, 0, s, x, K, w, N, bias, residual, y, vec, nw, eps);
  else if (split)
    launch_pdl(gemv_kernel<M, false, PRE, 4>, grid, b, 0, s, x, K, w, N, bias, residual, y, vec, nw, eps);
  else
    launch_pdl(gemv_kernel<M, false, PRE, 1>, grid, b, 0, s, x, K, w, N, bias, residual, y, vec, nw, eps);
  return 1;
}

template <int PRE>
int gemv_m(const float* x, int64_t M, int64_t K, const void* w, bool bf16, int64_t N, const float* bias,
           const float* residual, float* y, const float* nw, float eps, cudaStream_t s) {
  switch (M) {
    case 1: return launch_gemv<1, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    case 2: return launch_gemv<2, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    case 3: return launch_gemv<3, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    case 4: return launch_gemv<4, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    case 5: return launch_gemv<5, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    case 6: return launch_gemv<6, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    case 7: return launch_gemv<7, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
    default: return launch_gemv<8, PRE>(x, K, w, bf16, N, bias, residual, y, nw, eps, s);
  }
}

}  // namespace

int add_mul(const float* a, int64_t na, const float* b, int64_t nb, bool mul, float* y, cudaStream_t s) {
  if (na == 0) return 0;
  add_mul_kernel<<<blocks_for(na, 4), kThreads, 0, s>>>(a, na, b, nb, mul ? 1 : 0, y);
  return 1;
}

int unary(Unary op, const float* x, int64_t n, float* y, cudaStream_t s) {
  if (n == 0) return 0;
  unary_kernel<<<blocks_for(n, 4), kThreads, 0, s>>>(static_cast<int>(op), x, n, y);
  return 1;
}

int swiglu(const float* gate, const float* up, int64_t R, int64_t C, float* y, cudaStream_t s) {
  if (R * C == 0) return 0;
  swiglu_kernel<<<blocks_for(R * C, 4), kThreads, 0, s>>>(gate, up, R, C, y);
  return 1;
}

int norm(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, bool rms, float* y,
         cudaStream_t s, uint16_t* y16) {
  if (rows == 0) return 0;
  const unsigned grid = static_cast<unsigned>(rows);
  const bool vec = C % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                   (rms || reinterpret_cast<uintptr_t>(b) % 16 == 0) &&
                   (y16 ? reinterpret_cast<uintptr_t>(y16) % 8 == 0 : reinterpret_cast<uintptr_t>(y) % 16 == 0);
  const unsigned wgrid = static_cast<unsigned>((rows + 7) / 8);
  if (vec && C <= 512)
    norm_warp_kernel<4><<<wgrid, 256, 0, s>>>(x, rows, C, w, b, eps, rms ? 1 : 0, y, y16);
  else if (vec && C <= 1024)
    norm_warp_kernel<8><<<wgrid, 256, 0, s>>>(x, rows, C, w, b, eps, rms ? 1 : 0, y, y16);
  else if (vec && C <= 2048)
    norm_warp_kernel<16><<<wgrid, 256, 0, s>>>(x, rows, C, w, b, eps, rms ? 1 : 0, y, y16);
  else if (C <= 256)
    norm_kernel<1><<<grid, 256, 0, s>>>(x, C, w, b, eps, rms ? 1 : 0, y, y16);
  else if (C <= 1024)
    norm_kernel<4><<<grid, 256, 0, s>>>(x, C, w, b, eps, rms ? 1 : 0, y, y16);
  else if (C <= 4096)
    norm_kernel<8><<<grid, 512, 0, s>>>(x, C, w, b, eps, rms ? 1 : 0, y, y16);
  else if (y16 == nullptr)
    norm_kernel_any<<<grid, 512, 0, s>>>(x, C, w, b, eps, rms ? 1 : 0, y);
  else
    return -1;  // the executor never asks for a bf16 output of rows this wide
  return 1;
}

int rope(const float* x, int64_t B, int64_t T, int H, int D, float theta, int64_t pos0, float* y, cudaStream_t s,
         const int32_t* positions, bool per_batch) {
  const int64_t n = B * T * H * (D / 2);
  if (n == 0) return 0;
  rope_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, B, T, H, D, theta, pos0, y, positions, per_batch ? 1 : 0);
  return 1;
}

int rope_store_kv(const float* xq, const float* xk, const float* xv, int Hq, int Hkv, int D, float theta,
                  const int32_t* positions, float* q_out, float* k_cache, float* v_cache, int64_t cap, DevError* err,
                  cudaStream_t s) {
  launch_pdl(rope_store_kv_kernel, dim3(1), dim3(256), 0, s, xq, xk, xv, Hq, Hkv, D, theta, positions, q_out, k_cache,
             v_cache, cap, err);
  return 1;
}

int patchify(const void* px, PixelType pt, int64_t B, int64_t d1, int64_t d2, int64_t d3, int P, void* y, bool out16,
             cudaStream_t s) {
  const int64_t n = B * d1 * d2 * d3;
  if (n == 0) return 0;
  const unsigned g = blocks_for(n, 4);
  auto* u = static_cast<const uint8_t*>(px);
  auto* f = static_cast<const float*>(px);
  auto* h = static_cast<const uint16_t*>(px);
  auto* y16 = static_cast<uint16_t*>(y);
  auto* y32 = static_cast<float*>(y);
  switch (pt) {
    case PixelType::kU8HWC:  // d1..d3 = H, W, C
      if (out16)
        patchify_kernel<uint8_t, uint16_t, true><<<g, kThreads, 0, s>>>(u, B, d3, d1, d2, P, y16);
      else
        patchify_kernel<uint8_t, float, true><<<g, kThreads, 0, s>>>(u, B, d3, d1, d2, P, y32);
      break;
    case PixelType::kBF16:
      if (out16)
        patchify_kernel<uint16_t, uint16_t, false><<<g, kThreads, 0, s>>>(h, B, d1, d2, d3, P, y16);
      else
        patchify_kernel<uint16_t, float, false><<<g, kThreads, 0, s>>>(h, B, d1, d2, d3, P, y32);
      break;
    default:
      if (out16)
        patchify_kernel<float, uint16_t, false><<<g, kThreads, 0, s>>>(f, B, d1, d2, d3, P, y16);
      else
        patchify_kernel<float, float, false><<<g, kThreads, 0, s>>>(f, B, d1, d2, d3, P, y32);
      break;
  }
  return 1;
}

int pixel_shuffle(const float* x, int64_t B, int64_t S, int64_t E, int scale, float* y, cudaStream_t s) {
  int64_t h = 0;
  while ((h + 1) * (h + 1) <= S) ++h;
  if (B * S * E == 0) return 0;
  pixel_shuffle_kernel<<<blocks_for(B * S * E, 4), kThreads, 0, s>>>(x, B, S, E, scale, h, y);
  return 1;
}

int get_rows(const void* table, TableType tt, int64_t V, int64_t C, const int32_t* ids, int64_t T, void* y,
             DevError* err, cudaStream_t s) {
  if (T * C == 0) return 0;
  launch_pdl(get_rows_kernel, dim3(blocks_for(T * C, 2)), dim3(kThreads), 0, s, table, static_cast<int>(tt), V, C, ids,
             T, y, err);
  return 1;
}

int scatter_rows(const float* base, int64_t T, int64_t C, const float* src, const int32_t* idx, int64_t n,
                 float* out, DevError* err, cudaStream_t s) {
  int launches = 0;
  if (base != out && T * C > 0) launches += copy(out, base, static_cast<size_t>(T * C) * sizeof(float), s);
  if (n * C > 0) {
    scatter_rows_kernel<<<blocks_for(n * C, 2), kThreads, 0, s>>>(T, C, src, idx, n, out, err);
    ++launches;
  }
  return launches;
}

int copy(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (bytes == 0 || dst == src) return 0;
  const bool a16 = reinterpret_cast<uintptr_t>(dst) % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 && bytes % 16 == 0;
  if (a16) {
    const int64_t n = static_cast<int64_t>(bytes / 16);
    copy16_kernel<<<blocks_for(n, 2), kThreads, 0, s>>>(static_cast<const uint4*>(src), static_cast<uint4*>(dst), n);
  } else if (bytes % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 4 == 0) {
    const int64_t n = static_cast<int64_t>(bytes / 4);
    copy4_kernel<<<blocks_for(n, 2), kThreads, 0, s>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), n);
  } else {
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
  }
  return 1;
}

int copy_cols(const float* x, int64_t R, int64_t C, int64_t c0, int64_t w, float* y, cudaStream_t s) {
  if (R * w == 0) return 0;
  copy_cols_kernel<<<blocks_for(R * w, 2), kThreads, 0, s>>>(x, R, C, c0, w, y);
  return 1;
}

int mean_rows(const float* x, int64_t B, int64_t R, int64_t C, float* y, cudaStream_t s) {
  if (B * C == 0) return 0;
  mean_rows_kernel<<<blocks_for(B * C), kThreads, 0, s>>>(x, B, R, C, y);
  return 1;
}

int top_k(const float* score, int64_t B, int64_t n, int64_t k, int32_t* idx, cudaStream_t s) {
  if (B == 0) return 0;
  const size_t smem = static_cast<size_t>(n) * (sizeof(float) + sizeof(int));
  top_k_kernel<<<static_cast<unsigned>(B), 1024, smem, s>>>(score, n, k, idx);
  return 1;
}

int argmax_rows(const float* x, int64_t B, int64_t n, int32_t* idx, cudaStream_t s) {
  if (B == 0) return 0;
  launch_pdl(argmax_rows_kernel, dim3(static_cast<unsigned>(B)), dim3(1024), 0, s, x, n, idx);
  return 1;
}

int to_fp8(const void* x, bool x16, int64_t n, uint8_t* q, float* scale, unsigned* amax_bits, cudaStream_t s) {
  if (n == 0) return 0;
  cudaMemsetAsync(amax_bits, 0, sizeof(unsigned), s);
  const unsigned g = std::min(blocks_for(n, 8), 2048u);  // grid-stride: a few thousand blocks, one atomic each
  auto* qq = reinterpret_cast<__nv_fp8_storage_t*>(q);
  if (x16) {
    amax_kernel<<<g, kThreads, 0, s>>>(static_cast<const uint16_t*>(x), n, amax_bits);
    to_fp8_kernel<<<g, kThreads, 0, s>>>(static_cast<const uint16_t*>(x), n, amax_bits, qq, scale);
  } else {
    amax_kernel<<<g, kThreads, 0, s>>>(static_cast<const float*>(x), n, amax_bits);
    to_fp8_kernel<<<g, kThreads, 0, s>>>(static_cast<const float*>(x), n, amax_bits, qq, scale);
  }
  return 2;
}

int f32_to_bf16(const float* x, int64_t n, uint16_t* y, cudaStream_t s) {
  if (n == 0) return 0;
  f32_to_bf16_kernel<<<blocks_for(n, 8), kThreads, 0, s>>>(x, n, y);
  return 1;
}

int quantize_rows_i8(const float* x, int64_t M, int64_t K, const float* inv_smooth, int8_t* q, float* scale,
                     cudaStream_t s) {
  if (M == 0) return 0;
  quantize_rows_kernel<<<static_cast<unsigned>(M), 256, 0, s>>>(x, K, inv_smooth, q, scale);
  return 1;
}

int dequant_i8(const int32_t* acc, int64_t M, int64_t N, const float* sx, const float* sw, const float* bias,
               const float* residual, float* y, cudaStream_t s) {
  if (M * N == 0) return 0;
  dequant_kernel<<<blocks_for(M * N, 4), kThreads, 0, s>>>(acc, M, N, sx, sw, bias, residual, y);
  return 1;
}

bool gemv_fits(int64_t M, int64_t K) { return M >= 1 && M <= 8 && K >= 1; }

int gemv(const float* x, int64_t M, int64_t K, const void* w, bool w_bf16, int64_t N, const float* bias,
         const float* residual, float* y, cudaStream_t s) {
  if (N == 0) return 0;
  return gemv_m<0>(x, M, K, w, w_bf16, N, bias, residual, y, nullptr, 0.f, s);
}

int gemv_pre(GemvPre pre, const float* x, int64_t M, int64_t K, const float* norm_w, float eps, const void* w,
             bool w_bf16, int64_t N, const float* bias, const float* residual, float* y, cudaStream_t s) {
  if (N == 0) return 0;
  if (pre == GemvPre::kRmsNorm) return gemv_m<1>(x, M, K, w, w_bf16, N, bias, residual, y, norm_w, eps, s);
  if (pre == GemvPre::kSwiGLU) return gemv_m<2>(x, M, K, w, w_bf16, N, bias, residual, y, nullptr, 0.f, s);
  return gemv_m<0>(x, M, K, w, w_bf16, N, bias, residual, y, nullptr, 0.f, s);
}

}  // namespace ev::cuda
