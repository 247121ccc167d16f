// Jinja2 subset for chat templates. Behaviour follows jinja2 3.1 (lexer.py, parser.py, runtime.py, filters.py,
// tests.py, sandbox.py) with transformers' environment settings; see jinja.h.
#include "text/jinja.h"

#include <algorithm>
#include <charconv>
#include <clocale>
#include <cmath>
#include <cstring>
#include <ctime>
#include <cwctype>
#include <limits>
#include <locale.h>
#include <unordered_map>

#include "text/unicode.h"

namespace ev::text::jinja {

// ============================================================================================ values

Value Value::undefined(std::string name) {
  Value v;
  v.s_ = std::move(name);
  return v;
}
Value Value::none() {
  Value v;
  v.type_ = Type::kNone;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.type_ = Type::kBool;
  v.b_ = b;
  v.i_ = b ? 1 : 0;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.type_ = Type::kInt;
  v.i_ = i;
  return v;
}
Value Value::number(double f) {
  Value v;
  v.type_ = Type::kFloat;
  v.f_ = f;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.type_ = Type::kString;
  v.s_ = std::move(s);
  return v;
}
Value Value::list(List items, bool tuple) {
  Value v;
  v.type_ = Type::kList;
  v.tuple_ = tuple;
  v.list_ = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::dict(std::shared_ptr<Dict> d) {
  Value v;
  v.type_ = Type::kDict;
  v.dict_ = std::move(d);
  return v;
}
Value Value::func(std::shared_ptr<Callable> f) {
  Value v;
  v.type_ = Type::kFunc;
  v.fn_ = std::move(f);
  return v;
}

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : entries)
    if (k == key) {
      old = std::move(v);
      return;
    }
  entries.emplace_back(key, std::move(v));
}

namespace {

// Thrown inside parse/render only; turned into a Status at the Template boundary.
struct TplError {
  std::string message;
  int line = 0, col = 0;
};

[[noreturn]] void throw_error(const std::string& m, int line = 0, int col = 0) { throw TplError{m, line, col}; }

constexpr size_t kMaxOutput = size_t{256} << 20;  // runaway-template guard (256 MiB)
constexpr int kMaxDepth = 200;                      // expression nesting / macro recursion

const char* type_name(const Value& v) {
  switch (v.type()) {
    case Value::Type::kUndefined: return "Undefined";
    case Value::Type::kNone: return "NoneType";
    case Value::Type::kBool: return "bool";
    case Value::Type::kInt: return "int";
    case Value::Type::kFloat: return "float";
    case Value::Type::kString: return "str";
    case Value::Type::kList: return v.is_tuple() ? "tuple" : "list";
    case Value::Type::kDict: return v.dict_ptr()->is_namespace ? "Namespace" : "dict";
    case Value::Type::kFunc: return "function";
  }
  return "object";
}

[[noreturn]] void undefined_error(const Value& v) {
  if (v.undefined_name().empty()) throw_error("undefined value used");
  throw_error(v.undefined_name());
}

bool truthy(const Value& v) {
  switch (v.type()) {
    case Value::Type::kUndefined:
    case Value::Type::kNone: return false;
    case Value::Type::kBool: return v.b();
    case Value::Type::kInt: return v.i() != 0;
    case Value::Type::kFloat: return v.f() != 0.0;
    case Value::Type::kString: return !v.s().empty();
    case Value::Type::kList: return !v.items().empty();
    case Value::Type::kDict: return v.dict_ptr()->is_namespace || !v.dict_ptr()->entries.empty();
    case Value::Type::kFunc: return true;
  }
  return false;
}

double as_double(const Value& v) { return v.type() == Value::Type::kFloat ? v.f() : static_cast<double>(v.i()); }

// ---- Unicode case mapping (Python str.upper/lower for the BMP letters the C.UTF-8 locale knows)

locale_t utf8_locale() {
  static locale_t loc = [] {
    locale_t l = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
    if (!l) l = newlocale(LC_CTYPE_MASK, "C.utf8", static_cast<locale_t>(0));
    return l;
  }();
  return loc;
}

uint32_t cp_upper(uint32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  locale_t l = utf8_locale();
  return l ? static_cast<uint32_t>(towupper_l(static_cast<wint_t>(c), l)) : c;
}
uint32_t cp_lower(uint32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  locale_t l = utf8_locale();
  return l ? static_cast<uint32_t>(towlower_l(static_cast<wint_t>(c), l)) : c;
}
bool cp_is_alpha(uint32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  locale_t l = utf8_locale();
  return l && iswalpha_l(static_cast<wint_t>(c), l);
}
bool cp_is_upper(uint32_t c) { return cp_lower(c) != c; }
bool cp_is_lower(uint32_t c) { return cp_upper(c) != c; }

std::vector<uint32_t> to_cps(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) out.push_back(utf8_next(s, i));
  return out;
}
std::string from_cps(const std::vector<uint32_t>& cps, size_t b = 0, size_t e = std::string::npos) {
  std::string out;
  e = std::min(e, cps.size());
  for (size_t k = b; k < e; ++k) append_utf8(out, cps[k]);
  return out;
}

std::string str_upper(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) append_utf8(out, cp_upper(utf8_next(s, i)));
  return out;
}
std::string str_lower(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) append_utf8(out, cp_lower(utf8_next(s, i)));
  return out;
}
std::string str_capitalize(const std::string& s) {
  std::string out;
  size_t i = 0;
  bool first = true;
  while (i < s.size()) {
    const uint32_t c = utf8_next(s, i);
    append_utf8(out, first ? cp_upper(c) : cp_lower(c));
    first = false;
  }
  return out;
}
// Python str.title(): a letter after a non-letter is upper-cased, the others lower-cased.
std::string str_title_method(const std::string& s) {
  std::string out;
  size_t i = 0;
  bool prev_cased = false;
  while (i < s.size()) {
    const uint32_t c = utf8_next(s, i);
    append_utf8(out, prev_cased ? cp_lower(c) : cp_upper(c));
    prev_cased = cp_is_alpha(c);
  }
  return out;
}
// jinja2 filters.do_title: words start after runs of -, whitespace, ( { [ <.
std::string str_title_filter(const std::string& s) {
  std::string out;
  size_t i = 0;
  bool at_start = true;
  while (i < s.size()) {
    const uint32_t c = utf8_next(s, i);
    const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_python_whitespace(c);
    if (sep) {
      append_utf8(out, c);
      at_start = true;
    } else {
      append_utf8(out, at_start ? cp_upper(c) : cp_lower(c));
      at_start = false;
    }
  }
  return out;
}

bool in_chars(uint32_t c, const std::vector<uint32_t>* chars) {
  if (!chars) return is_python_whitespace(c);
  return std::find(chars->begin(), chars->end(), c) != chars->end();
}
std::string str_strip(const std::string& s, bool left, bool right, const std::vector<uint32_t>* chars = nullptr) {
  const auto cps = to_cps(s);
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && in_chars(cps[b], chars)) ++b;
  if (right)
    while (e > b && in_chars(cps[e - 1], chars)) --e;
  return from_cps(cps, b, e);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count = -1) {
  if (from.empty()) {
    // Python inserts `to` between every character (and at both ends).
    const auto cps = to_cps(s);
    std::string out;
    int64_t n = 0;
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      if (k < cps.size()) append_utf8(out, cps[k]);
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
    ++n;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// ---- str() / repr()

std::string repr_string(const std::string& s) {
  // Python picks single quotes unless the text has a single quote and no double quote.
  const bool has_sq = s.find('\'') != std::string::npos, has_dq = s.find('"') != std::string::npos;
  const char q = (has_sq && !has_dq) ? '"' : '\'';
  std::string out(1, q);
  size_t i = 0;
  while (i < s.size()) {
    const uint32_t c = utf8_next(s, i);
    if (c == static_cast<uint32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F || (c >= 0x80 && c < 0xA0) || c == 0xAD) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else if (c == 0x2028 || c == 0x2029 || (c >= 0xD800 && c <= 0xDFFF)) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      append_utf8(out, c);
    }
  }
  out += q;
  return out;
}

}  // namespace

std::string python_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0.0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci = [-]D[.DDD]e(+|-)XX : split digits and exponent.
  bool neg = false;
  size_t p = 0;
  if (sci[0] == '-') {
    neg = true;
    p = 1;
  }
  const size_t epos = sci.find('e');
  std::string digits;
  for (size_t k = p; k < epos; ++k)
    if (sci[k] != '.') digits += sci[k];
  const int exp = std::stoi(sci.substr(epos + 1));
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      const size_t int_len = static_cast<size_t>(exp) + 1;
      if (digits.size() <= int_len) {
        out += digits + std::string(int_len - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_len) + "." + digits.substr(int_len);
      }
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return out;
}

std::string to_repr(const Value& v) {
  switch (v.type()) {
    case Value::Type::kString: return repr_string(v.s());
    case Value::Type::kList: {
      std::string out = v.is_tuple() ? "(" : "[";
      for (size_t k = 0; k < v.items().size(); ++k) {
        if (k) out += ", ";
        out += to_repr(v.items()[k]);
      }
      if (v.is_tuple() && v.items().size() == 1) out += ",";
      out += v.is_tuple() ? ")" : "]";
      return out;
    }
    case Value::Type::kDict: {
      const Dict& d = *v.dict_ptr();
      std::string out = d.is_namespace ? "<Namespace {" : "{";
      for (size_t k = 0; k < d.entries.size(); ++k) {
        if (k) out += ", ";
        out += repr_string(d.entries[k].first) + ": " + to_repr(d.entries[k].second);
      }
      out += d.is_namespace ? "}>" : "}";
      return out;
    }
    default: return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.type()) {
    case Value::Type::kUndefined: return "";
    case Value::Type::kNone: return "None";
    case Value::Type::kBool: return v.b() ? "True" : "False";
    case Value::Type::kInt: return std::to_string(v.i());
    case Value::Type::kFloat: return python_float_repr(v.f());
    case Value::Type::kString: return v.s();
    case Value::Type::kFunc: return "<function " + v.func_ptr()->name + ">";
    default: return to_repr(v);
  }
}

namespace {

// ---- json.dumps(ensure_ascii=False)

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void json_dump(std::string& out, const Value& v, int indent, bool sort_keys, const std::string& item_sep,
               const std::string& key_sep, int level) {
  const auto newline = [&](int lvl) {
    out += '\n';
    out.append(static_cast<size_t>(indent) * static_cast<size_t>(lvl), ' ');
  };
  switch (v.type()) {
    case Value::Type::kNone: out += "null"; return;
    case Value::Type::kBool: out += v.b() ? "true" : "false"; return;
    case Value::Type::kInt: out += std::to_string(v.i()); return;
    case Value::Type::kFloat:
      if (std::isnan(v.f())) out += "NaN";
      else if (std::isinf(v.f())) out += v.f() < 0 ? "-Infinity" : "Infinity";
      else out += python_float_repr(v.f());
      return;
    case Value::Type::kString: json_string(out, v.s()); return;
    case Value::Type::kList: {
      if (v.items().empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.items().size(); ++k) {
        if (k) out += item_sep;
        if (indent >= 0) newline(level + 1);
        json_dump(out, v.items()[k], indent, sort_keys, item_sep, key_sep, level + 1);
      }
      if (indent >= 0) newline(level);
      out += ']';
      return;
    }
    case Value::Type::kDict: {
      if (v.dict_ptr()->is_namespace) throw_error("Object of type Namespace is not JSON serializable");
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.dict_ptr()->entries) entries.push_back(&e);
      if (sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
      if (entries.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t k = 0; k < entries.size(); ++k) {
        if (k) out += item_sep;
        if (indent >= 0) newline(level + 1);
        json_string(out, entries[k]->first);
        out += key_sep;
        json_dump(out, entries[k]->second, indent, sort_keys, item_sep, key_sep, level + 1);
      }
      if (indent >= 0) newline(level);
      out += '}';
      return;
    }
    case Value::Type::kUndefined: throw_error("Object of type Undefined is not JSON serializable");
    case Value::Type::kFunc: throw_error("Object of type function is not JSON serializable");
  }
}

// ============================================================================================ lexer

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string text;  // text / name / string value / operator
  int64_t ival = 0;
  double fval = 0.0;
  int line = 0, col = 0;
};

// Python str.splitlines() boundaries, so that the source can be normalised as jinja2's lexer does
// ("\n".join(source.splitlines()), dropping one trailing newline since keep_trailing_newline is off).
std::string normalize_newlines(const std::string& src) {
  std::string out;
  out.reserve(src.size());
  size_t i = 0;
  bool ended_with_break = false;
  while (i < src.size()) {
    const size_t at = i;
    const uint32_t c = utf8_next(src, i);
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
                     c == 0x85 || c == 0x2028 || c == 0x2029;
    if (brk) {
      if (c == '\r' && i < src.size() && src[i] == '\n') ++i;
      out += '\n';
      ended_with_break = true;
    } else {
      out.append(src, at, i - at);
      ended_with_break = false;
    }
  }
  if (ended_with_break) out.pop_back();
  return out;
}

