"""The litellm-backed components: an LLM provider and a text embedder.

Both serve any litellm model string (``openai/gpt-4o-mini``, ``anthropic/claude-...``,
``ollama/llama3.1``, ``hosted_vllm/...``, ``azure/<deployment>``, ...) or a litellm
router ``model_list``. One request = one litellm call with an explicit timeout and
no litellm-side retries; scelmo retries, batches, caches and checks (see
:mod:`scelmo.llm.calls`, :mod:`scelmo.knowledge.descriptions`).

Keys: the role's ``api_key_env`` (or, discouraged, ``api_key``), else the provider's own
variable, read by litellm (``OPENAI_API_KEY``, ...). A missing key is a
:class:`~scelmo.errors.ConfigError` before the first request. A server on this machine
that needs no key gets a placeholder only when no key is set at all.

The cache key (:attr:`cache_key`) names the endpoint and every option that changes the
answer, so two endpoints serving the same model string never share answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
from pydantic import Field, SecretStr, field_validator

from scelmo.errors import ConfigError, ProviderError
from scelmo.plugin import (
    Completion,
    EmbeddingBatch,
    Provider,
    RemoteOptions,
    TextEmbedder,
)
from scelmo.redact import is_secret_name, mask, url_secrets

from ._lib import is_loopback, litellm, map_error, scrub


def endpoint_id(url: str | None) -> str:
    """An endpoint as the cache names it: no credentials, lower-case host, no trailing slash."""
    if not url:
        return "default"
    try:
        parts = urlsplit(url if "//" in url else "//" + url)
        host = (parts.hostname or "").lower()
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return str(mask(url))
    if ":" in host:
        host = f"[{host}]"
    scheme = f"{parts.scheme.lower()}://" if parts.scheme else ""
    return f"{scheme}{host}{port}{parts.path.rstrip('/')}"


def _digest(obj: Any) -> str:
    """A short hash of non-secret settings (secrets are masked first, so they never shape a key)."""
    return _json_hash(mask(obj, []))


def _json_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _unmask_auth(original: Any, masked: Any) -> Any:
    """``masked`` with the values under names that are secrets only for the word "auth" (masked
    since 2026-12-05) as they were: what an older cache key's digest was made of."""
    if isinstance(original, dict) and isinstance(masked, dict):
        out = {}
        for k, v in original.items():
            was = is_secret_name(re.sub(r"(?i)(?<![a-z])auth(?![a-z])", "x", str(k)))
            out[k] = v if (is_secret_name(k) and not was) else _unmask_auth(v, masked.get(k))
        return out
    if isinstance(original, list | tuple) and isinstance(masked, list | tuple) and len(original) == len(masked):
        return [_unmask_auth(a, b) for a, b in zip(original, masked, strict=True)]
    return masked


class ConnectionOptions(RemoteOptions):
    """Where and how to reach the model (shared by both components)."""

    api_base: str | None = None
    #: Prefer ``api_key_env`` or the provider's own variable (OPENAI_API_KEY, ...).
    api_key: SecretStr | None = None
    #: Name of the environment variable holding the key.
    api_key_env: str | None = None
    #: Azure OpenAI API version.
    api_version: str | None = None
    #: litellm router deployments (load balancing / fallbacks); ``model`` names a group.
    model_list: list[dict[str, Any]] | None = None
    #: Prices in USD per token, for models litellm does not know (self-hosted ones).
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    #: Further keyword arguments passed to litellm as they are.
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_base")
    @classmethod
    def _no_credentials_in_url(cls, value: str | None) -> str | None:
        # litellm's HTTP clients do not send a URL's user:password: every request failed as a
        # "connection error", retried as if the server were busy
        if value and "@" in value:
            try:
                parts = urlsplit(value if "//" in value else "//" + value)
                has_userinfo = parts.username is not None or parts.password is not None
            except ValueError:
                has_userinfo = False
            if has_userinfo:
                raise ValueError("api_base must not carry credentials (user:password@): litellm does not send "
                                 "them. Give the key with api_key_env (the server's bearer token), or headers "
                                 "with extra = {extra_headers = {...}}")
        return value


