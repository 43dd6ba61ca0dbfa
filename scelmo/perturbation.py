"""Perturbation prediction: baselines, metrics and DE genes (NumPy only).

The model-free side of perturbation prediction; the trainable head lives in the
``scelmo_torch`` plugin (:class:`scelmo_torch.perturbation.PerturbationHead`).

=========================================  ===============================================
function                                   what it does
=========================================  ===============================================
:func:`components`                         ``"A+B"`` -> ``("A", "B")`` (combinations)
:func:`group_means`                        mean expression per (cell group, perturbation)
:func:`mean_shift`                         control mean + mean of reference deltas (the
                                           model-free baseline, scGen without a model)
:func:`additive_shift`                     control mean + sum of the components' deltas
:func:`top_de_genes`                       top-n genes by ``|true delta|`` of the means
:func:`delta_scores`                       R² / Pearson of the predicted delta (and R² of
                                           the means) on a gene subset
:func:`align_by_gene`                      per-gene values as arrays in one gene order
                                           (pandas Series matched by their gene labels)
:func:`gene_perturbation_embeddings`       component vectors from gene embeddings
:func:`lookup_gene_vectors`                rows of a gene table for names as the data spells
                                           them (older symbols found under current ones)
:func:`component_gene_vectors`             vectors of perturbed genes in a model's gene-table
                                           space, embedding unmeasured ones now
:func:`text_perturbation_embeddings`       component vectors from text descriptions
:func:`synthetic_genetic_perturbations`    re-exported from :mod:`scelmo.datasets`, where
                                           the generator of test data lives
:func:`split_perturbations`                seen / unseen singles and combinations
:func:`target_folds`                       k folds of perturbation targets (held-out
                                           targets, e.g. for real knockout screens)
:func:`embedding_ridge`                    a target's delta from its vector: ridge
                                           regression on the training targets' deltas
:func:`embedding_knn`                      ... or the mean delta of its nearest targets
:func:`detectable_perturbations`           which perturbations move expression beyond
                                           control-vs-control noise
=========================================  ===============================================

Conventions (the project's evaluation protocol, whose Kang numbers
:func:`top_de_genes` + :func:`delta_scores` reproduce exactly): expression is
log1p(counts per 10k); the DE genes of a held-out group are its top-``n`` genes by
``|mean(perturbed) - mean(control)|``; ``r2_mean`` is the squared Pearson correlation of
predicted and true mean expression (scGen's R²), ``pearson_delta`` the Pearson
correlation of predicted and true deltas, and ``r2_delta`` the coefficient of
determination ``1 - SS_res / SS_tot`` of the true delta by the predicted one (negative
when the prediction is worse than predicting the average delta).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from scelmo import tl
from scelmo.config import get_settings
from scelmo.datasets import synthetic_genetic_perturbations
from scelmo.errors import InputError
from scelmo.knowledge import roles

__all__ = [
    "additive_shift",
    "align_by_gene",
    "component_gene_vectors",
    "another_name_note",
    "components",
    "delta_scores",
    "gene_perturbation_embeddings",
    "group_means",
    "lookup_gene_vectors",
    "mean_shift",
    "detectable_perturbations",
    "embedding_knn",
    "embedding_ridge",
    "split_perturbations",
    "synthetic_genetic_perturbations",
    "target_folds",
    "text_perturbation_embeddings",
    "top_de_genes",
]


# --------------------------------------------------------------------------- names
def components(perturbation: str, *, sep: str = "+", control: str | None = None) -> tuple[str, ...]:
    """The components of a perturbation name: ``"KLF1+CEBPA"`` -> ``("KLF1", "CEBPA")``.

    The control name (and empty parts) have no components: ``components("ctrl",
    control="ctrl") == ()``; ``"ctrl+KLF1"`` (GEARS style) is ``("KLF1",)``.
    """
    parts = [p.strip() for p in str(perturbation).split(sep)]
    return tuple(p for p in parts if p and p != control)


# --------------------------------------------------------------------------- means
def _dense_rows_mean(X: Any, rows: np.ndarray) -> np.ndarray:
    sub = X[rows]
    if sp.issparse(sub):
        return np.asarray(sub.mean(axis=0), dtype=np.float64).ravel()
    return np.asarray(sub, dtype=np.float64).mean(axis=0)


def group_means(
    X: Any,
    perturbations: Sequence[Any],
    groups: Sequence[Any] | None = None,
) -> tuple[dict[tuple[str, str], np.ndarray], dict[tuple[str, str], int]]:
    """Mean expression of every (group, perturbation) pair.

    Parameters
    ----------
    X
        Cells x genes matrix (dense or sparse), e.g. log1p(CP10k).
    perturbations
        Perturbation name of each cell (the control included).
    groups
        Cell group of each cell (e.g. cell type); ``None`` puts every cell in group ``"all"``.

    Returns
    -------
    ``(means, counts)``: dicts keyed by ``(group, perturbation)``.
    """
    n = X.shape[0]
    pert = np.asarray(perturbations).astype(str)
    grp = np.full(n, "all") if groups is None else np.asarray(groups).astype(str)
    if len(pert) != n or len(grp) != n:
        raise InputError(
            f"X has {n} cells but {len(pert)} perturbation labels and {len(grp)} group labels; "
            "give one label per cell (row of X)."
        )
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    means: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    keys = np.char.add(np.char.add(grp, "\x1f"), pert)
    uniq, inverse = np.unique(keys, return_inverse=True)
    for i, key in enumerate(uniq):
        g, p = str(key).split("\x1f", 1)
        rows = np.flatnonzero(inverse == i)
        means[(g, p)] = _dense_rows_mean(X, rows)
        counts[(g, p)] = int(rows.size)
    return means, counts


# --------------------------------------------------------------------------- baselines
def mean_shift(control_mean: np.ndarray, reference_deltas: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The model-free mean-shift baseline: ``control_mean + mean(reference_deltas)``.

    For Kang: the stimulated mean of a held-out cell type is predicted
    as its control mean plus the mean stimulated-minus-control delta of the other cell
    types. For an unseen genetic perturbation: the control mean plus the mean delta of
    the training perturbations.
    """
    deltas = np.atleast_2d(np.asarray(reference_deltas, dtype=np.float64))
    control_mean = np.asarray(control_mean, dtype=np.float64).ravel()
    if deltas.size == 0 or deltas.shape[1] != control_mean.size:
        raise InputError(
            f"mean_shift needs at least one reference delta of length {control_mean.size} (the "
            f"number of genes); got an array of shape {deltas.shape}."
        )
    return control_mean + deltas.mean(axis=0)


