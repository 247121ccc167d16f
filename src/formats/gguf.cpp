#include "formats/gguf.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "core/dtype.h"
#include "formats/mapped_file.h"

namespace ev {

namespace {

// Block layouts of every ggml type (ggml.c type_traits; ggml-common.h block structs). Ids 4, 5 (Q4_2 / Q4_3) and
// 31-33, 36-38 (the removed Q4_0_4_4 ... IQ4_NL_8_8 repacks) are gone from ggml and treated as unknown.
const GgmlTypeInfo kGgmlTypes[] = {
    {0, "F32", 1, 4},          {1, "F16", 1, 2},          {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},       {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},     {11, "Q3_K", 256, 110},    {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},    {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},    {23, "IQ4_XS", 256, 136},  {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},         {27, "I64", 1, 8},         {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},    {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};

// Bytes of one scalar value of a metadata type (0 for string / array).
size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    default: return 0;
  }
}

constexpr uint32_t kMaxValueType = 12;
constexpr uint32_t kMaxDimsGguf = 4;  // GGML_MAX_DIMS

// Bounds-checked little-endian reader over the file image. Every read reports truncation with the field name.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  size_t pos() const { return pos_; }
  size_t left() const { return n_ - pos_; }

  Status need(size_t k, const std::string& what) const {
    if (k > left())
      return Corrupt(path_ + ": truncated at byte " + std::to_string(pos_) + ": " + what + " needs " +
                     std::to_string(k) + " bytes, " + std::to_string(left()) + " left");
    return Status::Ok();
  }
  template <typename T>
  Result<T> read(const std::string& what) {
    EV_RETURN_IF_ERROR(need(sizeof(T), what));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // x86-64 / AArch64 are little-endian, as the format
    pos_ += sizeof(T);
    return v;
  }
  Result<std::string> read_string(const std::string& what) {
    EV_ASSIGN_OR_RETURN(uint64_t len, read<uint64_t>(what + " length"));
    if (len > left())
      return Corrupt(path_ + ": " + what + " has length " + std::to_string(len) + " but only " +
                     std::to_string(left()) + " bytes are left in the file");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

// `what` names the value in messages ("key 'k'"); the cursor and the errors here prefix the file path.
Status read_scalar(Cursor& c, const std::string& path, GgufType t, GgufValue* v, const std::string& what) {
  v->type = t;
  switch (t) {
    case GgufType::kU8: { EV_ASSIGN_OR_RETURN(uint8_t x, c.read<uint8_t>(what)); v->u = x; v->i = x; break; }
    case GgufType::kI8: { EV_ASSIGN_OR_RETURN(int8_t x, c.read<int8_t>(what)); v->i = x; break; }
    case GgufType::kU16: { EV_ASSIGN_OR_RETURN(uint16_t x, c.read<uint16_t>(what)); v->u = x; v->i = x; break; }
    case GgufType::kI16: { EV_ASSIGN_OR_RETURN(int16_t x, c.read<int16_t>(what)); v->i = x; break; }
    case GgufType::kU32: { EV_ASSIGN_OR_RETURN(uint32_t x, c.read<uint32_t>(what)); v->u = x; v->i = x; break; }
    case GgufType::kI32: { EV_ASSIGN_OR_RETURN(int32_t x, c.read<int32_t>(what)); v->i = x; break; }
    case GgufType::kU64: {
      EV_ASSIGN_OR_RETURN(uint64_t x, c.read<uint64_t>(what));
      v->u = x;
      v->i = x <= static_cast<uint64_t>(INT64_MAX) ? static_cast<int64_t>(x) : 0;
      break;
    }
    case GgufType::kI64: { EV_ASSIGN_OR_RETURN(int64_t x, c.read<int64_t>(what)); v->i = x; break; }
    case GgufType::kF32: { EV_ASSIGN_OR_RETURN(float x, c.read<float>(what)); v->f = x; break; }
    case GgufType::kF64: { EV_ASSIGN_OR_RETURN(double x, c.read<double>(what)); v->f = x; break; }
    case GgufType::kBool: {
      EV_ASSIGN_OR_RETURN(uint8_t x, c.read<uint8_t>(what));
      if (x > 1) return Corrupt(path + ": " + what + ": bool value " + std::to_string(x) + " is neither 0 nor 1");
      v->b = x != 0;
      v->i = x;
      break;
    }
    case GgufType::kString: { EV_ASSIGN_OR_RETURN(v->s, c.read_string(what)); break; }
    default: return Corrupt(path + ": " + what + ": not a scalar type");
  }
  return Status::Ok();
}

Status read_value(Cursor& c, const std::string& path, const std::string& key, GgufValue* v) {
  const std::string wk = "key '" + key + "'";  // for cursor reads, which prefix the path themselves
  const std::string where = path + ": " + wk;
  EV_ASSIGN_OR_RETURN(uint32_t type, c.read<uint32_t>(wk + " value type"));
  if (type > kMaxValueType)
    return Corrupt(where + ": unknown value type " + std::to_string(type) + " (0..12 are defined)");
  const GgufType t = static_cast<GgufType>(type);
  if (t != GgufType::kArray) return read_scalar(c, path, t, v, wk);

  v->type = GgufType::kArray;
  EV_ASSIGN_OR_RETURN(uint32_t et, c.read<uint32_t>(wk + " array element type"));
  if (et > kMaxValueType)
    return Corrupt(where + ": unknown array element type " + std::to_string(et) + " (0..12 are defined)");
  if (static_cast<GgufType>(et) == GgufType::kArray)
    return Unsupported(where + ": nested arrays are not supported");
  v->elem_type = static_cast<GgufType>(et);
  EV_ASSIGN_OR_RETURN(uint64_t n, c.read<uint64_t>(wk + " array count"));
  // Each element takes at least this many bytes of the file: refuse an absurd count before allocating.
  const size_t min_elem = v->elem_type == GgufType::kString ? 8 : scalar_size(v->elem_type);
  if (n > c.left() / min_elem)
    return Corrupt(where + ": array of " + std::to_string(n) + " " + gguf_type_name(v->elem_type) +
                   " elements needs at least " + std::to_string(min_elem) + " bytes each, but only " +
                   std::to_string(c.left()) + " bytes are left in the file");
  const size_t count = static_cast<size_t>(n);
  GgufValue e;
  if (v->elem_type == GgufType::kString) {
    v->strings.reserve(count);
    for (size_t k = 0; k < count; ++k) {
      EV_ASSIGN_OR_RETURN(std::string s, c.read_string(wk + "[" + std::to_string(k) + "]"));
      v->strings.push_back(std::move(s));
    }
  } else if (v->elem_type == GgufType::kF32 || v->elem_type == GgufType::kF64) {
    v->floats.reserve(count);
    for (size_t k = 0; k < count; ++k) {
      EV_RETURN_IF_ERROR(read_scalar(c, path, v->elem_type, &e, wk + "[" + std::to_string(k) + "]"));
      v->floats.push_back(e.f);
    }
  } else {
    v->ints.reserve(count);
    for (size_t k = 0; k < count; ++k) {
      EV_RETURN_IF_ERROR(read_scalar(c, path, v->elem_type, &e, wk + "[" + std::to_string(k) + "]"));
      v->ints.push_back(v->elem_type == GgufType::kU64 ? static_cast<int64_t>(e.u) : e.i);
    }
  }
  return Status::Ok();
}

std::string ne_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* const kNames[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i <= kMaxValueType ? kNames[i] : "?";
}

const GgmlTypeInfo* ggml_type_info(uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

void quantize_q8_0(const float* x, uint8_t* blocks, int64_t n) {
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const float* xb = x + b * kQ8_0Block;
    uint8_t* out = blocks + b * static_cast<int64_t>(kQ8_0BlockBytes);
    float amax = 0.f;
    for (int k = 0; k < kQ8_0Block; ++k) amax = std::max(amax, std::fabs(xb[k]));
    const float d = amax / 127.f;
    const float id = d == 0.f ? 0.f : 1.f / d;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(out, &dh, 2);
    for (int k = 0; k < kQ8_0Block; ++k) {
      const float q = std::round(xb[k] * id);  // std::round: halves away from zero, as gguf-py's np_roundf
      out[2 + k] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  }
}

void dequantize_q8_0(const uint8_t* blocks, float* out, int64_t n) {
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const uint8_t* in = blocks + b * static_cast<int64_t>(kQ8_0BlockBytes);
    uint16_t dh;
    std::memcpy(&dh, in, 2);
    const float d = f16_to_f32(dh);
    for (int k = 0; k < kQ8_0Block; ++k) out[b * kQ8_0Block + k] = d * static_cast<float>(static_cast<int8_t>(in[2 + k]));
  }
}

// ---- GgufValue ----

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64: return true;
    default: return false;
  }
}

