"""The gene-embedding adapter shared by the annotation and integration heads.

A cell's embedding is ``z = w (x - mu) @ A(E)``: ``x`` is its expression over the
selected genes, ``mu`` their means on the training cells, ``w = 1 / sum(x)`` (the
zero-shot ``wa`` weight) and ``A(E)`` the adapted gene vectors. Because the network sees
genes only through their vectors, a trained model applies to data with other genes.

Two adapters (option ``residual``):

* ``residual=True`` (default): ``A(E) = E + relu(E W1 + b1) W2`` with ``W2`` initialised
  to zero, so the untrained head *is* the zero-shot embedding of
  ``scelmo.tl.embed_cells(flavor="scelmo")`` (2,000 variable genes, per-gene centring,
  the conditioned gene vectors, wa weights) and training learns a correction. Training
  validates this epoch-0 embedding too and keeps the best epoch, so on the validation
  cells the head never ends below zero-shot. The latent width is ``d``.
* ``residual=False``: the paper's adapter (scELMo ``cta_ft.ipynb``), ``A(E) =
  Linear(d, hidden) - ReLU - Linear(hidden, latent)``, trained from random weights.

``tune_genes=True`` (residual adapter only) also fine-tunes the gene table itself, as
transformer models fine-tune their gene-token embeddings: ``A(E)`` gains a free
correction per training gene of rank ``gene_rank``, ``U V`` (as LoRA: ``U``, genes x rank,
zero at the start; ``V``, rank x d, random), so the LLM vectors are the starting point and
the data may move each gene. ``gene_l2`` penalises ``U``'s squared norm (mean over genes).
A query's genes that were not trained get no correction. In the training loop ``U``
rides in the same sparse product as the hidden layer (``xb @ [H | U]``).

Options ``genes`` ("hvg" / "all"), ``n_top_genes`` and ``center`` choose the input as
the zero-shot flavors do; models saved before these options existed load with the old
behaviour (all covered genes, no centring, the paper's adapter).

Speed: the training loop never forms ``x @ A(E)`` for a batch. With the residual adapter,
``z = C0 + (w x @ H - w (mu @ H)) W2`` where ``C0`` (the zero-shot embedding of every
training cell) is computed once and ``H = relu(E W1 + b1)`` is genes x ``hidden``; a step
costs one small MLP over the gene table and a sparse (cells x genes) @ (genes x hidden)
product (docs/finetuning.md: seconds per epoch on 100,000 cells).

Heads built on :class:`GeneAdapterHead` receive, from :class:`scelmo.Model`, the
expression matrix ``X`` (cells x genes, CSR or dense, float32, checked),
``gene_vectors`` (genes x d, aligned to X's columns, zero rows for genes without a
vector) and ``gene_names`` (X's column names, used to find the selected genes in a
query).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from scelmo.errors import InputError
from scelmo.expression.selection import gene_stats, highly_variable
from scelmo.plugin import ComponentOptions

from .base import SPEC_FILE, DeviceRows, TorchHead
from .device import import_torch


class AdapterOptions(ComponentOptions):
    """Options shared by adapter heads."""

    #: Width of the adapter's hidden layer (paper: 64).
    hidden: int = Field(64, ge=1)
    #: Width of the cell embedding with ``residual=False`` (paper: 32); the residual
    #: adapter keeps the gene vectors' width d.
    latent: int = Field(32, ge=2)
    #: Start from the zero-shot embedding and learn a correction (see the module docstring).
    residual: bool = True
    #: Genes to embed from: "hvg" (the ``n_top_genes`` most variable, as the zero-shot
    #: flavor "scelmo") or "all" (every gene with a vector).
    genes: Literal["hvg", "all"] = "hvg"
    #: Number of variable genes with ``genes="hvg"``.
    n_top_genes: int = Field(2000, ge=1)
    #: Subtract each gene's mean (over the training cells) before aggregating.
    center: bool = True
    #: "wa": weighted mean of adapted gene vectors (rows divided by their total over
    #: the used genes); "none": the paper's plain product x @ adapter(E).
    normalize: Literal["wa", "none"] = "wa"
    #: Weight of the triplet loss on the cell embedding (paper: 100 with a mean over all triplets).
    triplet_weight: float = Field(1.0, ge=0.0)
    #: Fine-tune the gene table too: a free correction per training gene added to A(E),
    #: zero at the start (residual adapter only; see the module docstring).
    tune_genes: bool | None = False
    #: Weight of the squared norm of the gene corrections (per gene, mean) in the loss.
    gene_l2: float = Field(0.0, ge=0.0)
    #: Rank of the gene corrections D = U V (U: genes x rank, zero at the start; V: rank x d).
    gene_rank: int = Field(64, ge=1)
    #: Learning rate of the gene corrections, as a multiple of the training ``lr``.
    gene_lr: float = Field(1.0, gt=0.0)
    #: Margin of the triplet loss on L2-normalised embeddings.
    triplet_margin: float = Field(0.2, ge=0.0)
    #: Neighbours for kNN prediction and the validation score (paper: 10, cosine).
    knn_k: int = Field(10, ge=1)
    #: Cells per block when embedding for prediction.
    eval_batch_size: int = Field(8192, ge=1)
    #: Validation uses at most this many held-out cells and this many reference cells
    #: (random, fixed for a fit), so a check stays cheap on large data.
    max_validation_cells: int = Field(2000, ge=10)
    max_reference_cells: int = Field(20000, ge=10)

    @model_validator(mode="after")
    def _tune_genes_needs_residual(self) -> AdapterOptions:
        # only when asked for: a head whose default is "on" simply does not tune the paper's adapter
        if self.tune_genes and not self.residual and "tune_genes" in self.model_fields_set:
            raise ValueError("tune_genes=True needs the residual adapter (residual=True).")
        # (a trial: latent=32 with the default residual adapter gave a 384-wide embedding, silently)
        if self.residual and "latent" in self.model_fields_set:
            raise ValueError("latent sets the width of the non-residual adapter's embedding; the default residual "
                             "adapter keeps the gene vectors' width. Add residual=False, or leave latent out.")
        return self


#: Options of models saved before the residual adapter existed (their behaviour).
LEGACY_OPTIONS = {"residual": False, "genes": "all", "center": False}


def build_adapter(d: int, hidden: int, latent: int, residual: bool = False, n_genes: int = 0,
                  gene_rank: int = 64) -> Any:
    """The paper's ``Linear(d, hidden) - ReLU - Linear(hidden, latent)``, or the residual adapter.

    ``n_genes > 0`` (residual only) adds the per-gene corrections ``U V`` of ``tune_genes``.
    """
    torch = import_torch()
    nn = torch.nn
    if not residual:
        return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, latent))

    class ResidualAdapter(nn.Module):
        """``A(E) = E + relu(E W1 + b1) W2 (+ U V)`` with ``W2 = 0`` (and ``U = 0``) at the start."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(d, hidden)
            self.out = nn.Linear(hidden, d, bias=False)
            nn.init.zeros_(self.out.weight)
            # U V (rank gene_rank, as LoRA): U zero at the start, V random, both trained
            self.gene_delta = nn.Parameter(torch.zeros(n_genes, gene_rank)) if n_genes else None
            self.gene_basis = nn.Parameter(torch.randn(gene_rank, d) / gene_rank**0.5) if n_genes else None

        def hidden_genes(self, E: Any) -> Any:
            return nn.functional.relu(self.inner(E))

        def delta(self, pos: Any = None) -> Any:
            """``U`` for the training genes (``pos=None``) or for ``pos`` (-1: an untrained gene, no correction)."""
            if self.gene_delta is None or pos is None:
                return self.gene_delta
            pos = torch.as_tensor(pos, dtype=torch.long, device=self.gene_delta.device)
            return torch.where((pos >= 0)[:, None], self.gene_delta[pos.clamp(min=0)], 0.0)

        def forward(self, E: Any, pos: Any = None) -> Any:
            A = E + self.out(self.hidden_genes(E))
            U = self.delta(pos)
            return A if U is None else A + (U @ self.gene_basis).to(A.dtype)

    return ResidualAdapter()


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
    d_pos = torch.where(pos_mask, dist, torch.zeros_like(dist)).max(1).values
    d_neg = torch.where(neg_mask, dist, torch.full_like(dist, 1e4)).min(1).values
    # a masked mean, not loss[has].mean(): no data-dependent shape, so no host sync on a GPU
    per_anchor = torch.relu(d_pos - d_neg + margin) * has
    return per_anchor.sum() / has.sum().clamp(min=1)


