#include "tools/prune_heads.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <tuple>
#include <utility>

#include "core/clock.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"
#include "perception/vlm_preprocess.h"
#include "runtime/engine.h"
#include "sim/simulator.h"
#include "tools/eval.h"
#include "tools/report.h"
#include "tools/sim_frames.h"
#include "tools/validate.h"

namespace ev {

namespace fs = std::filesystem;

HeadMask head_mask_for(const VisionConfig& v, const std::vector<HeadRef>& masked) {
  if (masked.empty()) return {};
  HeadMask m(static_cast<size_t>(v.num_hidden_layers));
  for (int l = 0; l < v.num_hidden_layers; ++l) m[static_cast<size_t>(l)].assign(static_cast<size_t>(v.heads_in_layer(l)), 1.f);
  for (const HeadRef& h : masked)
    if (h.layer >= 0 && h.layer < v.num_hidden_layers && h.head >= 0 && h.head < v.heads_in_layer(h.layer))
      m[static_cast<size_t>(h.layer)][static_cast<size_t>(h.head)] = 0.f;
  return m;
}

namespace {

// Clears the engine's head mask when the measurement ends (also on an error return).
struct MaskScope {
  Engine& e;
  MaskScope(Engine& eng, const HeadMask& m) : e(eng) { e.set_head_mask(m); }
  ~MaskScope() { e.set_head_mask({}); }
  MaskScope(const MaskScope&) = delete;
  MaskScope& operator=(const MaskScope&) = delete;
};

// Mean over the rows of [rows, V] logits of KL(softmax(p) || softmax(q)), in double (validate.h kl_logits per row).
double mean_kl(const float* p, const float* q, int64_t rows, int64_t V) {
  double sum = 0;
  for (int64_t r = 0; r < rows; ++r) sum += kl_logits(p + r * V, q + r * V, V);
  return rows > 0 ? sum / static_cast<double>(rows) : 0.0;
}

Result<Tensor> as_f32(const Tensor& t) {
  if (t.dtype() == DType::kF32) return t;
  return t.to(DType::kF32);
}

}  // namespace

// ---- Calibration ----

Result<HeadCalibration> HeadCalibration::create(Engine& eng, std::vector<Image> images, const std::string& prompt,
                                                int max_new_tokens, const HeadProgress& progress) {
  if (images.empty()) return InvalidArgument("head calibration needs at least one image");
  if (max_new_tokens < 1 || max_new_tokens > 4096)
    return InvalidArgument("head calibration: max_new_tokens " + std::to_string(max_new_tokens) + " is not in [1, 4096]");
  if (eng.prune().active())
    return InvalidArgument("head calibration runs without token pruning, but the engine has --prune " + eng.prune().to_string());
  eng.set_head_mask({});
  HeadCalibration c;
  c.images_ = std::move(images);
  c.prompt_ = prompt;
  c.max_new_tokens_ = max_new_tokens;
  c.vocab_ = eng.model().vocab_size();
  const int64_t n = static_cast<int64_t>(c.images_.size());
  const int S = eng.model().tile_size();
  c.pixels_ = Tensor::empty(DType::kF32, Shape{n, 3, S, S});
  const size_t tile_bytes = static_cast<size_t>(3) * S * S * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    auto px = eng.preprocess(c.images_[static_cast<size_t>(i)], /*image_splitting=*/0, nullptr, nullptr);
    if (!px.ok()) return px.status().with_context("calibration image " + std::to_string(i));
    if (px->nbytes() != tile_bytes)
      return Internal("calibration image " + std::to_string(i) + ": preprocessing without splitting gave " +
                      px->shape().to_string());
    std::memcpy(static_cast<char*>(c.pixels_.data()) + static_cast<size_t>(i) * tile_bytes, px->data(), tile_bytes);
  }
  GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  g.image_splitting = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto r = eng.describe({c.images_[static_cast<size_t>(i)]}, prompt, g);
    if (!r.ok()) return r.status().with_context("calibration image " + std::to_string(i));
    c.ref_text_.push_back(r->text);
    c.ref_tokens_.push_back(r->tokens);
    if (progress) progress("reference answers", i + 1, n);
  }
  c.ref_logits_.resize(static_cast<size_t>(n));
  EV_RETURN_IF_ERROR(c.teacher_forced(
      eng, {},
      [&c](size_t i, const Tensor& logits) -> Status {
        const float* p = logits.data_as<const float>();
        c.ref_logits_[i].assign(p, p + logits.numel());
        return Status::Ok();
      },
      progress ? HeadProgress([&](const std::string&, int64_t d, int64_t t) { progress("reference distributions", d, t); })
               : HeadProgress()));
  return c;
}

