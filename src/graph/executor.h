// Executor: runs a Graph on a Backend (with the reference backend as fallback for unsupported nodes),
// allocates intermediates and frees each after its last use, times every node, and hands named outputs to a
// callback for dumping.
#pragma once

#include <functional>
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

struct ExecOptions {
  bool time_nodes = false;        // fill ExecResult::timings (adds a clock read per node)
  TensorCallback on_tensor;        // optional
};

struct ExecResult {
  std::vector<Tensor> values;  // by TensorId; only `keep` nodes (and leaves) are still defined after the run
  std::vector<NodeTiming> timings;
  const Tensor& operator[](TensorId id) const { return values[static_cast<size_t>(id)]; }
};

class Executor {
 public:
  Executor(Backend* backend, Backend* fallback) : backend_(backend), fallback_(fallback) {}
  Result<ExecResult> run(const Graph& g, const ExecOptions& opt = {});

 private:
  Backend* backend_;
  Backend* fallback_;
};

}  // namespace ev
