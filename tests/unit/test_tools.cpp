// Tests of src/tools: random-weight models, bench and profile results, the SVG picture, and the shared helpers.
// No timing assertions: only structure, positivity and values that can be computed exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "graph/graph.h"
#include "kernels/cpu/ceilings.h"
#include "kernels/cpu/cpu_features.h"
#include "runtime/engine.h"
#include "tools/bench.h"
#include "tools/profile.h"
#include "tools/random_model.h"
#include "tools/report.h"

namespace ev {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool finite_f32(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.data_as<float>()[i])) return false;
  return true;
}

// ---- random_model ----

// u8 frames through encode_tiles: the normalisation folded into the patch embedding gives what the normalised
// f32 tiles give, and a frame of the wrong shape is refused by name. Bound 1e-2 of the largest output: with f32
// GEMMs the two differ by the fold's rounding only (7e-7 in the release build here); the sanitizer build here
// measures 4.5e-3, the size of a bf16 rounding of the GEMM inputs (which the frames' bytes survive exactly and the
// normalised tiles do not). A wrong fold (scale, offset or channel order) is off by O(1).
TEST(RandomModel, U8FramesMatchNormalisedTiles) {
  auto dir = TempDir::create("edgevlm-test-tiny-u8-");
  ASSERT_TRUE(dir.ok()) << dir.status().to_string();
  ASSERT_TRUE(write_random_model(dir->path(), "tiny", 11, DType::kF32).ok());
  Tensor fr = random_frames_u8(3, 64, 5);
  // What the processor does (preprocessor defaults: rescale 1/255 in double, mean = std = 0.5): CHW f32.
  Tensor px = Tensor::empty(DType::kF32, Shape{3, 3, 64, 64});
  for (int64_t b = 0; b < 3; ++b)
    for (int c = 0; c < 3; ++c)
      for (int64_t i = 0; i < 64 * 64; ++i) {
        const float x = static_cast<float>(static_cast<double>(fr.data_as<uint8_t>()[(b * 64 * 64 + i) * 3 + c]) / 255.0);
        px.data_as<float>()[(b * 3 + c) * 64 * 64 + i] = (x - 0.5f) / 0.5f;
      }
  for (Precision p : {Precision::kF32, Precision::kBF16}) {
    SCOPED_TRACE(precision_name(p));
    EngineOptions eo;
    eo.threads = 2;
    eo.network_only = true;
    eo.precision = p;
    auto eng = Engine::load(dir->path(), eo);
    ASSERT_TRUE(eng.ok()) << eng.status().to_string();
    auto a = (*eng)->encode_tiles(fr);
    auto b = (*eng)->encode_tiles(px);
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    ASSERT_EQ(a->shape(), b->shape());
    double md = 0, mr = 0;
    for (int64_t i = 0; i < a->numel(); ++i) {
      md = std::max(md, std::fabs(static_cast<double>(a->data_as<float>()[i]) - b->data_as<float>()[i]));
      mr = std::max(mr, std::fabs(static_cast<double>(b->data_as<float>()[i])));
    }
    EXPECT_LE(md / mr, 1e-2) << "max diff " << md << " of " << mr;
    std::printf("[u8 frames] %s: rel %.2e against the normalised tiles\n", precision_name(p), md / mr);
    auto bad = (*eng)->encode_tiles(random_frames_u8(1, 32, 1));
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("u8 frames must be [n, 64, 64, 3]"), std::string::npos)
        << bad.status().to_string();
  }
}

