"""Maintainer tool: build ``plugins/scelmo_local/data/cell_type_markers.json.gz``.

The table is the curated cell-type marker sets that the pegasus package (Broad
Institute, BSD 3-Clause) ships in its wheel, read without installing pegasus::

    pip download --no-deps --only-binary=:all: pegasuspy==1.10.2 -d wheels
    python scripts/build_cell_markers.py wheels/pegasuspy-1.10.2-*.whl

Each record keeps the source's cell-type name, its parent type (the source's hierarchy),
species, tissue and the *positive* marker genes as the source spells them (mouse symbols
for mouse sets); weights and negative markers are not kept. The script prints the new
SHA-256 to enter in ``data/MANIFEST.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from scelmo.io import atomic_path, sha256_file

WHEEL = "pegasuspy-1.10.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "76cb096a198aeb2a8cfd07970e7c46c313bbc894a48c7194902428adbc7a7408"
MEMBER = re.compile(r"^pegasus/annotate_cluster/(human|mouse)_(\w+)_cell_markers\.json$")
OUT = Path(__file__).resolve().parents[1] / "plugins" / "scelmo_local" / "data" / "cell_type_markers.json.gz"


def _records(doc: dict, species: str, tissue: str, parent: str | None = None) -> list[dict]:
    out = []
    for cell in doc["cell_types"]:
        genes = [g[:-1] for m in cell["markers"] for g in m["genes"] if g.endswith("+")]
        out.append({"name": cell["name"], "parent": parent, "species": species, "tissue": tissue,
                    "markers": list(dict.fromkeys(genes))})
        if cell.get("subtypes"):
            out += _records(cell["subtypes"], species, tissue, cell["name"])
    return out


def check_wheel(wheel: Path, name: str, sha256: str) -> None:
    """Stop unless ``wheel`` is the pinned file."""
    digest = sha256_file(wheel)
    if digest != sha256:
        raise SystemExit(f"{wheel} is not the pinned {name} (sha256 {digest})")


def write_json_gz(doc: Any, out: Path) -> str:
    """``doc`` as compact, reproducible gzipped JSON, written atomically; its SHA-256."""
    raw = json.dumps(doc, indent=None, separators=(",", ":"), sort_keys=True).encode()
    with atomic_path(out) as tmp:
        tmp.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    return sha256_file(out)


def build(wheel: Path, out: Path = OUT) -> str:
    check_wheel(wheel, WHEEL, WHEEL_SHA256)
    records = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            m = MEMBER.match(name)
            if m:
                records += _records(json.loads(zf.read(name)), m.group(1), m.group(2))
    doc = {"source": f"pegasuspy 1.10.2 ({WHEEL}, sha256 {WHEEL_SHA256}), pegasus/annotate_cluster/*.json",
           "licence": "BSD 3-Clause, Copyright (c) 2018, Broad Institute (see NOTICE)",
           "cell_types": records}
    return write_json_gz(doc, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    sha = build(a.wheel, a.out)
    print(f"{a.out}: {a.out.stat().st_size} bytes, sha256 {sha}")


if __name__ == "__main__":
    main()
