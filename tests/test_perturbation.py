"""Perturbation prediction: metrics and baselines (core), synthetic data, and the torch head."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from scelmo import perturbation as P
from scelmo.errors import ConfigError, InputError, ScelmoWarning
from scelmo.genes import GeneEmbeddings

torch = pytest.importorskip("torch")
from scelmo_torch.perturbation import PerturbationHead  # noqa: E402


# --------------------------------------------------------------------------- core: metrics
def test_components_and_additive_shift():
    assert P.components("KLF1+CEBPA") == ("KLF1", "CEBPA")
    assert P.components("ctrl+KLF1", control="ctrl") == ("KLF1",)
    assert P.components("ctrl", control="ctrl") == ()
    ctrl = np.zeros(3)
    singles = {"A": np.array([1.0, 0, 0]), "B": np.array([0, 2.0, 0])}
    np.testing.assert_allclose(P.additive_shift(ctrl, singles, "A+B"), [1, 2, 0])
    assert P.additive_shift(ctrl, singles, "A+C") is None


def test_delta_scores_on_hand_made_cases():
    ctrl = np.array([1.0, 1.0, 1.0, 1.0])
    true = np.array([2.0, 1.0, 0.0, 1.5])  # delta 1, 0, -1, 0.5
    perfect = P.delta_scores(true, true, ctrl)
    assert perfect["r2_delta"] == pytest.approx(1.0)
    assert perfect["pearson_delta"] == pytest.approx(1.0)
    assert perfect["mse_delta"] == 0.0
    half = P.delta_scores(ctrl + 0.5 * (true - ctrl), true, ctrl)
    assert half["pearson_delta"] == pytest.approx(1.0)  # right direction, wrong size
    dt = true - ctrl
    expected_r2 = 1 - ((0.5 * dt) ** 2).sum() / ((dt - dt.mean()) ** 2).sum()
    assert half["r2_delta"] == pytest.approx(expected_r2)
    assert P.delta_scores(ctrl, true, ctrl)["r2_delta"] < 0  # "no change" is worse than the mean delta
    wrong = true.copy()
    wrong[[1, 3]] += 5.0  # wrong only outside the scored genes
    sub = P.delta_scores(wrong, true, ctrl, genes=[0, 2])
    assert sub["n_genes"] == 2 and sub["r2_delta"] == pytest.approx(1.0) and sub["mse_delta"] == 0.0
    assert P.delta_scores(wrong, true, ctrl)["r2_delta"] < 0
    with pytest.raises(InputError, match="one value per gene"):
        P.delta_scores(true[:3], true, ctrl)


def test_delta_scores_match_series_by_gene_and_read_boolean_masks():
    """Trial finding: Series were paired by position (a perfect prediction in another gene order
    scored 0.04, silently) and a boolean mask was read as the indices 0 and 1."""
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(60)]
    ctrl = pd.Series(rng.random(60), index=genes)
    true = ctrl + pd.Series(rng.normal(0, 1, 60), index=genes)
    shuffled = true.sample(frac=1, random_state=0)  # a perfect prediction, in another gene order
    assert P.delta_scores(shuffled, true, ctrl)["pearson_delta"] == pytest.approx(1.0)
    mask = np.zeros(60, bool)
    mask[:20] = True
    pred = true + pd.Series(rng.normal(0, 0.5, 60), index=genes)
    by_mask = P.delta_scores(pred, true, ctrl, mask)
    assert by_mask["n_genes"] == 20 and by_mask == P.delta_scores(pred, true, ctrl, np.arange(20))
    assert P.delta_scores(pred.to_numpy(), true.to_numpy(), ctrl.to_numpy(), mask) == by_mask
    assert P.delta_scores(pred, true, ctrl, pd.Series(mask, index=genes).sample(frac=1, random_state=1)) == by_mask
    assert P.delta_scores(pred, true, ctrl, genes[:20]) == by_mask  # gene names, for labelled means
    with pytest.raises(InputError, match="labelled by different genes"):
        P.delta_scores(pred.rename(index={"G0": "X"}), true, ctrl)
    with pytest.raises(InputError, match="cannot be matched"):
        P.delta_scores(pred, true.to_numpy(), ctrl)
    with pytest.raises(InputError, match="one True/False per gene"):
        P.delta_scores(pred, true, ctrl, mask[:30])
    (a, b), order = P.align_by_gene([shuffled, true])
    assert order == list(shuffled.index) and np.array_equal(a, b)


def test_top_de_genes_and_mean_shift():
    ctrl = np.array([0.0, 0.0, 0.0, 0.0])
    pert = np.array([0.1, -3.0, 2.0, 0.0])
    assert P.top_de_genes(ctrl, pert, 2).tolist() == [1, 2]
    np.testing.assert_allclose(P.mean_shift(ctrl, [[1, 1, 1, 1], [3, 1, -1, 1]]), [2, 1, 0, 1])
    with pytest.raises(InputError, match="reference delta"):
        P.mean_shift(ctrl, np.zeros((0, 4)))


def test_group_means_dense_and_sparse():
    import scipy.sparse as sp

    X = np.array([[1.0, 0], [3, 0], [0, 2], [0, 4]])
    pert = ["c", "c", "p", "p"]
    grp = ["g", "g", "g", "h"]
    for M in (X, sp.csr_matrix(X)):
        means, counts = P.group_means(M, pert, grp)
        np.testing.assert_allclose(means[("g", "c")], [2, 0])
        assert counts[("g", "p")] == 1 and counts[("h", "p")] == 1
    with pytest.raises(InputError, match="one label per cell"):
        P.group_means(X, pert[:3])


# --------------------------------------------------------------------------- synthetic data
def _fake_gene_embeddings(genes, dim=48, rank=6, seed=0):
    """Low-rank, anisotropic vectors (a shared offset, as real text embeddings have)."""
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(len(genes), rank)) @ rng.normal(size=(rank, dim)) + 0.3 * rng.normal(size=(len(genes), dim))
    vec += 3.0 * rng.normal(size=dim)
    return GeneEmbeddings(list(genes), vec.astype(np.float32))


@pytest.fixture(scope="module")
def synthetic():
    import scelmo.datasets as sd

    base = sd.pbmc68k_reduced()
    ge = _fake_gene_embeddings(base.var_names)
    adata = P.synthetic_genetic_perturbations(
        ge, adata=base, n_single=30, n_combo=12, cells_per_perturbation=25, effect_size=1.5, seed=1
    )
    return adata, ge


def test_synthetic_perturbations_have_known_additive_truth(synthetic):
    adata, _ = synthetic
    info = adata.uns["synthetic_perturbation"]
    names = info["perturbations"]
    assert len(names) == 42 and sum("+" in n for n in names) == 12
    assert adata.n_obs == 700 + 42 * 25
    eff = adata.varm["perturbation_effect"]
    col = {n: i for i, n in enumerate(names)}
    for combo in (n for n in names if "+" in n):
        a, b = combo.split("+")
        np.testing.assert_allclose(eff[:, col[combo]], eff[:, col[a]] + eff[:, col[b]], atol=1e-5)
    # the target gene itself is knocked down
    g = next(n for n in names if "+" not in n)
    assert eff[list(adata.var_names).index(g), col[g]] < -0.5
    # observed deltas follow the truth on the top genes
    means, _ = P.group_means(adata.X, adata.obs["perturbation"])
    delta = means[("all", g)] - means[("all", "ctrl")]
    top = np.argsort(-np.abs(eff[:, col[g]]))[:30]
    assert np.corrcoef(delta[top], eff[top, col[g]])[0, 1] > 0.7
    split = P.split_perturbations(names, seed=0)
    assert not set(split["train"]) & set(split["unseen_single"])
    assert all("+" in c for c in split["combo_seen1"] + split["combo_seen0"] + split["combo_seen2"])


def test_synthetic_bad_inputs(synthetic):
    import scelmo.datasets as sd

    _, ge = synthetic
    base = sd.pbmc68k_reduced()
    with pytest.raises(InputError, match="labels_key"):
        P.synthetic_genetic_perturbations(ge, adata=base, labels_key="nope")
    with pytest.raises(InputError, match="possible pairs"):
        P.synthetic_genetic_perturbations(ge, adata=base, n_single=3, n_combo=10)
    with pytest.raises(InputError, match="no gene embedding"):
        P.gene_perturbation_embeddings(["NOT_A_GENE"], ge)
    # an older symbol finds the current one (the Papalexi knockout "MARCH8", a table keyed by MARCHF8)
    from scelmo.genes import GeneEmbeddings

    table = GeneEmbeddings(["MARCHF8", "STAT1"], np.eye(2, 4, dtype=np.float32))
    emb = P.gene_perturbation_embeddings(["MARCH8", "STAT1"], table, conditioned=False)
    assert set(emb) == {"MARCH8", "STAT1"} and emb["MARCH8"][0] == 1.0
    # conditioned=True: the table's conditioned vectors (the space Model and `scelmo train` look genes up in)
    big = GeneEmbeddings([f"G{i}" for i in range(60)] + ["STAT1"], np.random.default_rng(0).standard_normal((61, 8)).astype(np.float32))
    cond = P.gene_perturbation_embeddings(["STAT1"], big, conditioned=True)["STAT1"]
    np.testing.assert_allclose(cond, big.aligned(["STAT1"], conditioned=True)[0][0], rtol=1e-6)


# --------------------------------------------------------------------------- the torch head
def _scores(adata, head, names, train_names):
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    means, _ = P.group_means(adata.X, pert)
    ctrl = means[("all", "ctrl")]
    Xc = adata.X[pert == "ctrl"]
    ref = [means[("all", p)] - ctrl for p in train_names]
    head_r, base_r = [], []
    for p in names:
        de = P.top_de_genes(ctrl, means[("all", p)], 100)
        head_r.append(P.delta_scores(head.predict_mean(Xc, p), means[("all", p)], ctrl, de)["pearson_delta"])
        base_r.append(P.delta_scores(P.mean_shift(ctrl, ref), means[("all", p)], ctrl, de)["pearson_delta"])
    return float(np.mean(head_r)), float(np.mean(base_r))


@pytest.fixture(scope="module")
def trained(synthetic):
    adata, ge = synthetic
    names = adata.uns["synthetic_perturbation"]["perturbations"]
    split = P.split_perturbations(names, seed=0)
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    keep = np.isin(pert, split["train"] + ["ctrl"])
    emb = P.gene_perturbation_embeddings(names, ge, conditioned=False)  # (raw: the synthetic truth is built from them)
    head = PerturbationHead(hidden=128, latent=32, mmd_weight=0.0)
    head.fit(adata.X[keep], perturbations=pert[keep], control="ctrl", perturbation_embeddings=emb,
             training={"max_epochs": 40, "progress": False})
    return head, split


def test_head_beats_mean_shift_on_unseen_perturbations(synthetic, trained):
    adata, _ = synthetic
    head, split = trained
    epochs = [h for h in head.history if h["epoch"] >= 1]  # (row 0: the check fit choosing unseen_scale)
    assert len(epochs) == 40 and epochs[-1]["loss"] < epochs[0]["loss"]
    h_seen, b_seen = _scores(adata, head, split["train"], split["train"])
    assert h_seen > 0.8 > 0.5 > b_seen
    h_unseen, b_unseen = _scores(adata, head, split["unseen_single"], split["train"])
    assert h_unseen > b_unseen + 0.2, (h_unseen, b_unseen)
    combos = split["combo_seen2"] + split["combo_seen1"] + split["combo_seen0"]
    h_combo, b_combo = _scores(adata, head, combos, split["train"])
    assert h_combo > b_combo + 0.2, (h_combo, b_combo)


def test_combinations_sum_and_control_means_no_change(synthetic, trained):
    adata, _ = synthetic
    head, split = trained
    a, b = split["unseen_single"][:2]
    np.testing.assert_allclose(
        head.perturbation_embedding(f"{a}+{b}"),
        head.perturbation_embedding(a) + head.perturbation_embedding(b), rtol=1e-5, atol=1e-5,
    )
    X = adata.X[:20].toarray()
    np.testing.assert_allclose(head.predict(X, "ctrl"), X, atol=1e-5)
    per_cell = head.predict(X, [a] * 10 + [f"{a}+{b}"] * 10)
    np.testing.assert_allclose(per_cell[:10], head.predict(X[:10], a), atol=1e-5)
    assert (per_cell >= 0).all()


def test_head_save_load_round_trip(tmp_path, synthetic, trained):
    adata, _ = synthetic
    head, split = trained
    head.save_state(tmp_path / "pert")
    again = PerturbationHead.load_state(tmp_path / "pert")
    X = adata.X[:50]
    p = split["unseen_single"][0]
    np.testing.assert_allclose(again.predict(X, p), head.predict(X, p), atol=1e-6)
    assert again.seen_components == head.seen_components
    assert set(again.components) == set(head.components)


def test_held_out_group_uses_its_own_control_cells():
    """Two cell groups with opposite baselines: the response depends on the control state."""
    rng = np.random.default_rng(0)
    n, G = 120, 20
    base = {"g1": np.r_[np.full(10, 2.0), np.zeros(10)], "g2": np.r_[np.zeros(10), np.full(10, 2.0)],
            "g3": np.r_[np.full(10, 2.0), np.zeros(10)]}
    X, pert, grp = [], [], []
    for g, mu in base.items():
        for cond in ("ctrl", "stim"):
            # "stim" halves every expressed gene: a state-dependent response
            m = mu * (0.5 if cond == "stim" else 1.0)
            X.append(np.clip(m + 0.1 * rng.normal(size=(n, G)), 0, None))
            pert += [cond] * n
            grp += [g] * n
    X = np.vstack(X).astype(np.float32)
    pert, grp = np.array(pert), np.array(grp)
    train = ~((grp == "g3") & (pert == "stim"))
    head = PerturbationHead(hidden=32, latent=8, mmd_weight=0.0, dropout=0.0)
    head.fit(X[train], perturbations=pert[train], control="ctrl", groups=grp[train],
             perturbation_embeddings={"stim": np.ones(4)}, training={"max_epochs": 60, "progress": False, "lr": 3e-3})
    ctrl3 = X[(grp == "g3") & (pert == "ctrl")]
    true = X[(grp == "g3") & (pert == "stim")].mean(0)
    pred = head.predict_mean(ctrl3, "stim")
    ms = P.mean_shift(ctrl3.mean(0), [X[(grp == g) & (pert == "stim")].mean(0) - X[(grp == g) & (pert == "ctrl")].mean(0)
                                      for g in ("g1", "g2")])
    err_head = np.abs(pred - true).mean()
    err_ms = np.abs(ms - true).mean()
    assert err_head < 0.5 * err_ms, (err_head, err_ms)


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_clear_errors(trained):
    head, _ = trained
    X = np.abs(np.random.default_rng(0).normal(size=(6, 5))).astype(np.float32)
    pert = ["ctrl", "ctrl", "A", "A", "B", "B"]
    emb = {"A": np.ones(3), "B": np.arange(3.0)}
    fresh = PerturbationHead()
    with pytest.raises(InputError, match="No control cells") as err:
        fresh.fit(X, perturbations=pert, control="control", perturbation_embeddings=emb)
    # the likely control is named, and the names read as plain text (they showed np.str_('A'))
    assert "likely: 'ctrl'" in str(err.value) and "np.str_" not in str(err.value)
    with pytest.raises(InputError, match="No embedding for perturbation component"):
        fresh.fit(X, perturbations=pert, control="ctrl", perturbation_embeddings={"A": np.ones(3)})
    with pytest.raises(InputError, match="raw counts"):
        fresh.fit(X * 1000, perturbations=pert, control="ctrl", perturbation_embeddings=emb)
    with pytest.raises(InputError, match="negative"):
        fresh.fit(-X, perturbations=pert, control="ctrl", perturbation_embeddings=emb)
    with pytest.raises(InputError, match="one per cell"):
        fresh.fit(X, perturbations=pert[:5], control="ctrl", perturbation_embeddings=emb)
    with pytest.raises(InputError, match="perturbation of each cell"):
        fresh.fit(X, control="ctrl", perturbation_embeddings=emb)
    with pytest.raises(InputError, match="no control cells"):
        fresh.fit(X, perturbations=pert, control="ctrl", groups=["a", "a", "b", "b", "b", "b"], perturbation_embeddings=emb)
    with pytest.raises(InputError, match="same length"):
        fresh.fit(X, perturbations=pert, control="ctrl", perturbation_embeddings={"A": np.ones(3), "B": np.ones(4)})
    with pytest.raises(ConfigError, match="Allowed options"):
        PerturbationHead(hiden=3)
    with pytest.raises(InputError, match="trained on 765"):
        head.predict(X, "ctrl")
    Xg = np.zeros((3, 765), np.float32)
    with pytest.raises(InputError, match="add_embeddings"):
        head.predict(Xg, "NOT_A_GENE")
    with pytest.raises(InputError, match="trained on 48-d"):
        head.predict(Xg, "NEW", perturbation_embeddings={"NEW": np.ones(7)})
    assert head.predict(Xg, "NEW", perturbation_embeddings={"NEW": np.ones(48)}).shape == (3, 765)
    # a component seen in training keeps its vector (an in-silico trial replaced IRF1's silently)
    seen = head.seen_components[0]
    with pytest.raises(InputError, match="seen in training"):
        head.add_embeddings({seen: np.ones(48)})


def test_driven_by_scelmo_model(tmp_path, synthetic):
    """scelmo.Model with perturbation_key: measured genes take their own gene vectors; predict_perturbation."""
    from scelmo.model import Model

    adata, ge = synthetic
    adata = adata[:900].copy()  # 700 controls + 8 perturbations
    adata.varm["scelmo"], _ = ge.aligned(list(adata.var_names))
    names = list(adata.obs["perturbation"].cat.remove_unused_categories().cat.categories[1:])
    Model.setup_anndata(adata, perturbation_key="perturbation")
    model = Model(adata, head="perturbation", hidden=32, latent=8, control="ctrl")
    model.train(max_epochs=2, progress=False)  # no perturbation_embeddings: gene names -> gene vectors
    # (epoch 0: the check fit choosing unseen_scale, as the annotation head's epoch 0 is its start)
    assert list(model.history["epoch"]) == [0.0, 1.0, 2.0] and model.train_info["epochs"] == 2
    assert model.get_latent_representation().shape == (900, 8)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:5].copy()
    pred = model.predict_perturbation(ctrl, names[0])
    assert pred.shape == (5, adata.n_vars) and list(pred.columns) == list(adata.var_names)
    combo = model.predict_perturbation(ctrl, f"{names[0]}+{names[1]}", mean=True)
    assert combo.shape == (adata.n_vars,) and np.isfinite(combo).all()
    np.testing.assert_allclose(model.predict_perturbation(ctrl, "ctrl").to_numpy(), ctrl.X.toarray()
                               if hasattr(ctrl.X, "toarray") else ctrl.X, atol=1e-4)  # control: no change
    shuffled = ctrl[:, ::-1].copy()  # other gene order: matched by name
    np.testing.assert_allclose(model.predict_perturbation(shuffled, names[0]).to_numpy(), pred.to_numpy(), atol=1e-5)
    model.save(tmp_path / "m")
    again = Model.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(again.predict_perturbation(ctrl, names[0]).to_numpy(), pred.to_numpy(), atol=1e-6)
    with pytest.raises(InputError, match="missing from the data"):
        model.predict_perturbation(ctrl[:, :10].copy(), names[0])
    # trial findings: a knockout of a measured gene held out of training takes its gene vector
    # (it was refused, with a hint naming an argument that does not exist); empty names are errors
    held_out = next(g for g in adata.var_names if g not in model.head.components and g not in names)
    out = model.predict_perturbation(ctrl, held_out, mean=True)
    assert np.isfinite(out).all() and held_out not in model.head.components  # predicting changes nothing
    for bad in ("", " ", "+", f"{names[0]}+"):
        with pytest.raises(InputError, match="empty"):
            model.predict_perturbation(ctrl, bad)
    # an in-silico trial: counts given to a model trained on log values were normalised over the
    # model's genes, silently
    counts = ctrl.copy()
    counts.X = np.round(np.expm1(ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else ctrl.X) * 3).astype(np.float32)
    with pytest.warns(ScelmoWarning, match="trained on log-normalised values"):
        model.predict_perturbation(counts, names[0])


def test_a_trained_component_in_other_case_is_that_component_and_predicting_changes_nothing(synthetic):
    """Trial finding: predict_perturbation(ctrl, "Jak2") on a model trained on "JAK2" predicted an
    untrained component from JAK2's gene vector (another prediction, a "not trained on" warning)
    and kept "Jak2" as a new component of the model."""
    from scelmo.model import Model

    adata, ge = synthetic
    adata = adata[:900].copy()
    adata.varm["scelmo"], _ = ge.aligned(list(adata.var_names))
    names = list(adata.obs["perturbation"].cat.remove_unused_categories().cat.categories[1:])
    Model.setup_anndata(adata, perturbation_key="perturbation")
    model = Model(adata, head="perturbation", hidden=16, latent=4, control="ctrl", unseen_scale=0.0)
    model.train(max_epochs=1, progress=False)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:5].copy()
    before = list(model.head.components)
    name = names[0]
    exact = model.predict_perturbation(ctrl, name, mean=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not trained on" warning
        other = model.predict_perturbation(ctrl, name.lower(), mean=True)
        per_cell = model.predict_perturbation(ctrl, [name.capitalize()] * 4 + ["ctrl"])
    np.testing.assert_allclose(other.to_numpy(), exact.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(per_cell.iloc[0].to_numpy(), model.predict_perturbation(ctrl, name).iloc[0], atol=1e-6)
    held_out = next(g for g in adata.var_names if g not in before)  # a measured gene never trained on
    with pytest.warns(Warning, match="not trained on"):
        model.predict_perturbation(ctrl, held_out)
    with pytest.warns(Warning, match="NEW was not trained on"):
        model.predict_perturbation(ctrl, "NEW", perturbation_embeddings={"NEW": np.ones(48)})
    assert model.head.components == before  # predicting never adds a component


def test_a_gene_of_the_table_is_never_renamed_to_a_trained_component_by_symbol():
    """Review finding: a knockout of IFNB1 (a gene of the model's table) was predicted as the
    trained stimulus 'IFN-beta', which the gene vocabulary also resolves to IFNB1."""
    from scelmo.model._model import _same_components

    with pytest.warns(Warning, match="names both IFNB1"):
        assert _same_components(["IFNB1"], ["IFN-beta"]) == {"IFNB1": "IFN-beta"}  # no such gene: by symbol
    assert _same_components(["IFNB1"], ["IFN-beta"], {"IFNB1", "STAT1"}) == {}  # the gene itself
    assert _same_components(["jak2"], ["JAK2"], {"jak2"}) == {"jak2": "JAK2"}  # case: still the component


def test_model_checks_perturbation_columns_before_embedding_genes(synthetic):
    """Trial finding: a control name no cell has failed only in train(), after every gene was
    embedded (minutes on a real dataset). Model(...) now refuses it before touching the genes."""
    from scelmo.model import Model

    adata, _ = synthetic
    adata = adata[:900].copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace({"ctrl": "non-targeting"})
    Model.setup_anndata(adata, perturbation_key="perturbation")
    with pytest.raises(InputError, match="No control cells.*likely: 'non-targeting'"):
        Model(adata, head="perturbation")  # the default control is "ctrl"
    assert "scelmo" not in adata.varm  # refused before the genes were embedded
    Model.setup_anndata(adata)
    with pytest.raises(InputError, match="perturbation_key="):
        Model(adata, head="perturbation", control="non-targeting")
    assert "scelmo" not in adata.varm


def test_cli_train_and_predict_perturbation(tmp_path, synthetic):
    import anndata as ad
    from click.testing import CliRunner

    from scelmo import plugin as plugins
    from scelmo.cli import cli

    plugins.add_commands(cli)
    adata, ge = synthetic
    adata = adata[:900].copy()
    adata.varm["scelmo"], _ = ge.aligned(list(adata.var_names))
    adata.write_h5ad(tmp_path / "train.h5ad")
    name = str(adata.obs["perturbation"].cat.remove_unused_categories().cat.categories[1])
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:20].copy()
    ctrl.write_h5ad(tmp_path / "ctrl.h5ad")
    r = CliRunner()
    res = r.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "m"), "--head", "perturbation",
                         "--perturbation-key", "perturbation", "--option", "control=\"ctrl\"", "--option", "latent=8",
                         "--max-epochs", "2"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["predict", str(tmp_path / "ctrl.h5ad"), "-m", str(tmp_path / "m"), "-o",
                         str(tmp_path / "pred.h5ad")])
    assert res.exit_code != 0 and "--perturbation" in res.output
    res = r.invoke(cli, ["predict", str(tmp_path / "ctrl.h5ad"), "-m", str(tmp_path / "m"), "-o",
                         str(tmp_path / "pred.h5ad"), "--perturbation", name])
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert out.shape == (20, adata.n_vars) and (out.obs["scelmo_perturbation"] == name).all()


def _cli_knockouts(labels):
    """A small screen of real gene names, log-normalised, as an .h5ad: 80 control cells and 30
    cells per label (shifted on a few genes)."""
    import anndata as ad

    import scelmo.datasets as sd

    genes = list(sd.pbmc68k_reduced().var_names[:60])
    rng = np.random.default_rng(0)
    X = [rng.gamma(2.0, 0.5, size=(80, 60))]
    for k, _ in enumerate(labels):
        x = rng.gamma(2.0, 0.5, size=(30, 60))
        x[:, 3 * k : 3 * k + 3] += 1.5
        X.append(x)
    obs = pd.DataFrame({"perturbation": ["non-targeting"] * 80 + [p for p in labels for _ in range(30)]})
    obs.index = obs.index.astype(str)
    a = ad.AnnData(np.vstack(X).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    return a


def _cli():
    from click.testing import CliRunner

    from scelmo import plugin as plugins
    from scelmo.cli import cli

    plugins.add_commands(cli)
    return CliRunner(), cli


def test_cli_trains_on_targets_under_old_symbols_and_gives_command_line_advice(tmp_path):
    """Trial finding: `scelmo train --head perturbation` on the Papalexi screen failed, since the
    CLI embedded the unmeasured target MARCH8, embed_genes keyed it by MARCHF8 and the lookup asked
    for MARCH8; the error then told a shell user to pass perturbation_embeddings={...}."""
    a = _cli_knockouts(["MARCH8", "STAT1", "JAK2"])
    assert "MARCH8" not in a.var_names and "STAT1" not in a.var_names
    a.write_h5ad(tmp_path / "screen.h5ad")
    r, cli = _cli()
    base = ["train", str(tmp_path / "screen.h5ad"), "--head", "perturbation", "--perturbation-key", "perturbation",
            "--option", 'control="non-targeting"', "--option", "hidden=8", "--option", "latent=4", "--max-epochs", "1"]
    res = r.invoke(cli, [*base, "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    # (a name read as a gene by another name is said: a stimulus "IFN-beta" would get IFNB1's vector)
    assert "read as genes by another name" in res.output and "MARCH8 -> MARCHF8" in res.output
    from scelmo.model import Model

    assert "MARCH8" in Model.load(tmp_path / "m").head.seen_components
    a[a.obs["perturbation"] == "non-targeting"][:10].copy().write_h5ad(tmp_path / "ctrl.h5ad")
    res = r.invoke(cli, ["predict", str(tmp_path / "ctrl.h5ad"), "-m", str(tmp_path / "m"), "-o",
                         str(tmp_path / "p.h5ad"), "--perturbation", "MARCHF8"])  # the current symbol
    assert res.exit_code == 0 and "predicted as the trained component 'MARCH8'" in res.output, res.output
    a.obs["perturbation"] = a.obs["perturbation"].replace({"JAK2": "NOT_A_GENE"})
    a.write_h5ad(tmp_path / "bad.h5ad")
    res = r.invoke(cli, [*base[:1], str(tmp_path / "bad.h5ad"), *base[2:], "-o", str(tmp_path / "m2")])
    assert res.exit_code != 0 and "NOT_A_GENE" in res.output and "command line" in res.output
    assert "Pass perturbation_embeddings" not in res.output  # (advice a shell user cannot follow)


def test_cli_predicts_a_held_out_target_the_data_does_not_measure(tmp_path):
    """Trial finding: `scelmo predict --perturbation CAV1` (a held-out knockout of a gene the data
    does not measure) failed with advice to call head.add_embeddings; it is embedded as train does."""
    a = _cli_knockouts(["STAT1", "JAK2", "IFNGR1", "CAV1"])
    a[a.obs["perturbation"] != "CAV1"].copy().write_h5ad(tmp_path / "train.h5ad")
    a[a.obs["perturbation"] == "non-targeting"][:10].copy().write_h5ad(tmp_path / "ctrl.h5ad")
    r, cli = _cli()
    res = r.invoke(cli, ["train", str(tmp_path / "train.h5ad"), "-o", str(tmp_path / "m"), "--head", "perturbation",
                         "--perturbation-key", "perturbation", "--option", 'control="non-targeting"',
                         "--option", "hidden=8", "--option", "latent=4", "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    import anndata as ad

    from scelmo.model import Model

    res = r.invoke(cli, ["predict", str(tmp_path / "ctrl.h5ad"), "-m", str(tmp_path / "m"), "-o",
                         str(tmp_path / "cav1.h5ad"), "--perturbation", "CAV1"])
    assert res.exit_code == 0, res.output
    assert ad.read_h5ad(tmp_path / "cav1.h5ad").shape == (10, 60)
    assert "CAV1" not in Model.load(tmp_path / "m").head.components  # the saved model is unchanged
    res = r.invoke(cli, ["predict", str(tmp_path / "ctrl.h5ad"), "-m", str(tmp_path / "m"), "-o",
                         str(tmp_path / "x.h5ad"), "--perturbation", "NOT_A_GENE"])
    assert res.exit_code != 0 and "command line" in res.output and "add_embeddings" not in res.output


# --------------------------------------------------------------------------- shared response
def _knowledge_free_knockouts(seed=0):
    """12 knockouts that share one response plus a specific one unrelated to their vectors."""
    rng = np.random.default_rng(seed)
    G, n = 40, 60
    common = np.r_[np.full(10, 1.0), np.zeros(30)]
    ctrl_mu = rng.uniform(1.5, 3.0, G)
    X, pert, vecs = [ctrl_mu + 0.2 * rng.normal(size=(2 * n, G))], ["ctrl"] * (2 * n), {}
    for k in range(12):
        specific = 0.5 * rng.normal(size=G) * (rng.random(G) < 0.2)
        X.append(ctrl_mu + common + specific + 0.2 * rng.normal(size=(n, G)))
        pert += [f"KO{k}"] * n
        vecs[f"KO{k}"] = rng.normal(size=16)
    return np.clip(np.vstack(X), 0, None).astype(np.float32), np.array(pert), vecs


def test_shared_response_starts_unseen_perturbations_at_the_mean_shift(tmp_path):
    X, pert, vecs = _knowledge_free_knockouts()
    held = [f"KO{k}" for k in range(8, 12)]
    train = ~np.isin(pert, held)
    ctrl = X[pert == "ctrl"]
    shifts = [X[pert == p].mean(0) - ctrl.mean(0) for p in np.unique(pert[train]) if p != "ctrl"]
    ms = P.mean_shift(ctrl.mean(0), shifts)
    opts = {"hidden": 32, "latent": 8, "mmd_weight": 0.0, "shared_response": True}
    head = PerturbationHead(**opts, unseen_scale=0.0)
    head.fit(X[train], perturbations=pert[train], control="ctrl", perturbation_embeddings=vecs,
             training={"max_epochs": 10, "progress": False})
    np.testing.assert_allclose(head.arrays["mean_shift"], np.mean(shifts, axis=0), rtol=1e-5, atol=1e-5)
    # exactly the mean shift, and said (trial finding: every unseen knockout came back alike, silently)
    from scelmo.errors import ScelmoWarning

    with pytest.warns(ScelmoWarning, match="KO9 was not trained on, and the head's unseen_scale is 0"):
        np.testing.assert_allclose(head.predict_mean(ctrl, "KO9"), ms, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.predict_mean(ctrl, "ctrl"), ctrl.mean(0), atol=1e-5)  # control: no change
    # chosen on held-out training knockouts: the vectors carry nothing here, so they are turned down
    auto = PerturbationHead(**opts, unseen_scale=None)
    with warnings.catch_warnings():  # trial finding: the validation's held-out knockouts were
        warnings.simplefilter("error", ScelmoWarning)  # reported to the user as "not trained on"
        auto.fit(X[train], perturbations=pert[train], control="ctrl", perturbation_embeddings=vecs,
                 training={"max_epochs": 40, "progress": False})
    check = auto.spec["unseen_scale_validation"]
    assert len(check["held_out"]) == 2 and set(check["mse"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    mse, limit = check["mse"], check["mse"][str(check["best"])] + check["standard_error"]
    assert auto.spec["unseen_scale"] == min(float(a) for a in mse if mse[a] <= limit)  # the one-SE rule
    err = np.mean([np.abs(auto.predict_mean(ctrl, k) - X[pert == k].mean(0)).mean() for k in held])
    err_ms = np.mean([np.abs(ms - X[pert == k].mean(0)).mean() for k in held])
    assert err <= 1.05 * err_ms, (err, err_ms)
    auto.save_state(tmp_path / "h")
    loaded = PerturbationHead.load_state(tmp_path / "h")
    np.testing.assert_allclose(loaded.predict_mean(ctrl, "KO9"), auto.predict_mean(ctrl, "KO9"), rtol=1e-5, atol=1e-5)


def test_counts_query_is_normalised_over_the_models_genes_and_a_view_is_left_alone(synthetic):
    """Trial finding: a counts query was normalised over all its genes, so genes the model
    never saw changed its predictions; and predicting for a view wrote provenance into it."""
    import anndata as ad
    import scipy.sparse as sp

    from scelmo.model import Model

    adata, ge = synthetic
    adata = adata[:800].copy()
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    adata.X = sp.csr_matrix(np.rint(np.expm1(np.clip(X, 0, None)) * 3).astype(np.float32))  # counts
    adata.varm["scelmo"], _ = ge.aligned(list(adata.var_names))
    names = list(adata.obs["perturbation"].cat.remove_unused_categories().cat.categories[1:])
    Model.setup_anndata(adata, perturbation_key="perturbation")
    model = Model(adata, head="perturbation", hidden=16, latent=4, control="ctrl")
    model.train(max_epochs=1, progress=False)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:6].copy()
    pred = model.predict_perturbation(ctrl, names[0]).to_numpy()
    extra = ad.AnnData(sp.csr_matrix(np.full((ctrl.n_obs, 5), 500.0, np.float32)), obs=ctrl.obs[[]],
                       var=pd.DataFrame(index=[f"EXTRA{i}" for i in range(5)]))
    wider = ad.concat([ctrl, extra], axis=1, merge="first")
    np.testing.assert_allclose(model.predict_perturbation(wider, names[0]).to_numpy(), pred, atol=1e-5)
    view = adata[adata.obs["perturbation"] == "ctrl"][:6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # anndata's "initializing view as actual"
        np.testing.assert_allclose(model.predict_perturbation(view, names[0]).to_numpy(), pred, atol=1e-5)
    assert view.is_view


def test_top_de_genes_matches_series_by_gene():
    """Review finding: top_de_genes paired Series by position while delta_scores matched them by
    gene, so `delta_scores(pred, true, ctrl, top_de_genes(ctrl, true))` scored the wrong genes."""
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(200)]
    ctrl = pd.Series(rng.normal(size=200), index=genes)
    delta = np.zeros(200)
    delta[:10] = np.linspace(3, 6, 10)  # only g0..g9 respond
    true = ctrl + delta
    top = P.top_de_genes(ctrl.iloc[::-1], true, 10)  # the control in another gene order
    assert sorted(top) == [f"g{i}" for i in range(10)]
    assert list(P.top_de_genes(ctrl.to_numpy(), true.to_numpy(), 2)) == [9, 8]  # arrays: indices
    scores = P.delta_scores(true.iloc[::-1], true, ctrl, top)
    assert scores["pearson_delta"] == pytest.approx(1.0)


def test_the_perturbation_column_may_be_registered_as_batch_key_as_documented():
    """Review finding: declaring requires_perturbations refused setup_anndata(batch_key=<column>),
    which the head documents as the other way to give the perturbations."""
    import scelmo

    a = _cli_knockouts(["STAT1", "JAK2"])
    scelmo.Model.setup_anndata(a, batch_key="perturbation")
    scelmo.Model(a, head="perturbation", control="non-targeting", hidden=8, latent=4)  # no error
    b = a.copy()
    scelmo.Model.setup_anndata(b)
    with pytest.raises(InputError, match="needs each cell's perturbation"):
        scelmo.Model(b, head="perturbation", control="non-targeting")


def test_model_embeds_unmeasured_knockouts_like_the_cli():
    """Trial finding: `scelmo train` embedded knocked-out genes the data does not measure, while
    `scelmo.Model(adata, head="perturbation")` failed on them at train(); a name that is no gene
    failed only then too."""
    from scelmo.model import Model

    a = _cli_knockouts(["MARCH8", "STAT1", "JAK2"])  # MARCH8 (an older symbol) and STAT1 not measured
    assert "STAT1" not in a.var_names
    Model.setup_anndata(a, perturbation_key="perturbation")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model = Model(a, head="perturbation", control="non-targeting", hidden=8, latent=4)
    assert any("MARCH8 -> MARCHF8" in str(w.message) for w in said)  # (read as a gene by another name: said)
    model.train(max_epochs=1, progress=False)
    assert {"MARCH8", "STAT1", "JAK2"} <= set(model.head.seen_components)
    # the vector is the one the CLI gives: the gene's, conditioned like the model's table
    vec, now = P.component_gene_vectors(["STAT1"], model.gene_table)
    assert now == ["STAT1"]
    given = model.head._init_embeddings  # (what the Model handed the head; a review: compare with that)
    assert given is not None and np.allclose(given["STAT1"], vec["STAT1"], atol=1e-5)
    # an untrained, unmeasured knockout is embedded at prediction too
    ctrl = a[a.obs["perturbation"] == "non-targeting"][:5].copy()
    assert model.predict_perturbation(ctrl, "IRF1", mean=True).shape == (a.n_vars,)
    # a component that is no gene: an error when the model is made, with the way out
    a.obs["perturbation"] = a.obs["perturbation"].astype(str).replace({"JAK2": "NOT_A_GENE"})
    with pytest.raises(InputError, match=r"NOT_A_GENE.*text_perturbation_embeddings"):
        Model(a, head="perturbation", control="non-targeting")
    # vectors given for it are used, the genes still found
    m2 = Model(a, head="perturbation", control="non-targeting", hidden=8, latent=4,
               perturbation_embeddings={"NOT_A_GENE": np.ones(model.gene_table.dim, np.float32)})
    m2.train(max_epochs=1, progress=False)
    assert {"NOT_A_GENE", "STAT1"} <= set(m2.head.seen_components)


# --------------------------------------------------------------------------- trial: the Model API
@pytest.fixture(scope="module")
def renamed(synthetic):
    """A perturbation Model trained on data whose gene at column 3 the model knows by another
    symbol (``var["scelmo_symbol"]``, as ``embed_genes`` records a renamed gene: Papalexi's DARS
    is DARS1), with a ``var`` column of its own."""
    from scelmo.model import Model

    adata, ge = synthetic
    adata = adata[:900].copy()
    adata.varm["scelmo"], _ = ge.aligned(list(adata.var_names))
    symbols = list(adata.var_names)
    symbols[3] = "NEWSYMBOL"
    adata.var["scelmo_symbol"] = symbols
    adata.var["note"] = [f"gene {i}" for i in range(adata.n_vars)]
    names = [str(n) for n in adata.obs["perturbation"].cat.remove_unused_categories().cat.categories[1:]]
    Model.setup_anndata(adata, perturbation_key="perturbation")
    model = Model(adata, head="perturbation", hidden=16, latent=4, control="ctrl", mmd_weight=0.0, unseen_scale=1.0)
    model.train(max_epochs=1, progress=False)
    assert "NEWSYMBOL" in model.train_genes and adata.var_names[3] not in model.train_genes  # (the model's own name)
    return adata, model, names


def test_predict_perturbation_labels_genes_by_the_querys_names(renamed):
    """Trial finding: predict_perturbation labelled genes by the model's symbols for them (14 of
    Papalexi's 299: DARS as DARS1, C10orf11 as LRMDA), so delta_scores and pl.perturbation_deltas
    against the data's own means failed and `pred - ctrl_mean` was NaN on those genes."""
    adata, model, names = renamed
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    cells = model.predict_perturbation(ctrl, names[0])
    assert list(cells.columns) == list(adata.var_names)
    pred = model.predict_perturbation(ctrl, names[0], mean=True)
    assert list(pred.index) == list(adata.var_names) and "NEWSYMBOL" not in pred.index
    ctrl_mean = pd.Series(np.asarray(ctrl.X.mean(axis=0)).ravel(), index=adata.var_names)
    observed = pd.Series(np.asarray(adata[adata.obs["perturbation"] == names[0]].X.mean(axis=0)).ravel(),
                         index=adata.var_names)
    assert not (pred - ctrl_mean).isna().any()
    assert np.isfinite(P.delta_scores(pred, observed, ctrl_mean)["pearson_delta"])
    shuffled = ctrl[:, ::-1].copy()  # another gene order: the training genes' order, the query's names
    assert list(model.predict_perturbation(shuffled, names[0]).columns) == list(adata.var_names)


def test_predict_perturbation_starts_from_the_training_control_cells_by_default(renamed, tmp_path):
    """Trial finding: predict_perturbation() without adata started from every training cell, the
    knockouts included, although the parameter is documented as the control cells."""
    from scelmo.model import Model

    adata, model, names = renamed
    is_ctrl = (adata.obs["perturbation"] == "ctrl").to_numpy()
    assert 0 < is_ctrl.sum() < adata.n_obs
    default = model.predict_perturbation(perturbation=names[0])
    assert list(default.index) == list(adata.obs_names[is_ctrl])
    np.testing.assert_allclose(default.to_numpy(), model.predict_perturbation(adata[is_ctrl].copy(), names[0]).to_numpy(),
                               atol=1e-6)
    assert adata.uns["scelmo"]["predict_perturbation"]["n_cells"] == int(is_ctrl.sum())  # (noted in the training data)
    # a loaded model: the control cells of the data bound to it; a query without the column is control cells
    model.save(tmp_path / "m")
    np.testing.assert_allclose(Model.load(tmp_path / "m", adata=adata).predict_perturbation(perturbation=names[0]),
                               default.to_numpy(), atol=1e-6)
    query = adata[is_ctrl][:7].copy()
    del query.obs["perturbation"]
    assert Model.load(tmp_path / "m", adata=query).predict_perturbation(perturbation=names[0]).shape == (7, adata.n_vars)
    with pytest.raises(InputError, match=r"pass the control cells"):
        Model.load(tmp_path / "m").predict_perturbation(perturbation=names[0])


def test_a_per_cell_mean_prediction_has_a_short_name(renamed):
    """Trial finding: predict_perturbation(ctrl, per_cell_list, mean=True) named the Series
    str(list), as long as the list (20,000 characters)."""
    adata, model, names = renamed
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    per_cell = [names[i % 2] for i in range(ctrl.n_obs)]
    mean = model.predict_perturbation(ctrl, per_cell, mean=True)
    assert mean.name == f"per cell ({', '.join(sorted(names[:2]))})"
    assert model.predict_perturbation(ctrl, names[0], mean=True).name == names[0]
    many = [names[i % 7] for i in range(ctrl.n_obs)]
    assert len(model.predict_perturbation(ctrl, many, mean=True).name) < 80


def test_predict_on_a_perturbation_model_points_to_predict_perturbation(renamed):
    """Trial finding: model.predict(...) on a perturbation model said "use the 'annotation' head"."""
    from scelmo.errors import ScelmoError

    adata, model, _ = renamed
    with pytest.raises(ScelmoError, match=r"model\.predict_perturbation\(ctrl_cells") as err:
        model.predict(adata)
    assert "annotation" not in str(err.value)


def test_cli_predict_perturbation_keeps_the_inputs_genes_and_var(tmp_path, renamed):
    """Trial finding: `scelmo predict --perturbation` wrote the model's symbols as var_names (DARS1
    for the input's DARS) and dropped the input's var columns."""
    import anndata as ad

    adata, model, names = renamed
    model.save(tmp_path / "m")
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:20].copy()
    ctrl.write_h5ad(tmp_path / "ctrl.h5ad")
    r, cli = _cli()
    res = r.invoke(cli, ["predict", str(tmp_path / "ctrl.h5ad"), "-m", str(tmp_path / "m"), "-o",
                         str(tmp_path / "pred.h5ad"), "--perturbation", names[0]])
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert list(out.var_names) == list(ctrl.var_names) and "NEWSYMBOL" not in out.var_names
    pd.testing.assert_frame_equal(out.var, ctrl.var)


