// Tests of src/formats: safetensors read/write, TensorStore, JSON helpers, HF config parsing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/hf_config.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ev {
namespace {

// ---- helpers ----

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("edgevlm_test_formats_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
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

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void write_text(const std::string& path, const std::string& text) { write_bytes(path, text); }

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors image with the given header text and `data_bytes` bytes of data (values 0, 1, 2, ...).
std::string st_image(const std::string& header, size_t data_bytes) {
  std::string s = le64(header.size()) + header;
  for (size_t i = 0; i < data_bytes; ++i) s.push_back(static_cast<char>(i & 0xff));
  return s;
}

// A tensor of `dtype` and `shape` filled with a deterministic byte pattern depending on `seed`.
Tensor pattern_tensor(DType dtype, Shape shape, uint32_t seed) {
  Tensor t = Tensor::empty(dtype, shape);
  auto* p = t.data_as<uint8_t>();
  std::mt19937 rng(seed);
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(rng());
  if (dtype == DType::kBool)
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.data(), b.data(), a.nbytes()) == 0);
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

[[maybe_unused]] Status status_of(const Status& s) { return s; }
template <typename T>
Status status_of(const Result<T>& r) {
  return r.status();
}

// Expects a failed Status / Result with the given code and a message containing `want_substr`.
#define EXPECT_STATUS(expr, want_code, want_substr)                                           \
  do {                                                                                        \
    const auto& ev_r_ = (expr);                                                               \
    const ::ev::Status ev_st_ = status_of(ev_r_);                                             \
    const std::string ev_sub_ = (want_substr);                                                \
    ASSERT_FALSE(ev_st_.ok()) << "expected failure containing: " << ev_sub_;                  \
    EXPECT_EQ(ev_st_.code(), (want_code)) << ev_st_.to_string();                              \
    EXPECT_TRUE(contains(ev_st_.message(), ev_sub_))                                          \
        << "message: " << ev_st_.message() << "\nexpected to contain: " << ev_sub_;          \
  } while (0)

// ---- safetensors round trip ----

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir tmp;
  const std::vector<DType> dtypes = {DType::kF32, DType::kF16, DType::kBF16, DType::kI8,
                                     DType::kU8,  DType::kI32, DType::kI64,  DType::kBool};
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint32_t seed = 1;
  for (DType dt : dtypes) {
    // Odd sizes so that, written in this order, a naive layout would misalign the following tensors.
    tensors.emplace_back(std::string("t_") + dtype_name(dt) + "_a", pattern_tensor(dt, Shape{3, 5}, seed++));
    tensors.emplace_back(std::string("t_") + dtype_name(dt) + "_b", pattern_tensor(dt, Shape{7}, seed++));
  }
  tensors.emplace_back("scalar", pattern_tensor(DType::kF32, Shape{}, 99));
  tensors.emplace_back("empty", Tensor::empty(DType::kF32, Shape{0, 4}));
  tensors.emplace_back("rank4", pattern_tensor(DType::kBF16, Shape{2, 3, 1, 5}, 100));
  const std::string path = tmp.file("all.safetensors");
  ASSERT_TRUE(write_safetensors(path, tensors, {{"format", "pt"}, {"note", "x"}}).ok());

  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->size(), tensors.size());
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "x");
  EXPECT_EQ((8 + f->header_size()) % 8, 0u) << "data region must start 8-aligned";
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(f->has(name)) << name;
    auto got = f->get(name);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    EXPECT_TRUE(same_bytes(*got, t)) << name;
    EXPECT_EQ(got->name(), name);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data()) % dtype_size(t.dtype()), 0u) << name;
    const SafetensorsEntry* e = f->entry(name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype_str, safetensors_dtype_name(t.dtype()));
    EXPECT_EQ(e->shape, t.shape().to_vector());
  }
  EXPECT_EQ(f->get("scalar")->ndim(), 0);
  EXPECT_EQ(f->get("empty")->numel(), 0);
  EXPECT_FALSE(f->has("nope"));
  EXPECT_STATUS(f->get("nope"), StatusCode::kNotFound, "no tensor 'nope'");
}

// The reference library (huggingface/safetensors) rejects gaps between tensors: the written data offsets must
// tile the data region exactly, and every tensor must be aligned to its element size.
TEST(Safetensors, WriterLayoutIsContiguousAndAligned) {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a_u8", pattern_tensor(DType::kU8, Shape{3}, 1)},
      {"b_f32", pattern_tensor(DType::kF32, Shape{5}, 2)},
      {"c_bf16", pattern_tensor(DType::kBF16, Shape{3}, 3)},
      {"d_i64", pattern_tensor(DType::kI64, Shape{1}, 4)},
  };
  const std::string path = tmp.file("layout.safetensors");
  ASSERT_TRUE(write_safetensors(path, tensors).ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u);
  const json h = json::parse(bytes.substr(8, n));
  EXPECT_FALSE(h.contains("__metadata__"));
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const uint64_t b = it.value()["data_offsets"][0], e = it.value()["data_offsets"][1];
    DType dt;
    ASSERT_TRUE(dtype_from_string(it.value()["dtype"].get<std::string>(), &dt));
    EXPECT_EQ(b % dtype_size(dt), 0u) << it.key();
    ranges.emplace_back(b, e);
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t expect = 0;
  for (auto [b, e] : ranges) {
    EXPECT_EQ(b, expect);
    expect = e;
  }
  EXPECT_EQ(expect, bytes.size() - 8 - n);
}

