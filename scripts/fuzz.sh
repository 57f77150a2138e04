#!/usr/bin/env bash
# Runs precis's fuzz targets for a bounded time each (not part of CI).
#
#   scripts/fuzz.sh              # every target, 60 s each
#   scripts/fuzz.sh request 300  # one target, 300 s
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and
# cargo-fuzz (installed here on first use). Crashes are kept in
# fuzz/artifacts/TARGET/; reproduce one with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(request segment sources render)
if [[ $# -ge 1 ]]; then
    targets=("$1")
fi
seconds=${2:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz.sh: seconds must be a number, not $seconds" >&2; exit 2; }

rustup toolchain list | grep -q '^nightly' || {
    echo "fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds} s"
    mkdir -p "fuzz/corpus/$t"
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -max_len=65536
done
echo "fuzz.sh: no crash in ${seconds} s per target"
