#include "formats/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/json_util.h"
#include "formats/mapped_file.h"

namespace ev {

using nlohmann::json;

namespace {

// Every dtype of the safetensors spec (safetensors/src/tensor.rs, enum Dtype), with its element size. Those that
// ev::DType has map to it; the others are accepted in a header (so offsets can still be validated) but get()
// refuses them.
struct StDtype {
  const char* name;
  size_t size;
  std::optional<DType> dtype;
};
const StDtype kStDtypes[] = {
    {"BOOL", 1, DType::kBool}, {"U8", 1, DType::kU8},      {"I8", 1, DType::kI8},
    {"F8_E5M2", 1, {}},        {"F8_E4M3", 1, {}},         {"I16", 2, {}},
    {"U16", 2, {}},            {"F16", 2, DType::kF16},    {"BF16", 2, DType::kBF16},
    {"I32", 4, DType::kI32},   {"U32", 4, {}},             {"F32", 4, DType::kF32},
    {"F64", 8, {}},            {"I64", 8, DType::kI64},    {"U64", 8, {}},
};

const StDtype* find_st_dtype(std::string_view s) {
  for (const auto& d : kStDtypes)
    if (s == d.name) return &d;
  return nullptr;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses one header entry {"dtype", "shape", "data_offsets"} and checks it against the data region size.
Result<SafetensorsEntry> parse_entry(const std::string& path, const std::string& name, const json& v,
                                     uint64_t data_size) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!v.is_object()) return Corrupt(where + ": expected an object, got " + json_type_name(v));
  JsonView view(v, where);
  SafetensorsEntry e;
  e.name = name;

  auto dt = view.get_string("dtype");
  if (!dt.ok()) return dt.status();
  e.dtype_str = *dt;
  const StDtype* st = find_st_dtype(e.dtype_str);
  if (!st) return Corrupt(where + ": unknown dtype '" + e.dtype_str + "'");
  e.dtype = st->dtype;

  auto shape = view.get_int_array("shape");
  if (!shape.ok()) return shape.status();
  e.shape = std::move(*shape);
  // numel * element size must fit: a shape like [2^40, 2^40] would otherwise wrap around and pass the size check.
  uint64_t nbytes = st->size;
  for (int64_t d : e.shape) {
    if (d < 0) return Corrupt(where + ": negative dimension in shape " + shape_str(e.shape));
    if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes) ||
        nbytes > static_cast<uint64_t>(INT64_MAX))
      return Corrupt(where + ": shape " + shape_str(e.shape) + " overflows");
  }

  auto offs = view.get_int_array("data_offsets");
  if (!offs.ok()) return offs.status();
  if (offs->size() != 2)
    return Corrupt(where + ": data_offsets must have 2 elements, has " + std::to_string(offs->size()));
  const int64_t b = (*offs)[0], en = (*offs)[1];
  const std::string offs_str = "[" + std::to_string(b) + ", " + std::to_string(en) + "]";
  if (b < 0 || en < 0) return Corrupt(where + ": negative data_offsets " + offs_str);
  if (b > en) return Corrupt(where + ": data_offsets " + offs_str + " begin after end");
  e.begin = static_cast<uint64_t>(b);
  e.end = static_cast<uint64_t>(en);
  if (e.end > data_size)
    return Corrupt(where + ": data_offsets " + offs_str + " exceed data size " + std::to_string(data_size));
  if (e.end - e.begin != nbytes)
    return Corrupt(where + ": data_offsets " + offs_str + " hold " + std::to_string(e.end - e.begin) +
                   " bytes but dtype " + e.dtype_str + " and shape " + shape_str(e.shape) + " need " +
                   std::to_string(nbytes));
  return e;
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow: checked at parse time
  return n;
}

// ---- SafetensorsFile ----

