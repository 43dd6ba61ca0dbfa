"""Input transform and gene selection for :func:`scelmo.tl.embed_cells`, in one streaming pass.

Everything here reads the cells x genes matrix in row chunks (:func:`scelmo.expression.matrix.iter_row_chunks`),
so it works on backed files and its memory does not grow with the number of cells:

* :func:`normalize_chunk`: library-size normalisation + ``log1p`` of one chunk of counts
  (scanpy's ``normalize_total(target_sum=1e4)`` then ``log1p``), applied on the fly;
* :func:`gene_stats`: per-gene mean and variance of the (normalised) values, and of their
  ``expm1`` (what the Seurat dispersion uses);
* :func:`highly_variable`: scanpy's ``highly_variable_genes(flavor="seurat", n_top_genes=n)``
  rule applied to those moments. scanpy needs the matrix in memory, so the rule is
  re-implemented on streamed moments; ``tests/test_selection.py`` checks that it picks
  exactly the genes scanpy picks.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from scelmo.errors import InputError
from scelmo.expression.matrix import iter_row_chunks, n_rows_cols

#: Counts per cell after library-size normalisation (scanpy's and Seurat's usual 1e4).
TARGET_SUM = 1e4


#: Rows of a dense chunk worked on at once where float64 temporaries are needed (normalising,
#: statistics): their memory stays ~DENSE_BLOCK_ROWS x genes x 8 bytes a piece, not the chunk's.
DENSE_BLOCK_ROWS = 1024

#: Above this, values are not log-scale: log1p of counts per 10k (scanpy's usual) stays
#: below ~10, of counts per million below ~14, log2(CPM + 1) below ~20.
MAX_LOG_VALUE = 50.0


#: Row blocks read to tell counts from log values, spread over the matrix: an unfiltered
#: matrix often starts with thousands of empty or low-depth droplets (a trial: 2,000 empty rows
#: on top made real counts pass as log values).
_SAMPLE_BLOCKS = 8


def _block_nonzeros(matrix: Any, start: int, stop: int) -> np.ndarray:
    block = matrix[start:stop]
    if hasattr(block, "compute") and hasattr(block, "chunks"):  # a dask array: read these rows now
        block = block.compute()
    _, chunk = next(iter_row_chunks(block, stop - start, row_offset=start))
    vals = chunk.data if sp.issparse(chunk) else np.asarray(chunk).ravel()
    return vals[vals != 0]


def _head_nonzeros(matrix: Any, n_rows: int = 2000) -> np.ndarray:
    """The non-zero values of ``n_rows`` rows in :data:`_SAMPLE_BLOCKS` blocks spread evenly
    over the matrix (all rows when it has fewer); where those hold none, of as many more."""
    total = n_rows_cols(matrix)[0]
    if total == 0:
        return np.zeros(0)
    if total <= n_rows or getattr(matrix, "format", None) == "csc":  # (a backed CSC file: each block reads it all)
        return _block_nonzeros(matrix, 0, min(total, n_rows))
    size = max(1, n_rows // _SAMPLE_BLOCKS)
    vals = np.zeros(0)
    for blocks in (_SAMPLE_BLOCKS, 4 * _SAMPLE_BLOCKS):  # (a second, finer pass only if the first found nothing)
        starts = np.unique(np.linspace(0, total - size, blocks).astype(np.int64))
        vals = np.concatenate([_block_nonzeros(matrix, int(a), int(a) + size) for a in starts])
        if vals.size:
            break
    return vals


def looks_like_counts(matrix: Any, *, n_rows: int = 2000) -> bool:
    """True when ``n_rows`` rows spread over the matrix hold only whole numbers (and some above 1).

    Log-normalised values are almost never all integers; raw UMI counts always are.
    """
    return _counts_like(_head_nonzeros(matrix, n_rows))


def _counts_like(vals: np.ndarray) -> bool:
    return bool(vals.size) and bool(np.all(vals == np.round(vals))) and bool(vals.max() > 1)


def should_normalize(mode: str, matrix: Any) -> bool:
    """Resolve ``normalize="auto" | "log1p" | "none"`` for this matrix.

    ``"auto"`` log-normalises counts and keeps log-scale values; values that are neither
    (normalised per cell but not log-transformed, e.g. after ``sc.pp.normalize_total``
    alone) are refused with what to do, instead of being read as log values.
    """
    if mode != "auto":
        return mode == "log1p"
    vals = _head_nonzeros(matrix)  # read once: the rows may come from disk or a dask cluster
    if _counts_like(vals):
        return True
    if vals.size and float(vals.max()) > MAX_LOG_VALUE:
        raise InputError(
            f"The values look normalised but not log-transformed (largest {float(vals.max()):.4g} in the rows "
            f"read; log-scale data stays below {MAX_LOG_VALUE:g}). Run `sc.pp.log1p(adata)` first, or pass "
            "normalize=\"log1p\" to normalise and log-transform them here."
        )
    return False


def normalize_chunk(chunk: Any, target_sum: float = TARGET_SUM, *, totals: np.ndarray | None = None) -> Any:
    """``log1p(x / total * target_sum)`` per cell (zero-count cells stay zero); float32, same format.

    ``totals``: each cell's library size when it is not the row sum (e.g. the sum over the
    genes a model was trained on, so a query with other genes is scaled as its training
    cells were); a cell whose total is 0 stays zero.
    """
    if totals is not None:
        totals = np.asarray(totals, dtype=np.float64).ravel()
        if totals.shape[0] != chunk.shape[0]:
            raise ValueError(f"totals has {totals.shape[0]} entries for {chunk.shape[0]} cells.")
    if sp.issparse(chunk):  # in place on a float32 copy: no float64 temporaries of the chunk's size
        out = chunk.tocsr(copy=True).astype(np.float32, copy=False)
        tot = np.asarray(out.sum(axis=1, dtype=np.float64)).ravel() if totals is None else totals
        scale = np.divide(target_sum, tot, out=np.zeros_like(tot), where=tot > 0).astype(np.float32)
        out.data *= np.repeat(scale, np.diff(out.indptr))
        np.log1p(out.data, out=out.data)
        return out
    out = np.empty(chunk.shape, dtype=np.float32)
    for a in range(0, chunk.shape[0], DENSE_BLOCK_ROWS):  # float64 temporaries of a few rows only
        arr = np.asarray(chunk[a : a + DENSE_BLOCK_ROWS], dtype=np.float64)
        tot = arr.sum(axis=1, keepdims=True) if totals is None else totals[a : a + DENSE_BLOCK_ROWS, None]
        scale = np.divide(target_sum, tot, out=np.zeros_like(tot), where=tot > 0)
        out[a : a + DENSE_BLOCK_ROWS] = np.log1p(arr * scale)
    return out


#: The seed of :meth:`GeneStats.summary`'s projections (fixed: summaries made on different days compare).
_SUMMARY_SEED = 20261205
#: How far two summaries of the same statistics may differ, relative to the sums' magnitude
#: (float64 sums of float32 values in other chunks differ by ~1e-16 of it per addition).
_SUMMARY_RTOL = 1e-9


def same_stats(a: str | None, b: str | None) -> bool | None:
    """Whether two :meth:`GeneStats.summary` strings describe the same statistics (up to the
    rounding of summing in other chunks: each projection within ``_SUMMARY_RTOL`` of its own
    scale); ``None`` when either is missing, unreadable or not finite (then compare otherwise)."""
    if a is None or b is None:
        return None
    pa, pb = str(a).split("|"), str(b).split("|")
    if len(pa) != 3 or len(pb) != 3:
        return None
    try:
        va = np.array([[float(x) for x in t.split(":")] for t in pa[2].split(",")])
        vb = np.array([[float(x) for x in t.split(":")] for t in pb[2].split(",")])
    except ValueError:
        return None
    if va.shape != vb.shape or va.ndim != 2 or va.shape[1] != 2 or not (np.isfinite(va).all() and np.isfinite(vb).all()):
        return None
    if pa[:2] != pb[:2]:
        return False
    tol = _SUMMARY_RTOL * np.maximum(va[:, 1], vb[:, 1])
    return bool(np.all(np.abs(va[:, 0] - vb[:, 0]) <= tol))


@dataclass
class GeneStats:
    """Per-gene sums over cells, from which means and variances (``ddof=1``, as scanpy) follow.

    Sums add up: the statistics of two pieces of one dataset are ``a + b``, so a dataset
    embedded in several pieces (or a query embedded with its reference's statistics,
    ``embed_cells(query, gene_stats=ref_stats)``) gets exactly the same transform.
    ``sums`` rows: values, squared values, ``expm1`` of values, its square. ``genes``
    (optional) names the columns: statistics with names are matched to another dataset's
    genes by name (:meth:`for_genes`), without names only by position.
    """

    n_cells: int
    sums: np.ndarray  # (4, n_genes) float64
    genes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.genes is not None:
            self.genes = tuple(str(g) for g in self.genes)
            if len(self.genes) != self.sums.shape[1]:
                raise InputError(f"GeneStats has {self.sums.shape[1]} columns but {len(self.genes)} gene names.")

    def __add__(self, other: GeneStats) -> GeneStats:
        if self.sums.shape != other.sums.shape:
            raise InputError(f"Gene statistics over {self.n_genes} and {other.n_genes} genes cannot be added.")
        if self.genes is not None and other.genes is not None and self.genes != other.genes:
            raise InputError("Gene statistics over different genes (or another gene order) cannot be added; "
                             "lay one out over the other's genes first (`stats.for_genes(other.genes)`).")
        return GeneStats(self.n_cells + other.n_cells, self.sums + other.sums, self.genes or other.genes)

    def for_genes(self, genes: Any) -> GeneStats:
        """These statistics laid out over ``genes`` (matched by name); genes they do not cover
        get zero sums (never selected as variable, not centred).

        Raises
        ------
        InputError
            If the statistics have no gene names, or share no gene with ``genes``.
        """
        genes = [str(g) for g in genes]
        if self.genes is None:
            raise InputError("These gene statistics have no gene names; compute them with "
                             "`gene_stats(matrix, normalize=..., genes=var_names)` to match genes by name.")
        col = {g: i for i, g in enumerate(self.genes)}
        idx = np.array([col.get(g, -1) for g in genes], dtype=np.int64)
        have = idx >= 0
        if genes and not have.any():
            raise InputError(f"The gene statistics ({self.n_genes} genes, e.g. {', '.join(self.genes[:3])}) share no "
                             f"gene with the data ({len(genes)} genes, e.g. {', '.join(genes[:3])}). "
                             "Are both in the same gene naming (symbols vs Ensembl IDs) and species?")
        sums = np.zeros((self.sums.shape[0], len(idx)), dtype=np.float64)
        sums[:, have] = self.sums[:, idx[have]]
        return GeneStats(self.n_cells, sums, tuple(genes))

    @property
    def n_genes(self) -> int:
        return int(self.sums.shape[1])

    def fingerprint(self) -> str:
        """A short hash of these statistics (cells, sums, gene names): two embeddings whose
        provenance records the same one were selected and centred alike."""
        h = hashlib.sha256(str(self.n_cells).encode())
        h.update(np.ascontiguousarray(self.sums, dtype=np.float64).tobytes())
        h.update("\n".join(self.genes or ()).encode())
        return h.hexdigest()[:16]

    def summary(self) -> str:
        """These statistics in a few numbers that sums rounded differently still match
        (:func:`same_stats`): cells, a hash of the gene names, and four fixed random
        projections of the sums of values and of squares (what means and variances follow
        from), each with its own scale. :meth:`fingerprint` hashes every bit of the sums, and
        summed in other chunks (``--backed``, another ``chunk_size``) they differ in the last
        bits: a reference embedded with ``chunk_size=100`` was taken for one embedded with
        another dataset's statistics, and its labels went unused."""
        sums = np.ascontiguousarray(self.sums[:2], dtype=np.float64).ravel()
        R = np.random.default_rng(_SUMMARY_SEED).standard_normal((4, sums.size))
        with np.errstate(all="ignore"):
            proj, scale = R @ sums, np.abs(R) @ np.abs(sums)
        names = hashlib.sha256("\n".join(self.genes or ()).encode()).hexdigest()[:16]
        return f"{self.n_cells}|{names}|" + ",".join(f"{float(p)!r}:{float(c)!r}" for p, c in zip(proj, scale,
                                                                                                strict=True))

    def _moments(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.n_cells, 1)
        mean = self.sums[row] / n
        var = (self.sums[row + 1] - n * mean**2) / max(n - 1, 1)
        return mean, np.maximum(var, 0.0)

    @property
    def mean(self) -> np.ndarray:
        return self._moments(0)[0]

    @property
    def var(self) -> np.ndarray:
        return self._moments(0)[1]

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    @property
    def mean_expm1(self) -> np.ndarray:
        return self._moments(2)[0]

    @property
    def var_expm1(self) -> np.ndarray:
        return self._moments(2)[1]