Status HeadCalibration::teacher_forced(Engine& eng, const HeadMask& mask,
                                       const std::function<Status(size_t, const Tensor&)>& fn,
                                       const HeadProgress& progress, const ExecOptions& exec) const {
  const int64_t n = static_cast<int64_t>(images_.size());
  const int64_t S = pixels_.dim(2);
  if (eng.model().tile_size() != S)
    return ShapeMismatch("head calibration was made at tile size " + std::to_string(S) + ", the model's is " +
                         std::to_string(eng.model().tile_size()));
  if (eng.model().vocab_size() != vocab_)
    return ShapeMismatch("head calibration was made with a vocabulary of " + std::to_string(vocab_) +
                         " tokens, the model has " + std::to_string(eng.model().vocab_size()));
  MaskScope scope(eng, mask);
  std::vector<int32_t> prompt_ids;
  int64_t prompt_tokens_per_tile = -1;
  for (int64_t b0 = 0; b0 < n; b0 += kBatch) {
    const int64_t b1 = std::min(n, b0 + kBatch);
    EV_ASSIGN_OR_RETURN(Tensor px, pixels_.slice_rows(b0 * 3 * S, b1 * 3 * S).reshape(Shape{b1 - b0, 3, S, S}));
    EV_ASSIGN_OR_RETURN(Tensor emb, eng.encode_tiles(px, nullptr, exec));  // [b, T, H]
    const int64_t T = emb.dim(1);
    if (T != prompt_tokens_per_tile) {
      // The prompt as generate_encoded() builds it for one unsplit image of T tokens.
      EV_ASSIGN_OR_RETURN(std::string text, eng.render_prompt(1, prompt_));
      EV_ASSIGN_OR_RETURN(std::string expanded,
                          expand_image_tokens(text, std::vector<ImageLayout>{ImageLayout{}}, static_cast<int>(T)));
      prompt_ids = eng.tokenizer().encode(expanded, /*add_special_tokens=*/true);
      prompt_tokens_per_tile = T;
    }
    for (int64_t i = b0; i < b1; ++i) {
      const auto& answer = ref_tokens_[static_cast<size_t>(i)];
      std::vector<int32_t> ids = prompt_ids;
      ids.insert(ids.end(), answer.begin(), answer.end());
      KvCache cache = eng.model().make_cache(static_cast<int64_t>(ids.size()) + 1);
      const Tensor e = emb.slice_rows((i - b0) * T, (i - b0 + 1) * T);
      // Rows: the last prompt position (predicting the answer's first token) .. the answer's last token.
      auto logits = eng.forward_text(ids, e, cache, static_cast<int64_t>(answer.size()) + 1, exec);
      if (!logits.ok()) return logits.status().with_context("calibration image " + std::to_string(i));
      EV_ASSIGN_OR_RETURN(Tensor lf, as_f32(*logits));
      EV_RETURN_IF_ERROR(fn(static_cast<size_t>(i), lf));
      if (progress) progress("frames", i + 1, n);
    }
  }
  return Status::Ok();
}

Status HeadCalibration::observe(Engine& eng, const ExecOptions& exec, const HeadProgress& progress) const {
  return teacher_forced(eng, {}, [](size_t, const Tensor&) { return Status::Ok(); }, progress, exec);
}