size_t GgufValue::array_size() const {
  if (type != GgufType::kArray) return 0;
  if (elem_type == GgufType::kString) return strings.size();
  if (elem_type == GgufType::kF32 || elem_type == GgufType::kF64) return floats.size();
  return ints.size();
}

GgufValue GgufValue::u32(uint32_t v) { GgufValue x; x.type = GgufType::kU32; x.u = v; x.i = v; return x; }
GgufValue GgufValue::i32(int32_t v) { GgufValue x; x.type = GgufType::kI32; x.i = v; return x; }
GgufValue GgufValue::u64(uint64_t v) {
  GgufValue x;
  x.type = GgufType::kU64;
  x.u = v;
  x.i = static_cast<int64_t>(v);
  return x;
}
GgufValue GgufValue::f32(float v) { GgufValue x; x.type = GgufType::kF32; x.f = v; return x; }
GgufValue GgufValue::boolean(bool v) { GgufValue x; x.type = GgufType::kBool; x.b = v; x.i = v; return x; }
GgufValue GgufValue::str(std::string v) { GgufValue x; x.type = GgufType::kString; x.s = std::move(v); return x; }
GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem_type = GgufType::kString;
  x.strings = std::move(v);
  return x;
}
GgufValue GgufValue::i32_array(const std::vector<int32_t>& v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem_type = GgufType::kI32;
  x.ints.assign(v.begin(), v.end());
  return x;
}
GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem_type = GgufType::kF32;
  x.floats.assign(v.begin(), v.end());
  return x;
}

