#' scelmo settings as an R list
#'
#' Builds a (validated) list of setting overrides for the `config =` argument
#' of [RunScELMo()], [AnnotateScELMo()] and [ScELMoGeneEmbeddings()]. Names are
#' dotted setting keys (`aggregate.method`, `genes.species`, `embed.model`, ...)
#' or nested lists (`aggregate = list(method = "aa")`). Settings not given come
#' from the usual places: `SCELMO_*` environment variables, `./scelmo.toml`,
#' the user config file, then the defaults (fully offline).
#'
#' @param ... Settings, e.g. `aggregate.method = "aa"`, `genes.species = "mouse"`.
#' @param validate Check the settings with the Python package now (default `TRUE`).
#' @return A named list of class `scelmo_config`.
#' @examples
#' \dontrun{
#' cfg <- scelmo_config(aggregate.method = "aa", aggregate.l2_normalize = TRUE)
#' pbmc <- RunScELMo(pbmc, config = cfg)
#' scelmo_config_show(cfg)
#' }
#' @export
scelmo_config <- function(..., validate = TRUE) {
  cfg <- list(...)
  if (length(cfg) && (is.null(names(cfg)) || any(!nzchar(names(cfg))))) {
    .abort("Every setting must be named, e.g. scelmo_config(aggregate.method = \"aa\").",
           "scelmo_config_error")
  }
  .check_config_values(cfg)  # NA would reach Python as True
  if (validate) .call_bridge("config_show", if (length(cfg)) cfg else NULL)
  structure(cfg, class = c("scelmo_config", "list"))
}

#' @export
print.scelmo_config <- function(x, ...) {
  cat("<scelmo_config>", if (!length(x)) "(defaults)", "\n")
  for (nm in names(x)) cat("  ", nm, " = ", format(x[[nm]]), "\n", sep = "")
  invisible(x)
}

#' Show the resolved scelmo configuration
#'
#' Resolves `config` with every other source (environment, config files,
#' defaults) in Python and prints it; secrets are masked.
#' @param config A [scelmo_config()] list or named list of overrides.
#' @param print Print it (default `TRUE`).
#' @return The resolved configuration as a nested list, invisibly.
#' @export
scelmo_config_show <- function(config = NULL, print = TRUE) {
  res <- .call_bridge("config_show", if (length(config)) unclass(config) else NULL)
  if (print) {
    info <- .state$info
    cat("scelmo ", info$scelmo, " (Python ", info$python, ", ", info$executable, ")\n", sep = "")
    .print_tree(res$config)
  }
  invisible(res$config)
}

.print_tree <- function(x, indent = "") {
  for (nm in names(x)) {
    v <- x[[nm]]
    if (is.list(v) && length(v) == 0) {
      cat(indent, nm, " = {}\n", sep = "")
    } else if (is.list(v) && !is.null(names(v))) {
      cat(indent, nm, ":\n", sep = "")
      .print_tree(v, paste0(indent, "  "))
    } else {
      cat(indent, nm, " = ", if (length(v)) paste(format(unlist(v)), collapse = ", ") else "[]", "\n", sep = "")
    }
  }
}

#' Gene vectors from scelmo
#'
#' Describes and embeds genes (offline by default) and returns one vector per
#' gene that could be matched.
#'
#' @param genes Gene names (symbols or Ensembl IDs), or a Seurat object (its
#'   features) or matrix (its rownames).
#' @param config,... Settings as in [RunScELMo()].
#' @return A genes x d matrix (rownames = the input names that got a vector),
#'   with `attr(, "symbols")` (the symbols they were resolved to) and
#'   `attr(, "manifest")` (models, coverage).
#' @examples
#' \dontrun{
#' E <- ScELMoGeneEmbeddings(c("CD3E", "MS4A1", "LYZ"))
#' dim(E)  # 3 x 384
#' }
#' @export
ScELMoGeneEmbeddings <- function(genes, config = NULL, ...) {
  if (inherits(genes, "Seurat") || !is.null(dim(genes))) genes <- rownames(genes)
  genes <- as.character(genes)
  if (length(genes) == 0) .abort("No genes given.", "scelmo_input_error")
  if (anyNA(genes)) .abort("Gene names must not be NA.", "scelmo_input_error")
  cfg <- .dots_config(config, list(...))
  res <- .call_bridge("embed_genes", .encode_strings(genes), length(genes),
                      config = if (length(cfg)) cfg else NULL)
  d <- as.integer(unlist(res$dim))
  Z <- .decode_matrix(res$Z, d)
  rownames(Z) <- .decode_strings(res$genes, d[1])
  attr(Z, "symbols") <- .decode_strings(res$symbols, d[1])
  attr(Z, "manifest") <- res$manifest
  Z
}
