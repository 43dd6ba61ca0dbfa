from __future__ import annotations

import json
import signal

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from scelmo import keys
from scelmo.cli import cli
from scelmo.genes import GeneEmbeddings


def test_embed_genes_then_embed_cells(pbmc, tmp_path):
    small = pbmc[:50].copy()
    small.write_h5ad(tmp_path / "in.h5ad")
    r = CliRunner()
    res = r.invoke(cli, ["embed-genes", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "ge")])
    assert res.exit_code == 0, res.output
    ge = GeneEmbeddings.load(tmp_path / "ge")
    assert len(ge) > 700
    # which of INPUT's genes got no vector is said (trial finding: only --genes-file said so)
    assert f"{765 - len(ge)} of INPUT's 765 genes have no vector (e.g. RP11-" in res.output, res.output
    res = r.invoke(cli, ["embed-cells", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out.h5ad"),
                         "--gene-embeddings", str(tmp_path / "ge"), "--aggregator", "aa"])
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm[keys.X_SCELMO].shape == (50, 384)
    assert out.uns[keys.PROVENANCE]["embed_cells"]["aggregator"] == "aa"


def test_embed_genes_from_list(tmp_path):
    (tmp_path / "genes.txt").write_text("CD3E\nms4a1\nENSG00000105374\n")
    res = CliRunner().invoke(cli, ["embed-genes", "--genes-file", str(tmp_path / "genes.txt"),
                                   "--genes", "HBB", "-o", str(tmp_path / "ge")])
    assert res.exit_code == 0, res.output
    assert GeneEmbeddings.load(tmp_path / "ge").genes == ["CD3E", "HBB", "MS4A1", "NKG7"]
    assert "not known genes" not in res.output
    # a gene both in --genes and in the file is one gene, not a duplicate with Python advice (a trial)
    res = CliRunner().invoke(cli, ["embed-genes", "--genes-file", str(tmp_path / "genes.txt"),
                                   "--genes", "CD3E", "-o", str(tmp_path / "g1")])
    assert res.exit_code == 0 and "var_names_make_unique" not in res.output, res.output
    # a name that is no gene is said, not dropped in silence
    res = CliRunner().invoke(cli, ["embed-genes", "--genes", "CD3E", "--genes", "NOTAGENE", "-o", str(tmp_path / "g2")])
    assert res.exit_code == 0, res.output
    assert "1 of the 2 names given are not known genes and got no vector: NOTAGENE" in res.output


def test_backed_embed_cells_matches_in_memory(pbmc, tmp_path):
    small = pbmc[:120].copy()
    small.write_h5ad(tmp_path / "in.h5ad")
    r = CliRunner()
    assert r.invoke(cli, ["embed-cells", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "m.h5ad")]).exit_code == 0
    res = r.invoke(cli, ["embed-cells", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "b.h5ad"),
                         "--backed", "--chunk-size", "17"])
    assert res.exit_code == 0, res.output
    m, b = ad.read_h5ad(tmp_path / "m.h5ad"), ad.read_h5ad(tmp_path / "b.h5ad")
    np.testing.assert_allclose(m.obsm[keys.X_SCELMO], b.obsm[keys.X_SCELMO], rtol=1e-5, atol=1e-7)
    assert b.uns[keys.PROVENANCE]["embed_cells"]["n_cells"] == 120
    np.testing.assert_array_equal(b.X.toarray() if hasattr(b.X, "toarray") else b.X, small.X)
    # from X (no raw): the genes used, as the in-memory run writes them (a trial found the
    # backed file without)
    small.raw.to_adata().write_h5ad(tmp_path / "x.h5ad")
    for extra, out in (([], "mx.h5ad"), (["--backed"], "bx.h5ad")):
        res = r.invoke(cli, ["embed-cells", str(tmp_path / "x.h5ad"), "-o", str(tmp_path / out), *extra])
        assert res.exit_code == 0, res.output
    m, b = ad.read_h5ad(tmp_path / "mx.h5ad"), ad.read_h5ad(tmp_path / "bx.h5ad")
    assert keys.GENES_USED in m.var and list(b.var.columns) == list(m.var.columns)
    np.testing.assert_array_equal(b.var[keys.GENES_USED].to_numpy(), m.var[keys.GENES_USED].to_numpy())


