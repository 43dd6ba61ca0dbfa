#' Fine-tune a scELMo model from R
#'
#' Trains a small network on top of the LLM gene vectors (a `scelmo.Model` in
#' Python, through reticulate) on the counts of a Seurat object and returns a
#' handle to it. `head = "annotation"` learns cell types from the `labels`
#' metadata column (cross-entropy + triplet loss; predictions by kNN or the
#' classifier), `head = "integration"` learns a batch-corrected embedding from the
#' `batch` column (labels optional, used semi-supervised).
#'
#' The counts are log-normalised in Python before training (`normalize =
#' "auto"`: when they are whole numbers), the gene vectors are computed with the
#' usual scelmo settings (offline by default; `config =`), and training uses the
#' head's defaults unless set here (annotation: at most 30 epochs, batches of 128,
#' early stopping on a 10% validation split). Training runs on one CPU thread
#' unless `num.threads` says otherwise, or on a GPU when Python's torch sees one.
#'
#' The returned handle lives in this R session's Python. It cannot be kept with
#' `saveRDS()` (Python objects do not survive it); use [SaveScELMoModel()] and
#' [LoadScELMoModel()]. A handle restored with `readRDS()` or from a previous
#' session is "dead": every function that receives it stops with an error of
#' class `scelmo_dead_model` that says how to load it again.
#'
#' @param object A Seurat object, or a genes x cells matrix (dense or any sparse
#'   `Matrix`) with gene and cell names.
#' @param labels Cell types: the name of a metadata column, or one label per cell
#'   (`NA` = unlabelled; skipped by the annotation head; a named vector is matched
#'   to the cells by name). Needed for `head = "annotation"`.
#' @param batch Batches: the name of a metadata column or one value per cell.
#'   Needed for `head = "integration"`.
#' @param head `"annotation"` or `"integration"` (or a head registered by a Python
#'   plugin).
#' @param assay,layer Assay and layer (Seurat v5) / slot (v4) with counts
#'   (default `"counts"`) or log-normalised values (`"data"`).
#' @param max.epochs,batch.size,lr,early.stopping,seed,device,num.threads
#'   Training settings (`NULL`: the head's default). `device` is `"auto"`,
#'   `"cpu"`, `"cuda"`, ...
#' @param training A named list of further training settings of the head (e.g.
#'   `list(check_every = 2, patience = 3, validation_fraction = 0.2)`).
#' @param normalize `"auto"` (log-normalise counts, leave other values),
#'   `"log1p"` or `"none"`.
#' @param config Settings for the gene vectors (see [scelmo_config()]).
#' @param gene.embeddings Path to a saved gene table (Python
#'   `GeneEmbeddings.save`) to use instead of embedding the genes now.
#' @param unlabeled.category Label(s) that mean "not labelled" (e.g. `"Unknown"`,
#'   `"unassigned"`): those cells count as `NA` (not a class to learn), as Python's
#'   `setup_anndata(unlabeled_category =)`.
#' @param verbose Print a summary when done.
#' @param ... Options of the head, with dots or underscores: `hidden = 64`,
#'   `triplet.weight = 1`, `knn.k = 10`, ...; `latent = 32` only with
#'   `residual = FALSE` (the default residual adapter keeps the gene vectors' width).
#' @return An object of class `scelmo_model`: a list with `head`, `classes`,
#'   `genes` (the training genes, in order), `labels` and `batch` (what was used),
#'   `train` (cells, genes, epochs, seconds, device, best validation score),
#'   `history` (a data.frame, one row per epoch), `normalize`, `path` (where it
#'   was saved or loaded from, else `NULL`) and the Python model in `py`.
#' @seealso [PredictScELMo()], [SaveScELMoModel()], `vignette("scelmo")`.
#' @examples
#' \dontrun{
#' model <- TrainScELMo(ref, labels = "celltype", head = "annotation")
#' model
#' query <- PredictScELMo(query, model)
#' table(query$scelmo_label)
#' SaveScELMoModel(model, "celltype_model")
#' model <- LoadScELMoModel("celltype_model")   # in a later session
#' }
#' @export
TrainScELMo <- function(object, ...) {
  UseMethod("TrainScELMo")
}

