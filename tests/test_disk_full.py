"""A full disk: one line, exit code 3, no temporaries left beside the output, an existing
output left as it was. ENOSPC is injected at the writers' boundary (h5py datasets, numpy,
pandas) partway through a real write, and, where this sandbox lets us mount one, on a real
tiny tmpfs (in a private mount namespace)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from scelmo import datasets, io, testing
from scelmo.cli import cli
from scelmo.errors import DiskFullError

MESSAGE = "No space left on device while writing {}; nothing was written."


@pytest.fixture
def files(tmp_path):
    """pbmc68k_reduced (700 real cells) as .h5ad, and a 384-d gene table saved beside it."""
    a = datasets.pbmc68k_reduced()
    src = tmp_path / "in.h5ad"
    a.write_h5ad(src)
    ge_dir = tmp_path / "ge"
    testing.random_gene_embeddings(list(a.var_names), dim=384, seed=0).save(ge_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return src, ge_dir, out_dir


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def runner(monkeypatch):
    # the CLI leaves at once after a full disk (os._exit: h5py can crash at interpreter exit);
    # in-process, turn that into a normal exit
    import scelmo.cli as cli_mod

    monkeypatch.setattr(cli_mod.os, "_exit", lambda code: sys.exit(code))
    return CliRunner()


def _check_failed(res, out: Path) -> None:
    assert res.exit_code == 3, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [f"Error: {MESSAGE.format(out)}"], res.output
    assert "Traceback" not in res.output
    assert _leftovers(out.parent) == []


def _fail_after(monkeypatch, cls, name, n_ok):
    """Let ``cls.name`` succeed ``n_ok`` times, then raise ENOSPC (a write failing partway)."""
    real = getattr(cls, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            _enospc()
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def test_embed_cells_h5ad_disk_full(files, runner, monkeypatch):
    src, ge, out_dir = files
    out = out_dir / "out.h5ad"
    calls = _fail_after(monkeypatch, h5py.Group, "create_dataset", 5)  # anndata writes, then the disk fills
    res = runner.invoke(cli, ["embed-cells", str(src), "-o", str(out), "--gene-embeddings", str(ge)])
    assert calls["n"] > 5
    _check_failed(res, out)
    assert not out.exists()


def test_embed_cells_backed_disk_full_keeps_old_output(files, runner, monkeypatch):
    src, ge, out_dir = files
    out = out_dir / "out.h5ad"
    out.write_bytes(b"previous result")
    calls = _fail_after(monkeypatch, h5py.Dataset, "__setitem__", 0)  # the first streamed block fails
    res = runner.invoke(cli, ["embed-cells", str(src), "-o", str(out), "--gene-embeddings", str(ge),
                              "--backed", "--overwrite", "--chunk-size", "100"])
    assert calls["n"] >= 1
    _check_failed(res, out)
    assert out.read_bytes() == b"previous result"


def test_embed_cells_backed_precheck(files, runner, monkeypatch):
    src, ge, out_dir = files
    out = out_dir / "out.h5ad"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    res = runner.invoke(cli, ["embed-cells", str(src), "-o", str(out), "--gene-embeddings", str(ge), "--backed"])
    _check_failed(res, out)


def test_embed_genes_disk_full(files, runner, monkeypatch):
    src, _, out_dir = files
    out = out_dir / "genes"

    def partial_save(file, arr, **kwargs):
        Path(file).write_bytes(b"\x93NUMPY" + b"\0" * 100)  # part of the file, then the disk is full
        _enospc()

    monkeypatch.setattr(np, "save", partial_save)
    res = runner.invoke(cli, ["embed-genes", "--genes", "CD3E", "--genes", "MS4A1", "-o", str(out)])
    _check_failed(res, out)
    assert not out.exists()


def test_describe_disk_full(files, runner, monkeypatch):
    import pandas as pd

    _, _, out_dir = files
    out = out_dir / "d.tsv"

    def partial_csv(self, path, *args, **kwargs):
        Path(path).write_text("item\ttext\nCD3E\t")
        _enospc()

    monkeypatch.setattr(pd.DataFrame, "to_csv", partial_csv)
    res = runner.invoke(cli, ["describe", "genes", "CD3E", "MS4A1", "-o", str(out)])
    _check_failed(res, out)


def test_write_h5ad_api_raises_disk_full_error(files, monkeypatch):
    src, _, out_dir = files
    a = ad.read_h5ad(src)
    out = out_dir / "api.h5ad"
    _fail_after(monkeypatch, h5py.Group, "create_dataset", 3)
    with pytest.raises(DiskFullError, match="No space left on device while writing .*api.h5ad; nothing was written"):
        io.write_h5ad(a, out)
    assert _leftovers(out_dir) == [] and not out.exists()


def test_stale_temporaries_are_swept(files, monkeypatch):
    src, ge, out_dir = files
    out = out_dir / "out.h5ad"
    old_file = out_dir / ".out.h5ad.dead1234.tmp"
    old_file.write_bytes(b"x" * 10)
    old_dir = out_dir / ".genes.dead5678.tmp"
    old_dir.mkdir()
    (old_dir / "vectors.npy").write_bytes(b"x")
    young = out_dir / ".out.h5ad.alive999.tmp"  # perhaps a run still going: kept
    young.write_bytes(b"y")
    other = out_dir / ".other.h5ad.dead0000.tmp"  # another output's: not ours to judge
    other.write_bytes(b"z")
    two_days = time.time() - 2 * 24 * 3600
    for p in (old_file, old_dir, other):
        os.utime(p, (two_days, two_days))
    io.write_h5ad(ad.read_h5ad(src), out)
    testing.random_gene_embeddings(["CD3E", "MS4A1", "LYZ"], dim=4).save(out_dir / "genes")
    assert not old_file.exists() and not old_dir.exists()
    assert young.exists() and other.exists()
    assert ad.read_h5ad(out).n_obs == 700


# ----------------------------------------------------------------------------- a real full tmpfs
def _can_mount_tmpfs(tmp_path) -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def _scelmo_on_tmpfs(mnt: Path, size: str, args: list[str]) -> tuple[int, str, list[str]]:
    """Run ``scelmo ARGS`` with a fresh tmpfs of ``size`` at ``mnt``; exit code, stderr, files left there."""
    script = (
        f'mount -t tmpfs -o size={size} tmpfs "{mnt}" || exit 99\n'
        f'"{sys.executable}" -m scelmo --no-progress "$@" 2>"{mnt}.stderr"\n'
        f'rc=$?\nls -A "{mnt}" >"{mnt}.ls"\nexit $rc\n'
    )
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], capture_output=True, timeout=300,
                       text=True)
    assert r.returncode != 99, "mounting the tmpfs failed"
    left = Path(f"{mnt}.ls").read_text().split()
    return r.returncode, Path(f"{mnt}.stderr").read_text(), left


def _embed_cells_on_tmpfs(files, tmp_path, size: str, extra: list[str] | None = None):
    """``scelmo embed-cells`` onto a fresh tmpfs of ``size``: exit code, stderr, files left, output path."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces, or root)")
    src, ge, _ = files
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = mnt / "out.h5ad"
    args = ["embed-cells", str(src), "-o", str(out), "--gene-embeddings", str(ge), *(extra or [])]
    return (*_scelmo_on_tmpfs(mnt, size, args), out)


