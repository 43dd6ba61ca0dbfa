"""scelmo.r_bridge from Python: the byte payloads the R package sends, built here by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scelmo
from scelmo import r_bridge
from scelmo.testing import random_gene_embeddings

GENES = ["CD3E", "CD3D", "CD19", "MS4A1", "LYZ", "CD14", "NKG7", "GNLY", "PPBP", "HBB", "IL7R", "FCGR3A"]


def _strings(values) -> bytearray:
    """What R's writeBin(character, raw()) writes: NUL-terminated UTF-8."""
    return bytearray(b"".join(str(v).encode() + b"\0" for v in values))


def make_payload(X_cells_genes, cells, genes, obs: pd.DataFrame | None = None) -> dict:
    """Mirror of the R function scelmo:::.scelmo_payload (dgCMatrix genes x cells slots)."""
    csc = sp.csc_matrix(sp.csr_matrix(X_cells_genes).T)  # genes x cells, CSC == dgCMatrix
    csc.sort_indices()
    cols = []
    for name, s in (obs.items() if obs is not None else []):
        na = s.isna().to_numpy()
        col = {"name": name, "na": bytearray(na.astype("u1").tobytes())}
        if isinstance(s.dtype, pd.CategoricalDtype):
            codes = s.cat.codes.to_numpy().astype("<i4") + 1
            col.update(type="factor", data=bytearray(codes.tobytes()),
                       levels=_strings(s.cat.categories))
        elif s.dtype == "boolean":
            col.update(type="logical", data=bytearray(s.fillna(False).to_numpy(bool).astype("u1").tobytes()))
        elif str(s.dtype).startswith("Int"):
            col.update(type="integer", data=bytearray(s.fillna(-(2**31)).to_numpy("<i4").tobytes()))
        elif s.dtype.kind == "f":
            col.update(type="double", data=bytearray(s.to_numpy("<f8").tobytes()))
        else:
            col.update(type="character", data=_strings(["NA" if m else v for v, m in zip(s, na, strict=True)]))
        cols.append(col)
    return {
        "n_obs": len(cells), "n_vars": len(genes),
        "x": bytearray(csc.data.astype("<f8").tobytes()),
        "i": bytearray(csc.indices.astype("<i4").tobytes()),
        "p": bytearray(csc.indptr.astype("<i4").tobytes()),
        "obs_names": _strings(cells), "var_names": _strings(genes), "obs": cols,
    }


@pytest.fixture
def small(rng):
    X = sp.random(30, len(GENES), density=0.5, random_state=0, format="csr") * 10
    X.data = np.round(X.data)
    X.eliminate_zeros()
    cells = [f"cell_{i}" for i in range(29)] + ["ünïcode/ cell-29"]
    obs = pd.DataFrame({
        "flag": pd.array([True, None, False] * 10, dtype="boolean"),
        "count": pd.array([1, None, 3] * 10, dtype="Int32"),
        "score": np.r_[np.nan, np.arange(29.0)],
        "donor": pd.Categorical(["a", None, "b"] * 10, categories=["b", "a"]),
        "note": np.array(["x", None, "NA"] * 10, dtype=object),
    }, index=cells)
    return X, cells, obs


def test_payload_round_trip_keeps_nas_names_and_counts(small):
    X, cells, obs = small
    adata = r_bridge.to_anndata(make_payload(X, cells, GENES, obs))
    assert list(adata.obs_names) == cells and list(adata.var_names) == GENES
    assert (adata.X != X).nnz == 0
    assert adata.obs["flag"].dtype == "boolean" and adata.obs["flag"].isna().sum() == 10
    assert adata.obs["count"].dtype == "Int32" and adata.obs["count"].isna().sum() == 10
    assert adata.obs["score"].isna().sum() == 1 and adata.obs["score"].iloc[1] == 0.0
    assert list(adata.obs["donor"].cat.categories) == ["b", "a"]
    assert adata.obs["donor"].isna().sum() == 10 and adata.obs["donor"].iloc[0] == "a"
    # the string "NA" is a value, not a missing one
    assert adata.obs["note"].isna().sum() == 10 and adata.obs["note"].iloc[2] == "NA"
    rec = r_bridge.receive(make_payload(X, cells, GENES, obs))
    assert rec["ok"] and rec["n_na"] == [10, 10, 1, 10, 10]


