#!/usr/bin/env bash
# Builds precis with CUDA (`cargo build --release --features cuda`) on a
# machine with no CUDA toolkit and no GPU: CUDA 13's compiler and headers
# come from PyPI's nvidia-* wheels (nvidia-cuda-nvcc and what it needs),
# installed into a virtualenv.
#
#   scripts/cuda-build.sh            # -> target/cuda/release/precis
#   scripts/cuda-build.sh --check    # the same, then checks the binary here
#
# It also builds, for scripts/gpu-check.sh, the portable path's parity test
# (tests/portable_parity.rs) and the seq2seq and llm benches, with CUDA.
#
# The binary loads CUDA's libraries when it is asked for a GPU, not when it
# starts: candle's CUDA bindings (cudarc) are built to load them at run time
# rather than to link them (candle-core is patched for this build only, in
# target/cuda, with its `dynamic-linking` feature of cudarc swapped for
# `dynamic-loading`). So the same binary runs on the CPU anywhere, and on a
# GPU finds the driver (libcuda.so.1) and CUDA 12 or 13's cuBLAS, cuBLASLt,
# cuRAND and NVRTC wherever LD_LIBRARY_PATH points (scripts/gpu-check.sh
# points it at a PyTorch install's); it links CUDA's runtime (libcudart.so.13,
# copied beside the binary; its directory is the binary's rpath). Kernels are
# compiled for compute capability CUDA_COMPUTE_CAP (default 90: H100 / H200)
# as PTX the driver compiles at load: that needs a driver for CUDA 13 (580 or
# later).
#
# `--check` runs the binary here, where there is no GPU and no driver: it
# must translate with --device cpu, and refuse --device cuda in one line with
# a non-zero exit.
#
# Environment: PRECIS_CUDA_VENV [~/.cache/precis/cuda-venv], CUDA_COMPUTE_CAP
# [90], CARGO_TARGET_DIR [target/cuda].
set -euo pipefail

check=no
case "${1:-}" in
    -h | --help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --check) check=yes ;;
    "") ;;
    *) echo "cuda-build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${PRECIS_CUDA_VENV:-$HOME/.cache/precis/cuda-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cuda}
started=$(date +%s)
say() { echo "::: $*" >&2; }

# 1. CUDA's compiler and headers from PyPI.
packages=(
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
)
[[ -x $venv/bin/python ]] || { say "making a virtualenv at $venv"; python3 -m venv "$venv"; }
if ! "$venv/bin/python" -m pip show nvidia-cuda-cccl >/dev/null 2>&1; then
    say "installing CUDA 13's compiler and headers from PyPI"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
fi
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[[ -x $cuda/bin/nvcc ]] || { echo "cuda-build.sh: no nvcc in $cuda" >&2; exit 1; }
# The runtime library under the name the linker looks for.
link=$CARGO_TARGET_DIR/cuda-link
mkdir -p "$link"
ln -sf "$cuda/lib/libcudart.so.13" "$link/libcudart.so"
say "$("$cuda/bin/nvcc" --version | tail -1) at $cuda"

# 2. candle-core with cudarc loading CUDA's libraries at run time.
(cd "$repo" && cargo fetch --quiet)
version=$(sed -n '/^name = "candle-core"$/{n;s/^version = "\(.*\)"$/\1/p}' "$repo/Cargo.lock")
source=$(ls -d "$HOME"/.cargo/registry/src/*/"candle-core-$version" | head -1)
patched=$CARGO_TARGET_DIR/candle-core
rm -rf "$patched"
cp -a "$source" "$patched"
grep -q '"dynamic-linking"' "$patched/Cargo.toml" || { echo "cuda-build.sh: candle-core $version does not ask cudarc for dynamic-linking; update this script" >&2; exit 1; }
sed -i 's/"dynamic-linking"/"dynamic-loading"/' "$patched/Cargo.toml"
say "candle-core $version patched at $patched (cudarc: dynamic-loading)"

# 3. The build (Cargo.lock is kept as committed: the patch is this build's).
export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda
export PATH=$cuda/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$link${LIBRARY_PATH:+:$LIBRARY_PATH}
cp "$repo/Cargo.lock" "$CARGO_TARGET_DIR/Cargo.lock.committed"
trap 'cp "$CARGO_TARGET_DIR/Cargo.lock.committed" "$repo/Cargo.lock"' EXIT
say "cargo build --release --features cuda (compute capability $CUDA_COMPUTE_CAP) into $CARGO_TARGET_DIR"
(cd "$repo" && RUSTFLAGS='-C link-arg=-Wl,-rpath,$ORIGIN' cargo build --release --features cuda \
    --bin precis --test portable_parity --bench seq2seq --bench llm \
    --config "patch.crates-io.candle-core.path=\"$patched\"")
binary=$CARGO_TARGET_DIR/release/precis
cp -L "$cuda/lib/libcudart.so.13" "$CARGO_TARGET_DIR/release/"
say "built $binary ($(du -m "$binary" | cut -f1) MiB, with libcudart.so.13 beside it) in $(($(date +%s) - started)) s"

if [[ $check == yes ]]; then
    fixture=$repo/tests/fixtures/marian/tiny-en-ru
    home=$(mktemp -d)
    trap 'rm -rf "$home"; cp "$CARGO_TARGET_DIR/Cargo.lock.committed" "$repo/Cargo.lock"' EXIT
    translate() {
        echo "The minister will visit Moscow in May." |
            PRECIS_HOME=$home HF_ENDPOINT=http://127.0.0.1:9 PRECIS_PIP=false \
                "$binary" translate --model "$fixture" --to ru --format jsonl --device "$1" -
    }
    out=$(translate cpu 2>/dev/null | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["translations"][0]["text"])')
    [[ -n $out ]] || { echo "cuda-build.sh: --device cpu gave no translation" >&2; exit 1; }
    status=0
    translate cuda >/dev/null 2>"$home/err" || status=$?
    # Logged warnings aside (a model named by path is unverified), one
    # line, and no panic.
    errors=$(grep '^error' "$home/err" || true)
    if [[ $status == 0 || $(grep -c . <<<"$errors") != 1 || $errors != *"--device cpu"* ]] ||
        grep -q panicked "$home/err"; then
        echo "cuda-build.sh: --device cuda without a GPU should fail in one line (exit $status):" >&2
        cat "$home/err" >&2
        exit 1
    fi
    say "check: --device cpu translates ($out); --device cuda here exits $status with: $errors"
fi
