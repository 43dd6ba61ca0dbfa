"""Shared fixtures: every test runs with an isolated config dir, cwd and cache.

The gene-vector cache is shared by the whole session (one SQLite file in a temp dir),
so the bundled model embeds each gene text once per test run.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("SCELMO_NO_PROGRESS", "1")


def _allow_text_columns_in_fixture_files() -> None:
    """Under pandas >= 3 every text column is a nullable string array, which anndata writes only
    when allowed; the tests' own fixture files (``a.write_h5ad`` in test code) need that. The
    package's writers allow it themselves (tests/test_cli_formats.py checks that with it off)."""
    import anndata
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3 and hasattr(anndata.settings, "allow_write_nullable_strings"):
        anndata.settings.allow_write_nullable_strings = True


_allow_text_columns_in_fixture_files()


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache") / "cache.sqlite"


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch, session_cache):
    for var in list(os.environ):
        if var.startswith("SCELMO_") and var not in {"SCELMO_NO_PROGRESS"}:
            monkeypatch.delenv(var)
    cfg = tmp_path / "_config"
    cfg.mkdir()
    monkeypatch.setenv("SCELMO_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("SCELMO_CACHE__PATH", str(session_cache))
    work = tmp_path / "_cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield


@pytest.fixture(scope="session")
def _pbmc():
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc(_pbmc):
    """scanpy's bundled pbmc68k_reduced (700 cells, 765 genes; raw = log-normalised)."""
    return _pbmc.copy()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
