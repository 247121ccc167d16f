#!/usr/bin/env bash
# Installs every build and run-time dependency from Debian 12's packages. Idempotent; needs root (or sudo).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libdnnl-dev nlohmann-json3-dev libpcre2-dev libcli11-dev
      libjpeg62-turbo-dev libpng-dev
      libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libavdevice-dev
      libfreetype-dev fonts-dejavu-core
      googletest libgtest-dev libgmock-dev libbenchmark-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
