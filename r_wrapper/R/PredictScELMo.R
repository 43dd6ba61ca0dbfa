#' Apply a fine-tuned scELMo model to a Seurat object
#'
#' Sends the query's counts to the model from [TrainScELMo()] or
#' [LoadScELMoModel()]. The query's genes are matched to the model's training
#' genes by name in Python: model genes the query lacks count as not expressed (a
#' warning of class `scelmo_warning` says how many), query genes the model never
#' saw are ignored, and when fewer than `min.overlap` of the model's genes are
#' present the call stops (the model was trained on other genes).
#'
#' For an annotation head, adds to the metadata `paste0(prefix, "label")` (the
#' predicted cell type) and `paste0(prefix, "label_score")` (the share of the `k`
#' nearest training cells with that label for `method = "knn"`, the classifier's
#' probability for `method = "classifier"`). For every head, the learned
#' embedding is added as a DimReduc: `reduction.name` defaults to
#' `"scelmo_integrated"` (key `"SCELMOINT_"`) for the integration head and
#' `"scelmo_finetuned"` (key `"SCELMOFT_"`) otherwise. The object is only changed
#' after everything has been computed.
#'
#' @param object A Seurat object, or a genes x cells matrix.
#' @param model A `scelmo_model`.
#' @param method `"knn"` (default; majority of the `k` nearest training cells in
#'   the learned space) or `"classifier"` (the head's classifier).
#' @param prefix Prefix of the metadata columns (default `"scelmo_"`: columns
#'   `scelmo_label` and `scelmo_label_score`, as [AnnotateScELMo()] and Python name them).
#' @param assay,layer Assay and layer / slot with counts or log-normalised values.
#' @param k Neighbours for `method = "knn"` (default: the model's, 10).
#' @param reduction.name,reduction.key Name and key of the DimReduc (`NULL`: the
#'   defaults above; `reduction.name = NA` adds none).
#' @param normalize As in [TrainScELMo()].
#' @param min.overlap Smallest fraction of the model's genes the query must have.
#' @param verbose Print a progress message.
#' @param ... Unused.
#' @return For a Seurat object, the object with the metadata columns and the
#'   DimReduc added. For a matrix, a data.frame (one row per cell) with the
#'   columns `label` and `score` (annotation heads; no columns otherwise) and
#'   the learned embedding (cells x latent) in `attr(, "latent")`.
#' @seealso [TrainScELMo()].
#' @examples
#' \dontrun{
#' model <- TrainScELMo(ref, labels = "celltype")
#' query <- PredictScELMo(query, model)
#' table(query$scelmo_label, query$scelmo_label_score > 0.7)
#' integ <- TrainScELMo(seu, batch = "donor", head = "integration")
#' seu <- PredictScELMo(seu, integ)
#' Seurat::ElbowPlot(seu, reduction = "scelmo_integrated", ndims = 50)
#' seu <- Seurat::RunUMAP(seu, reduction = "scelmo_integrated", dims = 1:30)
#' }
#' @export
PredictScELMo <- function(object, model, ...) {
  UseMethod("PredictScELMo")
}

#' @rdname PredictScELMo
#' @export
PredictScELMo.Seurat <- function(object, model, method = "knn", prefix = "scelmo_", assay = NULL,
                                 layer = "counts", k = NULL, reduction.name = NULL, reduction.key = NULL,
                                 normalize = "auto", min.overlap = 0.1, verbose = TRUE, ...) {
  .check_seurat(object)
  .check_prefix(prefix)
  py <- .model_py(model)
  assay <- .resolve_assay(object, assay)
  integrated <- identical(model$head, "integration")
  reduction.name <- reduction.name %||% if (integrated) "scelmo_integrated" else "scelmo_finetuned"
  reduction.key <- reduction.key %||% if (integrated) "SCELMOINT_" else "SCELMOFT_"
  add_reduction <- !(length(reduction.name) == 1 && is.na(reduction.name))
  if (isTRUE(model$predicts.labels)) {
    .check_free_name(object, paste0(prefix, c("label", "label_score")), "prefix")
  }
  if (add_reduction) {
    .check_key(reduction.key)
    if (!is.character(reduction.name) || length(reduction.name) != 1 || !nzchar(reduction.name)) {
      .abort("`reduction.name` must be one non-empty string (or NA for none).", "scelmo_input_error")
    }
    .check_free_name(object, reduction.name, "reduction.name", kind = "reduction")
  }
  m <- .get_layer(object, assay, layer)
  res <- .predict(m, py, model, method, k, normalize, min.overlap, verbose)
  if (!is.null(res$labels)) {
    object[[paste0(prefix, "label")]] <- stats::setNames(factor(res$labels, levels = model$classes),
                                                         colnames(object))
    object[[paste0(prefix, "label_score")]] <- stats::setNames(res$scores, colnames(object))
  }
  if (add_reduction) {
    # ordered by variance like PCs, as RunScELMo's (Stdev, ElbowPlot, dims = 1:n); the rotation in misc
    turned <- .principal_axes(res$latent)
    Z <- turned$Z
    colnames(Z) <- paste0(reduction.key, seq_len(ncol(Z)))
    object[[reduction.name]] <- SeuratObject::CreateDimReducObject(
      embeddings = Z, key = reduction.key, assay = assay, stdev = turned$stdev,
      misc = list(scelmo = list(head = model$head, method = method, model_path = model$path %||% "",
                                n_model_genes = res$n_model_genes, n_missing_genes = res$n_missing),
                  rotation = turned$rotation)
    )
  }
  object <- SeuratObject::LogSeuratCommand(object = object)
  object <- .without_secrets(object)
  object
}

