"""The CLI's INPUT formats (.h5ad, .zarr, 10x .h5, 10x .mtx directories) and its behaviour:
errors name flags, options are checked first, outputs are never overwritten silently,
exit codes, config suggestions and `scelmo config show` on a broken config."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from click.testing import CliRunner

from scelmo import keys
from scelmo.cli import cli, cli_message


@pytest.fixture(scope="module")
def counts():
    import scelmo.datasets as sd

    a = sd.pbmc68k_reduced()[:60]
    X = sp.csr_matrix(a.layers["counts"]).astype(np.int32)
    return X, [str(g) for g in a.var_names], [f"CELL{i}-1" for i in range(a.n_obs)]


def write_mtx_dir(path, X, genes, barcodes):
    """A CellRanger v3 matrix directory: matrix.mtx.gz (genes x cells), features.tsv.gz, barcodes.tsv.gz."""
    path.mkdir()
    with gzip.open(path / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(X).T.tocoo().astype(np.int32))
    with gzip.open(path / "features.tsv.gz", "wt") as fh:
        fh.writelines(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(genes))
    with gzip.open(path / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(f"{b}\n" for b in barcodes)


def write_10x_h5(path, X, genes, barcodes):
    """A CellRanger v3 filtered_feature_bc_matrix.h5 (CSC genes x cells = CSR cells x genes)."""
    X = sp.csr_matrix(X)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=X.data.astype(np.int32))
        m.create_dataset("indices", data=X.indices.astype(np.int64))
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        feat = m.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feat.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S"))
        feat.create_dataset("name", data=np.array(genes, dtype="S"))
        feat.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(genes)))
        feat.create_dataset("genome", data=np.array([b"GRCh38"] * len(genes)))


@pytest.fixture
def inputs(counts, tmp_path):
    X, genes, barcodes = counts
    a = ad.AnnData(X.astype(np.float32), obs={"cell": barcodes}, var={"gene": genes})
    a.obs_names, a.var_names = barcodes, genes
    a.write_h5ad(tmp_path / "in.h5ad")
    a.write_zarr(tmp_path / "in.zarr")
    write_10x_h5(tmp_path / "in.h5", X, genes, barcodes)
    write_mtx_dir(tmp_path / "mtx", X, genes, barcodes)
    (tmp_path / "mtx_plain").mkdir()  # the same folder gunzipped (scanpy reads v3 files only gzipped)
    for f in (tmp_path / "mtx").iterdir():
        (tmp_path / "mtx_plain" / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    return tmp_path


def test_embed_cells_reads_every_format_alike(inputs):
    r = CliRunner()
    results = {}
    for name in ("in.h5ad", "in.zarr", "in.h5", "mtx", "mtx/matrix.mtx.gz", "mtx_plain", "mtx_plain/matrix.mtx"):
        out = inputs / f"out_{name.replace('/', '_')}.h5ad"
        res = r.invoke(cli, ["embed-cells", str(inputs / name), "-o", str(out), "--n-top-genes", "300"])
        assert res.exit_code == 0, (name, res.output)
        b = ad.read_h5ad(out)
        assert b.n_obs == 60 and list(b.obs_names[:2]) == ["CELL0-1", "CELL1-1"]
        results[name] = b.obsm[keys.X_SCELMO]
    for name, Z in results.items():
        np.testing.assert_allclose(Z, results["in.h5ad"], rtol=1e-5, atol=1e-6, err_msg=name)


def test_embed_genes_reads_every_format(inputs):
    r = CliRunner()
    for name in ("in.zarr", "in.h5", "mtx"):
        res = r.invoke(cli, ["embed-genes", str(inputs / name), "-o", str(inputs / f"ge_{name}")])
        assert res.exit_code == 0, (name, res.output)
        assert "Wrote 7" in res.output  # ~700+ of the 765 genes have a vector


def test_backed_is_h5ad_only_and_unknown_formats_are_refused(inputs):
    r = CliRunner()
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.zarr"), "-o", str(inputs / "o.h5ad"), "--backed"])
    assert res.exit_code == 3 and "--backed needs an .h5ad INPUT" in res.output
    (inputs / "in.csv").write_text("a,b\n")
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.csv"), "-o", str(inputs / "o.h5ad")])
    assert res.exit_code == 3 and "Cannot tell the format" in res.output and ".zarr" in res.output
    res = r.invoke(cli, ["embed-cells", str(inputs / "nope.h5ad"), "-o", str(inputs / "o.h5ad")])
    assert res.exit_code == 3 and "does not exist" in res.output


def test_output_extension_and_overwrite(inputs):
    r = CliRunner()
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.h5ad"), "-o", str(inputs / "out.csv")])
    assert res.exit_code == 3 and "format follows the extension" in res.output
    assert len(res.output.strip().splitlines()) == 1
    out = inputs / "out.h5ad"
    assert r.invoke(cli, ["embed-cells", str(inputs / "in.h5ad"), "-o", str(out)]).exit_code == 0
    before = out.stat().st_mtime_ns
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.h5ad"), "-o", str(out), "--aggregator", "aa"])
    assert res.exit_code == 3 and "--overwrite" in res.output and out.stat().st_mtime_ns == before
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.h5ad"), "-o", str(out), "--aggregator", "aa", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert ad.read_h5ad(out).uns[keys.PROVENANCE]["embed_cells"]["aggregator"] == "aa"


def test_options_checked_before_reading_and_errors_name_flags(inputs):
    r = CliRunner()
    # a misspelt aggregator fails before the (here unreadable) input is even opened
    (inputs / "broken.h5ad").write_bytes(b"not hdf5")
    res = r.invoke(cli, ["embed-cells", str(inputs / "broken.h5ad"), "-o", str(inputs / "o.h5ad"), "--aggregator", "wx"])
    assert res.exit_code == 2 and "wa" in res.output
    res = r.invoke(cli, ["--set", "aggregate.metod=aa", "embed-cells", str(inputs / "broken.h5ad"),
                         "-o", str(inputs / "o.h5ad")])
    assert res.exit_code == 2 and "did you mean aggregate.method?" in res.output
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.h5ad"), "-o", str(inputs / "o.h5ad"), "--layer", "counts"])
    assert res.exit_code == 3 and "no layer 'counts'" in res.output
    res = r.invoke(cli, ["embed-cells", str(inputs / "in.h5ad"), "-o", str(inputs / "o.h5ad"), "--use-raw"])
    assert res.exit_code == 3, res.output
    assert "`--use-raw` but adata.raw is None" in res.output and "`--no-use-raw`" in res.output
    assert "use_raw=" not in res.output
    assert not (inputs / "o.h5ad").exists()


def test_cli_message_translation():
    cmds = [cli.commands["embed-cells"], cli]
    assert cli_message("Pass `layer=None` to use adata.X.", cmds) == "Pass no `--layer` to use adata.X."
    assert cli_message("Pass `layer=` with counts, or `use_raw=True`.", cmds) == \
        "Pass `--layer` with counts, or `--use-raw`."
    assert cli_message("select more genes (`n_top_genes=`, `mask_var=`) or `flavor=\"paper\"`", cmds) == \
        "select more genes (`--n-top-genes`, `--mask-var`) or `--flavor paper`"
    assert cli_message("call `Model.setup_anndata(adata)` with `labels_key=`", cmds) == \
        "call `Model.setup_anndata(adata)` with `labels_key=`"  # no such flag here: unchanged
    labels = __import__("click").Command("x", params=[__import__("click").Option(["--labels-key"])])
    assert cli_message("needs `labels_key=...`", [labels]) == "needs `--labels-key`"


def test_describe_fails_when_every_item_fails(tmp_path):
    r = CliRunner()
    res = r.invoke(cli, ["describe", "genes", "NOTAGENE1", "NOTAGENE2", "-o", str(tmp_path / "d.tsv")])
    assert res.exit_code == 3, res.output  # names the offline table does not know: the input, not a provider
    assert "All 2 descriptions failed" in res.output
    assert "NOTAGENE1:" in res.output and "NOTAGENE2:" in res.output
    assert not (tmp_path / "d.tsv").exists()
    res = r.invoke(cli, ["describe", "genes", "CD3E", "NOTAGENE1", "-o", str(tmp_path / "d.tsv")])
    assert res.exit_code == 0, res.output
    assert "1 failed" in res.output and "NOTAGENE1:" in res.output
    res = r.invoke(cli, ["describe", "genes", "CD3E", "-o", str(tmp_path / "d.xlsx")])
    assert res.exit_code == 3 and "format follows the extension" in res.output


def test_config_show_says_where_values_come_from(tmp_path, monkeypatch):
    (tmp_path / "_cwd" / "scelmo.toml").write_text('[aggregate]\nn_top_genes = 500\n')
    monkeypatch.setenv("SCELMO_GENES__MIN_COVERAGE", "0.3")
    res = CliRunner().invoke(cli, ["--set", "aggregate.method=aa", "config", "show", "--json"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.output)
    assert data["aggregate"]["method"] == "aa" and data["aggregate"]["n_top_genes"] == 500
    o = data["origin"]
    assert o["aggregate.method"] == "--set" and o["aggregate.n_top_genes"] == "./scelmo.toml"
    assert o["genes.min_coverage"] == "env" and o["aggregate.flavor"] == "default"
    assert o["embed.model"] == "profile default"


def test_config_show_on_an_invalid_config(tmp_path):
    (tmp_path / "_cwd" / "scelmo.toml").write_text('[aggregate]\nmetod = "aa"\nn_top_genes = 500\n')
    res = CliRunner().invoke(cli, ["--set", "embed.api_key=sk-secret-value-123", "config", "show"])
    assert res.exit_code == 2
    assert "metod = \"aa\"" in res.output and "n_top_genes = 500" in res.output
    assert "did you mean aggregate.method?" in res.output
    assert "aggregate.metod" in res.output and "./scelmo.toml" in res.output
    assert "sk-secret-value-123" not in res.output


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_text_columns_as_nullable_strings_are_written(counts, tmp_path, fmt):
    """pandas >= 3 stores every text column as a nullable string array, which anndata refuses
    to write by default: the CLI's outputs (and scelmo.io's writers) must still be written."""
    import pandas as pd

    from scelmo import io

    X, genes, barcodes = counts
    a = ad.AnnData(X.astype(np.float32))
    a.obs_names, a.var_names = barcodes, genes
    a.obs["donor"] = pd.array([f"d{i % 3}" for i in range(a.n_obs)], dtype="string")
    a.var["symbol"] = pd.array(genes, dtype="string")
    with ad.settings.override(allow_write_nullable_strings=False):  # anndata's default
        with pytest.raises(RuntimeError, match="allow_write_nullable_strings"):
            a.write_h5ad(tmp_path / "plain.h5ad")  # what anndata does on its own
        src = tmp_path / f"in.{fmt}"
        (io.write_h5ad if fmt == "h5ad" else io.write_zarr)(a, src)
        assert ad.settings.allow_write_nullable_strings is False  # the override does not leak
        out = tmp_path / f"out.{fmt}"
        res = CliRunner().invoke(cli, ["embed-cells", str(src), "-o", str(out), "--n-top-genes", "300"])
    assert res.exit_code == 0, res.output
    b = ad.read_h5ad(out) if fmt == "h5ad" else ad.read_zarr(out)
    assert list(b.obs["donor"].astype(str)) == list(a.obs["donor"].astype(str))
    assert list(b.var["symbol"].astype(str)) == genes
    assert b.obsm[keys.X_SCELMO].shape[0] == a.n_obs


def test_cli_warnings_leave_out_other_packages_deprecation_notices(capsys):
    """A library's DeprecationWarning (anndata about pandas 3 options) is for its developers;
    scelmo's own warnings, and other packages' user warnings, reach the command line."""
    import scelmo.cli as scli

    scli._echo_warning("The 'future.infer_string' option is deprecated", DeprecationWarning,
                       "/venv/lib/python3.11/site-packages/anndata/compat/__init__.py", 259)
    scli._echo_warning("3 cells express none of the selected genes", UserWarning,
                       "/venv/lib/python3.11/site-packages/anndata/_core/anndata.py", 1)
    scli._echo_warning("`old_name` is deprecated; use `new_name`", DeprecationWarning,
                       str(Path(scli.__file__).parent / "tl" / "_embedding.py"), 1)
    err = capsys.readouterr().err
    assert "future.infer_string" not in err
    assert "3 cells express none" in err and "old_name" in err
