"""In-silico treatment: which gene, deleted (or down-weighted), moves cells to another state?

The paper's analysis (scELMo ``in-silico treatment.ipynb``): train the fine-tuning network
as a classifier of the condition, set one gene's expression to zero in the cells of one
state and see how far the classifier's output moves toward the other state. Exposed as
:func:`scelmo.tl.in_silico_deletion`.

Exact fast path
---------------
The heads built on a gene adapter (``"annotation"``) embed a cell as
``z = x @ A / s`` with ``A = adapter(E)`` (genes x latent) and ``s`` the cell's total over
the genes with a vector (``normalize="wa"``; ``s = 1`` for ``"none"``). Scaling gene ``g`` by
``factor`` changes ``x`` by ``d = (1 - factor) x_g`` in one coordinate, so

``z' = (s z - d A_g) / (s - d)``

a rank-one update of the pre-normalisation embedding and a new scalar. Every treated
(cell, gene) pair is one such update; only cells that express the gene change. All pairs
go through the head's classifier (a float64 copy of its weights) in blocks, so every gene
costs one pass over its non-zero entries instead of a re-embedding of all cells, and the
effects are computed in float64 (the float32 round-off of a re-embedding was the size of
the effects of most genes). Heads without an adapter use the generic path
(``method="brute"``): re-embed and re-classify the cells once per gene through the head's
public ``transform`` / ``predict_proba``.

Null from random genes
----------------------
Genes that are more highly expressed move cells further whatever they are, so the effect of
each gene is compared with the effects of random genes of similar expression: the genes
with a vector that are expressed in the source cells are split into ``null_bins`` equal-size
bins of mean expression (over the source cells), ``n_null`` random genes are drawn from each
bin, and a gene's ``z`` is ``(effect - null mean) / null SD`` of its bin, with the empirical
one-sided p-value ``(1 + #null >= effect) / (n + 1)``. A gene drawn into the null is left out
of its own null. Random genes include some with real effects (in Kang 2018 the interferon
genes are among the most expressed), which inflate the SD; ``z_robust`` uses the median and
1.4826 x the median absolute deviation instead.
"""

from __future__ import annotations

import copy as _copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from scelmo import keys, provenance
from scelmo.errors import InputError, ScelmoError
from scelmo.progress import progress_bar
from scelmo.tl._common import _copy_of

