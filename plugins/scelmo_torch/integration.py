"""The integration head: the gene adapter trained to remove batch effects, keep biology.

Same cell embedding as the annotation head, ``z = x @ adapter(E)`` (see
:mod:`scelmo_torch.adapter`), trained with up to four terms:

* **reconstruction** (always): a decoder gets ``[z, one-hot(batch)]`` and reconstructs
  the cell's zero-shot ``wa`` embedding (``x @ E``, row-normalised, then L2-normalised),
  by cosine loss. Because the decoder is told the batch, ``z`` need not carry it; the
  term keeps ``z`` informative without labels (a conditional auto-encoder, in the spirit
  of scVI's batch-conditioned decoder).
* **adversarial batch loss** (``adversarial_weight``): a discriminator MLP predicts the
  batch from ``z`` through a gradient-reversal layer (Ganin & Lempitsky 2015), so the
  adapter learns to make ``z`` batch-uninformative.
* **labels** (semi-supervised, when ``labels_key`` is set; cells with a missing label
  are skipped): cross-entropy of a linear classifier on ``z`` plus the batch-hard
  triplet loss, as in the annotation head.
* **batch-aware triplets** (``mining="cross_batch"``): for labelled cells, positives are
  taken from other batches only, pulling same-type cells of different batches together.

Early stopping uses the validation loss (negated) of the reconstruction + label terms.
Which combination is the default was chosen by measurement on semi-synthetic batches
and Kang (docs/finetuning.md).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from scelmo.errors import InputError

from .adapter import (
    AdapterOptions,
    GeneAdapterHead,
    batch_hard_triplet_loss,
    build_adapter,
    encode_labels,
    hardest_triplets,
)
from .base import TrainingConfig, rows_to_tensor, split_rows
from .device import import_torch


def _grad_reverse(x: Any, weight: float) -> Any:
    torch = import_torch()

    class _Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, inp: Any) -> Any:
            return inp.view_as(inp)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return -weight * grad

    return _Reverse.apply(x)


def cross_batch_triplet_loss(z: Any, labels: Any, batch: Any, margin: float) -> Any:
    """Batch-hard triplets whose positives come from *other* batches (same label)."""
    torch = import_torch()
    zn = torch.nn.functional.normalize(z.float(), dim=1)
    dist = torch.cdist(zn, zn)
    valid = labels >= 0
    both = valid[:, None] & valid[None, :]
    same = (labels[:, None] == labels[None, :]) & both
    pos_mask = same & (batch[:, None] != batch[None, :])
    neg_mask = ~same & both
    return hardest_triplets(zn, dist, pos_mask, neg_mask, margin)


def _net(d: int, hidden: int, latent: int, n_batches: int, n_classes: int, target_dim: int) -> Any:
    nn = import_torch().nn

    class IntegrationNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.adapter = build_adapter(d, hidden, latent)
            self.decoder = nn.Sequential(nn.Linear(latent + n_batches, hidden), nn.ReLU(), nn.Linear(hidden, target_dim))
            self.discriminator = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_batches))
            self.classifier = nn.Linear(latent, max(n_classes, 1))

    return IntegrationNet()


class IntegrationOptions(AdapterOptions):
    #: Weight of the gradient-reversed batch discriminator (0 turns it off).
    adversarial_weight: float = Field(0.3, ge=0.0)
    #: Weight of the batch-conditioned reconstruction of the zero-shot embedding.
    reconstruction_weight: float = Field(1.0, ge=0.0)
    #: Weight of the label cross-entropy (when labels are given).
    label_weight: float = Field(1.0, ge=0.0)
    #: Triplet positives: "cross_batch" (same label, other batch) or "any" (same label).
    mining: Literal["cross_batch", "any"] = "cross_batch"


class IntegrationHead(GeneAdapterHead):
    """Batch-corrected cell embedding on LLM gene embeddings (adversarial + conditional decoder)."""

    name = "integration"
    Options = IntegrationOptions
    training_defaults = {"batch_size": 128, "lr": 3e-3, "patience": 2}

    def fit(self, embeddings: Any, labels: Any = None, *, gene_vectors: np.ndarray | None = None,
            batch: Any = None, training: TrainingConfig | dict[str, Any] | None = None, **_: Any) -> IntegrationHead:
        """Train on expression ``embeddings`` (cells x genes) with ``batch`` (required) and optional ``labels``."""
        X = embeddings
        if gene_vectors is None:
            raise InputError("The integration head needs `gene_vectors` (genes x d) aligned to X's columns.")
        if batch is None:
            raise InputError("The integration head needs batches: `Model.setup_anndata(adata, batch_key=...)`.")
        b_codes, batches = encode_labels(batch)
        if (b_codes < 0).any():
            raise InputError("Some cells have no batch; fill the batch column (every cell needs one).")
        if len(batches) < 2:
            raise InputError(f"Integration needs at least two batches; got {batches}.")
        if labels is not None:
            y_codes, classes = encode_labels(labels)
        else:
            y_codes, classes = np.full(X.shape[0], -1, dtype=np.int64), []
        cfg = self.training_config(training)
        self.spec = {"dim": int(gene_vectors.shape[1]), "batches": batches, "classes": classes,
                     "target_dim": int(gene_vectors.shape[1])}
        self._start(X, gene_vectors, y_codes)
        self._b_np = b_codes
        target = np.asarray(self._X @ self._E_np, dtype=np.float32)  # zero-shot wa of covered genes
        target /= np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
        self._target_np = target - target.mean(0, keepdims=True)
        rng = np.random.default_rng(cfg.seed)
        train, val = split_rows(X.shape[0], cfg.validation_fraction, rng, b_codes)
        self._val_rows = val
        try:
            self.train_module(train, cfg)
        finally:
            self._clear_data()
            for attr in ("_b_np", "_target_np", "_b", "_target"):
                if hasattr(self, attr):
                    delattr(self, attr)
        return self

    @property
    def classes(self) -> list[str]:
        return list(self.spec.get("classes", []))

    def build_module(self) -> Any:
        o, s = self.options, self.spec
        return _net(s["dim"], o.hidden, o.latent, len(s["batches"]), len(s["classes"]), s["target_dim"])

    def prepare_training(self, device: Any) -> None:
        torch = import_torch()
        super().prepare_training(device)
        self._b = torch.from_numpy(self._b_np).to(device)
        self._target = torch.from_numpy(self._target_np).to(device)

    def _losses(self, rows: np.ndarray, *, train: bool) -> tuple[Any, dict[str, float]]:
        torch = import_torch()
        F = torch.nn.functional
        o, m = self.options, self.module
        z = self._embed_rows(rows)
        b = self._b[rows]
        onehot = F.one_hot(b, len(self.spec["batches"])).to(z.dtype)
        recon = m.decoder(torch.cat([z, onehot], dim=1)).float()
        tgt = rows_to_tensor(self._target_np, rows, self.device)
        loss_rec = (1 - F.cosine_similarity(recon, tgt, dim=1)).mean()
        total = o.reconstruction_weight * loss_rec
        logs = {"recon": float(loss_rec.detach())}
        y = self._y[rows]
        if self.classes and bool((y >= 0).any()):
            lab = y >= 0
            ce = F.cross_entropy(m.classifier(z[lab]).float(), y[lab])
            tri = (cross_batch_triplet_loss(z, y, b, o.triplet_margin) if o.mining == "cross_batch"
                   else batch_hard_triplet_loss(z, y, o.triplet_margin))
            total = total + o.label_weight * ce + o.triplet_weight * tri
            logs.update({"ce": float(ce.detach()), "triplet": float(tri.detach())})
        if train and o.adversarial_weight > 0:
            logits = m.discriminator(_grad_reverse(z, o.adversarial_weight)).float()
            adv = F.cross_entropy(logits, b)
            total = total + adv  # the reversal layer scales the adapter's gradient
            logs["adversary"] = float(adv.detach())
        return total, logs

    def training_loss(self, rows: np.ndarray) -> Any:
        return self._losses(rows, train=True)

    def validation_score(self) -> float | None:
        if self._val_rows.size == 0:
            return None
        loss, _ = self._losses(self._val_rows, train=False)
        return -float(loss)

    def predict(self, embeddings: Any, **kwargs: Any) -> np.ndarray:
        """The integrated embedding (this head predicts no labels): same as :meth:`transform`."""
        gene_vectors = kwargs.pop("gene_vectors", None)
        if gene_vectors is None:
            raise InputError("predict needs `gene_vectors` aligned to X's columns.")
        return self.transform(embeddings, gene_vectors=gene_vectors, **kwargs)
