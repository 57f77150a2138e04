#!/usr/bin/env bash
# The prepared GPU check: what precis does on a CUDA GPU, in one JSON report,
# in under 8 minutes, on a machine with a GPU, Python, PyTorch and
# transformers but no network and no Rust toolchain.
#
#   scripts/gpu-check.sh --prepare     # here: build and gather what it carries
#   scripts/gpu-check.sh               # there, from the repository's root
#   scripts/gpu-check.sh --device cpu  # here: the same run on the CPU (a dry run)
#
# `--prepare` builds the CUDA binaries (scripts/cuda-build.sh: precis, the
# portable path's parity test, the seq2seq and llm benches) and makes the
# speed protocol's recipes (the random full-size opus-mt-en-ru- and
# distilbart-cnn-12-6-shaped checkpoints of benches/compare-marian.sh,
# without their weights, and their inputs; FLORES-200 from ../shared/eval),
# all under target/gpu-check/carry (checked to be under 60 MiB: the device
# tool's `carry` takes that folder).
#
# The run, on the GPU (report: $OUT/gpu-check.json, else
# target/gpu-check/out/gpu-check.json):
# 1. the machine: GPU, driver (check: 580 or later, which CUDA 13's PTX
#    needs), torch and transformers versions; CUDA's libraries found in the
#    PyTorch install and put on LD_LIBRARY_PATH;
# 2. parity: the portable path's parity suite (tests/portable_parity.rs) on
#    --device cuda: every family's fixtures against transformers' recorded
#    outputs, and f16 / bf16 teacher-forced agreement with f32 (check: at
#    least 0.98 each); `precis translate --device cuda` end to end;
# 3. speed: each recipe made into a checkpoint with random weights by this
#    machine's transformers, then the protocol of benches/compare-marian.sh
#    (Marian 200 sentences, 32 tokens; BART 100 inputs, 64 tokens; batches
#    of 8; beams 4 and 1) for transformers and precis on the same GPU in f32:
#    tokens/s and precis/transformers ratios (target >= 1.0);
# 4. GGUF: prefill and decode tokens/s of SmolLM2-135M and
#    Qwen2.5-Coder-0.5B (98 and 469 MiB: over the carry, so they travel as
#    skeletons, their metadata and tensor shapes, and the llm bench makes
#    random weights of the same shapes and block types there; on this CPU
#    the 0.5B's made so decodes at 30.4 tok/s against 29.9 for the real
#    file), and of each real .gguf file in PRECIS_GPU_GGUF_DIR, beside this
#    CPU's decode figure (target: 5x on the 0.5B);
# 5. peak GPU memory of each stage (nvidia-smi, sampled every 200 ms).
#
# Environment: OUT, PRECIS_GPU_CARRY [target/gpu-check/carry], PRECIS_FLORES
# [../shared/eval/flores200-dev], PRECIS_MARIAN_VENV (--prepare),
# PRECIS_GPU_GGUF_DIR, PRECIS_GPU_PYTHON [python3], PRECIS_GPU_CPU_DECODE
# [29.92: Qwen2.5-Coder-0.5B decode tok/s on the Intel Xeon precis is built
# on], PRECIS_GPU_COUNTS ["200 100": Marian and BART inputs].
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
carry=${PRECIS_GPU_CARRY:-$repo/target/gpu-check/carry}
mode=run
device=cuda:0
while (($#)); do
    case $1 in
        -h | --help) sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --prepare) mode=prepare ;;
        --device) device=${2:?--device wants cpu or cuda:N}; shift ;;
        *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
say() { echo "::: $*" >&2; }
die() { echo "gpu-check.sh: $*" >&2; exit 1; }

