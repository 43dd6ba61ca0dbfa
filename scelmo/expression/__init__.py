"""Cells x genes matrices: chunked reading, gene statistics and selection, the aggregation loop, dask.

=====================================  ====================================================
module                                 holds
=====================================  ====================================================
:mod:`scelmo.expression.matrix`        picking X / a layer / raw, row chunks, value checks,
                                       bfloat16 rounding
:mod:`scelmo.expression.selection`     streamed per-gene moments, highly variable genes,
                                       log-normalisation of a chunk
:mod:`scelmo.expression.aggregation`   the row-block loop every aggregator runs in
:mod:`scelmo.expression.distributed`   the same on a dask cluster
=====================================  ====================================================
"""

from scelmo._lazy import submodules as _submodules

__getattr__ = _submodules(__name__, ('aggregation', 'distributed', 'matrix', 'selection'))