#' @rdname PredictScELMo
#' @export
PredictScELMo.default <- function(object, model, method = "knn", k = NULL, normalize = "auto",
                                  min.overlap = 0.1, verbose = TRUE, ...) {
  if (inherits(object, "Seurat")) {
    return(PredictScELMo.Seurat(object, model, method = method, k = k, normalize = normalize,
                                min.overlap = min.overlap, verbose = verbose, ...))
  }
  if (is.null(dim(object)) || length(dim(object)) != 2) {
    .abort("Expected a Seurat object or a genes x cells matrix.", "scelmo_input_error")
  }
  py <- .model_py(model)
  res <- .predict(object, py, model, method, k, normalize, min.overlap, verbose)
  out <- if (!is.null(res$labels)) {
    data.frame(label = factor(res$labels, levels = model$classes), score = res$scores,
               row.names = rownames(res$latent))
  } else {
    data.frame(row.names = rownames(res$latent))
  }
  attr(out, "latent") <- res$latent
  out
}

.check_prefix <- function(prefix) {
  if (!is.character(prefix) || length(prefix) != 1 || is.na(prefix)) {
    .abort("`prefix` must be one string, e.g. \"scelmo_\".", "scelmo_input_error")
  }
  if (nzchar(prefix) && !grepl("^[A-Za-z.][A-Za-z0-9._]*$", prefix)) {  # `object$col` must work on the columns
    .abort(sprintf("`prefix` must be letters, digits, `.` and `_` (starting with a letter or `.`), e.g. \"scelmo_\"; got \"%s\".",
                   prefix), "scelmo_input_error")
  }
}

.predict <- function(m, py, model, method, k, normalize, min.overlap, verbose) {
  if (!is.character(method) || length(method) != 1 || !method %in% c("knn", "classifier")) {
    .abort("`method` must be \"knn\" or \"classifier\".", "scelmo_input_error")
  }
  .check_k(k)
  if (identical(method, "classifier") && !isTRUE(model$predicts.labels)) {
    .warn(paste0("`method = \"classifier\"` does not apply: the '", model$head, "' model predicts no labels ",
                 "(its embedding is added as a reduction)."))
  }
  m <- .check_matrix(.as_dgc(m), "the query")
  if (verbose) {
    message(sprintf("scelmo: applying the '%s' model to %d cells x %d genes", model$head, ncol(m), nrow(m)))
  }
  res <- .call_bridge("predict", .scelmo_payload(m, what = "the query"), py, method = method,
                      k = if (is.null(k)) NULL else as.integer(k), normalize = normalize,
                      min_overlap = as.numeric(min.overlap))
  n <- ncol(m)
  Z <- .decode_matrix(res$Z, res$dim)
  rownames(Z) <- colnames(m)
  out <- list(latent = Z, n_missing = as.integer(res$n_missing), n_model_genes = as.integer(res$n_model_genes))
  if (!is.null(res$labels)) {
    out$labels <- .decode_strings(res$labels, n)
    out$scores <- readBin(res$scores, "double", n = n, size = 8, endian = "little")
    out$scores[is.nan(out$scores)] <- NA_real_  # (a cell with no evidence: NA, as its label)
  }
  out
}

# k: NULL (the default) or one whole number >= 1 (NA read as an integer became -2147483648)
.check_k <- function(k) {
  if (is.null(k)) return(invisible(NULL))
  if (!is.numeric(k) || length(k) != 1 || is.na(k) || k < 1 || k != round(k)) {
    .abort(paste0("`k` must be one whole number >= 1 (neighbours), not ", paste(format(k), collapse = ", "), "."),
           "scelmo_input_error")
  }
  invisible(k)
}