Result<SafetensorsFile> SafetensorsFile::parse(std::shared_ptr<void> owner, const uint8_t* base, size_t size,
                                               const std::string& path) {
  if (size < 8)
    return Corrupt(path + ": file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  const uint64_t n = read_le_u64(base);
  if (n > kMaxSafetensorsHeaderBytes)
    return Corrupt(path + ": header length " + std::to_string(n) + " is absurd (limit " +
                   std::to_string(kMaxSafetensorsHeaderBytes) + " bytes)");
  if (n > size - 8)
    return Corrupt(path + ": header length " + std::to_string(n) + " exceeds file size " + std::to_string(size));

  SafetensorsFile f;
  f.path_ = path;
  f.owner_ = std::move(owner);
  f.header_size_ = n;
  f.data_ = base + 8 + n;
  f.data_size_ = size - 8 - n;

  std::string_view header_text(reinterpret_cast<const char*>(base + 8), static_cast<size_t>(n));
  auto parsed = parse_json(header_text, path + ": header");
  if (!parsed.ok()) return parsed.status();
  const json& header = *parsed;
  if (!header.is_object())
    return Corrupt(path + ": header must be a JSON object, got " + std::string(json_type_name(header)));

  std::vector<const SafetensorsEntry*> order;
  f.entries_.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object())
        return Corrupt(path + ": __metadata__ must be an object, got " + std::string(json_type_name(*it)));
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (m->is_string()) {
          f.metadata_[m.key()] = m->get<std::string>();
        } else if (m->is_primitive()) {
          // The spec says str -> str; some writers store numbers. Keep their text rather than refusing the file.
          f.metadata_[m.key()] = m->dump();
        } else {
          return Corrupt(path + ": __metadata__ value of '" + m.key() + "' must be a string, got " +
                         json_type_name(*m));
        }
      }
      continue;
    }
    auto e = parse_entry(path, key, *it, f.data_size_);
    if (!e.ok()) return e.status();
    auto ins = f.entries_.emplace(key, std::move(*e));
    order.push_back(&ins.first->second);
  }
  std::sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->name < b->name;
  });
  f.names_.reserve(order.size());
  for (const auto* e : order) f.names_.push_back(e->name);
  return f;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  EV_ASSIGN_OR_RETURN(MappedBytes m, map_file_readonly(path, 8, "the 8-byte header length"));
  return parse(std::move(m.owner), m.data, m.size, path);
}

Result<SafetensorsFile> SafetensorsFile::from_memory(const void* data, size_t size, const std::string& name) {
  EV_ASSIGN_OR_RETURN(MappedBytes m, copy_aligned(data, size, name));
  return parse(std::move(m.owner), m.data, m.size, name);
}

bool SafetensorsFile::has(std::string_view name) const { return entries_.count(std::string(name)) != 0; }

const SafetensorsEntry* SafetensorsFile::entry(std::string_view name) const {
  auto it = entries_.find(std::string(name));
  return it == entries_.end() ? nullptr : &it->second;
}

Result<Tensor> SafetensorsFile::get(std::string_view name) const {
  const SafetensorsEntry* e = entry(name);
  if (!e) return NotFound(path_ + ": no tensor '" + std::string(name) + "'");
  const std::string where = path_ + ": tensor '" + e->name + "'";
  if (!e->dtype) return Unsupported(where + ": dtype " + e->dtype_str + " is not supported");
  if (e->shape.size() > static_cast<size_t>(kMaxDims))
    return Unsupported(where + ": " + std::to_string(e->shape.size()) + " dimensions (at most " +
                       std::to_string(kMaxDims) + " supported)");
  const Shape shape = Shape::from_vector(e->shape);
  const uint8_t* p = data_ + e->begin;
  Tensor t;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(*e->dtype) == 0) {
    // The mapping is read-only; Tensor has no const view, so the const is cast away (see open()).
    t = Tensor::view(*e->dtype, shape, const_cast<uint8_t*>(p), owner_);
  } else {
    t = Tensor::empty(*e->dtype, shape);
    if (t.nbytes()) std::memcpy(t.data(), p, t.nbytes());
  }
  t.set_name(e->name);
  return t;
}

// ---- TensorStore ----

