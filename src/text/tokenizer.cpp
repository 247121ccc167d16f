// Port of the encode/decode behaviour of Hugging Face `tokenizers` (Rust), files cited at each part:
//   tokenizer/added_vocabulary.rs   added-token matching (find_matches, extract_and_normalize)
//   tokenizer/normalizer.rs         NormalizedString::split (SplitDelimiterBehavior), replace
//   pre_tokenizers/byte_level.rs    ByteLevel pre-tokenizer and decoder
//   pre_tokenizers/{split,digits,whitespace}.rs
//   models/bpe/model.rs, word.rs    BPE merge_word / merge_all
//   processors/{template,roberta,bert}.rs
//   decoders/{byte_fallback,fuse,strip}.rs, normalizers/{replace,prepend,strip}.rs
#include "text/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "text/regex.h"
#include "text/unicode.h"
#include "text/unicode_nfc.h"

namespace ev::text {

namespace {

using json = nlohmann::json;

// Thrown only inside from_json_string and turned into a Status there.
struct LoadError {
  StatusCode code;
  std::string message;
};
[[noreturn]] void fail(const std::string& m) { throw LoadError{StatusCode::kCorrupt, m}; }
[[noreturn]] void unsupported(const std::string& m) { throw LoadError{StatusCode::kUnsupported, m}; }

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
struct SvEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
};
using StrIdMap = std::unordered_map<std::string, int32_t, SvHash, SvEq>;

// ---- JSON field helpers (path names the field in errors) ----

const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

bool get_bool(const json& obj, const char* key, bool def, const std::string& path) {
  const json* f = field(obj, key);
  if (!f) return def;
  if (!f->is_boolean()) fail(path + "." + key + " must be a boolean");
  return f->get<bool>();
}

std::string get_string(const json& obj, const char* key, const std::string& path) {
  const json* f = field(obj, key);
  if (!f || !f->is_string()) fail(path + "." + key + " must be a string");
  return f->get<std::string>();
}

std::optional<std::string> get_opt_string(const json& obj, const char* key, const std::string& path) {
  const json* f = field(obj, key);
  if (!f) return std::nullopt;
  if (!f->is_string()) fail(path + "." + key + " must be a string or null");
  return f->get<std::string>();
}

int64_t get_int(const json& obj, const char* key, int64_t def, const std::string& path) {
  const json* f = field(obj, key);
  if (!f) return def;
  if (!f->is_number_integer()) fail(path + "." + key + " must be an integer");
  return f->get<int64_t>();
}

std::string type_of(const json& obj, const std::string& path) {
  if (!obj.is_object()) fail(path + " must be an object");
  return get_string(obj, "type", path);
}

// ---- shared pieces ----

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior parse_behavior(const json& obj, const std::string& path) {
  const std::string b = get_string(obj, "behavior", path);
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  fail(path + ".behavior: unknown split behavior '" + b + "'");
}

// {"String": "..."} or {"Regex": "..."}; a String pattern is matched literally.
Regex parse_pattern(const json& obj, const std::string& path) {
  const json* p = field(obj, "pattern");
  if (!p || !p->is_object()) fail(path + ".pattern must be an object {String|Regex: ...}");
  Result<Regex> r = Status(StatusCode::kInternal, "unset");
  if (const json* s = field(*p, "String")) {
    if (!s->is_string()) fail(path + ".pattern.String must be a string");
    r = Regex::literal(s->get<std::string>());
  } else if (const json* s2 = field(*p, "Regex")) {
    if (!s2->is_string()) fail(path + ".pattern.Regex must be a string");
    r = Regex::compile(s2->get<std::string>());
  } else {
    fail(path + ".pattern must have a String or Regex key");
  }
  if (!r.ok()) fail(path + ".pattern: " + r.status().message());
  return std::move(r).value();
}

// NormalizedString::replace: every non-overlapping match replaced by content.
std::string replace_all(const Regex& re, std::string_view s, const std::string& content) {
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(s, m);
  if (m.empty()) return std::string(s);
  std::string out;
  size_t prev = 0;
  for (auto [b, e] : m) {
    out.append(s.substr(prev, b - prev));
    out += content;
    prev = e;
  }
  out.append(s.substr(prev));
  return out;
}

// NormalizedString::split with a regex pattern: the (offsets, is_match) list covering s, then the behaviour.
// Appends the surviving non-empty pieces.
void split_with_behavior(std::string_view s, const Regex& re, SplitBehavior behavior, bool invert,
                         std::vector<std::string>& out) {
  if (s.empty()) return;
  struct Seg {
    size_t b, e;
    bool is_match;
  };
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(s, m);
  std::vector<Seg> segs;
  segs.reserve(2 * m.size() + 1);
  size_t prev = 0;
  for (auto [b, e] : m) {
    if (prev != b) segs.push_back({prev, b, false});
    segs.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (Seg& g : segs) g.is_match = !g.is_match;

  // (b, e, remove)
  std::vector<Seg> res;
  res.reserve(segs.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Seg& g : segs) res.push_back({g.b, g.e, false});
      break;
    case SplitBehavior::kRemoved:
      res = segs;  // is_match == remove
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Seg& g : segs) {
        if (g.is_match == previous_match && !res.empty()) {
          res.back().e = g.e;
        } else {
          res.push_back({g.b, g.e, false});
        }
        previous_match = g.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Seg& g : segs) {
        if (g.is_match && !previous_match && !res.empty()) {
          res.back().e = g.e;
        } else {
          res.push_back({g.b, g.e, false});
        }
        previous_match = g.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !previous_match && !res.empty()) {
          res.back().b = it->b;
        } else {
          res.push_back({it->b, it->e, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
  }
  for (const Seg& g : res) {
    if (g.is_match || g.e <= g.b) continue;  // removed, or empty (PreTokenizedString::split drops empties)
    out.emplace_back(s.substr(g.b, g.e - g.b));
  }
}

std::string byte_level_map(std::string_view s) {
  const auto& table = byte_to_unicode();
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) out += table[c];
  return out;
}

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && static_cast<unsigned char>(s[s.size() - 3]) == 0xEF &&
         static_cast<unsigned char>(s[s.size() - 2]) == 0xBF && static_cast<unsigned char>(s[s.size() - 1]) == 0xBD;
}

// Rust regex \w (Unicode word character), used for AddedToken::single_word.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  static const Result<Regex> re = Regex::compile("[\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}]");
  if (!re.ok()) return false;
  std::string ch;
  append_utf8(ch, cp);
  std::vector<std::pair<size_t, size_t>> m;
  re->find_all(ch, m);
  return !m.empty();
}

