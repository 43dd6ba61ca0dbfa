"""Plots (matplotlib via scanpy). Figures saved with ``save=`` are written atomically."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from scelmo import keys
from scelmo.errors import InputError, ScelmoError
from scelmo.io import atomic_path
from scelmo.metrics import confusion
from scelmo.perturbation import align_by_gene

__all__ = ["confusion_matrix", "embedding", "in_silico_ranking", "integration_scores", "metrics_bar",
           "perturbation_deltas", "training_history"]


def __dir__() -> list[str]:  # tab completion lists the plots, not the module's imports
    return __all__


def embedding(
    adata: Any,
    *,
    basis: str = keys.UMAP,
    color: str | list[str] | None = None,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
    **kwargs: Any,
) -> Any:
    """Scatter plot of a 2-D embedding of the cells, coloured by ``color``.

    Parameters
    ----------
    basis
        ``obsm`` key with 2-D coordinates; default the UMAP of the scelmo graph
        (run :func:`scelmo.tl.cluster` and :func:`scelmo.tl.umap` first). As in scanpy,
        the ``X_`` prefix may be left out: ``basis="umap"`` reads ``obsm["X_umap"]``
        (``obsm["umap"]`` when that key exists itself).
    adata
        Cells with ``adata.obsm[basis]``.
    color
        ``obs`` column(s) or gene name(s), as in :func:`scanpy.pl.embedding`.
    title, save, show, dpi
        As in :func:`metrics_bar` (``save`` writes the figure atomically; ``show``
        defaults to showing only when not saving).
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    The matplotlib :class:`~matplotlib.figure.Figure`; ``None`` when it was shown (as scanpy).
    """
    ax = kwargs.pop("ax", None)
    return_fig = bool(kwargs.pop("return_fig", False))  # (as scanpy: the figure, also once shown)
    show = _begin(save, show if show is not None or ax is None else False)
    import scanpy as sc

    basis = _resolve_basis(adata, basis)
    if adata.obsm[basis].shape[1] < 2:
        raise ScelmoError(f"adata.obsm[{basis!r}] has fewer than 2 columns; cannot plot it.")
    if adata.n_obs == 0:
        raise InputError("The AnnData has no cells; there is nothing to plot.")
    if color is not None and not isinstance(color, str) and len(list(color)) == 0:
        color = None
    if color is not None:  # what scanpy can colour by: obs columns, genes of var or raw, or by gene_symbols
        known = set(adata.obs.columns) | set(map(str, adata.var_names))
        if adata.raw is not None and kwargs.get("use_raw", True) is not False:
            known |= set(map(str, adata.raw.var_names))
        symbols = kwargs.get("gene_symbols")
        if symbols is not None:
            for var in (adata.var, getattr(adata.raw, "var", None)):
                if var is not None and symbols in var:
                    known |= set(map(str, var[symbols]))
        missing = [c for c in ([color] if isinstance(color, str) else color) if str(c) not in known]
        if missing:
            where = "adata.obs columns, var_names" + (", raw.var_names" if adata.raw is not None else "") + (
                f" or var[{symbols!r}]" if symbols is not None else " (or pass gene_symbols= naming a var column)")
            raise ScelmoError(f"Cannot colour by {missing}: not in {where}.")
    colors = [color] if isinstance(color, str) else list(color or [])
    if ax is not None:  # one panel drawn into the caller's axes (scanpy's ax=), left open for them
        if len(colors) > 1:
            raise InputError(f"ax= takes one panel, and {len(colors)} colours were given; give one color= "
                             "per call, or leave ax= out for a grid of panels.")
        sc.pl.embedding(adata, basis=basis, color=color, title=title, show=False, ax=ax, **kwargs)
        return _finish(ax.figure, save, show, dpi, close=False, return_fig=return_fig)
    if len(colors) > 1 and "wspace" not in kwargs:  # room for each panel's legend before the next panel
        kwargs["wspace"] = _legend_space(adata, colors, kwargs.get("legend_loc", "right margin"),
                                         kwargs.get("legend_fontsize"))
    fig = sc.pl.embedding(adata, basis=basis, color=color, title=title, show=False, return_fig=True, **kwargs)
    return _finish(fig, save, show, dpi, return_fig=return_fig)


def _legend_space(adata: Any, colors: list[str], legend_loc: str | None, fontsize: Any = None) -> float:
    """scanpy's ``wspace`` (a share of a panel's width) that fits the widest right-margin
    legend among ``colors`` and the next panel's axis label (scanpy's default, 0.1, lets the
    next panel cover long names). Category names are measured in the legend's font."""
    import matplotlib as mpl
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if legend_loc != "right margin":
        return 0.25
    probe = Figure()
    renderer = FigureCanvasAgg(probe).get_renderer()
    size = fontsize if fontsize is not None else mpl.rcParams["legend.fontsize"]
    widest = 0.0  # inches
    for c in colors:
        col = adata.obs[c] if c in adata.obs.columns else None
        if col is not None and (isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object):
            cats = col.astype("category").cat.categories
            n_cols = 1 if len(cats) <= 14 else 2 if len(cats) <= 30 else 3  # scanpy's legend columns
            text = max((probe.text(0, 0, str(x), fontsize=size).get_window_extent(renderer).width
                        for x in cats), default=0.0) / probe.dpi
            widest = max(widest, n_cols * (text + 0.35))  # + marker and gap, per legend column
    if not widest:
        return 0.25
    axes_width = mpl.rcParams["figure.figsize"][0] * 0.84  # a panel's axes in scanpy's grid (measured)
    return (widest + 0.3) / axes_width  # + the next panel's axis label and a gap


