// Tests of GGUF support: the reader / writer (src/formats/gguf.*), the SmolVLM import of a text + mmproj pair
// (src/formats/gguf_import.*), the converter (src/tools/convert.*), and the parity of the imported model with
// the Hugging Face layout it was converted from (tests/fixtures/tiny-smolvlm), which is itself golden-tested
// against transformers (tests/golden/test_golden.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "formats/gguf_import.h"
#include "formats/safetensors.h"
#include "perception/vlm_preprocess.h"
#include "runtime/engine.h"
#include "tools/convert.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ev {
namespace {

const std::string kTiny = std::string(EDGEVLM_FIXTURE_DIR) + "/tiny-smolvlm";

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("edgevlm_test_gguf_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
}

template <typename T>
Status status_of(const Result<T>& r) { return r.status(); }
Status status_of(const Status& s) { return s; }

#define EXPECT_STATUS(expr, want_code, want_substr)                                           \
  do {                                                                                        \
    const auto& ev_r_ = (expr);                                                               \
    const ::ev::Status ev_st_ = status_of(ev_r_);                                             \
    const std::string ev_sub_ = (want_substr);                                                \
    ASSERT_FALSE(ev_st_.ok()) << "expected failure containing: " << ev_sub_;                  \
    EXPECT_EQ(ev_st_.code(), (want_code)) << ev_st_.to_string();                              \
    EXPECT_NE(ev_st_.message().find(ev_sub_), std::string::npos)                              \
        << "message: " << ev_st_.message() << "\nexpected to contain: " << ev_sub_;           \
  } while (0)

// Little-endian byte builder for hand-made (and deliberately broken) files.
struct Bytes {
  std::string s;
  Bytes& raw(const std::string& x) { s += x; return *this; }
  template <typename T>
  Bytes& put(T v) { s.append(reinterpret_cast<const char*>(&v), sizeof(T)); return *this; }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& x) { u64(x.size()); s += x; return *this; }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    raw("GGUF");
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Bytes& kv_u32(const std::string& k, uint32_t v) { str(k); u32(4); return u32(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name);
    u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    u32(type);
    return u64(offset);
  }
  Bytes& pad(size_t align = 32) {
    while (s.size() % align) s += '\0';
    return *this;
  }
};

Result<GgufFile> parse(const Bytes& b) { return GgufFile::from_memory(b.s.data(), b.s.size(), "t.gguf"); }

Tensor iota_f32(Shape s, float scale = 0.37f, float offset = -3.f) {
  Tensor t = Tensor::empty(DType::kF32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = offset + scale * static_cast<float>((i * 7919) % 97);
  return t;
}

// The reference Q8_0 of one block, written independently of gguf.cpp from gguf-py's description.
std::vector<float> ref_q8_0(const float* x) {
  float amax = 0;
  for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[k]));
  const float d = amax / 127.f;
  const float id = d == 0 ? 0.f : 1.f / d;
  const float dh = f16_to_f32(f32_to_f16(d));
  std::vector<float> out(32);
  for (int k = 0; k < 32; ++k) {
    const float v = x[k] * id;
    const float q = v < 0 ? -std::floor(-v + 0.5f) : std::floor(v + 0.5f);  // np_roundf
    out[static_cast<size_t>(k)] = dh * q;
  }
  return out;
}

// ---------------------------------------------------------------- reader / writer

