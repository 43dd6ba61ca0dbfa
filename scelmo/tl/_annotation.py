"""Zero-shot cell-type annotation: kNN label transfer and text-prompt matching.

Exposed as :func:`scelmo.tl.annotate`.

* **Reference transfer** (the paper's zero-shot annotation): each query cell takes the
  majority label of its ``k`` (default 10) nearest reference cells by cosine distance
  on the scelmo embedding. Score = fraction of those neighbours that carry the label.
* **Text prompts, from gene knowledge** (``method="markers"``, the default): each
  candidate cell type gets a marker set (:func:`knowledge_markers`). A name that matches
  cell types in the knowledge source's curated marker sets (the offline default ships
  183 human and mouse types; matched by words, abbreviations and the genes the name
  mentions, :mod:`scelmo.knowledge.cell_types`) takes their markers. A name none of them
  matches is matched to cell-type definitions (the offline default: the Cell Ontology's)
  and takes the genes they name ("secretes glucagon": GCG). Any other name (or the
  definition of the one type it matches, or the user's description) is compared with
  every phrase of every gene's description (GO processes, pathways...) by the text
  embedder; a gene's affinity to a type is its best phrase's cosine, and the
  genes most specific to the type among the candidates (plus genes the name mentions,
  e.g. CD14 in "CD14+ monocyte") are its markers. Each cell's score for a type is the
  weighted mean of its markers' standardised expression (:func:`marker_match`); each
  cluster of the scelmo embedding takes the type whose markers it expresses most. Score =
  softmax probability of that type for the cluster; clusters expressing no candidate's
  markers above average are ``unknown``.
* **Text prompts, by embedding similarity** (``method="embedding"``): the cell-type
  texts and the cell embeddings are compared directly (both centred on their own mean).

Cells whose score is below ``min_score`` are labelled ``unknown_label``.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scelmo import keys, provenance
from scelmo.config import get_settings
from scelmo.errors import CoverageWarning, InputError, ScelmoError, ScelmoWarning
from scelmo.expression.matrix import select_matrix
from scelmo.expression.selection import normalize_chunk, same_stats, should_normalize
from scelmo.genes import GeneEmbeddings, GeneVocabulary
from scelmo.knn import knn_vote, unit_rows
from scelmo.knowledge import roles
from scelmo.knowledge.cell_types import (
    SYNONYMS,
    MarkerSet,
    covers_name,
    in_organ,
    inherit_named_parents,
    marker_weights,
    match_cell_types,
    match_descendants,
    name_key,
    names_in_organ,
    other_organ,
    parse_name,
    query_tissue,
    tissue_conflict,
)
from scelmo.knowledge.descriptions import describe
from scelmo.plugin import KnowledgeSource, split_phrases
from scelmo.tl._clustering import cluster
from scelmo.tl._common import _check_finite, _copy_of
from scelmo.tl._embedding import _var_flags as var_flags
from scelmo.tl._embedding import (
    embed_cells,
    flavor_plan,
    names_as_in,
    reference_gene_stats,
    reference_gene_table,
)


def prompt_match(
    cells: np.ndarray, type_vectors: np.ndarray, names: Sequence[str], *, temperature: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-matching cell type per cell, its softmax score, and the full similarity matrix."""
    C = unit_rows(cells - cells.mean(axis=0, keepdims=True))
    T = type_vectors - (type_vectors.mean(axis=0, keepdims=True) if len(names) > 1 else 0)
    T = unit_rows(T)
    sims = C @ T.T
    z = (sims - sims.max(axis=1, keepdims=True)) / temperature
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    best = sims.argmax(axis=1)
    return np.asarray(names, dtype=object)[best], p[np.arange(len(best)), best].astype(np.float32), sims



def _named_genes(name: str, vocab: Any, gene_of: Mapping[str, str], *, exact: bool = False) -> list[str]:
    """The data's genes a cell-type name mentions by symbol (``"CD14+ monocyte"`` -> CD14) or
    full name (``"insulin-producing cell"`` -> INS), under the data's own names
    (``ENSG00000170458``, ``Cd14``); ``gene_of`` maps canonical human symbols to them.
    ``exact``: only current symbols and full names, not aliases ("DN1", "CAF" are aliases of
    genes but, in a cell-type name, rarely mean them), and any symbol written in capitals,
    digit or not ("cell expressing CFTR and PDGFRB": a description)."""
    if vocab is None:
        return []
    # whole tokens only: "CAF" inside "myCAF" is no gene
    tokens = re.findall(r"(?<![A-Za-z0-9])(?:[A-Za-z][A-Za-z0-9-]*[0-9][A-Za-z0-9-]*|[A-Z]{2,}[0-9A-Z-]*)(?![A-Za-z0-9])",
                        name)
    res = vocab.resolve(tokens, species="human") if tokens else None
    words, _, negated = parse_name(name, vocab)
    absent = {g for a in negated for g in a}  # "CD14-negative": not a marker
    words = set(words)  # "cDC1", "Th1": cell-type abbreviations, not genes
    symbols = [s for t, s, how in zip(tokens, res.symbols if res else [], res.how if res else [], strict=True)
               if s and t.lower() not in SYNONYMS and (not exact or how == "symbol")
               and (t.lower() not in words or (exact and t.isupper() and len(t) >= 3))]
    symbols += vocab.genes_named_in(name) if hasattr(vocab, "genes_named_in") else []  # "insulin-producing"
    return list(dict.fromkeys(gene_of[s] for s in symbols if s in gene_of and s not in absent))


def _genes_by_symbol(genes: Sequence[str], symbols: Sequence[str | None],
                     prefer: Container[str] = frozenset()) -> dict[str, str]:
    """Canonical symbol -> the data's gene name for it: the first, unless another gene of the
    same symbol is named in ``prefer`` (upper case; a marker set's own spelling: of the mouse
    Ly6a, Ly6c2 and Ly6g, all LY6H, a set listing Ly6c2 means Ly6c2)."""
    gene_of: dict[str, str] = {}
    for g, s in zip(genes, symbols, strict=True):
        if s and (s not in gene_of or (str(g).upper() in prefer and gene_of[s].upper() not in prefer)):
            gene_of[s] = g
    return gene_of


