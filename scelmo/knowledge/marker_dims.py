"""Cell-type marker dimensions: gene knowledge of *which cells* express a gene, beside the text vectors.

The text vectors place genes of one function close together, also when they mark different
cell types: the islet hormones GCG, INS, SST and PPY are as close as the markers of one type
(docs/benchmarks.md, "Why the knowledge hurts on pancreas"), and so are the cells that
express them. These dimensions add, for each known cell type (a curated marker set or a Cell
Ontology definition that names genes, :mod:`scelmo.knowledge.cell_types`), one dimension in
which the genes it marks have ``weight / sqrt(n)`` (``n``: the types the gene marks), so
markers of different types are orthogonal there. Opt-in (``aggregate.cell_type_markers``, a
weight; 0: off); measured in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from scelmo.conditioning import Conditioning
from scelmo.genes import GeneEmbeddings
from scelmo.knowledge.cell_types import CellTypeMarkers

__all__ = ["cell_type_matrix", "marked_types", "with_cell_type_dims"]


def marked_types(known: Iterable[CellTypeMarkers]) -> dict[str, list[str]]:
    """``{symbol: [cell type, ...]}``: the types whose markers name each gene, in the order the
    knowledge lists them (one name per type, case aside)."""
    marks: dict[str, list[str]] = {}
    for k in known:
        for g in k.markers:
            names = marks.setdefault(g, [])
            if k.name.lower() not in (n.lower() for n in names):
                names.append(k.name)
    return marks


def cell_type_matrix(genes: Sequence[str], marks: dict[str, list[str]]) -> tuple[np.ndarray, list[str]]:
    """``genes x types`` (float32): ``1 / sqrt(n)`` in each of the ``n`` types a gene marks, and the
    types' names; types marking none of ``genes`` are left out."""
    types = sorted({t for g in genes for t in marks.get(g, ())})
    col = {t: j for j, t in enumerate(types)}
    M = np.zeros((len(genes), len(types)), dtype=np.float32)
    for i, g in enumerate(genes):
        ts = marks.get(g, ())
        for t in ts:
            M[i, col[t]] = 1.0 / np.sqrt(len(ts))
    return M, types


def with_cell_type_dims(ge: GeneEmbeddings, known: Iterable[CellTypeMarkers], *, weight: float = 1.0,
                        source: str = "") -> GeneEmbeddings:
    """``ge``'s conditioned vectors (fitting its conditioning if it has none) with ``weight x``
    :func:`cell_type_matrix` beside them, as a new table whose conditioning only centres (the
    text block is conditioned already, and the marker block must keep its directions).

    Parameters
    ----------
    ge
        A gene table (symbols as the knowledge spells them).
    known
        Cell types and their marker genes (e.g. a knowledge source's ``cell_type_markers()``
        and ``cell_type_definition_markers()``).
    weight
        Length of a gene's marker block when it marks one type (the text block's rows have
        length ~0.6-0.8 after conditioning).
    source
        What the markers came from, for the manifest.
    """
    marks = marked_types(known)
    E, _ = ge.aligned(ge.genes, conditioned=True)
    M, types = cell_type_matrix(ge.genes, marks)
    vec = np.hstack([E, np.float32(weight) * M]).astype(np.float32)
    manifest: dict[str, Any] = {**ge.manifest, "cell_type_markers": {
        "weight": float(weight), "n_types": len(types), "n_genes_marked": int(M.any(axis=1).sum()),
        "source": source, "text_dim": int(E.shape[1]),
        "text_conditioning": ge.conditioning.provenance() if ge.conditioning is not None else None,
    }}
    out = GeneEmbeddings(ge.genes, vec, manifest)
    out.conditioning = Conditioning.fit(vec, n_components=0)
    return out
