# Moving data to Python as raw little-endian bytes (see scelmo.r_bridge).
#
# reticulate's matrix, sparse-matrix and NA conversions differ between versions
# (1.28 + numpy 2 fails on matrices; NA becomes TRUE / INT_MIN / "NA"), so the
# package never relies on them: numbers and strings cross as `raw` vectors, with
# an is.na() mask for every metadata column.

.le <- function(x, size) writeBin(x, raw(), size = size, endian = "little")

# NUL-terminated UTF-8 strings; NA becomes "" (send a mask alongside).
.encode_strings <- function(x) {
  x <- enc2utf8(as.character(x))
  x[is.na(x)] <- ""
  if (length(x) == 0) return(raw())
  writeBin(x, raw())
}

.decode_strings <- function(bytes, n) {
  if (n == 0) return(character())
  out <- readBin(bytes, what = "character", n = n)
  Encoding(out) <- "UTF-8"
  out
}

.decode_matrix <- function(bytes, dim) {
  dim <- as.integer(unlist(dim))
  values <- readBin(bytes, what = "double", n = prod(dim), size = 4, endian = "little")
  matrix(values, nrow = dim[1], ncol = dim[2])
}

.encode_matrix <- function(m) {
  .le(as.double(as.vector(m)), 4)
}

# One meta.data column -> list(name, type, data, na, levels).
.encode_column <- function(name, v) {
  na <- is.na(v)
  if (is.factor(v)) {
    codes <- as.integer(v)
    codes[na] <- 0L
    return(list(name = name, type = "factor", data = .le(codes, 4), na = as.raw(na),
                levels = .encode_strings(levels(v)), ordered = is.ordered(v)))
  }
  if (is.logical(v)) {
    v[na] <- FALSE
    return(list(name = name, type = "logical", data = as.raw(v), na = as.raw(na)))
  }
  if (is.integer(v)) {
    return(list(name = name, type = "integer", data = .le(v, 4), na = as.raw(na)))
  }
  if (is.double(v) && !inherits(v, c("Date", "POSIXt", "difftime"))) {
    return(list(name = name, type = "double", data = .le(as.double(v), 8), na = as.raw(na)))
  }
  # characters, dates and anything else with an as.character method
  v <- as.character(v)
  list(name = name, type = "character", data = .encode_strings(v), na = as.raw(is.na(v)))
}

.encode_meta <- function(meta) {
  if (is.null(meta) || ncol(meta) == 0) return(list())
  cols <- list()
  for (name in colnames(meta)) {
    v <- meta[[name]]
    if (is.list(v) || !is.null(dim(v))) {
      .warn(paste0("meta.data column '", name, "' is not a plain vector; it is not sent to Python."))
      next
    }
    cols[[length(cols) + 1L]] <- .encode_column(name, v)
  }
  cols
}

# Coerce to a genes x cells dgCMatrix (double values), never densifying sparse input.
.as_dgc <- function(m) {
  if (is(m, "dgCMatrix")) return(m)
  if (is.data.frame(m)) m <- as.matrix(m)
  if (is.matrix(m) && !is.numeric(m) && !is.logical(m)) {
    .abort("The expression matrix must be numeric.", "scelmo_input_error")
  }
  if (is(m, "SummarizedExperiment")) {  # (a SingleCellExperiment has dim() but is no matrix)
    .abort(c(paste0("A ", class(m)[1], " is not read directly; pass its counts, e.g. ",
                    "RunScELMo(SingleCellExperiment::counts(sce)) (genes x cells), or convert it with ",
                    "Seurat::as.Seurat(sce)."),
             "From Python, scelmo.io.read_rds reads SingleCellExperiment .rds files."), "scelmo_input_error")
  }
  m <- tryCatch(as(m, "CsparseMatrix"), error = function(e) {
    .abort(paste0("Expected a Seurat object or a genes x cells matrix (dense or sparse), got a ", class(m)[1],
                  " that cannot be read as one: ", conditionMessage(e)), "scelmo_input_error")
  })
  if (!is(m, "dgCMatrix")) m <- as(as(as(m, "dMatrix"), "generalMatrix"), "CsparseMatrix")
  m
}

# Check a genes x cells matrix; errors name the problem and the fix.
.check_matrix <- function(m, what = "the object") {
  if (ncol(m) == 0) {
    .abort(paste0("Nothing to embed: ", what, " has no cells (0 columns)."), "scelmo_input_error")
  }
  if (nrow(m) == 0) {
    .abort(paste0("Nothing to embed: ", what, " has no genes (0 rows)."), "scelmo_input_error")
  }
  if (is.null(rownames(m))) {
    .abort(paste0("The genes of ", what, " have no names. Set rownames() to gene symbols ",
                  "(or Ensembl gene IDs)."), "scelmo_input_error")
  }
  if (is.null(colnames(m))) {
    .abort(paste0("The cells of ", what, " have no names. Set colnames()."), "scelmo_input_error")
  }
  dup <- unique(rownames(m)[duplicated(rownames(m))])
  if (length(dup)) {
    .abort(paste0(
      length(dup), " feature names occur more than once (e.g. ",
      paste(head(dup, 3), collapse = ", "), "). Make them unique (make.unique()) or ",
      "aggregate duplicated genes first, or pass `features =` without duplicates."
    ), "scelmo_input_error")
  }
  dupc <- unique(colnames(m)[duplicated(colnames(m))])
  if (length(dupc)) {
    .abort(paste0(length(dupc), " cell names occur more than once (e.g. ",
                  paste(head(dupc, 3), collapse = ", "), "). Make them unique."),
           "scelmo_input_error")
  }
  invisible(m)
}

# Most non-zeros one call sends: R raw vectors written by writeBin() hold < 2^31 bytes.
.max_nnz <- function() {
  v <- getOption("scelmo.max_nnz", .Machine$integer.max %/% 8)
  if (!is.numeric(v) || length(v) != 1 || is.na(v) || v < 1 || v > .Machine$integer.max %/% 8) {
    .abort(paste0("options(scelmo.max_nnz = ) must be a number of non-zeros from 1 to ", .Machine$integer.max %/% 8,
                  " (what one call can send); got ", format(v), "."), "scelmo_input_error")
  }
  as.integer(v)
}

# Consecutive column (cell) index ranges holding at most `max_nnz` non-zeros each.
.cell_batches <- function(m, max_nnz = .max_nnz()) {
  if (length(m@x) <= max_nnz) return(list(seq_len(ncol(m))))
  cum <- as.numeric(m@p[-1])
  batches <- list()
  start <- 1L
  base <- 0
  while (start <= ncol(m)) {
    end <- max(start, findInterval(base + max_nnz, cum))
    batches[[length(batches) + 1L]] <- start:end
    base <- cum[end]
    start <- end + 1L
  }
  batches
}

#' The bytes the R package sends to Python
#'
#' @param m genes x cells matrix (anything [Matrix::Matrix()] can make sparse).
#' @param meta optional data.frame of per-cell metadata (rows in the order of
#'   `colnames(m)`).
#' @return A list (the payload documented in `scelmo.r_bridge`).
#' @noRd
.scelmo_payload <- function(m, meta = NULL, what = "the object") {
  m <- .check_matrix(.as_dgc(m), what)
  list(
    n_obs = ncol(m), n_vars = nrow(m),
    x = .le(m@x, 8), i = .le(m@i, 4), p = .le(m@p, 4),
    obs_names = .encode_strings(colnames(m)),
    var_names = .encode_strings(rownames(m)),
    obs = .encode_meta(meta)
  )
}
