"""Progress bars for long work.

Shown on a terminal (stderr is a TTY) and in Jupyter / IPython kernels (notebook widgets
from ``tqdm.auto`` when ipywidgets is installed, text bars on the cell's stderr
otherwise); hidden elsewhere (logs, pipes), with ``progress=False`` or with
``SCELMO_NO_PROGRESS=1``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any


def in_notebook() -> bool:
    """Whether this runs in a Jupyter (or other ZMQ-based IPython) kernel.

    True when ``ipykernel`` is loaded and the running IPython shell is a
    ``ZMQInteractiveShell`` (or a subclass, e.g. Colab's); terminal IPython and plain
    Python are not notebooks.
    """
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # noqa: BLE001 - a broken shell is not a notebook
        return False
    return shell is not None and any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def progress_enabled(requested: bool | None) -> bool:
    """Whether to show a bar: ``SCELMO_NO_PROGRESS`` turns bars off, then ``requested``
    wins; ``None`` means "when stderr is a TTY or this is a notebook"."""
    if os.environ.get("SCELMO_NO_PROGRESS"):
        return False
    if requested is not None:
        return requested
    return sys.stderr.isatty() or in_notebook()


def _tqdm_class(notebook: bool) -> Any:
    if notebook and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm  # notebook widgets

        return tqdm
    from tqdm.std import tqdm

    return tqdm


def progress_bar(*, total: int | None, desc: str, unit: str = "it", enabled: bool | None = None) -> Any:
    """A tqdm bar (a widget in notebooks, text on stderr elsewhere); disabled bars cost nothing."""
    show = progress_enabled(enabled)
    notebook = show and in_notebook()
    tqdm = _tqdm_class(notebook)
    kwargs: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "disable": not show, "leave": False}
    if tqdm.__module__.startswith("tqdm.std"):
        kwargs.update(file=sys.stderr, dynamic_ncols=True)
    return tqdm(**kwargs)
