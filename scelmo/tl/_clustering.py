"""Neighbour graph, Leiden clusters and UMAP of the scelmo embedding (scanpy underneath)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from scelmo import keys, provenance
from scelmo.errors import ScelmoError, ScelmoWarning
from scelmo.tl._common import _check_finite, _copy_of


def cluster(
    adata: Any,
    *,
    use_rep: str = keys.X_SCELMO,
    n_neighbors: int = 15,
    metric: str = "cosine",
    resolution: float = 1.0,
    random_state: int = 0,
    transformer: Any = None,
    neighbors_key: str = keys.NEIGHBORS,
    key_added: str = keys.CLUSTER,
    copy: bool = False,
) -> Any:
    """kNN graph + Leiden clustering on the scelmo embedding.

    Builds ``n_neighbors`` nearest neighbours (cosine by default: scelmo vectors are
    compared by angle) on ``adata.obsm[use_rep]`` with :func:`scanpy.pp.neighbors`
    and runs Leiden (igraph flavour, modularity) at ``resolution``. Resolution 1.0 is
    scanpy's default; raise it for more, smaller clusters. It is not tuned to labels.

    ``transformer`` is passed to :func:`scanpy.pp.neighbors`: ``None`` (scanpy's choice:
    exact below 4,096 cells, pynndescent above), ``"sklearn"``, ``"pynndescent"``, or any
    scikit-learn ``KNeighborsTransformer``-like object, e.g. one over a faiss HNSW index for
    atlas-sized data (docs/performance.md measures the choices on 1M cells).

    Sets ``adata.uns[neighbors_key]``, ``adata.obsp[neighbors_key + "_distances"]``,
    ``adata.obsp[neighbors_key + "_connectivities"]`` and ``adata.obs[key_added]``;
    returns ``None``, or with ``copy=True`` a modified copy (``adata`` left untouched).
    """
    import scanpy as sc

    if use_rep not in adata.obsm:
        raise ScelmoError(f"adata.obsm[{use_rep!r}] not found. Run `scelmo.tl.embed_cells` first.")
    _check_finite(np.asarray(adata.obsm[use_rep]), use_rep, adata)
    if copy:
        adata = _copy_of(adata)
    if adata.n_obs < n_neighbors:
        # scanpy's own rule, said as a warning (its log line bypassed Python's and R's warnings: a trial)
        fewer = 1 + int(0.5 * adata.n_obs)
        warnings.warn(f"Only {adata.n_obs} cells: clustering with {fewer} neighbours instead of {n_neighbors}.",
                      ScelmoWarning, stacklevel=2)
        n_neighbors = fewer
    sc.pp.neighbors(
        adata, n_neighbors=n_neighbors, use_rep=use_rep, metric=metric,
        key_added=neighbors_key, random_state=random_state, transformer=transformer,
    )
    sc.tl.leiden(
        adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
        neighbors_key=neighbors_key, key_added=key_added, random_state=random_state,
    )
    return adata if copy else None


def umap(
    adata: Any,
    *,
    neighbors_key: str = keys.NEIGHBORS,
    key_added: str = keys.UMAP,
    scanpy_key: str | None = keys.SCANPY_UMAP,
    random_state: int = 0,
    copy: bool = False,
) -> Any:
    """UMAP of the scelmo neighbour graph into ``adata.obsm[key_added]``.

    The coordinates are also written to ``adata.obsm[scanpy_key]`` (default
    ``"X_umap"``, replacing any UMAP there, as :func:`scanpy.tl.umap` does), so that
    ``sc.pl.umap(adata, color=...)`` plots them; ``scanpy_key=None`` leaves ``X_umap``
    alone. :func:`scelmo.pl.embedding` reads ``obsm["X_scelmo_umap"]``. UMAP parameters
    go to ``adata.uns[key_added]`` (and ``adata.uns["umap"]`` with ``scanpy_key="X_umap"``),
    and ``adata.uns["scelmo"]["umap"]`` records them (``key_added``, ``scanpy_obsm``). Returns ``None``,
    or with ``copy=True`` a modified copy (``adata`` left untouched).
    """
    import scanpy as sc

    if neighbors_key not in adata.uns:
        raise ScelmoError(f"adata.uns[{neighbors_key!r}] not found. Run `scelmo.tl.cluster` first.")
    if copy:
        adata = _copy_of(adata)
    sc.tl.umap(adata, neighbors_key=neighbors_key, key_added=key_added, random_state=random_state)
    if scanpy_key and scanpy_key != key_added:
        adata.obsm[scanpy_key] = adata.obsm[key_added].copy()
        if scanpy_key == keys.SCANPY_UMAP and key_added in adata.uns:  # where scanpy keeps its parameters
            adata.uns["umap"] = dict(adata.uns[key_added])
    provenance.record(adata, "umap", {"key_added": key_added, "scanpy_obsm": scanpy_key or "none",
                                      "neighbors_key": neighbors_key, "random_state": random_state})
    return adata if copy else None
