// Idefics3 / SmolVLM: SigLIP vision tower + pixel-shuffle connector + Llama text model
// (transformers: models/idefics3/modeling_idefics3.py, models/smolvlm/modeling_smolvlm.py).
#include <memory>

#include "models/idefics3_connector.h"
#include "models/llama_text.h"
#include "models/siglip_vision.h"
#include "models/vlm.h"

namespace ev {

namespace {

class Idefics3Model final : public VlmModel {
 public:
  const VlmConfig& config() const override { return cfg_; }
  std::string architecture() const override { return cfg_.model_type; }
  int tile_size() const override { return cfg_.vision.image_size; }
  int tokens_per_tile() const override { return vision_.num_patches() / (cfg_.scale_factor * cfg_.scale_factor); }

  using VlmModel::build_vision;
  TensorId build_vision(Graph& g, TensorId pixels, TensorId* vision_out, const VisionRun& run,
                        TensorId* importance) const override {
    TensorId v = vision_.build(g, pixels, run, importance);
    if (vision_out) *vision_out = v;
    return connector_.build(g, v);
  }

  int64_t text_hidden() const override { return cfg_.text.hidden_size; }
  int64_t vocab_size() const override { return cfg_.text.vocab_size; }
  KvCache make_cache(int64_t capacity) const override { return text_.make_cache(capacity); }
  TensorId build_embed(Graph& g, TensorId ids) const override { return text_.embed(g, ids); }
  TensorId build_decoder(Graph& g, TensorId x, int64_t T, const KvCache& cache, int64_t n_logits) const override {
    return text_.build(g, x, T, cache, n_logits).logits;
  }
  TensorId build_decode_step(Graph& g, TensorId x, const KvCache& cache, TensorId positions) const override {
    return text_.build(g, x, 1, cache, 1, positions).logits;
  }
  TensorId build_decode_batch(Graph& g, TensorId x, const KvCache& cache, int64_t seq_capacity, TensorId positions,
                              TensorId rows) const override {
    const int64_t B = g.shape(x).rows();
    return text_.build(g, x, B, cache, B, positions, rows, seq_capacity).logits;
  }
  size_t weight_bytes() const override { return weight_bytes_; }
  int select_fused_linears(bool on, LinearPlan* plan) override { return text_.select_fused(on, plan); }
  bool set_pixel_normalization(const float scale[3], const float offset[3]) override {
    vision_.fold_pixel_normalization(scale, offset);
    return true;
  }

  VlmConfig cfg_;
  SiglipVisionTower vision_;
  Idefics3Connector connector_;
  LlamaTextModel text_;
  size_t weight_bytes_ = 0;
};

}  // namespace

Result<std::unique_ptr<VlmModel>> create_idefics3(const VlmConfig& cfg, const TensorStore& weights) {
  auto m = std::make_unique<Idefics3Model>();
  m->cfg_ = cfg;
  // transformers saves Idefics3ForConditionalGeneration as "model.vision_model.*", "model.connector.*",
  // "model.text_model.*", "lm_head.weight"; some exports drop the leading "model.".
  WeightLoader vis(weights, {"model.vision_model.", "vision_model."});
  WeightLoader con(weights, {"model.connector.", "connector."});
  WeightLoader txt(weights, {"model.text_model.", "text_model."});
  WeightLoader head(weights, {""});
  EV_ASSIGN_OR_RETURN(m->vision_, SiglipVisionTower::load(vis, cfg.vision));
  EV_ASSIGN_OR_RETURN(m->connector_, Idefics3Connector::load(con, cfg));
  EV_ASSIGN_OR_RETURN(m->text_, LlamaTextModel::load(txt, head, cfg.text, cfg.tie_word_embeddings));
  for (const auto& f : weights.files()) m->weight_bytes_ += f->data_size();
  return std::unique_ptr<VlmModel>(std::move(m));
}

}  // namespace ev