#' @rdname TrainScELMo
#' @export
TrainScELMo.Seurat <- function(object, labels = NULL, batch = NULL, head = "annotation", assay = NULL,
                               layer = "counts", max.epochs = NULL, batch.size = NULL, lr = NULL,
                               early.stopping = NULL, seed = 0L, device = "auto", num.threads = NULL,
                               training = NULL, normalize = "auto", config = NULL, gene.embeddings = NULL,
                               unlabeled.category = NULL, verbose = TRUE, ...) {
  .check_seurat(object)
  assay <- .resolve_assay(object, assay)
  m <- .get_layer(object, assay, layer)
  .train(m, object[[]], labels, batch, head, max.epochs, batch.size, lr, early.stopping, seed, device,
         num.threads, training, normalize, config, gene.embeddings, verbose, list(...),
         source = paste0(assay, "/", layer), unlabeled.category = unlabeled.category)
}

#' @rdname TrainScELMo
#' @export
TrainScELMo.default <- function(object, labels = NULL, batch = NULL, head = "annotation",
                                max.epochs = NULL, batch.size = NULL, lr = NULL, early.stopping = NULL,
                                seed = 0L, device = "auto", num.threads = NULL, training = NULL,
                                normalize = "auto", config = NULL, gene.embeddings = NULL,
                                unlabeled.category = NULL, verbose = TRUE, ...) {
  if (inherits(object, "Seurat")) {
    return(TrainScELMo.Seurat(object, labels = labels, batch = batch, head = head, max.epochs = max.epochs,
                              batch.size = batch.size, lr = lr, early.stopping = early.stopping, seed = seed,
                              device = device, num.threads = num.threads, training = training,
                              normalize = normalize, config = config, gene.embeddings = gene.embeddings,
                              unlabeled.category = unlabeled.category, verbose = verbose, ...))
  }
  if (is.null(dim(object)) || length(dim(object)) != 2) {
    .abort("Expected a Seurat object or a genes x cells matrix.", "scelmo_input_error")
  }
  .train(object, NULL, labels, batch, head, max.epochs, batch.size, lr, early.stopping, seed, device,
         num.threads, training, normalize, config, gene.embeddings, verbose, list(...), source = "matrix",
         unlabeled.category = unlabeled.category)
}

# One per-cell column: a metadata column name or a vector; returns list(name, values) or NULL.
# One value per cell, in the cells' order: a named vector (from a barcode -> label table) is
# matched by name, as Seurat's AddMetaData() does; an unnamed one is taken in order.
.in_cell_order <- function(x, cells, what) {
  nm <- names(x)
  if (is.null(nm) || is.null(cells) || identical(nm, cells)) return(unname(x))
  idx <- match(cells, nm)
  if (anyNA(idx) || anyDuplicated(nm) || length(nm) != length(cells)) {
    .abort(c(paste0("The names of `", what, "` are not the cells' names (", sum(!is.na(idx)), " of ",
                    length(cells), " cells found among them, e.g. '", cells[which(is.na(idx))[1]], "')."),
             paste0("Fix: name the values by cell (colnames of the object), once each, or pass them unnamed ",
                    "in the object's cell order.")), "scelmo_input_error")
  }
  unname(x[idx])
}

# Labels with the unlabelled category (e.g. "Unknown", "unassigned") as NA: those cells are
# not a class (Python's `setup_anndata(unlabeled_category=)`).
.unlabeled_as_na <- function(v, category) {
  if (is.null(category)) return(v)
  if (!(is.character(category) || is.numeric(category)) || length(category) == 0 || anyNA(category) ||
      any(!nzchar(as.character(category)))) {
    .abort("`unlabeled.category` must be the label(s) of unlabelled cells, e.g. \"Unknown\" or -1.",
           "scelmo_input_error")
  }
  category <- as.character(category)
  v[as.character(v) %in% category] <- NA
  if (is.factor(v)) droplevels(v, exclude = category) else v
}

