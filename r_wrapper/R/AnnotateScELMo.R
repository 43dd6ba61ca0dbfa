#' Cell-type labels from scELMo embeddings
#'
#' Two modes: **kNN label transfer** from an annotated `reference` Seurat
#' object (its `ref.labels` metadata column), or **zero-shot** annotation from
#' a character vector of `cell.types`: each cluster of the scelmo embedding (Leiden)
#' takes the type whose marker genes it expresses most (markers from curated cell-type
#' sets, the Cell Ontology, or the genes a description names), or "unknown" when it
#' expresses none; every cell of a cluster gets its score. Adds the columns `label.name` (the label, a factor
#' whose levels are the candidate types or the reference's labels, then "unknown",
#' always a level)
#' and `paste0(label.name, "_score")` (its score) to `meta.data`.
#'
#' Names-only annotation reuses an existing scelmo reduction (`object[[reduction]]`);
#' otherwise cells are embedded first. With a `reference`, both objects are embedded
#' here, the query with the reference's gene selection and centring, so the two are
#' comparable (each object's own scelmo reduction is centred on its own cells; the
#' reductions are left as they are); another method's reduction is used as given.
#' Calls `scelmo.tl.annotate` in Python; it needs a scelmo Python package that
#' provides it (an error says so otherwise).
#'
#' @param object A Seurat object (or a genes x cells matrix, which returns a
#'   data.frame of labels and scores).
#' @param reference An annotated Seurat object for kNN transfer.
#' @param ref.labels Name of the `reference` metadata column with labels, or a
#'   vector of labels (one per reference cell; a named vector is matched to the
#'   reference's cells by name).
#' @param unlabeled.category Reference label(s) that mean "not labelled" (e.g.
#'   `"Unknown"`): those cells count as `NA`, never a label to give out. A reference
#'   label `"unknown"` (scelmo's label for cells it cannot call) must be one of them
#'   or renamed.
#' @param cell.types Cell-type names for zero-shot annotation (at least two), or
#'   a named character vector `c(name = "description", ...)` whose descriptions
#'   are embedded instead of the names (names alone carry little signal).
#' @param assay,layer,aggregator,config As in [RunScELMo()] (used for both
#'   objects when they are embedded here). An `assay` named here is read from the
#'   reference too, and a scelmo reduction computed on another assay is not reused
#'   (a message says so); without it, each object's default assay.
#' @param reduction Name of a DimReduc to reuse: a scelmo one (computed when missing, or
#'   when `assay`, `aggregator` or `layer` is given and differs from how it was made) or
#'   another method's, which must exist in both objects.
#' @param k Neighbours for kNN transfer.
#' @param label.name Name of the label column (the score goes to
#'   `paste0(label.name, "_score")`).
#' @param verbose Print progress messages.
#' @param ... Settings shortcuts as in [RunScELMo()].
#' @return The object with the two metadata columns added, and what was done
#'   (method, marker genes per type, timing) in `Misc(object, "scelmo")[[label.name]]`;
#'   for a matrix, the data.frame with it in `attr(, "scelmo")`.
#' @examples
#' \dontrun{
#' query <- AnnotateScELMo(query, reference = ref, ref.labels = "celltype")
#' pbmc <- AnnotateScELMo(pbmc, cell.types = c("T cell", "B cell", "monocyte", "NK cell"))
#' table(pbmc$scelmo_label)
#' }
#' @export
AnnotateScELMo <- function(object, reference = NULL, ref.labels = NULL, cell.types = NULL, ...) {
  UseMethod("AnnotateScELMo")
}

