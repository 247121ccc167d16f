#include "tools/report.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/clock.h"

namespace ev {

// ---------------------------------------------------------------------------------------------------------------
// Statistics

RunStats summarize(std::vector<double> v) {
  RunStats s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.min = v.front();
  s.max = v.back();
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(n);
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  // numpy.percentile(v, 90), method "linear": rank 0.9 * (n - 1) between the two closest order statistics.
  const double rank = 0.9 * static_cast<double>(n - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(n - 1, lo + 1);
  s.p90 = v[lo] + (rank - static_cast<double>(lo)) * (v[hi] - v[lo]);
  return s;
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t i = static_cast<size_t>(pos);
  const double f = pos - static_cast<double>(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

nlohmann::json to_json(const RunStats& s, const std::string& suffix) {
  return nlohmann::json{{"median" + suffix, s.median}, {"min" + suffix, s.min}, {"p90" + suffix, s.p90},
                        {"max" + suffix, s.max},       {"mean" + suffix, s.mean}, {"runs", s.n}};
}

// ---------------------------------------------------------------------------------------------------------------
// Graph costs

namespace {
double precision_bytes(Precision p) { return p == Precision::kBF16 ? 2.0 : p == Precision::kInt8 ? 1.0 : 4.0; }
double numel_of(const Graph& g, TensorId id) { return static_cast<double>(g.shape(id).numel()); }
}  // namespace

Precision linear_precision(const Graph& g, const Node& n, Precision p, const LinearPlan* plan) {
  if (n.op != OpKind::kLinear || n.inputs.size() < 2) return p;
  const Node& w = g.node(n.inputs[1]);
  if (w.op == OpKind::kInput && w.bound.dtype() == DType::kI8) return Precision::kInt8;
  if (plan != nullptr && w.op == OpKind::kInput) {
    auto it = plan->precision.find(w.bound.name());
    if (it != plan->precision.end()) return it->second;
  }
  return p;
}

double node_weight_bytes_at(const Graph& g, const Node& n, Precision p) {
  if (n.op != OpKind::kLinear) return 0.0;
  // Packed weights are stored at the compute precision (int8: plus an f32 scale per output channel); the bias is
  // kept in f32 (gemm.h, PackedLinear).
  const Precision lp = linear_precision(g, n, p, nullptr);
  double b = numel_of(g, n.inputs[1]) * precision_bytes(lp);
  if (lp == Precision::kInt8) b += static_cast<double>(g.shape(n.inputs[1])[0]) * 4.0;
  if (n.inputs.size() > 2) b += numel_of(g, n.inputs[2]) * 4.0;
  return b;
}

double node_bytes_at(const Graph& g, const Node& n, Precision p) {
  if (n.op != OpKind::kLinear) return node_bytes(g, n);
  // x [.., K] read once, y [.., N] written once (f32), plus the packed weight and bias.
  const double x = numel_of(g, n.inputs[0]) * dtype_size(g.node(n.inputs[0]).out_dtype);
  const double y = static_cast<double>(n.out_shape.numel()) * dtype_size(n.out_dtype);
  return x + y + node_weight_bytes_at(g, n, p);
}

GraphCost graph_cost(const Graph& g, Precision p, const LinearPlan* plan) {
  GraphCost c;
  for (const Node& n : g.nodes) {
    if (n.op == OpKind::kInput || n.op == OpKind::kReshape) continue;
    ++c.nodes;
    const double f = node_flops(g, n);
    const Precision lp = linear_precision(g, n, p, plan);
    c.flops += f;
    c.bytes += node_bytes_at(g, n, lp);
    c.weight_bytes += node_weight_bytes_at(g, n, lp);
    if (n.op == OpKind::kLinear) {
      c.linear_flops += f;
      if (lp == Precision::kInt8) c.int8_linear_flops += f;
    }
  }
  return c;
}

double node_peak_gflops(OpKind op, Precision p, const MachineCeilings& c) {
  if (op == OpKind::kLinear && p == Precision::kInt8) return c.int8_gops;
  if ((op == OpKind::kLinear || op == OpKind::kAttention) && p == Precision::kBF16) return c.bf16_gflops;
  return c.f32_gflops;
}

double roofline_attainable(double flops, double bytes, double peak_gflops, double bw_gbs) {
  if (bytes <= 0) return peak_gflops;
  return std::min(peak_gflops, flops / bytes * bw_gbs);
}

std::string node_layer(const std::string& name) {
  const size_t dot = name.find('.');
  if (dot == std::string::npos) return name;
  const std::string first = name.substr(0, dot);
  // "<part>.blk.<n>.<what>"
  if (name.compare(dot, 5, ".blk.") == 0) {
    size_t end = dot + 5;
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
    if (end > dot + 5) return name.substr(0, end);
  }
  return first;
}

// ---------------------------------------------------------------------------------------------------------------
// Text

std::string strf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  const int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string s(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(s.data(), s.size() + 1, fmt, ap2);
  va_end(ap2);
  return s;
}

std::string fmt_seconds(double s) {
  if (!std::isfinite(s)) return "-";
  const double a = std::fabs(s);
  if (a >= 100) return strf("%.0f s", s);
  if (a >= 10) return strf("%.1f s", s);
  if (a >= 1) return strf("%.2f s", s);
  if (a >= 0.1) return strf("%.0f ms", s * 1e3);
  if (a >= 0.01) return strf("%.1f ms", s * 1e3);
  if (a >= 0.001) return strf("%.2f ms", s * 1e3);
  if (a >= 1e-4) return strf("%.0f us", s * 1e6);
  return strf("%.1f us", s * 1e6);
}

std::string fmt_bytes(double b) {
  if (b >= 1e9) return strf("%.2f GB", b / 1e9);
  if (b >= 1e6) return strf("%.1f MB", b / 1e6);
  if (b >= 1e3) return strf("%.1f kB", b / 1e3);
  return strf("%.0f B", b);
}

std::string fmt_percent(double f) {
  if (!std::isfinite(f)) return "-";
  return strf(f < 0.1 ? "%.2f%%" : "%.1f%%", f * 100.0);
}

namespace {
bool looks_numeric(const std::string& s) {
  if (s.empty()) return false;
  const unsigned char c0 = static_cast<unsigned char>(s[0]);
  if (std::isdigit(c0)) return true;
  if ((s[0] == '-' || s[0] == '+' || s[0] == '.') && s.size() > 1 && std::isdigit(static_cast<unsigned char>(s[1])))
    return true;
  return s == "-";
}
}  // namespace

std::string TextTable::render(const std::string& indent) const {
  std::vector<size_t> w(header_.size(), 0);
  for (size_t i = 0; i < header_.size(); ++i) w[i] = header_[i].size();
  for (const auto& r : rows_)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  size_t total = 0;
  for (size_t x : w) total += x + 2;
  total = total >= 2 ? total - 2 : 0;

  auto line = [&](const std::vector<std::string>& r, bool header) {
    std::string s = indent;
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      const size_t pad = w[i] - std::min(w[i], cell.size());
      const bool right = !header && i > 0 && looks_numeric(cell);
      if (right) s.append(pad, ' ');
      s += cell;
      if (!right && i + 1 < w.size()) s.append(pad, ' ');
      if (i + 1 < w.size()) s += "  ";
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string out = line(header_, true);
  out += indent + std::string(total, '-') + "\n";
  for (const auto& r : rows_) out += r.empty() ? indent + std::string(total, '-') + "\n" : line(r, false);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Status line

StatusLine::StatusLine(std::string tag, bool enabled) : tag_(std::move(tag)), active_(enabled && isatty(2)) {}

StatusLine::~StatusLine() { done(); }

void StatusLine::update(const char* fmt, ...) {
  if (!active_) return;
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  // Carriage return + "erase to end of line" keeps it to one line however long the previous message was.
  std::fprintf(stderr, "\r\x1b[K[%s] %s", tag_.c_str(), buf);
  std::fflush(stderr);
  shown_ = true;
}

void StatusLine::done() {
  if (active_ && shown_) {
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }
  shown_ = false;
}

// ---------------------------------------------------------------------------------------------------------------
// SVG

std::string xml_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default: o += c;
    }
  }
  return o;
}

const char* op_color(OpKind k) {
  // A qualitative palette (Tableau 10 + extras) so that neighbouring kinds are distinguishable.
  switch (k) {
    case OpKind::kLinear: return "#4e79a7";
    case OpKind::kAttention: return "#e15759";
    case OpKind::kGeluTanh: return "#f28e2b";
    case OpKind::kSilu: return "#f28e2b";
    case OpKind::kSwiGLU: return "#edc948";
    case OpKind::kLayerNorm: return "#59a14f";
    case OpKind::kRMSNorm: return "#8cd17d";
    case OpKind::kAdd: return "#76b7b2";
    case OpKind::kMul: return "#499894";
    case OpKind::kRope: return "#b07aa1";
    case OpKind::kPatchify: return "#9c755f";
    case OpKind::kPixelShuffle: return "#d4a6c8";
    case OpKind::kGetRows: return "#bab0ac";
    case OpKind::kScatterRows: return "#86bcb6";
    case OpKind::kRows: return "#d37295";
    case OpKind::kCopy: return "#ff9d9a";
    case OpKind::kMeanRows: return "#a0cbe8";
    case OpKind::kSigmoid: return "#ffbe7d";
    default: return "#79706e";
  }
}

namespace {

// "0.01", "0.1", "1", "10", "100", "1k", "10k", "100k", "1M".
std::string tick_label(int e) {
  static const char* big[] = {"1", "10", "100", "1k", "10k", "100k", "1M", "10M", "100M", "1G"};
  if (e >= 0 && e < 10) return big[e];
  if (e < 0) {
    std::string s = "0.";
    for (int i = 0; i < -e - 1; ++i) s += '0';
    return s + "1";
  }
  return strf("1e%d", e);
}

struct LogAxis {
  double lo_e = 0, hi_e = 1;  // log10 of the range ends (integers)
  double px0 = 0, px1 = 1;    // pixel positions of lo and hi
  double map(double v) const {
    const double e = std::log10(std::max(v, 1e-30));
    return px0 + (e - lo_e) / (hi_e - lo_e) * (px1 - px0);
  }
};

void bars_panel(std::string& o, const std::string& title, const std::vector<SvgBar>& bars, double x0, double y0,
                double w, double h) {
  o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"ptitle\">%s</text>\n", x0, y0 + 14, xml_escape(title).c_str());
  if (bars.empty()) return;
  const double label_w = 120, value_w = 120;
  const double bx0 = x0 + label_w, bw = std::max(40.0, w - label_w - value_w);
  const double top = y0 + 30, avail = h - 40;
  const double pitch = std::min(26.0, avail / static_cast<double>(bars.size()));
  const double bh = std::max(4.0, pitch * 0.72);
  double vmax = 0;
  for (const auto& b : bars) vmax = std::max(vmax, b.value);
  if (vmax <= 0) vmax = 1;
  // Faint vertical grid at quarters of the maximum.
  for (int q = 1; q <= 4; ++q) {
    const double gx = bx0 + bw * q / 4.0;
    o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", gx, top - 4, gx,
              top + pitch * static_cast<double>(bars.size()));
  }
  o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"axis\"/>\n", bx0, top - 4, bx0,
            top + pitch * static_cast<double>(bars.size()));
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    const double y = top + pitch * static_cast<double>(i);
    const double len = std::max(1.0, bw * b.value / vmax);
    o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"blabel\" text-anchor=\"end\">%s</text>\n", bx0 - 6,
              y + bh * 0.5 + 4, xml_escape(b.label).c_str());
    o += strf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s: %s</title></rect>\n",
              bx0, y, len, bh, b.color.c_str(), xml_escape(b.label).c_str(), xml_escape(b.value_text).c_str());
    o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"bvalue\">%s</text>\n", bx0 + len + 5, y + bh * 0.5 + 4,
              xml_escape(b.value_text).c_str());
  }
}