.cell_column <- function(x, meta, n, what, internal, cells = NULL) {
  if (is.null(x)) return(NULL)
  if (is.character(x) && length(x) == 1 && n != 1) {
    if (is.null(meta)) {
      .abort(paste0("`", what, " = \"", x, "\"` names a metadata column, but a matrix has no metadata: ",
                    "pass one value per cell instead."), "scelmo_input_error")
    }
    if (!x %in% colnames(meta)) {
      .abort(c(paste0("The metadata has no column '", x, "' for `", what, "`."),
               paste0("Columns: ", paste(head(colnames(meta), 20), collapse = ", "),
                      if (ncol(meta) > 20) ", ..." else "", "."),
               paste0("Fix: pass `", what, " =` one of these names, or a vector with one value per cell.")),
             "scelmo_input_error")
    }
    return(list(name = x, values = meta[[x]]))
  }
  if (length(x) != n) {
    .abort(paste0("`", what, "` has ", length(x), " values for ", n, " cells: give a metadata column name ",
                  "or one value per cell."), "scelmo_input_error")
  }
  list(name = internal, values = .in_cell_order(x, cells, what))
}

.check_head <- function(head) {
  if (!is.character(head) || length(head) != 1 || is.na(head) || !nzchar(head)) {
    .abort("`head` must be one name: \"annotation\" or \"integration\".", "scelmo_input_error")
  }
}

.train <- function(m, meta, labels, batch, head, max.epochs, batch.size, lr, early.stopping, seed, device,
                   num.threads, training, normalize, config, gene.embeddings, verbose, dots, source,
                   unlabeled.category = NULL) {
  .check_head(head)
  m <- .check_matrix(.as_dgc(m), "the training data")
  n <- ncol(m)
  lab <- .cell_column(labels, meta, n, "labels", "scelmo_labels", colnames(m))
  if (!is.null(lab)) lab$values <- .unlabeled_as_na(lab$values, unlabeled.category)
  bat <- .cell_column(batch, meta, n, "batch", "scelmo_batch", colnames(m))
  if (identical(head, "annotation") && is.null(lab)) {
    .abort(c("head = \"annotation\" learns cell types, so it needs `labels`: a metadata column name ",
             "(e.g. labels = \"celltype\") or one label per cell."), "scelmo_input_error")
  }
  if (identical(head, "integration") && is.null(bat)) {
    .abort("head = \"integration\" removes batch effects, so it needs `batch`: a metadata column name or one value per cell.",
           "scelmo_input_error")
  }
  if (!is.null(lab)) {
    v <- as.character(lab$values)
    if (sum(!is.na(v)) == 0) .abort(paste0("All `labels` (", lab$name, ") are NA."), "scelmo_input_error")
    if (identical(head, "annotation")) .refuse_unknown_label(v, "The labels")
    if (identical(head, "annotation") && length(unique(v[!is.na(v)])) < 2) {
      .abort(paste0("`labels` (", lab$name, ") has only one cell type (", unique(v[!is.na(v)]),
                    "): annotation needs at least two."), "scelmo_input_error")
    }
  }
  cols <- list()
  if (!is.null(lab)) cols[[lab$name]] <- as.character(lab$values)
  if (!is.null(bat)) cols[[bat$name]] <- as.character(bat$values)
  md <- if (length(cols)) as.data.frame(cols, stringsAsFactors = FALSE, optional = TRUE) else NULL
  head_options <- .head_options(dots)
  # (checked under the R names first: NA would reach Python as True, early.stopping = NA)
  .check_config_values(list(max.epochs = max.epochs, batch.size = batch.size, lr = lr, early.stopping = early.stopping,
                            seed = seed, device = device, num.threads = num.threads))
  settings <- list(max_epochs = max.epochs, batch_size = batch.size, lr = lr, early_stopping = early.stopping,
                   seed = seed, device = device, num_threads = num.threads)
  settings <- settings[!vapply(settings, is.null, logical(1))]
  for (nm in c("max_epochs", "batch_size", "seed", "num_threads")) {
    v <- settings[[nm]]
    if (is.null(v)) next
    if (!is.numeric(v) || length(v) != 1 || is.na(v) || v != round(v)) {  # (as.integer would cut 2.5 to 2)
      .abort(sprintf("`%s` must be one whole number; got %s.", gsub("_", ".", nm, fixed = TRUE),
                     paste(format(v), collapse = ", ")), "scelmo_input_error")
    }
    settings[[nm]] <- as.integer(v)
  }
  if (!is.null(training)) {
    if (!is.list(training) || is.null(names(training)) || any(!nzchar(names(training)))) {
      .abort("`training` must be a named list, e.g. list(patience = 3).", "scelmo_input_error")
    }
    names(training) <- gsub(".", "_", names(training), fixed = TRUE)
    settings[names(training)] <- training
  }
  cfg <- .dots_config(config, list())
  .check_config_values(settings)  # (the training list's entries)
  .check_config_values(head_options)
  if (verbose) {
    n_lab <- if (!is.null(lab)) sum(!is.na(lab$values)) else n
    message(sprintf("scelmo: training the '%s' head on %d cells%s x %d genes (%s)", head, n,
                    if (n_lab < n) sprintf(" (%d labelled; the others unsupervised or skipped)", n_lab) else "",
                    nrow(m), source))
  }
  res <- .call_bridge("train", .scelmo_payload(m, meta = md, what = "the training data"),
                      head = head, labels_key = lab$name, batch_key = bat$name,
                      head_options = if (length(head_options)) head_options else NULL,
                      training = settings, config = if (length(cfg)) cfg else NULL,
                      gene_embeddings = gene.embeddings, normalize = normalize,
                      # a factor's level order (seurat_clusters, ...), kept with the saved model
                      class_order = if (!is.null(lab) && is.factor(lab$values)) as.list(levels(lab$values)))
  model <- .new_model(res$model, res$info, path = NULL)
  model$labels <- lab$name
  model$batch <- bat$name
  if (verbose) message(.train_line(model))
  model
}

