"""In-silico deletion: zeroing the gene that defines the 'disease' state moves cells back."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scelmo
from scelmo import datasets, keys, testing
from scelmo.errors import InputError

pytest.importorskip("torch")

DRIVER = "CD3E"


@pytest.fixture(scope="module")
def disease():
    """pbmc68k cells, half of them 'diseased' by a strong extra expression of one gene."""
    a = datasets.pbmc68k_reduced()
    ge = testing.random_gene_embeddings(list(a.var_names), dim=32, seed=1)
    a.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(a.var_names))
    rng = np.random.default_rng(0)
    sick = rng.random(a.n_obs) < 0.5
    X = a.X.toarray()
    col = list(a.var_names).index(DRIVER)
    X[sick, col] += 4.0
    a.X = sp.csr_matrix(X)
    a.obs["state"] = np.where(sick, "disease", "healthy")
    scelmo.Model.setup_anndata(a, labels_key="state")
    model = scelmo.Model(a, head="annotation").train(max_epochs=10, seed=0)
    return a, model


def test_driver_gene_ranks_first(disease):
    a, model = disease
    candidates = [DRIVER, "MS4A1", "LYZ", "NKG7", "GNLY", "CD74"]
    df = scelmo.tl.in_silico_deletion(model, a, genes=candidates, source="disease", target="healthy")
    assert df.index[0] == DRIVER
    assert df.loc[DRIVER, "delta_cosine"] > 0
    assert df.loc[DRIVER, "target_probability_shift"] > 0.3
    assert df.loc[DRIVER, "rank_classifier"] == 1 and df.loc[DRIVER, "rank_cosine"] == 1
    assert df.loc[DRIVER, "n_cells_expressing"] == (a.obs["state"] == "disease").sum()
    res = a.uns[keys.IN_SILICO]
    assert res["source"] == "disease" and list(res["genes"]) == list(df.index)
    assert a.uns["scelmo"]["in_silico_deletion"]["n_genes"] == len(candidates)


def test_ranking_plot(disease, tmp_path):
    a, model = disease
    scelmo.tl.in_silico_deletion(model, a, genes=[DRIVER, "LYZ"], source="disease", target="healthy", max_cells=100)
    out = tmp_path / "rank.png"
    scelmo.pl.in_silico_ranking(a, save=out)
    assert out.stat().st_size > 1000
    scelmo.pl.in_silico_ranking(a, by="target_probability_shift", save=tmp_path / "p.png")


def test_bad_arguments(disease):
    a, model = disease
    with pytest.raises(InputError, match="not in the data"):
        scelmo.tl.in_silico_deletion(model, a, genes=["NOPE1"], source="disease", target="healthy")
    with pytest.raises(InputError, match="source"):
        scelmo.tl.in_silico_deletion(model, a, genes=[DRIVER], source="sick", target="healthy")
    with pytest.raises(InputError, match="groupby"):
        scelmo.tl.in_silico_deletion(model, a, genes=[DRIVER], source="disease", target="healthy", groupby="nope")
