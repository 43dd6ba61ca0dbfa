"""Base classes of plugin components.

Each component has a ``name``, a nested pydantic ``Options`` model that forbids
unknown keys, and one or two abstract methods. Batching, caching, validation and
progress live here, so a plugin implements only the part that is specific to it:

=====================  =========================================  ==========================
base class             plugin implements                          base class provides
=====================  =========================================  ==========================
:class:`KnowledgeSource`  ``describe(genes)`` (+ ``vocabulary()``)   -
:class:`Provider`      ``complete(prompts)``                      -
:class:`TextEmbedder`  ``embed_batch(texts)``                     cache, batching, checks,
                                                                  progress (``embed``)
:class:`Aggregator`    ``aggregate_chunk(chunk, prepared)``       row chunking of CSR/CSC/
                                                                  dense/backed data, empty-
                                                                  cell handling, coverage
:class:`TaskHead`      ``fit`` / ``predict``                      -
=====================  =========================================  ==========================
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from .cache import Cache
    from .genes import GeneVocabulary


class ComponentOptions(BaseModel):
    """Options of a component; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Component(ABC):  # noqa: B024 - abstract methods live in the subclasses
    """Common base: a ``name`` and validated ``Options``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "component"
    #: Whether using this component sends data over the network.
    requires_network: ClassVar[bool] = False
    Options: ClassVar[type[ComponentOptions]] = ComponentOptions

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.Options(**options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<options>'}: {err['msg']}"
                for err in exc.errors()
            )
            allowed = ", ".join(self.Options.model_fields) or "none"
            raise ConfigError(
                f"Invalid options for {self.kind} {self.name!r}: {problems}. "
                f"Allowed options: {allowed}."
            ) from None

    def describe_self(self) -> dict[str, str | int | float]:
        """Provenance of this component: strings and numbers only, secrets left out or masked."""
        from .redact import is_secret_name, mask

        out: dict[str, str | int | float] = {"name": self.name}
        for key, value in self.options.model_dump().items():
            if isinstance(value, str | int | float) and not is_secret_name(key):
                out[key] = mask(value)
        return out


class ModelComponent(Component):  # noqa: B024 - abstract methods live in the subclasses
    """A component serving a role's model string (``model`` is the part after ``name/``)."""

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.model = model

    @property
    def model_id(self) -> str:
        """Identifies what this component produces (provenance, messages)."""
        return f"{self.name}/{self.model}" if self.model and self.model != self.name else self.name

    @property
    def cache_key(self) -> str:
        """Who answers, as the cache names it (never a secret).

        ``model_id`` by default. A component whose answers also depend on where it sends
        requests or on options (an endpoint, ``max_tokens``, ``dimensions``...) must
        override it so that a different endpoint or option never reuses another's answers.
        """
        return self.model_id

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        """Keys older versions stored this component's answers under (a bare model id, no
        endpoint); the cache re-keys such entries to :attr:`cache_key` on first use."""
        return ()

    def retry_policy(self) -> Any:
        """How calls of this component are retried: its ``options`` (:class:`RemoteOptions`) or the defaults."""
        from .calls import RetryPolicy

        make = getattr(self.options, "retry_policy", None)
        return make() if make is not None else RetryPolicy()


# --------------------------------------------------------------------------- knowledge
class KnowledgeSource(ModelComponent):
    """Writes a short text about each gene (offline table, database, ...)."""

    kind = "knowledge source"
    #: A version string that changes whenever the texts could change (cache key).
    version: ClassVar[str] = "0"

    @abstractmethod
    def describe(self, genes: Sequence[str]) -> dict[str, str]:
        """Texts for the given (resolved) gene symbols; genes it knows nothing of are omitted."""

    def vocabulary(self) -> GeneVocabulary | None:
        """Gene-name vocabulary (aliases, Ensembl IDs, orthologs) for resolving names."""
        return None

    def phrases(self, genes: Sequence[str]) -> dict[str, list[str]]:
        """Short statements of what each gene does (processes, pathways), used to derive
        marker genes for cell-type names. Default: the description cut into clauses."""
        return {g: split_phrases(t) for g, t in self.describe(genes).items()}