TEST(Gguf, RoundTripAllTypesAndMetadata) {
  TempDir tmp;
  GgufValue u8; u8.type = GgufType::kU8; u8.u = 200; u8.i = 200;
  GgufValue i8; i8.type = GgufType::kI8; i8.i = -100;
  GgufValue u16; u16.type = GgufType::kU16; u16.u = 60000; u16.i = 60000;
  GgufValue i16; i16.type = GgufType::kI16; i16.i = -30000;
  GgufValue i64; i64.type = GgufType::kI64; i64.i = -(int64_t{1} << 40);
  GgufValue f64; f64.type = GgufType::kF64; f64.f = 1e-300;
  GgufValue u64a; u64a.type = GgufType::kArray; u64a.elem_type = GgufType::kU64; u64a.ints = {1, 2, int64_t{1} << 50};
  const std::vector<std::pair<std::string, GgufValue>> md = {
      {"general.architecture", GgufValue::str("test")}, {"a.u8", u8}, {"a.i8", i8}, {"a.u16", u16},
      {"a.i16", i16}, {"a.u32", GgufValue::u32(4000000000u)}, {"a.i32", GgufValue::i32(-7)},
      {"a.u64", GgufValue::u64(uint64_t{1} << 63)}, {"a.i64", i64}, {"a.f32", GgufValue::f32(0.1f)}, {"a.f64", f64},
      {"a.bool", GgufValue::boolean(true)}, {"a.str", GgufValue::str(std::string("x\0y", 3))},
      {"a.strs", GgufValue::string_array({"", "b c", "\xe2\x96\x81"})}, {"a.i32s", GgufValue::i32_array({-1, 0, 5})},
      {"a.f32s", GgufValue::f32_array({0.5f, -2.f})}, {"a.u64s", u64a}, {"a.empty", GgufValue::string_array({})}};
  Tensor a = iota_f32(Shape{3, 5});
  Tensor b = iota_f32(Shape{2, 4}, 0.01f, 0.f);
  Tensor c = iota_f32(Shape{7}, 1.5f, 1.f);
  Tensor q = iota_f32(Shape{2, 64}, 0.123f, -5.f);
  for (int k = 0; k < 32; ++k) q.data_as<float>()[64 + k] = 0.f;  // one all-zero block
  Tensor bf = *a.to(DType::kBF16);
  const std::vector<GgufWriteTensor> ts = {{"a", a, GgmlType::kF32}, {"b16", b, GgmlType::kF16},
                                           {"c_bf16", c, GgmlType::kBF16}, {"q", q, GgmlType::kQ8_0},
                                           {"bf_as_f16", bf, GgmlType::kF16}};
  for (uint32_t version : {2u, 3u})
    for (uint32_t align : {32u, 64u, 8u}) {
      const std::string path = tmp.file("rt.gguf");
      ASSERT_TRUE(write_gguf(path, md, ts, align, version).ok());
      auto f = GgufFile::open(path);
      ASSERT_TRUE(f.ok()) << f.status().to_string();
      EXPECT_EQ(f->version(), version);
      EXPECT_EQ(f->alignment(), align);
      EXPECT_EQ(f->data_offset() % align, 0u);
      EXPECT_EQ(*f->get_int("a.u8"), 200);
      EXPECT_EQ(*f->get_int("a.i8"), -100);
      EXPECT_EQ(*f->get_int("a.u16"), 60000);
      EXPECT_EQ(*f->get_int("a.i16"), -30000);
      EXPECT_EQ(*f->get_int("a.u32"), 4000000000ll);
      EXPECT_EQ(*f->get_int("a.i32"), -7);
      EXPECT_EQ(f->find("a.u64")->u, uint64_t{1} << 63);
      EXPECT_STATUS(f->get_int("a.u64"), StatusCode::kCorrupt, "out of range");
      EXPECT_EQ(*f->get_int("a.i64"), -(int64_t{1} << 40));
      EXPECT_EQ(*f->get_float("a.f32"), static_cast<double>(0.1f));
      EXPECT_EQ(*f->get_float("a.f64"), 1e-300);
      EXPECT_TRUE(*f->get_bool("a.bool", false));
      EXPECT_EQ(*f->get_string("a.str"), std::string("x\0y", 3));
      EXPECT_EQ(**f->get_string_array("a.strs"), (std::vector<std::string>{"", "b c", "\xe2\x96\x81"}));
      EXPECT_EQ(**f->get_int_array("a.i32s"), (std::vector<int64_t>{-1, 0, 5}));
      EXPECT_EQ(*f->get_float_array("a.f32s"), (std::vector<double>{0.5, -2.0}));
      EXPECT_EQ(**f->get_int_array("a.u64s"), (std::vector<int64_t>{1, 2, int64_t{1} << 50}));
      EXPECT_TRUE((*f->get_string_array("a.empty"))->empty());
      EXPECT_EQ(f->metadata().front().first, "general.architecture");
      // Type errors and defaults.
      EXPECT_STATUS(f->get_int("a.str"), StatusCode::kCorrupt, "key 'a.str' has type string, expected an integer");
      EXPECT_STATUS(f->get_string("a.i32s"), StatusCode::kCorrupt, "has type array of i32, expected string");
      EXPECT_STATUS(f->get_string("nope"), StatusCode::kNotFound, "no metadata key 'nope'");
      EXPECT_EQ(*f->get_int("nope", 42), 42);

      ASSERT_EQ(f->tensors().size(), 5u);
      auto ta = f->get("a");
      ASSERT_TRUE(ta.ok());
      EXPECT_EQ(ta->dtype(), DType::kF32);
      EXPECT_EQ(ta->shape(), (Shape{3, 5}));
      EXPECT_EQ(f->tensor("a")->ne, (std::vector<int64_t>{5, 3}));  // GGUF order
      EXPECT_EQ(std::memcmp(ta->data(), a.data(), a.nbytes()), 0);
      EXPECT_EQ(ta->name(), "a");
      auto tb = f->get("b16");
      ASSERT_TRUE(tb.ok());
      EXPECT_EQ(tb->dtype(), DType::kF16);
      for (int64_t i = 0; i < b.numel(); ++i)
        EXPECT_EQ(tb->data_as<uint16_t>()[i], f32_to_f16(b.data_as<float>()[i]));
      auto tc = f->get("c_bf16");
      ASSERT_TRUE(tc.ok());
      EXPECT_EQ(tc->dtype(), DType::kBF16);
      for (int64_t i = 0; i < c.numel(); ++i) EXPECT_EQ(tc->data_as<uint16_t>()[i], f32_to_bf16(c.data_as<float>()[i]));
      auto tq = f->get("q");
      ASSERT_TRUE(tq.ok());
      EXPECT_EQ(tq->dtype(), DType::kF32);
      EXPECT_EQ(tq->shape(), (Shape{2, 64}));
      EXPECT_EQ(f->tensor("q")->nbytes, 4 * kQ8_0BlockBytes);
      for (int blk = 0; blk < 4; ++blk) {
        const std::vector<float> want = ref_q8_0(q.data_as<float>() + blk * 32);
        for (int k = 0; k < 32; ++k) ASSERT_EQ(tq->data_as<float>()[blk * 32 + k], want[static_cast<size_t>(k)]) << blk << " " << k;
      }
      for (int k = 0; k < 32; ++k) EXPECT_EQ(tq->data_as<float>()[64 + k], 0.f);
      auto tbf = f->get("bf_as_f16");
      ASSERT_TRUE(tbf.ok());
      for (int64_t i = 0; i < a.numel(); ++i)
        EXPECT_EQ(tbf->data_as<uint16_t>()[i], f32_to_f16(bf16_to_f32(bf.data_as<uint16_t>()[i])));
      EXPECT_STATUS(f->get("zz"), StatusCode::kNotFound, "no tensor 'zz'");
    }
}

TEST(Gguf, Q8_0DequantisationIsExactAndWithinHalfAStep) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 3.f);
  const int64_t n = 32 * 50;
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  x[5] = 1e-30f;  // tiny values and an exact max
  std::vector<uint8_t> blocks(static_cast<size_t>(n / 32 * 34));
  quantize_q8_0(x.data(), blocks.data(), n);
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_q8_0(blocks.data(), y.data(), n);
  for (int64_t b = 0; b < n / 32; ++b) {
    uint16_t dh;
    std::memcpy(&dh, &blocks[static_cast<size_t>(b * 34)], 2);
    const double d = f16_to_f32(dh);
    float amax = 0;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[static_cast<size_t>(b * 32 + k)]));
    for (int k = 0; k < 32; ++k) {
      const auto i = static_cast<size_t>(b * 32 + k);
      const int q = static_cast<int8_t>(blocks[static_cast<size_t>(b * 34 + 2 + k)]);
      EXPECT_LE(std::abs(q), 127);
      // Exact: the product of an f16 and a 7-bit integer is representable in f32.
      EXPECT_EQ(static_cast<double>(y[i]), d * q);
      // Within half a quantisation step (plus the f16 rounding of d, at most 2^-11 relative, times 127).
      EXPECT_LE(std::fabs(y[i] - x[i]), 0.5 * d * (1 + 1e-3) + amax * std::ldexp(1.0, -11) + 1e-6 * amax);
    }
  }
}

TEST(Gguf, WriterRefusesBadInput) {
  TempDir tmp;
  Tensor t = iota_f32(Shape{2, 30});
  EXPECT_STATUS(write_gguf(tmp.file("a.gguf"), {}, {{"w", t, GgmlType::kQ8_0}}), StatusCode::kInvalidArgument,
                "multiple of 32");
  EXPECT_STATUS(write_gguf(tmp.file("a.gguf"), {}, {{"w", t, GgmlType::kF32}, {"w", t, GgmlType::kF32}}),
                StatusCode::kInvalidArgument, "duplicate tensor name 'w'");
  EXPECT_STATUS(write_gguf(tmp.file("a.gguf"), {{"k", GgufValue::u32(1)}, {"k", GgufValue::u32(2)}}, {}),
                StatusCode::kInvalidArgument, "duplicate metadata key 'k'");
  EXPECT_STATUS(write_gguf(tmp.file("a.gguf"), {}, {}, 48), StatusCode::kInvalidArgument, "power of two");
  Tensor i = Tensor::empty(DType::kI32, Shape{4});
  EXPECT_STATUS(write_gguf(tmp.file("a.gguf"), {}, {{"i", i, GgmlType::kF32}}), StatusCode::kInvalidArgument,
                "cannot be written as GGUF");
  EXPECT_FALSE(fs::exists(tmp.file("a.gguf")));
  EXPECT_FALSE(fs::exists(tmp.file("a.gguf.tmp")));
}

