#' scELMo cell embeddings for a Seurat object or a genes x cells matrix
#'
#' Sends the expression values of `assay`/`layer` to the scelmo Python package,
#' which weights each cell's gene vectors by expression (`aggregator = "wa"`,
#' the paper's default) and returns a cells x d embedding (d = 384 for the
#' bundled offline model). For a Seurat object the result is stored as the
#' DimReduc `object[[reduction.name]]` with the provenance (models, coverage,
#' options) in its `misc` slot and each dimension's standard deviation in
#' `stdev`, and the call is logged in `object@commands`. Like principal
#' components, the dimensions are ordered by the variance they carry in this
#' object's cells (`ElbowPlot(object, reduction = "scelmo")`): the embedding is
#' turned by the orthogonal rotation to its principal axes (not centred and not
#' truncated), so all dimensions together give the same distances and cosines as
#' the Python package's `obsm["X_scelmo"]`, and the first 20-30 cluster about as
#' well as all of them. The rotation is kept in `Misc(object[["scelmo"]])$rotation`
#' (unrotated = `Embeddings(object, "scelmo") %*% t(rotation)`), which
#' [AnnotateScELMo()] applies when it reuses the reduction.
#'
#' Genes must be named by symbols (human or mouse) or Ensembl gene IDs; when
#' none of them can be matched the call stops with an error that says so. The
#' object is never half-modified: everything is checked and computed before the
#' reduction is added, and any error leaves the input unchanged.
#'
#' Seurat v4 and v5 are both supported: the counts are read with
#' `GetAssayData(slot = layer)` under SeuratObject 4 and with
#' `LayerData(layer = layer)` (joining split layers) under SeuratObject 5. Only
#' SeuratObject 4.1 is tested in this package's CI.
#'
#' @param object A Seurat object, or a genes x cells matrix (dense, or any
#'   sparse Matrix) with gene and cell names.
#' @param assay Assay to use (default: the default assay).
#' @param layer Layer (Seurat v5) or slot (v4) holding counts or normalised
#'   values: `"counts"` (default) or `"data"`.
#' @param features Genes to use (default: all genes of the assay).
#' @param aggregator `"wa"` (expression-weighted mean) or `"aa"` (the paper's
#'   arithmetic average), or an aggregator from a Python plugin. Default: the
#'   config's `aggregate.method` when given, else `"wa"`.
#' @param config A named list of scelmo settings (see [scelmo_config()]).
#' @param reduction.name Name of the DimReduc (default `"scelmo"`).
#' @param reduction.key Key (column prefix) of the DimReduc (default `"scelmo_"`).
#' @param verbose Print progress messages.
#' @param ... Shortcuts for settings: `flavor` (`"scelmo"`, the default: the
#'   2,000 most variable genes of the log-normalised data, centred per gene, with
#'   conditioned gene vectors; `"paper"`: the paper's formula over all genes),
#'   `n.top.genes`, `normalize` (`"auto"`, `"log1p"`, `"none"`), `transform`
#'   (`"center"`, `"scale"`, `"none"`), `species` (`"human"`, `"mouse"`,
#'   `"auto"`), `l2.normalize`, `chunk.size`, `describe`, `embed`, or any dotted
#'   setting name such as `aggregate.l2_normalize = TRUE`.
#' @return For a Seurat object, the object with `object[[reduction.name]]`
#'   added. For a matrix, the cells x d embedding matrix, with the provenance in
#'   `attr(, "scelmo")`.
#' @seealso [AnnotateScELMo()], [scelmo_config()], `vignette("scelmo")`.
#' @examples
#' \dontrun{
#' library(Seurat)
#' pbmc <- RunScELMo(pbmc)
#' ElbowPlot(pbmc, reduction = "scelmo", ndims = 50)
#' pbmc <- FindNeighbors(pbmc, reduction = "scelmo", dims = 1:30)
#' pbmc <- FindClusters(pbmc)
#' Embeddings(pbmc, "scelmo")[1:3, 1:4]
#' Misc(pbmc[["scelmo"]])$scelmo$embed_model
#' }
#' @export
RunScELMo <- function(object, ...) {
  UseMethod("RunScELMo")
}

