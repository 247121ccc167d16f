// Thin C++ RAII wrapper over the C API (edgevlm.h).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "edgevlm/edgevlm.h"

namespace edgevlm {

class Error : public std::runtime_error {
 public:
  Error(ev_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
  ev_status status;
};

inline void check(ev_status s) {
  if (s != EV_OK) throw Error(s, std::string(ev_status_name(s)) + ": " + ev_last_error());
}

class Model {
 public:
  explicit Model(const std::string& dir, ev_model_params p = ev_model_default_params()) {
    ev_model* m = nullptr;
    check(ev_model_load(dir.c_str(), &p, &m));
    m_.reset(m);
  }
  std::string describe(const std::vector<std::string>& images, const std::string& prompt,
                       ev_generate_params p = ev_generate_default_params()) {
    std::vector<const char*> paths;
    for (const auto& s : images) paths.push_back(s.c_str());
    char* out = nullptr;
    check(ev_describe(m_.get(), paths.data(), paths.size(), prompt.c_str(), &p, nullptr, nullptr, &out));
    std::string r(out);
    ev_string_free(out);
    return r;
  }
  ev_model* get() const { return m_.get(); }

 private:
  struct Free {
    void operator()(ev_model* m) const { ev_model_free(m); }
  };
  std::unique_ptr<ev_model, Free> m_;
};

}  // namespace edgevlm
