// Tensor: a typed, contiguous, row-major n-d array (n <= 4) over shared storage.
// Storage may be owned heap memory, a memory-mapped file region, or borrowed memory.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace ev {

constexpr int kMaxDims = 4;

struct QuantParams;

struct Shape {
  std::array<int64_t, kMaxDims> d{1, 1, 1, 1};
  int ndim = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  static Shape from_vector(const std::vector<int64_t>& dims);  // asserts ndim <= 4
  int64_t operator[](int i) const { return d[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return d[static_cast<size_t>(i)]; }
  int64_t numel() const;
  // Last dimension ("row length") and product of the others ("rows").
  int64_t cols() const { return ndim == 0 ? 1 : d[static_cast<size_t>(ndim - 1)]; }
  int64_t rows() const { return ndim == 0 ? 1 : numel() / cols(); }
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::vector<int64_t> to_vector() const;
  std::string to_string() const;  // "[2, 3, 4]"
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-initialised, 64-byte aligned storage.
  static Tensor empty(DType dtype, Shape shape);
  // Wraps memory owned by `owner` (e.g. a mapped file); `data` must stay valid while owner lives.
  static Tensor view(DType dtype, Shape shape, void* data, std::shared_ptr<void> owner);
  // Wraps memory the caller keeps alive.
  static Tensor borrow(DType dtype, Shape shape, void* data);

  bool defined() const { return data_ != nullptr || shape_.numel() == 0; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const { return static_cast<T*>(data_); }

  // Same storage, new shape (numel must match).
  Result<Tensor> reshape(Shape s) const;
  // Rows [r0, r1) of the tensor seen as 2-D [rows, cols]: a view sharing storage.
  Tensor slice_rows(int64_t r0, int64_t r1) const;
  // A deep copy converted to `dtype` (f32/f16/bf16 among each other; same dtype is a plain copy).
  Result<Tensor> to(DType dtype) const;
  Tensor clone() const;

  // The shared owner of the storage (views of one allocation share it); nullptr for borrowed memory.
  const std::shared_ptr<void>& owner() const { return owner_; }
  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }

  // Quantisation parameters of an int8 weight matrix (nullptr for every other tensor); see QuantParams.
  const std::shared_ptr<const QuantParams>& quant() const { return quant_; }
  void set_quant(std::shared_ptr<const QuantParams> q) { quant_ = std::move(q); }

 private:
  DType dtype_ = DType::kF32;
  Shape shape_;
  void* data_ = nullptr;
  std::shared_ptr<void> owner_;
  std::string name_;
  std::shared_ptr<const QuantParams> quant_;
};

// An int8 weight matrix q [N, K] (dtype kI8) stands for the float matrix W[n, k] = scale[n] * q[n, k] / smooth[k]:
// symmetric per-output-channel scales, and optionally SmoothQuant's per-input-channel factors, by which the
// activations are divided before their own (dynamic, per-token) quantisation. Both f32.
struct QuantParams {
  Tensor scale;   // f32 [N]
  Tensor smooth;  // f32 [K], or undefined (all ones)
};

// 64-byte aligned allocation helpers.
void* aligned_alloc_bytes(size_t n);
void aligned_free(void* p);

}  // namespace ev
