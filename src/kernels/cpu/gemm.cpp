#include "kernels/cpu/gemm.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/clock.h"
#include "core/dtype.h"
#include "core/log.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/ref/ref_quant.h"

namespace ev {

namespace {

using dnnl::matmul;
using dnnl::memory;
using mdt = memory::data_type;
using mtag = memory::format_tag;

// ---------------------------------------------------------------------------------------------------------------
// OpenMP thread limit. oneDNN reads omp_get_max_threads() of the calling thread when it creates a primitive (the
// brgemm blocking depends on it) and runs an OpenMP team of that size at execution. We set it per call on the
// executing thread and restore it afterwards. The OpenMP runtime (libgomp) is loaded by libdnnl; we look its
// functions up at run time so that the build does not need -fopenmp.
struct OmpApi {
  int (*get_max_threads)() = nullptr;
  void (*set_num_threads)(int) = nullptr;
};

const OmpApi& omp_api() {
  static const OmpApi api = [] {
    OmpApi a;
    a.get_max_threads = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
    a.set_num_threads = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
    if (!a.get_max_threads || !a.set_num_threads) {
      a = OmpApi{};
      EV_LOG_DEBUG("gemm: OpenMP runtime not found; oneDNN threading is left at its default");
    }
    return a;
  }();
  return api;
}

class OmpThreadLimit {
 public:
  explicit OmpThreadLimit(int n) {
    const OmpApi& a = omp_api();
    if (!a.set_num_threads) return;
    prev_ = a.get_max_threads();
    if (prev_ != n) a.set_num_threads(n);
  }
  ~OmpThreadLimit() {
    const OmpApi& a = omp_api();
    if (a.set_num_threads && prev_ > 0 && a.get_max_threads() != prev_) a.set_num_threads(prev_);
  }
  OmpThreadLimit(const OmpThreadLimit&) = delete;
  OmpThreadLimit& operator=(const OmpThreadLimit&) = delete;

