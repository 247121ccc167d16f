#include "formats/hf_config.h"

#include <climits>
#include <cmath>
#include <filesystem>

#include "formats/json_util.h"

namespace ev {

using nlohmann::json;

namespace {

// Sanity limits: far above any real model, low enough that later size arithmetic (hidden * intermediate, vocab *
// hidden, ...) cannot overflow 64 bits and a hostile config cannot make the runtime allocate terabytes.
constexpr int kMaxWidth = 1 << 20;      // hidden / intermediate sizes
constexpr int kMaxVocab = 1 << 24;
constexpr int kMaxLayers = 1024;
constexpr int kMaxHeads = 4096;
constexpr int kMaxImageSize = 1 << 15;
constexpr int kMaxPositions = 1 << 26;
constexpr int kMaxScaleFactor = 64;

Status invalid(const std::string& where, const std::string& what) { return InvalidArgument(where + ": " + what); }

// Parses a token id field that may be an integer, a list of integers (eos in some configs) or absent/null.
// Returns the ids (empty when absent).
Result<std::vector<int>> get_token_ids(const JsonView& v, const char* key) {
  std::vector<int> out;
  if (!v.has(key)) return out;
  const json& x = v.node()[key];
  auto one = [&](const json& e, const std::string& where) -> Status {
    auto id = json_to_int(e, where);
    if (!id.ok()) return id.status();
    if (*id < -1 || *id > INT_MAX) return Corrupt(where + ": token id " + std::to_string(*id) + " out of range");
    out.push_back(static_cast<int>(*id));
    return Status::Ok();
  };
  if (x.is_array()) {
    for (size_t i = 0; i < x.size(); ++i) EV_RETURN_IF_ERROR(one(x[i], v.where(key) + "[" + std::to_string(i) + "]"));
  } else {
    EV_RETURN_IF_ERROR(one(x, v.where(key)));
  }
  return out;
}

Result<float> get_positive_float(const JsonView& v, const char* key, double def) {
  auto x = v.get_number(key, def);
  if (!x.ok()) return x.status();
  // Also refuses values that overflow float (1e300 -> inf).
  if (!(*x > 0.0) || !std::isfinite(static_cast<float>(*x)))
    return invalid(v.where(key), "must be a positive finite number, got " + std::to_string(*x));
  return static_cast<float>(*x);
}

Status parse_vision(const JsonView& v, VisionConfig* c) {
  EV_ASSIGN_OR_RETURN(c->hidden_size, v.get_int32("hidden_size", c->hidden_size, 1, kMaxWidth));
  EV_ASSIGN_OR_RETURN(c->intermediate_size, v.get_int32("intermediate_size", c->intermediate_size, 1, kMaxWidth));
  EV_ASSIGN_OR_RETURN(c->num_hidden_layers, v.get_int32("num_hidden_layers", c->num_hidden_layers, 1, kMaxLayers));
  EV_ASSIGN_OR_RETURN(c->num_attention_heads,
                      v.get_int32("num_attention_heads", c->num_attention_heads, 1, kMaxHeads));
  EV_ASSIGN_OR_RETURN(c->num_channels, v.get_int32("num_channels", c->num_channels, 1, 16));
  EV_ASSIGN_OR_RETURN(c->image_size, v.get_int32("image_size", c->image_size, 1, kMaxImageSize));
  EV_ASSIGN_OR_RETURN(c->patch_size, v.get_int32("patch_size", c->patch_size, 1, kMaxImageSize));
  EV_ASSIGN_OR_RETURN(c->layer_norm_eps, get_positive_float(v, "layer_norm_eps", c->layer_norm_eps));
  EV_ASSIGN_OR_RETURN(c->hidden_act, v.get_string("hidden_act", c->hidden_act));
  EV_ASSIGN_OR_RETURN(c->head_dim_override, v.get_int32("head_dim", 0, 0, kMaxWidth));
  if (v.has("num_attention_heads_per_layer")) {
    EV_ASSIGN_OR_RETURN(std::vector<int64_t> h, v.get_int_array("num_attention_heads_per_layer"));
    c->num_attention_heads_per_layer.clear();
    for (int64_t x : h) {
      if (x < 1 || x > kMaxHeads)
        return v.error("num_attention_heads_per_layer", "value " + std::to_string(x) + " out of range [1, " +
                                                            std::to_string(kMaxHeads) + "]");
      c->num_attention_heads_per_layer.push_back(static_cast<int>(x));
    }
  }
  return Status::Ok();
}

// RoPE settings. transformers 5 writes {"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}};
// 4.x writes "rope_theta" next to "rope_scaling" (null, or {"rope_type"|"type": ..., "factor": ...}).
Status parse_rope(const JsonView& v, TextConfig* c) {
  double theta = c->rope_theta;
  EV_ASSIGN_OR_RETURN(theta, v.get_number("rope_theta", theta));
  std::string type = "default";
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    EV_ASSIGN_OR_RETURN(std::optional<JsonView> r, v.get_object_opt(key));
    if (!r) continue;
    if (r->has("rope_type")) {
      EV_ASSIGN_OR_RETURN(type, r->get_string("rope_type"));
    } else if (r->has("type")) {
      EV_ASSIGN_OR_RETURN(type, r->get_string("type"));
    }
    if (type != "default")
      return Unsupported(r->where() + ": rope type '" + type + "' is not supported (only 'default' RoPE is implemented)");
    EV_ASSIGN_OR_RETURN(theta, r->get_number("rope_theta", theta));
  }
  if (!(theta > 0.0) || !std::isfinite(static_cast<float>(theta)))
    return invalid(v.where("rope_theta"), "must be a positive finite number, got " + std::to_string(theta));
  c->rope_theta = static_cast<float>(theta);
  c->rope_type = type;
  return Status::Ok();
}

// `top_tie` is the top-level tie_word_embeddings when present.
Status parse_text(const JsonView& v, std::optional<bool> top_tie, TextConfig* c) {
  EV_ASSIGN_OR_RETURN(c->model_type, v.get_string("model_type", "llama"));
  if (c->model_type != "llama")
    return Unsupported(v.where("model_type") + ": text model '" + c->model_type +
                       "' is not supported (only 'llama')");
  EV_ASSIGN_OR_RETURN(c->vocab_size, v.get_int32("vocab_size", c->vocab_size, 1, kMaxVocab));
  EV_ASSIGN_OR_RETURN(c->hidden_size, v.get_int32("hidden_size", c->hidden_size, 1, kMaxWidth));
  EV_ASSIGN_OR_RETURN(c->intermediate_size, v.get_int32("intermediate_size", c->intermediate_size, 1, kMaxWidth));
  EV_ASSIGN_OR_RETURN(c->num_hidden_layers, v.get_int32("num_hidden_layers", c->num_hidden_layers, 1, kMaxLayers));
  EV_ASSIGN_OR_RETURN(c->num_attention_heads,
                      v.get_int32("num_attention_heads", c->num_attention_heads, 1, kMaxHeads));
  // LlamaConfig.__post_init__: num_key_value_heads defaults to num_attention_heads, head_dim to hidden / heads.
  EV_ASSIGN_OR_RETURN(c->num_key_value_heads,
                      v.get_int32("num_key_value_heads", c->num_attention_heads, 1, kMaxHeads));
  EV_ASSIGN_OR_RETURN(c->head_dim, v.get_int32("head_dim", c->hidden_size / c->num_attention_heads, 1, kMaxWidth));
  EV_ASSIGN_OR_RETURN(c->max_position_embeddings,
                      v.get_int32("max_position_embeddings", c->max_position_embeddings, 1, kMaxPositions));
  EV_ASSIGN_OR_RETURN(c->rms_norm_eps, get_positive_float(v, "rms_norm_eps", c->rms_norm_eps));
  EV_RETURN_IF_ERROR(parse_rope(v, c));
  EV_ASSIGN_OR_RETURN(c->hidden_act, v.get_string("hidden_act", c->hidden_act));
  EV_ASSIGN_OR_RETURN(c->tie_word_embeddings, v.get_bool("tie_word_embeddings", top_tie.value_or(false)));
  EV_ASSIGN_OR_RETURN(c->attention_bias, v.get_bool("attention_bias", c->attention_bias));
  EV_ASSIGN_OR_RETURN(c->mlp_bias, v.get_bool("mlp_bias", c->mlp_bias));
  return Status::Ok();
}

std::string join_path(const std::string& dir, const char* file) {
  return (std::filesystem::path(dir) / file).string();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace

Status validate_vlm_config(const VlmConfig& c, const std::string& src) {
  const VisionConfig& v = c.vision;
  const TextConfig& t = c.text;
  const std::string vw = src + ": vision_config";
  const std::string tw = src + ": text_config";
  // Ranges first (parse_vlm_config already enforces them; configs built in code may not have been through it).
  struct R { const char* name; int value; int lo; int hi; const std::string* where; };
  const R ranges[] = {
      {"hidden_size", v.hidden_size, 1, kMaxWidth, &vw},
      {"intermediate_size", v.intermediate_size, 1, kMaxWidth, &vw},
      {"num_hidden_layers", v.num_hidden_layers, 1, kMaxLayers, &vw},
      {"num_attention_heads", v.num_attention_heads, 1, kMaxHeads, &vw},
      {"num_channels", v.num_channels, 1, 16, &vw},
      {"image_size", v.image_size, 1, kMaxImageSize, &vw},
      {"patch_size", v.patch_size, 1, kMaxImageSize, &vw},
      {"vocab_size", t.vocab_size, 1, kMaxVocab, &tw},
      {"hidden_size", t.hidden_size, 1, kMaxWidth, &tw},
      {"intermediate_size", t.intermediate_size, 1, kMaxWidth, &tw},
      {"num_hidden_layers", t.num_hidden_layers, 1, kMaxLayers, &tw},
      {"num_attention_heads", t.num_attention_heads, 1, kMaxHeads, &tw},
      {"num_key_value_heads", t.num_key_value_heads, 1, kMaxHeads, &tw},
      {"head_dim", t.head_dim, 1, kMaxWidth, &tw},
      {"max_position_embeddings", t.max_position_embeddings, 1, kMaxPositions, &tw},
  };
  for (const auto& r : ranges)
    if (r.value < r.lo || r.value > r.hi)
      return invalid(*r.where + "." + r.name, "value " + std::to_string(r.value) + " out of range [" +
                                                  std::to_string(r.lo) + ", " + std::to_string(r.hi) + "]");
  if (c.scale_factor < 1 || c.scale_factor > kMaxScaleFactor)
    return invalid(src + ": scale_factor", "value " + std::to_string(c.scale_factor) + " out of range [1, " +
                                               std::to_string(kMaxScaleFactor) + "]");
  for (float eps : {v.layer_norm_eps, t.rms_norm_eps, t.rope_theta})
    if (!(eps > 0.0f) || !std::isfinite(eps))
      return invalid(src, "layer_norm_eps, rms_norm_eps and rope_theta must be positive and finite");

  if (!v.num_attention_heads_per_layer.empty()) {
    if (static_cast<int>(v.num_attention_heads_per_layer.size()) != v.num_hidden_layers)
      return invalid(vw + ".num_attention_heads_per_layer",
                     std::to_string(v.num_attention_heads_per_layer.size()) + " entries for " +
                         std::to_string(v.num_hidden_layers) + " layers");
    if (v.head_dim_override <= 0)
      return invalid(vw + ".head_dim", "a head-pruned tower (num_attention_heads_per_layer) needs head_dim");
    for (int h : v.num_attention_heads_per_layer)
      if (h < 1 || h > v.num_attention_heads)
        return invalid(vw + ".num_attention_heads_per_layer",
                       "value " + std::to_string(h) + " out of range [1, num_attention_heads = " +
                           std::to_string(v.num_attention_heads) + "]");
  }
  if (v.head_dim_override <= 0 && v.hidden_size % v.num_attention_heads != 0)
    return invalid(vw, "hidden_size " + std::to_string(v.hidden_size) + " is not divisible by num_attention_heads " +
                           std::to_string(v.num_attention_heads));
  if (v.image_size % v.patch_size != 0)
    return invalid(vw, "image_size " + std::to_string(v.image_size) + " is not divisible by patch_size " +
                           std::to_string(v.patch_size));
  // The connector's pixel shuffle folds scale x scale neighbourhoods of the side x side patch grid into one
  // token: [side*side, D] -> [(side/s)^2, D*s^2]; side must be a multiple of s.
  const int side = v.image_size / v.patch_size;
  if (side % c.scale_factor != 0)
    return invalid(src, "the vision tower's " + std::to_string(side) + "x" + std::to_string(side) + " = " +
                            std::to_string(side * side) + " patches are not divisible by scale_factor^2 = " +
                            std::to_string(c.scale_factor * c.scale_factor) +
                            " (image_size / patch_size must be a multiple of scale_factor)");
  if (t.hidden_size % t.num_attention_heads != 0)
    return invalid(tw, "hidden_size " + std::to_string(t.hidden_size) + " is not divisible by num_attention_heads " +
                           std::to_string(t.num_attention_heads));
  if (t.num_attention_heads % t.num_key_value_heads != 0)
    return invalid(tw, "num_attention_heads " + std::to_string(t.num_attention_heads) +
                           " is not divisible by num_key_value_heads " + std::to_string(t.num_key_value_heads));
  if (c.image_token_id < 0 || c.image_token_id >= t.vocab_size)
    return invalid(src + ": image_token_id", std::to_string(c.image_token_id) + " is outside the vocabulary [0, " +
                                                 std::to_string(t.vocab_size) + ")");
  return Status::Ok();
}

Result<VlmConfig> parse_vlm_config(const json& j, const std::string& src) {
  if (!j.is_object()) return Corrupt(src + ": expected a JSON object, got " + json_type_name(j));
  JsonView root(j, src);
  VlmConfig c;

  EV_ASSIGN_OR_RETURN(c.model_type, root.get_string("model_type"));
  if (c.model_type != "idefics3" && c.model_type != "smolvlm")
    return Unsupported(root.where("model_type") + ": '" + c.model_type +
                       "' is not supported (supported: idefics3, smolvlm)");
  if (root.has("architectures")) {
    const json& a = j["architectures"];
    if (!a.is_array()) return root.error("architectures", std::string("expected array, got ") + json_type_name(a));
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_string())
        return Corrupt(root.where("architectures") + "[" + std::to_string(i) + "]: expected string, got " +
                       json_type_name(a[i]));
      c.architectures.push_back(a[i].get<std::string>());
    }
  }

