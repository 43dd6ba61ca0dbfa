"""scanpy / scvi-tools conventions on real data (pbmc68k_reduced, the bundled offline models):
``copy=`` on every tool that writes to AnnData, the UMAP where ``sc.pl.umap`` finds it, the
``setup_anndata`` registry in ``adata.uns`` and ``Model(adata)`` embedding its own genes."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import scelmo
from scelmo import datasets, keys, testing
from scelmo.errors import InputError
from scelmo.model._setup import AnnDataSetup, _remember, _setup_of

N_GENES = 200  # the most expressed genes of pbmc68k_reduced: keeps a cold gene-vector cache fast


def _subset():
    a = datasets.pbmc68k_reduced()  # X log-normalised, no raw
    top = np.argsort(-np.asarray(a.X.mean(0)).ravel())[:N_GENES]
    return a[:, np.sort(top)].copy()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, session_cache):
    """Real gene vectors (offline table + MiniLM), real cell embedding, graph and UMAP."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCELMO_CACHE__PATH", str(session_cache))
        mp.setenv("SCELMO_CONFIG_DIR", str(tmp_path_factory.mktemp("cfg")))
        a = _subset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ge = scelmo.tl.embed_genes(a)
            scelmo.tl.embed_cells(a, gene_embeddings=ge)
            scelmo.tl.cluster(a)
        return a, ge


def _snapshot(a):
    return {
        "obs": list(a.obs.columns), "var": list(a.var.columns), "obsm": sorted(a.obsm),
        "varm": sorted(a.varm), "obsp": sorted(a.obsp), "uns": sorted(a.uns),
        "prov": sorted(a.uns.get(keys.PROVENANCE, {})), "X_umap": np.array(a.obsm.get("X_umap", [])),
    }


def _same(a, snap):
    now = _snapshot(a)
    for k in snap:
        if k == "X_umap":
            np.testing.assert_array_equal(now[k], snap[k])
        else:
            assert now[k] == snap[k], k


# ----------------------------------------------------------------------------- copy=
def test_embed_genes_copy_returns_copy_and_leaves_input(embedded):
    a = _subset()
    snap = _snapshot(a)
    out = scelmo.tl.embed_genes(a, copy=True)
    assert isinstance(out, ad.AnnData) and out is not a
    _same(a, snap)
    assert keys.GENE_EMBEDDING not in a.varm and keys.HAS_EMBEDDING not in a.var
    assert "embed_genes" in out.uns[keys.PROVENANCE]
    ge = scelmo.tl.embed_genes(a)  # in place: same vectors
    assert isinstance(ge, scelmo.GeneEmbeddings)
    np.testing.assert_array_equal(out.varm[keys.GENE_EMBEDDING], a.varm[keys.GENE_EMBEDDING])
    with pytest.raises(InputError, match="copy=True"):
        scelmo.tl.embed_genes(None, ["CD3E"], copy=True)


def test_cluster_and_umap_copy(embedded):
    a = embedded[0].copy()
    del a.obs[keys.CLUSTER]
    snap = _snapshot(a)
    c = scelmo.tl.cluster(a, copy=True)
    _same(a, snap)
    assert keys.CLUSTER in c.obs and c.obs[keys.CLUSTER].nunique() > 1
    assert scelmo.tl.cluster(a) is None  # in place: same clusters
    assert (a.obs[keys.CLUSTER] == c.obs[keys.CLUSTER]).all()

    snap = _snapshot(c)
    u = scelmo.tl.umap(c, copy=True)
    _same(c, snap)
    assert keys.UMAP not in c.obsm
    assert scelmo.tl.umap(c) is None
    np.testing.assert_array_equal(u.obsm[keys.UMAP], c.obsm[keys.UMAP])


