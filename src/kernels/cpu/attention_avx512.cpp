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

}  // namespace

namespace attn_detail {

void run_f32_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                    ThreadPool* pool, bool direct) {
  if (direct)
    run_attention<F32Traits<V16, true>>(a, q, k, v, out, pool);
  else
    run_attention<F32Traits<V16, false>>(a, q, k, v, out, pool);
}

void run_bf16_avx512(const ref::AttentionDims& a, const float* q, const float* k, const float* v, float* out,
                     ThreadPool* pool) {
  run_attention<Bf16Traits>(a, q, k, v, out, pool);
}

}  // namespace attn_detail
}  // namespace ev::cpu
