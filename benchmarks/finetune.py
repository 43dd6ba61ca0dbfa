"""Fine-tuning benchmark: scelmo.Model annotation and integration heads against baselines.

Annotation (accuracy, macro-F1 on held-out cells):
  * pbmc68k_reduced, stratified 70/30 split (seed 0);
  * Kang 2018, train on control, test on stimulated (scored on the scgen_valid cells);
  methods: fine-tuned annotation head (kNN and classifier prediction), zero-shot kNN on
  ``X_scelmo`` (``scelmo.tl.annotate``, k=10), CellTypist trained on the same cells.

Integration (batch mixing and label conservation on all cells):
  * pbmc68k semi-synthetic batches (``scelmo.datasets.simulate_batches``, seed 0);
  * Kang 2018 with batch = condition (scores on the scgen_valid cells);
  methods: zero-shot scelmo ``wa``, Harmony on PCA 50, the integration head with and
  without labels and with adversarial weights 0 / 0.3 / 1 (the evidence for the default).

Training time per epoch (CPU, 1 torch thread) is reported from each model's history.
Run with the benchmark venv (celltypist, harmonypy, torch)::

    .venv-bench/bin/python benchmarks/finetune.py [--quick] [--kang-dir DIR]

Writes ``benchmarks/results/finetune/{results.csv,results.md,run.json,*.png}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "plugins"))  # the torch plugin, for venvs installed before it existed

from zeroshot import SEED, _default_kang_dir, load_kang, load_pbmc68k, load_pbmc68k_sim, loadavg  # noqa: E402

OUT_DEFAULT = HERE / "results" / "finetune"


def ensure_torch_plugin() -> None:
    """Register scelmo_torch at run time if the venv's (older) install metadata lacks its entry point."""
    from scelmo import plugins

    if "annotation" not in plugins.heads:
        import scelmo_torch

        plugins.register_plugin(scelmo_torch, "torch")


def _labels(ds: Any) -> np.ndarray:
    return ds.adata.obs[ds.label].astype(str).to_numpy()


def ann_scores(ds: Any, pred: np.ndarray) -> dict[str, float]:
    import scelmo.metrics as M

    y = _labels(ds)[ds.test]
    s = ds.score[ds.test]
    return {"accuracy": M.accuracy(y[s], pred[s]), "macro_f1": M.macro_f1(y[s], pred[s])}


def mixing_scores(ds: Any, emb: np.ndarray) -> dict[str, float]:
    import scanpy as sc

    import scelmo
    import scelmo.metrics as M

    s = ds.score
    b = ds.adata.obs[ds.batch].astype(str).to_numpy()
    y = _labels(ds)
    a = sc.AnnData(np.zeros((int(s.sum()), 1), np.float32))
    a.obsm["E"] = np.asarray(emb, dtype=np.float32)[s]
    scelmo.tl.cluster(a, use_rep="E")
    clusters = a.obs["scelmo_leiden"].astype(str).to_numpy()
    return {
        "ilisi": M.ilisi(emb[s], b[s]),
        "same_batch_frac": M.same_batch_fraction(emb[s], b[s]),
        "asw_batch": M.silhouette_batch(emb[s], b[s], y[s]),
        "ari": M.ari(y[s], clusters),
        "nmi": M.nmi(y[s], clusters),
        "asw_label": M.silhouette(emb[s], y[s]),
        "label_purity": M.knn_purity(emb[s], y[s]),
    }


def setup_genes(ds: Any) -> None:
    import scelmo

    a = ds.adata
    a.X = a.layers["lognorm"]
    scelmo.tl.embed_genes(a)
    scelmo.tl.embed_cells(a, layer="lognorm")