def test_model_checks_the_cell_groups_when_made_and_gives_model_advice(synthetic):
    """Trial findings: a cell without a labels_key value failed only at train(), after the genes
    were embedded, telling a Model user to "pass groups=None" (a bare-head argument); a group with
    perturbed but no control cells was named np.str_('onlypert')."""
    from scelmo.model import Model

    adata, _ = synthetic
    adata = adata[:900].copy()  # no gene vectors: Model() would embed the genes
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["grp"] = pd.Series(["g1"] * adata.n_obs, index=adata.obs_names, dtype=object)
    adata.obs.iloc[np.flatnonzero(pert != "ctrl")[0], adata.obs.columns.get_loc("grp")] = None
    Model.setup_anndata(adata, perturbation_key="perturbation", labels_key="grp")
    with pytest.raises(InputError, match=r"1 of 900 cells have no cell group.*labels_key=None") as err:
        Model(adata, head="perturbation", control="ctrl")
    assert "groups=None" not in str(err.value)
    assert "scelmo" not in adata.varm  # refused before the genes were embedded
    adata.obs["grp"] = np.where(pert == pert[pert != "ctrl"][0], "onlypert", "g1")
    Model.setup_anndata(adata, perturbation_key="perturbation", labels_key="grp")
    with pytest.raises(InputError, match=r"Group\(s\) onlypert have perturbed cells but no control cells") as err:
        Model(adata, head="perturbation", control="ctrl")
    assert "np.str_" not in str(err.value) and "labels_key=None" in str(err.value)
    assert "scelmo" not in adata.varm
    # the bare head keeps its own advice
    X = np.abs(np.random.default_rng(0).normal(size=(6, 5))).astype(np.float32)
    with pytest.raises(InputError, match=r"groups=None") as err:
        PerturbationHead().fit(X, perturbations=["ctrl", "ctrl", "A", "A", "A", "A"], control="ctrl",
                               groups=["a", "a", None, "b", "b", "b"], perturbation_embeddings={"A": np.ones(3)})


