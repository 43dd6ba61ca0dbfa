"""Base classes of plugin components (the task-head contract is in :mod:`scelmo.plugin.heads`).

Each component has a ``name``, a nested pydantic ``Options`` model that forbids
unknown keys, and one or two abstract methods. Batching, caching, validation and
progress live here, so a plugin implements only the part that is specific to it:

=====================  =========================================  ==========================
base class             plugin implements                          base class provides
=====================  =========================================  ==========================
:class:`KnowledgeSource`  ``gene_texts(genes)`` (+ ``vocabulary()``) -
:class:`Provider`      ``complete(prompts)``                      -
:class:`TextEmbedder`  ``embed_batch(texts)``                     cache, batching, checks,
                                                                  progress (``embed``)
:class:`Aggregator`    ``aggregate_chunk(chunk, prepared)``       row chunking of CSR/CSC/
                                                                  dense/backed data, empty-
                                                                  cell handling, coverage
:class:`TaskHead`      ``fit``, ``save_state``, ``load_state``     data preparation, saving
                       and what its capabilities promise          (:class:`scelmo.Model`;
                       (see :mod:`scelmo.plugin.heads`)           contract in ``heads.py``)
=====================  =========================================  ==========================
"""

from __future__ import annotations

import hashlib
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from scelmo.errors import ConfigError
from scelmo.expression import aggregation
from scelmo.expression.aggregation import (
    AggregationResult,
    BlockPlan,
)
from scelmo.llm.calls import RetryPolicy, Usage, run_calls, with_retries
from scelmo.llm.embedding_loop import embed_cached
from scelmo.redact import is_secret_name, mask

if TYPE_CHECKING:
    from scelmo.genes import GeneVocabulary
    from scelmo.knowledge.cell_types import CellTypeMarkers
    from scelmo.llm.cache import Cache


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

    def provenance_record(self) -> dict[str, str | int | float]:
        """Provenance of this component: strings and numbers only, secrets left out or masked.

        Recorded in ``uns["scelmo"]`` and in saved gene tables; override to add facts
        (call ``super().provenance_record()`` first).
        """
        out: dict[str, str | int | float] = {"name": self.name}
        origin = getattr(type(self), "scelmo_origin", "")
        if origin:  # a third-party plugin's component: which distribution and version made the result
            out["plugin"] = origin
        for key, value in self.options.model_dump().items():
            if isinstance(value, str | int | float) and not is_secret_name(key):
                out[key] = mask(value)
        return out

    def warm_up(self) -> None:
        """Blocking set-up before a run's first request (e.g. importing a client library),
        called by scelmo outside every request's deadline (``options.timeout``). Default:
        nothing. An LLM-path trial: litellm's ~4 s import counted against the first requests'
        deadline, and a 3 s timeout failed every one of them with nothing sent."""
        return None

    def describe_self(self) -> dict[str, str | int | float]:
        """Deprecated name of :meth:`provenance_record`."""
        warnings.warn("Component.describe_self() is now provenance_record().", DeprecationWarning, stacklevel=2)
        return self.provenance_record()


