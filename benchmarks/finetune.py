"""Fine-tuning benchmark: scelmo.Model annotation and integration heads against baselines.

Annotation (accuracy and macro-F1 on held-out cells; every split scored separately):
  * pbmc68k_reduced: 10 stratified and 10 unstratified random 70/30 splits (seeds 0-9);
  * Kang 2018: train on control, test on stimulated (scored on the scgen_valid cells),
    head seeds 0, 1, 2;
  methods on the same cells: the annotation head (kNN and classifier prediction), the
  zero-shot kNN (``scelmo.tl.annotate`` on ``X_scelmo``, k=10; the query embedded with
  the training cells' gene selection and centring, ``gene_stats=``) and CellTypist
  trained on the training cells. Per split: does the head reach the zero-shot kNN?
  Control: the same head on a shuffled gene table (gene names permuted over the vectors).

Integration (scib-metrics 0.5 ``Benchmarker``, its own metric implementations, scores
not min-max scaled; total = 0.6 bio + 0.4 batch):
  * pbmc68k semi-synthetic batches (``scelmo.datasets.simulate_batches``, seed 0);
  * Kang 2018 with batch = condition (scored on the scgen_valid cells, at most --scib-max-cells);
  methods: unintegrated PCA, zero-shot scelmo, Harmony on PCA 50, scVI (counts,
  2,000 variable genes), the integration head with labels (semi-supervised) and without
  (unsupervised), head seeds 0, 1, 2.

Speed: seconds per epoch (wall and process CPU time, 1 torch thread) of the annotation
head on a synthetic 100,000-cell sparse matrix with d=384 gene vectors, and from every
trained model's history. ``--speed-device cuda`` times it on a GPU instead (batches 128,
256 and 1024, each with the mini-batches gathered on the GPU and, as the baseline in
the same run, densified on the host and copied; epoch 1 is left out as warm-up).

Run with the benchmark venv (celltypist, harmonypy, scvi-tools, scib-metrics)::

    nice -n 10 .venv-bench/bin/python benchmarks/finetune.py --parts annotation,integration,speed

Pieces write their own ``--out`` folders; ``--merge DIR ...`` combines them. Writes
``benchmarks/results/finetune/{results.csv,results.md,run.json,*.png}``.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "plugins"))  # the torch plugin, for venvs installed before it existed

from _runinfo import portable_argv  # noqa: E402
from zeroshot import SEED, _default_kang_dir, load_kang, load_pbmc68k, load_pbmc68k_sim, loadavg  # noqa: E402

OUT_DEFAULT = HERE / "results" / "finetune"
HEAD_KNN, HEAD_CLF, HEAD_AUTO = "annotation head (kNN)", "annotation head (classifier)", "annotation head (auto)"
ZS_KNN, CELLTYPIST = "zero-shot kNN", "CellTypist"


def ensure_torch_plugin() -> None:
    """Register scelmo_torch at run time if the venv's (older) install metadata lacks its entry point."""
    from scelmo import plugin as plugins

    if "annotation" not in plugins.heads:
        import scelmo_torch

        plugins.register_plugin(scelmo_torch, "torch")


def _labels(ds: Any) -> np.ndarray:
    return ds.adata.obs[ds.label].astype(str).to_numpy()


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    import scelmo.metrics as M

    return {"accuracy": M.accuracy(y, pred), "macro_f1": M.macro_f1(y, pred)}


def embed_genes(ds: Any) -> None:
    import scelmo

    a = ds.adata
    a.X = a.layers["lognorm"]
    scelmo.tl.embed_genes(a)


# ----------------------------------------------------------------------------- annotation
def _celltypist(tr: Any, te: Any, label: str, seed: int) -> np.ndarray:
    """CellTypist trained on ``tr`` (SGD, seeded: unseeded runs differ by about 0.005 accuracy on
    pbmc68k; its default logistic regression fails with scikit-learn >= 1.8, ``multi_class``)."""
    import celltypist

    m = celltypist.train(tr.layers["lognorm"], labels=tr.obs[label].astype(str).to_numpy(), genes=tr.var_names,
                         use_SGD=True, mini_batch=tr.n_obs > 1000, feature_selection=False, n_jobs=1,
                         check_expression=False, with_mean=True, random_state=seed)
    t2 = te.copy()
    t2.X = t2.layers["lognorm"]
    return celltypist.annotate(t2, model=m, majority_voting=False).predicted_labels["predicted_labels"].astype(str).to_numpy()