// ---- pipeline steps ----

struct NormStep {
  enum Kind { kReplace, kPrepend, kStrip, kNFC, kByteLevel } kind = kReplace;
  std::optional<Regex> pattern;
  std::string content;  // Replace content / Prepend text
  bool strip_left = false, strip_right = false;

  std::string apply(std::string s) const {
    switch (kind) {
      case kReplace: return replace_all(*pattern, s, content);
      case kPrepend: return s.empty() ? s : content + s;
      case kStrip: {
        size_t b = 0, e = s.size();
        if (strip_left) {
          while (b < e) {
            size_t j = b;
            if (!is_unicode_whitespace(utf8_next(s, j))) break;
            b = j;
          }
        }
        if (strip_right) {
          while (e > b) {
            size_t j = e - 1;
            while (j > b && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
            size_t k = j;
            if (!is_unicode_whitespace(utf8_next(s, k))) break;
            e = j;
          }
        }
        return s.substr(b, e - b);
      }
      case kNFC: return nfc_normalize(s);
      case kByteLevel: return byte_level_map(s);
    }
    return s;
  }
};

struct PreStep {
  enum Kind { kByteLevel, kSplit } kind = kSplit;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::optional<Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;

  void apply(const std::string& s, std::vector<std::string>& out) const {
    if (kind == kSplit) {
      split_with_behavior(s, *regex, behavior, invert, out);
      return;
    }
    // ByteLevel: optional prefix space, GPT-2 regex split (Isolated), then every byte to its alphabet char.
    std::string text = (add_prefix_space && (s.empty() || s[0] != ' ')) ? " " + s : s;
    if (text.empty()) return;
    if (!use_regex) {
      out.push_back(byte_level_map(text));
      return;
    }
    std::vector<std::string> parts;
    split_with_behavior(text, *regex, SplitBehavior::kIsolated, false, parts);
    for (const std::string& p : parts) out.push_back(byte_level_map(p));
  }
};

struct DecStep {
  enum Kind { kByteLevel, kByteFallback, kReplace, kFuse, kStrip } kind = kByteLevel;
  std::optional<Regex> pattern;
  std::string content;
  uint32_t strip_char = ' ';
  size_t start = 0, stop = 0;

  void apply(std::vector<std::string>& tokens) const {
    switch (kind) {
      case kByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) {
          const size_t mark = bytes.size();
          bool all_mapped = true;
          size_t i = 0;
          while (i < t.size()) {
            const int b = unicode_to_byte(utf8_next(t, i));
            if (b < 0) {
              all_mapped = false;
              break;
            }
            bytes.push_back(static_cast<char>(b));
          }
          if (!all_mapped) {
            bytes.resize(mark);
            bytes += t;
          }
        }
        tokens.assign(1, utf8_lossy(bytes));
        return;
      }
      case kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        const auto flush = [&] {
          if (pending.empty()) return;
          if (is_valid_utf8(pending)) {
            out.push_back(pending);
          } else {
            for (size_t k = 0; k < pending.size(); ++k) out.push_back("\xEF\xBF\xBD");
          }
          pending.clear();
        };
        for (std::string& t : tokens) {
          int byte = -1;
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
            const auto hex = [](char c) {
              if (c >= '0' && c <= '9') return c - '0';
              if (c >= 'a' && c <= 'f') return c - 'a' + 10;
              if (c >= 'A' && c <= 'F') return c - 'A' + 10;
              return -1;
            };
            const int h = hex(t[3]), l = hex(t[4]);
            if (h >= 0 && l >= 0) byte = h * 16 + l;
          }
          if (byte >= 0) {
            pending.push_back(static_cast<char>(byte));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        return;
      }
      case kReplace:
        for (std::string& t : tokens) t = replace_all(*pattern, t, content);
        return;
      case kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, all);
        return;
      }
      case kStrip:
        for (std::string& t : tokens) {
          std::vector<std::pair<size_t, uint32_t>> chars;  // (byte offset, code point)
          size_t i = 0;
          while (i < t.size()) {
            const size_t at = i;
            chars.emplace_back(at, utf8_next(t, i));
          }
          size_t start_cut = 0;
          for (size_t k = 0; k < start && k < chars.size(); ++k) {
            if (chars[k].second != strip_char) break;
            start_cut = k + 1;
          }
          size_t stop_cut = chars.size();
          for (size_t k = 0; k < stop && k < chars.size(); ++k) {
            const size_t idx = chars.size() - k - 1;
            if (chars[idx].second != strip_char) break;
            stop_cut = idx;
          }
          if (stop_cut <= start_cut) {
            t.clear();
            continue;
          }
          const size_t b = chars[start_cut].first;
          const size_t e = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
          t = t.substr(b, e - b);
        }
        return;
    }
  }
};