Result<TensorStore> TensorStore::open_file(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  if (!f.ok()) return f.status();
  TensorStore s;
  s.source_ = path;
  s.files_.push_back(std::make_shared<const SafetensorsFile>(std::move(*f)));
  for (const auto& n : s.files_[0]->names()) s.index_.emplace(n, 0);
  return s;
}

Result<TensorStore> TensorStore::open_dir(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) return NotFound(model_dir + ": not a directory");
  const fs::path dir(model_dir);
  const fs::path single = dir / "model.safetensors";
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(single, ec)) {
    auto s = open_file(single.string());
    if (!s.ok()) return s.status();
    s->source_ = model_dir;
    return s;
  }
  if (!fs::exists(index_path, ec))
    return NotFound(model_dir + ": neither model.safetensors nor model.safetensors.index.json exists");

  const std::string ipath = index_path.string();
  auto idx = read_json_file(ipath);
  if (!idx.ok()) return idx.status();
  JsonView root(*idx, ipath);
  if (!root.is_object()) return Corrupt(ipath + ": expected a JSON object, got " + json_type_name(*idx));
  auto wm = root.get_object("weight_map");
  if (!wm.ok()) return wm.status();
  const json& map = wm->node();
  if (map.empty()) return Corrupt(ipath + ": weight_map is empty");

  TensorStore s;
  s.source_ = model_dir;
  std::map<std::string, size_t> shard_index;  // shard file name -> position in files_
  // Shard names first, sorted, so files_ is in a stable order and each shard is opened once.
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (!it->is_string())
      return Corrupt(ipath + ": weight_map." + it.key() + ": expected string, got " + json_type_name(*it));
    const std::string shard = it->get<std::string>();
    // Shards live in the model directory; refuse anything that could point elsewhere.
    const fs::path sp(shard);
    bool bad = shard.empty() || sp.is_absolute();
    for (const auto& part : sp) bad = bad || part == "..";
    if (bad) return Corrupt(ipath + ": weight_map." + it.key() + ": invalid shard file name '" + shard + "'");
    shard_index.emplace(shard, 0);
  }
  for (auto& [shard, pos] : shard_index) {
    auto f = SafetensorsFile::open((dir / shard).string());
    if (!f.ok()) return f.status().with_context(ipath);
    pos = s.files_.size();
    s.files_.push_back(std::make_shared<const SafetensorsFile>(std::move(*f)));
  }
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string shard = it->get<std::string>();
    const size_t pos = shard_index.at(shard);
    if (!s.files_[pos]->has(it.key()))
      return Corrupt(ipath + ": tensor '" + it.key() + "' is mapped to " + shard + ", which does not contain it");
    s.index_.emplace(it.key(), pos);
  }
  return s;
}

Result<TensorStore> TensorStore::from_tensors(std::string source,
                                              std::vector<std::pair<std::string, Tensor>> tensors) {
  auto mem = std::make_shared<std::unordered_map<std::string, MemoryTensor>>();
  mem->reserve(tensors.size());
  for (auto& [name, t] : tensors) {
    if (name.empty()) return InvalidArgument(source + ": tensor with an empty name");
    if (!t.defined()) return InvalidArgument(source + ": tensor '" + name + "' is undefined");
    MemoryTensor m;
    m.entry.name = name;
    m.entry.dtype = t.dtype();
    m.entry.dtype_str = safetensors_dtype_name(t.dtype());
    m.entry.shape = t.shape().to_vector();
    m.entry.end = t.nbytes();
    t.set_name(name);
    m.tensor = std::move(t);
    if (!mem->emplace(name, std::move(m)).second) return InvalidArgument(source + ": duplicate tensor name '" + name + "'");
  }
  TensorStore s;
  s.source_ = std::move(source);
  s.memory_ = std::move(mem);
  return s;
}

