"""From config roles to components: who describes genes, who embeds texts.

``describe.model`` is looked up among knowledge sources first, then LLM providers;
``embed.model`` among text embedders. A name matches a registered component by its
full name, by its ``prefix/``, or falls to a catch-all plugin (litellm). With
``offline = true`` any component that would use the network is refused here, before
the first request.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np

from scelmo import plugin as plugins
from scelmo.config import RoleConfig, ScelmoSettings
from scelmo.errors import ConfigError, OfflineError, UnknownComponentError
from scelmo.genes import GeneVocabulary
from scelmo.llm.cache import open_cache
from scelmo.llm.calls import priced_by_options
from scelmo.plugin import KnowledgeSource, Provider, TextEmbedder

_CONNECTION = ("api_base", "api_key", "api_key_env", "model_list")


def _options(role: RoleConfig, cls: type, role_name: str) -> dict[str, Any]:
    """The role's ``options`` plus its connection settings, for a component class."""
    out = dict(role.options)
    accepted = getattr(getattr(cls, "Options", None), "model_fields", {})
    for key in _CONNECTION:
        value = getattr(role, key)
        if value is None:
            continue
        if key not in accepted:
            name = getattr(cls, "name", "") or getattr(cls, "__name__", str(cls))
            raise ConfigError(
                f"{role_name}.{key} is set, but {role_name}.model = {role.model!r} is served by {name!r} "
                f"({getattr(cls, '__module__', '?')}), which takes no {key}. Remove it, and set the options of "
                f"{name!r} under `{role_name}.options` (it takes: {', '.join(accepted) or 'none'}). To accept "
                f"{key}, {name!r} would need the option `{key}`: its author can add that field to its Options "
                "(docs/providers/custom.md). To reach a server through litellm instead, choose a litellm model "
                "string (e.g. \"openai/...\", \"ollama/...\")."
            )
        out.setdefault(key, value)
    return out


def _check_offline(settings: ScelmoSettings, role: str, component: Any) -> None:
    if settings.offline and getattr(component, "requires_network", False):
        # litellm's components decide from api_base; a plugin's says so itself
        plugin = "" if priced_by_options(component) else (
            f" (If {getattr(component, 'name', component)!r} only talks to this machine, its author can set "
            "`self.requires_network = False` for such instances: docs/providers/custom.md.)"
        )
        raise OfflineError(
            f"The {role!r} role is set to {getattr(component, 'model_id', component)!r}, which "
            "uses the network, but `offline = true`. Choose a local model (e.g. "
            "`describe.model = \"local\"`, `embed.model = \"local/all-MiniLM-L6-v2-int8\"`) "
            f"or set `offline = false`.{plugin}"
        )


def _check_typo(model: str, role: str, registries: Sequence[Any]) -> None:
    """Refuse a model name whose component part is one edit or so from a registered component
    (``"locl"``, ``"lokal/..."``, ``"litelm/..."``): the catch-all LLM provider would take it as
    a remote model and fail only when called."""
    prefix = model.partition("/")[0].lower()
    if not prefix or any(prefix in reg for reg in registries):
        return
    known = sorted({n for reg in registries for n in reg.names()})
    close = difflib.get_close_matches(prefix, known, n=1, cutoff=0.75)
    if close:
        raise ConfigError(f"{role}.model = {model!r}: no component is called {prefix!r}; did you mean {close[0]!r}? "
                          f"Installed: {', '.join(known)} (and any litellm model, e.g. 'openai/gpt-4o-mini'). Run "
                          "`scelmo plugins` to see what is installed.")


def description_writer(settings: ScelmoSettings) -> KnowledgeSource | Provider:
    """The component serving the ``describe`` role: a knowledge source (offline) or an LLM provider."""
    plugins.check_strict(settings)
    role = settings.describe
    _check_typo(role.model, "describe", (plugins.knowledge_sources, plugins.providers))
    try:
        entry, model = plugins.knowledge_sources.resolve_model(role.model)
    except UnknownComponentError as ks_error:
        try:
            entry, model = plugins.providers.resolve_model(role.model)
        except UnknownComponentError:
            raise ks_error from None
    component = entry.obj(model, **_options(role, entry.obj, "describe"))
    _check_offline(settings, "describe", component)
    return component


#: Earlier name of :func:`description_writer`.
describer = description_writer


def embedder(settings: ScelmoSettings) -> TextEmbedder:
    """The component serving the ``embed`` role."""
    plugins.check_strict(settings)
    role = settings.embed
    _check_typo(role.model, "embed", (plugins.embedders,))
    entry, model = plugins.embedders.resolve_model(role.model)
    component = entry.obj(model, **_options(role, entry.obj, "embed"))
    _check_offline(settings, "embed", component)
    return component


def embed_texts(
    settings: ScelmoSettings,
    texts: list[str],
    *,
    using: TextEmbedder | None = None,
    progress: bool | None = None,
    desc: str = "embedding texts",
    budget: Any = None,
) -> np.ndarray:
    """Vectors for ``texts`` from the ``embed`` role (or the embedder ``using``), through the configured cache."""

    component = using if using is not None else embedder(settings)
    with open_cache(settings) as cache:
        return component.embed(texts, cache=cache, progress=progress, desc=desc, budget=budget)


def marker_source(describe: KnowledgeSource | Provider | None = None) -> KnowledgeSource | None:
    """The knowledge source whose cell-type markers to use: the describer when it knows some,
    else the first registered knowledge source that does (an LLM describer knows none)."""
    def candidates() -> Any:  # (the registered sources are started only when the describer knows none)
        if isinstance(describe, KnowledgeSource):
            yield describe
        for entry in plugins.knowledge_sources.entries():
            try:
                yield entry.obj()
            except Exception:  # noqa: BLE001 - a source that cannot start is skipped
                continue

    for source in candidates():
        try:
            if source.cell_type_markers():
                return source
        except Exception:  # noqa: BLE001 - a source whose markers cannot be read is skipped
            continue
    return None


def vocabulary(describe: KnowledgeSource | Provider | None = None) -> GeneVocabulary | None:
    """The gene vocabulary: the describer's own, else the first knowledge source that has one."""
    if isinstance(describe, KnowledgeSource):
        vocab = describe.vocabulary()
        if vocab is not None:
            return vocab
    for entry in plugins.knowledge_sources.entries():
        try:
            vocab = entry.obj().vocabulary()
        except Exception:  # noqa: BLE001 - a source that cannot build one is skipped
            continue
        if vocab is not None:
            return vocab
    return None
