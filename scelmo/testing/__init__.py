"""Fakes and builders for testing scelmo and its plugins (no network, no model).

Example::

    from scelmo import plugin, testing
    plugin.register_plugin(testing.FakePlugin(), "fake")
    scelmo.tl.embed_cells(adata, config={"embed.model": "fake-hash", "describe.model": "fake-knowledge"})
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from scelmo.genes import GeneEmbeddings, GeneVocabulary
from scelmo.plugin import EmbedderOptions, KnowledgeSource, TextEmbedder, hookimpl


class HashEmbedderOptions(EmbedderOptions):
    dim: int = 16


class HashEmbedder(TextEmbedder):
    """Deterministic pseudo-random unit vectors from a text's hash; counts its calls."""

    name = "fake-hash"
    Options = HashEmbedderOptions

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(model, **options)
        self.calls = 0
        self.texts_embedded = 0

    @property
    def model_id(self) -> str:
        return f"fake-hash/{self.options.dim}"

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.empty((len(texts), self.options.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.options.dim)
            out[i] = v / np.linalg.norm(v)
        return out


class FakeKnowledge(KnowledgeSource):
    """Describes any gene as ``"gene <SYMBOL>"``; vocabulary = the upper-cased names it is given."""

    name = "fake-knowledge"

    def gene_texts(self, genes: Sequence[str]) -> dict[str, str]:
        return {g: f"gene {g}" for g in genes}

    def vocabulary(self) -> GeneVocabulary | None:
        return None


class FakePlugin:
    """A plugin object registering :class:`HashEmbedder` and :class:`FakeKnowledge`."""

    @hookimpl
    def register_embedders(self, register):
        register(HashEmbedder)

    @hookimpl
    def register_knowledge_sources(self, register):
        register(FakeKnowledge)


def random_gene_embeddings(genes: Sequence[str], dim: int = 8, seed: int = 0) -> GeneEmbeddings:
    """Random float32 vectors for ``genes`` (a stand-in for a real table)."""
    rng = np.random.default_rng(seed)
    return GeneEmbeddings(list(genes), rng.standard_normal((len(genes), dim)).astype(np.float32),
                          {"embed_model": "random", "describe_model": "none"})


def make_adata(n_cells: int = 50, genes: Sequence[str] | None = None, *, density: float = 0.2,
               seed: int = 0, fmt: str = "csr", dtype: Any = np.float32) -> Any:
    """A small AnnData with Poisson-like counts; ``fmt`` is ``"csr"``, ``"csc"`` or ``"dense"``."""
    import anndata as ad
    import scipy.sparse as sp

    genes = list(genes) if genes is not None else [f"G{i}" for i in range(30)]
    rng = np.random.default_rng(seed)
    X = (rng.random((n_cells, len(genes))) < density) * rng.integers(1, 20, (n_cells, len(genes)))
    X = X.astype(dtype)
    if fmt == "csr":
        X = sp.csr_matrix(X)
    elif fmt == "csc":
        X = sp.csc_matrix(X)
    adata = ad.AnnData(X)
    adata.var_names = genes
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    return adata
