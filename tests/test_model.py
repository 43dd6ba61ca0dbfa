"""scelmo.Model with the annotation head: real torch training on pbmc68k_reduced."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import scelmo
from scelmo import datasets, keys, metrics, testing
from scelmo.errors import ConfigError, InputError, ScelmoError, ScelmoWarning, UnknownComponentError

torch = pytest.importorskip("torch")


def _with_vectors(adata, dim=32, seed=0):
    ge = testing.random_gene_embeddings(list(adata.var_names), dim=dim, seed=seed)
    adata.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(adata.var_names))
    return adata


@pytest.fixture(scope="module")
def split():
    a = _with_vectors(datasets.pbmc68k_reduced())
    perm = np.random.default_rng(0).permutation(a.n_obs)
    return a[np.sort(perm[210:])].copy(), a[np.sort(perm[:210])].copy()


@pytest.fixture(scope="module")
def trained(split):
    train, _ = split
    scelmo.Model.setup_anndata(train, labels_key="bulk_labels")
    model = scelmo.Model(train, head="annotation")
    model.train(max_epochs=15, seed=0)
    return model


def test_annotation_beats_chance_on_held_out_cells(trained, split):
    _, test = split
    y = test.obs["bulk_labels"].astype(str).to_numpy()
    majority = max(np.mean(y == c) for c in set(y))  # ~0.34
    knn = metrics.accuracy(y, trained.predict(test, method="knn"))
    clf = metrics.accuracy(y, trained.predict(test, method="classifier"))
    assert knn > majority + 0.2
    assert clf > majority + 0.15
    hist = trained.history
    assert {"loss", "ce", "triplet", "seconds"} <= set(hist.columns)
    assert hist["val_score"].notna().any()
    trained_epochs = hist[hist["epoch"] >= 1]  # epoch 0: the untrained (zero-shot) start, validated only
    assert trained_epochs["loss"].iloc[-1] < trained_epochs["loss"].iloc[0]


def test_an_interrupted_re_train_keeps_the_previous_training(split, monkeypatch, tmp_path):
    """Notebook trial: interrupting a second `train()` left `is_trained` True with a reset head:
    `predict` failed with KeyError 'reference_latent' and `save` wrote the broken model."""
    train, test = split
    a = train.copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    model = scelmo.Model(a, head="annotation")
    model.train(max_epochs=3, seed=0)
    before, info = model.predict(test), dict(model.train_info)
    head_type = type(model.head)
    calls = {"n": 0}
    real = head_type._one_epoch

    def stop_in_the_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(head_type, "_one_epoch", stop_in_the_second_epoch)
    with pytest.warns(ScelmoWarning, match="keeps its previous training"), pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=40, seed=1)
    monkeypatch.undo()
    assert model.is_trained and model.train_info == info
    np.testing.assert_array_equal(model.predict(test), before)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(scelmo.Model.load(tmp_path / "m", a).predict(test), before)
    # a first training that stops leaves no "trained" model behind
    fresh = scelmo.Model(a, head="annotation")
    calls["n"] = 0
    monkeypatch.setattr(head_type, "_one_epoch", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fresh.train(max_epochs=5, seed=0)
    assert not fresh.is_trained


def test_predict_probabilities_and_obs_keys(trained, split):
    _, test = split
    q = test.copy()
    probs = trained.predict(q, method="classifier", return_probabilities=True, key_added=keys.LABEL)
    assert list(probs.columns) == trained.head.classes
    np.testing.assert_allclose(probs.to_numpy().sum(1), 1.0, atol=1e-5)
    assert q.obs[keys.LABEL].tolist() == probs.idxmax(axis=1).tolist()
    assert np.allclose(q.obs[f"{keys.LABEL}_score"], probs.max(axis=1), atol=1e-6)
    votes = trained.predict(q, method="knn", return_probabilities=True)
    assert np.allclose(votes.to_numpy().sum(1), 1.0, atol=1e-4)
    assert q.uns["scelmo"]["predict"]["method"] == "classifier"


def test_latent_representation_written_only_when_asked(trained, split):
    _, test = split
    q = test.copy()
    uns_before = set(q.uns)
    z = trained.get_latent_representation(q)
    assert z.shape == (q.n_obs, 32) and z.dtype == np.float32
    assert keys.X_SCELMO_FINETUNED not in q.obsm
    trained.get_latent_representation(q, key_added=keys.X_SCELMO_FINETUNED)
    np.testing.assert_array_equal(q.obsm[keys.X_SCELMO_FINETUNED], z)
    assert set(q.uns) - uns_before <= {"scelmo"}  # nothing but provenance


def test_save_load_round_trip_gives_identical_predictions(trained, split, tmp_path):
    _, test = split
    path = trained.save(tmp_path / "model")
    assert {"model.json", "head", "gene_embeddings"} <= {p.name for p in path.iterdir()}
    info = json.loads((path / "model.json").read_text())
    assert info["classes"] == trained.head.classes and info["setup"]["labels_key"] == "bulk_labels"
    assert len(info["train_genes"]) == 765 and len(info["gene_embeddings_sha256"]) == 64
    q = test.copy()
    loaded = scelmo.Model.load(path, adata=q)
    # on one device: a GPU-trained model stays on the GPU and the loaded one is on CPU, where float
    # sums may differ in the last bit (seen on an H200: 6e-8)
    np.testing.assert_array_equal(loaded.get_latent_representation(q, device="cpu"),
                                  trained.get_latent_representation(q, device="cpu"))
    for method in ("knn", "classifier"):
        np.testing.assert_array_equal(loaded.predict(q, method=method, device="cpu"),
                                      trained.predict(q, method=method, device="cpu"))
    unbound = scelmo.Model.load(path)
    with pytest.raises(InputError, match="adata="):
        unbound.predict()
    again = unbound.save(tmp_path / "again")
    assert json.loads((again / "model.json").read_text())["train_genes"] == info["train_genes"]
    with pytest.raises(ScelmoError, match="exists"):
        trained.save(path)
    trained.save(path, overwrite=True)
    with pytest.raises(ScelmoError, match="not a saved"):
        scelmo.Model.load(tmp_path)
    with pytest.raises(InputError, match="holds other files"):  # never replaces a folder it did not write
        trained.save(tmp_path, overwrite=True)
    assert path.exists()


def test_corrupt_saved_gene_table_is_detected(trained, tmp_path):
    path = trained.save(tmp_path / "m")
    vec = np.load(path / "gene_embeddings" / "vectors.npy")
    vec[0, 0] += 1
    np.save(path / "gene_embeddings" / "vectors.npy", vec)
    with pytest.raises(ScelmoError):
        scelmo.Model.load(path)


def test_same_seed_same_model_other_seed_differs(split):
    train, test = split
    a = train.copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    z = []
    for seed in (3, 3, 4):
        m = scelmo.Model(a, head="annotation").train(max_epochs=3, seed=seed, early_stopping=False)
        z.append(m.get_latent_representation(test))
    np.testing.assert_array_equal(z[0], z[1])
    assert not np.allclose(z[0], z[2])


def test_query_with_gene_subset_and_other_order(trained, split):
    _, test = split
    y = test.obs["bulk_labels"].astype(str).to_numpy()
    genes = list(test.var_names[::-1][:500])  # 500 of 765 genes, reversed order
    q = test[:, genes].copy()
    pred = trained.predict(q)
    assert metrics.accuracy(y, pred) > 0.45
    # the query's own vectors are ignored for genes the model knows: same result without them
    q2 = q.copy()
    del q2.varm[keys.GENE_EMBEDDING]
    np.testing.assert_array_equal(trained.predict(q2), pred)


def test_dense_input_gives_the_same_embedding_as_sparse(trained, split):
    _, test = split
    dense = test.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(trained.get_latent_representation(dense), trained.get_latent_representation(test), rtol=1e-5, atol=1e-6)


def test_threads_are_restored_after_training(split):
    train, _ = split
    a = train[:200].copy()
    before = torch.get_num_threads()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    m = scelmo.Model(a, head="annotation").train(max_epochs=1, early_stopping=False)
    assert torch.get_num_threads() == before
    assert m.train_info["device"] == "cpu" or torch.cuda.is_available()
    # the epoch-0 row (the untrained start, validated only) is not counted as an epoch
    assert list(m.history["epoch"]) == [0.0, 1.0] and m.train_info["epochs"] == 1


def test_errors_are_clear(split):
    train, _ = split
    fresh = train.copy()
    fresh.uns.pop(keys.SETUP, None)  # the registry travels with copies; this one is not set up
    with pytest.raises(InputError, match="setup_anndata"):
        scelmo.Model(fresh)
    scelmo.Model.setup_anndata(fresh)
    with pytest.raises(InputError, match="labels"):
        scelmo.Model(fresh, head="annotation")
    with pytest.raises(InputError, match="not a column"):
        scelmo.Model.setup_anndata(fresh, labels_key="nope")
    no_vec = train[:, :20].copy()  # no vectors: Model embeds the genes itself, so unknown names fail there
    del no_vec.varm[keys.GENE_EMBEDDING]
    no_vec.var_names = [f"not_a_gene_{i}" for i in range(no_vec.n_vars)]
    scelmo.Model.setup_anndata(no_vec, labels_key="bulk_labels")
    with pytest.raises(InputError, match="could be matched"):
        scelmo.Model(no_vec)
    scelmo.Model.setup_anndata(fresh, labels_key="bulk_labels")
    with pytest.raises(ConfigError, match="latent"):
        scelmo.Model(fresh, head="annotation", latnet=16)
    with pytest.raises(UnknownComponentError, match="annotation"):
        scelmo.Model(fresh, head="anotation")
    model = scelmo.Model(fresh, head="annotation")
    with pytest.raises(ScelmoError, match="not trained"):
        model.predict()
    with pytest.raises(ConfigError, match="max_epochs"):
        model.train(max_epochs=0)
    with pytest.raises(ConfigError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        model.train(max_epochs=1, device="cuda")


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_nan_or_negative_expression_is_an_input_error(split, bad):
    train, _ = split
    a = train[:100].copy()
    a.X = a.X.toarray()
    a.X[5, 3] = bad
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    with pytest.raises(InputError, match="row index 5, counting from 0"):
        scelmo.Model(a).train(max_epochs=1)


def test_scaled_x_is_rejected_but_raw_works(pbmc):
    _with_vectors(pbmc)
    scelmo.Model.setup_anndata(pbmc, labels_key="bulk_labels", use_raw=False)  # scanpy's X is z-scored
    with pytest.raises(InputError, match="negative"):
        scelmo.Model(pbmc).train(max_epochs=1)
    scelmo.Model.setup_anndata(pbmc, labels_key="bulk_labels")  # raw (log-normalised) by default
    m = scelmo.Model(pbmc).train(max_epochs=1, early_stopping=False)
    assert m.get_latent_representation().shape == (700, 32)


def test_real_offline_gene_embeddings(split):
    """The default offline gene vectors (MiniLM over the bundled gene texts) train too."""
    train, test = split
    top = np.argsort(-np.asarray(train.X.mean(0)).ravel())[:250]  # 250 genes: keeps a cold cache fast
    a, q = train[:, np.sort(top)].copy(), test.copy()
    del a.varm[keys.GENE_EMBEDDING]
    scelmo.tl.embed_genes(a)
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    m = scelmo.Model(a).train(max_epochs=10)
    y = q.obs["bulk_labels"].astype(str).to_numpy()
    assert metrics.accuracy(y, m.predict(q)) > 0.6


def test_core_imports_do_not_import_torch():
    code = "import sys, scelmo, scelmo.tl, scelmo.model; scelmo.Model; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_head_contract_capabilities_and_defaults():
    """Model checks declared capabilities; the contract's optional methods fail clearly by default."""
    from scelmo.plugin import TaskHead

    ann, integ, pert = (scelmo.plugin.heads.get(n) for n in ("annotation", "integration", "perturbation"))
    assert ann.capabilities == {"latent", "labels", "knn"} and ann.requires_labels
    assert integ.capabilities == {"latent"} and pert.capabilities == {"latent", "perturbation"}

    class Bare(TaskHead):
        name = "bare"

        def fit(self, X, labels=None, **_):
            return self

        def save_state(self, directory):
            pass

        @classmethod
        def load_state(cls, directory):
            return cls()

    head = Bare()
    assert list(head.classes) == [] and list(head.history) == [] and head.best_score is None
    for call in (lambda: head.transform(np.ones((2, 3))), lambda: head.predict_proba(np.ones((2, 3))),
                 lambda: head.knn_fractions(np.ones((2, 3))), lambda: head.predict_expression(np.ones((2, 3)), "A")):
        with pytest.raises(ScelmoError, match="'bare' head does not"):
            call()
    with pytest.raises(ValueError, match="Unknown head capability"):
        head.supports("labelz")


