#include "sim/render.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sim/sim_math.h"

namespace ev::sim {

namespace {

constexpr double kNear = 0.3;

struct C3 {
  float r, g, b;
};
struct Px {
  uint8_t r, g, b;
};

inline uint8_t u8(float v) { return static_cast<uint8_t>(v <= 0.f ? 0.f : (v >= 255.f ? 255.f : v + 0.5f)); }

C3 scale(C3 c, float k) { return {c.r * k, c.g * k, c.b * k}; }
C3 lerp(C3 a, C3 b, float t) { return {a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t}; }

C3 paint_colour(Colour c) {
  switch (c) {
    case Colour::kWhite: return {232, 232, 228};
    case Colour::kBlack: return {24, 24, 27};
    case Colour::kRed: return {182, 22, 24};
    case Colour::kBlue: return {28, 58, 168};
    case Colour::kSilver: return {150, 154, 160};
    case Colour::kYellow: return {230, 188, 18};
    case Colour::kGreen: return {26, 122, 48};
  }
  return {128, 128, 128};
}

// ---- Canvas: pixel-centre fills with clipping ----

class Canvas {
 public:
  Canvas(uint8_t* p, int W, int H) : p_(p), W_(W), H_(H) {}
  int W() const { return W_; }
  int H() const { return H_; }
  uint8_t* row(int y) { return p_ + static_cast<size_t>(y) * static_cast<size_t>(W_) * 3; }

  static int pix(double x) {  // first pixel whose centre is >= x
    if (x < -1e6) return -1000000;
    if (x > 1e6) return 1000000;
    return static_cast<int>(std::ceil(x - 0.5));
  }

  void span_px(int y, int a, int b, Px c) {
    if (y < 0 || y >= H_) return;
    a = std::max(a, 0);
    b = std::min(b, W_);
    uint8_t* q = row(y) + 3 * a;
    for (int x = a; x < b; ++x, q += 3) {
      q[0] = c.r;
      q[1] = c.g;
      q[2] = c.b;
    }
  }
  void span_px_blend(int y, int a, int b, Px c, int a256) {
    if (y < 0 || y >= H_ || a256 <= 0) return;
    if (a256 >= 256) return span_px(y, a, b, c);
    a = std::max(a, 0);
    b = std::min(b, W_);
    uint8_t* q = row(y) + 3 * a;
    const int ia = 256 - a256;
    for (int x = a; x < b; ++x, q += 3) {
      q[0] = static_cast<uint8_t>((q[0] * ia + c.r * a256) >> 8);
      q[1] = static_cast<uint8_t>((q[1] * ia + c.g * a256) >> 8);
      q[2] = static_cast<uint8_t>((q[2] * ia + c.b * a256) >> 8);
    }
  }
  // Rectangle [x0, x1) x [y0, y1); a side thinner than one pixel becomes one pixel at its centre.
  void rect(double x0, double y0, double x1, double y1, Px c, int a256 = 256) {
    int ix0 = pix(x0), ix1 = pix(x1), iy0 = pix(y0), iy1 = pix(y1);
    if (ix1 <= ix0) {
      if (x1 - x0 < 0.05) return;
      ix0 = static_cast<int>(std::floor(0.5 * (x0 + x1)));
      ix1 = ix0 + 1;
    }
    if (iy1 <= iy0) {
      if (y1 - y0 < 0.05) return;
      iy0 = static_cast<int>(std::floor(0.5 * (y0 + y1)));
      iy1 = iy0 + 1;
    }
    iy0 = std::max(iy0, 0);
    iy1 = std::min(iy1, H_);
    for (int y = iy0; y < iy1; ++y) span_px_blend(y, ix0, ix1, c, a256);
  }
  // Convex polygon (any winding).
  void poly(const double* xs, const double* ys, int n, Px c, int a256 = 256) {
    double ymin = ys[0], ymax = ys[0];
    for (int i = 1; i < n; ++i) {
      ymin = std::min(ymin, ys[i]);
      ymax = std::max(ymax, ys[i]);
    }
    const int y0 = std::max(pix(ymin), 0), y1 = std::min(pix(ymax), H_);
    for (int y = y0; y < y1; ++y) {
      const double yc = y + 0.5;
      double xl = 1e30, xr = -1e30;
      for (int i = 0; i < n; ++i) {
        const int j = (i + 1) % n;
        const double ya = ys[i], yb = ys[j];
        if ((yc >= ya && yc < yb) || (yc >= yb && yc < ya)) {
          const double x = xs[i] + (yc - ya) * (xs[j] - xs[i]) / (yb - ya);
          xl = std::min(xl, x);
          xr = std::max(xr, x);
        }
      }
      if (xr < xl) continue;
      int a = pix(xl), b = pix(xr);
      if (b <= a) {
        if (xr - xl < 0.3) continue;
        a = static_cast<int>(std::floor(0.5 * (xl + xr)));
        b = a + 1;
      }
      span_px_blend(y, a, b, c, a256);
    }
  }
  void ellipse(double cx, double cy, double rx, double ry, Px c, int a256 = 256) {
    if (rx < 0.5 && ry < 0.5) {
      if (rx < 0.15) return;
      return rect(cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5, c, a256);
    }
    rx = std::max(rx, 0.5);
    ry = std::max(ry, 0.5);
    const int y0 = std::max(pix(cy - ry), 0), y1 = std::min(pix(cy + ry), H_);
    for (int y = y0; y < y1; ++y) {
      const double v = (y + 0.5 - cy) / ry;
      const double hw = rx * std::sqrt(std::max(0.0, 1.0 - v * v));
      span_px_blend(y, pix(cx - hw), pix(cx + hw), c, a256);
    }
  }
  // Additive glow: strength * (1 - d^2/r^2)^2 of colour, out to radius r.
  void glow(double cx, double cy, double r, C3 c, float strength) {
    if (r < 0.8 || strength <= 0) return;
    const int y0 = std::max(pix(cy - r), 0), y1 = std::min(pix(cy + r), H_);
    const int x0 = std::max(pix(cx - r), 0), x1 = std::min(pix(cx + r), W_);
    const float inv = static_cast<float>(1.0 / (r * r));
    for (int y = y0; y < y1; ++y) {
      const float dy = static_cast<float>(y + 0.5 - cy);
      uint8_t* q = row(y) + 3 * x0;
      for (int x = x0; x < x1; ++x, q += 3) {
        const float dx = static_cast<float>(x + 0.5 - cx);
        float u = 1.f - (dx * dx + dy * dy) * inv;
        if (u <= 0) continue;
        u = u * u * strength;
        q[0] = u8(q[0] + c.r * u);
        q[1] = u8(q[1] + c.g * u);
        q[2] = u8(q[2] + c.b * u);
      }
    }
  }

 private:
  uint8_t* p_;
  int W_, H_;
};

// Triangle wave in [-1, 1] with period 1 (walk cycles without trig).
double tri(double u) {
  u -= std::floor(u);
  return u < 0.5 ? 4 * u - 1 : 3 - 4 * u;
}

// 7-segment digit masks: bit 0 a (top), 1 b (top right), 2 c (bottom right), 3 d (bottom), 4 e (bottom left),
// 5 f (top left), 6 g (middle).
constexpr uint8_t kSeg[10] = {0x3F, 0x06, 0x5B, 0x4F, 0x66, 0x6D, 0x7D, 0x07, 0x7F, 0x6F};
// 3x5 glyphs of S, T, O, P (rows top to bottom, 3 bits each, MSB left).
constexpr uint8_t kGlyphs[4][5] = {{7, 4, 7, 1, 7}, {7, 2, 2, 2, 2}, {7, 5, 5, 5, 7}, {7, 5, 7, 4, 4}};

}  // namespace

struct Renderer::Impl {
  const World* w = nullptr;
  int W = 0, H = 0;
  uint64_t seed = 0;
  Camera cam;
  RoadLayout lay;
  Atmosphere atm;
  C3 tint{1, 1, 1};
  C3 fogc{200, 200, 200};
  float noise_sigma = 2;
  double blur = 0.3;
  bool urban = false, highway = false, rural = false;

  // Ground rows (y >= ground_y0): depth, fog, headlight falloff, and colour tables per surface.
  enum Surface { kGrass, kGrassDark, kSidewalk, kKerb, kAsphalt, kAsphaltDark, kShoulder, kWhite, kYellow, kNumSurf };
  int ground_y0 = 0;
  std::vector<double> row_z, row_zfar, row_znear, row_scale;
  std::vector<float> row_fall;  // headlight strength at that depth (0 when off)
  std::vector<Px> lut_amb, lut_lit;  // [row * kNumSurf + surface]
  std::vector<Px> sky;               // per row
  std::vector<uint8_t> glare;        // W*H additive intensity (weather glare)
  C3 glare_tint{255, 245, 225};
  std::vector<uint8_t> tmp;          // blur source
  std::vector<int> bx, by;           // blur maps
  std::vector<uint8_t> surf;         // per-pixel surface ids of one row
  // Raindrops on the lens: fixed per scenario.
  struct Drop {
    double x, y, r;
  };
  std::vector<Drop> drops;

  explicit Impl(const World& world) { init(world); }

  // ---------------------------------------------------------------------------------------------------------
  // Shading

  Px shade(C3 c, double z, double X, double y, bool retro = false) const {
    const float l = static_cast<float>(atm.illum(z, X, y, retro));
    const float f = static_cast<float>(atm.fog(z));
    const float k = l * (1.f - f);
    return {u8(c.r * tint.r * k + fogc.r * f), u8(c.g * tint.g * k + fogc.g * f), u8(c.b * tint.b * k + fogc.b * f)};
  }
  Px emit(C3 c, double z) const {
    const float f = static_cast<float>(atm.fog(z));
    return {u8(c.r * (1 - f) + fogc.r * f), u8(c.g * (1 - f) + fogc.g * f), u8(c.b * (1 - f) + fogc.b * f)};
  }
  float glow_strength() const {
    switch (atm.lighting) {
      case Lighting::kDay: return 0.25f;
      case Lighting::kDusk: return 0.6f;
      case Lighting::kNight: return 1.0f;
    }
    return 0.5f;
  }

