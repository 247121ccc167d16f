// The CUDA backend and executor (cuda_backend.h). Host side: device memory, the weight cache, cuBLASLt, the
// graph run (planning, enqueue, CUDA-graph capture and replay, CPU fallback), errors.
#include "kernels/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "core/clock.h"
#include "core/dtype.h"
#include "core/log.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/ref/quant_tensor.h"
#include "kernels/ref/ref_ops.h"

namespace ev {
namespace {

std::string cu_msg(cudaError_t e) { return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")"; }

#define EV_CU(expr, what)                                                                 \
  do {                                                                                    \
    const cudaError_t ev_cu_e = (expr);                                                   \
    if (ev_cu_e != cudaSuccess) return Internal(std::string("CUDA: ") + (what) + ": " + cu_msg(ev_cu_e)); \
  } while (0)

#define EV_LT(expr, what)                                                                           \
  do {                                                                                              \
    const cublasStatus_t ev_lt_s = (expr);                                                          \
    if (ev_lt_s != CUBLAS_STATUS_SUCCESS)                                                           \
      return Internal(std::string("cuBLASLt: ") + (what) + ": " + cublasLtGetStatusName(ev_lt_s));  \
  } while (0)

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// fn(off, len) over [0, n) in parts of at least min_part (multiples of align) on up to 16 threads (half the
// hardware's), the caller's thread taking the first part.
template <typename F>
void split_over_threads(size_t n, size_t min_part, size_t align, F fn) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency() / 2);
  const size_t parts = std::min<size_t>(std::min<size_t>(hw, 16), n / min_part);
  if (parts < 2) {
    fn(size_t(0), n);
    return;
  }
  const size_t per = round_up((n + parts - 1) / parts, align);
  std::vector<std::thread> th;
  for (size_t p = 1; p < parts; ++p) {
    const size_t off = p * per;
    if (off >= n) break;
    th.emplace_back([=] { fn(off, std::min(per, n - off)); });
  }
  fn(size_t(0), std::min(per, n));
  for (auto& t : th) t.join();
}

// Host copies into the pinned staging buffer: a batch of 512-px tiles is 3 MB of f32 pixels per tile, which one
// thread copies at ~10 GB/s; large copies are split over threads.
void staged_copy(void* dst, const void* src, size_t bytes) {
  split_over_threads(bytes, size_t(8) << 20, 4096, [=](size_t off, size_t len) {
    std::memcpy(static_cast<char*>(dst) + off, static_cast<const char*>(src) + off, len);
  });
}

// staged_copy for f32 -> bf16 (round to nearest even, as the device's conversion): inputs that travel as bf16.
// At least 256 K elements per thread (one 512-px tile: 3 threads).
void staged_to_bf16(uint16_t* dst, const float* src, size_t n) {
  split_over_threads(n, size_t(256) << 10, 1024,
                     [=](size_t off, size_t len) { convert_f32_to_bf16(src + off, dst + off, len); });
}

// A device allocation freed with the owner.
struct DevAlloc {
  void* p = nullptr;
  size_t bytes = 0;
  DevAlloc() = default;
  DevAlloc(const DevAlloc&) = delete;
  DevAlloc& operator=(const DevAlloc&) = delete;
  DevAlloc(DevAlloc&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; o.bytes = 0; }
  DevAlloc& operator=(DevAlloc&& o) noexcept {
    std::swap(p, o.p);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DevAlloc() {
    if (p) cudaFree(p);
  }
  Status alloc(size_t n, const char* what) {
    if (p) cudaFree(p);
    p = nullptr;
    bytes = 0;
    if (n == 0) return Status::Ok();
    EV_CU(cudaMalloc(&p, n), std::string("allocating ") + std::to_string(n) + " bytes for " + what);
    bytes = n;
    return Status::Ok();
  }
};

struct PinnedAlloc {
  void* p = nullptr;
  size_t bytes = 0;
  ~PinnedAlloc() {
    if (p) cudaFreeHost(p);
  }
  Status reserve(size_t n) {
    if (n <= bytes) return Status::Ok();
    if (p) cudaFreeHost(p);
    p = nullptr;
    const size_t want = std::max<size_t>(round_up(n, 1 << 20), bytes * 2);
    EV_CU(cudaHostAlloc(&p, want, cudaHostAllocDefault), "pinned staging buffer of " + std::to_string(want) + " bytes");
    bytes = want;
    return Status::Ok();
  }
};

enum class Use : int { kLinear = 0, kTable = 1, kF32 = 2, kBias16 = 3 };  // kBias16: bf16 bias of an FP8 GEMM

// A weight as the device holds it.
struct DevWeight {
  const void* data = nullptr;
  DType dtype = DType::kF32;        // kF32, kBF16, kF16, kI32 (tables), kI8 (int8 Linear)
  const float* scale = nullptr;     // kI8: per-output-channel scales [N]
  const float* inv_smooth = nullptr;  // kI8: 1 / SmoothQuant factor [K], or nullptr
  const void* fp8 = nullptr;         // kBF16 with CudaOptions::fp8: an e4m3 copy [N, K] ...
  const float* fp8_scale = nullptr;  // ... and its scale (device float)
};

cuda::TableType table_type(DType t) {
  switch (t) {
    case DType::kBF16: return cuda::TableType::kBF16;
    case DType::kF16: return cuda::TableType::kF16;
    case DType::kI32: return cuda::TableType::kI32;
    default: return cuda::TableType::kF32;
  }
}

Result<int> device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return Unsupported("no usable CUDA device: " + cu_msg(e));
  }
  if (n == 0) return Unsupported("no CUDA device found");
  return n;
}

class CudaExecutorImpl;

// ---- the backend ----------------------------------------------------------------------------------------------

class CudaBackendImpl final : public Backend {
 public:
  explicit CudaBackendImpl(CudaOptions o) : opt_(std::move(o)) {}
  ~CudaBackendImpl() override;

  Status init() {
    EV_ASSIGN_OR_RETURN(int n, device_count());
    if (opt_.device < 0 || opt_.device >= n)
      return InvalidArgument("CUDA device " + std::to_string(opt_.device) + " does not exist (" + std::to_string(n) +
                             " found)");
    if (opt_.precision != Precision::kBF16 && opt_.precision != Precision::kF32)
      return InvalidArgument(std::string("the CUDA backend computes float Linears in bf16 or f32, not ") +
                             precision_name(opt_.precision) + " (int8 comes from a plan or an int8 checkpoint)");
    EV_CU(cudaSetDevice(opt_.device), "selecting device " + std::to_string(opt_.device));
    EV_CU(cuda::init_kernels(), "configuring kernels");
    if (opt_.fp8) {
      int major = 0, minor = 0;
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, opt_.device);
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, opt_.device);
      if (major * 10 + minor < 89)
        return Unsupported("FP8 GEMMs need compute capability 8.9 or later; device " + std::to_string(opt_.device) +
                           " is sm_" + std::to_string(major) + std::to_string(minor));
      if (opt_.precision != Precision::kBF16) return InvalidArgument("FP8 GEMMs replace bf16 ones: use precision bf16");
    }
    return Status::Ok();
  }

  const char* name() const override { return "cuda"; }

  bool supports(const Node& n) const override {
    for (OpKind k : opt_.disabled_ops)
      if (k == n.op) return false;
    switch (n.op) {
      case OpKind::kInput:
      case OpKind::kCount: return false;
      case OpKind::kAttention: return n.p.head_dim > 0 && n.p.head_dim <= 256;
      // The score's Q K^T runs on the bf16 tensor cores; an f32 backend leaves it to the (exact) fallback.
      case OpKind::kAttnScore:
        return opt_.precision != Precision::kF32 && (n.p.head_dim == 32 || n.p.head_dim == 64 || n.p.head_dim == 128);
      case OpKind::kTopK: return true;  // rows longer than kTopKMax go to the fallback at run time
      default: return true;
    }
  }

  Status prepare_weights(const Graph& g) override {
    EV_CU(cudaSetDevice(opt_.device), "selecting device");
    for (const Node& n : g.nodes) {
      if (n.op == OpKind::kInput) continue;
      for (size_t s = 0; s < n.inputs.size(); ++s) {
        const Node& in = g.node(n.inputs[s]);
        if (in.op != OpKind::kInput || !in.is_weight || !in.bound.data()) continue;
        EV_ASSIGN_OR_RETURN(DevWeight w, weight(in.bound, use_of(n, s)));
        (void)w;
      }
    }
    return Status::Ok();
  }

  // Bumped whenever device weights may move (a new plan drops them): executors' cached graphs name their addresses.
  uint64_t epoch() const { return epoch_.load(); }

  void set_linear_plan(std::shared_ptr<const LinearPlan> plan) override {
    std::lock_guard<std::mutex> lk(mu_);
    ++epoch_;
    plan_ = std::move(plan);
    cudaSetDevice(opt_.device);
    cudaDeviceSynchronize();  // no run may still read the weights dropped here
    cache_.clear();
  }

  Status compute(const Node& n, const std::vector<const Tensor*>& in, Tensor& out) override;

  static Use use_of(const Node& consumer, size_t slot) {
    if (consumer.op == OpKind::kLinear && slot == 1) return Use::kLinear;
    if (consumer.op == OpKind::kGetRows && slot == 0) return Use::kTable;
    return Use::kF32;
  }

  const CudaOptions& options() const { return opt_; }

  // The device copy of weight t for `use`, uploaded (and converted) on first use. Thread-safe.
  Result<DevWeight> weight(const Tensor& t, Use use) {
    std::lock_guard<std::mutex> lk(mu_);
    const auto key = std::make_pair(t.data(), static_cast<int>(use));
    auto it = cache_.find(key);
    if (it != cache_.end() && it->second.orig.dtype() == t.dtype() && it->second.orig.shape() == t.shape())
      return it->second.w;
    Entry e;
    e.orig = t;
    e.host = t;
    EV_RETURN_IF_ERROR(upload(t, use, &e));
    auto r = cache_.insert_or_assign(key, std::move(e));
    return r.first->second.w;
  }


 private:
  struct Entry {
    Tensor orig;  // the tensor asked for (its storage stays alive, so its address cannot be reused while cached)
    Tensor host;
    DevWeight w;
    std::vector<DevAlloc> allocs;
  };

  bool planned_int8(const Tensor& w) const {
    return plan_ && plan_->precision_of(w.name(), Precision::kF32) == Precision::kInt8;
  }

  static Status put(Entry* e, const void* src, size_t bytes, const std::string& what, const void** dst) {
    DevAlloc a;
    EV_RETURN_IF_ERROR(a.alloc(std::max<size_t>(bytes, 16), what.c_str()));
    if (bytes) EV_CU(cudaMemcpy(a.p, src, bytes, cudaMemcpyHostToDevice), "uploading " + what);
    *dst = a.p;
    e->allocs.push_back(std::move(a));
    return Status::Ok();
  }

  Status upload(const Tensor& t, Use use, Entry* e) {
    const std::string nm = t.name().empty() ? std::string("a weight") : "weight '" + t.name() + "'";
    const size_t n = static_cast<size_t>(t.numel());
    if (use == Use::kLinear && (t.dtype() == DType::kI8 || planned_int8(t))) {
      Tensor q = t;
      if (t.dtype() != DType::kI8) {
        EV_ASSIGN_OR_RETURN(q, quantize_weight_int8(t, plan_->smooth_of(t.name())));
      } else {
        EV_RETURN_IF_ERROR(check_int8_weight(t).with_context(nm));
      }
      const QuantParams& qp = *q.quant();
      e->w.dtype = DType::kI8;
      EV_RETURN_IF_ERROR(put(e, q.data(), n, nm, &e->w.data));
      const void* sp = nullptr;
      EV_RETURN_IF_ERROR(put(e, qp.scale.data(), qp.scale.nbytes(), nm + " scales", &sp));
      e->w.scale = static_cast<const float*>(sp);
      if (qp.smooth.data()) {
        const int64_t K = qp.smooth.numel();
        std::vector<float> inv(static_cast<size_t>(K));
        for (int64_t k = 0; k < K; ++k) inv[static_cast<size_t>(k)] = 1.0f / qp.smooth.data_as<const float>()[k];
        const void* ip = nullptr;
        EV_RETURN_IF_ERROR(put(e, inv.data(), inv.size() * 4, nm + " smoothing", &ip));
        e->w.inv_smooth = static_cast<const float*>(ip);
      }
      e->host = q;  // the quantised copy's storage; the float original lives in the checkpoint's mapping
      return Status::Ok();
    }
    const bool is_float = t.dtype() == DType::kF32 || t.dtype() == DType::kBF16 || t.dtype() == DType::kF16;
    if (use == Use::kBias16 && is_float) {  // cuBLASLt's FP8 GEMMs take a bf16 bias
      e->w.dtype = DType::kBF16;
      if (t.dtype() == DType::kBF16) return put(e, t.data(), t.nbytes(), nm, &e->w.data);
      std::vector<float> f(n);
      if (t.dtype() == DType::kF32)
        std::memcpy(f.data(), t.data(), n * 4);
      else
        convert_f16_to_f32(t.data_as<const uint16_t>(), f.data(), n);
      std::vector<uint16_t> h(n);
      convert_f32_to_bf16(f.data(), h.data(), n);
      return put(e, h.data(), n * 2, nm + " (bf16 bias)", &e->w.data);
    }
    if (use == Use::kTable || !is_float) {
      if (!is_float && t.dtype() != DType::kI32)
        return Unsupported(nm + ": dtype " + dtype_name(t.dtype()) + " is not supported by the CUDA backend here");
      e->w.dtype = t.dtype();
      return put(e, t.data(), t.nbytes(), nm, &e->w.data);
    }
    if (use == Use::kLinear && opt_.precision == Precision::kBF16) {
      e->w.dtype = DType::kBF16;
      if (t.dtype() == DType::kBF16) {
        EV_RETURN_IF_ERROR(put(e, t.data(), t.nbytes(), nm, &e->w.data));
      } else {
        std::vector<uint16_t> b(n);
        if (t.dtype() == DType::kF32) {
          convert_f32_to_bf16(t.data_as<const float>(), b.data(), n);
        } else {
          std::vector<float> f(n);
          convert_f16_to_f32(t.data_as<const uint16_t>(), f.data(), n);
          convert_f32_to_bf16(f.data(), b.data(), n);
        }
        EV_RETURN_IF_ERROR(put(e, b.data(), n * 2, nm, &e->w.data));
      }
      if (opt_.fp8 && t.ndim() == 2 && t.dim(1) % 16 == 0) {  // e4m3 copy from the bf16 one, on the device
        DevAlloc q, sc;
        EV_RETURN_IF_ERROR(q.alloc(std::max<size_t>(n, 16), (nm + " (fp8)").c_str()));
        EV_RETURN_IF_ERROR(sc.alloc(256, (nm + " (fp8 scale)").c_str()));
        char* words = static_cast<char*>(sc.p);
        cuda::to_fp8(e->w.data, true, static_cast<int64_t>(n), static_cast<uint8_t*>(q.p), reinterpret_cast<float*>(words),
                     reinterpret_cast<unsigned*>(words + 128), nullptr);
        EV_CU(cudaDeviceSynchronize(), "converting " + nm + " to fp8");
        e->w.fp8 = q.p;
        e->w.fp8_scale = reinterpret_cast<const float*>(words);
        e->allocs.push_back(std::move(q));
        e->allocs.push_back(std::move(sc));
      }
      return Status::Ok();
    }
    e->w.dtype = DType::kF32;
    if (t.dtype() == DType::kF32) return put(e, t.data(), t.nbytes(), nm, &e->w.data);
    std::vector<float> f(n);
    if (t.dtype() == DType::kBF16)
      convert_bf16_to_f32(t.data_as<const uint16_t>(), f.data(), n);
    else
      convert_f16_to_f32(t.data_as<const uint16_t>(), f.data(), n);
    return put(e, f.data(), n * 4, nm, &e->w.data);
  }

  CudaOptions opt_;
  std::shared_ptr<const LinearPlan> plan_;
  std::atomic<uint64_t> epoch_{0};
  mutable std::mutex mu_;
  std::map<std::pair<const void*, int>, Entry> cache_;
  std::mutex compute_mu_;
  std::unique_ptr<Executor> node_exec_;  // compute()'s own executor
  friend class CudaExecutorImpl;
};