.head_options <- function(dots) {
  if (length(dots) == 0) return(list())
  if (is.null(names(dots)) || any(!nzchar(names(dots)))) {
    .abort("Extra arguments are head options and must be named (e.g. knn.k = 15).", "scelmo_input_error")
  }
  names(dots) <- gsub(".", "_", names(dots), fixed = TRUE)
  for (nm in names(dots)) {
    v <- dots[[nm]]
    if (is.numeric(v) && length(v) == 1 && v == round(v) && nm %in% c("latent", "hidden", "knn_k",
                                                                       "refit_steps", "eval_batch_size")) {
      dots[[nm]] <- as.integer(v)
    }
  }
  dots
}

# Labels in natural order: numbers by value ("0", "1", ..., "10", as Seurat's cluster IDs),
# else as given.
.natural_order <- function(x) {
  x <- as.character(x)
  num <- suppressWarnings(as.numeric(x))
  if (length(x) && !anyNA(num)) x[order(num)] else x
}

.new_model <- function(py, info, path) {
  genes <- .decode_strings(info$genes, as.integer(info$n_genes))
  hist <- info$history
  history <- if (length(hist)) as.data.frame(lapply(hist, function(v) as.numeric(unlist(v)))) else data.frame()
  structure(list(
    py = py,
    head = info$head,
    # (in the training factor's level order when there was one, else numbers by value)
    classes = if (isTRUE(info$classes_ordered)) unlist(info$classes) else .natural_order(unlist(info$classes)),
    predicts.labels = isTRUE(info$predicts_labels),
    genes = genes,
    labels = info$labels_key,
    batch = info$batch_key,
    train = info$train,
    history = history,
    normalize = info$normalize,
    version = info$version,
    # where it was saved: kept in an environment, so SaveScELMoModel(model, path) records it
    # in every copy of the handle (R copies the list; the Python model is one object)
    state = .model_state(path)
  ), class = "scelmo_model")
}

.model_state <- function(path) {
  state <- new.env(parent = emptyenv())
  state$path <- path
  state
}

#' @export
`$.scelmo_model` <- function(x, name) {
  if (identical(name, "path")) {
    state <- .subset2(x, "state")
    return(if (is.environment(state)) state$path else .subset2(x, "path"))
  }
  .subset2(x, name)
}

.train_line <- function(model) {
  t <- model$train
  score <- t$best_validation_score
  sprintf("scelmo: %s epochs on %s in %.1f s%s", format(t$epochs %||% NA), t$device %||% "?",
          as.numeric(t$seconds %||% NA),
          if (!is.null(score)) sprintf(", best validation score %.3f", as.numeric(score)) else "")
}