bool is_ws_at(const std::string& s, size_t pos, size_t* len) {
  size_t i = pos;
  const uint32_t c = utf8_next(s, i);
  *len = i - pos;
  return is_python_whitespace(c);
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {
    line_starts_.push_back(0);
    for (size_t k = 0; k < src_.size(); ++k)
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    const size_t n = src_.size();
    bool strip_ws = false, trim_nl = false;
    while (true) {
      if (strip_ws) {
        size_t len = 0;
        while (pos < n && is_ws_at(src_, pos, &len)) pos += len;
      } else if (trim_nl && pos < n && src_[pos] == '\n') {
        ++pos;
      }
      strip_ws = trim_nl = false;
      const bool line_starting = pos == 0 || src_[pos - 1] == '\n';
      size_t tag = pos;
      while (true) {
        tag = src_.find('{', tag);
        if (tag == std::string::npos || tag + 1 >= n) {
          tag = std::string::npos;
          break;
        }
        const char k = src_[tag + 1];
        if (k == '{' || k == '%' || k == '#') break;
        ++tag;
      }
      std::string text = src_.substr(pos, (tag == std::string::npos ? n : tag) - pos);
      if (tag == std::string::npos) {
        emit_text(text, pos);
        break;
      }
      const char kind = src_[tag + 1];
      char sign = tag + 2 < n ? src_[tag + 2] : 0;
      if (sign != '-' && sign != '+') sign = 0;
      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop spaces/tabs between the line start and a block or comment tag.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() && all_ws(text, l_pos)) text.resize(l_pos);
      }
      emit_text(text, pos);
      const size_t body = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        const size_t end = src_.find("#}", body);
        if (end == std::string::npos) fail_at("missing end of comment tag", tag);
        const char before = end > body ? src_[end - 1] : 0;
        pos = end + 2;
        if (before == '-') strip_ws = true;
        else if (before != '+') trim_nl = true;
        continue;
      }
      if (kind == '%') {
        size_t raw_body_begin = 0;
        char raw_end_sign = 0;
        if (match_block_word(body, "raw", &raw_body_begin, &raw_end_sign)) {
          pos = lex_raw(tag, raw_body_begin, raw_end_sign, &strip_ws, &trim_nl);
          continue;
        }
      }
      push(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", tag);
      pos = lex_tag(body, kind, &strip_ws, &trim_nl, tag);
    }
    push(Tok::kEof, "", n);
    return std::move(out_);
  }

  void position(size_t pos, int* line, int* col) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    const size_t li = static_cast<size_t>(it - line_starts_.begin()) - 1;
    *line = static_cast<int>(li) + 1;
    *col = static_cast<int>(utf8_length(std::string_view(src_).substr(line_starts_[li], pos - line_starts_[li]))) + 1;
  }

 private:
  [[noreturn]] void fail_at(const std::string& m, size_t pos) {
    int line, col;
    position(pos, &line, &col);
    throw_error(m, line, col);
  }

  void push(Tok t, std::string text, size_t pos) {
    Token tok;
    tok.type = t;
    tok.text = std::move(text);
    position(pos, &tok.line, &tok.col);
    out_.push_back(std::move(tok));
  }
  void emit_text(const std::string& text, size_t pos) {
    if (!text.empty()) push(Tok::kText, text, pos);
  }

  static std::string rstrip_ws(const std::string& s) {
    const auto cps = to_cps(s);
    size_t e = cps.size();
    while (e > 0 && is_python_whitespace(cps[e - 1])) --e;
    return from_cps(cps, 0, e);
  }
  static bool all_ws(const std::string& s, size_t from) {
    size_t i = from;
    while (i < s.size())
      if (!is_python_whitespace(utf8_next(s, i))) return false;
    return true;
  }

  size_t skip_ws(size_t p) const {
    size_t len = 0;
    while (p < src_.size() && is_ws_at(src_, p, &len)) p += len;
    return p;
  }

  // `{% <word> [-+]%}` starting at body: true when the tag is exactly that word; *after = position after
  // the tag, *end_sign = '-' / '+' / 0.
  bool match_block_word(size_t body, const char* word, size_t* after, char* end_sign) const {
    size_t p = skip_ws(body);
    const size_t wl = std::strlen(word);
    if (src_.compare(p, wl, word) != 0) return false;
    p += wl;
    if (p < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[p])) || src_[p] == '_')) return false;
    p = skip_ws(p);
    char sign = 0;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
    if (src_.compare(p, 2, "%}") != 0) return false;
    *after = p + 2;
    *end_sign = sign;
    return true;
  }

  size_t lex_raw(size_t tag, size_t after_begin, char begin_end_sign, bool* strip_ws, bool* trim_nl) {
    size_t p = after_begin;
    if (begin_end_sign == '-') p = skip_ws(p);
    else if (begin_end_sign != '+' && p < src_.size() && src_[p] == '\n') ++p;
    size_t search = p;
    while (true) {
      const size_t t = src_.find("{%", search);
      if (t == std::string::npos) fail_at("missing end of raw directive", tag);
      size_t b = t + 2;
      char sign = 0;
      if (b < src_.size() && (src_[b] == '-' || src_[b] == '+')) sign = src_[b++];
      size_t after = 0;
      char end_sign = 0;
      if (match_block_word(b, "endraw", &after, &end_sign)) {
        std::string text = src_.substr(p, t - p);
        if (sign == '-') text = rstrip_ws(text);
        emit_text(text, p);
        if (end_sign == '-') *strip_ws = true;
        else if (end_sign != '+') *trim_nl = true;
        return after;
      }
      search = t + 2;
    }
  }

  // Expression tokens until the tag's end delimiter at bracket depth 0.
  size_t lex_tag(size_t p, char kind, bool* strip_ws, bool* trim_nl, size_t tag) {
    const size_t n = src_.size();
    int depth = 0;
    while (true) {
      p = skip_ws(p);
      if (p >= n) fail_at(kind == '{' ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'", tag);
      if (depth == 0) {
        if (kind == '{') {
          if (src_.compare(p, 3, "-}}") == 0) {
            push(Tok::kVarEnd, "", p);
            *strip_ws = true;
            return p + 3;
          }
          if (src_.compare(p, 2, "}}") == 0) {
            push(Tok::kVarEnd, "", p);
            return p + 2;
          }
        } else {
          if (src_.compare(p, 3, "-%}") == 0) {
            push(Tok::kBlockEnd, "", p);
            *strip_ws = true;
            return p + 3;
          }
          if (src_.compare(p, 3, "+%}") == 0) {
            push(Tok::kBlockEnd, "", p);
            return p + 3;
          }
          if (src_.compare(p, 2, "%}") == 0) {
            push(Tok::kBlockEnd, "", p);
            *trim_nl = true;
            return p + 2;
          }
        }
      }
      const unsigned char c = static_cast<unsigned char>(src_[p]);
      if (std::isalpha(c) || c == '_') {
        size_t e = p + 1;
        while (e < n && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        push(Tok::kName, src_.substr(p, e - p), p);
        p = e;
        continue;
      }
      if (std::isdigit(c)) {
        p = lex_number(p);
        continue;
      }
      if (c == '\'' || c == '"') {
        p = lex_string(p);
        continue;
      }
      static const char* kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
      bool matched = false;
      for (const char* op : kOps2) {
        if (src_.compare(p, 2, op) == 0) {
          push(Tok::kOp, op, p);
          p += 2;
          matched = true;
          break;
        }
      }
      if (matched) continue;
      if (std::strchr("+-/*%~[](){}><=.:|,;", c) && c != 0) {
        if (c == '(' || c == '[' || c == '{') ++depth;
        if (c == ')' || c == ']' || c == '}') {
          if (depth == 0) fail_at(std::string("unexpected '") + static_cast<char>(c) + "'", p);
          --depth;
        }
        push(Tok::kOp, std::string(1, static_cast<char>(c)), p);
        ++p;
        continue;
      }
      fail_at(std::string("unexpected character '") + static_cast<char>(c) + "' in tag", p);
    }
  }

  size_t lex_number(size_t p) {
    const size_t n = src_.size();
    const size_t start = p;
    const auto digits = [&](size_t q) {
      while (q < n && (std::isdigit(static_cast<unsigned char>(src_[q])) ||
                       (src_[q] == '_' && q + 1 < n && std::isdigit(static_cast<unsigned char>(src_[q + 1])))))
        ++q;
      return q;
    };
    p = digits(p);
    bool is_float = false;
    if (p + 1 < n && src_[p] == '.' && std::isdigit(static_cast<unsigned char>(src_[p + 1]))) {
      is_float = true;
      p = digits(p + 1);
    }
    if (p < n && (src_[p] == 'e' || src_[p] == 'E')) {
      size_t q = p + 1;
      if (q < n && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < n && std::isdigit(static_cast<unsigned char>(src_[q]))) {
        is_float = true;
        p = digits(q);
      }
    }
    std::string text;
    for (size_t k = start; k < p; ++k)
      if (src_[k] != '_') text += src_[k];
    Token tok;
    position(start, &tok.line, &tok.col);
    tok.text = text;
    if (is_float) {
      tok.type = Tok::kFloat;
      tok.fval = std::strtod(text.c_str(), nullptr);
    } else {
      tok.type = Tok::kInt;
      const auto r = std::from_chars(text.data(), text.data() + text.size(), tok.ival);
      if (r.ec != std::errc()) {
        tok.type = Tok::kFloat;  // beyond int64: Python would keep a big int; a float is the closest here
        tok.fval = std::strtod(text.c_str(), nullptr);
      }
    }
    out_.push_back(std::move(tok));
    return p;
  }

  // String literal with Python unicode-escape decoding (jinja2 lexer: value.encode("ascii",
  // "backslashreplace").decode("unicode-escape")): known escapes are decoded, unknown ones kept verbatim.
  size_t lex_string(size_t p) {
    const size_t n = src_.size();
    const char q = src_[p];
    const size_t start = p;
    std::string val;
    ++p;
    while (true) {
      if (p >= n) fail_at("unterminated string literal", start);
      const char c = src_[p];
      if (c == q) {
        ++p;
        break;
      }
      if (c != '\\') {
        val += c;
        ++p;
        continue;
      }
      if (p + 1 >= n) fail_at("unterminated string literal", start);
      const char e = src_[p + 1];
      p += 2;
      const auto hex = [&](int count) -> uint32_t {
        if (p + static_cast<size_t>(count) > n) fail_at("truncated \\x/\\u escape in string literal", start);
        uint32_t v = 0;
        for (int k = 0; k < count; ++k) {
          const char h = src_[p + static_cast<size_t>(k)];
          v <<= 4;
          if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
          else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
          else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
          else fail_at("bad hex digit in string escape", start);
        }
        p += static_cast<size_t>(count);
        return v;
      };
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': val += '\\'; break;
        case '\'': val += '\''; break;
        case '"': val += '"'; break;
        case 'a': val += '\a'; break;
        case 'b': val += '\b'; break;
        case 'f': val += '\f'; break;
        case 'n': val += '\n'; break;
        case 'r': val += '\r'; break;
        case 't': val += '\t'; break;
        case 'v': val += '\v'; break;
        case 'x': append_utf8(val, hex(2)); break;
        case 'u': {
          const uint32_t cp = hex(4);
          append_utf8(val, (cp >= 0xD800 && cp <= 0xDFFF) ? kReplacementChar : cp);
          break;
        }
        case 'U': {
          const uint32_t cp = hex(8);
          if (cp > 0x10FFFF) fail_at("\\U escape out of range", start);
          append_utf8(val, (cp >= 0xD800 && cp <= 0xDFFF) ? kReplacementChar : cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < n && src_[p] >= '0' && src_[p] <= '7'; ++k) v = v * 8 + static_cast<uint32_t>(src_[p++] - '0');
            append_utf8(val, v);
          } else {
            val += '\\';
            val += e;
          }
      }
    }
    push(Tok::kString, val, start);
    return p;
  }

  const std::string& src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> out_;
};

}  // namespace

// ============================================================================================ AST

struct Expr {
  enum Kind { kLit, kName, kList, kTuple, kDict, kAttr, kItem, kSlice, kCall, kFilter, kTest, kNot, kNeg, kPos,
              kBin, kCmp, kAnd, kOr, kCond };
  Kind kind = kLit;
  int line = 0, col = 0;
  Value lit;
  std::string name;  // variable / attribute / filter / test name, or binary operator
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<std::string> ops;  // comparison chain operators
  bool negated = false;
};

