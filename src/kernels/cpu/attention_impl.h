// The tiled attention skeleton (row blocks x 64-key blocks, online softmax, split-K merge) and the f32
// micro-kernels, written over the SIMD wrappers of ops_simd.h. Included by attention.cpp (V8, AVX2) and
// attention_avx512.cpp (V16, plus the bf16 kernel traits defined there). Internal linkage on purpose: each
// includer gets its own copy compiled for its own instruction set.
//
// Vocabulary: for one batch element and one kv head hk, the "rows" are the (t, g) pairs of the G = Hq/Hkv query
// heads sharing hk, row r = t*G + g (t-major, so a block of rows covers few positions and causal blocks end
// early). Scores are kept in log2 units: q is pre-multiplied by scale*log2(e) and p = 2^(s - m).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops_simd.h"

namespace ev::cpu {
namespace {  // NOLINT(google-build-namespaces)

constexpr int kBc = 64;     // keys per block (one score tile row)
constexpr int kPanel = 16;  // keys per packed K panel
constexpr int kRg = 4;      // query rows per micro-tile
constexpr int kBr = 32;     // query rows per work item (multiple of kRg)
constexpr float kAttnLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Everything a work item needs about one batch element.
struct AttnJob {
  int64_t T = 0, S = 0, S_pad = 0;  // S_pad: S rounded up to kBc (packed buffers hold S_pad keys, zero padded)
  int Hq = 0, Hkv = 0, D = 0, G = 0;
  bool causal = false;
  int64_t q_offset = 0;
  float qscale = 1.f;  // scale * log2(e)
  const float* q = nullptr;  // [T, Hq*D] of this batch element
  const float* k = nullptr;  // [S, Hkv*D]
  const float* v = nullptr;
  float* out = nullptr;      // [T, Hq*D]
  int64_t q_stride = 0, kv_stride = 0;  // floats per token
  char* kpack = nullptr;  // packed K of head hk at kpack + hk * kpack_head_bytes (layout: traits)
  size_t kpack_head_bytes = 0;
  char* vpack = nullptr;
  size_t vpack_head_bytes = 0;
  int Dq = 0;  // elements per row of the Q buffer
  int Dp = 0;  // floats per row of the O tile (D rounded up to the vector width)
};

struct AttnItem {
  int hk;
  int64_t r0, r1;  // rows [r0, r1) of kv head hk
  int64_t k0, k1;  // keys [k0, k1)
  int64_t part;    // -1: write the output; else index of this item's partial state (split keys)
};

// Partial softmax state of one item when keys are split: per row m, l, then Dp floats of O.
inline int64_t part_row_floats(int Dp) { return Dp + 2; }

template <class F>
void parallel_dynamic(ThreadPool* pool, int64_t n, const F& fn) {
  if (n <= 0) return;
  if (pool == nullptr || pool->size() <= 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  pool->run_on_all([&](int, int) {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) break;
      fn(i);
    }
  });
}

template <class F>
void parallel_static(ThreadPool* pool, int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  if (pool == nullptr || pool->size() <= 1 || n <= grain) {
    fn(int64_t{0}, n);
    return;
  }
  pool->parallel_for(n, [&](int, int64_t b, int64_t e) { fn(b, e); }, grain);
}

// ---- online softmax over one micro-tile of scores ---------------------------------------------------------
// St [nr][kBc] scores (log2 units); valid[i] keys of row i are live. Updates m, l, writes alpha (the factor the
// row's O must be scaled by) and P [nr][kBc] (zeros past valid).
template <class Tr>
inline void softmax_rows(int nr, const float* St, const int* valid, float* m, float* l, float* alpha,
                         typename Tr::PT* P) {
  using V = typename Tr::V;
  using R = typename V::R;
  for (int i = 0; i < nr; ++i) {
    const float* s = St + i * kBc;
    typename Tr::PT* p = P + i * kBc;
    const int nv = valid[i];
    if (nv == 0) {
      alpha[i] = 1.f;
      for (int j = 0; j < kBc; j += V::N) Tr::store_p(p + j, V::zero());
      continue;
    }
    R mx = V::set1(kNegInf);
    int j = 0;
    for (; j + V::N <= nv; j += V::N) mx = V::max(V::load(s + j), mx);
    float mxs = V::hmax(mx);
    for (; j < nv; ++j) mxs = std::max(mxs, s[j]);
    const float mnew = std::max(m[i], mxs);
    alpha[i] = std::exp2(m[i] - mnew);  // m[i] = -inf (first live block) gives 0: O and l are still 0
    const R mv = V::set1(mnew);
    R sum = V::zero();
    j = 0;
    for (; j + V::N <= nv; j += V::N) {
      const R e = Tr::exp2(V::sub(V::load(s + j), mv));
      sum = V::add(sum, e);
      Tr::store_p(p + j, e);
    }
    if (j < nv) {
      const R e = V::keep_n(Tr::exp2(V::sub(V::load(s + j), mv)), nv - j);
      sum = V::add(sum, e);
      Tr::store_p(p + j, e);
      j += V::N;
    }
    for (; j < kBc; j += V::N) Tr::store_p(p + j, V::zero());
    l[i] = l[i] * alpha[i] + V::hsum(sum);
    m[i] = mnew;
  }
}

// ---- one work item --------------------------------------------------------------------------------------------
template <class Tr>
void run_item(const AttnJob& job, const AttnItem& it, float* part) {
  using QT = typename Tr::QT;
  using PT = typename Tr::PT;
  thread_local std::vector<QT> qbuf;
  thread_local std::vector<float> obuf, st;
  thread_local std::vector<PT> pt;
  if (qbuf.size() < static_cast<size_t>(kBr) * job.Dq) qbuf.resize(static_cast<size_t>(kBr) * job.Dq);
  if (obuf.size() < static_cast<size_t>(kBr) * job.Dp) obuf.resize(static_cast<size_t>(kBr) * job.Dp);
  if (st.size() < static_cast<size_t>(kRg) * kBc) st.resize(static_cast<size_t>(kRg) * kBc);
  if (pt.size() < static_cast<size_t>(kRg) * kBc) pt.resize(static_cast<size_t>(kRg) * kBc);

  const int R = static_cast<int>(it.r1 - it.r0);
  const int D = job.D;
  int64_t lim[kBr];
  float m[kBr], l[kBr], alpha[kRg];
  int64_t maxlim = 0;
  for (int i = 0; i < R; ++i) {
    const int64_t r = it.r0 + i, t = r / job.G, hq = static_cast<int64_t>(it.hk) * job.G + r % job.G;
    Tr::load_q(job.q + t * job.q_stride + hq * D, job.qscale, D, qbuf.data() + static_cast<size_t>(i) * job.Dq);
    lim[i] = std::min(it.k1, job.causal ? std::min(job.S, job.q_offset + t + 1) : job.S);
    maxlim = std::max(maxlim, lim[i]);
    m[i] = kNegInf;
    l[i] = 0.f;
  }
  std::fill(obuf.begin(), obuf.begin() + static_cast<size_t>(R) * job.Dp, 0.f);

  for (int64_t kb = it.k0; kb < maxlim; kb += kBc) {
    for (int rg = 0; rg < R; rg += kRg) {
      const int nr = std::min(kRg, R - rg);
      int valid[kRg];
      int nk = 0;
      for (int i = 0; i < nr; ++i) {
        valid[i] = static_cast<int>(std::clamp<int64_t>(lim[rg + i] - kb, 0, kBc));
        nk = std::max(nk, valid[i]);
      }
      if (nk == 0) continue;  // causal: these rows are done
      Tr::qk(nr, qbuf.data() + static_cast<size_t>(rg) * job.Dq, job, it.hk, kb, nk, st.data());
      softmax_rows<Tr>(nr, st.data(), valid, m + rg, l + rg, alpha, pt.data());
      Tr::pv(nr, pt.data(), job, it.hk, kb, nk, obuf.data() + static_cast<size_t>(rg) * job.Dp, alpha);
    }
  }

  if (part == nullptr) {
    for (int i = 0; i < R; ++i) {
      const int64_t r = it.r0 + i, t = r / job.G, hq = static_cast<int64_t>(it.hk) * job.G + r % job.G;
      float* dst = job.out + t * job.q_stride + hq * D;
      const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
      const float* o = obuf.data() + static_cast<size_t>(i) * job.Dp;
      for (int d = 0; d < D; ++d) dst[d] = o[d] * inv;
    }
  } else {
    const int64_t rf = part_row_floats(job.Dp);
    for (int i = 0; i < R; ++i) {
      float* dst = part + i * rf;
      dst[0] = m[i];
      dst[1] = l[i];
      std::memcpy(dst + 2, obuf.data() + static_cast<size_t>(i) * job.Dp, static_cast<size_t>(job.Dp) * 4);
    }
  }
}

// ---- driver ---------------------------------------------------------------------------------------------------
template <class Tr>
void run_attention(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                   ThreadPool* pool, bool head_major = true) {
  using V = typename Tr::V;
  if (a.B == 0 || a.T == 0) return;
  const int G = a.Hq / a.Hkv;
  AttnJob job;
  job.T = a.T;
  job.S = a.S;
  job.S_pad = round_up(std::max<int64_t>(a.S, 1), kBc);
  job.Hq = a.Hq;
  job.Hkv = a.Hkv;
  job.D = a.D;
  job.G = G;
  job.causal = a.causal;
  job.q_offset = a.q_offset;
  job.qscale = a.scale * kAttnLog2e;
  job.q_stride = static_cast<int64_t>(a.Hq) * a.D;
  job.kv_stride = static_cast<int64_t>(a.Hkv) * a.D;
  job.Dq = Tr::q_row_elems(a.D);
  job.Dp = static_cast<int>(round_up(a.D, V::N));
  job.kpack_head_bytes = Tr::kpack_head_bytes(job.S_pad, a.D);
  job.vpack_head_bytes = Tr::vpack_head_bytes(job.S_pad, a.D);

  if (a.S == 0) {  // no key to attend to: zeros, like the reference
    std::fill(out, out + a.B * a.T * job.q_stride, 0.f);
    return;
  }

  // Work items: (row block, kv head, key split); the key split only when there are too few items for the pool.
  const int nt = pool ? pool->size() : 1;
  const int64_t rows = a.T * G;
  const int64_t nblk = (rows + kBr - 1) / kBr;
  const int64_t base = static_cast<int64_t>(a.Hkv) * nblk;
  int64_t nsplit = 1;
  if (nt > 1 && base < 2 * nt) nsplit = std::min<int64_t>((2 * nt + base - 1) / base, (a.S + 255) / 256);
  nsplit = std::max<int64_t>(nsplit, 1);
  const int64_t split_len = round_up((a.S + nsplit - 1) / nsplit, kBc);
  nsplit = (a.S + split_len - 1) / split_len;
  std::vector<AttnItem> items;
  items.reserve(static_cast<size_t>(base * nsplit));
  // Head-major: consecutive items (which the threads take in turn) read the same kv head, whose packed K and V
  // (512 KB for a SigLIP head of 1024 keys) then stay in each core's L2; block-major order made every item of a
  // thread read another head, streaming all heads' K and V (6 MB for SigLIP) from L3. Within a head the costliest
  // (last causal) row blocks come first, so the cheap ones fill the gaps at the end.
  // (head_major = false: the previous order, block-major, kept for kTiledF32V1.)
  for (int64_t o1 = 0; o1 < (head_major ? a.Hkv : nblk); ++o1)
    for (int64_t o2 = 0; o2 < (head_major ? nblk : a.Hkv); ++o2)
      for (int64_t s = 0; s < nsplit; ++s) {
        const int hk = static_cast<int>(head_major ? o1 : o2);
        const int64_t blk = nblk - 1 - (head_major ? o2 : o1);
        items.push_back({hk, blk * kBr, std::min(rows, (blk + 1) * kBr), s * split_len,
                         std::min(a.S, (s + 1) * split_len),
                         nsplit > 1 ? static_cast<int64_t>(items.size()) : int64_t{-1}});
      }
  const int64_t prf = part_row_floats(job.Dp);
  std::vector<float> parts(nsplit > 1 ? items.size() * kBr * static_cast<size_t>(prf) : 0);

  // Packed K/V buffers are reused across calls (the calling thread keeps them): prefill sizes are a few MB and
  // fresh pages would cost more to fault in than the packing itself.
  thread_local std::vector<char> kbuf, vbuf;
  const size_t kbytes = job.kpack_head_bytes * static_cast<size_t>(a.Hkv) + 64;
  const size_t vbytes = job.vpack_head_bytes * static_cast<size_t>(a.Hkv) + 64;
  if (Tr::kPack) {
    if (kbuf.size() < kbytes) kbuf.resize(kbytes);
    if (vbuf.size() < vbytes) vbuf.resize(vbytes);
    // 64-byte align the start (vector loads of whole panels)
    job.kpack = kbuf.data() + ((64 - reinterpret_cast<uintptr_t>(kbuf.data()) % 64) % 64);
    job.vpack = vbuf.data() + ((64 - reinterpret_cast<uintptr_t>(vbuf.data()) % 64) % 64);
  }

  for (int64_t b = 0; b < a.B; ++b) {
    job.q = q + b * a.T * job.q_stride;
    job.out = out + b * a.T * job.q_stride;
    job.k = k + b * a.S * job.kv_stride;
    job.v = v + b * a.S * job.kv_stride;
    if (Tr::kPack) {
      const int64_t nkb = job.S_pad / kBc;
      parallel_static(pool, a.Hkv * nkb, 4, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u) {
          const int hk = static_cast<int>(u / nkb);
          const int64_t kb = (u % nkb) * kBc;
          Tr::pack(job, hk, kb, kb + kBc);
        }
      });
    }
    parallel_dynamic(pool, static_cast<int64_t>(items.size()), [&](int64_t i) {
      const AttnItem& it = items[static_cast<size_t>(i)];
      float* part = it.part >= 0 ? parts.data() + it.part * kBr * prf : nullptr;
      if constexpr (requires { Tr::kOwnItem; })  // a kernel with its own item loop (the AVX-512 tiled f32 one)
        Tr::run_item(job, it, part);
      else
        run_item<Tr>(job, it, part);
    });
    if (nsplit > 1) {
      // Merge the key splits of each (row block, kv head): O = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s.
      for (size_t i0 = 0; i0 < items.size(); i0 += static_cast<size_t>(nsplit)) {
        const AttnItem& it = items[i0];
        for (int64_t r = it.r0; r < it.r1; ++r) {
          const int64_t i = r - it.r0;
          float M = kNegInf;
          for (int64_t s = 0; s < nsplit; ++s) M = std::max(M, parts[((i0 + s) * kBr + i) * prf]);
          const int64_t t = r / G, hq = static_cast<int64_t>(it.hk) * G + r % G;
          float* dst = job.out + t * job.q_stride + hq * a.D;
          std::fill(dst, dst + a.D, 0.f);
          if (M == kNegInf) continue;
          float L = 0.f;
          for (int64_t s = 0; s < nsplit; ++s) {
            const float* ps = parts.data() + ((i0 + s) * kBr + i) * prf;
            const float w = std::exp2(ps[0] - M);
            L += w * ps[1];
            for (int d = 0; d < a.D; ++d) dst[d] += w * ps[2 + d];
          }
          const float inv = L > 0.f ? 1.f / L : 0.f;
          for (int d = 0; d < a.D; ++d) dst[d] *= inv;
        }
      }
    }
  }
}

