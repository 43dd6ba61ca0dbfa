test_that("install_scelmo checks its arguments before touching any environment", {
  expect_error(install_scelmo(package = character()), class = "scelmo_input_error")
  expect_error(install_scelmo(package = 1), class = "scelmo_input_error")
})

test_that("scelmo_available() never errors", {
  expect_type(scelmo_available(), "logical")
})
