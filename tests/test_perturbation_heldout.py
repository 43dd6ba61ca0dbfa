"""Held-out perturbation targets on real knockouts (Papalexi 2021): folds, vector-to-delta
baselines, the detectability rule, and the torch head predicting unseen targets from vectors."""

from __future__ import annotations

import numpy as np
import pytest

from scelmo import perturbation as P
from scelmo.errors import InputError

torch = pytest.importorskip("torch")
from scelmo_torch.perturbation import PerturbationHead, predict_held_out_targets  # noqa: E402

CONTROL = "non-targeting"
TARGETS = ["IFNGR1", "IFNGR2", "JAK2", "STAT1", "CD86", "ATF2"]


@pytest.fixture(scope="module")
def papalexi_small():
    """Real Papalexi cells: 400 controls and 60 cells of each of 6 knockouts, log1p(CP10k of the transcriptome)."""
    import scipy.sparse as sp

    from scelmo import datasets

    a = datasets.papalexi2021()
    pert = a.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    rows = [rng.choice(np.flatnonzero(pert == CONTROL), 400, replace=False)]
    rows += [rng.choice(np.flatnonzero(pert == t), 60, replace=False) for t in TARGETS]
    rows = np.sort(np.concatenate(rows))
    lib = a.obs["total_umis_full_transcriptome"].to_numpy(np.float64)[rows]
    X = sp.csr_matrix(a.layers["counts"][rows], dtype=np.float64).multiply(1e4 / lib[:, None]).tocsr()
    X.data = np.log1p(X.data)
    return X.astype(np.float32), pert[rows], list(a.var_names)


def test_target_folds_partition_every_target_once():
    names = [f"G{i}" for i in range(11)]
    folds = P.target_folds(names, n_folds=5, seed=3)
    assert len(folds) == 5 and sorted(sum(folds, [])) == sorted(names)
    assert {len(f) for f in folds} == {2, 3}
    assert folds == P.target_folds(reversed(names), n_folds=5, seed=3)  # order of input irrelevant
    assert folds != P.target_folds(names, n_folds=5, seed=4)
    assert all(len(f) == 1 for f in P.target_folds(names, n_folds=11))  # leave-one-target-out
    with pytest.raises(InputError, match="n_folds"):
        P.target_folds(names, n_folds=12)


def test_embedding_ridge_and_knn_follow_the_vectors():
    rng = np.random.default_rng(0)
    V = rng.normal(size=(8, 16))
    W = rng.normal(size=(16, 5))
    D = V @ W  # deltas linear in the vectors
    # nearly no penalty: a training vector gets back its own delta; a huge one gives the mean shift
    assert np.allclose(P.embedding_ridge(V, D, V[2], alpha=1e-9)[0], D[2], atol=1e-5)
    assert np.allclose(P.embedding_ridge(V, D, V[2], alpha=1e9)[0], D.mean(axis=0), atol=1e-6)
    # a query close to one training target is predicted close to that target's delta
    q = V[5] + 0.01 * rng.normal(size=16)
    assert np.argmin(np.linalg.norm(P.embedding_ridge(V, D, q, alpha=0.1) - D, axis=1)) == 5
    assert np.allclose(P.embedding_knn(V, D, q, k=1)[0], D[5])
    two = P.embedding_knn(V, D, q, k=2)[0]
    assert not np.allclose(two, D[5])
    with pytest.raises(InputError, match="one delta per training vector"):
        P.embedding_ridge(V, D[:3], q)
    with pytest.raises(InputError, match="dimensions"):
        P.embedding_knn(V, D, q[:4])
    with pytest.raises(InputError, match="k must"):
        P.embedding_knn(V, D, q, k=9)


def test_detectable_rule_separates_ifng_knockouts_from_null(papalexi_small):
    X, pert, _ = papalexi_small
    res = P.detectable_perturbations(X, pert, control=CONTROL, n_null=40, seed=0)
    assert sorted(res) == sorted(TARGETS)
    # losing IFN-gamma signalling moves expression far beyond control-vs-control noise
    for t in ("IFNGR1", "IFNGR2", "JAK2", "STAT1"):
        assert res[t]["detectable"] == 1.0 and res[t]["ratio"] > 2
    # control cells relabelled as a "perturbation" are not detectable
    fake = pert.copy()
    ctrl_rows = np.flatnonzero(pert == CONTROL)
    fake[np.random.default_rng(1).choice(ctrl_rows, 60, replace=False)] = "FAKE"
    assert P.detectable_perturbations(X, fake, control=CONTROL, n_null=40)["FAKE"]["ratio"] < 1.5


