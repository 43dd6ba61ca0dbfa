"""Docs point only to files that exist in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE_PATH = re.compile(r"`((?:scelmo|plugins|benchmarks|docs|scripts|r_wrapper|tests)/[A-Za-z0-9_./-]+)`")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_relative_links_resolve():
    missing = []
    for doc in _docs():
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).resolve().exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, "\n".join(missing)


def test_repository_paths_named_in_docs_exist():
    missing = []
    for doc in _docs():
        for path in CODE_PATH.findall(doc.read_text(encoding="utf-8")):
            path = path.rstrip(".,")
            if any(ch in path for ch in "*<>{}") or not re.search(r"\.[A-Za-z]+$", path):
                continue  # patterns, and model strings such as scelmo/local/<model>
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {path}")
    assert not missing, "\n".join(missing)


def test_nothing_points_outside_the_repository():
    # (and the research notes by name: the docs cited one, which the repository lacks)
    notes = ["data" + "-eval", "offline" + "-defaults", "anchors" + "-mission", "r" + "-interop", "aesthetics" + ".md"]
    needle = re.compile("|".join(["shared" + "/research", r"\.\./" + "shared", "shared" + "/data",
                                  *(re.escape(n) + r"(\.md|\b)" for n in notes)]))
    where = [ROOT / "README.md", ROOT / "pyproject.toml", *(ROOT / "requirements").glob("*.txt")]
    for folder in ("docs", "scelmo", "plugins", "tests", "scripts", "r_wrapper"):
        where += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".md", ".py", ".R", ".Rd", ".Rmd", ".toml", ""}
                  and p.is_file() and "__pycache__" not in p.parts]
    where += list((ROOT / "benchmarks").glob("*.py"))
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in where for i, line in enumerate(
        p.read_text(encoding="utf-8", errors="ignore").splitlines(), 1) if needle.search(line)]
    assert not hits, "\n".join(hits)
