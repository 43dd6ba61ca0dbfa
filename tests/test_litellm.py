"""The litellm plugin against a real HTTP server on 127.0.0.1 (OpenAI and Ollama wire protocols).

Nothing is mocked inside scelmo or litellm: requests go through litellm's real
clients to :class:`scelmo.testing.server.FakeLLMServer`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from scelmo import get_settings
from scelmo.cli import cli
from scelmo.errors import (
    BudgetExceededError,
    ConfigError,
    OfflineError,
    ProviderError,
    ScelmoWarning,
)
from scelmo.knowledge import roles
from scelmo.knowledge.descriptions import describe, estimate
from scelmo.llm.calls import Budget
from scelmo.testing.server import FakeLLMServer, fake_vector

GENES = ["CD3E", "MS4A1", "NKG7", "LYZ", "GNLY", "CD14", "FCGR3A", "PPBP"]
SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer(dim=16) as srv:
        yield srv


def _cfg(srv, tmp_path, *, describe_model="openai/gpt-4o-mini", embed_model="openai/text-embedding-3-small",
         dopts=None, eopts=None, **extra):
    cfg = {
        "describe.model": describe_model,
        "describe.api_base": srv.openai_base,
        "describe.options": {"retries": 3, "backoff": 0.0, **(dopts or {})},
        "embed.model": embed_model,
        "embed.api_base": srv.openai_base,
        "embed.options": {"retries": 3, "backoff": 0.0, **(eopts or {})},
        "cache.path": str(tmp_path / "cache.sqlite"),
    }
    cfg.update(extra)
    return get_settings(cfg)


# --------------------------------------------------------------------------- success paths
def test_describe_and_embed_through_litellm(server, tmp_path):
    s = _cfg(server, tmp_path)
    before = server.total_requests
    res = describe(GENES, config=s)
    assert set(res.texts) == set(GENES)
    assert all(g in res.texts[g] for g in GENES)
    assert res.usage.calls == len(GENES) and res.usage.prompt_tokens > 0
    assert res.usage.cost is not None and res.usage.cost > 0  # gpt-4o-mini is in litellm's price list
    assert server.total_requests - before == len(GENES)
    assert res.provenance()["prompt"] == "gene"
    # the paper's prompt, verbatim
    body = server.bodies[-1]
    assert body["messages"][-1]["content"].startswith("Please summarize the major function of gene: ")
    assert body["messages"][-1]["content"].endswith(
        "Use academic language in one paragraph and include pathway information."
    )
    # second run: everything from the cache, no request
    n = server.total_requests
    again = describe(GENES, config=s)
    assert again.texts == res.texts and again.cached == len(GENES) and server.total_requests == n
    vecs = roles.embed_texts(s, [res.texts[g] for g in GENES])
    expect = np.array([fake_vector(res.texts[g], 16) for g in GENES], dtype=np.float32)
    np.testing.assert_allclose(vecs, expect, rtol=1e-6)


def test_describe_asks_about_an_alias_by_its_symbol_as_embed_genes_does(server, tmp_path):
    """LLM-path trial: `scelmo describe genes` asked the LLM about names as given (IGJ) and
    `embed-genes` about their symbols (JCHAIN), so every alias was paid for twice."""
    import scelmo

    s = _cfg(server, tmp_path)
    before = server.total_requests
    res = describe(["IGJ", "ENSG00000132465", "CD3E"], config=s)
    assert set(res.texts) == {"IGJ", "ENSG00000132465", "CD3E"} and res.symbols["IGJ"] == "JCHAIN"
    assert res.texts["IGJ"] == res.texts["ENSG00000132465"] and "JCHAIN" in res.texts["IGJ"]
    assert server.total_requests - before == 2  # JCHAIN once, CD3E
    n = server.by_model.get("gpt-4o-mini", 0)
    assert n >= 2
    scelmo.tl.embed_genes(genes=["IGJ", "CD3E"], config=s, progress=False)
    assert server.by_model.get("gpt-4o-mini", 0) == n  # both descriptions from the cache
    assert estimate(["IGJ", "CD3E"], config=s).calls == 0


def test_no_description_at_all_is_an_error_not_an_empty_table(server, tmp_path):
    """LLM-path trial: every answer empty, and `embed-genes` wrote "0 gene vectors" with exit 0,
    into a directory `GeneEmbeddings.load` could not read (an empty genes.txt read as one gene "")."""
    import scelmo
    from scelmo.genes import GeneEmbeddings

    s = _cfg(server, tmp_path, describe_model="openai/empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScelmoWarning)
        with pytest.raises(ProviderError, match="None of the 2 genes got a description.*empty answer"):
            scelmo.tl.embed_genes(genes=["CD3E", "LYZ"], config=s, progress=False)
        res = CliRunner().invoke(cli, ["--no-progress", "--set", "describe.model=openai/empty", "--set",
                                       f"describe.api_base={server.openai_base}", "--set",
                                       f"cache.path={tmp_path / 'c.sqlite'}", "embed-genes", "--genes", "CD3E",
                                       "-o", str(tmp_path / "t")])
    assert res.exit_code != 0 and "None of the 1 genes got a description" in res.output
    assert not (tmp_path / "t").exists()
    empty = GeneEmbeddings([], np.zeros((0, 4), np.float32), {})
    back = GeneEmbeddings.load(empty.save(tmp_path / "empty"))
    assert len(back) == 0 and back.genes == []


def test_embedding_usage_is_recorded_for_a_server_on_this_machine(server, tmp_path):
    """LLM-path trial: two 429 retries of an embedding request to a loopback server left
    `embed_usage` out of the table's manifest (recorded only for remote servers)."""
    import scelmo

    s = _cfg(server, tmp_path, embed_model="openai/error503-1")  # (this module's only use of that model)
    ge = scelmo.tl.embed_genes(genes=["CD3E", "LYZ"], config=s, progress=False)
    usage = ge.manifest["embed_usage"]
    assert usage["calls"] >= 1 and usage["retries"] == 1, usage


