"""Keeping secrets out of everything scelmo prints or stores: one function, :func:`mask`.

API keys come from the environment (or, discouraged, the config) and must never reach
the disk, logs, ``adata.uns``, manifests, error messages or ``scelmo config show``.
Everything that renders settings, provenance or an error goes through :func:`mask`,
which replaces

* the value of every setting whose name says it is a secret (``api_key``,
  ``access_token``, ``client_secret``, ``password``, ``Authorization``, ...);
* credentials inside URLs (``http://user:PASS@host/v1`` -> ``http://user:***@host/v1``,
  ``?api_key=...`` -> ``?api_key=***``) and ``Bearer`` tokens in text;
* any known secret value: the ones passed in, plus the values of environment
  variables whose names say they are secrets (``OPENAI_API_KEY``, ``MY_TOKEN``, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

#: What a masked setting reads as.
MASK = "**********"
_SHORT = "***"
_SECRET_WORDS = frozenset({
    "apikey", "token", "secret", "password", "passwd", "pwd", "authorization", "credential",
    "credentials", "bearer", "cookie", "sig", "signature", "auth",
})
#: Words that make a following ``key`` a secret wherever it stands (``api_key_prod``).
_SECRET_KEY_PREFIXES = frozenset({"api", "secret", "private", "access", "auth", "master", "subscription",
                                  "encryption", "signing", "client", "account", "service"})
#: Words before a final ``key`` that make it a data key, not a secret (``labels_key``, ...).
_NOT_SECRET_KEY_PREFIXES = frozenset({
    "labels", "label", "batch", "perturbation", "cache", "neighbors", "neighbor", "groupby", "group", "obs",
    "var", "obsm", "varm", "uns", "layer", "layers", "sort", "condition", "sample", "cluster", "cell", "gene",
    "dict", "primary", "foreign", "index", "partition", "column", "rep",
})
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s/?#@:]*)(?::(?P<pw>[^\s/?#@]*))?@")
_QUERY = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.-]+)=(?P<value>[^&;#\s\"']*)")
#: ``"api_key": "sk-..."``, ``api_key='sk-...'``, ``token: abc``: a name, ``:`` or ``=``, a value
#: (a setting written as JSON or Python inside a string, e.g. a value that failed to parse)
_PAIR = re.compile(r"""(?P<name>\\?["']?[A-Za-z][A-Za-z0-9_.-]*\\?["']?)(?P<sep>\s*[:=]\s*)"""
                   r"""(?P<q>\\?["']?)(?P<value>[^\s"'\\,;&}\]]+)""")
#: What a hint writes where the user's secret goes: ``...``, ``<your key>``, ``$OPENAI_API_KEY``.
_PLACEHOLDER = re.compile(r"\.{2,}|<[a-z_ -]*>?|\$\{?[A-Z_][A-Z0-9_]*\}?|\*+")
_BEARER = re.compile(r"(?P<lead>\bBearer\s+)[A-Za-z0-9._~+/=-]{6,}")
#: Environment variables whose names contain a secret word but hold no secret: the shell's
#: working directory (masking its value turned every path in an error message into
#: ``***/...``). A ``pwd`` setting, key or URL parameter is still a secret.
_NOT_SECRET_NAMES = frozenset({"pwd", "oldpwd"})
#: Environment values shorter than this are not treated as secrets (``none``, ``1``, ...).
_MIN_ENV_SECRET = 8


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """Whether a setting, header or variable called ``name`` holds a secret.

    ``api_key``, ``OPENAI_API_KEY``, ``azure_ad_token``, ``clientSecret`` and
    ``Authorization`` do; ``api_key_env`` (it names a variable), token counts and
    prices (``max_tokens``, ``prompt_tokens``, ``input_cost_per_token``) and data keys
    (``key_added``, ``labels_key``, ``cache_key``) do not.
    """
    words = _words(name)
    if not words or words[-1] == "env" or "per" in words or "cost" in words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    # "key" names a secret only as the last word (``api_key``, ``x-api-key``, ``OPENAI_KEY``,
    # ``secret_key_2``), not where it means a dictionary / AnnData key (``key_added``,
    # ``labels_key``, ``batch_key``, ``cache_key``, ``neighbors_key``).
    named = [w for w in words if not w.isdigit()]
    if any(w == "key" and prev in _SECRET_KEY_PREFIXES for prev, w in zip(named, named[1:], strict=False)):
        return True  # api_key_prod, aws_access_key_id
    if named and named[-1] == "key":
        return len(named) == 1 or named[-2] not in _NOT_SECRET_KEY_PREFIXES
    return False


def env_secrets() -> list[str]:
    """Values of environment variables whose names say they are secrets."""
    return [v for k, v in os.environ.items()
            if len(v) >= _MIN_ENV_SECRET and k.lower() not in _NOT_SECRET_NAMES and is_secret_name(k)]


def url_secrets(url: str | None) -> list[str]:
    """The credentials inside a URL's userinfo (raw and percent-decoded), if any."""
    if not url or "@" not in url:
        return []
    try:
        parts = urlsplit(url if "//" in url else "//" + url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    found = [password] if password else ([user] if user else [])
    out: list[str] = []
    for raw in found:
        for value in (raw, unquote(raw)):
            if value and value not in out:
                out.append(value)
    return out


def _mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, _SHORT)

    def userinfo(m: re.Match[str]) -> str:
        if m.group("pw") is not None:
            return f"{m.group('scheme')}{m.group('user')}:{_SHORT}@"
        return f"{m.group('scheme')}{_SHORT}@" if m.group("user") else m.group(0)

    text = _URL_USERINFO.sub(userinfo, text)
    text = _QUERY.sub(
        lambda m: f"{m.group('lead')}{m.group('name')}={_SHORT}" if is_secret_name(m.group("name")) and m.group("value")
        else m.group(0),
        text,
    )
    text = _BEARER.sub(lambda m: m.group("lead") + _SHORT, text)

    def pair(m: re.Match[str]) -> str:
        value = m.group("value")
        if not is_secret_name(m.group("name").strip("\\\"'")) or value in (_SHORT, "Bearer"):
            return m.group(0)
        # closing punctuation of the sentence stays: "(token=sk-123)." -> "(token=***)."; and a
        # placeholder in a hint ("`export OPENAI_API_KEY=...`", "=<your key>") is no secret
        head = value.rstrip("`)].,:!?")
        if _PLACEHOLDER.fullmatch(head) or not head:
            return m.group(0)
        return f"{m.group('name')}{m.group('sep')}{m.group('q')}{_SHORT}{value[len(head):]}"

    return _PAIR.sub(pair, text)


def mask(value: Any, secrets: Iterable[str] | None = None, *, key: str = "") -> Any:
    """``value`` with every secret masked: a string, or (nested) dicts / lists of them.

    Values under secret-looking keys become :data:`MASK`; strings have URL
    credentials, ``Bearer`` tokens and every known secret (``secrets`` plus
    :func:`env_secrets`) replaced by ``***``. Other values are returned unchanged.
    """
    known = [*(secrets or ()), *env_secrets()]
    return _mask(value, known, key)


def _mask(value: Any, known: list[str], key: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _mask(v, known, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v, known, key) for v in value]
    if value is not None and key and is_secret_name(key):
        return MASK
    if isinstance(value, str):
        return _mask_text(value, known)
    return value
