#!/usr/bin/env bash
# Side-by-side speed benchmark of encoder-decoders: precis's seq2seq backend
# against Python transformers (torch, CPU) and CTranslate2 (fp32 and int8) on
# one full-size random checkpoint, under one fixed protocol: Marian
# translation (opus-mt-en-ru-shaped, the default), BART summarization
# (distilbart-cnn-12-6-shaped, --family bart) or NLLB translation
# (nllb-200-distilled-600M-shaped, --family nllb).
# Run on demand, not in CI: `benches/compare-marian.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: benches/compare-marian.sh [--family marian|bart|nllb] [OPTIONS]

Runs the same inputs through precis (the `seq2seq` bench, benches/seq2seq.rs),
Python transformers 5.24.0 (torch, CPU) and CTranslate2 4.8.5 (fp32 and int8,
converted from the same checkpoint), one engine after the other, and prints
tokens/s for each and the ratios. The last lines are

  ratio beam=4 precis/ct2-fp32=X
  ratio beam=1 precis/ct2-fp32=Y

(above 1: precis is faster), and for precis int8 (--quantize int8: weights
quantized per row at load, activations per token) against CTranslate2 int8

  ratio beam=4 precis-int8/ct2-int8=X
  ratio beam=1 precis-int8/ct2-int8=Y
  ratio peak RSS precis-int8/ct2-int8=Z

then the int8 quality guard: on the first --agreement inputs, the f32
model's greedy outputs read teacher-forced by each engine's int8 and
fp32 versions, and the share of positions whose top-1 tokens agree

  agreement ct2-int8/ct2-fp32=A
  agreement precis-int8/precis-f32=B
  agreement precis-minus-ct2=B-A (at least 0 is the target)

The protocol, --family marian (translation; the default):
  - the model: a full-size, randomly initialised Marian with
    Helsinki-NLP/opus-mt-en-ru's exact config (6+6 layers, d_model 512, 8
    heads, ffn 2048, swish, vocabulary 62518 shared and tied) and its
    generation_config.json, seeded and saved once in the hub layout; its
    tokenizer is SentencePiece unigram models trained on the FLORES English /
    Russian sentences, with a vocab.json of exactly 62518 entries (the pieces,
    then filler entries);
  - the inputs: the first 200 sentences of
    ../shared/eval/flores200-dev/eng_Latn.txt, in file order;
  - exactly 32 new tokens per input.

The protocol, --family bart (summarization):
  - the model: a full-size, randomly initialised BartForConditionalGeneration
    with sshleifer/distilbart-cnn-12-6's exact config (12+6 layers, d_model
    1024, 16 heads, ffn 4096, gelu, learned positions, 1024 positions,
    vocabulary 50264, tied; 306 M parameters) and its generation settings in
    generation_config.json (beam 4, length_penalty 2, no_repeat_ngram_size 3,
    min_length 56, max_length 142, early_stopping, <s> forced first and </s>
    at the last position), seeded and saved once in the hub layout
    (model.safetensors); its tokenizer is a byte-level BPE trained on the
    FLORES English sentences: vocab.json, merges.txt, tokenizer.json and
    tokenizer_config.json of exactly 50264 entries (<s> <pad> </s> <unk> =
    0-3, the BPE's, fillers, <mask> last);
  - the inputs: 100 articles of ~400 tokens, written to OUT_DIR/inputs.txt
    and given to every engine: input i is the FLORES English sentences from
    number 5 x i on (past the last, the first again), joined with spaces until
    it has at least 380 tokens (--input-tokens; <s> and </s> included);
  - exactly 64 new tokens per input: the forced <s>, 62 free tokens and the
    forced </s> (CTranslate2: the <s> as a one-token target prefix, then 63
    free tokens; it has no forced end token).

The protocol, --family nllb (many-to-many translation):
  - the model: a full-size, randomly initialised M2M100ForConditionalGeneration
    with facebook/nllb-200-distilled-600M's exact config (12+12 layers,
    d_model 1024, 16 heads, ffn 4096, relu, scaled embeddings, 1024
    positions, vocabulary 256206 shared and tied; 615 M parameters) and its
    generation_config.json, seeded and saved once in the hub layout; its
    tokenizer is NllbTokenizer (tokenizer.json, sentencepiece.bpe.model) on a
    SentencePiece BPE trained on the FLORES English and Hindi sentences, with
    the 202 FLORES-200 codes after the pieces (ids below the model's
    vocabulary, which stays NLLB's for the output layer's cost);
  - the inputs: the first 200 sentences of eng_Latn.txt, each
    `eng_Latn ... </s>`, translated into Hindi: hin_Deva forced as the first
    new token (transformers: forced_bos_token_id; CTranslate2: a one-token
    target prefix, counted in its decoding length);
  - exactly 32 new tokens per input, the forced code included.

