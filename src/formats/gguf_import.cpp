#include "formats/gguf_import.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>

#include "formats/gguf.h"

namespace ev {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Per-block tensor names: GGUF suffix after "blk.N." / "v.blk.N." -> HF suffix after "...layers.N.".
// gguf-py constants.py TENSOR_NAMES (MODEL_ARCH.LLAMA, MODEL_ARCH.MMPROJ) and tensor_mapping.py (the HF names
// marked "llama-hf" and "SmolVLM").
struct NamePair {
  const char* gguf;
  const char* hf;
};
const NamePair kTextBlock[] = {
    {"attn_norm", "input_layernorm"},     {"ffn_norm", "post_attention_layernorm"},
    {"attn_q", "self_attn.q_proj"},       {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},       {"attn_output", "self_attn.o_proj"},
    {"ffn_gate", "mlp.gate_proj"},        {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};
const NamePair kTextGlobal[] = {
    {"token_embd", "model.text_model.embed_tokens"},
    {"output_norm", "model.text_model.norm"},
    {"output", "lm_head"},
};
const NamePair kVisionBlock[] = {
    {"attn_q", "self_attn.q_proj"}, {"attn_k", "self_attn.k_proj"},     {"attn_v", "self_attn.v_proj"},
    {"attn_out", "self_attn.out_proj"}, {"ln1", "layer_norm1"},         {"ln2", "layer_norm2"},
    {"ffn_up", "mlp.fc1"},          {"ffn_down", "mlp.fc2"},
};
const NamePair kVisionGlobal[] = {
    {"v.patch_embd", "model.vision_model.embeddings.patch_embedding"},
    {"v.position_embd", "model.vision_model.embeddings.position_embedding"},
    {"v.post_ln", "model.vision_model.post_layernorm"},
    {"mm.model.fc", "model.connector.modality_projection.proj"},
};
const char kTextLayers[] = "model.text_model.layers.";
const char kVisionLayers[] = "model.vision_model.encoder.layers.";

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// "base.weight" -> ("base", ".weight"); "" suffix when it is neither .weight nor .bias.
std::pair<std::string, std::string> split_param(const std::string& n) {
  for (const char* suf : {".weight", ".bias"})
    if (ends_with(n, suf)) return {n.substr(0, n.size() - std::strlen(suf)), suf};
  return {n, ""};
}

// "<prefix><digits>.<rest>" -> (index, rest); -1 when it does not match.
std::pair<int, std::string> split_block(const std::string& n, const std::string& prefix) {
  if (!starts_with(n, prefix)) return {-1, ""};
  size_t i = prefix.size(), j = i;
  while (j < n.size() && j - i < 6 && n[j] >= '0' && n[j] <= '9') ++j;
  if (j == i || j >= n.size() || n[j] != '.') return {-1, ""};
  return {std::stoi(n.substr(i, j - i)), n.substr(j + 1)};
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool is_mmproj_name(const fs::path& p) { return starts_with(lower(p.filename().string()), "mmproj"); }
bool is_gguf_name(const fs::path& p) { return ends_with(lower(p.filename().string()), ".gguf"); }

std::vector<fs::path> gguf_files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file(ec) && is_gguf_name(e.path())) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::string list_names(const std::vector<fs::path>& v) {
  std::string s;
  for (const auto& p : v) s += (s.empty() ? "" : ", ") + p.filename().string();
  return s.empty() ? "none" : s;
}

// The projector for text file `text` among `mm` candidates.
Result<fs::path> pick_mmproj(const fs::path& text, const std::vector<fs::path>& mm, const std::string& where) {
  if (mm.empty()) return NotFound(where + ": no mmproj*.gguf (vision projector) beside " + text.filename().string());
  if (mm.size() == 1) return mm[0];
  for (const auto& p : mm)
    if (lower(p.filename().string()) == lower("mmproj-" + text.filename().string())) return p;
  return InvalidArgument(where + ": several projectors (" + list_names(mm) + ") and none is named mmproj-" +
                         text.filename().string() + "; keep one, or name the matching one so");
}

// An integer hyper-parameter in [lo, hi]; `def` < 0 means required.
Result<int> get_dim(const GgufFile& f, const std::string& key, int64_t def, int64_t lo = 1, int64_t hi = 1 << 24) {
  int64_t v = 0;
  if (def < 0) {
    auto r = f.get_int(key);
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kNotFound) return Corrupt(f.path() + ": required key '" + key + "' is missing");
      return r.status();
    }
    v = *r;
  } else {
    EV_ASSIGN_OR_RETURN(v, f.get_int(key, def));
  }
  if (v < lo || v > hi)
    return Corrupt(f.path() + ": key '" + key + "' = " + std::to_string(v) + " is out of range [" + std::to_string(lo) +
                   ", " + std::to_string(hi) + "]");
  return static_cast<int>(v);
}

