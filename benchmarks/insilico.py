"""In-silico treatment benchmark on Kang 2018 (IFN-beta stimulated vs control PBMCs).

Protocol (per seed; seeds 0, 1, 2):

1. Split the 13,999 cells (monocytes merged, log-normalised as ``benchmarks/zeroshot.py``'s
   ``load_kang``) into two stratified halves: one trains the classifier, the other is analysed.
2. Train ``scelmo.Model(head="annotation")`` on ``condition`` (control vs stimulated), default
   settings, CPU, the seed.
3. ``scelmo.tl.in_silico_deletion(model, held_out, genes=None, source="stimulated",
   target="control", max_cells=None)``: every gene the model uses is deleted in every
   held-out stimulated cell; genes are ranked by the mean change of the log-odds of
   "control" (the move stimulated -> control), with a null of the genes matched on
   expression (10 bins; every gene of the bin with the fast path, 100 random ones with the
   brute path).
4. Compare with the data's differential expression: scanpy ``rank_genes_groups``
   (stimulated vs control, Wilcoxon, log-normalised, all cells), genes ranked by the
   Wilcoxon score (up in stimulated first). Reported: overlap of the top 20 / top 50 with
   the top 20 / 50 DE genes among the genes the model uses (``overlap20``, ``overlap50``) and
   among all genes (``overlap50_all``), Spearman correlation of the effect with the DE score
   over the genes the model uses, and the effects in units of the null's SD (``z``).

The model sees every gene with a vector (head option ``genes="all"``), so the ranking can
meet every DE gene; the row ``real-hvg`` keeps the head's default gene selection (its 2,000
variable genes) for comparison. Controls through the same pipeline: the gene -> vector
assignment shuffled (seed-dependent) and a random Gaussian table of the same shape. A classifier on expression finds DE genes
whatever its gene vectors are; the controls say how much of the overlap is owed to the gene
knowledge.

Usage::

    nice -n 10 .venv-bench/bin/python benchmarks/insilico.py [--quick] [--kang-dir DIR]

Writes ``benchmarks/results/insilico/`` (or ``--out``): ``results.csv``, ``results.md``,
``run.json`` and ``ranking.png`` (the real table, seed 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runinfo import portable_argv  # noqa: E402
from zeroshot import _default_kang_dir, load_kang, loadavg, random_table, shuffled_table  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT_DEFAULT = HERE / "results" / "insilico"
SOURCE, TARGET = "stimulated", "control"
TABLES = ("real", "shuffled", "random", "real-hvg")


def head_options(name: str) -> dict[str, Any]:
    """Every gene with a vector enters the model (head option ``genes="all"``, where the head
    has it), so that the ranking can meet every DE gene; ``real-hvg`` keeps the head's default
    gene selection (its variable genes)."""
    from scelmo import plugin as plugins

    fields = plugins.heads.get("annotation").Options.model_fields
    return {"genes": "all"} if "genes" in fields and name != "real-hvg" else {}


def de_table(a: Any) -> pd.DataFrame:
    """Wilcoxon stimulated vs control on the log-normalised expression, every gene."""
    import scanpy as sc

    b = a.copy()
    b.X = b.layers["lognorm"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(b, "condition", groups=[SOURCE], reference=TARGET, method="wilcoxon",
                                use_raw=False, n_genes=b.n_vars)
    r = b.uns["rank_genes_groups"]
    df = pd.DataFrame({"score": np.asarray(r["scores"][SOURCE], dtype=float),
                       "logfc": np.asarray(r["logfoldchanges"][SOURCE], dtype=float),
                       "pval_adj": np.asarray(r["pvals_adj"][SOURCE], dtype=float)},
                      index=np.asarray(r["names"][SOURCE]).astype(str))
    df["de_rank"] = df["score"].rank(ascending=False, method="first").astype(int)
    return df


def split_half(a: Any, seed: int) -> np.ndarray:
    """Stratified (condition x cell type) half of the cells: True = training."""
    rng = np.random.default_rng(seed)
    strata = (a.obs["condition"].astype(str) + "|" + a.obs["cell_type"].astype(str)).to_numpy()
    train = np.zeros(a.n_obs, dtype=bool)
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        train[idx[: len(idx) // 2]] = True
    return train


def score_ranking(res: pd.DataFrame, de: pd.DataFrame) -> dict[str, float]:
    from scipy.stats import spearmanr

    genes = [g for g in res.index if g in de.index]
    r = res.loc[genes]
    de_model = de.loc[genes].sort_values("score", ascending=False)
    out: dict[str, float] = {"n_genes_model": len(genes)}
    for k in (20, 50):
        top = set(r.index[:k])
        out[f"overlap{k}"] = len(top & set(de_model.index[:k])) / k
        out[f"overlap{k}_all"] = len(top & set(de.index[de["de_rank"] <= k])) / k
    out["spearman"] = float(spearmanr(r["logit_shift"], de_model.loc[genes, "score"]).statistic)
    for col, tag in (("z", "z"), ("z_robust", "zr")):
        z = r[col].to_numpy(dtype=float)
        out[f"{tag}_top20_median"] = float(np.nanmedian(z[:20]))
        out[f"{tag}_top50_min"] = float(np.nanmin(z[:50]))
        out[f"frac_top50_{tag}10"] = float(np.mean(z[:50] >= 10))
        out[f"{tag}_max"] = float(np.nanmax(z))
    out["effect_top1"] = float(r["logit_shift"].iloc[0])
    out["null_sd_median"] = float(np.nanmedian(r["null_sd"]))
    out["fraction_flipped_top1"] = float(r["fraction_flipped"].iloc[0])
    return out


def run_one(a: Any, de: pd.DataFrame, table: Any, name: str, seed: int, quick: bool) -> tuple[dict[str, Any], pd.DataFrame, Any]:
    import scelmo

    train = split_half(a, seed)
    tr, q = a[train].copy(), a[~train].copy()
    scelmo.Model.setup_anndata(tr, labels_key="condition", layer="lognorm")
    t0 = time.perf_counter()
    model = scelmo.Model(tr, head="annotation", gene_embeddings=table, **head_options(name))
    model.train(seed=seed, device="cpu", num_threads=1, progress=False, **({"max_epochs": 10} if quick else {}))
    t_train = time.perf_counter() - t0
    pred = model.predict(q, method="classifier")
    acc = float((pred == q.obs["condition"].astype(str).to_numpy()).mean())
    t0 = time.perf_counter()
    res = scelmo.tl.in_silico_deletion(model, q, genes=None, source=SOURCE, target=TARGET, max_cells=None, seed=seed)
    t_is = time.perf_counter() - t0
    prov = q.uns["scelmo"]["in_silico_deletion"]
    row = {"table": name, "seed": seed, "n_train": int(tr.n_obs), "n_source_cells": prov["n_source_cells"],
           "method": prov["method"], "heldout_accuracy": acc, "epochs": len(model.history),
           "train_s": t_train, "insilico_s": t_is,
           "baseline_p_control": prov["baseline_target_probability"], **score_ranking(res, de)}
    return row, res, model


def fmt(v: Any, nd: int = 3) -> str:
    if isinstance(v, float):
        return "–" if not np.isfinite(v) else f"{v:.{nd}f}"
    return str(v)


def write_md(out: Path, df: pd.DataFrame, top: pd.DataFrame, info: dict[str, Any]) -> None:
    cols = ["heldout_accuracy", "overlap20", "overlap50", "overlap50_all", "spearman", "z_top20_median",
            "frac_top50_z10", "zr_top20_median", "frac_top50_zr10", "insilico_s", "train_s"]
    lines = ["# In-silico treatment benchmark (Kang 2018): results", "",
             f"Generated by `{info['command']}` on {info['date']} ({info['machine']}); total {info['total_s']:.0f} s "
             f"wall; /proc/loadavg at start {info['loadavg_start']}, end {info['loadavg_end']}. CPU only, 1 torch thread. "
             f"Seeds {info['seeds']}; mean ± SD over seeds (every run in results.csv).", "",
             "Delete each gene the model uses in the held-out stimulated cells and rank genes by the mean change "
             "of the classifier's log-odds of 'control'; compare with Wilcoxon DE (stimulated vs control). "
             "See docs/insilico.md for the protocol.", "",
             "| table | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for t in TABLES:
        d = df[df["table"] == t]
        if d.empty:
            continue
        cells = [f"{fmt(float(d[c].mean()))} ± {fmt(float(d[c].std(ddof=1)) if len(d) > 1 else float('nan'))}"
                 for c in cols]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "Columns: `overlap20` / `overlap50` = share of the in-silico top 20 / 50 among the top 20 / 50 DE "
              "genes of the genes the model uses; `overlap50_all` = the same against the top 50 DE genes of all "
              "genes; `spearman` = rank correlation of the effect with the Wilcoxon score over the genes the "
              "model uses; `z_*` = effect minus the null mean in null SDs (random genes, same expression bin); "
              "`frac_top50_z10` = share of the top 50 with z >= 10; `zr_*` / `frac_top50_zr10` = the same with the "
              "null's median and robust SD (1.4826 MAD).", ""]
    real = df[df["table"] == "real"]
    shuf = df[df["table"] == "shuffled"]
    if not real.empty and not shuf.empty:
        lines += ["## Knowledge control", "",
                  f"- real minus shuffled table: overlap50 {real['overlap50'].mean() - shuf['overlap50'].mean():+.3f}, "
                  f"spearman {real['spearman'].mean() - shuf['spearman'].mean():+.3f}, held-out accuracy "
                  f"{real['heldout_accuracy'].mean() - shuf['heldout_accuracy'].mean():+.4f}.", ""]
    lines += ["## Top 20 genes (real table, seed 0)", "",
              "| rank | gene | logit_shift | z | z_robust | fraction_flipped | n_cells_expressing | DE rank (all genes) | DE score |",
              "|---|---|---|---|---|---|---|---|---|"]
    for i, (g, r) in enumerate(top.iterrows(), 1):
        lines.append(f"| {i} | {g} | {r['logit_shift']:.4f} | {r['z']:.1f} | {r['z_robust']:.1f} | {r['fraction_flipped']:.4f} | "
                     f"{int(r['n_cells_expressing'])} | {int(r['de_rank']) if np.isfinite(r['de_rank']) else '–'} | "
                     f"{r['de_score']:.1f} |")
    lines += ["", "![ranking](ranking.png)", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    import scanpy as sc
    import torch

    import scelmo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kang-dir", default=str(_default_kang_dir()))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="3,000 cells, 10 epochs (a smoke run)")
    ap.add_argument("--out", default=str(OUT_DEFAULT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    info: dict[str, Any] = {
        "command": " ".join(["benchmarks/insilico.py", *portable_argv(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "loadavg_start": loadavg(), "seeds": seeds, "quick": args.quick,
        "versions": {"scelmo": scelmo.__version__, "torch": torch.__version__, "scanpy": sc.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    with contextlib.suppress(OSError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=HERE).stdout.strip()
        info["uncommitted_files"] = subprocess.run(["git", "status", "--short", "--untracked-files=no"],
                                                   capture_output=True, text=True, cwd=HERE).stdout.split("\n")
    ds = load_kang(args.kang_dir, 3000 if args.quick else None)
    a = ds.adata
    t0 = time.perf_counter()
    de = de_table(a)
    info["de_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ge = scelmo.tl.embed_genes(genes=list(map(str, a.var_names)), progress=False)
    info["gene_table_s"] = time.perf_counter() - t0
    info["n_cells"], info["n_genes"], info["n_gene_vectors"] = int(a.n_obs), int(a.n_vars), len(ge)
    rows: list[dict[str, Any]] = []
    top = None
    from scelmo import plugin as plugins

    has_selection = "genes" in plugins.heads.get("annotation").Options.model_fields
    for seed in seeds:
        for name in TABLES if has_selection else TABLES[:3]:
            table = {"real": ge, "real-hvg": ge, "shuffled": shuffled_table(ge, seed), "random": random_table(ge, seed)}[name]
            row, res, model = run_one(a, de, table, name, seed, args.quick)
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            if name == "real" and seed == seeds[0]:
                info["head_options"] = model.head.options.model_dump(mode="json")
                top = res.head(20).copy()
                top["de_rank"] = de["de_rank"].reindex(top.index).astype(float)
                top["de_score"] = de["score"].reindex(top.index)
                res.to_csv(out / "ranking_real_seed0.csv.gz", float_format="%.6g")
                scelmo.pl.in_silico_ranking(res, n_top=25, save=out / "ranking.png",
                                            title="Kang 2018: delete a gene in stimulated cells -> P(control)")
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False, float_format="%.6g")
    info["loadavg_end"] = loadavg()
    info["total_s"] = time.perf_counter() - t_all
    write_md(out, df, top, info)
    (out / "run.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    print((out / "results.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
