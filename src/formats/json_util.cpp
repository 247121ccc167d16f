#include "formats/json_util.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

namespace ev {

using nlohmann::json;

namespace {

// nlohmann's messages start with "[json.exception.parse_error.101] "; the tag means nothing to a user.
std::string strip_exception_tag(const char* what) {
  std::string s(what);
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  return s;
}

// Deepest bracket nesting of JSON text, ignoring brackets inside strings. O(n), no allocation.
int max_nesting(std::string_view text) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) max_depth = depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

}  // namespace

const char* json_type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::object: return "object";
    case json::value_t::array: return "array";
    case json::value_t::string: return "string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "float";
    case json::value_t::boolean: return "boolean";
    case json::value_t::null: return "null";
    case json::value_t::binary: return "binary";
    case json::value_t::discarded: return "discarded";
  }
  return "unknown";
}

Result<std::string> read_text_file(const std::string& path, size_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    if (err == ENOENT) return NotFound(path + ": no such file");
    return IoError(path + ": cannot open: " + std::strerror(err));
  }
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (out.size() + n > max_bytes) {
      std::fclose(f);
      return Corrupt(path + ": file larger than " + std::to_string(max_bytes) + " bytes");
    }
    out.append(buf, n);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return IoError(path + ": read error");
  return out;
}

Result<json> parse_json(std::string_view text, const std::string& source_name) {
  if (max_nesting(text) > kMaxJsonDepth)
    return Corrupt(source_name + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // Line / column of the failing byte (e.byte is 1-based; clamp for errors reported at end of input).
    size_t pos = e.byte > 0 ? e.byte - 1 : 0;
    if (pos > text.size()) pos = text.size();
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    // nlohmann's text repeats the position ("parse error at line 1, column 3: syntax error ..."); keep the rest.
    std::string what = strip_exception_tag(e.what());
    const size_t colon = what.find(": ");
    if (what.rfind("parse error", 0) == 0 && colon != std::string::npos) what = what.substr(colon + 2);
    return Corrupt(source_name + ": invalid JSON at line " + std::to_string(line) + ", column " +
                   std::to_string(col) + " (byte " + std::to_string(e.byte) + "): " + what);
  } catch (const std::exception& e) {
    return Corrupt(source_name + ": invalid JSON: " + strip_exception_tag(e.what()));
  }
}

Result<json> read_json_file(const std::string& path) {
  EV_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_json(text, path);
}

Result<int64_t> json_to_int(const json& v, const std::string& where) {
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return Corrupt(where + ": integer " + std::to_string(u) + " too large");
    return static_cast<int64_t>(u);
  }
  return Corrupt(where + ": expected integer, got " + json_type_name(v));
}

// ---- JsonView ----

const json* JsonView::field(std::string_view key) const {
  if (!j_->is_object()) return nullptr;
  auto it = j_->find(key);
  if (it == j_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonView::has(std::string_view key) const { return field(key) != nullptr; }

std::string JsonView::where(std::string_view key) const {
  std::string p = path_;
  if (!key.empty()) {
    if (!p.empty()) p += '.';
    p.append(key);
  }
  if (p.empty()) return source_;
  return source_ + ": " + p;
}

Status JsonView::error(std::string_view key, const std::string& what) const {
  return Corrupt(where(key) + ": " + what);
}

Result<const json*> JsonView::typed(std::string_view key, bool (*pred)(const json&), const char* expected) const {
  if (!j_->is_object()) return error({}, std::string("expected object, got ") + json_type_name(*j_));
  const json* v = field(key);
  if (!v) return error(key, "required field is missing");
  if (!pred(*v)) return error(key, std::string("expected ") + expected + ", got " + json_type_name(*v));
  return v;
}

Result<int64_t> JsonView::get_int(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_number_integer(); }, "integer"));
  return json_to_int(*v, where(key));
}

Result<int64_t> JsonView::get_int(std::string_view key, int64_t def) const {
  if (!has(key)) return def;
  return get_int(key);
}

Result<int> JsonView::get_int32(std::string_view key, int lo, int hi) const {
  EV_ASSIGN_OR_RETURN(int64_t v, get_int(key));
  if (v < lo || v > hi)
    return error(key, "value " + std::to_string(v) + " out of range [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
  return static_cast<int>(v);
}

Result<int> JsonView::get_int32(std::string_view key, int def, int lo, int hi) const {
  if (!has(key)) return def;
  return get_int32(key, lo, hi);
}

Result<double> JsonView::get_number(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_number(); }, "number"));
  return v->get<double>();
}

Result<double> JsonView::get_number(std::string_view key, double def) const {
  if (!has(key)) return def;
  return get_number(key);
}

Result<bool> JsonView::get_bool(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_boolean(); }, "boolean"));
  return v->get<bool>();
}

Result<bool> JsonView::get_bool(std::string_view key, bool def) const {
  if (!has(key)) return def;
  return get_bool(key);
}

Result<std::string> JsonView::get_string(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_string(); }, "string"));
  return v->get<std::string>();
}

Result<std::string> JsonView::get_string(std::string_view key, const std::string& def) const {
  if (!has(key)) return def;
  return get_string(key);
}

Result<JsonView> JsonView::get_object(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_object(); }, "object"));
  std::string p = path_;
  if (!p.empty()) p += '.';
  p.append(key);
  return JsonView(*v, source_, p);
}

Result<std::optional<JsonView>> JsonView::get_object_opt(std::string_view key) const {
  if (!has(key)) return std::optional<JsonView>();
  EV_ASSIGN_OR_RETURN(JsonView v, get_object(key));
  return std::optional<JsonView>(std::move(v));
}

Result<std::vector<int64_t>> JsonView::get_int_array(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_array(); }, "array"));
  std::vector<int64_t> out;
  out.reserve(v->size());
  for (size_t i = 0; i < v->size(); ++i) {
    EV_ASSIGN_OR_RETURN(int64_t x, json_to_int((*v)[i], where(key) + "[" + std::to_string(i) + "]"));
    out.push_back(x);
  }
  return out;
}

Result<std::vector<double>> JsonView::get_number_array(std::string_view key) const {
  EV_ASSIGN_OR_RETURN(const json* v, typed(key, [](const json& x) { return x.is_array(); }, "array"));
  std::vector<double> out;
  out.reserve(v->size());
  for (size_t i = 0; i < v->size(); ++i) {
    const json& x = (*v)[i];
    if (!x.is_number())
      return Corrupt(where(key) + "[" + std::to_string(i) + "]: expected number, got " + json_type_name(x));
    out.push_back(x.get<double>());
  }
  return out;
}

}  // namespace ev