def test_annotate_copy_leaves_query_and_reference(embedded):
    a = embedded[0]
    ref, query = a[:500].copy(), a[500:].copy()
    snap_q = _snapshot(query)
    out = scelmo.tl.annotate(query, reference=ref, ref_labels="bulk_labels", copy=True)
    _same(query, snap_q)
    assert keys.LABEL in out.obs and f"{keys.LABEL}_score" in out.obs
    scelmo.tl.annotate(query, reference=ref, ref_labels="bulk_labels")
    assert (query.obs[keys.LABEL].astype(str) == out.obs[keys.LABEL].astype(str)).all()
    # a reference without the embedding: computed for the copy's sake, not into the caller's object
    bare_ref, q2 = ref.copy(), query.copy()
    del bare_ref.obsm[keys.X_SCELMO]
    snap_r = _snapshot(bare_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out2 = scelmo.tl.annotate(q2, reference=bare_ref, ref_labels="bulk_labels", copy=True)
    _same(bare_ref, snap_r)
    assert keys.X_SCELMO not in bare_ref.obsm and keys.LABEL in out2.obs


def test_in_silico_deletion_copy(embedded):
    pytest.importorskip("torch")
    a = embedded[0].copy()
    ge = testing.random_gene_embeddings(list(a.var_names), dim=16, seed=0)
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    model = scelmo.Model(a, gene_embeddings=ge).train(max_epochs=2, early_stopping=False)
    labels = a.obs["bulk_labels"].astype(str)
    source, target = labels.value_counts().index[:2]
    genes = list(a.var_names[:5])
    snap = _snapshot(a)
    out = scelmo.tl.in_silico_deletion(model, a, genes=genes, source=source, target=target, copy=True)
    _same(a, snap)
    assert keys.IN_SILICO not in a.uns
    df = scelmo.tl.in_silico_deletion(model, a, genes=genes, source=source, target=target)
    assert list(out.uns[keys.IN_SILICO]["genes"]) == list(df.index)
    for col in ("delta_cosine", "logit_shift", "z_robust"):
        np.testing.assert_allclose(out.uns[keys.IN_SILICO][col], df[col].to_numpy())
    assert out.uns["scelmo"]["in_silico_deletion"]["n_genes"] == len(genes)


def test_copy_of_backed_anndata_is_refused(embedded, tmp_path):
    path = tmp_path / "a.h5ad"
    embedded[0].write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(InputError, match="backed"):
            scelmo.tl.cluster(backed, copy=True)
    finally:
        backed.file.close()


# ----------------------------------------------------------------------------- UMAP keys
def test_umap_lands_where_sc_pl_umap_finds_it(embedded, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    a = embedded[0].copy()
    sc.pp.pca(a, n_comps=20)  # scanpy's own PCA UMAP first
    sc.pp.neighbors(a, random_state=0)
    sc.tl.umap(a, random_state=0)
    pca_umap = a.obsm["X_umap"].copy()
    pca_a = a.copy()
    scelmo.tl.umap(a)
    np.testing.assert_array_equal(a.obsm["X_umap"], a.obsm[keys.UMAP])
    assert not np.allclose(a.obsm["X_umap"], pca_umap)  # replaced, as sc.tl.umap does
    assert a.uns[keys.PROVENANCE]["umap"]["scanpy_obsm"] == "X_umap"
    ax = sc.pl.umap(a, color="bulk_labels", show=False)
    pts = np.asarray(ax.collections[0].get_offsets())
    np.testing.assert_allclose(np.sort(pts, axis=0), np.sort(a.obsm[keys.UMAP], axis=0), rtol=1e-5)
    # backward compatible: scelmo.pl.embedding reads X_scelmo_umap, also in files written before X_umap
    old = a.copy()
    del old.obsm["X_umap"]
    path = tmp_path / "old.h5ad"
    old.write_h5ad(path)
    scelmo.pl.embedding(ad.read_h5ad(path), color="bulk_labels", save=tmp_path / "umap.png")
    assert (tmp_path / "umap.png").stat().st_size > 0
    # scanpy_key=None leaves an existing X_umap alone
    b = pca_a
    scelmo.tl.umap(b, scanpy_key=None)
    np.testing.assert_array_equal(b.obsm["X_umap"], pca_umap)
    assert keys.UMAP in b.obsm


# ----------------------------------------------------------------------------- setup registry
def test_setup_survives_copy_slice_and_h5ad(embedded, tmp_path):
    a = embedded[0].copy()
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2, "b1", "b2")
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels", batch_key="batch", use_raw=True)
    reg = a.uns[keys.SETUP]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in reg.items())
    assert reg["labels_key"] == "bulk_labels" and reg["use_raw"] == "true" and "layer" not in reg
    want = AnnDataSetup(labels_key="bulk_labels", batch_key="batch", use_raw=True)
    assert _setup_of(a.copy()) == want
    assert _setup_of(a[:100].copy()) == want
    path = tmp_path / "setup.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert _setup_of(back) == want
    scelmo.Model.setup_anndata(back, labels_key="bulk_labels")  # setting up again replaces it
    assert _setup_of(back) == AnnDataSetup(labels_key="bulk_labels")
    assert "batch_key" not in back.uns[keys.SETUP]


