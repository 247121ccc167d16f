// The C API over ev::Engine. Nothing throws across this boundary.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "edgevlm/edgevlm.h"
#include "runtime/engine.h"

struct ev_model {
  std::unique_ptr<ev::Engine> engine;
};

namespace {
thread_local std::string g_last_error;

ev_status fail(const ev::Status& s) {
  g_last_error = s.message();
  return static_cast<ev_status>(static_cast<int>(s.code()));
}
ev_status fail(ev_status code, const std::string& msg) {
  g_last_error = msg;
  return code;
}
}  // namespace

extern "C" {

ev_model_params ev_model_default_params(void) { return {0, "auto"}; }

ev_generate_params ev_generate_default_params(void) { return {64, 0.0f, 0, 1.0f, 0, -1}; }

const char* ev_last_error(void) { return g_last_error.c_str(); }

const char* ev_status_name(ev_status s) { return ev::status_code_name(static_cast<ev::StatusCode>(s)); }

ev_status ev_model_load(const char* model_dir, const ev_model_params* params, ev_model** out) {
  if (!model_dir || !out) return fail(EV_ERR_INVALID_ARGUMENT, "ev_model_load: model_dir and out must not be NULL");
  *out = nullptr;
  try {
    ev_model_params p = params ? *params : ev_model_default_params();
    ev::EngineOptions opt;
    opt.threads = p.n_threads;
    if (p.precision && !ev::parse_precision_option(p.precision, &opt).ok())
      return fail(EV_ERR_INVALID_ARGUMENT, std::string("unknown precision '") + p.precision + "' (auto, f32, bf16)");
    auto e = ev::Engine::load(model_dir, opt);
    if (!e.ok()) return fail(e.status());
    *out = new ev_model{std::move(e).value()};
    return EV_OK;
  } catch (const std::bad_alloc&) {
    return fail(EV_ERR_OUT_OF_MEMORY, "out of memory loading the model");
  } catch (const std::exception& ex) {
    return fail(EV_ERR_INTERNAL, ex.what());
  }
}

void ev_model_free(ev_model* model) { delete model; }

ev_status ev_describe(ev_model* model, const char* const* image_paths, size_t n_images, const char* prompt,
                      const ev_generate_params* params, ev_token_callback callback, void* user_data,
                      char** out_text) {
  if (!model || !prompt || !out_text || (n_images > 0 && !image_paths))
    return fail(EV_ERR_INVALID_ARGUMENT, "ev_describe: model, prompt, out_text (and image_paths) must not be NULL");
  *out_text = nullptr;
  try {
    ev_generate_params p = params ? *params : ev_generate_default_params();
    std::vector<ev::Image> images;
    for (size_t i = 0; i < n_images; ++i) {
      auto img = ev::load_image(image_paths[i]);
      if (!img.ok()) return fail(img.status());
      images.push_back(std::move(img).value());
    }
    ev::GenerateOptions g;
    g.max_new_tokens = p.max_new_tokens;
    g.sampler.temperature = p.temperature;
    g.sampler.top_k = p.top_k;
    g.sampler.top_p = p.top_p;
    g.sampler.seed = p.seed;
    g.image_splitting = p.image_splitting;
    ev::StreamCallback cb;
    if (callback) cb = [&](const std::string& piece) { return callback(piece.c_str(), user_data) == 0; };
    auto r = model->engine->describe(images, prompt, g, cb);
    if (!r.ok()) return fail(r.status());
    *out_text = static_cast<char*>(std::malloc(r->text.size() + 1));
    if (!*out_text) return fail(EV_ERR_OUT_OF_MEMORY, "out of memory");
    std::memcpy(*out_text, r->text.c_str(), r->text.size() + 1);
    return EV_OK;
  } catch (const std::bad_alloc&) {
    return fail(EV_ERR_OUT_OF_MEMORY, "out of memory during generation");
  } catch (const std::exception& ex) {
    return fail(EV_ERR_INTERNAL, ex.what());
  }
}

void ev_string_free(char* s) { std::free(s); }

}  // extern "C"