#: Row ranges the sparse statistics kernel splits a chunk into (its threads share them out).
PARTS = 4


def _sum_rows(indptr, indices, data, lo, hi, normalize, target, acc):  # pragma: no cover - compiled
    """Add rows ``lo:hi`` of a float32 CSR chunk to ``acc`` (genes x 4), see :func:`_sparse_sums_kernel`."""
    for r in range(lo, hi):
        a, b = indptr[r], indptr[r + 1]
        scale = np.float32(1.0)
        if normalize:
            tot = 0.0
            for p in range(a, b):
                tot += data[p]
            scale = np.float32(target / tot) if tot > 0 else np.float32(0.0)
        for p in range(a, b):
            x = data[p]
            if normalize:
                x = np.float32(np.log1p(np.float32(x * scale)))
            v = np.float64(x)
            e = np.expm1(v)
            g = indices[p]  # acc is genes x 4: one cache line per non-zero
            acc[g, 0] += v
            acc[g, 1] += v * v
            acc[g, 2] += e
            acc[g, 3] += e * e


#: What :func:`_sparse_sums` calls: plain Python until :func:`_sparse_sums_kernel` sets them to
#: ``numba.prange`` and the compiled :func:`_sum_rows` (numba reads globals when it compiles).
_prange: Any = range
_sum_rows_compiled: Any = _sum_rows


