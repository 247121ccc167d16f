#include "runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <cctype>
#include <cstring>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/log.h"
#include "formats/gguf_import.h"
#include "kernels/cpu/ceilings.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/ref/ref_ops.h"
#include "perception/vlm_preprocess.h"

namespace ev {
using text::Sampler;
using text::StreamDecoder;


Result<std::unique_ptr<Engine>> Engine::load(const std::string& model_dir, const EngineOptions& opt) {
  const double t0 = now_s();
  std::unique_ptr<Engine> e(new Engine());
  e->dir_ = model_dir;
  e->opt_ = opt;
  // A llama.cpp GGUF pair (text + mmproj) arrives as the JSON objects of the HF files and a store of HF-named
  // tensors (formats/gguf_import.h); everything below is the same for both layouts.
  std::optional<ImportedModel> gguf;
  if (is_gguf_model_path(model_dir)) {
    EV_ASSIGN_OR_RETURN(gguf, import_gguf_model(model_dir));
    EV_ASSIGN_OR_RETURN(e->cfg_, parse_vlm_config(gguf->config, gguf->source + " (config)"));
    e->store_ = gguf->store;
  } else {
    EV_ASSIGN_OR_RETURN(e->cfg_, load_vlm_config(model_dir));
    EV_ASSIGN_OR_RETURN(e->store_, TensorStore::open_dir(model_dir));
  }
  EV_ASSIGN_OR_RETURN(e->model_, create_vlm(e->cfg_, e->store_));
  EV_ASSIGN_OR_RETURN(std::optional<FastHeadConfig> fh,
                      parse_fast_head_config(e->cfg_.raw, model_dir + "/config.json"));
  if (fh) {
    EV_ASSIGN_OR_RETURN(e->fast_head_, FastHead::load(e->store_, *fh, e->cfg_.vision.hidden_size));
  }
  EV_ASSIGN_OR_RETURN(std::optional<TemporalAdapterConfig> ta,
                      parse_temporal_adapter_config(e->cfg_.raw, model_dir + "/config.json"));
  if (ta) {
    EV_ASSIGN_OR_RETURN(e->temporal_, TemporalAdapter::load(e->store_, *ta, e->cfg_.text.hidden_size));
  }
  EV_RETURN_IF_ERROR(e->init_backend());
  EV_RETURN_IF_ERROR(e->init_plan().with_context(model_dir));
  EV_RETURN_IF_ERROR(e->prepare_weights());
  EV_RETURN_IF_ERROR(e->set_prune(opt.prune).with_context(model_dir));
  if (opt.network_only) {
    e->init_u8_frames();  // the processor's default normalisation
    e->load_s_ = now_s() - t0;
    return e;
  }
  if (gguf) {
    EV_ASSIGN_OR_RETURN(e->pre_, parse_preprocessor_config(gguf->preprocessor, gguf->source + " (preprocessor)"));
    EV_ASSIGN_OR_RETURN(e->tok_cfg_, parse_tokenizer_config(gguf->tokenizer_config, gguf->source + " (tokenizer)"));
  } else {
    EV_ASSIGN_OR_RETURN(e->pre_, load_preprocessor_config(model_dir));
    EV_ASSIGN_OR_RETURN(e->tok_cfg_, load_tokenizer_config(model_dir));
  }

  const std::string tok_path = gguf ? gguf->source + " (tokenizer)" : model_dir + "/tokenizer.json";
  EV_ASSIGN_OR_RETURN(Tokenizer tok, gguf ? Tokenizer::from_json(gguf->tokenizer, tok_path) : Tokenizer::load(tok_path));
  e->tokenizer_ = std::make_unique<Tokenizer>(std::move(tok));
  if (e->tokenizer_->vocab_size() > e->cfg_.text.vocab_size)
    return ShapeMismatch(tok_path + ": tokenizer has " + std::to_string(e->tokenizer_->vocab_size()) +
                         " tokens but config.json text_config.vocab_size is " + std::to_string(e->cfg_.text.vocab_size));
  if (!e->tok_cfg_.chat_template.empty()) {
    auto ct = ChatTemplate::parse(e->tok_cfg_.chat_template);
    if (!ct.ok()) return ct.status().with_context(model_dir + ": chat template (" + e->tok_cfg_.chat_template_source + ")");
    e->chat_ = std::make_unique<ChatTemplate>(std::move(ct).value());
  }
  if (e->pre_.image_seq_len != 0 && e->pre_.image_seq_len != e->model_->tokens_per_tile())
    return ShapeMismatch(model_dir + ": image_seq_len " + std::to_string(e->pre_.image_seq_len) +
                         " in the processor config disagrees with the model's " +
                         std::to_string(e->model_->tokens_per_tile()) + " tokens per tile");
  if (e->pre_.max_image_size_longest_edge != e->model_->tile_size())
    return ShapeMismatch(model_dir + "/preprocessor_config.json: max_image_size.longest_edge " +
                         std::to_string(e->pre_.max_image_size_longest_edge) + " differs from vision image_size " +
                         std::to_string(e->model_->tile_size()));

  // Stop tokens: eos ids from config.json, the tokenizer config's eos token, and <end_of_utterance>.
  auto add_stop = [&](int32_t id) {
    if (id >= 0 && std::find(e->stop_ids_.begin(), e->stop_ids_.end(), id) == e->stop_ids_.end())
      e->stop_ids_.push_back(id);
  };
  for (int id : e->cfg_.eos_token_ids) add_stop(id);
  add_stop(e->cfg_.eos_token_id);
  if (!e->tok_cfg_.eos_token.empty()) add_stop(e->tokenizer_->token_to_id(e->tok_cfg_.eos_token));
  add_stop(e->tokenizer_->token_to_id("<end_of_utterance>"));

  e->init_u8_frames();
  e->load_s_ = now_s() - t0;
  return e;
}

void Engine::init_u8_frames() {
  for (int c = 0; c < 3; ++c) {
    const double r = pre_.do_rescale ? pre_.rescale_factor : 1.0;
    const double sd = pre_.do_normalize ? static_cast<double>(pre_.image_std[static_cast<size_t>(c)]) : 1.0;
    const double m = pre_.do_normalize ? static_cast<double>(pre_.image_mean[static_cast<size_t>(c)]) : 0.0;
    px_scale_[c] = static_cast<float>(r / sd);
    px_offset_[c] = static_cast<float>(-m / sd);
  }
  u8_frames_ = model_->set_pixel_normalization(px_scale_, px_offset_);
}

Status Engine::build_weight_graphs(Graph& gv, Graph& gt) const {
  const int S = model_->tile_size();
  TensorId vout = -1;
  model_->build_vision(gv, gv.input("pixels", Tensor::empty(DType::kF32, Shape{1, 3, S, S})), &vout);
  if (fast_head_) fast_head_->build(gv, vout);
  if (temporal_) {
    const int64_t T = model_->tokens_per_tile(), H = model_->text_hidden();
    temporal_->build(gv, gv.input("memory", Tensor::empty(DType::kF32, Shape{1, T, H})),
                     gv.input("memory2", Tensor::empty(DType::kF32, Shape{1, T, H})));
  }
  EV_RETURN_IF_ERROR(gv.status());
  KvCache cache = model_->make_cache(1);
  TensorId x = model_->build_embed(gt, gt.input("ids", Tensor::empty(DType::kI32, Shape{1})));
  model_->build_decoder(gt, x, 1, cache, 1);
  return gt.status();
}

// Packs every Linear weight for the backend now (oneDNN's blocked layout, bf16 conversion, int8 quantisation), so
// that load time includes it and the first inference does not pay it.
Status Engine::prepare_weights() {
  Graph gv, gt;
  EV_RETURN_IF_ERROR(build_weight_graphs(gv, gt));
  EV_RETURN_IF_ERROR(vision_exec_->backend()->prepare_weights(gv));
  return exec_->backend()->prepare_weights(gt);
}

// Lists the model's Linears and makes the plan of the quantisation mode (before prepare_weights packs them).
Status Engine::init_plan() {
  model_->select_fused_linears(false, nullptr);  // list (and let plans name) the checkpoint's own Linears
  Graph gv, gt;
  EV_RETURN_IF_ERROR(build_weight_graphs(gv, gt));
  linears_.clear();
  for (const Graph* g : {&gv, &gt})
    for (const Node& n : g->nodes) {
      if (n.op != OpKind::kLinear || n.inputs.size() < 2) continue;
      const Node& w = g->node(n.inputs[1]);
      if (w.op != OpKind::kInput || !w.is_weight) continue;
      LinearInfo li;
      li.node = n.name;
      li.weight = w.bound.name();
      li.role = classify_linear(li.weight, n.name, &li.layer);
      li.module = li.role == LinearRole::kOutputHead ? "lm_head"
                  : li.weight.size() > 7 && li.weight.compare(li.weight.size() - 7, 7, ".weight") == 0
                      ? li.weight.substr(0, li.weight.size() - 7)
                      : li.weight;
      li.n = w.out_shape[0];
      li.k = w.out_shape.cols();
      li.dtype = w.bound.dtype();
      bool seen = false;
      for (const LinearInfo& o : linears_) seen = seen || o.weight == li.weight;
      if (!seen && !li.weight.empty()) linears_.push_back(std::move(li));
    }
  LinearPlan plan;
  std::string source;
  if (!opt_.plan.is_null()) {
    EV_ASSIGN_OR_RETURN(plan, parse_plan_json(opt_.plan, linears_, "plan"));
    source = "plan given";
  } else {
    EV_ASSIGN_OR_RETURN(plan, plan_for_mode(opt_.quant, linears_, cfg_.raw, &source));
  }
  apply_plan(std::move(plan), source);
  return Status::Ok();
}

void Engine::apply_plan(LinearPlan plan, const std::string& source) {
  model_->select_fused_linears(true, &plan);  // fuse q/k/v, gate/up where the plan treats them alike
  plan_ = std::make_shared<const LinearPlan>(std::move(plan));
  plan_source_ = source;
  if (backend_) backend_->set_linear_plan(plan_);
  if (vision_backend_) vision_backend_->set_linear_plan(plan_);
  if (cpu_fallback_) cpu_fallback_->set_linear_plan(plan_);
  if (vision_cpu_fallback_) vision_cpu_fallback_->set_linear_plan(plan_);
  ref_backend_->set_linear_plan(plan_);
}

Status Engine::set_linear_plan(LinearPlan plan, const std::string& source) {
  apply_plan(std::move(plan), source);
  return prepare_weights();
}

Status parse_precision_option(const std::string& s, EngineOptions* opt) {
  opt->quant = QuantMode::kNone;
  if (s == "auto" || s == "int8" || s == "mixed") {
    opt->precision = cpu_features().has_avx512_bf16() ? Precision::kBF16 : Precision::kF32;
    opt->vision_precision.reset();
    if (s == "int8") opt->quant = QuantMode::kInt8;
    if (s == "mixed") opt->quant = QuantMode::kMixed;
    return Status::Ok();
  }
  Precision p;
  if (!precision_from_string(s, &p) || p == Precision::kInt8)
    return InvalidArgument("precision '" + s + "' is not one of auto, f32, bf16, int8, mixed");
  opt->precision = p;
  opt->vision_precision = p;
  return Status::Ok();
}

std::string Engine::auto_prune_spec() const {
  const nlohmann::json& raw = cfg_.raw;
  if (raw.contains("edgevlm") && raw["edgevlm"].is_object() && raw["edgevlm"].contains("prune")) {
    const auto& p = raw["edgevlm"]["prune"];
    if (p.is_object() && p.contains("auto") && p["auto"].is_string()) return p["auto"].get<std::string>();
  }
  return "";
}

Status Engine::set_prune(const std::string& spec) {
  EV_ASSIGN_OR_RETURN(prune_, resolve_prune_spec(spec, cfg_, auto_prune_spec()));
  return Status::Ok();
}

int64_t Engine::pruned_tokens_per_tile() const {
  int64_t t = model_->tokens_per_tile();
  if (prune_.input_size > 0) {
    const int64_t side = prune_.input_size / cfg_.vision.patch_size / cfg_.scale_factor;
    t = side * side;
  }
  return prune_.llm_keep < 1.f ? prune_keep_count(prune_.llm_keep, t) : t;
}

namespace {
// Area resampling of f32 planes [n, C, S, S] -> [n, C, s, s] (s < S): each output pixel is the mean of the input
// area it covers, with fractional edge weights (the downscale baseline of --prune input:S).
Tensor downscale_tiles(const Tensor& px, int s) {
  const int64_t n = px.dim(0), C = px.dim(1), S = px.dim(2);
  Tensor out = Tensor::empty(DType::kF32, Shape{n, C, s, s});
  // Separable weights: output o covers input [o*S/s, (o+1)*S/s).
  std::vector<std::vector<std::pair<int64_t, float>>> w(static_cast<size_t>(s));
  const double r = static_cast<double>(S) / s;
  for (int o = 0; o < s; ++o) {
    const double a = o * r, b = (o + 1) * r;
    for (auto i = static_cast<int64_t>(a); i < S && static_cast<double>(i) < b; ++i) {
      const double cov = std::min<double>(b, static_cast<double>(i + 1)) - std::max<double>(a, static_cast<double>(i));
      if (cov > 0) w[static_cast<size_t>(o)].push_back({i, static_cast<float>(cov / r)});
    }
  }
  std::vector<float> rowbuf(static_cast<size_t>(S) * s);
  for (int64_t p = 0; p < n * C; ++p) {
    const float* src = px.data_as<const float>() + p * S * S;
    float* dst = out.data_as<float>() + p * s * s;
    for (int64_t y = 0; y < S; ++y)  // horizontal pass: [S, S] -> [S, s]
      for (int o = 0; o < s; ++o) {
        float acc = 0.f;
        for (const auto& [i, wt] : w[static_cast<size_t>(o)]) acc += wt * src[y * S + i];
        rowbuf[static_cast<size_t>(y * s + o)] = acc;
      }
    for (int o = 0; o < s; ++o)  // vertical pass: [S, s] -> [s, s]
      for (int x = 0; x < s; ++x) {
        float acc = 0.f;
        for (const auto& [i, wt] : w[static_cast<size_t>(o)]) acc += wt * rowbuf[static_cast<size_t>(i * s + x)];
        dst[o * s + x] = acc;
      }
  }
  return out;
}

// The connector tokens each tile keeps before the language model: the k whose s x s vision tokens received the
// most attention (importance [B, N]); ties by lower index; ascending.
std::vector<int32_t> select_connector_tokens(const Tensor& importance, int scale, int64_t k) {
  const int64_t B = importance.dim(0), N = importance.dim(1);
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(N))));
  const int64_t cs = side / scale, T = cs * cs;
  Tensor score = Tensor::empty(DType::kF32, Shape{B, T});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < cs; ++i)
      for (int64_t j = 0; j < cs; ++j) {
        // ref::pixel_shuffle: connector token i*cs + j merges vision tokens (i*s + ri)*side + j*s + rj.
        double acc = 0.0;
        for (int ri = 0; ri < scale; ++ri)
          for (int rj = 0; rj < scale; ++rj)
            acc += importance.data_as<const float>()[b * N + (i * scale + ri) * side + j * scale + rj];
        score.data_as<float>()[b * T + i * cs + j] = static_cast<float>(acc);
      }
  std::vector<int32_t> idx(static_cast<size_t>(B * k));
  ref::top_k_rows(score.data_as<const float>(), B, T, k, idx.data());
  return idx;
}
}  // namespace

