"""``scelmo.Model``: fine-tuned models on LLM gene embeddings, scvi-tools style.

::

    import scelmo
    scelmo.tl.embed_genes(adata)                               # gene vectors -> adata.varm["scelmo"]
    scelmo.Model.setup_anndata(adata, labels_key="cell_type")  # which obs columns / layer to use
    model = scelmo.Model(adata, head="annotation")             # a head from the plugin registry
    model.train(max_epochs=30)                                  # CUDA > MPS > CPU, seeded
    adata.obsm["X_scelmo_finetuned"] = model.get_latent_representation()
    labels = model.predict(query, method="knn")                 # query may have other genes
    model.save("my_model")                                      # weights, genes, labels, config
    model = scelmo.Model.load("my_model", adata=query)

The network lives in a *task head* looked up by name in :data:`scelmo.plugin.heads`
(``"annotation"`` and ``"integration"`` come from the ``scelmo_torch`` plugin), so a
third-party head plugs in the same way. This module imports no torch; the head does.

The head contract (every method and attribute :class:`Model` uses, with the same
argument names in every head: ``X``, ``gene_vectors``, ``gene_names``, ``labels``,
``batch``, ``perturbations``, ``device``, ``training``) is :class:`scelmo.plugin.TaskHead`;
``Model`` checks a head's declared ``capabilities`` (``"latent"``, ``"labels"``, ``"knn"``,
``"perturbation"``) before using the optional parts.

Nothing is written into ``adata`` except what is asked for (``key_added=``), the
gene vectors when ``Model(adata)`` has to embed them (``varm["scelmo"]``, as
:func:`scelmo.tl.embed_genes`), provenance in ``adata.uns["scelmo"]`` and the setup of
:meth:`setup_anndata`: an scvi-style registry in ``adata.uns["scelmo_setup"]``
(strings only), so ``adata.copy()`` and an ``.h5ad`` round trip keep it. A query bound
by :meth:`Model.load` is registered in memory only, keyed by the object.
"""

from __future__ import annotations

import copy
import inspect
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scelmo import keys, provenance, tl
from scelmo import plugin as plugins
from scelmo.conditioning import Conditioning
from scelmo.errors import InputError, ScelmoError, ScelmoWarning
from scelmo.expression.matrix import iter_row_chunks, select_matrix
from scelmo.expression.selection import normalize_chunk, should_normalize
from scelmo.genes import GeneEmbeddings
from scelmo.knowledge import roles
from scelmo.model._save_load import read_model, save_model
from scelmo.model._setup import AnnDataSetup, _remember, _setup_of, _setup_to_uns
from scelmo.perturbation import another_name_note, component_gene_vectors, components


def obs_column(adata: Any, key: str | None, *, unlabeled: str | None = None) -> np.ndarray | None:
    """``adata.obs[key]`` as a head gets it (:meth:`scelmo.plugin.TaskHead.fit`, ``check_inputs``):
    text, missing values (and values equal to ``unlabeled``) as ``None``; ``None`` without a key."""
    if key is None:
        return None
    arr = adata.obs[key].astype(object).to_numpy()
    # (pd.isna: None, float NaN, pd.NA of a "string" column and NaT; str(pd.NA) is "<NA>", which
    # became a class or batch of its own)
    missing = np.asarray(pd.isna(arr), dtype=bool)
    out = np.full(len(arr), None, dtype=object)
    out[~missing] = [str(v) for v in arr[~missing]]
    if unlabeled is not None:
        out[out == unlabeled] = None
    return out


def _as_label(adata: Any, key: str, value: Any) -> str:
    """``value`` spelled as ``obs_column`` writes the labels of ``adata.obs[key]`` (R's -1 is the
    double -1.0; a label column of integers writes "-1"), warning when no cell has it."""
    spellings = [str(value)]
    if isinstance(value, float) and value.is_integer():
        spellings.append(str(int(value)))
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        spellings.append(str(float(value)))
    present = {v for v in obs_column(adata, key) if v is not None}
    hit = next((v for v in spellings if v in present), None)
    if hit is None:
        warnings.warn(
            f"No cell of adata.obs[{key!r}] has the value unlabeled_category={value!r} (values: "
            f"{', '.join(sorted(present)[:8])}); check its spelling.", ScelmoWarning, stacklevel=3)
        return spellings[0]
    return hit


