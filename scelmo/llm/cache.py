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
The database runs in WAL mode with a busy timeout, every write is its own committed
transaction (so an interrupted run keeps everything finished before it) and
several processes may share one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scelmo.config import get_settings
from scelmo.errors import ScelmoError

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


def text_hash(text: str) -> str:
    """SHA-256 hex digest of a text (the cache's ``input_hash``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Cache:
    """A thread-safe handle on the SQLite cache at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._setup_schema()
        except (OSError, sqlite3.Error) as exc:
            raise ScelmoError(
                f"Cannot open the scelmo cache at {self.path}: {exc}. Set `cache.path` to a "
                "writable file (or SCELMO_CACHE__PATH), or disable it with `cache.enabled = false`."
            ) from None
        self._lock = threading.Lock()

    def _setup_schema(self) -> None:
        # Two processes opening a new file at once can get SQLITE_BUSY from the switch to
        # WAL mode without the busy handler being consulted: retry for a while.
        for attempt in range(50):
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1 + 0.01 * attempt)

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
                rows = self._conn.execute(
                    "SELECT input_hash, value, dim FROM entries WHERE role=? AND model=? "
                    f"AND prompt_hash=? AND input_hash IN ({marks})",
                    (role, model, prompt_hash, *part),
                ).fetchall()
                out.update({h: (v, d) for h, v, d in rows})
        return out

    def adopt(self, role: str, old: str, new: str) -> int:
        """Re-key every ``role`` entry stored under ``old`` to ``new`` (entries ``new`` already
        has stay as they are); returns how many moved. Used once for entries of older versions."""
        with self._lock:
            if self._conn.execute(
                "SELECT 1 FROM entries WHERE role=? AND model=? LIMIT 1", (role, old)
            ).fetchone() is None:
                return 0
            for attempt in range(5):
                try:
                    cur = self._conn.execute(
                        "UPDATE OR IGNORE entries SET model=? WHERE role=? AND model=?", (new, role, old)
                    )
                    return int(cur.rowcount)
                except sqlite3.OperationalError:
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        return 0

    def _put(self, role: str, model: str, prompt_hash: str, items: Iterable[tuple[str, bytes, int]]) -> None:
        now = time.time()
        rows = [(role, model, prompt_hash, h, v, d, now) for h, v, d in items]
        if not rows:
            return
        with self._lock:
            for attempt in range(5):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?)", rows
                    )
                    self._conn.execute("COMMIT")
                    return
                except sqlite3.OperationalError:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))

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
            rows = self._conn.execute(
                "SELECT role, model, COUNT(*), SUM(LENGTH(value)), MAX(dim), MAX(created) "
                "FROM entries GROUP BY role, model ORDER BY role, model"
            ).fetchall()
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
            cur = self._conn.execute(sql, args)
        n = cur.rowcount
        if not where:
            self._conn.execute("VACUUM")
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