TEST(RandomModel, TinyLoadsAndRuns) {
  auto dir = TempDir::create("edgevlm-test-tiny-");
  ASSERT_TRUE(dir.ok()) << dir.status().to_string();
  ASSERT_TRUE(write_random_model(dir->path(), "tiny", 7, DType::kBF16).ok());

  EngineOptions eo;
  eo.threads = 2;
  eo.network_only = true;
  auto eng = Engine::load(dir->path(), eo);
  ASSERT_TRUE(eng.ok()) << eng.status().to_string();
  Engine& e = **eng;
  EXPECT_EQ(e.config().model_type, "idefics3");
  EXPECT_EQ(e.model().tile_size(), 64);
  EXPECT_EQ(e.model().tokens_per_tile(), 16);  // (64/8)^2 / 2^2

  // One tile through vision tower + connector.
  Tensor px = random_pixels(1, 64, 3);
  Tensor vout;
  auto emb = e.encode_tiles(px, &vout);
  ASSERT_TRUE(emb.ok()) << emb.status().to_string();
  EXPECT_EQ(emb->shape(), (Shape{1, 16, 64}));
  EXPECT_TRUE(finite_f32(*emb));
  // The vision tower ends in a LayerNorm with weight 1, bias 0: every row has mean 0 and variance ~1, which
  // checks that the norm weights were written as ones (not random) and that the values are sane.
  ASSERT_EQ(vout.shape(), (Shape{1, 64, 64}));
  const float* v = vout.data_as<float>();
  for (int r = 0; r < 64; r += 9) {
    double m = 0, s2 = 0;
    for (int c = 0; c < 64; ++c) m += v[r * 64 + c];
    m /= 64;
    for (int c = 0; c < 64; ++c) s2 += (v[r * 64 + c] - m) * (v[r * 64 + c] - m);
    EXPECT_NEAR(m, 0.0, 1e-3);
    EXPECT_NEAR(s2 / 64, 1.0, 0.05);
  }

  // A prefill of 5 tokens and one decode step.
  KvCache cache = e.model().make_cache(8);
  auto l0 = e.forward_text({1, 2, 3, 4, 5}, Tensor(), cache, 1);
  ASSERT_TRUE(l0.ok()) << l0.status().to_string();
  auto l1 = e.forward_text({6}, Tensor(), cache, 1);
  ASSERT_TRUE(l1.ok()) << l1.status().to_string();
  EXPECT_EQ(l1->shape(), (Shape{1, 512}));
  EXPECT_EQ(cache.size(), 6);
  EXPECT_TRUE(finite_f32(*l1));
  // Random weights still give non-degenerate logits.
  const float* lp = l1->data_as<float>();
  float lo = lp[0], hi = lp[0];
  for (int i = 0; i < 512; ++i) lo = std::min(lo, lp[i]), hi = std::max(hi, lp[i]);
  EXPECT_GT(hi - lo, 1e-3f);
}

TEST(RandomModel, SmolVlm256mConfigHasThePublishedShapes) {
  auto j = random_model_config("smolvlm-256m");
  ASSERT_TRUE(j.ok());
  auto c = parse_vlm_config(*j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->vision.hidden_size, 768);
  EXPECT_EQ(c->vision.intermediate_size, 3072);
  EXPECT_EQ(c->vision.num_hidden_layers, 12);
  EXPECT_EQ(c->vision.num_attention_heads, 12);
  EXPECT_EQ(c->vision.image_size, 512);
  EXPECT_EQ(c->vision.patch_size, 16);
  EXPECT_EQ(c->scale_factor, 4);
  EXPECT_EQ(c->image_tokens_per_tile(), 64);
  EXPECT_EQ(c->text.vocab_size, 49280);
  EXPECT_EQ(c->text.hidden_size, 576);
  EXPECT_EQ(c->text.intermediate_size, 1536);
  EXPECT_EQ(c->text.num_hidden_layers, 30);
  EXPECT_EQ(c->text.num_attention_heads, 9);
  EXPECT_EQ(c->text.num_key_value_heads, 3);
  EXPECT_EQ(c->text.head_dim, 64);
  EXPECT_FLOAT_EQ(c->text.rope_theta, 100000.f);
  EXPECT_FLOAT_EQ(c->text.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c->image_token_id, 49190);
  // The published checkpoint: 471 tensors, 256.5 M parameters (513 MB in bf16), connector [576, 12288].
  const auto shapes = idefics3_tensor_shapes(*c);
  EXPECT_EQ(shapes.size(), 471u);
  int64_t params = 0;
  for (const auto& [name, s] : shapes) {
    params += s.numel();
    if (name == "model.connector.modality_projection.proj.weight") {
      EXPECT_EQ(s, (Shape{576, 12288}));
    }
  }
  EXPECT_GT(params, 256'000'000);
  EXPECT_LT(params, 257'000'000);
}

