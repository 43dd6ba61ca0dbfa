"""Metrics for clustering, annotation and batch mixing (NumPy / scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _labels(x: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(x).astype(str)
    return arr


def ari(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Adjusted Rand index between two labelings."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(_labels(labels_true), _labels(labels_pred)))


def nmi(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Normalised mutual information (arithmetic mean normalisation, as scib)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(_labels(labels_true), _labels(labels_pred)))


def clustering_scores(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> dict[str, float]:
    """``{"ari": ..., "nmi": ..., "n_clusters": ...}``."""
    return {
        "ari": ari(labels_true, labels_pred),
        "nmi": nmi(labels_true, labels_pred),
        "n_clusters": float(len(set(_labels(labels_pred)))),
    }