def encode_labels(labels: Any, classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 for missing) and the sorted class names."""
    import pandas as pd

    arr = np.asarray(labels, dtype=object)
    missing = pd.isna(arr) | (arr.astype(str) == "")
    names = arr.astype(str)
    if classes is None:
        classes = sorted({str(n) for n in names[~missing]})  # (plain str, not np.str_: they appear in messages)
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(n, -1) if not m else -1 for n, m in zip(names, missing, strict=True)], dtype=np.int64)
    return codes, list(classes)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def knn_indices(query: np.ndarray, ref: np.ndarray, k: int, *, chunk: int = 2048) -> np.ndarray:
    """Indices of the ``k`` cosine-nearest ``ref`` rows of each ``query`` row, nearest first."""
    Q, R = unit_rows(query), unit_rows(ref)
    k = min(k, R.shape[0])
    out = np.empty((Q.shape[0], k), dtype=np.int64)
    for s in range(0, Q.shape[0], chunk):
        sims = Q[s : s + chunk] @ R.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, nn, axis=1), axis=1)
        out[s : s + chunk] = np.take_along_axis(nn, order, axis=1)
    return out


def knn_predict_codes(query: np.ndarray, ref: np.ndarray, ref_codes: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Majority class (ties: the nearest neighbour's among them) of the k nearest reference rows."""
    nn = knn_indices(query, ref, k)
    votes = np.zeros((nn.shape[0], n_classes), dtype=np.float32)
    np.add.at(votes, (np.repeat(np.arange(nn.shape[0]), nn.shape[1]), ref_codes[nn].ravel()), 1.0)
    votes[np.arange(nn.shape[0]), ref_codes[nn[:, 0]]] += 0.5 * (votes[np.arange(nn.shape[0]), ref_codes[nn[:, 0]]]
                                                                  == votes.max(1))
    return votes.argmax(1)