def test_r_na_in_counts_is_an_error_before_any_cast_warning(small):
    """R trial: counts with an NA made numpy warn "invalid value encountered in cast" before the
    NA error. R's NA is a *signalling* NaN (0x7FF00000000007A2), whose float32 cast raises the
    invalid flag; the payload is checked before any cast now."""
    import warnings

    X, cells, _ = small
    payload = make_payload(X, cells, GENES)
    x = np.frombuffer(bytes(payload["x"]), dtype="<f8").copy()
    x[2] = np.frombuffer(np.array([0x7FF00000000007A2], dtype="<u8").tobytes(), dtype="<f8")[0]  # R's NA_real_
    payload["x"] = bytearray(x.tobytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning ahead of the error
        out = r_bridge.embed_cells(payload)
    assert not out["ok"] and "NaN or infinite values" in out["message"] and out["warnings"] == []


def test_strings_round_trip_exactly():
    names = ["a", "ü-β 1", "x y", "NA", "", "tab\tnewline\n"]
    assert r_bridge.decode_strings(r_bridge.encode_strings(names), len(names)) == names
    with pytest.raises(scelmo.ScelmoError):
        r_bridge.decode_strings(b"abc")  # no terminating NUL
    with pytest.raises(scelmo.ScelmoError):
        r_bridge.decode_strings(_strings(["a"]), 2)


def test_embed_cells_returns_column_major_float32(small, tmp_path):
    X, cells, _ = small
    ge = random_gene_embeddings(GENES, dim=8)
    ge.save(tmp_path / "ge")
    out = r_bridge.embed_cells(make_payload(X, cells, GENES), gene_embeddings=str(tmp_path / "ge"))
    assert out["ok"], out
    n, d = out["dim"]
    Z = np.frombuffer(out["Z"], dtype="<f4").reshape((n, d), order="F")
    adata = r_bridge.to_anndata(make_payload(X, cells, GENES))
    scelmo.tl.embed_cells(adata, gene_embeddings=ge, use_raw=False)
    np.testing.assert_array_equal(Z, adata.obsm["X_scelmo"])
    assert out["provenance"]["aggregator"] == "wa" and out["provenance"]["matrix"] == "counts"


def test_errors_and_warnings_come_back_as_primitives(small):
    X, cells, _ = small
    bad = ["ENSG99999999999", "ENSG99999999998"]
    out = r_bridge.embed_cells(make_payload(X[:, :2], cells, bad))
    assert out == {**out, "ok": False, "error_class": "InputError"}
    assert "Ensembl" in out["message"]
    empty = r_bridge.embed_cells(make_payload(X[:0], [], GENES))
    assert not empty["ok"] and "no cells" in empty["message"]
    broken = dict(make_payload(X, cells, GENES))
    broken["p"] = bytearray(b"\0" * 8)
    assert not r_bridge.embed_cells(broken)["ok"]


def test_embed_genes_and_config():
    out = r_bridge.embed_genes(_strings(["CD3E", "NOTAGENE_XYZ", "LYZ"]), 3, config={"embed.model": "local/all-MiniLM-L6-v2-int8"})
    assert out["ok"], out
    assert r_bridge.decode_strings(out["genes"]) == ["CD3E", "LYZ"]
    n, d = out["dim"]
    assert (n, d) == (2, 384)
    cfg = r_bridge.config_show({"aggregate": {"method": "aa"}})
    assert cfg["ok"] and cfg["config"]["aggregate"]["method"] == "aa"
    bad = r_bridge.config_show({"aggregate": {"nope": 1}})
    assert not bad["ok"] and bad["error_class"] == "ConfigError"
    assert r_bridge.info()["protocol"] == r_bridge.PROTOCOL


def test_annotate_zero_shot_and_transfer(small):
    X, cells, obs = small
    out = r_bridge.annotate(make_payload(X, cells, GENES), cell_types=_strings(["T cell", "B cell"]), n_cell_types=2)
    assert out["ok"], out
    labels = r_bridge.decode_strings(out["labels"], len(cells))
    assert set(labels) <= {"T cell", "B cell", "unknown"}
    scores = np.frombuffer(out["scores"], dtype="<f8")
    assert scores.shape == (len(cells),) and ((scores >= 0) & (scores <= 1)).all()
    # kNN transfer from a reference whose label column has NAs (they are not voted with)
    ref = make_payload(X, cells, GENES, obs[["donor"]])
    out = r_bridge.annotate(make_payload(X, cells, GENES), reference=ref, ref_labels="donor", k=3)
    assert out["ok"], out
    assert set(r_bridge.decode_strings(out["labels"], len(cells))) <= {"a", "b"}
    missing = r_bridge.annotate(make_payload(X, cells, GENES), reference=ref, ref_labels="nope")
    assert not missing["ok"] and "nope" in missing["message"]


def test_annotate_transfer_gets_the_labels_right():
    """Reference and query are different cells of three groups with their own marker genes."""
    Xr, cells_r, obs_r = _blocks(90, seed=0)
    Xq, cells_q, obs_q = _blocks(60, seed=1)
    ref = make_payload(Xr, cells_r, GENES, obs_r)
    out = r_bridge.annotate(make_payload(Xq, cells_q, GENES), reference=ref, ref_labels="type", k=5)
    assert out["ok"], out
    pred = np.array(r_bridge.decode_strings(out["labels"], len(cells_q)))
    assert (pred == obs_q["type"].astype(str).to_numpy()).mean() >= 0.9
    scores = np.frombuffer(out["scores"], dtype="<f8")
    assert np.median(scores) >= 0.8  # vote shares: most neighbours agree


def test_annotate_without_tl_annotate_is_a_clear_error(small, monkeypatch):
    monkeypatch.delattr(scelmo.tl, "annotate", raising=False)  # an older Python package
    X, cells, _ = small
    out = r_bridge.annotate(make_payload(X, cells, GENES), cell_types=_strings(["T cell", "B cell"]), n_cell_types=2)
    assert not out["ok"] and "tl.annotate" in out["message"]


def test_50k_cells_decode(rng):
    """The R-side crossing size; its speed is printed by the R tests, not asserted here."""
    n_cells, n_genes, per_cell = 50_000, 2_000, 100  # 5 M non-zeros, like the R-side test
    p = np.arange(0, (n_cells + 1) * per_cell, per_cell, dtype="<i4")
    i = np.tile(np.arange(0, n_genes, n_genes // per_cell, dtype="<i4"), n_cells)
    x = rng.poisson(3, size=i.size).astype("<f8") + 1
    payload = {
        "n_obs": n_cells, "n_vars": n_genes, "x": bytearray(x.tobytes()), "i": bytearray(i.tobytes()),
        "p": bytearray(p.tobytes()), "obs_names": _strings(f"c{j}" for j in range(n_cells)),
        "var_names": _strings(f"g{j}" for j in range(n_genes)), "obs": [],
    }
    adata = r_bridge.to_anndata(payload)
    assert adata.shape == (n_cells, n_genes) and adata.X.nnz == x.size
    assert adata.X.sum() == x.sum()
    assert adata.obs_names[-1] == f"c{n_cells - 1}" and adata.var_names[-1] == f"g{n_genes - 1}"


def test_rds_without_the_r_extra_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from click.testing import CliRunner

    from scelmo.cli import cli
    from scelmo.io import _rds as rio

    monkeypatch.setattr(rio, "_STATE", {})
    monkeypatch.setitem(sys.modules, "anndata2ri", None)  # import fails like a missing extra
    path = tmp_path / "x.rds"
    path.write_bytes(b"not really")
    with pytest.raises(scelmo.ScelmoError, match=r"scelmo\[r\]"):
        scelmo.io.read_rds(path)
    res = CliRunner().invoke(cli, ["embed-cells", str(path), "-o", str(tmp_path / "o.h5ad")])
    assert res.exit_code != 0 and "scelmo[r]" in res.output
    with pytest.raises(AttributeError):
        scelmo.io.no_such_function  # noqa: B018


def test_annotate_with_a_saved_gene_table(tmp_path):
    """The R wrapper's config gene.embeddings reached RunScELMo but not AnnotateScELMo: a reference
    embedded with a saved table could not be annotated against (tl.annotate now refuses another
    table), so the table is passed through."""
    import scelmo

    Xr, cells_r, obs_r = _blocks(90, seed=0)
    Xq, cells_q, _ = _blocks(60, seed=1)
    ge = scelmo.tl.embed_genes(genes=GENES, progress=False)
    shuffled = scelmo.GeneEmbeddings(ge.genes, ge.vectors[::-1].copy(), {"embed_model": "reversed"})
    shuffled.save(tmp_path / "table")
    ref = make_payload(Xr, cells_r, GENES, obs_r)
    out = r_bridge.annotate(make_payload(Xq, cells_q, GENES), reference=ref, ref_labels="type", k=5,
                            gene_embeddings=str(tmp_path / "table"))
    assert out["ok"], out
    assert out["provenance"]["method"] == "knn_transfer"
    bad = r_bridge.annotate(make_payload(Xq, cells_q, GENES), reference=ref, ref_labels="type", k=5,
                            gene_embeddings=str(tmp_path / "no_such_table"))
    assert not bad["ok"] and "no_such_table" in bad["message"]  # the table given is the one read


def _blocks(n_cells: int, seed: int = 0):
    """Counts with three groups, each expressing its own block of four GENES."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(0.3, size=(n_cells, len(GENES))).astype(float)
    group = np.arange(n_cells) % 3
    for g in range(3):
        X[np.ix_(group == g, range(4 * g, 4 * g + 4))] += rng.poisson(8, size=((group == g).sum(), 4))
    cells = [f"c{j}" for j in range(n_cells)]
    obs = pd.DataFrame({"type": pd.Categorical(np.array(["T", "B", "Mono"])[group])}, index=cells)
    return sp.csr_matrix(X), cells, obs


def test_train_predict_save_load_round_trip(tmp_path):
    ge = random_gene_embeddings(GENES, dim=16)
    ge.save(tmp_path / "ge")
    X, cells, obs = _blocks(150)
    fit = r_bridge.train(make_payload(X, cells, GENES, obs), head="annotation", labels_key="type",
                         gene_embeddings=str(tmp_path / "ge"), training={"max_epochs": 10, "seed": 0},
                         head_options={"knn_k": 5})
    assert fit["ok"], fit
    info = fit["info"]
    assert info["head"] == "annotation" and sorted(info["classes"]) == ["B", "Mono", "T"]
    assert r_bridge.decode_strings(info["genes"], info["n_genes"]) == GENES
    assert info["normalize"] == "log1p" and info["train"]["n_cells"] == 150 and "loss" in info["history"]
    model = fit["model"]

    Xq, qcells, qobs = _blocks(60, seed=1)
    drop = [GENES.index("HBB")]  # a gene the query lacks: zero, with a warning
    keep = [j for j in range(len(GENES)) if j not in drop]
    extra = sp.csr_matrix(np.ones((60, 1)))  # and one the model never saw: ignored
    qgenes = [GENES[j] for j in keep] + ["EXTRA1"]
    payload = make_payload(sp.hstack([Xq[:, keep], extra], format="csr"), qcells, qgenes)
    out = r_bridge.predict(payload, model)
    assert out["ok"], out
    assert any("1 of the model's 12 genes are not in the query" in w for w in out["warnings"]), out["warnings"]
    labels = r_bridge.decode_strings(out["labels"], 60)
    assert np.mean(np.array(labels) == qobs["type"].astype(str).to_numpy()) > 0.9
    scores = np.frombuffer(out["scores"], dtype="<f8")
    assert ((scores > 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores * 5, np.round(scores * 5), atol=1e-6)  # vote shares of knn_k = 5
    n, d = out["dim"]
    assert n == 60 and d >= 2
    cls = r_bridge.predict(payload, model, method="classifier")
    assert cls["ok"] and np.mean(np.array(r_bridge.decode_strings(cls["labels"], 60)) == qobs["type"].astype(str).to_numpy()) > 0.9

    # a query named by Ensembl IDs meets the symbol-trained model by symbol (trial finding:
    # it shared "0 of the model's genes")
    from scelmo.knowledge import roles

    ensembl: dict[str, str] = {}
    for gene_id, symbol in roles.vocabulary().ensembl.items():
        if gene_id.startswith("ENSG"):
            ensembl.setdefault(symbol, gene_id)
    ids = [ensembl[g] for g in qgenes[:-1]] + ["EXTRA1"]
    by_id = r_bridge.predict(make_payload(sp.hstack([Xq[:, keep], extra], format="csr"), qcells, ids), model)
    assert by_id["ok"], by_id
    assert by_id["labels"] == out["labels"] and by_id["Z"] == out["Z"]

    saved = r_bridge.save(model, str(tmp_path / "m"))
    assert saved["ok"], saved
    assert not r_bridge.save(model, str(tmp_path / "m"))["ok"]  # exists, no overwrite
    loaded = r_bridge.load(str(tmp_path / "m"))
    assert loaded["ok"], loaded
    assert loaded["info"]["classes"] == info["classes"] and loaded["info"]["normalize"] == "log1p"
    again = r_bridge.predict(payload, loaded["model"])
    assert again["labels"] == out["labels"] and again["Z"] == out["Z"]
    # a model saved from Python (no r_bridge.json) loads and predicts the same
    (tmp_path / "m" / r_bridge.SIDECAR).unlink()
    plain = r_bridge.load(str(tmp_path / "m"))
    assert plain["ok"] and plain["info"]["normalize"] == "unknown"
    assert r_bridge.predict(payload, plain["model"])["labels"] == out["labels"]


def test_train_and_predict_errors_say_what_to_do(tmp_path):
    ge = random_gene_embeddings(GENES, dim=8)
    ge.save(tmp_path / "ge")
    X, cells, obs = _blocks(60)
    payload = make_payload(X, cells, GENES, obs)
    bad = r_bridge.train(payload, head="nope", labels_key="type", gene_embeddings=str(tmp_path / "ge"))
    assert not bad["ok"] and "Unknown head 'nope'" in bad["message"] and "annotation" in bad["message"]
    assert bad["error_class"] == "InputError"  # the user's input: scelmo_input_error in R
    pert = r_bridge.train(payload, head="perturbation", gene_embeddings=str(tmp_path / "ge"))
    assert not pert["ok"] and "Python API" in pert["message"]
    missing = r_bridge.train(payload, labels_key="celltype", gene_embeddings=str(tmp_path / "ge"))
    assert not missing["ok"] and "celltype" in missing["message"]
    fit = r_bridge.train(payload, labels_key="type", gene_embeddings=str(tmp_path / "ge"),
                         training={"max_epochs": 2})
    assert fit["ok"], fit
    other = make_payload(X, cells, [f"ENSG{j:011d}" for j in range(len(GENES))])
    out = r_bridge.predict(other, fit["model"])
    assert not out["ok"] and "shares 0 of the model's 12 genes" in out["message"] and "trained on other genes" in out["message"]
    assert not r_bridge.predict(payload, object())["ok"]
    assert "knn" in r_bridge.predict(payload, fit["model"], method="vote")["message"]
    assert not r_bridge.load(str(tmp_path / "nowhere"))["ok"]


def test_annotate_transfer_embeds_the_query_as_python_does():
    """With no scelmo reduction, a query of one cell type is embedded with its reference's
    statistics, as `scelmo.tl.annotate` does, not on its own first (R trial: 0.33 vs 0.62)."""
    Xr, cells_r, obs_r = _blocks(90, seed=0)
    Xq, cells_q, obs_q = _blocks(90, seed=1)
    only_t = np.flatnonzero(obs_q["type"].astype(str).to_numpy() == "T")
    query = make_payload(Xq[only_t], [cells_q[i] for i in only_t], GENES)
    ref = make_payload(Xr, cells_r, GENES, obs_r)
    out = r_bridge.annotate(query, reference=ref, ref_labels="type", k=5)
    assert out["ok"], out
    q, r = r_bridge.to_anndata(query), r_bridge.to_anndata(ref)
    scelmo.tl.annotate(q, reference=r, ref_labels="type", k=5, progress=False)
    labels = r_bridge.decode_strings(out["labels"], len(only_t))
    assert labels == list(q.obs["scelmo_label"].astype(str))
    np.testing.assert_allclose(np.frombuffer(out["scores"], dtype="<f8"), q.obs["scelmo_label_score"], rtol=1e-6)
    assert out["provenance"]["query_gene_stats"] == "reference"


def test_predict_normalises_over_the_models_genes_and_leaves_empty_cells_unlabelled(tmp_path):
    ge = random_gene_embeddings(GENES, dim=16)
    ge.save(tmp_path / "ge")
    X, cells, obs = _blocks(150)
    fit = r_bridge.train(make_payload(X, cells, GENES, obs), labels_key="type", gene_embeddings=str(tmp_path / "ge"),
                         training={"max_epochs": 5, "seed": 0})
    assert fit["ok"], fit
    Xq, qcells, _ = _blocks(30, seed=1)
    Xq = Xq.tolil()
    Xq[:2] = 0  # two cells with no expression
    Xq = Xq.tocsr()
    plain = r_bridge.predict(make_payload(Xq, qcells, GENES), fit["model"])
    # a whole transcriptome of other genes: not the model's, so no change (library sizes included)
    other = sp.csr_matrix(np.random.default_rng(0).poisson(5.0, size=(30, 40)).astype(float))
    wide = r_bridge.predict(make_payload(sp.hstack([Xq, other], format="csr"), qcells,
                                         GENES + [f"OTHER{j}" for j in range(40)]), fit["model"])
    assert plain["ok"] and wide["ok"], (plain, wide)
    assert wide["labels"] == plain["labels"] and wide["Z"] == plain["Z"]
    labels = r_bridge.decode_strings(plain["labels"], 30)
    scores = np.frombuffer(plain["scores"], dtype="<f8")
    assert labels[:2] == ["", ""] and np.isnan(scores[:2]).all() and all(labels[2:])
    assert any("2 query cells express none of the model's genes" in w for w in plain["warnings"])
    few = r_bridge.predict(make_payload(Xq[:, :1], qcells, GENES[:1]), fit["model"])
    assert not few["ok"] and "min.overlap" in few["message"]
    for bad in (2, None, [], "half"):
        out = r_bridge.predict(make_payload(Xq, qcells, GENES), fit["model"], min_overlap=bad)
        assert out["error_class"] == "InputError" and "(0, 1]" in out["message"], out


def _trained_with(genes, tmp_path):
    """An annotation model trained from R on the toy blocks plus two more genes (random counts)."""
    ge = random_gene_embeddings(genes, dim=16)
    ge.save(tmp_path / "ge")
    X, cells, obs = _blocks(90)
    rng = np.random.default_rng(3)
    X = sp.hstack([X, sp.csr_matrix(rng.poisson(2.0, size=(90, 2)).astype(float))], format="csr")
    fit = r_bridge.train(make_payload(X, cells, genes, obs), head="annotation", labels_key="type",
                         gene_embeddings=str(tmp_path / "ge"), training={"max_epochs": 2, "seed": 0})
    assert fit["ok"], fit
    return fit, rng


def test_predict_never_feeds_one_query_gene_to_two_model_genes(tmp_path):
    """R trial finding: a query without the model gene AGO2 but with CASC7 (a model gene too,
    and an old alias of AGO2) had CASC7's counts put in AGO2's place as well, so they counted
    twice; and the warning said "-1 query genes ... are ignored"."""
    from scelmo.knowledge import roles

    assert roles.vocabulary().resolve(["CASC7"]).symbols == ["AGO2"]
    genes = [*GENES, "AGO2", "CASC7"]
    fit, rng = _trained_with(genes, tmp_path)
    Xq, qcells, _ = _blocks(30, seed=1)
    casc7 = sp.csr_matrix(rng.poisson(2.0, size=(30, 1)).astype(float))
    without = r_bridge.predict(make_payload(sp.hstack([Xq, casc7], format="csr"), qcells, [*GENES, "CASC7"]),
                               fit["model"])
    zero = r_bridge.predict(make_payload(sp.hstack([Xq, sp.csr_matrix((30, 1)), casc7], format="csr"), qcells,
                                         [*GENES, "AGO2", "CASC7"]), fit["model"])
    assert without["ok"] and zero["ok"], (without, zero)
    assert without["Z"] == zero["Z"] and without["labels"] == zero["labels"]  # AGO2 absent = AGO2 all zero
    assert any("1 of the model's 14 genes are not in the query" in w and " 0 query genes" in w
               for w in without["warnings"]), without["warnings"]


def test_a_model_keeps_each_training_gene_under_its_own_name(tmp_path):
    """R trial (Kang): with CASC7 (an old alias of AGO2) before AGO2 in the training genes, the
    model's R gene list named AGO2 "CASC7" too (the symbol map inverted, first name winning): two
    model slots read CASC7's column, and AGO2's counts were never read."""
    genes = [*GENES, "CASC7", "AGO2"]
    fit, rng = _trained_with(genes, tmp_path)
    assert r_bridge._r_genes(fit["model"]) == genes
    Xq, qcells, _ = _blocks(30, seed=1)
    two = rng.poisson(2.0, size=(30, 2)).astype(float)
    base = r_bridge.predict(make_payload(sp.hstack([Xq, sp.csr_matrix(two)], format="csr"), qcells, genes),
                            fit["model"])
    two[:, 1] = 0  # AGO2's counts: read by the model now
    moved = r_bridge.predict(make_payload(sp.hstack([Xq, sp.csr_matrix(two)], format="csr"), qcells, genes),
                             fit["model"])
    assert base["ok"] and moved["ok"] and base["Z"] != moved["Z"]
    # a model saved before the names were recorded still maps each gene to one column
    fit["model"]._r_bridge.pop("genes")
    assert r_bridge._r_genes(fit["model"]) == genes


def test_sync_environ_sets_and_unsets_exactly_what_r_changed():
    """R trial finding: Sys.setenv() after Python started was not seen (os.environ is read once);
    a review: the variable an api_key_env names (any name) must reach Python too."""
    import os

    saved = dict(os.environ)
    os.environ["SCELMO_OLD__SETTING"] = "1"
    os.environ["PYTHON_OWN_VAR"] = "kept"
    try:
        assert r_bridge.environ()["PYTHON_OWN_VAR"] == "kept"
        assert r_bridge.sync_environ(["SCELMO_AGGREGATE__METHOD", "MY_SCELMO_KEY"], ["aa", "sk-x"],
                                     ["SCELMO_OLD__SETTING"])["ok"]
        assert os.environ["SCELMO_AGGREGATE__METHOD"] == "aa" and os.environ["MY_SCELMO_KEY"] == "sk-x"
        assert "SCELMO_OLD__SETTING" not in os.environ  # unset in R
        assert os.environ["PYTHON_OWN_VAR"] == "kept"  # not R's business
    finally:
        os.environ.clear()
        os.environ.update(saved)