class _LiteLLMComponent:
    """Shared plumbing: keys, call arguments, routers, prices."""

    options: Any
    model: str
    #: Options that change the answer (part of the cache key when set).
    _ANSWER_OPTIONS: ClassVar[tuple[str, ...]] = ()
    _missing: list[str] | None = None
    _credentials_ok: bool = False

    def _setup(self) -> None:
        o = self.options
        if not self.model and not o.model_list:
            raise ConfigError("Give a litellm model string, e.g. \"openai/gpt-4o-mini\".")
        if o.api_key_env and not os.environ.get(o.api_key_env):
            raise ConfigError(
                f"The environment variable {o.api_key_env} (the role's `api_key_env`) is not set. "
                f"Export it (`export {o.api_key_env}=...`) before running scelmo."
            )
        self._router: Any = None
        # decided from where requests really go: an `extra` api_base/base_url overrides
        # `api_base` in the call, and without either litellm reads the provider's variable
        local = self.model.startswith("scelmo/") or is_loopback(self._base())
        if o.model_list:
            local = all(
                is_loopback((d.get("litellm_params") or {}).get("api_base"))
                or str((d.get("litellm_params") or {}).get("model", "")).startswith("scelmo/")
                for d in o.model_list
            )
        self.requires_network = not local

    def _key(self) -> str | None:
        """The configured key; ``None`` lets litellm read the provider's own variable."""
        o = self.options
        if o.api_key is not None:
            return o.api_key.get_secret_value()
        return os.environ.get(o.api_key_env) if o.api_key_env else None

    def warm_up(self) -> None:
        """Import litellm and check the credentials before the first request (outside its deadline)."""
        litellm()
        self._check_credentials()

    def _base(self) -> str | None:
        """Where requests go: ``api_base`` (or one in ``extra``), else the provider's base
        variable litellm reads (``OPENAI_API_BASE``, ``OLLAMA_API_BASE``, ...); ``None``: its default."""
        o = self.options
        base = o.extra.get("api_base") or o.extra.get("base_url") or o.api_base
        if base:
            return str(base)
        provider = self.model.split("/", 1)[0].upper() if "/" in self.model else "OPENAI"
        for var in (f"{provider}_API_BASE", f"{provider}_BASE_URL"):
            if os.environ.get(var):
                return os.environ[var]
        return None

    def _secrets(self) -> list[str]:
        """Secrets of this component's configuration (environment keys are masked anyway)."""
        key = self._key()
        out = [key] if key else []
        out += url_secrets(self.options.api_base) + url_secrets(self._base())
        for dep in self.options.model_list or []:
            params = dep.get("litellm_params") or {}
            out += [str(v) for k, v in params.items() if v and is_secret_name(k)]
            out += url_secrets(params.get("api_base"))
        out += [str(v) for k, v in self.options.extra.items() if v and is_secret_name(k)]
        return out

    # -- cache identity ------------------------------------------------------------
    @property
    def cache_key(self) -> str:
        """``<model_id> [api_base=..., <answer-changing options>]``: who answers; never a secret."""
        o = self.options
        parts = [f"model_list={_digest(o.model_list)}"] if o.model_list else [f"api_base={endpoint_id(self._base())}"]
        if o.api_version:
            parts.append(f"api_version={o.api_version}")
        for name in self._ANSWER_OPTIONS:
            value = getattr(o, name)
            if value is not None:
                parts.append(f"{name}={value}")
        extra = {k: v for k, v in o.extra.items() if k not in ("api_base", "base_url") and not is_secret_name(k)}
        if extra:
            parts.append(f"extra={_digest(extra)}")
        return f"{self.model_id} [{', '.join(parts)}]"

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        """Older versions keyed answers by the bare ``model_id`` (no endpoint), and, until
        2026-12-05, by an ``extra`` digest in which values named ``*auth*`` (an ``X-Auth``
        header) were not yet masked as secrets: answers cached then stay found."""
        keys = [self.model_id]
        o = self.options
        extra = {k: v for k, v in o.extra.items() if k not in ("api_base", "base_url") and not is_secret_name(k)}
        masked = mask(extra, [])
        before = _unmask_auth(extra, masked)
        if extra and before != masked:
            keys.append(self.cache_key.replace(f"extra={_json_hash(masked)}", f"extra={_json_hash(before)}"))
        return tuple(keys)

    # -- keys ------------------------------------------------------------------------
    def _missing_key_vars(self) -> list[str]:
        """The provider's key variables litellm finds unset (e.g. ``OPENAI_API_KEY``); asked once."""
        if self._missing is None:
            o = self.options
            try:
                found = litellm().validate_environment(model=self.model, api_base=o.api_base, api_version=o.api_version)
                self._missing = [str(v) for v in (found.get("missing_keys") or []) if str(v).endswith("_API_KEY")]
            except Exception:  # noqa: BLE001 - a provider litellm cannot check: let the call tell
                self._missing = []
        return self._missing

    def _has_key(self) -> bool:
        """A key is configured (``api_key``, ``api_key_env``, or one inside ``extra``)."""
        return bool(self._key()) or any(v and is_secret_name(k) for k, v in self.options.extra.items())

    def _check_credentials(self) -> None:
        """Before the first request: a missing key is a configuration error naming its variable
        (not a failure retried as if the server were busy). A loopback server needs none."""
        if self._credentials_ok:
            return
        o = self.options
        if not (o.model_list or self.model.startswith("scelmo/") or self._has_key() or is_loopback(self._base())):
            missing = self._missing_key_vars()
            if missing:
                raise ConfigError(
                    f"{self.model!r} needs an API key, but {' / '.join(missing)} is not set. Export it "
                    f"(`export {missing[0]}=...`), or put the key in another variable and name it with the "
                    "role's `api_key_env`. Keys are read from the environment only."
                )
        self._credentials_ok = True

    def _kwargs(self) -> dict[str, Any]:
        o = self.options
        kw: dict[str, Any] = {"timeout": o.timeout, "max_retries": 0}
        if o.api_base:
            kw["api_base"] = o.api_base
        key = self._key()
        if key:
            kw["api_key"] = key
        elif (is_loopback(self._base()) and not self.model.startswith(("ollama", "scelmo/"))
              and self._missing_key_vars()):
            # a local server without a key: the SDK insists on one. When the provider's own
            # variable (OPENAI_API_KEY...) is set, litellm sends that one instead. (Where requests
            # go, as the key check decides: `api_base`, or the provider's OPENAI_API_BASE ...;
            # a trial's server given by OPENAI_API_BASE got no placeholder and every call failed.)
            kw["api_key"] = "none"
        if o.api_version:
            kw["api_version"] = o.api_version
        kw.update(o.extra)
        return kw

    async def _acall(self, kind: str, **request: Any) -> Any:
        """One litellm request (``kind``: ``"acompletion"`` or ``"aembedding"``), directly or
        through the router; failures come back as scelmo errors."""
        self._check_credentials()
        kw = {**self._kwargs(), **request}
        if self.options.model_list:  # each deployment carries its own base and key
            kw.pop("api_base", None)
            kw.pop("api_key", None)
            send = getattr(self._router_obj(), kind)
        else:
            send = getattr(litellm(), kind)
        try:
            return await send(model=self.model, **kw)
        except Exception as exc:  # noqa: BLE001 - mapped to scelmo's errors
            raise self._fail(exc) from None

    def _router_obj(self) -> Any:
        if self._router is None:
            lib = litellm()
            try:
                self._router = lib.Router(
                    model_list=self.options.model_list, num_retries=0, timeout=self.options.timeout,
                    set_verbose=False,
                )
            except Exception as exc:  # noqa: BLE001 - litellm validates the list its own way
                raise ConfigError(
                    f"litellm refused the role's model_list: {scrub(str(exc), self._secrets())}. Each entry "
                    "needs model_name and litellm_params (see docs/providers/vllm.md)."
                ) from None
        return self._router

    def _fail(self, exc: Exception) -> Exception:
        o = self.options
        # (with a model_list each deployment sends its own key, not the role's: a review)
        source = (None if o.model_list
                  else "the role's `api_key`" if o.api_key is not None
                  else f"the environment variable {o.api_key_env} (the role's `api_key_env`)" if o.api_key_env
                  else None)
        return map_error(exc, model=self.model, api_base=o.api_base, secrets=self._secrets(), key_source=source)

    def _cost(self, prompt_tokens: int, completion_tokens: int = 0, *, embedding: bool = False) -> float | None:
        o = self.options
        if o.input_cost_per_token is not None:
            return prompt_tokens * o.input_cost_per_token + completion_tokens * (o.output_cost_per_token or 0.0)
        if self.model.startswith("scelmo/"):
            return 0.0
        try:
            kw: dict[str, Any] = {"model": self.model, "prompt_tokens": prompt_tokens}
            if embedding:
                kw["call_type"] = "embedding"
            else:
                kw["completion_tokens"] = completion_tokens
            a, b = litellm().cost_per_token(**kw)
            return float(a) + float(b)
        except Exception:  # noqa: BLE001 - litellm raises several kinds for unknown models
            return None