  std::optional<bool> top_tie;
  if (root.has("tie_word_embeddings")) {
    EV_ASSIGN_OR_RETURN(bool tie, root.get_bool("tie_word_embeddings"));
    top_tie = tie;
  }

  EV_ASSIGN_OR_RETURN(std::optional<JsonView> vision, root.get_object_opt("vision_config"));
  if (vision) EV_RETURN_IF_ERROR(parse_vision(*vision, &c.vision));

  EV_ASSIGN_OR_RETURN(std::optional<JsonView> text, root.get_object_opt("text_config"));
  if (text) {
    EV_RETURN_IF_ERROR(parse_text(*text, top_tie, &c.text));
  } else {
    // Idefics3Config / SmolVLMConfig without text_config: LlamaConfig(rms_norm_eps=1e-5, tie_word_embeddings=False).
    c.text.rms_norm_eps = 1e-5f;
    c.text.tie_word_embeddings = false;
  }
  c.tie_word_embeddings = top_tie.value_or(false) || c.text.tie_word_embeddings;

  EV_ASSIGN_OR_RETURN(c.scale_factor, root.get_int32("scale_factor", c.scale_factor, 1, kMaxScaleFactor));
  EV_ASSIGN_OR_RETURN(c.image_token_id, root.get_int32("image_token_id", c.image_token_id, 0, INT_MAX));
  if (root.has("torch_dtype")) {
    EV_ASSIGN_OR_RETURN(c.torch_dtype, root.get_string("torch_dtype"));
  } else {
    EV_ASSIGN_OR_RETURN(c.torch_dtype, root.get_string("dtype", ""));
  }