TEST(Safetensors, ViewsKeepMappingAlive) {
  TempDir tmp;
  Tensor t = pattern_tensor(DType::kF32, Shape{16, 16}, 7);
  const std::string path = tmp.file("alive.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"w", t}}).ok());
  Tensor view;
  {
    auto f = SafetensorsFile::open(path);
    ASSERT_TRUE(f.ok());
    view = f->get("w").value();
  }  // file object gone; the view still owns the mapping
  fs::remove(path);
  EXPECT_TRUE(same_bytes(view, t));
}

TEST(Safetensors, FromMemoryMatchesFile) {
  TempDir tmp;
  Tensor t = pattern_tensor(DType::kI32, Shape{4, 3}, 11);
  const std::string path = tmp.file("m.safetensors");
  ASSERT_TRUE(write_safetensors(path, {{"x", t}}).ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto f = SafetensorsFile::from_memory(bytes.data(), bytes.size(), "mem");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->path(), "mem");
  EXPECT_TRUE(same_bytes(f->get("x").value(), t));
}

TEST(Safetensors, MisalignedTensorIsCopied) {
  // An F32 tensor at data offset 2: legal in the format, but a direct float* view would be misaligned.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
  while ((8 + header.size()) % 8) header += ' ';
  std::string img = le64(header.size()) + header;
  const float vals[2] = {1.5f, -2.25f};
  img += std::string(2, '\0');
  img.append(reinterpret_cast<const char*>(vals), sizeof vals);
  auto f = SafetensorsFile::from_memory(img.data(), img.size(), "mis");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  auto t = f->get("x");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 4, 0u);
  EXPECT_EQ(t->data_as<float>()[0], 1.5f);
  EXPECT_EQ(t->data_as<float>()[1], -2.25f);
}