Result<double> get_positive(const GgufFile& f, const std::string& key, double def) {
  double v = 0;
  if (def < 0) {
    auto r = f.get_float(key);
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kNotFound) return Corrupt(f.path() + ": required key '" + key + "' is missing");
      return r.status();
    }
    v = *r;
  } else {
    EV_ASSIGN_OR_RETURN(v, f.get_float(key, def));
  }
  if (!(v > 0.0) || !std::isfinite(v)) return Corrupt(f.path() + ": key '" + key + "' = " + std::to_string(v) + " must be positive");
  return v;
}

// Token id key (u32) -> id, or -1 when absent; out of range is corrupt.
Result<int> token_id(const GgufFile& f, const std::string& key, size_t n_tokens) {
  if (!f.has(key)) return -1;
  EV_ASSIGN_OR_RETURN(int64_t id, f.get_int(key));
  if (id < 0 || static_cast<size_t>(id) >= n_tokens)
    return Corrupt(f.path() + ": key '" + key + "' = " + std::to_string(id) + " is outside the vocabulary of " +
                   std::to_string(n_tokens) + " tokens");
  return static_cast<int>(id);
}

json byte_level(bool add_prefix_space, bool trim_offsets, bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", trim_offsets},
          {"use_regex", use_regex}};
}

