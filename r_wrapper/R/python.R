#' @keywords internal
#' @importFrom methods as is new slot
#' @importFrom utils packageVersion head
#' @importFrom Matrix Matrix
"_PACKAGE"

# Package state: the imported Python module (scelmo.r_bridge) once found.
.state <- new.env(parent = emptyenv())

#: the payload layout version this R package speaks (scelmo.r_bridge.PROTOCOL)
.PROTOCOL <- 1L

#: default virtualenv used by install_scelmo() and looked for at first use
.DEFAULT_ENV <- "r-scelmo"

`%||%` <- function(x, y) if (is.null(x)) y else x

# ----------------------------------------------------------------------------- errors
.abort <- function(message, class = NULL, call = NULL) {
  cond <- structure(
    class = c(class, "scelmo_error", "error", "condition"),
    list(message = paste(message, collapse = "\n"), call = call)
  )
  stop(cond)
}

.warn <- function(message) {
  cond <- structure(
    class = c("scelmo_warning", "warning", "condition"),
    list(message = message, call = NULL)
  )
  warning(cond)
}

# Python error classes -> R condition classes
.error_class <- function(py_class) {
  switch(py_class,
    InputError = "scelmo_input_error",
    ConfigError = "scelmo_config_error",
    UnknownComponentError = "scelmo_config_error",
    OfflineError = "scelmo_config_error",
    InternalError = "scelmo_python_error",
    "scelmo_python_error"
  )
}

# ----------------------------------------------------------------------------- python
.python_fix <- function() {
  paste0(
    "Fix: run scelmo::install_scelmo() (creates the virtualenv '", .DEFAULT_ENV, "'), ",
    "or point reticulate at a Python that has it: ",
    "Sys.setenv(RETICULATE_PYTHON = \"/path/to/venv/bin/python\") before the first scelmo call ",
    "(in a fresh R session), or reticulate::use_virtualenv(\"<env>\")."
  )
}

#' Find Python and the scelmo package (once per session)
#'
#' Python is chosen by reticulate's usual rules: `RETICULATE_PYTHON`,
#' `reticulate::use_python()` / `use_virtualenv()` called before, or else the
#' virtualenv made by [install_scelmo()] when it exists.
#' @return the `scelmo.r_bridge` module (invisibly).
#' @noRd
.bridge <- function() {
  if (!is.null(.state$bridge)) return(.state$bridge)
  if (!reticulate::py_available(initialize = FALSE) &&
      !nzchar(Sys.getenv("RETICULATE_PYTHON")) &&
      isTRUE(tryCatch(reticulate::virtualenv_exists(.DEFAULT_ENV), error = function(e) FALSE))) {
    try(reticulate::use_virtualenv(.DEFAULT_ENV, required = FALSE), silent = TRUE)
  }
  problem <- NULL
  mod <- tryCatch(
    reticulate::import("scelmo.r_bridge", convert = TRUE),
    error = function(e) {
      problem <<- conditionMessage(e)
      NULL
    }
  )
  if (is.null(mod)) {
    where <- tryCatch(
      if (reticulate::py_available(initialize = FALSE)) reticulate::py_config()$python else "none found",
      error = function(e) "none found"
    )
    .abort(c(
      paste0("The scelmo Python package could not be loaded (Python: ", where, ")."),
      paste0("reticulate said: ", sub("\n.*", "", problem %||% "unknown problem")),
      .python_fix()
    ), class = "scelmo_python_missing")
  }
  info <- mod$info()
  if (!identical(as.integer(info$protocol), .PROTOCOL)) {
    .abort(c(
      paste0("The scelmo Python package (", info$scelmo, ") speaks bridge protocol ", info$protocol,
             " but this R package speaks ", .PROTOCOL, "."),
      "Fix: install matching versions (scelmo::install_scelmo() installs the Python side)."
    ), class = "scelmo_python_missing")
  }
  .state$bridge <- mod
  .state$info <- info
  invisible(mod)
}