def annotation_split(ds: Any, train: np.ndarray, test: np.ndarray, score: np.ndarray, seed: int, split: str,
                     rows: list[dict[str, Any]], *, celltypist: bool = True, control: bool = False,
                     head_options: dict[str, Any] | None = None, tag: str = "") -> None:
    """One split: zero-shot kNN, the head (kNN + classifier), CellTypist, all on the same cells."""
    import scelmo
    from scelmo.expression.selection import gene_stats

    a = ds.adata
    tr, te = a[train].copy(), a[test].copy()
    y = te.obs[ds.label].astype(str).to_numpy()[score]
    base = {"dataset": ds.name, "task": "annotation", "split": split, "seed": seed,
            "n_train": int(tr.n_obs), "n_test": int(score.sum())}
    stats = gene_stats(tr.layers["lognorm"], normalize=False)
    t0 = time.perf_counter()
    for obj in (tr, te):
        scelmo.tl.embed_cells(obj, layer="lognorm", gene_stats=stats)
    q = te.copy()
    scelmo.tl.annotate(q, reference=tr, ref_labels=ds.label, use_rep="X_scelmo")
    if not tag:
        rows.append({**base, "method": ZS_KNN, "seconds": time.perf_counter() - t0,
                     **_scores(y, q.obs["scelmo_label"].astype(str).to_numpy()[score])})
    scelmo.Model.setup_anndata(tr, labels_key=ds.label, layer="lognorm")
    t0 = time.perf_counter()
    model = scelmo.Model(tr, head="annotation", **(head_options or {})).train(seed=seed, device="cpu")
    secs = time.perf_counter() - t0
    h = model.head
    info = {"seconds": secs, "epochs": len([r for r in h.history if r["epoch"] >= 1]), "best_epoch": h.best_epoch,
            "s_per_epoch": h.epoch_seconds(), "cpu_s_per_epoch": _cpu_epoch(h)}
    preds = {m: model.predict(te, method=m) for m in ("knn", "classifier")}
    preds["auto"] = preds[h.best_method]
    for method, name in (("knn", HEAD_KNN), ("classifier", HEAD_CLF), ("auto", HEAD_AUTO)):
        rows.append({**base, "method": name + tag, **info, "auto_choice": h.best_method, **_scores(y, preds[method][score])})
    if control:  # shuffled gene table: the vectors no longer belong to their genes
        c = tr.copy()
        vec = np.asarray(c.varm["scelmo"])
        has = np.flatnonzero(np.abs(vec).sum(1) > 0)
        vec[has] = vec[np.random.default_rng(seed).permutation(has)]
        c.varm["scelmo"] = vec
        qc = te.copy()
        qc.varm["scelmo"] = vec
        scelmo.Model.setup_anndata(c, labels_key=ds.label, layer="lognorm")
        mc = scelmo.Model(c, head="annotation").train(seed=seed, device="cpu")
        rows.append({**base, "method": HEAD_KNN + ", shuffled gene table (control)",
                     **_scores(y, mc.predict(qc, method="knn")[score])})
    if celltypist and not tag:
        try:
            t0 = time.perf_counter()
            pred = _celltypist(tr, te, ds.label, seed)
            rows.append({**base, "method": CELLTYPIST, "seconds": time.perf_counter() - t0, **_scores(y, pred[score])})
        except ImportError as exc:
            rows.append({**base, "method": CELLTYPIST, "note": f"unavailable: {exc}"})


def _wanted(name: str, filters: str) -> bool:
    """Does an ablation's name contain one of the comma-separated ``filters``?"""
    return any(f.strip() and f.strip() in name for f in filters.split(","))


def _cpu_epoch(head: Any) -> float:
    vals = [r["cpu_seconds"] for r in head.history if r.get("epoch", 0) >= 1 and "cpu_seconds" in r and "val_score" not in r]
    return float(np.median(vals)) if vals else float("nan")