// ---- GgufTensorInfo ----

std::vector<int64_t> GgufTensorInfo::shape() const { return std::vector<int64_t>(ne.rbegin(), ne.rend()); }

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // checked at parse time
  return n;
}

// ---- GgufFile ----

Result<GgufFile> GgufFile::parse(std::shared_ptr<void> owner, const uint8_t* base, size_t size,
                                 const std::string& path) {
  Cursor c(base, size, path);
  if (size < 4) return Corrupt(path + ": file is " + std::to_string(size) + " bytes, too short for the GGUF magic");
  if (std::memcmp(base, "GGUF", 4) != 0) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "%02x %02x %02x %02x", base[0], base[1], base[2], base[3]);
    return Corrupt(path + ": not a GGUF file (magic bytes " + hex + ", expected 47 47 55 46 \"GGUF\")");
  }
  (void)c.read<uint32_t>("magic");
  GgufFile f;
  f.path_ = path;
  f.owner_ = std::move(owner);
  EV_ASSIGN_OR_RETURN(f.version_, c.read<uint32_t>("version"));
  if (f.version_ == 1) return Unsupported(path + ": GGUF version 1 (32-bit counts) is not supported; re-convert the model");
  if ((f.version_ & 0xffffu) == 0 && (f.version_ >> 16) != 0)
    return Unsupported(path + ": big-endian GGUF (version field " + std::to_string(f.version_) + ") is not supported");
  if (f.version_ != 2 && f.version_ != 3)
    return Unsupported(path + ": GGUF version " + std::to_string(f.version_) + " is not supported (2 and 3 are)");
  EV_ASSIGN_OR_RETURN(uint64_t n_tensors, c.read<uint64_t>("tensor_count"));
  EV_ASSIGN_OR_RETURN(uint64_t n_kv, c.read<uint64_t>("metadata_kv_count"));
  // Minimum sizes: a key-value is a key length (8) + a value type (4) + a 1-byte value; a tensor info is a name
  // length (8) + n_dims (4) + type (4) + offset (8).
  if (n_kv > c.left() / 13)
    return Corrupt(path + ": metadata_kv_count " + std::to_string(n_kv) + " is absurd for " +
                   std::to_string(c.left()) + " remaining bytes");
  if (n_tensors > c.left() / 24)
    return Corrupt(path + ": tensor_count " + std::to_string(n_tensors) + " is absurd for " +
                   std::to_string(c.left()) + " remaining bytes");

  for (uint64_t k = 0; k < n_kv; ++k) {
    EV_ASSIGN_OR_RETURN(std::string key, c.read_string("metadata key #" + std::to_string(k)));
    if (key.empty()) return Corrupt(path + ": metadata key #" + std::to_string(k) + " is empty");
    if (f.kv_index_.count(key)) return Corrupt(path + ": duplicate metadata key '" + key + "'");
    GgufValue v;
    EV_RETURN_IF_ERROR(read_value(c, path, key, &v));
    f.kv_index_.emplace(key, f.kv_.size());
    f.kv_.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = f.find("general.alignment")) {
    if (a->type != GgufType::kU32)
      return Corrupt(path + ": key 'general.alignment' has type " + gguf_type_name(a->type) + ", expected u32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      return Corrupt(path + ": general.alignment " + std::to_string(a->u) + " is not a power of two");
    f.alignment_ = static_cast<uint32_t>(a->u);
  }

  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    EV_ASSIGN_OR_RETURN(t.name, c.read_string("name of tensor #" + std::to_string(k)));
    const std::string wt = "tensor '" + t.name + "'";  // for cursor reads
    const std::string where = path + ": " + wt;
    if (t.name.empty()) return Corrupt(path + ": tensor #" + std::to_string(k) + " has an empty name");
    if (f.tensor_index_.count(t.name)) return Corrupt(path + ": duplicate tensor name '" + t.name + "'");
    EV_ASSIGN_OR_RETURN(uint32_t nd, c.read<uint32_t>(wt + " n_dims"));
    if (nd > kMaxDimsGguf)
      return Corrupt(where + ": n_dims " + std::to_string(nd) + " exceeds " + std::to_string(kMaxDimsGguf));
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      EV_ASSIGN_OR_RETURN(uint64_t ne, c.read<uint64_t>(wt + " ne[" + std::to_string(d) + "]"));
      if (ne > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, ne, &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX))
        return Corrupt(where + ": dimension ne[" + std::to_string(d) + "] = " + std::to_string(ne) + " overflows");
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    EV_ASSIGN_OR_RETURN(t.type_id, c.read<uint32_t>(wt + " type"));
    t.type = ggml_type_info(t.type_id);
    if (!t.type) return Unsupported(where + ": unknown ggml type id " + std::to_string(t.type_id));
    EV_ASSIGN_OR_RETURN(t.offset, c.read<uint64_t>(wt + " offset"));
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    if (ne0 % t.type->block != 0)
      return Corrupt(where + ": ne[0] = " + std::to_string(ne0) + " is not a multiple of the " + t.type->name +
                     " block size " + std::to_string(t.type->block));
    // numel / block * block_bytes cannot overflow past numel * 8 unless huge: check.
    if (__builtin_mul_overflow(numel / static_cast<uint64_t>(t.type->block), t.type->block_bytes, &t.nbytes))
      return Corrupt(where + ": shape " + ne_str(t.ne) + " overflows");
    if (t.offset % f.alignment_ != 0)
      return Corrupt(where + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                     std::to_string(f.alignment_));
    f.tensor_index_.emplace(t.name, f.tensors_.size());
    f.tensors_.push_back(std::move(t));
  }

  // The data region starts at the next multiple of the alignment (a file without tensors may end before that).
  f.data_offset_ = align_up(c.pos(), f.alignment_);
  if (f.data_offset_ > size) {
    if (!f.tensors_.empty())
      return Corrupt(path + ": tensor data would start at byte " + std::to_string(f.data_offset_) +
                     " (after alignment padding) but the file has " + std::to_string(size) + " bytes");
    f.data_offset_ = size;
  }
  f.data_ = base + f.data_offset_;
  f.data_size_ = size - f.data_offset_;
  std::vector<const GgufTensorInfo*> order;
  for (const auto& t : f.tensors_) {
    if (t.offset > f.data_size_ || t.nbytes > f.data_size_ - t.offset)
      return Corrupt(path + ": tensor '" + t.name + "' (" + t.type->name + " " + ne_str(t.ne) + ", " +
                     std::to_string(t.nbytes) + " bytes at offset " + std::to_string(t.offset) +
                     ") extends past the end of the data region of " + std::to_string(f.data_size_) + " bytes");
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const GgufTensorInfo* a, const GgufTensorInfo* b) {
    return a->offset < b->offset;
  });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset)
      return Corrupt(path + ": tensors '" + order[i - 1]->name + "' and '" + order[i]->name + "' overlap");
  return f;
}