All families:
  - batches of 8 inputs in file order, 2 threads, beam 4 and greedy, exactly
    N new tokens: the checkpoint's generation config with num_beams and
    min_new_tokens = max_new_tokens = N (transformers: generate(**batch,
    num_beams=B, min_new_tokens=N, max_new_tokens=N); CTranslate2:
    min_decoding_length = max_decoding_length = N, and the config's
    no_repeat_ngram_size and length_penalty);
  - each engine tokenizes every batch before the clock starts (precis with its
    own tokenizer, transformers with its own, CTranslate2 with the tokens of
    transformers' tokenizer), runs one untimed warm-up batch per beam size,
    then times generation alone (encoder + decoder) over all batches:
    tokens/s = N x inputs / wall seconds, the same formula for every engine.

Before any timing, precis and transformers generate the first 8 inputs at
every beam size and the script aborts (exit 1) unless both produce identical
input ids and output ids: both then do the same work.

Options:
  --family NAME      marian, bart or nllb [default: marian]; defaults that
                     differ are given below as marian / bart (nllb: marian's)
  --count N          inputs [default: 200 / 100]
  --batch N          inputs per batch [default: 8]
  --beams LIST       beam sizes, comma-separated [default: 4,1]
  --tokens N         new tokens per input [default: 32 / 64]
  --threads N        threads for every engine [default: 2]; precis gets a rayon
                     pool of N (RAYON_NUM_THREADS = N; candle's element-wise
                     pool is 1 thread, as the precis binary sets it),
                     torch set_num_threads(N), CTranslate2 intra_threads = N
                     (inter_threads = 1); OMP_NUM_THREADS = MKL_NUM_THREADS = N
  --sample N         inputs of the ids check [default: 8]
  --sentences PATH   FLORES English sentences, one a line [default:
                     ../shared/eval/flores200-dev/eng_Latn.txt from the repo
                     root]: the inputs themselves (marian, nllb), or what
                     they are joined from (bart); the checkpoint's tokenizer
                     is trained on the eng_Latn.txt (marian: and
                     rus_Cyrl.txt; nllb: and hin_Deva.txt) next to it
  --input-tokens N   bart: an input takes sentences until it has N tokens
                     [default: 380]
  --checkpoint DIR   the random checkpoint, made when missing [default:
                     ~/.cache/precis/bench/opus-mt-en-ru-random /
                     ~/.cache/precis/bench/distilbart-cnn-12-6-random /
                     ~/.cache/precis/bench/nllb-200-distilled-600m-random]; the
                     CTranslate2 conversions go next to it (DIR-ct2-float32,
                     DIR-ct2-int8)
  --engines LIST     timed engines [default:
                     precis,precis-int8,transformers,ct2-fp32,ct2-int8] (precis
                     is always timed; the ids check always runs)
  --agreement N      inputs of the int8 quality guard [default: 32 / 8]; 0
                     skips it (CTranslate2 reads each position with a
                     translate call of its own, the prefix given: ~10 min for
                     16 BART inputs on 2 cores)
  --bin PATH         precis bench executable to run instead of building one
                     [default: `cargo build --release --bench seq2seq`]
  --wait-idle S      before each timed engine, wait up to S seconds for the
                     machine to be idle (other processes under 0.25 cores)
                     [default: 0: only warn]. Each engine also reports the
                     cores other processes kept busy while it was timed, and
                     the table flags figures taken on a busy machine
  -h, --help         this help

Relative paths given on the command line are taken from the current directory;
the defaults are relative to the repository root (the parent of benches/).

Environment:
  OUT_DIR             where results go [default: target/bench-compare/marian /
                      target/bench-compare/bart]: precis.json,
                      transformers.json, ct2-fp32.json, ct2-int8.json, the
                      ids-check files *-sample.json, the combined report.json
                      and (bart) inputs.txt
  PRECIS_MARIAN_VENV  virtualenv with transformers==5.24.0, torch, sentencepiece,
                      tokenizers, safetensors and ctranslate2==4.8.5 (both
                      families) [default: ~/.cache/precis/fixtures-venv, the
                      one of scripts/make_fixtures.py]; ctranslate2 is
                      installed into it when missing, and the whole venv
                      created when missing (PyPI; torch is a large download)

Examples:
  benches/compare-marian.sh
  benches/compare-marian.sh --beams 4 --count 64
  benches/compare-marian.sh --family bart
  benches/compare-marian.sh --family bart --count 8 --tokens 16
  benches/compare-marian.sh --family nllb
  OUT_DIR=/tmp/marian benches/compare-marian.sh --engines precis,ct2-fp32
EOF
}

die() {
    echo "compare-marian.sh: error: $*" >&2
    exit 2
}

note() {
    echo "compare-marian.sh: $*" >&2
}

# Absolute form of a path given by the user (relative to the current directory).
abspath() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)

