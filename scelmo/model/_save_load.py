"""Saving and loading a trained :class:`~scelmo.model.Model` (one directory, written atomically).

Layout: ``model.json`` (format, head name and options, setup, training genes, label
classes, training settings, SHA-256 of the gene-vector matrix and of every file of the
head), ``head/`` (the head's own state, :meth:`scelmo.plugin.TaskHead.save_state`) and
``gene_embeddings/`` (the gene table, checksummed; see :meth:`scelmo.genes.GeneEmbeddings.save`).

:func:`read_model` verifies the checksums (models saved before the head's were recorded
load without that check) and turns a file that cannot be parsed into an
:class:`~scelmo.errors.IntegrityError` that names the file and says the model is damaged.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from scelmo import plugin as plugins
from scelmo._version import __version__
from scelmo.errors import InputError, IntegrityError, ScelmoError, UnknownComponentError
from scelmo.genes import GeneEmbeddings
from scelmo.io import atomic_dir, sha256_file
from scelmo.plugin import TaskHead

if TYPE_CHECKING:
    from scelmo.model._model import Model

MODEL_FILE = "model.json"
HEAD_DIR = "head"
GENES_DIR = "gene_embeddings"
FORMAT = "scelmo.Model"
FORMAT_VERSION = 1
#: What to do about a damaged model (every message of :func:`read_model` about one ends so).
#: What a head's ``load_state`` raises for a file it cannot parse (truncated, overwritten).
_PARSE_ERRORS = (ValueError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError)


def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _head_checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under the head's ``directory``, by path relative to it (``/``-separated)."""
    return {f.relative_to(directory).as_posix(): sha256_file(f) for f in sorted(directory.rglob("*")) if f.is_file()}


def _damaged(path: Path, problem: str) -> IntegrityError:
    return IntegrityError(f"The saved model at {path} is damaged: {problem}. {IntegrityError.RESTORE_MODEL}")


def _first_clause(message: str) -> str:
    """``message`` up to its first ``"; "`` or sentence end (drops another object's advice)."""
    return re.split(r"; |\. (?=[A-Z`])", message, maxsplit=1)[0].rstrip(".")


def save_model(model: Model, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained ``model`` to the directory ``path`` (appears atomically); returns ``path``."""
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite, marker=MODEL_FILE) as tmp:
        model.head.save_state(tmp / HEAD_DIR)
        model.gene_table.save(tmp / GENES_DIR, overwrite=True)
        head_files = _head_checksums(tmp / HEAD_DIR) if (tmp / HEAD_DIR).is_dir() else {}
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scelmo_version": __version__,
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "head": model.head_name,
            "head_plugin": getattr(type(model.head), "scelmo_origin", ""),  # a third-party head's distribution
            "head_options": model.head.options.model_dump(mode="json"),
            # (None fields left out: a file from this version stays readable by one without them)
            "setup": {k: v for k, v in asdict(model.setup).items() if v is not None},
            "train_genes": model.train_genes,
            "classes": list(model.head.classes),
            "gene_embeddings_sha256": _sha256_array(model.gene_table.vectors),
            "head_sha256": head_files,
            "gene_embeddings_manifest": model.gene_table.manifest,
            "train": model.train_info,
        }
        (tmp / MODEL_FILE).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return path


def read_model(path: str | Path) -> tuple[dict[str, Any], GeneEmbeddings, TaskHead]:
    """``(model.json contents, gene table, head)`` of a saved model, checksums verified.

    Parameters
    ----------
    path
        The directory :func:`save_model` wrote.

    Returns
    -------
    The contents of ``model.json``, the gene table and the head, rebuilt.

    Raises
    ------
    InputError
        ``path`` is not a saved model.
    IntegrityError
        A file of the model is missing, does not match its checksum or cannot be parsed
        (the message names it and says to restore or re-train the model).
    """
    path = Path(path)
    mfile = path / MODEL_FILE
    if not mfile.is_file():
        raise InputError(f"{path} is not a saved scelmo model (no {MODEL_FILE}); pass the directory `Model.save` or "
                         "`scelmo train -o` wrote.")
    try:
        info = json.loads(mfile.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"{mfile} is not valid JSON ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("head"), str):
        raise _damaged(path, f"{mfile} is not a scelmo model description (no head named)")
    if info.get("format") != FORMAT or int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise ScelmoError(f"{path}: unsupported model format {info.get('format')!r} v{info.get('format_version')}.")
    try:
        table = GeneEmbeddings.load(path / GENES_DIR)
    except (IntegrityError, InputError) as exc:
        raise _damaged(path, f"its gene table cannot be read ({_first_clause(str(exc))})") from None
    if _sha256_array(table.vectors) != info.get("gene_embeddings_sha256"):
        raise _damaged(path, f"the gene table does not match the checksum in {mfile}")
    head_files = info.get("head_sha256") or {}  # (absent in models saved by older versions)
    for rel, digest in head_files.items():
        fpath = path / HEAD_DIR / rel
        if not fpath.is_file():
            raise _damaged(path, f"{fpath} is missing")
        if sha256_file(fpath) != digest:
            raise _damaged(path, f"{fpath} does not match its checksum in {mfile} (truncated or overwritten?)")
    try:
        head_cls = plugins.heads.get(info["head"])
    except UnknownComponentError as exc:
        origin = info.get("head_plugin")
        if not origin:
            raise
        raise UnknownComponentError(
            f"{path} was trained with the task head {info['head']!r} of the plugin distribution {origin}, which is "
            f"not installed here: install it (`pip install {origin.split()[0]}`), then load the model again."
        ) from exc
    try:
        head = head_cls.load_state(path / HEAD_DIR)
    except (ScelmoError, ValidationError):  # the head's own message (an option this version lacks, ...): as it is
        raise
    except _PARSE_ERRORS as exc:  # a file the checksums did not cover (older models)
        raise _damaged(path, f"the {info['head']!r} head's files in {path / HEAD_DIR} cannot be read "
                             f"({type(exc).__name__}: {_first_clause(str(exc))[:300]}); they are truncated, "
                             "overwritten or written by another version of the head") from None
    return info, table, head
