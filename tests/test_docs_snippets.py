"""The Python blocks of the docs run as written, given the objects their text says they need.

Each block is executed with a small namespace of real data standing in for the names the
docs leave to the reader (``adata``, ``query``, ``markers``...). Blocks that need a paid
provider or an R object are listed in ``NOT_RUN`` with the reason; every other block runs.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)

#: (doc, block index) -> why the test does not execute it
NOT_RUN = {
    ("docs/providers/openai.md", 0): "calls OpenAI (tested against the loopback server in test_litellm.py)",
    ("docs/r.md", 0): "needs a Seurat .rds file (the same calls are tested in test_r_bridge.py)",
}


def _blocks():
    for doc in sorted((ROOT / "docs").rglob("*.md")):
        rel = str(doc.relative_to(ROOT))
        for i, code in enumerate(BLOCK.findall(doc.read_text(encoding="utf-8"))):
            yield pytest.param(rel, i, code, id=f"{rel}#{i}")


def _namespace():
    import scelmo.datasets as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sd.pbmc68k_reduced()
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype(str)
    mono = adata.obs["bulk_labels"].astype(str).str.contains("Monocyte|Dendritic").to_numpy()
    adata.obs["disease"] = np.where(mono, "DCM", "NF")  # a two-class stand-in for the docs' labels
    # perturbation stand-ins: control cells and two "perturbed" groups (labels only; the
    # docs' blocks are run for their API, not for a result)
    rng = np.random.default_rng(0)
    adata.obs["condition"] = rng.choice(["ctrl", "IFN-beta", "KLF1", "CEBPA+SPI1"], adata.n_obs)
    ctrl = (adata.obs["condition"] == "ctrl").to_numpy()
    return {"adata": adata, "query": adata[:120].copy(), "markers": ["LYZ", "S100A9", "CST3", "FCN1"],
            "X": adata.X, "X_ctrl": adata.X[ctrl], "ctrl_cells": adata[ctrl].copy(),
            "vec": rng.standard_normal(384).astype(np.float32), "emb": _perturbation_vectors()}


def _perturbation_vectors():
    """What docs/perturbation.md's first block builds, for its second block."""
    import scelmo
    from scelmo import perturbation as P

    emb = P.text_perturbation_embeddings({"IFN-beta": "Stimulation with interferon beta."})
    return emb | P.gene_perturbation_embeddings(["KLF1", "CEBPA+SPI1"], scelmo.tl.embed_genes(genes=["KLF1", "CEBPA", "SPI1"]))


@pytest.mark.parametrize("doc,index,code", list(_blocks()))
def test_doc_block_runs(doc, index, code, tmp_path, monkeypatch):
    if (doc, index) in NOT_RUN:
        pytest.skip(NOT_RUN[doc, index])
    monkeypatch.chdir(tmp_path)
    ns = _namespace()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, f"{doc} block {index}", "exec"), ns)  # noqa: S102 - our own docs