// Leftmost-longest matcher over the added tokens of one kind (normalized or not), as the aho-corasick
// automaton built in AddedVocabulary::refresh_added_tokens.
struct AddedMatcher {
  std::vector<std::string> patterns;
  std::vector<int32_t> token_index;  // into Impl::added
  std::array<std::vector<uint32_t>, 256> by_first_byte;

  void add(std::string pattern, int32_t index) {
    if (pattern.empty()) return;
    by_first_byte[static_cast<unsigned char>(pattern[0])].push_back(static_cast<uint32_t>(patterns.size()));
    patterns.push_back(std::move(pattern));
    token_index.push_back(index);
  }
  bool empty() const { return patterns.empty(); }
};

const std::string kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  // Model (BPE)
  StrIdMap vocab;
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges;  // (a << 32 | b) -> (rank, merged id)
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  int32_t unk_id = -1;
  std::optional<std::string> cont_prefix, eow_suffix;
  // Added vocabulary
  std::vector<AddedTokenInfo> added;
  StrIdMap added_by_content;
  std::unordered_set<std::string> special_contents;
  AddedMatcher raw_matcher, norm_matcher;
  // id -> token (added tokens override the model's entry), special flags
  std::vector<std::string> id_to_tok;
  std::vector<uint8_t> id_known;
  std::vector<uint8_t> id_special;
  // Pipeline
  std::vector<NormStep> norm;
  std::vector<PreStep> pre;
  bool has_decoder = false;
  std::vector<DecStep> dec;
  std::vector<int32_t> prefix_ids, suffix_ids;
  // Pre-token cache (models/bpe/cache.rs: capacity 10000, words of 256+ bytes are not cached)
  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kCacheMaxWord = 256;
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>, SvHash, SvEq> cache;

  void split_added(const std::string& s, const AddedMatcher& m,
                   std::vector<std::pair<std::string, int32_t>>& out) const;
  std::string normalize(std::string s) const {
    for (const NormStep& n : norm) s = n.apply(std::move(s));
    return s;
  }
  void tokenize_piece(const std::string& piece, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  void model_word(const std::string& word, std::vector<int32_t>& out) const;
};

// AddedVocabulary::find_matches + split_with_indices: (piece, added id or -1) covering s.
void Tokenizer::Impl::split_added(const std::string& s, const AddedMatcher& m,
                                  std::vector<std::pair<std::string, int32_t>>& out) const {
  if (s.empty()) return;
  if (m.empty()) {
    out.emplace_back(s, -1);
    return;
  }
  const size_t n = s.size();
  size_t start_offset = 0;
  size_t i = 0;
  while (i < n) {
    const auto& cands = m.by_first_byte[static_cast<unsigned char>(s[i])];
    int best = -1;
    size_t best_len = 0;
    for (uint32_t idx : cands) {
      const std::string& p = m.patterns[idx];
      if (p.size() > best_len && p.size() <= n - i && s.compare(i, p.size(), p) == 0) {
        best = static_cast<int>(idx);
        best_len = p.size();
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + best_len;
    i = stop;  // the automaton resumes after this match even when it is discarded below
    const AddedTokenInfo& tok = added[m.token_index[best]];
    if (tok.single_word) {
      bool start_space = true, stop_space = true;
      if (start > 0) {
        size_t j = start - 1;
        while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        size_t k = j;
        start_space = !is_word_char(utf8_next(s, k));
      }
      if (stop < n) {
        size_t k = stop;
        stop_space = !is_word_char(utf8_next(s, k));
      }
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      size_t newstart = start;
      while (newstart > 0) {
        size_t j = newstart - 1;
        while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        size_t k = j;
        if (!is_unicode_whitespace(utf8_next(s, k))) break;
        newstart = j;
      }
      start = std::max(newstart, start_offset);
    }
    if (tok.rstrip) {
      while (stop < n) {
        size_t k = stop;
        if (!is_unicode_whitespace(utf8_next(s, k))) break;
        stop = k;
      }
      // The search still resumes at the end of the token itself, as the automaton's iterator does.
    }
    if (start_offset < start) out.emplace_back(s.substr(start_offset, start - start_offset), -1);
    out.emplace_back(std::string(), tok.id);  // the content is not needed: the id is final
    start_offset = stop;
  }
  if (start_offset < n) out.emplace_back(s.substr(start_offset), -1);
}

void Tokenizer::Impl::tokenize_piece(const std::string& piece, std::vector<int32_t>& out) const {
  std::vector<std::string> splits{piece};
  std::vector<std::string> next;
  for (const PreStep& step : pre) {
    next.clear();
    for (const std::string& s : splits) step.apply(s, next);
    splits.swap(next);
  }
  for (const std::string& w : splits) model_word(w, out);
}

void Tokenizer::Impl::model_word(const std::string& word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  const bool cacheable = word.size() < kCacheMaxWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(std::string_view(word));
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  bpe_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() < kCacheCapacity) cache.emplace(word, std::move(ids));
  }
}

