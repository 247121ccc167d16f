// Executor: runs a Graph on a Backend (with the reference backend as fallback for unsupported nodes),
// allocates intermediates and frees each after its last use, times every node, and hands named outputs to a
// callback for dumping.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "graph/backend.h"
#include "graph/graph.h"

namespace ev {

struct NodeTiming {
  TensorId id;
  double seconds;
};

// Called after a node ran, with its output; return value ignored. Used for dumping named tensors.
using TensorCallback = std::function<void(const Node& n, const Tensor& out)>;

// Called before a node runs, with its inputs (e.g. the activations entering each Linear, for calibration).
using InputsCallback = std::function<void(const Node& n, const std::vector<const Tensor*>& in)>;

struct ExecOptions {
  bool time_nodes = false;        // fill ExecResult::timings (adds a clock read per node)
  TensorCallback on_tensor;        // optional
  InputsCallback on_inputs;        // optional
};

struct ExecResult {
  std::vector<Tensor> values;  // by TensorId; only `keep` nodes (and leaves) are still defined after the run
  std::vector<NodeTiming> timings;
  const Tensor& operator[](TensorId id) const { return values[static_cast<size_t>(id)]; }
};

class BufferPool {
 public:
  Tensor take(DType dt, const Shape& s);
  size_t total_bytes() const { return total_bytes_; }

 private:
  std::map<size_t, std::vector<std::shared_ptr<void>>> by_size_;
  size_t total_bytes_ = 0;
};

class Executor {
 public:
  Executor(Backend* backend, Backend* fallback) : backend_(backend), fallback_(fallback) {}
  virtual ~Executor() = default;
  // Runs g; the result holds host tensors (kept outputs and leaves). Not reentrant: one run at a time.
  virtual Result<ExecResult> run(const Graph& g, const ExecOptions& opt = {});
  // `whole` (a host tensor the caller owns, e.g. one layer's KV cache) is read and written by this executor's
  // runs through views of it: an executor with memory of its own (the CUDA one) may keep it there, so that the
  // host copy is no longer current. The plain executor computes in host memory and ignores this.
  virtual void keep_resident(const Tensor& whole) {}
  virtual size_t activation_bytes() const { return pool_.total_bytes(); }
  Backend* backend() const { return backend_; }
  Backend* fallback() const { return fallback_; }

 private:
  Backend* backend_;
  Backend* fallback_;
  BufferPool pool_;  // kept across runs so that decode steps reuse buffers
  // run()'s per-node bookkeeping, kept so that decode steps do not reallocate it (run() is not reentrant).
  std::vector<TensorId> root_, alias_head_, alias_next_;
  std::vector<int64_t> last_use_;
  std::vector<uint8_t> keep_, view_;
  std::vector<const Tensor*> ins_;
};

}  // namespace ev
