// AVX-512 attention kernels: the f32 kernels of attention_impl.h over 16-wide vectors, and the BF16 kernel
// (vdpbf16ps for both q k^T and p v). Compiled with the AVX-512 flags (see CMakeLists.txt); attention.cpp calls
// in only when cpu_features() reports the instructions.
#include <immintrin.h>

#include "kernels/cpu/attention_impl.h"

namespace ev::cpu {
namespace {

// ---- BF16 kernel ----------------------------------------------------------------------------------------------
// Layouts (bf16 = uint16_t; a "pair" is two bf16 packed in 32 bits, the unit vdpbf16ps multiplies and adds):
//   Q buffer   [rows][D]: q * scale * log2(e) rounded to bf16; pair p of a row = (q[2p], q[2p+1]).
//   K panels   per head [S_pad/16][D/2][16 keys][2]: for pair p, the 16 keys' (k[2p], k[2p+1]) side by side, so
//              one 64-byte load gives 16 keys and vdpbf16ps with a broadcast q pair adds q[2p]k[2p]+q[2p+1]k[2p+1]
//              to 16 scores at once.
//   V pairs    per head [S_pad/2][D][2]: for key pair jp, (v[2jp][d], v[2jp+1][d]) side by side, so with a
//              broadcast (p[2jp], p[2jp+1]) pair vdpbf16ps adds 2 keys' contributions to 16 output dims at once.
//   P          [rows][64]: probabilities rounded to bf16 (zero past the live keys).
inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }
inline __m256i bf16x16(__m512 v) {
  __m256bh b = _mm512_cvtneps_pbh(v);
  return reinterpret_cast<__m256i&>(b);
}

// Scores of NR rows against the 64 keys [kb, kb+64): 4 panels, one accumulator per (row, panel).
template <int NR>
void qk_bf16(const uint16_t* q, int D, const uint16_t* kp, int64_t kb, float* st) {
  const uint32_t* q32 = reinterpret_cast<const uint32_t*>(q);
  const int half = D / 2;
  const uint16_t* pc[4];
  for (int c = 0; c < 4; ++c) pc[c] = kp + (kb / kPanel + c) * static_cast<int64_t>(D) * kPanel;
  __m512 acc[NR][4];
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_setzero_ps();
  for (int p = 0; p < half; ++p) {
    __m512i kv[4];
    for (int c = 0; c < 4; ++c) kv[c] = _mm512_load_si512(pc[c] + p * 2 * kPanel);
    for (int i = 0; i < NR; ++i) {
      const __m512bh qb = as_bh(_mm512_set1_epi32(static_cast<int>(q32[i * half + p])));
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], qb, as_bh(kv[c]));
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(st + i * kBc + c * 16, acc[i][c]);
}

// O[i][c0*16 .. (c0+NC)*16) = alpha_i O + P[i] V over the key pairs [0, npairs) of this block.
template <int NR, int NC>
void pv_bf16_chunk(const uint16_t* P, const uint16_t* vp, int D, int npairs, float* O, int Dp, const float* alpha,
                   int c0) {
  const uint32_t* p32 = reinterpret_cast<const uint32_t*>(P);
  __m512 acc[NR][NC];
  for (int i = 0; i < NR; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
    for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_mul_ps(_mm512_loadu_ps(O + i * Dp + (c0 + c) * 16), al);
  }
  for (int jp = 0; jp < npairs; ++jp) {
    const uint16_t* vr = vp + static_cast<int64_t>(jp) * D * 2 + c0 * 32;
    __m512i vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_load_si512(vr + c * 32);
    for (int i = 0; i < NR; ++i) {
      const __m512bh pb = as_bh(_mm512_set1_epi32(static_cast<int>(p32[i * (kBc / 2) + jp])));
      for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], pb, as_bh(vv[c]));
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(O + i * Dp + (c0 + c) * 16, acc[i][c]);
}

template <int NR>
void pv_bf16_rows(const uint16_t* P, const uint16_t* vp, int D, int npairs, float* O, int Dp, const float* alpha) {
  const int nreg = D / 16;
  int c0 = 0;
  for (; c0 + 4 <= nreg; c0 += 4) pv_bf16_chunk<NR, 4>(P, vp, D, npairs, O, Dp, alpha, c0);
  for (; c0 + 2 <= nreg; c0 += 2) pv_bf16_chunk<NR, 2>(P, vp, D, npairs, O, Dp, alpha, c0);
  for (; c0 < nreg; ++c0) pv_bf16_chunk<NR, 1>(P, vp, D, npairs, O, Dp, alpha, c0);
}

struct Bf16Traits {
  using V = V16;
  using QT = uint16_t;
  using PT = uint16_t;
  static constexpr bool kPack = true;
  static int q_row_elems(int D) { return D; }
  static size_t kpack_head_bytes(int64_t S_pad, int D) { return static_cast<size_t>(S_pad) * D * 2; }
  static size_t vpack_head_bytes(int64_t S_pad, int D) { return static_cast<size_t>(S_pad) * D * 2; }

