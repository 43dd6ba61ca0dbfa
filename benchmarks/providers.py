"""Throughput of the LLM path: 20,000 genes described and embedded through litellm.

A loopback server (``python -m scelmo.testing.server``, its own process) answers
every request after an artificial latency (default 200 ms), like a remote API. For
each concurrency (1, 8, 32) the benchmark describes the genes (one request per gene)
and embeds the descriptions (batches of 128 per request), from an empty cache, and
reports the wall time beside the latency floor measured in the same run:

    floor = ceil(requests / concurrency) x latency

(the wall time a client with zero overhead would need); ``wall / floor`` is the
client's overhead factor. Describing 20,000 genes one at a time takes 20,000 x 0.2 s
= 67 min, so at concurrency 1 the describe stage runs on ``--c1-genes`` genes (1,000
by default) and the table says so; embedding always runs on all genes.

A last stage kills a run with SIGKILL mid-way and resumes it (the CLI, as a user
would), counting items the server answered twice.

    python benchmarks/providers.py                      # full run (~15 min on 2 cores)
    python benchmarks/providers.py --genes 2000 --quick # smoke run

Writes ``benchmarks/results/providers.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"


class Server:
    """The fake provider in a separate process."""

    def __init__(self, latency: float, dim: int = 64) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scelmo.testing.server", "--latency", str(latency), "--dim", str(dim)],
            stdout=subprocess.PIPE, text=True,
        )
        self.port = int(self.proc.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base + "/stats", timeout=10) as r:  # loopback only
            return json.load(r)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def gene_names(n: int) -> list[str]:
    from scelmo_local.knowledge import human_table

    table = human_table()
    names = sorted(s for s, r in table.items() if r["type"] == "protein-coding")  # real symbols
    if len(names) < n:
        raise SystemExit(f"only {len(names)} symbols available")
    step = len(names) / n
    return [names[int(i * step)] for i in range(n)]


def run_stage(genes: list[str], concurrency: int, latency: float, embed_genes: list[str], cache: Path) -> dict:
    from scelmo import get_settings
    from scelmo.knowledge import roles
    from scelmo.knowledge.descriptions import describe

    srv = Server(latency)
    try:
        s = get_settings({
            "describe.model": "openai/gpt-4o-mini", "describe.api_base": srv.base + "/v1",
            "describe.options": {"concurrency": concurrency},
            "embed.model": "openai/text-embedding-3-small", "embed.api_base": srv.base + "/v1",
            "embed.options": {"concurrency": concurrency, "batch_size": 128},
            "cache.path": str(cache),
        })
        describe(["WARMUP"], config={**s.model_dump(), "cache": {"enabled": False}})  # import, connect
        warm = srv.stats()["requests"].get("/v1/chat/completions", 0)
        t0 = time.perf_counter()
        res = describe(genes, config=s, progress=True)
        t_desc = time.perf_counter() - t0
        d_stats = srv.stats()
        # texts to embed: the describe answers plus (for the small c=1 describe) the same
        # kind of text for the other genes, so embedding always covers every gene
        texts = [res.texts.get(g) or f"{g} is described here by a fake model." for g in embed_genes]
        emb = roles.embedder(s)
        t0 = time.perf_counter()
        roles.embed_texts(s, texts, using=emb, progress=True)
        t_emb = time.perf_counter() - t0
        stats = srv.stats()
    finally:
        srv.stop()
    n_desc = d_stats["requests"].get("/v1/chat/completions", 0) - warm
    n_emb = stats["requests"].get("/v1/embeddings", 0)
    floor_d = math.ceil(n_desc / concurrency) * latency
    floor_e = math.ceil(n_emb / concurrency) * latency
    return {
        "concurrency": concurrency,
        "describe_genes": len(genes),
        "describe_requests": n_desc,
        "describe_wall_s": round(t_desc, 2),
        "describe_floor_s": round(floor_d, 2),
        "describe_overhead": round(t_desc / floor_d, 3) if floor_d else None,
        "describe_usage": res.usage.as_dict(),
        "embed_texts": len(texts),
        "embed_requests": n_emb,
        "embed_wall_s": round(t_emb, 2),
        "embed_floor_s": round(floor_e, 2),
        "embed_overhead": round(t_emb / floor_e, 3) if floor_e else None,
        "max_in_flight": stats["max_in_flight"],
        "duplicates": stats["duplicates"],
    }


def kill_and_resume(n: int, concurrency: int, latency: float, workdir: Path) -> dict:
    genes = gene_names(n)
    (workdir / "genes.txt").write_text("\n".join(genes))
    cache = workdir / "kill.sqlite"
    env = {**os.environ, "SCELMO_CACHE__PATH": str(cache), "SCELMO_NO_PROGRESS": "1"}
    srv = Server(latency)
    args = [sys.executable, "-m", "scelmo", "--set", f'describe.api_base="{srv.base}/v1"',
            "--set", f"describe.options.concurrency={concurrency}", "describe", "genes",
            "--from", str(workdir / "genes.txt"), "--model", "openai/gpt-4o-mini", "-o", str(workdir / "k.tsv")]
    try:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while srv.stats()["answered_items"] < n // 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = srv.stats()
        time.sleep(latency * 2)  # requests in flight at the kill finish server-side
        after_kill = srv.stats()
        t0 = time.perf_counter()
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        resume_s = time.perf_counter() - t0
        final = srv.stats()
    finally:
        srv.stop()
    import sqlite3

    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT COUNT(*) FROM entries WHERE role='describe'").fetchone()[0]
    return {
        "genes": n, "concurrency": concurrency,
        "answered_at_kill": at_kill["answered_items"],
        "answered_incl_in_flight": after_kill["answered_items"],
        "answered_total": final["answered_items"],
        "duplicates": final["duplicates"],
        "resume_wall_s": round(resume_s, 2),
        "resume_stdout": done.stdout.strip().replace(str(workdir), "<tmp>"),
        "cached_rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 8, 1])
    ap.add_argument("--c1-genes", type=int, default=1_000, help="describe genes at concurrency 1")
    ap.add_argument("--quick", action="store_true", help="write results under a temp dir")
    args = ap.parse_args()
    os.environ.setdefault("SCELMO_NO_PROGRESS", "1")
    out_dir = Path(tempfile.mkdtemp()) if args.quick else OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    genes = gene_names(args.genes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            d_genes = genes[: args.c1_genes] if c == 1 else genes
            row = run_stage(d_genes, c, args.latency, genes, Path(tmp) / f"c{c}.sqlite")
            rows.append(row)
            print(json.dumps(row), flush=True)
        kill = kill_and_resume(min(4_000, args.genes), 32, args.latency / 10, Path(tmp))
        print(json.dumps(kill), flush=True)
    result = {"latency_s": args.latency, "genes": args.genes, "runs": rows, "kill_and_resume": kill,
              "machine": os.uname().machine, "cpus": os.cpu_count()}
    (out_dir / "providers.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# LLM path throughput (loopback server, artificial latency)",
        "",
        f"{args.genes:,} genes; {args.latency * 1000:.0f} ms per request; describe = 1 request per gene "
        "(gpt-4o-mini wire format), embed = batches of 128 texts. floor = ceil(requests / concurrency) x latency, "
        "measured in the same run; overhead = wall / floor. Produced by `python benchmarks/providers.py`.",
        "",
        "| concurrency | describe genes | describe requests | describe wall (s) | floor (s) | overhead | "
        "embed texts | embed requests | embed wall (s) | floor (s) | overhead | max in flight | duplicates |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['describe_genes']:,} | {r['describe_requests']:,} | {r['describe_wall_s']} | "
            f"{r['describe_floor_s']} | {r['describe_overhead']} | {r['embed_texts']:,} | {r['embed_requests']} | "
            f"{r['embed_wall_s']} | {r['embed_floor_s']} | {r['embed_overhead']} | {r['max_in_flight']} | "
            f"{r['duplicates']} |"
        )
    c1 = [r for r in rows if r["concurrency"] == 1 and r["describe_genes"] < args.genes]
    if c1:
        r = c1[0]
        lines += ["", f"At concurrency 1 the describe stage ran on {r['describe_genes']:,} genes; 20,000 would take "
                      f"~{r['describe_wall_s'] * args.genes / r['describe_genes'] / 60:.0f} min at the same rate."]
    k = kill
    lines += [
        "",
        "## SIGKILL and resume (CLI, concurrency 32)",
        "",
        f"{k['genes']:,} genes, {args.latency * 100:.0f} ms latency: killed after {k['answered_at_kill']:,} answers "
        f"({k['answered_incl_in_flight']:,} once the requests in flight at the kill had been answered server-side); "
        f"the resumed run ({k['resume_wall_s']} s) printed: `{k['resume_stdout']}`. "
        f"Items answered twice: **{k['duplicates']}** (requests in flight at a hard kill are the only ones a "
        "provider can bill twice: their answers never reached the killed process).",
    ]
    (out_dir / "providers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out_dir / 'providers.md'}")


if __name__ == "__main__":
    main()
