#!/usr/bin/env bash
# Build-time CUDA 13.0 toolchain for `cargo build -p hearth --features cuda`
# on a machine with no GPU and no CUDA install, from PyPI only.
# Usage: bash bench/cuda/toolkit.sh ; then: . bench/cuda/.work/cuda-env.sh
#        cargo build --release -p hearth --features cuda
set -euo pipefail
PREFIX=${PREFIX:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.work}
mkdir -p "$PREFIX"
VENV=$PREFIX/cuda-venv
HOME_DIR=$PREFIX/cuda-home

# 1. Compiler + headers + cudart. Only the CUDA 13 wheels (nvidia-cuda-nvcc, no
#    -cu12 suffix) contain the nvcc driver, cudafe++, fatbinary, nvlink and cicc;
#    nvidia-cuda-nvcc-cu12 (every 12.x version) ships only ptxas + libnvvm.
#    The kernels' PTX is JIT-compiled by the driver, which refuses PTX from a
#    newer CUDA than its own (CUDA_ERROR_UNSUPPORTED_PTX_VERSION): build with the
#    oldest CUDA the target drivers support. 13.0 matches driver 580 (seen on an
#    H100 with 13.4-built PTX refused); CUDA_WHEELS=13.4.92 CCCL_WHEEL=13.3.5.0.6
#    is the newest cudarc 0.19.10 knows (13.5 would panic).
CUDA_WHEELS=${CUDA_WHEELS:-13.0.88}
CCCL_WHEEL=${CCCL_WHEEL:-13.0.85}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q \
  "nvidia-cuda-nvcc==$CUDA_WHEELS" "nvidia-nvvm==$CUDA_WHEELS" "nvidia-cuda-crt==$CUDA_WHEELS" \
  "nvidia-cuda-runtime==$CUDA_WHEELS" "nvidia-cuda-cccl==$CCCL_WHEEL"
C=$("$VENV/bin/python" -c 'import os,nvidia;print(os.path.join(nvidia.__path__[0],"cu13"))')

# 2. A CUDA_HOME: bin/include/nvvm point into the wheel tree (nvcc.profile finds
#    nvvm/ and include/cccl relative to bin/), lib/ gets the unversioned names
#    the linker needs, lib/stubs/ gets link-only stand-ins.
mkdir -p "$HOME_DIR/lib/stubs"
ln -sfn "$C/bin" "$HOME_DIR/bin"
ln -sfn "$C/include" "$HOME_DIR/include"
ln -sfn "$C/nvvm" "$HOME_DIR/nvvm"
ln -sfn lib "$HOME_DIR/lib64"
ln -sf "$C/lib/libcudart.so.13" "$HOME_DIR/lib/libcudart.so.13"
ln -sfn libcudart.so.13 "$HOME_DIR/lib/libcudart.so"

# 3. Link stubs. candle-core turns on cudarc's `dynamic-linking`, so the final
#    link needs -lcuda -lnvrtc -lcurand -lcublas -lcublasLt. libcuda is the
#    driver (never on PyPI); the others are big wheels (cuBLAS ~0.5 GB) that a
#    compile check does not need. Each stub defines every function cudarc
#    declares and returns an error code; SONAMEs match the real libraries so
#    the binary looks for the real ones at run time.
R=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
if [ -z "$R" ]; then echo "run 'cargo fetch --locked' in the workspace first" >&2; exit 1; fi
SRC=$PREFIX/cuda-stubs-src; mkdir -p "$SRC"
stub() { # module soname file errcode
  grep -oE '^pub unsafe fn [A-Za-z0-9_]+\(' "$R/src/$1/sys/mod.rs" \
    | sed -E 's/pub unsafe fn ([A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk -v e="$4" '{print "int " $1 "(void) { return " e "; }"}' > "$SRC/$1.c"
  gcc -shared -fPIC -O1 -Wl,-soname,"$2" -o "$HOME_DIR/lib/stubs/$3" "$SRC/$1.c"
}
stub driver   libcuda.so.1      libcuda.so      100  # CUDA_ERROR_NO_DEVICE
stub nvrtc    libnvrtc.so.13    libnvrtc.so     1
stub curand   libcurand.so.10   libcurand.so    201  # CURAND_STATUS_NOT_INITIALIZED
stub cublas   libcublas.so.13   libcublas.so    1    # CUBLAS_STATUS_NOT_INITIALIZED
stub cublaslt libcublasLt.so.13 libcublasLt.so  1

cat > "$PREFIX/cuda-env.sh" <<EOF
export CUDA_HOME=$HOME_DIR
export PATH=$HOME_DIR/bin:\$PATH
export CUDA_COMPUTE_CAP=90      # H100/H200; no nvidia-smi needed
export CUDAFORGE_THREADS=1      # nvcc jobs in candle-kernels' build script
EOF
"$HOME_DIR/bin/nvcc" --version | tail -2