TEST(Safetensors, WriterRejectsBadNames) {
  TempDir tmp;
  Tensor t = pattern_tensor(DType::kF32, Shape{2}, 1);
  EXPECT_EQ(write_safetensors(tmp.file("a"), {{"x", t}, {"x", t}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(tmp.file("b"), {{"", t}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(tmp.file("c"), {{"__metadata__", t}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(tmp.file("d"), {{"u", Tensor()}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(tmp.file("no_dir/e.safetensors"), {{"x", t}}).code(), StatusCode::kIoError);
  EXPECT_FALSE(fs::exists(tmp.file("a")));
}

// ---- safetensors corruption ----

struct CorruptCase {
  const char* label;
  std::string header;
  size_t data_bytes;
  StatusCode code;
  std::string message;  // substring expected in the message (after "<path>: ")
};

TEST(Safetensors, CorruptHeadersAreRejected) {
  const std::vector<CorruptCase> cases = {
      {"not json", "{not json", 0, StatusCode::kCorrupt, "header: invalid JSON at line 1, column 3 (byte 3): syntax error"},
      {"array", "[1,2]", 0, StatusCode::kCorrupt, "header must be a JSON object, got array"},
      {"entry not object", R"({"x":5})", 0, StatusCode::kCorrupt, "tensor 'x': expected an object, got integer"},
      {"no dtype", R"({"x":{"shape":[1],"data_offsets":[0,4]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': dtype: required field is missing"},
      {"no shape", R"({"x":{"dtype":"F32","data_offsets":[0,4]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': shape: required field is missing"},
      {"no offsets", R"({"x":{"dtype":"F32","shape":[1]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': data_offsets: required field is missing"},
      {"dtype type", R"({"x":{"dtype":3,"shape":[1],"data_offsets":[0,4]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': dtype: expected string, got integer"},
      {"unknown dtype", R"({"x":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': unknown dtype 'F33'"},
      {"negative dim", R"({"x":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,4]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': negative dimension in shape [-1, 4]"},
      {"float dim", R"({"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, StatusCode::kCorrupt,
       "tensor 'x': shape[0]: expected integer, got float"},
      {"overflow", R"({"x":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}})", 4,
       StatusCode::kCorrupt, "tensor 'x': shape [1099511627776, 1099511627776] overflows"},
      {"out of range", R"({"x.weight":{"dtype":"F32","shape":[10],"data_offsets":[0,99]}})", 40,
       StatusCode::kCorrupt, "tensor 'x.weight': data_offsets [0, 99] exceed data size 40"},
      {"begin > end", R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 40, StatusCode::kCorrupt,
       "tensor 'x': data_offsets [8, 4] begin after end"},
      {"negative offset", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 40, StatusCode::kCorrupt,
       "tensor 'x': negative data_offsets [-4, 0]"},
      {"size mismatch", R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 40, StatusCode::kCorrupt,
       "tensor 'x': data_offsets [0, 8] hold 8 bytes but dtype F32 and shape [3] need 12"},
      {"three offsets", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 40, StatusCode::kCorrupt,
       "tensor 'x': data_offsets must have 2 elements, has 3"},
      {"huge offset", R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}})", 40,
       StatusCode::kCorrupt, "tensor 'x': data_offsets[0]: integer 18446744073709551615 too large"},
      {"metadata type", R"({"__metadata__":[1]})", 0, StatusCode::kCorrupt, "__metadata__ must be an object"},
      {"metadata value", R"({"__metadata__":{"a":{"b":1}}})", 0, StatusCode::kCorrupt,
       "__metadata__ value of 'a' must be a string"},
      {"deep nesting", std::string(1000, '[') + std::string(1000, ']'), 0, StatusCode::kCorrupt,
       "header: JSON nested deeper than 256"},
  };
  TempDir tmp;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string path = tmp.file("bad.safetensors");
    write_bytes(path, st_image(c.header, c.data_bytes));
    auto f = SafetensorsFile::open(path);
    EXPECT_STATUS(f, c.code, path + ": " + c.message);
    // The in-memory parser must agree.
    const std::string img = st_image(c.header, c.data_bytes);
    auto m = SafetensorsFile::from_memory(img.data(), img.size(), "mem");
    EXPECT_STATUS(m, c.code, "mem: " + c.message);
  }
}

TEST(Safetensors, CorruptFramingIsRejected) {
  TempDir tmp;
  const std::string path = tmp.file("f.safetensors");
  write_bytes(path, "abc");
  EXPECT_STATUS(SafetensorsFile::open(path), StatusCode::kCorrupt,
                path + ": file is 3 bytes, too short for the 8-byte header length");
  write_bytes(path, "");
  EXPECT_STATUS(SafetensorsFile::open(path), StatusCode::kCorrupt, "file is 0 bytes");
  write_bytes(path, le64(1000) + "{}");
  EXPECT_STATUS(SafetensorsFile::open(path), StatusCode::kCorrupt,
                path + ": header length 1000 exceeds file size 10");
  write_bytes(path, le64(uint64_t{1} << 40) + "{}");
  EXPECT_STATUS(SafetensorsFile::open(path), StatusCode::kCorrupt, "header length 1099511627776 is absurd");
  write_bytes(path, le64(0));
  EXPECT_STATUS(SafetensorsFile::open(path), StatusCode::kCorrupt, "invalid JSON");
  EXPECT_STATUS(SafetensorsFile::open(tmp.file("missing.safetensors")), StatusCode::kNotFound, "no such file");
  EXPECT_STATUS(SafetensorsFile::open(tmp.path().string()), StatusCode::kIoError, "not a regular file");
  // An empty header object is a valid file with no tensors.
  write_bytes(path, le64(2) + "{}");
  auto ok = SafetensorsFile::open(path);
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->size(), 0u);
}

TEST(Safetensors, UnsupportedDtypeAndRankFailOnGetOnly) {
  const std::string header =
      R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
      R"("r5":{"dtype":"U8","shape":[1,1,1,1,2],"data_offsets":[16,18]},)"
      R"("ok":{"dtype":"U8","shape":[2],"data_offsets":[18,20]},)"
      R"("__metadata__":{"n":3,"s":"t"}})";
  const std::string img = st_image(header, 20);
  auto f = SafetensorsFile::from_memory(img.data(), img.size(), "mem");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->names(), (std::vector<std::string>{"d", "r5", "ok"}));  // data-offset order
  EXPECT_EQ(f->metadata().at("n"), "3");
  EXPECT_STATUS(f->get("d"), StatusCode::kUnsupported, "mem: tensor 'd': dtype F64 is not supported");
  EXPECT_STATUS(f->get("r5"), StatusCode::kUnsupported, "mem: tensor 'r5': 5 dimensions");
  auto t = f->get("ok");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->data_as<uint8_t>()[0], 18);
  EXPECT_EQ(t->data_as<uint8_t>()[1], 19);
}

// ---- TensorStore ----

TEST(TensorStore, SingleFileDirectory) {
  TempDir tmp;
  Tensor w = pattern_tensor(DType::kBF16, Shape{8, 4}, 5);
  Tensor b = pattern_tensor(DType::kF32, Shape{8}, 6);
  ASSERT_TRUE(write_safetensors(tmp.file("model.safetensors"), {{"layer.weight", w}, {"layer.bias", b}}).ok());
  auto s = TensorStore::open_dir(tmp.path().string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->names(), (std::vector<std::string>{"layer.bias", "layer.weight"}));
  EXPECT_TRUE(s->has("layer.weight"));
  EXPECT_FALSE(s->has("layer.other"));
  EXPECT_TRUE(same_bytes(s->get("layer.weight").value(), w));
  EXPECT_EQ(s->files().size(), 1u);
  // Checked getter.
  EXPECT_TRUE(s->get("layer.weight", Shape{8, 4}, {DType::kBF16, DType::kF32}).ok());
  EXPECT_TRUE(s->get("layer.weight", Shape{8, 4}, {}).ok());
  EXPECT_STATUS(s->get("layer.weight", Shape{4, 8}, {DType::kBF16}), StatusCode::kShapeMismatch,
                "tensor 'layer.weight' has shape [8, 4] but the config implies [4, 8]");
  EXPECT_STATUS(s->get("layer.weight", Shape{8, 4}, {DType::kF32, DType::kF16}), StatusCode::kShapeMismatch,
                "tensor 'layer.weight' has dtype bf16 but only f32, f16 are accepted");
  EXPECT_STATUS(s->get("missing", Shape{1}, {}), StatusCode::kNotFound, "no tensor 'missing'");
}

// Writes shards and an index into `dir`; returns the tensors by name.
std::map<std::string, Tensor> write_sharded(const TempDir& dir) {
  std::map<std::string, Tensor> all;
  all["model.embed.weight"] = pattern_tensor(DType::kF32, Shape{10, 4}, 1);
  all["model.layers.0.w"] = pattern_tensor(DType::kF32, Shape{4, 4}, 2);
  all["model.layers.1.w"] = pattern_tensor(DType::kF32, Shape{4, 4}, 3);
  all["lm_head.weight"] = pattern_tensor(DType::kF32, Shape{10, 4}, 4);
  EXPECT_TRUE(write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                                {{"model.embed.weight", all["model.embed.weight"]},
                                 {"model.layers.0.w", all["model.layers.0.w"]}})
                  .ok());
  EXPECT_TRUE(write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                                {{"model.layers.1.w", all["model.layers.1.w"]},
                                 {"lm_head.weight", all["lm_head.weight"]}})
                  .ok());
  json idx = {{"metadata", {{"total_size", 448}}},
              {"weight_map",
               {{"model.embed.weight", "model-00001-of-00002.safetensors"},
                {"model.layers.0.w", "model-00001-of-00002.safetensors"},
                {"model.layers.1.w", "model-00002-of-00002.safetensors"},
                {"lm_head.weight", "model-00002-of-00002.safetensors"}}}};
  write_text(dir.file("model.safetensors.index.json"), idx.dump(2));
  return all;
}

