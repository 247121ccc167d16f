#include "core/tensor.h"

#include <cassert>
#include <cstdlib>
#include <cstring>

namespace ev {

void* aligned_alloc_bytes(size_t n) {
  size_t rounded = (n + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  return std::aligned_alloc(64, rounded);
}

void aligned_free(void* p) { std::free(p); }

Shape::Shape(std::initializer_list<int64_t> dims) {
  assert(dims.size() <= kMaxDims);
  ndim = static_cast<int>(dims.size());
  size_t i = 0;
  for (int64_t v : dims) d[i++] = v;
}

Shape Shape::from_vector(const std::vector<int64_t>& dims) {
  assert(dims.size() <= kMaxDims);
  Shape s;
  s.ndim = static_cast<int>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) s.d[i] = dims[i];
  return s;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= d[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (d[static_cast<size_t>(i)] != o.d[static_cast<size_t>(i)]) return false;
  return true;
}

std::vector<int64_t> Shape::to_vector() const { return {d.begin(), d.begin() + ndim}; }

std::string Shape::to_string() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(d[static_cast<size_t>(i)]);
  }
  return s + "]";
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  size_t n = t.nbytes();
  void* p = aligned_alloc_bytes(n);
  std::memset(p, 0, (n + 63) / 64 * 64 == 0 ? 64 : (n + 63) / 64 * 64);
  t.data_ = p;
  t.owner_ = std::shared_ptr<void>(p, aligned_free);
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape, void* data, std::shared_ptr<void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

Tensor Tensor::borrow(DType dtype, Shape shape, void* data) { return view(dtype, shape, data, nullptr); }

Result<Tensor> Tensor::reshape(Shape s) const {
  if (s.numel() != numel())
    return ShapeMismatch("cannot reshape " + name_ + shape_.to_string() + " to " + s.to_string());
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice_rows(int64_t r0, int64_t r1) const {
  const int64_t cols = shape_.cols();
  Tensor t = *this;
  t.shape_ = Shape{r1 - r0, cols};
  t.data_ = static_cast<char*>(data_) + static_cast<size_t>(r0 * cols) * dtype_size(dtype_);
  if (quant_ && quant_->scale.numel() == shape_.rows()) {  // an int8 matrix: its rows' scales go with them
    auto q = std::make_shared<QuantParams>(*quant_);
    const Tensor& sc = quant_->scale;
    q->scale = view(sc.dtype_, Shape{r1 - r0}, static_cast<char*>(sc.data_) + static_cast<size_t>(r0) * dtype_size(sc.dtype_),
                    sc.owner_);
    t.quant_ = std::move(q);
  }
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(dtype_, shape_);
  if (nbytes()) std::memcpy(t.data_, data_, nbytes());
  t.name_ = name_;
  return t;
}

Result<Tensor> Tensor::to(DType dst) const {
  if (dst == dtype_) return clone();
  Tensor out = empty(dst, shape_);
  out.name_ = name_;
  const size_t n = static_cast<size_t>(numel());
  auto* o16 = out.data_as<uint16_t>();
  auto* o32 = out.data_as<float>();
  auto* i16 = data_as<uint16_t>();
  auto* i32 = data_as<float>();
  if (dtype_ == DType::kF32 && dst == DType::kBF16) {
    convert_f32_to_bf16(i32, o16, n);
  } else if (dtype_ == DType::kF32 && dst == DType::kF16) {
    convert_f32_to_f16(i32, o16, n);
  } else if (dtype_ == DType::kBF16 && dst == DType::kF32) {
    convert_bf16_to_f32(i16, o32, n);
  } else if (dtype_ == DType::kF16 && dst == DType::kF32) {
    convert_f16_to_f32(i16, o32, n);
  } else if (dtype_ == DType::kF16 && dst == DType::kBF16) {
    for (size_t i = 0; i < n; ++i) o16[i] = f32_to_bf16(f16_to_f32(i16[i]));
  } else if (dtype_ == DType::kBF16 && dst == DType::kF16) {
    for (size_t i = 0; i < n; ++i) o16[i] = f32_to_f16(bf16_to_f32(i16[i]));
  } else {
    return Unsupported(std::string("conversion ") + dtype_name(dtype_) + " -> " + dtype_name(dst) + " of " + name_);
  }
  return out;
}

}  // namespace ev