  static void load_q(const float* src, float qscale, int D, uint16_t* dst) {  // D % 16 == 0
    const __m512 s = _mm512_set1_ps(qscale);
    for (int d = 0; d < D; d += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), bf16x16(_mm512_mul_ps(_mm512_loadu_ps(src + d), s)));
  }
  // p is rounded to bf16 right after, so the cheaper degree-4 exp2 (rel. error 3.5e-6 << 2^-8) suffices.
  static __m512 exp2(__m512 x) { return exp2v_lowp<V16>(x); }
  static void store_p(uint16_t* dst, __m512 p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bf16x16(p));
  }

  // Packs keys [kb0, kb1) (a multiple of 16 apart, kb0 even) of head hk into K panels and V pairs.
  static void pack(const AttnJob& job, int hk, int64_t kb0, int64_t kb1) {
    const int D = job.D, half = D / 2;
    const int64_t hoff = static_cast<int64_t>(hk) * D;
    uint32_t* kp = reinterpret_cast<uint32_t*>(job.kpack + hk * job.kpack_head_bytes);
    alignas(64) uint32_t row[512];  // one key's bf16 pairs (D <= 1024)
    for (int64_t j = kb0; j < kb1; ++j) {
      if (j < job.S) {
        const float* src = job.k + j * job.kv_stride + hoff;
        for (int d = 0; d < D; d += 16)
          _mm256_store_si256(reinterpret_cast<__m256i*>(reinterpret_cast<uint16_t*>(row) + d),
                             bf16x16(_mm512_loadu_ps(src + d)));
      } else {
        std::memset(row, 0, static_cast<size_t>(D) * 2);
      }
      // pair p of key j -> panel j/16, slot p*16 + j%16 (in 32-bit units)
      uint32_t* dst = kp + (j / kPanel) * static_cast<int64_t>(half) * kPanel + j % kPanel;
      for (int p = 0; p < half; ++p) dst[p * kPanel] = row[p];
    }
    uint16_t* vp = reinterpret_cast<uint16_t*>(job.vpack + hk * job.vpack_head_bytes);
    for (int64_t j = kb0; j < kb1; j += 2) {
      const float* va = job.v + j * job.kv_stride + hoff;
      const float* vb = va + job.kv_stride;
      const bool has_a = j < job.S, has_b = j + 1 < job.S;
      uint16_t* dst = vp + (j / 2) * static_cast<int64_t>(D) * 2;
      for (int d = 0; d < D; d += 16) {
        const __m512i a = _mm512_cvtepu16_epi32(has_a ? bf16x16(_mm512_loadu_ps(va + d)) : _mm256_setzero_si256());
        const __m512i b = _mm512_cvtepu16_epi32(has_b ? bf16x16(_mm512_loadu_ps(vb + d)) : _mm256_setzero_si256());
        _mm512_store_si512(dst + d * 2, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
      }
    }
  }

  static void qk(int nr, const uint16_t* q, const AttnJob& job, int hk, int64_t kb, int /*nk*/, float* st) {
    const uint16_t* kp = reinterpret_cast<const uint16_t*>(job.kpack + hk * job.kpack_head_bytes);
    switch (nr) {
      case 4: qk_bf16<4>(q, job.D, kp, kb, st); break;
      case 3: qk_bf16<3>(q, job.D, kp, kb, st); break;
      case 2: qk_bf16<2>(q, job.D, kp, kb, st); break;
      default: qk_bf16<1>(q, job.D, kp, kb, st); break;
    }
  }

  static void pv(int nr, const uint16_t* P, const AttnJob& job, int hk, int64_t kb, int nk, float* O,
                 const float* alpha) {
    const uint16_t* vp =
        reinterpret_cast<const uint16_t*>(job.vpack + hk * job.vpack_head_bytes) + (kb / 2) * job.D * 2;
    const int npairs = (nk + 1) / 2;
    switch (nr) {
      case 4: pv_bf16_rows<4>(P, vp, job.D, npairs, O, job.Dp, alpha); break;
      case 3: pv_bf16_rows<3>(P, vp, job.D, npairs, O, job.Dp, alpha); break;
      case 2: pv_bf16_rows<2>(P, vp, job.D, npairs, O, job.Dp, alpha); break;
      default: pv_bf16_rows<1>(P, vp, job.D, npairs, O, job.Dp, alpha); break;
    }
  }
};

