/* edgevlm C API: load a vision-language model from a Hugging Face directory and answer prompts about images.
 *
 * Conventions (after llama.h): opaque handles, *_default_params() for every params struct, every fallible call
 * returns an ev_status (EV_OK = 0) and leaves a human-readable message in ev_last_error() (thread-local).
 * No call aborts or throws on bad input. */
#ifndef EDGEVLM_H
#define EDGEVLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ev_status {
  EV_OK = 0,
  EV_ERR_INVALID_ARGUMENT = 1, /* an argument is out of range or malformed */
  EV_ERR_NOT_FOUND = 2,        /* a file or tensor does not exist */
  EV_ERR_IO = 3,               /* the OS refused a read or mmap */
  EV_ERR_CORRUPT = 4,          /* a file is malformed (safetensors header, JSON, image data) */
  EV_ERR_UNSUPPORTED = 5,      /* valid input this build cannot handle (architecture, dtype) */
  EV_ERR_SHAPE_MISMATCH = 6,   /* a tensor disagrees with the config */
  EV_ERR_OUT_OF_MEMORY = 7,
  EV_ERR_INTERNAL = 8,
  EV_ERR_CANCELLED = 9
} ev_status;

typedef struct ev_model ev_model;

typedef struct ev_model_params {
  int n_threads;         /* 0: all hardware threads */
  const char* precision; /* "auto" (default: bf16 text, the CPU's faster arithmetic for vision), "bf16" or "f32" */
} ev_model_params;

typedef struct ev_generate_params {
  int max_new_tokens;  /* default 64 */
  float temperature;   /* 0 (default): greedy */
  int top_k;           /* 0: off */
  float top_p;         /* 1: off */
  uint64_t seed;
  int image_splitting; /* -1 (default): as the model's processor config says; 0: one tile per image; 1: split */
} ev_generate_params;

/* Returns non-zero to stop generation. `piece` is UTF-8, valid until the callback returns. */
typedef int (*ev_token_callback)(const char* piece, void* user_data);

ev_model_params ev_model_default_params(void);
ev_generate_params ev_generate_default_params(void);

/* Loads the model in `model_dir`. On success *out holds a handle to free with ev_model_free. */
ev_status ev_model_load(const char* model_dir, const ev_model_params* params, ev_model** out);
void ev_model_free(ev_model* model);

/* Answers `prompt` about the images (JPEG/PNG files, in order). The answer is returned in *out_text (free with
 * ev_string_free); `callback` (may be NULL) receives it piece by piece as it is generated. */
ev_status ev_describe(ev_model* model, const char* const* image_paths, size_t n_images, const char* prompt,
                      const ev_generate_params* params, ev_token_callback callback, void* user_data,
                      char** out_text);

void ev_string_free(char* s);
/* The message of the last failed call on this thread ("" if none). */
const char* ev_last_error(void);
const char* ev_status_name(ev_status s);

#ifdef __cplusplus
}
#endif

#endif /* EDGEVLM_H */