Result<double> HeadCalibration::kl(Engine& eng, const HeadMask& mask, std::vector<double>* per_image,
                                   const HeadProgress& progress, double* top1) const {
  std::vector<double> v(images_.size(), 0.0);
  int64_t agree = 0, positions = 0;
  EV_RETURN_IF_ERROR(teacher_forced(
      eng, mask,
      [&](size_t i, const Tensor& logits) -> Status {
        const std::vector<float>& ref = ref_logits_[i];
        if (static_cast<size_t>(logits.numel()) != ref.size())
          return Internal("calibration image " + std::to_string(i) + ": " + std::to_string(logits.numel()) +
                          " logits against " + std::to_string(ref.size()) + " of the reference");
        const int64_t rows = static_cast<int64_t>(ref.size()) / vocab_;
        double sum = 0;
        for (int64_t r = 0; r < rows; ++r) {
          bool same = false;
          sum += kl_logits(ref.data() + r * vocab_, logits.data_as<const float>() + r * vocab_, vocab_, &same);
          agree += same;
        }
        v[i] = rows > 0 ? sum / static_cast<double>(rows) : 0.0;
        positions += rows;
        return Status::Ok();
      },
      progress));
  double s = 0;
  for (double x : v) s += x;
  if (per_image) *per_image = v;
  if (top1) *top1 = positions > 0 ? static_cast<double>(agree) / static_cast<double>(positions) : 1.0;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

Result<std::vector<std::string>> HeadCalibration::answers(Engine& eng, const HeadMask& mask,
                                                          const HeadProgress& progress) const {
  MaskScope scope(eng, mask);
  GenerateOptions g;
  g.max_new_tokens = max_new_tokens_;
  g.image_splitting = 0;
  std::vector<std::string> out;
  const int64_t n = static_cast<int64_t>(images_.size());
  for (int64_t i = 0; i < n; ++i) {
    auto r = eng.describe({images_[static_cast<size_t>(i)]}, prompt_, g);
    if (!r.ok()) return r.status().with_context("calibration image " + std::to_string(i));
    out.push_back(r->text);
    if (progress) progress("answers", i + 1, n);
  }
  return out;
}

// ---- Selection ----

Result<int> heads_to_remove(const VisionConfig& v, std::optional<double> fraction, std::optional<int> heads) {
  int total = 0, removable = 0;
  for (int l = 0; l < v.num_hidden_layers; ++l) {
    total += v.heads_in_layer(l);
    removable += v.heads_in_layer(l) - 1;
  }
  if (fraction && heads) return InvalidArgument("give one of --remove FRACTION and --heads N, not both");
  if (!fraction && !heads) return InvalidArgument("give --remove FRACTION or --heads N: how many heads to remove");
  int n = 0;
  std::string arg;
  if (fraction) {
    arg = strf("--remove %g", *fraction);
    if (!(*fraction > 0.0 && *fraction < 1.0))
      return InvalidArgument(arg + ": the fraction of heads to remove must be in (0, 1)");
    n = static_cast<int>(std::lround(*fraction * total));
    if (n < 1) return InvalidArgument(arg + strf(": round(%g x %d heads) removes no head", *fraction, total));
  } else {
    arg = "--heads " + std::to_string(*heads);
    if (*heads < 1) return InvalidArgument(arg + ": the number of heads to remove must be at least 1");
    n = *heads;
  }
  if (n > removable)
    return InvalidArgument(arg + strf(": removing %d of %d heads would leave a layer without heads; at most %d can go "
                                      "(one head stays in each of the %d layers)",
                                      n, total, removable, v.num_hidden_layers));
  return n;
}

Result<std::vector<HeadRef>> rank_heads_one_shot(const std::vector<std::vector<double>>& importance, int n_remove) {
  std::vector<std::tuple<double, int, int>> all;
  std::vector<int> left(importance.size());
  for (size_t l = 0; l < importance.size(); ++l) {
    left[l] = static_cast<int>(importance[l].size());
    for (size_t h = 0; h < importance[l].size(); ++h)
      all.emplace_back(importance[l][h], static_cast<int>(l), static_cast<int>(h));
  }
  std::sort(all.begin(), all.end());
  std::vector<HeadRef> out;
  for (const auto& [imp, l, h] : all) {
    if (static_cast<int>(out.size()) == n_remove) break;
    if (left[static_cast<size_t>(l)] <= 1) continue;
    --left[static_cast<size_t>(l)];
    out.push_back({l, h});
  }
  if (static_cast<int>(out.size()) < n_remove)
    return InvalidArgument(strf("only %zu heads can be removed with one kept per layer, %d asked", out.size(), n_remove));
  return out;
}

Result<HeadSelection> select_heads(Engine& eng, const HeadCalibration& cal, int n_remove, bool iterative,
                                   const HeadProgress& progress) {
  const VisionConfig& v = eng.config().vision;
  EV_ASSIGN_OR_RETURN(const int n, heads_to_remove(v, std::nullopt, n_remove));
  const int L = v.num_hidden_layers;
  int total = 0;
  for (int l = 0; l < L; ++l) total += v.heads_in_layer(l);
  // Masked configurations to measure: every head once, then (iterative) each later round's candidates.
  int64_t configs = total;
  if (iterative)
    for (int r = 1; r < n; ++r) configs += total - r;
  int64_t done = 0;
  auto measure = [&](const std::vector<HeadRef>& masked) -> Result<double> {
    const std::string what = strf("scoring %lld/%lld (%s%d.%d masked)", static_cast<long long>(done + 1),
                                  static_cast<long long>(configs), masked.size() > 1 ? "... " : "", masked.back().layer,
                                  masked.back().head);
    auto r = cal.kl(eng, head_mask_for(v, masked), nullptr,
                    progress ? HeadProgress([&](const std::string&, int64_t d, int64_t t) { progress(what, d, t); })
                             : HeadProgress());
    ++done;
    return r;
  };

  HeadSelection s;
  s.iterative = iterative;
  s.importance.resize(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < v.heads_in_layer(l); ++h) {
      EV_ASSIGN_OR_RETURN(double k, measure({{l, h}}));
      s.importance[static_cast<size_t>(l)].push_back(k);
    }
  if (!iterative) {
    EV_ASSIGN_OR_RETURN(s.removed, rank_heads_one_shot(s.importance, n));
    for (const HeadRef& h : s.removed) s.step_kl.push_back(s.importance[static_cast<size_t>(h.layer)][static_cast<size_t>(h.head)]);
    return s;
  }
  // Round 1 is the single-head ranking; later rounds mask the heads removed so far plus each candidate.
  std::vector<int> left(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) left[static_cast<size_t>(l)] = v.heads_in_layer(l);
  std::set<HeadRef> gone;
  for (int round = 0; round < n; ++round) {
    double best = 0;
    HeadRef pick{-1, -1};
    for (int l = 0; l < L; ++l) {
      if (left[static_cast<size_t>(l)] <= 1) continue;
      for (int h = 0; h < v.heads_in_layer(l); ++h) {
        if (gone.count({l, h})) continue;
        double k = 0;
        if (round == 0) {
          k = s.importance[static_cast<size_t>(l)][static_cast<size_t>(h)];
        } else {
          std::vector<HeadRef> masked = s.removed;
          masked.push_back({l, h});
          EV_ASSIGN_OR_RETURN(k, measure(masked));
        }
        if (pick.layer < 0 || k < best) {
          best = k;
          pick = {l, h};
        }
      }
    }
    if (pick.layer < 0) return Internal("iterative head selection ran out of candidates");
    s.removed.push_back(pick);
    s.step_kl.push_back(best);
    gone.insert(pick);
    --left[static_cast<size_t>(pick.layer)];
  }
  return s;
}

// ---- Export ----

namespace {

// Keeps the row blocks [h D, (h+1) D) of heads `keep` of a [H*D] or [H*D, E] tensor (any dtype, bytes copied).
Tensor keep_head_rows(const Tensor& t, const std::vector<int>& keep, int64_t D) {
  const int64_t cols = t.ndim() == 1 ? 1 : t.dim(1);
  const size_t row = static_cast<size_t>(cols) * dtype_size(t.dtype());
  const int64_t K = static_cast<int64_t>(keep.size());
  Tensor o = Tensor::empty(t.dtype(), t.ndim() == 1 ? Shape{K * D} : Shape{K * D, cols});
  for (int64_t k = 0; k < K; ++k)
    std::memcpy(static_cast<char*>(o.data()) + static_cast<size_t>(k * D) * row,
                static_cast<const char*>(t.data()) + static_cast<size_t>(keep[static_cast<size_t>(k)] * D) * row,
                static_cast<size_t>(D) * row);
  return o;
}

// Keeps the column blocks [h D, (h+1) D) of heads `keep` of an [E, H*D] tensor.
Tensor keep_head_cols(const Tensor& t, const std::vector<int>& keep, int64_t D) {
  const int64_t E = t.dim(0), A = t.dim(1), K = static_cast<int64_t>(keep.size());
  const size_t es = dtype_size(t.dtype());
  Tensor o = Tensor::empty(t.dtype(), Shape{E, K * D});
  for (int64_t r = 0; r < E; ++r)
    for (int64_t k = 0; k < K; ++k)
      std::memcpy(static_cast<char*>(o.data()) + static_cast<size_t>(r * K * D + k * D) * es,
                  static_cast<const char*>(t.data()) + static_cast<size_t>(r * A + keep[static_cast<size_t>(k)] * D) * es,
                  static_cast<size_t>(D) * es);
  return o;
}

bool is_weight_file(const std::string& name) {
  return name == "model.safetensors.index.json" ||
         (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0);
}

}  // namespace

Status prepare_derived_dir(const std::string& model_dir, const std::string& out_dir, const char* what) {
  if (out_dir.empty()) return InvalidArgument("--out: no output directory given");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir))
    return IoError("--out " + out_dir + ": cannot create the directory" + (ec ? ": " + ec.message() : ""));
  if (fs::equivalent(model_dir, out_dir, ec))
    return InvalidArgument("--out " + out_dir + " is the model directory itself: write the " + what +
                           " model elsewhere");
  return Status::Ok();
}

