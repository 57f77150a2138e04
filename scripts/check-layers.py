#!/usr/bin/env python3
"""Checks that precis's layers import only downward.

The workspace's crate graph is the architecture (see the root Cargo.toml):

    precis (src/http, src/cli)  ->  precis-service  ->  precis-core  ->  precis-backend

The compiler already refuses an import of a crate that is not a dependency,
so this check guards what it cannot see:

- a dependency edge that points up or sideways (a lower crate depending on a
  higher one, in any section of its Cargo.toml);
- a transport crate (axum, clap, tower-http, ...) below the binary, or candle
  outside the backend (normal dependencies; the root's tests may use candle
  to compare tensors);
- inside the binary, the HTTP layer reaching into the CLI (the CLI is the
  composition root and may use the HTTP layer, not the other way round).

Run from anywhere: `python3 scripts/check-layers.py`. Exits 1 and names each
violation; prints the graph when all is well.
"""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Each member's layer, lowest first. A crate may depend only on lower layers.
LAYERS = ["precis-backend", "precis-core", "precis-service", "precis"]

# External crates only the binary may use: transports and their plumbing.
TRANSPORT_ONLY = {
    "axum",
    "clap",
    "hyper",
    "hyper-util",
    "tower",
    "tower-http",
    "tracing-subscriber",
    "metrics-exporter-prometheus",
    "mimalloc",
    "anyhow",
}
# External crates only the backend may use (as normal dependencies).
BACKEND_ONLY = {"candle-core", "candle-nn", "candle-transformers"}


def main() -> int:
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    members = {p["name"]: p for p in metadata["packages"]}
    problems = []
    unknown = sorted(set(members) - set(LAYERS))
    if unknown:
        problems.append(f"workspace members without a layer: {', '.join(unknown)} (add them to LAYERS)")
    edges = []
    for name in LAYERS:
        package = members.get(name)
        if package is None:
            problems.append(f"layer {name} is not a workspace member")
            continue
        rank = LAYERS.index(name)
        for dep in package["dependencies"]:
            dep_name, kind = dep["name"], dep["kind"] or "normal"
            if dep_name in LAYERS:
                edges.append((name, dep_name, kind))
                if LAYERS.index(dep_name) >= rank:
                    problems.append(f"{name} depends on {dep_name} ({kind}): a layer may depend only on layers below it")
            elif name != "precis" and dep_name in TRANSPORT_ONLY:
                problems.append(f"{name} depends on {dep_name} ({kind}): transports belong to the precis binary")
            elif name != "precis-backend" and dep_name in BACKEND_ONLY and kind == "normal":
                problems.append(f"{name} depends on {dep_name}: only precis-backend knows candle")

    # Inside the binary: src/http must not use src/cli.
    for path in sorted((ROOT / "src" / "http").rglob("*.rs")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bcrate::cli\b|\bsuper::super::cli\b", line):
                rel = path.relative_to(ROOT)
                problems.append(f"{rel}:{number}: the HTTP layer uses the CLI: {line.strip()}")

    if problems:
        for p in problems:
            print(f"layer check: {p}", file=sys.stderr)
        return 1
    for name, dep, kind in edges:
        suffix = "" if kind == "normal" else f" ({kind})"
        print(f"{name} -> {dep}{suffix}")
    print("layer check: every edge points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