std::string Engine::describe_prompt() const {
  const nlohmann::json& raw = cfg_.raw;
  if (raw.contains("edgevlm") && raw["edgevlm"].is_object() && raw["edgevlm"].contains("task")) {
    const auto& t = raw["edgevlm"]["task"];
    if (t.is_object() && t.contains("describe_prompt") && t["describe_prompt"].is_string())
      return t["describe_prompt"].get<std::string>();
  }
  return "Describe the scene.";
}

std::string Engine::precision_label() const {
  std::string f = text_prec_ == vision_prec_
                      ? std::string(precision_name(text_prec_))
                      : std::string("vision ") + precision_name(vision_prec_) + " + text " + precision_name(text_prec_);
  const PlanSummary ps = summarize_plan(*plan_, linears_);
  if (ps.int8_linears == 0) return f;
  return "int8 (" + std::to_string(ps.int8_linears) + "/" + std::to_string(ps.linears) + " Linear) + " + f;
}

Status Engine::init_backend() {
  pool_ = std::make_unique<ThreadPool>(opt_.threads);
  ref_backend_ = make_ref_backend();
  text_prec_ = opt_.precision;
  vision_prec_ = opt_.vision_precision ? *opt_.vision_precision
                                       : (gemm_precision_probe().bf16_faster ? Precision::kBF16 : Precision::kF32);
  if (opt_.use_reference_backend) {
    exec_ = std::make_unique<Executor>(ref_backend_.get(), ref_backend_.get());
    vision_exec_ = std::make_unique<Executor>(ref_backend_.get(), ref_backend_.get());
    return Status::Ok();
  }
  if (opt_.device.rfind("cuda", 0) == 0) return init_cuda_backend();
  if (opt_.device != "cpu") return InvalidArgument("unknown device '" + opt_.device + "' (cpu, cuda or cuda:N)");
  ThreadPool* tpool = pool_.get();
  if (opt_.text_threads > 0) {
    text_pool_ = std::make_unique<ThreadPool>(opt_.text_threads);
    tpool = text_pool_.get();
  }
  backend_ = make_cpu_backend(tpool, text_prec_);
  exec_ = std::make_unique<Executor>(backend_.get(), ref_backend_.get());
  Backend* vbe = backend_.get();
  if (vision_prec_ != text_prec_ || tpool != pool_.get()) {
    vision_backend_ = make_cpu_backend(pool_.get(), vision_prec_);
    vbe = vision_backend_.get();
  }
  vision_exec_ = std::make_unique<Executor>(vbe, ref_backend_.get());
  return Status::Ok();
}