 private:
  int prev_ = 0;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// One stream per thread: primitives are executed from several pool threads at once.
dnnl::stream& thread_stream() {
  thread_local dnnl::stream s(cpu_engine());
  return s;
}

// A per-thread, grow-only, 64-byte aligned scratch buffer (activations converted to bf16, padded GEMV inputs).
class Scratch {
 public:
  ~Scratch() { aligned_free(p_); }
  void* get(size_t bytes) {
    if (bytes > cap_) {
      aligned_free(p_);
      cap_ = std::max(bytes, cap_ * 2);
      p_ = aligned_alloc_bytes(cap_);
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

// oneDNN's own scratchpad (brgemm's copies of A/B panels, accumulators). The OpenMP build of oneDNN 2.6 keeps one
// global scratchpad per primitive unless DNNL_ENABLE_CONCURRENT_EXEC is set, which Debian's build does not set;
// executing one primitive from two pool threads at once then corrupts results. So every primitive is created with
// scratchpad_mode::user and each executing thread passes its own buffer.
Scratch& thread_dnnl_scratchpad() {
  thread_local Scratch s;
  return s;
}

// Output panels of the column split (kept apart from thread_scratch(), which may hold the caller's converted
// activations while the calling thread also runs a slice).
Scratch& thread_out_scratch() {
  thread_local Scratch s;
  return s;
}

void f32_to_bf16(const float* src, uint16_t* dst, int64_t n) {
  if (cpu_features().has_avx512_bf16()) {
    gemm_detail::f32_to_bf16_avx512(src, dst, n);
  } else {
    convert_f32_to_bf16(src, dst, static_cast<size_t>(n));
  }
}

std::string dnnl_error_string(const dnnl::error& e) {
  return std::string(e.what()) + " (dnnl status " + std::to_string(static_cast<int>(e.status)) + ")";
}

// ---------------------------------------------------------------------------------------------------------------
// Options and statistics.
std::mutex g_opt_mu;
GemmOptions g_opt;

std::atomic<int64_t> g_created{0}, g_hits{0};
std::atomic<int64_t> g_create_ns{0};

// ---------------------------------------------------------------------------------------------------------------
// Weight formats. fmt 0: the known blocked tag of the precision (BA16a64b2a / BA16a64b), which can be sliced by
// 64-column blocks. fmt >= 1: a format oneDNN chose through format_tag::any that we do not know (other CPUs):
// only the full matrix is used with it, and the own GEMV is off.
std::mutex g_fmt_mu;
std::vector<memory::desc> g_fmts;  // g_fmts[i] is format id i + 1

int register_format(const memory::desc& d) {
  std::lock_guard<std::mutex> lk(g_fmt_mu);
  for (size_t i = 0; i < g_fmts.size(); ++i)
    if (g_fmts[i] == d) return static_cast<int>(i) + 1;
  g_fmts.push_back(d);
  return static_cast<int>(g_fmts.size());
}

const char* prec_name(Precision p) { return precision_name(p); }

mtag known_tag(Precision p) { return p == Precision::kBF16 ? mtag::BA16a64b2a : mtag::BA16a64b; }
mdt compute_dt(Precision p) { return p == Precision::kBF16 ? mdt::bf16 : mdt::f32; }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
struct PackedLinear {
  int64_t N = 0, K = 0;
  int64_t Np = 0, Kp = 0;  // padded dims of the packed layout
  Precision precision = Precision::kF32;
  int fmt_id = 0;          // 0: known_tag(precision); else a registered "any" format (full matrix only)
  memory::desc wdesc;      // the full packed weights [K, N]
  std::shared_ptr<void> w;  // packed weights, wdesc.get_size() bytes
  size_t w_bytes = 0;
  std::shared_ptr<float> bias;  // [Np] f32 zero-padded, or null
  std::string name;
  std::string impl;  // oneDNN implementation chosen at pack time for a large M
  // int8 only (precision kInt8): w holds the u8 = q + 128 layout of gemm.h "INT8" (Np x Kp bytes).
  std::shared_ptr<float> sw;       // [Np] per-output-channel weight scales, zero-padded
  std::shared_ptr<float> rsmooth;  // [Kp] 1.0f / smooth[k], or null (no SmoothQuant factors)
  bool int8_vnni = false;          // gemm_s8u8_avx512 usable on this CPU

  bool gemv_ok() const {
    if (fmt_id != 0 || precision == Precision::kInt8) return false;
    const CpuFeatures& f = cpu_features();
    return precision == Precision::kBF16 ? f.has_avx512_bf16() : f.has_avx512_core();
  }
  size_t elem_size() const { return precision == Precision::kBF16 ? 2 : 4; }
  memory::desc slice_desc(int64_t ncols) const {
    if (fmt_id != 0) return wdesc;
    return memory::desc({K, ncols}, compute_dt(precision), known_tag(precision));
  }
};

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Process-wide primitive cache: (format, precision, bias, threads, M, N-slice, K, ldc) -> matmul primitive.
struct PrimKey {
  int fmt_id;
  int prec;
  bool bias;
  int nthr;
  int64_t M, ncols, K, ldc;
  bool operator<(const PrimKey& o) const {
    return std::tie(fmt_id, prec, bias, nthr, M, ncols, K, ldc) <
           std::tie(o.fmt_id, o.prec, o.bias, o.nthr, o.M, o.ncols, o.K, o.ldc);
  }
};

struct PrimEntry {
  matmul prim;
  memory::desc src_md, w_md, b_md, dst_md, scratch_md;
  std::string impl;
  uint64_t last_use = 0;
};

std::mutex g_cache_mu;
std::map<PrimKey, std::shared_ptr<PrimEntry>> g_cache;
uint64_t g_tick = 0;

// Creates (or finds) the primitive; must be called with the OpenMP limit of the executing thread in place.
std::shared_ptr<PrimEntry> get_primitive(const PackedLinear& pl, int64_t M, int64_t ncols, int64_t ldc, int nthr) {
  const PrimKey key{pl.fmt_id, static_cast<int>(pl.precision), pl.bias != nullptr, nthr, M, ncols, pl.K, ldc};
  {
    std::lock_guard<std::mutex> lk(g_cache_mu);
    auto it = g_cache.find(key);
    if (it != g_cache.end()) {
      it->second->last_use = ++g_tick;
      g_hits.fetch_add(1, std::memory_order_relaxed);
      return it->second;
    }
  }
  const int64_t t0 = now_ns();
  auto e = std::make_shared<PrimEntry>();
  const mdt dt = compute_dt(pl.precision);
  e->src_md = memory::desc({M, pl.K}, dt, mtag::ab);
  e->w_md = pl.slice_desc(ncols);
  e->dst_md = memory::desc({M, ncols}, mdt::f32, memory::dims{ldc, 1});
  std::unique_ptr<matmul::desc> d;
  if (pl.bias) {
    e->b_md = memory::desc({1, ncols}, mdt::f32, mtag::ab);
    d = std::make_unique<matmul::desc>(e->src_md, e->w_md, e->b_md, e->dst_md);
  } else {
    d = std::make_unique<matmul::desc>(e->src_md, e->w_md, e->dst_md);
  }
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  matmul::primitive_desc pd(*d, attr, cpu_engine());  // throws dnnl::error when unsupported
  e->scratch_md = pd.scratchpad_desc();
  e->impl = pd.impl_info_str();
  e->prim = matmul(pd);
  g_created.fetch_add(1, std::memory_order_relaxed);
  g_create_ns.fetch_add(now_ns() - t0, std::memory_order_relaxed);

  std::lock_guard<std::mutex> lk(g_cache_mu);
  auto [it, inserted] = g_cache.emplace(key, e);  // another thread may have raced us: keep the first
  it->second->last_use = ++g_tick;
  if (inserted && g_cache.size() > kGemmCacheCapacity) {
    auto oldest = g_cache.begin();
    for (auto i = g_cache.begin(); i != g_cache.end(); ++i)
      if (i->second->last_use < oldest->second->last_use) oldest = i;
    if (oldest != it) g_cache.erase(oldest);
  }
  return it->second;
}

// Executes dst[0:M, 0:ncols] (row stride ldc) = src[M, K] · W[:, n0:n0+ncols] + b[n0:] on the calling thread.
void execute_slice(const PackedLinear& pl, const void* src, int64_t M, int64_t n0, int64_t ncols, float* dst,
                   int64_t ldc, int nthr) {
  auto e = get_primitive(pl, M, ncols, ldc, nthr);
  dnnl::engine& eng = cpu_engine();
  // Block n0/64 starts at n0 * Kp elements (blocks of 64 columns x Kp, outermost).
  auto* wptr = static_cast<char*>(pl.w.get()) + static_cast<size_t>(n0 * pl.Kp) * pl.elem_size();
  memory src_m(e->src_md, eng, const_cast<void*>(src));
  memory w_m(e->w_md, eng, wptr);
  memory dst_m(e->dst_md, eng, dst);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, dst_m}};
  if (pl.bias) args.emplace(DNNL_ARG_BIAS, memory(e->b_md, eng, pl.bias.get() + n0));
  const size_t sp = e->scratch_md.get_size();
  if (sp > 0) args.emplace(DNNL_ARG_SCRATCHPAD, memory(e->scratch_md, eng, thread_dnnl_scratchpad().get(sp)));
  e->prim.execute(thread_stream(), args);
}

// Runs fn(t, begin, end) over [0, n) on the pool (or inline), collecting the first error of any thread: no
// exception may escape into a pool worker.
Status parallel_status(ThreadPool* pool, int64_t n, int64_t grain,
                       const std::function<void(int, int64_t, int64_t)>& fn) {
  std::mutex mu;
  Status first;
  auto guarded = [&](int t, int64_t b, int64_t e) {
    try {
      fn(t, b, e);
    } catch (const dnnl::error& err) {
      std::lock_guard<std::mutex> lk(mu);
      if (first.ok()) first = Internal("oneDNN: " + dnnl_error_string(err));
    } catch (const std::exception& err) {
      std::lock_guard<std::mutex> lk(mu);
      if (first.ok()) first = Internal(std::string("gemm: ") + err.what());
    }
  };
  if (pool && pool->size() > 1) {
    pool->parallel_for(n, guarded, grain);
  } else {
    guarded(0, 0, n);
  }
  return first;
}

// Converts x [M, K] f32 into bf16 rows of stride `ld` (>= K, zero-padded beyond K).
void convert_rows_bf16(const float* x, int64_t r0, int64_t r1, int64_t K, uint16_t* dst, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) {
    f32_to_bf16(x + r * K, dst + r * ld, K);
    if (ld > K) std::memset(dst + r * ld + K, 0, static_cast<size_t>(ld - K) * 2);
  }
}

Status run_gemv(const PackedLinear& pl, const float* x, int64_t M, float* y, ThreadPool* pool) {
  const int64_t nblocks = pl.Np / 64;
  const float* bias = pl.bias.get();
  return parallel_status(pool, nblocks, 1, [&](int, int64_t b0, int64_t b1) {
    // Each thread pads / converts the (tiny) input itself: M * Kp elements.
    if (pl.precision == Precision::kBF16) {
      auto* xb = static_cast<uint16_t*>(thread_scratch().get(static_cast<size_t>(M * pl.Kp) * 2));
      convert_rows_bf16(x, 0, M, pl.K, xb, pl.Kp);
      gemm_detail::gemv_bf16_avx512(static_cast<const uint16_t*>(pl.w.get()), pl.Kp, xb, M, bias, y, pl.N, pl.N,
                                    b0, b1);
    } else {
      auto* xp = static_cast<float*>(thread_scratch().get(static_cast<size_t>(M * pl.Kp) * 4));
      for (int64_t m = 0; m < M; ++m) {
        std::memcpy(xp + m * pl.Kp, x + m * pl.K, static_cast<size_t>(pl.K) * 4);
        std::memset(xp + m * pl.Kp + pl.K, 0, static_cast<size_t>(pl.Kp - pl.K) * 4);
      }
      gemm_detail::gemv_f32_avx512(static_cast<const float*>(pl.w.get()), pl.Kp, xp, M, bias, y, pl.N, pl.N, b0,
                                   b1);
    }
  });
}

Status run_slices(const PackedLinear& pl, const float* x, int64_t M, float* y, ThreadPool* pool, GemmSplit split) {
  const int nt = pool ? pool->size() : 1;
  const bool bf16 = pl.precision == Precision::kBF16;
  if (split == GemmSplit::kAuto) split = M >= kMinRowsPerThreadMSplit * nt ? GemmSplit::kRows : GemmSplit::kCols;
  if (pl.fmt_id != 0 || nt == 1) split = GemmSplit::kRows;

  if (split == GemmSplit::kRows) {
    return parallel_status(pool, M, 1, [&](int, int64_t m0, int64_t m1) {
      OmpThreadLimit lim(1);
      const void* src = x + m0 * pl.K;
      if (bf16) {
        auto* xb = static_cast<uint16_t*>(thread_scratch().get(static_cast<size_t>((m1 - m0) * pl.K) * 2));
        f32_to_bf16(x + m0 * pl.K, xb, (m1 - m0) * pl.K);
        src = xb;
      }
      execute_slice(pl, src, m1 - m0, 0, pl.N, y + m0 * pl.N, pl.N, 1);
    });
  }
  // Column split: convert the activations once (rows split over the pool), then each thread multiplies them with
  // its own run of 64-column blocks.
  const void* src = x;
  if (bf16) {
    auto* xb = static_cast<uint16_t*>(thread_scratch().get(static_cast<size_t>(M * pl.K) * 2));
    EV_RETURN_IF_ERROR(parallel_status(pool, M, 1, [&](int, int64_t r0, int64_t r1) {
      f32_to_bf16(x + r0 * pl.K, xb + r0 * pl.K, (r1 - r0) * pl.K);
    }));
    src = xb;
  }
  return parallel_status(pool, pl.Np / 64, 1, [&](int, int64_t b0, int64_t b1) {
    OmpThreadLimit lim(1);
    const int64_t n0 = b0 * 64, n1 = std::min(pl.N, b1 * 64), nc = n1 - n0;
    if (nc == pl.N) {
      execute_slice(pl, src, M, n0, nc, y + n0, pl.N, 1);
      return;
    }
    // oneDNN 2.6's brgemm matmul rejects a destination whose row stride exceeds its column count and falls back to
    // ref:any (~1000x slower, measured: 0.1 GFLOP/s). So the slice is computed into a dense panel and copied out.
    auto* panel = static_cast<float*>(thread_out_scratch().get(static_cast<size_t>(M * nc) * 4));
    execute_slice(pl, src, M, n0, nc, panel, nc, 1);
    for (int64_t m = 0; m < M; ++m)
      std::memcpy(y + m * pl.N + n0, panel + m * nc, static_cast<size_t>(nc) * 4);
  });
}

Status run_omp(const PackedLinear& pl, const float* x, int64_t M, float* y, ThreadPool* pool) {
  const int nt = pool ? pool->size() : 1;
  const void* src = x;
  if (pl.precision == Precision::kBF16) {
    auto* xb = static_cast<uint16_t*>(thread_scratch().get(static_cast<size_t>(M * pl.K) * 2));
    EV_RETURN_IF_ERROR(parallel_status(pool, M, 1, [&](int, int64_t r0, int64_t r1) {
      f32_to_bf16(x + r0 * pl.K, xb + r0 * pl.K, (r1 - r0) * pl.K);
    }));
    src = xb;
  }
  OmpThreadLimit lim(nt);
  try {
    execute_slice(pl, src, M, 0, pl.N, y, pl.N, nt);
  } catch (const dnnl::error& e) {
    return Internal("oneDNN: " + dnnl_error_string(e));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------------------
// INT8 (see gemm.h "INT8"). The portable versions of the two kernels, for CPUs without AVX-512 VNNI: the same
// arithmetic (bit-exact with the VNNI kernels and ref::linear_i8).
void quantize_rows_s8_generic(const float* x, int64_t ldx, int64_t K, const float* rsmooth, int64_t rows, int8_t* q,
                              int64_t ldq, float* sx, int32_t* cx) {
  std::vector<float> t(static_cast<size_t>(K));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t k = 0; k < K; ++k) t[static_cast<size_t>(k)] = rsmooth ? xr[k] * rsmooth[k] : xr[k];
    int8_t* qr = q + r * ldq;
    sx[r] = ref::quantize_row_i8(t.data(), K, qr);
    std::memset(qr + K, 0, static_cast<size_t>(ldq - K));
    int32_t sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += qr[k];
    cx[r] = 128 * sum;
  }
}

void gemm_s8u8_generic(const uint8_t* w, int64_t Kp, const int8_t* qx, int64_t ldq, const float* sx,
                       const int32_t* cx, int64_t M, const float* sw, const float* bias, float* y, int64_t ldy,
                       int64_t N, int64_t nb0, int64_t nb1) {
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const uint8_t* blk = w + nb * Kp * 64;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t c = 0; c < 64 && nb * 64 + c < N; ++c) {
        const int64_t n = nb * 64 + c;
        int32_t acc = 0;
        for (int64_t k = 0; k < Kp; ++k)
          acc += static_cast<int32_t>(blk[(k / 4) * 256 + c * 4 + k % 4]) * static_cast<int32_t>(qx[m * ldq + k]);
        y[m * ldy + n] = std::fma(static_cast<float>(acc - cx[m]), sx[m] * sw[n], bias ? bias[n] : 0.0f);
      }
  }
}

// Rows per quantise-then-multiply chunk of the row split: the chunk's int8 activations (rows x Kp bytes) stay in
// L2 while the weight blocks pass over them.
constexpr int64_t kInt8ChunkBytes = 256 << 10;

// One thread's share: rows [m0, m1) of x against 64-column blocks [nb0, nb1).
void int8_slice(const PackedLinear& pl, bool vnni, const float* x, int64_t m0, int64_t m1, float* y, int64_t nb0,
                int64_t nb1) {
  const int64_t Kp = pl.Kp;
  const int64_t chunk = std::max<int64_t>(gemm_detail::kInt8TileRows,
                                          kInt8ChunkBytes / Kp / gemm_detail::kInt8TileRows *
                                              gemm_detail::kInt8TileRows);
  const int64_t rows = std::min(chunk, m1 - m0);
  const size_t qbytes = (static_cast<size_t>(rows * Kp) + 63) / 64 * 64;
  char* buf = static_cast<char*>(thread_scratch().get(qbytes + static_cast<size_t>(rows) * 8));
  auto* q = reinterpret_cast<int8_t*>(buf);
  auto* sx = reinterpret_cast<float*>(buf + qbytes);
  auto* cx = reinterpret_cast<int32_t*>(buf + qbytes + static_cast<size_t>(rows) * 4);
  const auto* w = static_cast<const uint8_t*>(pl.w.get());
  for (int64_t mc = m0; mc < m1; mc += rows) {
    const int64_t r = std::min(rows, m1 - mc);
    if (vnni) {
      gemm_detail::quantize_rows_s8_avx512(x + mc * pl.K, pl.K, pl.K, pl.rsmooth.get(), r, q, Kp, sx, cx);
      gemm_detail::gemm_s8u8_avx512(w, Kp, q, Kp, sx, cx, r, pl.sw.get(), pl.bias.get(), y + mc * pl.N, pl.N, pl.N,
                                    nb0, nb1);
    } else {
      quantize_rows_s8_generic(x + mc * pl.K, pl.K, pl.K, pl.rsmooth.get(), r, q, Kp, sx, cx);
      gemm_s8u8_generic(w, Kp, q, Kp, sx, cx, r, pl.sw.get(), pl.bias.get(), y + mc * pl.N, pl.N, pl.N, nb0, nb1);
    }
  }
}

Status run_int8(const PackedLinear& pl, const float* x, int64_t M, float* y, ThreadPool* pool,
                const GemmOptions& opt) {
  const bool vnni = pl.int8_vnni && !opt.int8_force_generic;
  const int nt = pool ? pool->size() : 1;
  const int64_t nblocks = pl.Np / 64;
  GemmSplit split = opt.split;
  if (split == GemmSplit::kAuto || M <= opt.gemv_max_m)
    split = M > opt.gemv_max_m && M >= kMinRowsPerThreadMSplit * nt ? GemmSplit::kRows : GemmSplit::kCols;
  if (nt == 1) split = GemmSplit::kRows;
  if (split == GemmSplit::kRows) {
    return parallel_status(pool, M, 1, [&](int, int64_t m0, int64_t m1) {
      int8_slice(pl, vnni, x, m0, m1, y, 0, nblocks);
    });
  }
  // Column split (decode and short inputs): every thread quantises all M rows itself (M x K values, a few us)
  // rather than waiting for a second parallel section, then streams its own run of 64-column blocks.
  return parallel_status(pool, nblocks, 1, [&](int, int64_t b0, int64_t b1) {
    int8_slice(pl, vnni, x, 0, M, y, b0, b1);
  });
}

std::string tensor_label(const Tensor& t, const char* fallback) {
  return t.name().empty() ? std::string(fallback) : "'" + t.name() + "'";
}

bool is_float_dtype(DType d) { return d == DType::kF32 || d == DType::kBF16 || d == DType::kF16; }

// Tries to create the packed-weights descriptor for `p`: the known blocked tag first (verified by creating a
// primitive for a large M), then whatever oneDNN picks with format_tag::any.
Status choose_format(PackedLinear& pl, bool with_bias) {
  OmpThreadLimit lim(1);
  const mdt dt = compute_dt(pl.precision);
  const int64_t M = 256;  // a prefill-sized M; the chosen format is the same for all M on Zen 4 (measured)
  memory::desc src({M, pl.K}, dt, mtag::ab), dst({M, pl.N}, mdt::f32, mtag::ab), b({1, pl.N}, mdt::f32, mtag::ab);
  auto make_pd = [&](const memory::desc& w) {
    return with_bias ? matmul::primitive_desc(matmul::desc(src, w, b, dst), cpu_engine())
                     : matmul::primitive_desc(matmul::desc(src, w, dst), cpu_engine());
  };
  try {
    const memory::desc known({pl.K, pl.N}, dt, known_tag(pl.precision));
    matmul::primitive_desc pd = make_pd(known);
    const std::string impl = pd.impl_info_str();
    if (impl.rfind("brg", 0) == 0) {
      pl.fmt_id = 0;
      pl.wdesc = known;
      pl.impl = impl;
      return Status::Ok();
    }
  } catch (const dnnl::error&) {
    // fall through to format_tag::any
  }
  try {
    matmul::primitive_desc pd = make_pd(memory::desc({pl.K, pl.N}, dt, mtag::any));
    pl.wdesc = pd.weights_desc();
    pl.fmt_id = register_format(pl.wdesc);
    pl.impl = pd.impl_info_str();
    return Status::Ok();
  } catch (const dnnl::error& e) {
    return Unsupported(std::string("oneDNN has no ") + prec_name(pl.precision) + " matmul on this CPU: " +
                       dnnl_error_string(e));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
namespace {

constexpr int64_t kInt8MaxK = 65536;  // int32 accumulation of (q + 128) * qx stays exact (gemm_int8_avx512.cpp)

std::vector<float> bias_to_f32(const Tensor& b) {
  std::vector<float> out(static_cast<size_t>(b.numel()));
  const auto* raw = static_cast<const uint16_t*>(b.data());
  for (size_t i = 0; i < out.size(); ++i) {
    switch (b.dtype()) {
      case DType::kF32: out[i] = b.data_as<float>()[i]; break;
      case DType::kBF16: out[i] = bf16_to_f32(raw[i]); break;
      default: out[i] = f16_to_f32(raw[i]); break;
    }
  }
  return out;
}

// Checks a QuantParams member: f32, 1-D of `n` entries, finite (and > 0 when `positive`).
Status check_quant_vector(const Tensor& t, int64_t n, const std::string& wl, const char* what, bool positive) {
  const std::string where = "pack_linear: " + wl + ": quant " + what;
  if (t.dtype() != DType::kF32)
    return InvalidArgument(where + " has dtype " + dtype_name(t.dtype()) + "; expected f32");
  if (t.ndim() != 1 || t.dim(0) != n)
    return InvalidArgument(where + " has shape " + t.shape().to_string() + "; expected [" + std::to_string(n) + "]");
  if (t.data() == nullptr) return InvalidArgument(where + " has no data");
  const float* p = t.data_as<float>();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]) || (positive && !(p[i] > 0.f)))
      return InvalidArgument(where + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) + " is not " +
                             (positive ? "finite and > 0" : "finite"));
  return Status::Ok();
}

}  // namespace

