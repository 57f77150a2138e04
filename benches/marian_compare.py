#!/usr/bin/env python3
"""The Python half of the Marian speed comparison (benches/compare-marian.sh).

Why it exists: precis's Marian backend is measured against the two engines a
user would otherwise run, Python transformers (torch, CPU) and CTranslate2,
under one fixed protocol, on the same checkpoint and the same input ids. The
real opus-mt weights cannot be downloaded here, so the checkpoint is a
full-size, randomly initialised Marian with opus-mt-en-ru's exact config:
speed depends on the shapes, not on the values.

Subcommands (each prints what it did; `--help` on each lists its options):

    checkpoint   make the random checkpoint (hub layout, seeded) once
    transformers time transformers' generate(), or record ids on a sample
    ct2-convert  convert the checkpoint with ctranslate2's converter
    ct2          time CTranslate2's translate_batch()
    check        assert that precis and transformers produced the same ids
    busy         cores kept busy by the whole machine over one second
    report       the table and the ratio lines, from the engines' JSON files

The protocol (what `compare-marian.sh` passes): the first 200 sentences of
FLORES-200 (eng_Latn), batches of 8, beam 4 and greedy, exactly 32 new tokens
per sentence (min_new_tokens = max_new_tokens = 32 on top of the checkpoint's
generation_config.json), 2 threads. Each engine tokenizes every batch before
the clock starts (transformers and CTranslate2 with transformers'
MarianTokenizer, precis with its own), does one untimed warm-up batch per
beam size, then times generation alone (encoder + decoder, every batch one
after the other); tokens/s = 32 x sentences / wall seconds, for every engine.

Runs in the virtualenv with transformers 5.24.0, torch, sentencepiece,
safetensors and ctranslate2 4.8.5 (compare-marian.sh names it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

PROG = "marian_compare.py"
FORMAT = "precis marian bench checkpoint v1"
# What the checkpoint's marker file must say for it to be reused.
MARKER = "bench-checkpoint.json"

# opus-mt-en-ru's config.json (Helsinki-NLP/opus-mt-en-ru), written out by
# hand: no hub access here.
VOCAB_SIZE = 62518
PAD_ID = VOCAB_SIZE - 1
OPUS_MT_EN_RU = dict(
    vocab_size=VOCAB_SIZE,
    decoder_vocab_size=VOCAB_SIZE,
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    activation_function="swish",
    max_position_embeddings=512,
    scale_embedding=True,
    pad_token_id=PAD_ID,
    decoder_start_token_id=PAD_ID,
    eos_token_id=0,
    bos_token_id=0,
    forced_eos_token_id=0,
    share_encoder_decoder_embeddings=True,
    tie_word_embeddings=True,
    dropout=0.1,
    attention_dropout=0.0,
    activation_dropout=0.0,
    init_std=0.02,
    architectures=["MarianMTModel"],
)
# Keys the real config.json carries that the PyTorch code ignores.
OPUS_MT_EXTRA = dict(
    normalize_before=False,
    normalize_embedding=False,
    static_position_embeddings=True,
    add_bias_logits=False,
    add_final_layer_norm=False,
    extra_pos_embeddings=VOCAB_SIZE,
)
# opus-mt-en-ru's generation_config.json.
OPUS_MT_GENERATION = dict(
    bad_words_ids=[[PAD_ID]],
    bos_token_id=0,
    decoder_start_token_id=PAD_ID,
    eos_token_id=0,
    forced_eos_token_id=0,
    max_length=512,
    num_beams=4,
    pad_token_id=PAD_ID,
)


def die(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def read_sentences(path: str, count: int | None) -> list:
    """The first `count` non-empty lines of `path` (all of them for None)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
    except OSError as e:
        die(f"cannot read {path}: {e}")
    lines = [line for line in lines if line.strip()]
    if count is None:
        return lines
    if len(lines) < count:
        die(f"{path} has {len(lines)} sentences, fewer than the {count} asked")
    return lines[:count]


