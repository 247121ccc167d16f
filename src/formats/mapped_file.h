// The bytes of a weight file as the readers validate them in place (safetensors.h, gguf.h): a read-only private
// mapping of the whole file, or an aligned copy of an in-memory image (fuzz targets, tests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace ev {

struct MappedBytes {
  std::shared_ptr<void> owner;  // unmaps / frees when the last view is gone
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// Maps `path` (PROT_READ, MAP_PRIVATE). kNotFound when absent; kIoError when it cannot be opened, stat-ed or
// mapped, or is not a regular file; kCorrupt "<path>: file is N bytes, too short for <what>" below min_size.
Result<MappedBytes> map_file_readonly(const std::string& path, size_t min_size, const std::string& what);

// A 64-byte aligned copy of data[0, size); kOutOfMemory naming `name` when it cannot be allocated.
Result<MappedBytes> copy_aligned(const void* data, size_t size, const std::string& name);

}  // namespace ev
