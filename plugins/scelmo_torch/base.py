"""The base class of the torch task heads and its training loop.

Stable API for heads in this plugin (and third-party heads):

* :class:`TrainingConfig` - how to train (epochs, batch size, learning rate, early
  stopping, device, seed, CPU threads, mixed precision, progress). Pydantic, unknown
  keys are errors. ``TrainingConfig.from_any(None | dict | TrainingConfig)``.
* :class:`TorchHead` - a :class:`scelmo.plugin.TaskHead` whose network is a
  :class:`torch.nn.Module`. A subclass sets ``name``, ``Options`` and ``capabilities``
  (and implements the methods of its capabilities, see :mod:`scelmo.plugin.heads`) and:

  ``fit(X, labels=None, *, gene_vectors, gene_names, batch, perturbations, training)``
      prepare its data (numpy/scipy), set ``self.spec`` (a JSON-able dict with
      everything :meth:`build_module` needs: sizes, class names, ...), then call
      ``self.train_module(train_rows, training)`` and return ``self``.
  ``build_module() -> torch.nn.Module``
      the network, built from ``self.spec`` and ``self.options`` only (so that
      :meth:`load_state` can rebuild it without the training data).
  ``training_loss(rows) -> Tensor | (Tensor, dict[str, float | Tensor])``
      the loss on one mini-batch, given the indices ``rows`` (a numpy int array drawn
      from ``train_rows``); runs inside autocast on CUDA. The optional dict holds
      parts of the loss to log (means over the epoch go into ``history``); detached
      0-d tensors avoid a host sync per batch on a GPU.
  ``validation_score() -> float | None``  (optional)
      higher is better; ``None`` (the default) disables early stopping.
  ``prepare_training(device)`` / ``finish_training()``  (optional)
      move the head's data tensors to ``device`` before the loop / free them after.
  ``configure_optimizer(params, training)``  (optional)
      default ``torch.optim.Adam(lr, weight_decay)``.
  ``training_defaults``  (optional class attribute)
      the head's own defaults for unset :class:`TrainingConfig` fields; build the
      config with ``self.training_config(training)`` in ``fit``.

  It gets: :meth:`train_module` (shuffled mini-batches from a numpy Generator, Adam,
  bf16 autocast on CUDA, validation every ``check_every`` epochs with the best
  weights kept and restored (a later check within ``tolerance`` of the best replaces
  it), early stopping after ``patience`` checks without improvement, a progress bar
  with loss and validation score, ``self.history`` with the loss, score and seconds
  per epoch), :meth:`inference` (eval mode, no grad,
  on a device), :meth:`save_state` / :meth:`load_state` (weights + spec, and the
  named numpy arrays in ``self.arrays``, in a directory, written atomically), and
  the helpers :func:`rows_to_tensor` (dense float32 tensor of some rows of a
  CSR/dense matrix, on a device), :class:`DeviceRows` (a CSR matrix held on a GPU,
  dense mini-batches gathered there) and :func:`split_rows` (train/validation split,
  stratified when labels are given).

torch is imported lazily inside methods, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scelmo.errors import ConfigError, IntegrityError, ScelmoError
from scelmo.io import atomic_path
from scelmo.plugin import TaskHead
from scelmo.progress import progress_bar

from .device import autocast, describe_device, import_torch, torch_session

WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "head.json"
ARRAYS_FILE = "arrays.npz"


def _damaged_file(path: Path, problem: object) -> IntegrityError:
    """The error for a saved head's file that cannot be parsed (truncated or overwritten)."""
    text = str(problem).strip()
    detail = text.splitlines()[0].split(". ")[0].rstrip(".")[:200] if text else type(problem).__name__
    return IntegrityError(
        f"{path} cannot be read ({detail}); the saved head is damaged (an incomplete copy?). "
        + IntegrityError.RESTORE_MODEL
    )