def batches_of(items: list, size: int) -> list:
    return [items[i : i + size] for i in range(0, len(items), size)]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_jiffies() -> tuple:
    """Jiffies of the whole machine so far: (all, idle + iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[3] + v[4]


class Clock:
    """Wall time, this process's CPU time and the machine's over a timed run."""

    def __enter__(self):
        self.cpu0, self.m0, self.t0 = cpu_seconds(), machine_jiffies(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cores = (cpu_seconds() - self.cpu0) / self.wall
        (t0, i0), (t1, i1) = self.m0, machine_jiffies()
        machine = ((t1 - t0) - (i1 - i0)) / max(t1 - t0, 1) * (os.cpu_count() or 1)
        # Cores other processes kept busy meanwhile.
        self.others = max(machine - self.cores, 0.0)
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_json(path: str, value: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in ["transformers", "torch", "sentencepiece", "safetensors", "ctranslate2", "numpy"]:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def parse_beams(text: str) -> list:
    try:
        beams = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        die(f"--beams wants sizes separated by commas, not '{text}'")
    if not beams or any(b < 1 for b in beams):
        die(f"--beams wants positive sizes, not '{text}'")
    return beams


# ---------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------
def train_spm(sentences: list, vocab_size: int) -> bytes:
    """A SentencePiece unigram model as Marian's (nmt_nfkc, default special ids)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        # 500 sentences do not support more pieces than ~3-4k; take what they give.
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def build_vocab(src_proto: bytes, tgt_proto: bytes) -> tuple:
    """vocab.json as opus-mt has it (one shared map, </s>=0, <unk>=1, <pad>=last), with
    the pieces of both SentencePiece models by descending score, then filler entries up
    to exactly VOCAB_SIZE; returns the map and the number of real pieces."""
    import sentencepiece as spm

    models = [spm.SentencePieceProcessor(model_proto=p) for p in (src_proto, tgt_proto)]
    scored = []
    for which, m in enumerate(models):
        for i in range(m.get_piece_size()):
            if m.is_control(i) or m.is_unknown(i):
                continue
            scored.append((-m.get_score(i), which, i, m.id_to_piece(i)))
    scored.sort()
    vocab = {"</s>": 0, "<unk>": 1}
    for _, _, _, piece in scored:
        vocab.setdefault(piece, len(vocab))
    pieces = len(vocab)
    if pieces > PAD_ID:
        die(f"the SentencePiece models have {pieces} pieces, more than the vocabulary holds")
    n = 0
    while len(vocab) < PAD_ID:
        # Never produced by segmentation (no ▁, angle brackets): ids the random
        # model can still emit, as a real 62k vocabulary has.
        vocab.setdefault(f"<filler_{n:05d}>", len(vocab))
        n += 1
    vocab["<pad>"] = PAD_ID
    assert len(vocab) == VOCAB_SIZE and sorted(vocab.values()) == list(range(VOCAB_SIZE))
    return vocab, pieces