#' @rdname RunScELMo
#' @export
RunScELMo.default <- function(object, features = NULL, aggregator = NULL, config = NULL,
                              verbose = TRUE, ...) {
  if (inherits(object, "Seurat")) return(RunScELMo.Seurat(object, features = features, aggregator = aggregator,
                                                          config = config, verbose = verbose, ...))
  if (is.null(dim(object)) || length(dim(object)) != 2) {
    .abort("Expected a Seurat object or a genes x cells matrix.", "scelmo_input_error")
  }
  m <- .subset_features(object, features)
  res <- .embed(m, aggregator, .dots_config(config, list(...)), verbose, source = "matrix", what = "the matrix")
  Z <- res$Z
  attr(Z, "scelmo") <- res$provenance
  Z
}

#' @rdname RunScELMo
#' @export
RunScELMo.Seurat <- function(object, assay = NULL, layer = "counts", features = NULL, aggregator = NULL,
                             config = NULL, reduction.name = "scelmo", reduction.key = "scelmo_",
                             verbose = TRUE, ...) {
  .check_seurat(object)
  .check_key(reduction.key)
  if (!is.character(reduction.name) || length(reduction.name) != 1 || !nzchar(reduction.name)) {
    .abort("`reduction.name` must be one non-empty string.", "scelmo_input_error")
  }
  .check_free_name(object, reduction.name, "reduction.name", kind = "reduction")
  assay <- .resolve_assay(object, assay)
  m <- .subset_features(.get_layer(object, assay, layer), features)
  cfg <- .dots_config(config, list(...))
  res <- .embed(m, aggregator, cfg, verbose, source = paste0(assay, "/", layer),
                what = paste0("assay '", assay, "' layer '", layer, "'"))
  turned <- .principal_axes(res$Z)
  Z <- turned$Z
  colnames(Z) <- paste0(reduction.key, seq_len(ncol(Z)))
  dr <- SeuratObject::CreateDimReducObject(
    embeddings = Z, key = reduction.key, assay = assay, stdev = turned$stdev,
    misc = list(scelmo = res$provenance, rotation = turned$rotation)
  )
  if (verbose) {
    message(sprintf("scelmo: added the reduction '%s' (%d dimensions, ordered by variance like PCs: ",
                    reduction.name, ncol(Z)),
            sprintf("see ElbowPlot(object, reduction = \"%s\"); e.g. FindNeighbors(object, reduction = \"%s\", ",
                    reduction.name, reduction.name),
            "dims = 1:30), or all of them for the full embedding's distances).")
  }
  # everything that can fail has run: only now is the object changed
  object[[reduction.name]] <- dr
  object <- SeuratObject::LogSeuratCommand(object = object)
  object <- .without_secrets(object)
  object
}

# Z (cells x d) turned to its principal axes, so that Seurat's dims = 1:n and ElbowPlot mean what
# they mean for PCs: an orthogonal rotation of the uncentred Z, so all d dimensions keep every
# distance and cosine (and the text-vector cosines after t(rotation)). Computed in Python
# (scelmo.r_bridge.principal_axes; R's reference BLAS is slow at this size).
.principal_axes <- function(Z) {
  res <- .call_bridge("principal_axes", .encode_matrix(Z), dim(Z))
  d <- ncol(Z)
  Zr <- .decode_matrix(res$Z, res$dim)
  dimnames(Zr) <- list(rownames(Z), NULL)
  R <- matrix(readBin(res$rotation, what = "double", n = d * d, size = 8, endian = "little"), d, d)
  dimnames(R) <- list(colnames(Z) %||% paste0("dim_", seq_len(d)), NULL)
  list(Z = Zr, rotation = R, stdev = readBin(res$stdev, what = "double", n = d, size = 8, endian = "little"))
}

# m: genes x cells; returns list(Z = cells x d matrix, provenance = list)
# The aggregator: the argument, else the config's aggregate.method, else "wa"; both given
# and different is an error (the argument used to win silently over the config).
# The aggregator the config list sets, dotted (aggregate.method = "aa") or nested
# (aggregate = list(method = "aa")); NULL when it sets none.
.config_aggregator <- function(config) {
  nested <- config[["aggregate"]]
  config[["aggregate.method"]] %||% (if (is.list(nested)) nested[["method"]])
}

