#!/usr/bin/env bash
# tests/gpu/pack.sh BUILD_DIR OUT_DIR - bundles the GPU-side binaries of a
# build (nawal-bench, nawal-agent, the GPU tests, libnawal_cuda.so) with the
# shared libraries they need that a bare CUDA image lacks (oneDNN, Criterion,
# libsodium, ...), for `tests/gpu/run.sh --prebuilt OUT_DIR` on a machine
# where the project cannot be built. glibc, libstdc++ and the CUDA libraries
# (driver, cuBLAS) are left to the target machine.
set -euo pipefail
B=$1 O=$2
rm -rf "$O"; mkdir -p "$O/bin" "$O/lib"
files=("$B/nawal-bench" "$B/nawal-agent" "$B/libnawal_cuda.so" "$B"/test_gpu_*)
cp "${files[@]}" "$O/bin/"
ldd "${files[@]}" 2>/dev/null | awk '/=> \//{print $1" "$3}' | sort -u | while read -r name path; do
  case $name in
    libc.so*|libm.so*|libpthread*|libdl.so*|librt.so*|libresolv*|libz.so*|ld-linux*|libstdc++*|libgcc_s*|libcuda.so*|libcublas*|libcudart*) ;;
    *) cp -L "$path" "$O/lib/" ;;
  esac
done
du -sh "$O"