// Device cuda: one CUDA backend per float precision (bf16 unless f32 is asked for), one executor (stream) each
// for the vision and the text graphs, the CPU backend as their fallback.
Status Engine::init_cuda_backend() {
  int dev = 0;
  if (opt_.device.size() > 4) {
    if (opt_.device[4] != ':' || opt_.device.size() == 5 ||
        opt_.device.find_first_not_of("0123456789", 5) != std::string::npos)
      return InvalidArgument("bad device '" + opt_.device + "' (cuda or cuda:N)");
    dev = std::stoi(opt_.device.substr(5));
  }
  // The CUDA default is bf16 for both parts; an explicit f32 stays f32.
  text_prec_ = opt_.precision == Precision::kF32 ? Precision::kF32 : Precision::kBF16;
  vision_prec_ = opt_.vision_precision && *opt_.vision_precision == Precision::kF32 ? Precision::kF32 : Precision::kBF16;
  CudaOptions co;
  co.device = dev;
  co.graphs = opt_.cuda_graphs;
  co.tune_gemms = opt_.cuda_tune_gemms;
  co.precision = text_prec_;
  EV_ASSIGN_OR_RETURN(backend_, make_cuda_backend(co));
  Backend* vbe = backend_.get();
  if (vision_prec_ != text_prec_ || opt_.cuda_fp8_vision) {
    co.precision = vision_prec_;
    co.fp8 = opt_.cuda_fp8_vision;
    EV_ASSIGN_OR_RETURN(vision_backend_, make_cuda_backend(co));
    vbe = vision_backend_.get();
  }
  cpu_fallback_ = make_cpu_backend(pool_.get(), text_prec_);
  vision_cpu_fallback_ = make_cpu_backend(pool_.get(), vision_prec_);
  EV_ASSIGN_OR_RETURN(exec_, make_cuda_executor(backend_.get(), cpu_fallback_.get()));
  EV_ASSIGN_OR_RETURN(vision_exec_, make_cuda_executor(vbe, vision_cpu_fallback_.get()));
  on_cuda_ = true;
  return Status::Ok();
}

