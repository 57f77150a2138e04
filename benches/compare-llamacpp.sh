#!/usr/bin/env bash
# Side-by-side speed benchmark: precis's LLM backend against llama.cpp
# (llama-cpp-python 0.3.36) on the same prompt ids, threads and greedy tokens.
# Run `benches/compare-llamacpp.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: benches/compare-llamacpp.sh [OPTIONS] MODEL

Runs precis's backend (the `llm` bench, benches/llm.rs) and llama.cpp
(llama-cpp-python 0.3.36, built from source in a virtualenv outside the
repository, with this CPU's instruction set extensions listed explicitly:
AVX2 / AVX-512 / VNNI / BF16 on where /proc/cpuinfo has them, AMX always
off; llama.cpp's own -march=native build uses AMX tiles on a Xeon that
advertises AMX, and dies with "Illegal instruction" where the kernel or
sandbox does not grant them; the venv is rebuilt when the list changes) on the same prompt, thread count and
number of greedy tokens, one after the other in one run, and prints prefill
tok/s, decode tok/s and peak RSS for both. The last line is

  ratio prefill=X decode=Y rss=Z

(precis / llama.cpp: above 1 means precis is faster for prefill and decode,
and uses more memory for rss).

The prompt is the summary prompt precis builds from the article (three
sentences, English), rendered with the model's chat template and tokenized by
precis; llama.cpp is fed those exact token ids (nothing is re-tokenized).
Each engine does an untimed warm-up (the prompt and one token), then one timed
greedy run of 1 + N tokens: prefill is the prompt tokens over the time to the
first token, decode the N further tokens over the rest. Peak RSS is each
process's high-water mark (VmHWM), model load included; llama.cpp's process
also holds the Python interpreter and numpy (its report shows how much).
Whether both produced the same greedy ids is printed for information.

Arguments:
  MODEL              manifest id (fetched through the model store when
                     missing) or path of a .gguf file

Options:
  --threads N        threads for both engines [default: 2]; llama.cpp gets
                     n_threads = n_threads_batch = N, precis a rayon pool of N
                     (and RAYON_NUM_THREADS = CANDLE_NUM_THREADS = N)
  --tokens N         greedy tokens after the first one [default: 64]
  --article PATH     article to summarize [default: ../shared/seeds/g20-blinken-lavrov.txt
                     from the repo root (968 prompt tokens with Qwen2.5), or
                     examples/sample-article.txt when that is missing]
  --bin PATH         precis bench executable to run instead of building one
                     [default: `cargo build --release --bench llm`, then its executable]
  -h, --help         this help

Relative paths given on the command line are taken from the current directory;
the defaults are relative to the repository root (the parent of benches/).

Environment:
  OUT_DIR               where results go [default: target/bench-compare]:
                        <model>.precis.json, <model>.llama-cpp.json and the
                        combined <model>.json
  PRECIS_LLAMACPP_VENV  virtualenv with llama-cpp-python==0.3.36 and numpy,
                        created when missing [default: ~/.cache/precis/llamacpp-venv];
                        the first install compiles llama.cpp (several minutes on
                        2 cores; log: <venv>.build.log)
  PRECIS_HOME           precis model directory (passed through to precis)

Examples:
  benches/compare-llamacpp.sh qwen2.5-coder-1.5b-instruct-q4_k_m
  benches/compare-llamacpp.sh --threads 1 --tokens 32 smollm2-135m-instruct-q4_1
  benches/compare-llamacpp.sh ~/models/some-model.Q4_K_M.gguf
EOF
}

die() {
    echo "compare-llamacpp.sh: error: $*" >&2
    exit 2
}