  // Special token ids: top level first, then text_config.
  auto ids = [&](const char* key) -> Result<std::vector<int>> {
    EV_ASSIGN_OR_RETURN(std::vector<int> top, get_token_ids(root, key));
    if (!top.empty() || !text) return top;
    return get_token_ids(*text, key);
  };
  EV_ASSIGN_OR_RETURN(std::vector<int> bos, ids("bos_token_id"));
  EV_ASSIGN_OR_RETURN(std::vector<int> eos, ids("eos_token_id"));
  EV_ASSIGN_OR_RETURN(std::vector<int> pad, ids("pad_token_id"));
  c.bos_token_id = bos.empty() ? -1 : bos[0];
  c.eos_token_id = eos.empty() ? -1 : eos[0];
  c.pad_token_id = pad.empty() ? -1 : pad[0];
  c.eos_token_ids = eos;

  EV_RETURN_IF_ERROR(validate_vlm_config(c, src));
  c.raw = j;
  return c;
}

Result<VlmConfig> load_vlm_config(const std::string& model_dir) {
  const std::string path = join_path(model_dir, "config.json");
  EV_ASSIGN_OR_RETURN(json j, read_json_file(path));
  return parse_vlm_config(j, path);
}

// ---- preprocessor ----

namespace {

// image_mean / image_std: a list of 3 numbers, or one number for all channels.
Status get_channel_triplet(const JsonView& v, const char* key, bool positive, std::array<float, 3>* out) {
  if (!v.has(key)) return Status::Ok();
  const json& x = v.node()[key];
  std::vector<double> vals;
  if (x.is_number()) {
    vals.assign(3, x.get<double>());
  } else {
    EV_ASSIGN_OR_RETURN(vals, v.get_number_array(key));
    if (vals.size() == 1) vals.assign(3, vals[0]);
  }
  if (vals.size() != 3) return v.error(key, "expected 3 values (one per RGB channel), got " + std::to_string(vals.size()));
  for (size_t i = 0; i < 3; ++i) {
    const float f = static_cast<float>(vals[i]);
    if (!std::isfinite(f) || (positive && !(f > 0.0f)))
      return invalid(v.where(key), std::string(positive ? "values must be positive and finite" : "values must be finite") +
                                       ", got " + std::to_string(vals[i]));
    (*out)[i] = f;
  }
  return Status::Ok();
}

// size / max_image_size: {"longest_edge": N}. Other forms ({"height", "width"}, {"shortest_edge"}) belong to
// other image processors.
Status get_longest_edge(const JsonView& v, const char* key, int* out) {
  EV_ASSIGN_OR_RETURN(std::optional<JsonView> o, v.get_object_opt(key));
  if (!o) return Status::Ok();
  if (!o->has("longest_edge"))
    return Unsupported(o->where() + ": only {\"longest_edge\": N} is supported (Idefics3 / SmolVLM processors)");
  EV_ASSIGN_OR_RETURN(*out, o->get_int32("longest_edge", 1, kMaxImageSize * 4));
  return Status::Ok();
}

}  // namespace

