"""Scale benchmark (issue 14): 16-bit gene vectors, fused normalisation, dask.

In one process, on the synthetic generator's counts (``_synthetic.py``), with every
figure a ratio to a baseline measured in the same run:

1. **16-bit E** (bfloat16, float16) vs float32 E through the same kernel (``csr_matmul``), 1 and 2
   threads, d = 384 and 1536: wall time per 1M cells, the 2-core fp32 SGEMM bound
   (``aggregation.sgemm_probe``), and accuracy (max |C - C_fp32| / max |C_fp32| per row,
   minimum row cosine).
2. **Fused normalisation**: ``Aggregator.aggregate(normalize=True)`` on raw counts
   (per-10k scaling and log1p inside the streaming pass, no normalised copy of X) over
   the same call with ``normalize=False`` (the raw product).
3. **dask**: the same on-disk ``.h5ad`` embedded by ``scelmo.tl.embed_cells`` streaming
   in one process (backed, numba on 2 threads) and through a 2-worker LocalCluster
   (``scelmo.expression.distributed``, 1 thread each); results checked equal.
4. **Streaming memory**: peak RSS of ``scelmo embed-cells --backed`` (a child process)
   at two sizes (e.g. 100k and 1M cells): flat when it does not grow with cells.
5. **In-memory peak**: a child process reads the ``.h5ad`` into memory and runs
   ``scelmo.tl.embed_cells``; its peak RSS against ``1.15 (X + E + C) + 0.3 GB``.
6. **Gene statistics** (the default flavor's first pass): the fused numba kernel of
   ``selection.gene_stats`` against the numpy implementation it replaced, 1 and 2 threads,
   with the largest relative difference of the sums and whether the 2,000 HVGs agree.

Usage::

    .venv/bin/python benchmarks/scale.py [--cells 100000] [--big-cells 1000000] [--sections ...]

Writes ``benchmarks/results/scale/{results.json,results.md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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

from _runinfo import portable_argv  # noqa: E402
from _synthetic import gene_model, generate_csr, random_embedding  # noqa: E402
from aggregation import loadavg, log, measure, sgemm_probe  # noqa: E402

OUT = HERE / "results" / "scale"
PRECISIONS = ("float32", "bfloat16", "float16")


def _symbols(n: int) -> list[str]:
    """``n`` real human gene symbols from the bundled knowledge table (so gene vectors exist)."""
    import scelmo
    from scelmo.knowledge import roles

    vocab = roles.vocabulary(roles.description_writer(scelmo.get_settings()))
    # human symbols (upper case) first, then the rest (mouse), each in sorted order
    names = sorted(vocab.symbols, key=lambda g: (g != g.upper(), g))[:n]
    if len(names) < n:
        raise SystemExit(f"the bundled gene table has {len(names)} genes, fewer than {n}")
    return names


# ----------------------------------------------------------------------------- 1. bf16
def section_bf16(cells: int, dims: list[int], repeats: int) -> dict[str, Any]:
    import numba
    from scelmo_zeroshot import kernels as K

    X = generate_csr(cells, 30_000, 2_000, seed=0, model=gene_model(30_000, 2_000, seed=0))
    sg = {t: sgemm_probe(2048, repeats, t) for t in (1, 2)}
    peak2 = max(sg[2]["gflops"], 2 * sg[1]["gflops"] if sg[2]["gflops"] < 1.8 * sg[1]["gflops"] else 0)
    rows = []
    for d in dims:
        E = random_embedding(30_000, d, seed=1)
        C = {p: np.empty((cells, d), np.float32) for p in PRECISIONS}
        for prec in PRECISIONS:
            T = K.TiledEmbedding.from_matrix(E, precision=prec)
            out = C[prec]
            K.csr_matmul(X.indptr[:3], X.indices, X.data, T)  # compile outside the timings
            for t in (1, 2):
                numba.set_num_threads(t)
                m = measure(lambda T=T, out=out: K.csr_matmul(X.indptr, X.indices, X.data, T, out=out), repeats,
                            threads=t)
                bound = 2.0 * X.nnz * d / (peak2 * 1e9) * 1e6 / cells  # s per 1M cells at the 2-core peak
                rows.append({"d": d, "precision": prec, "threads": t, "E_MB": T.nbytes / 1e6,
                             "wall_s_per_1M": m["wall_s"] / cells * 1e6, "x_2core_fp32_bound": m["wall_s"] / cells * 1e6 / bound,
                             "clean": m["clean"], "loadavg": m["loadavg_1min"][0]})
                log(f"16-bit section d={d} {prec} {t} thr: {rows[-1]['wall_s_per_1M']:.1f} s/1M cells "
                    f"({rows[-1]['x_2core_fp32_bound']:.2f}x bound)")
        C32 = C["float32"]
        scale = np.abs(C32).max(axis=1)
        scale[scale == 0] = 1
        norms32 = np.linalg.norm(C32, axis=1)
        for prec in PRECISIONS:
            C16 = C[prec]
            rel = float((np.abs(C16 - C32).max(axis=1) / scale).max())
            cos = float(((C16 * C32).sum(1) / np.maximum(np.linalg.norm(C16, axis=1) * norms32, 1e-30)).min())
            for r in rows:
                if r["d"] == d and r["precision"] == prec:
                    r.update({"max_rel_err_row": rel, "min_row_cosine": cos})
            one = [r for r in rows if r["d"] == d and r["precision"] == prec and r["threads"] == 1][0]
            two = [r for r in rows if r["d"] == d and r["precision"] == prec and r["threads"] == 2][0]
            two["wall_2thr_over_1thr"] = two["wall_s_per_1M"] / one["wall_s_per_1M"]
    return {"sgemm_gflops": {str(t): v["gflops"] for t, v in sg.items()}, "peak_2core_gflops": peak2, "rows": rows}


# ----------------------------------------------------------------------------- 2. fused normalisation
def section_normalize(cells: int, repeats: int) -> dict[str, Any]:
    import numba

    from scelmo import plugin as plugins

    numba.set_num_threads(2)
    X = generate_csr(cells, 30_000, 2_000, seed=0, model=gene_model(30_000, 2_000, seed=0))
    rows = []
    for d in (384, 1536):
        E = random_embedding(30_000, d, seed=1)
        agg = plugins.aggregators.create("wa")
        res = {}
        for norm in (False, True):
            m = measure(lambda norm=norm, E=E, agg=agg: agg.aggregate(X, E, normalize=norm, progress=False), repeats,
                        threads=2)
            res[norm] = m
        rows.append({"d": d, "raw_product_s": res[False]["wall_s"], "normalised_s": res[True]["wall_s"],
                     "overhead": res[True]["wall_s"] / res[False]["wall_s"], "clean": res[True]["clean"] and res[False]["clean"]})
        log(f"normalise d={d}: {rows[-1]['overhead']:.3f}x the raw product")
    return {"rows": rows}


# ----------------------------------------------------------------------------- 3. dask
def _write_h5ad(path: Path, cells: int, nnz: float, genes: list[str], *, chunk: int = 50_000) -> None:
    """Write the generator's counts to ``path`` block by block (memory bounded by ``chunk`` cells)."""
    import anndata as ad
    import h5py
    import pandas as pd

    model = gene_model(len(genes), nnz, seed=3)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        ad.io.write_elem(f, "obs", pd.DataFrame(index=[f"c{i}" for i in range(cells)]))
        ad.io.write_elem(f, "var", pd.DataFrame(index=genes))
        first = generate_csr(min(chunk, cells), len(genes), nnz, seed=3, model=model)
        first.indptr = first.indptr.astype(np.int64)  # > 2**31 non-zeros at 1M cells
        ad.io.write_elem(f, "X", first)
        X = ad.io.sparse_dataset(f["X"])
        for off in range(chunk, cells, chunk):
            X.append(generate_csr(min(chunk, cells - off), len(genes), nnz, seed=3, row_offset=off, model=model))