@pytest.mark.parametrize(("size", "backed"), [("3m", False), ("1m", False), ("3200k", True), ("1m", True)])
def test_real_tiny_tmpfs(files, tmp_path, size, backed):
    rc, err, left, out = _embed_cells_on_tmpfs(files, tmp_path, size, ["--backed"] if backed else [])
    assert rc == 3, err  # not a crash (139) nor a traceback (1)
    assert err.strip() == f"Error: {MESSAGE.format(out)}", err
    assert left == []  # no .out.h5ad.*.tmp, no partial output


def test_real_tmpfs_that_fits_still_writes(files, tmp_path):
    rc, err, left, _ = _embed_cells_on_tmpfs(files, tmp_path, "16m")
    assert rc == 0, err
    assert left == ["out.h5ad"]


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from scelmo import io

    old = os.umask(0o022)
    try:
        with io.atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
        with io.atomic_dir(tmp_path / "outdir") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "outdir").stat().st_mode) == 0o755


def test_estimated_size_is_a_lower_bound_of_the_written_file(files, tmp_path):
    import anndata as ad

    from scelmo.io import estimated_h5ad_bytes

    src, _ge, _ = files
    a = ad.read_h5ad(src)
    a.obsm["X_test"] = np.ones((a.n_obs, 64), dtype=np.float32)
    out = tmp_path / "a.h5ad"
    a.write_h5ad(out)
    est = estimated_h5ad_bytes(a)
    assert a.obsm["X_test"].nbytes < est <= out.stat().st_size
