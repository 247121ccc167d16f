#include "models/siglip_vision.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace ev {

Result<SiglipVisionTower> SiglipVisionTower::load(const WeightLoader& w, const VisionConfig& cfg) {
  SiglipVisionTower t;
  t.cfg_ = cfg;
  const int64_t E = cfg.hidden_size, F = cfg.intermediate_size, P = cfg.patch_size, C = cfg.num_channels;
  const int64_t D = cfg.head_dim();
  const int64_t N = t.num_patches();
  auto& W = t.w_;
  EV_ASSIGN_OR_RETURN(Tensor patch, w.matrix("embeddings.patch_embedding.weight", Shape{E, C, P, P}));
  EV_ASSIGN_OR_RETURN(W.patch_w, patch.reshape(Shape{E, C * P * P}));
  EV_ASSIGN_OR_RETURN(W.patch_b, w.small_f32("embeddings.patch_embedding.bias", Shape{E}));
  EV_ASSIGN_OR_RETURN(W.pos, w.small_f32("embeddings.position_embedding.weight", Shape{N, E}));
  W.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    auto& L = W.layers[static_cast<size_t>(l)];
    const std::string p = "encoder.layers." + std::to_string(l) + ".";
    const int64_t A = cfg.heads_in_layer(l) * D;  // attention width (E unless heads were pruned)
    EV_ASSIGN_OR_RETURN(L.ln1_w, w.small_f32(p + "layer_norm1.weight", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.ln1_b, w.small_f32(p + "layer_norm1.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.q_w, w.matrix(p + "self_attn.q_proj.weight", Shape{A, E}));
    EV_ASSIGN_OR_RETURN(L.q_b, w.small_f32(p + "self_attn.q_proj.bias", Shape{A}));
    EV_ASSIGN_OR_RETURN(L.k_w, w.matrix(p + "self_attn.k_proj.weight", Shape{A, E}));
    EV_ASSIGN_OR_RETURN(L.k_b, w.small_f32(p + "self_attn.k_proj.bias", Shape{A}));
    EV_ASSIGN_OR_RETURN(L.v_w, w.matrix(p + "self_attn.v_proj.weight", Shape{A, E}));
    EV_ASSIGN_OR_RETURN(L.v_b, w.small_f32(p + "self_attn.v_proj.bias", Shape{A}));
    EV_ASSIGN_OR_RETURN(L.o_w, w.matrix(p + "self_attn.out_proj.weight", Shape{E, A}));
    EV_ASSIGN_OR_RETURN(L.o_b, w.small_f32(p + "self_attn.out_proj.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.ln2_w, w.small_f32(p + "layer_norm2.weight", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.ln2_b, w.small_f32(p + "layer_norm2.bias", Shape{E}));
    EV_ASSIGN_OR_RETURN(L.fc1_w, w.matrix(p + "mlp.fc1.weight", Shape{F, E}));
    EV_ASSIGN_OR_RETURN(L.fc1_b, w.small_f32(p + "mlp.fc1.bias", Shape{F}));
    EV_ASSIGN_OR_RETURN(L.fc2_w, w.matrix(p + "mlp.fc2.weight", Shape{E, F}));
    EV_ASSIGN_OR_RETURN(L.fc2_b, w.small_f32(p + "mlp.fc2.bias", Shape{E}));
  }
  EV_ASSIGN_OR_RETURN(W.post_w, w.small_f32("post_layernorm.weight", Shape{E}));
  EV_ASSIGN_OR_RETURN(W.post_b, w.small_f32("post_layernorm.bias", Shape{E}));
  return t;
}

namespace {
// Idefics3VisionEmbeddings' position ids for a side x side patch grid of a tower trained on full x full: the
// fractional coordinates 0, 1/side, .. bucketised by the boundaries 1/full, 2/full, .. (torch.bucketize, right=True).
std::vector<int32_t> bucketized_positions(int side, int full) {
  std::vector<int32_t> rc(static_cast<size_t>(side));
  for (int i = 0; i < side; ++i) {
    // torch.arange computes start + i * step in double and rounds each value to float32.
    const auto frac = static_cast<float>(static_cast<double>(i) * (1.0 / side));
    int b = 0;  // number of boundaries <= frac
    for (int k = 1; k < full; ++k)
      if (static_cast<float>(static_cast<double>(k) * (1.0 / full)) <= frac) b = k;
    rc[static_cast<size_t>(i)] = b;
  }
  std::vector<int32_t> ids(static_cast<size_t>(side) * side);
  for (int r = 0; r < side; ++r)
    for (int c = 0; c < side; ++c) ids[static_cast<size_t>(r) * side + c] = rc[static_cast<size_t>(r)] * full + rc[static_cast<size_t>(c)];
  return ids;
}

Tensor i32_tensor(const std::vector<int32_t>& v, Shape s) {
  Tensor t = Tensor::empty(DType::kI32, s);
  std::copy(v.begin(), v.end(), t.data_as<int32_t>());
  return t;
}

// Uniform [0, 1) scores for the random-drop baseline: splitmix64 of (seed, call, layer, index).
Tensor random_scores(uint64_t seed, uint64_t call, int layer, int64_t B, int64_t n) {
  Tensor t = Tensor::empty(DType::kF32, Shape{B, n});
  float* p = t.data_as<float>();
  uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (call + 1) * 0xBF58476D1CE4E5B9ull ^ static_cast<uint64_t>(layer + 1) * 0x94D049BB133111EBull;
  for (int64_t i = 0; i < B * n; ++i) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    p[i] = static_cast<float>(z >> 40) * (1.f / 16777216.f);
  }
  return t;
}
}  // namespace

void SiglipVisionTower::fold_pixel_normalization(const float scale[3], const float offset[3]) {
  auto wf = w_.patch_w.to(DType::kF32), bf = w_.patch_b.to(DType::kF32);
  if (!wf.ok() || !bf.ok() || wf->ndim() != 2 || wf->dim(1) % 3 != 0) return;  // load() checked the shapes
  const int64_t E = wf->dim(0), K = wf->dim(1), PP = K / 3;
  patch_w_u8_ = Tensor::empty(DType::kF32, Shape{E, K});
  patch_b_u8_ = Tensor::empty(DType::kF32, Shape{E});
  const float* w = wf->data_as<const float>();
  float* wo = patch_w_u8_.data_as<float>();
  for (int64_t e = 0; e < E; ++e) {
    double b = static_cast<double>(bf->data_as<const float>()[e]);
    for (int64_t j = 0; j < K; ++j) {
      const int64_t c = j / PP;
      wo[e * K + j] = static_cast<float>(static_cast<double>(w[e * K + j]) * scale[c]);
      b += static_cast<double>(w[e * K + j]) * offset[c];
    }
    patch_b_u8_.data_as<float>()[e] = static_cast<float>(b);
  }
}

TensorId SiglipVisionTower::build(Graph& g, TensorId pixels, const VisionRun& run, TensorId* importance,
                                  int n_layers) const {
  const int E = cfg_.hidden_size, D = cfg_.head_dim();
  const float eps = cfg_.layer_norm_eps;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (n_layers < 0 || n_layers > cfg_.num_hidden_layers) n_layers = cfg_.num_hidden_layers;
  const PruneSpec* prune = run.prune && run.prune->active() ? run.prune : nullptr;

  TensorId x = g.patchify("v.patches", pixels, cfg_.patch_size);                        // [B, N, 3*P*P]
  const int64_t B = g.shape(x)[0], N = g.shape(x)[1];
  if (g.node(pixels).out_dtype == DType::kU8) {  // frames 0..255: the normalisation is in the folded weights
    if (!patch_w_u8_.data()) {
      g.patchify("v.patches", pixels, 0);  // records an error: no folded patch embedding
      return x;
    }
    x = g.linear("v.patch_embd", x, g.weight("v.patch_w_u8", patch_w_u8_), g.weight("v.patch_b_u8", patch_b_u8_));
  } else {
    x = g.linear("v.patch_embd", x, g.weight("v.patch_w", w_.patch_w), g.weight("v.patch_b", w_.patch_b));  // [B, N, E]
  }
  TensorId pos = g.weight("v.pos", w_.pos);
  if (N != num_patches()) {  // a smaller tile (downscale): Idefics3's bucketised position ids
    const int side = static_cast<int>(g.shape(pixels)[2] / cfg_.patch_size);
    if (static_cast<int64_t>(side) * side != N) {
      g.patchify("v.patches", pixels, 0);  // records a shape error: only square tiles
      return x;
    }
    const std::vector<int32_t> ids = bucketized_positions(side, cfg_.patches_per_side());
    pos = g.get_rows("v.pos_ids", pos, g.input("v.pos_idx", i32_tensor(ids, Shape{N})));
  }
  x = g.add("v.embd", x, pos);                                                              // [B, N, E]

  // Token pruning state: `n` live tokens per tile in x [B, n, E]; gidx [B*n] their flat grid rows b*N + j; grid
  // [B*N, E] the states of the tokens dropped so far (in place).
  int64_t n = N;
  TensorId grid = -1, gidx = -1, last_score = -1;
  size_t step = 0;
  const bool want_imp = run.want_importance && importance != nullptr;
  for (int l = 0; l < n_layers; ++l) {
    const auto& L = w_.layers[static_cast<size_t>(l)];
    const int H = cfg_.heads_in_layer(l);
    auto nm = [&](const char* what) { return layer_name("v.blk", l, what); };
    auto wt = [&](const char* what, const Tensor& t) { return g.weight(nm(what), t); };
    const bool prune_here = prune && step < prune->steps.size() && prune->steps[step].layer == l &&
                            prune_keep_count(prune->steps[step].keep, N) < n;
    const bool score_here = (prune_here && prune->score == PruneSpec::Score::kAttention) ||
                            (want_imp && l == n_layers - 1);
    TensorId h = g.layer_norm(nm("ln1"), x, wt("ln1_w", L.ln1_w), wt("ln1_b", L.ln1_b), eps);
    TensorId q = g.linear(nm("q"), h, wt("q_w", L.q_w), wt("q_b", L.q_b));  // [B, n, H*D]
    TensorId k = g.linear(nm("k"), h, wt("k_w", L.k_w), wt("k_b", L.k_b));
    TensorId v = g.linear(nm("v"), h, wt("v_w", L.v_w), wt("v_b", L.v_b));
    TensorId a = g.attention(nm("attn"), q, k, v, H, H, D, scale, /*causal=*/false, 0);  // [B, n, H*D]
    TensorId score = score_here ? g.attn_score(nm("attn_score"), q, k, H, H, D, scale) : -1;  // [B, n]
    if (run.head_mask && static_cast<size_t>(l) < run.head_mask->size() && !(*run.head_mask)[static_cast<size_t>(l)].empty()) {
      const auto& m = (*run.head_mask)[static_cast<size_t>(l)];
      Tensor mt = Tensor::empty(DType::kF32, Shape{static_cast<int64_t>(H) * D});
      for (int hh = 0; hh < H; ++hh)
        for (int d = 0; d < D; ++d)
          mt.data_as<float>()[hh * D + d] = static_cast<size_t>(hh) < m.size() ? m[static_cast<size_t>(hh)] : 1.f;
      a = g.mul(nm("head_mask"), a, g.input(nm("head_mask_w"), mt));
    }
    a = g.linear(nm("attn_out"), a, wt("o_w", L.o_w), wt("o_b", L.o_b));
    x = g.add(nm("attn_res"), x, a);
    h = g.layer_norm(nm("ln2"), x, wt("ln2_w", L.ln2_w), wt("ln2_b", L.ln2_b), eps);
    h = g.linear(nm("fc1"), h, wt("fc1_w", L.fc1_w), wt("fc1_b", L.fc1_b));  // [B, n, F]
    h = g.gelu_tanh(nm("gelu"), h);
    h = g.linear(nm("fc2"), h, wt("fc2_w", L.fc2_w), wt("fc2_b", L.fc2_b));  // [B, n, E]
    x = g.add(nm("out"), x, h);
    if (l == n_layers - 1) last_score = score;
    while (prune && step < prune->steps.size() && prune->steps[step].layer <= l && !prune_here) ++step;  // no-op steps
    if (!prune_here) continue;
    const int64_t kk = prune_keep_count(prune->steps[step].keep, N);
    ++step;
    if (prune->score == PruneSpec::Score::kRandom)
      score = g.input(nm("random_score"), random_scores(prune->seed, run.call, l, B, n));
    TensorId keep = g.top_k(nm("keep"), score, kk);  // [B*kk] flat rows of x
    TensorId xf = g.reshape(nm("flat"), x, Shape{B * n, E});
    if (grid < 0) {
      grid = xf;  // every token is still live: the grid is x itself
      std::vector<int32_t> iota(static_cast<size_t>(B * N));
      for (size_t i = 0; i < iota.size(); ++i) iota[i] = static_cast<int32_t>(i);
      gidx = g.input("v.grid_idx", i32_tensor(iota, Shape{B * N, 1}));
    } else {
      grid = g.scatter_rows(nm("grid"), grid, xf, gidx);
    }
    gidx = g.get_rows(nm("keep_idx"), gidx, keep);  // [B*kk, 1] i32
    x = g.reshape(nm("kept"), g.get_rows(nm("gather"), xf, keep), Shape{B, kk, E});
    n = kk;
  }
  if (grid >= 0) {
    grid = g.scatter_rows("v.grid", grid, g.reshape("v.live", x, Shape{B * n, E}), gidx);
    x = g.reshape("v.grid_out", grid, Shape{B, N, E});
  }
  if (want_imp) {
    if (last_score < 0) {  // n_layers == 0 cannot happen (configs have >= 1 layer); keep the id valid anyway
      Tensor u = Tensor::empty(DType::kF32, Shape{B, N});
      std::fill(u.data_as<float>(), u.data_as<float>() + B * N, 1.f);
      *importance = g.input("v.importance", u);
    } else if (grid >= 0) {
      Tensor z = Tensor::empty(DType::kF32, Shape{B * N, 1});
      std::fill(z.data_as<float>(), z.data_as<float>() + B * N, 0.f);
      TensorId imp = g.scatter_rows("v.importance_grid", g.input("v.importance_zero", z),
                                    g.reshape("v.importance_live", last_score, Shape{B * n, 1}), gidx);
      *importance = g.reshape("v.importance", imp, Shape{B, N});
    } else {
      *importance = last_score;
    }
  }
  return g.layer_norm("v.post_ln", x, g.weight("v.post_w", w_.post_w), g.weight("v.post_b", w_.post_b), eps);
}

}  // namespace ev