def test_renamed_head_keywords_still_work(split):
    train, _ = split
    X = train.raw.X if train.raw is not None else train.X
    E = np.asarray(train.varm[keys.GENE_EMBEDDING], dtype=np.float32)
    head = scelmo.plugin.heads.create("annotation")
    y = train.obs["bulk_labels"].astype(str).to_numpy()
    with pytest.warns(DeprecationWarning, match="`embeddings=` is deprecated; use `X=`"):
        head.fit(embeddings=X, labels=y, gene_vectors=E, training={"max_epochs": 1, "progress": False})
    with pytest.raises(InputError, match="give `X=` only"):
        head.predict(X, embeddings=X, gene_vectors=E)
    assert head.predict(X[:5], gene_vectors=E).shape == (5,)


def test_predict_options_and_a_removed_labels_column_are_clear_errors(trained, split):
    train, test = split
    for k in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="k must be a whole number"):
            trained.predict(test, k=k)
    assert len(trained.predict(test, k=np.int64(3))) == test.n_obs  # numpy integers are fine
    with pytest.raises(InputError, match="key_added"):
        trained.predict(test, key_added="")
    a = train.copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    model = scelmo.Model(a)
    del a.obs["bulk_labels"]
    with pytest.raises(InputError, match=r"no column 'bulk_labels', registered as labels_key.*setup_anndata"):
        model.train(max_epochs=1)