// models/bpe/model.rs merge_word + word.rs merge_all.
void Tokenizer::Impl::bpe_word(std::string_view w, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    auto it = vocab.find(w);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len;  // bytes; 0 = merged away
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  const auto add = [&](int32_t id, uint32_t len) {
    const int32_t n = static_cast<int32_t>(syms.size());
    if (n > 0) syms.back().next = n;
    syms.push_back({id, n - 1, -1, len});
  };
  bool have_unk = false;
  int32_t unk_len = 0;
  std::string tmp;
  size_t i = 0;
  while (i < w.size()) {
    const size_t begin = i;
    utf8_next(w, i);
    const bool is_first = begin == 0, is_last = i >= w.size();
    std::string_view s = w.substr(begin, i - begin);
    const uint32_t byte_len = static_cast<uint32_t>(i - begin);
    if ((!is_first && cont_prefix) || (is_last && eow_suffix)) {
      tmp.clear();
      if (!is_first && cont_prefix) tmp += *cont_prefix;
      tmp += s;
      if (is_last && eow_suffix) tmp += *eow_suffix;
      s = tmp;
    }
    auto it = vocab.find(s);
    if (it != vocab.end()) {
      if (have_unk) {
        add(unk_id, static_cast<uint32_t>(unk_len));
        have_unk = false;
      }
      add(it->second, byte_len);
      continue;
    }
    if (byte_fallback) {
      std::vector<int32_t> byte_ids;
      bool all = true;
      for (unsigned char c : s) {
        char code[8];
        std::snprintf(code, sizeof(code), "<0x%02X>", c);
        auto bt = vocab.find(std::string_view(code));
        if (bt == vocab.end()) {
          all = false;
          break;
        }
        byte_ids.push_back(bt->second);
      }
      if (all) {
        for (int32_t id : byte_ids) add(id, 1);
        continue;
      }
    }
    if (unk_id >= 0) {
      if (have_unk && fuse_unk) {
        unk_len += static_cast<int32_t>(byte_len);
      } else {
        if (have_unk) add(unk_id, static_cast<uint32_t>(unk_len));
        have_unk = true;
        unk_len = static_cast<int32_t>(byte_len);
      }
    }
    // No unk token: the character is dropped, as the library does.
  }
  if (have_unk) add(unk_id, static_cast<uint32_t>(unk_len));

  struct Cand {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  // Lowest rank first, then leftmost position (word.rs `impl Ord for Merge`).
  const auto worse = [](const Cand& a, const Cand& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> queue(worse);
  const auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    auto it = merges.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t k = 0; k + 1 < syms.size(); ++k) {
    if (const auto* m = lookup(syms[k].id, syms[k + 1].id))
      queue.push({m->first, static_cast<int32_t>(k), m->second});
  }
  while (!queue.empty()) {
    const Cand top = queue.top();
    queue.pop();
    Sym& cur = syms[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int32_t next_pos = cur.next;
    const Sym right = syms[next_pos];
    const auto* m = lookup(cur.id, right.id);
    if (!m || m->second != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[next_pos].len = 0;
    if (right.next >= 0 && right.next < static_cast<int32_t>(syms.size())) syms[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const auto* pm = lookup(syms[cur.prev].id, cur.id)) queue.push({pm->first, cur.prev, pm->second});
    }
    if (cur.next >= 0) {
      if (const auto* nm = lookup(cur.id, syms[cur.next].id)) queue.push({nm->first, top.pos, nm->second});
    }
  }
  for (const Sym& s : syms)
    if (s.len != 0) out.push_back(s.id);
}

// ---------------------------------------------------------------- loading

namespace {

void parse_normalizer(const json& j, const std::string& path, std::vector<NormStep>& out) {
  const std::string type = type_of(j, path);
  if (type == "Sequence") {
    const json* list = field(j, "normalizers");
    if (!list || !list->is_array()) fail(path + ".normalizers must be an array");
    for (size_t k = 0; k < list->size(); ++k)
      parse_normalizer((*list)[k], path + ".normalizers[" + std::to_string(k) + "]", out);
    return;
  }
  NormStep s;
  if (type == "Replace") {
    s.kind = NormStep::kReplace;
    s.pattern = parse_pattern(j, path);
    s.content = get_string(j, "content", path);
  } else if (type == "Prepend") {
    s.kind = NormStep::kPrepend;
    s.content = get_string(j, "prepend", path);
  } else if (type == "Strip") {
    s.kind = NormStep::kStrip;
    s.strip_left = get_bool(j, "strip_left", true, path);
    s.strip_right = get_bool(j, "strip_right", true, path);
  } else if (type == "NFC") {
    s.kind = NormStep::kNFC;
  } else if (type == "ByteLevel") {
    s.kind = NormStep::kByteLevel;
  } else {
    unsupported(path + ": normalizer type '" + type + "' is not supported");
  }
  out.push_back(std::move(s));
}

void parse_pre_tokenizer(const json& j, const std::string& path, std::vector<PreStep>& out) {
  const std::string type = type_of(j, path);
  if (type == "Sequence") {
    const json* list = field(j, "pretokenizers");
    if (!list || !list->is_array()) fail(path + ".pretokenizers must be an array");
    for (size_t k = 0; k < list->size(); ++k)
      parse_pre_tokenizer((*list)[k], path + ".pretokenizers[" + std::to_string(k) + "]", out);
    return;
  }
  PreStep s;
  const auto compile = [&](const std::string& pattern) {
    auto r = Regex::compile(pattern);
    if (!r.ok()) fail(path + ": " + r.status().message());
    return std::move(r).value();
  };
  if (type == "ByteLevel") {
    s.kind = PreStep::kByteLevel;
    s.add_prefix_space = get_bool(j, "add_prefix_space", true, path);
    s.use_regex = get_bool(j, "use_regex", true, path);
    s.regex = compile(kGpt2Pattern);
  } else if (type == "Split") {
    s.kind = PreStep::kSplit;
    s.regex = parse_pattern(j, path);
    s.behavior = parse_behavior(j, path);
    s.invert = get_bool(j, "invert", false, path);
  } else if (type == "Digits") {
    // Digits splits on char::is_numeric (general category N*): each digit alone, or runs of digits.
    s.kind = PreStep::kSplit;
    s.regex = compile("\\p{N}");
    s.behavior = get_bool(j, "individual_digits", false, path) ? SplitBehavior::kIsolated
                                                                : SplitBehavior::kContiguous;
  } else if (type == "Whitespace") {
    s.kind = PreStep::kSplit;
    s.regex = compile("\\w+|[^\\w\\s]+");
    s.behavior = SplitBehavior::kRemoved;
    s.invert = true;
  } else if (type == "WhitespaceSplit") {
    s.kind = PreStep::kSplit;
    s.regex = compile("\\s+");
    s.behavior = SplitBehavior::kRemoved;
  } else {
    unsupported(path + ": pre_tokenizer type '" + type + "' is not supported");
  }
  out.push_back(std::move(s));
}

void parse_decoder(const json& j, const std::string& path, std::vector<DecStep>& out) {
  const std::string type = type_of(j, path);
  if (type == "Sequence") {
    const json* list = field(j, "decoders");
    if (!list || !list->is_array()) fail(path + ".decoders must be an array");
    for (size_t k = 0; k < list->size(); ++k)
      parse_decoder((*list)[k], path + ".decoders[" + std::to_string(k) + "]", out);
    return;
  }
  DecStep s;
  if (type == "ByteLevel") {
    s.kind = DecStep::kByteLevel;
  } else if (type == "ByteFallback") {
    s.kind = DecStep::kByteFallback;
  } else if (type == "Fuse") {
    s.kind = DecStep::kFuse;
  } else if (type == "Replace") {
    s.kind = DecStep::kReplace;
    s.pattern = parse_pattern(j, path);
    s.content = get_string(j, "content", path);
  } else if (type == "Strip") {
    s.kind = DecStep::kStrip;
    const std::string c = get_string(j, "content", path);
    size_t k = 0;
    if (c.empty()) fail(path + ".content must be one character");
    s.strip_char = utf8_next(c, k);
    const int64_t start = get_int(j, "start", 0, path), stop = get_int(j, "stop", 0, path);
    if (start < 0 || stop < 0) fail(path + ": start/stop must be >= 0");
    s.start = static_cast<size_t>(start);
    s.stop = static_cast<size_t>(stop);
  } else {
    unsupported(path + ": decoder type '" + type + "' is not supported");
  }
  out.push_back(std::move(s));
}

struct PostProc {
  std::vector<int32_t> prefix, suffix;
};

std::vector<int32_t> special_ids_of(const json& specials, const std::string& name, const std::string& path) {
  const json* e = field(specials, name.c_str());
  if (!e) fail(path + ".special_tokens has no entry '" + name + "'");
  const json* ids = field(*e, "ids");
  if (!ids || !ids->is_array()) fail(path + ".special_tokens['" + name + "'].ids must be an array");
  std::vector<int32_t> out;
  for (const json& v : *ids) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      fail(path + ".special_tokens['" + name + "'].ids has a bad id");
    out.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return out;
}

void parse_post_processor(const json& j, const std::string& path, PostProc& pp) {
  const std::string type = type_of(j, path);
  if (type == "Sequence") {
    const json* list = field(j, "processors");
    if (!list || !list->is_array()) fail(path + ".processors must be an array");
    for (size_t k = 0; k < list->size(); ++k)
      parse_post_processor((*list)[k], path + ".processors[" + std::to_string(k) + "]", pp);
    return;
  }
  if (type == "ByteLevel") return;  // offsets only
  std::vector<int32_t> pre, post;
  if (type == "TemplateProcessing") {
    const json* single = field(j, "single");
    if (!single || !single->is_array()) fail(path + ".single must be an array");
    const json empty = json::object();
    const json* specials = field(j, "special_tokens");
    if (!specials) specials = &empty;
    bool seen_seq = false;
    for (size_t k = 0; k < single->size(); ++k) {
      const json& piece = (*single)[k];
      const std::string ppath = path + ".single[" + std::to_string(k) + "]";
      std::string special;
      bool is_seq = false;
      if (piece.is_string()) {
        // Compact form: "$A", "$A:1", "[CLS]", "[CLS]:0".
        std::string v = piece.get<std::string>();
        const size_t colon = v.rfind(':');
        if (colon != std::string::npos && colon + 1 < v.size() &&
            std::all_of(v.begin() + colon + 1, v.end(), [](char c) { return c >= '0' && c <= '9'; }))
          v = v.substr(0, colon);
        if (!v.empty() && v[0] == '$') is_seq = true;
        else special = v;
      } else if (const json* st = field(piece, "SpecialToken")) {
        special = get_string(*st, "id", ppath + ".SpecialToken");
      } else if (field(piece, "Sequence")) {
        is_seq = true;
      } else {
        fail(ppath + " must be a SpecialToken or a Sequence");
      }
      if (is_seq) {
        seen_seq = true;
        continue;
      }
      const auto ids = special_ids_of(*specials, special, path);
      auto& dst = seen_seq ? post : pre;
      dst.insert(dst.end(), ids.begin(), ids.end());
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto pair_id = [&](const char* key) {
      const json* p = field(j, key);
      if (!p || !p->is_array() || p->size() != 2 || !(*p)[1].is_number_integer())
        fail(path + "." + key + " must be [token, id]");
      const int64_t id = (*p)[1].get<int64_t>();
      if (id < 0 || id > INT32_MAX) fail(path + "." + key + " has a bad id");
      return static_cast<int32_t>(id);
    };
    pre.push_back(pair_id("cls"));
    post.push_back(pair_id("sep"));
  } else {
    unsupported(path + ": post_processor type '" + type + "' is not supported");
  }
  // A later processor wraps the result of the earlier ones.
  pp.prefix.insert(pp.prefix.begin(), pre.begin(), pre.end());
  pp.suffix.insert(pp.suffix.end(), post.begin(), post.end());
}

constexpr int64_t kMaxId = (int64_t{1} << 31) - 2;

}  // namespace

Result<Tokenizer> Tokenizer::from_json_string(std::string_view text, const std::string& source_name) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return Corrupt(source_name + ": invalid tokenizer JSON: " + e.what());
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, source_name + ": out of memory while loading the tokenizer");
  }
  return from_json(root, source_name);
}

