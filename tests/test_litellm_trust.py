"""Trust fixes of the litellm path, against a real HTTP server on 127.0.0.1.

Cache identity (endpoint and options), credentials checked before the first request,
a total deadline per request, answer validation, and credentials inside ``api_base``.
Nothing inside scelmo or litellm is mocked: requests go through litellm's real clients
to :class:`scelmo.testing.server.FakeLLMServer`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from scelmo import get_settings
from scelmo import plugin as plugins
from scelmo.cli import cli
from scelmo.errors import ConfigError, ProviderError, ScelmoWarning
from scelmo.knowledge import roles
from scelmo.knowledge.descriptions import describe
from scelmo.llm.cache import Cache, text_hash
from scelmo.testing.server import FakeLLMServer, fake_vector

PASSWORD = "Pa55-url-SECRET-9876"


@pytest.fixture(scope="module")
def servers():
    with FakeLLMServer(dim=16) as a, FakeLLMServer(dim=16) as b:
        yield a, b


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def _cfg(tmp_path, base, *, describe_model="openai/gpt-4o-mini", embed_model="openai/text-embedding-3-small",
         dopts=None, eopts=None, **extra):
    cfg = {
        "describe.model": describe_model, "describe.api_base": base,
        "describe.options": {"retries": 0, "backoff": 0.0, **(dopts or {})},
        "embed.model": embed_model, "embed.api_base": base,
        "embed.options": {"retries": 0, "backoff": 0.0, **(eopts or {})},
        "cache.path": str(tmp_path / "cache.sqlite"),
    }
    cfg.update(extra)
    return get_settings(cfg)


def _rows(tmp_path, where="1=1"):
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        return db.execute(f"SELECT role, model FROM entries WHERE {where}").fetchall()


# --------------------------------------------------------------------------- 1. cache identity
def test_another_endpoint_never_reuses_cached_answers(servers, tmp_path):
    a, b = servers
    genes = ["CD3E", "LYZ"]
    describe(genes, config=_cfg(tmp_path, a.openai_base))
    roles.embed_texts(_cfg(tmp_path, a.openai_base), ["x", "y"])
    nb = b.total_requests
    res = describe(genes, config=_cfg(tmp_path, b.openai_base))
    assert res.cached == 0 and b.requests["/v1/chat/completions"] >= 2
    roles.embed_texts(_cfg(tmp_path, b.openai_base), ["x", "y"])
    assert b.total_requests - nb == 3  # two descriptions, one embedding batch
    # each endpoint now has its own answers; asking A again sends nothing
    na = a.total_requests
    assert describe(genes, config=_cfg(tmp_path, a.openai_base)).cached == 2 and a.total_requests == na
    models = {m for _r, m in _rows(tmp_path)}
    assert any(a.openai_base in m for m in models) and any(b.openai_base in m for m in models)


def test_the_saved_manifest_names_the_endpoint_that_answered(servers, tmp_path):
    import anndata as ad

    import scelmo

    a, b = servers
    adata = ad.AnnData(np.ones((2, 2), np.float32))
    adata.var_names = ["NKG7", "GNLY"]
    scelmo.tl.embed_genes(adata.copy(), config=_cfg(tmp_path, a.openai_base))
    nb = b.total_requests
    ge = scelmo.tl.embed_genes(adata, config=_cfg(tmp_path, b.openai_base))
    ge.save(tmp_path / "ge")
    manifest = json.loads((tmp_path / "ge" / "manifest.json").read_text())["provenance"]
    assert manifest["describe"]["api_base"] == b.openai_base
    assert b.total_requests - nb == 3  # B wrote and embedded what the manifest says it did


@pytest.mark.parametrize(("option", "value"), [("max_tokens", 64), ("temperature", 0.5)])
def test_options_that_change_the_answer_are_part_of_the_key(servers, tmp_path, option, value):
    a, _ = servers
    describe(["MS4A1"], config=_cfg(tmp_path, a.openai_base))
    n = a.total_requests
    assert describe(["MS4A1"], config=_cfg(tmp_path, a.openai_base, dopts={option: value})).cached == 0
    assert a.total_requests == n + 1
    # options that do not change the answer do not split the cache
    assert describe(["MS4A1"], config=_cfg(tmp_path, a.openai_base, dopts={"concurrency": 3, "timeout": 30})).cached == 1


def test_embedding_dimensions_are_part_of_the_key(servers, tmp_path):
    a, _ = servers
    full = roles.embed_texts(_cfg(tmp_path, a.openai_base), ["p", "q"])
    short = roles.embed_texts(_cfg(tmp_path, a.openai_base, eopts={"dimensions": 8}), ["p", "q"])
    assert full.shape == (2, 16) and short.shape == (2, 8)
    np.testing.assert_allclose(short[0], fake_vector("p", 8), rtol=1e-6)


def test_cache_key_names_who_answers_and_holds_no_secret(servers, tmp_path):
    a, _ = servers
    s = _cfg(tmp_path, a.openai_base,  # (credentials in api_base are refused: see below)
             eopts={"dimensions": 8, "extra": {"api_key": "sk-in-extra-0123456789", "seed": 3}})
    prov, emb = roles.description_writer(s), roles.embedder(s)
    assert prov.cache_key == f"litellm/openai/gpt-4o-mini [api_base={a.openai_base}, max_tokens=512]"
    assert emb.cache_key.startswith(f"litellm/openai/text-embedding-3-small@8 [api_base={a.openai_base}, dimensions=8, extra=")
    assert PASSWORD not in emb.cache_key and "sk-in-extra" not in emb.cache_key
    default = roles.description_writer(get_settings({"describe.model": "openai/gpt-4o-mini"}))
    assert default.cache_key == "litellm/openai/gpt-4o-mini [api_base=default, max_tokens=512]"
    assert default.cache_key != prov.cache_key


def test_default_endpoint_does_not_serve_a_loopback_servers_answers(servers, tmp_path):
    a, _ = servers
    describe(["PPBP"], config=_cfg(tmp_path, a.openai_base))
    s = get_settings({"describe.model": "openai/gpt-4o-mini", "cache.path": str(tmp_path / "cache.sqlite")})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # not A's cached answer
        describe(["PPBP"], config=s)


def test_entries_of_older_versions_stay_readable(servers, tmp_path):
    """Rows keyed by the bare model id (no endpoint) are adopted by the first configuration
    that asks; the offline components' keys did not change at all."""
    a, b = servers
    from scelmo.knowledge.descriptions import get_prompt

    prompt = get_prompt("gene")
    with Cache(tmp_path / "cache.sqlite") as c:
        c.put_texts("litellm/openai/gpt-4o-mini", prompt.hash, {text_hash("OLD1"): "OLD1 is an old cached description."})
        c.put_vectors("litellm/openai/text-embedding-3-small", {text_hash("old text"): np.full(16, 0.25, np.float32)})
    n = a.total_requests
    res = describe(["OLD1"], config=_cfg(tmp_path, a.openai_base))
    vec = roles.embed_texts(_cfg(tmp_path, a.openai_base), ["old text"])
    assert res.texts["OLD1"] == "OLD1 is an old cached description." and a.total_requests == n
    np.testing.assert_array_equal(vec[0], np.full(16, 0.25, np.float32))
    assert ("describe", "litellm/openai/gpt-4o-mini") not in _rows(tmp_path)  # re-keyed, once
    # ... and from then on they are A's: B is asked
    nb = b.total_requests
    assert describe(["OLD1"], config=_cfg(tmp_path, b.openai_base)).cached == 0 and b.total_requests == nb + 1

    # the offline embedder's key is unchanged: an existing cached vector is served as it was
    local = plugins.embedders.resolve_model("local/all-MiniLM-L6-v2-int8")
    comp = local[0].obj(local[1])
    assert comp.cache_key == comp.model_id and comp.legacy_cache_keys == ()
    with Cache(tmp_path / "cache.sqlite") as c:
        c.put_vectors(comp.model_id, {text_hash("cached locally"): np.full(384, 0.5, np.float32)})
    got = roles.embed_texts(get_settings({"cache.path": str(tmp_path / "cache.sqlite")}), ["cached locally"])
    np.testing.assert_array_equal(got[0], np.full(384, 0.5, np.float32))


