"""Choosing, checking and streaming the cells x genes matrix.

Supports in-memory CSR, CSC, COO and dense arrays, and backed ``.h5ad`` data
(``anndata.read_h5ad(path, backed="r")``). Rows are read in chunks and converted
to float32 one chunk at a time, so the whole matrix is never densified or copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from scelmo.errors import ConfigError, InputError

_INT_OR_FLOAT = "biufc"


def n_rows_cols(matrix: Any) -> tuple[int, int]:
    shape = getattr(matrix, "shape", None)
    if shape is None or len(shape) != 2:
        raise InputError(
            f"Expected a 2-D cells x genes matrix, got {type(matrix).__name__} with shape {shape}."
        )
    return int(shape[0]), int(shape[1])


def as_bool_column(col: Any) -> np.ndarray | None:
    """A True/False ``var`` column as a bool array (bool, nullable boolean, or "True"/"False"
    text or categories); ``None`` when it is not one (or has missing values)."""
    if col.dtype == bool:
        return col.to_numpy()
    if col.isna().any():
        return None
    text = col.astype(str).str.strip().str.lower()
    if text.isin(["true", "false"]).all():
        return (text == "true").to_numpy()
    return None


def select_matrix(adata: Any, *, layer: str | None, use_raw: bool | None) -> tuple[Any, Any, str]:
    """The matrix to aggregate, its gene names, and a label for provenance.

    ``use_raw=None`` follows scanpy: use ``adata.raw`` when it exists and no layer is
    named. ``layer`` and ``use_raw=True`` cannot be combined.
    """
    if layer is not None and use_raw:
        raise InputError("Pass either `layer` or `use_raw=True`, not both.")
    if layer is not None:
        if layer not in adata.layers:
            available = ", ".join(adata.layers.keys()) or "none"
            raise InputError(
                f"Layer {layer!r} not found in adata.layers (available: {available}). "
                "Pass `layer=None` to use adata.X."
            )
        return adata.layers[layer], adata.var_names, f"layers[{layer!r}]"
    if use_raw is None:
        use_raw = adata.raw is not None
    if use_raw:
        if adata.raw is None:
            raise InputError("`use_raw=True` but adata.raw is None. Pass `use_raw=False`.")
        return adata.raw.X, adata.raw.var_names, "raw.X"
    if adata.X is None:
        raise InputError("adata.X is None. Pass `layer=` to choose a layer with expression values.")
    return adata.X, adata.var_names, "X"


def as_float32(chunk: Any) -> Any:
    if sp.issparse(chunk):
        if chunk.format != "csr":
            chunk = chunk.tocsr()
        if chunk.dtype.kind not in _INT_OR_FLOAT:
            raise InputError(f"Expression values must be numeric, got dtype {chunk.dtype}.")
        if chunk.dtype.kind == "c":
            raise InputError("Expression values must be real, got complex numbers.")
        if chunk.dtype != np.float32:
            chunk = chunk.astype(np.float32)
        return chunk
    arr = np.asarray(chunk)
    if arr.dtype.kind not in _INT_OR_FLOAT or arr.dtype.kind == "c":
        raise InputError(f"Expression values must be real numbers, got dtype {arr.dtype}.")
    return np.ascontiguousarray(arr, dtype=np.float32)


#: What to do about negative values, said by :func:`check_values` unless the caller knows better.
SCALED_DATA_FIX = "Pass `layer=` with counts, or `use_raw=True`."


def check_values(chunk: Any, start: int, *, fix: str = SCALED_DATA_FIX) -> None:
    """Raise :class:`InputError` for NaN, infinite or negative values in a float32 chunk;
    ``fix`` says how to pass unscaled values instead."""
    values = chunk.data if sp.issparse(chunk) else chunk
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        row = _first_bad_row(chunk, ~finite) + start
        raise InputError(
            f"The expression matrix contains NaN or infinite values (first at row index {row}, counting from 0). "
            "Fix or remove those cells (e.g. `adata = adata[np.isfinite(X).all(1)]`) first."
        )
    if (values < 0).any():
        row = _first_bad_row(chunk, values < 0) + start
        raise InputError(
            f"The expression matrix contains negative values (first at row index {row}, counting from 0); "
            "scelmo weights genes by expression, so it needs counts or normalised/log values, not "
            f"scaled (z-scored) data. {fix}"
        )


def _first_bad_row(chunk: Any, bad_values: np.ndarray) -> int:
    if sp.issparse(chunk):
        pos = int(np.flatnonzero(bad_values)[0])
        return int(np.searchsorted(chunk.indptr, pos, side="right") - 1)
    return int(np.flatnonzero(bad_values.any(axis=1))[0])


def iter_row_chunks(matrix: Any, chunk_size: int = 10_000, *, fix: str = SCALED_DATA_FIX,
                    row_offset: int = 0) -> Iterator[tuple[int, Any]]:
    """Yield ``(start, chunk)`` with float32 CSR (sparse input) or ndarray (dense input).

    Values are checked as they stream (NaN, inf, negative -> :class:`InputError`, with
    ``fix`` saying how to pass unscaled values; ``row_offset``: where ``matrix`` starts in the
    whole matrix, e.g. a dask block's first row, for the row index the error names).
    """
    n_rows, _ = n_rows_cols(matrix)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}.")
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc"):
        matrix = matrix.tocsr()  # COO/LIL/...: one conversion, same size as the input
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        chunk = as_float32(matrix[start:stop])
        check_values(chunk, row_offset + start, fix=fix)
        yield start, chunk


#: Storage precisions of gene vectors while aggregating (accumulation is always float32).
PRECISIONS = ("float32", "bfloat16", "float16")
#: Largest finite float16.
FLOAT16_MAX = 65504.0


def check_float16_range(x: np.ndarray) -> None:
    """Refuse values float16 cannot hold (|x| > 65,504) instead of storing infinities."""
    big = float(np.max(np.abs(x))) if np.size(x) else 0.0
    if not np.isfinite(big) or big > FLOAT16_MAX:
        raise ConfigError(
            f"Gene vectors reach {big:.3g}, beyond float16's range (65,504); use precision='bfloat16' "
            "(float32's range) or 'float32'."
        )


def round_to_precision(x: np.ndarray, precision: str) -> np.ndarray:
    """float32 values rounded to what ``precision`` stores (as float32); float32 unchanged."""
    if precision == "bfloat16":
        return round_to_bfloat16(x)
    if precision == "float16":
        check_float16_range(x)
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    return x


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even.

    bfloat16 keeps float32's exponent and 8 significant bits: relative error <= 2**-8
    (0.4%) per value, no overflow for any finite float32. Sums of many rounded values
    err far less (the errors are independent): see tests/test_precision.py.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16_bits(b: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (as float32)."""
    return from_bfloat16_bits(to_bfloat16_bits(x))
