"""Distributed engine: cell embeddings of dask arrays, on one machine or a dask cluster.

:func:`scelmo.tl.embed_cells` sends an AnnData whose matrix is a dask array (e.g. from
:func:`read_lazy`, anndata's lazy h5ad / zarr reader) here. Each row block is embedded
by the same :class:`~scelmo.plugin.components.BlockPlan` as in memory, so results are the same
up to float32 rounding:

1. per-gene statistics (for gene selection and centring) are one map-reduce over the
   blocks (:class:`~scelmo.expression.selection.GeneStats` add up);
2. the plan (the prepared gene vectors, the centring offset) is sent to each worker
   once (``Client.scatter(..., broadcast=True)``), not once per task;
3. the cell vectors come back block by block and are written into ``out`` in order (an
   ``obsm`` array, an on-disk h5ad / zarr array: no process holds all cells), or stay
   a lazy dask array (``lazy=True``).

With a ``dask.distributed`` client active (``Client(...)``, or ``scelmo embed-cells
--scheduler ADDRESS`` / ``--workers N``) the blocks run on its workers; otherwise on
dask's local threads. dask is an optional dependency (``pip install 'scelmo[dask]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scelmo.errors import InputError, ScelmoError
from scelmo.expression.matrix import as_bool_column
from scelmo.expression.selection import gene_stats as stats_of
from scelmo.io import has_key as has
from scelmo.plugin import AggregationResult
from scelmo.progress import progress_bar

_INSTALL = "The distributed engine needs dask: pip install 'scelmo[dask]' (dask[array] and distributed)."


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a dask array (without importing dask)."""
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "chunks") and hasattr(x, "to_delayed")


def _dask() -> Any:
    try:
        import dask
        import dask.array  # noqa: F401
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ScelmoError(_INSTALL) from exc
    return dask


def active_client() -> Any:
    """The current ``dask.distributed`` client, or ``None`` (local threads)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # no client
        return None


def row_blocks(matrix: Any) -> Any:
    """``matrix`` with every row block holding all columns (one task per row block)."""
    if len(matrix.chunks[1]) > 1:
        matrix = matrix.rechunk({1: -1})
    return matrix


def head_rows(matrix: Any, n: int) -> Any:
    """The first ``n`` rows, computed (for checks such as 'are these counts?')."""
    return matrix[: min(n, matrix.shape[0])].compute()


def _limit_threads() -> None:
    """Inside a dask worker, let numba use the worker's threads only (no oversubscription)."""
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    import numba

    numba.set_num_threads(max(1, min(int(nthreads), numba.config.NUMBA_NUM_THREADS)))


def _block_stats(block: Any, normalize: bool, start: int = 0) -> Any:
    return stats_of(block, normalize=normalize, chunk_size=max(1, block.shape[0]), row_offset=start)


def _sum(parts: list[Any]) -> Any:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def gene_stats(matrix: Any, *, normalize: bool) -> Any:
    """:func:`scelmo.expression.selection.gene_stats` of a dask array: one map-reduce over row blocks."""
    dask = _dask()
    matrix = row_blocks(matrix)
    starts = np.concatenate([[0], np.cumsum(matrix.chunks[0])])
    blocks = matrix.to_delayed().ravel()
    parts = [dask.delayed(_block_stats)(b, normalize, int(s)) for b, s in zip(blocks, starts[:-1], strict=True)]
    while len(parts) > 1:  # tree reduction: no task adds up more than 16 partial sums
        parts = [dask.delayed(_sum)(parts[i : i + 16]) for i in range(0, len(parts), 16)]
    return dask.compute(parts[0])[0]


def _run_block(plan: Any, block: Any, start: int) -> Any:
    _limit_threads()
    return plan.run(block, start)