def _resolve_basis(adata: Any, basis: str) -> str:
    """The ``obsm`` key of ``basis``: ``basis`` itself, else ``"X_" + basis`` (scanpy's rule)."""
    for key in (basis, f"X_{basis}"):
        if key in adata.obsm:
            return key
    tried = f"adata.obsm[{basis!r}]" + ("" if basis.startswith("X_") else f" (or [{'X_' + basis!r}])")
    available = ", ".join(map(repr, adata.obsm.keys())) or "none"
    if basis in (keys.UMAP, keys.UMAP[2:]):
        hint = "Run `scelmo.tl.cluster(adata)` and `scelmo.tl.umap(adata)` first, or pass basis=."
    elif basis in (keys.SCANPY_UMAP, keys.SCANPY_UMAP[2:]):
        hint = "Run `scelmo.tl.umap(adata)` (it also writes obsm['X_umap']) or `sc.tl.umap(adata)` first, or pass basis=."
    else:
        hint = "Pass basis= one of the available keys."
    raise ScelmoError(f"{tried} not found (available obsm keys: {available}). {hint}")


def _begin(save: str | os.PathLike[str] | None, show: bool | None) -> bool:
    """Check ``save`` and resolve ``show`` (default: only when not saving). The session's
    matplotlib backend is left alone (a notebook's inline backend keeps working)."""
    if isinstance(save, bool) or (save is not None and not isinstance(save, (str, os.PathLike))):
        raise InputError(f"save= takes a file path such as 'umap.png' (the format follows the extension), "
                         f"not {save!r}.")
    return bool(show) if show is not None else save is None


def _finish(fig: Any, save: str | os.PathLike[str] | None, show: bool | None, dpi: int,
            *, close: bool = True, return_fig: bool = False) -> Any:
    """Save (atomically; missing folders are made, as scanpy does) and show the figure; a figure
    not shown is closed unless ``close=False`` (drawn into the caller's axes). Returns the figure,
    or ``None`` once shown, as scanpy: a returned figure is drawn again as a notebook cell's
    value (a notebook trial saw every plot twice). A failed save closes the figure it drew."""
    import matplotlib.pyplot as plt

    if save is not None:
        suffix = os.path.splitext(str(save))[1].lstrip(".") or "png"
        try:
            try:
                Path(save).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"Cannot save the figure to {save}: its folder cannot be made ({exc}). "
                                 "Pass a path in a folder you can write to.") from None
            with atomic_path(save) as tmp:
                fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix)
        except BaseException:
            if close:
                plt.close(fig)
            raise
    if show:
        plt.show()
        return fig if return_fig else None
    if close:
        plt.close(fig)
    return fig