// tokenizer.json + tokenizer_config.json from the text GGUF's vocabulary.
Status import_tokenizer(const GgufFile& f, ImportedModel* m, int* image_token_id, int* n_tokens_out, int ids[3]) {
  EV_ASSIGN_OR_RETURN(std::string model, f.get_string("tokenizer.ggml.model"));
  if (model != "gpt2")
    return Unsupported(f.path() + ": tokenizer.ggml.model '" + model +
                       "' is not supported (only \"gpt2\", byte-level BPE, as SmolVLM uses)");
  EV_ASSIGN_OR_RETURN(std::string pre, f.get_string("tokenizer.ggml.pre", "default"));
  json pre_tok = hf_pre_tokenizer_for(pre);
  if (pre_tok.is_null())
    return Unsupported(f.path() + ": tokenizer.ggml.pre '" + pre +
                       "' is not supported (known: smollm, gpt-2, default, llama-bpe)");
  EV_ASSIGN_OR_RETURN(const std::vector<std::string>* tokens, f.get_string_array("tokenizer.ggml.tokens"));
  const size_t n = tokens->size();
  if (n == 0) return Corrupt(f.path() + ": tokenizer.ggml.tokens is empty");
  std::vector<int64_t> types(n, kTokNormal);
  if (f.has("tokenizer.ggml.token_type")) {
    EV_ASSIGN_OR_RETURN(const std::vector<int64_t>* t, f.get_int_array("tokenizer.ggml.token_type"));
    if (t->size() != n)
      return Corrupt(f.path() + ": tokenizer.ggml.token_type has " + std::to_string(t->size()) + " entries for " +
                     std::to_string(n) + " tokens");
    types = *t;
  }
  EV_ASSIGN_OR_RETURN(const std::vector<std::string>* merges, f.get_string_array("tokenizer.ggml.merges"));

  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < n; ++i) {
    const std::string& tok = (*tokens)[i];
    const int64_t ty = types[i];
    if (ty < kTokNormal || ty > kTokByte)
      return Corrupt(f.path() + ": tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(ty) +
                     " is not a llama_token_type (1..6)");
    if (ty == kTokUnused) continue;  // "[PADn]" placeholders for ids the HF tokenizer does not have
    if (!vocab.contains(tok)) vocab[tok] = static_cast<int64_t>(i);
    if (ty == kTokControl || ty == kTokUserDefined || ty == kTokUnknown) {
      // llama.cpp matches CONTROL / USER_DEFINED tokens in raw text (they are stored pre-normalized), as HF does
      // with normalized=false. Listing them in the vocabulary too keeps their GGUF ids.
      added.push_back({{"id", static_cast<int64_t>(i)}, {"content", tok}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", ty != kTokUserDefined}});
    }
  }
  int bos = -1, eos = -1, unk = -1, pad = -1;
  EV_ASSIGN_OR_RETURN(bos, token_id(f, "tokenizer.ggml.bos_token_id", n));
  EV_ASSIGN_OR_RETURN(eos, token_id(f, "tokenizer.ggml.eos_token_id", n));
  EV_ASSIGN_OR_RETURN(unk, token_id(f, "tokenizer.ggml.unknown_token_id", n));
  EV_ASSIGN_OR_RETURN(pad, token_id(f, "tokenizer.ggml.padding_token_id", n));
  // Absent add_bos_token: no BOS, as the HF tokenizer the converter read (gguf-py SpecialVocab writes the key
  // whenever tokenizer_config.json or the TemplateProcessing post-processor adds one).
  EV_ASSIGN_OR_RETURN(bool add_bos, f.get_bool("tokenizer.ggml.add_bos_token", false));
  EV_ASSIGN_OR_RETURN(bool add_eos, f.get_bool("tokenizer.ggml.add_eos_token", false));
  if ((add_bos && bos < 0) || (add_eos && eos < 0))
    return Corrupt(f.path() + ": add_bos_token / add_eos_token is set but the token id is missing");

  json post;
  if (add_bos || add_eos) {
    json single = json::array(), pair = json::array(), specials = json::object();
    auto special = [&](int id) {
      const std::string& t = (*tokens)[static_cast<size_t>(id)];
      specials[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
      return json{{"SpecialToken", {{"id", t}, {"type_id", 0}}}};
    };
    if (add_bos) single.push_back(special(bos));
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    if (add_eos) single.push_back(special(eos));
    pair = single;
    if (add_bos) pair.push_back(special(bos));
    pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
    if (add_eos) pair.push_back(special(eos));
    post = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
  } else {
    post = byte_level(true, false, true);
  }
  json model_j = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                  {"byte_fallback", false},
                  // llama.cpp sets ignore_merges for the Llama-3 pre-tokenizer, as its tokenizer.json does.
                  {"ignore_merges", pre == "llama-bpe"},
                  {"vocab", std::move(vocab)}, {"merges", *merges}};
  m->tokenizer = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
                  {"normalizer", nullptr}, {"pre_tokenizer", pre_tok}, {"post_processor", post},
                  {"decoder", byte_level(true, true, true)}, {"model", std::move(model_j)}};

  json tc = json::object();
  tc["tokenizer_class"] = "PreTrainedTokenizerFast";
  auto name = [&](int id) { return id >= 0 ? json((*tokens)[static_cast<size_t>(id)]) : json(nullptr); };
  tc["bos_token"] = name(bos);
  tc["eos_token"] = name(eos);
  tc["unk_token"] = name(unk);
  tc["pad_token"] = name(pad);
  if (f.has("tokenizer.ggml.add_bos_token")) tc["add_bos_token"] = add_bos;
  if (f.has("tokenizer.ggml.add_eos_token")) tc["add_eos_token"] = add_eos;
  // llama.cpp's clean_spaces: off for the smollm and llama-bpe pre-tokenizers, on otherwise (llama-vocab.cpp).
  tc["clean_up_tokenization_spaces"] = !(pre == "smollm" || pre == "llama-bpe");
  EV_ASSIGN_OR_RETURN(std::string tmpl, f.get_string("tokenizer.chat_template", ""));
  if (!tmpl.empty()) tc["chat_template"] = tmpl;
  m->tokenizer_config = std::move(tc);

  // Idefics3 puts the image embeddings at the positions of the "<image>" token (llama.cpp's mtmd inserts them
  // itself and needs no id; our prompt expansion does).
  *image_token_id = -1;
  for (size_t i = 0; i < n; ++i)
    if ((*tokens)[i] == "<image>") {
      *image_token_id = static_cast<int>(i);
      break;
    }
  if (*image_token_id < 0) return Corrupt(f.path() + ": the vocabulary has no <image> token, which Idefics3 needs");
  *n_tokens_out = static_cast<int>(n);
  ids[0] = bos;
  ids[1] = eos;
  ids[2] = pad;
  return Status::Ok();
}

}  // namespace

