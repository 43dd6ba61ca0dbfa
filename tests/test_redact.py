"""scelmo.redact.mask: the one function every printed or stored setting / error goes through."""

from __future__ import annotations

import pytest

from scelmo.redact import MASK, is_secret_name, mask, url_secrets


@pytest.mark.parametrize("name", ["api_key", "OPENAI_API_KEY", "azure_ad_token", "clientSecret", "Authorization",
                                  "password", "x-api-key", "HF_TOKEN", "aws_secret_access_key",
                                  # an LLM-path trial: `config show` printed an extra_headers "X-Auth" in clear
                                  "X-Auth", "X-Lab-Auth", "auth"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["api_key_env", "max_tokens", "prompt_tokens", "usage_completion_tokens",
                                  "input_cost_per_token", "api_base", "model", "timeout", "keys_in_environment",
                                  "author", "oauth_scopes"])
def test_names_that_are_not_secrets(name):
    assert not is_secret_name(name)


def test_urls_lose_their_credentials():
    assert mask("http://user:Pa55@host:8000/v1") == "http://user:***@host:8000/v1"
    assert mask("failed at https://ghp_TOKEN123@example.org/x.") == "failed at https://***@example.org/x."
    assert mask("https://h/v1?api-key=abc123&deployment=x") == "https://h/v1?api-key=***&deployment=x"
    assert mask("Authorization: Bearer sk-abcdef0123") == "Authorization: Bearer ***"
    assert mask("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert url_secrets("http://u:p%40ss@h/") == ["p%40ss", "p@ss"]


def test_nested_data_and_known_secrets(monkeypatch):
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", "sk-from-the-env-123")
    data = {"describe": {"api_key": "x", "api_key_env": "MY_KEY", "api_base": "http://a:b@h/v1",
                         "options": {"max_tokens": 5, "extra": {"azure_ad_token": "t"}},
                         "note": "saw sk-from-the-env-123 and my-own-secret"}}
    out = mask(data, ["my-own-secret"])
    d = out["describe"]
    assert d["api_key"] == MASK and d["api_key_env"] == "MY_KEY" and d["api_base"] == "http://a:***@h/v1"
    assert d["options"] == {"max_tokens": 5, "extra": {"azure_ad_token": MASK}}
    assert d["note"] == "saw *** and ***"
    assert mask(3) == 3 and mask(None) is None


@pytest.mark.parametrize("name", ["key_added", "labels_key", "batch_key", "perturbation_key", "cache_key",
                                  "neighbors_key", "api_base"])
def test_data_keys_are_not_secrets(name):
    assert not is_secret_name(name)


@pytest.mark.parametrize("name", ["key", "OPENAI_KEY", "api_key_2", "api_key_prod", "aws_access_key_id", "token",
                                  "secret_key"])
def test_key_names_that_stay_secret(name):
    assert is_secret_name(name)


def test_the_working_directory_is_not_a_secret(monkeypatch, tmp_path):
    """PWD holds the shell's working directory: paths in messages stay readable (DB_PWD is still a secret)."""
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("DB_PWD", "hunter2-hunter2")
    assert mask(f"{tmp_path}/model is not a directory") == f"{tmp_path}/model is not a directory"
    assert mask("login with hunter2-hunter2") == "login with ***"
    assert is_secret_name("DB_PWD")
    # a pwd setting, key or URL parameter is still a secret
    assert mask({"pwd": "hunter2hunter2"}) == {"pwd": MASK}
    assert mask("GET https://db.example.org/api?user=bob&pwd=hunter2hunter2 failed") == (
        "GET https://db.example.org/api?user=bob&pwd=*** failed")


def test_secrets_written_as_pairs_inside_text_are_masked():
    """Trial finding: `--set 'describe.options.extra={"api_key":"sk-..."}'` (a value that failed to
    parse, so a string) was shown in clear by `scelmo config show`."""
    assert mask('{"api_key":"sk-SECRET1"}') == '{"api_key":"***"}'
    assert mask('extra = "{\\"api_key\\":\\"sk-SECRET1\\"}"') == 'extra = "{\\"api_key\\":\\"***\\"}"'
    assert mask("api_key='sk-SECRET1', token: abcdef123") == "api_key='***', token: ***"
    assert mask("Authorization: Bearer abcdefghij") == "Authorization: Bearer ***"
    for kept in ("labels_key=cell_type", "max_tokens=200", "key_added: X_scelmo", "api_key_env=OPENAI_API_KEY"):
        assert mask(kept) == kept


def test_hints_keep_their_placeholders_and_sentences_their_punctuation():
    """Trial finding: "(`export OPENAI_API_KEY=...`)" lost its closing "`)" to the mask, and
    "(token=sk-...)." its ")." (the hint read as if a value had been redacted)."""
    hint = "Export it (`export OPENAI_API_KEY=...`) before running scelmo."
    assert mask(hint) == hint
    assert mask("set OPENAI_API_KEY=<your key> first") == "set OPENAI_API_KEY=<your key> first"
    assert mask("failed (token=sk-test-SECRET123). Fix or uninstall it.") == "failed (token=***). Fix or uninstall it."
    assert mask("api_key=abc)def") == "api_key=***"  # punctuation inside a value is no excuse