Result<std::shared_ptr<PackedLinear>> pack_linear_i8(const int8_t* q, int64_t N, int64_t K, const float* scale,
                                                     const float* smooth, const float* bias,
                                                     const std::string& name) {
  const std::string wl = name.empty() ? std::string("weight") : "'" + name + "'";
  if (N <= 0 || K <= 0)
    return InvalidArgument("pack_linear_i8: " + wl + " has an empty shape [" + std::to_string(N) + ", " +
                           std::to_string(K) + "]");
  if (!q || !scale) return InvalidArgument("pack_linear_i8: " + wl + ": null weights or scales");
  if (K > kInt8MaxK)
    return InvalidArgument("pack_linear_i8: " + wl + " has K = " + std::to_string(K) + " > " +
                           std::to_string(kInt8MaxK) + ", beyond exact int32 accumulation");
  for (int64_t n = 0; n < N; ++n)
    if (!std::isfinite(scale[n]))
      return InvalidArgument("pack_linear_i8: " + wl + ": scale[" + std::to_string(n) + "] is not finite");
  if (smooth)
    for (int64_t k = 0; k < K; ++k)
      if (!std::isfinite(smooth[k]) || !(smooth[k] > 0.f))
        return InvalidArgument("pack_linear_i8: " + wl + ": smooth[" + std::to_string(k) + "] = " +
                               std::to_string(smooth[k]) + " is not finite and > 0");
  auto pl = std::make_shared<PackedLinear>();
  pl->N = N;
  pl->K = K;
  pl->Kp = (K + 7) / 8 * 8;
  pl->Np = (N + 63) / 64 * 64;
  pl->name = name;
  pl->precision = Precision::kInt8;
  pl->int8_vnni = cpu_features().has_avx512_vnni();
  pl->impl = pl->int8_vnni ? "own-vnni" : "own-generic";
  pl->w_bytes = static_cast<size_t>(pl->Np * pl->Kp);
  auto* wb = static_cast<uint8_t*>(aligned_alloc_bytes(pl->w_bytes));
  auto* swb = static_cast<float*>(aligned_alloc_bytes(static_cast<size_t>(pl->Np) * 4));
  if (!wb || !swb) {
    aligned_free(wb);
    aligned_free(swb);
    return Status(StatusCode::kOutOfMemory, "pack_linear_i8: " + wl + ": cannot allocate packed weights");
  }
  pl->w = std::shared_ptr<void>(wb, aligned_free);
  pl->sw = std::shared_ptr<float>(swb, aligned_free);
  std::memset(wb, 128, pl->w_bytes);  // q = 0 in the padding (the activations are 0 there anyway)
  const int64_t Kp = pl->Kp;
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* col = wb + (n / 64) * Kp * 64 + (n % 64) * 4;
    const int8_t* row = q + n * K;
    for (int64_t k = 0; k < K; ++k) col[(k / 4) * 256 + k % 4] = static_cast<uint8_t>(row[k] + 128);
  }
  std::memset(swb, 0, static_cast<size_t>(pl->Np) * 4);
  std::memcpy(swb, scale, static_cast<size_t>(N) * 4);
  if (bias) {
    auto* b = static_cast<float*>(aligned_alloc_bytes(static_cast<size_t>(pl->Np) * 4));
    pl->bias = std::shared_ptr<float>(b, aligned_free);
    std::memset(b, 0, static_cast<size_t>(pl->Np) * 4);
    std::memcpy(b, bias, static_cast<size_t>(N) * 4);
  }
  if (smooth) {
    auto* r = static_cast<float*>(aligned_alloc_bytes(static_cast<size_t>(Kp) * 4));
    pl->rsmooth = std::shared_ptr<float>(r, aligned_free);
    std::memset(r, 0, static_cast<size_t>(Kp) * 4);
    for (int64_t k = 0; k < K; ++k) r[k] = 1.0f / smooth[k];  // the reciprocal of ref_quant.h, step 1
  }
  return pl;
}