struct Node {
  enum Kind { kTemplate, kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kFilterBlock,
              kScope };
  Kind kind = kText;
  int line = 0, col = 0;
  std::string text;
  std::unique_ptr<Expr> expr;   // output, set value, for iterable, filter-block filter
  std::unique_ptr<Expr> cond;   // for ... if cond
  std::vector<std::string> targets;
  bool attr_target = false;     // set ns.attr = ...
  std::vector<std::pair<std::unique_ptr<Expr>, std::vector<std::unique_ptr<Node>>>> branches;  // if / elif
  std::vector<std::unique_ptr<Node>> body, else_body;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> params;  // macro parameters (default or null)
};

namespace {

// ============================================================================================ parser

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  std::unique_ptr<Node> parse_template() {
    auto root = std::make_unique<Node>();
    root->kind = Node::kTemplate;
    std::string end;
    root->body = parse_body({}, &end);
    return root;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  [[noreturn]] void fail(const std::string& m) const { throw_error(m, cur().line, cur().col); }
  [[noreturn]] void fail(const std::string& m, const Token& at) const { throw_error(m, at.line, at.col); }

  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::kName && cur().text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(std::string("expected '") + op + "'" + got());
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) fail("expected a name" + got());
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().type != Tok::kBlockEnd) fail("expected end of statement block" + got());
    next();
  }
  std::string got() const {
    switch (cur().type) {
      case Tok::kEof: return ", got end of template";
      case Tok::kBlockEnd: return ", got '%}'";
      case Tok::kVarEnd: return ", got '}}'";
      case Tok::kName:
      case Tok::kOp: return ", got '" + cur().text + "'";
      case Tok::kString: return ", got a string";
      default: return "";
    }
  }

  std::unique_ptr<Expr> make(Expr::Kind k, const Token& at) const {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  std::unique_ptr<Node> make_node(Node::Kind k, const Token& at) const {
    auto n = std::make_unique<Node>();
    n->kind = k;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // Parses nodes until a block tag whose keyword is in `ends` (left unconsumed after its {%: *end = keyword).
  std::vector<std::unique_ptr<Node>> parse_body(const std::vector<std::string>& ends, std::string* end) {
    std::vector<std::unique_ptr<Node>> body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty()) fail("unexpected end of template, expected '" + ends.front() + "'", t);
        *end = "";
        return body;
      }
      if (t.type == Tok::kText) {
        auto n = make_node(Node::kText, t);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
        continue;
      }
      if (t.type == Tok::kVarBegin) {
        auto n = make_node(Node::kOutput, t);
        next();
        n->expr = parse_tuple_expr();
        if (cur().type != Tok::kVarEnd) fail("expected '}}'" + got());
        next();
        body.push_back(std::move(n));
        continue;
      }
      if (t.type == Tok::kBlockBegin) {
        const Token& kw = peek();
        if (kw.type != Tok::kName) fail("expected a statement name after '{%'", kw);
        if (std::find(ends.begin(), ends.end(), kw.text) != ends.end()) {
          next();  // at the keyword
          *end = kw.text;
          return body;
        }
        next();
        body.push_back(parse_statement());
        continue;
      }
      fail("unexpected token");
    }
  }

  std::unique_ptr<Node> parse_statement() {
    const Token kw = cur();
    const std::string& k = kw.text;
    next();
    if (k == "if") return parse_if(kw);
    if (k == "for") return parse_for(kw);
    if (k == "set") return parse_set(kw);
    if (k == "macro") return parse_macro(kw);
    if (k == "break" || k == "continue") {
      auto n = make_node(k == "break" ? Node::kBreak : Node::kContinue, kw);
      expect_block_end();
      if (loop_depth_ == 0) fail("'" + k + "' outside of a loop", kw);
      return n;
    }
    if (k == "filter") {
      auto n = make_node(Node::kFilterBlock, kw);
      n->expr = parse_filter_chain(nullptr, kw);
      expect_block_end();
      std::string end;
      n->body = parse_body({"endfilter"}, &end);
      next();
      expect_block_end();
      return n;
    }
    if (k == "generation") {  // transformers' AssistantTracker: renders its body unchanged
      auto n = make_node(Node::kScope, kw);
      expect_block_end();
      std::string end;
      n->body = parse_body({"endgeneration"}, &end);
      next();
      expect_block_end();
      return n;
    }
    fail("unsupported statement '" + k + "'", kw);
  }

  std::unique_ptr<Node> parse_if(const Token& kw) {
    auto n = make_node(Node::kIf, kw);
    auto cond = parse_expression();
    expect_block_end();
    while (true) {
      std::string end;
      auto body = parse_body({"elif", "else", "endif"}, &end);
      n->branches.emplace_back(std::move(cond), std::move(body));
      next();  // past the keyword
      if (end == "elif") {
        cond = parse_expression();
        expect_block_end();
        continue;
      }
      if (end == "else") {
        expect_block_end();
        std::string end2;
        n->else_body = parse_body({"endif"}, &end2);
        next();
      }
      expect_block_end();
      return n;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = is_op("(");
    if (paren) next();
    names.push_back(expect_name());
    while (is_op(",")) {
      next();
      if (cur().type != Tok::kName) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  std::unique_ptr<Node> parse_for(const Token& kw) {
    auto n = make_node(Node::kFor, kw);
    n->targets = parse_targets();
    if (!is_name("in")) fail("expected 'in'" + got());
    next();
    n->expr = parse_tuple_expr(/*no_condexpr=*/true);
    if (is_name("if")) {
      next();
      n->cond = parse_expression();
    }
    if (is_name("recursive")) fail("recursive loops are not supported");
    expect_block_end();
    ++loop_depth_;
    std::string end;
    n->body = parse_body({"else", "endfor"}, &end);
    --loop_depth_;
    next();
    if (end == "else") {
      expect_block_end();
      std::string end2;
      n->else_body = parse_body({"endfor"}, &end2);
      next();
    }
    expect_block_end();
    return n;
  }

  std::unique_ptr<Node> parse_set(const Token& kw) {
    if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "." ) {
      auto n = make_node(Node::kSet, kw);
      n->attr_target = true;
      n->targets.push_back(expect_name());
      next();  // .
      n->targets.push_back(expect_name());
      expect_op("=");
      n->expr = parse_tuple_expr();
      expect_block_end();
      return n;
    }
    std::vector<std::string> names = parse_targets();
    if (is_op("=")) {
      auto n = make_node(Node::kSet, kw);
      n->targets = std::move(names);
      next();
      n->expr = parse_tuple_expr();
      expect_block_end();
      return n;
    }
    if (names.size() != 1) fail("expected '='" + got());
    auto n = make_node(Node::kSetBlock, kw);
    n->targets = std::move(names);
    if (is_op("|")) n->expr = parse_filter_chain(nullptr, kw);
    expect_block_end();
    std::string end;
    n->body = parse_body({"endset"}, &end);
    next();
    expect_block_end();
    return n;
  }

  std::unique_ptr<Node> parse_macro(const Token& kw) {
    auto n = make_node(Node::kMacro, kw);
    n->text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      std::string p = expect_name();
      std::unique_ptr<Expr> def;
      if (is_op("=")) {
        next();
        def = parse_expression();
      }
      n->params.emplace_back(std::move(p), std::move(def));
      if (is_op(",")) next();
      else if (!is_op(")")) fail("expected ',' or ')' in macro parameters" + got());
    }
    next();
    expect_block_end();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    std::string end;
    n->body = parse_body({"endmacro"}, &end);
    loop_depth_ = saved;
    next();
    if (cur().type == Tok::kName) next();  // {% endmacro name %}
    expect_block_end();
    return n;
  }

  // ---- expressions

  struct DepthGuard {
    int& d;
    DepthGuard(int& depth, const Parser& p) : d(depth) {
      if (++d > kMaxDepth) p.fail("expression nested too deeply");
    }
    ~DepthGuard() { --d; }
  };

  // Top level of {{ }} / set / for: a bare comma makes a tuple.
  std::unique_ptr<Expr> parse_tuple_expr(bool no_condexpr = false) {
    const Token start = cur();
    auto first = no_condexpr ? parse_or() : parse_expression();
    if (!is_op(",")) return first;
    auto t = make(Expr::kTuple, start);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd || is_op("=")) break;
      t->args.push_back(no_condexpr ? parse_or() : parse_expression());
    }
    return t;
  }

  std::unique_ptr<Expr> parse_expression() {
    DepthGuard g(depth_, *this);
    const Token start = cur();
    auto e = parse_or();
    while (is_name("if")) {
      next();
      auto c = make(Expr::kCond, start);
      auto cond = parse_or();
      std::unique_ptr<Expr> other;
      if (is_name("else")) {
        next();
        other = parse_expression();
      }
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  std::unique_ptr<Expr> parse_or() {
    const Token start = cur();
    auto l = parse_and();
    while (is_name("or")) {
      next();
      auto b = make(Expr::kOr, start);
      b->args.push_back(std::move(l));
      b->args.push_back(parse_and());
      l = std::move(b);
    }
    return l;
  }
  std::unique_ptr<Expr> parse_and() {
    const Token start = cur();
    auto l = parse_not();
    while (is_name("and")) {
      next();
      auto b = make(Expr::kAnd, start);
      b->args.push_back(std::move(l));
      b->args.push_back(parse_not());
      l = std::move(b);
    }
    return l;
  }
  std::unique_ptr<Expr> parse_not() {
    if (is_name("not")) {
      const Token start = cur();
      next();
      DepthGuard g(depth_, *this);
      auto n = make(Expr::kNot, start);
      n->args.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }
  std::unique_ptr<Expr> parse_compare() {
    const Token start = cur();
    auto first = parse_math1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::kOp &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        op = "not in";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::kCmp, start);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  std::unique_ptr<Expr> binary(std::string op, std::unique_ptr<Expr> l, std::unique_ptr<Expr> r, const Token& at) {
    auto b = make(Expr::kBin, at);
    b->name = std::move(op);
    b->args.push_back(std::move(l));
    b->args.push_back(std::move(r));
    return b;
  }
  std::unique_ptr<Expr> parse_math1() {
    const Token start = cur();
    auto l = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      next();
      l = binary(op, std::move(l), parse_concat(), start);
    }
    return l;
  }
  std::unique_ptr<Expr> parse_concat() {
    const Token start = cur();
    auto l = parse_math2();
    while (is_op("~")) {
      next();
      l = binary("~", std::move(l), parse_math2(), start);
    }
    return l;
  }
  std::unique_ptr<Expr> parse_math2() {
    const Token start = cur();
    auto l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      next();
      l = binary(op, std::move(l), parse_pow(), start);
    }
    return l;
  }
  std::unique_ptr<Expr> parse_pow() {
    const Token start = cur();
    auto l = parse_unary(true);
    while (is_op("**")) {
      next();
      l = binary("**", std::move(l), parse_unary(true), start);
    }
    return l;
  }
  std::unique_ptr<Expr> parse_unary(bool with_filter) {
    DepthGuard g(depth_, *this);
    const Token start = cur();
    std::unique_ptr<Expr> node;
    if (is_op("-") || is_op("+")) {
      const bool neg = is_op("-");
      next();
      node = make(neg ? Expr::kNeg : Expr::kPos, start);
      node->args.push_back(parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  std::unique_ptr<Expr> parse_primary() {
    const Token t = cur();
    switch (t.type) {
      case Tok::kName: {
        next();
        if (t.text == "true" || t.text == "True") return lit(Value::boolean(true), t);
        if (t.text == "false" || t.text == "False") return lit(Value::boolean(false), t);
        if (t.text == "none" || t.text == "None") return lit(Value::none(), t);
        auto e = make(Expr::kName, t);
        e->name = t.text;
        return e;
      }
      case Tok::kString: {
        std::string s = t.text;
        next();
        while (cur().type == Tok::kString) {  // adjacent literals concatenate
          s += cur().text;
          next();
        }
        return lit(Value::string(std::move(s)), t);
      }
      case Tok::kInt: next(); return lit(Value::integer(t.ival), t);
      case Tok::kFloat: next(); return lit(Value::number(t.fval), t);
      case Tok::kOp:
        if (t.text == "(") {
          next();
          if (is_op(")")) {
            next();
            return make(Expr::kTuple, t);
          }
          auto first = parse_expression();
          if (is_op(")")) {
            next();
            return first;
          }
          auto tup = make(Expr::kTuple, t);
          tup->args.push_back(std::move(first));
          while (is_op(",")) {
            next();
            if (is_op(")")) break;
            tup->args.push_back(parse_expression());
          }
          expect_op(")");
          return tup;
        }
        if (t.text == "[") {
          next();
          auto l = make(Expr::kList, t);
          while (!is_op("]")) {
            l->args.push_back(parse_expression());
            if (is_op(",")) next();
            else if (!is_op("]")) fail("expected ',' or ']'" + got());
          }
          next();
          return l;
        }
        if (t.text == "{") {
          next();
          auto d = make(Expr::kDict, t);
          while (!is_op("}")) {
            d->args.push_back(parse_expression());
            expect_op(":");
            d->args.push_back(parse_expression());
            if (is_op(",")) next();
            else if (!is_op("}")) fail("expected ',' or '}'" + got());
          }
          next();
          return d;
        }
        break;
      default: break;
    }
    fail("unexpected token in expression" + got());
  }

  std::unique_ptr<Expr> lit(Value v, const Token& at) {
    auto e = make(Expr::kLit, at);
    e->lit = std::move(v);
    return e;
  }

  std::unique_ptr<Expr> parse_postfix(std::unique_ptr<Expr> node) {
    while (true) {
      const Token t = cur();
      if (is_op(".")) {
        next();
        if (cur().type == Tok::kName) {
          auto a = make(Expr::kAttr, t);
          a->name = cur().text;
          next();
          a->args.push_back(std::move(node));
          node = std::move(a);
        } else if (cur().type == Tok::kInt) {
          auto it = make(Expr::kItem, t);
          it->args.push_back(std::move(node));
          it->args.push_back(lit(Value::integer(cur().ival), cur()));
          next();
          node = std::move(it);
        } else {
          fail("expected an attribute name after '.'" + got());
        }
      } else if (is_op("[")) {
        next();
        node = parse_subscript(std::move(node), t);
        expect_op("]");
      } else if (is_op("(")) {
        node = parse_call(std::move(node), t);
      } else {
        return node;
      }
    }
  }

  std::unique_ptr<Expr> parse_subscript(std::unique_ptr<Expr> obj, const Token& at) {
    std::unique_ptr<Expr> parts[3];
    int idx = 0;
    bool is_slice = false;
    while (true) {
      if (is_op(":")) {
        is_slice = true;
        if (++idx > 2) fail("too many ':' in slice");
        next();
        continue;
      }
      if (is_op("]")) break;
      if (parts[idx]) fail("expected ':' or ']'" + got());
      parts[idx] = parse_expression();
    }
    if (!is_slice) {
      if (!parts[0]) fail("empty subscript");
      auto it = make(Expr::kItem, at);
      it->args.push_back(std::move(obj));
      it->args.push_back(std::move(parts[0]));
      return it;
    }
    auto s = make(Expr::kSlice, at);
    s->args.push_back(std::move(obj));
    for (auto& p : parts) s->args.push_back(std::move(p));
    return s;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) fail("*args / **kwargs in calls are not supported");
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string key = cur().text;
        next();
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!e.kwargs.empty()) fail("positional argument after keyword argument");
        e.args.push_back(parse_expression());
      }
      if (is_op(",")) next();
      else if (!is_op(")")) fail("expected ',' or ')'" + got());
    }
    next();
  }

  std::unique_ptr<Expr> parse_call(std::unique_ptr<Expr> callee, const Token& at) {
    auto c = make(Expr::kCall, at);
    c->args.push_back(std::move(callee));
    parse_call_args(*c);
    return c;
  }

  // subject may be null (filter blocks / set blocks): the filtered value is supplied at render time.
  std::unique_ptr<Expr> parse_filter_chain(std::unique_ptr<Expr> subject, const Token& at) {
    bool first = true;
    while (first || is_op("|")) {
      if (is_op("|")) next();
      else if (!first) break;
      first = false;
      const Token nt = cur();
      auto f = make(Expr::kFilter, nt);
      f->name = expect_name();
      while (is_op(".")) {  // dotted filter names
        next();
        f->name += "." + expect_name();
      }
      f->args.push_back(std::move(subject));
      if (is_op("(")) parse_call_args(*f);
      subject = std::move(f);
    }
    (void)at;
    return subject;
  }

  std::unique_ptr<Expr> parse_filter_expr(std::unique_ptr<Expr> node) {
    while (true) {
      if (is_op("|")) {
        next();
        const Token nt = cur();
        auto f = make(Expr::kFilter, nt);
        f->name = expect_name();
        f->args.push_back(std::move(node));
        if (is_op("(")) parse_call_args(*f);
        node = std::move(f);
      } else if (is_name("is")) {
        const Token it = cur();
        next();
        auto t = make(Expr::kTest, it);
        if (is_name("not")) {
          t->negated = true;
          next();
        }
        t->name = expect_name();
        while (is_op(".")) {
          next();
          t->name += "." + expect_name();
        }
        t->args.push_back(std::move(node));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt ||
                    cur().type == Tok::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail("you cannot chain multiple tests with is");
          auto arg = parse_primary();
          t->args.push_back(parse_postfix(std::move(arg)));
        }
        node = std::move(t);
      } else if (is_op("(")) {
        const Token ct = cur();
        node = parse_call(std::move(node), ct);
      } else {
        return node;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

// ============================================================================================ interpreter

class Interpreter {
 public:
  using Frame = std::unordered_map<std::string, Value>;
  enum class Flow { kNormal, kBreak, kContinue };

  explicit Interpreter(const Value& globals) {
    frames_.emplace_back();
    if (globals.is_dict())
      for (const auto& [k, v] : globals.dict_ptr()->entries) frames_[0][k] = v;
    frames_.emplace_back();  // template top level
  }

  std::string run(const Node& root) {
    exec(root.body);
    return std::move(out_);
  }

  // ---- errors

  [[noreturn]] void fail(const std::string& m, const Expr& e) const { throw_error(m, e.line, e.col); }
  [[noreturn]] void fail(const std::string& m, const Node& n) const { throw_error(m, n.line, n.col); }

  // ---- scopes

  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    const Value b = builtin(name);
    if (!b.is_undefined()) return b;
    return Value::undefined("'" + name + "' is undefined");
  }

  Value builtin(const std::string& name) const;

  // ---- statements

  Flow exec(const std::vector<std::unique_ptr<Node>>& body) {
    for (const auto& n : body) {
      const Flow f = exec_node(*n);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  void emit(const std::string& s) {
    if (out_.size() + s.size() > kMaxOutput) throw_error("rendered output exceeds 256 MiB");
    out_ += s;
  }

  Flow exec_node(const Node& n) {
    switch (n.kind) {
      case Node::kText: emit(n.text); return Flow::kNormal;
      case Node::kOutput: emit(to_str(eval(*n.expr))); return Flow::kNormal;
      case Node::kIf:
        for (const auto& [cond, body] : n.branches)
          if (truthy(eval(*cond))) return exec(body);
        return exec(n.else_body);
      case Node::kFor: return exec_for(n);
      case Node::kSet: exec_set(n); return Flow::kNormal;
      case Node::kSetBlock: {
        std::string saved;
        saved.swap(out_);
        const Flow f = exec(n.body);
        std::string captured;
        captured.swap(out_);
        out_.swap(saved);
        Value v = Value::string(std::move(captured));
        if (n.expr) v = apply_filter_chain(*n.expr, v);
        frames_.back()[n.targets[0]] = v;
        return f;
      }
      case Node::kMacro: define_macro(n); return Flow::kNormal;
      case Node::kBreak: return Flow::kBreak;
      case Node::kContinue: return Flow::kContinue;
      case Node::kFilterBlock: {
        std::string saved;
        saved.swap(out_);
        const Flow f = exec(n.body);
        std::string captured;
        captured.swap(out_);
        out_.swap(saved);
        emit(to_str(apply_filter_chain(*n.expr, Value::string(std::move(captured)))));
        return f;
      }
      case Node::kScope:
      case Node::kTemplate: return exec(n.body);
    }
    return Flow::kNormal;
  }

  void assign_targets(Frame& frame, const std::vector<std::string>& targets, const Value& v, const Node& n) {
    if (targets.size() == 1) {
      frame[targets[0]] = v;
      return;
    }
    const List items = iterate(v, n);
    if (items.size() != targets.size())
      fail("cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) +
               " names",
           n);
    for (size_t k = 0; k < targets.size(); ++k) frame[targets[k]] = items[k];
  }

  void exec_set(const Node& n) {
    Value v = eval(*n.expr);
    if (n.attr_target) {
      Value obj = lookup(n.targets[0]);
      if (!obj.is_dict() || !obj.dict_ptr()->is_namespace)
        fail("can only set attributes on namespace objects ('" + n.targets[0] + "' is " + type_name(obj) + ")", n);
      obj.dict_ptr()->set(n.targets[1], std::move(v));
      return;
    }
    assign_targets(frames_.back(), n.targets, v, n);
  }

  Flow exec_for(const Node& n) {
    const Value seq = eval(*n.expr);
    List items = iterate(seq, *n.expr);
    if (n.cond) {
      // The loop filter sees the targets; loop.* counts only the items that pass.
      List kept;
      for (const Value& it : items) {
        frames_.emplace_back();
        assign_targets(frames_.back(), n.targets, it, n);
        const bool ok = truthy(eval(*n.cond));
        frames_.pop_back();
        if (ok) kept.push_back(it);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec(n.else_body);
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      frames_.emplace_back();
      Frame& f = frames_.back();
      assign_targets(f, n.targets, items[k], n);
      auto loop = std::make_shared<Dict>();
      loop->set("index0", Value::integer(k));
      loop->set("index", Value::integer(k + 1));
      loop->set("revindex0", Value::integer(len - k - 1));
      loop->set("revindex", Value::integer(len - k));
      loop->set("first", Value::boolean(k == 0));
      loop->set("last", Value::boolean(k == len - 1));
      loop->set("length", Value::integer(len));
      loop->set("depth", Value::integer(1));
      loop->set("depth0", Value::integer(0));
      loop->set("previtem", k > 0 ? items[k - 1] : Value::undefined("there is no previous item"));
      loop->set("nextitem", k + 1 < len ? items[k + 1] : Value::undefined("there is no next item"));
      auto cycle = std::make_shared<Callable>();
      cycle->name = "cycle";
      cycle->fn = [k](Interpreter&, CallArgs& a) {
        if (a.positional.empty()) throw_error("no items for cycling given");
        return a.positional[static_cast<size_t>(k) % a.positional.size()];
      };
      loop->set("cycle", Value::func(cycle));
      f["loop"] = Value::dict(loop);
      const Flow fl = exec(n.body);
      frames_.pop_back();
      if (fl == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void define_macro(const Node& n) {
    auto fn = std::make_shared<Callable>();
    fn->name = n.text;
    const Node* node = &n;
    fn->fn = [node](Interpreter& in, CallArgs& a) { return in.call_macro(*node, a); };
    frames_.back()[n.text] = Value::func(fn);
  }

  Value call_macro(const Node& n, CallArgs& a) {
    if (++call_depth_ > kMaxDepth) fail("macro recursion too deep", n);
    Frame f;
    size_t pos = 0;
    std::vector<Value> extra;
    for (const auto& [pname, def] : n.params) {
      const Value* kw = nullptr;
      for (const auto& [k, v] : a.keyword)
        if (k == pname) kw = &v;
      if (pos < a.positional.size()) {
        f[pname] = a.positional[pos++];
      } else if (kw) {
        f[pname] = *kw;
      } else if (def) {
        f[pname] = eval(*def);
      } else {
        f[pname] = Value::undefined("parameter '" + pname + "' was not provided");
      }
    }
    for (; pos < a.positional.size(); ++pos) extra.push_back(a.positional[pos]);
    f["varargs"] = Value::list(std::move(extra));
    // Macros see the globals and the template's top level, not the caller's loop variables.
    std::vector<Frame> saved;
    saved.swap(frames_);
    frames_.push_back(saved[0]);
    frames_.push_back(saved[1]);
    frames_.push_back(std::move(f));
    std::string saved_out;
    saved_out.swap(out_);
    exec(n.body);
    std::string result;
    result.swap(out_);
    out_.swap(saved_out);
    saved[1] = std::move(frames_[1]);
    frames_.swap(saved);
    --call_depth_;
    return Value::string(std::move(result));
  }

  // ---- expressions

  List iterate(const Value& v, const Expr& at) const { return iterate_impl(v, [&](const std::string& m) { fail(m, at); }); }
  List iterate(const Value& v, const Node& at) const { return iterate_impl(v, [&](const std::string& m) { fail(m, at); }); }
  template <typename F>
  static List iterate_impl(const Value& v, F&& on_error) {
    switch (v.type()) {
      case Value::Type::kUndefined: return {};
      case Value::Type::kList: return v.items();
      case Value::Type::kDict: {
        List keys;
        for (const auto& [k, val] : v.dict_ptr()->entries) keys.push_back(Value::string(k));
        return keys;
      }
      case Value::Type::kString: {
        List chars;
        size_t i = 0;
        const std::string& s = v.s();
        while (i < s.size()) {
          const size_t at = i;
          utf8_next(s, i);
          chars.push_back(Value::string(s.substr(at, i - at)));
        }
        return chars;
      }
      default: on_error(std::string("'") + type_name(v) + "' object is not iterable");
    }
    return {};
  }

  Value eval(const Expr& e);
  Value get_attr(const Value& obj, const std::string& name, const Expr& at);
  Value get_item(const Value& obj, const Value& key, const Expr& at);
  Value call(const Value& f, CallArgs& args, const Expr& at);
  Value apply_filter(const std::string& name, const Value& v, CallArgs& args, const Expr& at);
  bool apply_test(const std::string& name, const Value& v, CallArgs& args, const Expr& at);
  Value apply_filter_chain(const Expr& chain, const Value& subject);
  Value binop(const std::string& op, const Value& a, const Value& b, const Expr& at);
  bool compare(const std::string& op, const Value& a, const Value& b, const Expr& at);
  Value method(const Value& obj, const std::string& name, const Expr& at);

  CallArgs eval_args(const Expr& e, size_t first) {
    CallArgs a;
    for (size_t k = first; k < e.args.size(); ++k) a.positional.push_back(eval(*e.args[k]));
    for (const auto& [k, v] : e.kwargs) a.keyword.emplace_back(k, eval(*v));
    return a;
  }

 private:
  std::vector<Frame> frames_;
  std::string out_;
  int call_depth_ = 0;
};

namespace {

bool values_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type() != Value::Type::kFloat && b.type() != Value::Type::kFloat) return a.i() == b.i();
    return as_double(a) == as_double(b);
  }
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Value::Type::kUndefined:
    case Value::Type::kNone: return true;
    case Value::Type::kString: return a.s() == b.s();
    case Value::Type::kList: {
      if (a.is_tuple() != b.is_tuple() || a.items().size() != b.items().size()) return false;
      for (size_t k = 0; k < a.items().size(); ++k)
        if (!values_equal(a.items()[k], b.items()[k])) return false;
      return true;
    }
    case Value::Type::kDict: {
      const Dict &da = *a.dict_ptr(), &db = *b.dict_ptr();
      if (da.is_namespace || db.is_namespace) return a.dict_ptr() == b.dict_ptr();
      if (da.entries.size() != db.entries.size()) return false;
      for (const auto& [k, v] : da.entries) {
        const Value* o = db.find(k);
        if (!o || !values_equal(v, *o)) return false;
      }
      return true;
    }
    case Value::Type::kFunc: return a.func_ptr() == b.func_ptr();
    default: return false;
  }
}

// Python ordering; returns <0, 0, >0; throws TypeError-like errors for unorderable pairs.
int order(const Value& a, const Value& b, const char* op) {
  if (a.is_number() && b.is_number()) {
    if (a.type() != Value::Type::kFloat && b.type() != Value::Type::kFloat) return a.i() < b.i() ? -1 : a.i() > b.i();
    const double x = as_double(a), y = as_double(b);
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    const int c = a.s().compare(b.s());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : (c > 0);
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const size_t n = std::min(a.items().size(), b.items().size());
    for (size_t k = 0; k < n; ++k) {
      if (values_equal(a.items()[k], b.items()[k])) continue;
      return order(a.items()[k], b.items()[k], op);
    }
    return a.items().size() < b.items().size() ? -1 : (a.items().size() > b.items().size());
  }
  throw_error(std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" +
              type_name(b) + "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.type()) {
    case Value::Type::kUndefined: return false;
    case Value::Type::kString:
      if (!item.is_string())
        throw_error(std::string("'in <string>' requires string as left operand, not ") + type_name(item));
      return container.s().find(item.s()) != std::string::npos;
    case Value::Type::kList:
      for (const Value& v : container.items())
        if (values_equal(v, item)) return true;
      return false;
    case Value::Type::kDict:
      return item.is_string() && container.dict_ptr()->find(item.s()) != nullptr;
    default: throw_error(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

int64_t py_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t py_mod(int64_t a, int64_t b) {
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

int64_t to_index(const Value& v) {
  if (v.type() == Value::Type::kInt || v.type() == Value::Type::kBool) return v.i();
  throw_error(std::string("indices must be integers, not ") + type_name(v));
}

// Python slice semantics over n elements.
std::vector<size_t> slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step_v) {
  int64_t step = 1;
  if (!start.is_undefined() && !start.is_none()) (void)to_index(start);
  if (!step_v.is_undefined() && !step_v.is_none()) step = to_index(step_v);
  if (step == 0) throw_error("slice step cannot be zero");
  const auto norm = [&](const Value& v, int64_t def_pos, int64_t def_neg) -> int64_t {
    if (v.is_undefined() || v.is_none()) return step > 0 ? def_pos : def_neg;
    int64_t x = to_index(v);
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t b = norm(start, 0, n - 1), e = norm(stop, n, -1);
  std::vector<size_t> out;
  if (step > 0)
    for (int64_t k = b; k < e; k += step) out.push_back(static_cast<size_t>(k));
  else
    for (int64_t k = b; k > e; k += step) out.push_back(static_cast<size_t>(k));
  return out;
}

// printf-style `format % args` (Python %-formatting, the common conversions).
std::string percent_format(const std::string& fmt, const List& args) {
  std::string out;
  size_t ai = 0;
  const auto next_arg = [&]() -> const Value& {
    if (ai >= args.size()) throw_error("not enough arguments for format string");
    return args[ai++];
  };
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out += fmt[k];
      continue;
    }
    if (++k >= fmt.size()) throw_error("incomplete format");
    std::string spec = "%";
    while (k < fmt.size() && std::strchr("-+ #0123456789.", fmt[k])) spec += fmt[k++];
    if (k >= fmt.size()) throw_error("incomplete format");
    const char conv = fmt[k];
    char buf[512];
    switch (conv) {
      case '%': out += '%'; break;
      case 's': {
        const std::string s = to_str(next_arg());
        if (spec == "%") out += s;
        else {
          std::snprintf(buf, sizeof(buf), (spec + "s").c_str(), s.c_str());
          out += buf;
        }
        break;
      }
      case 'r': out += to_repr(next_arg()); break;
      case 'd':
      case 'i': {
        const Value& v = next_arg();
        if (!v.is_number()) throw_error(std::string("%d format: a real number is required, not ") + type_name(v));
        const long long x = v.type() == Value::Type::kFloat ? static_cast<long long>(v.f()) : v.i();
        std::snprintf(buf, sizeof(buf), (spec + "lld").c_str(), x);
        out += buf;
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G': {
        const Value& v = next_arg();
        if (!v.is_number()) throw_error(std::string("must be real number, not ") + type_name(v));
        std::snprintf(buf, sizeof(buf), (spec + conv).c_str(), as_double(v));
        out += buf;
        break;
      }
      case 'x':
      case 'X':
      case 'o': {
        const Value& v = next_arg();
        if (v.type() != Value::Type::kInt && v.type() != Value::Type::kBool) throw_error("%x format: an integer is required");
        std::snprintf(buf, sizeof(buf), (spec + "ll" + conv).c_str(), static_cast<long long>(v.i()));
        out += buf;
        break;
      }
      default: throw_error(std::string("unsupported format character '") + conv + "'");
    }
  }
  if (ai < args.size()) throw_error("not all arguments converted during string formatting");
  return out;
}

// str.format with {} / {0} / {name} fields (no format specs beyond an empty one).
std::string brace_format(const std::string& fmt, const CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    const char c = fmt[k];
    if (c == '{') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
        out += '{';
        ++k;
        continue;
      }
      const size_t e = fmt.find('}', k);
      if (e == std::string::npos) throw_error("single '{' encountered in format string");
      std::string field = fmt.substr(k + 1, e - k - 1);
      const size_t colon = field.find(':');
      if (colon != std::string::npos) {
        if (colon + 1 != field.size()) throw_error("format specs in str.format are not supported");
        field.resize(colon);
      }
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_idx >= a.positional.size()) throw_error("Replacement index out of range for positional args");
        v = &a.positional[auto_idx++];
      } else if (std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
        const size_t idx = std::stoul(field);
        if (idx >= a.positional.size()) throw_error("Replacement index out of range for positional args");
        v = &a.positional[idx];
      } else {
        for (const auto& [key, val] : a.keyword)
          if (key == field) v = &val;
        if (!v) throw_error("KeyError: '" + field + "'");
      }
      out += to_str(*v);
      k = e;
    } else if (c == '}') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') ++k;
      out += '}';
    } else {
      out += c;
    }
  }
  return out;
}

