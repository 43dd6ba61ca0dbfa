"""Robust training defaults of the adapter heads, on pbmc68k_reduced with real torch training.

The residual adapter starts at the zero-shot embedding (epoch 0 == ``tl.embed_cells``
flavor "scelmo" with the training cells' statistics), validation scores that start, the
best epoch is kept, early stopping stops, class weights apply and survive save/load.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import scelmo
from scelmo import datasets, keys, testing
from scelmo.expression.selection import gene_stats

torch = pytest.importorskip("torch")

from scelmo_torch.annotation import AnnotationHead  # noqa: E402


@pytest.fixture(scope="module")
def pbmc():
    a = datasets.pbmc68k_reduced()  # X: log-normalised, 765 genes
    ge = testing.random_gene_embeddings(list(a.var_names), dim=32, seed=0)
    a.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(a.var_names))
    return a, ge


def _train(a, **kw):
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    opts = kw.pop("options", {})
    return scelmo.Model(a, head="annotation", **opts).train(seed=0, progress=False, **kw)


def test_epoch_zero_is_the_zero_shot_embedding(pbmc):
    a, ge = pbmc
    a = a.copy()
    m = _train(a, max_epochs=1, lr=1e-12, options={"n_top_genes": 300})  # lr ~0: the weights stay at the start
    z = m.get_latent_representation()
    scelmo.tl.embed_cells(a, gene_embeddings=ge, n_top_genes=300, gene_stats=gene_stats(a.X, normalize=False))
    np.testing.assert_allclose(z, a.obsm[keys.X_SCELMO], rtol=1e-4, atol=1e-6)
    assert len(m.head.spec["genes"]) == int(a.var[keys.GENES_USED].sum()) <= 300


def _latest_near_best(hist, tol):
    """The epoch the training loop should keep: the latest check within ``tol`` of the best so far."""
    top, pick = None, None
    for epoch, score in hist.dropna(subset=["val_score"])[["epoch", "val_score"]].itertuples(index=False):
        if top is None or score >= top - tol:
            top, pick = score if top is None else max(top, score), int(epoch)
    return pick


def test_best_validation_score_is_at_least_the_zero_shot_start(pbmc):
    a, _ = pbmc
    m = _train(a.copy(), max_epochs=12)
    hist = m.history
    start = hist.loc[hist["epoch"] == 0, "val_score"]
    assert len(start) == 1 and np.isnan(hist.loc[hist["epoch"] == 0, "loss"]).all()
    # the kept epoch: the latest check within one validation cell (1 / n_validation) of the best so far
    tol = m.head.score_tolerance
    assert 0 < tol < 0.05
    assert m.head.best_score >= float(start.iloc[0]) - tol
    assert m.head.best_epoch == _latest_near_best(hist, tol)
    exact = _train(a.copy(), max_epochs=12, tolerance=0.0)  # tolerance 0: the best score itself
    assert exact.head.score_tolerance == 0.0
    assert exact.head.best_score == exact.history["val_score"].max()
    assert exact.head.best_epoch == _latest_near_best(exact.history, 0.0)
    # a learning rate that wrecks the adapter: the head falls back to the zero-shot start
    # (the MLP alone: with the gene table tuned too, lr 5 happened to find a better epoch)
    bad = _train(a.copy(), max_epochs=4, lr=5.0, check_every=1, patience=4, options={"tune_genes": False})
    assert bad.head.best_epoch == 0
    zs = _train(a.copy(), max_epochs=1, lr=1e-12)
    np.testing.assert_allclose(bad.get_latent_representation(), zs.get_latent_representation(), rtol=1e-4, atol=1e-6)


def test_early_stopping_stops_after_patience_checks(pbmc):
    a, _ = pbmc
    m = _train(a.copy(), max_epochs=200, lr=5.0, check_every=1, patience=2)
    hist = m.history
    assert hist["epoch"].max() <= m.head.best_epoch + 2  # two checks without improvement, then stop
    assert hist["epoch"].max() < 200
    full = _train(a.copy(), max_epochs=5, lr=5.0, check_every=1, patience=2, early_stopping=False)
    assert full.history["epoch"].max() == 5
    # without early stopping the head keeps its last weights, and says so (a trial's plot
    # and CLI reported the best epoch seen, 0, for a model holding epoch 5)
    assert full.head.best_epoch == 5
    assert full.head.best_score == full.history["val_score"].dropna().iloc[-1]


def test_class_weights_apply_and_survive_save_load(pbmc, tmp_path):
    a, _ = pbmc
    m = _train(a.copy(), max_epochs=2)
    y = a.obs["bulk_labels"].astype(str).to_numpy()
    classes, counts = np.unique(y, return_counts=True)
    w = np.asarray(m.head.spec["class_weights"])
    assert list(classes) == m.head.classes
    # "balanced" on the training part (90% stratified): n / (k * count), rare classes weigh more
    assert np.argmax(w) == np.argmin(counts) and np.argmin(w) == np.argmax(counts)
    np.testing.assert_allclose(w * counts / counts.sum() * len(classes), 1.0, rtol=0.25)
    # the weights enter the loss: the same batch scores differently without them
    head = m.head
    fitted_arrays, fitted_spec = dict(head.arrays), dict(head.spec)
    head._start(a.X, a.varm[keys.GENE_EMBEDDING], head.arrays["reference_labels"], list(a.var_names))
    head.device = torch.device("cpu")
    head.prepare_training(head.device)
    rows = np.arange(200)
    with torch.no_grad():
        weighted = float(head.training_loss(rows)[1]["ce"])
        head._cw = torch.ones_like(head._cw)
        plain = float(head.training_loss(rows)[1]["ce"])
    head._clear_data()
    head.arrays, head.spec = fitted_arrays, fitted_spec
    assert abs(weighted - plain) > 1e-4
    unweighted = _train(a.copy(), max_epochs=2, options={"class_weight": "none"})
    assert unweighted.head.spec["class_weights"] == [1.0] * len(classes)
    path = m.save(tmp_path / "m")
    loaded = scelmo.Model.load(path, adata=a.copy())
    assert loaded.head.spec["class_weights"] == m.head.spec["class_weights"]
    assert loaded.head.options == m.head.options and loaded.head.best_epoch == m.head.best_epoch
    q = a[:100].copy()
    np.testing.assert_array_equal(loaded.predict(q), m.predict(q))
    # "auto" predicts with whichever of kNN / classifier scored better on the validation cells
    scores = m.head.spec["validation_scores"]
    assert m.head.best_method == max(("knn", "classifier"), key=lambda k: (scores[k], k == "knn"))
    np.testing.assert_array_equal(loaded.predict(q, method="auto"), m.predict(q, method=m.head.best_method))
    np.testing.assert_allclose(loaded.get_latent_representation(q), m.get_latent_representation(q), rtol=1e-5, atol=1e-6)


def _write_as_old(path, spec):
    """Rewrite a saved model's head.json as an older scelmo wrote it: those versions kept no
    checksums of the head's files in model.json either."""
    (path / "head" / "head.json").write_text(json.dumps(spec))
    meta = json.loads((path / "model.json").read_text())
    meta.pop("head_sha256", None)
    (path / "model.json").write_text(json.dumps(meta))


