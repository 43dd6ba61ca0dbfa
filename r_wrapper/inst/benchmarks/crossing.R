# How long does a 50,000-cell Seurat object take to cross from R to Python?
#
#   RETICULATE_PYTHON=.venv/bin/python Rscript r_wrapper/inst/benchmarks/crossing.R [n_cells] [out.tsv]
#
# Times (wall clock, seconds): building the byte payload in R, sending it and
# building the AnnData in Python (scelmo.r_bridge.receive), and the whole
# RunScELMo() call (payload + crossing + embedding + DimReduc). Genes are the 765
# of scanpy's pbmc68k_reduced so that the embedding is real; counts are Poisson.
suppressPackageStartupMessages({
  library(scelmo)
  library(SeuratObject)
})
args <- commandArgs(trailingOnly = TRUE)
n_cells <- if (length(args) >= 1) as.integer(args[1]) else 50000L
out <- if (length(args) >= 2) args[2] else NULL
stopifnot(scelmo_available())

genes <- unlist(reticulate::py_eval(
  "__import__('scanpy').datasets.pbmc68k_reduced().raw.var_names.tolist()", convert = TRUE))
set.seed(0)
m <- Matrix::rsparsematrix(length(genes), n_cells, density = 0.08,
                           rand.x = function(n) stats::rpois(n, 2) + 1)
dimnames(m) <- list(genes, sprintf("cell_%06d", seq_len(n_cells)))
seu <- suppressWarnings(CreateSeuratObject(m))

t <- function(expr) system.time(expr)[["elapsed"]]
res <- list()
res$payload_s <- t(payload <- scelmo:::.scelmo_payload(m))
res$crossing_s <- t(r <- scelmo:::.call_bridge("receive", payload))
res$run_scelmo_first_s <- t(seu2 <- RunScELMo(seu, verbose = FALSE))  # includes gene vectors (cached after)
res$run_scelmo_s <- t(seu2 <- RunScELMo(seu, verbose = FALSE))
res$n_cells <- n_cells
res$n_genes <- length(genes)
res$nnz <- length(m@x)
res$payload_mb <- round((length(payload$x) + length(payload$i) + length(payload$p)) / 2^20, 1)
stopifnot(identical(dim(Embeddings(seu2, "scelmo")), c(n_cells, 384L)))
df <- data.frame(metric = names(res), value = unlist(res))
print(df, row.names = FALSE)
if (!is.null(out)) utils::write.table(df, out, sep = "\t", quote = FALSE, row.names = FALSE)
