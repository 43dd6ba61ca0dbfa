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
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

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
        """Provenance of this component: strings and numbers only."""
        out: dict[str, str | int | float] = {"name": self.name}
        for key, value in self.options.model_dump().items():
            if isinstance(value, str | int | float) and not _looks_secret(key):
                out[key] = value
        return out


def _looks_secret(key: str) -> bool:
    k = key.lower()
    return any(s in k for s in ("key", "token", "secret", "password"))


class ModelComponent(Component):  # noqa: B024 - abstract methods live in the subclasses
    """A component serving a role's model string (``model`` is the part after ``name/``)."""

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.model = model

    @property
    def model_id(self) -> str:
        """Identifies what this component produces (cache key, provenance)."""
        return f"{self.name}/{self.model}" if self.model and self.model != self.name else self.name


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


# --------------------------------------------------------------------------- LLM provider
class Provider(ModelComponent):
    """Generates text with a language model (the ``describe`` role when it is an LLM)."""

    kind = "LLM provider"
    requires_network = True

    @abstractmethod
    def complete(self, prompts: Sequence[str]) -> list[str]:
        """One completion per prompt, in order."""


# --------------------------------------------------------------------------- embedders
class EmbedderOptions(ComponentOptions):
    batch_size: int = 32


class TextEmbedder(ModelComponent):
    """Turns texts into fixed-length vectors.

    Subclasses implement :meth:`embed_batch`; callers use :meth:`embed`, which
    deduplicates, serves what it can from the cache, embeds the rest in batches
    (committing each batch to the cache as it arrives), checks every result and
    shows progress.
    """

    kind = "text embedder"
    Options = EmbedderOptions

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts``: a ``(len(texts), d)`` float array, in order."""

    def embed(
        self,
        texts: Sequence[str],
        *,
        cache: Cache | None = None,
        progress: bool | None = None,
        desc: str = "embedding texts",
    ) -> np.ndarray:
        """Vectors for ``texts`` (float32, ``(len(texts), d)``), using and filling ``cache``."""
        from .cache import text_hash
        from .progress import progress_bar

        texts = list(texts)
        hashes = [text_hash(t) for t in texts]
        unique = dict(zip(hashes, texts, strict=True))
        found: dict[str, np.ndarray] = cache.get_vectors(self.model_id, list(unique)) if cache else {}
        todo = sorted((h for h in unique if h not in found), key=lambda h: len(unique[h]))
        dim = next(iter(found.values())).shape[0] if found else None
        bs = max(1, int(getattr(self.options, "batch_size", 32)))
        with progress_bar(total=len(todo), desc=desc, unit="text", enabled=progress) as bar:
            for start in range(0, len(todo), bs):
                batch = todo[start : start + bs]
                vecs = np.asarray(self.embed_batch([unique[h] for h in batch]), dtype=np.float32)
                dim = self._check_batch(vecs, len(batch), dim)
                new = dict(zip(batch, vecs, strict=True))
                if cache is not None:
                    cache.put_vectors(self.model_id, new)
                found.update(new)
                bar.update(len(batch))
        if not texts:
            return np.zeros((0, dim or 0), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)

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
        return int(vecs.shape[1])


# --------------------------------------------------------------------------- aggregators
class Aggregator(Component):
    """Combines gene vectors into cell vectors, weighted by expression.

    Subclasses implement :meth:`aggregate_chunk` on one block of rows (a float32
    CSR matrix or a float32 ndarray). :meth:`aggregate` streams the rows of any
    supported matrix through it in bounded memory.
    """

    kind = "aggregator"

    def prepare(self, embedding: np.ndarray) -> Any:
        """Pre-process the genes x d matrix once (e.g. re-lay it for a fast kernel)."""
        return embedding

    @abstractmethod
    def aggregate_chunk(self, chunk: Any, prepared: Any, *, n_genes: int) -> np.ndarray:
        """Cells x d vectors for one row block. ``n_genes`` is the number of columns of X."""

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
    ) -> AggregationResult:
        """Stream ``matrix`` (cells x genes) in row chunks and aggregate each chunk.

        ``genes`` (the resolved gene names of the columns) and ``settings`` are made
        available to :meth:`aggregate_chunk` as ``self.genes`` / ``self.settings`` for
        aggregators that need them (e.g. ones that write text about a cell).
        ``out`` may be any array-like supporting ``out[start:stop] = block`` (e.g. an
        on-disk dataset, see :func:`scelmo.io.streamed_h5ad_copy`); ``l2_normalize``
        scales each non-zero cell vector to unit length.
        """
        from .matrix import iter_row_chunks, n_rows_cols
        from .progress import progress_bar

        n_cells, n_genes = n_rows_cols(matrix)
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        if embedding.shape[0] != n_genes:
            raise ConfigError(
                f"The gene embedding has {embedding.shape[0]} rows but the matrix has "
                f"{n_genes} genes; they must be aligned."
            )
        covered = np.abs(embedding).sum(axis=1) > 0
        covered_f = covered.astype(np.float32)
        self.genes = list(genes) if genes is not None else None
        self.settings = settings
        prepared = self.prepare(embedding)
        total_expr = covered_expr = 0.0
        empty: list[np.ndarray] = []
        with progress_bar(total=n_cells, desc=f"aggregating ({self.name})", unit="cell", enabled=progress) as bar:
            for start, chunk in iter_row_chunks(matrix, chunk_size):
                stop = start + chunk.shape[0]
                block = self.aggregate_chunk(chunk, prepared, n_genes=n_genes)
                row_cov = np.asarray(chunk @ covered_f).ravel()
                row_tot = np.asarray(chunk.sum(axis=1)).ravel()
                total_expr += float(row_tot.sum(dtype=np.float64))
                covered_expr += float(row_cov.sum(dtype=np.float64))
                is_empty = row_cov <= 0
                if is_empty.any():
                    block[is_empty] = 0.0
                    empty.append(np.flatnonzero(is_empty) + start)
                if l2_normalize:
                    norms = np.linalg.norm(block, axis=1, keepdims=True)
                    np.divide(block, norms, out=block, where=norms > 0)
                if not np.isfinite(block).all():
                    raise ConfigError(
                        f"Aggregator {self.name!r} produced non-finite values for cells "
                        f"{start}..{stop}; this is a bug in the aggregator."
                    )
                if out is None:  # width from the first block: an aggregator may change d
                    out = np.zeros((n_cells, block.shape[1]), dtype=np.float32)
                out[start:stop] = block
                bar.update(stop - start)
        if out is None:
            out = np.zeros((n_cells, embedding.shape[1]), dtype=np.float32)
        empty_idx = np.concatenate(empty) if empty else np.zeros(0, dtype=np.int64)
        return AggregationResult(
            embedding=out,
            empty_cells=empty_idx,
            total_expression=total_expr,
            covered_expression=covered_expr,
            n_genes=n_genes,
            n_genes_covered=int(covered.sum()),
        )


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
