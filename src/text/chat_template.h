// Hugging Face chat templates: renders `messages` (the HF chat format, content a string or a list of
// {"type": "text", "text": ...} / {"type": "image"} parts) into the prompt text the model was trained on, as
// transformers' apply_chat_template does (render_jinja_template: messages, tools=None, documents=None,
// add_generation_prompt, the special-token strings, and any extra variables). The Jinja subset and its
// environment (trim_blocks, lstrip_blocks, loop controls, json.dumps-style tojson, raise_exception,
// strftime_now) are described in text/jinja.h.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "text/jinja.h"

namespace ev::text {

class ChatTemplate {
 public:
  ChatTemplate() = default;

  // Parses the template source. Syntax errors and unsupported constructs name the template line and column.
  static Result<ChatTemplate> parse(const std::string& source);

  // Finds the template of a Hugging Face model directory: chat_template.jinja, else chat_template.json
  // {"chat_template": ...}, else tokenizer_config.json "chat_template" (a string, or a list of {name, template}
  // from which "default" is taken). Also picks up bos_token / eos_token / unk_token / pad_token from
  // tokenizer_config.json (strings or {"content": ...} objects) as default render variables.
  static Result<ChatTemplate> load_from_model_dir(const std::string& dir);

  // Renders messages (a JSON array). extra_vars (a JSON object, may be null) adds or overrides variables such
  // as bos_token, eos_token, tools, or template switches (enable_thinking ...). Errors (including
  // raise_exception from the template) carry the template line and column.
  Result<std::string> render(const nlohmann::json& messages, bool add_generation_prompt,
                             const nlohmann::json& extra_vars = nlohmann::json::object()) const;
  // Same with insertion-ordered JSON, for templates that print dicts (tojson of tool schemas) in key order.
  Result<std::string> render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                             const nlohmann::ordered_json& extra_vars = nlohmann::ordered_json::object()) const;

  const std::string& source() const { return source_; }
  // Variables added to every render (extra_vars override them).
  void set_default_var(const std::string& name, const std::string& value);

 private:
  Result<std::string> render_values(const jinja::Value& messages, bool add_generation_prompt,
                                    const jinja::Value& extra_vars) const;

  std::string source_;
  jinja::Template tpl_;
  std::vector<std::pair<std::string, std::string>> defaults_;
};

}  // namespace ev::text