// ---- tiled F32 kernel ---------------------------------------------------------------------------------------
// Layouts per kv head: K panels [S_pad/16][D][16] (as F32Traits: one 64-byte load = 16 keys at one d), V rows
// [S_pad][Dp] (Dp = D rounded up to 16, zero padded; rows past S zero). Packing V costs one copy of V (3 MB for a
// SigLIP layer, ~1% of the attention time) and makes a 64-key V block 16 KB of consecutive lines: read in place
// at a stride of Hkv*D floats (3072 bytes for SigLIP) the block fell into 16 of the 64 L1 sets and came from L2.
//
// One micro-tile = NR <= 4 query rows x 16*NC <= 64 keys. Per tile, on 4 x 4 zmm accumulators:
//   q k^T: per d, 4 K loads + 4 q broadcasts feed 16 FMAs;
//   softmax in registers: masked lanes (causal, past S) set to -inf, row max by butterfly (all lanes), the 4 rows'
//     new maxima gathered in one vector so the rescale factors alpha = 2^(m_old - m_new) cost one exp2 per tile,
//     p = 2^(s - m_new) (degree-6 polynomial, as exp2v), row sums kept as 16-lane partial sums L (reduced once at
//     the end), p stored to a [4][64] scratch that stays in L1;
//   p v: O rows (4 x Dp floats in L1) loaded and scaled by alpha once, then per key 4 V loads + 4 p broadcasts feed
//     16 FMAs.

// Keeps v in a register: without it GCC folds the K / V load into every FMA that uses it (4 loads of the same
// 64 bytes per key or per d instead of 1, so 20 loads per 16 FMAs: the loads, not the FMAs, became the limit).
inline void in_reg(__m512& v) { asm("" : "+v"(v)); }

inline __m512 allmax16(__m512 x) {  // every lane = max of the 16 lanes
  x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 3, 0, 1)));
  x = _mm512_max_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm512_max_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)));
}

// 2^x for x <= 0 (s - m with m the row max): exp2v without the upper clamp. The lower clamp stays: it maps -inf and
// NaN (masked lanes, zeroed afterwards) and huge negative x to 2^-126.
inline __m512 exp2_nonpos(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(kExp2Min));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(kExp2C6[6]);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6[5]));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6[4]));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6[3]));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6[2]));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6[1]));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6[0]));
  return _mm512_scalef_ps(p, n);
}

