"""Every AnnData key scelmo reads or writes, in one place.

=====================================  ==========================================================
key                                    content
=====================================  ==========================================================
``adata.obsm[X_SCELMO]``               cells x d cell embedding (float32)
``adata.varm[GENE_EMBEDDING]``         genes x d gene embedding (zero rows for uncovered genes)
``adata.var[HAS_EMBEDDING]``           bool, whether the gene has a vector
``adata.var[GENE_SYMBOL]``             the resolved (human, current) symbol used for look-up
``adata.var[GENES_USED]``              bool, genes the cell embedding was computed from (HVGs)
``adata.obs[LABEL + "_score"]``        its score (kNN vote share, or text-prompt confidence)
``adata.obs[LABEL]``                   predicted cell-type label
``adata.obsm[X_SCELMO_FINETUNED]``     cells x d embedding of a fine-tuned annotation model (the gene table's d, 384 by default; ``latent``, 32, for a head with ``residual=False``)
``adata.obsm[X_SCELMO_INTEGRATED]``    cells x d batch-corrected embedding (integration model)
``adata.uns[IN_SILICO]``               in-silico deletion ranking (:func:`scelmo.tl.in_silico_deletion`)
``adata.obs[CLUSTER]``                 Leiden clusters on ``X_scelmo``
``adata.obsp[CONNECTIVITIES]`` ...     kNN graph built on ``X_scelmo`` (``neighbors_key``)
``adata.obsm[UMAP]``                   2-D UMAP of that graph (:func:`scelmo.tl.umap`)
``adata.obsm[SCANPY_UMAP]``            the same UMAP where ``sc.pl.umap`` finds it (``scanpy_key``)
``adata.uns[SETUP]``                   :meth:`scelmo.Model.setup_anndata` registry (strings only)
``adata.uns[PROVENANCE]``              provenance: strings and numbers only, never secrets
=====================================  ==========================================================
"""

from __future__ import annotations

#: ``obsm`` key of the cell embedding.
X_SCELMO = "X_scelmo"
#: ``varm`` key of the per-gene embedding aligned to ``var_names``.
GENE_EMBEDDING = "scelmo"
#: ``var`` column: does the gene have a vector?
HAS_EMBEDDING = "scelmo_has_embedding"
#: ``var`` column: the resolved symbol the gene was looked up by.
GENE_SYMBOL = "scelmo_symbol"
#: ``var`` column: was the gene used by :func:`scelmo.tl.embed_cells` (gene selection)?
GENES_USED = "scelmo_genes_used"
#: ``obs`` column of predicted labels.
LABEL = "scelmo_label"
#: The label of a cell no type fits, or with no evidence for any (it expresses none of the genes).
UNKNOWN_LABEL = "unknown"
#: ``obsm`` key of the embedding learned by a fine-tuned annotation model (``scelmo.Model``).
X_SCELMO_FINETUNED = "X_scelmo_finetuned"
#: ``obsm`` key of the batch-corrected embedding of an integration model.
X_SCELMO_INTEGRATED = "X_scelmo_integrated"
#: ``uns`` key of the in-silico deletion results.
IN_SILICO = "scelmo_in_silico"
#: ``obs`` column of Leiden clusters computed on the scelmo embedding.
CLUSTER = "scelmo_leiden"
#: ``uns`` key of the neighbours computed on the scelmo embedding.
NEIGHBORS = "scelmo_neighbors"
#: ``obsm`` key of the UMAP computed on the scelmo neighbours.
UMAP = "X_scelmo_umap"
#: ``obsm`` key scanpy plots with ``sc.pl.umap``; :func:`scelmo.tl.umap` also writes it by default.
SCANPY_UMAP = "X_umap"
#: ``uns`` key of the :meth:`scelmo.Model.setup_anndata` registry (strings only, survives ``.h5ad``).
SETUP = "scelmo_setup"
#: ``uns`` provenance dictionary.
PROVENANCE = "scelmo"
