"""R objects for Python users: Seurat / SingleCellExperiment ``.rds`` <-> AnnData.

Needs R and the optional extra ``scelmo[r]`` (rpy2 + anndata2ri; with R < 4.5 also
``rpy2-rinterface<3.6.6``). Reading a Seurat object needs the R package SeuratObject,
and every conversion goes through SingleCellExperiment (Debian:
``r-cran-seuratobject r-bioc-singlecellexperiment``).

=====================  ==============================================================
function               does
=====================  ==============================================================
:func:`read_rds`       ``.rds`` (Seurat or SingleCellExperiment) -> AnnData
:func:`from_seurat`    an rpy2 Seurat object -> AnnData
:func:`from_sce`       an rpy2 SingleCellExperiment -> AnnData
:func:`to_sce`         AnnData -> an rpy2 SingleCellExperiment
:func:`write_rds`      AnnData (+ the ``.rds`` it came from) -> ``.rds`` with the
                       scelmo embedding as a DimReduc (Seurat) or reducedDim (SCE)
=====================  ==============================================================

What maps where: ``X`` = the counts (Seurat: the ``counts`` layer of the default assay;
SCE: the first assay), other assays / the ``data`` layer -> ``layers``; ``meta.data`` /
``colData`` -> ``obs`` (logical, integer, factor, character and double columns keep
their ``NA`` as pandas missing values); reductions -> ``obsm["X_<name>"]`` (Seurat; a reduction
``RunScELMo`` turned to its principal axes is turned back with the rotation in its ``misc``,
so it equals ``scelmo.tl.embed_cells``'s result) or ``obsm[<reducedDim name>]`` (SCE,
anndata2ri's names; the reducedDim "scelmo" that scelmo writes -> ``obsm["X_scelmo"]``). This is the Python-side route
only: the R package talks to Python through ``scelmo.r_bridge`` and never uses rpy2
(rpy2 inside reticulate 1.28 crashes R).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scelmo import keys
from scelmo.errors import InputError, ScelmoError
from scelmo.io._atomic import atomic_path

_INSTALL_HINT = (
    "Reading and writing .rds files needs R (>= 4.1, with the R packages SeuratObject and "
    "SingleCellExperiment) and the optional extra: pip install 'scelmo[r]' "
    "(rpy2 + anndata2ri; with R < 4.5 also 'rpy2-rinterface<3.6.6')."
)

# R helpers, defined once per session in their own environment.
_R_CODE = r"""
local({
  suppressPackageStartupMessages({
    requireNamespace("SingleCellExperiment")
    requireNamespace("S4Vectors")
  })
  env <- new.env()
  env$v5 <- function() {
    requireNamespace("SeuratObject", quietly = TRUE) && utils::packageVersion("SeuratObject") >= "5.0.0"
  }
  env$layer <- function(seu, assay, layer) {
    a <- seu[[assay]]
    if (env$v5() && inherits(a, "Assay5")) {
      found <- SeuratObject::Layers(a, search = layer)
      if (length(found) == 0) return(NULL)
      if (length(found) > 1) a <- SeuratObject::JoinLayers(a, layers = layer)
      return(SeuratObject::LayerData(a, layer = layer))
    }
    if (!layer %in% c("counts", "data")) return(NULL)
    m <- SeuratObject::GetAssayData(seu, assay = assay, slot = layer)
    if (nrow(m) == 0 || ncol(m) == 0) NULL else m
  }
  env$sparse <- function(m) {
    m <- methods::as(m, "CsparseMatrix")
    if (!methods::is(m, "dgCMatrix")) m <- methods::as(methods::as(methods::as(m, "dMatrix"), "generalMatrix"), "CsparseMatrix")
    m
  }
  env$seurat_to_sce <- function(seu, assay) {
    if (is.null(assay)) assay <- SeuratObject::DefaultAssay(seu)
    if (!assay %in% SeuratObject::Assays(seu)) stop("assay '", assay, "' not found")
    counts <- env$layer(seu, assay, "counts")
    data <- env$layer(seu, assay, "data")
    assays <- list()
    if (!is.null(counts)) assays$counts <- env$sparse(counts)
    if (!is.null(data) && !(!is.null(counts) && identical(dim(data), dim(counts)) &&
                             isTRUE(all.equal(data, counts)))) assays$data <- env$sparse(data)
    if (length(assays) == 0) stop("assay '", assay, "' has neither counts nor data")
    cells <- colnames(seu)
    rd <- list()
    for (r in SeuratObject::Reductions(seu)) {
      E <- SeuratObject::Embeddings(seu, reduction = r)
      # RunScELMo turns its reduction to principal axes and keeps the rotation: turned back here,
      # obsm holds what scelmo.tl.embed_cells gives (and what text and reference vectors match)
      rot <- SeuratObject::Misc(seu[[r]])$rotation
      if (is.matrix(rot) && ncol(rot) == ncol(E) && nrow(rot) == ncol(E)) {
        E <- E %*% t(rot)
        colnames(E) <- NULL
      }
      if (identical(sort(rownames(E)), sort(cells))) rd[[paste0("X_", r)]] <- E[cells, , drop = FALSE]
    }
    meta <- seu[[]][cells, , drop = FALSE]
    SingleCellExperiment::SingleCellExperiment(
      assays = assays, colData = S4Vectors::DataFrame(meta, check.names = FALSE), reducedDims = rd
    )
  }
  env$logical_cols <- function(sce) {
    cd <- SummarizedExperiment::colData(sce)
    names(cd)[vapply(seq_len(ncol(cd)), function(i) is.logical(cd[[i]]), logical(1))]
  }
  env$add_seurat <- function(seu, Z, cells, name, key, misc, rotation, stdev) {
    rownames(Z) <- cells
    colnames(Z) <- paste0(key, seq_len(ncol(Z)))
    Z <- Z[colnames(seu), , drop = FALSE]
    dr <- SeuratObject::CreateDimReducObject(embeddings = Z, key = key, stdev = as.numeric(stdev),
                                             assay = SeuratObject::DefaultAssay(seu),
                                             misc = list(scelmo = misc, rotation = rotation))
    seu[[name]] <- dr
    seu
  }
  env$add_sce <- function(sce, Z, cells, name, misc) {
    rownames(Z) <- cells
    Z <- Z[colnames(sce), , drop = FALSE]
    SingleCellExperiment::reducedDim(sce, name) <- Z
    if (name == "scelmo" && "X_scelmo" %in% SingleCellExperiment::reducedDimNames(sce)) {
      # (an earlier scelmo embedding, written without a template: the same slot under its AnnData name)
      SingleCellExperiment::reducedDim(sce, "X_scelmo") <- NULL
    }
    S4Vectors::metadata(sce)$scelmo <- misc
    sce
  }
  env
})
"""


@contextlib.contextmanager
def _quiet_r() -> Iterator[None]:
    """Route R's console chatter (library warnings) away from the user's stdout."""
    import rpy2.robjects as ro
    from rpy2.rinterface_lib import callbacks

    saved = (callbacks.consolewrite_print, callbacks.consolewrite_warnerror)
    callbacks.consolewrite_print = lambda s: None
    callbacks.consolewrite_warnerror = lambda s: None
    old = ro.r["options"](warn=-1)  # R's deferred "Warning messages:" (empty site library ...)
    try:
        yield
    finally:
        ro.r["options"](old)
        callbacks.consolewrite_print, callbacks.consolewrite_warnerror = saved


_STATE: dict[str, Any] = {}


def _r() -> tuple[Any, Any]:
    """``(rpy2.robjects, helpers)``; a clear :class:`ScelmoError` when R or the extra is missing."""
    if "env" in _STATE:
        return _STATE["ro"], _STATE["env"]
    with _process_environment_kept():
        try:
            import anndata2ri  # noqa: F401
            import rpy2.robjects as ro
        except (ImportError, RuntimeError, OSError) as exc:  # no R: RuntimeError("Unable to determine R_HOME")
            raise ScelmoError(f"{_INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
        from rpy2.rinterface_lib.embedded import RRuntimeError

        try:
            with _quiet_r():
                env = ro.r(_R_CODE)
        except RRuntimeError as exc:
            raise ScelmoError(f"{_INSTALL_HINT} (R said: {str(exc).strip()})") from None
    _STATE.update(ro=ro, env=env)
    return ro, env


@contextlib.contextmanager
def _process_environment_kept() -> Iterator[None]:
    """Undo what starting embedded R does to the process environment, except R's own variables.

    R's start-up exports ``LD_LIBRARY_PATH`` (R's and the system's library directories),
    ``MAKE``, ``PAGER``, ``EDITOR``... into the process. Every later child process inherits
    them: a Python started from it then loads the system's libpython / libssl instead of its
    own (``import _ssl`` fails). The process's own loader read its paths at start-up, so
    restoring them changes nothing for R here; ``R_*`` variables are kept for R's use.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(saved) | set(os.environ):
            if key.startswith(("R_", "_R_")) or os.environ.get(key) == saved.get(key):
                continue
            if key in saved:
                os.environ[key] = saved[key]
            else:
                os.environ.pop(key, None)