Result<PreprocessorConfig> parse_preprocessor_config(const json& j, const std::string& src, const json* processor,
                                                     const std::string& processor_source) {
  if (!j.is_object()) return Corrupt(src + ": expected a JSON object, got " + json_type_name(j));
  JsonView v(j, src);
  PreprocessorConfig c;
  EV_ASSIGN_OR_RETURN(c.image_processor_type, v.get_string("image_processor_type", ""));
  EV_ASSIGN_OR_RETURN(c.do_convert_rgb, v.get_bool("do_convert_rgb", c.do_convert_rgb));
  EV_ASSIGN_OR_RETURN(c.do_resize, v.get_bool("do_resize", c.do_resize));
  EV_RETURN_IF_ERROR(get_longest_edge(v, "size", &c.size_longest_edge));
  EV_RETURN_IF_ERROR(get_longest_edge(v, "max_image_size", &c.max_image_size_longest_edge));
  EV_ASSIGN_OR_RETURN(c.do_image_splitting, v.get_bool("do_image_splitting", c.do_image_splitting));
  EV_ASSIGN_OR_RETURN(c.do_rescale, v.get_bool("do_rescale", c.do_rescale));
  EV_ASSIGN_OR_RETURN(c.rescale_factor, v.get_number("rescale_factor", c.rescale_factor));
  if (!std::isfinite(c.rescale_factor) || !(c.rescale_factor > 0.0))
    return invalid(v.where("rescale_factor"), "must be positive and finite, got " + std::to_string(c.rescale_factor));
  EV_ASSIGN_OR_RETURN(c.do_normalize, v.get_bool("do_normalize", c.do_normalize));
  EV_RETURN_IF_ERROR(get_channel_triplet(v, "image_mean", false, &c.image_mean));
  EV_RETURN_IF_ERROR(get_channel_triplet(v, "image_std", true, &c.image_std));
  EV_ASSIGN_OR_RETURN(c.resample, v.get_int32("resample", c.resample, 0, 5));
  EV_ASSIGN_OR_RETURN(c.do_pad, v.get_bool("do_pad", c.do_pad));
  if (v.has("image_seq_len")) {
    EV_ASSIGN_OR_RETURN(c.image_seq_len, v.get_int32("image_seq_len", 1, 1 << 20));
  } else if (processor) {
    if (!processor->is_object())
      return Corrupt(processor_source + ": expected a JSON object, got " + json_type_name(*processor));
    JsonView p(*processor, processor_source);
    EV_ASSIGN_OR_RETURN(c.image_seq_len, p.get_int32("image_seq_len", 0, 1, 1 << 20));
  }
  return c;
}