// Scores of NR rows (q: pre-scaled, Dq apart) against keys [0, 16*NC) of the panels at kp, then the online
// softmax step: updates m[0..NR) and L[NR][16], writes alpha[0..16) and P[NR][kBc] (entries [0, 16*NC)).
// kMask: some row sees fewer than 16*NC keys (valid[i]).
template <int NR, int NC, bool kMask>
void qk_softmax_f32(const float* q, int Dq, const float* kp, int D, const int* valid, float* m, float* L,
                    float* alpha, float* P) {
  __m512 acc[NR][NC];
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_setzero_ps();
  const int64_t pstride = static_cast<int64_t>(D) * kPanel;
  for (int d = 0; d < D; ++d) {
    __m512 kv[NC];
    for (int c = 0; c < NC; ++c) {
      kv[c] = _mm512_load_ps(kp + c * pstride + d * kPanel);
      if constexpr (NR > 1) in_reg(kv[c]);
    }
    for (int i = 0; i < NR; ++i) {
      const __m512 qb = _mm512_set1_ps(q[i * Dq + d]);
      for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_fmadd_ps(qb, kv[c], acc[i][c]);
    }
  }
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
  __mmask16 mk[NR][NC];
  if constexpr (kMask) {
    for (int i = 0; i < NR; ++i)
      for (int c = 0; c < NC; ++c) {
        const int n = std::clamp(valid[i] - c * 16, 0, 16);
        mk[i][c] = static_cast<__mmask16>((1u << n) - 1u);
        acc[i][c] = _mm512_mask_mov_ps(neg_inf, mk[i][c], acc[i][c]);
      }
  }
  // New row maxima in lanes 0..NR-1 of one vector (lanes >= NR: -inf, and m is only stored for lanes < NR).
  __m512 rmax = neg_inf;
  for (int i = 0; i < NR; ++i) {
    __m512 x = acc[i][0];
    for (int c = 1; c < NC; ++c) x = _mm512_max_ps(x, acc[i][c]);
    rmax = _mm512_mask_mov_ps(rmax, static_cast<__mmask16>(1u << i), allmax16(x));
  }
  constexpr __mmask16 rows = static_cast<__mmask16>((1u << NR) - 1u);
  const __m512 mold = _mm512_mask_loadu_ps(neg_inf, rows, m);
  const __m512 mnew = _mm512_max_ps(mold, rmax);
  // alpha: 1 when the max did not move; m_old = -inf gives 2^-126 (clamped), harmless since O and L are still 0.
  const __m512 al = exp2_nonpos(_mm512_sub_ps(mold, mnew));
  _mm512_mask_storeu_ps(m, rows, mnew);
  _mm512_storeu_ps(alpha, al);
  for (int i = 0; i < NR; ++i) {
    const __m512i lane = _mm512_set1_epi32(i);
    const __m512 mb = _mm512_permutexvar_ps(lane, mnew);
    __m512 sum = _mm512_setzero_ps();
    for (int c = 0; c < NC; ++c) {
      __m512 e = exp2_nonpos(_mm512_sub_ps(acc[i][c], mb));
      if constexpr (kMask) e = _mm512_maskz_mov_ps(mk[i][c], e);
      _mm512_store_ps(P + i * kBc + c * 16, e);
      sum = _mm512_add_ps(sum, e);
    }
    _mm512_store_ps(L + i * 16, _mm512_fmadd_ps(_mm512_load_ps(L + i * 16), _mm512_permutexvar_ps(lane, al), sum));
  }
}

