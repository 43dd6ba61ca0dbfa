"""The fine-tuned cell-type annotation head (the paper's ``Net``, made robust).

``z = w (x - mu) @ A(E)`` (see :mod:`scelmo_torch.adapter`; by default a residual
adapter whose epoch 0 is the zero-shot embedding), a linear classifier on ``z``, loss =
class-weighted cross-entropy + ``triplet_weight`` x batch-hard triplet loss on ``z``.

Training holds out a stratified ``validation_fraction`` of the labelled cells and scores
the mean of kNN accuracy and macro-F1 on them (k=10, cosine, reference = the other
training cells) before training (epoch 0) and every ``check_every`` epochs; it keeps the
best-scoring weights and stops after ``patience`` checks without improvement. A score
within one validation cell's worth (``1 / n_validation``, :meth:`validation_tolerance`)
of the best counts as a tie, won by the later, more trained epoch: on ~50 validation
cells the score dips in the first epochs and recovers while held-out accuracy rises. So
on the validation cells the head never ends more than one cell below the zero-shot kNN:
when no epoch reaches epoch 0's score, the head *is* the zero-shot embedding. The
defaults were chosen by measurement on pbmc68k splits and Kang (docs/finetuning.md).

Prediction: ``"knn"`` - majority label of the k nearest training cells in ``z``
(reference = every labelled training cell, stored with the model); ``"classifier"`` -
the linear classifier's softmax, with probabilities; ``"auto"`` - whichever of the two
scored better on the validation cells (:attr:`AnnotationHead.best_method`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from scelmo.errors import InputError, ScelmoWarning
from scelmo.knn import knn_fractions, knn_vote
from scelmo.plugin.heads import renamed_keyword

from .adapter import (
    AdapterOptions,
    GeneAdapterHead,
    batch_hard_triplet_loss,
    build_adapter,
    encode_labels,
    knn_predict_codes,
    macro_f1_codes,
)
from .base import TrainingConfig, split_rows
from .device import import_torch, torch_session


def _net(d: int, hidden: int, latent: int, n_classes: int, norm: str, residual: bool = False,
         n_genes: int = 0, gene_rank: int = 64) -> Any:
    nn = import_torch().nn
    latent = d if residual else latent

    class AnnotationNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.adapter = build_adapter(d, hidden, latent, residual, n_genes, gene_rank)
            if norm == "batchnorm":
                self.classifier = nn.Sequential(nn.BatchNorm1d(latent), nn.Linear(latent, n_classes))
            elif norm == "layernorm":
                self.classifier = nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, n_classes))
            else:
                self.classifier = nn.Linear(latent, n_classes)

    return AnnotationNet()


class AnnotationOptions(AdapterOptions):
    #: Fine-tune the gene table too (see :mod:`scelmo_torch.adapter`). On by default for
    #: annotation: measured on pbmc68k splits and Kang (docs/finetuning.md).
    tune_genes: bool = True
    #: Normalisation of z before the linear classifier: "batchnorm", "layernorm" or "none" (paper).
    classifier_norm: Literal["batchnorm", "layernorm", "none"] = "batchnorm"
    #: After training, refit the classifier alone on the final (frozen) embeddings of the
    #: training cells (full-batch Adam, ``refit_steps`` steps); 0 turns it off.
    refit_steps: int = Field(300, ge=0)
    #: Cross-entropy class weights: "balanced" (``n / (n_classes * count)`` over the
    #: training cells, as scikit-learn) or "none".
    class_weight: Literal["balanced", "none"] = "balanced"


class AnnotationHead(GeneAdapterHead):
    """Fine-tuned cell-type classifier on LLM gene embeddings (CE + triplet, kNN / classifier)."""

    name = "annotation"
    requires_labels = True
    capabilities = frozenset({"latent", "labels", "knn"})
    Options = AnnotationOptions
    #: Measured (docs/finetuning.md): the paper's batch of 512 gives one step per epoch
    #: on small data; 128 cells and lr 1e-3 train reliably on 500 to 100,000 cells;
    #: a check every 2 epochs, patience 5 (patience 3 stopped pbmc68k splits during the
    #: early dip of the validation score, before the epochs that generalise best).
    training_defaults = {"batch_size": 128, "lr": 1e-3, "check_every": 2, "patience": 5}

    @property
    def classes(self) -> list[str]:
        return list(self.spec.get("classes", []))

    def check_inputs(self, *, labels: np.ndarray | None = None, batch: np.ndarray | None = None,
                     perturbations: np.ndarray | None = None) -> None:
        """Refuse labels that are a numeric measurement (see :func:`_refuse_measurement_labels`)."""
        del batch, perturbations
        if labels is not None:
            _refuse_measurement_labels(labels)

    def fit(self, X: Any = None, labels: Any = None, *, gene_vectors: np.ndarray | None = None,
            gene_names: list[str] | None = None, batch: Any = None, perturbations: Any = None,
            training: TrainingConfig | dict[str, Any] | None = None, **kwargs: Any) -> AnnotationHead:
        """Train on expression ``X`` (cells x genes) and ``labels`` (``batch`` and ``perturbations``
        are not used; ``embeddings=`` is the deprecated name of ``X``)."""
        X = renamed_keyword(kwargs, "embeddings", "X", X, "AnnotationHead.fit")
        if X is None:
            raise InputError("AnnotationHead.fit needs the expression matrix X (cells x genes).")
        if gene_vectors is None:
            raise InputError("The annotation head needs `gene_vectors` (genes x d) aligned to X's columns.")
        if labels is None:
            raise InputError("The annotation head needs labels: `Model.setup_anndata(adata, labels_key=...)`.")
        _refuse_measurement_labels(labels)
        codes, classes = encode_labels(labels)
        if len(classes) < 2:
            raise InputError(f"Annotation needs at least two cell types; got {classes}.")
        labelled = np.flatnonzero(codes >= 0)
        _warn_about_labels(codes, classes, self.options.knn_k)
        cfg = self.training_config(training)
        self.spec = {"dim": int(gene_vectors.shape[1]), "classes": classes}
        X = X[labelled] if labelled.size < X.shape[0] else X
        self._start(X, gene_vectors, codes[labelled], gene_names)
        rng = np.random.default_rng(cfg.seed)
        train, val = split_rows(len(labelled), cfg.validation_fraction, rng, codes[labelled])
        self._train_rows = train
        self._validation_rows(train, val, rng)
        counts = np.bincount(codes[labelled][train], minlength=len(classes)).astype(np.float64)
        if self.options.class_weight == "balanced":
            cw = np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0)
        else:
            cw = np.ones(len(classes))
        self.spec["class_weights"] = [float(v) for v in cw]
        try:
            self.train_module(train, cfg)
            self._finish_arrays()
            ref = self.transform(X, gene_vectors=gene_vectors, gene_names=gene_names)
            y = codes[labelled].astype(np.int64)
            self.arrays.update({"reference_latent": ref, "reference_labels": y})
            if self.options.refit_steps and val.size:  # kNN or classifier? decided on the validation cells
                self._refit_classifier(ref[train], y[train], cfg)
                n = len(classes)
                knn = knn_predict_codes(ref[val], ref[train], y[train], n, self.options.knn_k)
                clf = self._classify(ref[val], cfg)
                scores = {m: 0.5 * (float((p == y[val]).mean()) + macro_f1_codes(y[val], p, n))
                          for m, p in (("knn", knn), ("classifier", clf))}
                self.spec["validation_scores"] = scores
                self.spec["best_method"] = "classifier" if scores["classifier"] > scores["knn"] else "knn"
            if self.options.refit_steps:
                self._refit_classifier(ref, y, cfg)
        finally:
            self._clear_data()
        return self

    def build_module(self) -> Any:
        o = self.options
        return _net(self.spec["dim"], o.hidden, o.latent, len(self.spec["classes"]), o.classifier_norm, o.residual,
                    self.n_tuned_genes(), o.gene_rank)

    def prepare_training(self, device: Any) -> None:
        torch = import_torch()
        super().prepare_training(device)
        cw = self.spec.get("class_weights") or [1.0] * len(self.classes)
        self._cw = torch.tensor(cw, dtype=torch.float32, device=device)

    def training_loss(self, rows: np.ndarray) -> Any:
        F = import_torch().nn.functional
        z = self._embed_rows(rows)
        y = self._y[rows]
        ce = F.cross_entropy(self.module.classifier(z).float(), y, weight=self._cw) + self._delta_penalty()
        if self.options.triplet_weight > 0:
            tri = batch_hard_triplet_loss(z, y, self.options.triplet_margin)
            return ce + self.options.triplet_weight * tri, {"ce": ce.detach(), "triplet": tri.detach()}
        return ce, {"ce": ce.detach()}

    def _refit_classifier(self, z: np.ndarray, y: np.ndarray, cfg: TrainingConfig) -> None:
        """Fit the classifier on frozen embeddings (the adapter's early stop comes before it converges)."""
        torch = import_torch()
        with torch_session(cfg.device, num_threads=cfg.num_threads, seed=cfg.seed) as dev:
            self.module.to(dev)
            clf = self.module.classifier
            zt, yt = torch.from_numpy(z).to(dev), torch.from_numpy(y).to(dev)
            clf.train()
            bn = clf[0] if isinstance(clf, torch.nn.Sequential) and isinstance(clf[0], torch.nn.BatchNorm1d) else None
            if bn is not None:  # statistics of the final embedding, then fixed
                bn.running_mean.copy_(zt.mean(0))
                bn.running_var.copy_(zt.var(0))
                bn.eval()
            opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
            cw = torch.tensor(self.spec.get("class_weights") or [1.0] * len(self.classes), dtype=torch.float32, device=dev)
            for _ in range(self.options.refit_steps):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(clf(zt), yt, weight=cw).backward()
                opt.step()
            self.module.eval()

    def _classify(self, z: np.ndarray, cfg: TrainingConfig) -> np.ndarray:
        torch = import_torch()
        with torch_session(cfg.device, num_threads=cfg.num_threads, seed=None) as dev, torch.no_grad():
            self.module.to(dev).eval()
            return self.module.classifier(torch.from_numpy(z).to(dev)).float().argmax(1).cpu().numpy()

    @property
    def best_method(self) -> str:
        """"knn" or "classifier", whichever scored better on the validation cells ("knn" if unknown)."""
        return str(self.spec.get("best_method", "knn"))

    def validation_tolerance(self) -> float:
        """One held-out cell's worth of accuracy, ``1 / n_validation``: the score's resolution.

        A later epoch whose score is within it of the best is kept instead (measured on
        pbmc68k splits: the score of ~50 validation cells dips in the first epochs and
        recovers while held-out accuracy keeps rising; docs/finetuning.md).
        """
        return 1.0 / self._val_rows.size if self._val_rows.size else 0.0

    def validation_score(self) -> float | None:
        """Mean of kNN accuracy and macro-F1 on the held-out cells (reference: training cells)."""
        if self._val_rows.size == 0:
            return None
        zv, zr = self._latent_all(self._val_rows), self._latent_all(self._ref_rows)
        y = self._labels_np
        n = len(self.classes)
        pred = knn_predict_codes(zv, zr, y[self._ref_rows], n, self.options.knn_k)
        yv = y[self._val_rows]
        return 0.5 * (float((pred == yv).mean()) + macro_f1_codes(yv, pred, n))

    # -- prediction ------------------------------------------------------------------------
    def predict_proba(self, X: Any, *, gene_vectors: np.ndarray | None = None, gene_names: list[str] | None = None,
                      device: Any = None) -> np.ndarray:
        """Classifier probabilities, cells x classes (columns in :attr:`classes` order)."""
        torch = import_torch()
        z = self.transform(X, gene_vectors=gene_vectors, device=device, gene_names=gene_names)
        with self.inference(device) as dev:
            logits = self.module.classifier(torch.from_numpy(z).to(dev)).float()
            return torch.softmax(logits, dim=1).cpu().numpy()

    def predict_knn(self, latent: np.ndarray, *, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and vote shares from the k nearest reference (training) cells in ``latent`` space."""
        self._require_fitted()
        ref, codes = self.arrays["reference_latent"], self.arrays["reference_labels"]
        names = np.asarray(self.classes, dtype=object)[codes]
        return knn_vote(latent, ref, names.astype(str), k=k or self.options.knn_k)

    def knn_fractions(self, latent: np.ndarray, *, k: int | None = None, chunk: int = 2048) -> np.ndarray:
        """Share of each class among the k cosine-nearest reference cells (cells x classes).

        Ties between classes go to the class of the nearest neighbour among them
        (:func:`scelmo.knn.knn_fractions`, the same vote as ``scelmo.tl.annotate``).
        """
        self._require_fitted()
        return knn_fractions(latent, self.arrays["reference_latent"], self.arrays["reference_labels"],
                             len(self.classes), k=k or self.options.knn_k, chunk=chunk)

    def predict(self, X: Any = None, *, gene_vectors: np.ndarray | None = None, gene_names: list[str] | None = None,
                perturbations: Any = None, device: Any = None, method: str = "knn", **kwargs: Any) -> np.ndarray:
        """Labels for expression ``X`` (cells x genes) by ``"knn"``, ``"classifier"`` or ``"auto"``
        (``embeddings=`` is the deprecated name of ``X``)."""
        X = renamed_keyword(kwargs, "embeddings", "X", X, "AnnotationHead.predict")
        if kwargs:
            raise InputError(f"Unknown argument(s) for AnnotationHead.predict: {sorted(kwargs)}.")
        if gene_vectors is None:
            raise InputError("predict needs `gene_vectors` aligned to X's columns.")
        if method == "auto":
            method = self.best_method
        given = {"gene_vectors": gene_vectors, "gene_names": gene_names, "device": device}
        if method == "classifier":
            p = self.predict_proba(X, **given)
            return np.asarray(self.classes, dtype=object)[p.argmax(1)].astype(str)
        if method == "knn":
            return self.predict_knn(self.transform(X, **given))[0]
        raise InputError(f"method must be 'knn', 'classifier' or 'auto', got {method!r}.")


#: Most distinct values a labels column of numbers may have (and never more than half the
#: labelled cells, once it has over :data:`MIN_NUMERIC_CLASSES_CHECKED`): more look like a
#: measurement (``n_genes``, ``total_counts``, ``pct_counts_mt``), not cell types.
MAX_NUMERIC_CLASSES = 200
#: Numeric labels with at most this many distinct values always pass (small data sets).
MIN_NUMERIC_CLASSES_CHECKED = 20


def _refuse_measurement_labels(labels: Any) -> None:
    """Refuse labels that are numbers with too many distinct values to be cell types.

    A labels column whose every value is a number (integer-coded or float, as text or not)
    is refused when it has more than :data:`MAX_NUMERIC_CLASSES` distinct values, or more
    than :data:`MIN_NUMERIC_CLASSES_CHECKED` and more than half the labelled cells: each
    "class" would then hold a cell or two, and the model learns nothing (best validation
    score 0). Integer codes of a few cell types (``0 .. 11``) pass; text labels always pass.

    Raises
    ------
    InputError
        Saying how many distinct numbers the column has, and to pass a column of
        cell-type names instead.
    """
    values = [v for v in np.asarray(labels, dtype=object).ravel()
              if v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v) != ""]
    distinct = set(map(str, values))
    n_classes = len(distinct)
    if n_classes <= MIN_NUMERIC_CLASSES_CHECKED:
        return
    if n_classes <= MAX_NUMERIC_CLASSES and n_classes <= len(values) / 2:
        return
    numbers = []
    for v in distinct:
        try:
            numbers.append(float(v))
        except ValueError:
            return  # text labels (cell-type names): not this check's business
    numbers.sort()
    raise InputError(
        f"The labels are {n_classes} distinct numbers ({numbers[0]:g} to {numbers[-1]:g}) over {len(values)} "
        "labelled cells: a measurement such as n_genes or total_counts, not cell types, so each class would "
        "hold a cell or two. Pass a column of cell-type names as labels_key (`scelmo train --labels-key "
        "cell_type`, `Model.setup_anndata(adata, labels_key=\"cell_type\")`); integer codes of a few cell "
        f"types work too (at most {MAX_NUMERIC_CLASSES} classes, and at most half as many as cells)."
    )


def _warn_about_labels(codes: np.ndarray, classes: Sequence[str], k: int) -> None:
    """Say what training will not see: cells without a label (left out), and classes with
    fewer cells than the kNN vote's ``k`` (a vote of ``k`` neighbours rarely elects them)."""
    missing = int((codes < 0).sum())
    if missing:
        warnings.warn(f"{missing} of {codes.size} cells have no label and are left out of training.",
                      ScelmoWarning, stacklevel=4)
    counts = np.bincount(codes[codes >= 0], minlength=len(classes))
    small = [f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < k]
    if small:
        warnings.warn(
            f"{len(small)} class(es) have fewer training cells than the kNN vote's k={k}: {', '.join(small)}. The "
            "kNN labels (the default method) rarely give them; predict with `method=\"classifier\"`, lower "
            "`knn_k`, or add cells of those types.", ScelmoWarning, stacklevel=4)