def test_embedding_batches_and_concurrency(tmp_path):
    texts = [f"text number {i}" for i in range(300)]
    with FakeLLMServer(latency=0.05, dim=8) as srv:
        s = _cfg(srv, tmp_path, eopts={"batch_size": 32, "concurrency": 4})
        t0 = time.perf_counter()
        vecs = roles.embed_texts(s, texts)
        wall = time.perf_counter() - t0
        assert srv.requests["/v1/embeddings"] == 10  # ceil(300 / 32)
        assert 1 < srv.max_in_flight <= 4
        assert max(len(b["input"]) for b in srv.bodies) == 32
    np.testing.assert_allclose(vecs, np.array([fake_vector(t, 8) for t in texts], dtype=np.float32), rtol=1e-6)
    assert wall < 10 * 0.05  # overlapped, not serial


def test_concurrency_bound_for_completions(tmp_path):
    with FakeLLMServer(latency=0.05) as srv:
        s = _cfg(srv, tmp_path, dopts={"concurrency": 3})
        describe([f"GENE{i}" for i in range(12)], config=s)
        assert srv.max_in_flight == 3


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("model", ["ratelimit-2", "error500-1", "error503-2"])
def test_transient_errors_are_retried(server, tmp_path, model):
    s = _cfg(server, tmp_path, describe_model=f"openai/{model}")
    before = server.by_model[model]
    res = describe(["CD3E"], config=s)
    assert "CD3E" in res.texts
    failures = int(model.rsplit("-", 1)[1])
    assert server.by_model[model] - before == failures + 1
    assert res.usage.retries == failures


def test_embedding_retries_on_rate_limit(tmp_path):
    with FakeLLMServer() as srv:
        s = _cfg(srv, tmp_path, embed_model="openai/ratelimit-2")
        vecs = roles.embed_texts(s, ["a", "b"])
        assert vecs.shape == (2, 16) and srv.by_model["ratelimit-2"] == 3  # litellm retried nothing itself


def test_retry_after_is_honoured(tmp_path):
    from scelmo.errors import TransientProviderError
    from scelmo.llm.calls import RetryPolicy, run_sync, with_retries

    calls = []

    async def flaky():
        calls.append(time.perf_counter())
        if len(calls) < 2:
            raise TransientProviderError("429", retry_after=0.3)
        return "ok"

    assert run_sync(with_retries(flaky, RetryPolicy(retries=2, base_delay=0.0))) == "ok"
    assert calls[1] - calls[0] >= 0.29


def test_gives_up_after_retries(server, tmp_path):
    s = _cfg(server, tmp_path, describe_model="openai/error503-100", dopts={"retries": 2})
    with pytest.raises(ProviderError, match="Gave up after 3 attempts"):
        describe(["CD3E"], config=s)


def test_timeout_is_explicit_and_short(server, tmp_path):
    s = _cfg(server, tmp_path, describe_model="openai/slow", dopts={"timeout": 0.5, "retries": 0})
    t0 = time.perf_counter()
    with pytest.raises(ProviderError, match="timeout"):
        describe(["CD3E"], config=s)
    assert time.perf_counter() - t0 < 2.5


def test_connection_refused(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    s = get_settings({
        "describe.model": "openai/gpt-4o-mini", "describe.api_base": f"http://127.0.0.1:{port}/v1",
        "describe.options": {"retries": 1, "backoff": 0.0, "timeout": 5},
        "cache.path": str(tmp_path / "c.sqlite"),
    })
    with pytest.raises(ProviderError, match="Gave up after 2 attempts"):
        describe(["CD3E"], config=s)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("garbage", "failed"),
        ("badshape", "no embedding list"),
        ("short", "returned 3 vectors for 4 texts"),
        ("badlen", "different lengths"),
        ("badindex", "repeated index"),
        ("nan", "NaN"),
    ],
)
def test_bad_embedding_answers_are_refused_and_not_cached(server, tmp_path, model, message):
    s = _cfg(server, tmp_path, embed_model=f"openai/{model}", eopts={"retries": 1})
    with pytest.raises(ProviderError, match=message):
        roles.embed_texts(s, ["w", "x", "y", "z"])
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_garbage_completion_is_an_error(server, tmp_path):
    s = _cfg(server, tmp_path, describe_model="openai/badshape", dopts={"retries": 0})
    with pytest.raises(ProviderError):
        describe(["CD3E"], config=s)


def test_answers_cached_before_auth_headers_were_masked_are_still_found():
    """A review: masking `X-Auth` header values (2026-12-05) changed the cache key's `extra`
    digest, so answers cached before would be paid for again; the old key is a legacy key."""
    import hashlib
    import json

    from scelmo_litellm.components import LiteLLMProvider

    extra = {"extra_headers": {"X-Auth": "lab-token-123456"}}
    p = LiteLLMProvider("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", extra=extra)
    old = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert f"extra={old}" not in p.cache_key and "lab-token" not in p.cache_key
    assert any(f"extra={old}" in k for k in p.legacy_cache_keys)
    plain = LiteLLMProvider("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", extra={"seed": 1})
    assert plain.legacy_cache_keys == (plain.model_id,)  # (nothing masked differently: no extra key)


def test_an_html_answer_says_it_is_not_json_and_is_not_retried(server, tmp_path):
    """LLM-path trial: a 200 with an HTML body read "InternalServerError ... Expecting value ...
    Lower the role's options.concurrency, raise options.retries"."""
    s = _cfg(server, tmp_path, describe_model="openai/garbage", dopts={"retries": 3})
    before = server.by_model["garbage"]
    with pytest.raises(ProviderError, match="not JSON.*Check `api_base`") as info:
        describe(["CD3E"], config=s)
    assert "concurrency" not in str(info.value) and server.by_model["garbage"] - before == 1