def _sparse_sums(indptr, indices, data, normalize, target, acc):  # pragma: no cover - compiled
    """Add the per-gene sums of a float32 CSR chunk to ``acc``, see :func:`_sparse_sums_kernel`."""
    # PARTS fixed row ranges, each with its own sums, added in order: the same result for
    # any number of threads
    n = indptr.shape[0] - 1
    part = np.zeros((PARTS, acc.shape[0], 4))
    for t in _prange(PARTS):
        _sum_rows_compiled(indptr, indices, data, t * n // PARTS, (t + 1) * n // PARTS, normalize, target,
                           part[t])
    for t in range(PARTS):
        acc += part[t]


@functools.cache
def _sparse_sums_kernel() -> Any:
    """The compiled per-gene sums of a float32 CSR chunk (numba, compiled once, cached on disk).

    For each non-zero, in row order: ``v`` = the value, or with ``normalize``
    ``log1p(x * float32(target / row_total))`` in float32 exactly as :func:`normalize_chunk`
    computes it; then ``v``, ``v**2``, ``expm1(v)`` and ``expm1(v)**2`` (float64) are added
    to the gene's sums. One pass instead of a normalised copy, ``expm1`` and four bincounts,
    on numba's threads over :data:`PARTS` fixed row ranges (so the sums do not depend on
    the number of threads).

    The kernels are module-level functions, compiled here (numba is imported only when a
    sparse matrix is summed). They must stay module-level, not closures: numba keys its disk
    cache on a closure's captured values, and a captured dispatcher pickles differently in
    every process, so each run would compile again and add one more file to ``__pycache__``.
    """
    import numba

    global _prange, _sum_rows_compiled
    _prange = numba.prange
    _sum_rows_compiled = numba.njit(nogil=True, cache=True)(_sum_rows)
    return numba.njit(nogil=True, parallel=True, cache=True)(_sparse_sums)