// ---- cuBLASLt --------------------------------------------------------------------------------------------------

enum class GemmType : int { kF32 = 0, kBF16 = 1, kI8 = 2, kFP8 = 3 };  // kFP8: e4m3 A and B, f32 / bf16 out

class LtGemm {
 public:
  ~LtGemm() {
    for (auto& kv : plans_) kv.second.destroy();
    if (handle_) cublasLtDestroy(handle_);
  }
  Status init() {
    EV_LT(cublasLtCreate(&handle_), "creating a handle");
    return workspace_.alloc(kWorkspace, "the cuBLASLt workspace");
  }
  // Y [M, N] (f32, or i32 for kI8, or bf16 with out16) = X [M, K] . W[N, K]^T (+ bias [N], f32) (then GELU, tanh
  // form, with gelu) (+ residual [M, N], f32 via beta = 1).
  Status run(GemmType t, const void* w, const void* x, void* y, int64_t M, int64_t N, int64_t K, const void* bias,
             const float* residual, cudaStream_t s, bool out16 = false, bool gelu = false,
             const float* w_scale = nullptr, const float* x_scale = nullptr) {
    const Key key{static_cast<int>(t), M, N, K, bias != nullptr, residual != nullptr, out16, gelu};
    Plan* pp = nullptr;
    EV_RETURN_IF_ERROR(plan_for(key, &pp));
    Plan& p = *pp;
    if (bias)
      EV_LT(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
            "setting the bias");
    if (t == GemmType::kFP8) {  // D = (w_scale * x_scale) (W . X) [+ bias] [GELU] [+ residual]
      EV_LT(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale)),
            "setting the weight scale");
      EV_LT(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof(x_scale)),
            "setting the input scale");
    }
    if (t == GemmType::kI8) {
      const int32_t alpha = 1, beta = 0;
      EV_LT(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.d, &p.algo, workspace_.p,
                           workspace_.bytes, s),
            "int8 matmul");
      return Status::Ok();
    }
    const float alpha = 1.f, beta = residual ? 1.f : 0.f;
    EV_LT(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, residual ? residual : y, p.c, y, p.d,
                         &p.algo, workspace_.p, workspace_.bytes, s),
          "matmul");
    return Status::Ok();
  }

 public:
  // Whether cuBLASLt has an algorithm for this GEMM (the executor asks before it fuses an epilogue into it).
  bool supported(GemmType t, int64_t M, int64_t N, int64_t K, bool bias, bool residual, bool out16, bool gelu) {
    Plan* p = nullptr;
    return plan_for(Key{static_cast<int>(t), M, N, K, bias, residual, out16, gelu}, &p).ok();
  }

  // Autotuning. A new GEMM shape first runs cuBLASLt's top heuristic (it may be met inside a graph capture, where
  // nothing can be timed); after the run, outside any capture, tune() times each of the heuristic's candidates on
  // scratch operands of that shape and keeps the fastest. epoch() counts the changes, so that graphs captured
  // with the old algorithms are captured again.
  bool needs_tuning() const { return tuning_ && untuned_ > 0; }
  uint64_t epoch() const { return epoch_; }
  void set_tuning(bool on) { tuning_ = on; }
  int tuned_shapes() const { return tuned_; }
  double tuning_seconds() const { return tune_s_; }
  Status tune(cudaStream_t s);

 private:
  static constexpr size_t kWorkspace = 32u << 20;
  struct Key {
    int t;
    int64_t M, N, K;
    bool bias, residual, out16, gelu;
    bool operator<(const Key& o) const {
      return std::tie(t, M, N, K, bias, residual, out16, gelu) <
             std::tie(o.t, o.M, o.N, o.K, o.bias, o.residual, o.out16, o.gelu);
    }
  };
  std::map<Key, Status> failed_;
  static constexpr int kCandidates = 8;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's, best first
    bool tuned = false;
    void destroy() {
      if (desc) cublasLtMatmulDescDestroy(desc);
      for (auto* l : {a, b, c, d})
        if (l) cublasLtMatrixLayoutDestroy(l);
      desc = nullptr;
      a = b = c = d = nullptr;
    }
  };

  Status plan_for(const Key& key, Plan** out) {
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = &it->second;
    return Status::Ok();
  }
  auto f = failed_.find(key);
  if (f != failed_.end()) return f->second;
  Plan p;
  Status st = make_plan(key, &p);
  if (!st.ok()) {
    p.destroy();
    st = st.with_context("GEMM " + std::to_string(key.M) + "x" + std::to_string(key.N) + "x" + std::to_string(key.K));
    failed_.emplace(key, st);
    return st;
  }
  if (p.candidates.size() > 1) ++untuned_;
  else p.tuned = true;
  *out = &plans_.emplace(key, p).first->second;
  return Status::Ok();
}

  Status make_plan(const Key& k, Plan* p) {
    const GemmType t = static_cast<GemmType>(k.t);
    const cudaDataType_t ab = t == GemmType::kF32    ? CUDA_R_32F
                              : t == GemmType::kBF16 ? CUDA_R_16BF
                              : t == GemmType::kFP8  ? CUDA_R_8F_E4M3
                                                     : CUDA_R_8I;
    const cudaDataType_t cd = t == GemmType::kI8 ? CUDA_R_32I : k.out16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = t == GemmType::kI8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    EV_LT(cublasLtMatmulDescCreate(&p->desc, ct, t == GemmType::kI8 ? CUDA_R_32I : CUDA_R_32F), "descriptor");
    const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    EV_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)), "transa");
    EV_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)), "transb");
    if (k.bias || k.gelu) {
      const cublasLtEpilogue_t epi = k.gelu ? (k.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU)
                                            : CUBLASLT_EPILOGUE_BIAS;
      EV_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "epilogue");
    }
    if (t == GemmType::kFP8) {  // accumulate in the tensor cores' own precision, without periodic promotion
      const int8_t fast = 1;
      EV_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)), "fast accumulation");
    }
    if (k.bias) {
      const cudaDataType_t bt = t == GemmType::kFP8 ? CUDA_R_16BF : CUDA_R_32F;
      EV_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)),
            "bias type");
    }
    // Column-major views of the row-major operands: W [N, K] is K x N (ld K), transposed; X [M, K] is K x M; Y [M, N]
    // is N x M.
    EV_LT(cublasLtMatrixLayoutCreate(&p->a, ab, static_cast<uint64_t>(k.K), static_cast<uint64_t>(k.N), k.K), "layout A");
    EV_LT(cublasLtMatrixLayoutCreate(&p->b, ab, static_cast<uint64_t>(k.K), static_cast<uint64_t>(k.M), k.K), "layout B");
    EV_LT(cublasLtMatrixLayoutCreate(&p->c, cd, static_cast<uint64_t>(k.N), static_cast<uint64_t>(k.M), k.N), "layout C");
    EV_LT(cublasLtMatrixLayoutCreate(&p->d, cd, static_cast<uint64_t>(k.N), static_cast<uint64_t>(k.M), k.N), "layout D");
    cublasLtMatmulPreference_t pref = nullptr;
    EV_LT(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t ws = kWorkspace;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t res[kCandidates] = {};
    int found = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->c, p->d, pref, kCandidates, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0)
      return Unsupported(std::string("cuBLASLt has no algorithm for this ") +
                         (t == GemmType::kI8 ? "int8" : t == GemmType::kBF16 ? "bf16" : t == GemmType::kFP8 ? "fp8" : "f32") + " GEMM" +
                         (k.bias ? " with a bias epilogue" : "") + " (" + cublasLtGetStatusName(hs) + ")");
    p->algo = res[0].algo;
    for (int i = 0; i < found; ++i)
      if (res[i].state == CUBLAS_STATUS_SUCCESS) p->candidates.push_back(res[i].algo);
    return Status::Ok();
  }

  bool tuning_ = true;
  int untuned_ = 0, tuned_ = 0;
  uint64_t epoch_ = 0;
  double tune_s_ = 0;

  cublasLtHandle_t handle_ = nullptr;
  DevAlloc workspace_;
  std::map<Key, Plan> plans_;
};

