"""From configuration to gene knowledge: which components fill the roles, and writing descriptions.

=====================================  ====================================================
module                                 holds
=====================================  ====================================================
:mod:`scelmo.knowledge.roles`          the configured knowledge source / provider / embedder
:mod:`scelmo.knowledge.descriptions`   ``describe``: texts about genes, cell types, drugs,
                                       cached and resumable
:mod:`scelmo.knowledge.cell_types`     cell-type names matched to curated marker sets
:mod:`scelmo.knowledge.marker_dims`    opt-in cell-type marker dimensions beside the vectors
=====================================  ====================================================
"""

from scelmo._lazy import submodules as _submodules

__getattr__ = _submodules(__name__, ('cell_types', 'descriptions', 'marker_dims', 'roles'))