def _block_tasks(plan: Any, matrix: Any) -> tuple[list[Any], np.ndarray]:
    dask = _dask()
    matrix = row_blocks(matrix)
    client = active_client()
    # the gene vectors travel to each worker once: a scattered (broadcast) object, or one
    # graph key shared by every task on the local scheduler
    ref = client.scatter(plan, broadcast=True, hash=False) if client is not None else dask.delayed(plan, pure=True)
    starts = np.concatenate([[0], np.cumsum(matrix.chunks[0])])
    blocks = matrix.to_delayed().ravel()
    tasks = [dask.delayed(_run_block, pure=True)(ref, b, int(s)) for b, s in zip(blocks, starts[:-1], strict=True)]
    return tasks, starts


def _in_order(tasks: list[Any], window: int) -> Iterator[tuple[int, Any]]:
    """Compute ``tasks`` with at most ``window`` in flight; yield ``(index, result)`` in order."""
    dask = _dask()
    client = active_client()
    if client is None:
        for lo in range(0, len(tasks), window):
            yield from enumerate(dask.compute(*tasks[lo : lo + window]), start=lo)
        return
    futures: dict[int, Any] = {}
    nxt = 0
    for i in range(len(tasks)):
        while nxt < len(tasks) and nxt < i + window:
            futures[nxt] = client.compute(tasks[nxt])
            nxt += 1
        fut = futures.pop(i)
        yield i, fut.result()
        fut.release()


def aggregate(
    aggregator: Any,
    matrix: Any,
    embedding: np.ndarray,
    *,
    out: Any = None,
    lazy: bool = False,
    progress: bool | None = None,
    **plan_options: Any,
) -> Any:
    """:meth:`scelmo.plugin.components.Aggregator.aggregate` for a dask array (same arguments).

    Returns an :class:`~scelmo.plugin.components.AggregationResult`; with ``lazy=True`` its
    ``embedding`` is a dask array and the coverage figures are ``nan`` (nothing is
    computed yet).
    """

    dask = _dask()
    n_cells, n_genes = (int(s) for s in matrix.shape)
    if embedding.shape[0] != n_genes:
        raise InputError(f"The gene embedding has {embedding.shape[0]} rows but the matrix has {n_genes} genes.")
    plan = aggregator.plan(embedding, **plan_options)
    tasks, starts = _block_tasks(plan, matrix)
    if lazy:
        import dask.array as da

        parts = [da.from_delayed(dask.delayed(getattr)(t, "block"), shape=(int(starts[i + 1] - starts[i]), plan.dim),
                                 dtype=np.float32) for i, t in enumerate(tasks)]
        emb = da.concatenate(parts, axis=0) if parts else da.zeros((0, plan.dim), dtype=np.float32)
        return AggregationResult(emb, np.zeros(0, dtype=np.int64), float("nan"), float("nan"), n_genes,
                                 plan.n_genes_covered)
    client = active_client()
    workers = len(client.scheduler_info().get("workers", {})) if client is not None else 1
    window = max(2, 2 * workers)
    if out is None:
        out = np.zeros((n_cells, plan.dim), dtype=np.float32)
    total = covered = 0.0
    empty: list[np.ndarray] = []
    with progress_bar(total=n_cells, desc=f"aggregating ({aggregator.name}, dask)", unit="cell",
                      enabled=progress) as bar:
        for i, part in _in_order(tasks, window):
            out[int(starts[i]) : int(starts[i + 1])] = part.block
            total += part.total_expression
            covered += part.covered_expression
            if part.empty_cells.size:
                empty.append(part.empty_cells)
            bar.update(int(starts[i + 1] - starts[i]))
    empty_idx = np.concatenate(empty) if empty else np.zeros(0, dtype=np.int64)
    return AggregationResult(out, empty_idx, total, covered, n_genes, plan.n_genes_covered)


# --------------------------------------------------------------------------- files
#: ``uns`` key of a :func:`read_lazy` AnnData: which matrix of the file its ``X`` is.
LAZY_SOURCE = "scelmo_lazy_source"