_PHRASE_SPLIT = re.compile(r"[;.]\s+|\.$")


def split_phrases(text: str) -> list[str]:
    """A description cut into its clauses (GO terms, pathways, sentences)."""
    return [p.strip() for p in _PHRASE_SPLIT.split(text or "") if 3 <= len(p.strip()) <= 300]


# --------------------------------------------------------------------------- LLM provider
@dataclass
class Completion:
    """One answer of a :class:`Provider`, with what it used (``cost`` in USD, ``None``: unknown)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0


class RemoteOptions(ComponentOptions):
    """Options shared by components that call a remote service."""

    #: Requests in flight at once.
    concurrency: int = Field(8, ge=1, le=1024)
    #: Seconds one request may take in all (a total deadline, not per read) before it is
    #: abandoned (and retried).
    timeout: float = Field(60.0, gt=0)
    #: Extra attempts on rate limits, 5xx, timeouts and connection errors.
    retries: int = Field(5, ge=0, le=100)
    #: First backoff delay in seconds (doubles per attempt, with full jitter).
    backoff: float = Field(0.5, ge=0)
    #: Longest single wait between attempts, in seconds.
    max_backoff: float = Field(30.0, ge=0)

    def retry_policy(self) -> Any:
        from .calls import RetryPolicy

        return RetryPolicy(retries=self.retries, base_delay=self.backoff, max_delay=self.max_backoff,
                           timeout=self.timeout)


class Provider(ModelComponent):
    """Generates text with a language model (the ``describe`` role when it is an LLM).

    Plugins implement one async call, :meth:`acomplete`. Concurrency, retries, the
    cache, cost accounting and answer checks are done by :mod:`scelmo.describe`
    (and :mod:`scelmo.calls`) for every provider alike.
    """

    kind = "LLM provider"
    requires_network = True
    Options = RemoteOptions

    @abstractmethod
    async def acomplete(self, prompt: str, *, system: str | None = None) -> Completion:
        """One completion. Raise :class:`~scelmo.errors.TransientProviderError` for
        failures worth retrying, :class:`~scelmo.errors.ProviderError` otherwise."""

    def count_tokens(self, prompt: str, *, system: str | None = None) -> int:
        """Prompt tokens of one request (for estimates); a rough 4-characters rule by default."""
        return max(1, (len(prompt) + len(system or "")) // 4)

    def expected_completion_tokens(self) -> int:
        """Completion tokens to expect per answer (for estimates)."""
        return int(getattr(self.options, "max_tokens", None) or 300)

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Cost in USD of that many tokens; ``None`` when unknown."""
        return None

    def complete(self, prompts: Sequence[str], *, system: str | None = None) -> list[str]:
        """One completion per prompt, in order (no cache; see :func:`scelmo.describe.describe`)."""
        from .calls import run_calls, with_retries

        out: dict[int, str] = {}
        policy = self.retry_policy()
        run_calls(
            list(range(len(prompts))),
            lambda i: with_retries(lambda: self.acomplete(prompts[i], system=system), policy, label=self.model_id),
            on_result=lambda i, c: out.__setitem__(i, c.text),
            concurrency=int(getattr(self.options, "concurrency", 8)),
        )
        return [out[i] for i in range(len(prompts))]


# --------------------------------------------------------------------------- embedders
class EmbedderOptions(ComponentOptions):
    batch_size: int = Field(32, ge=1)


@dataclass
class EmbeddingBatch:
    """What one remote embedding request returned."""

    vectors: np.ndarray
    prompt_tokens: int = 0
    cost: float | None = 0.0