def spm_size(proto: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto).get_piece_size()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_checkpoint(args) -> None:
    import random

    import numpy as np
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(args.out)
    if (out / MARKER).exists() and not args.force:
        print(f"checkpoint {out} exists ({MARKER}); --force rebuilds it")
        return
    flores = Path(args.flores)
    src_texts = read_sentences(str(flores / "eng_Latn.txt"), None)
    tgt_texts = read_sentences(str(flores / "rus_Cyrl.txt"), None)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    # 1. Tokenizer: unigram models trained on FLORES (all its English / Russian
    # sentences), so source lengths are those of a subword model, not of words.
    src_proto = train_spm(src_texts, args.spm_vocab)
    tgt_proto = train_spm(tgt_texts, args.spm_vocab)
    (tmp / "source.spm").write_bytes(src_proto)
    (tmp / "target.spm").write_bytes(tgt_proto)
    vocab, real_pieces = build_vocab(src_proto, tgt_proto)
    with open(tmp / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, indent=2, ensure_ascii=False)
    tok = MarianTokenizer(
        source_spm=str(tmp / "source.spm"),
        target_spm=str(tmp / "target.spm"),
        vocab=str(tmp / "vocab.json"),
        source_lang="eng",
        target_lang="rus",
    )
    tok.save_pretrained(str(tmp))
    tok = MarianTokenizer.from_pretrained(str(tmp))
    assert tok.pad_token_id == PAD_ID and tok.eos_token_id == 0 and tok.unk_token_id == 1

    # 2. The model: opus-mt-en-ru's config, random weights (init_std 0.02), the
    # <pad> row of the shared embedding zero as in the real checkpoint (the
    # decoder starts from it; CTranslate2 starts from a zero embedding).
    config = MarianConfig(**OPUS_MT_EN_RU)
    for key, value in OPUS_MT_EXTRA.items():
        setattr(config, key, value)
    torch.manual_seed(args.seed)
    model = MarianMTModel(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[PAD_ID].zero_()
    model.generation_config = GenerationConfig(**OPUS_MT_GENERATION)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for p in tmp.iterdir():
        p.chmod(0o644)

    lengths = [len(ids) for ids in tok(src_texts[:200])["input_ids"]]
    marker = {
        "format": FORMAT,
        "seed": args.seed,
        "versions": versions(),
        "config": "Helsinki-NLP/opus-mt-en-ru (written out by hand), random weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "spm_pieces": {"source": spm_size(src_proto), "target": spm_size(tgt_proto)},
        "vocab_real_pieces": real_pieces,
        "vocab_size": len(vocab),
        "source_tokens_first_200": {
            "mean": sum(lengths) / len(lengths),
            "min": min(lengths),
            "max": max(lengths),
        },
        "files": {p.name: sha256(p) for p in sorted(tmp.iterdir())},
    }
    write_json(str(tmp / MARKER), marker)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(
        f"checkpoint {out}: {marker['parameters'] / 1e6:.1f} M parameters, vocabulary {len(vocab)} "
        f"({real_pieces} SentencePiece pieces + fillers), seed {args.seed}; first 200 sources "
        f"{marker['source_tokens_first_200']['mean']:.1f} tokens on average (</s> included)"
    )


# ---------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------
def configure_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def warn_others(name: str, clock: "Clock") -> None:
    if clock.others >= 0.25:
        print(f"warning: other processes kept {clock.others:.2f} cores busy during the {name} run: "
              "this figure is low", flush=True)


def cmd_transformers(args) -> None:
    configure_torch(args.threads)
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    from transformers.utils import logging as hf_logging

    # generate() warns on every call that max_new_tokens wins over the
    # checkpoint's max_length, which is the point.
    hf_logging.set_verbosity_error()
    beams = parse_beams(args.beams)
    count = args.sample if args.sample else args.count
    sentences = read_sentences(args.sentences, count)
    load_start = time.perf_counter()
    tok = MarianTokenizer.from_pretrained(args.model)
    model = MarianMTModel.from_pretrained(args.model)
    model.eval()
    load_s = time.perf_counter() - load_start
    encoded = [tok(b, padding=True, return_tensors="pt") for b in batches_of(sentences, args.batch)]
    input_ids = [tok(s)["input_ids"] for s in sentences]
    kwargs = dict(min_new_tokens=args.tokens, max_new_tokens=args.tokens)
    report = {
        "engine": "transformers",
        "versions": versions(),
        "model": args.model,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "sentences_file": args.sentences,
        "sentences": len(sentences),
        "batch": args.batch,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "load_s": load_s,
        "input_ids": input_ids,
        "runs": [],
    }
    with torch.inference_mode():
        for b in beams:
            run = {"beams": b}
            if args.sample:
                outs = [model.generate(**e, num_beams=b, **kwargs) for e in encoded]
                run["ids"] = [row for o in outs for row in o.tolist()]
            else:
                model.generate(**encoded[0], num_beams=b, **kwargs)  # warm-up, untimed
                with Clock() as clock:
                    outs = [model.generate(**e, num_beams=b, **kwargs) for e in encoded]
                wall = clock.wall
                new = [o.shape[1] - 1 for o in outs]
                run.update(
                    wall_s=wall,
                    tok_s=args.tokens * len(sentences) / wall,
                    cores_busy=clock.cores,
                    others_cores_busy=clock.others,
                    new_tokens_min=min(new),
                    new_tokens_max=max(new),
                )
                print(
                    f"transformers beam={b}: {run['tok_s']:.1f} tok/s ({len(sentences)} sentences x "
                    f"{args.tokens} tokens in {wall:.2f} s, {run['cores_busy']:.2f} cores busy)",
                    flush=True,
                )
                warn_others(f"transformers beam={b}", clock)
            report["runs"].append(run)
    report["peak_rss_mb"] = peak_rss_mb()
    write_json(args.out, report)


# ---------------------------------------------------------------------------
# CTranslate2
# ---------------------------------------------------------------------------
def cmd_ct2_convert(args) -> None:
    import ctranslate2

    out = Path(args.out)
    if (out / "model.bin").exists() and not args.force:
        print(f"ctranslate2 model {out} exists; --force reconverts")
        return
    converter = ctranslate2.converters.TransformersConverter(args.model)
    converter.convert(str(out), quantization=args.quantization, force=True)
    print(f"ctranslate2 {ctranslate2.__version__}: {args.model} -> {out} ({args.quantization})")


def cmd_ct2(args) -> None:
    import ctranslate2
    from transformers import MarianTokenizer

    beams = parse_beams(args.beams)
    sentences = read_sentences(args.sentences, args.count)
    tok = MarianTokenizer.from_pretrained(args.hf)
    # The same source pieces transformers feeds its model (</s> included).
    source = [tok.convert_ids_to_tokens(tok(s)["input_ids"]) for s in sentences]
    batches = batches_of(source, args.batch)
    load_start = time.perf_counter()
    translator = ctranslate2.Translator(
        args.model,
        device="cpu",
        compute_type=args.compute_type,
        inter_threads=1,
        intra_threads=args.threads,
    )
    load_s = time.perf_counter() - load_start
    kwargs = dict(
        max_batch_size=args.batch,
        max_decoding_length=args.tokens,
        min_decoding_length=args.tokens,
        num_hypotheses=1,
    )
    report = {
        "engine": f"ctranslate2-{args.compute_type}",
        "versions": versions(),
        "model": args.model,
        "compute_type": args.compute_type,
        "sentences_file": args.sentences,
        "sentences": len(sentences),
        "batch": args.batch,
        "threads": args.threads,
        "tokens": args.tokens,
        "load_s": load_s,
        "runs": [],
    }
    vocab = tok.get_vocab()
    for b in beams:
        translator.translate_batch(batches[0], beam_size=b, **kwargs)  # warm-up, untimed
        with Clock() as clock:
            results = [translator.translate_batch(batch, beam_size=b, **kwargs) for batch in batches]
        wall = clock.wall
        hyps = [r.hypotheses[0] for rs in results for r in rs]
        lengths = [len(h) for h in hyps]
        run = {
            "beams": b,
            "wall_s": wall,
            "tok_s": args.tokens * len(sentences) / wall,
            "cores_busy": clock.cores,
            "others_cores_busy": clock.others,
            # Returned tokens, end token excluded: 32 (or 31 when the last step chose </s>).
            "new_tokens_min": min(lengths),
            "new_tokens_max": max(lengths),
            "ids_sample": [[vocab.get(t, -1) for t in h] for h in hyps[: args.batch]],
        }
        report["runs"].append(run)
        print(
            f"{report['engine']} beam={b}: {run['tok_s']:.1f} tok/s ({len(sentences)} sentences x "
            f"{args.tokens} tokens in {wall:.2f} s, {run['cores_busy']:.2f} cores busy)",
            flush=True,
        )
        warn_others(f"{report['engine']} beam={b}", clock)
    report["peak_rss_mb"] = peak_rss_mb()
    write_json(args.out, report)


# ---------------------------------------------------------------------------
# check, busy, report
# ---------------------------------------------------------------------------
def first_diff(a: list, b: list):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def cmd_check(args) -> None:
    p = json.load(open(args.precis, encoding="utf-8"))
    t = json.load(open(args.transformers, encoding="utf-8"))
    problems = []
    n = min(len(p["input_ids"]), len(t["input_ids"]))
    if len(p["input_ids"]) != len(t["input_ids"]):
        problems.append(f"{len(p['input_ids'])} precis inputs but {len(t['input_ids'])} transformers inputs")
    for i in range(n):
        if p["input_ids"][i] != t["input_ids"][i]:
            d = first_diff(p["input_ids"][i], t["input_ids"][i])
            problems.append(f"sentence {i}: the tokenizers disagree from input position {d}")
    t_runs = {r["beams"]: r for r in t["runs"]}
    checked = []
    for pr in p["runs"]:
        b = pr["beams"]
        tr = t_runs.get(b)
        if tr is None:
            problems.append(f"transformers has no run with beam {b}")
            continue
        for i, (a, c) in enumerate(zip(pr["ids"], tr["ids"])):
            d = first_diff(a, c)
            if d is not None:
                x = a[d] if d < len(a) else "end"
                y = c[d] if d < len(c) else "end"
                problems.append(
                    f"beam {b}, sentence {i}: output ids differ from position {d} "
                    f"(precis {x}, transformers {y}; {len(a)} vs {len(c)} ids)"
                )
        if len(pr["ids"]) != len(tr["ids"]):
            problems.append(f"beam {b}: {len(pr['ids'])} precis outputs, {len(tr['ids'])} transformers outputs")
        checked.append(f"beam {b}: {len(pr['ids'])} sentences x {max(map(len, pr['ids']))} ids")
    if problems:
        print("ids check FAILED: precis and transformers do not do the same work:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)
    print(f"ids check: precis == transformers ({n} inputs; " + "; ".join(checked) + ")")


def cmd_busy(_args) -> None:
    t0, i0 = machine_jiffies()
    time.sleep(1)
    t1, i1 = machine_jiffies()
    print(f"{((t1 - t0) - (i1 - i0)) / max(t1 - t0, 1) * (os.cpu_count() or 1):.2f}")


def cmd_report(args) -> None:
    engines = [
        ("precis", args.precis),
        ("transformers", args.transformers),
        ("ct2-fp32", args.ct2_fp32),
        ("ct2-int8", args.ct2_int8),
    ]
    data = {}
    for name, path in engines:
        if path:
            data[name] = json.load(open(path, encoding="utf-8"))
    busy = {n: b for (n, _), b in zip(engines, args.busy or []) if b}
    beams = sorted({r["beams"] for d in data.values() for r in d["runs"]}, reverse=True)

    def rate(name, b):
        for r in data.get(name, {}).get("runs", []):
            if r["beams"] == b:
                return r
        return None

    p = data["precis"]
    print(
        f"protocol: {p['sentences']} sentences of {p['sentences_file']}, batches of {p['batch']}, "
        f"exactly {p['tokens']} new tokens each, {p['threads']} threads"
    )
    print(
        f"tok/s = {p['tokens']} x sentences / wall seconds of generation (encoder + decoder; "
        "tokenization and one warm-up batch untimed)"
    )
    print()
    head = f"{'engine':<14}" + "".join(f"{'beam=' + str(b) + ' tok/s':>16}" for b in beams)
    head += f"{'cores busy':>14}{'peak RSS MB':>13}"
    print(head)
    for name, _ in engines:
        if name not in data:
            continue
        row = f"{name:<14}"
        cores = []
        for b in beams:
            r = rate(name, b)
            row += f"{r['tok_s']:>16.1f}" if r else f"{'-':>16}"
            cores.append(f"{r['cores_busy']:.2f}" if r and r.get("cores_busy") is not None else "?")
        rss = data[name].get("peak_rss_mb")
        row += f"{'/'.join(cores):>14}{(f'{rss:.0f}' if rss else '?'):>13}"
        print(row)
    print()
    for name, d in data.items():
        for r in d["runs"]:
            lo, hi = r.get("new_tokens_min"), r.get("new_tokens_max")
            if lo is not None and (lo != p["tokens"] or hi != p["tokens"]) and not (
                name.startswith("ct2") and lo >= p["tokens"] - 1
            ):
                print(f"note: {name} beam={r['beams']} made {lo}..{hi} new tokens, not {p['tokens']}")
        if busy.get(name) and float(busy[name]) >= 0.25:
            print(
                f"note: {float(busy[name]):.2f} of {os.cpu_count()} cores were busy with other work just "
                f"before the {name} run: its figures may be too low"
            )
        for r in d["runs"]:
            o = r.get("others_cores_busy")
            if o is not None and o >= 0.25:
                print(
                    f"note: other processes kept {o:.2f} cores busy during {name} beam={r['beams']}: "
                    "that figure is low (rerun on an idle machine)"
                )
        for r in d["runs"]:
            c = r.get("cores_busy")
            if c is not None and c < 0.8 * p["threads"]:
                print(f"note: {name} beam={r['beams']} kept {c:.2f} cores busy ({p['threads']} threads asked)")
    if "transformers" in data and p.get("input_ids") and data["transformers"].get("input_ids"):
        a, b = p["input_ids"], data["transformers"]["input_ids"]
        differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        if differ or len(a) != len(b):
            print(f"note: the timed runs' input ids differ between precis and transformers for sentences {differ[:10]}")
        else:
            print(f"input ids of the timed runs: precis == transformers for all {len(a)} sentences "
                  f"({sum(map(len, a)) / len(a):.1f} tokens on average)")
    if args.transformers_sample:
        # Informative: CTranslate2 is not held to transformers' ids (it has no
        # forced end token at the last position, and starts from a zero
        # embedding rather than the <pad> row), but on the same weights its
        # first tokens should agree.
        ts = {r["beams"]: r["ids"] for r in json.load(open(args.transformers_sample, encoding="utf-8"))["runs"]}
        for name in ["ct2-fp32", "ct2-int8"]:
            for r in data.get(name, {}).get("runs", []):
                ref = ts.get(r["beams"])
                if not ref or not r.get("ids_sample"):
                    continue
                n = min(len(ref), len(r["ids_sample"]))
                cut = p["tokens"] - 1
                same = sum(ref[i][1 : 1 + cut] == r["ids_sample"][i][:cut] for i in range(n))
                print(f"{name} beam={r['beams']}: first {cut} ids equal transformers' for {same} of {n} sample sentences")
    if "breakdown" in (rate("precis", beams[0]) or {}):
        for b in beams:
            r = rate("precis", b)
            bd = r["breakdown"]
            total = r["wall_s"]
            order = ["encoder", "decoder steps", "beam reorder", "search"]
            keys = [k for k in order if k in bd] + [k for k in bd if k not in order]
            parts = ", ".join(f"{k} {bd[k]:.2f} s ({100 * bd[k] / total:.0f}%)" for k in keys)
            print(f"precis beam={b} time: {parts}")
    ratios = {}
    for b in beams:
        pr = rate("precis", b)
        for other in ["transformers", "ct2-fp32", "ct2-int8"]:
            o = rate(other, b)
            if pr and o:
                ratios[f"beam={b} precis/{other}"] = pr["tok_s"] / o["tok_s"]
    report = {
        "protocol": {k: p[k] for k in ("sentences_file", "sentences", "batch", "tokens", "threads")},
        "engines": data,
        "busy_cores_before": busy,
        "ratios": ratios,
    }
    if args.out:
        write_json(args.out, report)
        print(f"report: {args.out}")
    for b in beams:
        for other in ["transformers", "ct2-int8"]:
            key = f"beam={b} precis/{other}"
            if key in ratios:
                print(f"ratio {key}={ratios[key]:.2f}")
    for b in beams:
        key = f"beam={b} precis/ct2-fp32"
        if key in ratios:
            print(f"ratio {key}={ratios[key]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("checkpoint", help="make the random opus-mt-en-ru-shaped checkpoint")
    c.add_argument("--out", required=True)
    c.add_argument("--flores", required=True, help="folder with eng_Latn.txt and rus_Cyrl.txt")
    c.add_argument("--seed", type=int, default=20240611)
    c.add_argument("--spm-vocab", type=int, default=8000, help="SentencePiece vocab asked (a soft limit)")
    c.add_argument("--force", action="store_true")

    def common(p, sample: bool):
        p.add_argument("--sentences", required=True)
        p.add_argument("--count", type=int, default=200)
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--beams", default="4,1")
        p.add_argument("--tokens", type=int, default=32)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", required=True)
        if sample:
            p.add_argument("--sample", type=int, default=0, help="only record the ids of the first N sentences")

    t = sub.add_parser("transformers", help="time transformers (or record ids with --sample)")
    t.add_argument("--model", required=True)
    common(t, True)

    cc = sub.add_parser("ct2-convert", help="convert the checkpoint for CTranslate2")
    cc.add_argument("--model", required=True)
    cc.add_argument("--out", required=True)
    cc.add_argument("--quantization", default="float32")
    cc.add_argument("--force", action="store_true")

    ct = sub.add_parser("ct2", help="time CTranslate2")
    ct.add_argument("--model", required=True, help="the converted model")
    ct.add_argument("--hf", required=True, help="the transformers checkpoint (its tokenizer)")
    ct.add_argument("--compute-type", default="float32")
    common(ct, False)

    k = sub.add_parser("check", help="precis ids == transformers ids, or exit 1")
    k.add_argument("--precis", required=True)
    k.add_argument("--transformers", required=True)

    sub.add_parser("busy", help="cores busy over one second")

    r = sub.add_parser("report", help="table and ratios")
    r.add_argument("--precis", required=True)
    r.add_argument("--transformers")
    r.add_argument("--ct2-fp32")
    r.add_argument("--ct2-int8")
    r.add_argument("--transformers-sample", help="transformers' ids on the sample (for the CTranslate2 line)")
    r.add_argument("--busy", nargs="*", help="busy cores before precis, transformers, ct2-fp32, ct2-int8")
    r.add_argument("--out")

    args = ap.parse_args()
    {
        "checkpoint": cmd_checkpoint,
        "transformers": cmd_transformers,
        "ct2-convert": cmd_ct2_convert,
        "ct2": cmd_ct2,
        "check": cmd_check,
        "busy": cmd_busy,
        "report": cmd_report,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