TEST(TensorStore, ShardedDirectory) {
  TempDir tmp;
  auto all = write_sharded(tmp);
  auto s = TensorStore::open_dir(tmp.path().string());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->size(), 4u);
  EXPECT_EQ(s->files().size(), 2u);  // each shard opened once
  for (const auto& [name, t] : all) {
    auto got = s->get(name);
    ASSERT_TRUE(got.ok()) << name << ": " << got.status().to_string();
    EXPECT_TRUE(same_bytes(*got, t)) << name;
  }
  EXPECT_EQ(s->entry("lm_head.weight")->shape, (std::vector<int64_t>{10, 4}));
  EXPECT_EQ(s->entry("nope"), nullptr);
}

TEST(TensorStore, BrokenIndexes) {
  {
    TempDir tmp;
    write_sharded(tmp);
    json idx = {{"weight_map", {{"ghost.weight", "model-00001-of-00002.safetensors"}}}};
    write_text(tmp.file("model.safetensors.index.json"), idx.dump());
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kCorrupt,
                  "tensor 'ghost.weight' is mapped to model-00001-of-00002.safetensors, which does not contain it");
  }
  {
    TempDir tmp;
    write_sharded(tmp);
    json idx = {{"weight_map", {{"x", "model-00009-of-00009.safetensors"}}}};
    write_text(tmp.file("model.safetensors.index.json"), idx.dump());
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kNotFound,
                  "model-00009-of-00009.safetensors: no such file");
  }
  {
    TempDir tmp;
    json idx = {{"weight_map", {{"x", "../../etc/passwd"}}}};
    write_text(tmp.file("model.safetensors.index.json"), idx.dump());
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kCorrupt, "invalid shard file name");
  }
  {
    TempDir tmp;
    write_text(tmp.file("model.safetensors.index.json"), R"({"weight_map": {"x": 3}})");
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kCorrupt,
                  "weight_map.x: expected string, got integer");
  }
  {
    TempDir tmp;
    write_text(tmp.file("model.safetensors.index.json"), R"({"metadata": {}})");
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kCorrupt,
                  "weight_map: required field is missing");
  }
  {
    TempDir tmp;
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kNotFound,
                  "neither model.safetensors nor model.safetensors.index.json exists");
    EXPECT_STATUS(TensorStore::open_dir(tmp.file("nodir")), StatusCode::kNotFound, "not a directory");
  }
  {
    // A shard that is itself corrupt: the error names the shard and the index.
    TempDir tmp;
    write_sharded(tmp);
    write_bytes(tmp.file("model-00002-of-00002.safetensors"), le64(5000) + "{}");
    EXPECT_STATUS(TensorStore::open_dir(tmp.path().string()), StatusCode::kCorrupt,
                  "model-00002-of-00002.safetensors: header length 5000 exceeds file size 10");
  }
}

TEST(TensorStore, SingleFileWinsOverIndex) {
  TempDir tmp;
  write_sharded(tmp);
  Tensor only = pattern_tensor(DType::kF32, Shape{2}, 9);
  ASSERT_TRUE(write_safetensors(tmp.file("model.safetensors"), {{"only", only}}).ok());
  auto s = TensorStore::open_dir(tmp.path().string());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->names(), std::vector<std::string>{"only"});
}

// ---- JSON helpers ----

TEST(JsonUtil, ReadFileErrors) {
  TempDir tmp;
  EXPECT_STATUS(read_json_file(tmp.file("none.json")), StatusCode::kNotFound, "none.json: no such file");
  write_text(tmp.file("bad.json"), "{\n  \"a\": 1,\n  \"b\": tru\n}");
  EXPECT_STATUS(read_json_file(tmp.file("bad.json")), StatusCode::kCorrupt,
                tmp.file("bad.json") + ": invalid JSON at line 3");
  write_text(tmp.file("good.json"), R"({"a": [1, 2]})");
  auto j = read_json_file(tmp.file("good.json"));
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["a"][1], 2);
}

TEST(JsonUtil, TypedGetters) {
  const json j = json::parse(R"({
    "i": 7, "neg": -3, "big": 5000000000, "f": 0.5, "fi": 64.0, "b": true, "s": "str", "n": null,
    "arr": [1, 2, 3], "farr": [1, 0.5], "obj": {"inner": {"heads": "12"}}
  })");
  JsonView v(j, "config.json");
  EXPECT_EQ(v.get_int("i").value(), 7);
  EXPECT_EQ(v.get_int("missing", 42).value(), 42);
  EXPECT_EQ(v.get_int("n", 42).value(), 42);  // null means default
  EXPECT_EQ(v.get_number("i").value(), 7.0);
  EXPECT_EQ(v.get_number("f").value(), 0.5);
  EXPECT_EQ(v.get_bool("b").value(), true);
  EXPECT_EQ(v.get_string("s").value(), "str");
  EXPECT_EQ(v.get_int_array("arr").value(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(v.get_number_array("farr").value(), (std::vector<double>{1.0, 0.5}));
  EXPECT_STATUS(v.get_int("s"), StatusCode::kCorrupt, "config.json: s: expected integer, got string");
  EXPECT_STATUS(v.get_int("fi"), StatusCode::kCorrupt, "config.json: fi: expected integer, got float");
  EXPECT_STATUS(v.get_int("missing"), StatusCode::kCorrupt, "config.json: missing: required field is missing");
  EXPECT_STATUS(v.get_int32("big", 1, 1 << 30), StatusCode::kCorrupt,
                "config.json: big: value 5000000000 out of range [1, 1073741824]");
  EXPECT_STATUS(v.get_int32("neg", 1, 10), StatusCode::kCorrupt, "out of range");
  EXPECT_STATUS(v.get_bool("i"), StatusCode::kCorrupt, "config.json: i: expected boolean, got integer");
  EXPECT_STATUS(v.get_int_array("farr"), StatusCode::kCorrupt, "config.json: farr[1]: expected integer, got float");
  auto inner = v.get_object("obj").value().get_object("inner").value();
  EXPECT_EQ(inner.where("heads"), "config.json: obj.inner.heads");
  EXPECT_STATUS(inner.get_int("heads"), StatusCode::kCorrupt,
                "config.json: obj.inner.heads: expected integer, got string");
  EXPECT_FALSE(v.get_object_opt("nothing").value().has_value());
  EXPECT_STATUS(v.get_object_opt("s"), StatusCode::kCorrupt, "config.json: s: expected object, got string");
}

TEST(JsonUtil, DeepNestingRefused) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_STATUS(parse_json(deep, "deep.json"), StatusCode::kCorrupt, "deep.json: JSON nested deeper than 256");
  // Brackets inside strings do not count.
  const std::string ok = "{\"a\": \"" + std::string(1000, '[') + "\"}";
  EXPECT_TRUE(parse_json(ok, "ok.json").ok());
}

