#include "tools/random_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>

#include "core/clock.h"
#include "formats/safetensors.h"

namespace ev {

namespace {

struct ShapeSpec {
  const char* name;
  // vision
  int v_hidden, v_inter, v_layers, v_heads, image, patch;
  int scale;
  // text
  int vocab, t_hidden, t_inter, t_layers, t_heads, t_kv, head_dim, max_pos;
  float rope_theta, rms_eps;
  bool tied;
  int image_token_id;
};

// Sizes from the published config.json files (HuggingFaceTB/SmolVLM-256M-Instruct, SmolVLM-500M-Instruct).
constexpr ShapeSpec kShapes[] = {
    {"smolvlm-256m", 768, 3072, 12, 12, 512, 16, 4, 49280, 576, 1536, 30, 9, 3, 64, 8192, 100000.f, 1e-5f, false, 49190},
    {"smolvlm-500m", 768, 3072, 12, 12, 512, 16, 4, 49280, 960, 2560, 32, 15, 5, 64, 8192, 100000.f, 1e-5f, false, 49190},
    // Same sizes as the tiny golden fixtures (tests/fixtures/tiny-idefics3), with a tied output head.
    {"tiny", 64, 128, 2, 4, 64, 8, 2, 512, 64, 128, 2, 4, 2, 16, 512, 10000.f, 1e-5f, true, 500},
};

const ShapeSpec* find_shape(const std::string& name) {
  for (const auto& s : kShapes)
    if (name == s.name) return &s;
  return nullptr;
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    default: return "float32";
  }
}

// splitmix64 (Steele, Lea, Flood 2014): one 64-bit add + two multiply-xorshift rounds per draw; passes BigCrush
// and is the standard seeder for xoshiro, more than good enough for benchmark weights.
inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t s = seed ^ (a * 0xD1B54A32D192ED03ull) ^ (b * 0x8CB92BA72F3D8DD7ull);
  return splitmix64(s);
}

// Irwin-Hall(4) over 16-bit uniforms: sum of four u16 has mean 2 * 65535 and variance 4 * (65536^2 - 1) / 12.
constexpr double kIhMean = 2.0 * 65535.0;
const double kIhStd = std::sqrt(4.0 * (65536.0 * 65536.0 - 1.0) / 12.0);

inline float normal_draw(uint64_t& state, float scale) {
  const uint64_t r = splitmix64(state);
  const uint32_t s = static_cast<uint32_t>(r & 0xFFFF) + static_cast<uint32_t>((r >> 16) & 0xFFFF) +
                     static_cast<uint32_t>((r >> 32) & 0xFFFF) + static_cast<uint32_t>(r >> 48);
  return static_cast<float>((static_cast<double>(s) - kIhMean)) * scale;
}

enum class Init : uint8_t { kNormal, kOnes, kZeros };

// LayerNorm / RMSNorm parameters: weight 1, bias 0 (their torch initialisation); everything else normal(0, 0.02).
Init init_of(const std::string& name) {
  const size_t last = name.rfind('.');
  const size_t prev = last == std::string::npos ? std::string::npos : name.rfind('.', last - 1);
  const std::string module = name.substr(prev == std::string::npos ? 0 : prev + 1,
                                         last - (prev == std::string::npos ? 0 : prev + 1));
  if (module.find("norm") == std::string::npos) return Init::kNormal;
  return name.compare(last, std::string::npos, ".bias") == 0 ? Init::kZeros : Init::kOnes;
}

void store_value(void* base, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kBF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(v); break;
    case DType::kF16: static_cast<uint16_t*>(base)[i] = f32_to_f16(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

constexpr int64_t kChunk = int64_t{1} << 16;

}  // namespace

std::vector<std::string> random_model_shapes() {
  std::vector<std::string> out;
  for (const auto& s : kShapes) out.emplace_back(s.name);
  return out;
}

Result<nlohmann::json> random_model_config(const std::string& shape, DType dtype) {
  const ShapeSpec* s = find_shape(shape);
  if (!s) {
    std::string known;
    for (const auto& n : random_model_shapes()) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("unknown model shape '" + shape + "' (known: " + known + ")");
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16)
    return InvalidArgument(std::string("random model weights must be f32, bf16 or f16, not ") + dtype_name(dtype));
  nlohmann::json vision = {
      {"model_type", "idefics3_vision"},
      {"hidden_size", s->v_hidden},
      {"intermediate_size", s->v_inter},
      {"num_hidden_layers", s->v_layers},
      {"num_attention_heads", s->v_heads},
      {"num_channels", 3},
      {"image_size", s->image},
      {"patch_size", s->patch},
      {"layer_norm_eps", 1e-6},
      {"hidden_act", "gelu_pytorch_tanh"},
  };
  nlohmann::json text = {
      {"model_type", "llama"},
      {"vocab_size", s->vocab},
      {"hidden_size", s->t_hidden},
      {"intermediate_size", s->t_inter},
      {"num_hidden_layers", s->t_layers},
      {"num_attention_heads", s->t_heads},
      {"num_key_value_heads", s->t_kv},
      {"head_dim", s->head_dim},
      {"max_position_embeddings", s->max_pos},
      {"rms_norm_eps", s->rms_eps},
      {"rope_theta", s->rope_theta},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"tie_word_embeddings", s->tied},
  };
  return nlohmann::json{
      {"architectures", {"Idefics3ForConditionalGeneration"}},
      {"model_type", "idefics3"},
      {"image_token_id", s->image_token_id},
      {"scale_factor", s->scale},
      {"tie_word_embeddings", s->tied},
      {"torch_dtype", torch_dtype_name(dtype)},
      {"vision_config", vision},
      {"text_config", text},
      {"edgevlm_random_weights", shape},
  };
}