// ---- names ----

std::string gguf_to_hf_name(const std::string& g, bool mmproj) {
  const auto [base, suf] = split_param(g);
  if (suf.empty()) return "";
  if (!mmproj) {
    for (const auto& p : kTextGlobal)
      if (base == p.gguf) return p.hf + suf;
    const auto [b, rest] = split_block(base, "blk.");
    if (b < 0) return "";
    for (const auto& p : kTextBlock)
      if (rest == p.gguf) return kTextLayers + std::to_string(b) + "." + p.hf + suf;
    return "";
  }
  for (const auto& p : kVisionGlobal)
    if (base == p.gguf) return p.hf + suf;
  const auto [b, rest] = split_block(base, "v.blk.");
  if (b < 0) return "";
  for (const auto& p : kVisionBlock)
    if (rest == p.gguf) return kVisionLayers + std::to_string(b) + "." + p.hf + suf;
  return "";
}

std::string hf_to_gguf_name(const std::string& h, bool* mmproj) {
  const auto [base, suf] = split_param(h);
  if (suf.empty()) return "";
  for (const auto& p : kTextGlobal)
    if (base == p.hf) {
      *mmproj = false;
      return p.gguf + suf;
    }
  for (const auto& p : kVisionGlobal)
    if (base == p.hf) {
      *mmproj = true;
      return p.gguf + suf;
    }
  if (auto [b, rest] = split_block(base, kTextLayers); b >= 0) {
    for (const auto& p : kTextBlock)
      if (rest == p.hf) {
        *mmproj = false;
        return "blk." + std::to_string(b) + "." + p.gguf + suf;
      }
    return "";
  }
  if (auto [b, rest] = split_block(base, kVisionLayers); b >= 0) {
    for (const auto& p : kVisionBlock)
      if (rest == p.hf) {
        *mmproj = true;
        return "v.blk." + std::to_string(b) + "." + p.gguf + suf;
      }
  }
  return "";
}

Result<Tensor> permute_qk_rows(const Tensor& t, int n_head, bool to_gguf) {
  const int64_t rows = t.ndim() >= 1 ? t.dim(0) : 0;
  if (n_head <= 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0)
    return ShapeMismatch("tensor '" + t.name() + "' " + t.shape().to_string() + ": " + std::to_string(rows) +
                         " rows are not " + std::to_string(n_head) + " heads of an even size");
  const int64_t hd = rows / n_head;
  const size_t row_bytes = t.nbytes() / static_cast<size_t>(rows);
  Tensor out = Tensor::empty(t.dtype(), t.shape());
  const auto* src = t.data_as<const uint8_t>();
  auto* dst = out.data_as<uint8_t>();
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < hd / 2; ++i) {
        const int64_t hf = h * hd + j * (hd / 2) + i, gg = h * hd + 2 * i + j;
        const int64_t from = to_gguf ? hf : gg, to = to_gguf ? gg : hf;
        std::memcpy(dst + static_cast<size_t>(to) * row_bytes, src + static_cast<size_t>(from) * row_bytes, row_bytes);
      }
  out.set_name(t.name());
  return out;
}

