#!/usr/bin/env python3
"""llama.cpp runners for precis's benchmarks and reference fixtures (issue 3).

Runs llama.cpp through llama-cpp-python (pinned: 0.3.36, built from source
with its default flags; see benches/compare-llamacpp.sh, which makes the
virtualenv) on token ids given by precis, so both engines see exactly the
same prompt: nothing is re-tokenized here.

Two modes:

  bench      prefill tok/s, decode tok/s and peak RSS of one greedy run.
             python benches/llamacpp.py bench --model FILE.gguf \\
                 --ids-from target/bench-compare/<model>.precis.json \\
                 --threads 2 --tokens 64 --out target/bench-compare/<model>.llama-cpp.json

  reference  greedy ids for each prompt of a reference fixture, in the same
             format (tests/fixtures/llm-reference/<model>.candle-0.11.json).
             python benches/llamacpp.py reference --model FILE.gguf \\
                 --from tests/fixtures/llm-reference/<model>.candle-0.11.json \\
                 --out tests/fixtures/llm-reference/<model>.llama-cpp.json
             It prints, per prompt, the first index where llama.cpp's ids
             and the --from file's differ.

  compare    the same comparison for two existing fixture files.
             python benches/llamacpp.py compare A.json B.json

Greedy means pure arg-max of the last position's logits (numpy's argmax: the
lowest id wins a tie), no repetition penalty, no sampler. Generation ends
after the first stop token, which is kept in the ids (the fixtures' rule).
The stop tokens are precis's (crates/backend/src/tokenizer.rs `stop_ids`), read from the GGUF
file's own metadata: the EOS, EOT and EOM ids, plus every token whose text is
one of the end-of-turn texts precis knows (`<|im_end|>`, `<|endoftext|>`,
`<|eot_id|>`, ...) and whose token type in the file is CONTROL. For Qwen2.5
that is 151645 `<|im_end|>` (EOS) and 151643 `<|endoftext|>`; for SmolLM2 2
`<|im_end|>` (EOS) and 0 `<|endoftext|>`. llama.cpp's own end-of-generation
set (llama_vocab_is_eog) is wider: it adds FIM and repository tokens and, for
Qwen2.5, the plain text token `</s>` (128247), whose type llama.cpp overrides
to CONTROL; it is written to reference files as `llama_eog_ids`, for
information.

Contexts use llama-cpp-python's defaults (n_batch 512, n_ubatch 512, flash
attention off, f16 KV cache, mmap on), with n_threads = n_threads_batch =
--threads and n_ctx = prompt + new tokens rounded up to a multiple of 256.
The greedy ids do not depend on the thread count (1 and 2 give the same).

llama.cpp's OpenMP threads spin at every barrier: on a machine whose cores are
busy with other work, 2 threads can run 50 times slower than 1. Speed figures
need an idle machine; a reference run on a busy one can set
OMP_WAIT_POLICY=passive (the ids are the same).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def die(msg: str) -> None:
    print(f"llamacpp.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def status_kb(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """High-water RSS of this process, in MiB: VmHWM, else ru_maxrss (kB on Linux)."""
    kb = status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# End-of-turn texts that stop generation when they are control tokens: the
# list of crates/backend/src/tokenizer.rs (STOP_TOKENS).
STOP_TEXTS = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>",
              "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>"]
# tokenizer.ggml.token_type value of control tokens.
TOKEN_TYPE_CONTROL = 3


def gguf_metadata(path: str, wanted: set[str]) -> dict:
    """The `wanted` key/value pairs of a GGUF file's metadata (arrays as lists)."""
    import struct

    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
              10: "<Q", 11: "<q", 12: "<d"}
    out: dict = {}
    with open(path, "rb") as f:
        data = f.read(1 << 20)
        pos = 0

        def need(n: int) -> None:
            nonlocal data
            while pos + n > len(data):
                more = f.read(max(n, 1 << 20))
                if not more:
                    raise ValueError(f"{path}: truncated GGUF metadata")
                data += more

        def read(fmt: str):
            nonlocal pos
            size = struct.calcsize(fmt)
            need(size)
            (v,) = struct.unpack_from(fmt, data, pos)
            pos += size
            return v

        def read_str() -> str:
            nonlocal pos
            n = read("<Q")
            need(n)
            v = data[pos:pos + n].decode("utf-8", "replace")
            pos += n
            return v

        def read_value(t: int):
            if t in scalar:
                return read(scalar[t])
            if t == 8:
                return read_str()
            if t == 9:
                et, n = read("<I"), read("<Q")
                return [read_value(et) for _ in range(n)]
            raise ValueError(f"{path}: unknown GGUF value type {t}")

        if read("<I") != 0x46554747:  # b"GGUF"
            raise ValueError(f"{path}: not a GGUF file")
        read("<I")  # version
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key = read_str()
            value = read_value(read("<I"))
            if key in wanted:
                out[key] = value
    return out