#: ``score=`` value -> result column it ranks by.
SCORES = {"logit": "logit_shift", "probability": "target_probability_shift", "cosine": "delta_cosine"}
METHODS = ("auto", "fast", "brute")
#: Random null genes per expression bin on the brute path (one pass over the cells each).
BRUTE_NULL_PER_BIN = 100
_BLOCK = 8_000_000  # values (treated (cell, gene) pairs x latent width) per block in the fast path


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _cos_rows(M: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``M`` with ``b`` (0 for zero vectors)."""
    nm, nb = np.linalg.norm(M, axis=1), np.linalg.norm(b)
    den = nm * nb
    return np.divide(M @ b, den, out=np.zeros(M.shape[0]), where=den > 0)


def _log_odds(L: np.ndarray, t: int) -> np.ndarray:
    """log(p_t / (1 - p_t)) from logits ``L`` (cells x classes), stably."""
    others = np.delete(L, t, axis=1)
    return L[:, t] - logsumexp(others, axis=1)


def _scale_column(X: Any, col: int, factor: float) -> Any:
    """A copy of ``X`` with column ``col`` multiplied by ``factor`` (sparse stays sparse)."""
    if sp.issparse(X):
        out = sp.csr_matrix(X, copy=True)
        out.data[out.indices == col] *= factor
        out.eliminate_zeros()
        return out
    out = np.array(X, copy=True)
    out[:, col] *= factor
    return out


def _has_adapter(head: Any) -> bool:
    module = getattr(head, "module", None)
    norm = getattr(getattr(head, "options", None), "normalize", None)
    return module is not None and hasattr(module, "adapter") and hasattr(module, "classifier") and norm in ("wa", "none")


# --------------------------------------------------------------------------- effects
class _Effects:
    """Per-gene sums of the per-cell changes over the source cells (float64)."""

    def __init__(self, n_genes: int, latent: int) -> None:
        self.logit = np.zeros(n_genes)
        self.logit_sq = np.zeros(n_genes)
        self.prob = np.zeros(n_genes)
        self.flip = np.zeros(n_genes)
        self.dz = np.zeros((n_genes, latent))

    def add(self, cols: np.ndarray, dlo: np.ndarray, dp: np.ndarray, dflip: np.ndarray, dz: np.ndarray) -> None:
        n = self.logit.size
        self.logit += np.bincount(cols, dlo, minlength=n)
        self.logit_sq += np.bincount(cols, dlo * dlo, minlength=n)
        self.prob += np.bincount(cols, dp, minlength=n)
        self.flip += np.bincount(cols, dflip, minlength=n)
        pick = sp.csr_matrix((np.ones(cols.size), (cols, np.arange(cols.size))), shape=(n, cols.size))
        self.dz += np.asarray(pick @ dz)


class _Context:
    """What both paths share: the source / target cells, the head and the target class."""

    def __init__(self, head: Any, X: Any, names: list[str], E: np.ndarray, src: np.ndarray, tgt: np.ndarray,
                 t_idx: int | None) -> None:
        self.head, self.names, self.E, self.t = head, names, E, t_idx
        self.Xs, self.Xt = X[src], X[tgt]


def _used_columns(head: Any, E: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Columns of the data the head embeds (genes with a vector, and among them the head's
    trained selection, e.g. its variable genes, when it keeps one), and each column's place
    among the head's training genes (``None`` when the head keeps none)."""
    query_columns = getattr(head, "_query_columns", None)
    if callable(query_columns):
        try:
            cols, pos = query_columns(E.shape[0], E, names)
            cols, pos = np.asarray(cols, dtype=np.int64), np.asarray(pos, dtype=np.int64)
            order = np.argsort(cols, kind="stable")
            return cols[order], pos[order]
        except Exception:  # noqa: BLE001 - a head of another shape: every gene with a vector
            pass
    return np.flatnonzero(np.abs(E).sum(axis=1) > 0), None


class _FastPathMismatch(ScelmoError):
    """The float64 reconstruction of the head does not reproduce its own output."""


def _classifier64(head: Any) -> Any:
    """The head's classifier on latent vectors in float64 (logits), or ``None`` for a head
    without one (``head.module.classifier``)."""
    module = getattr(head, "module", None)
    if module is None or getattr(module, "classifier", None) is None:
        return None
    import torch

    clf = _copy.deepcopy(module.classifier).to("cpu").double().eval()

    def logits(Z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clf(torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float64))).numpy()

    return logits


