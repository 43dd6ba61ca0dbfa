"""Saving and loading a trained :class:`~scelmo.model.Model` (one directory, written atomically).

Layout: ``model.json`` (format, head name and options, setup, training genes, label
classes, training settings, SHA-256 of the gene-vector matrix), ``head/`` (the head's
own state, :meth:`scelmo.plugin.TaskHead.save_state`) and ``gene_embeddings/`` (the gene
table, checksummed; see :meth:`scelmo.genes.GeneEmbeddings.save`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scelmo import plugin as plugins
from scelmo._version import __version__
from scelmo.errors import InputError, ScelmoError, UnknownComponentError
from scelmo.genes import GeneEmbeddings
from scelmo.io import atomic_dir
from scelmo.plugin import TaskHead

if TYPE_CHECKING:
    from scelmo.model._model import Model

MODEL_FILE = "model.json"
HEAD_DIR = "head"
GENES_DIR = "gene_embeddings"
FORMAT = "scelmo.Model"
FORMAT_VERSION = 1


def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def save_model(model: Model, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained ``model`` to the directory ``path`` (appears atomically); returns ``path``."""
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite, marker=MODEL_FILE) as tmp:
        model.head.save_state(tmp / HEAD_DIR)
        model.gene_table.save(tmp / GENES_DIR, overwrite=True)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scelmo_version": __version__,
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "head": model.head_name,
            "head_plugin": getattr(type(model.head), "scelmo_origin", ""),  # a third-party head's distribution
            "head_options": model.head.options.model_dump(mode="json"),
            "setup": asdict(model.setup),
            "train_genes": model.train_genes,
            "classes": list(model.head.classes),
            "gene_embeddings_sha256": _sha256_array(model.gene_table.vectors),
            "gene_embeddings_manifest": model.gene_table.manifest,
            "train": model.train_info,
        }
        (tmp / MODEL_FILE).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return path


def read_model(path: str | Path) -> tuple[dict[str, Any], GeneEmbeddings, TaskHead]:
    """``(model.json contents, gene table, head)`` of a saved model, checksums verified."""
    path = Path(path)
    mfile = path / MODEL_FILE
    if not mfile.is_file():
        raise InputError(f"{path} is not a saved scelmo model (no {MODEL_FILE}); pass the directory `Model.save` or "
                         "`scelmo train -o` wrote.")
    info = json.loads(mfile.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT or int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise ScelmoError(f"{path}: unsupported model format {info.get('format')!r} v{info.get('format_version')}.")
    table = GeneEmbeddings.load(path / GENES_DIR)
    if _sha256_array(table.vectors) != info.get("gene_embeddings_sha256"):
        raise ScelmoError(f"{path}: the gene table does not match the checksum in {MODEL_FILE}; the model is corrupt.")
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
    head = head_cls.load_state(path / HEAD_DIR)
    return info, table, head