Status LtGemm::tune(cudaStream_t s) {
  const double t0 = now_s();
  size_t free_b = 0, total_b = 0;
  EV_CU(cudaMemGetInfo(&free_b, &total_b), "querying free memory");
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  EV_CU(cudaEventCreate(&e0), "creating an event");
  EV_CU(cudaEventCreate(&e1), "creating an event");
  Status st = Status::Ok();
  for (auto& [k, p] : plans_) {
    if (p.tuned) continue;
    p.tuned = true;
    --untuned_;
    const GemmType t = static_cast<GemmType>(k.t);
    const size_t ab = t == GemmType::kF32 ? 4 : t == GemmType::kBF16 ? 2 : 1;  // kI8, kFP8: one byte
    const size_t cd = t == GemmType::kI8 ? 4 : k.out16 ? 2 : 4;
    const size_t wa = round_up(static_cast<size_t>(k.N * k.K) * ab, 256), xb = round_up(static_cast<size_t>(k.K * k.M) * ab, 256);
    const size_t yb = round_up(static_cast<size_t>(k.M * k.N) * cd, 256), bb = round_up(static_cast<size_t>(k.N) * 4, 256);
    const size_t need = wa + xb + yb + bb;
    if (need > free_b / 2) continue;  // keep the heuristic's choice rather than crowd the device
    DevAlloc buf;
    if (!buf.alloc(need, "GEMM tuning").ok()) {
      cudaGetLastError();
      continue;
    }
    char* base = static_cast<char*>(buf.p);
    cudaMemsetAsync(base, 0x3c, need, s);  // small finite values in every type (bf16 / f32 ~0.011, int8 60)
    void *w = base, *x = base + wa, *y = base + wa + xb;
    const float* bias = reinterpret_cast<const float*>(base + wa + xb + yb);
    if (k.bias)
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    const int32_t ia = 1, ib = 0;
    const float fa = 1.f, fb = k.residual ? 1.f : 0.f;
    const void* alpha = t == GemmType::kI8 ? static_cast<const void*>(&ia) : &fa;
    const void* beta = t == GemmType::kI8 ? static_cast<const void*>(&ib) : &fb;
    float best = -1.f;
    for (const cublasLtMatmulAlgo_t& algo : p.candidates) {
      auto once = [&] {
        return cublasLtMatmul(handle_, p.desc, alpha, w, p.a, x, p.b, beta, y, p.c, y, p.d, &algo, workspace_.p,
                              workspace_.bytes, s);
      };
      if (once() != CUBLAS_STATUS_SUCCESS) continue;  // warm-up; a candidate that cannot run is skipped
      cudaEventRecord(e0, s);
      constexpr int kReps = 3;
      bool ok = true;
      for (int r = 0; r < kReps && ok; ++r) ok = once() == CUBLAS_STATUS_SUCCESS;
      cudaEventRecord(e1, s);
      if (cudaEventSynchronize(e1) != cudaSuccess || !ok) {
        cudaGetLastError();
        continue;
      }
      float ms = 0.f;
      cudaEventElapsedTime(&ms, e0, e1);
      if (best < 0.f || ms < best) {
        best = ms;
        p.algo = algo;
      }
    }
    const cudaError_t se = cudaStreamSynchronize(s);
    if (se != cudaSuccess) {
      st = Internal("CUDA: GEMM tuning: " + cu_msg(se));
      break;
    }
    ++tuned_;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  ++epoch_;
  tune_s_ += now_s() - t0;
  return st;
}

// ---- the executor ------------------------------------------------------------------------------------------------

constexpr int64_t kTopKMax = 5000;  // top_k_kernel keeps a row (and its flags) in 48 KB of shared memory

class CudaExecutorImpl final : public Executor {
 public:
  CudaExecutorImpl(CudaBackendImpl* be, Backend* fallback) : Executor(be, fallback), be_(be) {}
  ~CudaExecutorImpl() override {
    cudaSetDevice(be_->options().device);
    if (stream_) cudaStreamSynchronize(stream_);
    if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
    blocks_.clear();
    mirrors_.clear();
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status init() {
    EV_CU(cudaSetDevice(be_->options().device), "selecting device");
    EV_CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating a stream");
    EV_RETURN_IF_ERROR(lt_.init());
    lt_.set_tuning(be_->options().tune_gemms);
    EV_RETURN_IF_ERROR(err_dev_.alloc(sizeof(cuda::DevError), "the error word"));
    EV_RETURN_IF_ERROR(fp8_words_.alloc(256, "the FP8 scale words"));
    graphs_ = be_->options().graphs;
    return Status::Ok();
  }

  Result<ExecResult> run(const Graph& g, const ExecOptions& opt) override;

  void keep_resident(const Tensor& whole) override {
    if (!whole.data() || !whole.owner()) return;
    std::lock_guard<std::mutex> lk(run_mu_);
    cudaSetDevice(be_->options().device);
    const char* p = static_cast<const char*>(whole.data());
    Status st = ensure_mirror(whole.owner(), p, p + whole.nbytes());
    if (!st.ok()) EV_LOG_WARN("CUDA: cannot keep a buffer resident: %s", st.message().c_str());
  }

  size_t activation_bytes() const override {
    size_t b = 0;
    for (const Block& bl : blocks_) b += bl.mem.bytes;
    return b;
  }

  const CudaRunStats& stats() const { return stats_; }

 private:
  struct Block {
    DevAlloc mem;
    bool busy = false;
  };
  // A host buffer (by its owner) mirrored in device memory: the device copy is the current one.
  struct Mirror {
    std::weak_ptr<void> owner;
    const char* host0 = nullptr;
    const char* host1 = nullptr;
    DevAlloc mem;
  };
  // Where a node's output lives for this run.
  struct Loc {
    char* dev = nullptr;    // device pointer (f32 / i32 / weights' own types)
    DType dtype = DType::kF32;
    int block = -1;         // pool block owned by this node (released after the last use)
  };
  struct NodePlan {
    bool gpu = true;
    bool skip = false;          // a Linear computed by the Add that follows it
    int fused_linear = -1;      // Add: the Linear it computes, with its other input as the residual
    int residual_slot = -1;     // Add: which of its inputs the residual is (it may be a weight, e.g. positions)
    bool need_lse = false;      // attention: write the log-sum-exp rows
    int lse_of = -1;            // attn_score: the attention whose LSE it reuses
    int lse_block = -1;         // attention: the LSE buffer
    bool out16 = false;         // the output is bf16 (every consumer is a GEMM or attention that wants bf16)
    bool gelu = false;          // GeluTanh computed by its Linear's epilogue (fused_linear is that Linear)
    int pre = 0;                // Linear (GEMV): its input computed on the fly from pre_node (cuda::GemvPre)
    int pre_node = -1;          // ... the RMSNorm or fused SwiGLU it replaces
    bool deferred = false;      // placed (its output has a home) but computed by a later node's fused kernel
    int prologue_q = -1, prologue_k = -1, prologue_ks = -1;  // static decode: this V scatter runs rope_store_kv
    int64_t stage_off = -1;     // host leaf: offset of its bytes in the pinned staging buffer
    bool stage16 = false;       // host leaf (f32) that travels as bf16: only bf16 consumers read it (pixels)
    DevWeight w[3];             // weight inputs, as the device holds them
    DevWeight bias16;           // Linear with an FP8 weight copy: its bias in bf16 (cuBLASLt's FP8 bias type)
  };

  int take_block(size_t bytes) {
    bytes = std::max<size_t>(256, round_up(bytes, 256));
    int best = -1;
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& b = blocks_[i];
      if (b.busy || b.mem.bytes < bytes || b.mem.bytes > bytes * 2) continue;
      if (best < 0 || b.mem.bytes < blocks_[static_cast<size_t>(best)].mem.bytes) best = static_cast<int>(i);
    }
    if (best >= 0) {
      blocks_[static_cast<size_t>(best)].busy = true;
      return best;
    }
    Block b;
    if (!b.mem.alloc(bytes, "an activation").ok()) return -1;
    b.busy = true;
    blocks_.push_back(std::move(b));
    return static_cast<int>(blocks_.size()) - 1;
  }

  Mirror* find_mirror(const std::shared_ptr<void>& owner) {
    auto it = mirrors_.find(owner.get());
    if (it == mirrors_.end()) return nullptr;
    if (it->second.owner.expired() || it->second.owner.lock() != owner) {  // the old buffer is gone
      mirrors_.erase(it);
      ++mirror_epoch_;
      return nullptr;
    }
    return &it->second;
  }

  // Makes (or grows) the mirror of `owner` to cover host bytes [p0, p1). Newly covered bytes are uploaded from the
  // host (which is current for bytes never mirrored).
  Status ensure_mirror(const std::shared_ptr<void>& owner, const char* p0, const char* p1) {
    Mirror* m = find_mirror(owner);
    if (m && m->host0 <= p0 && p1 <= m->host1) return Status::Ok();
    const char* n0 = m ? std::min(m->host0, p0) : p0;
    const char* n1 = m ? std::max(m->host1, p1) : p1;
    DevAlloc mem;
    EV_RETURN_IF_ERROR(mem.alloc(static_cast<size_t>(n1 - n0), "a resident buffer"));
    ++mirror_epoch_;
    EV_CU(cudaStreamSynchronize(stream_), "synchronising before growing a resident buffer");
    if (m) {
      if (m->host0 > n0) EV_CU(cudaMemcpy(mem.p, n0, static_cast<size_t>(m->host0 - n0), cudaMemcpyHostToDevice), "upload");
      EV_CU(cudaMemcpy(static_cast<char*>(mem.p) + (m->host0 - n0), m->mem.p, static_cast<size_t>(m->host1 - m->host0),
                       cudaMemcpyDeviceToDevice),
            "moving a resident buffer");
      if (n1 > m->host1)
        EV_CU(cudaMemcpy(static_cast<char*>(mem.p) + (m->host1 - n0), m->host1, static_cast<size_t>(n1 - m->host1),
                         cudaMemcpyHostToDevice),
              "upload");
      m->mem = std::move(mem);
      m->host0 = n0;
      m->host1 = n1;
      return Status::Ok();
    }
    EV_CU(cudaMemcpy(mem.p, n0, static_cast<size_t>(n1 - n0), cudaMemcpyHostToDevice), "uploading a resident buffer");
    Mirror nm;
    nm.owner = owner;
    nm.host0 = n0;
    nm.host1 = n1;
    nm.mem = std::move(mem);
    mirrors_[owner.get()] = std::move(nm);
    return Status::Ok();
  }

  char* mirror_ptr(const Tensor& t) {
    Mirror* m = t.owner() ? find_mirror(t.owner()) : nullptr;
    if (!m) return nullptr;
    const char* p = static_cast<const char*>(t.data());
    if (p < m->host0 || p + t.nbytes() > m->host1) return nullptr;
    return static_cast<char*>(m->mem.p) + (p - m->host0);
  }

  Status plan_run(const Graph& g, const ExecOptions& opt);
  void restage(const Graph& g);
  uint64_t signature(const Graph& g) const;
  void fuse_bf16(const Graph& g);
  // Node `n`'s inputs are read at node `at` too (by the node that computes n in a fused kernel): their buffers
  // live until then.
  void read_inputs_at(const Node& n, int64_t at) {
    for (TensorId in : n.inputs) {
      int64_t& lu = last_use_[static_cast<size_t>(root_[static_cast<size_t>(in)])];
      lu = std::max(lu, at);
    }
  }
  void fuse_gemv_inputs(const Graph& g);
  void fuse_decode_prologue(const Graph& g);
  bool bf16_gemm(const Graph& g, size_t i) const;
  Status enqueue(const Graph& g, const ExecOptions& opt, std::vector<float>* node_ms);
  Status exec_node(const Graph& g, size_t i);
  // y: f32, or bf16 with out16; gelu: the GELU epilogue. The input may be bf16 (its Loc says).
  Status exec_linear(const Graph& g, size_t i, const Node& lin, const float* residual, void* y, bool out16 = false,
                     bool gelu = false);
  Status exec_cpu(const Graph& g, size_t i);
  Result<Tensor> download(const Graph& g, TensorId id);
  const float* fptr(TensorId id) const { return reinterpret_cast<const float*>(loc_[static_cast<size_t>(id)].dev); }

  CudaBackendImpl* be_;
  cudaStream_t stream_ = nullptr;
  LtGemm lt_;
  DevAlloc err_dev_, scratch_;
  PinnedAlloc pinned_;
  std::vector<Block> blocks_;
  std::map<const void*, Mirror> mirrors_;
  cudaGraphExec_t graph_exec_ = nullptr;
  bool graphs_ = true;
  bool capture_failed_ = false;
  CudaRunStats stats_, last_stats_;
  uint64_t last_sig_ = 0;       // signature of the graph graph_exec_ holds as it is (0: none)
  uint64_t mirror_epoch_ = 0;   // bumped whenever resident memory moves
  std::mutex run_mu_;

  // Per-run state (members so that decode steps reuse the storage).
  std::vector<NodePlan> plan_;
  std::vector<Loc> loc_;
  std::vector<TensorId> root_;
  std::vector<int64_t> last_use_;
  std::vector<uint8_t> keep_, view_;
  std::vector<int> consumers_;
  int64_t stage_total_ = 0;
  size_t scratch_need_ = 0;
  bool any_cpu_ = false;
  int64_t bf16_src_ = -1;  // the node whose bf16 copy the scratch holds (q, k, v Linears share one conversion)
  bool scratch_fp8_ = false;  // ... or whose e4m3 copy (FP8 GEMMs), its scale in fp8_words_
  DevAlloc fp8_words_;      // the FP8 input scale [0] and the amax word [128]
  std::vector<std::pair<TensorId, int64_t>> downloads_;  // kept roots and their staging offsets
};

Result<ExecResult> CudaExecutorImpl::run(const Graph& g, const ExecOptions& opt) {
  EV_RETURN_IF_ERROR(g.status());
  std::lock_guard<std::mutex> lk(run_mu_);
  EV_CU(cudaSetDevice(be_->options().device), "selecting device");
  // A failed run may have left copies in flight that read or write the staging buffer.
  EV_CU(cudaStreamSynchronize(stream_), "finishing the previous run");
  stats_ = CudaRunStats{};
  const int64_t t0 = now_ns();
  ExecResult res;
  res.values.resize(g.nodes.size());
  std::vector<float> node_ms;
  // The same graph as the last captured run (same nodes, shapes, parameters, bound memory and weights): replay the
  // instantiated CUDA graph as it is, after staging the new input values. No planning, no capture.
  // Resident copies of host buffers that are gone (a finished generation's KV cache) are dropped first.
  for (auto it = mirrors_.begin(); it != mirrors_.end();) {
    if (it->second.owner.expired()) {
      it = mirrors_.erase(it);
      ++mirror_epoch_;
    } else {
      ++it;
    }
  }
  const bool cacheable = graphs_ && !opt.on_tensor && !opt.on_inputs && !opt.time_nodes;
  const uint64_t sig = cacheable ? signature(g) : 0;
  int64_t t1 = t0;
  if (cacheable && graph_exec_ && sig == last_sig_) {
    restage(g);
    t1 = now_ns();
    EV_CU(cudaGraphLaunch(graph_exec_, stream_), "launching the graph");
    stats_ = last_stats_;
    stats_.graph_replayed = true;
    stats_.graph_updated = false;
    stats_.replayed_as_is = true;
  } else {
    last_sig_ = 0;
    EV_RETURN_IF_ERROR(plan_run(g, opt));
    t1 = now_ns();
    capture_failed_ = false;
    Status est = enqueue(g, opt, opt.time_nodes ? &node_ms : nullptr);
    if (!est.ok() && capture_failed_) est = enqueue(g, opt, opt.time_nodes ? &node_ms : nullptr);  // directly
    EV_RETURN_IF_ERROR(est);
    if (stats_.graph_replayed) {
      last_sig_ = sig;
      last_stats_ = stats_;
    }
  }
  const int64_t t2 = now_ns();
  EV_CU(cudaStreamSynchronize(stream_), "running the graph");
  const int64_t t3 = now_ns();
  stats_.plan_s = static_cast<double>(t1 - t0) * 1e-9;
  stats_.enqueue_s = static_cast<double>(t2 - t1) * 1e-9;
  stats_.wait_s = static_cast<double>(t3 - t2) * 1e-9;
  const auto* err = reinterpret_cast<const cuda::DevError*>(static_cast<const char*>(pinned_.p) + stage_total_);
  if (err->code != cuda::kErrNone) {
    const int code = err->code;
    if (code == cuda::kErrGetRowsId)
      return InvalidArgument("get_rows: id " + std::to_string(err->value) + " at position " + std::to_string(err->pos) +
                             " is outside the table's " + std::to_string(err->limit) + " rows");
    return InvalidArgument("scatter_rows: index " + std::to_string(err->value) + " at position " +
                           std::to_string(err->pos) + " is outside the base's " + std::to_string(err->limit) + " rows");
  }
  // Kept outputs come down through the staging buffer.
  for (const auto& [id, off] : downloads_) {
    const Node& nd = g.node(id);
    Tensor t = nd.bound.data() ? nd.bound : Tensor::empty(nd.out_dtype, nd.out_shape);
    if (nd.bound.data()) {
      EV_ASSIGN_OR_RETURN(t, t.reshape(nd.out_shape));
    }
    std::memcpy(t.data(), static_cast<const char*>(pinned_.p) + off, t.nbytes());
    t.set_name(nd.name);
    res.values[static_cast<size_t>(id)] = std::move(t);
  }
  // Leaves and views of kept outputs, as the host executor returns them.
  const size_t n = g.nodes.size();
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op == OpKind::kInput) {
      res.values[i] = nd.bound;
      continue;
    }
    if (!view_[i] || !keep_[static_cast<size_t>(root_[i])]) continue;
    const Tensor& src = res.values[static_cast<size_t>(nd.inputs[0])];
    if (!src.data()) continue;
    if (nd.op == OpKind::kReshape) {
      EV_ASSIGN_OR_RETURN(res.values[i], src.reshape(nd.out_shape));
    } else {
      EV_ASSIGN_OR_RETURN(Tensor flat, src.reshape(Shape{src.numel(), 1}));
      Tensor part = src.shape().rows() == 1 ? flat.slice_rows(nd.p.col_begin, nd.p.col_end) : flat;
      EV_ASSIGN_OR_RETURN(res.values[i], part.reshape(nd.out_shape));
    }
    res.values[i].set_name(nd.name);
  }
  for (size_t i = 0; i < n; ++i)
    if (!keep_[static_cast<size_t>(root_[i])] && g.nodes[i].op != OpKind::kInput) res.values[i] = Tensor();
  if (opt.time_nodes) {
    for (size_t i = 0; i < n; ++i)
      if (node_ms[i] >= 0.f) res.timings.push_back({static_cast<TensorId>(i), static_cast<double>(node_ms[i]) * 1e-3});
  }
  for (Block& b : blocks_) b.busy = false;
  stats_.device_bytes = activation_bytes();
  // New GEMM shapes of this run: their algorithms are chosen by timing now, outside any capture.
  if (lt_.needs_tuning()) {
    const Status ts = lt_.tune(stream_);
    if (!ts.ok()) {
      EV_LOG_WARN("CUDA: GEMM tuning stopped: %s", ts.to_string().c_str());
      lt_.set_tuning(false);
    }
  }
  stats_.gemm_shapes_tuned = lt_.tuned_shapes();
  stats_.gemm_tuning_s = lt_.tuning_seconds();
  return res;
}

