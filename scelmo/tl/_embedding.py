"""Gene vectors and cell embeddings: :func:`embed_genes`, :func:`estimate_embed_genes`, :func:`embed_cells`.

Gene vectors come from the configured knowledge source and text embedder
(:mod:`scelmo.knowledge`); cell embeddings aggregate them by expression through the
configured aggregator, chunk by chunk (:mod:`scelmo.expression`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from scelmo import keys, provenance
from scelmo import plugin as plugins
from scelmo.config import ScelmoSettings
from scelmo.errors import (
    ConfigError,
    CoverageWarning,
    EmptyCellsWarning,
    InputError,
    ProviderError,
    ScelmoWarning,
)
from scelmo.expression import distributed
from scelmo.expression.matrix import as_bool_column as _as_bool_column
from scelmo.expression.matrix import n_rows_cols, select_matrix
from scelmo.expression.selection import GeneStats, highly_variable, should_normalize
from scelmo.expression.selection import gene_stats as compute_gene_stats
from scelmo.genes import GeneEmbeddings, GeneVocabulary, Resolution
from scelmo.knowledge import roles
from scelmo.knowledge.descriptions import cached_descriptions
from scelmo.knowledge.descriptions import describe as describe_items
from scelmo.knowledge.descriptions import estimate as estimate_describe
from scelmo.knowledge.marker_dims import with_cell_type_dims
from scelmo.llm.cache import open_cache, text_hash
from scelmo.llm.calls import Budget, Estimate
from scelmo.llm.embedding_loop import known_vectors
from scelmo.plugin import KnowledgeSource
from scelmo.progress import progress_bar
from scelmo.tl._common import Config, _copy_of, _settings

__all__ = ["embed_cells", "embed_genes", "estimate_embed_genes"]


def _check_names(names: Sequence[str]) -> None:
    if len(names) == 0:
        raise InputError("The data has no genes (0 columns); nothing to embed.")
    dup = [n for n, c in Counter(map(str, names)).items() if c > 1]
    if dup:
        warnings.warn(
            f"{len(dup)} gene names occur more than once (e.g. {', '.join(dup[:3])}); each copy "
            "gets the same vector. Run `adata.var_names_make_unique()` or aggregate duplicates "
            "first if that is not what you want.",
            ScelmoWarning,
            stacklevel=3,
        )


def _resolve(names: Sequence[str], vocab: GeneVocabulary | None, species: str, *, from_data: bool = True) -> Resolution:
    names = [str(n) for n in names]
    if vocab is None:  # no vocabulary: use names as given
        return Resolution(names, list(names), ["as_given"] * len(names), species)
    res = vocab.resolve(names, species=species)  # type: ignore[arg-type]
    _warn_shared_symbols(res, from_data=from_data)
    return res


#: the shared-vector warnings already given in this process (embed_genes then embed_cells on
#: the same data would otherwise say the same twice, from two places)
_SAID_SHARED: set[int] = set()


def _warn_shared_symbols(res: Resolution, *, from_data: bool = True) -> None:
    """Say when different names resolve to one gene of the knowledge table, and so share its
    vector: mouse paralogs with one human ortholog (Ly6a, Ly6c1, Ly6g -> LY6H), or a name and
    its alias both in the data. (Repeats of one name are said by :func:`_check_names`.) Said
    once per process for the same names; the examples are the largest groups, in the data's
    own spelling."""
    shared = _shared_symbols(res.names, res.symbols)
    n = sum(len(v) for v in shared.values())
    if not shared or (len(res.names) >= 1000 and n < 0.01 * len(res.names)):
        return  # (a few retired symbols beside their successors in a human transcriptome: not worth a warning)
    key = hash(tuple(sorted((sym, tuple(sorted(v))) for sym, v in shared.items())))
    if key in _SAID_SHARED:
        return
    groups = sorted(shared.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:3]
    example = "; ".join(f"{', '.join(sorted(v)[:4])}{', ...' if len(v) > 4 else ''} -> {sym}" for sym, v in groups)
    where = ("`uns['scelmo']['embed_genes']['resolved_by']` says how names were resolved." if from_data
             else "`scelmo describe genes NAME ...` shows what each name resolves to.")
    warnings.warn(
        f"{n} gene names {'of the data ' if from_data else ''}resolve to {len(shared)} genes of the knowledge "
        f"table and share their vectors ({example}): different genes (e.g. mouse paralogs with one human "
        f"ortholog) then count as one. {where}",
        ScelmoWarning,
        stacklevel=5,  # the user's call of embed_genes / embed_cells
    )
    _SAID_SHARED.add(key)  # (after: a warning turned into an error is said again next time)


def names_as_in(known: Sequence[str], names: Sequence[str]) -> list[str]:
    """``names`` with each name that ``known`` lacks replaced by the ``known`` name of the same
    gene, where the gene vocabulary resolves both to one symbol (an alias, an Ensembl ID or a
    mouse ortholog: "IGJ" for a reference's "JCHAIN", "Cd3e" for "CD3E"); the others unchanged.

    Used to match a query's genes with its reference's statistics when the two name genes
    differently. Each ``known`` name is taken by at most one query gene (the first).
    """
    names = [str(n) for n in names]
    known_set = set(map(str, known))
    missing = [i for i, n in enumerate(names) if n not in known_set]
    vocab = roles.vocabulary() if missing else None
    if vocab is None:
        return names
    by_symbol: dict[str, str] = {}
    for k, sym in zip(map(str, known), vocab.resolve([str(k) for k in known]).symbols, strict=True):
        if sym:
            by_symbol.setdefault(sym, k)
    taken = known_set & set(names)
    out = list(names)
    symbols = vocab.resolve(names).symbols
    for i in missing:
        k = by_symbol.get(symbols[i] or "")
        if k is not None and k not in taken:
            out[i] = k
            taken.add(k)
    return out


def _no_match_error(res: Resolution) -> InputError:
    sample = ", ".join(res.names[:5])
    return InputError(
        f"None of the {len(res.names)} genes could be matched to a known gene (e.g. {sample}). "
        "scelmo understands human/mouse gene symbols, aliases and Ensembl gene IDs. If the "
        "names are in another column, set `adata.var_names = adata.var[\"<symbol column>\"]`; "
        "if they carry a prefix or suffix (\"mm10___Cd3e\", \"ENSG00000198851_CD3E\"), strip it first."
    )


def _resolve_request(
    adata: Any, genes: Sequence[str] | None, config: Config, **models: str | None
) -> tuple[ScelmoSettings, Any, Resolution]:
    """Settings (``describe``/``embed``/``species`` overriding ``config``), the describer
    and the resolved gene names of ``adata.var_names`` followed by ``genes``."""
    keys_ = {"describe": "describe.model", "embed": "embed.model", "species": "genes.species"}
    settings = _settings(config, **{keys_[k]: v for k, v in models.items()})
    names = [str(g) for g in (adata.var_names if adata is not None else [])] + [str(g) for g in (genes or [])]
    _check_names(names if adata is None else [str(g) for g in adata.var_names])
    describer = roles.description_writer(settings)
    res = _resolve(names, roles.vocabulary(describer), settings.genes.species, from_data=adata is not None)
    if res.n_resolved == 0:
        raise _no_match_error(res)
    return settings, describer, res


def _build_gene_embeddings(
    symbols: Sequence[str],
    settings: ScelmoSettings,
    describer: Any,
    progress: bool | None,
    *,
    prompt: str | None = None,
    max_cost: float | None = None,
) -> GeneEmbeddings:
    embed = roles.embedder(settings)
    budget = Budget(max_cost)
    described = describe_items(
        sorted(set(symbols)), subject="gene", prompt=prompt, config=settings, using=describer,
        budget=budget, progress=progress,
    )
    texts = described.texts
    genes = [g for g in sorted(texts) if texts[g]]
    if symbols and not genes:
        # (an LLM-path trial: every answer empty, and embed-genes wrote a 0-gene table, exit 0)
        reasons = "; ".join(f"{k}: {v}" for k, v in list(described.failed.items())[:3])
        raise ProviderError(
            f"None of the {len(set(symbols))} genes got a description from {describer.model_id!r}"
            + (f" ({reasons})" if reasons else "") + ". Failed answers are not cached, so a rerun pays only "
            "for those; check the model, prompt and server first (`scelmo describe genes GENE ...` shows "
            "one answer)."
        )
    vectors = roles.embed_texts(
        settings, [texts[g] for g in genes], using=embed, progress=progress, desc="embedding gene texts",
        budget=budget,
    )
    manifest = {
        "describe_model": describer.model_id,
        "embed_model": embed.model_id,
        "n_genes": len(genes),
        "dim": int(vectors.shape[1]) if len(genes) else 0,
        "describe": describer.provenance_record(),
        "embed": embed.provenance_record(),
        "description_run": described.provenance(),
    }
    usage = getattr(embed, "usage", None)
    if usage is not None and (embed.requires_network or embed.is_async):  # (a server on this machine too)
        manifest["embed_usage"] = usage.as_dict()
    ge = GeneEmbeddings(genes, vectors, manifest)
    if len(genes) > 2:  # fitted once, kept with the table
        ge.condition(n_components=settings.aggregate.condition_components)
        if settings.aggregate.cell_type_markers > 0:  # (opt-in: one more dimension per known cell type)
            source = roles.marker_source(describer)
            if source is None:
                raise ConfigError("aggregate.cell_type_markers is set, but no knowledge source knows cell-type "
                                  "markers (the offline default `local` does); set it to 0.")
            ge = with_cell_type_dims(ge, [*source.cell_type_markers(), *source.cell_type_definition_markers()],
                                     weight=settings.aggregate.cell_type_markers, source=source.model_id)
    return ge


def embed_genes(
    adata: Any = None,
    genes: Sequence[str] | None = None,
    *,
    describe: str | None = None,
    embed: str | None = None,
    species: str | None = None,
    prompt: str | None = None,
    max_cost: float | None = None,
    config: Config = None,
    key_added: str = keys.GENE_EMBEDDING,
    copy: bool = False,
    progress: bool | None = None,
) -> Any:
    """Describe and embed genes: gene names -> texts -> vectors.

    Parameters
    ----------
    adata
        Annotated data whose ``var_names`` are the genes (symbols or Ensembl IDs).
    genes
        Gene names to embed instead of (or in addition to) ``adata.var_names``.
    describe, embed
        Model strings for the two roles (override the config), e.g. ``"local"`` and
        ``"local/all-MiniLM-L6-v2-int8"``.
    species
        ``"human"``, ``"mouse"`` or ``"auto"`` (default from config: ``"auto"``).
    prompt
        Name of a registered prompt when ``describe`` is an LLM (default ``"gene"``, the
        paper's prompt; see :mod:`scelmo_prompts`).
    max_cost
        With remote models: stop before spending more than this many USD on describing
        and embedding together (:class:`~scelmo.errors.BudgetExceededError`; everything
        answered is cached, so a rerun with a higher limit continues). See
        :func:`scelmo.knowledge.descriptions.estimate` for a dry run.
    config
        Settings or a mapping of overrides (see :mod:`scelmo.config`).
    key_added
        ``varm`` key for the gene vectors aligned to ``adata.var_names``.
    copy
        Leave ``adata`` untouched and return a modified copy of it (instead of the
        :class:`~scelmo.genes.GeneEmbeddings`, as scanpy's ``copy=``).
    progress
        Show progress bars (default: on a terminal or in a notebook).

    Returns
    -------
    :class:`~scelmo.genes.GeneEmbeddings` for every resolved gene that has a description
    (with ``copy=True``: the modified copy of ``adata``).
    With ``adata``, also sets ``adata.varm[key_added]`` (zero rows for genes without a
    vector), ``adata.var["scelmo_has_embedding"]``, ``adata.var["scelmo_symbol"]`` and
    ``adata.uns["scelmo"]["embed_genes"]``.
    """
    if adata is not None and not hasattr(adata, "var_names"):
        raise InputError(
            f"The first argument of embed_genes is an AnnData, not a {type(adata).__name__}; for gene names "
            "alone pass them by keyword: `scelmo.tl.embed_genes(genes=[...])`."
        )
    if copy:
        if adata is None:
            raise InputError("copy=True needs an `adata` to copy.")
        adata = _copy_of(adata)
    settings, describer, res = _resolve_request(
        adata, genes, config, describe=describe, embed=embed, species=species
    )
    ge = _build_gene_embeddings(
        [s for s in res.symbols if s], settings, describer, progress, prompt=prompt, max_cost=max_cost
    )
    if adata is not None:
        n = adata.n_vars
        matrix, mask = ge.aligned(res.symbols[:n])
        adata.varm[key_added] = matrix
        adata.var[keys.HAS_EMBEDDING] = mask
        adata.var[keys.GENE_SYMBOL] = [s or "" for s in res.symbols[:n]]
        # the table's manifest, then the coverage of this data's genes (the manifest's own
        # n_genes, the table's size, would otherwise stand in for the data's gene count)
        info = {k: v for k, v in ge.manifest.items() if k != "n_genes"}
        info["n_genes_in_table"] = len(ge)
        info.update(_coverage_info(res.names[:n], res.symbols[:n], mask, res))
        info["key_added"] = key_added
        _warn_coverage(info["gene_coverage"], None, n, int(mask.sum()), settings.genes.min_coverage)
        provenance.record(adata, "embed_genes", info)
    return adata if copy else ge


def estimate_embed_genes(
    adata: Any = None,
    genes: Sequence[str] | None = None,
    *,
    describe: str | None = None,
    embed: str | None = None,
    species: str | None = None,
    prompt: str | None = None,
    config: Config = None,
) -> list[Any]:
    """What :func:`embed_genes` would send, per role, before anything is spent.

    Returns two :class:`~scelmo.llm.calls.Estimate` objects (describe, embed). Cached
    answers, and vectors the embedder ships (:meth:`scelmo.plugin.TextEmbedder.precomputed`),
    are not counted as work to do. For the embed role the texts are not written yet when an
    LLM describes, so their length is assumed to be the describer's ``max_tokens``.
    """

    settings, describer, res = _resolve_request(
        adata, genes, config, describe=describe, embed=embed, species=species
    )
    symbols = sorted({s for s in res.symbols if s})
    est_d = estimate_describe(symbols, subject="gene", prompt=prompt, config=settings, using=describer)
    embedder = roles.embedder(settings)
    if isinstance(describer, KnowledgeSource):
        texts = list(describer.gene_texts(symbols).values())
        unique = {text_hash(t): t for t in texts}
        with open_cache(settings) as cache:
            done, shipped = known_vectors(embedder, unique, cache)
        n_shipped = len(shipped)
        todo = [t for h, t in unique.items() if h not in done]
        tokens = embedder.count_tokens(todo)
        n_items, cached = len(unique), len(unique) - len(todo)
    else:
        # the descriptions already answered are known texts, whose vectors may be cached too
        # (an LLM-path trial: after a complete run the dry run still listed every vector to do);
        # the rest are not written yet: each assumed the describer's max_tokens long
        described = cached_descriptions(symbols, subject="gene", prompt=prompt, config=settings, using=describer)
        unique = {text_hash(t): t for t in described.values()}
        with open_cache(settings) as cache:
            done, shipped = known_vectors(embedder, unique, cache)
        n_shipped, n_new = len(shipped), len(symbols) - len(described)
        todo = [t for h, t in unique.items() if h not in done]
        tokens = (embedder.count_tokens(todo) if todo else 0) + describer.expected_completion_tokens() * n_new
        n_items, cached = len(unique) + n_new, len(unique) - len(todo)
        todo += [""] * n_new
    bs = max(1, int(getattr(embedder.options, "batch_size", 32)))
    # a service's requests count (a server on this machine too: it needs no network, but is called)
    calls = -(-len(todo) // bs) if embedder.requires_network or embedder.is_async else 0
    cost = embedder.price(tokens) if todo else 0.0
    notes = [] if embedder.requires_network or embedder.is_async else ["local model: no calls, no cost"]
    if n_shipped:
        notes.append(f"{n_shipped} of {n_items} vectors ship with the embedder (counted as cached; no model run)")
    est_e = Estimate("embed", embedder.model_id, calls, n_items, cached, tokens, 0, cost, notes)
    return [est_d, est_e]


def _coverage_info(names: Sequence[str], symbols: Sequence[str | None], mask: np.ndarray, res: Resolution) -> dict[str, Any]:
    counts = Counter(h for h, m in zip(res.how[: len(names)], mask, strict=True))
    return {
        "n_genes": len(names),
        "n_genes_resolved": sum(s is not None for s in symbols),
        "n_genes_with_vector": int(mask.sum()),
        "gene_coverage": float(mask.mean()) if len(mask) else 0.0,
        "species": res.species,
        "resolved_by": {k: int(v) for k, v in counts.items()},
        "n_genes_sharing_a_symbol": _n_sharing(names, symbols),
    }


def _shared_symbols(names: Sequence[str], symbols: Sequence[str | None]) -> dict[str, set[str]]:
    """Symbols that two or more distinct names (case aside) resolve to, with those names."""
    groups: dict[str, dict[str, str]] = {}
    for name, sym in zip(names, symbols, strict=True):
        if sym:
            spelled = str(name).strip()
            groups.setdefault(sym, {}).setdefault(spelled.upper(), spelled)  # (the first spelling of each)
    return {sym: set(group.values()) for sym, group in groups.items() if len(group) > 1}


def _n_sharing(names: Sequence[str], symbols: Sequence[str | None]) -> int:
    """How many distinct names resolve to a symbol that another distinct name also resolves to."""
    return sum(len(v) for v in _shared_symbols(names, symbols).values())


def _warn_coverage(gene_cov: float, expr_cov: float | None, n_genes: int, n_cov: int, threshold: float) -> None:
    """Warn when few genes (or, with ``expr_cov``, little of the expression) have a vector."""
    if gene_cov < threshold or (expr_cov is not None and expr_cov < threshold):
        carrying = "" if expr_cov is None else f", carrying {expr_cov:.1%} of the expression"
        warnings.warn(
            f"Low gene coverage: {n_cov} of {n_genes} genes ({gene_cov:.1%}) have a vector{carrying}. Check that "
            "var_names are gene symbols or Ensembl IDs (human or mouse, without a prefix or suffix such as \"mm10___\"), "
            "or use a richer knowledge source.",
            CoverageWarning,
            stacklevel=4,  # the caller of embed_cells / embed_genes
        )


#: What each ``flavor`` of :func:`embed_cells` sets (see :class:`scelmo.config.AggregateConfig`).
FLAVORS: dict[str, dict[str, Any]] = {
    "scelmo": {"genes": "hvg", "normalize": "auto", "transform": "center", "condition": True},
    "paper": {"genes": "all", "normalize": "none", "transform": "none", "condition": False},
}


def flavor_plan(agg_cfg: Any) -> dict[str, Any]:
    """The flavor's settings, overridden by any of them set explicitly."""
    plan = dict(FLAVORS[agg_cfg.flavor])
    for k in plan:
        v = getattr(agg_cfg, k)
        if v is not None:
            plan[k] = v
    return plan


def _var_of(adata: Any, source: str) -> Any:
    return adata.raw.var if source == "raw.X" else adata.var


def _var_flags(adata: Any, source: str, column: str, *, warn: bool = False) -> tuple[np.ndarray | None, str]:
    """A boolean ``var`` column for the matrix's genes, and where it came from. Embedding from
    ``adata.raw``, a column only ``adata.var`` has (scanpy's ``highly_variable`` after subsetting
    ``X`` to those genes) is matched to the raw genes by name, ``False`` for the others; when
    under half of its flagged genes are raw genes (``X`` renamed), it is not used (``None``)."""
    var = _var_of(adata, source)
    if column in var:
        return _as_bool_column(var[column]), column
    if source == "raw.X" and column in adata.var:
        flags = _as_bool_column(adata.var[column])
        if flags is None:
            return None, column
        raw = {str(g) for g in var.index}
        flagged = [str(g) for g, f in zip(adata.var_names, flags, strict=True) if f]
        found = sum(g in raw for g in flagged)
        if not flagged or found < 0.5 * len(flagged):
            if warn:
                warnings.warn(f"adata.var[{column!r}] flags {len(flagged)} genes, {found} of them among adata.raw's "
                              "genes by name, so it does not choose the genes embedded from adata.raw. Pass "
                              "`mask_var=` as a boolean array over adata.raw.var_names, or `use_raw=False`.",
                              ScelmoWarning, stacklevel=4)
            return None, column
        by_name = dict(zip(map(str, adata.var_names), flags, strict=True))
        sel = np.array([by_name.get(str(g), False) for g in var.index], dtype=bool)
        return sel, f"{column} (adata.var, by name: {found} of {len(flagged)})"
    return None, column


def _gene_mask(adata: Any, source: str, n_genes: int, mask_var: Any, plan: dict[str, Any],
               stats: Any, n_top_genes: int, *, own_selection: bool = False) -> tuple[np.ndarray, str]:
    """Which genes to embed from, and how they were chosen (for provenance).
    ``own_selection``: select ``n_top_genes`` even where ``var["highly_variable"]`` exists
    (the call asked for a number of genes)."""
    var = _var_of(adata, source)
    if mask_var is not None:
        if isinstance(mask_var, str):
            if mask_var not in var and not (source == "raw.X" and mask_var in adata.var):
                raise InputError(
                    f"mask_var={mask_var!r} is not a column of adata.{'raw.' if source == 'raw.X' else ''}var; "
                    "pass a boolean column name or a boolean array with one entry per gene."
                )
            flags, where = _var_flags(adata, source, mask_var, warn=True)
            if flags is None:
                raise InputError(
                    f"mask_var={mask_var!r} is not a True/False column of the genes embedded (adata."
                    f"{'raw.' if source == 'raw.X' else ''}var); pass a boolean column name or a boolean array "
                    "with one entry per gene."
                )
            sel, how = flags, f"mask_var:{where}"
        else:
            sel, how = np.asarray(mask_var), "mask_var:array"
        if sel.dtype != bool or sel.shape != (n_genes,):
            raise InputError(f"mask_var must be boolean with one entry per gene ({n_genes}); got {sel.dtype} {sel.shape}.")
        return sel, how
    if plan["genes"] == "all":
        return np.ones(n_genes, dtype=bool), "all"
    # scanpy's convention (also as text or pandas' nullable boolean, e.g. from R)
    hv, where = _var_flags(adata, source, "highly_variable", warn=not own_selection)
    if hv is not None and not own_selection:
        return hv, f"mask_var:{where}"
    return highly_variable(stats, n_top_genes), f"hvg:{n_top_genes}"


def _describes_by_llm(gene_embeddings: GeneEmbeddings | str | None, settings: ScelmoSettings) -> bool:
    """Whether a gene table would be built now by an LLM (each description a paid call),
    rather than given, loaded or written from offline knowledge."""
    if isinstance(gene_embeddings, GeneEmbeddings | str):
        return False
    return not isinstance(roles.description_writer(settings), KnowledgeSource)


def _aligned_gene_table(names: list[str], gene_embeddings: GeneEmbeddings | str | None, settings: ScelmoSettings,
                        plan: dict[str, Any], progress: bool | None, *, only: np.ndarray | None = None,
                        ) -> tuple[GeneEmbeddings, list[str], np.ndarray, np.ndarray, Resolution]:
    """The gene table (given, loaded or built now), conditioned when the flavor says so, and its
    vectors aligned to the data's columns: ``(table, looked-up names, E, has-a-vector mask, resolution)``.
    ``only``: the columns a table built now describes (the genes the embedding reads)."""
    agg_cfg = settings.aggregate
    describe = None if isinstance(gene_embeddings, GeneEmbeddings | str) else roles.description_writer(settings)
    vocab = roles.vocabulary(describe)
    res = _resolve(names, vocab, settings.genes.species)
    if res.n_resolved == 0 and not isinstance(gene_embeddings, GeneEmbeddings | str):
        raise _no_match_error(res)
    if isinstance(gene_embeddings, str):
        gene_embeddings = GeneEmbeddings.load(gene_embeddings)
    if gene_embeddings is not None:
        _warn_settings_the_table_fixes(gene_embeddings, agg_cfg)
    if gene_embeddings is None:
        keep = np.ones(len(names), dtype=bool) if only is None else np.asarray(only, dtype=bool)
        gene_embeddings = _build_gene_embeddings([s for s, k in zip(res.symbols, keep, strict=True) if s and k],
                                                 settings, describe, progress)
    # fall back to the name as given when the resolved symbol is not in a user's table
    lookup = gene_embeddings.keys_for(names, res.symbols)
    if plan["condition"] and gene_embeddings.conditioning is None:  # fitted once per table, kept with it
        gene_embeddings.condition(n_components=agg_cfg.condition_components)
    elif plan["condition"] and agg_cfg.condition_components is not None and "cell_type_markers" not in (
            gene_embeddings.manifest or {}):  # (a table with marker dimensions keeps its own: they must stay)
        # asked for (config, --set, environment): this call's conditioning, even for a table
        # fitted with another number; the table given keeps its own
        gene_embeddings = gene_embeddings.conditioned_as(agg_cfg.condition_components)
    if not plan["condition"] and "cell_type_markers" in (gene_embeddings.manifest or {}):
        # (its text block was conditioned as the table was built: "unconditioned" would not be)
        raise InputError(
            "This gene table has cell-type marker dimensions (aggregate.cell_type_markers), which go with "
            "conditioned vectors; flavor='paper' / condition=False cannot use it. Set "
            "aggregate.cell_type_markers = 0 (or use the default flavor)."
        )
    E, mask = gene_embeddings.aligned(lookup, conditioned=bool(plan["condition"]))
    if not mask.any():
        raise _no_match_error(res)
    return gene_embeddings, lookup, E, mask, res


def _warn_settings_the_table_fixes(table: GeneEmbeddings, agg_cfg: Any) -> None:
    """A given table decides its cell-type marker dimensions: say so when the settings ask
    otherwise (a trial: `cell_type_markers=1` with a saved table gave 384-d vectors, unsaid)."""
    has = isinstance((table.manifest or {}).get("cell_type_markers"), dict)
    if agg_cfg.cell_type_markers > 0 and not has:
        warnings.warn(
            "aggregate.cell_type_markers is set, but the gene table given has no cell-type marker dimensions "
            "(they are added when a table is built from configuration): the cells are embedded without them. "
            "Build the table with the setting (`scelmo.tl.embed_genes(genes, config={'aggregate.cell_type_markers': "
            "1.0})`) or leave `gene_embeddings` unset.", ScelmoWarning, stacklevel=4,
        )
    elif has and agg_cfg.condition_components is not None and (
            (table.manifest["cell_type_markers"].get("text_conditioning") or {}).get("n_components")
            != table._components_for(agg_cfg.condition_components)):
        warnings.warn(
            "aggregate.condition_components is set, but the gene table given has cell-type marker dimensions, "
            "whose text part was conditioned when the table was built: it keeps that conditioning "
            f"({table.manifest['cell_type_markers'].get('text_conditioning')}). Build the table again with the "
            "setting to change it.", ScelmoWarning, stacklevel=4,
        )


def _input_statistics(adata: Any, matrix: Any, source: str, gene_stats: GeneStats | None, plan: dict[str, Any],
                      mask_var: Any, normalize: bool, lazy: bool, progress: bool | None, chunk_size: int,
                      names: Sequence[str] | None = None, own_selection: bool = False) -> GeneStats | None:
    """Per-gene statistics for gene selection and centring: the given ones (matched to ``names``
    by name when they carry gene names), or one streamed pass over the data (on dask when the
    matrix is a dask array; named by ``names``); ``None`` when nothing needs them."""
    n_cells, n_genes = n_rows_cols(matrix)
    do_norm = normalize
    need_stats = plan["transform"] != "none" or (
        mask_var is None and plan["genes"] == "hvg"
        and (own_selection or _var_flags(adata, source, "highly_variable")[0] is None)
    )
    stats = gene_stats
    if stats is not None and stats.genes is not None and names is not None:
        # by gene: another order, gene set or naming (aliases, Ensembl IDs, mouse orthologs) is fine
        stats = GeneStats(stats.n_cells, stats.for_genes(names_as_in(stats.genes, names)).sums, tuple(names))
    if stats is not None and stats.n_genes != n_genes:
        raise InputError(f"gene_stats cover {stats.n_genes} genes but the data has {n_genes}; compute them on the "
                         "same genes, or with gene names (`gene_stats(..., genes=var_names)`) to match them by name.")
    use_dask = distributed.is_dask_array(matrix)
    if lazy and not use_dask:
        raise InputError("lazy=True needs a dask array as the matrix (e.g. scelmo.expression.distributed.read_lazy(path)).")
    if need_stats and stats is None:
        if use_dask:
            stats = distributed.gene_stats(matrix, normalize=do_norm)
        else:
            with progress_bar(total=n_cells, desc="gene statistics", unit="cell", enabled=progress) as bar:
                stats = compute_gene_stats(matrix, normalize=do_norm, chunk_size=chunk_size,
                                           progress=bar.update)
        if names is not None:
            stats = GeneStats(stats.n_cells, stats.sums, tuple(names))
    return stats


def reference_gene_stats(reference: Any, *, config: Config = None, progress: bool | None = None) -> GeneStats:
    """The reference's per-gene statistics (as :func:`embed_cells` computes them), with its gene names.

    ``embed_cells(query, gene_stats=...)`` then embeds a query exactly as its reference (the
    reference's gene selection and centring, matched by gene name), so that a query of one
    cell type is not centred on itself.
    """
    agg_cfg = _settings(config).aggregate
    plan = flavor_plan(agg_cfg)
    matrix, var_names, source = select_matrix(reference, layer=agg_cfg.layer, use_raw=agg_cfg.use_raw)
    do_norm = should_normalize(plan["normalize"], matrix)
    return _input_statistics(reference, matrix, source, None, {**plan, "transform": "center"}, None, do_norm,
                             False, progress, agg_cfg.chunk_size, names=[str(g) for g in var_names])


def reference_gene_table(reference: Any, *, config: Config = None, progress: bool | None = None) -> GeneEmbeddings:
    """The gene table :func:`embed_cells` builds for ``reference`` (conditioned when the flavor says so).

    Passed as ``embed_cells(query, gene_embeddings=...)``, it gives the query the same
    conditioning: a conditioning is fitted per table, and the table built for a dataset
    covers that dataset's genes, so a query with another gene set would otherwise get
    a different one.
    """
    settings = _settings(config)
    plan = flavor_plan(settings.aggregate)
    _, var_names, _ = select_matrix(reference, layer=settings.aggregate.layer, use_raw=settings.aggregate.use_raw)
    return _aligned_gene_table([str(g) for g in var_names], None, settings, plan, progress)[0]


def _embed_cells_record(adata: Any, result: Any, names: list[str], lookup: list[str], mask: np.ndarray,
                        use: np.ndarray, res: Resolution, gene_embeddings: GeneEmbeddings, settings: ScelmoSettings,
                        plan: dict[str, Any], *, how: str, agg: Any, source: str, do_norm: bool, lazy: bool,
                        use_dask: bool, key_added: str) -> dict[str, Any]:
    """Warn about empty cells and low coverage, and build the provenance record of an ``embed_cells`` run."""
    agg_cfg = settings.aggregate
    n_cells, n_genes = adata.n_obs, len(names)
    emb = result.embedding
    gene_cov = float(mask.mean())
    expr_cov = result.expression_coverage
    n_empty = int(result.empty_cells.size)
    if n_empty:
        warnings.warn(
            f"{n_empty} of {n_cells} cells express none of the {int(use.sum())} selected genes that have "
            f"a vector; they got a zero embedding (first: {adata.obs_names[int(result.empty_cells[0])]}). "
            "Filter them with `sc.pp.filter_cells(adata, min_genes=1)`, select more genes "
            "(`n_top_genes=`, `mask_var=`) or check coverage.",
            EmptyCellsWarning,
            stacklevel=3,  # the caller of embed_cells
        )
    if not np.isnan(expr_cov):  # lazy: nothing computed yet
        _warn_coverage(gene_cov, expr_cov, n_genes, int(mask.sum()), settings.genes.min_coverage)
    info = _coverage_info(names, res.symbols[: len(names)], mask, res)  # (lookup falls back to the name itself)
    info.update(
        {
            "aggregator": agg.name,
            "aggregator_options": agg.provenance_record(),
            "matrix": source,
            "flavor": agg_cfg.flavor,
            "gene_selection": how,
            "n_genes_used": int(use.sum()),
            "normalize": "log1p_cp10k" if do_norm else "none",
            "transform": plan["transform"],
            "conditioning": gene_embeddings.conditioning.provenance() if plan["condition"] else "none",
            "l2_normalize": bool(agg_cfg.l2_normalize),
            "precision": agg_cfg.precision,
            "engine": ("dask (lazy)" if lazy else "dask") if use_dask else "in-process",
            "expression_coverage": expr_cov,
            "n_cells": n_cells,
            "n_empty_cells": float("nan") if lazy else n_empty,  # (lazy: not computed, so not known)
            "dim": int(emb.shape[1]),
            "key_added": key_added,
            **gene_embeddings.models(),
        }
    )
    markers = gene_embeddings.manifest.get("cell_type_markers")
    if isinstance(markers, dict):  # (the first text_dim columns are the text vectors' part)
        info.update({"cell_type_markers": float(markers.get("weight", 0.0)),
                     "cell_type_marker_types": int(markers.get("n_types", 0)),
                     "text_dim": int(markers.get("text_dim", 0)),
                     "text_conditioning": markers.get("text_conditioning") or "none"})
    return info


def embed_cells(
    adata: Any,
    *,
    gene_embeddings: GeneEmbeddings | str | None = None,
    aggregator: str | None = None,
    flavor: str | None = None,
    mask_var: str | np.ndarray | None = None,
    n_top_genes: int | None = None,
    normalize: str | None = None,
    transform: str | None = None,
    condition: bool | None = None,
    gene_stats: Any = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    l2_normalize: bool | None = None,
    chunk_size: int | None = None,
    species: str | None = None,
    precision: str | None = None,
    config: Config = None,
    key_added: str = keys.X_SCELMO,
    copy: bool = False,
    progress: bool | None = None,
    out: Any = None,
    lazy: bool = False,
) -> Any:
    """Cell embeddings: aggregate gene vectors by each cell's expression.

    The default (``flavor="scelmo"``) embeds the log-normalised values of the 2,000 most
    variable genes, centred per gene, with conditioned gene vectors (their shared mean
    and top principal directions removed, see :mod:`scelmo.conditioning`): for cell
    ``c``, ``C_c = w_c (x_c - mu) E'`` over the selected genes. ``flavor="paper"`` is the
    paper's formula, ``C = (X / X.sum(1)) @ E`` over all genes with raw vectors, so its
    numbers can be reproduced. docs/benchmarks.md shows how each choice was made.

    Parameters
    ----------
    adata
        Cells x genes data, in memory or backed (``read_h5ad(path, backed="r")``);
        CSR, CSC or dense; integer, float16/32/64 values. Never densified: rows are
        streamed in chunks (twice when gene statistics are needed). A dask array (e.g.
        from :func:`scelmo.expression.distributed.read_lazy`) is embedded block by block on dask's
        threads or, when a ``dask.distributed`` client is active, on its workers
        (:mod:`scelmo.expression.distributed`).
    gene_embeddings
        Gene vectors to use (a :class:`GeneEmbeddings` or a directory saved by
        :meth:`GeneEmbeddings.save`). Default: build them with the configured
        ``describe`` and ``embed`` roles (cached, so a second run embeds nothing).
    aggregator
        Registered aggregator name: ``"wa"`` (expression-weighted mean, default) or
        ``"aa"`` (the paper's ``X @ E / n_genes``), or one from a plugin.
    flavor
        ``"scelmo"`` (default) or ``"paper"``: sets ``mask_var``'s default gene
        selection, ``normalize``, ``transform`` and ``condition`` together.
    mask_var
        Genes to embed from: a boolean ``var`` column name or a boolean array (scanpy's
        convention; embedding from ``adata.raw``, a column of ``adata.var`` is matched to
        the raw genes by name). Default: ``var["highly_variable"]`` when present, else the
        ``n_top_genes`` most variable genes (Seurat dispersion, as
        ``sc.pp.highly_variable_genes(flavor="seurat")``); all genes with ``flavor="paper"``.
    n_top_genes
        How many variable genes to select (default 2000; all genes if fewer). Given here,
        the selection is made so even where ``var["highly_variable"]`` exists.
    normalize
        ``"auto"`` (log-normalise counts: per 10k, ``log1p``; keep non-integer values),
        ``"log1p"`` (always) or ``"none"``.
    transform
        ``"center"`` (subtract each gene's mean), ``"scale"`` (centre and divide by its
        standard deviation) or ``"none"``. Computed as ``X @ E - mu @ E``: X stays sparse.
    condition
        Use the gene table's conditioning (fitted once per table and stored with it;
        fitted now if the table has none).
    gene_stats
        Per-gene statistics to use instead of this data's own (a
        :class:`scelmo.expression.selection.GeneStats`, e.g. ``scelmo.expression.selection.gene_stats(ref.X,
        normalize=True, genes=ref.var_names)``): embeds a query with its reference's gene
        selection and centring, or a dataset in pieces exactly as in one go. Statistics
        with gene names are matched to this data's genes by name (genes they lack are
        neither selected nor centred); without names they must cover the same genes in
        the same order.
    layer, use_raw
        Which expression values to use: ``adata.layers[layer]``, ``adata.raw.X``
        or ``adata.X``. ``use_raw=None`` uses ``adata.raw`` when present (scanpy's
        convention). Values must be finite and non-negative (counts or log-normalised,
        not z-scored).
    l2_normalize
        Scale each cell vector to unit length (zero vectors stay zero). Default: off,
        as in the paper.
    chunk_size
        Rows per chunk (bounds memory).
    species
        ``"human"``, ``"mouse"`` or ``"auto"``.
    precision
        Storage of the gene vectors during aggregation: ``"float32"`` (default),
        ``"float16"`` or ``"bfloat16"`` (half the memory and cache footprint; float32
        accumulation). Measured against float32 (max difference relative to each row's
        largest value, benchmarks/results/scale): float16 4.3e-4, bfloat16 3.4e-3
        (8 significant bits); choose float16 unless the vectors exceed its range
        (65,504). See docs/performance.md.
    config
        Settings or a mapping of overrides (``aggregate.*``, see :mod:`scelmo.config`).
    key_added
        ``obsm`` key of the result.
    copy
        Return a modified copy instead of writing to ``adata``.
    progress
        Show progress bars.
    out
        Where to write the cells x d result instead of ``adata.obsm[key_added]``: any
        array-like accepting ``out[start:stop] = block``, written chunk by chunk (e.g.
        :meth:`scelmo.io.StreamedH5ad.obsm`, so results never have to fit in memory).
    lazy
        Dask input only: store a lazy dask array in ``obsm[key_added]`` (computed when
        used) instead of computing it now; coverage figures in ``uns`` are then ``nan``.

    Returns
    -------
    ``None`` (or the copy). Sets ``adata.obsm[key_added]`` (unless ``out`` is given) (cells x d float32),
    ``adata.var["scelmo_genes_used"]`` (when the matrix's genes are ``adata.var``) and
    ``adata.uns["scelmo"]["embed_cells"]`` (gene selection, transform, conditioning,
    coverage, empty cells, models, options).
    Cells with no selected gene that has a vector get a zero vector and an
    :class:`~scelmo.errors.EmptyCellsWarning` with their count.
    """
    overrides: dict[str, Any] = {
        "aggregate.method": aggregator,
        "aggregate.flavor": flavor,
        "aggregate.n_top_genes": n_top_genes,
        "aggregate.normalize": normalize,
        "aggregate.transform": transform,
        "aggregate.condition": condition,
        "aggregate.layer": layer,
        "aggregate.use_raw": use_raw,
        "aggregate.l2_normalize": l2_normalize,
        "aggregate.chunk_size": chunk_size,
        "aggregate.precision": precision,
        "genes.species": species,
    }
    settings = _settings(config, **overrides)
    agg_cfg = settings.aggregate
    plan = flavor_plan(agg_cfg)
    agg = plugins.aggregators.create(agg_cfg.method, **agg_cfg.options)
    if not agg.linear and agg_cfg.transform is None:
        plan["transform"] = "none"  # a non-linear aggregator (e.g. genept_s) reads the values as they are
    elif not agg.linear and plan["transform"] != "none":  # said before the gene statistics are computed
        raise ConfigError(
            f"`transform=\"{plan['transform']}\"` needs a linear aggregator, and {agg_cfg.method!r} is not one "
            "(it defines no `row_weights`), so it cannot embed centred or scaled input. Use `transform=\"none\"` "
            "(its default), or a linear aggregator such as `aggregator=\"wa\"` (docs/plugins.md, \"An aggregator\")."
        )
    if not isinstance(key_added, str) or not key_added:
        raise InputError(f"key_added must be a non-empty string (an obsm key), got {key_added!r}.")
    if getattr(adata, "isbacked", False) and getattr(adata, "is_view", False):
        raise InputError(
            "adata is a view of a backed AnnData, which cannot store results (anndata would have to copy it). "
            "Load the cells first (`adata[...].to_memory()`), or embed the whole file "
            "(`scelmo embed-cells in.h5ad -o out.h5ad --backed`)."
        )
    if copy:
        adata = _copy_of(adata)
    # a layer named in this call overrides a use_raw from the config, but not one named in this call
    matrix, var_names, source = select_matrix(
        adata, layer=agg_cfg.layer, use_raw=agg_cfg.use_raw if layer is None or use_raw is not None else False
    )
    n_cells, n_genes = n_rows_cols(matrix)
    if n_cells == 0:
        raise InputError("The data has no cells (0 rows); nothing to embed.")
    if getattr(adata, "isbacked", False) and getattr(matrix, "format", None) == "csc":
        # each block of cells reads every column: time and memory grow with the file (a trial)
        warnings.warn(
            "The backed matrix is stored column by column (CSC): every block of cells reads the whole matrix, so "
            "memory and time grow with the file. Convert the file once to rows (CSR): `adata = "
            "anndata.read_h5ad(path); adata.X = adata.X.tocsr(); adata.write_h5ad(path2)`.",
            ScelmoWarning, stacklevel=2)
    names = [str(v) for v in var_names]
    _check_names(names)

    # an LLM describes only the genes the embedding reads (its selection), each a paid call; the
    # offline knowledge writes the whole table first (free), as before
    by_llm = _describes_by_llm(gene_embeddings, settings)
    if not by_llm:
        gene_embeddings, lookup, E, mask, res = _aligned_gene_table(names, gene_embeddings, settings, plan, progress)

    do_norm = should_normalize(plan["normalize"], matrix)
    # a number of genes asked for (in this call, or set in the configuration: config=, --set, an
    # environment variable) is selected so, over a var["highly_variable"] column
    own_selection = "n_top_genes" in agg_cfg.model_fields_set and mask_var is None
    stats = _input_statistics(adata, matrix, source, gene_stats, plan, mask_var, do_norm, lazy, progress,
                              agg_cfg.chunk_size, names=names, own_selection=own_selection)
    use_dask = distributed.is_dask_array(matrix)
    selected, how = _gene_mask(adata, source, n_genes, mask_var, plan, stats, agg_cfg.n_top_genes,
                               own_selection=own_selection)
    if by_llm:
        gene_embeddings, lookup, E, mask, res = _aligned_gene_table(names, gene_embeddings, settings, plan, progress,
                                                                    only=selected)
    use = selected & mask
    if not selected.any() and how.startswith("hvg"):
        raise InputError(
            f"Gene selection found no variable genes in these {n_cells} cells (a single cell, or values that do "
            "not vary between cells?). Embed with the reference's statistics (`gene_stats=`), choose genes "
            "(`mask_var=`), or use every gene (`flavor=\"paper\"`)."
        )
    if not use.any():
        raise InputError(
            f"None of the {int(selected.sum())} selected genes has a gene vector; select other genes "
            "(`mask_var=`) or use `flavor=\"paper\"` to embed from all genes."
        )
    center = stats.mean if stats is not None and plan["transform"] in ("center", "scale") else None
    scale = stats.std if stats is not None and plan["transform"] == "scale" else None

    agg_options = dict(
        genes=lookup, settings=settings, l2_normalize=agg_cfg.l2_normalize, normalize=do_norm,
        # "all" keeps genes without a vector as zero rows: wa's weight is 1 / the cell's total, as in the paper
        columns=None if how == "all" else np.flatnonzero(use), center=center, scale=scale,
        precision=agg_cfg.precision,
    )
    if use_dask:
        result = distributed.aggregate(agg, matrix, E, out=out, lazy=lazy, progress=progress, **agg_options)
    else:
        result = agg.aggregate(matrix, E, chunk_size=agg_cfg.chunk_size, progress=progress, out=out, **agg_options)
    emb = result.embedding
    if out is None:
        adata.obsm[key_added] = emb
    # what the matrix was in the file (distributed.read_lazy puts raw/X or a layer in X)
    read_from = (adata.uns.get(distributed.LAZY_SOURCE) if source == "X" else None) or source
    if read_from != "raw.X":
        adata.var[keys.GENES_USED] = use
    elif keys.GENES_USED in adata.var:  # an earlier embedding's genes: not this one's (adata.var is not raw's)
        del adata.var[keys.GENES_USED]

    info = _embed_cells_record(adata, result, names, lookup, mask, use, res, gene_embeddings, settings, plan,
                               how=how, agg=agg, source=read_from, do_norm=do_norm, lazy=lazy, use_dask=use_dask,
                               key_added=key_added)
    # which statistics selected and centred the genes (given ones: the reference's, before they
    # were laid out over this data's genes): embeddings with different ones are not comparable
    made_by = gene_stats if gene_stats is not None else stats
    info["gene_stats_id"] = made_by.fingerprint() if made_by is not None else None
    info["gene_stats_summary"] = made_by.summary() if made_by is not None else None  # (compared with a tolerance)
    provenance.record(adata, "embed_cells", info)
    return adata if copy else None
