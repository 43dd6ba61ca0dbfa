"""``wa_torch``: the ``wa`` aggregation computed with torch on a device (GPU path).

``C = (X / X.sum(1)) @ E`` exactly as the ``wa`` aggregator, but each row chunk (a
float32 CSR block streamed by :meth:`scelmo.plugin.components.Aggregator.aggregate`, so memory
stays bounded) becomes a torch sparse CSR tensor on the device and is multiplied with
``E``, which is moved to the device once. On CUDA this runs cuSPARSE; on CPU torch's
sparse kernel (the numba kernel of ``wa`` is faster there: use ``wa`` on CPU).

Use it with ``scelmo.tl.embed_cells(adata, aggregator="wa_torch")`` or
``--set aggregate.method=wa_torch --set aggregate.options.device=cuda``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from scelmo.plugin import Aggregator, ComponentOptions

from .device import import_torch, resolve_device


class TorchAggregatorOptions(ComponentOptions):
    #: "auto" (CUDA > MPS > CPU), "cpu", "cuda", "cuda:N", "mps".
    device: str = "auto"


class TorchWeightedAverageAggregator(Aggregator):
    """``wa`` (expression-weighted mean of gene vectors) with torch, on CUDA when present."""

    name = "wa_torch"
    Options = TorchAggregatorOptions

    def prepare(self, embedding: np.ndarray) -> Any:
        torch = import_torch()
        dev = resolve_device(self.options.device)
        return dev, torch.from_numpy(np.ascontiguousarray(embedding, dtype=np.float32)).to(dev)

    def aggregate_chunk(self, chunk: Any, prepared: Any, *, n_genes: int) -> np.ndarray:
        torch = import_torch()
        dev, E = prepared
        if sp.issparse(chunk):
            csr = chunk.tocsr()
            totals = np.asarray(csr.sum(axis=1), dtype=np.float64).ravel()
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                X = torch.sparse_csr_tensor(
                    torch.from_numpy(csr.indptr.astype(np.int64)),
                    torch.from_numpy(csr.indices.astype(np.int64)),
                    torch.from_numpy(csr.data.astype(np.float32, copy=False)),
                    size=csr.shape,
                    check_invariants=False,  # scipy's CSR is valid by construction
                ).to(dev)
            out = torch.sparse.mm(X, E) if csr.nnz else torch.zeros((csr.shape[0], E.shape[1]), device=dev)
        else:
            dense = np.ascontiguousarray(chunk, dtype=np.float32)
            totals = dense.sum(axis=1, dtype=np.float64)
            out = torch.from_numpy(dense).to(dev) @ E
        w = self.row_weights(chunk, n_genes, totals)
        out = out * torch.from_numpy(w).to(dev)[:, None]
        return out.cpu().numpy()

    def row_weights(self, chunk: Any, n_genes: int, totals: np.ndarray | None = None) -> np.ndarray:
        """``1 / total`` per cell (0 for an empty cell): linear, so centred input works."""
        if totals is None:
            totals = np.asarray(chunk.sum(axis=1), dtype=np.float64).ravel()
        return np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
