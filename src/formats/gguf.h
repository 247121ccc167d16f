// GGUF reading (zero-copy, via mmap) and writing: the file format of llama.cpp / ggml.
//
// File format (ggml docs/gguf.md), all little-endian:
//   u32 magic "GGUF" | u32 version (2 or 3) | u64 tensor_count | u64 metadata_kv_count
//   metadata_kv_count x { gguf_string key | u32 value_type | value }
//   tensor_count x { gguf_string name | u32 n_dims (<= 4) | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (u32, default 32) | tensor data (each tensor at data_start + offset, offsets
//   multiples of the alignment)
//   gguf_string = u64 length + bytes (no terminator); value types 0..12 below; an array is u32 element type +
//   u64 count + elements. Version 1 (u32 counts) is refused with kUnsupported; 2 and 3 differ only in that v3
//   allows big-endian files, which we do not read (detected and refused with kUnsupported).
//
// Dimensions: GGUF lists ne[0] first, the fastest-varying (contiguous) dimension. A GGUF tensor with
// ne = [K, N] holds the same bytes as a row-major [N, K] tensor; GgufTensorInfo::shape() and get() return the
// row-major order (the order of the Hugging Face / PyTorch tensor that was converted).
//
// Everything is validated at open (every header field, string length, array count, tensor info, alignment,
// offset and byte size, overlap of tensor data), so a GgufFile that opened hands out only in-bounds views.
// Counts are checked against the bytes left in the file before anything is allocated for them.
//
// Tensor types: get() returns F32 / F16 / BF16 tensors as views into the mapping (copied when misaligned), and
// dequantises Q8_0 into owned f32 storage. Q8_0 (ggml-common.h block_q8_0): blocks of 32 values along ne[0],
// each { f16 d; int8 qs[32] } (34 bytes), value = d * qs[i]. Its scales are per 32-wide block, unlike our int8
// weights (core/tensor.h QuantParams), whose scales are per output channel, so Q8_0 is not mapped onto them.
// Every other ggml type (Q4_K, IQ*, ...) is known by its block layout (so offsets and sizes are still checked at
// open) but get() reports kUnsupported; an unknown type id cannot be validated and open() refuses it
// (kUnsupported).
//
// Status codes: kNotFound (file / key / tensor absent), kIoError (open / mmap / write failed), kCorrupt (malformed:
// messages name the file, the key or tensor, and what is wrong), kUnsupported (see above).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace ev {

// Metadata value types (gguf.md, enum gguf_metadata_value_type).
enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9,
  kU64 = 10, kI64 = 11, kF64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u32", "string", "array", ...; "?" when out of range

// Tensor types used here (ggml.h enum ggml_type); the reader knows the block layout of every ggml type.
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8, kBF16 = 30 };

struct GgmlTypeInfo {
  uint32_t id;
  const char* name;      // "F32", "Q8_0", "Q4_K", ...
  int64_t block;         // values per block (1 for plain types)
  uint64_t block_bytes;  // bytes per block
};
// nullptr for an id that is not (or no longer) a ggml type.
const GgmlTypeInfo* ggml_type_info(uint32_t id);

constexpr int64_t kQ8_0Block = 32;
constexpr uint64_t kQ8_0BlockBytes = 34;
// n must be a multiple of 32. Quantisation follows gguf-py (quants.py Q8_0): d = max|x| / 127 in f32,
// q = round-half-away(x / d) (x * (1/d)), d stored as f16 (round to nearest even); a zero block has d = 0.
void quantize_q8_0(const float* x, uint8_t* blocks, int64_t n);
// Exact: each value is f16(d) * q computed in f32 (an 11-bit times a 7-bit integer mantissa fits).
void dequantize_q8_0(const uint8_t* blocks, float* out, int64_t n);

