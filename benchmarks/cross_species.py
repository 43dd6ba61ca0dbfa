"""Cross-species label transfer: Baron 2016 human pancreas <-> Baron 2016 mouse pancreas.

The same lab's inDrop data of two species (``scelmo.datasets.baron2016()`` and
``baron2016(species="mouse")``), the published types harmonised to the names both use; a
transfer is scored on the query's cells of the types both datasets have. scelmo reads mouse
genes through their human orthologs, so the two share one gene table. Methods:

* scelmo's inductive ``tl.annotate(query, reference=ref)`` (the default: the query embedded with
  the reference's gene statistics), and each side embedded on its own statistics + 10-NN;
* the knowledge control: the same ``tl.annotate`` with the gene -> vector assignment shuffled
  (3 seeds);
* baselines on the genes both share after upper-casing the mouse symbols (the naive orthology a
  scanpy user reaches for): ``sc.tl.ingest`` onto the reference's PCA (2,000 HVGs, 50 PCs), and
  a joint scaled PCA + 10-NN (cosine).

First measured by a new-user trial (2026-12-05); committed as a benchmark and run once.

    .venv-bench/bin/python benchmarks/cross_species.py [--out DIR]   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _runinfo import portable_argv
from sklearn.metrics import f1_score

import scelmo
from scelmo.genes import GeneEmbeddings
from scelmo.knn import knn_vote

HERE = Path(__file__).resolve().parent
#: Both datasets' labels -> one name per type (stellate states merged; human "t_cell" and
#: mouse "T_cell" alike). Types only one dataset has keep their name and are not scored.
HARMONISE = {"alpha": "alpha", "beta": "beta", "delta": "delta", "gamma": "gamma", "ductal": "ductal",
             "endothelial": "endothelial", "activated_stellate": "stellate", "quiescent_stellate": "stellate",
             "macrophage": "macrophage", "schwann": "schwann", "t_cell": "T cell", "T_cell": "T cell"}
N_SHUFFLES = 3
K = 10


def _labelled(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    adata.obs["lab"] = adata.obs["cell_type"].astype(str).map(lambda t: HARMONISE.get(t, t))
    return adata


def _knn(query: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """scelmo's cosine 10-NN vote (what ``tl.annotate`` uses), for every embedding alike."""
    return knn_vote(np.asarray(query, dtype=np.float32), np.asarray(ref, dtype=np.float32), labels, k=K)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cross_species")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    t_all = time.perf_counter()
    human, mouse = _labelled(scelmo.datasets.baron2016()), _labelled(scelmo.datasets.baron2016(species="mouse"))
    shared_types = sorted(set(human.obs["lab"]) & set(mouse.obs["lab"]))
    rows: list[dict] = []

    def score(direction: str, method: str, pred, truth, seconds: float) -> None:
        pred, truth = np.asarray(pred, dtype=object).astype(str), np.asarray(truth, dtype=object).astype(str)
        keep = np.isin(truth, shared_types)
        row = {"direction": direction, "method": method, "n_cells": int(keep.sum()),
               "accuracy": float((pred[keep] == truth[keep]).mean()),
               "macro_f1": float(f1_score(truth[keep], pred[keep], labels=sorted(set(truth[keep])), average="macro")),
               "seconds": seconds}
        row.update({f"recall_{t}": float((pred[truth == t] == t).mean()) for t in sorted(set(truth[keep]))})
        rows.append(row)
        print(f"{direction} | {method}: {row['accuracy']:.3f} / {row['macro_f1']:.3f}", flush=True)

    pairs = (("human -> mouse", human, mouse), ("mouse -> human", mouse, human))
    for direction, ref0, query0 in pairs:
        t0 = time.perf_counter()
        ref, query = ref0.copy(), query0.copy()
        scelmo.tl.embed_cells(ref, progress=False)
        scelmo.tl.annotate(query, reference=ref, ref_labels="lab", progress=False)
        score(direction, "scelmo tl.annotate(reference=) (default)", query.obs["scelmo_label"], query.obs["lab"],
              time.perf_counter() - t0)
        t0 = time.perf_counter()
        own_ref, own_query = ref0.copy(), query0.copy()
        scelmo.tl.embed_cells(own_ref, progress=False)
        scelmo.tl.embed_cells(own_query, progress=False)
        score(direction, "scelmo, each side on its own statistics, 10-NN",
              _knn(own_query.obsm["X_scelmo"], own_ref.obsm["X_scelmo"], own_ref.obs["lab"].to_numpy()),
              own_query.obs["lab"], time.perf_counter() - t0)
        table = scelmo.tl.embed_genes(ref0.copy(), progress=False)
        for seed in range(N_SHUFFLES):
            t0 = time.perf_counter()
            perm = np.random.default_rng(1000 + seed).permutation(len(table.genes))
            shuffled = GeneEmbeddings(table.genes, table.vectors[perm], {"embed_model": f"shuffled-{seed}"})
            ref, query = ref0.copy(), query0.copy()
            scelmo.tl.embed_cells(ref, gene_embeddings=shuffled, progress=False)
            scelmo.tl.annotate(query, reference=ref, ref_labels="lab", gene_embeddings=shuffled, progress=False)
            score(direction, f"control: the same, gene table shuffled (seed {seed})", query.obs["scelmo_label"],
                  query.obs["lab"], time.perf_counter() - t0)

    # baselines on the genes the two share once mouse symbols are upper-cased
    hu, mo = human.copy(), mouse.copy()
    mo.var_names = [v.upper() for v in mo.var_names]
    mo.var_names_make_unique()
    genes = hu.var_names.intersection(mo.var_names)
    hu, mo = hu[:, genes].copy(), mo[:, genes].copy()
    for a in (hu, mo):
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    for direction, ref0, query0 in (("human -> mouse", hu, mo), ("mouse -> human", mo, hu)):
        t0 = time.perf_counter()
        ref, query = ref0.copy(), query0.copy()
        sc.pp.highly_variable_genes(ref, n_top_genes=2000)
        hvg = ref.var_names[ref.var["highly_variable"]]
        ref, query = ref[:, hvg].copy(), query[:, hvg].copy()
        sc.pp.pca(ref, n_comps=50, random_state=0)
        sc.pp.neighbors(ref, random_state=0)
        truth = query.obs["lab"].to_numpy()
        sc.tl.ingest(query, ref, obs="lab", embedding_method="pca")
        score(direction, f"sc.tl.ingest (upper-cased shared genes: {len(genes):,}; reference HVG 2000, PCA 50)",
              query.obs["lab"], truth, time.perf_counter() - t0)
        t0 = time.perf_counter()
        joint = ad.concat([ref0, query0], label="side", keys=["ref", "query"], index_unique="-")
        sc.pp.highly_variable_genes(joint, n_top_genes=2000)
        joint = joint[:, joint.var["highly_variable"]].copy()
        sc.pp.scale(joint, max_value=10)
        sc.pp.pca(joint, n_comps=50, random_state=0)
        z, is_ref = joint.obsm["X_pca"], (joint.obs["side"] == "ref").to_numpy()
        score(direction, "joint PCA (scaled, upper-cased shared genes), 10-NN",
              _knn(z[~is_ref], z[is_ref], ref0.obs["lab"].to_numpy()), query0.obs["lab"], time.perf_counter() - t0)

    df = pd.DataFrame(rows)
    df.to_csv(args.out / "results.csv", index=False, float_format="%.4f")
    total = time.perf_counter() - t_all
    lines = ["# Cross-species label transfer: Baron 2016 human <-> mouse pancreas", "",
             f"`benchmarks/cross_species.py {' '.join(portable_argv(sys.argv[1:] if argv is None else argv))}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {total:.0f} s. Scored on the query cells of the "
             f"types both datasets have: {', '.join(shared_types)}.", "",
             "| direction | method | cells | accuracy | macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {r.direction} | {r.method} | {r.n_cells} | {r.accuracy:.3f} | {r.macro_f1:.3f} |" for r in df.itertuples()]
    lines += ["", "Per-type recall: `results.csv` (`recall_*` columns)."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "run.json").write_text(json.dumps({
        "command": "benchmarks/cross_species.py " + " ".join(portable_argv(sys.argv[1:] if argv is None else argv)),
        "seconds": round(total, 1), "machine": f"{platform.machine()}, 2 cores shared",
        "shared_types": shared_types, "n_upper_cased_shared_genes": int(len(genes)),
        "versions": {m: sys.modules[m].__version__ for m in ("scanpy", "numpy") if m in sys.modules},
    }, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