Result<std::shared_ptr<PackedLinear>> pack_linear(const Tensor& w, const Tensor* bias, Precision precision) {
  const std::string wl = tensor_label(w, "weight");
  if (w.ndim() != 2)
    return InvalidArgument("pack_linear: " + wl + " must be 2-D [N, K], got " + w.shape().to_string());
  if (!is_float_dtype(w.dtype()) && w.dtype() != DType::kI8)
    return Unsupported("pack_linear: " + wl + " has dtype " + dtype_name(w.dtype()) +
                       "; expected f32, bf16, f16 or i8 (with quant params)");
  const int64_t N = w.dim(0), K = w.dim(1);
  if (N <= 0 || K <= 0) return InvalidArgument("pack_linear: " + wl + " has an empty shape " + w.shape().to_string());
  if (w.data() == nullptr) return InvalidArgument("pack_linear: " + wl + " has no data");
  if (bias) {
    const std::string bl = tensor_label(*bias, "bias");
    if (!is_float_dtype(bias->dtype()))
      return Unsupported("pack_linear: " + bl + " has dtype " + dtype_name(bias->dtype()) +
                         "; expected f32, bf16 or f16");
    if (bias->ndim() != 1 || bias->dim(0) != N)
      return InvalidArgument("pack_linear: " + bl + " has shape " + bias->shape().to_string() + ", expected [" +
                             std::to_string(N) + "] to match " + wl + " " + w.shape().to_string());
    if (bias->data() == nullptr) return InvalidArgument("pack_linear: " + bl + " has no data");
  }

  // INT8: a kI8 weight is always computed in int8; a float weight is quantised per output channel for kInt8.
  if (w.dtype() == DType::kI8 || precision == Precision::kInt8) {
    const std::vector<float> bf = bias ? bias_to_f32(*bias) : std::vector<float>();
    const float* bp = bias ? bf.data() : nullptr;
    const QuantParams* qp = w.quant().get();
    const float* smooth = nullptr;
    if (qp && qp->smooth.defined()) {
      EV_RETURN_IF_ERROR(check_quant_vector(qp->smooth, K, wl, "smooth", true));
      smooth = qp->smooth.data_as<float>();
    }
    if (w.dtype() == DType::kI8) {
      if (!qp)
        return InvalidArgument("pack_linear: " + wl + " is int8 (i8) but has no quantisation parameters " +
                               "(Tensor::set_quant with a per-row scale)");
      EV_RETURN_IF_ERROR(check_quant_vector(qp->scale, N, wl, "scale", false));
      return pack_linear_i8(w.data_as<int8_t>(), N, K, qp->scale.data_as<float>(), smooth, bp, w.name());
    }
    Tensor src = w;
    if (w.dtype() != DType::kF32) {
      auto conv = w.to(DType::kF32);
      if (!conv.ok()) return conv.status().with_context("pack_linear: converting " + wl);
      src = std::move(conv).value();
    }
    std::vector<int8_t> q(static_cast<size_t>(N * K));
    std::vector<float> scale(static_cast<size_t>(N));
    ref::quantize_rows_i8(src.data_as<float>(), N, K, smooth, q.data(), scale.data());
    for (int64_t n = 0; n < N; ++n)
      if (std::isnan(scale[static_cast<size_t>(n)]))
        return InvalidArgument("pack_linear: " + wl + " row " + std::to_string(n) +
                               " has a non-finite value (or overflows when multiplied by smooth); cannot quantise");
    return pack_linear_i8(q.data(), N, K, scale.data(), smooth, bp, w.name());
  }

  auto pl = std::make_shared<PackedLinear>();
  pl->N = N;
  pl->K = K;
  pl->name = w.name();
  pl->precision = precision;
  Status st = choose_format(*pl, bias != nullptr);
  if (!st.ok() && precision == Precision::kBF16) {
    EV_LOG_WARN("pack_linear: %s; computing %s in f32", st.message().c_str(), wl.c_str());
    pl->precision = Precision::kF32;
    st = choose_format(*pl, bias != nullptr);
  }
  EV_RETURN_IF_ERROR(st);
  const auto& pd = pl->wdesc.data.padded_dims;
  pl->Kp = pd[0];
  pl->Np = pd[1];

  // Source in the compute dtype, seen by oneDNN as W^T [K, N] with strides (1, K) (format "ba").
  const mdt dt = compute_dt(pl->precision);
  const DType want = pl->precision == Precision::kBF16 ? DType::kBF16 : DType::kF32;
  Tensor src = w;
  if (w.dtype() != want) {
    auto conv = w.to(want);
    if (!conv.ok()) return conv.status().with_context("pack_linear: converting " + wl);
    src = std::move(conv).value();
  }

  pl->w_bytes = pl->wdesc.get_size();
  void* wbuf = aligned_alloc_bytes(pl->w_bytes);
  if (!wbuf) return Status(StatusCode::kOutOfMemory, "pack_linear: " + wl + ": cannot allocate packed weights");
  pl->w = std::shared_ptr<void>(wbuf, aligned_free);
  std::memset(wbuf, 0, pl->w_bytes);  // padding must be zero: the GEMV reads padded K pairs and N columns
  try {
    OmpThreadLimit lim(1);
    memory src_m(memory::desc({K, N}, dt, mtag::ba), cpu_engine(), src.data());
    memory dst_m(pl->wdesc, cpu_engine(), wbuf);
    dnnl::reorder(src_m, dst_m).execute(thread_stream(), src_m, dst_m);
    thread_stream().wait();
  } catch (const dnnl::error& e) {
    return Internal("pack_linear: reordering " + wl + ": " + dnnl_error_string(e));
  }

  if (bias) {
    auto* b = static_cast<float*>(aligned_alloc_bytes(static_cast<size_t>(pl->Np) * 4));
    pl->bias = std::shared_ptr<float>(b, aligned_free);
    std::memset(b, 0, static_cast<size_t>(pl->Np) * 4);
    const auto* raw = static_cast<const uint16_t*>(bias->data());
    for (int64_t i = 0; i < N; ++i) {
      switch (bias->dtype()) {
        case DType::kF32: b[i] = bias->data_as<float>()[i]; break;
        case DType::kBF16: b[i] = bf16_to_f32(raw[i]); break;
        default: b[i] = f16_to_f32(raw[i]); break;
      }
    }
  }
  return pl;
}

