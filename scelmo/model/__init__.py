"""Trainable models on top of scelmo embeddings (scvi-tools' verbs).

:class:`Model` holds the data set-up (``setup_anndata``), a task head from
:data:`scelmo.plugin.heads` and the gene table, and offers ``train``,
``get_latent_representation``, ``predict``, ``predict_perturbation``, ``save`` and
``load``. The head contract a plugin implements is :class:`scelmo.plugin.TaskHead`.
"""

from __future__ import annotations

from scelmo.model._model import Model, obs_column
from scelmo.model._save_load import FORMAT, FORMAT_VERSION, MODEL_FILE, read_model, save_model
from scelmo.model._setup import AnnDataSetup
from scelmo.plugin.heads import TaskHead

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_FILE", "AnnDataSetup", "Model", "TaskHead", "obs_column", "read_model",
           "save_model"]