Result<Tokenizer> Tokenizer::from_json(const json& root, const std::string& source_name) {
  auto impl = std::make_shared<Impl>();
  impl->source = source_name;
  try {
    if (!root.is_object()) fail("top level must be a JSON object");

    // ---- model
    const json* model = field(root, "model");
    if (!model || !model->is_object()) fail("'model' must be an object");
    if (const json* t = field(*model, "type")) {
      if (!t->is_string()) fail("model.type must be a string");
      if (t->get<std::string>() != "BPE")
        unsupported("model type '" + t->get<std::string>() + "' is not supported (only BPE)");
    }
    if (const json* d = field(*model, "dropout")) {
      if (!d->is_number()) fail("model.dropout must be a number or null");
      if (d->get<double>() > 0.0) unsupported("model.dropout > 0 (BPE dropout) is not supported");
    }
    const json* vocab = field(*model, "vocab");
    if (!vocab || !vocab->is_object()) fail("model.vocab must be an object {token: id}");
    int64_t max_id = -1;
    impl->vocab.reserve(vocab->size());
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      if (!it.value().is_number_integer()) fail("model.vocab['" + it.key() + "'] must be an integer id");
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id > kMaxId) fail("model.vocab['" + it.key() + "'] has id " + std::to_string(id) + " out of range");
      impl->vocab[it.key()] = static_cast<int32_t>(id);
      max_id = std::max(max_id, id);
    }
    impl->ignore_merges = get_bool(*model, "ignore_merges", false, "model");
    impl->byte_fallback = get_bool(*model, "byte_fallback", false, "model");
    impl->fuse_unk = get_bool(*model, "fuse_unk", false, "model");
    impl->cont_prefix = get_opt_string(*model, "continuing_subword_prefix", "model");
    impl->eow_suffix = get_opt_string(*model, "end_of_word_suffix", "model");
    if (auto unk = get_opt_string(*model, "unk_token", "model")) {
      auto it = impl->vocab.find(*unk);
      if (it != impl->vocab.end()) impl->unk_id = it->second;
    }
    if (const json* merges = field(*model, "merges")) {
      if (!merges->is_array()) fail("model.merges must be an array");
      impl->merges.reserve(merges->size());
      const size_t prefix_len = impl->cont_prefix ? impl->cont_prefix->size() : 0;
      for (size_t r = 0; r < merges->size(); ++r) {
        const json& m = (*merges)[r];
        std::string a, b;
        if (m.is_string()) {
          const std::string& s = m.get_ref<const std::string&>();
          const size_t sp = s.find(' ');
          if (sp == std::string::npos) fail("model.merges[" + std::to_string(r) + "] '" + s + "' is not 'a b'");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          fail("model.merges[" + std::to_string(r) + "] must be \"a b\" or [a, b]");
        }
        auto ia = impl->vocab.find(a), ib = impl->vocab.find(b);
        if (ia == impl->vocab.end() || ib == impl->vocab.end())
          fail("model.merges[" + std::to_string(r) + "]: token '" + (ia == impl->vocab.end() ? a : b) +
               "' is not in the vocabulary");
        const std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : std::string());
        auto im = impl->vocab.find(merged);
        if (im == impl->vocab.end())
          fail("model.merges[" + std::to_string(r) + "]: merged token '" + merged + "' is not in the vocabulary");
        const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                             static_cast<uint32_t>(ib->second);
        impl->merges[key] = {static_cast<uint32_t>(r), im->second};  // a repeated pair: the later rank wins
      }
    }

    // ---- added tokens
    // The library re-derives every id while adding the tokens in file order (serialization.rs, then
    // AddedVocabulary::add_tokens): a content already known (added earlier or in the model vocabulary) keeps
    // that id; a new one gets the next id after the largest added id, or the model vocabulary size. The "id"
    // written in the file is only checked there (a warning), so it is ignored here too.
    if (const json* added = field(root, "added_tokens")) {
      if (!added->is_array()) fail("added_tokens must be an array");
      const int64_t model_size = static_cast<int64_t>(impl->vocab.size());
      int64_t max_added = -1;
      for (size_t k = 0; k < added->size(); ++k) {
        const json& t = (*added)[k];
        const std::string path = "added_tokens[" + std::to_string(k) + "]";
        if (!t.is_object()) fail(path + " must be an object");
        AddedTokenInfo info;
        info.content = get_string(t, "content", path);
        info.special = get_bool(t, "special", false, path);
        info.single_word = get_bool(t, "single_word", false, path);
        info.lstrip = get_bool(t, "lstrip", false, path);
        info.rstrip = get_bool(t, "rstrip", false, path);
        info.normalized = get_bool(t, "normalized", !info.special, path);
        (void)get_int(t, "id", -1, path);  // type-checked only
        if (info.content.empty()) continue;  // the library ignores empty added tokens
        auto known = impl->added_by_content.find(info.content);
        if (known != impl->added_by_content.end()) {
          // Same content again: the later options replace the earlier ones, the id stays.
          AddedTokenInfo& prev = impl->added[known->second];
          info.id = prev.id;
          info.special = info.special || prev.special;
          prev = info;
          continue;
        }
        auto in_vocab = impl->vocab.find(info.content);
        if (in_vocab != impl->vocab.end()) {
          info.id = in_vocab->second;
        } else {
          const int64_t id = (max_added >= model_size || model_size == 0) ? max_added + 1 : model_size;
          if (id > kMaxId) fail(path + ": too many added tokens");
          info.id = static_cast<int32_t>(id);
        }
        max_added = std::max<int64_t>(max_added, info.id);
        max_id = std::max<int64_t>(max_id, info.id);
        impl->added_by_content[info.content] = static_cast<int32_t>(impl->added.size());
        impl->added.push_back(std::move(info));
      }
    }
    // The id table is a dense vector: refuse absurdly sparse ids rather than allocate gigabytes.
    const int64_t entries = static_cast<int64_t>(impl->vocab.size() + impl->added.size());
    if (max_id >= 2 * entries + 65536)
      fail("largest token id " + std::to_string(max_id) + " is far beyond the " + std::to_string(entries) +
           " vocabulary entries");
    impl->id_to_tok.resize(static_cast<size_t>(max_id + 1));
    impl->id_known.assign(static_cast<size_t>(max_id + 1), 0);
    impl->id_special.assign(static_cast<size_t>(max_id + 1), 0);
    for (const auto& [tok, id] : impl->vocab) {
      // For duplicate ids keep the lexicographically smallest token so that the choice is deterministic.
      if (!impl->id_known[id] || tok < impl->id_to_tok[id]) impl->id_to_tok[id] = tok;
      impl->id_known[id] = 1;
    }

    // ---- normalizer (needed to build the normalized added-token patterns)
    if (const json* n = field(root, "normalizer")) parse_normalizer(*n, "normalizer", impl->norm);

    // Special tokens first, then the others, each in file order (refresh_added_tokens).
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t k = 0; k < impl->added.size(); ++k) {
        AddedTokenInfo& t = impl->added[k];
        if (t.special != (pass == 0)) continue;
        // Decoding shows a normalized added token in its normalized form (AddedVocabulary normalized_cache),
        // so that e.g. a byte-level normalizer is undone by the byte-level decoder.
        impl->id_to_tok[t.id] = t.normalized ? impl->normalize(t.content) : t.content;
        impl->id_known[t.id] = 1;
        if (t.special) {
          impl->id_special[t.id] = 1;
          impl->special_contents.insert(t.content);
        }
        if (t.normalized) {
          impl->norm_matcher.add(impl->normalize(t.content), static_cast<int32_t>(k));
        } else {
          impl->raw_matcher.add(t.content, static_cast<int32_t>(k));
        }
      }
    }

    if (const json* p = field(root, "pre_tokenizer")) parse_pre_tokenizer(*p, "pre_tokenizer", impl->pre);
    if (const json* d = field(root, "decoder")) {
      impl->has_decoder = true;
      parse_decoder(*d, "decoder", impl->dec);
    }
    if (const json* pp = field(root, "post_processor")) {
      PostProc proc;
      parse_post_processor(*pp, "post_processor", proc);
      for (int32_t id : proc.prefix)
        if (id < 0) fail("post_processor: bad id");
      impl->prefix_ids = std::move(proc.prefix);
      impl->suffix_ids = std::move(proc.suffix);
    }
  } catch (const LoadError& e) {
    return Status(e.code, source_name + ": " + e.message);
  } catch (const json::exception& e) {
    return Corrupt(source_name + ": invalid tokenizer JSON: " + e.what());
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, source_name + ": out of memory while loading the tokenizer");
  }
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Result<Tokenizer> Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound(path + ": cannot open tokenizer file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return IoError(path + ": read failed");
  return from_json_string(ss.str(), path);
}

