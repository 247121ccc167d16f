#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install dependencies, build, and run the shipped road-scene student
# (models/road-student) live on a generated scenario (10 s of simulated driving at 30 FPS, played in real time):
# the status line, the semantic updates and fast-head alerts as they come, and the summary at the end.
# INPUT=clip.mp4 (or rtsp://..., v4l2:/dev/video0, sim:SEED) runs it on another source.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh build
MODEL=${MODEL:-models/road-student}
INPUT=${INPUT:-sim:1000003}
echo "edgevlm stream --model $MODEL --input $INPUT --realtime --frames 300 --print"
./build/edgevlm stream --model "$MODEL" --input "$INPUT" --realtime --frames 300 --print