struct BadCase {
  const char* what;
  std::function<Bytes()> make;
  StatusCode code;
  const char* message;
};

TEST(Gguf, CorruptFilesGiveClearErrors) {
  const std::vector<BadCase> cases = {
      {"short", [] { return Bytes().raw("GG"); }, StatusCode::kCorrupt, "too short for the GGUF magic"},
      {"magic", [] { return Bytes().raw("GGML").u32(3).u64(0).u64(0); }, StatusCode::kCorrupt, "not a GGUF file"},
      {"no version", [] { return Bytes().raw("GGUF"); }, StatusCode::kCorrupt, "truncated at byte 4: version"},
      {"v1", [] { return Bytes().header(0, 0, 1); }, StatusCode::kUnsupported, "version 1"},
      {"v9", [] { return Bytes().header(0, 0, 9); }, StatusCode::kUnsupported, "version 9 is not supported"},
      {"big endian", [] { return Bytes().header(0, 0, 0x03000000u); }, StatusCode::kUnsupported, "big-endian"},
      {"no counts", [] { return Bytes().raw("GGUF").u32(3).u64(0); }, StatusCode::kCorrupt, "metadata_kv_count"},
      {"absurd kv", [] { return Bytes().header(0, uint64_t{1} << 60); }, StatusCode::kCorrupt, "metadata_kv_count 1152921504606846976 is absurd"},
      {"absurd tensors", [] { return Bytes().header(uint64_t{1} << 40, 0); }, StatusCode::kCorrupt, "tensor_count 1099511627776 is absurd"},
      {"key length", [] { return Bytes().header(0, 1).u64(1000).raw("abcdefghijklmnop"); }, StatusCode::kCorrupt,
       "metadata key #0 has length 1000 but only 16 bytes are left"},
      {"empty key", [] { return Bytes().header(0, 1).str("").u32(4).u32(1); }, StatusCode::kCorrupt, "metadata key #0 is empty"},
      {"dup key", [] { return Bytes().header(0, 2).kv_u32("a", 1).kv_u32("a", 2); }, StatusCode::kCorrupt, "duplicate metadata key 'a'"},
      {"value type", [] { return Bytes().header(0, 1).str("k").u32(13).u32(0); }, StatusCode::kCorrupt,
       "key 'k': unknown value type 13"},
      {"truncated value", [] { return Bytes().header(0, 1).str("k").u32(10).u32(0); }, StatusCode::kCorrupt,
       "key 'k' needs 8 bytes, 4 left"},
      {"bool 2", [] { return Bytes().header(0, 1).str("k").u32(7).put<uint8_t>(2).pad(); }, StatusCode::kCorrupt,
       "bool value 2"},
      {"string value length", [] { return Bytes().header(0, 1).str("k").u32(8).u64(99).raw("abc"); }, StatusCode::kCorrupt,
       "key 'k' has length 99"},
      {"array type", [] { return Bytes().header(0, 1).str("k").u32(9).u32(77).u64(0); }, StatusCode::kCorrupt,
       "unknown array element type 77"},
      {"nested array", [] { return Bytes().header(0, 1).str("k").u32(9).u32(9).u64(0); }, StatusCode::kUnsupported,
       "nested arrays"},
      {"array count", [] { return Bytes().header(0, 1).str("k").u32(9).u32(6).u64(uint64_t{1} << 62).u32(0); },
       StatusCode::kCorrupt, "array of 4611686018427387904 f32 elements"},
      {"string array count", [] { return Bytes().header(0, 1).str("k").u32(9).u32(8).u64(3).str("a"); }, StatusCode::kCorrupt,
       "array of 3 string elements"},
      {"string array element", [] { return Bytes().header(0, 1).str("k").u32(9).u32(8).u64(2).str("a").u64(50).u64(0); },
       StatusCode::kCorrupt, "key 'k'[1] has length 50"},
      {"alignment type", [] { return Bytes().header(0, 1).str("general.alignment").u32(5).u32(64); }, StatusCode::kCorrupt,
       "key 'general.alignment' has type i32, expected u32"},
      {"alignment value", [] { return Bytes().header(0, 1).kv_u32("general.alignment", 48); }, StatusCode::kCorrupt,
       "general.alignment 48 is not a power of two"},
      {"alignment zero", [] { return Bytes().header(0, 1).kv_u32("general.alignment", 0); }, StatusCode::kCorrupt,
       "general.alignment 0 is not a power of two"},
      {"tensor name", [] { return Bytes().header(1, 0).u64(500).raw(std::string(30, 'x')); }, StatusCode::kCorrupt,
       "name of tensor #0 has length 500"},
      {"empty tensor name", [] { return Bytes().header(1, 0).tensor("", {4}, 0, 0).pad().raw(std::string(16, 0)); },
       StatusCode::kCorrupt, "tensor #0 has an empty name"},
      {"n_dims", [] { return Bytes().header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad().raw(std::string(32, 0)); },
       StatusCode::kCorrupt, "tensor 't': n_dims 5 exceeds 4"},
      {"dim overflow", [] { return Bytes().header(1, 0).tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).pad(); },
       StatusCode::kCorrupt, "tensor 't': dimension ne[1] = 1099511627776 overflows"},
      {"negative dim", [] { return Bytes().header(1, 0).tensor("t", {~uint64_t{0}}, 0, 0).pad(); }, StatusCode::kCorrupt,
       "ne[0] = 18446744073709551615 overflows"},
      {"truncated dims", [] { return Bytes().header(1, 0).str("t").u32(2).u64(4).raw(std::string(7, 0)); }, StatusCode::kCorrupt,
       "tensor 't' ne[1] needs 8 bytes"},
      {"type id", [] { return Bytes().header(1, 0).tensor("t", {4}, 99, 0).pad().raw(std::string(32, 0)); },
       StatusCode::kUnsupported, "tensor 't': unknown ggml type id 99"},
      {"removed type id", [] { return Bytes().header(1, 0).tensor("t", {32}, 4, 0).pad().raw(std::string(32, 0)); },
       StatusCode::kUnsupported, "unknown ggml type id 4"},
      {"block", [] { return Bytes().header(1, 0).tensor("t", {31, 2}, 8, 0).pad().raw(std::string(96, 0)); },
       StatusCode::kCorrupt, "tensor 't': ne[0] = 31 is not a multiple of the Q8_0 block size 32"},
      {"offset alignment", [] { return Bytes().header(1, 0).tensor("t", {4}, 0, 4).pad().raw(std::string(64, 0)); },
       StatusCode::kCorrupt, "tensor 't': offset 4 is not a multiple of the alignment 32"},
      {"past end", [] { return Bytes().header(1, 0).tensor("t", {16}, 0, 0).pad().raw(std::string(60, 0)); },
       StatusCode::kCorrupt, "tensor 't' (F32 [16], 64 bytes at offset 0) extends past the end of the data region of 60 bytes"},
      {"offset past end", [] { return Bytes().header(1, 0).tensor("t", {1}, 0, uint64_t{1} << 62).pad().raw(std::string(32, 0)); },
       StatusCode::kCorrupt, "extends past the end"},
      {"overlap", [] { return Bytes().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().raw(std::string(96, 0)); },
       StatusCode::kCorrupt, "tensors 'a' and 'b' overlap"},
      {"dup tensor", [] { return Bytes().header(2, 0).tensor("a", {8}, 0, 0).tensor("a", {8}, 0, 32).pad().raw(std::string(64, 0)); },
       StatusCode::kCorrupt, "duplicate tensor name 'a'"},
      {"no data", [] { return Bytes().header(1, 0).tensor("t", {8}, 0, 0); }, StatusCode::kCorrupt,
       "tensor data would start at byte 64"},
      {"truncated offset", [] { return Bytes().header(1, 0).str("t").u32(1).u64(8).u32(0).u32(0); }, StatusCode::kCorrupt,
       "tensor 't' offset needs 8 bytes"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const Bytes b = c.make();
    EXPECT_STATUS(parse(b), c.code, c.message);
    EXPECT_STATUS(parse(b), c.code, "t.gguf: ");
  }
  // A file with no tensors needs no padding; one with only metadata is valid.
  EXPECT_TRUE(parse(Bytes().header(0, 1).kv_u32("x", 1)).ok());
  // Files on disk: absent / empty.
  TempDir tmp;
  EXPECT_STATUS(GgufFile::open(tmp.file("none.gguf")), StatusCode::kNotFound, "no such file");
  write_bytes(tmp.file("empty.gguf"), "");
  EXPECT_STATUS(GgufFile::open(tmp.file("empty.gguf")), StatusCode::kCorrupt, "too short");
}