// ---- HF config ----

// Modelled on SmolVLM-256M-Instruct's config.json (model_type idefics3), with fields in the order transformers
// 4.x writes them.
const char* kIdefics3Config = R"({
  "architectures": ["Idefics3ForConditionalGeneration"],
  "image_token_id": 49190,
  "model_type": "idefics3",
  "scale_factor": 4,
  "text_config": {
    "_flash_attn_2_enabled": true,
    "architectures": ["VLlama3ForCausalLM"],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pad_token_id": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": null,
    "rope_theta": 100000,
    "tie_word_embeddings": false,
    "torch_dtype": "bfloat16",
    "vocab_size": 49280
  },
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.46.0",
  "use_cache": true,
  "vision_config": {
    "hidden_size": 768,
    "image_size": 512,
    "intermediate_size": 3072,
    "model_type": "idefics3",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "patch_size": 16,
    "size": {"longest_edge": 512}
  },
  "vocab_size": 49280
})";

TEST(HfConfig, ParsesIdefics3Config) {
  auto c = parse_vlm_config(json::parse(kIdefics3Config), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->model_type, "idefics3");
  EXPECT_EQ(c->architectures, std::vector<std::string>{"Idefics3ForConditionalGeneration"});
  EXPECT_EQ(c->image_token_id, 49190);
  EXPECT_EQ(c->scale_factor, 4);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  // vision
  EXPECT_EQ(c->vision.hidden_size, 768);
  EXPECT_EQ(c->vision.image_size, 512);
  EXPECT_EQ(c->vision.patch_size, 16);
  EXPECT_EQ(c->vision.num_hidden_layers, 12);
  EXPECT_EQ(c->vision.num_attention_heads, 12);
  EXPECT_EQ(c->vision.intermediate_size, 3072);
  EXPECT_EQ(c->vision.num_channels, 3);                    // default
  EXPECT_EQ(c->vision.hidden_act, "gelu_pytorch_tanh");    // default
  EXPECT_FLOAT_EQ(c->vision.layer_norm_eps, 1e-6f);        // default
  EXPECT_EQ(c->vision.num_patches(), 1024);
  // text
  EXPECT_EQ(c->text.vocab_size, 49280);
  EXPECT_EQ(c->text.hidden_size, 576);
  EXPECT_EQ(c->text.intermediate_size, 1536);
  EXPECT_EQ(c->text.num_hidden_layers, 30);
  EXPECT_EQ(c->text.num_attention_heads, 9);
  EXPECT_EQ(c->text.num_key_value_heads, 3);
  EXPECT_EQ(c->text.head_dim, 64);
  EXPECT_EQ(c->text.max_position_embeddings, 8192);
  EXPECT_FLOAT_EQ(c->text.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->text.rope_theta, 100000.0f);
  EXPECT_EQ(c->text.rope_type, "default");
  EXPECT_EQ(c->text.hidden_act, "silu");
  EXPECT_FALSE(c->text.attention_bias);
  EXPECT_FALSE(c->text.mlp_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
  // derived
  EXPECT_EQ(c->image_tokens_per_tile(), 64);               // (512/16)^2 / 4^2
  EXPECT_EQ(c->connector_input_dim(), 12288);              // 768 * 16: proj.weight is [576, 12288]
  // ids: pad from text_config, bos/eos absent
  EXPECT_EQ(c->pad_token_id, 2);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, -1);
  EXPECT_EQ(c->raw["transformers_version"], "4.46.0");
}

TEST(HfConfig, DefaultsFromTransformers) {
  // Minimal config: every missing field takes transformers' default. The vision defaults (224 / 32 = 7 patches
  // per side) do not divide by scale_factor 2, so give a consistent vision size.
  json j = {{"model_type", "smolvlm"},
            {"image_token_id", 5},
            {"vision_config", {{"image_size", 256}}},
            {"text_config", {{"hidden_size", 256}, {"num_attention_heads", 8}, {"vocab_size", 100}}}};
  auto c = parse_vlm_config(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->scale_factor, 2);
  EXPECT_EQ(c->vision.hidden_size, 1152);
  EXPECT_EQ(c->vision.patch_size, 32);
  EXPECT_EQ(c->vision.num_attention_heads, 16);
  EXPECT_EQ(c->text.num_key_value_heads, 8);     // = num_attention_heads
  EXPECT_EQ(c->text.head_dim, 32);               // = hidden / heads
  EXPECT_EQ(c->text.intermediate_size, 11008);
  EXPECT_EQ(c->text.num_hidden_layers, 32);
  EXPECT_EQ(c->text.max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(c->text.rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c->text.rope_theta, 10000.0f);
  EXPECT_EQ(c->text.hidden_act, "silu");
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->torch_dtype, "");
  EXPECT_EQ(c->pad_token_id, -1);

  // head_dim and num_key_value_heads given as null behave like absent.
  j["text_config"]["head_dim"] = nullptr;
  j["text_config"]["num_key_value_heads"] = nullptr;
  c = parse_vlm_config(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->text.head_dim, 32);
  EXPECT_EQ(c->text.num_key_value_heads, 8);
}

