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
        "nrow(df), sum(df$nb), sum(df$failed), sum(df$error), sum(df$skipped))); "
        "for (f in unique(df$file)) cat(sprintf('SCELMO_FILE %s tests=%d skipped=%d seconds=%.1f\\n', f, "
        "sum(df$file == f), sum(df$skipped[df$file == f]), sum(df$real[df$file == f])))"
    )
    out = run_r(code, r_lib, cwd=ROOT)
    log = out.stdout + out.stderr
    m = re.search(r"SCELMO_TESTTHAT tests=(\d+) expectations=(\d+) failed=(\d+) errors=(\d+) skipped=(\d+)", log)
    assert out.returncode == 0 and m, log[-6000:]
    tests, _, failed, errors, skipped = map(int, m.groups())
    assert failed == 0 and errors == 0, log[-6000:]
    assert tests >= 10, log[-6000:]
    files = {f: (int(n), int(sk)) for f, n, sk in re.findall(r"SCELMO_FILE (\S+) tests=(\d+) skipped=(\d+)", log)}
    # fine-tuning from R (real torch training) runs, not skipped, wherever the suite runs
    assert files.get("test-finetune.R", (0, 0))[0] >= 4 and files["test-finetune.R"][1] == 0, log[-6000:]
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


CROSS_CHECK_R = r"""
suppressPackageStartupMessages(library(SeuratObject))
source(file.path('r_wrapper', 'tests', 'testthat', 'helper-scelmo.R'))
out <- commandArgs(trailingOnly = TRUE)[1]
seu <- toy_seurat(45)
seu <- RenameCells(seu, new.names = c("\u00fcnic\u00f8de cell 1", colnames(seu)[-1]))
saveRDS(seu, file.path(out, 'seu.rds'))
counts <- GetAssayData(seu, slot = 'counts')
bridge <- reticulate::import('scelmo.r_bridge', convert = FALSE)
sent <- bridge$to_anndata(scelmo:::.scelmo_payload(counts, meta = seu[[]]))
reticulate::py_save_object(sent, file.path(out, 'sent.pkl'))
seu <- scelmo::RunScELMo(seu, verbose = FALSE)
saveRDS(seu, file.path(out, 'seu_scelmo.rds'))
E <- Embeddings(seu, 'scelmo') %*% t(Misc(seu[['scelmo']])$rotation)  # (ordered by variance in R)
writeBin(as.vector(E), file.path(out, 'embedding.f64'), size = 8, endian = 'little')
writeLines(as.character(dim(E)), file.path(out, 'embedding.dim'))
"""


def _na_aware(series) -> list:
    import pandas as pd

    return [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in series]