def test_a_rejected_key_names_where_it_was_read(server, tmp_path, monkeypatch):
    """LLM-path trial: with `api_key_env=MY_LLM_KEY` set, a 401 advised to "name one with the
    role's `api_key_env`", what the user had done."""
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    s = _cfg(server, tmp_path, describe_model="openai/unauthorized", dopts={"api_key_env": "MY_LLM_KEY"})
    with pytest.raises(ProviderError, match="rejected the API key read from the environment variable MY_LLM_KEY") \
            as info:
        describe(["CD3E"], config=s)
    assert SECRET not in str(info.value) and "name one with" not in str(info.value)


@pytest.mark.parametrize("model", ["refuse", "empty"])
def test_refusals_and_empty_answers_are_reported_not_cached(server, tmp_path, model):
    s = _cfg(server, tmp_path, describe_model=f"openai/{model}")
    before = server.by_model[model]
    with pytest.warns(ScelmoWarning, match="descriptions failed"):
        res = describe(["CD3E", "LYZ"], config=s)
    assert res.texts == {} and set(res.failed) == {"CD3E", "LYZ"}
    assert server.by_model[model] - before == 4  # asked once more each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert describe(["CD3E"], config=s).cached == 0  # nothing was cached


# --------------------------------------------------------------------------- offline, keys
def test_offline_refuses_before_any_request(server, tmp_path):
    n = server.total_requests
    s = get_settings({"offline": True, "describe.model": "openai/gpt-4o-mini",
                      "cache.path": str(tmp_path / "c.sqlite")})
    with pytest.raises(OfflineError, match="offline"):
        describe(["CD3E"], config=s)
    s = get_settings({"offline": True, "embed.model": "openai/text-embedding-3-small",
                      "embed.api_base": "https://api.openai.com/v1"})
    with pytest.raises(OfflineError):
        roles.embedder(s)
    assert server.total_requests == n
    # a server on this machine is not "the network"
    ok = _cfg(server, tmp_path, offline=True)
    assert describe(["CD3E"], config=ok).texts


def test_api_key_is_used_but_never_written(server, tmp_path, monkeypatch, capsys, caplog):
    import logging

    import scanpy as sc

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_LLM_API_KEY", SECRET)
    s = _cfg(server, tmp_path, **{"describe.api_key_env": "MY_LLM_API_KEY",
                                  "embed.api_key_env": "MY_LLM_API_KEY"})
    adata = sc.AnnData(np.ones((3, 4), dtype=np.float32))
    adata.var_names = ["CD3E", "LYZ", "NKG7", "MS4A1"]
    import scelmo

    scelmo.tl.embed_genes(adata, config=s)
    assert any(SECRET in h for h in server.auth_headers)  # the key reached the server
    # errors carry no key either
    bad = _cfg(server, tmp_path, describe_model="openai/error500-100",
               dopts={"retries": 0, "api_key": SECRET})
    with pytest.raises(ProviderError) as err:
        describe(["GNLY"], config=bad)
    assert SECRET not in str(err.value)
    adata.write_h5ad(tmp_path / "out.h5ad")
    res = CliRunner().invoke(cli, ["--set", "describe.model=openai/gpt-4o-mini", "--set",
                                   "describe.api_key=" + repr(SECRET).replace("'", '"'), "config", "show"])
    assert res.exit_code == 0 and SECRET not in res.output and "**********" in res.output
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert SECRET not in caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in repr(dict(adata.uns))


# --------------------------------------------------------------------------- cost
def test_dry_run_estimates_without_sending(server, tmp_path):
    s = _cfg(server, tmp_path)
    n = server.total_requests
    est = estimate(GENES, config=s)
    assert est.calls == len(GENES) and est.prompt_tokens > 0 and est.cost > 0
    assert server.total_requests == n
    describe(GENES[:3], config=s)
    assert estimate(GENES, config=s).calls == len(GENES) - 3
    # trial finding: an embedding server on this machine (no network needed) was estimated at 0
    # calls with a price, and "local model: no calls, no cost"
    import anndata as ad

    from scelmo.tl import estimate_embed_genes

    adata = ad.AnnData(np.ones((2, len(GENES)), np.float32))
    adata.var_names = GENES
    local = _cfg(server, tmp_path, describe_model="local", **{"describe.api_base": None, "describe.options": {}})
    est_e = estimate_embed_genes(adata, config=local)[1]
    assert est_e.calls >= 1 and not any("no calls" in n for n in est_e.notes)
    assert server.total_requests == n + 3
    # LLM-path trial: with an LLM describing, the embed role was always "0 cached", even after
    # a complete run; the answered descriptions' vectors are looked up in the cache now
    s2 = _cfg(server, tmp_path / "two")
    est_d, est_e = estimate_embed_genes(adata, config=s2)
    assert est_d.calls == len(GENES) and est_e.cached == 0 and est_e.items == len(GENES)
    import scelmo

    scelmo.tl.embed_genes(adata, config=s2, progress=False)
    n = server.total_requests
    est_d, est_e = estimate_embed_genes(adata, config=s2)
    assert est_d.calls == 0 and est_e.calls == 0 and est_e.cached == est_e.items == len(GENES)
    assert est_e.cost == 0 and server.total_requests == n


def test_max_cost_stops_cleanly_and_resumes(server, tmp_path):
    # 1e-4 USD per token: a call costs ~0.003-0.06 USD (prompt ~20 tokens, max_tokens 30 booked)
    opts = {"input_cost_per_token": 1e-4, "output_cost_per_token": 1e-4, "max_tokens": 30, "concurrency": 1}
    s = _cfg(server, tmp_path, dopts=opts)
    genes = [f"QQG{i}" for i in range(20)]
    with pytest.raises(BudgetExceededError, match="cost limit"):
        describe(genes, config=s, max_cost=0.03)
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        done = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert 0 < done < 20
    before = sum(server.answered[g] for g in genes)
    res = describe(genes, config=s, max_cost=10.0)
    assert len(res.texts) == 20 and res.cached == done
    assert sum(server.answered[g] for g in genes) - before == 20 - done  # nothing paid twice


