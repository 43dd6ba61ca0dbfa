"""The bundled offline gene-knowledge table as a :class:`~scelmo.plugin.components.KnowledgeSource`."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

from scelmo.errors import IntegrityError
from scelmo.genes import GeneVocabulary
from scelmo.io import sha256_file
from scelmo.knowledge.cell_types import CellTypeMarkers, resolve_marker_sets
from scelmo.plugin import ComponentOptions, KnowledgeSource

DATA = Path(__file__).parent / "data"


class KnowledgeOptions(ComponentOptions):
    #: ``"compact"`` (default): name + GO terms + pathways, no labels or aliases -- what gets
    #: embedded (boilerplate lowers mean-pooled embedding quality). ``"full"``: a readable
    #: paragraph with symbol, aliases, gene type and labelled sections.
    style: Literal["compact", "full"] = "compact"


def _verify(name: str) -> Path:
    path = DATA / name
    manifest = json.loads((DATA / "MANIFEST.json").read_text(encoding="utf-8"))
    expected = manifest["files"][name]["sha256"]
    digest = sha256_file(path)
    if digest != expected:
        raise IntegrityError(
            f"The bundled gene-knowledge file {path} does not match MANIFEST.json "
            f"(sha256 {digest[:12]}... != {expected[:12]}...). Reinstall scelmo."
        )
    return path


def _rows(name: str) -> list[dict[str, str]]:
    with gzip.open(_verify(name), "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@lru_cache(maxsize=1)
def manifest() -> dict:
    """The table's manifest: sources, versions, dates, licences, checksums."""
    return json.loads((DATA / "MANIFEST.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def human_table() -> dict[str, dict[str, str]]:
    """Rows of ``human_genes.tsv.gz`` by symbol."""
    return {r["symbol"]: r for r in _rows("human_genes.tsv.gz")}


@lru_cache(maxsize=1)
def vocabulary() -> GeneVocabulary:
    """Symbols, aliases, Ensembl IDs (human and mouse) and mouse orthologs."""
    table = human_table()
    aliases = [(a, s) for s, r in table.items() for a in r["aliases"].split("|") if a]
    # An Ensembl ID listed for several genes (~1%) goes to the gene that lists it first
    # (its primary ID), then to protein-coding genes, named genes (not LOC...), and the
    # lowest Entrez ID: deterministic, and the usual choice of annotation pipelines.
    ranked = sorted(
        (pos, r["type"] != "protein-coding", s.startswith("LOC"), int(r["entrez"] or 0), e, s)
        for s, r in table.items()
        for pos, e in enumerate(x for x in r["ensembl"].split("|") if x and x != "-")
    )
    ensembl = [(e, s) for *_rank, e, s in ranked]
    mouse: list[tuple[str, str]] = []
    for r in _rows("mouse_genes.tsv.gz"):
        if r["human_symbol"] in table:
            mouse.append((r["mouse_symbol"], r["human_symbol"]))
            # ("-": the source's mark for "no Ensembl ID", not an ID)
            ensembl.extend((e, r["human_symbol"]) for e in r["mouse_ensembl"].split("|") if e and e != "-")
    # full names of protein-coding genes, for names that spell a gene out ("insulin-producing
    # cell"); among the Cell Ontology's 2,199 names and synonyms every match is a real mention
    full = [(r["name"], s) for s, r in table.items() if r["type"] == "protein-coding" and r["name"]]
    return GeneVocabulary(table, aliases=aliases, ensembl=ensembl, mouse=mouse, full_names=full)


@lru_cache(maxsize=1)
def cell_type_markers() -> tuple[CellTypeMarkers, ...]:
    """The curated marker sets of ``cell_type_markers.json.gz`` (human and mouse immune,
    lung, brain and liver cell types from pegasus; see NOTICE), markers as human symbols."""
    with gzip.open(_verify("cell_type_markers.json.gz"), "rt", encoding="utf-8") as fh:
        records = json.load(fh)["cell_types"]
    return tuple(resolve_marker_sets(records, vocabulary()))


@lru_cache(maxsize=1)
def cell_ontology_markers() -> tuple[CellTypeMarkers, ...]:
    """The Cell Ontology's cell types (``cell_ontology_markers.json.gz``; CC BY 4.0, see
    NOTICE), each under its name and under each synonym (one ``source``, its CL id), with
    the genes its definition names (none for most)."""
    with gzip.open(_verify("cell_ontology_markers.json.gz"), "rt", encoding="utf-8") as fh:
        records = json.load(fh)["cell_types"]
    expanded = [{**r, "name": name, "species": "human", "tissue": "cell ontology"}
                for r in records for name in [r["name"], *r.get("synonyms", [])]]
    return tuple(resolve_marker_sets(expanded, vocabulary()))


def _terms(row: dict[str, str], key: str) -> str:
    return row.get(key, "").strip()


def compact_text(row: dict[str, str]) -> str:
    """Name and knowledge terms only: the text that gets embedded."""
    parts = [row["name"]]
    parts += [t for t in (_terms(row, k) for k in ("bp", "mf", "cc", "pathways")) if t]
    return ". ".join(parts) + "."


def full_text(row: dict[str, str]) -> str:
    """A readable paragraph with labels (for display or as LLM context)."""
    head = f"{row['symbol']} ({row['name']})"
    aliases = [a for a in row["aliases"].split("|") if a]
    if aliases:
        head += " also known as " + ", ".join(aliases[:6])
    out = [head + f"; {row['type'].replace('-', ' ')} gene."]
    for key, label in (("bp", "Biological process"), ("mf", "Molecular function"),
                       ("cc", "Cellular component"), ("pathways", "Pathways")):
        if _terms(row, key):
            out.append(f"{label}: {_terms(row, key)}.")
    return " ".join(out)


class LocalGeneKnowledge(KnowledgeSource):
    """Offline gene descriptions from NCBI gene names, GO terms and WikiPathways."""

    name = "local"
    Options = KnowledgeOptions
    version: ClassVar[str] = "1"

    @property
    def model_id(self) -> str:
        built = manifest().get("built", "?")
        return f"local/gene-knowledge@{built}/{self.options.style}"

    def gene_texts(self, genes: Sequence[str]) -> dict[str, str]:
        table = human_table()
        fmt = compact_text if self.options.style == "compact" else full_text
        return {g: fmt(table[g]) for g in genes if g in table}

    def vocabulary(self) -> GeneVocabulary:
        return vocabulary()

    def phrases(self, genes: Sequence[str]) -> dict[str, list[str]]:
        """GO biological processes and pathways of each gene (what it does, not where it sits)."""
        table = human_table()
        out = {}
        for g in genes:
            row = table.get(g)
            if row is not None:
                out[g] = [t.strip() for key in ("bp", "pathways") for t in (row.get(key) or "").split(";") if t.strip()]
        return out

    def cell_type_markers(self) -> list[CellTypeMarkers]:
        return list(cell_type_markers())

    def cell_type_definition_markers(self) -> list[CellTypeMarkers]:
        return list(cell_ontology_markers())

    def provenance_record(self) -> dict[str, str | int | float]:
        out = super().provenance_record()
        m = manifest()
        out["table_built"] = str(m.get("built", ""))
        out["sources"] = "; ".join(
            f"{s.get('name')} {s.get('version', '')} ({s.get('date', '')})".strip() for s in m.get("sources", [])
        )
        return out