void roofline_panel(std::string& o, const SvgRoofline& r, int clip_id, double x0, double y0, double w, double h) {
  o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"ptitle\">%s</text>\n", x0, y0 + 14, xml_escape(r.title).c_str());
  const double left = x0 + 58, right = x0 + w - 10, top = y0 + 30, bottom = y0 + h - 42;
  const double bw = std::max(r.bw_gbs, 1e-9);
  const double peak = std::max({r.peak_gflops, r.second_peak_gflops, 1e-9});
  const double ridge = r.peak_gflops / bw;
  // Ranges: whole decades covering every point and the ridge with a decade either side.
  double xmin = ridge / 10, xmax = ridge * 10, ymin = peak / 1000, ymax = peak * 1.5;
  for (const auto& p : r.points) {
    if (p.intensity <= 0 || p.gflops <= 0) continue;
    xmin = std::min(xmin, p.intensity);
    xmax = std::max(xmax, p.intensity);
    ymin = std::min(ymin, p.gflops);
    ymax = std::max(ymax, p.gflops);
  }
  LogAxis ax{std::floor(std::log10(xmin)), std::ceil(std::log10(xmax)), left, right};
  LogAxis ay{std::floor(std::log10(ymin)), std::ceil(std::log10(ymax)), bottom, top};
  if (ax.hi_e <= ax.lo_e) ax.hi_e = ax.lo_e + 1;
  if (ay.hi_e <= ay.lo_e) ay.hi_e = ay.lo_e + 1;

  // Frame, decade grid and tick labels.
  o += strf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>\n", left, top, right - left,
            bottom - top);
  for (int e = static_cast<int>(ax.lo_e); e <= static_cast<int>(ax.hi_e); ++e) {
    const double x = ax.map(std::pow(10.0, e));
    if (e > ax.lo_e && e < ax.hi_e)
      o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", x, top, x, bottom);
    o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"middle\">%s</text>\n", x, bottom + 14,
              tick_label(e).c_str());
  }
  for (int e = static_cast<int>(ay.lo_e); e <= static_cast<int>(ay.hi_e); ++e) {
    const double y = ay.map(std::pow(10.0, e));
    if (e > ay.lo_e && e < ay.hi_e)
      o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", left, y, right, y);
    o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%s</text>\n", left - 5, y + 4,
              tick_label(e).c_str());
  }
  o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"alabel\" text-anchor=\"middle\">arithmetic intensity (FLOP/byte)</text>\n",
            (left + right) / 2, bottom + 32);
  o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"alabel\" text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">"
            "GFLOP/s</text>\n",
            x0 + 14, (top + bottom) / 2, x0 + 14, (top + bottom) / 2);

  // Roofs, clipped to the plot area.
  o += strf("<clipPath id=\"clip%d\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath>\n", clip_id,
            left, top, right - left, bottom - top);
  o += strf("<g clip-path=\"url(#clip%d)\">\n", clip_id);
  const double xl = std::pow(10.0, ax.lo_e), xr = std::pow(10.0, ax.hi_e);
  auto roof = [&](double pk, const char* cls) {
    const double xr_ridge = pk / bw;
    o += strf("<polyline points=\"%.1f,%.1f %.1f,%.1f %.1f,%.1f\" class=\"%s\"/>\n", ax.map(xl), ay.map(bw * xl),
              ax.map(xr_ridge), ay.map(pk), ax.map(xr), ay.map(pk), cls);
  };
  if (r.second_peak_gflops > 0) roof(r.second_peak_gflops, "roof2");
  roof(r.peak_gflops, "roof");
  // Points: small ones first so that the large (aggregated) ones sit on top.
  std::vector<const SvgRoofPoint*> pts;
  for (const auto& p : r.points)
    if (p.intensity > 0 && p.gflops > 0) pts.push_back(&p);
  std::stable_sort(pts.begin(), pts.end(), [](const SvgRoofPoint* a, const SvgRoofPoint* b) { return a->radius < b->radius; });
  for (const auto* p : pts) {
    const double cx = ax.map(p->intensity), cy = ay.map(p->gflops);
    o += strf("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" class=\"%s\"><title>%s: %.3g FLOP/B, %.4g GFLOP/s</title></circle>\n",
              cx, cy, p->radius, p->color.c_str(), p->labelled ? "pbig" : "psmall", xml_escape(p->label).c_str(),
              p->intensity, p->gflops);
    if (p->labelled)
      o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"plabel\">%s</text>\n", cx + p->radius + 3, cy + 4,
                xml_escape(p->label).c_str());
  }
  o += "</g>\n";
  // Roof labels (outside the clip so they are never cut).
  auto roof_label = [&](double pk, const std::string& label, const char* cls) {
    const double y = ay.map(pk);
    o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"%s\" text-anchor=\"end\">%s %.0f GFLOP/s</text>\n", right - 4,
              y - 5, cls, xml_escape(label).c_str(), pk);
  };
  roof_label(r.peak_gflops, r.peak_label, "rlabel");
  if (r.second_peak_gflops > 0) roof_label(r.second_peak_gflops, r.second_peak_label, "rlabel2");
  // Memory roof label along the slope, near the lower left.
  {
    const double xa = std::max(xl, ymin / bw);
    double xlab = std::min(ridge / 4, std::pow(10.0, ax.lo_e + 0.35 * (ax.hi_e - ax.lo_e)));
    xlab = std::max(xlab, xa * 2);
    const double px = ax.map(xlab), py = ay.map(bw * xlab);
    const double ang = -std::atan2(ay.map(bw) - ay.map(bw * 10), ax.map(10) - ax.map(1)) * 180 / 3.14159265358979323846;
    if (py > top + 10 && py < bottom - 4)
      o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"rlabel\" transform=\"rotate(%.1f %.1f %.1f)\">memory %.1f GB/s</text>\n",
                px + 4, py - 6, ang, px + 4, py - 6, r.bw_gbs);
  }
}

}  // namespace