def macro_f1_codes(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in ``y`` (as sklearn with labels = those classes)."""
    f1 = []
    for c in np.unique(y):
        tp = float(np.sum((pred == c) & (y == c)))
        fp, fn = float(np.sum((pred == c) & (y != c))), float(np.sum((pred != c) & (y == c)))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1)) if f1 else 0.0


class GeneAdapterHead(TorchHead):
    """Base of heads whose cell embedding is ``w (x - mu) @ A(E)`` (see the module docstring)."""

    Options = AdapterOptions

    @property
    def validate_before_training(self) -> bool:  # type: ignore[override]
        """The residual adapter starts at zero-shot: score that start as epoch 0."""
        return bool(self.options.residual)

    @classmethod
    def load_state(cls, directory: Any) -> TorchHead:
        info = json.loads((Path(directory) / SPEC_FILE).read_text(encoding="utf-8")) if (Path(directory) / SPEC_FILE).is_file() else {}
        saved = info.get("options") or {"residual": True}
        defaults = dict(LEGACY_OPTIONS) if "residual" not in saved else {}
        defaults["tune_genes"] = False  # saved before the option existed: no gene corrections in the weights
        return super().load_state(directory, option_defaults=defaults)

    # -- data ------------------------------------------------------------------------
    def _select_genes(self, X: Any, gene_vectors: np.ndarray, gene_names: list[str] | None) -> np.ndarray:
        """Columns used for training: covered genes, and among them the variable ones (``genes="hvg"``)."""

        covered = np.abs(gene_vectors).sum(axis=1) > 0
        if not covered.any():
            raise InputError("None of the data's genes has a gene vector; run `scelmo.tl.embed_genes` on it first.")
        use = covered
        if self.options.genes == "hvg" and X.shape[1] > self.options.n_top_genes:
            self._stats = gene_stats(X, normalize=False)
            use = highly_variable(self._stats, self.options.n_top_genes) & covered
            if not use.any():
                raise InputError("None of the variable genes has a gene vector; use the head option genes='all'.")
        return np.flatnonzero(use)

    @property
    def genes_used(self) -> list[str] | None:
        """The genes this head selected in training (``None``: a legacy model reading every covered gene)."""
        genes = self.spec.get("genes")
        return None if genes is None else [str(g) for g in genes]

    def _query_columns(self, n_cols: int, gene_vectors: np.ndarray, gene_names: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """(query columns, matching positions in the training selection) for a query matrix."""
        covered = np.abs(gene_vectors).sum(axis=1) > 0
        genes = self.spec.get("genes")
        if genes is None:  # a legacy model: every covered gene
            cols = np.flatnonzero(covered)
            return cols, np.full(cols.size, -1, dtype=np.int64)
        if gene_names is not None:
            pos = {g: i for i, g in enumerate(genes)}
            idx = np.array([pos.get(str(g), -1) for g in gene_names], dtype=np.int64)
            cols = np.flatnonzero((idx >= 0) & covered)
            return cols, idx[cols]
        train_cols = np.asarray(self.arrays.get("gene_columns", np.arange(len(genes))), dtype=np.int64)
        if n_cols != int(self.spec.get("n_columns", n_cols)):
            raise InputError(
                f"This head was trained on {self.spec.get('n_columns')} columns and got {n_cols}; pass `gene_names=` "
                "(scelmo.Model does) so that the trained genes can be found in the query."
            )
        keep = covered[train_cols]
        return train_cols[keep], np.flatnonzero(keep)

    def prepare_matrix(self, X: Any, gene_vectors: np.ndarray, gene_names: list[str] | None = None,
                       *, fit: bool = False) -> tuple[Any, np.ndarray, np.ndarray]:
        """(w x over the used genes, their vectors, w) for ``w (x - mu) @ A(E)``."""
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
        if fit:
            keep = self._select_genes(X, gene_vectors, gene_names)
            self.spec["n_columns"] = int(X.shape[1])
            self.spec["genes"] = [str(gene_names[i]) for i in keep] if gene_names is not None else [str(i) for i in keep]
            self.arrays["gene_columns"] = keep.astype(np.int64)
        else:
            keep, _ = self._query_columns(X.shape[1], gene_vectors, gene_names)
            if keep.size == 0:
                raise InputError("None of the model's genes is in the data (with a vector); check var_names.")
        Xk = X[:, keep] if keep.size < X.shape[1] else X
        Xk = sp.csr_matrix(Xk, dtype=np.float32) if sp.issparse(Xk) else np.asarray(Xk, dtype=np.float32)
        if self.options.normalize == "wa":
            tot = np.asarray(Xk.sum(axis=1), dtype=np.float64).ravel()
            w = np.divide(1.0, tot, out=np.zeros_like(tot), where=tot > 0).astype(np.float32)
            Xk = sp.csr_matrix(sp.diags(w) @ Xk) if sp.issparse(Xk) else Xk * w[:, None]
        else:
            w = np.ones(Xk.shape[0], dtype=np.float32)
        return Xk, np.ascontiguousarray(gene_vectors[keep]), w

    # -- network -----------------------------------------------------------------------
    def tunes_genes(self) -> bool:
        """Whether this fit fine-tunes the gene table (a head may resolve ``tune_genes=None``)."""
        return bool(self.options.tune_genes)

    def saved_options(self) -> dict[str, Any]:
        """Options as trained: ``tune_genes`` resolved to whether this fit tuned the gene table."""
        return {**super().saved_options(), "tune_genes": self.n_tuned_genes() > 0}

    def n_tuned_genes(self) -> int:
        """Rows of the trainable gene corrections (``tune_genes``): the training genes, else 0."""
        on = self.tunes_genes() and self.options.residual  # a default "on" is off for the paper's adapter
        return len(self.spec.get("genes") or []) if on else 0

    def adapted(self, E: Any, pos: Any = None) -> Any:
        """``A(E)`` (genes x latent) with the current weights; ``pos``: E's rows' places among
        the training genes (-1 for others), needed only with ``tune_genes`` for a query."""
        return self.module.adapter(E, pos) if self.options.residual else self.module.adapter(E)

    def configure_optimizer(self, params: Any, training: Any) -> Any:
        """Adam; the per-gene corrections ``U`` (``tune_genes``) learn at ``gene_lr`` x ``lr``."""
        torch = import_torch()
        U = self.module.adapter.delta() if self.options.residual else None
        if U is None:
            return super().configure_optimizer(params, training)
        rest = [p for p in self.module.parameters() if p is not U]
        return torch.optim.Adam([{"params": rest}, {"params": [U], "lr": training.lr * self.options.gene_lr}],
                                lr=training.lr, weight_decay=training.weight_decay, foreach=True)

    def _delta_penalty(self) -> Any:
        """``gene_l2`` x the mean squared row norm of ``U`` (0 without ``tune_genes``)."""
        U = self.module.adapter.delta() if self.options.residual else None
        if U is None or not self.options.gene_l2:
            return 0.0
        return self.options.gene_l2 * U.pow(2).sum(1).mean()

    def _offset(self, A: np.ndarray) -> np.ndarray:
        mu = self.arrays.get("gene_mean")
        return np.zeros(A.shape[1], np.float32) if mu is None else (mu.astype(np.float64) @ A).astype(np.float32)

    def transform(self, X: Any, *, gene_vectors: np.ndarray | None = None, gene_names: list[str] | None = None,
                  device: Any = None) -> np.ndarray:
        """Cell embeddings (cells x latent, float32) of ``X`` with the trained adapter.

        ``gene_names`` (X's column names) find the trained genes in a query with other
        genes; without them X must have the training columns.
        """
        self._require_fitted()
        if gene_vectors is None:
            raise InputError(f"The {self.name!r} head needs `gene_vectors` (genes x d) aligned to X's columns.")
        torch = import_torch()
        Xk, E, w = self.prepare_matrix(X, gene_vectors, gene_names)
        _, pos = self._query_columns(X.shape[1], np.asarray(gene_vectors, dtype=np.float32), gene_names)
        with self.inference(device) as dev:
            A = self.adapted(torch.from_numpy(E).to(dev), pos).float().cpu().numpy()
        out = np.asarray(Xk @ A, dtype=np.float32)
        mu = self.arrays.get("gene_mean")
        if mu is not None:  # centre over the genes the query has (all of them for the training data)
            offset = (mu[pos].astype(np.float64) @ A).astype(np.float32)
            out -= w[:, None] * offset[None, :]
            out[w == 0] = 0.0
        return out

    # -- helpers for training -------------------------------------------------------------
    def _start(self, X: Any, gene_vectors: np.ndarray, labels: np.ndarray | None,
               gene_names: list[str] | None = None) -> None:
        self.arrays = {}
        Xk, E, w = self.prepare_matrix(X, gene_vectors, gene_names, fit=True)
        self._X, self._E_np, self._w_np, self._labels_np = Xk, E, w, labels
        if self.options.center:
            stats = getattr(self, "_stats", None)
            if stats is not None:
                mu = stats.mean[self.arrays["gene_columns"]]
            else:
                Xs = X[:, self.arrays["gene_columns"]]
                mu = np.asarray(Xs.mean(axis=0), dtype=np.float64).ravel()
            self.arrays["gene_mean"] = mu.astype(np.float32)
        self._stats = None
        mu = self.arrays.get("gene_mean")
        self._mu_np = np.zeros(E.shape[0], np.float32) if mu is None else mu
        if self.options.residual:  # the zero-shot embedding, once
            C0 = np.asarray(Xk @ E, dtype=np.float32)
            C0 -= w[:, None] * self._offset(E)[None, :]
            C0[w == 0] = 0.0
            self._C0_np = C0

    def zero_shot_latent(self) -> np.ndarray:
        """The epoch-0 (zero-shot) embedding of the training cells (residual adapter, during fit)."""
        return self._C0_np

    def _finish_arrays(self) -> None:
        """After training: ``offset_latent = mu @ A(E)`` over all trained genes (the centring
        term of a query that has every trained gene; :meth:`transform` recomputes it over
        the genes a query has)."""
        torch = import_torch()
        if "gene_mean" in self.arrays:
            with self.inference() as dev:  # on the training device: the model stays where it was trained
                A = self.adapted(torch.from_numpy(self._E_np).to(dev)).double().cpu().numpy()
            self.arrays["offset_latent"] = (self.arrays["gene_mean"].astype(np.float64) @ A).astype(np.float32)

    def prepare_training(self, device: Any) -> None:
        torch = import_torch()
        self._E = torch.from_numpy(self._E_np).to(device)
        self._mu = torch.from_numpy(np.asarray(self._mu_np, dtype=np.float32)).to(device)
        self._w = torch.from_numpy(self._w_np).to(device)
        self._y = None if self._labels_np is None else torch.from_numpy(self._labels_np).to(device)
        self._C0 = torch.from_numpy(self._C0_np).to(device) if self.options.residual else None
        want = self.training.data_on_device
        on_gpu = getattr(device, "type", str(device)) == "cuda" and sp.issparse(self._X)
        use = on_gpu and (want if want is not None else DeviceRows.fits(self._X, device))
        self._X_dev = DeviceRows(self._X, device) if use else None

    def finish_training(self) -> None:
        self._E = self._mu = self._w = self._y = self._C0 = self._X_dev = None

    def _rows_matrix(self, rows: np.ndarray) -> Any:
        """The (w x) rows of a mini-batch as a torch tensor (sparse CSR on CPU, dense elsewhere)."""
        torch = import_torch()
        if getattr(self, "_X_dev", None) is not None:  # gathered on the GPU
            return self._X_dev.dense(rows)
        X = self._X
        if sp.issparse(X):
            sub = X[rows]
            if self.device.type == "cpu":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    return torch.sparse_csr_tensor(
                        torch.from_numpy(sub.indptr.astype(np.int64)), torch.from_numpy(sub.indices.astype(np.int64)),
                        torch.from_numpy(sub.data), size=sub.shape)
            return torch.from_numpy(sub.toarray()).to(self.device)
        return torch.from_numpy(np.ascontiguousarray(X[rows])).to(self.device)

    def _embed_rows(self, rows: np.ndarray) -> Any:
        torch = import_torch()
        xb = self._rows_matrix(rows)
        rt = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        wb = self._w[rt][:, None]
        if self.options.residual:
            ad = self.module.adapter
            H = ad.hidden_genes(self._E)
            U = ad.delta()
            if U is not None:  # one sparse product for both: (genes x (hidden + rank))
                H = torch.cat([H, U.to(H.dtype)], dim=1)
            corr = xb @ H - wb * (self._mu @ H)[None, :]
            if U is None:
                return self._C0[rt] + ad.out(corr)
            k = ad.out.in_features
            return self._C0[rt] + ad.out(corr[:, :k]) + corr[:, k:] @ ad.gene_basis
        A = self.adapted(self._E)
        return xb @ A - wb * (self._mu @ A)[None, :]

    def _latent_all(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Embeddings of training-matrix rows (all by default) with the current weights (no grad)."""
        torch = import_torch()
        with torch.no_grad():
            Xr = self._X if rows is None else self._X[rows]
            w = self._w_np if rows is None else self._w_np[rows]
            if self.options.residual:
                ad = self.module.adapter
                H = ad.hidden_genes(self._E)
                U = ad.delta()
                H = (H if U is None else torch.cat([H, U.to(H.dtype)], dim=1)).float().cpu().numpy()
                corr = np.asarray(Xr @ H, dtype=np.float32) - w[:, None] * (self._mu_np @ H)[None, :]
                C0 = self._C0_np if rows is None else self._C0_np[rows]
                k = ad.out.in_features
                z = C0 + corr[:, :k] @ ad.out.weight.float().cpu().numpy().T
                if U is not None:
                    z += corr[:, k:] @ ad.gene_basis.float().cpu().numpy()
                return z
            A = self.adapted(self._E).float().cpu().numpy()
            return np.asarray(Xr @ A, dtype=np.float32) - w[:, None] * (self._mu_np @ A)[None, :]

    def _validation_rows(self, train: np.ndarray, val: np.ndarray, rng: np.random.Generator) -> None:
        """Fixed subsamples of validation and reference cells (bounded cost per check)."""
        o = self.options
        self._val_rows = np.sort(rng.choice(val, o.max_validation_cells, replace=False)) if val.size > o.max_validation_cells else val
        self._ref_rows = (np.sort(rng.choice(train, o.max_reference_cells, replace=False))
                          if train.size > o.max_reference_cells else train)

    def _clear_data(self) -> None:
        for attr in ("_X", "_X_dev", "_E_np", "_w_np", "_mu_np", "_C0_np", "_labels_np", "_E", "_y", "_w", "_mu", "_C0", "_stats"):
            if hasattr(self, attr):
                delattr(self, attr)
