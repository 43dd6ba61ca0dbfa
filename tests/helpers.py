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
