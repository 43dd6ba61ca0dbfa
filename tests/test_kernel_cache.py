"""numba's disk cache of the sparse gene-statistics kernel (scelmo.expression.selection).

Trial finding: the kernel was a closure calling another closure's dispatcher; numba keys a
closure's cache entry on its captured values, and a dispatcher pickles differently in every
process, so every ``scelmo embed-cells`` compiled the kernel again (~1-4 s) and added one
more ~110 KB file to the package's ``__pycache__``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scelmo.expression import selection

#: Sums of a small sparse matrix in a fresh process (numba compiles, or loads from its cache).
_SCRIPT = """
import numpy as np, scipy.sparse as sp
from scelmo.expression.selection import gene_stats
X = sp.random(40, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
X.data = np.round(X.data * 20 + 1).astype(np.float32)
print("fingerprint", gene_stats(X, normalize=True).fingerprint())
"""


def _run_fresh(cache_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), NUMBA_DEBUG_CACHE="1")
    return subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                          check=True, timeout=300)


def _cache_files(cache_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(cache_dir)): p.stat().st_size for p in cache_dir.rglob("*") if p.is_file()}


def test_a_second_process_loads_the_kernel_from_the_cache(tmp_path):
    cache_dir = tmp_path / "numba_cache"
    first = _run_fresh(cache_dir)
    files = _cache_files(cache_dir)
    assert any("_sparse_sums" in f and f.endswith(".nbc") for f in files), files
    second = _run_fresh(cache_dir)
    log = second.stdout + second.stderr
    saved = [line for line in log.splitlines() if "selection." in line and " saved " in line]
    assert not saved, "the second process compiled the kernel again:\n" + "\n".join(saved)
    assert any("data loaded" in line and "_sparse_sums" in line for line in log.splitlines()), log
    assert _cache_files(cache_dir) == files  # no new entry, no bigger index
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]  # same sums


def test_the_kernels_are_module_level_functions_without_a_closure():
    # numba keys a closure's cache entry on its captured values: none may be captured
    kernel = selection._sparse_sums_kernel()
    assert kernel.py_func is selection._sparse_sums and kernel.py_func.__closure__ is None
    assert selection._sum_rows.__closure__ is None


def test_the_compiled_kernel_matches_the_python_one():
    dense = sp.random(57, 23, density=0.3, dtype=np.float32, random_state=1).toarray()
    dense[3] = 0  # an empty row
    X = sp.csr_matrix(np.round(dense * 20 + (dense > 0)).astype(np.float32))
    for normalize in (True, False):
        got = np.zeros((23, 4))
        selection._sparse_sums_kernel()(X.indptr, X.indices, X.data, normalize, np.float64(selection.TARGET_SUM), got)
        want = np.zeros((23, 4))
        part = np.zeros((selection.PARTS, 23, 4))
        n = X.shape[0]
        for t in range(selection.PARTS):  # the same fixed row ranges, added in the same order
            selection._sum_rows(X.indptr, X.indices, X.data, t * n // selection.PARTS,
                                (t + 1) * n // selection.PARTS, normalize, np.float64(selection.TARGET_SUM), part[t])
        for t in range(selection.PARTS):
            want += part[t]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
