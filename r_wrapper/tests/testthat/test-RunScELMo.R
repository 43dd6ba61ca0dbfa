test_that("RunScELMo adds a DimReduc with provenance and logs the command", {
  skip_if_no_python()
  seu <- toy_seurat()
  out <- RunScELMo(seu, verbose = FALSE)
  expect_true("scelmo" %in% SeuratObject::Reductions(out))
  E <- SeuratObject::Embeddings(out, "scelmo")
  expect_equal(dim(E), c(ncol(seu), 384))
  expect_identical(rownames(E), colnames(seu))
  expect_identical(colnames(E)[1:2], c("scelmo_1", "scelmo_2"))
  expect_identical(SeuratObject::Key(out[["scelmo"]]), "scelmo_")
  # ordered by variance like PCs (ElbowPlot, dims = 1:30): an orthogonal rotation of the
  # Python package's embedding, kept in misc, that changes no distance or cosine
  sds <- SeuratObject::Stdev(out[["scelmo"]])
  expect_equal(sds, unname(apply(E, 2, stats::sd)))
  expect_true(all(diff(sds) <= 1e-6))  # (rank 15 here: the tail is rounding noise)
  expect_gt(sds[1], 3 * sds[100])
  R <- SeuratObject::Misc(out[["scelmo"]])$rotation
  expect_equal(unname(crossprod(R)), diag(384), tolerance = 1e-8)
  Z <- RunScELMo(as.matrix(SeuratObject::GetAssayData(seu, slot = "counts")), verbose = FALSE)
  attr(Z, "scelmo") <- NULL
  expect_equal(unname(E %*% t(R)), unname(Z), tolerance = 1e-6)
  expect_equal(unname(as.matrix(dist(E))), unname(as.matrix(dist(Z))), tolerance = 1e-6)
  expect_true(all(R[cbind(apply(abs(R), 2, which.max), 1:384)] > 0))  # signs fixed
  expect_message(RunScELMo(seu), "ordered by variance like PCs.*ElbowPlot.*dims = 1:30")
  prov <- SeuratObject::Misc(out[["scelmo"]])$scelmo
  expect_equal(prov$aggregator, "wa")
  expect_equal(prov$matrix, "RNA/counts")
  expect_equal(as.integer(prov$n_genes), length(toy_genes))
  expect_true(any(grepl("RunScELMo", names(out@commands))))
  # the input object is unchanged (R copy semantics; nothing was added in place)
  expect_false("scelmo" %in% SeuratObject::Reductions(seu))
  expect_equal(prov$flavor, "scelmo")
  expect_equal(prov$normalize, "log1p_cp10k")
  expect_equal(prov$transform, "center")
  # flavor = "paper": the paper's wa, the expression-weighted mean of raw gene vectors
  paper <- RunScELMo(seu, flavor = "paper", verbose = FALSE)
  P <- SeuratObject::Embeddings(paper, "scelmo") %*% t(SeuratObject::Misc(paper[["scelmo"]])$rotation)
  G <- ScELMoGeneEmbeddings(toy_genes)
  X <- as.matrix(SeuratObject::GetAssayData(seu, slot = "counts"))[rownames(G), ]
  W <- t(X) / colSums(X)
  expect_equal(unname(P), unname(W %*% G), tolerance = 1e-4)
  # the default: log-normalised, centred genes, conditioned vectors -- the Python package's result
  expect_gt(max(abs(E - P)), 1e-3)
})

