"""Peak memory and time of ``scelmo embed-cells --backed`` on a large synthetic .h5ad.

Writes a cells x genes CSR ``.h5ad`` with the generator of ``_synthetic.py`` (100,000 x
30,000, ~2,000 non-zeros per cell: ~1.6 GB), saves random gene vectors for its genes as a
``GeneEmbeddings`` directory, then runs the real CLI in a child process twice:

* ``--backed`` (streams row chunks from disk), and
* in memory (reads the whole file first), as the baseline,

and records each child's peak RSS (``ru_maxrss``) against the file size, plus wall time.
Target M2 (docs/performance.md): streaming peak memory independent of the
number of cells and well below the file size.

    python benchmarks/embed_cells_backed.py --cells 30000 100000 --dim 384
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _child_peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt, p.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env, check=True)
    rss_kb, dt, rc = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"command failed: {' '.join(cmd)}\n{out.stderr}")
    return int(rss_kb) / 1024**2, float(dt), out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[30_000, 100_000],
                    help="one or more cell counts: peak memory of --backed must not grow with them")
    ap.add_argument("--genes", type=int, default=30_000)
    ap.add_argument("--nnz", type=float, default=2_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "scelmo_bench_backed"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--skip-in-memory", action="store_true")
    args = ap.parse_args()

    import anndata as ad
    from _synthetic import gene_model, generate_csr, random_embedding

    from scelmo.genes import GeneEmbeddings

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    genes = [f"SYN{i:05d}" for i in range(args.genes)]
    ge_dir = work / f"genes_d{args.dim}"
    if not ge_dir.exists():
        GeneEmbeddings(genes, random_embedding(args.genes, args.dim), {"embed_model": "random"}).save(ge_dir)
    env = dict(os.environ, SCELMO_NO_PROGRESS="1", SCELMO_CACHE__ENABLED="false")
    rows = []
    for n_cells in args.cells:
        h5 = work / f"synthetic_{n_cells}x{args.genes}.h5ad"
        if not h5.exists():
            t = time.perf_counter()
            X = generate_csr(n_cells, args.genes, args.nnz, model=gene_model(args.genes, args.nnz))
            a = ad.AnnData(X)
            a.var_names = genes
            a.obs_names = [f"c{i}" for i in range(n_cells)]
            a.write_h5ad(h5)
            del a, X
            print(f"wrote {h5} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        file_gb = h5.stat().st_size / 1024**3
        base = [sys.executable, "-m", "scelmo", "embed-cells", str(h5), "--gene-embeddings", str(ge_dir),
                "--chunk-size", str(args.chunk_size)]
        for mode in (["--backed"], None if args.skip_in_memory else []):
            if mode is None:
                continue
            out = work / "out.h5ad"
            rss, dt, log = _child_peak_rss(base + ["-o", str(out)] + mode, env)
            rows.append({"cells": n_cells, "file_gib": file_gb, "mode": "backed" if mode else "in-memory",
                         "peak_rss_gib": rss, "wall_s": dt, "rss_over_file": rss / file_gb,
                         "output_gib": n_cells * args.dim * 4 / 1024**3})
            out.unlink(missing_ok=True)
            print(log.strip().splitlines()[-1] if log.strip() else "", file=sys.stderr)
    result = {
        "genes": args.genes, "nnz_per_cell": args.nnz, "dim": args.dim, "chunk_size": args.chunk_size,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3], "runs": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "embed_cells_backed.json").write_text(json.dumps(result, indent=2))
    md = [f"# scelmo embed-cells on synthetic CSR .h5ad files ({args.genes:,} genes, ~{args.nnz:,.0f} nnz/cell, "
          f"d={args.dim}, chunk {args.chunk_size:,} cells)", "",
          "| cells | file (GiB) | mode | peak RSS (GiB) | peak RSS / file | result cells x d (GiB) | wall (s) |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['cells']:,} | {r['file_gib']:.2f} | {r['mode']} | {r['peak_rss_gib']:.2f} | {r['rss_over_file']:.2f} "
           f"| {r['output_gib']:.3f} | {r['wall_s']:.1f} |" for r in rows]
    md += ["", f"loadavg {' '.join(result['loadavg'])}; peak RSS = the child process's ru_maxrss."]
    (out_dir / "embed_cells_backed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