// Decode: an RMSNorm or a fused [gate | up] SwiGLU whose only consumer is a GEMV Linear is computed inside that
// GEMV (cuda::gemv_pre): one kernel instead of two.
void CudaExecutorImpl::fuse_gemv_inputs(const Graph& g) {
  const size_t n = g.nodes.size();
  std::vector<int64_t> runs_at(n);
  for (size_t i = 0; i < n; ++i) runs_at[i] = static_cast<int64_t>(i);
  for (size_t j = 0; j < n; ++j)
    if (plan_[j].fused_linear >= 0) runs_at[static_cast<size_t>(plan_[j].fused_linear)] = static_cast<int64_t>(j);
  for (size_t i = 0; i < n; ++i) {
    const Node& ln = g.nodes[i];
    NodePlan& lp = plan_[i];
    if (ln.op != OpKind::kLinear || !lp.gpu || !lp.w[1].data || lp.w[1].dtype == DType::kI8) continue;
    const Shape& xs = g.shape(ln.inputs[0]);
    if (!cuda::gemv_fits(xs.rows(), xs.cols())) continue;
    const size_t x = static_cast<size_t>(ln.inputs[0]);
    const Node& xn = g.nodes[x];
    NodePlan& xp = plan_[x];
    if (consumers_[x] != 1 || xn.keep || xn.bound.data() || !xp.gpu || xp.skip || view_[x]) continue;
    int pre = 0;
    if (xn.op == OpKind::kRMSNorm && xp.w[1].data)
      pre = static_cast<int>(cuda::GemvPre::kRmsNorm);
    else if (xn.op == OpKind::kSwiGLU && xn.inputs.size() == 1)
      pre = static_cast<int>(cuda::GemvPre::kSwiGLU);
    if (pre == 0) continue;
    lp.pre = pre;
    lp.pre_node = static_cast<int>(x);
    xp.skip = true;
    ++stats_.fused_nodes;
    read_inputs_at(xn, runs_at[i]);  // read where the Linear runs
  }
}

// Static decode (graph.h: attention and rope with a positions tensor, K/V scattered into the cache in place): the
// q rope, the k rope, the K scatter and the V scatter of a layer become one kernel (cuda::rope_store_kv), run
// where the V scatter was.
void CudaExecutorImpl::fuse_decode_prologue(const Graph& g) {
  const size_t n = g.nodes.size();
  auto single = [&](TensorId id) { return consumers_[static_cast<size_t>(id)] == 1 && !g.node(id).keep; };
  auto view_of = [&](TensorId id) -> TensorId {  // the node a reshape view shows, or -1
    const Node& v = g.node(id);
    return v.op == OpKind::kReshape && view_[static_cast<size_t>(id)] ? v.inputs[0] : TensorId{-1};
  };
  auto in_place_scatter = [&](TensorId id, TensorId pos) {
    const Node& s = g.node(id);
    if (s.op != OpKind::kScatterRows || !plan_[static_cast<size_t>(id)].gpu || !s.bound.data() || s.inputs[2] != pos)
      return false;
    const Node& base = g.node(s.inputs[0]);
    return base.op == OpKind::kInput && base.bound.data() == s.bound.data() && g.shape(s.inputs[1]).rows() == 1;
  };
  for (size_t a = 0; a < n; ++a) {
    const Node& at = g.nodes[a];
    if (at.op != OpKind::kAttention || at.inputs.size() != 4 || !plan_[a].gpu) continue;
    const TensorId P = at.inputs[3], rq = at.inputs[0];
    const Node& rqn = g.node(rq);
    if (rqn.op != OpKind::kRope || rqn.inputs.size() != 2 || rqn.inputs[1] != P || !single(rq) ||
        !plan_[static_cast<size_t>(rq)].gpu || g.shape(rq)[1] != 1)
      continue;
    const TensorId sk = view_of(at.inputs[1]), sv = view_of(at.inputs[2]);
    if (sk < 0 || sv < 0 || !single(at.inputs[1]) || !single(at.inputs[2]) || !single(sk) || !single(sv) ||
        !in_place_scatter(sk, P) || !in_place_scatter(sv, P) || sk > sv)
      continue;
    const TensorId k2 = g.node(sk).inputs[1];
    const TensorId rk = view_of(k2);
    if (rk < 0 || !single(k2) || !single(rk)) continue;
    const Node& rkn = g.node(rk);
    if (rkn.op != OpKind::kRope || rkn.inputs.size() != 2 || rkn.inputs[1] != P || !plan_[static_cast<size_t>(rk)].gpu ||
        rkn.p.head_dim != rqn.p.head_dim || rkn.p.rope_theta != rqn.p.rope_theta || rq > sv || rk > sv)
      continue;
    NodePlan& vp = plan_[static_cast<size_t>(sv)];
    vp.prologue_q = rq;
    vp.prologue_k = rk;
    vp.prologue_ks = sk;
    for (TensorId d : {rq, rk, sk}) plan_[static_cast<size_t>(d)].deferred = true;
    stats_.fused_nodes += 3;
    read_inputs_at(rqn, sv);  // read where the V scatter runs
    read_inputs_at(rkn, sv);
  }
}

// A GEMM that can take a bf16 input: a cuBLASLt bf16 Linear (not the GEMV of a few rows, which reads f32).
bool CudaExecutorImpl::bf16_gemm(const Graph& g, size_t i) const {
  const Node& nd = g.nodes[i];
  if (nd.op != OpKind::kLinear || !plan_[i].gpu || plan_[i].w[1].dtype != DType::kBF16 || !plan_[i].w[1].data)
    return false;
  return !cuda::gemv_fits(g.shape(nd.inputs[0]).rows(), g.shape(nd.inputs[0]).cols());
}

