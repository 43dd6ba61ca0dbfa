"""The aggregation loop behind :meth:`scelmo.plugin.Aggregator.aggregate`.

An aggregator plugin implements only ``aggregate_chunk`` (and optionally ``prepare``
and ``row_weights``); this module does the rest, the same way for every aggregator:

- :func:`plan` prepares the gene vectors once: gene selection (``columns``), per-gene
  scaling, bfloat16 rounding, and the offset ``mu @ E`` that centres the input without
  densifying it (linear aggregators only). The plan is picklable, so a distributed
  run ships it to each worker once (:mod:`scelmo.expression.distributed`).
- :meth:`BlockPlan.run` turns one row block into cell vectors: value checks,
  log-normalisation, coverage sums, empty cells, optional L2 normalisation.
- :func:`aggregate` streams any supported matrix (CSR/CSC/dense/backed) through the
  plan in row chunks, in memory independent of the number of cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from scelmo.errors import ConfigError, PluginError
from scelmo.expression.matrix import (
    PRECISIONS,
    as_float32,
    check_values,
    iter_row_chunks,
    n_rows_cols,
    round_to_precision,
)
from scelmo.expression.selection import normalize_chunk
from scelmo.progress import progress_bar

if TYPE_CHECKING:
    from scelmo.plugin import Aggregator


@dataclass(frozen=True)
class AggregationContext:
    """What an aggregator with ``needs_context = True`` gets in :meth:`Aggregator.prepare`.

    ``genes`` are the resolved gene names of the selected columns, in column order;
    ``settings`` the :class:`scelmo.config.ScelmoSettings` of the call (for aggregators
    that call other components, e.g. one that embeds a sentence per cell).
    """

    genes: list[str] | None
    settings: Any


def _centring_offset(mu: np.ndarray, E: np.ndarray) -> np.ndarray:
    """``mu @ E`` in float64, with float64 copies of ``E`` bounded to 4,096 rows at a time."""
    acc = np.zeros(E.shape[1])
    for lo in range(0, len(mu), 4096):
        acc += mu[lo : lo + 4096] @ E[lo : lo + 4096].astype(np.float64)
    return acc.astype(np.float32)


def plan(
    aggregator: Aggregator,
    embedding: np.ndarray,
    *,
    genes: Sequence[str] | None = None,
    settings: Any = None,
    l2_normalize: bool = False,
    normalize: bool = False,
    columns: np.ndarray | None = None,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    precision: str = "float32",
) -> BlockPlan:
    """Everything a row block needs, prepared once (see :func:`aggregate` for the arguments).

    ``precision="bfloat16"`` or ``"float16"`` stores the prepared gene vectors in 16 bits
    when the aggregator supports it (accumulation stays float32).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision != "float32" and not aggregator.supports_bfloat16:
        raise ConfigError(f"Aggregator {aggregator.name!r} has no 16-bit path; use precision='float32'.")
    n_genes = int(embedding.shape[0])
    embedding = np.ascontiguousarray(embedding, dtype=np.float32)
    covered = np.abs(embedding).sum(axis=1) > 0
    sel = np.arange(n_genes) if columns is None else np.asarray(columns, dtype=np.int64)
    subset = columns is not None and len(sel) != n_genes
    E = embedding[sel] if subset else embedding  # float32; copied only when genes are selected
    if scale is not None:
        s = np.asarray(scale, dtype=np.float64)[sel]
        E = E * np.divide(1.0, s, out=np.zeros_like(s), where=s > 0).astype(np.float32)[:, None]
    # the centring offset must use the very vectors the kernel reads
    E = round_to_precision(E, precision)
    offset = None
    if center is not None:
        if not aggregator.linear:
            raise ConfigError(
                f"Aggregator {aggregator.name!r} is not linear (it defines no `row_weights`), so it cannot embed "
                "centred input. Leave out `center=` (`transform=\"none\"`), or use a linear aggregator such as "
                "\"wa\" or \"aa\" (docs/plugins.md, \"An aggregator\")."
            )
        offset = _centring_offset(np.asarray(center, dtype=np.float64)[sel], E)
    E = np.ascontiguousarray(E, dtype=np.float32)
    options: dict[str, Any] = {}
    if precision != "float32":
        options["precision"] = precision
    if aggregator.needs_context:
        options["context"] = AggregationContext(
            genes=[genes[i] for i in sel] if genes is not None else None, settings=settings
        )
    prepared = aggregator.prepare(E, **options)
    return BlockPlan(
        aggregator=aggregator, prepared=prepared, n_genes=n_genes, columns=sel if subset else None,
        covered=covered.astype(np.float32), sel_covered=covered[sel].astype(np.float32), offset=offset,
        normalize=bool(normalize), l2_normalize=bool(l2_normalize), n_genes_covered=int(covered.sum()),
        dim=int(E.shape[1]),
    )