std::vector<std::pair<std::string, Shape>> idefics3_tensor_shapes(const VlmConfig& c) {
  std::vector<std::pair<std::string, Shape>> t;
  const int64_t E = c.vision.hidden_size, F = c.vision.intermediate_size, P = c.vision.patch_size;
  const int64_t N = c.vision.num_patches();
  const std::string vp = "model.vision_model.";
  t.push_back({vp + "embeddings.patch_embedding.weight", Shape{E, c.vision.num_channels, P, P}});
  t.push_back({vp + "embeddings.patch_embedding.bias", Shape{E}});
  t.push_back({vp + "embeddings.position_embedding.weight", Shape{N, E}});
  for (int l = 0; l < c.vision.num_hidden_layers; ++l) {
    const std::string p = vp + "encoder.layers." + std::to_string(l) + ".";
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      t.push_back({p + "self_attn." + proj + ".weight", Shape{E, E}});
      t.push_back({p + "self_attn." + proj + ".bias", Shape{E}});
    }
    t.push_back({p + "layer_norm1.weight", Shape{E}});
    t.push_back({p + "layer_norm1.bias", Shape{E}});
    t.push_back({p + "mlp.fc1.weight", Shape{F, E}});
    t.push_back({p + "mlp.fc1.bias", Shape{F}});
    t.push_back({p + "mlp.fc2.weight", Shape{E, F}});
    t.push_back({p + "mlp.fc2.bias", Shape{E}});
    t.push_back({p + "layer_norm2.weight", Shape{E}});
    t.push_back({p + "layer_norm2.bias", Shape{E}});
  }
  t.push_back({vp + "post_layernorm.weight", Shape{E}});
  t.push_back({vp + "post_layernorm.bias", Shape{E}});
  t.push_back({"model.connector.modality_projection.proj.weight",
               Shape{c.text.hidden_size, static_cast<int64_t>(c.connector_input_dim())}});

  const int64_t H = c.text.hidden_size, FF = c.text.intermediate_size, V = c.text.vocab_size;
  const int64_t qd = static_cast<int64_t>(c.text.num_attention_heads) * c.text.head_dim;
  const int64_t kvd = static_cast<int64_t>(c.text.num_key_value_heads) * c.text.head_dim;
  const std::string tp = "model.text_model.";
  t.push_back({tp + "embed_tokens.weight", Shape{V, H}});
  for (int l = 0; l < c.text.num_hidden_layers; ++l) {
    const std::string p = tp + "layers." + std::to_string(l) + ".";
    t.push_back({p + "self_attn.q_proj.weight", Shape{qd, H}});
    t.push_back({p + "self_attn.k_proj.weight", Shape{kvd, H}});
    t.push_back({p + "self_attn.v_proj.weight", Shape{kvd, H}});
    t.push_back({p + "self_attn.o_proj.weight", Shape{H, qd}});
    t.push_back({p + "mlp.gate_proj.weight", Shape{FF, H}});
    t.push_back({p + "mlp.up_proj.weight", Shape{FF, H}});
    t.push_back({p + "mlp.down_proj.weight", Shape{H, FF}});
    t.push_back({p + "input_layernorm.weight", Shape{H}});
    t.push_back({p + "post_attention_layernorm.weight", Shape{H}});
  }
  t.push_back({tp + "norm.weight", Shape{H}});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", Shape{V, H}});
  return t;
}