Result<nlohmann::json> Engine::user_turn(int n_images, const std::string& text) {
  static const std::string kMarker = "<image>";
  if (n_images < 0) return InvalidArgument("negative image count");
  nlohmann::json content = nlohmann::json::array();
  int markers = 0;
  for (size_t p = text.find(kMarker); p != std::string::npos; p = text.find(kMarker, p + 1)) ++markers;
  if (markers == 0) {
    for (int i = 0; i < n_images; ++i) content.push_back({{"type", "image"}});
    content.push_back({{"type", "text"}, {"text", text}});
  } else {
    if (markers != n_images)
      return InvalidArgument("the prompt has " + std::to_string(markers) + " <image> markers but " +
                             std::to_string(n_images) + " images were given");
    size_t pos = 0;
    for (size_t p = text.find(kMarker); p != std::string::npos; p = text.find(kMarker, pos)) {
      if (p > pos) content.push_back({{"type", "text"}, {"text", text.substr(pos, p - pos)}});
      content.push_back({{"type", "image"}});
      pos = p + kMarker.size();
    }
    if (pos < text.size()) content.push_back({{"type", "text"}, {"text", text.substr(pos)}});
  }
  return nlohmann::json::array({{{"role", "user"}, {"content", content}}});
}

Result<std::string> Engine::render_messages(const nlohmann::json& messages) const {
  if (!messages.is_array()) return InvalidArgument("messages must be a JSON array of {role, content}");
  if (!chat_) {
    // No template: the plain Idefics3 layout ("User:<image>text<end_of_utterance>\nAssistant:").
    std::string s;
    for (const auto& m : messages) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        return InvalidArgument("each message needs a string \"role\"");
      std::string role = m["role"].get<std::string>();
      if (!role.empty()) role[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(role[0])));
      s += role + ":";
      const auto& c = m.value("content", nlohmann::json());
      if (c.is_string()) {
        s += c.get<std::string>();
      } else if (c.is_array()) {
        for (const auto& part : c)
          s += part.value("type", "") == "image" ? std::string("<image>") : part.value("text", std::string());
      }
      s += "<end_of_utterance>\n";
    }
    return s + "Assistant:";
  }
  nlohmann::json extra = {{"bos_token", tok_cfg_.bos_token}, {"eos_token", tok_cfg_.eos_token}};
  return chat_->render(messages, /*add_generation_prompt=*/true, extra);
}

Result<std::string> Engine::render_prompt(int n_images, const std::string& text) const {
  EV_ASSIGN_OR_RETURN(nlohmann::json messages, user_turn(n_images, text));
  return render_messages(messages);
}

VlmImageOptions Engine::image_options(int image_splitting) const {
  VlmImageOptions o;
  o.do_resize = pre_.do_resize;
  o.longest_edge = pre_.size_longest_edge;
  o.max_image_size = pre_.max_image_size_longest_edge;
  o.do_image_splitting = image_splitting < 0 ? pre_.do_image_splitting : image_splitting != 0;
  o.do_rescale = pre_.do_rescale;
  o.rescale_factor = static_cast<float>(pre_.rescale_factor);
  o.do_normalize = pre_.do_normalize;
  for (int c = 0; c < 3; ++c) {
    o.mean[c] = pre_.image_mean[static_cast<size_t>(c)];
    o.std[c] = pre_.image_std[static_cast<size_t>(c)];
  }
  o.resample = pre_.resample;
  o.image_seq_len = model_->tokens_per_tile();
  return o;
}

Result<Tensor> Engine::preprocess(const Image& img, int image_splitting, int* rows, int* cols) const {
  EV_ASSIGN_OR_RETURN(PreprocessedImage p, preprocess_image(img, image_options(image_splitting)));
  if (rows) *rows = p.rows;
  if (cols) *cols = p.cols;
  return p.pixels;
}

Tensor Engine::normalize_u8_frames(const Tensor& frames) const {
  const int64_t n = frames.dim(0), H = frames.dim(1), W = frames.dim(2);
  Tensor t = Tensor::empty(DType::kF32, Shape{n, 3, H, W});
  const uint8_t* src = frames.data_as<const uint8_t>();
  float* dst = t.data_as<float>();
  for (int64_t b = 0; b < n; ++b)
    for (int c = 0; c < 3; ++c)
      for (int64_t i = 0; i < H * W; ++i)
        dst[(b * 3 + c) * H * W + i] = static_cast<float>(src[(b * H * W + i) * 3 + c]) * px_scale_[c] + px_offset_[c];
  return t;
}

