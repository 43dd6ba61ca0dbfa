"""Plots (matplotlib via scanpy). Figures saved with ``save=`` are written atomically."""

from __future__ import annotations

import os
from typing import Any

from . import keys
from .errors import ScelmoError
from .io import atomic_path


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
        (run :func:`scelmo.tl.cluster` and :func:`scelmo.tl.umap` first).
    color
        ``obs`` column(s) or gene name(s), as in :func:`scanpy.pl.embedding`.
    save
        Write the figure to this path (PNG, PDF, SVG... by extension), atomically.
    show
        Show the figure (default: only when not saving).

    Returns
    -------
    The matplotlib :class:`~matplotlib.figure.Figure`.
    """
    show = _begin(save, show)
    import scanpy as sc

    if basis not in adata.obsm:
        hint = "Run `scelmo.tl.cluster(adata)` and `scelmo.tl.umap(adata)` first." if basis == keys.UMAP else ""
        raise ScelmoError(f"adata.obsm[{basis!r}] not found. {hint}".strip())
    if adata.obsm[basis].shape[1] < 2:
        raise ScelmoError(f"adata.obsm[{basis!r}] has fewer than 2 columns; cannot plot it.")
    if color is not None:
        missing = [c for c in ([color] if isinstance(color, str) else color)
                   if c not in adata.obs.columns and c not in adata.var_names]
        if missing:
            raise ScelmoError(f"Cannot colour by {missing}: not in adata.obs columns or var_names.")
    fig = sc.pl.embedding(adata, basis=basis, color=color, title=title, show=False, return_fig=True, **kwargs)
    return _finish(fig, save, show, dpi)


def _begin(save: str | os.PathLike[str] | None, show: bool | None) -> bool:
    """Resolve ``show`` (default: only when not saving) and pick a non-GUI backend if hidden."""
    import matplotlib

    show = bool(show) if show is not None else save is None
    if not show:
        matplotlib.use("Agg", force=False)
    return show


def _finish(fig: Any, save: str | os.PathLike[str] | None, show: bool | None, dpi: int) -> Any:
    import matplotlib.pyplot as plt

    if save is not None:
        suffix = os.path.splitext(str(save))[1].lstrip(".") or "png"
        with atomic_path(save) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix)
    if show:
        plt.show()
    else:
        plt.close(fig)
    return fig


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
        column and one numeric column per metric.
    metrics
        Columns to plot (default: every numeric column).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(table)
    if method_col not in df:
        raise ScelmoError(f"Column {method_col!r} not found; pass method_col=.")
    metrics = metrics or [c for c in df.columns if c != method_col and pd.api.types.is_numeric_dtype(df[c])]
    if not metrics:
        raise ScelmoError("No numeric metric columns to plot.")
    n_m, n_x = len(df), len(metrics)
    width = 0.8 / n_m
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * n_x + 2), 3.8))
    x = np.arange(n_x)
    for i, (_, row) in enumerate(df.iterrows()):
        ax.bar(x + (i - (n_m - 1) / 2) * width, [row[m] for m in metrics], width, label=str(row[method_col]))
    ax.set_xticks(x, metrics, rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.legend(frameon=False, fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title)
    return _finish(fig, save, show, dpi)


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
    """Heatmap of true vs predicted labels (rows normalised to fractions by default)."""
    show = _begin(save, show)
    import matplotlib.pyplot as plt

    from .metrics import confusion

    cm = confusion(labels_true, labels_pred)
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


def in_silico_ranking(
    data: Any,
    *,
    key: str = keys.IN_SILICO,
    by: str = "delta_cosine",
    n_top: int = 20,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    dpi: int = 150,
) -> Any:
    """Bar chart of the genes whose in-silico deletion moves cells most toward the target.

    Parameters
    ----------
    data
        The DataFrame returned by :func:`scelmo.tl.in_silico_deletion`, or an AnnData
        holding its result in ``adata.uns[key]``.
    by
        ``"delta_cosine"`` (change of cosine between group means) or
        ``"target_probability_shift"`` (change of the classifier's target probability).
    n_top
        Number of genes shown (largest values first).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    source = target = None
    if isinstance(data, pd.DataFrame):
        df = data
    else:
        if key not in data.uns:
            raise ScelmoError(f"adata.uns[{key!r}] not found. Run `scelmo.tl.in_silico_deletion` first.")
        res = data.uns[key]
        df = pd.DataFrame({c: np.asarray(res[c]) for c in ("delta_cosine", "target_probability_shift") if c in res},
                          index=np.asarray(res["genes"]).astype(str))
        source, target = res.get("source"), res.get("target")
    if by not in df:
        raise ScelmoError(f"Column {by!r} not in the results (available: {', '.join(map(str, df.columns))}).")
    top = df[by].dropna().sort_values(ascending=False).head(n_top)[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.28 * len(top) + 1.2))
    colors = ["#2b8cbe" if v > 0 else "#bdbdbd" for v in top.to_numpy()]
    ax.barh(top.index.astype(str), top.to_numpy(), color=colors)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel({"delta_cosine": "change of cosine(source, target) after deletion",
                   "target_probability_shift": "change of P(target) after deletion"}.get(by, by))
    ax.spines[["top", "right"]].set_visible(False)
    if title is None and source and target:
        title = f"in-silico deletion: {source} -> {target}"
    if title:
        ax.set_title(title)
    return _finish(fig, save, show, dpi)


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
    records them. Right: the validation score on the epochs it was checked (the one early
    stopping follows), with the best epoch marked. ``model`` may also be the history
    DataFrame itself (``model.history``).
    """
    show = _begin(save, show)
    import matplotlib.pyplot as plt
    import pandas as pd

    hist = model if isinstance(model, pd.DataFrame) else getattr(model, "history", None)
    if hist is None or len(hist) == 0:
        raise ScelmoError("This model has no training history. Run `model.train()` first.")
    hist = pd.DataFrame(hist)
    epoch = hist["epoch"] if "epoch" in hist else pd.Series(range(1, len(hist) + 1))
    losses = [c for c in hist.columns if c not in ("epoch", "seconds", "val_score") and pd.api.types.is_numeric_dtype(hist[c])]
    has_val = "val_score" in hist and hist["val_score"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 5, 3.4), squeeze=False)
    ax = axes[0, 0]
    for c in losses:
        ax.plot(epoch, hist[c], marker="o", ms=3, lw=1.5 if c == "loss" else 1, label=c)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    if has_val:
        ax = axes[0, 1]
        v = hist[hist["val_score"].notna()]
        ev = epoch[v.index]
        ax.plot(ev, v["val_score"], marker="o", color="C3")
        best = v["val_score"].idxmax()
        ax.scatter([epoch[best]], [v.at[best, "val_score"]], s=90, facecolors="none", edgecolors="k",
                   label=f"best: {v.at[best, 'val_score']:.3f} (epoch {int(epoch[best])})", zorder=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation score")
        ax.legend(frameon=False, fontsize="small")
        ax.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, save, show, dpi)
