# Shared helpers for the testthat tests.
#
# The tests need the scelmo Python package: reticulate finds it through
# RETICULATE_PYTHON (the pytest driver sets it to its own interpreter) or the
# virtualenv made by install_scelmo(). Without it, every test that needs Python
# is skipped with the reason.

skip_if_no_python <- function() {
  if (!scelmo_available()) {
    if (nzchar(Sys.getenv("R_SCELMO_REQUIRE_PYTHON"))) {
      # the pytest driver sets this: a Python that cannot be loaded is a failure there
      stop(conditionMessage(tryCatch(scelmo:::.bridge(), error = function(e) e)))
    }
    skip("the scelmo Python package is not available to reticulate (set RETICULATE_PYTHON)")
  }
}

skip_if_no_annotate <- function() {
  skip_if_no_python()
  if (!isTRUE(scelmo:::.state$info$has_annotate)) {
    skip("this scelmo Python package has no scelmo.tl.annotate")
  }
}

toy_genes <- c("CD3E", "CD3D", "IL7R", "CD19", "MS4A1", "CD79A", "LYZ", "CD14", "S100A8",
               "NKG7", "GNLY", "PPBP", "HBB", "FCGR3A", "CST3")

# genes x cells counts with three blocks of marker genes
toy_counts <- function(n_cells = 60, seed = 1) {
  set.seed(seed)
  g <- length(toy_genes)
  m <- matrix(stats::rpois(g * n_cells, 0.3), nrow = g)
  grp <- rep(1:3, length.out = n_cells)
  for (j in seq_len(n_cells)) {
    rows <- ((grp[j] - 1) * 3 + 1):((grp[j] - 1) * 3 + 3)
    m[rows, j] <- m[rows, j] + stats::rpois(3, 8)
  }
  dimnames(m) <- list(toy_genes, sprintf("cell_%03d", seq_len(n_cells)))
  Matrix::Matrix(m, sparse = TRUE)
}

toy_seurat <- function(n_cells = 60) {
  m <- toy_counts(n_cells)
  seu <- suppressWarnings(SeuratObject::CreateSeuratObject(m, project = "toy"))
  n <- ncol(seu)
  seu$group <- factor(rep(c("T", "B", "Mono"), length.out = n), levels = c("T", "B", "Mono"))
  seu$flag <- rep(c(TRUE, NA, FALSE), length.out = n)
  seu$batch <- rep(c(1L, NA, 2L, 3L), length.out = n)
  seu$donor <- factor(rep(c("d1", NA, "d2"), length.out = n))
  seu$note <- rep(c("x", NA, "NA", "\u00fcber"), length.out = n)
  seu$qc <- rep(c(0.5, NA, NaN, 2), length.out = n)
  seu
}

# Describe an AnnData built by scelmo.r_bridge.to_anndata, in plain R values.
describe_in_python <- function(payload) {
  reticulate::py_run_string(paste(
    "import numpy as _np",
    "from scelmo import r_bridge as _rb",
    "def _scelmo_describe(payload):",
    "    a = _rb.to_anndata(payload)",
    "    cols = {}",
    "    for c in a.obs.columns:",
    "        s = a.obs[c]",
    "        na = s.isna().to_numpy()",
    "        cols[c] = {'dtype': str(s.dtype), 'na': [int(i) + 1 for i in _np.flatnonzero(na)],",
    "                   'values': _rb.encode_strings(['' if m else str(v) for v, m in zip(s, na)])}",
    "    return {'obs_names': _rb.encode_strings(a.obs_names), 'var_names': _rb.encode_strings(a.var_names),",
    "            'shape': [int(a.n_obs), int(a.n_vars)], 'sum': float(a.X.sum()), 'nnz': int(a.X.nnz), 'cols': cols}",
    sep = "\n"
  ))
  main <- reticulate::import_main(convert = TRUE)
  main$`_scelmo_describe`(payload)
}
