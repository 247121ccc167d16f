// Backend: something that can compute graph nodes (the CPU kernels, the CUDA kernels, the plain reference).
// A backend declares which nodes it supports; the executor sends the rest to a fallback (the reference).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "graph/graph.h"

namespace ev {

// How Linear weights are computed with. Activations are always f32 in memory.
enum class Precision : uint8_t {
  kF32 = 0,   // f32 x f32 -> f32 (bf16/f16 weights are widened once at prepare time)
  kBF16 = 1,  // bf16 x bf16 -> f32 accumulate (activations rounded to bf16 at the GEMM input)
  kInt8 = 2,  // int8 weights (per-output-channel scales) x int8 activations (dynamic per-token scales) -> s32,
              // rescaled to f32 (see QuantParams in core/tensor.h)
};
const char* precision_name(Precision p);
bool precision_from_string(const std::string& s, Precision* out);

// Per-Linear precision (mixed-precision plans, models/quant_plan.h): keyed by the weight tensor's full name
// (Tensor::name(), e.g. "model.vision_model.encoder.layers.0.mlp.fc1.weight"). A float weight planned kInt8 is
// quantised when the backend packs it (per output channel, after multiplying by `smooth` when given: SmoothQuant
// factors [K], by which the activations are then divided). Weights the plan does not name use the backend's own
// precision. An int8 weight (dtype kI8 with Tensor::quant()) is computed in int8 whatever the plan says.
struct LinearPlan {
  std::map<std::string, Precision> precision;
  std::map<std::string, std::shared_ptr<const std::vector<float>>> smooth;
  bool empty() const { return precision.empty(); }
  // The precision the plan gives weight `name`, or `otherwise` when it names none.
  Precision precision_of(const std::string& name, Precision otherwise) const {
    auto it = precision.find(name);
    return it == precision.end() ? otherwise : it->second;
  }
  // Its SmoothQuant factors, or nullptr.
  const std::vector<float>* smooth_of(const std::string& name) const {
    auto it = smooth.find(name);
    return it == smooth.end() ? nullptr : it->second.get();
  }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual bool supports(const Node& n) const = 0;
  // Called once per graph before the first compute with the weight leaves of that graph, so that the backend
  // can reorder/convert them (e.g. into oneDNN's blocked layout). Must be idempotent and cheap on repeat:
  // backends cache by the weight's data pointer.
  virtual Status prepare_weights(const Graph& g) { return Status::Ok(); }
  // Replaces the mixed-precision plan (nullptr: none) and drops every packed weight, which the next
  // prepare_weights / compute packs again under the new plan. Backends without per-Linear precision ignore it.
  virtual void set_linear_plan(std::shared_ptr<const LinearPlan> plan) {}
  // Compute node `n`. `in[i]` is the i-th input's tensor; `out` is already allocated with n.out_shape.
  virtual Status compute(const Node& n, const std::vector<const Tensor*>& in, Tensor& out) = 0;
};

// The plain reference backend (src/kernels/ref): single-threaded, straightforward loops, supports every op.
std::unique_ptr<Backend> make_ref_backend();
// The optimised CPU backend (src/kernels/cpu): multi-threaded on `pool`, oneDNN GEMM, AVX-512 where present.
std::unique_ptr<Backend> make_cpu_backend(ThreadPool* pool, Precision precision);

}  // namespace ev
