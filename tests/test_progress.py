"""Progress bars: on a TTY and in notebook kernels; off with SCELMO_NO_PROGRESS or progress=False."""

from __future__ import annotations

import io
import sys
import types

import pytest

from scelmo import progress


class ZMQInteractiveShell:  # the class name ipykernel's shell has
    pass


class ColabShell(ZMQInteractiveShell):
    pass


class TerminalInteractiveShell:
    pass


def _kernel(monkeypatch, shell):
    """Pretend to run inside an IPython kernel whose shell is ``shell`` (no notebook server)."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)


class _NotATty(io.StringIO):
    def isatty(self):
        return False


@pytest.fixture
def no_tty(monkeypatch):
    monkeypatch.delenv("SCELMO_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", _NotATty())
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


def test_plain_python_without_tty_hides_bars(no_tty):
    assert not progress.in_notebook()
    assert not progress.progress_enabled(None)
    assert progress.progress_bar(total=3, desc="x").disable


@pytest.mark.parametrize("shell", [ZMQInteractiveShell(), ColabShell()])
def test_notebook_kernels_show_bars(no_tty, monkeypatch, shell):
    _kernel(monkeypatch, shell)
    assert progress.in_notebook()
    assert progress.progress_enabled(None)
    bar = progress.progress_bar(total=3, desc="x")
    assert not bar.disable
    bar.close()


@pytest.mark.parametrize("shell", [TerminalInteractiveShell(), None])
def test_terminal_ipython_or_no_shell_is_not_a_notebook(no_tty, monkeypatch, shell):
    _kernel(monkeypatch, shell)
    assert not progress.in_notebook()
    assert not progress.progress_enabled(None)


def test_off_switches_win_in_notebooks(no_tty, monkeypatch):
    _kernel(monkeypatch, ZMQInteractiveShell())
    assert not progress.progress_enabled(False)
    assert progress.progress_bar(total=3, desc="x", enabled=False).disable
    monkeypatch.setenv("SCELMO_NO_PROGRESS", "1")
    assert not progress.progress_enabled(None) and not progress.progress_enabled(True)
    assert progress.progress_bar(total=3, desc="x", enabled=True).disable


def test_text_bar_writes_to_stderr_without_widgets(no_tty, monkeypatch, capsys):
    _kernel(monkeypatch, ZMQInteractiveShell())
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)  # no ipywidgets
    with progress.progress_bar(total=2, desc="genes", unit="gene") as bar:
        bar.update(2)
    assert "genes" in capsys.readouterr().err