void CudaExecutorImpl::fuse_bf16(const Graph& g) {
  if (be_->options().precision != Precision::kBF16) return;
  const size_t n = g.nodes.size();
  auto gemm_dims = [&](const Node& lin, int64_t* M, int64_t* N, int64_t* K) {
    *M = g.shape(lin.inputs[0]).rows();
    *K = g.shape(lin.inputs[0]).cols();
    *N = lin.out_shape.cols();
  };
  // Linear -> GeluTanh: the GEMM's GELU epilogue (cuBLASLt's GELU is the tanh form).
  for (size_t j = 0; j < n; ++j) {
    const Node& ge = g.nodes[j];
    if (ge.op != OpKind::kGeluTanh || !plan_[j].gpu || ge.keep || ge.bound.data()) continue;
    const TensorId li = ge.inputs[0];
    const Node& ln = g.node(li);
    NodePlan& lp = plan_[static_cast<size_t>(li)];
    if (ln.op != OpKind::kLinear || lp.skip || consumers_[static_cast<size_t>(li)] != 1 || ln.keep || ln.bound.data() ||
        !bf16_gemm(g, static_cast<size_t>(li)))
      continue;
    int64_t M, N, K;
    gemm_dims(ln, &M, &N, &K);
    if (!lt_.supported(GemmType::kBF16, M, N, K, ln.inputs.size() == 3, false, false, true)) continue;
    lp.skip = true;
    plan_[j].fused_linear = li;
    plan_[j].gelu = true;
    ++stats_.fused_nodes;
  }
  // Consumers of each node.
  std::vector<std::vector<std::pair<int, int>>> cons(n);
  for (size_t c = 0; c < n; ++c)
    for (size_t s = 0; s < g.nodes[c].inputs.size(); ++s)
      cons[static_cast<size_t>(g.nodes[c].inputs[s])].push_back({static_cast<int>(c), static_cast<int>(s)});
  auto wants_bf16 = [&](int c, int s) {
    const Node& cn = g.nodes[static_cast<size_t>(c)];
    if (!plan_[static_cast<size_t>(c)].gpu) return false;
    if (cn.op == OpKind::kLinear) return s == 0 && bf16_gemm(g, static_cast<size_t>(c));
    if (cn.op == OpKind::kAttention)
      return s <= 2 && cn.inputs.size() == 3 && cuda::attention_uses_flash(g.shape(cn.inputs[0])[1], cn.p.head_dim);
    return false;
  };
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    NodePlan& p = plan_[i];
    if (!p.gpu || p.skip || nd.keep || nd.bound.data() || view_[i] || cons[i].empty()) continue;
    bool ok = false;
    if (nd.op == OpKind::kLayerNorm || nd.op == OpKind::kRMSNorm) {
      ok = nd.out_shape.cols() <= 4096;
    } else if (nd.op == OpKind::kLinear && bf16_gemm(g, i)) {
      int64_t M, N, K;
      gemm_dims(nd, &M, &N, &K);
      ok = lt_.supported(GemmType::kBF16, M, N, K, nd.inputs.size() == 3, false, true, false);
    } else if (nd.op == OpKind::kGeluTanh && p.gelu) {
      const Node& ln = g.node(p.fused_linear);
      int64_t M, N, K;
      gemm_dims(ln, &M, &N, &K);
      ok = lt_.supported(GemmType::kBF16, M, N, K, ln.inputs.size() == 3, false, true, true);
    } else if (nd.op == OpKind::kPatchify) {
      ok = true;  // a permutation: bf16 out of bf16 pixels is the bf16 of the f32 result
    } else if (nd.op == OpKind::kAttention && nd.inputs.size() == 3 &&
               cuda::attention_uses_flash(g.shape(nd.inputs[0])[1], nd.p.head_dim)) {
      // The tensor-core kernel of bf16 q, k, v (attention_mixed, decided above: inputs come first) writes bf16.
      ok = true;
      for (size_t s = 0; s < 3; ++s) ok = ok && plan_[static_cast<size_t>(root_[static_cast<size_t>(nd.inputs[s])])].out16;
    }
    if (!ok) continue;
    for (const auto& [c, s] : cons[i]) ok = ok && wants_bf16(c, s);
    if (ok) p.out16 = true;
  }
  // f32 host leaves read only by patchify nodes that write bf16 (the pixels of a vision pass) go up as bf16: half
  // the bytes, and the GEMM after them sees the same bf16 values.
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op != OpKind::kInput || nd.is_weight || nd.keep || nd.bound.dtype() != DType::kF32 || cons[i].empty() ||
        mirror_ptr(nd.bound) != nullptr)
      continue;
    bool ok = true;
    for (const auto& [c, s] : cons[i]) {
      const NodePlan& cp = plan_[static_cast<size_t>(c)];
      ok = ok && g.nodes[static_cast<size_t>(c)].op == OpKind::kPatchify && cp.gpu && cp.out16;
    }
    if (ok) plan_[i].stage16 = true;
  }
}

Status CudaExecutorImpl::plan_run(const Graph& g, const ExecOptions& opt) {
  const size_t n = g.nodes.size();
  const bool fuse = be_->options().fuse && !opt.on_tensor && !opt.on_inputs;  // timings see the fused nodes
  for (Block& b : blocks_) b.busy = false;
  plan_.assign(n, NodePlan{});
  loc_.assign(n, Loc{});
  root_.assign(n, 0);
  last_use_.assign(n, -1);
  keep_.assign(n, 0);
  view_.assign(n, 0);
  consumers_.assign(n, 0);
  any_cpu_ = false;
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    for (TensorId in : nd.inputs)
      if (in < 0 || static_cast<size_t>(in) >= i) return Internal("graph node '" + nd.name + "' uses a later node");
    view_[i] = nd.op != OpKind::kInput && is_view(g, nd) ? 1 : 0;
    root_[i] = view_[i] ? root_[static_cast<size_t>(nd.inputs[0])] : static_cast<TensorId>(i);
    for (TensorId in : nd.inputs) {
      last_use_[static_cast<size_t>(root_[static_cast<size_t>(in)])] = static_cast<int64_t>(i);
      ++consumers_[static_cast<size_t>(in)];
    }
    if (nd.keep) keep_[static_cast<size_t>(root_[i])] = 1;
  }
  // Placement: which nodes run here, which on the fallback.
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    NodePlan& p = plan_[i];
    if (nd.op == OpKind::kInput || view_[i]) continue;
    p.gpu = be_->supports(nd);
    if (p.gpu && nd.op == OpKind::kTopK && g.shape(nd.inputs[0]).cols() > kTopKMax) p.gpu = false;
    if (!p.gpu) {
      if (fallback() == nullptr)
        return Unsupported("the CUDA backend does not run op " + std::string(op_kind_name(nd.op)) + " ('" + nd.name +
                           "') and there is no fallback");
      any_cpu_ = true;
    }
  }
  // Weights (uploaded here, outside any capture, if not yet on the device).
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op == OpKind::kInput || view_[i] || !plan_[i].gpu) continue;
    for (size_t s = 0; s < nd.inputs.size() && s < 3; ++s) {
      const Node& in = g.node(nd.inputs[s]);
      if (in.op != OpKind::kInput || !in.is_weight || !in.bound.data()) continue;
      EV_ASSIGN_OR_RETURN(plan_[i].w[s], be_->weight(in.bound, CudaBackendImpl::use_of(nd, s)));
      if (s == 2 && nd.op == OpKind::kLinear && plan_[i].w[1].fp8) {
        EV_ASSIGN_OR_RETURN(plan_[i].bias16, be_->weight(in.bound, Use::kBias16));
      }
    }
  }
  // Fusion: Linear -> Add(residual) when the Linear's only consumer is the Add and the shapes agree; attention
  // scores from the attention of the same q and k; Linear -> GeluTanh into the GEMM's epilogue; bf16 outputs for
  // tensors that only GEMMs and the tensor-core attention read.
  if (fuse) {
    for (size_t j = 0; j < n; ++j) {
      const Node& ad = g.nodes[j];
      if (ad.op != OpKind::kAdd || !plan_[j].gpu || ad.bound.data()) continue;
      for (int s = 0; s < 2; ++s) {
        const TensorId li = ad.inputs[static_cast<size_t>(s)], other = ad.inputs[static_cast<size_t>(1 - s)];
        const Node& ln = g.node(li);
        if (ln.op != OpKind::kLinear || !plan_[static_cast<size_t>(li)].gpu || consumers_[static_cast<size_t>(li)] != 1 ||
            ln.keep || ln.bound.data() || li == other)
          continue;
        const Node& on = g.node(other);
        const bool weight = on.op == OpKind::kInput && on.is_weight;
        if (g.shape(other).numel() != ln.out_shape.numel() || (!weight && on.out_dtype != DType::kF32)) continue;
        plan_[static_cast<size_t>(li)].skip = true;
        plan_[j].fused_linear = li;
        plan_[j].residual_slot = 1 - s;
        ++stats_.fused_nodes;
        read_inputs_at(ln, static_cast<int64_t>(j));  // the Linear's inputs are read when the Add runs
        break;
      }
    }
    for (size_t j = 0; j < n; ++j) {
      const Node& sc = g.nodes[j];
      if (sc.op != OpKind::kAttnScore || !plan_[j].gpu) continue;
      for (size_t a = 0; a < j; ++a) {
        const Node& at = g.nodes[a];
        if (at.op != OpKind::kAttention || !plan_[a].gpu || at.inputs[0] != sc.inputs[0] || at.inputs[1] != sc.inputs[1] ||
            at.p.causal || at.p.scale != sc.p.scale || at.p.n_heads != sc.p.n_heads ||
            at.p.n_kv_heads != sc.p.n_kv_heads || at.p.head_dim != sc.p.head_dim)
          continue;
        plan_[a].need_lse = true;
        plan_[j].lse_of = static_cast<int>(a);
        ++stats_.fused_nodes;
      }
    }
    fuse_bf16(g);
    fuse_gemv_inputs(g);
    fuse_decode_prologue(g);
    // A Linear computed by the node that fused it (GELU epilogue) is read there: its inputs live until then.
    for (size_t j = 0; j < n; ++j)
      if (plan_[j].gelu) read_inputs_at(g.node(plan_[j].fused_linear), static_cast<int64_t>(j));
  }
  // Resident buffers (uploads happen here, outside any capture).
  // Owners written through bound outputs, with the host range the graph touches of each (its leaves of the same
  // memory included): each gets one mirror covering that range.
  struct Written {
    std::shared_ptr<void> owner;
    const char* p0 = nullptr;
    const char* p1 = nullptr;
  };
  std::map<const void*, Written> written;
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op == OpKind::kInput || view_[i] || !nd.bound.data() || !nd.bound.owner()) continue;
    const char* p0 = static_cast<const char*>(nd.bound.data());
    Written& w = written[nd.bound.owner().get()];
    w.owner = nd.bound.owner();
    w.p0 = w.p0 ? std::min(w.p0, p0) : p0;
    w.p1 = std::max(w.p1, p0 + nd.bound.nbytes());
  }
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op != OpKind::kInput || nd.is_weight || !nd.bound.owner()) continue;
    auto it = written.find(nd.bound.owner().get());
    if (it == written.end()) continue;
    const char* p0 = static_cast<const char*>(nd.bound.data());
    it->second.p0 = std::min(it->second.p0, p0);
    it->second.p1 = std::max(it->second.p1, p0 + nd.bound.nbytes());
  }
  for (const auto& kv : written) EV_RETURN_IF_ERROR(ensure_mirror(kv.second.owner, kv.second.p0, kv.second.p1));
  // Device placement, with buffers released after their last use; staging offsets for host leaves and downloads.
  int64_t stage = 0;
  scratch_need_ = 0;
  downloads_.clear();
  auto release_after = [&](size_t i) {
    std::vector<TensorId> ins = g.nodes[i].inputs;
    auto add_pre = [&](size_t lin) {  // the inputs of a GEMV's fused RMSNorm / SwiGLU are read by the GEMV
      const int pn = plan_[lin].pre_node;
      if (pn >= 0)
        for (TensorId pi : g.node(pn).inputs) ins.push_back(pi);
    };
    if (plan_[i].fused_linear >= 0) {
      for (TensorId in : g.node(plan_[i].fused_linear).inputs) ins.push_back(in);
      add_pre(static_cast<size_t>(plan_[i].fused_linear));
    }
    add_pre(i);
    for (TensorId in : ins) {
      const size_t r = static_cast<size_t>(root_[static_cast<size_t>(in)]);
      if (last_use_[r] != static_cast<int64_t>(i) || keep_[r]) continue;
      if (loc_[r].block >= 0) blocks_[static_cast<size_t>(loc_[r].block)].busy = false;
      last_use_[r] = -2;
    }
  };
  std::vector<int> lse_release(n, -1);  // attn_score node -> the attention whose LSE block it frees
  for (size_t j = 0; j < n; ++j)
    if (plan_[j].lse_of >= 0) lse_release[j] = plan_[j].lse_of;
  std::vector<int64_t> lse_last(n, -1);
  for (size_t j = 0; j < n; ++j)
    if (lse_release[j] >= 0) lse_last[static_cast<size_t>(lse_release[j])] = static_cast<int64_t>(j);
  // Host leaves first: all of them go up at the start of the run, so none may get a buffer that an earlier node
  // releases.
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    Loc& L = loc_[i];
    L.dtype = nd.out_dtype;
    if (nd.op != OpKind::kInput || nd.is_weight) continue;  // weights: resolved per consumer (plan_[].w)
    const Tensor& t = nd.bound;
    if (char* mp = mirror_ptr(t)) {
      L.dev = mp;
      L.dtype = t.dtype();
      continue;
    }
    // Staged, then uploaded (bf16 / f16 activations are widened to f32 on the way; stage16 leaves narrowed).
    const bool widen = t.dtype() == DType::kBF16 || t.dtype() == DType::kF16;
    const size_t bytes = plan_[i].stage16 ? static_cast<size_t>(t.numel()) * 2
                         : widen          ? static_cast<size_t>(t.numel()) * 4
                                          : t.nbytes();
    L.dtype = plan_[i].stage16 ? DType::kBF16 : widen ? DType::kF32 : t.dtype();
    L.block = take_block(bytes);
    if (L.block < 0) return Internal("CUDA: out of device memory for input '" + nd.name + "'");
    L.dev = static_cast<char*>(blocks_[static_cast<size_t>(L.block)].mem.p);
    plan_[i].stage_off = stage;
    stage += static_cast<int64_t>(round_up(bytes, 256));
  }
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    Loc& L = loc_[i];
    if (nd.op == OpKind::kInput) continue;
    L.dtype = nd.out_dtype;
    if (view_[i]) {
      const Loc& src = loc_[static_cast<size_t>(nd.inputs[0])];
      L.dtype = src.dtype;
      L.dev = src.dev;
      if (nd.op == OpKind::kCols && L.dev) L.dev += nd.p.col_begin * static_cast<int64_t>(dtype_size(src.dtype));
      continue;
    }
    if (plan_[i].skip) continue;
    if (nd.bound.data()) {
      if (char* mp = mirror_ptr(nd.bound)) {
        L.dev = mp;
      } else {  // borrowed host memory: a device buffer, copied out at the end
        L.block = take_block(nd.bound.nbytes());
        if (L.block < 0) return Internal("CUDA: out of device memory for '" + nd.name + "'");
        L.dev = static_cast<char*>(blocks_[static_cast<size_t>(L.block)].mem.p);
        downloads_.push_back({static_cast<TensorId>(i), 0});
      }
    } else {
      if (plan_[i].out16) L.dtype = DType::kBF16;
      const size_t bytes = static_cast<size_t>(nd.out_shape.numel()) * dtype_size(L.dtype);
      L.block = take_block(bytes);
      if (L.block < 0) return Internal("CUDA: out of device memory for '" + nd.name + "' (" + std::to_string(bytes) + " bytes)");
      L.dev = static_cast<char*>(blocks_[static_cast<size_t>(L.block)].mem.p);
    }
    if (plan_[i].need_lse) {
      const Shape& qs = g.shape(nd.inputs[0]);
      plan_[i].lse_block = take_block(static_cast<size_t>(qs[0] * qs[1] * nd.p.n_heads) * 4);
      if (plan_[i].lse_block < 0) return Internal("CUDA: out of device memory for the LSE of '" + nd.name + "'");
    }
    // Scratch: bf16 / int8 copies of a Linear's input, int32 accumulators; LSE of a score without its attention.
    const Node* lin = nd.op == OpKind::kLinear ? &nd : plan_[i].fused_linear >= 0 ? &g.node(plan_[i].fused_linear) : nullptr;
    if (lin) {
      const int64_t M = g.shape(lin->inputs[0]).rows(), K = g.shape(lin->inputs[0]).cols(), N = lin->out_shape.cols();
      const size_t need = round_up(static_cast<size_t>(M * K) * 2, 256) + round_up(static_cast<size_t>(M) * 4, 256) +
                          round_up(static_cast<size_t>(M * N) * 4, 256);
      scratch_need_ = std::max(scratch_need_, need);
    }
    if (nd.op == OpKind::kAttention) {
      const Shape &qs = g.shape(nd.inputs[0]), &ks = g.shape(nd.inputs[1]);
      scratch_need_ = std::max(scratch_need_, cuda::attention_scratch_bytes(qs[0], qs[1], ks[1], nd.p.n_heads,
                                                                            nd.p.n_kv_heads, nd.p.head_dim));
    }
    if (nd.op == OpKind::kAttnScore && plan_[i].lse_of < 0) {
      const Shape& qs = g.shape(nd.inputs[0]);
      scratch_need_ = std::max(scratch_need_, static_cast<size_t>(qs.numel()) * 4 +
                                                  round_up(static_cast<size_t>(qs[0] * qs[1] * nd.p.n_heads) * 4, 256));
    }
    release_after(i);
    if (lse_release[i] >= 0) {
      const int a = lse_release[i];
      if (lse_last[static_cast<size_t>(a)] == static_cast<int64_t>(i) && plan_[static_cast<size_t>(a)].lse_block >= 0)
        blocks_[static_cast<size_t>(plan_[static_cast<size_t>(a)].lse_block)].busy = false;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op == OpKind::kInput || view_[i] || !keep_[i]) continue;
    if (nd.bound.data() && mirror_ptr(nd.bound) == nullptr) continue;  // already listed
    downloads_.push_back({static_cast<TensorId>(i), 0});
  }
  for (auto& d : downloads_) {
    const Node& nd = g.node(d.first);
    d.second = stage;
    stage += static_cast<int64_t>(round_up(static_cast<size_t>(nd.out_shape.numel()) * dtype_size(nd.out_dtype), 256));
  }
  stage_total_ = stage;
  EV_RETURN_IF_ERROR(pinned_.reserve(static_cast<size_t>(stage) + sizeof(cuda::DevError)));
  if (scratch_need_ > scratch_.bytes) EV_RETURN_IF_ERROR(scratch_.alloc(round_up(scratch_need_, 1 << 20), "scratch"));
  restage(g);
  return Status::Ok();
}