def section_dask(cells: int, workdir: Path, repeats: int) -> dict[str, Any]:
    import anndata as ad
    import numba

    import scelmo
    from scelmo.expression import distributed

    genes = _symbols(20_000)
    path = workdir / "dask.h5ad"
    _write_h5ad(path, cells, 2_000, genes)
    table = scelmo.tl.embed_genes(genes=genes)  # cached gene vectors, outside the timings
    numba.set_num_threads(2)

    def single() -> np.ndarray:
        a = ad.read_h5ad(path, backed="r")
        scelmo.tl.embed_cells(a, gene_embeddings=table, progress=False)
        return a.obsm["X_scelmo"]

    ref = single()
    m1 = measure(single, repeats, threads=2)
    with distributed.cluster(workers=2):
        def dask_run() -> np.ndarray:
            lz = distributed.read_lazy(path, chunk_size=10_000)
            scelmo.tl.embed_cells(lz, gene_embeddings=table, progress=False)
            return lz.obsm["X_scelmo"]

        got = dask_run()  # warm-up: worker imports and numba compile
        m2 = measure(dask_run, repeats, threads=2)
    diff = float(np.abs(got - ref).max())
    row = {"cells": cells, "single_process_s": m1["wall_s"], "local_cluster_2w_s": m2["wall_s"],
           "ratio": m2["wall_s"] / m1["wall_s"], "max_abs_diff": diff, "date": time.strftime("%Y-%m-%d %H:%M")}
    log(f"dask: single {m1['wall_s']:.1f} s, 2 workers {m2['wall_s']:.1f} s -> {row['ratio']:.2f}x")
    return {"rows": [row]}


