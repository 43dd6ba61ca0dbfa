"""The ``setup_anndata`` registry: which obs columns / layer a Model uses, kept with the AnnData.

The registry is written to ``adata.uns["scelmo_setup"]`` (strings only, so it survives
``write_h5ad``) and, for objects that cannot hold it, remembered in memory by object
identity for as long as the AnnData lives.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from scelmo import keys
from scelmo.errors import InputError


@dataclass(frozen=True)
class AnnDataSetup:
    """Which parts of an AnnData a :class:`Model` uses (see :meth:`Model.setup_anndata`)."""

    labels_key: str | None = None
    batch_key: str | None = None
    layer: str | None = None
    use_raw: bool | None = None
    perturbation_key: str | None = None
    #: The ``labels_key`` value meaning "no label" (e.g. ``"Unknown"``).
    unlabeled_category: str | None = None


# object id -> (weak reference, setup); entries vanish with their AnnData
_SETUPS: dict[int, tuple[Any, AnnDataSetup]] = {}


def _remember(adata: Any, setup: AnnDataSetup) -> None:
    key = id(adata)
    try:
        ref = weakref.ref(adata, lambda _r, k=key: _SETUPS.pop(k, None))
    except TypeError:  # pragma: no cover - AnnData supports weak references
        ref = lambda a=adata: a  # noqa: E731
    _SETUPS[key] = (ref, setup)


#: The fields of :class:`AnnDataSetup` and how they are written into ``uns`` (strings only).
_SETUP_FORMAT = "scelmo.Model.setup_anndata"
_SETUP_VERSION = "1"


def _setup_to_uns(setup: AnnDataSetup) -> dict[str, str]:
    """The registry written to ``adata.uns["scelmo_setup"]``: strings only (``None`` left out)."""
    out = {"format": _SETUP_FORMAT, "format_version": _SETUP_VERSION}
    for name, value in asdict(setup).items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _setup_from_uns(adata: Any) -> AnnDataSetup | None:
    uns = getattr(adata, "uns", None)
    reg = uns.get(keys.SETUP) if uns is not None else None
    if not isinstance(reg, Mapping) or str(reg.get("format", "")) != _SETUP_FORMAT:
        return None
    if int(str(reg.get("format_version", "1"))) > int(_SETUP_VERSION):
        raise InputError(f"adata.uns[{keys.SETUP!r}] was written by a newer scelmo; call "
                         "`scelmo.Model.setup_anndata(adata, ...)` again.")
    values: dict[str, Any] = {}
    for name in AnnDataSetup.__dataclass_fields__:
        v = reg.get(name)
        if v is None:
            continue
        v = str(v)
        values[name] = (v.lower() == "true") if name == "use_raw" else v
    return AnnDataSetup(**values)


def _setup_of(adata: Any) -> AnnDataSetup | None:
    """The setup of ``adata``: its ``uns`` registry, else one registered in memory."""
    setup = _setup_from_uns(adata)
    if setup is not None:
        return setup
    hit = _SETUPS.get(id(adata))
    if hit is None or hit[0]() is not adata:
        return None
    return hit[1]