Result<nlohmann::ordered_json> read_ordered_config(const std::string& model_dir) {
  EV_ASSIGN_OR_RETURN(std::string text, read_text_file(model_dir + "/config.json"));
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const std::exception& e) {
    return Corrupt(model_dir + "/config.json: " + e.what());
  }
}

Status write_derived_model(const std::string& model_dir, const TensorStore& store, const std::string& out_dir,
                           const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const nlohmann::ordered_json& config) {
  std::map<std::string, std::string> meta;
  if (!store.files().empty()) meta = store.files().front()->metadata();
  EV_RETURN_IF_ERROR(write_safetensors(out_dir + "/model.safetensors", tensors, meta));
  EV_RETURN_IF_ERROR(write_text_file(out_dir + "/config.json", config.dump(2) + "\n"));
  // Every other regular file (tokenizer, processor configs, chat template, README...).
  std::error_code ec;
  for (const auto& ent : fs::directory_iterator(model_dir, ec)) {
    if (!ent.is_regular_file()) continue;
    const std::string name = ent.path().filename().string();
    if (name == "config.json" || is_weight_file(name)) continue;
    fs::copy_file(ent.path(), fs::path(out_dir) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) return IoError("copying " + ent.path().string() + " to " + out_dir + ": " + ec.message());
  }
  if (ec) return IoError(model_dir + ": cannot list the directory: " + ec.message());
  auto check = load_vlm_config(out_dir);
  if (!check.ok()) return check.status().with_context("the written config does not load");
  return Status::Ok();
}

Status write_head_pruned_model(const std::string& model_dir, const std::string& out_dir,
                               const std::vector<HeadRef>& removed, const nlohmann::json& record) {
  EV_ASSIGN_OR_RETURN(VlmConfig cfg, load_vlm_config(model_dir));
  const VisionConfig& v = cfg.vision;
  const int L = v.num_hidden_layers;
  const int64_t D = v.head_dim(), E = v.hidden_size;
  std::set<HeadRef> rm;
  for (const HeadRef& h : removed) {
    if (h.layer < 0 || h.layer >= L)
      return InvalidArgument(strf("head %d.%d: the vision tower has %d layers", h.layer, h.head, L));
    if (h.head < 0 || h.head >= v.heads_in_layer(h.layer))
      return InvalidArgument(strf("head %d.%d: layer %d has %d heads", h.layer, h.head, h.layer, v.heads_in_layer(h.layer)));
    if (!rm.insert(h).second) return InvalidArgument(strf("head %d.%d is listed twice", h.layer, h.head));
  }
  std::vector<std::vector<int>> keep(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < v.heads_in_layer(l); ++h)
      if (!rm.count({l, h})) keep[static_cast<size_t>(l)].push_back(h);
    if (keep[static_cast<size_t>(l)].empty())
      return InvalidArgument(strf("removing all %d heads of layer %d would leave it without attention: keep at least one",
                                  v.heads_in_layer(l), l));
  }
  EV_RETURN_IF_ERROR(prepare_derived_dir(model_dir, out_dir, "pruned"));

  // Weights: every tensor of the store, the attention projections of layers with removed heads sliced.
  EV_ASSIGN_OR_RETURN(TensorStore store, TensorStore::open_dir(model_dir));
  static const std::regex kAttn(R"((^|.*\.)vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)$)");
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<int> found(static_cast<size_t>(L), 0);
  for (const std::string& name : store.names()) {
    auto t = store.get(name);
    if (!t.ok()) return t.status().with_context(model_dir);
    Tensor w = std::move(t).value();
    std::smatch m;
    if (std::regex_match(name, m, kAttn)) {
      const int l = std::stoi(m[2].str());
      const bool out_proj = m[3].str() == "out", weight = m[4].str() == "weight";
      if (l < L && !(out_proj && !weight)) {  // out_proj.bias [E] does not depend on the heads
        ++found[static_cast<size_t>(l)];
        const int64_t A = v.heads_in_layer(l) * D;
        const Shape want = out_proj ? Shape{E, A} : weight ? Shape{A, E} : Shape{A};
        if (w.shape() != want)
          return ShapeMismatch(model_dir + ": tensor '" + name + "' has shape " + w.shape().to_string() +
                               " but the config implies " + want.to_string());
        if (static_cast<int>(keep[static_cast<size_t>(l)].size()) < v.heads_in_layer(l))
          w = out_proj ? keep_head_cols(w, keep[static_cast<size_t>(l)], D) : keep_head_rows(w, keep[static_cast<size_t>(l)], D);
      }
    }
    tensors.emplace_back(name, std::move(w));
  }
  for (int l = 0; l < L; ++l)
    if (found[static_cast<size_t>(l)] != 7)
      return NotFound(strf("%s: vision layer %d: found %d of its 7 attention tensors "
                           "(vision_model.encoder.layers.%d.self_attn.{q,k,v}_proj.{weight,bias}, out_proj.weight)",
                           model_dir.c_str(), l, found[static_cast<size_t>(l)], l));
  // config.json, keys in their original order.
  EV_ASSIGN_OR_RETURN(nlohmann::ordered_json j, read_ordered_config(model_dir));
  std::vector<int> before, after;
  for (int l = 0; l < L; ++l) {
    before.push_back(v.heads_in_layer(l));
    after.push_back(static_cast<int>(keep[static_cast<size_t>(l)].size()));
  }
  nlohmann::ordered_json& vc = j["vision_config"];
  vc["num_attention_heads_per_layer"] = after;
  vc["head_dim"] = D;
  nlohmann::ordered_json rec = nlohmann::ordered_json::object();
  nlohmann::ordered_json rl = nlohmann::ordered_json::array();
  for (const HeadRef& h : rm) rl.push_back({h.layer, h.head});
  rec["removed"] = rl;
  rec["heads_before"] = before;
  rec["heads_after"] = after;
  rec["source"] = model_dir;
  const nlohmann::ordered_json extra = nlohmann::ordered_json::parse(record.dump());
  for (auto it = extra.begin(); it != extra.end(); ++it)
    if (!rec.contains(it.key())) rec[it.key()] = it.value();
  nlohmann::ordered_json& ed = j["edgevlm"];
  if (!ed.is_object()) ed = nlohmann::ordered_json::object();
  if (ed.contains("head_pruning")) rec["previous"] = ed["head_pruning"];
  ed["head_pruning"] = rec;
  return write_derived_model(model_dir, store, out_dir, tensors, j);
}

