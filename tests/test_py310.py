"""Python 3.10 (``requires-python >= 3.10``): no ``tomllib`` there, so TOML goes through ``tomli``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_sources_parse_as_python_310():
    for path in [*(ROOT / "scelmo").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 10))


def test_tomli_backport_is_declared_for_310():
    text = (ROOT / "pyproject.toml").read_text()
    assert "\"tomli>=1.1; python_version < '3.11'\"" in text


def test_config_and_cli_read_toml_without_tomllib(tmp_path):
    """As on 3.10: ``import tomllib`` fails and ``tomli`` (here a stand-in) is used instead."""
    (tmp_path / "scelmo.toml").write_text('[describe]\nmodel = "from-the-file"\n')
    code = """
import sys, tomllib, types
import click, pydantic, pydantic_settings, platformdirs  # before the version is faked
shim = types.ModuleType("tomli")
shim.load, shim.loads, shim.TOMLDecodeError = tomllib.load, tomllib.loads, tomllib.TOMLDecodeError
sys.modules["tomli"] = shim
sys.modules["tomllib"] = None  # `import tomllib` raises ImportError, as on 3.10
sys.version_info = (3, 10, 13, "final", 0)
import scelmo.cli, scelmo.config
assert scelmo.config.tomllib is shim and scelmo.cli.tomllib is shim
print(scelmo.config.get_settings().describe.model, scelmo.cli._parse_value("[1, 2]"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCELMO_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["from-the-file", "[1,", "2]"]
