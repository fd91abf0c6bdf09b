#!/usr/bin/env bash
# setup.sh - installs the Debian/Ubuntu packages nawal needs to build and
# test, apt-getting only what is missing (idempotent, quiet when all there).
# Used by `make test` / `make demo` and by CI on a bare machine.
# `setup.sh --fuzz` (used by `make fuzz`) also installs clang with its OpenMP
# runtime and libFuzzer (compiler-rt), for the fuzz targets in tests/fuzz/.
set -euo pipefail

FUZZ=0
case "${1:-}" in
  "") ;;
  --fuzz) FUZZ=1 ;;
  *) echo "usage: $0 [--fuzz]" >&2; exit 2 ;;
esac

PACKAGES=(
  build-essential cmake pkg-config   # toolchain
  libdnnl-dev                        # oneDNN: CPU matmuls
  libjansson-dev                     # JSON (JSONL corpora, safetensors headers, config.json)
  libcriterion-dev                   # unit tests
  libsodium-dev                      # Ed25519 signatures, BLAKE2b content IDs
  libprotobuf-c-dev protobuf-c-compiler  # wire messages (proto/nawal.proto)
  libwebsockets-dev libssl-dev openssl   # TLS WebSockets between agent and coordinator
  libsqlite3-dev                     # coordinator state (WAL-mode SQLite)
  libzstd-dev                        # delta compression (proto/delta_codec.c)
)
if [ "$FUZZ" = 1 ]; then
  PACKAGES+=(clang libomp-dev)       # fuzz targets: clang and its OpenMP runtime
fi

install() {
  echo "setup: installing $*"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: $*" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -ne 0 ]; then
  install "${missing[@]}"
fi
if [ "$FUZZ" = 0 ]; then
  exit 0
fi

# libFuzzer ships in libclang-rt-N-dev (Debian 12, newer Ubuntu), only
# recommended by clang; older releases have it in libclang-common-N-dev.
fuzzer_links() {
  local out rc=0
  out=$(mktemp)
  printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' |
    clang -x c -fsanitize=fuzzer,address,undefined -o "$out" - >/dev/null 2>&1 || rc=1
  rm -f "$out"
  return $rc
}
if ! fuzzer_links; then
  install "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev"
  fuzzer_links || { echo "setup: clang still cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi
