#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install dependencies, build, and run the shipped road-scene student
# (models/road-student) on a generated scenario, printing its description of the scene as it unfolds, frame by
# frame, with the simulator's exact truth beside every miss, and the accuracy at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh build
MODEL=${MODEL:-models/road-student}
SEED=${SEED:-1000003}
echo "edgevlm eval --model $MODEL --seed $SEED --scenarios 1 --every 6 --print"
./build/edgevlm eval --model "$MODEL" --seed "$SEED" --scenarios 1 --every 6 --print