// O[i][c0*16 .. (c0+NC)*16) = alpha_i O + sum_{j < nk} P[i][j] V[j] (V rows Dp floats apart, O rows Dp apart).
template <int NR, int NC>
void pv_f32_packed(const float* P, const float* vp, int Dp, int nk, float* O, const float* alpha, int c0) {
  __m512 acc[NR][NC];
  for (int i = 0; i < NR; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
    for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_mul_ps(_mm512_load_ps(O + i * Dp + (c0 + c) * 16), al);
  }
  const float* vr = vp + c0 * 16;
  for (int j = 0; j < nk; ++j, vr += Dp) {
    __m512 vv[NC];
    for (int c = 0; c < NC; ++c) {
      vv[c] = _mm512_load_ps(vr + c * 16);
      if constexpr (NR > 1) in_reg(vv[c]);
    }
    for (int i = 0; i < NR; ++i) {
      const __m512 pb = _mm512_set1_ps(P[i * kBc + j]);
      for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_fmadd_ps(pb, vv[c], acc[i][c]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int c = 0; c < NC; ++c) _mm512_store_ps(O + i * Dp + (c0 + c) * 16, acc[i][c]);
}

// The two halves of a tile, split so that run_item can interleave them across tiles (see there).
template <int NR>
void qk_softmax_tile(const float* q, int Dq, const float* kp, int D, const int* valid, int nk, bool masked, float* m,
                     float* L, float* alpha, float* P) {
  const int nc = (nk + 15) / 16;
#define EV_QKS(NC)                                                                 \
  (masked ? qk_softmax_f32<NR, NC, true>(q, Dq, kp, D, valid, m, L, alpha, P)     \
          : qk_softmax_f32<NR, NC, false>(q, Dq, kp, D, valid, m, L, alpha, P))
  switch (nc) {
    case 4: EV_QKS(4); break;
    case 3: EV_QKS(3); break;
    case 2: EV_QKS(2); break;
    default: EV_QKS(1); break;
  }
#undef EV_QKS
}

template <int NR>
void pv_tile(const float* P, const float* alpha, const float* vp, int Dp, int nk, float* O) {
  const int nreg = Dp / 16;
  int c0 = 0;
  for (; c0 + 4 <= nreg; c0 += 4) pv_f32_packed<NR, 4>(P, vp, Dp, nk, O, alpha, c0);
  switch (nreg - c0) {
    case 3: pv_f32_packed<NR, 3>(P, vp, Dp, nk, O, alpha, c0); break;
    case 2: pv_f32_packed<NR, 2>(P, vp, Dp, nk, O, alpha, c0); break;
    case 1: pv_f32_packed<NR, 1>(P, vp, Dp, nk, O, alpha, c0); break;
    default: break;
  }
}

struct F32TiledTraits {
  using V = V16;
  using QT = float;
  using PT = float;
  static constexpr bool kPack = true;
  static constexpr bool kOwnItem = true;
  static int q_row_elems(int D) { return D; }
  static size_t kpack_head_bytes(int64_t S_pad, int D) { return static_cast<size_t>(S_pad) * D * 4; }
  static size_t vpack_head_bytes(int64_t S_pad, int D) { return static_cast<size_t>(S_pad) * round_up(D, 16) * 4; }

  // K panels and V rows for keys [kb0, kb1) of head hk.
  // K: one gather per (panel, d) picks d of the panel's 16 keys (masked past S); 5x faster than 16 scalar stores per
  // key (measured: the scalar pack took 7% of a SigLIP layer on one thread, reading K cold from memory).
  static void pack(const AttnJob& job, int hk, int64_t kb0, int64_t kb1) {
    const int D = job.D, Dp = job.Dp;
    float* kp = reinterpret_cast<float*>(job.kpack + hk * job.kpack_head_bytes);
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(job.kv_stride)));
    for (int64_t j0 = kb0; j0 < kb1; j0 += kPanel) {  // kb0 is a multiple of 16
      float* dst = kp + (j0 / kPanel) * static_cast<int64_t>(D) * kPanel;
      const int n = static_cast<int>(std::clamp<int64_t>(job.S - j0, 0, kPanel));
      if (n == 0) {
        for (int d = 0; d < D; ++d) _mm512_store_ps(dst + d * kPanel, _mm512_setzero_ps());
        continue;
      }
      const __mmask16 live = static_cast<__mmask16>((1u << n) - 1u);
      const float* src = job.k + j0 * job.kv_stride + static_cast<int64_t>(hk) * D;
      for (int d = 0; d < D; ++d)
        _mm512_store_ps(dst + d * kPanel, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, idx, src + d, 4));
    }
    float* vp = reinterpret_cast<float*>(job.vpack + hk * job.vpack_head_bytes);
    for (int64_t j = kb0; j < kb1; ++j) {
      float* dst = vp + j * Dp;
      int d = 0;
      if (j < job.S) {
        const float* src = job.v + j * job.kv_stride + static_cast<int64_t>(hk) * D;
        for (; d + 16 <= D; d += 16) _mm512_store_ps(dst + d, _mm512_loadu_ps(src + d));
        if (d < D) _mm512_store_ps(dst + d, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (D - d)) - 1u), src + d));
      } else {
        for (; d < Dp; d += 16) _mm512_store_ps(dst + d, _mm512_setzero_ps());
      }
    }
  }

  static void run_item(const AttnJob& job, const AttnItem& it, float* part) {
    const int D = job.D, Dp = job.Dp;
    thread_local std::vector<float> qbuf, obuf, lbuf, pbuf;
    // +16: room to align the starts to 64 bytes (aligned loads and stores of O, L and P)
    if (qbuf.size() < static_cast<size_t>(kBr) * D) qbuf.resize(static_cast<size_t>(kBr) * D);
    if (obuf.size() < static_cast<size_t>(kBr) * Dp + 16) obuf.resize(static_cast<size_t>(kBr) * Dp + 16);
    if (lbuf.size() < static_cast<size_t>(kBr) * 16 + 16) lbuf.resize(static_cast<size_t>(kBr) * 16 + 16);
    if (pbuf.size() < 2 * static_cast<size_t>(kRg) * kBc + 16) pbuf.resize(2 * static_cast<size_t>(kRg) * kBc + 16);
    auto align = [](float* p) { return p + ((64 - reinterpret_cast<uintptr_t>(p) % 64) % 64) / 4; };
    float* O = align(obuf.data());
    float* L = align(lbuf.data());
    float* P = align(pbuf.data());
    float* Q = qbuf.data();
    alignas(64) float alpha[2 * 16];

    const int R = static_cast<int>(it.r1 - it.r0);
    int64_t lim[kBr];
    alignas(64) float m[kBr + 16];
    int64_t maxlim = 0;
    for (int i = 0; i < R; ++i) {
      const int64_t r = it.r0 + i, t = r / job.G, hq = static_cast<int64_t>(it.hk) * job.G + r % job.G;
      F32Traits<V16, false>::load_q(job.q + t * job.q_stride + hq * D, job.qscale, D, Q + static_cast<size_t>(i) * D);
      lim[i] = std::min(it.k1, job.causal ? std::min(job.S, job.q_offset + t + 1) : job.S);
      maxlim = std::max(maxlim, lim[i]);
      m[i] = kNegInf;
    }
    // The output rows are written at the end: fetch them for ownership now, while we compute (32 rows of SigLIP
    // are 128 lines 3 KB apart; waiting for them at the end cost ~2 us per item).
    if (part == nullptr)
      for (int i = 0; i < R; ++i) {
        const int64_t r = it.r0 + i, t = r / job.G, hq = static_cast<int64_t>(it.hk) * job.G + r % job.G;
        const char* dst = reinterpret_cast<const char*>(job.out + t * job.q_stride + hq * D);
        for (int b = 0; b < D * 4; b += 64) _mm_prefetch(dst + b, _MM_HINT_ET0);
      }
    std::fill(O, O + static_cast<size_t>(R) * Dp, 0.f);
    std::fill(L, L + static_cast<size_t>(R) * 16, 0.f);

    const float* kp = reinterpret_cast<const float*>(job.kpack + it.hk * job.kpack_head_bytes);
    const float* vp = reinterpret_cast<const float*>(job.vpack + it.hk * job.vpack_head_bytes);
    // Software pipeline over the tiles (key block outer, row group inner): the q k^T + softmax of tile n is issued
    // before the p v of tile n-1. The softmax ends in a long dependency chain (max butterfly, exp2, stores of P)
    // that p v of the same tile must wait for; with p v of the previous tile behind it in program order the FMA
    // ports stay busy while the chain resolves. Each tile in flight has its own P and alpha (two slots); m and L
    // are updated by q k^T + softmax, O only by p v, and tiles of the same rows stay in order.
    struct Pending {
      int nr = 0, nk = 0;
      const float* vpb = nullptr;
      float* O = nullptr;
    } pend[2];
    int slot = 0;
    auto run_pv = [&](int s) {
      const Pending& pd = pend[s];
      float* Ps = P + s * kRg * kBc;
      const float* as = alpha + s * 16;
      switch (pd.nr) {
        case 4: pv_tile<4>(Ps, as, pd.vpb, Dp, pd.nk, pd.O); break;
        case 3: pv_tile<3>(Ps, as, pd.vpb, Dp, pd.nk, pd.O); break;
        case 2: pv_tile<2>(Ps, as, pd.vpb, Dp, pd.nk, pd.O); break;
        default: pv_tile<1>(Ps, as, pd.vpb, Dp, pd.nk, pd.O); break;
      }
      pend[s].nr = 0;
    };
    for (int64_t kb = it.k0; kb < maxlim; kb += kBc) {
      const float* kpb = kp + kb * D;  // panel kb/16 starts at (kb/16) * D * 16 floats
      const float* vpb = vp + kb * Dp;
      for (int rg = 0; rg < R; rg += kRg) {
        const int nr = std::min(kRg, R - rg);
        int valid[kRg];
        int nk = 0;
        bool masked = false;
        for (int i = 0; i < nr; ++i) {
          valid[i] = static_cast<int>(std::clamp<int64_t>(lim[rg + i] - kb, 0, kBc));
          nk = std::max(nk, valid[i]);
        }
        if (nk == 0) continue;  // causal: these rows are done
        for (int i = 0; i < nr; ++i) masked |= valid[i] < (nk + 15) / 16 * 16;
        const float* qr = Q + static_cast<size_t>(rg) * D;
        float* Ps = P + slot * kRg * kBc;
        float* as = alpha + slot * 16;
        switch (nr) {
          case 4: qk_softmax_tile<4>(qr, D, kpb, D, valid, nk, masked, m + rg, L + rg * 16, as, Ps); break;
          case 3: qk_softmax_tile<3>(qr, D, kpb, D, valid, nk, masked, m + rg, L + rg * 16, as, Ps); break;
          case 2: qk_softmax_tile<2>(qr, D, kpb, D, valid, nk, masked, m + rg, L + rg * 16, as, Ps); break;
          default: qk_softmax_tile<1>(qr, D, kpb, D, valid, nk, masked, m + rg, L + rg * 16, as, Ps); break;
        }
        pend[slot] = {nr, nk, vpb, O + static_cast<size_t>(rg) * Dp};
        slot ^= 1;
        if (pend[slot].nr) run_pv(slot);  // the previous tile
      }
    }
    slot ^= 1;
    if (pend[slot].nr) run_pv(slot);  // the last tile

    const int64_t rf = part_row_floats(Dp);
    for (int i = 0; i < R; ++i) {
      const float l = _mm512_reduce_add_ps(_mm512_load_ps(L + i * 16));
      const float* o = O + static_cast<size_t>(i) * Dp;
      if (part == nullptr) {
        const int64_t r = it.r0 + i, t = r / job.G, hq = static_cast<int64_t>(it.hk) * job.G + r % job.G;
        float* dst = job.out + t * job.q_stride + hq * D;
        const __m512 inv = _mm512_set1_ps(l > 0.f ? 1.f / l : 0.f);
        int d = 0;
        for (; d + 16 <= D; d += 16) _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_load_ps(o + d), inv));
        if (d < D)
          _mm512_mask_storeu_ps(dst + d, static_cast<__mmask16>((1u << (D - d)) - 1u),
                                _mm512_mul_ps(_mm512_load_ps(o + d), inv));
      } else {
        float* dst = part + i * rf;
        dst[0] = m[i];
        dst[1] = l;
        std::memcpy(dst + 2, o, static_cast<size_t>(Dp) * 4);
      }
    }
  }
};

}  // namespace

namespace attn_detail {

void run_f32_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                    ThreadPool* pool, bool direct) {
  if (direct)
    run_attention<F32Traits<V16, true>>(a, q, k, v, out, pool);
  else
    run_attention<F32TiledTraits>(a, q, k, v, out, pool);
}

void run_f32_tiled_v1_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                             ThreadPool* pool) {
  run_attention<F32Traits<V16, false>>(a, q, k, v, out, pool, /*head_major=*/false);
}

void run_bf16_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                     ThreadPool* pool) {
  run_attention<Bf16Traits>(a, q, k, v, out, pool);
}

}  // namespace attn_detail
}  // namespace ev::cpu
