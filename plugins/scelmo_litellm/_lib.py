"""Importing and taming litellm, and mapping its errors to scelmo's.

litellm is imported here only, on first use, with these measured traps
defused:

* ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before the import (otherwise the import
  fetches the price list from GitHub and starts a retry thread);
* ``suppress_debug_info`` (a "Give Feedback" banner on stdout after every error);
* ``DEFAULT_MAX_RETRIES = 0`` and ``max_retries=0`` per call (embedding calls ignore
  ``num_retries`` and retry three times on their own otherwise): scelmo retries;
* an explicit ``timeout`` on every call (litellm's default is 6000 s; it bounds each
  read, so :func:`scelmo.llm.calls.with_retries` adds a deadline for the whole request);
* ``disable_hf_tokenizer_download = True``: ``token_counter`` counts with its bundled
  tiktoken encoding (``cl100k_base``) instead of downloading a HuggingFace tokenizer for
  llama-2/3 and command-r model names (HEAD requests to huggingface.co, retried for ~30 s
  without network, ``--offline`` or not). Token counts only feed the cost estimate and
  ``--max-cost``, which are documented to need no network; they are estimates either way.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import warnings
from typing import Any
from urllib.parse import urlparse

from scelmo.errors import ConfigError, ProviderError, TransientProviderError
from scelmo.redact import mask

from .local_bridge import install

_lock = threading.Lock()
_litellm: Any = None


def litellm() -> Any:
    """The configured litellm module (imported once)."""
    global _litellm
    with _lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_LOG", "ERROR")
            try:
                import litellm as lib
            except ImportError:
                raise ConfigError(
                    "This model string needs litellm, which is not installed. Install it with "
                    "`pip install 'scelmo[llm]'` (pinned, hash-checked by scripts/run), or use the "
                    "offline default (`describe.model = \"local\"`)."
                ) from None
            # litellm's Ollama types trip a harmless pydantic warning on first use
            warnings.filterwarnings("ignore", message=r".*using the `ReadOnly` qualifier", category=UserWarning)
            # a request abandoned at its timeout leaves litellm's inner coroutine unawaited (the
            # request itself is reported as timed out and retried)
            warnings.filterwarnings("ignore", message=r"coroutine '\w+\.a(?:completion|embedding)' was never awaited",
                                    category=RuntimeWarning)
            lib.suppress_debug_info = True
            lib.DEFAULT_MAX_RETRIES = 0
            lib.disable_hf_tokenizer_download = True  # token counts stay local (no huggingface.co)
            lib.telemetry = False
            lib.turn_off_message_logging = True
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "openai"):
                logging.getLogger(name).setLevel(logging.ERROR)

            install(lib)
            _litellm = lib
        return _litellm


def is_loopback(api_base: str | None) -> bool:
    """Whether ``api_base`` points at this machine (then "offline" allows it)."""
    if not api_base:
        return False
    host = urlparse(api_base if "//" in api_base else "//" + api_base).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret masked (:func:`scelmo.redact.mask`), shortened to something readable."""
    text = " ".join(mask(text, secrets).split())
    return text if len(text) <= 400 else text[:400] + " ..."


def _retry_after(exc: Exception) -> float | None:
    """Seconds from a ``Retry-After`` header on the failed response, if any."""
    sources = (getattr(exc, "litellm_response_headers", None), getattr(exc, "headers", None),
               getattr(getattr(exc, "response", None), "headers", None))
    for headers in sources:
        if not hasattr(headers, "get"):
            continue
        value = headers.get("retry-after") or headers.get("Retry-After")
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None
    return None


#: What Python's JSON decoder says of a body that is not JSON (an HTML page, a cut-off answer).
_NOT_JSON = re.compile(r"Expecting (?:value|property name|',' delimiter|':' delimiter)|Unterminated string|"
                       r"Extra data|Invalid control character|JSONDecodeError|"
                       r"Empty or invalid response from LLM endpoint")  # (litellm's own words for a non-JSON 200)


def map_error(exc: Exception, *, model: str, api_base: str | None, secrets: list[str],
              key_source: str | None = None) -> Exception:
    """A scelmo exception for a litellm (or openai / httpx) exception. ``key_source``: where the
    key sent came from (the role's ``api_key`` or ``api_key_env`` variable), for a rejected key."""
    lib = litellm()
    where = f"{model!r}" + (f" at {mask(api_base, secrets)}" if api_base else "")
    msg = scrub(str(exc), secrets)
    if _NOT_JSON.search(msg):
        # a 200 whose body is not JSON: litellm calls it a server error, but retrying a web page
        # does not help (an LLM-path trial got "lower options.concurrency, raise options.retries")
        return ProviderError(
            f"{where} answered with something that is not JSON ({msg}): an HTML page or a cut-off body. "
            "Check `api_base` (an OpenAI-compatible server's ends in /v1) and the model string's provider "
            "prefix; a proxy or login page in between answers like this too."
        )
    if "Missing credentials" in msg or "api_key client option must be set" in msg:
        return ConfigError(
            f"No API key for {where}: {msg}. Export the key in the provider's variable (e.g. "
            "OPENAI_API_KEY) or name one with the role's `api_key_env`."
        )
    transient = (
        lib.RateLimitError, lib.InternalServerError, lib.ServiceUnavailableError, lib.Timeout,
        lib.APIConnectionError,
    )
    bad_gateway = getattr(lib, "BadGatewayError", None)
    if bad_gateway is not None:
        transient = (*transient, bad_gateway)
    if isinstance(exc, lib.RateLimitError):
        return TransientProviderError(f"Rate-limited by {where}: {msg}.", retry_after=_retry_after(exc))
    if isinstance(exc, lib.Timeout):
        return TransientProviderError(
            f"No answer from {where} within the timeout ({msg}). Raise the role's `options.timeout`."
        )
    if isinstance(exc, transient):
        return TransientProviderError(f"{where} failed: {msg}.", retry_after=_retry_after(exc))
    if isinstance(exc, lib.AuthenticationError):
        if key_source:  # the user named the key: say which one was refused, not how to name one
            return ProviderError(
                f"{where} rejected the API key read from {key_source} ({msg}). Check that value: a "
                "current key, for this provider" + (" and this `api_base`" if api_base else "") + "."
            )
        return ProviderError(
            f"{where} rejected the API key ({msg}). Put the key in the environment variable your "
            "provider expects (e.g. OPENAI_API_KEY) or name one with the role's `api_key_env`."
        )
    if isinstance(exc, lib.NotFoundError):
        return ProviderError(f"{where} does not know this model or path ({msg}). Check the model "
                             "string and `api_base` (OpenAI-compatible servers need the /v1 suffix).")
    if isinstance(exc, lib.ContextWindowExceededError):
        return ProviderError(f"The request is too long for {where} ({msg}). Use shorter texts or a "
                             "smaller `batch_size`.")
    if isinstance(exc, lib.BadRequestError):
        return ProviderError(f"{where} refused the request ({msg}). Check the role's options.")
    if isinstance(exc, ProviderError | ConfigError):
        return exc
    return ProviderError(f"{where} failed unexpectedly: {type(exc).__name__}: {msg}")