TRANSFORMERS_VERSION=5.24.0
CTRANSLATE2_VERSION=4.8.5
family=marian
count=""
batch=8
beams=4,1
tokens=""
threads=2
sample=8
sentences=""
input_tokens=380
checkpoint=""
engines=precis,precis-int8,transformers,ct2-fp32,ct2-int8
agreement=""
bin=""
wait_idle=0

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --family | --count | --batch | --beams | --tokens | --threads | --sample | --sentences | --input-tokens | --checkpoint | --engines | --agreement | --bin | --wait-idle)
            (($# >= 2)) || die "$1 needs a value (see --help)"
            case "$1" in
                --family) family=$2 ;;
                --count) count=$2 ;;
                --batch) batch=$2 ;;
                --beams) beams=$2 ;;
                --tokens) tokens=$2 ;;
                --threads) threads=$2 ;;
                --sample) sample=$2 ;;
                --sentences) sentences=$(abspath "$2") ;;
                --input-tokens) input_tokens=$2 ;;
                --checkpoint) checkpoint=$(abspath "$2") ;;
                --engines) engines=$2 ;;
                --agreement) agreement=$2 ;;
                --bin) bin=$(abspath "$2") ;;
                --wait-idle) wait_idle=$2 ;;
            esac
            shift 2
            ;;
        --*=*)
            opt=${1%%=*} val=${1#*=}
            shift
            set -- "$opt" "$val" "$@"
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

case "$family" in
    marian | nllb) count=${count:-200} tokens=${tokens:-32} agreement=${agreement:-32} ;;
    bart) count=${count:-100} tokens=${tokens:-64} agreement=${agreement:-8} ;;
    *) die "--family wants marian, bart or nllb, not '$family'" ;;
