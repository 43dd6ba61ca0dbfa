"""The bundled offline embedder (real int8 MiniLM weights) and the vector cache."""

from __future__ import annotations

import numpy as np
import pytest

from scelmo.errors import IntegrityError, ProviderError
from scelmo.llm.cache import Cache
from scelmo.testing import HashEmbedder


@pytest.fixture(scope="module")
def local_embedder():
    from scelmo_local.embedder import LocalMiniLM

    return LocalMiniLM()


def test_real_model_is_semantic(local_embedder):
    from scelmo_local.knowledge import LocalGeneKnowledge

    texts = LocalGeneKnowledge().gene_texts(["CD3E", "CD3D", "HBB", "HBA1", "MS4A1", "CD79A"])
    V = local_embedder.embed([texts[g] for g in texts], progress=False)
    assert V.shape == (6, 384) and V.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1, rtol=1e-5)
    cos = V @ V.T
    assert cos[0, 1] > cos[0, 2]          # CD3E ~ CD3D more than HBB
    assert cos[2, 3] > cos[2, 4]          # HBB ~ HBA1 more than MS4A1
    assert cos[4, 5] > cos[4, 0]          # MS4A1 ~ CD79A more than CD3E


def test_weights_are_verified(local_embedder, monkeypatch):
    from scelmo_local import embedder as mod

    monkeypatch.setitem(mod.MODELS, "tampered", (mod.MODELS[mod.DEFAULT_MODEL][0], "0" * 64,
                                                 *mod.MODELS[mod.DEFAULT_MODEL][2:]))
    with pytest.raises(IntegrityError, match="does not match the pinned SHA-256"):
        mod.LocalMiniLM("tampered").embed(["x"], progress=False)


def test_cache_second_run_embeds_nothing(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    emb = HashEmbedder(batch_size=3)
    texts = [f"text {i}" for i in range(10)] + ["text 1"]  # duplicate embedded once
    first = emb.embed(texts, cache=cache, progress=False)
    assert emb.texts_embedded == 10 and emb.calls == 4
    again = HashEmbedder(batch_size=3)
    second = again.embed(texts, cache=cache, progress=False)
    assert again.texts_embedded == 0
    np.testing.assert_array_equal(first, second)
    stats = cache.stats()
    assert stats[0]["entries"] == 10 and stats[0]["role"] == "embed"
    # a new text only pays for itself
    third = HashEmbedder(batch_size=3)
    third.embed(texts + ["new"], cache=cache, progress=False)
    assert third.texts_embedded == 1


class _BadShape(HashEmbedder):
    name = "bad-shape"

    def embed_batch(self, texts):
        return np.zeros((len(texts) + 1, 4))


class _NaN(HashEmbedder):
    name = "nan"

    def embed_batch(self, texts):
        return np.full((len(texts), 4), np.nan)


@pytest.mark.parametrize("cls,match", [(_BadShape, "one vector per text"), (_NaN, "NaN")])
def test_bad_embedder_output_is_rejected(cls, match):
    with pytest.raises(ProviderError, match=match):
        cls().embed(["a", "b"], progress=False)


def test_cache_survives_interruption_and_concurrent_writers(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "shared.sqlite"
    code = (
        "import sys, numpy as np; from scelmo.llm.cache import Cache; c = Cache(sys.argv[1]); w = sys.argv[2]\n"
        "for i in range(200): c.put_vectors('m', {f'{w}-{i}': np.full(8, i, np.float32)})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), w]) for w in ("a", "b", "c")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    c = Cache(path)
    got = c.get_vectors("m", [f"{w}-{i}" for w in "abc" for i in range(200)])
    assert len(got) == 600 and got["b-7"][0] == 7
    c.put_texts("llm", "p1", {"h": "a description"})
    assert c.get_texts("llm", "p1", ["h", "x"]) == {"h": "a description"}
    assert c.clear(role="describe") == 1
