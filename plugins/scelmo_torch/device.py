"""Where and how torch runs: device choice, CPU threads, seeds, mixed precision.

Stable API (other heads in this plugin build on it):

=====================================  ==================================================
function                               what it does
=====================================  ==================================================
:func:`import_torch`                   ``import torch`` with an install hint if missing
:func:`resolve_device`                 ``"auto"`` -> CUDA, else MPS, else CPU; checks
                                       explicit choices (``"cuda:1"``, ``"cpu"``, ...)
:func:`torch_session`                  context manager for one training / inference run:
                                       CPU thread count (default 1, restored after),
                                       seeds, deterministic algorithms (restored after)
:func:`seed_everything`                seeds torch (CPU and CUDA); returns a numpy Generator
:func:`autocast`                       bf16 autocast on CUDA when enabled, else a no-op
=====================================  ==================================================

Why one CPU thread by default: the heads train small matrices (batches of a few
hundred cells, 32-64 hidden units), where intra-op threading costs more in
synchronisation than it gains; on the project's 2-core machine a single torch
thread was 3-5x faster for such models (scVI:
1.8 s/epoch with one thread vs 5.7 s with two). Pass ``num_threads=`` to override.

Mixed precision is used only on CUDA (bfloat16 autocast: no loss scaling needed,
supported on Ampere and newer). On CPU and MPS everything runs in float32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from scelmo.errors import ConfigError, ScelmoError


def import_torch() -> Any:
    """Import torch, or raise a :class:`~scelmo.errors.ScelmoError` saying how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is installed in tests
        raise ScelmoError(
            "The fine-tuning heads need PyTorch. Install it with `pip install \"scelmo[torch]\"` "
            "(CPU build: `pip install torch --index-url https://download.pytorch.org/whl/cpu`)."
        ) from exc
    return torch


def _mps_available(torch: Any) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: Any = "auto") -> Any:
    """The :class:`torch.device` to run on.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA if available, else Apple MPS, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"mps"``, or a :class:`torch.device`.

    Raises
    ------
    ConfigError
        If the named device is not available here.
    """
    torch = import_torch()
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device or "auto").strip().lower()
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if _mps_available(torch):
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={str(device)!r} was asked for but CUDA is not available; use device='auto' or 'cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif dev.type == "mps" and not _mps_available(torch):
        raise ConfigError("device='mps' was asked for but Apple MPS is not available; use device='auto' or 'cpu'.")
    elif dev.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(f"Unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'.")
    return dev


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch's CPU and CUDA generators; return a numpy Generator with the same seed."""
    torch = import_torch()
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
    return np.random.default_rng(int(seed))


@contextlib.contextmanager
def torch_session(
    device: Any = "auto",
    *,
    num_threads: int | None = None,
    seed: int | None = None,
    deterministic: bool = True,
) -> Iterator[Any]:
    """Run a block with a chosen device, CPU thread count, seeds and determinism.

    Yields the resolved :class:`torch.device`. On CPU the number of intra-op threads is
    ``num_threads`` (default 1, see the module docstring); the previous value is
    restored afterwards. ``seed`` seeds torch (see :func:`seed_everything`).
    ``deterministic`` turns on ``torch.use_deterministic_algorithms(warn_only=True)``
    for the block and restores the previous setting. Its debugging aid that fills every
    new tensor with NaN (``torch.utils.deterministic.fill_uninitialized_memory``) is off
    inside the block: it changes no result of correct code, but it costs one extra
    kernel per allocation (151 of the 375 kernel launches of a batch-128 training step
    of the annotation head on an H200; 5% of a CPU epoch).
    """
    torch = import_torch()
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = num_threads if num_threads is not None else (1 if dev.type == "cpu" else old_threads)
    if threads < 1:
        raise ConfigError(f"num_threads must be at least 1, got {threads}.")
    if dev.type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    det_mod = getattr(torch.utils, "deterministic", None)
    old_fill = getattr(det_mod, "fill_uninitialized_memory", None)
    try:
        torch.set_num_threads(int(threads))
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if old_fill is not None:
                det_mod.fill_uninitialized_memory = False
        if seed is not None:
            seed_everything(seed)
        yield dev
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        if old_fill is not None:
            det_mod.fill_uninitialized_memory = old_fill


def autocast(device: Any, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    torch = import_torch()
    if enabled and getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: Any) -> str:
    """A short human-readable name (``"cpu (1 thread)"``, ``"cuda:0 (NVIDIA H100 ...)"``)."""
    torch = import_torch()
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return str(device)
