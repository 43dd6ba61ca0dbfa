"""Bad input gets a clear ScelmoError (or a documented warning) and no partial output."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scelmo
from scelmo import keys
from scelmo.cli import cli
from scelmo.errors import CoverageWarning, EmptyCellsWarning, InputError, ScelmoWarning


def _counts(pbmc, n=80):
    """Integer-like counts (expm1 of the log-normalised raw values) for the first n cells."""
    X = pbmc.raw.X[:n].copy()
    X.data = np.round(np.expm1(X.data))
    a = ad.AnnData(X.astype(np.float32))
    a.var_names = pbmc.raw.var_names
    a.obs_names = pbmc.obs_names[:n]
    return a


def test_ensembl_ids_are_resolved(pbmc):
    from scelmo_local.knowledge import human_table

    table = human_table()
    owners = Counter(e for r in table.values() for e in r["ensembl"].split("|") if e)
    a = _counts(pbmc)

    def ensembl_id(g):  # IDs listed for several genes (~1%) resolve to one of them: skip those
        first = table[g]["ensembl"].split("|")[0] if g in table else ""
        return first + ".7" if first and owners[first] == 1 else g

    ids = [ensembl_id(g) for g in a.var_names]
    n_ids = sum(i.startswith("ENSG") for i in ids)
    assert n_ids > 600
    b = a.copy()
    b.var_names = ids
    scelmo.tl.embed_cells(a)
    scelmo.tl.embed_cells(b)
    assert b.uns[keys.PROVENANCE]["embed_cells"]["resolved_by"]["ensembl"] == n_ids
    np.testing.assert_allclose(a.obsm[keys.X_SCELMO], b.obsm[keys.X_SCELMO], rtol=1e-5, atol=1e-6)


def test_duplicate_gene_names_warn_and_work(pbmc):
    a = _counts(pbmc)
    names = list(a.var_names)
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's own duplicate warning
        a.var_names = names
    with pytest.warns(ScelmoWarning, match="occur more than once"):
        scelmo.tl.embed_cells(a)
    assert np.isfinite(a.obsm[keys.X_SCELMO]).all()


def test_unknown_genes_only():
    a = scelmo.testing.make_adata(20, [f"NOTAGENE{i}" for i in range(15)])
    with pytest.raises(InputError, match="None of the 15 genes could be matched"):
        scelmo.tl.embed_cells(a)
    assert keys.X_SCELMO not in a.obsm


def test_low_coverage_warns_with_numbers(pbmc):
    a = _counts(pbmc)
    a.var_names = [f"X{i}" if i % 3 else g for i, g in enumerate(a.var_names)]
    with pytest.warns(CoverageWarning, match=r"of 765 genes \(3\d\.\d%\)"):
        scelmo.tl.embed_cells(a)
    # trial finding: embed_genes gave no warning, and recorded the table's size as n_genes
    b = _counts(pbmc)
    b.var_names = a.var_names
    with pytest.warns(CoverageWarning, match=r"of 765 genes \(3\d\.\d%\) have a vector\. Check"):
        ge = scelmo.tl.embed_genes(b)
    rec = b.uns["scelmo"]["embed_genes"]
    assert rec["n_genes"] == 765 and rec["n_genes_in_table"] == len(ge) < 300
    assert rec["n_genes_with_vector"] / rec["n_genes"] == pytest.approx(rec["gene_coverage"])


@pytest.mark.parametrize("shape", [(0, 10), (10, 0)])
def test_empty_anndata(shape):
    a = ad.AnnData(sp.csr_matrix(shape, dtype=np.float32))
    a.var_names = [f"CD{i}" for i in range(shape[1])]
    with pytest.raises(InputError, match="no (cells|genes)"):
        scelmo.tl.embed_cells(a)


def test_all_zero_cells_get_zero_vectors(pbmc):
    a = _counts(pbmc)
    X = a.X.tolil()
    X[[2, 5]] = 0
    a.X = X.tocsr()
    with pytest.warns(EmptyCellsWarning, match="2 of 80 cells"):
        scelmo.tl.embed_cells(a)
    E = a.obsm[keys.X_SCELMO]
    assert not E[[2, 5]].any() and np.isfinite(E).all() and E[0].any()


@pytest.mark.parametrize("bad,match", [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")])
@pytest.mark.parametrize("dense", [False, True])
def test_nan_inf_negative(pbmc, bad, match, dense):
    a = _counts(pbmc)
    X = a.X.toarray()
    X[7, 3] = bad
    a.X = X if dense else sp.csr_matrix(X)
    with pytest.raises(InputError, match=match) as err:
        scelmo.tl.embed_cells(a)
    assert "row index 7, counting from 0" in str(err.value)
    assert keys.X_SCELMO not in a.obsm


def test_scaled_data_explains_what_to_do(pbmc):
    with pytest.raises(InputError, match="use_raw=True"):
        scelmo.tl.embed_cells(pbmc, use_raw=False)  # pbmc68k_reduced.X is z-scored


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.float64])
def test_integer_and_float16_matrices(pbmc, dtype):
    a = _counts(pbmc)
    ref = a.copy()
    a.X = a.X.toarray().astype(dtype) if dtype == np.float16 else a.X.astype(dtype)  # no sparse float16
    scelmo.tl.embed_cells(a)
    scelmo.tl.embed_cells(ref)
    np.testing.assert_allclose(a.obsm[keys.X_SCELMO], ref.obsm[keys.X_SCELMO], rtol=1e-3, atol=1e-5)


def test_wrong_layer_name(pbmc):
    with pytest.raises(InputError, match="Layer 'counts' not found"):
        scelmo.tl.embed_cells(pbmc, layer="counts")


def test_unknown_aggregator(pbmc):
    with pytest.raises(scelmo.errors.UnknownComponentError, match="Did you mean .*'aa'"):
        scelmo.tl.embed_cells(pbmc, aggregator="ab")


def test_cli_unwritable_output_leaves_nothing(pbmc, tmp_path, monkeypatch):
    src = tmp_path / "in.h5ad"
    _counts(pbmc).write_h5ad(src)
    ro = tmp_path / "ro"
    ro.mkdir()
    missing = tmp_path / "nope" / "out.h5ad"
    res = CliRunner().invoke(cli, ["embed-cells", str(src), "-o", str(missing)])
    assert res.exit_code == 3 and "does not exist" in res.output
    os.chmod(ro, 0o500)
    real_access = os.access
    if os.geteuid() == 0:  # root may write into a read-only directory: report it as the OS would to a user
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro and mode & os.W_OK
                            else real_access(p, mode, *a, **k))
    try:
        res = CliRunner().invoke(cli, ["embed-cells", str(src), "-o", str(ro / "out.h5ad")])
        assert res.exit_code == 3 and "not writable" in res.output
    finally:
        os.chmod(ro, 0o700)
    assert not list(ro.iterdir()) and not missing.parent.exists()


@pytest.mark.parametrize(
    "args,match,code",
    [
        (["embed-cells", "missing.h5ad", "-o", "out.h5ad"], "does not exist", 3),
        (["embed-cells", "in.h5ad", "-o", "out.h5ad", "--layer", "nope"], "no layer 'nope'", 3),
        (["embed-cells", "in.h5ad", "-o", "out.h5ad", "--aggregator", "xx"], "Unknown aggregator", 2),
        (["embed-cells", "bad.h5ad", "-o", "out.h5ad"], "Cannot read", 3),
    ],
)
def test_cli_errors_are_one_line_and_leave_no_output(pbmc, args, match, code):
    _counts(pbmc).write_h5ad("in.h5ad")
    with open("bad.h5ad", "w") as fh:
        fh.write("not hdf5")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == code, res.output
    assert match in res.output and "Traceback" not in res.output
    assert not os.path.exists("out.h5ad")
    assert not [f for f in os.listdir(".") if f.startswith(".out.h5ad")]


def test_failure_midway_leaves_no_partial_file(pbmc, monkeypatch):
    a = _counts(pbmc)
    a.write_h5ad("in.h5ad")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", boom)
    res = CliRunner().invoke(cli, ["embed-cells", "in.h5ad", "-o", "out.h5ad"])
    assert res.exit_code != 0 and "disk full" in res.output
    assert sorted(os.listdir(".")) == ["in.h5ad"]


def test_normalised_but_not_logged_values_are_refused(pbmc):
    import scanpy as sc

    a = _counts(pbmc, n=200)
    sc.pp.normalize_total(a, target_sum=1e4)  # no log1p
    with pytest.raises(InputError, match=r"normalised but not log-transformed.*sc\.pp\.log1p"):
        scelmo.tl.embed_cells(a)
    scelmo.tl.embed_cells(a, normalize="log1p")  # the way out the message names
    assert np.isfinite(a.obsm[keys.X_SCELMO]).all()


def test_view_of_a_backed_file_is_refused_before_any_work(pbmc, tmp_path):
    path = tmp_path / "b.h5ad"
    _counts(pbmc, n=150).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(InputError, match=r"view of a backed AnnData.*to_memory"):
            scelmo.tl.embed_cells(backed[:100])
        view = backed[:100].to_memory()
        scelmo.tl.embed_cells(view)
        assert view.obsm[keys.X_SCELMO].shape[0] == 100
    finally:
        backed.file.close()



def test_gene_selection_edge_cases(pbmc):
    a = _counts(pbmc, n=150)
    with pytest.raises(InputError, match="found no variable genes in these 1 cells"):
        scelmo.tl.embed_cells(a[:1].copy())
    with pytest.raises(InputError, match="key_added must be a non-empty string"):
        scelmo.tl.embed_cells(a, key_added=None)
    # a highly_variable column as text (as R conversions leave it) is still scanpy's selection
    b = a.copy()
    hv = np.zeros(b.n_vars, dtype=bool)
    hv[:300] = True
    b.var["highly_variable"] = np.where(hv, "True", "False").astype(object)
    scelmo.tl.embed_cells(b)
    assert b.uns[keys.PROVENANCE]["embed_cells"]["gene_selection"] == "mask_var:highly_variable"


def test_hvg_flags_of_a_subset_x_choose_the_raw_genes_by_name(pbmc):
    """scanpy's usual state: log-normalised `raw`, `X` subset to its HVG flags and scaled.
    The flags (in `adata.var`, not `raw.var`) choose the genes embedded from `raw`."""
    import scanpy as sc

    a = pbmc.copy()
    a.X = a.raw.X.copy()
    a.var = a.var[[]]
    a.raw = a  # before the HVG step, as in scanpy's tutorials: raw.var has no flags
    sc.pp.highly_variable_genes(a, n_top_genes=300)
    a = a[:, a.var["highly_variable"]].copy()
    sc.pp.scale(a)
    scelmo.tl.embed_cells(a)
    info = a.uns[keys.PROVENANCE]["embed_cells"]
    assert info["matrix"] == "raw.X"
    assert info["gene_selection"] == "mask_var:highly_variable (adata.var, by name: 300 of 300)"
    assert 0 < info["n_genes_used"] <= 300
    b = a.copy()
    scelmo.tl.embed_cells(b, mask_var="highly_variable")  # named explicitly: the same genes
    np.testing.assert_array_equal(a.obsm[keys.X_SCELMO], b.obsm[keys.X_SCELMO])
    # X renamed after raw was set: its flags name no raw gene, so they are not used (warned)
    c = a.copy()
    c.var_names = [f"id{i}" for i in range(c.n_vars)]
    with pytest.warns(ScelmoWarning, match="0 of them among adata.raw's genes"):
        scelmo.tl.embed_cells(c)
    assert c.uns[keys.PROVENANCE]["embed_cells"]["gene_selection"].startswith("hvg:")
    c.var["score"] = 1.5
    with pytest.raises(InputError, match="'score' is not a True/False column"):
        scelmo.tl.embed_cells(c, mask_var="score")


def test_use_raw_with_a_layer_is_refused_not_dropped(pbmc):
    a = pbmc.copy()
    a.layers["lognorm"] = a.raw.X.copy()  # raw (log-normalised) also as a layer
    with pytest.raises(InputError, match="either `layer` or `use_raw=True`"):
        scelmo.tl.embed_cells(a, layer="lognorm", use_raw=True)
    scelmo.tl.embed_cells(a, layer="lognorm", use_raw=False)  # explicit and consistent: fine
    scelmo.tl.embed_cells(a, layer="lognorm")  # the layer wins over raw's default, as in scanpy
    assert "lognorm" in a.uns["scelmo"]["embed_cells"]["matrix"]