TEST(HfConfig, TieWordEmbeddingsFromEitherLevel) {
  json base = json::parse(kIdefics3Config);
  struct Case { json top; json text; bool text_expect; bool vlm_expect; };
  const Case cases[] = {
      {nullptr, nullptr, false, false}, {true, nullptr, true, true},   {nullptr, true, true, true},
      {false, true, true, true},        {true, false, false, true},    {false, false, false, false},
  };
  for (const auto& cs : cases) {
    json j = base;
    j.erase("tie_word_embeddings");
    j["text_config"].erase("tie_word_embeddings");
    if (!cs.top.is_null()) j["tie_word_embeddings"] = cs.top;
    if (!cs.text.is_null()) j["text_config"]["tie_word_embeddings"] = cs.text;
    auto c = parse_vlm_config(j, "config.json");
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    EXPECT_EQ(c->text.tie_word_embeddings, cs.text_expect) << cs.top << " " << cs.text;
    EXPECT_EQ(c->tie_word_embeddings, cs.vlm_expect) << cs.top << " " << cs.text;
  }
}

TEST(HfConfig, RopeParametersAndTokenIds) {
  json j = json::parse(kIdefics3Config);
  // transformers 5 style.
  j["text_config"].erase("rope_theta");
  j["text_config"]["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  j["dtype"] = "float32";
  j.erase("torch_dtype");
  j["bos_token_id"] = 1;
  j["eos_token_id"] = json::array({2, 49279});
  auto c = parse_vlm_config(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_FLOAT_EQ(c->text.rope_theta, 250000.0f);
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{2, 49279}));
}

TEST(HfConfig, InvalidConfigsAreRejected) {
  struct Case {
    const char* label;
    std::function<void(json&)> edit;
    StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"wrong type", [](json& j) { j["text_config"]["num_attention_heads"] = "9"; }, StatusCode::kCorrupt,
       "config.json: text_config.num_attention_heads: expected integer, got string"},
      {"no model_type", [](json& j) { j.erase("model_type"); }, StatusCode::kCorrupt,
       "config.json: model_type: required field is missing"},
      {"other model", [](json& j) { j["model_type"] = "llava"; }, StatusCode::kUnsupported,
       "config.json: model_type: 'llava' is not supported"},
      {"other text model", [](json& j) { j["text_config"]["model_type"] = "mistral"; }, StatusCode::kUnsupported,
       "config.json: text_config.model_type: text model 'mistral' is not supported"},
      {"zero heads", [](json& j) { j["text_config"]["num_attention_heads"] = 0; }, StatusCode::kCorrupt,
       "config.json: text_config.num_attention_heads: value 0 out of range"},
      {"negative size", [](json& j) { j["vision_config"]["hidden_size"] = -768; }, StatusCode::kCorrupt,
       "config.json: vision_config.hidden_size: value -768 out of range"},
      {"absurd vocab", [](json& j) { j["text_config"]["vocab_size"] = 1000000000; }, StatusCode::kCorrupt,
       "text_config.vocab_size: value 1000000000 out of range"},
      {"hidden % heads", [](json& j) { j["text_config"]["num_attention_heads"] = 7; }, StatusCode::kInvalidArgument,
       "config.json: text_config: hidden_size 576 is not divisible by num_attention_heads 7"},
      {"heads % kv", [](json& j) { j["text_config"]["num_key_value_heads"] = 2; }, StatusCode::kInvalidArgument,
       "num_attention_heads 9 is not divisible by num_key_value_heads 2"},
      {"vision hidden % heads", [](json& j) { j["vision_config"]["num_attention_heads"] = 7; },
       StatusCode::kInvalidArgument, "config.json: vision_config: hidden_size 768 is not divisible"},
      {"image % patch", [](json& j) { j["vision_config"]["patch_size"] = 15; }, StatusCode::kInvalidArgument,
       "image_size 512 is not divisible by patch_size 15"},
      {"scale factor", [](json& j) { j["scale_factor"] = 3; }, StatusCode::kInvalidArgument,
       "1024 patches are not divisible by scale_factor^2 = 9"},
      {"image token", [](json& j) { j["image_token_id"] = 49280; }, StatusCode::kInvalidArgument,
       "image_token_id: 49280 is outside the vocabulary [0, 49280)"},
      {"rope llama3",
       [](json& j) { j["text_config"]["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; },
       StatusCode::kUnsupported, "text_config.rope_scaling: rope type 'llama3' is not supported"},
      {"rope legacy type", [](json& j) { j["text_config"]["rope_scaling"] = {{"type", "linear"}}; },
       StatusCode::kUnsupported, "rope type 'linear' is not supported"},
      {"eps zero", [](json& j) { j["text_config"]["rms_norm_eps"] = 0; }, StatusCode::kInvalidArgument,
       "text_config.rms_norm_eps: must be a positive finite number"},
      {"eps overflow", [](json& j) { j["vision_config"]["layer_norm_eps"] = 1e300; }, StatusCode::kInvalidArgument,
       "vision_config.layer_norm_eps: must be a positive finite number"},
      {"vision not object", [](json& j) { j["vision_config"] = 3; }, StatusCode::kCorrupt,
       "config.json: vision_config: expected object, got integer"},
      {"tie type", [](json& j) { j["tie_word_embeddings"] = "yes"; }, StatusCode::kCorrupt,
       "config.json: tie_word_embeddings: expected boolean, got string"},
      {"architectures", [](json& j) { j["architectures"] = {1}; }, StatusCode::kCorrupt,
       "config.json: architectures[0]: expected string, got integer"},
  };
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.label);
    json j = json::parse(kIdefics3Config);
    cs.edit(j);
    EXPECT_STATUS(parse_vlm_config(j, "config.json"), cs.code, cs.message);
  }
  EXPECT_STATUS(parse_vlm_config(json::array(), "config.json"), StatusCode::kCorrupt,
                "config.json: expected a JSON object, got array");
}