def test_cache_clear_by_model_id_clears_every_endpoint(servers, tmp_path):
    a, b = servers
    for srv in (a, b):
        describe(["FCGR3A"], config=_cfg(tmp_path, srv.openai_base))
    assert len(_rows(tmp_path, "role='describe'")) == 2
    res = CliRunner().invoke(cli, ["--set", f"cache.path=\"{tmp_path / 'cache.sqlite'}\"", "cache", "clear",
                                   "--model", "litellm/openai/gpt-4o-mini", "--yes"])
    assert res.exit_code == 0 and "Deleted 2 entries" in res.output


# --------------------------------------------------------------------------- 2. credentials
@pytest.mark.parametrize("role", ["describe", "embed"])
def test_missing_key_is_a_config_error_before_any_request(tmp_path, role):
    slow_retries = {"retries": 3, "backoff": 30.0}  # a retry would take 30 s or more
    s = get_settings({"describe.model": "openai/gpt-4o-mini", "embed.model": "openai/text-embedding-3-small",
                      "describe.options": slow_retries, "embed.options": slow_retries, "cache.enabled": False})
    roles.description_writer(s)  # resolving (config show, dry runs) needs no key
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY is not set.*api_key_env") as err:
        if role == "describe":
            describe(["CD3E"], config=s)
        else:
            roles.embed_texts(s, ["x"])
    assert time.perf_counter() - t0 < 20.0  # no retries, no backoff (the bound leaves room for a cold litellm import)
    assert "concurrency" not in str(err.value)
    res = CliRunner().invoke(cli, ["--set", "describe.model=\"openai/gpt-4o-mini\"", "--set", "cache.enabled=false",
                                   "describe", "genes", "CD3E", "-o", str(tmp_path / "x.tsv")])
    assert res.exit_code == 2 and "OPENAI_API_KEY" in res.output