def gene_stats(matrix: Any, *, normalize: bool, chunk_size: int = 10_000, progress: Any = None,
               genes: Any = None, row_offset: int = 0) -> GeneStats:
    """One streaming pass: per-gene sums of the values (normalised first if ``normalize``).

    ``progress`` is an optional callable taking the number of rows just read. ``genes``
    (e.g. ``adata.var_names``) names the columns, so that the statistics can be matched to
    another dataset's genes by name (``embed_cells(query, gene_stats=...)`` does that).
    ``row_offset``: where ``matrix`` starts in the whole matrix (a dask block), for errors.
    """
    n_cells, n_genes = n_rows_cols(matrix)
    acc = np.zeros((4, n_genes), dtype=np.float64)
    acc_g = None  # the sparse kernel's genes x 4 sums
    for _, chunk in iter_row_chunks(matrix, chunk_size, row_offset=row_offset):
        if sp.issparse(chunk):  # one fused pass over the non-zeros (normalisation included)
            if acc_g is None:
                acc_g = np.zeros((n_genes, 4), dtype=np.float64)
            _sparse_sums_kernel()(chunk.indptr, chunk.indices, chunk.data, normalize, np.float64(TARGET_SUM), acc_g)
        else:  # dense: a few rows at a time, so the float64 temporaries stay small (a trial: ~11x the chunk)
            for a in range(0, chunk.shape[0], DENSE_BLOCK_ROWS):
                block = chunk[a : a + DENSE_BLOCK_ROWS]
                v = np.asarray(normalize_chunk(block) if normalize else block, dtype=np.float64)
                e = np.expm1(v)
                acc += np.stack([v.sum(0), (v * v).sum(0), e.sum(0), (e * e).sum(0)])
        if progress is not None:
            progress(chunk.shape[0])
    if acc_g is not None:
        acc += acc_g.T
    return GeneStats(n_cells, acc, None if genes is None else tuple(str(g) for g in genes))


