// The CUDA backend (issue 7): the same graphs on NVIDIA GPUs, from Jetson Orin (sm_87) to H100/H200 (sm_90).
//
// Two pieces, both behind this header (no CUDA header leaks out, so the rest of the project compiles the same
// with or without -DEDGEVLM_CUDA=ON):
//
//  * CudaBackend (make_cuda_backend): a Backend. It declares the ops it runs (supports()); its compute() takes
//    host tensors, runs the node on the GPU and brings the result back. That is the path of the per-op
//    backend-consistency test and of anything that drives a Backend node by node. It owns the device context:
//    the weight cache (each weight uploaded once, converted to the precision its Linear computes in), the
//    mixed-precision plan, cuBLASLt.
//  * CudaExecutor (make_cuda_executor): an Executor that runs a whole graph on the GPU with its activations in
//    device memory. Only the graph's host inputs go up and its kept outputs come down. Nodes the backend does
//    not support run on the CPU fallback backend (their inputs come down, their output goes back up). It fuses
//    a Linear with the residual Add that follows it (cuBLASLt's beta * C), lets a token-pruning score reuse the
//    log-sum-exp rows of the attention it belongs to, keeps registered host buffers (KV caches) resident on the
//    device, and replays whole runs as CUDA graphs (cudaGraphExecUpdate when only the parameters changed, the
//    decode case).
//
// Activations are f32 in device memory (the graph's convention). Linear: cuBLASLt BF16 x BF16 -> F32 (FP32
// accumulate) for Precision::kBF16 (the default on the GPU), F32 x F32 for kF32, INT8 x INT8 -> INT32 with the
// exact dequantisation rules of kernels/ref/ref_quant.h for Linears the plan puts in int8; M <= 8 rows (decode)
// go to our own GEMV, which streams the weights once for all rows. Attention: our flash-attention kernel (bf16
// tensor cores through WMMA, f32 online softmax) for T > 8 queries and head_dim 32/64/128; a split-key kernel
// for decode.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "graph/backend.h"
#include "graph/executor.h"

namespace ev {

struct CudaDeviceInfo {
  int device = 0;
  std::string name;       // "NVIDIA H200"
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  size_t memory_bytes = 0;
  size_t l2_bytes = 0;
  int driver_version = 0, runtime_version = 0;
  std::string describe() const;  // "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB, driver 13.0)"
};

// Whether this build has the CUDA backend (-DEDGEVLM_CUDA=ON).
bool cuda_built();
// The device, or an error saying why there is none (built without CUDA, no driver, no GPU, bad index).
Result<CudaDeviceInfo> cuda_device_info(int device = 0);

struct CudaOptions {
  int device = 0;
  Precision precision = Precision::kBF16;  // Linears not planned int8: kBF16 (tensor cores) or kF32
  bool graphs = true;                      // replay runs as CUDA graphs where a run allows it
  bool fuse = true;                        // Linear + residual Add, attention score from attention's LSE
  // Each new GEMM shape runs cuBLASLt's first heuristic once; after that run the executor times the heuristic's
  // candidates (up to 8) on scratch operands of the shape and keeps the fastest (graphs are captured again).
  bool tune_gemms = true;
  // FP8 GEMMs (sm_89 and later: Ada, Hopper): the bf16 Linears' GEMMs run as e4m3 x e4m3 with one scale per
  // tensor (weights: amax / 448 at upload; activations: amax / 448 per run, computed on the device), accumulating
  // in f32 and writing what the bf16 GEMM would (f32 or bf16, with its epilogue). GEMVs (decode) stay bf16.
  // A shape cuBLASLt has no FP8 algorithm for keeps its bf16 GEMM.
  bool fp8 = false;
  // Ops this backend must not run (for tests of the CPU fallback, and for bisecting): they go to the fallback.
  std::vector<OpKind> disabled_ops;
};

// Fails (with the reason) when the build has no CUDA or no device is usable.
Result<std::unique_ptr<Backend>> make_cuda_backend(const CudaOptions& opt);

// Runs graphs on `cuda` (a backend from make_cuda_backend; not owned) with `fallback` (not owned; the CPU backend)
// for the nodes `cuda` does not support. Several executors may share one backend (e.g. the vision and the text
// executor of an engine): each has its own CUDA stream, buffers and graphs, so they run concurrently.
Result<std::unique_ptr<Executor>> make_cuda_executor(Backend* cuda, Backend* fallback);

// Programmatic dependent launch of the decode kernels (on by default where the device has it, sm_90): off makes
// every kernel wait for the previous one's end before it launches. For side-by-side measurements; graphs captured
// afterwards follow the new setting.
void cuda_set_dependent_launch(bool on);
bool cuda_dependent_launch();

// What a CudaExecutor did in its last run (tests and benchmarks read this through the executor).
struct CudaRunStats {
  int gpu_nodes = 0, cpu_nodes = 0, fused_nodes = 0;
  int kernel_launches = 0;
  int fp8_gemms = 0;             // GEMMs run in FP8 (CudaOptions::fp8)
  bool graph_replayed = false;   // the run was launched as a CUDA graph
  bool graph_updated = false;    // ... by updating the previous instantiation in place
  bool replayed_as_is = false;   // ... the same graph as the last run: no planning, no capture (the other counts
                                 // are the last full run's)
  int64_t bytes_up = 0, bytes_down = 0;
  size_t device_bytes = 0;       // activation buffers held
  // Host time of the run's phases: planning (placement, weights, staging), enqueueing (kernel launches, or the
  // capture and graph update), and waiting for the GPU (synchronisation until the outputs are down).
  double plan_s = 0, enqueue_s = 0, wait_s = 0;
  // GEMM autotuning (CudaOptions::tune_gemms) by this executor so far: shapes tuned and the time spent.
  int gemm_shapes_tuned = 0;
  double gemm_tuning_s = 0;
};
// The stats of `ex` if it is a CudaExecutor (else an error).
Result<CudaRunStats> cuda_run_stats(const Executor& ex);

}  // namespace ev
