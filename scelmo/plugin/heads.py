"""The task-head contract: what :class:`scelmo.Model` calls on a head."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from scelmo.plugin.components import Component


class TaskHead(Component):
    """A model on top of embeddings (zero-shot kNN, fine-tuned torch heads, ...)."""

    kind = "task head"

    @abstractmethod
    def fit(self, embeddings: np.ndarray, labels: np.ndarray | None = None, **kwargs: Any) -> TaskHead:
        """Learn from cell embeddings (and labels, for supervised heads); returns ``self``."""

    @abstractmethod
    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Predictions for new cell embeddings."""
