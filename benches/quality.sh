#!/usr/bin/env bash
# Translation-quality benchmark: corpus chrF (and BLEU, for information) of
# `precis translate` en→ru and en→hi on the first N sentences of FLORES-200
# devtest (../shared/eval/flores200-dev). Run `benches/quality.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: benches/quality.sh [OPTIONS] [-- PRECIS_OPTIONS...]

Translation-quality benchmark for precis: translates the first N English
sentences of FLORES-200 devtest into Russian and/or Hindi with ONE
`precis translate --format jsonl --no-clean` call (each sentence a
one-paragraph article, or K consecutive sentences an article: see
--per-article) and scores the output against the references with
sacrebleu: corpus chrF (the headline figure, default settings: chrF2, char
order 6) and corpus BLEU (for information; sacrebleu's default tokenizer 13a
for both languages).

Options:
  --model ID         model: manifest id, hub repo id or .gguf path
                     [default: qwen2.5-coder-1.5b-instruct-q4_k_m, the precis default]
  --sentences N      number of sentences, from the first [default: 50]
  --to CODES         target languages, comma separated, from ru,hi [default: ru,hi]
  --bin PATH         precis binary to run [default: `cargo build --release`,
                     then target/release/precis]
  --eval-dir DIR     folder with eng_Latn.txt, rus_Cyrl.txt, hin_Deva.txt
                     [default: ../shared/eval/flores200-dev, from the repo root]
  --per-article K    K consecutive sentences make one article, each sentence
                     its own paragraph (scored sentence by sentence), so a
                     sentence is translated after the one before it, as in a
                     real article (FLORES takes a few sentences from each of
                     its source articles) [default: 1]
  --joined           with --per-article: the K sentences make ONE paragraph,
                     scored against the K references joined with spaces
  --config NAME      what this run tries (a label: letters, digits, . _ + -),
                     written into the results row and the run folder's name, so
                     configurations compared on the same model and sentences
                     each keep their own files [default: default]
  -h, --help         this help
  -- ARGS...         further options passed to `precis translate`
                     (e.g. -- --max-new-tokens 256)

Relative paths given on the command line are taken from the current directory;
the defaults are relative to the repository root (the parent of benches/).

Environment:
  OUT_DIR            where results go [default: target/bench-quality]; each run
                     writes OUT_DIR/<model>-n<N>/ (input.jsonl, output.jsonl,
                     hyp.<lang>.txt, ref.<lang>.txt, report.txt, report.json)
  PRECIS_BENCH_VENV  virtualenv holding sacrebleu, created (pip install
                     sacrebleu) when missing [default: ~/.cache/precis/bench-venv]
  PRECIS_HOME        precis model directory (passed through to precis)
  RESULTS            file each run appends one row per language to (tab
                     separated: date, CPU, model, sentences, language, chrF,
                     BLEU, outputs flagged, configuration, seconds per
                     sentence and language); the README's quality tables are
                     made from it [default: benches/results/quality.tsv]

Failed articles (precis exit code 1, an {"error": ...} line) are scored as
empty hypotheses and counted in the report; any other precis failure aborts.

Examples:
  benches/quality.sh
  benches/quality.sh --model smollm2-135m-instruct-q4_1 --bin target/debug/precis --sentences 20
  benches/quality.sh --to hi --sentences 100 -- --max-new-tokens 400
  benches/quality.sh --sentences 200 --config baseline --bin /tmp/precis-before -- --parallel 8
EOF
}

die() {
    echo "quality.sh: error: $*" >&2
    exit 2
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

model=qwen2.5-coder-1.5b-instruct-q4_k_m
sentences=50
to=ru,hi
bin=""
eval_dir="$repo_root/../shared/eval/flores200-dev"
config=default
per_article=1
joined=0
extra=()

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --joined) joined=1; shift ;;
        --model | --sentences | --to | --bin | --eval-dir | --config | --per-article)
            (($# >= 2)) || die "$1 needs a value (see --help)"
            case "$1" in
                --model) model=$2 ;;
                --sentences) sentences=$2 ;;
                --to) to=$2 ;;
                --bin) bin=$(abspath "$2") ;;
                --eval-dir) eval_dir=$(abspath "$2") ;;
                --config) config=$2 ;;
                --per-article) per_article=$2 ;;
            esac
            shift 2
            ;;
        --model=* | --sentences=* | --to=* | --bin=* | --eval-dir=* | --config=* | --per-article=*)
            opt=${1%%=*} val=${1#*=}
            shift
            set -- "$opt" "$val" "$@"
            ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $sentences =~ ^[1-9][0-9]*$ ]] || die "--sentences wants a positive integer, not '$sentences'"