std::string render_scatter_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                               const std::vector<SvgScatterSeries>& series) {
  const double W = 900, H = 560, L = 80, R = 250, T = 50, B = 60;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& se : series)
    for (const auto& p : se.points) {
      x0 = std::min(x0, p.x), x1 = std::max(x1, p.x), y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  // Axes from 0 on x (time), padded on y.
  x0 = 0;
  x1 = x1 > 0 ? x1 * 1.08 : 1;
  const double pad = std::max(1.0, (y1 - y0) * 0.1);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  std::string o = strf("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                       "font-family=\"DejaVu Sans, sans-serif\" font-size=\"11\">\n<rect width=\"100%%\" "
                       "height=\"100%%\" fill=\"white\"/>\n", W, H);
  o += strf("<text x=\"%.0f\" y=\"24\" font-size=\"14\">%s</text>\n", L, xml_escape(title).c_str());
  o += strf("<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#888\"/>\n", L, T,
            W - L - R, H - T - B);
  for (int i = 0; i <= 5; ++i) {  // grid and ticks
    const double xv = x0 + (x1 - x0) * i / 5, yv = y0 + (y1 - y0) * i / 5;
    o += strf("<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#eee\"/>\n", px(xv), T, px(xv), H - B);
    o += strf("<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.3g</text>\n", px(xv), H - B + 16, xv);
    o += strf("<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", L, py(yv), W - R, py(yv));
    o += strf("<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", L - 6, py(yv) + 4, yv);
  }
  o += strf("<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", (L + W - R) / 2, H - 18,
            xml_escape(x_label).c_str());
  o += strf("<text transform=\"translate(20,%.0f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n", (T + H - B) / 2,
            xml_escape(y_label).c_str());
  double ly = T + 10;
  for (const auto& se : series) {
    std::vector<SvgScatterPoint> pts = se.points;
    std::sort(pts.begin(), pts.end(), [](const SvgScatterPoint& a, const SvgScatterPoint& b) { return a.x < b.x; });
    if (pts.size() > 1) {  // connect a method's settings in time order
      std::string path;
      for (const auto& p : pts) path += strf("%s%.1f,%.1f", path.empty() ? "M" : " L", px(p.x), py(p.y));
      o += strf("<path d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-opacity=\"0.5\"/>\n", path.c_str(), se.color.c_str());
    }
    for (const auto& p : pts) {
      o += strf("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"%s\"><title>%s: %.2f, %.1f</title></circle>\n",
                px(p.x), py(p.y), se.color.c_str(), xml_escape(p.label).c_str(), p.x, p.y);
      o += strf("<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" fill=\"%s\">%s</text>\n", px(p.x) + 6, py(p.y) - 5,
                se.color.c_str(), xml_escape(p.label).c_str());
    }
    o += strf("<circle cx=\"%.0f\" cy=\"%.0f\" r=\"5\" fill=\"%s\"/><text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
              W - R + 20, ly, se.color.c_str(), W - R + 30, ly + 4, xml_escape(se.name).c_str());
    ly += 18;
  }
  o += "</svg>\n";
  return o;
}

