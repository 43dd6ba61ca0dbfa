"""Cell-type marker knowledge: curated marker sets, and matching cell-type names to them.

A knowledge source may know, besides what each gene does, which genes mark which cell
types (:meth:`~scelmo.plugin.KnowledgeSource.cell_type_markers`; the offline default
ships curated sets for human and mouse immune, lung, brain and liver cells). Names-only
annotation (:func:`scelmo.tl.annotate` with ``cell_types=``) then matches each candidate
name to the known types by its words and the genes it names, not by free-text similarity
(text embeddings place "FCGR3A+ monocyte" as near "CD14+ Monocyte" as "CD16+ Monocyte"):

* words are compared after lower-casing, singular forms and a few standard abbreviations
  (NK, DC, pDC, Treg, TCM, TEM, CTL, ...); "cell" and "+/-" carry no meaning;
* a token such as ``CD14``, ``CD16`` or ``FCGR3A`` is a gene, resolved through the gene
  vocabulary (ambiguous aliases to every gene they may mean: CD16 -> FCGR3A, FCGR3B);
* a known type is compatible with a candidate when it contains the candidate's last word
  (its noun: "monocyte" in "CD14+ monocyte") and, when both name genes, they share one;
* among compatible types, those with the most shared words and genes, least extra words,
  are the match (ties: all of them; e.g. the human and the mouse "B cell").

The matched types' markers, and at half weight their parent types' markers, are the
candidate's marker genes. A candidate with no compatible type gets none from here.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from scelmo.errors import ScelmoWarning

__all__ = ["CellTypeMarkers", "CellTypeMatch", "EQUIVALENT_NAMES", "Lineage", "MarkerSet", "match_cell_types", "match_descendants",
           "marker_weights", "cell_type_marker_genes", "covers_name", "inherit_named_parents", "name_key", "primary_records",
           "tissue_conflict", "query_tissue", "other_organ", "in_organ", "names_in_organ",
           "name_terms", "parse_name"]


@dataclass(frozen=True)
class CellTypeMarkers:
    """One known cell type: its name, positive marker genes (canonical human symbols),
    parent type (``None`` at the top of its hierarchy), species and tissue of the source set."""

    name: str
    markers: tuple[str, ...]
    parent: str | None = None
    species: str = "human"
    tissue: str = ""
    #: The source's identifier of the type (e.g. ``CL:0000171``), shared by the records of
    #: its synonyms; empty where each record is its own type.
    source: str = ""
    #: The source's definition of the type ("Epithelial cell found in the ducts of the
    #: pancreas ..."), if it has one.
    definition: str = ""
    #: Parents besides ``parent``, in an ontology where a type has several (the Cell
    #: Ontology's monocyte is a myeloid leukocyte and a mononuclear cell).
    other_parents: tuple[str, ...] = ()
    #: ``markers`` as the source spells them (mouse symbols for a mouse set: Ly6c2, which
    #: ``markers`` holds as its human ortholog LY6H, shared with Ly6a and Ly6g).
    source_markers: tuple[str, ...] = ()


class MarkerSet(dict):
    """A name's ``{gene: weight}``; for a name that covers several types (``"lymphocyte"``:
    T, B and NK cells, :func:`match_descendants`) also ``parts``, each covered type's own
    ``{gene: weight}``: a cell is as much the name as it is its best-fitting part, not the
    average of all (a T cell expresses no B-cell gene). ``listed``: each part's total
    weight over the genes the data measures, before :meth:`renamed` kept only those it
    detects (a part whose measured markers the data mostly does not detect is weak evidence)."""

    def __init__(self, weights: Mapping[str, float] | None = None, parts: Sequence[Mapping[str, float]] = (),
                 listed: Sequence[float] | None = None, *, lineage: Lineage | None = None):
        super().__init__(weights or {})
        kept = [i for i, p in enumerate(parts) if p]
        self.parts: tuple[dict[str, float], ...] = tuple(dict(parts[i]) for i in kept)
        totals = [float(sum(p.values())) for p in parts] if listed is None else [float(x) for x in listed]
        self.listed: tuple[float, ...] = tuple(totals[i] for i in kept)
        #: The parent type this name is one subtype of, beside other candidates of the same
        #: parent (:class:`Lineage`); ``None`` otherwise.
        self.lineage = lineage

    def renamed(self, names: Mapping[str, str], measured: Container[str] | None = None) -> MarkerSet:
        """The same set with each gene as ``names`` calls it (genes not in ``names`` dropped);
        ``measured``: the genes (as this set calls them) the data measures, detected or not,
        over which :attr:`listed` is counted (default: ``names``)."""
        measured = names if measured is None else measured
        lineage = self.lineage.renamed(names) if self.lineage is not None else None
        return MarkerSet({names[g]: v for g, v in self.items() if g in names},
                         [{names[g]: v for g, v in p.items() if g in names} for p in self.parts],
                         [sum(v for g, v in p.items() if g in measured) for p in self.parts], lineage=lineage)


@dataclass(frozen=True)
class Lineage:
    """Where a candidate sits below a parent type that other candidates share ("CD4 T cell"
    and "CD8 T cell" below "T cell"): the parent's ``name`` and ``markers`` (which cells are
    of the lineage at all) and the candidate's ``core`` markers, those most of its matched
    types list (CD4; CD8A and CD8B), which tell the subtypes apart among the lineage's cells.

    A curated subtype's other markers are relative to its siblings (the source lists
    LGALS1 and ANXA2 for effector-memory CD4 T cells, genes monocytes express more), so
    against all cells they mislead; :func:`scelmo.tl._annotation.marker_match` decides the
    lineage first by the parent's markers, then the subtype by the core markers standardised
    over the lineage's cells.
    """

    name: str
    markers: tuple[str, ...]
    core: tuple[str, ...]

    def renamed(self, names: Mapping[str, str]) -> Lineage:
        return Lineage(self.name, tuple(names[g] for g in self.markers if g in names),
                       tuple(names[g] for g in self.core if g in names))

    def with_core(self, genes: Iterable[str]) -> Lineage:
        return replace(self, core=tuple(dict.fromkeys((*self.core, *genes))))


#: Standard abbreviations in cell-type names, spelt out (both sides are expanded).
SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "nk": ("natural", "killer"), "ilc": ("innate", "lymphoid"), "dc": ("dendritic",),
    "cdc": ("conventional", "dendritic"), "pdc": ("plasmacytoid", "dendritic"),
    "treg": ("regulatory", "t"), "tfh": ("follicular", "helper", "t"), "tcm": ("central", "memory", "t"),
    "tem": ("effector", "memory", "t"), "ctl": ("cytotoxic", "t"), "mait": ("mucosal", "invariant", "t"),
    "hsc": ("hematopoietic", "stem"),
    "opc": ("oligodendrocyte", "precursor"), "ec": ("endothelial",), "mono": ("monocyte",),
    "gdt": ("gamma", "delta", "t"), "rbc": ("red", "blood"), "erythrocyte": ("red", "blood"),
    "cdc1": ("conventional", "1", "dendritic"), "cdc2": ("conventional", "2", "dendritic"),
    "th1": ("helper", "1", "t"), "th2": ("helper", "2", "t"), "th17": ("helper", "17", "t"),
    "ilc1": ("innate", "lymphoid", "1"), "ilc2": ("innate", "lymphoid", "2"), "ilc3": ("innate", "lymphoid", "3"),
    "haematopoietic": ("hematopoietic",),
    # short forms common in annotation labels ("Macro", "Neutro", "Endo")
    "macro": ("macrophage",), "neutro": ("neutrophil",), "fibro": ("fibroblast",), "endo": ("endothelial",),
    "epi": ("epithelial",), "baso": ("basophil",), "eos": ("eosinophil",), "mk": ("megakaryocyte",),
    "lympho": ("lymphocyte",),
}

#: Names for one type that share no words, keyed by the normalised words of one of them
#: (:func:`parse_name`): a candidate also matches what its other name matches.
EQUIVALENT_NAMES: Mapping[tuple[str, ...], str] = {
    ("classical", "monocyte"): "CD14+ monocyte",
    ("nonclassical", "monocyte"): "CD16+ monocyte",
    ("patrolling", "monocyte"): "CD16+ monocyte",  # the mouse name of the same cells
    ("inflammatory", "monocyte"): "CD14+ monocyte",
    ("gamma",): "PP cell",  # the pancreatic islet's gamma cell (not a gamma-delta T cell)
    # the mouse names by Ly6C level (the curated mouse sets are "Classical" and "Patrolling monocyte")
    **{(*w, "monocyte"): "classical monocyte" for w in (("ly6c", "high"), ("ly6c", "hi"), ("ly6chi",), ("ly6chigh",))},
    **{(*w, "monocyte"): "patrolling monocyte" for w in (("ly6c", "low"), ("ly6c", "lo"), ("ly6clo",), ("ly6clow",))},
}
_STOP = frozenset({"cell", "cells", "positive", "and", "of", "the", "like", "type", "lineage", "derived"})
_NEGATIONS = frozenset({"negative", "neg", "non"})
# a token, and the sign or word right after it: "CD14-" / "CD14-negative" / "CD14neg" negate CD14
_TOKEN = re.compile(r"([A-Za-z0-9]+)([+-]?)")
_GENE_LIKE = re.compile(r"^[A-Za-z]+[0-9][A-Za-z0-9]*$")
# a marker glued to the type's word: "CD4T", "CD14Mono"
_GLUED = re.compile(r"^([A-Za-z]+[0-9]+)([A-Za-z]+)$")


def _singular(word: str) -> str:
    if word.endswith("s") and word[:-1] in SYNONYMS:  # DCs, NKs, Tregs
        return word[:-1]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def name_key(name: str) -> str:
    """A cell-type name as a key two spellings of one name share: case, spacing, hyphens,
    plurals and the word "cell" aside ("Alpha cells", "alpha-cell", "Alpha")."""
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", str(name).lower())  # "alpha-cell"; not the sign in "CD4- T"
    words = (_singular(w) for w in re.split(r"[\s_]+", text) if w)
    return " ".join(w for w in words if w != "cell")


def name_terms(name: str, vocab: Any) -> tuple[list[str], list[frozenset[str]]]:
    """The words (in order, normalised) and the genes (each a set of symbols) of a name
    (:func:`parse_name` without its negated genes)."""
    return parse_name(name, vocab)[:2]


def parse_name(name: str, vocab: Any) -> tuple[list[str], list[frozenset[str]], list[frozenset[str]]]:
    """The words (in order, normalised), the genes (each a set of symbols) and the genes the
    name says are absent. "CD14-", "CD14-negative" and "CD14neg" negate CD14;
    "non-classical" becomes the one word "nonclassical", so it does not match "classical".
    """
    words: list[str] = []
    genes: list[frozenset[str]] = []
    negated: list[frozenset[str]] = []
    text = str(name)
    found = list(_TOKEN.finditer(text))
    toks = [m.groups() for m in found]
    skip = False
    for i, (tok, sign) in enumerate(toks):
        if skip:
            skip = False
            continue
        low = tok.lower()
        nxt = toks[i + 1][0].lower() if i + 1 < len(toks) else ""
        if low == "non" and nxt:
            words.append("non" + _singular(nxt))
            skip = True
            continue
        if low in SYNONYMS or _singular(low) in SYNONYMS:
            words.extend(SYNONYMS[low if low in SYNONYMS else _singular(low)])
            continue
        gene_tok, neg = tok, False
        if low.endswith("neg") and _GENE_LIKE.match(tok[:-3] or "-"):
            gene_tok, neg = tok[:-3], True
        # a symbol with a digit ("CD14"), or one without, written in capitals and signed
        # ("PDGFRB+ cell", "KIT- cell"; unsigned, "CAF" or "DCN" may be a word)
        signed_symbol = (sign != "" and len(gene_tok) >= 3 and gene_tok.isupper() and vocab is not None
                         and gene_tok in getattr(vocab, "symbols", {}))
        if (_GENE_LIKE.match(gene_tok) or signed_symbol) and vocab is not None:
            syms = frozenset(vocab.candidates(gene_tok))
            if syms:
                end = found[i].end()
                alone = end >= len(text) or not text[end].isalnum()  # "CD8- T cell", "CD8-"
                neg = neg or (sign == "-" and (alone or nxt in _NEGATIONS))
                neg = neg or (sign == "" and nxt in _NEGATIONS)
                (negated if neg else genes).append(syms)
                continue
        glued = _GLUED.match(tok)
        if glued and vocab is not None and vocab.candidates(glued.group(1)) and (
                glued.group(2).lower() in ("t", "b") or _singular(glued.group(2).lower()) in SYNONYMS):
            # a label written without a space: "CD4T", "CD8T", "CD14Mono" (Kang's own labels)
            genes.append(frozenset(vocab.candidates(glued.group(1))))
            suffix = _singular(glued.group(2).lower())
            words.extend(SYNONYMS.get(suffix, (suffix,)))
            continue
        w = _singular(low)
        if w in _STOP or w in _NEGATIONS:
            continue
        words.extend(SYNONYMS.get(w, (w,)))
    return words, genes, negated


# where a cell-type name's head ends: "epithelial cell of pancreas", "NKT cell secreting
# interferon-gamma" (Cell Ontology style); before a comma only markers may stand
# ("CD8-positive, alpha-beta T cell"), else the head ends there ("common myeloid
# progenitor, CD34-positive")
_HEAD_END = re.compile(r"\b(?:of|in|from|secreting|producing|expressing|that|with)\b", re.IGNORECASE)
_MARKER_WORDS = re.compile(r"\b[A-Za-z]*\d[\w-]*|\b(?:positive|negative|low|high|dim|bright)\b", re.IGNORECASE)


def _head(name: str) -> str:
    parts = [p.strip() for p in str(name).split(",")]
    part = next((p for p in parts if re.search(r"[A-Za-z]{2,}", _MARKER_WORDS.sub(" ", p))), parts[0])
    return _HEAD_END.split(part, maxsplit=1)[0].strip() or str(name)


def _noun(name: str, vocab: Any) -> str:
    words = name_terms(_head(name), vocab)[0]
    return words[-1] if words else ""


def _shares_gene(a: Sequence[frozenset[str]], b: Sequence[frozenset[str]]) -> int:
    return sum(any(x & y for y in b) for x in a)


@dataclass(frozen=True)
class CellTypeMatch:
    """The known types a candidate name matches; ``exact`` when one of them says no more
    than the name (no extra words), else the name is broader than each of them."""

    types: tuple[CellTypeMarkers, ...]
    exact: bool
    #: Genes the name says are absent ("CD14-negative"): never its markers.
    absent: tuple[frozenset[str], ...] = ()
    #: Whether the types' parents' markers count too (not when the types are all the
    #: descendants of the name, :func:`match_descendants`: the parents are among them).
    parents: bool = True


def match_cell_types(
    candidates: Sequence[str], known: Sequence[CellTypeMarkers], vocab: Any, *, species: str | None = None
) -> dict[str, CellTypeMatch]:
    """For each candidate name, the known cell types it matches (see the module docstring).

    A known type is scored ``shared words + shared genes - 0.5 x its extra words``. When a
    best-scoring type has no extra words, the best-scoring types are the match (exact).
    Otherwise the name is broader than every known type (``"CD8 T cell"`` against naive,
    central- and effector-memory CD8 T cells) and all types within 0.5 of the best match.
    A name with another name in :data:`EQUIVALENT_NAMES` ("classical monocyte": "CD14+
    monocyte") also matches what that one matches. With ``species`` (the data's), a name that
    matches types of that species drops the other species' matches: a human "classical
    monocyte" takes the human CD14+ monocyte markers, not the mouse Ly6C-high ones.
    """
    out = _match(candidates, known, vocab)
    words = {str(c): parse_name(c, vocab)[0] for c in candidates}
    alt = {c: EQUIVALENT_NAMES.get(tuple(w)) for c, w in words.items()}
    letters = _islet_letters(words)
    alt.update(letters)
    other = _match(sorted({a for a in alt.values() if a}), known, vocab)
    for cand, a in alt.items():
        if cand in letters:  # "B cells" beside "PP cells": the beta cell only (or nothing), not B lymphocytes
            out[cand] = other[a]
            continue
        if a is None or not other[a].types:
            continue
        # the other name's matches, and those of its own that have all its words (the mouse
        # "Classical monocyte"; not "CD14+ Monocyte" for "non-classical monocyte")
        mine = tuple(k for k in out[cand].types if set(words[cand]) <= set(name_terms(k.name, vocab)[0]))
        theirs = other[a]
        out[cand] = CellTypeMatch(tuple(dict.fromkeys(mine + theirs.types)),
                                  theirs.exact or (bool(mine) and out[cand].exact), out[cand].absent)
    if species is not None:
        for cand, m in out.items():
            own = tuple(k for k in m.types if k.species == species)
            if own and len(own) < len(m.types):
                out[cand] = CellTypeMatch(own, m.exact, m.absent)
    return out


#: the islet's own one-word names: a list holding one of them is about pancreatic islets
_ISLET_WORDS = frozenset({"alpha", "beta", "delta", "gamma", "epsilon", "pp", "islet", "acinar", "ductal"})
#: the islet cells' one-letter names (A, B, D cells), read so only beside another islet name
_ISLET_LETTERS = {("a",): "alpha cell", ("b",): "beta cell", ("d",): "delta cell"}


def _islet_letters(words: Mapping[str, list[str]]) -> dict[str, str]:
    """``{candidate: other name}`` for "A cells", "B cells", "D cells" when two of them stand in a
    list that also names an islet type ("PP cells", "alpha cell", "acinar"): there they are the
    islet's alpha, beta and delta cells (with a warning), not gastric A-like cells or B
    lymphocytes ("B cell" beside "alpha cell" and blood types keeps its usual meaning)."""
    if not any(len(w) == 1 and w[0] in _ISLET_WORDS for w in words.values()):
        return {}
    found = {c: _ISLET_LETTERS[tuple(w)] for c, w in words.items() if tuple(w) in _ISLET_LETTERS}
    if len(found) < 2:
        return {}
    warnings.warn(
        "Read as islet cells, since other candidates name pancreatic islet types: "
        + ", ".join(f"{c!r} = {n!r}" for c, n in found.items())
        + ". For B lymphocytes write 'B lymphocyte'; or spell every type out ('alpha cell').",
        ScelmoWarning, stacklevel=3,
    )
    return found


def _match(candidates: Sequence[str], known: Sequence[CellTypeMarkers], vocab: Any) -> dict[str, CellTypeMatch]:
    terms = []
    for k in known:
        own, genes = name_terms(k.name, vocab)
        parent_words = name_terms(_head(k.parent), vocab)[0] if k.parent else []
        head = name_terms(_head(k.name), vocab)[0]  # its noun: "epithelial cell of pancreas" -> epithelial
        nouns = {w[-1] for w in (head, parent_words) if w}
        terms.append((set(own), set(own) | set(parent_words), genes, nouns))
    out: dict[str, CellTypeMatch] = {}
    for cand in candidates:
        words, genes, absent = parse_name(cand, vocab)
        scored = []
        for k, (own, allw, kgenes, nouns) in zip(known, terms, strict=True):
            # the nouns must agree: "monocyte" in "CD14+ monocyte"; "delta cell" is not a
            # gamma-delta T cell, but "Treg" is a "T regulatory cell"
            if not words or not (words[-1] in nouns or nouns & set(words)):
                continue
            if _shares_gene(absent, kgenes) or any(g in k.markers for a in absent for g in a):
                continue  # "CD14-negative monocyte" is not the CD14+ one
            shared = _shares_gene(genes, kgenes)
            if genes and kgenes and not shared:
                continue  # both name genes, different ones: CD14+ vs CD16+ monocytes
            extra = len(own - set(words))
            if extra and not shared and set(words) - allw:
                continue  # each has a modifier the other lacks: cardiac vs smooth muscle cell
            scored.append((len(set(words) & allw) + shared - 0.5 * extra, extra, k))
        if not scored:
            out[str(cand)] = CellTypeMatch((), False, tuple(absent))
            continue
        best = max(sc for sc, _, _ in scored)
        top = [(extra, k) for sc, extra, k in scored if sc >= best - 1e-9]
        if any(extra == 0 for extra, _ in top):
            out[str(cand)] = CellTypeMatch(tuple(k for _, k in top), True, tuple(absent))
        else:
            close = tuple(k for sc, _, k in scored if sc >= best - 0.5 - 1e-9)
            out[str(cand)] = CellTypeMatch(close, False, tuple(absent))
    return out


def primary_records(types: Sequence[CellTypeMarkers]) -> list[CellTypeMarkers]:
    """The first record of each type (:attr:`CellTypeMarkers.source`): its primary name, as an
    ontology's parent links name it; the records after it are its synonyms."""
    seen: set[str] = set()
    out = []
    for k in types:
        src = k.source or k.name
        if src not in seen:
            seen.add(src)
            out.append(k)
    return out


def match_descendants(
    matches: Mapping[str, CellTypeMatch], ontology: Sequence[CellTypeMarkers], known: Sequence[CellTypeMarkers],
    vocab: Any, *, species: str | None = None, others: Mapping[str, CellTypeMatch] | None = None,
) -> dict[str, CellTypeMatch]:
    """For names matched to ontology types (records linked by ``parent`` and
    ``other_parents`` names, e.g. the Cell Ontology's), the ``known`` types that fall below
    those types, as a broader name's match: "lymphocyte" (whose definition names no gene)
    takes in the curated T-, B- and NK-cell types (:func:`marker_weights` then scores it by
    the best-fitting of them, :class:`MarkerSet`).

    A known type falls below when the ontology type its name matches (by primary names only:
    the ontology's pancreatic beta cell has the synonym "B cell") is a descendant. A type
    whose parent is among them is left to its parent, so each lineage counts once (the
    curated sets split T cells ten ways); types of ``species`` are preferred when there
    are any. Names with no known type below them are left out (the descendants' own
    definitions are not used: measured on the pancreas sets, "endocrine cell" then took
    every cluster, as some of its hundreds of definitions fit any).

    ``others``: the other candidates' matches. A type that falls below one of them, when that
    one is itself below the name, is left to it: beside "macrophage", "leukocyte" means the
    other leukocytes (a mouse pancreas trial: "leukocyte"'s macrophage part took the
    macrophages from "macrophage").
    """
    primary = primary_records(ontology)
    canonical = {k.source or k.name: k.name for k in primary}  # an ontology type (its source id) -> its own name
    children: dict[str, set[str]] = defaultdict(set)  # a type's name -> its child types
    for k in ontology:
        for parent in (k.parent, *k.other_parents) if k.parent else ():
            children[parent].add(k.source or k.name)
    if not matches:
        return {}
    placed = match_cell_types([k.name for k in known], primary, vocab)  # each known type in the ontology
    # (a known type by its name: names are unique within `known` up to species and tissue)
    placed.update(match_cell_types([k.name for m in (others or {}).values() for k in m.types
                                    if not k.source and k.name not in placed], primary, vocab))

    def subtree(roots: set[str]) -> set[str]:
        seen, todo = set(roots), sorted(roots)
        while todo:
            for child in sorted(children.get(canonical.get(todo.pop(), ""), ())):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return seen

    # each known type's place in the ontology (an ontology record is its own place)
    spot = {name: {o.source or o.name for o in m.types} for name, m in placed.items()}

    def ontology_roots(m: CellTypeMatch) -> set[str]:
        return {r for k in m.types for r in ({k.source} if k.source else spot[k.name])}

    other_roots = {other: ontology_roots(om) for other, om in (others or {}).items()}
    out: dict[str, CellTypeMatch] = {}
    for cand, m in matches.items():
        roots = {k.source or k.name for k in m.types}
        below = subtree(roots) - roots
        left = set()  # what narrower candidates below this name claim
        for other, oroots in other_roots.items():
            if other != cand and oroots and oroots <= below:
                left |= subtree(oroots)
        types = [k for k in known if spot[k.name] & below and not spot[k.name] & left]
        if species is not None and any(k.species == species for k in types):
            types = [k for k in types if k.species == species]
        top = {(k.name, k.species) for k in types}
        types = [k for k in types if not (k.parent and (k.parent, k.species) in top)]
        if types:
            out[cand] = CellTypeMatch(tuple(types), False, m.absent, parents=False)
    return out


#: Words naming an organ or tissue, and the tissue they name (a curated set's ``tissue``).
TISSUE_WORDS: Mapping[str, str] = {
    "pancreatic": "pancreas", "pancreas": "pancreas", "islet": "pancreas",
    "hepatic": "liver", "liver": "liver",
    "pulmonary": "lung", "lung": "lung", "alveolar": "lung", "bronchial": "lung",
    "brain": "brain", "cerebral": "brain", "cortical": "brain", "neural": "brain",
    "renal": "kidney", "kidney": "kidney", "cardiac": "heart", "heart": "heart",
    "intestinal": "intestine", "colonic": "intestine", "gastric": "stomach", "dermal": "skin",
    "epidermal": "skin", "retinal": "eye", "thyroid": "thyroid", "adrenal": "adrenal",
    "mammary": "breast", "prostatic": "prostate",
}
#: The tissues an "immune" curated set also stands for (its cells live there).
_IMMUNE_TISSUES = frozenset({"immune", "blood", "spleen", "thymus", "bone marrow", "lymph node"})


def tissue_conflict(name: str, match: CellTypeMatch, vocab: Any) -> bool:
    """Whether ``name`` names an organ (:data:`TISSUE_WORDS`) that none of ``match``'s curated
    sets is from: "pancreatic stellate cell" is not the curated *liver* "Stellate cell", and the
    Cell Ontology's "type B pancreatic cell" is no B lymphocyte (an "immune" set); "hepatic
    stellate cell" is the liver set. Types without a tissue never conflict."""
    tissues = {TISSUE_WORDS[w] for w in parse_name(name, vocab)[0] if w in TISSUE_WORDS}
    if not tissues:
        return False
    for k in match.types:
        own = _IMMUNE_TISSUES if k.tissue == "immune" else {k.tissue}
        if not k.tissue or tissues & own:
            return False
    return True


def _tissues_named(name: str, vocab: Any) -> set[str]:
    return {TISSUE_WORDS[w] for w in name_terms(name, vocab)[0] if w in TISSUE_WORDS}


def query_tissue(names: Sequence[str], definitions: Sequence[CellTypeMarkers], vocab: Any) -> str | None:
    """The organ a list of candidate names is about, if the names say so: each name votes
    for the one organ (:data:`TISSUE_WORDS`) that its own words, or else the names of the
    definitions it matches, name ("alpha cell" matches "pancreatic alpha cell": pancreas;
    "stellate cell" matches hepatic and pancreatic ones: no vote). The organ with two
    votes or more and more votes than any other; ``None`` otherwise (blood cell names
    name no organ)."""
    votes: Counter[str] = Counter()
    for name, m in match_cell_types(names, definitions, vocab).items():
        organs = _tissues_named(name, vocab) or {t for k in m.types for t in _tissues_named(k.name, vocab)}
        if len(organs) == 1:
            votes[next(iter(organs))] += 1
    top = votes.most_common(2)
    if not top or top[0][1] < 2 or (len(top) == 2 and top[1][1] == top[0][1]):
        return None
    return top[0][0]


def other_organ(name: str, match: CellTypeMatch, tissue: str, vocab: Any) -> bool:
    """Whether ``name`` names no organ and every curated set it matches is from an organ
    other than ``tissue`` (immune sets, whose cells live in every organ, and types without
    a tissue never are): beside pancreatic names, "stellate cell" is not the liver set."""
    return (bool(match.types) and not _tissues_named(name, vocab)
            and all(k.tissue and k.tissue != "immune" and k.tissue != tissue for k in match.types))


def names_in_organ(other: str, name: str, tissue: str, vocab: Any) -> bool:
    """Whether the candidate ``other`` is ``name`` in ``tissue`` ("pancreatic stellate cell" for
    "stellate cell"): its words are the name's and words naming that organ."""
    words, genes = name_terms(name, vocab)
    owords, ogenes = name_terms(other, vocab)
    extra = set(owords) - set(words)
    return (set(words) <= set(owords) and bool(extra) and all(TISSUE_WORDS.get(w) == tissue for w in extra)
            and _shares_gene(genes, ogenes) == len(genes))


def in_organ(name: str, match: CellTypeMatch, tissue: str, vocab: Any) -> CellTypeMatch | None:
    """``match`` narrowed to its types that are ``name`` in ``tissue`` and have markers: their
    names add only words naming that organ ("pancreatic stellate cell" for "stellate cell"
    in the pancreas); ``None`` when there are none."""
    keep = tuple(k for k in match.types if k.markers and names_in_organ(k.name, name, tissue, vocab))
    return CellTypeMatch(keep, True, match.absent) if keep else None


def covers_name(name: str, match: CellTypeMatch, vocab: Any) -> bool:
    """Whether one of ``match``'s types has every word and names every gene of ``name`` (the
    ontology's "pancreatic stellate cell" covers "pancreatic stellate cell"; its "cytotoxic T
    cell" does not cover "CD8+ cytotoxic T cell")."""
    words, genes = name_terms(name, vocab)
    for k in match.types:
        kwords, kgenes = name_terms(k.name, vocab)
        if set(words) <= set(kwords) and _shares_gene(genes, kgenes) == len(genes):
            return True
    return False


def inherit_named_parents(types: Sequence[CellTypeMarkers], vocab: Any) -> list[CellTypeMarkers]:
    """``types`` where a type that names no gene takes the markers of those of its parents
    (``parent``, ``other_parents``) whose name is part of its own: the Cell Ontology's
    "pancreatic PP cell" names no gene, but is a "PP cell", which names PPY. Parents that
    are only broader categories ("epithelial cell of pancreas") are not part of the name."""
    # parents are named by their primary names (a synonym record of another type may carry
    # the same text, "intraepithelial lymphocyte")
    by_name: dict[str, CellTypeMarkers] = {}
    for k in primary_records(types):
        by_name.setdefault(k.name, k)
    out = []
    for k in types:
        if not k.markers and k.parent:
            own = set(name_terms(k.name, vocab)[0])
            inherited: dict[str, None] = {}
            for parent in (k.parent, *k.other_parents):
                p = by_name.get(parent)
                if (p is not None and p.markers and (p.source or p.name) != (k.source or k.name)
                        and set(name_terms(p.name, vocab)[0]) <= own):
                    inherited.update(dict.fromkeys(p.markers))
            if inherited:
                k = replace(k, markers=tuple(inherited))
        out.append(k)
    return out


def cell_type_marker_genes(
    candidates: Sequence[str], known: Sequence[CellTypeMarkers], vocab: Any, *, parent_weight: float = 0.5
) -> dict[str, dict[str, float]]:
    """``{candidate: {symbol: weight}}`` for candidate names (:func:`match_cell_types`, then
    :func:`marker_weights`)."""
    return marker_weights(match_cell_types(candidates, known, vocab), known, parent_weight=parent_weight)


def marker_weights(
    matches: Mapping[str, CellTypeMatch], known: Sequence[CellTypeMarkers], *, parent_weight: float = 0.5,
    consensus: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """``{candidate: {symbol: weight}}`` from the candidates' matches (empty for no match).

    An exact match's markers weigh 1. A broader name weighs each gene by the share of its
    matched types that list it: "CD4 T cell" matches the four human CD4 T-cell subsets and
    (within half a point) the human and mouse "T cell", so CD4 weighs 4/6 and a marker of
    naive CD4 T cells only 1/6. The matched types' parents' markers weigh at most
    ``parent_weight``. Genes the name negates ("CD14-negative") are dropped.

    ``consensus`` gives candidates (those matched to definitions rather than curated sets)
    a share every gene must reach: shares are then counted over the matched types that
    name any gene, one vote per source type (:attr:`CellTypeMarkers.source`: synonyms do
    not vote twice), exact match or not ("CD34+ progenitor cell" matches "progenitor cell",
    which names none, and eight CD34-positive progenitors: CD34 weighs 1, and CD7, which
    two of the eight mention, is no marker at a consensus of 0.5; an exact match to two
    definitions weighs each gene only one names 0.5); their parents' markers are not used.
    """
    index: dict[tuple[str, str, str], CellTypeMarkers] = {(k.name, k.species, k.tissue): k for k in known}
    out: dict[str, dict[str, float]] = {}
    for cand, match in matches.items():
        w: dict[str, float] = {}
        least = (consensus or {}).get(cand, 0.0)
        types: Sequence[CellTypeMarkers] = match.types
        if least:  # one vote per source type with markers, however many synonyms matched
            types = list({k.source or id(k): k for k in match.types if k.markers}.values())
            share = 1.0 / max(1, len(types))
        else:
            share = 1.0 if match.exact else 1.0 / max(1, len(match.types))
        for k in match.types if not least and match.parents else ():  # (a definition's parent: a general type)
            parent = index.get((k.parent, k.species, k.tissue)) if k.parent else None
            for g in parent.markers if parent is not None else ():
                w[g] = max(w.get(g, 0.0), parent_weight)
        own: dict[str, float] = {}
        for k in types:
            for g in dict.fromkeys(k.markers):  # (not a set: a stable order)
                own[g] = min(1.0, own.get(g, 0.0) + share)
        for g, v in own.items():
            if v >= least - 1e-9:
                w[g] = max(w.get(g, 0.0), v)
        for g in (g for a in match.absent for g in a):
            w.pop(g, None)
        out[cand] = w
    # a gene is a marker of a candidate only as far as it marks it more than any other
    # candidate: genes shared by all T cells do not tell CD4 from CD8 T cells. Candidates
    # that match the same known types (synonyms: "NK cell", "natural killer cell") keep theirs,
    # and a candidate is not weighed against a broader one whose matches include all of its
    # own ("CD14+ monocyte" keeps CD14 beside "non-classical monocyte", which matches both
    # the CD14+ and the CD16+ monocyte sets and so keeps only what tells CD16+ ones apart).
    # (a match's own types: without the general types a broader name also took in, such
    # as "T cell" beside the CD4 T-cell subsets "CD4 T cell" matches)
    same = {c: frozenset(id(k) for k in m.types if not any(o.parent == k.name for o in m.types))
            for c, m in matches.items()}
    specific: dict[str, dict[str, float]] = {}
    for cand, w in out.items():
        others = [o for c, o in out.items() if c != cand and not same[c] >= same[cand]]
        kept = {g: v - max((o.get(g, 0.0) for o in others), default=0.0) for g, v in w.items()}
        kept = {g: v for g, v in kept.items() if v > 1e-9}
        match = matches[cand]
        # a name covering several lineages is scored by its best-fitting one (MarkerSet.parts)
        parts = [{g: kept[g] for g in k.markers if g in kept} for k in match.types] if not match.parents else []
        specific[cand] = MarkerSet(kept, parts) if len([p for p in parts if p]) > 1 else kept
    # subtypes of one parent among the candidates ("CD4 T cell", "CD8 T cell") are told apart
    # within their lineage (Lineage); not beside a candidate that is the parent itself
    lineages = {c: _lineage(m, index) for c, m in matches.items() if m.parents and c not in (consensus or {})}
    parents_named = {k.name for c, m in matches.items() if lineages.get(c) is None for k in m.types}
    # (one parent: its name and markers; the lung and the liver "Fibroblast" are two)
    shared = Counter((lin.name, lin.markers) for lin in lineages.values() if lin is not None)
    for cand, lin in lineages.items():
        if lin is not None and shared[lin.name, lin.markers] > 1 and lin.name not in parents_named:
            specific[cand] = MarkerSet(specific[cand], lineage=lin)
    return specific


def _lineage(match: CellTypeMatch, index: Mapping[tuple[str, str, str], CellTypeMarkers]) -> Lineage | None:
    """The one parent type with markers that the match's own types (not the general types it
    also took in) share, and the genes most of those types list; ``None`` if there is none."""
    own = [k for k in match.types if not any(o.parent == k.name for o in match.types)]
    parents = {k.parent for k in own}
    if len(parents) != 1 or None in parents:
        return None
    parent = parents.pop()
    assert parent is not None
    records = [index.get((parent, k.species, k.tissue)) for k in own]
    markers = tuple(dict.fromkeys(g for r in records if r is not None for g in r.markers))
    if not markers:
        return None
    votes = Counter(g for k in own for g in dict.fromkeys(k.markers))
    core = tuple(g for g, n in votes.items() if n > len(own) / 2 or len(own) == 1)
    return Lineage(parent, markers, core) if core else None


def resolve_marker_sets(records: Iterable[Mapping[str, Any]], vocab: Any) -> list[CellTypeMarkers]:
    """Records ``{name, parent, species, tissue, markers}`` and optionally ``id``,
    ``definition`` and ``other_parents`` (markers as
    the source spells them, e.g. mouse symbols) as :class:`CellTypeMarkers` with canonical
    human symbols."""
    out = []
    for r in records:
        species = str(r.get("species", "human"))
        markers = [str(g) for g in r.get("markers", ())]
        spelled = tuple(markers)
        if vocab is not None and markers:
            res = vocab.resolve(markers, species=species)
            markers = [s for s in res.symbols if s]
        out.append(CellTypeMarkers(str(r["name"]), tuple(dict.fromkeys(markers)), r.get("parent"), species,
                                   str(r.get("tissue", "")), str(r.get("id", "")), str(r.get("definition", "")),
                                   tuple(str(p) for p in r.get("other_parents", ())), spelled))
    return out
