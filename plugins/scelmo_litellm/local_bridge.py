"""scelmo's own embedders as a litellm provider: ``scelmo/<embedder model string>``.

With this, ``embed.model = "scelmo/local/all-MiniLM-L6-v2-int8"`` goes through litellm
to the offline int8 MiniLM (no network), so a litellm router ``model_list`` can mix
local and remote deployments (e.g. a remote model with the local one as fallback).
``embed.model = "local/all-MiniLM-L6-v2-int8"`` reaches the same model directly.
"""

from __future__ import annotations

from typing import Any

from scelmo import plugin as plugins
from scelmo.errors import ConfigError


def _embed(model: str, texts: list[str]) -> list[list[float]]:
    entry, sub = plugins.embedders.resolve_model(model)
    if entry.catch_all:
        raise ConfigError(
            f"scelmo/{model} names no scelmo embedder (known: "
            f"{', '.join(n for n in plugins.embedders.names() if n != 'litellm')})."
        )
    vecs = entry.obj(sub).embed_batch(list(texts))
    return [list(map(float, v)) for v in vecs]


def install(lib: Any) -> None:
    """Register the ``scelmo`` custom provider with litellm (once)."""
    if any(p.get("provider") == "scelmo" for p in (lib.custom_provider_map or [])):
        return
    from litellm import CustomLLM
    from litellm.types.utils import Usage

    class ScelmoLocal(CustomLLM):
        def embedding(self, model: str, input: list[str], model_response: Any, *args: Any, **kwargs: Any) -> Any:
            texts = [input] if isinstance(input, str) else list(input)
            name = model.split("/", 1)[1] if model.startswith("scelmo/") else model
            model_response.data = [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(_embed(name, texts))
            ]
            model_response.model = model
            model_response.usage = Usage(prompt_tokens=0, total_tokens=0)
            return model_response

        async def aembedding(self, *args: Any, **kwargs: Any) -> Any:
            return self.embedding(*args, **kwargs)

    lib.custom_provider_map = [*(lib.custom_provider_map or []), {"provider": "scelmo", "custom_handler": ScelmoLocal()}]
