// A small JSON reader for engine headers and config.json: objects, arrays, strings (with \u escapes),
// numbers (kept as double and, when integral, exact int64), true/false/null. Errors throw JsonError
// with the byte offset.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tsllm {

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  static Json parse(const std::string& text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  bool is_bool() const { return type_ == Type::Bool; }

  // Accessors throw JsonError naming `what` when the type is wrong.
  double num(const char* what = "value") const;
  int64_t i64(const char* what = "value") const;  // must be an integral number
  const std::string& str(const char* what = "value") const;
  bool boolean(const char* what = "value") const;
  const std::vector<Json>& arr(const char* what = "value") const;
  const std::vector<std::pair<std::string, Json>>& obj(const char* what = "value") const;

  // Object member or nullptr.
  const Json* find(const std::string& key) const;
  // Object member; throws if missing.
  const Json& at(const std::string& key) const;
  size_t size() const;

  // Convenience with defaults (absent or null -> default).
  double num_or(const std::string& key, double dflt) const;
  int64_t i64_or(const std::string& key, int64_t dflt) const;
  std::string str_or(const std::string& key, const std::string& dflt) const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool b_ = false;
  double n_ = 0;
  int64_t i_ = 0;
  bool integral_ = false;
  std::string s_;
  std::vector<Json> a_;
  std::vector<std::pair<std::string, Json>> o_;
};

}  // namespace tsllm
