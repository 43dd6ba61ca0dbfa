"""The gene-embedding adapter shared by the annotation and integration heads.

The paper's fine-tuning network (scELMo ``cta_ft.ipynb``): a small MLP maps every gene
vector to a new space, ``A = adapter(E)`` with ``adapter = Linear(d, 64) - ReLU -
Linear(64, 32)``, and a cell's embedding is ``z = x @ A`` for its expression row ``x``.
Because the network sees genes only through their vectors, a trained model applies to
data with other genes: their vectors go through the same adapter.

Differences from the paper's code, each deliberate:

* Genes without a vector are left out (the paper gives them a zero row of E, whose
  adapted vector is the adapter's bias, so uncovered genes would add a shared vector
  weighted by their expression).
* ``normalize="wa"`` (default) divides each cell's row by its total over covered genes
  before the product, so ``z`` is an expression-weighted *mean* of adapted gene vectors
  as in the zero-shot ``wa``; ``"none"`` is the paper's plain sum. Chosen by measurement
  (docs/finetuning.md): the mean is insensitive to depth and to the size of a query's
  gene panel.

Heads built on :class:`GeneAdapterHead` receive, from :class:`scelmo.Model`, the
expression matrix ``X`` (cells x genes, CSR or dense, float32, checked) and
``gene_vectors`` (genes x d, aligned to X's columns, zero rows for genes without a
vector). X stays sparse: only mini-batch rows are densified.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from scelmo.components import ComponentOptions
from scelmo.errors import InputError, ScelmoError

from .base import TorchHead, rows_to_tensor
from .device import import_torch


class AdapterOptions(ComponentOptions):
    """Options shared by adapter heads."""

    #: Width of the adapter's hidden layer (paper: 64).
    hidden: int = Field(64, ge=1)
    #: Width of the cell embedding (paper: 32).
    latent: int = Field(32, ge=2)
    #: "wa": weighted mean of adapted gene vectors (rows divided by their total over
    #: covered genes); "none": the paper's plain product x @ adapter(E).
    normalize: Literal["wa", "none"] = "wa"
    #: Weight of the triplet loss on the cell embedding (paper: 100 with a mean over all triplets).
    triplet_weight: float = Field(1.0, ge=0.0)
    #: Margin of the triplet loss on L2-normalised embeddings.
    triplet_margin: float = Field(0.2, ge=0.0)
    #: Neighbours for kNN prediction and the validation score (paper: 10, cosine).
    knn_k: int = Field(10, ge=1)
    #: Cells per block when embedding for prediction.
    eval_batch_size: int = Field(8192, ge=1)


def build_adapter(d: int, hidden: int, latent: int) -> Any:
    """``Linear(d, hidden) - ReLU - Linear(hidden, latent)``."""
    nn = import_torch().nn
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, latent))


def batch_hard_triplet_loss(z: Any, labels: Any, margin: float) -> Any:
    """Batch-hard triplet loss (Hermans et al. 2017) on L2-normalised ``z``.

    For each anchor with a label ``>= 0``: its farthest same-label cell and its nearest
    other-label cell in the batch; loss ``relu(d_pos - d_neg + margin)`` averaged over
    anchors that have both. Cells with label ``-1`` (unlabelled) are ignored.
    """
    torch = import_torch()
    zn = torch.nn.functional.normalize(z.float(), dim=1)
    dist = torch.cdist(zn, zn)
    lab = labels.view(-1)
    valid = lab >= 0
    same = (lab[:, None] == lab[None, :]) & valid[:, None] & valid[None, :]
    eye = torch.eye(len(lab), dtype=torch.bool, device=z.device)
    pos_mask = same & ~eye
    neg_mask = ~same & valid[:, None] & valid[None, :]
    return hardest_triplets(zn, dist, pos_mask, neg_mask, margin)


def hardest_triplets(zn: Any, dist: Any, pos_mask: Any, neg_mask: Any, margin: float) -> Any:
    """``relu(d_pos - d_neg + margin)`` with each anchor's farthest positive and nearest
    negative under the given masks, averaged over anchors that have both (0 if none)."""
    torch = import_torch()
    has = pos_mask.any(1) & neg_mask.any(1)
    if not bool(has.any()):
        return zn.sum() * 0.0
    d_pos = torch.where(pos_mask, dist, torch.zeros_like(dist)).max(1).values
    d_neg = torch.where(neg_mask, dist, torch.full_like(dist, 1e4)).min(1).values
    return torch.relu(d_pos - d_neg + margin)[has].mean()


def encode_labels(labels: Any, classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 for missing) and the sorted class names."""
    import pandas as pd

    arr = np.asarray(labels, dtype=object)
    missing = pd.isna(arr) | (arr.astype(str) == "")
    names = arr.astype(str)
    if classes is None:
        classes = sorted(set(names[~missing]))
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(n, -1) if not m else -1 for n, m in zip(names, missing, strict=True)], dtype=np.int64)
    return codes, list(classes)