Result<PreprocessorConfig> load_preprocessor_config(const std::string& model_dir) {
  const std::string path = join_path(model_dir, "preprocessor_config.json");
  EV_ASSIGN_OR_RETURN(json j, read_json_file(path));
  const std::string ppath = join_path(model_dir, "processor_config.json");
  std::optional<json> proc;
  if (file_exists(ppath)) {
    EV_ASSIGN_OR_RETURN(json p, read_json_file(ppath));
    proc = std::move(p);
  }
  return parse_preprocessor_config(j, path, proc ? &*proc : nullptr, ppath);
}

// ---- tokenizer ----

namespace {

// A special token: "<s>", or an AddedToken {"content": "<s>", "lstrip": false, ...}, or null/absent ("").
Status get_token_string(const JsonView& v, const char* key, std::string* out) {
  if (!v.has(key)) return Status::Ok();
  const json& x = v.node()[key];
  if (x.is_string()) {
    *out = x.get<std::string>();
    return Status::Ok();
  }
  if (x.is_object()) {
    JsonView o(x, v.source(), v.path().empty() ? key : v.path() + "." + key);
    EV_ASSIGN_OR_RETURN(*out, o.get_string("content"));
    return Status::Ok();
  }
  return v.error(key, std::string("expected string or {\"content\": ...}, got ") + json_type_name(x));
}

Status get_opt_bool(const JsonView& v, const char* key, std::optional<bool>* out) {
  if (!v.has(key)) return Status::Ok();
  EV_ASSIGN_OR_RETURN(bool b, v.get_bool(key));
  *out = b;
  return Status::Ok();
}

Result<std::string> chat_template_from(const JsonView& v) {
  if (!v.has("chat_template")) return std::string();
  const json& x = v.node()["chat_template"];
  if (x.is_string()) return x.get<std::string>();
  if (x.is_array()) {
    // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    const json* chosen = nullptr;
    for (size_t i = 0; i < x.size(); ++i) {
      const json& e = x[i];
      const std::string where = v.where("chat_template") + "[" + std::to_string(i) + "]";
      if (!e.is_object() || !e.contains("template") || !e["template"].is_string())
        return Corrupt(where + ": expected {\"name\": ..., \"template\": string}");
      if (!chosen) chosen = &e;
      if (e.contains("name") && e["name"] == "default") {
        chosen = &e;
        break;
      }
    }
    if (!chosen) return std::string();
    return (*chosen)["template"].get<std::string>();
  }
  return v.error("chat_template", std::string("expected string or list of templates, got ") + json_type_name(x));
}

}  // namespace

