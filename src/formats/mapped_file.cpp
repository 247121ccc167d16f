#include "formats/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/tensor.h"

namespace ev {

Result<MappedBytes> map_file_readonly(const std::string& path, size_t min_size, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound(path + ": no such file");
    return IoError(path + ": cannot open: " + std::strerror(err));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return IoError(path + ": fstat failed: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return IoError(path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < min_size) {
    ::close(fd);
    return Corrupt(path + ": file is " + std::to_string(size) + " bytes, too short for " + what);
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps its own reference to the file
  if (addr == MAP_FAILED)
    return IoError(path + ": mmap of " + std::to_string(size) + " bytes failed: " + std::strerror(map_err));
  MappedBytes m;
  m.owner = std::shared_ptr<void>(addr, [size](void* p) { ::munmap(p, size); });
  m.data = static_cast<const uint8_t*>(addr);
  m.size = size;
  return m;
}

Result<MappedBytes> copy_aligned(const void* data, size_t size, const std::string& name) {
  void* copy = aligned_alloc_bytes(size);
  if (!copy) return Status(StatusCode::kOutOfMemory, name + ": cannot allocate " + std::to_string(size) + " bytes");
  if (size) std::memcpy(copy, data, size);
  MappedBytes m;
  m.owner = std::shared_ptr<void>(copy, aligned_free);
  m.data = static_cast<const uint8_t*>(copy);
  m.size = size;
  return m;
}

}  // namespace ev