namespace {

// "Nice" tick values covering [lo, hi]: about `n` steps of 1, 2 or 5 times a power of ten.
std::vector<double> nice_ticks(double lo, double hi, int n) {
  std::vector<double> t;
  const double span = hi - lo;
  if (!(span > 0) || n < 1) return {lo};
  const double raw = span / n, p = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / p < 1.5 ? p : raw / p < 3.5 ? 2 * p : raw / p < 7.5 ? 5 * p : 10 * p;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return t;
}

void line_panel(std::string& o, const SvgLinePanel& p, double x0, double y0, double w, double h) {
  const double L = x0 + 70, R = x0 + w - 170, T = y0 + 28, B = y0 + h - 40;
  o += strf("<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\" font-weight=\"bold\">%s</text>\n", x0 + 10, y0 + 16,
            xml_escape(p.title).c_str());
  double xa = 1e300, xb = -1e300, ya = 1e300, yb = -1e300;
  for (const auto& s : p.series)
    for (const auto& q : s.points) {
      xa = std::min(xa, q.x), xb = std::max(xb, q.x), ya = std::min(ya, q.y), yb = std::max(yb, q.y);
    }
  for (const auto& r : p.refs) ya = std::min(ya, r.y), yb = std::max(yb, r.y);
  for (const auto& t : p.x_ticks) xa = std::min(xa, t.first), xb = std::max(xb, t.first);
  if (xa > xb) xa = 0, xb = 1;
  if (ya > yb) ya = 0, yb = 1;
  if (xb - xa <= 0) xa -= 0.5, xb += 0.5;
  const double span = std::max(yb - ya, p.min_span);
  const double mid = (ya + yb) / 2;
  ya = std::min(ya, mid - span / 2) - 0.05 * span, yb = std::max(yb, mid + span / 2) + 0.05 * span;
  const double xpad = 0.03 * (xb - xa);
  xa -= xpad, xb += xpad;
  auto px = [&](double x) { return L + (x - xa) / (xb - xa) * (R - L); };
  auto py = [&](double y) { return B - (y - ya) / (yb - ya) * (B - T); };
  o += strf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n", L, T, R - L,
            B - T);
  for (double v : nice_ticks(ya, yb, 5)) {
    o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", L, py(v), R, py(v));
    o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\">%.6g</text>\n", L - 5, py(v) + 4, v);
  }
  if (p.x_ticks.empty()) {
    for (double v : nice_ticks(xa, xb, 8))
      o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%.6g</text>\n", px(v), B + 14, v);
  } else {
    for (const auto& [v, label] : p.x_ticks)
      o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%s</text>\n", px(v), B + 14,
                xml_escape(label).c_str());
  }
  o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n", (L + R) / 2, B + 32,
            xml_escape(p.x_label).c_str());
  o += strf("<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n",
            x0 + 16, (T + B) / 2, xml_escape(p.y_label).c_str());
  for (const auto& r : p.refs) {
    o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#c33\" stroke-dasharray=\"6 4\"/>\n", L,
              py(r.y), R, py(r.y));
    o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\" fill=\"#c33\">%s</text>\n", R - 4,
              py(r.y) - 4, xml_escape(r.label).c_str());
  }
  double ly = T + 10;
  for (const auto& s : p.series) {
    std::vector<SvgScatterPoint> pts = s.points;
    std::sort(pts.begin(), pts.end(), [](const SvgScatterPoint& a, const SvgScatterPoint& b) { return a.x < b.x; });
    std::string path;
    for (const auto& q : pts) path += strf("%s%.1f,%.1f", path.empty() ? "M" : " L", px(q.x), py(q.y));
    if (pts.size() > 1)
      o += strf("<path d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s/>\n", path.c_str(), s.color.c_str(),
                s.dashed ? " stroke-dasharray=\"4 3\"" : "");
    for (const auto& q : pts)
      o += strf("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s: %.6g</title></circle>\n", px(q.x), py(q.y),
                s.color.c_str(), xml_escape(q.label).c_str(), q.y);
    o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>"
              "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">%s</text>\n",
              R + 12, ly, R + 32, ly, s.color.c_str(), s.dashed ? " stroke-dasharray=\"4 3\"" : "", R + 38, ly + 4,
              xml_escape(s.name).c_str());
    ly += 18;
  }
}

