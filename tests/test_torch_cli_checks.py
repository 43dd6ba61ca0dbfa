"""`scelmo train` / `scelmo predict` from the command line: options checked before any gene is
embedded (which may be paid for), outputs in the format of their extension (CLI trial findings)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from scelmo import datasets, keys, testing
from scelmo import plugin as plugins
from scelmo.cli import cli

pytest.importorskip("torch")
EMBEDDING = "No gene vectors in the input"  # what train prints before it embeds the genes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("torch_cli")
    a = datasets.pbmc68k_reduced()[:300].copy()
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2 == 0, "b1", "b2")
    a.write_h5ad(d / "bare.h5ad")  # no gene vectors: train would embed its genes
    ge = testing.random_gene_embeddings(list(a.var_names), dim=16, seed=0)
    a.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(a.var_names))
    a.write_h5ad(d / "ref.h5ad")
    a.write_zarr(d / "ref.zarr")
    plugins.add_commands(cli)
    res = CliRunner().invoke(cli, ["train", str(d / "ref.h5ad"), "-o", str(d / "model"), "--labels-key", "bulk_labels",
                                   "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    return d


@pytest.mark.parametrize(("args", "said"), [
    (["--head", "integration"], "needs batches (an obs column of each cell's batch): pass --batch-key COLUMN"),
    (["--head", "perturbation"], "needs each cell's perturbation"),
    (["--head", "integration", "--batch-key", "bulk_labels", "--max-epochs", "0"], "--max-epochs"),
    (["--labels-key", "bulk_labels", "--batch-size", "0"], "--batch-size"),
    (["--labels-key", "bulk_labels", "--lr", "-1"], "--lr"),
])
def test_train_refuses_a_wrong_option_before_embedding_any_gene(files, tmp_path, args, said):
    """Trial finding: a missing --batch-key failed after 798 paid describe calls, --max-epochs 0
    only after every gene was embedded, each with Python advice (`batch_key=...`, `max_epochs`)."""
    res = CliRunner().invoke(cli, ["train", str(files / "bare.h5ad"), "-o", str(tmp_path / "m"), *args])
    assert res.exit_code == 2, res.output
    assert said in res.output and EMBEDDING not in res.output
    assert "batch_key=" not in res.output and "max_epochs" not in res.output


def test_a_head_check_of_the_columns_runs_before_embedding(files, tmp_path):
    """One batch only: the integration head's own check, before the genes are embedded."""
    a = ad.read_h5ad(files / "bare.h5ad")
    a.obs["one"] = "b1"
    a.write_h5ad(tmp_path / "one.h5ad")
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "one.h5ad"), "-o", str(tmp_path / "m"),
                                   "--head", "integration", "--batch-key", "one"])
    assert res.exit_code != 0 and "at least two batches" in res.output and EMBEDDING not in res.output


def test_predict_and_latent_output_write_the_format_of_their_extension(files, tmp_path):
    """Trial finding: `predict -o p.zarr` (and -o p.csv, `train --latent-output lat.zarr`) wrote
    HDF5 under that name, exit 0; a .zarr INPUT was refused as a directory."""
    r = CliRunner()
    res = r.invoke(cli, ["predict", str(files / "ref.zarr"), "-m", str(files / "model"), "-o", str(tmp_path / "p.zarr")])
    assert res.exit_code == 0, res.output
    out = ad.read_zarr(tmp_path / "p.zarr")
    assert "scelmo_label" in out.obs and keys.X_SCELMO_FINETUNED in out.obsm
    res = r.invoke(cli, ["predict", str(files / "ref.h5ad"), "-m", str(files / "model"), "-o", str(tmp_path / "p.csv")])
    assert res.exit_code != 0 and "the format follows the extension" in res.output
    assert not (tmp_path / "p.csv").exists()
    res = r.invoke(cli, ["train", str(files / "ref.h5ad"), "-o", str(tmp_path / "m2"), "--labels-key", "bulk_labels",
                         "--max-epochs", "1", "--latent-output", str(tmp_path / "lat.zarr")])
    assert res.exit_code == 0, res.output
    assert keys.X_SCELMO_FINETUNED in ad.read_zarr(tmp_path / "lat.zarr").obsm


def test_perturbation_flag_misuse_is_a_usage_error(files, tmp_path):
    res = CliRunner().invoke(cli, ["predict", str(files / "ref.h5ad"), "-m", str(files / "model"),
                                   "-o", str(tmp_path / "p.h5ad"), "--perturbation", "STAT1"])
    assert res.exit_code == 2 and "--perturbation applies to a perturbation model" in res.output
    assert "head='perturbation'" not in res.output
