"""Cold start of the offline default: the first ``scelmo.tl.embed_cells`` on 20,000 genes.

Each configuration runs on a FRESH cache (a new temporary ``cache.path``) with the
plugin's in-process caches cleared (knowledge table, vocabulary, onnxruntime session,
shipped vectors), so every run pays what a first run pays except Python imports.
Configurations, in the same process, alternating, ``--repeats`` times:

* ``before``: the previous default path -- every text through the model
  (``embed.options = {precomputed: false}``);
* ``model-nospin``: every text through the model, idle threads not spinning (exact vectors);
* ``after``: the new default (shipped vectors for the bundled protein-coding gene texts,
  the model for the rest).

Genes: 20,000 human symbols from the bundled table in the mix of a filtered 10x dataset
(Kang 2018: 96% of the resolved genes are protein-coding): 19,200 protein-coding and
800 other genes, drawn at random (seed 0). Counts: the synthetic generator of
``benchmarks/_synthetic.py`` (``--cells`` cells). Stages are timed by wrapping
``scelmo.knowledge.descriptions.describe`` and ``scelmo.knowledge.roles.embed_texts``; ``rest`` is everything
else in ``embed_cells`` (name resolution, conditioning, gene statistics, aggregation).

    nice -n 10 python benchmarks/cold_start.py            # -> benchmarks/results/cold_start/

Quality (the shipped vectors change the vectors slightly): run ``benchmarks/zeroshot.py`` with
the old path and the new default into two folders, then compare them here::

    SCELMO_EMBED__OPTIONS='{"precomputed": false, "spin": true}' \
        python benchmarks/zeroshot.py --datasets pbmc68k,pbmc68k_sim --no-scvi --out zs_old
    python benchmarks/zeroshot.py --datasets pbmc68k,pbmc68k_sim --no-scvi --out zs_new
    python benchmarks/cold_start.py --compare-zeroshot zs_old zs_new
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _runinfo import portable_argv  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"precomputed": False},
    "model-nospin": {"precomputed": False, "spin": False},
    "after": {},
}
TARGET_S = 60.0


def gene_set(n: int, n_other: int, seed: int = 0) -> list[str]:
    from scelmo_local.knowledge import human_table

    table = human_table()
    pc = sorted(s for s, r in table.items() if r["type"] == "protein-coding")
    other = sorted(s for s, r in table.items() if r["type"] != "protein-coding")
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(pc, n - n_other, replace=False)) + list(rng.choice(other, n_other, replace=False))
    return [str(g) for g in rng.permutation(genes)]


def make_adata(genes: list[str], n_cells: int) -> Any:
    import anndata as ad
    import pandas as pd
    from _synthetic import generate_csr

    X = generate_csr(n_cells, len(genes), nnz_per_cell=min(1500.0, 0.1 * len(genes)), seed=0)
    return ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                      var=pd.DataFrame(index=genes))


def _clear_plugin_caches() -> None:
    from scelmo_local import embedder, knowledge, precomputed

    for f in (knowledge.human_table, knowledge.vocabulary, knowledge.manifest, embedder._load, precomputed.shipped):
        f.cache_clear()


def run_once(adata: Any, options: dict[str, Any], threads: int | None) -> dict[str, Any]:
    import scelmo
    from scelmo.knowledge import descriptions, roles

    _clear_plugin_caches()
    timers = {"describe": 0.0, "embed_texts": 0.0}
    counts: dict[str, int] = {}
    real_describe, real_embed = descriptions.describe, roles.embed_texts

    def describe(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_describe(*a, **k)
        finally:
            timers["describe"] += time.perf_counter() - t

    def embed_texts(settings: Any, texts: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_embed(settings, texts, *a, **k)
        finally:
            timers["embed_texts"] += time.perf_counter() - t
            counts["texts"] = counts.get("texts", 0) + len(texts)
            using = k.get("using")
            counts["from_shipped_table"] = int(getattr(using, "n_precomputed", 0))

    opts = dict(options)
    if threads:
        opts["threads"] = threads
    with tempfile.TemporaryDirectory() as tmp:
        config = {"cache.path": str(Path(tmp) / "cache.sqlite"), "embed.options": opts}
        descriptions.describe, roles.embed_texts = describe, embed_texts
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            a = scelmo.tl.embed_cells(adata, copy=True, progress=False, config=config)
        finally:
            descriptions.describe, roles.embed_texts = real_describe, real_embed
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
    prov = a.uns["scelmo"]["embed_cells"]
    n = counts.get("texts", 0)
    return {
        "total_s": total, "cpu_s": cpu, "describe_s": timers["describe"], "embed_texts_s": timers["embed_texts"],
        "rest_s": total - timers["describe"] - timers["embed_texts"], "texts": n,
        "texts_from_shipped_table": counts.get("from_shipped_table", 0),
        "texts_per_s": n / timers["embed_texts"] if timers["embed_texts"] else float("nan"),
        "n_genes_with_vector": prov["n_genes_with_vector"], "loadavg_1min": os.getloadavg()[0],
        "embedding": a.obsm["X_scelmo"],
    }


def vector_agreement(genes: list[str]) -> dict[str, float]:
    """Row cosine between the shipped and the model's vectors over this gene set's texts."""
    from scelmo_local.knowledge import LocalGeneKnowledge
    from scelmo_local.precomputed import shipped

    texts = list(LocalGeneKnowledge().gene_texts(genes).values())
    table = shipped()
    rows = table.rows(texts)
    return {"n_texts": len(texts), "n_shipped": int((rows >= 0).sum()),
            "row_cosine_min_in_file": table.meta["row_cosine_min"],
            "row_cosine_mean_in_file": table.meta["row_cosine_mean"]}


#: Model-path variants timed on a sample of texts (exact vectors; spinning on is the old default).
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "spin, bs32 (default)": {},
    "no spin, bs32": {"spin": False},
    "no spin, 1 thread": {"spin": False, "threads": 1},
    "no spin, bs8": {"spin": False, "batch_size": 8},
    "no spin, bs128": {"spin": False, "batch_size": 128},
}


def model_options(genes: list[str], n: int, repeats: int) -> list[dict[str, Any]]:
    """Texts/s of the model itself (no shipped vectors, no cache) under session/batch options, alternating."""
    from scelmo_local.embedder import LocalMiniLM
    from scelmo_local.knowledge import LocalGeneKnowledge

    texts = list(LocalGeneKnowledge().gene_texts(genes).values())
    sample = [texts[i] for i in np.random.default_rng(1).choice(len(texts), min(n, len(texts)), replace=False)]
    out = []
    ref = None
    for rep in range(repeats):
        for name, opts in MODEL_OPTIONS.items():
            emb = LocalMiniLM(precomputed=False, **opts)
            emb.embed_batch(sample[:4])  # session start is not what is compared here
            c0, t0 = time.process_time(), time.perf_counter()
            V = emb.embed(sample, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            ref = V if ref is None else ref
            out.append({"options": name, "repeat": rep, "texts": len(sample), "wall_s": wall, "texts_per_s": len(sample) / wall,
                        "texts_per_cpu_s": len(sample) / cpu, "max_abs_diff_vs_first": float(np.abs(V - ref).max()),
                        "loadavg_1min": os.getloadavg()[0]})
            print(json.dumps(out[-1]), flush=True)
    return out


QUALITY_COLS = ["ari", "nmi", "ari_mean5", "asw_label", "accuracy", "macro_f1"]


def compare_zeroshot(old: Path, new: Path, out: Path) -> str:
    """Side-by-side zero-shot metrics (old path vs new default) and gene-vector row cosine per dataset."""
    import pandas as pd

    import scelmo

    a, b = pd.read_csv(old / "results.csv"), pd.read_csv(new / "results.csv")
    keep = a["family"].isin(["scelmo", "ablation", "control"]) & ~a["method"].isin(["tfidf"])
    a = a[keep & a["method"].isin(b["method"])]
    rows = []
    for _, r in a.iterrows():
        m = b[(b["dataset"] == r["dataset"]) & (b["method"] == r["method"])]
        if m.empty:
            continue
        row = {"dataset": r["dataset"], "method": r["method"]}
        for c in QUALITY_COLS:
            if c in a.columns:
                row[f"{c}_old"], row[f"{c}_new"] = r[c], m.iloc[0][c]
        rows.append(row)
    df = pd.DataFrame(rows)
    # gene-vector row cosine per dataset, and a noise floor: the same pipeline on the exact
    # vectors perturbed at random to the shipped vectors' row cosine (5 seeds)
    import zeroshot as zs

    from scelmo.genes import GeneEmbeddings

    cos_lines, floor_rows = [], []
    for name, loader in (("pbmc68k", zs.load_pbmc68k), ("pbmc68k_sim", zs.load_pbmc68k_sim)):
        if name not in set(df["dataset"]):
            continue
        ds = loader()
        genes = list(map(str, ds.adata.var_names))
        g_old = scelmo.tl.embed_genes(genes=genes, config={"embed.options": {"precomputed": False}}, progress=False)
        g_new = scelmo.tl.embed_genes(genes=genes, progress=False)
        common = [g for g in g_old.genes if g in g_new]
        V_old, V_new = g_old.aligned(common)[0], g_new.aligned(common)[0]
        cos = np.sum(V_old * V_new, axis=1)
        moved = cos < 1 - 1e-6
        cos_lines.append(f"{name}: {len(common)} gene vectors, {int(moved.sum())} from the shipped table; row cosine "
                         f"old vs new over those: min {cos[moved].min():.5f}, mean {cos[moved].mean():.5f}")
        c = float(cos[moved].mean())
        r = zs.Runner(ds, floor_rows)
        tables = {"old": g_old, "new": g_new}
        for seed in range(1, 6):
            rng = np.random.default_rng(seed)
            n = rng.normal(size=V_old.shape)
            n -= np.sum(n * V_old, axis=1, keepdims=True) * V_old  # orthogonal to each row
            n /= np.linalg.norm(n, axis=1, keepdims=True)
            V = np.where(moved[:, None], V_old + np.sqrt(1 / c**2 - 1) * n, V_old)  # same rows, same cosine
            tables[f"noise-{seed}"] = GeneEmbeddings(common, (V / np.linalg.norm(V, axis=1, keepdims=True)).astype(np.float32),
                                                     {"embed_model": f"exact + noise at row cosine {c:.5f}"})
        for label, table in tables.items():
            r.run(label, "noise-floor", zs.scelmo_fn(ds, table, {}), metric="cosine")
    fl = pd.DataFrame(floor_rows)
    floor_md = ["| dataset | metric | old | new | new - old | noise: mean (min..max) of noisy - old |", "|---|---|---|---|---|---|"]
    for d, g in fl.groupby("dataset", sort=False):
        for m in ["ari", "nmi", "ari_mean5", "accuracy", "macro_f1", "asw_label"]:
            o, nw = g.loc[g.method == "old", m].iloc[0], g.loc[g.method == "new", m].iloc[0]
            nz = g.loc[g.method.str.startswith("noise"), m].to_numpy() - o
            floor_md.append(f"| {d} | {m} | {o:.3f} | {nw:.3f} | {nw - o:+.3f} | {nz.mean():+.3f} ({nz.min():+.3f}..{nz.max():+.3f}) |")
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "zeroshot_old_vs_new.csv", index=False)
    cols = [c for c in df.columns]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |" for r in df[cols].itertuples(index=False)]
    fl.to_csv(out / "zeroshot_noise_floor.csv", index=False)
    text = "\n".join(["# Zero-shot benchmark: old path vs new default", "",
                       "old: `embed.options = {precomputed: false, spin: true}` (every text through the model, as before); "
                       "new: the default (shipped vectors).", "",
                       "## From the two `benchmarks/zeroshot.py` runs", "", *md, "",
                       "## Gene vectors", "", *[f"- {x}" for x in cos_lines], "",
                       "## Noise floor (default pipeline, this process)", "",
                       "`noise`: the exact vectors of the same genes, each moved in a random direction to the shipped "
                       "vectors' mean row cosine (5 seeds). A change of new vs old inside that range is what any "
                       "perturbation of this size does, not a loss of knowledge.", "", *floor_md]) + "\n"
    (out / "zeroshot_old_vs_new.md").write_text(text, encoding="utf-8")
    return text


def _md(rows: list[dict[str, Any]]) -> str:
    cols = ["config", "repeat", "total_s", "describe_s", "embed_texts_s", "rest_s", "texts", "texts_from_shipped_table",
            "texts_per_s", "cpu_s", "loadavg_1min"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--other-genes", type=int, default=800, help="non-protein-coding genes among --genes")
    p.add_argument("--cells", type=int, default=2_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--configs", default="after,before", help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--before-repeats", type=int, default=1, help="repeats of the slow model-only configs")
    p.add_argument("--threads", type=int, default=None, help="embed.options.threads (default: onnxruntime's)")
    p.add_argument("--options-sample", type=int, default=300, help="texts for the model-options table (0: skip)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cold_start")
    p.add_argument("--compare-zeroshot", nargs=2, type=Path, metavar=("OLD", "NEW"),
                   help="only compare two benchmarks/zeroshot.py result folders (old path, new default)")
    a = p.parse_args(argv)
    if a.compare_zeroshot:
        print(compare_zeroshot(*a.compare_zeroshot, a.out))
        return 0
    t_start = time.perf_counter()
    genes = gene_set(a.genes, a.other_genes)
    adata = make_adata(genes, a.cells)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    rows: list[dict[str, Any]] = []
    embeddings: dict[str, np.ndarray] = {}
    for rep in range(a.repeats):
        for name in configs:
            if CONFIGS[name] and rep >= a.before_repeats:
                continue
            r = run_once(adata, CONFIGS[name], a.threads)
            embeddings.setdefault(name, r.pop("embedding"))
            r.pop("embedding", None)
            rows.append({"config": name, "repeat": rep, **r})
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}), flush=True)
    summary: dict[str, Any] = {}
    for name in configs:
        mine = [r for r in rows if r["config"] == name]
        summary[name] = {"total_s_median": float(np.median([r["total_s"] for r in mine])),
                         "embed_texts_s_median": float(np.median([r["embed_texts_s"] for r in mine])),
                         "runs": len(mine)}
    if "before" in summary and "after" in summary:
        summary["speedup_total"] = summary["before"]["total_s_median"] / summary["after"]["total_s_median"]
        e_b, e_a = embeddings["before"], embeddings["after"]
        num = np.sum(e_b * e_a, axis=1)
        den = np.linalg.norm(e_b, axis=1) * np.linalg.norm(e_a, axis=1)
        summary["cell_vector_cosine_before_vs_after"] = {"min": float(np.min(num / den)), "median": float(np.median(num / den))}
    summary["target_s"] = TARGET_S
    if "after" in summary:
        summary["after_meets_target"] = summary["after"]["total_s_median"] <= TARGET_S
    agreement = vector_agreement(genes)
    opt_rows = model_options(genes, a.options_sample, 2) if a.options_sample else []
    a.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    import scelmo

    run = {
        "command": "python benchmarks/cold_start.py " + " ".join(portable_argv(sys.argv[1:] if argv is None else argv)),
        "n_genes": a.genes, "n_other_genes": a.other_genes, "n_cells": a.cells, "configs": {c: CONFIGS[c] for c in configs},
        "versions": {"scelmo": scelmo.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "loadavg_end": os.getloadavg(),
        "seconds": time.perf_counter() - t_start, "summary": summary, "shipped_vectors": agreement, "rows": rows,
        "model_options": opt_rows,
    }
    (a.out / "results.json").write_text(json.dumps(run, indent=1, default=float), encoding="utf-8")
    lines = [
        "# Cold start: first `embed_cells` on 20,000 genes, fresh cache", "",
        f"Command: `{run['command']}` ({run['machine']}, shared; 1-min load average per run in the table).", "",
        f"{a.genes:,} genes ({a.genes - a.other_genes:,} protein-coding + {a.other_genes:,} other, seed 0), "
        f"{a.cells:,} synthetic cells. `before` = every text through the model (the previous default); "
        "`model-nospin` = every text through the model, no thread spinning (exact vectors); "
        "`after` = the new default (shipped vectors for bundled protein-coding texts, the model for the rest).", "",
        _md(rows), "",
        "Medians: " + ", ".join(f"{k} {v['total_s_median']:.1f} s" for k, v in summary.items() if isinstance(v, dict) and "total_s_median" in v)
        + (f"; speed-up before/after {summary['speedup_total']:.1f}x" if "speedup_total" in summary else "")
        + f"; target <= {TARGET_S:.0f} s: {'met' if summary.get('after_meets_target') else 'NOT met'}.", "",
        f"Shipped vectors: {agreement['n_shipped']:,} of this gene set's {agreement['n_texts']:,} texts; row cosine to the "
        f"model's vectors over the whole shipped file: mean {agreement['row_cosine_mean_in_file']:.5f}, "
        f"min {agreement['row_cosine_min_in_file']:.5f}.",
    ]
    if "cell_vector_cosine_before_vs_after" in summary:
        cc = summary["cell_vector_cosine_before_vs_after"]
        lines.append(f"Cell vectors, before vs after: cosine median {cc['median']:.5f}, min {cc['min']:.5f}.")
    if opt_rows:
        lines += ["", f"Model path alone (exact vectors, no cache), {opt_rows[0]['texts']} random texts of this gene set, "
                  "options alternating, 2 rounds:", "",
                  "| options | round | texts/s | texts per CPU-s | max abs diff vs first | load avg |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['options']} | {r['repeat']} | {r['texts_per_s']:.1f} | {r['texts_per_cpu_s']:.1f} | "
                  f"{r['max_abs_diff_vs_first']:.1e} | {r['loadavg_1min']:.1f} |" for r in opt_rows]
    (a.out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
