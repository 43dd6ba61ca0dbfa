"""End-to-end benchmark (issue 14): on-disk counts -> scelmo embedding -> neighbours -> Leiden -> UMAP.

The synthetic generator's counts (``_synthetic.py``: 30,000 genes, ~2,000 non-zeros per
cell; real human gene symbols as names so the offline gene table covers them) are
written to an ``.h5ad`` file; then, in this process, each stage is timed with the peak
RSS after it:

1. ``embed``: ``scelmo.tl.embed_cells`` streaming the file (backed), default flavor;
2. ``neighbors``: ``scanpy.pp.neighbors`` (15 neighbours, cosine) with each candidate
   search a scanpy user can pick: pynndescent (scanpy's default) and exact brute force
   (``transformer="sklearn"``) on a subsample, to choose the fastest by measurement;
3. ``leiden``: ``scanpy.tl.leiden`` (igraph flavour);
4. ``umap``: ``scanpy.tl.umap``;

and the embed stage again through a 2-worker dask LocalCluster (``scelmo.expression.distributed``).
Gene vectors are embedded once before the timings (the cold start is measured by
``benchmarks/cold_start.py``).

Usage::

    .venv/bin/python benchmarks/end_to_end.py [--cells 100000] [--nnz 2000]

Writes ``benchmarks/results/end_to_end/{results.json,results.md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT / "plugins"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from aggregation import loadavg, log  # noqa: E402
from scale import _symbols, _write_h5ad  # noqa: E402

OUT = HERE / "results" / "end_to_end"


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def _neighbour_search(emb: np.ndarray, n: int) -> list[dict[str, Any]]:
    """pynndescent vs exact search on the same ``n`` cells: seconds and recall of the exact 15-NN."""
    import scanpy as sc

    rows = []
    sub = emb[np.random.default_rng(0).choice(emb.shape[0], min(n, emb.shape[0]), replace=False)]
    graphs = {}
    for name, kw in (("pynndescent", {}), ("exact (sklearn brute)", {"transformer": "sklearn"})):
        a = sc.AnnData(np.zeros((sub.shape[0], 1), np.float32))
        a.obsm["X"] = sub
        t = time.perf_counter()
        sc.pp.neighbors(a, n_neighbors=15, use_rep="X", metric="cosine", random_state=0, **kw)
        graphs[name] = a.obsp["distances"]
        rows.append({"search": name, "cells": sub.shape[0], "seconds": time.perf_counter() - t})
    exact = graphs["exact (sklearn brute)"]
    for r in rows:
        g = graphs[r["search"]]
        hits = sum(len(set(g[i].indices) & set(exact[i].indices)) for i in range(g.shape[0]))
        r["recall_vs_exact"] = hits / max(1, exact.nnz)
    return rows


def main() -> None:
    import anndata as ad
    import numba
    import scanpy as sc

    import scelmo
    from scelmo.expression import distributed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--nnz", type=float, default=2_000)
    ap.add_argument("--search-cells", type=int, default=20_000, help="cells for the neighbour-search comparison")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scelmo-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    genes = _symbols(30_000)
    path = work / "cells.h5ad"
    t = time.perf_counter()
    _write_h5ad(path, args.cells, args.nnz, genes)
    gen_s = time.perf_counter() - t
    log(f"wrote {args.cells} cells ({path.stat().st_size / 1e9:.2f} GB) in {gen_s:.0f} s")
    table = scelmo.tl.embed_genes(genes=genes)  # cached after the first run; not part of the timings
    numba.set_num_threads(os.cpu_count() or 1)

    stages: list[dict[str, Any]] = []

    def stage(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        stages.append({"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_GiB_after": _peak_gib()})
        log(f"{name}: {stages[-1]['seconds']:.1f} s, peak {stages[-1]['peak_rss_GiB_after']:.2f} GiB")
        return out

    a = ad.read_h5ad(path, backed="r")
    stage("embed (scelmo, backed)", lambda: scelmo.tl.embed_cells(a, gene_embeddings=table, progress=False))
    emb = np.asarray(a.obsm["X_scelmo"])
    a.file.close()
    cells = sc.AnnData(np.zeros((emb.shape[0], 1), np.float32))
    cells.obsm["X_scelmo"] = emb
    stage("neighbors (pynndescent, 15, cosine)",
          lambda: sc.pp.neighbors(cells, n_neighbors=15, use_rep="X_scelmo", metric="cosine", random_state=0))
    stage("leiden (igraph)", lambda: sc.tl.leiden(cells, flavor="igraph", n_iterations=2, directed=False,
                                                  random_state=0))
    stage("umap", lambda: sc.tl.umap(cells, random_state=0))
    total = sum(s["seconds"] for s in stages)
    for s in stages:
        s["share"] = s["seconds"] / total
    search = _neighbour_search(emb, args.search_cells)
    with distributed.cluster(workers=2):
        lz = distributed.read_lazy(path, chunk_size=10_000)
        scelmo.tl.embed_cells(lz, gene_embeddings=table, progress=False)  # warm-up (worker start, compile)
        t = time.perf_counter()
        lz = distributed.read_lazy(path, chunk_size=10_000)
        scelmo.tl.embed_cells(lz, gene_embeddings=table, progress=False)
        dask_s = time.perf_counter() - t
    same = float(np.abs(np.asarray(lz.obsm["X_scelmo"]) - emb).max())
    res = {"cells": args.cells, "nnz_per_cell": args.nnz, "generate_s": gen_s, "stages": stages, "total_s": total,
           "embedding_share": stages[0]["share"], "dask_2_workers_embed_s": dask_s,
           "dask_vs_streaming": dask_s / stages[0]["seconds"], "dask_max_abs_diff": same, "neighbour_search": search,
           "run": {"command": " ".join(["benchmarks/end_to_end.py", *sys.argv[1:]]), "python": platform.python_version(),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", "loadavg_end": loadavg(),
                   "wall_s": time.perf_counter() - t_all, "date": time.strftime("%Y-%m-%d %H:%M")}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=1, default=float))
    md = ["# End-to-end benchmark (issue 14)", "",
          f"`{res['run']['command']}` on {res['run']['date']} ({res['run']['machine']}; loadavg after "
          f"{res['run']['loadavg_end']}). {args.cells:,} cells x 30,000 genes, ~{args.nnz:.0f} non-zeros per cell, "
          "from an on-disk .h5ad; gene vectors cached.", "",
          "| stage | seconds | share | peak RSS after (GiB) |", "|---|---|---|---|"]
    md += [f"| {s['stage']} | {s['seconds']:.1f} | {s['share']:.1%} | {s['peak_rss_GiB_after']:.2f} |" for s in stages]
    md += [f"| **total** | **{total:.1f}** | | |", "",
           f"Embedding through a 2-worker dask LocalCluster: {dask_s:.1f} s = {res['dask_vs_streaming']:.2f}x the "
           f"streaming run (max |difference| {same:.1e}).", "",
           f"Neighbour search on {search[0]['cells']:,} cells (same embedding):", "",
           "| search | seconds | recall of the exact 15-NN |", "|---|---|---|"]
    md += [f"| {r['search']} | {r['seconds']:.1f} | {r['recall_vs_exact']:.3f} |" for r in search]
    (OUT / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