TEST(HfConfig, LoadFromDirectory) {
  TempDir tmp;
  EXPECT_STATUS(load_vlm_config(tmp.path().string()), StatusCode::kNotFound, "config.json: no such file");
  write_text(tmp.file("config.json"), kIdefics3Config);
  auto c = load_vlm_config(tmp.path().string());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->text.hidden_size, 576);
  write_text(tmp.file("config.json"), "{\"model_type\": ");
  EXPECT_STATUS(load_vlm_config(tmp.path().string()), StatusCode::kCorrupt, "config.json: invalid JSON at line 1");
}

TEST(HfConfig, PreprocessorConfig) {
  TempDir tmp;
  // SmolVLM-256M-Instruct-like preprocessor_config.json; image_seq_len lives in processor_config.json.
  write_text(tmp.file("preprocessor_config.json"), R"({
    "do_convert_rgb": true, "do_image_splitting": true, "do_normalize": true, "do_pad": true,
    "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Idefics3ImageProcessor", "image_std": [0.5, 0.5, 0.5],
    "max_image_size": {"longest_edge": 512}, "processor_class": "Idefics3Processor",
    "resample": 1, "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2048}
  })");
  EXPECT_STATUS(load_preprocessor_config(tmp.file("nodir")), StatusCode::kNotFound, "no such file");
  auto p = load_preprocessor_config(tmp.path().string());
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->image_processor_type, "Idefics3ImageProcessor");
  EXPECT_EQ(p->size_longest_edge, 2048);
  EXPECT_EQ(p->max_image_size_longest_edge, 512);
  EXPECT_EQ(p->resample, 1);
  EXPECT_DOUBLE_EQ(p->rescale_factor, 1.0 / 255.0);
  EXPECT_EQ(p->image_seq_len, 0);
  write_text(tmp.file("processor_config.json"), R"({"image_seq_len": 64, "processor_class": "Idefics3Processor"})");
  p = load_preprocessor_config(tmp.path().string());
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->image_seq_len, 64);

  // Defaults, scalar mean broadcast, and errors.
  auto d = parse_preprocessor_config(json::parse(R"({"image_mean": 0.25, "do_pad": false})"), "pp.json");
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->size_longest_edge, 1456);
  EXPECT_EQ(d->max_image_size_longest_edge, 364);
  EXPECT_TRUE(d->do_image_splitting);
  EXPECT_FALSE(d->do_pad);
  EXPECT_EQ(d->image_mean, (std::array<float, 3>{0.25f, 0.25f, 0.25f}));
  EXPECT_EQ(d->image_std, (std::array<float, 3>{0.5f, 0.5f, 0.5f}));
  EXPECT_STATUS(parse_preprocessor_config(json::parse(R"({"size": {"height": 3, "width": 4}})"), "pp.json"),
                StatusCode::kUnsupported, "pp.json: size: only {\"longest_edge\": N} is supported");
  EXPECT_STATUS(parse_preprocessor_config(json::parse(R"({"image_std": [0.5, 0, 0.5]})"), "pp.json"),
                StatusCode::kInvalidArgument, "pp.json: image_std: values must be positive");
  EXPECT_STATUS(parse_preprocessor_config(json::parse(R"({"image_mean": [0.5, 0.5]})"), "pp.json"),
                StatusCode::kCorrupt, "pp.json: image_mean: expected 3 values");
  EXPECT_STATUS(parse_preprocessor_config(json::parse(R"({"resample": 9})"), "pp.json"), StatusCode::kCorrupt,
                "pp.json: resample: value 9 out of range [0, 5]");
}