[[ -n $model ]] || die "--model is empty"
[[ $per_article =~ ^[1-9][0-9]*$ ]] || die "--per-article wants a positive integer, not '$per_article'"
((per_article <= sentences)) || die "--per-article $per_article is more than --sentences $sentences"
[[ $config =~ ^[A-Za-z0-9._+-]+$ ]] || die "--config wants letters, digits, '.', '_', '+' or '-', not '$config'"

# Target languages → reference files.
declare -A ref_file=([ru]=rus_Cyrl.txt [hi]=hin_Deva.txt)
langs=()
IFS=',' read -r -a requested <<<"$to"
for l in "${requested[@]}"; do
    l=${l// /}
    [[ -n $l ]] || continue
    [[ -n ${ref_file[$l]:-} ]] || die "--to: unsupported language '$l' (ru, hi)"
    [[ " ${langs[*]-} " == *" $l "* ]] || langs+=("$l")
done
((${#langs[@]})) || die "--to names no language"
to_csv=$(IFS=,; echo "${langs[*]}")

# Evaluation data (outside the repository).
if [[ ! -d $eval_dir ]]; then
    die "evaluation data not found: $eval_dir
  This benchmark reads FLORES-200 devtest from ../shared/eval/flores200-dev
  (eng_Latn.txt, rus_Cyrl.txt, hin_Deva.txt) next to the repository, or from
  --eval-dir DIR. Benchmarks may read ../shared; tests may not."
fi
eval_dir=$(cd "$eval_dir" && pwd)
for f in eng_Latn.txt "${ref_file[@]}"; do
    [[ -f $eval_dir/$f ]] || die "missing $eval_dir/$f (benchmarks may read ../shared; tests may not)"
done
available=$(wc -l <"$eval_dir/eng_Latn.txt")
((sentences <= available)) || die "--sentences $sentences: $eval_dir/eng_Latn.txt has only $available lines"

command -v python3 >/dev/null || die "python3 is needed"

# sacrebleu in a virtualenv outside the repository.
venv=${PRECIS_BENCH_VENV:-$HOME/.cache/precis/bench-venv}
if [[ ! -x $venv/bin/python ]]; then
    echo "quality.sh: creating virtualenv $venv" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || die "could not create the virtualenv $venv (python3 -m venv; is the venv module installed?)"
fi
if ! "$venv/bin/python" -c 'import sacrebleu' 2>/dev/null; then
    echo "quality.sh: installing sacrebleu into $venv" >&2
    "$venv/bin/python" -m pip install --quiet sacrebleu || die "pip install sacrebleu failed (venv $venv)"
fi

# The precis binary.
if [[ -z $bin ]]; then
    echo "quality.sh: cargo build --release" >&2
    (cd "$repo_root" && cargo build --release) || die "cargo build --release failed"
    bin=$repo_root/target/release/precis
fi
[[ -x $bin ]] || die "precis binary not found or not executable: $bin"

# Output folder: OUT_DIR/<model>-n<N>.
out_root=${OUT_DIR:-$repo_root/target/bench-quality}
out_root=$(abspath "$out_root")
tag=$(basename -- "$model")
tag=${tag%.gguf}
tag=$(printf '%s' "$tag" | tr -c 'A-Za-z0-9._-' '_')
layout=""
((per_article == 1)) || layout=-a$per_article
((joined == 0)) || layout=${layout}j
run_dir=$out_root/$tag-$config-n$sentences$layout
mkdir -p "$run_dir"
rm -f "$run_dir"/{input.jsonl,output.jsonl,report.txt,report.json,precis.stderr} "$run_dir"/hyp.*.txt "$run_dir"/ref.*.txt

# Input: the first N English sentences as JSON Lines, K to an article (ids
# "1", "2", ...), each sentence a paragraph, or all K one paragraph.
head -n "$sentences" "$eval_dir/eng_Latn.txt" | python3 -c '
import json, sys
k, joined = int(sys.argv[1]), sys.argv[2] == "1"
lines = [line.rstrip("\r\n") for line in sys.stdin]
for i in range(0, len(lines), k):
    text = (" " if joined else "\n\n").join(lines[i:i + k])
    print(json.dumps({"id": str(i // k + 1), "text": text}, ensure_ascii=False))
' "$per_article" "$joined" >"$run_dir/input.jsonl"

# --no-cache: every sentence is translated by the model, so the time is its time.
cmd=("$bin" translate --to "$to_csv" --format jsonl --no-clean --no-cache --model "$model"
    --out "$run_dir/output.jsonl" "${extra[@]}" "$run_dir/input.jsonl")
echo "quality.sh: ${cmd[*]}" >&2
start=$(date +%s.%N)
rc=0
"${cmd[@]}" || rc=$?
end=$(date +%s.%N)
case $rc in
    0 | 1) ;; # 1: some articles failed; they are in the output and scored as empty
    *) die "precis exited with code $rc (see above); no scores" ;;
esac
[[ -s $run_dir/output.jsonl ]] || die "precis wrote no output ($run_dir/output.jsonl)"

# Score and report.
results_file=$(abspath "${RESULTS:-$repo_root/benches/results/quality.tsv}")
mkdir -p "$(dirname -- "$results_file")"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
"$venv/bin/python" - "$run_dir" "$eval_dir" "$sentences" "$to_csv" "$model" \
    "$bin" "$start" "$end" "$rc" "$results_file" "${cpu:-unknown CPU}" "$config" "$per_article" "$joined" <<'PY'
import collections, datetime, json, os, sys, unicodedata
import sacrebleu

run_dir, eval_dir, n, to_csv, model_arg, binary, start, end, rc, results_file, cpu, config, k, joined = sys.argv[1:]
n, k, joined = int(n), int(k), joined == "1"
articles = (n + k - 1) // k
langs = to_csv.split(",")
wall = float(end) - float(start)
ref_names = {"ru": "rus_Cyrl.txt", "hi": "hin_Deva.txt"}
script_of = {"ru": "CYRILLIC", "hi": "DEVANAGARI"}

def read_lines(path, k):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for _, line in zip(range(k), f)]

# Scored segments: sentences, or (--joined) articles, each its sentences
# joined with spaces.
def segments(lines):
    return [" ".join(lines[i:i + k]) for i in range(0, n, k)] if joined else lines

src = segments(read_lines(f"{eval_dir}/eng_Latn.txt", n))
refs = {l: segments(read_lines(f"{eval_dir}/{ref_names[l]}", n)) for l in langs}
segs = len(src)

results = {}
with open(f"{run_dir}/output.jsonl", encoding="utf-8") as f:
    for line in f:
        if line.strip():
            obj = json.loads(line)
            results[str(obj.get("id"))] = obj

failures = []  # (id, code, message)
hyps = {l: [""] * segs for l in langs}
flags = {l: collections.Counter() for l in langs}
flagged = {l: 0 for l in langs}
missing = {l: 0 for l in langs}
mostly_latin = {l: 0 for l in langs}
same_as_source = {l: 0 for l in langs}
replacement_char = {l: 0 for l in langs}
models = collections.Counter()

def latin_share(text):
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum("LATIN" in unicodedata.name(c, "") for c in letters) / len(letters)

for a in range(articles):
    obj = results.get(str(a + 1))
    if obj is None:
        failures.append((str(a + 1), "missing", "no output line for this id"))
        continue
    if "error" in obj:
        err = obj["error"] or {}
        failures.append((str(a + 1), err.get("code", "?"), err.get("message", "")))
        continue
    by_lang = {t.get("language"): t for t in obj.get("translations") or []}
    for l in langs:
        t = by_lang.get(l)
        if t is None:
            missing[l] += 1
            continue
        if joined or k == 1:
            pieces = {a: t.get("text") or ""}
        else:
            # One paragraph per sentence; a missing one is scored empty.
            pieces = {a * k + j: p for j, p in enumerate(t.get("paragraphs") or []) if a * k + j < n}
        for i, piece in pieces.items():
            hyps[l][i] = " ".join(piece.split())
            if latin_share(hyps[l][i]) > 0.5:
                mostly_latin[l] += 1
            if hyps[l][i].strip() == src[i].strip():
                same_as_source[l] += 1
            if "\ufffd" in hyps[l][i]:
                replacement_char[l] += 1
        m = t.get("model") or {}
        models[(m.get("id"), m.get("revision"))] += 1
        fl = t.get("flags") or []
        if fl:
            flagged[l] += 1
        for x in fl:
            flags[l][x.get("code", "?")] += 1

scores = {}
for l in langs:
    chrf = sacrebleu.metrics.CHRF()
    bleu = sacrebleu.metrics.BLEU()  # default tokenizer: 13a
    c = chrf.corpus_score(hyps[l], [refs[l]])
    b = bleu.corpus_score(hyps[l], [refs[l]])
    hyp_chars = sum(len(h) for h in hyps[l])
    ref_chars = sum(len(r) for r in refs[l])
    scores[l] = {
        "chrf": round(c.score, 2), "bleu": round(b.score, 2),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_signature": str(bleu.get_signature()),
        "outputs_flagged": flagged[l], "flags": dict(flags[l]),
        "missing_translations": missing[l],
        "mostly_latin_outputs": mostly_latin[l],
        "identical_to_source": same_as_source[l],
        "outputs_with_U+FFFD": replacement_char[l],
        "char_length_ratio_hyp_ref": round(hyp_chars / ref_chars, 3) if ref_chars else None,
    }
    with open(f"{run_dir}/hyp.{l}.txt", "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hyps[l])
    with open(f"{run_dir}/ref.{l}.txt", "w", encoding="utf-8") as f:
        f.writelines(r + "\n" for r in refs[l])

model_ids = [f"{mid} (revision {rev})" for (mid, rev), _ in models.most_common()]
mins, secs = divmod(wall, 60)
out = []
out.append(f"precis translation quality: FLORES-200 devtest, first {n} sentences, en→{to_csv}")
if k > 1:
    layout = "one paragraph" if joined else "a paragraph each"
    out.append(f"articles:   {articles} of {k} sentences ({layout}); flags counted per article")
out.append(f"model:      {'; '.join(model_ids) or model_arg + ' (no successful output)'}")
out.append(f"config:     {config}")
out.append(f"binary:     {binary}")
per_sentence = wall / (n * len(langs))
out.append(f"wall time:  {int(mins)}m {secs:04.1f}s ({per_sentence:.2f} s per sentence and language, incl. model load)")
out.append(f"failures:   {len(failures)} of {articles} articles (scored as empty hypotheses); precis exit code {rc}")
for fid, code, msg in failures[:10]:
    out.append(f"            id {fid}: {code}: {msg}")
out.append("")
out.append(f"{'lang':<5} {'chrF':>6} {'BLEU':>6}  {'flagged':>8}  {'latin>50%':>9}  {'=source':>7}  {'U+FFFD':>6}  {'len hyp/ref':>11}")
for l in langs:
    s = scores[l]
    out.append(f"{l:<5} {s['chrf']:>6.2f} {s['bleu']:>6.2f}  {str(s['outputs_flagged']) + '/' + str(articles):>8}  "
               f"{s['mostly_latin_outputs']:>9}  {s['identical_to_source']:>7}  {s['outputs_with_U+FFFD']:>6}  "
               f"{s['char_length_ratio_hyp_ref']:>11}")
out.append("")
for l in langs:
    fl = ", ".join(f"{k} {v}" for k, v in flags[l].most_common()) or "none"
    extra = f"; {missing[l]} translations missing" if missing[l] else ""
    out.append(f"flags {l}: {fl}{extra}")
out.append("")
out.append(f"chrF: corpus chrF, {scores[langs[0]]['chrf_signature']}")
out.append(f"BLEU: corpus BLEU, {scores[langs[0]]['bleu_signature']} (sacrebleu default tokenizer 13a for every "
           "language; for Hindi 13a does not split the danda '।' from the word before it, which lowers BLEU; "
           "chrF is the figure to compare)")
out.append(f"files: {run_dir}/")
report = "\n".join(out) + "\n"
sys.stdout.write(report)
with open(f"{run_dir}/report.txt", "w", encoding="utf-8") as f:
    f.write(report)
with open(f"{run_dir}/report.json", "w", encoding="utf-8") as f:
    json.dump({
        "dataset": "flores200-devtest", "sentences": n, "sentences_per_article": k, "joined": joined,
        "languages": langs,
        "model_arg": model_arg, "config": config,
        "seconds_per_sentence_and_language": round(per_sentence, 3),
        "models": [{"id": mid, "revision": rev, "outputs": k} for (mid, rev), k in models.most_common()],
        "binary": binary, "wall_seconds": round(wall, 2), "precis_exit_code": int(rc),
        "failures": [{"id": a, "code": b, "message": c} for a, b, c in failures],
        "scores": scores, "sacrebleu_version": sacrebleu.__version__,
    }, f, ensure_ascii=False, indent=2)
    f.write("\n")
header = "date\tcpu\tmodel\tsentences\tlanguage\tchrf\tbleu\tflagged\tconfig\ts_per_sentence\n"
new_file = not os.path.exists(results_file) or os.path.getsize(results_file) == 0
with open(results_file, "a", encoding="utf-8") as f:
    if new_file:
        f.write(header)
    model_id = models.most_common(1)[0][0][0] if models else model_arg
    for l in langs:
        s = scores[l]
        f.write(f"{datetime.date.today()}\t{cpu}\t{model_id}\t{n}\t{l}\t{s['chrf']:.2f}\t"
                f"{s['bleu']:.2f}\t{s['outputs_flagged']}/{articles}\t{config}\t{per_sentence:.2f}\n")
print(f"appended to {results_file}")
PY