Status write_random_model(const std::string& dir, const std::string& shape, uint64_t seed, DType dtype,
                          ThreadPool* pool) {
  EV_ASSIGN_OR_RETURN(nlohmann::json cfg_json, random_model_config(shape, dtype));
  // Parse our own config with the loader's parser so that what we write is exactly what Engine::load will see.
  EV_ASSIGN_OR_RETURN(VlmConfig cfg, parse_vlm_config(cfg_json, "random model '" + shape + "' config.json"));

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return IoError(dir + ": cannot create directory: " + ec.message());

  // Allocate every tensor, then fill all chunks of all tensors in parallel.
  const auto shapes = idefics3_tensor_shapes(cfg);
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(shapes.size());
  struct Item {
    size_t tensor;
    int64_t chunk;
  };
  std::vector<Item> items;
  std::vector<Init> inits;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor t = Tensor::empty(dtype, shapes[i].second);
    if (t.data() == nullptr && t.numel() > 0) return {StatusCode::kOutOfMemory, "cannot allocate " + shapes[i].first};
    inits.push_back(init_of(shapes[i].first));
    for (int64_t c = 0; c * kChunk < t.numel(); ++c) items.push_back({i, c});
    tensors.emplace_back(shapes[i].first, std::move(t));
  }
  const float scale = static_cast<float>(0.02 / kIhStd);
  auto fill = [&](int, int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const Item& item = items[static_cast<size_t>(it)];
      Tensor& t = tensors[item.tensor].second;
      const int64_t i0 = item.chunk * kChunk, i1 = std::min(t.numel(), i0 + kChunk);
      const Init init = inits[item.tensor];
      if (init == Init::kZeros) continue;  // Tensor::empty is zero-initialised
      if (init == Init::kOnes) {
        for (int64_t i = i0; i < i1; ++i) store_value(t.data(), dtype, i, 1.0f);
        continue;
      }
      uint64_t state = mix_seed(seed, item.tensor + 1, static_cast<uint64_t>(item.chunk) + 1);
      if (dtype == DType::kBF16) {
        uint16_t* p = t.data_as<uint16_t>();
        for (int64_t i = i0; i < i1; ++i) p[i] = f32_to_bf16(normal_draw(state, scale));
      } else if (dtype == DType::kF32) {
        float* p = t.data_as<float>();
        for (int64_t i = i0; i < i1; ++i) p[i] = normal_draw(state, scale);
      } else {
        for (int64_t i = i0; i < i1; ++i) store_value(t.data(), dtype, i, normal_draw(state, scale));
      }
    }
  };
  std::unique_ptr<ThreadPool> own;
  if (!pool) {
    own = std::make_unique<ThreadPool>(0);
    pool = own.get();
  }
  pool->parallel_for(static_cast<int64_t>(items.size()), fill);

  const std::string st_path = dir + "/model.safetensors";
  EV_RETURN_IF_ERROR(write_safetensors(st_path, tensors,
                                       {{"format", "pt"},
                                        {"edgevlm_random_shape", shape},
                                        {"edgevlm_random_seed", std::to_string(seed)}}));
  std::string text;
  try {
    text = cfg_json.dump(2) + "\n";
  } catch (const std::exception& e) {
    return Internal(std::string("random model config: ") + e.what());
  }
  return write_text_file(dir + "/config.json", text);
}

Tensor random_pixels(int64_t n, int S, uint64_t seed) {
  Tensor t = Tensor::empty(DType::kF32, Shape{n, 3, S, S});
  uint64_t state = mix_seed(seed, 0x5049584Cull, 1);
  float* p = t.data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = static_cast<float>(static_cast<double>(splitmix64(state) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
  return t;
}

Tensor random_frames_u8(int64_t n, int S, uint64_t seed) {
  Tensor t = Tensor::empty(DType::kU8, Shape{n, S, S, 3});
  uint64_t state = mix_seed(seed, 0x4652414Dull, 3);
  uint8_t* p = t.data_as<uint8_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<uint8_t>(splitmix64(state) >> 56);
  return t;
}

std::vector<int32_t> random_token_ids(int64_t n, int64_t vocab, int32_t image_token, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (vocab <= 0) return ids;
  uint64_t state = mix_seed(seed, 0x544F4B454Eull, 2);
  for (auto& id : ids) {
    do {
      id = static_cast<int32_t>(splitmix64(state) % static_cast<uint64_t>(vocab));
    } while (id == image_token && vocab > 1);
  }
  return ids;
}

Result<BenchModel> BenchModel::resolve(const std::string& model_dir, const std::string& shape, uint64_t seed,
                                       DType dtype, const std::string& keep_dir) {
  BenchModel m;
  if (!model_dir.empty()) {
    m.dir = model_dir;
    m.label = model_dir;
    return m;
  }
  if (shape.empty()) return InvalidArgument("give a model directory (--model DIR) or a shape (--shape NAME)");
  // Fail on an unknown shape before creating anything.
  EV_ASSIGN_OR_RETURN(nlohmann::json unused, random_model_config(shape, dtype));
  (void)unused;
  if (!keep_dir.empty()) {
    m.dir = keep_dir;
  } else {
    EV_ASSIGN_OR_RETURN(m.temp, TempDir::create("edgevlm-" + shape + "-"));
    m.dir = m.temp.path();
  }
  m.shape = shape;
  m.label = "random:" + shape;
  const double t0 = now_s();
  EV_RETURN_IF_ERROR(write_random_model(m.dir, shape, seed, dtype));
  m.generate_s = now_s() - t0;
  return m;
}

}  // namespace ev