TEST(HfConfig, TokenizerConfig) {
  TempDir tmp;
  write_text(tmp.file("tokenizer_config.json"), R"({
    "add_prefix_space": false,
    "added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": true}},
    "additional_special_tokens": ["<fake_token_around_image>", {"content": "<image>", "special": true}],
    "bos_token": {"content": "<|im_start|>", "lstrip": false, "normalized": false},
    "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    "clean_up_tokenization_spaces": false,
    "eos_token": "<end_of_utterance>",
    "model_max_length": 1000000000000000019884624838656,
    "tokenizer_class": "GPT2Tokenizer"
  })");
  auto t = load_tokenizer_config(tmp.path().string());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->tokenizer_class, "GPT2Tokenizer");
  EXPECT_EQ(t->bos_token, "<|im_start|>");
  EXPECT_EQ(t->eos_token, "<end_of_utterance>");
  EXPECT_EQ(t->pad_token, "");
  EXPECT_EQ(t->chat_template, "D");
  EXPECT_EQ(t->chat_template_source, tmp.file("tokenizer_config.json"));
  EXPECT_EQ(t->additional_special_tokens,
            (std::vector<std::string>{"<fake_token_around_image>", "<image>"}));
  EXPECT_EQ(t->clean_up_tokenization_spaces, std::optional<bool>(false));
  EXPECT_FALSE(t->add_bos_token.has_value());
  EXPECT_EQ(t->model_max_length, -1);

  // special_tokens_map.json fills what tokenizer_config.json lacks; chat_template.json then .jinja override.
  write_text(tmp.file("special_tokens_map.json"), R"({"pad_token": {"content": "<|im_end|>"}, "eos_token": "X"})");
  write_text(tmp.file("chat_template.json"), R"({"chat_template": "from json"})");
  t = load_tokenizer_config(tmp.path().string());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->pad_token, "<|im_end|>");
  EXPECT_EQ(t->eos_token, "<end_of_utterance>");
  EXPECT_EQ(t->chat_template, "from json");
  EXPECT_EQ(t->chat_template_source, tmp.file("chat_template.json"));
  write_text(tmp.file("chat_template.jinja"), "{{ from_jinja }}\n");
  t = load_tokenizer_config(tmp.path().string());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->chat_template, "{{ from_jinja }}\n");

  auto s = parse_tokenizer_config(json::parse(R"({"model_max_length": 8192, "add_bos_token": true})"), "tc.json");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->model_max_length, 8192);
  EXPECT_EQ(s->add_bos_token, std::optional<bool>(true));
  EXPECT_STATUS(parse_tokenizer_config(json::parse(R"({"eos_token": 5})"), "tc.json"), StatusCode::kCorrupt,
                "tc.json: eos_token: expected string or {\"content\": ...}, got integer");
  EXPECT_STATUS(parse_tokenizer_config(json::parse(R"({"chat_template": [{"name": "x"}]})"), "tc.json"),
                StatusCode::kCorrupt, "tc.json: chat_template[0]: expected");
}

// ---- fixtures (written by train/make_golden.py; skipped until they exist) ----

std::string fixture(const std::string& rel) { return std::string(EDGEVLM_FIXTURE_DIR) + "/" + rel; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Checks a tiny fixture model directory against the sizes stated in notes/fixtures.md.
void check_tiny_model(const std::string& name, bool expect_tied, DType weight_dtype, bool expect_sharded) {
  const std::string dir = fixture(name);
  if (!fs::exists(dir + "/config.json")) GTEST_SKIP() << dir << "/config.json not present yet";
  auto c = load_vlm_config(dir);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->vision.image_size, 64);
  EXPECT_EQ(c->vision.patch_size, 8);
  EXPECT_EQ(c->vision.hidden_size, 64);
  EXPECT_EQ(c->vision.num_hidden_layers, 2);
  EXPECT_EQ(c->vision.num_attention_heads, 4);
  EXPECT_EQ(c->scale_factor, 2);
  EXPECT_EQ(c->image_tokens_per_tile(), 16);
  EXPECT_EQ(c->text.hidden_size, 64);
  EXPECT_EQ(c->text.num_hidden_layers, 2);
  EXPECT_EQ(c->text.num_attention_heads, 4);
  EXPECT_EQ(c->text.num_key_value_heads, 2);
  EXPECT_EQ(c->text.head_dim, 16);

  auto s = TensorStore::open_dir(dir);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->files().size() > 1, expect_sharded);
  // Every tensor maps and views correctly.
  int n_weight_dtype = 0;
  for (const auto& n : s->names()) {
    auto t = s->get(n);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    if (t->dtype() == weight_dtype) ++n_weight_dtype;
  }
  EXPECT_GT(n_weight_dtype, 0);
  // Embedding, connector projection and the (un)tied head, found by suffix so a renamed prefix does not matter.
  std::string embed, proj;
  for (const auto& n : s->names()) {
    if (ends_with(n, "embed_tokens.weight")) embed = n;
    if (ends_with(n, "connector.modality_projection.proj.weight")) proj = n;
  }
  ASSERT_FALSE(embed.empty());
  EXPECT_TRUE(s->get(embed, Shape{c->text.vocab_size, c->text.hidden_size}, {weight_dtype}).ok());
  ASSERT_FALSE(proj.empty());
  auto pw = s->get(proj, Shape{c->text.hidden_size, c->connector_input_dim()}, {weight_dtype});
  EXPECT_TRUE(pw.ok()) << pw.status().to_string();
  EXPECT_EQ(c->tie_word_embeddings, expect_tied);
  // An untied head must be stored; a tied one usually is not (save_pretrained drops the duplicate).
  if (!expect_tied) {
    EXPECT_TRUE(s->has("lm_head.weight"));
  }

  auto p = load_preprocessor_config(dir);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->size_longest_edge, 192);
  EXPECT_EQ(p->max_image_size_longest_edge, 64);
  if (p->image_seq_len) {
    EXPECT_EQ(p->image_seq_len, c->image_tokens_per_tile());
  }

  auto t = load_tokenizer_config(dir);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_FALSE(t->chat_template.empty());
}

TEST(Fixtures, TinyIdefics3) { check_tiny_model("tiny-idefics3", true, DType::kBF16, false); }
TEST(Fixtures, TinySmolVlm) { check_tiny_model("tiny-smolvlm", false, DType::kF32, true); }

TEST(Fixtures, GoldenTensorFilesLoad) {
  const std::string dir = fixture("golden");
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  if (files.empty()) GTEST_SKIP() << "no golden .safetensors under " << dir << " yet";
  for (const auto& f : files) {
    auto s = TensorStore::open_file(f);
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    for (const auto& n : s->names()) {
      auto t = s->get(n);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      EXPECT_TRUE(t->dtype() == DType::kF32 || t->dtype() == DType::kI64 || t->dtype() == DType::kI32)
          << f << ": " << n << " is " << dtype_name(t->dtype());
    }
  }
}

}  // namespace
}  // namespace ev
