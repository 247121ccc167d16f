#include "tools/convert.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>

#include <CLI/CLI.hpp>

#include "formats/gguf.h"
#include "formats/gguf_import.h"
#include "formats/hf_config.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"
#include "text/tokenizer.h"
#include "tools/report.h"

namespace ev {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// convert_hf_to_gguf.py TextModel.does_token_look_special.
bool looks_special(const std::string& t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (starts_with(t, "<|") && ends_with(t, "|>")) return true;
  if (starts_with(t, "<\xef\xbd\x9c") && ends_with(t, "\xef\xbd\x9c>")) return true;  // <｜ ... ｜> (deepseek)
  return starts_with(t, "<unused") && ends_with(t, ">");
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::string pre;
};

// TextModel.get_vocab_base + _set_vocab_gpt2 on a tokenizer.json.
Result<Vocab> build_vocab(const std::string& dir, const VlmConfig& cfg) {
  const std::string path = (fs::path(dir) / "tokenizer.json").string();
  EV_ASSIGN_OR_RETURN(json tj, read_json_file(path));
  EV_ASSIGN_OR_RETURN(text::Tokenizer tok, text::Tokenizer::from_json(tj, path));
  Vocab v;
  const json* pre = tj.contains("pre_tokenizer") ? &tj["pre_tokenizer"] : nullptr;
  for (const char* name : {"smollm", "gpt-2", "llama-bpe"})
    if (pre && *pre == hf_pre_tokenizer_for(name)) {
      v.pre = name;
      break;
    }
  if (v.pre.empty())
    return Unsupported(path + ": the pre_tokenizer matches none of the llama.cpp pre-tokenizers known here "
                       "(smollm, gpt-2, llama-bpe)");
  if (tj.contains("normalizer") && !tj["normalizer"].is_null())
    return Unsupported(path + ": a normalizer is not representable in a gpt2 GGUF vocabulary");

  std::map<int32_t, const text::AddedTokenInfo*> added;
  for (const auto& a : tok.added_tokens()) added[a.id] = &a;
  const int V = cfg.text.vocab_size;
  if (tok.vocab_size() > V)
    return Corrupt(path + ": token ids reach " + std::to_string(tok.vocab_size() - 1) + " but vocab_size is " + std::to_string(V));
  for (int i = 0; i < V; ++i) {
    std::string t = tok.id_to_token(i);
    if (t.empty()) {
      v.tokens.push_back("[PAD" + std::to_string(i) + "]");
      v.types.push_back(kTokUnused);
      continue;
    }
    auto a = added.find(i);
    if (a == added.end()) {
      v.types.push_back(kTokNormal);
    } else {
      t = a->second->content;
      // llama.cpp expects CONTROL / USER_DEFINED tokens pre-normalized: a non-normalized one is encoded and
      // decoded back, as the converter does with AutoTokenizer.
      if (!a->second->normalized) t = tok.decode(tok.encode(t, false), false);
      if (a->second->special || looks_special(t)) {
        v.types.push_back(kTokControl);
      } else {
        for (size_t p = t.find("\xe2\x96\x81"); p != std::string::npos; p = t.find("\xe2\x96\x81", p)) t.replace(p, 3, " ");
        v.types.push_back(kTokUserDefined);
      }
    }
    v.tokens.push_back(std::move(t));
  }
  const json& merges = tj["model"]["merges"];  // validated by the Tokenizer load above
  if (merges.is_array())
    for (const auto& m : merges)
      v.merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
  return v;
}

// ModelBase.prepare_tensors' choice of GGUF type for one tensor.
GgmlType tensor_type(const std::string& hf, const std::string& gguf, const Tensor& t, bool mmproj, GgmlType want) {
  if (mmproj && hf.find(".embeddings.") != std::string::npos) return GgmlType::kF32;  // SmolVLMModel.tensor_force_quant
  if (t.ndim() <= 1 || ends_with(gguf, "_norm.weight") || !ends_with(gguf, ".weight")) return GgmlType::kF32;
  if (want == GgmlType::kQ8_0 && t.dim(t.ndim() - 1) % kQ8_0Block != 0) return GgmlType::kF16;  // QuantError -> F16
  return want;
}

Status write_json_file(const fs::path& p, const json& j) {
  return write_text_file(p.string(), j.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

}  // namespace

Result<json> convert_hf_to_gguf(const std::string& model_dir, const std::string& out_dir, const std::string& type) {
  GgmlType want;
  uint32_t file_type;
  std::string suffix;
  if (type == "f32") {
    want = GgmlType::kF32, file_type = 0, suffix = "f32";  // LlamaFileType.ALL_F32
  } else if (type == "f16") {
    want = GgmlType::kF16, file_type = 1, suffix = "f16";  // MOSTLY_F16
  } else if (type == "q8_0") {
    want = GgmlType::kQ8_0, file_type = 7, suffix = "Q8_0";  // MOSTLY_Q8_0
  } else {
    return InvalidArgument("--type '" + type + "' is not one of f32, f16, q8_0");
  }
  EV_ASSIGN_OR_RETURN(VlmConfig cfg, load_vlm_config(model_dir));
  if (cfg.model_type != "idefics3" && cfg.model_type != "smolvlm")
    return Unsupported(model_dir + ": model_type '" + cfg.model_type + "' cannot be converted (idefics3, smolvlm)");
  if (!cfg.vision.num_attention_heads_per_layer.empty() || cfg.vision.head_dim_override > 0)
    return Unsupported(model_dir + ": head-pruned vision towers have no GGUF form (clip.vision has one head count)");
  EV_ASSIGN_OR_RETURN(PreprocessorConfig pre, load_preprocessor_config(model_dir));
  EV_ASSIGN_OR_RETURN(TokenizerConfig tcfg, load_tokenizer_config(model_dir));
  EV_ASSIGN_OR_RETURN(TensorStore store, TensorStore::open_dir(model_dir));
  EV_ASSIGN_OR_RETURN(Vocab vocab, build_vocab(model_dir, cfg));
  EV_ASSIGN_OR_RETURN(text::Tokenizer tok, text::Tokenizer::load((fs::path(model_dir) / "tokenizer.json").string()));

  std::string name = fs::path(model_dir).filename().string();
  if (name.empty()) name = fs::path(model_dir).parent_path().filename().string();
  const TextConfig& tc = cfg.text;
  const VisionConfig& vc = cfg.vision;

  // ---- text model metadata (TextModel.set_gguf_parameters, LlamaModel.set_gguf_parameters, SpecialVocab)
  std::vector<std::pair<std::string, GgufValue>> tm;
  tm.emplace_back("general.architecture", GgufValue::str("llama"));
  tm.emplace_back("general.type", GgufValue::str("model"));
  tm.emplace_back("general.name", GgufValue::str(name));
  tm.emplace_back("llama.block_count", GgufValue::u32(static_cast<uint32_t>(tc.num_hidden_layers)));
  tm.emplace_back("llama.context_length", GgufValue::u32(static_cast<uint32_t>(tc.max_position_embeddings)));
  tm.emplace_back("llama.embedding_length", GgufValue::u32(static_cast<uint32_t>(tc.hidden_size)));
  tm.emplace_back("llama.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(tc.intermediate_size)));
  tm.emplace_back("llama.attention.head_count", GgufValue::u32(static_cast<uint32_t>(tc.num_attention_heads)));
  tm.emplace_back("llama.attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(tc.num_key_value_heads)));
  tm.emplace_back("llama.rope.freq_base", GgufValue::f32(tc.rope_theta));
  tm.emplace_back("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(tc.rms_norm_eps));
  // key_length / value_length are written when config.json states head_dim.
  const json& raw_text = cfg.raw.contains("text_config") ? cfg.raw["text_config"] : json::object();
  if (raw_text.contains("head_dim") && !raw_text["head_dim"].is_null()) {
    tm.emplace_back("llama.attention.key_length", GgufValue::u32(static_cast<uint32_t>(tc.head_dim)));
    tm.emplace_back("llama.attention.value_length", GgufValue::u32(static_cast<uint32_t>(tc.head_dim)));
  }
  tm.emplace_back("general.file_type", GgufValue::u32(file_type));
  tm.emplace_back("llama.vocab_size", GgufValue::u32(static_cast<uint32_t>(tc.vocab_size)));
  tm.emplace_back("llama.rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(tc.head_dim)));
  tm.emplace_back("general.quantization_version", GgufValue::u32(2));
  tm.emplace_back("tokenizer.ggml.model", GgufValue::str("gpt2"));
  tm.emplace_back("tokenizer.ggml.pre", GgufValue::str(vocab.pre));
  tm.emplace_back("tokenizer.ggml.tokens", GgufValue::string_array(vocab.tokens));
  tm.emplace_back("tokenizer.ggml.token_type", GgufValue::i32_array(vocab.types));
  tm.emplace_back("tokenizer.ggml.merges", GgufValue::string_array(vocab.merges));
  // SpecialVocab: the tokenizer config's tokens by content, else config.json's ids.
  auto special_id = [&](const std::string& content, int fallback) {
    const int32_t id = content.empty() ? -1 : tok.token_to_id(content);
    return id >= 0 ? id : fallback;
  };
  const int bos = special_id(tcfg.bos_token, cfg.bos_token_id), eos = special_id(tcfg.eos_token, cfg.eos_token_id);
  const int unk = special_id(tcfg.unk_token, -1), pad = special_id(tcfg.pad_token, cfg.pad_token_id);
  for (auto [key, id] : {std::pair<const char*, int>{"tokenizer.ggml.bos_token_id", bos},
                         {"tokenizer.ggml.eos_token_id", eos},
                         {"tokenizer.ggml.unknown_token_id", unk},
                         {"tokenizer.ggml.padding_token_id", pad}})
    if (id >= 0 && id < tc.vocab_size) tm.emplace_back(key, GgufValue::u32(static_cast<uint32_t>(id)));
  // add_bos / add_eos: from a TemplateProcessing post-processor, overridden by tokenizer_config.json.
  std::optional<bool> add_bos, add_eos;
  if (!tok.special_prefix_ids().empty()) add_bos = tok.special_prefix_ids() == std::vector<int32_t>{bos};
  if (!tok.special_suffix_ids().empty()) add_eos = tok.special_suffix_ids() == std::vector<int32_t>{eos};
  if (tcfg.add_bos_token) add_bos = tcfg.add_bos_token;
  if (tcfg.add_eos_token) add_eos = tcfg.add_eos_token;
  if (add_bos) tm.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(*add_bos));
  if (add_eos) tm.emplace_back("tokenizer.ggml.add_eos_token", GgufValue::boolean(*add_eos));
  if (!tcfg.chat_template.empty()) tm.emplace_back("tokenizer.chat_template", GgufValue::str(tcfg.chat_template));

  // ---- mmproj metadata (MmprojModel.set_gguf_parameters, SmolVLMModel.set_gguf_parameters)
  std::vector<std::pair<std::string, GgufValue>> mm;
  mm.emplace_back("general.architecture", GgufValue::str("clip"));
  mm.emplace_back("general.type", GgufValue::str("mmproj"));
  mm.emplace_back("general.name", GgufValue::str(name));
  mm.emplace_back("general.file_type", GgufValue::u32(file_type));
  mm.emplace_back("clip.has_vision_encoder", GgufValue::boolean(true));
  mm.emplace_back("clip.vision.projection_dim", GgufValue::u32(static_cast<uint32_t>(tc.hidden_size)));
  mm.emplace_back("clip.vision.image_size", GgufValue::u32(static_cast<uint32_t>(vc.image_size)));
  mm.emplace_back("clip.vision.patch_size", GgufValue::u32(static_cast<uint32_t>(vc.patch_size)));
  mm.emplace_back("clip.vision.embedding_length", GgufValue::u32(static_cast<uint32_t>(vc.hidden_size)));
  mm.emplace_back("clip.vision.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(vc.intermediate_size)));
  mm.emplace_back("clip.vision.block_count", GgufValue::u32(static_cast<uint32_t>(vc.num_hidden_layers)));
  mm.emplace_back("clip.vision.attention.head_count", GgufValue::u32(static_cast<uint32_t>(vc.num_attention_heads)));
  mm.emplace_back("clip.vision.image_mean", GgufValue::f32_array({pre.image_mean.begin(), pre.image_mean.end()}));
  mm.emplace_back("clip.vision.image_std", GgufValue::f32_array({pre.image_std.begin(), pre.image_std.end()}));
  mm.emplace_back("clip.projector_type", GgufValue::str("idefics3"));
  mm.emplace_back("clip.vision.attention.layer_norm_epsilon", GgufValue::f32(vc.layer_norm_eps));
  mm.emplace_back("clip.vision.projector.scale_factor", GgufValue::u32(static_cast<uint32_t>(cfg.scale_factor)));
  mm.emplace_back("clip.use_gelu", GgufValue::boolean(true));
  mm.emplace_back("clip.vision.preproc_image_size", GgufValue::u32(static_cast<uint32_t>(pre.size_longest_edge)));
  mm.emplace_back("general.quantization_version", GgufValue::u32(2));

  // ---- tensors
  std::vector<GgufWriteTensor> text_t, mm_t;
  std::map<std::string, int> counts;
  for (const std::string& hf : store.names()) {
    bool is_mm = false;
    const std::string g = hf_to_gguf_name(hf, &is_mm);
    if (g.empty())
      return Unsupported(model_dir + ": tensor '" + hf + "' has no GGUF counterpart (extra heads / adapters cannot be converted)");
    EV_ASSIGN_OR_RETURN(Tensor t, store.get(hf));
    if (t.dtype() != DType::kF32 && t.dtype() != DType::kF16 && t.dtype() != DType::kBF16)
      return Unsupported(model_dir + ": tensor '" + hf + "' is " + dtype_name(t.dtype()) + " (only float checkpoints convert)");
    if (!is_mm && (ends_with(hf, "q_proj.weight") || ends_with(hf, "q_proj.bias") || ends_with(hf, "k_proj.weight") ||
                   ends_with(hf, "k_proj.bias"))) {
      const bool is_k = hf.find("k_proj") != std::string::npos;
      EV_ASSIGN_OR_RETURN(t, permute_qk_rows(t, is_k ? tc.num_key_value_heads : tc.num_attention_heads, /*to_gguf=*/true));
    }
    const GgmlType ty = tensor_type(hf, g, t, is_mm, want);
    counts[ggml_type_info(static_cast<uint32_t>(ty))->name]++;
    (is_mm ? mm_t : text_t).push_back({g, std::move(t), ty});
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return IoError(out_dir + ": cannot create: " + ec.message());
  const std::string text_path = (fs::path(out_dir) / (name + "-" + suffix + ".gguf")).string();
  const std::string mm_path = (fs::path(out_dir) / ("mmproj-" + name + "-" + suffix + ".gguf")).string();
  EV_RETURN_IF_ERROR(write_gguf(text_path, tm, text_t));
  EV_RETURN_IF_ERROR(write_gguf(mm_path, mm, mm_t));
  return json{{"text", text_path}, {"mmproj", mm_path}, {"type", suffix}, {"tensors", counts},
              {"text_tensors", text_t.size()}, {"mmproj_tensors", mm_t.size()}};
}

Result<json> convert_gguf_to_hf(const std::string& gguf_path, const std::string& out_dir) {
  EV_ASSIGN_OR_RETURN(ImportedModel m, import_gguf_model(gguf_path));
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return IoError(out_dir + ": cannot create: " + ec.message());
  if (fs::exists(fs::path(out_dir) / "config.json", ec))
    return InvalidArgument(out_dir + ": already holds a config.json; choose an empty directory");
  const fs::path d(out_dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& n : m.store.names()) {
    EV_ASSIGN_OR_RETURN(Tensor t, m.store.get(n));
    tensors.emplace_back(n, std::move(t));
  }
  EV_RETURN_IF_ERROR(write_safetensors((d / "model.safetensors").string(), tensors, {{"format", "pt"}}));
  EV_RETURN_IF_ERROR(write_json_file(d / "config.json", m.config));
  EV_RETURN_IF_ERROR(write_json_file(d / "preprocessor_config.json", m.preprocessor));
  EV_RETURN_IF_ERROR(write_json_file(d / "tokenizer_config.json", m.tokenizer_config));
  EV_RETURN_IF_ERROR(write_json_file(d / "tokenizer.json", m.tokenizer));
  return json{{"dir", out_dir}, {"source", m.source}, {"tensors", tensors.size()}};
}

void add_convert_options(CLI::App& app, ConvertOptions& o) {
  app.add_option("--to", o.to, "target layout: gguf (llama.cpp text + mmproj pair) or hf (Hugging Face directory)")
      ->check(CLI::IsMember({"gguf", "hf"}));
  app.add_option("--model", o.model, "the model to convert: a Hugging Face directory (--to gguf), a GGUF model (--to hf)")
      ->required();
  app.add_option("--out", o.out, "output directory")->required();
  app.add_option("--type", o.type, "GGUF weight type (--to gguf): f16, q8_0 or f32")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}));
  app.add_flag("--json", o.json, "print a JSON result");
}

Status run_convert(const ConvertOptions& o) {
  Result<json> r = o.to == "hf" ? convert_gguf_to_hf(o.model, o.out) : convert_hf_to_gguf(o.model, o.out, o.type);
  if (!r.ok()) return r.status();
  if (o.json) {
    std::printf("%s\n", r->dump(2).c_str());
  } else if (o.to == "hf") {
    std::printf("wrote %s (%d tensors) from %s\n", (*r)["dir"].get<std::string>().c_str(), (*r)["tensors"].get<int>(),
                (*r)["source"].get<std::string>().c_str());
  } else {
    std::printf("wrote %s (%d tensors)\n      %s (%d tensors)\n", (*r)["text"].get<std::string>().c_str(),
                (*r)["text_tensors"].get<int>(), (*r)["mmproj"].get<std::string>().c_str(),
                (*r)["mmproj_tensors"].get<int>());
  }
  return Status::Ok();
}

}  // namespace ev