// One metadata value. Scalars: integers in `i` (and `u` for unsigned types; a u64 above INT64_MAX is kept in `u`
// only), floats in `f`, bools in `b`, strings in `s`. Arrays: elem_type + one of strings / ints / floats
// (bool arrays as 0/1 in ints; u64 elements above INT64_MAX are stored bit-cast). Nested arrays are refused.
struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType elem_type = GgufType::kU8;  // arrays only
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0.0;
  bool b = false;
  std::string s;
  std::vector<std::string> strings;
  std::vector<int64_t> ints;
  std::vector<double> floats;

  bool is_integer() const;  // a scalar of one of the 8 integer types
  bool is_float() const { return type == GgufType::kF32 || type == GgufType::kF64; }
  size_t array_size() const;

  // Constructors for the writer.
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue str(std::string v);
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue i32_array(const std::vector<int32_t>& v);
  static GgufValue f32_array(const std::vector<float>& v);
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;      // GGUF order: ne[0] is contiguous
  uint32_t type_id = 0;
  const GgmlTypeInfo* type = nullptr;
  uint64_t offset = 0;          // relative to the data region
  uint64_t nbytes = 0;
  std::vector<int64_t> shape() const;  // row-major: ne reversed
  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps the file read-only and validates it; views returned by get() keep the mapping alive.
  static Result<GgufFile> open(const std::string& path);
  // The same validation on an in-memory image (copied into aligned storage); `name` is used in messages.
  static Result<GgufFile> from_memory(const void* data, size_t size, const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the tensor data region
  uint64_t data_size() const { return data_size_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;  // nullptr when absent
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Typed access: kNotFound when absent (the forms without a default), kCorrupt "<file>: key 'k' has type
  // string, expected an integer" on a type mismatch or an out-of-range integer.
  Result<int64_t> get_int(std::string_view key) const;
  Result<int64_t> get_int(std::string_view key, int64_t def) const;
  Result<double> get_float(std::string_view key) const;  // f32 / f64 (integers accepted too)
  Result<double> get_float(std::string_view key, double def) const;
  Result<bool> get_bool(std::string_view key, bool def) const;
  Result<std::string> get_string(std::string_view key) const;
  Result<std::string> get_string(std::string_view key, const std::string& def) const;
  Result<const std::vector<std::string>*> get_string_array(std::string_view key) const;
  Result<const std::vector<int64_t>*> get_int_array(std::string_view key) const;
  Result<std::vector<double>> get_float_array(std::string_view key) const;  // float or integer elements

  // Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* tensor(std::string_view name) const;  // nullptr when absent
  // The tensor's bytes (tensor->nbytes of them, inside the mapping).
  const uint8_t* raw(const GgufTensorInfo& t) const { return data_ + t.offset; }
  // A tensor with the row-major shape and the tensor's name: F32 / F16 / BF16 zero-copy (copied when the data is
  // not aligned to the element size), Q8_0 dequantised to owned f32. kUnsupported for other types.
  Result<Tensor> get(std::string_view name) const;

 private:
  static Result<GgufFile> parse(std::shared_ptr<void> owner, const uint8_t* base, size_t size,
                                const std::string& path);

  std::string path_;
  std::shared_ptr<void> owner_;
  const uint8_t* data_ = nullptr;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0, data_size_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// One tensor to write: `tensor` (f32 / f16 / bf16, row-major) stored as `type` (F32, F16, BF16 or Q8_0; Q8_0 needs
// the last dimension to be a multiple of 32).
struct GgufWriteTensor {
  std::string name;
  Tensor tensor;
  GgmlType type = GgmlType::kF32;
};

// Writes a GGUF file (version 3 unless told, little-endian) readable by llama.cpp and by GgufFile: the metadata in
// the given order (general.alignment is written when `alignment` is not 32), tensor infos in the given order,
// each tensor's data at the next multiple of `alignment` (a power of two). Written to "<path>.tmp" and renamed.
// kInvalidArgument on an empty / duplicate key or tensor name, an unsupported conversion, or a Q8_0 row length
// that is not a multiple of 32; kIoError on I/O failure.
Status write_gguf(const std::string& path, const std::vector<std::pair<std::string, GgufValue>>& metadata,
                  const std::vector<GgufWriteTensor>& tensors, uint32_t alignment = 32, uint32_t version = 3);

}  // namespace ev