def knowledge_markers(
    cell_types: Sequence[str],
    genes: Sequence[str],
    *,
    texts: Sequence[str] | None = None,
    n_markers: int = 30,
    config: Any = None,
    progress: bool | None = None,
    curated_genes: Sequence[str] | None = None,
    measured_genes: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Weighted marker genes for each candidate cell type, from gene and cell-type knowledge.

    A name that matches cell types whose marker genes the knowledge source knows
    (:meth:`~scelmo.plugin.KnowledgeSource.cell_type_markers`, matched by words and named
    genes as :mod:`scelmo.knowledge.cell_types` describes) gets those markers (weight 1;
    its parent types' markers 0.5) and the genes its name mentions. Any other name gets
    the genes whose descriptions are most like it.

    Parameters
    ----------
    cell_types
        Candidate names.
    genes
        Gene names to choose from (e.g. the genes expressed in the data).
    texts
        Texts to embed for the types instead of their names (e.g. descriptions).
    n_markers
        The ``n_markers`` genes most like each type are taken, less those more like
        another candidate.
    config
        Settings or a mapping of overrides: which knowledge source (or LLM) describes
        the genes and which embedder compares the texts.
    progress
        Show progress bars (default: on a terminal or in a notebook).
    curated_genes
        Genes the curated marker sets may use (default: ``genes``). A rare type's markers
        are expressed in few cells, so annotation passes every detected gene here.
    measured_genes
        Every gene the data measures, detected or not (default: ``genes`` and
        ``curated_genes``): a broad name's part whose measured markers the data mostly
        does not detect is weak evidence (:class:`~scelmo.knowledge.cell_types.MarkerSet`).

    Returns
    -------
    ``{type: {gene: weight}}``: curated markers as above, or the knowledge markers weighted
    by specificity (their phrase similarity to this type minus that to the closest other
    candidate); with the genes the name mentions (top weight).
    """
    settings = get_settings(config)
    describer = roles.description_writer(settings)
    vocab = roles.vocabulary(describer)
    genes = [str(g) for g in genes]
    res = vocab.resolve(genes, species=settings.genes.species) if vocab is not None else None
    symbols = res.symbols if res is not None else genes
    named_of = _genes_by_symbol(genes, symbols)
    # curated markers of the known cell types a name matches come first ...
    pool, pool_symbols = genes, symbols
    if curated_genes is not None:
        pool = [str(g) for g in curated_genes]
        pool_symbols = vocab.resolve(pool, species=settings.genes.species).symbols if vocab is not None else pool
    measured = set(pool_symbols) | set(symbols)
    if measured_genes is not None and vocab is not None:
        measured |= set(vocab.resolve([str(g) for g in measured_genes], species=settings.genes.species).symbols)
    elif measured_genes is not None:
        measured |= {str(g) for g in measured_genes}
    curated, unmatched, definitions = _curated_markers(describer, vocab, cell_types, pool, pool_symbols,
                                                       species=res.species if res is not None else None,
                                                       measured=measured - {None})
    out = {name: w for name, w in curated.items() if w}
    described = {str(t) for t, x in zip(cell_types, texts or cell_types, strict=True) if str(x) != str(t)}
    # a description that names genes ("acinar cell secreting PRSS1, CPA1 and CELA3A") says
    # what marks the type: those genes (the data has) are its markers, whatever else it matches
    for name, text in zip(cell_types, texts or cell_types, strict=True):
        told = _named_genes(str(text), vocab, named_of, exact=True) if str(name) in described else []
        if told:
            out[str(name)] = dict.fromkeys(told, 1.0)
    rest = [t for t in cell_types if str(t) not in out]
    if not rest:
        return {str(t): out[str(t)] for t in cell_types}
    # ... the other names get markers derived from what the genes' descriptions say, compared
    # with the name's description: the user's, else the definition of the one known type it
    # matches (pancreas: 0.664 -> 0.814 on Muraro, 0.800 -> 0.824 on Baron), else the name
    texts = [str(x) if str(t) in described else definitions.get(str(t), str(t))
             for t, x in zip(cell_types, texts or cell_types, strict=True)]
    # a name a known type matches whose marker genes the data does not detect gets none: the
    # genes whose GO terms read like it are no substitute (Muraro's acinar cells went to a
    # "T cell" marked by DDOST and MSN); it is then never given out, as the warning says
    absent = [t for t in rest if str(t) in curated and t not in described and t not in unmatched]
    if absent:
        warnings.warn(
            f"The known marker genes of {', '.join(repr(str(t)) for t in absent)} are not among the data's "
            "(detected) genes, so no cluster will be given "
            f"{'that name' if len(absent) == 1 else 'those names'}. If the cells are there, give each a "
            "description naming marker genes the data has (`cell_types={name: 'cell expressing GENE1, GENE2'}`) "
            "or use a labelled `reference`.", ScelmoWarning, stacklevel=2,
        )
        out.update({str(t): {} for t in absent})
        rest = [t for t in rest if t not in absent]
        if not rest:
            return {str(t): out[str(t)] for t in cell_types}
    rest_names = {str(t) for t in rest}
    unmatched = [t for t in unmatched if t not in described and t in rest_names]
    if unmatched:
        warnings.warn(
            f"No curated marker set or cell-type definition names marker genes for "
            f"{', '.join(repr(str(t)) for t in unmatched)}: their markers come from the genes' GO terms and "
            "pathways most like the name (or its Cell Ontology definition), which find few real markers outside "
            "immune cells. Prefer a labelled `reference`, give each name a description "
            "(`cell_types={name: description}`), or describe the names with an LLM (`describe_cell_types=True`).",
            ScelmoWarning, stacklevel=2,
        )
    wanted = sorted({s for s in symbols if s})
    if isinstance(describer, KnowledgeSource):
        by_symbol = describer.phrases(wanted)
    else:  # an LLM: its (cached) descriptions, cut into clauses
        texts_ = describe(wanted, subject="gene", config=settings, progress=progress).texts
        by_symbol = {g: split_phrases(t) for g, t in texts_.items()}
    gene_phrases = {g: by_symbol.get(s, []) for g, s in zip(genes, symbols, strict=True) if s}
    unique = sorted({p for ps in gene_phrases.values() for p in ps})
    if not unique:
        raise ScelmoError("No gene descriptions available for these genes; cannot derive marker genes.")
    P = roles.embed_texts(settings, unique, progress=progress, desc="embedding description phrases")
    T = roles.embed_texts(settings, list(texts or cell_types), progress=False, desc="embedding cell-type texts")
    mean = P.mean(axis=0, keepdims=True)  # the phrases' shared direction says "a gene phrase"
    sim = unit_rows(T - mean) @ unit_rows(P - mean).T
    index = {p: j for j, p in enumerate(unique)}
    cand = [g for g in genes if gene_phrases.get(g)]
    A = np.stack([sim[:, [index[p] for p in gene_phrases[g]]].max(axis=1) for g in cand], axis=1)
    for t, name in enumerate(cell_types):
        if str(name) in out:
            continue
        others = np.delete(A, t, axis=0).max(axis=0) if len(cell_types) > 1 else np.zeros(A.shape[1])
        # the n genes most like this type, less any that are more like another candidate;
        # each weighted by how much more like this type it is (its specificity)
        order = [c for c in np.argsort(-A[t])[:n_markers] if A[t, c] > others[c]]
        w = {cand[c]: float(A[t, c] - others[c]) for c in order}
        named = _named_genes(str(name), vocab, named_of)
        top = max(w.values(), default=1.0)
        w.update({g: top for g in named})  # a gene the name itself mentions: as specific as the best
        out[str(name)] = w
    empty = [str(t) for t in cell_types if not out[str(t)] and t not in absent]
    if empty:
        warnings.warn(
            f"No marker gene of the data was found for {', '.join(map(repr, empty))}: no cluster can be given "
            "that name. Describe it with marker genes the data has (`cell_types={name: 'cell expressing GENE1, "
            "GENE2'}`) or use a labelled `reference`.", ScelmoWarning, stacklevel=2,
        )
    return {str(t): out[str(t)] for t in cell_types}


#: the share of a name's matched cell-type definitions that must name a gene for it to be a marker
_DEFINITION_CONSENSUS = 0.5


def _curated_markers(describer: Any, vocab: Any, cell_types: Sequence[str], genes: list[str],
                     symbols: Sequence[str | None], *, species: str | None = None,
                     measured: Container[str] | None = None,
                     ) -> tuple[dict[str, dict[str, float]], list[str], dict[str, str]]:
    """``{type: {gene: weight}}`` from the knowledge source's curated cell-type marker sets
    (:mod:`scelmo.knowledge.cell_types`) and, for names none of them matches, from the genes
    cell-type definitions name (:meth:`~scelmo.plugin.KnowledgeSource.cell_type_definition_markers`),
    restricted to ``genes``, with the genes the name itself names (weight 1), and empty
    where none is usable; the names that no known type
    with markers matches (not: matched, but its markers are not in ``genes``); and, for
    names matched to one defined type only, its definition. A curated set of the data's
    ``species`` is preferred to the other species' set for the same name. ``measured``: the
    symbols of every gene the data measures (see :class:`MarkerSet`)."""
    if not isinstance(describer, KnowledgeSource):
        return {}, [], {}
    names = [str(t) for t in cell_types]
    known: list[Any] = []
    tiers: list[list[Any]] = []
    matches: dict[str, Any] = {}
    consensus: dict[str, float] = {}
    partial: set[str] = set()  # names a curated set matches without having all their words
    organ: dict[str, str] = {}  # bare names whose curated sets are from another organ than the list's
    for level, tier in enumerate((describer.cell_type_markers, describer.cell_type_definition_markers)):
        rest = [n for n in names if n not in matches or not matches[n].types or n in partial]
        types = tier() if rest else []
        if level == 1:
            types = inherit_named_parents(types, vocab)
        tiers.append(types)
        if types:  # the first tier that matches a name decides its markers ...
            known += types
            found = {n: m for n, m in match_cell_types(rest, types, vocab, species=species if level == 0 else None).items()
                     if m.types or n not in matches}
            # ... a bare name beside names of one organ is that organ's type ("stellate cell" beside
            # "alpha cell" is the pancreatic one, a definition, not the curated liver set), if a
            # definition of it there names genes; else it keeps its curated match
            for n in (n for n in organ if n in found):
                narrowed = in_organ(n, found[n], organ[n], vocab)
                if narrowed is None:
                    del found[n]
                else:
                    found[n] = narrowed
            # ... unless the name names an organ the curated sets are not from and a definition
            # has the name's every word: "pancreatic stellate cell" is not the curated liver
            # "Stellate cell", "type B pancreatic cell" not the B lymphocyte
            found = {n: m for n, m in found.items() if n not in partial
                     or (m.exact and covers_name(n, m, vocab) and any(k.markers for k in m.types))}
            if level == 0:
                partial = {n for n, m in found.items() if m.types and tissue_conflict(n, m, vocab)}
                if any(m.types and all(k.tissue not in ("", "immune") for k in m.types) for m in found.values()):
                    tissue = query_tissue(names, describer.cell_type_definition_markers(), vocab)
                    # (not when the list names that type too: "stellate cell" beside "pancreatic
                    # stellate cell" would take the same markers, and the two names one set)
                    organ = {n: tissue for n, m in found.items()
                             if tissue and n not in partial and other_organ(n, m, tissue, vocab)
                             and not any(names_in_organ(o, n, tissue, vocab) for o in names if o != n)}
                    partial |= set(organ)
            matches.update(found)
            if level == 1:
                # definitions mention genes in passing ("reportedly CD7-positive"): a name
                # takes only the genes most of its matched definitions name
                consensus.update(dict.fromkeys(found, _DEFINITION_CONSENSUS))
    if not known:
        return {}, [], {}
    if len(tiers) == 2 and tiers[0] and tiers[1]:
        # a broad name whose definitions name no gene ("lymphocyte", "myeloid cell") takes in
        # the curated types of the ontology types below it (T, B, NK cells ...)
        bare = {n: m for n, m in matches.items() if n in consensus and m.types and not any(k.markers for k in m.types)}
        others = {n: m for n, m in matches.items() if m.types}
        for n, m in match_descendants(bare, tiers[1], tiers[0], vocab, species=species, others=others).items():
            matches[n] = m
            consensus.pop(n)
    definitions = {}
    for n, m in matches.items():
        defined = {k.source or k.name: k.definition for k in m.types if k.definition}
        if len(defined) == 1:  # one type (however many of its synonyms matched)
            definitions[n] = next(iter(defined.values()))
    gene_of = _genes_by_symbol(genes, symbols)
    out: dict[str, dict[str, float]] = {}
    for name, w in marker_weights(matches, known, consensus=consensus).items():
        # the known types' markers that the data has, and the genes the name itself names
        # ("GCG+ cell", "insulin-producing cell"): a name naming a gene is marked by it even
        # when no known type matches
        spelled = {g.upper() for k in matches[name].types for g in k.source_markers}
        own = _genes_by_symbol(genes, symbols, spelled) if spelled else gene_of  # (the set's own paralog)
        marks = w.renamed(own, measured) if isinstance(w, MarkerSet) else {own[s]: v for s, v in w.items() if s in own}
        known_marks = bool(marks)
        named = _named_genes(name, vocab, gene_of)
        marks.update(dict.fromkeys(named, 1.0))
        if isinstance(marks, MarkerSet) and marks.lineage is not None:  # a gene the name names defines it
            marks.lineage = marks.lineage.with_core(named)
        # alone, a gene the name names counts only by its symbol or full name, not by an alias
        out[name] = marks if known_marks or _named_genes(name, vocab, gene_of, exact=True) else {}
    return out, [n for n, m in matches.items() if not any(k.markers for k in m.types)], definitions


def _cluster_labels(adata: Any, use_rep: str, groupby: str | None) -> np.ndarray:
    if groupby is not None:
        if groupby not in adata.obs:
            raise InputError(f"groupby={groupby!r} is not a column of adata.obs.")
        return adata.obs[groupby].astype(str).to_numpy()
    import anndata as ad

    tmp = ad.AnnData(obs=adata.obs[[]].copy())  # scelmo.tl.cluster's defaults, without touching adata
    tmp.obsm[use_rep] = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    cluster(tmp, use_rep=use_rep)
    return tmp.obs[keys.CLUSTER].astype(str).to_numpy()


#: a broad name's score in a group that expresses none of its parts (see :func:`_best_part`)
_NO_FIT = -1e3


def _best_part(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float]], idx: np.ndarray) -> np.ndarray:
    """The cells' scores for a name covering several types: its best-fitting part in the
    group ``idx`` by the group's mean, among the parts the group expresses most markers of
    above average (by weight, out of all the markers the knowledge lists for the part,
    whether the data has them or not). With many parts, one of them often has a marker or
    two another tissue also expresses (LCN2 and SLPI of neutrophil precursors in pancreatic
    duct cells, whose other markers the data lacks); a type the group really is expresses
    most of its markers. No such part: a score below every cell's (the name does not fit)."""
    fits = [c[idx].mean() if w.size and float(w[z[idx].mean(axis=0) > 0].sum()) >= 0.5 * max(listed, float(w.sum()))
            else -np.inf for c, z, w, listed in parts]
    best = int(np.argmax(fits))
    return parts[best][0][idx] if np.isfinite(fits[best]) else np.full(int(idx.sum()), _NO_FIT)


def marker_match(
    adata: Any,
    markers: Mapping[str, Mapping[str, float]],
    groups: np.ndarray,
    *,
    layer: str | None = None,
    temperature: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Type per group from its cells' marker scores; the group's softmax score; the cells x types scores.

    A cell's score for a type is the specificity-weighted mean of its markers' standardised
    log-expression (each gene centred and scaled over the cells). A group takes the type with
    the highest mean score among those whose mean is positive and for which at least 10% of
    its cells score above average (one cell that expresses a rare marker does not make its
    cluster that type), else ``None``; its score is that type's softmax among all. A name
    covering several types (a :class:`~scelmo.knowledge.cell_types.MarkerSet` with
    ``parts``) is scored in each group by its best-fitting part (best by the group's mean:
    a per-cell best of many parts would favour it by chance), among the parts the group
    expresses most markers of; where it expresses none, the name's score is ``-1000``.
    """
    matrix, var_names, _ = select_matrix(adata, layer=layer, use_raw=None if layer is None else False)
    X = matrix[:] if not hasattr(matrix, "to_memory") else matrix.to_memory()
    if should_normalize("auto", X):
        X = normalize_chunk(X)
    col = {str(v): i for i, v in enumerate(var_names)}
    names = list(markers)

    def score(weights: Mapping[str, float], rows: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Each cell's score, and the standardised markers with their weights; ``rows``:
        the cells the genes are standardised over (default: all)."""
        pairs = [(col[g], w) for g, w in weights.items() if g in col and w > 0]
        if not pairs or (rows is not None and rows.sum() < 2):
            return None
        idx, w = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        sub = X[:, idx]
        sub = np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=np.float64)
        ref = sub if rows is None else sub[rows]
        sd = ref.std(axis=0)
        z = np.divide(sub - ref.mean(axis=0), sd, out=np.zeros_like(sub), where=sd > 0)
        return z @ w / w.sum(), z, w

    # per name: one score column, or one per part
    def detected(genes: Sequence[str]) -> np.ndarray:
        idx = [col[g] for g in genes if g in col]
        sub = X[:, idx]
        return np.asarray((sub > 0).sum(axis=1)).ravel() > 0

    families = _families(markers, score, detected)
    columns: list[list[tuple[np.ndarray, ...]]] = []
    for t in names:
        ms = markers[t]
        listed = getattr(ms, "listed", ()) or [sum(p.values()) for p in getattr(ms, "parts", ())]
        parts = [(*p, float(n)) for p, n in ((score(part), n) for part, n in zip(getattr(ms, "parts", ()), listed,
                                                                                  strict=True)) if p is not None]
        whole = score(ms) if not parts else None
        empty = (np.zeros(adata.n_obs), np.zeros((adata.n_obs, 0)), np.zeros(0))
        columns.append(parts or [whole if whole is not None else empty])
    S = np.zeros((adata.n_obs, len(names)))
    labels = np.empty(adata.n_obs, dtype=object)
    score_ = np.zeros(adata.n_obs, dtype=np.float32)
    # the units a group chooses among: each name, except that the subtypes of one lineage
    # compete as their lineage (its parent's markers) and then among themselves
    member = {names.index(n): fam for fam in families for n in fam.names}
    units = [j for j in range(len(names)) if j not in member] + [-1 - f for f in range(len(families))]
    def pick(U: np.ndarray, also: np.ndarray | None = None) -> tuple[int | None, float]:
        # the types the group could be: a positive mean, carried by 10% of its cells or more;
        # the best of those (a rare marker of an absent type in a few cells does not make
        # the group unknown), with its softmax among all types as the score (a close or
        # higher rival lowers it). ``also``: units that fit regardless
        m = U.mean(axis=0)
        fits = (m > 0) & ((U > 0).mean(axis=0) >= 0.1)
        if also is not None:
            fits |= also
        if not fits.any():
            return None, 0.0
        p = np.exp((m - m.max()) / temperature)
        best = int(np.where(fits, m, -np.inf).argmax())
        return best, float(p[best] / p.sum())

    for g in np.unique(groups):
        idx = groups == g
        for j, cols in enumerate(columns):
            S[idx, j] = cols[0][0][idx] if len(cols) == 1 else _best_part(cols, idx)
        # a lineage also fits a group most of whose cells detect its markers (in a query of T
        # cells only, the CD3 genes do not stand out anywhere: a review found 105 of 173 unknown)
        best, p_best = pick(np.column_stack([S[idx, j] if j >= 0 else families[-1 - j].lineage[idx] for j in units]),
                            np.array([j < 0 and families[-1 - j].detected[idx].mean() >= 0.5 for j in units]))
        j = None if best is None else units[best]
        if j is not None and j < 0:  # a lineage: its subtype whose core markers the group shows most
            fam = families[-1 - j]
            k, q, close = _subtype(fam.core[idx], temperature)
            if k is None:  # no clear lead: of the subtypes not clearly behind, the best by its markers
                tied = [names.index(fam.names[i]) for i in np.flatnonzero(close)]
                m = S[idx][:, tied].mean(axis=0)
                q_all = np.exp((m - m.max()) / temperature)
                k = int(m.argmax())
                j, p_best = tied[k], p_best * float(q_all[k] / q_all.sum())
            else:
                j, p_best = names.index(fam.names[k]), p_best * q
        labels[idx] = None if j is None else names[j]
        score_[idx] = p_best
    for fam in families:  # a subtype's cell scores: its lineage's plus its own within it
        for k, n in enumerate(fam.names):
            S[:, names.index(n)] = fam.lineage + fam.core[:, k]
    return labels, score_, S


@dataclass(frozen=True)
class _Family:
    """Candidates that are subtypes of one lineage (:class:`~scelmo.knowledge.cell_types.Lineage`):
    the cells' lineage score (the parent's markers) and, per subtype, the mean of its core
    markers standardised over the lineage's cells (those with a positive lineage score)."""

    names: tuple[str, ...]
    lineage: np.ndarray
    core: np.ndarray  # cells x names
    detected: np.ndarray  # cells that detect any of the parent's markers


def _subtype(core: np.ndarray, temperature: float) -> tuple[int | None, float, np.ndarray]:
    """The subtype (column of ``core``, a group's cells x its lineage's subtypes) whose core
    markers the group shows most, and its softmax; ``None`` unless it leads every other by
    two standard errors of their paired difference over the group's cells. (A group that is
    most of its lineage has every core score near 0 there: a review found such a lead of
    0.001 deciding Kang's CD4 T cells by rounding.) Third: the subtypes not clearly behind
    the leader (the leader among them)."""
    means = core.mean(axis=0)
    top = int(np.argmax(means))
    d = core[:, [top]] - core
    se = d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(core.shape[1], np.inf)
    close = ~(d.mean(axis=0) > 2 * se)
    close[top] = True
    if close.sum() > 1:
        return None, 0.0, close
    q = np.exp((means - means.max()) / temperature)
    return top, float(q[top] / q.sum()), close


def _families(markers: Mapping[str, Any], score: Any, detected: Any) -> list[_Family]:
    by_parent: dict[tuple[str, tuple[str, ...]], list[str]] = {}  # (a parent of one name, e.g. the human
    for name, ms in markers.items():                                # and the mouse "T cell", is two parents)
        lin = getattr(ms, "lineage", None)
        if lin is not None and lin.core and lin.markers:
            by_parent.setdefault((lin.name, lin.markers), []).append(name)
    out = []
    for members in by_parent.values():
        if len(members) < 2:
            continue
        first = markers[members[0]].lineage
        scored = score(dict.fromkeys(first.markers, 1.0))
        if scored is None:
            continue
        lineage = scored[0]
        inside = lineage > 0
        cores, kept = [], []
        for name in members:
            z = score(dict.fromkeys(markers[name].lineage.core, 1.0), rows=inside)
            if z is not None:
                cores.append(z[0])
                kept.append(name)
        if len(kept) > 1:
            out.append(_Family(tuple(kept), lineage, np.column_stack(cores), detected(first.markers)))
    return out


def _rewarned(fn: Any, *args: Any, prefix: str = "", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with its warnings (also those of the steps it runs) said again
    afterwards, two frames up (the caller of the function that calls this), each after
    ``prefix``; also when ``fn`` fails. When a filter of the caller's turns warnings into
    errors (``-W error``, ``simplefilter("error", ...)``) nothing is recorded: such a warning
    must raise where it happens, not after the work."""
    if any(f[0] == "error" for f in warnings.filters):
        return fn(*args, **kwargs)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # type: ignore[assignment]
            warnings.simplefilter("always")
            return fn(*args, **kwargs)
    finally:  # (the catch is over: the caller's own filters decide, once per message as usual)
        for w in caught:
            warnings.warn(f"{prefix}{w.message}" if prefix else w.message, w.category, stacklevel=3)


def _said_where_called(fn: Any) -> Any:
    """``fn``'s warnings, also those of the steps it runs (embedding, marker lookup), shown at
    its caller's line, not at scelmo's (a notebook trial: a notebook echoed scelmo's own source
    lines under them, ``markers = knowledge_markers(...``)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _rewarned(fn, *args, **kwargs)
    return wrapper


def _embed_reference(reference: Any, **options: Any) -> None:
    """``embed_cells(reference, ...)`` whose warnings say they are about the reference (its
    empty cells are not the query's: "20 of 500 cells ..." about a 200-cell query misled)."""
    _rewarned(embed_cells, reference, prefix="The reference: ", **options)


@_said_where_called
def annotate(
    adata: Any,
    *,
    reference: Any = None,
    ref_labels: str | Sequence[Any] | None = None,
    cell_types: Sequence[str] | Mapping[str, str] | None = None,
    describe_cell_types: bool = False,
    method: str = "markers",
    groupby: str | None = None,
    n_markers: int = 30,
    layer: str | None = None,
    k: int = 10,
    use_rep: str = keys.X_SCELMO,
    min_score: float = 0.0,
    unknown_label: str = keys.UNKNOWN_LABEL,
    temperature: float = 0.05,
    gene_embeddings: GeneEmbeddings | str | None = None,
    config: Any = None,
    key_added: str = keys.LABEL,
    copy: bool = False,
    progress: bool | None = None,
) -> Any:
    """Annotate cell types with no training.

    Parameters
    ----------
    adata
        Query cells. ``adata.obsm[use_rep]`` is computed with
        :func:`scelmo.tl.embed_cells` (same ``config``) if missing.
    reference, ref_labels
        Labelled reference AnnData and its labels (an ``obs`` column name or an array):
        kNN label transfer. Reference embeddings are computed if missing; a query
        embedding computed here uses the reference's gene statistics (gene selection
        and centring, :func:`scelmo.tl._embedding.reference_gene_stats`), so a query of
        few cell types is placed as the reference would place it. A query embedded
        beforehand on its own statistics is embedded again that way for the transfer (its
        ``obsm[use_rep]`` is left as it is).
    cell_types
        Candidate cell types for text-prompt annotation: a list of names, or a mapping
        ``name -> description`` whose descriptions are embedded instead of the names. A
        description that names marker genes (``"acinar cell secreting PRSS1, CPA1"``) gives
        exactly those genes (the ones the data has) as the type's markers. A name left
        with no marker gene in the data is warned about (no cluster can get it).
        Only these types can be assigned.
    describe_cell_types
        Have the ``describe`` role's LLM write a description of each listed name (prompt
        ``cell-type``, cached like gene descriptions; see :func:`scelmo.describe`) and
        embed the descriptions instead of the bare names.
    method
        For ``cell_types``: ``"markers"`` (default: curated or knowledge-derived marker
        genes scored per cluster, see the module docstring) or ``"embedding"`` (cell vectors against
        the type texts' vectors).
    groupby
        With ``method="markers"``: an ``obs`` column of clusters to label (default:
        Leiden clusters of ``adata.obsm[use_rep]``, resolution 1).
    n_markers
        Marker genes per cell type taken from the gene descriptions (names without a
        curated marker set).
    layer
        Expression values for marker scoring (default ``adata.raw`` or ``X``, as
        :func:`scelmo.tl.embed_cells`); counts are log-normalised first. Also the matrix
        the embeddings computed here are made from: the query's, and with ``reference``
        the reference's too.
    k
        Neighbours for the reference vote (10, as in the paper).
    use_rep
        ``obsm`` key of the cell embedding. Computed with :func:`~scelmo.tl.embed_cells`
        when missing, if it is a scelmo key (``"X_scelmo"`` or a name starting with it);
        another method's key (``"X_pca"``, ``"X_scVI"``) must already be there in both
        ``adata`` and ``reference``.
    min_score
        Cells scoring below this get ``unknown_label`` (default 0: never).
    unknown_label
        Label of cells below ``min_score`` and of clusters expressing no candidate's
        markers (``method="markers"``).
    temperature
        Softmax temperature turning prompt similarities into scores (``method="embedding"``;
        the marker method's group scores use a fixed 0.25 on its mean z-scores, recorded in
        ``uns``).
    gene_embeddings
        The gene table (a :class:`~scelmo.genes.GeneEmbeddings` or a saved one's directory) for
        the embeddings computed here, as in :func:`scelmo.tl.embed_cells`: pass the table the
        reference was embedded with when it was not the configured default (a saved table,
        a shuffled control). Default: the table the configured roles build over the
        reference's genes. A reference embedded with another table than the one used here
        is an error, since its vectors and the query's would not be comparable.
    config
        Settings or a mapping of overrides (see :mod:`scelmo.config`); also used for
        the embeddings computed here.
    key_added
        ``obs`` column for labels; scores go to ``obs[key_added + "_score"]``.
    copy
        Leave ``adata`` (and ``reference``) untouched and return a modified copy of
        ``adata`` (scanpy's convention). Without it, missing embeddings are written to
        ``adata.obsm[use_rep]`` and ``reference.obsm[use_rep]``.
    progress
        Show progress bars (default: on a terminal or in a notebook).

    Notes
    -----
    Names-only scores (``method="markers"``) are relative: each marker is standardised over the
    query's own cells, so a cluster takes the candidate whose markers it expresses more than
    the other cells do. A query of one population is therefore spread over the candidates;
    annotate it within its full dataset or against a ``reference``
    (docs/benchmarks.md, "Names-only scores are relative to the cells given").

    Returns
    -------
    ``None`` (or the copy). Sets ``adata.obs[key_added]`` (categorical; ``unknown_label``, score 0,
    for cells expressing none of the embedded genes), ``adata.obs[key_added + "_score"]``
    and ``adata.uns["scelmo"]["annotate"]`` (with ``method="markers"``, the marker genes
    of each type as ``markers_<type>`` strings).
    """

    if (reference is None) == (cell_types is None):
        raise InputError("Pass either `reference` (with `ref_labels`) or `cell_types`, not both or neither.")
    if copy:
        adata = _copy_of(adata)
        if reference is not None and use_rep not in reference.obsm:
            reference = _copy_of(reference)  # its embedding is computed below: not into the caller's object
    _check_options(k=k, temperature=temperature, key_added=key_added, method=method, reference=reference,
                   n_markers=n_markers)
    _check_use_rep(use_rep, adata, reference)
    if reference is not None:
        _reference_labels(reference, ref_labels)  # (checked before anything is embedded)
    info: dict[str, Any] = {"use_rep": use_rep, "min_score": min_score}
    if reference is not None and layer is not None:  # the matrix both are embedded from (a trial: ignored)
        config = get_settings(config, **{"aggregate.layer": layer, "aggregate.use_raw": False})
    if use_rep not in adata.obsm:
        stats, table = None, None
        if reference is not None:  # the query embedded as its reference: same genes selected, same centring
            ref_stats = reference_gene_stats(reference, config=config, progress=progress)
            agg = get_settings(config).aggregate
            _, query_genes, _ = select_matrix(adata, layer=agg.layer, use_raw=agg.use_raw)
            info["shared_genes"] = _check_gene_overlap(ref_stats, [str(g) for g in query_genes])
            # one gene table (and so one conditioning) for both: built over the reference's genes
            table = _transfer_table(reference, use_rep, gene_embeddings, config=config, progress=progress)
            if use_rep not in reference.obsm:  # the reference from the same statistics: read once
                _embed_reference(reference, config=config, key_added=use_rep, gene_stats=ref_stats, gene_embeddings=table,
                            progress=progress)
            stats = ref_stats  # matched to the query's genes by name inside embed_cells
            info["query_gene_stats"] = "reference"
        with warnings.catch_warnings():
            if reference is not None:  # (the query's genes outside the reference's table carry no weight:
                warnings.simplefilter("ignore", CoverageWarning)  # the shared-gene check above is the one)
            embed_cells(adata, config=config, key_added=use_rep, gene_stats=stats,
                        gene_embeddings=table if reference is not None else gene_embeddings,
                        layer=layer if reference is None else None, progress=progress)
    elif reference is not None and use_rep not in reference.obsm and _embedded_here(adata, use_rep):
        # a query embedded on its own (embed_cells -> cluster -> annotate) and a reference not yet:
        # the reference is embedded as usual, and the query again as the reference below (a
        # trial: its own centring took a two-type query from 0.89 to 0.74 accuracy, unsaid)
        _embed_reference(reference, config=config, key_added=use_rep, gene_embeddings=gene_embeddings,
                         progress=progress)
    query = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    ref_vectors = None
    if reference is not None and _embedded_from_other_stats(adata, reference, use_rep):
        query, ref_vectors = _query_as_reference(adata, reference, use_rep, gene_embeddings, config=config,
                                                 progress=progress, info=info)
    _check_finite(query, use_rep, adata)
    if reference is not None:
        pred, score = _transfer_labels(query, reference, ref_labels, use_rep=use_rep, k=k, config=config,
                                       progress=progress, info=info, ref_vectors=ref_vectors)
        if "query_gene_stats" not in info:  # (else the query was embedded here, as the reference)
            _warn_if_embedded_differently(adata, reference, use_rep)
    else:
        pred, score = _labels_from_names(adata, query, cell_types, method=method, use_rep=use_rep, layer=layer,
                                         groupby=groupby, n_markers=n_markers, temperature=temperature,
                                         unknown_label=unknown_label, describe_cell_types=describe_cell_types,
                                         config=config, progress=progress, info=info)
    pred, score = pred.astype(object), np.array(score, dtype=np.float32)
    pred[score < min_score] = unknown_label
    # cells with no expression of any embedded gene (a zero vector, EmptyCellsWarning) carry
    # no evidence for any type
    empty = ~np.any(query != 0, axis=1)
    pred[empty], score[empty] = unknown_label, 0.0
    info["n_empty"] = int(empty.sum())
    import pandas as pd

    adata.obs[key_added] = pd.Categorical(pred.astype(str))
    adata.obs[f"{key_added}_score"] = score
    info["n_unknown"] = int((pred == unknown_label).sum())
    info["key_added"] = key_added
    provenance.record(adata, "annotate", info)
    return adata if copy else None


def _check_options(*, k: int, temperature: float, key_added: Any, method: str, reference: Any,
                   n_markers: int = 30) -> None:
    """Options checked before any work (an embedding computed for nothing is written to ``obsm``)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer (neighbours in the vote), got {k!r}.")
    if not isinstance(n_markers, (int, np.integer)) or isinstance(n_markers, bool) or n_markers < 1:
        raise InputError(f"n_markers must be a positive integer (marker genes per name), got {n_markers!r}.")
    if not np.isfinite(temperature) or temperature <= 0:
        raise InputError(f"temperature must be a positive number, got {temperature!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise InputError(f"key_added must be a non-empty string (an obs column name), got {key_added!r}.")
    if method not in ("markers", "embedding"):
        raise InputError(f"method must be 'markers' or 'embedding', got {method!r}.")
    if reference is not None and not (hasattr(reference, "obs") and hasattr(reference, "n_obs")):
        raise InputError(f"reference must be an AnnData with labelled cells, got {type(reference).__name__}.")


#: provenance fields that must agree for two embeddings to be compared
def _same_record(a: Any, b: Any) -> bool:
    """Whether two provenance values are the same, whatever the order of a record's keys or the
    types of its numbers (a reference written to .h5ad and read back reorders a dict's keys,
    which a comparison of their text took for another embedding; found by a review)."""
    def norm(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple | np.ndarray):
            return [norm(x) for x in v]
        return str(v.item() if isinstance(v, np.generic) else v)
    return bool(norm(a) == norm(b))


_COMPARABLE = ("flavor", "aggregator", "transform", "condition", "conditioning", "embed_model", "describe_model",
               "l2_normalize")


def _check_use_rep(use_rep: Any, adata: Any, reference: Any) -> None:
    """``use_rep`` must name an embedding that is there, or a scelmo key that can be computed."""
    if not isinstance(use_rep, str) or not use_rep:
        raise InputError(f"use_rep must be a non-empty string (an obsm key), got {use_rep!r}.")
    if use_rep.startswith(keys.X_SCELMO):
        return
    for obj, what in ((adata, "adata"), (reference, "reference")):
        if obj is not None and use_rep not in obj.obsm:
            raise InputError(
                f"{what}.obsm has no {use_rep!r}. scelmo computes a missing embedding only under a scelmo key "
                f"({keys.X_SCELMO!r} or a name starting with it), not under another method's name. Compute "
                f"{use_rep!r} first (e.g. `sc.pp.pca` for 'X_pca') in both objects, or leave use_rep at its default."
            )


#: Below this share of the reference's expressed genes, a query embedded here gets a warning.
MIN_SHARED_GENES = 0.5


def _check_gene_overlap(ref_stats: Any, query_genes: list[str]) -> float:
    """The share of the reference's expressed genes that the query has; an error when none,
    a warning below :data:`MIN_SHARED_GENES` (their embeddings would not be comparable)."""
    expressed = [g for g, total in zip(ref_stats.genes, ref_stats.sums[0], strict=True) if total > 0]
    have = set(names_as_in(ref_stats.genes, query_genes))  # (by gene: IGJ is JCHAIN, Cd3e is CD3E)
    shared = sum(g in have for g in expressed)
    if not shared:
        raise InputError(
            f"The query shares none of the reference's {len(expressed)} expressed genes "
            f"(reference e.g. {', '.join(expressed[:3])}; query e.g. {', '.join(query_genes[:3])}). "
            "Use the same gene naming (symbols or Ensembl IDs) and species in both."
        )
    share = shared / max(len(expressed), 1)
    if share < MIN_SHARED_GENES:
        warnings.warn(
            f"The query has only {shared} of the reference's {len(expressed)} expressed genes ({share:.0%}); "
            "cells embedded from so different gene sets are hard to compare, so labels may be unreliable. "
            "Subset the reference to the genes the query has "
            "(`reference[:, reference.var_names.intersection(query.var_names)]`), or annotate against a "
            "reference measured on a similar gene panel.",
            UserWarning,
            stacklevel=3,
        )
    return share


def _embed_record(adata: Any, use_rep: str) -> dict[str, Any]:
    """The provenance of the ``embed_cells`` run that wrote ``adata.obsm[use_rep]`` (``{}``:
    none did); not the latest run's, which may have written another key (``X_scelmo_paper``)."""
    rec = provenance.for_key(adata, use_rep, "embed_cells")
    return rec if rec.get("step", "embed_cells") == "embed_cells" and rec.get("key_added") == use_rep else {}


def _embedded_here(adata: Any, use_rep: str) -> bool:
    """Whether ``adata.obsm[use_rep]`` is recorded as made by ``embed_cells``."""
    return bool(_embed_record(adata, use_rep))


def _embedded_from_other_stats(adata: Any, reference: Any, use_rep: str) -> bool:
    """Whether query and reference vectors under ``use_rep`` were both made by ``embed_cells``,
    alike but for the gene statistics: each embedded on its own selects and centres its genes
    on itself, so a query of a few cell types lands elsewhere than the same cells in the
    reference (a Kang trial: 0.57 accuracy instead of 0.90)."""
    q = _embed_record(adata, use_rep)
    r = _embed_record(reference, use_rep)
    if not q or not r:
        return False
    # (another conditioning is no obstacle: the query is embedded again with the reference's table;
    # a query embedded on its own genes with cell-type marker dimensions has its own, and another width)
    if any(not _same_record(q.get(f), r.get(f)) for f in _COMPARABLE if f != "conditioning"):
        return False  # made differently in other ways too: _warn_if_embedded_differently says so
    same = same_stats(q.get("gene_stats_summary"), r.get("gene_stats_summary"))
    if same is not None:
        return not same
    qs, rs = q.get("gene_stats_id"), r.get("gene_stats_id")  # (records from before the summary)
    return bool(qs and rs and qs != rs)


def _light(adata: Any, use_rep: str) -> Any:
    """A copy of the matrix ``adata``'s recorded embedding read (as ``X``), with its gene selection."""
    import anndata as ad
    import pandas as pd

    layer, use_raw = _recorded_matrix(adata, use_rep)
    matrix, var_names, source = select_matrix(adata, layer=layer, use_raw=use_raw)
    light = ad.AnnData(X=matrix[:] if not hasattr(matrix, "to_memory") else matrix.to_memory(),
                       obs=adata.obs[[]].copy(), var=pd.DataFrame(index=[str(v) for v in var_names]))
    flags, _ = var_flags(adata, source, "highly_variable")  # a gene selection it carries, as embed_cells reads it
    if flags is not None:
        light.var["highly_variable"] = flags
    return light


def _query_as_reference(adata: Any, reference: Any, use_rep: str, gene_embeddings: GeneEmbeddings | str | None, *,
                        config: Any, progress: bool | None, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The query's vectors as the reference's were made (its gene statistics and gene table),
    for the transfer only: ``adata.obsm[use_rep]`` stays as it is. Second: the reference's
    vectors to use instead of its ``obsm[use_rep]`` (``None``: that one), when that was made
    with other cells' statistics (a dataset embedded whole, then split): both are then
    embedded again with the reference's own cells' statistics. (A notebook trial: the
    warning said to delete the query's embedding, which changed nothing.)"""
    r_layer, r_raw = _recorded_matrix(reference, use_rep)
    r_config = get_settings(config, **{"aggregate.layer": r_layer, "aggregate.use_raw": r_raw})
    ref_stats = reference_gene_stats(reference, config=r_config, progress=progress)
    r = _embed_record(reference, use_rep)
    same = same_stats(ref_stats.summary(), r.get("gene_stats_summary"))
    table = _transfer_table(reference, use_rep, gene_embeddings, config=r_config, progress=progress)
    settings = get_settings(config, **{"aggregate.layer": None, "aggregate.use_raw": False})  # the matrix is X

    def embedded(a: Any) -> np.ndarray:
        with warnings.catch_warnings():  # (coverage: the shared-gene check is the one that applies)
            warnings.simplefilter("ignore", CoverageWarning)
            embed_cells(a, config=settings, key_added=use_rep, gene_stats=ref_stats, gene_embeddings=table,
                        progress=progress)
        return np.asarray(a.obsm[use_rep], dtype=np.float32)

    ref_vectors = None
    if same is False or (same is None and ref_stats.fingerprint() != r.get("gene_stats_id")):
        ref_vectors = embedded(_light(reference, use_rep))
        info["reference_gene_stats"] = ("its own cells' (recomputed: its obsm[use_rep] was embedded with other "
                                        "cells' statistics)")
    q = _embed_record(adata, use_rep)
    if same_stats(q.get("gene_stats_summary"), ref_stats.summary()):  # (already embedded so: read as it is)
        return np.asarray(adata.obsm[use_rep], dtype=np.float32), ref_vectors
    light = _light(adata, use_rep)
    info["shared_genes"] = _check_gene_overlap(ref_stats, [str(g) for g in light.var_names])
    query = embedded(light)
    info["query_gene_stats"] = "reference (recomputed: the query's own obsm[use_rep] was embedded on itself)"
    return query, ref_vectors


def _transfer_table(reference: Any, use_rep: str, gene_embeddings: GeneEmbeddings | str | None, *, config: Any,
                    progress: bool | None) -> GeneEmbeddings:
    """The gene table a query is embedded with to be compared with the reference: the one given,
    else the one the configured roles build over the reference's genes. Refused when the
    reference's own ``obsm[use_rep]`` was made with another table (other knowledge or another
    conditioning): a trial's reference embedded with a shuffled table was compared with a
    query re-embedded with the default one, silently (accuracy 0.13 instead of 0.79)."""
    if isinstance(gene_embeddings, str):
        gene_embeddings = GeneEmbeddings.load(gene_embeddings)
    settings = get_settings(config)
    if gene_embeddings is None:
        table = reference_gene_table(reference, config=config, progress=progress)
    else:
        table = gene_embeddings
        if flavor_plan(settings.aggregate)["condition"] and table.conditioning is None:
            table.condition(n_components=settings.aggregate.condition_components)
    r = _embed_record(reference, use_rep)
    if use_rep not in reference.obsm or not r:
        return table  # embedded here, with this table (or not by embed_cells: nothing to compare)
    made: dict[str, str] = table.models()
    ref_cond = r.get("conditioning")
    if isinstance(ref_cond, Mapping) and table.conditioning is not None:
        made["conditioning"] = table.conditioning.checksum()
        recorded = {**{f: r.get(f) for f in ("embed_model", "describe_model")}, "conditioning": ref_cond.get("checksum")}
    else:
        recorded = {f: r.get(f) for f in ("embed_model", "describe_model")}
    diff = [f"{f} {recorded[f]!r} vs {made[f]!r}" for f in made if str(recorded[f]) != str(made[f])]
    ref_markers = float(r.get("cell_type_markers", 0.0) or 0.0)
    table_markers = float(((table.manifest or {}).get("cell_type_markers") or {}).get("weight", 0.0))
    if diff and ref_markers != table_markers and gene_embeddings is None:
        raise InputError(
            f"The reference's obsm[{use_rep!r}] was embedded with aggregate.cell_type_markers = {ref_markers:g}, "
            f"but this call's configuration asks for {table_markers:g}: pass the same setting "
            f"(`config={{'aggregate.cell_type_markers': {ref_markers:g}}}`) so that the query is embedded as the "
            "reference was."
        )
    if diff:
        how = ("the table given" if gene_embeddings is not None
               else "the table the configured roles build over its genes")
        raise InputError(
            f"The reference's obsm[{use_rep!r}] was embedded with another gene table than {how} "
            f"({'; '.join(diff)}), so the query's vectors would not be comparable with it. Pass the table the "
            "reference was embedded with: `scelmo.tl.annotate(..., gene_embeddings=table)`, or delete the "
            "reference's embedding so that both are embedded here."
        )
    return table


def _recorded_matrix(adata: Any, use_rep: str) -> tuple[str | None, bool]:
    """``(layer, use_raw)`` of the matrix ``adata``'s recorded ``embed_cells`` run read
    (provenance ``matrix``: ``"X"``, ``"raw.X"`` or ``"layers['counts']"``)."""
    made_from = str(_embed_record(adata, use_rep).get("matrix", "X"))
    if made_from.startswith("layers["):
        return str(ast.literal_eval(made_from[len("layers["):-1])), False
    return None, made_from == "raw.X"


def _warn_if_embedded_differently(adata: Any, reference: Any, use_rep: str) -> None:
    """Warn when query and reference vectors under ``use_rep`` were made in different ways."""
    q = _embed_record(adata, use_rep)
    r = _embed_record(reference, use_rep)
    if not q or not r:
        return  # not both made by embed_cells under this key: nothing to compare
    diff = [f"{f}: {q.get(f)!r} vs {r.get(f)!r}" for f in _COMPARABLE if not _same_record(q.get(f), r.get(f))]
    if diff:
        warnings.warn(
            f"The query's and the reference's obsm[{use_rep!r}] were made differently ({'; '.join(diff)}); "
            "labels transferred between them are unreliable. Delete the query's embedding and annotate again "
            "(it is then embedded as the reference), or embed both with the same options.",
            ScelmoWarning, stacklevel=3,
        )


def _transfer_labels(query: np.ndarray, reference: Any, ref_labels: str | Sequence[Any] | None, *, use_rep: str,
                     k: int, config: Any, progress: bool | None, info: dict[str, Any],
                     ref_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the ``k`` nearest reference cells (:func:`scelmo.knn.knn_vote`), and their vote
    share; ``ref_vectors``: the reference's vectors, instead of its ``obsm[use_rep]``."""
    labels = _reference_labels(reference, ref_labels)
    if ref_vectors is None and use_rep not in reference.obsm:
        _embed_reference(reference, config=config, key_added=use_rep, progress=progress)
    ref = np.asarray(reference.obsm[use_rep] if ref_vectors is None else ref_vectors, dtype=np.float32)
    _check_finite(ref, use_rep, reference)
    if ref.shape[1] != query.shape[1]:
        raise InputError(
            f"Query ({query.shape[1]}-d) and reference ({ref.shape[1]}-d) embeddings differ in width; "
            "embed both with the same gene embeddings."
        )
    keep = ~_is_missing(labels)
    pred, score = knn_vote(query, ref[keep], labels[keep], k=k)
    info.update({"method": "knn_transfer", "k": k, "n_reference": int(keep.sum())})
    return pred, score


def _reference_labels(reference: Any, ref_labels: str | Sequence[Any] | None) -> np.ndarray:
    """The reference cells' labels from ``ref_labels`` (a column name, a Series by cell name, or an
    array in cell order), checked before any embedding is made (a typo costs no work)."""
    if ref_labels is None:
        raise InputError("`ref_labels` is required with `reference` (an obs column name or an array).")
    if isinstance(ref_labels, str):
        if ref_labels not in reference.obs:
            raise InputError(f"Column {ref_labels!r} not found in reference.obs.")
        labels = reference.obs[ref_labels].to_numpy()
    elif hasattr(ref_labels, "index") and hasattr(ref_labels, "reindex"):  # a pandas Series: by cell name
        names = reference.obs_names
        if len(ref_labels) != reference.n_obs or not ref_labels.index.isin(names).all():
            raise InputError("ref_labels is a Series whose index is not the reference's obs_names; pass "
                             "`reference.obs[column]`, a column name, or a plain array in the reference's cell order.")
        labels = ref_labels.reindex(names).to_numpy()
    else:
        labels = np.asarray(ref_labels)
    if len(labels) != reference.n_obs:
        raise InputError(f"ref_labels has {len(labels)} entries but the reference has {reference.n_obs} cells.")
    if _is_missing(labels).all():
        raise InputError("Every entry of ref_labels is missing (NaN, None or empty); the reference has no labelled cells.")
    return labels


def _labels_from_names(adata: Any, query: np.ndarray, cell_types: Sequence[str] | Mapping[str, str], *, method: str,
                       use_rep: str, layer: str | None, groupby: str | None, n_markers: int, temperature: float,
                       unknown_label: str, describe_cell_types: bool, config: Any, progress: bool | None,
                       info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labels from cell-type names alone: marker genes chosen by gene knowledge (``"markers"``)
    or the cosine of cell and text vectors (``"embedding"``), and their scores."""
    names, texts = _cell_type_texts(cell_types)
    if unknown_label in names:
        raise InputError(f"{unknown_label!r} is both a candidate and `unknown_label`; rename one of them.")
    if describe_cell_types and not isinstance(cell_types, Mapping):
        described = describe(names, subject="cell_type", config=config, progress=progress)
        texts = [described.texts.get(n, n) for n in names]  # failures fall back to the name
        info["cell_type_descriptions"] = described.provenance()
    if method == "markers":
        matrix, var_names, _ = select_matrix(adata, layer=layer, use_raw=None if layer is None else False)
        n_cells = np.asarray((matrix[:] > 0).sum(axis=0)).ravel()
        frac = n_cells / max(1, matrix.shape[0])
        expressed = [str(g) for g, f in zip(var_names, frac, strict=True) if f >= 0.01]
        # curated markers may be rare (a rare type's), but not seen in a cell or two only
        detected = [str(g) for g, c in zip(var_names, n_cells, strict=True) if c >= 3]
        markers = knowledge_markers(names, expressed, texts=texts, n_markers=n_markers, config=config,
                                    progress=progress, curated_genes=detected, measured_genes=list(map(str, var_names)))
        groups = _cluster_labels(adata, use_rep, groupby)
        labels, score, _ = marker_match(adata, markers, groups, layer=layer)
        pred = np.array([lab if lab is not None else unknown_label for lab in labels], dtype=object)
        species = get_settings(config).genes.species
        info.update({"method": "text_markers", "n_cell_types": len(names), "n_markers": n_markers,
                     "groupby": groupby or "leiden(use_rep)", "n_groups": int(len(np.unique(groups))),
                     # (the curated marker sets of this species are preferred)
                     "species": species if species != "auto" else GeneVocabulary.guess_species(expressed)})
        info.update({f"markers_{t}": "; ".join(g) for t, g in markers.items()})
        info["temperature"] = 0.25
    else:  # "embedding" (the method was checked by _check_options)
        vectors = _embed_texts(texts, config, progress)
        record = _embed_record(adata, use_rep)
        if vectors.shape[1] == record.get("text_dim"):
            query = query[:, : vectors.shape[1]]  # (beside cell-type marker dimensions: the text part)
        if vectors.shape[1] != query.shape[1]:
            raise ScelmoError(
                f"Cell-type text vectors are {vectors.shape[1]}-d but adata.obsm[{use_rep!r}] is "
                f"{query.shape[1]}-d: annotate with the same embedder that made the cell embedding."
            )
        pred, score, _ = prompt_match(query, vectors, names, temperature=temperature)
        info.update({"method": "text_prompt", "n_cell_types": len(names), "temperature": temperature})
    return pred, score


def _is_missing(labels: np.ndarray) -> np.ndarray:
    import pandas as pd

    text = np.char.strip(np.asarray(labels).astype(str))
    # what `.astype(str)` leaves of a missing label ("nan", "None", "<NA>") counts as missing too
    return pd.isna(labels) | np.isin(np.char.lower(text), ["", "nan", "none", "<na>"])


def _cell_type_texts(cell_types: Sequence[str] | Mapping[str, str]) -> tuple[list[str], list[str]]:
    if isinstance(cell_types, str):
        raise InputError("`cell_types` must be a list of names (or a name -> description mapping), not a string.")
    if isinstance(cell_types, Mapping):
        names, texts = [str(n) for n in cell_types], [str(t) for t in cell_types.values()]
    else:
        names = [str(n) for n in cell_types]
        texts = names
    if len(names) < 2:
        raise InputError("List at least two candidate cell types.")
    if len(set(names)) != len(names):
        raise InputError("Candidate cell types must be unique.")
    if _is_missing(np.asarray(list(cell_types), dtype=object)).any():
        raise InputError("Candidate cell types must be non-empty names (got an empty string, None or NaN).")
    folded = [name_key(n) or " ".join(n.lower().split()) for n in names]
    if len(set(folded)) != len(folded):
        dup = sorted({n for n, f in zip(names, folded, strict=True) if folded.count(f) > 1})
        raise InputError(f"Candidate cell types name the same type (they differ only in case, spacing, plural or "
                         f"the word 'cell'): {dup}; list each type once.")
    return names, texts


def _embed_texts(texts: list[str], config: Any, progress: bool | None) -> np.ndarray:
    return roles.embed_texts(get_settings(config), texts, progress=progress, desc="embedding cell-type texts")