class LiteLLMProvider(_LiteLLMComponent, Provider):
    """Any chat/completion model litellm can reach (the ``describe`` role)."""

    name = "litellm"
    _ANSWER_OPTIONS = ("max_tokens", "temperature")

    class Options(ConnectionOptions):
        temperature: float | None = Field(None, ge=0, le=2)
        max_tokens: int | None = Field(512, ge=1)

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(model, **options)
        self._setup()

    @property
    def model_id(self) -> str:
        return f"litellm/{self.model}"

    def _messages(self, prompt: str, system: str | None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": system}] if system else []
        return [*msgs, {"role": "user", "content": prompt}]

    async def acomplete(self, prompt: str, *, system: str | None = None) -> Completion:
        o = self.options
        request: dict[str, Any] = {"messages": self._messages(prompt, system)}
        if o.temperature is not None:
            request["temperature"] = o.temperature
        if o.max_tokens is not None:
            request["max_tokens"] = o.max_tokens
        resp = await self._acall("acompletion", **request)
        choices = getattr(resp, "choices", None)
        if not choices:
            raise ProviderError(f"{self.model!r} returned no choices; the server's answer is not a "
                                "chat completion. Check `api_base` and the model string.")
        text = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(text, str):
            text = ""
        usage = getattr(resp, "usage", None)
        pt = int(getattr(usage, "prompt_tokens", 0) or 0)
        ct = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(text=text, prompt_tokens=pt, completion_tokens=ct, cost=self._cost(pt, ct))

    def count_tokens(self, prompt: str, *, system: str | None = None) -> int:
        try:
            return int(litellm().token_counter(model=self.model, messages=self._messages(prompt, system)))
        except Exception:  # noqa: BLE001 - unknown tokenizer: fall back to the rough rule
            return super().count_tokens(prompt, system=system)

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        return self._cost(prompt_tokens, completion_tokens)


class LiteLLMEmbedder(_LiteLLMComponent, TextEmbedder):
    """Any embedding model litellm can reach (the ``embed`` role).

    litellm sends one request per call whatever its size, so texts go in batches of
    ``batch_size`` (provider limits: OpenAI 2,048 inputs, Ollama/vLLM depend on the
    server), ``concurrency`` batches at a time. Each answer is checked: one vector per
    input, every ``index`` once, equal lengths, finite values.
    """

    name = "litellm"
    _ANSWER_OPTIONS = ("dimensions",)

    class Options(ConnectionOptions):
        batch_size: int = Field(128, ge=1, le=2048)
        #: Output dimensions for models that support shortening (text-embedding-3-*).
        dimensions: int | None = Field(None, ge=1)

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(model, **options)
        self._setup()

    @property
    def model_id(self) -> str:
        dims = f"@{self.options.dimensions}" if self.options.dimensions else ""
        return f"litellm/{self.model}{dims}"

    async def aembed_batch(self, texts: list[str]) -> EmbeddingBatch:
        request: dict[str, Any] = {"input": texts}
        if self.options.dimensions:
            request["dimensions"] = self.options.dimensions
        resp = await self._acall("aembedding", **request)
        vectors = self._vectors(getattr(resp, "data", None), len(texts))
        usage = getattr(resp, "usage", None)
        pt = int(getattr(usage, "prompt_tokens", 0) or 0)
        return EmbeddingBatch(vectors, prompt_tokens=pt, cost=self._cost(pt, embedding=True))

    def _vectors(self, data: Any, n: int) -> np.ndarray:
        where = repr(self.model)
        if not isinstance(data, list):
            raise ProviderError(
                f"{where} returned no embedding list (got {type(data).__name__}); the server's answer "
                "is not an OpenAI-style embedding response. Check `api_base` and the model string."
            )
        if len(data) != n:
            raise ProviderError(f"{where} returned {len(data)} vectors for {n} texts. The server may "
                                "cap the batch size: lower the role's `options.batch_size`.")
        rows: list[Any] = [None] * n
        for pos, item in enumerate(data):
            get = item.get if isinstance(item, dict) else (lambda k, d=None, it=item: getattr(it, k, d))
            idx = get("index", pos)
            vec = get("embedding", None)
            if not isinstance(idx, int) or not 0 <= idx < n or rows[idx] is not None:
                raise ProviderError(f"{where} returned a bad or repeated index {idx!r} in its answer.")
            if not isinstance(vec, list | tuple) or not vec:
                raise ProviderError(f"{where} returned an empty or non-numeric vector at index {idx}.")
            rows[idx] = vec
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ProviderError(f"{where} returned vectors of different lengths {sorted(lengths)}.")
        out = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ProviderError(f"{where} returned NaN or infinite values.")
        dims = self.options.dimensions
        if dims and out.shape[1] != dims:
            raise ProviderError(
                f"{where} returned vectors of length {out.shape[1]}, but `dimensions = {dims}` was asked "
                "for: the server ignored the option. Remove `options.dimensions` or use a model that "
                "supports shortening (text-embedding-3-*)."
            )
        return out

    def count_tokens(self, texts: Any) -> int:
        try:
            lib = litellm()
            return sum(int(lib.token_counter(model=self.model, text=t)) for t in texts)
        except Exception:  # noqa: BLE001
            return super().count_tokens(texts)

    def price(self, prompt_tokens: int) -> float | None:
        return self._cost(prompt_tokens, embedding=True)
