"""Write the small Kang 2018 subset the R package's tests use (r_wrapper/inst/extdata/).

Reads Kang et al. 2018 (IFN-beta stimulated and control PBMCs) from the local cache
through :func:`scelmo.datasets.kang2018` and keeps

* cells: 43 per (condition, cell type), 7 cell types x 2 conditions = 602 cells,
  preferring cells whose label came from the original study (``cell_type_source ==
  "scgen_valid"``) and topping up with kNN-transferred labels where a group has fewer;
  drawn with a fixed seed;
* genes: 1,500 = the 1,000 genes detected in the most of those cells (they carry
  most of the counts) plus the 500 most variable of the others (scanpy
  ``highly_variable_genes``, flavor "seurat", on log-normalised counts, genes detected
  in at least 3 cells) - chosen without looking at the labels;
* values: the raw integer UMI counts.

The result, ``kang_subset.rds``, is a plain R list (``counts``: genes x cells
``dgCMatrix``; ``meta``: data.frame with ``condition``, ``cell_type``,
``cell_type_source``), so reading it needs only base R and Matrix. The counts cross
to R as a Matrix Market file (written here, read by ``Rscript``) and the .rds is
xz-compressed.

Usage::

    python scripts/make_kang_subset.py [--out r_wrapper/inst/extdata/kang_subset.rds]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

PER_GROUP = 43
N_TOP_DETECTED = 1000
N_VARIABLE = 500
SEED = 0

R_CODE = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; out <- args[2]
m <- Matrix::readMM(file.path(dir, "counts.mtx"))
m <- methods::as(m, "CsparseMatrix")
m <- methods::as(m, "dgCMatrix")
genes <- readLines(file.path(dir, "genes.txt"), encoding = "UTF-8")
meta <- utils::read.csv(file.path(dir, "meta.csv"), row.names = 1, stringsAsFactors = FALSE)
dimnames(m) <- list(genes, rownames(meta))
meta$condition <- factor(meta$condition, levels = c("control", "stimulated"))
meta$cell_type <- factor(meta$cell_type)
saveRDS(list(counts = m, meta = meta), out, compress = "xz", version = 2)
"""


def select_cells(obs: pd.DataFrame, per_group: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for (_cond, _ct), idx in obs.groupby(["condition", "cell_type"], observed=True).indices.items():
        src = obs["cell_type_source"].to_numpy()[idx]
        valid = rng.permutation(idx[src == "scgen_valid"])
        other = rng.permutation(idx[src != "scgen_valid"])
        keep.extend(np.r_[valid, other][:per_group].tolist())
    return np.sort(np.array(keep))


def main() -> None:
    import scanpy as sc

    import scelmo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="r_wrapper/inst/extdata/kang_subset.rds")
    args = ap.parse_args()

    adata = scelmo.datasets.kang2018()
    cells = select_cells(adata.obs, PER_GROUP, SEED)
    sub = adata[cells].copy()
    counts = sp.csr_matrix(sub.layers.get("counts", sub.X))
    assert np.all(counts.data == np.round(counts.data)), "expected integer UMI counts"
    n_detected = np.asarray((counts > 0).sum(0)).ravel()
    top = np.argsort(-n_detected, kind="stable")[:N_TOP_DETECTED]
    rest = np.setdiff1d(np.flatnonzero(n_detected >= 3), top)
    norm = sub[:, rest].copy()
    norm.X = counts[:, rest]
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, n_top_genes=N_VARIABLE, flavor="seurat")
    genes = np.sort(np.r_[top, rest[norm.var["highly_variable"].to_numpy()]])
    sub = sub[:, genes].copy()
    sub.X = counts[:, genes]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        scipy.io.mmwrite(t / "counts.mtx", sp.csr_matrix(sub.X).T.astype(np.int64), field="integer")
        (t / "genes.txt").write_text("\n".join(map(str, sub.var_names)) + "\n", encoding="utf-8")
        sub.obs[["condition", "cell_type", "cell_type_source"]].astype(str).to_csv(t / "meta.csv")
        rscript = shutil.which("Rscript")
        if rscript is None:
            raise SystemExit("Rscript is needed to write the .rds (apt-get install r-base-core r-cran-matrix).")
        (t / "make.R").write_text(R_CODE, encoding="utf-8")
        subprocess.run([rscript, "--vanilla", str(t / "make.R"), tmp, str(out)], check=True)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {sub.n_obs} cells x {sub.n_vars} genes, {sp.csr_matrix(sub.X).nnz} non-zeros, "
          f"{out.stat().st_size / 1024:.0f} KiB, sha256 {digest}")
    print(pd.crosstab(sub.obs["cell_type"], sub.obs["condition"]).to_string())
    print(pd.crosstab(sub.obs["cell_type_source"], sub.obs["condition"]).to_string())


if __name__ == "__main__":
    main()
