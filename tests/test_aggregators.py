"""wa / aa agree with the paper's dense formulas on every supported matrix kind."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import paper_aa, paper_wa, scelmo_wa

from scelmo import keys, tl
from scelmo import plugin as plugins
from scelmo.errors import EmptyCellsWarning
from scelmo.expression.aggregation import AggregationContext
from scelmo.testing import random_gene_embeddings


def _data(rng, n=257, g=40, density=0.15):
    X = (rng.random((n, g)) < density) * rng.integers(1, 30, (n, g)).astype(np.float32)
    X[3] = 0  # an all-zero cell
    return X.astype(np.float32)


def _embedding(g, d=24, missing=(0, 5)):
    E = np.random.default_rng(1).standard_normal((g, d)).astype(np.float32)
    E[list(missing)] = 0  # genes without a vector get zero rows, as in the paper
    return E


@pytest.mark.parametrize("method,ref", [("wa", paper_wa), ("aa", paper_aa)])
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dense", "csr_array"])
@pytest.mark.parametrize("chunk", [1, 64, 10_000])
def test_matches_dense_reference(rng, method, ref, fmt, chunk):
    X = _data(rng)
    E = _embedding(X.shape[1])
    M = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "coo": sp.coo_matrix, "dense": np.asarray,
         "csr_array": sp.csr_array}[fmt](X)
    agg = plugins.aggregators.create(method)
    res = agg.aggregate(M, E, chunk_size=chunk, progress=False)
    np.testing.assert_allclose(res.embedding, ref(X, E), rtol=2e-5, atol=2e-6)
    assert res.embedding.dtype == np.float32
    assert 3 in res.empty_cells.tolist()
    assert np.isfinite(res.embedding).all()


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.float64, np.uint16])
def test_dtypes(rng, dtype):
    X = _data(rng).astype(dtype)
    E = _embedding(X.shape[1])
    M = X if dtype == np.float16 else sp.csr_matrix(X)  # scipy.sparse has no float16
    for method, ref in (("wa", paper_wa), ("aa", paper_aa)):
        res = plugins.aggregators.create(method).aggregate(M, E, progress=False)
        np.testing.assert_allclose(res.embedding, ref(X.astype(np.float64), E), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("sparse", [True, False])
def test_backed_h5ad_matches_in_memory(tmp_path, rng, sparse):
    X = _data(rng, n=501)
    genes = [f"G{i}" for i in range(X.shape[1])]
    a = ad.AnnData(sp.csr_matrix(X) if sparse else X)
    a.var_names = genes
    a.write_h5ad(tmp_path / "x.h5ad")
    ge = random_gene_embeddings(genes[2:], dim=12)
    mem = ad.read_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyCellsWarning)
        for flavor in ("paper", "scelmo"):
            tl.embed_cells(mem, gene_embeddings=ge, chunk_size=100, flavor=flavor, key_added=flavor)
            tl.embed_cells(backed, gene_embeddings=ge, chunk_size=100, flavor=flavor, key_added=flavor)
            np.testing.assert_array_equal(mem.obsm[flavor], backed.obsm[flavor])
    E, _ = ge.aligned(genes)
    np.testing.assert_allclose(mem.obsm["paper"], paper_wa(X, E), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(mem.obsm["scelmo"], scelmo_wa(X, ge, genes), rtol=1e-4, atol=1e-5)
    backed.file.close()


def test_l2_normalize_and_zero_cells(rng):
    X = _data(rng)
    genes = [f"G{i}" for i in range(X.shape[1])]
    a = ad.AnnData(sp.csr_matrix(X))
    a.var_names = genes
    ge = random_gene_embeddings(genes, dim=8)
    with pytest.warns(EmptyCellsWarning, match="1 of 257 cells"):
        tl.embed_cells(a, gene_embeddings=ge, l2_normalize=True)
    norms = np.linalg.norm(a.obsm[keys.X_SCELMO], axis=1)
    assert norms[3] == 0
    np.testing.assert_allclose(np.delete(norms, 3), 1, rtol=1e-5)
    assert a.uns[keys.PROVENANCE]["embed_cells"]["n_empty_cells"] == 1


def test_cell_expressing_only_uncovered_genes_is_zero_not_nan():
    X = sp.csr_matrix(np.array([[5, 0, 0], [0, 2, 1]], dtype=np.float32))
    E = np.array([[0, 0], [1, 2], [3, 4]], dtype=np.float32)  # gene 0 has no vector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = plugins.aggregators.create("wa").aggregate(X, E, progress=False)
    assert res.embedding[0].tolist() == [0, 0]
    assert res.empty_cells.tolist() == [0]
    np.testing.assert_allclose(res.embedding[1], (2 * E[1] + E[2]) / 3)


def test_genept_s_sentences_and_embedding():
    from scelmo import testing

    plugins.register_plugin(testing.FakePlugin(), "fake")
    try:
        genes = ["CD3E", "MS4A1", "NOVEC", "HBB"]
        a = ad.AnnData(sp.csr_matrix(np.array([[5, 1, 9, 0], [0, 2, 0, 7], [0, 0, 3, 0]], dtype=np.float32)))
        a.var_names = genes
        ge = random_gene_embeddings(["CD3E", "MS4A1", "HBB"], dim=8)
        agg = plugins.aggregators.create("genept_s", top_n=2)
        E = np.ones((4, 8), dtype=np.float32)
        E[2] = 0  # NOVEC has no vector
        prepared = agg.prepare(E, context=AggregationContext(genes=genes, settings=None))
        assert prepared.covered.tolist() == [True, True, False, True]
        s = agg.sentences(a.X, prepared)
        assert s[0].endswith("CD3E MS4A1") and s[1].endswith("HBB MS4A1")
        with pytest.warns(EmptyCellsWarning, match="1 of 3"):
            tl.embed_cells(a, gene_embeddings=ge, aggregator="genept_s",
                           config={"embed.model": "fake-hash", "aggregate.options": {"top_n": 2}})
        X = a.obsm[keys.X_SCELMO]
        assert X.shape == (3, 16) and not X[2].any()
        emb = testing.HashEmbedder().embed(s[:2], progress=False)
        np.testing.assert_allclose(X[:2], emb, rtol=1e-6)
    finally:
        plugins.unregister_plugin("fake")