  C3 surface_colour(int s) const {
    const bool wet = atm.weather == Weather::kRain;
    const float wk = wet ? 0.72f : 1.0f;
    switch (s) {
      case kGrass: return urban ? C3{92, 90, 86} : (highway ? C3{88, 120, 62} : C3{96, 128, 58});
      case kGrassDark: return urban ? C3{84, 82, 79} : (highway ? C3{78, 110, 56} : C3{86, 116, 50});
      case kSidewalk: return scale(C3{165, 162, 155}, wk);
      case kKerb: return scale(C3{200, 198, 190}, wk);
      case kAsphalt: return scale(C3{96, 96, 100}, wk);
      case kAsphaltDark: return scale(C3{89, 89, 93}, wk);
      case kShoulder: return scale(C3{108, 106, 104}, wk);
      case kWhite: return scale(C3{235, 235, 232}, wet ? 0.85f : 1.f);
      case kYellow: return scale(C3{230, 180, 30}, wet ? 0.85f : 1.f);
    }
    return {128, 128, 128};
  }

  void init(const World& world) {
    w = &world;
    const ScenarioSpec& sp = world.spec();
    W = sp.width;
    H = sp.height;
    seed = sp.seed;
    cam = world.camera();
    lay = world.layout();
    atm = world.atmosphere();
    urban = lay.type == RoadType::kUrban;
    highway = lay.type == RoadType::kHighway;
    rural = lay.type == RoadType::kRural;
    switch (atm.lighting) {
      case Lighting::kDay: tint = {1.0f, 1.0f, 1.0f}; break;
      case Lighting::kDusk: tint = {1.08f, 0.9f, 0.82f}; break;
      case Lighting::kNight: tint = {0.85f, 0.92f, 1.12f}; break;
    }
    fogc = {atm.fog_rgb[0], atm.fog_rgb[1], atm.fog_rgb[2]};
    noise_sigma = static_cast<float>(sp.conditions.noise >= 0
                                         ? sp.conditions.noise
                                         : (atm.lighting == Lighting::kDay ? 2.0 : (atm.lighting == Lighting::kDusk ? 3.5 : 6.0)));
    blur = sp.conditions.motion_blur >= 0 ? sp.conditions.motion_blur : 0.3;

    // Ground rows.
    ground_y0 = std::max(0, static_cast<int>(std::ceil(cam.hy - 0.5 + 1e-9)));
    if (cam.hy - 0.5 < 0) ground_y0 = 0;
    row_z.assign(H, 0);
    row_znear.assign(H, 0);
    row_zfar.assign(H, 0);
    row_scale.assign(H, 0);
    row_fall.assign(H, 0);
    auto zat = [&](double yc) { return yc - cam.hy > 1e-3 ? std::min(3000.0, cam.fy * cam.height / (yc - cam.hy)) : 3000.0; };
    for (int y = ground_y0; y < H; ++y) {
      row_z[y] = zat(y + 0.5);
      row_zfar[y] = zat(y);
      row_znear[y] = zat(y + 1.0);
      row_scale[y] = cam.fx / row_z[y];
      row_fall[y] = static_cast<float>(atm.headlights * clampd(1.0 - row_z[y] / 60.0, 0.0, 1.0));
    }
    lut_amb.assign(static_cast<size_t>(H) * kNumSurf, Px{0, 0, 0});
    lut_lit = lut_amb;
    for (int y = ground_y0; y < H; ++y) {
      const float f = static_cast<float>(atm.fog(row_z[y]));
      for (int s = 0; s < kNumSurf; ++s) {
        const C3 c = surface_colour(s);
        auto mk = [&](float l) {
          const float k = l * (1 - f);
          return Px{u8(c.r * tint.r * k + fogc.r * f), u8(c.g * tint.g * k + fogc.g * f), u8(c.b * tint.b * k + fogc.b * f)};
        };
        const float retro = (s == kWhite || s == kYellow) ? 1.4f : 1.0f;
        lut_amb[static_cast<size_t>(y) * kNumSurf + s] = mk(static_cast<float>(atm.ambient));
        lut_lit[static_cast<size_t>(y) * kNumSurf + s] =
            mk(std::min(1.35f, static_cast<float>(atm.ambient) + row_fall[y] * retro));
      }
    }
    // Sky gradient.
    C3 top{88, 138, 208}, hor{186, 210, 234};
    const bool city_glow = urban;
    switch (atm.lighting) {
      case Lighting::kDay:
        top = {88, 138, 208};
        hor = {186, 210, 234};
        if (atm.weather == Weather::kRain) top = {108, 114, 124}, hor = {160, 164, 170};
        if (atm.weather == Weather::kGlare) top = {118, 158, 214}, hor = {236, 230, 216};
        break;
      case Lighting::kDusk:
        top = {58, 66, 118};
        hor = {238, 148, 88};
        if (atm.weather == Weather::kRain) top = {66, 62, 72}, hor = {148, 112, 98};
        if (atm.weather == Weather::kGlare) hor = {252, 176, 96};
        break;
      case Lighting::kNight:
        top = {5, 7, 16};
        hor = city_glow ? C3{44, 40, 52} : C3{20, 24, 40};
        if (atm.weather == Weather::kRain) top = {8, 9, 12}, hor = {34, 32, 38};
        break;
    }
    if (atm.weather == Weather::kFog) {
      top = lerp(top, fogc, 0.75f);
      hor = fogc;
    }
    sky.assign(H, Px{0, 0, 0});
    for (int y = 0; y < H; ++y) {
      const float t = static_cast<float>(clampd((y + 0.5) / std::max(1.0, cam.hy), 0.0, 1.0));
      const C3 c = lerp(top, hor, t * t);
      sky[y] = {u8(c.r), u8(c.g), u8(c.b)};
    }
    // Glare map.
    if (atm.weather == Weather::kGlare) build_glare();
    if (atm.weather == Weather::kRain) {
      Rng r(mix64(seed, 0xD209));
      const int n = 3 + r.below(5);
      for (int i = 0; i < n; ++i) drops.push_back({r.uniform(0, W), r.uniform(0, H), r.uniform(0.015, 0.045) * H});
    }
    tmp.resize(static_cast<size_t>(W) * H * 3);
    bx.resize(W * 2);
    by.resize(H * 2);
    surf.resize(W);
  }

