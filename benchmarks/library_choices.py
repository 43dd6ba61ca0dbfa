"""Hand-written or library? Three measured decisions (issue 12).

1. **Metrics**: ``scelmo.metrics`` (dependency-free: iLISI as the median inverse Simpson
   index of k=30 neighbours, silhouettes, graph connectivity) against the scib-metrics
   package (``ilisi_knn``, ``silhouette_batch``, ``graph_connectivity``,
   ``silhouette_label``) on the same real embeddings (zero-shot scelmo, PCA, Harmony and a
   random control) of pbmc68k with semi-synthetic batches and Kang 2018: values, whether
   both rank the embeddings the same way, and seconds.
2. **Retries**: scelmo's ``calls.with_retries`` against the same policy written with
   tenacity and against litellm's own ``num_retries``/``timeout``, on a loopback server
   that rate-limits (``Retry-After: 1``), fails with 500s, or drips its answer one byte per
   0.1 s: requests sent, seconds, outcome.
3. **Test server**: ``scelmo.testing.server.FakeLLMServer`` (standard library) against
   pytest-httpserver (werkzeug) serving the same OpenAI embeddings route: requests per
   second through litellm at concurrency 32, and which wire behaviours each can produce.

Needs the benchmark venv plus ``pip install tenacity pytest-httpserver``::

    .venv-bench/bin/python benchmarks/library_choices.py [--kang-dir DIR] [--sections metrics retries server]

Writes ``benchmarks/results/library_choices/{results.md,results.json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "results" / "library_choices"


# ----------------------------------------------------------------------------- 1. metrics
def _embeddings(ds: Any) -> dict[str, np.ndarray]:
    from zeroshot import SEED, harmony_fn, pca_fn

    import scelmo

    store: dict[str, Any] = {}
    pca, _ = pca_fn(ds, store)()
    out = {"scelmo (zero-shot)": scelmo.tl.embed_cells(ds.adata, layer="counts", copy=True,
                                                        progress=False).obsm["X_scelmo"],
           "PCA 50": pca, "Harmony": harmony_fn(ds, pca)()[0],
           "random (control)": np.random.default_rng(SEED).standard_normal((ds.adata.n_obs, 50))}
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _ours(emb: np.ndarray, b: np.ndarray, y: np.ndarray) -> dict[str, float]:
    import scelmo.metrics as M

    return {"ilisi": M.ilisi(emb, b, k=30), "asw_batch": M.silhouette_batch(emb, b, y, metric="euclidean"),
            "graph_connectivity": M.graph_connectivity(emb, y, k=15),
            "asw_label": M.silhouette(emb, y, metric="euclidean")}


def _scib(emb: np.ndarray, b: np.ndarray, y: np.ndarray) -> dict[str, float]:
    import scib_metrics as sm
    from scib_metrics.nearest_neighbors import pynndescent

    nn90 = pynndescent(emb, n_neighbors=90, random_state=0)
    return {"ilisi": float(sm.ilisi_knn(nn90, b, scale=False)),
            "asw_batch": float(sm.silhouette_batch(emb, y, b)),
            "graph_connectivity": float(sm.graph_connectivity(nn90.subset_neighbors(15), y)),
            "asw_label": float(sm.silhouette_label(emb, y, rescale=False))}


def metrics_section(kang_dir: str | None) -> dict[str, Any]:
    from scipy.stats import spearmanr
    from zeroshot import load_kang, load_pbmc68k_sim

    rows: list[dict[str, Any]] = []
    loaders = [("pbmc68k_sim", load_pbmc68k_sim)]
    if kang_dir:
        loaders.append(("kang", lambda: load_kang(kang_dir, None)))
    for name, load in loaders:
        ds = load()
        embs = _embeddings(ds)
        s = ds.score
        b = ds.adata.obs[ds.batch].astype(str).to_numpy()[s]
        y = ds.adata.obs[ds.label].astype(str).to_numpy()[s]
        for method, emb in embs.items():
            for impl, fn in (("scelmo.metrics", _ours), ("scib-metrics", _scib)):
                t = time.perf_counter()
                vals = fn(emb[s], b, y)
                rows.append({"dataset": name, "embedding": method, "implementation": impl, **vals,
                             "seconds": time.perf_counter() - t})
            print(f"  metrics {name} {method}: done", flush=True)
    agreement = []
    for name in sorted({r["dataset"] for r in rows}):
        for m in ("ilisi", "asw_batch", "graph_connectivity", "asw_label"):
            ours = [r[m] for r in rows if r["dataset"] == name and r["implementation"] == "scelmo.metrics"]
            theirs = [r[m] for r in rows if r["dataset"] == name and r["implementation"] == "scib-metrics"]
            agreement.append({"dataset": name, "metric": m, "spearman": float(spearmanr(ours, theirs)[0]),
                              "same_best": int(np.argmax(ours) == np.argmax(theirs)),
                              "max_abs_diff": float(np.max(np.abs(np.subtract(ours, theirs))))})
    return {"rows": rows, "agreement": agreement}


# ----------------------------------------------------------------------------- 2. retries
async def _tenacity_retries(call: Any, retries: int, timeout: float, base: float, max_delay: float) -> Any:
    """The same policy as scelmo.llm.calls.with_retries, written with tenacity."""
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

    from scelmo.errors import TransientProviderError

    rng = random.Random(0)

    def wait(state: Any) -> float:
        exc = state.outcome.exception()
        if getattr(exc, "retry_after", None) is not None:
            return min(max_delay, max(0.0, exc.retry_after))
        return rng.uniform(0, min(max_delay, base * 2 ** (state.attempt_number - 1)))

    async for attempt in AsyncRetrying(stop=stop_after_attempt(retries + 1), wait=wait, reraise=True,
                                       retry=retry_if_exception_type(TransientProviderError)):
        with attempt:
            try:
                return await asyncio.wait_for(call(), timeout)
            except asyncio.TimeoutError:
                raise TransientProviderError("deadline") from None


def retries_section() -> list[dict[str, Any]]:
    from scelmo_litellm import _lib

    from scelmo.llm import calls

    litellm = _lib.litellm()  # through scelmo's import: no cost-map fetch, no start-up threads
    from scelmo.testing.server import FakeLLMServer

    cases = [("429 Retry-After: 1, twice", "openai/ratelimit1s-2", 10.0),
             ("500, twice", "openai/error500-2", 10.0),
             ("drips 1 byte / 0.1 s (deadline 2 s)", "openai/drip", 2.0)]
    with FakeLLMServer() as srv:  # warm-up: litellm's clients and imports, outside the timings
        calls.run_sync(litellm.acompletion(model="openai/gpt-4o-mini", api_base=srv.openai_base, api_key="none",
                                           messages=[{"role": "user", "content": "Describe gene: CD3E."}]))
    rows = []
    for label, model, timeout in cases:
        for impl in ("scelmo with_retries", "tenacity", "litellm num_retries"):
            with FakeLLMServer(drip_interval=0.1) as srv:
                base = srv.openai_base
                kw = {"model": model, "api_base": base, "api_key": "none",
                      "messages": [{"role": "user", "content": "Describe gene: CD3E."}]}

                async def one(kw: dict[str, Any] = kw, impl: str = impl, timeout: float = timeout,
                              model: str = model, base: str = base) -> Any:
                    if impl == "litellm num_retries":
                        return await litellm.acompletion(**kw, num_retries=3, timeout=timeout)
                    try:
                        return await litellm.acompletion(**kw, num_retries=0, timeout=timeout)
                    except Exception as exc:  # noqa: BLE001 - mapped as the plugin maps it
                        raise _lib.map_error(exc, model=model, api_base=base, secrets=[]) from None

                t = time.perf_counter()
                try:
                    if impl == "scelmo with_retries":
                        policy = calls.RetryPolicy(retries=3, base_delay=0.5, max_delay=30.0, timeout=timeout)
                        calls.run_sync(calls.with_retries(one, policy))
                    elif impl == "tenacity":
                        calls.run_sync(_tenacity_retries(one, 3, timeout, 0.5, 30.0))
                    else:
                        calls.run_sync(asyncio.wait_for(one(), 120))
                    outcome = "answered"
                except Exception as exc:  # noqa: BLE001
                    outcome = f"{type(exc).__name__}"
                secs = time.perf_counter() - t
                rows.append({"case": label, "implementation": impl, "requests": srv.total_requests,
                             "seconds": round(secs, 2), "outcome": outcome})
                print(f"  retries {label} / {impl}: {rows[-1]}", flush=True)
    return rows


# ----------------------------------------------------------------------------- 3. server
def _throughput(base: str, n: int = 1000, concurrency: int = 32) -> float:
    from scelmo_litellm import _lib

    from scelmo.llm import calls

    litellm = _lib.litellm()

    async def go() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await litellm.aembedding(model="openai/text-embedding-3-small", api_base=base,
                                         api_key="none", input=[f"text {i}"])

        await asyncio.gather(*(one(i) for i in range(n)))

    calls.run_sync(go())  # warm-up: connection pool, imports
    t = time.perf_counter()
    calls.run_sync(go())
    return n / (time.perf_counter() - t)


def server_section() -> list[dict[str, Any]]:
    from pytest_httpserver import HTTPServer
    from werkzeug.wrappers import Response

    from scelmo.testing.server import FakeLLMServer, fake_vector

    rows = []
    with FakeLLMServer() as srv:
        rows.append({"server": "scelmo FakeLLMServer (http.server, threads)",
                     "requests_per_s": round(_throughput(srv.openai_base), 1)})

    def handler(request: Any) -> Response:
        body = request.get_json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, 16)} for i, t in enumerate(texts)]
        return Response(json.dumps({"object": "list", "data": data, "model": body["model"],
                                    "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
                        content_type="application/json")

    hs = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    hs.expect_request("/v1/embeddings", method="POST").respond_with_handler(handler)
    hs.start()
    try:
        rows.append({"server": "pytest-httpserver (werkzeug, threaded)",
                     "requests_per_s": round(_throughput(hs.url_for("/v1")), 1)})
    finally:
        hs.clear()
        hs.stop()
    return rows


# ----------------------------------------------------------------------------- report
def _md(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(f(r.get(c, "")) for c in cols) + " |" for r in rows]


def main() -> None:
    from zeroshot import _default_kang_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kang-dir", default=None)
    ap.add_argument("--sections", nargs="+", default=["metrics", "retries", "server"],
                    choices=["metrics", "retries", "server"],
                    help="run these sections; the others are kept from an earlier results.json")
    args = ap.parse_args()
    kang = args.kang_dir or _default_kang_dir()
    kang = str(kang) if kang and Path(kang).exists() else None
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    old = OUT / "results.json"
    res: dict[str, Any] = json.loads(old.read_text()) if old.exists() else {}
    for name, fn in (("metrics", lambda: metrics_section(kang)), ("retries", retries_section),
                     ("server", server_section)):
        if name in args.sections:
            res[name] = fn()
            tmp = OUT / ".results.json.tmp"
            tmp.write_text(json.dumps(res, indent=1, default=float))
            os.replace(tmp, old)
    res["run"] = {"command": " ".join(["benchmarks/library_choices.py", *sys.argv[1:]]),
                  "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                  "seconds": round(time.perf_counter() - t0, 1)}
    old.write_text(json.dumps(res, indent=1, default=float))
    md = ["# Hand-written or library: measurements", "", f"Command: `{res['run']['command']}` "
          f"({res['run']['machine']}, {res['run']['seconds']} s).", ""]
    if "metrics" in res:
        md += ["## 1. Metrics: scelmo.metrics vs scib-metrics (same embeddings, same cells)", ""]
        md += _md(res["metrics"]["rows"], ["dataset", "embedding", "implementation", "ilisi", "asw_batch",
                                           "graph_connectivity", "asw_label", "seconds"])
        md += ["", "Agreement across the four embeddings (Spearman of the values; same best embedding):", ""]
        md += _md(res["metrics"]["agreement"], ["dataset", "metric", "spearman", "same_best", "max_abs_diff"])
    md += ["", "## 2. Retries (loopback server; 3 retries, 0.5 s base backoff)", ""]
    md += _md(res["retries"], ["case", "implementation", "requests", "seconds", "outcome"])
    md += ["", "## 3. Loopback test server throughput (1,000 embedding calls through litellm, 32 in flight)", ""]
    md += _md(res["server"], ["server", "requests_per_s"])
    (OUT / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
