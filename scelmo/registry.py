"""Typed look-up of plugin components by name.

One :class:`Registry` per component kind. Look-ups load plugins lazily (see
:mod:`scelmo.plugins`); an unknown name raises
:class:`~scelmo.errors.UnknownComponentError` listing close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import PluginError, UnknownComponentError

T = TypeVar("T")


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
    ) -> None:
        """Register ``obj`` (usually called through a hook's ``register`` callback)."""
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
        if not name:
            raise PluginError(f"Plugin {plugin!r} registered a {self.kind} without a name.")
        key = name.lower()
        if key in self._entries and self._entries[key].obj is not obj:
            prev = self._entries[key]
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {prev.plugin!r} and by "
                f"{plugin!r}. Uninstall one of them or limit loading with SCELMO_LOAD_PLUGINS."
            )
        self._entries[key] = Entry(
            name=name,
            obj=obj,
            kind=self.kind,
            plugin=plugin,
            distribution=distribution,
            aliases=tuple(aliases),
            catch_all=catch_all,
        )
        for alias in aliases:
            self._aliases[alias.lower()] = key

    def remove(self, name: str) -> None:
        """Forget a component (for tests)."""
        key = name.lower()
        self._entries.pop(key, None)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def clear(self) -> None:
        self._entries.clear()
        self._aliases.clear()
        self._filled = False

    def _ensure_filled(self) -> None:
        if not self._filled:
            from .plugins import fill_registry

            self._filled = True
            fill_registry(self)

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
        catch_alls = [e for e in self._entries.values() if e.catch_all]
        if catch_alls:
            return catch_alls[0], model
        raise self._unknown(model)

    def _unknown(self, name: str) -> UnknownComponentError:
        known = sorted({e.name for e in self._entries.values()} | set(self._aliases))
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(sorted(e.name for e in self._entries.values())) or "none"
        return UnknownComponentError(
            f"Unknown {self.kind} {name!r}.{hint} Available: {listing}. "
            "Run `scelmo plugins` to see what is installed."
        )

    def create(self, name: str, /, **options: Any) -> Any:
        """Instantiate the component class registered as ``name`` with ``options``."""
        cls = self.get(name)
        return cls(**options)  # type: ignore[operator]