const Value* kwarg(const CallArgs& a, const char* name) {
  for (const auto& [k, v] : a.keyword)
    if (k == name) return &v;
  return nullptr;
}

// Positional argument i, else keyword `name`, else null.
const Value* arg(const CallArgs& a, size_t i, const char* name) {
  if (i < a.positional.size()) return &a.positional[i];
  return kwarg(a, name);
}

int64_t length_of(const Value& v) {
  switch (v.type()) {
    case Value::Type::kUndefined: return 0;
    case Value::Type::kString: return static_cast<int64_t>(utf8_length(v.s()));
    case Value::Type::kList: return static_cast<int64_t>(v.items().size());
    case Value::Type::kDict: return static_cast<int64_t>(v.dict_ptr()->entries.size());
    default: throw_error(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

std::string strftime_now(const std::string& fmt) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[512];
  const size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
  return std::string(buf, n);
}

std::shared_ptr<Callable> make_fn(const char* name, std::function<Value(Interpreter&, CallArgs&)> fn) {
  auto c = std::make_shared<Callable>();
  c->name = name;
  c->fn = std::move(fn);
  return c;
}

}  // namespace

Value Interpreter::builtin(const std::string& name) const {
  static const std::unordered_map<std::string, Value> table = [] {
    std::unordered_map<std::string, Value> t;
    t["range"] = Value::func(make_fn("range", [](Interpreter&, CallArgs& a) {
      int64_t start = 0, stop = 0, step = 1;
      if (a.positional.size() == 1) {
        stop = to_index(a.positional[0]);
      } else if (a.positional.size() >= 2) {
        start = to_index(a.positional[0]);
        stop = to_index(a.positional[1]);
        if (a.positional.size() >= 3) step = to_index(a.positional[2]);
      } else {
        throw_error("range expected at least 1 argument");
      }
      if (step == 0) throw_error("range() arg 3 must not be zero");
      List out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        if (out.size() >= 1000000) throw_error("range too big");
        out.push_back(Value::integer(k));
      }
      return Value::list(std::move(out));
    }));
    t["namespace"] = Value::func(make_fn("namespace", [](Interpreter&, CallArgs& a) {
      auto d = std::make_shared<Dict>();
      d->is_namespace = true;
      for (const Value& p : a.positional) {
        if (!p.is_dict()) throw_error("namespace() positional argument must be a dict");
        for (const auto& [k, v] : p.dict_ptr()->entries) d->set(k, v);
      }
      for (const auto& [k, v] : a.keyword) d->set(k, v);
      return Value::dict(d);
    }));
    t["dict"] = Value::func(make_fn("dict", [](Interpreter&, CallArgs& a) {
      auto d = std::make_shared<Dict>();
      for (const Value& p : a.positional) {
        if (!p.is_dict()) throw_error("dict() positional argument must be a dict");
        for (const auto& [k, v] : p.dict_ptr()->entries) d->set(k, v);
      }
      for (const auto& [k, v] : a.keyword) d->set(k, v);
      return Value::dict(d);
    }));
    t["raise_exception"] = Value::func(make_fn("raise_exception", [](Interpreter&, CallArgs& a) -> Value {
      throw_error("raise_exception: " + (a.positional.empty() ? std::string() : to_str(a.positional[0])));
    }));
    t["strftime_now"] = Value::func(make_fn("strftime_now", [](Interpreter&, CallArgs& a) {
      if (a.positional.empty() || !a.positional[0].is_string()) throw_error("strftime_now expects a format string");
      return Value::string(strftime_now(a.positional[0].s()));
    }));
    return t;
  }();
  auto it = table.find(name);
  return it == table.end() ? Value() : it->second;
}

