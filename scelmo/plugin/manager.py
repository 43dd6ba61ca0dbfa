"""Plugins: lazy loading of ``scelmo`` entry points and typed registries of their components.

Plugins are discovered through the ``scelmo`` entry-point group, first-party ones
included. Nothing is imported until a component is looked up (or the CLI starts).
A plugin that fails to import, or whose hook raises, is skipped with a
:class:`~scelmo.errors.PluginWarning` that names it; with ``plugins.strict = true``
(or ``SCELMO_STRICT_PLUGINS=1``) it raises :class:`~scelmo.errors.PluginError`.

``SCELMO_LOAD_PLUGINS`` limits which entry points load: a comma-separated list of
entry-point names (``"local,zeroshot"``); an empty string loads none.

There is one :class:`Registry` per component kind (:data:`REGISTRIES`). Look-ups fill a
registry on first use by calling its hook on every plugin; an unknown name raises
:class:`~scelmo.errors.UnknownComponentError` listing close matches.
"""


from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from typing import Any, Generic, TypeVar

import pluggy

from scelmo.config import get_settings
from scelmo.errors import PluginError, PluginWarning, UnknownComponentError
from scelmo.plugin import hookspecs
from scelmo.plugin.components import (
    Aggregator,
    KnowledgeSource,
    PromptTemplate,
    Provider,
    TextEmbedder,
)
from scelmo.plugin.heads import CAPABILITIES, TaskHead
from scelmo.redact import mask

T = TypeVar("T")

