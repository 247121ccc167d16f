// Shared helpers of the measuring tools (bench, profile): summary statistics of repeated runs, graph cost
// accounting (FLOPs, bytes at the compute precision, roofline), plain-text tables, a terminal status line,
// SVG pictures (bar chart + roofline), temporary directories and peak-RSS bookkeeping.
//
// Nothing here measures time itself; bench.cpp / profile.cpp do, and hand the numbers to these helpers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "graph/backend.h"
#include "graph/graph.h"
#include "kernels/cpu/ceilings.h"

namespace ev {

// ---- Statistics of repeated runs ----

struct RunStats {
  int n = 0;
  double median = 0, min = 0, max = 0, mean = 0, p90 = 0;
};
// Median (mean of the two middle values for even n), min, max, mean and the 90th percentile (linear
// interpolation between closest ranks, numpy's default). All zero for an empty input.
RunStats summarize(std::vector<double> v);
// {"median_s", "min_s", "p90_s", "max_s", "mean_s", "runs"} (`suffix` replaces "_s", e.g. "" or "_tok_s").
nlohmann::json to_json(const RunStats& s, const std::string& suffix = "_s");
// The q-quantile (q in [0, 1]) with linear interpolation between closest ranks (numpy's default); 0 when empty.
double quantile(std::vector<double> v, double q);

// ---- Graph cost accounting ----

// Bytes a node moves when Linear weights are read at the compute precision: kF32 reads 4 bytes per weight
// (bf16/f16 weights are widened once at prepare time), kBF16 reads 2. Everything else as node_bytes().
double node_bytes_at(const Graph& g, const Node& n, Precision p);
// Bytes of the Linear weight (and bias) a node reads at the compute precision; 0 for other ops.
double node_weight_bytes_at(const Graph& g, const Node& n, Precision p);

struct GraphCost {
  double flops = 0;               // sum of node_flops
  double bytes = 0;               // sum of node_bytes_at
  double int8_linear_flops = 0;   // the part of linear_flops computed in int8
  double weight_bytes = 0;        // Linear weights + biases at the compute precision
  double linear_flops = 0;        // Linear nodes only
  int64_t nodes = 0;              // compute nodes (not inputs / reshapes)
};
// With `plan`, the Linears it names count at their planned precision (int8 weights always count as int8).
GraphCost graph_cost(const Graph& g, Precision p, const LinearPlan* plan = nullptr);
// The precision a Linear node computes in: int8 for an int8 weight, the plan's, else p.
Precision linear_precision(const Graph& g, const Node& n, Precision p, const LinearPlan* plan);

// The compute ceiling that applies to a node: Linear and Attention run their products in the compute precision
// (bf16 peak for kBF16, f32 peak for kF32); every other op computes in f32.
double node_peak_gflops(OpKind op, Precision p, const MachineCeilings& c);
// Roofline: attainable GFLOP/s = min(peak, intensity * bandwidth), intensity = flops / bytes.
double roofline_attainable(double flops, double bytes, double peak_gflops, double bw_gbs);

// "v.blk.3.q" -> "v.blk.3"; "t.blk.12.attn" -> "t.blk.12"; "v.patch_embd" -> "v"; "mm.proj" -> "mm".
std::string node_layer(const std::string& node_name);

// ---- Text tables ----

// A plain-text table: columns left-aligned for text, right-aligned for cells that look numeric.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header) : header_(std::move(header)) {}
  void add_row(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void add_separator() { rows_.emplace_back(); }
  std::string render(const std::string& indent = "") const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;  // an empty row is a separator line
};

// printf into a std::string.
std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// "1.23 s", "45.6 ms", "789 us" (3 significant digits).
std::string fmt_seconds(double s);
// "513.2 MB", "1.2 GB", "640 kB" (decimal units).
std::string fmt_bytes(double b);
// "12.3%".
std::string fmt_percent(double fraction);

// ---- Terminal status line ----

// A one-line progress display on stderr ("\r[bench] vision 3/10 0.53 s"), shown only when stderr is a terminal
// (isatty) and `enabled`; cleared by done() or the destructor.
class StatusLine {
 public:
  StatusLine(std::string tag, bool enabled);
  ~StatusLine();
  StatusLine(const StatusLine&) = delete;
  StatusLine& operator=(const StatusLine&) = delete;
  void update(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
  void done();
  bool active() const { return active_; }

 private:
  std::string tag_;
  bool active_ = false;
  bool shown_ = false;
};

// ---- SVG ----

struct SvgBar {
  std::string label;
  double value = 0;       // bar length (e.g. milliseconds)
  std::string value_text; // printed at the end of the bar
  std::string color;      // "#rrggbb"
};

struct SvgRoofPoint {
  std::string label;      // shown next to the point when `labelled`
  double intensity = 0;   // FLOP / byte (x)
  double gflops = 0;      // achieved (y)
  double radius = 4;
  std::string color;
  bool labelled = false;
};

struct SvgRoofline {
  std::string title;
  double bw_gbs = 0;                  // memory roof
  double peak_gflops = 0;             // the precision's compute roof (solid)
  std::string peak_label;             // "bf16 peak"
  double second_peak_gflops = 0;      // another roof drawn dashed (e.g. f32 peak), 0 for none
  std::string second_peak_label;
  std::vector<SvgRoofPoint> points;
};

struct SvgPanelRow {
  std::string bars_title;
  std::vector<SvgBar> bars;
  SvgRoofline roof;
};

struct SvgLegendItem {
  std::string label;
  std::string color;
};

// A self-contained SVG document: a title line, then per row a horizontal bar chart (left) and a log-log roofline
// plot (right), and a legend of colours at the bottom. Plain text, no external resources.
std::string render_profile_svg(const std::string& title, const std::vector<SvgPanelRow>& rows,
                               const std::vector<SvgLegendItem>& legend);
// A scatter plot with linear axes: one colour per series, each point labelled, a legend of series.
struct SvgScatterPoint {
  double x = 0, y = 0;
  std::string label;
};
struct SvgScatterSeries {
  std::string name;
  std::string color;
  std::vector<SvgScatterPoint> points;
};
std::string render_scatter_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                               const std::vector<SvgScatterSeries>& series);
// Panels stacked in one document (edgevlm validate): line plots with linear axes (one polyline per series,
// optional category tick labels on x and dashed horizontal reference lines, e.g. tolerances), then bar histograms.
struct SvgLineSeries {
  std::string name;
  std::string color;
  std::vector<SvgScatterPoint> points;  // drawn in x order; a point's label is its tooltip
  bool dashed = false;
};
struct SvgRefLine {
  double y = 0;
  std::string label;
};
struct SvgLinePanel {
  std::string title, x_label, y_label;
  std::vector<SvgLineSeries> series;
  std::vector<std::pair<double, std::string>> x_ticks;  // empty: numeric ticks
  std::vector<SvgRefLine> refs;
  // The y range covers every point and reference line, padded by 5% of its span (at least `min_span`).
  double min_span = 1e-6;
};
struct SvgHistogram {
  std::string title, x_label, y_label;
  std::string color;
  std::vector<std::string> bin_labels;
  std::vector<double> counts;
};
std::string render_panels_svg(const std::string& title, const std::vector<SvgLinePanel>& lines,
                              const std::vector<SvgHistogram>& histograms);
// The colour used for an op kind in every picture (stable across runs).
const char* op_color(OpKind k);
// XML text escaping (&, <, >, ", ').
std::string xml_escape(const std::string& s);

// ---- Files, directories, memory ----

// Writes `text` to `path` (kIoError naming the path on failure).
Status write_text_file(const std::string& path, const std::string& text);

// A directory created under /tmp (mkdtemp) and removed recursively when the object dies. Movable.
class TempDir {
 public:
  TempDir() = default;
  static Result<TempDir> create(const std::string& prefix);
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempDir& operator=(TempDir&& o) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Peak RSS bookkeeping that can exclude set-up work (the machine-ceiling probe's 256 MiB buffer, generating a
// random model): reset_peak_rss() asks Linux to restart the high-water mark (/proc/self/clear_refs "5");
// peak_rss_since_reset() reads VmHWM from /proc/self/status. When either is unavailable the process-lifetime
// peak (getrusage) is returned and *exact is set to false.
bool reset_peak_rss();
int64_t peak_rss_since_reset(bool* exact = nullptr);

}  // namespace ev