// Host leaves into the pinned staging buffer (the run's first copies read it in stream order).
void CudaExecutorImpl::restage(const Graph& g) {
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (plan_[i].stage_off < 0) continue;
    const Tensor& t = g.nodes[i].bound;
    char* dst = static_cast<char*>(pinned_.p) + plan_[i].stage_off;
    if (plan_[i].stage16)
      staged_to_bf16(reinterpret_cast<uint16_t*>(dst), t.data_as<const float>(), static_cast<size_t>(t.numel()));
    else if (t.dtype() == DType::kBF16)
      convert_bf16_to_f32(t.data_as<const uint16_t>(), reinterpret_cast<float*>(dst), static_cast<size_t>(t.numel()));
    else if (t.dtype() == DType::kF16)
      convert_f16_to_f32(t.data_as<const uint16_t>(), reinterpret_cast<float*>(dst), static_cast<size_t>(t.numel()));
    else
      staged_copy(dst, t.data(), t.nbytes());
  }
}

// What makes two runs the same CUDA graph: every node's op, inputs, parameters, shape, dtype and bound memory,
// the weights' addresses, and the device memory the executor and the backend hold (their epochs).
uint64_t CudaExecutorImpl::signature(const Graph& g) const {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) {
    h ^= v;
    h *= 1099511628211ull;
  };
  auto mixf = [&](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    mix(u);
  };
  mix(mirror_epoch_);
  mix(be_->epoch());
  mix(lt_.epoch());  // GEMM algorithms changed by tuning
  mix(cuda::g_pdl ? 1 : 0);  // launches are captured with or without programmatic dependencies
  mix(g.nodes.size());
  for (const Node& nd : g.nodes) {
    mix(static_cast<uint64_t>(nd.op));
    mix(static_cast<uint64_t>(nd.out_dtype) | (static_cast<uint64_t>(nd.keep) << 8) |
        (static_cast<uint64_t>(nd.is_weight) << 9));
    for (int d = 0; d < nd.out_shape.ndim; ++d) mix(static_cast<uint64_t>(nd.out_shape[d]));
    for (TensorId in : nd.inputs) mix(static_cast<uint64_t>(in));
    mix(reinterpret_cast<uintptr_t>(nd.bound.data()));
    if (nd.bound.data()) {
      mix(static_cast<uint64_t>(nd.bound.dtype()));
      mix(nd.bound.nbytes());
    }
    const OpParams& p = nd.p;
    mixf(p.eps);
    mixf(p.scale);
    mixf(p.rope_theta);
    mix(static_cast<uint64_t>(p.n_heads) | (static_cast<uint64_t>(p.n_kv_heads) << 16) |
        (static_cast<uint64_t>(p.head_dim) << 32) | (static_cast<uint64_t>(p.causal) << 48));
    mix(static_cast<uint64_t>(p.q_offset));
    mix(static_cast<uint64_t>(p.patch) | (static_cast<uint64_t>(p.shuffle) << 32));
    mix(static_cast<uint64_t>(p.row_begin));
    mix(static_cast<uint64_t>(p.row_end));
    mix(static_cast<uint64_t>(p.col_begin));
    mix(static_cast<uint64_t>(p.col_end));
  }
  return h;
}

Status CudaExecutorImpl::enqueue(const Graph& g, const ExecOptions& opt, std::vector<float>* node_ms) {
  const size_t n = g.nodes.size();
  const bool direct = any_cpu_ || opt.on_tensor || opt.on_inputs || opt.time_nodes || !graphs_;
  bool capturing = false;
  if (!direct) {
    const cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    capturing = e == cudaSuccess;
    if (!capturing) cudaGetLastError();
  }
  bf16_src_ = -1;
  cudaMemsetAsync(err_dev_.p, 0, sizeof(cuda::DevError), stream_);
  for (size_t i = 0; i < n; ++i) {
    if (plan_[i].stage_off < 0) continue;
    const Tensor& t = g.nodes[i].bound;
    const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(loc_[i].dtype);
    cudaMemcpyAsync(loc_[i].dev, static_cast<const char*>(pinned_.p) + plan_[i].stage_off, bytes, cudaMemcpyHostToDevice,
                    stream_);
    stats_.bytes_up += static_cast<int64_t>(bytes);
  }
  std::vector<cudaEvent_t> ev;
  if (node_ms) {
    node_ms->assign(n, -1.f);
    ev.resize(2 * n, nullptr);
  }
  Status st = Status::Ok();
  for (size_t i = 0; i < n && st.ok(); ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op == OpKind::kInput || plan_[i].skip || plan_[i].deferred) continue;
    if (view_[i]) {
      if (opt.on_tensor) {
        auto t = download(g, static_cast<TensorId>(i));
        if (!t.ok()) return t.status();
        opt.on_tensor(nd, *t);
      }
      continue;
    }
    if (opt.on_inputs) {
      std::vector<Tensor> hold(nd.inputs.size());  // sized first: ins points into it
      std::vector<const Tensor*> ins;
      for (size_t k = 0; k < nd.inputs.size(); ++k) {
        const TensorId in = nd.inputs[k];
        if (g.node(in).op == OpKind::kInput) {
          ins.push_back(&g.node(in).bound);
          continue;
        }
        auto t = download(g, in);
        if (!t.ok()) return t.status();
        hold[k] = std::move(*t);
        ins.push_back(&hold[k]);
      }
      opt.on_inputs(nd, ins);
    }
    if (node_ms) {
      cudaEventCreate(&ev[2 * i]);
      cudaEventCreate(&ev[2 * i + 1]);
      cudaEventRecord(ev[2 * i], stream_);
    }
    if (plan_[i].gpu) {
      st = exec_node(g, i);
      if (st.ok()) {
        const cudaError_t e = cudaPeekAtLastError();
        if (e != cudaSuccess) {
          cudaGetLastError();
          st = Internal("CUDA: launching '" + nd.name + "': " + cu_msg(e));
        }
      }
      ++stats_.gpu_nodes;
    } else {
      st = exec_cpu(g, i);
      ++stats_.cpu_nodes;
    }
    if (!st.ok()) st = st.with_context("node '" + nd.name + "' (" + op_kind_name(nd.op) + ")");
    if (node_ms && st.ok()) cudaEventRecord(ev[2 * i + 1], stream_);
    if (opt.on_tensor && st.ok()) {
      auto t = download(g, static_cast<TensorId>(i));
      if (!t.ok()) return t.status();
      opt.on_tensor(nd, *t);
    }
  }
  // Outputs and the error word come down.
  if (st.ok()) {
    for (const auto& [id, off] : downloads_) {
      const Node& nd = g.node(id);
      const size_t bytes = static_cast<size_t>(nd.out_shape.numel()) * dtype_size(nd.out_dtype);
      cudaMemcpyAsync(static_cast<char*>(pinned_.p) + off, loc_[static_cast<size_t>(id)].dev, bytes,
                      cudaMemcpyDeviceToHost, stream_);
      stats_.bytes_down += static_cast<int64_t>(bytes);
    }
    cudaMemcpyAsync(static_cast<char*>(pinned_.p) + stage_total_, err_dev_.p, sizeof(cuda::DevError),
                    cudaMemcpyDeviceToHost, stream_);
  }
  if (capturing) {
    cudaGraph_t graph = nullptr;
    const cudaError_t ce = cudaStreamEndCapture(stream_, &graph);
    if (!st.ok()) {
      if (graph) cudaGraphDestroy(graph);
      return st;
    }
    if (ce != cudaSuccess || graph == nullptr) {
      cudaGetLastError();
      EV_LOG_WARN("CUDA: graph capture failed (%s); running without CUDA graphs from now on", cu_msg(ce).c_str());
      graphs_ = false;
      capture_failed_ = true;
      return Internal("CUDA: graph capture failed: " + cu_msg(ce));
    }
    bool launched = false;
    if (graph_exec_) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(graph_exec_, graph, &info) == cudaSuccess) {
        stats_.graph_updated = true;
        launched = true;
      } else {
        cudaGetLastError();
        cudaGraphExecDestroy(graph_exec_);
        graph_exec_ = nullptr;
      }
    }
    if (!launched) {
      const cudaError_t ie = cudaGraphInstantiate(&graph_exec_, graph, 0);
      if (ie != cudaSuccess) {
        cudaGraphDestroy(graph);
        graph_exec_ = nullptr;
        return Internal("CUDA: instantiating the graph: " + cu_msg(ie));
      }
    }
    cudaGraphDestroy(graph);
    EV_CU(cudaGraphLaunch(graph_exec_, stream_), "launching the graph");
    stats_.graph_replayed = true;
  }
  if (node_ms) {
    cudaStreamSynchronize(stream_);
    for (size_t i = 0; i < n; ++i) {
      if (!ev[2 * i]) continue;
      float ms = 0.f;
      if (cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]) == cudaSuccess) (*node_ms)[i] = ms;
      cudaEventDestroy(ev[2 * i]);
      cudaEventDestroy(ev[2 * i + 1]);
    }
    cudaGetLastError();
  }
  return st;
}