def aggregate(
    aggregator: Aggregator,
    matrix: Any,
    embedding: np.ndarray,
    *,
    chunk_size: int = 10_000,
    progress: bool | None = None,
    out: np.ndarray | None = None,
    genes: Sequence[str] | None = None,
    settings: Any = None,
    l2_normalize: bool = False,
    normalize: bool = False,
    columns: np.ndarray | None = None,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    precision: str = "float32",
) -> AggregationResult:
    """Stream ``matrix`` (cells x genes) in row chunks through ``aggregator``.

    ``genes`` (the resolved gene names of the columns) and ``settings`` reach aggregators
    that declare ``needs_context = True`` through :class:`AggregationContext`.
    ``out`` may be any array-like supporting ``out[start:stop] = block`` (e.g. an
    on-disk dataset, see :func:`scelmo.io.streamed_h5ad_copy`); ``l2_normalize``
    scales each non-zero cell vector to unit length.

    The input transform happens chunk by chunk, so memory stays independent of the
    number of cells and X is never densified: ``normalize`` log-normalises each
    chunk of counts (:func:`scelmo.expression.selection.normalize_chunk`); ``columns`` keeps
    only those genes (indices into the matrix's columns); ``center`` and ``scale``
    (per gene, aligned to the matrix's columns) turn X into ``(X - center) / scale``,
    computed as ``X @ (E / scale) - (center / scale) @ E`` for linear aggregators.
    ``precision="bfloat16"`` / ``"float16"`` keeps the gene vectors in 16 bits (half the
    memory; float32 accumulation) where the aggregator supports it: bfloat16 has float32's
    range and 8 significant bits, float16 11 bits and values up to 65,504.
    """
    n_cells, n_genes = n_rows_cols(matrix)
    if embedding.shape[0] != n_genes:
        raise ConfigError(
            f"The gene embedding has {embedding.shape[0]} rows but the matrix has "
            f"{n_genes} genes; they must be aligned."
        )
    prepared = plan(aggregator, embedding, genes=genes, settings=settings, l2_normalize=l2_normalize,
                    normalize=normalize, columns=columns, center=center, scale=scale, precision=precision)
    total_expr = covered_expr = 0.0
    empty: list[np.ndarray] = []
    width: int | None = None
    with progress_bar(total=n_cells, desc=f"aggregating ({aggregator.name})", unit="cell", enabled=progress) as bar:
        for start, chunk in iter_row_chunks(matrix, chunk_size):
            part = prepared.run(chunk, start, checked=True)
            total_expr += part.total_expression
            covered_expr += part.covered_expression
            if part.empty_cells.size:
                empty.append(part.empty_cells)
            if width is None:  # width from the first block: an aggregator may change d
                width = int(part.block.shape[1])
            elif part.block.shape[1] != width:
                raise PluginError(
                    f"{_describe(aggregator)} returned {part.block.shape[1]} columns for cells "
                    f"{_rows(start, start + chunk.shape[0])} but {width} for the cells before; every block "
                    f"must have the same width. {_WHAT_TO_DO}"
                )
            if out is None:
                out = np.zeros((n_cells, width), dtype=np.float32)
            out[start : start + chunk.shape[0]] = part.block
            bar.update(chunk.shape[0])
    if out is None:
        out = np.zeros((n_cells, embedding.shape[1]), dtype=np.float32)
    empty_idx = np.concatenate(empty) if empty else np.zeros(0, dtype=np.int64)
    return AggregationResult(
        embedding=out,
        empty_cells=empty_idx,
        total_expression=total_expr,
        covered_expression=covered_expr,
        n_genes=n_genes,
        n_genes_covered=prepared.n_genes_covered,
    )