Result<Tensor> Engine::encode_tiles(const Tensor& pixels, Tensor* vision_out, const ExecOptions& exec,
                                    Tensor* hazards, const Tensor* memory, Tensor* raw) {
  const int S = model_->tile_size();
  const std::string ss = std::to_string(S);
  const bool u8 = pixels.dtype() == DType::kU8;
  if (u8 && (pixels.ndim() != 4 || pixels.dim(1) != S || pixels.dim(2) != S || pixels.dim(3) != 3))
    return ShapeMismatch("u8 frames must be [n, " + ss + ", " + ss + ", 3] (RGB, row-major), got " +
                         pixels.shape().to_string());
  if (u8 && !u8_frames_) return Unsupported(cfg_.model_type + ": this architecture takes f32 pixel tiles only");
  if (!u8 && (pixels.ndim() != 4 || pixels.dim(1) != 3 || pixels.dim(2) != S || pixels.dim(3) != S ||
              pixels.dtype() != DType::kF32))
    return ShapeMismatch("pixel tiles must be f32 [n, 3, " + ss + ", " + ss + "] or u8 frames [n, " + ss + ", " + ss +
                         ", 3], got " + std::string(dtype_name(pixels.dtype())) + " " + pixels.shape().to_string());
  Graph g;
  const bool downscale = downscales_input();
  TensorId px = -1;
  if (downscale)  // the downscale baseline resizes normalised f32 tiles
    px = g.input("pixels", downscale_tiles(u8 ? normalize_u8_frames(pixels) : pixels, prune_.input_size));
  else
    px = g.input("pixels", pixels);
  TensorId vout = -1, importance = -1;
  VisionRun run;
  run.prune = &prune_;
  run.call = vision_calls_++;
  run.head_mask = head_mask_.empty() ? nullptr : &head_mask_;
  run.want_importance = prune_.llm_keep < 1.f;
  TensorId emb = model_->build_vision(g, px, &vout, run, &importance);
  if (importance >= 0) g.mark_output(importance);
  g.mark_output(emb);
  if (vision_out) g.mark_output(vout);
  TensorId adapted = -1;
  if (memory && memory->data() && temporal_) {
    if (memory->ndim() != 3 || memory->dim(0) != pixels.dim(0) || memory->dim(2) != model_->text_hidden())
      return ShapeMismatch("temporal memory " + memory->shape().to_string() + " does not fit " +
                           std::to_string(pixels.dim(0)) + " tiles of width " + std::to_string(model_->text_hidden()));
    adapted = temporal_->build(g, emb, g.input("memory", *memory));
    g.mark_output(adapted);
  }
  TensorId hz = -1;
  if (hazards && fast_head_) {
    hz = fast_head_->build(g, vout);
    g.mark_output(hz);
  }
  EV_RETURN_IF_ERROR(g.status());
  EV_ASSIGN_OR_RETURN(ExecResult r, vision_exec_->run(g, exec));
  if (vision_out) *vision_out = r[vout];
  if (hz >= 0) *hazards = r[hz];
  if (raw) *raw = r[emb];
  Tensor out = adapted >= 0 ? r[adapted] : r[emb];
  if (importance < 0) return out;
  // Top-k connector tokens for the language model (the temporal memory above keeps them all).
  const int64_t B = out.dim(0), T = out.dim(1), H = out.dim(2);
  const int64_t k = prune_keep_count(prune_.llm_keep, T);
  if (k >= T) return out;
  const std::vector<int32_t> keep = select_connector_tokens(r[importance], cfg_.scale_factor, k);
  Tensor sel = Tensor::empty(DType::kF32, Shape{B, k, H});
  for (int64_t i = 0; i < B * k; ++i)
    std::memcpy(sel.data_as<float>() + i * H, out.data_as<const float>() + static_cast<int64_t>(keep[static_cast<size_t>(i)]) * H,
                static_cast<size_t>(H) * sizeof(float));
  return sel;
}

Result<Tensor> Engine::forward_text(const std::vector<int32_t>& ids, const Tensor& image_embeds, KvCache& cache,
                                    int64_t n_logits, const ExecOptions& exec) {
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T == 0) return InvalidArgument("forward_text: no tokens");
  if (cache.size() + T > cache.capacity())
    return InvalidArgument("KV cache full: " + std::to_string(cache.size()) + " + " + std::to_string(T) +
                           " tokens exceed its capacity of " + std::to_string(cache.capacity()));
  const int64_t V = model_->vocab_size();
  std::vector<int32_t> img_pos;
  for (int64_t i = 0; i < T; ++i) {
    if (ids[static_cast<size_t>(i)] < 0 || ids[static_cast<size_t>(i)] >= V)
      return InvalidArgument("token id " + std::to_string(ids[static_cast<size_t>(i)]) + " at position " +
                             std::to_string(i) + " is outside the vocabulary of " + std::to_string(V));
    if (ids[static_cast<size_t>(i)] == cfg_.image_token_id) img_pos.push_back(static_cast<int32_t>(i));
  }
  const int64_t n_img = image_embeds.data() ? image_embeds.numel() / model_->text_hidden() : 0;
  if (static_cast<int64_t>(img_pos.size()) != n_img)
    return ShapeMismatch("the prompt has " + std::to_string(img_pos.size()) + " image tokens but " +
                         std::to_string(n_img) + " image embeddings were given");
  n_logits = std::clamp<int64_t>(n_logits, 1, T);
  if (on_cuda_ && opt_.static_decode && T == 1 && n_img == 0 && !exec.on_tensor && !exec.on_inputs && !exec.time_nodes)
    return decode_step(ids[0], cache);

  Tensor ids_t = Tensor::empty(DType::kI32, Shape{T});
  std::memcpy(ids_t.data(), ids.data(), ids.size() * sizeof(int32_t));
  Graph g;
  TensorId x = model_->build_embed(g, g.input("ids", ids_t));
  Tensor pos_t;
  if (n_img > 0) {
    pos_t = Tensor::empty(DType::kI32, Shape{n_img});
    std::memcpy(pos_t.data(), img_pos.data(), img_pos.size() * sizeof(int32_t));
    EV_ASSIGN_OR_RETURN(Tensor emb2, image_embeds.reshape(Shape{n_img, model_->text_hidden()}));
    x = g.scatter_rows("t.embd_merged", x, g.input("image_embeds", emb2), g.input("image_pos", pos_t));
  }
  TensorId logits = model_->build_decoder(g, x, T, cache, n_logits);
  g.mark_output(logits);
  if (on_cuda_)  // the cache lives on the GPU (its host copy is not kept current)
    for (int l = 0; l < cache.n_layers(); ++l) {
      exec_->keep_resident(cache.k_layer(l));
      exec_->keep_resident(cache.v_layer(l));
    }
  EV_ASSIGN_OR_RETURN(ExecResult r, exec_->run(g, exec));
  cache.set_size(cache.size() + T);
  return r[logits];
}

struct Engine::DecodeStep {
  Graph g;
  Tensor ids = Tensor::empty(DType::kI32, Shape{1});
  Tensor pos = Tensor::empty(DType::kI32, Shape{1});
  TensorId logits = -1;
  const void* cache_key = nullptr;  // the cache's first K layer (the graph keeps that memory alive)
  int64_t capacity = 0;
};

// generate_batch's state: one cache with a slot per sequence, and the step graph over it (rebuilt when the batch
// size or the slot size changes).
struct Engine::DecodeBatch {
  KvCache cache;
  int64_t batch = 0, seq_cap = 0;
  Graph g;
  Tensor ids, pos, rows;
  TensorId logits = -1;
};

struct Engine::DecodeChunk {
  Graph g;
  Tensor first = Tensor::empty(DType::kI32, Shape{1});
  std::vector<Tensor> pos;        // one [1] per step
  std::vector<TensorId> picks;    // [1] i32 per step
  const void* cache_key = nullptr;
  int64_t capacity = 0;
  int chunk = 0;
};

Engine::~Engine() = default;