esac
for pair in "count:$count" "batch:$batch" "tokens:$tokens" "threads:$threads" "sample:$sample" "input-tokens:$input_tokens"; do
    [[ ${pair#*:} =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} wants a positive integer, not '${pair#*:}'"
done
[[ $wait_idle =~ ^[0-9]+$ ]] || die "--wait-idle wants a number of seconds, not '$wait_idle'"
[[ $agreement =~ ^[0-9]+$ ]] || die "--agreement wants a number of inputs, not '$agreement'"
[[ $beams =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--beams wants sizes separated by commas, not '$beams'"
((sample <= count)) || die "--sample ($sample) is more than --count ($count)"
IFS=, read -r -a engine_list <<<"$engines"
for e in "${engine_list[@]}"; do
    case "$e" in
        precis | precis-int8 | transformers | ct2-fp32 | ct2-int8) ;;
        *) die "unknown engine '$e' in --engines (precis, precis-int8, transformers, ct2-fp32, ct2-int8)" ;;
    esac
done
wants() {
    [[ $1 == precis ]] && return 0
    local e
    for e in "${engine_list[@]}"; do [[ $e == "$1" ]] && return 0; done
    return 1
}

sentences=${sentences:-$repo_root/../shared/eval/flores200-dev/eng_Latn.txt}
[[ -f $sentences ]] || die "sentences not found: $sentences (the FLORES-200 files live in ../shared/eval)"
sentences=$(cd "$(dirname "$sentences")" && pwd)/$(basename "$sentences")
flores_dir=$(dirname "$sentences")
case "$family" in
    marian) checkpoint=${checkpoint:-$HOME/.cache/precis/bench/opus-mt-en-ru-random} ;;
    bart) checkpoint=${checkpoint:-$HOME/.cache/precis/bench/distilbart-cnn-12-6-random} ;;
    nllb) checkpoint=${checkpoint:-$HOME/.cache/precis/bench/nllb-200-distilled-600m-random} ;;
esac

command -v python3 >/dev/null || die "python3 is needed"

# The Python engines, in a virtualenv outside the repository.
venv=${PRECIS_MARIAN_VENV:-$HOME/.cache/precis/fixtures-venv}
venv=$(abspath "$venv")
py=$venv/bin/python
if [[ ! -x $py ]]; then
    note "creating virtualenv $venv (transformers $TRANSFORMERS_VERSION, torch, sentencepiece, tokenizers, safetensors, ctranslate2 $CTRANSLATE2_VERSION; torch is a large download)"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || die "could not create the virtualenv $venv (python3 -m venv)"
    "$py" -m pip install --quiet "transformers==$TRANSFORMERS_VERSION" torch sentencepiece tokenizers safetensors \
        "ctranslate2==$CTRANSLATE2_VERSION" || die "pip install into $venv failed"
fi
have() {
    "$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true
}
[[ $(have transformers) == "$TRANSFORMERS_VERSION" ]] ||
    die "$venv has transformers '$(have transformers)', not $TRANSFORMERS_VERSION (pip install transformers==$TRANSFORMERS_VERSION there, or set PRECIS_MARIAN_VENV)"
for pkg in torch sentencepiece tokenizers safetensors; do
    [[ -n $(have $pkg) ]] || die "$venv has no $pkg (pip install $pkg there)"
done
if [[ $(have ctranslate2) != "$CTRANSLATE2_VERSION" ]]; then
    note "installing ctranslate2==$CTRANSLATE2_VERSION into $venv"
    "$py" -m pip install --quiet "ctranslate2==$CTRANSLATE2_VERSION" || die "pip install ctranslate2==$CTRANSLATE2_VERSION failed"
fi
compare() {
    OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads "$py" -W ignore "$script_dir/marian_compare.py" "$@"
}

# The precis bench executable.
if [[ -z $bin ]]; then
    note "cargo build --release --bench seq2seq"
    build_json=$(mktemp)
    trap 'rm -f "$build_json"' EXIT
    (cd "$repo_root" && cargo build --release --bench seq2seq --message-format=json-render-diagnostics >"$build_json") ||
        die "cargo build --release --bench seq2seq failed"
    bin=$(python3 - "$build_json" <<'PY'
import json, sys
exe = None
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    t = msg.get("target") or {}
    if msg.get("reason") == "compiler-artifact" and t.get("name") == "seq2seq" and "bench" in t.get("kind", []):
        exe = msg.get("executable") or exe
print(exe or "")
PY
    )
    [[ -n $bin ]] || die "cargo built no executable for the seq2seq bench"
fi
[[ -x $bin ]] || die "precis bench executable not found or not executable: $bin"

