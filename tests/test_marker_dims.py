"""Opt-in cell-type marker dimensions beside the gene vectors (aggregate.cell_type_markers)."""

from __future__ import annotations

import warnings

import numpy as np

import scelmo
from scelmo import keys
from scelmo.errors import ScelmoWarning
from scelmo.knowledge.marker_dims import cell_type_matrix, marked_types

CFG = {"aggregate.cell_type_markers": 1.0}


def test_marker_dimensions_keep_markers_of_different_types_apart():
    """The islet hormones' text vectors are as close as one type's markers; in the marker block a
    hormone shares no dimension with another type's hormone, and genes that mark nothing add none."""
    genes = ["INS", "GCG", "SST", "PPY", "ACTB", "GAPDH", "CD3E", "MS4A1"]
    plain = scelmo.tl.embed_genes(genes=genes, progress=False)
    ge = scelmo.tl.embed_genes(genes=genes, config=CFG, progress=False)
    info = ge.manifest["cell_type_markers"]
    assert ge.dim == plain.dim + info["n_types"] and info["weight"] == 1.0 and ge.conditioning.n_components == 0
    block = dict(zip(ge.genes, ge.vectors[:, plain.dim:], strict=True))
    assert not (block["INS"] * block["GCG"]).any() and not (block["INS"] * block["SST"]).any()
    assert not block["ACTB"].any() and block["INS"].any() and block["CD3E"].any()
    np.testing.assert_allclose([np.linalg.norm(block[g]) for g in ("INS", "GCG", "CD3E")], 1.0, rtol=1e-6)
    # the text block is the plain table's conditioned vectors
    text, _ = plain.aligned(ge.genes, conditioned=True)
    np.testing.assert_allclose(ge.vectors[:, : plain.dim], text, rtol=1e-6, atol=1e-7)


def test_cell_type_matrix_weights_a_gene_by_the_types_it_marks():
    marks = {"A": ["t1"], "B": ["t1", "t2"], "C": []}
    M, types = cell_type_matrix(["A", "B", "C", "D"], marks)
    assert types == ["t1", "t2"]
    np.testing.assert_allclose(M, [[1, 0], [2 ** -0.5, 2 ** -0.5], [0, 0], [0, 0]], rtol=1e-6)
    from scelmo.knowledge.cell_types import CellTypeMarkers

    assert marked_types([CellTypeMarkers("T cell", ("CD3E",)), CellTypeMarkers("t Cell", ("CD3E",))]) == {"CD3E": ["T cell"]}


def test_embedding_annotating_and_a_model_with_marker_dimensions(pbmc):
    """The whole path with the setting: cells, a reference transfer (the query embedded with
    the same table: no 'another gene table' refusal) and the conditioning kept when
    `condition_components` is set."""
    ref, query = pbmc[:450].copy(), pbmc[450:].copy()
    scelmo.tl.embed_cells(ref, config=CFG)
    d = ref.obsm[keys.X_SCELMO].shape[1]
    assert d > 384 and ref.uns[keys.PROVENANCE]["embed_cells"]["conditioning"]["n_components"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScelmoWarning)
        scelmo.tl.annotate(query, reference=ref, ref_labels="bulk_labels", config=CFG)
    acc = float((query.obs[keys.LABEL].astype(str) == query.obs["bulk_labels"].astype(str)).mean())
    assert acc > 0.5
    # condition_components conditions the text block as the table is built; the marker block is
    # never projected (the table's own conditioning, centring only, is kept)
    other = pbmc[:450].copy()
    scelmo.tl.embed_cells(other, config={**CFG, "aggregate.condition_components": 5})
    assert other.obsm[keys.X_SCELMO].shape[1] == d
    assert other.uns[keys.PROVENANCE]["embed_cells"]["conditioning"]["n_components"] == 0