Result<GgufFile> GgufFile::open(const std::string& path) {
  EV_ASSIGN_OR_RETURN(MappedBytes m, map_file_readonly(path, 4, "the GGUF magic"));
  return parse(std::move(m.owner), m.data, m.size, path);
}

Result<GgufFile> GgufFile::from_memory(const void* data, size_t size, const std::string& name) {
  EV_ASSIGN_OR_RETURN(MappedBytes m, copy_aligned(data, size, name));
  return parse(std::move(m.owner), m.data, m.size, name);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {
Status type_error(const std::string& path, std::string_view key, const GgufValue& v, const char* expected) {
  std::string have = gguf_type_name(v.type);
  if (v.type == GgufType::kArray) have = std::string("array of ") + gguf_type_name(v.elem_type);
  return Corrupt(path + ": key '" + std::string(key) + "' has type " + have + ", expected " + expected);
}
}  // namespace

Result<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return NotFound(path_ + ": no metadata key '" + std::string(key) + "'");
  if (!v->is_integer()) return type_error(path_, key, *v, "an integer");
  if (v->type == GgufType::kU64 && v->u > static_cast<uint64_t>(INT64_MAX))
    return Corrupt(path_ + ": key '" + std::string(key) + "' value " + std::to_string(v->u) + " is out of range");
  return v->i;
}

