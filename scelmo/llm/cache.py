"""One SQLite store for descriptions and vectors.

Keyed by ``(role, model, prompt_hash, input_hash)``: ``role`` is ``"describe"`` or
``"embed"``, ``model`` the component's ``cache_key`` (who answered: the model id, plus,
for remote models, the endpoint and every option that changes the answer, e.g.
``litellm/openai/gpt-4o-mini [api_base=http://127.0.0.1:8000/v1, max_tokens=512]``;
never a secret), ``prompt_hash`` the prompt template's hash (name, version, text; empty
for embeddings), ``input_hash`` the SHA-256 of the input text.

Older versions keyed remote answers by the bare model id, without the endpoint. Such
entries are *adopted* (re-keyed, once) by the first configuration that asks for that
model id (the component's ``legacy_cache_keys``) -- normally the configuration that
wrote them -- and from then on belong to it alone: another endpoint never reads them.
The database runs in WAL mode, every write is its own committed transaction (so an
interrupted run keeps everything finished before it) and several processes may share
one file. While another process holds the file's lock, an operation waits (a
:class:`~scelmo.errors.ScelmoWarning` says so after :data:`LOCK_NOTICE` seconds) at
most :data:`LOCK_TIMEOUT` seconds, in short steps so that Ctrl-C and SIGTERM are
handled at once, then raises :class:`CacheLockedError`. A damaged file raises
:class:`CacheDamagedError` (which says to delete or move it; :func:`reset_cache_file`
does that).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from scelmo.config import get_settings
from scelmo.errors import IntegrityError, ScelmoError, ScelmoWarning

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    role        TEXT NOT NULL,
    model       TEXT NOT NULL,
    prompt_hash TEXT NOT NULL DEFAULT '',
    input_hash  TEXT NOT NULL,
    value       BLOB NOT NULL,
    dim         INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    PRIMARY KEY (role, model, prompt_hash, input_hash)
) WITHOUT ROWID;
"""
_CHUNK = 500  # SQLite variable limit safety
_SQLITE_MAGIC = b"SQLite format 3\x00"

#: Longest wait, in seconds, for another process's lock on the cache file (per operation)
#: before :class:`CacheLockedError` is raised.
LOCK_TIMEOUT = 60.0
#: Seconds of waiting for a lock after which a warning says what the run is waiting for.
LOCK_NOTICE = 5.0
#: SQLite's own wait per attempt, in seconds: short, so that signals are handled between attempts.
_BUSY_STEP = 0.2
#: Messages of SQLite errors that say the file cannot be opened or written (not that it is damaged).
_NOT_WRITABLE = ("readonly", "read-only", "unable to open", "disk i/o", "disk is full", "permission",
                 "authorization")
#: The same advice in every message: where to put the cache instead.
_OTHER_PATH = ("set `cache.path` to another file (on the command line: `--set cache.path=FILE`; "
               "or SCELMO_CACHE__PATH)")


class CacheError(ScelmoError):
    """The cache file cannot be used (base class of :class:`CacheLockedError` and :class:`CacheDamagedError`)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class CacheLockedError(CacheError):
    """Another process held the cache file's lock for longer than :data:`LOCK_TIMEOUT` seconds."""


class CacheDamagedError(CacheError, IntegrityError):
    """The cache file is damaged (or is not a scelmo cache); delete or move it."""