TEST(Gguf, OtherTypesOpenButGetIsUnsupported) {
  // A Q4_K tensor (256-value blocks of 144 bytes) and an I32 one: layout validated, get() refuses.
  Bytes b;
  b.header(2, 0).tensor("k", {256}, 12, 0).tensor("i", {4}, 26, 160).pad().raw(std::string(144 + 16 + 16, 0));
  auto f = parse(b);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->tensor("k")->nbytes, 144u);
  EXPECT_STATUS(f->get("k"), StatusCode::kUnsupported, "tensor 'k' has type Q4_K (only F32, F16, BF16 and Q8_0");
  EXPECT_STATUS(f->get("i"), StatusCode::kUnsupported, "type I32");
}

// Every prefix of a valid file fails cleanly, and every single-byte corruption either opens (and then all its
// tensors read in bounds) or fails with a message.
TEST(Gguf, TruncationsAndByteFlipsNeverCrash) {
  TempDir tmp;
  const std::string path = tmp.file("v.gguf");
  ASSERT_TRUE(write_gguf(path, {{"general.architecture", GgufValue::str("x")}, {"s", GgufValue::string_array({"ab", "c"})},
                                {"f", GgufValue::f32_array({1.f})}},
                         {{"a", iota_f32(Shape{2, 32}), GgmlType::kQ8_0}, {"b", iota_f32(Shape{3}), GgmlType::kF16}})
                  .ok());
  const std::string full = read_bytes(path);
  auto whole = GgufFile::from_memory(full.data(), full.size(), "p");
  ASSERT_TRUE(whole.ok());
  uint64_t end = 0;  // the last tensor byte; only the alignment padding after it may be cut
  for (const auto& t : whole->tensors()) end = std::max(end, whole->data_offset() + t.offset + t.nbytes);
  for (size_t n = 0; n < full.size(); ++n) {
    auto f = GgufFile::from_memory(full.data(), n, "p");
    if (n >= end) {
      ASSERT_TRUE(f.ok()) << n;
      continue;
    }
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes opened";
    ASSERT_FALSE(f.status().message().empty());
  }
  for (size_t i = 0; i < full.size(); ++i) {
    std::string m = full;
    m[i] = static_cast<char>(m[i] ^ 0x5a);
    auto f = GgufFile::from_memory(m.data(), m.size(), "p");
    if (!f.ok()) {
      ASSERT_FALSE(f.status().message().empty());
      continue;
    }
    for (const auto& t : f->tensors()) {
      ASSERT_LE(t.offset + t.nbytes, f->data_size());
      auto r = f->get(t.name);
      if (r.ok()) ASSERT_EQ(r->numel(), t.numel());
    }
  }
}

// ---------------------------------------------------------------- TensorStore over memory, names, permutation

TEST(Gguf, TensorStoreFromTensors) {
  auto s = TensorStore::from_tensors("mem", {{"x.weight", iota_f32(Shape{4, 2})}, {"y", iota_f32(Shape{3})}});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->size(), 2u);
  EXPECT_TRUE(s->has("x.weight"));
  EXPECT_FALSE(s->has("z"));
  EXPECT_EQ(s->names(), (std::vector<std::string>{"x.weight", "y"}));
  EXPECT_EQ(s->entry("x.weight")->shape, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(s->entry("x.weight")->dtype_str, "F32");
  EXPECT_TRUE(s->files().empty());
  auto g = s->get("x.weight", Shape{4, 2}, {DType::kF32});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->name(), "x.weight");
  EXPECT_STATUS(s->get("x.weight", Shape{2, 4}, {}), StatusCode::kShapeMismatch, "mem: tensor 'x.weight' has shape [4, 2]");
  EXPECT_STATUS(s->get("x.weight", Shape{4, 2}, {DType::kBF16}), StatusCode::kShapeMismatch, "has dtype f32");
  EXPECT_STATUS(s->get("z"), StatusCode::kNotFound, "mem: no tensor 'z'");
  EXPECT_STATUS(TensorStore::from_tensors("m", {{"a", iota_f32(Shape{1})}, {"a", iota_f32(Shape{1})}}),
                StatusCode::kInvalidArgument, "duplicate tensor name 'a'");
}

