"""The layout's rules, checked on the source: layers, no import circles, no hidden imports.

docs/architecture.md describes the layers; this test keeps the code and that page honest.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"scelmo": ROOT / "scelmo"} | {p.name: p for p in sorted((ROOT / "plugins").iterdir()) if p.is_dir()}

#: Lowest layer first; a module may import its own layer or lower ones, never higher ones.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("scelmo._version", "scelmo._deprecated", "scelmo._lazy", "scelmo.errors", "scelmo.keys", "scelmo.redact",
                    "scelmo.progress", "scelmo.config")),
    ("data", ("scelmo.io", "scelmo.knn", "scelmo.expression.matrix", "scelmo.expression.selection",
              "scelmo.expression.aggregation", "scelmo.conditioning", "scelmo.genes", "scelmo.provenance",
              "scelmo.llm", "scelmo.metrics")),
    ("contracts", ("scelmo.plugin",)),
    ("services", ("scelmo.knowledge", "scelmo.expression.distributed", "scelmo.expression")),
    ("tools", ("scelmo.datasets", "scelmo.tl", "scelmo.model", "scelmo.perturbation")),
    ("front", ("scelmo.pl", "scelmo.cli", "scelmo.r_bridge", "scelmo.demo", "scelmo.testing", "scelmo.__main__",
               "scelmo")),
    ("plugins", tuple(name for name in PACKAGES if name != "scelmo")),
]
#: Libraries a function may import lazily: heavy, optional or slow to import.
LAZY_OK = {
    "torch", "litellm", "rpy2", "anndata2ri", "scanpy", "anndata", "matplotlib", "pandas", "dask", "distributed",
    "zarr", "h5py", "numba", "llvmlite", "onnxruntime", "tokenizers", "scib_metrics", "sklearn", "tomli_w",
    "igraph", "leidenalg", "umap", "pynndescent", "scipy", "rich", "tqdm",
}
#: ``tomllib`` is stdlib from Python 3.11 and ``tomli`` before: the one guarded import of a module.
VERSION_GUARDED = {"tomllib", "tomli"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [pkg, *f.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return subs if len(subs) == len(node.names) else [target, *subs]


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports() -> list[tuple[str, str, bool, int]]:
    """(importer, imported module or library, inside a function?, line) for every import."""
    out = []
    for mod, path in MODULES.items():
        is_pkg = path.name == "__init__.py"

        def walk(node: ast.AST, in_func: bool, type_only: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom) and not type_only:
                    for t in _targets(mod, child, is_pkg):  # noqa: B023
                        out.append((mod, t, in_func, child.lineno))  # noqa: B023
                func = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                tonly = type_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test))
                walk(child, func, tonly)

        walk(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return out


IMPORTS = _imports()


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} is in no layer of tests/test_architecture.py; add it (and to docs/architecture.md)"
    return rank


def test_every_module_has_a_layer():
    for mod in MODULES:
        _layer(mod)


def test_imports_only_go_down_the_layers():
    wrong = []
    for src, target, _, line in IMPORTS:
        dst = _known(target)
        if dst is None or dst == src:
            continue
        if _layer(dst) > _layer(src):
            wrong.append(f"{MODULES[src].relative_to(ROOT)}:{line} {src} ({LAYERS[_layer(src)][0]}) imports "
                         f"{dst} ({LAYERS[_layer(dst)][0]})")
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_no_import_circles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, target, _, _ in IMPORTS:
        dst = _known(target)
        if dst is not None and dst != src:
            graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_functions_import_only_heavy_third_party_libraries():
    hidden = [
        f"{MODULES[src].relative_to(ROOT)}:{line} imports {target}"
        for src, target, in_func, line in IMPORTS
        if in_func and target.split(".")[0] not in LAZY_OK | VERSION_GUARDED
    ]
    assert not hidden, "in-function imports (import at the top instead):\n" + "\n".join(hidden)


def test_nothing_imports_an_old_module_name():
    from scelmo._deprecated import ALIASES

    users = []
    for folder in ("scelmo", "plugins", "benchmarks", "tests"):
        for f in (ROOT / folder).rglob("*.py"):
            if f.name in ("_deprecated.py", Path(__file__).name):
                continue
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                users += [f"{f.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n in ALIASES]
    assert not users


def test_old_module_names_still_work_and_warn():
    code = (
        "import warnings, scelmo\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import scelmo.plugins, scelmo.components, scelmo.rio, scelmo.selection\n"
        "    from scelmo.components import Aggregator\n"
        "import scelmo.plugin, scelmo.expression.selection\n"
        "assert Aggregator is scelmo.plugin.Aggregator\n"
        "assert scelmo.plugins.heads is scelmo.plugin.heads\n"
        "assert scelmo.selection.gene_stats is scelmo.expression.selection.gene_stats\n"
        "assert scelmo.plugin.__spec__.name == 'scelmo.plugin' and scelmo.plugins.__spec__.name == 'scelmo.plugins'\n"
        "import unittest.mock\n"
        "real = scelmo.plugin.reset\n"
        "with unittest.mock.patch('scelmo.plugins.reset') as fake:\n"
        "    assert scelmo.plugin.reset is fake\n"
        "assert scelmo.plugin.reset is real\n"
        "msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]\n"
        "assert any('scelmo.plugins moved to scelmo.plugin' in m for m in msgs), msgs\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_import_scelmo_loads_no_submodule():
    code = "import sys, scelmo; print(sorted(m for m in sys.modules if m.startswith(('scelmo.', 'numpy'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['scelmo._deprecated', 'scelmo._version']"


@pytest.mark.parametrize("name", ["tl", "io", "model", "plugin", "pl", "datasets", "perturbation", "testing"])
def test_public_subpackages_import(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        mod = importlib.import_module(f"scelmo.{name}")
    for attr in getattr(mod, "__all__", []):
        assert hasattr(mod, attr), f"scelmo.{name}.__all__ names {attr!r}, which it does not have"


#: Dotted names in the docs that are not Python objects (R options, file names).
NOT_PYTHON = {"scelmo.Rmd", "scelmo.max_nnz"}
_DOTTED = re.compile(r"\b(scelmo(?:_[a-z]+)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_FILE_SUFFIXES = (".py", ".md", ".toml", ".csv", ".gz", ".h5ad", ".sqlite", ".npz", ".rds")


def _exists(ref: str, aliases: dict[str, str]) -> bool:
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        mod = ".".join(parts[:i])
        if mod in aliases:
            return False
        try:
            obj = importlib.import_module(mod)
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_docstrings_and_docs_name_only_modules_that_exist():
    from scelmo._deprecated import ALIASES

    files = [p for d in ("scelmo", "plugins", "docs") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".md")]
    missing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in [*files, ROOT / "README.md"]:
            if f.name in ("_deprecated.py", "architecture.md"):  # these list the old names on purpose
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                for ref in _DOTTED.findall(line):
                    ref = ref.rstrip(".")
                    if ref in NOT_PYTHON or ref.endswith(_FILE_SUFFIXES) or _exists(ref, ALIASES):
                        continue
                    missing.append(f"{f.relative_to(ROOT)}:{n} {ref}")
    assert not missing, "names of modules or objects that do not exist:\n" + "\n".join(missing)


def test_documented_submodules_are_attributes_after_a_plain_import():
    """Trial finding: `scelmo.expression.selection.gene_stats` (docs/aggregation.md) and
    `scelmo.provenance.for_key` (docs/anndata-keys.md) raised AttributeError in a fresh session."""
    import subprocess
    import sys

    code = ("import scelmo, sys; "
            "[scelmo.expression.selection.gene_stats, scelmo.expression.matrix, scelmo.expression.aggregation, "
            "scelmo.provenance.for_key, scelmo.conditioning, scelmo.knowledge.cell_types, scelmo.knowledge.roles, "
            "scelmo.llm.cache]; "
            "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
