"""Provenance in ``adata.uns["scelmo"]``: strings and numbers only, never secrets."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from scelmo import keys
from scelmo._version import __version__
from scelmo.redact import is_secret_name, mask


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


#: ``adata.uns["scelmo"][BY_KEY][key]``: the record of the step that wrote ``key``.
BY_KEY = "by_key"


def record(adata: Any, step: str, info: dict[str, Any]) -> None:
    """Store ``info`` under ``adata.uns["scelmo"][step]`` with the version and a timestamp.

    ``uns["scelmo"][step]`` is the latest run of that step. When ``info`` names the key
    the step wrote (``key_added``), the record is also kept under
    ``uns["scelmo"]["by_key"][key_added]`` (with ``step`` added), so that two runs with
    different keys (``X_scelmo`` and ``X_scelmo_aa``) each keep their own.
    """

    prov = dict(adata.uns.get(keys.PROVENANCE, {}) or {})
    prov["version"] = __version__
    entry = clean(info)
    entry["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prov[step] = entry
    key = info.get("key_added")
    if isinstance(key, str) and key:
        by_key = dict(prov.get(BY_KEY, {}) or {})
        by_key[key] = {"step": step, **entry}
        prov[BY_KEY] = by_key
    adata.uns[keys.PROVENANCE] = prov


def for_key(adata: Any, key: str, step: str | None = None) -> dict[str, Any]:
    """The provenance of what is stored under ``key`` (e.g. ``obsm["X_scelmo_aa"]``).

    Falls back to ``uns["scelmo"][step]`` when that latest record wrote ``key`` (files
    written before ``by_key`` existed); ``{}`` when nothing is known.
    """
    prov = adata.uns.get(keys.PROVENANCE, {}) or {}
    found = (prov.get(BY_KEY, {}) or {}).get(key)
    if found is not None:
        return dict(found)
    if step is not None:
        latest = prov.get(step, {}) or {}
        if latest.get("key_added", key) == key:
            return dict(latest)
    return {}