  void build_glare() {
    glare.assign(static_cast<size_t>(W) * H, 0);
    Rng r(mix64(seed, 0x61A7E));
    double sx, sy;
    if (atm.lighting == Lighting::kNight) {
      // Oncoming high beams low on the horizon, left of centre.
      sx = cam.cx - r.uniform(0.08, 0.22) * W;
      sy = cam.hy + 0.015 * H;
      glare_tint = {225, 232, 255};
    } else {
      sx = r.uniform(0.25, 0.75) * W;
      sy = cam.hy - r.uniform(0.03, 0.14) * H;
      glare_tint = atm.lighting == Lighting::kDusk ? C3{255, 196, 130} : C3{255, 246, 224};
    }
    const double s1 = 0.035 * W, s2 = 0.22 * W;
    // Ghosts along the line from the source through the image centre.
    struct Ghost {
      double x, y, r, a;
    };
    Ghost g[3];
    const double t[3] = {-0.35, -0.75, -1.25};
    for (int i = 0; i < 3; ++i) {
      g[i] = {cam.cx + (sx - cam.cx) * t[i], 0.5 * H + (sy - 0.5 * H) * t[i], (0.03 + 0.03 * i) * W, 40.0 - 8 * i};
    }
    for (int y = 0; y < H; ++y) {
      for (int x = 0; x < W; ++x) {
        const double dx = x + 0.5 - sx, dy = y + 0.5 - sy;
        const double d2 = dx * dx + dy * dy;
        double v = 250.0 * det_exp(-d2 / (2 * s1 * s1)) + 90.0 * det_exp(-std::sqrt(d2) / s2) + 18.0;
        // Horizontal streak.
        v += 70.0 * det_exp(-std::abs(dy) / (0.006 * H)) * det_exp(-std::abs(dx) / (0.35 * W));
        for (const auto& gh : g) {
          const double ex = x + 0.5 - gh.x, ey = y + 0.5 - gh.y;
          if (ex * ex + ey * ey < gh.r * gh.r) v += gh.a;
        }
        glare[static_cast<size_t>(y) * W + x] = static_cast<uint8_t>(std::min(255.0, v));
      }
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Geometry helpers

  double zof(double s) const { return s - w->ego().s; }
  double X(double s, double d) const { return w->cam_x(s, d); }
  double sx(double Xv, double z) const { return cam.sx(Xv, z); }
  double sy(double y, double z) const { return cam.sy(y, z); }

  // Quad in a vertical plane parallel to the road, from s0 to s1 at lateral d, heights y0..y1 (clipped to the near
  // plane). Returns false when behind the camera.
  bool wall_quad(double s0, double s1, double d, double y0, double y1, double* xs, double* ys) const {
    const double smin = w->ego().s + kNear;
    if (s1 <= smin) return false;
    s0 = std::max(s0, smin);
    const double z0 = zof(s0), z1 = zof(s1);
    const double X0 = X(s0, d), X1 = X(s1, d);
    xs[0] = sx(X0, z0), ys[0] = sy(y0, z0);
    xs[1] = sx(X1, z1), ys[1] = sy(y0, z1);
    xs[2] = sx(X1, z1), ys[2] = sy(y1, z1);
    xs[3] = sx(X0, z0), ys[3] = sy(y1, z0);
    return true;
  }
  // Quad on the ground between s0..s1 and d0..d1.
  bool ground_quad(double s0, double s1, double d0, double d1, double* xs, double* ys) const {
    const double smin = w->ego().s + kNear;
    if (s1 <= smin) return false;
    s0 = std::max(s0, smin);
    const double z0 = zof(s0), z1 = zof(s1);
    xs[0] = sx(X(s0, d0), z0), ys[0] = sy(0, z0);
    xs[1] = sx(X(s0, d1), z0), ys[1] = sy(0, z0);
    xs[2] = sx(X(s1, d1), z1), ys[2] = sy(0, z1);
    xs[3] = sx(X(s1, d0), z1), ys[3] = sy(0, z1);
    return true;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Background

  void draw_sky(Canvas& cv) {
    const int ymax = std::min(ground_y0, H);
    for (int y = 0; y < ymax; ++y) cv.span_px(y, 0, W, sky[y]);
    if (atm.lighting == Lighting::kNight && atm.weather == Weather::kClear) {
      for (int y = 0; y < static_cast<int>(cam.hy * 0.8); ++y) {
        for (int x = 0; x < W; ++x) {
          if (mix64(seed ^ 0x57A5, static_cast<uint64_t>(y) * 8192 + x) % 700 == 0) {
            uint8_t* q = cv.row(y) + 3 * x;
            q[0] = q[1] = 200;
            q[2] = 210;
          }
        }
      }
    }
    // Clouds (day/dusk, not fog): soft blobs fixed in heading space.
    if (atm.lighting != Lighting::kNight && atm.weather != Weather::kFog) {
      const double head = w->geometry().heading(w->ego().s);
      Rng r(mix64(seed, 0xC10D));
      const int n = 2 + r.below(4);
      const C3 cc = atm.lighting == Lighting::kDay ? C3{245, 245, 248} : C3{240, 170, 140};
      for (int i = 0; i < n; ++i) {
        const double ang = r.uniform(-1.2, 1.2), el = r.uniform(0.15, 0.8);
        const double cx = cam.cx + (ang - head) * cam.fx;
        const double cy = cam.hy * (1.0 - el);
        const double rx = r.uniform(0.08, 0.2) * W, ry = rx * r.uniform(0.25, 0.4);
        const int a = atm.weather == Weather::kRain ? 60 : 110;
        cv.ellipse(cx, cy, rx, ry, {u8(cc.r), u8(cc.g), u8(cc.b)}, a);
        cv.ellipse(cx + rx * 0.4, cy - ry * 0.4, rx * 0.6, ry * 0.8, {u8(cc.r), u8(cc.g), u8(cc.b)}, a);
      }
    }
  }

  // Distant skyline / hills / tree line: a height per column from hashed knots in heading space.
  void draw_skyline(Canvas& cv) {
    const double head = w->geometry().heading(w->ego().s);
    C3 c = urban ? C3{112, 120, 136} : (highway ? C3{62, 92, 64} : C3{92, 116, 96});
    if (atm.lighting == Lighting::kNight) c = urban ? C3{22, 22, 30} : C3{12, 14, 18};
    else if (atm.lighting == Lighting::kDusk) c = scale(c, 0.55f);
    const float f = static_cast<float>(atm.fog(400));
    const Px px{u8(c.r * (1 - f) + fogc.r * f), u8(c.g * (1 - f) + fogc.g * f), u8(c.b * (1 - f) + fogc.b * f)};
    const double knot = urban ? 0.035 : (highway ? 0.02 : 0.12);
    const double hmax = urban ? 0.11 : (highway ? 0.035 : 0.06);
    for (int x = 0; x < W; ++x) {
      const double a = (x + 0.5 - cam.cx) / cam.fx + head;
      const double u = a / knot;
      const int64_t k = static_cast<int64_t>(std::floor(u));
      auto hk = [&](int64_t kk) {
        return static_cast<double>(mix64(seed ^ 0x5C1, static_cast<uint64_t>(kk)) % 1000) * 0.001;
      };
      double h;
      if (rural) {
        const double t = u - static_cast<double>(k);
        const double tt = t * t * (3 - 2 * t);
        h = hk(k) + (hk(k + 1) - hk(k)) * tt;
      } else {
        h = hk(k);
      }
      const double hp = (0.25 + 0.75 * h) * hmax * H;
      const int y1 = std::min(ground_y0, H);
      const int y0 = std::max(0, Canvas::pix(cam.hy - hp));
      for (int y = y0; y < y1; ++y) {
        uint8_t* q = cv.row(y) + 3 * x;
        q[0] = px.r;
        q[1] = px.g;
        q[2] = px.b;
      }
    }
  }

  // Ground rows: surfaces by spans, resolved through the per-row colour tables; then markings.
  void draw_ground(Canvas& cv) {
    const EgoState& e = w->ego();
    const RoadGeometry& geo = w->geometry();
    const double le = lay.left_edge(), re = lay.right_edge();
    const double lo = le - lay.shoulder, ro = re + lay.shoulder;
    const bool night_cone = atm.headlights > 0;
    const double dash_period = highway ? 15.0 : 12.0, dash_len = highway ? 5.0 : 4.0;
    for (int y = ground_y0; y < H; ++y) {
      const double z = row_z[y], k = row_scale[y];
      const double xo = geo.center_x(e.s, z) - e.d;
      auto xd = [&](double d) { return cam.cx + k * (xo + d); };
      const double s_world = e.s + z;
      uint8_t* sp = surf.data();
      // Base: grass / verge, with bands every 4 m for a sense of motion.
      const uint8_t base = (static_cast<int64_t>(std::floor(s_world / 4.0)) & 1) ? kGrass : kGrassDark;
      std::memset(sp, base, W);
      auto fill = [&](double d0, double d1, uint8_t id) {
        const int a = std::max(0, Canvas::pix(xd(d0))), b = std::min(W, Canvas::pix(xd(d1)));
        if (b > a) std::memset(sp + a, id, b - a);
      };
      if (lay.sidewalk > 0) {
        fill(lo - lay.sidewalk, lo - 0.15, kSidewalk);
        fill(lo - 0.15, lo, kKerb);
        fill(ro, ro + 0.15, kKerb);
        fill(ro + 0.15, ro + lay.sidewalk, kSidewalk);
      }
      fill(lo, ro, kShoulder);
      // Asphalt with patches (hashed per 3 m band and lane).
      const int64_t band = static_cast<int64_t>(std::floor(s_world / 3.0));
      fill(le, re, kAsphalt);
      for (int ln = -lay.oncoming; ln < lay.lanes; ++ln) {
        if (mix64(seed ^ 0xA5F, static_cast<uint64_t>(band * 8 + ln + 4)) % 7 == 0)
          fill(ln * lay.lane_width + 0.5, (ln + 1) * lay.lane_width - 0.5, kAsphaltDark);
      }
      // Resolve.
      uint8_t* q = cv.row(y);
      const Px* la = &lut_amb[static_cast<size_t>(y) * kNumSurf];
      const Px* ll = &lut_lit[static_cast<size_t>(y) * kNumSurf];
      const float fall = row_fall[y];
      if (night_cone && fall > 0.001f) {
        const double cone = k * (0.45 * z + 1.6);
        const double inner = 0.7 * cone;
        const int c0 = std::max(0, Canvas::pix(cam.cx - cone)), c1 = std::min(W, Canvas::pix(cam.cx + cone));
        for (int x = 0; x < W; ++x) {
          const Px a = la[sp[x]];
          if (x >= c0 && x < c1) {
            const double ax = std::abs(x + 0.5 - cam.cx);
            const int wgt = ax <= inner ? 256 : static_cast<int>(256.0 * (cone - ax) / (cone - inner));
            const Px b = ll[sp[x]];
            q[3 * x] = static_cast<uint8_t>(a.r + (((b.r - a.r) * wgt) >> 8));
            q[3 * x + 1] = static_cast<uint8_t>(a.g + (((b.g - a.g) * wgt) >> 8));
            q[3 * x + 2] = static_cast<uint8_t>(a.b + (((b.b - a.b) * wgt) >> 8));
          } else {
            q[3 * x] = a.r;
            q[3 * x + 1] = a.g;
            q[3 * x + 2] = a.b;
          }
        }
      } else {
        for (int x = 0; x < W; ++x) {
          const Px a = la[sp[x]];
          q[3 * x] = a.r;
          q[3 * x + 1] = a.g;
          q[3 * x + 2] = a.b;
        }
      }
      // Markings (0.15 m wide; thinner than a pixel: blended by coverage).
      const double mw = 0.15;
      auto mark = [&](double d, int id) {
        const double x0 = xd(d - 0.5 * mw), x1 = xd(d + 0.5 * mw);
        const double wpx = x1 - x0;
        const double xc = 0.5 * (x0 + x1);
        Px c = la[id];
        if (night_cone && fall > 0.001f) {
          const double cone = k * (0.45 * z + 1.6);
          if (std::abs(xc - cam.cx) < cone) c = ll[id];
        }
        if (wpx >= 1.0) {
          cv.span_px(y, Canvas::pix(x0), Canvas::pix(x1), c);
        } else if (wpx > 0.12) {
          const int px = static_cast<int>(std::floor(xc));
          cv.span_px_blend(y, px, px + 1, c, static_cast<int>(wpx * 256));
        }
      };
      const bool dash_on = std::fmod(s_world, dash_period) < dash_len && s_world > -1e9;
      mark(re - 0.15, kWhite);
      if (lay.oncoming > 0) {
        mark(le + 0.15, kWhite);
        mark(-0.12, kYellow);
        mark(0.12, kYellow);
        if (dash_on)
          for (int j = 1; j < lay.oncoming; ++j) mark(-j * lay.lane_width, kWhite);
      } else {
        mark(le + 0.15, highway ? kYellow : kWhite);
      }
      if (dash_on)
        for (int i = 1; i < lay.lanes; ++i) mark(i * lay.lane_width, kWhite);
      // Stop lines and zebra crossings (row coverage of the stripe in s gives the blend).
      const double zn = row_znear[y], zf = row_zfar[y];
      const double sn = e.s + zn, sf = e.s + zf;
      for (const auto& l : w->spec().lights) {
        const double stop = l.s - kStopLineBack;
        auto cover = [&](double a, double b) {
          const double lo2 = std::max(a, sn), hi2 = std::min(b, sf);
          return hi2 > lo2 ? (hi2 - lo2) / std::max(1e-6, sf - sn) : 0.0;
        };
        const double cs = cover(stop - 0.45, stop);
        if (cs > 0.05) {
          const int a = static_cast<int>(std::min(1.0, cs * 1.5) * 256);
          cv.span_px_blend(y, Canvas::pix(xd(0.3)), Canvas::pix(xd(re - 0.3)), la[kWhite], a);
        }
        if (l.crosswalk) {
          const double cz = cover(l.s - kZebraFrom, l.s - kZebraTo);
          if (cz > 0.05) {
            const int a = static_cast<int>(std::min(1.0, cz * 1.5) * 230);
            for (double d = le + 0.3; d + 0.5 <= re; d += 1.0) {
              const double x0 = xd(d), x1 = xd(d + 0.5);
              if (x1 - x0 >= 1.0) cv.span_px_blend(y, Canvas::pix(x0), Canvas::pix(x1), la[kWhite], a);
              else cv.span_px_blend(y, static_cast<int>(std::floor(x0)), static_cast<int>(std::floor(x0)) + 1, la[kWhite],
                                    static_cast<int>(a * (x1 - x0) * 0.8));
            }
          }
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Scenery by 10 m bucket

  static constexpr double kBucket = 10.0;

  struct Item {
    double z;
    int kind;   // 0 tree, 1 lamp, 2 sign, 3 light, 4 element, 5 ped, 6 vehicle, 7 bush
    int index;
    double s, d;
    uint64_t h;
  };

  double draw_range() const { return urban ? 130.0 : 220.0; }

  void draw_walls(Canvas& cv, std::vector<Item>* items) {
    const EgoState& e = w->ego();
    const int64_t b0 = static_cast<int64_t>(std::floor((e.s - 12) / kBucket));
    const int64_t b1 = static_cast<int64_t>(std::floor((e.s + draw_range()) / kBucket));
    const double le = lay.left_edge() - lay.shoulder, re = lay.right_edge() + lay.shoulder;
    double xs[4], ys[4];
    for (int64_t b = b1; b >= b0; --b) {
      const double s0 = b * kBucket, s1 = s0 + kBucket;
      const double zc = zof(0.5 * (s0 + s1));
      for (int side = 0; side < 2; ++side) {
        const double sg = side == 0 ? -1.0 : 1.0;
        const double edge = side == 0 ? le : re;
        Rng r(mix64(seed ^ (0xB0C4 + side), static_cast<uint64_t>(b)));
        if (urban) {
          // Building facade (occasional gaps: side streets).
          const bool gap = r.chance(0.08);
          const double setback = r.uniform(0.3, 3.0);
          const double hgt = r.uniform(6, 22);
          static const C3 pal[8] = {{150, 80, 62}, {196, 180, 150}, {130, 130, 134}, {210, 206, 196},
                                    {110, 122, 140}, {170, 150, 120}, {96, 96, 100}, {184, 120, 90}};
          const C3 col = pal[r.below(8)];
          const double D = edge + sg * (lay.sidewalk + setback);
          if (!gap && wall_quad(s0, s1, D, 0, hgt, xs, ys)) {
            // Side facing the road is darker on the left (sun from the right).
            cv.poly(xs, ys, 4, shade(scale(col, side == 0 ? 0.85f : 1.0f), std::max(kNear, zc), X(0.5 * (s0 + s1), D), 3.0));
            if (zc < 80) draw_windows(cv, s0, s1, D, hgt, r, side);
          }
          const bool lamp = (b % 3 + 3) % 3 == 0;
          if (lamp) items->push_back({zof(s0 + 2), 1, side, s0 + 2, edge + sg * 0.5, 0});
          if (r.chance(0.25)) items->push_back({zof(s0 + 6), 0, 0, s0 + 6, edge + sg * (lay.sidewalk * 0.6), r.next_u64()});
        } else if (highway) {
          if (side == 1 || lay.oncoming == 0) {
            // Guard rail on the right; concrete median barrier on the left.
            const double D = side == 1 ? edge + 0.5 : edge - 0.6;
            if (wall_quad(s0, s1, D, side == 1 ? 0.45 : 0.0, 0.8, xs, ys)) {
              const C3 c = side == 1 ? C3{170, 172, 176} : C3{180, 178, 170};
              cv.poly(xs, ys, 4, shade(c, std::max(kNear, zc), X(s0, D), 0.6));
              if (side == 1 && zc < 60) {
                for (double sp = s0; sp < s1; sp += 4.0) {
                  const double z = zof(sp);
                  if (z <= kNear) continue;
                  const double xx = sx(X(sp, D), z);
                  cv.rect(xx - 0.06 * cam.fx / z, sy(0.8, z), xx + 0.06 * cam.fx / z, sy(0, z), shade({80, 80, 84}, z, 0, 0.4));
                }
              }
            }
          }
          if (r.chance(0.5)) items->push_back({zof(s0 + 5), 0, 0, s0 + 5, edge + sg * r.uniform(6, 20), r.next_u64()});
          if (r.chance(0.4)) items->push_back({zof(s0 + 1), 7, 0, s0 + 1, edge + sg * r.uniform(3.5, 9), r.next_u64()});
        } else {
          const int n = r.below(3);
          for (int i = 0; i < n; ++i) {
            const double s = s0 + r.uniform(0, kBucket);
            items->push_back({zof(s), 0, 0, s, edge + sg * r.uniform(2.5, 14), r.next_u64()});
          }
          if (r.chance(0.5)) items->push_back({zof(s0 + 3), 7, 0, s0 + 3, edge + sg * r.uniform(1.5, 6), r.next_u64()});
        }
      }
    }
  }

  void draw_windows(Canvas& cv, double s0, double s1, double D, double hgt, Rng& r, int side) {
    double xs[4], ys[4];
    const bool night = atm.lighting == Lighting::kNight;
    const double zc = zof(0.5 * (s0 + s1));
    // Shop front.
    if (wall_quad(s0 + 0.8, s1 - 0.8, D, 0.4, 2.8, xs, ys)) {
      const bool lit = night || atm.lighting == Lighting::kDusk;
      cv.poly(xs, ys, 4, lit && r.chance(0.6) ? emit({200, 170, 110}, zc) : shade({40, 48, 58}, std::max(kNear, zc), 0, 1.5));
    }
    for (double y = 4.0; y + 1.5 < hgt - 0.5; y += 3.0) {
      for (int c = 0; c < 3; ++c) {
        const double a = s0 + kBucket * (0.12 + 0.31 * c), b2 = a + 1.3;
        if (!wall_quad(a, b2, D, y, y + 1.5, xs, ys)) continue;
        if (std::abs(xs[1] - xs[0]) < 1.2) continue;  // edge-on and distant: windows would alias into stripes
        const bool lit = night ? r.chance(0.35) : false;
        const Px px = lit ? emit({255, 204, 120}, zc) : shade({48, 58, 72}, std::max(kNear, zc), 0, y);
        cv.poly(xs, ys, 4, px);
      }
    }
    (void)side;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Billboards

  void draw_tree(Canvas& cv, const Item& it) {
    const double z = it.z;
    if (z <= kNear) return;
    Rng r(it.h);
    const double Xc = X(it.s, it.d);
    const double k = cam.fx / z;
    const double th = r.uniform(1.8, 3.2), cr = r.uniform(1.4, 2.6);
    cv.rect(sx(Xc, z) - 0.16 * k, sy(th + cr * 0.5, z), sx(Xc, z) + 0.16 * k, sy(0, z), shade({92, 66, 44}, z, Xc, 1.0));
    const C3 g = lerp(C3{40, 92, 40}, C3{86, 124, 52}, static_cast<float>(r.uniform()));
    const double cy = sy(th + cr, z);
    cv.ellipse(sx(Xc, z), cy, cr * k, cr * 1.1 * k, shade(g, z, Xc, 3.0));
    cv.ellipse(sx(Xc, z) - 0.35 * cr * k, cy - 0.3 * cr * k, cr * 0.55 * k, cr * 0.5 * k, shade(scale(g, 1.18f), z, Xc, 3.0));
  }

  void draw_bush(Canvas& cv, const Item& it) {
    const double z = it.z;
    if (z <= kNear) return;
    Rng r(it.h);
    const double Xc = X(it.s, it.d), k = cam.fx / z;
    const double rr = r.uniform(0.5, 1.1);
    cv.ellipse(sx(Xc, z), sy(rr * 0.6, z), rr * 1.3 * k, rr * 0.6 * k, shade({58, 96, 44}, z, Xc, 0.5));
  }

  void draw_lamp(Canvas& cv, const Item& it) {
    const double z = it.z;
    if (z <= kNear) return;
    const double Xc = X(it.s, it.d), k = cam.fx / z;
    const double sg = it.index == 0 ? 1.0 : -1.0;  // arm points towards the road
    const Px pole = shade({120, 122, 126}, z, Xc, 3.0);
    cv.rect(sx(Xc, z) - 0.07 * k, sy(7.2, z), sx(Xc, z) + 0.07 * k, sy(0, z), pole);
    const double hx = sx(Xc + sg * 1.4, z);
    cv.rect(std::min(sx(Xc, z), hx), sy(7.2, z), std::max(sx(Xc, z), hx), sy(7.05, z), pole);
    const bool on = atm.lighting != Lighting::kDay;
    const Px head = on ? emit({255, 226, 170}, z) : shade({200, 200, 196}, z, Xc, 7.0);
    cv.rect(hx - 0.35 * k, sy(7.1, z), hx + 0.35 * k, sy(6.95, z), head);
    if (on) cv.glow(hx, sy(7.0, z), std::max(2.0, 1.4 * k), {255, 210, 150}, 0.55f * glow_strength());
  }

  void draw_sign(Canvas& cv, const SignSpec& g) {
    const double z = zof(g.s);
    if (z <= kNear) return;
    const double d = w->sign_d(g);
    const double Xc = X(g.s, d), k = cam.fx / z;
    const double cx = sx(Xc, z), cy = sy(kSignCenterHeight, z);
    const double r = 0.5 * kSignSize * k;
    // Post.
    cv.rect(cx - 0.045 * k, cy, cx + 0.045 * k, sy(0, z), shade({130, 132, 136}, z, Xc, 1.0));
    const Px red = shade({200, 20, 28}, z, Xc, kSignCenterHeight, true);
    const Px white = shade({238, 238, 236}, z, Xc, kSignCenterHeight, true);
    const Px black = shade({18, 18, 20}, z, Xc, kSignCenterHeight, true);
    switch (g.type) {
      case SignType::kStop: {
        double xs[8], ys[8];
        auto oct = [&](double rr) {
          for (int i = 0; i < 8; ++i) {
            // Octagon with flat top: vertices at +-22.5 deg + i*45 deg, precomputed cos/sin.
            static const double cs[8][2] = {{0.92388, 0.38268},  {0.38268, 0.92388},  {-0.38268, 0.92388},
                                            {-0.92388, 0.38268}, {-0.92388, -0.38268}, {-0.38268, -0.92388},
                                            {0.38268, -0.92388}, {0.92388, -0.38268}};
            xs[i] = cx + rr * cs[i][0];
            ys[i] = cy - rr * cs[i][1];
          }
        };
        oct(r);
        cv.poly(xs, ys, 8, white);
        oct(r * 0.88);
        cv.poly(xs, ys, 8, red);
        // "STOP": 3x5 glyphs when the face is large enough, else a white bar suggesting the word.
        if (r * 1.3 / 15.0 >= 0.9) {
          const double cell = r * 1.3 / 15.0;
          const double gx0 = cx - 7.5 * cell, gy0 = cy - 2.5 * cell;
          for (int L = 0; L < 4; ++L)
            for (int row = 0; row < 5; ++row)
              for (int col = 0; col < 3; ++col)
                if (kGlyphs[L][row] & (4 >> col))
                  cv.rect(gx0 + (L * 4 + col) * cell, gy0 + row * cell, gx0 + (L * 4 + col + 1) * cell,
                          gy0 + (row + 1) * cell, white);
        } else {
          // Too small for glyphs: four letter blocks with gaps (never one solid bar, which is "no entry").
          for (int L = 0; L < 4; ++L) {
            const double a = cx - 0.62 * r + L * 0.34 * r;
            cv.rect(a, cy - 0.2 * r, a + 0.22 * r, cy + 0.2 * r, white);
          }
        }
        break;
      }
      case SignType::kYield: {
        double xs[3] = {cx - r, cx + r, cx}, ys[3] = {cy - 0.8 * r, cy - 0.8 * r, cy + 0.95 * r};
        cv.poly(xs, ys, 3, red);
        const double gy = cy - 0.8 * r + (1.75 * r) / 3.0;  // centroid
        double xi[3], yi[3];
        for (int i = 0; i < 3; ++i) {
          xi[i] = cx + (xs[i] - cx) * 0.55;
          yi[i] = gy + (ys[i] - gy) * 0.55;
        }
        cv.poly(xi, yi, 3, white);
        break;
      }
      case SignType::kNoEntry:
        cv.ellipse(cx, cy, r, r, white);
        cv.ellipse(cx, cy, r * 0.92, r * 0.92, red);
        cv.rect(cx - 0.68 * r, cy - 0.17 * r, cx + 0.68 * r, cy + 0.17 * r, white);
        break;
      case SignType::kSpeed: {
        cv.ellipse(cx, cy, r, r, red);
        cv.ellipse(cx, cy, r * 0.76, r * 0.76, white);
        const int v = g.value;
        const int nd = v >= 100 ? 3 : 2;
        const int digits[3] = {v >= 100 ? v / 100 : v / 10, v >= 100 ? (v / 10) % 10 : v % 10, v % 10};
        const double dh = 0.9 * r;
        const double dw = nd == 3 ? 0.38 * dh : 0.5 * dh;
        const double gap = 0.14 * dh;
        const double total = nd * dw + (nd - 1) * gap;
        double x0 = cx - 0.5 * total;
        for (int i = 0; i < nd; ++i, x0 += dw + gap) draw_digit(cv, digits[i], x0, cy - 0.5 * dh, dw, dh, black);
        break;
      }
    }
  }

  void draw_digit(Canvas& cv, int dgt, double x0, double y0, double w, double h, Px c) {
    const double t = std::max(0.17 * h, 0.9);
    const uint8_t m = kSeg[dgt];
    const double ym = y0 + 0.5 * h;
    if (m & 1) cv.rect(x0, y0, x0 + w, y0 + t, c);
    if (m & 2) cv.rect(x0 + w - t, y0, x0 + w, ym + 0.5 * t, c);
    if (m & 4) cv.rect(x0 + w - t, ym - 0.5 * t, x0 + w, y0 + h, c);
    if (m & 8) cv.rect(x0, y0 + h - t, x0 + w, y0 + h, c);
    if (m & 16) cv.rect(x0, ym - 0.5 * t, x0 + t, y0 + h, c);
    if (m & 32) cv.rect(x0, y0, x0 + t, ym + 0.5 * t, c);
    if (m & 64) cv.rect(x0, ym - 0.5 * t, x0 + w, ym + 0.5 * t, c);
  }

  void draw_light(Canvas& cv, size_t i) {
    const TrafficLightSpec& l = w->spec().lights[i];
    const LightState st = w->light_states()[i];
    const double z = zof(l.s);
    if (z <= kNear) return;
    const double d = w->light_d(l);
    const double Xc = X(l.s, d), k = cam.fx / z;
    const double bottom = l.mount == LightMount::kOverhead ? kLightOverheadBottom : kLightPoleBottom;
    const Px pole = shade({110, 112, 116}, z, Xc, 4.0);
    if (l.mount == LightMount::kOverhead) {
      const double pd = lay.right_edge() + lay.shoulder + 0.8;
      const double Xp = X(l.s, pd);
      cv.rect(sx(Xp, z) - 0.1 * k, sy(6.5, z), sx(Xp, z) + 0.1 * k, sy(0, z), pole);
      cv.rect(sx(Xc, z) - 0.1 * k, sy(6.5, z), sx(Xp, z), sy(6.32, z), pole);
      cv.rect(sx(Xc, z) - 0.04 * k, sy(6.4, z), sx(Xc, z) + 0.04 * k, sy(bottom + kLightHousingH, z), pole);
    } else {
      cv.rect(sx(Xc, z) - 0.07 * k, sy(bottom, z), sx(Xc, z) + 0.07 * k, sy(0, z), pole);
    }
    // Back plate with a light rim (contrast against dark backgrounds), then the housing.
    const double hw = 0.5 * kLightHousingW;
    cv.rect(sx(Xc - hw - 0.09, z), sy(bottom + kLightHousingH + 0.09, z), sx(Xc + hw + 0.09, z), sy(bottom - 0.09, z),
            shade({196, 196, 190}, z, Xc, bottom));
    cv.rect(sx(Xc - hw - 0.05, z), sy(bottom + kLightHousingH + 0.05, z), sx(Xc + hw + 0.05, z), sy(bottom - 0.05, z),
            shade({22, 22, 24}, z, Xc, bottom));
    cv.rect(sx(Xc - hw, z), sy(bottom + kLightHousingH, z), sx(Xc + hw, z), sy(bottom, z), shade({40, 40, 42}, z, Xc, bottom));
    static const C3 lit[3] = {{255, 40, 28}, {255, 192, 0}, {30, 255, 120}};
    static const C3 dark[3] = {{70, 22, 20}, {70, 58, 14}, {16, 56, 34}};
    const double ys[3] = {bottom + 1.16, bottom + 0.70, bottom + 0.24};
    const int on = st == LightState::kRed ? 0 : (st == LightState::kYellow ? 1 : (st == LightState::kGreen ? 2 : -1));
    const double rr = kLampRadius * k;
    for (int j = 0; j < 3; ++j) {
      const Px c = j == on ? emit(lit[j], z) : shade(dark[j], z, Xc, bottom);
      cv.ellipse(sx(Xc, z), sy(ys[j], z), rr, rr, c);
    }
    if (on >= 0) {
      const float f = static_cast<float>(1.0 - atm.fog(z));
      cv.glow(sx(Xc, z), sy(ys[on], z), std::max(2.0, 3.2 * rr), lit[on], 0.75f * glow_strength() * f);
    }
  }

  void draw_element(Canvas& cv, const ConstructionElement& el) {
    const double z = zof(el.s);
    if (z <= kNear) return;
    const double Xc = X(el.s, el.d), k = cam.fx / z;
    const double cx = sx(Xc, z);
    switch (el.kind) {
      case ConstructionElement::kCone: {
        const Px orange = shade({255, 96, 8}, z, Xc, 0.4, true);
        const Px white = shade({240, 240, 240}, z, Xc, 0.4, true);
        cv.rect(cx - 0.25 * k, sy(0.05, z), cx + 0.25 * k, sy(0, z), shade({30, 30, 30}, z, Xc, 0.0));
        double xs[4] = {cx - 0.2 * k, cx + 0.2 * k, cx + 0.04 * k, cx - 0.04 * k};
        double ys[4] = {sy(0.05, z), sy(0.05, z), sy(kConeHeight, z), sy(kConeHeight, z)};
        cv.poly(xs, ys, 4, orange);
        cv.rect(cx - 0.13 * k, sy(0.5, z), cx + 0.13 * k, sy(0.36, z), white);
        break;
      }
      case ConstructionElement::kBarrier: {
        const Px leg = shade({60, 60, 60}, z, Xc, 0.3);
        cv.rect(cx - 0.62 * k, sy(0.6, z), cx - 0.55 * k, sy(0, z), leg);
        cv.rect(cx + 0.55 * k, sy(0.6, z), cx + 0.62 * k, sy(0, z), leg);
        const Px red = shade({210, 24, 24}, z, Xc, 0.8, true), white = shade({240, 240, 236}, z, Xc, 0.8, true);
        for (int i = 0; i < 6; ++i) {
          const double a = -0.7 + i * (1.4 / 6.0);
          cv.rect(cx + a * k, sy(1.0, z), cx + (a + 1.4 / 6.0) * k, sy(0.6, z), (i & 1) ? white : red);
        }
        if (atm.lighting != Lighting::kDay && (w->frame() / std::max(1, static_cast<int>(w->spec().fps / 2))) % 2 == 0) {
          cv.ellipse(cx, sy(1.1, z), 0.08 * k, 0.08 * k, emit({255, 170, 0}, z));
          cv.glow(cx, sy(1.1, z), std::max(2.0, 0.6 * k), {255, 160, 0}, 0.6f * glow_strength());
        }
        break;
      }
      case ConstructionElement::kWorker:
        draw_person(cv, z, Xc, 1.8, 0.52, {255, 110, 0}, {40, 44, 60}, {200, 150, 110}, true, 0.0, false);
        break;
      case ConstructionElement::kBoard: {
        cv.rect(cx - 0.045 * k, sy(kSignCenterHeight, z), cx + 0.045 * k, sy(0, z), shade({130, 132, 136}, z, Xc, 1.0));
        const double r = 0.5 * k, cy = sy(kSignCenterHeight, z);
        double xs[3] = {cx - r, cx + r, cx}, ys[3] = {cy + 0.85 * r, cy + 0.85 * r, cy - 0.95 * r};
        cv.poly(xs, ys, 3, shade({205, 20, 28}, z, Xc, 2.0, true));
        double xi[3], yi[3];
        const double gy = cy + 0.25 * r;
        for (int i = 0; i < 3; ++i) {
          xi[i] = cx + (xs[i] - cx) * 0.62;
          yi[i] = gy + (ys[i] - gy) * 0.62;
        }
        cv.poly(xi, yi, 3, shade({240, 236, 230}, z, Xc, 2.0, true));
        cv.rect(cx - 0.12 * r, cy - 0.05 * r, cx + 0.12 * r, cy + 0.5 * r, shade({16, 16, 16}, z, Xc, 2.0, true));
        cv.ellipse(cx, cy - 0.16 * r, 0.1 * r, 0.1 * r, shade({16, 16, 16}, z, Xc, 2.0, true));
        break;
      }
    }
  }

  // A person as a billboard at depth z, lateral X: legs (scissoring with the walk phase), torso, arms, head.
  void draw_person(Canvas& cv, double z, double Xc, double h, double wdt, C3 shirt, C3 trousers, C3 skin, bool worker,
                   double phase, bool side_view) {
    const double k = cam.fx / z;
    auto px = [&](double u) { return sx(Xc + u * wdt, z); };
    auto py = [&](double v) { return sy(v * h, z); };
    const double swing = side_view ? 0.22 * tri(phase / 1.4) : 0.05 * tri(phase / 1.4);
    const Px tr = shade(trousers, z, Xc, 0.5);
    cv.rect(px(-0.34 + swing), py(0.47), px(-0.04 + swing), py(0.0), tr);
    cv.rect(px(0.04 - swing), py(0.47), px(0.34 - swing), py(0.0), tr);
    const Px sh = shade(shirt, z, Xc, 1.2, worker);
    cv.rect(px(-0.5), py(0.82), px(0.5), py(0.45), sh);
    const double arm = side_view ? 0.12 * tri(phase / 1.4 + 0.5) : 0;
    cv.rect(px(-0.64 + arm), py(0.8), px(-0.5 + arm), py(0.5), sh);
    cv.rect(px(0.5 - arm), py(0.8), px(0.64 - arm), py(0.5), sh);
    if (worker) {
      const Px refl = shade({235, 235, 225}, z, Xc, 1.2, true);
      cv.rect(px(-0.5), py(0.66), px(0.5), py(0.62), refl);
    }
    const double hr = (h < 1.5 ? 0.085 : 0.07) * h;
    const double hcx = px(0.0), hcy = py(0.905);
    cv.ellipse(hcx, hcy, hr * k * 0.85, hr * k, shade(skin, z, Xc, 1.6));
    if (worker) cv.ellipse(hcx, hcy - 0.45 * hr * k, hr * k * 1.0, hr * k * 0.6, shade({250, 210, 0}, z, Xc, 1.7, true));
    else cv.ellipse(hcx, hcy - 0.55 * hr * k, hr * k * 0.8, hr * k * 0.5, shade({50, 36, 26}, z, Xc, 1.7));
  }

  void draw_ped(Canvas& cv, const PedState& p) {
    const double z = zof(p.s);
    if (z <= kNear) return;
    const double Xc = X(p.s, p.d);
    const uint64_t h = mix64(seed, fnv1a(p.spec->id.data(), p.spec->id.size()));
    static const C3 skins[4] = {{224, 180, 150}, {190, 140, 100}, {140, 96, 64}, {96, 64, 44}};
    static const C3 trousers[4] = {{38, 42, 60}, {30, 30, 32}, {90, 90, 96}, {70, 56, 40}};
    const bool moving = p.vd != 0 || p.vs != 0;
    draw_person(cv, z, Xc, ped_height(p.spec->cls), ped_width(p.spec->cls), paint_colour(p.spec->shirt),
                trousers[(h >> 8) & 3], skins[h & 3], false, moving ? p.phase : 0.0, p.vd != 0);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Vehicles

  void draw_vehicle(Canvas& cv, const VehicleState& v) {
    const VehicleDims& dm = v.dims;
    const double s_rear = v.s - 0.5 * dm.length, s_front = v.s + 0.5 * dm.length;
    const double z_face = zof(s_rear);
    const double z_back = zof(s_front);
    if (z_back <= kNear) return;
    const VehicleType type = v.spec->type;
    const C3 body = paint_colour(v.spec->colour);
    const bool onc = v.spec->oncoming;
    const bool two_wheel = type == VehicleType::kMotorcycle || type == VehicleType::kBicycle;
    const bool lamps = atm.lighting != Lighting::kDay;
    double xs[4], ys[4];

    // Shadow on the road.
    if (ground_quad(s_rear - 0.2, s_rear + std::min(2.5, dm.length * 0.6), v.d - 0.55 * dm.width, v.d + 0.55 * dm.width, xs, ys))
      cv.poly(xs, ys, 4, {0, 0, 0}, atm.lighting == Lighting::kDay && atm.weather == Weather::kClear ? 120 : 70);

    // Side face towards the camera.
    if (!two_wheel) {
      const double dl = v.d - 0.5 * dm.width, dr = v.d + 0.5 * dm.width;
      const double xl = X(std::max(s_rear, w->ego().s + kNear), dl), xr = X(std::max(s_rear, w->ego().s + kNear), dr);
      const double dside = xl > 0 ? dl : (xr < 0 ? dr : 0);
      if (dside != 0) {
        const double zc = std::max(kNear, 0.5 * (std::max(z_face, kNear) + z_back));
        const double Xs = X(v.s, dside);
        const C3 sc = scale(body, 0.78f);
        if (type == VehicleType::kCar) {
          if (wall_quad(s_rear, s_front, dside, 0.3, 0.95, xs, ys)) cv.poly(xs, ys, 4, shade(sc, zc, Xs, 0.6));
          if (wall_quad(s_rear + 0.8, s_front - 1.3, dside, 0.95, dm.height - 0.05, xs, ys))
            cv.poly(xs, ys, 4, shade({44, 52, 62}, zc, Xs, 1.2));
          for (double ax : {s_rear + 0.85, s_front - 0.85})
            if (wall_quad(ax - 0.33, ax + 0.33, dside, 0.0, 0.62, xs, ys)) cv.poly(xs, ys, 4, shade({20, 20, 22}, zc, Xs, 0.3));
        } else if (type == VehicleType::kTruck) {
          if (wall_quad(s_rear, s_front - 2.2, dside, 0.95, dm.height, xs, ys)) cv.poly(xs, ys, 4, shade(sc, zc, Xs, 2.0));
          if (wall_quad(s_front - 2.1, s_front, dside, 0.6, 3.0, xs, ys))
            cv.poly(xs, ys, 4, shade(scale(C3{200, 200, 204}, 0.8f), zc, Xs, 1.6));
          if (wall_quad(s_rear, s_front, dside, 0.35, 0.95, xs, ys)) cv.poly(xs, ys, 4, shade({28, 28, 30}, zc, Xs, 0.6));
          for (double ax : {s_rear + 1.2, s_rear + 2.4, s_front - 1.3})
            if (wall_quad(ax - 0.5, ax + 0.5, dside, 0.0, 1.0, xs, ys)) cv.poly(xs, ys, 4, shade({18, 18, 20}, zc, Xs, 0.4));
        } else {  // bus
          if (wall_quad(s_rear, s_front, dside, 0.3, dm.height, xs, ys)) cv.poly(xs, ys, 4, shade(sc, zc, Xs, 1.6));
          if (wall_quad(s_rear + 0.6, s_front - 0.4, dside, 1.7, 2.8, xs, ys)) cv.poly(xs, ys, 4, shade({40, 50, 62}, zc, Xs, 2.2));
          for (double ax : {s_rear + 2.6, s_front - 2.6})
            if (wall_quad(ax - 0.5, ax + 0.5, dside, 0.0, 1.0, xs, ys)) cv.poly(xs, ys, 4, shade({18, 18, 20}, zc, Xs, 0.4));
        }
      }
    }
    if (z_face <= kNear) return;
    // The face towards the camera: rear (same direction) or front (oncoming). Local coordinates: u across the
    // width (-0.5..0.5, left to right as seen), height in metres.
    const double z = z_face;
    const double Xc = X(s_rear, v.d);
    const double k = cam.fx / z;
    auto ux = [&](double u) { return sx(Xc + u * dm.width, z); };
    auto hy = [&](double hh) { return sy(hh, z); };
    auto box = [&](double u0, double h0, double u1, double h1, Px c) { cv.rect(ux(u0), hy(h1), ux(u1), hy(h0), c); };
    const Px bodyp = shade(body, z, Xc, 1.0);
    const Px dark = shade({22, 22, 24}, z, Xc, 0.4);
    const Px glass = shade(atm.lighting == Lighting::kDay ? C3{62, 76, 92} : C3{30, 36, 44}, z, Xc, 1.3);
    const float gs = glow_strength();
    const float fogk = static_cast<float>(1.0 - atm.fog(z));
    // Rear lamps: off (dark red), tail (dusk/night) or brake (bright, with glow).
    const C3 lamp_col = v.braking ? C3{255, 36, 30} : (lamps ? C3{190, 26, 24} : C3{110, 22, 22});
    auto rear_lamp = [&](double u0, double h0, double u1, double h1) {
      const Px c = (v.braking || lamps) ? emit(lamp_col, z) : shade(lamp_col, z, Xc, h0);
      box(u0, h0, u1, h1, c);
      if (v.braking || lamps) {
        const double r = (v.braking ? 1.6 : 1.0) * std::max(0.5 * (ux(u1) - ux(u0)), 0.6) + (v.braking ? 1.0 : 0.3);
        cv.glow(0.5 * (ux(u0) + ux(u1)), 0.5 * (hy(h0) + hy(h1)), r * (v.braking ? 1.8 : 1.3), {255, 30, 20},
                (v.braking ? 0.9f : 0.45f) * gs * fogk);
      }
    };
    auto head_lamp = [&](double u0, double h0, double u1, double h1) {
      const Px c = lamps ? emit({255, 250, 225}, z) : shade({210, 212, 210}, z, Xc, h0);
      box(u0, h0, u1, h1, c);
      if (lamps) {
        const double r = std::max(0.5 * (ux(u1) - ux(u0)), 0.6);
        cv.glow(0.5 * (ux(u0) + ux(u1)), 0.5 * (hy(h0) + hy(h1)), r * 4.0 + 2.0, {255, 250, 230}, 1.0f * gs * fogk);
      }
    };
    switch (type) {
      case VehicleType::kCar: {
        box(-0.47, 0.0, -0.29, 0.36, dark);
        box(0.29, 0.0, 0.47, 0.36, dark);
        box(-0.5, 0.2, 0.5, 0.95, bodyp);
        box(-0.5, 0.2, 0.5, 0.33, shade(scale(body, 0.45f), z, Xc, 0.3));
        double cx4[4] = {ux(-0.47), ux(0.47), ux(0.36), ux(-0.36)};
        double cy4[4] = {hy(0.95), hy(0.95), hy(dm.height), hy(dm.height)};
        cv.poly(cx4, cy4, 4, bodyp);
        double gx4[4] = {ux(-0.41), ux(0.41), ux(0.33), ux(-0.33)};
        double gy4[4] = {hy(1.0), hy(1.0), hy(dm.height - 0.07), hy(dm.height - 0.07)};
        cv.poly(gx4, gy4, 4, glass);
        if (onc) {
          box(-0.3, 0.42, 0.3, 0.62, dark);  // grille
          head_lamp(-0.47, 0.6, -0.3, 0.76);
          head_lamp(0.3, 0.6, 0.47, 0.76);
        } else {
          box(-0.13, 0.38, 0.13, 0.52, lamps ? emit({210, 210, 200}, z) : shade({222, 222, 214}, z, Xc, 0.45));
          rear_lamp(-0.49, 0.64, -0.29, 0.84);
          rear_lamp(0.29, 0.64, 0.49, 0.84);
          if (v.braking) rear_lamp(-0.12, dm.height - 0.1, 0.12, dm.height - 0.04);  // third brake light
        }
        break;
      }
      case VehicleType::kTruck: {
        box(-0.47, 0.0, -0.27, 0.55, dark);
        box(0.27, 0.0, 0.47, 0.55, dark);
        if (onc) {
          box(-0.5, 0.55, 0.5, 3.1, bodyp);
          box(-0.44, 1.9, 0.44, 2.9, glass);
          box(-0.35, 0.75, 0.35, 1.5, dark);
          head_lamp(-0.48, 0.7, -0.36, 0.9);
          head_lamp(0.36, 0.7, 0.48, 0.9);
        } else {
          box(-0.5, 0.4, 0.5, 0.62, dark);  // underride bar
          box(-0.5, 0.9, 0.5, dm.height, bodyp);
          box(-0.012, 0.95, 0.012, dm.height - 0.08, shade(scale(body, 0.55f), z, Xc, 2.0));
          for (double hh : {1.6, 2.4, 3.1}) box(-0.5, hh, 0.5, hh + 0.04, shade(scale(body, 0.7f), z, Xc, hh));
          box(-0.12, 0.62, 0.12, 0.84, shade({222, 222, 214}, z, Xc, 0.7));
          rear_lamp(-0.49, 0.62, -0.34, 0.85);
          rear_lamp(0.34, 0.62, 0.49, 0.85);
          if (lamps) {
            box(-0.5, dm.height - 0.08, -0.44, dm.height, emit({255, 150, 0}, z));
            box(0.44, dm.height - 0.08, 0.5, dm.height, emit({255, 150, 0}, z));
          }
        }
        break;
      }
      case VehicleType::kBus: {
        box(-0.46, 0.0, -0.28, 0.5, dark);
        box(0.28, 0.0, 0.46, 0.5, dark);
        box(-0.5, 0.3, 0.5, dm.height, bodyp);
        if (onc) {
          box(-0.46, 1.1, 0.46, 2.85, glass);
          box(-0.3, 2.9, 0.3, 3.1, lamps ? emit({255, 150, 20}, z) : dark);
          head_lamp(-0.47, 0.5, -0.32, 0.68);
          head_lamp(0.32, 0.5, 0.47, 0.68);
        } else {
          box(-0.42, 1.95, 0.42, 2.8, glass);
          box(-0.3, 0.6, 0.3, 1.25, shade(scale(body, 0.5f), z, Xc, 0.9));
          box(-0.3, 2.88, 0.3, 3.08, lamps ? emit({255, 150, 20}, z) : dark);
          box(-0.14, 0.38, 0.14, 0.55, shade({222, 222, 214}, z, Xc, 0.45));
          rear_lamp(-0.49, 0.5, -0.40, 1.3);
          rear_lamp(0.40, 0.5, 0.49, 1.3);
        }
        break;
      }
      case VehicleType::kMotorcycle: {
        const Px jacket = shade({38, 38, 44}, z, Xc, 1.1);
        box(-0.09, 0.0, 0.09, 0.64, dark);          // wheel
        box(-0.36, 0.45, -0.2, 0.9, jacket);        // legs
        box(0.2, 0.45, 0.36, 0.9, jacket);
        box(-0.32, 0.55, 0.32, 0.9, bodyp);         // fairing / tank
        box(-0.3, 0.88, 0.3, 1.32, jacket);         // rider torso
        cv.ellipse(ux(0), hy(1.43), 0.14 * k, 0.15 * k, bodyp);  // helmet in the bike's colour
        if (onc) head_lamp(-0.1, 0.72, 0.1, 0.84);
        else rear_lamp(-0.12, 0.76, 0.12, 0.86);
        break;
      }
      case VehicleType::kBicycle: {
        const double ped = tri(v.s / 1.7);
        box(-0.06, 0.0, 0.06, 0.68, dark);                      // wheel
        box(-0.08, 0.3, 0.08, 0.9, bodyp);                      // frame / rack
        const Px legs = shade({36, 40, 56}, z, Xc, 0.7);
        box(-0.28, 0.42 + 0.1 * ped, -0.08, 1.0, legs);
        box(0.08, 0.42 - 0.1 * ped, 0.28, 1.0, legs);
        box(-0.42, 0.98, 0.42, 1.48, bodyp);                    // jersey in the bicycle's colour
        cv.ellipse(ux(0), hy(1.6), 0.12 * k, 0.13 * k, shade({200, 150, 110}, z, Xc, 1.6));
        if (onc) head_lamp(-0.07, 0.8, 0.07, 0.88);
        else box(-0.07, 0.55, 0.07, 0.63, v.braking || lamps ? emit({230, 30, 30}, z) : shade({170, 24, 24}, z, Xc, 0.6));
        break;
      }
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Weather and post effects

  void draw_rain(Canvas& cv, Rng& r) {
    const double inten = w->spec().conditions.rain_intensity;
    const int n = static_cast<int>(inten * W * H / 260.0);
    const Px c = atm.lighting == Lighting::kNight ? Px{120, 124, 132} : Px{210, 212, 220};
    for (int i = 0; i < n; ++i) {
      const double x0 = r.uniform(-0.1 * W, W), y0 = r.uniform(-0.1 * H, H);
      const double len = r.uniform(0.03, 0.08) * H;
      const int a = 50 + r.below(60);
      const int iy0 = std::max(0, static_cast<int>(y0)), iy1 = std::min(H, static_cast<int>(y0 + len));
      for (int y = iy0; y < iy1; ++y) {
        const int x = static_cast<int>(x0 + 0.22 * (y - y0));
        if (x >= 0 && x < W) cv.span_px_blend(y, x, x + 1, c, a);
      }
    }
  }

  // Wet-road reflections below vehicles' lit lamps (rain, dusk/night).
  void draw_reflections(Canvas& cv) {
    if (atm.weather != Weather::kRain || atm.lighting == Lighting::kDay) return;
    for (const auto& v : w->vehicles()) {
      const double z = zof(v.s - 0.5 * v.dims.length);
      if (z <= 1.0 || z > 80) continue;
      const double Xc = X(v.s - 0.5 * v.dims.length, v.d);
      const double y0 = sy(0, z), len = (sy(0, z) - sy(0.8, z)) * 1.6;
      const C3 c = v.spec->oncoming ? C3{255, 245, 220} : (v.braking ? C3{255, 40, 30} : C3{200, 30, 26});
      const Px p = emit(c, z);
      for (double u : {-0.4, 0.4}) {
        if (v.spec->type == VehicleType::kMotorcycle || v.spec->type == VehicleType::kBicycle) u *= 0.1;
        const double xx = sx(Xc + u * v.dims.width, z);
        const double hw = std::max(0.5, 0.08 * cam.fx / z);
        for (int y = Canvas::pix(y0); y < std::min(H, Canvas::pix(y0 + len)); ++y) {
          const double t = (y + 0.5 - y0) / std::max(1.0, len);
          cv.span_px_blend(y, Canvas::pix(xx - hw), Canvas::pix(xx + hw), p, static_cast<int>(110 * (1 - t)));
        }
      }
    }
  }

  void apply_glare(uint8_t* rgb) {
    const size_t n = static_cast<size_t>(W) * H;
    const int tr = static_cast<int>(glare_tint.r), tg = static_cast<int>(glare_tint.g), tb = static_cast<int>(glare_tint.b);
    for (size_t i = 0; i < n; ++i) {
      const int g = glare[i];
      uint8_t* q = rgb + 3 * i;
      // Veil: compress contrast where the glare is strong, then add the glare light.
      const int keep = 256 - (g >> 2);
      const int r = ((q[0] * keep) >> 8) + ((g * tr) >> 8);
      const int gg = ((q[1] * keep) >> 8) + ((g * tg) >> 8);
      const int b = ((q[2] * keep) >> 8) + ((g * tb) >> 8);
      q[0] = static_cast<uint8_t>(r > 255 ? 255 : r);
      q[1] = static_cast<uint8_t>(gg > 255 ? 255 : gg);
      q[2] = static_cast<uint8_t>(b > 255 ? 255 : b);
    }
  }

  void apply_drops(Canvas& cv) {
    for (const auto& d : drops) {
      const Px c = atm.lighting == Lighting::kNight ? Px{60, 62, 70} : Px{190, 194, 200};
      cv.ellipse(d.x, d.y, d.r, d.r, c, 60);
      cv.ellipse(d.x - 0.3 * d.r, d.y - 0.3 * d.r, 0.35 * d.r, 0.35 * d.r, {235, 235, 240}, 50);
    }
  }

  // Radial (zoom) blur about the vanishing point: the average of the frame and two slightly zoomed copies.
  void apply_motion_blur(uint8_t* rgb) {
    const double strength = blur * clampd(w->ego().v / 20.0, 0.0, 1.5);
    if (strength < 0.02) return;
    const double k1 = 1.0 - 0.018 * strength, k2 = 1.0 - 0.036 * strength;
    for (int x = 0; x < W; ++x) {
      bx[x] = std::clamp(static_cast<int>(std::lround(cam.cx + (x + 0.5 - cam.cx) * k1 - 0.5)), 0, W - 1);
      bx[W + x] = std::clamp(static_cast<int>(std::lround(cam.cx + (x + 0.5 - cam.cx) * k2 - 0.5)), 0, W - 1);
    }
    for (int y = 0; y < H; ++y) {
      by[y] = std::clamp(static_cast<int>(std::lround(cam.hy + (y + 0.5 - cam.hy) * k1 - 0.5)), 0, H - 1);
      by[H + y] = std::clamp(static_cast<int>(std::lround(cam.hy + (y + 0.5 - cam.hy) * k2 - 0.5)), 0, H - 1);
    }
    std::memcpy(tmp.data(), rgb, tmp.size());
    const size_t stride = static_cast<size_t>(W) * 3;
    for (int y = 0; y < H; ++y) {
      const uint8_t* r0 = tmp.data() + y * stride;
      const uint8_t* r1 = tmp.data() + by[y] * stride;
      const uint8_t* r2 = tmp.data() + by[H + y] * stride;
      uint8_t* o = rgb + y * stride;
      for (int x = 0; x < W; ++x) {
        const uint8_t* a = r0 + 3 * x;
        const uint8_t* b = r1 + 3 * bx[x];
        const uint8_t* c = r2 + 3 * bx[W + x];
        o[3 * x] = static_cast<uint8_t>((2 * a[0] + b[0] + c[0] + 2) >> 2);
        o[3 * x + 1] = static_cast<uint8_t>((2 * a[1] + b[1] + c[1] + 2) >> 2);
        o[3 * x + 2] = static_cast<uint8_t>((2 * a[2] + b[2] + c[2] + 2) >> 2);
      }
    }
  }

  // Sensor noise: per pixel and channel a triangular-distributed value (sum of two uniform bytes), scaled to the
  // standard deviation; luminance-correlated part plus a smaller chroma part, from one 64-bit hash per pixel.
  void apply_noise(uint8_t* rgb, uint64_t frame_seed) {
    if (noise_sigma <= 0.01f) return;
    // std of (a + b - 255) for uniform bytes a, b is ~104.2
    const int q = static_cast<int>(noise_sigma / 104.2f * 256.f * 0.85f);
    const int qc = static_cast<int>(noise_sigma / 104.2f * 256.f * 0.45f);
    const size_t n = static_cast<size_t>(W) * H;
    uint64_t st = frame_seed;
    for (size_t i = 0; i < n; ++i) {
      // xorshift64* stream: cheaper than a full mix per pixel and still deterministic.
      st ^= st >> 12;
      st ^= st << 25;
      st ^= st >> 27;
      const uint64_t h = st * 0x2545F4914F6CDD1Dull;
      const int lum = static_cast<int>(h & 0xFF) + static_cast<int>((h >> 8) & 0xFF) - 255;
      const int c0 = static_cast<int>((h >> 16) & 0xFF) + static_cast<int>((h >> 24) & 0xFF) - 255;
      const int c1 = static_cast<int>((h >> 32) & 0xFF) + static_cast<int>((h >> 40) & 0xFF) - 255;
      const int c2 = static_cast<int>((h >> 48) & 0xFF) + static_cast<int>((h >> 56) & 0xFF) - 255;
      const int base = lum * q;
      uint8_t* p = rgb + 3 * i;
      int v0 = p[0] + ((base + c0 * qc) >> 8);
      int v1 = p[1] + ((base + c1 * qc) >> 8);
      int v2 = p[2] + ((base + c2 * qc) >> 8);
      p[0] = static_cast<uint8_t>(v0 < 0 ? 0 : (v0 > 255 ? 255 : v0));
      p[1] = static_cast<uint8_t>(v1 < 0 ? 0 : (v1 > 255 ? 255 : v1));
      p[2] = static_cast<uint8_t>(v2 < 0 ? 0 : (v2 > 255 ? 255 : v2));
    }
  }

  // ---------------------------------------------------------------------------------------------------------

  void render(uint8_t* rgb) {
    Canvas cv(rgb, W, H);
    draw_sky(cv);
    draw_skyline(cv);
    draw_ground(cv);
    std::vector<Item> items;
    items.reserve(128);
    draw_walls(cv, &items);
    const double range = draw_range();
    for (size_t i = 0; i < w->spec().signs.size(); ++i) {
      const double z = zof(w->spec().signs[i].s);
      if (z > kNear && z < range) items.push_back({z, 2, static_cast<int>(i), 0, 0, 0});
    }
    for (size_t i = 0; i < w->spec().lights.size(); ++i) {
      const double z = zof(w->spec().lights[i].s);
      if (z > kNear && z < range) items.push_back({z, 3, static_cast<int>(i), 0, 0, 0});
    }
    const auto& els = w->construction_elements();
    for (size_t i = 0; i < els.size(); ++i) {
      const double z = zof(els[i].s);
      if (z > kNear && z < range) items.push_back({z, 4, static_cast<int>(i), 0, 0, 0});
    }
    const auto& peds = w->pedestrians();
    for (size_t i = 0; i < peds.size(); ++i) {
      const double z = zof(peds[i].s);
      if (z > kNear && z < range) items.push_back({z, 5, static_cast<int>(i), 0, 0, 0});
    }
    const auto& veh = w->vehicles();
    for (size_t i = 0; i < veh.size(); ++i) {
      const double z = zof(veh[i].s - 0.5 * veh[i].dims.length);
      if (z + veh[i].dims.length > kNear && z < range) items.push_back({std::max(z, 0.0), 6, static_cast<int>(i), 0, 0, 0});
    }
    // Far to near; ties broken by kind and index so the order never depends on the sort implementation.
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
      if (a.z != b.z) return a.z > b.z;
      if (a.kind != b.kind) return a.kind < b.kind;
      if (a.index != b.index) return a.index < b.index;
      return a.s < b.s;
    });
    for (const auto& it : items) {
      switch (it.kind) {
        case 0: draw_tree(cv, it); break;
        case 1: draw_lamp(cv, it); break;
        case 2: draw_sign(cv, w->spec().signs[it.index]); break;
        case 3: draw_light(cv, static_cast<size_t>(it.index)); break;
        case 4: draw_element(cv, els[it.index]); break;
        case 5: draw_ped(cv, peds[it.index]); break;
        case 6: draw_vehicle(cv, veh[it.index]); break;
        case 7: draw_bush(cv, it); break;
      }
    }
    const uint64_t fs = mix64(seed, static_cast<uint64_t>(w->frame()) + 0x9000);
    draw_reflections(cv);
    if (atm.weather == Weather::kRain) {
      Rng r(fs);
      draw_rain(cv, r);
      apply_drops(cv);
    }
    if (atm.weather == Weather::kGlare) apply_glare(rgb);
    apply_motion_blur(rgb);
    apply_noise(rgb, fs | 1);
  }
};

Renderer::Renderer(const World& w) : impl_(std::make_unique<Impl>(w)) {}
Renderer::~Renderer() = default;
Renderer::Renderer(Renderer&&) noexcept = default;
Renderer& Renderer::operator=(Renderer&&) noexcept = default;

void Renderer::render(const World& w, uint8_t* rgb) {
  impl_->w = &w;
  impl_->render(rgb);
}

}  // namespace ev::sim
