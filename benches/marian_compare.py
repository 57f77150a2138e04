#!/usr/bin/env python3
"""The Python half of the encoder-decoder speed comparison (benches/compare-marian.sh).

Why it exists: precis's seq2seq backend is measured against the two engines a
user would otherwise run, Python transformers (torch, CPU) and CTranslate2,
under one fixed protocol, on the same checkpoint and the same input ids, for
both model families it runs: Marian translation and BART summarization. The
real weights cannot be downloaded here, so each checkpoint is a full-size,
randomly initialised model with the real one's exact config: speed depends
on the shapes, not on the values.

    --family marian   Helsinki-NLP/opus-mt-en-ru's config; SentencePiece
                      tokenizers trained on FLORES English / Russian; inputs
                      are the FLORES English sentences themselves
    --family bart     sshleifer/distilbart-cnn-12-6's config; a byte-level
                      BPE trained on FLORES English; inputs are consecutive
                      FLORES sentences joined into ~400-token articles
                      (`inputs`)
    --family nllb     facebook/nllb-200-distilled-600M's config (the
                      M2M100 architecture); NllbTokenizer on a SentencePiece
                      BPE trained on FLORES English / Hindi; inputs are the
                      FLORES English sentences, translated into Hindi
                      (hin_Deva forced first)

Subcommands (each prints what it did; `--help` on each lists its options):

    checkpoint   make the random checkpoint (hub layout, seeded) once
    inputs       write the BART inputs file (articles of ~400 tokens)
    transformers time transformers' generate(), or record ids on a sample
    ct2-convert  convert the checkpoint with ctranslate2's converter
    ct2          time CTranslate2's translate_batch()
    check        assert that precis and transformers produced the same ids
    busy         cores kept busy by the whole machine over one second
    report       the table and the ratio lines, from the engines' JSON files

The protocol (what `compare-marian.sh` passes): Marian, the first 200
sentences of FLORES-200 (eng_Latn), exactly 32 new tokens each; BART, 100
inputs of ~400 tokens, exactly 64 new tokens each; both in batches of 8,
beam 4 and greedy (min_new_tokens = max_new_tokens = N on top of the
checkpoint's generation_config.json), 2 threads. Each engine tokenizes every
batch before the clock starts (transformers and CTranslate2 with
transformers' tokenizer, precis with its own), does one untimed warm-up
batch per beam size, then times generation alone (encoder + decoder, every
batch one after the other); tokens/s = N x inputs / wall seconds, for every
engine.

Runs in the virtualenv with transformers 5.24.0, torch, sentencepiece,
tokenizers, safetensors and ctranslate2 4.8.5 (compare-marian.sh names it).
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
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

PROG = "marian_compare.py"
FORMAT = "precis marian bench checkpoint v1"
BART_FORMAT = "precis bart bench checkpoint v1"
NLLB_FORMAT = "precis nllb bench checkpoint v1"
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


# sshleifer/distilbart-cnn-12-6's config.json, written out by hand (no hub
# access here; checked against copies of it in fine-tuned repositories that
# keep its keys): BartConfig's arguments ...
BART_VOCAB_SIZE = 50264
DISTILBART_CNN_12_6 = dict(
    vocab_size=BART_VOCAB_SIZE,
    d_model=1024,
    encoder_layers=12,
    decoder_layers=6,
    encoder_attention_heads=16,
    decoder_attention_heads=16,
    encoder_ffn_dim=4096,
    decoder_ffn_dim=4096,
    activation_function="gelu",
    max_position_embeddings=1024,
    scale_embedding=False,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_eos_token_id=2,
    tie_word_embeddings=True,
    dropout=0.1,
    attention_dropout=0.0,
    activation_dropout=0.0,
    classifier_dropout=0.0,
    encoder_layerdrop=0.0,
    decoder_layerdrop=0.0,
    init_std=0.02,
    architectures=["BartForConditionalGeneration"],
)
# ... and the keys of its config.json BartConfig does not declare (legacy,
# kept as attributes and written back: CTranslate2's converter reads
# normalize_before and normalize_embedding). Its generation keys (num_beams,
# min_length, ...) live in generation_config.json here, as in its
# task_specific_params; so does its forced_bos_token_id 0 (transformers 5
# refuses to save a config.json holding it).
DISTILBART_EXTRA = dict(
    force_bos_token_to_be_generated=True,
    normalize_before=False,
    normalize_embedding=True,
    add_final_layer_norm=False,
    add_bias_logits=False,
    static_position_embeddings=False,
    extra_pos_embeddings=2,
    prefix=" ",
    task_specific_params={
        "summarization": dict(
            early_stopping=True, length_penalty=2.0, max_length=142, min_length=56, no_repeat_ngram_size=3,
            num_beams=4,
        )
    },
)
# Its generation settings (the generation_config.json transformers derives
# from that config.json).
DISTILBART_GENERATION = dict(
    bos_token_id=0,
    decoder_start_token_id=2,
    eos_token_id=2,
    forced_bos_token_id=0,
    forced_eos_token_id=2,
    pad_token_id=1,
    num_beams=4,
    length_penalty=2.0,
    no_repeat_ngram_size=3,
    min_length=56,
    max_length=142,
    early_stopping=True,
)
# facebook/nllb-200-distilled-600M's config.json, written out by hand (no
# hub access here): M2M100Config's arguments.
NLLB_600M = dict(
    vocab_size=256206,
    d_model=1024,
    encoder_layers=12,
    decoder_layers=12,
    encoder_attention_heads=16,
    decoder_attention_heads=16,
    encoder_ffn_dim=4096,
    decoder_ffn_dim=4096,
    activation_function="relu",
    max_position_embeddings=1024,
    scale_embedding=True,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    tie_word_embeddings=True,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    encoder_layerdrop=0,
    decoder_layerdrop=0,
    init_std=0.02,
    architectures=["M2M100ForConditionalGeneration"],
)
# Its generation_config.json.
NLLB_GENERATION = dict(bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, max_length=200, pad_token_id=1)
# The direction the NLLB protocol translates.
NLLB_SOURCE, NLLB_TARGET = "eng_Latn", "hin_Deva"
# RobertaTokenizer's special tokens: ids 0-3, then <mask> as the last id.
BART_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]


def family_of(model_dir: str) -> str:
    """`marian`, `bart` or `nllb`: config.json's model_type (`m2m_100` is NLLB's)."""
    try:
        model_type = json.load(open(Path(model_dir) / "config.json", encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as e:
        die(f"cannot read {model_dir}/config.json: {e}")
    family = {"marian": "marian", "bart": "bart", "m2m_100": "nllb"}.get(model_type)
    if family is None:
        die(f"{model_dir}: model_type {model_type!r} is not marian, bart or m2m_100")
    return family


def load_tokenizer(model_dir: str):
    """transformers' tokenizer of the checkpoint: MarianTokenizer; (BART)
    what AutoTokenizer gives (RobertaTokenizer, which BartTokenizer names);
    (NLLB) NllbTokenizer reading English (eng_Latn first, </s> last)."""
    family = family_of(model_dir)
    if family == "marian":
        from transformers import MarianTokenizer

        return MarianTokenizer.from_pretrained(model_dir)
    from transformers import AutoTokenizer

    if family == "nllb":
        return AutoTokenizer.from_pretrained(model_dir, src_lang=NLLB_SOURCE)
    return AutoTokenizer.from_pretrained(model_dir)


def forced_target(model_dir: str, tok) -> int | None:
    """The token forced first that the checkpoint's generation_config.json
    does not name: NLLB's target language code."""
    if family_of(model_dir) == "nllb":
        return tok.convert_tokens_to_ids(NLLB_TARGET)
    return None