Value Interpreter::eval(const Expr& e) {
  try {
    switch (e.kind) {
      case Expr::kLit: return e.lit;
      case Expr::kName: return lookup(e.name);
      case Expr::kList:
      case Expr::kTuple: {
        List items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return Value::list(std::move(items), e.kind == Expr::kTuple);
      }
      case Expr::kDict: {
        auto d = std::make_shared<Dict>();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          const Value key = eval(*e.args[k]);
          if (!key.is_string()) fail("only string keys are supported in dict literals", *e.args[k]);
          d->set(key.s(), eval(*e.args[k + 1]));
        }
        return Value::dict(d);
      }
      case Expr::kAttr: return get_attr(eval(*e.args[0]), e.name, e);
      case Expr::kItem: return get_item(eval(*e.args[0]), eval(*e.args[1]), e);
      case Expr::kSlice: {
        const Value obj = eval(*e.args[0]);
        Value parts[3];
        for (int k = 0; k < 3; ++k)
          if (e.args[1 + k]) parts[k] = eval(*e.args[1 + k]);
        if (obj.is_undefined()) undefined_error(obj);
        if (obj.is_string()) {
          const auto cps = to_cps(obj.s());
          std::string out;
          for (size_t k : slice_indices(static_cast<int64_t>(cps.size()), parts[0], parts[1], parts[2]))
            append_utf8(out, cps[k]);
          return Value::string(std::move(out));
        }
        if (obj.is_list()) {
          List out;
          for (size_t k : slice_indices(static_cast<int64_t>(obj.items().size()), parts[0], parts[1], parts[2]))
            out.push_back(obj.items()[k]);
          return Value::list(std::move(out), obj.is_tuple());
        }
        fail(std::string("'") + type_name(obj) + "' object is not subscriptable", e);
      }
      case Expr::kCall: {
        const Value f = eval(*e.args[0]);
        CallArgs a = eval_args(e, 1);
        return call(f, a, e);
      }
      case Expr::kFilter: {
        const Value v = eval(*e.args[0]);
        CallArgs a = eval_args(e, 1);
        return apply_filter(e.name, v, a, e);
      }
      case Expr::kTest: {
        const Value v = eval(*e.args[0]);
        CallArgs a = eval_args(e, 1);
        const bool r = apply_test(e.name, v, a, e);
        return Value::boolean(e.negated ? !r : r);
      }
      case Expr::kNot: return Value::boolean(!truthy(eval(*e.args[0])));
      case Expr::kNeg:
      case Expr::kPos: {
        const Value v = eval(*e.args[0]);
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number()) fail(std::string("bad operand type for unary ") + (e.kind == Expr::kNeg ? "-" : "+") + ": '" + type_name(v) + "'", e);
        if (e.kind == Expr::kPos) return v.type() == Value::Type::kBool ? Value::integer(v.i()) : v;
        if (v.type() == Value::Type::kFloat) return Value::number(-v.f());
        if (v.i() == std::numeric_limits<int64_t>::min()) fail("integer overflow", e);
        return Value::integer(-v.i());
      }
      case Expr::kBin: {
        const Value a = eval(*e.args[0]);
        const Value b = eval(*e.args[1]);
        return binop(e.name, a, b, e);
      }
      case Expr::kCmp: {
        Value left = eval(*e.args[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.args[k + 1]);
          if (!compare(e.ops[k], left, right, e)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::kAnd: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case Expr::kOr: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case Expr::kCond: {
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
      }
    }
  } catch (TplError& err) {
    if (err.line == 0) {
      err.line = e.line;
      err.col = e.col;
    }
    throw;
  }
  return Value();
}

Value Interpreter::get_attr(const Value& obj, const std::string& name, const Expr& at) {
  if (obj.is_undefined()) {
    if (obj.undefined_name().empty() || obj.undefined_name().front() == '\'')
      fail(obj.undefined_name().empty() ? "undefined value has no attribute '" + name + "'"
                                        : obj.undefined_name() + " (while reading attribute '" + name + "')",
           at);
    fail(obj.undefined_name(), at);
  }
  if (obj.is_dict()) {
    const Dict& d = *obj.dict_ptr();
    if (!d.is_namespace) {
      Value m = method(obj, name, at);
      if (!m.is_undefined()) return m;
    }
    if (const Value* v = d.find(name)) return *v;
    return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
  }
  Value m = method(obj, name, at);
  if (!m.is_undefined()) return m;
  return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
}

Value Interpreter::get_item(const Value& obj, const Value& key, const Expr& at) {
  switch (obj.type()) {
    case Value::Type::kUndefined: undefined_error(obj);
    case Value::Type::kDict: {
      if (key.is_string()) {
        if (const Value* v = obj.dict_ptr()->find(key.s())) return *v;
        if (!obj.dict_ptr()->is_namespace) {
          Value m = method(obj, key.s(), at);
          if (!m.is_undefined()) return m;
        }
      }
      return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + to_str(key) + "'");
    }
    case Value::Type::kList: {
      if (key.type() != Value::Type::kInt && key.type() != Value::Type::kBool) {
        if (key.is_string()) return get_attr(obj, key.s(), at);
        return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + to_str(key) + "'");
      }
      int64_t i = key.i();
      const int64_t n = static_cast<int64_t>(obj.items().size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined(std::string(type_name(obj)) + " object has no element " + std::to_string(key.i()));
      return obj.items()[static_cast<size_t>(i)];
    }
    case Value::Type::kString: {
      if (key.type() != Value::Type::kInt && key.type() != Value::Type::kBool) {
        if (key.is_string()) return get_attr(obj, key.s(), at);
        return Value::undefined("'str object' has no attribute '" + to_str(key) + "'");
      }
      const auto cps = to_cps(obj.s());
      int64_t i = key.i();
      const int64_t n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined("str object has no element " + std::to_string(key.i()));
      std::string out;
      append_utf8(out, cps[static_cast<size_t>(i)]);
      return Value::string(std::move(out));
    }
    default:
      if (key.is_string()) return get_attr(obj, key.s(), at);
      return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + to_str(key) + "'");
  }
}