# The checkpoint (once), and its CTranslate2 conversions (again when the
# checkpoint is newer).
if [[ ! -f $checkpoint/bench-checkpoint.json ]]; then
    if [[ $family == marian ]]; then
        [[ -f $flores_dir/eng_Latn.txt && -f $flores_dir/rus_Cyrl.txt ]] ||
            die "the tokenizer is trained on eng_Latn.txt and rus_Cyrl.txt, not both in $flores_dir"
    elif [[ $family == nllb ]]; then
        [[ -f $flores_dir/eng_Latn.txt && -f $flores_dir/hin_Deva.txt ]] ||
            die "the tokenizer is trained on eng_Latn.txt and hin_Deva.txt, not both in $flores_dir"
    else
        [[ -f $flores_dir/eng_Latn.txt ]] || die "the tokenizer is trained on eng_Latn.txt, not in $flores_dir"
    fi
    note "making the random $family checkpoint $checkpoint"
    compare checkpoint --family "$family" --out "$checkpoint" --flores "$flores_dir" ||
        die "making the checkpoint failed"
fi
checkpoint_family=$(python3 -c 'import json, sys; t = json.load(open(sys.argv[1])).get("model_type", ""); print({"m2m_100": "nllb"}.get(t, t))' \
    "$checkpoint/config.json") || die "cannot read $checkpoint/config.json"
[[ $checkpoint_family == "$family" ]] ||
    die "$checkpoint holds a '$checkpoint_family' model, not a $family one (--family, --checkpoint)"
declare -A ct2_dir=([ct2-fp32]=$checkpoint-ct2-float32 [ct2-int8]=$checkpoint-ct2-int8)
declare -A ct2_quant=([ct2-fp32]=float32 [ct2-int8]=int8)
for e in ct2-fp32 ct2-int8; do
    wants "$e" || ((agreement > 0)) || continue
    d=${ct2_dir[$e]}
    if [[ ! -f $d/model.bin || $checkpoint/bench-checkpoint.json -nt $d/model.bin ]]; then
        note "converting the checkpoint for CTranslate2 (${ct2_quant[$e]}) into $d"
        compare ct2-convert --model "$checkpoint" --out "$d" --quantization "${ct2_quant[$e]}" --force ||
            die "the CTranslate2 conversion failed"
    fi
done

out_dir=${OUT_DIR:-$repo_root/target/bench-compare/$family}
out_dir=$(abspath "$out_dir")
mkdir -p "$out_dir"
rm -f "$out_dir"/{precis,precis-int8,transformers,ct2-fp32,ct2-int8,report,agreement,ct2-agreement}.json "$out_dir"/{precis,transformers}-sample.json

# The inputs every engine gets: the sentences themselves (marian), or
# articles joined from them (bart).
if [[ $family == bart ]]; then
    inputs=$out_dir/inputs.txt
    rm -f "$inputs"
    compare inputs --model "$checkpoint" --sentences "$sentences" --count "$count" --min-tokens "$input_tokens" \
        --out "$inputs" || die "writing the inputs failed"
else
    inputs=$sentences
fi

run_precis() {
    (cd "$repo_root" && env PRECIS_BENCH_CHECKPOINT="$checkpoint" PRECIS_BENCH_INPUTS="$inputs" \
        PRECIS_BENCH_COUNT="$count" PRECIS_BENCH_BATCH="$batch" PRECIS_BENCH_BEAMS="$beams" \
        PRECIS_BENCH_TOKENS="$tokens" PRECIS_BENCH_THREADS="$threads" \
        RAYON_NUM_THREADS="$threads" "$@" "$bin")
}
common=(--inputs "$inputs" --count "$count" --batch "$batch" --beams "$beams" --tokens "$tokens" --threads "$threads")

# 1. Same work: precis's ids must be transformers' on the sample.
echo "== ids check ($family): the first $sample inputs, beams $beams, $tokens new tokens"
run_precis PRECIS_BENCH_SAMPLE="$sample" PRECIS_BENCH_JSON="$out_dir/precis-sample.json" >/dev/null ||
    die "the precis bench failed on the sample (run it alone to see why)"