def die(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def read_lines(path: str, count: int | None, what: str = "inputs") -> list:
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
        die(f"{path} has {len(lines)} {what}, fewer than the {count} asked")
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
    for name in ["transformers", "torch", "sentencepiece", "tokenizers", "safetensors", "ctranslate2", "numpy"]:
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
# The fixtures' SentencePiece training (Marian's settings: unigram, nmt_nfkc,
# default special ids, no hard vocabulary limit), shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from make_fixtures import train_spm  # noqa: E402


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
    out = Path(args.out)
    if (out / MARKER).exists() and not args.force:
        print(f"checkpoint {out} exists ({MARKER}); --force rebuilds it")
        return
    {"marian": checkpoint_marian, "bart": checkpoint_bart, "nllb": checkpoint_nllb}[args.family](args)


def checkpoint_marian(args) -> None:
    import random

    import numpy as np
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(args.out)
    flores = Path(args.flores)
    src_texts = read_lines(str(flores / "eng_Latn.txt"), None)
    tgt_texts = read_lines(str(flores / "rus_Cyrl.txt"), None)
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
        "family": "marian",
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


def train_byte_bpe(texts: list) -> tuple:
    """A byte-level BPE as BART's (GPT-2's), trained on `texts`: <s> <pad> </s>
    <unk> as ids 0-3, the 256 byte symbols, the merges' tokens; then filler
    entries up to BART_VOCAB_SIZE - 1 and <mask> as the last id. Returns the
    vocabulary, the merges and the number of trained entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BART_VOCAB_SIZE - 1,
        special_tokens=BART_SPECIAL,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    assert list(vocab)[:4] == BART_SPECIAL and list(vocab.values()) == list(range(len(vocab)))
    trained = len(vocab)
    n = 0
    while len(vocab) < BART_VOCAB_SIZE - 1:
        # Never produced by the merges (angle brackets and underscores do not
        # merge with letters here): ids the random model can still emit, as a
        # real 50k vocabulary has.
        vocab.setdefault(f"<filler_{n:05d}>", len(vocab))
        n += 1
    vocab["<mask>"] = BART_VOCAB_SIZE - 1
    assert len(vocab) == BART_VOCAB_SIZE and sorted(vocab.values()) == list(range(BART_VOCAB_SIZE))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges, trained


def checkpoint_bart(args) -> None:
    import random

    import numpy as np
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration, BartTokenizer, GenerationConfig

    out = Path(args.out)
    texts = read_lines(str(Path(args.flores) / "eng_Latn.txt"), None)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    # 1. Tokenizer: byte-level BPE trained on FLORES English, in the files a
    # BART hub repository has (vocab.json, merges.txt, and what
    # save_pretrained writes: tokenizer.json, tokenizer_config.json).
    vocab, merges, trained = train_byte_bpe(texts)
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    tok = BartTokenizer(vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt"), model_max_length=1024)
    tok.save_pretrained(str(tmp))
    config_path = tmp / "tokenizer_config.json"
    tok_config = json.load(open(config_path, encoding="utf-8"))
    tok_config["tokenizer_class"] = "BartTokenizer"  # as hub BART repositories name it
    write_json(str(config_path), tok_config)
    tok = AutoTokenizer.from_pretrained(str(tmp))
    assert len(tok) == BART_VOCAB_SIZE, len(tok)
    assert tok.convert_tokens_to_ids(BART_SPECIAL + ["<mask>"]) == [0, 1, 2, 3, BART_VOCAB_SIZE - 1]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    # vocab.json + merges.txt alone tokenize as the whole directory does.
    with tempfile.TemporaryDirectory() as alone:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(tmp / name, Path(alone) / name)
        alone_tok = BartTokenizer.from_pretrained(alone)
        sample = texts[:50] + [" ".join(texts[50:70])]
        assert [alone_tok(t)["input_ids"] for t in sample] == [tok(t)["input_ids"] for t in sample]

    # 2. The model: distilbart-cnn-12-6's config, random weights (init_std
    # 0.02), tied embeddings; its generation settings in generation_config.json.
    config = BartConfig(**DISTILBART_CNN_12_6)
    for key, value in DISTILBART_EXTRA.items():
        setattr(config, key, value)
    torch.manual_seed(args.seed)
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**DISTILBART_GENERATION)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for p in tmp.iterdir():
        p.chmod(0o644)

    lengths = [len(ids) for ids in tok(texts)["input_ids"]]
    marker = {
        "format": BART_FORMAT,
        "family": "bart",
        "seed": args.seed,
        "versions": versions(),
        "config": "sshleifer/distilbart-cnn-12-6 (written out by hand), random weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "bpe_trained_entries": trained,
        "bpe_merges": len(merges),
        "vocab_size": len(vocab),
        "flores_sentence_tokens": {
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
        f"({trained} byte-level BPE entries + fillers + <mask>), seed {args.seed}; FLORES sentences "
        f"{marker['flores_sentence_tokens']['mean']:.1f} tokens on average (<s> and </s> included)"
    )


def checkpoint_nllb(args) -> None:
    import random

    import numpy as np
    import torch
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from make_fixtures import make_nllb_tokenizer, train_spm

    out = Path(args.out)
    flores = Path(args.flores)
    english = read_lines(str(flores / "eng_Latn.txt"), None)
    hindi = read_lines(str(flores / "hin_Deva.txt"), None)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    # 1. Tokenizer: a SentencePiece BPE trained on FLORES English and Hindi,
    # in the files facebook/nllb-200-* has (the one scripts/make_fixtures.py
    # builds for its NLLB fixture): the model's vocabulary is NLLB's 256206,
    # the tokenizer's the trained pieces and the 202 codes.
    proto = train_spm(english + hindi, args.spm_vocab, "bpe")
    tok, tokenizer_size = make_nllb_tokenizer(tmp, proto)
    assert tokenizer_size < NLLB_600M["vocab_size"], tokenizer_size

    # 2. The model: nllb-200-distilled-600M's config, random weights
    # (init_std 0.02), its generation_config.json.
    config = M2M100Config(**NLLB_600M)
    torch.manual_seed(args.seed)
    model = M2M100ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**NLLB_GENERATION)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for p in tmp.iterdir():
        p.chmod(0o644)

    tok = load_tokenizer(str(tmp))
    lengths = [len(ids) for ids in tok(english)["input_ids"]]
    marker = {
        "format": NLLB_FORMAT,
        "family": "nllb",
        "seed": args.seed,
        "versions": versions(),
        "config": "facebook/nllb-200-distilled-600M (written out by hand), random weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_size": tokenizer_size,
        "flores_sentence_tokens": {
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
        f"checkpoint {out}: {marker['parameters'] / 1e6:.1f} M parameters, vocabulary "
        f"{NLLB_600M['vocab_size']} (tokenizer {tokenizer_size}), seed {args.seed}; FLORES sentences "
        f"{marker['flores_sentence_tokens']['mean']:.1f} tokens on average ({NLLB_SOURCE} and </s> included)"
    )


# ---------------------------------------------------------------------------
# inputs (BART)
# ---------------------------------------------------------------------------
def cmd_inputs(args) -> None:
    """Input i: the FLORES sentences from number i x stride on (wrapping past
    the last one to the first), joined with spaces, until the text has at
    least --min-tokens tokens (with the checkpoint's tokenizer, <s> and </s>
    included), without passing --max-tokens."""
    tok = load_tokenizer(args.model)
    sentences = read_lines(args.sentences, None, "sentences")
    if not sentences:
        die(f"{args.sentences} has no sentences")
    limit = args.max_tokens
    inputs, lengths = [], []
    for i in range(args.count):
        at = i * args.stride
        parts, n = [], 0
        while n < args.min_tokens and len(parts) < len(sentences):
            candidate = " ".join(parts + [sentences[(at + len(parts)) % len(sentences)]])
            m = len(tok(candidate)["input_ids"])
            if m > limit and parts:
                break
            if m > limit:
                die(f"sentence {at % len(sentences)} alone has {m} tokens, over --max-tokens {limit}")
            parts.append(sentences[(at + len(parts)) % len(sentences)])
            n = m
        inputs.append(" ".join(parts))
        lengths.append(n)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in inputs))
    print(
        f"inputs {args.out}: {len(inputs)} of {args.sentences} (consecutive sentences from every "
        f"{args.stride}th on, joined until >= {args.min_tokens} tokens), {sum(lengths) / len(lengths):.1f} "
        f"tokens on average ({min(lengths)}..{max(lengths)}, <s> and </s> included)"
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
    from transformers import BartForConditionalGeneration, M2M100ForConditionalGeneration, MarianMTModel
    from transformers.utils import logging as hf_logging

    # generate() warns on every call that max_new_tokens wins over the
    # checkpoint's max_length, which is the point.
    hf_logging.set_verbosity_error()
    beams = parse_beams(args.beams)
    count = args.sample if args.sample else args.count
    inputs = read_lines(args.inputs, count)
    family = family_of(args.model)
    load_start = time.perf_counter()
    tok = load_tokenizer(args.model)
    classes = {"marian": MarianMTModel, "bart": BartForConditionalGeneration, "nllb": M2M100ForConditionalGeneration}
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = classes[family].from_pretrained(args.model, dtype=dtype).to(args.device)
    model.eval()
    load_s = time.perf_counter() - load_start
    encoded = [tok(b, padding=True, return_tensors="pt").to(args.device) for b in batches_of(inputs, args.batch)]

    def sync():
        if args.device != "cpu":
            torch.cuda.synchronize()
    input_ids = [tok(s)["input_ids"] for s in inputs]
    # On top of the checkpoint's generation_config.json (BART: its forced
    # <s> first and </s> at the last position, no_repeat_ngram_size 3,
    # length_penalty 2, min_length 56 made moot by min_new_tokens).
    kwargs = dict(min_new_tokens=args.tokens, max_new_tokens=args.tokens)
    # NLLB: the target language forced first, as a translation asks it.
    target = forced_target(args.model, tok)
    if target is not None:
        kwargs["forced_bos_token_id"] = target
    report = {
        "engine": "transformers",
        "family": family,
        "versions": versions(),
        "model": args.model,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "generation_config": model.generation_config.to_diff_dict(),
        "inputs_file": args.inputs,
        "inputs": len(inputs),
        "batch": args.batch,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": args.dtype,
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
                sync()
                if args.device != "cpu":
                    torch.cuda.reset_peak_memory_stats()
                with Clock() as clock:
                    outs = [model.generate(**e, num_beams=b, **kwargs) for e in encoded]
                    sync()
                if args.device != "cpu":
                    run["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
                wall = clock.wall
                new = [o.shape[1] - 1 for o in outs]
                run.update(
                    wall_s=wall,
                    tok_s=args.tokens * len(inputs) / wall,
                    cores_busy=clock.cores,
                    others_cores_busy=clock.others,
                    new_tokens_min=min(new),
                    new_tokens_max=max(new),
                )
                print(
                    f"transformers beam={b}: {run['tok_s']:.1f} tok/s ({len(inputs)} inputs x "
                    f"{args.tokens} tokens in {wall:.2f} s, {run['cores_busy']:.2f} cores busy)",
                    flush=True,
                )
                warn_others(f"transformers beam={b}", clock)
            report["runs"].append(run)
    report["peak_rss_mb"] = peak_rss_mb()
    write_json(args.out, report)


# ---------------------------------------------------------------------------
# Recipes: a full-size checkpoint carried without its weights
# ---------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", MARKER)


def cmd_recipe(args) -> None:
    """The checkpoint's files but its weights (config, generation settings,
    tokenizer), and its first --count inputs as inputs.txt: a few MB that
    `weights` turns back into a checkpoint of the same shape elsewhere."""
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in sorted(Path(args.model).iterdir()):
        if p.is_file() and p.name not in WEIGHT_FILES:
            shutil.copy(p, out / p.name)
    lines = read_lines(args.inputs, args.count)
    (out / "inputs.txt").write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"recipe {out}: {len(lines)} inputs, {size / 2**20:.1f} MiB")


def cmd_weights(args) -> None:
    """The recipe's checkpoint with random weights (init_std of its config,
    seeded; Marian's <pad> embedding row zero, as the real one's), saved as
    model.safetensors beside the recipe's files."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, GenerationConfig

    recipe, out = Path(args.recipe), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(recipe, out)
    (out / "inputs.txt").unlink(missing_ok=True)
    config = AutoConfig.from_pretrained(str(recipe))
    torch.manual_seed(args.seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    if config.model_type == "marian":
        with torch.no_grad():
            model.get_input_embeddings().weight[config.pad_token_id].zero_()
    if (recipe / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(recipe))
    model.save_pretrained(str(out), safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"checkpoint {out}: {config.model_type}, {params / 1e6:.1f} M parameters, random (seed {args.seed})")


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
    from transformers import GenerationConfig

    beams = parse_beams(args.beams)
    inputs = read_lines(args.inputs, args.count)
    family = family_of(args.hf)
    tok = load_tokenizer(args.hf)
    gen = GenerationConfig.from_pretrained(args.hf)
    # The same source pieces transformers feeds its model (special tokens
    # included: Marian's </s>, BART's <s> and </s>; the converted models add
    # none of their own).
    source = [tok.convert_ids_to_tokens(tok(s)["input_ids"]) for s in inputs]
    batches = batches_of(source, args.batch)
    # transformers' forced first token (BART's <s> after the </s> start
    # token) is a one-token target prefix here: CTranslate2 has no forced BOS;
    # the prefix counts in max_decoding_length and comes back in the result.
    prefix = None
    forced = forced_target(args.hf, tok) or gen.forced_bos_token_id
    if forced is not None:
        prefix = [tok.convert_ids_to_tokens(forced)]
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
    # The checkpoint's search settings CTranslate2 has (BART: 3 and 2.0;
    # Marian: neither, so its defaults 0 and 1, as before).
    if gen.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = gen.no_repeat_ngram_size
    if gen.length_penalty is not None and gen.length_penalty != 1.0:
        kwargs["length_penalty"] = gen.length_penalty

    def translate(batch, beam_size):
        target_prefix = None if prefix is None else [prefix] * len(batch)
        return translator.translate_batch(batch, target_prefix, beam_size=beam_size, **kwargs)

    report = {
        "engine": f"ctranslate2-{args.compute_type}",
        "family": family,
        "versions": versions(),
        "model": args.model,
        "compute_type": args.compute_type,
        "options": {**kwargs, "target_prefix": prefix},
        "inputs_file": args.inputs,
        "inputs": len(inputs),
        "batch": args.batch,
        "threads": args.threads,
        "tokens": args.tokens,
        "load_s": load_s,
        "runs": [],
    }
    vocab = tok.get_vocab()
    for b in beams:
        translate(batches[0], b)  # warm-up, untimed
        with Clock() as clock:
            results = [translate(batch, b) for batch in batches]
        wall = clock.wall
        hyps = [r.hypotheses[0] for rs in results for r in rs]
        lengths = [len(h) for h in hyps]
        run = {
            "beams": b,
            "wall_s": wall,
            "tok_s": args.tokens * len(inputs) / wall,
            "cores_busy": clock.cores,
            "others_cores_busy": clock.others,
            # Returned tokens (the target prefix included), end token excluded: N (or
            # N - 1 when the last step chose </s>).
            "new_tokens_min": min(lengths),
            "new_tokens_max": max(lengths),
            "ids_sample": [[vocab.get(t, -1) for t in h] for h in hyps[: args.batch]],
        }
        report["runs"].append(run)
        print(
            f"{report['engine']} beam={b}: {run['tok_s']:.1f} tok/s ({len(inputs)} inputs x "
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
            problems.append(f"input {i}: the tokenizers disagree from input position {d}")
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
                    f"beam {b}, input {i}: output ids differ from position {d} "
                    f"(precis {x}, transformers {y}; {len(a)} vs {len(c)} ids)"
                )
        if len(pr["ids"]) != len(tr["ids"]):
            problems.append(f"beam {b}: {len(pr['ids'])} precis outputs, {len(tr['ids'])} transformers outputs")
        checked.append(f"beam {b}: {len(pr['ids'])} inputs x {max(map(len, pr['ids']))} ids")
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


def cmd_ct2_agreement(args) -> None:
    """CTranslate2 int8's teacher-forced top-1 agreement with CTranslate2
    fp32, on the inputs and targets of a precis agreement file (the seq2seq
    bench's PRECIS_BENCH_AGREEMENT, or tests/int8_agreement.rs's
    PRECIS_AGREEMENT_OUT): for every position j of every target, each
    compute type's greedy next token after the target's first j tokens
    (given as a target prefix, so both read the same prefixes precis read);
    the share of positions where the two agree, beside precis's."""
    import ctranslate2

    data = json.load(open(args.ids, encoding="utf-8"))

    # The tokens of the ids, by the converted model's own vocabularies (a
    # token's index is its transformers id).
    def vocabulary(side):
        for name in (f"{side}_vocabulary.json", "shared_vocabulary.json"):
            path = Path(args.fp32) / name
            if path.exists():
                return json.load(open(path, encoding="utf-8"))
        die(f"{args.fp32} has no {side}_vocabulary.json or shared_vocabulary.json")

    src_vocab, tgt_vocab = vocabulary("source"), vocabulary("target")
    source = [[src_vocab[i] for i in ids] for ids in data["input_ids"]]
    targets = [[tgt_vocab[i] for i in ids] for ids in data["targets"]]

    def top1(model_dir, compute_type):
        translator = ctranslate2.Translator(
            model_dir, device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=args.threads
        )
        out = [[] for _ in source]
        for j in range(max(map(len, targets), default=0)):
            rows = [i for i, t in enumerate(targets) if len(t) > j]
            for chunk in batches_of(rows, args.batch):
                results = translator.translate_batch(
                    [source[i] for i in chunk],
                    [targets[i][:j] for i in chunk] if j else None,
                    beam_size=1,
                    max_decoding_length=j + 1,
                    return_end_token=True,
                )
                for i, r in zip(chunk, results):
                    h = r.hypotheses[0]
                    out[i].append(h[j] if len(h) > j else None)
        return out

    a, b = top1(args.fp32, "float32"), top1(args.int8, "int8")
    # Each distinct (input, target prefix) once, as precis counts
    # (`precis_backend::seq2seq::agreement`): outputs of one input share
    # their first tokens.
    seen, same, total = set(), 0, 0
    for src, tgt, ra, rb in zip(data["input_ids"], data["targets"], a, b):
        for j, (x, y) in enumerate(zip(ra, rb)):
            key = (tuple(src), tuple(tgt[:j]))
            if key not in seen:
                seen.add(key)
                total += 1
                same += x == y
    share = same / max(total, 1)
    mine = data.get("agreement")
    print(f"agreement ct2-int8/ct2-fp32={share:.4} ({same} of {total} teacher-forced positions, {len(source)} inputs)")
    if mine is not None:
        print(f"agreement precis-int8/precis-f32={mine:.4} ({data['same']} of {data['total']})")
        print(f"agreement precis-minus-ct2={mine - share:+.4} (at least 0: precis int8 keeps as close to its f32 as CTranslate2 int8 to its fp32)")
    if args.out:
        write_json(args.out, {"precis": mine, "ct2": share, "same": same, "total": total, "inputs": len(source)})


def cmd_report(args) -> None:
    engines = [
        ("precis", args.precis),
        ("precis-int8", args.precis_int8),
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
        f"protocol: {p.get('family', 'marian')}, {p['inputs']} inputs of {p['inputs_file']}, batches of "
        f"{p['batch']}, exactly {p['tokens']} new tokens each, {p['threads']} threads"
    )
    print(
        f"tok/s = {p['tokens']} x inputs / wall seconds of generation (encoder + decoder; "
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
            print(f"note: the timed runs' input ids differ between precis and transformers for inputs {differ[:10]}")
        else:
            print(f"input ids of the timed runs: precis == transformers for all {len(a)} inputs "
                  f"({sum(map(len, a)) / len(a):.1f} tokens on average)")
    if args.transformers_sample:
        # Informative: CTranslate2 is not held to transformers' ids (it has no
        # forced end token at the last position; for Marian it starts from a
        # zero embedding rather than the <pad> row), but on the same weights
        # its first tokens should agree (BART: the forced <s>, which
        # CTranslate2 gets as a target prefix, is the first of them).
        ts = {r["beams"]: r["ids"] for r in json.load(open(args.transformers_sample, encoding="utf-8"))["runs"]}
        for name in ["ct2-fp32", "ct2-int8"]:
            for r in data.get(name, {}).get("runs", []):
                ref = ts.get(r["beams"])
                if not ref or not r.get("ids_sample"):
                    continue
                n = min(len(ref), len(r["ids_sample"]))
                cut = p["tokens"] - 1
                same = sum(ref[i][1 : 1 + cut] == r["ids_sample"][i][:cut] for i in range(n))
                # Beam search: transformers ranks the beams on their last
                # free token, CTranslate2 on one more, so ends may differ.
                common = [first_diff(ref[i][1 : 1 + cut], r["ids_sample"][i][:cut]) for i in range(n)]
                common = [cut if c is None else c for c in common]
                print(
                    f"{name} beam={r['beams']}: first {cut} ids equal transformers' for {same} of {n} sample "
                    f"inputs (equal from the start: {min(common)}..{max(common)} ids)"
                )
    for mine in ["precis", "precis-int8"]:
        if "breakdown" not in (rate(mine, beams[0]) or {}):
            continue
        for b in beams:
            r = rate(mine, b)
            bd = r["breakdown"]
            total = r["wall_s"]
            order = ["encoder", "decoder steps", "beam reorder", "search"]
            keys = [k for k in order if k in bd] + [k for k in bd if k not in order]
            parts = ", ".join(f"{k} {bd[k]:.2f} s ({100 * bd[k] / total:.0f}%)" for k in keys)
            print(f"{mine} beam={b} time: {parts}")
    ratios = {}
    for b in beams:
        for mine in ["precis", "precis-int8"]:
            pr = rate(mine, b)
            for other in ["transformers", "ct2-fp32", "ct2-int8"]:
                o = rate(other, b)
                if pr and o:
                    ratios[f"beam={b} {mine}/{other}"] = pr["tok_s"] / o["tok_s"]
    if "precis-int8" in data and "ct2-int8" in data:
        mine, theirs = data["precis-int8"].get("peak_rss_mb"), data["ct2-int8"].get("peak_rss_mb")
        if mine and theirs:
            ratios["peak RSS precis-int8/ct2-int8"] = mine / theirs
    report = {
        "protocol": {"family": p.get("family", "marian"), **{k: p[k] for k in ("inputs_file", "inputs", "batch", "tokens", "threads")}},
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
    for b in beams:
        key = f"beam={b} precis-int8/ct2-int8"
        if key in ratios:
            print(f"ratio {key}={ratios[key]:.2f}")
    key = "peak RSS precis-int8/ct2-int8"
    if key in ratios:
        print(f"ratio {key}={ratios[key]:.2f} (at most 1: precis int8 holds no more memory)")


def main() -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("checkpoint", help="make the random opus-mt-en-ru-, distilbart-cnn-12-6- or nllb-200-distilled-600M-shaped checkpoint")
    c.add_argument("--family", choices=["marian", "bart", "nllb"], default="marian")
    c.add_argument("--out", required=True)
    c.add_argument("--flores", required=True,
                   help="folder with eng_Latn.txt (and, for marian, rus_Cyrl.txt)")
    c.add_argument("--seed", type=int, default=20240611)
    c.add_argument("--spm-vocab", type=int, default=8000,
                   help="marian, nllb: SentencePiece vocab asked (a soft limit)")
    c.add_argument("--force", action="store_true")

    i = sub.add_parser("inputs", help="write the BART inputs: consecutive sentences joined to ~400 tokens")
    i.add_argument("--model", required=True, help="the checkpoint (its tokenizer counts the tokens)")
    i.add_argument("--sentences", required=True, help="FLORES English sentences, one a line")
    i.add_argument("--count", type=int, default=100)
    i.add_argument("--min-tokens", type=int, default=380, help="stop adding sentences at this many tokens")
    i.add_argument("--max-tokens", type=int, default=1000, help="never more tokens than this (model: 1024)")
    i.add_argument("--stride", type=int, default=5, help="input i starts at sentence i x stride")
    i.add_argument("--out", required=True)

    def common(p, sample: bool):
        p.add_argument("--inputs", "--sentences", dest="inputs", required=True, help="inputs, one a line")
        p.add_argument("--count", type=int, default=200)
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--beams", default="4,1")
        p.add_argument("--tokens", type=int, default=32)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", required=True)
        if sample:
            p.add_argument("--sample", type=int, default=0, help="only record the ids of the first N inputs")

    t = sub.add_parser("transformers", help="time transformers (or record ids with --sample)")
    t.add_argument("--model", required=True)
    t.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N")
    t.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])

    rc = sub.add_parser("recipe", help="a checkpoint without its weights, and its first inputs: what scripts/gpu-check.sh carries")
    rc.add_argument("--model", required=True)
    rc.add_argument("--inputs", required=True)
    rc.add_argument("--count", type=int, required=True)
    rc.add_argument("--out", required=True)

    w = sub.add_parser("weights", help="a recipe's checkpoint with random weights of its config (made where it runs)")
    w.add_argument("--recipe", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--seed", type=int, default=20240611)
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

    g = sub.add_parser("ct2-agreement", help="CTranslate2 int8's teacher-forced top-1 agreement with its fp32")
    g.add_argument("--ids", required=True, help="a precis agreement file: input_ids, targets, agreement")
    g.add_argument("--fp32", required=True, help="the float32 conversion")
    g.add_argument("--int8", required=True, help="the int8 conversion")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--out")

    r = sub.add_parser("report", help="table and ratios")
    r.add_argument("--precis", required=True)
    r.add_argument("--precis-int8")
    r.add_argument("--transformers")
    r.add_argument("--ct2-fp32")
    r.add_argument("--ct2-int8")
    r.add_argument("--transformers-sample", help="transformers' ids on the sample (for the CTranslate2 line)")
    r.add_argument("--busy", nargs="*", help="busy cores before precis, precis-int8, transformers, ct2-fp32, ct2-int8")
    r.add_argument("--out")

    args = ap.parse_args()
    {
        "checkpoint": cmd_checkpoint,
        "inputs": cmd_inputs,
        "transformers": cmd_transformers,
        "recipe": cmd_recipe,
        "weights": cmd_weights,
        "ct2-convert": cmd_ct2_convert,
        "ct2": cmd_ct2,
        "ct2-agreement": cmd_ct2_agreement,
        "check": cmd_check,
        "busy": cmd_busy,
        "report": cmd_report,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