@pytest.mark.parametrize("method", ["knn", "classifier"])
def test_cells_expressing_none_of_the_models_genes_are_unknown(trained, split, method):
    """Trial finding: an empty cell got a class (the one its zero vector happened to be
    nearest) with a confident score; now it is "unknown", score 0, probabilities NaN."""
    from scelmo.errors import ScelmoWarning

    _, test = split
    q = test[:12].copy()
    X = q.X.toarray() if hasattr(q.X, "toarray") else np.array(q.X)
    X[[2, 7]] = 0.0
    q.X = X
    if q.raw is not None:
        q.raw = q.copy()  # (the model reads raw when set up so; keep it in step)
    with pytest.warns(ScelmoWarning, match=r"2 of 12 cells express none of the genes"):
        probs = trained.predict(q, method=method, return_probabilities=True, key_added=keys.LABEL)
    assert np.isnan(probs.iloc[[2, 7]].to_numpy()).all() and not np.isnan(probs.drop(probs.index[[2, 7]])).any().any()
    labels = q.obs[keys.LABEL].astype(str).to_numpy()
    assert (labels[[2, 7]] == "unknown").all() and "unknown" not in np.delete(labels, [2, 7])
    assert (q.obs[f"{keys.LABEL}_score"].to_numpy()[[2, 7]] == 0).all()
    assert list(q.obs[keys.LABEL].cat.categories) == [*trained.head.classes, "unknown"]
    with pytest.warns(ScelmoWarning):
        assert list(trained.predict(q, method=method)[[2, 7]]) == ["unknown", "unknown"]