Result<TokenizerConfig> parse_tokenizer_config(const json& j, const std::string& src) {
  if (!j.is_object()) return Corrupt(src + ": expected a JSON object, got " + json_type_name(j));
  JsonView v(j, src);
  TokenizerConfig c;
  EV_ASSIGN_OR_RETURN(c.tokenizer_class, v.get_string("tokenizer_class", ""));
  EV_ASSIGN_OR_RETURN(c.chat_template, chat_template_from(v));
  if (!c.chat_template.empty()) c.chat_template_source = src;
  EV_RETURN_IF_ERROR(get_token_string(v, "bos_token", &c.bos_token));
  EV_RETURN_IF_ERROR(get_token_string(v, "eos_token", &c.eos_token));
  EV_RETURN_IF_ERROR(get_token_string(v, "pad_token", &c.pad_token));
  EV_RETURN_IF_ERROR(get_token_string(v, "unk_token", &c.unk_token));
  if (v.has("additional_special_tokens")) {
    const json& a = j["additional_special_tokens"];
    if (!a.is_array()) return v.error("additional_special_tokens", std::string("expected array, got ") + json_type_name(a));
    for (size_t i = 0; i < a.size(); ++i) {
      const std::string where = v.where("additional_special_tokens") + "[" + std::to_string(i) + "]";
      if (a[i].is_string()) {
        c.additional_special_tokens.push_back(a[i].get<std::string>());
      } else if (a[i].is_object() && a[i].contains("content") && a[i]["content"].is_string()) {
        c.additional_special_tokens.push_back(a[i]["content"].get<std::string>());
      } else {
        return Corrupt(where + ": expected string or {\"content\": string}, got " + json_type_name(a[i]));
      }
    }
  }
  EV_RETURN_IF_ERROR(get_opt_bool(v, "add_bos_token", &c.add_bos_token));
  EV_RETURN_IF_ERROR(get_opt_bool(v, "add_eos_token", &c.add_eos_token));
  EV_RETURN_IF_ERROR(get_opt_bool(v, "clean_up_tokenization_spaces", &c.clean_up_tokenization_spaces));
  if (v.has("model_max_length")) {
    const json& m = j["model_max_length"];
    if (m.is_number_integer()) {
      // uint64 beyond int64 counts as unbounded, like int(1e30) which nlohmann reads as a float.
      auto n = json_to_int(m, v.where("model_max_length"));
      c.model_max_length = (n.ok() && *n > 0) ? *n : -1;
    } else if (m.is_number_float()) {
      const double d = m.get<double>();
      c.model_max_length = (d > 0 && d < 9.0e18) ? static_cast<int64_t>(d) : -1;
    } else {
      return v.error("model_max_length", std::string("expected number, got ") + json_type_name(m));
    }
  }
  return c;
}