#' @rdname AnnotateScELMo
#' @export
AnnotateScELMo.Seurat <- function(object, reference = NULL, ref.labels = NULL, cell.types = NULL,
                                  assay = NULL, layer = "counts", reduction = "scelmo", k = 10,
                                  aggregator = NULL, config = NULL, label.name = "scelmo_label",
                                  unlabeled.category = NULL, verbose = TRUE, ...) {
  .check_seurat(object)
  if (is.character(label.name) && length(label.name) == 1) {
    .check_free_name(object, paste0(label.name, c("", "_score")), "label.name")
  }
  # an assay named here is used for the reference too, and a reduction computed on another
  # assay is not reused; without one, each object's default assay
  explicit <- !is.null(assay)
  assay <- .resolve_assay(object, assay)
  res <- .annotate(object, reference, ref.labels, cell.types, assay, layer, reduction, k,
                   aggregator, .dots_config(config, list(...)), label.name, verbose, explicit = explicit,
                   explicit.layer = !missing(layer), unlabeled.category = unlabeled.category)
  object[[label.name]] <- stats::setNames(res$labels, colnames(object))
  object[[paste0(label.name, "_score")]] <- stats::setNames(res$scores, colnames(object))
  # what was done (method, markers per type, reference, timing), as Python's uns["scelmo"]["annotate"]
  prov <- SeuratObject::Misc(object, slot = "scelmo") %||% list()
  prov[[label.name]] <- res$provenance
  suppressWarnings(SeuratObject::Misc(object, slot = "scelmo") <- prov)  # (warns when replacing the slot)
  object <- SeuratObject::LogSeuratCommand(object = object)
  object <- .without_secrets(object)
  object
}

#' @rdname AnnotateScELMo
#' @export
AnnotateScELMo.default <- function(object, reference = NULL, ref.labels = NULL, cell.types = NULL,
                                   k = 10, aggregator = NULL, config = NULL,
                                   label.name = "scelmo_label", unlabeled.category = NULL, verbose = TRUE, ...) {
  res <- .annotate(object, reference, ref.labels, cell.types, NULL, "counts", NULL, k,
                   aggregator, .dots_config(config, list(...)), label.name, verbose,
                   unlabeled.category = unlabeled.category)
  out <- data.frame(res$labels, res$scores, row.names = colnames(object))
  names(out) <- c(label.name, paste0(label.name, "_score"))
  attr(out, "scelmo") <- res$provenance
  out
}

# payload (+ embedding bytes) for one object
# `asked`: what the call set explicitly (aggregator, layer): a scelmo reduction made otherwise is
# not reused, as one made on another assay is not
.annotate_input <- function(x, assay, layer, reduction, meta = NULL, what, explicit = FALSE, asked = list()) {
  if (inherits(x, "Seurat")) {
    .check_seurat(x)
    assay <- .resolve_assay(x, assay, what)
    m <- .get_layer(x, assay, layer)
    emb <- NULL
    if (!is.null(reduction) && (!is.character(reduction) || length(reduction) != 1 || is.na(reduction) ||
                                !nzchar(reduction))) {
      .abort("`reduction` must be one reduction name (or NULL to embed here).", "scelmo_input_error")
    }
    if (!is.null(reduction) && !reduction %in% SeuratObject::Reductions(x) && !startsWith(reduction, "scelmo")) {
      # only scelmo embeddings are computed here; another method's reduction must exist
      .abort(paste0(what, " has no '", reduction, "' reduction; compute it in both objects first, or use ",
                    "reduction = \"scelmo\" (computed here when missing)."), "scelmo_input_error")
    }
    if (!is.null(reduction) && reduction %in% SeuratObject::Reductions(x)) {
      used <- SeuratObject::DefaultAssay(x[[reduction]])
      made <- SeuratObject::Misc(x[[reduction]])$scelmo
      other <- c(
        aggregator = if (!is.null(asked$aggregator) && !is.null(made$aggregator) &&
                         !identical(as.character(made$aggregator), asked$aggregator)) as.character(made$aggregator),
        layer = if (!is.null(asked$layer) && !is.null(made$matrix) &&
                    !identical(sub("^.*/", "", as.character(made$matrix)), asked$layer)) as.character(made$matrix))
      # (a scelmo reduction can be recomputed on the assay asked for; another method's is used as given)
      if (explicit && startsWith(reduction, "scelmo") && length(used) == 1 && nzchar(used) &&
          !identical(used, assay)) {
        message("scelmo: the '", reduction, "' reduction of ", what, " was computed on assay '", used,
                "'; embedding assay '", assay, "' here instead")
      } else if (startsWith(reduction, "scelmo") && length(asked$settings)) {
        message("scelmo: settings given here (", paste(asked$settings, collapse = ", "), ") shape the embedding; ",
                "embedding ", what, " here with them instead of reusing its '", reduction, "' reduction (left as ",
                "it is)")
      } else if (startsWith(reduction, "scelmo") && length(other)) {
        message("scelmo: the '", reduction, "' reduction of ", what, " was made with ",
                paste0(names(other), " '", other, "'", collapse = " and "), ", not as asked here; embedding here ",
                "instead (the reduction is left as it is)")
      } else if (startsWith(reduction, "scelmo") && length(SeuratObject::Misc(x[[reduction]])) == 0) {
        # a scelmo reduction without its misc (what merge(..., merge.dr = ) leaves): each part was
        # turned to its own axes, so the rows are not in one frame (a trial: 0.28 agreement)
        message("scelmo: the '", reduction, "' reduction of ", what, " carries no scelmo record (e.g. made by ",
                "merge(..., merge.dr = )); embedding here instead. Run RunScELMo() on a merged object.")
      } else {
        E <- SeuratObject::Embeddings(x, reduction = reduction)[colnames(x), , drop = FALSE]
        rotation <- SeuratObject::Misc(x[[reduction]])$rotation
        # (RunScELMo turned its reduction to principal axes; the text and reference vectors are not)
        if (!is.null(rotation)) E <- E %*% t(rotation)
        emb <- .encode_matrix(E)
      }
    }
  } else {
    m <- x
    emb <- NULL
  }
  list(payload = .scelmo_payload(m, meta = meta, what = what), embedding = emb)
}