def test_queries_with_counts_aliases_or_ensembl_ids_get_the_same_predictions(split):
    """Trial findings: a query of raw counts was read as log values (accuracy 0.84 -> 0.33,
    no warning), and query genes named by an alias (IGJ for JCHAIN) or an Ensembl ID were
    not found in the model (0.84 -> 0.18). Counts are now log-normalised as in
    tl.embed_cells, and names resolve through the gene vocabulary."""
    import anndata as ad
    import pandas as pd

    from scelmo.knowledge import roles

    train, test = split
    top = np.argsort(-np.asarray(train.X.mean(0)).ravel())[:250]
    a = train[:, np.sort(top)].copy()
    del a.varm[keys.GENE_EMBEDDING]
    scelmo.tl.embed_genes(a)
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    m = scelmo.Model(a).train(max_epochs=4, seed=0)
    base = test.copy()
    del base.varm[keys.GENE_EMBEDDING]
    pred = m.predict(base)
    # the same cells as raw counts (no raw, no vectors): log-normalised on the fly, exactly as
    # scanpy's normalize_total + log1p would
    import scanpy as sc

    counts = ad.AnnData(test.layers["counts"].copy(), obs=test.obs.copy(), var=pd.DataFrame(index=test.var_names))
    scanpy_log = counts.copy()
    sc.pp.normalize_total(scanpy_log, target_sum=1e4)
    sc.pp.log1p(scanpy_log)
    np.testing.assert_allclose(m.get_latent_representation(counts), m.get_latent_representation(scanpy_log),
                               atol=1e-4)
    assert len(pred) == test.n_obs
    # the same cells with Ensembl IDs, and with an alias for a model gene
    vocab = roles.vocabulary()
    ens = {sym: gid for gid, sym in sorted(vocab.ensembl.items(), reverse=True) if gid.startswith("ENSG")}
    log = scanpy_log
    ids = [ens.get(vocab.resolve([g]).symbols[0] or "", g) for g in log.var_names]
    assert sum(i.startswith("ENSG") for i in ids) > 0.9 * len(ids)
    by_id = log.copy()
    by_id.var_names = ids
    np.testing.assert_allclose(m.get_latent_representation(by_id), m.get_latent_representation(log), atol=1e-5)
    assert (m.predict(by_id) == m.predict(log)).all()
    # pbmc68k names some genes by old aliases (ATPIF1): the model knows them by their symbol
    renamed = {n: s for n, s in zip(a.var_names, a.var[keys.GENE_SYMBOL], strict=True) if s != n}
    assert renamed and set(renamed.values()) <= set(m.train_genes)
    by_symbol = log.copy()
    by_symbol.var_names = [renamed.get(n, n) for n in log.var_names]
    np.testing.assert_allclose(m.get_latent_representation(by_symbol), m.get_latent_representation(log), atol=1e-5)