#' @export
print.scelmo_model <- function(x, ...) {
  t <- x$train
  alive <- .model_alive(x)
  cat("<scelmo_model> '", x$head, "' head", if (!alive) " [DEAD HANDLE: see ?SaveScELMoModel]", "\n", sep = "")
  cat("  trained on ", format(t$n_cells %||% NA), " cells x ", length(x$genes), " genes (",
      format(t$n_genes_with_vector %||% NA), " with gene vectors; normalize: ", x$normalize %||% "?", ")\n", sep = "")
  if (length(x$classes)) {
    shown <- head(x$classes, 8)
    cat("  labels: ", if (!is.null(x$labels)) paste0("'", x$labels, "', "), length(x$classes), " classes (",
        paste(shown, collapse = ", "), if (length(x$classes) > 8) ", ...", ")\n", sep = "")
  }
  if (!is.null(x$batch)) cat("  batch: '", x$batch, "'\n", sep = "")
  cat("  training: ", sub("^scelmo: ", "", .train_line(x)), "\n", sep = "")
  cat("  ", if (is.null(x$path)) "not saved (SaveScELMoModel(model, path))" else paste0("path: ", x$path), "\n", sep = "")
  invisible(x)
}

.model_alive <- function(model) {
  py <- model$py
  !is.null(py) && inherits(py, "python.builtin.object") &&
    !isTRUE(tryCatch(reticulate::py_is_null_xptr(py), error = function(e) TRUE))
}

# The Python model of a handle; a clear error for anything else or a dead handle.
.model_py <- function(model) {
  if (!inherits(model, "scelmo_model")) {
    .abort(c("`model` must be a scelmo model: train one with TrainScELMo() or load one with LoadScELMoModel()."),
           "scelmo_input_error")
  }
  if (!.model_alive(model)) {
    how <- if (!is.null(model$path)) {
      paste0("Fix: model <- LoadScELMoModel(\"", model$path, "\")")
    } else {
      "Fix: train it again with TrainScELMo(), and keep it with SaveScELMoModel(model, path) / LoadScELMoModel(path)."
    }
    .abort(c(
      "This scelmo model handle is no longer connected to Python: it comes from an earlier R session or from readRDS().",
      "Python models cannot be kept with saveRDS()/save(); use SaveScELMoModel() and LoadScELMoModel().",
      how
    ), class = c("scelmo_dead_model", "scelmo_input_error"))
  }
  model$py
}

#' Save and load fine-tuned scELMo models
#'
#' `SaveScELMoModel()` writes a model returned by [TrainScELMo()] to a directory
#' (the Python `scelmo.Model.save` format: weights, training genes, label
#' classes, gene table with checksums, plus a small `r_bridge.json` with the
#' genes' symbols and the normalisation). `LoadScELMoModel()` reads it back, in this or a later session, and
#' also loads models saved from Python with `model.save(path)`.
#'
#' A model handle cannot be kept with `saveRDS()`/`save()`: the network lives in
#' Python, and R only holds a pointer to it that does not survive. A handle
#' restored that way (or left over from a previous session) is detected and
#' every function stops with an error of class `scelmo_dead_model` naming
#' `LoadScELMoModel()`.
#'
#' @param model A `scelmo_model` from [TrainScELMo()] or `LoadScELMoModel()`.
#' @param path Directory to write / read.
#' @param overwrite Replace an existing directory.
#' @return `SaveScELMoModel()`: the model, invisibly; its `path` is set in every
#'   copy of the handle (no need to reassign `model`).
#'   `LoadScELMoModel()`: a `scelmo_model`.
#' @examples
#' \dontrun{
#' SaveScELMoModel(model, "models/pbmc_celltypes")
#' model <- LoadScELMoModel("models/pbmc_celltypes")
#' }
#' @export
SaveScELMoModel <- function(model, path, overwrite = FALSE) {
  py <- .model_py(model)
  if (!is.character(path) || length(path) != 1 || is.na(path) || !nzchar(path)) {
    .abort("`path` must be one directory name.", "scelmo_input_error")
  }
  res <- .call_bridge("save", py, path.expand(path), overwrite = isTRUE(overwrite))
  # (a handle without this state is one from an older version: dead, refused by .model_py above)
  assign("path", res$path, envir = .subset2(model, "state"))  # every copy of the handle, the caller's too
  invisible(model)
}

#' @rdname SaveScELMoModel
#' @export
LoadScELMoModel <- function(path) {
  if (!is.character(path) || length(path) != 1 || is.na(path) || !nzchar(path)) {
    .abort("`path` must be one directory name.", "scelmo_input_error")
  }
  res <- .call_bridge("load", path.expand(path))
  model <- .new_model(res$model, res$info, path = res$path)
  model
}