def highly_variable(stats: GeneStats, n_top_genes: int, *, n_bins: int = 20) -> np.ndarray:
    """Boolean mask of the ``n_top_genes`` most variable genes, Seurat's dispersion rule.

    Dispersion = log(var / mean) of the ``expm1`` values, normalised within ``n_bins``
    equal-width bins of ``log1p(mean)`` (z-score per bin; a bin with one gene gives it
    1); the genes at or above the ``n_top_genes``-th highest normalised dispersion are
    kept (ties included), as in scanpy.
    """
    if n_top_genes < 1:
        raise InputError(f"n_top_genes must be positive, got {n_top_genes}.")
    mean = stats.mean_expm1.copy()
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = stats.var_expm1 / mean
        disp[disp == 0] = np.nan
        disp = np.log(disp)
    import pandas as pd  # slow to import; only HVG selection needs it

    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": disp})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = grouped["dev"].isnull()
    grouped.loc[single, "dev"] = grouped.loc[single, "avg"]
    grouped.loc[single, "avg"] = 0
    per_gene = grouped.loc[df["mean_bin"]].set_index(df.index)
    norm = ((df["dispersions"] - per_gene["avg"]) / per_gene["dev"]).to_numpy(dtype=np.float64)
    finite = norm[~np.isnan(norm)]
    n = min(n_top_genes, finite.size)
    if n == 0:
        return np.zeros(norm.shape[0], dtype=bool)
    cutoff = np.sort(finite)[::-1][n - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cutoff
