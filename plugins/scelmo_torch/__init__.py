"""scelmo_torch: trainable task heads on top of gene embeddings (torch).

Registers, through the same ``scelmo`` entry-point group a third-party plugin uses:

* heads ``annotation`` (:mod:`.annotation`), ``integration`` (:mod:`.integration`) and
  ``perturbation`` (:mod:`.perturbation`), used by :class:`scelmo.Model`;
* the aggregator ``wa_torch`` (:mod:`.aggregate`): ``wa`` computed with torch on a
  device (CUDA when present), for ``scelmo.tl.embed_cells(adata, aggregator="wa_torch")``;
* the CLI commands ``scelmo train`` and ``scelmo predict`` (:mod:`.cli`).

torch is imported only inside the components, never when the plugin registers.
"""

from __future__ import annotations

from scelmo.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    from .annotation import AnnotationHead
    from .integration import IntegrationHead

    register(AnnotationHead)
    register(IntegrationHead)
    try:
        from .perturbation import PerturbationHead
    except Exception as exc:  # noqa: BLE001 - a broken optional head must not hide the others
        import warnings

        from scelmo.errors import PluginWarning

        warnings.warn(f"scelmo_torch: the perturbation head could not be loaded: {type(exc).__name__}: {exc}",
                      PluginWarning, stacklevel=2)
        return
    register(PerturbationHead)


@hookimpl
def register_aggregators(register):
    from .aggregate import TorchWeightedAverageAggregator

    register(TorchWeightedAverageAggregator)


@hookimpl
def register_commands(cli):
    from .cli import add_commands

    add_commands(cli)