Result<HeadVerify> verify_head_pruned_model(const std::string& model_dir, const std::string& pruned_dir,
                                            const std::vector<HeadRef>& removed, const Tensor& pixels, int threads) {
  EngineOptions eo;
  eo.threads = threads;
  eo.precision = Precision::kF32;
  eo.vision_precision = Precision::kF32;
  eo.network_only = true;
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> a, Engine::load(model_dir, eo));
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> b, Engine::load(pruned_dir, eo));
  Tensor va, vb;
  Tensor ea, eb;
  {
    MaskScope scope(*a, head_mask_for(a->config().vision, removed));
    EV_ASSIGN_OR_RETURN(ea, a->encode_tiles(pixels, &va));
  }
  EV_ASSIGN_OR_RETURN(eb, b->encode_tiles(pixels, &vb));
  auto diff = [](const Tensor& x0, const Tensor& y0, double* abs_diff) -> Result<double> {
    EV_ASSIGN_OR_RETURN(Tensor x, as_f32(x0));
    EV_ASSIGN_OR_RETURN(Tensor y, as_f32(y0));
    if (x.shape() != y.shape())
      return ShapeMismatch("the pruned model's output " + y.shape().to_string() + " differs in shape from " +
                           x.shape().to_string());
    double m = 0, scale = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double p = x.data_as<const float>()[i], q = y.data_as<const float>()[i];
      m = std::max(m, std::fabs(p - q));
      scale = std::max(scale, std::fabs(p));
      if (!std::isfinite(q)) m = INFINITY;
    }
    if (abs_diff) *abs_diff = m;
    return scale > 0 ? m / scale : m;
  };
  HeadVerify r;
  r.frames = static_cast<int>(pixels.dim(0));
  EV_ASSIGN_OR_RETURN(r.max_rel_diff, diff(va, vb, &r.max_abs_diff));
  EV_ASSIGN_OR_RETURN(r.embeds_rel_diff, diff(ea, eb, nullptr));
  r.ok = r.max_rel_diff < kHeadPruneVerifyTolerance && r.embeds_rel_diff < kHeadPruneVerifyTolerance;
  return r;
}

// ---- The tool ----

void add_prune_heads_options(CLI::App& app, PruneHeadsOptions& o) {
  app.add_option("--model", o.model, "model directory (Hugging Face layout) of a road-scene model")->required();
  app.add_option("--out", o.out, "directory to write the head-pruned model to")->required();
  app.add_option_function<double>(
      "--remove", [&o](const double& f) { o.remove = f; }, "fraction of all vision heads to remove, in (0, 1)");
  app.add_option_function<int>("--heads", [&o](const int& n) { o.heads = n; }, "number of vision heads to remove");
  app.add_option("--calib-seed", o.calib_seed,
                 "first seed of the calibration scenarios (default 3000000: apart from training and evaluation seeds)");
  app.add_option("--calib-scenarios", o.calib_scenarios, "calibration scenarios");
  app.add_option("--every", o.every, "calibrate on every M-th frame");
  app.add_flag("--iterative", o.iterative,
               "re-measure the remaining heads after each removal (with the removed ones masked)");
  app.add_option("--max-tokens", o.max_tokens, "maximum tokens of a reference description");
  app.add_option("--precision", o.precision, "compute precision: auto, f32 or bf16");
  app.add_option("--threads", o.threads, "threads (0: all)");
  app.add_flag("--json", o.json, "print the JSON result instead of the table");
  app.add_flag_callback("--no-progress", [&o] { o.progress = false; }, "no status line on stderr");
  app.add_flag_callback("--no-head-accuracy", [&o] { o.head_accuracy = false; },
                        "skip the field accuracy of every single-head mask (greedy answers per head: the slow part)");
  app.add_option("--verify-frames", o.verify_frames, "calibration frames on which the written model is verified");
  app.add_option("--timing-rounds", o.timing_rounds, "times every frame goes through each model for the vision time");
}

Status check_prune_heads_options(const PruneHeadsOptions& o) {
  if (o.model.empty()) return InvalidArgument("--model is required");
  std::error_code ec;
  if (!fs::is_directory(o.model, ec)) return NotFound("--model " + o.model + ": no such directory");
  if (!fs::exists(fs::path(o.model) / "config.json", ec))
    return NotFound("--model " + o.model + ": no config.json there (not a model directory)");
  if (o.out.empty()) return InvalidArgument("--out is required");
  if (o.calib_scenarios < 1 || o.calib_scenarios > 100000)
    return InvalidArgument("--calib-scenarios must be in [1, 100000]");
  if (o.every < 1 || o.every > 1000000) return InvalidArgument("--every must be in [1, 10^6]");
  if (o.max_tokens < 1 || o.max_tokens > 4096) return InvalidArgument("--max-tokens must be in [1, 4096]");
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("--threads must be in [0, 1024]");
  if (o.verify_frames < 1 || o.verify_frames > 10000) return InvalidArgument("--verify-frames must be in [1, 10000]");
  if (o.timing_rounds < 1 || o.timing_rounds > 1000) return InvalidArgument("--timing-rounds must be in [1, 1000]");
  EV_ASSIGN_OR_RETURN(VlmConfig cfg, load_vlm_config(o.model));
  EV_RETURN_IF_ERROR(heads_to_remove(cfg.vision, o.remove, o.heads).status());
  // The output directory must be writable before minutes of calibration are spent.
  fs::create_directories(o.out, ec);
  if (ec || !fs::is_directory(o.out))
    return IoError("--out " + o.out + ": cannot create the directory" + (ec ? ": " + ec.message() : ""));
  if (fs::equivalent(o.model, o.out, ec))
    return InvalidArgument("--out " + o.out + " is the model directory itself: write the pruned model elsewhere");
  const std::string probe = (fs::path(o.out) / ".edgevlm-write-test").string();
  {
    std::ofstream f(probe);
    if (!f || !(f << "x") || !f.flush()) return IoError("--out " + o.out + ": the directory is not writable");
  }
  fs::remove(probe, ec);
  return Status::Ok();
}