def test_re_asking_an_empty_answer_is_booked_against_the_cost_limit(server, tmp_path):
    """LLM-path trial: an empty answer is asked again (a second paid call), but only the
    first call was booked, and only the second's cost settled: `max_cost=0.35` on 10 genes
    answered empty sent 20 calls and spent $0.60. Each re-ask is now booked first."""
    opts = {"input_cost_per_token": 1e-3, "output_cost_per_token": 1e-3, "max_tokens": 5, "concurrency": 1}
    s = _cfg(server, tmp_path, describe_model="openai/empty", dopts=opts)
    before = server.by_model["empty"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScelmoWarning)
        try:  # (the limit stops the run, or leaves a last re-ask out: either way within it)
            spent = describe([f"QQE{i}" for i in range(10)], config=s, max_cost=0.35).usage.cost
        except BudgetExceededError as stop:
            spent = float(re.search(r"\$([0-9.]+) spent", str(stop)).group(1))
    calls = server.by_model["empty"] - before
    assert spent <= 0.35 and calls < 20, (spent, calls)
    # with no limit every empty answer is asked twice, and the usage counts both calls
    res = describe([f"QQF{i}" for i in range(3)], config=s)
    assert set(res.failed) == {"QQF0", "QQF1", "QQF2"} and res.usage.calls == 6


@pytest.mark.parametrize("n_items, max_cost, concurrency", [(1, 0.015, 1), (4, 0.05, 1), (4, 0.05, 4)])
def test_a_re_ask_that_fits_is_made_whatever_the_concurrency(tmp_path, n_items, max_cost, concurrency):
    """A review: the re-ask was refused although it fitted, as the item's own finished first call
    still counted at its worst case, and other calls in flight were not waited for (4 items,
    concurrency 4: 2 failed with $0.006 spent of $0.05). Two re-askers never wait for each other."""
    import asyncio
    from collections import Counter

    from scelmo.plugin import Completion, Provider

    class Flaky(Provider):
        name = "flaky"

        def __init__(self, **kw):
            super().__init__("flaky-1", **kw)
            self.asked = Counter()

        async def acomplete(self, prompt, *, system=None):
            self.asked[prompt] += 1
            await asyncio.sleep(0.02)
            text = "" if self.asked[prompt] == 1 else "A fine description of this gene and its pathways."
            return Completion(text, 10, 20, cost=0.001)

        def price(self, prompt_tokens, completion_tokens):
            return 0.01  # the worst case booked per call

    p = Flaky(concurrency=concurrency)
    res = describe([f"QQR{i}" for i in range(n_items)], config={"cache.path": str(tmp_path / "c.sqlite")},
                   using=p, max_cost=max_cost, progress=False)
    assert len(res.texts) == n_items and not res.failed and res.usage.cost <= max_cost


def test_a_cost_stop_reports_what_the_calls_in_flight_spent(server, tmp_path):
    """Trial finding: with calls in flight, a --max-cost stop said "$0.0000 spent so far" (its
    message was written before they settled)."""
    opts = {"input_cost_per_token": 1e-4, "output_cost_per_token": 1e-4, "max_tokens": 30, "concurrency": 4}
    s = _cfg(server, tmp_path, dopts=opts)
    with pytest.raises(BudgetExceededError) as info:
        describe([f"QQH{i}" for i in range(20)], config=s, max_cost=0.012)  # room for ~2 calls booked at once
    spent = float(re.search(r"\$([0-9.]+) spent", str(info.value)).group(1))
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        done = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert done > 0 and 0 < spent <= 0.012, str(info.value)


def test_a_cost_limit_with_concurrency_waits_for_calls_in_flight_instead_of_stopping(server, tmp_path):
    """Trial finding: with `--concurrency 4`, a second call booked at its worst case while the
    first was in flight did not fit, and that ended the run after one call, every time; with
    concurrency 1 the same limit allowed many. A booking that does not fit beside calls in
    flight now waits for them to settle (their actual cost is far below the worst case)."""
    genes = [f"QQK{i}" for i in range(20)]
    spent = {}
    for conc in (1, 4):
        opts = {"input_cost_per_token": 1e-4, "output_cost_per_token": 1e-4, "max_tokens": 200, "concurrency": conc}
        s = _cfg(server, tmp_path / str(conc), dopts=opts)
        before = sum(server.answered[g] for g in genes)
        with pytest.raises(BudgetExceededError, match="cost limit"):
            describe(genes, config=s, max_cost=0.04)  # the worst case of one call fits, not of two at once
        spent[conc] = sum(server.answered[g] for g in genes) - before
    assert spent[1] > 1 and spent[4] >= spent[1] - 1, spent


def test_a_cost_stop_is_raised_not_waited_for_when_rounding_leaves_dust_of_the_bookings():
    """Review finding: bookings settled in another order left ~5e-17 USD "booked" with nothing in
    flight, and a call that did not fit then waited for a settlement that never came (a hang)."""
    import asyncio
    import threading

    from scelmo.llm.calls import Budget, run_calls

    est, delay = {"A": 0.1, "B": 0.2, "C": 0.3, "D": 0.7}, {"A": 0.2, "B": 0.1, "C": 0.3, "D": 0.0}

    async def call(job):
        await asyncio.sleep(delay[job])
        return job

    budget, raised = Budget(0.65), []

    def run():
        try:
            run_calls(list(est), call, on_result=lambda j, r: None, concurrency=3, budget=budget,
                      estimate_cost=est.__getitem__, actual_cost=lambda r: 0.0)
        except BudgetExceededError as exc:
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and raised and budget.in_flight == 0 and budget.booked == 0.0