.annotate <- function(object, reference, ref.labels, cell.types, assay, layer, reduction, k,
                      aggregator, config, label.name, verbose, explicit = FALSE, explicit.layer = FALSE,
                      unlabeled.category = NULL) {
  if (is.null(reference) == is.null(cell.types)) {
    .abort("Give either `reference` (with `ref.labels`) or `cell.types`, not both and not neither.",
           "scelmo_input_error")
  }
  if (!is.character(label.name) || length(label.name) != 1 || !nzchar(label.name)) {
    .abort("`label.name` must be one non-empty string.", "scelmo_input_error")
  }
  # settings that shape an embedding (a trial: flavor = "paper" beside an existing reduction was
  # dropped without a word): given here, the objects are embedded here with them
  shaping <- grep("^(aggregate|genes|describe|embed)\\.|^gene\\.embeddings$", names(config), value = TRUE)
  shaping <- setdiff(shaping, c("aggregate.method", "aggregate.layer"))  # (compared as aggregator, layer)
  asked <- list(aggregator = aggregator %||% .config_aggregator(config), layer = if (explicit.layer) layer,
                settings = shaping)
  aggregator <- .aggregator(aggregator, config)
  .check_k(k)
  query <- .annotate_input(object, assay, layer, reduction, what = "the query", explicit = explicit, asked = asked)
  # a saved gene table (config gene.embeddings, as RunScELMo takes it) embeds both objects here
  gene_embeddings <- config[["gene.embeddings"]]
  config[["gene.embeddings"]] <- NULL
  args <- list(query$payload, embedding = query$embedding, k = as.integer(k), aggregator = aggregator,
               config = if (length(config)) config else NULL, key_added = label.name)
  if (!is.null(gene_embeddings)) args$gene_embeddings <- gene_embeddings
  if (!is.null(reference)) {
    if (is.null(ref.labels)) {
      .abort("`ref.labels` is needed with `reference`: a metadata column name or one label per cell.",
             "scelmo_input_error")
    }
    n_ref <- ncol(reference)
    if (is.character(ref.labels) && length(ref.labels) == 1 && inherits(reference, "Seurat")) {
      if (!ref.labels %in% colnames(reference[[]])) {
        .abort(paste0("The reference has no metadata column '", ref.labels, "'."), "scelmo_input_error")
      }
      labels <- reference[[]][[ref.labels]]
      col <- ref.labels
    } else {
      if (length(ref.labels) != n_ref) {
        .abort(paste0("`ref.labels` has ", length(ref.labels), " values for ", n_ref, " reference cells."),
               "scelmo_input_error")
      }
      labels <- .in_cell_order(ref.labels, colnames(reference), "ref.labels")
      col <- "scelmo_ref_labels"
    }
    labels <- .unlabeled_as_na(labels, unlabeled.category)
    if (all(is.na(labels))) .abort("All reference labels are NA.", "scelmo_input_error")
    .refuse_unknown_label(labels, "The reference labels")
    known <- if (is.factor(labels)) levels(labels) else .natural_order(sort(unique(as.character(labels[!is.na(labels)]))))
    meta <- data.frame(as.character(labels), stringsAsFactors = FALSE)
    names(meta) <- col
    ref <- .annotate_input(reference, if (explicit) assay else NULL, layer, reduction, meta = meta,
                           what = "the reference", explicit = explicit, asked = asked)
    ref_embedding <- ref$embedding
    if (!is.null(reduction) && startsWith(reduction, "scelmo") &&
        (!is.null(args$embedding) || !is.null(ref_embedding))) {
      # each object's own scelmo reduction selected and centred genes on its own cells: a query
      # of a few cell types then sits apart from the same cells in the reference (a trial on
      # Kang: 0.57 accuracy instead of 0.90); both are embedded here, the query as the reference
      if (verbose) message("scelmo: embedding the query with the reference's gene selection and centring for the ",
                           "transfer (the objects' '", reduction, "' reductions are left as they are)")
      args["embedding"] <- list(NULL)
      ref_embedding <- NULL
    }
    args <- c(args, list(reference = ref$payload, reference_embedding = ref_embedding, ref_labels = col))
  } else {
    texts <- NULL
    if (!is.null(names(cell.types)) && !all(nzchar(names(cell.types)))) {
      .abort(c("`cell.types` names some entries and not others.",
               paste0("Fix: all unnamed (c(\"T cell\", \"B cell\")) or all named by their descriptions ",
                      "(c(T = \"T lymphocyte\", B = \"B lymphocyte\")).")), "scelmo_input_error")
    }
    if (!is.null(names(cell.types))) {
      texts <- as.character(cell.types)
      cell.types <- names(cell.types)
    }
    if (anyDuplicated(cell.types)) {
      .abort(paste0("`cell.types` names ", paste(unique(cell.types[duplicated(cell.types)]), collapse = ", "),
                    " more than once; candidate cell types must be unique."), "scelmo_input_error")
    }
    cell.types <- as.character(cell.types)
    known <- unique(cell.types)
    if (length(cell.types) == 0 || anyNA(cell.types) || any(!nzchar(cell.types)) ||
        anyNA(texts) || any(!nzchar(texts %||% "x"))) {
      .abort("`cell.types` must be non-empty, non-NA cell-type names.", "scelmo_input_error")
    }
    args <- c(args, list(cell_types = .encode_strings(cell.types), n_cell_types = length(cell.types),
                         cell_type_texts = if (!is.null(texts)) .encode_strings(texts)))
  }
  if (verbose) message("scelmo: annotating ", ncol(object), " cells")
  res <- do.call(.call_bridge, c(list("annotate"), args))
  n <- ncol(object)
  labels <- .decode_strings(res$labels, n)
  labels[as.logical(as.integer(res$label_na))] <- NA_character_
  scores <- readBin(res$scores, "double", n = n, size = 8, endian = "little")
  # a factor, as Seurat's own labels (Idents, PredictScELMo): the candidate types or the
  # reference's labels in their order, then any other label given ("unknown")
  found <- unique(labels[!is.na(labels)])
  levels <- c(known, setdiff("unknown", known), sort(setdiff(found, c(known, "unknown"))))  # "unknown" always a level
  list(labels = factor(labels, levels = levels), scores = scores, provenance = res$provenance)
}
