"""Calling language models and text embedders: the cache, retries and budgets, the embedding loop.

========================================  =====================================================
module                                    holds
========================================  =====================================================
:mod:`scelmo.llm.cache`                   the SQLite cache of descriptions and vectors
:mod:`scelmo.llm.calls`                   retries, concurrency, usage and cost budgets
:mod:`scelmo.llm.embedding_loop`          dedup / cache / batch / check loop of text embedders
========================================  =====================================================

The plugin contracts (:mod:`scelmo.plugin`) call into these; nothing here imports a plugin.
"""

from scelmo._lazy import submodules as _submodules

__getattr__ = _submodules(__name__, ('cache', 'calls', 'embedding_loop'))