def read_lazy(path: str | Path, *, layer: str | None = None, use_raw: bool | None = None,
              chunk_size: int = 10_000) -> Any:
    """An AnnData of ``path`` (.h5ad or .zarr) whose matrix is a lazy dask array.

    ``obs`` and ``var`` are read into memory (small); the expression matrix (``layer``,
    else ``raw/X`` when present and ``use_raw`` is not ``False``, else ``X``) stays on
    disk and is read in row blocks of ``chunk_size`` cells by whichever process computes
    them. The result's ``X`` is that matrix, and ``var`` the matching genes;
    ``uns["scelmo_lazy_source"]`` says which matrix it was (``"raw.X"``, ``"X"``, a layer).
    """
    import anndata as ad
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    _dask()
    path = Path(path)
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        root = zarr.open_group(str(path), mode="r")
    else:
        import h5py

        root = h5py.File(path, "r")
    if layer is not None:
        if not has(root, "layers") or not has(root["layers"], layer):
            raise InputError(f"{path} has no layer {layer!r}.")
        elem, var_elem, source = root["layers"][layer], root["var"], f"layers[{layer!r}]"
    elif has(root, "raw") and has(root["raw"], "X") and use_raw is not False:
        elem, var_elem, source = root["raw"]["X"], root["raw"]["var"], "raw.X"
    else:
        elem, var_elem, source = root["X"], root["var"], "X"
    encoding = elem.attrs.get("encoding-type", "") if hasattr(elem, "attrs") else ""
    if str(encoding) == "csc_matrix":  # (anndata: "Only the major axis can be chunked", with a traceback)
        raise InputError(
            f"{path}'s matrix ({source}) is stored column by column (CSC), which cannot be read in blocks of cells. "
            "Convert it once to rows (CSR): `adata = anndata.read_h5ad(path); adata.X = adata.X.tocsr(); "
            "adata.write_h5ad(path2)` (the same for a layer or raw), or embed it without dask (no --workers / "
            "--scheduler)."
        )
    X = read_elem_lazy(elem, chunks=(int(chunk_size), -1))
    var = read_elem(var_elem)
    if source == "raw.X":
        _carry_var_flags(read_elem(root["var"]), var)
    adata = ad.AnnData(X=X, obs=read_elem(root["obs"]), var=var)
    adata.uns[LAZY_SOURCE] = source  # (provenance; a raw matrix's genes are not the file's var)
    return adata


def _carry_var_flags(x_var: Any, raw_var: Any) -> None:
    """Copy the boolean columns of the file's ``var`` (scanpy's ``highly_variable`` over ``X``)
    that ``raw/var`` lacks onto the raw genes by name (``False`` for the others), as
    ``embed_cells`` reads them from an in-memory AnnData with ``.raw`` (a trial: the dask path
    chose other genes than the in-memory one). A column that flags mostly genes the raw matrix
    lacks (``X`` renamed) is not carried."""
    raw_names = {str(g) for g in raw_var.index}
    for col in x_var.columns:
        flags = None if col in raw_var else as_bool_column(x_var[col])
        if flags is None:
            continue
        flagged = {str(g) for g, f in zip(x_var.index, flags, strict=True) if f}
        if flagged and len(flagged & raw_names) >= 0.5 * len(flagged):
            raw_var[col] = [str(g) in flagged for g in raw_var.index]


@contextlib.contextmanager
def cluster(scheduler: str | None = None, workers: int | None = None, *, timeout: float = 30.0) -> Iterator[Any]:
    """A ``dask.distributed`` client for an existing scheduler (``scheduler`` address) or a
    LocalCluster of ``workers`` processes (one thread each); closed on exit. ``timeout``:
    seconds to wait for the scheduler before a :class:`~scelmo.errors.ScelmoError`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ScelmoError(_INSTALL) from exc
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout:g}s")
        except (OSError, TimeoutError) as exc:  # (distributed raises OSError / TimeoutError for an unreachable one)
            raise ScelmoError(
                f"Cannot reach a dask scheduler at {scheduler} within {timeout:g} s ({type(exc).__name__}). Check the address "
                "(`dask scheduler` prints it) and that the scheduler is running and reachable from here, or use "
                "--workers N for a local cluster."
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    with LocalCluster(n_workers=int(workers or 2), threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        yield client