def additive_shift(
    control_mean: np.ndarray,
    single_deltas: Mapping[str, np.ndarray],
    perturbation: str,
    *,
    sep: str = "+",
    control: str | None = None,
) -> np.ndarray | None:
    """Control mean plus the sum of the observed deltas of a combination's components.

    The standard reference for combinations whose single perturbations were all seen
    (GEARS' "additive" baseline). Returns ``None`` when a component has no observed delta.
    """
    parts = components(perturbation, sep=sep, control=control)
    if not parts or any(p not in single_deltas for p in parts):
        return None
    return np.asarray(control_mean, dtype=np.float64) + np.sum([single_deltas[p] for p in parts], axis=0)


# --------------------------------------------------------------------------- metrics
def top_de_genes(control_mean: Any, perturbed_mean: Any, n: int = 100) -> np.ndarray:
    """The ``n`` genes with the largest ``|perturbed_mean - control_mean|`` (largest first).

    Arrays are taken position by position and give indices; pandas Series are matched by
    gene label (see :func:`align_by_gene`) and give the gene labels, so either can go to
    :func:`delta_scores`' ``genes``.
    """
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}.")
    (c, p), labels = align_by_gene([control_mean, perturbed_mean], names=["control_mean", "perturbed_mean"],
                                   reference=1)
    order = np.argsort(-np.abs(p.ravel() - c.ravel()), kind="stable")[: min(n, c.size)]
    return order if labels is None else np.asarray(labels, dtype=object)[order]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _is_labelled(values: Any) -> bool:
    """Whether ``values`` carry gene labels (a pandas Series: ``.index`` and ``.reindex``)."""
    return hasattr(values, "reindex") and hasattr(values, "index") and not callable(values.index) \
        and getattr(values, "ndim", 1) == 1


