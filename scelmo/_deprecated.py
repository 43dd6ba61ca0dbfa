"""Old module names kept importable after the move into subpackages (each warns once on import).

``import scelmo.plugins`` still works and gives a module whose attributes are those of
the new home (:mod:`scelmo.plugin`), with a :class:`DeprecationWarning` naming it.
Nothing inside scelmo imports an old name; ``tests/test_architecture.py`` checks that.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: old module -> new module (or package) it now lives in.
ALIASES: dict[str, str] = {
    "scelmo.annotate": "scelmo.tl._annotation",
    "scelmo.insilico": "scelmo.tl._insilico",
    "scelmo.rio": "scelmo.io._rds",
    "scelmo.checksums": "scelmo.io._checksums",
    "scelmo.components": "scelmo.plugin",
    "scelmo.hookspecs": "scelmo.plugin.hookspecs",
    "scelmo.plugins": "scelmo.plugin",
    "scelmo.registry": "scelmo.plugin.manager",
    "scelmo.cache": "scelmo.llm.cache",
    "scelmo.calls": "scelmo.llm.calls",
    "scelmo.matrix": "scelmo.expression.matrix",
    "scelmo.selection": "scelmo.expression.selection",
    "scelmo.distributed": "scelmo.expression.distributed",
    "scelmo.roles": "scelmo.knowledge.roles",
    "scelmo.descriptions": "scelmo.knowledge.descriptions",
    "scelmo.testing_server": "scelmo.testing.server",
    "scelmo.prompts": "scelmo_prompts",
}


class _AliasModule(types.ModuleType):
    """A stand-in for an old module name: every attribute comes from the new module."""

    def __init__(self, name: str, target: types.ModuleType) -> None:
        super().__init__(name, target.__doc__)
        self.__dict__["_target"] = target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.__dict__["_target"], attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr.startswith("__") and attr.endswith("__"):  # the import system's __spec__, __loader__, ...
            self.__dict__[attr] = value
        else:  # monkeypatching through the old name reaches the real module
            setattr(self.__dict__["_target"], attr, value)

    def __delattr__(self, attr: str) -> None:
        if attr in self.__dict__:
            del self.__dict__[attr]
        else:
            delattr(self.__dict__["_target"], attr)

    def __dir__(self) -> list[str]:
        return dir(self.__dict__["_target"])


class _AliasLoader:  # the loader protocol (importlib.abc is slow to import)
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; import it from there. The old name will be removed.",
            DeprecationWarning,
            stacklevel=4,
        )
        return _AliasModule(spec.name, importlib.import_module(self.target))

    def exec_module(self, module: types.ModuleType) -> None:
        return None

    def module_repr(self, module: types.ModuleType) -> str:
        return f"<deprecated alias {module.__name__!r}>"


class _AliasFinder:  # the meta path finder protocol
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))
        return None


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
