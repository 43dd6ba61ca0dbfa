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


def test_a_model_and_the_other_paths_use_the_marker_table_as_built(pbmc):
    """A review: a Model read the table back from varm with a fresh default conditioning (10
    more directions removed, the marker block projected); flavor='paper' used the conditioned
    text block unsaid; names-only `method="embedding"` compared 384-d texts with wider cells."""
    import pytest

    from scelmo.errors import InputError

    a = pbmc.raw.to_adata()[:200].copy()
    ge = scelmo.tl.embed_genes(a, config=CFG, progress=False)
    a.obs["y"] = ["a" if i % 2 else "b" for i in range(a.n_obs)]
    scelmo.Model.setup_anndata(a, labels_key="y")
    model = scelmo.Model(a, config=CFG)
    _, names, E = model.get_expression()
    assert model.gene_table.conditioning.n_components == 0
    idx = {n: i for i, n in enumerate(a.var_names)}
    ref, mask = ge.aligned([a.var["scelmo_symbol"].iloc[idx[n]] for n in names], conditioned=True)
    both = mask & (np.abs(E).sum(1) > 0)
    assert both.sum() > 500 and np.abs(E[both] - ref[both]).max() == 0.0
    with pytest.raises(InputError, match="cell-type marker dimensions"):
        scelmo.tl.embed_cells(a.copy(), config={**CFG, "aggregate.flavor": "paper"})
    b = pbmc.copy()
    scelmo.tl.embed_cells(b, config=CFG)
    assert b.uns[keys.PROVENANCE]["embed_cells"]["text_dim"] == 384
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scelmo.tl.annotate(b, cell_types=["B cell", "T cell", "monocyte"], method="embedding", config=CFG)
    assert set(b.obs[keys.LABEL].astype(str)) <= {"B cell", "T cell", "monocyte", "unknown"}