Result<std::vector<int32_t>> Engine::decode_greedy(int32_t first, KvCache& cache, int n_tokens, int chunk) {
  if (n_tokens < 0 || n_tokens > 1 << 20) return InvalidArgument("decode_greedy: " + std::to_string(n_tokens) + " tokens");
  if (chunk < 1 || chunk > 256) return InvalidArgument("decode_greedy: chunk " + std::to_string(chunk) + " outside [1, 256]");
  const int64_t V = model_->vocab_size();
  if (first < 0 || first >= V)
    return InvalidArgument("decode_greedy: token id " + std::to_string(first) + " is outside the vocabulary of " +
                           std::to_string(V));
  std::vector<int32_t> out;
  if (n_tokens == 0) return out;
  const int64_t runs = (n_tokens + chunk - 1) / chunk;
  if (cache.size() + runs * chunk > cache.capacity())
    return InvalidArgument("KV cache full: " + std::to_string(cache.size()) + " + " + std::to_string(runs * chunk) +
                           " tokens (" + std::to_string(runs) + " chunks of " + std::to_string(chunk) +
                           ") exceed its capacity of " + std::to_string(cache.capacity()));
  DecodeChunk* d = decode_chunk_.get();
  if (!d || d->cache_key != cache.k_layer(0).data() || d->capacity != cache.capacity() || d->chunk != chunk) {
    auto nd = std::make_unique<DecodeChunk>();
    TensorId ids = nd->g.input("ids", nd->first);
    for (int k = 0; k < chunk; ++k) {
      nd->pos.push_back(Tensor::empty(DType::kI32, Shape{1}));
      TensorId x = model_->build_embed(nd->g, ids);
      TensorId logits = model_->build_decode_step(nd->g, x, cache, nd->g.input("pos", nd->pos.back()));
      ids = nd->g.argmax("t.pick", logits);
      nd->g.mark_output(ids);
      nd->picks.push_back(ids);
    }
    EV_RETURN_IF_ERROR(nd->g.status());
    nd->cache_key = cache.k_layer(0).data();
    nd->capacity = cache.capacity();
    nd->chunk = chunk;
    if (on_cuda_)
      for (int l = 0; l < cache.n_layers(); ++l) {
        exec_->keep_resident(cache.k_layer(l));
        exec_->keep_resident(cache.v_layer(l));
      }
    decode_chunk_ = std::move(nd);
    d = decode_chunk_.get();
  }
  int32_t feed = first;
  for (int64_t r = 0; r < runs; ++r) {
    d->first.data_as<int32_t>()[0] = feed;
    for (int k = 0; k < chunk; ++k) d->pos[static_cast<size_t>(k)].data_as<int32_t>()[0] = static_cast<int32_t>(cache.size() + k);
    EV_ASSIGN_OR_RETURN(ExecResult res, exec_->run(d->g));
    cache.set_size(cache.size() + chunk);
    for (int k = 0; k < chunk; ++k) {
      const int32_t t = res[d->picks[static_cast<size_t>(k)]].data_as<const int32_t>()[0];
      if (t < 0 || t >= V)
        return Internal("decode_greedy: step " + std::to_string(out.size()) + " picked no token (logits all NaN)");
      out.push_back(t);
    }
    feed = out.back();
  }
  // The cache holds the tokens fed: first and the picks before the last one kept.
  cache.set_size(cache.size() - (static_cast<int64_t>(out.size()) - n_tokens));
  out.resize(static_cast<size_t>(n_tokens));
  return out;
}

Result<std::vector<GenerateResult>> Engine::generate_batch(const std::vector<EncodedImages>& encs,
                                                           const nlohmann::json& messages, const GenerateOptions& gen) {
  const int64_t B = static_cast<int64_t>(encs.size());
  if (B == 0) return std::vector<GenerateResult>{};
  if (gen.max_new_tokens < 0 || gen.max_new_tokens > 1 << 20)
    return InvalidArgument("max_new_tokens " + std::to_string(gen.max_new_tokens) + " is out of range");
  const double t0 = now_s();
  EV_ASSIGN_OR_RETURN(std::string text, render_messages(messages));
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const EncodedImages& enc = encs[static_cast<size_t>(b)];
    EV_ASSIGN_OR_RETURN(std::string expanded,
                        expand_image_tokens(text, enc.layouts,
                                            enc.tokens_per_tile > 0 ? enc.tokens_per_tile : model_->tokens_per_tile()));
    prompts[static_cast<size_t>(b)] = tokenizer_->encode(expanded, /*add_special_tokens=*/true);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()));
  }
  const int64_t seq_cap = longest + gen.max_new_tokens + 1;
  DecodeBatch* d = decode_batch_.get();
  if (!d || d->batch != B || d->seq_cap < seq_cap) {
    auto nd = std::make_unique<DecodeBatch>();
    nd->batch = B;
    nd->seq_cap = seq_cap;
    nd->cache = model_->make_cache(B * seq_cap);
    nd->ids = Tensor::empty(DType::kI32, Shape{B});
    nd->pos = Tensor::empty(DType::kI32, Shape{B});
    nd->rows = Tensor::empty(DType::kI32, Shape{B});
    TensorId x = model_->build_embed(nd->g, nd->g.input("ids", nd->ids));
    nd->logits = model_->build_decode_batch(nd->g, x, nd->cache, seq_cap, nd->g.input("pos", nd->pos),
                                            nd->g.input("rows", nd->rows));
    nd->g.mark_output(nd->logits);
    EV_RETURN_IF_ERROR(nd->g.status());
    decode_batch_ = std::move(nd);
    d = decode_batch_.get();
    for (int l = 0; l < d->cache.n_layers(); ++l) {
      exec_->keep_resident(d->cache.k_layer(l));
      exec_->keep_resident(d->cache.v_layer(l));
    }
  }
  std::vector<GenerateResult> res(static_cast<size_t>(B));
  std::vector<KvCache> slots;
  std::vector<Tensor> logits(static_cast<size_t>(B));
  std::vector<Sampler> samplers;
  std::vector<StreamDecoder> decoders;
  const double t_pre = now_s();
  for (int64_t b = 0; b < B; ++b) {  // prefill, one sequence at a time, each into its own slot
    slots.push_back(d->cache.slot(b, d->seq_cap));
    const auto& ids = prompts[static_cast<size_t>(b)];
    EV_ASSIGN_OR_RETURN(logits[static_cast<size_t>(b)],
                        forward_text(ids, encs[static_cast<size_t>(b)].embeds, slots.back(), 1));
    samplers.emplace_back(gen.sampler);
    samplers.back().accept(ids);
    decoders.emplace_back(*tokenizer_, /*skip_special_tokens=*/true);
    GenerateResult& r = res[static_cast<size_t>(b)];
    r.fast_head = encs[static_cast<size_t>(b)].fast_head;
    r.stats.prompt_tokens = static_cast<int>(ids.size());
    r.stats.n_tiles = encs[static_cast<size_t>(b)].n_tiles;
    r.stats.vision_s = encs[static_cast<size_t>(b)].vision_s;
    r.stats.stop_reason = "max_new_tokens";
  }
  const double t_dec = now_s();
  const int V = static_cast<int>(model_->vocab_size());
  std::vector<uint8_t> done(static_cast<size_t>(B), gen.max_new_tokens == 0 ? 1 : 0);
  std::vector<int32_t> last(static_cast<size_t>(B), 0);
  for (int step = 0; step < gen.max_new_tokens; ++step) {
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      if (done[static_cast<size_t>(b)]) continue;
      GenerateResult& r = res[static_cast<size_t>(b)];
      const float* l = logits[static_cast<size_t>(b)].data_as<float>();
      const int32_t tok = samplers[static_cast<size_t>(b)].sample(l, V);
      const bool is_eos = std::find(stop_ids_.begin(), stop_ids_.end(), tok) != stop_ids_.end();
      const bool is_stop = std::find(gen.extra_stop_tokens.begin(), gen.extra_stop_tokens.end(), tok) !=
                           gen.extra_stop_tokens.end();
      if ((is_eos && gen.stop_at_eos) || is_stop) {
        r.stats.stop_reason = is_stop ? "stop_token" : "eos";
        done[static_cast<size_t>(b)] = 1;
        continue;
      }
      r.tokens.push_back(tok);
      if (gen.token_probs) {
        const float mx = *std::max_element(l, l + V);
        double z = 0;
        for (int v = 0; v < V; ++v) z += std::exp(static_cast<double>(l[v] - mx));
        r.token_probs.push_back(static_cast<float>(std::exp(static_cast<double>(l[tok] - mx)) / z));
      }
      samplers[static_cast<size_t>(b)].accept(tok);
      r.text += decoders[static_cast<size_t>(b)].step(tok);
      if (gen.token_probs) r.token_text_end.push_back(r.text.size());
      last[static_cast<size_t>(b)] = tok;
      if (step + 1 == gen.max_new_tokens) done[static_cast<size_t>(b)] = 1;
      any = any || !done[static_cast<size_t>(b)];
    }
    if (!any) break;
    // One step for every sequence; finished ones feed their last token and advance harmlessly inside their slot
    // (seq_cap leaves room for max_new_tokens), so the graph stays the same.
    for (int64_t b = 0; b < B; ++b) {
      KvCache& sc = slots[static_cast<size_t>(b)];
      d->ids.data_as<int32_t>()[b] = last[static_cast<size_t>(b)];
      d->pos.data_as<int32_t>()[b] = static_cast<int32_t>(sc.size());
      d->rows.data_as<int32_t>()[b] = static_cast<int32_t>(b * d->seq_cap + sc.size());
    }
    EV_ASSIGN_OR_RETURN(ExecResult er, exec_->run(d->g));
    const Tensor& lg = er[d->logits];  // [B, V]
    for (int64_t b = 0; b < B; ++b) {
      KvCache& sc = slots[static_cast<size_t>(b)];
      if (sc.size() + 1 < sc.capacity()) sc.set_size(sc.size() + 1);
      logits[static_cast<size_t>(b)] = lg.slice_rows(b, b + 1);
    }
  }
  const double t_end = now_s();
  for (int64_t b = 0; b < B; ++b) {
    GenerateResult& r = res[static_cast<size_t>(b)];
    r.text += decoders[static_cast<size_t>(b)].flush();
    r.stats.preprocess_s = t_pre - t0;
    r.stats.prefill_s = t_dec - t_pre;
    r.stats.decode_s = t_end - t_dec;
    r.stats.generated_tokens = static_cast<int>(r.tokens.size());
  }
  return res;
}

