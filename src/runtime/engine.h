// Engine: a loaded vision-language model ready to answer prompts about images — the model (weights +
// architecture), its tokenizer, chat template and image processor, the CPU backend, and generation with a KV
// cache. The layer between the building blocks (models, text, perception) and the tools / API / CLI.
//
//   load(dir)  -> config.json, *.safetensors (mmap), tokenizer.json, tokenizer_config.json, preprocessor_config.json
//   describe() -> chat template -> image tiles -> expanded prompt -> tokens -> vision tower + connector (all tiles
//                 of all images in one batch) -> merge image embeddings -> prefill -> sample/decode loop
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "graph/backend.h"
#include "graph/executor.h"
#include "models/fast_head.h"
#include "models/quant_plan.h"
#include "models/temporal_adapter.h"
#include "models/token_prune.h"
#include "models/vlm.h"
#include "perception/image.h"
#include "perception/vlm_preprocess.h"
#include "text/chat_template.h"
#include "text/sampling.h"
#include "text/tokenizer.h"

namespace ev {

using text::ChatTemplate;
using text::SamplerParams;
using text::Tokenizer;

struct EngineOptions {
  int threads = 0;                        // 0: all hardware threads
  Precision precision = Precision::kBF16;  // the text model's Linear layers (decode streams half the bytes in bf16)
  // The vision tower and connector (compute-bound GEMMs). Unset: the faster arithmetic of this CPU
  // (gemm_precision_probe(): bf16 on AMD Zen 4, f32 on Intel Xeons without AMX).
  std::optional<Precision> vision_precision;
  bool use_reference_backend = false;     // run everything on the plain reference kernels (debugging)
  // Where the graphs run: "cpu", or "cuda" / "cuda:N" (kernels/cuda; the CPU backend runs what CUDA does not).
  // On CUDA, float Linears compute in bf16 on the tensor cores unless the precision asks for f32.
  std::string device = "cpu";
  bool cuda_graphs = true;                // replay runs as CUDA graphs (device cuda)
  bool cuda_tune_gemms = true;            // time cuBLASLt's candidate algorithms per GEMM shape (CudaOptions)
  bool cuda_fp8_vision = false;           // the vision tower's and connector's GEMMs in FP8 (CudaOptions::fp8)
  // Device cuda: decode steps run one static graph per KV cache (VlmModel::build_decode_step), which the CUDA
  // executor replays as it is: no graph building, planning or capture per token.
  bool static_decode = true;
  // Device cuda, static decode, greedy sampling without repetition penalty or token_probs: the picks are made on
  // the device (graph kArgmax feeds the next step's embedding), this many steps per graph run, so that only the
  // chosen ids come down (Engine::decode_greedy); 0: the logits come down and the host picks. On an H200 one step
  // per run measured fastest (bench_cuda --what decode: 1099 tokens/s at 1, 1041 at 8); with more, the last run of
  // an answer may compute up to greedy_chunk - 1 tokens past the stop.
  int greedy_chunk = 1;
  // > 0: the text model gets a thread pool of its own with this many threads (the vision side keeps `threads`), so
  // that a vision stage and a language stage can run at the same time without sharing a pool.
  int text_threads = 0;
  // Benchmarks of random-weight models have no tokenizer / processor files: load the network alone.
  bool network_only = false;
  // Token pruning of the vision tower (models/token_prune.h syntax: "none", "auto", "1:0.5,3:0.25,llm:0.5", ...).
  std::string prune = "none";
  // INT8 Linear layers (models/quant_plan.h): kInt8 and kMixed make a plan for the model at load; `plan` (a plan
  // JSON as parse_plan_json reads it) replaces the mode's plan. Layers the plan leaves in float use the precisions
  // above. Int8 checkpoints compute in int8 whatever this says.
  QuantMode quant = QuantMode::kNone;
  nlohmann::json plan;  // null: none
};

// Parses a --precision value into `opt`: "f32" or "bf16" for every part, "auto" for bf16 text (f32 where the CPU
// has no avx512_bf16) and the CPU's faster arithmetic for vision; "int8" and "mixed" are auto's float precisions
// plus the INT8 plan of that mode (models/quant_plan.h).
Status parse_precision_option(const std::string& s, EngineOptions* opt);

struct GenerateOptions {
  int max_new_tokens = 64;
  SamplerParams sampler;                  // temperature 0 = greedy
  bool stop_at_eos = true;
  std::vector<int32_t> extra_stop_tokens;
  int image_splitting = -1;               // -1: the preprocessor config decides; 0: --no-split; 1: split
  bool token_probs = false;               // fill GenerateResult::token_probs / token_text_end
};

struct GenerateStats {
  double load_s = 0;          // only filled by load()
  double preprocess_s = 0;
  double vision_s = 0;        // vision tower + connector, all tiles
  int n_tiles = 0;
  double prefill_s = 0;
  int prompt_tokens = 0;
  double decode_s = 0;
  int generated_tokens = 0;
  std::string stop_reason;    // "eos", "stop_token", "max_new_tokens", "callback"
};

struct GenerateResult {
  std::string text;
  std::vector<int32_t> tokens;
  // Per generated token: its probability under the model's distribution at that step (softmax of the raw logits,
  // before any sampling transform), and the length of `text` once its piece was appended (its text is
  // text[text_end[k-1], text_end[k])). Only with GenerateOptions::token_probs (runtime/semantic_state.h).
  std::vector<float> token_probs;
  std::vector<size_t> token_text_end;
  // The fast head's probabilities (one row per image, classes of fast_head()->config()), when the model has one:
  // from the image's last tile (its only tile without splitting, the global view with it).
  std::vector<std::vector<float>> fast_head;
  GenerateStats stats;
};

// Images through preprocessing, the vision tower, the fast head and the connector: what the text model needs
// (the vision stage of a stream produces these at camera rate; the language stage consumes the newest).
struct EncodedImages {
  std::vector<ImageLayout> layouts;   // per image: tile rows / cols (0, 0 when not split)
  Tensor embeds;                      // [n_tiles, tokens_per_tile, text_hidden]; undefined without images
  Tensor raw_embeds;                  // the connector's output before the temporal adapter (the next memory)
  int tokens_per_tile = 0;            // embeds.dim(1): fewer than the model's with --prune llm:R or input:S
  std::vector<std::vector<float>> fast_head;  // per image, as GenerateResult::fast_head
  int n_tiles = 0;
  double preprocess_s = 0, vision_s = 0;
};

// Streaming: called with each newly decoded piece of text; return false to stop generation.
using StreamCallback = std::function<bool(const std::string& piece)>;

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> load(const std::string& model_dir, const EngineOptions& opt = {});
  ~Engine();

