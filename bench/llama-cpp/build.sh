#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` (CPU only) from the llama.cpp source that
# the llama-cpp-python sdist on PyPI vendors under vendor/llama.cpp.
#
#   bash bench/llama-cpp/build.sh
#
# Everything goes under bench/llama-cpp/.work (git-ignored):
#   .work/venv          python venv holding cmake + ninja
#   .work/sdist         the downloaded llama-cpp-python sdist
#   .work/src-VERSION   the extracted vendor/llama.cpp tree
#   .work/build-VERSION the cmake/ninja build directory
#   .work/bin/llama-bench, .work/bin/llama-quantize
#
# Each step is skipped when its output already exists, so re-running is cheap.
# Environment overrides:
#   LLAMA_CPP_PYTHON_VERSION  sdist version to build from (default below)
#   BENCH_JOBS                ninja jobs (default 2)
#   BENCH_NICE                nice level for configure/build (default 10)
#   GGML_OPENMP               ON/OFF (default ON, llama.cpp's own default)
#   REBUILD=1                 re-check every step even if llama-bench exists
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${BENCH_JOBS:-2}"
niceness="${BENCH_NICE:-10}"
openmp="${GGML_OPENMP:-ON}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$here/.work"
venv="$work/venv"
sdist_dir="$work/sdist"
src="$work/src-$version"
build="$work/build-$version"
bin="$work/bin/llama-bench"

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [[ -x "$bin" && "$(cat "$bin.version" 2>/dev/null)" == "$version" \
      && "${REBUILD:-0}" != 1 ]]; then
    say "llama-bench from llama-cpp-python $version already built: $bin"
    exit 0
fi

command -v python3 >/dev/null || die "python3 not found"
command -v c++ >/dev/null || die "no C++ compiler (c++) found"
mkdir -p "$work" "$sdist_dir" "$work/bin"

# 1. venv with cmake + ninja (scikit-build-core is only there so that pip can
#    read the sdist's metadata without an isolated build environment, which
#    with --no-binary=:all: would compile cmake itself from source).
if [[ -x "$venv/bin/cmake" && -x "$venv/bin/ninja" ]]; then
    say "venv ready: $venv"
else
    say "creating venv in $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet cmake ninja scikit-build-core
fi
export PATH="$venv/bin:$PATH"
say "$(cmake --version | head -n1), ninja $(ninja --version)"

# 2. the llama-cpp-python sdist
sdist="$sdist_dir/llama_cpp_python-$version.tar.gz"
if [[ -f "$sdist" ]]; then
    say "sdist present: $sdist"
else
    say "downloading llama-cpp-python==$version sdist"
    "$venv/bin/python" -m pip download --quiet --no-deps --no-binary=:all: \
        --no-build-isolation --dest "$sdist_dir" "llama-cpp-python==$version"
    [[ -f "$sdist" ]] || die "pip did not leave $sdist"
fi

# 3. extract only vendor/llama.cpp (into a temp dir, renamed when complete).
#    The sdist keeps llama.cpp as a git submodule: vendor/llama.cpp/.git points
#    at .git/modules/vendor/llama.cpp, which is only needed for the commit hash.
#    The hash is saved to LLAMA_COMMIT and the dangling .git link is dropped.
if [[ -f "$src/CMakeLists.txt" && -f "$src/LLAMA_COMMIT" ]]; then
    say "source present: $src"
else
    say "extracting vendor/llama.cpp"
    tmp="$work/extract.tmp"
    top="llama_cpp_python-$version"
    rm -rf "$tmp" "$src"
    mkdir -p "$tmp"
    tar -xzf "$sdist" -C "$tmp" "$top/vendor/llama.cpp"
    tar -xzf "$sdist" -C "$tmp" "$top/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || true
    commit="$(head -c 40 "$tmp/$top/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || true)"
    [[ "$commit" =~ ^[0-9a-f]{40}$ ]] || commit=unknown
    rm -f "$tmp/$top/vendor/llama.cpp/.git"
    echo "$commit" >"$tmp/$top/vendor/llama.cpp/LLAMA_COMMIT"
    mv "$tmp/$top/vendor/llama.cpp" "$src"
    rm -rf "$tmp"
    [[ -f "$src/tools/llama-bench/CMakeLists.txt" ]] \
        || die "no tools/llama-bench in the vendored llama.cpp"
fi
commit="$(cat "$src/LLAMA_COMMIT")"
say "llama.cpp commit: $commit"
# llama.cpp's cmake asks git for build info; with the submodule link gone it
# would otherwise find the enclosing hearth checkout and report its commit.
export GIT_CEILING_DIRECTORIES="$work"

# 4. configure: CPU backend only, static, tools on (llama-bench lives in
#    tools/), everything else off. LLAMA_CURL is deprecated in this llama.cpp
#    (setting it only warns), so it is not passed; LLAMA_OPENSSL replaces it.
if [[ -f "$build/build.ninja" ]]; then
    say "already configured: $build"
else
    say "configuring in $build"
    nice -n "$niceness" cmake -S "$src" -B "$build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_COMMIT="${commit:0:7}" -DLLAMA_BUILD_NUMBER=0 \
        -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=ON \
        -DGGML_OPENMP="$openmp" \
        -DGGML_BLAS=OFF \
        -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
        -DGGML_SYCL=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_COMMON=ON \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF \
        >"$work/configure.log" 2>&1 \
        || { tail -n 40 "$work/configure.log" >&2; die "cmake configure failed (full log: $work/configure.log)"; }
fi

# 5. build just llama-bench, and llama-quantize (K-quant mixes such as
#    Q4_K_M for the benchmark models; see shapes.py)
say "building llama-bench and llama-quantize (ninja -j $jobs, nice $niceness)"
start=$SECONDS
nice -n "$niceness" ninja -C "$build" -j "$jobs" llama-bench llama-quantize
say "build step took $((SECONDS - start)) s"

cp "$build/bin/llama-quantize" "$work/bin/llama-quantize.tmp"
mv "$work/bin/llama-quantize.tmp" "$work/bin/llama-quantize"
cp "$build/bin/llama-bench" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$version" >"$bin.version"
say "done: $bin"
"$bin" --help >/dev/null 2>&1 || die "built binary does not run"