Status sim_calibration_frames(const std::vector<sim::ScenarioSpec>& specs, int every, std::vector<Image>* images,
                              std::vector<std::map<std::string, std::string>>* truth) {
  for (const auto& spec : specs) {
    EV_ASSIGN_OR_RETURN(sim::Simulator simu, sim::Simulator::create(spec));
    sim::Frame f;
    sim::FrameTruth ft;
    for (int64_t fi = 0; fi < spec.frames; fi += every) {
      if (fi > 0) simu.skip(every - 1);
      if (!simu.next(&f, &ft)) break;
      images->push_back(sim_frame_image(f));
      truth->push_back(sim::description_fields(ft.state));
    }
  }
  return Status::Ok();
}

FieldScore score_fields(const std::vector<std::string>& answers,
                        const std::vector<std::map<std::string, std::string>>& truth) {
  FieldScore s;
  int64_t ok = 0, exact = 0;
  for (size_t i = 0; i < answers.size(); ++i) {
    auto got = sim::parse_description(answers[i]);
    if (!got.ok()) ++s.unparsed;
    bool all = got.ok();
    for (const char* f : sim::kDescriptionFields) {
      const bool hit = got.ok() && got->count(f) && got->at(f) == truth[i].at(f);
      ok += hit;
      all = all && hit;
    }
    exact += all;
  }
  const double n = static_cast<double>(std::max<size_t>(answers.size(), 1));
  s.mean = static_cast<double>(ok) / (n * static_cast<double>(sim::kDescriptionFields.size()));
  s.exact = static_cast<double>(exact) / n;
  return s;
}

namespace {

nlohmann::json ms_json(std::vector<double> s) {
  return {{"p50", 1e3 * quantile(s, 0.5)}, {"p10", 1e3 * quantile(s, 0.1)}, {"p90", 1e3 * quantile(s, 0.9)}};
}

}  // namespace