test_that("the default method embeds a plain genes x cells matrix", {
  skip_if_no_python()
  m <- toy_counts(30)
  m["CST3", ] <- m["CST3", ] + 1  # every cell expresses some gene
  Z <- RunScELMo(m, verbose = FALSE)
  expect_equal(dim(Z), c(30, 384))
  expect_identical(rownames(Z), colnames(m))
  expect_equal(attr(Z, "scelmo")$aggregator, "wa")
  Zd <- RunScELMo(as.matrix(m), verbose = FALSE)
  expect_equal(unclass(Zd)[, ], unclass(Z)[, ], ignore_attr = TRUE)
  Za <- suppressWarnings(RunScELMo(m, aggregator = "aa", features = toy_genes[1:6], verbose = FALSE))
  expect_equal(attr(Za, "scelmo")$aggregator, "aa")
  expect_equal(as.integer(attr(Za, "scelmo")$n_genes), 6L)
  # the config's aggregate.method is used when aggregator= is not given (it was ignored)
  Zc <- suppressWarnings(RunScELMo(m, config = scelmo_config(aggregate.method = "aa"), features = toy_genes[1:6],
                                   verbose = FALSE))
  expect_equal(attr(Zc, "scelmo")$aggregator, "aa")
  expect_equal(unclass(Zc)[, ], unclass(Za)[, ], ignore_attr = TRUE)
  expect_equal(attr(suppressWarnings(RunScELMo(m, aggregate.method = "aa", features = toy_genes[1:6],
                                               verbose = FALSE)), "scelmo")$aggregator, "aa")
  expect_error(RunScELMo(m, aggregator = "wa", aggregate.method = "aa", verbose = FALSE),
               class = "scelmo_input_error", regexp = "disagree")
  Zl <- RunScELMo(m, l2.normalize = TRUE, verbose = FALSE)
  expect_equal(unname(sqrt(rowSums(Zl^2))), rep(1, 30), tolerance = 1e-5)
})

test_that("options: layer = 'data', reduction name/key, config lists", {
  skip_if_no_python()
  seu <- toy_seurat()
  seu <- SeuratObject::SetAssayData(seu, slot = "data",
                                    new.data = log1p(SeuratObject::GetAssayData(seu, slot = "counts")))
  out <- RunScELMo(seu, layer = "data", reduction.name = "elmo", reduction.key = "ELMO_",
                   config = scelmo_config(aggregate.method = "aa"), verbose = FALSE)
  expect_true("elmo" %in% SeuratObject::Reductions(out))
  expect_identical(SeuratObject::Key(out[["elmo"]]), "ELMO_")
  expect_equal(SeuratObject::Misc(out[["elmo"]])$scelmo$matrix, "RNA/data")
  expect_error(RunScELMo(seu, reduction.key = "bad key"), class = "scelmo_input_error")
  expect_error(scelmo_config(aggregate.nope = 1), class = "scelmo_config_error")
  expect_error(RunScELMo(seu, nonsense = 1), class = "scelmo_input_error")
  cfg <- scelmo_config_show(scelmo_config(aggregate.method = "aa"), print = FALSE)
  expect_equal(cfg$aggregate$method, "aa")
  expect_output(scelmo_config_show(), "embed")
})

