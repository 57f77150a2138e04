#!/usr/bin/env bash
# The int8 quality guard on the trained parity checkpoints (tests/fixtures):
# precis int8's teacher-forced top-1 agreement with precis f32, beside
# CTranslate2 int8's agreement with CTranslate2 fp32 on the same inputs and
# prefixes, each distinct (input, prefix) counted once. Two samples: the
# recorded outputs (tests/int8_agreement.rs, which CI runs with a floor),
# and, for the checkpoints the seq2seq bench reads and CTranslate2 converts
# (Marian, BART, T5, NLLB into Hindi), 500 FLORES sentences (FLORES_COUNT)
# with the f32 model's 32 greedy tokens (the bench's PRECIS_BENCH_AGREEMENT).
# The full-size checkpoints' guard is part of benches/compare-marian.sh.
# Run on demand, not in CI: `benches/int8-agreement.sh`.
set -euo pipefail

case "${1:-}" in
    -h | --help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        echo
        echo "Environment: OUT_DIR [target/bench-compare/int8-agreement], PRECIS_MARIAN_VENV (see benches/compare-marian.sh --help),"
        echo "  SENTENCES [../shared/eval/flores200-dev/eng_Latn.txt; the second sample is skipped without it],"
        echo "  FLORES_COUNT [500: how many of its sentences]"
        exit 0
        ;;
    "") ;;
    *) echo "int8-agreement.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
out_dir=${OUT_DIR:-$repo_root/target/bench-compare/int8-agreement}
venv=${PRECIS_MARIAN_VENV:-$HOME/.cache/precis/fixtures-venv}
py=$venv/bin/python
[[ -x $py ]] || { echo "int8-agreement.sh: no virtualenv at $venv: run benches/compare-marian.sh once to make it" >&2; exit 2; }
"$py" -c "import ctranslate2" 2>/dev/null || { echo "int8-agreement.sh: $venv has no ctranslate2 (run benches/compare-marian.sh once)" >&2; exit 2; }
rm -rf "$out_dir"
mkdir -p "$out_dir"

echo "== precis (cargo test --test int8_agreement)"
(cd "$repo_root" && PRECIS_AGREEMENT_OUT="$out_dir/precis" cargo test --quiet --test int8_agreement -- --nocapture int8_agrees) |
    grep 'agrees with f32' || { echo "int8-agreement.sh: the test failed" >&2; exit 1; }

# One line of a table: CTranslate2's agreement on the inputs and targets of
# precis's agreement file $2, beside precis's.
row() {
    local name=$1 ids=$2 out=$3
    "$py" -W ignore "$script_dir/marian_compare.py" ct2-agreement --ids "$ids" \
        --fp32 "$out_dir/$name-ct2-float32" --int8 "$out_dir/$name-ct2-int8" --out "$out" >/dev/null
    python3 - "$out" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<14} {r['precis']:>12.4f} {r['ct2']:>12.4f} {r['precis'] - r['ct2']:>+10.4f} {r['total']:>9}")
PY
}

printf '\n== the recorded outputs\n%-14s %12s %12s %10s %9s\n' checkpoint precis-int8 ct2-int8 difference positions
for ids in "$out_dir"/precis/*.json; do
    name=$(basename "$ids" .json)
    checkpoint=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["checkpoint"])' "$ids")
    converted=yes
    for q in float32 int8; do
        "$py" -W ignore "$script_dir/marian_compare.py" ct2-convert --model "$checkpoint" --out "$out_dir/$name-ct2-$q" \
            --quantization "$q" --force >"$out_dir/$name-ct2-$q.log" 2>&1 || converted=no
    done
    if [[ $converted == no ]]; then
        precis=$(python3 -c 'import json, sys; print("%.4f" % json.load(open(sys.argv[1]))["agreement"])' "$ids")
        printf '%-14s %12s %12s %10s %9s  (CTranslate2 cannot convert it: %s)\n' "$name" "$precis" - - - "$out_dir/$name-ct2-*.log"
        continue
    fi
    row "$name" "$ids" "$out_dir/$name.json"
done

sentences=${SENTENCES:-$repo_root/../shared/eval/flores200-dev/eng_Latn.txt}
if [[ ! -f $sentences ]]; then
    echo "int8-agreement.sh: no $sentences: the FLORES sample is skipped (set SENTENCES)"
    exit 0
fi
count=${FLORES_COUNT:-500}
[[ $count =~ ^[1-9][0-9]*$ ]] || { echo "int8-agreement.sh: FLORES_COUNT must be a positive number, not '$count'" >&2; exit 2; }
printf '\n== '"$count"' FLORES sentences, the f32 model'"'"'s 32 greedy tokens (%s)\n' "$sentences"
printf '%-14s %12s %12s %10s %9s\n' checkpoint precis-int8 ct2-int8 difference positions
for ids in "$out_dir"/precis/*.json; do
    name=$(basename "$ids" .json)
    checkpoint=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["checkpoint"])' "$ids")
    family=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["model_type"])' "$checkpoint/config.json")
    # The families the seq2seq bench reads and CTranslate2 converts here.
    [[ $family == marian || $family == bart || $family == t5 || $family == m2m_100 ]] && [[ -d $out_dir/$name-ct2-int8 ]] || continue
    (cd "$repo_root" && PRECIS_BENCH_CHECKPOINT="$checkpoint" PRECIS_BENCH_INPUTS="$sentences" PRECIS_BENCH_COUNT="$count" \
        PRECIS_BENCH_AGREEMENT="$count" PRECIS_BENCH_TOKENS=32 PRECIS_BENCH_JSON="$out_dir/$name-flores-precis.json" \
        cargo bench --quiet --bench seq2seq >"$out_dir/$name-flores-precis.log" 2>&1) ||
        { echo "int8-agreement.sh: the seq2seq bench failed on $name (see $out_dir/$name-flores-precis.log)" >&2; exit 1; }
    row "$name" "$out_dir/$name-flores-precis.json" "$out_dir/$name-flores.json"
done
