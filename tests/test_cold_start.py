"""Cold start of the offline embedder: shipped vectors, session options, cache identity."""

from __future__ import annotations

import numpy as np
import pytest

from scelmo.errors import IntegrityError
from scelmo.llm.cache import Cache

GENES = ["CD3E", "CD3D", "HBB", "HBA1", "MS4A1", "CD79A", "LYZ", "NKG7", "GAPDH", "ACTB", "PTPRC", "IL7R"]


@pytest.fixture(scope="module")
def gene_texts():
    from scelmo_local.knowledge import LocalGeneKnowledge

    texts = LocalGeneKnowledge().gene_texts(GENES)
    return [texts[g] for g in GENES]


def test_shipped_vectors_match_the_model(gene_texts):
    from scelmo_local.embedder import LocalMiniLM

    fast = LocalMiniLM()
    shipped = fast.embed(gene_texts, progress=False)
    assert fast.n_precomputed == len(gene_texts)  # no model call for bundled protein-coding texts
    exact = LocalMiniLM(precomputed=False).embed(gene_texts, progress=False)
    assert shipped.shape == exact.shape == (len(GENES), 384) and shipped.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(shipped, axis=1), 1, rtol=1e-5)
    cos = np.sum(shipped * exact, axis=1)
    assert cos.min() > 0.995, cos
    # and they keep the model's neighbourhoods: CD3E's nearest other gene is the same
    sim_s, sim_e = shipped @ shipped.T, exact @ exact.T
    np.fill_diagonal(sim_s, -1)
    np.fill_diagonal(sim_e, -1)
    assert (sim_s.argmax(axis=1) == sim_e.argmax(axis=1)).mean() >= 0.9


def test_mixed_texts_keep_order_and_unknown_texts_are_exact(gene_texts):
    from scelmo_local.embedder import LocalMiniLM
    from scelmo_local.precomputed import shipped

    own = ["a gene of my own description.", "another text nobody shipped."]
    texts = [gene_texts[0], own[0], gene_texts[1], own[1], gene_texts[0]]
    emb = LocalMiniLM()
    V = emb.embed(texts, progress=False)
    assert emb.n_precomputed == 3
    table = shipped()
    np.testing.assert_array_equal(V[[0, 2, 4]], table.decode(table.rows([texts[0], texts[2], texts[4]])))
    np.testing.assert_array_equal(V[[1, 3]], LocalMiniLM(precomputed=False).embed(own, progress=False))
    assert (table.rows(own) == -1).all()


def test_session_options_and_batching_do_not_change_vectors(gene_texts):
    from scelmo_local.embedder import LocalMiniLM

    texts = gene_texts + ["short.", "a " * 300]  # one truncated at max_length
    ref = np.stack([LocalMiniLM(precomputed=False).embed_batch([t])[0] for t in texts])
    for opts in ({"batch_size": 5}, {"threads": 1, "batch_size": 16}, {"spin": False, "batch_size": 3}):
        V = LocalMiniLM(precomputed=False, **opts).embed(texts, progress=False)
        np.testing.assert_array_equal(V, ref, err_msg=str(opts))


def test_cache_key_changes_only_with_options_that_change_vectors(tmp_path, gene_texts):
    from scelmo_local.embedder import LocalMiniLM

    base = LocalMiniLM()
    assert base.cache_key == base.model_id  # the default keeps the key existing caches use
    for same in ({"precomputed": False}, {"spin": False}, {"threads": 1}, {"batch_size": 8}):
        assert LocalMiniLM(**same).cache_key == base.cache_key, same
    short = LocalMiniLM(max_length=8, precomputed=False)
    assert short.cache_key != base.cache_key and "max_length=8" in short.cache_key
    # vectors truncated at 8 tokens are never served to the 256-token configuration
    cache = Cache(tmp_path / "c.sqlite")
    v8 = short.embed(gene_texts[:3], cache=cache, progress=False)
    v256 = LocalMiniLM(precomputed=False).embed(gene_texts[:3], cache=cache, progress=False)
    assert np.sum(v8 * v256, axis=1).min() < 0.99
    keys = {r["model"] for r in cache.stats()}
    assert keys == {short.cache_key, base.cache_key}
    # another max_length does not use the shipped vectors (they were made at 256)
    assert LocalMiniLM(max_length=8)._precomputed() is None


def test_shipped_file_is_checksummed(monkeypatch):
    from scelmo_local import precomputed
    from scelmo_local.embedder import LocalMiniLM

    monkeypatch.setattr(precomputed, "SHA256", "0" * 64)
    precomputed.shipped.cache_clear()
    try:
        with pytest.raises(IntegrityError, match="precomputed = false"):
            LocalMiniLM().embed(["x"], progress=False)
        LocalMiniLM(precomputed=False).embed(["x"], progress=False)  # the way out works
    finally:
        monkeypatch.undo()
        precomputed.shipped.cache_clear()


def test_encode_round_trip(tmp_path):
    from scelmo_local import precomputed

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 384)) + rng.normal(size=384)  # a shared mean, like sentence vectors
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    texts = [f"text {i}" for i in range(300)]
    meta = precomputed.write(tmp_path / "v.npz.xz", texts, X, {"model": "test"}, step=0.004)
    table = precomputed.read(tmp_path / "v.npz.xz")
    assert len(table) == 300 and table.meta["model"] == "test"
    rows = table.rows(texts[::-1] + ["unknown"])
    assert rows[-1] == -1
    cos = np.sum(table.decode(rows[:-1]) * X[::-1], axis=1)
    assert cos.min() > 0.999 and abs(cos.min() - meta["row_cosine_min"]) < 1e-6
    with pytest.raises(ValueError, match="too fine"):
        precomputed.encode(X, step=1e-4)


def test_estimate_counts_shipped_vectors_as_no_work(tmp_path):
    """``estimate_embed_genes`` on an empty cache: protein-coding genes need no model run."""
    import scelmo

    _, est = scelmo.tl.estimate_embed_genes(genes=GENES, config={"cache.path": str(tmp_path / "empty.sqlite")})
    assert est.items == len(GENES) and est.cached == len(GENES) and est.calls == 0
    assert any("ship with the embedder" in n for n in est.notes)
    _, exact = scelmo.tl.estimate_embed_genes(
        genes=GENES, config={"cache.path": str(tmp_path / "empty.sqlite"), "embed.options": {"precomputed": False}}
    )
    assert exact.cached == 0 and exact.prompt_tokens > 0