Result<Tensor> CudaExecutorImpl::download(const Graph& g, TensorId id) {
  const Node& nd = g.node(id);
  const Loc& L = loc_[static_cast<size_t>(id)];
  Tensor t = Tensor::empty(nd.op == OpKind::kInput ? L.dtype : nd.out_dtype, nd.out_shape);
  if (nd.op == OpKind::kInput && (nd.is_weight || !L.dev)) return nd.bound;
  if (!L.dev) return Internal("CUDA: '" + nd.name + "' has no device copy");
  EV_CU(cudaMemcpyAsync(t.data(), L.dev, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "downloading '" + nd.name + "'");
  EV_CU(cudaStreamSynchronize(stream_), "downloading '" + nd.name + "'");
  stats_.bytes_down += static_cast<int64_t>(t.nbytes());
  t.set_name(nd.name);
  return t;
}

Status CudaExecutorImpl::exec_cpu(const Graph& g, size_t i) {
  const Node& nd = g.nodes[i];
  EV_RETURN_IF_ERROR(fallback()->prepare_weights(g));
  std::vector<Tensor> hold(nd.inputs.size());
  std::vector<const Tensor*> ins;
  for (size_t s = 0; s < nd.inputs.size(); ++s) {
    const Node& in = g.node(nd.inputs[s]);
    if (in.op == OpKind::kInput && (in.is_weight || !loc_[static_cast<size_t>(nd.inputs[s])].dev ||
                                    mirror_ptr(in.bound) == nullptr)) {
      ins.push_back(&in.bound);
      continue;
    }
    EV_ASSIGN_OR_RETURN(hold[s], download(g, nd.inputs[s]));
    ins.push_back(&hold[s]);
  }
  Tensor out = Tensor::empty(nd.out_dtype, nd.out_shape);
  EV_RETURN_IF_ERROR(fallback()->compute(nd, ins, out));
  Loc& L = loc_[i];
  EV_CU(cudaMemcpyAsync(L.dev, out.data(), out.nbytes(), cudaMemcpyHostToDevice, stream_), "uploading '" + nd.name + "'");
  EV_CU(cudaStreamSynchronize(stream_), "uploading '" + nd.name + "'");
  stats_.bytes_up += static_cast<int64_t>(out.nbytes());
  return Status::Ok();
}

Status CudaExecutorImpl::exec_linear(const Graph& g, size_t i, const Node& lin, const float* residual, void* yv,
                                     bool out16, bool gelu) {
  float* y = static_cast<float*>(yv);
  const TensorId lid = static_cast<TensorId>(&lin - g.nodes.data());
  const NodePlan& lp = plan_[static_cast<size_t>(lid)];
  const DevWeight& W = lp.w[1];
  if (!W.data) return Internal("CUDA: Linear '" + lin.name + "' has no device weight (its weight is not a weight leaf)");
  const Shape& xs = g.shape(lin.inputs[0]);
  const int64_t M = xs.rows(), K = xs.cols(), N = lin.out_shape.cols();
  const float* x = fptr(lin.inputs[0]);
  const float* bias = lin.inputs.size() == 3 ? static_cast<const float*>(lp.w[2].data) : nullptr;
  if (lin.inputs.size() == 3 && !bias) bias = fptr(lin.inputs[2]);
  cudaStream_t s = stream_;
  if (M == 0 || N == 0) return Status::Ok();
  if (W.dtype == DType::kI8) {
    char* sc = static_cast<char*>(scratch_.p);
    int8_t* q = reinterpret_cast<int8_t*>(sc);
    float* sx = reinterpret_cast<float*>(sc + round_up(static_cast<size_t>(M * K) * 2, 256));
    int32_t* acc = reinterpret_cast<int32_t*>(sc + round_up(static_cast<size_t>(M * K) * 2, 256) + round_up(static_cast<size_t>(M) * 4, 256));
    bf16_src_ = -1;
    stats_.kernel_launches += cuda::quantize_rows_i8(x, M, K, W.inv_smooth, q, sx, s);
    EV_RETURN_IF_ERROR(lt_.run(GemmType::kI8, W.data, q, acc, M, N, K, nullptr, nullptr, s));
    ++stats_.kernel_launches;
    stats_.kernel_launches += cuda::dequant_i8(acc, M, N, sx, W.scale, bias, residual, y, s);
    return Status::Ok();
  }
  if (lp.pre != 0) {  // the input is computed on the fly from the fused node's input
    const Node& pn = g.node(lp.pre_node);
    const NodePlan& pp = plan_[static_cast<size_t>(lp.pre_node)];
    stats_.kernel_launches += cuda::gemv_pre(static_cast<cuda::GemvPre>(lp.pre), fptr(pn.inputs[0]), M, K,
                                             static_cast<const float*>(pp.w[1].data), pn.p.eps, W.data,
                                             W.dtype == DType::kBF16, N, bias, residual, y, s);
    if (gelu) stats_.kernel_launches += cuda::unary(cuda::Unary::kGeluTanh, y, M * N, y, s);
    return Status::Ok();
  }
  if (cuda::gemv_fits(M, K)) {
    stats_.kernel_launches += cuda::gemv(x, M, K, W.data, W.dtype == DType::kBF16, N, bias, residual, y, s);
    if (gelu) stats_.kernel_launches += cuda::unary(cuda::Unary::kGeluTanh, y, M * N, y, s);
    return Status::Ok();
  }
  if (W.dtype == DType::kBF16 && W.fp8 && (bias == nullptr || lp.bias16.data) &&
      lt_.supported(GemmType::kFP8, M, N, K, bias != nullptr, residual != nullptr, out16, gelu)) {
    // e4m3 input with its per-tensor scale in the scratch (q, k, v of one input quantise it once).
    const Loc& xl = loc_[static_cast<size_t>(lin.inputs[0])];
    float* x_scale = static_cast<float*>(fp8_words_.p);
    if (bf16_src_ != lin.inputs[0] || !scratch_fp8_) {
      stats_.kernel_launches += cuda::to_fp8(xl.dev, xl.dtype == DType::kBF16, M * K, static_cast<uint8_t*>(scratch_.p),
                                             x_scale, reinterpret_cast<unsigned*>(static_cast<char*>(fp8_words_.p) + 128), s);
      bf16_src_ = lin.inputs[0];
      scratch_fp8_ = true;
    }
    EV_RETURN_IF_ERROR(lt_.run(GemmType::kFP8, W.fp8, scratch_.p, y, M, N, K, bias ? lp.bias16.data : nullptr,
                               residual, s, out16, gelu, W.fp8_scale, x_scale));
    ++stats_.kernel_launches;
    ++stats_.fp8_gemms;
    return Status::Ok();
  }
  if (W.dtype == DType::kBF16) {
    const void* xb = loc_[static_cast<size_t>(lin.inputs[0])].dev;
    if (loc_[static_cast<size_t>(lin.inputs[0])].dtype != DType::kBF16) {  // the producer wrote f32: convert once
      xb = scratch_.p;
      if (bf16_src_ != lin.inputs[0] || scratch_fp8_) {
        stats_.kernel_launches += cuda::f32_to_bf16(x, M * K, static_cast<uint16_t*>(scratch_.p), s);
        bf16_src_ = lin.inputs[0];
        scratch_fp8_ = false;
      }
    }
    EV_RETURN_IF_ERROR(lt_.run(GemmType::kBF16, W.data, xb, y, M, N, K, bias, residual, s, out16, gelu));
  } else {
    EV_RETURN_IF_ERROR(lt_.run(GemmType::kF32, W.data, x, y, M, N, K, bias, residual, s));
  }
  ++stats_.kernel_launches;
  (void)i;
  return Status::Ok();
}

Status CudaExecutorImpl::exec_node(const Graph& g, size_t i) {
  const Node& nd = g.nodes[i];
  const NodePlan& p = plan_[i];
  cudaStream_t s = stream_;
  float* y = reinterpret_cast<float*>(loc_[i].dev);
  auto in = [&](size_t k) -> const float* {
    if (k < 3 && p.w[k].data) return static_cast<const float*>(p.w[k].data);
    return fptr(nd.inputs[k]);
  };
  auto shape = [&](size_t k) -> const Shape& { return g.shape(nd.inputs[k]); };
  auto ipos = [&](size_t k) -> const int32_t* {  // an i32 input (positions), leaf or computed
    if (k < 3 && p.w[k].data) return static_cast<const int32_t*>(p.w[k].data);
    return reinterpret_cast<const int32_t*>(loc_[static_cast<size_t>(nd.inputs[k])].dev);
  };
  int& kl = stats_.kernel_launches;
  cuda::DevError* err = static_cast<cuda::DevError*>(err_dev_.p);
  switch (nd.op) {
    case OpKind::kLinear:
      if (bf16_src_ >= 0 && loc_[static_cast<size_t>(bf16_src_)].dev == loc_[i].dev) bf16_src_ = -1;
      return exec_linear(g, i, nd, nullptr, y, p.out16);
    case OpKind::kAdd:
    case OpKind::kMul: {
      if (p.fused_linear >= 0) {
        const DevWeight& rw = p.w[static_cast<size_t>(p.residual_slot)];
        const float* r = rw.data ? static_cast<const float*>(rw.data) : fptr(nd.inputs[static_cast<size_t>(p.residual_slot)]);
        return exec_linear(g, i, g.node(p.fused_linear), r, y);
      }
      kl += cuda::add_mul(in(0), shape(0).numel(), in(1), shape(1).numel(), nd.op == OpKind::kMul, y, s);
      break;
    }
    case OpKind::kLayerNorm:
    case OpKind::kRMSNorm: {
      const bool rms = nd.op == OpKind::kRMSNorm;
      kl += cuda::norm(in(0), shape(0).rows(), shape(0).cols(), in(1), rms ? nullptr : in(2), nd.p.eps, rms, y, s,
                       p.out16 ? reinterpret_cast<uint16_t*>(loc_[i].dev) : nullptr);
      break;
    }
    case OpKind::kGeluTanh:
      if (p.gelu) return exec_linear(g, i, g.node(p.fused_linear), nullptr, y, p.out16, true);
      kl += cuda::unary(cuda::Unary::kGeluTanh, in(0), shape(0).numel(), y, s);
      break;
    case OpKind::kSilu: kl += cuda::unary(cuda::Unary::kSilu, in(0), shape(0).numel(), y, s); break;
    case OpKind::kSigmoid: kl += cuda::unary(cuda::Unary::kSigmoid, in(0), shape(0).numel(), y, s); break;
    case OpKind::kSwiGLU:
      if (nd.inputs.size() == 1)
        kl += cuda::swiglu(in(0), nullptr, shape(0).rows(), shape(0).cols() / 2, y, s);
      else
        kl += cuda::swiglu(in(0), in(1), 1, shape(0).numel(), y, s);
      break;
    case OpKind::kAttention: {
      const Shape &qs = shape(0), &ks = shape(1);
      float* lse = p.lse_block >= 0 ? static_cast<float*>(blocks_[static_cast<size_t>(p.lse_block)].mem.p) : nullptr;
      if (nd.p.n_heads <= 0 || nd.p.n_kv_heads <= 0 || nd.p.n_heads % nd.p.n_kv_heads != 0)
        return InvalidArgument("attention '" + nd.name + "': bad head counts");
      bf16_src_ = -1;  // the scratch now holds bf16 q, k, v
      const bool q16 = loc_[static_cast<size_t>(nd.inputs[0])].dtype == DType::kBF16 && nd.inputs.size() == 3;
      const bool k16 = loc_[static_cast<size_t>(nd.inputs[1])].dtype == DType::kBF16;
      const bool v16 = loc_[static_cast<size_t>(nd.inputs[2])].dtype == DType::kBF16;
      if (q16 || k16 || v16) {
        kl += cuda::attention_mixed(loc_[static_cast<size_t>(nd.inputs[0])].dev, q16,
                                    loc_[static_cast<size_t>(nd.inputs[1])].dev, k16,
                                    loc_[static_cast<size_t>(nd.inputs[2])].dev, v16, qs[0], qs[1], ks[1],
                                    nd.p.n_heads, nd.p.n_kv_heads, nd.p.head_dim, nd.p.scale, nd.p.causal,
                                    nd.p.q_offset, y, lse, scratch_.p, s, p.out16);
        break;
      }
      kl += cuda::attention(in(0), in(1), in(2), qs[0], qs[1], ks[1], nd.p.n_heads, nd.p.n_kv_heads, nd.p.head_dim,
                            nd.p.scale, nd.p.causal, nd.p.q_offset, y, lse,
                            be_->options().precision == Precision::kF32, scratch_.p, s,
                            nd.inputs.size() == 4 ? ipos(3) : nullptr,
                            nd.inputs.size() == 4 && qs[0] > 1 && shape(3).numel() == qs[0] * qs[1]);
      break;
    }
    case OpKind::kAttnScore: {
      const Shape &qs = shape(0), &ks = shape(1);
      const float* lse = nullptr;
      if (p.lse_of >= 0) {
        lse = static_cast<const float*>(blocks_[static_cast<size_t>(plan_[static_cast<size_t>(p.lse_of)].lse_block)].mem.p);
      } else {  // no attention of the same q, k ran: its LSE rows first (the output is discarded)
        float* o = static_cast<float*>(scratch_.p);
        float* l = reinterpret_cast<float*>(static_cast<char*>(scratch_.p) + static_cast<size_t>(qs.numel()) * 4);
        bf16_src_ = -1;
        kl += cuda::attention(in(0), in(1), in(1), qs[0], qs[1], ks[1], nd.p.n_heads, nd.p.n_kv_heads, nd.p.head_dim,
                              nd.p.scale, false, 0, o, l, false, nullptr, s);
        lse = l;
      }
      kl += cuda::attn_score_from_lse(in(0), in(1), lse, qs[0], qs[1], ks[1], nd.p.n_heads, nd.p.n_kv_heads,
                                      nd.p.head_dim, nd.p.scale, y, s);
      break;
    }
    case OpKind::kRope: {
      const Shape& xs = shape(0);
      kl += cuda::rope(in(0), xs[0], xs[1], nd.p.n_heads, nd.p.head_dim, nd.p.rope_theta, nd.p.q_offset, y, s,
                       nd.inputs.size() == 2 ? ipos(1) : nullptr,
                       nd.inputs.size() == 2 && xs[0] > 1 && shape(1).numel() == xs[0] * xs[1]);
      break;
    }
    case OpKind::kPatchify: {
      const Shape& xs = shape(0);
      const Loc& px = loc_[static_cast<size_t>(nd.inputs[0])];
      const cuda::PixelType pt = px.dtype == DType::kU8    ? cuda::PixelType::kU8HWC
                                 : px.dtype == DType::kBF16 ? cuda::PixelType::kBF16
                                                            : cuda::PixelType::kF32;
      kl += cuda::patchify(px.dev, pt, xs[0], xs[1], xs[2], xs[3], nd.p.patch, y, p.out16, s);
      break;
    }
    case OpKind::kPixelShuffle: {
      const Shape& xs = shape(0);
      kl += cuda::pixel_shuffle(in(0), xs[0], xs[1], xs[2], nd.p.shuffle, y, s);
      break;
    }
    case OpKind::kGetRows: {
      const Shape& ts = shape(0);
      const void* table = p.w[0].data ? p.w[0].data : loc_[static_cast<size_t>(nd.inputs[0])].dev;
      const DType tt = p.w[0].data ? p.w[0].dtype : loc_[static_cast<size_t>(nd.inputs[0])].dtype;
      const int32_t* ids = p.w[1].data ? static_cast<const int32_t*>(p.w[1].data)
                                       : reinterpret_cast<const int32_t*>(loc_[static_cast<size_t>(nd.inputs[1])].dev);
      kl += cuda::get_rows(table, table_type(tt), ts[0], ts.cols(), ids, shape(1).numel(), loc_[i].dev, err, s);
      break;
    }
    case OpKind::kScatterRows: {
      if (p.prologue_q >= 0) {  // static decode: q/k rope and both cache rows in one kernel
        const Node& rq = g.node(p.prologue_q);
        const Node& rk = g.node(p.prologue_k);
        const Shape& bs = shape(0);
        kl += cuda::rope_store_kv(fptr(rq.inputs[0]), fptr(rk.inputs[0]), in(1), rq.p.n_heads, rk.p.n_heads,
                                  rq.p.head_dim, rq.p.rope_theta, ipos(2),
                                  reinterpret_cast<float*>(loc_[static_cast<size_t>(p.prologue_q)].dev),
                                  reinterpret_cast<float*>(loc_[static_cast<size_t>(p.prologue_ks)].dev), y, bs.rows(),
                                  err, s);
        break;
      }
      const Shape& bs = shape(0);
      const int32_t* idx = p.w[2].data ? static_cast<const int32_t*>(p.w[2].data)
                                       : reinterpret_cast<const int32_t*>(loc_[static_cast<size_t>(nd.inputs[2])].dev);
      kl += cuda::scatter_rows(in(0), bs.rows(), bs.cols(), in(1), idx, shape(2).numel(), y, err, s);
      break;
    }
    case OpKind::kCols: {
      const Shape& xs = shape(0);
      kl += cuda::copy_cols(in(0), xs.rows(), xs.cols(), nd.p.col_begin, nd.p.col_end - nd.p.col_begin, y, s);
      break;
    }
    case OpKind::kRows: {
      const int64_t C = shape(0).cols();
      const size_t bytes = static_cast<size_t>((nd.p.row_end - nd.p.row_begin) * C) * 4;
      kl += cuda::copy(y, in(0) + nd.p.row_begin * C, bytes, s);
      break;
    }
    case OpKind::kCopy:
    case OpKind::kReshape: {
      const size_t bytes = static_cast<size_t>(shape(0).numel()) * dtype_size(loc_[static_cast<size_t>(nd.inputs[0])].dtype);
      kl += cuda::copy(y, in(0), bytes, s);
      break;
    }
    case OpKind::kMeanRows: {
      const Shape& xs = shape(0);
      const int64_t B = xs.ndim == 3 ? xs[0] : 1, R = xs.ndim == 3 ? xs[1] : xs[0];
      kl += cuda::mean_rows(in(0), B, R, xs.cols(), y, s);
      break;
    }
    case OpKind::kArgmax: {
      const Shape& xs = shape(0);
      kl += cuda::argmax_rows(in(0), xs[0], xs[1], reinterpret_cast<int32_t*>(loc_[i].dev), s);
      break;
    }
    case OpKind::kTopK: {
      const Shape& ss = shape(0);
      kl += cuda::top_k(in(0), ss[0], ss[1], nd.p.row_end, reinterpret_cast<int32_t*>(loc_[i].dev), s);
      break;
    }
    case OpKind::kInput:
    case OpKind::kCount: return Internal("not computable");
  }
  return Status::Ok();
}

Status CudaBackendImpl::compute(const Node& n, const std::vector<const Tensor*>& in, Tensor& out) {
  EV_RETURN_IF_ERROR(ref::check_node(n, in, out));
  std::lock_guard<std::mutex> lk(compute_mu_);
  if (!node_exec_) {
    auto ex = std::make_unique<CudaExecutorImpl>(this, nullptr);
    EV_RETURN_IF_ERROR(ex->init());
    node_exec_ = std::move(ex);
  }
  // A graph of this node alone: its inputs as leaves (a Linear's weight as a weight leaf, as models build them).
  Graph g;
  Node copy = n;
  copy.inputs.clear();
  for (size_t s = 0; s < in.size(); ++s) {
    const bool weight = n.op == OpKind::kLinear && s >= 1;
    copy.inputs.push_back(weight ? g.weight("w" + std::to_string(s), *in[s]) : g.input("in" + std::to_string(s), *in[s]));
  }
  copy.keep = true;
  copy.bound = Tensor();
  g.nodes.push_back(copy);
  EV_ASSIGN_OR_RETURN(ExecResult r, node_exec_->run(g));
  const Tensor& t = r[static_cast<TensorId>(g.nodes.size() - 1)];
  if (t.nbytes() != out.nbytes()) return Internal("CUDA compute: output size mismatch for '" + n.name + "'");
  std::memcpy(out.data(), t.data(), t.nbytes());
  return Status::Ok();
}

CudaBackendImpl::~CudaBackendImpl() {
  node_exec_.reset();
  cudaSetDevice(opt_.device);
  cudaDeviceSynchronize();
  cache_.clear();
}

}  // namespace

