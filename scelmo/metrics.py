"""Metrics for clustering, annotation and batch mixing (NumPy / scikit-learn only).

Conventions follow scib where one exists: NMI with arithmetic normalisation,
silhouettes on cosine or euclidean distances rescaled to [0, 1] where noted, iLISI as
the inverse Simpson index of batch labels over a cell's k nearest neighbours, graph
connectivity on strongly connected components of the directed kNN graph.

Hand-written or library (measured in ``benchmarks/library_choices.py``, results in
``benchmarks/results/library_choices/``): these are quick, dependency-free checks for
tests and for users without jax. **Published-style numbers come from the scib-metrics
package** (``ilisi_knn``, ``silhouette_batch``, ``graph_connectivity``, ...), which the
benchmarks use, because the two disagree where the definitions differ: iLISI here is
unweighted over 30 neighbours (scib: perplexity-weighted over 90; same ranking of four
embeddings on Kang, Spearman 0.95, values up to 0.42 apart), and scib computes every
kNN metric on euclidean pynndescent neighbours. The silhouettes agree exactly (after
the [0, 1] rescaling). scib-metrics needs jax (~100 MB), so it stays out of the default
install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scelmo.errors import InputError


def _labels(x: Sequence[Any]) -> np.ndarray:
    return np.asarray(x).astype(str)


def _check_same_length(*arrays: Any) -> None:
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise InputError(f"Inputs have different lengths: {sorted(n)}.")


# --------------------------------------------------------------------------- clustering
def ari(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Adjusted Rand index between two labelings."""
    from sklearn.metrics import adjusted_rand_score

    _check_same_length(labels_true, labels_pred)
    return float(adjusted_rand_score(_labels(labels_true), _labels(labels_pred)))


