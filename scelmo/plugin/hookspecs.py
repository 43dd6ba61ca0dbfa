"""Plugin hook specifications.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` whose names
match the hooks below. It is registered through the ``scelmo`` entry-point group::

    # pyproject.toml of the plugin's distribution
    [project.entry-points.scelmo]
    my_plugin = "my_package.scelmo_plugin"

Every ``register_*`` hook receives a ``register`` callback and calls it once per
component. The callback's signature is ``register(component_class, *, name=None,
aliases=(), catch_all=False)``: ``name`` defaults to ``component_class.name``.
Hooks run once, lazily, the first time a component of that kind is looked up, so
a plugin module must not do heavy work at import time: import big libraries inside
the component's methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "scelmo"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator for plugin implementations: ``@scelmo.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., Any]


@hookspec
def register_knowledge_sources(register: Register) -> None:
    """Register knowledge sources: objects that describe genes in text.

    Called once, the first time a knowledge source is looked up (for the
    ``describe`` role). ``register`` takes a :class:`scelmo.plugin.KnowledgeSource`
    subclass. A knowledge source may also provide a gene vocabulary (aliases,
    Ensembl IDs, orthologs) used to resolve the user's gene names.
    """


@hookspec
def register_providers(register: Register) -> None:
    """Register LLM text providers (the ``describe`` role when it is an LLM).

    Called once, on first look-up. ``register`` takes a
    :class:`scelmo.plugin.Provider` subclass. Pass ``catch_all=True`` for a
    provider that accepts any ``vendor/model`` string (e.g. one backed by litellm).
    """


@hookspec
def register_embedders(register: Register) -> None:
    """Register text embedders (the ``embed`` role).

    Called once, on first look-up. ``register`` takes a
    :class:`scelmo.plugin.TextEmbedder` subclass; the config selects it by
    ``embed.model``, matched against the registered name, then the ``name/`` prefix,
    then a catch-all embedder.
    """


@hookspec
def register_aggregators(register: Register) -> None:
    """Register aggregators: genes x d vectors + cells x genes matrix -> cells x d.

    Called once, on first look-up. ``register`` takes a
    :class:`scelmo.plugin.Aggregator` subclass, selected by
    ``aggregate.method`` in the config or ``scelmo.tl.embed_cells(aggregator=...)``.
    """


@hookspec
def register_heads(register: Register) -> None:
    """Register task heads (zero-shot or trainable models on top of embeddings).

    Called once, on first look-up. ``register`` takes a
    :class:`scelmo.plugin.TaskHead` subclass (the contract in :mod:`scelmo.plugin.heads`).
    """


@hookspec
def register_prompts(register: Register) -> None:
    """Register named, versioned prompt templates.

    Called once, on first look-up. ``register`` takes a
    :class:`scelmo.plugin.PromptTemplate` *instance* (not a class).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``scelmo`` command line.

    Called when the CLI starts, with the root :class:`click.Group`. Keep command
    modules light: import heavy libraries inside the command function.
    """
