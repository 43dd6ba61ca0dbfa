"""Does telling the embedder which cell types a gene marks raise the knowledge gain?

An experiment behind docs/benchmarks.md ("Gene texts that name the cell types a gene
marks"). Each gene that a curated marker set or a Cell Ontology definition names as a marker
(1,048 genes) gets the text ``"<name>. Marker of <up to 5 cell types>. <GO terms ...>"``
instead of the compact description; the other genes keep theirs. Both tables go through the
zero-shot benchmark's default pipeline, each beside 5 shuffles of itself (the knowledge
control), on the five datasets of ``benchmarks/zeroshot.py``: ARI / NMI (5 Leiden seeds),
10-NN accuracy, macro-F1 and label ASW, with the gain over the shuffles.

    .venv-bench/bin/python benchmarks/marker_descriptions.py [--datasets pbmc68k,...] [--max-types 5]

Writes ``benchmarks/results/marker_descriptions/results.csv`` and ``results.md``; with
``--similarity-only``, only ``similarity.md``: how close the vectors of marker genes of
different cell types are (the islet hormones' against blood lineage markers').
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import zeroshot as Z  # noqa: E402  (the zero-shot benchmark's loaders, pipeline and metrics)
from _runinfo import portable_argv  # noqa: E402

OUT = HERE / "results" / "marker_descriptions"
METRICS = ("ari_mean5", "nmi_mean5", "accuracy", "macro_f1", "asw_label")


def marker_names(describer) -> dict[str, list[str]]:
    """``{symbol: [cell type, ...]}`` from the curated sets, then the ontology's definitions."""
    marks: dict[str, list[str]] = {}
    for k in [*describer.cell_type_markers(), *describer.cell_type_definition_markers()]:
        for g in k.markers:
            names = marks.setdefault(g, [])
            if k.name.lower() not in (n.lower() for n in names):
                names.append(k.name)
    return marks


#: Marker genes of different cell types of one tissue (a Baron table's rows compared).
MARKER_GROUPS = {
    "islet hormones (alpha, beta, delta, PP, epsilon cells)": ["GCG", "INS", "SST", "PPY", "GHRL"],
    "acinar enzymes (all of one type, acinar cells: here closeness helps)": ["PRSS1", "CPA1", "CELA3A", "CTRB1", "PNLIP"],
    "blood lineage markers (T, B, monocyte, NK, platelet)": ["CD3E", "MS4A1", "CD14", "NKG7", "PPBP"],
}


def marker_similarity(out: Path) -> str:
    """Cosine of the conditioned vectors of marker genes of *different* cell types, against
    random gene pairs: genes of one function (hormones) that mark different types lie close,
    so the types' cells do too (written to ``similarity.md``)."""
    import numpy as np

    from scelmo.datasets import baron2016, default_data_dir
    from scelmo.tl import embed_genes

    ge = embed_genes(baron2016(str(default_data_dir())), progress=False)
    V, _ = ge.aligned(ge.genes, conditioned=True)
    V = V / np.linalg.norm(V, axis=1, keepdims=True)
    pairs = np.random.default_rng(0).integers(0, len(ge.genes), (20000, 2))
    bg = (V[pairs[:, 0]] * V[pairs[:, 1]]).sum(1)
    idx = {g: i for i, g in enumerate(ge.genes)}
    lines = ["# Cosine of marker genes (Baron's conditioned table)", "",
             "| genes | mean pair cosine | pairs |", "|---|---|---|",
             f"| 20,000 random gene pairs | {bg.mean():.3f} (SD {bg.std():.3f}, 99th percentile "
             f"{np.quantile(bg, 0.99):.3f}) | |"]
    for label, genes in MARKER_GROUPS.items():
        rows = V[[idx[g] for g in genes if g in idx]]
        S = rows @ rows.T
        iu = np.triu_indices(len(rows), 1)
        lines.append(f"| {label}: {', '.join(genes)} | {S[iu].mean():.3f} | {', '.join(f'{v:.2f}' for v in S[iu])} |")
    text = "\n".join(lines) + "\n"
    (out / "similarity.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    from scelmo_local.knowledge import compact_text, human_table

    from scelmo.config import get_settings
    from scelmo.genes import GeneEmbeddings
    from scelmo.knowledge import roles

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="pbmc68k,pbmc68k_sim,muraro,baron,kang",
                    help="also: baron_mouse (held out: not in the default list)")
    ap.add_argument("--max-types", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--similarity-only", action="store_true",
                    help="only the marker-gene cosine table (similarity.md), no benchmark")
    ap.add_argument("--dims", default="",
                    help="instead of the texts: append one dimension per known cell type (1/sqrt(types) for each "
                         "gene it marks) to the conditioned vectors, at these comma-separated weights (dims.md)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    if args.similarity_only:
        print(marker_similarity(args.out))
        return 0
    settings = get_settings()
    marks = marker_names(roles.description_writer(settings))
    table = human_table()

    def text(g: str) -> str:
        base = compact_text(table[g])
        types = marks.get(g, [])[: args.max_types]
        if not types:
            return base
        name, _, rest = base.partition(". ")
        return f"{name}. Marker of {', '.join(types)}. {rest}"

    if args.dims:
        return marker_dims(args, marks, [float(w) for w in args.dims.split(",")])
    loaders = _loaders()
    rows: list[dict] = []
    t_all = time.perf_counter()
    for name in args.datasets.split(","):
        ds = loaders[name]()
        ge, _ = Z.gene_table(ds, "compact")
        changed = [g for g in ge.genes if g in marks and g in table]
        vec = ge.vectors.copy()
        pos = {g: i for i, g in enumerate(ge.genes)}
        vec[[pos[g] for g in changed]] = roles.embed_texts(settings, [text(g) for g in changed], progress=False)
        marked = GeneEmbeddings(ge.genes, vec, {"embed_model": "marker-texts"})
        print(f"[{name}] {len(changed)} of {len(ge)} genes re-described", flush=True)
        r = Z.Runner(ds, rows)
        for tag, tab in (("base", ge), ("marked", marked)):
            r.run(tag, "x", Z.scelmo_fn(ds, tab, {}), metric="cosine")
            for i in range(1, Z.N_SHUFFLES + 1):
                r.run(f"{tag}-shuffled-{i}", "x", Z.scelmo_fn(ds, Z.shuffled_table(tab, i), {}), metric="cosine")
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "results.csv", index=False)
    text = report(df, f"`benchmarks/marker_descriptions.py {' '.join(portable_argv(sys.argv[1:]))}`, "
                      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t_all:.0f} s.")
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def _loaders() -> dict:
    from scelmo.datasets import default_data_dir

    d = str(default_data_dir())
    return {"pbmc68k": Z.load_pbmc68k, "pbmc68k_sim": Z.load_pbmc68k_sim, "kang": lambda: Z.load_kang(d, None),
            "muraro": lambda: Z.load_muraro(d), "baron": lambda: Z.load_baron(d),
            "baron_mouse": lambda: Z.load_baron_mouse(d)}


