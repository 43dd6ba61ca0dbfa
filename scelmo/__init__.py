"""scelmo: single-cell embeddings from language models (scELMo).

Gene knowledge -> gene vectors -> cell embeddings, offline by default::

    import scanpy as sc, scelmo
    adata = sc.datasets.pbmc68k_reduced()
    scelmo.tl.embed_cells(adata)          # -> adata.obsm["X_scelmo"]
    scelmo.tl.cluster(adata)              # -> adata.obs["scelmo_leiden"]

Submodules load lazily: importing scelmo does no work (no plugins, models or network).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = {
    "tl", "pl", "metrics", "datasets", "keys", "config", "plugins", "io", "testing", "errors", "genes", "cache",
    "descriptions", "prompts", "calls", "perturbation",
}
_ATTRS = {
    "GeneEmbeddings": ("genes", "GeneEmbeddings"),
    "GeneVocabulary": ("genes", "GeneVocabulary"),
    "ScelmoError": ("errors", "ScelmoError"),
    "get_settings": ("config", "get_settings"),
    "describe": ("descriptions", "describe"),
    "hookimpl": ("hookspecs", "hookimpl"),
    "Model": ("model", "Model"),
}

__all__ = [
    "GeneEmbeddings", "GeneVocabulary", "Model", "ScelmoError", "__version__", "cache", "calls", "config", "datasets",
    "describe", "descriptions", "errors", "genes", "get_settings", "hookimpl", "io", "keys", "metrics", "pl", "perturbation",
    "plugins", "prompts", "testing", "tl",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import (
        cache,
        calls,
        config,
        datasets,
        descriptions,
        errors,
        genes,
        io,
        keys,
        metrics,
        perturbation,
        pl,
        plugins,
        prompts,
        testing,
        tl,
    )
    from .config import get_settings
    from .descriptions import describe
    from .errors import ScelmoError
    from .genes import GeneEmbeddings, GeneVocabulary
    from .hookspecs import hookimpl
    from .model import Model


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRS:
        mod, attr = _ATTRS[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'scelmo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
