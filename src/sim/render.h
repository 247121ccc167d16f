// Procedural renderer of the simulator: draws a World's current state into an interleaved RGB8 buffer.
//
// Painter's algorithm, integer-pixel spans (a pixel is filled when its centre lies inside a shape; shapes narrower
// than a pixel are widened to one pixel so distant lamps do not vanish), no anti-aliasing. Order:
//   sky gradient (+ stars, clouds) -> distant skyline (scrolls with the road heading) -> ground rows (sidewalks,
//   shoulders, asphalt, lane markings, stop lines, zebra crossings; per-row depth, fog and headlight cone from
//   tables built once) -> building facades / guard rails -> billboards and boxes far to near (trees, street lamps,
//   signs, traffic lights, construction elements, pedestrians, vehicles) -> weather overlays (rain streaks, wet-road
//   reflections) -> post effects (glare map, radial motion blur, sensor noise).
// Every random detail comes from the scenario seed (scenery by 10 m road bucket, noise and rain by frame), so a frame
// depends only on the spec and the frame index.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sim/world.h"

namespace ev::sim {

class Renderer {
 public:
  explicit Renderer(const World& w);
  ~Renderer();
  Renderer(Renderer&&) noexcept;
  Renderer& operator=(Renderer&&) noexcept;

  // Renders the world's current frame into rgb (W * H * 3 bytes).
  void render(const World& w, uint8_t* rgb);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ev::sim
