"""The paper's ``wa`` and ``aa`` aggregators.

Formulas (scELMo ``compute_embeddings``; E has a zero row for every gene without a
vector, X is cells x genes over *all* of the data's genes):

* ``wa``: ``C = (X / X.sum(axis=1)) @ E`` -- each cell's expression-weighted mean;
* ``aa``: ``C = (X @ E) / n_genes`` -- ``n_genes`` is X's number of columns.

The paper's code divides by zero for an all-zero cell; here such cells (and cells
that express only genes without a vector) get a zero vector and a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from scelmo.config import get_settings
from scelmo.errors import ScelmoError
from scelmo.expression.aggregation import AggregationContext
from scelmo.knowledge import roles
from scelmo.plugin import Aggregator, ComponentOptions

from .kernels import TiledEmbedding, csr_matmul


class _LinearAggregator(Aggregator):
    """``C = diag(w) X E`` for a per-cell weight ``w``; subclasses define ``w``."""

    supports_bfloat16 = True

    def prepare(self, embedding: np.ndarray, *, precision: str = "float32") -> tuple[np.ndarray | None, TiledEmbedding]:
        tiled = TiledEmbedding.from_matrix(embedding, precision=precision)
        # bfloat16: keep only the half-size copy (dense chunks widen it per chunk)
        return (embedding if precision == "float32" else None), tiled

    def matmul(self, chunk: Any, prepared: tuple[np.ndarray | None, TiledEmbedding]) -> np.ndarray:
        dense, tiled = prepared
        if sp.issparse(chunk):
            return csr_matmul(chunk.indptr, chunk.indices, chunk.data, tiled)
        return np.asarray(chunk, dtype=np.float32) @ (dense if dense is not None else tiled.to_matrix())

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


class SentenceOptions(ComponentOptions):
    #: Genes per sentence, most expressed first (GenePT used 1,000 with a 8k-token model;
    #: the default embedder reads 256 tokens, about 100 gene symbols).
    top_n: int = Field(100, ge=1)
    prefix: str = "A cell with genes ranked by expression: "


@dataclass(frozen=True)
class _Sentences:
    """What genept_s prepares once: gene names, which have a vector, the settings to embed with."""

    names: np.ndarray
    covered: np.ndarray
    settings: Any


class GenePTSentenceAggregator(Aggregator):
    """GenePT-s: each cell written as a sentence of its top expressed genes, embedded as text.

    Uses the configured ``embed`` role (and its cache): one text per cell. Genes are ranked
    by expression (ties by column order); genes without a vector are skipped, so the
    sentence names only genes the knowledge source knows.
    """

    name = "genept_s"
    Options = SentenceOptions

    needs_context = True

    def prepare(self, embedding: np.ndarray, *, context: AggregationContext | None = None) -> _Sentences:
        if context is None or context.genes is None:
            raise ScelmoError("genept_s needs the gene names; call it through scelmo.tl.embed_cells.")
        covered = np.abs(embedding).sum(axis=1) > 0  # which genes have a vector
        settings = context.settings if context.settings is not None else get_settings()
        return _Sentences(np.asarray(context.genes, dtype=object), covered, settings)

    def sentences(self, chunk: Any, prepared: _Sentences) -> list[str]:
        csr = chunk if sp.issparse(chunk) else sp.csr_matrix(chunk)
        out = []
        for i in range(csr.shape[0]):
            lo, hi = csr.indptr[i], csr.indptr[i + 1]
            idx, val = csr.indices[lo:hi], csr.data[lo:hi]
            keep = prepared.covered[idx] & (val > 0)
            idx, val = idx[keep], val[keep]
            order = np.lexsort((idx, -val))[: self.options.top_n]
            out.append(self.options.prefix + " ".join(prepared.names[idx[order]]))
        return out

    def aggregate_chunk(self, chunk: Any, prepared: _Sentences, *, n_genes: int) -> np.ndarray:
        return roles.embed_texts(prepared.settings, self.sentences(chunk, prepared), progress=False,
                                 desc="embedding cell sentences")
