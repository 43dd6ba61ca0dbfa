"""Tools: scanpy-style functions (``adata`` first, keyword-only options, ``key_added``).

=============================  ==============================================================
function                       writes
=============================  ==============================================================
:func:`embed_genes`            ``varm["scelmo"]``, ``var["scelmo_has_embedding"]``,
                               ``var["scelmo_symbol"]``, ``uns["scelmo"]["embed_genes"]``
:func:`embed_cells`            ``obsm["X_scelmo"]``, ``uns["scelmo"]["embed_cells"]``
:func:`cluster`                ``obs["scelmo_leiden"]``, ``uns["scelmo_neighbors"]``, ``obsp``
:func:`umap`                   ``obsm["X_scelmo_umap"]`` and ``obsm["X_umap"]`` (for ``sc.pl.umap``)
:func:`annotate`               ``obs["scelmo_label"]``, ``obs["scelmo_label_score"]``
:func:`in_silico_deletion`     ``uns["scelmo_in_silico"]`` (gene ranking; needs a trained Model)
=============================  ==============================================================

Every function that writes to ``adata`` takes ``copy=`` (scanpy's convention):
``copy=True`` leaves ``adata`` untouched and returns a modified copy.
"""

from __future__ import annotations

from scelmo.tl._annotation import annotate
from scelmo.tl._clustering import cluster, umap
from scelmo.tl._embedding import embed_cells, embed_genes, estimate_embed_genes
from scelmo.tl._insilico import in_silico_deletion

__all__ = ["annotate", "cluster", "embed_cells", "embed_genes", "estimate_embed_genes", "in_silico_deletion", "umap"]


def __dir__() -> list[str]:  # tab completion lists the tools, not the module's imports
    return __all__