# ----------------------------------------------------------------------------- 6. gene statistics
def _numpy_gene_sums(X: Any, normalize: bool) -> np.ndarray:
    """The earlier numpy implementation (normalised copy, expm1, four bincounts): the baseline."""
    from scelmo.expression.matrix import iter_row_chunks
    from scelmo.expression.selection import normalize_chunk

    acc = np.zeros((4, X.shape[1]))
    for _, chunk in iter_row_chunks(X, 10_000):
        if normalize:
            chunk = normalize_chunk(chunk)
        for lo in range(0, chunk.nnz, 1 << 22):
            idx = chunk.indices[lo : lo + (1 << 22)]
            v = chunk.data[lo : lo + (1 << 22)].astype(np.float64)
            e = np.expm1(v)
            for row, w in enumerate((v, v * v, e, e * e)):
                acc[row] += np.bincount(idx, weights=w, minlength=X.shape[1])
    return acc


def section_stats(cells: int, repeats: int) -> dict[str, Any]:
    """``selection.gene_stats`` (fused numba kernel) against the numpy implementation it replaced."""
    import numba

    from scelmo.expression.selection import gene_stats, highly_variable

    X = generate_csr(cells, 30_000, 2_000, seed=0, model=gene_model(30_000, 2_000, seed=0))
    gene_stats(X[:100], normalize=True)  # compile outside the timings
    rows = []
    for t in (1, 2):
        numba.set_num_threads(t)
        base = measure(lambda: _numpy_gene_sums(X, True), repeats, threads=t)
        new = measure(lambda: gene_stats(X, normalize=True), repeats, threads=t)
        rows.append({"cells": cells, "threads": t, "numpy_s": base["wall_s"], "kernel_s": new["wall_s"],
                     "speedup": base["wall_s"] / new["wall_s"], "clean": base["clean"] and new["clean"]})
        log(f"gene stats {t} thr: numpy {base['wall_s']:.2f} s, kernel {new['wall_s']:.2f} s")
    ref, got = _numpy_gene_sums(X, True), gene_stats(X, normalize=True)
    from scelmo.expression.selection import GeneStats

    same_hvg = bool(np.array_equal(highly_variable(GeneStats(cells, ref), 2000), highly_variable(got, 2000)))
    for r in rows:
        r.update({"max_rel_diff": float(np.abs(ref - got.sums).max() / np.abs(ref).max()), "same_2000_hvg": same_hvg})
    return {"rows": rows}


# ----------------------------------------------------------------------------- 4. streaming memory
def _peak_rss_child(cmd: list[str]) -> tuple[float, float]:
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, w, r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    kb, wall, rc = out.stdout.split()[-3:]
    if int(rc) != 0:
        raise RuntimeError(f"{cmd} failed")
    return int(kb) / 1024 / 1024, float(wall)


def _gene_table_dir(workdir: Path) -> tuple[list[str], Path]:
    """20,000 bundled gene symbols and their saved gene table (for the memory sections)."""
    import scelmo

    genes = _symbols(20_000)
    gdir = workdir / "genes"
    if not (gdir / "manifest.json").exists():
        scelmo.tl.embed_genes(genes=genes).save(gdir, overwrite=True)
    return genes, gdir


def section_memory(sizes: list[int], workdir: Path) -> dict[str, Any]:
    genes, gdir = _gene_table_dir(workdir)
    rows = []
    for n in sizes:
        path = workdir / f"mem_{n}.h5ad"
        _write_h5ad(path, n, 200, genes)  # 200 non-zeros per cell: a 1M-cell file stays ~2 GB
        gib, wall = _peak_rss_child([sys.executable, "-m", "scelmo", "--no-progress", "embed-cells", str(path),
                                     "-o", str(workdir / f"out_{n}.h5ad"), "--backed", "--overwrite",
                                     "--gene-embeddings", str(gdir)])
        rows.append({"cells": n, "file_GB": path.stat().st_size / 1e9, "peak_rss_GiB": gib, "wall_s": wall})
        log(f"memory {n} cells: peak {gib:.2f} GiB, {wall:.0f} s")
        path.unlink()
        (workdir / f"out_{n}.h5ad").unlink()
    return {"rows": rows}