def align_by_gene(
    values: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    reference: int = 0,
) -> tuple[list[np.ndarray], list[str] | None]:
    """Per-gene values (means, deltas) as float arrays in one gene order.

    pandas Series (e.g. :meth:`scelmo.Model.predict_perturbation` with ``mean=True``,
    indexed by the model's gene order) are matched by their gene labels, in the order of
    ``values[reference]``; plain arrays are taken position by position and must all have
    the same length. Mixing the two is refused, since an array's gene order is unknown.

    Parameters
    ----------
    values
        The vectors (Series or array-likes), one value per gene each.
    names
        What to call each vector in error messages (default ``values[0]``, ``values[1]``, ...).
    reference
        Which vector's gene order the result follows (for Series).

    Returns
    -------
    ``(arrays, genes)``: the float64 arrays and the gene labels of their order (``None``
    for plain arrays).

    Raises
    ------
    InputError
        When Series have duplicate labels or are labelled by different genes, when Series
        and arrays are mixed, or when arrays differ in length.
    """
    arrays, index = _align(values, names, reference)
    return arrays, None if index is None else [str(g) for g in index]


def _align(values: Sequence[Any], names: Sequence[str] | None, reference: int) -> tuple[list[np.ndarray], Any]:
    """:func:`align_by_gene`, returning the reference Series' index itself (``None`` for arrays)."""
    labels = list(names) if names is not None else [f"values[{i}]" for i in range(len(values))]
    if not values or len(labels) != len(values):
        raise InputError(f"Give one or more vectors and one name per vector (got {len(labels)} names for "
                         f"{len(values)} vectors).")
    labelled = [_is_labelled(v) for v in values]
    if not any(labelled):
        arrays = [np.asarray(v, dtype=np.float64).ravel() for v in values]
        if len({a.size for a in arrays}) > 1:
            raise InputError(
                f"{', '.join(labels)} must have one value per gene; got lengths "
                f"{', '.join(str(a.size) for a in arrays)}."
            )
        return arrays, None
    if not all(labelled):
        series = [n for n, is_s in zip(labels, labelled, strict=True) if is_s]
        plain = [n for n, is_s in zip(labels, labelled, strict=True) if not is_s]
        raise InputError(
            f"{', '.join(series)} {'is a pandas Series' if len(series) == 1 else 'are pandas Series'} (values by "
            f"gene) but {', '.join(plain)} {'is' if len(plain) == 1 else 'are'} not, so the genes cannot be matched. "
            "Pass all as Series (matched by gene label) or all as arrays in one gene order (Series.to_numpy())."
        )
    ref = values[reference].index
    for n, v in zip(labels, values, strict=True):
        _check_same_genes(v.index, n, ref, labels[reference])
    return [np.asarray(v.reindex(ref), dtype=np.float64).ravel() for v in values], ref


def _check_same_genes(index: Any, name: str, ref: Any, ref_name: str) -> None:
    """An error unless ``index`` holds each gene of ``ref`` exactly once (in any order)."""
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()
        raise InputError(f"{name} has duplicate gene labels (e.g. {', '.join(map(str, dup[:5]))}); give each gene once.")
    if index.equals(ref):
        return
    only_here, only_ref = index.difference(ref), ref.difference(index)
    if len(only_here) or len(only_ref):
        raise InputError(
            f"{name} and {ref_name} are labelled by different genes: {len(only_here)} only in {name} "
            f"(e.g. {', '.join(map(str, only_here[:3])) or '-'}), {len(only_ref)} only in {ref_name} "
            f"(e.g. {', '.join(map(str, only_ref[:3])) or '-'}). Select the shared genes of both first, e.g. "
            "s[s.index.intersection(other.index)]."
        )