TEST(Gguf, NameTablesAreInverse) {
  auto store = TensorStore::open_dir(kTiny);
  ASSERT_TRUE(store.ok());
  for (const auto& hf : store->names()) {
    bool mm = false;
    const std::string g = hf_to_gguf_name(hf, &mm);
    ASSERT_FALSE(g.empty()) << hf;
    EXPECT_EQ(gguf_to_hf_name(g, mm), hf);
    EXPECT_EQ(mm, hf.find("vision_model") != std::string::npos || hf.find("connector") != std::string::npos) << hf;
  }
  bool mm = false;
  EXPECT_EQ(hf_to_gguf_name("model.text_model.layers.3.self_attn.q_proj.weight", &mm), "blk.3.attn_q.weight");
  EXPECT_EQ(hf_to_gguf_name("model.vision_model.encoder.layers.11.mlp.fc1.bias", &mm), "v.blk.11.ffn_up.bias");
  EXPECT_EQ(hf_to_gguf_name("model.connector.modality_projection.proj.weight", &mm), "mm.model.fc.weight");
  EXPECT_EQ(hf_to_gguf_name("lm_head.weight", &mm), "output.weight");
  EXPECT_EQ(hf_to_gguf_name("model.text_model.layers.0.self_attn.rotary_emb.inv_freq", &mm), "");
  EXPECT_EQ(gguf_to_hf_name("blk.0.attn_q_norm.weight", false), "");
  EXPECT_EQ(gguf_to_hf_name("v.blk.1.ln2.weight", true), "model.vision_model.encoder.layers.1.layer_norm2.weight");
}

TEST(Gguf, QkPermutationMatchesLlamaConvert) {
  // LlamaModel.permute with n_head 2, head_dim 4 on rows 0..7: per head [0, 2, 1, 3].
  Tensor t = Tensor::empty(DType::kF32, Shape{8, 1});
  for (int i = 0; i < 8; ++i) t.data_as<float>()[i] = static_cast<float>(i);
  auto g = permute_qk_rows(t, 2, true);
  ASSERT_TRUE(g.ok());
  const float want[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(g->data_as<float>()[i], want[i]);
  // head_dim 6: [0, 3, 1, 4, 2, 5]; inverse restores.
  Tensor u = iota_f32(Shape{12, 3});
  auto p = permute_qk_rows(u, 2, true);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->data_as<float>()[1 * 3], u.data_as<float>()[3 * 3]);
  auto back = permute_qk_rows(*p, 2, false);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(std::memcmp(back->data(), u.data(), u.nbytes()), 0);
  EXPECT_STATUS(permute_qk_rows(iota_f32(Shape{6, 2}), 2, true), StatusCode::kShapeMismatch, "heads of an even size");
}

// ---------------------------------------------------------------- the tiny SmolVLM as a GGUF pair

struct Converted {
  std::string dir, text, mmproj;
};
Converted convert_tiny(const TempDir& tmp, const std::string& type) {
  const std::string dir = tmp.file(type);
  auto r = convert_hf_to_gguf(kTiny, dir, type);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  if (!r.ok()) return {};
  return {dir, (*r)["text"].get<std::string>(), (*r)["mmproj"].get<std::string>()};
}