#: Options that change how calls are made, not what they answer: left out of :attr:`ModelComponent.cache_key`.
CALL_OPTIONS = frozenset({"concurrency", "timeout", "retries", "backoff", "max_backoff", "batch_size", "progress"})


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

        ``model_id``, plus a digest of the options set to other than their defaults, except
        how calls are made (:data:`CALL_OPTIONS`: concurrency, timeouts, retries ...) and
        secrets: an endpoint, ``max_tokens`` or ``dim`` of its own never reuses another
        setting's answers. Override it to name the options that matter more readably.
        """
        defaults = {name: f.get_default(call_default_factory=True)
                    for name, f in type(self.options).model_fields.items() if not f.is_required()}
        changed = {k: v for k, v in self.options.model_dump(mode="json").items()
                   if k not in CALL_OPTIONS and not is_secret_name(k)
                   and (k not in defaults or v != to_jsonable_python(defaults[k]))}
        if not changed:
            return self.model_id
        digest = hashlib.sha256(repr(sorted(changed.items())).encode()).hexdigest()[:12]
        return f"{self.model_id} [options={digest}]"

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        """Keys older versions stored this component's answers under (a bare model id, no
        endpoint); the cache re-keys such entries to :attr:`cache_key` on first use."""
        return ()

    def retry_policy(self) -> Any:
        """How calls of this component are retried: its ``options`` (:class:`RemoteOptions`) or the defaults."""

        make = getattr(self.options, "retry_policy", None)
        return make() if make is not None else RetryPolicy()


# --------------------------------------------------------------------------- knowledge
class KnowledgeSource(ModelComponent):
    """Writes a short text about each gene (offline table, database, ...)."""

    kind = "knowledge source"
    #: A version string that changes whenever the texts could change (cache key).
    version: ClassVar[str] = "0"

    def gene_texts(self, genes: Sequence[str]) -> dict[str, str]:
        """Texts for the given (resolved) gene symbols; genes it knows nothing of are omitted.

        Every knowledge source implements this. (A source written when it was called
        ``describe`` still works: its ``describe`` is used.)
        """
        if type(self).describe is not KnowledgeSource.describe:
            return self.describe(genes)
        raise NotImplementedError(f"{type(self).__name__} implements neither gene_texts nor describe")

    def describe(self, genes: Sequence[str]) -> dict[str, str]:
        """Deprecated name of :meth:`gene_texts`."""
        warnings.warn("KnowledgeSource.describe() is now gene_texts().", DeprecationWarning, stacklevel=2)
        return self.gene_texts(genes)

    def vocabulary(self) -> GeneVocabulary | None:
        """Gene-name vocabulary (aliases, Ensembl IDs, orthologs) for resolving names."""
        return None

    def phrases(self, genes: Sequence[str]) -> dict[str, list[str]]:
        """Short statements of what each gene does (processes, pathways), used to derive
        marker genes for cell-type names. Default: the description cut into clauses."""
        return {g: split_phrases(t) for g, t in self.gene_texts(genes).items()}

    def cell_type_markers(self) -> list[CellTypeMarkers]:
        """Curated marker genes of known cell types (canonical human symbols), used first
        by names-only annotation (:mod:`scelmo.knowledge.cell_types`). Default: none."""
        return []

    def cell_type_definition_markers(self) -> list[CellTypeMarkers]:
        """Genes that definitions of cell types name ("A cell that secretes glucagon" ->
        GCG; the offline default reads the Cell Ontology), used by names-only annotation
        for names that no :meth:`cell_type_markers` set matches. Default: none."""
        return []


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
        return RetryPolicy(retries=self.retries, base_delay=self.backoff, max_delay=self.max_backoff,
                           timeout=self.timeout)


class Provider(ModelComponent):
    """Generates text with a language model (the ``describe`` role when it is an LLM).

    Plugins implement one async call, :meth:`acomplete`. Concurrency, retries, the
    cache, cost accounting and answer checks are done by :mod:`scelmo.describe`
    (and :mod:`scelmo.llm.calls`) for every provider alike.
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
        """One completion per prompt, in order (no cache; see :func:`scelmo.describe`)."""
        out: dict[int, str] = {}
        policy = self.retry_policy()
        run_calls(
            list(range(len(prompts))),
            lambda i: with_retries(lambda: self.acomplete(prompts[i], system=system), policy, label=self.model_id),
            on_result=lambda i, c: out.__setitem__(i, c.text),
            concurrency=int(getattr(self.options, "concurrency", 8)),
            component=self,
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

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(model, **options)
        #: Calls, tokens and cost of the remote requests made so far.
        self.usage = Usage()
        #: Texts answered from :meth:`precomputed` vectors so far (no model run).
        self.n_precomputed = 0

    def precomputed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Vectors this embedder ships for some of ``texts``, without running the model.

        Returns ``(found, vectors)``: a boolean mask over ``texts`` and one float vector per
        found text, in order; ``None`` (the default) when it ships none. Found texts are
        neither embedded nor cached, and :func:`scelmo.tl.estimate_embed_genes` does not count them.
        """
        return None

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

        Deduplicates, serves what it can from ``cache``, embeds the rest in batches
        (each committed to the cache as it arrives), checks every result and shows
        progress: :func:`scelmo.llm.embedding_loop.embed_cached` does the work.
        ``budget`` (a :class:`scelmo.llm.calls.Budget`) stops a remote run before it would
        exceed a cost limit; everything embedded up to then is cached.
        """
        return embed_cached(self, texts, cache=cache, progress=progress, desc=desc, budget=budget)


# --------------------------------------------------------------------------- aggregators
class Aggregator(Component):
    """Combines gene vectors into cell vectors, weighted by expression.

    Subclasses implement :meth:`aggregate_chunk` on one block of rows (a float32
    CSR matrix or a float32 ndarray). :meth:`aggregate` streams the rows of any
    supported matrix through it in bounded memory
    (:mod:`scelmo.expression.aggregation` runs the loop).
    """

    kind = "aggregator"
    #: Whether :meth:`prepare` accepts ``precision="bfloat16"`` (half-size gene vectors).
    supports_bfloat16: ClassVar[bool] = False
    #: Whether :meth:`prepare` wants ``context=`` (an
    #: :class:`~scelmo.expression.aggregation.AggregationContext`: gene names, settings).
    needs_context: ClassVar[bool] = False

    def prepare(self, embedding: np.ndarray, **options: Any) -> Any:
        """Pre-process the genes x d matrix once (e.g. re-lay it for a fast kernel).

        Whatever it returns is handed to every :meth:`aggregate_chunk` call as ``prepared``.
        ``options`` may hold ``precision`` (with ``supports_bfloat16``) and ``context``
        (with ``needs_context``); keep anything the chunks need in the returned object,
        not on ``self``: one aggregator may serve several plans.
        """
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
        """Everything a row block needs, prepared once (:func:`scelmo.expression.aggregation.plan`)."""
        return aggregation.plan(self, embedding, genes=genes, settings=settings, l2_normalize=l2_normalize,
                                normalize=normalize, columns=columns, center=center, scale=scale,
                                precision=precision)

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
        """Stream ``matrix`` (cells x genes) in row chunks through :meth:`aggregate_chunk`.

        The loop, the input transform and every option are described in
        :func:`scelmo.expression.aggregation.aggregate`, which does the work.
        """
        return aggregation.aggregate(self, matrix, embedding, chunk_size=chunk_size, progress=progress, out=out,
                                     genes=genes, settings=settings, l2_normalize=l2_normalize,
                                     normalize=normalize, columns=columns, center=center, scale=scale,
                                     precision=precision)


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
