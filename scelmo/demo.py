"""``scelmo demo``: the whole zero-shot path on a bundled real dataset.

Runs on scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 765 genes, 10 FACS-sorted
``bulk_labels``), offline:

* scelmo: offline gene knowledge -> local text embedder -> ``wa`` over the
  log-normalised expression in ``adata.raw`` -> kNN (cosine) -> Leiden;
* baseline: scanpy's standard pipeline on the same cells (the scaled ``adata.X``
  -> PCA(50) -> kNN -> Leiden), with the same number of neighbours and resolution.

Prints ARI and NMI of both against ``bulk_labels`` side by side, writes them to
``metrics.json`` and a UMAP coloured by label to ``umap_scelmo.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def run_demo(out_dir: Path, *, resolution: float = 1.0, config: Any = None, n_neighbors: int = 15) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    from rich.console import Console
    from rich.table import Table

    from . import io, keys, metrics, pl, tl

    console = Console(stderr=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    io.check_writable(out_dir / "metrics.json")

    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    console.print(f"[bold]pbmc68k_reduced[/bold]: {adata.n_obs} cells x {adata.raw.n_vars} genes, "
                  f"{len(set(labels))} bulk_labels")

    rows: list[dict[str, Any]] = []

    t0 = time.perf_counter()
    tl.embed_cells(adata, config=config)
    tl.cluster(adata, n_neighbors=n_neighbors, resolution=resolution)
    t_scelmo = time.perf_counter() - t0
    prov = adata.uns[keys.PROVENANCE]["embed_cells"]
    rows.append({"method": f"scelmo zero-shot ({prov['aggregator']}, {prov['embed_model']})",
                 **metrics.clustering_scores(labels, adata.obs[keys.CLUSTER]), "seconds": t_scelmo})

    t0 = time.perf_counter()
    base = adata.copy()
    sc.tl.pca(base, n_comps=50, random_state=0)
    sc.pp.neighbors(base, n_neighbors=n_neighbors, use_rep="X_pca", key_added="pca_neighbors", random_state=0)
    sc.tl.leiden(base, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                 neighbors_key="pca_neighbors", key_added="pca_leiden", random_state=0)
    t_pca = time.perf_counter() - t0
    rows.append({"method": "scanpy PCA(50) on scaled X", **metrics.clustering_scores(labels, base.obs["pca_leiden"]),
                 "seconds": t_pca})

    table = Table(title=f"Leiden (resolution {resolution}, {n_neighbors} neighbours) vs bulk_labels")
    for col in ("method", "ARI", "NMI", "clusters", "seconds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['ari']:.3f}", f"{r['nmi']:.3f}", f"{int(r['n_clusters'])}", f"{r['seconds']:.1f}")
    console.print(table)
    console.print(f"gene coverage {prov['n_genes_with_vector']}/{prov['n_genes']}, "
                  f"expression coverage {prov['expression_coverage']:.1%}, empty cells {prov['n_empty_cells']}")

    tl.umap(adata)
    png = out_dir / "umap_scelmo.png"
    pl.embedding(adata, color=["bulk_labels", keys.CLUSTER], save=png, title=["bulk_labels", "scelmo Leiden"], wspace=0.7)
    result = {"dataset": "pbmc68k_reduced", "resolution": resolution, "n_neighbors": n_neighbors,
              "results": rows, "coverage": {k: prov[k] for k in ("n_genes", "n_genes_with_vector", "expression_coverage")}}
    with io.atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    console.print(f"Wrote {png} and {out_dir / 'metrics.json'}")
    return result