.aggregator <- function(aggregator, config) {
  from_config <- .config_aggregator(config)
  if (!is.null(aggregator) && !is.null(from_config) && !identical(aggregator, from_config)) {
    .abort(paste0("`aggregator = \"", aggregator, "\"` and the config's `aggregate.method = \"", from_config,
                  "\"` disagree; give one of them."), "scelmo_input_error")
  }
  # else the settings' (scelmo.toml, SCELMO_AGGREGATE__METHOD), as Python resolves them
  if (is.null(aggregator %||% from_config)) {
    config[["gene.embeddings"]] <- NULL  # (the R functions' own key, not a setting)
    aggregator <- .call_bridge("config_show", if (length(config)) unclass(config) else NULL)$config$aggregate$method
  }
  aggregator <- aggregator %||% from_config %||% "wa"
  if (!is.character(aggregator) || length(aggregator) != 1 || is.na(aggregator) || !nzchar(aggregator)) {
    .abort("`aggregator` must be one name, e.g. \"wa\" or \"aa\".", "scelmo_input_error")
  }
  aggregator
}

.embed <- function(m, aggregator, config, verbose, source, what) {
  aggregator <- .aggregator(aggregator, config)
  gene_embeddings <- config[["gene.embeddings"]]
  config[["gene.embeddings"]] <- NULL
  t0 <- proc.time()[["elapsed"]]
  m <- .check_matrix(.as_dgc(m), what)
  batches <- .cell_batches(m)
  if (verbose) {
    message(sprintf("scelmo: embedding %d cells x %d genes (%s, aggregator '%s')%s",
                    ncol(m), nrow(m), source, aggregator,
                    if (length(batches) > 1) sprintf(" in %d batches of cells", length(batches)) else ""))
  }
  cfg <- if (length(config)) config else NULL
  # The default flavor selects and centres genes by statistics over all cells: with
  # several batches, each batch's gene sums are added up first and every batch is
  # embedded with the totals, so the result equals one call's.
  stats <- NULL
  if (length(batches) > 1) {
    total <- NULL
    n <- 0
    for (b in seq_along(batches)) {
      st <- .call_bridge("gene_stats", .scelmo_payload(m[, batches[[b]], drop = FALSE], what = what), config = cfg)
      v <- readBin(st$sums, what = "double", n = as.integer(st$length), size = 8, endian = "little")
      total <- if (is.null(total)) v else total + v
      n <- n + as.numeric(st$n)
    }
    stats <- list(sums = writeBin(total, raw(), size = 8, endian = "little"), n = n)
  }
  parts <- list()
  for (b in seq_along(batches)) {
    mb <- if (length(batches) == 1) m else m[, batches[[b]], drop = FALSE]
    res <- .call_bridge("embed_cells", .scelmo_payload(mb, what = what), aggregator = aggregator,
                        config = cfg, source = source, gene_embeddings = gene_embeddings,
                        gene_stats = stats)
    parts[[b]] <- list(Z = .decode_matrix(res$Z, res$dim), prov = res$provenance, total = sum(mb@x))
  }
  Z <- if (length(parts) == 1) parts[[1]]$Z else do.call(rbind, lapply(parts, `[[`, "Z"))
  rownames(Z) <- colnames(m)
  prov <- parts[[1]]$prov
  if (length(parts) > 1) {
    totals <- vapply(parts, `[[`, numeric(1), "total")
    covs <- vapply(parts, function(p) as.numeric(p$prov$expression_coverage), numeric(1))
    prov$n_cells <- ncol(m)
    prov$n_empty_cells <- sum(vapply(parts, function(p) as.numeric(p$prov$n_empty_cells), numeric(1)))
    prov$expression_coverage <- if (sum(totals) > 0) sum(covs * totals) / sum(totals) else 0
    prov$n_batches <- length(parts)
  }
  if (verbose) {
    message(sprintf("scelmo: %d of %d genes have a vector (%.1f%% of expression); d = %d; %.1f s",
                    as.integer(prov$n_genes_with_vector), as.integer(prov$n_genes),
                    100 * as.numeric(prov$expression_coverage), ncol(Z),
                    proc.time()[["elapsed"]] - t0))
  }
  list(Z = Z, provenance = prov)
}