// ---- f32 kernels ------------------------------------------------------------------------------------------

// K panels (f32): keys [16p, 16p+16) of a head as [D][16], zero-padded past S. One panel = D*64 bytes.
template <class V, int NR>
void qk_f32_packed(const float* q, int Dq, const float* kp, int64_t kb, int D, float* st) {
  constexpr int C = V::N == 16 ? 4 : 2;  // vector registers along the keys per pass
  constexpr int KW = C * V::N;            // keys per pass
  for (int ko = 0; ko < kBc; ko += KW) {
    typename V::R acc[NR][C];
    const float* pc[C];
    for (int c = 0; c < C; ++c) {
      const int64_t key = kb + ko + c * V::N;
      pc[c] = kp + (key / kPanel) * static_cast<int64_t>(D) * kPanel + key % kPanel;
      for (int i = 0; i < NR; ++i) acc[i][c] = V::zero();
    }
    for (int d = 0; d < D; ++d) {
      typename V::R kv[C];
      for (int c = 0; c < C; ++c) kv[c] = V::load(pc[c] + d * kPanel);
      for (int i = 0; i < NR; ++i) {
        const typename V::R qb = V::set1(q[i * Dq + d]);
        for (int c = 0; c < C; ++c) acc[i][c] = V::fmadd(qb, kv[c], acc[i][c]);
      }
    }
    for (int i = 0; i < NR; ++i)
      for (int c = 0; c < C; ++c) V::store(st + i * kBc + ko + c * V::N, acc[i][c]);
  }
}