def marker_dims(args: argparse.Namespace, marks: dict[str, list[str]], weights: list[float]) -> int:
    """The conditioned text vectors with ``weight x M`` beside them, M: genes x known cell types
    (1/sqrt(n) in each of a gene's n types), embedded unconditioned (the text block already is),
    each beside 5 shuffles of itself; ``dims.csv`` / ``dims.md``."""
    import numpy as np

    from scelmo.genes import GeneEmbeddings

    types = sorted({t for ts in marks.values() for t in ts})
    col = {t: j for j, t in enumerate(types)}
    rows: list[dict] = []
    t_all = time.perf_counter()
    for name in args.datasets.split(","):
        ds = _loaders()[name]()
        ge, _ = Z.gene_table(ds, "compact")
        E, _ = ge.aligned(ge.genes, conditioned=True)
        M = np.zeros((len(ge.genes), len(types)), np.float32)
        for i, g in enumerate(ge.genes):
            for t in marks.get(g, []):
                M[i, col[t]] = 1.0 / np.sqrt(len(marks[g]))
        M = M[:, M.any(axis=0)]
        r = Z.Runner(ds, rows)
        for w in weights:
            tab = GeneEmbeddings(ge.genes, np.hstack([E, w * M]).astype(np.float32), {"embed_model": f"dims-{w}"})
            r.run(f"dims{w:g}", "x", Z.scelmo_fn(ds, tab, {}, condition=False), metric="cosine")
            for i in range(1, Z.N_SHUFFLES + 1):
                r.run(f"dims{w:g}-shuffled-{i}", "x", Z.scelmo_fn(ds, Z.shuffled_table(tab, i), {}, condition=False),
                      metric="cosine")
        pd.DataFrame(rows).to_csv(args.out / "dims.csv", index=False)
    df = pd.DataFrame(rows).assign(table=lambda d: d["method"].str.split("-").str[0],
                                   shuffled=lambda d: d["method"].str.contains("shuffled"))
    lines = ["# One dimension per known cell type beside the conditioned gene vectors", "",
             f"`benchmarks/marker_descriptions.py {' '.join(portable_argv(sys.argv[1:]))}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t_all:.0f} s. "
             "Gain = the table minus the mean of its 5 shuffles ('yes': above all 5).", ""]
    for m in METRICS:
        real = df[~df["shuffled"]].pivot_table(index="dataset", columns="table", values=m)
        sh = df[df["shuffled"]].groupby(["dataset", "table"])[m].agg(["mean", "max"]).unstack()
        tabs = list(real.columns)
        lines += [f"## {m}", "", "| dataset | " + " | ".join(f"{t} | gain | beyond" for t in tabs) + " |",
                  "|---|" + "---|---|---|" * len(tabs)]
        for d in real.index:
            cells = [f"{real.loc[d, t]:.3f} | {real.loc[d, t] - sh['mean'].loc[d, t]:+.3f} | "
                     f"{'yes' if real.loc[d, t] > sh['max'].loc[d, t] else 'no'}" for t in tabs]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    (args.out / "dims.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def report(df: pd.DataFrame, how: str) -> str:
    """The results as markdown: per metric, each table's score and its gain over its shuffles."""
    df = df.assign(table=df["method"].str.split("-").str[0], shuffled=df["method"].str.contains("shuffled"))
    lines = ["# Gene texts that name the cell types a gene marks", "",
             f"{how} Gain = the table minus the mean of its 5 shuffles; 'beyond' = above all 5.", ""]
    for m in METRICS:
        real = df[~df["shuffled"]].pivot_table(index="dataset", columns="table", values=m)
        sh = df[df["shuffled"]].groupby(["dataset", "table"])[m].agg(["mean", "max"]).unstack()
        lines += [f"## {m}", "", "| dataset | base | base gain | marked | marked gain | marked beyond the shuffles |",
                  "|---|---|---|---|---|---|"]
        for d in real.index:
            lines.append(f"| {d} | {real.loc[d, 'base']:.3f} | {real.loc[d, 'base'] - sh['mean'].loc[d, 'base']:+.3f} | "
                         f"{real.loc[d, 'marked']:.3f} | {real.loc[d, 'marked'] - sh['mean'].loc[d, 'marked']:+.3f} | "
                         f"{'yes' if real.loc[d, 'marked'] > sh['max'].loc[d, 'marked'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