bool cuda_built() { return true; }

namespace {
bool g_pdl_supported = false, g_pdl_checked = false;
}
void cuda_set_dependent_launch(bool on) {
  if (!g_pdl_checked) {
    int dev = 0, major = 0;
    g_pdl_supported = cudaGetDevice(&dev) == cudaSuccess &&
                      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
    g_pdl_checked = true;
  }
  cuda::g_pdl = on && g_pdl_supported;
}
bool cuda_dependent_launch() { return cuda::g_pdl; }

std::string CudaDeviceInfo::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s (sm_%d%d, %d SMs, %.1f GiB, driver %d.%d, runtime %d.%d)", name.c_str(), sm_major,
                sm_minor, multiprocessors, static_cast<double>(memory_bytes) / (1024.0 * 1024.0 * 1024.0),
                driver_version / 1000, (driver_version % 1000) / 10, runtime_version / 1000,
                (runtime_version % 1000) / 10);
  return buf;
}

Result<CudaDeviceInfo> cuda_device_info(int device) {
  EV_ASSIGN_OR_RETURN(int n, device_count());
  if (device < 0 || device >= n)
    return InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " found)");
  cudaDeviceProp p{};
  EV_CU(cudaGetDeviceProperties(&p, device), "reading device properties");
  CudaDeviceInfo d;
  d.device = device;
  d.name = p.name;
  d.sm_major = p.major;
  d.sm_minor = p.minor;
  d.multiprocessors = p.multiProcessorCount;
  d.memory_bytes = p.totalGlobalMem;
  d.l2_bytes = static_cast<size_t>(p.l2CacheSize);
  cudaDriverGetVersion(&d.driver_version);
  cudaRuntimeGetVersion(&d.runtime_version);
  return d;
}

Result<std::unique_ptr<Backend>> make_cuda_backend(const CudaOptions& opt) {
  auto be = std::make_unique<CudaBackendImpl>(opt);
  EV_RETURN_IF_ERROR(be->init());
  return std::unique_ptr<Backend>(std::move(be));
}

Result<std::unique_ptr<Executor>> make_cuda_executor(Backend* cuda, Backend* fallback) {
  auto* be = dynamic_cast<CudaBackendImpl*>(cuda);
  if (be == nullptr) return InvalidArgument("make_cuda_executor: the backend is not a CUDA backend");
  auto ex = std::make_unique<CudaExecutorImpl>(be, fallback);
  EV_RETURN_IF_ERROR(ex->init());
  return std::unique_ptr<Executor>(std::move(ex));
}

Result<CudaRunStats> cuda_run_stats(const Executor& ex) {
  const auto* c = dynamic_cast<const CudaExecutorImpl*>(&ex);
  if (c == nullptr) return InvalidArgument("not a CUDA executor");
  return c->stats();
}

}  // namespace ev
