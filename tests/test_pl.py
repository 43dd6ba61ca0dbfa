"""The plots draw what they say: the kept epoch, scanpy's basis names, scib-metrics' results table,
clear errors for absent metrics, label order in the confusion matrix, and the whole null band."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest

import scelmo
from scelmo.errors import InputError

matplotlib.use("Agg")


def _history(scores):
    n = len(scores)
    return pd.DataFrame({"epoch": np.arange(1.0, n + 1), "loss": np.linspace(1.0, 0.5, n), "ce": np.linspace(0.8, 0.4, n),
                         "triplet": np.linspace(0.2, 0.1, n), "val_score": scores, "seconds": np.full(n, 30.0),
                         "cpu_seconds": np.full(n, 90.0), "gpu_s": np.full(n, 5.0)})


def _marked(fig):
    """(epoch, score) of the circled best epoch on the validation panel."""
    x, y = fig.axes[1].collections[-1].get_offsets()[0]
    return float(x), float(y)


# --------------------------------------------------------------------------- training_history
def test_training_history_says_kept_not_best_when_the_kept_epoch_is_not_the_top():
    """Notebook trial: the legend read "best: 0.679 (epoch 6)" beside a higher epoch 4."""
    hist = _history([0.70, 0.80, 0.795, 0.60])
    model = SimpleNamespace(history=hist, train_info={"best_validation_score": 0.795},
                            head=SimpleNamespace(best_score=0.795))
    fig = scelmo.pl.training_history(model, show=False)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any(t.startswith("kept: 0.795 (epoch 3; within the noise of the best, 0.800)") for t in labels), labels


def test_training_history_marks_the_kept_epoch_on_a_tie():
    # tolerance 0.01 (one validation cell of 100): 0.795 at epoch 3 ties the 0.80 of epoch 2, and the later wins
    hist = _history([0.70, 0.80, 0.795, 0.60])
    model = SimpleNamespace(history=hist, train_info={"best_validation_score": 0.795},
                            head=SimpleNamespace(best_score=0.795))
    fig = scelmo.pl.training_history(model, show=False)
    assert _marked(fig) == (3.0, 0.795)
    assert "epoch 3" in fig.axes[1].get_legend().get_texts()[0].get_text()
    # only the head's kept score known
    fig = scelmo.pl.training_history(SimpleNamespace(history=hist, head=SimpleNamespace(best_score=0.795)), show=False)
    assert _marked(fig) == (3.0, 0.795)


def test_training_history_of_a_bare_history_marks_the_last_top_epoch():
    fig = scelmo.pl.training_history(_history([0.70, 0.80, 0.80, 0.60]), show=False)
    assert _marked(fig) == (3.0, 0.80)


def test_training_history_plots_no_timing_columns():
    fig = scelmo.pl.training_history(_history([0.7, 0.8, 0.75]), show=False)
    curves = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert curves == {"loss", "ce", "triplet"}


def test_training_history_epoch_ticks_are_integers():
    fig = scelmo.pl.training_history(_history([0.7, 0.8, 0.75]), show=False)
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


# --------------------------------------------------------------------------- embedding
@pytest.fixture
def small_adata():
    import anndata as ad

    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.random((40, 5)).astype(np.float32))
    a.obs["group"] = pd.Categorical(rng.choice(["x", "y"], 40))
    a.obsm["X_umap"] = rng.normal(size=(40, 2))
    return a


def test_embedding_takes_the_basis_without_the_x_prefix(small_adata):
    for basis in ("umap", "X_umap"):
        fig = scelmo.pl.embedding(small_adata, basis=basis, color="group", show=False)
        assert fig is not None
    with pytest.raises(scelmo.ScelmoError, match=r"'tsne'.*available obsm keys: 'X_umap'"):
        scelmo.pl.embedding(small_adata, basis="tsne", show=False)


def test_embedding_colours_by_what_scanpy_accepts(small_adata):
    """Trial finding: a gene named through gene_symbols=, or present only in adata.raw, was
    refused although scanpy plots both."""
    import anndata as ad

    a = small_adata
    a.var_names = [f"ENSG0000000000{i}" for i in range(a.n_vars)]
    a.var["symbol"] = ["CD3E", "MS4A1", "LYZ", "NKG7", "PPBP"]
    raw = ad.AnnData(np.hstack([a.X, a.X[:, :1]]), var=pd.DataFrame(index=[*a.var_names, "HES4"]))
    a.raw = raw
    assert scelmo.pl.embedding(a, basis="umap", color="CD3E", gene_symbols="symbol", use_raw=False, show=False)
    assert scelmo.pl.embedding(a, basis="umap", color="HES4", show=False)
    with pytest.raises(scelmo.ScelmoError, match=r"'GATA1'.*raw.var_names"):
        scelmo.pl.embedding(a, basis="umap", color="GATA1", show=False)


def test_embedding_panels_leave_room_for_long_legends(small_adata):
    """Trial finding: with several colours, each panel's legend ran under the next panel."""
    a = small_adata
    a.obs["long"] = pd.Categorical([f"{g} cells of a long and descriptive type name" for g in a.obs["group"]])
    fig = scelmo.pl.embedding(a, basis="umap", color=["long", "group", "long"], show=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    panels = sorted((ax for ax in fig.axes if ax.get_legend() is not None), key=lambda ax: ax.get_position().x0)
    assert len(panels) == 3
    for left, right in zip(panels[:-1], panels[1:], strict=True):
        legend = left.get_legend().get_window_extent(renderer)
        assert legend.x1 <= right.get_window_extent(renderer).x0, (legend, right.get_window_extent(renderer))


# --------------------------------------------------------------------------- integration_scores / metrics_bar
def _scib_results():
    """The shape of scib-metrics' ``Benchmarker.get_results()``: methods in the index, a "Metric Type" row."""
    df = pd.DataFrame(
        {"Isolated labels": [0.50, 0.60, "Bio conservation"], "KMeans NMI": [0.70, 0.72, "Bio conservation"],
         "iLISI": [0.10, 0.30, "Batch correction"], "Batch correction": [0.10, 0.30, "Aggregate score"],
         "Bio conservation": [0.60, 0.66, "Aggregate score"], "Total": [0.40, 0.516, "Aggregate score"]},
        index=pd.Index(["X_pca", "X_scelmo", "Metric Type"], name="Embedding"))
    assert all(pd.api.types.is_object_dtype(t) for t in df.dtypes)
    return df


def test_integration_scores_takes_scib_get_results():
    fig = scelmo.pl.integration_scores(_scib_results(), show=False)
    ax1, ax2 = fig.axes
    assert [round(b.get_width(), 3) for b in ax2.patches] == [0.516, 0.4]
    assert [t.get_text() for t in ax2.get_yticklabels()] == ["X_scelmo", "X_pca"]
    np.testing.assert_allclose([c.get_offsets()[0] for c in ax1.collections], [[0.10, 0.60], [0.30, 0.66]])


def test_integration_scores_names_the_methods_in_the_scatter():
    table = [{"method": "zero-shot", "bio_score": 0.6, "batch_score": 0.4}, {"method": "head", "bio_score": 0.65,
                                                                              "batch_score": 0.55}]
    fig = scelmo.pl.integration_scores(table, show=False)
    legend = fig.axes[0].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["zero-shot", "head"]


def test_metrics_bar_names_an_absent_metric():
    table = [{"method": "scelmo", "ari": 0.5, "nmi": 0.6}, {"method": "pca", "ari": 0.4, "nmi": 0.63}]
    with pytest.raises(InputError, match=r"'NMI'.*available: ari, nmi"):
        scelmo.pl.metrics_bar(table, metrics=["NMI"], show=False)
    with pytest.raises(ValueError, match="NMI"):  # InputError is a ValueError
        scelmo.pl.metrics_bar(table, metrics=["ari", "NMI"], show=False)


def test_metrics_bar_takes_methods_in_the_index():
    df = pd.DataFrame({"ari": [0.5, 0.4], "nmi": [0.6, 0.63]}, index=pd.Index(["scelmo", "pca"], name="method"))
    fig = scelmo.pl.metrics_bar(df, show=False)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scelmo", "pca"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ari", "nmi"]
    fig = scelmo.pl.metrics_bar(df.rename_axis(None), metrics=["nmi"], show=False)  # unnamed text index
    assert [round(p.get_height(), 2) for p in fig.axes[0].patches] == [0.6, 0.63]