TEST(RandomModel, DeterministicPerSeedAndNormalScale) {
  auto a = TempDir::create("edgevlm-test-a-");
  auto b = TempDir::create("edgevlm-test-b-");
  auto c = TempDir::create("edgevlm-test-c-");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ThreadPool one(1);
  ASSERT_TRUE(write_random_model(a->path(), "tiny", 11, DType::kF32, &one).ok());
  ASSERT_TRUE(write_random_model(b->path(), "tiny", 11, DType::kF32).ok());  // other thread count, same bytes
  ASSERT_TRUE(write_random_model(c->path(), "tiny", 12, DType::kF32).ok());
  const std::string fa = read_file(a->path() + "/model.safetensors");
  EXPECT_FALSE(fa.empty());
  EXPECT_EQ(fa, read_file(b->path() + "/model.safetensors"));
  EXPECT_NE(fa, read_file(c->path() + "/model.safetensors"));

  auto st = TensorStore::open_dir(a->path());
  ASSERT_TRUE(st.ok()) << st.status().to_string();
  // fc1 of layer 0: 128 x 64 values ~ normal(0, 0.02).
  auto w = st->get("model.vision_model.encoder.layers.0.mlp.fc1.weight");
  ASSERT_TRUE(w.ok());
  double m = 0, s2 = 0;
  const float* p = w->data_as<float>();
  for (int64_t i = 0; i < w->numel(); ++i) m += p[i];
  m /= static_cast<double>(w->numel());
  for (int64_t i = 0; i < w->numel(); ++i) s2 += (p[i] - m) * (p[i] - m);
  const double sd = std::sqrt(s2 / static_cast<double>(w->numel()));
  EXPECT_NEAR(m, 0.0, 0.002);
  EXPECT_NEAR(sd, 0.02, 0.002);
  // Norm weights 1, norm biases 0.
  auto ln = st->get("model.vision_model.encoder.layers.1.layer_norm2.weight");
  auto lb = st->get("model.vision_model.encoder.layers.1.layer_norm2.bias");
  auto rn = st->get("model.text_model.norm.weight");
  ASSERT_TRUE(ln.ok() && lb.ok() && rn.ok());
  EXPECT_EQ(ln->data_as<float>()[5], 1.0f);
  EXPECT_EQ(lb->data_as<float>()[5], 0.0f);
  EXPECT_EQ(rn->data_as<float>()[0], 1.0f);
  // Tied head: no lm_head tensor.
  EXPECT_FALSE(st->has("lm_head.weight"));
}

TEST(RandomModel, UnknownShapeIsRefusedByName) {
  auto d = TempDir::create("edgevlm-test-bad-");
  ASSERT_TRUE(d.ok());
  Status s = write_random_model(d->path(), "smolvlm-9000b", 1, DType::kBF16);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("smolvlm-9000b"), std::string::npos);
  EXPECT_NE(s.message().find("smolvlm-256m"), std::string::npos);
  EXPECT_EQ(write_random_model(d->path(), "tiny", 1, DType::kI32).code(), StatusCode::kInvalidArgument);
}