TEST(GgufConvert, MetadataNamesTypesAndPermutationFollowConvertHfToGguf) {
  TempDir tmp;
  const Converted c = convert_tiny(tmp, "q8_0");
  ASSERT_FALSE(c.text.empty());
  EXPECT_EQ(fs::path(c.text).filename(), "tiny-smolvlm-Q8_0.gguf");
  EXPECT_EQ(fs::path(c.mmproj).filename(), "mmproj-tiny-smolvlm-Q8_0.gguf");
  auto t = GgufFile::open(c.text);
  auto m = GgufFile::open(c.mmproj);
  ASSERT_TRUE(t.ok() && m.ok());
  EXPECT_EQ(t->metadata().front().first, "general.architecture");
  EXPECT_EQ(*t->get_string("general.architecture"), "llama");
  EXPECT_EQ(*t->get_int("llama.block_count"), 2);
  EXPECT_EQ(*t->get_int("llama.embedding_length"), 64);
  EXPECT_EQ(*t->get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(*t->get_int("llama.rope.dimension_count"), 16);
  EXPECT_EQ(*t->get_int("general.file_type"), 7);
  EXPECT_EQ(*t->get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_EQ(*t->get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*t->get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ((*t->get_string_array("tokenizer.ggml.tokens"))->size(), 1541u);
  EXPECT_EQ((*t->get_string_array("tokenizer.ggml.tokens"))->at(1501), "<image>");
  EXPECT_EQ((*t->get_int_array("tokenizer.ggml.token_type"))->at(1501), kTokControl);
  EXPECT_EQ((*t->get_int_array("tokenizer.ggml.token_type"))->at(1540), kTokUserDefined);  // <scene>, not special
  EXPECT_EQ((*t->get_int_array("tokenizer.ggml.token_type"))->at(100), kTokNormal);
  EXPECT_EQ((*t->get_string_array("tokenizer.ggml.merges"))->at(0), "a r");
  EXPECT_EQ(*t->get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(*t->get_int("tokenizer.ggml.eos_token_id"), 1502);
  EXPECT_EQ(*t->get_int("tokenizer.ggml.padding_token_id"), 2);
  EXPECT_FALSE(t->has("tokenizer.ggml.add_bos_token"));
  EXPECT_NE(t->get_string("tokenizer.chat_template")->find("<end_of_utterance>"), std::string::npos);
  EXPECT_EQ(*m->get_string("general.architecture"), "clip");
  EXPECT_EQ(*m->get_string("clip.projector_type"), "idefics3");
  EXPECT_EQ(*m->get_int("clip.vision.projector.scale_factor"), 2);
  EXPECT_EQ(*m->get_int("clip.vision.projection_dim"), 64);
  EXPECT_EQ(*m->get_int("clip.vision.preproc_image_size"), 192);
  EXPECT_TRUE(*m->get_bool("clip.use_gelu", false));
  // Types: ModelBase.prepare_tensors (+ SmolVLMModel: embeddings F32); 176-wide rows fall back to F16.
  auto type = [](const GgufFile& f, const char* n) { return std::string(f.tensor(n)->type->name); };
  EXPECT_EQ(type(*t, "token_embd.weight"), "Q8_0");
  EXPECT_EQ(type(*t, "output.weight"), "Q8_0");
  EXPECT_EQ(type(*t, "blk.0.attn_q.weight"), "Q8_0");
  EXPECT_EQ(type(*t, "blk.0.ffn_down.weight"), "F16");
  EXPECT_EQ(type(*t, "blk.0.attn_norm.weight"), "F32");
  EXPECT_EQ(type(*t, "output_norm.weight"), "F32");
  EXPECT_EQ(type(*m, "v.patch_embd.weight"), "F32");
  EXPECT_EQ(type(*m, "v.position_embd.weight"), "F32");
  EXPECT_EQ(type(*m, "v.blk.0.attn_q.bias"), "F32");
  EXPECT_EQ(type(*m, "v.blk.0.ffn_up.weight"), "Q8_0");
  EXPECT_EQ(type(*m, "mm.model.fc.weight"), "Q8_0");
  EXPECT_EQ(t->tensor("blk.1.ffn_down.weight")->ne, (std::vector<int64_t>{176, 64}));
  EXPECT_EQ(m->tensor("v.patch_embd.weight")->ne, (std::vector<int64_t>{8, 8, 3, 64}));
  EXPECT_EQ(t->tensors().size(), 2u * 9 + 3);
  EXPECT_EQ(m->tensors().size(), 2u * 16 + 6);

  // The permutation: GGUF attn_k row h*hd + 2i + j is HF k_proj row h*hd + j*hd/2 + i (2 kv heads of 16).
  const Converted f32 = convert_tiny(tmp, "f32");
  auto tf = GgufFile::open(f32.text);
  auto hf = TensorStore::open_dir(kTiny);
  ASSERT_TRUE(tf.ok() && hf.ok());
  for (const char* which : {"k", "q"}) {
    auto g = tf->get(std::string("blk.1.attn_") + which + ".weight");
    auto h = hf->get(std::string("model.text_model.layers.1.self_attn.") + which + "_proj.weight");
    ASSERT_TRUE(g.ok() && h.ok());
    const int64_t in = h->dim(1), rows = h->dim(0), hd = 16;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t head = r / hd, i = (r % hd) / 2, j = r % 2;
      const int64_t hr = head * hd + j * (hd / 2) + i;
      ASSERT_EQ(std::memcmp(g->data_as<float>() + r * in, h->data_as<float>() + hr * in, static_cast<size_t>(in) * 4), 0)
          << which << " row " << r;
    }
  }
  auto gv = tf->get("blk.1.attn_v.weight");
  auto hv = hf->get("model.text_model.layers.1.self_attn.v_proj.weight");
  EXPECT_EQ(std::memcmp(gv->data(), hv->data(), hv->nbytes()), 0);  // v is not permuted
}

TEST(GgufImport, ConfigTokenizerAndTensorsMatchTheHfLayout) {
  TempDir tmp;
  const Converted c = convert_tiny(tmp, "f32");
  auto im = import_gguf_model(c.dir);
  ASSERT_TRUE(im.ok()) << im.status().to_string();
  auto a = parse_vlm_config(im->config, "gguf");
  auto b = load_vlm_config(kTiny);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status().to_string();
  EXPECT_EQ(a->image_token_id, b->image_token_id);
  EXPECT_EQ(a->scale_factor, b->scale_factor);
  EXPECT_EQ(a->text.vocab_size, b->text.vocab_size);
  EXPECT_EQ(a->text.head_dim, b->text.head_dim);
  EXPECT_EQ(a->text.num_key_value_heads, b->text.num_key_value_heads);
  EXPECT_EQ(a->text.rms_norm_eps, b->text.rms_norm_eps);
  EXPECT_EQ(a->text.rope_theta, b->text.rope_theta);
  EXPECT_EQ(a->vision.layer_norm_eps, b->vision.layer_norm_eps);
  EXPECT_EQ(a->vision.intermediate_size, b->vision.intermediate_size);
  EXPECT_EQ(a->tie_word_embeddings, b->tie_word_embeddings);
  EXPECT_EQ(a->eos_token_id, 1502);
  auto pa = parse_preprocessor_config(im->preprocessor, "gguf");
  auto pb = load_preprocessor_config(kTiny);
  ASSERT_TRUE(pa.ok() && pb.ok());
  EXPECT_EQ(pa->size_longest_edge, pb->size_longest_edge);
  EXPECT_EQ(pa->max_image_size_longest_edge, pb->max_image_size_longest_edge);
  EXPECT_EQ(pa->image_mean, pb->image_mean);
  EXPECT_EQ(pa->image_std, pb->image_std);
  EXPECT_EQ(pa->do_image_splitting, pb->do_image_splitting);
  EXPECT_EQ(pa->resample, pb->resample);
  auto ta = parse_tokenizer_config(im->tokenizer_config, "gguf");
  auto tb = load_tokenizer_config(kTiny);
  ASSERT_TRUE(ta.ok() && tb.ok());
  EXPECT_EQ(ta->bos_token, tb->bos_token);
  EXPECT_EQ(ta->eos_token, tb->eos_token);
  EXPECT_EQ(ta->pad_token, tb->pad_token);
  EXPECT_EQ(ta->chat_template, tb->chat_template);
  // f32 GGUF: every tensor is the HF tensor, bit for bit, under the HF name (the q / k permutation undone).
  auto hf = TensorStore::open_dir(kTiny);
  ASSERT_TRUE(hf.ok());
  EXPECT_EQ(im->store.names(), hf->names());
  for (const auto& n : hf->names()) {
    auto x = im->store.get(n);
    auto y = hf->get(n);
    ASSERT_TRUE(x.ok() && y.ok()) << n;
    ASSERT_EQ(x->shape(), y->shape()) << n;
    ASSERT_EQ(x->dtype(), y->dtype()) << n;
    ASSERT_EQ(std::memcmp(x->data(), y->data(), y->nbytes()), 0) << n;
  }
  // ... and back to an HF directory, which loads like the original.
  auto back = convert_gguf_to_hf(c.text, tmp.file("hf"));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  auto hs = TensorStore::open_dir(tmp.file("hf"));
  ASSERT_TRUE(hs.ok());
  EXPECT_EQ(hs->names(), hf->names());
  EXPECT_TRUE(load_vlm_config(tmp.file("hf")).ok());
}

TEST(GgufImport, FindsThePairAndExplainsMistakes) {
  TempDir tmp;
  const Converted c = convert_tiny(tmp, "f16");
  ASSERT_FALSE(c.text.empty());
  EXPECT_TRUE(is_gguf_model_path(c.dir));
  EXPECT_TRUE(is_gguf_model_path(c.text));
  EXPECT_FALSE(is_gguf_model_path(kTiny));  // has config.json
  auto p = find_gguf_model(c.text);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->mmproj, c.mmproj);
  EXPECT_STATUS(find_gguf_model(c.mmproj), StatusCode::kInvalidArgument, "this is a vision projector");
  EXPECT_STATUS(find_gguf_model(kTiny), StatusCode::kInvalidArgument, "has a config.json");
  // A second pair in the same directory: the directory is ambiguous, each text file finds its own projector.
  fs::copy_file(c.text, c.dir + "/other-f16.gguf");
  fs::copy_file(c.mmproj, c.dir + "/mmproj-other-f16.gguf");
  EXPECT_STATUS(find_gguf_model(c.dir), StatusCode::kInvalidArgument, "found 2 (other-f16.gguf, tiny-smolvlm-f16.gguf)");
  EXPECT_EQ(find_gguf_model(c.dir + "/other-f16.gguf")->mmproj, c.dir + "/mmproj-other-f16.gguf");
  EXPECT_EQ(find_gguf_model(c.text)->mmproj, c.mmproj);
  fs::remove(c.dir + "/other-f16.gguf");
  fs::rename(c.dir + "/mmproj-other-f16.gguf", c.dir + "/mmproj-x.gguf");
  EXPECT_EQ(find_gguf_model(c.dir)->mmproj, c.mmproj);  // the one named after the text file wins
  fs::rename(c.mmproj, c.dir + "/mmproj-y.gguf");
  EXPECT_STATUS(find_gguf_model(c.dir), StatusCode::kInvalidArgument, "several projectors (mmproj-x.gguf, mmproj-y.gguf)");
  fs::remove(c.dir + "/mmproj-x.gguf");
  EXPECT_EQ(find_gguf_model(c.text)->mmproj, c.dir + "/mmproj-y.gguf");  // a single one is taken whatever its name
  fs::remove(c.dir + "/mmproj-y.gguf");
  EXPECT_STATUS(find_gguf_model(c.dir), StatusCode::kNotFound, "no mmproj*.gguf");
}

// Rewrites a GGUF with changed metadata (tensors re-encoded as F32 / F16).
void rewrite(const std::string& src, const std::string& dst,
             const std::function<void(std::vector<std::pair<std::string, GgufValue>>&)>& edit) {
  auto f = GgufFile::open(src);
  ASSERT_TRUE(f.ok());
  auto md = f->metadata();
  edit(md);
  std::vector<GgufWriteTensor> ts;
  for (const auto& t : f->tensors()) {
    auto x = f->get(t.name);
    ASSERT_TRUE(x.ok());
    ts.push_back({t.name, *x, x->dtype() == DType::kF16 ? GgmlType::kF16 : GgmlType::kF32});
  }
  ASSERT_TRUE(write_gguf(dst, md, ts).ok());
}

TEST(GgufImport, RefusesWhatItCannotRun) {
  TempDir tmp;
  const Converted c = convert_tiny(tmp, "f16");
  ASSERT_FALSE(c.text.empty());
  struct Case {
    bool mmproj;
    std::string key;
    GgufValue value;
    StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {false, "general.architecture", GgufValue::str("qwen2"), StatusCode::kUnsupported, "general.architecture 'qwen2'"},
      {false, "tokenizer.ggml.model", GgufValue::str("llama"), StatusCode::kUnsupported, "tokenizer.ggml.model 'llama'"},
      {false, "tokenizer.ggml.pre", GgufValue::str("qwen2"), StatusCode::kUnsupported, "tokenizer.ggml.pre 'qwen2'"},
      {false, "llama.block_count", GgufValue::str("2"), StatusCode::kCorrupt, "key 'llama.block_count' has type string"},
      {false, "llama.rope.scaling.type", GgufValue::str("yarn"), StatusCode::kUnsupported, "yarn"},
      {false, "tokenizer.ggml.eos_token_id", GgufValue::u32(99999), StatusCode::kCorrupt, "outside the vocabulary"},
      {true, "clip.projector_type", GgufValue::str("mlp"), StatusCode::kUnsupported, "projector type 'mlp'"},
      {true, "clip.vision.projection_dim", GgufValue::u32(576), StatusCode::kCorrupt, "576-wide embeddings"},
      {true, "general.architecture", GgufValue::str("llama"), StatusCode::kInvalidArgument, "expected \"clip\""},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.key);
    const std::string d = tmp.file("case");
    fs::remove_all(d);
    fs::create_directories(d);
    const std::string text = d + "/m-f16.gguf", mm = d + "/mmproj-m-f16.gguf";
    auto set = [&](std::vector<std::pair<std::string, GgufValue>>& md) {
      for (auto& [key, v] : md)
        if (key == k.key) {
          v = k.value;
          return;
        }
      md.emplace_back(k.key, k.value);
    };
    auto keep = [](std::vector<std::pair<std::string, GgufValue>>&) {};
    rewrite(c.text, text, k.mmproj ? std::function(keep) : std::function(set));
    rewrite(c.mmproj, mm, k.mmproj ? std::function(set) : std::function(keep));
    EXPECT_STATUS(import_gguf_model(d), k.code, k.message);
  }
  // A missing required key and a missing tensor.
  const std::string d = tmp.file("missing");
  fs::create_directories(d);
  rewrite(c.text, d + "/m-f16.gguf", [](auto& md) {
    md.erase(std::remove_if(md.begin(), md.end(), [](auto& kv) { return kv.first == "llama.embedding_length"; }), md.end());
  });
  fs::copy_file(c.mmproj, d + "/mmproj-m-f16.gguf");
  EXPECT_STATUS(import_gguf_model(d), StatusCode::kCorrupt, "required key 'llama.embedding_length' is missing");
}

// ---------------------------------------------------------------- parity with the HF-layout model

EngineOptions parity_options() {
  EngineOptions o;
  o.threads = 2;
  o.precision = Precision::kF32;
  o.vision_precision = Precision::kF32;
  return o;
}

Image test_image() {
  Image img = Image::make(96, 80);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      for (int ch = 0; ch < 3; ++ch)
        img.rgb[static_cast<size_t>((y * img.width + x) * 3 + ch)] = static_cast<uint8_t>((x * 5 + y * 3 + ch * 70) % 256);
  return img;
}

struct Outputs {
  Tensor embeds, logits;
  std::vector<int32_t> ids, greedy;
};

// Image embeddings of a split image, the logits of every prompt position, and 8 greedy tokens.
Outputs run_model(Engine& e) {
  Outputs o;
  auto enc = e.encode_images({test_image()}, 1);
  EXPECT_TRUE(enc.ok()) << enc.status().to_string();
  if (!enc.ok()) return o;
  o.embeds = enc->embeds;
  auto msgs = Engine::user_turn(1, "What is in the image? 1234 <scene>");
  auto text = e.render_messages(*msgs);
  EXPECT_TRUE(text.ok());
  auto expanded = expand_image_tokens(*text, enc->layouts, enc->tokens_per_tile);
  EXPECT_TRUE(expanded.ok());
  o.ids = e.tokenizer().encode(*expanded, true);
  KvCache cache = e.model().make_cache(static_cast<int64_t>(o.ids.size()) + 1);
  auto logits = e.forward_text(o.ids, enc->embeds, cache, static_cast<int64_t>(o.ids.size()));
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  if (logits.ok()) o.logits = *logits;
  GenerateOptions g;
  g.max_new_tokens = 8;
  g.stop_at_eos = false;
  auto r = e.generate_encoded(*enc, *msgs, g);
  EXPECT_TRUE(r.ok());
  if (r.ok()) o.greedy = r->tokens;
  return o;
}

// max |a - b| / max |b|.
double rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double d = 0, m = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    d = std::max(d, static_cast<double>(std::fabs(a.data_as<float>()[i] - b.data_as<float>()[i])));
    m = std::max(m, static_cast<double>(std::fabs(b.data_as<float>()[i])));
  }
  return d / m;
}