def _gene_positions(genes: Any, n: int, ref: Any) -> np.ndarray:
    """Positions of the genes to score: indices, a boolean mask or, for labelled means (``ref``:
    their gene index), gene names or a boolean Series matched by label."""
    if genes is None:
        return np.arange(n)
    if _is_labelled(genes):
        if ref is None:
            raise InputError(
                "genes is a pandas Series but the means are plain arrays, so its labels cannot be matched; "
                "pass the means as Series too, or genes as positions / a boolean array."
            )
        if genes.dtype == bool:
            _check_same_genes(genes.index, "the gene mask", ref, "true_mean")
            return np.flatnonzero(np.asarray(genes.reindex(ref), dtype=bool))
        genes = genes.to_numpy()
    g = np.asarray(genes).ravel()
    if g.size == 0:
        return np.zeros(0, dtype=np.int64)
    if g.dtype == bool:
        if g.size != n:
            raise InputError(
                f"The boolean gene mask has {g.size} entries but there are {n} genes; give one True/False per gene "
                "(or the indices of the genes to score)."
            )
        return np.flatnonzero(g)
    if g.dtype.kind in "iu" or (g.dtype.kind == "f" and np.isfinite(g).all() and (g == np.round(g)).all()):
        idx = g.astype(np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise InputError(f"Gene indices {bad[:5].tolist()} are out of range for {n} genes.")
        return idx
    if g.dtype.kind in "OUS":
        if ref is None:
            raise InputError(
                "genes holds names, but the means are plain arrays without gene labels; pass the means as "
                "pandas Series indexed by gene, or genes as positions / a boolean mask."
            )
        pos = ref.get_indexer(g)
        if (pos < 0).any():
            unknown = [str(x) for x, i in zip(g, pos, strict=True) if i < 0]
            raise InputError(f"{len(unknown)} gene(s) to score are not among the means' genes: {unknown[:5]}.")
        return pos.astype(np.int64)
    raise InputError(f"genes must be gene indices, a boolean mask or gene names; got values of type {g.dtype}.")


def delta_scores(
    predicted_mean: Any,
    true_mean: Any,
    control_mean: Any,
    genes: Any = None,
) -> dict[str, float]:
    """How well a predicted mean profile matches the truth, on a gene subset.

    Parameters
    ----------
    predicted_mean, true_mean, control_mean
        Mean expression vectors (one value per gene) of the prediction, of the observed
        perturbed cells and of the control cells the prediction started from: all arrays
        in one gene order, or all pandas Series, which are matched by gene label (see
        :func:`align_by_gene`; labels that differ are an error).
    genes
        The genes to score: indices (e.g. :func:`top_de_genes`), a boolean mask with one
        entry per gene, or (Series means) gene names; all genes if ``None``. With Series
        means, indices and an unlabelled mask refer to ``true_mean``'s gene order and a
        boolean Series is matched by label.

    Returns
    -------
    ``{"r2_delta", "pearson_delta", "r2_mean", "mse_delta", "n_genes"}`` where
    delta = mean - control_mean (see the module docstring).
    """
    (pred, true, ctrl), ref = _align([predicted_mean, true_mean, control_mean],
                                     ["predicted_mean", "true_mean", "control_mean"], 1)
    idx = _gene_positions(genes, true.size, ref)
    if idx.size < 2:
        raise InputError("Score at least 2 genes (pass more gene indices).")
    dp, dt = (pred - ctrl)[idx], (true - ctrl)[idx]
    ss_tot = float(((dt - dt.mean()) ** 2).sum())
    ss_res = float(((dt - dp) ** 2).sum())
    return {
        "r2_delta": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "pearson_delta": _pearson(dp, dt),
        "r2_mean": _pearson(pred[idx], true[idx]) ** 2,
        "mse_delta": ss_res / idx.size,
        "n_genes": float(idx.size),
    }


# --------------------------------------------------------------------------- embeddings
def gene_perturbation_embeddings(
    names: Iterable[str],
    gene_embeddings: Any,
    *,
    sep: str = "+",
    control: str | None = None,
    conditioned: bool = False,
) -> dict[str, np.ndarray]:
    """One vector per component gene of ``names``, from a :class:`~scelmo.genes.GeneEmbeddings`,
    keyed by the names as given: a gene under an older symbol or alias is found under its
    current one (MARCH8 in a table that ``embed_genes`` keyed by MARCHF8).

    ``conditioned=False`` (default): the table's raw rows. ``scelmo.Model`` and ``scelmo train``
    give the head, for the genes they look up themselves (measured genes, and knockouts
    predicted later), the *model's* gene table conditioned (its mean and top directions
    removed); a model trained on raw vectors then meets a predicted gene in another space (a
    trial: cosine 0.72 between the two vectors of one gene). To stay in the model's space use
    ``conditioned=True`` with the table of the training data's genes (``embed_genes(adata)``,
    whose conditioning the Model fits likewise), or apply ``model.gene_table.conditioning``.

    Raises :class:`~scelmo.errors.InputError` naming the genes the table lacks.
    """
    wanted = sorted({c for n in names for c in components(n, sep=sep, control=control)})
    mat, found = lookup_gene_vectors(wanted, gene_embeddings, conditioned=conditioned)
    missing = [g for g, f in zip(wanted, found, strict=True) if not f]
    if missing:
        raise InputError(
            f"{len(missing)} perturbed gene(s) have no gene embedding: {missing[:10]}. Embed them with "
            "`scelmo.tl.embed_genes(genes=[...])`, or give their vectors explicitly."
        )
    return {g: mat[i] for i, g in enumerate(wanted)}


def lookup_gene_vectors(
    names: Sequence[str],
    gene_embeddings: Any,
    *,
    conditioned: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a :class:`~scelmo.genes.GeneEmbeddings` for gene names as the data spells them.

    A name the table lacks is looked up under the symbol the gene vocabulary resolves it
    to: ``embed_genes`` keys an older symbol or alias by its current one (MARCH8 -> MARCHF8),
    while perturbation labels keep the name of the screen.

    Parameters
    ----------
    names
        Gene names (e.g. perturbation components).
    gene_embeddings
        The gene table.
    conditioned
        Return the table's conditioned vectors (as :meth:`~scelmo.genes.GeneEmbeddings.aligned`).

    Returns
    -------
    ``(vectors, found)``: one row per name (zeros where not found) and the mask of found ones.
    """
    names = [str(n) for n in names]
    vocab = roles.vocabulary() if any(g not in gene_embeddings for g in names) else None
    symbols = vocab.resolve(names).symbols if vocab is not None else names
    return gene_embeddings.aligned(gene_embeddings.keys_for(names, symbols), conditioned=conditioned)


def component_gene_vectors(
    names: Iterable[str],
    gene_table: Any,
    *,
    config: Any = None,
    progress: bool | None = False,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Vectors for perturbation components that are genes, in ``gene_table``'s conditioned
    space (where a model trained on that table reads its genes).

    A name is looked up in ``gene_table`` (also under the symbol the gene vocabulary gives
    it: MARCH8 -> MARCHF8); a gene the table lacks (a knocked-out gene is often not measured)
    is embedded now with the configured roles, as :func:`scelmo.tl.embed_genes` does, and
    conditioned with the table's fit. Names the gene vocabulary does not know (a drug, a
    stimulus) are left out: they need a vector from a description
    (:func:`text_perturbation_embeddings`).

    Parameters
    ----------
    names
        Component names (e.g. ``components(p)`` of every perturbation).
    gene_table
        The model's :class:`~scelmo.genes.GeneEmbeddings`.
    config
        Settings for embedding the genes the table lacks; they must use the embedder that
        made ``gene_table`` (else :class:`~scelmo.errors.InputError`).
    progress
        Show progress bars while embedding.

    Returns
    -------
    ``(vectors, embedded_now)``: ``{name: vector}`` for the names that are genes, keyed as
    given, and the names embedded now.
    """
    names = list(dict.fromkeys(str(n) for n in names))
    if not names:
        return {}, []
    mat, found = lookup_gene_vectors(names, gene_table, conditioned=True)
    out = {n: mat[i] for i, n in enumerate(names) if found[i]}
    missing = [n for n in names if n not in out]
    vocab = roles.vocabulary(roles.description_writer(get_settings(config))) if missing else None
    genes = [n for n, s in zip(missing, vocab.resolve(missing).symbols, strict=True) if s] if vocab is not None \
        else missing
    if not genes:
        return out, []
    new = tl.embed_genes(genes=genes, config=config, progress=progress)
    ours, theirs = gene_table.manifest.get("embed_model"), new.manifest.get("embed_model")
    if ours and theirs and ours != theirs:
        raise InputError(
            f"The perturbed gene(s) {genes[:5]} are not in the model's gene table, and the configured embedder "
            f"({theirs!r}) is not the one that made it ({ours!r}): their vectors would be in another space. "
            "Configure the table's embedder, or give the vectors (perturbation_embeddings={name: vector}).")
    raw, found = lookup_gene_vectors(genes, new)
    if not found.any():
        return out, []
    cond = gene_table.conditioning if gene_table.conditioning is not None else gene_table.condition().conditioning
    now = [g for g, f in zip(genes, found, strict=True) if f]
    out |= dict(zip(now, cond.apply(raw[found]), strict=True))
    return out, now


def another_name_note(names: Sequence[str], gene_table: Any) -> str | None:
    """What to tell about the names not in ``gene_table`` that the gene vocabulary reads as a gene
    by another name (an alias or an older symbol: IFN-beta -> IFNB1, MARCH8 -> MARCHF8): such a
    name is given that gene's vector, which is wrong for a stimulus or a drug that merely shares a
    gene's alias. ``None`` when there are none; callers add how to give such a name its own vector."""
    names = [str(n) for n in names]
    vocab = roles.vocabulary() if any(n not in gene_table for n in names) else None
    if vocab is None:
        return None
    pairs = [(n, s) for n, s in zip(names, vocab.resolve(names).symbols, strict=True)
             if s and s != n and n not in gene_table]
    if not pairs:
        return None
    shown = ", ".join(f"{n} -> {s}" for n, s in pairs[:8]) + (", ..." if len(pairs) > 8 else "")
    return (f"Perturbation names read as genes by another name, and given those genes' vectors: {shown}. A name "
            "that is not that gene (a stimulus or a drug) needs a vector from its description")


def text_perturbation_embeddings(descriptions: Mapping[str, str], *, settings: Any = None) -> dict[str, np.ndarray]:
    """One vector per component from a text description (drugs, stimuli), via the ``embed`` role.

    ``descriptions`` maps a component name (e.g. ``"IFN-beta"``) to a sentence describing it;
    the texts are embedded by the configured embedder (offline MiniLM by default), through
    the cache.
    """

    if not descriptions:
        raise InputError("Give at least one {name: description} pair to embed.")
    names = list(descriptions)
    vecs = roles.embed_texts(settings or get_settings(), [str(descriptions[n]) for n in names],
                             desc="embedding perturbation descriptions")
    return {n: vecs[i] for i, n in enumerate(names)}


# --------------------------------------------------------------------------- synthetic data
def split_perturbations(
    perturbations: Iterable[str],
    *,
    unseen_fraction: float = 0.3,
    train_combo_fraction: float = 0.5,
    sep: str = "+",
    control: str | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """A GEARS-style split of perturbation names into training and test sets.

    A random ``unseen_fraction`` of the single perturbations is held out. Combinations
    whose components are all seen singles are split: ``train_combo_fraction`` of them go
    to training, the rest to ``"combo_seen2"``; combinations with one or no seen component
    go to ``"combo_seen1"`` / ``"combo_seen0"``.

    Returns
    -------
    ``{"train", "unseen_single", "combo_seen2", "combo_seen1", "combo_seen0"}`` -> names.
    """
    if not 0.0 < unseen_fraction < 1.0:
        raise InputError(f"unseen_fraction must lie strictly between 0 and 1, got {unseen_fraction}.")
    rng = np.random.default_rng(seed)
    names = sorted({str(p) for p in perturbations if components(str(p), sep=sep, control=control)})
    singles = [n for n in names if len(components(n, sep=sep, control=control)) == 1]
    combos = [n for n in names if len(components(n, sep=sep, control=control)) > 1]
    if len(singles) < 2:
        raise InputError(f"Need at least 2 single perturbations to split, got {len(singles)}.")
    n_unseen = min(len(singles) - 1, max(1, round(unseen_fraction * len(singles))))
    unseen = set(rng.choice(singles, size=n_unseen, replace=False).tolist())
    out: dict[str, list[str]] = {"train": [s for s in singles if s not in unseen],
                                 "unseen_single": sorted(unseen),
                                 "combo_seen2": [], "combo_seen1": [], "combo_seen0": []}
    seen = set(out["train"])
    seen2 = []
    for c in combos:
        parts = components(c, sep=sep, control=control)
        n_seen = sum(p in seen for p in parts)
        if n_seen == len(parts):
            seen2.append(c)
        else:
            out["combo_seen1" if n_seen >= 1 else "combo_seen0"].append(c)
    rng.shuffle(seen2)
    n_train = int(round(train_combo_fraction * len(seen2)))
    out["train"] += sorted(seen2[:n_train])
    out["combo_seen2"] = sorted(seen2[n_train:])
    return out


# --------------------------------------------------------------------------- held-out targets
def target_folds(targets: Iterable[str], *, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Split perturbation targets into ``n_folds`` folds of (nearly) equal size, at random.

    Each target is held out exactly once; ``n_folds`` equal to the number of targets gives
    leave-one-target-out. Returns the folds, each sorted.
    """
    names = sorted({str(t) for t in targets})
    if not 2 <= n_folds <= len(names):
        raise InputError(f"n_folds must lie between 2 and the number of targets ({len(names)}), got {n_folds}.")
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in order[f::n_folds]) for f in range(n_folds)]


def _unit_centred(train: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise both, centre on the training mean, scale to unit mean training norm."""
    def unit(v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(v, dtype=np.float64))
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    tr, qu = unit(train), unit(query)
    centre = tr.mean(axis=0)
    scale = 1.0 / max(float(np.linalg.norm(tr - centre, axis=1).mean()), 1e-12)
    return (tr - centre) * scale, (qu - centre) * scale


def _check_train(train_vectors: Any, train_deltas: Any, query_vectors: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tv = np.atleast_2d(np.asarray(train_vectors, dtype=np.float64))
    td = np.atleast_2d(np.asarray(train_deltas, dtype=np.float64))
    qv = np.atleast_2d(np.asarray(query_vectors, dtype=np.float64))
    if tv.shape[0] != td.shape[0] or tv.shape[0] < 2:
        raise InputError(
            f"Give one delta per training vector and at least 2 of each; got {tv.shape[0]} vectors and "
            f"{td.shape[0]} deltas."
        )
    if qv.shape[1] != tv.shape[1]:
        raise InputError(f"Query vectors have {qv.shape[1]} dimensions but training vectors {tv.shape[1]}.")
    if not (np.isfinite(tv).all() and np.isfinite(qv).all() and np.isfinite(td).all()):
        raise InputError("Vectors and deltas must be finite (no NaN or infinite values).")
    return tv, td, qv


def embedding_ridge(
    train_vectors: Any,
    train_deltas: Any,
    query_vectors: Any,
    *,
    alpha: float = 1.0,
) -> np.ndarray:
    """Predict the expression delta of unseen targets from their vectors by ridge regression.

    The vectors are L2-normalised, centred on the training mean and scaled to unit mean
    norm (as the perturbation head does); the prediction is the mean training delta plus a
    linear-kernel ridge fit of the deviations: ``mean + k(q, T) (K + alpha I)^-1 (D - mean)``.
    A large ``alpha`` gives the mean shift; a query orthogonal to every training vector
    also gets the mean shift.

    Parameters
    ----------
    train_vectors
        Targets x dimensions: the vectors of the training targets.
    train_deltas
        Targets x genes: their observed mean expression deltas (perturbed - control).
    query_vectors
        Queries x dimensions: the vectors of the targets to predict.
    alpha
        Ridge penalty (> 0), in units of the centred, scaled vectors' squared norm.

    Returns
    -------
    Queries x genes array of predicted deltas.
    """
    if alpha <= 0:
        raise InputError(f"alpha must be positive, got {alpha}.")
    tv, td, qv = _check_train(train_vectors, train_deltas, query_vectors)
    tr, qu = _unit_centred(tv, qv)
    mean = td.mean(axis=0)
    K = tr @ tr.T
    coef = np.linalg.solve(K + alpha * np.eye(K.shape[0]), td - mean)
    return mean + (qu @ tr.T) @ coef


def embedding_knn(
    train_vectors: Any,
    train_deltas: Any,
    query_vectors: Any,
    *,
    k: int = 3,
) -> np.ndarray:
    """Predict the delta of unseen targets as the mean delta of their ``k`` nearest training targets.

    Nearness is the cosine of the centred vectors (see :func:`embedding_ridge`); the ``k``
    neighbours are weighted by their positive cosine (equally if none is positive).
    Returns a queries x genes array.
    """
    tv, td, qv = _check_train(train_vectors, train_deltas, query_vectors)
    if not 1 <= k <= tv.shape[0]:
        raise InputError(f"k must lie between 1 and the number of training targets ({tv.shape[0]}), got {k}.")
    tr, qu = _unit_centred(tv, qv)
    tr = tr / np.maximum(np.linalg.norm(tr, axis=1, keepdims=True), 1e-12)
    qu = qu / np.maximum(np.linalg.norm(qu, axis=1, keepdims=True), 1e-12)
    sim = qu @ tr.T
    out = np.empty((qv.shape[0], td.shape[1]))
    for i, row in enumerate(sim):
        nn = np.argsort(-row, kind="stable")[:k]
        w = np.clip(row[nn], 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(k, 1.0 / k)
        out[i] = w @ td[nn]
    return out


def detectable_perturbations(
    X: Any,
    perturbations: Sequence[Any],
    *,
    control: str,
    n_null: int = 200,
    level: float = 0.99,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Which perturbations change mean expression more than control-vs-control noise does.

    For a perturbation with ``n`` cells the statistic is the Euclidean norm of its mean
    delta (perturbed - control, over all genes). Its null distribution comes from
    ``n_null`` random draws of ``n`` control cells against the remaining control cells; the
    perturbation is *detectable* when its statistic exceeds the null's ``level`` quantile.
    The rule uses only observed data, never a model's predictions, so it can define the
    subset of perturbations worth scoring before any model is run. Perturbations with at
    least half as many cells as there are controls are compared with half the controls.

    Returns
    -------
    ``{perturbation: {"n_cells", "delta_norm", "null_quantile", "null_mean", "ratio",
    "detectable"}}`` (``ratio`` = delta_norm / null_quantile; ``detectable`` is 1.0 or 0.0).
    """
    pert = np.asarray(perturbations).astype(str)
    if len(pert) != X.shape[0]:
        raise InputError(f"X has {X.shape[0]} cells but {len(pert)} perturbation labels.")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must lie strictly between 0 and 1, got {level}.")
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    ctrl_rows = np.flatnonzero(pert == control)
    if ctrl_rows.size < 4:
        raise InputError(f"Need at least 4 control cells ({control!r}); found {ctrl_rows.size}.")
    ctrl_mean = _dense_rows_mean(X, ctrl_rows)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    null_cache: dict[int, np.ndarray] = {}
    for p in sorted(set(pert) - {control}):
        rows = np.flatnonzero(pert == p)
        n = int(min(rows.size, ctrl_rows.size // 2))
        if n not in null_cache:
            vals = []
            for _ in range(n_null):
                pick = rng.permutation(ctrl_rows)
                vals.append(np.linalg.norm(_dense_rows_mean(X, pick[:n]) - _dense_rows_mean(X, pick[n:])))
            null_cache[n] = np.asarray(vals)
        null = null_cache[n]
        stat = float(np.linalg.norm(_dense_rows_mean(X, rows) - ctrl_mean))
        q = float(np.quantile(null, level))
        out[p] = {"n_cells": float(rows.size), "delta_norm": stat, "null_quantile": q,
                  "null_mean": float(null.mean()), "ratio": stat / q if q > 0 else float("inf"),
                  "detectable": float(stat > q)}
    return out
