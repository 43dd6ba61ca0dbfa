"""The shell blocks of the README and docs run as written.

Every ``scelmo ...`` command line in a ``bash`` block is run in order, block by block, in a
fresh directory holding the files the text names (``in.h5ad``, ``ref.h5ad``, ...: scanpy's
bundled pbmc68k counts; ``pbmc_seurat.rds``: SeuratObject's ``pbmc_small`` saved by R).
``export`` lines set the environment for the commands after them; provider models are
answered by a loopback server speaking OpenAI's protocol. Optional parts written in
brackets (``[--head integration ...]``) are left out; ``a|b`` alternatives take the first.
Lines that install software or run for many minutes are listed in :data:`NOT_RUN` by
their first words, with the reason; any other line must run and exit 0.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)

#: first words of a line -> why it is not run here
NOT_RUN = {
    "bash scripts/run": "the README's set-up commands: CI runs `bash scripts/run test` itself, "
                        "and test_cli.py::test_demo runs the demo",
    "apt-get install": "installs system packages (done by .ci/run)",
    "pip install": "installs packages (done by scripts/run / .ci/run)",
    "python3 -m venv": "creates the benchmark venv",
    "bash scripts/install-torch": "installs torch's CPU build (run by scripts/run and .ci/run)",
    ".venv-bench/bin/pip": "installs the benchmark venv",
    ".venv-bench/bin/python": "benchmarks: minutes to hours, run by hand (their results are committed)",
    "ollama pull": "downloads models from the Ollama registry",
    "scelmo demo": "run (and its output checked) by test_cli.py::test_demo",
}


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _lines(block: str) -> list[str]:
    """Command lines of a block: continuations joined, comments and output lines dropped."""
    out, cur = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if cur:
            cur += " " + line.strip()
        elif line.strip() and not line.lstrip().startswith("#"):
            cur = line.strip()
        else:
            continue
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        out.append(cur)
        cur = ""
    return out


def _words(line: str) -> list[str]:
    """shlex words without the trailing comment, bracketed optional parts and alternatives."""
    line = re.sub(r"\s\[[^\]]*\]", "", line)  # optional parts: [--flag value ...]
    words = shlex.split(line, comments=True)
    return [w.split("|")[0] if w.startswith(("knn|", "auto|")) or re.fullmatch(r"\w+\|\w+(\|\w+)*", w) else w
            for w in words]


def _skip_reason(line: str) -> str | None:
    line = re.sub(r"^nice -n \d+ ", "", line)  # `nice -n 10 CMD` is CMD
    for head, why in NOT_RUN.items():
        if line.startswith(head):
            return why
    return None


def _docs_with_commands() -> list:
    params = []
    for doc in _docs():
        lines = [ln for b in BLOCK.findall(doc.read_text(encoding="utf-8")) for ln in _lines(b)]
        if any(ln.startswith("scelmo ") for ln in lines):
            rel = str(doc.relative_to(ROOT))
            params.append(pytest.param(rel, lines, id=rel))
    return params


def test_every_shell_line_is_run_or_has_a_reason():
    for doc in _docs():
        for block in BLOCK.findall(doc.read_text(encoding="utf-8")):
            for line in _lines(block):
                ok = line.startswith(("scelmo ", "export ")) or _skip_reason(line) is not None
                assert ok, f"{doc.name}: `{line}` is neither run by this test nor listed in NOT_RUN"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the docs' commands name, made once."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    import scelmo.datasets as sd

    d = tmp_path_factory.mktemp("docs_shell")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = sd.pbmc68k_reduced()
    # a small stand-in (300 cells x 300 genes) laid out as a scanpy user's file: log-normalised
    # X, counts in layers["counts"]; the commands are run for their interface, not a result
    counts = full.layers.get("counts", full.X)
    a = ad.AnnData(counts, obs=full.obs.copy(), var=full.var[[]].copy())[:300, :300].copy()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.obs["cell_type"] = a.obs["bulk_labels"].astype(str)
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2 == 0, "b1", "b2")
    rng = np.random.default_rng(0)
    a.obs["condition"] = rng.choice(["ctrl", "KLF1", "CEBPA", "SPI1"], a.n_obs)
    for name in ("in", "big", "data", "adata", "ref"):
        a.write_h5ad(d / f"{name}.h5ad")
    a[:100].copy().write_h5ad(d / "query.h5ad")
    a[(a.obs["condition"] == "ctrl").to_numpy()].copy().write_h5ad(d / "ctrl.h5ad")
    return d


def _seurat_rds(path: Path) -> bool:
    import shutil
    import subprocess

    if shutil.which("Rscript") is None:
        return False
    code = f'suppressMessages(library(SeuratObject)); saveRDS(pbmc_small, "{path}")'
    return subprocess.run(["Rscript", "-e", code], capture_output=True, timeout=120).returncode == 0


@pytest.mark.parametrize("doc,lines", _docs_with_commands())
def test_doc_commands_run(doc, lines, workdir, tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    from scelmo import plugin as plugins
    from scelmo.cli import cli
    from scelmo.testing.server import FakeLLMServer

    for f in workdir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    plugins.add_commands(cli)  # as the console script does: `train` / `predict` come from scelmo_torch
    env = {"SCELMO_NO_PROGRESS": "1"}
    with contextlib.ExitStack() as stack:
        if any("openai/" in ln or "anthropic" in ln for ln in lines):
            srv = stack.enter_context(FakeLLMServer(dim=16))
            # litellm's own variable: the commands' openai/... models are answered on loopback
            env |= {"OPENAI_API_BASE": srv.openai_base, "OPENAI_API_KEY": "sk-docs-test"}
        if any(".rds" in ln for ln in lines) and not _seurat_rds(tmp_path / "pbmc_seurat.rds"):
            pytest.skip("R with SeuratObject is needed for this page's .rds commands")
        runner = CliRunner()
        for line in lines:
            if _skip_reason(line):
                continue
            words = _words(line)
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = "sk-docs-test" if value in ("...", "") or value.endswith("...") else value
                continue
            assert words[0] == "scelmo", line
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = runner.invoke(cli, words[1:], env=env, catch_exceptions=False)
            assert res.exit_code == 0, f"{doc}: `{line}` exited {res.exit_code}:\n{res.output[-2000:]}"