class TextEmbedder(ModelComponent):
    """Turns texts into fixed-length vectors.

    Subclasses implement :meth:`embed_batch` (local models) or the async
    :meth:`aembed_batch` (remote services: batches then run ``options.concurrency``
    at a time, with retries); callers use :meth:`embed`, which deduplicates, serves
    what it can from the cache, embeds the rest in batches (committing each batch to
    the cache as it arrives), checks every result and shows progress.
    """

    kind = "text embedder"
    Options = EmbedderOptions

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts``: a ``(len(texts), d)`` float array, in order."""
        raise NotImplementedError(f"{type(self).__name__} implements neither embed_batch nor aembed_batch")

    async def aembed_batch(self, texts: list[str]) -> EmbeddingBatch:
        """Async variant for remote services; the default runs :meth:`embed_batch`."""
        return EmbeddingBatch(np.asarray(self.embed_batch(texts), dtype=np.float32))

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the texts would use (for estimates); a rough 4-characters rule by default."""
        return sum(max(1, len(t) // 4) for t in texts)

    def price(self, prompt_tokens: int) -> float | None:
        """Cost in USD of embedding that many tokens (0 for local models; ``None``: unknown)."""
        return None if self.requires_network else 0.0

    @property
    def is_async(self) -> bool:
        return type(self).aembed_batch is not TextEmbedder.aembed_batch

    def embed(
        self,
        texts: Sequence[str],
        *,
        cache: Cache | None = None,
        progress: bool | None = None,
        desc: str = "embedding texts",
        budget: Any = None,
    ) -> np.ndarray:
        """Vectors for ``texts`` (float32, ``(len(texts), d)``), using and filling ``cache``.

        ``budget`` (a :class:`scelmo.calls.Budget`) stops a remote run before it would
        exceed a cost limit; everything embedded up to then is cached.
        """
        from .cache import text_hash
        from .calls import Usage
        from .progress import progress_bar

        texts = list(texts)
        hashes = [text_hash(t) for t in texts]
        unique = dict(zip(hashes, texts, strict=True))
        key = self.cache_key
        found: dict[str, np.ndarray] = (
            cache.get_vectors(key, list(unique), legacy=self.legacy_cache_keys) if cache else {}
        )
        todo = sorted((h for h in unique if h not in found), key=lambda h: len(unique[h]))
        dim = next(iter(found.values())).shape[0] if found else None
        bs = max(1, int(getattr(self.options, "batch_size", 32)))
        batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        self.usage = getattr(self, "usage", None) or Usage()
        with progress_bar(total=len(todo), desc=desc, unit="text", enabled=progress) as bar:

            def keep(batch: list[str], vecs: np.ndarray) -> None:
                nonlocal dim
                vecs = np.asarray(vecs, dtype=np.float32)
                dim = self._check_batch(vecs, len(batch), dim)
                new = dict(zip(batch, vecs, strict=True))
                if cache is not None:
                    cache.put_vectors(key, new)
                found.update(new)
                bar.update(len(batch))
                if self.requires_network:
                    bar.set_postfix(self.usage.postfix(), refresh=False)

            if self.is_async and batches:
                self._embed_async(batches, unique, keep, budget)
            else:
                for batch in batches:
                    keep(batch, self.embed_batch([unique[h] for h in batch]))
        if not texts:
            return np.zeros((0, dim or 0), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)

    def _embed_async(self, batches: list[list[str]], unique: dict[str, str], keep: Any, budget: Any) -> None:
        from .calls import run_calls, with_retries

        policy = self.retry_policy()

        async def call(batch: list[str]) -> EmbeddingBatch:
            return await with_retries(
                lambda: self.aembed_batch([unique[h] for h in batch]), policy, usage=self.usage, label=self.model_id
            )

        def on_result(batch: list[str], result: EmbeddingBatch) -> None:
            self.usage.add(prompt_tokens=result.prompt_tokens, cost=result.cost)
            keep(batch, result.vectors)

        run_calls(
            batches,
            call,
            on_result=on_result,
            concurrency=int(getattr(self.options, "concurrency", 1)),
            budget=budget,
            estimate_cost=lambda b: self.price(self.count_tokens([unique[h] for h in b])),
            actual_cost=lambda r: r.cost,
        )

    def _check_batch(self, vecs: np.ndarray, n: int, dim: int | None) -> int:
        if vecs.ndim != 2 or vecs.shape[0] != n:
            raise ProviderError(
                f"Embedder {self.model_id!r} returned an array of shape {vecs.shape} for {n} "
                "texts; expected one vector per text."
            )
        if dim is not None and vecs.shape[1] != dim:
            raise ProviderError(
                f"Embedder {self.model_id!r} returned vectors of length {vecs.shape[1]}, "
                f"but earlier ones (or cached ones) have length {dim}. Clear the cache for "
                "this model (`scelmo cache clear --model ...`) if the model changed."
            )
        if not np.isfinite(vecs).all():
            raise ProviderError(f"Embedder {self.model_id!r} returned NaN or infinite values.")
        zero = np.flatnonzero(~np.any(vecs, axis=1))
        if zero.size:
            raise ProviderError(
                f"Embedder {self.model_id!r} returned {zero.size} all-zero vector(s) (of {n}); a zero "
                "vector carries no meaning and is not used or cached. Check the server and model."
            )
        return int(vecs.shape[1])


# --------------------------------------------------------------------------- aggregators
class Aggregator(Component):
    """Combines gene vectors into cell vectors, weighted by expression.

    Subclasses implement :meth:`aggregate_chunk` on one block of rows (a float32
    CSR matrix or a float32 ndarray). :meth:`aggregate` streams the rows of any
    supported matrix through it in bounded memory.
    """

    kind = "aggregator"
    #: Whether :meth:`prepare` accepts ``precision="bfloat16"`` (half-size gene vectors).
    supports_bfloat16: ClassVar[bool] = False

    def prepare(self, embedding: np.ndarray) -> Any:
        """Pre-process the genes x d matrix once (e.g. re-lay it for a fast kernel)."""
        return embedding

    @abstractmethod
    def aggregate_chunk(self, chunk: Any, prepared: Any, *, n_genes: int) -> np.ndarray:
        """Cells x d vectors for one row block. ``n_genes`` is the number of columns of X."""

    def row_weights(self, chunk: Any, n_genes: int) -> np.ndarray | None:
        """Per-cell weights ``w`` when the aggregator is linear, ``C = diag(w) X E``; else ``None``.

        Linear aggregators can embed per-gene centred input without densifying it
        (``diag(w) (X - 1 mu^T) E = diag(w) X E - w (mu^T E)``); others cannot.
        """
        return None

    @property
    def linear(self) -> bool:
        """Whether this aggregator defines :meth:`row_weights` (can embed centred input)."""
        return type(self).row_weights is not Aggregator.row_weights

    def plan(
        self,
        embedding: np.ndarray,
        *,
        genes: Sequence[str] | None = None,
        settings: Any = None,
        l2_normalize: bool = False,
        normalize: bool = False,
        columns: np.ndarray | None = None,
        center: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        precision: str = "float32",
    ) -> BlockPlan:
        """Everything a row block needs, prepared once (see :meth:`aggregate` for the arguments).

        The plan is picklable: a distributed run sends it to each worker once
        (:mod:`scelmo.distributed`) and calls :meth:`BlockPlan.run` on every block there.
        ``precision="bfloat16"`` stores the prepared gene vectors in bfloat16 when the
        aggregator supports it (accumulation stays float32).
        """
        n_genes = int(embedding.shape[0])
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        covered = np.abs(embedding).sum(axis=1) > 0
        sel = np.arange(n_genes) if columns is None else np.asarray(columns, dtype=np.int64)
        subset = columns is not None and len(sel) != n_genes
        E = embedding[sel] if subset else embedding  # float32; copied only when genes are selected
        if scale is not None:
            s = np.asarray(scale, dtype=np.float64)[sel]
            E = E * np.divide(1.0, s, out=np.zeros_like(s), where=s > 0).astype(np.float32)[:, None]
        if precision == "bfloat16":  # the centring offset must use the very vectors the kernel reads
            from .matrix import round_to_bfloat16

            E = round_to_bfloat16(E)
        offset = None
        if center is not None:
            if not self.linear:
                raise ConfigError(
                    f"Aggregator {self.name!r} is not linear, so it cannot embed centred input; "
                    "use transform='none' with it."
                )
            mu = np.asarray(center, dtype=np.float64)[sel]
            acc = np.zeros(E.shape[1])
            for lo in range(0, len(mu), 4096):  # float64 accumulation, float64 copies of E bounded
                acc += mu[lo : lo + 4096] @ E[lo : lo + 4096].astype(np.float64)
            offset = acc.astype(np.float32)
        E = np.ascontiguousarray(E, dtype=np.float32)
        self.genes = [genes[i] for i in sel] if genes is not None else None
        self.settings = settings
        if precision not in ("float32", "bfloat16"):
            raise ConfigError(f"precision must be 'float32' or 'bfloat16', got {precision!r}.")
        if precision != "float32" and not self.supports_bfloat16:
            raise ConfigError(f"Aggregator {self.name!r} has no bfloat16 path; use precision='float32'.")
        prepared = self.prepare(E, precision=precision) if precision != "float32" else self.prepare(E)
        return BlockPlan(
            aggregator=self, prepared=prepared, n_genes=n_genes, columns=sel if subset else None,
            covered=covered.astype(np.float32), sel_covered=covered[sel].astype(np.float32), offset=offset,
            normalize=bool(normalize), l2_normalize=bool(l2_normalize), n_genes_covered=int(covered.sum()),
            dim=int(E.shape[1]),
        )

    def aggregate(
        self,
        matrix: Any,
        embedding: np.ndarray,
        *,
        chunk_size: int = 10_000,
        progress: bool | None = None,
        out: np.ndarray | None = None,
        genes: Sequence[str] | None = None,
        settings: Any = None,
        l2_normalize: bool = False,
        normalize: bool = False,
        columns: np.ndarray | None = None,
        center: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        precision: str = "float32",
    ) -> AggregationResult:
        """Stream ``matrix`` (cells x genes) in row chunks and aggregate each chunk.

        ``genes`` (the resolved gene names of the columns) and ``settings`` are made
        available to :meth:`aggregate_chunk` as ``self.genes`` / ``self.settings`` for
        aggregators that need them (e.g. ones that write text about a cell).
        ``out`` may be any array-like supporting ``out[start:stop] = block`` (e.g. an
        on-disk dataset, see :func:`scelmo.io.streamed_h5ad_copy`); ``l2_normalize``
        scales each non-zero cell vector to unit length.

        The input transform happens chunk by chunk, so memory stays independent of the
        number of cells and X is never densified: ``normalize`` log-normalises each
        chunk of counts (:func:`scelmo.selection.normalize_chunk`); ``columns`` keeps
        only those genes (indices into the matrix's columns); ``center`` and ``scale``
        (per gene, aligned to the matrix's columns) turn X into ``(X - center) / scale``,
        computed as ``X @ (E / scale) - (center / scale) @ E`` for linear aggregators.
        ``precision="bfloat16"`` keeps the gene vectors in bfloat16 (half the memory;
        float32 accumulation) where the aggregator supports it.
        """
        from .matrix import iter_row_chunks, n_rows_cols
        from .progress import progress_bar

        n_cells, n_genes = n_rows_cols(matrix)
        if embedding.shape[0] != n_genes:
            raise ConfigError(
                f"The gene embedding has {embedding.shape[0]} rows but the matrix has "
                f"{n_genes} genes; they must be aligned."
            )
        plan = self.plan(embedding, genes=genes, settings=settings, l2_normalize=l2_normalize,
                         normalize=normalize, columns=columns, center=center, scale=scale, precision=precision)
        total_expr = covered_expr = 0.0
        empty: list[np.ndarray] = []
        with progress_bar(total=n_cells, desc=f"aggregating ({self.name})", unit="cell", enabled=progress) as bar:
            for start, chunk in iter_row_chunks(matrix, chunk_size):
                part = plan.run(chunk, start, checked=True)
                total_expr += part.total_expression
                covered_expr += part.covered_expression
                if part.empty_cells.size:
                    empty.append(part.empty_cells)
                if out is None:  # width from the first block: an aggregator may change d
                    out = np.zeros((n_cells, part.block.shape[1]), dtype=np.float32)
                out[start : start + chunk.shape[0]] = part.block
                bar.update(chunk.shape[0])
        if out is None:
            out = np.zeros((n_cells, embedding.shape[1]), dtype=np.float32)
        empty_idx = np.concatenate(empty) if empty else np.zeros(0, dtype=np.int64)
        return AggregationResult(
            embedding=out,
            empty_cells=empty_idx,
            total_expression=total_expr,
            covered_expression=covered_expr,
            n_genes=n_genes,
            n_genes_covered=plan.n_genes_covered,
        )


@dataclass
class BlockPart:
    """One row block's result: cell vectors, coverage sums and its empty cells (global rows)."""

    block: np.ndarray
    total_expression: float
    covered_expression: float
    empty_cells: np.ndarray


@dataclass
class BlockPlan:
    """A prepared aggregation (:meth:`Aggregator.plan`): turns any row block into cell vectors."""

    aggregator: Aggregator
    prepared: Any
    n_genes: int
    columns: np.ndarray | None
    covered: np.ndarray
    sel_covered: np.ndarray
    offset: np.ndarray | None
    normalize: bool
    l2_normalize: bool
    n_genes_covered: int
    dim: int

    def run(self, chunk: Any, start: int = 0, *, checked: bool = False) -> BlockPart:
        """Cell vectors of ``chunk`` (rows ``start...`` of the data; any CSR/CSC/dense block).

        ``checked=True``: the chunk is already float32 CSR/ndarray with checked values
        (as :func:`scelmo.matrix.iter_row_chunks` yields them).
        """
        from .matrix import _as_float32, check_values
        from .selection import normalize_chunk

        if not checked:
            chunk = _as_float32(chunk)
            check_values(chunk, start)
        stop = start + chunk.shape[0]
        if self.normalize:
            chunk = normalize_chunk(chunk)
        total = float(np.asarray(chunk.sum(axis=1)).ravel().sum(dtype=np.float64))
        covered = float(np.asarray(chunk @ self.covered).ravel().sum(dtype=np.float64))
        if self.columns is not None:
            chunk = chunk[:, self.columns]
        n_sel = chunk.shape[1]
        agg = self.aggregator
        block = agg.aggregate_chunk(chunk, self.prepared, n_genes=n_sel)
        if self.offset is not None:
            block -= agg.row_weights(chunk, n_sel)[:, None] * self.offset[None, :]
        is_empty = np.asarray(chunk @ self.sel_covered).ravel() <= 0
        if is_empty.any():
            block[is_empty] = 0.0
        if self.l2_normalize:
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            np.divide(block, norms, out=block, where=norms > 0)
        if not np.isfinite(block).all():
            raise ConfigError(
                f"Aggregator {agg.name!r} produced non-finite values for cells "
                f"{start}..{stop}; this is a bug in the aggregator."
            )
        return BlockPart(block, total, covered, np.flatnonzero(is_empty) + start)


@dataclass
class AggregationResult:
    """What :meth:`Aggregator.aggregate` returns."""

    embedding: np.ndarray
    empty_cells: np.ndarray
    total_expression: float
    covered_expression: float
    n_genes: int
    n_genes_covered: int

    @property
    def expression_coverage(self) -> float:
        """Covered / total expression; ``nan`` when not computed (a lazy dask result)."""
        if np.isnan(self.total_expression):
            return float("nan")
        return self.covered_expression / self.total_expression if self.total_expression > 0 else 0.0


# --------------------------------------------------------------------------- heads
class TaskHead(Component):
    """A model on top of embeddings (zero-shot kNN, fine-tuned torch heads, ...)."""

    kind = "task head"

    @abstractmethod
    def fit(self, embeddings: np.ndarray, labels: np.ndarray | None = None, **kwargs: Any) -> TaskHead:
        """Learn from cell embeddings (and labels, for supervised heads); returns ``self``."""

    @abstractmethod
    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Predictions for new cell embeddings."""


# --------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class PromptTemplate:
    """A named, versioned prompt; ``{item}`` is replaced by the gene / cell type / drug."""

    name: str
    version: str
    template: str
    subject: str = "gene"
    system: str | None = None
    description: str = field(default="", compare=False)

    @property
    def hash(self) -> str:
        """Changes whenever the text sent to the model could change (cache key, provenance)."""
        payload = "\x1f".join([self.name, self.version, self.template, self.system or ""])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def render(self, item: str) -> str:
        return self.template.format(item=item)
