"""End to end on the bundled real dataset (pbmc68k_reduced), offline default."""

from __future__ import annotations

import numpy as np
import pytest

import scelmo
from scelmo import keys, metrics


def _flat_values(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _flat_values(v)
        else:
            yield v


def test_embed_cells_default_on_pbmc(pbmc):
    scelmo.tl.embed_cells(pbmc)
    X = pbmc.obsm[keys.X_SCELMO]
    assert X.shape == (700, 384) and X.dtype == np.float32 and np.isfinite(X).all()
    prov = pbmc.uns[keys.PROVENANCE]
    info = prov["embed_cells"]
    assert info["aggregator"] == "wa" and info["matrix"] == "raw.X"
    assert info["n_genes"] == 765 and info["n_genes_with_vector"] > 700
    assert info["expression_coverage"] > 0.9 and info["n_empty_cells"] == 0
    assert info["embed_model"].startswith("local/all-MiniLM-L6-v2-int8")
    assert all(isinstance(v, str | int | float) for v in _flat_values(prov))


def test_embed_genes_writes_varm_and_coverage(pbmc):
    ge = scelmo.tl.embed_genes(pbmc)
    assert len(ge) > 700 and ge.dim == 384
    assert pbmc.varm[keys.GENE_EMBEDDING].shape == (765, 384)
    mask = pbmc.var[keys.HAS_EMBEDDING].to_numpy()
    assert mask.sum() == len(ge)
    assert (np.abs(pbmc.varm[keys.GENE_EMBEDDING][~mask]).sum()) == 0
    info = pbmc.uns[keys.PROVENANCE]["embed_genes"]
    assert info["gene_coverage"] == pytest.approx(mask.mean())


def test_embed_genes_with_a_list_first_says_to_pass_genes_by_keyword():
    """Found while measuring: `embed_genes(["INS", "GCG"])` failed with "'list' object has no
    attribute 'var_names'"."""
    from scelmo.errors import InputError

    with pytest.raises(InputError, match=r"embed_genes\(genes=\[\.\.\.\]\)"):
        scelmo.tl.embed_genes(["INS", "GCG"])
    assert len(scelmo.tl.embed_genes(genes=["INS", "GCG"], progress=False)) == 2


def test_zero_shot_clusters_recover_cell_types(pbmc):
    scelmo.tl.embed_cells(pbmc)
    scelmo.tl.cluster(pbmc)
    scores = metrics.clustering_scores(pbmc.obs["bulk_labels"], pbmc.obs[keys.CLUSTER])
    # random clusterings score ~0; scelmo zero-shot must carry real cell-type signal
    assert scores["ari"] > 0.15 and scores["nmi"] > 0.3, scores
    shuffled = np.random.default_rng(0).permutation(pbmc.obs[keys.CLUSTER].to_numpy())
    assert metrics.ari(pbmc.obs["bulk_labels"], shuffled) < 0.05


def test_aa_and_layer_choice(pbmc):
    import scipy.sparse as sp

    pbmc.layers["lognorm"] = sp.csr_matrix(pbmc.raw.X)
    scelmo.tl.embed_cells(pbmc, layer="lognorm", aggregator="aa", key_added="X_aa", flavor="paper")
    scelmo.tl.embed_cells(pbmc, use_raw=True, aggregator="aa", key_added="X_aa_raw", flavor="paper")
    np.testing.assert_allclose(pbmc.obsm["X_aa"], pbmc.obsm["X_aa_raw"], rtol=1e-6)
    assert pbmc.uns[keys.PROVENANCE]["embed_cells"]["matrix"] == "raw.X"
    # the default flavor follows scanpy: var["highly_variable"] chooses the genes when present
    scelmo.tl.embed_cells(pbmc, layer="lognorm", key_added="X_hv")
    info = pbmc.uns[keys.PROVENANCE]["embed_cells"]
    assert info["gene_selection"] == "mask_var:highly_variable"
    assert 0 < info["n_genes_used"] <= int(pbmc.var["highly_variable"].sum())
    assert not (pbmc.var[keys.GENES_USED] & ~pbmc.var["highly_variable"]).any()
    # a number asked for in the call is selected so, over the column (trial finding: ignored in silence)
    scelmo.tl.embed_cells(pbmc, layer="lognorm", key_added="X_top", n_top_genes=50)
    info = pbmc.uns[keys.PROVENANCE]["embed_cells"]
    assert info["gene_selection"] == "hvg:50" and int(pbmc.var[keys.GENES_USED].sum()) <= 50
    # embedding from raw drops the column: it described the earlier embedding, not this one
    scelmo.tl.embed_cells(pbmc, use_raw=True, key_added="X_raw")
    assert keys.GENES_USED not in pbmc.var


def test_copy_returns_new_object(pbmc):
    out = scelmo.tl.embed_cells(pbmc, copy=True)
    assert keys.X_SCELMO in out.obsm and keys.X_SCELMO not in pbmc.obsm


def test_plot_embedding_writes_png(pbmc, tmp_path):
    scelmo.tl.embed_cells(pbmc)
    scelmo.tl.cluster(pbmc)
    scelmo.tl.umap(pbmc)
    fig = scelmo.pl.embedding(pbmc, color="bulk_labels", save=tmp_path / "u.png")
    assert (tmp_path / "u.png").stat().st_size > 10_000 and fig is not None


def test_plot_without_umap_says_what_to_run(pbmc):
    with pytest.raises(scelmo.ScelmoError, match="scelmo.tl.umap"):
        scelmo.pl.embedding(pbmc)
    with pytest.raises(scelmo.ScelmoError, match="embed_cells"):
        scelmo.tl.cluster(pbmc)


def test_metric_and_confusion_plots(tmp_path):
    table = [{"method": "scelmo", "ari": 0.5, "nmi": 0.6}, {"method": "pca", "ari": 0.4, "nmi": 0.63}]
    scelmo.pl.metrics_bar(table, save=tmp_path / "m.png", title="demo")
    scelmo.pl.confusion_matrix(["a", "a", "b"], ["a", "b", "b"], save=tmp_path / "c.png")
    assert (tmp_path / "m.png").stat().st_size > 5000 and (tmp_path / "c.png").stat().st_size > 5000
    with pytest.raises(scelmo.ScelmoError, match="method_col"):
        scelmo.pl.metrics_bar([{"x": 1}])


def test_embed_cells_counts_the_genes_it_resolved_as_embed_genes_does():
    """Trial finding: uns['scelmo']['embed_cells']['n_genes_resolved'] was every gene (765)
    while resolved_by said 14 were unknown; embed_genes said 751."""
    import scelmo
    from scelmo import datasets, keys

    a = datasets.pbmc68k_reduced()
    scelmo.tl.embed_cells(a)
    rec = a.uns[keys.PROVENANCE]["embed_cells"]
    unknown = sum(v for k, v in rec["resolved_by"].items() if k.startswith("unknown") or k == "missing_name")
    assert unknown > 0 and rec["n_genes_resolved"] == rec["n_genes"] - unknown
    scelmo.tl.embed_genes(a)
    assert rec["n_genes_resolved"] == a.uns[keys.PROVENANCE]["embed_genes"]["n_genes_resolved"]


def test_a_backed_csc_matrix_is_embedded_with_a_warning_to_convert_it(tmp_path):
    """Trial finding: `--backed` on a CSC file read the whole matrix for every block of cells
    (memory and time growing with the file), silently."""
    import anndata as ad
    import scipy.sparse as sp

    import scelmo.datasets as sd
    from scelmo.errors import ScelmoWarning

    a = sd.pbmc68k_reduced()
    b = ad.AnnData(sp.csc_matrix(a.layers["counts"]), var=a.var[[]].copy())
    b.write_h5ad(tmp_path / "csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    with pytest.warns(ScelmoWarning, match="column by column"):
        scelmo.tl.embed_cells(backed, progress=False)
    ref = scelmo.tl.embed_cells(b, copy=True, progress=False).obsm[keys.X_SCELMO]
    np.testing.assert_allclose(backed.obsm[keys.X_SCELMO], ref, atol=1e-5)


def test_clustering_a_few_cells_warns_instead_of_logging(pbmc, capsys):
    """R trial: scanpy's "WARNING: n_obs too small" went straight to the console (not a
    warning R could catch or silence); the same adjustment is a ScelmoWarning now."""
    from scelmo.errors import ScelmoWarning

    a = pbmc[:8].copy()
    scelmo.tl.embed_cells(a)
    with pytest.warns(ScelmoWarning, match="Only 8 cells: clustering with 5 neighbours instead of 15"):
        scelmo.tl.cluster(a)
    assert "n_obs too small" not in capsys.readouterr().err