// ---------------------------------------------------------------- encode / decode

std::vector<int32_t> Tokenizer::encode(std::string_view text_in, bool add_special_tokens) const {
  std::vector<int32_t> out;
  if (!impl_) return out;
  const Impl& im = *impl_;
  const std::string text = utf8_lossy(text_in);
  out.reserve(text.size() / 3 + 8);
  if (add_special_tokens) out = im.prefix_ids;
  // 1. added tokens matched on the raw text, 2. normalizer, 3. normalized added tokens
  // (added_vocabulary.rs extract_and_normalize), then pre-tokenizer + model on the rest.
  std::vector<std::pair<std::string, int32_t>> level1, level2;
  im.split_added(text, im.raw_matcher, level1);
  for (auto& [piece, id] : level1) {
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    const std::string normalized = im.normalize(std::move(piece));
    level2.clear();
    im.split_added(normalized, im.norm_matcher, level2);
    for (const auto& [p2, id2] : level2) {
      if (id2 >= 0) {
        out.push_back(id2);
      } else {
        im.tokenize_piece(p2, out);
      }
    }
  }
  if (add_special_tokens) out.insert(out.end(), im.suffix_ids.begin(), im.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  if (!impl_) return {};
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= im.id_to_tok.size() || !im.id_known[id]) continue;
    const std::string& t = im.id_to_tok[id];
    if (skip_special_tokens && im.special_contents.count(t)) continue;
    tokens.push_back(t);
  }
  if (!im.has_decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (k) out += ' ';
      out += tokens[k];
    }
    return out;
  }
  for (const DecStep& d : im.dec) d.apply(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  if (!impl_) return -1;
  auto a = impl_->added_by_content.find(token);
  if (a != impl_->added_by_content.end()) return impl_->added[a->second].id;
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (!impl_ || id < 0 || static_cast<size_t>(id) >= impl_->id_to_tok.size() || !impl_->id_known[id]) return {};
  return impl_->id_to_tok[id];
}