note() {
    echo "compare-llamacpp.sh: $*" >&2
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

LLAMA_CPP_PYTHON_VERSION=0.3.36
threads=2
tokens=64
article=""
bin=""
model=""

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --threads | --tokens | --article | --bin)
            (($# >= 2)) || die "$1 needs a value (see --help)"
            case "$1" in
                --threads) threads=$2 ;;
                --tokens) tokens=$2 ;;
                --article) article=$(abspath "$2") ;;
                --bin) bin=$(abspath "$2") ;;
            esac
            shift 2
            ;;
        --threads=* | --tokens=* | --article=* | --bin=*)
            opt=${1%%=*} val=${1#*=}
            shift
            set -- "$opt" "$val" "$@"
            ;;
        --)
            shift
            (($# <= 1)) || die "more than one MODEL after -- (see --help)"
            if (($#)); then
                [[ -z $model ]] || die "more than one MODEL ('$model', '$1'; see --help)"
                model=$1
                shift
            fi
            ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)
            [[ -z $model ]] || die "more than one MODEL ('$model', '$1'; see --help)"
            model=$1
            shift
            ;;
    esac
done

[[ -n $model ]] || die "no MODEL given: a manifest id (ls models/) or a .gguf path (see --help)"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads wants a positive integer, not '$threads'"
[[ $tokens =~ ^[1-9][0-9]*$ ]] || die "--tokens wants a positive integer, not '$tokens'"

# A MODEL that names an existing file (or ends in .gguf) is a path: make it absolute.
if [[ -f $model ]]; then
    model=$(abspath "$model")
elif [[ $model == *.gguf ]]; then
    die "model file not found: $model"
fi

# The article (benchmarks may read ../shared; tests may not).
if [[ -z $article ]]; then
    article=$repo_root/../shared/seeds/g20-blinken-lavrov.txt
    if [[ ! -f $article ]]; then
        note "note: $article not found; using examples/sample-article.txt (another prompt: figures are not comparable with those on the reference article)"
        article=$repo_root/examples/sample-article.txt
    fi
fi
[[ -f $article ]] || die "article not found: $article"
article=$(cd "$(dirname "$article")" && pwd)/$(basename "$article")

command -v python3 >/dev/null || die "python3 is needed"

# llama.cpp's instruction set extensions, listed explicitly from this CPU's
# flags instead of -march=native (GGML_NATIVE): a native build on a Xeon
# that advertises AMX uses AMX tiles, which the sandboxes this project runs
# in do not grant (the process dies with "Illegal instruction"), so AMX is
# always off. Not x86: llama.cpp's defaults.
cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
cpu_model=${cpu_model:-unknown}
cmake_args=""
if [[ $(uname -m) == x86_64 ]]; then
    cpu_flags=" $(grep -m 1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has_flag() { [[ $cpu_flags == *" $1 "* ]]; }
    on_if() {
        local f
        for f in "$@"; do has_flag "$f" || { echo OFF; return; }; done
        echo ON
    }
    cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=$(on_if avx) -DGGML_AVX2=$(on_if avx2) -DGGML_FMA=$(on_if fma)"
    cmake_args+=" -DGGML_F16C=$(on_if f16c) -DGGML_BMI2=$(on_if bmi2) -DGGML_AVX_VNNI=$(on_if avx_vnni)"
    cmake_args+=" -DGGML_AVX512=$(on_if avx512f avx512cd avx512vl avx512dq avx512bw)"
    cmake_args+=" -DGGML_AVX512_VBMI=$(on_if avx512f avx512vbmi) -DGGML_AVX512_VNNI=$(on_if avx512f avx512_vnni)"
    cmake_args+=" -DGGML_AVX512_BF16=$(on_if avx512f avx512_bf16)"
    cmake_args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
note "CPU: $cpu_model; llama.cpp build flags: ${cmake_args:-the defaults of llama.cpp}"

# llama-cpp-python in a virtualenv outside the repository, built from source
# with those flags (rebuilt when they differ from the build's).
venv=${PRECIS_LLAMACPP_VENV:-$HOME/.cache/precis/llamacpp-venv}
venv=$(abspath "$venv")
installed_version() {
    "$venv/bin/python" -c 'import llama_cpp, numpy; print(llama_cpp.__version__)' 2>/dev/null || true
}
if [[ ! -x $venv/bin/python ]]; then
    note "creating virtualenv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || die "could not create the virtualenv $venv (python3 -m venv; is the venv module installed?)"
fi
built_with=$venv.cmake-args
if [[ $(installed_version) != "$LLAMA_CPP_PYTHON_VERSION" || $(cat "$built_with" 2>/dev/null) != "$cmake_args" ]]; then
    log=$venv.build.log
    note "installing llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION into $venv: this compiles llama.cpp (several minutes); log: $log"
    { command -v gcc && command -v g++; } >/dev/null || die "gcc and g++ are needed to build llama.cpp"
    rm -f "$built_with"
    if ! env -u FORCE_CMAKE CMAKE_ARGS="$cmake_args" "$venv/bin/python" -m pip install -v --no-binary llama-cpp-python \
        --no-cache-dir --force-reinstall "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "pip install llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION failed (full log: $log)"
    fi
    [[ $(installed_version) == "$LLAMA_CPP_PYTHON_VERSION" ]] || die "llama_cpp $LLAMA_CPP_PYTHON_VERSION does not import from $venv after the install (log: $log)"
    printf '%s' "$cmake_args" >"$built_with"
fi

# The precis bench executable.
if [[ -z $bin ]]; then
    note "cargo build --release --bench llm"
    build_json=$(mktemp)
    trap 'rm -f "$build_json"' EXIT
    (cd "$repo_root" && cargo build --release --bench llm --message-format=json-render-diagnostics >"$build_json") ||
        die "cargo build --release --bench llm failed"
    bin=$(python3 - "$build_json" <<'PY'
import json, sys
exe = None
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    t = msg.get("target") or {}
    if msg.get("reason") == "compiler-artifact" and t.get("name") == "llm" and "bench" in t.get("kind", []):
        exe = msg.get("executable") or exe
print(exe or "")
PY
    )
    [[ -n $bin ]] || die "cargo built no executable for the llm bench"
fi
[[ -x $bin ]] || die "precis bench executable not found or not executable: $bin"

# Cores kept busy by the whole machine over one second (all processes).
busy_cores() {
    python3 - <<'PY'
import os, time
def snap():
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[3] + v[4]
t0, i0 = snap()
time.sleep(1)
t1, i1 = snap()
print(f"{((t1 - t0) - (i1 - i0)) / max(t1 - t0, 1) * (os.cpu_count() or 1):.2f}")
PY
}

# Warns when other processes keep cores busy: every figure drops, and llama.cpp's
# OpenMP threads, which spin at each barrier, drop by far the most.
check_idle() {
    local busy
    busy=$(busy_cores)
    echo "$busy"
    if python3 -c "import sys; sys.exit(0 if float('$busy') >= 0.25 else 1)"; then
        note "warning: the machine is busy before the $1 run ($busy of $(nproc) cores in use by other processes):" \
            "the figures will be low and unsteady, llama.cpp's the most (its OpenMP threads spin at every" \
            "barrier; OMP_WAIT_POLICY=passive softens that but is not its default). Compare on an idle machine."
    fi
}

# Output files: OUT_DIR/<model>.{precis,llama-cpp}.json and <model>.json.
out_dir=${OUT_DIR:-$repo_root/target/bench-compare}
out_dir=$(abspath "$out_dir")
mkdir -p "$out_dir"
tag=$(basename -- "$model")
tag=${tag%.gguf}
tag=$(printf '%s' "$tag" | tr -c 'A-Za-z0-9._-' '_')
precis_json=$out_dir/$tag.precis.json
llama_json=$out_dir/$tag.llama-cpp.json
report_json=$out_dir/$tag.json
rm -f "$precis_json" "$llama_json" "$report_json"

busy_before_precis=$(check_idle precis | tail -n 1)
echo "== precis ($bin)"
(cd "$repo_root" && env PRECIS_BENCH_MODEL="$model" PRECIS_BENCH_ARTICLE="$article" \
    PRECIS_BENCH_TOKENS="$tokens" PRECIS_BENCH_THREADS="$threads" PRECIS_BENCH_JSON="$precis_json" \
    RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="$threads" "$bin") ||
    die "the precis bench failed (see above)"
[[ -s $precis_json ]] || die "the precis bench wrote no report ($precis_json)"

echo
busy_before_llama=$(check_idle llama.cpp | tail -n 1)
echo "== llama.cpp (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, $venv)"
"$venv/bin/python" "$script_dir/llamacpp.py" bench --ids-from "$precis_json" \
    --threads "$threads" --tokens "$tokens" --out "$llama_json" ||
    die "the llama.cpp run failed (see above)"
[[ -s $llama_json ]] || die "the llama.cpp run wrote no report ($llama_json)"

echo
python3 - "$precis_json" "$llama_json" "$report_json" "$busy_before_precis" "$busy_before_llama" "$cpu_model" "$cmake_args" <<'PY'
import json, os, sys

precis_path, llama_path, report_path, busy_p, busy_l, cpu_model, cmake_args = sys.argv[1:]
busy = {"precis": float(busy_p), "llama.cpp": float(busy_l)}
p = json.load(open(precis_path, encoding="utf-8"))
l = json.load(open(llama_path, encoding="utf-8"))

def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))

def ratio(a, b):
    return a / b if a is not None and b else None

print(f"cpu {cpu_model}")
print(f"llama.cpp build flags {cmake_args or 'llama.cpp defaults'}")
print(f"model {p['model']} ({p['file']})")
print(f"prompt {p['prompt_tokens']} tokens, {p['threads']} threads, "
      f"{p['max_new_tokens']} greedy tokens (1 + {p['max_new_tokens'] - 1} decode)")
print()
print(f"{'engine':<10} {'prefill tok/s':>13} {'decode tok/s':>12} {'peak RSS MB':>11} {'load s':>7}  cores busy (prefill/decode)")
rows = [("precis", p), ("llama.cpp", l)]
for name, r in rows:
    cores = "/".join(f"{r[k]:.2f}" if r.get(k) is not None else "?" for k in ("prefill_cores_busy", "decode_cores_busy"))
    rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "?"
    print(f"{name:<10} {r['prefill_tok_s']:>13.1f} {r['decode_tok_s']:>12.2f} {rss:>11} {r['load_s']:>7.2f}  {cores}")
for name, r in rows:
    if r.get("generated_tokens", 0) < p["max_new_tokens"]:
        print(f"note: {name} stopped after {r.get('generated_tokens')} tokens (end token)")
for name, r in rows:
    if busy[name] >= 0.25:
        print(f"note: {busy[name]:.2f} of {os.cpu_count()} cores were busy with other work just before "
              f"the {name} run: its figures may be too low")
    low = [k.split("_")[0] for k in ("prefill_cores_busy", "decode_cores_busy")
           if r.get(k) is not None and r[k] < 0.8 * p["threads"]]
    if low:
        print(f"note: {name} kept fewer than {0.8 * p['threads']:.1f} cores busy in {' and '.join(low)} "
              f"({p['threads']} threads asked)")
if l.get("rss_before_load_mb") is not None:
    print(f"note: llama.cpp's peak RSS includes {l['rss_before_load_mb']:.0f} MB of Python, numpy and "
          "llama_cpp before the model was loaded")

concurrent = p.get("concurrent") or []
if concurrent:
    print()
    print("precis, concurrent sequences:")
    for c in concurrent:
        print(f"  {c.get('sequences')} sequences: decode {c.get('decode_tok_s', float('nan')):.2f} tok/s"
              + "".join(f", {k} {v}" for k, v in c.items() if k not in ("sequences", "decode_tok_s")))

pi, li = p.get("greedy_ids"), l.get("greedy_ids")
same = None
if pi is None:
    print("greedy ids: precis did not record them (PRECIS_BENCH_IDS=0)")
else:
    d = first_diff(pi, li)
    same = d is None
    if same:
        print(f"greedy ids: identical ({len(pi)} ids)")
    else:
        a = pi[d] if d < len(pi) else "end"
        b = li[d] if d < len(li) else "end"
        print(f"greedy ids: differ from index {d} (precis {a}, llama.cpp {b}; "
              f"{len(pi)} vs {len(li)} ids); informative only")

ratios = {
    "prefill": ratio(p["prefill_tok_s"], l["prefill_tok_s"]),
    "decode": ratio(p["decode_tok_s"], l["decode_tok_s"]),
    "rss": ratio(p.get("peak_rss_mb"), l.get("peak_rss_mb")),
}
report = {
    "cpu": cpu_model, "llama_cpp_cmake_args": cmake_args,
    "model": p["model"], "file": p["file"], "article": p.get("article"),
    "threads": p["threads"], "prompt_tokens": p["prompt_tokens"],
    "max_new_tokens": p["max_new_tokens"],
    "precis": {k: v for k, v in p.items() if k not in ("prompt_ids",)},
    "llama_cpp": {k: v for k, v in l.items()},
    "prompt_ids": p["prompt_ids"],
    "same_greedy_ids": same,
    "busy_cores_before": busy,
    "ratio": ratios,
}
with open(report_path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"report: {report_path}")
fmt = lambda x: "nan" if x is None else f"{x:.2f}"
print(f"ratio prefill={fmt(ratios['prefill'])} decode={fmt(ratios['decode'])} rss={fmt(ratios['rss'])}")
PY
