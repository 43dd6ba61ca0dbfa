"""Synthetic genetic perturbations on real counts, with known ground truth (for tests and benchmarks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from scelmo.datasets._real import _lognorm, pbmc68k_reduced
from scelmo.errors import InputError


def synthetic_genetic_perturbations(
    gene_embeddings: Any,
    *,
    adata: Any = None,
    n_single: int = 60,
    n_combo: int = 40,
    cells_per_perturbation: int = 50,
    n_programs: int = 6,
    genes_per_program: int = 40,
    effect_size: float = 1.0,
    knockdown: float = 1.0,
    own_cell_weight: float = 0.7,
    labels_key: str = "bulk_labels",
    control: str = "ctrl",
    seed: int = 0,
) -> Any:
    """Genetic perturbations with known ground truth, built on real counts.

    Each perturbed gene ``g`` acts through ``n_programs`` gene programs (random sparse sets
    of ``genes_per_program`` expressed genes with N(0, 1) loadings); its activity on program
    ``j`` is ``tanh(s_gj)``, where ``s_g`` are the standardised coordinates of ``g``'s gene
    embedding on the leading principal components of the candidate genes' embeddings. So
    genes with similar embeddings have similar effects, and a model that reads gene
    embeddings can predict perturbations it never saw, while a mean shift cannot. The
    target gene itself is knocked down by ``knockdown`` (natural-log rate). A combination's
    effect is the **sum** of its components' effects (no interaction).

    Cells: every base cell once as a control, then ``cells_per_perturbation`` base cells
    drawn with replacement per perturbation. A cell's rate is
    ``lib * (w * own profile + (1 - w) * its cell type's mean profile) * exp(effect)``
    (``w = own_cell_weight``; the type mean lets unexpressed genes respond), and counts are
    Poisson draws from it.

    Parameters
    ----------
    gene_embeddings
        :class:`~scelmo.genes.GeneEmbeddings` (or any object with ``genes``, ``__contains__``
        and ``aligned``) covering the candidate target genes.
    adata
        Base data with ``layers["counts"]`` and ``obs[labels_key]``; default
        :func:`scelmo.datasets.pbmc68k_reduced` (700 cells x 765 genes).
    n_single, n_combo
        Number of single-gene perturbations and of two-gene combinations (random pairs of
        the single targets, so every combination's components also occur alone).

    Returns
    -------
    AnnData with ``X`` = log1p(CP10k), ``layers["counts"]``, ``obs["perturbation"]``
    (``control`` or ``"G"`` or ``"G1+G2"``), ``obs["cell_type"]``,
    ``uns["synthetic_perturbation"]`` (parameters) and the true natural-log rate effects in
    ``varm["perturbation_effect"]`` (genes x perturbations, column order in
    ``uns["synthetic_perturbation"]["perturbations"]``).
    """
    if adata is None:
        adata = pbmc68k_reduced()
    if "counts" not in adata.layers:
        raise InputError("The base data needs integer counts in layers['counts'] (see scelmo.datasets.pbmc68k_reduced).")
    if labels_key not in adata.obs:
        raise InputError(f"obs[{labels_key!r}] not found; pass labels_key= naming the cell-type column.")
    for name, value in (("n_single", n_single), ("cells_per_perturbation", cells_per_perturbation),
                        ("n_programs", n_programs), ("genes_per_program", genes_per_program)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    if n_combo < 0:
        raise InputError(f"n_combo must be >= 0, got {n_combo}.")
    if not 0.0 <= own_cell_weight <= 1.0:
        raise InputError(f"own_cell_weight must lie in [0, 1], got {own_cell_weight}.")
    rng = np.random.default_rng(seed)
    genes = [str(g) for g in adata.var_names]
    counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float64)
    n_cells, n_genes = counts.shape
    candidates = [i for i, g in enumerate(genes) if g in gene_embeddings]
    if len(candidates) < max(n_single, n_programs + 2):
        raise InputError(
            f"Only {len(candidates)} of the {n_genes} genes have a gene embedding; need at least "
            f"{max(n_single, n_programs + 2)} candidate targets. Lower n_single or embed more genes."
        )
    if n_combo > n_single * (n_single - 1) // 2:
        raise InputError(f"n_combo={n_combo} exceeds the {n_single * (n_single - 1) // 2} possible pairs of {n_single} genes.")

    activity = _program_activity(gene_embeddings, [genes[i] for i in candidates], n_programs)
    k = activity.shape[1]
    lib = np.asarray(counts.sum(axis=1)).ravel()
    loadings = _program_loadings(counts, lib, k, genes_per_program, rng)
    effects = _effects(activity, loadings, candidates, genes, n_single=n_single, n_combo=n_combo,
                       effect_size=effect_size, knockdown=knockdown, rng=rng)
    names = list(effects)
    labels = np.asarray(adata.obs[labels_key]).astype(str)
    rows, obs_pert, obs_type = _sample_cells(counts, lib, labels, effects, control=control,
                                             cells_per_perturbation=cells_per_perturbation,
                                             own_cell_weight=own_cell_weight, rng=rng)
    import anndata as ad
    import pandas as pd

    new = sp.vstack(rows, format="csr")
    new.eliminate_zeros()
    obs = pd.DataFrame({"perturbation": pd.Categorical(obs_pert, categories=[control] + names),
                        "cell_type": pd.Categorical(obs_type)},
                       index=[f"cell{i}" for i in range(len(obs_pert))])
    out = ad.AnnData(_lognorm(new), obs=obs, var=pd.DataFrame(index=list(genes)), layers={"counts": new})
    out.varm["perturbation_effect"] = np.stack([effects[n] for n in names], axis=1).astype(np.float32)
    out.uns["synthetic_perturbation"] = {
        "perturbations": names, "control": control, "n_single": n_single, "n_combo": n_combo,
        "cells_per_perturbation": cells_per_perturbation, "n_programs": k,
        "genes_per_program": genes_per_program, "effect_size": effect_size, "knockdown": knockdown,
        "own_cell_weight": own_cell_weight, "seed": seed,
    }
    return out


def _program_activity(gene_embeddings: Any, candidates: list[str], n_programs: int) -> np.ndarray:
    """Ground truth: each candidate target's activity on each program (candidates x programs), read
    from its gene vector: the top principal directions of the unit-length vectors, squashed by tanh."""
    emb, _ = gene_embeddings.aligned(candidates)
    emb = emb.astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    u, s, _ = np.linalg.svd(emb - emb.mean(axis=0), full_matrices=False)
    k = min(n_programs, u.shape[1])
    scores = u[:, :k] * s[:k]
    scores /= np.maximum(scores.std(axis=0), 1e-12)
    return np.tanh(scores)


def _program_loadings(counts: sp.csr_matrix, lib: np.ndarray, k: int, genes_per_program: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Programs x genes log-fold loadings: each program moves ``genes_per_program`` random genes
    among the 70% most expressed, by Normal(0, 1) amounts."""
    n_genes = counts.shape[1]
    mean_log = np.asarray(counts.multiply(1.0 / np.maximum(lib, 1.0)[:, None]).mean(axis=0)).ravel()
    expressed = np.flatnonzero(mean_log > np.quantile(mean_log, 0.3))
    loadings = np.zeros((k, n_genes))
    for j in range(k):
        chosen = rng.choice(expressed, size=min(genes_per_program, expressed.size), replace=False)
        loadings[j, chosen] = rng.normal(0.0, 1.0, chosen.size)
    return loadings


def _effects(activity: np.ndarray, loadings: np.ndarray, candidates: list[int], genes: list[str], *,
             n_single: int, n_combo: int, effect_size: float, knockdown: float,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Log-fold effect on every gene of each single perturbation (its programs, plus the knock-down
    of the target itself) and of ``n_combo`` random pairs (the sum of their singles)."""
    picked = rng.choice(len(candidates), size=n_single, replace=False)
    single_effects: dict[str, np.ndarray] = {}
    for c in picked:
        eff = effect_size * activity[c] @ loadings
        eff[candidates[c]] -= knockdown
        single_effects[genes[candidates[c]]] = eff
    singles = list(single_effects)
    all_pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    pairs = [all_pairs[int(i)] for i in rng.choice(len(all_pairs), size=n_combo, replace=False)] if n_combo else []
    effects = dict(single_effects)
    for a, b in pairs:
        effects[f"{a}+{b}"] = single_effects[a] + single_effects[b]
    return effects


def _sample_cells(counts: sp.csr_matrix, lib: np.ndarray, labels: np.ndarray, effects: dict[str, np.ndarray], *,
                  control: str, cells_per_perturbation: int, own_cell_weight: float,
                  rng: np.random.Generator) -> tuple[list[sp.csr_matrix], list[str], list[str]]:
    """Counts of every control cell and ``cells_per_perturbation`` perturbed cells per perturbation:
    Poisson draws around each base cell's profile mixed with its cell type's mean profile."""
    n_cells = counts.shape[0]
    names = list(effects)
    frac = sp.diags(1.0 / np.maximum(lib, 1.0)) @ counts
    type_mean = {t: np.asarray(frac[labels == t].mean(axis=0)).ravel() for t in np.unique(labels)}
    base_idx = [np.arange(n_cells)] + [rng.integers(0, n_cells, cells_per_perturbation) for _ in names]
    rows, obs_pert, obs_type = [], [], []
    for p, idx in zip([control, *names], base_idx, strict=True):
        prof = own_cell_weight * frac[idx].toarray() + (1 - own_cell_weight) * np.stack([type_mean[t] for t in labels[idx]])
        rate = prof * lib[idx, None]
        if p != control:
            rate = rate * np.exp(effects[p])[None, :]
        rows.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
        obs_pert += [p] * idx.size
        obs_type += list(labels[idx])
    return rows, obs_pert, obs_type
