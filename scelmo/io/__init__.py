"""Files in and out: atomic writes, AnnData (``.h5ad``/``.zarr``) streaming, R ``.rds`` objects.

==========================  ===========================================================
module                      holds
==========================  ===========================================================
:mod:`scelmo.io._atomic`    atomic files and folders, free-space checks, disk-full errors
:mod:`scelmo.io._anndata`   ``write_h5ad`` / ``write_zarr``, streamed copies, ``read_input``
:mod:`scelmo.io._rds`       Seurat / SingleCellExperiment ``.rds`` <-> AnnData (rpy2)
:mod:`scelmo.io._checksums` SHA-256 of files
==========================  ===========================================================

Everything public is re-exported here: ``from scelmo.io import write_h5ad, read_rds``.
"""

from __future__ import annotations

from scelmo.io._anndata import (
    INPUT_FORMATS,
    ZARR_MARKERS,
    StreamedArray,
    StreamedH5ad,
    estimated_h5ad_bytes,
    has_key,
    input_format,
    read_input,
    streamed_h5ad_copy,
    streamed_zarr_copy,
    write_h5ad,
    write_zarr,
)
from scelmo.io._atomic import (
    DISK_FULL_ERRNOS,
    STALE_TEMP_AGE,
    atomic_dir,
    atomic_path,
    check_output_dir,
    check_writable,
    is_disk_full,
    replace_dir,
    sweep_stale_temps,
)
from scelmo.io._checksums import sha256_file
from scelmo.io._rds import add_reduction, from_sce, from_seurat, read_rds, to_sce, write_rds

__all__ = [
    "DISK_FULL_ERRNOS", "INPUT_FORMATS", "STALE_TEMP_AGE", "ZARR_MARKERS", "StreamedArray", "StreamedH5ad", "add_reduction",
    "atomic_dir", "atomic_path", "check_output_dir", "check_writable", "estimated_h5ad_bytes", "from_sce", "from_seurat", "has_key",
    "input_format", "is_disk_full", "read_input", "read_rds", "replace_dir", "sha256_file", "streamed_h5ad_copy",
    "streamed_zarr_copy", "sweep_stale_temps", "to_sce", "write_h5ad", "write_rds", "write_zarr",
]