def test_the_check_fit_for_unseen_scale_shows_progress_and_is_in_the_history(monkeypatch, capsys):
    """Trial finding: with unseen_scale=None, train(progress=True) first fitted a hidden second
    model (to choose unseen_scale) with no bar and no history row: silence for half the run."""
    import time

    X, pert, vecs = _knowledge_free_knockouts()
    monkeypatch.delenv("SCELMO_NO_PROGRESS", raising=False)
    head = PerturbationHead(hidden=16, latent=4, mmd_weight=0.0)
    t0 = time.perf_counter()
    head.fit(X, perturbations=pert, control="ctrl", perturbation_embeddings=vecs,
             training={"max_epochs": 3, "progress": True})
    wall = time.perf_counter() - t0
    said = capsys.readouterr().err
    assert "choosing unseen_scale" in said and "Pass unseen_scale=" in said  # what is fitted, and why
    assert "training perturbation check model (choosing unseen_scale)" in said  # its own bar
    first = head.history[0]
    assert first["epoch"] == 0 and "unseen_scale" in first["stage"] and np.isnan(first["loss"])
    assert [h["epoch"] for h in head.history] == [0.0, 1.0, 2.0, 3.0]
    assert first["seconds"] > 0 and sum(h["seconds"] for h in head.history) > 0.6 * wall  # the time is accounted for
    fixed = PerturbationHead(hidden=16, latent=4, mmd_weight=0.0, unseen_scale=1.0)  # no check fit: no row
    fixed.fit(X, perturbations=pert, control="ctrl", perturbation_embeddings=vecs, training={"max_epochs": 1})
    assert [h["epoch"] for h in fixed.history] == [1.0]


def test_validation_settings_the_perturbation_head_does_not_use_are_said(synthetic):
    """Trial finding: early_stopping=True, patience, validation_fraction and check_every were
    accepted and silently ignored by the perturbation head (it has no validation score)."""
    from scelmo.model import Model

    adata, ge = synthetic
    adata = adata[:900].copy()
    adata.varm["scelmo"], _ = ge.aligned(list(adata.var_names))
    Model.setup_anndata(adata, perturbation_key="perturbation")
    model = Model(adata, head="perturbation", hidden=8, latent=4, control="ctrl", mmd_weight=0.0, unseen_scale=1.0)
    with pytest.warns(ScelmoWarning, match=r"does not use early_stopping=True, check_every=1, patience=2, "
                                           r"validation_fraction=0\.3.*max_epochs"):
        model.train(max_epochs=1, progress=False, early_stopping=True, patience=2, validation_fraction=0.3,
                    check_every=1)
    assert model.train_info["epochs"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScelmoWarning)  # what it does anyway: nothing to say
        model.train(max_epochs=1, progress=False, early_stopping=False, validation_fraction=0.0)