if [[ $mode == prepare ]]; then
    venv=${PRECIS_MARIAN_VENV:-$HOME/.cache/precis/fixtures-venv}
    flores=${PRECIS_FLORES:-$repo/../shared/eval/flores200-dev}
    [[ -x $venv/bin/python ]] || die "no virtualenv at $venv: run benches/compare-marian.sh once to make it"
    [[ -f $flores/eng_Latn.txt ]] || die "no FLORES-200 at $flores (PRECIS_FLORES)"
    "$repo/scripts/cuda-build.sh" --check
    target=${CARGO_TARGET_DIR:-$repo/target/cuda}
    rm -rf "$carry"
    mkdir -p "$carry/bin" "$carry/recipes"
    cp "$target/release/precis" "$target/release/libcudart.so.13" "$carry/bin/"
    for name in portable_parity seq2seq llm; do
        found=$(ls -t "$target/release/deps/$name"-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
        [[ -n $found ]] || die "no $name binary in $target/release/deps"
        cp "$found" "$carry/bin/$name"
    done
    compare() { "$venv/bin/python" -W ignore "$repo/benches/marian_compare.py" "$@"; }
    bench=$HOME/.cache/precis/bench
    marian=$bench/opus-mt-en-ru-random bart=$bench/distilbart-cnn-12-6-random
    [[ -f $marian/bench-checkpoint.json ]] || compare checkpoint --family marian --out "$marian" --flores "$flores"
    [[ -f $bart/bench-checkpoint.json ]] || compare checkpoint --family bart --out "$bart" --flores "$flores"
    compare recipe --model "$marian" --inputs "$flores/eng_Latn.txt" --count 200 --out "$carry/recipes/marian"
    compare inputs --model "$bart" --sentences "$flores/eng_Latn.txt" --count 100 --out "$carry/bart-inputs.txt"
    compare recipe --model "$bart" --inputs "$carry/bart-inputs.txt" --count 100 --out "$carry/recipes/bart"
    rm "$carry/bart-inputs.txt"
    # The GGUF models as skeletons: metadata and tensor shapes, no weights
    # (the llm bench makes random weights of those shapes there).
    for id in smollm2-135m-instruct-q4_1 qwen2.5-coder-0.5b-instruct-q4_k_m; do
        PRECIS_BENCH_MODEL=$id PRECIS_BENCH_SKELETON_OUT=$carry/bin/$id.skeleton.gguf \
            LD_LIBRARY_PATH=$carry/bin "$carry/bin/llm" >/dev/null
    done
    # Stripped and xz-compressed: four binaries of about 30 MiB each fit
    # the carry as about 10 MiB each (Python's lzma unpacks them there).
    for name in precis portable_parity seq2seq llm; do
        strip "$carry/bin/$name"
    done
    for file in "$carry/bin"/*; do
        [[ $file == */libcudart.so.13 ]] || xz -9 -T2 "$file"
    done
    size=$(du -sm "$carry" | cut -f1)
    ((size < 60)) || die "$carry holds $size MiB: over the 60 MiB carry"
    say "carry: $carry, $size MiB ($(ls "$carry/bin" | tr '\n' ' '))"
    say "on the GPU machine: scripts/gpu-check.sh (the device tool's carry: ${carry#$repo/})"
    exit 0
fi

# The run.
started=$(date +%s)
out=${OUT:-$repo/target/gpu-check/out}
mkdir -p "$out"
py=${PRECIS_GPU_PYTHON:-python3}
[[ -f $carry/bin/precis.xz ]] || die "no binaries in $carry/bin: run scripts/gpu-check.sh --prepare where precis is built, and carry $carry"
bin=$out/bin
rm -rf "$bin" && mkdir -p "$bin"
"$py" - "$carry/bin" "$bin" <<'PY'
import lzma, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
for name in os.listdir(src):
    if name.endswith(".xz"):
        with lzma.open(os.path.join(src, name)) as f, open(os.path.join(dst, name[:-3]), "wb") as g:
            shutil.copyfileobj(f, g)
        os.chmod(os.path.join(dst, name[:-3]), 0o755)
    else:
        shutil.copy(os.path.join(src, name), dst)
PY
read -r marian_count bart_count <<<"${PRECIS_GPU_COUNTS:-200 100}"
on_gpu=yes
[[ $device == cpu ]] && on_gpu=no
stage() { say "$1 ($(($(date +%s) - started)) s)"; echo "$1" >"$out/stage"; }

