#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install dependencies, build, and describe an image with the
# embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh build
MODEL=${MODEL:-tests/fixtures/tiny-idefics3}
IMAGE=${IMAGE:-tests/fixtures/images/img_a.jpg}
echo "edgevlm describe --model $MODEL --image $IMAGE"
./build/edgevlm describe --model "$MODEL" --image "$IMAGE" --prompt "${PROMPT:-What is in this image?}" --max-tokens 16