Result<Tensor> Engine::decode_step(int32_t id, KvCache& cache) {
  if (!decode_ || decode_->cache_key != cache.k_layer(0).data() || decode_->capacity != cache.capacity()) {
    auto d = std::make_unique<DecodeStep>();
    TensorId x = model_->build_embed(d->g, d->g.input("ids", d->ids));
    d->logits = model_->build_decode_step(d->g, x, cache, d->g.input("pos", d->pos));
    d->g.mark_output(d->logits);
    EV_RETURN_IF_ERROR(d->g.status());
    d->cache_key = cache.k_layer(0).data();
    d->capacity = cache.capacity();
    for (int l = 0; l < cache.n_layers(); ++l) {
      exec_->keep_resident(cache.k_layer(l));
      exec_->keep_resident(cache.v_layer(l));
    }
    decode_ = std::move(d);
  }
  decode_->ids.data_as<int32_t>()[0] = id;
  decode_->pos.data_as<int32_t>()[0] = static_cast<int32_t>(cache.size());
  EV_ASSIGN_OR_RETURN(ExecResult r, exec_->run(decode_->g));
  cache.set_size(cache.size() + 1);
  return r[decode_->logits];
}

Result<GenerateResult> Engine::describe(const std::vector<Image>& images, const std::string& prompt,
                                        const GenerateOptions& gen, const StreamCallback& stream) {
  EV_ASSIGN_OR_RETURN(nlohmann::json messages, user_turn(static_cast<int>(images.size()), prompt));
  return generate(images, messages, gen, stream);
}