def test_models_saved_before_the_residual_adapter_load_with_their_behaviour(pbmc, tmp_path):
    a, _ = pbmc
    m = _train(a.copy(), max_epochs=2, options={"residual": False, "genes": "all", "center": False})
    path = m.save(tmp_path / "old")
    spec = json.loads((path / "head" / "head.json").read_text())
    for k in ("residual", "genes", "center", "n_top_genes", "class_weight", "max_validation_cells", "max_reference_cells",
              "tune_genes", "gene_l2", "gene_lr"):
        spec["options"].pop(k)  # what an older scelmo wrote
    _write_as_old(path, spec)
    loaded = scelmo.Model.load(path, adata=a.copy())
    assert loaded.head.options.residual is False and loaded.head.options.genes == "all"
    np.testing.assert_allclose(loaded.get_latent_representation(a[:50].copy()), m.get_latent_representation(a[:50].copy()),
                               rtol=1e-5, atol=1e-6)
    assert isinstance(loaded.head, AnnotationHead)


def test_integration_scores_plot(tmp_path):
    table = [{"method": "zero-shot", "bio_score": 0.6, "batch_score": 0.4, "total": 0.52},
             {"method": "head", "bio_score": 0.65, "batch_score": 0.55}]
    png = tmp_path / "scores.png"
    fig = scelmo.pl.integration_scores(table, title="demo", save=png, show=False)
    assert png.stat().st_size > 5_000
    bars = fig.axes[1].patches
    # the missing total is 0.6 bio + 0.4 batch (0.61), ranked above the given 0.52
    assert [round(b.get_width(), 3) for b in bars] == [0.61, 0.52]
    with pytest.raises(scelmo.ScelmoError, match="bio_score"):
        scelmo.pl.integration_scores([{"method": "x", "batch_score": 0.1}], show=False)


