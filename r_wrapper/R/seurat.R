# Seurat accessors, chosen by SeuratObject version.
#
# SeuratObject >= 5 (Assay5, layers; `slot =` deprecated): LayerData()/Layers()/
# JoinLayers(). SeuratObject 4: GetAssayData(slot =). The v5 branch is written
# against SeuratObject 5's documented API; this package's CI can only run
# SeuratObject 4.1 (Debian bookworm), so the v5 branch is untested there.

.seurat_v5 <- function() {
  utils::packageVersion("SeuratObject") >= "5.0.0"
}

.so <- function(name) getExportedValue("SeuratObject", name)

.check_seurat <- function(object) {
  if (!inherits(object, "Seurat")) {
    .abort("Expected a Seurat object.", "scelmo_input_error")
  }
  if (ncol(object) == 0) {
    .abort("Nothing to embed: the Seurat object has no cells.", "scelmo_input_error")
  }
  invisible(object)
}

.resolve_assay <- function(object, assay, what = NULL) {
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  if (!assay %in% SeuratObject::Assays(object)) {
    .abort(paste0("Assay '", assay, "' not found", if (!is.null(what)) paste0(" in ", what), " (assays: ",
                  paste(SeuratObject::Assays(object), collapse = ", "), ")."), "scelmo_input_error")
  }
  assay
}

# Seurat keeps assays, reductions and metadata columns under one namespace: a name that is
# already another kind of object fails only when the result is stored (after the work), so it
# is checked before. `kind`: "reduction" (may replace a reduction) or "column".
.check_free_name <- function(object, name, what, kind = "column") {
  taken <- c(stats::setNames(rep("assay", length(SeuratObject::Assays(object))), SeuratObject::Assays(object)),
             if (kind == "column") stats::setNames(rep("reduction", length(SeuratObject::Reductions(object))),
                                                   SeuratObject::Reductions(object)),
             # (a reduction named like a metadata column is stored but cannot be reached: a review)
             if (kind == "reduction") stats::setNames(rep("metadata column", ncol(object[[]])), colnames(object[[]])))
  hit <- intersect(name, names(taken))
  if (length(hit)) {
    .abort(paste0("`", what, "` would name '", hit[1], "', which is already ", if (taken[[hit[1]]] == "assay") "an " else "a ",
                  taken[[hit[1]]], " of this object; choose another name."), "scelmo_input_error")
  }
  invisible(name)
}

# genes x cells matrix of `layer` in `assay`; errors (never modifies `object`).
.get_layer <- function(object, assay, layer) {
  if (!is.character(layer) || length(layer) != 1) {
    .abort("`layer` must be one layer name, e.g. \"counts\".", "scelmo_input_error")
  }
  a <- object[[assay]]
  if (.seurat_v5() && inherits(a, "Assay5")) {
    found <- .so("Layers")(a, search = layer)
    if (length(found) == 0) {
      .abort(.no_layer_msg(layer, assay, .so("Layers")(a)), "scelmo_input_error")
    }
    if (length(found) > 1) {
      # split layers (counts.1, counts.2, ...): join them on a copy of the assay
      a <- .so("JoinLayers")(a, layers = layer)
    }
    m <- .so("LayerData")(a, layer = layer)
  } else {
    slots <- c("counts", "data", "scale.data")
    if (!layer %in% slots) {
      .abort(.no_layer_msg(layer, assay, slots), "scelmo_input_error")
    }
    m <- SeuratObject::GetAssayData(object, assay = assay, slot = layer)
  }
  if (is.null(m) || nrow(m) == 0 || ncol(m) == 0) {
    .abort(c(
      paste0("The '", layer, "' layer of assay '", assay, "' is empty."),
      paste0("Fix: scelmo weights genes by expression, so give it counts (or normalised values): ",
             "pass `layer = \"data\"` to use log-normalised data, or create the object with counts.")
    ), "scelmo_input_error")
  }
  if (layer == "scale.data") {
    .warn("layer = \"scale.data\" holds z-scores (negative values); scelmo needs counts or normalised data.")
  }
  m
}

.no_layer_msg <- function(layer, assay, available) {
  paste0("Assay '", assay, "' has no '", layer, "' layer (available: ",
         paste(available, collapse = ", "), "). Pass `layer =` with counts or normalised data.")
}

.subset_features <- function(m, features) {
  if (is.null(features)) return(m)
  features <- as.character(features)
  if (anyDuplicated(features)) {
    dup <- unique(features[duplicated(features)])
    .abort(paste0("`features` has duplicated names (e.g. ", paste(head(dup, 3), collapse = ", "),
                  "). Pass each gene once."), "scelmo_input_error")
  }
  missing <- setdiff(features, rownames(m))
  if (length(missing)) {
    .abort(paste0(length(missing), " of the ", length(features), " `features` are not in the data (e.g. ",
                  paste(head(missing, 3), collapse = ", "), ")."), "scelmo_input_error")
  }
  m[features, , drop = FALSE]
}

.check_key <- function(reduction.key) {
  if (!is.character(reduction.key) || length(reduction.key) != 1 ||
      !grepl("^[[:alnum:]]+_$", reduction.key)) {
    .abort(paste0("`reduction.key` must be letters/digits followed by one underscore, e.g. \"scelmo_\"; got '",
                  paste(reduction.key, collapse = " "), "'."), "scelmo_input_error")
  }
}

