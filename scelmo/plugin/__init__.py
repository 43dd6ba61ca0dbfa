"""Everything a plugin author needs, in one import.

::

    from scelmo.plugin import Aggregator, TaskHead, hookimpl

    class MyAggregator(Aggregator):
        name = "mine"
        def aggregate_chunk(self, chunk, prepared, *, n_genes): ...

    @hookimpl
    def register_aggregators(register):
        register(MyAggregator)

============================  ===============================================================
module                        holds
============================  ===============================================================
:mod:`scelmo.plugin.hookspecs`   the hooks (``register_aggregators``, ``register_heads``, ...)
:mod:`scelmo.plugin.components`  base classes of knowledge sources, providers, embedders,
                                 aggregators and prompts
:mod:`scelmo.plugin.heads`       the task-head contract (:class:`TaskHead`)
:mod:`scelmo.plugin.manager`     the plugin manager and the typed registries
============================  ===============================================================

The registries (:data:`aggregators`, :data:`heads`, ...) fill themselves lazily from
the ``scelmo`` entry-point group the first time a component is looked up.
"""

from __future__ import annotations

from scelmo.expression.aggregation import (
    AggregationContext,
    AggregationResult,
    BlockPart,
    BlockPlan,
)
from scelmo.plugin.components import (
    Aggregator,
    Completion,
    Component,
    ComponentOptions,
    EmbedderOptions,
    EmbeddingBatch,
    KnowledgeSource,
    ModelComponent,
    PromptTemplate,
    Provider,
    RemoteOptions,
    TextEmbedder,
    split_phrases,
)
from scelmo.plugin.heads import TaskHead
from scelmo.plugin.hookspecs import PROJECT, Register, hookimpl, hookspec
from scelmo.plugin.manager import (
    ENTRY_POINT_GROUP,
    REGISTRIES,
    Entry,
    PluginInfo,
    Registry,
    add_commands,
    aggregators,
    check_strict,
    embedders,
    fill_registry,
    get_plugin_manager,
    heads,
    knowledge_sources,
    plugin_commands,
    plugin_infos,
    prompts,
    providers,
    register_plugin,
    reset,
    unregister_plugin,
)

__all__ = [
    "ENTRY_POINT_GROUP", "PROJECT", "REGISTRIES", "AggregationContext", "AggregationResult", "Aggregator",
    "BlockPart", "BlockPlan", "Completion", "Component", "ComponentOptions", "EmbedderOptions", "EmbeddingBatch",
    "Entry", "KnowledgeSource", "ModelComponent", "PluginInfo", "PromptTemplate", "Provider", "Register",
    "Registry", "RemoteOptions", "TaskHead", "TextEmbedder", "add_commands", "aggregators", "check_strict", "embedders",
    "fill_registry", "get_plugin_manager", "heads", "hookimpl", "hookspec", "knowledge_sources", "plugin_commands",
    "plugin_infos", "prompts", "providers", "register_plugin", "reset", "split_phrases", "unregister_plugin",
]