# Call a bridge function; turn its {ok = FALSE} answer into an R error and
# re-issue Python warnings as R warnings.
# R's Sys.setenv() after Python started is not seen by Python's os.environ (read once): every call
# passes on what R changed since the last one (settings, provider keys, the variable an api_key_env
# names, ...). The first call sets what differs from Python's copy and removes nothing (Python may
# have set variables of its own); later calls also remove what R unset.
.sync_env <- function(bridge) {
  if (!reticulate::py_has_attr(bridge, "sync_environ")) return(invisible(NULL))
  env <- Sys.getenv()
  env <- stats::setNames(as.character(env), names(env))
  last <- .state$env_synced
  removed <- character(0)
  if (is.null(last)) {
    py <- bridge$environ()
    last <- stats::setNames(as.character(unlist(py)), names(py))
  } else {
    removed <- setdiff(names(last), names(env))
  }
  before <- last[names(env)]
  changed <- names(env)[is.na(before) | before != env]
  if (length(changed) || length(removed)) {
    bridge$sync_environ(as.list(changed), as.list(unname(env[changed])), as.list(removed))
  }
  .state$env_synced <- env
  invisible(NULL)
}

.call_bridge <- function(fun, ...) {
  bridge <- .bridge()
  .sync_env(bridge)
  res <- tryCatch(bridge[[fun]](...), error = function(e) {
    .abort(c(paste0("Python failed in scelmo.r_bridge.", fun, ": ", conditionMessage(e)),
             "This is a bug or a version mismatch between the R and Python packages; please report it."),
           class = "scelmo_python_error")
  })
  # (gene names alone, ScELMoGeneEmbeddings: no counts matrix to advise about)
  genes_only <- identical(fun, "embed_genes")
  for (w in unlist(res$warnings)) .warn(.in_r(w, genes_only))
  if (!isTRUE(res$ok)) {
    msg <- .in_r(res$message %||% "unknown error", genes_only)
    if (identical(res$error_class, "InternalError") && !is.null(res$traceback)) {
      msg <- c(paste0("Python failed: ", msg), "(Python traceback follows)", res$traceback)
    }
    .abort(msg, class = .error_class(res$error_class %||% ""))
  }
  res
}

# Python messages name Python arguments; say what the R user passes instead
# (patterns: the Python name as a whole word)
.R_ADVICE <- c(
  "\\bn_top_genes=" = "`n.top.genes =`",
  "\\bmask_var=" = "`features =` (RunScELMo)",
  "\\bflavor=" = "`flavor =`",
  "\\bcondition=False" = "`aggregate.condition = FALSE`",
  "\\bspecies=" = "`species =`",
  "\\bscelmo config show\\b" = "`scelmo_config_show()`",
  "\\bsc\\.pp\\.filter_cells\\b" = paste0("`subset(object, subset = nFeature_RNA > 0)` drops cells with no counts; ",
                                          "cells with counts only in genes outside the selection need more genes ",
                                          "(`n.top.genes =`)"),
  "reference\\.var_names\\.intersection" = "`reference[intersect(rownames(reference), rownames(query)), ]`",
  "^Invalid options for task head" = paste0("head options are TrainScELMo arguments with dots for underscores ",
                                            "(`knn.k =`, `triplet.weight =`, `residual = FALSE`)"),
  "\\badata\\.var_names\\b" = "row names of the counts that are gene symbols or Ensembl IDs",
  "\\bgene_stats=" = "`AnnotateScELMo(object, reference = ref, ...)` (the query is embedded with the reference's statistics)",
  "\\buse_raw=True\\b" = "`layer = \"counts\"` (raw counts)",
  "\\bvar_names_make_unique\\b" = "`rownames(counts) <- make.unique(rownames(counts))`",
  "None of the \\d+ genes could be matched" = "rows must be genes and columns cells (`Matrix::t(counts)` if transposed)",
  "\\bscelmo plugins\\b" = "run `scelmo plugins` in a shell (the scelmo Python package's command) to list them",
  "\\bcell_types=\\{" = "`cell.types = c(name = \"cell expressing GENE1, GENE2\")`",
  "`Model\\.save`|\\bscelmo train -o\\b" = "a directory written by `SaveScELMoModel()`",
  "\\bsc\\.pp\\.log1p\\(adata\\)" = "`normalize = \"log1p\"` (values already normalised, not logged: ambient-corrected counts too)",
  "np\\.isfinite\\(X\\)" = "give counts without NA (`counts[is.na(counts)] <- 0`, or subset the cells)",
  "^Invalid training settings" = "`training = list(patience = 3, ...)` takes the names allowed above, as written",
  "\\bmax_epochs\\b" = "`max.epochs =`",
  "\\bknn_k\\b" = "`knn.k =` (a head option of TrainScELMo)",
  "row index \\d+, counting from 0" = "R's cell number is that index + 1",
  "\\bsetup_anndata\\(adata, layer=" = "`layer = \"counts\"` (the counts slot)"
)