compare transformers --model "$checkpoint" "${common[@]}" --sample "$sample" --out "$out_dir/transformers-sample.json" ||
    die "transformers failed on the sample"
if ! compare check --precis "$out_dir/precis-sample.json" --transformers "$out_dir/transformers-sample.json"; then
    echo "compare-marian.sh: aborted: precis and transformers do not produce the same ids, so the timings would not compare the same work" >&2
    exit 1
fi

# 2. Timed runs, one engine after the other.
busy=()
is_busy() {
    python3 -c "import sys; sys.exit(0 if float('$1') >= 0.25 else 1)"
}
check_idle() {
    local b waited=0
    b=$(compare busy)
    if ((wait_idle > 0)) && is_busy "$b"; then
        note "the machine is busy ($b cores in use by other processes); waiting up to ${wait_idle} s for it to be idle before the $1 run"
        while is_busy "$b" && ((waited < wait_idle)); do
            sleep 4
            waited=$((waited + 5))
            b=$(compare busy)
        done
    fi
    busy+=("$b")
    if is_busy "$b"; then
        note "warning: the machine is busy before the $1 run ($b of $(nproc) cores in use by other processes): its figures will be low; compare on an idle machine"
    fi
}

echo
echo "== precis ($bin)"
check_idle precis
run_precis PRECIS_BENCH_JSON="$out_dir/precis.json" || die "the precis bench failed (see above)"
report_args=(--precis "$out_dir/precis.json" --transformers-sample "$out_dir/transformers-sample.json")

if wants precis-int8; then
    echo
    echo "== precis int8 ($bin, PRECIS_BENCH_QUANTIZE=int8)"
    check_idle precis-int8
    run_precis PRECIS_BENCH_QUANTIZE=int8 PRECIS_BENCH_JSON="$out_dir/precis-int8.json" ||
        die "the precis int8 bench failed (see above)"
    report_args+=(--precis-int8 "$out_dir/precis-int8.json")
else
    busy+=("")
fi

if wants transformers; then
    echo
    echo "== transformers $TRANSFORMERS_VERSION (torch $(have torch), $venv)"
    check_idle transformers
    compare transformers --model "$checkpoint" "${common[@]}" --out "$out_dir/transformers.json" ||
        die "the transformers run failed (see above)"
    report_args+=(--transformers "$out_dir/transformers.json")
else
    busy+=("")
fi
for e in ct2-fp32 ct2-int8; do
    if wants "$e"; then
        echo
        echo "== CTranslate2 $CTRANSLATE2_VERSION ${ct2_quant[$e]} (${ct2_dir[$e]})"
        check_idle "$e"
        compare ct2 --model "${ct2_dir[$e]}" --hf "$checkpoint" --compute-type "${ct2_quant[$e]}" "${common[@]}" \
            --out "$out_dir/$e.json" || die "the CTranslate2 ${ct2_quant[$e]} run failed (see above)"
        report_args+=("--$e" "$out_dir/$e.json")
    else
        busy+=("")
    fi
done

echo
compare report "${report_args[@]}" --busy "${busy[@]}" --out "$out_dir/report.json"

# 3. The int8 quality guard, untimed.
if ((agreement > 0)); then
    echo
    echo "== int8 quality guard: the first $agreement inputs, teacher-forced along precis f32's greedy outputs"
    run_precis PRECIS_BENCH_AGREEMENT="$agreement" PRECIS_BENCH_JSON="$out_dir/agreement.json" >/dev/null ||
        die "the precis agreement run failed (run the bench with PRECIS_BENCH_AGREEMENT=$agreement to see why)"
    compare ct2-agreement --ids "$out_dir/agreement.json" --fp32 "${ct2_dir[ct2-fp32]}" \
        --int8 "${ct2_dir[ct2-int8]}" --batch "$batch" --threads "$threads" --out "$out_dir/ct2-agreement.json" ||
        die "the CTranslate2 agreement run failed"
fi
