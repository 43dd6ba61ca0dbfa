"""scelmo: single-cell embeddings from language models (scELMo).

Gene knowledge -> gene vectors -> cell embeddings, offline by default::

    import scanpy as sc, scelmo
    adata = sc.datasets.pbmc68k_reduced()
    scelmo.tl.embed_cells(adata)          # -> adata.obsm["X_scelmo"]
    scelmo.tl.cluster(adata)              # -> adata.obs["scelmo_leiden"]

Submodules load lazily: importing scelmo does no work (no plugins, models or network).
The layers and which way imports run are described in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scelmo._deprecated import ALIASES as _ALIASES
from scelmo._deprecated import install as _install_aliases
from scelmo._version import __version__

_SUBMODULES = {
    "tl", "pl", "metrics", "datasets", "keys", "config", "plugin", "io", "testing", "errors", "genes",
    "perturbation", "model", "llm", "expression", "knowledge", "provenance", "conditioning",
}
_ATTRS = {
    "GeneEmbeddings": ("scelmo.genes", "GeneEmbeddings"),
    "GeneVocabulary": ("scelmo.genes", "GeneVocabulary"),
    "ScelmoError": ("scelmo.errors", "ScelmoError"),
    "get_settings": ("scelmo.config", "get_settings"),
    "describe": ("scelmo.knowledge.descriptions", "describe"),
    "hookimpl": ("scelmo.plugin.hookspecs", "hookimpl"),
    "Model": ("scelmo.model", "Model"),
}

__all__ = [
    "GeneEmbeddings", "GeneVocabulary", "Model", "ScelmoError", "__version__", "conditioning", "config", "datasets",
    "describe", "errors", "expression", "genes", "get_settings", "hookimpl", "io", "keys", "knowledge", "llm",
    "metrics", "model", "perturbation", "pl", "plugin", "provenance", "testing", "tl",
]

if TYPE_CHECKING:  # pragma: no cover
    from scelmo import (
        conditioning,
        config,
        datasets,
        errors,
        expression,
        genes,
        io,
        keys,
        knowledge,
        llm,
        metrics,
        model,
        perturbation,
        pl,
        plugin,
        provenance,
        testing,
        tl,
    )
    from scelmo.config import get_settings
    from scelmo.errors import ScelmoError
    from scelmo.genes import GeneEmbeddings, GeneVocabulary
    from scelmo.knowledge.descriptions import describe
    from scelmo.model import Model
    from scelmo.plugin import hookimpl

_install_aliases()


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"scelmo.{name}")
    if name in _ATTRS:
        mod, attr = _ATTRS[name]
        return getattr(importlib.import_module(mod), attr)
    if f"scelmo.{name}" in _ALIASES:
        return importlib.import_module(f"scelmo.{name}")  # the alias module warns
    raise AttributeError(f"module 'scelmo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
