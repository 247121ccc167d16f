// A simulator frame as the runtime's image type (tools that feed simulated frames to a model).
#pragma once

#include "perception/image.h"
#include "sim/simulator.h"

namespace ev {

inline Image sim_frame_image(const sim::Frame& f) {
  Image img;
  img.width = f.width;
  img.height = f.height;
  img.channels = 3;
  img.rgb = f.rgb;
  return img;
}

}  // namespace ev