# -- registries ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component."""

    name: str
    obj: T
    kind: str
    plugin: str
    distribution: str
    aliases: tuple[str, ...] = field(default=())
    catch_all: bool = False
    version: str = ""

    @property
    def origin(self) -> str:
        """The distribution and version that provides a third-party component
        (``"scelmo-maxagg 0.1.0"``); empty for scelmo's own plugins and run-time ones."""
        if not self.distribution or self.distribution.lower() == BUILTIN_DISTRIBUTION or self.distribution.startswith("<"):
            return ""
        return f"{self.distribution} {self.version}".strip()

    @property
    def description(self) -> str:
        doc = getattr(self.obj, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """Components of one kind (``"aggregator"``, ``"embedder"``, ...), by name.

    Parameters
    ----------
    kind
        Human-readable kind, used in messages.
    hook
        Name of the hook that fills this registry (``"register_aggregators"``).
    base
        Class every registered object must subclass (or be an instance of, for
        instance registries such as prompts).
    instances
        Whether the hook registers instances rather than classes.
    """

    def __init__(self, kind: str, hook: str, base: type, *, instances: bool = False) -> None:
        self.kind = kind
        self.hook = hook
        self.base = base
        self.instances = instances
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._filled = False
        self._warned_catch_alls = False

    # -- filling -----------------------------------------------------------------
    def add(
        self,
        obj: T,
        *,
        name: str | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        catch_all: bool = False,
        plugin: str = "<runtime>",
        distribution: str = "",
        version: str = "",
    ) -> None:
        """Register ``obj`` (usually called through a hook's ``register`` callback).

        A class of a third-party distribution gets ``scelmo_origin`` (``"dist version"``),
        which provenance records and :meth:`scelmo.Model.save` keeps.
        """
        ok = isinstance(obj, self.base) if self.instances else (
            isinstance(obj, type) and issubclass(obj, self.base)
        )
        if not ok:
            what = "an instance" if self.instances else "a subclass"
            raise PluginError(
                f"Plugin {plugin!r} registered {obj!r} as a {self.kind}, but it is not "
                f"{what} of {self.base.__module__}.{self.base.__qualname__}."
            )
        name = name or getattr(obj, "name", None)
        if not name or not isinstance(name, str):
            raise PluginError(f"Plugin {plugin!r} registered a {self.kind} without a name ({obj!r}): give the "
                              "class a `name` attribute or pass register(..., name=...).")
        if isinstance(aliases, str):
            aliases = (aliases,)
        key = name.lower()
        if key in self._entries and self._entries[key].obj is not obj:
            prev = self._entries[key]
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {prev.plugin!r} and by "
                f"{plugin!r}. Uninstall one of them or limit loading with SCELMO_LOAD_PLUGINS."
            )
        if key in self._aliases and self._aliases[key] != key:
            owner = self._entries[self._aliases[key]]
            raise PluginError(
                f"{self.kind} {name!r} of plugin {plugin!r} is already another name of {owner.name!r} (plugin "
                f"{owner.plugin!r}). Register it under a name of its own."
            )
        if self.base is TaskHead:
            unknown = sorted(set(getattr(obj, "capabilities", ())) - CAPABILITIES)
            if unknown:
                raise PluginError(
                    f"Plugin {plugin!r} registered the {self.kind} {name!r} with unknown capabilities {unknown}; "
                    f"a head declares a subset of {sorted(CAPABILITIES)}."
                )
        kept: list[str] = []
        for alias in aliases:  # an alias never takes another component's name or alias
            a = str(alias).lower()
            taken = self._entries.get(a) or self._entries.get(self._aliases.get(a, ""))
            if a != key and taken is not None and taken.obj is not obj:
                warnings.warn(
                    f"scelmo plugin {plugin!r}: the alias {alias!r} of {self.kind} {name!r} is already "
                    f"{'the name' if a in self._entries else 'an alias'} of {taken.name!r} (plugin {taken.plugin!r}); "
                    "the alias was ignored.", PluginWarning, stacklevel=4)
                continue
            kept.append(str(alias))
        entry = Entry(
            name=name,
            obj=obj,
            kind=self.kind,
            plugin=plugin,
            distribution=distribution,
            aliases=tuple(kept),
            catch_all=catch_all,
            version=version,
        )
        if not self.instances and entry.origin:
            with contextlib.suppress(AttributeError, TypeError):
                type.__setattr__(obj, "scelmo_origin", entry.origin)  # type: ignore[arg-type]
        self._entries[key] = entry
        for alias in kept:
            self._aliases[alias.lower()] = key

    def remove(self, name: str) -> None:
        """Forget a component (for tests)."""
        key = name.lower()
        self._entries.pop(key, None)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered."""
        for entry in [e for e in self._entries.values() if e.plugin == plugin]:
            self.remove(entry.name)

    @property
    def filled(self) -> bool:
        """Whether the plugins' hooks have already run for this registry."""
        return self._filled

    def clear(self) -> None:
        self._entries.clear()
        self._aliases.clear()
        self._filled = False
        self._warned_catch_alls = False

    def _ensure_filled(self) -> None:
        if not self._filled:
            self._filled = True
            try:
                fill_registry(self)
            except BaseException:  # (strict mode): no half-filled registry for the next look-up
                self.clear()
                raise

    # -- look-up -----------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_filled()
        return sorted(e.name for e in self._entries.values())

    def entries(self) -> list[Entry[T]]:
        self._ensure_filled()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self.entries())

    def __contains__(self, name: str) -> bool:
        self._ensure_filled()
        key = name.lower()
        return key in self._entries or key in self._aliases

    def entry(self, name: str) -> Entry[T]:
        """The entry registered as ``name`` (or an alias of it)."""
        self._ensure_filled()
        key = name.lower()
        if key not in self._entries:  # a name before an alias
            key = self._aliases.get(key, key)
        if key in self._entries:
            return self._entries[key]
        raise self._unknown(name)

    def get(self, name: str) -> T:
        """The component registered as ``name``."""
        return self.entry(name).obj

    def resolve_model(self, model: str) -> tuple[Entry[T], str]:
        """Find the component serving a model string such as ``"local/minilm"``.

        Tries, in order: the whole string as a registered name, its ``prefix/`` as a
        registered name (the rest is the model within that component), then a
        catch-all component. Returns the entry and the model string to hand it.
        """
        self._ensure_filled()
        if model in self:
            return self.entry(model), model
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self:
            return self.entry(prefix), rest
        catch_alls = [e for e in self._entries.values() if e.catch_all]  # built-in plugins' first
        if len(catch_alls) > 1 and not self._warned_catch_alls:
            self._warned_catch_alls = True
            warnings.warn(
                f"Several {self.kind}s take any model string: {', '.join(f'{e.name!r} (plugin {e.plugin!r})' for e in catch_alls)}. "
                f"Strings no component claims go to {catch_alls[0].name!r}; prefix a model with another's name "
                f"(e.g. '{catch_alls[1].name}/...') to use it.", PluginWarning, stacklevel=3)
        if catch_alls:
            return catch_alls[0], model
        raise self._unknown(model)

    def _unknown(self, name: str) -> UnknownComponentError:
        known = sorted({e.name for e in self._entries.values()} | set(self._aliases))
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(sorted(e.name for e in self._entries.values())) or "none"
        allowed = _allowed()
        limited = (f" SCELMO_LOAD_PLUGINS={os.environ.get('SCELMO_LOAD_PLUGINS', '')!r} loads only those plugins "
                   "(the built-in ones are plugins too: add e.g. 'local,zeroshot,litellm,torch,prompts', or unset "
                   "it)." if allowed is not None else "")
        return UnknownComponentError(
            f"Unknown {self.kind} {name!r}.{hint} Available: {listing}.{limited} "
            "Run `scelmo plugins` to see what is installed."
        )

    def create(self, name: str, /, **options: Any) -> Any:
        """Instantiate the component class registered as ``name`` with ``options``."""
        cls = self.get(name)
        return cls(**options)  # type: ignore[operator]