test_that("bad input gives classed R errors and leaves the object unchanged", {
  skip_if_no_python()
  seu <- toy_seurat()
  before <- seu
  # no counts: an object made from normalised data only
  dat <- log1p(toy_counts())
  no_counts <- suppressWarnings(SeuratObject::CreateSeuratObject(SeuratObject::CreateAssayObject(data = dat)))
  expect_error(RunScELMo(no_counts), class = "scelmo_input_error", regexp = "counts.*empty")
  expect_error(RunScELMo(seu, layer = "spliced"), class = "scelmo_input_error", regexp = "no 'spliced' layer")
  expect_error(RunScELMo(seu, assay = "ADT"), class = "scelmo_input_error")
  # genes as Ensembl IDs that match nothing
  ens <- toy_counts()
  rownames(ens) <- sprintf("ENSG999999999%02d", seq_len(nrow(ens)))
  e <- expect_error(RunScELMo(ens, verbose = FALSE), class = "scelmo_input_error")
  expect_match(conditionMessage(e), "Ensembl")
  # duplicated features
  dup <- toy_counts()
  rownames(dup)[2] <- rownames(dup)[1]
  expect_error(RunScELMo(dup), class = "scelmo_input_error", regexp = "more than once")
  expect_error(RunScELMo(seu, features = c("CD3E", "CD3E")), class = "scelmo_input_error")
  expect_error(RunScELMo(seu, features = c("CD3E", "NOPE")), class = "scelmo_input_error")
  # empty objects
  expect_error(RunScELMo(toy_counts()[, 0]), class = "scelmo_input_error", regexp = "no cells")
  expect_error(RunScELMo(toy_counts()[0, ]), class = "scelmo_input_error", regexp = "no genes")
  expect_error(RunScELMo(seu, features = character()), class = "scelmo_input_error", regexp = "no genes")
  # negative values are refused by Python, as a classed R error
  neg <- toy_counts()
  neg[1, 1] <- -1
  expect_error(RunScELMo(neg, verbose = FALSE), class = "scelmo_input_error", regexp = "negative")
  # Python's advice names Python arguments: the R equivalents are added
  e <- expect_error(RunScELMo(toy_counts()[, 1, drop = FALSE], verbose = FALSE), class = "scelmo_input_error")
  expect_match(conditionMessage(e), "In R: `features =` \\(RunScELMo\\); `flavor =`")
  expect_match(conditionMessage(e), "reference = ref")  # for `gene_stats=`
  expect_match(scelmo:::.in_r("Pass `layer=` with counts, or `use_raw=True`."), "In R: `layer = \"counts\"`", fixed = FALSE)
  expect_identical(scelmo:::.in_r("nothing Pythonic here"), "nothing Pythonic here")
  expect_identical(scelmo:::.in_r("set n_species=3"), "set n_species=3")  # whole names only
  expect_length(scelmo:::.in_r(c("first line", "use `n_top_genes=`")), 2)
  # trial findings: Python advice in names-only warnings and model errors
  expect_match(scelmo:::.in_r("Describe it (`cell_types={name: 'cell expressing GENE1'}`)."), "In R: `cell.types = c\\(name")
  expect_match(scelmo:::.in_r("pass the directory `Model.save` or `scelmo train -o` wrote"), "SaveScELMoModel")
  expect_match(scelmo:::.in_r("Allowed: max_epochs, knn_k."), "`max.epochs =`; `knn.k =`")
  expect_match(scelmo:::.in_r("Run `adata.var_names_make_unique()`."), "make.unique(rownames(counts))", fixed = TRUE)
  expect_match(scelmo:::.in_r("None of the 20 genes could be matched to a known gene"), "Matrix::t(counts)", fixed = TRUE)
  # a gene.embeddings directory that is not there is the caller's input, not a Python failure
  expect_error(RunScELMo(seu, config = list(gene.embeddings = file.path(tempdir(), "no_such_table")),
                         verbose = FALSE), class = "scelmo_input_error", regexp = "does not exist")
  expect_error(scelmo_config(aggregate.l2_normalize = NA), class = "scelmo_input_error", regexp = "is NA")
  # NA would reach Python as True: refused, in config lists and in shortcuts alike
  expect_error(RunScELMo(seu, config = list(aggregate.l2_normalize = NA), verbose = FALSE),
               class = "scelmo_input_error", regexp = "aggregate.l2_normalize. is NA")
  expect_error(RunScELMo(seu, l2.normalize = NA, verbose = FALSE), class = "scelmo_input_error", regexp = "is NA")
  expect_identical(seu, before)
})

test_that("Ensembl gene IDs that scelmo knows are resolved to symbols", {
  skip_if_no_python()
  m <- toy_counts(20)[c("CD3E", "LYZ"), ]
  rownames(m) <- c("ENSG00000198851", "ENSG00000090382")  # CD3E, LYZ
  # Python warnings (here: cells expressing neither gene) arrive as classed R warnings
  expect_warning(Z <- RunScELMo(m, verbose = FALSE), class = "scelmo_warning", regexp = "zero embedding")
  expect_equal(as.integer(attr(Z, "scelmo")$n_genes_with_vector), 2L)
})