Result<nlohmann::json> prune_heads_json(const PruneHeadsOptions& o) {
  EV_RETURN_IF_ERROR(check_prune_heads_options(o));
  EV_ASSIGN_OR_RETURN(VlmConfig cfg, load_vlm_config(o.model));
  EV_ASSIGN_OR_RETURN(const int n_remove, heads_to_remove(cfg.vision, o.remove, o.heads));
  const double t0 = now_s();
  EvalOptions eo;
  eo.model = o.model;
  eo.seed = o.calib_seed;
  eo.scenarios = o.calib_scenarios;
  eo.every = o.every;
  eo.max_tokens = o.max_tokens;
  eo.precision = o.precision;
  eo.threads = o.threads;
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> eng, eval_engine(eo));
  const VisionConfig& v = eng->config().vision;
  const int L = v.num_hidden_layers;
  const int S = eng->model().tile_size();
  EV_ASSIGN_OR_RETURN(std::vector<sim::ScenarioSpec> specs, eval_scenarios(eo, S));

  StatusLine sl("prune-heads", o.progress);
  std::string stage;
  const HeadProgress prog = [&](const std::string& what, int64_t d, int64_t t) {
    sl.update("%s%s %lld/%lld, %.0f s", stage.c_str(), what.c_str(), static_cast<long long>(d),
              static_cast<long long>(t), now_s() - t0);
  };

  // 1. Calibration frames and their truth.
  std::vector<Image> images;
  std::vector<std::map<std::string, std::string>> truth;
  EV_RETURN_IF_ERROR(sim_calibration_frames(specs, o.every, &images, &truth));
  if (images.empty()) return InvalidArgument("no calibration frame");
  const std::string prompt = eng->describe_prompt();

  // 2. Reference answers and distributions.
  EV_ASSIGN_OR_RETURN(HeadCalibration cal, HeadCalibration::create(*eng, images, prompt, o.max_tokens, prog));
  const FieldScore ref_score = score_fields(cal.reference_answers(), truth);

  // 3-4. Importance and selection.
  EV_ASSIGN_OR_RETURN(HeadSelection sel, select_heads(*eng, cal, n_remove, o.iterative, prog));

  // Field accuracy with each head masked alone.
  std::vector<std::vector<double>> head_acc(static_cast<size_t>(L));
  if (o.head_accuracy) {
    int total = 0, k = 0;
    for (int l = 0; l < L; ++l) total += v.heads_in_layer(l);
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < v.heads_in_layer(l); ++h) {
        stage = strf("field accuracy %d/%d (%d.%d masked): ", ++k, total, l, h);
        EV_ASSIGN_OR_RETURN(std::vector<std::string> ans, cal.answers(*eng, head_mask_for(v, {{l, h}}), prog));
        head_acc[static_cast<size_t>(l)].push_back(score_fields(ans, truth).mean);
      }
    stage.clear();
  }

  // 5. Export.
  sl.update("writing %s", o.out.c_str());
  nlohmann::json steps = nlohmann::json::array();
  for (size_t i = 0; i < sel.removed.size(); ++i)
    steps.push_back({{"layer", sel.removed[i].layer}, {"head", sel.removed[i].head}, {"kl", sel.step_kl[i]}});
  const nlohmann::json calib = {{"seed", o.calib_seed},   {"scenarios", o.calib_scenarios},
                                {"every", o.every},       {"frames", cal.size()},
                                {"prompt", prompt},       {"max_new_tokens", o.max_tokens},
                                {"precision", eng->precision_label()}};
  nlohmann::json record = {
      {"method", o.iterative ? "iterative" : "one-shot"},
      {"importance", sel.importance},
      {"importance_measure",
       "mean over frames and answer positions of KL(unmasked || head masked alone) of the next-token distribution, "
       "teacher-forced along the unmasked model's greedy answer"},
      {"steps", steps},
      {"calibration", calib}};
  EV_RETURN_IF_ERROR(write_head_pruned_model(o.model, o.out, sel.removed, record));

  // 6. Verification: the written model against the masked original, f32 vision arithmetic.
  sl.update("verifying %s", o.out.c_str());
  const int64_t nv = std::min<int64_t>(o.verify_frames, static_cast<int64_t>(cal.size()));
  EV_ASSIGN_OR_RETURN(Tensor vpx, cal.pixels().slice_rows(0, nv * 3 * S).reshape(Shape{nv, 3, S, S}));
  EV_ASSIGN_OR_RETURN(HeadVerify ver, verify_head_pruned_model(o.model, o.out, sel.removed, vpx, o.threads));
  const std::string ver_line =
      strf("verify: the written model's vision output against the original's with the removed heads masked, %d "
           "frames, f32: max abs diff %.3g, relative %.3g (connector %.3g), tolerance %.0e: %s",
           ver.frames, ver.max_abs_diff, ver.max_rel_diff, ver.embeds_rel_diff, kHeadPruneVerifyTolerance,
           ver.ok ? "ok" : "FAILED");
  if (!ver.ok) {
    sl.done();
    std::fprintf(stderr, "%s\n", ver_line.c_str());
    return Internal(o.out + ": the written model does not reproduce the masked original (" + ver_line + ")");
  }

  // 7. The pruned model on the calibration frames.
  EvalOptions po = eo;
  po.model = o.out;
  EV_ASSIGN_OR_RETURN(std::unique_ptr<Engine> pruned, eval_engine(po));
  stage = "pruned model KL: ";
  EV_ASSIGN_OR_RETURN(double kl_pruned, cal.kl(*pruned, {}, nullptr, prog));
  stage = "masked original KL: ";
  EV_ASSIGN_OR_RETURN(double kl_masked, cal.kl(*eng, head_mask_for(v, sel.removed), nullptr, prog));
  stage = "pruned model answers: ";
  EV_ASSIGN_OR_RETURN(std::vector<std::string> pruned_ans, cal.answers(*pruned, {}, prog));
  const FieldScore pr_score = score_fields(pruned_ans, truth);
  stage.clear();

  // Vision time, round-robin on the same frames (the order alternates so neither model always runs first), and
  // the fast head's agreement.
  std::vector<double> t_orig, t_pruned;
  double fh_diff = 0;
  int64_t fh_n = 0, fh_agree = 0;
  const FastHead* fh = eng->fast_head();
  for (Engine* e : {eng.get(), pruned.get()}) EV_RETURN_IF_ERROR(e->encode_images({images[0]}, 0).status());  // warm-up
  const int64_t nt = static_cast<int64_t>(images.size()) * o.timing_rounds;
  for (int64_t k = 0; k < nt; ++k) {
    const Image& img = images[static_cast<size_t>(k % static_cast<int64_t>(images.size()))];
    EncodedImages ea, eb;
    for (int pass = 0; pass < 2; ++pass) {
      const bool orig_now = (pass == 0) == (k % 2 == 0);
      EV_ASSIGN_OR_RETURN(EncodedImages enc, (orig_now ? eng : pruned)->encode_images({img}, 0));
      (orig_now ? t_orig : t_pruned).push_back(enc.vision_s);
      (orig_now ? ea : eb) = std::move(enc);
    }
    if (fh && !ea.fast_head.empty() && !eb.fast_head.empty())
      for (size_t c = 0; c < ea.fast_head[0].size(); ++c) {
        fh_diff += std::fabs(ea.fast_head[0][c] - eb.fast_head[0][c]);
        fh_agree += (ea.fast_head[0][c] >= fh->config().threshold) == (eb.fast_head[0][c] >= fh->config().threshold);
        ++fh_n;
      }
    prog("vision time", k + 1, nt);
  }
  sl.done();

  nlohmann::json j;
  j["tool"] = "prune-heads";
  j["model"] = o.model;
  j["out"] = o.out;
  j["precision"] = eng->precision_label();
  j["calibration"] = calib;
  j["method"] = o.iterative ? "iterative" : "one-shot";
  j["layers"] = L;
  j["head_dim"] = v.head_dim();
  std::vector<int> before, kept;
  int total = 0;
  for (int l = 0; l < L; ++l) {
    before.push_back(v.heads_in_layer(l));
    total += v.heads_in_layer(l);
    int k = v.heads_in_layer(l);
    for (const HeadRef& h : sel.removed) k -= h.layer == l;
    kept.push_back(k);
  }
  j["heads_before"] = before;
  j["heads_kept"] = kept;
  j["heads_total"] = total;
  j["importance"] = sel.importance;
  if (o.head_accuracy) {
    std::vector<std::vector<double>> delta = head_acc;
    for (auto& row : delta)
      for (double& x : row) x -= ref_score.mean;
    j["head_field_accuracy"] = head_acc;
    j["head_field_accuracy_change"] = delta;
  }
  nlohmann::json rm = nlohmann::json::array();
  for (const HeadRef& h : sel.removed) rm.push_back({h.layer, h.head});
  j["removed"] = rm;
  j["steps"] = steps;
  j["original"] = {{"kl", 0.0},
                   {"mean_field_accuracy", ref_score.mean},
                   {"exact_match", ref_score.exact},
                   {"unparsed", ref_score.unparsed},
                   {"vision_ms", ms_json(t_orig)}};
  j["pruned"] = {{"kl", kl_pruned},
                 {"kl_masked_original", kl_masked},
                 {"mean_field_accuracy", pr_score.mean},
                 {"exact_match", pr_score.exact},
                 {"unparsed", pr_score.unparsed},
                 {"vision_ms", ms_json(t_pruned)}};
  if (fh_n > 0)
    j["fast_head"] = {{"mean_abs_prob_change", fh_diff / static_cast<double>(fh_n)},
                      {"decision_agreement", static_cast<double>(fh_agree) / static_cast<double>(fh_n)}};
  j["verify"] = {{"frames", ver.frames},           {"max_abs_diff", ver.max_abs_diff},
                 {"max_rel_diff", ver.max_rel_diff}, {"connector_rel_diff", ver.embeds_rel_diff},
                 {"tolerance", kHeadPruneVerifyTolerance}, {"precision", "f32"},
                 {"ok", ver.ok}};
  j["verify_line"] = ver_line;
  j["wall_s"] = now_s() - t0;
  return j;
}

