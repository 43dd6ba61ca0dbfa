"""Synthetic single-cell count matrices for benchmarks and test fixtures.

Implements the project's benchmark data generator (see docs/performance.md):

* ``n_genes`` genes (default 30,000) with propensities ``w_g ~ LogNormal(0, 1.5)``;
  ``p_g = w_g / sum(w) * nnz_per_cell``, clipped to 0.95 and renormalised 50 times.
* every cell draws ``Bernoulli(p_g)`` independently for every gene;
* a non-zero count is ``1 + Geometric(max(0.05, 1 - p_g))`` where Geometric
  counts the failures before the first success (>= 0), so counts are >= 1
  with mean ~3.4 (the note reports 3.47), stored as float32.

The per-(cell, gene) randomness comes from a counter-based hash (splitmix64 of
``seed``, cell, gene), so the matrix is bit-for-bit reproducible for a fixed
seed and independent of the number of threads; rows can be generated in any
order or in slices (``row_offset``).  Gene ids are a random permutation of the
propensity ranks, i.e. hot genes are scattered over the embedding table as in
real data, and every row's column indices are sorted (canonical CSR).

The heavy loops run in numba (imported lazily); 100k cells x 30k genes is
3e9 Bernoulli draws done twice (count pass + fill pass), a few CPU-seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = [
    "GeneModel",
    "gene_model",
    "generate_csr",
    "random_embedding",
]


@dataclass(frozen=True)
class GeneModel:
    """Per-gene Bernoulli propensities (indexed by gene id)."""

    p: np.ndarray  # float64 (n_genes,)
    threshold: np.ndarray  # uint32 (n_genes,): draw < threshold  <=>  Bernoulli(p)
    geo_log1mq: np.ndarray  # float64 (n_genes,): log(1 - q_g), q_g = max(0.05, 1 - p_g)
    seed: int

    @property
    def n_genes(self) -> int:
        return int(self.p.shape[0])

    @property
    def expected_nnz_per_cell(self) -> float:
        return float(self.p.sum())


def gene_model(n_genes: int = 30_000, nnz_per_cell: float = 2_000, *, seed: int = 0) -> GeneModel:
    """Gene propensities of the section-2 generator (deterministic for ``seed``)."""
    if nnz_per_cell >= 0.95 * n_genes:
        raise ValueError("nnz_per_cell must be < 0.95 * n_genes")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE1]))
    w = rng.lognormal(mean=0.0, sigma=1.5, size=n_genes)
    p = w / w.sum() * nnz_per_cell
    for _ in range(50):
        p = np.minimum(p, 0.95)
        p = p / p.sum() * nnz_per_cell
    p = np.minimum(p, 0.95)
    # Gene ids: a random permutation so hot genes are not contiguous in E.
    p = p[rng.permutation(n_genes)]
    threshold = np.minimum(np.floor(p * 2.0**32), 2.0**32 - 1).astype(np.uint32)
    q = np.maximum(0.05, 1.0 - p)
    with np.errstate(divide="ignore"):
        geo = np.where(q >= 1.0, -np.inf, np.log1p(-np.minimum(q, 1.0 - 1e-16)))
    return GeneModel(p=p, threshold=threshold, geo_log1mq=geo, seed=int(seed))


@cache
def _kernels():
    import numba as nb

    golden = np.uint64(0x9E3779B97F4A7C15)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    s30 = np.uint64(30)
    s27 = np.uint64(27)
    s31 = np.uint64(31)
    s32 = np.uint64(32)

    @nb.njit(inline="always")
    def mix(z):
        z = (z ^ (z >> s30)) * m1
        z = (z ^ (z >> s27)) * m2
        return z ^ (z >> s31)

    @nb.njit(parallel=True, nogil=True, cache=True)
    def count_rows(key, row_offset, n_rows, threshold, counts):
        n_genes = threshold.shape[0]
        for i in nb.prange(n_rows):
            base = mix(key ^ (np.uint64(row_offset + i) * golden))
            c = 0
            for g in range(n_genes):
                r = mix(base + np.uint64(g) * golden)
                c += np.int64(np.uint32(r >> s32) < threshold[g])
            counts[i] = c

    @nb.njit(parallel=True, nogil=True, cache=True)
    def fill_rows(key, key2, row_offset, n_rows, threshold, geo_log1mq, indptr, indices, data):
        n_genes = threshold.shape[0]
        for i in nb.prange(n_rows):
            base = mix(key ^ (np.uint64(row_offset + i) * golden))
            base2 = mix(key2 ^ (np.uint64(row_offset + i) * golden))
            k = indptr[i]
            for g in range(n_genes):
                r = mix(base + np.uint64(g) * golden)
                if np.uint32(r >> s32) < threshold[g]:
                    indices[k] = g
                    lg = geo_log1mq[g]
                    if lg == -np.inf:  # q == 1: no failures
                        cnt = 1.0
                    else:
                        r2 = mix(base2 + np.uint64(g) * golden)
                        # u in (0, 1]
                        u = (np.float64(r2 >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)
                        geo = np.ceil(np.log(u) / lg)
                        if geo < 1.0:
                            geo = 1.0
                        cnt = geo  # = 1 + failures
                    data[k] = cnt
                    k += 1

    return count_rows, fill_rows


def generate_csr(
    n_cells: int,
    n_genes: int = 30_000,
    nnz_per_cell: float = 2_000,
    *,
    seed: int = 0,
    row_offset: int = 0,
    model: GeneModel | None = None,
    index_dtype=np.int32,
    as_scipy: bool = True,
):
    """Generate ``n_cells`` rows (cells ``row_offset .. row_offset+n_cells-1``).

    Returns a ``scipy.sparse.csr_matrix`` (float32 data, ``index_dtype``
    indices/indptr, sorted indices) or, with ``as_scipy=False``, the tuple
    ``(indptr, indices, data, shape)``.
    """
    if model is None:
        model = gene_model(n_genes, nnz_per_cell, seed=seed)
    elif model.n_genes != n_genes:
        raise ValueError("model.n_genes != n_genes")
    count_rows, fill_rows = _kernels()
    key = np.uint64((model.seed * 0x2545F4914F6CDD1D + 0x1234567) % 2**64)
    key2 = np.uint64((model.seed * 0x2545F4914F6CDD1D + 0x7654321ABC) % 2**64)
    counts = np.empty(n_cells, dtype=np.int64)
    if n_cells:
        count_rows(key, np.int64(row_offset), np.int64(n_cells), model.threshold, counts)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    idx_dtype = np.dtype(index_dtype)
    if nnz > np.iinfo(idx_dtype).max:
        idx_dtype = np.dtype(np.int64)
    indices = np.empty(nnz, dtype=idx_dtype)
    data = np.empty(nnz, dtype=np.float32)
    if n_cells:
        fill_rows(
            key,
            key2,
            np.int64(row_offset),
            np.int64(n_cells),
            model.threshold,
            model.geo_log1mq,
            indptr,
            indices,
            data,
        )
    indptr = indptr.astype(idx_dtype, copy=False)
    shape = (n_cells, n_genes)
    if not as_scipy:
        return indptr, indices, data, shape
    import scipy.sparse as sp

    X = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    X.has_sorted_indices = True
    X.has_canonical_format = True
    return X


def random_embedding(n_genes: int, d: int, *, seed: int = 1, dtype=np.float32) -> np.ndarray:
    """Gene embedding table ``E ~ N(0, 1)`` of shape ``(n_genes, d)``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE3B]))
    return rng.standard_normal((n_genes, d), dtype=np.float32).astype(dtype, copy=False)
