"""Shipped vectors for the bundled gene texts: the offline default's cold start.

Embedding every gene's text with the local MiniLM model costs minutes on a small machine
the first time (afterwards the cache answers). For the texts the bundled knowledge table
writes for protein-coding genes -- the genes a filtered scRNA-seq dataset mostly has, and
the longest texts -- this module ships the model's vectors, compressed and checksummed:

* the exact vectors (``LocalMiniLM(precomputed=False)``, max_length 256) are rotated onto
  their principal axes (mean and a float16 384 x 384 basis are stored),
* each coordinate is rounded to a multiple of one step (uniform quantisation: the same
  absolute error budget on every axis), stored as int8, column by column, and
  compressed with LZMA,
* a text is found by the first 8 bytes of the SHA-256 of its UTF-8 bytes; decoded rows
  are re-normalised to unit length like the model's output.

Row cosine to the exact vectors is recorded in the file (and in the embedder's
provenance); any other text (another knowledge style, an LLM's description, a gene not
shipped) goes through the model as before. Rebuild with
``python -m scelmo_local.build_vectors`` after the knowledge table or the model changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from scelmo.errors import IntegrityError
from scelmo.io import atomic_path, sha256_file

DATA = Path(__file__).parent / "data"
FILE = "minilm_protein_coding_vectors.npz.xz"
#: SHA-256 of ``data/FILE``; a mismatch refuses the file (reinstall, or rebuild and update this).
SHA256 = "9fda6de3ed5c1464632c506d00da315c62319b2f228084106654f460ced07d16"
#: Quantisation step of the shipped coordinates (row cosine to the exact vectors >= ~0.999).
STEP = 0.008


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """First 8 bytes of each text's SHA-256, as big-endian uint64 (how texts are looked up)."""
    return np.array(
        [int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "big") for t in texts],
        dtype=np.uint64,
    )


class PrecomputedVectors:
    """Quantised vectors of known texts; :meth:`lookup` decodes the rows asked for."""

    def __init__(self, keys: np.ndarray, codes: np.ndarray, mean: np.ndarray, basis: np.ndarray,
                 step: float, meta: dict) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.codes = codes[order]
        self.mean = mean.astype(np.float32)
        self.basis = basis.astype(np.float32)
        self.step = float(step)
        self.meta = meta

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        """Row index of each text (``-1``: not shipped)."""
        k = text_keys(texts)
        pos = np.searchsorted(self.keys, k)
        pos = np.minimum(pos, len(self) - 1)
        return np.where(self.keys[pos] == k, pos, -1)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """Unit-length float32 vectors of the given rows."""
        x = (self.codes[rows].astype(np.float32) * self.step) @ self.basis.T + self.mean
        x /= np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
        return x.astype(np.float32, copy=False)


def encode(vectors: np.ndarray, step: float = STEP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes int8, mean float32, basis float16)`` of unit vectors (PCA rotation + rounding)."""
    x = np.asarray(vectors, dtype=np.float64)
    mean = x.mean(axis=0)
    _w, v = np.linalg.eigh(np.cov((x - mean).T))
    basis = np.ascontiguousarray(v[:, ::-1]).astype(np.float16)
    coef = (x - mean) @ basis.astype(np.float64)
    q = np.round(coef / step)
    if np.abs(q).max() > 127:
        raise ValueError(f"step {step} is too fine for int8 codes (max |code| {int(np.abs(q).max())}); use a larger step.")
    return q.astype(np.int8), mean.astype(np.float32), basis


def write(path: Path, texts: Sequence[str], vectors: np.ndarray, meta: dict, step: float = STEP) -> dict:
    """Encode ``vectors`` (one per text, exact model output) into ``path``; returns the stored metadata."""
    codes, mean, basis = encode(vectors, step)
    table = PrecomputedVectors(text_keys(texts), codes, mean, basis, step, {})
    if np.unique(table.keys).size != len(table):
        raise ValueError("Two texts share an 8-byte hash prefix; cannot index them.")
    cos = np.sum(table.decode(table.rows(texts)) * np.asarray(vectors, dtype=np.float32), axis=1)
    meta = dict(meta, n=len(texts), step=step, row_cosine_mean=float(cos.mean()),
                row_cosine_min=float(cos.min()), row_cosine_p01=float(np.percentile(cos, 1)))
    buf = io.BytesIO()
    np.savez(buf, keys=text_keys(texts), codes_t=np.ascontiguousarray(codes.T), mean=mean, basis=basis,
             step=np.float32(step), meta=np.array(json.dumps(meta, sort_keys=True)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    return meta


def read(path: Path) -> PrecomputedVectors:
    """Load a file written by :func:`write` (no checksum check; see :func:`shipped`)."""
    with np.load(io.BytesIO(lzma.decompress(path.read_bytes()))) as z:
        meta = json.loads(str(z["meta"]))
        return PrecomputedVectors(z["keys"], np.ascontiguousarray(z["codes_t"].T), z["mean"], z["basis"],
                                  float(z["step"]), meta)


@lru_cache(maxsize=1)
def shipped() -> PrecomputedVectors:
    """The vectors shipped in ``data/`` (checksum-verified)."""
    path = DATA / FILE
    digest = sha256_file(path)
    if digest != SHA256:
        raise IntegrityError(
            f"{path} does not match its pinned SHA-256 ({digest[:12]}... != {SHA256[:12]}...). "
            "Reinstall scelmo, or embed without it: embed.options.precomputed = false."
        )
    return read(path)
