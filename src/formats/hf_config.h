// Hugging Face configuration files of a SmolVLM / Idefics3 model directory, parsed into plain structs:
//   config.json               -> VlmConfig (vision tower, text model, connector)
//   preprocessor_config.json  -> PreprocessorConfig (+ image_seq_len from processor_config.json)
//   tokenizer_config.json     -> TokenizerConfig (+ chat_template.jinja / chat_template.json,
//                                special_tokens_map.json)
//
// Missing fields take transformers' defaults, cited per field below from
//   transformers/models/idefics3/configuration_idefics3.py  (Idefics3Config, Idefics3VisionConfig)
//   transformers/models/smolvlm/configuration_smolvlm.py    (SmolVLMConfig, SmolVLMVisionConfig: same defaults)
//   transformers/models/llama/configuration_llama.py        (LlamaConfig: the text_config)
//   transformers/models/idefics3/image_processing_idefics3.py (Idefics3ImageProcessor)
// A field that is null counts as missing (Python None means "use the default" for head_dim,
// num_key_value_heads, rope_scaling, ...).
//
// Status codes: kNotFound (file absent), kCorrupt (not JSON, wrong field type, missing required field),
// kInvalidArgument (values present but inconsistent or out of range: "hidden_size 100 is not divisible by
// num_attention_heads 3"), kUnsupported (a model_type / text model / rope type this runtime does not implement).
// Every message starts with the file path and the field path.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace ev {

// vision_config: a SigLIP encoder. Defaults: Idefics3VisionConfig / SmolVLMVisionConfig.
struct VisionConfig {
  int hidden_size = 1152;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 16;
  int num_channels = 3;
  int image_size = 224;
  int patch_size = 32;
  float layer_norm_eps = 1e-6f;
  std::string hidden_act = "gelu_pytorch_tanh";
  // Head-pruned towers (edgevlm prune-heads): the heads each layer kept, and the width of one head (which the
  // full tower's hidden_size / num_attention_heads no longer gives once heads are removed). Empty / 0: every layer
  // has num_attention_heads heads of hidden_size / num_attention_heads.
  std::vector<int> num_attention_heads_per_layer;
  int head_dim_override = 0;  // vision_config.head_dim

  int head_dim() const { return head_dim_override > 0 ? head_dim_override : hidden_size / num_attention_heads; }
  int heads_in_layer(int l) const {
    return num_attention_heads_per_layer.empty() ? num_attention_heads
                                                 : num_attention_heads_per_layer[static_cast<size_t>(l)];
  }
  int patches_per_side() const { return image_size / patch_size; }
  int num_patches() const { return patches_per_side() * patches_per_side(); }  // tokens per tile
};

// text_config: a Llama decoder. Defaults: LlamaConfig (rms_norm_eps 1e-6 when text_config is given; transformers
// builds the default text config, used when text_config is absent, with rms_norm_eps 1e-5).
struct TextConfig {
  std::string model_type = "llama";  // only "llama" is accepted
  int vocab_size = 32000;
  int hidden_size = 4096;
  int intermediate_size = 11008;
  int num_hidden_layers = 32;
  int num_attention_heads = 32;
  int num_key_value_heads = 32;      // default: num_attention_heads
  int head_dim = 128;                // default: hidden_size / num_attention_heads
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  // transformers 4.x: text_config.rope_theta; transformers 5: text_config.rope_parameters.rope_theta. Either is
  // read (rope_parameters wins). Default 10000.
  float rope_theta = 10000.0f;
  // rope_parameters.rope_type / rope_scaling.rope_type (or legacy rope_scaling.type). Only "default" is
  // implemented; others are refused with kUnsupported at parse time.
  std::string rope_type = "default";
  std::string hidden_act = "silu";
  // text_config.tie_word_embeddings; when absent, the top-level value; when both absent, false (LlamaConfig).
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
};

struct VlmConfig {
  std::string model_type;                  // "idefics3" or "smolvlm"
  std::vector<std::string> architectures;  // e.g. {"Idefics3ForConditionalGeneration"}; may be empty
  VisionConfig vision;
  TextConfig text;
  int scale_factor = 2;                    // pixel-shuffle factor of the connector (Idefics3Config default 2)
  int image_token_id = 128257;             // Idefics3Config default; must be < text.vocab_size
  // Whether lm_head shares the token embedding matrix. transformers 4.x ties according to
  // text_config.tie_word_embeddings (get_text_config()); transformers 5 may write it only at the top level.
  // This is true when EITHER the top level or text_config says true. Loaders should still prefer an
  // lm_head.weight tensor when the checkpoint has one, and fail only when it has none and this is false.
  bool tie_word_embeddings = false;
  std::string torch_dtype;                 // "torch_dtype" (4.x) or "dtype" (5.x); "" when absent
  // Top-level value, else text_config's, else -1. eos may be a list in config.json: eos_token_id is its first
  // element and eos_token_ids all of them (empty when absent). transformers' idefics3 default pad id (128002)
  // is deliberately NOT applied: it is out of range for small vocabularies and unused at inference.
  int bos_token_id = -1;
  int eos_token_id = -1;
  int pad_token_id = -1;
  std::vector<int> eos_token_ids;
  nlohmann::json raw;                      // the whole config.json, for model-specific extras