class Runner:
    """One llama.cpp model and context, fed token ids, read by arg-max."""

    def __init__(self, model: str, threads: int, n_ctx: int, flash_attn: bool = False):
        try:
            import numpy as np
            import llama_cpp
        except ImportError as e:  # pragma: no cover - environment problem
            die(f"{e}: run this with the virtualenv made by benches/compare-llamacpp.sh "
                "(pip install llama-cpp-python==0.3.36 numpy)")
        self.np = np
        self.llama_cpp = llama_cpp
        if not os.path.isfile(model):
            die(f"model file not found: {model}")
        kwargs = dict(
            model_path=model,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=0,
            use_mmap=True,
            logits_all=False,
            verbose=False,
        )
        if flash_attn:
            kwargs["flash_attn"] = True
        start = time.perf_counter()
        self.llm = llama_cpp.Llama(**kwargs)
        self.load_s = time.perf_counter() - start
        self.n_vocab = self.llm.n_vocab()
        self.threads = threads
        self.n_ctx = n_ctx
        self.flash_attn = flash_attn
        self.model_path = model
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        """precis's stop rule, on the file's own metadata (see the module doc)."""
        meta = gguf_metadata(self.model_path, wanted={
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"})
        ids = set()
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                    "tokenizer.ggml.eom_token_id"):
            if isinstance(meta.get(key), int):
                ids.add(meta[key])
        tokens = meta.get("tokenizer.ggml.tokens") or []
        types = meta.get("tokenizer.ggml.token_type") or []
        wanted = set(STOP_TEXTS)
        for i, (text, kind) in enumerate(zip(tokens, types)):
            if kind == TOKEN_TYPE_CONTROL and text in wanted:
                ids.add(i)
        if not ids:  # no tokenizer metadata: llama.cpp's EOS
            ids.add(int(self.llm.token_eos()))
        return sorted(ids)

    def eog_ids(self) -> list[int]:
        """llama.cpp's own end-of-generation set (for information)."""
        lc = self.llama_cpp
        vocab = lc.llama_model_get_vocab(self.llm.model)
        return [t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(vocab, t)]

    def system_info(self) -> str:
        info = self.llama_cpp.llama_print_system_info()
        return info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)

    def reset(self) -> None:
        # eval() removes the KV cache from position n_tokens on, so this clears it.
        self.llm.reset()

    def eval_argmax(self, ids: list[int]) -> int:
        self.llm.eval(ids)
        ptr = self.llm._ctx.get_logits_ith(-1)
        logits = self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return int(logits.argmax())

    def greedy(self, prompt_ids: list[int], max_new: int, on_first=None) -> list[int]:
        """Up to max_new arg-max ids, ending after the first stop id (kept)."""
        self.reset()
        out: list[int] = []
        if max_new <= 0:
            return out
        nxt = self.eval_argmax(prompt_ids)
        if on_first is not None:
            on_first()
        stops = set(self.stop_ids)
        while True:
            out.append(nxt)
            if nxt in stops or len(out) >= max_new:
                break
            nxt = self.eval_argmax([nxt])
        return out