std::string prune_heads_table(const nlohmann::json& j) {
  const auto& c = j.at("calibration");
  std::string o = strf("edgevlm prune-heads: %s -> %s (%s), %s, removed %zu of %d heads\n",
                       j.value("model", "").c_str(), j.value("out", "").c_str(), j.value("precision", "").c_str(),
                       j.value("method", "").c_str(), j.at("removed").size(), j.value("heads_total", 0));
  o += strf("calibration: %lld frames (every %d of %d scenarios from seed %llu), prompt \"%s\"\n\n",
            static_cast<long long>(c.value("frames", 0)), c.value("every", 0), c.value("scenarios", 0),
            static_cast<unsigned long long>(c.value("seed", uint64_t{0})), c.value("prompt", "").c_str());
  std::map<std::pair<int, int>, size_t> order;
  for (size_t i = 0; i < j.at("removed").size(); ++i)
    order[{j["removed"][i][0].get<int>(), j["removed"][i][1].get<int>()}] = i + 1;
  const bool acc = j.contains("head_field_accuracy_change");
  const bool iter = j.value("method", "") == "iterative";
  std::vector<std::string> header = {"layer", "head", "KL masked alone"};
  if (acc) header.push_back("fields vs unmasked");
  header.push_back("removed");
  if (iter) header.push_back("KL when removed");
  TextTable t(header);
  const auto& imp = j.at("importance");
  for (size_t l = 0; l < imp.size(); ++l) {
    for (size_t h = 0; h < imp[l].size(); ++h) {
      std::vector<std::string> row = {strf("%zu", l), strf("%zu", h), strf("%.4f", imp[l][h].get<double>())};
      if (acc) row.push_back(strf("%+.1f", 100.0 * j["head_field_accuracy_change"][l][h].get<double>()));
      const auto it = order.find({static_cast<int>(l), static_cast<int>(h)});
      row.push_back(it == order.end() ? "" : strf("#%zu", it->second));
      if (iter) row.push_back(it == order.end() ? "" : strf("%.4f", j["steps"][it->second - 1].value("kl", 0.0)));
      t.add_row(row);
    }
    if (l + 1 < imp.size()) t.add_separator();
  }
  o += "head importance: mean KL (nats) of the next-token distribution with the head masked alone, teacher-forced\n"
       "along the unmasked model's answers; field accuracy change (points) with it masked alone\n";
  o += t.render();
  std::string kept;
  for (const auto& k : j.at("heads_kept")) kept += (kept.empty() ? "" : " ") + std::to_string(k.get<int>());
  std::string before;
  for (const auto& k : j.at("heads_before")) before += (before.empty() ? "" : " ") + std::to_string(k.get<int>());
  o += strf("\nheads per layer: %s -> %s (head_dim %d)\n\n", before.c_str(), kept.c_str(), j.value("head_dim", 0));
  const auto& a = j.at("original");
  const auto& b = j.at("pruned");
  const double ma = a["vision_ms"].value("p50", 0.0), mb = b["vision_ms"].value("p50", 0.0);
  TextTable r({"on the calibration frames", "original", "pruned", "change"});
  r.add_row({"KL vs original (nats)", "0", strf("%.4f", b.value("kl", 0.0)), ""});
  r.add_row({"mean field accuracy", fmt_percent(a.value("mean_field_accuracy", 0.0)),
             fmt_percent(b.value("mean_field_accuracy", 0.0)),
             strf("%+.1f", 100.0 * (b.value("mean_field_accuracy", 0.0) - a.value("mean_field_accuracy", 0.0)))});
  r.add_row({"exact match", fmt_percent(a.value("exact_match", 0.0)), fmt_percent(b.value("exact_match", 0.0)),
             strf("%+.1f", 100.0 * (b.value("exact_match", 0.0) - a.value("exact_match", 0.0)))});
  r.add_row({"vision p50 (ms)", strf("%.2f", ma), strf("%.2f", mb), strf("%.2fx", mb > 0 ? ma / mb : 0.0)});
  r.add_row({"vision p10 / p90 (ms)",
             strf("%.2f / %.2f", a["vision_ms"].value("p10", 0.0), a["vision_ms"].value("p90", 0.0)),
             strf("%.2f / %.2f", b["vision_ms"].value("p10", 0.0), b["vision_ms"].value("p90", 0.0)), ""});
  o += r.render();
  if (j.contains("fast_head"))
    o += strf("fast head: mean |probability change| %.4f, thresholded decisions agree %s\n",
              j["fast_head"].value("mean_abs_prob_change", 0.0),
              fmt_percent(j["fast_head"].value("decision_agreement", 0.0)).c_str());
  o += j.value("verify_line", "") + "\n";
  return o;
}

Status run_prune_heads(const PruneHeadsOptions& o) {
  EV_ASSIGN_OR_RETURN(nlohmann::json j, prune_heads_json(o));
  if (o.json)
    std::printf("%s\n", j.dump(2).c_str());
  else
    std::printf("%s", prune_heads_table(j).c_str());
  return Status::Ok();
}

}  // namespace ev