@dataclass
class BlockPart:
    """One row block's result: cell vectors, coverage sums and its empty cells (global rows)."""

    block: np.ndarray
    total_expression: float
    covered_expression: float
    empty_cells: np.ndarray


@dataclass
class BlockPlan:
    """A prepared aggregation (:func:`plan`): turns any row block into cell vectors."""

    aggregator: Aggregator
    prepared: Any
    n_genes: int
    columns: np.ndarray | None
    covered: np.ndarray
    sel_covered: np.ndarray
    offset: np.ndarray | None
    normalize: bool
    l2_normalize: bool
    n_genes_covered: int
    dim: int

    def run(self, chunk: Any, start: int = 0, *, checked: bool = False) -> BlockPart:
        """Cell vectors of ``chunk`` (rows ``start...`` of the data; any CSR/CSC/dense block).

        ``checked=True``: the chunk is already float32 CSR/ndarray with checked values
        (as :func:`scelmo.expression.matrix.iter_row_chunks` yields them).
        """
        if not checked:
            chunk = as_float32(chunk)
            check_values(chunk, start)
        stop = start + chunk.shape[0]
        if self.normalize:
            chunk = normalize_chunk(chunk)
        total = float(np.asarray(chunk.sum(axis=1)).ravel().sum(dtype=np.float64))
        covered = float(np.asarray(chunk @ self.covered).ravel().sum(dtype=np.float64))
        if self.columns is not None:
            chunk = chunk[:, self.columns]
        n_sel = chunk.shape[1]
        agg = self.aggregator
        rows = _rows(start, stop)
        block = _checked_block(agg, agg.aggregate_chunk(chunk, self.prepared, n_genes=n_sel), chunk.shape[0],
                              self.dim if agg.linear else None, rows)
        if self.offset is not None:
            w = _checked_weights(agg, agg.row_weights(chunk, n_sel), chunk.shape[0], rows)
            block -= w[:, None] * self.offset[None, :]
        is_empty = np.asarray(chunk @ self.sel_covered).ravel() <= 0
        if is_empty.any():
            block[is_empty] = 0.0
        if self.l2_normalize:
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            np.divide(block, norms, out=block, where=norms > 0)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0]) + start
            raise PluginError(
                f"{_describe(agg)} returned NaN or infinite values for {int(bad.sum())} of the cells {rows} "
                f"(the first: row {first}); the input values were finite. {_WHAT_TO_DO}"
            )
        return BlockPart(block, total, covered, np.flatnonzero(is_empty) + start)


#: The end of every message about an aggregator that returned something unusable.
_WHAT_TO_DO = (
    "This is a bug in the aggregator: report it to its author, or choose another aggregator "
    "(`aggregator=`; `scelmo plugins` lists them)."
)


def _describe(agg: Aggregator) -> str:
    """``Aggregator 'name' (package.module.Class)``: who to report a bad return to."""
    cls = type(agg)
    return f"Aggregator {agg.name!r} ({cls.__module__}.{cls.__qualname__})"


def _rows(start: int, stop: int) -> str:
    """Rows ``start..stop-1`` as a reader counts them: "in rows 0-699" (0-based, inclusive)."""
    return f"in row {start}" if stop - start == 1 else f"in rows {start}-{stop - 1}"


