"""In-silico treatment: which gene, deleted, moves diseased cells toward healthy ones?

The paper's analysis (scELMo ``in-silico treatment.ipynb``): train the fine-tuning
network as a classifier of disease state, then for each candidate gene set its
expression to zero in the diseased cells, re-embed them and measure how much closer
their mean embedding comes to the healthy cells' mean embedding (cosine), and how
the classifier's output moves. Exposed as :func:`scelmo.tl.in_silico_deletion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import keys, provenance
from .errors import InputError, ScelmoError


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _zero_column(X: Any, col: int) -> Any:
    """A copy of ``X`` with column ``col`` set to zero (sparse stays sparse)."""
    if sp.issparse(X):
        out = X.copy()
        out.data[out.indices == col] = 0.0
        out.eliminate_zeros()
        return out
    out = np.array(X, copy=True)
    out[:, col] = 0.0
    return out


def in_silico_deletion(
    model: Any,
    adata: Any,
    *,
    genes: Sequence[str],
    source: str,
    target: str,
    groupby: str | None = None,
    max_cells: int | None = 2000,
    seed: int = 0,
    key_added: str = keys.IN_SILICO,
    copy: bool = False,
) -> Any:
    """Rank genes by how far deleting each one moves ``source`` cells toward ``target`` cells.

    Parameters
    ----------
    model
        A trained :class:`scelmo.Model` (typically the ``"annotation"`` head trained on the
        condition, e.g. ``labels_key="disease"``, so that its embedding and classifier
        separate the states).
    adata
        Cells of both groups (may be the training data or new data).
    genes
        Candidate genes (names as in the model's expression matrix), e.g. the top
        markers of ``source`` from ``scanpy.tl.rank_genes_groups``.
    source, target
        Group names in ``adata.obs[groupby]``: the cells to treat (diseased / stimulated)
        and the state to move toward (healthy / control).
    groupby
        ``obs`` column with the groups (default: the model's ``labels_key``).
    max_cells
        Use at most this many cells per group (random, seeded); ``None`` = all.
    copy
        Leave ``adata`` untouched and return a modified copy of it, whose
        ``uns[key_added]`` holds the table (scanpy's convention), instead of the DataFrame.

    Returns
    -------
    A DataFrame, one row per gene, sorted by ``delta_cosine`` (largest first):
    ``cosine`` = cos(mean embedding of treated source cells, mean embedding of target
    cells), ``delta_cosine`` = ``cosine`` minus the untreated value (> 0: the cells move
    toward the target state), ``target_probability_shift`` = change of the classifier's
    mean probability of ``target`` over the source cells (NaN if the head has no
    classifier or does not know ``target``), ``n_cells_expressing`` (source cells with the
    gene above zero), ``rank_cosine`` and ``rank_classifier``. The same table is stored
    in ``adata.uns[key_added]`` (``{"genes": ..., "delta_cosine": ..., ...}`` plus the
    ``source``, ``target``, ``groupby`` and ``baseline_cosine``), with provenance in
    ``adata.uns["scelmo"]["in_silico_deletion"]``.
    """
    import pandas as pd

    if not getattr(model, "is_trained", False):
        raise ScelmoError("The model is not trained; call `model.train()` first.")
    groupby = groupby or model.setup.labels_key
    if groupby is None or groupby not in adata.obs:
        raise InputError(f"groupby={groupby!r} is not a column of adata.obs; pass `groupby=` naming the condition column.")
    groups = adata.obs[groupby].astype(str).to_numpy()
    for name, what in ((source, "source"), (target, "target")):
        if name not in set(groups):
            raise InputError(f"{what}={name!r} is not a value of adata.obs[{groupby!r}] (values: {sorted(set(groups))[:10]}).")
    if source == target:
        raise InputError("source and target must differ.")
    if isinstance(genes, str):
        genes = [genes]
    if copy:
        from .tl import _copy_of

        adata = _copy_of(adata)
    genes = list(dict.fromkeys(str(g) for g in genes))
    if not genes:
        raise InputError("Give at least one candidate gene.")
    X, names, E = model.get_expression(adata)
    col = {n: i for i, n in enumerate(names)}
    missing = [g for g in genes if g not in col]
    if missing:
        raise InputError(f"{len(missing)} candidate genes are not in the data: {missing[:5]}. Use names from adata.var_names.")
    no_vec = [g for g in genes if not np.abs(E[col[g]]).sum() > 0]
    rng = np.random.default_rng(seed)

    def pick(name: str) -> np.ndarray:
        idx = np.flatnonzero(groups == name)
        if max_cells is not None and idx.size > max_cells:
            idx = np.sort(rng.choice(idx, max_cells, replace=False))
        return idx

    src, tgt = pick(source), pick(target)
    head = model.head
    Xs = X[src]
    z_t = np.asarray(head.transform(X[tgt], gene_vectors=E)).mean(0)
    z_s = np.asarray(head.transform(Xs, gene_vectors=E))
    baseline = _cos(z_s.mean(0), z_t)
    classes = list(getattr(head, "classes", []) or [])
    use_clf = hasattr(head, "predict_proba") and target in classes
    t_idx = classes.index(target) if use_clf else -1
    p0 = float(head.predict_proba(Xs, gene_vectors=E)[:, t_idx].mean()) if use_clf else float("nan")
    rows = []
    for g in genes:
        c = col[g]
        expressing = int((Xs[:, c] > 0).sum()) if sp.issparse(Xs) else int((Xs[:, c] > 0).sum())
        Xd = _zero_column(Xs, c)
        cos = _cos(np.asarray(head.transform(Xd, gene_vectors=E)).mean(0), z_t)
        shift = float(head.predict_proba(Xd, gene_vectors=E)[:, t_idx].mean()) - p0 if use_clf else float("nan")
        rows.append({"gene": g, "cosine": cos, "delta_cosine": cos - baseline, "target_probability_shift": shift,
                     "n_cells_expressing": expressing})
    df = pd.DataFrame(rows).set_index("gene")
    df["rank_cosine"] = df["delta_cosine"].rank(ascending=False, method="min").astype(int)
    df["rank_classifier"] = (df["target_probability_shift"].rank(ascending=False, method="min").fillna(0).astype(int)
                             if use_clf else 0)
    df = df.sort_values("delta_cosine", ascending=False)
    adata.uns[key_added] = {
        "genes": np.asarray(df.index, dtype=str),
        **{c: df[c].to_numpy() for c in df.columns},
        "source": source, "target": target, "groupby": groupby, "baseline_cosine": baseline,
        "baseline_target_probability": p0,
    }
    provenance.record(adata, "in_silico_deletion", {
        "source": source, "target": target, "groupby": groupby, "n_genes": len(genes), "n_source_cells": int(src.size),
        "n_target_cells": int(tgt.size), "baseline_cosine": baseline, "genes_without_vector": len(no_vec),
        "head": getattr(model, "head_name", ""), "key_added": key_added,
    })
    return adata if copy else df