def test_named_key_variable_is_checked_too():
    s = get_settings({"describe.model": "openai/gpt-4o-mini", "describe.api_key_env": "MY_UNSET_KEY"})
    with pytest.raises(ConfigError, match="MY_UNSET_KEY"):
        roles.description_writer(s)


def test_loopback_gateway_gets_the_configured_key(tmp_path, monkeypatch):
    key = "gw-key-0123456789abcdef"
    with FakeLLMServer(api_key=key) as gw:
        monkeypatch.setenv("OPENAI_API_KEY", key)  # the provider's own variable
        s = _cfg(tmp_path, gw.openai_base)
        assert describe(["CD3E"], config=s).texts
        assert roles.embed_texts(s, ["x"]).shape == (1, 16)
        assert gw.auth_headers and set(gw.auth_headers) == {f"Bearer {key}"}
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.setenv("GW_KEY", key)  # or a variable named by api_key_env
        s = _cfg(tmp_path, gw.openai_base, dopts={"max_tokens": 100}, **{"describe.api_key_env": "GW_KEY"})
        assert describe(["LYZ"], config=s).texts
        monkeypatch.delenv("GW_KEY")
        with pytest.raises(ProviderError, match="rejected the API key"):  # no key at all: the gateway says 401
            describe(["NKG7"], config=_cfg(tmp_path, gw.openai_base))


def test_loopback_server_without_any_key_still_works(servers, tmp_path):
    a, _ = servers
    s = _cfg(tmp_path, a.openai_base, describe_model="hosted_vllm/llama", dopts={"max_tokens": 99})
    assert describe(["GNLY"], config=s).texts
    assert describe(["GNLY"], config=_cfg(tmp_path, a.openai_base, dopts={"max_tokens": 98})).texts


