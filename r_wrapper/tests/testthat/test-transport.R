test_that("payload bytes encode the dgCMatrix slots and names", {
  m <- toy_counts(20)
  p <- scelmo:::.scelmo_payload(m)
  expect_equal(p$n_obs, 20L)
  expect_equal(p$n_vars, length(toy_genes))
  expect_identical(readBin(p$p, "integer", n = 21, size = 4, endian = "little"), m@p)
  expect_identical(scelmo:::.decode_strings(p$obs_names, 20), colnames(m))
  dense <- scelmo:::.scelmo_payload(as.matrix(m))
  expect_identical(dense$x, p$x)
})

test_that("metadata NAs, factor levels and names arrive intact in Python", {
  skip_if_no_python()
  seu <- toy_seurat(40)
  cells <- colnames(seu)
  cells[2] <- "\u00fcnic\u00f8de cell/2 with spaces"
  m <- SeuratObject::GetAssayData(seu, slot = "counts")
  colnames(m) <- cells
  meta <- seu[[]]
  rownames(meta) <- cells
  d <- describe_in_python(scelmo:::.scelmo_payload(m, meta = meta))
  expect_identical(scelmo:::.decode_strings(d$obs_names, 40), cells)
  expect_identical(scelmo:::.decode_strings(d$var_names, nrow(m)), rownames(m))
  expect_equal(unlist(d$shape), c(40, nrow(m)))
  expect_equal(d$sum, sum(m))
  expect_equal(d$nnz, length(m@x))
  for (col in c("flag", "batch", "donor", "note", "qc", "group")) {
    expect_equal(as.integer(unlist(d$cols[[col]]$na)), which(is.na(meta[[col]])), info = col)
  }
  expect_equal(d$cols$flag$dtype, "boolean")
  expect_equal(d$cols$batch$dtype, "Int32")
  expect_equal(d$cols$donor$dtype, "category")
  expect_equal(d$cols$qc$dtype, "float64")
  vals <- scelmo:::.decode_strings(d$cols$note$values, 40)
  ok <- !is.na(meta$note)
  expect_identical(vals[ok], meta$note[ok])  # including the string "NA" and non-ASCII
  dv <- scelmo:::.decode_strings(d$cols$donor$values, 40)
  expect_identical(dv[!is.na(meta$donor)], as.character(meta$donor[!is.na(meta$donor)]))
  bv <- scelmo:::.decode_strings(d$cols$flag$values, 40)
  expect_identical(bv[!is.na(meta$flag)], ifelse(meta$flag[!is.na(meta$flag)], "True", "False"))
})

test_that("50,000 cells cross to Python in seconds", {
  skip_if_no_python()
  skip_on_cran()
  set.seed(2)
  m <- Matrix::rsparsematrix(2000, 50000, density = 0.05, rand.x = function(n) stats::rpois(n, 3) + 1)
  dimnames(m) <- list(paste0("G", 1:2000), paste0("cell", 1:50000))
  elapsed <- system.time({
    payload <- scelmo:::.scelmo_payload(m)
    res <- scelmo:::.call_bridge("receive", payload)
  })[["elapsed"]]
  message(sprintf("50,000 cells x 2,000 genes (%d non-zeros): R -> Python AnnData in %.2f s",
                  length(m@x), elapsed))
  expect_equal(res$n_obs, 50000)
  expect_equal(res$nnz, length(m@x))
  expect_equal(res$sum, sum(m@x))
  expect_lt(elapsed, 20)
})