Result<TokenizerConfig> load_tokenizer_config(const std::string& model_dir) {
  const std::string path = join_path(model_dir, "tokenizer_config.json");
  EV_ASSIGN_OR_RETURN(json j, read_json_file(path));
  EV_ASSIGN_OR_RETURN(TokenizerConfig c, parse_tokenizer_config(j, path));

  const std::string stm_path = join_path(model_dir, "special_tokens_map.json");
  if (file_exists(stm_path)) {
    EV_ASSIGN_OR_RETURN(json stm, read_json_file(stm_path));
    if (!stm.is_object()) return Corrupt(stm_path + ": expected a JSON object, got " + json_type_name(stm));
    JsonView sv(stm, stm_path);
    if (c.bos_token.empty()) EV_RETURN_IF_ERROR(get_token_string(sv, "bos_token", &c.bos_token));
    if (c.eos_token.empty()) EV_RETURN_IF_ERROR(get_token_string(sv, "eos_token", &c.eos_token));
    if (c.pad_token.empty()) EV_RETURN_IF_ERROR(get_token_string(sv, "pad_token", &c.pad_token));
    if (c.unk_token.empty()) EV_RETURN_IF_ERROR(get_token_string(sv, "unk_token", &c.unk_token));
  }

  const std::string ct_json = join_path(model_dir, "chat_template.json");
  if (file_exists(ct_json)) {
    EV_ASSIGN_OR_RETURN(json ct, read_json_file(ct_json));
    if (!ct.is_object()) return Corrupt(ct_json + ": expected a JSON object, got " + json_type_name(ct));
    EV_ASSIGN_OR_RETURN(std::string t, chat_template_from(JsonView(ct, ct_json)));
    if (!t.empty()) {
      c.chat_template = std::move(t);
      c.chat_template_source = ct_json;
    }
  }
  const std::string ct_jinja = join_path(model_dir, "chat_template.jinja");
  if (file_exists(ct_jinja)) {
    EV_ASSIGN_OR_RETURN(std::string t, read_text_file(ct_jinja, size_t{16} << 20));
    c.chat_template = std::move(t);
    c.chat_template_source = ct_jinja;
  }
  return c;
}

}  // namespace ev