  // The whole job: answer `prompt` about `images` (in order; the prompt gets one <image> per image before the
  // text, as a single user turn).
  Result<GenerateResult> describe(const std::vector<Image>& images, const std::string& prompt,
                                  const GenerateOptions& gen, const StreamCallback& stream = nullptr);

  // The same for a whole conversation in the Hugging Face chat format (roles system / user / assistant, content a
  // string or a list of {"type": "text", "text": ...} / {"type": "image"} parts); `images` fill the image parts
  // in order, and their count must match.
  Result<GenerateResult> generate(const std::vector<Image>& images, const nlohmann::json& messages,
                                  const GenerateOptions& gen, const StreamCallback& stream = nullptr);

  // The two halves of generate(): the vision side (optionally also the vision tower's output
  // [n_tiles, P, Hv]) and the text side. They run on different executors and may run concurrently on two threads
  // (with EngineOptions::text_threads > 0 they also use different thread pools).
  // With `memory` (the previous key frame's raw_embeds, same tile count) and a temporal adapter in the model, the
  // embeddings pass through the adapter.
  Result<EncodedImages> encode_images(const std::vector<Image>& images, int image_splitting,
                                      Tensor* vision_out = nullptr, const Tensor* memory = nullptr);
  Result<GenerateResult> generate_encoded(const EncodedImages& enc, const nlohmann::json& messages,
                                          const GenerateOptions& gen, const StreamCallback& stream = nullptr);
  // The same conversation about each of encs (one prompt per stream, say), decoded together: every decode step
  // runs the B sequences as one graph (VlmModel::build_decode_batch: one GEMM per projection for all of them), so
  // B answers cost about as many graph runs as one. Each sequence stops on its own (EOS, max_new_tokens); the
  // sampler settings apply to each. One result per element of encs, as generate_encoded would give it.
  Result<std::vector<GenerateResult>> generate_batch(const std::vector<EncodedImages>& encs,
                                                     const nlohmann::json& messages, const GenerateOptions& gen);

