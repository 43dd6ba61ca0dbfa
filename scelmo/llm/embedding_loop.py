"""The text-embedding loop behind :meth:`scelmo.plugin.TextEmbedder.embed`.

A plugin's embedder implements only ``embed_batch`` (or the async ``aembed_batch``);
this module does the rest: deduplication, the cache, batching, concurrency and
retries for remote services, budget checks, progress and the checks on every vector
(shape, length, finite, non-zero) before anything is cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from scelmo.errors import ProviderError
from scelmo.llm.cache import text_hash
from scelmo.llm.calls import run_calls, with_retries
from scelmo.progress import progress_bar

if TYPE_CHECKING:
    from scelmo.llm.cache import Cache
    from scelmo.plugin import EmbeddingBatch, TextEmbedder


def shipped_vectors(embedder: TextEmbedder, unique: dict[str, str]) -> dict[str, np.ndarray]:
    """Vectors the embedder ships for some of the texts (``{hash: vector}``; no model run, no cache)."""
    if not unique:
        return {}
    known = embedder.precomputed(list(unique.values()))
    if known is None:
        return {}
    hit, vectors = known
    hit = np.asarray(hit, dtype=bool)
    vectors = np.asarray(vectors, dtype=np.float32)
    if hit.shape != (len(unique),) or vectors.shape[0] != int(hit.sum()):
        raise ProviderError(f"Embedder {embedder.model_id!r}: precomputed() returned {vectors.shape[0]} vectors "
                            f"for {int(hit.sum())} found texts of {len(unique)}; it must return one per found text.")
    return dict(zip([h for h, f in zip(unique, hit, strict=True) if f], vectors, strict=True))


def known_vectors(embedder: TextEmbedder, unique: dict[str, str], cache: Cache | None
                  ) -> tuple[dict[str, np.ndarray], set[str]]:
    """Vectors available without running the model (``{hash: vector}``), and the hashes of those the
    embedder ships: its :meth:`~scelmo.plugin.TextEmbedder.precomputed` ones, then the cache's."""
    found = shipped_vectors(embedder, unique)
    shipped = set(found)
    rest = [h for h in unique if h not in shipped]
    if cache is not None and rest:
        found.update(cache.get_vectors(embedder.cache_key, rest, legacy=embedder.legacy_cache_keys))
    return found, shipped


def embed_cached(
    embedder: TextEmbedder,
    texts: Sequence[str],
    *,
    cache: Cache | None = None,
    progress: bool | None = None,
    desc: str = "embedding texts",
    budget: Any = None,
) -> np.ndarray:
    """Vectors for ``texts`` from ``embedder`` (float32, ``(len(texts), d)``), using and filling ``cache``.

    Deduplicates by text hash, takes the vectors the embedder ships
    (:meth:`~scelmo.plugin.TextEmbedder.precomputed`), serves cached ones, embeds the rest in batches of
    ``options.batch_size`` (concurrently with retries for async embedders), commits each
    batch to the cache as it arrives and checks every vector (:func:`check_batch`).

    ``budget`` (a :class:`scelmo.llm.calls.Budget`) stops a remote run before it would
    exceed a cost limit; everything embedded up to then is cached.
    """

    texts = list(texts)
    hashes = [text_hash(t) for t in texts]
    unique = dict(zip(hashes, texts, strict=True))
    key = embedder.cache_key
    found, shipped = known_vectors(embedder, unique, cache)
    embedder.n_precomputed += sum(h in shipped for h in hashes)
    todo = sorted((h for h in unique if h not in found), key=lambda h: len(unique[h]))
    dim = next(iter(found.values())).shape[0] if found else None
    bs = max(1, int(getattr(embedder.options, "batch_size", 32)))
    batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
    # (nothing to embed, e.g. every text cached or shipped: no empty "0 text" bar)
    with progress_bar(total=len(todo), desc=desc, unit="text", enabled=progress if todo else False) as bar:

        def keep(batch: list[str], vecs: np.ndarray) -> None:
            nonlocal dim
            vecs = np.asarray(vecs, dtype=np.float32)
            dim = check_batch(embedder, vecs, len(batch), dim)
            new = dict(zip(batch, vecs, strict=True))
            if cache is not None:
                cache.put_vectors(key, new)
            found.update(new)
            bar.update(len(batch))
            if embedder.requires_network:
                bar.set_postfix(embedder.usage.postfix(), refresh=False)

        if embedder.is_async and batches:
            _embed_async(embedder, batches, unique, keep, budget)
        else:
            for batch in batches:
                keep(batch, embedder.embed_batch([unique[h] for h in batch]))
    if not texts:
        return np.zeros((0, dim or 0), dtype=np.float32)
    return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)

def _embed_async(embedder: TextEmbedder, batches: list[list[str]], unique: dict[str, str], keep: Any, budget: Any) -> None:
    policy = embedder.retry_policy()

    async def call(batch: list[str]) -> EmbeddingBatch:
        return await with_retries(
            lambda: embedder.aembed_batch([unique[h] for h in batch]), policy, usage=embedder.usage, label=embedder.model_id
        )

    def on_result(batch: list[str], result: EmbeddingBatch) -> None:
        embedder.usage.add(prompt_tokens=result.prompt_tokens, cost=result.cost)
        keep(batch, result.vectors)

    run_calls(
        batches,
        call,
        on_result=on_result,
        concurrency=int(getattr(embedder.options, "concurrency", 1)),
        budget=budget,
        estimate_cost=lambda b: embedder.price(embedder.count_tokens([unique[h] for h in b])),
        actual_cost=lambda r: r.cost,
        component=embedder,
    )

def check_batch(embedder: TextEmbedder, vecs: np.ndarray, n: int, dim: int | None) -> int:
    if vecs.ndim != 2 or vecs.shape[0] != n:
        raise ProviderError(
            f"Embedder {embedder.model_id!r} returned an array of shape {vecs.shape} for {n} "
            "texts; expected one vector per text."
        )
    if dim is not None and vecs.shape[1] != dim:
        raise ProviderError(
            f"Embedder {embedder.model_id!r} returned vectors of length {vecs.shape[1]}, "
            f"but earlier ones (or cached ones) have length {dim}. Clear the cache for "
            "this model (`scelmo cache clear --model ...`) if the model changed."
        )
    if not np.isfinite(vecs).all():
        raise ProviderError(f"Embedder {embedder.model_id!r} returned NaN or infinite values.")
    zero = np.flatnonzero(~np.any(vecs, axis=1))
    if zero.size:
        raise ProviderError(
            f"Embedder {embedder.model_id!r} returned {zero.size} all-zero vector(s) (of {n}); a zero "
            "vector carries no meaning and is not used or cached. Check the server and model."
        )
    return int(vecs.shape[1])
