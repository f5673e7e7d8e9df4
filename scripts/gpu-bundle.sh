#!/usr/bin/env bash
# Packs the release logo-trainer for a GPU machine that has torch 2.11 but no Rust toolchain:
# out/gpu-check/logo-trainer (stripped, ~12 MB) and out/gpu-check/lib/ with the libraries it
# links that are neither torch's nor the C/C++ runtime's (fontconfig, freetype and their
# dependencies, which slim GPU images often lack). scripts/gpu-check.sh runs it there against
# that machine's own torch libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LOGO_CACHE:-$HOME/.cache/logo}
src=${1:-${CARGO_TARGET_DIR:-$cache/target}/release/logo-trainer}
dest=out/gpu-check
rm -rf "$dest"
mkdir -p "$dest/lib"
strip -o "$dest/logo-trainer" "$src"
ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    case "$path" in
        */site-packages/*) continue ;; # torch and the NVIDIA wheels: the GPU machine has its own
    esac
    case "$name" in
        libc.so*|libm.so*|libgcc_s*|libstdc++*|ld-linux*|libpthread*|libdl.so*|librt.so*|libutil.so*) ;;
        *) cp -L "$path" "$dest/lib/" ;;
    esac
done
echo "gpu-bundle: $(du -sh "$dest" | cut -f1) in $dest: $(ls "$dest/lib" | tr '\n' ' ')"
