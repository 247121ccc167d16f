// safetensors reading (zero-copy, via mmap) and writing, and TensorStore: the weights of a model directory in
// the Hugging Face layout (model.safetensors, or model.safetensors.index.json + shards).
//
// File format (https://github.com/huggingface/safetensors, README "Format"):
//   [8 bytes: N, little-endian u64] [N bytes: JSON header] [data region]
//   header = {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [d0, ...],
//             "data_offsets": [begin, end]}, ...}, offsets relative to the start of the data region.
//
// Everything in a file is validated when it is opened (header size, JSON, every entry's dtype, shape, offsets and
// byte size), so a SafetensorsFile that opened successfully hands out only in-bounds views.
//
// Status codes:
//   kNotFound      file / tensor absent
//   kIoError       open / fstat / mmap / write failed
//   kCorrupt       malformed header or entry (messages name the file and the tensor)
//   kUnsupported   a valid entry this build cannot represent as an ev::Tensor (F64, U16, F8_*, > 4 dims);
//                  reported by get(), not by open(), so such extra tensors do not prevent loading a model
//   kShapeMismatch checked get() found a shape / dtype other than the config implies
#pragma once

#include <cstdint>
#include <map>
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

// Header entries larger than this are refused as absurd (real checkpoints have headers of ~100 KB).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull * 1024 * 1024;

// One tensor entry of a safetensors header.
struct SafetensorsEntry {
  std::string name;
  std::string dtype_str;          // as written in the file: "BF16", "F64", ...
  std::optional<DType> dtype;     // nullopt when dtype_str is a valid safetensors dtype that ev::DType lacks
  std::vector<int64_t> shape;     // may have any rank (ev::Shape holds at most 4; get() checks)
  uint64_t begin = 0, end = 0;    // byte offsets into the data region, end - begin == numel * element size
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps the file read-only (PROT_READ, MAP_PRIVATE) and validates it. Tensor views point into the mapping and
  // keep it alive (the mapping is unmapped when the file object and all its views are gone). Writing through a
  // view's data() faults: copy (Tensor::clone / to) before modifying.
  static Result<SafetensorsFile> open(const std::string& path);
  // Same validation on an in-memory image of a file (copied into 64-byte aligned storage). `name` is used in
  // messages. Used by the fuzz target and by tests.
  static Result<SafetensorsFile> from_memory(const void* data, size_t size, const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  // Tensor names in the order of their data offsets.
  const std::vector<std::string>& names() const { return names_; }
  size_t size() const { return names_.size(); }
  bool has(std::string_view name) const;
  const SafetensorsEntry* entry(std::string_view name) const;  // nullptr when absent
  // "__metadata__" of the header (non-string scalar values are kept as their JSON text).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t header_size() const { return header_size_; }
  uint64_t data_size() const { return data_size_; }

  // A view of the tensor named `name`, owning a reference to the mapping; its Tensor::name() is set.
  // Zero-copy when the data is aligned to the element size (always true for files written by the reference
  // library or by write_safetensors below); otherwise the bytes are copied into aligned storage, because
  // misaligned float loads are undefined behaviour in C++.
  Result<Tensor> get(std::string_view name) const;

 private:
  static Result<SafetensorsFile> parse(std::shared_ptr<void> owner, const uint8_t* base, size_t size,
                                       const std::string& path);

  std::string path_;
  std::shared_ptr<void> owner_;   // the mapping (or the in-memory copy)
  const uint8_t* data_ = nullptr; // start of the data region
  uint64_t header_size_ = 0;
  uint64_t data_size_ = 0;
  std::vector<std::string> names_;
  std::unordered_map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The weights of one model directory. Either a single model.safetensors or a sharded checkpoint described by
// model.safetensors.index.json ({"weight_map": {tensor name: shard file name}}); like transformers, a single
// model.safetensors wins when both exist. Every shard is opened (mapped) once; every tensor the index names must
// exist in its shard (checked at open). Cheap to copy (files are shared).
class TensorStore {
 public:
  TensorStore() = default;
  static Result<TensorStore> open_dir(const std::string& model_dir);
  // A store over one safetensors file (e.g. a golden-tensor file).
  static Result<TensorStore> open_file(const std::string& path);
  // A store over tensors held in memory (owned storage, or views that keep their own storage alive), e.g. the
  // weights of a GGUF model under their Hugging Face names (formats/gguf_import.h). `source` names the store in
  // messages. files() is empty for such a store. kInvalidArgument on an empty / duplicate name, an undefined
  // tensor or a dtype that safetensors cannot name.
  static Result<TensorStore> from_tensors(std::string source, std::vector<std::pair<std::string, Tensor>> tensors);

  bool has(std::string_view name) const;
  // Sorted tensor names.
  std::vector<std::string> names() const;
  size_t size() const { return index_.size() + (memory_ ? memory_->size() : 0); }
  // Header entry (dtype, shape) without creating a view; nullptr when absent.
  const SafetensorsEntry* entry(std::string_view name) const;

  Result<Tensor> get(std::string_view name) const;
  // Checked: kNotFound when absent; kShapeMismatch "tensor 'x' has shape [a, b] but the config implies [c, d]"
  // or "tensor 'x' has dtype f64 but only f32, bf16 are accepted". An empty `allowed` accepts every dtype.
  Result<Tensor> get(std::string_view name, const Shape& expected, const std::vector<DType>& allowed) const;

  // The files this store reads (one, or one per shard).
  const std::vector<std::shared_ptr<const SafetensorsFile>>& files() const { return files_; }
  const std::string& source() const { return source_; }  // the directory or file it was opened from

 private:
  std::string source_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::unordered_map<std::string, size_t> index_;  // tensor name -> position in files_
  // In-memory tensors (from_tensors) with their synthesized header entries; shared so copies stay cheap.
  struct MemoryTensor {
    Tensor tensor;
    SafetensorsEntry entry;
  };
  std::shared_ptr<const std::unordered_map<std::string, MemoryTensor>> memory_;
};

// Writes tensors to a safetensors file readable by the reference library (huggingface/safetensors) and by
// SafetensorsFile. The JSON header is padded with spaces so that the data region starts at a multiple of 8,
// and tensors are laid out by decreasing element size (stable otherwise), so every tensor is aligned to its
// element size without gaps (the reference library rejects gaps between tensors). Written to "<path>.tmp" and
// renamed, so a failed write never leaves a truncated file under `path`.
// kInvalidArgument on an empty / duplicate / "__metadata__" name or an undefined tensor; kIoError on I/O failure.
Status write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

// Safetensors dtype name of an ev::DType ("F32", "BF16", "I64", "BOOL", ...).
const char* safetensors_dtype_name(DType t);

}  // namespace ev