def test_tune_genes_fast_path_equals_the_full_embedding_and_survives_save_load(pbmc, tmp_path):
    """``tune_genes``: epoch 0 is still zero-shot; after training the fast training-time path, the
    query path and a saved/loaded model agree; a query gene the model never trained gets no correction."""
    a, ge = pbmc
    a = a.copy()
    start = _train(a, max_epochs=1, lr=1e-12, options={"n_top_genes": 300, "tune_genes": True})
    scelmo.tl.embed_cells(a, gene_embeddings=ge, n_top_genes=300, gene_stats=gene_stats(a.X, normalize=False))
    np.testing.assert_allclose(start.get_latent_representation(), a.obsm[keys.X_SCELMO], rtol=1e-4, atol=1e-6)

    m = _train(a.copy(), max_epochs=6, check_every=1, patience=6, early_stopping=False,
               options={"tune_genes": True, "gene_lr": 10.0})
    D = m.head.module.adapter.gene_delta.detach().numpy()
    assert D.shape == (len(m.head.spec["genes"]), m.head.options.gene_rank) and np.abs(D).max() > 1e-3  # the table moved
    head = m.head
    E, genes = np.asarray(a.varm[keys.GENE_EMBEDDING]), list(a.var_names)
    head._start(a.X, E, None, genes)  # the training-time (fast) path on the same inputs
    head.prepare_training("cpu")
    fast = head._latent_all()
    head.finish_training()
    head._clear_data()
    np.testing.assert_allclose(fast, head.transform(a.X, gene_vectors=E, gene_names=genes), rtol=1e-4, atol=1e-5)
    full = m.get_latent_representation(a)
    loaded = scelmo.Model.load(m.save(tmp_path / "tuned"), adata=a)
    np.testing.assert_allclose(loaded.get_latent_representation(a), full, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(loaded.predict(a, method="classifier"), m.predict(a, method="classifier"))
    # a trained gene's correction reaches a query in any gene order; an unknown gene gets none
    q = a[:, genes[::-1]].copy()
    np.testing.assert_allclose(m.get_latent_representation(q), full, rtol=1e-4, atol=1e-5)
    pos = head.module.adapter.delta(np.array([0, -1, 1]))
    np.testing.assert_array_equal(pos[1].detach().numpy(), 0.0)
    np.testing.assert_array_equal(pos[0].detach().numpy(), D[0])


def test_tune_genes_needs_the_residual_adapter_and_old_models_load_without_it(pbmc, tmp_path):
    a, _ = pbmc
    with pytest.raises(scelmo.errors.ConfigError, match="residual"):
        _train(a.copy(), max_epochs=1, options={"tune_genes": True, "residual": False})
    paper = _train(a.copy(), max_epochs=1, options={"residual": False})  # the default "on" does not apply
    assert paper.head.n_tuned_genes() == 0
    m = _train(a.copy(), max_epochs=2, options={"tune_genes": False})
    path = m.save(tmp_path / "before")
    spec = json.loads((path / "head" / "head.json").read_text())
    for k in ("tune_genes", "gene_l2", "gene_lr"):
        spec["options"].pop(k)  # what scelmo wrote before the option existed
    _write_as_old(path, spec)
    loaded = scelmo.Model.load(path, adata=a.copy())
    assert loaded.head.options.tune_genes is False
    np.testing.assert_array_equal(loaded.get_latent_representation(a[:50].copy()), m.get_latent_representation(a[:50].copy()))