  // Building blocks (tests, benchmarks, profiling).
  // One user turn: `text` may place the images with "<image>" markers (one per image, as llama.cpp's media
  // marker); without markers the n_images images come first, then the text.
  static Result<nlohmann::json> user_turn(int n_images, const std::string& text);
  // The chat-templated prompt (with the generation prompt) of a conversation.
  Result<std::string> render_messages(const nlohmann::json& messages) const;
  Result<std::string> render_prompt(int n_images, const std::string& text) const;
  // pixels [n_tiles, 3, S, S] -> image embeddings [n_tiles, tokens_per_tile, text_hidden] (+ vision tower output).
  // pixels may also be u8 frames [n_tiles, S, S, 3] (RGB as decoded, resized to the tile but not normalised): they
  // travel as bytes (a quarter of the f32 tiles' to a GPU) and the processor's rescale and normalisation, folded
  // into the patch embedding (VlmModel::set_pixel_normalization), happen in the first GEMM.
  // With `hazards` and a fast head: its probabilities [n_tiles, C] from the same pass.
  // With `memory` and a temporal adapter: the adapted embeddings are returned, the connector's own in *raw.
  Result<Tensor> encode_tiles(const Tensor& pixels, Tensor* vision_out = nullptr, const ExecOptions& exec = {},
                              Tensor* hazards = nullptr, const Tensor* memory = nullptr, Tensor* raw = nullptr);
  const TemporalAdapter* temporal_adapter() const { return temporal_ ? &*temporal_ : nullptr; }
  // Token pruning for the following vision passes (models/token_prune.h syntax, "auto" resolved from config.json).
  // Not thread-safe against a concurrent encode: set it between passes.
  Status set_prune(const std::string& spec);
  void set_prune(const PruneSpec& spec) { prune_ = spec; }
  const PruneSpec& prune() const { return prune_; }
  // The recommended spec of config.json "edgevlm.prune.auto" ("" when the model has none).
  std::string auto_prune_spec() const;
  // Head masks for the following vision passes (edgevlm prune-heads): mask[l][h] scales head h of layer l.
  void set_head_mask(std::vector<std::vector<float>> mask) { head_mask_ = std::move(mask); }
  // Connector tokens kept per tile by the current spec (tokens_per_tile() without pruning).
  int64_t pruned_tokens_per_tile() const;
  // The model's fast head (config.json "edgevlm.fast_head"), or nullptr.
  const FastHead* fast_head() const { return fast_head_ ? &*fast_head_ : nullptr; }
  // The prompt a road-scene model was trained to describe a frame with: config.json's
  // "edgevlm.task.describe_prompt", else "Describe the scene.".
  std::string describe_prompt() const;
  // Runs the decoder on `ids` at the cache's current position, replacing the embeddings of image-token positions
  // with rows of `image_embeds` ([n, H], in order; may be undefined when ids hold no image token), and returns
  // logits of the last n_logits rows [n_logits, V]. Advances cache.size().
  Result<Tensor> forward_text(const std::vector<int32_t>& ids, const Tensor& image_embeds, KvCache& cache,
                              int64_t n_logits = 1, const ExecOptions& exec = {});
  // Greedy decoding with the picks made by the graph (static decode graphs of `chunk` steps: embed, decoder step,
  // argmax, the pick feeding the next step). Feeds `first` at position cache.size() and returns the next
  // n_tokens picks (pick k is the argmax after feeding pick k-1), advancing cache.size() by n_tokens. Runs
  // ceil(n_tokens / chunk) graphs of `chunk` steps (the cache needs room for all of them); the picks past
  // n_tokens are dropped. Any backend runs it; on CUDA the executor replays the chunk graph as it is.
  Result<std::vector<int32_t>> decode_greedy(int32_t first, KvCache& cache, int n_tokens, int chunk);
  // Image tiles of one image, as the model's processor makes them.
  Result<Tensor> preprocess(const Image& img, int image_splitting, int* rows, int* cols) const;

