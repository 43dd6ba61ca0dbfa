"""Reading the data formats the CLI accepts, and atomic output files.

Every file scelmo writes appears all at once: it is written to a temporary file in
the destination directory and renamed into place, so an error never leaves a partial
output behind. The temporary (``.<name>.<random>.tmp``) is removed on every exit path;
one left by a process that was killed is swept away by the next write of the same
output once it is a day old. A full file system (``ENOSPC``, ``EDQUOT``) becomes a
:class:`~scelmo.errors.DiskFullError`: "No space left on device while writing OUTPUT;
nothing was written."
"""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from scelmo.errors import DiskFullError, InputError, ScelmoError

#: errno values that mean "the output does not fit".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Temporaries older than this (seconds) beside an output are left-overs of a killed run.
STALE_TEMP_AGE = 24 * 3600.0
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", f"errno = {errno.ENOSPC},", f"errno = {errno.EDQUOT},")


#: numpy's ``tofile`` reports a short write without errno: "288384 requested and 127968 written".
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
#: Free bytes below which an ``OSError`` while writing counts as a full file system.
_NEARLY_FULL = 1 << 20


def _full_after(exc: BaseException, where: Path) -> bool:
    """``exc`` is a full file system, or an ``OSError`` raised while ``where``'s file system
    is (nearly) full (writers that lose errno, e.g. short writes)."""
    if is_disk_full(exc):
        return True
    if not isinstance(exc, OSError):
        return False
    try:
        return shutil.disk_usage(where).free < _NEARLY_FULL
    except OSError:
        return False


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full file system.

    h5py and anndata do not always keep ``errno`` (anndata re-raises with the key being
    written; HDF5 puts ``errno = 28`` in its message), so the message is checked too.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        text = str(exc)
        if any(t in text for t in _DISK_FULL_TEXT) or (isinstance(exc, OSError) and _SHORT_WRITE.search(text)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def sweep_stale_temps(path: str | os.PathLike[str], *, max_age: float = STALE_TEMP_AGE) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files and directories beside ``path`` older than ``max_age`` s.

    They are what :func:`atomic_path` / :func:`atomic_dir` leave only when the process
    is killed mid-write; younger ones may belong to a run still going, so they stay.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed: list[Path] = []
    now = time.time()
    for p in parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - p.lstat().st_mtime < max_age:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed


def _discard(tmp: Path) -> None:
    """Remove a failed temporary, first freeing its space, so that HDF5 handles a failed
    writer left open on it can flush when they are freed. (After a write failed on a
    full disk, h5py may still crash the interpreter at exit; the CLI therefore exits
    at once after reporting :class:`~scelmo.errors.DiskFullError`.)"""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.truncate(tmp, 0)
        with contextlib.suppress(OSError):
            tmp.unlink()
    gc.collect()  # objects of a failed writer (h5py ids) are freed now, with space to flush


def check_writable(path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Raise a clear error now, before any work, if ``path`` cannot be written."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"Output path {path} is a directory; give a file name.")
    if path.exists() and not overwrite:
        raise InputError(f"Output file {path} exists; pass --overwrite to replace it.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is a file, not a directory" if parent.exists() else "does not exist"
        raise InputError(f"Cannot write {path}: {parent} {what}.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"Cannot write {path}: directory {parent} is not writable.")
    try:  # and a real file: root passes os.access where the file system refuses (/sys, read-only mounts)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(f"Cannot write {path}: directory {parent} is not writable ({exc.strerror}).") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success only.

    The temporary is removed on every other exit path; a full file system raises
    :class:`~scelmo.errors.DiskFullError` naming ``path``.
    """
    path = check_writable(path)
    sweep_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
        os.replace(tmp_path, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and _full_after(exc, path.parent)
        _discard(tmp_path)
        if full:
            raise DiskFullError(path) from None
        raise
    finally:
        if tmp_path.exists() or tmp_path.is_symlink():  # e.g. the generator was closed
            _discard(tmp_path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False,
               marker: str | Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces ``path`` on success only.

    The temporary directory is removed on every exit path; a full file system raises
    :class:`~scelmo.errors.DiskFullError` naming ``path``. ``overwrite`` replaces only a
    directory this kind of writer made: an empty one, or one holding a ``marker`` file
    (e.g. ``manifest.json``); never a file or a folder of other files (``-o results
    --overwrite`` must not delete the input that sits in ``results``).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ScelmoError(f"{path} already exists; pass overwrite=True to replace it.")
    check_output_dir(path, overwrite=True, marker=marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename
        replace_dir(tmp, path)
    except Exception as exc:
        full = not isinstance(exc, DiskFullError) and _full_after(exc, path.parent)
        if tmp is not None:
            _discard(tmp)
        if full:
            raise DiskFullError(path) from None
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool, marker: str | Sequence[str] = ()) -> Path:
    """Raise a clear error now, before any work, if the directory ``path`` cannot be written:
    it exists and ``overwrite`` is off, it is a file, or it holds files but no ``marker`` (see
    :func:`atomic_dir`)."""
    path = Path(path)
    if not path.exists():
        return path
    if not overwrite:
        raise InputError(f"{path} exists; pass --overwrite (overwrite=True) to replace it.")
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    if not path.is_dir():
        raise InputError(f"{path} is a file, not an output directory; refusing to replace it. Choose another "
                         "path (a directory is written there).")
    held = sorted(p.name for p in path.iterdir()) if markers else []
    if held and not any((path / m).exists() for m in markers):
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise InputError(f"{path} holds other files ({shown}), not an earlier output of this kind; refusing to "
                         "replace it even with overwrite. Choose a new or empty directory.")
    return path


def replace_dir(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Move the finished directory ``tmp`` to ``path``, replacing any directory there.

    The old directory is first renamed aside, so ``path`` is at every moment either the
    complete old or the complete new directory (never a half-written one).
    """
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
    return path