Result<int64_t> GgufFile::get_int(std::string_view key, int64_t def) const {
  if (!has(key)) return def;
  return get_int(key);
}

Result<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return NotFound(path_ + ": no metadata key '" + std::string(key) + "'");
  if (v->is_float()) return v->f;
  if (v->is_integer()) return v->type == GgufType::kU64 ? static_cast<double>(v->u) : static_cast<double>(v->i);
  return type_error(path_, key, *v, "a number");
}

Result<double> GgufFile::get_float(std::string_view key, double def) const {
  if (!has(key)) return def;
  return get_float(key);
}

Result<bool> GgufFile::get_bool(std::string_view key, bool def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  if (v->type != GgufType::kBool) return type_error(path_, key, *v, "bool");
  return v->b;
}

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return NotFound(path_ + ": no metadata key '" + std::string(key) + "'");
  if (v->type != GgufType::kString) return type_error(path_, key, *v, "string");
  return v->s;
}

Result<std::string> GgufFile::get_string(std::string_view key, const std::string& def) const {
  if (!has(key)) return def;
  return get_string(key);
}

Result<const std::vector<std::string>*> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return NotFound(path_ + ": no metadata key '" + std::string(key) + "'");
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString)
    return type_error(path_, key, *v, "array of string");
  return &v->strings;
}

Result<const std::vector<int64_t>*> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return NotFound(path_ + ": no metadata key '" + std::string(key) + "'");
  const bool ok = v->type == GgufType::kArray && v->elem_type != GgufType::kString &&
                  v->elem_type != GgufType::kF32 && v->elem_type != GgufType::kF64 && v->elem_type != GgufType::kBool;
  if (!ok) return type_error(path_, key, *v, "array of integers");
  return &v->ints;
}

Result<std::vector<double>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return NotFound(path_ + ": no metadata key '" + std::string(key) + "'");
  if (v->type != GgufType::kArray || v->elem_type == GgufType::kString || v->elem_type == GgufType::kBool)
    return type_error(path_, key, *v, "array of numbers");
  if (v->elem_type == GgufType::kF32 || v->elem_type == GgufType::kF64) return v->floats;
  return std::vector<double>(v->ints.begin(), v->ints.end());
}