#: scib-metrics' ``Benchmarker.get_results()``: the row that names each column's kind of metric.
_SCIB_METRIC_TYPE = "Metric Type"
#: scib-metrics' names of the aggregate columns, under the column names scelmo uses by default.
_SCIB_AGGREGATES = {"bio_score": "Bio conservation", "batch_score": "Batch correction", "total": "Total"}


def _method_table(table: Any, method_col: str) -> Any:
    """A table of one row per method, with a ``method_col`` column and float metric columns.

    Takes a tidy table (a DataFrame or list of dicts with a ``method_col`` column) or a
    DataFrame whose index names the methods (a named or non-numeric index), such as
    scib-metrics' ``Benchmarker.get_results()`` (index ``"Embedding"``): its
    ``"Metric Type"`` row is dropped and its object columns, all numbers once that row is
    gone, become floats. Text columns stay text.
    """
    import pandas as pd

    df = pd.DataFrame(table)
    if _SCIB_METRIC_TYPE in df.index:
        df = df.drop(index=_SCIB_METRIC_TYPE)
    index_names_methods = df.index.name is not None or not pd.api.types.is_numeric_dtype(df.index.dtype)
    if method_col not in df.columns and index_names_methods and len(df):
        df = df.rename_axis(method_col).reset_index()
    for c in df.columns:
        if c != method_col and pd.api.types.is_object_dtype(df[c].dtype):
            with contextlib.suppress(TypeError, ValueError):  # else a text column: not a metric
                df[c] = pd.to_numeric(df[c]).astype(float)
    return df