class TrainingConfig(BaseModel):
    """How a torch head is trained (the paper's settings are the defaults)."""

    model_config = ConfigDict(extra="forbid")

    #: Upper bound on passes over the training cells (paper: 30).
    max_epochs: int = Field(30, ge=1)
    #: Cells per mini-batch (paper: 512).
    batch_size: int = Field(512, ge=2)
    #: Adam learning rate (paper: 1e-3).
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    #: Keep the weights with the best validation score and stop when it stops improving.
    early_stopping: bool = True
    #: Epochs between validation checks (paper: 5).
    check_every: int = Field(5, ge=1)
    #: Checks without improvement before stopping (paper: 1, stop at the first).
    patience: int = Field(1, ge=1)
    #: Validation-score differences up to this are noise: a later check within
    #: ``tolerance`` of the best score so far is kept instead of it (the more trained
    #: weights) and counts as no worse. ``None``: the head's
    #: :meth:`TorchHead.validation_tolerance` (0 unless the head says otherwise).
    tolerance: float | None = Field(None, ge=0.0)
    #: Fraction of the training cells held out for validation (paper: 0.1).
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    #: "auto" (CUDA > MPS > CPU), "cpu", "cuda", "cuda:N", "mps".
    device: str = "auto"
    seed: int = Field(0, ge=0)
    #: torch CPU threads during training (default 1 on CPU; see scelmo_torch.device).
    num_threads: int | None = Field(None, ge=1)
    #: bf16 autocast on CUDA (ignored elsewhere).
    amp: bool = True
    #: Keep a sparse expression matrix on the GPU for the whole run and gather each
    #: mini-batch there (no host densify + copy per batch). ``None``: when it takes at
    #: most half of the free GPU memory. Ignored on CPU.
    data_on_device: bool | None = None
    #: Progress bar (default: on a terminal or in a notebook).
    progress: bool | None = None

    @field_validator("max_epochs", "batch_size", "check_every", "patience", "seed", "num_threads", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool | np.bool_):  # (an int to pydantic: max_epochs=True trained one epoch)
            raise ValueError("expected a whole number, got a boolean")
        return value

    @classmethod
    def from_any(cls, value: TrainingConfig | dict[str, Any] | None = None, **overrides: Any) -> TrainingConfig:
        """Build from ``None``, a dict or an instance, with keyword overrides (``None`` ignored)."""
        base = value.model_dump() if isinstance(value, TrainingConfig) else dict(value or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**base)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"Invalid training settings: {problems}. Allowed: {', '.join(cls.model_fields)}.") from None