test_that("FindNeighbors and FindClusters run on the scelmo reduction", {
  skip_if_no_python()
  skip_if_not_installed("Seurat")
  suppressPackageStartupMessages(library(Seurat))
  seu <- RunScELMo(toy_seurat(), verbose = FALSE)
  seu <- FindNeighbors(seu, reduction = "scelmo", dims = 1:30, verbose = FALSE)
  seu <- FindClusters(seu, resolution = 0.5, verbose = FALSE)
  expect_true("seurat_clusters" %in% colnames(seu[[]]))
  expect_gt(length(unique(seu$seurat_clusters)), 1)
})

test_that("objects too large for one call are sent in batches of cells, with the same result", {
  skip_if_no_python()
  m <- toy_counts(50)
  m["CST3", ] <- m["CST3", ] + 1
  whole <- RunScELMo(m, verbose = FALSE)
  old <- options(scelmo.max_nnz = 60)
  on.exit(options(old))
  expect_gt(length(scelmo:::.cell_batches(m)), 3)
  expect_identical(unlist(scelmo:::.cell_batches(m)), seq_len(ncol(m)))
  msgs <- capture_messages(batched <- RunScELMo(m))
  expect_match(msgs[1], "in [0-9]+ batches of cells")
  expect_equal(unclass(batched)[, ], unclass(whole)[, ], ignore_attr = TRUE, tolerance = 1e-6)
  prov <- attr(batched, "scelmo")
  expect_gt(prov$n_batches, 3)
  expect_equal(prov$n_cells, 50)
  expect_equal(prov$expression_coverage, attr(whole, "scelmo")$expression_coverage, tolerance = 1e-6)
})

test_that("an API key given inline never reaches object@commands or the saved object", {
  skip_if_no_python()
  seu <- toy_seurat()
  secret <- "sk-scelmo-test-0123456789"
  # a remote describe model with its key: never called, because the gene table is given
  table <- file.path(tempfile(), "genes")
  reticulate::import("scelmo.testing")$random_gene_embeddings(toy_genes, dim = 16L)$save(table)
  cfg <- list(gene.embeddings = table, describe.model = "openai/gpt-4o-mini", describe.api_key = secret)
  # the key in a variable (logged in params) and written inline (logged in the call string)
  a <- RunScELMo(seu, config = cfg, verbose = FALSE)
  b <- RunScELMo(seu, config = list(gene.embeddings = table, describe.model = "openai/gpt-4o-mini",
                                    describe.api_key = "sk-scelmo-test-0123456789"), verbose = FALSE)
  expect_equal(ncol(SeuratObject::Embeddings(a, "scelmo")), 16)
  for (o in list(a, b)) {
    f <- tempfile(fileext = ".rds")
    saveRDS(o, f, compress = FALSE)
    bytes <- readBin(f, "raw", file.size(f))
    expect_false(grepl(secret, rawToChar(bytes[bytes != as.raw(0)]), fixed = TRUE, useBytes = TRUE))
    cmd <- o@commands[[grep("RunScELMo", names(o@commands))[1]]]
    expect_identical(cmd@params$config$describe.api_key, "**********")
    expect_identical(cmd@params$layer, "counts")  # other arguments are kept as they were
  }
  cmd <- b@commands[[grep("RunScELMo", names(b@commands))[1]]]
  expect_match(cmd@call.string, "describe.api_key = \"**********\"", fixed = TRUE)
  expect_match(cmd@call.string, "verbose = FALSE", fixed = TRUE)
})

test_that("a SingleCellExperiment gets a classed error that says what to pass", {
  # trial finding: an unclassed "no method or default for coercing" error
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = toy_counts(20)))
  expect_error(RunScELMo(sce, verbose = FALSE), class = "scelmo_input_error", regexp = "counts\\(sce\\)")
})

test_that("the aggregator comes from a nested config and the settings too (trial: 'wa' was always used)", {
  skip_if_no_python()
  m <- toy_counts()
  nested <- RunScELMo(m, config = list(aggregate = list(method = "aa")), verbose = FALSE)
  dotted <- RunScELMo(m, config = list(aggregate.method = "aa"), verbose = FALSE)
  wa <- RunScELMo(m, aggregator = "wa", verbose = FALSE)
  expect_equal(unclass(nested)[, ], unclass(dotted)[, ])
  expect_false(isTRUE(all.equal(unclass(nested)[, ], unclass(wa)[, ])))
  expect_error(RunScELMo(m, aggregator = "wa", config = list(aggregate = list(method = "aa")), verbose = FALSE),
               "disagree", class = "scelmo_input_error")
})

