"""scelmo_zeroshot: aggregators that turn gene vectors into cell vectors.

* ``wa``: expression-weighted mean, ``(X / X.sum(1)) @ E`` (the paper's default);
* ``aa``: the paper's "average", ``X @ E / n_genes`` with ``n_genes`` the number of
  columns of X (a constant: this is GenePT-w's formula too);
* ``genept_s``: GenePT-s, each cell as a sentence of its top expressed genes, embedded
  with the configured text embedder.

Genes without a vector contribute a zero row, exactly as in the paper's code. CSR
chunks go through a column-tiled numba kernel (:mod:`scelmo_zeroshot.kernels`), dense
chunks through BLAS.
"""

from __future__ import annotations

from scelmo.plugin import hookimpl

from .aggregators import AverageAggregator, GenePTSentenceAggregator, WeightedAverageAggregator


@hookimpl
def register_aggregators(register):
    register(WeightedAverageAggregator)
    register(AverageAggregator)
    register(GenePTSentenceAggregator)
