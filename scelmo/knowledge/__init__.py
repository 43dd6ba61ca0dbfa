"""From configuration to gene knowledge: which components fill the roles, and writing descriptions.

=====================================  ====================================================
module                                 holds
=====================================  ====================================================
:mod:`scelmo.knowledge.roles`          the configured knowledge source / provider / embedder
:mod:`scelmo.knowledge.descriptions`   ``describe``: texts about genes, cell types, drugs,
                                       cached and resumable
=====================================  ====================================================
"""
