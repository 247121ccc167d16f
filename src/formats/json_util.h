// JSON helpers over nlohmann::json that never throw: reading a file, and typed field access that turns a
// missing field or a wrong type into a Status naming the file and the field path, e.g.
//   "config.json: text_config.num_attention_heads: expected integer, got string".
//
// Status codes used here:
//   kNotFound  the file does not exist
//   kIoError   the file exists but cannot be read
//   kCorrupt   the text is not JSON, a required field is missing, or a field has the wrong type / range
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace ev {

// Reads and parses a JSON file. Errors name the file and, for syntax errors, the byte offset / line.
// Files larger than 1 GiB are refused (kCorrupt) rather than read into memory.
Result<nlohmann::json> read_json_file(const std::string& path);

// Parses JSON text; `source_name` is used in error messages ("config.json", "<memory>"). Nesting deeper than
// kMaxJsonDepth is refused before parsing: nlohmann's parser is iterative, but copying and dumping a json value
// recurse, so a hostile file of 100k '[' could otherwise overflow the stack later.
constexpr int kMaxJsonDepth = 256;
Result<nlohmann::json> parse_json(std::string_view text, const std::string& source_name);

// Reads a whole (small) text file. kNotFound when absent, kIoError when unreadable.
Result<std::string> read_text_file(const std::string& path, size_t max_bytes = size_t{1} << 30);

// "object", "array", "string", "integer", "float", "boolean", "null".
const char* json_type_name(const nlohmann::json& j);

// A non-owning view of a JSON object plus where it came from, for error messages. `source` is the file name
// ("config.json"), `path` the dotted path of this object inside it ("text_config", or "" at the root).
// The viewed json must outlive the view.
//
// Getters with a default return the default when the field is absent or null (Python's None: transformers
// treats `"head_dim": null` like an absent field). Getters without one return kCorrupt when it is absent.
// Integer getters accept JSON integers only (64.0 is refused: configs are written by Python's json module,
// which writes ints as ints); number getters accept integers and floats.
class JsonView {
 public:
  JsonView(const nlohmann::json& j, std::string source, std::string path = "")
      : j_(&j), source_(std::move(source)), path_(std::move(path)) {}

  const nlohmann::json& node() const { return *j_; }
  const std::string& source() const { return source_; }
  const std::string& path() const { return path_; }
  bool is_object() const { return j_->is_object(); }

  // True when the field exists and is not null.
  bool has(std::string_view key) const;
  // "config.json: text_config.num_attention_heads" (or "config.json: text_config" for key "").
  std::string where(std::string_view key = {}) const;
  // kCorrupt Status "<where(key)>: <what>".
  Status error(std::string_view key, const std::string& what) const;

  Result<int64_t> get_int(std::string_view key) const;
  Result<int64_t> get_int(std::string_view key, int64_t def) const;
  // Range-checked into [lo, hi] (kCorrupt "...: value 5000000000 out of range [1, 2147483647]").
  Result<int> get_int32(std::string_view key, int lo, int hi) const;
  Result<int> get_int32(std::string_view key, int def, int lo, int hi) const;
  Result<double> get_number(std::string_view key) const;
  Result<double> get_number(std::string_view key, double def) const;
  Result<bool> get_bool(std::string_view key) const;
  Result<bool> get_bool(std::string_view key, bool def) const;
  Result<std::string> get_string(std::string_view key) const;
  Result<std::string> get_string(std::string_view key, const std::string& def) const;
  // Required / optional sub-object. The optional form yields std::nullopt when absent or null.
  Result<JsonView> get_object(std::string_view key) const;
  Result<std::optional<JsonView>> get_object_opt(std::string_view key) const;
  // Arrays of numbers (a bare number is not an array and is refused).
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  Result<std::vector<double>> get_number_array(std::string_view key) const;

 private:
  const nlohmann::json* field(std::string_view key) const;  // nullptr when absent or null
  Result<const nlohmann::json*> typed(std::string_view key, bool (*pred)(const nlohmann::json&),
                                      const char* expected) const;

  const nlohmann::json* j_;
  std::string source_;
  std::string path_;
};

// Converts one JSON value that must be an integer (not a float). Used by JsonView and by callers walking
// arrays; `where` names the value in the error message.
Result<int64_t> json_to_int(const nlohmann::json& v, const std::string& where);

}  // namespace ev