class GeneAdapterHead(TorchHead):
    """Base of heads whose cell embedding is ``x @ adapter(E)`` (see the module docstring)."""

    Options = AdapterOptions

    # -- data ------------------------------------------------------------------------
    def _genes_used(self, gene_vectors: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.abs(gene_vectors).sum(axis=1) > 0)

    def prepare_matrix(self, X: Any, gene_vectors: np.ndarray) -> tuple[Any, np.ndarray]:
        """Keep the covered genes, normalise rows; returns (X', E') for ``x' @ adapter(E')``."""
        gene_vectors = np.asarray(gene_vectors, dtype=np.float32)
        if gene_vectors.ndim != 2 or gene_vectors.shape[0] != X.shape[1]:
            raise InputError(
                f"gene_vectors has shape {gene_vectors.shape} but X has {X.shape[1]} genes; they must be aligned."
            )
        if self.spec.get("dim") is not None and gene_vectors.shape[1] != self.spec["dim"]:
            raise InputError(
                f"This model was trained on {self.spec['dim']}-d gene vectors but got {gene_vectors.shape[1]}-d ones; "
                "use the same text embedder (gene embeddings) as for training."
            )
        keep = self._genes_used(gene_vectors)
        if keep.size == 0:
            raise InputError("None of the data's genes has a gene vector; run `scelmo.tl.embed_genes` on it first.")
        Xk = X[:, keep] if keep.size < X.shape[1] else X
        Xk = sp.csr_matrix(Xk, dtype=np.float32) if sp.issparse(Xk) else np.asarray(Xk, dtype=np.float32)
        if self.options.normalize == "wa":
            tot = np.asarray(Xk.sum(axis=1), dtype=np.float64).ravel()
            w = np.divide(1.0, tot, out=np.zeros_like(tot), where=tot > 0).astype(np.float32)
            Xk = sp.diags(w) @ Xk if sp.issparse(Xk) else Xk * w[:, None]
            Xk = sp.csr_matrix(Xk) if sp.issparse(Xk) else Xk
        return Xk, np.ascontiguousarray(gene_vectors[keep])

    # -- network -----------------------------------------------------------------------
    def adapted(self, E: Any) -> Any:
        """``adapter(E)`` (genes x latent) with the current weights."""
        return self.module.adapter(E)

    def transform(self, X: Any, *, gene_vectors: np.ndarray, device: Any = None) -> np.ndarray:
        """Cell embeddings (cells x latent, float32) of ``X`` with the trained adapter."""
        self._require_fitted()
        torch = import_torch()
        Xk, E = self.prepare_matrix(X, gene_vectors)
        with self.inference(device) as dev:
            A = self.adapted(torch.from_numpy(E).to(dev)).float()
            if dev.type == "cpu":  # sparse stays sparse: scipy CSR @ dense
                return np.asarray(Xk @ A.numpy(), dtype=np.float32)
            out = np.empty((Xk.shape[0], A.shape[1]), dtype=np.float32)
            bs = self.options.eval_batch_size
            for s in range(0, Xk.shape[0], bs):
                rows = slice(s, min(s + bs, Xk.shape[0]))
                out[rows] = (rows_to_tensor(Xk, rows, dev) @ A).cpu().numpy()
            return out

    # -- helpers for training -------------------------------------------------------------
    def _start(self, X: Any, gene_vectors: np.ndarray, labels: np.ndarray | None) -> None:
        Xk, E = self.prepare_matrix(X, gene_vectors)
        self._X = Xk
        self._E_np = E
        self._labels_np = labels

    def prepare_training(self, device: Any) -> None:
        torch = import_torch()
        self._E = torch.from_numpy(self._E_np).to(device)
        self._y = None if self._labels_np is None else torch.from_numpy(self._labels_np).to(device)

    def finish_training(self) -> None:
        self._E = None
        self._y = None

    def _embed_rows(self, rows: np.ndarray) -> Any:
        x = rows_to_tensor(self._X, rows, self.device)
        return x @ self.adapted(self._E)

    def _latent_all(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Embeddings of training-matrix rows (all by default) with the current weights (no grad)."""
        torch = import_torch()
        with torch.no_grad():
            A = self.adapted(self._E).float()
            Xr = self._X if rows is None else self._X[rows]
            if self.device.type == "cpu":
                return np.asarray(Xr @ A.cpu().numpy(), dtype=np.float32)
            return (rows_to_tensor(Xr, None, self.device) @ A).cpu().numpy()

    def _clear_data(self) -> None:
        for attr in ("_X", "_E_np", "_labels_np", "_E", "_y"):
            if hasattr(self, attr):
                delattr(self, attr)

    def predict(self, embeddings: Any, **kwargs: Any) -> np.ndarray:  # TaskHead API
        raise ScelmoError(f"The {self.name!r} head does not predict labels; use transform().")