def test_head_predicts_held_out_knockouts_from_their_vectors(papalexi_small):
    import scelmo

    X, pert, genes = papalexi_small
    ge = scelmo.tl.embed_genes(genes=TARGETS, progress=False)
    V, mask = ge.aligned(TARGETS, conditioned=True)
    assert mask.all()
    vec = dict(zip(TARGETS, V, strict=True))
    held = ["IFNGR2", "CD86"]
    opts = {"hidden": 32, "latent": 8, "mmd_weight": 0.0}
    train = {"max_epochs": 2, "progress": False, "seed": 0}
    pred, head = predict_held_out_targets(X, pert, vec, held_out=held, control=CONTROL, options=opts, training=train)
    assert sorted(pred) == sorted(held) and all(p.shape == (len(genes),) and np.isfinite(p).all() for p in pred.values())
    assert set(head.seen_components) == set(TARGETS) - set(held)  # the held-out cells were not trained on
    assert len(head.history) == 2
    X_ctrl = X[pert == CONTROL]
    # the prediction is a function of the vector alone: the same vector as a training target
    # gives that target's prediction, another vector another prediction
    same = head.predict_mean(X_ctrl, "IFNGR2", perturbation_embeddings={"IFNGR2": vec["IFNGR1"]})
    assert np.allclose(same, head.predict_mean(X_ctrl, "IFNGR1"), atol=1e-6)
    assert not np.allclose(same, pred["IFNGR2"], atol=1e-4)
    # shuffled vectors go through the same path (same seed): only the vectors differ
    perm = dict(zip(TARGETS, np.roll(V, 1, axis=0), strict=True))
    pred_s, head_s = predict_held_out_targets(X, pert, perm, held_out=held, control=CONTROL, options=opts, training=train)
    assert sorted(pred_s) == sorted(held) and set(head_s.seen_components) == set(head.seen_components)
    assert not np.allclose(pred_s["IFNGR2"], pred["IFNGR2"], atol=1e-4)
    again, _ = predict_held_out_targets(X, pert, vec, held_out=held, control=CONTROL, options=opts, training=train)
    assert np.allclose(again["IFNGR2"], pred["IFNGR2"], atol=1e-5)  # deterministic given the seed
    with pytest.raises(InputError, match="no cells"):
        predict_held_out_targets(X, pert, vec, held_out=["MYC"], control=CONTROL, options=opts, training=train)
    with pytest.raises(InputError, match="No vector"):
        predict_held_out_targets(X, pert, {k: v for k, v in vec.items() if k != "CD86"}, held_out=held,
                                 control=CONTROL, options=opts, training=train)