Status linear_forward(const PackedLinear& pl, const float* x, int64_t M, float* y, ThreadPool* pool) {
  if (M < 0) return InvalidArgument("linear_forward: negative M " + std::to_string(M));
  if (M == 0) return Status::Ok();
  if (!x || !y) return InvalidArgument("linear_forward: null input or output");
  const GemmOptions opt = gemm_options();
  // Small products run on the calling thread: handing ~10 us of work to a second thread costs about as much as it
  // saves, and far more when the machine is oversubscribed and that thread is not running.
  const bool int8 = pl.precision == Precision::kInt8;
  const int64_t min_macs = int8 ? opt.int8_min_parallel_macs : opt.min_parallel_macs;
  if (min_macs > 0 &&
      static_cast<double>(M) * static_cast<double>(pl.N) * static_cast<double>(pl.K) < static_cast<double>(min_macs))
    pool = nullptr;
  if (int8) return run_int8(pl, x, M, y, pool, opt);
  if (M <= opt.gemv_max_m && pl.gemv_ok()) return run_gemv(pl, x, M, y, pool);
  if (opt.threading == GemmThreading::kOneDnnOmp) return run_omp(pl, x, M, y, pool);
  return run_slices(pl, x, M, y, pool, opt.split);
}

int64_t packed_n(const PackedLinear& pl) { return pl.N; }
int64_t packed_k(const PackedLinear& pl) { return pl.K; }
size_t packed_bytes(const PackedLinear& pl) {
  return pl.w_bytes + (pl.bias ? static_cast<size_t>(pl.Np) * 4 : 0) + (pl.sw ? static_cast<size_t>(pl.Np) * 4 : 0) +
         (pl.rsmooth ? static_cast<size_t>(pl.Kp) * 4 : 0);
}
Precision packed_precision(const PackedLinear& pl) { return pl.precision; }