def bench_annotation(name: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from sklearn.model_selection import train_test_split

    variants = [("", {})] + ([(", no class weights", {"class_weight": "none"}),
                              (", paper adapter (residual=False)", {"residual": False, "genes": "all", "center": False}),
                              (", tune_genes=False", {"tune_genes": False})]
                             if args.ablations else [])
    if args.ablation_filter:
        variants = variants[:1] + [v for v in variants[1:] if _wanted(v[0], args.ablation_filter)]
    if name == "pbmc68k":
        ds = load_pbmc68k()
        embed_genes(ds)
        y = _labels(ds)
        idx = np.arange(ds.adata.n_obs)
        for kind in ("stratified", "unstratified"):
            for seed in range(args.n_splits):
                tr, _ = train_test_split(idx, test_size=0.3, random_state=seed, stratify=y if kind == "stratified" else None)
                train = np.zeros(len(idx), bool)
                train[tr] = True
                test = ~train
                for tag, opts in variants:
                    annotation_split(ds, train, test, np.ones(int(test.sum()), bool), seed, f"{kind} {seed}", rows,
                                     control=(seed == 0 and not tag), head_options=opts, tag=tag)
                print(f"  pbmc68k {kind} split {seed} done", flush=True)
    elif name == "kang":
        ds = load_kang(args.kang_dir, args.kang_cells)
        embed_genes(ds)
        for seed in range(args.kang_seeds):
            for tag, opts in variants:
                annotation_split(ds, ds.train, ds.test, ds.score[ds.test], seed, f"control->stimulated, seed {seed}", rows,
                                 celltypist=seed == 0, control=(seed == 0 and not tag), head_options=opts, tag=tag)
            print(f"  kang seed {seed} done", flush=True)
    else:
        raise SystemExit(f"unknown annotation dataset {name!r}")


# ----------------------------------------------------------------------------- integration
def _pca(a: Any) -> np.ndarray:
    import scanpy as sc

    h = a.copy()
    h.X = h.layers["lognorm"]
    if h.n_vars > 2000:
        sc.pp.highly_variable_genes(h, n_top_genes=2000, flavor="seurat")
        h = h[:, h.var["highly_variable"]].copy()
    sc.pp.scale(h, max_value=10)
    sc.pp.pca(h, n_comps=50, random_state=SEED, svd_solver="arpack")
    return np.asarray(h.obsm["X_pca"], dtype=np.float32)


def _scvi(a: Any, batch: str, seed: int, max_epochs: int) -> np.ndarray:
    import scanpy as sc
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    h = a.copy()
    h.X = h.layers["counts"].copy()
    if h.n_vars > 2000:
        sc.pp.highly_variable_genes(h, n_top_genes=2000, flavor="seurat_v3", layer="counts", batch_key=batch)
        h = h[:, h.var["highly_variable"]].copy()
    scvi.model.SCVI.setup_anndata(h, batch_key=batch)
    m = scvi.model.SCVI(h, n_latent=30, n_layers=2, gene_likelihood="nb")
    m.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=False, early_stopping=True)
    return np.asarray(m.get_latent_representation(), dtype=np.float32)


def scib_scores(a: Any, batch: str, label: str, keys: list[str]) -> pd.DataFrame:
    """scib-metrics Benchmarker (default metrics, unscaled), one row per obsm key."""
    from scib_metrics.benchmark import Benchmarker

    bm = Benchmarker(a, batch_key=batch, label_key=label, embedding_obsm_keys=keys,
                     pre_integrated_embedding_obsm_key="X_pca", n_jobs=1, progress_bar=False)
    bm.benchmark()
    res = bm.get_results(min_max_scale=False, clean_names=False)
    res = res[res.index != "Metric Type"].apply(pd.to_numeric, errors="coerce")
    return res