Result<EncodedImages> Engine::encode_images(const std::vector<Image>& images, int image_splitting,
                                            Tensor* vision_out, const Tensor* memory) {
  EncodedImages enc;
  double t = now_s();
  // Tiles of all images, in order, as one batch. On a GPU the tiles stay u8 frames (the normalisation is folded
  // into the patch embedding): a quarter of the bytes to upload and no host pass over them. The CPU keeps the
  // processor's f32 arithmetic.
  const int S = model_->tile_size();
  const bool u8 = on_cuda_ && u8_frames_ && !downscales_input();
  std::vector<Tensor> pre;
  int64_t n_tiles = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    int rows = 0, cols = 0;
    Tensor px;
    if (u8) {
      auto tiles = vlm_make_tiles(images[i], image_options(image_splitting));
      if (!tiles.ok()) return tiles.status().with_context("image " + std::to_string(i));
      rows = tiles->rows;
      cols = tiles->cols;
      px = Tensor::empty(DType::kU8, Shape{static_cast<int64_t>(tiles->tiles.size()), S, S, 3});
      const size_t tile_bytes = static_cast<size_t>(S) * S * 3;
      for (size_t k = 0; k < tiles->tiles.size(); ++k) {
        const Image& im = tiles->tiles[k];
        if (im.width != S || im.height != S || im.channels != 3 || im.rgb.size() != tile_bytes)
          return Internal("image " + std::to_string(i) + ": tile " + std::to_string(k) + " is not " +
                          std::to_string(S) + " x " + std::to_string(S) + " RGB");
        std::memcpy(px.data_as<uint8_t>() + k * tile_bytes, im.rgb.data(), tile_bytes);
      }
    } else {
      auto p = preprocess(images[i], image_splitting, &rows, &cols);
      if (!p.ok()) return p.status().with_context("image " + std::to_string(i));
      px = std::move(p).value();
    }
    n_tiles += px.dim(0);
    enc.layouts.push_back({rows, cols});
    pre.push_back(std::move(px));
  }
  enc.preprocess_s = now_s() - t;
  if (n_tiles == 0) return enc;
  t = now_s();
  Tensor all = pre.size() == 1 ? pre[0]  // one image (a stream's frame): its tiles are the batch
               : u8               ? Tensor::empty(DType::kU8, Shape{n_tiles, S, S, 3})
                                  : Tensor::empty(DType::kF32, Shape{n_tiles, 3, S, S});
  if (pre.size() > 1) {
    size_t off = 0;
    for (const auto& p : pre) {
      std::memcpy(static_cast<char*>(all.data()) + off, p.data(), p.nbytes());
      off += p.nbytes();
    }
  }
  Tensor hz;
  EV_ASSIGN_OR_RETURN(enc.embeds, encode_tiles(all, vision_out, {}, fast_head_ ? &hz : nullptr, memory, &enc.raw_embeds));
  if (hz.data()) {
    const int C = fast_head_->num_classes();
    int64_t tile = 0;
    for (const auto& p : pre) {
      tile += p.dim(0);
      const float* row = hz.data_as<const float>() + (tile - 1) * C;
      enc.fast_head.emplace_back(row, row + C);
    }
  }
  enc.vision_s = now_s() - t;
  enc.n_tiles = static_cast<int>(n_tiles);
  enc.tokens_per_tile = static_cast<int>(enc.embeds.dim(1));
  return enc;
}

Result<GenerateResult> Engine::generate(const std::vector<Image>& images, const nlohmann::json& messages,
                                        const GenerateOptions& gen, const StreamCallback& stream) {
  EV_ASSIGN_OR_RETURN(EncodedImages enc, encode_images(images, gen.image_splitting));
  return generate_encoded(enc, messages, gen, stream);
}

Result<GenerateResult> Engine::generate_encoded(const EncodedImages& enc, const nlohmann::json& messages,
                                                const GenerateOptions& gen, const StreamCallback& stream) {
  GenerateResult res;
  if (gen.max_new_tokens < 0 || gen.max_new_tokens > 1 << 20)
    return InvalidArgument("max_new_tokens " + std::to_string(gen.max_new_tokens) + " is out of range");
  double t = now_s();
  EV_ASSIGN_OR_RETURN(std::string text, render_messages(messages));
  EV_ASSIGN_OR_RETURN(std::string expanded, expand_image_tokens(text, enc.layouts,
                                                                      enc.tokens_per_tile > 0 ? enc.tokens_per_tile
                                                                                              : model_->tokens_per_tile()));
  std::vector<int32_t> ids = tokenizer_->encode(expanded, /*add_special_tokens=*/true);
  res.stats.preprocess_s = enc.preprocess_s + (now_s() - t);
  res.stats.vision_s = enc.vision_s;
  res.stats.n_tiles = enc.n_tiles;
  res.fast_head = enc.fast_head;
  const Tensor& image_embeds = enc.embeds;

  t = now_s();
  // Greedy picks on the device, a chunk of steps per graph run (EngineOptions::greedy_chunk): the same tokens as
  // picking on the host from the same logits.
  const int chunk = std::clamp(opt_.greedy_chunk, 0, 256);
  const bool device_greedy = on_cuda_ && opt_.static_decode && chunk >= 1 && gen.sampler.temperature <= 0.f &&
                             gen.sampler.repetition_penalty == 1.0f && !gen.token_probs;
  KvCache cache = model_->make_cache(static_cast<int64_t>(ids.size()) + gen.max_new_tokens + 1 +
                                     (device_greedy ? chunk : 0));
  EV_ASSIGN_OR_RETURN(Tensor logits, forward_text(ids, image_embeds, cache, 1));
  res.stats.prefill_s = now_s() - t;
  res.stats.prompt_tokens = static_cast<int>(ids.size());

  Sampler sampler(gen.sampler);
  sampler.accept(ids);  // repetition penalty counts the prompt, as transformers does
  StreamDecoder sdec(*tokenizer_, /*skip_special_tokens=*/true);
  const int V = static_cast<int>(model_->vocab_size());
  t = now_s();
  res.stats.stop_reason = "max_new_tokens";
  std::vector<int32_t> picked;  // device_greedy: the current chunk's picks
  size_t next_pick = 0;
  int32_t tok = -1;
  for (int step = 0; step < gen.max_new_tokens; ++step) {
    if (device_greedy && step > 0) {
      if (next_pick == picked.size()) {
        EV_ASSIGN_OR_RETURN(picked, decode_greedy(tok, cache, chunk, chunk));
        next_pick = 0;
      }
      tok = picked[next_pick++];
    } else {
      tok = sampler.sample(logits.data_as<float>(), V);
    }
    const bool is_eos = std::find(stop_ids_.begin(), stop_ids_.end(), tok) != stop_ids_.end();
    const bool is_stop = std::find(gen.extra_stop_tokens.begin(), gen.extra_stop_tokens.end(), tok) !=
                         gen.extra_stop_tokens.end();
    if ((is_eos && gen.stop_at_eos) || is_stop) {
      res.stats.stop_reason = is_stop ? "stop_token" : "eos";
      break;
    }
    res.tokens.push_back(tok);
    if (gen.token_probs) {
      const float* l = logits.data_as<float>();
      const float mx = *std::max_element(l, l + V);
      double z = 0;
      for (int v = 0; v < V; ++v) z += std::exp(static_cast<double>(l[v] - mx));
      res.token_probs.push_back(static_cast<float>(std::exp(static_cast<double>(l[tok] - mx)) / z));
    }
    sampler.accept(tok);
    const std::string piece = sdec.step(tok);
    res.text += piece;
    if (gen.token_probs) res.token_text_end.push_back(res.text.size());
    if (stream && !piece.empty() && !stream(piece)) {
      res.stats.stop_reason = "callback";
      break;
    }
    if (step + 1 == gen.max_new_tokens) break;
    if (!device_greedy) {
      EV_ASSIGN_OR_RETURN(logits, forward_text({tok}, Tensor(), cache, 1));
    }
  }
  const std::string tail = sdec.flush();
  res.text += tail;
  if (stream && !tail.empty()) stream(tail);
  res.stats.decode_s = now_s() - t;
  res.stats.generated_tokens = static_cast<int>(res.tokens.size());
  return res;
}

}  // namespace ev
