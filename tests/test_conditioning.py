"""Gene-table conditioning: fitted on the table only, stored with it, applied the same everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from scelmo.conditioning import Conditioning
from scelmo.errors import InputError, ScelmoWarning
from scelmo.genes import GeneEmbeddings


def _table(rng, n=300, d=24):
    shared = rng.standard_normal(d) * 3  # the common direction text embeddings have
    V = shared + rng.standard_normal((n, d)) * np.linspace(3, 0.3, d)
    return GeneEmbeddings([f"G{i}" for i in range(n)], V.astype(np.float32))


def test_removes_mean_and_top_directions(rng):
    ge = _table(rng).condition(n_components=4)
    C = ge.conditioning.apply(ge.vectors)
    np.testing.assert_allclose(C.mean(0), 0, atol=1e-5)
    _, _, vt = np.linalg.svd(ge.vectors - ge.vectors.mean(0), full_matrices=False)
    np.testing.assert_allclose(C @ vt[:4].T, 0, atol=1e-4)
    # what is left is the table's structure below its top 4 directions, untouched
    before = np.linalg.svd(ge.vectors - ge.vectors.mean(0), compute_uv=False)
    after = np.linalg.svd(C, compute_uv=False)
    np.testing.assert_allclose(after[: len(before) - 4], before[4:], rtol=1e-3)


def test_fitted_once_saved_and_reloaded(rng, tmp_path):
    ge = _table(rng).condition(n_components=3)
    first = ge.conditioning
    assert ge.condition(n_components=3).conditioning is first  # kept, not refitted
    ge.save(tmp_path / "t")
    back = GeneEmbeddings.load(tmp_path / "t")
    assert back.conditioning.checksum() == first.checksum()
    a, _ = ge.aligned(["G5", "nope", "G7"], conditioned=True)
    b, mask = back.aligned(["G5", "nope", "G7"], conditioned=True)
    np.testing.assert_array_equal(a, b)
    assert mask.tolist() == [True, False, True] and not b[1].any()  # a gene with no vector stays zero
    # subsets of the table are conditioned with the whole table's fit: comparable across datasets
    full, _ = ge.aligned(ge.genes, conditioned=True)
    np.testing.assert_allclose(a[[0, 2]], full[[5, 7]], rtol=1e-6)


def test_tiny_tables_and_bad_input(rng):
    tiny = GeneEmbeddings(["A", "B", "C"], rng.standard_normal((3, 8)).astype(np.float32)).condition()
    assert tiny.conditioning.n_components == 0  # centred only
    with pytest.warns(ScelmoWarning, match="removes 5 direction.*not the 10 asked for"):  # (said: a trial)
        assert _table(rng, n=100).condition(n_components=10).conditioning.n_components == 5
    with pytest.raises(InputError, match="fitted on 8-d"):
        tiny.conditioning.apply(np.zeros((2, 5)))
    with pytest.raises(InputError, match=r"Cannot condition a table of .* needs at least .*condition=False"):
        Conditioning.fit(rng.standard_normal((4, 8)), n_components=5)


def test_an_explicit_condition_components_overrides_a_saved_tables_number(rng, tmp_path):
    """Trial finding: `aggregate.condition_components` was ignored for a given (saved) table."""
    import anndata as ad

    import scelmo

    ge = _table(rng, n=400).condition(n_components=10)
    ge.save(tmp_path / "t")
    X = rng.poisson(1.0, size=(30, 400)).astype(np.float32)
    a = ad.AnnData(X, var={"x": np.arange(400)})
    a.var_names = ge.genes
    for config, expected in ((None, 10), ({"aggregate.condition_components": 3}, 3)):
        b = a.copy()
        scelmo.tl.embed_cells(b, gene_embeddings=str(tmp_path / "t"), config=config, progress=False)
        assert b.uns["scelmo"]["embed_cells"]["conditioning"]["n_components"] == expected
    # review finding: a settings object plus any override marked every field as set, so the
    # default looked explicit and the saved table was refitted to 10
    from scelmo.config import get_settings

    b = a.copy()
    three = ge.conditioned_as(3)
    scelmo.tl.embed_cells(b, gene_embeddings=three, config=get_settings(), aggregator="wa", progress=False)
    assert b.uns["scelmo"]["embed_cells"]["conditioning"]["n_components"] == 3
    b = a.copy()
    scelmo.tl.embed_cells(b, gene_embeddings=ge, config={"aggregate.condition_components": 3}, progress=False)
    assert ge.conditioning.n_components == 10  # the table given keeps its own
    assert b.uns["scelmo"]["embed_cells"]["conditioning"]["n_components"] == 3