Value Interpreter::call(const Value& f, CallArgs& args, const Expr& at) {
  if (f.is_undefined()) {
    if (f.undefined_name().empty()) fail("undefined value is not callable", at);
    fail(f.undefined_name(), at);
  }
  if (f.type() != Value::Type::kFunc) fail(std::string("'") + type_name(f) + "' object is not callable", at);
  return f.func_ptr()->fn(*this, args);
}

// Bound methods of str / dict / list that the sandbox allows (Python names and behaviour).
Value Interpreter::method(const Value& obj, const std::string& name, const Expr& at) {
  const auto bind = [&](std::function<Value(const Value&, CallArgs&)> fn) {
    const Value self = obj;
    return Value::func(make_fn(name.c_str(), [self, fn](Interpreter&, CallArgs& a) { return fn(self, a); }));
  };
  const auto str_arg = [](const CallArgs& a, size_t i, const char* what) -> const std::string* {
    const Value* v = arg(a, i, what);
    if (!v || v->is_none()) return nullptr;
    if (!v->is_string()) throw_error(std::string(what) + " must be a string");
    return &v->s();
  };
  if (obj.is_string()) {
    if (name == "upper") return bind([](const Value& s, CallArgs&) { return Value::string(str_upper(s.s())); });
    if (name == "lower") return bind([](const Value& s, CallArgs&) { return Value::string(str_lower(s.s())); });
    if (name == "capitalize") return bind([](const Value& s, CallArgs&) { return Value::string(str_capitalize(s.s())); });
    if (name == "title") return bind([](const Value& s, CallArgs&) { return Value::string(str_title_method(s.s())); });
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const bool l = name != "rstrip", r = name != "lstrip";
      return bind([l, r, str_arg](const Value& s, CallArgs& a) {
        const std::string* chars = str_arg(a, 0, "chars");
        if (!chars) return Value::string(str_strip(s.s(), l, r));
        const auto cs = to_cps(*chars);
        return Value::string(str_strip(s.s(), l, r, &cs));
      });
    }
    if (name == "startswith" || name == "endswith") {
      const bool starts = name == "startswith";
      return bind([starts](const Value& s, CallArgs& a) {
        if (a.positional.empty()) throw_error("startswith/endswith takes at least 1 argument");
        const Value& p = a.positional[0];
        List pats = p.is_list() ? p.items() : List{p};
        for (const Value& x : pats) {
          if (!x.is_string()) throw_error("startswith/endswith argument must be str or a tuple of str");
          const std::string& t = x.s();
          if (t.size() > s.s().size()) continue;
          if (starts ? s.s().compare(0, t.size(), t) == 0 : s.s().compare(s.s().size() - t.size(), t.size(), t) == 0)
            return Value::boolean(true);
        }
        return Value::boolean(false);
      });
    }
    if (name == "split" || name == "rsplit") {
      const bool right = name == "rsplit";
      return bind([right, str_arg](const Value& s, CallArgs& a) {
        const std::string* sep = str_arg(a, 0, "sep");
        const Value* mv = arg(a, 1, "maxsplit");
        const int64_t maxsplit = mv ? to_index(*mv) : -1;
        List out;
        const std::string& text = s.s();
        if (!sep) {
          // Runs of whitespace separate; leading/trailing whitespace yields no empty strings.
          const auto cps = to_cps(text);
          std::vector<std::pair<size_t, size_t>> words;
          size_t k = 0;
          while (k < cps.size()) {
            while (k < cps.size() && is_python_whitespace(cps[k])) ++k;
            if (k >= cps.size()) break;
            size_t e = k;
            while (e < cps.size() && !is_python_whitespace(cps[e])) ++e;
            words.emplace_back(k, e);
            k = e;
          }
          if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit + 1) {
            if (!right) {
              const size_t keep = static_cast<size_t>(maxsplit);
              for (size_t w = 0; w < keep; ++w) out.push_back(Value::string(from_cps(cps, words[w].first, words[w].second)));
              size_t e = cps.size();
              while (e > words[keep].first && is_python_whitespace(cps[e - 1])) --e;
              out.push_back(Value::string(from_cps(cps, words[keep].first, e)));
            } else {
              const size_t first_kept = words.size() - static_cast<size_t>(maxsplit);
              size_t b = 0;
              while (b < words[first_kept - 1].second && is_python_whitespace(cps[b])) ++b;
              out.push_back(Value::string(from_cps(cps, b, words[first_kept - 1].second)));
              for (size_t w = first_kept; w < words.size(); ++w)
                out.push_back(Value::string(from_cps(cps, words[w].first, words[w].second)));
            }
          } else {
            for (const auto& [b, e] : words) out.push_back(Value::string(from_cps(cps, b, e)));
          }
          return Value::list(std::move(out));
        }
        if (sep->empty()) throw_error("empty separator");
        std::vector<std::string> parts;
        size_t pos = 0;
        while (true) {
          const size_t hit = text.find(*sep, pos);
          if (hit == std::string::npos) break;
          parts.push_back(text.substr(pos, hit - pos));
          pos = hit + sep->size();
        }
        parts.push_back(text.substr(pos));
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) > maxsplit + 1) {
          std::vector<std::string> merged;
          const size_t m = static_cast<size_t>(maxsplit);
          if (!right) {
            merged.assign(parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(m));
            std::string rest = parts[m];
            for (size_t k = m + 1; k < parts.size(); ++k) rest += *sep + parts[k];
            merged.push_back(rest);
          } else {
            const size_t head = parts.size() - m;
            std::string first = parts[0];
            for (size_t k = 1; k < head; ++k) first += *sep + parts[k];
            merged.push_back(first);
            merged.insert(merged.end(), parts.begin() + static_cast<std::ptrdiff_t>(head), parts.end());
          }
          parts.swap(merged);
        }
        for (auto& p : parts) out.push_back(Value::string(std::move(p)));
        return Value::list(std::move(out));
      });
    }
    if (name == "splitlines") {
      return bind([](const Value& s, CallArgs&) {
        List out;
        const std::string norm = s.s();
        std::string curline;
        size_t i = 0;
        bool pending = false;
        while (i < norm.size()) {
          const size_t at = i;
          const uint32_t c = utf8_next(norm, i);
          const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
                           c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
          if (brk) {
            if (c == '\r' && i < norm.size() && norm[i] == '\n') ++i;
            out.push_back(Value::string(curline));
            curline.clear();
            pending = false;
          } else {
            curline.append(norm, at, i - at);
            pending = true;
          }
        }
        if (pending) out.push_back(Value::string(curline));
        return Value::list(std::move(out));
      });
    }
    if (name == "replace") {
      return bind([](const Value& s, CallArgs& a) {
        if (a.positional.size() < 2 || !a.positional[0].is_string() || !a.positional[1].is_string())
          throw_error("replace expects two strings");
        const int64_t count = a.positional.size() > 2 ? to_index(a.positional[2]) : -1;
        return Value::string(replace_all(s.s(), a.positional[0].s(), a.positional[1].s(), count));
      });
    }
    if (name == "find" || name == "rfind" || name == "count" || name == "index") {
      const std::string nm = name;
      return bind([nm](const Value& s, CallArgs& a) {
        if (a.positional.empty() || !a.positional[0].is_string()) throw_error(nm + " expects a string");
        const std::string& sub = a.positional[0].s();
        if (nm == "count") {
          if (sub.empty()) return Value::integer(static_cast<int64_t>(utf8_length(s.s())) + 1);
          int64_t c = 0;
          size_t pos = 0;
          while ((pos = s.s().find(sub, pos)) != std::string::npos) {
            ++c;
            pos += sub.size();
          }
          return Value::integer(c);
        }
        const size_t hit = nm == "rfind" ? s.s().rfind(sub) : s.s().find(sub);
        if (hit == std::string::npos) {
          if (nm == "index") throw_error("substring not found");
          return Value::integer(-1);
        }
        return Value::integer(static_cast<int64_t>(utf8_length(std::string_view(s.s()).substr(0, hit))));
      });
    }
    if (name == "join") {
      return bind([](const Value& s, CallArgs& a) {
        if (a.positional.empty()) throw_error("join expects an iterable");
        const List items = iterate_impl(a.positional[0], [](const std::string& m) { throw_error(m); });
        std::string out;
        for (size_t k = 0; k < items.size(); ++k) {
          if (!items[k].is_string()) throw_error(std::string("sequence item ") + std::to_string(k) + ": expected str instance, " + type_name(items[k]) + " found");
          if (k) out += s.s();
          out += items[k].s();
        }
        return Value::string(std::move(out));
      });
    }
    if (name == "format") return bind([](const Value& s, CallArgs& a) { return Value::string(brace_format(s.s(), a)); });
    if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isupper" || name == "islower" ||
        name == "isalnum") {
      const std::string nm = name;
      return bind([nm](const Value& s, CallArgs&) {
        const auto cps = to_cps(s.s());
        if (cps.empty()) return Value::boolean(false);
        bool cased = false;
        for (uint32_t c : cps) {
          if (nm == "isdigit" && !(c >= '0' && c <= '9')) return Value::boolean(false);
          if (nm == "isalpha" && !cp_is_alpha(c)) return Value::boolean(false);
          if (nm == "isalnum" && !cp_is_alpha(c) && !(c >= '0' && c <= '9')) return Value::boolean(false);
          if (nm == "isspace" && !is_python_whitespace(c)) return Value::boolean(false);
          if (nm == "isupper" && cp_is_lower(c)) return Value::boolean(false);
          if (nm == "islower" && cp_is_upper(c)) return Value::boolean(false);
          if (cp_is_upper(c) || cp_is_lower(c)) cased = true;
        }
        if (nm == "isupper" || nm == "islower") return Value::boolean(cased);
        return Value::boolean(true);
      });
    }
    return Value();
  }
  if (obj.is_dict()) {
    if (name == "items")
      return bind([](const Value& d, CallArgs&) {
        List out;
        for (const auto& [k, v] : d.dict_ptr()->entries) out.push_back(Value::list({Value::string(k), v}, true));
        return Value::list(std::move(out));
      });
    if (name == "keys")
      return bind([](const Value& d, CallArgs&) {
        List out;
        for (const auto& [k, v] : d.dict_ptr()->entries) out.push_back(Value::string(k));
        return Value::list(std::move(out));
      });
    if (name == "values")
      return bind([](const Value& d, CallArgs&) {
        List out;
        for (const auto& [k, v] : d.dict_ptr()->entries) out.push_back(v);
        return Value::list(std::move(out));
      });
    if (name == "get")
      return bind([](const Value& d, CallArgs& a) {
        if (a.positional.empty()) throw_error("get expected at least 1 argument");
        if (a.positional[0].is_string())
          if (const Value* v = d.dict_ptr()->find(a.positional[0].s())) return *v;
        return a.positional.size() > 1 ? a.positional[1] : Value::none();
      });
    if (name == "copy") return bind([](const Value& d, CallArgs&) { return Value::dict(std::make_shared<Dict>(*d.dict_ptr())); });
    if (name == "pop" || name == "popitem" || name == "update" || name == "setdefault" || name == "clear")
      return bind([name](const Value&, CallArgs&) -> Value {
        throw_error("access to attribute '" + name + "' of 'dict' object is unsafe (templates cannot modify data)");
      });
    return Value();
  }
  if (obj.is_list()) {
    if (name == "index" || name == "count") {
      const bool idx = name == "index";
      return bind([idx](const Value& l, CallArgs& a) {
        if (a.positional.empty()) throw_error("expected 1 argument");
        int64_t c = 0;
        for (size_t k = 0; k < l.items().size(); ++k) {
          if (!values_equal(l.items()[k], a.positional[0])) continue;
          if (idx) return Value::integer(static_cast<int64_t>(k));
          ++c;
        }
        if (idx) throw_error(to_repr(a.positional[0]) + " is not in list");
        return Value::integer(c);
      });
    }
    if (!obj.is_tuple() && (name == "append" || name == "extend" || name == "insert" || name == "pop" ||
                            name == "remove" || name == "sort" || name == "reverse" || name == "clear"))
      return bind([name](const Value&, CallArgs&) -> Value {
        throw_error("access to attribute '" + name + "' of 'list' object is unsafe (templates cannot modify data)");
      });
  }
  (void)at;
  return Value();
}