def bench_annotation(ds: Any, rows: list[dict[str, Any]], seeds: list[int]) -> None:
    import scelmo

    a = ds.adata
    tr, te = a[ds.train].copy(), a[ds.test].copy()
    base = {"dataset": ds.name, "task": "annotation", "n_train": int(tr.n_obs), "n_test": int(te.n_obs)}
    # zero-shot kNN on X_scelmo
    t0 = time.perf_counter()
    q = te.copy()
    scelmo.tl.annotate(q, reference=tr, ref_labels=ds.label, use_rep="X_scelmo")
    rows.append({**base, "method": "zero-shot kNN (X_scelmo)", "seconds": time.perf_counter() - t0,
                 **ann_scores(ds, q.obs["scelmo_label"].astype(str).to_numpy())})
    # fine-tuned head
    for seed in seeds:
        scelmo.Model.setup_anndata(tr, labels_key=ds.label, layer="lognorm")
        t0 = time.perf_counter()
        model = scelmo.Model(tr, head="annotation").train(seed=seed, device="cpu")
        secs = time.perf_counter() - t0
        info = {"seconds": secs, "epochs": len(model.history), "s_per_epoch": model.head.epoch_seconds(), "seed": seed}
        for method in ("knn", "classifier"):
            t1 = time.perf_counter()
            pred = model.predict(te, method=method)
            rows.append({**base, "method": f"fine-tuned head ({method})", **info,
                         "predict_seconds": time.perf_counter() - t1, **ann_scores(ds, pred)})
    # CellTypist trained on the same cells
    try:
        import celltypist

        t0 = time.perf_counter()
        y = _labels(ds)
        m = celltypist.train(tr.layers["lognorm"], labels=y[ds.train], genes=tr.var_names, use_SGD=True,
                             mini_batch=tr.n_obs > 1000, feature_selection=False, n_jobs=1, check_expression=False,
                             with_mean=True)
        t2 = te.copy()
        t2.X = t2.layers["lognorm"]
        pred = celltypist.annotate(t2, model=m, majority_voting=False).predicted_labels["predicted_labels"]
        rows.append({**base, "method": "CellTypist (SGD, same cells)", "seconds": time.perf_counter() - t0,
                     **ann_scores(ds, pred.astype(str).to_numpy())})
    except ImportError as exc:
        rows.append({**base, "method": "CellTypist (SGD, same cells)", "note": f"unavailable: {exc}"})


def _pca(ds: Any) -> np.ndarray:
    import scanpy as sc

    h = ds.adata.copy()
    h.X = h.layers["lognorm"]
    if h.n_vars > 2000:
        sc.pp.highly_variable_genes(h, n_top_genes=2000, flavor="seurat")
        h = h[:, h.var["highly_variable"]].copy()
    sc.pp.scale(h, max_value=10)
    sc.pp.pca(h, n_comps=50, random_state=SEED, svd_solver="arpack")
    return h.obsm["X_pca"]


