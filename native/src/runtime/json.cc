#include "json.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace tsllm {

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  Json parse_document() {
    Json v = parse_value(0);
    skip_ws();
    if (p_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t p_ = 0;

  [[noreturn]] void fail(const char* why) const {
    throw JsonError(std::string("JSON parse error at byte ") + std::to_string(p_) + ": " + why);
  }
  void skip_ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\n' || s_[p_] == '\r' || s_[p_] == '\t')) p_++;
  }
  bool consume(const char* lit) {
    size_t n = std::strlen(lit);
    if (s_.compare(p_, n, lit) == 0) {
      p_ += n;
      return true;
    }
    return false;
  }

  Json parse_value(int depth) {
    if (depth > 64) fail("nesting too deep");
    skip_ws();
    if (p_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[p_];
    if (c == '{') {
      v.type_ = Json::Type::Object;
      p_++;
      skip_ws();
      if (p_ < s_.size() && s_[p_] == '}') {
        p_++;
        return v;
      }
      for (;;) {
        skip_ws();
        if (p_ >= s_.size() || s_[p_] != '"') fail("expected a key string");
        std::string key = parse_string();
        skip_ws();
        if (p_ >= s_.size() || s_[p_] != ':') fail("expected ':'");
        p_++;
        v.o_.emplace_back(std::move(key), parse_value(depth + 1));
        skip_ws();
        if (p_ < s_.size() && s_[p_] == ',') {
          p_++;
          continue;
        }
        if (p_ < s_.size() && s_[p_] == '}') {
          p_++;
          return v;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = Json::Type::Array;
      p_++;
      skip_ws();
      if (p_ < s_.size() && s_[p_] == ']') {
        p_++;
        return v;
      }
      for (;;) {
        v.a_.push_back(parse_value(depth + 1));
        skip_ws();
        if (p_ < s_.size() && s_[p_] == ',') {
          p_++;
          continue;
        }
        if (p_ < s_.size() && s_[p_] == ']') {
          p_++;
          return v;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = Json::Type::String;
      v.s_ = parse_string();
      return v;
    }
    if (consume("true")) {
      v.type_ = Json::Type::Bool;
      v.b_ = true;
      return v;
    }
    if (consume("false")) {
      v.type_ = Json::Type::Bool;
      return v;
    }
    if (consume("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    fail("unexpected character");
  }

  Json parse_number() {
    size_t start = p_;
    bool integral = true;
    if (s_[p_] == '-') p_++;
    while (p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9') p_++;
    if (p_ < s_.size() && s_[p_] == '.') {
      integral = false;
      p_++;
      while (p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9') p_++;
    }
    if (p_ < s_.size() && (s_[p_] == 'e' || s_[p_] == 'E')) {
      integral = false;
      p_++;
      if (p_ < s_.size() && (s_[p_] == '+' || s_[p_] == '-')) p_++;
      while (p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9') p_++;
    }
    std::string tok = s_.substr(start, p_ - start);
    if (tok == "-" || tok.empty()) fail("bad number");
    Json v;
    v.type_ = Json::Type::Number;
    v.n_ = std::strtod(tok.c_str(), nullptr);
    if (integral && tok.size() <= 19) {
      v.integral_ = true;
      v.i_ = std::strtoll(tok.c_str(), nullptr, 10);
    } else if (std::isfinite(v.n_) && v.n_ == std::floor(v.n_) && std::fabs(v.n_) < 9.007199254740992e15) {
      v.integral_ = true;
      v.i_ = static_cast<int64_t>(v.n_);
    }
    return v;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  uint32_t parse_hex4() {
    if (p_ + 4 > s_.size()) fail("short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
      char c = s_[p_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  }

  std::string parse_string() {
    p_++;  // opening quote
    std::string out;
    for (;;) {
      if (p_ >= s_.size()) fail("unterminated string");
      char c = s_[p_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p_ >= s_.size()) fail("unterminated escape");
      char e = s_[p_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && p_ + 1 < s_.size() && s_[p_] == '\\' && s_[p_ + 1] == 'u') {
            p_ += 2;
            uint32_t lo = parse_hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).parse_document(); }

static const char* type_name(Json::Type t) {
  switch (t) {
    case Json::Type::Null: return "null";
    case Json::Type::Bool: return "a boolean";
    case Json::Type::Number: return "a number";
    case Json::Type::String: return "a string";
    case Json::Type::Array: return "an array";
    case Json::Type::Object: return "an object";
  }
  return "?";
}

[[noreturn]] static void type_fail(const char* what, const char* want, Json::Type got) {
  throw JsonError(std::string(what) + " must be " + want + ", got " + type_name(got));
}

double Json::num(const char* what) const {
  if (type_ != Type::Number) type_fail(what, "a number", type_);
  return n_;
}
int64_t Json::i64(const char* what) const {
  if (type_ != Type::Number) type_fail(what, "an integer", type_);
  if (!integral_) throw JsonError(std::string(what) + " must be an integer, got " + std::to_string(n_));
  return i_;
}
const std::string& Json::str(const char* what) const {
  if (type_ != Type::String) type_fail(what, "a string", type_);
  return s_;
}
bool Json::boolean(const char* what) const {
  if (type_ != Type::Bool) type_fail(what, "a boolean", type_);
  return b_;
}
const std::vector<Json>& Json::arr(const char* what) const {
  if (type_ != Type::Array) type_fail(what, "an array", type_);
  return a_;
}
const std::vector<std::pair<std::string, Json>>& Json::obj(const char* what) const {
  if (type_ != Type::Object) type_fail(what, "an object", type_);
  return o_;
}
const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (auto& kv : o_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
const Json& Json::at(const std::string& key) const {
  const Json* j = find(key);
  if (!j) throw JsonError("missing key \"" + key + "\"");
  return *j;
}
size_t Json::size() const { return type_ == Type::Array ? a_.size() : type_ == Type::Object ? o_.size() : 0; }

double Json::num_or(const std::string& key, double dflt) const {
  const Json* j = find(key);
  return (!j || j->is_null()) ? dflt : j->num(key.c_str());
}
int64_t Json::i64_or(const std::string& key, int64_t dflt) const {
  const Json* j = find(key);
  return (!j || j->is_null()) ? dflt : j->i64(key.c_str());
}
std::string Json::str_or(const std::string& key, const std::string& dflt) const {
  const Json* j = find(key);
  return (!j || j->is_null()) ? dflt : j->str(key.c_str());
}

}  // namespace tsllm
