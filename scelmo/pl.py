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
    import matplotlib

    if save is not None and show is None:
        show = False
    if not show:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
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
    if save is not None:
        suffix = os.path.splitext(str(save))[1].lstrip(".") or "png"
        with atomic_path(save) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix)
    if show:
        plt.show()
    else:
        plt.close(fig)
    return fig
