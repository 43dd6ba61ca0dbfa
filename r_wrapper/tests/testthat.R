library(testthat)
library(scelmo)

test_check("scelmo")