@pytest.mark.slow
def test_cross_check_r_wrapper_against_anndata2ri(r_lib, tmp_path):
    """The same Seurat object through the R wrapper and through anndata2ri (scelmo.io._rds)."""
    import pickle

    import numpy as np

    try:
        import anndata2ri  # noqa: F401
        import rpy2.robjects  # noqa: F401
    except (ImportError, RuntimeError) as exc:  # RuntimeError: no R_HOME
        pytest.skip(f"the scelmo[r] extra (rpy2 + anndata2ri) is not usable: {exc}")
    import scelmo
    from scelmo.io import _rds as rio

    try:
        rio._r()
    except scelmo.ScelmoError as exc:
        pytest.skip(f"R side of scelmo[r] unusable: {exc}")

    out = run_r(CROSS_CHECK_R.replace("commandArgs(trailingOnly = TRUE)[1]", repr(str(tmp_path))), r_lib, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(tmp_path / "sent.pkl", "rb") as fh:
        sent = pickle.load(fh)
    got = scelmo.io.read_rds(tmp_path / "seu.rds")

    assert list(sent.obs_names) == list(got.obs_names) and sent.obs_names[0] == "ünicøde cell 1"
    assert list(sent.var_names) == list(got.var_names)
    assert sent.X.shape == got.X.shape and abs(sent.X - got.X).max() == 0
    assert list(sent.obs.columns) == list(got.obs.columns)
    for col in sent.obs.columns:
        assert _na_aware(sent.obs[col]) == _na_aware(got.obs[col]), col
    for col, n_na in {"flag": 15, "batch": 11, "donor": 15, "note": 11}.items():
        assert sent.obs[col].isna().sum() == n_na and got.obs[col].isna().sum() == n_na, col

    n, d = map(int, (tmp_path / "embedding.dim").read_text().split())
    from_r = np.fromfile(tmp_path / "embedding.f64", dtype="<f8").reshape((n, d), order="F")
    scelmo.tl.embed_cells(got)
    np.testing.assert_allclose(from_r, got.obsm["X_scelmo"], rtol=1e-6, atol=1e-7)
    # RunScELMo's reduction (turned to principal axes in R) is read back as tl.embed_cells gives it
    rotated = scelmo.io.read_rds(tmp_path / "seu_scelmo.rds")
    np.testing.assert_allclose(rotated.obsm["X_scelmo"], got.obsm["X_scelmo"], rtol=1e-5, atol=1e-6)

    # and back: the embedding as a DimReduc in the .rds, read again
    rio.write_rds(got, tmp_path / "with_scelmo.rds", template=tmp_path / "seu.rds")
    again = scelmo.io.read_rds(tmp_path / "with_scelmo.rds")
    np.testing.assert_allclose(again.obsm["X_scelmo"], got.obsm["X_scelmo"], rtol=1e-5, atol=1e-6)
    # written as RunScELMo writes it (review finding: unordered, no stdev, so dims = 1:30 was arbitrary)
    ro, _ = rio._r()
    path = str(tmp_path / "with_scelmo.rds").replace("\\", "/")
    sds = np.asarray(ro.r(f'SeuratObject::Stdev(readRDS("{path}")[["scelmo"]])'))
    assert sds.size == got.obsm["X_scelmo"].shape[1] and np.all(np.diff(sds) <= 1e-6) and sds[0] > 0

    # a SingleCellExperiment written with the embedding as reducedDim "scelmo" reads back under
    # X_scelmo, as a Seurat file does (a trial: obsm["scelmo"], which tl.cluster does not find)
    bare = got.copy()
    del bare.obsm["X_scelmo"]
    rio.write_rds(bare, tmp_path / "sce.rds")
    rio.write_rds(got, tmp_path / "sce_scelmo.rds", template=tmp_path / "sce.rds")
    sce = scelmo.io.read_rds(tmp_path / "sce_scelmo.rds")
    assert "scelmo" not in sce.obsm
    np.testing.assert_allclose(sce.obsm["X_scelmo"], got.obsm["X_scelmo"], rtol=1e-6, atol=1e-7)

    # the CLI reads and writes .rds with the extra installed
    from click.testing import CliRunner

    from scelmo.cli import cli

    res = CliRunner().invoke(cli, ["embed-cells", str(tmp_path / "seu.rds"), "-o", str(tmp_path / "cli.rds")])
    assert res.exit_code == 0, res.output
    via_cli = scelmo.io.read_rds(tmp_path / "cli.rds")
    np.testing.assert_allclose(via_cli.obsm["X_scelmo"], from_r, rtol=1e-6, atol=1e-7)
    res = CliRunner().invoke(cli, ["embed-cells", str(tmp_path / "seu.rds"), "-o", str(tmp_path / "x.h5ad"), "--backed"])
    assert res.exit_code != 0 and ".h5ad INPUT" in res.output


RESTART_TRAIN_R = r"""
suppressPackageStartupMessages(library(SeuratObject))
out <- commandArgs(trailingOnly = TRUE)[1]
data("pbmc_small")
model <- scelmo::TrainScELMo(pbmc_small, labels = "groups", max.epochs = 2, verbose = FALSE)
model <- scelmo::SaveScELMoModel(model, file.path(out, "model"))
saveRDS(model, file.path(out, "handle.rds"))
q <- scelmo::PredictScELMo(pbmc_small, model, verbose = FALSE)
writeLines(as.character(q$scelmo_label), file.path(out, "labels_1.txt"))
"""

RESTART_USE_R = r"""
suppressPackageStartupMessages(library(SeuratObject))
out <- commandArgs(trailingOnly = TRUE)[1]
data("pbmc_small")
old <- readRDS(file.path(out, "handle.rds"))
e <- tryCatch(scelmo::PredictScELMo(pbmc_small, old, verbose = FALSE), error = function(e) e)
cat("CLASS:", class(e), "\n"); cat("MSG:", conditionMessage(e), "\n")
model <- scelmo::LoadScELMoModel(file.path(out, "model"))
q <- scelmo::PredictScELMo(pbmc_small, model, verbose = FALSE)
writeLines(as.character(q$scelmo_label), file.path(out, "labels_2.txt"))
"""


@pytest.mark.slow
def test_model_handle_after_an_r_restart(r_lib, tmp_path):
    """A handle kept with saveRDS is dead in a new R session; LoadScELMoModel gives the same model."""
    def script(code: str) -> subprocess.CompletedProcess:
        return run_r(code.replace("commandArgs(trailingOnly = TRUE)[1]", repr(str(tmp_path))), r_lib, cwd=ROOT)

    first = script(RESTART_TRAIN_R)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = script(RESTART_USE_R)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "CLASS: scelmo_dead_model scelmo_input_error scelmo_error" in log, log
    assert f'LoadScELMoModel("{(tmp_path / "model").resolve()}")' in log, log
    labels_1 = (tmp_path / "labels_1.txt").read_text().split()
    assert len(labels_1) == 80 and labels_1 == (tmp_path / "labels_2.txt").read_text().split()


# ----------------------------------------------------------------------------- docs' R blocks
R_BLOCK = re.compile(r"```r\n(.*?)```", re.S)
#: lines of the docs' R blocks that are not run here, by their first words, with the reason
R_NOT_RUN = {
    "install.packages(": "installs the package (the session fixture has done it: R CMD INSTALL)",
    "scelmo::install_scelmo()": "creates a virtualenv with pip (tests_r_package.py tests it with a local index)",
}
# The objects the docs' text leaves to the reader, made from the bundled Kang subset (real
# counts): `seu`, `ref` (control cells, `celltype`), `query` (stimulated cells), `counts`
# (what Read10X would return), in a scratch directory; Seurat and scelmo attached, as the pages' first
# blocks do before their later blocks.
R_PREAMBLE = """
suppressPackageStartupMessages({ library(SeuratObject); library(Matrix); library(Seurat); library(scelmo) })
k <- readRDS(file.path("{root}", "r_wrapper", "inst", "extdata", "kang_subset.rds"))
counts <- k$counts
meta <- k$meta; meta$celltype <- as.character(meta$cell_type)
Read10X <- function(...) counts
seu <- CreateSeuratObject(counts, meta.data = meta)
ref <- subset(seu, cells = colnames(seu)[meta$condition == "control"])
query <- subset(seu, cells = colnames(seu)[meta$condition == "stimulated"])
setwd(tempdir())
"""


def _r_doc_blocks():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for i, code in enumerate(R_BLOCK.findall(doc.read_text(encoding="utf-8"))):
            yield pytest.param(str(doc.relative_to(ROOT)), code, id=f"{doc.relative_to(ROOT)}#{i}")


@pytest.mark.slow
@pytest.mark.parametrize("doc,code", list(_r_doc_blocks()))
def test_docs_r_blocks_run(r_lib, doc, code):
    """Every R block of the README and docs runs as written (after the preamble's stand-ins)."""
    lines = [ln for ln in code.splitlines() if not any(ln.strip().startswith(k) for k in R_NOT_RUN)]
    script = R_PREAMBLE.replace("{root}", str(ROOT)) + "\n".join(lines) + '\ncat("\\nSCELMO_DOC_BLOCK_OK\\n")\n'
    out = run_r(script, r_lib, cwd=ROOT, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "SCELMO_DOC_BLOCK_OK" in log, f"{doc}:\n{log[-4000:]}"
