"""The README's Python quick start runs as pasted (offline, in a fresh directory)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_block_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no Python block"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(blocks[0], str(README), "exec"), ns)  # noqa: S102 - our own README
    adata, query = ns["adata"], ns["query"]
    assert {"X_scelmo", "X_scelmo_paper", "X_scelmo_umap"} <= set(adata.obsm)
    assert "scelmo_label" in query.obs and "scelmo_label" in adata.obs
    assert (tmp_path / "pbmc_gene_vectors" / "manifest.json").is_file()
