"""Progress bars for long work (tqdm on stderr; silent when disabled or not a TTY)."""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_enabled(requested: bool | None) -> bool:
    """Whether to show a bar: ``requested`` wins; ``None`` means "when stderr is a TTY"."""
    if os.environ.get("SCELMO_NO_PROGRESS"):
        return False
    if requested is not None:
        return requested
    return sys.stderr.isatty()


def progress_bar(*, total: int | None, desc: str, unit: str = "it", enabled: bool | None = None) -> Any:
    """A tqdm bar writing to stderr; disabled bars cost nothing."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not progress_enabled(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