def test_metrics_bar_takes_scib_get_results():
    fig = scelmo.pl.metrics_bar(_scib_results(), show=False)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["X_pca", "X_scelmo"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Isolated labels", "KMeans NMI", "iLISI", "Batch correction",
                                                            "Bio conservation", "Total"]
    fig = scelmo.pl.metrics_bar(_scib_results(), metrics=["Total"], show=False)
    assert [round(p.get_height(), 3) for p in fig.axes[0].patches] == [0.4, 0.516]


# --------------------------------------------------------------------------- confusion_matrix
def _ticks(fig):
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()]


def test_confusion_matrix_follows_the_category_order():
    cats = ["T", "B", "NK"]
    true = pd.Categorical(["B", "T", "NK", "T", "B"], categories=cats)
    pred = pd.Series(pd.Categorical(["B", "T", "T", "T", "NK"], categories=cats), index=list("vwxyz"))
    rows, cols = _ticks(scelmo.pl.confusion_matrix(true, pred, show=False))
    assert rows == cats and cols == cats
    # categories no cell has are left out
    rows, _ = _ticks(scelmo.pl.confusion_matrix(pd.Categorical(["B", "T"], categories=cats), ["B", "T"], show=False))
    assert rows == ["T", "B"]


def test_confusion_matrix_sorts_cluster_numbers_naturally():
    leiden = ["10", "2", "0", "1", "2", "10", "11"]
    rows, cols = _ticks(scelmo.pl.confusion_matrix(leiden, ["c10", "c2", "c1", "c1", "c2", "c10", "c2"], show=False))
    assert rows == ["0", "1", "2", "10", "11"]
    assert cols == ["c1", "c2", "c10"]


