"""Maintainer tool: rebuild the shipped MiniLM vectors of every protein-coding gene.

``python -m scelmo_local.build_vectors --cache vectors.sqlite`` embeds each gene's compact
text exactly, encodes the table with :func:`scelmo_local.precomputed.write` and prints
the new SHA-256 to pin in :mod:`scelmo_local.precomputed`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scelmo.io import sha256_file
from scelmo.llm.cache import Cache

from .embedder import DEFAULT_MODEL, MODELS, LocalMiniLM
from .knowledge import compact_text, human_table, manifest
from .precomputed import DATA, FILE, STEP, write


def build(out: Path, *, cache_path: Path, step: float = STEP) -> dict:
    """Embed every protein-coding gene's compact text exactly (through ``cache_path``) and write ``out``."""

    table = human_table()
    texts = sorted({compact_text(r) for r in table.values() if r["type"] == "protein-coding"})
    emb = LocalMiniLM(precomputed=False)
    with Cache(cache_path) as cache:
        vectors = emb.embed(texts, cache=cache, progress=True, desc="exact vectors")
    meta = {
        "model": DEFAULT_MODEL, "model_sha256": MODELS[DEFAULT_MODEL][1], "tokenizer_sha256": MODELS[DEFAULT_MODEL][3],
        "max_length": emb.options.max_length, "knowledge_built": manifest().get("built", ""),
        "texts": "compact_text of every protein-coding gene of human_genes.tsv.gz",
    }
    return write(out, texts, vectors, meta, step)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DATA / FILE)
    p.add_argument("--cache", type=Path, required=True, help="SQLite cache for the exact vectors (reused across runs)")
    p.add_argument("--step", type=float, default=STEP)
    a = p.parse_args(argv)
    meta = build(a.out, cache_path=a.cache, step=a.step)
    print(json.dumps(meta, indent=1))
    print(f"sha256 {sha256_file(a.out)}  ({a.out.stat().st_size / 1e6:.2f} MB)  -> update SHA256 in scelmo_local/precomputed.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