int32_t Tokenizer::vocab_size() const { return impl_ ? static_cast<int32_t>(impl_->id_to_tok.size()) : 0; }

bool Tokenizer::is_special(int32_t id) const {
  return impl_ && id >= 0 && static_cast<size_t>(id) < impl_->id_special.size() && impl_->id_special[id];
}

const std::vector<AddedTokenInfo>& Tokenizer::added_tokens() const {
  static const std::vector<AddedTokenInfo> kEmpty;
  return impl_ ? impl_->added : kEmpty;
}

const std::vector<int32_t>& Tokenizer::special_prefix_ids() const {
  static const std::vector<int32_t> kEmpty;
  return impl_ ? impl_->prefix_ids : kEmpty;
}

const std::vector<int32_t>& Tokenizer::special_suffix_ids() const {
  static const std::vector<int32_t> kEmpty;
  return impl_ ? impl_->suffix_ids : kEmpty;
}

// ---------------------------------------------------------------- streaming

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::step(int32_t id) {
  // Keep the ids since the last emitted chunk plus the context before it (`prefix`, already emitted), decode
  // them together and emit only what extends the prefix, once it no longer ends in U+FFFD.
  if (prefix_.empty() && !ids_.empty()) {
    std::string p = tokenizer_.decode(ids_, skip_special_);
    if (!ends_with_replacement(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  std::string s = tokenizer_.decode(ids_, skip_special_);
  if (s.size() <= prefix_.size() || ends_with_replacement(s)) return {};
  // If a decoder rewrote the prefix (the library reports InvalidPrefix), the new text still starts after it.
  std::string new_text = s.substr(prefix_.size());
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tokenizer_.decode(ids_, skip_special_);
  prefix_index_ = new_prefix_index;
  return new_text;
}

std::string StreamDecoder::flush() {
  std::string s = tokenizer_.decode(ids_, skip_special_);
  std::string out = s.size() > prefix_.size() ? s.substr(prefix_.size()) : std::string();
  reset();
  return out;
}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
}

std::string clean_up_tokenization(std::string_view text) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},   {" ,", ","},   {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  std::string s(text);
  for (const auto& [from, to] : kRules) {
    const std::string f(from), t(to);
    std::string out;
    size_t pos = 0;
    while (true) {
      const size_t hit = s.find(f, pos);
      if (hit == std::string::npos) break;
      out.append(s, pos, hit - pos);
      out += t;
      pos = hit + f.size();
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
  }
  return s;
}

}  // namespace ev::text
