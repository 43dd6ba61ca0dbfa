"""Provenance in ``adata.uns["scelmo"]``: strings and numbers only, never secrets."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from . import keys
from .redact import is_secret_name, mask


def clean(value: Any) -> Any:
    """Keep strings, numbers, bools and (nested) dicts of them; drop secret-named keys, mask
    secrets inside strings (URL credentials, known keys)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items() if v is not None and not is_secret_name(str(k))}
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return mask(str(value))


def record(adata: Any, step: str, info: dict[str, Any]) -> None:
    """Store ``info`` under ``adata.uns["scelmo"][step]`` with the version and a timestamp."""
    from . import __version__

    prov = dict(adata.uns.get(keys.PROVENANCE, {}) or {})
    prov["version"] = __version__
    entry = clean(info)
    entry["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prov[step] = entry
    adata.uns[keys.PROVENANCE] = prov