TEST(GgufParity, ImportedModelsMatchTheHfLayout) {
  TempDir tmp;
  auto ref_e = Engine::load(kTiny, parity_options());
  ASSERT_TRUE(ref_e.ok()) << ref_e.status().to_string();
  const Outputs ref = run_model(**ref_e);
  ASSERT_TRUE(ref.logits.defined() && ref.embeds.defined());
  // Tokenizer: identical ids on assorted text (special tokens, digits, unicode, spaces, a user-defined token).
  const Tokenizer& rt = (*ref_e)->tokenizer();
  const std::vector<std::string> prompts = {
      "Hello world!", "<|im_start|>User:<image>What is it?<end_of_utterance>\nAssistant:", "3.14159 and 1,000,000",
      "  multiple   spaces\n\n\tand tabs", "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80",
      "<scene>a<fake_token_around_image><global-img><row_1_col_2>", "I've been 'told' he's there"};

  // Tolerances, as max |logit difference| / max |logit| over every position of a 51-token prompt with a split
  // image, f32 arithmetic: f32 GGUF must be bit-identical; f16 weights differ from the f32 fixture by f16 rounding,
  // Q8_0 by 8-bit quantisation. The f16 / q8_0 limits are a priori bounds, not yet measured: the test prints the
  // measured values ("[ gguf f16 ] ..."); tighten the limits to about twice what it prints.
  struct Case {
    std::string type;
    double tol_logits, tol_embeds;
    bool same_greedy;
  };
  for (const Case& c : std::vector<Case>{{"f32", 0.0, 0.0, true}, {"f16", 5e-3, 5e-3, true}, {"q8_0", 5e-2, 5e-2, false}}) {
    SCOPED_TRACE(c.type);
    const Converted cv = convert_tiny(tmp, c.type);
    ASSERT_FALSE(cv.text.empty());
    // Both ways of naming the model: the directory and the text file.
    for (const std::string& model : {cv.dir, cv.text}) {
      auto e = Engine::load(model, parity_options());
      ASSERT_TRUE(e.ok()) << e.status().to_string();
      const Tokenizer& gt = (*e)->tokenizer();
      for (const auto& p : prompts) {
        EXPECT_EQ(gt.encode(p, true), rt.encode(p, true)) << p;
        EXPECT_EQ(gt.decode(rt.encode(p, false), false), rt.decode(rt.encode(p, false), false)) << p;
      }
      EXPECT_EQ(*(*e)->render_prompt(1, "hi"), *(*ref_e)->render_prompt(1, "hi"));
      const Outputs got = run_model(**e);
      ASSERT_TRUE(got.logits.defined());
      EXPECT_EQ(got.ids, ref.ids);
      const double de = rel_diff(got.embeds, ref.embeds), dl = rel_diff(got.logits, ref.logits);
      std::printf("[ gguf %-4s ] image embeddings rel diff %.3g, logits rel diff %.3g (%lld positions)\n", c.type.c_str(),
                  de, dl, static_cast<long long>(ref.logits.dim(0)));
      EXPECT_LE(de, c.tol_embeds);
      EXPECT_LE(dl, c.tol_logits);
      if (c.same_greedy) EXPECT_EQ(got.greedy, ref.greedy);
      // Q8_0: the argmax agrees at most positions (the tiny random model has near-ties).
      int agree = 0;
      const int64_t V = ref.logits.dim(1), T = ref.logits.dim(0);
      for (int64_t t = 0; t < T; ++t) {
        const float* a = got.logits.data_as<float>() + t * V;
        const float* b = ref.logits.data_as<float>() + t * V;
        agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
      }
      EXPECT_GE(agree, T * 9 / 10) << agree << " / " << T;
    }
  }
}

