"""Metrics for clustering, annotation and batch mixing (NumPy / scikit-learn only).

Conventions follow scib where one exists: NMI with arithmetic normalisation,
silhouettes on cosine or euclidean distances rescaled to [0, 1] where noted, iLISI as
the inverse Simpson index of batch labels over a cell's k nearest neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError


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
