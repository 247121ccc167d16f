// Byte-level BPE tokenizer that reads a Hugging Face tokenizer.json and reproduces the `tokenizers` library's
// encode and decode exactly (ids and text), for the SmolLM2 / SmolVLM / GPT-2 / Llama-3 families.
//
// Pipeline (tokenizers/src/tokenizer/mod.rs encode_single_sequence, decode):
//   text -> split on added tokens (raw text; added_vocabulary.rs find_matches: leftmost-longest, lstrip/rstrip/
//   single_word) -> normalizer on the remaining pieces -> split on normalized added tokens -> pre-tokenizer
//   (ByteLevel / Split / Digits / Whitespace / WhitespaceSplit, Sequence) -> BPE model per pre-token (merge-rank
//   priority queue, models/bpe/word.rs merge_all) -> post-processor (TemplateProcessing / Roberta / Bert /
//   ByteLevel, Sequence) when add_special_tokens.
//   decode: ids -> token strings (skip special) -> decoder (ByteLevel / ByteFallback / Replace / Fuse / Strip,
//   Sequence) -> concatenation.
//
// Supported normalizers: Sequence, Replace, Prepend, Strip, NFC, ByteLevel. Anything else in the file (NFKC,
// Lowercase, Metaspace, WordPiece, Unigram ...) is rejected at load time with kUnsupported naming the type.
//
// A Tokenizer is immutable after load and safe to use from several threads (the pre-token cache is locked).
// Copies share the loaded tables.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace ev::text {

struct AddedTokenInfo {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

class Tokenizer {
 public:
  // An empty tokenizer: encode/decode return nothing. Use load() or from_json_string().
  Tokenizer() = default;
  bool loaded() const { return impl_ != nullptr; }

  // Reads and parses tokenizer.json. Errors name the file and the offending field.
  static Result<Tokenizer> load(const std::string& tokenizer_json_path);
  // Same from the JSON text (used by the fuzzer and tests); source_name appears in error messages.
  static Result<Tokenizer> from_json_string(std::string_view json, const std::string& source_name = "<memory>");
  // Same from an already parsed tokenizer.json object (e.g. one synthesized from a GGUF vocabulary).
  static Result<Tokenizer> from_json(const nlohmann::json& root, const std::string& source_name = "<memory>");

  // Token ids of text. add_special_tokens applies the post-processor template (e.g. a BOS token). Special and
  // other added tokens written in the text are matched as tokens. Invalid UTF-8 in text is first repaired
  // (each ill-formed subpart becomes U+FFFD), as Python would refuse such a str outright.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;

  // Text of ids. Unknown ids are skipped (as the library does); skip_special_tokens drops special added tokens.
  // Ill-formed byte sequences produced by byte-level tokens become U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;

  // -1 when the token is not in the vocabulary (added tokens included).
  int32_t token_to_id(std::string_view token) const;
  // The token string (added tokens first, then the model vocabulary); empty when the id is unknown.
  std::string id_to_token(int32_t id) const;
  // Size of the id space: 1 + the largest id of the vocabulary and the added tokens (the number of embedding
  // rows the model needs; equals len(tokenizer) in transformers when ids are contiguous).
  int32_t vocab_size() const;
  bool is_special(int32_t id) const;
  const std::vector<AddedTokenInfo>& added_tokens() const;

  // Token ids the post-processor adds around a single sequence when add_special_tokens is true.
  const std::vector<int32_t>& special_prefix_ids() const;
  const std::vector<int32_t>& special_suffix_ids() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Incremental detokenizer for streaming generation output: feed ids one at a time; each step returns the text
// that became final with that id (possibly empty), holding back an incomplete UTF-8 sequence until the bytes
// that complete it arrive. Follows tokenizers' DecodeStream (tokenizer/mod.rs step_decode_stream): the
// concatenation of all step() results plus flush() equals decode(all ids).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  std::string step(int32_t id);
  // Emits whatever is still held back (an unfinished sequence comes out as U+FFFD) and resets.
  std::string flush();
  void reset();

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  std::string prefix_;
  size_t prefix_index_ = 0;
};

// transformers' PreTrainedTokenizerBase.clean_up_tokenization (applied by tokenizer.decode when the
// tokenizer_config.json sets clean_up_tokenization_spaces): " ." -> "." and the like.
std::string clean_up_tokenization(std::string_view text);

}  // namespace ev::text
