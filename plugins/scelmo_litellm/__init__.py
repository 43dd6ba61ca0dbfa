"""scelmo_litellm: any LLM and embedding provider through litellm.

Registers a catch-all LLM provider and a catch-all text embedder named ``litellm``:
any ``describe.model`` / ``embed.model`` string that no other plugin claims (e.g.
``openai/gpt-4o-mini``, ``anthropic/claude-haiku-4-5``, ``ollama/llama3.1``,
``hosted_vllm/meta-llama/...``, ``azure/<deployment>``) goes to litellm. litellm itself
is imported only when such a component is created, never when the plugin registers.
"""

from __future__ import annotations

from scelmo.plugin import hookimpl

from .components import LiteLLMEmbedder, LiteLLMProvider


@hookimpl
def register_providers(register):
    register(LiteLLMProvider, catch_all=True)


@hookimpl
def register_embedders(register):
    register(LiteLLMEmbedder, catch_all=True)