def metrics_bar(
    table: Any,
    *,
    metrics: list[str] | None = None,
    method_col: str = "method",
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Grouped bar chart of metrics per method.

    Parameters
    ----------
    table
        A pandas DataFrame (or list of dicts) with one row per method, a ``method_col``
        column and one numeric column per metric. The methods may instead be the index
        (a named or text index), as in scib-metrics' ``Benchmarker.get_results()``,
        which is taken as it is (its ``"Metric Type"`` row is dropped).
    metrics
        Columns to plot (default: every numeric column).
    method_col
        Column naming the methods (used when the table has it; else the index).
    title
        Figure title.
    save
        Write the figure to this path (PNG, PDF, SVG... by extension), atomically.
    show
        Show the figure (default: only when not saving).
    dpi
        Resolution of the saved figure.

    Returns
    -------
    The matplotlib Figure; ``None`` when it was shown (as scanpy: ``show=False`` returns it).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import pandas as pd

    df = _method_table(table, method_col)
    if method_col not in df:
        raise ScelmoError(f"Column {method_col!r} not found (columns: {', '.join(map(str, df.columns))}); "
                          "pass method_col=, or give the methods as the table's index.")
    numeric = [c for c in df.columns if c != method_col and pd.api.types.is_numeric_dtype(df[c])]
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics:
        absent = [m for m in metrics if m not in numeric]
        if absent:
            raise InputError(f"Metric(s) {absent} not numeric columns of the table (available: "
                             f"{', '.join(map(str, numeric)) or 'none'}); pass metrics= from those.")
    metrics = list(metrics) if metrics else numeric
    if not metrics:
        raise ScelmoError("No numeric metric columns to plot.")
    n_m, n_x = len(df), len(metrics)
    if n_m == 0:
        raise InputError("The table has no rows; give one row per method.")
    width = 0.8 / n_m
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * n_x + 2), 3.8))
    x = np.arange(n_x)
    colors = _distinct_colors(n_m)
    for i, (_, row) in enumerate(df.iterrows()):
        ax.bar(x + (i - (n_m - 1) / 2) * width, [row[m] for m in metrics], width, label=str(row[method_col]),
               color=colors[i])
    ax.set_xticks(x, metrics, rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.legend(frameon=False, fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title)
    return _finish(fig, save, show, dpi)


def _distinct_colors(n: int) -> list[Any]:
    """``n`` colours no two of which are the same: matplotlib's default cycle up to 10,
    tab20 up to 20, then evenly spaced hues of a perceptual map."""
    import matplotlib as mpl

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return list(mpl.colormaps["tab20"].colors[:n])
    return [mpl.colormaps["turbo"](x) for x in np.linspace(0.03, 0.97, n)]


def confusion_matrix(
    labels_true: Any,
    labels_pred: Any,
    *,
    normalize: bool = True,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Heatmap of true vs predicted labels (rows normalised to fractions by default).

    Rows and columns follow the category order of a pandas Categorical (or a Series of
    category dtype; categories no cell has are left out); other labels are sorted
    naturally, numbers by value, so Leiden clusters read ``0, 1, 2, ..., 10``. Missing
    labels (``None``, NaN) are counted in a last row / column named ``"(missing)"``.

    Parameters
    ----------
    labels_true, labels_pred
        One label per cell (a sequence, array, Categorical or Series).
    normalize
        Show each true label's row as fractions (default) instead of cell counts.
    title, save, show, dpi
        As in :func:`metrics_bar`.

    Returns
    -------
    The matplotlib Figure; ``None`` when it was shown (as scanpy: ``show=False`` returns it).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt

    true, rows = _ordered_labels(labels_true)
    pred, cols = _ordered_labels(labels_pred)
    cm = confusion(true, pred).reindex(index=rows, columns=cols, fill_value=0)
    values = cm.div(cm.sum(axis=1), axis=0) if normalize else cm
    fig, ax = plt.subplots(figsize=(0.5 * cm.shape[1] + 3, 0.45 * cm.shape[0] + 2))
    im = ax.imshow(values.to_numpy(dtype=float), cmap="Blues", vmin=0, aspect="auto")
    ax.set_xticks(range(cm.shape[1]), cm.columns, rotation=45, ha="right")
    ax.set_yticks(range(cm.shape[0]), cm.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            v = values.iat[i, j]
            if v:
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center",
                        fontsize=7, color="white" if v > 0.6 * values.to_numpy().max() else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of true label" if normalize else "cells")
    if title:
        ax.set_title(title)
    return _finish(fig, save, show, dpi)


#: Row / column of :func:`confusion_matrix` that counts the cells without a label.
MISSING_LABEL = "(missing)"


def _natural_key(label: str) -> list[Any]:
    """Sort key: digit runs compare as numbers ("2" < "10", "c2" < "c10")."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", label))]


def _ordered_labels(labels: Any) -> tuple[np.ndarray, list[str]]:
    """Labels as text (missing ones as :data:`MISSING_LABEL`) and the order to show them in.

    Categorical labels keep their category order (categories no cell has are dropped); others
    are sorted by value when all are numbers, else naturally. Missing labels come last.
    """
    import pandas as pd

    if np.ndim(labels) != 1:
        raise InputError(f"Labels must be one-dimensional (one per cell), got shape {np.shape(labels)}.")
    s = pd.Series(labels.array if isinstance(labels, pd.Series | pd.Index) else labels)  # (the index is not a label)
    missing = s.isna().to_numpy()
    text = s.astype(object).where(~missing, MISSING_LABEL).astype(str).to_numpy()
    if isinstance(s.dtype, pd.CategoricalDtype):
        present = set(text[~missing])
        order = [str(c) for c in s.cat.categories if str(c) in present]
    else:
        order = sorted(set(text[~missing]))
        try:
            order.sort(key=float)
        except ValueError:
            order.sort(key=_natural_key)
    if missing.any():
        order.append(MISSING_LABEL)
    return text, order


_IN_SILICO_LABELS = {
    "logit_shift": "mean change of log-odds(target) per cell",
    "target_probability_shift": "mean change of P(target)",
    "fraction_flipped": "change of fraction predicted target",
    "delta_cosine": "change of cosine(source mean, target mean)",
    "paired_t": "paired t of the per-cell log-odds change",
    "z": "effect in SDs of the random-gene null (z)",
    "z_robust": "effect in robust SDs of the random-gene null",
}
_IN_SILICO_SCORES = {"logit": "logit_shift", "probability": "target_probability_shift", "cosine": "delta_cosine"}


def _plain_ticks(ax: Any) -> None:
    """Tick labels written out in full ("3e-05", "0.25"): no offset / exponent label at the axis end."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}" if v != 0 else "0"))


def in_silico_ranking(
    data: Any,
    *,
    key: str = keys.IN_SILICO,
    by: str | None = None,
    n_top: int = 20,
    null_band: bool = True,
    robust: bool = True,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Bar chart of the genes whose in-silico deletion moves cells most toward the target.

    Each bar is a gene's effect; behind it, a grey band spans the median +/- 2 robust SDs
    (or the mean +/- 2 SDs, ``robust=False``) of the same effect for random genes of similar
    expression (the null of :func:`scelmo.tl.in_silico_deletion`), and the gene's ``z``
    (``z_robust`` / ``z``) is written at the bar's end, so an effect that stands out from the
    null is visible at a glance.

    Parameters
    ----------
    data
        The DataFrame returned by :func:`scelmo.tl.in_silico_deletion`, or an AnnData
        holding its result in ``adata.uns[key]``.
    by
        Column to plot: the ranking's score by default (``"logit_shift"`` unless the run
        used another ``score=``), or ``"target_probability_shift"``, ``"fraction_flipped"``,
        ``"delta_cosine"``, ``"paired_t"``, ``"z"``, ``"z_robust"``.
    n_top
        Number of genes shown (largest values first).
    null_band
        Draw the random-gene band (only for the column the null was computed on).
    robust
        Band and z from the null's median and robust SD (default) or its mean and SD.
    key
        ``uns`` key of the result when ``data`` is an AnnData.
    title, save, show, dpi
        As in :func:`metrics_bar`.

    Returns
    -------
    The matplotlib Figure; ``None`` when it was shown (as scanpy: ``show=False`` returns it).
    """
    if isinstance(n_top, bool) or not isinstance(n_top, (int, np.integer)) or n_top < 1:
        raise InputError(f"n_top must be a positive number of genes, got {n_top!r}.")
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        df, info = data, dict(data.attrs)
    else:
        if key not in data.uns:
            raise ScelmoError(f"adata.uns[{key!r}] not found. Run `scelmo.tl.in_silico_deletion` first.")
        info = data.uns[key]
        cols = [c for c, v in info.items() if c != "genes" and np.ndim(v) == 1 and len(v) == len(info["genes"])]
        # (str() per name: a zarr round trip gives numpy's StringDType, which .astype(str) refuses)
        df = pd.DataFrame({c: np.asarray(info[c]) for c in cols}, index=pd.Index([str(g) for g in info["genes"]]))
    source, target, factor = info.get("source"), info.get("target"), info.get("factor")
    scored = _IN_SILICO_SCORES.get(str(info.get("score", "")))
    if by is None:
        have = [c for c in ("logit_shift", "delta_cosine") if c in df]
        by = scored or next((c for c in have if df[c].notna().any()), have[0] if have else "logit_shift")
    if by not in df:
        raise ScelmoError(f"Column {by!r} not in the results (available: {', '.join(map(str, df.columns))}).")
    top = df.loc[df[by].dropna().sort_values(ascending=False).index[:n_top]].iloc[::-1]
    if top.empty:
        raise ScelmoError(f"No gene has a value in column {by!r}.")
    y = np.arange(len(top))
    vals = top[by].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(6.2, 0.3 * len(top) + 1.5))
    center, scale, zcol = ("null_median", "null_robust_sd", "z_robust") if robust else ("null_mean", "null_sd", "z")
    band = null_band and by == scored and {center, scale} <= set(top.columns)
    if band:
        lo = (top[center] - 2 * top[scale]).to_numpy(dtype=float)
        hi = (top[center] + 2 * top[scale]).to_numpy(dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        what = "median ± 2 robust SD" if robust else "mean ± 2 SD"
        ax.barh(y[ok], (hi - lo)[ok], left=lo[ok], height=0.9, color="#d9d9d9", zorder=1,
                label=f"random genes of the same expression: {what}")
    colors = ["#2b8cbe" if v > 0 else "#969696" for v in vals]
    ax.barh(y, vals, height=0.55, color=colors, zorder=2)
    ax.axvline(0, color="black", lw=0.8, zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels(top.index.astype(str), fontsize=9)
    ax.set_ylim(-0.7, len(top) - 0.3)
    span = max(float(np.nanmax(np.abs(vals))), 1e-300)
    labelled = np.zeros(len(vals), dtype=bool)  # bars with a z label at their end
    if band and zcol in top:
        for i, (yi, v, zv) in enumerate(zip(y, vals, top[zcol].to_numpy(dtype=float), strict=True)):
            if np.isfinite(zv):
                labelled[i] = True
                ax.text(v + 0.01 * span if v >= 0 else v - 0.01 * span, yi, f"z={zv:.0f}" if abs(zv) >= 10 else f"z={zv:.1f}",
                        va="center", ha="left" if v >= 0 else "right", fontsize=7, color="#444444", zorder=4)
    # x-limits around every bar, band and z label (autoscaling puts a band's end on the axes' edge)
    left, right = min(float(np.nanmin(vals)), 0.0), max(float(np.nanmax(vals)), 0.0)
    if band and ok.any():
        left, right = min(left, float(lo[ok].min())), max(right, float(hi[ok].max()))
    width = right - left if np.isfinite(right - left) and right > left else 1.0
    ax.set_xlim(left - (0.18 * span if (labelled & (vals < 0)).any() else 0.04 * width),
                right + (0.18 * span if (labelled & (vals >= 0)).any() else 0.04 * width))
    _plain_ticks(ax)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel(_IN_SILICO_LABELS.get(by, by))
    ax.spines[["top", "right"]].set_visible(False)
    if band:  # above the bars, under the title: never on top of a bar
        ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), borderaxespad=0.1)
    if title is None and source and target:
        what = "deletion" if not factor else f"x{float(factor):g}"
        title = f"in-silico {what}: {source} -> {target}"
    if title:
        ax.set_title(title, fontsize=10, pad=16 if band else 6)
    fig.tight_layout()
    return _finish(fig, save, show, dpi)


def _is_timing(column: Any) -> bool:
    """A history column that times the epoch (``seconds``, ``cpu_seconds``, ``*_s``): not a loss."""
    return str(column) == "seconds" or str(column).endswith(("_seconds", "_s"))


def _kept_epoch(model: Any, scores: Any) -> Any:
    """Index (in ``scores``, the checked epochs' validation scores) of the epoch the model kept.

    The model keeps the later epoch when scores tie within its tolerance, so the kept epoch
    is the last one whose score is the kept best score (``train_info["best_validation_score"]``
    or ``head.best_score``); without one (a bare history), the last epoch with the top score.
    """
    values = scores.to_numpy(dtype=float)
    info = getattr(model, "train_info", None)
    kept = info.get("best_validation_score") if isinstance(info, dict) else None
    if kept is None:
        kept = getattr(getattr(model, "head", None), "best_score", None)
    if kept is not None and np.isfinite(float(kept)):
        same = np.flatnonzero(np.isclose(values, float(kept), rtol=1e-9, atol=1e-12))
        if same.size:
            return scores.index[same[-1]]
    return scores.index[np.flatnonzero(values == np.nanmax(values))[-1]]


def training_history(
    model: Any,
    *,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Loss curves and the validation score of a trained :class:`scelmo.Model`, per epoch.

    Left: the total loss and each of its parts (``ce``, ``triplet``, ...), as the head
    records them (timing columns such as ``seconds`` and ``cpu_seconds`` are left out).
    Right: the validation score on the epochs it was checked (the one early stopping
    follows), with the kept epoch marked: the last epoch whose score is the model's kept
    best score (``model.train_info["best_validation_score"]`` or ``model.head.best_score``;
    a later score within the tolerance of the best wins a tie), else the last epoch with
    the highest score. ``model`` may also be the history DataFrame itself
    (``model.history``); then the last epoch with the highest score is marked.

    Parameters
    ----------
    model
        A trained :class:`scelmo.Model`, or its ``history`` DataFrame.
    title, save, show, dpi
        As in :func:`metrics_bar`.

    Returns
    -------
    The matplotlib Figure; ``None`` when it was shown (as scanpy: ``show=False`` returns it).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    hist = model if isinstance(model, pd.DataFrame) else getattr(model, "history", None)
    if hist is None or len(hist) == 0:
        raise ScelmoError("This model has no training history. Run `model.train()` first.")
    hist = pd.DataFrame(hist)
    epoch = hist["epoch"] if "epoch" in hist else pd.Series(range(1, len(hist) + 1), index=hist.index)
    losses = [c for c in hist.columns if c not in ("epoch", "val_score") and not _is_timing(c)
              and pd.api.types.is_numeric_dtype(hist[c])]
    has_val = "val_score" in hist and hist["val_score"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 5, 3.4), squeeze=False)
    ax = axes[0, 0]
    for c in losses:
        ax.plot(epoch, hist[c], marker="o", ms=3, lw=1.5 if c == "loss" else 1, label=c)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss")
    ax.legend(frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    if has_val:
        ax = axes[0, 1]
        v = hist[hist["val_score"].notna()]
        ev = epoch[v.index]
        ax.plot(ev, v["val_score"], marker="o", color="C3")
        best = _kept_epoch(model, v["val_score"])
        kept, top = float(v.at[best, "val_score"]), float(v["val_score"].max())
        # (the kept epoch: the last as good as the best within the noise margin, so not always the top)
        label = (f"kept: {kept:.3f} (epoch {int(epoch[best])})" if kept >= top
                 else f"kept: {kept:.3f} (epoch {int(epoch[best])}; within the noise of the best, {top:.3f})")
        ax.scatter([epoch[best]], [kept], s=90, facecolors="none", edgecolors="k", label=label, zorder=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation score")
        ax.legend(frameon=False, fontsize="small")
        ax.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, save, show, dpi)


def perturbation_deltas(
    observed: Any,
    predicted: Any,
    *,
    perturbations: list[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Predicted against observed expression change, one panel per perturbation.

    Each point is a gene: x its observed delta (perturbed mean - control mean), y the
    delta a method predicted; the diagonal is a perfect prediction and points on the
    x-axis are "no change". Each method's Pearson correlation is in the legend.

    Parameters
    ----------
    observed
        ``{perturbation: observed delta (one value per gene)}``.
    predicted
        ``{method: {perturbation: predicted delta}}``; methods missing a perturbation are
        left out of its panel.
    perturbations
        Panels to draw, in order (default: every key of ``observed``).
    ncols
        Panels per row.
    title, save, show, dpi
        As in :func:`metrics_bar`.

    Returns
    -------
    The matplotlib :class:`~matplotlib.figure.Figure`; ``None`` when it was shown (as scanpy).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    names = list(perturbations) if perturbations is not None else list(observed)
    missing = [p for p in names if p not in observed]
    if missing:
        raise ScelmoError(f"No observed delta for {missing[:5]}; pass them in `observed`.")
    if not names or not predicted:
        raise ScelmoError("Give at least one perturbation in `observed` and one method in `predicted`.")
    ncols = max(1, min(int(ncols), len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, p in zip(axes.ravel(), names, strict=False):
        for i, (method, preds) in enumerate(predicted.items()):
            if p not in preds:
                continue
            # (Series are matched by gene label, arrays by position: a prediction in the model's
            # gene order is not paired with another order's observation)
            (obs, pred), _ = align_by_gene([observed[p], preds[p]], names=[f"observed[{p!r}]", f"{method}[{p!r}]"])
            r = np.corrcoef(obs, pred)[0, 1] if obs.std() > 0 and pred.std() > 0 else float("nan")
            ax.scatter(obs, pred, s=6, alpha=0.6, color=f"C{i}", label=f"{method} (r={r:.2f})")
        obs = np.asarray(observed[p], dtype=float).ravel()
        lim = float(np.nanmax(np.abs(obs))) * 1.1 or 1.0
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.6)
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_title(p, fontsize="medium")
        ax.set_xlabel("observed delta")
        ax.set_ylabel("predicted delta")
        ax.legend(frameon=False, fontsize="x-small")
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, save, show, dpi)


def integration_scores(
    table: Any,
    *,
    method_col: str = "method",
    bio_col: str = "bio_score",
    batch_col: str = "batch_score",
    total_col: str | None = "total",
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Integration benchmark at a glance: bio conservation vs batch correction per method.

    Left, a scatter of each method's batch-correction score (x) against its
    bio-conservation score (y), as in scib's summary plots (up and right is better),
    with a legend naming the methods (in the colours of their bars); right, horizontal
    bars of the total score (``0.6 bio + 0.4 batch`` in scib-metrics), best first.

    Parameters
    ----------
    table
        A pandas DataFrame (or list of dicts) with one row per method and the columns
        ``method_col``, ``bio_col``, ``batch_col`` and (optionally) ``total_col``; or
        the DataFrame of ``scib_metrics.benchmark.Benchmarker.get_results()`` as it is:
        methods in the index (``"Embedding"``), its ``"Metric Type"`` row dropped and its
        aggregate columns ``"Bio conservation"``, ``"Batch correction"`` and ``"Total"``
        read where the default column names are absent.
    method_col, bio_col, batch_col
        Columns of the method names (else the index), bio-conservation and
        batch-correction scores.
    total_col
        Column with the total score; where it is missing (``None``, no such column or
        NaN) the total is ``0.6 * bio + 0.4 * batch``.
    title, save, show, dpi
        As in :func:`metrics_bar`.

    Returns
    -------
    The matplotlib Figure (also written to ``save`` when given); ``None`` when it was shown (as scanpy).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import pandas as pd

    df = _method_table(table, method_col)

    def scib_name(col: str) -> str:  # scib-metrics' name of a default column, when only that is there
        return _SCIB_AGGREGATES[col] if col not in df and _SCIB_AGGREGATES.get(col, col) in df else col

    bio_col, batch_col = scib_name(bio_col), scib_name(batch_col)
    total_col = scib_name(total_col) if total_col else total_col
    for col in (method_col, bio_col, batch_col):
        if col not in df:
            raise ScelmoError(f"Column {col!r} not found (columns: {', '.join(map(str, df.columns))}); "
                              "pass method_col=, bio_col= or batch_col=.")
    if df.empty:
        raise ScelmoError("The table has no rows; give one row per method.")
    bio = pd.to_numeric(df[bio_col], errors="coerce").to_numpy(dtype=float)
    batch = pd.to_numeric(df[batch_col], errors="coerce").to_numpy(dtype=float)
    total = 0.6 * bio + 0.4 * batch
    if total_col and total_col in df:  # given totals win; missing ones are computed
        given = pd.to_numeric(df[total_col], errors="coerce").to_numpy(dtype=float)
        total = np.where(np.isfinite(given), given, total)
    names = df[method_col].astype(str).to_numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3.2, 0.42 * len(df) + 1.2)),
                                   gridspec_kw={"width_ratios": [1, 1.3]})
    colors = _distinct_colors(len(names))
    for i, (n, x, y) in enumerate(zip(names, batch, bio, strict=True)):
        ax1.scatter([x], [y], s=60, color=colors[i], label=n, zorder=3)
    ax1.set_xlabel("batch correction")
    ax1.set_ylabel("bio conservation")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize="small", framealpha=0.8, loc="best", title="method", title_fontsize="small")
    ax1.spines[["top", "right"]].set_visible(False)
    order = np.argsort(-np.nan_to_num(total, nan=-np.inf))
    pos = np.arange(len(order))
    ax2.barh(pos, total[order], color=[colors[int(i)] for i in order])
    ax2.set_yticks(pos, names[order], fontsize="small")
    ax2.invert_yaxis()
    for p, v in zip(pos, total[order], strict=True):
        if np.isfinite(v):
            ax2.text(v, p, f" {v:.3f}", va="center", fontsize="x-small")
    if np.isfinite(total).any():  # scib's totals lie in [0, 1]; other scores keep their own range
        lo, hi = float(np.nanmin(total)), float(np.nanmax(total))
        pad = 0.1 * max(hi - lo, abs(hi), 1e-12)
        left = max(0.0, lo - pad) if lo >= 0 else lo - pad
        right = min(1.0, hi + 0.8 * pad) if hi <= 1 else hi + 0.8 * pad
        ax2.set_xlim(left, right if right > left else left + 1.0)
    else:
        ax2.set_xlim(0.0, 1.0)
    ax2.set_xlabel("total (0.6 bio + 0.4 batch)")
    ax2.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, save, show, dpi)
