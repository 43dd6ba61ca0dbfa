"""Conditioning of a gene table: remove the directions every gene vector shares.

Text-embedding vectors are anisotropic: on the bundled table the mean vector is about
half the length of an average vector and a few principal directions carry several
times the variance of the rest. Those directions say "this is a gene description",
not what the gene does, and in ``X @ E`` they drown out the signal: every cell points
the same way. :class:`Conditioning` subtracts the table's mean vector and projects out
its top ``n_components`` principal directions ("all-but-the-top", Mu & Viswanath,
ICLR 2018). The number was chosen on three datasets at once (``benchmarks/zeroshot.py``,
docs/benchmarks.md).

A conditioning is **fitted on a gene table, never on cells**: the same table always
gives the same conditioning, so cells embedded on different days with the same table
stay comparable. It is stored with the table (:meth:`scelmo.genes.GeneEmbeddings.save`
writes ``conditioning.npz``), its checksum goes into provenance, and
:func:`scelmo.tl.embed_cells`, :func:`scelmo.tl.annotate`, :class:`scelmo.Model` and the
R package all apply it the same way, through :meth:`Conditioning.apply`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scelmo.errors import InputError
from scelmo.io import atomic_path

#: Default number of principal directions removed (see the module docstring).
DEFAULT_COMPONENTS = 10


def _top_directions(centred: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` principal directions (rows) of a centred genes x d table, as PCA finds
    them, from the d x d scatter matrix (d is a few hundred): a full SVD of the genes x d
    table took 10-23 s on a 2-core machine, and a query whose AnnData carries its own vectors
    paid it on every call. Signs: each direction's largest entry is positive (the removed
    projection does not depend on them)."""
    scatter = centred.T @ centred
    vals, vecs = np.linalg.eigh(scatter)  # ascending
    top = vecs[:, np.argsort(vals)[::-1][:k]].T
    signs = np.sign(top[np.arange(top.shape[0]), np.abs(top).argmax(axis=1)])
    return top * np.where(signs == 0, 1.0, signs)[:, None]


@dataclass(frozen=True)
class Conditioning:
    """Subtract ``mean`` from each gene vector, then project out ``components``.

    Attributes
    ----------
    mean
        ``(d,)`` float64 mean gene vector of the table it was fitted on.
    components
        ``(k, d)`` float64 orthonormal rows: the top principal directions removed.
    n_genes_fitted
        Number of gene vectors it was fitted on.
    """

    mean: np.ndarray
    components: np.ndarray
    n_genes_fitted: int

    @classmethod
    def fit(cls, vectors: np.ndarray, *, n_components: int = DEFAULT_COMPONENTS) -> Conditioning:
        """Fit on a genes x d table. All-zero rows (genes without a vector) are ignored."""
        V = np.asarray(vectors, dtype=np.float64)
        if V.ndim != 2:
            raise InputError(f"Expected a genes x d table, got shape {V.shape}.")
        V = V[np.abs(V).sum(axis=1) > 0]
        if n_components < 0 or n_components > V.shape[1]:
            raise InputError(f"n_components must be between 0 and the vectors' dimension {V.shape[1]}, got {n_components}.")
        if V.shape[0] < n_components + 2:
            raise InputError(
                f"Cannot condition a table of {V.shape[0]} gene vector(s): removing the mean and "
                f"{n_components} principal directions needs at least {n_components + 2}. Embed with "
                "`condition=False` (or `flavor=\"paper\"`), or use more genes."
            )
        mean = V.mean(axis=0)
        if n_components == 0:
            comps = np.zeros((0, V.shape[1]))
        else:
            comps = _top_directions(V - mean, n_components)
        return cls(mean, np.ascontiguousarray(comps), int(V.shape[0]))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Conditioned float32 copy of ``vectors``; all-zero rows (no vector) stay zero."""
        V = np.asarray(vectors, dtype=np.float64)
        if V.ndim != 2 or V.shape[1] != self.dim:
            raise InputError(
                f"This conditioning was fitted on {self.dim}-d vectors; got shape {V.shape}. "
                "Fit a conditioning on the table you use (`GeneEmbeddings.condition()`)."
            )
        present = np.abs(V).sum(axis=1) > 0
        out = V - self.mean
        if self.n_components:
            out -= (out @ self.components.T) @ self.components
        out[~present] = 0.0
        return out.astype(np.float32)

    def checksum(self) -> str:
        """SHA-256 (first 16 hex digits) of the fitted arrays: two equal checksums, one transform."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.mean, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.components, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def provenance(self) -> dict[str, Any]:
        """Strings and numbers describing this conditioning (for ``uns`` and manifests)."""
        return {
            "method": "center+remove_top_pcs",
            "n_components": self.n_components,
            "n_genes_fitted": self.n_genes_fitted,
            "checksum": self.checksum(),
        }

    # -- persistence ---------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` file (no pickles), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mean=self.mean, components=self.components, n_genes_fitted=np.int64(self.n_genes_fitted))

    @classmethod
    def load(cls, path: str | Path) -> Conditioning:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"].astype(np.float64), z["components"].astype(np.float64), int(z["n_genes_fitted"]))