def ctx_for(n: int) -> int:
    return max(512, (n + 255) // 256 * 256)


def version() -> str:
    try:
        import llama_cpp
        return getattr(llama_cpp, "__version__", "?")
    except ImportError:
        return "not installed"


def cmd_bench(a: argparse.Namespace) -> None:
    try:
        with open(a.ids_from, encoding="utf-8") as f:
            precis = json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read the prompt ids from {a.ids_from}: {e}")
    prompt_ids = precis.get("prompt_ids")
    if not prompt_ids:
        die(f"{a.ids_from} has no prompt_ids")
    model = a.model or precis.get("file")
    if not model:
        die("no --model and no 'file' in the precis report")
    max_new = a.tokens + 1  # the first token (end of prefill) + `tokens` decode steps

    rss_before_mb = peak_rss_mb()
    r = Runner(model, a.threads, ctx_for(len(prompt_ids) + max_new), a.flash_attn)

    # Warm-up, as the precis bench: one prompt evaluation and one token, untimed.
    r.greedy(prompt_ids, 1)

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    first: dict[str, float] = {}

    def on_first() -> None:
        first["t"] = time.perf_counter()
        first["cpu"] = cpu_seconds()

    ids = r.greedy(prompt_ids, max_new, on_first)
    t_end = time.perf_counter()
    cpu_end = cpu_seconds()

    stopped = bool(ids) and ids[-1] in r.stop_ids
    generated = len(ids) - (1 if stopped else 0)  # as precis: the stop token is not counted
    prefill_s = first["t"] - t0
    decode_s = max(t_end - first["t"], 1e-9)
    decode_tokens = max(generated - 1, 1)
    report = {
        "engine": "llama.cpp",
        "llama_cpp_python": version(),
        "system_info": r.system_info(),
        "model": precis.get("model"),
        "file": os.path.abspath(model),
        "threads": a.threads,
        "n_ctx": r.n_ctx,
        "n_batch": r.llm.n_batch,
        "flash_attn": r.flash_attn,
        "load_s": r.load_s,
        "prompt_tokens": len(prompt_ids),
        "max_new_tokens": max_new,
        "generated_tokens": generated,
        "greedy_ids": ids,
        "stop_ids": r.stop_ids,
        "prefill_s": prefill_s,
        "prefill_tok_s": len(prompt_ids) / prefill_s,
        "prefill_cores_busy": (first["cpu"] - cpu0) / prefill_s,
        "decode_tokens": decode_tokens,
        "decode_s": decode_s,
        "decode_tok_s": decode_tokens / decode_s,
        "decode_cores_busy": (cpu_end - first["cpu"]) / decode_s,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before_mb,
    }
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    print(f"llama.cpp        llama-cpp-python {report['llama_cpp_python']}, {a.threads} threads, "
          f"n_batch {report['n_batch']}, flash_attn {'on' if r.flash_attn else 'off'}")
    print(f"load             {r.load_s:.2f} s")
    print(f"prefill          {report['prefill_tok_s']:.1f} tok/s ({prefill_s:.2f} s, "
          f"{report['prefill_cores_busy']:.2f} cores busy)")
    print(f"decode           {report['decode_tok_s']:.2f} tok/s ({decode_tokens} tokens, {decode_s:.2f} s, "
          f"{report['decode_cores_busy']:.2f} cores busy)")
    print(f"peak RSS         {report['peak_rss_mb']:.0f} MB (python before load: {rss_before_mb:.0f} MB)")
    if stopped:
        print(f"note: llama.cpp stopped after {generated} tokens (end token)")


def first_diff(a: list[int], b: list[int]) -> int | None:
    """First index where the lists differ (the shorter length if one is a prefix), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def fixture_json(result: dict) -> str:
    """JSON with one line per key and per prompt field (id lists kept on one line)."""
    c = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    lines = []
    for k, v in result.items():
        if k != "prompts":
            lines.append(f" {c(k)}: {c(v)}")
    prompts = []
    for p in result["prompts"]:
        fields = ",\n".join(f"   {c(k)}: {c(v)}" for k, v in p.items())
        prompts.append("  {\n" + fields + "\n  }")
    lines.append(' "prompts": [\n' + ",\n".join(prompts) + "\n ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def cmd_reference(a: argparse.Namespace) -> None:
    try:
        with open(a.from_, encoding="utf-8") as f:
            base = json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read {a.from_}: {e}")
    prompts = base.get("prompts") or die(f"{a.from_} has no prompts")
    longest = max(len(p["prompt_ids"]) for p in prompts)
    r = Runner(a.model, a.threads, ctx_for(longest + a.max_new_tokens), a.flash_attn)
    out_prompts = []
    lines = []
    for p in prompts:
        ids = r.greedy(list(p["prompt_ids"]), a.max_new_tokens)
        out_prompts.append({"name": p["name"], "prompt_ids": p["prompt_ids"], "greedy_ids": ids})
        theirs = p.get("greedy_ids") or []
        d = first_diff(ids, theirs)
        same = "identical" if d is None else f"first difference at index {d}"
        lines.append(f"{p['name']}: llama.cpp {len(ids)} ids, {base.get('reference', 'base')} "
                     f"{len(theirs)} ids: {same}")
    result = {
        "reference": f"llama.cpp (llama-cpp-python {version()})",
        "model": base.get("model"),
        "file": base.get("file") or os.path.basename(a.model),
        "threads": a.threads,
        "stop_ids": r.stop_ids,
        "llama_eog_ids": r.eog_ids(),
        "prompts": out_prompts,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(fixture_json(result))
    print(f"wrote {a.out} (stop ids {r.stop_ids})")
    for line in lines:
        print(line)


def cmd_compare(a: argparse.Namespace) -> None:
    """First differing index per prompt between two fixtures of the same prompts."""
    with open(a.a, encoding="utf-8") as f:
        x = json.load(f)
    with open(a.b, encoding="utf-8") as f:
        y = json.load(f)
    by_name = {p["name"]: p for p in y.get("prompts", [])}
    print(f"{x.get('model')}: {x.get('reference')} vs {y.get('reference')}")
    for p in x.get("prompts", []):
        q = by_name.get(p["name"])
        if q is None:
            print(f"  {p['name']}: missing in {a.b}")
            continue
        if q["prompt_ids"] != p["prompt_ids"]:
            print(f"  {p['name']}: prompt ids differ")
            continue
        d = first_diff(p["greedy_ids"], q["greedy_ids"])
        same = "identical" if d is None else f"first difference at index {d}"
        print(f"  {p['name']}: {len(p['greedy_ids'])} vs {len(q['greedy_ids'])} ids, {same}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description="llama.cpp (llama-cpp-python) runners for precis: speed bench and greedy reference ids.")
    sub = ap.add_subparsers(dest="mode", required=True)

    b = sub.add_parser("bench", help="prefill/decode tok/s and peak RSS on precis's prompt ids")
    b.add_argument("--ids-from", required=True, help="precis bench JSON (PRECIS_BENCH_JSON) with prompt_ids")
    b.add_argument("--model", help="GGUF file [default: the 'file' of the precis report]")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--tokens", type=int, default=64, help="decode tokens after the first one")
    b.add_argument("--flash-attn", action="store_true", help="turn flash attention on (off by default)")
    b.add_argument("--out", help="write the figures here as JSON")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("reference", help="greedy ids for the prompts of a reference fixture")
    r.add_argument("--model", required=True, help="GGUF file")
    r.add_argument("--from", dest="from_", required=True, help="fixture whose prompts (prompt_ids) to use")
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--flash-attn", action="store_true")
    r.set_defaults(func=cmd_reference)

    c = sub.add_parser("compare", help="first differing greedy id per prompt of two fixtures")
    c.add_argument("a")
    c.add_argument("b")
    c.set_defaults(func=cmd_compare)

    a = ap.parse_args()
    if getattr(a, "threads", 1) < 1:
        die("--threads must be at least 1")
    a.func(a)


if __name__ == "__main__":
    main()