def test_plugins_command():
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0
    assert "zeroshot" in res.output and "wa" in res.output and "scelmo" in res.output


def test_cache_stats_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("SCELMO_CACHE__PATH", str(tmp_path / "c.sqlite"))
    r = CliRunner()
    assert "empty" in r.invoke(cli, ["cache", "stats"]).output
    # run the model (the shipped precomputed vectors answer without touching the cache)
    args = ["--set", "embed.options.precomputed=false", "embed-genes", "--genes", "CD3E", "-o", str(tmp_path / "g")]
    assert r.invoke(cli, args).exit_code == 0
    res = r.invoke(cli, ["cache", "stats"])
    assert "embed" in res.output and "all-MiniLM" in res.output
    res = r.invoke(cli, ["cache", "clear", "--yes"])
    assert "Deleted 1 entries" in res.output


def test_demo(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert "ARI" in res.output and "PCA(50)" in res.output
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert {r["method"].split(" ")[0] for r in metrics["results"]} == {"scelmo", "scelmo,", "control:", "scanpy:"}
    assert (tmp_path / "demo" / "umap_scelmo.png").stat().st_size > 20_000


def test_embed_cells_flavor_options(tmp_path):
    import anndata as ad
    import numpy as np

    import scelmo.datasets as sd

    a = sd.pbmc68k_reduced()
    a.X = a.layers["counts"]
    a.write_h5ad(tmp_path / "in.h5ad")
    for args, check in ((["--n-top-genes", "300"], ("scelmo", "hvg:300")),
                        (["--flavor", "paper"], ("paper", "all"))):
        res = CliRunner().invoke(cli, ["embed-cells", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out.h5ad"),
                                       "--overwrite", *args])
        assert res.exit_code == 0, res.output
        out = ad.read_h5ad(tmp_path / "out.h5ad")
        info = out.uns["scelmo"]["embed_cells"]
        assert (info["flavor"], info["gene_selection"]) == check
        assert np.isfinite(out.obsm["X_scelmo"]).all()


def test_outputs_never_replace_what_scelmo_did_not_write(pbmc, tmp_path):
    """Trial findings: `embed-genes w/in.h5ad -o w --overwrite` deleted the input and every other
    file in w; an unwritable output was found only after the work, as a traceback."""
    import os

    import pytest

    w = tmp_path / "w"
    w.mkdir()
    pbmc[:30].copy().write_h5ad(w / "in.h5ad")
    (w / "notes.txt").write_text("keep")
    res = CliRunner().invoke(cli, ["embed-genes", str(w / "in.h5ad"), "-o", str(w), "--overwrite"])
    assert res.exit_code == 3 and "holds other files" in res.output
    assert sorted(p.name for p in w.iterdir()) == ["in.h5ad", "notes.txt"]
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys here to stand for an unwritable directory")
    res = CliRunner().invoke(cli, ["embed-cells", str(w / "in.h5ad"), "-o", "/sys/kernel/out.h5ad"])
    assert res.exit_code == 3 and "not writable" in res.output and "Traceback" not in res.output


def test_offline_refusal_is_a_configuration_error(tmp_path):
    """Trial finding: `--offline` with a network model exited 1 (a general error), not 2."""
    res = CliRunner().invoke(cli, ["--offline", "--set", "describe.model=openai/gpt-4o-mini", "embed-genes",
                                   "--genes", "CD3E", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "offline = true" in res.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_removes_the_temporary_output(tmp_path, signum):
    """Trial finding: SIGTERM (timeout, SLURM, docker stop) left the hidden temporary copy of
    OUTPUT behind (full input size); it now unwinds like Ctrl-C, exit code 128 + 15. Ctrl-C
    exited 1 ("Aborted!"); it now exits 128 + 2 as shells expect."""
    import os
    import subprocess
    import sys
    import time

    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.random(40_000, 3_000, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    X.data = np.ceil(X.data * 5)
    import pandas as pd
    import scanpy as sc

    genes = [str(g) for g in sc.datasets.pbmc68k_reduced().raw.var_names]  # real symbols, then padding
    var = pd.DataFrame(index=genes + [f"PAD{i}" for i in range(3_000 - len(genes))])
    ad.AnnData(X, var=var).write_h5ad(tmp_path / "in.h5ad")
    env = {**os.environ, "SCELMO_NO_PROGRESS": "1"}
    # (a test run in a background job inherits an ignored SIGINT: restore the default in the child)
    proc = subprocess.Popen([sys.executable, "-m", "scelmo", "embed-cells", "in.h5ad", "-o", "out.h5ad", "--backed"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out.h5ad.*.tmp")) and proc.poll() is None:
        time.sleep(0.02)
    assert list(tmp_path.glob(".out.h5ad.*.tmp")), "the run never started writing"
    proc.send_signal(signum)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert not list(tmp_path.glob(".out.h5ad.*")) and not (tmp_path / "out.h5ad").exists()


def test_usage_mistakes_exit_2_as_the_docs_say(tmp_path):
    """Trial finding: a missing INPUT or -o exited 3 (reserved for input data), not 2."""
    r = CliRunner()
    for args, match in ((["describe", "genes", "CD3E"], "-o/--output"),
                        (["embed-genes", "-o", str(tmp_path / "g")], "Give an INPUT"),
                        (["embed-genes", "--genes", "CD3E", "-o", str(tmp_path / "g"), "--max-cost", "-1"], "max-cost")):
        res = r.invoke(cli, args)
        assert res.exit_code == 2 and match in res.output, (args, res.exit_code, res.output)


@pytest.mark.parametrize("dense", [False, True])
def test_backed_layer_streams_from_disk_and_equals_in_memory(tmp_path, dense):
    """Trial finding: `--backed --layer counts` read the whole layer into memory (anndata's backed
    mode loads layers): peak memory grew with the cells. A sparse layer now streams like X, and
    so does a dense one (an h5py dataset read by row blocks, as backed dense X is)."""
    import scanpy as sc
    import scipy.sparse as sp

    import scelmo.datasets as sd

    a = sd.pbmc68k_reduced()
    b = ad.AnnData(sp.csr_matrix(a.layers["counts"]), obs=a.obs[[]].copy(), var=a.var[[]].copy())
    b.layers["counts"] = b.X.toarray() if dense else b.X.copy()
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    b.uns[keys.PROVENANCE] = {"embed_genes": {"note": "an earlier step"}}
    b.write_h5ad(tmp_path / "in.h5ad")
    outs = {}
    for name, extra in (("backed", ["--backed"]), ("memory", [])):
        res = CliRunner().invoke(cli, ["--no-progress", "embed-cells", str(tmp_path / "in.h5ad"), "-o",
                                       str(tmp_path / f"{name}.h5ad"), "--layer", "counts", *extra])
        assert res.exit_code == 0, res.output
        assert "reads the dense layer" not in res.output
        outs[name] = ad.read_h5ad(tmp_path / f"{name}.h5ad")
    np.testing.assert_array_equal(outs["backed"].obsm[keys.X_SCELMO], outs["memory"].obsm[keys.X_SCELMO])
    record = outs["backed"].uns[keys.PROVENANCE]
    assert record["embed_cells"]["matrix"] == "layers['counts']" and "embed_genes" in record
    assert "counts" in outs["backed"].layers
