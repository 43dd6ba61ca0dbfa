"""What benchmarks record about their run, without machine-specific paths."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def portable_argv(argv: Sequence[str]) -> list[str]:
    """Command-line arguments for a results file: absolute paths become ``<name>``."""
    return [f"<{Path(a).name}>" if os.path.isabs(a) else a for a in argv]
