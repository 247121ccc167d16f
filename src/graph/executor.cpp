#include "graph/executor.h"

#include <algorithm>
#include <map>
#include <memory>

#include "core/clock.h"

namespace ev {

namespace {
bool is_free(const std::shared_ptr<void>& b) { return b.use_count() == 1; }
}  // namespace

// Recycles activation buffers by (page-rounded) size: a transformer's layers produce the same sizes over and
// over, so after the first layer (and across decode steps) nothing new is allocated. A buffer is free when the
// pool holds the only reference, i.e. no live Tensor (an intermediate, a kept output, a caller's copy) uses it.
Tensor BufferPool::take(DType dt, const Shape& s) {
  const size_t bytes = std::max<size_t>(4096, (static_cast<size_t>(s.numel()) * dtype_size(dt) + 4095) / 4096 * 4096);
  auto& list = by_size_[bytes];
  for (auto& b : list)
    if (is_free(b)) return Tensor::view(dt, s, b.get(), b);
  void* p = aligned_alloc_bytes(bytes);
  list.push_back(std::shared_ptr<void>(p, aligned_free));
  total_bytes_ += bytes;
  return Tensor::view(dt, s, p, list.back());
}

Result<ExecResult> Executor::run(const Graph& g, const ExecOptions& opt) {
  EV_RETURN_IF_ERROR(g.status());
  const size_t n = g.nodes.size();
  EV_RETURN_IF_ERROR(backend_->prepare_weights(g));

  // Alias roots: a view (reshape, contiguous kCols) shares its input's storage, so the storage lives until the
  // last use of any alias. Per-run bookkeeping lives in members: a decode step runs ~750 nodes, and fresh vectors
  // (one per root with aliases, as before) cost more than the small ops they book-keep.
  std::vector<TensorId>& root = root_;
  std::vector<int64_t>& last_use = last_use_;
  std::vector<uint8_t>& keep = keep_;
  std::vector<TensorId>& alias_head = alias_head_;  // first view of each root, -1 if none
  std::vector<TensorId>& alias_next = alias_next_;  // next view of the same root
  std::vector<uint8_t>& view = view_;
  root.assign(n, 0);
  last_use.assign(n, -1);
  keep.assign(n, 0);
  alias_head.assign(n, -1);
  alias_next.assign(n, -1);
  view.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    for (TensorId in : nd.inputs)
      if (in < 0 || static_cast<size_t>(in) >= i) return Internal("graph node '" + nd.name + "' uses a later node");
    view[i] = is_view(g, nd) ? 1 : 0;
    root[i] = view[i] ? root[static_cast<size_t>(nd.inputs[0])] : static_cast<TensorId>(i);
    for (TensorId in : nd.inputs) last_use[static_cast<size_t>(root[static_cast<size_t>(in)])] = static_cast<int64_t>(i);
    if (nd.keep) keep[static_cast<size_t>(root[i])] = 1;
    if (view[i]) {
      const size_t r = static_cast<size_t>(root[i]);
      alias_next[i] = alias_head[r];
      alias_head[r] = static_cast<TensorId>(i);
    }
  }

  ExecResult res;
  res.values.resize(n);
  std::vector<const Tensor*>& ins = ins_;
  const bool named = static_cast<bool>(opt.on_tensor);  // names on intermediates only matter to the callback

  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.nodes[i];
    if (nd.op == OpKind::kInput) {
      res.values[i] = nd.bound;
      continue;
    }
    if (view[i]) {
      const Tensor& src = res.values[static_cast<size_t>(nd.inputs[0])];
      if (nd.op == OpKind::kReshape) {
        EV_ASSIGN_OR_RETURN(res.values[i], src.reshape(nd.out_shape));
      } else {  // kCols of a single row (or all columns): the range is contiguous
        EV_ASSIGN_OR_RETURN(Tensor flat, src.reshape(Shape{src.numel(), 1}));
        const int64_t rows = src.shape().rows();
        Tensor part = rows == 1 ? flat.slice_rows(nd.p.col_begin, nd.p.col_end) : flat;
        EV_ASSIGN_OR_RETURN(res.values[i], part.reshape(nd.out_shape));
      }
      if (named || nd.keep) res.values[i].set_name(nd.name);
      if (opt.on_tensor) opt.on_tensor(nd, res.values[i]);
      continue;
    }
    Tensor out;
    if (nd.bound.data() != nullptr) {
      out = nd.bound;
      EV_ASSIGN_OR_RETURN(out, out.reshape(nd.out_shape));
    } else {
      out = pool_.take(nd.out_dtype, nd.out_shape);
    }
    if (named || nd.keep) out.set_name(nd.name);
    ins.clear();
    for (TensorId in : nd.inputs) ins.push_back(&res.values[static_cast<size_t>(in)]);
    Backend* be = backend_->supports(nd) ? backend_ : fallback_;
    if (be == nullptr) return Unsupported("no backend supports op " + std::string(op_kind_name(nd.op)) + " (" + nd.name + ")");
    if (opt.on_inputs) opt.on_inputs(nd, ins);
    const int64_t t0 = opt.time_nodes ? now_ns() : 0;
    Status st = be->compute(nd, ins, out);
    if (!st.ok()) return st.with_context("node '" + nd.name + "' (" + op_kind_name(nd.op) + ")");
    if (opt.time_nodes) res.timings.push_back({static_cast<TensorId>(i), static_cast<double>(now_ns() - t0) * 1e-9});
    res.values[i] = std::move(out);
    if (opt.on_tensor) opt.on_tensor(nd, res.values[i]);

    // Release storage whose last use was this node.
    for (TensorId in : nd.inputs) {
      const size_t r = static_cast<size_t>(root[static_cast<size_t>(in)]);
      if (last_use[r] != static_cast<int64_t>(i) || keep[r]) continue;
      if (g.nodes[r].op == OpKind::kInput || g.nodes[r].bound.data() != nullptr) continue;
      last_use[r] = -2;  // released
      // Drop r and every alias of it: the buffer becomes free in the pool.
      res.values[r] = Tensor();
      for (TensorId a = alias_head[r]; a >= 0; a = alias_next[static_cast<size_t>(a)])
        res.values[static_cast<size_t>(a)] = Tensor();
    }
  }
  // Drop non-kept intermediates so that callers see only outputs.
  for (size_t i = 0; i < n; ++i) {
    const size_t r = static_cast<size_t>(root[i]);
    if (!keep[r] && g.nodes[i].op != OpKind::kInput) res.values[i] = Tensor();
  }
  return res;
}

}  // namespace ev