def _is_busy(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def _unsaved_note(unsaved: tuple[int, str]) -> str:
    """What a failed write lost: ``unsaved`` is ``(count, noun)``, e.g. ``(3, "description")``."""
    n, noun = unsaved
    if not n:
        return ""
    what, verb = (noun, "is") if n == 1 else (noun + "s", "are")
    return (f" The {n} {what} made just now could not be stored there and {verb} lost (a later run makes them "
            "again); everything stored before is kept.")


#: What SQLite says about a file it cannot read as a database (the damage cases; others are raised as they are).
_DAMAGED = ("malformed", "not a database", "file is encrypted", "no such table", "no such column", "corrupt")


def _readable_without_entries(path: Path) -> bool:
    """Whether ``path`` opens as an SQLite database whose schema can be read and has no
    ``entries`` table (so it is not a scelmo cache, damaged or not)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error:
        return False  # damaged beyond reading its schema: the file names (and header) decide
    return "entries" not in tables


def reset_cache_file(path: str | Path) -> None:
    """Delete the cache file ``path`` (with its ``-wal`` / ``-shm`` companions) and create an empty one.

    For a damaged file (:class:`CacheDamagedError`); every entry is lost. A file that is
    neither an SQLite file nor named like one (``.sqlite``, ``.sqlite3``, ``.db``) is left
    alone (:class:`CacheError`): ``cache.path`` may point at another file by mistake.
    """
    path = Path(path).expanduser()
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(len(_SQLITE_MAGIC))
        if magic != _SQLITE_MAGIC and path.suffix.lower() not in (".sqlite", ".sqlite3", ".db"):
            raise CacheError(
                f"{path} is not an SQLite file, so it was not deleted. If `cache.path` points there by mistake, set "
                "it to another file (on the command line: `--set cache.path=FILE`); if it is a damaged scelmo cache, "
                "delete it yourself.", path)
        if _readable_without_entries(path):
            raise CacheError(
                f"{path} is a readable SQLite database without scelmo's `entries` table (another program's?), so it "
                "was not deleted. Point `cache.path` at scelmo's own cache file (`--set cache.path=FILE`).", path)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
              path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)
    Cache(path).close()


def text_hash(text: str) -> str:
    """SHA-256 hex digest of a text (the cache's ``input_hash``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Cache:
    """A thread-safe handle on the SQLite cache at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._gave_up = False  # after one lock timeout, later operations do not wait again
        self._warned = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), timeout=_BUSY_STEP, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout={int(_BUSY_STEP * 1000)}")
        except (OSError, sqlite3.Error) as exc:
            raise self._unusable(exc) from None
        try:
            self._run("open", self._setup_schema)
        except BaseException:
            self._conn.close()
            raise

    def _setup_schema(self) -> None:
        # (two processes opening a new file at once can get SQLITE_BUSY from the switch to
        # WAL mode without the busy handler being consulted: _run retries it)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def _unusable(self, exc: BaseException, what: str = "open", unsaved: tuple[int, str] = (0, "")) -> CacheError:
        return CacheError(
            f"Cannot {what} the scelmo cache at {self.path}: {exc}.{_unsaved_note(unsaved)} Make it writable, "
            f"{_OTHER_PATH}, or disable "
            "the cache (`cache.enabled = false`; on the command line `--set cache.enabled=false`).", self.path)

    def _damaged(self, exc: BaseException, unsaved: tuple[int, str] = (0, "")) -> CacheDamagedError:
        return CacheDamagedError(
            f"The scelmo cache at {self.path} is damaged or is not a scelmo cache ({exc}).{_unsaved_note(unsaved)} "
            f"Delete or move that file (`scelmo cache clear --yes` deletes it and starts an empty one; cached "
            f"descriptions and vectors are then made again), or {_OTHER_PATH}.", self.path)

    def _locked(self, waited: float, unsaved: tuple[int, str] = (0, "")) -> CacheLockedError:
        return CacheLockedError(
            f"Another process holds the lock on the scelmo cache at {self.path} (waited {waited:.0f} s)."
            f"{_unsaved_note(unsaved)} Wait for that process to finish (or stop it) and run again, or "
            f"{_OTHER_PATH}.", self.path)

    def _run(self, what: str, fn: Callable[[], T], *, unsaved: tuple[int, str] = (0, "")) -> T:
        """``fn()`` (one SQLite operation: ``what`` is "open", "read" or "write to"), retried while
        another process holds the file's lock.

        Waits at most :data:`LOCK_TIMEOUT` seconds in all, in steps of :data:`_BUSY_STEP` seconds
        (so that signals are handled), warning once after :data:`LOCK_NOTICE` seconds; then raises
        :class:`CacheLockedError`. Other SQLite errors become :class:`CacheError` (the file cannot
        be opened or written) or :class:`CacheDamagedError`. ``unsaved`` is how many new entries
        ``fn`` stores and what they are (``(3, "description")``): the error says they were not stored.
        """
        start = time.monotonic()
        while True:
            try:
                out = fn()
                self._gave_up = False
                return out
            except sqlite3.DatabaseError as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                if not _is_busy(exc):
                    if any(word in str(exc).lower() for word in _NOT_WRITABLE):
                        raise self._unusable(exc, what, unsaved) from None
                    if any(word in str(exc).lower() for word in _DAMAGED):
                        raise self._damaged(exc, unsaved) from None
                    raise  # (a programming error or a constraint: not a reason to delete the file)
                waited = time.monotonic() - start
                if self._gave_up or waited >= LOCK_TIMEOUT:
                    self._gave_up = True
                    raise self._locked(waited, unsaved) from None
                if waited >= LOCK_NOTICE and not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"Waiting to {what} the scelmo cache at {self.path}: another process holds its lock "
                        f"(giving up after {LOCK_TIMEOUT:.0f} s).", ScelmoWarning, stacklevel=2)
                time.sleep(min(0.05, _BUSY_STEP))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generic -----------------------------------------------------------------
    def _get(
        self, role: str, model: str, prompt_hash: str, keys: list[str], legacy: Sequence[str] = ()
    ) -> dict[str, tuple[bytes, int]]:
        for old in legacy:
            if old != model:
                self.adopt(role, old, model)
        out: dict[str, tuple[bytes, int]] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                rows = self._run("read", lambda part=part, marks=marks: self._conn.execute(
                    "SELECT input_hash, value, dim FROM entries WHERE role=? AND model=? "
                    f"AND prompt_hash=? AND input_hash IN ({marks})",
                    (role, model, prompt_hash, *part),
                ).fetchall())
                out.update({h: (v, d) for h, v, d in rows})
        return out

    def adopt(self, role: str, old: str, new: str) -> int:
        """Re-key every ``role`` entry stored under ``old`` to ``new`` (entries ``new`` already
        has stay as they are); returns how many moved. Used once for entries of older versions."""
        with self._lock:
            if self._run("read", lambda: self._conn.execute(
                "SELECT 1 FROM entries WHERE role=? AND model=? LIMIT 1", (role, old)
            ).fetchone()) is None:
                return 0
            cur = self._run("write to", lambda: self._conn.execute(
                "UPDATE OR IGNORE entries SET model=? WHERE role=? AND model=?", (new, role, old)
            ))
            return int(cur.rowcount)

    def _put(self, role: str, model: str, prompt_hash: str, items: Iterable[tuple[str, bytes, int]]) -> None:
        now = time.time()
        rows = [(role, model, prompt_hash, h, v, d, now) for h, v, d in items]
        if not rows:
            return

        def write() -> None:
            if self._conn.in_transaction:  # one left open by an interrupted write (Ctrl-C in a notebook)
                self._conn.execute("ROLLBACK")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:  # (KeyboardInterrupt too): never leave the transaction open
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

        with self._lock:
            self._run("write to", write, unsaved=(len(rows), "vector" if role == "embed" else "description"))

    # -- vectors -----------------------------------------------------------------
    def get_vectors(self, model: str, hashes: list[str], *, legacy: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Cached float32 vectors by input hash (missing ones are absent); entries under the
        older keys ``legacy`` are adopted by ``model`` first (:meth:`adopt`)."""
        return {
            h: np.frombuffer(v, dtype=np.float32).copy()
            for h, (v, _d) in self._get("embed", model, "", hashes, legacy).items()
        }

    def put_vectors(self, model: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors by input hash; committed before returning."""
        self._put(
            "embed",
            model,
            "",
            ((h, np.asarray(v, dtype=np.float32).tobytes(), int(np.size(v))) for h, v in vectors.items()),
        )

    # -- texts -------------------------------------------------------------------
    def get_texts(
        self, model: str, prompt_hash: str, hashes: list[str], *, legacy: Sequence[str] = ()
    ) -> dict[str, str]:
        """Cached descriptions by input hash (``legacy`` as for :meth:`get_vectors`)."""
        return {
            h: v.decode("utf-8")
            for h, (v, _d) in self._get("describe", model, prompt_hash, hashes, legacy).items()
        }

    def put_texts(self, model: str, prompt_hash: str, texts: Mapping[str, str]) -> None:
        """Store descriptions by input hash; committed before returning."""
        self._put("describe", model, prompt_hash, ((h, t.encode("utf-8"), 0) for h, t in texts.items()))

    # -- maintenance -------------------------------------------------------------
    def stats(self) -> list[dict[str, object]]:
        """Entry counts and sizes per (role, model)."""
        with self._lock:
            rows = self._run("read", lambda: self._conn.execute(
                "SELECT role, model, COUNT(*), SUM(LENGTH(value)), MAX(dim), MAX(created) "
                "FROM entries GROUP BY role, model ORDER BY role, model"
            ).fetchall())
        return [
            {"role": r, "model": m, "entries": n, "bytes": int(b or 0), "dim": int(d or 0), "last_write": t}
            for r, m, n, b, d, t in rows
        ]

    def clear(self, *, role: str | None = None, model: str | None = None) -> int:
        """Delete entries (all, or those of one role and/or model); returns how many.

        ``model`` is a full key from :meth:`stats` or a model id, which also matches
        every endpoint / option variant of it (``<model id> [...]``).
        """
        where: list[str] = []
        args: list[Any] = []
        if role:
            where.append("role=?")
            args.append(role)
        if model:
            prefix = model + " ["
            where.append("(model=? OR substr(model, 1, ?)=?)")
            args.extend([model, len(prefix), prefix])
        sql = "DELETE FROM entries" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            cur = self._run("write to", lambda: self._conn.execute(sql, args))
            n = cur.rowcount
            if not where:
                self._run("write to", lambda: self._conn.execute("VACUUM"))
        return int(n)


@contextlib.contextmanager
def open_cache(settings: object | None = None) -> Iterator[Cache | None]:
    """The cache configured in ``settings``, closed on exit (``None`` when ``cache.enabled`` is false)::

        with open_cache(settings) as cache:
            vectors = embedder.embed(texts, cache=cache)
    """
    s = settings if settings is not None else get_settings()
    if not s.cache.enabled:  # type: ignore[attr-defined]
        yield None
        return
    with Cache(s.cache.resolved_path()) as cache:  # type: ignore[attr-defined]
        yield cache
