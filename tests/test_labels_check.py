"""The annotation head refuses a numeric measurement as labels (new-user trial finding:
``scelmo train --labels-key n_genes`` trained a 303-class model, best validation score 0.000,
exit 0)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import scelmo
from scelmo import datasets
from scelmo import plugin as plugins
from scelmo.cli import cli
from scelmo.errors import InputError

pytest.importorskip("torch")

from scelmo_torch.annotation import MAX_NUMERIC_CLASSES, _refuse_measurement_labels  # noqa: E402

EMBEDDING = "No gene vectors in the input"  # what train prints before it embeds the genes


@pytest.fixture(scope="module")
def pbmc_obs():
    return datasets.pbmc68k_reduced()


def _strings(values):
    """Labels as ``Model`` hands them to a head: text, ``None`` where missing."""
    return np.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values],
                    dtype=object)


@pytest.mark.parametrize("column", ["n_genes", "n_counts", "percent_mito", "S_score"])
def test_a_measurement_column_is_refused_with_what_to_pass(pbmc_obs, column):
    with pytest.raises(InputError, match="not cell types") as err:
        plugins.heads.create("annotation").check_inputs(labels=_strings(pbmc_obs.obs[column].to_numpy()))
    assert "column of cell-type names" in str(err.value) and "--labels-key" in str(err.value)


def test_model_refuses_it_before_the_genes_are_embedded(pbmc_obs):
    a = pbmc_obs.copy()
    scelmo.Model.setup_anndata(a, labels_key="n_genes")
    with pytest.raises(InputError, match=r"distinct numbers \(\d+ to \d+\)"):
        scelmo.Model(a, head="annotation")


def test_the_cli_exits_with_one_line_before_embedding(pbmc_obs, tmp_path):
    pbmc_obs[:300].copy().write_h5ad(tmp_path / "bare.h5ad")  # no gene vectors: train would embed its genes
    plugins.add_commands(cli)
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "bare.h5ad"), "-o", str(tmp_path / "m"),
                                   "--labels-key", "n_genes"])
    assert res.exit_code != 0 and "not cell types" in res.output and EMBEDDING not in res.output
    assert "Traceback" not in res.output and not (tmp_path / "m").exists()


@pytest.mark.parametrize("labels", [
    np.arange(500) % 10,  # integer-coded cell types
    np.where(np.arange(500) % 7 == 0, np.nan, (np.arange(500) % 12).astype(float)),  # float codes, some missing
    np.arange(20),  # tiny data: one cell per class, but only 20 classes
    np.arange(600) % MAX_NUMERIC_CLASSES,  # many integer classes, 3 cells each
    np.array([f"type {i}" for i in range(500)]),  # text: never this check's business
])
def test_cell_type_codes_and_names_pass(labels):
    _refuse_measurement_labels(_strings(labels))
    plugins.heads.create("annotation").check_inputs(labels=_strings(labels))


def test_the_rule_s_edges():
    with pytest.raises(InputError):  # more than 200 classes
        _refuse_measurement_labels(_strings(np.arange(10_000) % (MAX_NUMERIC_CLASSES + 1)))
    with pytest.raises(InputError):  # more than half the labelled cells
        _refuse_measurement_labels(_strings(np.arange(100) % 51))
    _refuse_measurement_labels(_strings(np.arange(100) % 50))  # exactly half: passes