const GgufTensorInfo* GgufFile::tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<Tensor> GgufFile::get(std::string_view name) const {
  const GgufTensorInfo* t = tensor(name);
  if (!t) return NotFound(path_ + ": no tensor '" + std::string(name) + "'");
  const Shape shape = Shape::from_vector(t->shape());  // n_dims <= 4, checked at parse time
  const uint8_t* p = raw(*t);
  Tensor out;
  std::optional<DType> plain;
  switch (t->type_id) {
    case static_cast<uint32_t>(GgmlType::kF32): plain = DType::kF32; break;
    case static_cast<uint32_t>(GgmlType::kF16): plain = DType::kF16; break;
    case static_cast<uint32_t>(GgmlType::kBF16): plain = DType::kBF16; break;
    case static_cast<uint32_t>(GgmlType::kQ8_0): break;
    default:
      return Unsupported(path_ + ": tensor '" + t->name + "' has type " + t->type->name +
                         " (only F32, F16, BF16 and Q8_0 are supported)");
  }
  if (plain) {
    if (reinterpret_cast<uintptr_t>(p) % dtype_size(*plain) == 0) {
      // The mapping is read-only; Tensor has no const view (see SafetensorsFile::get).
      out = Tensor::view(*plain, shape, const_cast<uint8_t*>(p), owner_);
    } else {
      out = Tensor::empty(*plain, shape);
      if (out.nbytes()) std::memcpy(out.data(), p, out.nbytes());
    }
  } else {
    out = Tensor::empty(DType::kF32, shape);
    dequantize_q8_0(p, out.data_as<float>(), out.numel());
  }
  out.set_name(t->name);
  return out;
}

// ---- writer ----

namespace {

void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <typename T>
void put(std::string& out, T v) { put_bytes(out, &v, sizeof(T)); }
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

Status put_scalar(std::string& out, GgufType t, const GgufValue& v, const std::string& key) {
  switch (t) {
    case GgufType::kU8: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case GgufType::kI8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case GgufType::kU16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case GgufType::kI16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case GgufType::kU32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case GgufType::kI32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case GgufType::kU64: put<uint64_t>(out, v.u); break;
    case GgufType::kI64: put<int64_t>(out, v.i); break;
    case GgufType::kF32: put<float>(out, static_cast<float>(v.f)); break;
    case GgufType::kF64: put<double>(out, v.f); break;
    case GgufType::kBool: put<uint8_t>(out, v.b ? 1 : 0); break;
    case GgufType::kString: put_string(out, v.s); break;
    default: return InvalidArgument("metadata key '" + key + "': invalid value type");
  }
  return Status::Ok();
}

Status put_value(std::string& out, const std::string& key, const GgufValue& v) {
  put<uint32_t>(out, static_cast<uint32_t>(v.type));
  if (v.type != GgufType::kArray) return put_scalar(out, v.type, v, key);
  if (v.elem_type == GgufType::kArray) return InvalidArgument("metadata key '" + key + "': nested arrays");
  put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
  put<uint64_t>(out, v.array_size());
  GgufValue e;
  if (v.elem_type == GgufType::kString) {
    for (const auto& s : v.strings) put_string(out, s);
  } else if (v.elem_type == GgufType::kF32 || v.elem_type == GgufType::kF64) {
    for (double x : v.floats) {
      e.f = x;
      EV_RETURN_IF_ERROR(put_scalar(out, v.elem_type, e, key));
    }
  } else {
    for (int64_t x : v.ints) {
      e.i = x;
      e.u = static_cast<uint64_t>(x);
      e.b = x != 0;
      EV_RETURN_IF_ERROR(put_scalar(out, v.elem_type, e, key));
    }
  }
  return Status::Ok();
}

// The bytes of one tensor in its GGUF type.
Result<std::string> encode_tensor(const GgufWriteTensor& w) {
  const Tensor& t = w.tensor;
  const std::string where = "tensor '" + w.name + "'";
  const DType src = t.dtype();
  if (src != DType::kF32 && src != DType::kF16 && src != DType::kBF16)
    return InvalidArgument(where + ": source dtype " + std::string(dtype_name(src)) + " cannot be written as GGUF");
  std::string out;
  auto as = [&](DType d) -> Result<Tensor> {
    if (src == d) return t;
    return t.to(d);
  };
  switch (w.type) {
    case GgmlType::kF32: {
      EV_ASSIGN_OR_RETURN(Tensor c, as(DType::kF32));
      put_bytes(out, c.data(), c.nbytes());
      break;
    }
    case GgmlType::kF16: {
      // bf16 -> f32 -> f16, as the converter casts through f32.
      EV_ASSIGN_OR_RETURN(Tensor f, as(DType::kF32));
      EV_ASSIGN_OR_RETURN(Tensor c, f.to(DType::kF16));
      put_bytes(out, c.data(), c.nbytes());
      break;
    }
    case GgmlType::kBF16: {
      EV_ASSIGN_OR_RETURN(Tensor f, as(DType::kF32));
      EV_ASSIGN_OR_RETURN(Tensor c, f.to(DType::kBF16));
      put_bytes(out, c.data(), c.nbytes());
      break;
    }
    case GgmlType::kQ8_0: {
      const int64_t row = t.ndim() == 0 ? 1 : t.dim(t.ndim() - 1);
      if (row % kQ8_0Block != 0)
        return InvalidArgument(where + ": Q8_0 needs the last dimension to be a multiple of 32, it is " +
                               std::to_string(row));
      EV_ASSIGN_OR_RETURN(Tensor f, as(DType::kF32));
      out.resize(static_cast<size_t>(t.numel() / kQ8_0Block * static_cast<int64_t>(kQ8_0BlockBytes)));
      quantize_q8_0(f.data_as<const float>(), reinterpret_cast<uint8_t*>(out.data()), t.numel());
      break;
    }
    default: return InvalidArgument(where + ": GGUF type id " + std::to_string(static_cast<uint32_t>(w.type)) +
                                    " cannot be written (F32, F16, BF16, Q8_0 can)");
  }
  return out;
}

}  // namespace