test_that("settings and keys set with Sys.setenv() after Python started reach it (trial: ignored)", {
  skip_if_no_python()
  scelmo_config_show(print = FALSE)  # Python is running
  old <- Sys.getenv("SCELMO_AGGREGATE__METHOD", unset = NA)
  on.exit(if (is.na(old)) Sys.unsetenv("SCELMO_AGGREGATE__METHOD") else Sys.setenv(SCELMO_AGGREGATE__METHOD = old))
  Sys.setenv(SCELMO_AGGREGATE__METHOD = "aa")
  expect_identical(scelmo_config_show(print = FALSE)$aggregate$method, "aa")
  Sys.unsetenv("SCELMO_AGGREGATE__METHOD")
  expect_identical(scelmo_config_show(print = FALSE)$aggregate$method, "wa")
  Sys.setenv(MYPROVIDER_API_KEY = "sk-from-r", MY_KEY_VARIABLE = "sk-any-name")  # (any name: api_key_env)
  on.exit(Sys.unsetenv(c("MYPROVIDER_API_KEY", "MY_KEY_VARIABLE")), add = TRUE)
  scelmo_config_show(print = FALSE)
  os <- reticulate::import("os")
  expect_identical(os$environ$get("MYPROVIDER_API_KEY"), "sk-from-r")
  expect_identical(os$environ$get("MY_KEY_VARIABLE"), "sk-any-name")
  Sys.unsetenv("MY_KEY_VARIABLE")
  scelmo_config_show(print = FALSE)
  expect_null(os$environ$get("MY_KEY_VARIABLE"))
})

test_that("a dotted argument that is no settings key is an unknown argument (trial: a config error)", {
  skip_if_no_python()
  seu <- toy_seurat()
  expect_error(RunScELMo(seu, dims.use = 1:3, verbose = FALSE), "Unknown argument 'dims.use'",
               class = "scelmo_input_error")
  # a dotted settings key still works, and so does the documented gene.embeddings shortcut (a review)
  a <- RunScELMo(seu, aggregate.l2_normalize = TRUE, verbose = FALSE)
  expect_true("scelmo" %in% SeuratObject::Reductions(a))
  table <- file.path(tempfile(), "genes")
  reticulate::import("scelmo.testing")$random_gene_embeddings(toy_genes, dim = 8L)$save(table)
  expect_equal(ncol(SeuratObject::Embeddings(RunScELMo(seu, gene.embeddings = table, verbose = FALSE), "scelmo")), 8)
  # a reduction named like a metadata column is refused (it could not be reached)
  expect_error(RunScELMo(seu, reduction.name = "group", verbose = FALSE), "already a metadata column",
               class = "scelmo_input_error")
})

test_that("errors met in an R trial say what to do in R", {
  skip_if_no_python()
  seu <- toy_seurat()
  counts <- SeuratObject::GetAssayData(seu, slot = "counts")
  soft <- counts
  soft@x <- soft@x * 9.7  # normalised, not logged, not whole numbers (as ambient-corrected counts of a deep cell)
  expect_error(RunScELMo(soft, verbose = FALSE), "In R: `normalize = \"log1p\"`", class = "scelmo_input_error")
  expect_error(TrainScELMo(seu, labels = "group", training = list(patence = 1), max.epochs = 1, verbose = FALSE),
               "takes the names allowed above", class = "scelmo_error")
  expect_error(AnnotateScELMo(seu, cell.types = c(T = "T lymphocyte", "B cell"), verbose = FALSE),
               "names some entries and not others", class = "scelmo_input_error")
  old <- options(scelmo.max_nnz = 1e12)
  on.exit(options(old))
  expect_error(RunScELMo(seu, verbose = FALSE), "scelmo.max_nnz", class = "scelmo_input_error")
})
