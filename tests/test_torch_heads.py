"""scelmo_torch internals: integration head, triplet loss, devices, the torch aggregator, CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scelmo
from scelmo import datasets, io, keys, metrics, testing
from scelmo.errors import ConfigError, InputError

torch = pytest.importorskip("torch")

from scelmo_torch.adapter import batch_hard_triplet_loss, knn_predict_codes, macro_f1_codes  # noqa: E402
from scelmo_torch.base import DeviceRows, TrainingConfig, split_rows  # noqa: E402
from scelmo_torch.device import resolve_device, torch_session  # noqa: E402


@pytest.fixture(scope="module")
def batches():
    a = datasets.simulate_batches(datasets.pbmc68k_reduced(), seed=0)
    ge = testing.random_gene_embeddings(list(a.var_names), dim=32)
    a.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(a.var_names))
    return a


def _zero_shot(a):
    """The head's starting point: the default zero-shot embedding with these cells' statistics."""
    from scelmo.expression.selection import gene_stats

    b = a.copy()
    ge = testing.random_gene_embeddings(list(a.var_names), dim=32)
    scelmo.tl.embed_cells(b, gene_embeddings=ge, gene_stats=gene_stats(b.X, normalize=False))
    return b.obsm[keys.X_SCELMO]


@pytest.mark.parametrize("labels_key", ["bulk_labels", None])
def test_integration_mixes_batches_and_keeps_labels(batches, labels_key):
    a = batches.copy()
    b, y = a.obs["batch"].to_numpy(), a.obs["bulk_labels"].to_numpy()
    scelmo.Model.setup_anndata(a, batch_key="batch", labels_key=labels_key)
    m = scelmo.Model(a, head="integration").train(max_epochs=20, seed=0)
    z = m.get_latent_representation(key_added=keys.X_SCELMO_INTEGRATED)
    assert a.obsm[keys.X_SCELMO_INTEGRATED].shape == (a.n_obs, 32)
    hist = m.history
    assert m.head.best_score >= float(hist.loc[hist["epoch"] == 0, "val_score"].iloc[0])  # never below the start
    zs = _zero_shot(a)
    before, after = metrics.same_batch_fraction(zs, b), metrics.same_batch_fraction(z, b)
    assert after < before - 0.02
    assert metrics.ilisi(z, b) > metrics.ilisi(zs, b)
    purity, purity0 = metrics.knn_purity(z, y), metrics.knn_purity(zs, y)
    if labels_key:  # semi-supervised: labels are kept better than zero-shot
        assert purity > purity0 + 0.03
    else:
        assert purity > purity0 - 0.05  # unsupervised: cell types kept about as well as at the start
    with pytest.raises(scelmo.ScelmoError, match="does not predict labels"):
        m.predict()
    # tune_genes=None (default): the gene table is fine-tuned with labels only
    assert (m.head.module.adapter.gene_delta is not None) == bool(labels_key)


def test_integration_with_a_tuned_gene_table_survives_save_load(batches, tmp_path):
    a = batches.copy()
    scelmo.Model.setup_anndata(a, batch_key="batch", labels_key=None)
    m = scelmo.Model(a, head="integration", tune_genes=True).train(max_epochs=4, seed=0, early_stopping=False)
    assert m.head.n_tuned_genes() == len(m.head.spec["genes"])
    loaded = scelmo.Model.load(m.save(tmp_path / "integration"), adata=a)
    # the same device for both (a GPU-trained model stays on the GPU; the loaded one is on CPU)
    np.testing.assert_array_equal(loaded.get_latent_representation(device="cpu"), m.get_latent_representation(device="cpu"))


def test_pseudo_labels_split_by_batch_are_merged_by_their_mnn_pairs():
    from scelmo_torch.integration import merge_split_clusters, mutual_neighbours

    rng = np.random.default_rng(0)
    # population A: batch 0 and batch 1 shifted apart (one Leiden cluster each); population B: mixed
    a0 = rng.normal(0, 0.1, (40, 8)) + np.eye(8)[0]
    a1 = rng.normal(0, 0.1, (40, 8)) + np.eye(8)[0] + 0.6 * np.eye(8)[1]
    b01 = rng.normal(0, 0.1, (80, 8)) + 3 * np.eye(8)[2]
    Z = np.vstack([a0, a1, b01]).astype(np.float32)
    batch = np.r_[np.zeros(40), np.ones(40), np.tile([0, 1], 40)].astype(np.int64)
    clusters = np.r_[np.zeros(40), np.ones(40), np.full(80, 2)].astype(np.int64)
    merged = merge_split_clusters(clusters, mutual_neighbours(Z, batch, 5))
    assert merged[0] == merged[40] != merged[80]  # A's two halves are one population, B stays
    assert len(np.unique(merged)) == 2
    # a cluster whose cells pair mostly inside it, and clusters without MNN pairs, stay as they are
    none = [np.zeros(0, dtype=np.int64)] * len(clusters)
    np.testing.assert_array_equal(merge_split_clusters(clusters, none), clusters)


def test_integration_needs_a_batch_key(batches):
    a = batches.copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    with pytest.raises(InputError, match="batch_key"):
        scelmo.Model(a, head="integration")  # refused when built, not after embedding genes in train()
    a.obs["one"] = "b1"
    scelmo.Model.setup_anndata(a, batch_key="one")
    with pytest.raises(InputError, match="at least two batches"):
        scelmo.Model(a, head="integration")


def test_batch_hard_triplet_loss():
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert float(batch_hard_triplet_loss(far, labels, margin=0.2)) == 0.0
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    assert float(batch_hard_triplet_loss(mixed, labels, margin=0.2)) > 1.0
    unlabelled = torch.tensor([-1, -1, -1, -1])
    assert float(batch_hard_triplet_loss(mixed, unlabelled, margin=0.2)) == 0.0


def test_split_rows_is_stratified_and_seeded():
    y = np.repeat([0, 1, 2], [50, 30, 3])
    tr, va = split_rows(len(y), 0.1, np.random.default_rng(0), y)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert set(y[tr]) == {0, 1, 2}
    assert np.bincount(y[va], minlength=3).tolist() == [5, 3, 0]
    tr2, va2 = split_rows(len(y), 0.1, np.random.default_rng(0), y)
    np.testing.assert_array_equal(va, va2)


def test_device_rows_gather_matches_scipy():
    """The GPU batch gather is device-agnostic: on CPU it must equal scipy's row slice + toarray."""
    rng = np.random.default_rng(3)
    X = sp.random(200, 50, density=0.1, format="csr", random_state=4, dtype=np.float32)
    X.data[:] = rng.random(X.nnz, dtype=np.float32) + 0.5
    X[7] = 0  # an empty row
    X.eliminate_zeros()
    dup = sp.csr_matrix((np.array([1.0, 2.0], np.float32), np.array([3, 3]), np.array([0, 2])), shape=(1, 50))
    X = sp.vstack([X, dup], format="csr")  # a row with a duplicate entry: summed, as toarray does
    d = DeviceRows(X, "cpu")
    for rows in (np.array([0, 7, 200, 5, 5, 199]), np.arange(201)[::-1], np.array([7]), np.array([200])):
        np.testing.assert_array_equal(d.dense(rows).numpy(), X[rows].toarray())
    assert d.nbytes(X) == X.nnz * 12 + (X.shape[0] + 1) * 8
    assert not DeviceRows.fits(X, torch.device("cpu"))  # only CUDA memory is managed this way
    assert not DeviceRows.fits(X.toarray(), torch.device("cpu"))