def test_training_says_what_it_leaves_out(split):
    """Trial findings: cells with no label were dropped without a word, and classes smaller than
    the kNN vote's k (Kang's 6 CD8 T and 8 dendritic cells) were never predicted, unannounced."""
    from scelmo.errors import ScelmoWarning

    a = split[0][:200].copy()
    a.obs["lab"] = a.obs["bulk_labels"].astype(object)
    a.obs.loc[a.obs_names[:7], "lab"] = None
    scelmo.Model.setup_anndata(a, labels_key="lab")
    with pytest.warns(ScelmoWarning) as caught:
        scelmo.Model(a, head="annotation").train(max_epochs=1, seed=0, early_stopping=False)
    said = " ".join(str(w.message) for w in caught)
    assert "7 of 200 cells have no label" in said
    assert "fewer training cells than the kNN vote's k=10" in said and "CD34+" in said


def test_integer_labels_come_back_as_integers_in_their_own_order(split, tmp_path):
    train, test = split
    t = train.copy()
    # 10 clusters coded 0..9: as text, "10" would sort before "2"
    codes = {c: i for i, c in enumerate(sorted(set(t.obs["bulk_labels"].astype(str))))}
    t.obs["code"] = t.obs["bulk_labels"].astype(str).map(codes).astype(np.int64).to_numpy()
    scelmo.Model.setup_anndata(t, labels_key="code")
    model = scelmo.Model(t, head="annotation")
    model.train(max_epochs=2, seed=0)
    q = test.copy()
    pred = model.predict(q, key_added="pred")
    assert pred.dtype.kind == "i" and set(pred) <= set(codes.values())
    assert list(q.obs["pred"].cat.categories) == sorted(set(t.obs["code"]))
    probs = model.predict(q, method="classifier", return_probabilities=True)
    assert list(probs.columns) == sorted(set(t.obs["code"]))
    np.testing.assert_array_equal(probs.to_numpy().argmax(1), model.predict(q, method="classifier"))
    loaded = scelmo.Model.load(model.save(tmp_path / "m"), adata=q)
    np.testing.assert_array_equal(loaded.predict(q), pred)