def bench_integration(name: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import scelmo

    ds = load_pbmc68k_sim() if name == "pbmc68k_sim" else load_kang(args.kang_dir, args.kang_cells)
    embed_genes(ds)
    a = ds.adata
    scelmo.tl.embed_cells(a, layer="lognorm")
    a.obs[ds.batch] = a.obs[ds.batch].astype(str).astype("category")
    a.obs[ds.label] = a.obs[ds.label].astype(str).astype("category")
    methods: dict[str, tuple[str, float, dict[str, Any]]] = {}
    a.obsm["X_pca"] = _pca(a)
    methods["X_pca"] = ("unintegrated PCA 50", float("nan"), {})
    methods["X_scelmo"] = ("zero-shot scelmo", float("nan"), {})
    try:
        import harmonypy

        t0 = time.perf_counter()
        ho = harmonypy.run_harmony(np.asarray(a.obsm["X_pca"], np.float64), a.obs[[ds.batch]], [ds.batch],
                                   random_state=SEED, verbose=False)
        z = np.asarray(ho.Z_corr)
        a.obsm["X_harmony"] = (z if z.shape[0] == a.n_obs else z.T).astype(np.float32)
        methods["X_harmony"] = ("Harmony (PCA 50)", time.perf_counter() - t0, {})
    except ImportError as exc:
        print(f"Harmony unavailable: {exc}")
    if args.scvi_epochs > 0:
        try:
            t0 = time.perf_counter()
            a.obsm["X_scvi"] = _scvi(a, ds.batch, SEED, args.scvi_epochs)
            methods["X_scvi"] = ("scVI", time.perf_counter() - t0, {"epochs": args.scvi_epochs})
        except ImportError as exc:
            print(f"scVI unavailable: {exc}")
    variants: list[tuple[str, dict[str, Any], dict[str, Any], bool, int]] = [
        ("integration head, labels (semi-supervised)", {}, {}, True, args.int_seeds),
        ("integration head, no labels (unsupervised)", {}, {}, False, args.int_seeds)]
    if args.ablations:  # seed 0 only
        variants += [("integration head, labels, lr 1e-3", {}, {"lr": 1e-3}, True, 1),
                     ("integration head, no labels, lr 1e-3", {}, {"lr": 1e-3}, False, 1),
                     ("integration head, labels, tune_genes=False", {"tune_genes": False}, {}, True, 1),
                     ("integration head, no labels, tune_genes=True", {"tune_genes": True}, {}, False, 1),
                     ("integration head, no labels, merge_pseudo_labels=False", {"merge_pseudo_labels": False}, {},
                      False, 1),
                     ("integration head, labels, adversarial 0.3", {"adversarial_weight": 0.3}, {}, True, 1),
                     ("integration head, no labels, no MNN (adversarial 0.3)", {"mnn_weight": 0.0, "adversarial_weight": 0.3},
                      {}, False, 1),
                     ("integration head, labels, previous default (paper adapter, decoder, adversary)",
                      {"residual": False, "genes": "all", "center": False, "reconstruction_weight": 1.0,
                       "adversarial_weight": 0.3}, {}, True, 1)]
    if args.ablation_filter:
        variants = variants[:2] + [v for v in variants[2:] if _wanted(v[0], args.ablation_filter)]
    for vname, opts, train_kw, with_labels, n_seeds in variants:
        for seed in range(n_seeds):
            scelmo.Model.setup_anndata(a, batch_key=ds.batch, labels_key=ds.label if with_labels else None, layer="lognorm")
            t0 = time.perf_counter()
            model = scelmo.Model(a, head="integration", **opts).train(seed=seed, device="cpu", **train_kw)
            key = f"X_head_{len(methods)}"
            a.obsm[key] = model.get_latent_representation()
            h = model.head
            methods[key] = (vname, time.perf_counter() - t0,
                            {"seed": seed, "epochs": len([r for r in h.history if r["epoch"] >= 1]), "best_epoch": h.best_epoch,
                             "s_per_epoch": h.epoch_seconds(), "cpu_s_per_epoch": _cpu_epoch(h)})
        print(f"  {name}: {vname} trained", flush=True)
    sub = a[ds.score].copy()
    if args.scib_max_cells and sub.n_obs > args.scib_max_cells:  # the same random cells for every method
        keep = np.sort(np.random.default_rng(SEED).choice(sub.n_obs, args.scib_max_cells, replace=False))
        sub = sub[keep].copy()
    t0 = time.perf_counter()
    res = scib_scores(sub, ds.batch, ds.label, list(methods))
    print(f"  {name}: scib-metrics {time.perf_counter() - t0:.0f} s", flush=True)
    for key, (mname, secs, info) in methods.items():
        r = res.loc[key].to_dict()
        rows.append({"dataset": ds.name, "task": "integration", "method": mname, "seconds": secs,
                     "n_cells": int(sub.n_obs), **info,
                     **{_clean(k): float(v) for k, v in r.items()}})


def _clean(k: str) -> str:
    return {"Batch correction": "batch_score", "Bio conservation": "bio_score", "Total": "total"}.get(
        k, k.lower().replace(" ", "_"))


# ----------------------------------------------------------------------------- speed
def bench_speed(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Seconds per epoch of the annotation head: 100,000 synthetic cells, d=384, 1 thread."""
    from _synthetic import generate_csr, random_embedding
    from scelmo_torch.annotation import AnnotationHead
    from scelmo_torch.device import describe_device

    from scelmo.expression.selection import normalize_chunk

    n, g, nnz = args.speed_cells, 10_000, 1_000
    X = normalize_chunk(generate_csr(n, g, nnz, seed=0)).astype(np.float32)
    E = random_embedding(g, 384)
    y = np.random.default_rng(0).integers(0, 10, n).astype(str)
    device = args.speed_device
    # on a GPU: also larger batches, and the host-densified batches (data_on_device=False) as the baseline
    variants = ([(bs, None) for bs in (128, 256)] if device == "cpu"
                else [(bs, flag) for bs in (128, 256, 1024) for flag in (False, True)])
    for bs, on_device in variants:
        head = AnnotationHead(refit_steps=0)
        t0 = time.perf_counter()
        head.fit(X, y, gene_vectors=E, training={"max_epochs": 3 if device != "cpu" else 2, "early_stopping": False,
                                                 "batch_size": bs, "device": device, "validation_fraction": 0.0,
                                                 "num_threads": 1, "data_on_device": on_device})
        eps = [r for r in head.history if r["epoch"] >= (2 if device != "cpu" else 1)]  # GPU: epoch 1 warms up
        where = "" if on_device is None else (", batches gathered on the GPU" if on_device else ", batches densified on the host")
        rows.append({"dataset": f"synthetic {n // 1000}k cells", "task": "speed",
                     "method": f"annotation head, batch {bs}{where}", "device": describe_device(head.device),
                     "n_cells": n, "n_genes_used": len(head.spec["genes"]), "dim": 384, "batch_size": bs,
                     "s_per_epoch": float(np.median([r["seconds"] for r in eps])),
                     "cpu_s_per_epoch": float(np.median([r["cpu_seconds"] for r in eps])),
                     "seconds": time.perf_counter() - t0, "loadavg": loadavg()})
        print(f"  speed {rows[-1]['method']} on {rows[-1]['device']}: {rows[-1]['s_per_epoch']:.2f} s/epoch wall, "
              f"{rows[-1]['cpu_s_per_epoch']:.2f} s CPU", flush=True)


# ----------------------------------------------------------------------------- report
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


def mean_sd(df: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """'mean ± sd (n)' per group, first-seen order."""
    out = []
    for k, d in df.groupby(keys, sort=False):
        row = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
        for m in metrics:
            if m in d and d[m].notna().any():
                v = d[m].dropna()
                row[m] = f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"
        row["n"] = len(d)
        out.append(row)
    return pd.DataFrame(out)


def per_split_check(ann: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and split: head (kNN / classifier) minus zero-shot kNN, and whether it is >= 0."""
    out = []
    for (dsn, split), d in ann.groupby(["dataset", "split"], sort=False):
        zs = d[d["method"] == ZS_KNN]
        if zs.empty:
            continue
        for m in (HEAD_KNN, HEAD_CLF, HEAD_AUTO):
            h = d[d["method"] == m]
            if h.empty:
                continue
            da = float(h["accuracy"].iloc[0] - zs["accuracy"].iloc[0])
            df1 = float(h["macro_f1"].iloc[0] - zs["macro_f1"].iloc[0])
            out.append({"dataset": dsn, "split": split, "method": m, "d_accuracy": da, "d_macro_f1": df1,
                        "best_epoch": h["best_epoch"].iloc[0] if "best_epoch" in h else np.nan,
                        "ok": bool(da >= -1e-9 and df1 >= -1e-9)})
    return pd.DataFrame(out)


def write(df: pd.DataFrame, log: dict[str, Any], out: Path) -> None:
    import scelmo

    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    cmd = log.get("command", "benchmarks/finetune.py")
    lines = ["# Fine-tuning benchmark: results", "",
             f"Generated by `{cmd}` on {log['date']} ({log['machine']}); {log['total_s']:.0f} s wall; "
             f"/proc/loadavg at start {log['loadavg_start']}, end {log['loadavg_end']}. "
             + ("Training on CPU, 1 torch thread" if "device" not in df or set(df["device"].dropna()) <= {"cpu (1 thread)"}
                else "Training on " + ", ".join(sorted(set(df["device"].dropna()))))
             + ". Cells show mean ± SD over splits / seeds (n runs); every run is in results.csv.",
             "", "See docs/finetuning.md for the protocol and the reading of these numbers.", ""]
    ann = df[df["task"] == "annotation"] if "task" in df else df.iloc[:0]
    for dsn, d in ann.groupby("dataset", sort=False):
        d = d.copy()
        d["kind"] = d["split"].astype(str).str.split().str[0] if dsn == "pbmc68k" else "control->stimulated"
        lines += [f"## Annotation: {dsn}", "",
                  md_table(mean_sd(d, ["kind", "method"], ["accuracy", "macro_f1", "epochs", "best_epoch", "s_per_epoch",
                                                           "cpu_s_per_epoch", "seconds"]),
                           ["kind", "method", "accuracy", "macro_f1", "epochs", "best_epoch", "s_per_epoch",
                            "cpu_s_per_epoch", "seconds", "n"]), ""]
        chk = per_split_check(d)
        if len(chk):
            for m, c in chk.groupby("method", sort=False):
                lines.append(f"- {m} >= zero-shot kNN on accuracy and macro-F1: {int(c['ok'].sum())} of {len(c)} splits; "
                             f"worst difference accuracy {c['d_accuracy'].min():+.3f}, macro-F1 {c['d_macro_f1'].min():+.3f}; "
                             f"mean {c['d_accuracy'].mean():+.3f} / {c['d_macro_f1'].mean():+.3f}.")
            lines += ["", "<details><summary>Per split: head minus zero-shot kNN</summary>", "",
                      md_table(chk, ["split", "method", "d_accuracy", "d_macro_f1", "best_epoch", "ok"]), "", "</details>", ""]
    integ = df[df["task"] == "integration"] if "task" in df else df.iloc[:0]
    scib_cols = ["bio_score", "batch_score", "total", "isolated_labels", "nmi_ari_cluster_labels_kmeans_nmi",
                 "nmi_ari_cluster_labels_kmeans_ari", "silhouette_label", "clisi_knn", "bras", "ilisi_knn", "kbet_per_label",
                 "graph_connectivity", "pcr_comparison"]
    for dsn, d in integ.groupby("dataset", sort=False):
        cols = [c for c in scib_cols if c in d.columns] + ["best_epoch", "s_per_epoch", "seconds"]
        t = mean_sd(d, ["method"], cols)
        lines += [f"## Integration: {dsn} (scib-metrics, unscaled; total = 0.6 bio + 0.4 batch)", "",
                  f"{int(d['n_cells'].iloc[0])} scored cells.", "", md_table(t, ["method", *cols, "n"]), ""]
    spd = df[df["task"] == "speed"] if "task" in df else df.iloc[:0]
    if len(spd):
        lines += ["## Speed: seconds per epoch, synthetic data (d = 384, 1 torch thread)", "",
                  md_table(spd, ["dataset", "method", *(["device"] if "device" in spd else []), "n_genes_used",
                                 "s_per_epoch", "cpu_s_per_epoch", "loadavg"]), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "run.json").write_text(json.dumps(log, indent=2), encoding="utf-8")
    for dsn, d in integ.groupby("dataset", sort=False):
        g = d.groupby("method", sort=False)[["bio_score", "batch_score", "total"]].mean().reset_index()
        scelmo.pl.integration_scores(g, title=f"{dsn}: scib-metrics", save=out / f"integration_{dsn}.png", dpi=110)
    for dsn, d in ann.groupby("dataset", sort=False):
        g = d[~d["method"].str.contains("control|no class|paper", regex=True)]
        g = g.groupby("method", sort=False)[["accuracy", "macro_f1"]].mean().reset_index()
        scelmo.pl.metrics_bar(g, title=f"{dsn}: annotation (mean over splits)", save=out / f"annotation_{dsn}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="annotation,integration,speed")
    ap.add_argument("--annotation-datasets", default="pbmc68k,kang")
    ap.add_argument("--integration-datasets", default="pbmc68k_sim,kang")
    ap.add_argument("--n-splits", type=int, default=10, help="pbmc68k splits of each kind")
    ap.add_argument("--kang-seeds", type=int, default=3)
    ap.add_argument("--int-seeds", type=int, default=3)
    ap.add_argument("--kang-cells", type=int, default=None, help="subsample Kang (quick runs)")
    ap.add_argument("--scvi-epochs", type=int, default=100)
    ap.add_argument("--speed-cells", type=int, default=100_000)
    ap.add_argument("--speed-device", default="cpu", help="cpu, or cuda: the speed rows on a GPU (with host-batch baseline)")
    ap.add_argument("--scib-max-cells", type=int, default=6000, help="score at most this many cells (random, seed 0)")
    ap.add_argument("--ablations", action="store_true", help="also the variants behind the defaults")
    ap.add_argument("--ablation-filter", default="", help="only the ablations whose name contains one of these (comma-separated)")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--kang-dir", default=str(_default_kang_dir()))
    ap.add_argument("--merge", nargs="+", type=Path, metavar="DIR", help="only combine these result folders into --out")
    args = ap.parse_args(argv)
    if args.merge:
        frames = [pd.read_csv(d / "results.csv") for d in args.merge]
        logs = [json.loads((d / "run.json").read_text()) for d in args.merge]
        log = {**logs[0], "loadavg_end": logs[-1]["loadavg_end"], "total_s": sum(g["total_s"] for g in logs),
               "command": " + ".join(g.get("command", "") for g in logs), "pieces": logs}
        write(pd.concat(frames, ignore_index=True), log, args.out)
        return 0
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    ensure_torch_plugin()
    import scanpy as sc
    import sklearn

    import scelmo

    t_start = time.perf_counter()
    log = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": "benchmarks/finetune.py " + " ".join(portable_argv(sys.argv[1:] if argv is None else argv)),
           "loadavg_start": loadavg(), "versions": {"scelmo": scelmo.__version__, "torch": torch.__version__,
                                                     "scanpy": sc.__version__, "sklearn": sklearn.__version__}}
    for mod in ("scib_metrics", "scvi", "harmonypy", "celltypist", "jax"):
        try:
            log["versions"][mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional baselines
            log["versions"][mod] = None
    rows: list[dict[str, Any]] = []
    parts = args.parts.split(",")

    def flush() -> None:
        write(pd.DataFrame(rows), {**log, "loadavg_end": loadavg(), "total_s": time.perf_counter() - t_start}, args.out)

    if "speed" in parts:
        bench_speed(rows, args)
        flush()
    if "annotation" in parts:
        for name in args.annotation_datasets.split(","):
            t0 = time.perf_counter()
            bench_annotation(name, rows, args)
            print(f"[annotation {name}] {time.perf_counter() - t0:.0f} s", flush=True)
            flush()
    if "integration" in parts:
        for name in args.integration_datasets.split(","):
            t0 = time.perf_counter()
            bench_integration(name, rows, args)
            print(f"[integration {name}] {time.perf_counter() - t0:.0f} s", flush=True)
            flush()
    flush()
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