# 1. The machine and CUDA's libraries.
stage machine
if [[ $on_gpu == yes ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" ||
        die "nvidia-smi failed: no GPU here?"
    libs=$out/cuda-libs
    rm -rf "$libs" && mkdir -p "$libs"
    # CUDA 12 or 13's libraries from the Python install (PyTorch's nvidia-*
    # packages), under the plain names precis's build loads them by.
    "$py" - "$libs" <<'PY'
import glob, os, site, sys
out = sys.argv[1]
roots = site.getsitepackages() + [site.getusersitepackages()]
found = {}
for name in ["cublas", "cublasLt", "curand", "nvrtc", "nvrtc-builtins"]:
    for root in roots:
        hits = sorted(glob.glob(f"{root}/nvidia/**/lib{name}.so*", recursive=True)) + \
            sorted(glob.glob(f"{root}/torch/lib/lib{name}.so*"))
        hits = [h for h in hits if not h.endswith(".alt.so")]
        if hits:
            found[name] = hits[-1]
            break
for name, path in found.items():
    os.symlink(path, f"{out}/lib{name}.so")
    print(f"lib{name}.so -> {path}")
missing = {"cublas", "cublasLt", "curand", "nvrtc"} - set(found)
if missing:
    print("missing: " + ", ".join(sorted(missing)), file=sys.stderr)
PY
    export LD_LIBRARY_PATH=$libs:$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # Each stage's peak GPU memory: sampled, and cut by the stage file.
    (while [[ -f $out/stage ]]; do
        printf '%s %s\n' "$(cat "$out/stage" 2>/dev/null)" \
            "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)"
        sleep 0.2
    done) >"$out/memory.txt" 2>/dev/null &
    sampler=$!
    trap 'rm -f "$out/stage"; kill $sampler 2>/dev/null || true' EXIT
else
    echo "cpu (dry run: the portable path on the CPU)" >"$out/gpu.txt"
    export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
"$py" -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.version.cuda)' \
    >"$out/python.txt" 2>&1 || true

# 2. Parity.
stage parity
status=0
PRECIS_TEST_DEVICE=$device PRECIS_TEST_FIXTURES=$repo/tests/fixtures \
    timeout 240 "$bin/portable_parity" --test-threads=1 --nocapture >"$out/parity.txt" 2>&1 || status=$?
echo "exit $status" >>"$out/parity.txt"
home=$(mktemp -d)
status=0
echo "The minister will visit Moscow in May." |
    PRECIS_HOME=$home HF_ENDPOINT=http://127.0.0.1:9 PRECIS_PIP=false timeout 60 \
        "$bin/precis" translate --model "$repo/tests/fixtures/marian/tiny-en-ru" --to ru \
        --device "$device" --format json - >"$out/cli.json" 2>"$out/cli.err" || status=$?
echo "$status" >"$out/cli.status"
rm -rf "$home"

# 3. Speed: precis vs transformers on the same device, f32.
compare() { "$py" -W ignore "$repo/benches/marian_compare.py" "$@"; }
for family in marian bart; do
    stage "speed-$family"
    recipe=$carry/recipes/$family
    [[ -d $recipe ]] || { echo "no recipe" >"$out/$family.skipped"; continue; }
    count=$marian_count tokens=32
    [[ $family == bart ]] && count=$bart_count tokens=64
    checkpoint=$out/checkpoints/$family
    compare weights --recipe "$recipe" --out "$checkpoint" >"$out/$family-weights.txt" 2>&1 ||
        { echo "weights failed" >"$out/$family.skipped"; continue; }
    torch_device=cpu
    [[ $on_gpu == yes ]] && torch_device=cuda
    timeout 200 "$py" -W ignore "$repo/benches/marian_compare.py" transformers --model "$checkpoint" \
        --inputs "$recipe/inputs.txt" --count "$count" --batch 8 --beams 4,1 --tokens "$tokens" \
        --device "$torch_device" --dtype f32 --out "$out/$family-transformers.json" >"$out/$family-transformers.txt" 2>&1 || true
    PRECIS_BENCH_CHECKPOINT=$checkpoint PRECIS_BENCH_INPUTS=$recipe/inputs.txt PRECIS_BENCH_COUNT=$count \
        PRECIS_BENCH_TOKENS=$tokens PRECIS_BENCH_BEAMS=4,1 PRECIS_BENCH_DEVICE=$device PRECIS_BENCH_PORTABLE=1 \
        PRECIS_BENCH_JSON=$out/$family-precis.json timeout 200 "$bin/seq2seq" >"$out/$family-precis.txt" 2>&1 || true
    rm -rf "$checkpoint"
done

# 4. GGUF: the carried skeletons (random weights of SmolLM2's and
# Qwen2.5-Coder-0.5B's shapes and block types), and real files when given.
stage gguf
for file in "$bin"/*.skeleton.gguf "${PRECIS_GPU_GGUF_DIR:-/nonexistent}"/*.gguf; do
    [[ -f $file ]] || continue
    name=$(basename "$file" .gguf)
    PRECIS_BENCH_MODEL=$file PRECIS_BENCH_DEVICE=$device PRECIS_BENCH_JSON=$out/gguf-$name.json \
        PRECIS_BENCH_ARTICLE=$repo/examples/sample-article.txt \
        PRECIS_BENCH_SPEC_TOKENS=0 timeout 120 "$bin/llm" >"$out/gguf-$name.txt" 2>&1 || true
done

# 5. The report.
stage report
"$py" - "$out" "$device" "$(($(date +%s) - started))" "${PRECIS_GPU_CPU_DECODE:-29.92}" <<'PY'
import glob, json, os, re, sys
out, device, seconds, cpu_decode = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def read(name, default=""):
    try:
        return open(os.path.join(out, name), encoding="utf-8").read()
    except OSError:
        return default
def load(name):
    try:
        return json.load(open(os.path.join(out, name), encoding="utf-8"))
    except (OSError, ValueError):
        return None
report = {"device": device, "gpu": read("gpu.txt").strip(), "python": read("python.txt").strip(), "checks": {}}
checks = report["checks"]
# The kernels are CUDA 13 PTX, which the driver compiles at load: a driver
# older than 580 cannot, and every GPU stage fails for that one reason.
driver = re.search(r", (\d+)\.[\d.]+, ", report["gpu"])
if driver:
    checks["driver_runs_cuda_13_ptx"] = int(driver.group(1)) >= 580
parity = read("parity.txt")
summary = re.findall(r"^test result: (\w+)\. (\d+) passed; (\d+) failed", parity, re.M)
failed = re.findall(r"^    (\S+) *$", parity.split("failures:")[-1], re.M) if "failures:" in parity else []
report["parity"] = {
    "result": summary[-1] if summary else "not run",
    "failed": failed,
    "exit": parity.strip().splitlines()[-1] if parity else "not run",
}
checks["parity"] = bool(summary) and summary[-1][0] == "ok" and int(summary[-1][1]) >= 4
agreement = [
    {"checkpoint": c, "dtype": d.lower(), "agreement": float(a)}
    for c, d, a in re.findall(r"^agreement (\S+) (\w+)/f32 = ([0-9.]+)", parity, re.M)
]
report["half_precision"] = agreement
checks["half_precision_at_least_0.98"] = bool(agreement) and all(a["agreement"] >= 0.98 for a in agreement)
cli = load("cli.json")
report["cli"] = {"exit": read("cli.status").strip(), "text": (cli or {}).get("translations", [{}])[0].get("text")}
checks["cli"] = report["cli"]["exit"] == "0" and bool(report["cli"]["text"])
speed = {}
for family in ["marian", "bart"]:
    t, p = load(f"{family}-transformers.json"), load(f"{family}-precis.json")
    entry = {"skipped": read(f"{family}.skipped").strip() or None}
    if t and p:
        tr = {r["beams"]: r for r in t["runs"]}
        for r in p["runs"]:
            b = r["beams"]
            if b in tr and "tok_s" in r and "tok_s" in tr[b]:
                entry[f"beam{b}"] = {
                    "precis_tok_s": r["tok_s"], "transformers_tok_s": tr[b]["tok_s"],
                    "ratio": r["tok_s"] / tr[b]["tok_s"],
                    "transformers_peak_gpu_mb": tr[b].get("peak_gpu_mb"),
                }
        entry["inputs"], entry["tokens"] = p.get("inputs"), p.get("tokens")
    else:
        entry["error"] = (read(f"{family}-precis.txt")[-600:] if not p else "") + (read(f"{family}-transformers.txt")[-600:] if not t else "")
    speed[family] = entry
report["speed"] = speed
checks["speed_ran"] = all(any(k.startswith("beam") for k in e) for e in speed.values())
gguf = {}
for path in sorted(glob.glob(os.path.join(out, "gguf-*.json"))):
    g = json.load(open(path))
    name = os.path.basename(path)[5:-5]
    gguf[name] = {k: g.get(k) for k in ("prefill_tok_s", "decode_tok_s", "prompt_tokens", "load_s")}
    if "qwen2.5-coder-0.5b" in name.lower() and g.get("decode_tok_s"):
        gguf[name]["decode_vs_cpu"] = g["decode_tok_s"] / cpu_decode
report["gguf"] = gguf or "no GGUF run"
memory = {}
for line in read("memory.txt").splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[1].isdigit():
        memory[parts[0]] = max(memory.get(parts[0], 0), int(parts[1]))
report["peak_gpu_memory_mb"] = memory or None
report["seconds"] = seconds
checks["under_8_minutes"] = seconds < 480
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print(json.dumps(report, indent=1))
PY
say "report: $out/gpu-check.json"
