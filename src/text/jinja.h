// A small Jinja2 interpreter for Hugging Face chat templates, configured as transformers configures Jinja for
// apply_chat_template (transformers/utils/chat_template_utils.py _compile_jinja_template):
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]), with
// `tojson` replaced by json.dumps(ensure_ascii=False), and the globals raise_exception and strftime_now.
//
// Values follow Python semantics (str() of None is "None", integer vs float arithmetic, floor division and
// modulo, list/dict repr, truthiness, chained comparisons); undefined variables behave as jinja2.Undefined
// (print as "", iterate as empty, fail on attribute access or arithmetic).
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (-, +), raw blocks; statements if/elif/else, for (tuple
// targets, `if` filter, else, loop.* incl. cycle), set (also ns.attr and block set), macro (defaults, keyword
// args), filter blocks, break/continue, generation blocks; expressions with literals, tuples, lists, dicts,
// attribute/item access, slices, calls, filters, tests, conditional expressions, ~, +, -, *, /, //, %, **.
// Anything else (extends, include, import, call blocks ...) fails at parse time with the template line and
// column.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace ev::text::jinja {

class Value;
struct Dict;
struct Callable;
using List = std::vector<Value>;

class Value {
 public:
  enum class Type : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunc };

  Value() = default;  // undefined
  static Value undefined(std::string name = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(List items, bool tuple = false);
  static Value dict(std::shared_ptr<Dict> d);
  static Value func(std::shared_ptr<Callable> f);

  template <typename Json>
  static Value from_json(const Json& j);

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::kUndefined; }
  bool is_none() const { return type_ == Type::kNone; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_number() const { return type_ == Type::kInt || type_ == Type::kFloat || type_ == Type::kBool; }
  bool is_list() const { return type_ == Type::kList; }
  bool is_dict() const { return type_ == Type::kDict; }
  bool is_tuple() const { return type_ == Type::kList && tuple_; }

  bool b() const { return b_; }
  int64_t i() const { return i_; }
  double f() const { return f_; }
  const std::string& s() const { return s_; }
  std::string& s_mut() { return s_; }
  const List& items() const { return *list_; }
  const std::shared_ptr<List>& list_ptr() const { return list_; }
  const std::shared_ptr<Dict>& dict_ptr() const { return dict_; }
  const std::shared_ptr<Callable>& func_ptr() const { return fn_; }
  const std::string& undefined_name() const { return s_; }

 private:
  Type type_ = Type::kUndefined;
  bool tuple_ = false;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0.0;
  std::string s_;  // string value, or the name of an undefined variable
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Callable> fn_;
};

// Insertion-ordered string-keyed dictionary (Python dicts keep insertion order; chat templates iterate them).
struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  bool is_namespace = false;  // jinja2 namespace(): the one mutable object (set ns.x = ...)
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

class Interpreter;
struct Callable {
  std::string name;
  std::function<Value(Interpreter&, CallArgs&)> fn;
};

template <typename Json>
Value Value::from_json(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return none();
    case Json::value_t::boolean: return boolean(j.template get<bool>());
    case Json::value_t::number_integer: return integer(j.template get<int64_t>());
    case Json::value_t::number_unsigned: {
      const uint64_t u = j.template get<uint64_t>();
      return u > static_cast<uint64_t>(INT64_MAX) ? number(static_cast<double>(u)) : integer(static_cast<int64_t>(u));
    }
    case Json::value_t::number_float: return number(j.template get<double>());
    case Json::value_t::string: return string(j.template get<std::string>());
    case Json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return list(std::move(items));
    }
    case Json::value_t::object: {
      auto d = std::make_shared<Dict>();
      for (auto it = j.begin(); it != j.end(); ++it) d->entries.emplace_back(it.key(), from_json(it.value()));
      return dict(std::move(d));
    }
    default: return undefined();  // binary / discarded: not produced by JSON text
  }
}

// Python str() / repr() of a value, and json.dumps(ensure_ascii=False, indent, sort_keys) as transformers'
// tojson filter produces it. Exposed for tests.
std::string to_str(const Value& v);
std::string to_repr(const Value& v);
std::string python_float_repr(double d);

struct Node;

// A parsed template. Parse once, render many times (render is const and thread-safe).
class Template {
 public:
  static Result<Template> parse(const std::string& source);
  // globals: the render context (a dict of variables). Errors carry the template line and column.
  Result<std::string> render(const Value& globals) const;

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace ev::text::jinja