Value Interpreter::binop(const std::string& op, const Value& a, const Value& b, const Expr& at) {
  if (op == "~") return Value::string(to_str(a) + to_str(b));
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  const auto unsupported = [&]() {
    fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'", at);
  };
  const bool ints = (a.type() == Value::Type::kInt || a.type() == Value::Type::kBool) &&
                    (b.type() == Value::Type::kInt || b.type() == Value::Type::kBool);
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(a.i(), b.i(), &r)) fail("integer overflow", at);
      return Value::integer(r);
    }
    if (nums) return Value::number(as_double(a) + as_double(b));
    if (a.is_string() && b.is_string()) {
      if (a.s().size() + b.s().size() > kMaxOutput) fail("string too long", at);
      return Value::string(a.s() + b.s());
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      List out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return Value::list(std::move(out), a.is_tuple());
    }
    if (a.is_string() || b.is_string())
      fail(std::string("can only concatenate str (not \"") + type_name(a.is_string() ? b : a) + "\") to str", at);
    unsupported();
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(a.i(), b.i(), &r)) fail("integer overflow", at);
      return Value::integer(r);
    }
    if (nums) return Value::number(as_double(a) - as_double(b));
    unsupported();
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(a.i(), b.i(), &r)) fail("integer overflow", at);
      return Value::integer(r);
    }
    if (nums) return Value::number(as_double(a) * as_double(b));
    const Value* seq = nullptr;
    const Value* cnt = nullptr;
    if ((a.is_string() || a.is_list()) && (b.type() == Value::Type::kInt || b.type() == Value::Type::kBool)) seq = &a, cnt = &b;
    if ((b.is_string() || b.is_list()) && (a.type() == Value::Type::kInt || a.type() == Value::Type::kBool)) seq = &b, cnt = &a;
    if (!seq) unsupported();
    const int64_t n = std::max<int64_t>(0, cnt->i());
    if (seq->is_string()) {
      if (static_cast<double>(seq->s().size()) * static_cast<double>(n) > static_cast<double>(kMaxOutput)) fail("string too long", at);
      std::string out;
      for (int64_t k = 0; k < n; ++k) out += seq->s();
      return Value::string(std::move(out));
    }
    if (static_cast<double>(seq->items().size()) * static_cast<double>(n) > 1e7) fail("list too long", at);
    List out;
    for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq->items().begin(), seq->items().end());
    return Value::list(std::move(out), seq->is_tuple());
  }
  if (op == "/") {
    if (!nums) unsupported();
    if (as_double(b) == 0.0) fail("division by zero", at);
    return Value::number(as_double(a) / as_double(b));
  }
  if (op == "//") {
    if (!nums) unsupported();
    if (ints) {
      if (b.i() == 0) fail("integer division or modulo by zero", at);
      return Value::integer(py_floordiv(a.i(), b.i()));
    }
    if (as_double(b) == 0.0) fail("float floor division by zero", at);
    return Value::number(std::floor(as_double(a) / as_double(b)));
  }
  if (op == "%") {
    if (a.is_string()) return Value::string(percent_format(a.s(), b.is_tuple() ? b.items() : List{b}));
    if (!nums) unsupported();
    if (ints) {
      if (b.i() == 0) fail("integer division or modulo by zero", at);
      return Value::integer(py_mod(a.i(), b.i()));
    }
    const double x = as_double(a), y = as_double(b);
    if (y == 0.0) fail("float modulo", at);
    double r = std::fmod(x, y);
    if (r != 0.0 && ((r < 0) != (y < 0))) r += y;
    return Value::number(r);
  }
  if (op == "**") {
    if (!nums) unsupported();
    if (ints && b.i() >= 0) {
      int64_t r = 1, base = a.i();
      for (int64_t k = 0; k < b.i(); ++k)
        if (__builtin_mul_overflow(r, base, &r)) fail("integer overflow", at);
      return Value::integer(r);
    }
    return Value::number(std::pow(as_double(a), as_double(b)));
  }
  fail("unknown operator " + op, at);
}

bool Interpreter::compare(const std::string& op, const Value& a, const Value& b, const Expr& at) {
  try {
    if (op == "==") return values_equal(a, b);
    if (op == "!=") return !values_equal(a, b);
    if (op == "in") return contains(b, a);
    if (op == "not in") return !contains(b, a);
    if (a.is_undefined()) undefined_error(a);
    if (b.is_undefined()) undefined_error(b);
    const int c = order(a, b, op.c_str());
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    if (op == ">=") return c >= 0;
  } catch (TplError& e) {
    if (e.line == 0) {
      e.line = at.line;
      e.col = at.col;
    }
    throw;
  }
  fail("unknown comparison " + op, at);
}

Value Interpreter::apply_filter_chain(const Expr& chain, const Value& subject) {
  // The chain was parsed with a null innermost subject: evaluate from the inside out.
  if (chain.kind != Expr::kFilter) return subject;
  const Value inner = chain.args[0] ? apply_filter_chain(*chain.args[0], subject) : subject;
  CallArgs a = eval_args(chain, 1);
  return apply_filter(chain.name, inner, a, chain);
}