json hf_pre_tokenizer_for(const std::string& pre) {
  // llama-vocab.cpp: LLAMA_VOCAB_PRE_TYPE_SMOLLM splits digits individually before the GPT-2 regex, which is
  // HF's Digits(individual_digits) + ByteLevel(use_regex); GPT2 / DEFAULT are the GPT-2 regex alone.
  if (pre == "smollm")
    return {{"type", "Sequence"},
            {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(false, true, true)})}};
  if (pre == "gpt-2" || pre == "default") return byte_level(false, true, true);
  if (pre == "llama-bpe")
    return {{"type", "Sequence"},
            {"pretokenizers",
             json::array({{{"type", "Split"},
                           {"pattern",
                            {{"Regex",
                              "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                              "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          byte_level(false, true, false)})}};
  return nullptr;
}

// ---- locating the files ----

bool is_gguf_model_path(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_regular_file(p, ec)) return is_gguf_name(p);
  if (!fs::is_directory(p, ec) || fs::exists(p / "config.json", ec)) return false;
  return !gguf_files_in(p).empty();
}

Result<GgufModelPaths> find_gguf_model(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_regular_file(p, ec)) {
    if (!is_gguf_name(p)) return InvalidArgument(path + ": not a .gguf file");
    if (is_mmproj_name(p))
      return InvalidArgument(path + ": this is a vision projector (mmproj); give the text model's .gguf (or the directory)");
    std::vector<fs::path> mm;
    for (const auto& f : gguf_files_in(p.has_parent_path() ? p.parent_path() : fs::path(".")))
      if (is_mmproj_name(f)) mm.push_back(f);
    EV_ASSIGN_OR_RETURN(fs::path m, pick_mmproj(p, mm, path));
    return GgufModelPaths{p.string(), m.string()};
  }
  if (!fs::is_directory(p, ec)) return NotFound(path + ": no such file or directory");
  if (fs::exists(p / "config.json", ec))
    return InvalidArgument(path + ": has a config.json (a Hugging Face model directory), not a GGUF model");
  std::vector<fs::path> text, mm;
  for (const auto& f : gguf_files_in(p)) (is_mmproj_name(f) ? mm : text).push_back(f);
  if (text.size() != 1)
    return InvalidArgument(path + ": a GGUF model directory must hold exactly one text model .gguf besides the "
                           "mmproj*.gguf, found " + std::to_string(text.size()) + " (" + list_names(text) +
                           "); give the text file itself as --model");
  EV_ASSIGN_OR_RETURN(fs::path m, pick_mmproj(text[0], mm, path));
  return GgufModelPaths{text[0].string(), m.string()};
}

// ---- import ----

Result<ImportedModel> import_gguf_model(const std::string& path) {
  EV_ASSIGN_OR_RETURN(GgufModelPaths paths, find_gguf_model(path));
  EV_ASSIGN_OR_RETURN(GgufFile text, GgufFile::open(paths.text));
  EV_ASSIGN_OR_RETURN(GgufFile mm, GgufFile::open(paths.mmproj));
  ImportedModel m;
  m.source = paths.text + " + " + paths.mmproj;

  // ---- text model (llama.*, written by TextModel / LlamaModel.set_gguf_parameters)
  EV_ASSIGN_OR_RETURN(std::string arch, text.get_string("general.architecture"));
  if (arch == "clip")
    return InvalidArgument(text.path() + ": is a vision projector (general.architecture \"clip\"), expected the text model");
  if (arch != "llama")
    return Unsupported(text.path() + ": general.architecture '" + arch + "' is not supported (SmolVLM's text model is \"llama\")");
  EV_ASSIGN_OR_RETURN(int64_t experts, text.get_int("llama.expert_count", 0));
  if (experts > 0) return Unsupported(text.path() + ": mixture-of-experts llama models are not supported");
  EV_ASSIGN_OR_RETURN(std::string rope_scaling, text.get_string("llama.rope.scaling.type", "none"));
  if (rope_scaling != "none")
    return Unsupported(text.path() + ": llama.rope.scaling.type '" + rope_scaling + "' is not supported (only plain rope)");
  EV_ASSIGN_OR_RETURN(int n_layer, get_dim(text, "llama.block_count", -1, 1, 1024));
  EV_ASSIGN_OR_RETURN(int n_embd, get_dim(text, "llama.embedding_length", -1));
  EV_ASSIGN_OR_RETURN(int n_ff, get_dim(text, "llama.feed_forward_length", -1));
  EV_ASSIGN_OR_RETURN(int n_head, get_dim(text, "llama.attention.head_count", -1, 1, 4096));
  EV_ASSIGN_OR_RETURN(int n_kv, get_dim(text, "llama.attention.head_count_kv", n_head, 1, 4096));
  // head_dim: key_length when written (the converter writes it when config.json has head_dim), else the rope
  // dimension count (LlamaModel writes head_dim there), else n_embd / n_head (llama.cpp's default).
  EV_ASSIGN_OR_RETURN(int rope_dim, get_dim(text, "llama.rope.dimension_count", n_embd / n_head, 1, 1 << 16));
  EV_ASSIGN_OR_RETURN(int head_dim, get_dim(text, "llama.attention.key_length", rope_dim, 1, 1 << 16));
  EV_ASSIGN_OR_RETURN(int v_dim, get_dim(text, "llama.attention.value_length", head_dim, 1, 1 << 16));
  if (rope_dim != head_dim || v_dim != head_dim)
    return Unsupported(text.path() + ": partial rotary embeddings or value heads of another size (rope " +
                       std::to_string(rope_dim) + ", key " + std::to_string(head_dim) + ", value " +
                       std::to_string(v_dim) + ") are not supported");
  EV_ASSIGN_OR_RETURN(int ctx, get_dim(text, "llama.context_length", 2048, 1, 1 << 24));
  EV_ASSIGN_OR_RETURN(double rms_eps, get_positive(text, "llama.attention.layer_norm_rms_epsilon", -1));
  EV_ASSIGN_OR_RETURN(double theta, get_positive(text, "llama.rope.freq_base", 10000.0));

  int image_token_id = -1, n_tokens = 0, ids[3] = {-1, -1, -1};
  EV_RETURN_IF_ERROR(import_tokenizer(text, &m, &image_token_id, &n_tokens, ids));
  EV_ASSIGN_OR_RETURN(int vocab, get_dim(text, "llama.vocab_size", n_tokens, 1, 1 << 24));
  if (const GgufTensorInfo* te = text.tensor("token_embd.weight"); te && te->ne.size() == 2 && te->ne[1] != vocab)
    return Corrupt(text.path() + ": token_embd.weight has " + std::to_string(te->ne[1]) + " rows but the vocabulary has " +
                   std::to_string(vocab) + " entries");

  std::vector<std::pair<std::string, Tensor>> tensors;
  bool has_output = false, q_bias = false, mlp_bias = false;
  for (const auto& ti : text.tensors()) {
    const std::string hf = gguf_to_hf_name(ti.name, false);
    if (hf.empty()) return Unsupported(text.path() + ": tensor '" + ti.name + "' has no counterpart in the Llama text model");
    EV_ASSIGN_OR_RETURN(Tensor t, text.get(ti.name));
    has_output = has_output || ti.name == "output.weight";
    q_bias = q_bias || ends_with(ti.name, ".attn_q.bias");
    mlp_bias = mlp_bias || ends_with(ti.name, ".ffn_up.bias");
    const bool is_q = ends_with(split_param(ti.name).first, ".attn_q"), is_k = ends_with(split_param(ti.name).first, ".attn_k");
    if (is_q || is_k) {
      const int heads = is_q ? n_head : n_kv;
      if (t.ndim() < 1 || t.dim(0) != static_cast<int64_t>(heads) * head_dim)
        return Corrupt(text.path() + ": tensor '" + ti.name + "' " + t.shape().to_string() + " does not have " +
                       std::to_string(heads) + " x " + std::to_string(head_dim) + " rows");
      auto p = permute_qk_rows(t, heads, /*to_gguf=*/false);
      if (!p.ok()) return p.status().with_context(text.path());
      t = std::move(p).value();
    }
    tensors.emplace_back(hf, std::move(t));
  }

  // ---- vision tower + connector (clip.*, written by MmprojModel / SmolVLMModel.set_gguf_parameters)
  EV_ASSIGN_OR_RETURN(std::string march, mm.get_string("general.architecture"));
  if (march != "clip")
    return InvalidArgument(mm.path() + ": general.architecture is '" + march + "', expected \"clip\" (a vision projector)");
  EV_ASSIGN_OR_RETURN(bool has_vision, mm.get_bool("clip.has_vision_encoder", true));
  if (!has_vision) return Unsupported(mm.path() + ": the projector has no vision encoder");
  // The projector type moved from clip.projector_type to clip.vision.projector_type in newer converters.
  EV_ASSIGN_OR_RETURN(std::string ptype, mm.get_string("clip.projector_type", ""));
  if (ptype.empty()) {
    EV_ASSIGN_OR_RETURN(ptype, mm.get_string("clip.vision.projector_type", ""));
  }
  if (ptype != "idefics3")
    return Unsupported(mm.path() + ": projector type '" + ptype + "' is not supported (SmolVLM / Idefics3 is \"idefics3\")");
  EV_ASSIGN_OR_RETURN(bool gelu, mm.get_bool("clip.use_gelu", true));
  EV_ASSIGN_OR_RETURN(bool silu, mm.get_bool("clip.use_silu", false));
  if (!gelu || silu) return Unsupported(mm.path() + ": only GELU vision towers (SigLIP) are supported");
  EV_ASSIGN_OR_RETURN(int v_size, get_dim(mm, "clip.vision.image_size", -1, 1, 1 << 14));
  EV_ASSIGN_OR_RETURN(int v_patch, get_dim(mm, "clip.vision.patch_size", -1, 1, 1 << 12));
  EV_ASSIGN_OR_RETURN(int v_embd, get_dim(mm, "clip.vision.embedding_length", -1));
  EV_ASSIGN_OR_RETURN(int v_ff, get_dim(mm, "clip.vision.feed_forward_length", -1));
  EV_ASSIGN_OR_RETURN(int v_layer, get_dim(mm, "clip.vision.block_count", -1, 1, 1024));
  EV_ASSIGN_OR_RETURN(int v_head, get_dim(mm, "clip.vision.attention.head_count", -1, 1, 4096));
  // SmolVLMModel writes layer_norm_eps with a default of 1e-5 when the vision config lacks it.
  EV_ASSIGN_OR_RETURN(double v_eps, get_positive(mm, "clip.vision.attention.layer_norm_epsilon", 1e-5));
  // Idefics3Config's default scale factor when the key is absent.
  EV_ASSIGN_OR_RETURN(int scale, get_dim(mm, "clip.vision.projector.scale_factor", 2, 1, 64));
  EV_ASSIGN_OR_RETURN(int proj_dim, get_dim(mm, "clip.vision.projection_dim", n_embd));
  if (proj_dim != n_embd)
    return Corrupt(m.source + ": the projector outputs " + std::to_string(proj_dim) +
                   "-wide embeddings but the text model is " + std::to_string(n_embd) + " wide (mismatched files?)");
  std::vector<double> mean = {0.5, 0.5, 0.5}, stdv = {0.5, 0.5, 0.5};  // IDEFICS_STANDARD_MEAN / _STD
  if (mm.has("clip.vision.image_mean")) {
    EV_ASSIGN_OR_RETURN(mean, mm.get_float_array("clip.vision.image_mean"));
  }
  if (mm.has("clip.vision.image_std")) {
    EV_ASSIGN_OR_RETURN(stdv, mm.get_float_array("clip.vision.image_std"));
  }
  if (mean.size() != 3 || stdv.size() != 3)
    return Corrupt(mm.path() + ": clip.vision.image_mean / image_std must have 3 values");
  // The Idefics3 processor's size.longest_edge: clip.vision.preproc_image_size in newer converters; otherwise the
  // default of Idefics3ImageProcessor (4 x 364 for 364-pixel tiles) scaled to this tile size, 4 x image_size,
  // which is also what SmolVLM's processors use (e.g. 2048 for 512-pixel tiles).
  EV_ASSIGN_OR_RETURN(int longest, get_dim(mm, "clip.vision.preproc_image_size", 4 * static_cast<int64_t>(v_size), 1, 1 << 16));

  for (const auto& ti : mm.tensors()) {
    const std::string hf = gguf_to_hf_name(ti.name, true);
    if (hf.empty()) return Unsupported(mm.path() + ": tensor '" + ti.name + "' has no counterpart in the Idefics3 vision model");
    EV_ASSIGN_OR_RETURN(Tensor t, mm.get(ti.name));
    tensors.emplace_back(hf, std::move(t));
  }
  EV_ASSIGN_OR_RETURN(m.store, TensorStore::from_tensors(m.source, std::move(tensors)));

  const bool tied = !has_output;  // llama.cpp uses token_embd as the output when output.weight is absent
  json text_cfg = {{"model_type", "llama"},
                   {"vocab_size", vocab},
                   {"hidden_size", n_embd},
                   {"intermediate_size", n_ff},
                   {"num_hidden_layers", n_layer},
                   {"num_attention_heads", n_head},
                   {"num_key_value_heads", n_kv},
                   {"head_dim", head_dim},
                   {"max_position_embeddings", ctx},
                   {"rms_norm_eps", rms_eps},
                   {"rope_theta", theta},
                   {"hidden_act", "silu"},
                   {"tie_word_embeddings", tied},
                   {"attention_bias", q_bias},
                   {"mlp_bias", mlp_bias}};
  if (ids[0] >= 0) text_cfg["bos_token_id"] = ids[0];
  if (ids[1] >= 0) text_cfg["eos_token_id"] = ids[1];
  if (ids[2] >= 0) text_cfg["pad_token_id"] = ids[2];
  json vision_cfg = {{"hidden_size", v_embd},       {"intermediate_size", v_ff}, {"num_hidden_layers", v_layer},
                     {"num_attention_heads", v_head}, {"num_channels", 3},       {"image_size", v_size},
                     {"patch_size", v_patch},       {"layer_norm_eps", v_eps},
                     // ggml_gelu is the tanh approximation, as SigLIP's gelu_pytorch_tanh.
                     {"hidden_act", "gelu_pytorch_tanh"}};
  m.config = {{"architectures", {"Idefics3ForConditionalGeneration"}},
              {"model_type", "idefics3"},
              {"image_token_id", image_token_id},
              {"scale_factor", scale},
              {"tie_word_embeddings", tied},
              {"text_config", text_cfg},
              {"vision_config", vision_cfg}};
  if (ids[0] >= 0) m.config["bos_token_id"] = ids[0];
  if (ids[1] >= 0) m.config["eos_token_id"] = ids[1];
  if (ids[2] >= 0) m.config["pad_token_id"] = ids[2];
  if (auto nm = text.get_string("general.name", ""); nm.ok() && !nm->empty()) m.config["_name_or_path"] = *nm;

  // Preprocessing llama.cpp applies to idefics3 (mtmd): resize to the longest edge, split into image_size tiles
  // plus a global view, rescale by 1/255, normalise with the stored mean / std. The resampling filter is HF's
  // default (LANCZOS, resample 1), which our preprocessing and golden tests follow; llama.cpp resizes bicubic.
  m.preprocessor = {{"image_processor_type", "Idefics3ImageProcessor"},
                    {"do_convert_rgb", true},
                    {"do_resize", true},
                    {"size", {{"longest_edge", longest}}},
                    {"max_image_size", {{"longest_edge", v_size}}},
                    {"do_image_splitting", true},
                    {"do_rescale", true},
                    {"rescale_factor", 1.0 / 255.0},
                    {"do_normalize", true},
                    {"image_mean", mean},
                    {"image_std", stdv},
                    {"resample", 1},
                    {"do_pad", true}};
  return m;
}

}  // namespace ev
