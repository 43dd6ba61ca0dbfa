"""Small builders for tests (re-exported from scelmo.testing where useful)."""

from __future__ import annotations

import numpy as np


def paper_wa(X: np.ndarray, E: np.ndarray) -> np.ndarray:
    """The paper's wa in dense float64: (X / X.sum(1)) @ E, with 0 for all-zero rows."""
    X = np.asarray(X, dtype=np.float64)
    tot = X.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (X / tot) @ E.astype(np.float64)
    out[tot.ravel() == 0] = 0
    return out


def paper_aa(X: np.ndarray, E: np.ndarray) -> np.ndarray:
    """The paper's aa in dense float64: X @ E / n_genes (n_genes = number of columns)."""
    X = np.asarray(X, dtype=np.float64)
    return X @ E.astype(np.float64) / X.shape[1]


def scelmo_wa(X: np.ndarray, ge, genes, *, n_top: int = 2000, transform: str = "center") -> np.ndarray:
    """The default flavor written out densely: log-normalise counts, Seurat HVGs (scanpy),
    centre (and scale) each gene, conditioned vectors, per-cell weight 1 / sum of the
    cell's selected values; cells with none of them get zeros."""
    import anndata as ad
    import scanpy as sc

    X = np.asarray(X, dtype=np.float64)
    tot = X.sum(1, keepdims=True)
    L = np.log1p(np.divide(X * 1e4, tot, out=np.zeros_like(X), where=tot > 0))
    hv = sc.pp.highly_variable_genes(ad.AnnData(L.astype(np.float32)), n_top_genes=n_top, flavor="seurat",
                                     inplace=False)["highly_variable"].to_numpy()
    E, mask = ge.aligned(genes, conditioned=True)
    use = hv & mask
    Ls = L[:, use]
    Z = Ls - Ls.mean(0)
    if transform == "scale":
        sd = Ls.std(0, ddof=1)
        Z = np.divide(Z, sd, out=np.zeros_like(Z), where=sd > 0)
    w = Ls.sum(1)
    out = (Z @ E[use].astype(np.float64)) * np.divide(1.0, w, out=np.zeros_like(w), where=w > 0)[:, None]
    out[w == 0] = 0
    return out