def split_rows(
    n: int, fraction: float, rng: np.random.Generator, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` into (train, validation) rows; stratified by ``labels`` if given.

    Each label keeps at least one training row; with ``fraction == 0`` or ``n < 10``
    the validation set is empty.
    """
    if fraction <= 0 or n < 10:
        return rng.permutation(n), np.zeros(0, dtype=np.int64)
    if labels is None:
        perm = rng.permutation(n)
        n_val = max(1, int(round(n * fraction)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    val = []
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n_val = int(round(len(idx) * fraction))
        n_val = min(n_val, len(idx) - 1)
        val.append(idx[:n_val])
    v = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[v] = False
    return np.flatnonzero(mask), v


def rows_to_tensor(matrix: Any, rows: np.ndarray | slice | None, device: Any, *, dtype: Any = None) -> Any:
    """Dense float32 tensor of ``matrix[rows]`` on ``device`` (only those rows are densified)."""
    torch = import_torch()
    block = matrix if rows is None else matrix[rows]
    if sp.issparse(block):
        block = block.toarray()
    arr = np.ascontiguousarray(block, dtype=np.float32)
    t = torch.from_numpy(arr)
    if device is not None and str(device) != "cpu":
        t = t.to(device, non_blocking=True)
    return t if dtype is None else t.to(dtype)


class DeviceRows:
    """A CSR matrix held on a torch device; :meth:`dense` gathers rows there as a dense block.

    For GPU training: the matrix is copied once, and each mini-batch is scattered into
    a dense ``(len(rows), n_genes)`` float32 tensor on the device instead of being
    sliced and densified on the host and copied per batch. Duplicate entries of a row
    are summed, as :meth:`scipy.sparse.csr_matrix.toarray` does. A matrix without
    entries (``nnz == 0``) gathers zeros.
    """

    def __init__(self, matrix: Any, device: Any) -> None:
        torch = import_torch()
        csr = sp.csr_matrix(matrix)
        self.shape = csr.shape
        self.device = device
        self.indptr = torch.from_numpy(csr.indptr.astype(np.int64)).to(device)
        self.indices = torch.from_numpy(csr.indices.astype(np.int64)).to(device)
        self.data = torch.from_numpy(np.asarray(csr.data, dtype=np.float32)).to(device)
        self.longest = int(np.diff(csr.indptr).max()) if csr.shape[0] else 0

    @staticmethod
    def nbytes(matrix: Any) -> int:
        """Device bytes the copy of ``matrix`` takes (int64 indices, float32 values)."""
        return int(matrix.nnz) * 12 + (int(matrix.shape[0]) + 1) * 8

    @classmethod
    def fits(cls, matrix: Any, device: Any, share: float = 0.5) -> bool:
        """Whether ``matrix`` is sparse and takes at most ``share`` of the free memory of a CUDA ``device``."""
        torch = import_torch()
        if not sp.issparse(matrix) or getattr(device, "type", str(device)) != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return cls.nbytes(matrix) <= share * free

    def dense(self, rows: Any) -> Any:
        """Dense float32 rows ``rows`` (an int64 tensor on the device, or a numpy array).

        Each row's entries are read through a ``(len(rows), longest row)`` grid of
        positions (padding adds zeros), so the output size never depends on values on
        the device: no host sync, and the launches queue ahead of the GPU.
        """
        torch = import_torch()
        if not isinstance(rows, torch.Tensor):
            rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        rows = rows.to(device=self.device, dtype=torch.long)
        out = torch.zeros((rows.numel(), self.shape[1]), dtype=torch.float32, device=self.device)
        if self.longest == 0 or rows.numel() == 0:
            return out
        start = self.indptr[rows]
        steps = torch.arange(self.longest, device=self.device)
        inside = steps[None, :] < (self.indptr[rows + 1] - start)[:, None]
        pos = torch.where(inside, start[:, None] + steps[None, :], 0)
        out.scatter_add_(1, self.indices[pos], torch.where(inside, self.data[pos], 0.0))
        return out


class TorchHead(TaskHead):
    """A task head whose model is a :class:`torch.nn.Module` (see the module docstring)."""

    kind = "task head"
    #: Whether ``fit`` needs labels.
    requires_labels: ClassVar[bool] = False
    #: This head's defaults for :class:`TrainingConfig` fields the caller leaves unset
    #: (e.g. a smaller batch than the paper's 512); see :meth:`training_config`.
    training_defaults: ClassVar[dict[str, Any]] = {}
    #: Score the untrained network as "epoch 0" (with early stopping, its weights are
    #: kept when no later check beats them): for heads that start at a known-good solution.
    validate_before_training: bool = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.spec: dict[str, Any] = {}
        self.module: Any = None
        self.device: Any = None
        self.history: list[dict[str, float]] = []
        self.training: TrainingConfig | None = None
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        #: Validation-score differences treated as noise in the last training (see TrainingConfig.tolerance).
        self.score_tolerance: float = 0.0
        #: Named numpy arrays saved with the head (e.g. a kNN reference); not weights.
        self.arrays: dict[str, np.ndarray] = {}

    @classmethod
    def training_config(cls, training: TrainingConfig | dict[str, Any] | None = None, **overrides: Any) -> TrainingConfig:
        """A :class:`TrainingConfig`: ``training_defaults`` < ``training`` < ``overrides`` (``None`` ignored)."""
        given = training.model_dump(exclude_unset=True) if isinstance(training, TrainingConfig) else dict(training or {})
        merged = {**cls.training_defaults, **{k: v for k, v in given.items() if v is not None}}
        return TrainingConfig.from_any(merged, **overrides)

    # -- hooks a subclass implements ---------------------------------------------------
    def build_module(self) -> Any:
        """The network, from ``self.spec`` and ``self.options`` only."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_module()")

    def training_loss(self, rows: np.ndarray) -> Any:
        """Loss on the mini-batch ``rows`` (a tensor, or ``(tensor, {part: float})``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss()")

    def validation_score(self) -> float | None:
        """Validation metric, higher is better (``None``: no early stopping)."""
        return None

    def validation_tolerance(self) -> float:
        """Score differences that are noise, for ``TrainingConfig(tolerance=None)`` (default 0).

        Called after :meth:`prepare_training`, during training.
        """
        return 0.0

    def prepare_training(self, device: Any) -> None:
        """Move the head's data tensors to ``device`` (called before the loop)."""

    def finish_training(self) -> None:
        """Release device data (called after the loop, also on errors)."""

    def configure_optimizer(self, params: Any, training: TrainingConfig) -> Any:
        torch = import_torch()
        return torch.optim.Adam(params, lr=training.lr, weight_decay=training.weight_decay)

    # -- the loop -----------------------------------------------------------------------
    def train_module(self, train_rows: np.ndarray, training: TrainingConfig | dict[str, Any] | None = None) -> list[dict[str, float]]:
        """Train ``self.module`` (built here) on mini-batches of ``train_rows``.

        Returns (and stores in ``self.history``) one dict per epoch: ``epoch``, ``loss``,
        the logged loss parts, ``seconds`` and, on check epochs, ``val_score``.
        """

        torch = import_torch()
        cfg = TrainingConfig.from_any(training)
        self.training = cfg
        train_rows = np.asarray(train_rows, dtype=np.int64)
        if train_rows.size < 2:
            raise ScelmoError(f"Training needs at least 2 cells, got {train_rows.size}.")
        rng = np.random.default_rng(cfg.seed)
        self.history = []
        self.best_score, self.best_epoch = None, None
        with torch_session(cfg.device, num_threads=cfg.num_threads, seed=cfg.seed) as dev:
            self.device = dev
            self.module = self.build_module().to(dev)
            self.module.train()
            optimizer = self.configure_optimizer(self.module.parameters(), cfg)
            best_state: dict[str, Any] | None = None
            bad_checks = 0
            top: float | None = None  # best validation score so far
            try:
                self.prepare_training(dev)
                tol = cfg.tolerance if cfg.tolerance is not None else float(self.validation_tolerance())
                self.score_tolerance = tol
                if self.validate_before_training:
                    score0 = self._validate()
                    if score0 is not None:
                        self.history.append({"epoch": 0.0, "loss": float("nan"), "seconds": 0.0, "val_score": score0})
                        self.best_score, self.best_epoch, top = score0, 0, score0
                        if cfg.early_stopping:
                            best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
                desc = f"training {self.name} on {describe_device(dev)}"
                with progress_bar(total=cfg.max_epochs, desc=desc, unit="epoch", enabled=cfg.progress) as bar:
                    for epoch in range(1, cfg.max_epochs + 1):
                        t0, c0 = time.perf_counter(), time.process_time()
                        record = self._one_epoch(train_rows, rng, optimizer, cfg, dev)
                        record["epoch"] = float(epoch)
                        check = epoch % cfg.check_every == 0 or epoch == cfg.max_epochs
                        score = self._validate() if check else None
                        if dev.type == "cuda":
                            torch.cuda.synchronize(dev)
                        record["seconds"] = time.perf_counter() - t0
                        record["cpu_seconds"] = time.process_time() - c0
                        postfix = {"loss": f"{record['loss']:.4f}"}
                        stop = False
                        if score is not None:
                            record["val_score"] = score
                            postfix["val"] = f"{score:.4f}"
                            if top is None or score >= top - tol:  # as good as the best, within the noise
                                top = score if top is None else max(top, score)
                                self.best_score, self.best_epoch, bad_checks = score, epoch, 0
                                if cfg.early_stopping:
                                    best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
                            else:
                                bad_checks += 1
                                stop = cfg.early_stopping and bad_checks >= cfg.patience
                        self.history.append(record)
                        bar.update(1)  # (then the postfix: shown beside the count of the epoch it is from)
                        bar.set_postfix(postfix)
                        if stop:
                            break
                if best_state is not None:
                    self.module.load_state_dict(best_state)
                elif not cfg.early_stopping:
                    # the head keeps its last weights: report their score and epoch, not the best
                    # one seen (a trial's plot marked "best (epoch 0)" on a model that was not it)
                    checked = [r for r in self.history if r.get("val_score") is not None]
                    if checked:
                        self.best_score, self.best_epoch = checked[-1]["val_score"], int(checked[-1]["epoch"])
            finally:
                self.finish_training()
            self.module.eval()
        return self.history

    def _one_epoch(self, train_rows: np.ndarray, rng: np.random.Generator, optimizer: Any, cfg: TrainingConfig, dev: Any) -> dict[str, float]:
        order = rng.permutation(train_rows)
        bs = cfg.batch_size
        n_batches = max(1, int(np.ceil(len(order) / bs)))
        # spread the remainder so that no batch is tiny (triplets need pairs of a class)
        bounds = np.linspace(0, len(order), n_batches + 1).round().astype(int)
        # sums stay tensors on the device: no host sync per batch, one per epoch
        total: Any = 0.0
        parts: dict[str, Any] = {}
        seen = 0
        for b in range(n_batches):
            rows = order[bounds[b] : bounds[b + 1]]
            optimizer.zero_grad(set_to_none=True)
            with autocast(dev, cfg.amp):
                out = self.training_loss(rows)
            loss, logs = out if isinstance(out, tuple) else (out, {})
            loss.backward()
            optimizer.step()
            w = len(rows)
            total = total + loss.detach().float() * w
            for k, v in logs.items():
                v = v.detach().float() if hasattr(v, "detach") else float(v)
                parts[k] = parts.get(k, 0.0) + v * w
            seen += w
        record = {"loss": float(total) / seen}
        record.update({k: float(v) / seen for k, v in parts.items()})
        return record

    def _validate(self) -> float | None:
        torch = import_torch()
        self.module.eval()
        try:
            with torch.no_grad():
                score = self.validation_score()
        finally:
            self.module.train()
        return None if score is None else float(score)

    @contextlib.contextmanager
    def inference(self, device: Any = None, *, num_threads: int | None = None) -> Iterator[Any]:
        """Eval mode and no gradients on ``device`` (default: the training device or "auto")."""
        torch = import_torch()
        self._require_fitted()
        if device is None:
            device = self.device if self.device is not None else "auto"
        with torch_session(device, num_threads=num_threads, seed=None, deterministic=True) as dev:
            self.module.to(dev)
            self.device = dev
            self.module.eval()
            with torch.no_grad():
                yield dev

    def _require_fitted(self) -> None:
        if self.module is None:
            raise ScelmoError(f"The {self.name!r} head is not trained yet; call fit() (or Model.train()) first.")

    # -- persistence --------------------------------------------------------------------
    def saved_options(self) -> dict[str, Any]:
        """The options written by :meth:`save_state` (a subclass may resolve automatic ones)."""
        return self.options.model_dump(mode="json", exclude={"latent"} if getattr(self.options, "residual", False)
                                       else None)

    def save_state(self, directory: str | Path) -> None:
        """Write the weights (``weights.pt``) and spec/options/history (``head.json``) to ``directory``."""
        torch = import_torch()
        self._require_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            torch.save(state, tmp)
        info = {
            "head": self.name,
            "options": self.saved_options(),
            "spec": self.spec,
            "training": self.training.model_dump(mode="json") if self.training else None,
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
        }
        with atomic_path(directory / SPEC_FILE) as tmp:
            tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        if self.arrays:
            with atomic_path(directory / ARRAYS_FILE) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **self.arrays)

    @classmethod
    def load_state(cls, directory: str | Path, *, option_defaults: dict[str, Any] | None = None) -> TorchHead:
        """Rebuild a head saved by :meth:`save_state` (weights on the CPU).

        ``option_defaults`` fill options the saved file lacks (a subclass uses them to
        load heads saved before an option existed with their old behaviour).
        """
        torch = import_torch()
        directory = Path(directory)
        spec_path = directory / SPEC_FILE
        if not spec_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ScelmoError(f"{directory} does not hold a saved head ({SPEC_FILE} and {WEIGHTS_FILE} expected).")
        try:
            info = json.loads(spec_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _damaged_file(spec_path, exc) from None
        if not isinstance(info, dict):
            raise _damaged_file(spec_path, "not a head description")
        if info.get("head") != cls.name:
            raise ScelmoError(f"{directory} holds a {info.get('head')!r} head, not {cls.name!r}.")
        options = {**(option_defaults or {}), **info.get("options", {})}
        if options.get("residual") is True:  # (saved before latent was refused with the residual adapter)
            options.pop("latent", None)
        head = cls(**options)
        head.spec = info.get("spec", {})
        head.history = info.get("history", [])
        head.best_score, head.best_epoch = info.get("best_score"), info.get("best_epoch")
        if info.get("training"):
            head.training = TrainingConfig(**info["training"])
        head.module = head.build_module()
        try:
            state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise _damaged_file(directory / WEIGHTS_FILE, exc) from None
        head.module.load_state_dict(state)
        head.module.eval()
        if (directory / ARRAYS_FILE).is_file():
            try:
                with np.load(directory / ARRAYS_FILE, allow_pickle=False) as z:
                    head.arrays = {k: z[k] for k in z.files}
            except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
                raise _damaged_file(directory / ARRAYS_FILE, exc) from None
        head.device = torch.device("cpu")
        return head

    def epoch_seconds(self) -> float:
        """Median wall time of the training epochs without a validation check."""
        trained = [h for h in self.history if h.get("epoch", 1) >= 1]
        plain = [h["seconds"] for h in trained if "val_score" not in h] or [h["seconds"] for h in trained]
        return float(np.median(plain)) if plain else float("nan")