def _fast_setup(ctx: _Context) -> dict[str, Any]:
    """float64 copies of the adapter and classifier; the source cells' pre-normalisation embeddings.

    A cell's embedding is ``z = u / s`` with ``u = x @ A - offset`` over the genes the head
    uses (``offset``: the head's centring term, 0 without one) and ``s`` the cell's total over
    them (``normalize="wa"``; 1 for ``"none"``). Checked against the head's own ``transform``
    and ``predict_proba``, so a head that computes something else never takes this path.
    """
    import torch

    head, E, names = ctx.head, ctx.E, ctx.names
    cols, pos = _used_columns(head, E, names)
    adapter = _copy.deepcopy(head.module.adapter).to("cpu").double().eval()
    logits = _classifier64(head)
    E64 = torch.from_numpy(np.asarray(E[cols], dtype=np.float64))
    residual = bool(getattr(getattr(head, "options", None), "residual", False))
    with torch.no_grad():  # (the residual adapter's per-gene corrections, tune_genes, go by training position)
        A = (adapter(E64, pos) if residual and pos is not None else adapter(E64)).numpy()
    arrays = getattr(head, "arrays", None) or {}
    if arrays.get("gene_mean") is not None and pos is not None:  # the centring term over the genes present, as transform
        offset = np.asarray(arrays["gene_mean"], dtype=np.float64)[pos] @ A
    else:
        offset = np.asarray(arrays.get("offset_latent", np.zeros(A.shape[1])), dtype=np.float64)
    wa = head.options.normalize == "wa"

    def embed(X: Any) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        Xk = sp.csr_matrix(X[:, cols] if sp.issparse(X) else np.asarray(X)[:, cols], dtype=np.float64)
        s = np.asarray(Xk.sum(axis=1)).ravel() if wa else np.ones(Xk.shape[0])
        U = np.asarray(Xk @ A) - offset[None, :]
        return Xk, s, U

    def normed(U: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.divide(U, s[:, None], out=np.zeros_like(U), where=s[:, None] > 1e-12)

    Xk, s, U = embed(ctx.Xs)
    _, st, Ut = embed(ctx.Xt)
    Z = normed(U, s)
    # the reconstruction must reproduce the head (float32 round-off apart)
    z32 = np.asarray(head.transform(ctx.Xs, gene_vectors=E, gene_names=names), dtype=np.float64)
    scale = max(1.0, float(np.abs(z32).max()))
    if z32.shape != Z.shape or float(np.abs(z32 - Z).max()) > 1e-4 * scale:
        raise _FastPathMismatch("the float64 reconstruction of the head's embedding differs from head.transform")
    if ctx.t is not None:
        p32 = np.asarray(head.predict_proba(ctx.Xs, gene_vectors=E, gene_names=names))
        L = logits(Z)
        p = np.exp(L - L.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        if p.shape != p32.shape or float(np.abs(p - p32).max()) > 1e-4:
            raise _FastPathMismatch("the float64 copy of the classifier differs from head.predict_proba")
    return {"A": A, "wa": wa, "Xk": Xk, "s": s, "U": U, "Z": Z, "Zt": normed(Ut, st), "cols": cols,
            "logits": logits}


def _fast_effects(ctx: _Context, factor: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Effects of scaling each gene (all genes of the data) by ``factor`` in the source cells."""
    from scipy.special import expit

    f = _fast_setup(ctx)
    cols, A, Xk, s, U, Z, logits = f["cols"], f["A"], f["Xk"], f["s"], f["U"], f["Z"], f["logits"]
    n = Z.shape[0]
    t = ctx.t
    base = {"z_mean": Z.mean(0), "zt_mean": f["Zt"].mean(0)}
    acc = _Effects(cols.size, A.shape[1])
    if t is not None:
        L0 = logits(Z)
        lo0 = _log_odds(L0, t)
        p0, hit0 = expit(lo0), (L0.argmax(1) == t).astype(np.float64)
        base.update(lo0=lo0, p0=p0, hit0=hit0)
    rows = np.repeat(np.arange(n), np.diff(Xk.indptr))
    step = max(1000, _BLOCK // max(A.shape[1], 1))
    for b in range(0, Xk.nnz, step):
        r, c = rows[b : b + step], Xk.indices[b : b + step]
        d = (1.0 - factor) * Xk.data[b : b + step]
        Un = U[r] - d[:, None] * A[c]  # the rank-one change of the pre-normalisation embedding
        if f["wa"]:
            s_new = s[r] - d
            empty = s_new <= 1e-12 * s[r]  # the cell's only gene: the head embeds an empty cell as 0
            Zn = Un / np.where(empty, 1.0, s_new)[:, None]
            Zn[empty] = 0.0
        else:
            Zn = Un
        if t is not None:
            L = logits(Zn)
            lo = _log_odds(L, t)
            dlo, dp = lo - base["lo0"][r], expit(lo) - base["p0"][r]
            dflip = (L.argmax(1) == t) - base["hit0"][r]
        else:
            dlo = dp = dflip = np.zeros(r.size)
        acc.add(c, dlo, dp, dflip, Zn - Z[r])
    out = _summarise(acc, n, base)
    summary = {"baseline_cosine": _cos(base["z_mean"], base["zt_mean"])}
    full = {k: np.full(ctx.E.shape[0], summary["baseline_cosine"] if k == "cosine" else 0.0) for k in out}
    for k, v in out.items():
        full[k][cols] = v
    if t is not None:
        summary.update(baseline_target_probability=float(base["p0"].mean()),
                       baseline_target_logodds=float(base["lo0"].mean()),
                       baseline_fraction_predicted_target=float(base["hit0"].mean()))
    return full, summary


def _summarise(acc: _Effects, n: int, base: dict[str, Any]) -> dict[str, np.ndarray]:
    """Means over the ``n`` source cells (cells that do not express a gene contribute 0)."""
    mean = acc.logit / n
    var = np.maximum(acc.logit_sq - n * mean**2, 0.0) / max(n - 1, 1)
    se = np.sqrt(var / n)
    paired_t = np.divide(mean, se, out=np.zeros_like(mean), where=se > 0)
    zbar = base["z_mean"][None, :] + acc.dz / n
    cos = _cos_rows(zbar, base["zt_mean"])
    return {"logit_shift": mean, "target_probability_shift": acc.prob / n, "fraction_flipped": acc.flip / n,
            "paired_t": paired_t, "cosine": cos, "delta_cosine": cos - _cos(base["z_mean"], base["zt_mean"])}


def _brute_effects(ctx: _Context, factor: float, cols: np.ndarray, *, progress: bool | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The same effects by re-embedding and re-classifying the source cells once per gene
    (the head's public ``transform`` / ``predict_proba``; float32 inside the head)."""
    head, E, t = ctx.head, ctx.E, ctx.t
    eps = 1e-12
    clf = _classifier64(head)

    def run(X: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        z = np.asarray(head.transform(X, gene_vectors=E, gene_names=ctx.names), dtype=np.float64)
        if t is None:
            return z, None, None
        if clf is not None:  # the log-odds from the logits: float32 probabilities saturate near 0 and 1
            L = clf(z)
            return z, np.exp(L - logsumexp(L, axis=1, keepdims=True)), _log_odds(L, t)
        p = np.clip(np.asarray(head.predict_proba(X, gene_vectors=E, gene_names=ctx.names), dtype=np.float64), eps, 1.0)
        return z, p, np.log(p[:, t]) - np.log(np.clip(1.0 - p[:, t], eps, 1.0))

    z0, P0, lo0 = run(ctx.Xs)
    zt_mean = np.asarray(head.transform(ctx.Xt, gene_vectors=E, gene_names=ctx.names), dtype=np.float64).mean(0)
    n = z0.shape[0]
    base = {"z_mean": z0.mean(0), "zt_mean": zt_mean}
    acc = _Effects(E.shape[0], z0.shape[1])
    if t is not None:
        hit0 = (P0.argmax(1) == t).astype(np.float64)
    with progress_bar(total=len(cols), desc="in silico: one pass per gene", unit="gene", enabled=progress) as bar:
        for c in cols:
            Xd = _scale_column(ctx.Xs, int(c), factor)
            z, P, lo = run(Xd)
            cc = np.full(n, int(c))
            if t is not None:
                acc.add(cc, lo - lo0, P[:, t] - P0[:, t], (P.argmax(1) == t) - hit0, z - z0)
            else:
                acc.add(cc, np.zeros(n), np.zeros(n), np.zeros(n), z - z0)
            bar.update(1)
    summary = {"baseline_cosine": _cos(base["z_mean"], zt_mean)}
    if t is not None:
        summary.update(baseline_target_probability=float(P0[:, t].mean()), baseline_target_logodds=float(lo0.mean()),
                       baseline_fraction_predicted_target=float(hit0.mean()))
    return _summarise(acc, n, base), summary


# --------------------------------------------------------------------------- null
def _expression_bins(level: np.ndarray, universe: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-size bins (by rank of ``level``) over ``universe``; -1 outside it."""
    bins = np.full(level.size, -1, dtype=np.int64)
    order = universe[np.argsort(level[universe], kind="stable")]
    bins[order] = (np.arange(order.size) * n_bins) // max(order.size, 1)
    return bins


def in_silico_deletion(
    model: Any,
    adata: Any,
    *,
    genes: Sequence[str] | str | None = None,
    source: str,
    target: str,
    groupby: str | None = None,
    factor: float = 0.0,
    score: str = "logit",
    n_null: int | None = None,
    null_bins: int = 10,
    method: str = "auto",
    max_cells: int | None = 2000,
    seed: int = 0,
    key_added: str = keys.IN_SILICO,
    copy: bool = False,
    progress: bool | None = None,
) -> Any:
    """Rank genes by how far deleting (or down-weighting) each one moves ``source`` cells to ``target``.

    For each candidate gene its expression is multiplied by ``factor`` (0 = deleted) in the
    ``source`` cells, and the model's classifier is asked again for each cell: the change of
    the log-odds of ``target`` per cell, averaged over the source cells, is the default
    effect. Each effect is compared with the effects of random genes of similar expression
    (the null; see the module docstring).

    Parameters
    ----------
    model
        A trained :class:`scelmo.Model` whose head classifies the condition, e.g. the
        ``"annotation"`` head after ``Model.setup_anndata(adata, labels_key="condition")``.
    adata
        Cells of both groups (the training data or new data).
    genes
        Candidate genes (names as in the model's expression matrix, e.g. ``adata.var_names``);
        ``None`` (default): every gene the model uses (genes with a gene vector, and among
        them the head's trained gene selection, e.g. its variable genes), so the ranking is
        as wide as the model allows.
    source, target
        Values of ``adata.obs[groupby]``: the cells to treat (diseased / stimulated) and the
        state to move them toward (healthy / control). ``target`` must be one of the
        classifier's classes for the classifier scores.
    groupby
        ``obs`` column with the groups (default: the model's ``labels_key``).
    factor
        Multiplier of the gene's expression in the treated cells: 0 deletes it, 0.5 halves
        it, values above 1 over-express it. Must be >= 0 and not 1.
    score
        The effect that ranks the genes and is compared with the null: ``"logit"`` (mean
        change of the target log-odds per cell; not squashed when the classifier is
        confident), ``"probability"`` (mean change of P(target)) or ``"cosine"`` (change of
        the cosine between the mean treated source embedding and the mean target embedding,
        the paper's score; needs no classifier).
    n_null
        Random genes per expression bin in the null (at most the bin's size). Default: every
        gene of the bin with the fast path (its effects come at once), 100 with the brute
        path (one pass each).
    null_bins
        Number of equal-size bins of mean expression the null genes are matched on.
    method
        ``"fast"``: the exact rank-one path for adapter heads (float64); ``"brute"``:
        re-embed the cells once per gene through the head's ``transform`` /
        ``predict_proba`` (any head; slower, float32 inside the head); ``"auto"``: fast when
        the head allows it.
    max_cells
        Use at most this many cells per group (random, seeded); ``None`` = all.
    seed
        Seeds the choice of cells and of the null genes.
    key_added
        Key in ``adata.uns`` for the result.
    copy
        Leave ``adata`` untouched and return a modified copy of it, whose
        ``uns[key_added]`` holds the table (scanpy's convention), instead of the DataFrame.
    progress
        Show a progress bar for ``method="brute"``'s one pass per gene (default: when attached
        to a terminal).

    Returns
    -------
    A DataFrame, one row per candidate gene, sorted by the ``score`` column (largest first,
    i.e. the genes whose deletion moves the cells most toward ``target``):

    ``logit_shift``
        mean change of log(P(target) / (1 - P(target))) over the source cells;
    ``target_probability_shift``
        mean change of P(target);
    ``fraction_flipped``
        change of the fraction of source cells predicted as ``target``;
    ``paired_t``
        the per-cell log-odds changes' mean over their standard error (cells that do not
        express the gene count as 0);
    ``cosine``, ``delta_cosine``
        cos(mean treated source embedding, mean target embedding) and its change;
    ``n_cells_expressing``, ``mean_expression``
        in the source cells; ``has_vector``: the gene has a gene vector; ``used_by_model``:
        the head embeds it (a gene the model does not use has no effect);
    ``expression_bin``, ``null_mean``, ``null_sd``, ``z``
        the gene's expression bin, the mean and SD of the ``score`` of the bin's random
        genes and ``(effect - null_mean) / null_sd``;
    ``null_median``, ``null_robust_sd``, ``z_robust``
        the same with the median and 1.4826 x the median absolute deviation (the SD of a
        normal null, not inflated by the few strong genes a random draw contains);
    ``p_null``, ``fdr``
        the empirical one-sided p-value ``(1 + #null >= effect) / (n + 1)`` (at least
        ``1 / (n + 1)``: with the default null of every gene in the bin, about 1 / 1,000 for
        10,000 genes in 10 bins), and its Benjamini-Hochberg adjustment over the tested genes.
        When the tested genes are most of the null (``genes=None``, every gene, on the fast path), each
        ``p_null`` is only the gene's rank among its bin's other genes, uniform by
        construction: ``fdr`` is NaN then, and ``z_robust`` is the measure to rank by.
        The null columns are NaN for genes that cannot have an effect (not expressed in the
        source cells, or not used by the model);
    ``rank``, ``rank_cosine``, ``rank_classifier``
        ranks by ``score``, by ``delta_cosine`` and by ``target_probability_shift`` (1 = largest).

    The same table is stored in ``adata.uns[key_added]`` (``genes`` and one array per
    column, plus ``source``, ``target``, ``groupby``, ``factor``, ``score``, ``method``, the
    baselines ``baseline_cosine``, ``baseline_target_probability``,
    ``baseline_target_logodds``, and ``null`` = ``{"genes", "effect", "bin"}``, the random
    genes and their effects), with provenance in ``adata.uns["scelmo"]["in_silico_deletion"]``.
    """
    import pandas as pd

    if not getattr(model, "is_trained", False):
        raise ScelmoError("The model is not trained; call `model.train()` first.")
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(map(repr, SCORES))}, got {score!r}.")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}.")
    factor = float(factor)
    if not np.isfinite(factor) or factor < 0 or factor == 1.0:
        raise InputError(f"factor={factor!r}: use 0 to delete a gene, a value in (0, 1) to down-weight it or > 1 to "
                         "over-express it (1 would change nothing).")
    if max_cells is not None and (isinstance(max_cells, bool) or int(max_cells) < 1):
        raise InputError(f"max_cells must be a whole number >= 1, or None for every cell (got {max_cells!r}).")
    if (n_null is not None and int(n_null) < 2) or int(null_bins) < 1:
        raise InputError(f"n_null must be >= 2 and null_bins >= 1 (got n_null={n_null}, null_bins={null_bins}).")
    groupby = groupby or model.setup.labels_key
    if groupby is None or groupby not in adata.obs:
        raise InputError(f"groupby={groupby!r} is not a column of adata.obs; pass `groupby=` naming the condition column.")
    groups = adata.obs[groupby].astype(str).to_numpy()
    for name, what in ((source, "source"), (target, "target")):
        if name not in set(groups):
            raise InputError(f"{what}={name!r} is not a value of adata.obs[{groupby!r}] (values: {sorted(set(groups))[:10]}).")
    if source == target:
        raise InputError("source and target must differ.")
    head = model.head
    classes = list(head.classes)
    use_clf = head.supports("labels") and target in classes
    if score != "cosine" and not use_clf:
        why = (f"its classes are {classes}" if classes else "it has no classifier")
        raise InputError(f"score={score!r} needs the model's classifier to know target={target!r}, but {why}. Train the "
                         f"'annotation' head with `Model.setup_anndata(adata, labels_key={groupby!r})`, or use score='cosine'.")
    if method == "fast" and not _has_adapter(head):
        raise InputError(f"method='fast' needs a gene-adapter head (e.g. 'annotation'); the {model.head_name!r} head "
                         "has none. Use method='brute'.")
    fast = method == "fast" or (method == "auto" and _has_adapter(head))
    if isinstance(genes, str):
        genes = [genes]
    if genes is not None:
        genes = list(dict.fromkeys(str(g) for g in genes))
        if not genes:
            raise InputError("Give at least one candidate gene, or genes=None for every gene the model uses.")
    if copy:
        adata = _copy_of(adata)
    X, names, E, head_names = model.head_expression(adata)
    col = {n: i for i, n in enumerate(names)}
    has_vec = np.abs(E).sum(axis=1) > 0
    used = np.zeros(E.shape[0], dtype=bool)
    used[_used_columns(head, E, head_names)[0]] = True
    if genes is None:
        cand = np.flatnonzero(used)
    else:
        missing = [g for g in genes if g not in col]
        if missing:
            raise InputError(f"{len(missing)} candidate genes are not in the data: {missing[:5]}. Use names from "
                             "adata.var_names (or genes=None for all).")
        cand = np.array([col[g] for g in genes], dtype=np.int64)
    rng = np.random.default_rng(seed)

    def pick(name: str) -> np.ndarray:
        idx = np.flatnonzero(groups == name)
        if max_cells is not None and idx.size > max_cells:
            idx = np.sort(rng.choice(idx, max_cells, replace=False))
        return idx

    src, tgt = pick(source), pick(target)
    ctx = _Context(head, X, head_names, E, src, tgt, classes.index(target) if use_clf else None)
    Xs = sp.csc_matrix(ctx.Xs) if sp.issparse(ctx.Xs) else np.asarray(ctx.Xs)
    n_expr = np.asarray((Xs > 0).sum(axis=0)).ravel().astype(np.int64)
    level = np.asarray(Xs.mean(axis=0), dtype=np.float64).ravel()
    # the null: random genes the model uses, expressed in the source cells, matched on expression
    universe = np.flatnonzero(used & (n_expr > 0))
    if universe.size < 2:
        raise InputError("Fewer than 2 of the genes the model uses are expressed in the source cells; nothing to "
                         "compare with.")
    n_bins = int(min(null_bins, max(1, universe.size // 2)))
    bins = _expression_bins(level, universe, n_bins)
    failed = None
    if fast:
        try:
            eff, summary = _fast_effects(ctx, factor)  # every gene's effect, at once
        except _FastPathMismatch as exc:
            if method == "fast":
                raise ScelmoError(f"method='fast' cannot be used with this head: {exc}. Use method='brute'.") from None
            fast = False
            failed = str(exc)
    # the null: every gene of each bin when every effect is known (fast), else n_null per bin
    per_bin = int(n_null) if n_null is not None else (None if fast else BRUTE_NULL_PER_BIN)
    null_idx = np.concatenate([
        m if per_bin is None or m.size <= per_bin else np.sort(rng.choice(m, per_bin, replace=False))
        for m in (np.flatnonzero(bins == b) for b in range(n_bins)) if m.size
    ])
    if not fast:
        need = np.unique(np.concatenate([cand[used[cand] & (n_expr[cand] > 0)], null_idx]))  # one pass each
        if failed is not None:
            warnings.warn(f"in_silico_deletion: {failed}; using the slower method='brute', which re-embeds and "
                          f"re-classifies the {src.size} source cells once per gene ({need.size} passes; fewer "
                          "with `genes=` or `max_cells=`).", stacklevel=2)
        eff, summary = _brute_effects(ctx, factor, need, progress=progress)  # genes not computed have no effect (0)
    col_name = SCORES[score]
    effect = eff[col_name]
    null_eff = effect[null_idx]
    null_bin = bins[null_idx]
    def null_stats(v: np.ndarray) -> tuple[float, float, float, float]:
        """Mean, SD, median and robust SD (1.4826 MAD; the SD if the MAD is 0)."""
        if v.size < 2:
            return (np.nan,) * 4
        med = float(np.median(v))
        sd = float(v.std(ddof=1))
        mad = 1.4826 * float(np.median(np.abs(v - med)))
        return float(v.mean()), sd, med, mad if mad > 0 else sd

    bin_stats = np.array([null_stats(null_eff[null_bin == b]) for b in range(n_bins)]).reshape(n_bins, 4)
    cb = bins[cand]
    tested = cb >= 0
    per_gene = np.full((cand.size, 4), np.nan)
    per_gene[tested] = bin_stats[cb[tested]]
    p_null = np.full(cand.size, np.nan)
    null_pos = {int(g): j for j, g in enumerate(null_idx)}
    for i in np.flatnonzero(tested):
        in_bin = null_bin == cb[i]
        j = null_pos.get(int(cand[i]))
        if j is not None:  # a gene is never its own null: leave it out of its bin's sample
            in_bin = in_bin.copy()
            in_bin[j] = False
            per_gene[i] = null_stats(null_eff[in_bin])
        nb = null_eff[in_bin]
        p_null[i] = (1.0 + (nb >= effect[cand[i]]).sum()) / (nb.size + 1.0)
    null_mean, null_sd, null_median, null_rsd = per_gene.T
    diff = effect[cand]
    z = np.divide(diff - null_mean, null_sd, out=np.full(cand.size, np.nan), where=tested & (null_sd > 0))
    z_robust = np.divide(diff - null_median, null_rsd, out=np.full(cand.size, np.nan), where=tested & (null_rsd > 0))
    df = pd.DataFrame({k: eff[k][cand] for k in ("logit_shift", "target_probability_shift", "fraction_flipped",
                                                  "paired_t", "cosine", "delta_cosine")},
                      index=pd.Index([names[i] for i in cand], name="gene"))
    if not use_clf:
        for k in ("logit_shift", "target_probability_shift", "fraction_flipped", "paired_t"):
            df[k] = np.nan
    df["n_cells_expressing"] = n_expr[cand]
    df["mean_expression"] = level[cand]
    df["has_vector"] = has_vec[cand]
    df["used_by_model"] = used[cand]
    df["expression_bin"] = cb
    df["null_mean"], df["null_sd"], df["z"] = null_mean, null_sd, z
    df["null_median"], df["null_robust_sd"], df["z_robust"], df["p_null"] = null_median, null_rsd, z_robust, p_null
    # Benjamini-Hochberg over the genes tested against the null, when the null is not those genes
    # themselves: tested genome-wide, each gene's p_null is only its rank among the bin's other
    # genes (uniform by construction; a trial found every fdr 1.0), so no fdr is given then
    fdr = np.full(cand.size, np.nan)
    in_null = np.array([int(g) in null_pos for g in cand], dtype=bool)
    if tested.any() and (in_null[tested].sum() <= 0.5 * null_idx.size):
        from scipy.stats import false_discovery_control

        fdr[tested] = false_discovery_control(p_null[tested], method="bh")
    df["fdr"] = fdr
    df["rank"] = df[col_name].rank(ascending=False, method="min").astype(int)
    df["rank_cosine"] = df["delta_cosine"].rank(ascending=False, method="min").astype(int)
    df["rank_classifier"] = (df["target_probability_shift"].rank(ascending=False, method="min").fillna(0).astype(int)
                             if use_clf else 0)
    df = df.sort_values(col_name, ascending=False, kind="stable")
    df.attrs.update({"source": source, "target": target, "groupby": groupby, "factor": factor, "score": score})
    summary = {"baseline_target_probability": float("nan"), "baseline_target_logodds": float("nan"), **summary}
    adata.uns[key_added] = {
        "genes": np.asarray(df.index, dtype=str),
        **{c: df[c].to_numpy() for c in df.columns},
        "source": source, "target": target, "groupby": groupby, "factor": factor, "score": score,
        "method": "fast" if fast else "brute", **summary,
        "null": {"genes": np.asarray([names[i] for i in null_idx], dtype=str), "effect": null_eff,
                 "bin": null_bin},
    }
    provenance.record(adata, "in_silico_deletion", {
        "source": source, "target": target, "groupby": groupby, "factor": factor, "score": score,
        "method": "fast" if fast else "brute", "n_genes": int(cand.size), "n_source_cells": int(src.size),
        "n_target_cells": int(tgt.size), "n_null_genes": int(null_idx.size), "null_bins": n_bins, "seed": seed,
        "genes_without_vector": int((~has_vec[cand]).sum()), "genes_not_used_by_model": int((~used[cand]).sum()), "head": getattr(model, "head_name", ""),
        "key_added": key_added, **summary,
    })
    return adata if copy else df
