"""The contract the R package calls: primitives in, primitives out.

The R package ``scelmo`` (``r_wrapper/``) reaches Python through reticulate. Matrices,
sparse matrices and ``NA`` do not cross reticulate reliably across versions (reticulate
1.28 with numpy 2 fails on matrices; ``NA`` becomes ``True`` / ``INT_MIN`` / ``"NA"``;
see ``docs/r.md``), so everything crosses as **raw little-endian bytes** (R ``raw`` ->
Python ``bytearray``) plus shapes, and every metadata column carries an NA mask.

A *payload* (built by the R function ``scelmo:::.scelmo_payload``) is a dict::

    n_obs, n_vars      ints (cells, genes)
    x, i, p            bytes of a genes x cells dgCMatrix: x float64, i/p int32.
                       Read as cells x genes CSR (indptr = p, indices = i): no transpose.
    obs_names          bytes: NUL-terminated UTF-8 strings (R ``writeBin(character)``)
    var_names          bytes: the same
    obs                list of columns, each {"name", "type", "data", "na", "levels"}:
                       type logical (1 byte each), integer (int32), double (float64),
                       character (NUL-terminated strings) or factor (int32 codes, 1-based,
                       plus ``levels`` as strings); ``na`` is 1 byte per element (1 = NA).

Every entry point returns a dict with ``ok``: ``{"ok": True, ...}`` or
``{"ok": False, "error_class": "InputError", "message": "..."}``; the R side turns the
latter into an R condition of class ``scelmo_error`` (and ``scelmo_input_error`` ...),
never a half-modified object. Python warnings are returned in ``warnings`` (a list of
strings) and re-issued in R. Results cross back as bytes: ``Z`` is float32,
column-major (R's order) with ``dim = [rows, cols]``.

The fine-tuning entry points (:func:`train`, :func:`predict`, :func:`save`, :func:`load`)
also hand R the :class:`scelmo.Model` object itself, which R keeps as an opaque handle
(``scelmo_model``) and passes back; it lives only as long as the R session's Python.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy
import numpy as np

from scelmo import __version__, keys, tl
from scelmo import config as cfgmod
from scelmo import plugin as plugins
from scelmo.config import get_settings
from scelmo.errors import InputError, ScelmoError
from scelmo.expression.matrix import check_values
from scelmo.expression.selection import (
    GeneStats,
    looks_like_counts,
    normalize_chunk,
    should_normalize,
)
from scelmo.expression.selection import gene_stats as compute
from scelmo.io import atomic_dir
from scelmo.io._rds import principal_axes as seurat_axes
from scelmo.knowledge import roles
from scelmo.model import MODEL_FILE, Model
from scelmo.redact import mask
from scelmo.tl._embedding import flavor_plan

#: Bumped when the payload layout changes; the R package checks it.
PROTOCOL = 1


# --------------------------------------------------------------------------- decoding
def _buf(raw: Any) -> memoryview | bytes:
    if raw is None:
        return b""
    if isinstance(raw, bytes | bytearray | memoryview):
        return raw
    if isinstance(raw, list | tuple):  # an empty R raw() can arrive as []
        return bytes(raw)
    raise ScelmoError(f"r_bridge expected raw bytes, got {type(raw).__name__}.")


def decode_strings(raw: Any, n: int | None = None) -> list[str]:
    """NUL-terminated UTF-8 strings (what R's ``writeBin(character, raw())`` writes)."""
    data = bytes(_buf(raw))
    if not data:
        out: list[str] = []
    else:
        if not data.endswith(b"\0"):
            raise ScelmoError("Malformed string bytes from R (no terminating NUL).")
        out = data[:-1].decode("utf-8").split("\0")
    if n is not None and len(out) != n:
        raise ScelmoError(f"Expected {n} strings from R, got {len(out)}.")
    return out


def encode_strings(values: Sequence[Any]) -> bytearray:
    """The inverse of :func:`decode_strings` (R reads it with ``readBin(x, "character", n)``)."""
    out = bytearray()
    for v in values:
        s = str(v)
        if "\0" in s:
            raise ScelmoError(f"String {s!r} contains a NUL character, which R cannot hold.")
        out += s.encode("utf-8") + b"\0"
    return out


def _array(raw: Any, dtype: str, n: int) -> np.ndarray:
    arr = np.frombuffer(_buf(raw), dtype=dtype)
    if arr.size != n:
        raise ScelmoError(f"Expected {n} values of {dtype} from R, got {arr.size}.")
    return arr


def _column(col: Mapping[str, Any], n: int) -> Any:
    import pandas as pd

    kind = str(col["type"])
    na = _array(col.get("na"), "u1", n).astype(bool) if n else np.zeros(0, dtype=bool)
    if kind == "logical":
        values = _array(col["data"], "u1", n).astype(bool)
        return pd.arrays.BooleanArray(values, na.copy())
    if kind == "integer":
        values = _array(col["data"], "<i4", n).copy()
        values[na] = 0
        return pd.arrays.IntegerArray(values, na.copy())
    if kind == "double":
        values = _array(col["data"], "<f8", n).copy()
        values[na] = np.nan
        return values
    if kind == "character":
        strings = decode_strings(col["data"], n)
        return np.array([None if m else s for s, m in zip(strings, na, strict=True)], dtype=object)
    if kind == "factor":
        levels = decode_strings(col.get("levels"))
        codes = _array(col["data"], "<i4", n).astype(np.int64) - 1  # R codes are 1-based
        codes[na] = -1
        if codes.size and (codes.max(initial=-1) >= len(levels) or codes.min(initial=0) < -1):
            raise ScelmoError(f"Factor column {col['name']!r}: codes outside its levels.")
        return pd.Categorical.from_codes(codes, categories=levels, ordered=bool(col.get("ordered", False)))
    raise ScelmoError(f"Column {col.get('name')!r}: unsupported type {kind!r}.")


def decode_obs(columns: Sequence[Mapping[str, Any]] | None, obs_names: Sequence[str]) -> Any:
    """Metadata columns (with NA masks) -> a pandas DataFrame indexed by ``obs_names``."""
    import pandas as pd

    n = len(obs_names)
    data = {str(c["name"]): _column(c, n) for c in (columns or [])}
    return pd.DataFrame(data, index=pd.Index(obs_names, dtype=object))


def to_anndata(payload: Mapping[str, Any]) -> Any:
    """Build an AnnData (cells x genes CSR, obs from meta.data) from an R payload.

    The matrix arrays are views on the bytes R sent (no copy of ``x`` / ``i``).
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    n_obs, n_vars = int(payload["n_obs"]), int(payload["n_vars"])
    p = _array(payload["p"], "<i4", n_obs + 1)
    nnz = int(p[-1]) if p.size else 0
    x = _array(payload["x"], "<f8", nnz)
    i = _array(payload["i"], "<i4", nnz)
    X = sp.csr_matrix((x, i, p), shape=(n_obs, n_vars))
    if not np.isfinite(x).all():
        # said now, before any cast: R's NA is a signalling NaN, and casting it to float32 made
        # numpy warn "invalid value encountered in cast" ahead of this error (an R trial)
        check_values(X, 0)
    obs_names = decode_strings(payload["obs_names"], n_obs)
    var_names = decode_strings(payload["var_names"], n_vars)
    obs = decode_obs(payload.get("obs"), obs_names)
    var = pd.DataFrame(index=pd.Index(var_names, dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's "transforming to str index" notes
        adata = ad.AnnData(X=X, obs=obs, var=var)
    return adata


# --------------------------------------------------------------------------- encoding
def _matrix_bytes(Z: np.ndarray) -> bytearray:
    """float32, column-major (R's order)."""
    return bytearray(np.asarray(Z, dtype="<f4").tobytes(order="F"))


def _config(config: Any) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return {str(k): _config(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [_config(v) for v in config]
    return config


def _call(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` and turn its result, warnings and errors into primitives for R."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
        except ScelmoError as exc:
            return {"ok": False, "error_class": type(exc).__name__, "message": mask(str(exc)),
                    "warnings": _warning_texts(caught)}
        except Exception as exc:  # noqa: BLE001 - everything must reach R as a message
            return {
                "ok": False, "error_class": "InternalError",
                "message": mask(f"{type(exc).__name__}: {exc}"),
                "traceback": mask("".join(traceback.format_exception(exc))),
                "warnings": _warning_texts(caught),
            }
    out = dict(out)
    out["ok"] = True
    out["warnings"] = _warning_texts(caught)
    return out


def _warning_texts(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    seen: list[str] = []
    for w in caught:
        if issubclass(w.category, DeprecationWarning | PendingDeprecationWarning | FutureWarning):
            continue
        text = mask(str(w.message))
        if text not in seen:
            seen.append(text)
    return seen


# --------------------------------------------------------------------------- entry points
def info() -> dict[str, Any]:
    """Versions, for the R package's start-up check and ``scelmo_config_show``."""

    return {
        "ok": True, "scelmo": __version__, "protocol": PROTOCOL,
        "python": sys.version.split()[0], "executable": sys.executable,
        "numpy": numpy.__version__,
        "has_annotate": _has_annotate(),
    }


def environ() -> dict[str, str]:
    """Python's ``os.environ`` (read once when Python started), for R's first :func:`sync_environ`."""
    return dict(os.environ)


def sync_environ(names: Sequence[str], values: Sequence[str], unset: Sequence[str] = ()) -> dict[str, Any]:
    """Set ``names`` to ``values`` in ``os.environ`` and remove ``unset``: what R changed with
    ``Sys.setenv()`` / ``Sys.unsetenv()`` since the last call (Python's ``os.environ`` is read
    once, when it starts, and does not see them). Nothing else is touched."""
    for name in unset:
        os.environ.pop(str(name), None)
    for name, value in zip(names, values, strict=True):
        os.environ[str(name)] = str(value)
    return {"ok": True}


def _has_annotate() -> bool:
    return hasattr(tl, "annotate")


def receive(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a payload and report what arrived (used by tests and ``scelmo:::.check_payload``)."""

    def run() -> dict[str, Any]:
        adata = to_anndata(payload)
        return {
            "n_obs": adata.n_obs, "n_vars": adata.n_vars, "nnz": int(adata.X.nnz),
            "sum": float(adata.X.sum()), "columns": [str(c) for c in adata.obs.columns],
            "n_na": [int(adata.obs[c].isna().sum()) for c in adata.obs.columns],
        }

    return _call(run)


def gene_stats(payload: Mapping[str, Any], *, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per-gene sums of one piece of a dataset (:class:`scelmo.expression.selection.GeneStats`).

    R adds the pieces' ``sums`` (4 x genes float64, little-endian bytes) and ``n`` and
    passes the total to :func:`embed_cells`, so an object sent in several batches of
    cells is embedded exactly as in one call.
    """

    def run() -> dict[str, Any]:
        adata = to_anndata(payload)
        plan = flavor_plan(get_settings(_config(config)).aggregate)
        st = compute(adata.X, normalize=should_normalize(plan["normalize"], adata.X))
        return {"sums": bytearray(np.asarray(st.sums, dtype="<f8").tobytes()), "n": int(st.n_cells),
                "length": int(st.sums.size)}

    return _call(run)


def embed_cells(
    payload: Mapping[str, Any],
    *,
    aggregator: str | None = "wa",
    config: Mapping[str, Any] | None = None,
    source: str = "counts",
    gene_embeddings: str | None = None,
    gene_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Cell embeddings for an R payload.

    ``gene_stats`` (``sums`` bytes and ``n``, from :func:`gene_stats` added up over
    batches) replaces the piece's own gene statistics. Returns ``Z`` (cells x d float32
    bytes, column-major), ``dim`` and ``provenance`` (``uns["scelmo"]["embed_cells"]``,
    strings and numbers only).
    """

    def run() -> dict[str, Any]:
        adata = to_anndata(payload)
        stats = None
        if gene_stats is not None:
            sums = _array(gene_stats["sums"], "<f8", 4 * adata.n_vars).reshape(4, adata.n_vars)
            stats = GeneStats(int(gene_stats["n"]), sums.astype(np.float64))
        tl.embed_cells(
            adata, aggregator=aggregator, use_raw=False, config=_config(config),
            gene_embeddings=gene_embeddings, gene_stats=stats, progress=False,
        )
        Z = adata.obsm[keys.X_SCELMO]
        prov = dict(adata.uns[keys.PROVENANCE]["embed_cells"])
        prov["matrix"] = source
        prov["version"] = __version__
        return {"Z": _matrix_bytes(Z), "dim": [int(Z.shape[0]), int(Z.shape[1])], "provenance": prov}

    return _call(run)


def principal_axes(Z: Any, dim: Any) -> dict[str, Any]:
    """A cell embedding (cells x d float32 bytes, column-major) turned to its principal axes
    (:func:`scelmo.io._rds.principal_axes`), for ``RunScELMo``'s reduction. Computed here
    rather than in R, whose reference BLAS took ~40 s for 200,000 cells. Returns ``Z``
    (rotated, float32 bytes), ``dim``, ``rotation`` (d x d float64 bytes, column-major:
    unrotated = rotated @ rotation.T) and ``stdev`` (float64 bytes, each rotated column's SD).
    """

    def run() -> dict[str, Any]:
        n, d = (int(x) for x in dim)
        rotated, R, sd = seurat_axes(_array(Z, "<f4", n * d).reshape((n, d), order="F"))
        return {"Z": _matrix_bytes(rotated), "dim": [n, d],
                "rotation": bytearray(np.asarray(R, dtype="<f8").tobytes(order="F")),
                "stdev": bytearray(np.asarray(sd, dtype="<f8").tobytes())}

    return _call(run)


def embed_genes(
    genes: Any,
    n: int,
    *,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Gene vectors for ``n`` gene names (NUL-terminated bytes).

    Returns ``Z`` (genes x d float32, column-major, only genes that got a vector),
    ``genes`` (their input names, bytes), ``symbols`` (resolved symbols, bytes) and
    ``manifest``.
    """

    def run() -> dict[str, Any]:
        import anndata as ad
        import pandas as pd

        names = decode_strings(genes, int(n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.AnnData(
                X=np.zeros((0, len(names)), dtype=np.float32),
                var=pd.DataFrame(index=pd.Index(names, dtype=object)),
            )
        tl.embed_genes(adata, config=_config(config), progress=False)
        mask = np.asarray(adata.var[keys.HAS_EMBEDDING], dtype=bool)
        Z = np.asarray(adata.varm[keys.GENE_EMBEDDING])[mask]
        kept = [g for g, m in zip(names, mask, strict=True) if m]
        symbols = [s for s, m in zip(adata.var[keys.GENE_SYMBOL], mask, strict=True) if m]
        manifest = dict(adata.uns[keys.PROVENANCE]["embed_genes"])
        return {
            "Z": _matrix_bytes(Z), "dim": [int(Z.shape[0]), int(Z.shape[1]) if Z.ndim == 2 else 0],
            "genes": encode_strings(kept), "symbols": encode_strings(symbols), "manifest": manifest,
        }

    return _call(run)


def annotate(
    payload: Mapping[str, Any],
    *,
    embedding: Any = None,
    reference: Mapping[str, Any] | None = None,
    reference_embedding: Any = None,
    ref_labels: str | None = None,
    cell_types: Any = None,
    n_cell_types: int = 0,
    cell_type_texts: Any = None,
    k: int = 10,
    aggregator: str | None = "wa",
    config: Mapping[str, Any] | None = None,
    key_added: str = keys.LABEL,
    gene_embeddings: str | None = None,
) -> dict[str, Any]:
    """Cell-type labels: kNN transfer from ``reference`` or zero-shot from ``cell_types``.

    Calls ``scelmo.tl.annotate(adata, reference=..., ref_labels=..., cell_types=..., k=...,
    key_added=...)``, which writes ``obs[key_added]`` and ``obs[key_added + "_score"]``.
    ``embedding`` / ``reference_embedding`` (float32 column-major bytes, cells x d) reuse
    an existing scelmo reduction; otherwise cells are embedded first with ``aggregator``.
    ``ref_labels`` names a column of the reference's metadata. ``cell_type_texts``
    (optional, one per type) are descriptions embedded instead of the names. ``gene_embeddings``:
    a saved gene table's directory for every embedding made here (``AnnotateScELMo``'s config
    ``gene.embeddings``, as ``RunScELMo`` takes it). Returns ``labels`` (bytes),
    ``label_na`` (1 byte per cell) and ``scores`` (float64 bytes).
    """

    def run() -> dict[str, Any]:
        if not hasattr(tl, "annotate"):
            raise ScelmoError(
                "This scelmo Python package has no `scelmo.tl.annotate` yet; upgrade the Python "
                "package (scelmo::install_scelmo()) to use AnnotateScELMo."
            )
        cfg = _config(config)
        if reference is not None and embedding is None:
            # as scelmo.tl.annotate does for a query with no embedding: it is embedded with the
            # reference's gene selection, centring and gene table (embedding it alone first
            # placed a query of few cell types differently from its reference)
            adata = to_anndata(payload)
            cfg = _with_aggregator(cfg, aggregator)
        else:
            adata = _embedded(payload, embedding, aggregator, cfg, gene_embeddings)
        ref = (_embedded(reference, reference_embedding, aggregator, cfg, gene_embeddings) if reference is not None
               else None)
        if ref is not None and ref_labels is not None and ref_labels not in ref.obs:
            raise ScelmoError(f"The reference has no metadata column {ref_labels!r}.")
        types: Any = decode_strings(cell_types, int(n_cell_types)) if cell_types is not None else None
        if types is not None and cell_type_texts is not None:
            types = dict(zip(types, decode_strings(cell_type_texts, len(types)), strict=True))
        tl.annotate(
            adata, reference=ref, ref_labels=ref_labels, cell_types=types, k=int(k),
            config=cfg, key_added=key_added, progress=False, gene_embeddings=gene_embeddings,
        )
        labels = adata.obs[key_added]
        na = labels.isna().to_numpy()
        scores = np.asarray(adata.obs[key_added + "_score"], dtype="<f8")
        prov = adata.uns.get(keys.PROVENANCE, {}).get("annotate", {})
        return {
            "labels": encode_strings(["" if m else str(v) for v, m in zip(labels, na, strict=True)]),
            "label_na": bytearray(na.astype("u1").tobytes()),
            "scores": bytearray(scores.tobytes()),
            "provenance": dict(prov),
        }

    return _call(run)


def _with_aggregator(cfg: Any, aggregator: str | None) -> Any:
    """``cfg`` with ``aggregate.method`` set to ``aggregator`` (R's argument wins, as in ``_embedded``)."""
    if aggregator is None:
        return cfg
    return {**dict(cfg or {}), "aggregate.method": aggregator}


def _embedded(payload: Mapping[str, Any], embedding: Any, aggregator: str | None, cfg: Any,
              gene_embeddings: str | None = None) -> Any:
    adata = to_anndata(payload)
    if embedding is not None:
        d = len(_buf(embedding)) // 4 // max(adata.n_obs, 1)
        Z = np.frombuffer(_buf(embedding), dtype="<f4").reshape((adata.n_obs, d), order="F")
        adata.obsm[keys.X_SCELMO] = np.ascontiguousarray(Z)
    else:
        tl.embed_cells(adata, aggregator=aggregator, use_raw=False, config=cfg, progress=False,
                       gene_embeddings=gene_embeddings)
    return adata


def config_show(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved configuration (secrets masked) as nested primitives."""

    def run() -> dict[str, Any]:
        settings = cfgmod.get_settings(_config(config))
        return {"config": _drop_none(cfgmod.show(settings))}

    return _call(run)


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- fine-tuning
#: Sidecar file :func:`save` writes next to ``scelmo.Model.save``'s files: the training
#: genes' resolved symbols and the normalisation, so a model loaded in another session
#: matches a query's genes exactly as the session that trained it.
SIDECAR = "r_bridge.json"
_NORMALIZE = ("auto", "log1p", "none")


def _check_normalize(normalize: str) -> None:
    if normalize not in _NORMALIZE:
        raise InputError(f"normalize must be one of {', '.join(_NORMALIZE)}; got {normalize!r}.")


def _normalized(adata: Any, normalize: str) -> str:
    """Log-normalise ``adata.X`` in place when asked (``auto``: when it holds counts)."""

    _check_normalize(normalize)
    if normalize == "log1p" or (normalize == "auto" and looks_like_counts(adata.X)):
        adata.X = normalize_chunk(adata.X)
        return "log1p"
    return "none"


def _r_genes(model: Any) -> list[str]:
    """The model's genes as the training data named them (the Model knows them by their
    resolved symbols: PLPP5 for a Seurat object's PPAPDC1B); R queries are aligned to these.

    Recorded at training, one per training column (``genes``). For models saved before: a
    model gene that is itself a data name keeps it, else the data name whose symbol it is.
    (An R trial: the symbol map inverted name -> symbol, first name winning, so Kang's
    HNRNPU became HNRNPU-AS1, which resolves to it: two model slots read one query column.)"""
    extra = _extra(model)
    genes = extra.get("genes")
    if isinstance(genes, list) and len(genes) == len(model.train_genes):
        return [str(g) for g in genes]
    symbols = {str(k): str(v) for k, v in extra.get("symbols", {}).items()}
    original: dict[str, str] = {}
    for name, symbol in symbols.items():
        if symbol not in symbols:  # (a symbol that is a data name of its own is that column's)
            original.setdefault(symbol, name)
    return [str(g) if str(g) in symbols else original.get(str(g), str(g)) for g in model.train_genes]


def _class_order(classes: list[str], order: Sequence[str] | None) -> list[str]:
    """``classes`` in R's ``order`` (a factor's levels), any others after them."""
    if not order:
        return classes
    known = set(classes)
    first = [c for c in dict.fromkeys(order) if c in known]
    placed = set(first)
    return first + [c for c in classes if c not in placed]


def _model_info(model: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """What the R handle shows and checks (primitives only)."""
    genes = _r_genes(model)
    hist = model.history
    history = {str(c): [float(v) for v in hist[c].to_numpy(dtype=float)] for c in hist.columns
               if np.issubdtype(hist[c].dtype, np.number)}
    train = {k: v for k, v in dict(model.train_info).items() if isinstance(v, str | int | float | bool)}
    return {
        "head": str(model.head_name),
        "classes": _class_order([str(c) for c in model.head.classes], extra.get("class_order")),
        "classes_ordered": bool(extra.get("class_order")),
        "predicts_labels": bool(model.head.supports("labels")),
        "labels_key": model.setup.labels_key, "batch_key": model.setup.batch_key,
        "genes": encode_strings(genes), "n_genes": len(genes),
        "train": train, "history": history,
        "normalize": str(extra.get("normalize", "unknown")),
        "version": __version__,
    }


def _extra(model: Any) -> dict[str, Any]:
    extra = getattr(model, "_r_bridge", None)
    return dict(extra) if isinstance(extra, Mapping) else {}


def train(
    payload: Mapping[str, Any],
    *,
    head: str = "annotation",
    labels_key: str | None = None,
    batch_key: str | None = None,
    head_options: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    gene_embeddings: str | None = None,
    normalize: str = "auto",
    class_order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train a :class:`scelmo.Model` on an R payload (what ``TrainScELMo`` calls).

    The payload's counts are log-normalised first (``normalize="auto"``: when they are
    whole numbers; ``"log1p"``: always; ``"none"``: used as they are). ``labels_key`` /
    ``batch_key`` name metadata columns of the payload. ``head_options`` go to the head
    (e.g. ``latent``), ``training`` to :meth:`scelmo.Model.train` (``max_epochs``,
    ``batch_size``, ``lr``, ``early_stopping``, ``seed``, ``device``, ``num_threads``,
    ...). ``class_order``: the order R shows the classes in (a factor's levels), kept with the
    model (and its saved sidecar). Returns ``model`` (the Python object; R keeps it in its
    handle) and ``info`` (head, classes, training genes as bytes, training summary and
    per-epoch history).
    """

    def run() -> dict[str, Any]:
        if head == "perturbation":
            raise InputError("The perturbation head is not available from R yet (it needs a control "
                              "condition and predicts expression); use the Python API (scelmo.Model).")
        if head not in plugins.heads:
            raise InputError(f"Unknown head {head!r}: use head = \"annotation\" (cell types; needs labels) or "
                              f"\"integration\" (batch removal; needs batch). Registered heads: "
                              f"{', '.join(plugins.heads.names())}.")
        adata = to_anndata(payload)
        for key, what in ((labels_key, "labels"), (batch_key, "batch")):
            if key is not None and key not in adata.obs:
                raise InputError(f"The {what} column {key!r} did not arrive with the data.")
        used = _normalized(adata, str(normalize))
        Model.setup_anndata(adata, labels_key=labels_key, batch_key=batch_key)
        model = Model(adata, head=head, gene_embeddings=gene_embeddings, config=_config(config),
                      **dict(_config(head_options) or {}))
        settings = dict(_config(training) or {})
        settings.setdefault("progress", False)
        model.train(**settings)
        symbols = dict(zip(map(str, adata.var_names), map(str, adata.var[keys.GENE_SYMBOL]), strict=True)) \
            if keys.GENE_SYMBOL in adata.var else {}
        model._r_bridge = {"normalize": used, "symbols": symbols}
        if len(model.train_genes) == adata.n_vars:  # (one model gene per training column, in order)
            model._r_bridge["genes"] = [str(v) for v in adata.var_names]
        if class_order is not None:
            model._r_bridge["class_order"] = [str(c) for c in ([class_order] if isinstance(class_order, str)
                                                              else class_order)]
        if used == "log1p":  # normalised here over the training genes: Python queries are scaled the same way
            model.train_info["normalized_counts"] = True
        model.adata = None  # the handle keeps the weights, not the training data
        return {"model": model, "info": _model_info(model, model._r_bridge)}

    return _call(run)


def predict(
    payload: Mapping[str, Any],
    model: Any,
    *,
    method: str = "knn",
    k: int | None = None,
    normalize: str = "auto",
    min_overlap: float = 0.1,
) -> dict[str, Any]:
    """Apply a trained model to an R payload (what ``PredictScELMo`` calls).

    The query's genes are matched to the model's training genes by name: model genes the
    query lacks count as not expressed (a warning says how many), query genes the model
    did not see are dropped. Fewer than ``min_overlap`` of the model's genes present is
    an error. Returns ``Z`` (cells x latent float32 bytes, column-major) and ``dim``;
    for heads that predict labels also ``labels`` (bytes), ``scores`` (float64 bytes: the
    winning class's vote share for ``"knn"``, its probability for ``"classifier"``) and
    ``classes``; and ``n_missing`` / ``n_model_genes``.
    """

    def run() -> dict[str, Any]:
        import pandas as pd
        import scipy.sparse as sp

        if not isinstance(model, Model):
            raise InputError("`model` is not a scelmo model; train one with TrainScELMo() or load one with "
                              "LoadScELMoModel().")
        if method not in ("knn", "classifier"):
            raise InputError(f"method must be \"knn\" or \"classifier\"; got {method!r}.")
        _check_normalize(str(normalize))  # before any work (the query is normalised after alignment)
        try:
            share = float(min_overlap)
        except (TypeError, ValueError):
            share = float("nan")
        if isinstance(min_overlap, bool) or not 0 < share <= 1:
            raise InputError(f"min_overlap (R: min.overlap) must be a share in (0, 1]; got {min_overlap!r}.")
        query = to_anndata(payload)
        genes = _r_genes(model)
        pos = {str(g): j for j, g in enumerate(query.var_names)}
        if any(g not in pos for g in genes):  # a query named otherwise (Ensembl IDs, aliases): by symbol
            vocab = roles.vocabulary()
            if vocab is not None:
                # each query column feeds one model gene: a column that is a model gene under its own
                # name (CASC7) is not also taken for another model gene it is an alias of (AGO2)
                exact = {pos[g] for g in genes if g in pos}
                by_symbol: dict[str, int] = {}
                for j, sym in enumerate(vocab.resolve([str(v) for v in query.var_names]).symbols):
                    if sym and j not in exact:
                        by_symbol.setdefault(sym, j)
                for g, sym in zip(genes, model.train_genes, strict=True):
                    if g not in pos and str(sym) in by_symbol:
                        pos[g] = by_symbol.pop(str(sym))
        have = np.array([g in pos for g in genes], dtype=bool)
        n_found = int(have.sum())
        if not genes or n_found < max(1, share * len(genes)):
            example = ", ".join(genes[:3])
            qexample = ", ".join(map(str, query.var_names[:3]))
            hint = (f"the model was trained on other genes (model: {example}, ...; query: {qexample}, ...). Use a "
                    "query with the same gene naming (symbols vs Ensembl IDs, same species), or train a model on "
                    "genes the query has." if n_found == 0 else
                    "Lower `min_overlap` (R: `min.overlap`) to predict from the genes it has, or train a model on "
                    "genes the query has.")
            raise InputError(
                f"The query shares {n_found} of the model's {len(genes)} genes (needed: at least "
                f"{100 * share:.0f}%): {hint}"
            )
        n_missing = len(genes) - n_found
        pos = {g: pos[g] for g in genes if g in pos}  # (the model's genes only: the query's columns they use)
        if n_missing:
            warnings.warn(
                f"{n_missing} of the model's {len(genes)} genes are not in the query; they are treated as "
                f"not expressed (zero). {query.n_vars - len(set(pos.values()))} query genes the model did not see are "
                "ignored.",
                stacklevel=2,
            )
        cols = np.array([pos[g] for g in genes if g in pos], dtype=np.int64)
        X = sp.csr_matrix(query.X)[:, cols].tocsc()
        # place the found genes at their model positions; the others stay empty (zero)
        target = np.flatnonzero(have)
        S = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (np.arange(len(cols)), target)),
                          shape=(len(cols), len(genes)))
        aligned = sp.csr_matrix(X @ S, dtype=np.float32)
        empty = np.diff(aligned.indptr) == 0  # cells expressing none of the model's genes
        symbols = _extra(model).get("symbols", {})
        var = pd.DataFrame(index=pd.Index(genes, dtype=object))
        if symbols:
            var[keys.GENE_SYMBOL] = [symbols.get(g, g) for g in genes]
        import anndata as ad

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aligned_adata = ad.AnnData(X=aligned, obs=pd.DataFrame(index=query.obs_names), var=var)
        # normalised over the model's genes, as the training cells were over theirs (the
        # query's other genes would change its library sizes)
        _normalized(aligned_adata, str(normalize))
        Z = model.get_latent_representation(aligned_adata)
        out: dict[str, Any] = {
            "Z": _matrix_bytes(Z), "dim": [int(Z.shape[0]), int(Z.shape[1])],
            "n_missing": n_missing, "n_model_genes": len(genes),
        }
        if model.head.supports("labels"):
            with warnings.catch_warnings():  # (said below, in R's terms)
                warnings.filterwarnings("ignore", message=".*express none of the genes the model has vectors")
                probs = model.predict(aligned_adata, method=method, return_probabilities=True,
                                      k=None if k is None else int(k))
            P = probs.to_numpy(dtype=np.float64)
            empty = empty | np.isnan(P).all(1)  # (also cells whose only genes have no vector)
            classes = [str(c) for c in probs.columns]
            score = P.max(1)
            if method == "knn":  # vote shares, less the 1e-6 tie-break the head adds to the nearest cell's class
                score = np.minimum(np.round(score, 5), 1.0)
            labels = [classes[i] for i in P.argmax(1)]
            if empty.any():  # no evidence for any class: NA in R (not one of the model's classes)
                warnings.warn(f"{int(empty.sum())} query cells express none of the model's genes; their labels "
                              "and scores are NA.", stacklevel=2)
                labels = ["" if e else lab for lab, e in zip(labels, empty, strict=True)]
                score = np.where(empty, np.nan, score)
            out["labels"] = encode_strings(labels)
            out["scores"] = bytearray(score.astype("<f8").tobytes())
            out["classes"] = classes
        return out

    return _call(run)


def save(model: Any, path: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``model`` with :meth:`scelmo.Model.save` plus the R sidecar (:data:`SIDECAR`)."""

    def run() -> dict[str, Any]:
        if not isinstance(model, Model):
            raise InputError("`model` is not a scelmo model.")
        target = Path(path).expanduser()
        if target.exists() and not overwrite:
            raise InputError(f"{target} exists; pass overwrite = TRUE to replace it, or choose another path.")
        # the model and its sidecar appear together: both are written into one temporary
        # sibling folder that replaces `target` only when complete
        with atomic_dir(target, overwrite=bool(overwrite), marker=MODEL_FILE) as tmp:
            staged = model.save(tmp / "model")
            (staged / SIDECAR).write_text(json.dumps({"format": "scelmo.r_bridge", **_extra(model)}),
                                          encoding="utf-8")
            for item in staged.iterdir():
                item.rename(tmp / item.name)
            staged.rmdir()
        return {"path": str(target.resolve())}

    return _call(run)


def load(path: str) -> dict[str, Any]:
    """Load a model saved by :func:`save` (or by :meth:`scelmo.Model.save` in Python)."""

    def run() -> dict[str, Any]:
        target = Path(path).expanduser()
        if not target.is_dir():
            raise InputError(f"{target} is not a directory; give the path passed to SaveScELMoModel().")
        model = Model.load(target)
        side = target / SIDECAR
        extra: dict[str, Any] = {}
        if side.is_file():
            extra = {k: v for k, v in json.loads(side.read_text(encoding="utf-8")).items() if k != "format"}
        model._r_bridge = extra
        return {"model": model, "info": _model_info(model, extra), "path": str(target.resolve())}

    return _call(run)
