#include "models/idefics3_connector.h"

namespace ev {

Result<Idefics3Connector> Idefics3Connector::load(const WeightLoader& w, const VlmConfig& cfg) {
  Idefics3Connector c;
  c.scale_ = cfg.scale_factor;
  const int64_t in = static_cast<int64_t>(cfg.vision.hidden_size) * cfg.scale_factor * cfg.scale_factor;
  EV_ASSIGN_OR_RETURN(c.proj_, w.matrix("modality_projection.proj.weight", Shape{cfg.text.hidden_size, in}));
  return c;
}

TensorId Idefics3Connector::build(Graph& g, TensorId vision_out) const {
  TensorId x = g.pixel_shuffle("mm.shuffle", vision_out, scale_);  // [B, N/s^2, E*s^2]
  return g.linear("mm.proj", x, g.weight("mm.proj_w", proj_));     // [B, N/s^2, text_hidden]
}

}  // namespace ev