LLAMA3 = "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct"  # docs/providers/vllm.md


class RemoteSocketAttempt(RuntimeError):
    """Raised by :func:`remote_sockets`; not an ``OSError``, so no HTTP client retries it."""


def _is_loopback(host: object) -> bool:
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def remote_sockets(monkeypatch):
    """Refuse, and record, every name lookup or connection that would leave this machine."""
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            attempts.append(f"getaddrinfo({host!r})")
            raise RemoteSocketAttempt(f"test blocked a lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(f"connect({address!r})")
            raise RemoteSocketAttempt(f"test blocked a connection to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_token_estimates_never_reach_the_network(server, tmp_path, remote_sockets):
    """Trial finding: for a llama-3 model (docs/providers/vllm.md) litellm's token counter
    downloaded a HuggingFace tokenizer (HEAD huggingface.co/Xenova/llama-3-tokenizer, ~30 s of
    retries without network) in dry runs and `--max-cost` runs, `--offline` included. The
    estimate is documented as network-free, so it must count with a local tokenizer."""
    t0 = time.perf_counter()
    # the dry run of the docs' vLLM example, offline (the server is loopback, so allowed)
    offline = _cfg(server, tmp_path, describe_model=LLAMA3, embed_model=LLAMA3, offline=True)
    n = server.total_requests
    est = estimate(["CD4", "LYZ"], config=offline)
    assert est.calls == 2 and est.prompt_tokens > 0
    res = CliRunner().invoke(cli, ["--offline", "--set", f"describe.api_base=\"{server.openai_base}\"",
                                   "--set", f"cache.path=\"{tmp_path / 'cli.sqlite'}\"",
                                   "describe", "genes", "CD4", "--model", LLAMA3, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "1 calls" in res.output and server.total_requests == n
    # the embedder counts with the same tokenizer
    assert roles.embedder(offline).count_tokens(["CD4 is a T-cell co-receptor."]) > 0
    # a cost-limited run books every call with a token count first; without --offline too
    prices = {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}
    online = _cfg(server, tmp_path, describe_model=LLAMA3, dopts=prices)
    assert set(describe(["CD8A", "NKG7"], config=online, max_cost=1.0).texts) == {"CD8A", "NKG7"}
    assert remote_sockets == []
    assert time.perf_counter() - t0 < 20  # no download, no retries (~30 s before)


DOCS = Path(__file__).resolve().parents[1] / "docs" / "providers"


def _documented_models() -> list[tuple[str, str, str]]:
    """``(page, role, model)`` for the example models of the provider pages whose price comes from
    litellm's list (vllm.md and azure.md set their own prices; ``local`` models are free)."""
    found: list[tuple[str, str, str]] = []
    for page in ("openai.md", "anthropic.md", "ollama.md"):
        role = None
        for line in (DOCS / page).read_text().splitlines():
            if m := re.match(r"\[(describe|embed)\]", line.strip()):
                role = m.group(1)
            elif (m := re.match(r'model\s*=\s*"([^"]+)"', line.strip())) and role and \
                    not m.group(1).startswith("local"):
                found.append((page, role, m.group(1)))
    for line in (DOCS / "index.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and "](" in cells[1]:
            for role, cell in zip(("describe", "embed"), cells[2:], strict=True):
                found += [("index.md", role, name) for name in re.findall(r"`([^`]+)`", cell)
                          if "/" in name and "<" not in name]
    return found


def test_documented_example_models_have_a_price(monkeypatch, remote_sockets):
    """Trial finding: the Anthropic page's `anthropic/claude-3-5-haiku-latest` has no price in
    litellm's bundled list, so following the page with `--max-cost` failed ("price unknown")."""
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(var, "sk-test-not-used")
    models = _documented_models()
    assert {p for p, _, _ in models} == {"openai.md", "anthropic.md", "ollama.md", "index.md"}, models
    unpriced = []
    for page, role, model in models:
        s = get_settings({f"{role}.model": model, "cache.enabled": False})
        if role == "describe":
            price = roles.description_writer(s).price(100, 100)
        else:
            price = roles.embedder(s).price(100)
        if price is None:
            unpriced.append(f"{page}: {role} {model}")
    assert not unpriced, f"litellm has no price for these documented examples: {unpriced}"
    assert remote_sockets == []  # prices come from the bundled list


def test_budget_refuses_unknown_prices(server, tmp_path):
    s = _cfg(server, tmp_path, describe_model="openai/my-self-hosted-model")
    with pytest.raises(BudgetExceededError, match="price is unknown") as info:
        describe(["CD3E"], config=s, budget=Budget(1.0))
    # trial finding: it exited 4 ("cost limit reached") though nothing was spent; a setting is missing
    assert info.value.exit_code == 2 and isinstance(info.value, ConfigError)


# --------------------------------------------------------------------------- providers
def test_ollama_native_api(server, tmp_path):
    s = get_settings({
        "describe.model": "ollama/llama3.1", "describe.api_base": server.url,
        "embed.model": "ollama/nomic-embed-text", "embed.api_base": server.url,
        "cache.path": str(tmp_path / "c.sqlite"),
    })
    before = dict(server.requests)
    res = describe(["TP53"], config=s)
    assert "TP53" in res.texts["TP53"]
    vecs = roles.embed_texts(s, ["alpha", "beta"])
    np.testing.assert_allclose(vecs[1], fake_vector("beta", 16), rtol=1e-6)
    chat = get_settings({"describe.model": "ollama_chat/llama3.1", "describe.api_base": server.url,
                         "cache.path": str(tmp_path / "c.sqlite")})
    assert describe(["MDM2"], config=chat).texts
    for route in ("/api/generate", "/api/embed", "/api/chat"):
        assert server.requests[route] > before.get(route, 0)


def test_router_model_list(server, tmp_path):
    deployments = [
        {"model_name": "genes-llm", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": server.openai_base,
                                                       "api_key": "none"}},
        {"model_name": "genes-llm", "litellm_params": {"model": "hosted_vllm/llama", "api_base": server.openai_base,
                                                       "api_key": "none"}},
    ]
    s = get_settings({"describe.model": "genes-llm", "describe.model_list": deployments,
                      "cache.path": str(tmp_path / "c.sqlite")})
    comp = roles.description_writer(s)
    assert comp.name == "litellm" and not comp.requires_network
    assert set(describe(["CD3E", "LYZ"], config=s).texts) == {"CD3E", "LYZ"}


def test_local_embedder_through_litellm_custom_provider(tmp_path):
    texts = ["TP53 is a tumour suppressor.", "HBB carries oxygen."]
    cache = {"cache.path": str(tmp_path / "c.sqlite")}
    direct = roles.embed_texts(get_settings({"embed.model": "local/all-MiniLM-L6-v2-int8", **cache}), texts)
    via = roles.embed_texts(get_settings({"embed.model": "scelmo/local/all-MiniLM-L6-v2-int8", "offline": True,
                                          **cache}), texts)
    np.testing.assert_allclose(via, direct, atol=1e-5)


def test_prompts_are_registered_and_hashed():
    from scelmo import plugin as plugins

    names = plugins.prompts.names()
    assert {"gene", "cell-type", "drug", "protein"} <= set(names)
    gene = plugins.prompts.get("gene")
    assert gene.render("CD3E") == ("Please summarize the major function of gene: CD3E. Use academic language "
                                   "in one paragraph and include pathway information.")
    assert len({plugins.prompts.get(n).hash for n in names}) == len(names)


def test_prompt_hash_is_part_of_the_cache_key(server, tmp_path):
    s = _cfg(server, tmp_path)
    describe(["CD3E"], config=s)
    n = server.total_requests
    assert describe(["CD3E"], config=s, prompt="gene-short").cached == 0
    assert server.total_requests == n + 1


# --------------------------------------------------------------------------- CLI
def test_cli_describe_subjects_and_dry_run(server, tmp_path):
    base = ["--set", f"describe.api_base=\"{server.openai_base}\"", "--set",
            f"cache.path=\"{tmp_path / 'c.sqlite'}\""]
    r = CliRunner()
    n = server.total_requests
    res = r.invoke(cli, [*base, "describe", "drugs", "aspirin", "imatinib", "--model", "openai/gpt-4o-mini",
                         "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "2 calls" in res.output and "$" in res.output and server.total_requests == n
    out = tmp_path / "drugs.tsv"
    res = r.invoke(cli, [*base, "describe", "drugs", "aspirin", "imatinib", "--model", "openai/gpt-4o-mini",
                         "-o", str(out)])
    assert res.exit_code == 0, res.output
    import pandas as pd

    table = pd.read_csv(out, sep="\t")
    assert list(table["item"]) == ["aspirin", "imatinib"] and (table["prompt"] == "drug").all()
    assert "major function of drug: aspirin" in server.bodies[-1]["messages"][-1]["content"] or \
        "major function of drug: imatinib" in server.bodies[-1]["messages"][-1]["content"]
    ct = tmp_path / "types.txt"
    ct.write_text("T cell\nB cell\n")
    res = r.invoke(cli, [*base, "describe", "cell-types", "--from", str(ct), "--model", "openai/gpt-4o-mini",
                         "-o", str(tmp_path / "ct.csv")])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "ct.csv")["item"].tolist() == ["T cell", "B cell"]
    # the offline table cannot describe drugs: a clear error, not a crash
    res = r.invoke(cli, ["describe", "drugs", "aspirin", "-o", str(tmp_path / "x.tsv")])
    assert res.exit_code == 2 and "gene-knowledge table" in res.output


def test_cli_embed_genes_with_remote_models(server, tmp_path):
    base = ["--set", f"describe.api_base=\"{server.openai_base}\"", "--set",
            f"embed.api_base=\"{server.openai_base}\"", "--set", f"cache.path=\"{tmp_path / 'c.sqlite'}\""]
    res = CliRunner().invoke(cli, [*base, "embed-genes", "--genes", "CD3E", "--genes", "LYZ", "-o",
                                   str(tmp_path / "ge"), "--describe-model", "openai/gpt-4o-mini",
                                   "--embed-model", "openai/text-embedding-3-small"])
    assert res.exit_code == 0, res.output
    assert "Wrote 2 gene vectors (d=16, litellm/openai/text-embedding-3-small)" in res.output
    # a dry run writes nothing, so an existing OUTPUT does not stop it (trial finding)
    n = server.total_requests
    res = CliRunner().invoke(cli, [*base, "embed-genes", "--genes", "CD3E", "--genes", "NKG7", "-o",
                                   str(tmp_path / "ge"), "--describe-model", "openai/gpt-4o-mini",
                                   "--embed-model", "openai/text-embedding-3-small", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert server.total_requests == n
    res = CliRunner().invoke(cli, ["--set", "describe.model=\"anthropic/claude-haiku-4-5\"", "config", "show"])
    assert res.exit_code == 0 and "LLM provider 'litellm' -> litellm/anthropic/claude-haiku-4-5" in res.output


# --------------------------------------------------------------------------- kill and resume
def _run_cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "scelmo", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _cached_texts(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM entries WHERE role='describe'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_run_then_resume_pays_nothing_twice(tmp_path):
    genes = [f"GENE{i:03d}" for i in range(60)]
    (tmp_path / "genes.txt").write_text("\n".join(genes))
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "SCELMO_CACHE__PATH": str(cache), "SCELMO_NO_PROGRESS": "1"}
    with FakeLLMServer(block_after=25) as srv:
        args = ["--set", f"describe.api_base=\"{srv.openai_base}\"", "--set", "describe.options.concurrency=4",
                "describe", "genes", "--from", str(tmp_path / "genes.txt"), "--model", "openai/gpt-4o-mini",
                "-o", str(tmp_path / "out.tsv")]
        proc = _run_cli(args, env)
        deadline = time.time() + 60
        while time.time() < deadline:  # every answer sent has been committed, the rest is held
            answered = sum(srv.answered.values())
            if answered >= 25 and _cached_texts(cache) == answered:
                break
            time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail(f"no progress: {proc.communicate()}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        first = sum(srv.answered.values())
        assert not (tmp_path / "out.tsv").exists()
        srv.abort_held()  # the killed client's requests never get an answer
        proc = _run_cli(args, env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert f"({first} from the cache" in out
        assert srv.duplicates() == 0
        assert set(srv.answered) == set(genes)
    assert len((tmp_path / "out.tsv").read_text().splitlines()) == 61


def test_concurrent_runs_share_one_cache(tmp_path):
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "SCELMO_CACHE__PATH": str(cache), "SCELMO_NO_PROGRESS": "1"}
    with FakeLLMServer(latency=0.01) as srv:
        procs = []
        for k in range(2):
            genes = [f"QQG{i}" for i in range(k * 20, k * 20 + 40)]  # 20 overlap
            (tmp_path / f"g{k}.txt").write_text("\n".join(genes))
            procs.append(_run_cli(["--set", f"describe.api_base=\"{srv.openai_base}\"", "describe", "genes",
                                   "--from", str(tmp_path / f"g{k}.txt"), "--model", "openai/gpt-4o-mini",
                                   "-o", str(tmp_path / f"o{k}.tsv")], env))
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, (out, err)
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = db.execute("SELECT COUNT(*) FROM entries WHERE role='describe'").fetchone()[0]
    assert n == 60, (n, dict(srv.answered))


def test_litellm_pin_is_clean_and_hash_locked():
    import sysconfig
    from importlib.metadata import version

    lock = (Path(__file__).parents[1] / "requirements" / "litellm.txt").read_text()
    pinned = re.search(r"^litellm==(\S+)", lock, re.M).group(1)
    assert version("litellm") == pinned  # exactly the inspected, hash-locked release
    assert "--hash=sha256:" in lock
    site = Path(sysconfig.get_paths()["purelib"])
    hooks = {p.name for p in site.glob("*.pth")} | {p.name for p in site.glob("sitecustomize.py")}
    assert not {h for h in hooks if "litellm" in h or h.startswith("cook") or h == "sitecustomize.py"}


def test_importing_scelmo_does_not_import_litellm():
    code = "import scelmo, scelmo.tl, scelmo.knowledge.descriptions, scelmo_litellm, sys; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_litellm_does_not_count_against_the_first_requests_timeout(server, tmp_path):
    """LLM-path trial: litellm's first import (~4 s) ran inside the first requests' deadline, so
    with `timeout=3, retries=0` a fresh process failed with "no complete answer within 3 s" and
    the server saw nothing. The import now happens before the deadline starts (warm_up)."""
    # a fresh interpreter, where the describe call is the first thing to import litellm
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from scelmo import get_settings\n"
        "from scelmo.knowledge.descriptions import describe\n"
        f"s = get_settings({{'describe.model': 'openai/gpt-4o-mini', 'describe.api_base': {server.openai_base!r},"
        f" 'describe.options': {{'timeout': 3, 'retries': 0}}, 'cache.path': {str(tmp_path / 'c.sqlite')!r}}})\n"
        "import sys; assert 'litellm' not in sys.modules\n"
        "print(sorted(describe(['CD3E'], config=s).texts))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "['CD3E']" in out.stdout, out.stderr[-2000:]


def test_a_loopback_server_named_by_openai_api_base_gets_a_placeholder_key(server, tmp_path, monkeypatch):
    """LLM-path trial: a server on this machine set through litellm's own OPENAI_API_BASE (no
    `api_base`, no key) was let through the key check but sent no placeholder key, so every
    call failed with "Missing credentials"."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_BASE", server.openai_base)
    s = get_settings({"describe.model": "openai/gpt-4o-mini", "describe.options": {"retries": 0},
                      "cache.path": str(tmp_path / "c.sqlite")})
    assert set(describe(["CD3E"], config=s).texts) == {"CD3E"}


def test_run_calls_stops_everything_on_first_failure():
    import asyncio

    from scelmo.llm.calls import run_calls

    started, kept = [], []

    async def call(i):
        started.append(i)
        await asyncio.sleep(0.01)
        return i

    def on_result(i, r):
        if i == 3:
            raise OSError("disk full")
        kept.append(i)

    with pytest.raises(OSError, match="disk full"):
        run_calls(range(100), call, on_result=on_result, concurrency=4)
    time.sleep(0.1)
    assert len(started) < 12  # no new calls after the failure, none running on in the background
    n = len(started)
    time.sleep(0.1)
    assert len(started) == n


def test_server_retry_after_header_is_honoured_end_to_end(tmp_path):
    with FakeLLMServer() as srv:
        s = _cfg(srv, tmp_path, describe_model="openai/ratelimit1s-1", dopts={"backoff": 0.0})
        t0 = time.perf_counter()
        assert describe(["CD3E"], config=s).texts
        assert time.perf_counter() - t0 >= 0.95  # waited the server's Retry-After: 1, not the 0 s backoff
        assert srv.by_model["ratelimit1s-1"] == 2


def test_no_network_and_no_banner_when_litellm_is_used(tmp_path):
    """In a fresh interpreter: import, describe, embed and fail against loopback only."""
    code = f"""
import socket, sys
seen = []
def hook(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        seen.append(repr(args))
sys.addaudithook(hook)
from scelmo import get_settings
from scelmo.knowledge import roles
from scelmo.knowledge.descriptions import describe
from scelmo.errors import ProviderError
from scelmo.testing.server import FakeLLMServer
srv = FakeLLMServer().start()
s = get_settings({{"describe.model": "openai/gpt-4o-mini", "describe.api_base": srv.openai_base,
                  "embed.model": "openai/text-embedding-3-small", "embed.api_base": srv.openai_base,
                  "cache.path": {str(tmp_path / "c.sqlite")!r}}})
describe(["CD3E"], config=s)
roles.embed_texts(s, ["x"])
bad = get_settings({{"describe.model": "openai/error500-9", "describe.api_base": srv.openai_base,
                    "describe.options": {{"retries": 0}}, "cache.enabled": False}})
try:
    describe(["LYZ"], config=bad)
except ProviderError:
    pass
srv.stop()
remote = [a for a in seen if "127.0.0.1" not in a and "localhost" not in a and "AF_UNIX" not in a]
print("REMOTE", remote)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"})
    assert out.returncode == 0, out.stderr
    assert "REMOTE []" in out.stdout, out.stdout
    assert "Give Feedback" not in out.stdout + out.stderr  # litellm's debug banner is off
    assert "raw.githubusercontent" not in out.stdout + out.stderr


def test_annotate_with_llm_cell_type_descriptions(server, tmp_path, pbmc):
    import scelmo

    cfg = {"describe.model": "openai/gpt-4o-mini", "describe.api_base": server.openai_base,
           "cache.path": str(tmp_path / "c.sqlite")}
    small = pbmc[:60].copy()
    n = len(server.bodies)
    scelmo.tl.annotate(small, cell_types=["T cell", "B cell", "monocyte"], describe_cell_types=True, config=cfg)
    asked = [b["messages"][-1]["content"] for b in server.bodies[n:] if "messages" in b]
    prefix = "Please summarize the major function of cell type: "
    assert sorted(a[len(prefix):].split(".")[0] for a in asked if a.startswith(prefix)) == ["B cell", "T cell", "monocyte"]
    assert set(small.obs["scelmo_label"]) <= {"T cell", "B cell", "monocyte", "unknown"}
    assert small.uns["scelmo"]["annotate"]["cell_type_descriptions"]["prompt"] == "cell-type"


def test_offline_check_follows_the_endpoint_requests_go_to(tmp_path, monkeypatch):
    """`extra.api_base` / `extra.base_url` override `api_base` in the call, so they decide too."""
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    base = {"describe.model": "openai/gpt-4o-mini", "describe.api_key_env": "PATH", "offline": True,
            "cache.path": str(tmp_path / "c.sqlite")}
    loop = "http://127.0.0.1:9/v1"
    for extra in ({"base_url": "https://api.example.com/v1"}, {"api_base": "https://api.example.com/v1"}):
        s = get_settings({**base, "describe.api_base": loop, "describe.options": {"extra": extra}})
        with pytest.raises(OfflineError, match="uses the network"):
            roles.description_writer(s)
    comp = roles.description_writer(get_settings({**base, "describe.options": {"extra": {"base_url": loop}}}))
    assert not comp.requires_network
    assert not roles.description_writer(get_settings({**base, "describe.api_base": loop})).requires_network
    monkeypatch.setenv("OPENAI_API_BASE", loop)  # litellm's own variable, no api_base given
    assert not roles.description_writer(get_settings(base)).requires_network


def test_embed_cells_describes_only_the_genes_it_reads(server, tmp_path):
    """Trial finding: with an LLM, `embed_cells` described every gene of the data (751 paid calls
    to use 55 genes); it now describes the selected genes only (a second run: nothing)."""
    import anndata as ad
    import scipy.sparse as sp

    import scelmo

    rng = np.random.default_rng(0)
    genes = ["CD3E", "CD3D", "MS4A1", "CD79A", "NKG7", "GNLY", "LYZ", "CD14", "FCGR3A", "PPBP", "HBB", "IL7R",
             "CCR7", "S100A8", "S100A9", "CST3", "FCER1A", "GZMB", "PRF1", "CD8A"]
    X = rng.poisson(0.2, size=(60, len(genes))).astype(np.float32)
    X[:30, :4] += rng.poisson(6, size=(30, 4))  # four variable genes
    X[30:, 6:10] += rng.poisson(6, size=(30, 4))
    a = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=genes))
    cfg = _cfg(server, tmp_path)
    before = server.total_requests
    scelmo.tl.embed_cells(a, n_top_genes=6, config=cfg, progress=False)
    used = a.var[scelmo.keys.GENES_USED]
    assert used.sum() == 6
    asked = [b["messages"][-1]["content"] for b in server.bodies[-(server.total_requests - before):] if "messages" in b]
    described = {g for g in genes if any(f"gene: {g}." in q for q in asked)}
    assert len(asked) == 6 and described == set(used[used].index), asked
    n = server.total_requests
    scelmo.tl.embed_cells(a, n_top_genes=6, config=cfg, progress=False)
    assert server.total_requests == n  # descriptions and their vectors come from the cache


def test_an_exit_while_waiting_cancels_the_calls_in_flight():
    """Review finding: the CLI turns Ctrl-C and SIGTERM into SystemExit (``scelmo.cli._terminated``),
    and only a KeyboardInterrupt cancelled the background calls, so paid calls went on while the
    CLI unwound."""
    import asyncio
    import threading

    from scelmo.cli import _terminated
    from scelmo.llm.calls import run_sync

    state = {"calls": 0, "cancelled": False}

    async def job():
        try:
            while True:
                state["calls"] += 1  # one "paid call" every 20 ms
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    previous = signal.signal(signal.SIGUSR1, _terminated)
    try:
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(SystemExit):
            run_sync(job())
        n = state["calls"]
        time.sleep(0.2)
        assert state["cancelled"] and state["calls"] == n  # no call after the exit began
    finally:
        signal.signal(signal.SIGUSR1, previous)
