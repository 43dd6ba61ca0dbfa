"""scelmo_torch: trainable task heads on top of gene embeddings (torch).

Registers, through the same ``scelmo`` entry-point group a third-party plugin uses:

* heads ``annotation`` (:mod:`.annotation`), ``integration`` (:mod:`.integration`) and
  ``perturbation`` (:mod:`.perturbation`), used by :class:`scelmo.Model`;
* the aggregator ``wa_torch`` (:mod:`.aggregate`): ``wa`` computed with torch on a
  device (CUDA when present), for ``scelmo.tl.embed_cells(adata, aggregator="wa_torch")``;
* the CLI commands ``scelmo train`` and ``scelmo predict`` (:mod:`.cli`).

torch is imported only inside the components' methods, never when the plugin registers.
"""

from __future__ import annotations

from scelmo.plugin import hookimpl

from .aggregate import TorchWeightedAverageAggregator
from .annotation import AnnotationHead
from .cli import add_commands
from .integration import IntegrationHead
from .perturbation import PerturbationHead


@hookimpl
def register_heads(register):
    register(AnnotationHead)
    register(IntegrationHead)
    register(PerturbationHead)


@hookimpl
def register_aggregators(register):
    register(TorchWeightedAverageAggregator)


@hookimpl
def register_commands(cli):
    add_commands(cli)
