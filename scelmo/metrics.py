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


def _label_text(v: Any) -> str:
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
            and float(v).is_integer():
        return str(int(v))  # 2 and 2.0 are one label
    return str(v)


def _labels_missing(x: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labels as comparable text (numbers by value: ``2 == 2.0``) and a mask of the missing
    ones (``None``, NaN, ``pd.NA``), which must never form a class of their own."""
    import pandas as pd

    if isinstance(x, pd.Series):
        s = x
    elif isinstance(x, pd.Categorical | np.ndarray):
        s = pd.Series(x)
    else:  # lists, tuples, Index, ...: as objects (no coercion of mixed values to one type)
        s = pd.Series(np.asarray(x, dtype=object))
    missing = s.isna().to_numpy()
    if isinstance(s.dtype, pd.CategoricalDtype):  # (each category once: fast on a million cells)
        cats = np.array([_label_text(c) for c in s.cat.categories] + [""], dtype=object)
        return cats[s.cat.codes.to_numpy()].astype(str), missing
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if kind in ("string", "empty"):  # vectorised: text as it is
        return np.where(missing, "", s.to_numpy(dtype=object)).astype(str), missing
    if kind in ("integer", "floating", "mixed-integer-float", "decimal"):  # numbers by value
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
        whole = np.isfinite(v) & (np.abs(v) < 2**53) & (v == np.round(v))
        text = np.where(whole, np.where(whole, v, 0).astype(np.int64).astype(str), v.astype(str))
        return np.where(missing, "", text).astype(str), missing
    values = s.to_numpy(dtype=object)  # mixed types: one at a time
    text = np.array([_label_text(v) if not m else "" for v, m in zip(values, missing, strict=True)], dtype=object)
    return text.astype(str), missing


def _labels(x: Sequence[Any]) -> np.ndarray:
    """Labels as comparable text; missing ones become ``"(missing)"``."""
    text, missing = _labels_missing(x)
    return np.where(missing, "(missing)", text)


def _scored(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) text of the cells with a true label: a cell whose truth is unknown
    cannot be scored; a missing prediction is a wrong one."""
    _check_same_length(labels_true, labels_pred)
    if len(labels_true) == 0:
        raise InputError("There are no cells to score.")
    y, unknown = _labels_missing(labels_true)
    p, no_call = _labels_missing(labels_pred)
    if unknown.all():
        raise InputError("Every true label is missing; there is nothing to score.")
    # each missing prediction a class of its own: never right, and no cluster of the unassigned
    p = np.where(no_call, np.char.add("\x00(no prediction) ", np.arange(len(p)).astype(str)), p)
    return y[~unknown], p[~unknown]


def _labelled(*labelings: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mask of the cells with every labeling present, and each labeling's text."""
    texts, keep = [], None
    for lab in labelings:
        text, missing = _labels_missing(lab)
        texts.append(text)
        keep = ~missing if keep is None else keep & ~missing
    return keep, texts


def _check_same_length(*arrays: Any) -> None:
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise InputError(f"Inputs have different lengths: {sorted(n)}.")


# --------------------------------------------------------------------------- clustering
def ari(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Adjusted Rand index between two labelings (cells without a true label are left out)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(*_scored(labels_true, labels_pred)))


def nmi(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Normalised mutual information (arithmetic mean normalisation, as scib)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(*_scored(labels_true, labels_pred)))


def clustering_scores(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> dict[str, float]:
    """``{"ari": ..., "nmi": ..., "n_clusters": ...}``."""
    return {
        "ari": ari(labels_true, labels_pred),
        "nmi": nmi(labels_true, labels_pred),
        "n_clusters": float(len(set(_scored(labels_true, labels_pred)[1]))),  # among the scored cells
    }


# --------------------------------------------------------------------------- embeddings
def silhouette(embedding: np.ndarray, labels: Sequence[Any], *, metric: str = "cosine",
               sample_size: int | None = 5000, seed: int = 0, rescale: bool = True) -> float:
    """Average silhouette width of ``labels`` in ``embedding``.

    With ``rescale`` the value is mapped from [-1, 1] to [0, 1] (scib's ``ASW_label``).
    Computed on a random subsample of ``sample_size`` cells (all cells when ``None``).
    Cells without a label are left out.
    """
    from sklearn.metrics import silhouette_score

    X = np.asarray(embedding)
    _check_same_length(X, labels)
    keep, (y,) = _labelled(labels)
    X, y = X[keep], y[keep]
    n_labels = len(set(y))
    if n_labels < 2 or n_labels > len(y) - 1:
        raise InputError(f"A silhouette needs at least two distinct labels and more cells than labels; got "
                         f"{n_labels} label(s) on {len(y)} labelled cell(s).")
    s = float(silhouette_score(X, y, metric=metric, sample_size=sample_size if sample_size and len(y) > sample_size else None,
                               random_state=seed))
    return (s + 1) / 2 if rescale else s


def silhouette_batch(embedding: np.ndarray, batch: Sequence[Any], labels: Sequence[Any], *,
                     metric: str = "cosine") -> float:
    """Batch mixing within each label (scib's ``ASW_batch``): mean of ``1 - |s|`` over
    cells, where ``s`` is the silhouette of the batch labels computed within the cell's
    label. 1 = batches perfectly mixed, 0 = separated. As in scib-metrics, labels with one
    batch, or with each cell in its own batch, are skipped; cells without a batch or a label
    are left out."""
    from sklearn.metrics import silhouette_samples

    X = np.asarray(embedding)
    _check_same_length(X, batch, labels)
    keep, (b, y) = _labelled(batch, labels)
    X, b, y = X[keep], b[keep], y[keep]
    scores = []
    for lab in np.unique(y):
        m = y == lab
        n_batches = len(np.unique(b[m]))
        if n_batches < 2 or n_batches >= m.sum():
            continue
        scores.append(np.mean(1 - np.abs(silhouette_samples(X[m], b[m], metric=metric))))
    return float(np.mean(scores)) if scores else float("nan")


def _labelled_cells(embedding: np.ndarray, labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``embedding`` with a label, and their labels' text."""
    X = np.asarray(embedding)
    _check_same_length(X, labels)
    keep, (y,) = _labelled(labels)
    if keep.sum() < 2:
        raise InputError(f"{int(keep.sum())} cell(s) have a label; a neighbourhood metric needs at least two.")
    return (X, y) if keep.all() else (X[keep], y[keep])


def _knn(embedding: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(embedding, dtype=np.float32)
    k = min(k, X.shape[0] - 1)
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(X)
    idx = nn.kneighbors(X, return_distance=False)
    return idx[:, 1:]


def knn_purity(embedding: np.ndarray, labels: Sequence[Any], *, k: int = 30, metric: str = "cosine") -> float:
    """Mean fraction of each cell's ``k`` nearest neighbours that share its label (cells
    without a label are left out)."""
    embedding, y = _labelled_cells(embedding, labels)
    nn = _knn(embedding, k, metric)
    return float((y[nn] == y[:, None]).mean())


def same_batch_fraction(embedding: np.ndarray, batch: Sequence[Any], *, k: int = 30, metric: str = "cosine") -> float:
    """Mean fraction of each cell's ``k`` neighbours from its own batch (lower = better mixed;
    compare with :func:`expected_same_batch_fraction`)."""
    return knn_purity(embedding, batch, k=k, metric=metric)


def expected_same_batch_fraction(batch: Sequence[Any]) -> float:
    """The same-batch fraction of a perfectly mixed embedding: ``sum_b p_b^2``."""
    keep, (b,) = _labelled(batch)
    _, counts = np.unique(b[keep], return_counts=True)
    p = counts / counts.sum()
    return float((p**2).sum())


def ilisi(embedding: np.ndarray, batch: Sequence[Any], *, k: int = 30, metric: str = "cosine") -> float:
    """Median inverse Simpson index of batch labels over each cell's ``k`` neighbours
    (1 = one batch only, up to the number of batches = perfectly mixed). Unweighted kNN,
    a simplification of the perplexity-weighted LISI of Korsunsky et al. (2019)."""
    embedding, b = _labelled_cells(embedding, batch)
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

    embedding, y = _labelled_cells(embedding, labels)
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
    """Fraction of cells whose predicted label equals the true one.

    Labels compare by value (``2`` equals ``2.0``); cells without a true label are left
    out, and a missing prediction counts as wrong.
    """
    y, p = _scored(labels_true, labels_pred)
    return float((y == p).mean())


def macro_f1(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """F1 averaged over the true classes (each class counts equally); missing labels as in
    :func:`accuracy`."""
    from sklearn.metrics import f1_score

    y, p = _scored(labels_true, labels_pred)
    return float(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0))


def annotation_scores(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}``."""
    return {"accuracy": accuracy(labels_true, labels_pred), "macro_f1": macro_f1(labels_true, labels_pred)}


def confusion(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> Any:
    """Confusion matrix as a pandas DataFrame (rows: true labels, columns: predictions)."""
    import pandas as pd

    _check_same_length(labels_true, labels_pred)
    return pd.crosstab(pd.Series(_labels(labels_true), name="true"), pd.Series(_labels(labels_pred), name="predicted"))