std::string packed_describe(const PackedLinear& pl) {
  if (pl.precision == Precision::kInt8) {
    std::string s = "int8 u8x64x4 [" + std::to_string(pl.N) + " x " + std::to_string(pl.K) + "] " + pl.impl;
    if (pl.int8_vnni) s += " 6x64 + gemv_vnni";
    if (pl.rsmooth) s += " (smooth)";
    return s;
  }
  std::string s = prec_name(pl.precision);
  if (pl.fmt_id == 0) {
    s += pl.precision == Precision::kBF16 ? " BA16a64b2a" : " BA16a64b";
  } else {
    s += " any-format";
  }
  s += " [" + std::to_string(pl.N) + " x " + std::to_string(pl.K) + "] " + pl.impl;
  if (pl.gemv_ok()) s += " + gemv_avx512";
  return s;
}

void set_gemm_options(const GemmOptions& o) {
  std::lock_guard<std::mutex> lk(g_opt_mu);
  g_opt = o;
}

GemmOptions gemm_options() {
  std::lock_guard<std::mutex> lk(g_opt_mu);
  return g_opt;
}

GemmCacheStats gemm_cache_stats() {
  GemmCacheStats s;
  s.primitives_created = g_created.load();
  s.cache_hits = g_hits.load();
  s.create_ms_total = static_cast<double>(g_create_ns.load()) * 1e-6;
  std::lock_guard<std::mutex> lk(g_cache_mu);
  s.entries = static_cast<int64_t>(g_cache.size());
  return s;
}