def test_a_counts_query_is_scaled_over_the_genes_a_counts_model_was_trained_on(split):
    """Trial finding: a counts query was normalised over all its own genes, the R wrapper over
    the model's; genes the model never saw changed the query's library sizes (and so its
    embedding) in Python only. A model trained on counts now scales a query over the genes
    it was trained on, wherever it is called from."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    train, test = split
    keep = np.sort(np.argsort(-np.asarray(train.X.mean(0)).ravel())[:300])

    def counts(a, cols):
        return ad.AnnData(sp.csr_matrix(a.layers["counts"][:, cols]), obs=a.obs.copy(),
                          var=pd.DataFrame(index=a.var_names[cols]))

    tr = counts(train, keep)
    tr.varm[keys.GENE_EMBEDDING] = train.varm[keys.GENE_EMBEDDING][keep]
    scelmo.Model.setup_anndata(tr, labels_key="bulk_labels")
    m = scelmo.Model(tr).train(max_epochs=2, seed=0)
    assert m.train_info["normalized_counts"] is True
    same = counts(test, keep)
    wide = counts(test, np.arange(test.n_vars))  # the same cells with 465 genes the model never saw
    assert wide.n_vars > same.n_vars
    z_same = m.get_latent_representation(same)
    np.testing.assert_allclose(m.get_latent_representation(wide), z_same, atol=1e-5)
    assert (m.predict(wide) == m.predict(same)).all()
    # a saved model bound to the query (`Model.load(dir, adata=query)`, as `scelmo predict` does) scales it alike
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        m.save(f"{d}/m")
        bound = scelmo.Model.load(f"{d}/m", adata=wide)
        np.testing.assert_allclose(bound.get_latent_representation(wide), z_same, atol=1e-5)


def test_a_saved_option_this_version_lacks_is_said_as_such_not_as_damage(trained, tmp_path):
    """Review finding: any ValueError/KeyError from a head's load_state (an option the installed
    head does not know) was reported as a truncated or overwritten model file."""
    from scelmo.io import sha256_file

    trained.save(tmp_path / "m")
    spec = tmp_path / "m" / "head" / "head.json"
    info = json.loads(spec.read_text())
    info["options"]["option_of_a_newer_version"] = 1
    spec.write_text(json.dumps(info))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["head_sha256"]["head.json"] = sha256_file(spec)  # (the file is intact: only its content is new)
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="option_of_a_newer_version") as err:
        scelmo.Model.load(tmp_path / "m")
    assert "damaged" not in str(err.value) and "truncated" not in str(err.value)


def test_missing_labels_written_as_pd_na_are_unlabelled_not_a_class(split):
    """An integration trial: a "string" column's pd.NA became a class "<NA>" (str(pd.NA)), and a
    batch "<NA>"; NaN was already read as missing."""
    import pandas as pd

    from scelmo.model import obs_column

    train, _ = split
    a = train.copy()
    labels = a.obs["bulk_labels"].astype("string")
    labels.iloc[::2] = pd.NA
    a.obs["partial"] = labels
    col = obs_column(a, "partial")
    assert all(v is None for v in col[::2]) and None not in set(col[1::2])
    scelmo.Model.setup_anndata(a, labels_key="partial")
    model = scelmo.Model(a, head="annotation")
    model.train(max_epochs=2, seed=0)
    assert "<NA>" not in set(map(str, model.head.classes))


def test_a_query_lacking_many_of_the_genes_the_head_reads_is_warned(split):
    """The warning counted missing genes against every training gene, not the head's own
    selection: a trial's query lacking 30% of the 2,000 genes the head reads (of 20,125) got none."""
    train, test = split
    a = train.copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    model = scelmo.Model(a, head="annotation", n_top_genes=200)
    model.train(max_epochs=2, seed=0)
    used = list(model.head.genes_used)
    assert len(used) == 200
    drop = set(used[:60])  # 30% of the head's genes, under 10% of the 765 it was given
    q = test[:, [g for g in test.var_names if g not in drop]].copy()
    with pytest.warns(ScelmoWarning, match="60 of the 200 genes the model weighs"):
        model.predict(q)