  // Image tokens the connector produces per tile: (image_size / patch_size)^2 / scale_factor^2.
  int image_tokens_per_tile() const {
    return vision.num_patches() / (scale_factor * scale_factor);
  }
  // Input width of the connector's projection: vision.hidden_size * scale_factor^2.
  int connector_input_dim() const { return vision.hidden_size * scale_factor * scale_factor; }
};

// Parses a config.json object. `source_name` prefixes every error message (usually the file path).
Result<VlmConfig> parse_vlm_config(const nlohmann::json& j, const std::string& source_name);
// Reads <model_dir>/config.json and parses it.
Result<VlmConfig> load_vlm_config(const std::string& model_dir);
// The consistency checks parse_vlm_config runs (exposed for configs built or modified in code): positive sizes
// below sanity limits, hidden divisible by heads, heads divisible by kv heads, image_size divisible by patch_size,
// patches per side divisible by scale_factor, image_token_id inside the vocabulary, positive finite eps / theta.
Status validate_vlm_config(const VlmConfig& c, const std::string& source_name);

// preprocessor_config.json of an Idefics3ImageProcessor / SmolVLMImageProcessor. Defaults: Idefics3ImageProcessor.
struct PreprocessorConfig {
  std::string image_processor_type;       // "" when absent
  bool do_convert_rgb = true;
  bool do_resize = true;
  int size_longest_edge = 4 * 364;        // size.longest_edge: the image is resized so its longest edge is this
  int max_image_size_longest_edge = 364;  // max_image_size.longest_edge: tile size when splitting
  bool do_image_splitting = true;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<float, 3> image_mean{0.5f, 0.5f, 0.5f};  // IDEFICS_STANDARD_MEAN; a bare number is broadcast
  std::array<float, 3> image_std{0.5f, 0.5f, 0.5f};   // IDEFICS_STANDARD_STD
  int resample = 1;                       // PIL enum: 0 NEAREST, 1 LANCZOS (default), 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING
  bool do_pad = true;
  // Image tokens per tile as the processor inserts them: preprocessor_config.json's image_seq_len, else
  // processor_config.json's, else 0 (absent: use VlmConfig::image_tokens_per_tile(), which it must equal).
  int image_seq_len = 0;
};

// `processor` is processor_config.json's object or nullptr.
Result<PreprocessorConfig> parse_preprocessor_config(const nlohmann::json& j, const std::string& source_name,
                                                     const nlohmann::json* processor = nullptr,
                                                     const std::string& processor_source = "processor_config.json");
// Reads <dir>/preprocessor_config.json (required) and <dir>/processor_config.json (optional).
Result<PreprocessorConfig> load_preprocessor_config(const std::string& model_dir);

// tokenizer_config.json and friends. Token strings may be stored as "<s>" or as an AddedToken object
// {"content": "<s>", ...}; both are read. Tokens absent from tokenizer_config.json are taken from
// special_tokens_map.json when the directory has one.
struct TokenizerConfig {
  std::string tokenizer_class;            // "" when absent
  // Chat template text and the file it came from ("" / "" when the model has none). Precedence (recent
  // transformers also prefers the separate files): chat_template.jinja, then chat_template.json
  // {"chat_template": ...}, then tokenizer_config.json's chat_template (a string, or a list of
  // {"name", "template"}: the one named "default", else the first).
  std::string chat_template;
  std::string chat_template_source;
  std::string bos_token, eos_token, pad_token, unk_token;  // "" when absent
  std::vector<std::string> additional_special_tokens;
  std::optional<bool> add_bos_token;      // nullopt: not stated (tokenizer.json's post-processor decides)
  std::optional<bool> add_eos_token;
  std::optional<bool> clean_up_tokenization_spaces;
  // -1 when absent or "unbounded" (transformers writes int(1e30), which does not fit in 64 bits).
  int64_t model_max_length = -1;
};

Result<TokenizerConfig> parse_tokenizer_config(const nlohmann::json& j, const std::string& source_name);
// Reads <dir>/tokenizer_config.json (required), then special_tokens_map.json, chat_template.json and
// chat_template.jinja when present.
Result<TokenizerConfig> load_tokenizer_config(const std::string& model_dir);

}  // namespace ev