std::vector<std::string> gemm_cached_impls() {
  std::lock_guard<std::mutex> lk(g_cache_mu);
  std::vector<std::string> out;
  for (const auto& kv : g_cache) out.push_back(kv.second->impl);
  return out;
}

void gemm_clear_cache() {
  std::lock_guard<std::mutex> lk(g_cache_mu);
  g_cache.clear();
}

// ---------------------------------------------------------------------------------------------------------------
// Batched plain GEMM.
namespace {

struct BatchKey {
  int dt;
  bool trans;
  float beta;
  bool operator<(const BatchKey& o) const { return std::tie(dt, trans, beta) < std::tie(o.dt, o.trans, o.beta); }
};

struct BatchPrim {
  matmul prim;
  memory::desc scratch_md;
};

std::mutex g_batch_mu;
std::map<BatchKey, std::shared_ptr<BatchPrim>> g_batch_cache;

// A primitive with runtime M, N, K, strides and alpha (output scale); beta is a sum post-op, fixed per primitive.
std::shared_ptr<BatchPrim> batch_primitive(mdt dt, bool trans, float beta) {
  const BatchKey key{static_cast<int>(dt), trans, beta};
  std::lock_guard<std::mutex> lk(g_batch_mu);
  auto it = g_batch_cache.find(key);
  if (it != g_batch_cache.end()) return it->second;
  constexpr memory::dim R = DNNL_RUNTIME_DIM_VAL;
  memory::desc a({R, R}, dt, memory::dims{R, 1});
  memory::desc b({R, R}, dt, trans ? memory::dims{1, R} : memory::dims{R, 1});
  memory::desc c({R, R}, mdt::f32, memory::dims{R, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_output_scales(0, {DNNL_RUNTIME_F32_VAL});
  if (beta != 0.f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  OmpThreadLimit lim(1);
  matmul::primitive_desc pd(matmul::desc(a, b, c), attr, cpu_engine());
  auto p = std::make_shared<BatchPrim>(BatchPrim{matmul(pd), pd.scratchpad_desc()});
  g_batch_cache.emplace(key, p);
  return p;
}

}  // namespace

Status gemm_batched(const GemmBatch& g, ThreadPool* pool) {
  if (g.dtype != DType::kF32 && g.dtype != DType::kBF16)
    return Unsupported(std::string("gemm_batched: dtype ") + dtype_name(g.dtype) + "; expected f32 or bf16");
  if (g.batch < 0 || g.M < 0 || g.N < 0 || g.K < 0)
    return InvalidArgument("gemm_batched: negative dimension");
  if (g.batch == 0 || g.M == 0 || g.N == 0) return Status::Ok();
  if (!g.A || !g.B || !g.C) return InvalidArgument("gemm_batched: null pointer");
  const int64_t b_cols = g.b_transposed ? g.K : g.N;
  if (g.lda < g.K || g.ldb < b_cols || g.ldc < g.N)
    return InvalidArgument("gemm_batched: leading dimension smaller than the row length (lda " +
                           std::to_string(g.lda) + ", ldb " + std::to_string(g.ldb) + ", ldc " +
                           std::to_string(g.ldc) + ")");
  if (g.K == 0) {
    // Empty sum: C = beta * C.
    for (int64_t b = 0; b < g.batch; ++b)
      for (int64_t m = 0; m < g.M; ++m) {
        float* c = g.C + b * g.stride_c + m * g.ldc;
        for (int64_t n = 0; n < g.N; ++n) c[n] = g.beta == 0.f ? 0.f : g.beta * c[n];
      }
    return Status::Ok();
  }
  const mdt dt = g.dtype == DType::kBF16 ? mdt::bf16 : mdt::f32;
  const size_t es = g.dtype == DType::kBF16 ? 2 : 4;
  std::shared_ptr<BatchPrim> bp;
  try {
    bp = batch_primitive(dt, g.b_transposed, g.beta);
  } catch (const dnnl::error& e) {
    return Unsupported("gemm_batched: oneDNN: " + dnnl_error_string(e));
  }
  const memory::desc a_md({g.M, g.K}, dt, memory::dims{g.lda, 1});
  const memory::desc b_md({g.K, g.N}, dt, g.b_transposed ? memory::dims{1, g.ldb} : memory::dims{g.ldb, 1});
  const memory::desc c_md({g.M, g.N}, mdt::f32, memory::dims{g.ldc, 1});
  const memory::desc s_md({1}, mdt::f32, mtag::a);
  return parallel_status(pool, g.batch, 1, [&](int, int64_t b0, int64_t b1) {
    OmpThreadLimit lim(1);
    dnnl::engine& eng = cpu_engine();
    float alpha = g.alpha;
    memory s_m(s_md, eng, &alpha);
    // With runtime shapes the scratchpad size is an upper bound known at creation.
    const size_t sp = bp->scratch_md.get_size();
    memory sp_m;
    if (sp > 0) sp_m = memory(bp->scratch_md, eng, thread_dnnl_scratchpad().get(sp));
    for (int64_t b = b0; b < b1; ++b) {
      memory a_m(a_md, eng, const_cast<char*>(static_cast<const char*>(g.A) + static_cast<size_t>(b * g.stride_a) * es));
      memory b_m(b_md, eng, const_cast<char*>(static_cast<const char*>(g.B) + static_cast<size_t>(b * g.stride_b) * es));
      memory c_m(c_md, eng, g.C + b * g.stride_c);
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, a_m},
                                           {DNNL_ARG_WEIGHTS, b_m},
                                           {DNNL_ARG_DST, c_m},
                                           {DNNL_ARG_ATTR_OUTPUT_SCALES, s_m}};
      if (sp_m) args.emplace(DNNL_ARG_SCRATCHPAD, sp_m);
      bp->prim.execute(thread_stream(), args);
    }
  });
}

}  // namespace ev