bool Interpreter::apply_test(const std::string& name, const Value& v, CallArgs& a, const Expr& at) {
  const auto need = [&](size_t n) -> const Value& {
    if (a.positional.size() < n) fail("test '" + name + "' needs an argument", at);
    return a.positional[n - 1];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.type() == Value::Type::kBool;
  if (name == "true") return v.type() == Value::Type::kBool && v.b();
  if (name == "false") return v.type() == Value::Type::kBool && !v.b();
  if (name == "integer") return v.type() == Value::Type::kInt;
  if (name == "float") return v.type() == Value::Type::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "callable") return v.type() == Value::Type::kFunc;
  if (name == "lower") return v.is_string() && str_lower(v.s()) == v.s();
  if (name == "upper") return v.is_string() && str_upper(v.s()) == v.s();
  if (name == "odd" || name == "even") {
    if (v.type() != Value::Type::kInt && v.type() != Value::Type::kBool) fail("test '" + name + "' needs an integer", at);
    return (py_mod(v.i(), 2) == 1) == (name == "odd");
  }
  if (name == "divisibleby") {
    const Value& d = need(1);
    if (!v.is_number() || !d.is_number()) fail("divisibleby needs numbers", at);
    if (as_double(d) == 0.0) fail("integer division or modulo by zero", at);
    return std::fmod(as_double(v), as_double(d)) == 0.0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return values_equal(v, need(1));
  if (name == "ne" || name == "!=") return !values_equal(v, need(1));
  if (name == "sameas") {
    const Value& o = need(1);
    if (v.type() != o.type()) return false;
    if (v.is_list()) return v.list_ptr() == o.list_ptr();
    if (v.is_dict()) return v.dict_ptr() == o.dict_ptr();
    return values_equal(v, o);
  }
  if (name == "in") return contains(need(1), v);
  if (name == "lt" || name == "lessthan" || name == "<") return compare("<", v, need(1), at);
  if (name == "le" || name == "<=") return compare("<=", v, need(1), at);
  if (name == "gt" || name == "greaterthan" || name == ">") return compare(">", v, need(1), at);
  if (name == "ge" || name == ">=") return compare(">=", v, need(1), at);
  fail("unsupported test '" + name + "'", at);
}

Value Interpreter::apply_filter(const std::string& name, const Value& v, CallArgs& a, const Expr& at) {
  const auto items_of = [&](const Value& x) { return iterate(x, at); };
  const auto str_of = [](const Value& x) { return to_str(x); };
  // Attribute lookup used by map / selectattr / sort / join / sum (dotted paths allowed).
  const auto attr_path = [&](const Value& x, const std::string& path) {
    Value cur = x;
    size_t b = 0;
    while (true) {
      const size_t dot = path.find('.', b);
      const std::string part = path.substr(b, dot == std::string::npos ? std::string::npos : dot - b);
      if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
        cur = get_item(cur, Value::integer(std::stoll(part)), at);
      else
        cur = cur.is_undefined() ? cur : get_item(cur, Value::string(part), at);
      if (dot == std::string::npos) break;
      b = dot + 1;
    }
    return cur;
  };

  if (name == "safe" || name == "forceescape") return v;
  if (name == "string") return Value::string(str_of(v));
  if (name == "upper") return Value::string(str_upper(str_of(v)));
  if (name == "lower") return Value::string(str_lower(str_of(v)));
  if (name == "capitalize") return Value::string(str_capitalize(str_of(v)));
  if (name == "title") return Value::string(str_title_filter(str_of(v)));
  if (name == "trim") {
    const Value* chars = arg(a, 0, "chars");
    if (chars && chars->is_string()) {
      const auto cs = to_cps(chars->s());
      return Value::string(str_strip(str_of(v), true, true, &cs));
    }
    return Value::string(str_strip(str_of(v), true, true));
  }
  if (name == "length" || name == "count") {
    if (v.is_undefined()) return Value::integer(0);
    try {
      return Value::integer(length_of(v));
    } catch (TplError& e) {
      fail(e.message, at);
    }
  }
  if (name == "default" || name == "d") {
    const Value* def = arg(a, 0, "default_value");
    const Value* boolean = arg(a, 1, "boolean");
    const bool use_bool = boolean && truthy(*boolean);
    if (v.is_undefined() || (use_bool && !truthy(v))) return def ? *def : Value::string("");
    return v;
  }
  if (name == "tojson") {
    const Value* ind = arg(a, 0, "indent");
    int indent = -1;
    if (ind && !ind->is_none()) {
      if (ind->is_string()) fail("tojson: string indents are not supported", at);
      indent = static_cast<int>(std::clamp<int64_t>(to_index(*ind), 0, 64));
    }
    const Value* sk = kwarg(a, "sort_keys");
    const Value* sep = kwarg(a, "separators");
    std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
    if (sep && sep->is_list() && sep->items().size() == 2 && sep->items()[0].is_string() && sep->items()[1].is_string()) {
      item_sep = sep->items()[0].s();
      key_sep = sep->items()[1].s();
    }
    if (const Value* ea = kwarg(a, "ensure_ascii"); ea && truthy(*ea)) fail("tojson(ensure_ascii=True) is not supported", at);
    std::string out;
    try {
      json_dump(out, v, indent, sk && truthy(*sk), item_sep, key_sep, 0);
    } catch (TplError& e) {
      fail(e.message, at);
    }
    return Value::string(std::move(out));
  }
  if (name == "first" || name == "last") {
    const List items = items_of(v);
    if (items.empty()) return Value::undefined("No " + name + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::list(items_of(v));
  if (name == "join") {
    const Value* sep = arg(a, 0, "d");
    const Value* attr = arg(a, 1, "attribute");
    std::string out;
    const List items = items_of(v);
    for (size_t k = 0; k < items.size(); ++k) {
      if (k && sep) out += str_of(*sep);
      out += str_of(attr ? attr_path(items[k], str_of(*attr)) : items[k]);
    }
    return Value::string(std::move(out));
  }
  if (name == "reverse") {
    if (v.is_string()) {
      auto cps = to_cps(v.s());
      std::reverse(cps.begin(), cps.end());
      return Value::string(from_cps(cps));
    }
    List items = items_of(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) fail("items filter expects a mapping", at);
    List out;
    for (const auto& [k, val] : v.dict_ptr()->entries) out.push_back(Value::list({Value::string(k), val}, true));
    return Value::list(std::move(out));
  }
  if (name == "dictsort") {
    if (!v.is_dict()) fail("dictsort expects a mapping", at);
    const Value* cs = arg(a, 0, "case_sensitive");
    const Value* by = arg(a, 1, "by");
    const Value* rev = arg(a, 2, "reverse");
    const bool case_sensitive = cs && truthy(*cs);
    const bool by_value = by && by->is_string() && by->s() == "value";
    List out;
    for (const auto& [k, val] : v.dict_ptr()->entries) out.push_back(Value::list({Value::string(k), val}, true));
    std::stable_sort(out.begin(), out.end(), [&](const Value& x, const Value& y) {
      Value kx = x.items()[by_value ? 1 : 0], ky = y.items()[by_value ? 1 : 0];
      if (!case_sensitive && kx.is_string() && ky.is_string()) {
        kx = Value::string(str_lower(kx.s()));
        ky = Value::string(str_lower(ky.s()));
      }
      return order(kx, ky, "<") < 0;
    });
    if (rev && truthy(*rev)) std::reverse(out.begin(), out.end());
    return Value::list(std::move(out));
  }
  if (name == "sort") {
    const Value* rev = arg(a, 0, "reverse");
    const Value* cs = arg(a, 1, "case_sensitive");
    const Value* attr = arg(a, 2, "attribute");
    const bool case_sensitive = cs && truthy(*cs);
    List items = items_of(v);
    const auto key = [&](const Value& x) {
      Value k = attr ? attr_path(x, str_of(*attr)) : x;
      if (!case_sensitive && k.is_string()) k = Value::string(str_lower(k.s()));
      return k;
    };
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) { return order(key(x), key(y), "<") < 0; });
    if (rev && truthy(*rev)) std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "unique") {
    List out;
    for (const Value& x : items_of(v)) {
      bool seen = false;
      for (const Value& y : out)
        if (values_equal(x.is_string() ? Value::string(str_lower(x.s())) : x, y.is_string() ? Value::string(str_lower(y.s())) : y)) seen = true;
      if (!seen) out.push_back(x);
    }
    return Value::list(std::move(out));
  }
  if (name == "map") {
    List out;
    const Value* attr = kwarg(a, "attribute");
    if (attr) {
      const Value* def = kwarg(a, "default");
      for (const Value& x : items_of(v)) {
        Value r = attr_path(x, str_of(*attr));
        out.push_back(r.is_undefined() && def ? *def : r);
      }
      return Value::list(std::move(out));
    }
    if (a.positional.empty() || !a.positional[0].is_string()) fail("map needs a filter name or attribute=", at);
    const std::string fname = a.positional[0].s();
    CallArgs rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.keyword = a.keyword;
    for (const Value& x : items_of(v)) {
      CallArgs copy = rest;
      out.push_back(apply_filter(fname, x, copy, at));
    }
    return Value::list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    const bool is_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_when = name == "select" || name == "selectattr";
    size_t k = 0;
    std::string attr;
    if (is_attr) {
      if (a.positional.empty()) fail(name + " needs an attribute name", at);
      attr = str_of(a.positional[0]);
      k = 1;
    }
    std::string test;
    CallArgs targs;
    if (a.positional.size() > k) {
      test = str_of(a.positional[k]);
      targs.positional.assign(a.positional.begin() + static_cast<std::ptrdiff_t>(k) + 1, a.positional.end());
    }
    List out;
    for (const Value& x : items_of(v)) {
      const Value subject = is_attr ? attr_path(x, attr) : x;
      CallArgs copy = targs;
      const bool r = test.empty() ? truthy(subject) : apply_test(test, subject, copy, at);
      if (r == keep_when) out.push_back(x);
    }
    return Value::list(std::move(out));
  }
  if (name == "attr") {
    if (a.positional.empty()) fail("attr needs a name", at);
    return get_attr(v, str_of(a.positional[0]), at);
  }
  if (name == "int") {
    const Value* def = arg(a, 0, "default");
    const Value fallback = def ? *def : Value::integer(0);
    if (v.type() == Value::Type::kInt || v.type() == Value::Type::kBool) return Value::integer(v.i());
    if (v.type() == Value::Type::kFloat) return std::isfinite(v.f()) ? Value::integer(static_cast<int64_t>(v.f())) : fallback;
    if (v.is_string()) {
      const std::string s = str_strip(v.s(), true, true);
      int64_t x = 0;
      const auto r = std::from_chars(s.data(), s.data() + s.size(), x);
      if (r.ec == std::errc() && r.ptr == s.data() + s.size()) return Value::integer(x);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(d)) return Value::integer(static_cast<int64_t>(d));
    }
    return fallback;
  }
  if (name == "float") {
    const Value* def = arg(a, 0, "default");
    const Value fallback = def ? *def : Value::number(0.0);
    if (v.is_number()) return Value::number(as_double(v));
    if (v.is_string()) {
      const std::string s = str_strip(v.s(), true, true);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value::number(d);
    }
    return fallback;
  }
  if (name == "abs") {
    if (!v.is_number()) fail(std::string("bad operand type for abs(): '") + type_name(v) + "'", at);
    if (v.type() == Value::Type::kFloat) return Value::number(std::fabs(v.f()));
    return Value::integer(v.i() < 0 ? -v.i() : v.i());
  }
  if (name == "round") {
    const Value* prec = arg(a, 0, "precision");
    const Value* method = arg(a, 1, "method");
    if (!v.is_number()) fail("round needs a number", at);
    const int64_t p = prec ? to_index(*prec) : 0;
    const double scale = std::pow(10.0, static_cast<double>(p));
    const std::string m = method ? str_of(*method) : "common";
    double x = as_double(v) * scale;
    if (m == "ceil") x = std::ceil(x);
    else if (m == "floor") x = std::floor(x);
    else x = std::nearbyint(x);  // Python round(): half to even
    return Value::number(x / scale);
  }
  if (name == "replace") {
    if (a.positional.size() < 2) fail("replace needs old and new strings", at);
    const Value* count = arg(a, 2, "count");
    return Value::string(replace_all(str_of(v), str_of(a.positional[0]), str_of(a.positional[1]),
                                     count && !count->is_none() ? to_index(*count) : -1));
  }
  if (name == "format") {
    if (!v.is_string()) fail("format filter needs a format string", at);
    if (!a.keyword.empty()) return Value::string(brace_format(v.s(), a));
    return Value::string(percent_format(v.s(), a.positional));
  }
  if (name == "indent") {
    const Value* w = arg(a, 0, "width");
    const Value* first = arg(a, 1, "first");
    const Value* blank = arg(a, 2, "blank");
    std::string pad = w ? (w->is_string() ? w->s() : std::string(static_cast<size_t>(std::clamp<int64_t>(to_index(*w), 0, 256)), ' ')) : "    ";
    const std::string s = str_of(v);
    std::string out;
    size_t pos = 0;
    bool first_line = true;
    while (pos <= s.size()) {
      const size_t nl = s.find('\n', pos);
      const std::string line = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      const bool indent_it = first_line ? (first && truthy(*first)) : (!line.empty() || (blank && truthy(*blank)));
      if (indent_it) out += pad;
      out += line;
      if (nl == std::string::npos) break;
      out += '\n';
      pos = nl + 1;
      first_line = false;
    }
    return Value::string(std::move(out));
  }
  if (name == "wordcount") {
    const auto cps = to_cps(str_of(v));
    int64_t n = 0;
    bool in_word = false;
    for (uint32_t c : cps) {
      const bool w = cp_is_alpha(c) || (c >= '0' && c <= '9') || c == '_';
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::integer(n);
  }
  if (name == "sum") {
    const Value* attr = arg(a, 0, "attribute");
    const Value* start = arg(a, 1, "start");
    Value acc = start ? *start : Value::integer(0);
    for (const Value& x : items_of(v)) acc = binop("+", acc, attr ? attr_path(x, str_of(*attr)) : x, at);
    return acc;
  }
  if (name == "min" || name == "max") {
    const List items = items_of(v);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    const Value* attr = arg(a, 1, "attribute");
    Value best = items[0];
    for (const Value& x : items) {
      const Value kx = attr ? attr_path(x, str_of(*attr)) : x, kb = attr ? attr_path(best, str_of(*attr)) : best;
      const int c = order(kx.is_string() ? Value::string(str_lower(kx.s())) : kx, kb.is_string() ? Value::string(str_lower(kb.s())) : kb, "<");
      if (name == "min" ? c < 0 : c > 0) best = x;
    }
    return best;
  }
  if (name == "escape" || name == "e") {
    std::string out;
    for (char c : str_of(v)) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
      }
    }
    return Value::string(std::move(out));
  }
  fail("unsupported filter '" + name + "'", at);
}

// ============================================================================================ Template

Result<Template> Template::parse(const std::string& source) {
  try {
    const std::string norm = normalize_newlines(utf8_lossy(source));
    Lexer lexer(norm);
    std::vector<Token> toks = lexer.run();
    Parser parser(std::move(toks));
    std::unique_ptr<Node> root = parser.parse_template();
    Template t;
    t.root_ = std::shared_ptr<const Node>(std::move(root));
    return t;
  } catch (const TplError& e) {
    return InvalidArgument("chat template syntax error at line " + std::to_string(e.line) + " column " +
                           std::to_string(e.col) + ": " + e.message);
  }
}

Result<std::string> Template::render(const Value& globals) const {
  if (!root_) return InvalidArgument("chat template: rendering an empty (unparsed) template");
  try {
    Interpreter in(globals);
    return in.run(*root_);
  } catch (const TplError& e) {
    return InvalidArgument("chat template error at line " + std::to_string(e.line) + " column " +
                           std::to_string(e.col) + ": " + e.message);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "chat template: out of memory while rendering");
  }
}

}  // namespace ev::text::jinja
