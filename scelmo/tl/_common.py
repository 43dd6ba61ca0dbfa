"""Helpers every tool shares: settings with keyword overrides, scanpy's ``copy=``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from scelmo.config import ScelmoSettings, get_settings
from scelmo.errors import InputError

Config = ScelmoSettings | Mapping[str, Any] | None


def _settings(config: Config, **overrides: Any) -> ScelmoSettings:
    return get_settings(config, **{k: v for k, v in overrides.items() if v is not None})


def _copy_of(adata: Any) -> Any:
    """``adata.copy()``, refusing backed AnnData (``copy=True`` of every tool)."""
    if getattr(adata, "isbacked", False):
        raise InputError("copy=True is not supported for backed AnnData; write to a new file instead.")
    return adata.copy()


def _check_finite(Z: np.ndarray, use_rep: str, adata: Any) -> None:
    """Refuse an embedding with NaN or infinite rows, naming the first cells."""
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        first = [str(c) for c in np.asarray(adata.obs_names)[bad][:3]]
        raise InputError(
            f"adata.obsm[{use_rep!r}] has NaN or infinite values in {int(bad.sum())} cells (e.g. {', '.join(first)}); "
            "recompute it with `scelmo.tl.embed_cells` or drop those cells."
        )