def nmi(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Normalised mutual information (arithmetic mean normalisation, as scib)."""
    from sklearn.metrics import normalized_mutual_info_score

    _check_same_length(labels_true, labels_pred)
    return float(normalized_mutual_info_score(_labels(labels_true), _labels(labels_pred)))


def clustering_scores(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> dict[str, float]:
    """``{"ari": ..., "nmi": ..., "n_clusters": ...}``."""
    return {
        "ari": ari(labels_true, labels_pred),
        "nmi": nmi(labels_true, labels_pred),
        "n_clusters": float(len(set(_labels(labels_pred)))),
    }


# --------------------------------------------------------------------------- embeddings
def silhouette(embedding: np.ndarray, labels: Sequence[Any], *, metric: str = "cosine",
               sample_size: int | None = 5000, seed: int = 0, rescale: bool = True) -> float:
    """Average silhouette width of ``labels`` in ``embedding``.

    With ``rescale`` the value is mapped from [-1, 1] to [0, 1] (scib's ``ASW_label``).
    Computed on a random subsample of ``sample_size`` cells (all cells when ``None``).
    """
    from sklearn.metrics import silhouette_score

    X = np.asarray(embedding)
    y = _labels(labels)
    _check_same_length(X, y)
    if len(set(y)) < 2:
        raise InputError("Silhouette needs at least two distinct labels.")
    s = float(silhouette_score(X, y, metric=metric, sample_size=sample_size if sample_size and len(y) > sample_size else None,
                               random_state=seed))
    return (s + 1) / 2 if rescale else s


def silhouette_batch(embedding: np.ndarray, batch: Sequence[Any], labels: Sequence[Any], *,
                     metric: str = "cosine") -> float:
    """Batch mixing within each label (scib's ``ASW_batch``): mean of ``1 - |s|`` over
    cells, where ``s`` is the silhouette of the batch labels computed within the cell's
    label. 1 = batches perfectly mixed, 0 = separated. Labels with one batch are skipped."""
    from sklearn.metrics import silhouette_samples

    X = np.asarray(embedding)
    b, y = _labels(batch), _labels(labels)
    _check_same_length(X, b, y)
    scores = []
    for lab in np.unique(y):
        m = y == lab
        if len(np.unique(b[m])) < 2 or m.sum() < 3:
            continue
        scores.append(np.mean(1 - np.abs(silhouette_samples(X[m], b[m], metric=metric))))
    return float(np.mean(scores)) if scores else float("nan")


def _knn(embedding: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(embedding, dtype=np.float32)
    k = min(k, X.shape[0] - 1)
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(X)
    idx = nn.kneighbors(X, return_distance=False)
    return idx[:, 1:]


def knn_purity(embedding: np.ndarray, labels: Sequence[Any], *, k: int = 30, metric: str = "cosine") -> float:
    """Mean fraction of each cell's ``k`` nearest neighbours that share its label."""
    y = _labels(labels)
    _check_same_length(embedding, y)
    nn = _knn(embedding, k, metric)
    return float((y[nn] == y[:, None]).mean())


def same_batch_fraction(embedding: np.ndarray, batch: Sequence[Any], *, k: int = 30, metric: str = "cosine") -> float:
    """Mean fraction of each cell's ``k`` neighbours from its own batch (lower = better mixed;
    compare with :func:`expected_same_batch_fraction`)."""
    return knn_purity(embedding, batch, k=k, metric=metric)


def expected_same_batch_fraction(batch: Sequence[Any]) -> float:
    """The same-batch fraction of a perfectly mixed embedding: ``sum_b p_b^2``."""
    _, counts = np.unique(_labels(batch), return_counts=True)
    p = counts / counts.sum()
    return float((p**2).sum())


def ilisi(embedding: np.ndarray, batch: Sequence[Any], *, k: int = 30, metric: str = "cosine") -> float:
    """Median inverse Simpson index of batch labels over each cell's ``k`` neighbours
    (1 = one batch only, up to the number of batches = perfectly mixed). Unweighted kNN,
    a simplification of the perplexity-weighted LISI of Korsunsky et al. (2019)."""
    b = _labels(batch)
    _check_same_length(embedding, b)
    cats, codes = np.unique(b, return_inverse=True)
    nn = _knn(embedding, k, metric)
    counts = np.zeros((len(b), len(cats)))
    np.add.at(counts, (np.repeat(np.arange(len(b)), nn.shape[1]), codes[nn].ravel()), 1)
    p = counts / nn.shape[1]
    return float(np.median(1.0 / (p**2).sum(axis=1)))


def graph_connectivity(embedding: np.ndarray, labels: Sequence[Any], *, k: int = 15, metric: str = "cosine") -> float:
    """scib's graph connectivity: per label, the fraction of its cells in the largest
    strongly connected component of the (directed) kNN graph restricted to that label;
    averaged over labels. (A weakly connected version scored a random embedding's graph
    0.53 vs scib's 0.17 on pbmc68k: see the module docstring.)"""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    y = _labels(labels)
    _check_same_length(embedding, y)
    nn = _knn(embedding, k, metric)
    n = len(y)
    A = sp.csr_matrix((np.ones(nn.size), (np.repeat(np.arange(n), nn.shape[1]), nn.ravel())), shape=(n, n))
    out = []
    for lab in np.unique(y):
        m = np.flatnonzero(y == lab)
        _, comp = connected_components(A[m][:, m], directed=True, connection="strong")
        out.append(np.bincount(comp).max() / len(m))
    return float(np.mean(out))


# --------------------------------------------------------------------------- annotation
def accuracy(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Fraction of cells whose predicted label equals the true one."""
    _check_same_length(labels_true, labels_pred)
    return float((_labels(labels_true) == _labels(labels_pred)).mean())


def macro_f1(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """F1 averaged over the true classes (each class counts equally)."""
    from sklearn.metrics import f1_score

    _check_same_length(labels_true, labels_pred)
    y = _labels(labels_true)
    return float(f1_score(y, _labels(labels_pred), labels=np.unique(y), average="macro", zero_division=0))


def annotation_scores(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}``."""
    return {"accuracy": accuracy(labels_true, labels_pred), "macro_f1": macro_f1(labels_true, labels_pred)}


def confusion(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> Any:
    """Confusion matrix as a pandas DataFrame (rows: true labels, columns: predictions)."""
    import pandas as pd

    _check_same_length(labels_true, labels_pred)
    return pd.crosstab(pd.Series(_labels(labels_true), name="true"), pd.Series(_labels(labels_pred), name="predicted"))
