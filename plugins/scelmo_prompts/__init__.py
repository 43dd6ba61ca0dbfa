"""The built-in prompt templates, registered through the ``register_prompts`` hook.

Each prompt is named and versioned; its hash (name, version, template, system
message) is part of the cache key and of provenance, so changing a prompt never
serves answers written for another one. ``{item}`` is replaced by the name.

===============  =========  ==================================================================
name             subject    source
===============  =========  ==================================================================
``gene``         gene       the scELMo paper's prompt, verbatim (GPT-3.5 notebook)
``gene-short``   gene       the paper's DeepSeek notebook prompt (with its system message)
``cell-type``    cell_type  the paper's prompt with the noun swapped (the repo says "replace the
                            prompt for different metadata"; the exact texts are not published)
``drug``         drug       as above
``protein``      protein    as above
===============  =========  ==================================================================

Register your own from a plugin::

    @scelmo.hookimpl
    def register_prompts(register):
        register(PromptTemplate(name="gene-markers", version="1", subject="gene",
                                template="List the cell types that express {item} ..."))
"""

from __future__ import annotations

from scelmo.plugin import PromptTemplate, hookimpl

_PAPER = "Use academic language in one paragraph and include pathway information."

BUILTIN_PROMPTS = (
    PromptTemplate(
        name="gene",
        version="1",
        subject="gene",
        template="Please summarize the major function of gene: {item}. " + _PAPER,
        description="scELMo paper (Liu et al.), GPT-3.5 gene prompt, verbatim",
    ),
    PromptTemplate(
        name="gene-short",
        version="1",
        subject="gene",
        template="Please help me summarize the function of gene: {item}.",
        system="You are a helpful assistant",
        description="scELMo paper, DeepSeek notebook prompt",
    ),
    *(
        PromptTemplate(
            name=name,
            version="1",
            subject=subject,
            template=f"Please summarize the major function of {noun}: {{item}}. " + _PAPER,
            description=f"the paper's prompt for {noun}s (noun swapped)",
        )
        for name, subject, noun in (
            ("cell-type", "cell_type", "cell type"),
            ("drug", "drug", "drug"),
            ("protein", "protein", "protein"),
        )
    ),
)


@hookimpl
def register_prompts(register):
    for prompt in BUILTIN_PROMPTS:
        register(prompt)
