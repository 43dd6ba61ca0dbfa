"""The R package (r_wrapper/) driven from pytest: R CMD INSTALL, then its testthat tests.

Skips, with the reason, where R or the R packages it needs are missing (``.ci/run``
installs them from Debian). Where R is present, a Python that R cannot load is a
failure, not a skip (``R_SCELMO_REQUIRE_PYTHON``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "r_wrapper"
R_NEEDS = ("reticulate", "SeuratObject", "Matrix", "testthat")


def r_env(lib: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        R_LIBS=str(lib), RETICULATE_PYTHON=sys.executable, NOT_CRAN="true",
        SCELMO_NO_PROGRESS="1", R_SCELMO_REQUIRE_PYTHON="1", _R_CHECK_FORCE_SUGGESTS_="false",
    )
    env.update(extra)
    return env


def run_r(code: str, lib: Path, *, timeout: int = 600, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("Rscript") or "Rscript", "--vanilla", "-e", code],
        env=r_env(lib, **env), capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


@pytest.fixture(scope="session")
def r_lib(tmp_path_factory) -> Path:
    """A library with the R package installed (once per session)."""
    if shutil.which("Rscript") is None:
        pytest.skip("R is not installed (no Rscript on PATH); `bash .ci/run` installs it from Debian")
    probe = subprocess.run(
        ["Rscript", "--vanilla", "-e",
         f"cat(c({', '.join(repr(p) for p in R_NEEDS)})[!sapply(c({', '.join(repr(p) for p in R_NEEDS)}), "
         "requireNamespace, quietly = TRUE)], sep = ' ')"],
        capture_output=True, text=True, timeout=120,
    )
    missing = probe.stdout.split()
    if probe.returncode != 0 or missing:
        pytest.skip(f"R packages missing: {' '.join(missing) or probe.stderr[-300:]} (Debian: r-cran-*)")
    lib = tmp_path_factory.mktemp("rlib")
    out = subprocess.run(
        ["R", "CMD", "INSTALL", "--no-docs", "--no-multiarch", f"--library={lib}", str(PKG)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, f"R CMD INSTALL failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return lib


@pytest.mark.slow
def test_testthat_suite(r_lib):
    code = (
        "res <- testthat::test_dir('r_wrapper/tests/testthat', package = 'scelmo', "
        "load_package = 'installed', reporter = 'summary', stop_on_failure = FALSE); "
        "df <- as.data.frame(res); "
        "cat(sprintf('\\nSCELMO_TESTTHAT tests=%d expectations=%d failed=%d errors=%d skipped=%d\\n', "
        "nrow(df), sum(df$nb), sum(df$failed), sum(df$error), sum(df$skipped)))"
    )
    out = run_r(code, r_lib, cwd=ROOT)
    log = out.stdout + out.stderr
    m = re.search(r"SCELMO_TESTTHAT tests=(\d+) expectations=(\d+) failed=(\d+) errors=(\d+) skipped=(\d+)", log)
    assert out.returncode == 0 and m, log[-6000:]
    tests, _, failed, errors, skipped = map(int, m.groups())
    assert failed == 0 and errors == 0, log[-6000:]
    assert tests >= 10, log[-6000:]
    print(log[-2500:])  # shown with -s / on failure: timings (the 50k-cell crossing) and skips


def _python_without_scelmo(tmp_path: Path) -> Path:
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv / "bin" / "python"


@pytest.mark.parametrize("which", ["no-package", "no-python"])
def test_missing_python_is_a_clear_r_error(r_lib, tmp_path, which):
    python = _python_without_scelmo(tmp_path) if which == "no-package" else tmp_path / "nowhere" / "python"
    code = (
        "m <- Matrix::Matrix(matrix(1, 2, 2, dimnames = list(c('CD3E', 'LYZ'), c('a', 'b'))), sparse = TRUE); "
        "e <- tryCatch(scelmo::RunScELMo(m), error = function(e) e); "
        "cat('CLASS:', class(e), '\\n'); cat('MSG:', conditionMessage(e), '\\n'); "
        "cat('AVAILABLE:', scelmo::scelmo_available(), '\\n')"
    )
    out = run_r(code, r_lib, cwd=tmp_path, RETICULATE_PYTHON=str(python), R_SCELMO_REQUIRE_PYTHON="")
    log = out.stdout + out.stderr
    assert "CLASS: scelmo_python_missing scelmo_error" in log, log
    assert "install_scelmo()" in log and "RETICULATE_PYTHON" in log, log
    assert "AVAILABLE: FALSE" in log, log