def test_training_config_and_devices():
    assert TrainingConfig().batch_size == 512  # the paper's defaults
    with pytest.raises(ConfigError, match="bogus"):
        TrainingConfig.from_any({"bogus": 1})
    # (an integration trial: max_epochs=True trained one epoch, seed=-1 was numpy's raw ValueError)
    for flag in (True, np.True_):
        with pytest.raises(ConfigError, match="boolean"):
            TrainingConfig.from_any({"max_epochs": flag})
    with pytest.raises(ConfigError, match="seed"):
        TrainingConfig.from_any({"seed": -1})
    assert TrainingConfig.from_any({"max_epochs": np.int64(3), "seed": 2.0}).max_epochs == 3  # (R passes doubles)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    before = torch.get_num_threads()
    with torch_session("cpu") as dev:
        assert dev.type == "cpu" and torch.get_num_threads() == 1
    with torch_session("cpu", num_threads=2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    # deterministic inside, without the NaN fill of new tensors (a kernel per allocation); both restored
    det_before = torch.are_deterministic_algorithms_enabled()
    fill_before = torch.utils.deterministic.fill_uninitialized_memory
    with torch_session("cpu"):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert torch.are_deterministic_algorithms_enabled() == det_before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill_before


def test_early_stopping_keeps_the_best_checked_weights(batches):
    a = batches[:300].copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    m = scelmo.Model(a, head="annotation").train(max_epochs=30, check_every=2, patience=1, seed=0, tolerance=0.0)
    hist = m.history
    checked = hist.dropna(subset=["val_score"])
    assert m.head.best_score == checked["val_score"].max()
    assert m.head.best_epoch in set(checked["epoch"].astype(int))
    # the weights kept are the best check's: re-scoring them on the validation cells gives
    # the best score back (not the last check's, which early stopping left behind)
    h, z = m.head, m.get_latent_representation()
    assert a.obs["bulk_labels"].notna().all()  # so the head's rows are the cells of `a`
    y, n = np.asarray(pd.Categorical(a.obs["bulk_labels"].astype(str), categories=h.classes).codes), len(h.classes)
    pred = knn_predict_codes(z[h._val_rows], z[h._ref_rows], y[h._ref_rows], n, h.options.knn_k)
    yv = y[h._val_rows]
    rescored = 0.5 * (float((pred == yv).mean()) + macro_f1_codes(yv, pred, n))
    assert rescored == pytest.approx(h.best_score, abs=1e-6)
    assert len(checked) >= 2 and checked["val_score"].iloc[-1] < m.head.best_score or len(hist) == 30


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_torch_aggregator_matches_numpy_wa(fmt):
    genes = [f"G{i}" for i in range(40)]
    a = testing.make_adata(120, genes, fmt=fmt, seed=1)
    X = a.X.toarray() if fmt == "csr" else a.X
    X[3] = 0  # an empty cell
    a.X = sp.csr_matrix(X) if fmt == "csr" else X
    ge = testing.random_gene_embeddings(genes[:35], dim=24)  # 5 genes without a vector
    with pytest.warns(scelmo.errors.EmptyCellsWarning):
        scelmo.tl.embed_cells(a, gene_embeddings=ge, aggregator="wa", key_added="np", chunk_size=50)
    with pytest.warns(scelmo.errors.EmptyCellsWarning):
        scelmo.tl.embed_cells(a, gene_embeddings=ge, aggregator="wa_torch", key_added="pt", chunk_size=50,
                              config={"aggregate.options": {"device": "cpu"}})
    np.testing.assert_allclose(a.obsm["pt"], a.obsm["np"], rtol=1e-5, atol=1e-6)
    assert np.all(a.obsm["pt"][3] == 0)
    assert a.uns["scelmo"]["embed_cells"]["aggregator"] == "wa_torch"


def test_cli_train_and_predict(tmp_path, batches):
    from click.testing import CliRunner

    from scelmo import plugin as plugins
    from scelmo.cli import cli

    plugins.add_commands(cli)
    a = batches[:300].copy()
    io.write_h5ad(a, tmp_path / "train.h5ad")  # scelmo's writer: also text columns under pandas >= 3
    q = batches[300:400, batches.var_names[:600]].copy()
    io.write_h5ad(q, tmp_path / "query.h5ad")
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "model"), "--labels-key",
                              "bulk_labels", "--max-epochs", "3", "--option", "latent=16", "--option", "residual=false"])
    assert res.exit_code == 0, res.output
    assert "Trained 'annotation' on 300 cells" in res.output
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "model"),
                              "-o", str(tmp_path / "out.h5ad"), "--method", "classifier"])
    assert res.exit_code == 0, res.output
    import anndata as ad

    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm[keys.X_SCELMO_FINETUNED].shape == (100, 16)
    assert out.obs[keys.LABEL].notna().all()
    res = runner.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "model"), "--labels-key", "bulk_labels"])
    assert res.exit_code == 3 and "exists" in res.output  # an existing OUTPUT: exit code 3, as embed-cells
    # trial findings: predict replaced an existing OUTPUT, --latent-output replaced INPUT itself
    before = (tmp_path / "query.h5ad").read_bytes()
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "model"),
                              "-o", str(tmp_path / "out.h5ad")])
    assert res.exit_code == 3 and "--overwrite" in res.output
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "model"),
                              "-o", str(tmp_path / "out.h5ad"), "--overwrite"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "model"),
                              "-o", str(tmp_path / "query.h5ad"), "--overwrite"])
    assert res.exit_code == 3 and "differ from INPUT" in res.output
    res = runner.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "m2"), "--labels-key",
                              "bulk_labels", "--latent-output", str(tmp_path / "query.h5ad")])
    assert res.exit_code == 3 and "exists" in res.output
    assert (tmp_path / "query.h5ad").read_bytes() == before
    # options are checked before any gene is embedded; errors name the CLI flags
    for args, match in ((["--labels-key", "no_such_column"], "no_such_column"), ([], "--labels-key"),
                        (["--labels-key", "bulk_labels", "--head", "nope"], "nope"),
                        (["--labels-key", "bulk_labels", "--option", "nope=1"], "nope"),
                        (["--labels-key", "bulk_labels", "--device", "cuda:7"], "cuda")):
        res = runner.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "m3"), *args])
        assert res.exit_code != 0 and match in res.output, (args, res.output)
        assert not (tmp_path / "m3").exists()
    # an integration model predicts no labels: --method is refused, not silently ignored
    res = runner.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "mi"), "--head",
                              "integration", "--batch-key", "batch", "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "mi"),
                              "-o", str(tmp_path / "oi.h5ad"), "--method", "classifier"])
    assert res.exit_code == 2 and "--method" in res.output and not (tmp_path / "oi.h5ad").exists()
    # a layer the query lacks: --layer names the query's own
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "mi"),
                              "-o", str(tmp_path / "oi.h5ad"), "--layer", "nope"])
    assert res.exit_code == 3 and "nope" in res.output
    # trial finding: no --layer value selected adata.X; `--layer X` does (as `train --layer X`)
    res = runner.invoke(cli, ["predict", str(tmp_path / "query.h5ad"), "-m", str(tmp_path / "mi"),
                              "-o", str(tmp_path / "oi.h5ad"), "--layer", "X"])
    assert res.exit_code == 0, res.output


