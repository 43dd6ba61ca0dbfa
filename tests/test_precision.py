"""16-bit gene vectors (bfloat16, float16): half the memory, float32 accumulation, results within 2e-3."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scelmo.expression.matrix import (
    from_bfloat16_bits,
    round_to_bfloat16,
    round_to_precision,
    to_bfloat16_bits,
)


def test_bfloat16_rounding_is_nearest_and_bounded():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-6, 6, 100_000)).astype(np.float32)
    r = round_to_bfloat16(x)
    assert r.dtype == np.float32
    assert np.max(np.abs(r - x) / np.abs(x)) <= 2.0**-8  # half a unit in the last of 8 significant bits
    assert np.array_equal(from_bfloat16_bits(to_bfloat16_bits(r)), r)  # representable values are kept
    assert to_bfloat16_bits(np.float32([1.0]))[0] == 0x3F80


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [100, 384])
def test_kernels_read_16_bit_vectors_exactly(d, precision):
    from scelmo_zeroshot.kernels import TiledEmbedding, csr_matmul_gather, csr_matmul_scatter

    rng = np.random.default_rng(d)
    X = sp.random(600, 900, density=0.05, format="csr", dtype=np.float32, random_state=d)
    E = rng.standard_normal((900, d)).astype(np.float32)
    t16 = TiledEmbedding.from_matrix(E, precision=precision)
    assert t16.precision == precision and t16.nbytes * 2 == TiledEmbedding.from_matrix(E).nbytes
    np.testing.assert_array_equal(t16.to_matrix(), round_to_precision(E, precision))
    exact = X.astype(np.float64) @ t16.to_matrix().astype(np.float64)  # the product of the rounded vectors
    full = X.astype(np.float64) @ E.astype(np.float64)
    for fn in (csr_matmul_scatter, csr_matmul_gather):
        C = fn(X.indptr, X.indices, X.data, t16)
        assert np.abs(C - exact).max() <= 1e-5 * np.abs(exact).max()  # float32 sums of widened values
        assert np.abs(C - full).max() <= 2e-3 * np.abs(full).max()
        cos = (C * full).sum(1) / np.linalg.norm(C, axis=1) / np.linalg.norm(full, axis=1)
        assert cos.min() >= 0.9999


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_embed_cells_16_bit_matches_float32(pbmc, precision):
    import scelmo

    genes = scelmo.tl.embed_genes(pbmc)
    a = scelmo.tl.embed_cells(pbmc, gene_embeddings=genes, copy=True).obsm["X_scelmo"]
    b16 = scelmo.tl.embed_cells(pbmc, gene_embeddings=genes, copy=True, precision=precision)
    b = b16.obsm["X_scelmo"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert rel.max() <= (2e-3 if precision == "float16" else 1e-2)  # centred input: some cancellation
    assert b16.uns["scelmo"]["embed_cells"]["precision"] == precision


def test_float16_refuses_values_beyond_its_range():
    from scelmo_zeroshot.kernels import TiledEmbedding

    from scelmo.errors import ConfigError

    with pytest.raises(ConfigError, match="bfloat16"):
        TiledEmbedding.from_matrix(np.full((3, 8), 1e5, dtype=np.float32), precision="float16")


def test_bfloat16_needs_an_aggregator_that_has_it(pbmc):
    import scelmo
    from scelmo.errors import ConfigError

    genes = scelmo.tl.embed_genes(pbmc)
    with pytest.raises(ConfigError, match="16-bit"):
        scelmo.tl.embed_cells(pbmc, gene_embeddings=genes, copy=True, precision="bfloat16", aggregator="genept_s",
                              transform="none")
