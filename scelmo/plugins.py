"""The plugin manager: lazy, one-at-a-time loading of ``scelmo`` entry points.

Plugins are discovered through the ``scelmo`` entry-point group, first-party ones
included. Nothing is imported until a component is looked up (or the CLI starts).
A plugin that fails to import, or whose hook raises, is skipped with a
:class:`~scelmo.errors.PluginWarning` that names it; with ``plugins.strict = true``
(or ``SCELMO_STRICT_PLUGINS=1``) it raises :class:`~scelmo.errors.PluginError`.

``SCELMO_LOAD_PLUGINS`` limits which entry points load: a comma-separated list of
entry-point names (``"local,zeroshot"``); an empty string loads none.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, PluginWarning
from .registry import Registry

ENTRY_POINT_GROUP = "scelmo"


@dataclass
class PluginInfo:
    """What ``scelmo plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None


class _State:
    pm: pluggy.PluginManager | None = None
    infos: dict[str, PluginInfo] = {}
    loaded = False


_state = _State()


def _strict() -> bool:
    env = os.environ.get("SCELMO_STRICT_PLUGINS")
    if env is not None:
        return env.strip().lower() in {"1", "true", "yes", "on"}
    try:
        from .config import get_settings

        return bool(get_settings().plugins.strict)
    except Exception:  # a broken config must not break plugin loading
        return False


def _report_failure(name: str, exc: BaseException, what: str) -> None:
    message = (
        f"scelmo plugin {name!r} failed to {what} and was skipped: "
        f"{type(exc).__name__}: {exc}. Fix or uninstall it, or exclude it with "
        "SCELMO_LOAD_PLUGINS."
    )
    if _strict():
        raise PluginError(message) from exc
    warnings.warn(message, PluginWarning, stacklevel=3)


def _allowed() -> set[str] | None:
    raw = os.environ.get("SCELMO_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    if _state.pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        _state.pm = pm
    if not _state.loaded:
        _state.loaded = True
        _load_entry_points(_state.pm)
    return _state.pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed()
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in eps:
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else ""
        version = ep.dist.version if ep.dist is not None else ""
        info = PluginInfo(name=ep.name, distribution=dist, version=version, module=ep.value)
        _state.infos[ep.name] = info
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any failure must be isolated
            info.error = f"{type(exc).__name__}: {exc}"
            _report_failure(ep.name, exc, "load")


def register_plugin(obj: Any, name: str, *, distribution: str = "<runtime>") -> None:
    """Register a plugin object at run time (tests, notebooks)."""
    pm = get_plugin_manager()
    pm.register(obj, name=name)
    _state.infos[name] = PluginInfo(name=name, distribution=distribution, version="", module=repr(obj))
    for reg in REGISTRIES.values():
        if reg._filled:
            _fill_from(reg, name, obj)


def unregister_plugin(name: str) -> None:
    """Remove a run-time plugin and everything it registered."""
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin, name=name)
    _state.infos.pop(name, None)
    for reg in REGISTRIES.values():
        for entry in list(reg._entries.values()):
            if entry.plugin == name:
                reg.remove(entry.name)


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, loaded or failed."""
    get_plugin_manager()
    return sorted(_state.infos.values(), key=lambda i: i.name)


def _fill_from(registry: Registry, plugin_name: str, plugin: Any) -> None:
    impl = getattr(plugin, registry.hook, None)
    if impl is None:
        return
    info = _state.infos.get(plugin_name)
    register = partial(
        registry.add, plugin=plugin_name, distribution=info.distribution if info else ""
    )
    try:
        impl(register=register)
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001
        if info is not None:
            info.error = f"{registry.hook}: {type(exc).__name__}: {exc}"
        _report_failure(plugin_name, exc, f"run {registry.hook}")


def fill_registry(registry: Registry) -> None:
    """Call ``registry.hook`` on every plugin, one at a time (errors are isolated)."""
    pm = get_plugin_manager()
    hook = getattr(pm.hook, registry.hook)
    for impl in reversed(hook.get_hookimpls()):  # registration order
        _fill_from(registry, impl.plugin_name, impl.plugin)


def add_commands(cli: Any) -> None:
    """Let every plugin add CLI commands once (a failing plugin is skipped with a warning)."""
    if getattr(cli, "_scelmo_plugin_commands", False):
        return
    cli._scelmo_plugin_commands = True
    pm = get_plugin_manager()
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001
            _report_failure(impl.plugin_name, exc, "add its commands")


def reset() -> None:
    """Forget every loaded plugin and registered component (for tests)."""
    _state.pm = None
    _state.infos = {}
    _state.loaded = False
    for reg in REGISTRIES.values():
        reg.clear()


def _make_registries() -> dict[str, Registry]:
    from .components import (
        Aggregator,
        KnowledgeSource,
        PromptTemplate,
        Provider,
        TaskHead,
        TextEmbedder,
    )

    return {
        "knowledge_source": Registry("knowledge source", "register_knowledge_sources", KnowledgeSource),
        "provider": Registry("LLM provider", "register_providers", Provider),
        "embedder": Registry("text embedder", "register_embedders", TextEmbedder),
        "aggregator": Registry("aggregator", "register_aggregators", Aggregator),
        "head": Registry("task head", "register_heads", TaskHead),
        "prompt": Registry("prompt", "register_prompts", PromptTemplate, instances=True),
    }


REGISTRIES: dict[str, Registry] = _make_registries()
knowledge_sources: Registry = REGISTRIES["knowledge_source"]
providers: Registry = REGISTRIES["provider"]
embedders: Registry = REGISTRIES["embedder"]
aggregators: Registry = REGISTRIES["aggregator"]
heads: Registry = REGISTRIES["head"]
prompts: Registry = REGISTRIES["prompt"]
