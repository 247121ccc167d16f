// SmolVLM / Idefics3 models in llama.cpp's GGUF form: a text model GGUF (general.architecture "llama") plus a
// vision projector "mmproj" GGUF (general.architecture "clip", clip.projector_type "idefics3"), as
// convert_hf_to_gguf.py writes them (classes LlamaModel for the text side, SmolVLMModel for the mmproj; e.g.
// ggml-org/SmolVLM-256M-Instruct-GGUF). import_gguf_model() turns such a pair into what Engine::load needs in the
// Hugging Face layout: config.json, preprocessor_config.json, tokenizer_config.json and tokenizer.json as JSON
// objects (parsed by the same code as the files), and a TensorStore holding the tensors under their HF names.
//
// What the converter did, and what is undone here:
//   - names: token_embd -> model.text_model.embed_tokens, blk.N.attn_q -> model.text_model.layers.N.self_attn.q_proj,
//     ..., output -> lm_head (absent when the embeddings are tied); v.patch_embd -> model.vision_model.embeddings.
//     patch_embedding, v.blk.N.ffn_up -> ...mlp.fc1, mm.model.fc -> model.connector.modality_projection.proj
//     (gguf-py tensor_mapping.py). The full table is kTextNames / kVisionNames in gguf_import.cpp.
//   - the text model's q_proj / k_proj rows (weights and biases) are permuted per head for ggml's rope layout
//     (LlamaModel.permute: reshape(n_head, 2, head_dim / 2, ...).swapaxes(1, 2); n_head = num_key_value_heads for
//     k): HF row h*hd + j*hd/2 + i is GGUF row h*hd + 2i + j. The inverse is applied here, giving HF's rotate-half
//     layout. The vision tower's q / k are not permuted by SmolVLMModel and are taken as they are.
//   - the vocabulary (tokenizer.ggml.model "gpt2": tokens, token_type, merges, bos / eos / unk / padding ids,
//     add_bos_token / add_eos_token) becomes a byte-level BPE tokenizer.json; tokenizer.ggml.pre names the
//     pre-tokenizer ("smollm", "gpt-2", "default", "llama-bpe" are known). CONTROL tokens become special added
//     tokens, USER_DEFINED ones non-special added tokens, UNUSED ([PADn]) placeholders are dropped.
//   - settings GGUF does not carry take llama.cpp's behaviour or the HF processor's documented default (each is
//     commented where it is set in gguf_import.cpp).
// Tensors: F32 / F16 / BF16 are zero-copy views of the mapped files (copied only when permuted); Q8_0 is
// dequantised exactly into f32 at import.
//
// How a model is given (Engine::load, every --model option):
//   - a directory without config.json that holds exactly one text *.gguf and one mmproj*.gguf;
//   - the text .gguf file itself; its projector is the mmproj*.gguf beside it ("mmproj-<text file name>" when there
//     are several, which is how ggml-org names the pairs).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "formats/safetensors.h"

namespace ev {

// True when `path` is a .gguf file or a directory without config.json containing a .gguf file.
bool is_gguf_model_path(const std::string& path);

struct GgufModelPaths {
  std::string text;
  std::string mmproj;
};
// Resolves a --model argument to the pair (rules above). kNotFound / kInvalidArgument name the candidates.
Result<GgufModelPaths> find_gguf_model(const std::string& path);

struct ImportedModel {
  std::string source;           // "<text.gguf> + <mmproj.gguf>", prefixes messages
  nlohmann::json config;        // config.json
  nlohmann::json preprocessor;  // preprocessor_config.json
  nlohmann::json tokenizer_config;
  nlohmann::json tokenizer;     // tokenizer.json
  TensorStore store;            // HF names
};

// kUnsupported for another architecture / projector / tokenizer model / pre-tokenizer or a feature the Llama path
// here does not implement (rope scaling, MoE); kCorrupt for missing or inconsistent keys and tensors.
Result<ImportedModel> import_gguf_model(const std::string& path);

// ---- shared with the converter (tools/convert.h) ----

// GGUF tensor name -> HF name ("" when unknown). `mmproj` selects the vision table.
std::string gguf_to_hf_name(const std::string& gguf_name, bool mmproj);
// HF name -> GGUF name ("" when the tensor has no GGUF counterpart).
std::string hf_to_gguf_name(const std::string& hf_name, bool* mmproj);

// The q / k row permutation of LlamaModel.permute (to_gguf) and its inverse, on a tensor whose first dimension is
// n_head * head_dim (a weight [rows, in] or a bias [rows]); any dtype.
Result<Tensor> permute_qk_rows(const Tensor& t, int n_head, bool to_gguf);

// The HF pre_tokenizer JSON that a tokenizer.ggml.pre name stands for; null when unknown.
nlohmann::json hf_pre_tokenizer_for(const std::string& gguf_pre);

// llama_token_type (llama.h): NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
enum GgufTokenType : int { kTokNormal = 1, kTokUnknown = 2, kTokControl = 3, kTokUserDefined = 4, kTokUnused = 5, kTokByte = 6 };

}  // namespace ev
