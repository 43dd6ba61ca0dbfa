"""Starting embedded R (scelmo.io._rds) leaves the process environment usable by child processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_r_start_keeps_the_environment_of_child_processes(monkeypatch):
    pytest.importorskip("rpy2", reason="needs the scelmo[r] extra")
    from scelmo.errors import ScelmoError
    from scelmo.io import _rds as rio

    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    monkeypatch.delenv("PAGER", raising=False)
    before = {k: v for k, v in os.environ.items() if not k.startswith(("R_", "_R_"))}
    rio._STATE.clear()  # start R's helpers again in this test (R itself starts once per process)
    try:
        rio._r()
    except ScelmoError as exc:
        pytest.skip(f"R is not usable here: {exc}")
    after = {k: v for k, v in os.environ.items() if not k.startswith(("R_", "_R_"))}
    assert after == before
    # a Python child still loads its own libraries (R's LD_LIBRARY_PATH broke `import _ssl`)
    r = subprocess.run([sys.executable, "-c", "import ssl, sys; print(sys.version)"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == sys.version.split()[0]