# Extra arguments (...) -> config overrides
.dots_config <- function(config, dots) {
  config <- as.list(config %||% list())
  if (length(dots) == 0) return(.check_config_values(config))
  if (is.null(names(dots)) || any(!nzchar(names(dots)))) {
    .abort("Extra arguments must be named (e.g. species = \"mouse\").", "scelmo_input_error")
  }
  map <- c(species = "genes.species", l2.normalize = "aggregate.l2_normalize",
           chunk.size = "aggregate.chunk_size", describe = "describe.model", embed = "embed.model",
           flavor = "aggregate.flavor", n.top.genes = "aggregate.n_top_genes",
           normalize = "aggregate.normalize", transform = "aggregate.transform",
           gene.embeddings = "gene.embeddings")  # (the R functions' own key: a saved gene table)
  sections <- NULL
  for (nm in names(dots)) {
    key <- if (nm %in% names(map)) map[[nm]] else NULL
    if (is.null(key) && grepl(".", nm, fixed = TRUE)) {
      # a dotted config key names a settings section ("aggregate.l2_normalize"); another
      # dotted name is an argument of some other function (Seurat's group.by, dims.use, ...)
      sections <- sections %||% names(.call_bridge("config_show", NULL)$config)
      if (sub("\\..*$", "", nm) %in% sections) key <- nm
    }
    if (is.null(key)) {
      .abort(paste0("Unknown argument '", nm, "'. Use one of ", paste(names(map), collapse = ", "),
                    ", a dotted config key such as `aggregate.l2_normalize = TRUE`, or `config =`."),
             "scelmo_input_error")
    }
    config[[key]] <- dots[[nm]]
  }
  .check_config_values(config)
  config
}

# NA reaches Python as True through reticulate: refuse it rather than switch a setting on
.check_config_values <- function(config, path = NULL) {
  nms <- names(config)
  for (i in seq_along(config)) {
    key <- paste(c(path, if (!is.null(nms) && nzchar(nms[i])) nms[i] else as.character(i)), collapse = ".")
    v <- config[[i]]
    if (is.list(v)) {
      .check_config_values(v, key)
    } else if (is.atomic(v) && length(v) > 0 && anyNA(v)) {
      .abort(paste0("The setting `", key, "` is NA; give a value (TRUE or FALSE for a switch), or leave it ",
                    "out for its default."), "scelmo_input_error")
    }
  }
  invisible(config)
}

# --- secrets never reach object@commands -------------------------------------------------
# SeuratObject::LogSeuratCommand() stores the calling function's arguments (our `config`)
# and the deparsed call, both of which may hold an API key given inline; saveRDS() would
# then write it to disk. It has to be called from the function being logged (it reads the
# caller's frame), so each caller passes the logged object through .without_secrets()
# in a separate statement (wrapping the call would change the frame it reads).

.secret_name <- function(nm) {
  # describe.api_key, api_key, token, secret, password (not api_key_env: a variable name)
  grepl("(^|[._])(api[._]?key|token|secret|password)$", nm, ignore.case = TRUE)
}

.mask_secrets <- function(x) {
  if (!is.list(x)) return(x)
  nms <- names(x)
  for (i in seq_along(x)) {
    if (!is.null(nms) && !is.na(nms[i]) && .secret_name(nms[i]) && !is.null(x[[i]])) {
      x[i] <- list("**********")
    } else if (is.list(x[[i]])) {
      x[i] <- list(.mask_secrets(x[[i]]))
    }
  }
  x
}

.mask_call_string <- function(s) {
  s <- paste(s, collapse = "\n")
  gsub("((api[._]?key|token|secret|password)[`]?\\s*=\\s*)(\"[^\"]*\"|'[^']*')", "\\1\"**********\"", s,
       ignore.case = TRUE, perl = TRUE)
}

.without_secrets <- function(object) {
  cmds <- methods::slot(object, "commands")
  for (nm in grep("ScELMo", names(cmds), value = TRUE)) {
    cmd <- cmds[[nm]]
    params <- .mask_secrets(methods::slot(cmd, "params"))
    # a model handle (a Python pointer and its gene list) as a line: the command prints, and
    # a saved object does not carry a dead pointer
    for (p in names(params)) {
      if (inherits(params[[p]], "scelmo_model")) {
        params[[p]] <- paste0("scelmo_model (", params[[p]]$head, " head",
                              if (nzchar(params[[p]]$path %||% "")) paste0(", saved at ", params[[p]]$path) else "",
                              ")")
      }
    }
    methods::slot(cmd, "params") <- params
    methods::slot(cmd, "call.string") <- .mask_call_string(methods::slot(cmd, "call.string"))
    cmds[[nm]] <- cmd
  }
  methods::slot(object, "commands") <- cmds
  object
}

# "unknown" is the label scelmo gives cells it cannot call, never a class to learn or transfer
# (AnnotateScELMo's reference labels, TrainScELMo's annotation labels)
.refuse_unknown_label <- function(labels, what) {
  if ("unknown" %in% as.character(labels)) {
    .abort(c(paste0(what, " include \"unknown\", the label scelmo gives cells it cannot call."),
             "Fix: mark those cells unlabelled (unlabeled.category = \"unknown\") or rename the label."),
           "scelmo_input_error")
  }
  invisible(labels)
}