// Scores straight from K rows (no packing): one dot product per (row, key).
template <class V>
void qk_f32_direct(int nr, const float* q, int Dq, const float* krows, int64_t kv_stride, int nk, int D,
                   float* st) {
  for (int j = 0; j < nk; ++j) {
    const float* kr = krows + j * kv_stride;
    for (int i = 0; i < nr; ++i) {
      const float* qr = q + i * Dq;
      typename V::R a0 = V::zero(), a1 = V::zero();
      int d = 0;
      for (; d + 2 * V::N <= D; d += 2 * V::N) {
        a0 = V::fmadd(V::load(qr + d), V::load(kr + d), a0);
        a1 = V::fmadd(V::load(qr + d + V::N), V::load(kr + d + V::N), a1);
      }
      for (; d + V::N <= D; d += V::N) a0 = V::fmadd(V::load(qr + d), V::load(kr + d), a0);
      if (d < D) a1 = V::fmadd(V::load_n(qr + d, D - d), V::load_n(kr + d, D - d), a1);
      st[i * kBc + j] = V::hsum(V::add(a0, a1));
    }
  }
}

// O[i][c0*N .. (c0+NC)*N) = alpha_i O + sum_j P[i][j] V[j] for NC vector registers along D starting at c0.
template <class V, int NR, int NC, bool kTail>
void pv_f32_chunk(const float* P, const float* vrows, int64_t vstride, int nk, float* O, int Dp, const float* alpha,
                  int c0, int tail_n) {
  typename V::R acc[NR][NC];
  for (int i = 0; i < NR; ++i) {
    const typename V::R al = V::set1(alpha[i]);
    for (int c = 0; c < NC; ++c) acc[i][c] = V::mul(V::load(O + i * Dp + (c0 + c) * V::N), al);
  }
  for (int j = 0; j < nk; ++j) {
    const float* vr = vrows + j * vstride + c0 * V::N;
    typename V::R vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = (kTail && c == NC - 1) ? V::load_n(vr + c * V::N, tail_n) : V::load(vr + c * V::N);
    for (int i = 0; i < NR; ++i) {
      const typename V::R pb = V::set1(P[i * kBc + j]);
      for (int c = 0; c < NC; ++c) acc[i][c] = V::fmadd(pb, vv[c], acc[i][c]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < NC; ++c) V::store(O + i * Dp + (c0 + c) * V::N, acc[i][c]);
}

template <class V, int NR>
void pv_f32_rows(const float* P, const float* vrows, int64_t vstride, int nk, float* O, int Dp, int D,
                 const float* alpha) {
  constexpr int CMAX = V::N == 16 ? 4 : 2;
  const int nfull = D / V::N, tail = D % V::N;
  int c0 = 0;
  for (; c0 + CMAX <= nfull; c0 += CMAX) pv_f32_chunk<V, NR, CMAX, false>(P, vrows, vstride, nk, O, Dp, alpha, c0, 0);
  for (; c0 < nfull; ++c0) pv_f32_chunk<V, NR, 1, false>(P, vrows, vstride, nk, O, Dp, alpha, c0, 0);
  if (tail) pv_f32_chunk<V, NR, 1, true>(P, vrows, vstride, nk, O, Dp, alpha, c0, tail);
}

template <class VV, bool kDirect>
struct F32Traits {
  using V = VV;
  using QT = float;
  using PT = float;
  static constexpr bool kPack = !kDirect;
  static int q_row_elems(int D) { return D; }
  static size_t kpack_head_bytes(int64_t S_pad, int D) { return kDirect ? 0 : static_cast<size_t>(S_pad) * D * 4; }
  static size_t vpack_head_bytes(int64_t, int) { return 0; }
  static void load_q(const float* src, float qscale, int D, float* dst) {
    for (int d = 0; d < D; ++d) dst[d] = src[d] * qscale;
  }
  static typename V::R exp2(typename V::R x) { return exp2v<V>(x); }
  static void store_p(float* dst, typename V::R p) { V::store(dst, p); }

  // K panels for keys [kb0, kb1) of head hk.
  static void pack(const AttnJob& job, int hk, int64_t kb0, int64_t kb1) {
    const int D = job.D;
    float* kp = reinterpret_cast<float*>(job.kpack + hk * job.kpack_head_bytes);
    for (int64_t j = kb0; j < kb1; ++j) {
      float* dst = kp + (j / kPanel) * static_cast<int64_t>(D) * kPanel + j % kPanel;
      if (j < job.S) {
        const float* src = job.k + j * job.kv_stride + static_cast<int64_t>(hk) * D;
        for (int d = 0; d < D; ++d) dst[d * kPanel] = src[d];
      } else {
        for (int d = 0; d < D; ++d) dst[d * kPanel] = 0.f;
      }
    }
  }

  static void qk(int nr, const float* q, const AttnJob& job, int hk, int64_t kb, int nk, float* st) {
    if (kDirect) {
      qk_f32_direct<V>(nr, q, job.Dq, job.k + kb * job.kv_stride + static_cast<int64_t>(hk) * job.D, job.kv_stride,
                       nk, job.D, st);
      return;
    }
    const float* kp = reinterpret_cast<const float*>(job.kpack + hk * job.kpack_head_bytes);
    switch (nr) {
      case 4: qk_f32_packed<V, 4>(q, job.Dq, kp, kb, job.D, st); break;
      case 3: qk_f32_packed<V, 3>(q, job.Dq, kp, kb, job.D, st); break;
      case 2: qk_f32_packed<V, 2>(q, job.Dq, kp, kb, job.D, st); break;
      default: qk_f32_packed<V, 1>(q, job.Dq, kp, kb, job.D, st); break;
    }
  }

  static void pv(int nr, const float* P, const AttnJob& job, int hk, int64_t kb, int nk, float* O,
                 const float* alpha) {
    const float* vrows = job.v + kb * job.kv_stride + static_cast<int64_t>(hk) * job.D;
    switch (nr) {
      case 4: pv_f32_rows<V, 4>(P, vrows, job.kv_stride, nk, O, job.Dp, job.D, alpha); break;
      case 3: pv_f32_rows<V, 3>(P, vrows, job.kv_stride, nk, O, job.Dp, job.D, alpha); break;
      case 2: pv_f32_rows<V, 2>(P, vrows, job.kv_stride, nk, O, job.Dp, job.D, alpha); break;
      default: pv_f32_rows<V, 1>(P, vrows, job.kv_stride, nk, O, job.Dp, job.D, alpha); break;
    }
  }
};

}  // namespace
}  // namespace ev::cpu
