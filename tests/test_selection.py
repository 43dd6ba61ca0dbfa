"""Streaming input transform and gene selection (scelmo.expression.selection) against scanpy."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from helpers import scelmo_wa

import scelmo.datasets as sd
from scelmo import keys, tl
from scelmo.errors import InputError
from scelmo.expression.selection import (
    gene_stats,
    highly_variable,
    looks_like_counts,
    normalize_chunk,
)
from scelmo.testing import random_gene_embeddings


@pytest.fixture(scope="module")
def pbmc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.pbmc68k_reduced()


@pytest.mark.parametrize("n_top", [50, 300, 5000])
@pytest.mark.parametrize("chunk", [97, 10_000])
def test_hvg_matches_scanpy_seurat_flavor(pbmc, n_top, chunk):
    ref = sc.pp.highly_variable_genes(ad.AnnData(pbmc.X.copy()), n_top_genes=n_top, flavor="seurat",
                                      inplace=False)["highly_variable"].to_numpy()
    mine = highly_variable(gene_stats(pbmc.X, normalize=False, chunk_size=chunk), n_top)
    np.testing.assert_array_equal(mine, ref)


def test_normalize_matches_scanpy(pbmc):
    counts = pbmc.layers["counts"]
    b = ad.AnnData(counts.copy())
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    np.testing.assert_allclose(normalize_chunk(counts).toarray(), b.X.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalize_chunk(counts.toarray()), b.X.toarray(), rtol=1e-5, atol=1e-6)
    assert looks_like_counts(counts) and not looks_like_counts(pbmc.X)


def test_stats_add_up_over_pieces(pbmc):
    X = pbmc.layers["counts"]
    whole = gene_stats(X, normalize=True)
    parts = gene_stats(X[:300], normalize=True) + gene_stats(X[300:], normalize=True)
    np.testing.assert_allclose(parts.sums, whole.sums, rtol=1e-10)
    dense = np.log1p(normalize_chunk(X).toarray().astype(np.float64))
    np.testing.assert_allclose(whole.mean, normalize_chunk(X).toarray().mean(0), rtol=1e-5, atol=1e-7)
    assert dense.shape == (whole.n_cells, whole.n_genes)


def test_default_flavor_matches_dense_formula(pbmc):
    genes = list(map(str, pbmc.var_names))
    ge = random_gene_embeddings(genes[10:], dim=16)
    X = pbmc.layers["counts"].toarray()
    for n_top, transform in ((200, "center"), (200, "scale"), (5000, "center")):
        a = ad.AnnData(sp.csr_matrix(X), var=pbmc.var[[]].copy())
        tl.embed_cells(a, gene_embeddings=ge, n_top_genes=n_top, transform=transform, chunk_size=128)
        np.testing.assert_allclose(a.obsm[keys.X_SCELMO], scelmo_wa(X, ge, genes, n_top=n_top, transform=transform),
                                   rtol=1e-4, atol=2e-5)
        prov = a.uns["scelmo"]["embed_cells"]
        assert prov["normalize"] == "log1p_cp10k" and prov["transform"] == transform
        assert prov["conditioning"]["checksum"] == ge.conditioning.checksum()
        assert a.var[keys.GENES_USED].sum() == prov["n_genes_used"] <= n_top


def test_mask_var_gene_stats_and_pieces(pbmc):
    genes = list(map(str, pbmc.var_names))
    ge = random_gene_embeddings(genes, dim=16)
    a = ad.AnnData(pbmc.layers["counts"].copy(), var=pbmc.var[[]].copy())
    tl.embed_cells(a, gene_embeddings=ge, n_top_genes=300)
    # a dataset in two pieces with the whole dataset's statistics: the same embedding
    st = gene_stats(a.X, normalize=True)
    halves = [a[:350].copy(), a[350:].copy()]
    for h in halves:
        tl.embed_cells(h, gene_embeddings=ge, n_top_genes=300, gene_stats=st)
    np.testing.assert_allclose(np.vstack([h.obsm[keys.X_SCELMO] for h in halves]), a.obsm[keys.X_SCELMO],
                               rtol=1e-5, atol=1e-6)
    # scanpy's convention: a boolean var column (or array) chooses the genes
    a.var["mine"] = a.var[keys.GENES_USED].to_numpy()
    b = a.copy()
    tl.embed_cells(b, gene_embeddings=ge, mask_var="mine")
    np.testing.assert_allclose(b.obsm[keys.X_SCELMO], a.obsm[keys.X_SCELMO], rtol=1e-5, atol=1e-6)
    assert b.uns["scelmo"]["embed_cells"]["gene_selection"] == "mask_var:mine"
    with pytest.raises(InputError, match="not a column"):
        tl.embed_cells(b, gene_embeddings=ge, mask_var="nope")
    with pytest.raises(InputError, match="boolean"):
        tl.embed_cells(b, gene_embeddings=ge, mask_var=np.ones(3, bool))
    with pytest.raises(InputError, match="gene_stats cover"):
        tl.embed_cells(b, gene_embeddings=ge, gene_stats=gene_stats(a.X[:, :10], normalize=True))


def test_gene_stats_with_names_are_matched_by_name(pbmc):
    """Statistics that carry gene names follow the genes, not the column positions."""
    genes = list(map(str, pbmc.var_names))
    ge = random_gene_embeddings(genes, dim=16)
    a = ad.AnnData(pbmc.layers["counts"].copy(), var=pbmc.var[[]].copy())
    named = gene_stats(a.X, normalize=True, genes=a.var_names)
    assert named.genes == tuple(genes)
    tl.embed_cells(a, gene_embeddings=ge, n_top_genes=300, gene_stats=named, key_added="ref")
    order = np.random.default_rng(0).permutation(a.n_vars)
    shuffled = a[:, order].copy()  # the same cells, genes in another order
    tl.embed_cells(shuffled, gene_embeddings=ge, n_top_genes=300, gene_stats=named, key_added="ref")
    np.testing.assert_allclose(shuffled.obsm["ref"], a.obsm["ref"], rtol=1e-5, atol=1e-6)
    unnamed = gene_stats(a.X, normalize=True)  # the same numbers by position: wrong genes, other result
    tl.embed_cells(shuffled, gene_embeddings=ge, n_top_genes=300, gene_stats=unnamed, key_added="by_position")
    assert not np.allclose(shuffled.obsm["by_position"], a.obsm["ref"], atol=1e-3)
    # a subset of the genes: the statistics are laid out over it
    sub = a[:, a.var_names[:400]].copy()
    tl.embed_cells(sub, gene_embeddings=ge, n_top_genes=300, gene_stats=named)
    assert named.for_genes(sub.var_names).n_genes == 400
    with pytest.raises(InputError, match="share no gene"):
        named.for_genes(["NOT_A_GENE1", "NOT_A_GENE2"])
    with pytest.raises(InputError, match="no gene names"):
        unnamed.for_genes(genes)
    with pytest.raises(InputError, match="different genes"):
        _ = named + named.for_genes(genes[::-1])
    assert (named + named).genes == named.genes and (named + named).n_cells == 2 * a.n_obs


def test_paper_flavor_is_the_papers_formula(pbmc):
    from helpers import paper_wa

    genes = list(map(str, pbmc.var_names))
    ge = random_gene_embeddings(genes, dim=16)
    a = ad.AnnData(pbmc.layers["counts"].copy(), var=pbmc.var[[]].copy())
    tl.embed_cells(a, gene_embeddings=ge, flavor="paper")
    E, _ = ge.aligned(genes)
    np.testing.assert_allclose(a.obsm[keys.X_SCELMO], paper_wa(a.X.toarray(), E), rtol=2e-5, atol=2e-6)
    prov = a.uns["scelmo"]["embed_cells"]
    assert (prov["gene_selection"], prov["transform"], prov["conditioning"], prov["normalize"]) == (
        "all", "none", "none", "none")


def test_counts_are_recognised_below_empty_droplets_on_top():
    """Trial finding: an unfiltered matrix whose first 2,000 rows were empty droplets passed as
    log values ("auto" read only those rows): real counts then crashed in the HVG step, and
    smaller ones were embedded raw."""
    from scelmo.expression.selection import should_normalize

    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(3.0, size=(500, 50)).astype(np.float32))
    empty = sp.csr_matrix((5000, 50), dtype=np.float32)
    assert should_normalize("auto", sp.vstack([empty, counts], format="csr"))
    ones = sp.csr_matrix((rng.random((5000, 50)) < 0.01).astype(np.float32))  # low-depth droplets: only 1s
    assert should_normalize("auto", sp.vstack([ones, counts], format="csr"))
    logged = counts.copy()
    logged.data = np.log1p(logged.data)
    assert not should_normalize("auto", sp.vstack([empty, logged], format="csr"))


def test_dense_chunks_are_worked_on_in_row_blocks_with_the_same_result(monkeypatch):
    """Trial finding: a dense backed file peaked at ~8x its size (float64 temporaries of a whole
    chunk); dense chunks are now normalised and summed a few rows at a time."""
    from scelmo.expression import selection

    rng = np.random.default_rng(1)
    X = rng.poisson(1.5, size=(300, 25)).astype(np.float32)
    whole = gene_stats(X, normalize=True)
    normed = normalize_chunk(X)
    monkeypatch.setattr(selection, "DENSE_BLOCK_ROWS", 7)
    np.testing.assert_allclose(gene_stats(X, normalize=True).sums, whole.sums, rtol=1e-12)
    np.testing.assert_array_equal(normalize_chunk(X), normed)
    np.testing.assert_allclose(gene_stats(sp.csr_matrix(X), normalize=True).sums, whole.sums, rtol=1e-6)


def test_a_nan_in_a_sampled_block_names_its_row_in_the_whole_matrix():
    """Review finding: the spread-out sample of normalize="auto" counted rows from its block."""
    from scelmo.expression.selection import should_normalize

    X = np.ones((10_000, 5), dtype=np.float32)
    X[9_900, 1] = np.nan
    with pytest.raises(InputError, match="row index 9900,"):
        should_normalize("auto", sp.csr_matrix(X))