_INMEMORY_CHILD = """
import json, resource, sys, time
import anndata as ad, numpy as np, scelmo
path, genes_dir = sys.argv[1], sys.argv[2]
a = ad.read_h5ad(path)
table = scelmo.GeneEmbeddings.load(genes_dir)
X = a.X
x_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
scelmo.tl.embed_cells(a, gene_embeddings=table, progress=False)
wall = time.perf_counter() - t
C = a.obsm["X_scelmo"]
print(json.dumps({"x_bytes": x_bytes, "e_bytes": table.vectors.nbytes, "c_bytes": C.nbytes,
                  "rss_after_read_kb": loaded, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "wall_s": wall}))
"""


def section_inmemory(sizes: list[int], workdir: Path) -> dict[str, Any]:
    """Peak RSS of an in-memory ``tl.embed_cells`` (default flavor) against ``1.15 (X + E + C) + 0.3 GB``."""
    genes, gdir = _gene_table_dir(workdir)
    rows = []
    for n in sizes:
        path = workdir / f"inmem_{n}.h5ad"
        _write_h5ad(path, n, 200, genes)
        out = subprocess.run([sys.executable, "-c", _INMEMORY_CHILD, str(path), str(gdir)], capture_output=True,
                             text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        xec = (r["x_bytes"] + r["e_bytes"] + r["c_bytes"]) / 2**30
        peak = r["peak_kb"] / 2**20
        bound = 1.15 * xec + 0.3 * 1e9 / 2**30
        rows.append({"cells": n, "X_E_C_GiB": xec, "rss_after_read_GiB": r["rss_after_read_kb"] / 2**20,
                     "peak_rss_GiB": peak, "target_GiB": bound, "peak_over_target": peak / bound,
                     "embed_wall_s": r["wall_s"]})
        log(f"in-memory {n} cells: peak {peak:.2f} GiB, target {bound:.2f} GiB")
        path.unlink()
    return {"rows": rows}


def _md(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])

    def f(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(f(r[c]) for c in cols) + " |" for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--big-cells", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sections", nargs="+", default=["bf16", "normalize", "dask", "memory"],
                    choices=["bf16", "normalize", "dask", "memory", "inmemory", "stats"])
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory for the on-disk files")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    old = OUT / "results.json"
    res: dict[str, Any] = json.loads(old.read_text()) if old.exists() else {}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scelmo-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = {"bf16": lambda: section_bf16(args.cells, [384, 1536], args.repeats),
            "normalize": lambda: section_normalize(args.cells, args.repeats),
            "dask": lambda: section_dask(args.cells, work, args.repeats),
            "memory": lambda: section_memory([args.cells, args.big_cells], work),
            "inmemory": lambda: section_inmemory([args.cells, args.big_cells], work),
            "stats": lambda: section_stats(args.cells, args.repeats)}
    for name in args.sections:
        t0 = time.perf_counter()
        new = runs[name]()
        if name == "dask" and name in res:  # keep the rows of other file sizes (e.g. 100k and 1M cells)
            sizes = {r["cells"] for r in new["rows"]}
            new["rows"] = [r for r in res[name]["rows"] if r.get("cells") not in sizes] + new["rows"]
        res[name] = new
        res[name]["run"] = {"command": " ".join(["benchmarks/scale.py", *portable_argv(sys.argv[1:])]), "seconds": time.perf_counter() - t0,
                            "loadavg_end": loadavg(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                            "date": time.strftime("%Y-%m-%d %H:%M")}
        tmp = OUT / ".results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=float))
        os.replace(tmp, old)
    md = ["# Scale benchmark (issue 14)", ""]
    titles = {"bf16": "1. 16-bit (bfloat16, float16) vs float32 gene vectors (synthetic 30k genes, 2k nnz/cell)",
              "normalize": "2. Fused normalisation: aggregate(normalize=True) over the raw product (wa, 2 threads)",
              "dask": "3. dask: 2-worker LocalCluster vs one streaming process (same .h5ad, 20k genes)",
              "memory": "4. Streaming memory: scelmo embed-cells --backed (child process peak RSS)",
              "inmemory": "5. In-memory peak RSS of tl.embed_cells against 1.15 (X + E + C) + 0.3 GB (child process)",
              "stats": "6. Gene statistics pass: fused numba kernel vs the numpy implementation it replaced"}
    for name, title in titles.items():
        if name in res:
            run = res[name]["run"]
            md += [f"## {title}", "", f"`{run['command']}` on {run['date']} ({run['machine']}, "
                   f"{run['seconds']:.0f} s; loadavg after {run['loadavg_end']}).", ""]
            if name == "bf16":
                md += [f"SGEMM probe: {res[name]['sgemm_gflops']} GFLOP/s by threads; 2-core bound from "
                       f"{res[name]['peak_2core_gflops']:.1f} GFLOP/s.", ""]
            md += _md(res[name]["rows"]) + [""]
    (OUT / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