class Model:
    """A fine-tuned model on LLM gene embeddings (see the module docstring).

    Parameters
    ----------
    adata
        Training data, registered with :meth:`setup_anndata`. Gene vectors come from
        ``adata.varm["scelmo"]`` (computed now with :func:`scelmo.tl.embed_genes` when
        missing) unless ``gene_embeddings`` is given.
    head
        Name of a registered task head: ``"annotation"`` (cell types; needs
        ``labels_key``), ``"integration"`` (batch removal; needs ``batch_key``) or
        ``"perturbation"`` (responses to perturbations; needs ``perturbation_key`` and
        the head option ``control=``).
    gene_embeddings
        A :class:`~scelmo.genes.GeneEmbeddings` (or a directory saved from one) to use
        instead of ``adata.varm["scelmo"]``. When neither is there, the genes are
        embedded now with :func:`scelmo.tl.embed_genes` and ``config`` (which writes
        ``adata.varm["scelmo"]``), as ``scelmo train`` does.
    config
        Settings (or a mapping of overrides) for embedding the genes when needed.
    **head_options
        Options of the head (e.g. ``knn_k=15``, ``triplet_weight=1.0``); unknown
        options are errors listing the allowed ones.
    """

    def __init__(self, adata: Any, head: str = "annotation", *, gene_embeddings: GeneEmbeddings | str | None = None,
                 config: Any = None, **head_options: Any) -> None:
        setup = _setup_of(adata)
        if setup is None:
            raise InputError(
                "This AnnData is not registered. Call `scelmo.Model.setup_anndata(adata, labels_key=..., "
                "batch_key=...)` first."
            )
        self.setup = setup
        self.head_name = head
        self.head = plugins.heads.create(head, **head_options)
        for needed, key, what in (("requires_labels", "labels_key", "labels"), ("requires_batch", "batch_key", "batches"),
                                  ("requires_perturbations", "perturbation_key", "each cell's perturbation")):
            given = getattr(setup, key) or (setup.batch_key if key == "perturbation_key" else None)  # (documented fallback)
            if getattr(self.head, needed, False) and given is None:
                raise InputError(f"The {head!r} head needs {what}: call `Model.setup_anndata(adata, {key}=...)`.")
        self.adata = adata
        labels = self._obs(setup.labels_key)
        if labels is not None and not self.head.requires_labels and all(v is None for v in labels):
            warnings.warn(
                f"No cell has a label in adata.obs[{setup.labels_key!r}] (all missing"
                + (f" or {setup.unlabeled_category!r}" if setup.unlabeled_category is not None else "")
                + f"): the {head!r} head trains without labels.", ScelmoWarning, stacklevel=2)
        # the head's own checks of the obs columns, before the genes are embedded (minutes)
        self.head.check_inputs(labels=labels, batch=self._obs(setup.batch_key),
                               perturbations=self._obs(setup.perturbation_key))
        self.gene_table = self._gene_table(adata, gene_embeddings, config)
        self._config = config
        if self.head.supports("perturbation"):
            self.head = self._with_component_vectors(head, head_options)
        self.is_trained = False
        self._training_data: Any = None  # the AnnData train() read (None for a loaded model)
        self.train_info: dict[str, Any] = {}
        self.train_genes: list[str] = []

    def _with_component_vectors(self, head: str, head_options: dict[str, Any]) -> Any:
        """The perturbation head made again with vectors for the training perturbations' gene
        components that were given none: from the gene table, or embedded now (a knocked-out
        gene is often not measured), as ``scelmo train`` does. A head that takes no
        ``perturbation_embeddings`` finds its own."""
        options = getattr(self.head, "options", None)
        if options is None or "perturbation_embeddings" not in inspect.signature(type(self.head)).parameters:
            return self.head
        pert = self._obs(self.setup.perturbation_key or self.setup.batch_key)
        if pert is None:
            return self.head
        sep, control = str(getattr(options, "separator", "+")), getattr(options, "control", None)
        given = {str(k): v for k, v in (head_options.get("perturbation_embeddings") or {}).items()}
        wanted = sorted({c for p in set(pert) if p is not None for c in components(str(p), sep=sep, control=control)}
                        - set(given))
        if not wanted:
            return self.head
        found, _ = component_gene_vectors(wanted, self.gene_table, config=self._config, progress=None)
        unknown = [c for c in wanted if c not in found]
        if unknown:
            raise InputError(
                f"No vector for perturbation component(s) {unknown[:10]}: they are not genes the configured knowledge "
                f"knows. Check the spelling and the control name (control={control!r}); a drug or a stimulus needs a "
                "vector from its description: scelmo.Model(..., perturbation_embeddings="
                "scelmo.perturbation.text_perturbation_embeddings({name: description})).")
        note = another_name_note(list(found), self.gene_table)
        if note:
            warnings.warn(note + ": perturbation_embeddings=scelmo.perturbation.text_perturbation_embeddings({name: "
                          "description}).", ScelmoWarning, stacklevel=3)
        return plugins.heads.create(head, **{**head_options, "perturbation_embeddings": {**found, **given}})

    # -- setup ----------------------------------------------------------------------------
    @classmethod
    def setup_anndata(cls, adata: Any, *, labels_key: str | None = None, batch_key: str | None = None,
                      layer: str | None = None, use_raw: bool | None = None,
                      perturbation_key: str | None = None, unlabeled_category: str | None = None) -> None:
        """Register which ``obs`` columns and which expression matrix a model uses.

        Parameters
        ----------
        adata
            The AnnData to register (training data, or query data to predict on).
        labels_key
            ``obs`` column of cell types (annotation; optional for integration: cells
            with a missing label are used unsupervised).
        batch_key
            ``obs`` column of batches (integration).
        layer, use_raw
            The expression values: ``adata.layers[layer]``, ``adata.raw.X`` or
            ``adata.X`` (``use_raw=None``: raw when present, as scanpy). Values must be
            finite and non-negative; log-normalised expression is recommended.
        perturbation_key
            ``obs`` column naming each cell's perturbation (perturbation head), e.g.
            ``"condition"`` with values ``"ctrl"``, ``"KLF1"``, ``"KLF1+CEBPA"``;
            ``labels_key`` then names the cell groups (cell types) responses may depend on.
        unlabeled_category
            A value of ``labels_key`` that means "no label" (scvi-tools' convention, e.g.
            ``"Unknown"``): such cells count as unlabelled, like missing values (NaN,
            ``None``, ``pd.NA``), instead of as a class of their own.

        The setup is written to ``adata.uns["scelmo_setup"]`` (strings only, like scvi-tools'
        registry), so ``adata.copy()``, slices and ``.h5ad`` files keep it.
        """
        for key, what in ((labels_key, "labels_key"), (batch_key, "batch_key"),
                          (perturbation_key, "perturbation_key")):
            if key is not None and key not in adata.obs:
                raise InputError(f"{what}={key!r} is not a column of adata.obs (columns: {', '.join(map(str, adata.obs.columns[:20]))}).")
        if layer is not None and layer not in adata.layers:
            raise InputError(f"Layer {layer!r} not found in adata.layers (available: {', '.join(adata.layers) or 'none'}).")
        if unlabeled_category is not None and labels_key is None:
            raise InputError("unlabeled_category= needs labels_key= (the column it is a value of).")
        setup = AnnDataSetup(labels_key, batch_key, layer, use_raw, perturbation_key,
                             None if unlabeled_category is None else _as_label(adata, labels_key, unlabeled_category))
        adata.uns[keys.SETUP] = _setup_to_uns(setup)
        _remember(adata, setup)

    @staticmethod
    def _gene_table(adata: Any, gene_embeddings: GeneEmbeddings | str | None, config: Any = None) -> GeneEmbeddings:
        if isinstance(gene_embeddings, str | Path):
            gene_embeddings = GeneEmbeddings.load(gene_embeddings)
        if gene_embeddings is not None:
            return gene_embeddings
        table = _table_from_varm(adata)
        if table is None:  # embed the genes now, with the configured roles (as `scelmo train`)

            tl.embed_genes(adata, config=config)
            table = _table_from_varm(adata)
        if table is None or len(table) == 0:  # pragma: no cover - embed_genes raises first
            raise InputError(
                f"adata.varm[{keys.GENE_EMBEDDING!r}] has no gene vectors: check var_names "
                "(or pass `gene_embeddings=`)."
            )
        return table

    # -- data -----------------------------------------------------------------------------
    def get_expression(self, adata: Any | None = None) -> tuple[Any, list[str], np.ndarray]:
        """The checked expression matrix, its gene names and the aligned gene vectors.

        Uses the layer / raw choice of :meth:`setup_anndata` (the model's own, for a
        query that was not set up). Raw counts are log-normalised (library size 10,000,
        then ``log1p``, as :func:`scelmo.tl.embed_cells` does), so a model applies to counts
        and log-normalised data alike. When the model was trained on counts, a query's
        library sizes are its counts over the genes the model was trained on, as the
        training cells' were. Genes are matched to the model's gene table by
        ``var["scelmo_symbol"]``, else by the symbol the gene vocabulary resolves the name
        to (aliases such as IGJ, Ensembl IDs), else the name; genes the table lacks take
        the query's own ``varm["scelmo"]`` vectors when present. The vectors are the
        table's conditioned ones (:mod:`scelmo.conditioning`), as in
        :func:`scelmo.tl.embed_cells`. Sparse input stays sparse.
        """
        X, names, E, _ = self.head_expression(adata)
        return X, names, E

    def head_expression(self, adata: Any | None = None, *, normalize: bool = True,
                        ) -> tuple[Any, list[str], np.ndarray, list[str]]:
        """:meth:`get_expression` and the name the head knows each gene by: the resolved
        symbol (so "IGJ" in a query is the model's JCHAIN), or the name itself where the
        model was trained on it. ``normalize=False``: counts stay counts (the caller
        normalises them over the genes it keeps)."""
        adata = self.adata if adata is None else adata
        if adata is None:
            raise InputError("This model is bound to no AnnData; pass `adata=` (e.g. the query cells).")
        setup = _setup_of(adata) or self.setup
        if setup.layer is not None and setup.layer not in adata.layers:
            raise InputError(
                f"The expression is registered as layer {setup.layer!r} (the training data's), which this data lacks "
                f"(layers: {', '.join(adata.layers) or 'none'}). Register this data's own: "
                "`scelmo.Model.setup_anndata(adata, layer=None)` for X (or the layer that holds it); on the command "
                "line `scelmo predict --layer NAME` (`--layer X` for X)."
            )
        matrix, var_names, _ = select_matrix(adata, layer=setup.layer, use_raw=setup.use_raw)
        names = [str(v) for v in var_names]
        if len(names) == 0 or adata.n_obs == 0:
            raise InputError(f"The data has {adata.n_obs} cells and {len(names)} genes; nothing to do.")
        fix = ("Register the counts or log-normalised values: `scelmo.Model.setup_anndata(adata, layer=\"counts\")` "
               "(or `use_raw=True`); on the command line `--layer counts`.")
        chunks = [c for _, c in iter_row_chunks(matrix, 20_000, fix=fix)]
        X = sp.vstack(chunks, format="csr") if sp.issparse(chunks[0]) else np.vstack(chunks)
        counts = normalize and should_normalize("auto", X)  # counts: log-normalised, as tl.embed_cells does
        self._read_counts = counts  # (train records it: a query is then scaled over the same genes)
        lookup = _lookup_names(adata, names)
        if keys.GENE_SYMBOL not in adata.var:  # aliases and Ensembl IDs: the vocabulary's symbol
            vocab = roles.vocabulary()
            if vocab is not None:
                resolved = vocab.resolve(names).symbols
                lookup = self.gene_table.keys_for(names, resolved)
        # conditioned vectors (mean and top directions removed, fitted once per table), as tl.embed_cells
        E, mask = self.gene_table.aligned(lookup, conditioned=True)
        own = _table_from_varm(adata)
        if own is not None and own.dim == E.shape[1] and not mask.all():
            extra, extra_mask = own.aligned(lookup, conditioned=True)
            fill = ~mask & extra_mask
            E[fill] = extra[fill]
            mask |= fill
        if not mask.any():
            raise InputError(
                "None of the data's genes has a gene vector in this model's gene table. Run "
                "`scelmo.tl.embed_genes(adata)` on it (same embedder as for training) or check var_names."
            )
        trained = set(self.train_genes)
        present = set(names)
        head_names: list[str] = []
        taken: set[str] = set()
        for n, key in zip(names, lookup, strict=True):
            key = n if (n in trained or not key) else key
            # a column whose name is the gene's symbol keeps it, whatever the column order: an
            # alias column beside it (C10orf12 beside LCOR) keeps its own name (the order used
            # to decide which, and so the head's selection and latent)
            key = n if (key != n and key in present) else key
            key = n if key in taken else key  # (a second column of one gene keeps its own name)
            taken.add(key)
            head_names.append(key)
        if counts:
            X = normalize_chunk(X, totals=self._library_sizes(X, head_names, adata))
        if self.train_genes and adata is not self._training_data and getattr(self, "_warned_missing", None) != id(adata):
            # (genes without a vector carry no weight: only those with one count)
            have = set(head_names)
            # the genes the head reads (its selection, e.g. 2,000 variable genes; a trial's query
            # lacked 96% of them unwarned, counted against all 20,125 training genes)
            used = self.head.genes_used
            weighed = [g for g in (self.train_genes if used is None else used) if g in self.gene_table]
            missing = [g for g in weighed if g not in have]
            if len(missing) > 0.1 * len(weighed):
                self._warned_missing = id(adata)  # once per query, however many calls read it
                warnings.warn(
                    f"{len(missing)} of the {len(weighed)} genes the model weighs are not in the data (e.g. "
                    f"{', '.join(missing[:5])}); they count as not expressed, which may change predictions. Check "
                    "that var_names are gene symbols or Ensembl IDs of the same species as the training data.",
                    ScelmoWarning, stacklevel=3)
        return X, names, E, head_names

    def _library_sizes(self, X: Any, head_names: list[str], adata: Any) -> np.ndarray | None:
        """Each query cell's counts over the genes the model was trained on (``None``: the row sums).

        When the model read counts in training, the training cells were normalised over the
        training data's genes, so a query is normalised over the same genes (those it has):
        genes the model never saw would otherwise change its library sizes (as in the R
        wrapper's ``PredictScELMo``). A model trained on log-normalised values (normalised
        by the user over whatever genes they had) scales a counts query over all its genes,
        as ``sc.pp.normalize_total`` would.
        """
        if adata is self._training_data or not self.train_genes or not self.train_info.get("normalized_counts"):
            return None
        trained = set(self.train_genes)
        known = np.fromiter((n in trained for n in head_names), dtype=bool, count=len(head_names))
        if known.all() or not known.any():
            return None
        return np.asarray(X[:, np.flatnonzero(known)].sum(axis=1, dtype=np.float64)).ravel()

    def _obs(self, key: str | None) -> np.ndarray | None:
        if key is None:
            return None
        if key not in self.adata.obs:
            role = next((f for f in ("labels_key", "batch_key", "perturbation_key") if getattr(self.setup, f) == key), "key")
            raise InputError(
                f"adata.obs has no column {key!r}, registered as {role} by setup_anndata; was it removed or renamed? "
                f"Register the current columns again: `scelmo.Model.setup_anndata(adata, {role}=...)`, then build the Model."
            )
        return obs_column(self.adata, key, unlabeled=self.setup.unlabeled_category if key == self.setup.labels_key else None)

    # -- training -------------------------------------------------------------------------
    def train(self, max_epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
              early_stopping: bool | None = None, device: str = "auto", seed: int = 0, *,
              num_threads: int | None = None, progress: bool | None = None, **training: Any) -> Model:
        """Train the head on the registered AnnData.

        Parameters
        ----------
        max_epochs, batch_size, lr, early_stopping
            Training settings; ``None`` keeps the head's default (annotation: at most 30
            epochs, batch 128, lr 1e-3, a validation check every 2 epochs including the
            untrained zero-shot start, the best epoch kept, stop after 5 checks without
            improvement beyond a noise margin of 1 / validation cells; see docs/finetuning.md).
            The perturbation head has no validation score: it trains ``max_epochs`` epochs
            (default 60, batch 256, lr 1e-3), so ``early_stopping=True`` and the validation
            settings below are not used there (a :class:`~scelmo.errors.ScelmoWarning` says
            so). With ``unseen_scale=None`` and at least 5 seen components it first fits a
            second model with a quarter of them held out, to choose ``unseen_scale``: that
            fit has its own progress bar and is the history's ``epoch`` 0 row (``stage``,
            ``seconds``); see docs/perturbation.md.
        device
            ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        seed
            Seeds every random choice (split, batches, initial weights).
        num_threads
            torch CPU threads (default 1 on CPU, which was 3-5x faster on 2 cores).
        progress
            Show a progress bar (default: on a terminal or in a notebook).
        **training
            Further settings of the head (e.g. ``check_every``, ``patience``,
            ``validation_fraction``, ``weight_decay``, ``amp``). ``check_every``,
            ``patience``, ``tolerance`` and ``validation_fraction`` steer validation and
            early stopping: heads without a validation score (perturbation) warn that they
            do not use them.
        """

        X, _, E, names = self.head_expression()
        read_counts = self._read_counts
        self._training_data = self.adata  # (a query is scaled and checked as a query, even when bound to the model)
        settings = {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, "early_stopping": early_stopping,
                    "device": device, "seed": seed, "num_threads": num_threads, "progress": progress, **training}
        settings = {k: v for k, v in settings.items() if v is not None}
        t0 = time.perf_counter()
        # a trained model keeps its training if this run stops (an interrupt, an error): fit resets
        # the head before it trains (a notebook trial: an interrupted re-train left a model that
        # said it was trained, failed to predict with a KeyError and saved without complaint)
        before = copy.deepcopy(self.head) if self.is_trained else None
        try:
            self.head.fit(X, self._obs(self.setup.labels_key), gene_vectors=E, gene_names=names,
                          batch=self._obs(self.setup.batch_key), perturbations=self._obs(self.setup.perturbation_key),
                          training=settings)
        except BaseException:
            if before is not None:
                self.head = before
                warnings.warn("Training stopped before it finished; the model keeps its previous training "
                              "(model.history and model.train_info are that run's).", ScelmoWarning, stacklevel=2)
            else:  # (nothing to keep: a half-fitted head is no trained model)
                self.is_trained = False
            raise
        history = list(self.head.history or [])
        self.is_trained = True
        self.train_genes = names
        self.train_info = {
            "head": self.head_name,
            "n_cells": int(X.shape[0]),
            "n_genes": int(X.shape[1]),
            "n_genes_with_vector": int((np.abs(E).sum(1) > 0).sum()),
            **_table_record(self.gene_table),
            # (a head may log an "epoch 0" row, its score before training: not an epoch)
            "epochs": sum(1 for h in history if float(h.get("epoch", 1) or 0) > 0),
            "seconds": time.perf_counter() - t0,
            "device": "" if self.head.device is None else str(self.head.device),
            "normalized_counts": bool(read_counts),
            **{f"setting_{k}": v for k, v in settings.items() if isinstance(v, str | int | float | bool)},
        }
        if self.head.best_score is not None:
            self.train_info["best_validation_score"] = float(self.head.best_score)
        if self.setup.labels_key is not None:  # predictions come back as the labels went in (0, 1, 2 ...)
            self.train_info["label_dtype"] = _label_dtype(self.adata.obs[self.setup.labels_key])
        provenance.record(self.adata, "train", self.train_info)
        return self

    @property
    def history(self) -> Any:
        """Per-epoch training history (loss, validation score, seconds) as a DataFrame."""
        import pandas as pd

        df = pd.DataFrame(list(self.head.history or []))
        if "epoch" in df and df["epoch"].notna().all():  # (whole numbers, not 0.0, 1.0 ...)
            df["epoch"] = df["epoch"].astype(int)
        return df

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise ScelmoError("The model is not trained yet; call `model.train()` first.")

    # -- inference ------------------------------------------------------------------------
    def get_latent_representation(self, adata: Any | None = None, *, key_added: str | None = None,
                                  device: str | None = None) -> np.ndarray:
        """Cell embeddings from the trained head (cells x latent, float32; latent = the gene
        vectors' width d with the default residual adapter).

        ``adata`` defaults to the training data; it may have other genes (matched through
        the gene vectors). With ``key_added`` (e.g. ``"X_scelmo_finetuned"`` or
        ``"X_scelmo_integrated"``) the result is also stored in ``adata.obsm[key_added]``.
        """
        self._require_trained()
        target = self.adata if adata is None else adata
        X, _, E, names = self.head_expression(target)
        z = np.asarray(self.head.transform(X, gene_vectors=E, gene_names=names, device=device), dtype=np.float32)
        if key_added:
            target.obsm[key_added] = z
            provenance.record(target, "latent", {"head": self.head_name, "key_added": key_added, "dim": z.shape[1]})
        return z

    def predict(self, adata: Any | None = None, *, method: str | None = None, return_probabilities: bool = False,
                k: int | None = None, key_added: str | None = None, device: str | None = None) -> Any:
        """Predicted labels (annotation head).

        Parameters
        ----------
        adata
            Cells to label (default: the training data); embedded with the model's genes.
        method
            ``"knn"``: majority label of the ``k`` (default 10) cosine-nearest training
            cells in the learned space; ``"classifier"``: the head's classifier; ``"auto"``:
            whichever of the two scored better on the head's validation cells. Default:
            ``"knn"`` for heads with a kNN vote (the ``"knn"`` capability), else ``"classifier"``.
        return_probabilities
            Return a DataFrame (cells x classes) of classifier probabilities, or of the
            neighbours' vote shares for ``"knn"``, instead of labels.
        k
            Neighbours for ``"knn"`` (default 10).
        key_added
            Also write ``adata.obs[key_added]`` (e.g. ``"scelmo_label"``) and
            ``adata.obs[key_added + "_score"]`` (the winning probability / vote share).
        device
            Torch device for the forward pass (default: the device it was trained on;
            ``"auto"`` for a loaded model).

        Cells that express none of the genes the model has vectors for carry no evidence:
        they are labelled ``"unknown"`` with score 0 (probabilities NaN), with a warning.
        """
        import pandas as pd

        self._require_trained()
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
            raise InputError(f"k must be a whole number >= 1 (neighbours for the kNN vote), got {k!r}.")
        if key_added is not None and (not isinstance(key_added, str) or not key_added):
            raise InputError(f"key_added must be a non-empty string (an obs column), got {key_added!r}.")
        if method is None:
            method = "knn" if self.head.supports("knn") else "classifier"
        if method not in ("knn", "classifier", "auto"):
            raise InputError(f"method must be 'knn', 'classifier' or 'auto', got {method!r}.")
        if not self.head.supports("labels"):
            if self.head.supports("perturbation"):  # (a perturbation user wants its own method, not another head)
                raise ScelmoError(
                    f"The {self.head_name!r} head predicts expression under a perturbation, not labels: use "
                    "model.predict_perturbation(ctrl_cells, 'KLF1') (model.get_latent_representation() for the "
                    "cell-state latent).")
            raise ScelmoError(f"The {self.head_name!r} head does not predict labels; use the 'annotation' head.")
        if method == "auto":  # the head's choice on its validation cells
            method = self.head.best_method if self.head.supports("knn") else "classifier"
        if method == "knn" and not self.head.supports("knn"):
            raise ScelmoError(f"The {self.head_name!r} head has no kNN vote; use method='classifier' (or 'auto').")
        target = self.adata if adata is None else adata
        classes = list(self.head.classes)
        X, _, E, names = self.head_expression(target)
        if method == "classifier":
            probs = np.asarray(self.head.predict_proba(X, gene_vectors=E, gene_names=names, device=device))
        else:
            z = np.asarray(self.head.transform(X, gene_vectors=E, gene_names=names, device=device), dtype=np.float32)
            probs = self.head.knn_fractions(z, k=k)
        probs = np.array(probs, dtype=np.float64)
        labels = np.asarray(classes, dtype=object)[probs.argmax(1)].astype(object)
        score = probs.max(1)
        empty = _expresses_none(X, E)
        if empty.any():  # no evidence for any class (tl.annotate's convention)
            warnings.warn(
                f"{int(empty.sum())} of {len(empty)} cells express none of the genes the model has vectors for; "
                f"they are labelled {keys.UNKNOWN_LABEL!r} with score 0 (probabilities NaN). Filter them first "
                "(`sc.pp.filter_cells(adata, min_genes=1)`) or check the gene names match the model's.",
                ScelmoWarning, stacklevel=2)
            labels[empty] = keys.UNKNOWN_LABEL
            score[empty] = 0.0
            probs[empty] = np.nan
        labels = labels.astype(str)
        values = _label_values(classes, self.train_info.get("label_dtype"))
        order = list(range(len(classes)))
        if values is not None:  # integer / boolean labels: the original values, in their own order
            order.sort(key=values.__getitem__)
            lookup = dict(zip(classes, values, strict=True))
            labels = np.array([lookup.get(lab, lab) for lab in labels],
                              dtype=np.asarray(values).dtype if not empty.any() else object)
        cats = [(classes if values is None else values)[i] for i in order]
        if key_added:
            cats_all = cats + ([keys.UNKNOWN_LABEL] if empty.any() and keys.UNKNOWN_LABEL not in classes else [])
            target.obs[key_added] = pd.Categorical(labels, categories=cats_all)
            target.obs[f"{key_added}_score"] = score.astype(np.float32)
            provenance.record(target, "predict", {"head": self.head_name, "method": method, "key_added": key_added})
        if return_probabilities:
            return pd.DataFrame(probs[:, order], index=target.obs_names, columns=cats)
        return labels

    def predict_perturbation(self, adata: Any | None = None, perturbation: str | Any = None, *,
                             mean: bool = False, device: str | None = None,
                             perturbation_embeddings: Mapping[str, Any] | None = None) -> Any:
        """Predicted expression of (control) cells under a perturbation (perturbation head).

        Parameters
        ----------
        adata
            Control cells. Must hold every training gene (matched by name, as
            :meth:`predict` matches them; other genes are ignored). Default: the control
            cells of the model's AnnData (the training data, or the data bound by
            :meth:`load`), i.e. the cells whose ``perturbation_key`` value is the control
            the head was trained with (``control=``); a bound AnnData without that column
            is taken as control cells as a whole.
        perturbation
            One name for all cells (``"KLF1"``, ``"KLF1+CEBPA"`` for a combination) or one
            per cell. Each component needs a vector: seen in training, a gene (its vector in
            the model's gene table, or the gene embedded now with the configured knowledge
            and conditioned like the table: an unmeasured knockout), given to the head when the model was made
            (``Model(adata, head="perturbation", perturbation_embeddings={...})``), or given
            now in ``perturbation_embeddings``. A name that is a trained component in other
            case or under another symbol of the same gene (``"Jak2"``, ``"MARCHF8"`` for a
            model trained on ``"JAK2"``, ``"MARCH8"``) is that component.
        mean
            Return the mean over cells (a Series by gene) instead of the cells x genes
            prediction.
        device
            Torch device for the forward pass (default: the device it was trained on;
            ``"auto"`` for a loaded model).
        perturbation_embeddings
            ``{component: vector}`` for components the model has no vector for, in the
            space of its training vectors (for a gene: its vector from
            :func:`scelmo.tl.embed_genes`, conditioned by ``model.gene_table``'s
            conditioning). Used for this call only: predicting never changes the model.

        Returns
        -------
        A DataFrame (cells x training genes, log-normalised expression) or, with
        ``mean=True``, a Series by gene (named after the perturbation; ``"per cell (A, B)"``
        for one name per cell). Genes are labelled by the query's own names
        (``var_names``, or ``raw.var_names`` when the raw matrix is read), as :meth:`predict`
        and :meth:`get_latent_representation` read them, also where the model knows a gene
        under another symbol (the data's ``DARS`` is the model's ``DARS1``): the result lines
        up with means computed from the same data.
        """
        import pandas as pd

        self._require_trained()
        if not self.head.supports("perturbation"):
            raise ScelmoError(f"The {self.head_name!r} head does not predict perturbations; use head='perturbation'.")
        if perturbation is None:
            raise InputError("Say which perturbation to predict, e.g. predict_perturbation(ctrl, 'KLF1+CEBPA').")
        head_perts, extra, unknown = self._perturbation_inputs(perturbation, perturbation_embeddings)
        if unknown:
            known = list(getattr(self.head, "components", ()))
            raise InputError(
                f"No vector for perturbation component(s) {unknown[:10]}: the model was not trained on them (it knows "
                f"{len(known)}: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}) and they are not "
                "genes the configured knowledge knows. Check the spelling, or give their vectors: "
                "predict_perturbation(..., perturbation_embeddings={name: vector}), e.g. from "
                "`scelmo.perturbation.text_perturbation_embeddings({name: description})` for a drug or a stimulus."
            )
        target = self._control_cells() if adata is None else adata
        X, var_names, _, names = self.head_expression(target, normalize=False)
        pos = {n: i for i, n in enumerate(names)}
        missing = [g for g in self.train_genes if g not in pos]
        if missing:
            raise InputError(
                f"{len(missing)} of the model's {len(self.train_genes)} genes are missing from the data "
                f"(e.g. {', '.join(missing[:5])}); the perturbation head needs all of them."
            )
        cols = np.array([pos[g] for g in self.train_genes])
        X = X[:, cols]
        # the query's own gene names, not the model's symbols for them (DARS, not DARS1): a user's
        # means of the same data, indexed by var_names, must line up with the prediction
        genes = pd.Index([var_names[i] for i in cols])
        if should_normalize("auto", X):  # counts: normalised over the model's genes, as the training cells were
            if self.train_info.get("normalized_counts") is False and target is not self._training_data:
                warnings.warn(
                    "The query holds counts but the model was trained on log-normalised values: the counts are "
                    f"log-normalised over the model's {len(self.train_genes)} genes, which need not match how the "
                    "training values were made (e.g. over the whole transcriptome). Give the query's log-normalised "
                    "values, made as the training data's were.", ScelmoWarning, stacklevel=2)
            X = normalize_chunk(X)
        more = {"perturbation_embeddings": extra} if extra else {}  # for this call: the head keeps nothing
        pred = np.asarray(self.head.predict_expression(X, head_perts, device=device, **more), dtype=np.float32)
        noted = self.adata if adata is None else target  # (the default: a view of the model's AnnData)
        if not getattr(noted, "is_view", False):  # (a view would turn into a copy; nothing else is written)
            provenance.record(noted, "predict_perturbation", {
                "head": self.head_name, "perturbation": perturbation if isinstance(perturbation, str) else "per cell",
                "n_cells": int(X.shape[0]),
            })
        if mean:
            return pd.Series(pred.mean(axis=0, dtype=np.float64), index=genes, name=_perturbation_label(perturbation))
        return pd.DataFrame(pred, index=target.obs_names, columns=genes)

    def _control_cells(self) -> Any:
        """The control cells of the model's AnnData (a view), as ``predict_perturbation`` starts from
        by default: cells whose perturbation (``perturbation_key``, else ``batch_key``, as in
        training) is the head's control; all cells of a bound AnnData without that column."""
        if self.adata is None:
            raise InputError("This model is bound to no AnnData; pass the control cells: "
                             "predict_perturbation(ctrl_cells, 'KLF1').")
        key = self.setup.perturbation_key or self.setup.batch_key
        if key is None or key not in self.adata.obs:  # (a query of control cells bound by Model.load)
            return self.adata
        spec = getattr(self.head, "spec", None) or {}
        control = spec.get("control", getattr(getattr(self.head, "options", None), "control", None))
        sep = str(getattr(getattr(self.head, "options", None), "separator", "+"))
        pert = obs_column(self.adata, key)
        is_ctrl = np.array([p is not None and not components(p, sep=sep, control=control) for p in pert], dtype=bool)
        if not is_ctrl.any():
            raise InputError(
                f"No cell of adata.obs[{key!r}] is the control {control!r}, so there are no control cells to start "
                "from. Pass them: predict_perturbation(ctrl_cells, 'KLF1').")
        return self.adata[is_ctrl]

    def _perturbation_inputs(self, perturbation: str | Any, given: Mapping[str, Any] | None = None,
                             ) -> tuple[str | list[str], dict[str, Any], list[str]]:
        """Check the perturbation names and find each component's vector, changing nothing.

        A component is, in turn: a component of the head (same name); the vector in
        ``given``; the one component of the head with that name in other case, or under the
        same gene symbol (``"Jak2"`` -> ``"JAK2"``, ``"MARCHF8"`` -> ``"MARCH8"``); the
        model's gene table's (conditioned) vector of the gene, also under an older symbol (a
        held-out knockout of a measured gene, MARCH8 for MARCHF8); a gene the table lacks,
        embedded now (:func:`scelmo.perturbation.component_gene_vectors`).

        Returns
        -------
        ``(names, vectors, unknown)``: the perturbation(s) as the head knows them (one name
        or one per cell, as given), vectors for this call of components the head has none
        for, and the components that have no vector anywhere.
        """
        sep = str(getattr(getattr(self.head, "options", None), "separator", "+"))
        control = (getattr(self.head, "spec", None) or {}).get("control")
        perts = [perturbation] if isinstance(perturbation, str) else [str(p) for p in np.asarray(perturbation).ravel()]
        bad = sorted({p for p in perts if not p.strip() or (p != control and any(not c.strip() for c in p.split(sep)))})
        if bad:
            raise InputError(f"Perturbation name(s) {bad[:5]} are empty or have an empty component; give names such "
                             f"as 'KLF1' or 'KLF1{sep}CEBPA' (or the control, {control!r}).")
        if not hasattr(self.head, "components"):  # a head that names no components checks them itself
            return perturbation, {}, []
        known = [str(c) for c in self.head.components]
        wanted = sorted({c for p in set(perts) for c in components(p, sep=sep, control=control)})
        given = {str(k): v for k, v in (given or {}).items()}
        extra = {c: given[c] for c in wanted if c in given}
        todo = [c for c in sorted(set(wanted) - set(known)) if c not in given]
        rename = _same_components(todo, known, self.gene_table)
        todo = [c for c in todo if c not in rename]
        if todo and hasattr(self.head, "add_embeddings"):  # genes: the table's, else embedded now
            extra.update(component_gene_vectors(todo, self.gene_table, config=self._config)[0])
        unknown = [c for c in todo if c not in extra]
        if rename:
            def head_name(p: str) -> str:
                parts = components(p, sep=sep, control=control)
                return sep.join(rename.get(c, c) for c in parts) if any(c in rename for c in parts) else p

            named = {p: head_name(p) for p in set(perts)}
            perts = [named[p] for p in perts]
        return (perts[0] if isinstance(perturbation, str) else perts), extra, unknown

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to a directory (appears atomically).

        Contents: ``model.json`` (format, head name and options, setup, the training
        genes, label classes, training settings, SHA-256 of the gene-vector matrix),
        ``head/`` (weights and the head's own state) and ``gene_embeddings/`` (the gene
        table, checksummed; see :meth:`GeneEmbeddings.save`).
        """

        self._require_trained()
        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, adata: Any | None = None) -> Model:
        """Load a model saved by :meth:`save`, bound to ``adata`` (optional: query data).

        ``adata`` is registered with the saved setup unless it already was. The gene
        table's checksums are verified.
        """

        info, table, head = read_model(path)
        setup = AnnDataSetup(**info.get("setup", {}))
        self = cls.__new__(cls)
        self.setup = setup
        self.head_name = info["head"]
        self.head = head
        self.gene_table = table
        self._config = None
        self.is_trained = True
        self.train_info = dict(info.get("train", {}))
        self.train_genes = list(info.get("train_genes", []))
        self.adata = adata
        self._training_data = None  # (adata, if any, is a query: scaled and checked as one)
        if adata is not None and _setup_of(adata) is None:
            _remember(adata, setup)
        return self

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "not trained"
        n = getattr(self.adata, "n_obs", "?")
        return f"scelmo.Model(head={self.head_name!r}, {state}, genes={len(self.gene_table)} x {self.gene_table.dim}, cells={n})"


def _perturbation_label(perturbation: str | Any, shown: int = 5) -> str:
    """A short name for a prediction: the perturbation, or ``"per cell (A, B, ...)"`` for one name
    per cell (``str`` of the list was as long as the list: 20,000 characters for a trial's cells)."""
    if isinstance(perturbation, str):
        return perturbation
    names = sorted({str(p) for p in np.asarray(perturbation, dtype=object).ravel()})
    if len(names) == 1:
        return names[0]
    return f"per cell ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"


def _same_components(names: list[str], known: list[str], genes: Any = ()) -> dict[str, str]:
    """``{name: component}`` for names that are one component of ``known`` in other case, or
    under the same gene symbol as the gene vocabulary resolves both (ambiguous names: none;
    a match by symbol is said, since an alias may name a stimulus: IFN-beta is IFNB1). A name
    that is itself a gene of ``genes`` (the model's gene table) is that gene, not another
    component by symbol: a knockout of IFNB1 is not the trained stimulus IFN-beta."""
    if not names or not known:
        return {}
    out: dict[str, str] = {}
    by_case: dict[str, set[str]] = {}
    for k in known:
        by_case.setdefault(k.upper(), set()).add(k)
    for n in names:
        if len(by_case.get(n.upper(), ())) == 1:
            out[n] = next(iter(by_case[n.upper()]))
    rest = [n for n in names if n not in out and n not in genes]
    vocab = roles.vocabulary() if rest else None
    if vocab is not None:
        by_symbol: dict[str, set[str]] = {}
        for k, sym in zip(known, vocab.resolve(known).symbols, strict=True):
            if sym:
                by_symbol.setdefault(sym.upper(), set()).add(k)
        for n, sym in zip(rest, vocab.resolve(rest).symbols, strict=True):
            if sym and len(by_symbol.get(sym.upper(), ())) == 1:
                out[n] = next(iter(by_symbol[sym.upper()]))
                warnings.warn(f"{n!r} is predicted as the trained component {out[n]!r}: the gene vocabulary names "
                              f"both {sym}.", ScelmoWarning, stacklevel=4)
    return out


def _label_dtype(col: Any) -> str:
    """What a labels column holds: ``"integer"``, ``"boolean"`` or ``"text"`` (a categorical:
    its categories)."""
    from pandas.api.types import is_bool_dtype, is_integer_dtype

    dtype = col.cat.categories.dtype if hasattr(col, "cat") else col.dtype
    return "boolean" if is_bool_dtype(dtype) else "integer" if is_integer_dtype(dtype) else "text"


def _label_values(classes: list[str], kind: str | None) -> list[Any] | None:
    """The classes (stored as text) as the integer or boolean values the labels had in
    training; ``None`` for text labels (or a model saved before this was recorded)."""
    try:
        if kind == "integer":
            return [int(c) for c in classes]
        if kind == "boolean":
            return [c == "True" for c in classes]
    except ValueError:
        return None
    return None


def _expresses_none(X: Any, E: np.ndarray) -> np.ndarray:
    """Cells (rows of ``X``) with no non-zero value in a gene that has a vector (a row of ``E``)."""
    cols = np.flatnonzero(np.abs(E).sum(1) > 0)
    sub = X[:, cols]
    nnz = (sp.csr_matrix(sub) != 0).getnnz(axis=1) if sp.issparse(sub) else np.count_nonzero(np.nan_to_num(sub), axis=1)
    return np.asarray(nnz).ravel() == 0


def _lookup_names(adata: Any, names: list[str]) -> list[str]:
    """Look-up key per matrix column: ``var["scelmo_symbol"]`` where known, else the name."""
    if keys.GENE_SYMBOL not in adata.var:
        return names
    sym = dict(zip(map(str, adata.var_names), adata.var[keys.GENE_SYMBOL].astype(str), strict=True))
    return [sym.get(n) or n for n in names]


def _table_from_varm(adata: Any) -> GeneEmbeddings | None:
    """A gene table from ``adata.varm["scelmo"]`` (genes with a vector, by symbol)."""
    if keys.GENE_EMBEDDING not in adata.varm:
        return None
    vec = np.asarray(adata.varm[keys.GENE_EMBEDDING], dtype=np.float32)
    names = _lookup_names(adata, [str(v) for v in adata.var_names])
    has = np.abs(vec).sum(1) > 0
    seen: set[str] = set()
    rows, genes = [], []
    for i, (g, h) in enumerate(zip(names, has, strict=True)):
        if h and g and g.upper() not in seen:
            seen.add(g.upper())
            rows.append(i)
            genes.append(g)
    recorded = dict((adata.uns.get(keys.PROVENANCE, {}) or {}).get("embed_genes", {}) or {})
    manifest = {k: v for k, v in recorded.items() if isinstance(v, str | int | float)}
    table = GeneEmbeddings(genes, vec[rows] if rows else np.zeros((0, vec.shape[1]), np.float32), manifest)
    markers = recorded.get("cell_type_markers")
    if isinstance(markers, Mapping) and rows:
        # a table with cell-type marker dimensions: its text block is conditioned already and its
        # conditioning only centres (a review: a fresh default one projected the marker block)
        table.manifest["cell_type_markers"] = dict(markers)
        table.conditioning = Conditioning.fit(table.vectors, n_components=0)
    return table


def _table_record(table: GeneEmbeddings) -> dict[str, Any]:
    """What the model's gene table is, for provenance (a trial: a model trained on a 1,151-d
    table with cell-type marker dimensions recorded none of it)."""
    manifest = table.manifest or {}
    markers = manifest.get("cell_type_markers")
    out: dict[str, Any] = {"gene_dim": int(table.dim), **table.models(),
                           "conditioning": table.conditioning.checksum() if table.conditioning is not None else "none"}
    if isinstance(markers, dict):
        out["cell_type_markers"] = float(markers.get("weight", 0.0))
    return out