# --------------------------------------------------------------------------- 3. total deadline
@pytest.mark.parametrize("role", ["describe", "embed"])
def test_a_dripping_server_cannot_hold_a_request_past_its_timeout(tmp_path, role):
    with FakeLLMServer(drip_interval=0.05) as srv:  # a byte every 50 ms: no read ever times out
        s = _cfg(tmp_path, srv.openai_base, describe_model="openai/drip", embed_model="openai/drip",
                 dopts={"timeout": 1, "retries": 1}, eopts={"timeout": 1, "retries": 1})
        t0 = time.perf_counter()
        with pytest.raises(ProviderError, match=r"no complete answer within 1 s.*Gave up after 2 attempts"):
            if role == "describe":
                describe(["CD3E"], config=s)
            else:
                roles.embed_texts(s, ["x"])
        wall = time.perf_counter() - t0
        assert 1.9 < wall < 4.0, wall  # two attempts of 1 s each, not ~25 s of dripping
        assert srv.by_model["drip"] == 2
    assert not _rows(tmp_path)


# --------------------------------------------------------------------------- 4. answer validation
def test_apologies_are_refusals_and_not_cached(servers, tmp_path):
    a, _ = servers
    s = _cfg(tmp_path, a.openai_base, describe_model="openai/apologize")
    with pytest.warns(ScelmoWarning, match="refusal: I apologize"):
        res = describe(["CD3E"], config=s)
    assert res.texts == {} and "CD3E" in res.failed
    assert not _rows(tmp_path)


def test_vectors_of_the_wrong_length_for_dimensions_are_refused(tmp_path):
    with FakeLLMServer(dim=16, honour_dimensions=False) as srv:
        s = _cfg(tmp_path, srv.openai_base, eopts={"dimensions": 8})
        with pytest.raises(ProviderError, match=r"length 16, but `dimensions = 8`"):
            roles.embed_texts(s, ["a", "b"])
    assert not _rows(tmp_path)


def test_all_zero_vectors_are_refused(servers, tmp_path):
    a, _ = servers
    with pytest.raises(ProviderError, match="all-zero"):
        roles.embed_texts(_cfg(tmp_path, a.openai_base, embed_model="openai/zeros"), ["a", "b"])
    assert not _rows(tmp_path)


# --------------------------------------------------------------------------- 6. credentials in api_base
def test_credentials_in_api_base_are_refused_without_showing_them(servers, tmp_path, capsys):
    """litellm does not send a URL's user:password: such an api_base made every request fail as
    a connection error, retried as if the server were busy. It is now a configuration error, up
    front, that never shows the password."""
    import anndata as ad

    import scelmo

    a, _ = servers
    secret_base = a.openai_base.replace("http://", f"http://alice:{PASSWORD}@")
    res = CliRunner().invoke(cli, ["--set", f"describe.api_base=\"{secret_base}\"", "--set",
                                   "describe.model=\"openai/gpt-4o-mini\"", "config", "show"])
    assert res.exit_code == 2 and PASSWORD not in res.output and "alice:***@127.0.0.1" in res.output
    assert "must not carry credentials" in res.output
    with pytest.raises(ConfigError, match="must not carry credentials") as err:
        describe(["HBB"], config=_cfg(tmp_path, secret_base, **{"cache.enabled": False}))
    assert PASSWORD not in str(err.value)
    adata = ad.AnnData(np.ones((2, 2), np.float32))
    adata.var_names = ["CD3E", "LYZ"]
    with pytest.raises(ConfigError):
        scelmo.tl.embed_genes(adata, config=_cfg(tmp_path, secret_base))
    assert PASSWORD not in repr(dict(adata.uns))
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f


def test_router_model_list_secrets_are_masked_in_config_show(servers):
    a, _ = servers
    deployments = [{"model_name": "g", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-dep-0123456789",
                                                           "api_base": a.openai_base.replace("//", f"//u:{PASSWORD}@")}}]
    from scelmo import config

    shown = json.dumps(config.show(get_settings({"describe.model": "g", "describe.model_list": deployments})))
    assert "sk-dep-0123456789" not in shown and PASSWORD not in shown


def test_no_warning_noise(servers, tmp_path):
    a, _ = servers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        describe(["CD14"], config=_cfg(tmp_path, a.openai_base))