Status write_gguf(const std::string& path, const std::vector<std::pair<std::string, GgufValue>>& metadata,
                  const std::vector<GgufWriteTensor>& tensors, uint32_t alignment, uint32_t version) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    return InvalidArgument(path + ": alignment " + std::to_string(alignment) + " is not a power of two");
  if (version != 2 && version != 3) return InvalidArgument(path + ": GGUF version must be 2 or 3");
  std::set<std::string> keys;
  for (const auto& [k, v] : metadata) {
    if (k.empty()) return InvalidArgument(path + ": empty metadata key");
    if (!keys.insert(k).second) return InvalidArgument(path + ": duplicate metadata key '" + k + "'");
    if (k == "general.alignment") return InvalidArgument(path + ": general.alignment is set by the alignment argument");
  }
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name.empty()) return InvalidArgument(path + ": tensor with an empty name");
    if (!names.insert(t.name).second) return InvalidArgument(path + ": duplicate tensor name '" + t.name + "'");
    if (!t.tensor.defined()) return InvalidArgument(path + ": tensor '" + t.name + "' is undefined");
  }

  std::vector<std::string> data;
  data.reserve(tensors.size());
  for (const auto& t : tensors) {
    auto bytes = encode_tensor(t);
    if (!bytes.ok()) return bytes.status().with_context(path);
    data.push_back(std::move(bytes).value());
  }

  std::string head;
  head += "GGUF";
  put<uint32_t>(head, version);
  put<uint64_t>(head, tensors.size());
  put<uint64_t>(head, metadata.size() + (alignment != 32 ? 1 : 0));
  for (const auto& [k, v] : metadata) {
    put_string(head, k);
    EV_RETURN_IF_ERROR(put_value(head, k, v).with_context(path));
  }
  if (alignment != 32) {  // after the caller's keys, so that general.architecture can stay first
    put_string(head, "general.alignment");
    EV_RETURN_IF_ERROR(put_value(head, "general.alignment", GgufValue::u32(alignment)));
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].tensor;
    put_string(head, tensors[i].name);
    put<uint32_t>(head, static_cast<uint32_t>(t.ndim()));
    for (int d = t.ndim() - 1; d >= 0; --d) put<uint64_t>(head, static_cast<uint64_t>(t.dim(d)));
    put<uint32_t>(head, static_cast<uint32_t>(tensors[i].type));
    put<uint64_t>(head, offset);
    offset = align_up(offset + data[i].size(), alignment);
  }
  head.resize(static_cast<size_t>(align_up(head.size(), alignment)), '\0');

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return IoError(tmp + ": cannot create: " + std::strerror(errno));
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
  static const char kZeros[64] = {};
  for (size_t i = 0; ok && i < data.size(); ++i) {
    ok = data[i].empty() || std::fwrite(data[i].data(), 1, data[i].size(), f) == data[i].size();
    size_t pad = static_cast<size_t>(align_up(data[i].size(), alignment) - data[i].size());
    while (ok && pad > 0) {
      const size_t n = std::min(pad, sizeof(kZeros));
      ok = std::fwrite(kZeros, 1, n, f) == n;
      pad -= n;
    }
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
