# Fine-tuning from R on the Kang 2018 subset (inst/extdata/kang_subset.rds): train on the
# 301 control cells, label the 301 stimulated ones (7 balanced cell types, chance 0.14).
#
#   RETICULATE_PYTHON=.venv/bin/python Rscript r_wrapper/inst/benchmarks/finetune_kang.R [seeds] [max.epochs] [out.tsv]
#
# Rows: TrainScELMo + PredictScELMo (kNN and classifier); the control: the same pipeline
# with the training labels shuffled; and, for context, the zero-shot route
# (RunScELMo embeddings + AnnotateScELMo kNN transfer from the control cells, k = 10).
suppressPackageStartupMessages({
  library(scelmo)
  library(SeuratObject)
})
args <- commandArgs(trailingOnly = TRUE)
n_seeds <- if (length(args) >= 1) as.integer(args[1]) else 3L
epochs <- if (length(args) >= 2) as.integer(args[2]) else 10L
out <- if (length(args) >= 3) args[3] else NULL
stopifnot(scelmo_available())

path <- system.file("extdata", "kang_subset.rds", package = "scelmo")
if (!nzchar(path)) path <- file.path("r_wrapper", "inst", "extdata", "kang_subset.rds")
k <- readRDS(path)
seu <- suppressWarnings(CreateSeuratObject(k$counts, meta.data = k$meta))
ctrl <- subset(seu, cells = colnames(seu)[seu$condition == "control"])
stim <- subset(seu, cells = colnames(seu)[seu$condition == "stimulated"])
truth <- as.character(stim$cell_type)
acc <- function(pred) mean(as.character(pred) == truth)

res <- data.frame()
add <- function(...) res <<- rbind(res, data.frame(...))
for (seed in seq_len(n_seeds) - 1L) {
  set.seed(seed)
  shuffled <- sample(as.character(ctrl$cell_type))
  for (labels in c("real", "shuffled")) {
    lab <- if (labels == "real") "cell_type" else shuffled
    t0 <- proc.time()[["elapsed"]]
    m <- TrainScELMo(ctrl, labels = lab, seed = seed, max.epochs = epochs, verbose = FALSE)
    train_s <- proc.time()[["elapsed"]] - t0
    for (method in c("knn", "classifier")) {
      p <- PredictScELMo(stim, m, method = method, verbose = FALSE)
      add(route = "TrainScELMo", labels = labels, method = method, seed = seed, epochs = m$train$epochs,
          train_s = round(train_s, 1), accuracy = round(acc(p$scelmo_label), 3))
    }
  }
}
zs <- AnnotateScELMo(stim, reference = ctrl, ref.labels = "cell_type", k = 10, verbose = FALSE)
add(route = "zero-shot AnnotateScELMo", labels = "real", method = "knn", seed = NA, epochs = 0,
    train_s = NA, accuracy = round(acc(zs$scelmo_label), 3))
print(res, row.names = FALSE)
summary <- aggregate(accuracy ~ route + labels + method, res, function(x) c(mean = mean(x), min = min(x), max = max(x)))
print(summary, row.names = FALSE)
if (!is.null(out)) utils::write.table(res, out, sep = "\t", quote = FALSE, row.names = FALSE)