def test_confusion_matrix_counts_missing_labels_in_their_own_row():
    fig = scelmo.pl.confusion_matrix(["a", None, "b", np.nan], ["a", "a", None, "b"], normalize=False, show=False)
    rows, cols = _ticks(fig)
    assert rows == ["a", "b", "(missing)"] and cols == ["a", "b", "(missing)"]
    assert "None" not in rows + cols and "nan" not in rows + cols
    counts = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 0, 1], [1, 1, 0]])


# --------------------------------------------------------------------------- in_silico_ranking
def test_in_silico_ranking_x_limits_hold_every_band_and_bar():
    df = pd.DataFrame({"logit_shift": [0.5, 0.3, 0.1, -0.05], "null_median": [0.0, -0.05, 0.02, 0.0],
                       "null_robust_sd": [0.05, 0.2, 0.01, 0.01], "z_robust": [10.0, 1.75, 8.0, -5.0]},
                      index=["A", "B", "C", "D"])
    df.attrs.update(score="logit", source="s", target="t")
    fig = scelmo.pl.in_silico_ranking(df, show=False)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    edges = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]
    assert min(e[0] for e in edges) == pytest.approx(-0.45)  # gene B's band: -0.05 - 2 * 0.2
    width = hi - lo
    assert lo < min(min(e) for e in edges) - 0.02 * width  # a margin, not the band's end on the edge
    assert hi > max(max(e) for e in edges) + 0.02 * width


# --------------------------------------------------------------------------- trial findings (2026-12-05)
def test_embedding_draws_into_a_given_axes_and_leaves_its_figure_open(small_adata):
    """Trial finding: ``ax=`` (scanpy's way to fill subplots) crashed inside scanpy, which cannot
    return a figure it did not make; ``return_fig=`` clashed with the wrapper's own."""
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2)
    out = scelmo.pl.embedding(small_adata, basis="umap", color="group", ax=axs[1])
    assert out is fig and plt.fignum_exists(fig.number)  # not shown, not closed: the caller's figure
    assert axs[1].collections and not axs[0].collections
    with pytest.raises(InputError, match="one panel"):
        scelmo.pl.embedding(small_adata, basis="umap", color=["group", "group"], ax=axs[0])
    plt.close(fig)
    assert scelmo.pl.embedding(small_adata, basis="umap", color="group", return_fig=True, show=False) is not None
    assert scelmo.pl.embedding(small_adata, basis="umap", color=[], show=False) is not None
    with pytest.raises(InputError, match="no cells"):
        scelmo.pl.embedding(small_adata[:0], basis="umap", show=False)


def test_plots_leave_the_sessions_backend_alone(small_adata, monkeypatch, tmp_path):
    """Trial finding: any plot with ``save=`` or ``show=False`` switched matplotlib to Agg, which
    stops a notebook's inline figures (scanpy's too) for the rest of the session."""
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail(f"matplotlib.use{a} was called"))
    scelmo.pl.embedding(small_adata, basis="umap", color="group", save=tmp_path / "e.png")
    scelmo.pl.metrics_bar([{"method": "a", "ari": 0.5}], show=False)


def test_save_takes_a_path_not_true():
    with pytest.raises(InputError, match="file path"):
        scelmo.pl.metrics_bar([{"method": "a", "ari": 0.5}], save=True)


def test_metrics_bar_and_integration_scores_give_every_method_its_own_colour():
    """Trial finding: the 11th method took the 1st one's colour."""
    from matplotlib.colors import to_rgba

    rows = [{"method": f"m{i}", "bio_score": 0.5 + i / 100, "batch_score": 0.4, "ari": i / 12} for i in range(12)]
    fig = scelmo.pl.metrics_bar(rows, metrics=["ari"], show=False)
    bars = [c.patches[0].get_facecolor() for c in fig.axes[0].containers]
    assert len({tuple(np.round(b, 4)) for b in bars}) == 12
    fig = scelmo.pl.integration_scores(rows, show=False)
    dots = [to_rgba(c.get_facecolor()[0]) for c in fig.axes[0].collections]
    assert len({tuple(np.round(d, 4)) for d in dots}) == 12
    with pytest.raises(InputError, match="no rows"):
        scelmo.pl.metrics_bar(pd.DataFrame({"method": [], "ari": []}), show=False)


