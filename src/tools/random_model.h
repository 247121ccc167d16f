// Random-weight models of real shapes, for benchmarks and tests where the real weights cannot be downloaded.
//
// write_random_model(dir, shape, seed, dtype) writes a Hugging Face model directory with
//   config.json        (model_type "idefics3", the named shape's sizes)
//   model.safetensors  (every tensor of Idefics3ForConditionalGeneration under the names transformers saves:
//                       "model.vision_model.*", "model.connector.*", "model.text_model.*", "lm_head.weight")
// and nothing else (no tokenizer / processor files: load it with EngineOptions::network_only).
//
// Shapes:
//   "smolvlm-256m"  SmolVLM-256M-Instruct (HuggingFaceTB) exactly: SigLIP base-patch16-512 vision tower (hidden 768,
//                   intermediate 3072, 12 layers, 12 heads, image 512, patch 16 -> 1024 patches), pixel-shuffle
//                   scale_factor 4 (64 image tokens per tile, connector 12288 -> 576), SmolLM2-135M text model
//                   (vocab 49280, hidden 576, intermediate 1536, 30 layers, 9 heads, 3 KV heads, head_dim 64,
//                   rope_theta 100000, rms_norm_eps 1e-5), image_token_id 49190. The published checkpoint stores a
//                   separate lm_head.weight [49280, 576] (471 tensors, 513 MB in bf16: 256.5 M parameters, which is
//                   where the "256M" comes from), so this shape does too (tie_word_embeddings false). Decode cost
//                   is the same either way: the output head streams a [49280, 576] matrix per token.
//   "smolvlm-500m"  SmolVLM-500M-Instruct: the same vision tower and connector shape, text hidden 960,
//                   intermediate 2560, 32 layers, 15 heads, 5 KV heads, head_dim 64.
//   "tiny"          a few-MB model for tests: vision 64 px, patch 8, hidden 64, 2 layers, 4 heads; scale_factor 2
//                   (16 tokens per tile); text vocab 512, hidden 64, 2 layers, 4 heads, 2 KV heads, tied head.
//
// Values: matrices, embeddings and biases ~ normal(0, 0.02) (the transformers initializer_range), norm weights 1,
// norm biases 0, so activations stay in a realistic range through all layers. The normal deviates come from an
// Irwin-Hall sum of four 16-bit uniforms of one splitmix64 draw (exactly mean 0 / std 0.02, bounded at +-3.5
// sigma): about 1 ns per value, so the 256M-parameter model fills in well under a second on two cores. Every
// 64 Ki-element chunk has its own generator seeded from (seed, tensor, chunk): the bytes depend only on the seed,
// never on the thread count.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "formats/hf_config.h"
#include "tools/report.h"

namespace ev {

// Names accepted by write_random_model, in a stable order.
std::vector<std::string> random_model_shapes();

// The config.json object of a shape (kInvalidArgument naming the known shapes for an unknown one). `dtype` sets
// torch_dtype ("bfloat16" / "float32" / "float16").
Result<nlohmann::json> random_model_config(const std::string& shape, DType dtype = DType::kBF16);

// Every tensor an Idefics3 checkpoint of config `c` holds, with its shape, in the order transformers lists them.
std::vector<std::pair<std::string, Shape>> idefics3_tensor_shapes(const VlmConfig& c);

// Writes config.json + model.safetensors of a random-weight model into `dir` (created if missing; existing files
// of those names are replaced). dtype: kF32, kBF16 or kF16. The fill runs on `pool` (nullptr: a temporary pool
// with all hardware threads).
Status write_random_model(const std::string& dir, const std::string& shape, uint64_t seed, DType dtype,
                          ThreadPool* pool = nullptr);

// Random inputs for benchmarks: pixels [n, 3, S, S] uniform in [-1, 1] (the range of normalised pixels), and
// n token ids uniform in [0, vocab) skipping `image_token` (so that no image embeddings are needed).
Tensor random_pixels(int64_t n, int S, uint64_t seed);
// n u8 RGB frames [n, S, S, 3] of uniform bytes (Engine::encode_tiles' frame input).
Tensor random_frames_u8(int64_t n, int S, uint64_t seed);
std::vector<int32_t> random_token_ids(int64_t n, int64_t vocab, int32_t image_token, uint64_t seed);

// The model a benchmark runs: the user's directory (--model), or a random-weight model of a named shape
// (--shape) generated into a temporary directory under /tmp that is removed when this object dies.
struct BenchModel {
  std::string dir;             // what Engine::load gets
  std::string label;           // the directory, or "random:<shape>"
  std::string shape;           // "" for a user directory
  double generate_s = 0;       // time spent writing the random model (0 for a user directory)
  TempDir temp;                // owns dir when the model is random and not kept

  // model_dir non-empty: use it (shape is ignored). Otherwise generate `shape`; when keep_dir is non-empty the
  // model is written there and kept instead of into a temporary directory.
  static Result<BenchModel> resolve(const std::string& model_dir, const std::string& shape, uint64_t seed,
                                    DType dtype, const std::string& keep_dir = "");
};

}  // namespace ev