void histogram_panel(std::string& o, const SvgHistogram& hgm, double x0, double y0, double w, double h) {
  const double L = x0 + 70, R = x0 + w - 170, T = y0 + 28, B = y0 + h - 40;
  o += strf("<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\" font-weight=\"bold\">%s</text>\n", x0 + 10, y0 + 16,
            xml_escape(hgm.title).c_str());
  double top = 0;
  for (double c : hgm.counts) top = std::max(top, c);
  if (top <= 0) top = 1;
  top *= 1.1;
  o += strf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n", L, T, R - L,
            B - T);
  auto py = [&](double y) { return B - y / top * (B - T); };
  for (double v : nice_ticks(0, top, 5)) {
    o += strf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", L, py(v), R, py(v));
    o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\">%.6g</text>\n", L - 5, py(v) + 4, v);
  }
  const size_t n = hgm.counts.size();
  const double bw = n ? (R - L) / static_cast<double>(n) : 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = L + bw * static_cast<double>(i);
    const std::string label = i < hgm.bin_labels.size() ? hgm.bin_labels[i] : "";
    o += strf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s: %.6g</title></rect>\n",
              x + 1, py(hgm.counts[i]), std::max(bw - 2, 0.5), B - py(hgm.counts[i]),
              hgm.color.empty() ? "#4e79a7" : hgm.color.c_str(), xml_escape(label).c_str(), hgm.counts[i]);
    if (hgm.counts[i] > 0)
      o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">%.6g</text>\n", x + bw / 2,
                py(hgm.counts[i]) - 3, hgm.counts[i]);
    o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">%s</text>\n", x + bw / 2, B + 13,
              xml_escape(label).c_str());
  }
  o += strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n", (L + R) / 2, B + 32,
            xml_escape(hgm.x_label).c_str());
  o += strf("<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n",
            x0 + 16, (T + B) / 2, xml_escape(hgm.y_label).c_str());
}

}  // namespace