def test_model_from_h5ad_round_trip_and_in_memory_setup(embedded, tmp_path):
    pytest.importorskip("torch")
    a = embedded[0].copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    path = tmp_path / "train.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    m = scelmo.Model(back).train(max_epochs=1, early_stopping=False)  # no setup_anndata call needed
    assert m.setup.labels_key == "bulk_labels"
    assert m.get_latent_representation().shape[0] == a.n_obs
    # an object registered in memory only (as Model.load does for a query) still works
    mem = embedded[0].copy()
    mem.uns.pop(keys.SETUP, None)
    _remember(mem, AnnDataSetup(labels_key="bulk_labels"))
    assert _setup_of(mem) == AnnDataSetup(labels_key="bulk_labels")
    assert scelmo.Model(mem).setup.labels_key == "bulk_labels"
    fresh = embedded[0].copy()
    fresh.uns.pop(keys.SETUP, None)
    with pytest.raises(InputError, match="setup_anndata"):
        scelmo.Model(fresh)


# ----------------------------------------------------------------------------- Model embeds genes
def test_model_embeds_missing_gene_vectors(embedded):
    pytest.importorskip("torch")
    a = _subset()  # no varm["scelmo"]
    assert keys.GENE_EMBEDDING not in a.varm
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    m = scelmo.Model(a, config={"embed.model": "local/all-MiniLM-L6-v2-int8"})
    assert keys.GENE_EMBEDDING in a.varm and a.var[keys.HAS_EMBEDDING].sum() > 0.9 * N_GENES
    assert a.uns[keys.PROVENANCE]["embed_genes"]["embed_model"] == embedded[1].manifest["embed_model"]
    np.testing.assert_allclose(a.varm[keys.GENE_EMBEDDING], embedded[0].varm[keys.GENE_EMBEDDING], atol=1e-6)
    assert len(m.gene_table) == int(a.var[keys.HAS_EMBEDDING].sum())
    m.train(max_epochs=1, early_stopping=False)
    assert m.predict(a[:50].copy()).shape == (50,)
    # genes that cannot be embedded: the embed_genes error, not a crash
    bad = _subset()[:, :20].copy()
    bad.var_names = [f"not_a_gene_{i}" for i in range(bad.n_vars)]
    scelmo.Model.setup_anndata(bad, labels_key="bulk_labels")
    with pytest.raises(InputError, match="could be matched"):
        scelmo.Model(bad)


def test_cluster_takes_a_knn_transformer(embedded):
    """``transformer=`` reaches scanpy: a scikit-learn KNeighborsTransformer object gives the exact graph."""
    from sklearn.neighbors import KNeighborsTransformer

    a = embedded[0].copy()
    knn = KNeighborsTransformer(n_neighbors=10, metric="cosine", algorithm="brute")
    scelmo.tl.cluster(a, transformer=knn)
    assert a.uns[keys.NEIGHBORS]["params"]["n_neighbors"] == 10  # scanpy takes k from the object
    d = a.obsp[keys.NEIGHBORS + "_distances"]
    x = a.obsm[keys.X_SCELMO] / np.linalg.norm(a.obsm[keys.X_SCELMO], axis=1, keepdims=True)
    row = 1.0 - x @ x[0]
    row[0] = np.inf
    found = set(d[0].indices) - {0}  # the object's graph may list the cell itself at distance 0
    assert found == set(np.argsort(row)[: len(found)]) and len(found) >= 9
    assert a.obs[keys.CLUSTER].nunique() > 1


def test_tl_and_pl_list_their_functions_and_nothing_else():
    """Tab completion on scelmo.tl / scelmo.pl showed the modules' imports (np, os, re, Any,
    annotations, ...) beside the tools; each name listed is a public function there."""
    import inspect

    import scelmo

    for mod in (scelmo.tl, scelmo.pl):
        names = dir(mod)
        assert names == sorted(mod.__all__) and "np" not in names and "annotations" not in names
        assert all(inspect.isfunction(getattr(mod, n)) for n in names)
    public_plots = {n for n, f in vars(scelmo.pl).items() if inspect.isfunction(f) and f.__module__ == "scelmo.pl"
                    and not n.startswith("_")}
    assert public_plots == set(scelmo.pl.__all__)
