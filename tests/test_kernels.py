"""Tests of the column-tiled CSR x dense kernel (scelmo_zeroshot.kernels).

Every result is compared with a dense NumPy float64 reference to float32
precision.  The first run compiles a few numba kernels (cached on disk after).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

try:
    from scelmo_zeroshot.kernels import (
        TiledEmbedding,
        csr_matmul,
        csr_matmul_gather,
        csr_matmul_reference,
        csr_matmul_scatter,
    )
except ImportError:  # package not installed: use the source tree
    _root = Path(__file__).resolve().parents[1]
    for _p in (_root / "plugins", _root):
        if str(_p) not in sys.path:
            sys.path.insert(0, str(_p))
    from scelmo_zeroshot.kernels import (  # noqa: E402
        TiledEmbedding,
        csr_matmul,
        csr_matmul_gather,
        csr_matmul_reference,
        csr_matmul_scatter,
    )

WIDTHS = [8, 16, 24, 64]


def _dense_ref(indptr, indices, data, E, n_cols=None):
    """float64 dense reference, summing duplicates like scipy."""
    n = len(indptr) - 1
    n_cols = E.shape[0] if n_cols is None else n_cols
    X = np.zeros((n, n_cols), dtype=np.float64)
    for r in range(n):
        for j in range(indptr[r], indptr[r + 1]):
            X[r, indices[j]] += float(data[j])
    return X @ E.astype(np.float64)


def _assert_close(C, ref):
    assert C.dtype == np.float32
    assert C.shape == ref.shape
    scale = np.abs(ref).max(axis=1, keepdims=True) if ref.size else np.zeros((ref.shape[0], 1))
    scale = np.maximum(scale, 1.0)
    err = np.abs(C.astype(np.float64) - ref)
    assert np.all(err <= 1e-5 * scale + 1e-5 * np.abs(ref)), float((err / scale).max())


def _random_csr(
    rng, n, g, density, *, index_dtype=np.int32, empty_rows=(), dup=False, shuffle=False
):
    X = sp.random(n, g, density=density, format="csr", dtype=np.float32, random_state=rng)
    X.data[:] = rng.integers(1, 20, X.nnz).astype(np.float32) * rng.choice([-1.0, 1.0, 0.5], X.nnz)
    X = X.tolil()
    for r in empty_rows:
        X.rows[r] = []
        X.data[r] = []
    X = X.tocsr()
    indptr, indices, data = X.indptr.copy(), X.indices.copy(), X.data.copy()
    if dup or shuffle:
        ip, ix, dt = [0], [], []
        for r in range(n):
            cols = list(indices[indptr[r] : indptr[r + 1]])
            vals = list(data[indptr[r] : indptr[r + 1]])
            if dup and cols:
                k = rng.integers(0, len(cols))
                cols += [cols[k], cols[k]]
                vals += [1.5, -0.25]
            order = rng.permutation(len(cols)) if shuffle else np.arange(len(cols))
            ix += [cols[i] for i in order]
            dt += [vals[i] for i in order]
            ip.append(len(ix))
        indptr, indices, data = np.array(ip), np.array(ix), np.array(dt, dtype=np.float32)
    return (
        indptr.astype(index_dtype),
        indices.astype(index_dtype),
        data.astype(np.float32),
    )


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


# --- TiledEmbedding --------------------------------------------------------------------


@pytest.mark.parametrize("W", WIDTHS)
def test_tiled_layout_roundtrip(W):
    E = np.arange(7 * 21, dtype=np.float64).reshape(7, 21)
    T = TiledEmbedding.from_matrix(E, width=W)
    assert (T.n_genes, T.d, T.W) == (7, 21, W)
    assert T.data.dtype == np.float32 and T.data.flags.c_contiguous
    assert T.data.shape == (-(-21 // W), 7, W)
    assert T.data.ctypes.data % 64 == 0
    np.testing.assert_array_equal(T.to_matrix(), E.astype(np.float32))
    # padding columns are zero
    flat = T.data.transpose(1, 0, 2).reshape(7, -1)
    assert np.all(flat[:, 21:] == 0)
    # block b holds columns b*W .. b*W+W-1
    np.testing.assert_array_equal(T.data[0, :, : min(W, 21)], E[:, : min(W, 21)].astype(np.float32))


def test_tiled_default_width_and_validation():
    assert TiledEmbedding.from_matrix(np.ones((3, 384), np.float32)).W == 64
    assert TiledEmbedding.from_matrix(np.ones((3, 10), np.float32)).W == 16
    with pytest.raises(ValueError):
        TiledEmbedding.from_matrix(np.ones((3, 10)), width=12)
    with pytest.raises(ValueError):
        TiledEmbedding.from_matrix(np.ones(10))


# --- csr_matmul vs float64 reference -------------------------------------------------------


@pytest.mark.parametrize("kernel", [csr_matmul_scatter, csr_matmul_gather])
@pytest.mark.parametrize("W", WIDTHS)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_random_csr_matches_reference(rng, W, index_dtype, kernel):
    n, g, d = 300, 500, 45  # d not a multiple of any W; > 1 row chunk per thread
    indptr, indices, data = _random_csr(
        rng, n, g, 0.05, index_dtype=index_dtype, empty_rows=(0, 7, 8, 150, n - 1)
    )
    E = rng.standard_normal((g, d)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E, width=W)
    C = kernel(indptr, indices, data, T)
    ref = _dense_ref(indptr, indices, data, E)
    _assert_close(C, ref)
    for r in (0, 7, 8, 150, n - 1):
        assert np.all(C[r] == 0)


@pytest.mark.parametrize("W", [16, 64])
def test_duplicates_and_unsorted_indices(rng, W):
    n, g, d = 120, 90, 70
    indptr, indices, data = _random_csr(rng, n, g, 0.1, dup=True, shuffle=True, empty_rows=(3,))
    E = rng.standard_normal((g, d)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E, width=W)
    ref = _dense_ref(indptr, indices, data, E)
    _assert_close(csr_matmul_scatter(indptr, indices, data, T), ref)
    _assert_close(csr_matmul_gather(indptr, indices, data, T), ref)
    _assert_close(csr_matmul(indptr, indices, data, T), ref)


def test_very_sparse_rows_auto_dispatch(rng, monkeypatch):
    # ~1 nnz per row over 2000 genes: csr_matmul picks the row-gather kernel; dense rows
    # go to the gene-scatter kernel
    import scelmo_zeroshot.kernels as K

    chosen: list[str] = []
    real = K._get_kernel
    monkeypatch.setattr(K, "_get_kernel", lambda kind, W: (chosen.append(kind), real(kind, W))[1])
    n, g, d = 500, 2000, 64
    indptr, indices, data = _random_csr(rng, n, g, 0.0005, empty_rows=(1, 2))
    E = rng.standard_normal((g, d)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E)
    ref = _dense_ref(indptr, indices, data, E)
    _assert_close(csr_matmul(indptr, indices, data, T), ref)
    assert chosen == ["gather"]
    _assert_close(csr_matmul_scatter(indptr, indices, data, T), ref)
    indptr, indices, data = _random_csr(rng, 400, g, 0.3)
    _assert_close(csr_matmul(indptr, indices, data, T), _dense_ref(indptr, indices, data, E))
    assert chosen[-1] == "scatter"


def test_zero_rows_and_no_nonzeros(rng):
    E = rng.standard_normal((20, 33)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E, width=16)
    C = csr_matmul(np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), T)
    assert C.shape == (0, 33) and C.dtype == np.float32
    C = csr_matmul(np.zeros(6, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), T)
    assert C.shape == (5, 33) and np.all(C == 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.int64, np.uint8, np.bool_])
def test_non_float32_data(rng, dtype):
    n, g, d = 64, 80, 40
    indptr, indices, data = _random_csr(rng, n, g, 0.1, empty_rows=(5,))
    data = np.abs(data).astype(dtype)
    E = rng.standard_normal((g, d)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E, width=16)
    ref = _dense_ref(indptr, indices, data.astype(np.float64), E)
    _assert_close(csr_matmul(indptr, indices, data, T), ref)


def test_out_argument_and_errors(rng):
    n, g, d = 50, 60, 24
    indptr, indices, data = _random_csr(rng, n, g, 0.2)
    E = rng.standard_normal((g, d)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E, width=16)
    out = np.full((n, d), np.nan, np.float32)
    C = csr_matmul(indptr, indices, data, T, out=out)
    assert C is out
    _assert_close(out, _dense_ref(indptr, indices, data, E))
    with pytest.raises(ValueError):
        csr_matmul(indptr, indices, data, T, out=np.empty((n, d + 1), np.float32))
    with pytest.raises(ValueError):
        csr_matmul(indptr, indices, data, T, out=np.empty((n, d), np.float64))
    bad = indices.copy()
    bad[len(bad) // 2] = g  # out of range
    for kernel in (csr_matmul, csr_matmul_scatter, csr_matmul_gather):
        with pytest.raises(IndexError):
            kernel(indptr, bad, data, T)


def test_scipy_matrix_slices_and_offset_indptr(rng):
    X = sp.random(400, 250, density=0.08, format="csr", dtype=np.float32, random_state=rng)
    E = rng.standard_normal((250, 100)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E)
    ref = X.toarray().astype(np.float64) @ E.astype(np.float64)
    _assert_close(csr_matmul(X.indptr, X.indices, X.data, T), ref)
    # indptr not starting at 0 (rows 100..199 of the full arrays)
    C = csr_matmul(X.indptr[100:201], X.indices, X.data, T)
    _assert_close(C, ref[100:200])
    _assert_close(np.asarray(csr_matmul_reference(X, E), dtype=np.float32), ref)


def test_thread_count_does_not_change_result(rng):
    import numba

    n, g, d = 700, 300, 130
    indptr, indices, data = _random_csr(rng, n, g, 0.05)
    E = rng.standard_normal((g, d)).astype(np.float32)
    T = TiledEmbedding.from_matrix(E)
    prev = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        C1 = csr_matmul(indptr, indices, data, T)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        C2 = csr_matmul(indptr, indices, data, T)
    finally:
        numba.set_num_threads(prev)
    np.testing.assert_array_equal(C1, C2)  # each element is summed in a fixed order
    _assert_close(C1, _dense_ref(indptr, indices, data, E))


def test_import_does_not_load_numba():
    # load the module file on its own (not through the package __init__)
    path = Path(__file__).resolve().parents[1] / "plugins" / "scelmo_zeroshot" / "kernels.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('kernels_under_test', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print('numba' in sys.modules, 'llvmlite' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
