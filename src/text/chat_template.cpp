#include "text/chat_template.h"

#include <fstream>
#include <sstream>

namespace ev::text {

namespace {

bool read_file(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return !f.bad();
}

// tokenizer_config.json special tokens are either "..." or {"content": "...", ...}.
bool token_string(const nlohmann::json& v, std::string* out) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    return true;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    *out = v["content"].get<std::string>();
    return true;
  }
  return false;
}

}  // namespace

Result<ChatTemplate> ChatTemplate::parse(const std::string& source) {
  EV_ASSIGN_OR_RETURN(jinja::Template t, jinja::Template::parse(source));
  ChatTemplate ct;
  ct.source_ = source;
  ct.tpl_ = std::move(t);
  return ct;
}

Result<ChatTemplate> ChatTemplate::load_from_model_dir(const std::string& dir) {
  std::string source;
  std::string origin;
  std::string text;
  nlohmann::json config;
  bool have_config = false;
  const std::string config_path = dir + "/tokenizer_config.json";
  if (read_file(config_path, &text)) {
    try {
      config = nlohmann::json::parse(text);
      have_config = config.is_object();
    } catch (const nlohmann::json::exception& e) {
      return Corrupt(config_path + ": invalid JSON: " + e.what());
    }
  }
  if (read_file(dir + "/chat_template.jinja", &text)) {
    source = text;
    origin = dir + "/chat_template.jinja";
  } else if (read_file(dir + "/chat_template.json", &text)) {
    origin = dir + "/chat_template.json";
    try {
      const auto j = nlohmann::json::parse(text);
      if (!j.is_object() || !j.contains("chat_template") || !j["chat_template"].is_string())
        return Corrupt(origin + ": field 'chat_template' must be a string");
      source = j["chat_template"].get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      return Corrupt(origin + ": invalid JSON: " + e.what());
    }
  } else if (have_config && config.contains("chat_template")) {
    origin = config_path;
    const auto& ct = config["chat_template"];
    if (ct.is_string()) {
      source = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& e : ct)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
          source = e["template"].get<std::string>();
      if (source.empty()) return Corrupt(origin + ": chat_template list has no 'default' entry");
    } else {
      return Corrupt(origin + ": field 'chat_template' must be a string or a list");
    }
  } else {
    return NotFound(dir + ": no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)");
  }
  auto parsed = parse(source);
  if (!parsed.ok()) return parsed.status().with_context(origin);
  ChatTemplate out = std::move(parsed).value();
  if (have_config) {
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      std::string v;
      if (config.contains(key) && token_string(config[key], &v)) out.set_default_var(key, v);
    }
  }
  return out;
}

void ChatTemplate::set_default_var(const std::string& name, const std::string& value) {
  for (auto& [k, v] : defaults_)
    if (k == name) {
      v = value;
      return;
    }
  defaults_.emplace_back(name, value);
}

Result<std::string> ChatTemplate::render_values(const jinja::Value& messages, bool add_generation_prompt,
                                                const jinja::Value& extra_vars) const {
  if (!messages.is_list()) return InvalidArgument("chat template: messages must be a JSON array");
  if (!extra_vars.is_undefined() && !extra_vars.is_none() && !extra_vars.is_dict())
    return InvalidArgument("chat template: extra variables must be a JSON object");
  auto globals = std::make_shared<jinja::Dict>();
  for (const auto& [k, v] : defaults_) globals->set(k, jinja::Value::string(v));
  globals->set("messages", messages);
  globals->set("tools", jinja::Value::none());
  globals->set("documents", jinja::Value::none());
  globals->set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  if (extra_vars.is_dict())
    for (const auto& [k, v] : extra_vars.dict_ptr()->entries) globals->set(k, v);
  return tpl_.render(jinja::Value::dict(globals));
}

Result<std::string> ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                         const nlohmann::json& extra_vars) const {
  return render_values(jinja::Value::from_json(messages), add_generation_prompt, jinja::Value::from_json(extra_vars));
}

Result<std::string> ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                         const nlohmann::ordered_json& extra_vars) const {
  return render_values(jinja::Value::from_json(messages), add_generation_prompt, jinja::Value::from_json(extra_vars));
}

}  // namespace ev::text