# -- the plugin manager -------------------------------------------------------
ENTRY_POINT_GROUP = "scelmo"
#: The distribution of the built-in plugins (``plugins/``), registered like any other.
BUILTIN_DISTRIBUTION = "scelmo"


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
    commands: dict[str, list[str]] = {}
    loaded = False


_state = _State()


def _strict() -> bool:
    env = os.environ.get("SCELMO_STRICT_PLUGINS")
    if env is not None:
        return env.strip().lower() in {"1", "true", "yes", "on"}
    try:
        return bool(get_settings().plugins.strict)
    except Exception:  # a broken config must not break plugin loading
        return False


def _report_failure(name: str, exc: BaseException, what: str, *, skipped: str = "was skipped") -> None:
    strict = _strict()
    message = (
        f"scelmo plugin {name!r} failed to {what}{'' if strict else f' and {skipped}'}: "
        f"{type(exc).__name__}: {str(exc).rstrip('.')}. Fix or uninstall it, or exclude it with "
        "SCELMO_LOAD_PLUGINS" + (" (plugins.strict is on: a failing plugin stops scelmo)." if strict else ".")
    )
    if strict:
        raise PluginError(message) from exc
    warnings.warn(message, PluginWarning, stacklevel=3)


def check_strict(settings: Any) -> None:
    """With ``settings.plugins.strict``, refuse to go on when a plugin failed to load.

    Plugins load once per process, at first use, reading ``plugins.strict`` from the
    environment and config file; a run's own settings (``scelmo --set plugins.strict=true``,
    ``config={"plugins.strict": True}``) come later, so the roles and the CLI call this
    with them.
    """
    if not getattr(getattr(settings, "plugins", None), "strict", False):
        return
    get_plugin_manager()
    failed = sorted((i for i in _state.infos.values() if i.error), key=lambda i: i.name)
    if failed:
        listing = "; ".join(f"{i.name!r} ({i.error})" for i in failed)
        raise PluginError(f"plugins.strict is on and {len(failed)} plugin(s) failed: {listing}. Fix or uninstall "
                          "them, exclude them with SCELMO_LOAD_PLUGINS, or turn plugins.strict off.")


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
            info.error = mask(f"{type(exc).__name__}: {exc}")  # (shown by `scelmo plugins`, --json too)
            _report_failure(ep.name, exc, "load")
    unknown = sorted((allowed or set()) - {ep.name for ep in eps})
    if unknown:
        warnings.warn(f"SCELMO_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed plugin is "
                      f"called; installed: {', '.join(sorted(ep.name for ep in eps)) or 'none'}.",
                      PluginWarning, stacklevel=3)


def register_plugin(obj: Any, name: str, *, distribution: str = "<runtime>") -> None:
    """Register a plugin object at run time (tests, notebooks); a name already taken is an error."""
    pm = get_plugin_manager()
    if pm.has_plugin(name):
        raise PluginError(f"A plugin named {name!r} is already registered; unregister_plugin({name!r}) first, "
                          "or choose another name.")
    pm.register(obj, name=name)
    _state.infos[name] = PluginInfo(name=name, distribution=distribution, version="", module=repr(obj))
    for reg in REGISTRIES.values():
        if reg.filled:
            _fill_from(reg, name, obj)