def test_integration_scores_shows_totals_above_one():
    """Trial finding: totals above 1 (not scib's scale) gave an inverted, empty axis."""
    rows = [{"method": "a", "bio_score": 1.5, "batch_score": 1.2, "total": 1.38},
            {"method": "b", "bio_score": 3.0, "batch_score": 1.5, "total": 2.4}]
    lo, hi = scelmo.pl.integration_scores(rows, show=False).axes[1].get_xlim()
    assert lo < 1.38 and hi > 2.4


def test_in_silico_ranking_reads_a_zarr_round_trip_and_names_an_empty_score(tmp_path):
    """Trial finding: zarr gives the gene names back as numpy's StringDType, which the plot's
    ``.astype(str)`` refused; an all-NaN score was reported as a missing 'delta_cosine'."""
    import anndata as ad

    a = ad.AnnData(np.zeros((2, 3), dtype=np.float32))
    a.uns["scelmo_in_silico"] = {"genes": np.array(["A", "B", "C"], dtype=np.dtypes.StringDType()),
                                 "logit_shift": np.array([0.3, 0.1, -0.2]), "source": "s", "target": "t"}
    fig = scelmo.pl.in_silico_ranking(a, show=False)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["C", "B", "A"]
    for bad in (0, -3, 2.5):  # trial finding: 0 said "no gene has a value", -3 drew every gene
        with pytest.raises(InputError, match="n_top must be a positive"):
            scelmo.pl.in_silico_ranking(a, n_top=bad, show=False)
    a.uns["scelmo_in_silico"]["logit_shift"] = np.full(3, np.nan)
    with pytest.raises(scelmo.ScelmoError, match="No gene has a value in column 'logit_shift'"):
        scelmo.pl.in_silico_ranking(a, show=False)


def test_training_history_of_a_history_slice_without_an_epoch_column():
    hist = _history([0.5, 0.6, 0.7, 0.65]).drop(columns="epoch").iloc[1:]
    fig = scelmo.pl.training_history(hist, show=False)
    assert fig.axes[0].lines


def test_perturbation_deltas_pairs_series_by_gene():
    """Trial finding: Series were paired by position, so a perfect prediction in the model's
    gene order scored r = -0.04 in the legend."""
    genes = [f"g{i}" for i in range(30)]
    obs = pd.Series(np.random.default_rng(0).normal(size=30), index=genes)
    pred = obs.iloc[::-1]  # the same values, in another gene order
    fig = scelmo.pl.perturbation_deltas({"KO": obs}, {"model": {"KO": pred}}, show=False)
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "model (r=1.00)"


# --------------------------------------------------------------------------- showing and saving
def test_a_shown_figure_is_not_returned_and_a_failed_save_closes_its_figure(tmp_path):
    """Notebook trial: every plot appeared twice (shown, then drawn again as the cell's returned
    value), and a save= into a folder that does not exist left its figure open. As scanpy: a
    shown figure returns None, show=False returns it, and saving makes missing folders."""
    import matplotlib.pyplot as plt

    plt.close("all")
    y = np.array(["a", "b", "a", "b"])
    assert scelmo.pl.confusion_matrix(y, y, show=True) is None
    assert scelmo.pl.confusion_matrix(y, y, show=False) is not None
    out = tmp_path / "new" / "folder" / "cm.png"
    assert scelmo.pl.confusion_matrix(y, y, save=out) is not None and out.is_file()
    (tmp_path / "afile").write_text("x")
    plt.close("all")
    with pytest.raises(InputError, match="its folder cannot be made"):  # (a file where a folder must be)
        scelmo.pl.confusion_matrix(y, y, save=tmp_path / "afile" / "cm.png")
    assert plt.get_fignums() == []


def test_return_fig_returns_the_figure_also_when_shown(small_adata):
    """A review: `scelmo.pl.embedding(..., return_fig=True)` returned None once shown (scanpy
    returns the figure)."""
    import matplotlib.pyplot as plt

    assert scelmo.pl.embedding(small_adata, basis="umap", color="group", show=True, return_fig=True) is not None
    assert scelmo.pl.embedding(small_adata, basis="umap", color="group", show=True) is None
    plt.close("all")