// Seeds for tests/fuzz/corpus/fuzz_gguf (run with --gtest_also_run_disabled_tests
// --gtest_filter=Gguf.DISABLED_WriteFuzzSeeds to regenerate).
TEST(Gguf, DISABLED_WriteFuzzSeeds) {
  const fs::path dir = fs::path(EDGEVLM_SOURCE_DIR) / "tests/fuzz/corpus/fuzz_gguf";
  fs::create_directories(dir);
  const std::vector<std::pair<std::string, GgufValue>> md = {
      {"general.architecture", GgufValue::str("llama")}, {"llama.block_count", GgufValue::u32(2)},
      {"llama.rope.freq_base", GgufValue::f32(10000.f)}, {"tokenizer.ggml.tokens", GgufValue::string_array({"a", "b", "ab"})},
      {"tokenizer.ggml.token_type", GgufValue::i32_array({1, 1, 3})}, {"clip.vision.image_mean", GgufValue::f32_array({0.5f, 0.5f, 0.5f})},
      {"flag", GgufValue::boolean(true)}};
  ASSERT_TRUE(write_gguf((dir / "valid_all_types.gguf").string(), md,
                         {{"f32", iota_f32(Shape{2, 3}), GgmlType::kF32}, {"f16", iota_f32(Shape{4}), GgmlType::kF16},
                          {"bf16", iota_f32(Shape{1, 2, 3}), GgmlType::kBF16}, {"q8", iota_f32(Shape{2, 32}), GgmlType::kQ8_0}})
                  .ok());
  ASSERT_TRUE(write_gguf((dir / "valid_v2_align64.gguf").string(), md, {{"w", iota_f32(Shape{3, 32}), GgmlType::kQ8_0}}, 64, 2).ok());
  ASSERT_TRUE(write_gguf((dir / "valid_metadata_only.gguf").string(), md, {}).ok());
  Bytes k4;
  k4.header(1, 0).tensor("k", {256}, 12, 0).pad().raw(std::string(144, 1));
  write_bytes((dir / "valid_q4_k.gguf").string(), k4.s);
  const std::string full = read_bytes((dir / "valid_all_types.gguf").string());
  write_bytes((dir / "bad_truncated.gguf").string(), full.substr(0, full.size() - 40));
  write_bytes((dir / "bad_magic.gguf").string(), "GGML" + full.substr(4));
  Bytes overlap;
  overlap.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().raw(std::string(96, 0));
  write_bytes((dir / "bad_overlap.gguf").string(), overlap.s);
  Bytes arr;
  arr.header(0, 1).str("k").u32(9).u32(8).u64(uint64_t{1} << 40).str("x");
  write_bytes((dir / "bad_array_count.gguf").string(), arr.s);
}

}  // namespace
}  // namespace ev
