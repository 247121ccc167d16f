// edgevlm convert: a SmolVLM / Idefics3 model between the Hugging Face layout and llama.cpp's GGUF pair.
//
//   edgevlm convert --to gguf --model HF_DIR --out DIR [--type f16|q8_0|f32] [--json]
//     writes DIR/<name>-<type>.gguf (text model) and DIR/mmproj-<name>-<type>.gguf (vision tower + connector),
//     <name> the model directory's name, exactly as llama.cpp's convert_hf_to_gguf.py would for this model:
//     LlamaModel for the text side (llama.* keys, q / k rows permuted per head for ggml's rope, gpt2 vocabulary
//     with token types, merges, special ids and the chat template), SmolVLMModel for the mmproj (clip.* keys,
//     projector "idefics3", no permutation). Tensor types follow ModelBase.prepare_tensors: 1-D tensors, norms,
//     biases and (mmproj) the embeddings stay F32; other weights take --type, and a Q8_0 weight whose rows are not
//     a multiple of 32 falls back to F16. tokenizer.ggml.pre is chosen by matching the tokenizer.json
//     pre_tokenizer against the known llama.cpp pre-tokenizers (the converter hashes a test encoding instead,
//     which identifies the same thing for released models).
//   edgevlm convert --to hf --model GGUF --out DIR [--json]
//     writes the Hugging Face layout (config.json, preprocessor_config.json, tokenizer.json,
//     tokenizer_config.json, model.safetensors) of a GGUF pair (formats/gguf_import.h), e.g. for the tools that
//     rewrite a model directory (prune-heads). Q8_0 tensors are written dequantised (f32).
// Unsupported: head-pruned or int8 (edgevlm quantize) models, fast heads / temporal adapters (extra tensors with
// no GGUF name), non-byte-level tokenizers.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace CLI {
class App;
}

namespace ev {

struct ConvertOptions {
  std::string to = "gguf";   // gguf | hf
  std::string model;
  std::string out;
  std::string type = "f16";  // f32 | f16 | q8_0 (--to gguf)
  bool json = false;
};

void add_convert_options(CLI::App& app, ConvertOptions& o);
Status run_convert(const ConvertOptions& o);

// The cores of run_convert. The result describes what was written: {"text": path, "mmproj": path, "tensors":
// {"F32": n, ...}} for GGUF, {"dir": path, "tensors": n} for HF.
Result<nlohmann::json> convert_hf_to_gguf(const std::string& model_dir, const std::string& out_dir,
                                          const std::string& type);
Result<nlohmann::json> convert_gguf_to_hf(const std::string& gguf_path, const std::string& out_dir);

}  // namespace ev