def bench_integration(ds: Any, rows: list[dict[str, Any]], variants: list[tuple[str, dict[str, Any], bool]],
                      seeds: list[int]) -> None:
    import scelmo

    a = ds.adata
    base = {"dataset": ds.name, "task": "integration", "n_cells": int(a.n_obs)}
    rows.append({**base, "method": "zero-shot scelmo (wa)", **mixing_scores(ds, a.obsm["X_scelmo"])})
    try:
        import harmonypy

        t0 = time.perf_counter()
        pca = _pca(ds)
        ho = harmonypy.run_harmony(np.asarray(pca, dtype=np.float64), a.obs[[ds.batch]], [ds.batch],
                                   random_state=SEED, verbose=False)
        z = np.asarray(ho.Z_corr)
        z = z if z.shape[0] == a.n_obs else z.T
        rows.append({**base, "method": "Harmony (PCA 50)", "seconds": time.perf_counter() - t0, **mixing_scores(ds, z)})
    except ImportError as exc:
        rows.append({**base, "method": "Harmony (PCA 50)", "note": f"unavailable: {exc}"})
    for name, opts, with_labels in variants:
        for seed in seeds:
            scelmo.Model.setup_anndata(a, batch_key=ds.batch, labels_key=ds.label if with_labels else None, layer="lognorm")
            t0 = time.perf_counter()
            model = scelmo.Model(a, head="integration", **opts).train(seed=seed, device="cpu")
            secs = time.perf_counter() - t0
            z = model.get_latent_representation()
            rows.append({**base, "method": name, "seed": seed, "seconds": secs, "epochs": len(model.history),
                         "s_per_epoch": model.head.epoch_seconds(), **mixing_scores(ds, z)})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def md_table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per dataset/task/method (first-seen order)."""
    num = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c != "seed"]
    g = df.groupby(["dataset", "task", "method"], sort=False)
    out = g[num].mean().reset_index()
    out["n_seeds"] = g.size().to_numpy()
    return out


def write(rows: list[dict[str, Any]], log: dict[str, Any], out: Path) -> None:
    import scelmo

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    summ = summarise(df)
    lines = ["# Fine-tuning benchmark: results", "",
             f"Generated by `benchmarks/finetune.py` on {log['date']} ({log['machine']}); total {log['total_s']:.0f} s wall; "
             f"/proc/loadavg at start {log['loadavg_start']}, end {log['loadavg_end']}. CPU only, 1 torch thread. "
             f"Seeds: {log['seeds']} (means shown; every run in results.csv).", "",
             "See docs/finetuning.md for the protocol and the reading of these numbers.", ""]
    ann = summ[summ["task"] == "annotation"]
    for dsn, d in ann.groupby("dataset", sort=False):
        lines += [f"## Annotation: {dsn}", "", md_table(d, ["method", "accuracy", "macro_f1", "seconds", "epochs", "s_per_epoch", "n_seeds"]), ""]
        ft = d[d["method"] == "fine-tuned head (knn)"]
        for ref in ("zero-shot kNN (X_scelmo)", "CellTypist (SGD, same cells)"):
            r = d[d["method"] == ref]
            if len(ft) and len(r) and "accuracy" in r and not r["accuracy"].isna().all():
                lines.append(f"- fine-tuned (kNN) / {ref}: accuracy x{ft['accuracy'].iloc[0] / r['accuracy'].iloc[0]:.2f}, "
                             f"macro-F1 x{ft['macro_f1'].iloc[0] / r['macro_f1'].iloc[0]:.2f}")
        lines.append("")
    integ = summ[summ["task"] == "integration"]
    for dsn, d in integ.groupby("dataset", sort=False):
        lines += [f"## Integration: {dsn}", "",
                  "Batch mixing: iLISI (higher = better), same-batch fraction of 30 neighbours (lower = better), "
                  "ASW batch (higher = better). Labels: Leiden ARI/NMI, ASW label, 30-NN label purity.", "",
                  md_table(d, ["method", "ilisi", "same_batch_frac", "asw_batch", "ari", "nmi", "asw_label", "label_purity",
                               "seconds", "s_per_epoch", "n_seeds"]), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "run.json").write_text(json.dumps(log, indent=2), encoding="utf-8")
    for (dsn, task), d in summ.groupby(["dataset", "task"], sort=False):
        mets = ["accuracy", "macro_f1"] if task == "annotation" else ["ilisi", "asw_batch", "ari", "nmi", "asw_label", "label_purity"]
        d = d.dropna(subset=[m for m in mets if m in d], how="all")
        if len(d):
            plot = d[["method", *[m for m in mets if m in d]]].fillna(0.0)
            if "ilisi" in plot:  # iLISI runs 1..n_batches; scale to [0, 1] beside the other scores
                nb = 3 if "sim" in dsn else 2
                plot["ilisi"] = (plot["ilisi"] - 1) / (nb - 1)
                plot = plot.rename(columns={"ilisi": "ilisi (scaled 0-1)"})
            scelmo.pl.metrics_bar(plot, title=f"{dsn}: {task}", save=out / f"{task}_{dsn}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, Kang subsampled to 3,000 cells")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--kang-dir", default=str(_default_kang_dir()))
    ap.add_argument("--datasets", default="pbmc68k,pbmc68k_sim,kang")
    ap.add_argument("--seeds", default="0,1,2", help="seeds for the small datasets (Kang: the first only)")
    ap.add_argument("--replot", nargs="*", type=Path, metavar="CSV",
                    help="only rewrite results.md and plots in --out from these results.csv files (combined)")
    args = ap.parse_args(argv)
    if args.replot is not None:
        csvs = args.replot or [args.out / "results.csv"]
        frames = [pd.read_csv(c) for c in csvs]
        logs = [json.loads((c.parent / "run.json").read_text()) for c in csvs if (c.parent / "run.json").is_file()]
        log = {**logs[0], "loadavg_end": logs[-1]["loadavg_end"], "total_s": sum(g["total_s"] for g in logs),
               "runs": [{k: g[k] for k in ("date", "loadavg_start", "loadavg_end", "total_s", "seeds")} for g in logs]}
        write(pd.concat(frames, ignore_index=True).to_dict("records"), log, args.out)
        return 0
    warnings.simplefilter("ignore")
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    ensure_torch_plugin()
    t_start = time.perf_counter()
    log = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
           "loadavg_start": loadavg(), "seeds": seeds, "quick": args.quick}
    rows: list[dict[str, Any]] = []
    variants = [
        ("integration head, labels (default adv 0.3)", {}, True),
        ("integration head, labels, adv 0", {"adversarial_weight": 0.0}, True),
        ("integration head, labels, adv 1", {"adversarial_weight": 1.0}, True),
        ("integration head, no labels (adv 0.3)", {}, False),
        ("integration head, no labels, adv 0", {"adversarial_weight": 0.0}, False),
    ]
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        if name == "pbmc68k":
            ds = load_pbmc68k()
            setup_genes(ds)
            bench_annotation(ds, rows, seeds)
        elif name == "pbmc68k_sim":
            ds = load_pbmc68k_sim()
            setup_genes(ds)
            bench_integration(ds, rows, variants, seeds)
        elif name == "kang":
            ds = load_kang(args.kang_dir, 3000 if args.quick else None)
            setup_genes(ds)
            bench_annotation(ds, rows, seeds[:1])
            bench_integration(ds, rows, variants, seeds[:1])
        else:
            raise SystemExit(f"unknown dataset {name!r}")
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
        write(rows, {**log, "loadavg_end": loadavg(), "total_s": time.perf_counter() - t_start}, args.out)
    log.update({"loadavg_end": loadavg(), "total_s": time.perf_counter() - t_start})
    write(rows, log, args.out)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
