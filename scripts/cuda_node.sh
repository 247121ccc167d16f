#!/usr/bin/env bash
# The CUDA backend on a GPU machine that has a compiler, CMake and CUDA but none of this project's Debian packages
# (the lent H100/H200 machines; CMakeLists.txt EDGEVLM_CUDA_NODE):
#   scripts/cuda_node.sh pack           here: carry/cuda-node-deps.tar.xz (oneDNN, PCRE2, libjpeg, libpng, GoogleTest
#                                        headers and libraries, nlohmann/json) from the installed Debian packages
#   scripts/cuda_node.sh build [DIR]    there: unpack to /tmp/evdeps, configure and build DIR (default build-node):
#                                        DIR/edgevlm_cuda_tests, DIR/bench_cuda
#   scripts/cuda_node.sh env            there: the LD_LIBRARY_PATH the programs need (eval "$(... env)")
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=/tmp/evdeps
case "${1:-}" in
  pack)
    scripts/install_deps.sh >/dev/null
    t=$(mktemp -d)
    mkdir -p "$t/include" "$t/lib"
    cp -r /usr/include/oneapi /usr/include/dnnl*.h /usr/include/dnnl*.hpp /usr/include/pcre2.h /usr/include/jpeglib.h \
      /usr/include/jerror.h /usr/include/jmorecfg.h /usr/include/x86_64-linux-gnu/jconfig.h /usr/include/png.h \
      /usr/include/pngconf.h /usr/include/pnglibconf.h /usr/include/gtest /usr/include/nlohmann "$t/include/"
    L=/usr/lib/x86_64-linux-gnu
    cp -a $L/libdnnl.so* $L/libpcre2-8.so* $L/libjpeg.so* $L/libpng16.so* /lib/x86_64-linux-gnu/libOpenCL.so.1* \
      $L/libgtest.a $L/libgtest_main.a "$t/lib/"
    mkdir -p carry
    tar -C "$t" -cJf carry/cuda-node-deps.tar.xz include lib
    rm -rf "$t"
    ls -la carry/cuda-node-deps.tar.xz
    ;;
  build)
    DIR=${2:-build-node}
    rm -rf "$DEPS" && mkdir -p "$DEPS" && tar -C "$DEPS" -xJf carry/cuda-node-deps.tar.xz
    cmake -S . -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEDGEVLM_CUDA=ON -DEDGEVLM_CUDA_NODE=ON \
      -DEDGEVLM_DEPS_PREFIX="$DEPS" -DCMAKE_CUDA_ARCHITECTURES=90a >"$DIR.configure.log" 2>&1 ||
      { cat "$DIR.configure.log"; exit 1; }
    cmake --build "$DIR" -j "$(nproc)" 2>&1 | grep -E "error|warning: unused|FAILED" || true
    test -x "$DIR/edgevlm_cuda_tests" && test -x "$DIR/bench_cuda"
    ;;
  env)
    echo "export LD_LIBRARY_PATH=$DEPS/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    ;;
  *)
    echo "usage: scripts/cuda_node.sh pack | build [DIR] | env" >&2
    exit 2
    ;;
esac