std::string render_panels_svg(const std::string& title, const std::vector<SvgLinePanel>& lines,
                              const std::vector<SvgHistogram>& histograms) {
  const double W = 960, ph = 300, head = 40;
  const double H = head + ph * static_cast<double>(lines.size() + histograms.size()) + 10;
  std::string o = strf("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
                       "font-family=\"DejaVu Sans, sans-serif\" font-size=\"11\">\n",
                       W, H, W, H);
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o += strf("<text x=\"20\" y=\"26\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", xml_escape(title).c_str());
  double y = head;
  for (const auto& p : lines) {
    line_panel(o, p, 10, y, W - 20, ph - 10);
    y += ph;
  }
  for (const auto& hg : histograms) {
    histogram_panel(o, hg, 10, y, W - 20, ph - 10);
    y += ph;
  }
  o += "</svg>\n";
  return o;
}

std::string render_profile_svg(const std::string& title, const std::vector<SvgPanelRow>& rows,
                               const std::vector<SvgLegendItem>& legend) {
  const double W = 1120, row_h = 420, head = 44;
  const int legend_cols = 6;
  const double legend_h = 30 + 20.0 * static_cast<double>((legend.size() + legend_cols - 1) / legend_cols) + 24;
  const double H = head + row_h * static_cast<double>(rows.size()) + legend_h;
  std::string o;
  o += strf("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n",
            W, H, W, H);
  o += "<style>\n"
       ".title{font-size:17px;font-weight:bold;fill:#222}\n"
       ".ptitle{font-size:13px;font-weight:bold;fill:#333}\n"
       ".blabel{font-size:11px;fill:#333}\n"
       ".bvalue{font-size:10px;fill:#555}\n"
       ".tick{font-size:10px;fill:#555}\n"
       ".alabel{font-size:11px;fill:#333}\n"
       ".plabel{font-size:10px;fill:#222}\n"
       ".rlabel{font-size:10px;fill:#b22}\n"
       ".rlabel2{font-size:10px;fill:#b77}\n"
       ".legend{font-size:11px;fill:#333}\n"
       ".frame{fill:none;stroke:#888;stroke-width:1}\n"
       ".axis{stroke:#888;stroke-width:1}\n"
       ".grid{stroke:#e4e4e4;stroke-width:1}\n"
       ".roof{fill:none;stroke:#b22;stroke-width:2}\n"
       ".roof2{fill:none;stroke:#b77;stroke-width:1.5;stroke-dasharray:6 4}\n"
       ".pbig{stroke:#222;stroke-width:1;fill-opacity:0.9}\n"
       ".psmall{stroke:none;fill-opacity:0.45}\n"
       "</style>\n";
  o += strf("<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#ffffff\"/>\n", W, H);
  o += strf("<text x=\"20\" y=\"28\" class=\"title\">%s</text>\n", xml_escape(title).c_str());
  for (size_t i = 0; i < rows.size(); ++i) {
    const double y0 = head + row_h * static_cast<double>(i);
    if (i > 0) o += strf("<line x1=\"20\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", y0 - 6, W - 20, y0 - 6);
    bars_panel(o, rows[i].bars_title, rows[i].bars, 20, y0, 520, row_h - 10);
    roofline_panel(o, rows[i].roof, static_cast<int>(i), 560, y0, W - 580, row_h - 10);
  }
  const double ly = head + row_h * static_cast<double>(rows.size());
  o += strf("<text x=\"20\" y=\"%.1f\" class=\"ptitle\">op kinds</text>\n", ly + 14);
  for (size_t i = 0; i < legend.size(); ++i) {
    const double x = 20 + 180.0 * static_cast<double>(i % legend_cols);
    const double y = ly + 24 + 20.0 * static_cast<double>(i / legend_cols);
    o += strf("<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>\n", x, y, legend[i].color.c_str());
    o += strf("<text x=\"%.1f\" y=\"%.1f\" class=\"legend\">%s</text>\n", x + 17, y + 10,
              xml_escape(legend[i].label).c_str());
  }
  const double ny = ly + 24 + 20.0 * static_cast<double>((legend.size() + legend_cols - 1) / legend_cols) + 8;
  o += strf("<text x=\"20\" y=\"%.1f\" class=\"bvalue\">Roofline: large outlined points = op kinds (all nodes of a "
            "kind together), small points = single nodes; solid red = roof at the compute precision, dashed = "
            "f32 roof. Ops without FLOPs (copies, reshapes) are not plotted.</text>\n",
            ny);
  o += "</svg>\n";
  return o;
}

// ---------------------------------------------------------------------------------------------------------------
// Files, directories, memory

Status write_text_file(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return IoError(path + ": cannot create: " + std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int err = errno;
  if (std::fclose(f) != 0 || !ok) return IoError(path + ": write failed: " + std::strerror(ok ? errno : err));
  return Status::Ok();
}

Result<TempDir> TempDir::create(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) return IoError(tmpl + ": mkdtemp failed: " + std::strerror(errno));
  TempDir d;
  d.path_ = tmpl;
  return d;
}

TempDir& TempDir::operator=(TempDir&& o) noexcept {
  if (this != &o) {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
    path_ = std::move(o.path_);
    o.path_.clear();
  }
  return *this;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);  // best effort: a leftover temp dir is not worth failing for
}

bool reset_peak_rss() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return (std::fclose(f) == 0) && ok;
}

int64_t peak_rss_since_reset(bool* exact) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      long long kb = 0;
      if (std::sscanf(line.c_str() + 6, "%lld", &kb) == 1) {
        if (exact) *exact = true;
        return static_cast<int64_t>(kb) * 1024;
      }
    }
  }
  if (exact) *exact = false;
  return peak_rss_bytes();
}

}  // namespace ev