def test_held_out_targets_check_the_labels_and_the_control_name_first():
    """Trial findings: labels for fewer cells than X has (sparse X) were accepted and only the first
    rows used; a wrong control= was reported as a missing vector for the real control's name."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.gamma(2.0, 0.5, size=(60, 12)).astype(np.float32))
    pert = np.array([CONTROL] * 30 + ["A"] * 10 + ["B"] * 10 + ["C"] * 10)
    vec = {t: rng.normal(size=8) for t in "ABC"}
    kw = {"options": {"hidden": 8, "latent": 4, "mmd_weight": 0.0}, "training": {"max_epochs": 1, "progress": False}}
    with pytest.raises(InputError, match="X has 60 cells but 50 perturbation labels"):
        predict_held_out_targets(X, pert[10:], vec, held_out=["C"], control=CONTROL, **kw)
    with pytest.raises(InputError, match="no cell has perturbation 'ctrl'.*likely: 'non-targeting'"):
        predict_held_out_targets(X, pert, vec, held_out=["C"], control="ctrl", **kw)
    pred, head = predict_held_out_targets(X, pert, vec, held_out=["C"], control=CONTROL, **kw)
    assert pred["C"].shape == (12,) and "C" in head.components  # the returned head keeps the held-out vector


def test_perturbation_deltas_plot(tmp_path):
    import scelmo

    rng = np.random.default_rng(0)
    obs = {"A": rng.normal(size=50), "B": rng.normal(size=50)}
    pred = {"model": {"A": obs["A"] + 0.1, "B": -obs["B"]}, "mean shift": {"A": np.zeros(50)}}
    out = tmp_path / "d.png"
    fig = scelmo.pl.perturbation_deltas(obs, pred, save=out, show=False)
    assert out.stat().st_size > 1000 and len([a for a in fig.axes if a.get_visible()]) == 2
    from scelmo.errors import ScelmoError

    with pytest.raises(ScelmoError, match="No observed delta"):
        scelmo.pl.perturbation_deltas(obs, pred, perturbations=["C"], show=False)


def test_project_to_seen_reads_unseen_vectors_through_the_seen_span(papalexi_small, tmp_path):
    from scelmo_torch.perturbation import PerturbationHead

    X, pert, _ = papalexi_small
    rng = np.random.default_rng(0)
    vec = {t: rng.normal(size=48).astype(np.float32) for t in TARGETS}
    opts = {"hidden": 16, "latent": 4, "mmd_weight": 0.0, "project_to_seen": True}
    train = {"max_epochs": 1, "progress": False, "seed": 0}
    pred, head = predict_held_out_targets(X, pert, vec, held_out=["CD86"], control=CONTROL, options=opts, training=train)
    basis = head.arrays["seen_basis"]
    assert basis.shape == (len(TARGETS) - 2, 48)  # 5 seen vectors, centred on their mean: rank 4
    seen = head._normalise(np.stack([vec[t] for t in head.seen_components]))
    assert np.allclose(seen @ basis.T @ basis, seen, atol=1e-5)
    unseen = head._normalise(vec["CD86"][None])  # a random 48-d vector is mostly outside the span
    assert np.allclose(unseen @ basis.T @ basis, unseen, atol=1e-5)
    _, plain = predict_held_out_targets(X, pert, vec, held_out=["CD86"], control=CONTROL,
                                        options={**opts, "project_to_seen": False}, training=train)
    raw = plain._normalise(vec["CD86"][None])
    assert np.linalg.norm(raw - raw @ basis.T @ basis) > 0.5 * np.linalg.norm(raw)
    # the seen components' inputs (and so the training) do not depend on the option
    assert np.allclose(seen, plain._normalise(np.stack([vec[t] for t in head.seen_components])), atol=1e-5)
    head.save_state(tmp_path / "h")
    back = PerturbationHead.load_state(tmp_path / "h")
    X_ctrl = X[pert == CONTROL]
    assert np.allclose(back.predict_mean(X_ctrl, "CD86"), pred["CD86"], atol=1e-5)


def test_the_bare_head_refuses_counts_whose_largest_value_is_small():
    """Trial finding: the bare PerturbationHead took raw counts for log-normalised values whenever
    no count exceeded 50 (a shallow screen, or a subset of its genes), and trained on them."""
    from scelmo import datasets

    a = datasets.papalexi2021()
    pert = a.obs["perturbation"].astype(str).to_numpy()
    rows = np.flatnonzero(np.isin(pert, [CONTROL, "IFNGR1", "JAK2"]))
    counts = a.layers["counts"][rows]  # real UMI counts
    shallow = counts[:, np.flatnonzero(counts.max(axis=0).toarray().ravel() <= 50)]
    assert shallow.shape[1] > 0 and 1 < shallow.max() <= 50
    rng = np.random.default_rng(0)
    vectors = {"IFNGR1": rng.normal(size=16), "JAK2": rng.normal(size=16)}
    head = PerturbationHead(unseen_scale=1.0, mmd_weight=0.0)
    for X in (shallow, shallow.toarray()):
        with pytest.raises(InputError, match="raw counts.*sc.pp.log1p"):
            head.fit(X, perturbations=pert[rows], control=CONTROL, perturbation_embeddings=vectors,
                     training={"max_epochs": 1})
    logged = shallow.astype(np.float32)
    logged.data = np.log1p(logged.data)  # the same values, log-transformed: taken
    head.fit(logged, perturbations=pert[rows], control=CONTROL, perturbation_embeddings=vectors,
             training={"max_epochs": 1, "progress": False})
    with pytest.raises(InputError, match="raw counts"):  # and at prediction
        head.predict(shallow[:5], "JAK2")