def _call(name: str, *args: Any) -> Any:
    ro, env = _r()
    from rpy2.rinterface_lib.embedded import RRuntimeError

    try:
        with _quiet_r():
            return env[name](*args)
    except RRuntimeError as exc:
        raise InputError(f"R failed in {name}: {str(exc).strip()}") from None


def _classes(obj: Any) -> list[str]:
    ro, _ = _r()
    return list(ro.r["class"](obj))


def read_rds(path: str | os.PathLike[str], *, assay: str | None = None) -> Any:
    """Read a Seurat or SingleCellExperiment ``.rds`` file as an AnnData.

    ``assay`` picks a Seurat assay (default: the default assay).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Input file {path} does not exist.")
    ro, _ = _r()
    from rpy2.rinterface_lib.embedded import RRuntimeError

    try:
        with _quiet_r():
            obj = ro.r["readRDS"](str(p))
    except RRuntimeError as exc:
        raise InputError(f"Cannot read {path} as an .rds file: {str(exc).strip()}") from None
    cls = _classes(obj)
    if "Seurat" in cls:
        return from_seurat(obj, assay=assay)
    if "SingleCellExperiment" in cls or "SummarizedExperiment" in cls:
        return from_sce(obj)
    raise InputError(f"{path} holds an R object of class {'/'.join(cls)}; expected a Seurat object or a SingleCellExperiment.")


def from_seurat(obj: Any, *, assay: str | None = None) -> Any:
    """A Seurat object (rpy2) -> AnnData (``X`` = counts, ``layers["data"]``, obs, obsm)."""
    ro, _ = _r()
    if "Seurat" not in _classes(obj):
        raise InputError(f"Expected a Seurat object, got {'/'.join(_classes(obj))}.")
    with _quiet_r():
        ok = bool(ro.r("requireNamespace")("SeuratObject", quietly=True)[0])
    if not ok:
        raise ScelmoError("Reading Seurat objects needs the R package SeuratObject (Debian: r-cran-seuratobject).")
    sce = _call("seurat_to_sce", obj, ro.NULL if assay is None else assay)
    adata = from_sce(sce)
    adata.uns["seurat"] = {"assay": assay or str(ro.r("SeuratObject::DefaultAssay")(obj)[0])}
    return adata


def from_sce(obj: Any) -> Any:
    """A SingleCellExperiment (rpy2) -> AnnData via anndata2ri, with logical NAs kept.

    anndata2ri turns an R logical column into int32 with ``NA`` as ``-2147483648``;
    those columns come back here as pandas ``boolean`` with missing values.
    """
    import pandas as pd

    ro, _ = _r()
    import anndata2ri
    from rpy2.robjects.conversion import localconverter

    logical = [str(c) for c in _call("logical_cols", obj)]
    with _quiet_r(), localconverter(anndata2ri.converter):
        adata = ro.conversion.get_conversion().rpy2py(obj)
    for col in logical:
        values = np.asarray(adata.obs[col])
        na = values == np.iinfo(np.int32).min
        adata.obs[col] = pd.arrays.BooleanArray(np.where(na, 0, values).astype(bool), na)
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    # the reducedDim scelmo writes ("scelmo", add_reduction's default name) is the scelmo
    # embedding: under its AnnData key, as from a Seurat file (a trial: read back as
    # obsm["scelmo"], which scelmo.tl.cluster's default use_rep does not find)
    if "scelmo" in adata.obsm and keys.X_SCELMO not in adata.obsm and keys.PROVENANCE in adata.uns:
        adata.obsm[keys.X_SCELMO] = adata.obsm.pop("scelmo")
    return adata


def to_sce(adata: Any) -> Any:
    """AnnData -> SingleCellExperiment (rpy2 object) via anndata2ri."""
    ro, _ = _r()
    import anndata2ri
    from rpy2.robjects.conversion import localconverter

    with _quiet_r(), localconverter(anndata2ri.converter):
        return ro.conversion.get_conversion().py2rpy(adata)


def _r_list(obj: Any) -> Any:
    """Nested dict of strings / numbers -> an R named list."""
    ro, _ = _r()
    if isinstance(obj, Mapping):
        return ro.vectors.ListVector({str(k): _r_list(v) for k, v in obj.items()}) if obj else ro.r("list()")
    if isinstance(obj, bool | np.bool_):
        return ro.vectors.BoolVector([bool(obj)])
    if isinstance(obj, int | np.integer):
        return ro.vectors.IntVector([int(obj)]) if abs(int(obj)) < 2**31 else ro.vectors.FloatVector([float(obj)])
    if isinstance(obj, float | np.floating):
        return ro.vectors.FloatVector([float(obj)])
    return ro.vectors.StrVector([str(obj)])


def principal_axes(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cell embedding turned to its principal axes, as a Seurat reduction should be:
    ``(rotated Z, rotation, each rotated column's SD)``, dimensions ordered by variance as PCs
    are (Seurat's ``dims = 1:n``, ``ElbowPlot``).

    The rotation is orthogonal and applied to the uncentred embedding, so all dimensions
    together keep every distance and cosine (unrotated = ``rotated @ rotation.T``). Each
    axis's sign is fixed (its largest coefficient positive); the covariance is accumulated in
    float64 over row blocks.
    """
    E = np.asarray(Z, dtype=np.float32)
    n, d = E.shape
    if n < 2:
        return E.copy(), np.eye(d), np.zeros(d)
    gram, total = np.zeros((d, d)), np.zeros(d)
    for start in range(0, n, 65_536):
        block = E[start:start + 65_536].astype(np.float64)
        gram += block.T @ block
        total += block.sum(axis=0)
    mu = total / n
    values, vectors = np.linalg.eigh((gram - n * np.outer(mu, mu)) / (n - 1))
    R = vectors[:, np.argsort(values)[::-1]]
    R *= np.where(R[np.abs(R).argmax(axis=0), np.arange(d)] < 0, -1.0, 1.0)
    rotated = E @ R.astype(np.float32)
    return rotated, R, rotated.std(axis=0, ddof=1, dtype=np.float64)


