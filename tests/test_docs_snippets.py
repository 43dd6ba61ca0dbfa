"""The Python blocks of the docs run as written, given the objects their text says they need.

Each block is executed with a small namespace of real data standing in for the names the
docs leave to the reader (``adata``, ``query``, ``markers``...). Provider pages run against
a loopback server speaking OpenAI's protocol; the R page reads SeuratObject's own
``pbmc_small`` saved by R. A block that cannot run here must be listed in ``NOT_RUN`` with
the reason (none is, today).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)

#: (doc, block index) -> why the test does not execute it
NOT_RUN: dict[tuple[str, int], str] = {}


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
    with contextlib.ExitStack() as stack:
        if "openai/" in code:  # the provider pages: the same calls, answered by a loopback server
            from scelmo.testing.server import FakeLLMServer

            srv = stack.enter_context(FakeLLMServer(dim=16))
            for role in ("DESCRIBE", "EMBED"):
                monkeypatch.setenv(f"SCELMO_{role}__API_BASE", srv.openai_base)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-test")
        if "read_rds" in code:
            _write_seurat_rds(tmp_path / "pbmc_seurat.rds")
        # embedding R (rpy2) rewrites the process environment (LD_LIBRARY_PATH, R_*...), which
        # would break later tests' subprocesses: put it back afterwards
        saved = dict(os.environ)
        stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, f"{doc} block {index}", "exec"), ns)  # noqa: S102 - our own docs


def _write_seurat_rds(path: Path) -> None:
    """SeuratObject's own ``pbmc_small`` as a .rds file (needs R and the scelmo[r] extra)."""
    import shutil
    import subprocess

    pytest.importorskip("rpy2", reason="the scelmo[r] extra (rpy2) is not installed")
    if shutil.which("Rscript") is None:
        pytest.skip("R is not installed")
    code = f"suppressMessages(library(SeuratObject)); saveRDS(pbmc_small, {str(path)!r})"
    res = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"SeuratObject's pbmc_small is not available: {res.stderr.strip()[-200:]}")