bool TensorStore::has(std::string_view name) const {
  const std::string n(name);
  return index_.count(n) != 0 || (memory_ && memory_->count(n) != 0);
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(size());
  for (const auto& kv : index_) out.push_back(kv.first);
  if (memory_)
    for (const auto& kv : *memory_) out.push_back(kv.first);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsEntry* TensorStore::entry(std::string_view name) const {
  const std::string n(name);
  auto it = index_.find(n);
  if (it != index_.end()) return files_[it->second]->entry(name);
  if (memory_) {
    auto m = memory_->find(n);
    if (m != memory_->end()) return &m->second.entry;
  }
  return nullptr;
}

Result<Tensor> TensorStore::get(std::string_view name) const {
  const std::string n(name);
  auto it = index_.find(n);
  if (it != index_.end()) return files_[it->second]->get(name);
  if (memory_) {
    auto m = memory_->find(n);
    if (m != memory_->end()) return m->second.tensor;  // shares the storage (read it, do not modify it)
  }
  return NotFound(source_ + ": no tensor '" + n + "'");
}

Result<Tensor> TensorStore::get(std::string_view name, const Shape& expected,
                                const std::vector<DType>& allowed) const {
  const SafetensorsEntry* e = entry(name);
  if (!e) return NotFound(source_ + ": no tensor '" + std::string(name) + "'");
  // Compare against the header first: a shape of more than 4 dims cannot even become a Tensor.
  if (e->shape != expected.to_vector())
    return ShapeMismatch(source_ + ": tensor '" + e->name + "' has shape " + shape_str(e->shape) +
                         " but the config implies " + expected.to_string());
  if (!allowed.empty()) {
    const bool ok = e->dtype && std::find(allowed.begin(), allowed.end(), *e->dtype) != allowed.end();
    if (!ok) {
      std::string list;
      for (size_t i = 0; i < allowed.size(); ++i) list += (i ? ", " : "") + std::string(dtype_name(allowed[i]));
      const std::string have = e->dtype ? dtype_name(*e->dtype) : e->dtype_str;
      return ShapeMismatch(source_ + ": tensor '" + e->name + "' has dtype " + have + " but only " + list +
                           (allowed.size() == 1 ? " is" : " are") + " accepted");
    }
  }
  return get(name);
}

// ---- writer ----

Status write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  // Validate names and tensors before touching the file system.
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    if (name.empty()) return InvalidArgument(path + ": tensor #" + std::to_string(i) + " has an empty name");
    if (name == "__metadata__") return InvalidArgument(path + ": '__metadata__' cannot be a tensor name");
    if (!seen.emplace(name, i).second) return InvalidArgument(path + ": duplicate tensor name '" + name + "'");
    if (!t.defined()) return InvalidArgument(path + ": tensor '" + name + "' is undefined");
  }

  // Layout: decreasing element size keeps every tensor aligned to its element size without gaps.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });

  std::string header;
  try {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata) m[k] = v;
      h["__metadata__"] = std::move(m);
    }
    uint64_t offset = 0;
    for (size_t i : order) {
      const auto& [name, t] = tensors[i];
      nlohmann::ordered_json e = nlohmann::ordered_json::object();
      e["dtype"] = safetensors_dtype_name(t.dtype());
      e["shape"] = t.shape().to_vector();
      e["data_offsets"] = {offset, offset + t.nbytes()};
      h[name] = std::move(e);
      offset += t.nbytes();
    }
    header = h.dump();
  } catch (const std::exception& e) {  // e.g. a name that is not valid UTF-8
    return InvalidArgument(path + ": cannot encode header: " + e.what());
  }
  while ((8 + header.size()) % 8 != 0) header += ' ';

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return IoError(tmp + ": cannot create: " + std::strerror(errno));
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (size_t i : order) {
    if (!ok) break;
    const Tensor& t = tensors[i].second;
    if (t.nbytes()) ok = std::fwrite(t.data(), 1, t.nbytes(), f) == t.nbytes();
  }
  const int write_err = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return IoError(tmp + ": write failed: " + std::strerror(write_err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return IoError(path + ": cannot rename " + tmp + ": " + std::strerror(err));
  }
  return Status::Ok();
}

}  // namespace ev