def _r_matrix(Z: np.ndarray) -> Any:
    ro, _ = _r()
    from rpy2.robjects import numpy2ri
    from rpy2.robjects.conversion import localconverter

    with localconverter(ro.default_converter + numpy2ri.converter):
        return ro.conversion.get_conversion().py2rpy(np.asarray(Z, dtype=np.float64))


def add_reduction(
    obj: Any,
    adata: Any,
    *,
    obsm_key: str = keys.X_SCELMO,
    name: str = "scelmo",
    key: str = "scelmo_",
) -> Any:
    """Add ``adata.obsm[obsm_key]`` to an R object: a DimReduc (Seurat) or reducedDim (SCE).

    Cells are matched by name; provenance (``uns["scelmo"]``) goes to the DimReduc's
    ``misc`` / the SCE's ``metadata``. A Seurat DimReduc is turned to its principal axes as
    ``RunScELMo`` does (:func:`principal_axes`; the rotation in ``misc$rotation``, each
    dimension's SD in ``stdev``), so ``dims = 1:30`` and ``ElbowPlot`` work the same.
    """
    ro, _ = _r()
    if obsm_key not in adata.obsm:
        raise InputError(f"adata.obsm[{obsm_key!r}] not found; run scelmo.tl.embed_cells first.")
    Z = _r_matrix(np.asarray(adata.obsm[obsm_key]))
    cells = ro.vectors.StrVector([str(c) for c in adata.obs_names])
    r_cells = set(ro.r["colnames"](obj))
    if r_cells != set(cells):
        raise InputError("The AnnData's cells differ from the R object's cells; cannot add the reduction.")
    misc = _r_list(dict(adata.uns.get(keys.PROVENANCE, {}) or {}))
    if "Seurat" in _classes(obj):
        rotated, rotation, stdev = principal_axes(np.asarray(adata.obsm[obsm_key]))
        return _call("add_seurat", obj, _r_matrix(rotated), cells, name, key, misc, _r_matrix(rotation),
                     ro.FloatVector(stdev))
    return _call("add_sce", obj, Z, cells, name, misc)


def write_rds(
    adata: Any,
    path: str | os.PathLike[str],
    *,
    template: str | os.PathLike[str] | Any | None = None,
    obsm_key: str = keys.X_SCELMO,
    name: str = "scelmo",
    key: str = "scelmo_",
) -> Path:
    """Write results as an ``.rds`` file, atomically.

    With ``template`` (the ``.rds`` the data came from, or an rpy2 object) the file is
    that object plus the embedding as ``obj[[name]]`` (Seurat DimReduc, key ``key``) or
    ``reducedDim(obj, name)`` (SCE). Without it, the whole AnnData is written as a
    SingleCellExperiment.
    """
    ro, _ = _r()
    if template is None:
        obj = to_sce(adata)
    else:
        if isinstance(template, str | os.PathLike):
            with _quiet_r():
                template = ro.r["readRDS"](str(template))
        obj = add_reduction(template, adata, obsm_key=obsm_key, name=name, key=key)
    with atomic_path(path) as tmp, _quiet_r():
        ro.r["saveRDS"](obj, str(tmp))
    return Path(path)