def unregister_plugin(name: str) -> None:
    """Remove a run-time plugin and everything it registered."""
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin, name=name)
    _state.infos.pop(name, None)
    _state.commands.pop(name, None)
    for reg in REGISTRIES.values():
        reg.remove_plugin(name)


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, loaded or failed."""
    get_plugin_manager()
    return sorted(_state.infos.values(), key=lambda i: i.name)


def _note_error(plugin_name: str, message: str) -> None:
    """Add ``message`` to what ``scelmo plugins`` shows for the plugin (every failure, not the last)."""
    info = _state.infos.get(plugin_name)
    if info is not None:
        text = mask(message)
        info.error = text if not info.error else f"{info.error}; {text}"


def _fill_from(registry: Registry, plugin_name: str, plugin: Any) -> None:
    """Run one plugin's hook for ``registry``. What the hook registers is kept only when the
    hook returns: a hook that raises leaves nothing behind. A registration that is refused
    (no name, wrong type, a name already taken) skips that component, with a warning."""
    impl = getattr(plugin, registry.hook, None)
    if impl is None:
        return
    info = _state.infos.get(plugin_name)
    staged: list[tuple[Any, dict[str, Any]]] = []

    def register(obj: Any, **options: Any) -> None:
        staged.append((obj, options))

    try:
        impl(register=register)
    except Exception as exc:  # noqa: BLE001
        _note_error(plugin_name, f"{registry.hook}: {type(exc).__name__}: {exc}")
        _report_failure(plugin_name, exc, f"run {registry.hook}")
        return
    add = partial(registry.add, plugin=plugin_name, distribution=info.distribution if info else "",
                  version=info.version if info else "")
    for obj, options in staged:
        try:
            add(obj, **options)
        except (PluginError, TypeError) as exc:
            _note_error(plugin_name, f"{registry.hook}: {exc}")
            article = "an" if registry.kind[:1] in "aeiou" else "a"
            _report_failure(plugin_name, exc, f"register {article} {registry.kind}", skipped="that component was skipped")


def _builtin(plugin_name: str) -> bool:
    info = _state.infos.get(plugin_name)
    return info is not None and info.distribution.lower() == BUILTIN_DISTRIBUTION


def _in_fill_order(impls: list[Any]) -> list[Any]:
    """Hook implementations in the order their components are registered: the built-in
    plugins first (so a third-party plugin never replaces one of their names), then the
    others by entry-point name (pluggy keeps them in registration order)."""
    return sorted(impls, key=lambda impl: not _builtin(impl.plugin_name))


def fill_registry(registry: Registry) -> None:
    """Call ``registry.hook`` on every plugin, one at a time (errors are isolated)."""
    pm = get_plugin_manager()
    hook = getattr(pm.hook, registry.hook)
    for impl in _in_fill_order(hook.get_hookimpls()):
        _fill_from(registry, impl.plugin_name, impl.plugin)


def add_commands(cli: Any) -> None:
    """Let every plugin add CLI commands once (a failing plugin is skipped with a warning)."""
    if getattr(cli, "_scelmo_plugin_commands", False):
        return
    cli._scelmo_plugin_commands = True
    pm = get_plugin_manager()
    for impl in _in_fill_order(pm.hook.register_commands.get_hookimpls()):
        before = dict(getattr(cli, "commands", {}))
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001
            cli.commands = before  # (nothing half-added)
            _note_error(impl.plugin_name, f"register_commands: {type(exc).__name__}: {exc}")
            _report_failure(impl.plugin_name, exc, "add its commands")
            continue
        added = []
        for name, command in list(cli.commands.items()):
            if name in before and before[name] is not command:  # a command of scelmo or an earlier plugin
                cli.commands[name] = before[name]
                warnings.warn(f"scelmo plugin {impl.plugin_name!r} tried to replace the command {name!r}; the "
                              "existing command was kept. Give the plugin's command a name of its own.",
                              PluginWarning, stacklevel=2)
                _note_error(impl.plugin_name, f"register_commands: the command {name!r} exists; not replaced")
            elif name not in before:
                added.append(name)
        _state.commands[impl.plugin_name] = sorted(added)


def plugin_commands(plugin_name: str) -> list[str]:
    """The CLI commands ``plugin_name`` added (after :func:`add_commands`)."""
    return list(_state.commands.get(plugin_name, []))


def reset() -> None:
    """Forget every loaded plugin and registered component (for tests)."""
    _state.pm = None
    _state.infos = {}
    _state.commands = {}
    _state.loaded = False
    for reg in REGISTRIES.values():
        reg.clear()


def _make_registries() -> dict[str, Registry]:
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
