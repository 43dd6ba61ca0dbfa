"""Atomic output files.

Every file scelmo writes appears all at once: it is written to a temporary file in
the destination directory and renamed into place, so a crash or an error never
leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import InputError, ScelmoError


def check_writable(path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Raise a clear error now, before any work, if ``path`` cannot be written."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"Output path {path} is a directory; give a file name.")
    if path.exists() and not overwrite:
        raise InputError(f"Output file {path} exists; pass --overwrite to replace it.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"Cannot write {path}: directory {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"Cannot write {path}: directory {parent} is not writable.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success only."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_h5ad(adata: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``adata`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        try:
            adata.write_h5ad(tmp)
        except OSError as exc:
            raise ScelmoError(f"Writing {path} failed: {exc}") from None
    return Path(path)


def add_to_h5ad(
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    obsm: Mapping[str, Any] = (),
    uns: Mapping[str, Any] = (),
) -> Path:
    """Copy the ``.h5ad`` file ``source`` to ``path`` and add ``obsm``/``uns`` entries.

    Streams on disk: the matrix is never loaded, so this is how results computed on a
    backed AnnData are saved. Atomic like every other output.
    """
    import h5py
    from anndata.io import write_elem

    obsm = dict(obsm)
    uns = dict(uns)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            for group, items in (("obsm", obsm), ("uns", uns)):
                grp = f.require_group(group)
                for key, value in items.items():
                    if key in grp:
                        del grp[key]
                    write_elem(grp, key, value)
    return Path(path)


# R objects (.rds) for Python users: scelmo.rio, imported only when used (needs scelmo[r]).
_RIO = {"read_rds", "from_seurat", "from_sce", "to_sce", "write_rds"}


def __getattr__(name: str) -> Any:
    if name in _RIO:
        from . import rio

        return getattr(rio, name)
    raise AttributeError(f"module 'scelmo.io' has no attribute {name!r}")