def _what(value: Any) -> str:
    """What a plugin returned, in short: ``None``, ``list(shape=(700, 2))``, ``ndarray(shape=(699, 64), dtype=float32)``."""
    if value is None:
        return "None"
    shape = getattr(value, "shape", None)
    if shape is None and isinstance(value, (list, tuple)):
        try:
            shape = np.shape(value)
        except ValueError:  # ragged rows
            return f"{type(value).__name__}(rows of different lengths)"
    parts = [f"shape={tuple(shape)}"] if shape is not None else []
    if getattr(value, "dtype", None) is not None:
        parts.append(f"dtype={value.dtype}")
    return f"{type(value).__name__}({', '.join(parts)})"


def _checked_block(agg: Aggregator, value: Any, n_rows: int, dim: int | None, rows: str) -> np.ndarray:
    """What ``agg.aggregate_chunk`` returned, as a writable float32 ``n_rows x d`` ndarray.

    Parameters
    ----------
    agg
        The aggregator (named in the error).
    value
        Its return value: anything convertible to a 2-D float array (an ndarray, a list of
        rows, a CPU torch tensor...).
    n_rows
        Rows of the chunk it was given: one cell vector per row is expected.
    dim
        The width ``d`` it must have (a linear aggregator returns ``diag(w) X E``, so E's
        width), or ``None`` for any width of at least 1.
    rows
        Which rows of the data the chunk holds, for the message ("in rows 0-699").

    Returns
    -------
    The block as float32 (copied only when it was not a writable float32 ndarray).

    Raises
    ------
    PluginError
        When the value is not a real-valued 2-D array of the expected shape.
    """
    block = None
    problem = "cannot be read as an array of real numbers"
    if value is not None:
        try:
            arr = np.asarray(value)
            if arr.dtype.kind in "biufO":  # an object array: convertible when it holds numbers
                block = arr.astype(np.float32, copy=False)
        except (TypeError, ValueError, RuntimeError):  # None rows, ragged lists, a tensor on a GPU...
            block = None
    if block is not None:
        if block.ndim != 2:
            problem = f"is {block.ndim}-D"
        elif block.shape[0] != n_rows:
            problem = f"has {block.shape[0]} rows"
        elif block.shape[1] == 0 or (dim is not None and block.shape[1] != dim):
            problem = f"has {block.shape[1]} columns"
        else:
            return block if block.flags.writeable else block.copy()
    want = f"({n_rows}, {dim})" if dim is not None else f"({n_rows}, d)"
    raise PluginError(
        f"{_describe(agg)} returned {_what(value)} for the {n_rows} cells {rows}, which {problem}; "
        f"expected a float array of shape {want}, one vector per cell. {_WHAT_TO_DO}"
    )


def _checked_weights(agg: Aggregator, value: Any, n_rows: int, rows: str) -> np.ndarray:
    """What ``agg.row_weights`` returned, as a float32 vector of ``n_rows`` weights."""
    try:
        w = np.asarray(value, dtype=np.float32) if value is not None else None
    except (TypeError, ValueError, RuntimeError):
        w = None
    if w is None or w.shape != (n_rows,):
        raise PluginError(
            f"{_describe(agg)}: row_weights returned {_what(value)} for the {n_rows} cells {rows}; expected "
            f"one weight per cell (shape ({n_rows},)), as a linear aggregator must. {_WHAT_TO_DO}"
        )
    return w


@dataclass
class AggregationResult:
    """What :func:`aggregate` (and :meth:`Aggregator.aggregate`) returns."""

    embedding: np.ndarray
    empty_cells: np.ndarray
    total_expression: float
    covered_expression: float
    n_genes: int
    n_genes_covered: int

    @property
    def expression_coverage(self) -> float:
        """Covered / total expression; ``nan`` when not computed (a lazy dask result)."""
        if np.isnan(self.total_expression):
            return float("nan")
        return self.covered_expression / self.total_expression if self.total_expression > 0 else 0.0