  const VlmModel& model() const { return *model_; }
  const VlmConfig& config() const { return cfg_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const PreprocessorConfig& preprocessor() const { return pre_; }
  const EngineOptions& options() const { return opt_; }
  ThreadPool& pool() { return *pool_; }
  Executor& executor() { return *exec_; }            // text graphs
  Executor& vision_executor() { return *vision_exec_; }  // vision tower + connector graphs
  Precision text_precision() const { return text_prec_; }
  Precision vision_precision() const { return vision_prec_; }
  // Whether the graphs run on the CUDA backend (EngineOptions::device).
  bool on_cuda() const { return on_cuda_; }
  // "bf16", "vision f32 + text bf16", "int8 (74/76 Linear) + vision f32 + text bf16": for logs and reports.
  std::string precision_label() const;
  // Every Linear of the model (weight, role, shape), in graph order: vision tower, fast head, temporal adapter,
  // connector, then the text decoder and its output head.
  const std::vector<LinearInfo>& linears() const { return linears_; }
  // The mixed-precision plan in force (empty: all float, except int8 checkpoints) and where it came from.
  const LinearPlan& linear_plan() const { return *plan_; }
  const std::string& plan_source() const { return plan_source_; }
  // Replaces the plan and repacks every weight (a few ms for the student; the quantisation tools call this once
  // per candidate plan). Not thread-safe against a concurrent inference.
  Status set_linear_plan(LinearPlan plan, const std::string& source);
  double load_seconds() const { return load_s_; }
  const std::string& model_dir() const { return dir_; }

 private:
  Engine() = default;
  Status init_backend();
  Status init_cuda_backend();
  // One static decode step (EngineOptions::static_decode): the graph is built once per KV cache and reused.
  Result<Tensor> decode_step(int32_t id, KvCache& cache);
  struct DecodeStep;
  struct DecodeBatch;
  struct DecodeChunk;
  Status prepare_weights();
  Status init_plan();
  // Fuses the model's projections for `plan` and hands it to every backend (which drop their packed weights).
  void apply_plan(LinearPlan plan, const std::string& source);
  // The graphs prepare_weights packs: one vision tile (with fast head and temporal adapter) and one decode step.
  Status build_weight_graphs(Graph& gv, Graph& gt) const;

  std::string dir_;
  EngineOptions opt_;
  VlmConfig cfg_;
  PreprocessorConfig pre_;
  // u8 frames (encode_tiles): x = u8 * px_scale_[c] + px_offset_[c], from pre_; u8_frames_: the model folded it.
  void init_u8_frames();
  Tensor normalize_u8_frames(const Tensor& frames) const;  // u8 [n, H, W, 3] -> normalised f32 [n, 3, H, W]
  VlmImageOptions image_options(int image_splitting) const;  // preprocessor_config.json as the processor's options
  // The prune spec's downscale baseline: tiles resized to input_size before the tower.
  bool downscales_input() const { return prune_.input_size > 0 && prune_.input_size < model_->tile_size(); }
  float px_scale_[3] = {1.f, 1.f, 1.f}, px_offset_[3] = {0.f, 0.f, 0.f};
  bool u8_frames_ = false;
  TokenizerConfig tok_cfg_;
  TensorStore store_;
  std::unique_ptr<VlmModel> model_;
  std::optional<FastHead> fast_head_;
  std::optional<TemporalAdapter> temporal_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;
  std::unique_ptr<ThreadPool> pool_, text_pool_;
  std::unique_ptr<Backend> backend_, vision_backend_, ref_backend_;
  std::unique_ptr<Backend> cpu_fallback_, vision_cpu_fallback_;  // device cuda: what CUDA does not run
  bool on_cuda_ = false;
  std::unique_ptr<DecodeStep> decode_;
  std::unique_ptr<DecodeChunk> decode_chunk_;  // decode_greedy's graph, kept while the cache and chunk stay
  std::unique_ptr<DecodeBatch> decode_batch_;  // generate_batch's cache and step graph, kept across calls
  std::unique_ptr<Executor> exec_, vision_exec_;
  Precision text_prec_ = Precision::kBF16, vision_prec_ = Precision::kBF16;
  std::vector<int32_t> stop_ids_;
  double load_s_ = 0;
  std::vector<LinearInfo> linears_;
  std::shared_ptr<const LinearPlan> plan_ = std::make_shared<LinearPlan>();
  std::string plan_source_ = "none";
  PruneSpec prune_;
  std::vector<std::vector<float>> head_mask_;
  uint64_t vision_calls_ = 0;  // draws of the random-drop baseline
};

}  // namespace ev