TEST(RandomModel, TempDirIsRemoved) {
  std::string path;
  {
    auto d = TempDir::create("edgevlm-test-rm-");
    ASSERT_TRUE(d.ok());
    path = d->path();
    ASSERT_TRUE(write_random_model(path, "tiny", 1, DType::kBF16).ok());
    EXPECT_TRUE(std::filesystem::exists(path + "/config.json"));
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

// ---- report helpers ----

TEST(Report, Summarize) {
  RunStats s = summarize({5, 1, 4, 2, 3});
  EXPECT_EQ(s.n, 5);
  EXPECT_DOUBLE_EQ(s.median, 3);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 5);
  EXPECT_DOUBLE_EQ(s.mean, 3);
  EXPECT_DOUBLE_EQ(s.p90, 4.6);  // numpy.percentile([1..5], 90)
  RunStats e = summarize({4, 1, 3, 2});
  EXPECT_DOUBLE_EQ(e.median, 2.5);
  EXPECT_DOUBLE_EQ(e.p90, 3.7);
  EXPECT_EQ(summarize({}).n, 0);
}

TEST(Report, NodeLayerAndCosts) {
  EXPECT_EQ(node_layer("v.blk.3.q"), "v.blk.3");
  EXPECT_EQ(node_layer("t.blk.12.attn_out"), "t.blk.12");
  EXPECT_EQ(node_layer("v.patch_embd"), "v");
  EXPECT_EQ(node_layer("mm.proj"), "mm");
  EXPECT_EQ(node_layer("logits"), "logits");

  // A Linear [4, 8] x [16, 8]^T with bf16 weights: 2*4*16*8 FLOPs; bytes at bf16 = x + y + 2 per weight + bias f32,
  // at f32 = 4 per weight.
  Graph g;
  TensorId x = g.input("x", Tensor::empty(DType::kF32, Shape{4, 8}));
  TensorId w = g.weight("w", Tensor::empty(DType::kBF16, Shape{16, 8}));
  TensorId b = g.weight("b", Tensor::empty(DType::kF32, Shape{16}));
  TensorId y = g.linear("y", x, w, b);
  ASSERT_TRUE(g.status().ok());
  const Node& n = g.node(y);
  EXPECT_DOUBLE_EQ(node_flops(g, n), 2.0 * 4 * 16 * 8);
  EXPECT_DOUBLE_EQ(node_bytes_at(g, n, Precision::kBF16), 4 * 8 * 4 + 4 * 16 * 4 + 16 * 8 * 2 + 16 * 4);
  EXPECT_DOUBLE_EQ(node_bytes_at(g, n, Precision::kF32), 4 * 8 * 4 + 4 * 16 * 4 + 16 * 8 * 4 + 16 * 4);
  GraphCost c = graph_cost(g, Precision::kBF16);
  EXPECT_EQ(c.nodes, 1);
  EXPECT_DOUBLE_EQ(c.linear_flops, 2.0 * 4 * 16 * 8);
  EXPECT_DOUBLE_EQ(c.weight_bytes, 16 * 8 * 2 + 16 * 4);

  MachineCeilings mc;
  mc.f32_gflops = 100;
  mc.bf16_gflops = 200;
  mc.mem_read_gbs = 10;
  EXPECT_EQ(node_peak_gflops(OpKind::kLinear, Precision::kBF16, mc), 200);
  EXPECT_EQ(node_peak_gflops(OpKind::kLinear, Precision::kF32, mc), 100);
  EXPECT_EQ(node_peak_gflops(OpKind::kGeluTanh, Precision::kBF16, mc), 100);
  EXPECT_DOUBLE_EQ(roofline_attainable(10, 10, 200, 10), 10);      // 1 FLOP/B: memory-bound
  EXPECT_DOUBLE_EQ(roofline_attainable(1000, 1, 200, 10), 200);    // compute-bound
}

TEST(Report, TableAlignsNumbersRight) {
  TextTable t({"name", "value"});
  t.add_row({"a", "1.5 ms"});
  t.add_row({"longer", "123.25 ms"});
  const std::string s = t.render();
  EXPECT_NE(s.find("a          1.5 ms\n"), std::string::npos) << s;
  EXPECT_NE(s.find("longer  123.25 ms\n"), std::string::npos) << s;
  EXPECT_EQ(fmt_seconds(0.532), "532 ms");
  EXPECT_EQ(fmt_seconds(1.5), "1.50 s");
  EXPECT_EQ(fmt_percent(0.8), "80.0%");
  EXPECT_EQ(xml_escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
}

// ---- bench / profile on the tiny shape ----

TEST(Bench, TinyJsonHasSaneNumbers) {
  BenchOptions o;
  o.shape = "tiny";
  o.threads = 2;
  o.repeats = 2;
  o.prefill_tokens = 8;
  o.decode_tokens = 3;
  o.ceilings_seconds = 0.05;
  o.progress = false;
  auto r = bench_json(o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const nlohmann::json& j = *r;
  for (const char* k : {"model", "precision", "ceilings", "load", "vision", "prefill", "decode", "memory", "targets"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["model"]["label"], "random:tiny");
  // auto: bf16 text; vision in whichever arithmetic this CPU runs faster.
  const std::string vp = gemm_precision_probe().bf16_faster ? "bf16" : "f32";
  const std::string tp = cpu_features().has_avx512_bf16() ? "bf16" : "f32";
  EXPECT_EQ(j["text_precision"], tp);
  EXPECT_EQ(j["vision_precision"], vp);
  EXPECT_EQ(j["vision"]["precision"], vp);
  EXPECT_EQ(j["precision"], vp == tp ? tp : "vision " + vp + " + text " + tp);
  EXPECT_GT(j["ceilings"]["f32_gflops"].get<double>(), 0);
  EXPECT_GT(j["ceilings"]["mem_read_gbs"].get<double>(), 0);
  EXPECT_GT(j["load"]["median_s"].get<double>(), 0);

  const auto& v = j["vision"];
  EXPECT_EQ(v["tile_size"], 64);
  EXPECT_EQ(v["runs"], 2);
  EXPECT_GT(v["median_s"].get<double>(), 0);
  EXPECT_LE(v["min_s"].get<double>(), v["median_s"].get<double>());
  EXPECT_LE(v["median_s"].get<double>(), v["p90_s"].get<double>());
  EXPECT_GT(v["gflops"].get<double>(), 0);
  EXPECT_GT(v["fraction_of_peak"].get<double>(), 0);
  EXPECT_GT(v["linear"]["gflops"].get<double>(), 0);
  EXPECT_TRUE(v["by_op"].contains("linear"));
  EXPECT_TRUE(v["by_op"].contains("attention"));
  // The vision FLOPs of the tiny shape, computed by hand: 64 patches, E = 64, F = 128, 2 layers, 4 heads.
  //   patch embedding 2*64*64*192; per layer: q,k,v,o 4 * 2*64*64*64, fc1 + fc2 2 * 2*64*128*64,
  //   attention 4*64*64*64, elementwise terms; connector 2*16*256*64. Linear FLOPs only:
  const double lin = 2.0 * 64 * 64 * 192 + 2 * (4 * 2.0 * 64 * 64 * 64 + 2 * 2.0 * 64 * 128 * 64) + 2.0 * 16 * 256 * 64;
  EXPECT_NEAR(v["linear"]["gflop"].get<double>(), lin * 1e-9, 1e-12);

  const auto& p = j["prefill"];
  EXPECT_EQ(p["tokens"], 8);
  EXPECT_GT(p["tokens_per_s"].get<double>(), 0);
  EXPECT_GT(p["gflops"].get<double>(), 0);

  const auto& d = j["decode"];
  EXPECT_EQ(d["tokens"], 3);
  EXPECT_GT(d["tokens_per_s"].get<double>(), 0);
  EXPECT_GT(d["gbs"].get<double>(), 0);
  // Weights a decode step streams at bf16: per layer q 64x64, k,v 32x64, o 64x64, gate/up/down 128x64 each;
  // the (tied) head 512x64. No biases.
  const double wb = 2.0 * (2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64) + 512 * 64);
  EXPECT_DOUBLE_EQ(d["weight_bytes_per_token"].get<double>(), wb);
  EXPECT_GT(d["bytes_per_token"].get<double>(), wb);  // plus the KV cache and activations

  EXPECT_GT(j["memory"]["peak_rss_bytes"].get<double>(), 0);
  EXPECT_TRUE(j["targets"].contains("vision_gemm_fraction"));
  EXPECT_TRUE(j["targets"].contains("decode_bandwidth_fraction"));
  EXPECT_FALSE(j["targets"].contains("vision_tile_s"));  // only stated for SmolVLM-256M
  EXPECT_TRUE(j["warnings"].empty()) << j["warnings"].dump();

  const std::string table = bench_table(j);
  EXPECT_NE(table.find("vision tile 64px"), std::string::npos) << table;
  EXPECT_NE(table.find("decode 3 tokens"), std::string::npos) << table;
  EXPECT_NE(table.find("mem bw"), std::string::npos) << table;
}

TEST(Bench, BadOptionsAreRefused) {
  BenchOptions o;
  o.shape = "tiny";
  o.progress = false;
  o.precision = "fp8";
  EXPECT_EQ(bench_json(o).status().code(), StatusCode::kInvalidArgument);
  o.precision = "bf16";
  o.stages = "vision,warp";
  auto r = bench_json(o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("warp"), std::string::npos);
  o.stages = "vision";
  o.repeats = 0;
  EXPECT_EQ(bench_json(o).status().code(), StatusCode::kInvalidArgument);
  o.repeats = 1;
  o.model = "/nonexistent/edgevlm-model";
  o.ceilings_seconds = 0.05;
  EXPECT_FALSE(bench_json(o).ok());
}

TEST(Profile, TinyJsonAndSvg) {
  ProfileOptions o;
  o.shape = "tiny";
  o.threads = 2;
  o.repeats = 1;
  o.prefill_tokens = 8;
  o.ceilings_seconds = 0.05;
  o.progress = false;
  o.precision = "f32";
  auto r = profile_json(o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const nlohmann::json& j = *r;
  ASSERT_EQ(j["parts"].size(), 3u);
  std::set<std::string> parts;
  for (const auto& p : j["parts"]) {
    parts.insert(p["part"].get<std::string>());
    EXPECT_GT(p["wall_s"].get<double>(), 0);
    EXPECT_GT(p["flops"].get<double>(), 0);
    EXPECT_GT(p["bytes"].get<double>(), 0);
    ASSERT_FALSE(p["by_op"].empty());
    ASSERT_FALSE(p["nodes"].empty());
    double share = 0;
    for (const auto& e : p["by_op"]) {
      share += e["share"].get<double>();
      EXPECT_GE(e["seconds"].get<double>(), 0);
    }
    EXPECT_NEAR(share, 1.0, 1e-9);
    // by_op is sorted by decreasing time.
    for (size_t i = 1; i < p["by_op"].size(); ++i)
      EXPECT_GE(p["by_op"][i - 1]["seconds"].get<double>(), p["by_op"][i]["seconds"].get<double>());
    // Node FLOPs add up to the part's FLOPs.
    double f = 0;
    for (const auto& n : p["nodes"]) f += n["flops"].get<double>();
    EXPECT_DOUBLE_EQ(f, p["flops"].get<double>());
  }
  EXPECT_EQ(parts, (std::set<std::string>{"vision", "prefill", "decode"}));
  // Vision layers are found: the embedding group, two blocks, the connector.
  std::set<std::string> layers;
  for (const auto& l : j["parts"][0]["by_layer"]) layers.insert(l["layer"].get<std::string>());
  EXPECT_TRUE(layers.count("v.blk.0") && layers.count("v.blk.1") && layers.count("mm")) << j["parts"][0]["by_layer"].dump();

  const std::string table = profile_table(j, 5);
  EXPECT_NE(table.find("== vision"), std::string::npos);
  EXPECT_NE(table.find("top 5 of"), std::string::npos);

  const std::string svg = profile_svg(j);
  ASSERT_GT(svg.size(), 100u);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  const std::string tail = "</svg>\n";
  EXPECT_EQ(svg.compare(svg.size() - tail.size(), tail.size(), tail), 0);
  for (const char* op : {">linear<", ">attention<", ">layer_norm<", ">rms_norm<", "f32 peak", "memory "})
    EXPECT_NE(svg.find(op), std::string::npos) << op;
  // Balanced elements: every <g> and <text> closed.
  auto count = [&](const std::string& s) {
    size_t n = 0;
    for (size_t p = svg.find(s); p != std::string::npos; p = svg.find(s, p + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("<text"), count("</text>"));
  EXPECT_EQ(count("<g "), count("</g>"));
  EXPECT_EQ(count("<svg"), 1u);
}

TEST(Profile, SinglePartOnly) {
  ProfileOptions o;
  o.shape = "tiny";
  o.threads = 1;
  o.repeats = 2;
  o.part = "decode";
  o.prefill_tokens = 4;
  o.ceilings_seconds = 0.05;
  o.progress = false;
  auto r = profile_json(o);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ((*r)["parts"].size(), 1u);
  EXPECT_EQ((*r)["parts"][0]["part"], "decode");
  o.part = "everything";
  EXPECT_EQ(profile_json(o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ev
