"""Perturbation prediction head: control cells + a perturbation's embedding -> perturbed cells.

In the spirit of the paper's GEARS/CPA extensions (perturbation vectors from LLM text
embeddings, combinations by summing), written here:

* **Perturbation latent.** Every component of a perturbation (a gene for a genetic
  perturbation, a drug or stimulus for a chemical one) has a vector: its gene embedding
  or the text embedding of a description. The vectors are L2-normalised, centred on the
  mean of the component table given at fit time (the embeddings are anisotropic: raw
  cosines of 0.7-0.8 between unrelated genes) and scaled to unit mean norm. A small MLP
  maps each to a latent vector; a combination ``"A+B"`` is the **sum** of its components'
  latents, so unseen combinations of seen or unseen components are predicted the same
  way as singles. Optionally (``residual_embedding``) a learned vector per component seen
  in training is added, as the paper's GEARS fork does (zero for unseen components).
* **Response.** From a control cell's log-normalised expression ``x`` and the latent
  ``p``: ``x_hat = x + shift(p) + [dec(enc(x), p) - dec(enc(x), 0)]``. ``shift`` is a
  linear map (a cell-independent response, the learned analogue of the mean shift);
  the bracket (``cell_state=True``) lets the response depend on the cell's state and
  is exactly zero for ``p = 0``, so "no perturbation" means "no change". Predictions
  are clipped at 0 (log expression).
* **Starting at the mean shift** (``shared_response``, default). A perturbed cell's
  prediction also gets the training perturbations' mean shift, so the network learns
  deviations from it; the latent of a component never seen in training is scaled by
  ``unseen_scale``, chosen on held-out training components (0 = exactly the mean shift).
* **Training without paired cells.** Control and perturbed cells are different cells,
  so the loss compares distributions within each *unit* (a cell group, e.g. a cell
  type, under one perturbation): control cells of the unit's group are pushed through
  the network with the unit's perturbation and their predicted mean is matched to the
  unit's observed mean (MSE over genes), plus ``mmd_weight`` x an RBF-kernel MMD between
  the predicted and observed cells (keeps the spread, not only the mean).

Usage::

    from scelmo_torch.perturbation import PerturbationHead
    head = PerturbationHead(hidden=256, latent=64)
    head.fit(X, perturbations=adata.obs["condition"], control="control",
             groups=adata.obs["cell_type"], perturbation_embeddings={"IFN-beta": vec},
             training={"max_epochs": 60})
    mean = head.predict_mean(X_ctrl_of_held_out_type, "IFN-beta")

With :class:`scelmo.Model` the head is ``head="perturbation"``; genetic perturbations whose
components are measured genes take their vectors from the model's gene vectors when no
``perturbation_embeddings`` are given. (``embeddings=``, the old name of
``perturbation_embeddings=`` in ``fit``/``predict``/``predict_mean``, still works with a
:class:`DeprecationWarning`.)
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from scelmo.errors import InputError, ScelmoWarning
from scelmo.expression.selection import MAX_LOG_VALUE, looks_like_counts
from scelmo.perturbation import components as split_components
from scelmo.plugin import ComponentOptions
from scelmo.plugin.heads import renamed_keyword
from scelmo.progress import progress_enabled

from .base import TorchHead, TrainingConfig, rows_to_tensor
from .device import import_torch

#: Training defaults of this head (override with ``training=``); measured in docs/perturbation.md.
DEFAULT_TRAINING = {"max_epochs": 60, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-5, "validation_fraction": 0.0}


class PerturbationOptions(ComponentOptions):
    """Options of :class:`PerturbationHead`."""

    #: Hidden width of the encoder, decoder and component MLP.
    hidden: int = Field(256, ge=1)
    #: Width of the cell-state latent and of the perturbation latent.
    latent: int = Field(64, ge=1)
    #: Dropout in the encoder and decoder.
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    #: Let the response depend on the control cell's state (encoder/decoder); False: a
    #: response per perturbation that is the same for every cell.
    cell_state: bool = True
    #: Add a learned latent per component seen in training (GEARS fork style).
    residual_embedding: bool = False
    #: Start every perturbation at the shared response: the mean shift of the training
    #: perturbations (mean over units of the unit's mean minus its group's control mean) is
    #: added to any perturbed cell's prediction, so that the network learns how a
    #: perturbation (and a cell state) differs from the mean shift. With ``unseen_scale=0``
    #: an unseen perturbation is predicted as exactly the mean shift.
    shared_response: bool = True
    #: Weight of the vector-derived latent of a component *not seen in training* (1: as
    #: learned; 0: such a perturbation gets only the shared response). ``None``: chosen on
    #: the training data, by training once more with a quarter of the seen components held
    #: out and scoring their units' mean response for each of ``UNSEEN_SCALES``; the
    #: smallest scale within one standard error of the best is kept (needs at least
    #: ``MIN_COMPONENTS_TO_VALIDATE`` seen components, else 1). Knowledge that does not
    #: transfer to held-out components is thereby turned down, not trusted blindly.
    unseen_scale: float | None = Field(None, ge=0.0, le=1.0)
    #: Centre component vectors on the mean of the fit-time table (needs >= 2 components).
    center_embeddings: bool = True
    #: Project every (normalised) component vector onto the span of the components seen in
    #: training, so an unseen component is read only through its resemblance to seen ones
    #: (the directions no training vector had reach the network through untrained weights
    #: otherwise). Seen components are unchanged.
    project_to_seen: bool = False
    #: Weight of the MMD term (0: match means only).
    mmd_weight: float = Field(0.1, ge=0.0)
    #: Cells drawn per unit (group x perturbation) in a mini-batch, at least.
    min_cells_per_unit: int = Field(16, ge=2)
    #: Name of the control condition (``fit(control=...)`` overrides it).
    control: str = Field("ctrl", min_length=1)
    #: Separator of combination names ("A+B").
    separator: str = Field("+", min_length=1)
    #: Clip predicted log expression at 0.
    clip: bool = True
    #: Cells per block at prediction.
    eval_batch_size: int = Field(4096, ge=1)


#: Candidate weights of an unseen component's latent (``unseen_scale=None``).
UNSEEN_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Seen components needed to choose ``unseen_scale`` on held-out ones.
MIN_COMPONENTS_TO_VALIDATE = 5
#: Training settings that steer validation and early stopping: this head has no validation
#: score (it trains ``max_epochs`` epochs), so it does not use them and says so when given.
VALIDATION_SETTINGS = ("early_stopping", "check_every", "patience", "tolerance", "validation_fraction")
#: What a :class:`scelmo.Model` user does instead of the bare head's ``groups=None``.
#: (In a code span: ``scelmo train`` says it as "no ``--labels-key``".)
MODEL_GROUPS_FIX = "or train without cell groups (`labels_key=None`)"
#: The same for the bare head.
HEAD_GROUPS_FIX = "or pass groups=None (one group; with scelmo.Model: labels_key=None in setup_anndata)"


def _build_network(n_genes: int, dim: int, opts: PerturbationOptions, n_seen: int) -> Any:
    torch = import_torch()
    nn = torch.nn

    class PerturbationNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h, lat = opts.hidden, opts.latent
            self.component = nn.Sequential(nn.Linear(dim, h), nn.GELU(), nn.Linear(h, lat))
            self.residual = nn.Embedding(max(n_seen, 1), lat) if opts.residual_embedding else None
            if self.residual is not None:
                nn.init.zeros_(self.residual.weight)
            self.shift = nn.Linear(lat, n_genes, bias=False)
            if opts.cell_state:
                self.encoder = nn.Sequential(nn.Linear(n_genes, h), nn.GELU(), nn.Dropout(opts.dropout), nn.Linear(h, lat))
                self.decoder = nn.Sequential(nn.Linear(2 * lat, h), nn.GELU(), nn.Dropout(opts.dropout), nn.Linear(h, n_genes))

        def component_latents(self, vectors: Any, seen_index: Any) -> Any:
            """Latent of each component (rows of ``vectors``); ``seen_index`` -1 = unseen."""
            out = self.component(vectors)
            if self.residual is not None:
                seen = seen_index >= 0
                res = self.residual(seen_index.clamp(min=0)) * seen[:, None].to(out.dtype)
                out = out + res
            return out

        def perturbation_latents(self, component_latents: Any, members: Sequence[Any]) -> Any:
            """One latent per perturbation: the sum of its components' latents (rows of
            ``component_latents`` listed in ``members``)."""
            return torch.stack([component_latents[m].sum(0) for m in members])

        def forward(self, x: Any, p: Any) -> Any:
            delta = self.shift(p)
            if opts.cell_state:
                z = self.encoder(x)
                delta = delta + self.decoder(torch.cat([z, p], 1)) - self.decoder(torch.cat([z, torch.zeros_like(p)], 1))
            return x + delta

    return PerturbationNet()


def _mmd(a: Any, b: Any) -> Any:
    """Biased RBF-kernel MMD² between two samples, bandwidths 0.5/1/2 x the median distance."""
    torch = import_torch()
    xy = torch.cat([a, b], 0)
    d2 = torch.cdist(xy, xy).pow(2)
    with torch.no_grad():
        med = d2[d2 > 0].median() if bool((d2 > 0).any()) else torch.tensor(1.0, device=a.device)
    k = sum(torch.exp(-d2 / (s * med)) for s in (0.25, 1.0, 4.0))
    n = a.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class PerturbationHead(TorchHead):
    """Predicts the expression of perturbed cells from control cells (module docstring)."""

    name = "perturbation"
    Options = PerturbationOptions
    requires_labels = False
    requires_perturbations = True
    capabilities = frozenset({"latent", "perturbation"})
    training_defaults = DEFAULT_TRAINING
    options: PerturbationOptions

    def __init__(self, *, perturbation_embeddings: Mapping[str, Any] | None = None, **options: Any) -> None:
        """``perturbation_embeddings``: ``{component: vector}`` used by :meth:`fit` when it gets none
        (so that ``scelmo.Model(adata, head="perturbation", perturbation_embeddings=...)`` works)."""
        super().__init__(**options)
        self._init_embeddings = dict(perturbation_embeddings) if perturbation_embeddings is not None else None

    # -- component vectors ------------------------------------------------------------------
    def _table_from(
        self,
        names: Sequence[str],
        embeddings: Mapping[str, Any] | None,
        gene_vectors: np.ndarray | None,
        gene_names: Sequence[str] | None,
    ) -> dict[str, np.ndarray]:
        """Vectors for ``names`` from ``embeddings``, else from the gene vectors of measured genes."""
        out: dict[str, np.ndarray] = {}
        if embeddings is not None:
            out.update({str(k): np.asarray(v, dtype=np.float32).ravel() for k, v in embeddings.items()})
        missing = [n for n in names if n not in out]
        if missing and gene_vectors is not None and gene_names is not None:
            index = {str(g).upper(): i for i, g in enumerate(gene_names)}
            for n in missing:
                i = index.get(n.upper())
                if i is not None and np.abs(gene_vectors[i]).sum() > 0:
                    out[n] = np.asarray(gene_vectors[i], dtype=np.float32)
        still = [n for n in names if n not in out]
        if still:
            raise InputError(
                f"No embedding for perturbation component(s) {still[:10]}. Pass perturbation_embeddings={{name: vector}} "
                "(gene vectors from `scelmo.tl.embed_genes`, or text vectors of descriptions from "
                "`scelmo.perturbation.text_perturbation_embeddings`); measured genes also take their "
                "vector from gene_vectors."
            )
        dims = {v.shape[0] for v in out.values()}
        if len(dims) != 1:
            raise InputError(f"All perturbation embeddings must have the same length; got lengths {sorted(dims)}.")
        if self.spec.get("dim") is not None and dims != {self.spec["dim"]}:
            raise InputError(
                f"This head was trained on {self.spec['dim']}-d perturbation embeddings but got "
                f"{dims.pop()}-d ones; embed with the same model as for training."
            )
        for k, v in out.items():
            if not np.isfinite(v).all():
                raise InputError(f"The embedding of {k!r} contains NaN or infinite values.")
        return out

    def _normalise(self, vectors: np.ndarray) -> np.ndarray:
        v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        out = (v - self.arrays["center"]) * self.arrays["scale"]
        if "seen_basis" in self.arrays:
            basis = self.arrays["seen_basis"].astype(np.float64)
            out = (out @ basis.T) @ basis
        return out.astype(np.float32)

    def add_embeddings(self, embeddings: Mapping[str, Any]) -> None:
        """Make more components (unseen in training) available for prediction. A component seen in
        training keeps the vector it was trained with (an error: replacing it silently changed
        its predictions)."""
        self._require_fitted()
        trained = sorted(set(map(str, embeddings)) & set(self.seen_components))
        if trained:
            raise InputError(
                f"{trained[:5]} were seen in training; their vectors are part of the model and cannot be replaced. "
                "Give vectors only for components unseen in training (or predict with "
                "predict_perturbation(..., perturbation_embeddings=...), which changes nothing)."
            )
        table = self._table_from(list(embeddings), embeddings, None, None)
        names = list(self.spec["components"])
        vecs = dict(zip(names, self.arrays["component_vectors"], strict=True))
        vecs.update(table)
        self.spec["components"] = list(vecs)
        self.arrays["component_vectors"] = np.stack([vecs[n] for n in vecs]).astype(np.float32)

    @property
    def components(self) -> list[str]:
        """Names of the components the head has vectors for."""
        return list(self.spec.get("components", []))

    @property
    def seen_components(self) -> list[str]:
        """Components that occurred in training."""
        return list(self.spec.get("seen", []))

    # -- data ---------------------------------------------------------------------------------
    def _check_matrix(self, X: Any) -> Any:
        if X is None or getattr(X, "ndim", 2) != 2:
            raise InputError("X must be a cells x genes matrix (dense or sparse).")
        X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
        data = X.data if sp.issparse(X) else X
        if not np.isfinite(data).all():
            raise InputError("X contains NaN or infinite values; remove or impute them first.")
        if data.size and float(data.min()) < 0:
            raise InputError(
                "X has negative values; the perturbation head expects log-normalised expression "
                "(sc.pp.normalize_total + sc.pp.log1p), not scaled data."
            )
        # counts are told apart as scelmo.Model tells them (whole numbers only): a shallow dataset's
        # counts, or a subset of its genes, stay below any threshold on the largest value
        if looks_like_counts(X):
            raise InputError(
                f"X holds only whole numbers (up to {float(data.max()):.0f}): it looks like raw counts. The "
                "perturbation head expects log-normalised expression: sc.pp.normalize_total(adata, target_sum=1e4) "
                "then sc.pp.log1p(adata) (scelmo.Model does this itself for counts)."
            )
        if data.size and float(data.max()) > MAX_LOG_VALUE:
            raise InputError(
                f"X has values up to {float(data.max()):.0f}; log-normalised expression stays below "
                f"{MAX_LOG_VALUE:g} (normalised but not log-transformed, or raw counts?). Use log-normalised "
                "expression (sc.pp.normalize_total(target_sum=1e4) + sc.pp.log1p), or pass layer=."
            )
        return X

    def check_inputs(self, *, labels: np.ndarray | None = None, batch: np.ndarray | None = None,
                     perturbations: np.ndarray | None = None) -> None:
        """What :class:`scelmo.Model` checks before embedding genes (minutes): each cell has a
        perturbation, some (not all) are ``options.control``, and when ``labels`` (the
        ``labels_key`` column: cell groups) are given, every cell has one and every group with
        perturbed cells has control cells; the errors give a Model user's way out."""
        pert = perturbations if perturbations is not None else batch
        if pert is None:
            raise InputError(
                "The perturbation head needs each cell's perturbation: "
                "`scelmo.Model.setup_anndata(adata, perturbation_key=<column>)` (e.g. 'condition'), then build the Model."
            )
        pert, grp = _cell_labels(len(pert), pert, _groups_of(labels), fix=MODEL_GROUPS_FIX)
        is_ctrl = _control_cells(pert, self.options.control, self.options.separator)
        _units(grp, pert, is_ctrl, fix=MODEL_GROUPS_FIX)

    def fit(
        self,
        X: Any,
        labels: Any = None,
        *,
        gene_vectors: np.ndarray | None = None,
        gene_names: Sequence[str] | None = None,
        batch: Sequence[Any] | None = None,
        perturbations: Sequence[Any] | None = None,
        training: TrainingConfig | dict[str, Any] | None = None,
        control: str | None = None,
        groups: Sequence[Any] | None = None,
        perturbation_embeddings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> PerturbationHead:
        """Train on control and perturbed cells.

        Parameters
        ----------
        X
            Cells x genes, log-normalised expression (dense or CSR); stays sparse.
        labels
            Cell groups (e.g. cell types) when ``groups`` is not given: what
            :class:`scelmo.Model` passes from ``labels_key`` (all missing: one group, as the
            Model warns).
        perturbations
            Perturbation name of each cell: ``control`` or a name such as ``"IFN-beta"``,
            ``"KLF1"`` or ``"KLF1+CEBPA"`` (components joined by ``options.separator``).
        control
            The name of the control condition (default ``options.control``, ``"ctrl"``).
        groups
            Cell group of each cell (e.g. cell type): control cells of a group are the
            starting point for that group's perturbed cells. ``None``: ``labels``, else one group.
        perturbation_embeddings
            ``{component: vector}``; may hold more components than the training data
            (unseen ones to predict later). Default: the constructor's
            ``perturbation_embeddings``. (``embeddings=`` is its deprecated name.) Missing components that are measured genes take
            their row of ``gene_vectors`` (aligned to X's columns, with ``gene_names``).
        batch
            Used as ``perturbations`` when those are not given (so that a
            :class:`scelmo.Model` set up with ``batch_key=<perturbation column>`` can drive
            this head before ``setup_anndata`` has a ``perturbation_key``).
        training
            :class:`~scelmo_torch.base.TrainingConfig` settings; this head's defaults are
            ``DEFAULT_TRAINING`` (60 epochs, batch 256 perturbed cells, lr 1e-3). It has no
            validation score and trains ``max_epochs`` epochs: ``early_stopping=True``,
            ``check_every``, ``patience``, ``tolerance`` and ``validation_fraction`` are not
            used (a :class:`~scelmo.errors.ScelmoWarning` says so). With ``unseen_scale=None``
            and at least ``MIN_COMPONENTS_TO_VALIDATE`` seen components, a second head is
            trained first to choose ``unseen_scale`` (with its own progress bar, and a stage
            line on stderr when ``progress`` is on); its time is ``history``'s first row,
            ``epoch`` 0 (``stage``, ``seconds``, ``cpu_seconds``; loss NaN).
        """
        embeddings = renamed_keyword(kwargs, "embeddings", "perturbation_embeddings", perturbation_embeddings,
                                     "PerturbationHead.fit")
        if kwargs:
            raise InputError(f"Unknown argument(s) for the perturbation head: {sorted(kwargs)}.")
        if perturbations is None:
            perturbations = batch
        fix = HEAD_GROUPS_FIX
        if groups is None and labels is not None:  # scelmo.Model's labels_key: its user's way out
            groups, fix = _groups_of(labels), MODEL_GROUPS_FIX
        _warn_unused_settings(training)
        if embeddings is None:
            embeddings = self._init_embeddings
        control = self.options.control if control is None else str(control)
        if perturbations is None:
            raise InputError(
                "Give the perturbation of each cell: fit(X, perturbations=adata.obs['condition'], "
                "control='ctrl') (with scelmo.Model: setup_anndata(adata, batch_key=<perturbation column>) "
                "and Model(adata, head='perturbation', control='ctrl', perturbation_embeddings=...))."
            )
        self.spec = {}
        X = self._check_matrix(X)
        n, G = X.shape
        pert, grp = _cell_labels(n, perturbations, groups, fix=fix)
        if gene_names is not None and len(gene_names) != G:
            raise InputError(f"gene_names has {len(gene_names)} entries but X has {G} genes.")
        if gene_vectors is not None and np.asarray(gene_vectors).shape[0] != G:
            raise InputError(f"gene_vectors has {np.asarray(gene_vectors).shape[0]} rows but X has {G} genes.")
        sep = self.options.separator
        is_ctrl = _control_cells(pert, control, sep)
        comp_of = {p: split_components(p, sep=sep, control=control) for p in np.unique(pert[~is_ctrl])}
        seen = sorted({c for cs in comp_of.values() for c in cs})
        table = self._table_from(seen, embeddings, gene_vectors, gene_names)
        names = seen + sorted(k for k in table if k not in set(seen))

        unit_keys, unit_of, unit_rows, ctrl_rows = _units(grp, pert, is_ctrl, fix=fix)
        means = np.stack([np.asarray(X[r].mean(axis=0), dtype=np.float32).ravel() for r in unit_rows])

        vecs = np.stack([table[c] for c in names]).astype(np.float64)
        self.arrays = _vector_normalisation(vecs, len(seen), center=self.options.center_embeddings,
                                            project_to_seen=self.options.project_to_seen)
        if self.options.shared_response:  # mean over units of (unit mean - its group's control mean)
            ctrl_mean = {g: np.asarray(X[r].mean(axis=0), dtype=np.float64).ravel() for g, r in ctrl_rows.items()}
            self.arrays["mean_shift"] = np.mean(
                [means[i] - ctrl_mean[g] for i, (g, _) in enumerate(unit_keys)], axis=0).astype(np.float32)
        self.spec = {
            "n_genes": int(G),
            "dim": int(vecs.shape[1]),
            "components": names,
            "seen": seen,
            "control": control,
            "gene_names": [str(g) for g in gene_names] if gene_names is not None else None,
            "groups": sorted(ctrl_rows),
            "n_units": len(unit_keys),
        }
        self._X = X
        self._unit_of = unit_of
        self._unit_rows = unit_rows
        self._unit_group_ctrl = [ctrl_rows[g] for g, _ in unit_keys]
        self._unit_members = [
            np.array([names.index(c) for c in comp_of[p]], dtype=np.int64) for _, p in unit_keys
        ]
        self._means_np = means
        cfg = self.training_config(training)
        scale, scores, stage = self.options.unseen_scale, None, None
        if scale is None:
            scale, scores, stage = self._validated_unseen_scale(X, pert, grp, control, table, seen, comp_of, cfg)
        self.spec["unseen_scale"] = float(scale)
        if scores is not None:
            self.spec["unseen_scale_validation"] = scores
        self._rng = np.random.default_rng(cfg.seed + 1)
        try:
            self.train_module(np.flatnonzero(~is_ctrl), cfg)
        finally:
            self._clear_data()
        if stage is not None:  # the check fit's time, before the epochs (as an "epoch 0" row: no epoch)
            self.history.insert(0, stage)
        return self

    def _validated_unseen_scale(self, X: Any, pert: np.ndarray, grp: np.ndarray, control: str, table: Mapping[str, Any],
                                seen: list[str], comp_of: Mapping[str, list[str]], cfg: TrainingConfig
                                ) -> tuple[float, dict[str, Any] | None, dict[str, Any] | None]:
        """``unseen_scale`` chosen on held-out seen components (see :class:`PerturbationOptions`),
        its scores, and the history row of the check fit (its time; ``None`` when none was run)."""
        if len(seen) < MIN_COMPONENTS_TO_VALIDATE:
            return 1.0, None, None
        rng = np.random.default_rng(cfg.seed + 7)
        held = set(rng.choice(seen, max(1, round(len(seen) / 4)), replace=False).tolist())
        touches = np.array([bool(held & set(comp_of.get(p, ()))) for p in pert])
        inner = PerturbationHead(**{**self.options.model_dump(), "unseen_scale": 1.0})
        # its bar ("training <name> on <device>") says which fit it is: the user sees two bars where
        # one model was asked for (this head is scored and dropped, never saved under that name)
        inner.name = f"{self.name} check model (choosing unseen_scale)"
        what = (f"{len(held)} of the {len(seen)} seen components held out, {cfg.max_epochs} epochs")
        if progress_enabled(cfg.progress):  # (the check fit can take as long as the model itself)
            print(f"Perturbation head: choosing unseen_scale (how much to trust the vector of a component never "
                  f"seen in training) by first training a check model ({what}); then the model itself. Pass "
                  "unseen_scale= (0-1) to skip this.", file=sys.stderr, flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        keep = np.flatnonzero(~touches)
        settings = {k: v for k, v in cfg.model_dump().items() if k not in VALIDATION_SETTINGS}
        inner.fit(X[keep], perturbations=pert[keep], control=control, groups=grp[keep],
                  perturbation_embeddings=table, training=settings)
        chosen, scores = self._score_unseen_scales(inner, X, pert, grp, control, touches, held)
        stage = {"epoch": 0.0, "loss": float("nan"), "seconds": time.perf_counter() - t0,
                 "cpu_seconds": time.process_time() - c0, "stage": f"check fit for unseen_scale ({what})"}
        return chosen, scores, stage

    @staticmethod
    def _score_unseen_scales(inner: PerturbationHead, X: Any, pert: np.ndarray, grp: np.ndarray, control: str,
                             touches: np.ndarray, held: set[str]) -> tuple[float, dict[str, Any] | None]:
        """Each of ``UNSEEN_SCALES`` scored by the check fit ``inner`` on the held-out units
        (``touches``), and the one chosen by the one-standard-error rule."""
        units = sorted({(g, p) for g, p, t in zip(grp, pert, touches, strict=True) if t})
        errors = {a: [] for a in UNSEEN_SCALES}
        for g, p in units:
            ctrl = np.flatnonzero((grp == g) & (pert == control))
            if ctrl.size == 0:
                continue
            observed = np.asarray(X[np.flatnonzero((grp == g) & (pert == p))].mean(axis=0), dtype=np.float64).ravel()
            for a in UNSEEN_SCALES:
                inner.spec["unseen_scale"] = a
                with warnings.catch_warnings():  # (held out on purpose: "not trained on" is no news to the user)
                    warnings.simplefilter("ignore", ScelmoWarning)
                    errors[a].append(float(np.mean((inner.predict_mean(X[ctrl], p) - observed) ** 2)))
        if not errors[1.0]:
            return 1.0, None
        mse = {a: float(np.mean(v)) for a, v in errors.items()}
        best = min(UNSEEN_SCALES, key=lambda a: (mse[a], -a))
        # the one-standard-error rule (as glmnet's lambda.1se): the smallest scale whose error is
        # within one standard error (over the held-out units) of the best one's
        se = float(np.std(errors[best], ddof=1) / np.sqrt(len(errors[best]))) if len(errors[best]) > 1 else 0.0
        chosen = min(a for a in UNSEEN_SCALES if mse[a] <= mse[best] + se)
        return chosen, {"held_out": sorted(held), "mse": {str(a): v for a, v in mse.items()},
                        "best": best, "standard_error": se}

    def _clear_data(self) -> None:
        for attr in ("_X", "_unit_of", "_unit_rows", "_unit_group_ctrl", "_unit_members", "_means_np", "_means", "_vectors", "_seen_idx"):
            if hasattr(self, attr):
                delattr(self, attr)

    # -- TorchHead hooks ----------------------------------------------------------------------
    def build_module(self) -> Any:
        return _build_network(self.spec["n_genes"], self.spec["dim"], self.options, len(self.spec["seen"]))

    def configure_optimizer(self, params: Any, training: TrainingConfig) -> Any:
        torch = import_torch()
        return torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay)

    def _component_tensors(self, names: Sequence[str], device: Any,
                           extra: Mapping[str, np.ndarray] | None = None) -> tuple[Any, Any]:
        """Normalised vectors of ``names`` and their index among the seen components (-1: unseen);
        ``extra`` (checked by :meth:`_table_from`) gives vectors for this call only, before the head's."""
        torch = import_torch()
        index = {c: i for i, c in enumerate(self.spec["components"])}
        extra = extra or {}
        table = self.arrays["component_vectors"]
        vecs = np.stack([extra[c] if c in extra else table[index[c]] for c in names]).astype(np.float32)
        seen = {c: i for i, c in enumerate(self.spec["seen"])}
        seen_idx = np.array([seen.get(c, -1) for c in names], dtype=np.int64)
        return (torch.from_numpy(self._normalise(vecs)).to(device), torch.from_numpy(seen_idx).to(device))

    def prepare_training(self, device: Any) -> None:
        torch = import_torch()
        self._means = torch.from_numpy(self._means_np).to(device)
        self._vectors, self._seen_idx = self._component_tensors(self.spec["components"], device)
        self._offset = self._mean_shift_offset(device)

    def finish_training(self) -> None:
        self._means = self._vectors = self._seen_idx = self._offset = None

    def _mean_shift_offset(self, device: Any) -> Any:
        """The training perturbations' mean shift (genes,) on ``device``; ``None`` when the head has none
        (``shared_response=False``, or a head saved before the option existed)."""
        shift = self.arrays.get("mean_shift")
        if shift is None:
            return None
        return import_torch().from_numpy(np.asarray(shift, dtype=np.float32)).to(device)

    def training_loss(self, rows: np.ndarray) -> Any:
        torch = import_torch()
        rng = self._rng
        units, counts = np.unique(self._unit_of[rows], return_counts=True)
        m = self.options.min_cells_per_unit
        ctrl_parts, obs_parts, sizes = [], [], []
        for u, c in zip(units, counts, strict=True):
            k = max(int(c), m)
            obs = rows[self._unit_of[rows] == u]
            if obs.size < k:
                obs = np.concatenate([obs, rng.choice(self._unit_rows[u], k - obs.size)])
            ctrl_parts.append(rng.choice(self._unit_group_ctrl[u], k))
            obs_parts.append(obs)
            sizes.append(k)
        dev = self.device
        x = rows_to_tensor(self._X, np.concatenate(ctrl_parts), dev)
        latents = self.module.component_latents(self._vectors, self._seen_idx)
        p_unit = self.module.perturbation_latents(latents, [self._unit_members[u] for u in units])
        seg = torch.from_numpy(np.repeat(np.arange(len(units)), sizes)).to(dev)
        pred = self.module(x, p_unit[seg])
        if self._offset is not None:  # every training unit is perturbed
            pred = pred + self._offset
        size_t = torch.tensor(sizes, dtype=pred.dtype, device=dev)
        pred_mean = torch.zeros(len(units), pred.shape[1], dtype=pred.dtype, device=dev).index_add_(0, seg, pred) / size_t[:, None]
        target = self._means[torch.from_numpy(units).to(dev)]
        mean_loss = (pred_mean - target.to(pred.dtype)).pow(2).mean()
        loss = mean_loss
        logs = {"mean_mse": mean_loss.detach()}
        if self.options.mmd_weight > 0:
            y = rows_to_tensor(self._X, np.concatenate(obs_parts), dev)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            mmd = sum(_mmd(pred[bounds[i] : bounds[i + 1]].float(), y[bounds[i] : bounds[i + 1]])
                      for i in range(len(units))) / len(units)
            loss = loss + self.options.mmd_weight * mmd
            logs["mmd"] = mmd.detach()
        return loss, logs

    # -- prediction -----------------------------------------------------------------------------
    def _perturbation_latents(self, perts: Sequence[str], device: Any,
                              extra: Mapping[str, np.ndarray] | None = None) -> tuple[Any, np.ndarray, list[int]]:
        """Latent of each unique perturbation in ``perts``, the index of each entry, and which
        unique perturbations are not the control; ``extra``: component vectors for this call only."""
        torch = import_torch()
        sep, control = self.options.separator, self.spec["control"]
        uniq, inverse = np.unique(np.asarray(perts, dtype=str), return_inverse=True)
        comps = [split_components(p, sep=sep, control=control) for p in uniq]
        needed = sorted({c for cs in comps for c in cs})
        known = set(self.spec["components"]) | set(extra or {})
        unknown = [c for c in needed if c not in known]
        if unknown:
            raise InputError(
                f"No embedding for component(s) {unknown[:10]}; the head knows {len(self.spec['components'])} "
                "(see .components). Give their vectors for one call with predict(..., perturbation_embeddings="
                "{name: vector}), or keep them with head.add_embeddings({name: vector}) (scelmo.Model finds "
                "those of genes its gene table has by itself)."
            )
        out = torch.zeros(len(uniq), self.options.latent, device=device)
        perturbed = [i for i, cs in enumerate(comps) if cs]  # the control stays at zero: no change
        if perturbed:
            vecs, seen_idx = self._component_tensors(needed, device, extra)
            latents = self.module.component_latents(vecs, seen_idx).float()
            scale = float(self.spec.get("unseen_scale", 1.0))
            unseen = [c for c, i in zip(needed, seen_idx.tolist(), strict=True) if i < 0]
            if unseen and scale == 0.0:
                warnings.warn(
                    f"{', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''} {'was' if len(unseen) == 1 else 'were'} not trained on, and the head's "
                    "unseen_scale is 0 (chosen on held-out training components: their gene vectors did not beat the "
                    "mean shift), so each is predicted as the mean shift of the training perturbations, all alike. "
                    "Train with more perturbations, or set unseen_scale (0-1) to use the vectors anyway.",
                    ScelmoWarning, stacklevel=4)
            if scale != 1.0:  # components never trained on: their vector-derived latent, turned down
                latents = latents * torch.where(seen_idx >= 0, 1.0, scale)[:, None]
            pos = {c: i for i, c in enumerate(needed)}
            members = [torch.tensor([pos[c] for c in comps[i]], dtype=torch.long, device=device) for i in perturbed]
            out[torch.tensor(perturbed, dtype=torch.long, device=device)] = self.module.perturbation_latents(latents, members)
        return out, inverse, perturbed

    def predict(
        self,
        X: Any,
        perturbations: str | Sequence[str] | None = None,
        *,
        gene_vectors: np.ndarray | None = None,
        gene_names: Sequence[str] | None = None,
        device: Any = None,
        perturbation_embeddings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Same as :meth:`predict_expression` (``gene_vectors`` and ``gene_names`` are not used;
        ``perturbation=`` and ``embeddings=`` are deprecated names of ``perturbations=`` and
        ``perturbation_embeddings=``)."""
        perturbations = renamed_keyword(kwargs, "perturbation", "perturbations", perturbations,
                                        "PerturbationHead.predict")
        perturbation_embeddings = renamed_keyword(kwargs, "embeddings", "perturbation_embeddings",
                                                  perturbation_embeddings, "PerturbationHead.predict")
        if kwargs:
            raise InputError(f"Unknown argument(s) for PerturbationHead.predict: {sorted(kwargs)}.")
        return self.predict_expression(X, perturbations, device=device, perturbation_embeddings=perturbation_embeddings)

    def predict_expression(
        self,
        X: Any,
        perturbations: str | Sequence[str] | None,
        *,
        device: Any = None,
        perturbation_embeddings: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Predicted log-normalised expression of each control cell of ``X`` under ``perturbations``.

        Parameters
        ----------
        X
            Control cells x the training genes (same order), log-normalised.
        perturbations
            One name for all cells (``"KLF1"``, ``"KLF1+CEBPA"``, ``"IFN-beta"``) or one per cell.
            Components need a vector: seen in training, in the fit-time
            ``perturbation_embeddings`` or :meth:`add_embeddings`, or given now in
            ``perturbation_embeddings``.
        perturbation_embeddings
            ``{component: vector}`` for this call only (the head keeps no new component;
            :meth:`add_embeddings` keeps them); a component the head has is predicted
            from the vector given here.

        Returns
        -------
        Dense float32 array, cells x genes.
        """
        self._require_fitted()
        if perturbations is None:
            raise InputError("Say which perturbation to predict: predict(X_control, 'KLF1+CEBPA').")
        X = self._check_matrix(X)
        if X.shape[1] != self.spec["n_genes"]:
            raise InputError(
                f"X has {X.shape[1]} genes but the head was trained on {self.spec['n_genes']}; "
                "subset X to the training genes, in the same order."
            )
        perts = ([str(perturbations)] * X.shape[0] if isinstance(perturbations, str)
                 else [str(p) for p in perturbations])
        if len(perts) != X.shape[0]:
            raise InputError(f"X has {X.shape[0]} cells but {len(perts)} perturbation names.")
        extra = (self._table_from(list(perturbation_embeddings), perturbation_embeddings, None, None)
                 if perturbation_embeddings else None)  # checked, but not kept: predicting changes nothing
        out = np.empty(X.shape, dtype=np.float32)
        torch = import_torch()
        with self.inference(device) as dev:
            P, inverse, perturbed_rows = self._perturbation_latents(perts, dev, extra)
            offset = self._mean_shift_offset(dev)
            if offset is not None:  # the mean shift for perturbed cells, none for control cells
                perturbed = torch.zeros(P.shape[0], dtype=torch.float32, device=dev)
                perturbed[perturbed_rows] = 1.0
            bs = self.options.eval_batch_size
            for s in range(0, X.shape[0], bs):
                rows = slice(s, min(s + bs, X.shape[0]))
                idx = torch.from_numpy(inverse[rows]).to(dev)
                pred = self.module(rows_to_tensor(X, rows, dev), P[idx]).float()
                if offset is not None:
                    pred = pred + perturbed[idx][:, None] * offset
                if self.options.clip:
                    pred = pred.clamp(min=0)
                out[rows] = pred.cpu().numpy()
        return out

    def transform(self, X: Any, *, gene_vectors: np.ndarray | None = None, gene_names: Sequence[str] | None = None,
                  device: Any = None) -> np.ndarray:
        """The encoder's cell-state latent of each cell (cells x ``latent``; needs ``cell_state=True``).

        ``X`` has the training genes in training order; ``gene_vectors`` and ``gene_names``
        (passed by :class:`scelmo.Model`) are not used.
        """
        self._require_fitted()
        if not self.options.cell_state:
            raise InputError("This head was trained with cell_state=False and has no cell-state encoder.")
        X = self._check_matrix(X)
        if X.shape[1] != self.spec["n_genes"]:
            raise InputError(f"X has {X.shape[1]} genes but the head was trained on {self.spec['n_genes']}.")
        out = np.empty((X.shape[0], self.options.latent), dtype=np.float32)
        with self.inference(device) as dev:
            bs = self.options.eval_batch_size
            for s in range(0, X.shape[0], bs):
                rows = slice(s, min(s + bs, X.shape[0]))
                out[rows] = self.module.encoder(rows_to_tensor(X, rows, dev)).float().cpu().numpy()
        return out

    def predict_mean(self, X: Any, perturbation: str, *, device: Any = None,
                     perturbation_embeddings: Mapping[str, Any] | None = None, **kwargs: Any) -> np.ndarray:
        """Mean predicted expression (one value per gene) of the control cells ``X`` under ``perturbation``
        (``embeddings=`` is the deprecated name of ``perturbation_embeddings=``)."""
        perturbation_embeddings = renamed_keyword(kwargs, "embeddings", "perturbation_embeddings",
                                                  perturbation_embeddings, "PerturbationHead.predict_mean")
        if kwargs:
            raise InputError(f"Unknown argument(s) for PerturbationHead.predict_mean: {sorted(kwargs)}.")
        if not isinstance(perturbation, str):
            raise InputError("predict_mean takes one perturbation name; call it once per perturbation.")
        pred = self.predict_expression(X, perturbation, device=device, perturbation_embeddings=perturbation_embeddings)
        return pred.mean(axis=0, dtype=np.float64)

    def perturbation_embedding(self, perturbation: str) -> np.ndarray:
        """The learned latent of a perturbation (sum of its components' latents; the mean shift is added
        to the expression, not to this latent)."""
        with self.inference():
            P, _, _ = self._perturbation_latents([perturbation], self.device)
        return P[0].cpu().numpy()



def predict_held_out_targets(
    X: Any,
    perturbations: Sequence[Any],
    vectors: Mapping[str, Any],
    *,
    held_out: Sequence[str],
    control: str = "ctrl",
    X_control: Any = None,
    options: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], PerturbationHead]:
    """Train a head without the ``held_out`` targets and predict their mean expression from their vectors.

    The evaluation protocol for unseen genetic perturbations: every cell whose
    perturbation has a held-out component is left out of training, the head learns from
    the remaining perturbations (with the vectors of their components only), and each
    held-out target is predicted from the control cells and its own vector alone. Real,
    shuffled and random gene tables go through this same function, so a control differs
    from the real run only in the vectors.

    Parameters
    ----------
    X
        Cells x genes, log-normalised (all cells: controls, training and held-out targets).
    perturbations
        Perturbation of each cell, one per row of ``X`` (``control`` for control cells).
    vectors
        ``{component: vector}`` for at least every component of every perturbation.
    held_out
        Perturbations to hold out and predict.
    control
        Name of the control condition.
    X_control
        Control cells to predict from (default: the control cells of ``X``).
    options, training
        :class:`PerturbationOptions` and :class:`~scelmo_torch.base.TrainingConfig` settings.

    Returns
    -------
    ``({held-out perturbation: predicted mean expression (genes,)}, the fitted head)``;
    the head keeps the held-out components' vectors.

    Raises
    ------
    InputError
        When ``perturbations`` and ``X`` differ in length, no cell is ``control`` (the
        likely control names are suggested), a held-out perturbation has no cells, or a
        component has no vector.
    """
    head = PerturbationHead(**dict(options or {}))
    sep = head.options.separator
    X = head._check_matrix(X)
    pert, _ = _cell_labels(X.shape[0], perturbations, None)  # one label per row of X, or an error
    _control_cells(pert, control, sep)  # a wrong control= is named as such (not as a component without vector)
    held = [str(h) for h in held_out]
    if not held:
        raise InputError("Name at least one perturbation to hold out (held_out=[...]).")
    absent = [h for h in held if not (pert == h).any()]
    if absent:
        raise InputError(f"Held-out perturbation(s) {absent[:10]} have no cells in the data.")
    held_comps = {c for h in held for c in split_components(h, sep=sep, control=control)}
    if not held_comps:
        raise InputError(f"The held-out names {held[:5]} have no components (is one of them the control {control!r}?).")
    comps = {p: split_components(p, sep=sep, control=control) for p in np.unique(pert)}
    train = np.array([not (set(comps[p]) & held_comps) for p in pert])
    train_comps = sorted({c for p in np.unique(pert[train]) for c in comps[p]})
    missing = [c for c in sorted(held_comps | set(train_comps)) if c not in vectors]
    if missing:
        raise InputError(f"No vector for component(s) {missing[:10]}; give every component a vector.")
    head.fit(X[np.flatnonzero(train)], perturbations=pert[train], control=control,
             perturbation_embeddings={c: vectors[c] for c in train_comps}, training=dict(training or {}))
    if X_control is None:
        X_control = X[np.flatnonzero(pert == control)]
    head.add_embeddings({c: vectors[c] for c in held_comps})  # the returned head predicts them too
    return {h: head.predict_mean(X_control, h) for h in held}, head


def _control_cells(pert: np.ndarray, control: str, sep: str) -> np.ndarray:
    """Which cells are control cells; an error naming likely control names when none or all are."""
    is_ctrl = np.array([not split_components(p, sep=sep, control=control) for p in pert])
    if not is_ctrl.any():
        found = sorted({str(p) for p in pert})
        likely = [p for p in found if re.search(r"ctrl|control|non-?target|^nt$|scrambl|safe|dmso|vehicle|unstim",
                                               p, re.IGNORECASE)]
        raise InputError(
            f"No control cells: no cell has perturbation {control!r}. Pass control= with the name of the "
            f"control condition (the head option, e.g. --option control=NAME)"
            + (f"; likely: {', '.join(repr(p) for p in likely[:3])}" if likely else "")
            + f". Found {len(found)} names: {', '.join(found[:10])}{', ...' if len(found) > 10 else ''}."
        )
    if is_ctrl.all():
        raise InputError("Every cell is a control cell; the data needs perturbed cells to learn from.")
    return is_ctrl


def _missing(values: Any) -> np.ndarray:
    """Which of ``values`` (an object array) are missing: NaN, NA or None."""
    import pandas as pd

    return np.asarray(pd.isna(values) | (values == None), dtype=bool)  # noqa: E711 - elementwise


def _groups_of(labels: Sequence[Any] | None) -> Sequence[Any] | None:
    """The cell groups from :class:`scelmo.Model`'s ``labels_key`` values: ``None`` (one group) when
    every one is missing, as the Model warns ("trains without labels")."""
    if labels is None:
        return None
    return None if bool(_missing(np.asarray(labels, dtype=object)).all()) else labels


def _warn_unused_settings(training: Any) -> None:
    """Say which given training settings this head does not use (validation and early stopping:
    it has no validation score); ``early_stopping=False`` and ``validation_fraction=0`` are what it
    does anyway."""
    given = (training.model_dump(exclude_unset=True) if hasattr(training, "model_dump") else dict(training or {}))
    unused = [k for k in VALIDATION_SETTINGS if given.get(k) is not None
              and not (k == "early_stopping" and given[k] is False)
              and not (k == "validation_fraction" and given[k] == 0)]
    if unused:
        warnings.warn(
            f"The perturbation head does not use {', '.join(f'{k}={given[k]!r}' for k in unused)}: it has no "
            "validation score, so it neither validates on held-out cells nor stops early, and trains max_epochs "
            "epochs (set max_epochs to train shorter). Leave these settings out.", ScelmoWarning, stacklevel=3)


def _cell_labels(n: int, perturbations: Sequence[Any], groups: Sequence[Any] | None, *,
                 fix: str = HEAD_GROUPS_FIX) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's perturbation and group as strings, checked: one per cell, none missing (``fix``:
    the way out named for missing groups, the bare head's or a Model user's)."""
    pert = np.asarray(perturbations, dtype=object)
    if len(pert) != n:
        raise InputError(f"X has {n} cells but {len(pert)} perturbation labels; give one per cell.")
    if _missing(pert).any():
        raise InputError("Some cells have no perturbation label (missing); label them or drop them first.")
    grp = np.full(n, "all") if groups is None else np.asarray(groups, dtype=object)
    if len(grp) != n:
        raise InputError(f"X has {n} cells but {len(grp)} group labels; give one per cell.")
    no_group = _missing(grp)
    if groups is not None and no_group.any():
        raise InputError(f"{int(no_group.sum())} of {n} cells have no cell group (a missing label); label them "
                         f"or drop those cells, {fix}.")
    return pert.astype(str), grp.astype(str)


def _units(grp: np.ndarray, pert: np.ndarray, is_ctrl: np.ndarray, *, fix: str = HEAD_GROUPS_FIX
           ) -> tuple[list[tuple[str, str]], np.ndarray, list[np.ndarray], dict[str, np.ndarray]]:
    """Training units: (group, perturbation) pairs with perturbed cells, each learned against the
    control cells of its group. Returns the units, each cell's unit (-1: control), each unit's
    rows and each group's control rows. ``fix``: the way out named when a group has no control
    cells (the bare head's or a Model user's)."""
    # (plain str: numpy's str_ printed as np.str_('...') in the messages)
    ctrl_rows = {str(g): np.flatnonzero(is_ctrl & (grp == g)) for g in np.unique(grp)}
    unit_keys = sorted({(str(g), str(p)) for g, p, c in zip(grp, pert, is_ctrl, strict=True) if not c})
    no_ctrl = sorted({g for g, _ in unit_keys if ctrl_rows[g].size == 0})
    if no_ctrl:
        raise InputError(
            f"Group(s) {', '.join(no_ctrl[:10])}{', ...' if len(no_ctrl) > 10 else ''} have perturbed cells but "
            f"no control cells, so their response cannot be learned. Drop those cells or use coarser groups, {fix}."
        )
    unit_index = {k: i for i, k in enumerate(unit_keys)}
    unit_of = np.full(len(pert), -1, dtype=np.int64)
    for i in np.flatnonzero(~is_ctrl):
        unit_of[i] = unit_index[(grp[i], pert[i])]
    unit_rows = [np.flatnonzero(unit_of == u) for u in range(len(unit_keys))]
    return unit_keys, unit_of, unit_rows, ctrl_rows


def _vector_normalisation(vecs: np.ndarray, n_seen: int, *, center: bool, project_to_seen: bool
                          ) -> dict[str, np.ndarray]:
    """How perturbation vectors enter the network, fitted on the training components: unit length,
    centred (with two or more components), scaled to mean norm 1, and optionally the basis of the
    seen components' span (``project_to_seen``)."""
    v = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    mid = v.mean(axis=0) if (center and len(vecs) >= 2) else np.zeros(v.shape[1])
    scale = 1.0 / max(float(np.linalg.norm(v - mid, axis=1).mean()), 1e-6)
    arrays = {
        "component_vectors": vecs.astype(np.float32),
        "center": mid.astype(np.float32),
        "scale": np.asarray(scale, dtype=np.float32),
    }
    if project_to_seen:
        _, sv, vt = np.linalg.svd((v[:n_seen] - mid) * scale, full_matrices=False)
        keep = sv > 1e-6 * max(float(sv.max()), 1e-12)
        arrays["seen_basis"] = vt[keep].astype(np.float32)
    return arrays
