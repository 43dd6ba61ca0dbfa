"""The paper's ``wa`` and ``aa`` aggregators.

Formulas (scELMo ``compute_embeddings``; E has a zero row for every gene without a
vector, X is cells x genes over *all* of the data's genes):

* ``wa``: ``C = (X / X.sum(axis=1)) @ E`` -- each cell's expression-weighted mean;
* ``aa``: ``C = (X @ E) / n_genes`` -- ``n_genes`` is X's number of columns.

The paper's code divides by zero for an all-zero cell; here such cells (and cells
that express only genes without a vector) get a zero vector and a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from scelmo.components import Aggregator

from .kernels import TiledEmbedding, csr_matmul


class _LinearAggregator(Aggregator):
    """``C = diag(w) X E`` for a per-cell weight ``w``; subclasses define ``w``."""

    def prepare(self, embedding: np.ndarray) -> tuple[np.ndarray, TiledEmbedding]:
        return embedding, TiledEmbedding.from_matrix(embedding)

    def matmul(self, chunk: Any, prepared: tuple[np.ndarray, TiledEmbedding]) -> np.ndarray:
        dense, tiled = prepared
        if sp.issparse(chunk):
            return csr_matmul(chunk.indptr, chunk.indices, chunk.data, tiled)
        return np.asarray(chunk, dtype=np.float32) @ dense

    def row_weights(self, chunk: Any, n_genes: int) -> np.ndarray:
        raise NotImplementedError

    def aggregate_chunk(self, chunk: Any, prepared: Any, *, n_genes: int) -> np.ndarray:
        out = self.matmul(chunk, prepared)
        out *= self.row_weights(chunk, n_genes)[:, None]
        return out


class WeightedAverageAggregator(_LinearAggregator):
    """``wa``: expression-weighted mean of gene vectors, ``(X / X.sum(1)) @ E``."""

    name = "wa"

    def row_weights(self, chunk: Any, n_genes: int) -> np.ndarray:
        totals = np.asarray(chunk.sum(axis=1), dtype=np.float64).ravel()
        with np.errstate(divide="ignore"):
            w = np.where(totals > 0, 1.0 / totals, 0.0)
        return w.astype(np.float32)


class AverageAggregator(_LinearAggregator):
    """``aa``: the paper's average, ``X @ E / n_genes`` (n_genes = all columns of X)."""

    name = "aa"

    def row_weights(self, chunk: Any, n_genes: int) -> np.ndarray:
        return np.full(chunk.shape[0], 1.0 / max(n_genes, 1), dtype=np.float32)