def test_sparse_training_matrix_stays_sparse(batches):
    from scelmo_torch.annotation import AnnotationHead

    head = AnnotationHead()
    X = sp.csr_matrix(batches.X[:50])
    Xk, E, w = head.prepare_matrix(X, batches.varm[keys.GENE_EMBEDDING], fit=True)
    assert sp.issparse(Xk) and Xk.format == "csr"
    np.testing.assert_allclose(np.asarray(Xk.sum(1)).ravel(), 1.0, rtol=1e-5)  # "wa" rows
    np.testing.assert_allclose(w, 1 / np.asarray(X[:, head.arrays["gene_columns"]].sum(1)).ravel(), rtol=1e-5)


def test_training_history_plot(tmp_path):
    import scelmo.datasets as sd

    a = sd.pbmc68k_reduced()
    scelmo.tl.embed_genes(a, progress=False)
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    model = scelmo.Model(a, head="annotation")
    model.train(max_epochs=6, progress=False)
    png = tmp_path / "history.png"
    scelmo.pl.training_history(model, title="annotation head", save=png)
    assert png.stat().st_size > 10_000
    with pytest.raises(scelmo.ScelmoError, match="train"):
        scelmo.pl.training_history(scelmo.Model(a, head="annotation"))


def test_latent_with_the_residual_adapter_is_refused_not_ignored(batches, tmp_path):
    """R trial finding: latent=32 (the docs' example) left the embedding as wide as the gene
    vectors in silence, since the default residual adapter keeps their width."""
    import json

    from scelmo import plugin as plugins

    with pytest.raises(ConfigError, match="residual=False"):
        plugins.heads.create("annotation", latent=16)
    assert plugins.heads.create("annotation", latent=16, residual=False).options.latent == 16
    a = batches.copy()
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    m = scelmo.Model(a, head="annotation").train(max_epochs=1, seed=0)
    assert "latent" not in m.head.saved_options()  # (not written, so the saved model loads)
    path = m.save(tmp_path / "ann")
    # a model saved before (latent in its options beside residual=True) still loads
    spec = path / "head" / "head.json"
    info = json.loads(spec.read_text())
    info["options"]["latent"] = 32
    spec.write_text(json.dumps(info))
    model_json = json.loads((path / "model.json").read_text())
    model_json["head_sha256"]["head.json"] = io.sha256_file(spec)
    (path / "model.json").write_text(json.dumps(model_json))
    loaded = scelmo.Model.load(path, adata=a)
    np.testing.assert_array_equal(loaded.get_latent_representation(device="cpu"), m.get_latent_representation(device="cpu"))