.in_r <- function(msg, genes_only = FALSE) {
  text <- paste(msg, collapse = "\n")
  hit <- vapply(names(.R_ADVICE), function(k) grepl(k, text, perl = TRUE), logical(1))
  if (genes_only) {  # advice about a counts matrix's rows does not fit a vector of gene names
    matrix_advice <- c("\\bvar_names_make_unique\\b", "None of the \\d+ genes could be matched",
                       "\\badata\\.var_names\\b")
    hit[names(hit) %in% matrix_advice] <- FALSE
    if (grepl("could be matched|occur more than once", text)) {
      return(c(msg[-length(msg)], paste0(msg[length(msg)], "\nIn R: give unique gene symbols or Ensembl gene IDs ",
                                         "(a character vector, e.g. rownames(object)).")))
    }
  }
  # the names a `training = list(...)` takes are listed as Python writes them: no argument advice
  if (grepl("^Invalid (training settings|options for task head)", text)) {
    hit[names(hit) %in% c("\\bmax_epochs\\b", "\\bknn_k\\b")] <- FALSE
  }
  if (!any(hit)) return(msg)
  c(msg[-length(msg)], paste0(msg[length(msg)], "\nIn R: ", paste(unique(.R_ADVICE[hit]), collapse = "; "), "."))
}

#' Is the scelmo Python package available?
#'
#' Loads Python (through reticulate) on first use and checks that the `scelmo`
#' Python package can be imported. Never errors.
#' @return `TRUE` or `FALSE`.
#' @examples
#' scelmo_available()
#' @export
scelmo_available <- function() {
  isTRUE(tryCatch(!is.null(.bridge()), error = function(e) FALSE))
}

#' Install the scelmo Python package into a virtualenv
#'
#' Creates (if needed) a Python virtualenv and installs the `scelmo` Python
#' package into it with pip. scelmo uses that virtualenv automatically in later
#' R sessions unless `RETICULATE_PYTHON` points elsewhere.
#'
#' @param envname Name of (or path to) the virtualenv. Default `"r-scelmo"`.
#' @param package What pip installs: `"scelmo"` from the package index, or a
#'   path to a checkout or wheel.
#' @param python Python interpreter for a new virtualenv (default: reticulate's
#'   choice, Python >= 3.10 required).
#' @param ... Passed to [reticulate::virtualenv_install()] (e.g. `pip_options`).
#' @return The virtualenv's Python path, invisibly.
#' @examples
#' \dontrun{
#' install_scelmo()
#' install_scelmo(package = "~/src/scelmo")  # a local checkout
#' }
#' @export
install_scelmo <- function(envname = .DEFAULT_ENV, package = "scelmo", python = NULL, ...) {
  if (!is.character(package) || length(package) < 1) {
    .abort("`package` must be a character vector of pip requirements or paths.", "scelmo_input_error")
  }
  # R exports LD_LIBRARY_PATH with the system library dirs; a Python started from R as a
  # subprocess (venv creation, pip) would then load the system libpython instead of its
  # own (e.g. a pyenv build) and lose modules such as ssl. Run them without it.
  old_ld <- Sys.getenv("LD_LIBRARY_PATH", unset = NA)
  if (!is.na(old_ld)) {
    Sys.unsetenv("LD_LIBRARY_PATH")
    on.exit(Sys.setenv(LD_LIBRARY_PATH = old_ld), add = TRUE)
  }
  if (!reticulate::virtualenv_exists(envname)) {
    reticulate::virtualenv_create(envname, python = python, packages = NULL)
  }
  reticulate::virtualenv_install(envname, packages = package, ignore_installed = FALSE, ...)
  py <- reticulate::virtualenv_python(envname)
  message("Installed scelmo into ", py, ". Restart R; scelmo uses this environment ",
          "unless RETICULATE_PYTHON points elsewhere.")
  invisible(py)
}