def test_unlabeled_category_marks_cells_without_a_label(split):
    """scvi-tools' convention (scANVI's unlabeled_category="Unknown"): a trial's "Unknown" cells
    became a class and cost 0.20 accuracy on the hidden cells."""
    from scelmo.model._setup import _setup_from_uns

    train, _ = split
    a = train.copy()
    labels = a.obs["bulk_labels"].astype(str).to_numpy()
    labels[::2] = "Unknown"
    a.obs["partial"] = labels
    scelmo.Model.setup_anndata(a, labels_key="partial", unlabeled_category="Unknown")
    assert _setup_from_uns(a).unlabeled_category == "Unknown"  # (kept in uns, for copies and files)
    model = scelmo.Model(a, head="annotation")
    model.train(max_epochs=2, seed=0)
    assert "Unknown" not in set(map(str, model.head.classes))
    with pytest.raises(InputError, match="needs labels_key"):
        scelmo.Model.setup_anndata(a, unlabeled_category="Unknown")
    # an integer label column and R's double -1.0; a value no cell has is said
    a.obs["code"] = np.where(np.arange(a.n_obs) % 3 == 0, -1, a.obs["bulk_labels"].cat.codes.to_numpy())
    scelmo.Model.setup_anndata(a, labels_key="code", unlabeled_category=-1.0)
    assert _setup_from_uns(a).unlabeled_category == "-1"
    with pytest.warns(ScelmoWarning, match="No cell of adata.obs"):
        scelmo.Model.setup_anndata(a, labels_key="partial", unlabeled_category="unknown")


def test_an_alias_column_beside_its_symbol_keeps_its_own_name_whatever_the_order(trained, split):
    """An integration trial (Baron: C10orf12 beside LCOR): whichever column came first took the
    symbol's name, so reversing the genes changed the head's selection and the latent."""
    _, test = split
    q = test.copy()
    names = list(q.var_names)
    assert "ABHD17A" in names and "C19orf27" not in names
    names[names.index("ABHD17A") - 1] = "C19orf27"  # an old alias of ABHD17A, just before it
    q.var_names = names
    _, cols, _, heads = trained.head_expression(q)
    r = q[:, q.var_names[::-1]].copy()
    _, rcols, _, rheads = trained.head_expression(r)
    forward = dict(zip(cols, heads, strict=True))
    assert forward == dict(zip(rcols, rheads, strict=True))
    assert forward["C19orf27"] == "C19orf27" and forward["ABHD17A"] == "ABHD17A"


def test_a_labels_column_without_any_label_is_said(split):
    """An integration trial: labels_key naming a column that is all NaN trained unsupervised, silently."""
    train, _ = split
    a = train.copy()
    a.obs["none"] = np.nan
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2, "b1", "b2")
    scelmo.Model.setup_anndata(a, labels_key="none", batch_key="batch")
    with pytest.warns(ScelmoWarning, match="No cell has a label"):
        scelmo.Model(a, head="integration")
