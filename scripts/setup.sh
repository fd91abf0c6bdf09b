#!/usr/bin/env bash
# setup.sh - installs the Debian/Ubuntu packages nawal needs to build and
# test, apt-getting only what is missing (idempotent, quiet when all there).
# Used by `make test` / `make demo` and by CI on a bare machine.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config   # toolchain
  libdnnl-dev                        # oneDNN: CPU matmuls
  libjansson-dev                     # JSON (JSONL corpora, safetensors headers, config.json)
  libcriterion-dev                   # unit tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
