"""The task-head contract: everything :class:`scelmo.Model` calls on a head.

A *task head* is the trainable part of a :class:`scelmo.Model`: ``Model`` prepares the
data (expression matrix, gene vectors, obs columns), the head learns from it and
answers queries. Every head receives the same argument names:

==================  ==========================================================================
argument            meaning
==================  ==========================================================================
``X``               cells x genes expression (float32 CSR or ndarray; finite, non-negative,
                    the values chosen by ``Model.setup_anndata``: a layer, ``raw`` or ``X``)
``gene_vectors``    genes x d gene vectors aligned to ``X``'s columns (zero rows for genes
                    without a vector; the table's conditioned vectors)
``gene_names``      ``X``'s column names (lets a head find its trained genes in a query)
``labels``          one label per cell (object array of strings, ``None`` where missing), or
                    ``None`` when ``labels_key`` was not set up
``batch``           one batch per cell (as ``labels``), or ``None``
``perturbations``   one perturbation name per cell (``"ctrl"``, ``"KLF1"``, ``"KLF1+CEBPA"``),
                    or, when predicting, one name for all cells
``device``          ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``None``
                    (the head's own choice)
``training``        a dict of training settings (``max_epochs``, ``batch_size``, ``lr``,
                    ``early_stopping``, ``device``, ``seed``, ... as given to
                    ``Model.train``; a head takes the ones it understands)
==================  ==========================================================================

What a head can do beyond ``fit`` is declared, not probed: :attr:`TaskHead.capabilities`
names the optional parts it implements, and ``Model`` checks them before calling.

================  ===============================================================  =======================
capability        methods / attributes                                             ``Model`` uses it in
================  ===============================================================  =======================
``"latent"``      :meth:`~TaskHead.transform`                                       ``get_latent_representation``,
                                                                                   ``predict(method="knn")``
``"labels"``      :attr:`~TaskHead.classes`, :meth:`~TaskHead.predict_proba`,       ``predict``
                  :attr:`~TaskHead.best_method`
``"knn"``         :meth:`~TaskHead.knn_fractions`, :meth:`~TaskHead.predict_knn`    ``predict(method="knn")``
``"perturbation"``  :meth:`~TaskHead.predict_expression`,                          ``predict_perturbation``
                  :meth:`~TaskHead.predict_mean`
================  ===============================================================  =======================

Every head implements :meth:`~TaskHead.fit`, :meth:`~TaskHead.save_state` and
:meth:`~TaskHead.load_state`. The optional methods have defaults here: the ones that
need a capability raise a :class:`~scelmo.errors.ScelmoError` saying the head lacks it.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from scelmo.errors import InputError, ScelmoError
from scelmo.plugin.components import Component

#: The capabilities a head may declare (see the module docstring).
CAPABILITIES = frozenset({"latent", "labels", "knn", "perturbation"})


def renamed_keyword(kwargs: MutableMapping[str, Any], old: str, new: str, value: Any, where: str) -> Any:
    """A deprecated keyword ``old`` (in ``kwargs``) standing in for ``new`` (given as ``value``).

    Pops ``old`` from ``kwargs``; when it was given, warns with a :class:`DeprecationWarning`
    and returns its value (an error if ``new`` was given too); else returns ``value``.
    """
    if old not in kwargs:
        return value
    old_value = kwargs.pop(old)
    if value is not None:
        raise InputError(f"{where}: give `{new}=` only (`{old}=` is its deprecated name).")
    warnings.warn(f"{where}: the keyword `{old}=` is deprecated; use `{new}=`.", DeprecationWarning, stacklevel=3)
    return old_value


class TaskHead(Component):
    """A model on top of the expression matrix and the gene vectors (see the module docstring).

    A subclass sets ``name`` (the name ``Model(adata, head=...)`` uses), ``Options`` (a
    pydantic model of its options, see :class:`~scelmo.plugin.ComponentOptions`),
    ``capabilities`` and ``requires_labels``, and implements :meth:`fit`,
    :meth:`save_state` and :meth:`load_state` plus the methods of its capabilities.
    """

    kind = "task head"

    #: Whether :meth:`fit` needs ``labels``: ``Model(adata, head=...)`` then refuses an
    #: AnnData set up without ``labels_key``.
    requires_labels: ClassVar[bool] = False
    #: Whether :meth:`fit` needs each cell's batch (``batch_key``), and each cell's
    #: perturbation (``perturbation_key``, or ``batch_key`` holding the perturbations):
    #: refused up front likewise, by ``Model`` and ``scelmo train`` (which names the missing
    #: flag before any gene is embedded).
    requires_batch: ClassVar[bool] = False
    requires_perturbations: ClassVar[bool] = False
    #: The optional parts this head implements: a subset of :data:`CAPABILITIES`.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    #: Label names, in the column order of :meth:`predict_proba` and :meth:`knn_fractions`
    #: (empty for heads that predict no labels). Saved in ``model.json`` by ``Model.save``.
    classes: Sequence[str] = ()
    #: One dict per training epoch (e.g. ``epoch``, ``loss``, ``val_score``, ``seconds``);
    #: ``Model.history`` shows it as a DataFrame and ``Model.train`` counts its entries.
    history: Sequence[Mapping[str, Any]] = ()
    #: Validation score of the weights the head holds after :meth:`fit` (higher is better): the
    #: best reached with early stopping, the last without; ``None`` if not measured.
    best_score: float | None = None
    #: Which labelling ``Model.predict(method="auto")`` uses: ``"knn"`` or ``"classifier"``.
    best_method: str = "knn"
    #: Where the head computed last (recorded by ``Model.train``); ``None`` if it does not say.
    device: Any = None

    @property
    def genes_used(self) -> Sequence[str] | None:
        """The genes (names as ``fit`` got them) a fitted head reads, e.g. its selection of
        variable genes; ``None`` when it reads every gene it was given. ``Model`` warns when a
        query lacks many of them."""
        return None

    @classmethod
    def supports(cls, capability: str) -> bool:
        """Whether this head declares ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"Unknown head capability {capability!r}; known: {sorted(CAPABILITIES)}.")
        return capability in cls.capabilities

    def _lacks(self, what: str, use: str) -> ScelmoError:
        return ScelmoError(f"The {self.name!r} head does not {what}; {use}.")

    # -- training (every head) ----------------------------------------------------------------
    def check_inputs(self, *, labels: np.ndarray | None = None, batch: np.ndarray | None = None,
                     perturbations: np.ndarray | None = None) -> None:
        """Refuse ``obs`` columns :meth:`fit` could not train on, before any costly step.

        Called by ``Model(adata, head=...)`` with the same per-cell columns :meth:`fit` will
        get, before the genes are embedded, so that a wrong option (a control name no cell
        has, say) fails at once rather than after minutes of work. Raise
        :class:`~scelmo.errors.InputError` saying what to pass instead; the default accepts
        everything.
        """
        del labels, batch, perturbations

    @abstractmethod
    def fit(self, X: Any, labels: np.ndarray | None = None, *, gene_vectors: np.ndarray | None = None,
            gene_names: Sequence[str] | None = None, batch: np.ndarray | None = None,
            perturbations: np.ndarray | None = None, training: Mapping[str, Any] | None = None) -> TaskHead:
        """Learn from the training cells; returns ``self``.

        Called by ``Model.train`` once, always with every keyword below (``None`` where the
        AnnData was not set up with the matching key).

        Parameters
        ----------
        X
            Cells x genes expression of the training cells.
        labels
            One label per cell from ``labels_key`` (strings, ``None`` where missing), or ``None``.
        gene_vectors
            Genes x d, aligned to ``X``'s columns.
        gene_names
            ``X``'s column names.
        batch
            One batch per cell from ``batch_key``, or ``None``.
        perturbations
            One perturbation name per cell from ``perturbation_key``, or ``None``.
        training
            Training settings (see the module docstring); ignore the ones you do not use.

        Returns
        -------
        The head itself, trained.
        """

    # -- persistence (every head) --------------------------------------------------------------
    @abstractmethod
    def save_state(self, directory: str | Path) -> None:
        """Write everything :meth:`load_state` needs into ``directory``.

        Called by ``Model.save`` with ``<model>/head`` inside a temporary directory that
        appears atomically; create it (``mkdir(parents=True, exist_ok=True)``). Options,
        classes, history and weights are the head's to save; ``Model`` keeps its own copy
        of the options and classes in ``model.json`` for people, not for loading.
        """

    @classmethod
    @abstractmethod
    def load_state(cls, directory: str | Path) -> TaskHead:
        """Rebuild a trained head from a directory written by :meth:`save_state`.

        Called by ``Model.load`` on the class registered under the saved head name.
        """

    # -- "latent" ------------------------------------------------------------------------------
    def transform(self, X: Any, *, gene_vectors: np.ndarray | None = None, gene_names: Sequence[str] | None = None,
                  device: Any = None) -> np.ndarray:
        """Cell embeddings, cells x latent (capability ``"latent"``).

        Called by ``Model.get_latent_representation`` (and ``Model.predict(method="knn")``)
        on the training data or a query, whose genes may differ from the training genes:
        ``gene_names`` say which they are.
        """
        raise self._lacks("compute a cell embedding (transform)", "use a head with the 'latent' capability")

    # -- "labels" ------------------------------------------------------------------------------
    def predict_proba(self, X: Any, *, gene_vectors: np.ndarray | None = None,
                      gene_names: Sequence[str] | None = None, device: Any = None) -> np.ndarray:
        """Class probabilities, cells x ``len(classes)`` (capability ``"labels"``).

        Called by ``Model.predict(method="classifier")`` (and ``"auto"`` when
        :attr:`best_method` is ``"classifier"``), and by :func:`scelmo.tl.in_silico_deletion`.
        Rows sum to 1; columns follow :attr:`classes`.
        """
        raise self._lacks("predict labels (predict_proba)", "use the 'annotation' head")

    # -- "knn" ---------------------------------------------------------------------------------
    def knn_fractions(self, latent: np.ndarray, *, k: int | None = None) -> np.ndarray:
        """Share of each class among the ``k`` nearest training cells, cells x ``len(classes)``
        (capability ``"knn"``).

        Called by ``Model.predict(method="knn")`` with the output of :meth:`transform`;
        ``k=None`` means the head's default. Use :func:`scelmo.knn.knn_fractions` for the
        project's one vote (ties go to the nearest neighbour's class).
        """
        raise self._lacks("vote with nearest neighbours (knn_fractions)", "use method='classifier'")

    def predict_knn(self, latent: np.ndarray, *, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and vote shares from :meth:`knn_fractions` (capability ``"knn"``).

        Not called by ``Model`` (which uses :meth:`knn_fractions`); a convenience for
        users of the head. The default takes the largest share of :meth:`knn_fractions`.
        """
        shares = self.knn_fractions(latent, k=k)
        labels = np.asarray(list(self.classes), dtype=object)[shares.argmax(1)].astype(str)
        return labels, shares.max(1)

    # -- "perturbation" ------------------------------------------------------------------------
    def predict_expression(self, X: Any, perturbations: str | Sequence[str], *, device: Any = None) -> np.ndarray:
        """Predicted expression of the control cells ``X`` under ``perturbations``
        (capability ``"perturbation"``).

        Called by ``Model.predict_perturbation`` with ``X`` restricted to the training genes
        in training order and ``perturbations`` one name for all cells or one per cell.
        Returns cells x genes, float32.
        """
        raise self._lacks("predict perturbations (predict_expression)", "use head='perturbation'")

    def predict_mean(self, X: Any, perturbation: str, *, device: Any = None) -> np.ndarray:
        """Mean predicted expression over the control cells ``X`` under one ``perturbation``
        (capability ``"perturbation"``; default: the mean of :meth:`predict_expression`)."""
        return np.asarray(self.predict_expression(X, perturbation, device=device)).mean(axis=0, dtype=np.float64)

    # -- the head's own answer -----------------------------------------------------------------
    def predict(self, X: Any, *, gene_vectors: np.ndarray | None = None, gene_names: Sequence[str] | None = None,
                perturbations: str | Sequence[str] | None = None, device: Any = None) -> np.ndarray:
        """The head's main prediction for ``X`` (not called by ``Model``, which uses the methods above).

        The default follows the capabilities: labels (the most probable class of
        :meth:`predict_proba`) for ``"labels"`` heads, predicted expression
        (:meth:`predict_expression`) for ``"perturbation"`` heads, else the cell embedding
        (:meth:`transform`).
        """
        if self.supports("labels"):
            p = self.predict_proba(X, gene_vectors=gene_vectors, gene_names=gene_names, device=device)
            return np.asarray(list(self.classes), dtype=object)[np.asarray(p).argmax(1)].astype(str)
        if self.supports("perturbation"):
            if perturbations is None:
                raise InputError("Say which perturbation to predict: predict(X, perturbations='KLF1').")
            return self.predict_expression(X, perturbations, device=device)
        return self.transform(X, gene_vectors=gene_vectors, gene_names=gene_names, device=device)
